//! `cargo xtask demo`: a healthy and a stalled cTCP flow replayed through the real,
//! loaded probe (BPF_PROG_TEST_RUN), then what ackwatch saw. Needs root.

use ackwatch::probe::Settings;
use ackwatch_tests::harness::Kernel;
use ackwatch_tests::scenario::ctcp_flow;
use ebpf_probe::abi::{FlowState, LossSide, StallKind, StallWhat, counter, event};

fn main() {
    let healthy = ctcp_flow(
        "192.0.2.10:40001".parse().unwrap(),
        "198.51.100.1:10000".parse().unwrap(),
        20,
        None,
        0,
    );
    let stalled = ctcp_flow(
        "192.0.2.20:40002".parse().unwrap(),
        "198.51.100.1:10000".parse().unwrap(),
        20,
        Some(8),
        1500,
    );
    println!("ackwatch demo: loading the probe (XDP + TC programs) into this kernel...");
    let mut k = Kernel::load(Settings::default());
    let mut steps: Vec<_> = healthy.into_iter().chain(stalled).collect();
    steps.sort_by_key(|s| s.at_ns);
    println!(
        "replaying {} packets: a healthy cTCP flow, and one whose ninth segment is lost after the monitor",
        steps.len()
    );
    for s in &steps {
        k.feed(s.hook, &s.frame, s.at_ns);
    }
    println!("\nstall events from the ring buffer:");
    for e in k.events() {
        let what = StallWhat::try_from(e.what)
            .map(|w| format!("{w:?}"))
            .unwrap_or_default();
        let kind = StallKind::try_from(e.kind)
            .map(|w| format!("{w:?}"))
            .unwrap_or_default();
        let loss = LossSide::try_from(e.loss)
            .map(|w| format!("{w:?}"))
            .unwrap_or_default();
        let stuck = if e.stuck == e.client {
            "client"
        } else {
            "server"
        };
        println!(
            "  {what:<9} stuck={stuck} kind={kind} loss={loss} hole_seq={} dup_acks={} after {} ms",
            e.hole,
            e.dup_acks,
            (e.at - e.since) / 1_000_000
        );
    }
    println!("\nflow table:");
    for (key, f) in k.snapshot().flows {
        let c = f.client as usize & 1;
        let client = format!(
            "{}:{}",
            std::net::Ipv6Addr::from(key.addr_bytes(c)).to_canonical(),
            key.port[c]
        );
        let state = FlowState::try_from(f.state)
            .map(|s| format!("{s:?}"))
            .unwrap_or_default();
        let [cl, sv] = [&f.half[c], &f.half[c ^ 1]];
        println!(
            "  {client:<22} state={state:<9} client pkts={} server pkts={} server dup_acks={} client retransmissions={}",
            cl.packets,
            sv.packets,
            sv.events[event::DUP_ACK],
            cl.events[event::RETRANSMISSION]
        );
    }
    let c = k.probe.counters().expect("counters");
    println!(
        "\ncounters: xdp packets={} tc packets={} tracked={}",
        c[counter::PACKETS_XDP as usize],
        c[counter::PACKETS_TC as usize],
        c[counter::TRACKED as usize]
    );
}
