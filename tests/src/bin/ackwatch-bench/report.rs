//! Where the figures go: a table on stdout, bench/results.json, a line of
//! bench/history.jsonl, the README's numbers and the plot it shows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<f64>,
}

impl Figure {
    fn missed(&self) -> bool {
        // Throughput figures are floors, costs and growth ratios ceilings.
        let floor = self.unit == "packets/s" || self.name.ends_with("_vs_tshark");
        match self.target {
            Some(t) if floor => self.value < t,
            Some(t) => self.value > t,
            None => false,
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn print(figures: &[Figure]) {
    println!(
        "\n{:<48} {:>14} {:<10} {:>10}",
        "figure", "value", "unit", "target"
    );
    for f in figures {
        let target = f.target.map(|t| format!("{t:.1}")).unwrap_or("-".into());
        let miss = if f.missed() { "  MISSED" } else { "" };
        println!(
            "{:<48} {:>14.1} {:<10} {:>10}{miss}",
            f.name, f.value, f.unit, target
        );
    }
}

pub fn write(figures: &[Figure]) {
    print(figures);
    let dir = root().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let list: Vec<serde_json::Value> = figures
        .iter()
        .map(|f| serde_json::json!({"name": f.name, "value": f.value, "unit": f.unit, "target": f.target}))
        .collect();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&list).unwrap() + "\n",
    )
    .unwrap();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let line = serde_json::json!({"commit": commit, "results": list});
    let mut h = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("history.jsonl"))
        .unwrap();
    writeln!(h, "{line}").unwrap();
    std::fs::write(dir.join("probe-cost.svg"), plot(figures)).unwrap();
    readme(figures, &commit);
    println!("wrote bench/results.json, bench/history.jsonl, bench/probe-cost.svg, README.md");
}

/// The README's generated block, between its two markers.
fn readme(figures: &[Figure], commit: &str) {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let path = root().join("README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        println!("README.md has no {BEGIN} ... {END} block: not updated");
        return;
    };
    let mut table = format!(
        "{BEGIN}\nMeasured by `cargo xtask bench` at commit `{commit}` (2 vCPU VM, kernel {}).\n\n| figure | value | unit | target |\n|---|---:|---|---:|\n",
        kernel()
    );
    for f in figures {
        let target = f.target.map(|t| format!("{t:.1}")).unwrap_or("-".into());
        let miss = if f.missed() { " **missed**" } else { "" };
        table += &format!(
            "| {} | {:.1} | {} | {target}{miss} |\n",
            f.name, f.value, f.unit
        );
    }
    table += "\n![probe cost per packet](bench/probe-cost.svg)\n";
    let out = format!("{}{table}{}", &text[..b], &text[e..]);
    std::fs::write(&path, out).unwrap();
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Bars of the probe's added ns per packet, one group per packet kind, one bar per
/// table size.
fn plot(figures: &[Figure]) -> String {
    let probe: Vec<&Figure> = figures
        .iter()
        .filter(|f| f.name.starts_with("probe_added_ns_"))
        .collect();
    let split = |f: &Figure| {
        let rest = f.name.trim_start_matches("probe_added_ns_");
        let (case, size) = rest.rsplit_once('_').unwrap();
        (case.to_string(), size.to_string())
    };
    let mut cases: Vec<String> = Vec::new();
    let mut sizes: Vec<String> = Vec::new();
    for f in &probe {
        let (c, s) = split(f);
        if !cases.contains(&c) {
            cases.push(c);
        }
        if !sizes.contains(&s) {
            sizes.push(s);
        }
    }
    let max = probe.iter().map(|f| f.value).fold(1.0, f64::max);
    let (bar, gap, height, left) = (14.0, 18.0, 220.0, 40.0);
    let group = bar * sizes.len() as f64 + gap;
    let width = left + group * cases.len() as f64 + 20.0;
    let colors = ["#4878d0", "#ee854a", "#6acc64", "#d65f5f"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"10\">\n<text x=\"4\" y=\"12\">ns per packet over XDP_PASS (BPF_PROG_TEST_RUN); bars: table pre-filled with {}</text>\n",
        height + 110.0,
        sizes.join(" / ")
    );
    for f in &probe {
        let (c, s) = split(f);
        let ci = cases.iter().position(|x| *x == c).unwrap() as f64;
        let si = sizes.iter().position(|x| *x == s).unwrap();
        let h = (f.value.max(0.0) / max) * height;
        let x = left + ci * group + si as f64 * bar;
        let y = 20.0 + height - h;
        svg += &format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {:.0} ns</title></rect>\n",
            bar - 1.0,
            colors[si % colors.len()],
            f.name,
            f.value
        );
        if si == 0 {
            svg += &format!(
                "<text x=\"{x:.1}\" y=\"{:.1}\" transform=\"rotate(40 {x:.1} {:.1})\">{c}</text>\n",
                height + 34.0,
                height + 34.0
            );
        }
    }
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{width}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"2\" y=\"24\">{max:.0}</text>\n<text x=\"2\" y=\"{}\">0</text>\n</svg>\n",
        20.0 + height,
        20.0 + height,
        20.0 + height
    );
    svg
}
