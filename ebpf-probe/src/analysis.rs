//! Wireshark 4.0's TCP sequence analysis (`tcp_analyze_sequence_number()` in
//! `epan/dissectors/packet-tcp.c`), per packet, on the state of both directions.
//! Every flag is computed against the state before the packet; then the state moves.
//! See docs/semantics.md for the rules and their tshark filters.

use crate::abi::{Half, event, opaque};
use crate::clock::Clock;
use crate::parse::{Segment, TH_ACK, TH_FIN, TH_RST, TH_SYN};
use crate::seq::{gt, le, lt};

pub const A_ZERO_WINDOW_PROBE: u32 = 1 << 0;
pub const A_ZERO_WINDOW: u32 = 1 << 1;
pub const A_LOST_SEGMENT: u32 = 1 << 2;
pub const A_KEEP_ALIVE: u32 = 1 << 3;
pub const A_WINDOW_UPDATE: u32 = 1 << 4;
pub const A_KEEP_ALIVE_ACK: u32 = 1 << 5;
pub const A_ZERO_WINDOW_PROBE_ACK: u32 = 1 << 6;
pub const A_DUP_ACK: u32 = 1 << 7;
pub const A_ACKED_UNSEEN: u32 = 1 << 8;
pub const A_SPURIOUS_RETRANSMISSION: u32 = 1 << 9;
pub const A_FAST_RETRANSMISSION: u32 = 1 << 10;
pub const A_OUT_OF_ORDER: u32 = 1 << 11;
pub const A_RETRANSMISSION: u32 = 1 << 12;
/// Data (or SYN/FIN) that did not advance `nextseq`; ackwatch's own, not Wireshark's.
pub const A_NOT_ADVANCED: u32 = 1 << 13;

/// Wireshark's fast-retransmission window after the last duplicate ACK.
const FAST_RETX_NS: u64 = 20_000_000;
/// Out-of-order window when the initial RTT is unknown.
const OOO_DEFAULT_NS: u64 = 3_000_000;

const SFR: u8 = TH_SYN | TH_FIN | TH_RST;
/// Wireshark's `dupacknum = -1` in its unsigned field, set on the peer after an
/// ACKed-unseen segment: being >= 2, it makes the next matching retransmission "fast"
/// within 20 ms, as tshark 4.0.17 reports (zeek/reassembly.pcap, frames 8, 10, 12).
/// The next duplicate ACK restarts the count at 1.
const DUPACK_NEUTRALIZED: u32 = u32::MAX;

/// Analyses one segment sent by `fwd`'s side, updates both directions' state and
/// `fwd`'s counters, and returns the analysis bits (`A_*`). `now` is the coarse time;
/// `clock` gives the precise one where the out-of-order window needs it. `irtt` is the
/// flow's initial RTT (0 when unknown).
#[inline(always)]
pub fn analyze<C: Clock>(
    fwd: &mut Half,
    rev: &mut Half,
    seg: &Segment,
    now: u64,
    clock: &mut C,
    irtt: u64,
) -> u32 {
    let mut a = flags_before_ack_update(fwd, rev, seg);
    a = opaque(&mut fwd.last_analysis, a);
    if seg.ack != fwd.lastack {
        fwd.dupacknum = 0;
    }
    if a & A_DUP_ACK != 0 {
        // After an ACKed-unseen segment the run restarts at 1 (Wireshark's -1 case).
        fwd.dupacknum = if fwd.dupacknum == DUPACK_NEUTRALIZED {
            1
        } else {
            fwd.dupacknum.wrapping_add(1)
        };
    }
    if seg.has(TH_ACK) && rev.maxseqtobeacked != 0 && gt(seg.ack, rev.maxseqtobeacked) {
        a |= A_ACKED_UNSEEN;
        // Report each unseen stretch once.
        rev.maxseqtobeacked = rev.nextseq;
        rev.dupacknum = DUPACK_NEUTRALIZED;
    }
    a |= retransmission_kind(fwd, rev, seg, now, clock, irtt, a);
    a = opaque(&mut fwd.last_analysis, a);
    advance(fwd, seg, now, clock, irtt, a);
    count(fwd, a);
    opaque(&mut fwd.last_analysis, a)
}

