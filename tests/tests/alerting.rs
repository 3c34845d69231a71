//! The agent's pushes to real Alertmanagers: alerts that do not flap (`--alert-after`).

use std::time::{Duration, Instant};

use ackwatch_tests::Scratch;
use ackwatch_tests::alerting::{
    Replica, STORE_ONLY, active_alerts, alertmanager, received, upload_held_at_a_hole,
};
use ackwatch_tests::lab::CLIENT4;
use ackwatch_tests::live::{AGENT_ADDR, Agent};
use ackwatch_tests::stall_lab::{ISN, ctcp_from, lab_with_loss};

/// The agent's default `--alert-after`.
const ALERT_AFTER: Duration = Duration::from_secs(10);

fn ts(v: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// At the default `--alert-after`: a real TCP upload held at a hole for 1.5 s (its
/// retransmissions dropped after the agent saw them, backing off 200, 400, 800 ms)
/// stalls and recovers: events, but nothing ever reaches Alertmanager. A cTCP stall
/// beside it reaches Alertmanager once it has lasted `--alert-after`, not before.
#[test]
fn a_held_healthy_flow_never_alerts_a_ctcp_stall_alerts_after_alert_after() {
    let (lab, _headend) = lab_with_loss();
    let dir = Scratch::new("alert-after");
    let am = Replica {
        web: "127.0.0.1:9093".into(),
        cluster: None,
    };
    let _am = alertmanager(&lab.headend, &dir, &am, &[], STORE_ONLY);
    // A short sweep interval: the held flow's stall is declared (T after its last
    // answer) before its next retransmission answers it.
    let agent = Agent::start(
        &lab.headend,
        &[
            "--iface",
            "h0",
            "--listen",
            AGENT_ADDR,
            "--sweep-interval",
            "100ms",
            "--alertmanager-url",
            "http://127.0.0.1:9093",
        ],
    );
    let ctcp_client = format!("{CLIENT4}:50310");
    let healthy = std::thread::scope(|s| {
        s.spawn(|| ctcp_from(&lab, 50_310, ISN, 0));
        upload_held_at_a_hole(&lab, Duration::from_millis(1500)).to_string()
    });
    // Events as now: the held flow stalled and recovered, the cTCP flow stalled.
    let (mut events, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(5));
    while Instant::now() < deadline {
        if let Some(e) = agent.next_event(Duration::from_millis(200)) {
            println!("event: {e}");
            events.push(e);
        }
    }
    let of = |client: &str, what: &str| {
        events
            .iter()
            .filter(|e| e["client"] == client && e["event"] == what)
            .count()
    };
    assert_eq!(of(&healthy, "stall_started"), 1, "{events:?}");
    assert_eq!(of(&healthy, "stall_recovered"), 1, "{events:?}");
    assert_eq!(of(&ctcp_client, "stall_started"), 1, "{events:?}");
    let healthy_ended = Instant::now();

    // The cTCP alert: not before it has lasted --alert-after.
    let deadline = Instant::now() + ALERT_AFTER + Duration::from_secs(5);
    let alert = loop {
        if let Some(a) = active_alerts(&lab.headend, &am.web, &ctcp_client).pop() {
            break a;
        }
        assert!(Instant::now() < deadline, "no cTCP alert in Alertmanager");
        std::thread::sleep(Duration::from_millis(200));
    };
    let waited = ts(&alert["updatedAt"])
        .duration_since(ts(&alert["startsAt"]))
        .unwrap_or_default();
    assert!(
        waited + Duration::from_millis(20) >= ALERT_AFTER,
        "pushed {waited:?} after the stall started: {alert}"
    );
    // Had the held flow's alert been queued, it would be due by now; Alertmanager
    // counts every push, even one resolved at once: only the cTCP alert came.
    std::thread::sleep((healthy_ended + ALERT_AFTER).saturating_duration_since(Instant::now()));
    assert_eq!(received(&lab.headend, &am.web, "firing"), 1.0);
    assert_eq!(received(&lab.headend, &am.web, "resolved"), 0.0);
    assert!(active_alerts(&lab.headend, &am.web, &healthy).is_empty());
}
