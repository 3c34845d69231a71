//! Fuzzing with proptest, bounded in time: runs of consecutive frames from
//! tests/captures and generated conversations, each frame with up to three edits (bit
//! flips, bytes set, truncations, byte runs, insertions, splices with another frame),
//! through the host's parser and state machine (no panic, tables within capacity,
//! every frame counted once), and through the kernel program and the host side by side
//! (the same state after every run).
//!
//! A failing input is shrunk by proptest, its seed kept in
//! `tests/fuzz-regressions/*.txt` (proptest replays those first), and its frames in
//! `tests/fuzz-regressions/<hash>.seq`, which `regressions_replay` feeds on every run.
//! ACKWATCH_FUZZ_SECONDS sets the host pass's length (default 45), ACKWATCH_SEED the seed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ackwatch::kernel::probe::Settings;
use ackwatch_tests::conversation::Generator;
use ackwatch_tests::corpus;
use ackwatch_tests::harness::{Hook, Host, Kernel};
use ebpf_probe::abi::counter;
use ebpf_probe::parse::LinkKind;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions")
}

fn seed() -> u64 {
    std::env::var("ACKWATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// Seed frames: the captures in tests/captures and a generated conversation, in order.
fn corpus() -> &'static [(LinkKind, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(LinkKind, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut frames = corpus::frames(400);
        for s in Generator::new(7).steps(2_000, 20) {
            let (Hook::Xdp(link) | Hook::Tc(link)) = s.hook;
            frames.push((link, s.frame));
        }
        assert!(frames.len() > 2_000, "the seed corpus is too small");
        frames
    })
}

/// One edit of a frame; positions are taken modulo the frame's length.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Fill(usize, u8, u8),
    Insert(usize, u8, u8),
    /// This frame's bytes up to the position, then another corpus frame's from there.
    Splice(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![0x00u8, 0xff, 0x7f, 0x80, 0x05, 0x45, 0x60]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(a, b)| Edit::Flip(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, v)| Edit::Set(a, v)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1u8..8, interesting).prop_map(|(a, n, v)| Edit::Fill(a, n, v)),
        (any::<usize>(), 1u8..64, any::<u8>()).prop_map(|(a, n, v)| Edit::Insert(a, n, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, o)| Edit::Splice(a, o)),
    ]
}

/// Consecutive corpus frames from `start` (a conversation, in capture order), each
/// with its edits and the nanoseconds since the previous frame.
#[derive(Clone, Debug)]
struct Run {
    start: usize,
    frames: Vec<(Vec<Edit>, u64)>,
}

fn run_of(len: std::ops::Range<usize>) -> impl Strategy<Value = Run> {
    let edits = prop::collection::vec(edit(), 0..3);
    (
        0..corpus().len(),
        prop::collection::vec((edits, 0u64..50_000_000), len),
    )
        .prop_map(|(start, frames)| Run { start, frames })
}

fn apply(frame: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut m = frame.to_vec();
    for e in edits {
        if m.is_empty() {
            break;
        }
        let at = |a: usize| a % m.len();
        match *e {
            Edit::Flip(a, bit) => {
                let i = at(a);
                m[i] ^= 1 << bit;
            }
            Edit::Set(a, v) => {
                let i = at(a);
                m[i] = v;
            }
            Edit::Truncate(a) => m.truncate(at(a)),
            Edit::Fill(a, n, v) => {
                let i = at(a);
                let end = (i + n as usize).min(m.len());
                m[i..end].fill(v);
            }
            Edit::Insert(a, n, v) => {
                let i = at(a);
                m.splice(i..i, std::iter::repeat_n(v, n as usize));
            }
            Edit::Splice(a, o) => {
                let i = at(a);
                let other = &corpus()[o % corpus().len()].1;
                m.truncate(i);
                m.extend_from_slice(&other[i.min(other.len())..]);
            }
        }
    }
    m
}

/// The frames of a run, each with its link and time.
fn frames(run: &Run, now: u64) -> Vec<(LinkKind, Vec<u8>, u64)> {
    frames_as(run, now, |_, f| f.to_vec())
}

