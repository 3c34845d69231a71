//! The BPF side: maps, globals, the packet accessor and the programs.

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::__sk_buff;
use aya_ebpf::bindings::{TC_ACT_UNSPEC, xdp_action};
use aya_ebpf::cty::c_void;
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes};
use aya_ebpf::macros::{classifier, map, xdp};
use aya_ebpf::maps::{Array, PerCpuArray, ProgramArray, RingBuf};
use aya_ebpf::programs::{TcContext, XdpContext};
use aya_log_ebpf::info;
use ebpf_probe::abi::{
    ClockParams, Flow, FlowKey, StallRecord, StallWhat, counter, opaque, port_flag,
};
use ebpf_probe::clock::Clock;
use ebpf_probe::decap::{self, Ports, TunnelPorts};
use ebpf_probe::parse::{self, Frame, LinkKind, Reason};
use ebpf_probe::table::{
    self, AgedBucket, Ages, Bucket, Fill, Hash, Held, Seed, Slot, Slots, WAYS,
};
use ebpf_probe::tracker::{Store, scope, track};
use ebpf_probe::verdict::{Config, StallSink};

/// Default capacities; the agent sets the real ones at load time.
const DEFAULT_BUCKETS: u32 = 36_864;
const DEFAULT_PENDING_BUCKETS: u32 = 12_288;
const RING_BYTES: u32 = 256 * 1024;
/// The agent maps the flow tables into its memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The established table (`ebpf_probe::table`): `FLOW_BUCKETS` buckets of tags, and
/// eight slots per bucket.
#[map]
static BUCKETS: Array<Bucket> = Array::with_max_entries(DEFAULT_BUCKETS, BPF_F_MMAPABLE);
#[map]
static FLOWS: Array<Slot> = Array::with_max_entries(DEFAULT_BUCKETS * WAYS, BPF_F_MMAPABLE);
/// Flows in the table and its capacity (`table::Fill`), shared with the agent.
#[map]
static FILL: Array<Fill> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// The table's occupancy bitmap (one bit a bucket, `table::occupy`): set here when a
/// slot is published, cleared by the agent's walk.
#[map]
static OCCUPIED: Array<u64> = Array::with_max_entries(DEFAULT_BUCKETS.div_ceil(64), BPF_F_MMAPABLE);
/// The tables' hash key, chosen by the agent when it creates them (pinned with them).
#[map]
static SEED: Array<Seed> = Array::with_max_entries(1, 0);
/// The pending table (half-open and one-sided flows): the same layout, its own memory.
#[map]
static PENDING_BUCKETS: Array<AgedBucket> =
    Array::with_max_entries(DEFAULT_PENDING_BUCKETS, BPF_F_MMAPABLE);
#[map]
static PENDING_SLOTS: Array<Slot> =
    Array::with_max_entries(DEFAULT_PENDING_BUCKETS * WAYS, BPF_F_MMAPABLE);
#[map]
static PENDING_FILL: Array<Fill> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static PENDING_OCCUPIED: Array<u64> =
    Array::with_max_entries(DEFAULT_PENDING_BUCKETS.div_ceil(64), BPF_F_MMAPABLE);
