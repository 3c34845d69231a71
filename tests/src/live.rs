//! Pieces of the live tests: where the probe sits, the headend's listener, waiting for
//! stall records.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ackwatch::probe::{Probe, Settings};
use aya::programs::xdp::XdpMode;
use ebpf_probe::abi::{StallRecord, StallWhat};

use crate::lab::{Lab, enter, in_ns};

/// Where the probe is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// XDP ingress and TC egress on the headend's interface.
    Headend,
    /// XDP on both interfaces of the transit gateway.
    Gateway,
}

pub fn attach(lab: &Lab, settings: &Settings, placement: Placement) -> Probe {
    let mut probe = Probe::load(settings).expect("load the probe");
    match placement {
        Placement::Headend => in_ns(&lab.headend, || {
            probe
                .attach_ingress("h0", XdpMode::Default, None)
                .expect("attach XDP to h0");
            probe.attach_egress("h0", None).expect("attach TC to h0");
        }),
        Placement::Gateway => in_ns(&lab.gateway, || {
            probe
                .attach_ingress("g0", XdpMode::Default, None)
                .expect("attach XDP to g0");
            probe
                .attach_ingress("g1", XdpMode::Default, None)
                .expect("attach XDP to g1");
        }),
    }
    probe
}

/// The headend's listeners: accept on every port given, read each connection to its
/// end, count the bytes. Stops when dropped.
pub struct Headend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Headend {
    pub fn start(lab: &Lab, ports: &[u16]) -> Headend {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let (ns, stop) = (lab.headend.clone(), stop.clone());
                let (tx, rx) = std::sync::mpsc::channel();
                let t = std::thread::spawn(move || {
                    enter(&ns);
                    let l = TcpListener::bind(("::", port)).expect("listen");
                    l.set_nonblocking(true).unwrap();
                    tx.send(()).unwrap();
                    serve(l, &stop)
                });
                rx.recv().expect("listener up");
                t
            })
            .collect();
        Headend { stop, threads }
    }

    /// Stops accepting; returns the bytes received.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap_or(0)).sum()
    }
}

impl Drop for Headend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(l: TcpListener, stop: &AtomicBool) -> u64 {
    let mut readers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                readers.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    let mut total = 0u64;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    total
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    readers
        .into_iter()
        .filter(|r| r.is_finished())
        .map(|r| r.join().unwrap_or(0))
        .sum()
}

/// Collects stall transitions (not candidate records) from the probe for `d`.
pub fn records_for(probe: &mut Probe, d: Duration) -> Vec<StallRecord> {
    let (deadline, mut out) = (Instant::now() + d, Vec::new());
    while Instant::now() < deadline {
        out.extend(probe.drain_events().expect("ring buffer"));
        std::thread::sleep(Duration::from_millis(20));
    }
    out.extend(probe.drain_events().expect("ring buffer"));
    out.retain(|r| r.what != StallWhat::Candidate as u8);
    out
}

/// tcpdump on an interface of a lab namespace, for the tshark comparison.
pub struct Tcpdump {
    child: std::process::Child,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    pub file: std::path::PathBuf,
}

