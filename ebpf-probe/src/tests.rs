//! Table-driven tests of the state machine, one or more named cases per rule of
//! docs/semantics.md. Endpoint 0 is the client (C), 1 the server (S).

use std::vec::Vec;

use crate::abi::{Flow, FlowState, LossSide, StallKind, StallRecord, StallWhat, event, half_flag};
use crate::analysis::*;
use crate::clock::Fixed;
use crate::host::Records;
use crate::parse::{Segment, TH_ACK, TH_FIN, TH_RST, TH_SYN};
use crate::verdict::{Config, possible};

const C: usize = 0;
const S: usize = 1;
const MS: u64 = 1_000_000;
const A: u8 = TH_ACK;
/// Bits tshark shows (A_NOT_ADVANCED is ackwatch's own).
const SHOWN: u32 = !A_NOT_ADVANCED;

/// One packet: sender, seq, ack, flags, window, payload length, time in ms.
#[derive(Clone, Copy, Debug)]
struct P {
    from: usize,
    seg: Segment,
    t: u64,
}

fn p(from: usize, seq: u32, ack: u32, flags: u8, window: u32, seglen: u32, t_ms: u64) -> P {
    let seg = Segment {
        seq,
        ack,
        flags,
        window,
        seglen,
        ..Default::default()
    };
    P { from, seg, t: t_ms }
}

impl P {
    fn sack(mut self, l: u32, r: u32) -> P {
        self.seg.has_sack = true;
        self.seg.sack = [l, r];
        self
    }
}

/// ISNs 1000 (client) and 5000 (server); SYN at 1 ms, SYN-ACK at 2 ms, ACK at 3 ms
/// (initial RTT 2 ms), then 100 client bytes at 10 ms, ACKed with window 500 at 11 ms.
fn established() -> Vec<P> {
    vec![
        p(C, 1000, 0, TH_SYN, 64240, 0, 1),
        p(S, 5000, 1001, TH_SYN | A, 65160, 0, 2),
        p(C, 1001, 5001, A, 502, 0, 3),
        p(C, 1001, 5001, A, 502, 100, 10),
        p(S, 5001, 1101, A, 500, 0, 11),
    ]
}

fn with(mut base: Vec<P>, more: &[P]) -> Vec<P> {
    base.extend_from_slice(more);
    base
}

struct Run {
    flow: Flow,
    /// Stall transitions.
    records: Vec<StallRecord>,
    /// Candidate records (the K-th duplicate ACK of a hole).
    candidates: Vec<StallRecord>,
    /// Analysis bits of each packet.
    bits: Vec<u32>,
}

fn run(cfg: &Config, ps: &[P]) -> Run {
    let mut flow = Flow::default();
    let mut sink = Records::default();
    let mut bits = Vec::new();
    for x in ps {
        let now = 1_000 * MS + x.t * MS;
        flow.update(x.from, &x.seg, now, &mut Fixed(now), cfg, &mut sink);
        bits.push(flow.half[x.from].last_analysis);
    }
    let (candidates, records) = sink
        .out
        .into_iter()
        .partition(|r| r.what == StallWhat::Candidate as u8);
    Run {
        flow,
        records,
        candidates,
        bits,
    }
}

