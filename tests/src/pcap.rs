//! Writing classic pcap files, for offline-analysis tests and benchmarks.

use std::io::{self, Write};

/// pcap link types.
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

pub struct PcapWriter<W: Write> {
    w: W,
}

impl<W: Write> PcapWriter<W> {
    /// A nanosecond-resolution pcap of `linktype`.
    pub fn new(mut w: W, linktype: u32) -> io::Result<Self> {
        w.write_all(&0xa1b2_3c4du32.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        w.write_all(&[0; 8])?;
        w.write_all(&262_144u32.to_le_bytes())?;
        w.write_all(&linktype.to_le_bytes())?;
        Ok(PcapWriter { w })
    }

    pub fn write(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        let len = frame.len() as u32;
        self.w
            .write_all(&((ts_ns / 1_000_000_000) as u32).to_le_bytes())?;
        self.w
            .write_all(&((ts_ns % 1_000_000_000) as u32).to_le_bytes())?;
        self.w.write_all(&len.to_le_bytes())?;
        self.w.write_all(&len.to_le_bytes())?;
        self.w.write_all(frame)
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

/// An Ethernet frame re-framed for another link type.
pub fn relink(eth: &[u8], linktype: u32) -> Vec<u8> {
    let ip = &eth[14..];
    let proto = [eth[12], eth[13]];
    match linktype {
        LINKTYPE_ETHERNET => eth.to_vec(),
        LINKTYPE_RAW => ip.to_vec(),
        LINKTYPE_LINUX_SLL => {
            let mut h = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, proto[0], proto[1]];
            h.extend_from_slice(ip);
            h
        }
        LINKTYPE_LINUX_SLL2 => {
            let mut h = vec![
                proto[0], proto[1], 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
            ];
            h.extend_from_slice(ip);
            h
        }
        _ => panic!("link type {linktype}"),
    }
}