impl Tcpdump {
    pub fn start(ns: &str, ifname: &str, file: std::path::PathBuf) -> Tcpdump {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "--immediate-mode",
                "-B",
                "65536",
                "-i",
                ifname,
                "-U",
                "-s",
                "256",
                "-w",
            ])
            .arg(&file)
            .arg("tcp")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump");
        // Wait for "listening on ...": packets before it would be missed.
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).expect("tcpdump output");
        assert!(line.contains("listening"), "tcpdump: {line}");
        Tcpdump {
            child,
            stderr: err,
            file,
        }
    }

    /// Stops the capture and returns its file.
    pub fn finish(mut self) -> std::path::PathBuf {
        // tcpdump may lag behind the traffic; packets still in its socket buffer at
        // SIGTERM are lost uncounted. Stop once the file has stopped growing.
        let size = |f: &std::path::Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let mut last = u64::MAX;
        while size(&self.file) != last {
            last = size(&self.file);
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // A capture that missed packets cannot be compared.
        let mut stats = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut stats);
        let dropped = stats
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .unwrap_or("");
        let count = |what: &str| {
            let line = stats.lines().find(|l| l.contains(what))?;
            line.split(' ').next()?.parse::<u64>().ok()
        };
        let (captured, received) = (count("captured"), count("received by filter"));
        assert!(
            dropped.starts_with("0 ") && captured == received,
            "tcpdump missed packets: {stats}"
        );
        self.file.clone()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The capture of a live run through `ackwatch analyze`: on the capture's one clock,
/// every count equals tshark's, the retransmission / out-of-order split included.
/// Returns the directions compared.
pub fn compare_analyze_with_tshark(capture: &std::path::Path) -> usize {
    let (want, got) = (
        crate::tshark::counts(capture),
        crate::tshark::analyze_counts(capture),
    );
    assert_eq!(
        got,
        want,
        "ackwatch analyze against tshark on {}",
        capture.display()
    );
    want.len()
}

/// Per direction of every flow the probe holds, its packet, duplicate-ACK, lost-segment
/// and resent-segment counts against tshark's on `capture`; returns the directions
/// compared. Resent segments are retransmissions plus out-of-order ones: which of the
/// two a segment is depends on a window of one initial RTT (microseconds on veth) that
/// the probe measures at XDP/TC time and tshark at capture time, so only the sum can be
/// held equal live; offline, on one clock, the split matches too (tests/parity.rs).
pub fn compare_with_tshark(probe: &Probe, capture: &std::path::Path) -> usize {
    use ebpf_probe::abi::event;
    let want = crate::tshark::counts(capture);
    let mut compared = 0;
    for (key, flow) in probe.flows().expect("flows") {
        for i in 0..2 {
            let (src, dst) = (
                ackwatch::flows::endpoint(&key, i),
                ackwatch::flows::endpoint(&key, i ^ 1),
            );
            let h = &flow.half[i];
            let w = want
                .get(&(src.to_string(), dst.to_string()))
                .cloned()
                .unwrap_or_default();
            let resent = (h.events[event::RETRANSMISSION] + h.events[event::OUT_OF_ORDER]) as u64;
            let got = (
                h.packets,
                h.events[event::DUP_ACK] as u64,
                h.events[event::LOST_SEGMENT] as u64,
                resent,
            );
            assert_eq!(
                got,
                (
                    w.packets,
                    w.dup_acks,
                    w.lost_segments,
                    w.retransmissions + w.out_of_order
                ),
                "{src} -> {dst}: (packets, duplicate ACKs, lost segments, retransmissions + out-of-order) \
                 ackwatch vs tshark {}; the probe's counters: {:?}",
                crate::tshark::version(),
                probe.counters()
            );
            if h.events[event::RETRANSMISSION] as u64 != w.retransmissions {
                println!(
                    "{src} -> {dst}: retransmissions {} / out-of-order {} here, {} / {} in tshark (timing split)",
                    h.events[event::RETRANSMISSION],
                    h.events[event::OUT_OF_ORDER],
                    w.retransmissions,
                    w.out_of_order
                );
            }
            compared += 1;
        }
    }
    compared
}

/// `GET path` from inside namespace `ns`: (status, body).
pub fn http_get(ns: &str, addr: &str, path: &str) -> (u16, String) {
    in_ns(ns, || {
        ackwatch::client::http_get(addr, path).expect("GET from the agent")
    })
}

/// A BPF filesystem mounted on a scratch folder, for an agent's pins; unmounted when
/// dropped. (A process started by `ip netns exec` does not see /sys/fs/bpf.)
pub struct BpfFs {
    dir: crate::Scratch,
}

impl BpfFs {
    pub fn mount() -> BpfFs {
        let dir = crate::Scratch::new("bpffs");
        let path = dir.0.display().to_string();
        crate::lab::sh(&format!("mount -t bpf -o mode=0777 bpf {path}"));
        BpfFs { dir }
    }

    /// The agent's --pin-path.
    pub fn pin_path(&self) -> String {
        self.dir.join("ackwatch").display().to_string()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.dir.0)
            .status();
    }
}