/// (case, packets, tshark-visible analysis bits of the last packet)
fn analysis_cases() -> Vec<(&'static str, Vec<P>, u32)> {
    let e = established;
    vec![
        (
            "zero_window_probe",
            with(
                e(),
                &[
                    p(S, 5001, 1101, A, 0, 0, 12),
                    p(C, 1101, 5001, A, 502, 1, 13),
                ],
            ),
            A_ZERO_WINDOW_PROBE,
        ),
        (
            "zero_window",
            with(e(), &[p(S, 5001, 1101, A, 0, 0, 12)]),
            A_ZERO_WINDOW,
        ),
        (
            "zero_window_not_on_fin",
            with(e(), &[p(S, 5001, 1101, A | TH_FIN, 0, 0, 12)]),
            0,
        ),
        (
            "zero_window_probe_ack",
            with(
                e(),
                &[
                    p(S, 5001, 1101, A, 0, 0, 12),
                    p(C, 1101, 5001, A, 502, 1, 13),
                    p(S, 5001, 1101, A, 0, 0, 14),
                ],
            ),
            A_ZERO_WINDOW | A_ZERO_WINDOW_PROBE_ACK,
        ),
        (
            "lost_segment",
            with(e(), &[p(C, 1201, 5001, A, 502, 100, 12)]),
            A_LOST_SEGMENT,
        ),
        (
            "lost_segment_not_on_rst",
            with(e(), &[p(C, 1201, 5001, A | TH_RST, 502, 0, 12)]),
            0,
        ),
        (
            "keep_alive_empty",
            with(e(), &[p(C, 1100, 5001, A, 502, 0, 500)]),
            A_KEEP_ALIVE,
        ),
        (
            "keep_alive_one_byte_is_not_retransmission",
            with(e(), &[p(C, 1100, 5001, A, 502, 1, 500)]),
            A_KEEP_ALIVE,
        ),
        (
            "keep_alive_ack_is_not_dup_ack",
            with(
                e(),
                &[
                    p(C, 1100, 5001, A, 502, 0, 500),
                    p(S, 5001, 1101, A, 500, 0, 501),
                ],
            ),
            A_KEEP_ALIVE_ACK,
        ),
        (
            "window_update",
            with(e(), &[p(S, 5001, 1101, A, 600, 0, 12)]),
            A_WINDOW_UPDATE,
        ),
        (
            "duplicate_ack",
            with(e(), &[p(S, 5001, 1101, A, 500, 0, 12)]),
            A_DUP_ACK,
        ),
        (
            "dup_ack_needs_nonzero_window",
            with(
                e(),
                &[p(S, 5001, 1101, A, 0, 0, 12), p(S, 5001, 1101, A, 0, 0, 13)],
            ),
            A_ZERO_WINDOW,
        ),
        (
            "piggybacked_ack_is_not_dup_ack",
            with(e(), &[p(S, 5001, 1101, A, 500, 10, 12)]),
            0,
        ),
        (
            "acked_unseen_segment",
            with(e(), &[p(S, 5001, 1301, A, 500, 0, 12)]),
            A_ACKED_UNSEEN,
        ),
        (
            "spurious_retransmission",
            with(e(), &[p(C, 1001, 5001, A, 502, 100, 50)]),
            A_SPURIOUS_RETRANSMISSION,
        ),
        (
            "fast_retransmission",
            with(
                e(),
                &[
                    p(C, 1101, 5001, A, 502, 100, 20),
                    p(C, 1201, 5001, A, 502, 100, 21),
                    p(S, 5001, 1101, A, 500, 0, 22),
                    p(S, 5001, 1101, A, 500, 0, 23),
                    p(C, 1101, 5001, A, 502, 100, 30),
                ],
            ),
            A_FAST_RETRANSMISSION,
        ),
        (
            "fast_retransmission_only_within_20ms",
            with(
                e(),
                &[
                    p(C, 1101, 5001, A, 502, 100, 20),
                    p(C, 1201, 5001, A, 502, 100, 21),
                    p(S, 5001, 1101, A, 500, 0, 22),
                    p(S, 5001, 1101, A, 500, 0, 23),
                    p(C, 1101, 5001, A, 502, 100, 44),
                ],
            ),
            A_RETRANSMISSION,
        ),
        (
            "out_of_order_within_initial_rtt",
            with(
                e(),
                &[
                    p(C, 1201, 5001, A, 502, 100, 20),
                    p(C, 1101, 5001, A, 502, 100, 21),
                ],
            ),
            A_OUT_OF_ORDER,
        ),
        (
            "retransmission_after_initial_rtt",
            with(
                e(),
                &[
                    p(C, 1201, 5001, A, 502, 100, 20),
                    p(C, 1101, 5001, A, 502, 100, 23),
                ],
            ),
            A_RETRANSMISSION,
        ),
        (
            "data_from_one_before_nextseq_is_new",
            with(e(), &[p(C, 1100, 5001, A, 502, 50, 20)]),
            0,
        ),
        (
            "syn_retransmission",
            vec![
                p(C, 1000, 0, TH_SYN, 64240, 0, 1),
                p(C, 1000, 0, TH_SYN, 64240, 0, 1001),
            ],
            A_RETRANSMISSION,
        ),
        (
            "fin_retransmission",
            with(
                e(),
                &[
                    p(C, 1101, 5001, A | TH_FIN, 502, 0, 20),
                    p(C, 1101, 5001, A | TH_FIN, 502, 0, 300),
                ],
            ),
            A_RETRANSMISSION,
        ),
    ]
}

#[test]
fn wireshark_analysis_rules() {
    let mut failed = Vec::new();
    for (name, ps, want) in analysis_cases() {
        let got = *run(&Config::default(), &ps).bits.last().unwrap() & SHOWN;
        if got != want {
            failed.push(std::format!("{name}: got {got:#x}, want {want:#x}"));
        }
    }
    assert!(failed.is_empty(), "cases failed:\n{}", failed.join("\n"));
}

/// The kernel's two clocks: a coarse one in ticks of 4 ms, and a precise one, `lag` ns
/// behind it (the coarse clock is calibrated to within half a tick); counts the
/// precise reads (a helper call each in the kernel).
struct TwoClocks {
    coarse: u64,
    lag: u64,
    precise_reads: u32,
}

impl crate::clock::Clock for TwoClocks {
    fn coarse(&mut self) -> u64 {
        self.coarse
    }
    fn precise(&mut self) -> u64 {
        self.precise_reads += 1;
        self.coarse - self.lag
    }
    fn tick(&mut self) -> u64 {
        4 * MS
    }
}

/// Runs `ps` on `TwoClocks` (coarse time from each packet, the precise time `lag` ns
/// earlier) and returns the flow, each packet's tshark-visible bits and precise reads.
fn run_two_clocks(ps: &[P], lag: u64) -> (Flow, Vec<(u32, u32)>) {
    let mut flow = Flow::default();
    let mut sink = Records::default();
    let mut out = Vec::new();
    for x in ps {
        let mut clock = TwoClocks {
            coarse: 1_000 * MS + x.t * MS,
            lag,
            precise_reads: 0,
        };
        let now = clock.coarse;
        flow.update(
            x.from,
            &x.seg,
            now,
            &mut clock,
            &Config::default(),
            &mut sink,
        );
        out.push((flow.half[x.from].last_analysis & SHOWN, clock.precise_reads));
    }
    (flow, out)
}

