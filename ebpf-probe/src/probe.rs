//! The BPF side: maps, globals, the packet accessor and the programs.

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::__sk_buff;
use aya_ebpf::bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action};
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes};
use aya_ebpf::macros::{classifier, map, xdp};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{TcContext, XdpContext};
use aya_log_ebpf::info;
use ebpf_probe::abi::{Flow, FlowKey, StallRecord, StallWhat, counter, port_flag};
use ebpf_probe::parse::{self, Frame, LinkKind, Reason, parse_into};
use ebpf_probe::tracker::{Store, track};
use ebpf_probe::verdict::{Config, StallSink};

/// Default capacities; the agent sets the real ones at load time.
const DEFAULT_FLOWS: u32 = 262_144;
const DEFAULT_PENDING: u32 = 65_536;
const RING_BYTES: u32 = 256 * 1024;
/// `errno` of a full hash map on insert.
const E2BIG: i32 = 7;
const EEXIST: i32 = 17;

#[map]
static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map]
static PENDING: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_PENDING, 0);
#[map]
static PORTS: Array<u8> = Array::with_max_entries(65_536, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
/// An all-zero flow, the source of every insert (a Flow does not fit the BPF stack).
#[map]
static ZERO: Array<Flow> = Array::with_max_entries(1, 0);
/// Per-CPU room for the parsed packet (it does not fit the stack with the rest).
#[map]
static SCRATCH: PerCpuArray<parse::Packet> = PerCpuArray::with_max_entries(1, 0);
/// The clock when `CLOCK_FROM_MAP` is set.
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static DUPACK_THRESHOLD: u32 = 3;
#[unsafe(no_mangle)]
static STALL_TIMEOUT_NS: u64 = 1_000_000_000;
#[unsafe(no_mangle)]
static TRACK_ALL: u8 = 0;
#[unsafe(no_mangle)]
static CLOCK_FROM_MAP: u8 = 0;

/// Reads a global the loader may have overridden (volatile: not constant-folded).
macro_rules! global {
    ($g:ident) => {
        unsafe { core::ptr::read_volatile(&$g) }
    };
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe { *c += 1 }
    }
}

#[inline(always)]
fn now() -> u64 {
    if global!(CLOCK_FROM_MAP) != 0 {
        return CLOCK.get(0).copied().unwrap_or(0);
    }
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The packet, read with direct loads (a bounds check and a load): a helper call costs
/// ~40 ns here, and a dozen of them were most of the probe's cost. Headers are in the
/// linear part (`tc_frame` makes sure); only the cTCP trailer of a large TC skb may sit
/// in its non-linear tail, read with `bpf_skb_load_bytes`. XDP buffers are linear (no
/// multi-buffer).
struct Packet {
    data: usize,
    end: usize,
    wire_len: usize,
    /// The skb, for reads beyond the linear part.
    skb: Option<*mut __sk_buff>,
}

impl Frame for Packet {
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.wire_len
    }

    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // A bounded, non-negative offset for the verifier (the parser reads no further).
        if off > parse::MAX_OFFSET {
            return None;
        }
        // black_box keeps LLVM from rewriting `p + N > end` into forms the verifier
        // cannot connect to the load (e.g. `p >= end`, or arithmetic on `end`).
        let p = self.data + core::hint::black_box(off);
        if core::hint::black_box(p + N) > self.end {
            return None;
        }
        // Word loads, as C programs read packet headers through struct pointers: LLVM
        // turns a byte array copy (or `read_unaligned`) into a load, shift and or per
        // byte. The words may be misaligned; the JIT's targets load them as they are,
        // and the verifier would refuse the program where alignment is enforced.
        let mut buf = [0u8; N];
        let mut i = 0;
        while i + 4 <= N {
            // SAFETY: the verifier-checked range [p, p + N) lies inside the packet.
            let w = unsafe { core::ptr::read_volatile((p + i) as *const u32) };
            buf[i..i + 4].copy_from_slice(&w.to_ne_bytes());
            i += 4;
        }
        while i < N {
            // SAFETY: as above.
            buf[i] = unsafe { core::ptr::read_volatile((p + i) as *const u8) };
            i += 1;
        }
        Some(buf)
    }

    #[inline(always)]
    fn read_tail<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let direct = self.read(off);
        if direct.is_some() {
            return direct;
        }
        let skb = self.skb?;
        let mut buf = [0u8; N];
        let to = buf.as_mut_ptr() as *mut c_void;
        // SAFETY: the context pointer the kernel passed in; `buf` holds N bytes.
        let rc = unsafe { bpf_skb_load_bytes(skb as *const c_void, off as u32, to, N as u32) };
        (rc == 0).then_some(buf)
    }
}

