//! The agent with a large flow table: its sweep (from its own
//! ackwatch_sweep_duration_seconds), /metrics and /flows response times at several
//! table sizes, and its RSS and CPU while steady with the largest.

use std::time::{Duration, Instant};

use ackwatch::flows::monotonic_now;
use ackwatch_tests::lab::{Lab, in_ns};
use ackwatch_tests::live::{AGENT_ADDR, Agent, BpfFs};
use aya::maps::{HashMap, Map, MapData};
use ebpf_probe::abi::{Flow, FlowClass, FlowKey};

use crate::probe_cost::{prefill_key as key, size_name};
use crate::report::Figure;

/// Requests timed per endpoint and size (the median is reported).
const REQUESTS: usize = 21;
const STEADY: Duration = Duration::from_secs(10);

/// The agent's pinned flow table.
fn pinned_flows(fs: &BpfFs) -> HashMap<MapData, FlowKey, Flow> {
    let root = std::path::PathBuf::from(fs.pin_path());
    let t = Instant::now();
    loop {
        let found = std::fs::read_dir(&root).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("FLOWS"))
                .find(|p| p.exists())
        });
        if let Some(path) = found {
            let data = MapData::from_pin(&path).expect("open the pinned FLOWS");
            return HashMap::try_from(Map::HashMap(data)).expect("FLOWS is a hash map");
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no FLOWS pin under {root:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Median wall time of GET `path`, in milliseconds, and the last body's length.
fn timed_get(ns: &str, path: &str) -> (f64, usize) {
    in_ns(ns, || {
        let mut times = Vec::new();
        let mut len = 0;
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let (status, body) = ackwatch::client::http_get(AGENT_ADDR, path).expect("GET");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "GET {path}: {body}");
            len = body.len();
        }
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], len)
    })
}

fn metric(ns: &str, name: &str) -> f64 {
    let (_, body) = in_ns(ns, || ackwatch::client::http_get(AGENT_ADDR, "/metrics").unwrap());
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn run(sizes: &[u32], figures: &mut Vec<Figure>) {
    let largest = *sizes.iter().max().unwrap();
    let lab = Lab::new();
    let fs = BpfFs::mount();
    let capacity = (largest + largest / 8).max(16).to_string();
    let pin = fs.pin_path();
    let agent = Agent::start(
        &lab.headend,
        &[
            "--iface", "h0", "--max-flows", &capacity, "--sweep-interval", "1s", "--pin-path", &pin,
        ],
    );
    let ns = lab.headend.clone();
    let mut flows = pinned_flows(&fs);
    let mut written = 0;
    for &n in sizes {
        // Entries as the probe leaves them: seen now (not idle), cTCP, active.
        let mut flow = Flow {
            class: FlowClass::Ctcp as u8,
            ..Flow::default()
        };
        flow.first_ts = monotonic_now();
        flow.last_ts = flow.first_ts;
        while written < n {
            written += 1;
            flows.insert(key(written), flow, 0).expect("prefill FLOWS");
        }
        // Two sweeps over the new size, then the last one's duration.
        std::thread::sleep(Duration::from_millis(2500));
        let entries = metric(&ns, "ackwatch_flow_table_entries");
        assert_eq!(entries as u32, n, "the agent's sweep sees the prefilled flows");
        let sweep_ms = metric(&ns, "ackwatch_sweep_duration_seconds") * 1000.0;
        let (metrics_ms, _) = timed_get(&ns, "/metrics");
        let (flows_ms, len) = timed_get(&ns, "/flows");
        let (filtered_ms, _) = timed_get(&ns, "/flows?state=stalled");
        let size = size_name(n);
        println!(
            "agent, {n} flows: sweep {sweep_ms:.1} ms, GET /metrics {metrics_ms:.2} ms, /flows (first 1,000, {len} bytes) {flows_ms:.1} ms, /flows?state=stalled (whole table) {filtered_ms:.1} ms"
        );
        let sweep_target = match n {
            10_000 => Some(2.0),
            1_000_000 => Some(100.0),
            _ => None,
        };
        for (name, value, target) in [
            (format!("agent_sweep_ms_{size}"), sweep_ms, sweep_target),
            (format!("agent_metrics_get_ms_{size}"), metrics_ms, None),
            (format!("agent_flows_get_ms_{size}"), flows_ms, None),
            (format!("agent_flows_filtered_get_ms_{size}"), filtered_ms, None),
        ] {
            figures.push(Figure {
                name,
                value,
                unit: "ms",
                target,
            });
        }
    }
    let pid = agent.pid();
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(STEADY);
    let cpu = (cpu_seconds(pid) - cpu0) / STEADY.as_secs_f64() * 100.0;
    let rss = rss_kib(pid);
    let size = size_name(largest);
    println!("agent, {largest} flows, steady for {STEADY:?} with a 1 s sweep: CPU {cpu:.1}% of a core, RSS {:.1} MB", rss / 1024.0);
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
