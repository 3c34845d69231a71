//! `ackwatch analyze`, the binary, on captures written here: the stall of a cTCP flow
//! with its details, the same verdict over every link type, and clear errors.

use std::path::Path;
use std::process::{Command, Output};

use ackwatch_tests::Scratch;
use ackwatch_tests::conversation::Step;
use ackwatch_tests::pcap::{
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, PcapWriter, relink,
};
use ackwatch_tests::scenario::ctcp_flow;
use serde_json::Value;

fn ackwatch(args: &[&str]) -> Output {
    Command::new(ackwatch_tests::ackwatch_binary())
        .args(args)
        .output()
        .expect("run ackwatch")
}

/// A healthy cTCP flow and one that stalls on its ninth segment, as a capture; times
/// from 2026-11-27 so timestamps read well.
fn steps() -> Vec<Step> {
    let server = "198.51.100.1:10000".parse().unwrap();
    let mut s = ctcp_flow(
        "192.0.2.20:40002".parse().unwrap(),
        server,
        20,
        Some(8),
        1500,
    );
    s.extend(ctcp_flow(
        "[2001:db8::10]:40001".parse().unwrap(),
        "[2001:db8::1]:10000".parse().unwrap(),
        20,
        None,
        0,
    ));
    s.sort_by_key(|x| x.at_ns);
    s
}

/// 2026-11-27T08:00:00Z.
const EPOCH: u64 = 1_795_766_400_000_000_000;

fn write(path: &Path, linktype: u32, steps: &[Step]) {
    let mut w = PcapWriter::new(std::fs::File::create(path).unwrap(), linktype).unwrap();
    for s in steps {
        w.write(EPOCH + s.at_ns, &relink(&s.frame, linktype))
            .unwrap();
    }
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect()
}

#[test]
fn reports_the_stall_with_its_details() {
    let d = Scratch::new("analyze-stall");
    let path = d.join("ctcp.pcap");
    write(&path, LINKTYPE_ETHERNET, &steps());
    let out = ackwatch(&["analyze", "--json", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows = json_lines(&out);
    assert_eq!(flows.len(), 2);
    let stalled: Vec<&Value> = flows
        .iter()
        .filter(|f| !f["stalls"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(stalled.len(), 1);
    let f = stalled[0];
    assert_eq!(f["client"], "192.0.2.20:40002");
    assert_eq!(f["server"], "198.51.100.1:10000");
    assert_eq!(f["class"], "ctcp");
    assert_eq!(f["state"], "stalled");
    let s = &f["stalls"][0];
    assert_eq!(s["hole_seq"], 1001 + 8 * 400);
    assert_eq!(s["stuck_side"], "client");
    assert_eq!(s["kind"], "unanswered");
    assert_eq!(s["loss"], "downstream");
    assert_eq!(s["outcome"], "open");
    assert!(
        s["start_ts"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-27T08:00:01.05"),
        "{}",
        s["start_ts"]
    );
    let d = &f["directions"];
    assert_eq!(d[0]["src"], "192.0.2.20:40002");
    assert_eq!(d[1]["dup_acks"], 26);
    assert_eq!(d[0]["retransmissions"], 0);
    for key in [
        "packets",
        "bytes",
        "fast_retransmissions",
        "spurious_retransmissions",
        "lost_segments",
        "acked_unseen",
        "zero_windows",
        "keep_alives",
    ] {
        assert!(
            d[0][key].is_u64() && d[1][key].is_u64(),
            "direction field {key}"
        );
    }
    // --stalled keeps only that flow; the readable report names it and what to do.
    assert_eq!(
        json_lines(&ackwatch(&[
            "analyze",
            "--json",
            "--stalled",
            path.to_str().unwrap()
        ]))
        .len(),
        1
    );
    let text =
        String::from_utf8_lossy(&ackwatch(&["analyze", path.to_str().unwrap()]).stdout).to_string();
    assert!(
        text.contains("192.0.2.20:40002 -> 198.51.100.1:10000 (ctcp): hole at seq 4201"),
        "{text}"
    );
    assert!(text.contains("tcp-state-bypass"), "{text}");
}

#[test]
fn every_link_type_gives_the_same_flows() {
    let steps = steps();
    let d = Scratch::new("analyze-links");
    let mut outputs = Vec::new();
    for lt in [
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
    ] {
        let path = d.join(&format!("ctcp-{lt}.pcap"));
        write(&path, lt, &steps);
        let out = ackwatch(&["analyze", "--json", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "link type {lt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(json_lines(&out));
    }
    assert_eq!(outputs[0].len(), 2);
    for o in &outputs[1..] {
        assert_eq!(o, &outputs[0]);
    }
}

#[test]
fn options_change_the_verdict() {
    let d = Scratch::new("analyze-options");
    let path = d.join("ctcp-opts.pcap");
    write(&path, LINKTYPE_ETHERNET, &steps());
    let p = path.to_str().unwrap();
    let stalls = |args: &[&str]| -> usize {
        let mut a = vec!["analyze", "--json", "--stalled"];
        a.extend_from_slice(args);
        a.push(p);
        json_lines(&ackwatch(&a)).len()
    };
    assert_eq!(stalls(&[]), 1);
    assert_eq!(
        stalls(&["--stall-timeout", "5s"]),
        0,
        "the hole stays open 1.5 s only"
    );
    assert_eq!(stalls(&["--dupack-threshold", "100"]), 0);
    assert_eq!(
        stalls(&["--ctcp-port", "443"]),
        1,
        "the payload signature still marks it cTCP"
    );
}

#[test]
fn clear_errors_and_exit_codes() {
    let d = Scratch::new("analyze-errors");
    let missing = ackwatch(&["analyze", d.join("nope.pcap").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such file"));

    let text = d.join("notes.txt");
    std::fs::write(&text, "not a capture at all").unwrap();
    let out = ackwatch(&["analyze", text.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pcap or pcapng file"));

    let wifi = d.join("wifi.pcap");
    PcapWriter::new(std::fs::File::create(&wifi).unwrap(), 105).unwrap();
    let out = ackwatch(&["analyze", wifi.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported link type"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Cut in the middle of a record: the flows up to there, and exit code 1.
    let full = d.join("full.pcap");
    write(&full, LINKTYPE_ETHERNET, &steps());
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = ackwatch(&["analyze", "--json", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated or corrupt after") && err.contains("frames"),
        "{err}"
    );
    assert_eq!(
        json_lines(&out).len(),
        2,
        "the flows read before the cut are reported"
    );

    for bad in [
        &["analyze", "--stall-timeout", "soon", "x.pcap"][..],
        &["analyze", "--ctcp-port", "70000", "x.pcap"],
    ] {
        let out = ackwatch(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
