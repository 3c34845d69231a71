//! `cargo xtask bench`: throughput and memory of `ackwatch analyze` against tshark on
//! the same generated captures, measured in one run and reported as ratios (these
//! machines are noisy). Writes bench/results.json and appends to bench/history.jsonl.

use std::io::BufWriter;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use ackwatch_tests::Scratch;
use ackwatch_tests::conversation::Generator;
use ackwatch_tests::pcap::{LINKTYPE_ETHERNET, PcapWriter};

struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    target: Option<f64>,
}

/// Writes a capture of `packets` generated packets over at most `live` connections.
fn capture(path: &Path, packets: usize, live: usize) {
    let mut w = PcapWriter::new(
        BufWriter::new(std::fs::File::create(path).unwrap()),
        LINKTYPE_ETHERNET,
    )
    .unwrap();
    let mut g = Generator::new(42);
    let mut done = 0;
    while done < packets {
        let chunk = g.steps(100_000.min(packets - done), live);
        for s in &chunk {
            w.write(1_795_766_400_000_000_000 + s.at_ns, &s.frame)
                .unwrap();
        }
        done += chunk.len();
    }
}

/// Wall time in seconds and peak RSS in KiB of a command, output discarded.
// The child is reaped by wait4, which also gives its own rusage.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command) -> (f64, u64) {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    // wait4, not getrusage(RUSAGE_CHILDREN): the peak RSS of this child alone.
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let secs = t.elapsed().as_secs_f64();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (secs, ru.ru_maxrss as u64)
}

fn main() {
    let packets: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = Scratch::new("bench");
    let ackwatch = ackwatch_tests::ackwatch_binary();
    let mut figures = Vec::new();
    probe_cost(&mut figures);

    let big = dir.join("big.pcap");
    capture(&big, packets, 200);
    let analyze = |file: &Path| {
        measure(
            Command::new(&ackwatch)
                .args(["analyze", "--json", "--track", "all"])
                .arg(file),
        )
    };
    let (a_secs, a_rss) = analyze(&big);
    let (t_secs, _) = measure(
        Command::new("tshark")
            .arg("-q")
            .args(["-z", "conv,tcp", "-r"])
            .arg(&big),
    );
    let (a_pps, t_pps) = (packets as f64 / a_secs, packets as f64 / t_secs);
    println!(
        "analyze: {packets} packets, 200 live flows: ackwatch {a_secs:.2} s ({a_pps:.0} pkt/s), tshark -z conv,tcp {t_secs:.2} s ({t_pps:.0} pkt/s)"
    );
    println!(
        "analyze: ackwatch / tshark throughput = {:.1}x (target >= 10x)",
        a_pps / t_pps
    );
    figures.push(Figure {
        name: "analyze_packets_per_second".into(),
        value: a_pps,
        unit: "packets/s",
        target: None,
    });
    figures.push(Figure {
        name: "tshark_conv_tcp_packets_per_second".into(),
        value: t_pps,
        unit: "packets/s",
        target: None,
    });
    figures.push(Figure {
        name: "analyze_speed_vs_tshark".into(),
        value: a_pps / t_pps,
        unit: "ratio",
        target: Some(10.0),
    });

    // Memory follows live flows, not file size: a capture three times longer, same
    // number of live flows.
    let long = dir.join("long.pcap");
    capture(&long, packets * 3, 200);
    let (_, l_rss) = analyze(&long);
    println!(
        "analyze: peak RSS {a_rss} KiB for {packets} packets, {l_rss} KiB for {} packets",
        packets * 3
    );
    figures.push(Figure {
        name: "analyze_rss_1x".into(),
        value: a_rss as f64,
        unit: "KiB",
        target: None,
    });
    figures.push(Figure {
        name: "analyze_rss_3x_over_1x".into(),
        value: l_rss as f64 / a_rss as f64,
        unit: "ratio",
        target: Some(1.5),
    });

    write_results(&figures);
}

/// Runs of BPF_PROG_TEST_RUN per figure.
const REPEAT: u32 = 1_000_000;

