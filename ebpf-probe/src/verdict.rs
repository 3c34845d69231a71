//! The "stuck on duplicate ACKs" verdict (semantics.md, "The verdict"). Each side is
//! judged as R, the receiver that sends duplicate ACKs for its hole H, with the peer as
//! D, the sender that should retransmit. The half-flow D->R is stalled when R sent at
//! least K duplicate ACKs for H (a pure ACK for H with new SACK information counts even
//! if the window moved), D has data beyond H, and R's ACK has stayed at H for T since
//! the first of them. It rests on R's ACK, not on when a retransmission was seen.

use crate::abi::{Flow, Half, LossSide, StallKind, StallRecord, StallWhat, half_flag};
use crate::analysis::{A_KEEP_ALIVE, A_LOST_SEGMENT};
use crate::parse::{Segment, TH_ACK, TH_FIN, TH_RST, TH_SYN};
use crate::seq::{gt, le, lt, within};

/// Verdict settings, fixed at load time in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// K: duplicate ACKs for one hole before a flow may be stalled.
    pub dupack_threshold: u32,
    /// T: how long R's ACK must stay at the hole, from the first duplicate ACK.
    pub stall_timeout_ns: u64,
    /// Track every TCP flow, not only cTCP ones.
    pub track_all: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dupack_threshold: 3,
            stall_timeout_ns: 1_000_000_000,
            track_all: false,
        }
    }
}

/// Receives stall transitions. `r` is the index of R, the side whose ACK is stuck.
/// Called with the flow as it stands at the transition (hole and counts intact).
pub trait StallSink {
    fn stall(&mut self, flow: &Flow, r: usize, what: StallWhat, now: u64);
    /// A verdict found the state impossible (`counter::IMPOSSIBLE_STATE`) and refused.
    fn impossible(&mut self);
}

/// Both halves as (R, D) for receiver index `r`.
#[inline(always)]
pub fn halves(flow: &mut Flow, r: usize) -> (&mut Half, &mut Half) {
    let [a, b] = &mut flow.half;
    if r == 0 { (a, b) } else { (b, a) }
}

/// Whether the pure ACK `seg` from R is a duplicate ACK for the verdict (RFC 5681: no
/// data, no SYN/FIN, same ACK, the peer has data outstanding, same window; plus RFC 6675:
/// new SACK information counts even when the window moved). Not an ACK of a keep-alive.
/// Computed on the state before the packet.
#[inline(always)]
pub fn is_verdict_dup(r: &Half, d: &Half, seg: &Segment) -> bool {
    if seg.seglen != 0 || seg.has(TH_SYN | TH_FIN | TH_RST) || !seg.has(TH_ACK) {
        return false;
    }
    if r.flags & half_flag::ACKED == 0 || seg.ack != r.hole || !gt(d.nextseq, seg.ack) {
        return false;
    }
    if d.last_analysis & A_KEEP_ALIVE != 0 {
        return false;
    }
    let same_window = seg.window != 0 && seg.window == r.window;
    let new_sack = seg.has_sack
        && (r.flags & half_flag::SACK == 0 || seg.sack[0] != r.sack[0] || seg.sack[1] != r.sack[1]);
    same_window || new_sack
}

/// What the verdict needs from the state before Wireshark's analysis moved it.
#[derive(Clone, Copy)]
pub struct Before {
    /// The segment is a duplicate ACK by the verdict's definition.
    pub dup: bool,
    /// It resent data below the sender's `nextseq`.
    pub retx: bool,
    /// The sender's `nextseq`.
    pub next: u32,
}