/// Zero-window probe, zero window, lost segment, keep-alive, window update, keep-alive
/// ACK, zero-window-probe ACK and duplicate ACK, in Wireshark's order.
#[inline(always)]
fn flags_before_ack_update(fwd: &Half, rev: &Half, seg: &Segment) -> u32 {
    if seg.seglen == 1 && seg.seq == fwd.nextseq && rev.window == 0 {
        return A_ZERO_WINDOW_PROBE;
    }
    let mut a = 0;
    let no_sfr = !seg.has(SFR);
    if seg.window == 0 && no_sfr {
        a |= A_ZERO_WINDOW;
    }
    if fwd.nextseq != 0 && gt(seg.seq, fwd.nextseq) && !seg.has(TH_RST) {
        a |= A_LOST_SEGMENT;
    }
    if seg.seglen <= 1 && seg.seq == fwd.nextseq.wrapping_sub(1) && no_sfr {
        a |= A_KEEP_ALIVE;
    }
    let same_point = seg.seglen == 0 && seg.seq == fwd.nextseq && seg.ack == fwd.lastack && no_sfr;
    if same_point && seg.window != 0 && seg.window != fwd.window {
        a |= A_WINDOW_UPDATE;
    }
    if same_point && seg.window == fwd.window {
        if seg.window != 0 && rev.last_analysis & A_KEEP_ALIVE != 0 {
            a |= A_KEEP_ALIVE_ACK;
        } else if seg.window == 0 && rev.last_analysis & A_ZERO_WINDOW_PROBE != 0 {
            a |= A_ZERO_WINDOW_PROBE_ACK;
        } else if seg.window != 0 {
            a |= A_DUP_ACK;
        }
    }
    a
}

/// Spurious, fast, out-of-order or plain retransmission, first match, for segments
/// with data, SYN or FIN that are not keep-alives.
#[inline(always)]
fn retransmission_kind<C: Clock>(
    fwd: &Half,
    rev: &Half,
    seg: &Segment,
    now: u64,
    clock: &mut C,
    irtt: u64,
    a: u32,
) -> u32 {
    let syn_fin = seg.has(TH_SYN | TH_FIN);
    if (seg.seglen == 0 && !syn_fin) || a & A_KEEP_ALIVE != 0 {
        return 0;
    }
    let mut not_advanced = fwd.nextseq != 0 && lt(seg.seq, fwd.nextseq);
    // One byte before nextseq with more than one byte: new data after a probe.
    if seg.seglen > 1 && fwd.nextseq.wrapping_sub(1) == seg.seq {
        not_advanced = false;
    }
    let mark = if not_advanced { A_NOT_ADVANCED } else { 0 };
    let end = seg.seq.wrapping_add(seg.seglen);
    if seg.seglen > 0 && rev.lastack != 0 && le(end, rev.lastack) {
        return mark | A_SPURIOUS_RETRANSMISSION;
    }
    if !not_advanced {
        return 0;
    }
    if rev.dupacknum >= 2
        && rev.lastack == seg.seq
        && now.wrapping_sub(rev.lastacktime) < FAST_RETX_NS
    {
        return mark | A_FAST_RETRANSMISSION;
    }
    let next = end.wrapping_add(syn_fin as u32);
    if fwd.nextseq != next && since_advance(fwd, clock) < ooo_window(irtt) {
        return mark | A_OUT_OF_ORDER;
    }
    mark | A_RETRANSMISSION
}

/// The out-of-order window: one initial RTT, 3 ms when unknown.
#[inline(always)]
fn ooo_window(irtt: u64) -> u64 {
    if irtt != 0 { irtt } else { OOO_DEFAULT_NS }
}