/// `frames`, each frame given to `dress` (with its index in the run) before its edits.
fn frames_as(
    run: &Run,
    mut now: u64,
    dress: impl Fn(usize, &[u8]) -> Vec<u8>,
) -> Vec<(LinkKind, Vec<u8>, u64)> {
    let c = corpus();
    run.frames
        .iter()
        .enumerate()
        .map(|(i, (edits, gap))| {
            let (link, f) = &c[(run.start + i) % c.len()];
            now += gap;
            (*link, apply(&dress(i, f), edits), now)
        })
        .collect()
}

/// Keeps frames that failed, for `regressions_replay`: per frame, its link (1 byte,
/// 1 = raw IP), its time (8 bytes) and its length (4 bytes), little-endian.
fn keep(frames: &[(LinkKind, Vec<u8>, u64)]) -> PathBuf {
    let mut bytes = Vec::new();
    for (link, f, now) in frames {
        bytes.push(u8::from(*link == LinkKind::RawIp));
        bytes.extend_from_slice(&now.to_le_bytes());
        bytes.extend_from_slice(&(f.len() as u32).to_le_bytes());
        bytes.extend_from_slice(f);
    }
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    let path = regressions_dir().join(format!("{hash:016x}.seq"));
    std::fs::create_dir_all(regressions_dir()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn read_kept(bytes: &[u8]) -> Vec<(LinkKind, Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 13 {
        let link = if rest[0] == 1 {
            LinkKind::RawIp
        } else {
            LinkKind::Ethernet
        };
        let now = u64::from_le_bytes(rest[1..9].try_into().unwrap());
        let len = u32::from_le_bytes(rest[9..13].try_into().unwrap()) as usize;
        let end = (13 + len).min(rest.len());
        out.push((link, rest[13..end].to_vec(), now));
        rest = &rest[end..];
    }
    out
}

fn small_tables() -> Settings {
    Settings {
        max_flows: 256,
        max_pending: 64,
        ..Settings::default()
    }
}

/// Runs `frames` through a fresh host tracker: no panic, table bounds, and every frame
/// counted once (tracked or a reason).
fn host_property(frames: &[(LinkKind, Vec<u8>, u64)]) -> Result<(), TestCaseError> {
    let mut host = Host::new(small_tables());
    for (i, (link, f, now)) in frames.iter().enumerate() {
        let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            host.feed(Hook::Xdp(*link), f, *now)
        }));
        if let Err(p) = fed {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(TestCaseError::fail(format!("frame {i} panics: {msg}")));
        }
    }
    let s = host.snapshot();
    prop_assert!(
        s.flows.len() <= 256,
        "{} flows in a 256-flow table",
        s.flows.len()
    );
    prop_assert!(
        s.pending.len() <= 64,
        "{} pending in a 64-entry table",
        s.pending.len()
    );
    let outcomes: u64 = s.counters[counter::TRACKED as usize]
        + s.counters[..counter::REASONS as usize].iter().sum::<u64>();
    prop_assert_eq!(outcomes, frames.len() as u64, "every frame counted once");
    Ok(())
}

fn config(seed: u64, name: &'static str) -> Config {
    Config {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(name))),
        rng_seed: RngSeed::Fixed(seed),
        // Panics are caught by the property itself; shrinking is bounded.
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

#[test]
fn regressions_replay() {
    let Ok(dir) = std::fs::read_dir(regressions_dir()) else {
        return;
    };
    for e in dir.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("seq") {
            continue;
        }
        let frames = read_kept(&std::fs::read(&p).unwrap());
        if let Err(e) = host_property(&frames) {
            panic!("{} fails again: {e}", p.display());
        }
    }
}

