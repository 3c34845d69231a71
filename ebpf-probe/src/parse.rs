//! Packet parsing, one definition for the kernel (over XDP / TC packet pointers) and the
//! host (over byte slices): Ethernet with up to two VLAN tags or a bare IP header,
//! IPv4 with options, IPv6 with a bounded extension-header walk, TCP with its options.

use crate::abi::{FlowKey, counter};
use crate::classify::{self, PayloadClass};

/// Bytes of a packet. `read` is bounds-checked against the bytes present; `wire_len`
/// is the packet's full length (a TC skb may hold less than that in linear data).
pub trait Frame {
    fn wire_len(&self) -> usize;
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
    /// A read near the end of a large packet (the cTCP trailer), which a TC skb may
    /// hold outside its linear part.
    fn read_tail<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.read(off)
    }
    /// An IP length beyond the frame is cut to the frame (a capture, read as Wireshark
    /// reads it) instead of refused (a live packet the receiver would drop).
    fn cuts_ip_length(&self) -> bool {
        false
    }
}

impl Frame for &[u8] {
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.get(off..off.checked_add(N)?)?.try_into().ok()
    }
}

/// A captured frame: headers parse from the captured bytes, lengths from the frame's
/// length on the wire (more than the bytes when the snap length cut it), and an IP
/// length beyond that is cut to it, as Wireshark does.
pub struct Snapped<'a> {
    pub bytes: &'a [u8],
    pub wire_len: usize,
}

impl Frame for Snapped<'_> {
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.wire_len
    }
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.bytes.read(off)
    }
    fn cuts_ip_length(&self) -> bool {
        true
    }
}

/// What the attachment's link carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinkKind {
    Ethernet,
    /// No L2 header (tun, WireGuard, PPP): packets start at the IP header.
    RawIp,
}

pub const TH_FIN: u8 = 0x01;
pub const TH_SYN: u8 = 0x02;
pub const TH_RST: u8 = 0x04;
pub const TH_ACK: u8 = 0x10;

/// The TCP fields the analysis needs.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub window: u32,
    pub flags: u8,
    /// The first SACK block is present in `sack`.
    pub has_sack: bool,
    pub seglen: u32,
    pub sack: [u32; 2],
}

impl Segment {
    #[inline(always)]
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags != 0
    }
}

/// A parsed TCP packet: its flow, which endpoint sent it, its fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Packet {
    pub key: FlowKey,
    /// Index in `key` of the sender.
    pub dir: usize,
    pub seg: Segment,
}

impl Packet {
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        self.key.port[self.dir & 1]
    }
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        self.key.port[(self.dir & 1) ^ 1]
    }
}

/// Why a packet could not be parsed: an index of the counter array.
pub type Reason = u32;

pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// Extension headers walked before giving up (Cilium stops after 4 as well).
pub const MAX_EXT_HEADERS: usize = 4;
/// Offsets beyond this are not read (keeps the verifier's offset range bounded).
pub const MAX_OFFSET: usize = 0x3fff;

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

#[inline(always)]
fn need<const N: usize, F: Frame>(f: &F, off: usize) -> Result<[u8; N], Reason> {
    if off > MAX_OFFSET {
        return Err(counter::TRUNCATED);
    }
    f.read::<N>(off).ok_or(counter::TRUNCATED)
}

/// L3 start and ethertype after the L2 header.
#[inline(always)]
pub(crate) fn link<F: Frame>(f: &F, link: LinkKind) -> Result<(usize, u16), Reason> {
    if link == LinkKind::RawIp {
        let v = need::<1, F>(f, 0)?[0] >> 4;
        return match v {
            4 => Ok((0, ETH_P_IP)),
            6 => Ok((0, ETH_P_IPV6)),
            _ => Err(counter::NOT_IP),
        };
    }
    let mut off = 12;
    let mut proto = be16(need(f, off)?);
    // Up to two tags: 802.1ad outer, 802.1Q inner (or two 802.1Q).
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            off += 4;
            proto = be16(need(f, off)?);
        }
    }
    Ok((off + 2, proto))
}

