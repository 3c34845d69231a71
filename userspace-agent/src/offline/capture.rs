//! Reading pcap and pcapng files: frames with their capture time in nanoseconds and
//! their link type.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError};

/// Link types ackwatch reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Raw IPv4 or IPv6 (DLT_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6).
    RawIp,
    /// Linux cooked capture v1 (16-byte header).
    Sll,
    /// Linux cooked capture v2 (20-byte header).
    Sll2,
}

impl Link {
    fn from_datalink(d: DataLink) -> Option<Link> {
        match d {
            DataLink::ETHERNET => Some(Link::Ethernet),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some(Link::RawIp),
            DataLink::LINUX_SLL => Some(Link::Sll),
            DataLink::LINUX_SLL2 => Some(Link::Sll2),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("{0}: not a pcap or pcapng file")]
    NotACapture(PathBuf),
    #[error(
        "{0}: unsupported link type {1:?} (ackwatch reads Ethernet, Linux cooked SLL and SLL2, raw IP)"
    )]
    UnsupportedLink(PathBuf, DataLink),
    #[error("{path}: truncated or corrupt after {frames} frames: {reason}")]
    Truncated {
        path: PathBuf,
        frames: u64,
        reason: String,
    },
}

/// One captured frame.
pub struct Frame<'a> {
    pub ts_ns: u64,
    pub link: Link,
    pub data: &'a [u8],
    /// Length on the wire; more than `data` when the capture's snap length cut it.
    pub orig_len: usize,
}

enum Inner {
    Pcap(ClassicPcap),
    /// With each interface's link type and timestamp resolution, in declaration order.
    PcapNg(Box<PcapNgReader<BufReader<File>>>, Vec<(DataLink, u8)>),
}

pub struct Capture {
    path: PathBuf,
    inner: Inner,
    frames: u64,
}

impl Capture {
    pub fn open(path: &Path) -> Result<Capture, CaptureError> {
        let open = || File::open(path).map_err(|e| CaptureError::Open(path.into(), e));
        let mut magic = [0u8; 4];
        let n = open()?
            .read(&mut magic)
            .map_err(|e| CaptureError::Open(path.into(), e))?;
        let not_capture = || CaptureError::NotACapture(path.into());
        if n < 4 {
            return Err(not_capture());
        }
        let inner = if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            let r = PcapNgReader::new(BufReader::new(open()?)).map_err(|_| not_capture())?;
            Inner::PcapNg(Box::new(r), Vec::new())
        } else {
            let mut r = BufReader::new(open()?);
            let header = ClassicPcap::header(&mut r).ok_or_else(not_capture)?;
            let dl = DataLink::from(header.linktype);
            let link =
                Link::from_datalink(dl).ok_or(CaptureError::UnsupportedLink(path.into(), dl))?;
            Inner::Pcap(ClassicPcap {
                r,
                link,
                header,
                buf: Vec::new(),
            })
        };
        Ok(Capture {
            path: path.into(),
            inner,
            frames: 0,
        })
    }

    /// Frames read so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Calls `f` for every frame, in file order.
    pub fn for_each(&mut self, mut f: impl FnMut(Frame<'_>)) -> Result<(), CaptureError> {
        loop {
            let frames = self.frames;
            let truncated = |e: PcapError| CaptureError::Truncated {
                path: self.path.clone(),
                frames,
                reason: e.to_string(),
            };
            match &mut self.inner {
                Inner::Pcap(p) => match p.next() {
                    Ok(None) => return Ok(()),
                    Err(reason) => {
                        return Err(CaptureError::Truncated {
                            path: self.path.clone(),
                            frames,
                            reason,
                        });
                    }
                    Ok(Some((ts_ns, orig_len))) => f(Frame {
                        ts_ns,
                        link: p.link,
                        data: &p.buf,
                        orig_len,
                    }),
                },
                Inner::PcapNg(r, ifaces) => match r.next_block() {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(truncated(e)),
                    Some(Ok(Block::InterfaceDescription(i))) => {
                        ifaces.push((i.linktype, tsresol(&i)));
                        continue;
                    }
                    Some(Ok(Block::EnhancedPacket(p))) => {
                        let &(dl, resol) =
                            ifaces.get(p.interface_id as usize).ok_or_else(|| {
                                CaptureError::Truncated {
                                    path: self.path.clone(),
                                    frames,
                                    reason: format!(
                                        "packet on undeclared interface {}",
                                        p.interface_id
                                    ),
                                }
                            })?;
                        let link = Link::from_datalink(dl)
                            .ok_or(CaptureError::UnsupportedLink(self.path.clone(), dl))?;
                        let ts_ns = ticks_to_ns(p.timestamp.as_nanos() as u64, resol);
                        f(Frame {
                            ts_ns,
                            link,
                            data: &p.data,
                            orig_len: p.original_len as usize,
                        });
                    }
                    Some(Ok(_)) => continue,
                },
            }
            self.frames += 1;
        }
    }
}

