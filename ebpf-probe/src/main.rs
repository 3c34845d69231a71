//! ackwatch probe: XDP (ingress) and TC (egress) programs that track TCP flows and
//! report the ones stuck on duplicate ACKs. All logic lives in the shared library;
//! this file binds it to BPF maps and program types.
//!
//! ```text
//!   NIC rx ──► ackwatch_xdp / ackwatch_xdp_ip ─┐        ┌─► PORTS   (array, 65,536 x u8)
//!                                              ├─ parse ─┤    cTCP ports, signature ports
//!   stack tx ─► ackwatch_tc / ackwatch_tc_ip ──┘  track  ├─► PENDING_BUCKETS / _SLOTS /
//!                 (every verdict: pass)                  │    _FILL / _OCCUPIED (arrays)
//!                                                        │    half-open
//!                                                        ├─► BUCKETS / FLOWS / FILL /
//!                                                        │    OCCUPIED (arrays) established
//!                                                        ├─► COUNTERS (per-CPU array):
//!                                                        │    packets per hook, reasons
//!                                                        │    not tracked, ring-buffer full
//!                                                        ├─► EVENTS  (ring buffer):
//!                                                        │    StallRecord per transition
//!                                                        └─► AYA_LOGS (aya-log): one
//!                                                             line per transition
//!   readers: the agent polls EVENTS, sweeps FLOWS and PENDING_SLOTS (idle eviction,
//!   stalls of silent flows), sums COUNTERS for /metrics, writes PORTS, forwards
//!   AYA_LOGS to its log; tests read everything back.
//! ```
//! `_ip` variants are for links without an L2 header (tun, WireGuard, PPP). Settings
//! are read-only globals fixed at load: K, T, track-all, and a clock taken from the
//! CLOCK map instead of the kernel's (deterministic tests and replays).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// `asm!` for BPF (`probe::hide`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod probe;
