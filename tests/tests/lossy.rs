//! Healthy real TCP under random loss, watched by `ackwatch run` (native XDP ingress,
//! TC egress) on the headend or on the gateway, beside one cTCP flow that stalls
//! (issue 11, items 4 and 5). In every run: no stall record with fewer than K = 3
//! duplicate ACKs, none of 0 ms or shorter than T, none started before its first
//! duplicate ACK was T old, none longer than its flow's life, no episode ended that was
//! not started (or printed before it started); the cTCP stall reported once, within
//! T + 1 s, with its hole. At 2% loss: no healthy flow stalled, in 20 runs per
//! placement. Each problem names its rule; a test prints how many runs broke each.
//! Each run builds its own lab and agent and removes them, pass or fail.

use std::time::Duration;

use ackwatch_tests::lab::Offloads;
use ackwatch_tests::lossy::{
    AgentOn, DOWNLOAD_PORT, Line, Outcome, STALLED_CTCP_PORT, Scenario, UPLOAD_PORT, run,
};

/// Runs of the 2% case per placement: 20, or `ACKWATCH_LOSSY_RUNS` (at least 1) to
/// measure a failure rate.
fn runs_at_two_percent() -> usize {
    std::env::var("ACKWATCH_LOSSY_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .max(1)
}

/// 20 healthy uploads for two seconds: short runs, so that many fit in the suite.
fn twenty_uploads_for_two_seconds(agent_on: AgentOn, loss_percent: u32) -> Scenario {
    Scenario {
        agent_on,
        loss_percent,
        uploads: 20,
        downloads: 0,
        traffic: Duration::from_secs(2),
        offloads: Offloads::Off,
        ipv6: false,
        read_metrics: false,
    }
}

/// The runs' problems: how many runs broke each rule, and every problem with its
/// event lines, for the assertion's message.
#[derive(Default)]
struct Failures {
    runs_by_rule: std::collections::BTreeMap<&'static str, usize>,
    failed_runs: usize,
    details: Vec<String>,
}

impl Failures {
    /// Prints one line for the run (and its healthy stalls and problems), keeps the
    /// problems.
    fn add(&mut self, run: &str, o: &Outcome) {
        println!(
            "{run}: {} events, {} healthy stalls, {} MB healthy, cTCP stall reported {:?} after its first duplicate ACK, {} problems",
            o.events.len(),
            o.healthy_stalls.len(),
            o.healthy_bytes / 1_000_000,
            o.ctcp_reported_after,
            o.problems.len()
        );
        for e in &o.healthy_stalls {
            println!("  healthy flow stalled: {}", Line(e));
        }
        if o.problems.is_empty() {
            return;
        }
        self.failed_runs += 1;
        let rules: std::collections::BTreeSet<&str> = o.problems.iter().map(|p| p.rule).collect();
        for r in rules {
            *self.runs_by_rule.entry(r).or_default() += 1;
        }
        for p in &o.problems {
            println!("  PROBLEM {p}");
            self.details.push(format!("{run}: {p}"));
        }
    }

    /// Prints how many of `runs` runs broke each rule; fails the test if any did.
    fn assert_none(&self, what: &str, runs: usize) {
        println!("{what}: {} of {runs} runs failed", self.failed_runs);
        for (rule, n) in &self.runs_by_rule {
            println!("  {n} runs: {rule}");
        }
        assert!(
            self.details.is_empty(),
            "{what}:\n{}",
            self.details.join("\n")
        );
    }
}

fn two_percent_loss_many_times(agent_on: AgentOn) {
    let runs = runs_at_two_percent();
    let mut failures = Failures::default();
    let start = std::time::Instant::now();
    for i in 0..runs {
        let o = run(&twenty_uploads_for_two_seconds(agent_on, 2));
        failures.add(&format!("{agent_on:?}, 2%, run {}/{runs}", i + 1), &o);
    }
    println!("{runs} runs in {:?}", start.elapsed());
    failures.assert_none(&format!("{agent_on:?}, 2% loss"), runs);
}

#[test]
fn two_percent_loss_never_stalls_a_healthy_flow_agent_on_headend() {
    two_percent_loss_many_times(AgentOn::Headend);
}

#[test]
fn two_percent_loss_never_stalls_a_healthy_flow_agent_on_gateway() {
    two_percent_loss_many_times(AgentOn::Gateway);
}

/// 1%, 5% and 10%: a healthy flow may really stall under heavy loss (its
/// retransmissions lost too), but every record stays consistent and the cTCP stall
/// is still found.
#[test]
fn one_five_and_ten_percent_loss_give_consistent_records_only() {
    let mut failures = Failures::default();
    for agent_on in [AgentOn::Headend, AgentOn::Gateway] {
        for loss in [1, 5, 10] {
            failures.add(
                &format!("{agent_on:?}, {loss}%"),
                &run(&twenty_uploads_for_two_seconds(agent_on, loss)),
            );
        }
    }
    failures.assert_none("1%, 5% and 10% loss", 6);
}

/// Offloads as on a real headend: TC egress sees super-packets (TSO from the sender,
/// GRO at the gateway). 10 uploads and 10 downloads at 2% loss, over IPv4 and, with
/// BIG TCP, IPv6 too: no healthy flow stalled, the cTCP stall found, no packet misread
/// as truncated or as a bad header length; the packet and reason counts printed.
fn with_offloads(offloads: Offloads) {
    let mut failures = Failures::default();
    let families: &[bool] = match offloads {
        Offloads::BigTcp => &[false, true],
        _ => &[false],
    };
    let mut runs = 0;
    for (agent_on, &ipv6) in [AgentOn::Headend, AgentOn::Gateway]
        .into_iter()
        .flat_map(|a| families.iter().map(move |f| (a, f)))
    {
        let o = run(&Scenario {
            uploads: 10,
            downloads: 10,
            offloads,
            ipv6,
            read_metrics: true,
            ..twenty_uploads_for_two_seconds(agent_on, 2)
        });
        runs += 1;
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        failures.add(&format!("{agent_on:?}, {offloads:?}, {family}, 2%"), &o);
        let metrics = o.metrics.as_deref().unwrap_or_default();
        for line in metrics.lines().filter(|l| {
            (l.starts_with("ackwatch_untracked_packets_total") && !l.ends_with(" 0"))
                || l.starts_with("ackwatch_packets_total")
        }) {
            println!("  {line}");
        }
        print_data_packet_sizes(agent_on, o.flows.as_ref());
    }
    failures.assert_none(&format!("{offloads:?}"), runs);
}

/// What the probe counted as one data packet, on average, for the uploads and the
/// downloads: about the MSS (1,448) for wire segments, more for super-packets.
fn print_data_packet_sizes(agent_on: AgentOn, flows: Option<&serde_json::Value>) {
    let hooks = match agent_on {
        AgentOn::Headend => ["XDP", "TC"],
        AgentOn::Gateway => ["TC", "XDP"],
    };
    // Data flows client to server (direction 0) in uploads, back (1) in downloads.
    for (port, direction, what, hook) in [
        (UPLOAD_PORT, 0, "uploads", hooks[0]),
        (DOWNLOAD_PORT, 1, "downloads", hooks[1]),
    ] {
        let server_port = format!(":{port}");
        let (mut packets, mut bytes) = (0, 0);
        for f in flows.and_then(|f| f.as_array()).into_iter().flatten() {
            if f["server"]
                .as_str()
                .is_some_and(|s| s.ends_with(&server_port))
                && !f["client"]
                    .as_str()
                    .is_some_and(|c| c.ends_with(&format!(":{STALLED_CTCP_PORT}")))
            {
                let d = &f["directions"][direction];
                packets += d["packets"].as_u64().unwrap_or(0);
                bytes += d["bytes"].as_u64().unwrap_or(0);
            }
        }
        println!(
            "  {what}' data ({hook}): {packets} packets, {bytes} bytes, {} bytes per packet",
            bytes.checked_div(packets).unwrap_or(0)
        );
    }
}

#[test]
fn offloads_at_kernel_defaults_uploads_and_downloads() {
    with_offloads(Offloads::KernelDefaults);
}

#[test]
fn gro_forced_on_at_the_gateway_uploads_and_downloads() {
    with_offloads(Offloads::GroAtGateway);
}

/// BIG TCP: the sender's and the gateway's super-packets exceed 64 KB (IPv4 total
/// length 0, IPv6 jumbograms); read at the packet's length, never as malformed.
#[test]
fn big_tcp_super_packets_uploads_and_downloads() {
    with_offloads(Offloads::BigTcp);
}
