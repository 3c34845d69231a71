//! Types shared by the kernel programs and the host: map keys and values, ring-buffer
//! records, counter indices. All `#[repr(C)]` with explicit padding and no enums inside,
//! so the bytes mean the same on both sides; enums are decoded with `TryFrom` on read.

use core::mem::size_of;

/// Canonical flow key: the two endpoints in ascending (address, port) order, so both
/// directions of a connection meet in one entry. Addresses are IPv6 as four words in
/// network byte order (`u32::from_ne_bytes` of each 4 bytes), IPv4 ones IPv4-mapped
/// (`::ffff:a.b.c.d`); words, not bytes, so that BPF code copies and compares them
/// without memcpy. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr: [[u32; 4]; 2],
    pub port: [u16; 2],
}

impl FlowKey {
    /// Endpoint `i`'s address as the 16 bytes of an IPv6 address.
    pub fn addr_bytes(&self, i: usize) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (w, chunk) in self.addr[i & 1].iter().zip(b.chunks_mut(4)) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        b
    }
}
const _: () = assert!(size_of::<FlowKey>() == 36);

/// Per-direction event counters, Wireshark 4.0 definitions (see `analysis`).
pub mod event {
    pub const DUP_ACK: usize = 0;
    /// Every kind: plain, fast and spurious, as tshark's `tcp.analysis.retransmission`.
    pub const RETRANSMISSION: usize = 1;
    pub const FAST_RETRANSMISSION: usize = 2;
    pub const SPURIOUS_RETRANSMISSION: usize = 3;
    pub const OUT_OF_ORDER: usize = 4;
    pub const LOST_SEGMENT: usize = 5;
    pub const ACKED_UNSEEN: usize = 6;
    pub const ZERO_WINDOW: usize = 7;
    pub const KEEP_ALIVE: usize = 8;
    pub const WINDOW_UPDATE: usize = 9;
    pub const ZERO_WINDOW_PROBE: usize = 10;
    /// Segments with data (or SYN/FIN) that did not advance `nextseq`, whatever tshark
    /// called them: on a LAN tshark calls many retransmissions out-of-order.
    pub const NOT_ADVANCED: usize = 11;
    pub const COUNT: usize = 12;
}

/// Half flags (`Half::flags`).
pub mod half_flag {
    /// A packet from this side has been seen (`first_seq` is valid).
    pub const SEEN: u32 = 1;
    /// As receiver: a retransmission from the peer covering `hole` has been seen.
    pub const HOLE_RETX: u32 = 2;
    /// As receiver: this side's ACK has sat at `hole` long enough, the peer is stuck.
    pub const STALLED: u32 = 4;
    /// Sent a FIN.
    pub const FIN: u32 = 8;
    /// The last ACK carried SACK blocks (`sack` is valid).
    pub const SACK: u32 = 16;
    /// An ACK has been seen from this side (`hole` is valid).
    pub const ACKED: u32 = 32;
    /// As receiver: the candidate record for `hole` was sent.
    pub const CANDIDATE: u32 = 64;
}

