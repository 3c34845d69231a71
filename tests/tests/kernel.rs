//! Kernel tests: the real probe, verified and loaded into this kernel, fed packets
//! through BPF_PROG_TEST_RUN; its maps read back and compared with the host's copy of
//! the same state machine. Needs root (CAP_BPF, CAP_NET_ADMIN).

use ackwatch::kernel::probe::{PROGRAMS, Settings};
use ackwatch_tests::conversation::Generator;
use ackwatch_tests::harness::{Host, Kernel};
use ebpf_probe::verdict::Config;

/// Verified-instruction budget per program (the kernel's limit is 1,000,000). The
/// heaviest measured 51,300 with the hash-map table; the open-addressed table with its
/// locks measures 245,000-340,000 per program with the pending table in arrays too (the
/// lookups' 16 ways, the established, pending and promoted entries verified apart, the
/// pending table's claim and victim scan, the contended lock's `bpf_loop` checked to
/// convergence),
/// loading in about a second. The budget leaves room to grow but catches a change that
/// multiplies it (docs/decisions.md, "Verifier").
const VERIFIER_BUDGET: u32 = 400_000;

#[test]
fn verifier_accepts_every_program_within_budget() {
    let mut k = Kernel::load(Settings::default());
    for name in PROGRAMS {
        let n = k.probe.verified_instructions(name).expect("program info");
        println!("verified instructions: {name} = {n} (budget {VERIFIER_BUDGET})");
        assert!(
            n > 0,
            "{name}: the kernel reported no verified instructions"
        );
        assert!(
            n <= VERIFIER_BUDGET,
            "{name}: {n} verified instructions exceed the budget {VERIFIER_BUDGET}"
        );
    }
}

