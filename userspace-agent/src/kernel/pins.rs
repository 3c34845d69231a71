//! Pinning the probe under `--pin-path`, so that a restart or an upgrade of the agent
//! finds it still attached, with its flow table: no gap in watching, no second alert
//! for an episode already reported.
//!
//! Everything lives in a folder named after the map layout and the load-time settings
//! (`v<ABI>-<sizes>-k<K>-t<T>-<scope>-m<max flows>-p<max pending>-r<ring>`, and on mirror ports
//! `-x<drop|pass>-v<VXLAN ports>-g<GENEVE ports>`): pins of another layout or other
//! settings belong to an older ackwatch, or another configuration, and are discarded
//! (their links unpinned, which detaches their programs) rather than misread.

use std::fs;
use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;
use ebpf_probe::abi::{Flow, FlowKey, StallRecord};

use crate::kernel::probe::Settings;

/// Maps that carry state across restarts.
pub const PINNED_MAPS: [&str; 13] = [
    "BUCKETS",
    "FLOWS",
    "FILL",
    "OCCUPIED",
    "SEED",
    "PENDING_BUCKETS",
    "PENDING_SLOTS",
    "PENDING_FILL",
    "PENDING_OCCUPIED",
    "PORTS",
    "COUNTERS",
    "EVENTS",
    "AYA_LOGS",
];

/// Bumped whenever the meaning of a map's bytes changes without a size change, or the
/// set of maps changes (4: the pending table moved from an LRU hash map to arrays, and
/// the flow's fields that the sweep reads moved to its front; 5: each table has an
/// occupancy bitmap, which pins of 4 lack: reused, their flows would be invisible to
/// the walk; 6: the pending table's buckets carry their ways' ages, 128 bytes each).
const ABI: u32 = 6;

pub struct Pins {
    pub dir: PathBuf,
    /// An exclusive lock on the pin root, held while the agent runs: two agents must
    /// not share one table (each would report every stall).
    _lock: fs::File,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{0} is not on a BPF filesystem: mount it with `mount -t bpf bpf {0}`, or choose another --pin-path"
    )]
    NotBpffs(String),
    #[error("another ackwatch is running with --pin-path {0}")]
    Busy(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The folder name for `settings`.
pub fn layout(s: &Settings) -> String {
    let scope = if s.verdict.track_all { "all" } else { "ctcp" };
    // The mirror program's settings are globals of the attached program (no dots:
    // bpffs refuses them in names).
    let mirror = match s.mirror {
        Some(m) => {
            let list = |ports: &[u16]| {
                let ports = ports.iter().filter(|p| **p != 0).map(u16::to_string);
                ports.collect::<Vec<_>>().join("_")
            };
            let action = if m.drop { "drop" } else { "pass" };
            let (vxlan, geneve) = (list(&m.ports.vxlan), list(&m.ports.geneve));
            format!("-x{action}-v{vxlan}-g{geneve}")
        }
        None => String::new(),
    };
    format!(
        "v{ABI}-{}-{}-{}-c{}-k{}-t{}-{scope}-m{}-p{}-r{}{mirror}",
        size_of::<Flow>(),
        size_of::<FlowKey>(),
        size_of::<StallRecord>(),
        ebpf_probe::abi::counter::ENTRIES,
        s.verdict.dupack_threshold,
        s.verdict.stall_timeout_ns,
        s.max_flows,
        s.max_pending,
        s.event_ring_bytes
    )
}

fn on_bpffs(dir: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

impl Pins {
    /// Makes `root/<layout>`, discarding the pins of any other layout under `root`.
    pub fn prepare(root: &Path, settings: &Settings) -> Result<Pins, PinError> {
        let parent = root
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/"));
        let on_fs = if root.exists() {
            on_bpffs(root)
        } else {
            on_bpffs(parent)
        };
        if !on_fs {
            return Err(PinError::NotBpffs(
                if root.exists() { root } else { parent }
                    .display()
                    .to_string(),
            ));
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| PinError::Io(p, e)
        };
        fs::create_dir_all(root).map_err(io(root))?;
        let lock = fs::File::open(root).map_err(io(root))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(PinError::Busy(root.display().to_string()));
        }
        let name = layout(settings);
        for entry in fs::read_dir(root).map_err(io(root))? {
            let path = entry.map_err(io(root))?.path();
            if path.file_name().is_some_and(|n| n != name.as_str()) && path.is_dir() {
                log::warn!(
                    "discarding {}: pinned by an ackwatch with another map layout or settings",
                    path.display()
                );
                remove(&path);
            }
        }
        let dir = root.join(&name);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Pins { dir, _lock: lock })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn link(&self, hook: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("link-{hook}-{ifname}"))
    }

    /// Unpins everything: the links (which detaches the programs) and the maps.
    pub fn remove(&self) {
        remove(&self.dir);
    }
}

/// Removes a pin folder: links are unpinned first (detaching their programs).
fn remove(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let is_link = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link-"));
        if is_link && let Ok(link) = PinnedLink::from_pin(&path) {
            let _ = link.unpin();
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    let _ = fs::remove_dir(dir);
}