struct Maps;

impl Store for Maps {
    #[inline(always)]
    fn port_flags(&self, port: u16) -> u8 {
        PORTS.get(port as u32).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn mark_signature_port(&mut self, port: u16) {
        if let Some(p) = PORTS.get_ptr_mut(port as u32) {
            // SAFETY: an array slot; a racing writer only sets the same bit.
            unsafe { *p |= port_flag::SIGNATURE }
        }
    }

    #[inline(always)]
    fn established(&mut self, key: &FlowKey) -> Option<*mut Flow> {
        FLOWS.get_ptr_mut(key)
    }

    #[inline(always)]
    fn pending(&mut self, key: &FlowKey) -> Option<*mut Flow> {
        PENDING.get_ptr_mut(key)
    }

    #[inline(always)]
    fn create(&mut self, key: &FlowKey, pending: bool) -> Result<*mut Flow, Reason> {
        let zero = ZERO.get_ptr(0).ok_or(counter::MAP_ERROR)?;
        // SAFETY: a map value pointer, valid for the program's run.
        let zero = unsafe { &*zero };
        if pending {
            let _ = PENDING.insert(key, zero, BPF_NOEXIST as u64);
            return PENDING.get_ptr_mut(key).ok_or(counter::MAP_ERROR);
        }
        match FLOWS.insert(key, zero, BPF_NOEXIST as u64) {
            Err(e) if e == -E2BIG => Err(counter::TABLE_FULL),
            Err(e) if e != -EEXIST => Err(counter::MAP_ERROR),
            _ => FLOWS.get_ptr_mut(key).ok_or(counter::MAP_ERROR),
        }
    }

    // `&*p`, not `*p`: passing the value would copy a Flow onto the 512-byte stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    #[inline(always)]
    fn promote(&mut self, key: &FlowKey) -> Result<*mut Flow, Reason> {
        let p = PENDING.get_ptr(key).ok_or(counter::MAP_ERROR)?;
        // SAFETY: a map value pointer, valid for the program's run.
        match FLOWS.insert(key, unsafe { &*p }, BPF_NOEXIST as u64) {
            Err(e) if e == -E2BIG => return Err(counter::TABLE_FULL),
            Err(e) if e != -EEXIST => return Err(counter::MAP_ERROR),
            _ => {}
        }
        let _ = PENDING.remove(key);
        FLOWS.get_ptr_mut(key).ok_or(counter::MAP_ERROR)
    }

    #[inline(always)]
    fn count(&mut self, index: u32) {
        bump(index);
    }
}

struct Ring<'a> {
    key: &'a FlowKey,
    /// The last transition this packet caused, for one log line after it: (what, hole).
    last: Option<(u8, u32)>,
}

impl StallSink for Ring<'_> {
    #[inline(always)]
    fn stall(&mut self, flow: &Flow, r: usize, what: StallWhat, now: u64) {
        if what != StallWhat::Candidate {
            self.last = Some((what as u8, flow.half[r & 1].hole));
        }
        match EVENTS.reserve::<StallRecord>(0) {
            Some(mut slot) => {
                // SAFETY: the reserved slot is exactly one StallRecord; fill writes every field.
                unsafe { (*slot.as_mut_ptr()).fill(self.key, flow, r, what, now) };
                slot.submit(0);
            }
            None => bump(counter::RINGBUF_FULL),
        }
    }
}

