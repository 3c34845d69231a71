//! Pushing stalls to Alertmanager (v2 API, POST /api/v2/alerts) as `CtcpFlowStalled`.
//!
//! A stall is pushed once it has lasted `--alert-after`, counted from its hole's first
//! duplicate ACK (the alert's `startsAt`): a real TCP sender whose retransmissions are
//! lost for a while stalls and then recovers on its own, and such an episode never
//! reaches Alertmanager (events and metrics still report it at once). Firing alerts are
//! re-sent every 30 s and resolved (`endsAt`) when their episode ends. Every alert goes
//! to every Alertmanager replica (the cluster deduplicates), each through its own
//! queue (`replica`). A task of its own with a bounded queue: event handling never
//! waits for it.

mod client;
mod payload;
mod replica;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebpf_probe::abi::{FlowKey, StallRecord, StallWhat};
use prometheus::{IntCounter, IntCounterVec};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use client::{AlertmanagerArgs, Endpoint, REASONS};

use crate::flows::{monotonic_now, rfc3339};

/// How often firing alerts are sent again (Alertmanager resolves silent ones).
const RESEND: Duration = Duration::from_secs(30);
const QUEUE: usize = 4096;

/// A stall transition, as the alerting task learns it.
enum Change {
    /// The flow's stall started; its alert fires at `due`.
    Started {
        key: FlowKey,
        alert: Value,
        due: Instant,
    },
    /// Its episode ended (`alert` carries `endsAt`).
    Ended { key: FlowKey, alert: Value },
}

pub struct Alerter {
    tx: mpsc::Sender<Change>,
    alert_after: Duration,
    dropped: IntCounter,
    /// The `headend` label: this machine's host name.
    headend: String,
    /// What `spawn` starts: the replicas' senders and the receiving end.
    idle: Mutex<Option<(Vec<replica::Replica>, mpsc::Receiver<Change>)>>,
}

impl Alerter {
    /// Reads the flags' files (an error names the one that cannot be used); `errors`
    /// counts failed pushes by reason, `dropped` alerts that found a queue full.
    /// Alerts are queued from now on, and sent once `spawn` is called.
    pub fn new(
        args: &AlertmanagerArgs,
        errors: IntCounterVec,
        dropped: IntCounter,
    ) -> Result<Alerter, String> {
        let client = Arc::new(client::Client::new(args)?);
        let replicas = args
            .urls
            .iter()
            .map(|e| {
                replica::Replica::new(client.clone(), e.clone(), errors.clone(), dropped.clone())
            })
            .collect();
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Alerter {
            tx,
            alert_after: args.alert_after,
            dropped,
            headend: payload::hostname(),
            idle: Mutex::new(Some((replicas, rx))),
        })
    }

    /// Starts the alerting task and the replicas' senders (on the current runtime).
    pub fn spawn(&self) {
        if let Some((replicas, rx)) = self.idle.lock().unwrap().take() {
            for r in &replicas {
                r.spawn();
            }
            tokio::spawn(run(replicas, rx));
        }
    }

    /// Fires (once the stall has lasted `alert_after`) or resolves the alert of `r`'s
    /// flow.
    pub fn record(&self, r: &StallRecord, iface: &str, offset: u64) {
        let (key, mut alert) = (r.key, payload::alert_json(r, iface, offset, &self.headend));
        let change = if r.what == StallWhat::Started as u8 {
            let lasted = Duration::from_nanos(monotonic_now().saturating_sub(r.since));
            Change::Started {
                key,
                alert,
                due: Instant::now() + self.alert_after.saturating_sub(lasted),
            }
        } else {
            alert["endsAt"] = json!(rfc3339(r.at + offset));
            Change::Ended { key, alert }
        };
        if self.tx.try_send(change).is_err() {
            self.dropped.inc();
        }
    }
}

