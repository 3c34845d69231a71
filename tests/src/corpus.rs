//! The shared captures (../shared/pcaps, or $ACKWATCH_PCAPS): the parity test's input and
//! the fuzzers' seed corpus.

use std::path::{Path, PathBuf};

use ackwatch::capture::{Capture, Link};
use ebpf_probe::parse::LinkKind;

pub fn pcaps_dir() -> PathBuf {
    std::env::var_os("ACKWATCH_PCAPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps"))
}

/// Every capture file under `dir`, recursively.
pub fn captures(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            captures(&p, out);
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("pcap" | "pcapng" | "trace")
        ) {
            out.push(p);
        }
    }
}

/// Up to `per_file` frames of each shared capture, with the link the probe would see
/// them on (Linux cooked captures become raw IP).
pub fn frames(per_file: usize) -> Vec<(LinkKind, Vec<u8>)> {
    let mut files = Vec::new();
    captures(&pcaps_dir(), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(mut cap) = Capture::open(&f) else {
            continue;
        };
        let mut n = 0;
        let _ = cap.for_each(|fr| {
            if n >= per_file {
                return;
            }
            let (kind, skip) = match fr.link {
                Link::Ethernet => (LinkKind::Ethernet, 0),
                Link::RawIp => (LinkKind::RawIp, 0),
                Link::Sll => (LinkKind::RawIp, 16),
                Link::Sll2 => (LinkKind::RawIp, 20),
            };
            if fr.data.len() > skip {
                out.push((kind, fr.data[skip..].to_vec()));
                n += 1;
            }
        });
    }
    out
}