/// The `ackwatch run` daemon, started in a lab namespace; killed when dropped.
pub struct Agent {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Its stderr lines so far.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub ns: String,
    /// Its own BPF filesystem, when the caller gave no --pin-path.
    _bpffs: Option<BpfFs>,
    /// The copy of the binary it runs, when it runs as nobody.
    _binary: Option<crate::Scratch>,
}

pub const AGENT_ADDR: &str = "127.0.0.1:9977";

impl Agent {
    pub fn start(ns: &str, args: &[&str]) -> Agent {
        let bin = crate::ackwatch_binary().display().to_string();
        let bpffs = (!args.contains(&"--pin-path")).then(BpfFs::mount);
        let pin = bpffs.as_ref().map(BpfFs::pin_path).unwrap_or_default();
        let mut cmd = vec![bin.as_str(), "run"];
        cmd.extend_from_slice(args);
        if bpffs.is_some() {
            cmd.extend_from_slice(&["--pin-path", &pin]);
        }
        let mut agent = Agent::start_command(ns, &cmd);
        agent._bpffs = bpffs;
        agent
    }

    /// As `start`, as user nobody with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON
    /// (capsh), as the systemd unit runs it.
    pub fn start_with_three_capabilities(ns: &str, args: &[&str]) -> Agent {
        let bpffs = BpfFs::mount();
        let (copy, bin) = crate::ackwatch_binary_for_nobody();
        let run = format!(
            "exec {} run {} --pin-path {}",
            bin.display(),
            args.join(" "),
            bpffs.pin_path()
        );
        let caps = "cap_bpf,cap_net_admin,cap_perfmon";
        let cmd = [
            "capsh",
            &format!("--caps={caps},cap_setpcap,cap_setuid,cap_setgid+eip"),
            "--keep=1",
            "--user=nobody",
            &format!("--addamb={caps}"),
            "--",
            "-c",
            &run,
        ];
        let mut agent = Agent::start_command(ns, &cmd);
        agent._bpffs = Some(bpffs);
        agent._binary = Some(copy);
        agent
    }

    fn start_command(ns: &str, cmd: &[&str]) -> Agent {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start ackwatch run");
        // Events from stdout; logs from stderr, echoed to the test's stderr and kept.
        let (tx, lines) = std::sync::mpsc::channel();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (err, kept) = (
            std::io::BufReader::new(child.stderr.take().unwrap()),
            logs.clone(),
        );
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                eprintln!("{l}");
                kept.lock().unwrap().push(l);
            }
        });
        let agent = Agent {
            child,
            lines,
            logs,
            ns: ns.to_string(),
            _bpffs: None,
            _binary: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = in_ns(ns, || std::net::TcpStream::connect(AGENT_ADDR).is_ok());
            if up {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the agent did not come up");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next JSON event line within `d`.
    pub fn next_event(&self, d: Duration) -> Option<serde_json::Value> {
        let line = self.lines.recv_timeout(d).ok()?;
        Some(
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON event: {line}: {e}")),
        )
    }

    /// SIGTERM; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        // SAFETY: signalling our own child (ip exec's into the agent).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().ok()?.code()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server program (Prometheus, Alertmanager) run in a lab namespace; killed when
/// dropped.
pub struct Service {
    child: std::process::Child,
}

impl Service {
    /// Starts `program args` in `ns` and waits until `addr` accepts connections.
    pub fn start(ns: &str, program: &str, args: &[String], addr: &str) -> Service {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        // Owned first: a panic below still kills it.
        let service = Service { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if in_ns(ns, || std::net::TcpStream::connect(addr).is_ok()) {
                return service;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{program} did not come up on {addr}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET path` in `ns` until `done` holds for the JSON body, for up to `d`.
pub fn poll_json(
    ns: &str,
    addr: &str,
    path: &str,
    d: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + d;
    loop {
        let (_, body) = http_get(ns, addr, path);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
