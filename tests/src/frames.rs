//! Building Ethernet / VLAN / raw-IP frames carrying IPv4 or IPv6 TCP segments.

use std::net::{IpAddr, SocketAddr};

pub use ebpf_probe::parse::{TH_ACK, TH_FIN, TH_RST, TH_SYN};
pub const TH_PSH: u8 = 0x08;

/// One TCP segment's header fields and payload.
#[derive(Clone, Debug, Default)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
    /// SACK blocks, sent after NOP NOP.
    pub sack: Vec<(u32, u32)>,
    /// Adds NOP NOP TIMESTAMP, as Linux does.
    pub timestamps: bool,
}

/// Layer 2 in front of the IP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L2 {
    Ethernet,
    /// Ethernet with these tags, outermost first: (TPID, VLAN id).
    Vlan(Vec<(u16, u16)>),
    /// No L2 header (tun, WireGuard).
    RawIp,
}

/// A frame from `src` to `dst`.
pub fn frame(src: SocketAddr, dst: SocketAddr, tcp: &Tcp, l2: &L2) -> Vec<u8> {
    let seg = tcp_bytes(src, dst, tcp);
    let (ethertype, ip) = ip(6, src.ip(), dst.ip(), &seg);
    let mut out = Vec::with_capacity(ip.len() + 22);
    if *l2 != L2::RawIp {
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
        if let L2::Vlan(tags) = l2 {
            for (tpid, vid) in tags {
                out.extend_from_slice(&tpid.to_be_bytes());
                out.extend_from_slice(&vid.to_be_bytes());
            }
        }
        out.extend_from_slice(&ethertype.to_be_bytes());
    }
    out.extend_from_slice(&ip);
    out
}

/// An Ethernet frame of a TCP segment: `len` bytes of filler payload, window 500.
pub fn tcp_frame(
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    len: usize,
) -> Vec<u8> {
    let tcp = Tcp {
        seq,
        ack,
        flags,
        window: 500,
        payload: vec![9; len],
        ..Default::default()
    };
    frame(from, to, &tcp, &L2::Ethernet)
}

/// A cTCP segment from `src` to `dst` (socket addresses) with `payload` bytes, or a
/// pure ACK for 0, Linux's timestamps on.
pub fn segment(src: &str, dst: &str, l2: &L2, payload: usize) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let tcp = Tcp {
        seq: 7,
        ack: 9,
        flags: TH_ACK | TH_PSH,
        window: 100,
        payload: if payload > 0 {
            ctcp_payload(payload)
        } else {
            Vec::new()
        },
        timestamps: true,
        ..Default::default()
    };
    frame(s, d, &tcp, l2)
}

fn tcp_bytes(src: SocketAddr, dst: SocketAddr, t: &Tcp) -> Vec<u8> {
    let mut opts = Vec::new();
    if t.timestamps {
        opts.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 1]);
    }
    if !t.sack.is_empty() {
        opts.extend_from_slice(&[1, 1, 5, 2 + 8 * t.sack.len() as u8]);
        for (l, r) in &t.sack {
            opts.extend_from_slice(&l.to_be_bytes());
            opts.extend_from_slice(&r.to_be_bytes());
        }
    }
    assert!(
        opts.len() <= 40 && opts.len() % 4 == 0,
        "TCP options must fit 40 bytes"
    );
    let doff = (20 + opts.len()) / 4;
    let mut h = Vec::with_capacity(doff * 4 + t.payload.len());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(&t.seq.to_be_bytes());
    h.extend_from_slice(&t.ack.to_be_bytes());
    h.push((doff as u8) << 4);
    h.push(t.flags);
    h.extend_from_slice(&t.window.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(&opts);
    h.extend_from_slice(&t.payload);
    // A real checksum: the lab sends these to real TCP stacks.
    let mut pseudo = Vec::with_capacity(40 + h.len());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(h.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(h.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        }
        _ => panic!("mixed address families {src} -> {dst}"),
    }
    pseudo.extend_from_slice(&h);
    let sum = checksum(&pseudo);
    h[16..18].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The IP packet (no L2 header) of a segment from `src` to `dst`.
pub fn ip_packet(src: SocketAddr, dst: SocketAddr, tcp: &Tcp) -> Vec<u8> {
    frame(src, dst, tcp, &L2::RawIp)
}

/// An IP packet carrying `payload` of protocol `proto`, and its ethertype.
pub fn ip(proto: u8, src: IpAddr, dst: IpAddr, payload: &[u8]) -> (u16, Vec<u8>) {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (0x0800, ipv4(proto, s.octets(), d.octets(), payload)),
        (IpAddr::V6(s), IpAddr::V6(d)) => (0x86dd, ipv6(proto, s.octets(), d.octets(), payload)),
        _ => panic!("mixed address families {src} -> {dst}"),
    }
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(proto: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[proto, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A cTCP payload: ESP-like bytes and the 16-byte trailer Wireshark's tcpencap
/// heuristic recognizes (next header 0x32, ESP).
pub fn ctcp_payload(len: usize) -> Vec<u8> {
    assert!(len > 24, "cTCP payloads are longer than 24 bytes");
    let mut p: Vec<u8> = (0..len - 16).map(|i| (i * 7 + 3) as u8).collect();
    let mut trailer = [0u8; 16];
    trailer[13] = 0x32;
    p.extend_from_slice(&trailer);
    p
}