#[test]
fn fuzz_host_parser_and_state_machine() {
    let secs = std::env::var("ACKWATCH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let seed = seed();
    println!("seed {seed} (ACKWATCH_SEED to repeat), {secs} s");
    let (start, mut cases) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        // A runner stops at `cases` successes: a fresh one, on the next seed, each round.
        // The path is relative to the package, where cargo runs integration tests.
        let round = config(seed.wrapping_add(cases), "fuzz-regressions/host.txt");
        let result = TestRunner::new(round).run(&run_of(1..64), |run| {
            host_property(&frames(&run, 1_000_000_000))
        });
        match result {
            Ok(()) => cases += 256,
            Err(TestError::Fail(why, run)) => {
                let kept = keep(&frames(&run, 1_000_000_000));
                panic!("{why}: {run:?}; frames kept in {}", kept.display());
            }
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "{cases} runs of up to 63 frames in {} s",
        start.elapsed().as_secs()
    );
}

/// Runs of edited frames through the kernel program (test run) and the host, one after
/// another on the same tables: the same flows, counters and stall records after each.
#[test]
fn differential_fuzz_kernel_and_host() {
    let seed = seed();
    println!("seed {seed} (ACKWATCH_SEED to repeat)");
    let mut runner = TestRunner::new(config(seed, "fuzz-regressions/differential.txt"));
    // A 64-entry pending table that the runs fill: kernel and host evict the same
    // entries (the same table code), so they still agree after every run.
    let settings = small_tables();
    let mut kernel = Kernel::load(settings.clone());
    let mut host = Host::new(settings);
    let (mut now, mut fed) = (1_000_000_000u64, Vec::new());
    for batch in 0..40 {
        let run = run_of(200..300).new_tree(&mut runner).unwrap().current();
        for (link, f, at) in frames(&run, now) {
            now = at;
            // The test run refuses frames shorter than an Ethernet header before the
            // program runs (more on TC, see malformed.rs): XDP, and such frames skipped.
            if kernel.try_feed(Hook::Xdp(link), &f, at).is_ok() {
                host.feed(Hook::Xdp(link), &f, at);
                fed.push((link, f, at));
            }
        }
        let same = kernel.snapshot() == host.snapshot()
            && kernel.events() == std::mem::take(&mut host.events);
        if !same {
            let kept = keep(&fed);
            panic!(
                "batch {batch}: kernel and host disagree (seed {seed}); frames in {}",
                kept.display()
            );
        }
    }
    println!("{} frames, kernel and host agree", fed.len());
}

/// Mirror ports: runs of the corpus's Ethernet frames, each sent as a copy (plain, or in
/// one of the tunnels over outer IPv4 or IPv6, by turns) and then edited, through the
/// kernel's mirror program and the host: every copy passed, the same state after each
/// run.
#[test]
fn differential_fuzz_mirror_copies() {
    use ackwatch::kernel::probe::Mirror;
    use ackwatch_tests::encap::{TUNNELS, wrap};
    use ebpf_probe::decap::TunnelPorts;
    let seed = seed();
    println!("seed {seed} (ACKWATCH_SEED to repeat)");
    let mut runner = TestRunner::new(config(seed, "fuzz-regressions/mirror.txt"));
    let settings = Settings {
        max_pending: 16_384,
        mirror: Some(Mirror {
            ports: TunnelPorts::new(&[], &[]).unwrap(),
            drop: false,
        }),
        ..small_tables()
    };
    let mut kernel = Kernel::load(settings.clone());
    let mut host = Host::new(settings);
    let copy = |i: usize, f: &[u8]| match TUNNELS.get(i % (TUNNELS.len() + 1)) {
        Some(t) => wrap(f, t, i.is_multiple_of(2), None),
        None => f.to_vec(),
    };
    let (mut now, mut fed) = (1_000_000_000u64, 0);
    for batch in 0..20 {
        let run = run_of(200..300).new_tree(&mut runner).unwrap().current();
        for (link, f, at) in frames_as(&run, now, copy) {
            now = at;
            // Shorter than an Ethernet header: refused by the test run, as in
            // `differential_fuzz_kernel_and_host`.
            if link != LinkKind::Ethernet || f.len() < 14 {
                continue;
            }
            assert_eq!(
                kernel.feed_mirror(&f, at),
                2,
                "batch {batch}: a copy not passed"
            );
            host.feed_mirror(&f, at);
            fed += 1;
        }
        assert!(
            kernel.snapshot() == host.snapshot()
                && kernel.events() == std::mem::take(&mut host.events),
            "batch {batch}: kernel and host disagree (seed {seed})"
        );
    }
    let c = host.snapshot().counters;
    let at = |i: u32| c[i as usize];
    println!(
        "{fed} copies, kernel and host agree; found by encapsulation {:?}, encap_truncated {}, encap_unsupported {}",
        (0..5)
            .map(|e| at(counter::MIRROR_FRAMES + e))
            .collect::<Vec<_>>(),
        at(counter::ENCAP_TRUNCATED),
        at(counter::ENCAP_UNSUPPORTED)
    );
}
