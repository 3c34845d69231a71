//! The fleet view against the real thing: real agents in the lab (two headends), a real
//! cTCP stall, a real Prometheus with the shipped rules. Every panel of the Grafana
//! dashboards (deploy/grafana) is sent to it as Grafana would, its variables
//! substituted. And the series count of one agent, at 1M flows and 100 stalled ones.

use std::time::Duration;

use ackwatch_tests::lab::CLIENT4;
use ackwatch_tests::live::{AGENT_ADDR, Agent};
use ackwatch_tests::prom::{Prometheus, deploy_dir, encode};
use ackwatch_tests::stall_lab::{ctcp, lab_with_loss};
use serde_json::Value;

/// Panels that may return nothing while every agent is up and a flow is stalled.
const MAY_BE_EMPTY: &[&str] = &["Agents down"];
/// Stall panels whose value need not be above 0 with one stall still going.
const NOT_YET: &[&str] = &["Duration of ended stalls"];

/// The headend's agent as Prometheus, on the gateway, scrapes it.
const HEADEND_AGENT: &str = "10.77.2.2:9977";
/// The gateway's agent, on the gateway's loopback.
const GATEWAY_AGENT: &str = AGENT_ADDR;

/// What Grafana puts in place of the dashboards' variables, for headend `instance`.
fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("${instance}", instance)
        .replace("$instance", instance)
        .replace("$__rate_interval", "1m")
}

/// Every panel of a dashboard, those inside rows included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.extend(p["panels"].as_array().into_iter().flatten().cloned());
        if p["type"] != "row" {
            out.push(p.clone());
        }
    }
    out
}

/// Any sample of a query's result (instant or range) above 0.
fn any_above_zero(result: &[Value]) -> bool {
    let value = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok());
    result.iter().any(|series| {
        let points = series["values"].as_array().cloned();
        points
            .unwrap_or_else(|| vec![series["value"].clone()])
            .iter()
            .any(|p| value(p).is_some_and(|v| v > 0.0))
    })
}

/// The instances in a query's result.
fn instances(result: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = result
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

/// Every query of `file`, for headend `instance`: each parses; each returns data (but
/// MAY_BE_EMPTY); each stall panel's a stall. Returns the queries sent.
fn send_panels(prom: &Prometheus, file: &str, instance: &str) -> usize {
    let path = deploy_dir().join("grafana").join(file);
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect(file);
    let mut sent = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{file}: panel {title:?} has no query");
        for t in targets {
            let expr = substitute(t["expr"].as_str().expect("expr"), instance);
            assert!(!expr.contains('$'), "{file}: {title}: {expr}");
            let answer = if t["range"] == true {
                prom.query_range(&expr, Duration::from_secs(60))
            } else {
                prom.query(&expr)
            };
            sent += 1;
            assert_eq!(
                answer["status"], "success",
                "{file}: {title}: {expr}: {answer}"
            );
            let result = answer["data"]["result"].as_array().unwrap();
            if !MAY_BE_EMPTY.contains(&title.as_str()) {
                assert!(!result.is_empty(), "{file}: {title}: {expr}: no data");
            }
            if title.to_lowercase().contains("stall") && !NOT_YET.contains(&title.as_str()) {
                assert!(
                    any_above_zero(result),
                    "{file}: {title}: {expr}: no stall in {answer}"
                );
            }
        }
    }
    sent
}

