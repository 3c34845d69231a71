//! Malformed and out-of-scope input through the real programs: every truncation of
//! valid frames, bad header lengths, fragments, extension-header chains, random bytes.
//! The verdict is always pass, the right reason counter moves (the same one the host
//! parser names), and no flow's state changes.

use ackwatch::kernel::probe::Settings;
use ackwatch_tests::frames::{L2, segment};
use ackwatch_tests::harness::{Hook, Kernel};
use ackwatch_tests::scenario::ctcp_flow;
use ebpf_probe::abi::counter;
use ebpf_probe::parse::{LinkKind, parse};
use rand::{Rng, SeedableRng};

const ETH: LinkKind = LinkKind::Ethernet;

fn data_segment(src: &str, dst: &str, l2: &L2) -> Vec<u8> {
    segment(src, dst, l2, 64)
}

fn valid_frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "ipv4",
            data_segment("10.1.0.1:40000", "10.1.0.2:10000", &L2::Ethernet),
        ),
        (
            "ipv6",
            data_segment("[fd00::1]:40000", "[fd00::2]:10000", &L2::Ethernet),
        ),
        (
            "vlan-ipv4",
            data_segment(
                "10.1.0.1:40000",
                "10.1.0.2:10000",
                &L2::Vlan(vec![(0x8100, 5)]),
            ),
        ),
        (
            "qinq-ipv6",
            data_segment(
                "[fd00::1]:40000",
                "[fd00::2]:10000",
                &L2::Vlan(vec![(0x88a8, 9), (0x8100, 5)]),
            ),
        ),
    ]
}

/// A kernel with one established, stalled cTCP flow whose state must not move.
fn kernel_with_a_flow() -> Kernel {
    let mut k = Kernel::load(Settings::default());
    let client = "192.0.2.20:40002".parse().unwrap();
    for s in ctcp_flow(
        client,
        "198.51.100.1:10000".parse().unwrap(),
        10,
        Some(4),
        1500,
    ) {
        k.feed(s.hook, &s.frame, s.at_ns);
    }
    assert_eq!(k.snapshot().flows.len(), 1);
    k
}

/// Feeds `frame` to both programs; asserts pass, the expected reason counter moved by
/// exactly one per program, and the flow table did not change.
fn feed_expecting(k: &mut Kernel, frame: &[u8], reason: u32, what: &str) {
    let before = k.snapshot();
    let mut ran = 0;
    for hook in [Hook::Xdp(ETH), Hook::Tc(ETH)] {
        let v = match k.try_feed(hook, frame, 3_000_000_000) {
            Ok(v) => v,
            // The kernel's TC test run wants a whole IP header behind an IP ethertype.
            Err(e) if matches!(hook, Hook::Tc(_)) && frame.len() < 14 + 40 => {
                let _ = e;
                continue;
            }
            Err(e) => panic!("{what}: {hook:?} refused by the kernel: {e}"),
        };
        ran += 1;
        let pass = match hook {
            Hook::Xdp(_) => v == 2,
            Hook::Tc(_) => v as i32 == -1,
        };
        assert!(pass, "{what}: {hook:?} returned {v}");
    }
    let after = k.snapshot();
    let name = counter::REASON_NAMES
        .get(reason as usize)
        .copied()
        .unwrap_or("tracked");
    assert_eq!(
        after.counters[reason as usize],
        before.counters[reason as usize] + ran,
        "{what}: counter {name} did not move"
    );
    assert_eq!(after.flows, before.flows, "{what}: a flow changed");
}

#[test]
fn every_truncation_passes_and_counts_truncated() {
    let mut k = kernel_with_a_flow();
    let mut checked = 0;
    for (name, f) in valid_frames() {
        assert!(parse(&f.as_slice(), ETH).is_ok(), "{name} must parse whole");
        for len in 0..f.len() {
            let cut = &f[..len];
            let host = parse(&cut, ETH).expect_err("a truncated frame must not parse");
            // Only whole IP packets count: anything shorter is truncated.
            assert_eq!(
                host,
                counter::TRUNCATED,
                "{name} cut at {len}: host says {host}"
            );
            // BPF_PROG_TEST_RUN needs an Ethernet header's worth of bytes.
            if len >= 14 {
                feed_expecting(&mut k, cut, host, &format!("{name} cut at {len}"));
                checked += 1;
            }
        }
    }
    assert!(checked > 400);
}