#[map]
static PORTS: Array<u8> = Array::with_max_entries(65_536, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::ENTRIES, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
/// Per-CPU room for the parsed packet (it does not fit the stack with the rest).
#[map]
static SCRATCH: PerCpuArray<parse::Packet> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU word that values pass through to become unknown to the verifier.
#[map]
static LAUNDER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// The clock's calibration, or the time itself when `CLOCK_FROM_MAP` is set.
#[map]
static CLOCK: Array<ClockParams> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static FLOW_BUCKETS: u32 = DEFAULT_BUCKETS;
#[unsafe(no_mangle)]
static PENDING_TABLE_BUCKETS: u32 = DEFAULT_PENDING_BUCKETS;
#[unsafe(no_mangle)]
static DUPACK_THRESHOLD: u32 = 3;
#[unsafe(no_mangle)]
static STALL_TIMEOUT_NS: u64 = 1_000_000_000;
#[unsafe(no_mangle)]
static TRACK_ALL: u8 = 0;
#[unsafe(no_mangle)]
static CLOCK_FROM_MAP: u8 = 0;
/// Mirror program only: drop each copy after analysis (`--mirror-drop`).
#[unsafe(no_mangle)]
static MIRROR_DROP: u8 = 0;
/// Mirror program only: the UDP ports read as VXLAN and GENEVE.
#[unsafe(no_mangle)]
static TUNNEL_PORTS: TunnelPorts = TunnelPorts {
    vxlan: [0; decap::MAX_TUNNEL_PORTS],
    geneve: [0; decap::MAX_TUNNEL_PORTS],
};

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

/// The clock, each kind read at most once a packet.
struct KernelClock {
    coarse: u64,
    precise: u64,
    /// `ns_per_jiffy` once `coarse` was read (0 with the map's time).
    tick: u64,
}

impl Clock for KernelClock {
    #[inline(always)]
    fn coarse(&mut self) -> u64 {
        if self.coarse == 0 {
            let Some(c) = CLOCK.get(0) else { return 0 };
            self.coarse = if global!(CLOCK_FROM_MAP) != 0 {
                c.map_now
            } else {
                // SAFETY: helper without arguments; the verifier inlines it into a load.
                let j = unsafe { bpf_jiffies64() };
                self.tick = c.ns_per_jiffy;
                j.wrapping_mul(c.ns_per_jiffy).wrapping_add(c.offset)
            };
        }
        self.coarse
    }

    #[inline(always)]
    fn precise(&mut self) -> u64 {
        if self.precise == 0 {
            self.precise = if global!(CLOCK_FROM_MAP) != 0 {
                self.coarse()
            } else {
                // SAFETY: helper without arguments.
                unsafe { bpf_ktime_get_ns() }
            };
        }
        self.precise
    }

    #[inline(always)]
    fn tick(&mut self) -> u64 {
        self.tick
    }
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
        // `hide` keeps LLVM from rewriting `p + N > end` into forms the verifier cannot
        // connect to the load (e.g. `p >= end`, or arithmetic on `end`).
        let p = self.data + hide(off);
        if hide(p + N) > self.end {
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

/// `v` unchanged, but unknown to LLVM: a register move it cannot see through.
/// `core::hint::black_box` did the same through a stack slot, a store and a load on
/// each of the parser's reads (and the verifier tracked the slot: 284,000 verified
/// instructions against 173,000). An empty asm statement would be cheaper still, but
/// gives two instructions the same BTF line-info offset, which the kernel refuses.
#[inline(always)]
fn hide(mut v: usize) -> usize {
    // SAFETY: `v = v` on a register: no memory, no side effect.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack)) };
    v
}

/// The maps of one flow table: the established one, or the pending one (`PENDING`).
struct Table<const PENDING: bool>;

impl<const PENDING: bool> Slots for Table<PENDING> {
    #[inline(always)]
    fn bucket(&mut self, b: u32) -> Option<*mut Bucket> {
        if PENDING {
            // SAFETY: a live bucket; its tags are its first field.
            PENDING_BUCKETS
                .get_ptr_mut(b)
                .map(|p| unsafe { &raw mut (*p).bucket })
        } else {
            BUCKETS.get_ptr_mut(b)
        }
    }

    #[inline(always)]
    fn slot(&mut self, i: u32) -> Option<*mut Slot> {
        if PENDING {
            PENDING_SLOTS.get_ptr_mut(i)
        } else {
            FLOWS.get_ptr_mut(i)
        }
    }

    #[inline(always)]
    fn fill(&mut self) -> Option<*mut Fill> {
        if PENDING {
            PENDING_FILL.get_ptr_mut(0)
        } else {
            FILL.get_ptr_mut(0)
        }
    }

    #[inline(always)]
    fn ages(&mut self, b: u32) -> Option<*mut Ages> {
        if PENDING {
            // SAFETY: a live bucket.
            PENDING_BUCKETS
                .get_ptr_mut(b)
                .map(|p| unsafe { &raw mut (*p).ages })
        } else {
            None
        }
    }

    /// One try inline (no contention: no call); else up to `SPINS` tries in
    /// `bpf_loop` (inlined by the verifier into a loop around the callback), where a
    /// loop written here would be checked once per try.
    #[inline(always)]
    fn lock(&mut self, seq: *mut u64) -> Option<Held> {
        let held = table::try_lock(seq);
        if held.is_some() {
            return held;
        }
        let mut spin = Spin {
            seq,
            value: 0,
            got: 0,
        };
        // SAFETY: a static callback and a context on this stack, for the call's time.
        unsafe {
            bpf_loop(
                // Laundered: with a known count the verifier checks the callback once
                // per step (4,096 steps took it past its limit); with an unknown one,
                // until its states converge, whatever the count.
                launder(table::SPINS),
                spin_once as *mut c_void,
                &mut spin as *mut Spin as *mut c_void,
                0,
            )
        };
        (spin.got != 0).then_some(Held {
            seq,
            value: spin.value,
        })
    }

    #[inline(always)]
    fn launder(&mut self, v: u32) -> u32 {
        launder(v)
    }

    /// Sets the bucket's bit in the table's occupancy bitmap: inserts only.
    #[inline(always)]
    fn published(&mut self, idx: u32) {
        let (w, bit) = table::occupancy(idx);
        let word = if PENDING {
            PENDING_OCCUPIED.get_ptr_mut(w)
        } else {
            OCCUPIED.get_ptr_mut(w)
        };
        if let Some(word) = word {
            table::occupy(word, bit);
        }
    }
}

/// Returns `v`, unknown to the verifier (`Slots::launder`).
#[inline(always)]
fn launder(v: u32) -> u32 {
    match LAUNDER.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        Some(p) => opaque(unsafe { &mut *p }, v),
        None => v,
    }
}

/// The kernel's store: both tables and the other maps.
struct Maps {
    established: Table<false>,
    pending: Table<true>,
}

impl Store for Maps {
    type Established = Table<false>;
    type Pending = Table<true>;

    #[inline(always)]
    fn established(&mut self) -> &mut Table<false> {
        &mut self.established
    }

    #[inline(always)]
    fn pending(&mut self) -> &mut Table<true> {
        &mut self.pending
    }

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
    fn hash(&mut self, key: &FlowKey) -> Result<Hash, Reason> {
        let seed = SEED.get(0).ok_or(counter::MAP_ERROR)?;
        Ok(table::hash(key, seed))
    }

    #[inline(always)]
    fn buckets(&self, pending: bool) -> u32 {
        if pending {
            global!(PENDING_TABLE_BUCKETS)
        } else {
            global!(FLOW_BUCKETS)
        }
    }

    #[inline(always)]
    fn count(&mut self, index: u32) {
        bump(index);
    }
}

/// `bpf_loop`'s context for `Table::lock`.
#[repr(C)]
struct Spin {
    seq: *mut u64,
    value: u64,
    got: u64,
}

/// One try of a contended lock; 1 stops the loop.
#[inline(never)]
extern "C" fn spin_once(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Spin` that `Table::lock` passed.
    let spin = unsafe { &mut *(ctx as *mut Spin) };
    match table::try_lock(spin.seq) {
        Some(held) => {
            spin.value = held.value;
            spin.got = 1;
            1
        }
        None => 0,
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

    #[inline(always)]
    fn impossible(&mut self) {
        bump(counter::IMPOSSIBLE_STATE);
    }
}

/// The one path every program takes. Never fails: errors only move counters. One
/// counter per packet: its outcome in its hook's row (`counter::row`), which the agent
/// sums into the hook's packet count.
#[inline(always)]
fn observe<C: EbpfContext + Interface>(ctx: &C, frame: &Packet, link: LinkKind, hook: u32) {
    let outcome = match parse_and_track(ctx, frame, link) {
        Ok(()) => counter::TRACKED,
        Err(reason) => reason,
    };
    bump(counter::row(hook) + outcome);
}

// Inlined: as a BPF subprogram it would return its `Result` through the caller's stack,
// which the verifier refuses ("cannot return stack pointer to the caller").
#[inline(always)]
fn parse_and_track<C: EbpfContext + Interface>(
    ctx: &C,
    frame: &Packet,
    link: LinkKind,
) -> Result<(), Reason> {
    let cfg = Config {
        dupack_threshold: global!(DUPACK_THRESHOLD),
        stall_timeout_ns: global!(STALL_TIMEOUT_NS),
        track_all: global!(TRACK_ALL) != 0,
    };
    // Untracked traffic leaves here, after a handful of loads.
    let at = parse::locate(frame, link)?;
    let mut maps = Maps {
        established: Table,
        pending: Table,
    };
    let ports = scope(&maps, &cfg, frame, &at)?;
    let pkt = SCRATCH.get_ptr_mut(0).ok_or(counter::MAP_ERROR)?;
    // SAFETY: this CPU's slot; nothing else runs on this CPU during the program.
    let pkt = unsafe { &mut *pkt };
    parse::parse_located(frame, &at, pkt)?;
    let mut ring = Ring {
        key: &pkt.key,
        last: None,
    };
    let mut clock = KernelClock {
        coarse: 0,
        precise: 0,
        tick: 0,
    };
    let ifindex = ctx.ifindex();
    let tracked = track(&mut maps, &mut ring, &cfg, pkt, ports, &mut clock, ifindex);
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

/// The interface a packet came in or goes out on, read only for a tracked packet: on
/// XDP, `ingress_ifindex` is two dependent loads (the receive queue, then its
/// device), which were 9% of an untracked packet's time.
trait Interface {
    fn ifindex(&self) -> u32;
}

impl Interface for XdpContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
}

impl Interface for TcContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer the kernel passed in.
        unsafe { (*self.skb.skb).ifindex }
    }
}

#[xdp]
// Inlined into the entry point aya generates: a BPF-to-BPF call is a return through
// the SRSO return thunk here, paid on every packet.
#[inline(always)]
pub fn ackwatch_xdp(ctx: XdpContext) -> u32 {
    observe(
        &ctx,
        &xdp_frame(&ctx),
        LinkKind::Ethernet,
        counter::PACKETS_XDP,
    );
    xdp_action::XDP_PASS
}

#[xdp]
#[inline(always)]
pub fn ackwatch_xdp_ip(ctx: XdpContext) -> u32 {
    observe(
        &ctx,
        &xdp_frame(&ctx),
        LinkKind::RawIp,
        counter::PACKETS_XDP,
    );
    xdp_action::XDP_PASS
}

/// The tunnel ports as the loader set them.
struct LoadedPorts;

impl Ports for LoadedPorts {
    #[inline(always)]
    fn vxlan(&self, i: usize) -> u16 {
        // SAFETY: a read-only global; volatile, so the loader's value is read.
        unsafe { core::ptr::read_volatile(&TUNNEL_PORTS.vxlan[i]) }
    }
    #[inline(always)]
    fn geneve(&self, i: usize) -> u16 {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&TUNNEL_PORTS.geneve[i]) }
    }
    #[inline(always)]
    fn opaque(&self, v: u32) -> u32 {
        launder(v)
    }
}

/// A mirror port (`ackwatch run --mirror`): each frame is a copy, plain or in a tunnel
/// (`decap`), tracked as the inline programs track packets. Decapsulation lives here
/// only, so the inline programs pay nothing for it. Copies pass, or are dropped after
/// analysis when the agent set MIRROR_DROP (the port's own ARP and ICMPv6 excepted).
#[xdp]
#[inline(always)]
pub fn ackwatch_xdp_mirror(ctx: XdpContext) -> u32 {
    let frame = xdp_frame(&ctx);
    let keep = match decap::copy_start(&frame, &LoadedPorts) {
        Ok(copy) => {
            bump(counter::MIRROR_FRAMES + copy.encap as u32);
            // Laundered: a constant on each path, and the verifier would check the
            // tracker once per constant (`copy_start` launders the offset).
            let keep = launder(copy.link_local as u32) != 0;
            let inner = Packet {
                data: frame.data + copy.base,
                end: frame.end,
                wire_len: frame.wire_len.saturating_sub(copy.base),
                skb: None,
            };
            observe(&ctx, &inner, LinkKind::Ethernet, counter::PACKETS_XDP);
            keep
        }
        Err(reason) => {
            bump(counter::row(counter::PACKETS_XDP) + reason);
            false
        }
    };
    if keep || global!(MIRROR_DROP) == 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Does nothing: the baseline the benchmarks subtract (never attached).
#[xdp]
pub fn ackwatch_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Where `ackwatch_walk` goes on: `ackwatch_xdp` or `ackwatch_pass`.
#[map]
static WALK_TO: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// What `ackwatch_walk` adds where: `[offset, step]`.
#[map]
static WALK: Array<[u32; 2]> = Array::with_max_entries(1, 0);

/// Adds `step` to the big-endian word at `offset` of the frame, then goes on to the
/// probe or the baseline (benchmarks only, never attached). A test run repeats one
/// frame and keeps what a run wrote to it, so repeated runs of this program see
/// consecutive segments of a flow, or a new flow each (a step of the sequence number,
/// or of the source address), as the probe does on a link: warm, unlike single runs.
#[xdp]
pub fn ackwatch_walk(ctx: XdpContext) -> u32 {
    if let Some(w) = WALK.get(0) {
        let at = ctx.data() + (w[0] & 0xff) as usize;
        if at + 4 <= ctx.data_end() {
            let word = at as *mut u32;
            // SAFETY: four bytes inside the frame (checked above).
            unsafe {
                let v = u32::from_be(word.read_unaligned()).wrapping_add(w[1]);
                word.write_unaligned(v.to_be());
            }
        }
        // SAFETY: a tail call with this program's own context.
        unsafe { WALK_TO.tail_call(&ctx, 0) };
    }
    xdp_action::XDP_PASS
}

/// Reads jiffies and the precise clock at once into CLOCK, for the agent's calibration
/// of the coarse clock (run with BPF_PROG_TEST_RUN, never attached).
#[xdp]
pub fn ackwatch_clock(_ctx: XdpContext) -> u32 {
    if let Some(c) = CLOCK.get_ptr_mut(0) {
        // SAFETY: helpers without arguments; a map value pointer.
        unsafe {
            (*c).sample_jiffies = bpf_jiffies64();
            (*c).sample_ns = bpf_ktime_get_ns();
        }
    }
    xdp_action::XDP_PASS
}

/// TC verdicts are `TC_ACT_UNSPEC`: carry on with the next filter, as a monitor should.
#[classifier]
#[inline(always)]
pub fn ackwatch_tc(ctx: TcContext) -> i32 {
    observe(
        &ctx,
        &tc_frame(&ctx),
        LinkKind::Ethernet,
        counter::PACKETS_TC,
    );
    TC_ACT_UNSPEC
}

#[classifier]
#[inline(always)]
pub fn ackwatch_tc_ip(ctx: TcContext) -> i32 {
    observe(&ctx, &tc_frame(&ctx), LinkKind::RawIp, counter::PACKETS_TC);
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
