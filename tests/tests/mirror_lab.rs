//! Mirror ports in the lab (issue 13): the gateway's client-side traffic copied by the
//! kernel to two collector namespaces, one as a SPAN (tc mirred over a veth) and one
//! through a real Linux VXLAN device to an underlay interface with no VXLAN device;
//! an agent with --mirror on each (--mirror-drop on the VXLAN one) beside an inline
//! agent on the gateway, in one run of a stalling cTCP flow and real TCP uploads
//! under 2% random loss. Then `ackwatch analyze --mirror` on captures of both kinds
//! of copies, against the agents and against tshark. Needs root.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ackwatch_tests::lab::{CLIENT4, HEADEND4, Lab};
use ackwatch_tests::live::{
    AGENT_ADDR, Agent, Amount, Headend, Tcpdump, http_get, real_tcp_uploads,
};
use ackwatch_tests::lossy::{STALLED_CTCP_PORT, T, UPLOAD_PORT, random_loss};
use ackwatch_tests::mirror_lab::{Collector, Copies, PORT, mirror_g0};
use ackwatch_tests::observe::metric;
use ackwatch_tests::stall_lab::{HOLE, ISN, ctcp_from, drop_holes_at_headend};
use ackwatch_tests::tshark;
use serde_json::Value;

/// A flow's counts that do not depend on where (or when) it was seen: the packets,
/// bytes and analysis events of both directions, its stall holes. Retransmissions
/// and out-of-order segments are summed: which of the two a segment is depends on an
/// initial RTT measured at each observation point (live.rs, `compare_with_tshark`).
fn counts(flow: &Value) -> Vec<u64> {
    let mut out = Vec::new();
    for d in flow["directions"].as_array().expect("directions") {
        let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{k} in {d}"));
        out.extend([
            n("packets"),
            n("bytes"),
            n("dup_acks"),
            n("retransmissions") + n("out_of_order"),
            n("lost_segments"),
            n("acked_unseen"),
            n("zero_windows"),
        ]);
    }
    for s in flow["stalls"].as_array().expect("stalls") {
        out.push(s["hole_seq"].as_u64().expect("hole_seq"));
    }
    out
}

/// Every flow's counts by (client, server).
fn by_flow(flows: &[Value]) -> BTreeMap<(String, String), Vec<u64>> {
    flows
        .iter()
        .map(|f| {
            let name = |k: &str| f[k].as_str().expect(k).to_string();
            ((name("client"), name("server")), counts(f))
        })
        .collect()
}

fn flows_of(agent: &Agent) -> Vec<Value> {
    let body = http_get(&agent.ns, AGENT_ADDR, "/flows?limit=100000").1;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/flows: {e}: {body}"));
    v.as_array().expect("a list of flows").clone()
}

