//! Project tasks. Every task first installs what a fresh machine lacks (`setup`).
//!
//!   cargo xtask setup   install the toolchain pieces and Debian packages, idempotently
//!   cargo xtask test    setup, then every test (as root: the kernel tests load BPF)
//!   cargo xtask demo    setup, then the agent in the namespace lab, reporting a stall
//!   cargo xtask bench   setup, then every benchmark (README, Performance)
//!   cargo xtask package setup, then the Debian package (target/package/*.deb)

mod package;
mod setup;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install nightly rust-src, bpf-linker and the Debian packages the tests need.
    Setup,
    /// Run every test: host unit tests, then the kernel tests (needs root).
    Test,
    /// Run the agent in the namespace lab and show it reporting a stall.
    Demo,
    /// Benchmarks: the probe's cost per packet, the agent's with large tables, offline
    /// analysis against tshark; writes bench/results.json and the README's numbers.
    Bench {
        /// Packets in the generated capture.
        #[arg(long, default_value_t = 1_000_000)]
        packets: usize,
        /// Small sizes, nothing written: a smoke run of every benchmark.
        #[arg(long)]
        quick: bool,
    },
    /// Build the Debian package ackwatch_<version>_<arch>.deb (README, Deployment).
    Package {
        /// Package this binary instead of a release build.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// Where to write the .deb (default: target/package).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup::run()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Test => test(),
        Task::Bench { packets, quick } => {
            let packets = packets.to_string();
            let mut args = vec![packets.as_str()];
            if quick {
                args.push("--quick");
            }
            run_tests_bin("ackwatch-bench", &args)
        }
        Task::Demo => run_tests_bin("ackwatch-demo", &[]),
        Task::Package { binary, out } => package::build(binary, out).map(|_| ()),
    }
}

/// Runs a binary of the tests crate, optimized, beside the `ackwatch` it drives.
fn run_tests_bin(bin: &str, args: &[&str]) -> Result<()> {
    cargo(&["build", "--release", "-p", "ackwatch", "--bin", "ackwatch"])?;
    let mut all = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "ackwatch-tests",
        "--bin",
        bin,
        "--",
    ];
    all.extend_from_slice(args);
    cargo(&all)
}

fn test() -> Result<()> {
    if unsafe { libc_geteuid() } != 0 {
        bail!("the kernel tests load BPF programs: run `cargo xtask test` as root");
    }
    let mut total = Tally::default();
    // The shared state machine's own unit tests (the probe crate is not a default member),
    // then the agent's and the kernel and integration tests.
    let runs: [&[&str]; 2] = [
        &["test", "-p", "ebpf-probe", "--lib"],
        // One test at a time: the live tests time detection and capture at line rate
        // on two cores.
        // Every test file runs even after one fails: the closing line counts them all.
        &[
            "test",
            "--no-fail-fast",
            "-p",
            "ackwatch",
            "-p",
            "ackwatch-tests",
            "--",
            "--test-threads=1",
        ],
    ];
    // The integration tests run the `ackwatch` binary.
    cargo(&["build", "-p", "ackwatch", "--bin", "ackwatch"])?;
    let mut ok = true;
    for args in runs {
        ok &= cargo_test(args, &mut total)?;
    }
    // One closing line for the whole suite.
    println!("ackwatch: {} passed, {} failed", total.passed, total.failed);
    if !ok || total.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test ...`, echoing its output and adding up its `test result:` lines.
fn cargo_test(args: &[&str], tally: &mut Tally) -> Result<bool> {
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let out = child.stdout.take().context("cargo stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let n = words.next().and_then(|n| n.parse::<u64>().ok());
            match (n, words.next()) {
                (Some(n), Some("passed")) => tally.passed += n,
                (Some(n), Some("failed")) => tally.failed += n,
                _ => {}
            }
        }
    }
    Ok(child.wait()?.success())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