/// A handshake with an initial RTT of `irtt_ms`, then 100 client bytes.
fn handshake_then_data(irtt_ms: u64) -> Vec<P> {
    vec![
        p(C, 1000, 0, TH_SYN, 64240, 0, 1),
        p(S, 5000, 1001, TH_SYN | A, 65160, 0, 1 + irtt_ms / 2),
        p(C, 1001, 5001, A, 502, 0, 1 + irtt_ms),
        p(C, 1001, 5001, A, 502, 100, 10 + irtt_ms),
    ]
}

#[test]
fn in_order_data_reads_the_precise_clock_only_for_windows_shorter_than_8_ticks() {
    // A WAN client (initial RTT 100 ms, 25 ticks): the data segment reads no precise time.
    let (flow, out) = run_two_clocks(&handshake_then_data(100), MS);
    assert_eq!(flow.irtt, 100 * MS);
    assert_eq!(out[3], (0, 0), "in-order data on a 100 ms window");
    // A LAN (2 ms), and a window of just under 8 ticks: it is read.
    for irtt in [2, 31] {
        let (_, out) = run_two_clocks(&handshake_then_data(irtt), MS);
        assert_eq!(out[3], (0, 1), "in-order data on a {irtt} ms window");
    }
    // Unknown initial RTT (a flow picked up mid-stream): the 3 ms default, precise.
    let (_, out) = run_two_clocks(&[p(C, 1001, 5001, A, 502, 100, 10)], MS);
    assert_eq!(out[0].1, 1);
}

#[test]
fn out_of_order_window_on_the_coarse_stamp() {
    // nextseq moves at 199 ms (coarse stamp, 100 ms window), a segment behind it comes
    // at `at` ms (coarse), its precise time `lag` earlier.
    let case = |at: u64, lag: u64| {
        let more = [
            p(C, 1201, 5001, A, 502, 100, 199),
            p(C, 1101, 5001, A, 502, 100, at),
        ];
        run_two_clocks(&with(handshake_then_data(100), &more), lag).1[5]
    };
    // 1 ms after: out-of-order, and a segment behind nextseq reads the precise time.
    assert_eq!(case(200, 0), (A_OUT_OF_ORDER, 1));
    // The precise time 2 ms behind the coarse one: before the stamp, which counts as 0.
    assert_eq!(case(200, 2 * MS), (A_OUT_OF_ORDER, 1));
    // 150 ms after: past the window, a retransmission.
    assert_eq!(case(349, MS), (A_RETRANSMISSION, 1));
}

#[test]
fn syn_and_fin_count_one_sequence_number() {
    let r = run(
        &Config::default(),
        &with(established(), &[p(C, 1101, 5001, A | TH_FIN, 502, 0, 20)]),
    );
    assert_eq!(r.flow.half[S].nextseq, 5001, "SYN-ACK counts one");
    assert_eq!(
        r.flow.half[C].nextseq, 1102,
        "100 bytes from 1001 then a FIN"
    );
}

#[test]
fn zero_window_probe_does_not_advance_nextseq() {
    let r = run(
        &Config::default(),
        &with(
            established(),
            &[
                p(S, 5001, 1101, A, 0, 0, 12),
                p(C, 1101, 5001, A, 502, 1, 13),
            ],
        ),
    );
    assert_eq!(r.flow.half[C].nextseq, 1101);
    assert_eq!(r.flow.half[C].events[event::ZERO_WINDOW_PROBE], 1);
}

#[test]
fn duplicate_acks_are_counted_and_reset_by_a_new_ack() {
    let dups = [
        p(S, 5001, 1101, A, 500, 0, 12),
        p(S, 5001, 1101, A, 500, 0, 13),
        p(S, 5001, 1101, A, 500, 0, 14),
    ];
    let r = run(&Config::default(), &with(established(), &dups));
    assert_eq!(
        (
            r.flow.half[S].dupacknum,
            r.flow.half[S].events[event::DUP_ACK]
        ),
        (3, 3)
    );
    let r = run(
        &Config::default(),
        &with(
            with(established(), &dups),
            &[
                p(C, 1101, 5001, A, 502, 10, 15),
                p(S, 5001, 1111, A, 500, 0, 16),
            ],
        ),
    );
    assert_eq!(r.flow.half[S].dupacknum, 0, "a new ACK resets the run");
}

#[test]
fn retransmission_counter_covers_every_kind() {
    let r = run(
        &Config::default(),
        &with(
            established(),
            &[
                p(C, 1001, 5001, A, 502, 100, 50),
                p(C, 1201, 5001, A, 502, 100, 60),
                p(C, 1101, 5001, A, 502, 100, 90),
            ],
        ),
    );
    let ev = &r.flow.half[C].events;
    assert_eq!(ev[event::SPURIOUS_RETRANSMISSION], 1);
    assert_eq!(
        ev[event::RETRANSMISSION],
        2,
        "spurious and plain both count as retransmissions"
    );
    assert_eq!(ev[event::LOST_SEGMENT], 1);
    assert_eq!(ev[event::NOT_ADVANCED], 2, "both sit below nextseq");
}