/// IPv4: TCP offset and length.
#[inline(always)]
fn ipv4<F: Frame>(f: &F, l3: usize) -> Result<(usize, usize), Reason> {
    let h: [u8; 4] = need(f, l3)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(counter::BAD_HEADER_LEN);
    }
    let tot = match be16([h[2], h[3]]) as usize {
        0 => big_tcp_len(f, l3, 0).ok_or(counter::BAD_HEADER_LEN)?,
        n => ip_len(f, l3, n)?,
    };
    let h: [u8; 20] = need(f, l3)?;
    if tot < ihl {
        return Err(counter::BAD_HEADER_LEN);
    }
    if h[9] != IPPROTO_TCP {
        return Err(counter::NOT_TCP);
    }
    // Fragment offset != 0: no TCP header here.
    if be16([h[6], h[7]]) & 0x1fff != 0 {
        return Err(counter::FRAGMENT);
    }
    Ok((l3 + ihl, tot - ihl))
}

/// IPv6 with a bounded walk over hop-by-hop, routing, destination-options and
/// fragment headers: TCP offset and length.
#[inline(always)]
fn ipv6<F: Frame>(f: &F, l3: usize) -> Result<(usize, usize), Reason> {
    let h: [u8; 8] = need(f, l3)?;
    if h[0] >> 4 != 6 {
        return Err(counter::BAD_HEADER_LEN);
    }
    let payload = match be16([h[4], h[5]]) as usize {
        0 => big_tcp_len(f, l3, 40).unwrap_or(0),
        n => ip_len(f, l3, 40 + n)? - 40,
    };
    let mut next = h[6];
    let mut off = l3 + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return tcp_span(off, l3 + 40 + payload),
            0 | 43 | 60 => {
                let e: [u8; 2] = need(f, off)?;
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            44 => {
                let e: [u8; 4] = need(f, off)?;
                if be16([e[2], e[3]]) & 0xfff8 != 0 {
                    return Err(counter::FRAGMENT);
                }
                next = e[0];
                off += 8;
            }
            _ => return Err(counter::NOT_TCP),
        }
    }
    if next == IPPROTO_TCP {
        return tcp_span(off, l3 + 40 + payload);
    }
    Err(counter::EXT_HEADER_LIMIT)
}

/// The IP packet's length `len` from `l3`, checked against the frame.
#[inline(always)]
fn ip_len<F: Frame>(f: &F, l3: usize, len: usize) -> Result<usize, Reason> {
    let room = f.wire_len().saturating_sub(l3);
    if len <= room {
        Ok(len)
    } else if f.cuts_ip_length() {
        Ok(room)
    } else {
        Err(counter::TRUNCATED)
    }
}

/// BIG TCP (Linux 5.19 for IPv6, 6.3 for IPv4): a GSO super-packet too long for the IP
/// length field carries 0 there (IPv6 adds a jumbo hop-by-hop option, which the
/// extension-header walk skips); its length past the `header` bytes is the packet's.
/// Only a packet that long: on anything shorter a 0 stays what it was.
#[inline(always)]
fn big_tcp_len<F: Frame>(f: &F, l3: usize, header: usize) -> Option<usize> {
    let len = f.wire_len().saturating_sub(l3 + header);
    (len > 0xffff).then_some(len)
}

#[inline(always)]
fn tcp_span(off: usize, end: usize) -> Result<(usize, usize), Reason> {
    if off > end {
        return Err(counter::BAD_HEADER_LEN);
    }
    Ok((off, end - off))
}

/// The first SACK block of a pure ACK, found where Linux, Windows and BSD stacks put
/// it: `NOP NOP SACK` first, or after `NOP NOP TIMESTAMP`; a bare `SACK` first too. A
/// fixed set of places, not an option walk: cheaper, and no loop for the verifier. An
/// ACK with SACK elsewhere counts by the window rule alone (semantics.md, rule 1).
#[inline(always)]
fn first_sack<F: Frame>(f: &F, start: usize, end: usize) -> Option<[u32; 2]> {
    let head = f.read::<4>(start)?;
    let at = match head {
        [1, 1, 5, _] => start + 4,
        [5, _, _, _] => start + 2,
        [1, 1, 8, 10] => match f.read::<4>(start + 12)? {
            [1, 1, 5, _] => start + 16,
            _ => return None,
        },
        _ => return None,
    };
    if at + 8 > end {
        return None;
    }
    let b: [u8; 8] = f.read(at)?;
    Some([
        be32([b[0], b[1], b[2], b[3]]),
        be32([b[4], b[5], b[6], b[7]]),
    ])
}

/// `(a, pa) < (b, pb)`, written out: array comparison would call memcmp, which BPF lacks.
#[inline(always)]
fn endpoint_lt(a: &[u32; 4], pa: u16, b: &[u32; 4], pb: u16) -> bool {
    for i in 0..4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    pa < pb
}

