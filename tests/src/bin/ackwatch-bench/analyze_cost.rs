//! Offline analysis against tshark on the same generated captures: throughput, and
//! memory that follows live flows, not the file's size.

use std::io::BufWriter;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use ackwatch_tests::Scratch;
use ackwatch_tests::conversation::Generator;
use ackwatch_tests::pcap::{LINKTYPE_ETHERNET, PcapWriter};

use crate::report::Figure;

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

pub fn run(packets: usize, figures: &mut Vec<Figure>) {
    let dir = Scratch::new("bench");
    let ackwatch = ackwatch_tests::ackwatch_binary();
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
}