#[test]
fn sequence_numbers_wrap_at_2_pow_32() {
    let isn = u32::MAX - 50;
    let ps = [
        p(C, isn, 0, TH_SYN, 64240, 0, 1),
        p(S, 5000, isn.wrapping_add(1), TH_SYN | A, 65160, 0, 2),
        p(C, isn.wrapping_add(1), 5001, A, 502, 0, 3),
        p(C, isn.wrapping_add(1), 5001, A, 502, 100, 10),
        p(C, isn.wrapping_add(101), 5001, A, 502, 100, 20),
        p(S, 5001, isn.wrapping_add(201), A, 500, 0, 21),
        p(C, isn.wrapping_add(101), 5001, A, 502, 100, 300),
    ];
    let r = run(&Config::default(), &ps);
    assert_eq!(
        r.bits[4] & SHOWN,
        0,
        "data across the wrap is neither lost nor retransmitted"
    );
    assert_eq!(
        r.bits[6] & SHOWN,
        A_SPURIOUS_RETRANSMISSION,
        "old data across the wrap is a retransmission"
    );
    assert_eq!(r.flow.half[C].nextseq, isn.wrapping_add(201));
}

// ---- The verdict -------------------------------------------------------------------

/// Client data 1101..1601 in five 100-byte segments at 20..24 ms, the one at `lost`
/// missing at the receiver; the server answers every later segment with an ACK for the
/// hole carrying SACK, its window moving as Linux does; `extra` server duplicate ACKs
/// follow every 100 ms (the client is silent).
fn episode(lost: u32, window_moves: bool, extra: u64) -> Vec<P> {
    let mut ps = established();
    let hole = 1101 + lost * 100;
    for i in 0..5 {
        let seq = 1101 + i * 100;
        ps.push(p(C, seq, 5001, A, 502, 100, 20 + i as u64));
        if i > lost {
            let win = if window_moves { 500 - i } else { 500 };
            ps.push(p(S, 5001, hole, A, win, 0, 20 + i as u64).sack(hole + 100, seq + 100));
        } else if i < lost {
            ps.push(p(S, 5001, seq + 100, A, 500, 0, 20 + i as u64));
        }
    }
    for k in 1..=extra {
        ps.push(p(S, 5001, hole, A, 500 - 5, 0, 24 + 100 * k).sack(hole + 100, 1601));
    }
    ps
}

fn started(r: &Run) -> Vec<&StallRecord> {
    r.records
        .iter()
        .filter(|x| x.what == StallWhat::Started as u8)
        .collect()
}

#[test]
fn stall_after_k_dup_acks_and_t_unanswered_downstream() {
    let r = run(&Config::default(), &episode(1, false, 12));
    let s = started(&r);
    assert_eq!(s.len(), 1, "one episode, one record: {:?}", r.records);
    assert_eq!(s[0].hole, 1201);
    assert_eq!(s[0].stuck as usize, C);
    assert_eq!(s[0].kind, StallKind::Unanswered as u8);
    assert_eq!(s[0].loss, LossSide::Downstream as u8);
    assert!(s[0].at - s[0].since >= 1_000 * MS);
    assert_eq!(r.flow.state, FlowState::Stalled as u8);
}

#[test]
fn no_stall_before_t() {
    let r = run(&Config::default(), &episode(1, false, 9));
    assert!(r.records.is_empty(), "{:?}", r.records);
}

#[test]
fn no_stall_below_k_dup_acks() {
    let cfg = Config {
        dupack_threshold: 20,
        ..Config::default()
    };
    assert!(run(&cfg, &episode(1, false, 12)).records.is_empty());
}

#[test]
fn sack_dup_acks_with_moving_window_count_for_the_verdict_only() {
    let r = run(&Config::default(), &episode(0, true, 12));
    assert_eq!(
        started(&r).len(),
        1,
        "SACK-bearing ACKs with a moving window are duplicate ACKs for the verdict"
    );
    // Wireshark 4.0: a window change makes them window updates, not duplicate ACKs.
    let plain = run(&Config::default(), &episode(0, true, 0));
    assert_eq!(plain.flow.half[S].events[event::DUP_ACK], 0);
    assert_eq!(plain.flow.half[S].dup_run, 4);
}

#[test]
fn one_candidate_record_at_the_kth_duplicate_ack() {
    let r = run(&Config::default(), &episode(1, false, 0));
    assert_eq!(r.candidates.len(), 1, "{:?}", r.candidates);
    assert_eq!(r.candidates[0].hole, 1201);
    assert_eq!(
        r.candidates[0].dup_acks, 3,
        "sent at the third duplicate ACK"
    );
    let cfg = Config {
        dupack_threshold: 20,
        ..Config::default()
    };
    assert!(
        run(&cfg, &episode(1, false, 12)).candidates.is_empty(),
        "below K: none"
    );
    // A stall and its recovery: still one candidate for the one hole.
    let r = run(&Config::default(), &episode(1, false, 12));
    assert_eq!((r.candidates.len(), started(&r).len()), (1, 1));
}

