//! Live detection in the namespace lab: the real probe attached to veths, the real
//! Linux TCP stack as the headend, real and emulated cTCP clients. Each test builds its
//! own lab and removes it, pass or fail.

use std::net::SocketAddr;
use std::time::Duration;

use ackwatch::kernel::probe::Settings;
use ackwatch_tests::Scratch;
use ackwatch_tests::ctcp::CtcpClient;
use ackwatch_tests::lab::{CLIENT4, CLIENT6, HEADEND4, HEADEND6, Lab, in_ns};
use ackwatch_tests::live::{
    Amount, Headend, Placement, Tcpdump, attach, compare_analyze_with_tshark, compare_with_tshark,
    real_tcp_uploads, records_for,
};
use ebpf_probe::abi::{LossSide, StallKind, StallRecord, StallWhat, event};

const ISN: u32 = 1000;
const LEN: usize = 400;
/// The lost segment: the ninth.
const HOLE: u32 = ISN + 1 + 8 * LEN as u32;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Where the ninth segment is dropped.
#[derive(Clone, Copy)]
enum Loss {
    /// After the probe saw it.
    Downstream,
    /// Before the probe.
    Upstream,
}

fn drop_rule(lab: &Lab, placement: Placement, loss: Loss, port: u16) {
    let rule = format!(
        "tcp dport {port} tcp sequence {HOLE} meta length != {} drop",
        LEN + 41
    );
    // Downstream of a headend probe is the headend's own input; of a gateway probe, the
    // gateway's forwarding. Upstream is the hop before the probe.
    let (ns, hook) = match (placement, loss) {
        (Placement::Headend, Loss::Downstream) => (&lab.headend, "input"),
        (Placement::Headend, Loss::Upstream) | (Placement::Gateway, Loss::Downstream) => {
            (&lab.gateway, "forward")
        }
        (Placement::Gateway, Loss::Upstream) => (&lab.client, "output"),
    };
    lab.nft_rule(ns, "ackwatch_loss", hook, &rule);
}