/// A TCP header found and checked, before anything is copied out of the packet: enough
/// for the scope decision (`tracker::scope`), which lets untracked traffic leave
/// after a handful of loads.
#[derive(Clone, Copy, Debug)]
pub struct Located {
    l3: usize,
    ipv6: bool,
    l4: usize,
    /// The TCP header's first 16 bytes: ports, numbers, offset, flags, window.
    pub head: [u8; 16],
    pub payload: usize,
    pub seglen: usize,
}

impl Located {
    /// Source and destination ports as on the wire.
    #[inline(always)]
    pub fn ports(&self) -> (u16, u16) {
        let t = &self.head;
        (be16([t[0], t[1]]), be16([t[2], t[3]]))
    }
}

/// Link, IP and TCP headers checked, in the order every reason is decided.
#[inline(always)]
pub fn locate<F: Frame>(f: &F, kind: LinkKind) -> Result<Located, Reason> {
    let (l3, proto) = link(f, kind)?;
    let ((l4, l4len), ipv6) = match proto {
        ETH_P_IP => (ipv4(f, l3)?, false),
        ETH_P_IPV6 => (self::ipv6(f, l3)?, true),
        _ => return Err(counter::NOT_IP),
    };
    let head: [u8; 16] = need(f, l4)?;
    let doff = ((head[12] >> 4) as usize) * 4;
    if doff < 20 || doff > l4len {
        return Err(counter::BAD_HEADER_LEN);
    }
    Ok(Located {
        l3,
        ipv6,
        l4,
        head,
        payload: l4 + doff,
        seglen: l4len - doff,
    })
}

/// What the payload carries (`IKETCP` prefix, and the cTCP trailer if `trailer`), if
/// anything.
#[inline(always)]
pub fn payload_class<F: Frame>(f: &F, at: &Located, trailer: bool) -> PayloadClass {
    if at.seglen == 0 {
        PayloadClass::None
    } else if trailer {
        classify::payload(f, at.payload, at.seglen)
    } else {
        classify::prefix(f, at.payload)
    }
}

/// Parses one frame down to its TCP segment.
#[inline(always)]
pub fn parse<F: Frame>(f: &F, kind: LinkKind) -> Result<Packet, Reason> {
    let mut pkt = Packet::default();
    parse_located(f, &locate(f, kind)?, &mut pkt)?;
    Ok(pkt)
}

/// The rest of `parse` after `locate`, into caller-provided memory: the kernel passes a
/// per-CPU map slot, as a packet and its temporaries do not fit the BPF stack together.
#[inline(always)]
pub fn parse_located<F: Frame>(f: &F, at: &Located, out: &mut Packet) -> Result<(), Reason> {
    let (l3, l4, t) = (at.l3, at.l4, &at.head);
    let doff = at.payload - l4;
    let seglen = at.seglen;
    let addr = &mut out.key.addr;
    if at.ipv6 {
        for (i, a) in addr.iter_mut().enumerate() {
            for (j, w) in a.iter_mut().enumerate() {
                *w = u32::from_ne_bytes(need(f, l3 + 8 + 16 * i + 4 * j)?);
            }
        }
    } else {
        let a: [u8; 8] = need(f, l3 + 12)?;
        let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        addr[0] = [0, 0, mapped, u32::from_ne_bytes([a[0], a[1], a[2], a[3]])];
        addr[1] = [0, 0, mapped, u32::from_ne_bytes([a[4], a[5], a[6], a[7]])];
    }
    let (sport, dport) = at.ports();
    out.key.port = [sport, dport];
    let seg = &mut out.seg;
    seg.seq = be32([t[4], t[5], t[6], t[7]]);
    seg.ack = be32([t[8], t[9], t[10], t[11]]);
    seg.flags = t[13];
    seg.window = be16([t[14], t[15]]) as u32;
    seg.seglen = seglen as u32;
    seg.has_sack = false;
    if seglen == 0
        && doff > 20
        && let Some(sack) = first_sack(f, l4 + 20, l4 + doff)
    {
        seg.has_sack = true;
        seg.sack = sack;
    }
    // Endpoint 0 is the lower (address, port); dir is the sender's index.
    let k = &mut out.key;
    out.dir = usize::from(endpoint_lt(&k.addr[1], k.port[1], &k.addr[0], k.port[0]));
    if out.dir == 1 {
        // Word by word: `swap` would call memmove.
        for i in 0..4 {
            let w = k.addr[0][i];
            k.addr[0][i] = k.addr[1][i];
            k.addr[1][i] = w;
        }
        k.port = [k.port[1], k.port[0]];
    }
    Ok(())
}
