//! What ackwatch's kernel and integration tests share: frame builders, a harness
//! around the loaded probe, and generators of TCP conversations.

pub mod alerting;
pub mod conversation;
pub mod corpus;
pub mod ctcp;
pub mod encap;
pub mod frames;
pub mod harness;
pub mod invariants;
pub mod lab;
pub mod live;
pub mod lossy;
pub mod mirror_lab;
pub mod observe;
pub mod occupancy;
pub mod pcap;
pub mod prefill;
pub mod prom;
pub mod scenario;
pub mod stall_lab;
pub mod tls_lab;
pub mod tshark;

/// The `ackwatch` binary of this build (target/<profile>/ackwatch), which
/// `cargo xtask test` builds before the tests.
pub fn ackwatch_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("own binary path");
    // Tests live in target/<profile>/deps, binaries in target/<profile>.
    let mut dir = exe.parent().expect("target/<profile>").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("ackwatch");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ackwatch` first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A copy of the `ackwatch` binary that user nobody can run (the checkout may sit in a
/// folder only root can enter), in a scratch folder that holds it.
pub fn ackwatch_binary_for_nobody() -> (Scratch, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("nobody");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))
        .expect("chmod scratch");
    let bin = dir.join("ackwatch");
    std::fs::copy(ackwatch_binary(), &bin).expect("copy ackwatch");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod ackwatch");
    (dir, bin)
}

/// A scratch folder removed when dropped, pass or fail.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("ackwatch-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create scratch folder");
        Scratch(d)
    }

    pub fn join(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