fn seed() -> u64 {
    std::env::var("ACKWATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Many generated conversations through the kernel and the host: every flow, every
/// pending entry, every counter and every stall record must be identical.
#[test]
fn differential_kernel_agrees_with_host() {
    let base = seed();
    let mut total = 0;
    for (i, (k, t_ms, track_all, max_flows)) in [
        (3, 1000, false, 4096),
        (2, 50, true, 4096),
        (3, 100, false, 6),
        (4, 20, true, 4096),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = base.wrapping_add(i as u64);
        let settings = Settings {
            max_flows,
            max_pending: 4096,
            verdict: Config {
                dupack_threshold: k,
                stall_timeout_ns: t_ms * 1_000_000,
                track_all,
            },
            ctcp_ports: vec![10_000],
            clock_from_map: true,
            ..Settings::default()
        };
        let steps = Generator::new(seed).steps(10_000, 24);
        let mut kernel = Kernel::load(settings.clone());
        let mut host = Host::new(settings.clone());
        for (n, s) in steps.iter().enumerate() {
            let verdict = kernel.feed(s.hook, &s.frame, s.at_ns);
            assert!(
                verdict_is_pass(s.hook, verdict),
                "seed {seed}: step {n} not passed ({verdict})"
            );
            host.feed(s.hook, &s.frame, s.at_ns);
        }
        let (ks, hs) = (kernel.snapshot(), host.snapshot());
        assert_eq!(
            ks.counters, hs.counters,
            "seed {seed} ({settings:?}): counters differ"
        );
        assert_eq!(
            ks.pending.len(),
            hs.pending.len(),
            "seed {seed}: pending tables differ in size"
        );
        assert_eq!(
            ks.flows.len(),
            hs.flows.len(),
            "seed {seed}: flow tables differ in size"
        );
        for ((kk, kf), (hk, hf)) in ks
            .flows
            .iter()
            .zip(&hs.flows)
            .chain(ks.pending.iter().zip(&hs.pending))
        {
            assert_eq!(kk, hk, "seed {seed}: flow keys differ");
            assert_eq!(kf, hf, "seed {seed}: flow {kk:?} differs");
        }
        assert_eq!(
            kernel.events(),
            host.events,
            "seed {seed}: stall records differ"
        );
        println!(
            "seed {seed}: {} packets, {} flows, {} stall records, K={k} T={t_ms}ms track_all={track_all}: identical",
            steps.len(),
            hs.flows.len() + hs.pending.len(),
            host.events.len()
        );
        total += steps.len();
    }
    assert!(total >= 10_000);
}

fn verdict_is_pass(hook: ackwatch_tests::harness::Hook, v: u32) -> bool {
    match hook {
        ackwatch_tests::harness::Hook::Xdp(_) => v == 2, // XDP_PASS
        ackwatch_tests::harness::Hook::Tc(_) => v as i32 == -1, // TC_ACT_UNSPEC
    }
}

/// A cTCP client ignores the headend's duplicate ACKs: exactly one stall record, for
/// the right flow, hole, side, kind and loss side; the healthy flow beside it none.
#[test]
fn kernel_reports_unanswered_ctcp_stall() {
    use ackwatch_tests::scenario::ctcp_flow;
    use ebpf_probe::abi::{LossSide, StallKind, StallWhat};
    let client: std::net::SocketAddr = "192.0.2.20:40002".parse().unwrap();
    let server = "198.51.100.1:10000".parse().unwrap();
    let mut steps = ctcp_flow(client, server, 20, Some(8), 1500);
    steps.extend(ctcp_flow(
        "192.0.2.10:40001".parse().unwrap(),
        server,
        20,
        None,
        0,
    ));
    steps.sort_by_key(|s| s.at_ns);
    let mut k = Kernel::load(Settings::default());
    let mut h = Host::new(Settings::default());
    for s in &steps {
        k.feed(s.hook, &s.frame, s.at_ns);
        h.feed(s.hook, &s.frame, s.at_ns);
    }
    let mut events = k.events();
    assert_eq!(events, h.events, "kernel and host disagree");
    let candidates: Vec<_> = events
        .iter()
        .filter(|e| e.what == StallWhat::Candidate as u8)
        .map(|e| e.key.port[e.client as usize])
        .collect();
    assert_eq!(
        candidates,
        [40002],
        "one candidate record, for the stalled flow"
    );
    events.retain(|e| e.what != StallWhat::Candidate as u8);
    assert_eq!(
        events.len(),
        1,
        "expected exactly one stall record: {events:?}"
    );
    let e = &events[0];
    assert_eq!(StallWhat::try_from(e.what), Ok(StallWhat::Started));
    assert_eq!(
        e.hole,
        1001 + 8 * 400,
        "hole = the lost segment's sequence number"
    );
    assert_eq!(e.stuck, e.client, "the client is the stuck side");
    assert_eq!(StallKind::try_from(e.kind), Ok(StallKind::Unanswered));
    assert_eq!(LossSide::try_from(e.loss), Ok(LossSide::Downstream));
    assert_eq!(
        e.key.port[e.client as usize], 40002,
        "the stalled flow, not the healthy one"
    );
    let delay = e.at - e.since;
    assert!(
        (1_000_000_000..1_100_000_000).contains(&delay),
        "reported {delay} ns after the first duplicate ACK (T = 1 s)"
    );
}

/// The out-of-order window on the kernel's own clocks. A LAN flow's window (5 ms here,
/// microseconds on a real LAN) is timed on the precise clock; a WAN client's (one
/// initial RTT, 60 ms here) on the coarse one, so its in-order data reads no clock
/// helper: its `nextseqtime` then lies on the coarse clock's grid. Either way a segment
/// resent at once is out-of-order, and one resent past the window a retransmission.
#[test]
fn out_of_order_window_on_the_kernel_clocks() {
    use ackwatch_tests::frames::{TH_ACK, TH_SYN, tcp_frame};
    use ackwatch_tests::harness::Hook;
    use ebpf_probe::abi::event;
    use ebpf_probe::parse::LinkKind;
    use std::time::Duration;
    let mut k = Kernel::load_with_kernel_clock(Settings::default());
    let server: std::net::SocketAddr = "198.51.100.1:10000".parse().unwrap();
    let ms = Duration::from_millis;
    let cases = [
        ("192.0.2.10:40001", ms(5), ms(20)),
        ("192.0.2.10:40002", ms(60), ms(120)),
    ];
    for (client, irtt, late) in cases {
        let client: std::net::SocketAddr = client.parse().unwrap();
        let mut send = |from_client: bool, seq: u32, ack: u32, flags: u8, len: usize| {
            let (src, dst) = if from_client {
                (client, server)
            } else {
                (server, client)
            };
            k.feed(
                Hook::Xdp(LinkKind::Ethernet),
                &tcp_frame(src, dst, seq, ack, flags, len),
                0,
            );
        };
        send(true, 0, 0, TH_SYN, 0);
        send(false, 0, 1, TH_SYN | TH_ACK, 0);
        std::thread::sleep(irtt);
        send(true, 1, 1, TH_ACK, 0);
        send(true, 1, 1, TH_ACK, 100);
        send(true, 101, 1, TH_ACK, 100);
        // Resent at once, then after the window.
        send(true, 1, 1, TH_ACK, 100);
        std::thread::sleep(late);
        send(true, 1, 1, TH_ACK, 100);
    }
    let clock = k.probe.clock().expect("read CLOCK");
    assert!(clock.ns_per_jiffy > 0, "calibrated: {clock:?}");
    let flows = k.probe.flows().expect("read FLOWS");
    assert_eq!(flows.len(), 2);
    for (key, flow) in &flows {
        let port = key.port[0].max(key.port[1]);
        let c = flow.client as usize;
        let half = &flow.half[c];
        let want_irtt = cases
            .iter()
            .find(|x| x.0.ends_with(&port.to_string()))
            .unwrap()
            .1;
        assert!(
            flow.irtt >= want_irtt.as_nanos() as u64,
            "{port}: initial RTT {} ns",
            flow.irtt
        );
        assert_eq!(half.events[event::OUT_OF_ORDER], 1, "{port}: out-of-order");
        assert_eq!(
            half.events[event::RETRANSMISSION],
            1,
            "{port}: retransmission"
        );
        let on_grid = half.nextseqtime.wrapping_sub(clock.offset) % clock.ns_per_jiffy == 0;
        assert_eq!(
            on_grid,
            port == 40002,
            "{port}: nextseqtime {} on the coarse clock's grid",
            half.nextseqtime
        );
    }
}

/// The benchmarks' `ackwatch_walk` feeds what they say they measure: from one frame,
/// consecutive segments of a flow (each run a new in-order segment: none taken for a
/// retransmission), or a new flow each run.
#[test]
fn walk_feeds_consecutive_segments_and_new_flows() {
    use ackwatch_tests::frames::{TH_ACK, tcp_frame};
    use ackwatch_tests::harness::Hook;
    use ebpf_probe::abi::event;
    use ebpf_probe::parse::LinkKind;
    let mut k = Kernel::load_with_kernel_clock(Settings::default());
    let client: std::net::SocketAddr = "192.0.2.10:40001".parse().unwrap();
    let server: std::net::SocketAddr = "198.51.100.1:10000".parse().unwrap();
    let (len, runs) = (100u32, 1000u32);
    let xdp = Hook::Xdp(LinkKind::Ethernet);
    k.feed(
        xdp,
        &tcp_frame(client, server, 1, 1, TH_ACK, len as usize),
        0,
    );
    k.feed(xdp, &tcp_frame(server, client, 1, 1 + len, TH_ACK, 0), 0);
    // Ethernet, a 20-byte IPv4 header, then the sequence number at byte 4 of TCP.
    let segment = tcp_frame(client, server, 1, 1, TH_ACK, len as usize);
    let seq_at = 14 + 20 + 4;
    k.probe
        .xdp_walk_time("ackwatch_xdp", &segment, [seq_at, len], runs)
        .expect("walk the flow");
    let flows = k.probe.flows().expect("read FLOWS");
    assert_eq!(flows.len(), 1);
    let flow = &flows[0].1;
    let half = &flow.half[flow.client as usize];
    assert_eq!(
        half.nextseq,
        1 + (runs + 1) * len,
        "every run one segment on"
    );
    for e in [
        event::RETRANSMISSION,
        event::OUT_OF_ORDER,
        event::NOT_ADVANCED,
    ] {
        assert_eq!(half.events[e], 0, "event {e}: in-order segments only");
    }
    let pending = k.probe.table_fill()[1];
    let src_at = 14 + 12;
    k.probe
        .xdp_walk_time("ackwatch_xdp", &segment, [src_at, 1], runs)
        .expect("walk the sources");
    assert_eq!(
        k.probe.table_fill()[1],
        pending + runs as u64,
        "a new (one-sided) flow every run"
    );
}
