//! `cargo xtask bench`: what the probe costs per packet (test runs, and live in the
//! lab), what the agent costs with large flow tables, and offline analysis against
//! tshark, measured in one run and reported as ratios where the machine's noise would
//! otherwise dominate. Writes bench/results.json, appends to bench/history.jsonl,
//! refreshes the README's numbers and bench/probe-cost.svg.
//!
//! `ackwatch-bench [packets]`; `--quick` runs small sizes (a smoke run, no targets);
//! `--probe` only the probe's figures at 0 flows; `--sweep` only the sweep's whole pass;
//! `--analyze` only offline analysis (throughput and memory); `--live` only the live
//! figures.

mod agent_cost;
mod analyze_cost;
mod live_cost;
mod probe_cost;
mod report;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let packets: usize = if quick {
        20_000
    } else {
        args.iter()
            .find_map(|a| a.parse().ok())
            .unwrap_or(1_000_000)
    };
    let sizes: &[u32] = if quick {
        &[0, 1_000]
    } else {
        &[0, 100_000, 1_000_000]
    };
    let agent_sizes: &[u32] = if quick {
        &[1_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let mut figures = Vec::new();
    if args.iter().any(|a| a == "--sweep") {
        // The sweep's whole pass at 10k and 1M flows alone.
        agent_cost::full_pass(&[10_000, 1_000_000], &mut figures);
        report::print(&figures);
        return;
    }
    if args.iter().any(|a| a == "--analyze") {
        analyze_cost::run(packets, &mut figures);
        report::print(&figures);
        return;
    }
    if args.iter().any(|a| a == "--live") {
        live_cost::run(&mut figures);
        report::print(&figures);
        return;
    }
    if args.iter().any(|a| a == "--probe") {
        // The probe's figures at 0 flows alone: a minute, for measuring a change.
        probe_cost::run(&[0], &mut figures);
        report::print(&figures);
        return;
    }
    probe_cost::run(sizes, &mut figures);
    live_cost::run(&mut figures);
    agent_cost::run(agent_sizes, &mut figures);
    analyze_cost::run(packets, &mut figures);
    if quick {
        report::print(&figures);
    } else {
        report::write(&figures);
    }
}