/// Windows of at least this many ticks of the coarse clock are timed on it.
const COARSE_WINDOW_TICKS: u64 = 8;

/// `nextseqtime` for a segment that moves `nextseq` at coarse time `now`: the coarse
/// time when the out-of-order window spans `COARSE_WINDOW_TICKS` ticks (the coarse
/// clock is within half a tick of the precise one, 1/16 of such a window: a WAN
/// client's), so in-order data reads no clock helper; else the precise time (a LAN's
/// window is microseconds).
#[inline(always)]
fn stamp<C: Clock>(now: u64, clock: &mut C, irtt: u64) -> u64 {
    if ooo_window(irtt) >= COARSE_WINDOW_TICKS * clock.tick() {
        now
    } else {
        clock.precise()
    }
}

/// Time since `nextseq` last moved. Wireshark's difference is unsigned (a capture's
/// clock may step back: then the segment is no out-of-order one); in the kernel, a
/// coarse stamp may lie up to half a tick after the precise time, which is 0.
#[inline(always)]
fn since_advance<C: Clock>(fwd: &Half, clock: &mut C) -> u64 {
    let now = clock.precise();
    match now.checked_sub(fwd.nextseqtime) {
        Some(d) => d,
        None if clock.tick() != 0 => 0,
        None => now.wrapping_sub(fwd.nextseqtime),
    }
}

/// Moves `nextseq`, `maxseqtobeacked`, window and ACK after the flags are known.
#[inline(always)]
fn advance<C: Clock>(fwd: &mut Half, seg: &Segment, now: u64, clock: &mut C, irtt: u64, a: u32) {
    let mut next = seg.seq.wrapping_add(seg.seglen);
    if seg.has(TH_SYN | TH_FIN) {
        next = next.wrapping_add(1);
    }
    let probe = a & A_ZERO_WINDOW_PROBE != 0;
    if (gt(next, fwd.nextseq) || fwd.nextseq == 0) && !probe {
        fwd.nextseq = next;
        fwd.nextseqtime = stamp(now, clock, irtt);
    }
    if (seg.seq == fwd.maxseqtobeacked || fwd.maxseqtobeacked == 0) && !probe {
        fwd.maxseqtobeacked = fwd.nextseq;
    }
    fwd.window = seg.window;
    fwd.lastack = seg.ack;
    fwd.lastacktime = now;
    fwd.last_analysis = a;
}

#[inline(always)]
fn count(fwd: &mut Half, a: u32) {
    let bump = |e: &mut [u32; event::COUNT], bit: u32, i: usize| {
        if a & bit != 0 {
            e[i] = e[i].wrapping_add(1);
        }
    };
    let e = &mut fwd.events;
    bump(e, A_DUP_ACK, event::DUP_ACK);
    bump(
        e,
        A_RETRANSMISSION | A_FAST_RETRANSMISSION | A_SPURIOUS_RETRANSMISSION,
        event::RETRANSMISSION,
    );
    bump(e, A_FAST_RETRANSMISSION, event::FAST_RETRANSMISSION);
    bump(e, A_SPURIOUS_RETRANSMISSION, event::SPURIOUS_RETRANSMISSION);
    bump(e, A_OUT_OF_ORDER, event::OUT_OF_ORDER);
    bump(e, A_LOST_SEGMENT, event::LOST_SEGMENT);
    bump(e, A_ACKED_UNSEEN, event::ACKED_UNSEEN);
    bump(e, A_ZERO_WINDOW, event::ZERO_WINDOW);
    bump(e, A_KEEP_ALIVE, event::KEEP_ALIVE);
    bump(e, A_WINDOW_UPDATE, event::WINDOW_UPDATE);
    bump(e, A_ZERO_WINDOW_PROBE, event::ZERO_WINDOW_PROBE);
    bump(e, A_NOT_ADVANCED, event::NOT_ADVANCED);
}