/// Verdict bookkeeping for a segment from side `s` after Wireshark's analysis moved the
/// state (`analysis` holds its bits).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn after_segment<K: StallSink>(
    flow: &mut Flow,
    s: usize,
    seg: &Segment,
    analysis: u32,
    before: Before,
    now: u64,
    cfg: &Config,
    sink: &mut K,
) {
    let Before {
        dup,
        retx,
        next: before_next,
    } = before;
    let (me, peer) = halves(flow, s);
    // As D: remember what was resent and what never passed the monitor.
    if me.flags & half_flag::SEEN == 0 {
        me.flags |= half_flag::SEEN;
        me.first_seq = seg.seq;
    }
    if retx && note_retransmission(me, peer, seg) {
        late_answer(flow, s ^ 1, cfg, now, sink);
    }
    let (me, peer) = halves(flow, s);
    if analysis & A_LOST_SEGMENT != 0 && (is_empty(&me.gap) || le(me.gap[1], peer.hole)) {
        me.gap = [before_next, seg.seq];
    }
    if seg.has(TH_FIN) {
        me.flags |= half_flag::FIN;
    }
    // As R: the ACK either moves the hole or repeats it.
    if seg.has(TH_ACK) {
        if me.flags & half_flag::ACKED == 0 || gt(seg.ack, me.hole) {
            if me.flags & half_flag::STALLED != 0 {
                sink.stall(flow, s, StallWhat::Recovered, now);
                flow.state = crate::abi::FlowState::Recovered as u8;
            }
            let (me, peer) = halves(flow, s);
            me.flags = (me.flags | half_flag::ACKED)
                & !(half_flag::STALLED | half_flag::HOLE_RETX | half_flag::CANDIDATE);
            me.hole = seg.ack;
            me.dup_run = 0;
            me.hole_since = 0;
            if !is_empty(&peer.retx) && within(seg.ack, peer.retx[0], peer.retx[1]) {
                me.flags |= half_flag::HOLE_RETX;
            }
        } else if dup {
            if me.dup_run == 0 {
                me.hole_since = now;
            }
            me.dup_run = me.dup_run.wrapping_add(1);
        }
        let (me, _) = halves(flow, s);
        if seg.has_sack {
            me.flags |= half_flag::SACK;
            me.sack = seg.sack;
        }
    }
}

/// A [lo, hi) span never set (written out: array equality may call bcmp in BPF).
#[inline(always)]
fn is_empty(span: &[u32; 2]) -> bool {
    span[0] == 0 && span[1] == 0
}

/// Remembers the span D resent; true when it covers R's hole (an answer).
#[inline(always)]
fn note_retransmission(d: &mut Half, r: &mut Half, seg: &Segment) -> bool {
    let (lo, hi) = (seg.seq, seg.seq.wrapping_add(seg.seglen));
    if !is_empty(&d.retx) && le(lo, d.retx[1]) && le(d.retx[0], hi) {
        d.retx = [
            if lt(lo, d.retx[0]) { lo } else { d.retx[0] },
            if gt(hi, d.retx[1]) { hi } else { d.retx[1] },
        ];
    } else {
        d.retx = [lo, hi];
    }
    let answer = r.flags & half_flag::ACKED != 0 && within(r.hole, lo, hi);
    if answer {
        r.flags |= half_flag::HOLE_RETX;
    }
    answer
}

/// D answered R's hole. If R had waited T or more without a stall being declared, the
/// answer is late, not a stall: it is reported as such with its wait, and the wait
/// restarts from it (if the answer is lost too, the flow stalls T later, as a
/// "retransmissions lost" one). A stall already declared stays one until R's ACK moves.
#[inline(always)]
fn late_answer<K: StallSink>(flow: &mut Flow, r: usize, cfg: &Config, now: u64, sink: &mut K) {
    let rh = &flow.half[r & 1];
    if rh.flags & half_flag::STALLED != 0
        || rh.dup_run < cfg.dupack_threshold
        || rh.hole_since == 0
        || now.saturating_sub(rh.hole_since) < cfg.stall_timeout_ns
    {
        return;
    }
    sink.stall(flow, r, StallWhat::LateAnswer, now);
    flow.half[r & 1].hole_since = now;
}

/// Whether `check_stall` has anything to decide for R = `r`: an open flow, no stall yet,
/// a run of K duplicate ACKs for a hole the other side has sent beyond. The sweep
/// skips the other flows without copying them.
#[inline(always)]
pub fn stall_rule_applies(flow: &Flow, r: usize, cfg: &Config) -> bool {
    let (rh, dh) = (&flow.half[r & 1], &flow.half[(r & 1) ^ 1]);
    flow.state != crate::abi::FlowState::Closed as u8
        && rh.flags & half_flag::STALLED == 0
        && rh.dup_run >= cfg.dupack_threshold
        && gt(dh.nextseq, rh.hole)
}