/// A cTCP flow of 20 segments whose ninth is lost, then a segment every 100 ms for
/// `keep_sending`; with `answer_after`, the client resends the hole (one byte longer,
/// so the loss rule lets it pass) that long after the loss.
fn ctcp_stall(
    lab: &Lab,
    client: SocketAddr,
    server: SocketAddr,
    keep_sending: Duration,
    answer_after: Option<Duration>,
) {
    in_ns(&lab.client, || {
        let mut c = CtcpClient::connect(client, server, ISN).expect("handshake with the headend");
        for _ in 0..20 {
            c.send_data(LEN).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = std::time::Instant::now();
        let mut answered = false;
        while start.elapsed() < keep_sending {
            if let Some(after) = answer_after
                && !answered
                && start.elapsed() >= after
            {
                c.resend(HOLE, LEN + 1).unwrap();
                answered = true;
            }
            c.send_data(LEN).unwrap();
            c.ignore_for(Duration::from_millis(100)).unwrap();
        }
    });
}

fn started(records: &[StallRecord]) -> Vec<&StallRecord> {
    records
        .iter()
        .filter(|r| r.what == StallWhat::Started as u8)
        .collect()
}

fn check_stall(records: &[StallRecord], client: SocketAddr, loss: LossSide) -> u64 {
    let s = started(records);
    assert_eq!(s.len(), 1, "exactly one stall: {records:?}");
    let r = s[0];
    assert_eq!(r.hole, HOLE);
    assert_eq!(r.stuck, r.client, "the client is stuck");
    assert_eq!(
        r.key.port[r.client as usize],
        client.port(),
        "the right flow"
    );
    assert_eq!(r.kind, StallKind::Unanswered as u8);
    assert_eq!(r.loss, loss as u8);
    let delay = r.at - r.since;
    assert!(
        (1_000_000_000..=2_000_000_000).contains(&delay),
        "reported {delay} ns after the first duplicate ACK"
    );
    delay
}

fn downstream_stall(placement: Placement, client: SocketAddr, server: SocketAddr) {
    let lab = Lab::new();
    lab.quiet_client_kernel();
    drop_rule(&lab, placement, Loss::Downstream, server.port());
    let _headend = Headend::start(&lab, &[server.port()]);
    let mut probe = attach(&lab, &Settings::default(), placement);
    let scratch = Scratch::new("live-downstream");
    // The capture sees what the probe sees: the headend's interface, or the gateway's
    // client side (where the client's segments enter; the headend's answers enter g1).
    let (ns, dev) = if placement == Placement::Headend {
        (&lab.headend, "h0")
    } else {
        (&lab.gateway, "g1")
    };
    let dump = Tcpdump::start(ns, dev, scratch.join("dump.pcap"));
    ctcp_stall(&lab, client, server, Duration::from_millis(1600), None);
    lab.seal();
    let capture = dump.finish();
    let records = records_for(&mut probe, Duration::from_millis(100));
    let delay = check_stall(&records, client, LossSide::Downstream);
    // The emulator's own kernel sent no RST: the flow is still open.
    let flows = probe.flows().unwrap();
    let (_, flow) = flows
        .iter()
        .find(|(k, _)| k.port.contains(&client.port()))
        .expect("the flow");
    assert_eq!(
        flow.state,
        ebpf_probe::abi::FlowState::Stalled as u8,
        "not closed by a RST"
    );
    // On another port the probe starts at the first data segment (the signature), so
    // its handshake packets are not counted: compare on the cTCP port only.
    if placement == Placement::Headend && server.port() == 10_000 {
        compare_with_tshark(&probe, &capture);
        compare_analyze_with_tshark(&capture);
    }
    println!(
        "{placement:?}, {}: stall reported {} ms after the first duplicate ACK",
        server,
        delay / 1_000_000
    );
}

#[test]
fn ctcp_loss_downstream_of_the_headend_probe() {
    downstream_stall(
        Placement::Headend,
        addr(CLIENT4, 50_001),
        addr(HEADEND4, 10_000),
    );
}

#[test]
fn ctcp_loss_downstream_of_the_gateway_probe() {
    downstream_stall(
        Placement::Gateway,
        addr(CLIENT4, 50_002),
        addr(HEADEND4, 10_000),
    );
}

#[test]
fn ctcp_loss_downstream_ipv6() {
    downstream_stall(
        Placement::Headend,
        addr(CLIENT6, 50_003),
        addr(HEADEND6, 10_000),
    );
}

#[test]
fn ctcp_on_another_port_is_recognized_by_its_payload() {
    downstream_stall(
        Placement::Headend,
        addr(CLIENT4, 50_004),
        addr(HEADEND4, 8443),
    );
}

#[test]
fn ctcp_loss_upstream_of_the_probe() {
    for placement in [Placement::Headend, Placement::Gateway] {
        let lab = Lab::new();
        lab.quiet_client_kernel();
        drop_rule(&lab, placement, Loss::Upstream, 10_000);
        let _headend = Headend::start(&lab, &[10_000]);
        let mut probe = attach(&lab, &Settings::default(), placement);
        let client = addr(CLIENT4, 50_010);
        let scratch = Scratch::new("live-upstream");
        let dump = Tcpdump::start(&lab.headend, "h0", scratch.join("h0.pcap"));
        ctcp_stall(
            &lab,
            client,
            addr(HEADEND4, 10_000),
            Duration::from_millis(1600),
            None,
        );
        lab.seal();
        let capture = dump.finish();
        let records = records_for(&mut probe, Duration::from_millis(100));
        let delay = check_stall(&records, client, LossSide::Upstream);
        // The headend's interface sees what a headend probe sees.
        if placement == Placement::Headend {
            compare_with_tshark(&probe, &capture);
        }
        compare_analyze_with_tshark(&capture);
        let flows = probe.flows().unwrap();
        let f = &flows
            .iter()
            .find(|(k, _)| k.port.contains(&client.port()))
            .expect("flow")
            .1;
        assert_eq!(
            f.half[f.client as usize].events[event::LOST_SEGMENT],
            1,
            "{placement:?}: one lost segment"
        );
        println!(
            "{placement:?}, upstream: stall reported {} ms after the first duplicate ACK",
            delay / 1_000_000
        );
    }
}

#[test]
fn ctcp_client_that_answers() {
    // Answers before T: no stall. After T: a stall, then a recovery.
    for (after, stalls) in [
        (Duration::from_millis(300), 0),
        (Duration::from_millis(1500), 1),
    ] {
        let lab = Lab::new();
        lab.quiet_client_kernel();
        drop_rule(&lab, Placement::Headend, Loss::Downstream, 10_000);
        let _headend = Headend::start(&lab, &[10_000]);
        let mut probe = attach(&lab, &Settings::default(), Placement::Headend);
        ctcp_stall(
            &lab,
            addr(CLIENT4, 50_020),
            addr(HEADEND4, 10_000),
            Duration::from_millis(2000),
            Some(after),
        );
        let records = records_for(&mut probe, Duration::from_millis(100));
        assert_eq!(
            started(&records).len(),
            stalls,
            "answer after {after:?}: {records:?}"
        );
        if stalls == 1 {
            let rec: Vec<&StallRecord> = records
                .iter()
                .filter(|r| r.what == StallWhat::Recovered as u8)
                .collect();
            assert_eq!(rec.len(), 1, "{records:?}");
            assert_eq!(rec[0].retx_seen, 1);
            let open = (rec[0].at - rec[0].since) / 1_000_000;
            println!(
                "answered after {after:?}: stalled, recovered after the hole was open {open} ms"
            );
            assert!(open >= 1_400, "{open} ms");
        }
    }
}

/// 2% of client segments lost at the gateway, before the headend's probe: real TCP
/// recovers, with duplicate ACKs and retransmissions. Returns the lab, the probe and
/// the stall records after `flows` uploads of 2 MB.
fn real_tcp_under_loss(
    flows: usize,
    dump: bool,
) -> (
    Vec<StallRecord>,
    ackwatch::kernel::probe::Probe,
    Option<(Scratch, std::path::PathBuf)>,
) {
    let lab = Lab::new();
    let server = addr(HEADEND4, 10_000);
    lab.nft_rule(
        &lab.gateway,
        "ackwatch_loss",
        "forward",
        "tcp dport 10000 numgen random mod 50 == 0 drop",
    );
    let headend = Headend::start(&lab, &[10_000]);
    let mut probe = attach(&lab, &Settings::default(), Placement::Headend);
    let scratch = Scratch::new("live-loss");
    let capture = dump.then(|| Tcpdump::start(&lab.headend, "h0", scratch.join("h0.pcap")));
    real_tcp_uploads(&lab, server, flows, Amount::Bytes(2_000_000));
    let capture = capture.map(|c| {
        lab.seal();
        (scratch, c.finish())
    });
    assert_eq!(
        headend.stop(),
        flows as u64 * 2_000_000,
        "every byte arrived"
    );
    let records = records_for(&mut probe, Duration::from_millis(100));
    assert_eq!(probe.flows().unwrap().len(), flows);
    (records, probe, capture)
}

/// 20 flows of 2 MB under 2% loss: never a stall; and the probe's counts equal
/// tshark's on a capture of the same run.
#[test]
fn real_tcp_with_random_loss_never_stalls() {
    let (records, probe, capture) = real_tcp_under_loss(20, true);
    let flows = probe.flows().unwrap();
    let sum = |e: usize| {
        flows
            .iter()
            .map(|(_, f)| (f.half[0].events[e] + f.half[1].events[e]) as u64)
            .sum::<u64>()
    };
    let (dups, retx, resent) = (
        sum(event::DUP_ACK),
        sum(event::RETRANSMISSION),
        sum(event::NOT_ADVANCED),
    );
    println!(
        "20 x 2 MB with 2% loss: {dups} duplicate ACKs, {retx} retransmissions, {resent} resent segments, {} stall records",
        records.len()
    );
    assert!(dups > 0 && resent > 0, "the loss must show");
    assert!(records.is_empty(), "healthy TCP flagged: {records:?}");
    let (_scratch, file) = capture.unwrap();
    let n = compare_with_tshark(&probe, &file);
    assert_eq!(compare_analyze_with_tshark(&file), 40);
    println!("{n} directions: the same counts as tshark on a capture of the same run");
}

#[test]
fn vlan_tagged_ctcp_stall() {
    use ackwatch_tests::frames::L2;
    use ackwatch_tests::scenario::ctcp_flow_on;
    let lab = Lab::new();
    let mut probe = attach(&lab, &Settings::default(), Placement::Headend);
    // This kernel has no VLAN devices: both directions are crafted, 802.1Q-tagged, and
    // sent from the gateway's side of the veth into the headend's XDP.
    let client = addr("192.0.2.20", 40_002);
    let steps = ctcp_flow_on(
        &L2::Vlan(vec![(0x8100, 42)]),
        client,
        addr("198.51.100.1", 10_000),
        20,
        Some(8),
        1500,
    );
    let t0 = steps[0].at_ns;
    let frames: Vec<(Duration, Vec<u8>)> = steps
        .iter()
        .map(|s| (Duration::from_nanos(s.at_ns - t0), s.frame.clone()))
        .collect();
    ackwatch_tests::lab::inject(&lab.gateway, "g1", &frames);
    let records = records_for(&mut probe, Duration::from_millis(100));
    let s = started(&records);
    assert_eq!(s.len(), 1, "{records:?}");
    assert_eq!(s[0].hole, 1001 + 8 * 400);
    assert_eq!(s[0].stuck, s[0].client);
    assert_eq!(s[0].loss, LossSide::Downstream as u8);
}

#[test]
fn a_thousand_healthy_flows_and_ten_stalled() {
    let lab = Lab::new();
    lab.quiet_client_kernel();
    drop_rule(&lab, Placement::Headend, Loss::Downstream, 10_000);
    let _headend = Headend::start(&lab, &[10_000]);
    let mut probe = attach(&lab, &Settings::default(), Placement::Headend);
    let server = addr(HEADEND4, 10_000);
    let stalled: Vec<SocketAddr> = (0..10).map(|i| addr(CLIENT4, 50_100 + i)).collect();
    std::thread::scope(|s| {
        for &c in &stalled {
            let lab = &lab;
            s.spawn(move || ctcp_stall(lab, c, server, Duration::from_millis(1600), None));
        }
        // 1,000 healthy connections open at once, each sending 4 kB.
        s.spawn(|| {
            ackwatch_tests::lab::enter(&lab.client);
            let mut open = Vec::new();
            for _ in 0..1000 {
                // Paced a little: a burst of 1,000 SYNs overflows the kernel's backlog.
                std::thread::sleep(Duration::from_micros(500));
                let mut c = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(10))
                    .expect("connect");
                std::io::Write::write_all(&mut c, &[1u8; 4096]).unwrap();
                open.push(c);
            }
            std::thread::sleep(Duration::from_millis(500));
        });
    });
    let records = records_for(&mut probe, Duration::from_millis(200));
    let flows = probe.flows().unwrap();
    assert!(flows.len() >= 1010, "{} flows tracked", flows.len());
    let s = started(&records);
    let mut reported: Vec<u16> = s.iter().map(|r| r.key.port[r.client as usize]).collect();
    reported.sort();
    let want: Vec<u16> = stalled.iter().map(|a| a.port()).collect();
    assert_eq!(reported, want, "exactly the ten stalled flows: {records:?}");
    assert!(
        s.iter()
            .all(|r| r.hole == HOLE && r.loss == LossSide::Downstream as u8)
    );
}

