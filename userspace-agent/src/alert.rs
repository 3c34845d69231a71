//! Pushing stalls to Alertmanager (v2 API, POST /api/v2/alerts) as `CtcpFlowStalled`:
//! fired on a stall, re-sent while it lasts, resolved (endsAt) when the episode ends.
//! A task of its own with a bounded queue: event handling never waits for it. An
//! unreachable Alertmanager is retried with backoff, logged at most once a minute and
//! counted. Plain `http://` URLs (Alertmanager on the management network).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ebpf_probe::abi::{FlowKey, StallRecord, StallWhat};
use prometheus::IntCounter;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::events::event_json;
use crate::flows::rfc3339;
use crate::report::{host, port};

/// How often firing alerts are sent again (Alertmanager resolves silent ones).
const RESEND: Duration = Duration::from_secs(30);
const QUEUE: usize = 4096;

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

pub struct Alerter {
    tx: mpsc::Sender<(FlowKey, Value, bool)>,
    dropped: IntCounter,
}

impl Alerter {
    /// Starts the sending task; `errors` counts failed pushes, `dropped` alerts that
    /// found the queue full.
    pub fn start(endpoints: Vec<Endpoint>, errors: IntCounter, dropped: IntCounter) -> Alerter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(endpoints, rx, errors));
        Alerter { tx, dropped }
    }

    /// Fires or resolves the alert of `r`'s flow.
    pub fn record(&self, r: &StallRecord, iface: &str, offset: u64) {
        let started = r.what == StallWhat::Started as u8;
        let mut alert = alert_json(r, iface, offset);
        if !started {
            alert["endsAt"] = json!(rfc3339(r.at + offset));
        }
        if self.tx.try_send((r.key, alert, started)).is_err() {
            self.dropped.inc();
        }
    }
}

fn alert_json(r: &StallRecord, iface: &str, offset: u64) -> Value {
    let e = event_json(r, iface, offset);
    let (client, server) = (
        e["client"].as_str().unwrap_or(""),
        e["server"].as_str().unwrap_or(""),
    );
    let bypass = format!(
        "access-list ctcp-bypass extended permit tcp host {} host {} eq {}\nclass-map ctcp-bypass-class\n match access-list ctcp-bypass\npolicy-map global_policy\n class ctcp-bypass-class\n  set connection advanced-options tcp-state-bypass",
        host(client),
        host(server),
        port(server)
    );
    json!({
        "labels": {
            "alertname": "CtcpFlowStalled",
            "client": client,
            "server": server,
            "class": e["class"],
            "iface": iface,
            "severity": "critical",
        },
        "annotations": {
            "summary": format!("{} flow {client} -> {server} stuck on duplicate ACKs", e["class"].as_str().unwrap_or("")),
            "description": format!(
                "hole at seq {}, {} duplicate ACKs, the {} side is stuck ({}), loss {}",
                r.hole, r.dup_acks, e["stuck_side"].as_str().unwrap_or(""), e["kind"].as_str().unwrap_or(""), e["loss"].as_str().unwrap_or("")
            ),
            "remediation": e["advice"],
            "tcp_state_bypass": bypass,
        },
        "startsAt": rfc3339(r.since + offset),
    })
}

async fn run(
    endpoints: Vec<Endpoint>,
    mut rx: mpsc::Receiver<(FlowKey, Value, bool)>,
    errors: IntCounter,
) {
    let mut firing: HashMap<FlowKey, Value> = HashMap::new();
    let mut tick = tokio::time::interval(RESEND);
    let mut last_log = None::<Instant>;
    loop {
        let batch: Vec<Value> = tokio::select! {
            msg = rx.recv() => {
                let Some((key, mut alert, started)) = msg else { return };
                if started {
                    firing.insert(key, alert.clone());
                } else if let Some(fired) = firing.remove(&key) {
                    // Resolve the alert that fired: same labels, same start.
                    alert["labels"] = fired["labels"].clone();
                    alert["startsAt"] = fired["startsAt"].clone();
                }
                vec![alert]
            }
            _ = tick.tick() => firing.values().cloned().collect(),
        };
        if batch.is_empty() {
            continue;
        }
        let body = Value::Array(batch).to_string();
        for ep in &endpoints {
            if let Err(e) = post_with_retries(ep, &body).await {
                errors.inc();
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    log::warn!(
                        "Alertmanager {}: {e} (further failures counted in ackwatch_alertmanager_errors_total)",
                        ep.authority
                    );
                    last_log = Some(Instant::now());
                }
            }
        }
    }
}

async fn post_with_retries(ep: &Endpoint, body: &str) -> Result<(), String> {
    let mut wait = Duration::from_millis(500);
    let mut last = String::new();
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), post(ep, body)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    Err(last)
}

async fn post(ep: &Endpoint, body: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(&ep.authority)
        .await
        .map_err(|e| e.to_string())?;
    let path = format!("{}/api/v2/alerts", ep.prefix.trim_end_matches('/'));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        ep.authority,
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).to_string();
    match head.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(format!(
            "answered {}",
            head.lines().next().unwrap_or("nothing")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
