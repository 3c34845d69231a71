//! Project tasks. Every task first installs what a fresh machine lacks (`setup`).
//!
//!   cargo xtask setup   install the toolchain pieces and Debian packages, idempotently
//!   cargo xtask test    setup, then every test (as root: the kernel tests load BPF)
//!   cargo xtask demo    setup, then a cTCP stall replayed through the loaded probe

mod setup;

use std::process::Command;

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
    /// Replay a healthy and a stalled cTCP flow through the loaded probe.
    Demo,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup::run()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Test => test(),
        Task::Demo => cargo(&[
            "run",
            "--quiet",
            "--release",
            "-p",
            "ackwatch-tests",
            "--bin",
            "ackwatch-demo",
        ]),
    }
}

fn test() -> Result<()> {
    if unsafe { libc_geteuid() } != 0 {
        bail!("the kernel tests load BPF programs: run `cargo xtask test` as root");
    }
    // The shared state machine's own unit tests (the probe crate is not a default member).
    cargo(&["test", "-p", "ebpf-probe", "--lib"])?;
    cargo(&[
        "test",
        "-p",
        "ackwatch",
        "-p",
        "ackwatch-tests",
        "-p",
        "xtask",
    ])
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
