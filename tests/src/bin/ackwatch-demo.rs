//! `cargo xtask demo`: the lab, the `ackwatch run` agent on the headend, a healthy real
//! TCP flow and a cTCP flow whose ninth segment is lost after the probe; then what an
//! operator sees: the agent's JSON events, `ackwatch flows`, the metrics. Cleans up
//! after itself. Needs root.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ackwatch_tests::ctcp::CtcpClient;
use ackwatch_tests::lab::{CLIENT4, HEADEND4, Lab, enter, in_ns};
use ackwatch_tests::live::{AGENT_ADDR, Agent, Headend, http_get};

fn main() {
    println!("== building the lab: client -- gateway -- headend (network namespaces, veths)");
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
    println!("== starting the agent on the headend: ackwatch run --iface h0 --listen {AGENT_ADDR}");
    let agent = Agent::on_headend(&lab, &["--log-level", "warn"]);
    println!(
        "== traffic: a real TCP upload of 2 MB, and a cTCP client whose 9th segment is dropped inside the headend"
    );

    let server: SocketAddr = format!("{HEADEND4}:10000").parse().unwrap();
    let ctcp_client: SocketAddr = format!("{CLIENT4}:50000").parse().unwrap();
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
        println!("\n== the agent's events (stdout, JSON lines):");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            if let Some(e) = agent.next_event(Duration::from_millis(100)) {
                println!("{e}");
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1100)); // one sweep: the metrics catch up
    println!("\n== ackwatch flows");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.headend])
        .arg(ackwatch_tests::ackwatch_binary())
        .args(["flows", "--api", AGENT_ADDR])
        .output()
        .expect("ackwatch flows");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\n== GET /metrics (excerpt)");
    let (_, metrics) = http_get(&lab.headend, AGENT_ADDR, "/metrics");
    for l in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("ackwatch_stall")
                || l.starts_with("ackwatch_packets")
                || l.starts_with("ackwatch_flow_table"))
    }) {
        if !l.contains("_bucket") {
            println!("{l}");
        }
    }
    headend.stop();
    println!("\n== stopping the agent (SIGTERM: it detaches) and removing the lab");
    agent.stop();
}
