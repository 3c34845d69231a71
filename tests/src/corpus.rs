//! The public captures in tests/captures (or $ACKWATCH_PCAPS): the parity test's input and
//! the fuzzers' seed corpus. tests/captures/README.md says where they come from.

use std::path::{Path, PathBuf};

use ackwatch::offline::capture::{Capture, Link};
use ebpf_probe::parse::LinkKind;

/// `$ACKWATCH_PCAPS`, else tests/captures.
pub fn pcaps_dir() -> PathBuf {
    std::env::var_os("ACKWATCH_PCAPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("captures"))
}

/// Every capture file under `pcaps_dir()`, recursively, sorted. Panics when the folder
/// is missing or holds none: a test that reads the captures never passes without them.
pub fn files() -> Vec<PathBuf> {
    let dir = pcaps_dir();
    let mut out = Vec::new();
    if let Err(e) = captures(&dir, &mut out) {
        missing(&dir, &e.to_string());
    }
    if out.is_empty() {
        missing(&dir, "no .pcap, .pcapng or .trace file in it");
    }
    out.sort();
    out
}

fn missing(dir: &Path, why: &str) -> ! {
    panic!(
        "the test captures are missing: {}: {why}. They are part of the repository \
         (tests/captures, see its README.md); ACKWATCH_PCAPS may name another folder",
        dir.display()
    )
}

fn captures(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            captures(&p, out)?;
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("pcap" | "pcapng" | "trace")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// Up to `per_file` frames of each capture, with the link the probe would see
/// them on (Linux cooked captures become raw IP).
pub fn frames(per_file: usize) -> Vec<(LinkKind, Vec<u8>)> {
    let mut out = Vec::new();
    for f in files() {
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