#[test]
fn sweep_finds_a_stall_with_no_later_packet() {
    let cfg = Config::default();
    let mut r = run(&cfg, &episode(1, false, 0));
    assert!(r.records.is_empty());
    let mut sink = Records::default();
    r.flow.check_stalls(&cfg, 1_000 * MS + 500 * MS, &mut sink);
    assert!(sink.out.is_empty(), "not yet T");
    r.flow
        .check_stalls(&cfg, 1_000 * MS + 1_030 * MS, &mut sink);
    assert_eq!(sink.out.len(), 1);
    assert_eq!(sink.out[0].what, StallWhat::Started as u8);
}

#[test]
fn recovery_when_the_ack_moves_past_the_hole() {
    let mut ps = episode(1, false, 12);
    ps.push(p(C, 1201, 5001, A, 502, 100, 1_300));
    ps.push(p(S, 5001, 1601, A, 500, 0, 1_301));
    let r = run(&Config::default(), &ps);
    let whats: Vec<u8> = r.records.iter().map(|x| x.what).collect();
    assert_eq!(
        whats,
        [StallWhat::Started as u8, StallWhat::Recovered as u8]
    );
    let rec = &r.records[1];
    assert_eq!(rec.retx_seen, 1, "the retransmission was seen");
    assert!(
        rec.at - rec.since >= 1_270 * MS,
        "hole open from the first duplicate ACK to recovery"
    );
    assert_eq!(r.flow.state, FlowState::Recovered as u8);
}

#[test]
fn episode_ends_on_fin_and_rst() {
    for (flags, state) in [
        (A | TH_FIN, FlowState::Active),
        (A | TH_RST, FlowState::Closed),
    ] {
        let mut ps = episode(1, false, 12);
        ps.push(p(C, 1601, 5001, flags, 502, 0, 1_400));
        let r = run(&Config::default(), &ps);
        let whats: Vec<u8> = r.records.iter().map(|x| x.what).collect();
        assert_eq!(
            whats,
            [StallWhat::Started as u8, StallWhat::Ended as u8],
            "flags {flags:#x}"
        );
        assert_eq!(r.flow.state, state as u8);
    }
}

#[test]
fn retransmissions_lost_when_the_sender_did_resend_the_hole() {
    let mut ps = episode(1, false, 3);
    ps.push(p(C, 1201, 5001, A, 502, 100, 400));
    for k in 1..=8 {
        ps.push(p(S, 5001, 1201, A, 495, 0, 400 + 100 * k).sack(1301, 1601));
    }
    let r = run(&Config::default(), &ps);
    let s = started(&r);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].kind, StallKind::RetransmissionsLost as u8);
}

#[test]
fn upstream_loss_when_the_monitor_never_saw_the_hole() {
    // The segment at 1201 never passes the monitor: the next one is a lost segment.
    let ps: Vec<P> = episode(1, false, 12)
        .into_iter()
        .filter(|x| !(x.from == C && x.seg.seq == 1201))
        .collect();
    let r = run(&Config::default(), &ps);
    let s = started(&r);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].loss, LossSide::Upstream as u8);
    assert_eq!(r.flow.half[C].events[event::LOST_SEGMENT], 1);
}

#[test]
fn no_stall_without_data_beyond_the_hole() {
    // An idle flow whose receiver repeats its ACK: the sender has nothing outstanding.
    let mut ps = established();
    for k in 1..=20 {
        ps.push(p(S, 5001, 1101, A, 500, 0, 11 + 100 * k));
    }
    assert!(run(&Config::default(), &ps).records.is_empty());
}

#[test]
fn keep_alive_acks_never_make_a_stall() {
    let mut ps = established();
    ps.push(p(C, 1101, 5001, A, 502, 100, 12)); // data beyond the ACK point, then idle
    for k in 1..=20 {
        ps.push(p(C, 1200, 5001, A, 502, 0, 12 + 100 * k));
        ps.push(p(S, 5001, 1101, A, 500, 0, 13 + 100 * k));
    }
    let r = run(&Config::default(), &ps);
    assert!(r.records.is_empty(), "{:?}", r.records);
}