/// Nanoseconds per packet the probe's XDP program adds over an XDP_PASS program measured
/// in the same run, on the same CPU, for each kind of packet. BPF_PROG_TEST_RUN repeats
/// one packet, so a tracked packet after the first finds its flow: the hot path.
fn probe_cost(figures: &mut Vec<Figure>) {
    use std::net::SocketAddr;

    use ackwatch::probe::{Probe, Settings};
    use ackwatch_tests::frames::{L2, TH_ACK, TH_PSH, Tcp, ctcp_payload, frame};

    // SAFETY: pinning this thread to CPU 0; a zeroed cpu_set_t is valid.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
    let seg = |src: &str, dst: &str, flags: u8, len: usize| {
        let payload = if len > 24 {
            ctcp_payload(len)
        } else {
            vec![0; len]
        };
        frame(
            addr(src),
            addr(dst),
            &Tcp {
                seq: 1000,
                ack: 2000,
                flags,
                window: 500,
                payload,
                ..Default::default()
            },
            &L2::Ethernet,
        )
    };
    let mut arp = seg("10.0.0.1:40000", "10.0.0.2:10000", TH_ACK, 0);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let cases: [(&str, Vec<u8>); 6] = [
        ("non_ip", arp),
        (
            "tcp_out_of_scope",
            seg("10.0.0.1:40000", "10.0.0.2:5201", TH_ACK | TH_PSH, 1000),
        ),
        (
            "ipv4_data_tracked",
            seg("10.0.0.1:40000", "10.0.0.2:10000", TH_ACK | TH_PSH, 1000),
        ),
        (
            "ipv6_data_tracked",
            seg("[fd00::1]:40000", "[fd00::2]:10000", TH_ACK | TH_PSH, 1000),
        ),
        (
            "duplicate_ack",
            seg("10.0.0.2:10000", "10.0.0.1:40001", TH_ACK, 0),
        ),
        (
            "table_full_refused",
            seg("10.0.0.9:40009", "10.0.0.2:10000", TH_ACK | TH_PSH, 1000),
        ),
    ];
    let mut probe = Probe::load(&Settings {
        max_flows: 16,
        ..Settings::default()
    })
    .expect("load the probe");
    // Fill the table (16 flows) so the last case is refused.
    for i in 0..16 {
        let f = seg(&format!("10.0.1.{i}:40000"), "10.0.0.2:10000", TH_ACK, 0);
        probe.xdp_run_time("ackwatch_xdp", &f, 1).expect("fill");
    }
    let pass = probe
        .xdp_run_time("ackwatch_pass", &cases[0].1, REPEAT)
        .expect("XDP_PASS baseline")
        .as_nanos() as f64;
    println!(
        "probe: XDP_PASS baseline {pass:.1} ns per run (BPF_PROG_TEST_RUN, {REPEAT} runs, CPU 0)"
    );
    for (name, f) in &cases {
        let ns = probe
            .xdp_run_time("ackwatch_xdp", f, REPEAT)
            .expect("test run")
            .as_nanos() as f64;
        let added = ns - pass;
        println!(
            "probe: {name:<20} {ns:7.1} ns per run, {added:6.1} ns over XDP_PASS ({:.2}x)",
            ns / pass
        );
        figures.push(Figure {
            name: format!("probe_added_ns_{name}"),
            value: added,
            unit: "ns/packet",
            target: None,
        });
    }
}

fn write_results(figures: &[Figure]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
    std::fs::create_dir_all(&root).unwrap();
    let list: Vec<serde_json::Value> = figures
        .iter()
        .map(|f| serde_json::json!({"name": f.name, "value": f.value, "unit": f.unit, "target": f.target}))
        .collect();
    std::fs::write(
        root.join("results.json"),
        serde_json::to_string_pretty(&list).unwrap() + "\n",
    )
    .unwrap();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let line = serde_json::json!({"commit": commit, "results": list});
    use std::io::Write;
    let mut h = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("history.jsonl"))
        .unwrap();
    writeln!(h, "{line}").unwrap();
    println!("wrote bench/results.json");
}
