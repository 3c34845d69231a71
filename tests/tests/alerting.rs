//! The agent's pushes to real Alertmanagers: alerts that do not flap (`--alert-after`),
//! and a cluster of two replicas (every alert to each).

use std::time::{Duration, Instant};

use ackwatch_tests::Scratch;
use ackwatch_tests::alerting::{
    Replica, STORE_ONLY, Webhook, active_alerts, alertmanager, management_link, notify_config,
    received, upload_held_at_a_hole, wait_for_cluster,
};
use ackwatch_tests::lab::CLIENT4;
use ackwatch_tests::live::Agent;
use ackwatch_tests::stall_lab::{ISN, ctcp_answered_after, ctcp_from, lab_with_loss};

/// The agent's default `--alert-after`.
const ALERT_AFTER: Duration = Duration::from_secs(10);

fn ts(v: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// At the default `--alert-after`: a real TCP upload whose hole's retransmissions are
/// dropped for 1.3 s (after the agent saw them; the timer backs off ~210, 420, 840 ms)
/// sits at the hole for ~1.5 s, until the retransmission after that: it stalls and
/// recovers, events, but nothing ever reaches Alertmanager. (Held until 1.5 s, the
/// drop would end just as that retransmission leaves, and the flow would recover at
/// either ~1.5 or ~3.2 s: both under 10 s, but the test would not know which.) A cTCP
/// stall beside it reaches Alertmanager once it has lasted `--alert-after`, not before.
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
    let agent = Agent::on_headend(
        &lab,
        &[
            "--sweep-interval",
            "100ms",
            "--alertmanager-url",
            "http://127.0.0.1:9093",
        ],
    );
    let ctcp_client = format!("{CLIENT4}:50310");
    let healthy = std::thread::scope(|s| {
        s.spawn(|| ctcp_from(&lab, 50_310, ISN, 0));
        upload_held_at_a_hole(&lab, Duration::from_millis(1300)).to_string()
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

/// Two headends (two labs, an agent on each one's h0, with its own pins), joined by a
/// management link; an Alertmanager cluster of two replicas gossiping over it, one on
/// each headend, both notifying one webhook. Each agent pushes every alert to both
/// replicas: each stalled flow is notified once. With the first replica killed and its
/// address black-holed (each push to it then waits out its timeouts), a new stall still
/// reaches the survivor at once, is notified and resolves.
#[test]
fn two_replicas_notify_each_stall_once_and_the_survivor_carries_on() {
    let (lab_a, _headend_a) = lab_with_loss();
    let (lab_b, _headend_b) = lab_with_loss();
    let (ip_a, ip_b) = management_link(&lab_a, &lab_b);
    let dir = Scratch::new("am-cluster");
    let hook = Webhook::start(&lab_a.headend, format!("{ip_a}:9099").parse().unwrap());
    let config = notify_config(hook.addr);
    let (am_a, am_b) = (
        Replica {
            web: format!("{ip_a}:9093"),
            cluster: Some(format!("{ip_a}:9094")),
        },
        Replica {
            web: format!("{ip_b}:9093"),
            cluster: Some(format!("{ip_b}:9094")),
        },
    );
    let peer_b = am_b.cluster.as_deref().unwrap();
    let replica_a = alertmanager(&lab_a.headend, &dir, &am_a, &[peer_b], &config);
    let _replica_b = alertmanager(
        &lab_b.headend,
        &dir,
        &am_b,
        &[am_a.cluster.as_deref().unwrap()],
        &config,
    );
    // Each replica must see the other: one that sees only itself takes the first
    // position, and notifies at once beside the other.
    for (ns, web) in [(&lab_a.headend, &am_a.web), (&lab_b.headend, &am_b.web)] {
        assert!(
            wait_for_cluster(ns, web, 2, Duration::from_secs(15)),
            "the replicas did not form a cluster (seen from {web})"
        );
    }
    let urls = format!("http://{},http://{}", am_a.web, am_b.web);
    let start = |lab: &ackwatch_tests::lab::Lab| {
        Agent::on_headend(lab, &["--alert-after", "1s", "--alertmanager-url", &urls])
    };
    let (_agent_a, _agent_b) = (start(&lab_a), start(&lab_b));

    // A stall on each headend, both replicas up: each notified once.
    let (on_a, on_b) = (format!("{CLIENT4}:50320"), format!("{CLIENT4}:50321"));
    std::thread::scope(|s| {
        s.spawn(|| ctcp_answered_after(&lab_a, 50_320, 60));
        s.spawn(|| ctcp_answered_after(&lab_b, 50_321, 60));
        for client in [&on_a, &on_b] {
            assert!(
                hook.wait_for(client, "firing", Duration::from_secs(10)),
                "{client} not notified: {:?}",
                hook.notified(client)
            );
        }
        // Past the second replica's wait (--cluster.peer-timeout=2s) and more.
        std::thread::sleep(Duration::from_secs(4));
        for client in [&on_a, &on_b] {
            let firing = hook.notified(client);
            let firing: Vec<_> = firing.iter().filter(|(s, _)| s == "firing").collect();
            assert_eq!(firing.len(), 1, "{client} notified {firing:?}");
        }
    });
    for client in [&on_a, &on_b] {
        assert!(
            hook.wait_for(client, "resolved", Duration::from_secs(10)),
            "{client} not resolved: {:?}",
            hook.notified(client)
        );
    }

    // The first replica down, its address silent: a new stall reaches the survivor.
    drop(replica_a);
    for lab in [&lab_a, &lab_b] {
        lab.nft_rule(
            &lab.headend,
            "ackwatch_replica_down",
            "output",
            &format!("ip daddr {ip_a} tcp dport 9093 drop"),
        );
    }
    let later = format!("{CLIENT4}:50322");
    std::thread::scope(|s| {
        s.spawn(|| ctcp_answered_after(&lab_b, 50_322, 40));
        assert!(
            hook.wait_for(&later, "firing", Duration::from_secs(10)),
            "{later} not notified by the survivor"
        );
    });
    assert!(
        hook.wait_for(&later, "resolved", Duration::from_secs(10)),
        "{later} not resolved by the survivor"
    );
}
