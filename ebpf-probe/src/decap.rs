//! Mirror ports: where the copied frame starts in what a mirror port receives. A copy
//! is plain (SPAN, TAP) or carried by one tunnel: VXLAN or GENEVE over UDP, ERSPAN
//! type II or III over GRE, outer IPv4 or IPv6 behind up to two VLAN tags. The inner
//! frame is Ethernet and goes to `parse` as any frame does. One definition for the
//! kernel's mirror program and the host (`ackwatch analyze --mirror`).
//!
//! Not read (counted as `encap_unsupported`, never parsed further): a tunnel inside a
//! tunnel, outer IPv4 fragments of a tunnel, VXLAN without its I flag, GENEVE of
//! another version or not carrying Ethernet, GRE with routing or another version,
//! ERSPAN type I (no sequence number), of an unknown version or (type III) carrying
//! anything but Ethernet, GRE carrying anything else. Outer IPv6 extension headers
//! before the UDP or GRE header are not walked: such a packet is taken as plain.

use crate::abi::counter;
use crate::parse::{self, Frame, LinkKind, Reason};

/// How a copy reached the mirror port; the index of its `counter::MIRROR_FRAMES` entry.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Encap {
    None = 0,
    Vxlan = 1,
    Geneve = 2,
    Erspan2 = 3,
    Erspan3 = 4,
}

pub const ENCAPS: usize = 5;
/// Label values of `ackwatch_mirror_frames_total{encap}`, by `Encap`.
pub const ENCAP_NAMES: [&str; ENCAPS] = ["none", "vxlan", "geneve", "erspan2", "erspan3"];

/// UDP ports of each tunnel kind a probe may be given.
pub const MAX_TUNNEL_PORTS: usize = 4;
pub const VXLAN_PORT: u16 = 4789;
pub const GENEVE_PORT: u16 = 6081;

/// The UDP destination ports read as VXLAN and GENEVE, each list ending at its first 0.
/// A global of the mirror program, set by the agent at load.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct TunnelPorts {
    pub vxlan: [u16; MAX_TUNNEL_PORTS],
    pub geneve: [u16; MAX_TUNNEL_PORTS],
}

impl TunnelPorts {
    /// The given ports, or the IANA ones for a kind given none; None past
    /// `MAX_TUNNEL_PORTS` of a kind.
    pub fn new(vxlan: &[u16], geneve: &[u16]) -> Option<Self> {
        fn fill(given: &[u16], default: u16) -> Option<[u16; MAX_TUNNEL_PORTS]> {
            let given = if given.is_empty() { &[default] } else { given };
            let mut out = [0; MAX_TUNNEL_PORTS];
            out.get_mut(..given.len())?.copy_from_slice(given);
            Some(out)
        }
        Some(TunnelPorts {
            vxlan: fill(vxlan, VXLAN_PORT)?,
            geneve: fill(geneve, GENEVE_PORT)?,
        })
    }
}

/// Access to the tunnel ports: the kernel reads each one from its global (volatile, so
/// that the loader's value is read), the host from a `TunnelPorts`.
pub trait Ports {
    fn vxlan(&self, i: usize) -> u16;
    fn geneve(&self, i: usize) -> u16;
    /// `v`, unknown to the BPF verifier (the kernel passes it through map memory).
    fn opaque(&self, v: u32) -> u32 {
        v
    }
}

impl Ports for TunnelPorts {
    fn vxlan(&self, i: usize) -> u16 {
        self.vxlan[i]
    }
    fn geneve(&self, i: usize) -> u16 {
        self.geneve[i]
    }
}

/// Where a copy's frame starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Copy {
    /// Offset of the inner Ethernet header (0 for a plain copy).
    pub base: usize,
    pub encap: Encap,
    /// The mirror port's own link traffic (ARP, ICMPv6 neighbour discovery), which
    /// `--mirror-drop` lets through: a tunnel's sender must still reach the collector.
    pub link_local: bool,
}

/// The inner frame starts at most here: outer Ethernet with two tags (22), IPv6 (40),
/// UDP and GENEVE (16) with 252 bytes of options. Bounds the kernel's offsets.
pub const MAX_BASE: usize = 511;
const _: () = assert!((MAX_BASE + 1).is_power_of_two());

