//! Live detection in the namespace lab: the real probe attached to veths, the real
//! Linux TCP stack as the headend, real and emulated cTCP clients.

use ackwatch::probe::{Probe, Settings};
use ackwatch_tests::lab::{HEADEND4, Lab, in_ns};
use aya::programs::xdp::XdpMode;

#[test]
fn healthy_tcp_flow_is_tracked_on_the_headend() {
    let lab = Lab::new();
    let mut probe = Probe::load(&Settings::default()).expect("load");
    in_ns(&lab.headend, || {
        probe.attach_ingress("h0", XdpMode::Default).expect("xdp");
        probe.attach_egress("h0").expect("tc");
    });
    let server = std::thread::spawn({
        let ns = lab.headend.clone();
        move || {
            ackwatch_tests::lab::enter(&ns);
            let l = std::net::TcpListener::bind("0.0.0.0:10000").unwrap();
            let (mut s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut buf).unwrap();
            buf.len()
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    in_ns(&lab.client, || {
        let mut s = std::net::TcpStream::connect((HEADEND4, 10000)).unwrap();
        std::io::Write::write_all(&mut s, &vec![7u8; 100_000]).unwrap();
    });
    assert_eq!(server.join().unwrap(), 100_000);
    let flows = probe.flows().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let f = &flows[0].1;
    println!(
        "{:?}",
        (
            f.half[0].packets,
            f.half[1].packets,
            f.half[0].bytes + f.half[1].bytes
        )
    );
    assert_eq!(f.half[0].bytes + f.half[1].bytes, 100_000);
}
