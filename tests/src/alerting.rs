//! Pieces of the alerting tests: real Alertmanagers (one, or a gossiping cluster) and a
//! real Prometheus in a lab namespace, a webhook receiver that records the
//! notifications, and a real TCP upload held at a hole for a while.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Scratch;
use crate::lab::{HEADEND4, Lab, enter, in_ns, sh};
use crate::live::{Service, http_get, pace};

/// One Alertmanager replica: its web address and, in a cluster, its gossip address.
pub struct Replica {
    pub web: String,
    pub cluster: Option<String>,
}

/// Starts Alertmanager `r` in `ns` with `config` (YAML), its state under `dir`; in a
/// cluster, peered with `peers` (gossip addresses).
pub fn alertmanager(ns: &str, dir: &Scratch, r: &Replica, peers: &[&str], config: &str) -> Service {
    alertmanager_flags(ns, dir, r, peers, config, &[])
}

/// `alertmanager` with `extra` flags.
pub fn alertmanager_flags(
    ns: &str,
    dir: &Scratch,
    r: &Replica,
    peers: &[&str],
    config: &str,
    extra: &[String],
) -> Service {
    let name = r.web.replace([':', '.'], "_");
    let file = dir.join(&format!("{name}.yml"));
    std::fs::write(&file, config).unwrap();
    let mut args = vec![
        format!("--config.file={}", file.display()),
        format!("--storage.path={}", dir.join(&name).display()),
        format!("--web.listen-address={}", r.web),
        format!(
            "--cluster.listen-address={}",
            r.cluster.as_deref().unwrap_or("")
        ),
    ];
    if r.cluster.is_some() {
        // The advertised address must be one the peers reach; a short peer timeout
        // keeps the second replica's wait before notifying short.
        args.extend([
            format!(
                "--cluster.advertise-address={}",
                r.cluster.as_deref().unwrap()
            ),
            "--cluster.peer-timeout=2s".into(),
            "--cluster.gossip-interval=100ms".into(),
            "--cluster.pushpull-interval=2s".into(),
        ]);
        args.extend(peers.iter().map(|p| format!("--cluster.peer={p}")));
    }
    args.extend_from_slice(extra);
    Service::start(ns, "prometheus-alertmanager", &args, &r.web)
}

/// A real Prometheus in `ns` on 127.0.0.1:9090 with `config` (YAML), its data under
/// `dir`.
pub fn prometheus(ns: &str, dir: &Scratch, config: &str) -> Service {
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let args = [
        format!("--config.file={}", file.display()),
        format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
        "--web.listen-address=127.0.0.1:9090".into(),
    ];
    Service::start(ns, "prometheus", &args, "127.0.0.1:9090")
}

/// A route with no receiver: alerts are only stored.
pub const STORE_ONLY: &str = "route:\n  receiver: none\nreceivers:\n  - name: none\n";

/// A route that notifies `webhook` of each flow's alert at once, once.
pub fn notify_config(webhook: SocketAddr) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: [client, server]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{webhook}/\n        send_resolved: true\n"
    )
}

