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

/// Wall time in seconds and peak RSS in KiB of a command, output discarded. The RSS is
/// GNU time's (`%M`): a child of this process would report at least this process's own
/// RSS (the kernel keeps the larger of the peaks before and after exec), which the
/// benchmarks before this one (a mapped million-flow table) make hundreds of MB.
fn measure(dir: &Scratch, cmd: &[&std::ffi::OsStr]) -> (f64, u64) {
    let rss_file = dir.join("rss");
    let t = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .args(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run /usr/bin/time (Debian package time)");
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "{cmd:?} failed");
    let rss = std::fs::read_to_string(&rss_file).expect("time's output");
    (secs, rss.trim().parse().expect("time's %M"))
}

pub fn run(packets: usize, figures: &mut Vec<Figure>) {
    let dir = Scratch::new("bench");
    let ackwatch = ackwatch_tests::ackwatch_binary();
    let big = dir.join("big.pcap");
    capture(&big, packets, 200);
    let analyze = |file: &Path| {
        let args = ["analyze", "--json", "--track", "all"].map(std::ffi::OsStr::new);
        let mut cmd = vec![ackwatch.as_os_str()];
        cmd.extend(args);
        cmd.push(file.as_os_str());
        measure(&dir, &cmd)
    };
    let (a_secs, a_rss) = analyze(&big);
    let tshark = ["tshark", "-q", "-z", "conv,tcp", "-r"].map(std::ffi::OsStr::new);
    let (t_secs, _) = measure(&dir, &[&tshark[..], &[big.as_os_str()]].concat());
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