/// State of one direction: the packets this side sends. Wireshark's
/// `tcp_analyze_seq_info`, counters, and the stall verdict, where this side plays R
/// (the receiver that sends duplicate ACKs) and the peer plays D. The fields before
/// `maxseqtobeacked` are all the agent's whole pass reads of a side (the stall rule's
/// test and the totals: `SWEEP_HALF_BYTES`), so it reads them, and not the slot's other
/// cache lines.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Half {
    pub nextseq: u32,
    pub flags: u32,
    /// Verdict, this side as R: highest ACK sent (the hole H while a run lasts).
    pub hole: u32,
    /// Duplicate ACKs for `hole` by the verdict's definition (RFC 5681 plus SACK).
    pub dup_run: u32,
    pub packets: u64,
    pub events: [u32; event::COUNT],
    pub maxseqtobeacked: u32,
    pub lastack: u32,
    pub window: u32,
    pub dupacknum: u32,
    /// Analysis bits (`analysis::A_*`) of this side's last segment.
    pub last_analysis: u32,
    /// Sequence number of the first segment seen from this side.
    pub first_seq: u32,
    pub lastacktime: u64,
    pub nextseqtime: u64,
    /// TCP payload bytes.
    pub bytes: u64,
    /// Time of the first duplicate ACK of the run, 0 when no run is open.
    pub hole_since: u64,
    /// Lowest gap this side's data skipped at the monitor (lost upstream), [lo, hi).
    pub gap: [u32; 2],
    /// Latest span this side retransmitted, [lo, hi).
    pub retx: [u32; 2],
    /// First SACK block of the last ACK: new SACK information is a change of it.
    pub sack: [u32; 2],
    /// Number of stall episodes with this side as R.
    pub stalls: u32,
    /// Per-packet working bits (see `opaque`).
    pub scratch: u32,
}
const _: () = assert!(size_of::<Half>() == 160);
/// The leading bytes of a `Half` that the agent's whole pass reads.
pub const SWEEP_HALF_BYTES: usize = core::mem::offset_of!(Half, maxseqtobeacked);
const _: () = assert!(SWEEP_HALF_BYTES.is_multiple_of(8));

/// Flow states (`Flow::state`).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlowState {
    Active = 0,
    Stalled = 1,
    Recovered = 2,
    Closed = 3,
}

/// Flow classes (`Flow::class`).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlowClass {
    Tcp = 0,
    Ctcp = 1,
    Rfc9329 = 2,
}

macro_rules! try_from_u8 {
    ($t:ident { $($v:ident),* }) => {
        impl TryFrom<u8> for $t {
            type Error = u8;
            fn try_from(v: u8) -> Result<Self, u8> {
                $(if v == $t::$v as u8 { return Ok($t::$v); })*
                Err(v)
            }
        }
    };
}
try_from_u8!(FlowState {
    Active,
    Stalled,
    Recovered,
    Closed
});
try_from_u8!(FlowClass { Tcp, Ctcp, Rfc9329 });

/// One connection, both directions. `half[i]` is what endpoint `key.addr[i]` sends.
/// The flow's own fields come first, beside the slot's lock and key: the agent's whole
/// pass reads them and the leading bytes of each half.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Flow {
    pub first_ts: u64,
    pub last_ts: u64,
    /// Time of the most recent SYN (without ACK): Wireshark's `ts_mru_syn`.
    pub syn_ts: u64,
    /// Initial RTT, SYN to the ACK completing the handshake; 0 when unknown.
    pub irtt: u64,
    /// Interface of the last packet.
    pub ifindex: u32,
    pub state: u8,
    pub class: u8,
    /// Index of the client endpoint: the SYN sender, else the side not on a
    /// configured port, else the first sender.
    pub client: u8,
    pub _pad: u8,
    pub half: [Half; 2],
}
const _: () = assert!(size_of::<Flow>() == 2 * 160 + 40);
const _: () = assert!(align_of::<Flow>() == 8);

impl Flow {
    /// `*self = *from` a word at a time: in BPF a plain assignment of a flow becomes a
    /// call to a byte-by-byte `memmove` (720 loads and stores).
    #[inline(always)]
    pub fn copy_from(&mut self, from: &Flow) {
        const WORDS: usize = size_of::<Flow>() / 8;
        let (to, from) = (
            self as *mut Flow as *mut u64,
            from as *const Flow as *const u64,
        );
        for i in 0..WORDS {
            // SAFETY: both are whole, 8-aligned flows (asserted above); volatile keeps
            // LLVM from turning the loop back into a memmove call.
            unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) }
        }
    }
}

impl Flow {
    /// `*self = Flow::default()` a word at a time (as `copy_from`): a new pending entry
    /// in a slot that held another flow.
    #[inline(always)]
    pub fn clear(&mut self) {
        const WORDS: usize = size_of::<Flow>() / 8;
        let to = self as *mut Flow as *mut u64;
        for i in 0..WORDS {
            // SAFETY: a whole, 8-aligned flow; all-zero words are a valid flow.
            unsafe { core::ptr::write_volatile(to.add(i), 0) }
        }
    }
}