/// Alerts Alertmanager at `addr` received, by status ("firing" or "resolved"),
/// from its own counter: every push is counted, even one resolved at once.
pub fn received(ns: &str, addr: &str, status: &str) -> f64 {
    let (_, text) = http_get(ns, addr, "/metrics");
    let prefix = "alertmanager_alerts_received_total{";
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&format!("status=\"{status}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Alertmanager's active `CtcpFlowStalled` alerts for `client`.
pub fn active_alerts(ns: &str, addr: &str, client: &str) -> Vec<Value> {
    let (_, body) = http_get(ns, addr, "/api/v2/alerts");
    let all: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    all.as_array()
        .into_iter()
        .flatten()
        .filter(|a| {
            a["labels"]["alertname"] == "CtcpFlowStalled" && a["labels"]["client"] == client
        })
        .cloned()
        .collect()
}

/// A webhook receiver in a lab namespace: records each notification's JSON body.
/// Stops when dropped.
pub struct Webhook {
    pub addr: SocketAddr,
    pub notifications: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Webhook {
    pub fn start(ns: &str, addr: SocketAddr) -> Webhook {
        let stop = Arc::new(AtomicBool::new(false));
        let notifications: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (ns, s, n) = (ns.to_string(), stop.clone(), Arc::clone(&notifications));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&ns);
            let l = TcpListener::bind(addr).expect("webhook listen");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        if let Some(body) = read_post(c) {
                            n.lock().unwrap().push(body);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        rx.recv().expect("webhook up");
        Webhook {
            addr,
            notifications,
            stop,
        }
    }

    /// (status, alert) of every alert notified so far for `client`.
    pub fn notified(&self, client: &str) -> Vec<(String, Value)> {
        let all = self.notifications.lock().unwrap().clone();
        all.iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["labels"]["client"] == client)
            .map(|a| (a["status"].as_str().unwrap_or("").to_string(), a))
            .collect()
    }

    /// Waits up to `d` for a notification of `client` with `status`.
    pub fn wait_for(&self, client: &str, status: &str, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if self.notified(client).iter().any(|(s, _)| s == status) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one HTTP request (a POST with Content-Length) and answers 200; its JSON body.
fn read_post(mut c: std::net::TcpStream) -> Option<Value> {
    c.set_nonblocking(false).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(c.try_clone().ok()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&body).ok()
}

/// The healthy upload's bytes that the headend's input drops while held.
const MARK: u8 = 0x55;

/// A real Linux TCP upload from the client to the headend's port 10000 (a headend
/// reading it must listen there), held at a hole: the headend's input drops every
/// segment whose payload starts with 4 KB of marked bytes in the middle of the data
/// (after the agent on h0 saw it), the first sending and every retransmission, until
/// `held` after they were written; then the flow recovers on its own. Returns the
/// client's address.
pub fn upload_held_at_a_hole(lab: &Lab, held: Duration) -> SocketAddr {
    // The client kernel's ports only: the emulated cTCP client is left alone.
    lab.nft_rule(
        &lab.headend,
        "ackwatch_held",
        "input",
        &format!("tcp sport 20000-40000 tcp dport 10000 @ih,0,32 0x{MARK:02x}{MARK:02x}{MARK:02x}{MARK:02x} drop"),
    );
    let server: SocketAddr = format!("{HEADEND4}:10000").parse().unwrap();
    in_ns(&lab.client, || {
        let mut c = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(10))
            .expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        pace(&c);
        let local = c.local_addr().unwrap();
        c.write_all(&[0x42; 256 * 1024]).expect("upload");
        std::thread::scope(|s| {
            // The hold ends on its own clock: the writes below can block on a full
            // send buffer until the hole is answered, which only this ends.
            s.spawn(|| {
                std::thread::sleep(held);
                sh(&format!(
                    "ip netns exec {} nft delete table inet ackwatch_held",
                    lab.headend
                ));
            });
            c.write_all(&[MARK; 4 * 1024]).expect("upload");
            // Data after the hole: the headend's duplicate ACKs.
            c.write_all(&[0x42; 256 * 1024]).expect("upload");
        });
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("read to the headend's close");
        local
    })
}

/// Joins the headends of two labs with a veth pair `m0` (a management network):
/// 10.78.0.1 in `a`'s, 10.78.0.2 in `b`'s. Removed with their namespaces.
pub fn management_link(a: &Lab, b: &Lab) -> (&'static str, &'static str) {
    let (ha, hb) = (&a.headend, &b.headend);
    sh(&format!(
        "ip link add m0 netns {ha} type veth peer name m0 netns {hb}"
    ));
    for (ns, addr) in [(ha, "10.78.0.1/24"), (hb, "10.78.0.2/24")] {
        sh(&format!("ip -n {ns} addr add {addr} dev m0"));
        sh(&format!("ip -n {ns} link set m0 up"));
    }
    ("10.78.0.1", "10.78.0.2")
}

/// Waits up to `d` until Alertmanager at `addr` sees `n` cluster members.
pub fn wait_for_cluster(ns: &str, addr: &str, n: usize, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        let (_, body) = http_get(ns, addr, "/api/v2/status");
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status["cluster"]["peers"].as_array().map(Vec::len) == Some(n) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