#[test]
fn bad_header_lengths_pass_and_count() {
    let mut k = kernel_with_a_flow();
    let base = data_segment("10.1.0.1:40000", "10.1.0.2:10000", &L2::Ethernet);
    let mut cases: Vec<(String, Vec<u8>, u32)> = Vec::new();
    for ihl in 0..5u8 {
        let mut f = base.clone();
        f[14] = 0x40 | ihl;
        cases.push((format!("IHL {ihl}"), f, counter::BAD_HEADER_LEN));
    }
    let tcp = 14 + 20;
    for doff in [0u8, 4] {
        let mut f = base.clone();
        f[tcp + 12] = doff << 4;
        cases.push((
            format!("TCP data offset {doff}"),
            f,
            counter::BAD_HEADER_LEN,
        ));
    }
    let mut f = base.clone();
    let ip_len = (f.len() - 14) as u16;
    // Data offset 15 (60 bytes) in a packet whose TCP part is shorter: past the end.
    f.truncate(14 + 20 + 40);
    f[16..18].copy_from_slice(&(60u16).to_be_bytes());
    f[tcp + 12] = 15 << 4;
    cases.push((
        "TCP data offset past the end".into(),
        f,
        counter::BAD_HEADER_LEN,
    ));
    let mut f = base.clone();
    f[16..18].copy_from_slice(&(ip_len + 100).to_be_bytes());
    cases.push((
        "IP total length past the frame".into(),
        f,
        counter::TRUNCATED,
    ));
    let mut f = base.clone();
    f[16..18].copy_from_slice(&0u16.to_be_bytes());
    cases.push((
        "IP total length 0 in a packet under 64 KB (not BIG TCP)".into(),
        f,
        counter::BAD_HEADER_LEN,
    ));
    let mut f = base.clone();
    f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    cases.push(("non-first IPv4 fragment".into(), f, counter::FRAGMENT));
    let mut f = base.clone();
    f[23] = 17;
    cases.push(("UDP".into(), f, counter::NOT_TCP));
    let mut f = base.clone();
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    cases.push(("ARP".into(), f, counter::NOT_IP));
    let v6 = data_segment("[fd00::1]:40000", "[fd00::2]:10000", &L2::Ethernet);
    cases.push((
        "IPv6, 5 extension headers".into(),
        with_ipv6_ext(&v6, 5, false),
        counter::EXT_HEADER_LIMIT,
    ));
    cases.push((
        "IPv6 non-first fragment".into(),
        with_ipv6_ext(&v6, 0, true),
        counter::FRAGMENT,
    ));
    for (what, f, reason) in cases {
        assert_eq!(
            parse(&f.as_slice(), ETH).err(),
            Some(reason),
            "{what}: host parser"
        );
        feed_expecting(&mut k, &f, reason, &what);
    }
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_walked() {
    let v4 = data_segment("10.1.0.1:40000", "10.1.0.2:10000", &L2::Ethernet);
    let mut opts = v4[..14].to_vec();
    opts.push(0x46);
    opts.extend_from_slice(&v4[15..16]);
    let len = u16::from_be_bytes([v4[16], v4[17]]) + 4;
    opts.extend_from_slice(&len.to_be_bytes());
    opts.extend_from_slice(&v4[18..34]);
    opts.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    opts.extend_from_slice(&v4[34..]);
    let a = parse(&v4.as_slice(), ETH).unwrap();
    let b = parse(&opts.as_slice(), ETH).unwrap();
    assert_eq!(a, b, "IPv4 options change nothing about the segment");
    let v6 = data_segment("[fd00::1]:40000", "[fd00::2]:10000", &L2::Ethernet);
    let a = parse(&v6.as_slice(), ETH).unwrap();
    let b = parse(&with_ipv6_ext(&v6, 4, false).as_slice(), ETH).unwrap();
    assert_eq!(a, b, "four extension headers are walked");
    // And the kernel tracks them the same way: two new flows, one per family (pending:
    // each is seen from one side only).
    let mut k = Kernel::load(Settings::default());
    for f in [&opts, &with_ipv6_ext(&v6, 4, false)] {
        k.feed(Hook::Xdp(ETH), f, 5_000_000_000);
    }
    assert_eq!(k.snapshot().pending.len(), 2);
    assert_eq!(k.snapshot().counters[counter::TRACKED as usize], 2);
}

/// `n` destination-options headers in front of TCP, or one non-first fragment header.
fn with_ipv6_ext(f: &[u8], n: usize, fragment: bool) -> Vec<u8> {
    let (l3, tcp) = (14, 14 + 40);
    let mut out = f[..tcp].to_vec();
    let mut added = Vec::new();
    let mut next = 6u8;
    if fragment {
        added.extend_from_slice(&[next, 0, 0x00, 0x18, 0, 0, 0, 1]);
        next = 44;
    }
    for _ in 0..n {
        let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
        std::mem::swap(&mut h, &mut added);
        added.extend_from_slice(&h);
        next = 60;
    }
    out[l3 + 6] = next;
    let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) + added.len() as u16;
    out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&added);
    out.extend_from_slice(&f[tcp..]);
    out
}

