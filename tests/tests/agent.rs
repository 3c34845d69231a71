//! `ackwatch run`, the daemon, in the lab: its JSON events, its sweep, its HTTP side,
//! its exit codes, and a clean detach.

use std::process::Command;
use std::time::{Duration, Instant};

use ackwatch_tests::lab::{CLIENT4, Lab};
use ackwatch_tests::live::{AGENT_ADDR, Agent, Tcpdump, http_get};
use ackwatch_tests::observe::metric;
use ackwatch_tests::stall_lab::{
    HOLE, ISN, LEN, ctcp, ctcp_answered_after, ctcp_from, hole, lab_with_loss, lab_with_loss_of,
};

#[test]
fn stall_event_flows_api_and_metrics() {
    let (lab, _headend) = lab_with_loss();
    let agent = Agent::start(&lab.headend, &["--iface", "h0", "--listen", AGENT_ADDR]);
    ctcp(&lab, 50_200, 16);
    let e = agent
        .next_event(Duration::from_secs(3))
        .expect("a stall_started event");
    assert_eq!(e["event"], "stall_started", "{e}");
    assert_eq!(e["iface"], "h0");
    assert_eq!(e["class"], "ctcp");
    assert_eq!(e["client"], "10.77.1.2:50200");
    assert_eq!(e["server"], "10.77.2.2:10000");
    assert_eq!(e["stuck_side"], "client");
    assert_eq!(e["kind"], "unanswered");
    assert_eq!(e["hole_seq"], HOLE);
    assert_eq!(e["loss"], "downstream");
    assert!(e["advice"].as_str().unwrap().contains("tcp-state-bypass"));
    assert!(e["ts"].as_str().unwrap().ends_with('Z'));

    let (status, body) = http_get(&lab.headend, AGENT_ADDR, "/flows?state=stalled");
    assert_eq!(status, 200);
    let flows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(flows.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(flows[0]["client"], "10.77.1.2:50200");
    assert_eq!(flows[0]["stalls"][0]["hole_seq"], HOLE);
    assert!(
        flows[0]["age_ms"].as_u64().unwrap() >= 1_000
            && flows[0]["idle_ms"].as_u64().unwrap() < 1_000,
        "{body}"
    );
    assert_eq!(
        http_get(&lab.headend, AGENT_ADDR, "/healthz"),
        (200, "ok\n".to_string())
    );
    // `ackwatch flows`, the operator's view of the same table.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.headend])
        .arg(ackwatch_tests::ackwatch_binary())
        .args(["flows", "--stalled", "--api", AGENT_ADDR])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("10.77.1.2:50200") && table.contains(&format!("hole at seq {HOLE}")),
        "{table}"
    );
    std::thread::sleep(Duration::from_millis(1100)); // one sweep mirrors the kernel's counters
    let (_, metrics) = http_get(&lab.headend, AGENT_ADDR, "/metrics");
    for line in [
        "ackwatch_stalls_total{class=\"ctcp\"} 1",
        "ackwatch_flows{class=\"ctcp\",state=\"stalled\"} 1",
        "ackwatch_flow_table_entries 1",
        // Promoted out of the pending table when the server answered.
        "ackwatch_pending_table_entries 0",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(metrics.contains("ackwatch_packets_total{hook=\"xdp\"}"));
    let value = |name: &str| metric(&metrics, name).unwrap_or_else(|| panic!("no {name}"));
    assert!(
        value("ackwatch_dup_acks_total{class=\"ctcp\"}") >= 10.0,
        "{metrics}"
    );
    assert!(
        value("ackwatch_segments_total{class=\"ctcp\"}") >= 40.0,
        "{metrics}"
    );
    let info = metrics
        .lines()
        .find(|l| l.starts_with("ackwatch_stalled_flow_info{"))
        .expect("a stalled-flow series");
    assert!(
        info.contains("client=\"10.77.1.2:50200\"")
            && info.contains("iface=\"h0\"")
            && info.ends_with(" 1"),
        "{info}"
    );

    // The probe's own log record of the stall (aya-log), through the agent's log.
    let logs = agent.logs.lock().unwrap().clone();
    assert!(
        logs.iter().any(|l| l.contains("ackwatch_probe")
            && l.contains(&format!(
                "stall transition 0 (0 started, 1 recovered, 2 ended), hole {HOLE}"
            ))),
        "{logs:?}"
    );
    assert_eq!(agent.stop(), Some(0), "SIGTERM: a clean exit");
    assert!(!xdp_attached(&lab), "XDP left attached");
}

/// Whether an XDP program is attached to the headend's h0.
fn xdp_attached(lab: &Lab) -> bool {
    let link = Command::new("ip")
        .args(["-n", &lab.headend, "link", "show", "h0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&link.stdout).contains("xdp")
}

/// A sender that falls silent right after the loss: no packet triggers the check in
/// the kernel; the sweep reports it within T + one sweep interval.
#[test]
fn the_sweep_reports_a_silent_sender() {
    silent_sender(50_201, 0);
}

/// 500,000 other flows: a pass over the table takes 30 ticks, so only the probe's
/// candidate record (the flow's third duplicate ACK) gets this flow checked in time.
#[test]
fn a_silent_sender_in_a_large_table() {
    silent_sender(50_202, 500_000);
}

/// A silent sender from `port`, with `others` flows in the table besides.
fn silent_sender(port: u16, others: u32) {
    use ackwatch_tests::live::BpfFs;
    use ackwatch_tests::prefill;
    let (lab, _headend) = lab_with_loss();
    let bpffs = BpfFs::mount();
    let pin = bpffs.pin_path();
    let agent = Agent::on_headend(
        &lab,
        &[
            "--sweep-interval",
            "1s",
            "--max-flows",
            "1000000",
            "--pin-path",
            pin.as_str(),
        ],
    );
    prefill::fill(&prefill::pinned_flows(&pin), 0, others);
    let start = Instant::now();
    ctcp(&lab, port, 0);
    let e = agent
        .next_event(Duration::from_secs(4))
        .expect("the sweep's stall_started");
    let waited = start.elapsed();
    assert_eq!(e["event"], "stall_started", "{e}");
    assert_eq!(e["client"], format!("{CLIENT4}:{port}"));
    assert_eq!(e["hole_seq"], HOLE);
    assert!(
        waited <= Duration::from_millis(2_300),
        "reported {waited:?} after the last packet (T + sweep = 2 s)"
    );
    println!(
        "silent sender, {others} other flows: reported {} ms after the flow started",
        waited.as_millis()
    );
    assert!(
        agent.next_event(Duration::from_millis(1500)).is_none(),
        "one event per episode"
    );
}

#[test]
fn bad_input_gets_one_line_and_exit_code_2() {
    let bin = ackwatch_tests::ackwatch_binary();
    for (args, says) in [
        (
            &["run", "--iface", "nosuch0"][..],
            "unknown interface nosuch0",
        ),
        (&["run", "--iface", "lo", "--ctcp-port", "70000"], "70000"),
        (&["run", "--iface", "lo", "--stall-timeout", "soon"], "soon"),
        (
            &["run", "--iface", "lo", "--listen", "not-an-address"],
            "not-an-address",
        ),
    ] {
        let out = Command::new(&bin).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A real Alertmanager shows the pushed alert with its labels, then resolved; a real
/// Prometheus scraping the agent shows the stall in its query API.
#[test]
fn alertmanager_and_prometheus() {
    use ackwatch_tests::Scratch;
    use ackwatch_tests::alerting::{Replica, STORE_ONLY, alertmanager, prometheus};
    use ackwatch_tests::live::poll_json;
    let (lab, _headend) = lab_with_loss();
    let dir = Scratch::new("agent-services");
    let _am = alertmanager(
        &lab.headend,
        &dir,
        &Replica {
            web: "127.0.0.1:9093".into(),
            cluster: None,
        },
        &[],
        STORE_ONLY,
    );
    let _prom = prometheus(
        &lab.headend,
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ackwatch\n    static_configs:\n      - targets: ['{AGENT_ADDR}']\n"
        ),
    );
    let agent = Agent::on_headend(
        &lab,
        &[
            "--alertmanager-url",
            "http://127.0.0.1:9093",
            // Pushed at once: this stall lasts 4 s (the default waits 10).
            "--alert-after",
            "1s",
        ],
    );
    std::thread::scope(|s| {
        // Stalled long enough to see the alert; then answered.
        s.spawn(|| ctcp_answered_after(&lab, 50_300, 40));
        let e = agent
            .next_event(Duration::from_secs(4))
            .expect("stall_started");
        assert_eq!(e["event"], "stall_started");
        let ours = |a: &serde_json::Value| {
            a["labels"]["alertname"] == "CtcpFlowStalled"
                && a["labels"]["client"] == "10.77.1.2:50300"
        };
        let alerts = poll_json(
            &lab.headend,
            "127.0.0.1:9093",
            "/api/v2/alerts",
            Duration::from_secs(5),
            |v| v.as_array().is_some_and(|a| a.iter().any(ours)),
        );
        let alert = alerts
            .as_array()
            .and_then(|a| a.iter().find(|x| ours(x)))
            .unwrap_or_else(|| panic!("no alert in {alerts}"));
        assert_eq!(alert["labels"]["server"], "10.77.2.2:10000");
        assert_eq!(alert["labels"]["class"], "ctcp");
        assert_eq!(alert["labels"]["iface"], "h0");
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(
            alert["labels"]["headend"].as_str(),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .as_deref()
                .map(str::trim)
        );
        assert!(
            alert["annotations"]["tcp_state_bypass"]
                .as_str()
                .unwrap()
                .contains("permit tcp host 10.77.1.2 host 10.77.2.2 eq 10000")
        );
        let q = poll_json(
            &lab.headend,
            "127.0.0.1:9090",
            "/api/v1/query?query=ackwatch_stalls_total%7Bclass%3D%22ctcp%22%7D",
            Duration::from_secs(8),
            |v| v["data"]["result"][0]["value"][1] == "1",
        );
        assert_eq!(q["data"]["result"][0]["value"][1], "1", "Prometheus: {q}");
        let e = agent
            .next_event(Duration::from_secs(6))
            .expect("stall_recovered");
        assert_eq!(e["event"], "stall_recovered", "{e}");
        assert!(e["stalled_ms"].as_u64().unwrap() >= 1_000);
        let alerts = poll_json(
            &lab.headend,
            "127.0.0.1:9093",
            "/api/v2/alerts",
            Duration::from_secs(5),
            |v| v.as_array().is_some_and(|a| !a.iter().any(ours)),
        );
        assert!(
            !alerts.as_array().unwrap().iter().any(ours),
            "the alert is still active: {alerts}"
        );
    });
}

/// With CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only, as user nobody (stricter than the
/// systemd unit, which keeps uid 0 for its pins).
#[test]
fn runs_with_only_three_capabilities() {
    let (lab, _headend) = lab_with_loss();
    let agent = Agent::start_with_three_capabilities(
        &lab.headend,
        &["--iface", "h0", "--listen", AGENT_ADDR],
    );
    ctcp(&lab, 50_202, 16);
    let e = agent
        .next_event(Duration::from_secs(3))
        .expect("a stall_started event");
    assert_eq!(e["event"], "stall_started");
    assert_eq!(http_get(&lab.headend, AGENT_ADDR, "/healthz").0, 200);
    assert_eq!(agent.stop(), Some(0));
}

/// kill -9 during an open stall, then start again: the probe never left, the flow is
/// still tracked, and no second stall_started is printed for the episode. SIGTERM then
/// detaches and unpins everything.
#[test]
fn restart_keeps_the_probe_and_the_flows() {
    use ackwatch_tests::live::BpfFs;
    let (lab, _headend) = lab_with_loss();
    let bpffs = BpfFs::mount();
    let pin = bpffs.pin_path();
    let args = [
        "--iface",
        "h0",
        "--listen",
        AGENT_ADDR,
        "--pin-path",
        pin.as_str(),
    ];
    let first = Agent::start(&lab.headend, &args);
    std::thread::scope(|s| {
        s.spawn(|| ctcp(&lab, 50_400, 40)); // stalls, then goes on sending for 4 s
        let e = first
            .next_event(Duration::from_secs(3))
            .expect("stall_started");
        assert_eq!(e["event"], "stall_started");
        let before = stalled_packets(&lab);
        drop(first); // SIGKILL
        assert!(xdp_attached(&lab), "the probe must stay attached");
        let second = Agent::start(&lab.headend, &args);
        assert!(
            second.next_event(Duration::from_millis(1500)).is_none(),
            "no second stall_started"
        );
        let after = stalled_packets(&lab);
        assert!(
            after > before,
            "the flow is still tracked, and stalled: {before} -> {after} packets"
        );
        assert_eq!(second.stop(), Some(0));
    });
    assert!(!xdp_attached(&lab), "SIGTERM detaches");
    let left: Vec<_> = std::fs::read_dir(&pin).unwrap().collect();
    assert!(left.is_empty(), "pins left: {left:?}");
}

/// Packets of the stalled flow, from /flows (0 if none is stalled).
fn stalled_packets(lab: &Lab) -> u64 {
    let (_, body) = http_get(&lab.headend, AGENT_ADDR, "/flows?state=stalled");
    let flows: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    flows[0]["directions"].as_array().map_or(0, |d| {
        d.iter().map(|x| x["packets"].as_u64().unwrap_or(0)).sum()
    })
}

/// Pins of another map layout or other settings (an older ackwatch) are discarded, not
/// misread: their probe is detached and the agent starts afresh.
#[test]
fn pins_of_another_layout_are_discarded() {
    use ackwatch_tests::live::BpfFs;
    let (lab, _headend) = lab_with_loss();
    let bpffs = BpfFs::mount();
    let pin = bpffs.pin_path();
    let old = std::path::Path::new(&pin).join("v0-older-layout");
    std::fs::create_dir_all(&old).unwrap();
    // An older agent's leftovers: its maps, pinned.
    let settings = ackwatch::kernel::probe::Settings {
        pin_dir: Some(old.clone()),
        ..Default::default()
    };
    drop(ackwatch::kernel::probe::Probe::load(&settings).expect("pin an old layout"));
    assert!(old.join("FLOWS").exists());
    let agent = Agent::on_headend(&lab, &["--pin-path", &pin]);
    assert!(!old.exists(), "the old layout's pins are gone");
    ctcp(&lab, 50_401, 16);
    let e = agent
        .next_event(Duration::from_secs(3))
        .expect("works afresh");
    assert_eq!(e["event"], "stall_started");
}

#[test]
fn a_pin_path_off_bpffs_is_bad_input() {
    let out = Command::new(ackwatch_tests::ackwatch_binary())
        .args([
            "run",
            "--iface",
            "lo",
            "--pin-path",
            "/tmp/not-bpffs/ackwatch",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mount -t bpf bpf"), "{err}");
}

/// One probe per interface, one agent per table: a second agent on the same pins, or
/// on the same interface with other pins, gets one line and exit code 2. Logs can be
/// JSON lines.
#[test]
fn one_agent_per_table_and_interface() {
    use ackwatch_tests::live::BpfFs;
    let (lab, _headend) = lab_with_loss();
    let (a, b) = (BpfFs::mount(), BpfFs::mount());
    let (pin_a, pin_b) = (a.pin_path(), b.pin_path());
    let first = Agent::on_headend(&lab, &["--pin-path", &pin_a]);
    let second = |pin: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.headend])
            .arg(ackwatch_tests::ackwatch_binary())
            .args([
                "run",
                "--iface",
                "h0",
                "--listen",
                "127.0.0.1:9978",
                "--pin-path",
                pin,
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = second(&pin_a);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another ackwatch is running"), "{err}");
    let (code, err) = second(&pin_b);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("h0 already has an XDP program"), "{err}");
    assert_eq!(first.stop(), Some(0));

    let mut json = Command::new("ip")
        .args(["netns", "exec", &lab.headend])
        .arg(ackwatch_tests::ackwatch_binary())
        .args([
            "run",
            "--iface",
            "h0",
            "--listen",
            AGENT_ADDR,
            "--pin-path",
            &pin_a,
            "--log-format",
            "json",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(json.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = json.kill();
    let _ = json.wait();
    let log: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
    assert_eq!(log["level"], "INFO");
    assert!(log["msg"].as_str().unwrap().contains("h0"), "{log}");
}

/// Without the three capabilities the agent names what is missing.
#[test]
fn missing_capabilities_are_named() {
    let (_copy, bin) = ackwatch_tests::ackwatch_binary_for_nobody();
    let run = format!("exec {} run --iface lo", bin.display());
    let out = Command::new("capsh")
        .args(["--user=nobody", "--", "-c", &run])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing capabilities: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{err}"
    );
}

/// A client whose initial sequence number is 2^32 - 5,000: the hole sits 1,799 bytes
/// before the wrap, the data the headend SACKs beyond it lies across and past it. The
/// same conversation from ISN 1,000 runs beside it; tshark reads a capture of both.
#[test]
fn a_stall_across_the_sequence_wrap() {
    let isn = u32::MAX - 4_999;
    let (lab, _headend) = lab_with_loss_of(&[isn, ISN]);
    let agent = Agent::start(&lab.headend, &["--iface", "h0", "--listen", AGENT_ADDR]);
    let dir = ackwatch_tests::Scratch::new("wrap");
    let capture = Tcpdump::start(&lab.headend, "h0", dir.join("wrap.pcap"));
    std::thread::scope(|s| {
        s.spawn(|| ctcp_from(&lab, 50_700, isn, 16));
        s.spawn(|| ctcp_from(&lab, 50_701, ISN, 16));
    });
    let mut events: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            agent
                .next_event(Duration::from_secs(3))
                .expect("two stall_started events")
        })
        .collect();
    events.sort_by_key(|e| e["client"].as_str().unwrap().to_string());
    let (wrapped, plain) = (&events[0], &events[1]);
    assert_eq!(wrapped["client"], "10.77.1.2:50700");
    assert_eq!(wrapped["event"], "stall_started", "{wrapped}");
    assert_eq!(wrapped["hole_seq"], hole(isn), "{wrapped}");
    assert!(hole(isn) > u32::MAX - 2_000, "the hole is before the wrap");
    // dup_acks at the moment of the event depends on timing, not on the numbers.
    for field in ["kind", "loss", "stuck_side", "class"] {
        assert_eq!(
            wrapped[field], plain[field],
            "{field}: {wrapped} vs {plain}"
        );
    }
    let (_, body) = http_get(&lab.headend, AGENT_ADDR, "/flows?state=stalled");
    let flows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(flows.len(), 2, "{body}");
    // Every count of both flows, both directions, as tshark reads the capture.
    let tshark = ackwatch_tests::tshark::counts(&capture.finish());
    for d in flows
        .iter()
        .flat_map(|f| f["directions"].as_array().unwrap())
    {
        let key = (
            d["src"].as_str().unwrap().to_string(),
            d["dst"].as_str().unwrap().to_string(),
        );
        let t = tshark
            .get(&key)
            .unwrap_or_else(|| panic!("tshark has no {key:?}"));
        let ours = |k: &str| d[k].as_u64().unwrap();
        assert_eq!(
            (
                ours("packets"),
                ours("dup_acks"),
                ours("retransmissions"),
                ours("lost_segments"),
                ours("out_of_order")
            ),
            (
                t.packets,
                t.dup_acks,
                t.retransmissions,
                t.lost_segments,
                t.out_of_order
            ),
            "{key:?}: ours vs tshark"
        );
    }
    let client_side = flows
        .iter()
        .find(|f| f["client"] == "10.77.1.2:50700")
        .unwrap();
    assert_eq!(client_side["directions"][0]["bytes"], 36 * LEN, "{body}");
}

/// --probe-stats: the kernel times each run of the probe's programs while the agent
/// runs, and /metrics has the runs and their time by hook. Without it the kernel times
/// nothing (its default), and both stay 0.
#[test]
fn probe_stats_time_each_hook() {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    assert_eq!(
        std::fs::read_to_string(sysctl).unwrap().trim(),
        "0",
        "this test needs the kernel's default: {sysctl} = 0"
    );
    let (lab, _headend) = lab_with_loss();
    let scrape = |port| {
        ctcp(&lab, port, 4);
        std::thread::sleep(Duration::from_millis(1100)); // one sweep mirrors them
        let (_, metrics) = http_get(&lab.headend, AGENT_ADDR, "/metrics");
        let value = |hook: &str, what: &str| {
            let name = format!("ackwatch_probe_{what}_total{{hook=\"{hook}\"}}");
            metric(&metrics, &name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        };
        let packets = metric(&metrics, "ackwatch_packets_total{hook=\"xdp\"}").unwrap();
        let per_hook = ["xdp", "tc"].map(|h| (value(h, "runs"), value(h, "run_seconds")));
        (packets, per_hook)
    };

    let plain = Agent::start(&lab.headend, &["--iface", "h0", "--listen", AGENT_ADDR]);
    let (packets, per_hook) = scrape(50_210);
    assert!(packets > 0.0, "the probe saw the session");
    assert_eq!(per_hook, [(0.0, 0.0); 2], "timed without --probe-stats");
    assert_eq!(plain.stop(), Some(0));

    let args = ["--iface", "h0", "--listen", AGENT_ADDR, "--probe-stats"];
    let timed = Agent::start(&lab.headend, &args);
    let (packets, per_hook) = scrape(50_211);
    for ((runs, seconds), hook) in per_hook.into_iter().zip(["xdp", "tc"]) {
        assert!(runs > 0.0, "{hook}: no runs counted");
        let ns = seconds * 1e9 / runs;
        assert!((1.0..100_000.0).contains(&ns), "{hook}: {ns} ns a run");
    }
    // The data the client sent came in through XDP: each packet is one run.
    assert!(
        per_hook[0].0 <= packets,
        "{} XDP runs, {packets} packets",
        per_hook[0].0
    );
    assert_eq!(timed.stop(), Some(0));
    assert_eq!(std::fs::read_to_string(sysctl).unwrap().trim(), "0");
}

/// --probe-stats needs CAP_SYS_ADMIN, which the three capabilities the agent otherwise
/// needs do not give: refused with one line and exit code 2, before anything is loaded.
#[test]
fn probe_stats_without_cap_sys_admin_is_named() {
    let (_copy, bin) = ackwatch_tests::ackwatch_binary_for_nobody();
    let run = format!("exec {} run --iface lo --probe-stats", bin.display());
    let cmd = ackwatch_tests::live::as_nobody_with_three_capabilities(&run);
    let out = Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--probe-stats") && err.contains("CAP_SYS_ADMIN"),
        "{err}"
    );
}
