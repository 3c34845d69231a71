//! tshark (Debian 12: Wireshark 4.0) as the reference: its TCP analysis counts per
//! direction of each connection, for comparison with ackwatch's.

use std::collections::BTreeMap;
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
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-Y", "tcp", "-T", "fields", "-E", "occurrence=f"]);
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