/// Two headends as a fleet: an agent on the headend (XDP and TC on h0) and one on the
/// transit gateway (XDP on g0 and g1), both scraped by one Prometheus on the gateway.
/// One stalled cTCP flow crosses both: each reports it, under its own `instance`.
#[test]
fn dashboards_query_a_real_prometheus_after_a_stall() {
    let (lab, _headend) = lab_with_loss();
    let prom = Prometheus::start(&lab.gateway, &[GATEWAY_AGENT, HEADEND_AGENT]);
    let on_headend = Agent::start(&lab.headend, &["--iface", "h0", "--listen", "0.0.0.0:9977"]);
    let on_gateway = Agent::start(
        &lab.gateway,
        &["--iface", "g0,g1", "--no-egress", "--listen", GATEWAY_AGENT],
    );
    let both = {
        let mut v = vec![GATEWAY_AGENT.to_string(), HEADEND_AGENT.to_string()];
        v.sort();
        v
    };
    // Scraped at least once before the stall: their counters start at 0 in Prometheus.
    let up = prom.poll("up{job=\"ackwatch\"} == 1", Duration::from_secs(15), |r| {
        r.len() == 2
    });
    assert_eq!(
        instances(&up),
        both,
        "Prometheus does not scrape both agents"
    );

    ctcp(&lab, 50_400, 0);
    for agent in [&on_headend, &on_gateway] {
        let e = agent
            .next_event(Duration::from_secs(4))
            .expect("a stall_started event");
        assert_eq!(e["event"], "stall_started", "{}: {e}", agent.ns);
    }
    // Not firing yet: AckwatchFlowStalled holds a stall for 10 s, as --alert-after.
    let firing = "ALERTS{alertname=\"AckwatchFlowStalled\",alertstate=\"firing\"}";
    let early = prom.query(firing);
    assert_eq!(
        early["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "fired as soon as the stall was reported: {early}"
    );
    let alerts = prom.poll(firing, Duration::from_secs(20), |r| r.len() == 2);
    assert_eq!(instances(&alerts), both, "AckwatchFlowStalled: {alerts:?}");
    assert!(alerts.iter().all(|a| a["metric"]["class"] == "ctcp"));
    // The fleet's rules: two headends stalled, one client network on both.
    let stalled = prom.poll(
        "ackwatch:headends_stalled:count",
        Duration::from_secs(5),
        |r| r.first().is_some_and(|s| s["value"][1] == "2"),
    );
    assert_eq!(stalled[0]["value"][1], "2", "{stalled:?}");
    let net = format!("{}.0/24", CLIENT4.rsplit_once('.').unwrap().0);
    let nets = prom.query("client_net:ackwatch_stalled_flows:count");
    let nets = nets["data"]["result"].as_array().unwrap();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(nets[0]["metric"]["client_net"], net.as_str());
    assert_eq!(nets[0]["value"][1], "2", "{nets:?}");
    // Each stall rate's window holds the scrape before the stall and one after.
    let rates = prom.poll(
        "instance:ackwatch_stalls:rate5m > 0",
        Duration::from_secs(10),
        |r| r.len() == 2,
    );
    assert_eq!(instances(&rates), both);

    // The fleet dashboard, then the headend one for each headend; the headend variable
    // lists both.
    let mut sent = send_panels(&prom, "ackwatch-fleet.json", "");
    let path = deploy_dir().join("grafana/ackwatch-headend.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let var = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    let q = var["query"]["query"].as_str().unwrap();
    let (metric, label) = q
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.split_once(", "))
        .unwrap_or_else(|| panic!("variable query {q}"));
    let values = prom.get(&format!(
        "/api/v1/label/{label}/values?match[]={}",
        encode(metric)
    ));
    let mut listed: Vec<String> = serde_json::from_value(values["data"].clone()).unwrap();
    listed.sort();
    assert_eq!(listed, both, "{q}");
    for instance in &both {
        sent += send_panels(&prom, "ackwatch-headend.json", instance);
    }
    println!("{sent} dashboard queries answered");
    drop((on_headend, on_gateway));
}

/// The samples of a /metrics text: its lines that are not comments.
fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The series count of one agent is bounded: 1M flows add none, each stalled flow adds
/// one `ackwatch_stalled_flow_info` series up to --max-stalled-series (100 by default)
/// and no more. Prints the counts (README, Fleet).
#[test]
fn series_count_bounded_at_1m_flows_and_100_stalls() {
    use ackwatch_tests::live::{BpfFs, http_get};
    use ackwatch_tests::prefill;
    use ackwatch_tests::stall_lab::ctcp_from;
    const FLOWS: u32 = 1_000_000;
    const CAP: usize = 100;
    let (lab, _headend) = lab_with_loss();
    let bpffs = BpfFs::mount();
    let pin = bpffs.pin_path();
    let capacity = (FLOWS + FLOWS / 8).to_string();
    let agent = Agent::on_headend(
        &lab,
        &[
            "--max-flows",
            &capacity,
            "--pin-path",
            &pin,
            // The table's make-up comes with each whole pass, made of slices sized from
            // the last one (2,048 flows at least): after an empty pass, 1M flows take
            // 489 ticks. Short ticks count them within seconds.
            "--sweep-interval",
            "20ms",
        ],
    );
    let metrics = || {
        let (status, body) = http_get(&lab.headend, AGENT_ADDR, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    };
    let sample = |text: &str, name: &str| ackwatch_tests::observe::metric(text, name);
    let info = |text: &str| {
        series(text)
            .iter()
            .filter(|l| l.starts_with("ackwatch_stalled_flow_info{"))
            .count()
    };
    let empty = series(&metrics()).len();

    prefill::fill(&prefill::pinned_flows(&pin), 0, FLOWS);
    // The table's make-up is refreshed at the end of each pass.
    let entries = "ackwatch_flow_table_entries";
    let mut text = metrics();
    for _ in 0..150 {
        if sample(&text, entries) >= Some(FLOWS as f64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        text = metrics();
    }
    assert_eq!(
        sample(&text, entries),
        Some(FLOWS as f64),
        "the agent's table"
    );
    let full = series(&text).len();
    assert_eq!(full, empty, "1M flows added series");

    // Stalled flows: emulated cTCP clients from distinct ports, each losing its ninth
    // segment and falling silent; CAP of them, then 5 more.
    let stalled = "ackwatch_stalls_total{class=\"ctcp\"}";
    let stall = |ports: std::ops::Range<u16>| {
        for port in ports.clone() {
            ctcp_from(&lab, port, ackwatch_tests::stall_lab::ISN, 0);
        }
        let want = (ports.end - 50_000) as f64;
        let mut text = metrics();
        for _ in 0..150 {
            if sample(&text, stalled) >= Some(want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            text = metrics();
        }
        assert_eq!(sample(&text, stalled), Some(want), "stalls reported");
        text
    };
    let text = stall(50_000..50_000 + CAP as u16);
    let with_stalls = series(&text).len();
    assert_eq!(info(&text), CAP, "one info series per stalled flow");
    assert_eq!(with_stalls, full + CAP, "series other than the info ones");
    let text = stall(50_000 + CAP as u16..50_005 + CAP as u16);
    assert_eq!(info(&text), CAP, "capped at --max-stalled-series");
    assert_eq!(series(&text).len(), with_stalls);
    println!(
        "series of one agent: {empty} with an empty table, {full} with {FLOWS} flows, \
         {with_stalls} with {CAP} of them stalled, {} with {} stalled (capped); \
         /metrics {} bytes",
        series(&text).len(),
        CAP + 5,
        text.len()
    );
    drop(agent);
}

/// A stall that ends takes its `ackwatch_stalled_flow_info` series with it, even when
/// the flow was last seen on another interface than at its start (a transit gateway:
/// XDP on both sides, the duplicate ACKs on one, the retransmission on the other).
#[test]
fn a_recovered_stall_leaves_no_info_series_on_a_gateway() {
    use ackwatch_tests::live::http_get;
    use ackwatch_tests::stall_lab::ctcp_answered_after;
    let (lab, _headend) = lab_with_loss();
    let agent = Agent::start(
        &lab.gateway,
        &["--iface", "g0,g1", "--no-egress", "--listen", AGENT_ADDR],
    );
    let info = || {
        let (_, body) = http_get(&lab.gateway, AGENT_ADDR, "/metrics");
        series(&body)
            .iter()
            .filter(|l| l.starts_with("ackwatch_stalled_flow_info{"))
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    std::thread::scope(|s| {
        s.spawn(|| ctcp_answered_after(&lab, 50_500, 25));
        let e = agent
            .next_event(Duration::from_secs(4))
            .expect("stall_started");
        assert_eq!(e["event"], "stall_started", "{e}");
        let during = info();
        assert_eq!(during.len(), 1, "{during:?}");
        let e = agent
            .next_event(Duration::from_secs(6))
            .expect("stall_recovered");
        assert_eq!(e["event"], "stall_recovered", "{e}");
        println!("started on {}, recovered on {}", during[0], e["iface"]);
    });
    assert_eq!(
        info(),
        Vec::<String>::new(),
        "the recovered flow's series stays"
    );
}