/// Real TCP in SACK recovery repairs several holes in a row, often retransmitting a
/// hole before its duplicate ACKs arrive: no stall.
#[test]
fn healthy_sack_recovery_of_several_holes_is_not_a_stall() {
    let mut ps = established();
    // 10 segments 1101..2101; 1201, 1401 and 1601 lost downstream.
    let lost = [1201u32, 1401, 1601];
    let mut t = 20;
    let mut held: Vec<u32> = Vec::new();
    for i in 0..10 {
        let seq = 1101 + i * 100;
        ps.push(p(C, seq, 5001, A, 502, 100, t));
        if !lost.contains(&seq) {
            held.push(seq);
        }
        let ack = (1101..)
            .step_by(100)
            .take_while(|s| held.contains(s))
            .last()
            .map_or(1101, |s| s + 100);
        ps.push(p(S, 5001, ack, A, 500 - i, 0, t).sack(ack + 100, seq + 100));
        t += 1;
    }
    // Control: without the recovery below, the same packets are a stall.
    let cfg = Config {
        stall_timeout_ns: 100 * MS,
        ..Config::default()
    };
    let mut control = run(&cfg, &ps);
    let mut sink = Records::default();
    control
        .flow
        .check_stalls(&cfg, 1_000 * MS + (t + 200) * MS, &mut sink);
    assert_eq!(sink.out.len(), 1, "the control must stall");
    // Recovery: each hole resent, the next one before its own duplicate ACKs.
    for (k, h) in lost.iter().enumerate() {
        ps.push(p(C, *h, 5001, A, 502, 100, t + 30 * k as u64));
        if let Some(next) = lost.get(k + 1) {
            ps.push(p(C, *next, 5001, A, 502, 100, t + 30 * k as u64 + 1));
        }
        let ack = lost.get(k + 1).map_or(2101, |n| n + 100);
        ps.push(p(S, 5001, ack, A, 490, 0, t + 30 * k as u64 + 20));
    }
    let mut r = run(&cfg, &ps);
    assert!(r.records.is_empty(), "{:?}", r.records);
    r.flow
        .check_stalls(&cfg, 1_000 * MS + (t + 500) * MS, &mut sink);
    assert_eq!(sink.out.len(), 1, "only the control's record");
}

#[test]
fn stall_across_the_wrap_reports_the_right_hole() {
    let shift = |mut ps: Vec<P>, d: u32| {
        for x in ps.iter_mut() {
            let (seq, ack) = (&mut x.seg.seq, &mut x.seg.ack);
            if x.from == C {
                *seq = seq.wrapping_add(d)
            } else if *ack != 0 {
                *ack = ack.wrapping_add(d)
            }
            x.seg.sack = [x.seg.sack[0].wrapping_add(d), x.seg.sack[1].wrapping_add(d)];
        }
        ps
    };
    let d = u32::MAX - 1_150; // the hole at 1201 + d sits right before the wrap
    let r = run(&Config::default(), &shift(episode(1, false, 12), d));
    let s = started(&r);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].hole, 1201u32.wrapping_add(d));
    assert_eq!(s[0].loss, LossSide::Downstream as u8);
}

/// The retransmission that answers a hole after T is a late answer, not a stall: it is
/// reported as such with its wait, and R's ACK moving after it recovers nothing.
#[test]
fn late_retransmission_is_a_late_answer_not_a_stall() {
    let mut ps = episode(1, false, 0);
    ps.push(p(C, 1201, 5001, A, 502, 100, 1_300));
    ps.push(p(S, 5001, 1601, A, 500, 0, 1_301));
    let r = run(&Config::default(), &ps);
    let whats: Vec<u8> = r.records.iter().map(|x| x.what).collect();
    assert_eq!(whats, [StallWhat::LateAnswer as u8], "{:?}", r.records);
    let late = &r.records[0];
    assert_eq!(late.hole, 1201);
    assert_eq!(late.dup_acks, 3);
    assert_eq!(
        late.at - late.since,
        1_300 * MS - 22 * MS,
        "waited from the first dup ACK"
    );
    assert_eq!(r.flow.half[S].stalls, 0);
    assert_ne!(r.flow.state, FlowState::Stalled as u8);
}

/// An answer before T is an ordinary retransmission; an answer after a stall was
/// declared (here by a later duplicate ACK) leaves the stall to recover.
#[test]
fn only_answers_after_t_and_before_a_stall_are_late() {
    let mut early = episode(1, false, 0);
    early.push(p(C, 1201, 5001, A, 502, 100, 500));
    assert!(run(&Config::default(), &early).records.is_empty());

    let mut stalled = episode(1, false, 12);
    stalled.push(p(C, 1201, 5001, A, 502, 100, 1_300));
    stalled.push(p(S, 5001, 1601, A, 500, 0, 1_301));
    let whats: Vec<u8> = run(&Config::default(), &stalled)
        .records
        .iter()
        .map(|x| x.what)
        .collect();
    assert_eq!(
        whats,
        [StallWhat::Started as u8, StallWhat::Recovered as u8]
    );
}

/// The wait restarts at a late answer: if that retransmission is lost as well, the
/// flow stalls T after it, as "retransmissions lost".
#[test]
fn a_lost_late_answer_stalls_t_later() {
    let cfg = Config::default();
    let mut ps = episode(1, false, 0);
    ps.push(p(C, 1201, 5001, A, 502, 100, 1_300));
    let mut r = run(&cfg, &ps);
    let mut sink = Records::default();
    // The sweep's clock a little behind the probe's: not a stall (nor a wrap).
    r.flow.check_stalls(&cfg, 2_299 * MS, &mut sink);
    r.flow.check_stalls(&cfg, 3_299 * MS, &mut sink);
    assert!(sink.out.is_empty(), "{:?}", sink.out);
    r.flow.check_stalls(&cfg, 3_301 * MS, &mut sink);
    assert_eq!(sink.out.len(), 1);
    assert_eq!(sink.out[0].what, StallWhat::Started as u8);
    assert_eq!(sink.out[0].kind, StallKind::RetransmissionsLost as u8);
    assert_eq!(sink.out[0].since, 2_300 * MS);
}

