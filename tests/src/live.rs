//! Pieces of the live tests: where the probe sits, the headend's listener, waiting for
//! stall records.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ackwatch::kernel::probe::{Probe, Settings};
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

/// The headend's listeners: accept on every port given and, for each connection,
/// read it to its end (uploads) or send to it (downloads). Stops when dropped.
pub struct Headend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

/// What the headend does with each connection it accepts.
#[derive(Clone, Copy, Debug)]
enum Serve {
    /// Read to the end.
    Read,
    /// Send for this long, paced (`pace`), then close.
    SendFor(Duration),
}

impl Headend {
    /// Listeners that read each connection to its end.
    pub fn start(lab: &Lab, ports: &[u16]) -> Headend {
        Headend::serving(lab, ports, Serve::Read)
    }

    /// Listeners that send to each connection for `d`, then close it: downloads,
    /// whose data leaves the headend through its TC egress.
    pub fn start_sending(lab: &Lab, ports: &[u16], d: Duration) -> Headend {
        Headend::serving(lab, ports, Serve::SendFor(d))
    }

    fn serving(lab: &Lab, ports: &[u16], how: Serve) -> Headend {
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
                    serve(l, &stop, how)
                });
                rx.recv().expect("listener up");
                t
            })
            .collect();
        Headend { stop, threads }
    }

    /// Stops accepting; returns the bytes received (or sent).
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

fn serve(l: TcpListener, stop: &AtomicBool, how: Serve) -> u64 {
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                conns.push(std::thread::spawn(move || match how {
                    Serve::Read => {
                        let mut buf = [0u8; 65536];
                        let mut total = 0u64;
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                        total
                    }
                    Serve::SendFor(d) => {
                        pace(&s);
                        send_for(&mut s, d)
                    }
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    conns
        .into_iter()
        .filter(|r| r.is_finished())
        .map(|r| r.join().unwrap_or(0))
        .sum()
}

/// Paces a real TCP connection to 8 MB/s: unpaced bursts over veth overflow the
/// kernel's backlog queue after the probe has counted a packet, which a capture would
/// then not see.
pub fn pace(s: &std::net::TcpStream) {
    let rate: u32 = 8_000_000;
    // SAFETY: setsockopt on our socket with a u32 of the right size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            &rate as *const u32 as *const _,
            4,
        )
    };
    assert_eq!(rc, 0, "SO_MAX_PACING_RATE");
}

/// Writes to `s` for `d` (or until a write fails); returns the bytes written.
fn send_for(s: &mut std::net::TcpStream, d: Duration) -> u64 {
    let (buf, start, mut sent) = ([0x42u8; 16 * 1024], Instant::now(), 0u64);
    while start.elapsed() < d && std::io::Write::write_all(s, &buf).is_ok() {
        sent += buf.len() as u64;
    }
    sent
}

/// How much each real TCP upload sends.
#[derive(Clone, Copy, Debug)]
pub enum Amount {
    Bytes(usize),
    /// As much as it can for this long.
    For(Duration),
}

/// One of the client's real TCP connections: its address, when it was opened, the
/// bytes it carried.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub local: std::net::SocketAddr,
    pub opened: Instant,
    pub bytes: u64,
}

/// Real TCP from the client to the headend's `server` over `flows` connections at
/// once, each sending `amount`, paced (`pace`). Each returns only once the headend has
/// read everything and closed: a capture must not stop while segments are in flight.
pub fn real_tcp_uploads(
    lab: &Lab,
    server: std::net::SocketAddr,
    flows: usize,
    amount: Amount,
) -> Vec<Transfer> {
    client_connections(lab, server, flows, |c| {
        pace(c);
        let sent = match amount {
            Amount::Bytes(n) => {
                std::io::Write::write_all(c, &vec![0x42u8; n]).expect("upload");
                n as u64
            }
            Amount::For(d) => send_for(c, d),
        };
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("read to the headend's close");
        sent
    })
}

/// Real TCP downloads: `flows` connections at once to a headend that sends
/// (`Headend::start_sending`), each read to the headend's close.
pub fn real_tcp_downloads(lab: &Lab, server: std::net::SocketAddr, flows: usize) -> Vec<Transfer> {
    client_connections(lab, server, flows, |c| {
        let mut buf = [0u8; 65536];
        let mut total = 0u64;
        loop {
            match c.read(&mut buf) {
                Ok(0) => break total,
                Ok(n) => total += n as u64,
                Err(e) => panic!("download from {server}: {e}"),
            }
        }
    })
}