const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_ICMPV6: u8 = 58;
const GRE_CSUM: u16 = 0x8000;
const GRE_ROUTING: u16 = 0x4000;
const GRE_KEY: u16 = 0x2000;
const GRE_SEQ: u16 = 0x1000;
const GRE_VERSION: u16 = 0x0007;
const ERSPAN2: u16 = 0x88be;
const ERSPAN3: u16 = 0x22eb;
const ETH_P_TEB: u16 = 0x6558;
const VXLAN_I: u8 = 0x08;
const ETH_HLEN: usize = 14;

/// Reads tunnel header bytes: missing ones are `encap_truncated`.
#[inline(always)]
fn tunnel<const N: usize, F: Frame>(f: &F, off: usize) -> Result<[u8; N], Reason> {
    if off > parse::MAX_OFFSET {
        return Err(counter::ENCAP_TRUNCATED);
    }
    f.read::<N>(off).ok_or(counter::ENCAP_TRUNCATED)
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Where the copy in `f` starts; an encapsulation that cannot be read is an error
/// (`encap_truncated`, `encap_unsupported`). A frame that is not a tunnel packet is a
/// plain copy: `parse` then says what it is.
#[inline(always)]
pub fn copy_start<F: Frame, P: Ports>(f: &F, ports: &P) -> Result<Copy, Reason> {
    let (base, encap, link_local) = outer(f, ports)?;
    if base > MAX_BASE {
        return Err(counter::ENCAP_UNSUPPORTED);
    }
    // One value for every layout's offset from here on: the verifier checks what
    // follows (this check, the whole tracker) once, not once per layout.
    let base = ports.opaque(base as u32) as usize & MAX_BASE;
    if encap != Encap::None {
        let inner = Inner { outer: f, base };
        // The inner Ethernet header is whole: its last two bytes are there.
        tunnel::<2, _>(&inner, ETH_HLEN - 2)?;
        // One tunnel level: a tunnel packet inside is not read.
        if !matches!(outer(&inner, ports), Ok((_, Encap::None, _))) {
            return Err(counter::ENCAP_UNSUPPORTED);
        }
    }
    Ok(Copy {
        base,
        encap,
        link_local,
    })
}

/// The outer headers of `f`: the inner frame's offset, the encapsulation and whether
/// the frame is link-local traffic. Headers that cannot be read as a tunnel's are a
/// plain frame's (`parse` counts what is wrong with them).
#[inline(always)]
fn outer<F: Frame, P: Ports>(f: &F, ports: &P) -> Result<(usize, Encap, bool), Reason> {
    let plain = |local| Ok((0, Encap::None, local));
    let Ok((l3, ethertype)) = parse::link(f, LinkKind::Ethernet) else {
        return plain(false);
    };
    let (l4, proto) = match ethertype {
        ETH_P_ARP => return plain(true),
        parse::ETH_P_IP => {
            // Version and length, fragment, protocol: the tunnel check reads no more.
            let Some(h) = f.read::<10>(l3) else {
                return plain(false);
            };
            let frag = be16([h[6], h[7]]);
            // Not a tunnel header here (a later fragment), or not a whole tunnel packet.
            if h[0] >> 4 != 4 || frag & 0x1fff != 0 {
                return plain(false);
            }
            let tunnel = h[9] == IPPROTO_UDP || h[9] == IPPROTO_GRE;
            if tunnel && frag & 0x2000 != 0 {
                return Err(counter::ENCAP_UNSUPPORTED);
            }
            (l3 + ((h[0] & 0x0f) as usize) * 4, h[9])
        }
        parse::ETH_P_IPV6 => {
            let Some(h) = f.read::<8>(l3) else {
                return plain(false);
            };
            if h[6] == IPPROTO_ICMPV6 {
                return plain(true);
            }
            (l3 + 40, h[6])
        }
        _ => return plain(false),
    };
    let found = match proto {
        IPPROTO_UDP => udp(f, l4, ports)?,
        IPPROTO_GRE => Some(gre(f, l4)?),
        _ => None,
    };
    match found {
        Some((base, encap)) => Ok((base, encap, false)),
        None => plain(false),
    }
}

/// VXLAN (RFC 7348) or GENEVE (RFC 8926) on a configured port, else None.
#[inline(always)]
fn udp<F: Frame, P: Ports>(f: &F, l4: usize, ports: &P) -> Result<Option<(usize, Encap)>, Reason> {
    let Some(u) = f.read::<4>(l4) else {
        return Ok(None);
    };
    let dport = be16([u[2], u[3]]);
    let encap = if listed(dport, |i| ports.vxlan(i)) {
        Encap::Vxlan
    } else if listed(dport, |i| ports.geneve(i)) {
        Encap::Geneve
    } else {
        Encap::None
    };
    let h: [u8; 4] = match encap {
        Encap::None => return Ok(None),
        _ => tunnel(f, l4 + 8)?,
    };
    let base = if encap == Encap::Vxlan {
        if h[0] & VXLAN_I == 0 {
            return Err(counter::ENCAP_UNSUPPORTED);
        }
        l4 + 16
    } else {
        // Version 0, Ethernet inside; options skipped by their length.
        if h[0] >> 6 != 0 || be16([h[2], h[3]]) != ETH_P_TEB {
            return Err(counter::ENCAP_UNSUPPORTED);
        }
        l4 + 16 + ((h[0] & 0x3f) as usize) * 4
    };
    Ok(Some((base, encap)))
}

/// Whether `port` is one of the ports `at(0..)` gives, which end at the first 0.
#[inline(always)]
fn listed(port: u16, at: impl Fn(usize) -> u16) -> bool {
    for i in 0..MAX_TUNNEL_PORTS {
        match at(i) {
            0 => return false,
            p if p == port => return true,
            _ => {}
        }
    }
    false
}

/// ERSPAN (draft-foschiano-erspan-03) over GRE: type II (0x88BE, sequence number
/// present, version 1, 8-byte header) or type III (0x22EB, version 2, 12 bytes, and
/// the 8-byte platform-specific subheader when its O bit is set).
#[inline(always)]
fn gre<F: Frame>(f: &F, l4: usize) -> Result<(usize, Encap), Reason> {
    let g: [u8; 4] = tunnel(f, l4)?;
    let flags = be16([g[0], g[1]]);
    let proto = be16([g[2], g[3]]);
    if flags & (GRE_ROUTING | GRE_VERSION) != 0 {
        return Err(counter::ENCAP_UNSUPPORTED);
    }
    let mut at = l4 + 4;
    for bit in [GRE_CSUM, GRE_KEY, GRE_SEQ] {
        if flags & bit != 0 {
            at += 4;
        }
    }
    let (encap, version, len) = match proto {
        ERSPAN2 if flags & GRE_SEQ != 0 => (Encap::Erspan2, 1, 8),
        ERSPAN3 => (Encap::Erspan3, 2, 12),
        _ => return Err(counter::ENCAP_UNSUPPORTED),
    };
    // The whole header must be there; the version is its first four bits. Type III's
    // third word ends with the frame type (5 bits, 0: Ethernet), the hardware id, D,
    // the granularity and the O bit.
    let last: [u8; 4] = tunnel(f, at + len - 4)?;
    if tunnel::<1, F>(f, at)?[0] >> 4 != version {
        return Err(counter::ENCAP_UNSUPPORTED);
    }
    if encap == Encap::Erspan3 && (last[2] >> 2) & 0x1f != 0 {
        return Err(counter::ENCAP_UNSUPPORTED);
    }
    let subheader = if encap == Encap::Erspan3 && last[3] & 1 != 0 {
        8
    } else {
        0
    };
    Ok((at + len + subheader, encap))
}

/// The frame inside a tunnel packet: `outer` from `base` on.
pub struct Inner<'a, F> {
    pub outer: &'a F,
    pub base: usize,
}

impl<F: Frame> Frame for Inner<'_, F> {
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.outer.wire_len().saturating_sub(self.base)
    }
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.outer.read(self.base + off)
    }
    #[inline(always)]
    fn read_tail<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.outer.read_tail(self.base + off)
    }
    fn cuts_ip_length(&self) -> bool {
        self.outer.cuts_ip_length()
    }
}