/// A run of K duplicate ACKs without its start time (a torn or corrupt state) is never
/// turned into a stall: the verdict refuses and counts it.
#[test]
fn an_impossible_state_is_refused_and_counted() {
    let cfg = Config::default();
    let mut r = run(&cfg, &episode(1, false, 0));
    assert_eq!(r.flow.half[S].dup_run, 3);
    r.flow.half[S].hole_since = 0;
    let mut sink = Records::default();
    r.flow.check_stalls(&cfg, 5_000 * MS, &mut sink);
    assert!(sink.out.is_empty(), "{:?}", sink.out);
    assert_eq!(sink.impossible, 1);
    assert_eq!(r.flow.half[S].flags & half_flag::STALLED, 0);
}

/// Every record the verdict emits is possible (`verdict::possible`); one with fewer
/// than K duplicate ACKs, no start or a start after it is not.
#[test]
fn records_of_consistent_states_are_possible() {
    let cfg = Config::default();
    let mut ps = episode(1, false, 12);
    ps.push(p(C, 1201, 5001, A, 502, 100, 1_300));
    ps.push(p(S, 5001, 1601, A, 500, 0, 1_301));
    let r = run(&cfg, &ps);
    assert!(!r.records.is_empty());
    for rec in r.records.iter().chain(&r.candidates) {
        assert!(possible(rec, &cfg), "{rec:?}");
    }
    let good = r.records[0];
    for bad in [
        StallRecord {
            dup_acks: 1,
            ..good
        },
        StallRecord { since: 0, ..good },
        StallRecord {
            since: good.at + 1,
            ..good
        },
    ] {
        assert!(!possible(&bad, &cfg), "{bad:?}");
    }
}

mod pending_table {
    use crate::abi::FlowKey;
    use crate::host::HostTable;
    use crate::table::{self, Place, Seed, Slots};

    fn key(i: u32) -> FlowKey {
        let mut k = FlowKey::default();
        k.addr[0][3] = i;
        k.addr[1][3] = 0xffff_ffff;
        k.port = [40_000, 10_000];
        k
    }

    fn seed() -> Seed {
        Seed {
            words: core::array::from_fn(|i| 0x9e37_79b9u32.wrapping_mul(i as u32 + 1)),
        }
    }

    fn at(t: &HostTable, k: &FlowKey) -> Place {
        table::place(k, &seed(), t.buckets())
    }

    /// Inserts `k` as the probe does (claim, else the oldest's place), last seen `ts`.
    fn insert(t: &mut HostTable, k: &FlowKey, ts: u64) -> Result<u32, bool> {
        let at = at(t, k);
        let (i, slot, held) = match table::claim(t, k, &at) {
            Some(c) => c,
            None => table::replace_oldest(t, k, &at)?,
        };
        // SAFETY: claimed and locked.
        unsafe {
            (*slot).flow.clear();
            (*slot).flow.last_ts = ts;
        }
        table::set_age(t, i, ts);
        table::publish(t, i, &at);
        table::unlock(held);
        Ok(i)
    }

    fn fill(t: &mut HostTable) -> u64 {
        // SAFETY: the table's own Fill.
        unsafe { (*t.fill().unwrap()).flows }
    }

    #[test]
    fn a_full_table_gives_the_oldest_of_the_16_ways_to_the_new_key() {
        let mut t = HostTable::new(64);
        for i in 0..64 {
            insert(&mut t, &key(i), 1000 + i as u64).expect("room");
        }
        assert_eq!(fill(&mut t), 64);
        for n in 64..200u32 {
            let k = key(n);
            let a = at(&t, &k);
            // The oldest entry of the new key's ways, by the flows' last times.
            let ways: std::vec::Vec<u32> =
                a.bucket.iter().flat_map(|b| (b * 8)..(b * 8 + 8)).collect();
            let mut oldest = None;
            for i in ways {
                if table::tag(&mut t, i) <= table::RESERVED {
                    continue;
                }
                // SAFETY: a slot of the table.
                let ts = unsafe { (*t.slot(i).unwrap()).flow.last_ts };
                if oldest.is_none_or(|(old, _)| ts < old) {
                    oldest = Some((ts, i));
                }
            }
            let (_, oldest) = oldest.expect("a full table's ways hold flows");
            let victim_key = unsafe { (*t.slot(oldest).unwrap()).key };
            let i = insert(&mut t, &k, 10_000 + n as u64).expect("a place");
            assert_eq!(i, oldest, "key {n} took the oldest way's place");
            assert_eq!(fill(&mut t), 64, "a replacement keeps the count");
            let victim_at = at(&t, &victim_key);
            assert!(table::find(&mut t, &victim_key, &victim_at).is_none());
            assert_eq!(table::find(&mut t, &k, &a), Some(i));
        }
        assert_eq!(t.len(), 64);
    }

