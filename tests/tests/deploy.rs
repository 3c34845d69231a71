//! The deployment files: the alert and recording rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`), and hold a stall as long as the agent does
//! before alerting; the dashboards are well-formed; the systemd unit grants only the
//! three capabilities.

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
    promtool(&["check", "config", "prometheus-fleet.example.yml"], &dir);
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
/// agent does before pushing to Alertmanager (its default, from its help).
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
    let (_, rest) = help
        .split_once("--alert-after")
        .expect("ackwatch run has --alert-after");
    // Its own paragraph: up to the next flag.
    let end = [rest.find("\n  -"), rest.find("\n      --")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    let default = rest[..end]
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next())
        .unwrap_or_else(|| panic!("--alert-after has no default: {}", &rest[..end]));
    let parse = |d: &str| humantime::parse_duration(d).unwrap_or_else(|e| panic!("{d}: {e}"));
    assert_eq!(
        parse(&hold),
        parse(default),
        "AckwatchFlowStalled's for: {hold}, the agent's --alert-after: {default}"
    );
}

/// The Grafana dashboards: valid JSON, unique uids and panel ids, panels on the 24-column
/// grid, every panel and query on the `datasource` variable, links to a shipped
/// dashboard. (tests/fleet.rs sends every query to a real Prometheus.)
#[test]
fn dashboards_are_well_formed() {
    let dir = deploy().join("grafana");
    let mut uids = Vec::new();
    let mut links = Vec::new();
    for file in ["ackwatch-fleet.json", "ackwatch-headend.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).expect(file);
        uids.push(d["uid"].as_str().expect("uid").to_string());
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["name"] == "datasource" && v["query"] == "prometheus"),
            "{file}: no datasource variable"
        );
        let mut ids = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            ids.push(p["id"].as_u64().expect("panel id"));
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(x + w <= 24 && w > 0, "{file}: {} off the grid", p["title"]);
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{file}: {}",
                p["title"]
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {} has no query", p["title"]);
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}");
                assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
            }
            for l in p["fieldConfig"]["defaults"]["links"]
                .as_array()
                .into_iter()
                .flatten()
            {
                links.push(l["url"].as_str().unwrap().to_string());
            }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{file}: panel ids repeat");
    }
    assert!(!links.is_empty());
    for url in links {
        let uid = url.strip_prefix("/d/").and_then(|u| u.split('/').next());
        assert!(
            uid.is_some_and(|u| uids.iter().any(|x| x == u)),
            "a link to no shipped dashboard: {url}"
        );
    }
}
