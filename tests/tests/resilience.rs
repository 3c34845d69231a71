//! The agent under load and churn, in the lab: the HTTP side under 10,000 requests with
//! malformed, oversized and slow clients while stall events stream; and 20 restarts in a
//! row under traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ackwatch_tests::lab::{HEADEND4, in_ns};
use ackwatch_tests::live::{AGENT_ADDR, Agent, BpfFs, http_get};
use ackwatch_tests::observe::{metric, open_fds, rss_kib};
use ackwatch_tests::stall_lab::{ctcp, lab_with_loss};

const REQUESTS: u64 = 10_000;
const LOAD_THREADS: u64 = 8;
const SLOW_CLIENTS: usize = 200;

/// Sends `raw` as is; the status code of the answer (0 if none).
fn raw_status(raw: &[u8]) -> u16 {
    let mut s = TcpStream::connect(AGENT_ADDR).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(raw); // the server may answer and close before all of it
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn stall_events(agent: &Agent, within: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while let Some(e) = agent.next_event(deadline.saturating_duration_since(Instant::now())) {
        out.push(e);
    }
    out
}

#[test]
fn http_under_load_with_bad_and_slow_clients() {
    let (lab, _headend) = lab_with_loss();
    let agent = Agent::start(&lab.headend, &["--iface", "h0", "--listen", AGENT_ADDR]);
    let rss_before = rss_kib(agent.pid());
    let ns = lab.headend.clone();
    // Slow clients: half a request each, then silence.
    let slow_started = Instant::now();
    let slow: Vec<TcpStream> = in_ns(&ns, || {
        (0..SLOW_CLIENTS)
            .map(|_| {
                let mut c = TcpStream::connect(AGENT_ADDR).unwrap();
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: a").unwrap();
                c
            })
            .collect()
    });
    let (ok, worst_us) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        // Three stalls, one after another, while the load runs: events stream.
        s.spawn(|| {
            for port in [50_500, 50_501, 50_502] {
                ctcp(&lab, port, 12);
            }
        });
        for t in 0..LOAD_THREADS {
            let (ns, ok, worst) = (&ns, &ok, &worst_us);
            s.spawn(move || {
                in_ns(ns, || {
                    for i in 0..REQUESTS / LOAD_THREADS {
                        let path = ["/metrics", "/flows", "/healthz", "/flows?state=stalled"]
                            [((i + t) % 4) as usize];
                        let started = Instant::now();
                        let (status, _) =
                            ackwatch::serve::client::http_get(AGENT_ADDR, path).unwrap();
                        worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        if status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            });
        }
    });
    let ok = ok.into_inner();
    println!(
        "{ok} of {REQUESTS} requests answered 200, the slowest in {} ms, with {SLOW_CLIENTS} slow clients connected",
        worst_us.into_inner() / 1000
    );
    assert_eq!(ok, REQUESTS);
    let events = stall_events(&agent, Duration::from_secs(2));
    let started = events
        .iter()
        .filter(|e| e["event"] == "stall_started")
        .count();
    assert_eq!(
        started, 3,
        "every stall reported during the load: {events:?}"
    );

    // Bad requests get a 4xx and a closed connection, never a stalled agent.
    let big_header = [
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: ".as_slice(),
        &vec![b'a'; 1 << 20],
        b"\r\n\r\n",
    ]
    .concat();
    let long_uri = format!(
        "GET /flows?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a=b&".repeat(100_000)
    );
    let cases: [(&str, &[u8]); 9] = [
        ("not HTTP", b"GARBAGE\r\n\r\n"),
        ("a 1 MB header", &big_header),
        ("a 400 kB URI", long_uri.as_bytes()),
        (
            "limit not a number",
            b"GET /flows?limit=abc HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "limit too large",
            b"GET /flows?limit=100000000 HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "unknown state",
            b"GET /flows?state=bogus HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "unknown class",
            b"GET /flows?class=bogus HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        ("unknown path", b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"),
        (
            "wrong method",
            b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let status = in_ns(&ns, || raw_status(raw));
        println!("{what}: {status}");
        assert!(
            (400..500).contains(&status),
            "{what}: got {status}, want a 4xx"
        );
    }
    // The slow clients are still connected, and the agent still answers at once.
    let t = Instant::now();
    assert_eq!(http_get(&ns, AGENT_ADDR, "/healthz").0, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "/healthz took {:?}",
        t.elapsed()
    );
    // ... until the header timeout (10 s) closes them.
    let deadline = slow_started + Duration::from_secs(12);
    for mut c in slow {
        let wait = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(wait.max(Duration::from_millis(100))))
            .unwrap();
        // Closed: end of stream (or a 408); still open: the read times out.
        let closed = c.read(&mut [0u8; 256]).is_ok();
        assert!(
            closed,
            "a slow client still connected after {:?}",
            slow_started.elapsed()
        );
    }
    // Past the connection cap (256), new connections are closed at once and counted.
    let idle: Vec<TcpStream> = in_ns(&ns, || {
        (0..300)
            .map(|_| TcpStream::connect(AGENT_ADDR).unwrap())
            .collect()
    });
    std::thread::sleep(Duration::from_millis(500));
    let refused = idle
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!((&**c).read(&mut b), Ok(0))
        })
        .count();
    assert!(
        refused >= 300 - 256,
        "{refused} of 300 idle connections closed"
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    let (_, body) = http_get(&ns, AGENT_ADDR, "/metrics");
    let counted = metric(&body, "ackwatch_http_connections_refused_total");
    assert!(
        counted.is_some_and(|n| n > 0.0),
        "refusals counted: {counted:?}"
    );
    let rss_after = rss_kib(agent.pid());
    println!("RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
}

/// Our probe's programs and links in the kernel, by name.
fn probe_objects() -> (usize, usize) {
    let count = |what: &str| {
        let out = std::process::Command::new("bpftool")
            .args([what, "list", "-j"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let names: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(|o| o.to_string()).collect())
            .unwrap_or_default();
        names.iter().filter(|o| o.contains("ackwatch_")).count()
    };
    (count("prog"), count("link"))
}

#[test]
fn twenty_restarts_under_traffic() {
    let (lab, _headend) = lab_with_loss();
    let before = probe_objects();
    let bpffs = BpfFs::mount();
    let pin = bpffs.pin_path();
    let args = [
        "--iface",
        "h0",
        "--listen",
        AGENT_ADDR,
        "--pin-path",
        pin.as_str(),
        "--keep-attached",
    ];
    let mut started = 0;
    let mut fds = Vec::new();
    std::thread::scope(|s| {
        // A stall that stays open for the whole series (the client keeps sending
        // for 45 s and never retransmits; an agent takes about a second to load and
        // verify its programs), and healthy traffic beside it.
        s.spawn(|| ctcp(&lab, 50_600, 450));
        s.spawn(|| {
            in_ns(&lab.client, || {
                let server = format!("{HEADEND4}:10000");
                for _ in 0..40 {
                    let mut c = TcpStream::connect(&server).expect("connect");
                    c.write_all(&[7u8; 64 * 1024]).unwrap();
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        });
        let mut agent = Agent::start(&lab.headend, &args);
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(700));
            fds.push(open_fds(agent.pid()));
            started += stall_events(&agent, Duration::from_millis(1))
                .iter()
                .filter(|e| e["event"] == "stall_started")
                .count();
            // Alternate a crash (SIGKILL) and an upgrade-style stop (SIGTERM with
            // --keep-attached): both leave the probe attached and its state pinned.
            if i % 2 == 0 {
                drop(agent);
            } else {
                assert_eq!(agent.stop(), Some(0));
            }
            agent = Agent::start(&lab.headend, &args);
        }
        started += stall_events(&agent, Duration::from_millis(1500))
            .iter()
            .filter(|e| e["event"] == "stall_started")
            .count();
        // The last one detaches and unpins: run without --keep-attached's effect.
        drop(agent);
        let last = Agent::start(&lab.headend, &args[..6]);
        assert_eq!(last.stop(), Some(0));
    });
    println!("open descriptors per agent: {fds:?}");
    assert_eq!(started, 1, "one stall, reported once across 20 restarts");
    assert!(
        fds.iter().max().unwrap() - fds.iter().min().unwrap() <= 2,
        "descriptors differ between runs: {fds:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&pin).unwrap().collect();
    assert!(left.is_empty(), "pins left: {left:?}");
    assert_eq!(
        probe_objects(),
        before,
        "programs or links left in the kernel"
    );
}
