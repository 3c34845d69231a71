//! The agent with a large flow table: its sweep (from its own
//! ackwatch_sweep_duration_seconds), /metrics and /flows response times at several
//! table sizes, and its RSS and CPU while steady with the largest.

use std::time::{Duration, Instant};

use ackwatch::flows::monotonic_now;
use ackwatch::kernel::probe::{Probe, Settings};
use ackwatch_tests::lab::{Lab, in_ns};
use ackwatch_tests::live::{AGENT_ADDR, Agent, BpfFs};
use ackwatch_tests::observe::{self, cpu_seconds, rss_kib};
use ackwatch_tests::prefill;

use crate::probe_cost::size_name;
use crate::report::Figure;

/// Requests timed per endpoint and size (the median is reported).
const REQUESTS: usize = 21;
const STEADY: Duration = Duration::from_secs(10);

/// Median wall time of GET `path`, in milliseconds, and the last body's length.
fn timed_get(ns: &str, path: &str) -> (f64, usize) {
    in_ns(ns, || {
        let mut times = Vec::new();
        let mut len = 0;
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let (status, body) = ackwatch::serve::client::http_get(AGENT_ADDR, path).expect("GET");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "GET {path}: {body}");
            len = body.len();
        }
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], len)
    })
}

fn metric(ns: &str, name: &str) -> f64 {
    let (_, body) = in_ns(ns, || {
        ackwatch::serve::client::http_get(AGENT_ADDR, "/metrics").unwrap()
    });
    observe::metric(&body, name).unwrap_or(f64::NAN)
}

/// A whole pass over the table, as the sweep would make if it read it all at once.
pub fn full_pass(sizes: &[u32], figures: &mut Vec<Figure>) {
    let largest = *sizes.iter().max().unwrap();
    let probe = Probe::load(&Settings {
        max_flows: largest + largest / 8,
        ..Settings::default()
    })
    .expect("load the probe");
    let cfg = ebpf_probe::verdict::Config::default();
    let mut written = 0;
    let flow = prefill::flow(monotonic_now());
    for &n in sizes {
        for i in written..n {
            assert!(probe.table().insert(&prefill::key(i), &flow), "fill");
        }
        written = n;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let (_, pass) = ackwatch::kernel::sweep::sweep(&probe, &cfg, u64::MAX, monotonic_now());
            assert_eq!(pass.entries, n as usize);
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        let per_flow = best * 1e6 / n as f64;
        println!(
            "sweep, a whole pass over {n} flows: {best:.1} ms ({per_flow:.0} ns a flow, through the mapped table)"
        );
        let target = match n {
            10_000 => Some(2.0),
            1_000_000 => Some(50.0),
            _ => None,
        };
        figures.push(Figure {
            name: format!("sweep_full_pass_ms_{}", size_name(n)),
            value: best,
            unit: "ms",
            target,
        });
    }
}

pub fn run(sizes: &[u32], figures: &mut Vec<Figure>) {
    full_pass(sizes, figures);
    let largest = *sizes.iter().max().unwrap();
    let lab = Lab::new();
    let fs = BpfFs::mount();
    let capacity = (largest + largest / 8).max(16).to_string();
    let pin = fs.pin_path();
    let agent = Agent::start(
        &lab.headend,
        &[
            "--iface",
            "h0",
            "--max-flows",
            &capacity,
            "--sweep-interval",
            "1s",
            "--pin-path",
            &pin,
        ],
    );
    let ns = lab.headend.clone();
    let flows = prefill::pinned_flows(&pin);
    let mut written = 0;
    for &n in sizes {
        prefill::fill(&flows, written, n);
        written = n;
        // The agent's own figure for its ticks (a slice of the table and the
        // candidates): the longest of five.
        let mut tick_ms: f64 = 0.0;
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(1000));
            tick_ms = tick_ms.max(metric(&ns, "ackwatch_sweep_duration_seconds") * 1000.0);
        }
        let (metrics_ms, _) = timed_get(&ns, "/metrics");
        let (flows_ms, len) = timed_get(&ns, "/flows");
        let (filtered_ms, _) = timed_get(&ns, "/flows?state=stalled");
        let size = size_name(n);
        println!(
            "agent, {n} flows: sweep tick {tick_ms:.1} ms, GET /metrics {metrics_ms:.2} ms, /flows (first 1,000, {len} bytes) {flows_ms:.1} ms, /flows?state=stalled (whole table) {filtered_ms:.1} ms"
        );
        for (name, value) in [
            (format!("agent_sweep_tick_ms_{size}"), tick_ms),
            (format!("agent_metrics_get_ms_{size}"), metrics_ms),
            (format!("agent_flows_get_ms_{size}"), flows_ms),
            (format!("agent_flows_filtered_get_ms_{size}"), filtered_ms),
        ] {
            figures.push(Figure {
                name,
                value,
                unit: "ms",
                target: None,
            });
        }
    }
    let pid = agent.pid();
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(STEADY);
    let cpu = (cpu_seconds(pid) - cpu0) / STEADY.as_secs_f64() * 100.0;
    let rss = rss_kib(pid) as f64;
    let size = size_name(largest);
    println!(
        "agent, {largest} flows, steady for {STEADY:?} with a 1 s sweep: CPU {cpu:.1}% of a core, RSS {:.1} MB",
        rss / 1024.0
    );
    figures.push(Figure {
        name: format!("agent_cpu_percent_steady_{size}"),
        value: cpu,
        unit: "%",
        target: Some(1.0),
    });
    figures.push(Figure {
        name: format!("agent_rss_kib_steady_{size}"),
        value: rss,
        unit: "KiB",
        target: None,
    });
    // The /metrics target: independent of the table's size.
    let at = |s: &str| {
        figures
            .iter()
            .find(|f| f.name == format!("agent_metrics_get_ms_{s}"))
            .map(|f| f.value)
    };
    if let (Some(small), Some(big)) = (at(&size_name(sizes[0])), at(&size)) {
        figures.push(Figure {
            name: format!("agent_metrics_get_{size}_over_{}", size_name(sizes[0])),
            value: big / small,
            unit: "ratio",
            target: Some(2.0),
        });
    }
    drop(agent);
}
