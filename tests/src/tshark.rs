//! tshark (Debian 12: Wireshark 4.0) as the reference: its TCP analysis counts per
//! direction of each connection, for comparison with ackwatch's.

use std::collections::BTreeMap;

use ackwatch::flows::FlowReport;
use ackwatch::offline::analyze::{Analyzer, Options};
use ackwatch::offline::capture::Capture;
use ebpf_probe::decap::TunnelPorts;
use ebpf_probe::verdict::Config;
use std::path::Path;
use std::process::Command;

/// Counts in one direction, in `ackwatch::flows::Direction`'s terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub dup_acks: u64,
    pub retransmissions: u64,
    pub fast_retransmissions: u64,
    pub spurious_retransmissions: u64,
    pub out_of_order: u64,
    pub lost_segments: u64,
    pub acked_unseen: u64,
    pub zero_windows: u64,
    pub keep_alives: u64,
}

/// The analysis fields, in `Counts` order after `packets`.
const FIELDS: [&str; 9] = [
    "tcp.analysis.duplicate_ack",
    "tcp.analysis.retransmission",
    "tcp.analysis.fast_retransmission",
    "tcp.analysis.spurious_retransmission",
    "tcp.analysis.out_of_order",
    "tcp.analysis.lost_segment",
    "tcp.analysis.ack_lost_segment",
    "tcp.analysis.zero_window",
    "tcp.analysis.keep_alive",
];

pub fn version() -> String {
    let out = Command::new("tshark")
        .arg("--version")
        .output()
        .expect("tshark runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Per ("src", "dst") endpoint pair as "ip:port" ("[v6]:port"), tshark's counts.
pub fn counts(file: &Path) -> BTreeMap<(String, String), Counts> {
    counts_at(file, "f")
}

/// `counts` for a capture of tunnelled copies (a mirror port's), by the addresses of
/// the TCP segment inside: the last of each address field (the tunnel's and the
/// segment's addresses must be of one family).
pub fn inner_counts(file: &Path) -> BTreeMap<(String, String), Counts> {
    counts_at(file, "l")
}

/// `counts` with tshark's `occurrence` of repeated fields.
fn counts_at(file: &Path, occurrence: &str) -> BTreeMap<(String, String), Counts> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args([
        "-Y",
        "tcp",
        "-T",
        "fields",
        "-E",
        &format!("occurrence={occurrence}"),
    ]);
    for f in [
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
    ]
    .iter()
    .chain(FIELDS.iter())
    {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark runs");
    assert!(
        out.status.success(),
        "tshark on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 6 + FIELDS.len() || f[2].is_empty() {
            continue; // ICMP-quoted TCP and the like
        }
        let ep = |v4: &str, v6: &str, port: &str| {
            if v4.is_empty() {
                format!("[{v6}]:{port}")
            } else {
                format!("{v4}:{port}")
            }
        };
        let key = (ep(f[0], f[1], f[2]), ep(f[3], f[4], f[5]));
        let c = map.entry(key).or_default();
        c.packets += 1;
        let flags: Vec<u64> = f[6..].iter().map(|v| u64::from(!v.is_empty())).collect();
        c.dup_acks += flags[0];
        c.retransmissions += flags[1];
        c.fast_retransmissions += flags[2];
        c.spurious_retransmissions += flags[3];
        c.out_of_order += flags[4];
        c.lost_segments += flags[5];
        c.acked_unseen += flags[6];
        c.zero_windows += flags[7];
        c.keep_alives += flags[8];
    }
    map
}

/// `ackwatch analyze`'s counts for `file` per (src, dst), tracking all TCP, in the
/// same shape as tshark's.
pub fn analyze_counts(file: &Path) -> BTreeMap<(String, String), Counts> {
    analyze_counts_as(file, None)
}

/// `analyze_counts` of a mirror port's capture (`analyze --mirror`, default ports).
pub fn mirror_analyze_counts(file: &Path) -> BTreeMap<(String, String), Counts> {
    analyze_counts_as(file, TunnelPorts::new(&[], &[]))
}

fn analyze_counts_as(
    file: &Path,
    mirror: Option<TunnelPorts>,
) -> BTreeMap<(String, String), Counts> {
    let opts = Options {
        mirror,
        verdict: Config {
            track_all: true,
            ..Config::default()
        },
        ctcp_ports: vec![10_000],
        idle_timeout_ns: u64::MAX / 2,
        sweep_interval_ns: 1_000_000_000,
    };
    let mut reports: Vec<FlowReport> = Vec::new();
    let mut a = Analyzer::new(opts, |r| reports.push(r));
    let mut cap = Capture::open(file).expect("open capture");
    let read = cap.for_each(|f| a.feed(&f));
    a.finish();
    if let Err(e) = read {
        println!("  note: {e}");
    }
    let mut map: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for r in &reports {
        for d in &r.directions {
            let c = map.entry((d.src.clone(), d.dst.clone())).or_default();
            c.packets += d.packets;
            c.dup_acks += d.dup_acks as u64;
            c.retransmissions += d.retransmissions as u64;
            c.fast_retransmissions += d.fast_retransmissions as u64;
            c.spurious_retransmissions += d.spurious_retransmissions as u64;
            c.out_of_order += d.out_of_order as u64;
            c.lost_segments += d.lost_segments as u64;
            c.acked_unseen += d.acked_unseen as u64;
            c.zero_windows += d.zero_windows as u64;
            c.keep_alives += d.keep_alives as u64;
        }
    }
    map.retain(|_, c| c.packets > 0);
    map
}
