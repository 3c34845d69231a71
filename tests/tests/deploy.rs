//! The deployment files: the alert rules pass `promtool check rules` and their unit
//! tests (`promtool test rules`); the systemd unit grants only the three capabilities.

use std::path::Path;
use std::process::Command;

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_check_and_pass_their_tests() {
    let dir = deploy().join("prometheus");
    promtool(&["check", "rules", "ackwatch-rules.yml"], &dir);
    promtool(&["test", "rules", "ackwatch-rules.test.yml"], &dir);
}

#[test]
fn systemd_unit_grants_only_three_capabilities() {
    let unit = std::fs::read_to_string(deploy().join("ackwatch.service")).unwrap();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let line = unit
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key}"));
        let mut caps: Vec<&str> = line.split_once('=').unwrap().1.split_whitespace().collect();
        caps.sort();
        assert_eq!(caps, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"], "{line}");
    }
    assert!(unit.contains("ExecStart=/usr/local/bin/ackwatch run"));
}