/// The one path every program takes. Never fails: errors only move counters.
#[inline(always)]
fn observe<C: EbpfContext>(ctx: &C, frame: &Packet, link: LinkKind, hook: u32, ifindex: u32) {
    bump(hook);
    match parse_and_track(ctx, frame, link, ifindex) {
        Ok(()) => bump(counter::TRACKED),
        Err(reason) => bump(reason),
    }
}

// Inlined: as a BPF subprogram it would return its `Result` through the caller's stack,
// which the verifier refuses ("cannot return stack pointer to the caller").
#[inline(always)]
fn parse_and_track<C: EbpfContext>(
    ctx: &C,
    frame: &Packet,
    link: LinkKind,
    ifindex: u32,
) -> Result<(), Reason> {
    let cfg = Config {
        dupack_threshold: global!(DUPACK_THRESHOLD),
        stall_timeout_ns: global!(STALL_TIMEOUT_NS),
        track_all: global!(TRACK_ALL) != 0,
    };
    let pkt = SCRATCH.get_ptr_mut(0).ok_or(counter::MAP_ERROR)?;
    // SAFETY: this CPU's slot; nothing else runs on this CPU during the program.
    let pkt = unsafe { &mut *pkt };
    parse_into(frame, link, pkt)?;
    let mut ring = Ring {
        key: &pkt.key,
        last: None,
    };
    let tracked = track(&mut Maps, &mut ring, &cfg, pkt, now, ifindex);
    // A stall transition, not a packet: rare enough to log (one call site keeps the
    // verifier's work small).
    if let Some((what, hole)) = ring.last {
        info!(
            ctx,
            "stall transition {} (0 started, 1 recovered, 2 ended), hole {}", what, hole
        );
    }
    tracked
}

#[inline(always)]
fn xdp_frame(ctx: &XdpContext) -> Packet {
    Packet {
        data: ctx.data(),
        end: ctx.data_end(),
        wire_len: ctx.data_end() - ctx.data(),
        skb: None,
    }
}

/// Headers of any layout the parser reads fit in this many bytes of linear data (up to
/// two VLAN tags, IPv6 with small extension headers, TCP with options).
const LINEAR_HEADERS: u32 = 192;

#[inline(always)]
fn tc_frame(ctx: &TcContext) -> Packet {
    let len = ctx.len();
    let want = if len < LINEAR_HEADERS {
        len
    } else {
        LINEAR_HEADERS
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // Rare (headers split across fragments): make them linear, once per packet.
        let _ = ctx.pull_data(want);
    }
    Packet {
        data: ctx.data(),
        end: ctx.data_end(),
        wire_len: ctx.len() as usize,
        skb: Some(ctx.skb.skb),
    }
}

#[inline(always)]
fn tc_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer the kernel passed in.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[xdp]
pub fn ackwatch_xdp(ctx: XdpContext) -> u32 {
    observe(
        &ctx,
        &xdp_frame(&ctx),
        LinkKind::Ethernet,
        counter::PACKETS_XDP,
        ctx.ingress_ifindex() as u32,
    );
    xdp_action::XDP_PASS
}

#[xdp]
pub fn ackwatch_xdp_ip(ctx: XdpContext) -> u32 {
    observe(
        &ctx,
        &xdp_frame(&ctx),
        LinkKind::RawIp,
        counter::PACKETS_XDP,
        ctx.ingress_ifindex() as u32,
    );
    xdp_action::XDP_PASS
}

/// Does nothing: the baseline the benchmarks subtract (never attached).
#[xdp]
pub fn ackwatch_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// TC verdicts are `TC_ACT_UNSPEC`: carry on with the next filter, as a monitor should.
#[classifier]
pub fn ackwatch_tc(ctx: TcContext) -> i32 {
    observe(
        &ctx,
        &tc_frame(&ctx),
        LinkKind::Ethernet,
        counter::PACKETS_TC,
        tc_ifindex(&ctx),
    );
    TC_ACT_UNSPEC
}

#[classifier]
pub fn ackwatch_tc_ip(ctx: TcContext) -> i32 {
    observe(
        &ctx,
        &tc_frame(&ctx),
        LinkKind::RawIp,
        counter::PACKETS_TC,
        tc_ifindex(&ctx),
    );
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