/// BIG TCP super-packets (longer than 64 KB, as TC egress sees them with BIG TCP on):
/// IPv4 with total length 0, IPv6 with payload length 0 behind a jumbo hop-by-hop
/// option. Their length is the packet's. Host parser only: BPF_PROG_TEST_RUN takes
/// no packet this long (the live lab test `big_tcp_super_packets_...` covers the
/// kernel).
#[test]
fn big_tcp_lengths_come_from_the_packet() {
    const MORE: usize = 70_000;
    let v4 = data_segment("10.1.0.1:40000", "10.1.0.2:10000", &L2::Ethernet);
    let v6 = data_segment("[fd00::1]:40000", "[fd00::2]:10000", &L2::Ethernet);
    let seglen = |f: &Vec<u8>| parse(&f.as_slice(), ETH).map(|p| p.seg.seglen);
    let small = seglen(&v4).unwrap();
    assert_eq!(seglen(&v6).unwrap(), small);

    let mut big4 = v4.clone();
    big4[16..18].copy_from_slice(&0u16.to_be_bytes());
    big4.resize(v4.len() + MORE, 0);
    assert_eq!(
        seglen(&big4),
        Ok(small + MORE as u32),
        "IPv4, total length 0"
    );

    // The jumbo option: next header TCP, length 0 (8 bytes), option 0xC2 of 4 bytes.
    let (l3, tcp) = (14, 14 + 40);
    let mut big6 = v6[..tcp].to_vec();
    big6[l3 + 4..l3 + 6].copy_from_slice(&0u16.to_be_bytes());
    big6[l3 + 6] = 0;
    let jumbo = (v6.len() - tcp + 8 + MORE) as u32;
    big6.extend_from_slice(&[6, 0, 0xc2, 4]);
    big6.extend_from_slice(&jumbo.to_be_bytes());
    big6.extend_from_slice(&v6[tcp..]);
    big6.resize(v6.len() + 8 + MORE, 0);
    assert_eq!(seglen(&big6), Ok(small + MORE as u32), "IPv6 jumbogram");

    // Without the extra length, the same headers are malformed, as before.
    big4.truncate(v4.len());
    assert_eq!(seglen(&big4), Err(counter::BAD_HEADER_LEN));
    big6.truncate(v6.len() + 8);
    assert_eq!(seglen(&big6), Err(counter::BAD_HEADER_LEN));
}

#[test]
fn random_bytes_pass_and_agree_with_the_host_parser() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut k = kernel_with_a_flow();
    for i in 0..2_000 {
        let len = rng.gen_range(15..200);
        let mut f: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        if i % 2 == 0 {
            f[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4: reach deeper
            f[14] = 0x40 | (f[14] & 0x0f);
        }
        let reason = match parse(&f.as_slice(), ETH) {
            Err(r) => r,
            Ok(_) => continue, // a valid-looking TCP packet: may be tracked
        };
        feed_expecting(&mut k, &f, reason, &format!("seed {seed} frame {i}"));
    }
}
