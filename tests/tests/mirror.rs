//! Mirror ports (issue 13): copies plain or in VXLAN, GENEVE, ERSPAN II / III, outer
//! IPv4 or IPv6, through the host's parser and the kernel's mirror program
//! (BPF_PROG_TEST_RUN), which must agree; what cannot be read is counted, passed (or
//! dropped with --mirror-drop) and never becomes a flow. Kernel tests need root.

use std::net::SocketAddr;

use ackwatch::kernel::probe::{Mirror, Settings};
use ackwatch_tests::encap::{TUNNELS, Tunnel, inner_offset, wrap};
use ackwatch_tests::frames::{L2, segment};
use ackwatch_tests::harness::{Host, Kernel};
use ackwatch_tests::scenario::ctcp_flow;
use ackwatch_tests::tshark;
use ebpf_probe::abi::{StallWhat, counter};
use ebpf_probe::decap::{Copy, Encap, Inner, TunnelPorts, copy_start};
use ebpf_probe::parse::{LinkKind, parse};
use serde_json::Value;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn ports() -> TunnelPorts {
    TunnelPorts::new(&[], &[]).unwrap()
}

fn encap_of(t: &Tunnel) -> Encap {
    match t {
        Tunnel::Vxlan { .. } => Encap::Vxlan,
        Tunnel::Geneve { .. } => Encap::Geneve,
        Tunnel::Erspan2 => Encap::Erspan2,
        Tunnel::Erspan3 { .. } => Encap::Erspan3,
    }
}

/// The inner frames the tests wrap: IPv4 and IPv6, untagged and with two VLAN tags.
fn inner_frames() -> Vec<Vec<u8>> {
    let qinq = L2::Vlan(vec![(0x88a8, 9), (0x8100, 5)]);
    vec![
        segment("10.1.0.1:40000", "10.1.0.2:10000", &L2::Ethernet, 64),
        segment("[fd00::1]:40000", "[fd00::2]:10000", &L2::Ethernet, 64),
        segment("10.1.0.1:40000", "10.1.0.2:10000", &qinq, 64),
        segment("[fd00::1]:40000", "[fd00::2]:10000", &qinq, 0),
    ]
}

/// The copy found in `outer`, and its inner frame parsed.
fn decap(outer: &[u8]) -> Result<(Copy, ebpf_probe::parse::Packet), u32> {
    let c = copy_start(&outer, &ports())?;
    let inner = Inner {
        outer: &outer,
        base: c.base,
    };
    Ok((c, parse(&inner, LinkKind::Ethernet)?))
}