/// Stall transitions (`StallRecord::what`).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StallWhat {
    Started = 0,
    Recovered = 1,
    Ended = 2,
    /// Not a transition: the K-th duplicate ACK for a hole, with data beyond it. The
    /// flow may stall without another packet (a silent sender), so the agent checks it
    /// every sweep from now on instead of waiting for its walk of the whole table.
    Candidate = 3,
    /// Not a transition: D retransmitted the hole after R had waited T or more, before
    /// a stall was declared. A slow but healthy sender's answer, counted with its wait
    /// (`at - since`); the wait restarts from it.
    LateAnswer = 4,
}

/// Stall kinds (`StallRecord::kind`).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StallKind {
    /// No retransmission of the hole seen: the sender ignores duplicate ACKs (cTCP).
    Unanswered = 0,
    /// The sender did retransmit the hole, the receiver still lacks it.
    RetransmissionsLost = 1,
}

/// Where the missing segment was lost, as seen from the monitor.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LossSide {
    Unknown = 0,
    /// Between the sender and the monitor: the monitor never saw the segment.
    Upstream = 1,
    /// Between the monitor and the receiver: the monitor saw it, the receiver asks for it.
    Downstream = 2,
}
try_from_u8!(StallWhat {
    Started,
    Recovered,
    Ended,
    Candidate,
    LateAnswer
});
try_from_u8!(StallKind {
    Unanswered,
    RetransmissionsLost
});
try_from_u8!(LossSide {
    Unknown,
    Upstream,
    Downstream
});

/// The probe's clock. With `map_now` set (tests, replays) it is the time; otherwise the
/// coarse time is `jiffies * ns_per_jiffy + offset` (no helper call: the verifier
/// inlines `bpf_jiffies64`), which the agent calibrates at load against the precise
/// clock (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) that the probe reads only where a rule
/// needs sub-tick precision.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct ClockParams {
    pub map_now: u64,
    pub ns_per_jiffy: u64,
    pub offset: u64,
    /// Written by the calibration program: a jiffies reading and the precise time.
    pub sample_jiffies: u64,
    pub sample_ns: u64,
}

/// Ring-buffer record sent on entering and leaving the stalled state.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct StallRecord {
    pub key: FlowKey,
    pub what: u8,
    pub class: u8,
    /// Endpoint index of the stuck data sender D.
    pub stuck: u8,
    pub kind: u8,
    pub loss: u8,
    pub client: u8,
    /// A retransmission covering the hole was seen (meaningful on recovery).
    pub retx_seen: u8,
    pub _pad: u8,
    pub hole: u32,
    pub dup_acks: u32,
    pub ifindex: u32,
    /// First duplicate ACK of the episode.
    pub since: u64,
    /// When this transition happened.
    pub at: u64,
}
const _: () = assert!(size_of::<StallRecord>() == 72);

