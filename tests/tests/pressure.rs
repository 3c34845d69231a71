//! Hostile and heavy traffic through the real probe (BPF_PROG_TEST_RUN, the map clock)
//! and the agent's own sweep and metrics: a table far too small for the traffic, and a
//! SYN flood from spoofed sources, each while one cTCP flow stalls.

use std::net::SocketAddr;

use ackwatch::kernel::probe::Settings;
use ackwatch::kernel::sweep::sweep;
use ackwatch::serve::metrics::Metrics;
use ackwatch_tests::conversation::Step;
use ackwatch_tests::frames::{TH_ACK, TH_FIN, TH_PSH, TH_SYN, tcp_frame};
use ackwatch_tests::harness::{Hook, Kernel};
use ackwatch_tests::observe;
use ackwatch_tests::scenario::{MS, ctcp_flow};
use ebpf_probe::abi::{FlowKey, StallRecord, StallWhat, counter};
use ebpf_probe::parse::LinkKind;

const XDP: Hook = Hook::Xdp(LinkKind::Ethernet);
const TC: Hook = Hook::Tc(LinkKind::Ethernet);
const SEC: u64 = 1_000 * MS;
const IDLE_NS: u64 = 300 * SEC;

fn server() -> SocketAddr {
    "198.51.100.1:10000".parse().unwrap()
}

fn client(i: u32, port: u16) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), port)
}

/// A short cTCP connection: handshake, one data segment, FIN both ways.
fn short_flow(c: SocketAddr, at: u64) -> Vec<Step> {
    let s = server();
    let steps = [
        (XDP, tcp_frame(c, s, 100, 0, TH_SYN, 0)),
        (TC, tcp_frame(s, c, 500, 101, TH_SYN | TH_ACK, 0)),
        (XDP, tcp_frame(c, s, 101, 501, TH_ACK | TH_PSH, 200)),
        (XDP, tcp_frame(c, s, 301, 501, TH_ACK | TH_FIN, 0)),
        (TC, tcp_frame(s, c, 501, 302, TH_ACK | TH_FIN, 0)),
    ];
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (hook, frame))| Step {
            hook,
            frame,
            at_ns: at + i as u64 * MS,
        })
        .collect()
}

/// `healthy` cTCP flows from t = 0 and one more that loses a segment and stalls,
/// starting at `stall_at`; the stalled flow's key.
fn long_flows(healthy: u32, stall_at: u64) -> (Vec<Step>, FlowKey) {
    let mut steps = Vec::new();
    for i in 0..healthy {
        steps.extend(ctcp_flow(client(1 + i, 40_000), server(), 10, None, 0));
    }
    let mut stalled = ctcp_flow(client(100, 40_000), server(), 20, Some(8), 1500);
    for s in &mut stalled {
        s.at_ns += stall_at;
    }
    let key = ebpf_probe::parse::parse(&stalled[0].frame.as_slice(), LinkKind::Ethernet)
        .unwrap()
        .key;
    steps.extend(stalled);
    (steps, key)
}