#[test]
fn other_ports_are_tracked_only_when_tracking_all() {
    use ebpf_probe::abi::{FlowClass, counter};
    use ebpf_probe::verdict::Config;
    for track_all in [false, true] {
        let lab = Lab::new();
        let headend = Headend::start(&lab, &[5201]);
        let settings = Settings {
            verdict: Config {
                track_all,
                ..Config::default()
            },
            ..Settings::default()
        };
        let probe = attach(&lab, &settings, Placement::Headend);
        real_tcp_uploads(&lab, addr(HEADEND4, 5201), 1, Amount::Bytes(100_000));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(headend.stop(), 100_000);
        let flows = probe.flows().unwrap();
        let out_of_scope = probe.counters().unwrap()[counter::OUT_OF_SCOPE as usize];
        if track_all {
            assert_eq!(flows.len(), 1);
            assert_eq!(flows[0].1.class, FlowClass::Tcp as u8);
        } else {
            assert!(flows.is_empty(), "{flows:?}");
            assert!(
                out_of_scope > 50,
                "the upload's packets count as out of scope: {out_of_scope}"
            );
        }
    }
}

/// A test that fails half way leaves no namespace, program or link behind: the lab's
/// namespaces (and with them the veths and the programs' links) are deleted and the
/// probe's programs unloaded as the panic unwinds.
#[test]
fn nothing_is_left_behind_when_a_test_fails() {
    let seen = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new();
        let probe = attach(&lab, &Settings::default(), Placement::Headend);
        *seen.lock().unwrap() = (
            vec![lab.client.clone(), lab.gateway.clone(), lab.headend.clone()],
            probe.program_ids(),
        );
        panic!("a deliberate failure");
    });
    assert!(result.is_err());
    let (namespaces, programs) = seen.into_inner().unwrap();
    // The Ethernet XDP and TC programs: the others load only when an interface needs them.
    assert_eq!(programs.len(), 2);
    let listed = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for ns in &namespaces {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "namespace {ns} left behind"
        );
    }
    let loaded: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect();
    for id in &programs {
        assert!(!loaded.contains(id), "program {id} left loaded");
    }
}
