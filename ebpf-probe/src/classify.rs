//! Recognizing encapsulated VPN traffic from the first bytes of a TCP payload.
//!
//! cTCP (Cisco IPsec over TCP) carries one packet per segment plus a 16-byte trailer:
//! bytes 0-3 zero, bytes 6-7 masked with 0x0fff zero, byte 13 0x11 (IKE, payload then
//! starting with UDP 500->500) or 0x32 (ESP); payload longer than 24 bytes. This is
//! Wireshark's `tcpencap` heuristic. RFC 8229 / 9329 streams start with `IKETCP`.

use crate::parse::Frame;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum PayloadClass {
    #[default]
    None,
    Ctcp,
    Rfc9329,
}

const TRAILER: usize = 16;

#[inline(always)]
pub fn payload<F: Frame>(f: &F, start: usize, len: usize) -> PayloadClass {
    if prefix(f, start) == PayloadClass::Rfc9329 {
        return PayloadClass::Rfc9329;
    }
    if len <= 24 || start + len > 0x3fff {
        return PayloadClass::None;
    }
    let Some(t) = f.read_tail::<TRAILER>(start + len - TRAILER) else {
        return PayloadClass::None;
    };
    if t[0] | t[1] | t[2] | t[3] != 0 || t[6] & 0x0f != 0 || t[7] != 0 {
        return PayloadClass::None;
    }
    match t[13] {
        0x32 => PayloadClass::Ctcp,
        0x11 if f.read::<4>(start).map(u32::from_be_bytes) == Some(0x01f4_01f4) => {
            PayloadClass::Ctcp
        }
        _ => PayloadClass::None,
    }
}

/// What the first bytes show: an RFC 9329 stream's `IKETCP`, or nothing.
#[inline(always)]
pub fn prefix<F: Frame>(f: &F, start: usize) -> PayloadClass {
    // Integer compares: byte-array equality may become a bcmp call, which BPF lacks.
    if let Some(h) = f.read::<6>(start)
        && u32::from_be_bytes([h[0], h[1], h[2], h[3]]) == u32::from_be_bytes(*b"IKET")
        && u16::from_be_bytes([h[4], h[5]]) == u16::from_be_bytes(*b"CP")
    {
        PayloadClass::Rfc9329
    } else {
        PayloadClass::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailer(next: u8) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[13] = next;
        t
    }

    #[test]
    fn esp_trailer_is_ctcp() {
        let mut p = [0xabu8; 40].to_vec();
        p.extend_from_slice(&trailer(0x32));
        assert_eq!(payload(&p.as_slice(), 0, p.len()), PayloadClass::Ctcp);
    }

    #[test]
    fn ike_needs_udp_500_header() {
        let mut p = vec![0x01, 0xf4, 0x01, 0xf4];
        p.extend_from_slice(&[7u8; 30]);
        p.extend_from_slice(&trailer(0x11));
        assert_eq!(payload(&p.as_slice(), 0, p.len()), PayloadClass::Ctcp);
        p[1] = 0xf5;
        assert_eq!(payload(&p.as_slice(), 0, p.len()), PayloadClass::None);
    }

    #[test]
    fn short_or_nonzero_trailer_is_not_ctcp() {
        let p = trailer(0x32);
        assert_eq!(payload(&p.as_slice(), 0, p.len()), PayloadClass::None);
        let mut p = [0u8; 30].to_vec();
        p.extend_from_slice(&trailer(0x32));
        p[30 + 2] = 1;
        assert_eq!(payload(&p.as_slice(), 0, p.len()), PayloadClass::None);
        p[30 + 2] = 0;
        p[30 + 6] = 0x10; // high nibble of byte 6 is free
        assert_eq!(payload(&p.as_slice(), 0, p.len()), PayloadClass::Ctcp);
    }

    #[test]
    fn iketcp_prefix_is_rfc9329() {
        let p = b"IKETCP\x00\x10rest".as_slice();
        assert_eq!(payload(&p, 0, p.len()), PayloadClass::Rfc9329);
    }
}