/// `ackwatch analyze --mirror --json` on `capture`: its flows.
fn analyze(capture: &std::path::Path) -> Vec<Value> {
    let out = std::process::Command::new(ackwatch_tests::ackwatch_binary())
        .args(["analyze", "--mirror", "--json"])
        .arg(capture)
        .output()
        .expect("ackwatch analyze");
    assert!(
        out.status.success(),
        "analyze {}: {}",
        capture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn span_and_vxlan_copies_give_the_gateways_answers() {
    let lab = Lab::new();
    lab.quiet_client_kernel();
    drop_holes_at_headend(&lab, &[ISN]);
    random_loss(&lab, 2);
    let span = Collector::new(&lab, Copies::Span, 0);
    let vxlan = Collector::new(&lab, Copies::Vxlan, 1);
    mirror_g0(&lab, &[&span, &vxlan]);
    let uploads_to = Headend::start(&lab, &[UPLOAD_PORT]);
    let base = ["--listen", AGENT_ADDR];
    let agents = [
        Agent::start(
            &lab.gateway,
            &[&base[..], &["--iface", "g0,g1", "--no-egress"]].concat(),
        ),
        Agent::start(
            &span.ns,
            &[&base[..], &["--iface", PORT, "--mirror"]].concat(),
        ),
        Agent::start(
            &vxlan.ns,
            &[&base[..], &["--iface", PORT, "--mirror", "--mirror-drop"]].concat(),
        ),
    ];
    let scratch = ackwatch_tests::Scratch::new("mirror-lab");
    let captures = [
        Tcpdump::start_filtered(&span.ns, PORT, scratch.join("span.pcap"), "tcp"),
        // The VXLAN collector drops the copies before a capture there would see them:
        // the same frames, taken at the underlay's other end.
        Tcpdump::start_filtered(&lab.gateway, "u1", scratch.join("vxlan.pcap"), "udp"),
    ];
    let udp_no_ports = vxlan.udp_no_ports();

    let server: SocketAddr = format!("{HEADEND4}:{UPLOAD_PORT}").parse().unwrap();
    let mut events: Vec<(usize, Instant, Value)> = Vec::new();
    let run = std::thread::scope(|scope| {
        let uploads =
            scope.spawn(|| real_tcp_uploads(&lab, server, 2, Amount::For(Duration::from_secs(2))));
        let ctcp = scope.spawn(|| ctcp_from(&lab, STALLED_CTCP_PORT, ISN, 16));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(uploads.is_finished() && ctcp.is_finished()) && Instant::now() < deadline {
            for (i, a) in agents.iter().enumerate() {
                if let Some(e) = a.next_event(Duration::from_millis(5)) {
                    events.push((i, Instant::now(), e));
                }
            }
        }
        uploads.join().expect("uploads");
        ctcp.join().expect("the cTCP emulator")
    });
    // A sweep mirrors the kernel's counters; the last records arrive.
    let until = Instant::now() + T + Duration::from_millis(300);
    while Instant::now() < until {
        for (i, a) in agents.iter().enumerate() {
            if let Some(e) = a.next_event(Duration::from_millis(5)) {
                events.push((i, Instant::now(), e));
            }
        }
    }
    uploads_to.stop();
    let names = [
        "inline agent on the gateway",
        "SPAN collector",
        "VXLAN collector",
    ];

    // The cTCP stall, once per agent, with its hole, within T + 1 s; no other stall.
    assert_eq!(run.acked, Some(HOLE), "the lab lost another segment");
    let client = format!("{CLIENT4}:{STALLED_CTCP_PORT}");
    for (i, name) in names.iter().enumerate() {
        let started: Vec<_> = events
            .iter()
            .filter(|(a, _, e)| *a == i && e["event"] == "stall_started")
            .collect();
        let [(_, read_at, e)] = started[..] else {
            panic!("{name}: one stall_started expected: {started:?}");
        };
        assert_eq!(e["client"], client.as_str(), "{name}: {e}");
        assert_eq!(e["hole_seq"], HOLE, "{name}: {e}");
        assert_eq!(e["kind"], "unanswered", "{name}: {e}");
        assert_eq!(
            e["unseen_segments"], 0,
            "{name}: the mirror lost nothing: {e}"
        );
        assert_eq!(e["iface"], if i == 0 { "g0" } else { PORT }, "{name}: {e}");
        let after = read_at.saturating_duration_since(run.after_hole);
        assert!(after <= T + Duration::from_secs(1), "{name}: {after:?}");
    }

    // Every flow's counts as the inline agent has them.
    let flows: Vec<_> = agents.iter().map(|a| by_flow(&flows_of(a))).collect();
    assert!(
        flows[0].len() >= 3,
        "the uploads and the cTCP flow: {:?}",
        flows[0]
    );
    let resent: u64 = flows[0].values().map(|c| c[3] + c[10]).sum();
    println!(
        "{} flows, {resent} segments resent: {:?}",
        flows[0].len(),
        flows[0]
    );
    assert!(resent > 0, "no loss: the lossy flows were not lossy");
    for i in 1..3 {
        assert_eq!(flows[i], flows[0], "{} against the gateway", names[i]);
    }
    for (agent, encap) in agents[1..].iter().zip(["none", "vxlan"]) {
        let m = http_get(&agent.ns, AGENT_ADDR, "/metrics").1;
        let value = |name: &str| metric(&m, name).unwrap_or_else(|| panic!("no {name}"));
        let copies = value(&format!(
            "ackwatch_mirror_frames_total{{encap=\"{encap}\"}}"
        ));
        assert!(copies > 100.0, "{encap} copies: {copies}");
        for reason in ["encap_truncated", "encap_unsupported", "truncated"] {
            let name = format!("ackwatch_untracked_packets_total{{reason=\"{reason}\"}}");
            assert_eq!(value(&name), 0.0, "{name}");
        }
    }
    // --mirror-drop: the VXLAN copies never reached the collector's UDP.
    assert_eq!(
        vxlan.udp_no_ports(),
        udp_no_ports,
        "copies reached the stack"
    );
    for a in agents {
        assert_eq!(a.stop(), Some(0));
    }

    // The captures through `ackwatch analyze --mirror`: the same answers.
    for (capture, what) in captures.into_iter().zip(["SPAN", "VXLAN"]) {
        let file = capture.finish();
        let offline = by_flow(&analyze(&file));
        assert_eq!(offline, flows[0], "analyze of the {what} capture");
        let (want, got) = (
            tshark::inner_counts(&file),
            tshark::mirror_analyze_counts(&file),
        );
        assert_eq!(
            got, want,
            "the {what} capture: analyze --mirror against tshark"
        );
    }
}

/// The XDP program attached to the collector's port, by the name the kernel keeps
/// (15 characters), or "" when none is.
fn attached(collector: &Collector) -> String {
    let out = std::process::Command::new("ip")
        .args(["-d", "-n", &collector.ns, "link", "show", PORT])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(xdp) = text.split("prog/xdp").nth(1) else {
        return String::new();
    };
    let mut words = xdp.split_whitespace();
    words
        .find(|w| *w == "name")
        .and(words.next())
        .unwrap_or_default()
        .to_string()
}

/// A mirror agent killed and restarted finds its program still attached and keeps it;
/// an inline agent on the same pins (other settings) detaches it and attaches its own;
/// SIGTERM leaves nothing.
#[test]
fn restarts_keep_the_mirror_program_and_inline_replaces_it() {
    use ackwatch_tests::live::BpfFs;
    let lab = Lab::new();
    let span = Collector::new(&lab, Copies::Span, 0);
    let bpffs = BpfFs::mount();
    let pin = bpffs.pin_path();
    let inline = ["--iface", PORT, "--listen", AGENT_ADDR, "--pin-path", &pin];
    let mirror = [&inline[..], &["--mirror"]].concat();
    drop(Agent::start(&span.ns, &mirror)); // SIGKILL
    assert_eq!(
        attached(&span),
        "ackwatch_xdp_mi",
        "the mirror program stays"
    );
    let second = Agent::start(&span.ns, &mirror);
    let kept = second
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("still attached"));
    assert!(kept, "{:?}", second.logs.lock().unwrap());
    drop(second);
    let third = Agent::start(&span.ns, &inline);
    assert_eq!(
        attached(&span),
        "ackwatch_xdp",
        "the inline program replaces it"
    );
    assert_eq!(third.stop(), Some(0));
    assert_eq!(attached(&span), "", "SIGTERM detaches");
}