/// The interface's if_tsresol option (default 6: microseconds).
fn tsresol(
    iface: &pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock,
) -> u8 {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    iface
        .options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
            _ => None,
        })
        .unwrap_or(6)
}

/// pcap-file hands an EPB's raw timestamp ticks over as nanoseconds; scale them.
fn ticks_to_ns(ticks: u64, resol: u8) -> u64 {
    if resol & 0x80 != 0 {
        let shift = (resol & 0x7f) as u32;
        ((ticks as u128 * 1_000_000_000) >> shift) as u64
    } else if resol <= 9 {
        ticks * 10u64.pow(9 - resol as u32)
    } else {
        ticks / 10u64.pow(resol as u32 - 9)
    }
}

/// Classic pcap, read by hand: as lenient as tshark (a record longer than the file's
/// snap length is read, not refused) and without a copy per packet.
struct ClassicPcap {
    r: BufReader<File>,
    link: Link,
    header: PcapHeader,
    buf: Vec<u8>,
}

struct PcapHeader {
    swapped: bool,
    nanos: bool,
    linktype: u32,
}

/// Records longer than this are corruption, not packets.
const MAX_RECORD: usize = 1 << 18;

impl ClassicPcap {
    fn header(r: &mut impl Read) -> Option<PcapHeader> {
        let mut h = [0u8; 24];
        r.read_exact(&mut h).ok()?;
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (swapped, nanos) = match magic {
            0xa1b2_c3d4 => (false, false),
            0xa1b2_3c4d => (false, true),
            0xd4c3_b2a1 => (true, false),
            0x4d3c_b2a1 => (true, true),
            _ => return None,
        };
        let linktype = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        let linktype = if swapped {
            linktype.swap_bytes()
        } else {
            linktype
        } & 0x0fff_ffff;
        Some(PcapHeader {
            swapped,
            nanos,
            linktype,
        })
    }

    /// The next record into `buf`: (time in ns, length on the wire), or None at the end.
    fn next(&mut self) -> Result<Option<(u64, usize)>, String> {
        let mut h = [0u8; 16];
        match self.r.read(&mut h[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.r
            .read_exact(&mut h[1..])
            .map_err(|e| format!("record header: {e}"))?;
        let word = |i: usize| {
            let w = u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            if self.header.swapped {
                w.swap_bytes()
            } else {
                w
            }
        };
        let (secs, frac, incl, orig) = (
            word(0) as u64,
            word(4) as u64,
            word(8) as usize,
            word(12) as usize,
        );
        if incl > MAX_RECORD {
            return Err(format!("record of {incl} bytes"));
        }
        self.buf.resize(incl, 0);
        self.r
            .read_exact(&mut self.buf)
            .map_err(|e| format!("record data: {e}"))?;
        let ts = secs * 1_000_000_000
            + if self.header.nanos {
                frac
            } else {
                frac * 1_000
            };
        Ok(Some((ts, orig)))
    }
}
