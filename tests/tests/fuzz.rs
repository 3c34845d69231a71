//! Fuzzing, bounded: frames seeded from ../shared/pcaps and generated conversations,
//! mutated (bit flips, truncation, byte runs, header splices), through the host's
//! parser and state machine (no panic, table bounds and counters consistent), and
//! through the kernel program and the host side by side (the same state after every
//! batch). An input that fails is written to tests/fuzz-regressions/ and replayed by
//! every later run. ACKWATCH_FUZZ_SECONDS sets the host pass's length (default 45).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ackwatch::probe::Settings;
use ackwatch_tests::conversation::Generator;
use ackwatch_tests::corpus;
use ackwatch_tests::harness::{Hook, Host, Kernel};
use ebpf_probe::abi::counter;
use ebpf_probe::parse::LinkKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions")
}

fn seed() -> u64 {
    std::env::var("ACKWATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen())
}

/// Seed frames: the shared captures and a generated conversation.
fn corpus() -> Vec<(LinkKind, Vec<u8>)> {
    let mut frames = corpus::frames(400);
    let mut g = Generator::new(7);
    for s in g.steps(2_000, 20) {
        let link = match s.hook {
            Hook::Xdp(l) | Hook::Tc(l) => l,
        };
        frames.push((link, s.frame));
    }
    assert!(frames.len() > 2_000, "the seed corpus is too small");
    frames
}

/// One mutation of `f`, at most 4 edits; sometimes a splice with `other`.
fn mutate(rng: &mut StdRng, f: &[u8], other: &[u8]) -> Vec<u8> {
    let mut m = f.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if m.is_empty() {
            break;
        }
        let at = rng.gen_range(0..m.len());
        match rng.gen_range(0..6) {
            0 => m[at] ^= 1 << rng.gen_range(0..8),
            1 => m[at] = rng.r#gen(),
            2 => m.truncate(at),
            3 => {
                let v = [0x00, 0xff, 0x7f, 0x80, 0x05, 0x45, 0x60][rng.gen_range(0..7)];
                let end = (at + rng.gen_range(1..8)).min(m.len());
                m[at..end].fill(v);
            }
            4 => {
                // Header of one frame, rest of another.
                let cut = at.min(other.len());
                m.truncate(at);
                m.extend_from_slice(&other[cut..]);
            }
            _ => {
                let n = rng.gen_range(1..64);
                m.splice(at..at, std::iter::repeat_n(rng.r#gen::<u8>(), n));
            }
        }
    }
    m
}

/// Feeds one frame to a host tracker; `Err` with the panic message if it panicked.
fn host_feed(host: &mut Host, link: LinkKind, frame: &[u8], now: u64) -> Result<(), String> {
    let hook = Hook::Xdp(link);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host.feed(hook, frame, now))).map_err(
        |p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        },
    )
}

/// Keeps a failing input for the regression replay; returns where.
fn keep(frame: &[u8], link: LinkKind) -> PathBuf {
    let dir = regressions_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let tag = if link == LinkKind::RawIp { "ip" } else { "eth" };
    let hash = frame.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    let path = dir.join(format!("{hash:016x}.{tag}"));
    std::fs::write(&path, frame).unwrap();
    path
}

fn small_tables() -> Settings {
    Settings {
        max_flows: 256,
        max_pending: 64,
        ..Settings::default()
    }
}

/// Table bounds, and every fed frame counted exactly once (tracked or a reason).
fn check_invariants(host: &Host, fed: u64) {
    let s = host.snapshot();
    assert!(
        s.flows.len() <= 256,
        "{} flows in a 256-flow table",
        s.flows.len()
    );
    assert!(
        s.pending.len() <= 64,
        "{} pending in a 64-entry table",
        s.pending.len()
    );
    let outcomes: u64 = s.counters[counter::TRACKED as usize]
        + s.counters[..counter::REASONS as usize].iter().sum::<u64>();
    assert_eq!(outcomes, fed, "every frame counted once: {:?}", s.counters);
}

#[test]
fn regressions_replay() {
    let Ok(dir) = std::fs::read_dir(regressions_dir()) else {
        return;
    };
    let mut host = Host::new(small_tables());
    let mut fed = 0;
    for e in dir.flatten() {
        let p = e.path();
        let link = match p.extension().and_then(|x| x.to_str()) {
            Some("ip") => LinkKind::RawIp,
            Some("eth") => LinkKind::Ethernet,
            _ => continue,
        };
        let frame = std::fs::read(&p).unwrap();
        host_feed(&mut host, link, &frame, 1_000_000_000 + fed)
            .unwrap_or_else(|e| panic!("{} panics again: {e}", p.display()));
        fed += 1;
    }
    check_invariants(&host, fed);
}

#[test]
fn fuzz_host_parser_and_state_machine() {
    let secs = std::env::var("ACKWATCH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let seed = seed();
    println!("seed {seed} (ACKWATCH_SEED to repeat), {secs} s");
    let mut rng = StdRng::seed_from_u64(seed);
    let corpus = corpus();
    let mut host = Host::new(small_tables());
    let (start, mut fed, mut now) = (Instant::now(), 0u64, 1_000_000_000u64);
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..1_000 {
            let (link, f) = &corpus[rng.gen_range(0..corpus.len())];
            let other = &corpus[rng.gen_range(0..corpus.len())].1;
            let frame = if rng.gen_bool(0.2) {
                f.clone()
            } else {
                mutate(&mut rng, f, other)
            };
            now += rng.gen_range(0..50_000_000);
            if let Err(e) = host_feed(&mut host, *link, &frame, now) {
                let kept = keep(&frame, *link);
                panic!("panic on a frame, kept as {}: {e}", kept.display());
            }
            fed += 1;
        }
        check_invariants(&host, fed);
        if rng.gen_bool(0.05) {
            host = Host::new(small_tables()); // fresh tables now and then: new flows again
            fed = 0;
        }
    }
    println!(
        "{fed} frames since the last reset, {} s",
        start.elapsed().as_secs()
    );
}

#[test]
fn differential_fuzz_kernel_and_host() {
    let seed = seed();
    println!("seed {seed} (ACKWATCH_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let corpus = corpus();
    let settings = small_tables();
    let mut kernel = Kernel::load(settings.clone());
    let mut host = Host::new(settings);
    let mut now = 1_000_000_000u64;
    for batch in 0..20 {
        for _ in 0..500 {
            let (link, f) = &corpus[rng.gen_range(0..corpus.len())];
            let other = &corpus[rng.gen_range(0..corpus.len())].1;
            let frame = if rng.gen_bool(0.3) {
                f.clone()
            } else {
                mutate(&mut rng, f, other)
            };
            now += rng.gen_range(0..100_000_000);
            // The test run refuses frames shorter than an Ethernet header before the
            // program runs (more on TC, see malformed.rs): XDP, and such frames skipped.
            let hook = Hook::Xdp(*link);
            if kernel.try_feed(hook, &frame, now).is_ok() {
                host.feed(hook, &frame, now);
            }
        }
        let (k, h) = (kernel.snapshot(), host.snapshot());
        if k != h {
            panic!("batch {batch}: kernel and host disagree (seed {seed})");
        }
        assert_eq!(
            kernel.events(),
            std::mem::take(&mut host.events),
            "batch {batch}: stall records differ"
        );
    }
}
