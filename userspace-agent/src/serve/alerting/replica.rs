//! One Alertmanager replica: its own queue, retries and backoff, so that a replica
//! down or slow delays nothing for the others. Alerts queued while a push is retried
//! go out together in the next one. Failures are counted by reason and logged at most
//! once a minute per replica.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec};
use serde_json::Value;
use tokio::sync::mpsc;

use super::client::{Client, Endpoint, Failure};

/// Batches waiting for one replica.
const QUEUE: usize = 1024;
/// Tries per push, and the wait before the second (doubled for each next one).
const TRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Replica {
    tx: mpsc::Sender<Arc<Vec<Value>>>,
    dropped: IntCounter,
    /// What `spawn` starts.
    idle: Mutex<Option<Sender>>,
}

/// The sending task's part.
struct Sender {
    client: Arc<Client>,
    endpoint: Endpoint,
    rx: mpsc::Receiver<Arc<Vec<Value>>>,
    errors: IntCounterVec,
}

impl Replica {
    pub fn new(
        client: Arc<Client>,
        endpoint: Endpoint,
        errors: IntCounterVec,
        dropped: IntCounter,
    ) -> Replica {
        let (tx, rx) = mpsc::channel(QUEUE);
        let idle = Sender {
            client,
            endpoint,
            rx,
            errors,
        };
        Replica {
            tx,
            dropped,
            idle: Mutex::new(Some(idle)),
        }
    }

    /// Starts its sending task (on the current runtime).
    pub fn spawn(&self) {
        if let Some(s) = self.idle.lock().unwrap().take() {
            tokio::spawn(run(s));
        }
    }

    /// Queues alerts for this replica; counted as dropped if its queue is full.
    pub fn send(&self, alerts: Arc<Vec<Value>>) {
        if self.tx.try_send(alerts).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(s: Sender) {
    let Sender {
        client,
        endpoint: ep,
        mut rx,
        errors,
    } = s;
    let mut last_log = None::<Instant>;
    while let Some(first) = rx.recv().await {
        let mut alerts = first.to_vec();
        while let Ok(more) = rx.try_recv() {
            alerts.extend(more.iter().cloned());
        }
        let body = Value::Array(latest_of_each(alerts)).to_string();
        if let Err(f) = post_with_retries(&client, &ep, body).await {
            errors.with_label_values(&[f.reason.label()]).inc();
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                log::warn!(
                    "Alertmanager {}: {} ({}; further failures counted in ackwatch_alertmanager_errors_total)",
                    ep,
                    f.detail,
                    f.reason.label()
                );
                last_log = Some(Instant::now());
            }
        }
    }
}

/// The last version of each alert (by labels): a resolve queued after a resend of the
/// same alert must not be followed by that resend.
fn latest_of_each(alerts: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    let mut latest: Vec<Value> = alerts
        .into_iter()
        .rev()
        .filter(|a| seen.insert(a["labels"].to_string()))
        .collect();
    latest.reverse();
    latest
}

async fn post_with_retries(client: &Client, ep: &Endpoint, body: String) -> Result<(), Failure> {
    let mut wait = FIRST_BACKOFF;
    let mut tries = 0;
    loop {
        let failure = match client.post(ep, body.clone()).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        tries += 1;
        if tries == TRIES {
            return Err(failure);
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_keeps_the_last_version_of_each_alert() {
        let a = |c: u32, v: &str| json!({"labels": {"client": c}, "v": v});
        let out = latest_of_each(vec![a(1, "fire"), a(2, "fire"), a(1, "resolve")]);
        assert_eq!(out, vec![a(2, "fire"), a(1, "resolve")]);
    }
}