/// `flows` connections from the client to `server` at once, each opened then handed
/// to `transfer`, which returns the bytes it carried. Every socket call is bounded by
/// a 30 s timeout.
fn client_connections(
    lab: &Lab,
    server: std::net::SocketAddr,
    flows: usize,
    transfer: impl Fn(&mut std::net::TcpStream) -> u64 + Sync,
) -> Vec<Transfer> {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..flows)
            .map(|_| {
                s.spawn(|| {
                    enter(&lab.client);
                    let opened = Instant::now();
                    let mut c =
                        std::net::TcpStream::connect_timeout(&server, Duration::from_secs(30))
                            .expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                    let local = c.local_addr().expect("local address");
                    let bytes = transfer(&mut c);
                    Transfer {
                        local,
                        opened,
                        bytes,
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a transfer failed"))
            .collect()
    })
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
        Tcpdump::start_filtered(ns, ifname, file, "tcp")
    }

    /// As `start`, capturing what `filter` (a pcap filter) matches.
    pub fn start_filtered(
        ns: &str,
        ifname: &str,
        file: std::path::PathBuf,
        filter: &str,
    ) -> Tcpdump {
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
            .arg(filter)
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
        // SIGTERM are lost. Stop once the file has not grown for three checks in a
        // row (0.9 s), and tcpdump says it wrote every packet the kernel handed it (its
        // counts, asked for with SIGUSR1; at most 10 s): the file's size alone let CI
        // runs lose a capture's last packet (73 of 74, 147 of 148).
        let size = |f: &std::path::Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let (mut last, mut still) = (u64::MAX, 0);
        while still < 3 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = size(&self.file);
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        for _ in 0..50 {
            if self.counts().is_some_and(|c| c.all_written()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
        // A capture that missed packets cannot be compared.
        let mut stats = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut stats);
        assert!(
            Counts::parse(&stats).is_some_and(|c| c.all_written()),
            "tcpdump missed packets: {stats}"
        );
        self.file.clone()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child (ip netns exec execs into tcpdump).
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// tcpdump's counts now: SIGUSR1 makes it print them.
    fn counts(&mut self) -> Option<Counts> {
        use std::io::BufRead;
        self.signal(libc::SIGUSR1);
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.stderr.read_line(&mut line).ok()? == 0 {
                return None;
            }
            text.push_str(&line);
            if line.contains("dropped by kernel") {
                return Counts::parse(&text);
            }
        }
    }
}

/// tcpdump's own counts, as it prints them.
struct Counts {
    captured: u64,
    received: u64,
    dropped: u64,
}

impl Counts {
    /// From "N packets captured" lines at exit, or one line "tcpdump: N packets
    /// captured, N packets received by filter, ..." on SIGUSR1; the last counts given.
    fn parse(text: &str) -> Option<Counts> {
        let count = |what: &str| {
            let before = &text[..text.rfind(what)?];
            before.split_whitespace().last()?.parse::<u64>().ok()
        };
        Some(Counts {
            captured: count("packets captured")?,
            received: count("packets received by filter")?,
            dropped: count("packets dropped by kernel")?,
        })
    }

    fn all_written(&self) -> bool {
        self.dropped == 0 && self.captured == self.received
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
        ackwatch::serve::client::http_get(addr, path).expect("GET from the agent")
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
    /// The agent of the lab's headend as most tests run it: watching `h0`, serving on
    /// `AGENT_ADDR`, with `extra` arguments.
    pub fn on_headend(lab: &Lab, extra: &[&str]) -> Agent {
        let args = [&["--iface", "h0", "--listen", AGENT_ADDR][..], extra].concat();
        Agent::start(&lab.headend, &args)
    }

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
        let cmd = as_nobody_with_three_capabilities(&run);
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
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
    pub fn stop(self) -> Option<i32> {
        self.stop_with_events().0
    }

    /// SIGTERM; returns the exit code and the events it printed that were not read
    /// yet.
    pub fn stop_with_events(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        // SAFETY: signalling our own child (ip exec's into the agent).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().ok().and_then(|s| s.code());
        // Its stdout is closed: the reader ends, and with it this loop (bounded all
        // the same).
        let mut events = Vec::new();
        while let Some(e) = self.next_event(Duration::from_secs(2)) {
            events.push(e);
        }
        (code, events)
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

/// The command (capsh) that runs shell command `run` as nobody with only the three
/// capabilities the agent needs: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON.
pub fn as_nobody_with_three_capabilities(run: &str) -> Vec<String> {
    let caps = "cap_bpf,cap_net_admin,cap_perfmon";
    [
        "capsh".to_string(),
        format!("--caps={caps},cap_setpcap,cap_setuid,cap_setgid+eip"),
        "--keep=1".into(),
        "--user=nobody".into(),
        format!("--addamb={caps}"),
        "--".into(),
        "-c".into(),
        run.into(),
    ]
    .into()
}