    #[test]
    fn a_busy_victim_is_not_waited_for() {
        let mut t = HostTable::new(8);
        for i in 0..8 {
            insert(&mut t, &key(i), 5).expect("room");
        }
        // Lock every slot, as probes on other CPUs would hold them.
        let held: std::vec::Vec<_> = (0..t.buckets() * 8)
            .filter_map(|i| table::try_lock(unsafe { &raw mut (*t.slot(i)?).seq }))
            .collect();
        assert_eq!(insert(&mut t, &key(99), 6), Err(true));
        held.into_iter().for_each(table::unlock);
        assert!(insert(&mut t, &key(99), 6).is_ok());
    }

    /// Frees slot `i` under its lock, as an eviction or a promotion does.
    fn free(t: &mut HostTable, i: u32) {
        // SAFETY: a slot of the table.
        let held = table::try_lock(unsafe { &raw mut (*t.slot(i).unwrap()).seq }).unwrap();
        table::free(t, i);
        table::unlock(held);
    }

    /// What `lock_found` must see of the writers that come between a lookup and its
    /// lock: a free (the key stays in the slot, only the tag goes), also one that came
    /// between the lookup's reads of the tag and of the lock word, and a key changed
    /// under the slot's lock with the tag left as it was (another key with the same
    /// tag). Each is refused; an untouched slot is locked and held.
    #[test]
    fn a_lookup_is_locked_only_if_no_writer_came_in_between() {
        let mut t = HostTable::new(64);
        let k = key(7);
        let a = at(&t, &k);
        let i = insert(&mut t, &k, 1).expect("room");
        // SAFETY: slots of the table.
        let lock_word = |t: &mut HostTable, i| unsafe { &raw mut (*t.slot(i).unwrap()).seq };

        // Untouched: the lock is taken from the value the lookup saw.
        let found = table::lookup(&mut t, &k, &a).expect("found");
        let (_, held) = table::lock_found(&mut t, found, &k, &a).expect("locked");
        assert_eq!(unsafe { *lock_word(&mut t, i) } & 1, 1, "held");
        table::unlock(held);

        // Freed between the lookup and the lock.
        let found = table::lookup(&mut t, &k, &a).expect("found");
        let earlier = found;
        let held = table::lock(lock_word(&mut t, i)).unwrap();
        table::free(&mut t, i);
        table::unlock(held);
        assert!(matches!(
            table::lock_found(&mut t, found, &k, &a),
            Err(false)
        ));
        // The same, where the lookup read the tag before the free and the lock word
        // after it: the lock is free and unchanged since, the key still in the slot.
        let seen = unsafe { *lock_word(&mut t, i) };
        let late = table::Found { seen, ..earlier };
        assert!(matches!(
            table::lock_found(&mut t, late, &k, &a),
            Err(false)
        ));

        // Taken again, and its key changed under the lock while the tag stays ours.
        let i = insert(&mut t, &k, 2).expect("room");
        let found = table::lookup(&mut t, &k, &a).expect("found");
        assert_eq!(found.idx, i);
        let held = table::lock(lock_word(&mut t, i)).unwrap();
        // SAFETY: a slot of the table, locked.
        unsafe { (*t.slot(i).unwrap()).key = key(8) };
        table::unlock(held);
        assert_eq!(table::tag(&mut t, i), a.tag);
        assert!(matches!(
            table::lock_found(&mut t, found, &k, &a),
            Err(false)
        ));
        assert_eq!(
            unsafe { *lock_word(&mut t, i) } & 1,
            0,
            "refused, and left unlocked"
        );
    }

    /// The offline analyser's memory follows its live flows: a freed slot's memory
    /// goes at the next release, unless the slot was taken again meanwhile.
    #[test]
    fn freed_slots_give_their_memory_back_unless_taken_again() {
        // One bucket of 8 ways, 5 flows at most.
        let mut t = HostTable::new(5);
        assert_eq!(t.buckets(), 1);
        let idx: std::vec::Vec<u32> = (0..5)
            .map(|i| insert(&mut t, &key(i), 1).unwrap())
            .collect();
        assert_eq!(t.materialized(), 5);
        free(&mut t, idx[0]);
        free(&mut t, idx[1]);
        // The first free way is taken again before the release.
        assert_eq!(insert(&mut t, &key(9), 2), Ok(idx[0]));
        t.release_freed();
        assert_eq!(t.materialized(), 4, "only the slot still free is dropped");
        for (i, k) in [(idx[0], key(9)), (idx[2], key(2)), (idx[4], key(4))] {
            let a = at(&t, &k);
            assert_eq!(table::find(&mut t, &k, &a), Some(i));
        }
    }

    #[test]
    fn the_later_of_two_inserts_of_one_key_sees_the_other() {
        let mut t = HostTable::new(64);
        let k = key(1);
        let a = at(&t, &k);
        let first = insert(&mut t, &k, 1).unwrap();
        assert!(!table::duplicated(&mut t, first, &k, &a), "alone");
        // Another CPU's insert of the same key, which found none before it claimed.
        let (second, _, held) = table::claim(&mut t, &k, &a).expect("room");
        table::publish(&mut t, second, &a);
        assert!(table::duplicated(&mut t, second, &k, &a));
        table::free(&mut t, second);
        table::unlock(held);
        assert_eq!(table::find(&mut t, &k, &a), Some(first));
        assert_eq!(fill(&mut t), 1);
    }
}
