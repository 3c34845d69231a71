//! Mirror-port copies: a frame wrapped as a VXLAN (RFC 7348), GENEVE (RFC 8926) or
//! ERSPAN type II / III (draft-foschiano-erspan-03) sender wraps it, built from the
//! published layouts (this kernel has no GRE or GENEVE devices to make them).

use std::net::IpAddr;

use crate::frames::ip;

/// A tunnel around a copied frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tunnel {
    Vxlan {
        port: u16,
    },
    /// With this many 4-byte words of options.
    Geneve {
        port: u16,
        option_words: u8,
    },
    Erspan2,
    /// With the optional platform-specific subheader.
    Erspan3 {
        subheader: bool,
    },
}

/// Every kind, with the IANA ports, for tests that go over them all.
pub const TUNNELS: [Tunnel; 5] = [
    Tunnel::Vxlan { port: 4789 },
    Tunnel::Geneve {
        port: 6081,
        option_words: 3,
    },
    Tunnel::Erspan2,
    Tunnel::Erspan3 { subheader: false },
    Tunnel::Erspan3 { subheader: true },
];

/// The outer endpoints: the mirror source and the collector.
pub fn outer_addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        ("fd00:99::1".parse().unwrap(), "fd00:99::2".parse().unwrap())
    } else {
        ("10.99.0.1".parse().unwrap(), "10.99.0.2".parse().unwrap())
    }
}

/// The tunnel header (after UDP or GRE's own) and the IP protocol that carries it.
fn header(t: &Tunnel) -> (u8, Vec<u8>) {
    match t {
        Tunnel::Vxlan { port } => {
            let mut h = udp_header(*port);
            h.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 42, 0]);
            (17, h)
        }
        Tunnel::Geneve { port, option_words } => {
            let mut h = udp_header(*port);
            h.extend_from_slice(&[*option_words & 0x3f, 0, 0x65, 0x58, 0, 0, 42, 0]);
            for i in 0..*option_words {
                // One option per word: class 0x0101, type i, no data.
                h.extend_from_slice(&[1, 1, i, 0]);
            }
            (17, h)
        }
        Tunnel::Erspan2 => {
            // GRE with S (0x1000), protocol 0x88BE, sequence 7; version 1, session 5.
            let mut h = vec![0x10, 0, 0x88, 0xbe, 0, 0, 0, 7];
            h.extend_from_slice(&[0x10, 0x0a, 0, 5, 0, 0, 0, 1]);
            (47, h)
        }
        Tunnel::Erspan3 { subheader } => {
            let mut h = vec![0x10, 0, 0x22, 0xeb, 0, 0, 0, 7];
            // Version 2, session 5; timestamp; SGT, P, frame type 0 (Ethernet),
            // hardware id 0x11, D, granularity, O bit last.
            h.extend_from_slice(&[0x20, 0x0a, 0, 5, 0, 0, 0x12, 0x34]);
            h.extend_from_slice(&[0, 0, 0x00, 0x10 | u8::from(*subheader)]);
            if *subheader {
                h.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 1]);
            }
            (47, h)
        }
    }
}

/// A UDP header to `port`; its length is patched by `wrap`, its checksum left 0.
fn udp_header(port: u16) -> Vec<u8> {
    let mut h = vec![0xc0, 0x01];
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// `inner` (an Ethernet frame) as the collector receives it through `t`, over outer
/// IPv6 or IPv4, behind the outer VLAN tag `vlan` if any.
pub fn wrap(inner: &[u8], t: &Tunnel, v6: bool, vlan: Option<u16>) -> Vec<u8> {
    let (proto, mut payload) = header(t);
    if proto == 17 {
        let len = (payload.len() + inner.len()) as u16;
        payload[4..6].copy_from_slice(&len.to_be_bytes());
    }
    payload.extend_from_slice(inner);
    let (src, dst) = outer_addrs(v6);
    let (ethertype, packet) = ip(proto, src, dst, &payload);
    let mut out = vec![0x02, 0, 0, 0, 0, 0x99, 0x02, 0, 0, 0, 0, 0x98];
    if let Some(vid) = vlan {
        out.extend_from_slice(&[0x81, 0x00]);
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(&packet);
    out
}

/// Where `wrap` put the inner frame in its output.
pub fn inner_offset(t: &Tunnel, v6: bool, vlan: Option<u16>) -> usize {
    let l2 = if vlan.is_some() { 18 } else { 14 };
    l2 + if v6 { 40 } else { 20 } + header(t).1.len()
}