#[test]
fn host_reads_every_encapsulation_as_the_frame_inside() {
    let mut n = 0;
    for inner in inner_frames() {
        let want = parse(&inner.as_slice(), LinkKind::Ethernet).expect("inner parses");
        let (plain, pkt) = decap(&inner).expect("plain copy");
        assert_eq!((plain.base, plain.encap, pkt), (0, Encap::None, want));
        for t in &TUNNELS {
            for v6 in [false, true] {
                for vlan in [None, Some(7)] {
                    let outer = wrap(&inner, t, v6, vlan);
                    let (c, pkt) = decap(&outer).unwrap_or_else(|r| {
                        panic!("{t:?} v6={v6} vlan={vlan:?}: refused, reason {r}")
                    });
                    assert_eq!(c.encap, encap_of(t), "{t:?}");
                    assert_eq!(c.base, inner_offset(t, v6, vlan), "{t:?} v6={v6}");
                    assert_eq!(pkt, want, "{t:?} v6={v6} vlan={vlan:?}");
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 4 * TUNNELS.len() * 4);
}

#[test]
fn host_reads_configured_ports_only() {
    let inner = &inner_frames()[0];
    let on = |port| wrap(inner, &Tunnel::Vxlan { port }, false, None);
    let custom = TunnelPorts::new(&[8472], &[]).unwrap();
    assert_eq!(
        copy_start(&on(8472).as_slice(), &custom).unwrap().encap,
        Encap::Vxlan
    );
    // 4789 is not read when other ports are given: a plain UDP packet.
    let c = copy_start(&on(4789).as_slice(), &custom).unwrap();
    assert_eq!(c.encap, Encap::None);
    assert!(TunnelPorts::new(&[1, 2, 3, 4, 5], &[]).is_none());
}

/// Where `t`'s own header starts in a copy whose outer L4 header starts at `l4`: past
/// UDP's 8 bytes, or at GRE's.
fn tunnel_header(t: &Tunnel, l4: usize) -> usize {
    match t {
        Tunnel::Vxlan { .. } | Tunnel::Geneve { .. } => l4 + 8,
        Tunnel::Erspan2 | Tunnel::Erspan3 { .. } => l4,
    }
}

/// Copies the probe cannot read, each with the reason it must count.
fn unreadable() -> Vec<(&'static str, Vec<u8>, u32)> {
    let inner = &inner_frames()[0];
    let ack = segment("10.1.0.1:40000", "10.1.0.2:10000", &L2::Ethernet, 0);
    let vxlan = Tunnel::Vxlan { port: 4789 };
    let patch = |t: &Tunnel, at_tunnel: usize, f: &dyn Fn(&mut u8)| {
        let mut w = wrap(inner, t, false, None);
        f(&mut w[tunnel_header(t, 34) + at_tunnel]);
        w
    };
    let mut out = vec![
        (
            "vxlan without the I flag",
            patch(&vxlan, 0, &|b| *b = 0),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "geneve options past the frame",
            {
                let t = Tunnel::Geneve {
                    port: 6081,
                    option_words: 3,
                };
                let mut w = wrap(&ack, &t, false, None);
                w[42] |= 0x3f;
                w
            },
            counter::ENCAP_TRUNCATED,
        ),
        (
            "geneve version 1",
            patch(&TUNNELS[1], 0, &|b| *b |= 0x40),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "erspan II of version 2",
            patch(&Tunnel::Erspan2, 8, &|b| *b = 0x20),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "erspan III carrying IP (frame type 2)",
            patch(&TUNNELS[3], 18, &|b| *b = 0x08),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "erspan III of version 1",
            patch(&TUNNELS[3], 8, &|b| *b = 0x10),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "erspan type I (no sequence number)",
            patch(&Tunnel::Erspan2, 0, &|b| *b = 0),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "gre with routing",
            patch(&Tunnel::Erspan2, 0, &|b| *b |= 0x40),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "gre carrying another protocol (0x08be)",
            patch(&Tunnel::Erspan2, 2, &|b| *b = 0x08),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "vxlan in vxlan",
            wrap(&wrap(inner, &vxlan, false, None), &vxlan, true, None),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "erspan III in geneve",
            wrap(
                &wrap(inner, &TUNNELS[4], true, None),
                &TUNNELS[1],
                false,
                Some(3),
            ),
            counter::ENCAP_UNSUPPORTED,
        ),
        (
            "a first fragment of a vxlan packet",
            {
                let mut w = wrap(inner, &vxlan, false, None);
                w[20] |= 0x20; // MF
                w
            },
            counter::ENCAP_UNSUPPORTED,
        ),
    ];
    // Cut inside the tunnel headers or the inner Ethernet header, for every kind.
    for t in &TUNNELS {
        for v6 in [false, true] {
            let w = wrap(inner, t, v6, None);
            let base = inner_offset(t, v6, None);
            let l4 = 14 + if v6 { 40 } else { 20 };
            for cut in [tunnel_header(t, l4) + 1, base - 1, base + 13] {
                out.push((
                    "cut in the tunnel headers",
                    w[..cut].to_vec(),
                    counter::ENCAP_TRUNCATED,
                ));
            }
        }
    }
    out
}

#[test]
fn host_counts_what_it_cannot_read_and_never_makes_a_flow_of_it() {
    for (what, f, reason) in unreadable() {
        assert_eq!(decap(&f).err(), Some(reason), "{what}");
    }
    // Every cut of every copy: never a packet (the inner IP length runs past the end).
    for inner in inner_frames() {
        for t in &TUNNELS {
            for v6 in [false, true] {
                let w = wrap(&inner, t, v6, Some(1));
                for cut in 0..w.len() {
                    assert!(decap(&w[..cut]).is_err(), "{t:?} v6={v6} cut at {cut}");
                }
            }
        }
    }
}

fn mirror_settings(drop: bool) -> Settings {
    Settings {
        mirror: Some(Mirror {
            ports: ports(),
            drop,
        }),
        ..Settings::default()
    }
}

/// A stalled cTCP flow per encapsulation (and plain), both directions copied to the
/// mirror port, with unreadable copies among them: the kernel's mirror program and the
/// host agree on every flow, counter and stall record; each flow stalls on its hole.
#[test]
fn kernel_and_host_agree_on_copies() {
    let server: SocketAddr = "198.51.100.1:10000".parse().unwrap();
    let kinds: Vec<Option<&Tunnel>> = std::iter::once(None)
        .chain(TUNNELS.iter().map(Some))
        .collect();
    let mut steps = Vec::new();
    for (i, t) in kinds.iter().enumerate() {
        let client = SocketAddr::new("192.0.2.20".parse().unwrap(), 40_000 + i as u16);
        for s in ctcp_flow(client, server, 20, Some(8), 1500) {
            let copy = match t {
                Some(t) => wrap(&s.frame, t, i % 2 == 1, None),
                None => s.frame,
            };
            steps.push((s.at_ns + i as u64, copy));
        }
    }
    let bad = unreadable();
    for (i, (_, f, _)) in bad.iter().enumerate() {
        steps.push((1_000_000_000 + i as u64 * 7_000_000, f.clone()));
    }
    steps.sort_by_key(|s| s.0);
    let settings = mirror_settings(false);
    let mut k = Kernel::load(settings.clone());
    let mut h = Host::new(settings);
    for (at, f) in &steps {
        assert_eq!(
            k.feed_mirror(f, *at),
            XDP_PASS,
            "copies pass without --mirror-drop"
        );
        h.feed_mirror(f, *at);
    }
    let (ks, hs) = (k.snapshot(), h.snapshot());
    assert_eq!(ks, hs, "kernel and host differ");
    assert_eq!(k.events(), h.events, "stall records differ");
    let c = &ks.counters;
    let per_flow = steps.len() - bad.len();
    for (e, t) in kinds.iter().enumerate() {
        let want = (per_flow / kinds.len()) as u64;
        let encap = t.map_or(Encap::None, encap_of) as u32;
        let kinds_here = kinds
            .iter()
            .filter(|k| k.map_or(Encap::None, encap_of) as u32 == encap)
            .count();
        assert_eq!(
            c[(counter::MIRROR_FRAMES + encap) as usize],
            want * kinds_here as u64,
            "copies of kind {e}"
        );
    }
    let bad_by = |r| bad.iter().filter(|b| b.2 == r).count() as u64;
    for r in [counter::ENCAP_TRUNCATED, counter::ENCAP_UNSUPPORTED] {
        assert_eq!(c[r as usize], bad_by(r), "reason {r}");
    }
    assert_eq!(
        ks.flows.len(),
        kinds.len(),
        "one flow per stalled copy stream, none from bad input"
    );
    let started: Vec<_> = h
        .events
        .iter()
        .filter(|e| e.what == StallWhat::Started as u8)
        .collect();
    assert_eq!(started.len(), kinds.len(), "{started:?}");
    assert!(started.iter().all(|e| e.hole == 1001 + 8 * 400));
}

/// With --mirror-drop every copy is dropped after analysis, the port's ARP passes; the
/// counts are those of a passing probe.
#[test]
fn mirror_drop_drops_copies_after_analysis() {
    let mut k = Kernel::load(mirror_settings(true));
    let inner = &inner_frames()[0];
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(k.feed_mirror(&arp, 1), XDP_PASS, "ARP");
    assert_eq!(k.feed_mirror(inner, 2), XDP_DROP, "plain copy");
    for (i, t) in TUNNELS.iter().enumerate() {
        assert_eq!(
            k.feed_mirror(&wrap(inner, t, i % 2 == 0, None), 3),
            XDP_DROP,
            "{t:?}"
        );
    }
    for (what, f, _) in unreadable() {
        assert_eq!(k.feed_mirror(&f, 4), XDP_DROP, "{what}");
    }
    let c = k.snapshot().counters;
    assert_eq!(
        c[counter::PACKETS_XDP as usize],
        2 + TUNNELS.len() as u64 + unreadable().len() as u64
    );
    assert_eq!(c[(counter::MIRROR_FRAMES + Encap::None as u32) as usize], 2);
}

/// `ackwatch analyze --mirror` on a capture of each encapsulation (one stalled cTCP
/// flow each, both directions): the verdict and counts of the same flow captured plain.
#[test]
fn analyze_reads_captures_of_every_encapsulation() {
    use ackwatch_tests::pcap::{LINKTYPE_ETHERNET, PcapWriter};
    let scratch = ackwatch_tests::Scratch::new("mirror-analyze");
    let steps = ctcp_flow(
        "192.0.2.20:40002".parse().unwrap(),
        "198.51.100.1:10000".parse().unwrap(),
        20,
        Some(8),
        1500,
    );
    let analyze = |name: &str, wrap_one: &dyn Fn(&[u8]) -> Vec<u8>| -> Vec<Value> {
        let file = scratch.join(name);
        let mut w = PcapWriter::new(std::fs::File::create(&file).unwrap(), LINKTYPE_ETHERNET)
            .expect("pcap");
        for s in &steps {
            w.write(s.at_ns, &wrap_one(&s.frame)).expect("write");
        }
        drop(w);
        let out = std::process::Command::new(ackwatch_tests::ackwatch_binary())
            .args(["analyze", "--mirror", "--json"])
            .arg(&file)
            .output()
            .expect("ackwatch analyze");
        assert!(out.status.success(), "{name}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Timestamps differ by nothing, so the whole report must be the same.
    let plain = analyze("plain.pcap", &|f| f.to_vec());
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(
        plain[0]["stalls"][0]["hole_seq"],
        1001 + 8 * 400,
        "{plain:?}"
    );
    for (i, t) in TUNNELS.iter().enumerate() {
        for v6 in [false, true] {
            let name = format!("{i}-{v6}.pcap");
            let got = analyze(&name, &|f| wrap(f, t, v6, Some(12)));
            assert_eq!(got, plain, "{t:?} v6={v6}");
            // Wireshark reads these tunnels too: the same counts, by the inner flow.
            if !v6 {
                let file = scratch.join(&name);
                let (want, got) = (
                    tshark::inner_counts(&file),
                    tshark::mirror_analyze_counts(&file),
                );
                assert!(!want.is_empty(), "tshark found no TCP in {t:?}");
                assert_eq!(got, want, "{t:?}: ackwatch analyze --mirror against tshark");
            }
        }
    }
}

/// Mirror options that cannot work are bad input: one line, exit code 2, before
/// anything is loaded (the non-Ethernet port is a tun device in a namespace of the
/// test's own, the pin path off any BPF filesystem).
#[test]
fn bad_mirror_options_get_exit_code_2() {
    use ackwatch_tests::lab::sh;
    let bin = ackwatch_tests::ackwatch_binary();
    let ns = format!("awm{}", std::process::id());
    sh(&format!("ip netns add {ns}"));
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _gone = Gone(ns.clone());
    sh(&format!("ip -n {ns} tuntap add mode tun name tun0"));
    let ports: Vec<&str> = ["1", "2", "3", "4", "5"]
        .iter()
        .flat_map(|p| ["--vxlan-port", p])
        .collect();
    let five = [&["run", "--iface", "lo", "--mirror"][..], &ports].concat();
    let pins = "/proc/ackwatch-mirror-test";
    for (args, says) in [
        (&["run", "--iface", "lo", "--mirror-drop"][..], "--mirror"),
        (&five[..], "at most 4"),
        (&["analyze", "--vxlan-port", "4790", "x.pcap"], "--mirror"),
        (
            &["run", "--iface", "tun0", "--mirror", "--pin-path", pins],
            "tun0 is not an Ethernet interface",
        ),
    ] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&bin)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A lossy mirror: VXLAN copies of a stalling cTCP flow, three of the client's segments
/// before the hole missing (the mirror dropped them; the headend got and acknowledged
/// them). The stall stands on the headend's ACK, with its hole, in the kernel and the
/// host alike, and the flow counts what the monitor did not see as ACKed-unseen.
#[test]
fn a_lossy_mirror_still_reports_the_stall_and_counts_what_it_missed() {
    use ebpf_probe::abi::event;
    let client: SocketAddr = "192.0.2.20:40002".parse().unwrap();
    let server: SocketAddr = "198.51.100.1:10000".parse().unwrap();
    let missed = |f: &[u8]| {
        let p = parse(&f, LinkKind::Ethernet).expect("a TCP frame");
        p.src_port() == client.port()
            && p.seg.seglen > 0
            && (1001 + 2 * 400..1001 + 5 * 400).contains(&p.seg.seq)
    };
    let settings = mirror_settings(false);
    let mut k = Kernel::load(settings.clone());
    let mut h = Host::new(settings);
    let mut skipped = 0;
    for s in ctcp_flow(client, server, 20, Some(8), 1500) {
        if missed(&s.frame) {
            skipped += 1;
            continue;
        }
        let copy = wrap(&s.frame, &TUNNELS[0], false, None);
        k.feed_mirror(&copy, s.at_ns);
        h.feed_mirror(&copy, s.at_ns);
    }
    assert_eq!(skipped, 3);
    let (ks, events) = (k.snapshot(), k.events());
    assert_eq!(ks, h.snapshot(), "kernel and host differ");
    assert_eq!(events, h.events, "stall records differ");
    let started: Vec<_> = events
        .iter()
        .filter(|e| e.what == StallWhat::Started as u8)
        .collect();
    assert_eq!(started.len(), 1, "{events:?}");
    assert_eq!(started[0].hole, 1001 + 8 * 400);
    let (key, flow) = &ks.flows[0];
    let headend = usize::from(key.port[1] == server.port());
    assert!(
        flow.half[headend].events[event::ACKED_UNSEEN] > 0,
        "the headend's ACKs of unseen data: {:?}",
        flow.half[headend].events
    );
}
