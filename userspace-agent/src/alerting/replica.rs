//! One Alertmanager replica: its own queue, retries and backoff, so that a replica
//! down or slow delays nothing for the others. Alerts queued while a push is retried
//! go out together in the next one. Failures are counted by reason and logged at most
//! once a minute per replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Batches waiting for one replica.
const QUEUE: usize = 1024;
/// Tries per push, the wait before the second (doubled for each next one), and how
/// long one try may take.
const TRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const TRY_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a push failed: the `reason` label of `ackwatch_alertmanager_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Connect,
    Auth,
    HttpStatus,
    Timeout,
}

pub const REASONS: [&str; 4] = ["connect", "auth", "http_status", "timeout"];

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Connect => REASONS[0],
            Reason::Auth => REASONS[1],
            Reason::HttpStatus => REASONS[2],
            Reason::Timeout => REASONS[3],
        }
    }
}

struct Failure {
    reason: Reason,
    detail: String,
}

/// An Alertmanager endpoint: host:port and path prefix, from an `http://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub authority: String,
    pub prefix: String,
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// Alertmanager URLs are supported"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint {
            authority,
            prefix: format!("/{}", path.trim_end_matches('/')).replace("//", "/"),
        })
    }
}

pub struct Replica {
    tx: mpsc::Sender<Arc<Vec<Value>>>,
    dropped: IntCounter,
}

impl Replica {
    pub fn start(endpoint: Endpoint, errors: IntCounterVec, dropped: IntCounter) -> Replica {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(endpoint, rx, errors));
        Replica { tx, dropped }
    }

    /// Queues alerts for this replica; counted as dropped if its queue is full.
    pub fn send(&self, alerts: Arc<Vec<Value>>) {
        if self.tx.try_send(alerts).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(ep: Endpoint, mut rx: mpsc::Receiver<Arc<Vec<Value>>>, errors: IntCounterVec) {
    let mut last_log = None::<Instant>;
    while let Some(first) = rx.recv().await {
        let mut alerts = first.to_vec();
        while let Ok(more) = rx.try_recv() {
            alerts.extend(more.iter().cloned());
        }
        let body = Value::Array(latest_of_each(alerts)).to_string();
        if let Err(f) = post_with_retries(&ep, &body).await {
            errors.with_label_values(&[f.reason.label()]).inc();
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                log::warn!(
                    "Alertmanager {}: {} ({}; further failures counted in ackwatch_alertmanager_errors_total)",
                    ep.authority,
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

async fn post_with_retries(ep: &Endpoint, body: &str) -> Result<(), Failure> {
    let mut wait = FIRST_BACKOFF;
    let mut tries = 0;
    loop {
        let failure = match tokio::time::timeout(TRY_TIMEOUT, post(ep, body)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(f)) => f,
            Err(_) => Failure {
                reason: Reason::Timeout,
                detail: format!("no answer within {TRY_TIMEOUT:?}"),
            },
        };
        tries += 1;
        if tries == TRIES {
            return Err(failure);
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

async fn post(ep: &Endpoint, body: &str) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure {
        reason: Reason::Connect,
        detail: e.to_string(),
    };
    let mut s = tokio::net::TcpStream::connect(&ep.authority)
        .await
        .map_err(io)?;
    let path = format!("{}/api/v2/alerts", ep.prefix.trim_end_matches('/'));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        ep.authority,
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(io)?;
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).to_string();
    let status = head.lines().next().unwrap_or("nothing").to_string();
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some("401" | "403") => Err(Failure {
            reason: Reason::Auth,
            detail: format!("answered {status}"),
        }),
        _ => Err(Failure {
            reason: Reason::HttpStatus,
            detail: format!("answered {status}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_from_urls() {
        let e: Endpoint = "http://127.0.0.1:9093".parse().unwrap();
        assert_eq!(
            e,
            Endpoint {
                authority: "127.0.0.1:9093".into(),
                prefix: "/".into()
            }
        );
        let e: Endpoint = "http://am.example/prefix/".parse().unwrap();
        assert_eq!(
            e,
            Endpoint {
                authority: "am.example:80".into(),
                prefix: "/prefix".into()
            }
        );
        assert!("https://am:9093".parse::<Endpoint>().is_err());
        assert!("http://".parse::<Endpoint>().is_err());
    }

    #[test]
    fn a_batch_keeps_the_last_version_of_each_alert() {
        let a = |c: u32, v: &str| json!({"labels": {"client": c}, "v": v});
        let out = latest_of_each(vec![a(1, "fire"), a(2, "fire"), a(1, "resolve")]);
        assert_eq!(out, vec![a(2, "fire"), a(1, "resolve")]);
    }
}
