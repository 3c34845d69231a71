//! The Debian package (`cargo xtask package`): built from this build's `ackwatch`, its
//! fields and contents read back with `dpkg-deb`, checked by lintian, installed into a
//! scratch root with `dpkg --root` (maintainer scripts under DPKG_ROOT), run from there,
//! verified and purged; and installed on this machine with `dpkg -i`, run, and purged.

use std::path::Path;
use std::process::Command;

use ackwatch_tests::Scratch;
use ackwatch_tests::prom::deploy_dir;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg --root root` with `args`: scripts run outside a chroot with DPKG_ROOT set (they
/// then leave systemd alone); the scratch root has no libc6 package to depend on.
fn dpkg(root: &Path, args: &[&str]) -> String {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

/// `cargo xtask package` of this build's binary: the folder holding it, the package's
/// path and its version.
fn build() -> (Scratch, String, String) {
    let binary = ackwatch_tests::ackwatch_binary();
    let out = Scratch::new("package");
    run(Command::new(env!("CARGO"))
        .args(["run", "--quiet", "-p", "xtask", "--", "package", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(&out.0)
        .env("DEBFULLNAME", "ackwatch tests")
        .env("DEBEMAIL", "tests@example.org"));
    let version = run(Command::new(&binary).arg("--version"));
    let version = version
        .trim()
        .strip_prefix("ackwatch ")
        .unwrap()
        .to_string();
    let deb = out.join(&format!("ackwatch_{version}_amd64.deb"));
    assert!(deb.exists(), "no {}", deb.display());
    let deb = deb.display().to_string();
    (out, deb, version)
}

/// Whether dpkg on this machine knows the package as installed.
fn installed_here() -> bool {
    Command::new("dpkg")
        .args(["-s", "ackwatch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Purges the package from this machine when dropped (pass or fail).
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "ackwatch"]).output();
    }
}

/// The package as an operator installs it: `dpkg -i` on this machine, the installed
/// binary run, then `dpkg --purge`. Refuses to run where ackwatch is already installed
/// (a real deployment is not the test's to replace).
#[test]
fn package_installs_with_dpkg_on_this_machine_and_purges() {
    assert!(
        !installed_here(),
        "ackwatch is installed on this machine: this test installs and purges the package, run it elsewhere"
    );
    let (_out, deb, version) = build();
    let purge = PurgeOnDrop;
    run(Command::new("dpkg").args(["-i", &deb]));
    assert!(installed_here());
    assert_eq!(
        run(Command::new("/usr/bin/ackwatch").arg("--version")).trim(),
        format!("ackwatch {version}")
    );
    assert_eq!(run(Command::new("dpkg").args(["--verify", "ackwatch"])), "");
    run(Command::new("dpkg").args(["--purge", "ackwatch"]));
    drop(purge);
    assert!(!installed_here(), "still known to dpkg after purge");
    for gone in [
        "/usr/bin/ackwatch",
        "/etc/default/ackwatch",
        "/usr/lib/systemd/system/ackwatch.service",
        "/usr/share/ackwatch",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
}

#[test]
fn package_builds_installs_into_a_scratch_root_and_purges() {
    let (_out, deb, version) = build();
    let version = version.as_str();

    // Its fields.
    let field = |f: &str| run(Command::new("dpkg-deb").args(["-f", &deb, f]));
    assert_eq!(field("Package").trim(), "ackwatch");
    assert_eq!(field("Version").trim(), version);
    assert_eq!(field("Architecture").trim(), "amd64");
    assert!(
        field("Depends").contains("libc6 (>="),
        "{}",
        field("Depends")
    );
    assert_eq!(
        field("Maintainer").trim(),
        "ackwatch tests <tests@example.org>"
    );
    assert!(field("Installed-Size").trim().parse::<u64>().unwrap() > 0);
    let control = Scratch::new("package-control");
    run(Command::new("dpkg-deb").args(["-e", &deb]).arg(&control.0));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/default/ackwatch\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(control.join(script)).unwrap();
        assert!(text.contains("DPKG_ROOT"), "{script}: {text}");
    }

    // Debian's checks: no error (a warning remains: no manual page).
    let lint = Command::new("lintian")
        .args(["--fail-on", "error", &deb])
        .output()
        .expect("lintian (Debian package lintian)");
    let report = String::from_utf8_lossy(&lint.stdout);
    println!("lintian:\n{report}");
    assert!(
        lint.status.success() && !report.lines().any(|l| l.starts_with("E: ")),
        "lintian: {report}{}",
        String::from_utf8_lossy(&lint.stderr)
    );

    // Its contents: owner root, modes.
    let listing = run(Command::new("dpkg-deb").args(["-c", &deb]));
    for (path, mode) in [
        ("./usr/bin/ackwatch", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/ackwatch.service", "-rw-r--r--"),
        ("./etc/default/ackwatch", "-rw-r--r--"),
        (
            "./usr/share/ackwatch/prometheus/ackwatch-rules.yml",
            "-rw-r--r--",
        ),
        (
            "./usr/share/ackwatch/prometheus/prometheus-fleet.example.yml",
            "-rw-r--r--",
        ),
        (
            "./usr/share/ackwatch/grafana/ackwatch-fleet.json",
            "-rw-r--r--",
        ),
        (
            "./usr/share/ackwatch/grafana/ackwatch-headend.json",
            "-rw-r--r--",
        ),
        ("./usr/share/doc/ackwatch/README.md", "-rw-r--r--"),
        ("./usr/share/doc/ackwatch/copyright", "-rw-r--r--"),
        ("./usr/share/doc/ackwatch/changelog.gz", "-rw-r--r--"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
        assert!(
            line.starts_with(mode) && line.contains("root/root"),
            "{line}"
        );
    }

    // Installed into a scratch root.
    let root = Scratch::new("package-root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(&root.0, &["-i", &deb]);
    let status = dpkg(&root.0, &["-s", "ackwatch"]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    // md5sums against the installed files: nothing to report.
    assert_eq!(dpkg(&root.0, &["--verify", "ackwatch"]), "");
    let installed = root.join("usr/bin/ackwatch");
    assert_eq!(
        run(Command::new(&installed).arg("--version")).trim(),
        format!("ackwatch {version}")
    );
    // The unit runs that binary with the defaults file's flags.
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/ackwatch.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/ackwatch run $ACKWATCH_OPTS\n"),
        "{unit}"
    );
    assert!(unit.contains("\nEnvironmentFile=-/etc/default/ackwatch\n"));
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    // systemd accepts it, pointed at the binary in the scratch root.
    let units = Scratch::new("package-unit");
    let verify = units.join("ackwatch.service");
    std::fs::write(
        &verify,
        unit.replace("/usr/bin/ackwatch", &installed.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&verify)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.is_empty(),
        "systemd-analyze verify: {said}"
    );
    let defaults = std::fs::read_to_string(root.join("etc/default/ackwatch")).unwrap();
    assert_eq!(
        defaults,
        std::fs::read_to_string(deploy_dir().join("ackwatch.default")).unwrap()
    );
    // The rules, the example configuration and the dashboards as in deploy/; the
    // configuration and its rules still load.
    for file in [
        "prometheus/ackwatch-rules.yml",
        "prometheus/prometheus-fleet.example.yml",
        "grafana/ackwatch-fleet.json",
        "grafana/ackwatch-headend.json",
    ] {
        assert_eq!(
            std::fs::read(root.join(&format!("usr/share/ackwatch/{file}"))).unwrap(),
            std::fs::read(deploy_dir().join(file)).unwrap(),
            "{file}"
        );
    }
    run(Command::new("promtool")
        .args(["check", "config", "prometheus-fleet.example.yml"])
        .current_dir(root.join("usr/share/ackwatch/prometheus")));

    // Purged: its files and its conffile gone, dpkg's database left.
    dpkg(&root.0, &["--purge", "ackwatch"]);
    for gone in [
        "usr/bin/ackwatch",
        "etc/default/ackwatch",
        "usr/lib/systemd/system/ackwatch.service",
        "usr/share/ackwatch",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after purge");
    }
    let status = Command::new("dpkg")
        .arg(format!("--root={}", root.0.display()))
        .args(["-s", "ackwatch"])
        .output()
        .unwrap();
    assert!(!status.status.success(), "still known after purge");
}
