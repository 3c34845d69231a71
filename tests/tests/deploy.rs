//! The deployment files: the alert and recording rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`), and hold a stall as long as the agent does
//! before alerting; the systemd unit grants only the three capabilities.

use std::path::Path;
use std::process::Command;

use ackwatch_tests::prom::deploy_dir as deploy;

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
    assert!(unit.contains("ExecStart=/usr/local/bin/ackwatch run $ACKWATCH_OPTS"));
}

/// The value after `key:` in the rule `name` of the rules file (`alert: name` or
/// `record: name`), up to the next rule.
fn rule_field(rules: &str, name: &str, key: &str) -> Option<String> {
    let start = rules.find(&format!(": {name}\n"))?;
    let rest = &rules[start + name.len() + 3..];
    let end = rest
        .find("- alert:")
        .or(rest.find("- record:"))
        .unwrap_or(rest.len());
    rest[..end].lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix(':')?;
        Some(v.trim().to_string())
    })
}

/// AckwatchFlowStalled holds a stall for the agent's --alert-after before firing, as the
/// agent does before pushing to Alertmanager (5 s, or the agent's default once it has
/// the flag).
#[test]
fn stall_alert_holds_as_long_as_the_agent() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/ackwatch-rules.yml")).unwrap();
    let hold =
        rule_field(&rules, "AckwatchFlowStalled", "for").expect("AckwatchFlowStalled has a for:");
    let help = Command::new(ackwatch_tests::ackwatch_binary())
        .args(["run", "--help"])
        .output()
        .expect("ackwatch run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let default = help
        .split("--alert-after")
        .nth(1)
        .and_then(|h| h.split("[default: ").nth(1))
        .and_then(|d| d.split(']').next())
        .unwrap_or("5s");
    let parse = |d: &str| humantime::parse_duration(d).unwrap_or_else(|e| panic!("{d}: {e}"));
    assert_eq!(
        parse(&hold),
        parse(default),
        "AckwatchFlowStalled's for: {hold}, the agent's --alert-after: {default}"
    );
}
