//! The probe under live traffic in the lab: the kernel's own accounting
//! (`kernel.bpf_stats_enabled=1`, run_time_ns / run_cnt per program) while real Linux
//! TCP connections to a cTCP port cross the headend's XDP and TC programs; then new
//! flows live, from floods of spoofed sources, into tables of the default size and
//! into tables holding a million flows.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ackwatch::kernel::probe::Settings;
use ackwatch_tests::frames::{TH_ACK, TH_SYN, tcp_frame};
use ackwatch_tests::lab::{HEADEND4, Lab, enter, inject};
use ackwatch_tests::live::{Headend, Placement, attach};

use crate::report::Figure;

/// How long the bulk transfer runs (bounded).
const TRAFFIC: Duration = Duration::from_secs(3);
const CONNECTIONS: usize = 8;
/// Packets of each flood: each a new flow, all of them within the pending table's
/// default 65,536 entries, so each is an insert into a free slot.
const FLOOD: u32 = 30_000;
/// New flows that fill the default pending table (65,536) before `full_table_flood`.
const FILL_FLOOD: u32 = 70_000;

/// Sets a sysctl for the life of the value, then restores it.
struct Sysctl(&'static str, String);

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, value).expect("sysctl");
        Sysctl(path, old.trim().to_string())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// (name, run_time_ns, run_cnt) of a program, from bpftool.
fn stats(id: u32) -> (String, u64, u64) {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    (
        v["name"].as_str().unwrap_or_default().to_string(),
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    )
}

pub fn run(figures: &mut Vec<Figure>) {
    let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1");
    let lab = Lab::new();
    let headend = Headend::start(&lab, &[10_000]);
    let probe = attach(&lab, &Settings::default(), Placement::Headend);
    let server = SocketAddr::new(HEADEND4.parse().unwrap(), 10_000);
    let sent = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..CONNECTIONS {
            let (lab, sent) = (&lab, &sent);
            s.spawn(move || {
                enter(&lab.client);
                let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(5))
                    .expect("connect to the headend");
                let buf = [0x5au8; 16 * 1024];
                let t = Instant::now();
                while t.elapsed() < TRAFFIC {
                    if c.write_all(&buf).is_err() {
                        break;
                    }
                    sent.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    drop(headend);
    println!(
        "live: {CONNECTIONS} TCP connections to port 10000 for {TRAFFIC:?}, {} MB sent through the headend's XDP (data) and TC (ACKs)",
        sent.into_inner() / 1_000_000
    );
    for id in probe.program_ids() {
        let (name, ns, cnt) = stats(id);
        if cnt == 0 {
            continue; // loaded, not attached
        }
        let per = ns as f64 / cnt as f64;
        println!("live: {name}: {cnt} runs, {per:.1} ns per run (run_time_ns / run_cnt)");
        figures.push(Figure {
            name: format!("live_{name}_ns_per_packet"),
            value: per,
            unit: "ns/packet",
            target: None,
        });
    }
    let xdp = xdp_id(&probe);
    let at_default = floods(&lab, xdp, "default tables");
    for &(name, per) in &at_default {
        figures.push(flood_figure(name, "", per, 300.0));
    }
    figures.push(Figure {
        name: "live_syn_flood_full_table_new_flow_ns".into(),
        value: full_table_flood(&lab, xdp),
        unit: "ns/packet",
        target: None,
    });
    drop(probe);
    // The same floods into tables that hold a million established flows, where a new
    // flow's lookups go to memory no cache holds: within twice the figures above, as
    // every figure at 1M flows.
    let flows = 1_000_000;
    let settings = Settings {
        max_flows: flows + 64,
        max_pending: 262_144,
        ..Settings::default()
    };
    let mut probe = attach(&lab, &settings, Placement::Headend);
    crate::probe_cost::prefill(&mut probe, flows, false);
    let at_1m = floods(&lab, xdp_id(&probe), "1M flows");
    for (&(name, per), &(_, at0)) in at_1m.iter().zip(&at_default) {
        figures.push(flood_figure(name, "_1m", per, 2.0 * at0));
    }
}

fn flood_figure(name: &str, size: &str, per: f64, target: f64) -> Figure {
    Figure {
        name: format!("live_{name}_flood_new_flow_ns{size}"),
        value: per,
        unit: "ns/packet",
        target: Some(target),
    }
}

/// What a new flow costs live: `FLOOD` SYNs, then `FLOOD` ACKs (one-sided flows, as a
/// mid-stream pick-up), each from a source of its own (`flood`).
/// Returns each flood's name and ns per run of program `xdp`; `tables` says which
/// tables, for the log.
fn floods(lab: &Lab, xdp: u32, tables: &str) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    for (name, flags, first) in [
        ("syn", TH_SYN, 0x0a63_0000u32),
        ("ack", TH_ACK, 0x0a64_0000),
    ] {
        let (per, runs) = flood(lab, xdp, flags, first, FLOOD);
        println!(
            "live: {name} flood, {FLOOD} new flows from spoofed sources, {tables}: ackwatch_xdp {runs} runs, {per:.1} ns per run"
        );
        out.push((name, per));
    }
    out
}

/// A long flood's new flow: the pending table is full (the floods above fill it only
/// to 60,000 of its 65,536), so each new flow takes the place of the oldest of its
/// ways. Filled first with `FILL_FLOOD` SYNs, unmeasured, then `FLOOD` more measured.
fn full_table_flood(lab: &Lab, xdp: u32) -> f64 {
    flood(lab, xdp, TH_SYN, 0x0b00_0000, FILL_FLOOD);
    let (per, runs) = flood(lab, xdp, TH_SYN, 0x0c00_0000, FLOOD);
    println!(
        "live: syn flood, {FLOOD} new flows from spoofed sources into a full pending table: ackwatch_xdp {runs} runs, {per:.1} ns per run"
    );
    per
}

/// The kernel id of `probe`'s XDP program, whose run time the floods read.
fn xdp_id(probe: &ackwatch::kernel::probe::Probe) -> u32 {
    probe
        .program_ids()
        .into_iter()
        .find(|&id| stats(id).0 == "ackwatch_xdp")
        .expect("the XDP program")
}

/// `count` packets with `flags`, each from a source of its own from address `first`
/// on, injected from the gateway into the headend's XDP as fast as one thread sends
/// them; the ns per run of program `xdp` meanwhile. They are addressed to no MAC of
/// the headend, whose kernel drops them after the probe: no answers, and nothing else
/// on the link. Each packet touches a flow's memory that no packet touched before, as
/// in a real flood; the single test runs (`insert_*`) measure the same with the
/// syscall's cold caches around each run. Returns the ns per run, and the runs.
fn flood(lab: &Lab, xdp: u32, flags: u8, first: u32, count: u32) -> (f64, u64) {
    let server = SocketAddr::new("198.51.100.1".parse().unwrap(), 10_000);
    let frames: Vec<(Duration, Vec<u8>)> = (0..count)
        .map(|i| {
            let src = SocketAddr::new(
                std::net::Ipv4Addr::from(first + i).into(),
                1024 + (i % 60_000) as u16,
            );
            (
                Duration::ZERO,
                tcp_frame(src, server, i, i.wrapping_mul(7919), flags, 0),
            )
        })
        .collect();
    let (_, ns0, cnt0) = stats(xdp);
    inject(&lab.gateway, "g1", &frames);
    let (_, ns1, cnt1) = stats(xdp);
    let runs = cnt1 - cnt0;
    ((ns1 - ns0) as f64 / runs.max(1) as f64, runs)
}
