//! Installs what building and testing need, skipping what is already there:
//! nightly `rust-src` (for `-Z build-std=core`), bpf-linker linked against the
//! nightly's own LLVM (docs/toolchain.md), and Debian packages.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Debian packages the tests and the lab use.
const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "ethtool",
    "tshark",
    "tcpdump",
    "nftables",
    "prometheus",
    "prometheus-alertmanager",
    "libcap2-bin",
    // The TLS tests: their certificates, and HTTPS requests to the agent.
    "openssl",
    "curl",
    // GNU time: the benchmarks' peak RSS of a command.
    "time",
    // cargo xtask package: dpkg-shlibdeps, and strip; its test runs lintian and
    // systemd-analyze.
    "dpkg-dev",
    "binutils",
    "lintian",
    "systemd",
];

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_packages()
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output()?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: installing nightly rust-src");
    must(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against the nightly's LLVM (about a minute)");
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .context("the nightly toolchain ships no libLLVM.so.*-rust-*")?;
    // bpf-linker's build looks for -lLLVM.
    let link = lib.join("libLLVM.so");
    if !link.exists() {
        std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    }
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    must(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &sysroot),
    )
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    must(Command::new("apt-get").arg("update").arg("-qq"))?;
    must(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}