/// Indices of the per-CPU counter array. Reasons a packet is not tracked come first.
pub mod counter {
    pub const NOT_IP: u32 = 0;
    pub const NOT_TCP: u32 = 1;
    pub const TRUNCATED: u32 = 2;
    pub const BAD_HEADER_LEN: u32 = 3;
    pub const FRAGMENT: u32 = 4;
    pub const EXT_HEADER_LIMIT: u32 = 5;
    pub const OUT_OF_SCOPE: u32 = 6;
    pub const TABLE_FULL: u32 = 7;
    /// A packet with no entry that may not create one (a stray RST).
    pub const NO_FLOW: u32 = 8;
    pub const MAP_ERROR: u32 = 9;
    /// The packet's flow stayed locked by the other hook (or the agent) for a whole
    /// bounded spin: the packet passes untracked.
    pub const FLOW_BUSY: u32 = 10;
    /// A mirror port's copy whose tunnel headers end early.
    pub const ENCAP_TRUNCATED: u32 = 11;
    /// A mirror port's copy in an encapsulation the probe does not read (`decap`).
    pub const ENCAP_UNSUPPORTED: u32 = 12;
    /// Number of reasons; names in `REASON_NAMES`.
    pub const REASONS: u32 = 13;
    pub const PACKETS_XDP: u32 = 13;
    pub const PACKETS_TC: u32 = 14;
    pub const TRACKED: u32 = 15;
    pub const RINGBUF_FULL: u32 = 16;
    /// Flows given a pending entry: half-open, or seen from one side only.
    pub const PENDING_INSERTS: u32 = 17;
    /// A verdict refused because the state it read was impossible (fewer than K
    /// duplicate ACKs, no start time): never expected, never reported.
    pub const IMPOSSIBLE_STATE: u32 = 18;
    /// Mirror-port copies whose frame was found, one counter per `decap::Encap`.
    pub const MIRROR_FRAMES: u32 = 19;
    /// Pending entries that lost their place to a new flow: the pending table held its
    /// capacity, or both of the new key's buckets were full (`table::replace_oldest`).
    pub const PENDING_EVICTIONS: u32 = MIRROR_FRAMES + crate::decap::ENCAPS as u32;
    pub const COUNT: u32 = PENDING_EVICTIONS + 1;
    /// The kernel counts a packet once: its outcome (a reason, or `TRACKED`) in the row
    /// of its hook (`row`); the hooks' packet counts are the sums of their rows
    /// (`fold`). Other counters use the first row.
    pub const ENTRIES: u32 = 2 * COUNT;

    #[inline(always)]
    pub const fn row(hook: u32) -> u32 {
        if hook == PACKETS_TC { COUNT } else { 0 }
    }

    /// The kernel's `ENTRIES` counters (summed over CPUs) as `COUNT` counters: rows
    /// added, and each hook's packets counted from its outcomes.
    pub fn fold(raw: &[u64]) -> [u64; COUNT as usize] {
        let at = |i: u32| raw.get(i as usize).copied().unwrap_or(0);
        let mut out = [0u64; COUNT as usize];
        for i in 0..COUNT {
            out[i as usize] = at(i) + at(COUNT + i);
        }
        for hook in [PACKETS_XDP, PACKETS_TC] {
            let row = row(hook);
            out[hook as usize] = (0..REASONS).chain([TRACKED]).map(|o| at(row + o)).sum();
        }
        out
    }

    pub const REASON_NAMES: [&str; REASONS as usize] = [
        "not_ip",
        "not_tcp",
        "truncated",
        "bad_header_length",
        "fragment",
        "ext_header_limit",
        "out_of_scope",
        "table_full",
        "no_flow",
        "map_error",
        "flow_busy",
        "encap_truncated",
        "encap_unsupported",
    ];
}

/// Flags of the per-port scope array (`PORTS` map, 65,536 entries).
pub mod port_flag {
    /// A configured cTCP server port.
    pub const CTCP: u8 = 1;
    /// A flow with the cTCP payload signature was seen on this port: packets on it
    /// are looked up in the flow table (but create no entry without the signature).
    pub const SIGNATURE: u8 = 2;
}

/// Returns `v` after a round trip through `slot`, a field of the flow: map memory in
/// the kernel, whose contents the verifier does not know. A flag word built along the
/// branches of the analysis and tested further down would otherwise be a known constant
/// on each path, and the verifier, which must keep such constants exact, could not merge
/// the paths: the analysis took 670,000 verified instructions instead of a few thousand.
#[inline(always)]
pub fn opaque(slot: &mut u32, v: u32) -> u32 {
    // SAFETY: `slot` is a valid, exclusive reference.
    unsafe {
        core::ptr::write_volatile(slot, v);
        core::ptr::read_volatile(slot)
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), integer and array fields only, no implicit padding (sizes asserted).
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StallRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClockParams {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::table::Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::table::Slot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::table::Seed {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::table::Fill {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::decap::TunnelPorts {}
}