/// Stalls waiting for `--alert-after`, and alerts fired.
#[derive(Default)]
struct State {
    pending: HashMap<FlowKey, (Value, Instant)>,
    firing: HashMap<FlowKey, Value>,
}

impl State {
    /// Applies a change at `now`; returns the alert to send, if any.
    fn apply(&mut self, change: Change, now: Instant) -> Option<Value> {
        match change {
            Change::Started { key, alert, due } if due <= now => {
                self.firing.insert(key, alert.clone());
                Some(alert)
            }
            Change::Started { key, alert, due } => {
                self.pending.insert(key, (alert, due));
                None
            }
            Change::Ended { key, mut alert } => {
                // Ended before it was due: never sent, nothing to resolve.
                self.pending.remove(&key);
                // Resolve the alert that fired: same labels, same start.
                let fired = self.firing.remove(&key)?;
                alert["labels"] = fired["labels"].clone();
                alert["startsAt"] = fired["startsAt"].clone();
                Some(alert)
            }
        }
    }

    /// Moves the pending alerts due by `now` to firing; returns them.
    fn fire_due(&mut self, now: Instant) -> Vec<Value> {
        let due: Vec<FlowKey> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(k, _)| *k)
            .collect();
        let mut fired = Vec::new();
        for key in due {
            if let Some((alert, _)) = self.pending.remove(&key) {
                self.firing.insert(key, alert.clone());
                fired.push(alert);
            }
        }
        fired
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(_, at)| *at).min()
    }
}

async fn run(replicas: Vec<replica::Replica>, mut rx: mpsc::Receiver<Change>) {
    let mut state = State::default();
    let mut resend = tokio::time::interval(RESEND);
    loop {
        let next = state.next_due();
        let batch: Vec<Value> = tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else { return };
                state.apply(change, Instant::now()).into_iter().collect()
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                state.fire_due(Instant::now())
            }
            _ = resend.tick() => state.firing.values().cloned().collect(),
        };
        if batch.is_empty() {
            continue;
        }
        let batch = Arc::new(batch);
        for r in &replicas {
            r.send(batch.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            port: [port, 10_000],
            ..Default::default()
        }
    }

    fn started(port: u16, due: Instant) -> Change {
        Change::Started {
            key: key(port),
            alert: json!({"labels": {"client": port}, "startsAt": "t0"}),
            due,
        }
    }

    fn ended(port: u16) -> Change {
        Change::Ended {
            key: key(port),
            alert: json!({"labels": {}, "startsAt": "t1", "endsAt": "t2"}),
        }
    }

    #[test]
    fn a_stall_that_ends_before_it_is_due_is_never_sent() {
        let (mut s, now) = (State::default(), Instant::now());
        let later = now + Duration::from_secs(5);
        assert_eq!(s.apply(started(1, later), now), None);
        assert_eq!(s.next_due(), Some(later));
        assert_eq!(s.apply(ended(1), now), None);
        assert_eq!(s.next_due(), None);
        assert!(s.fire_due(later).is_empty());
    }

    #[test]
    fn a_stall_fires_when_due_and_resolves_with_its_labels() {
        let (mut s, now) = (State::default(), Instant::now());
        let later = now + Duration::from_secs(5);
        assert_eq!(s.apply(started(1, later), now), None);
        assert!(s.fire_due(now).is_empty());
        assert_eq!(s.fire_due(later).len(), 1);
        let resolved = s.apply(ended(1), later).expect("a resolve");
        assert_eq!(resolved["labels"]["client"], 1);
        assert_eq!(resolved["startsAt"], "t0");
        assert_eq!(resolved["endsAt"], "t2");
        assert!(s.firing.is_empty());
    }

    #[test]
    fn a_stall_already_old_enough_fires_at_once() {
        let (mut s, now) = (State::default(), Instant::now());
        assert!(s.apply(started(1, now), now).is_some());
        assert_eq!(s.firing.len(), 1);
    }
}
