//! A real Prometheus in a lab namespace, scraping the agent every second with the
//! shipped rules loaded, and its HTTP query API.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::lab::in_ns;
use crate::live::Service;

/// Where the tests' Prometheus listens, inside the lab namespace.
pub const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

/// The repository's deploy/ folder.
pub fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Prometheus in `ns` scraping agents (job `ackwatch`) every second and evaluating
/// deploy/prometheus/ackwatch-rules.yml every second; killed (and its storage removed)
/// when dropped.
pub struct Prometheus {
    pub ns: String,
    _service: Service,
    _dir: crate::Scratch,
}

impl Prometheus {
    /// Scraping the agents at `targets`, as seen from `ns`.
    pub fn start(ns: &str, targets: &[&str]) -> Prometheus {
        let dir = crate::Scratch::new("prometheus");
        let rules = deploy_dir().join("prometheus/ackwatch-rules.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.join("prom.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: ackwatch\n    static_configs:\n      - targets: [{}]\n",
                rules.display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let path = |f: &str| dir.join(f).display().to_string();
        let service = Service::start(
            ns,
            "prometheus",
            &[
                format!("--config.file={}", path("prom.yml")),
                format!("--storage.tsdb.path={}", path("data")),
                format!("--web.listen-address={PROMETHEUS_ADDR}"),
            ],
            PROMETHEUS_ADDR,
        );
        Prometheus {
            ns: ns.to_string(),
            _service: service,
            _dir: dir,
        }
    }

    /// `GET path` (HTTP/1.0: no chunked answer); the JSON body, whatever the status.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let body = in_ns(&self.ns, || {
            let mut s = std::net::TcpStream::connect(PROMETHEUS_ADDR).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).expect("Prometheus's answer");
            resp.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default()
        });
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// An instant query: Prometheus's whole answer (`status`, `data` or `error`).
    pub fn query(&self, promql: &str) -> serde_json::Value {
        self.get(&format!("/api/v1/query?query={}", encode(promql)))
    }

    /// A range query over the last `span`, one point a second.
    pub fn query_range(&self, promql: &str, span: Duration) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.get(&format!(
            "/api/v1/query_range?query={}&start={}&end={now}&step=1",
            encode(promql),
            now - span.as_secs()
        ))
    }

    /// The result of `promql` once `done` holds for it, or the last one after `d`.
    pub fn poll(
        &self,
        promql: &str,
        d: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + d;
        loop {
            let r = self.query(promql);
            let result = r["data"]["result"].as_array().cloned().unwrap_or_default();
            if done(&result) || Instant::now() > deadline {
                return result;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Percent-encoding of a query parameter (everything but RFC 3986's unreserved bytes).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