/// Applies rule 3 to side `r` as R: enters the stalled state when K duplicate ACKs
/// for H are older than T and D has data beyond H. Run on every packet of the flow and
/// by the agent's sweep, for flows whose sender fell silent; the K-th duplicate ACK
/// sends a candidate record, so the agent knows which flows to check.
#[inline(always)]
pub fn check_stall<K: StallSink>(flow: &mut Flow, r: usize, cfg: &Config, now: u64, sink: &mut K) {
    if !stall_rule_applies(flow, r, cfg) {
        return;
    }
    let rh = &mut flow.half[r & 1];
    if rh.flags & half_flag::CANDIDATE == 0 {
        rh.flags |= half_flag::CANDIDATE;
        sink.stall(flow, r, StallWhat::Candidate, now);
    }
    let rh = &mut flow.half[r & 1];
    // Saturating: the sweep's clock may read a little behind the probe's coarse one.
    if now.saturating_sub(rh.hole_since) < cfg.stall_timeout_ns {
        return;
    }
    // A run of K duplicate ACKs always has its start time: without it the state is
    // torn or corrupt, and a page must never come from that.
    if rh.hole_since == 0 {
        sink.impossible();
        return;
    }
    rh.flags |= half_flag::STALLED;
    rh.stalls = rh.stalls.wrapping_add(1);
    flow.state = crate::abi::FlowState::Stalled as u8;
    sink.stall(flow, r, StallWhat::Started, now);
}

/// Ends every open episode (FIN, RST, idle eviction) and reports each. The run is
/// cleared too, so the same hole does not open a second episode.
#[inline(always)]
pub fn end_stalls<K: StallSink>(flow: &mut Flow, now: u64, sink: &mut K) {
    for r in 0..2 {
        if flow.half[r & 1].flags & half_flag::STALLED != 0 {
            sink.stall(flow, r, StallWhat::Ended, now);
            let h = &mut flow.half[r & 1];
            h.flags &= !(half_flag::STALLED | half_flag::CANDIDATE);
            h.dup_run = 0;
            h.hole_since = 0;
        }
    }
}

/// The kind of an open episode with `r` as R.
#[inline(always)]
pub fn kind(flow: &Flow, r: usize) -> StallKind {
    if flow.half[r & 1].flags & half_flag::HOLE_RETX != 0 {
        StallKind::RetransmissionsLost
    } else {
        StallKind::Unanswered
    }
}

/// Where the hole of `r` was lost: upstream when D's data skipped it at the monitor,
/// downstream when the monitor saw D's data at it.
#[inline(always)]
pub fn loss(flow: &Flow, r: usize) -> LossSide {
    let (rh, dh) = (&flow.half[r & 1], &flow.half[(r & 1) ^ 1]);
    if !is_empty(&dh.gap) && within(rh.hole, dh.gap[0], dh.gap[1]) {
        LossSide::Upstream
    } else if dh.flags & half_flag::SEEN != 0 && le(dh.first_seq, rh.hole) {
        LossSide::Downstream
    } else {
        LossSide::Unknown
    }
}

/// The rules `rec` breaks; none for a record a consistent state can produce
/// (docs/semantics.md, "Consistency"): every record is about a run of at least K
/// duplicate ACKs (`dup_acks >= K`), timed from its first one (`since != 0`), which came
/// before the record (`since <= at`); a start comes T or more after that first one.
pub fn record_faults(rec: &StallRecord, cfg: &Config) -> impl Iterator<Item = &'static str> {
    let started = rec.what == StallWhat::Started as u8;
    [
        (rec.dup_acks < cfg.dupack_threshold, "dup_acks < K"),
        (rec.since == 0, "since == 0"),
        (rec.since > rec.at, "since > at"),
        (
            started && rec.since <= rec.at && rec.at - rec.since < cfg.stall_timeout_ns,
            "started before T",
        ),
    ]
    .into_iter()
    .filter_map(|(broken, rule)| broken.then_some(rule))
}

/// Whether a consistent state can have produced `rec` (`record_faults` finds nothing).
/// The agent drops and counts a record that fails this; the tests assert it of every
/// record.
pub fn possible(rec: &StallRecord, cfg: &Config) -> bool {
    record_faults(rec, cfg).next().is_none()
}
