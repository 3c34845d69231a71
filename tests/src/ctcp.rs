//! A cTCP client emulator: TCP-shaped IPsec without a TCP stack. It completes the
//! handshake with a real headend, sends cTCP payloads (ESP-like bytes and the 16-byte
//! trailer), never retransmits, ignores duplicate ACKs and can fall silent. It sends
//! and receives through raw sockets in the calling thread's namespace; the client
//! namespace drops the RSTs its own kernel would send for a connection it never made.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::frames::{TH_ACK, TH_FIN, TH_PSH, TH_SYN, Tcp, ctcp_payload, ip_packet};

/// Source ports the emulator uses; the client namespace drops its kernel's RSTs from
/// these (`Lab::quiet_client_kernel`).
pub const PORTS: std::ops::Range<u16> = 50_000..51_000;

pub struct CtcpClient {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    send: Fd,
    recv: Fd,
    /// Next sequence number to send.
    pub next: u32,
    /// The server's next sequence number (what we acknowledge).
    ack: u32,
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn raw(family: i32, proto: i32) -> io::Result<Fd> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(Fd(fd))
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed storage is a valid sockaddr_storage; we fill the family's part.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a.ip() {
        IpAddr::V4(ip) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(ip) => {
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = ip.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

impl CtcpClient {
    /// Handshake with the server at `dst` from `src`, initial sequence number `isn`.
    pub fn connect(src: SocketAddr, dst: SocketAddr, isn: u32) -> io::Result<CtcpClient> {
        let family = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let send = raw(family, libc::IPPROTO_RAW)?;
        let recv = raw(family, libc::IPPROTO_TCP)?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                recv.0,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const _,
                size_of::<libc::timeval>() as u32,
            );
        }
        let mut c = CtcpClient {
            src,
            dst,
            send,
            recv,
            next: isn,
            ack: 0,
        };
        c.send_tcp(Tcp {
            seq: isn,
            flags: TH_SYN,
            window: 64240,
            ..Default::default()
        })?;
        c.next = isn.wrapping_add(1);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some((seq, _, flags)) = c.receive()?
                && flags & (TH_SYN | TH_ACK) == TH_SYN | TH_ACK
            {
                c.ack = seq.wrapping_add(1);
                c.send_tcp(Tcp {
                    seq: c.next,
                    ack: c.ack,
                    flags: TH_ACK,
                    window: 502,
                    ..Default::default()
                })?;
                return Ok(c);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no SYN-ACK from {dst}"),
        ))
    }

    fn send_tcp(&self, t: Tcp) -> io::Result<()> {
        let pkt = ip_packet(self.src, self.dst, &t);
        let (ss, len) = sockaddr(SocketAddr::new(self.dst.ip(), 0));
        // SAFETY: sendto with our buffer and a sockaddr of `len` bytes.
        let n = unsafe {
            libc::sendto(
                self.send.0,
                pkt.as_ptr() as *const _,
                pkt.len(),
                0,
                &ss as *const _ as *const _,
                len,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// One segment for our connection, if one arrives within the socket timeout:
    /// (seq, ack, flags).
    fn receive(&self) -> io::Result<Option<(u32, u32, u8)>> {
        let mut buf = [0u8; 2048];
        // SAFETY: recv into our buffer.
        let n = unsafe { libc::recv(self.recv.0, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            };
        }
        // IPv4 raw sockets deliver the IP header, IPv6 ones only the TCP segment.
        let b = &buf[..n as usize];
        let tcp = if self.dst.is_ipv4() {
            &b[((b[0] & 0x0f) as usize) * 4..]
        } else {
            b
        };
        if tcp.len() < 20 {
            return Ok(None);
        }
        let port = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
        if port(0) != self.dst.port() || port(2) != self.src.port() {
            return Ok(None);
        }
        let word = |i: usize| u32::from_be_bytes([tcp[i], tcp[i + 1], tcp[i + 2], tcp[i + 3]]);
        Ok(Some((word(4), word(8), tcp[13])))
    }

    /// Sends a cTCP segment of `len` bytes; returns its sequence number.
    pub fn send_data(&mut self, len: usize) -> io::Result<u32> {
        let seq = self.next;
        self.send_segment(seq, len)?;
        self.next = seq.wrapping_add(len as u32);
        Ok(seq)
    }

    /// Sends again the segment at `seq` (for the emulator that does answer).
    pub fn resend(&mut self, seq: u32, len: usize) -> io::Result<()> {
        self.send_segment(seq, len)
    }

    fn send_segment(&self, seq: u32, len: usize) -> io::Result<()> {
        let t = Tcp {
            seq,
            ack: self.ack,
            flags: TH_ACK | TH_PSH,
            window: 502,
            payload: ctcp_payload(len),
            ..Default::default()
        };
        match self.send_tcp(t) {
            // The client's own firewall dropped it (EPERM): lost before leaving.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            r => r,
        }
    }

    /// Reads and ignores what the server sent for up to `d` (duplicate ACKs included);
    /// returns the last acknowledgment number among them, if any came: once the server
    /// misses a segment, the hole it really has.
    pub fn ignore_for(&self, d: Duration) -> io::Result<Option<u32>> {
        let (deadline, mut acked) = (Instant::now() + d, None);
        while Instant::now() < deadline {
            if let Some((_, ack, flags)) = self.receive()?
                && flags & TH_ACK != 0
            {
                acked = Some(ack);
            }
        }
        Ok(acked)
    }

    pub fn fin(&mut self) -> io::Result<()> {
        self.send_tcp(Tcp {
            seq: self.next,
            ack: self.ack,
            flags: TH_FIN | TH_ACK,
            window: 502,
            ..Default::default()
        })
    }
}
