//! `cargo xtask package`: the Debian package `ackwatch_<version>_<arch>.deb`, built by
//! `dpkg-deb --build` from a staged tree, its dependencies found by `dpkg-shlibdeps`
//! (Debian's own tools: nothing from crates.io).
//!
//!   /usr/bin/ackwatch                                the agent (stripped)
//!   /usr/lib/systemd/system/ackwatch.service         deploy/ackwatch.service, ExecStart in /usr/bin
//!   /etc/default/ackwatch                            deploy/ackwatch.default (a conffile)
//!   /usr/share/ackwatch/prometheus/ackwatch-rules.yml, prometheus-fleet.example.yml
//!   /usr/share/ackwatch/grafana/*.json               the dashboards
//!   /usr/share/doc/ackwatch/{README.md,copyright}
//!
//! The maintainer scripts reload systemd, restart an enabled or running agent on upgrade
//! and stop it on removal (deb-systemd-invoke, as debhelper's do); they do nothing when
//! dpkg installs into another root (`DPKG_ROOT` set, as `dpkg --root` with
//! `--force-script-chrootless` does).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

const POSTINST: &str = r#"#!/bin/sh
set -e
# Not on the running system (dpkg --root): nothing to tell systemd.
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade: an enabled or running agent restarts on the new binary.
    if [ -n "$2" ] && command -v deb-systemd-invoke >/dev/null; then
        deb-systemd-invoke restart ackwatch.service || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ] \
    && command -v deb-systemd-invoke >/dev/null; then
    deb-systemd-invoke stop ackwatch.service || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if { [ "$1" = remove ] || [ "$1" = purge ]; } && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ "$1" = purge ] && [ -z "${DPKG_ROOT:-}" ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge ackwatch.service || true
fi
exit 0
"#;

/// The copyright file, for the year `year`.
fn copyright(year: &str) -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ackwatch

Files: *
Copyright: {year} the ackwatch authors
License: MIT or Apache-2.0
 You may use ackwatch under the terms of either license. The Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
"
    )
}

/// Who builds the package: DEBFULLNAME and DEBEMAIL (as dch reads them), else the
/// checkout's git identity.
fn maintainer(root: &Path) -> Result<String> {
    let git = |key: &str| {
        run(Command::new("git").args(["config", key]).current_dir(root))
            .map(|v| v.trim().to_string())
    };
    let name = std::env::var("DEBFULLNAME").or_else(|_| git("user.name"));
    let email = std::env::var("DEBEMAIL").or_else(|_| git("user.email"));
    match (name, email) {
        (Ok(n), Ok(e)) if !n.is_empty() && !e.is_empty() => Ok(format!("{n} <{e}>")),
        _ => bail!(
            "set DEBFULLNAME and DEBEMAIL (or git's user.name and user.email): the package's Maintainer"
        ),
    }
}

/// The last commit's `git log --format` field.
fn last_commit(root: &Path, format: &str) -> Result<String> {
    let out = run(Command::new("git")
        .args(["log", "-1", &format!("--format={format}")])
        .current_dir(root))?;
    Ok(out.trim().to_string())
}

