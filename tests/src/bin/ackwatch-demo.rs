//! `cargo xtask demo`: the lab with the probe on the headend, a healthy real TCP flow
//! and a cTCP flow whose ninth segment is lost after the probe, then what ackwatch saw:
//! the stall as it is reported, the flow table with what to do, the counters. Cleans up
//! after itself. Needs root.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ackwatch::flows::{self, FlowReport};
use ackwatch::probe::Settings;
use ackwatch_tests::ctcp::CtcpClient;
use ackwatch_tests::lab::{CLIENT4, HEADEND4, Lab, enter, in_ns};
use ackwatch_tests::live::{Headend, Placement, attach};
use ebpf_probe::abi::{StallWhat, counter};

fn main() {
    let offset = flows::monotonic_to_wall();
    println!("ackwatch demo: building the lab: client -- gateway -- headend (network namespaces)");
    let lab = Lab::new();
    lab.quiet_client_kernel();
    let (isn, len) = (1000u32, 400usize);
    let hole = isn + 1 + 8 * len as u32;
    lab.nft_rule(
        &lab.headend,
        "demo_loss",
        "input",
        &format!("tcp dport 10000 tcp sequence {hole} drop"),
    );
    let headend = Headend::start(&lab, &[10_000]);
    let mut probe = attach(&lab, &Settings::default(), Placement::Headend);
    println!(
        "probe attached to the headend's h0: XDP ingress, TC egress; K = 3 duplicate ACKs, T = 1 s"
    );
    println!(
        "traffic: a real TCP upload of 2 MB, and a cTCP client whose 9th segment is dropped inside the headend\n"
    );

    let server: SocketAddr = format!("{HEADEND4}:10000").parse().unwrap();
    let ctcp_client: SocketAddr = format!("{CLIENT4}:50000").parse().unwrap();
    let mut episodes: HashMap<_, Vec<_>> = HashMap::new();
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&lab.client);
            let mut c = std::net::TcpStream::connect(server).expect("connect");
            std::io::Write::write_all(&mut c, &vec![0x42u8; 2_000_000]).expect("upload");
        });
        s.spawn(|| {
            in_ns(&lab.client, || {
                let mut c = CtcpClient::connect(ctcp_client, server, isn).expect("cTCP handshake");
                for _ in 0..40 {
                    c.send_data(len).unwrap();
                    c.ignore_for(Duration::from_millis(50)).unwrap();
                }
            })
        });
        while start.elapsed() < Duration::from_millis(2300) {
            for r in probe.drain_events().expect("events") {
                let what = StallWhat::try_from(r.what)
                    .map(|w| format!("{w:?}"))
                    .unwrap_or_default();
                let stuck = flows::endpoint(&r.key, r.stuck as usize);
                println!(
                    "event  {} stall {what}: {stuck} is stuck, hole at seq {}, {} duplicate ACKs, {}, loss {}",
                    flows::rfc3339(r.at + offset),
                    r.hole,
                    r.dup_acks,
                    flows::kind_name(r.kind),
                    flows::loss_name(r.loss)
                );
                flows::apply(episodes.entry(r.key).or_default(), &r, offset);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    headend.stop();
    let reports: Vec<FlowReport> = probe
        .flows()
        .expect("flows")
        .iter()
        .map(|(k, f)| FlowReport::new(k, f, episodes.remove(k).unwrap_or_default(), offset))
        .collect();
    let counters = probe.counters().expect("counters");
    println!("\nflow table:");
    let mut out = std::io::stdout();
    ackwatch::report::text(
        &mut out,
        &reports,
        &counters,
        counters[counter::PACKETS_XDP as usize] + counters[counter::PACKETS_TC as usize],
    )
    .unwrap();
    println!("\nremoving the lab and the probe");
}