fn started_for<'a>(records: &'a [StallRecord], key: &FlowKey) -> Vec<&'a StallRecord> {
    records
        .iter()
        .filter(|r| r.what == StallWhat::Started as u8 && r.key == *key)
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    observe::metric(text, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Runs `steps` in time order with a sweep every virtual second, as the agent does,
/// until `end`; returns every stall record and the metrics after the last sweep.
fn run(
    k: &mut Kernel,
    mut steps: Vec<Step>,
    capacity: [u32; 2],
    end: u64,
) -> (Vec<StallRecord>, String) {
    steps.sort_by_key(|s| s.at_ns);
    let cfg = ebpf_probe::verdict::Config::default();
    let metrics = Metrics::new(capacity, 100);
    let mut records = Vec::new();
    let mut next_sweep = (steps[0].at_ns / SEC + 1) * SEC;
    let do_sweep = |k: &mut Kernel, now: u64, records: &mut Vec<StallRecord>| {
        k.probe
            .set_clock(std::time::Duration::from_nanos(now))
            .unwrap();
        let (t, pass) = sweep(&k.probe, &cfg, IDLE_NS, now);
        records.extend(t.records);
        let fill = k.probe.table_fill();
        metrics.refresh(&k.probe.counters().unwrap(), &pass.flows, fill);
        metrics.refresh_totals(&pass.live, &pass.evicted);
        metrics.evictions.inc_by(t.evictions);
        let idle = metrics.pending_evictions.with_label_values(&["idle"]);
        idle.inc_by(t.pending_evictions);
        assert!(
            pass.entries <= capacity[0] as usize,
            "{} flows in a {}-flow table",
            pass.entries,
            capacity[0]
        );
        assert_eq!(
            fill[0], pass.entries as u64,
            "the probe's count of its flows"
        );
        assert!(
            fill[1] <= capacity[1] as u64,
            "{fill:?} pending, of {capacity:?}"
        );
    };
    for s in &steps {
        while s.at_ns >= next_sweep {
            do_sweep(k, next_sweep, &mut records);
            next_sweep += SEC;
        }
        k.feed(s.hook, &s.frame, s.at_ns);
        records.extend(k.events());
    }
    while next_sweep < end {
        do_sweep(k, next_sweep, &mut records);
        next_sweep += SEC;
    }
    records.extend(k.events());
    (records, metrics.render())
}

#[test]
fn a_full_table_still_reports_the_stall() {
    const CAPACITY: u32 = 4_096;
    let mut k = Kernel::load(Settings {
        max_flows: CAPACITY,
        max_pending: 1_024,
        ..Settings::default()
    });
    // 20 long-lived cTCP flows from t = 0 (19 healthy), one of which loses a segment at
    // t = 40 s and stalls.
    let (mut steps, key) = long_flows(19, 40 * SEC);
    // 50,000 short flows over 80 s: 625 a second, each held 10 s after its close, so
    // the table runs full for most of the run.
    for i in 0..50_000u32 {
        let c = client(10_000 + i, 20_000 + (i % 40_000) as u16);
        steps.extend(short_flow(c, 2 * SEC + i as u64 * 80 * SEC / 50_000));
    }
    let end = steps.iter().map(|s| s.at_ns).max().unwrap() + 3 * SEC;
    let (records, metrics) = run(&mut k, steps, [CAPACITY, 1_024], end);
    let started = started_for(&records, &key);
    assert_eq!(started.len(), 1, "the stall is reported once: {records:?}");
    let refused = metric(
        &metrics,
        "ackwatch_flow_table_refused_total{reason=\"table_full\"}",
    );
    let evicted = metric(&metrics, "ackwatch_flows_evicted_total");
    let entries = metric(&metrics, "ackwatch_flow_table_entries");
    let capacity = metric(&metrics, "ackwatch_flow_table_capacity");
    let pending_evicted = |reason: &str| {
        let name = format!("ackwatch_pending_evicted_total{{reason=\"{reason}\"}}");
        metric(&metrics, &name)
    };
    let (full, idle) = (pending_evicted("full"), pending_evicted("idle"));
    println!(
        "refused {refused}, evicted {evicted}, entries at the end {entries} of {capacity}; \
         pending entries evicted: {full} for new flows, {idle} idle"
    );
    assert!(refused > 0.0, "refusals are counted");
    // Flows refused at promotion wait in the pending table: it fills, and gives way.
    assert!(full + idle > 0.0, "pending evictions are counted");
    assert!(k.probe.pending_table().flows() <= 1_024);
    // Every flow admitted was closed and then evicted; the rest were refused.
    assert!(evicted >= 20_000.0, "closed flows are evicted: {evicted}");
    assert_eq!(capacity, CAPACITY as f64);
    assert!(entries <= capacity);
    assert_eq!(metric(&metrics, "ackwatch_pending_table_capacity"), 1_024.0);
}

/// What a flood of packets from spoofed sources does to a table of `capacity` flows
/// and `pending` pending ones: `count` packets with TCP `flags` from random sources to
/// port 10000, spread over 2 s from `flood_at`, while ten healthy cTCP flows run (from
/// t = 0) and one more, starting at `stall_at`, stalls. The stall is reported once,
/// the established flows keep their state, and no flood packet reaches the flow table.
fn flood_during_a_stall(
    flags: u8,
    count: u32,
    capacity: u32,
    pending: u32,
    flood_at: u64,
    stall_at: u64,
) {
    let mut k = Kernel::load(Settings {
        max_flows: capacity,
        max_pending: pending,
        ..Settings::default()
    });
    let (mut steps, key) = long_flows(10, stall_at);
    for i in 0..count {
        let src = client(1_000_000 + i, 1024 + (i % 60_000) as u16);
        steps.push(Step {
            hook: XDP,
            frame: tcp_frame(src, server(), i, i.wrapping_mul(7919), flags, 0),
            at_ns: flood_at + i as u64 * 2 * SEC / count as u64,
        });
    }
    steps.sort_by_key(|s| s.at_ns);
    let split = steps.iter().position(|s| s.at_ns >= flood_at).unwrap();
    let rest = steps.split_off(split);
    let (mut records, _) = run(&mut k, steps, [capacity, pending], flood_at);
    let before: Vec<_> = k
        .snapshot()
        .flows
        .into_iter()
        .filter(|(k, _)| *k != key)
        .collect();
    let end = rest.last().unwrap().at_ns + 3 * SEC;
    let (more, metrics) = run(&mut k, rest, [capacity, pending], end);
    // The flood fills the pending table, which the operator sees.
    let (entries, room) = (
        metric(&metrics, "ackwatch_pending_table_entries"),
        metric(&metrics, "ackwatch_pending_table_capacity"),
    );
    println!("pending table at the end: {entries} of {room}");
    assert_eq!(room, pending as f64);
    assert!(
        entries >= 0.9 * room && entries <= room,
        "{entries} of {room}"
    );
    records.extend(more);
    let after = k.snapshot();
    assert_eq!(
        started_for(&records, &key).len(),
        1,
        "the stall is reported: {records:?}"
    );
    let established: Vec<_> = after
        .flows
        .iter()
        .filter(|(k, _)| *k != key)
        .cloned()
        .collect();
    assert_eq!(established, before, "established flows keep their state");
    assert!(after.flows.len() <= capacity as usize);
    assert!(
        after.pending.len() <= pending as usize,
        "{} pending",
        after.pending.len()
    );
    assert_eq!(
        after.counters[counter::TABLE_FULL as usize],
        0,
        "no flood packet reached the flow table"
    );
}

/// 100,000 SYNs from spoofed sources during a stall.
#[test]
fn syn_flood_during_a_stall() {
    flood_during_a_stall(TH_SYN, 100_000, 1_024, 4_096, 3 * SEC, 2 * SEC);
}

/// 200,000 ACKs from spoofed sources (each a one-sided flow: a mid-stream pick-up) with
/// `--max-flows 4096` and the agent's pending table (a quarter of it), and a cTCP flow
/// that connects after the flood began, then stalls.
#[test]
fn ack_flood_during_a_stall() {
    flood_during_a_stall(TH_ACK, 200_000, 4_096, 1_024, 3 * SEC, 4 * SEC);
}

/// A ring buffer far too small (one page, ~50 records) and nobody reading it while 100
/// flows stall: the records that did not fit are counted, and the agent's check of the
/// table finds exactly those stalls in its second sweep.
#[test]
fn lost_stall_records_are_found_in_the_table() {
    let mut k = Kernel::load(Settings {
        event_ring_bytes: 4096,
        ..Settings::default()
    });
    let mut steps = Vec::new();
    for i in 0..100 {
        steps.extend(ctcp_flow(
            client(1 + i, 40_000),
            server(),
            20,
            Some(8),
            1500,
        ));
    }
    steps.sort_by_key(|s| s.at_ns);
    for s in &steps {
        k.feed(s.hook, &s.frame, s.at_ns);
    }
    let delivered: Vec<StallRecord> = k.events();
    let counters = k.probe.counters().unwrap();
    let lost = counters[counter::RINGBUF_FULL as usize];
    println!("{} records delivered, {lost} lost", delivered.len());
    assert!(
        lost > 0 && !delivered.is_empty(),
        "the ring must overflow for this test"
    );
    let reported = |r: &StallRecord| {
        delivered
            .iter()
            .any(|d| d.what == StallWhat::Started as u8 && d.key == r.key && d.stuck == r.stuck)
    };
    let cfg = ebpf_probe::verdict::Config::default();
    let now = steps.last().unwrap().at_ns + SEC;
    let mut lost_starts = ackwatch::kernel::sweep::LostStarts::default();
    let mut found = Vec::new();
    for sweep_no in 0..2 {
        let (t, _) = sweep(&k.probe, &cfg, IDLE_NS, now + sweep_no * SEC);
        assert_eq!(t.stalled.len(), 100, "the table holds all 100 stalls");
        let missing = lost_starts.check(&t, reported);
        assert!(
            sweep_no == 1 || missing.is_empty(),
            "reported only at the second look"
        );
        found.extend(missing);
    }
    let delivered_starts = delivered
        .iter()
        .filter(|d| d.what == StallWhat::Started as u8)
        .count();
    assert_eq!(
        found.len() + delivered_starts,
        100,
        "every stall reported exactly once"
    );
    assert!(found.iter().all(|r| !reported(r)));
    // Each stall sent a candidate record and a start record; either may have been lost.
    assert!(
        found.len() as u64 <= lost,
        "{} found, {lost} records lost",
        found.len()
    );
}