/// A one-entry Debian changelog (a native package's changelog.gz), dated by the last
/// commit.
fn changelog(root: &Path, version: &str, maintainer: &str) -> Result<String> {
    Ok(format!(
        "ackwatch ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask package from commit {}.\n\n -- {maintainer}  {}\n",
        last_commit(root, "%h")?,
        last_commit(root, "%aD")?
    ))
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Copies `from` to `root/to` with `mode`, creating the folders.
fn install(from: &Path, root: &Path, to: &str, mode: u32) -> Result<()> {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap())?;
    std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(root: &Path, to: &str, text: &str, mode: u32) -> Result<()> {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap())?;
    std::fs::write(&dest, text)?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Sizes of every file under `dir`, in KiB rounded up each (dpkg's Installed-Size).
fn kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = std::fs::symlink_metadata(e.path())?;
        total += if meta.is_dir() {
            kib(&e.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(total)
}

/// The `Depends:` of `binary` (inside `stage`), by dpkg-shlibdeps.
fn depends(stage: &Path, binary: &str) -> Result<String> {
    // dpkg-shlibdeps reads the package names from a debian/control.
    let debian = stage.join("debian");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        "Source: ackwatch\n\nPackage: ackwatch\nArchitecture: any\n",
    )?;
    let out = run(Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(binary)
        .current_dir(stage));
    std::fs::remove_dir_all(&debian)?;
    let out = out?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    Ok(deps.trim().to_string())
}

/// Builds the package from `binary` (else a release build) into `out` (else
/// target/package); returns its path.
pub fn build(binary: Option<PathBuf>, out: Option<PathBuf>) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = match binary {
        Some(b) => b,
        None => {
            crate::cargo(&["build", "--release", "-p", "ackwatch", "--bin", "ackwatch"])?;
            root.join("target/release/ackwatch")
        }
    };
    let version = run(Command::new(&binary).arg("--version"))?;
    let version = version
        .trim()
        .strip_prefix("ackwatch ")
        .context("`ackwatch --version` says no version")?
        .to_string();
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let out = out.unwrap_or_else(|| root.join("target/package"));
    let name = format!("ackwatch_{version}_{arch}");
    let stage = out.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&stage)?;

    let deploy = root.join("deploy");
    install(&binary, &stage, "/usr/bin/ackwatch", 0o755)?;
    run(Command::new("strip")
        .arg("--strip-unneeded")
        .arg(stage.join("usr/bin/ackwatch")))?;
    let unit = std::fs::read_to_string(deploy.join("ackwatch.service"))?;
    let exec = "ExecStart=/usr/local/bin/ackwatch ";
    ensure!(
        unit.contains(exec),
        "deploy/ackwatch.service: no `{exec}` to point at /usr/bin"
    );
    let unit = unit.replace(exec, "ExecStart=/usr/bin/ackwatch ").replace(
        "# The package installs the binary in /usr/bin (cargo xtask package rewrites this path).\n",
        "",
    );
    write(
        &stage,
        "/usr/lib/systemd/system/ackwatch.service",
        &unit,
        0o644,
    )?;
    install(
        &deploy.join("ackwatch.default"),
        &stage,
        "/etc/default/ackwatch",
        0o644,
    )?;
    for file in [
        "prometheus/ackwatch-rules.yml",
        "prometheus/prometheus-fleet.example.yml",
        "grafana/ackwatch-fleet.json",
        "grafana/ackwatch-headend.json",
    ] {
        let to = format!("/usr/share/ackwatch/{file}");
        install(&deploy.join(file), &stage, &to, 0o644)?;
    }
    install(
        &root.join("README.md"),
        &stage,
        "/usr/share/doc/ackwatch/README.md",
        0o644,
    )?;
    let maintainer = maintainer(&root)?;
    // "Sun, 29 Nov 2026 18:20:05 +0000"
    let date = last_commit(&root, "%aD")?;
    let year = date.split_whitespace().nth(3).unwrap_or_default();
    write(
        &stage,
        "/usr/share/doc/ackwatch/copyright",
        &copyright(year),
        0o644,
    )?;
    let changes = changelog(&root, &version, &maintainer)?;
    write(&stage, "/usr/share/doc/ackwatch/changelog", &changes, 0o644)?;
    run(Command::new("gzip")
        .arg("-9n")
        .arg(stage.join("usr/share/doc/ackwatch/changelog")))?;

    let depends = depends(&stage, "usr/bin/ackwatch")?;
    let size = kib(&stage)?;
    let control = format!(
        "Package: ackwatch
Version: {version}
Architecture: {arch}
Maintainer: {maintainer}
Installed-Size: {size}
Depends: {depends}
Suggests: prometheus, prometheus-alertmanager
Section: net
Priority: optional
Description: finds TCP-encapsulated VPN flows stuck on duplicate ACKs
 ackwatch watches a VPN headend's interfaces with an eBPF/XDP probe and
 reports the TCP-encapsulated flows (cTCP, port 10000) whose sender ignores
 duplicate ACKs: JSON events, a /flows API, Prometheus metrics and
 Alertmanager alerts.
 .
 The package holds the agent, its systemd unit (settings in
 /etc/default/ackwatch), Prometheus rules and Grafana dashboards
 (/usr/share/ackwatch).
"
    );
    write(&stage, "/DEBIAN/control", &control, 0o644)?;
    write(
        &stage,
        "/DEBIAN/conffiles",
        "/etc/default/ackwatch\n",
        0o644,
    )?;
    write(&stage, "/DEBIAN/postinst", POSTINST, 0o755)?;
    write(&stage, "/DEBIAN/prerm", PRERM, 0o755)?;
    write(&stage, "/DEBIAN/postrm", POSTRM, 0o755)?;
    // dpkg's own check of what is installed (conffiles aside: dpkg keeps theirs).
    let sums = run(Command::new("sh")
        .args(["-c", "find usr -type f -print0 | sort -z | xargs -0 md5sum"])
        .current_dir(&stage))?;
    write(&stage, "/DEBIAN/md5sums", &sums, 0o644)?;

    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    std::fs::remove_dir_all(&stage)?;
    println!("{}", deb.display());
    Ok(deb)
}
