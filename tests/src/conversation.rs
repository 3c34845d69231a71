//! Random but plausible TCP conversations, for the differential test: handshakes (or
//! mid-stream starts), data with loss before and after the monitor, cumulative and
//! SACK-bearing ACKs, duplicate ACKs, retransmissions of every kind, keep-alives, zero
//! windows and probes, FIN and RST, sequence numbers across 2^32, timing from
//! microseconds to seconds, and now and then a malformed frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ebpf_probe::parse::LinkKind;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::frames::{L2, TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, Tcp, ctcp_payload, frame};
use crate::harness::Hook;

/// One frame to feed, at a time in nanoseconds.
#[derive(Clone, Debug)]
pub struct Step {
    pub hook: Hook,
    pub frame: Vec<u8>,
    pub at_ns: u64,
}

/// The receiving side's view of one direction of data.
#[derive(Clone, Debug)]
struct Receiver {
    /// Cumulative ACK point.
    rcv: u32,
    /// Out-of-order data held above a hole: [rcv, hole_end) missing, up to `held`.
    hole_end: Option<u32>,
    held: u32,
    window: u16,
}

struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    l2: L2,
    to_server: Hook,
    to_client: Hook,
    ctcp: bool,
    /// 0: SYN next, 1: SYN-ACK next, 2: ACK next, 3: established, 4: closed.
    phase: u8,
    c_next: u32,
    s_next: u32,
    at_server: Receiver,
    at_client: Receiver,
    timestamps: bool,
}

pub struct Generator {
    rng: SmallRng,
    conns: Vec<Conn>,
    now: u64,
    next_port: u16,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            conns: Vec::new(),
            now: 1_000_000_000,
            next_port: 40_000,
        }
    }

    /// `n` steps over at most `max_conns` connections at once.
    pub fn steps(&mut self, n: usize, max_conns: usize) -> Vec<Step> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            self.advance_clock();
            if self.conns.len() < max_conns && self.rng.gen_bool(0.05) || self.conns.is_empty() {
                self.open();
            }
            if self.rng.gen_bool(0.01) {
                out.push(self.garbage());
                continue;
            }
            let i = self.rng.gen_range(0..self.conns.len());
            if let Some(step) = self.act(i) {
                out.push(step);
            }
            if self.conns[i].phase == 4 && self.rng.gen_bool(0.5) {
                self.conns.swap_remove(i);
            }
        }
        out
    }

    fn advance_clock(&mut self) {
        let r: f64 = self.rng.r#gen();
        self.now += if r < 0.7 {
            self.rng.gen_range(1_000..100_000)
        } else if r < 0.93 {
            self.rng.gen_range(1_000_000..30_000_000)
        } else {
            self.rng.gen_range(100_000_000..1_500_000_000)
        };
    }

    fn open(&mut self) {
        let rng = &mut self.rng;
        let v6 = rng.gen_bool(0.3);
        let host = |n: u8| -> IpAddr {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n as u16))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 99, 0, n))
            }
        };
        let r: f64 = rng.r#gen();
        let (port, ctcp) = if r < 0.6 {
            (10_000, true)
        } else if r < 0.8 {
            (8443, true)
        } else {
            (5201, false)
        };
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        let client = SocketAddr::new(host(rng.gen_range(1..=4)), self.next_port);
        let server = SocketAddr::new(host(200), port);
        let l2 = match rng.gen_range(0..6) {
            0 => L2::Vlan(vec![(0x8100, 42)]),
            1 => L2::Vlan(vec![(0x88a8, 7), (0x8100, 42)]),
            2 => L2::RawIp,
            _ => L2::Ethernet,
        };
        let link = if l2 == L2::RawIp {
            LinkKind::RawIp
        } else {
            LinkKind::Ethernet
        };
        let (to_server, to_client) = if rng.gen_bool(0.5) {
            (Hook::Xdp(link), Hook::Tc(link))
        } else {
            (Hook::Xdp(link), Hook::Xdp(link))
        };
        let isn = |rng: &mut SmallRng| {
            if rng.gen_bool(0.3) {
                u32::MAX - rng.gen_range(0..20_000)
            } else {
                rng.r#gen()
            }
        };
        let (c_isn, s_isn) = (isn(rng), isn(rng));
        let mid_stream = rng.gen_bool(0.15);
        let window = *[0xffffu16, 502, 64240].get(rng.gen_range(0..3)).unwrap();
        let recv = |next: u32| Receiver {
            rcv: next,
            hole_end: None,
            held: next,
            window,
        };
        self.conns.push(Conn {
            client,
            server,
            l2,
            to_server,
            to_client,
            ctcp,
            phase: if mid_stream { 3 } else { 0 },
            c_next: c_isn.wrapping_add(1),
            s_next: s_isn.wrapping_add(1),
            at_server: recv(c_isn.wrapping_add(1)),
            at_client: recv(s_isn.wrapping_add(1)),
            timestamps: rng.gen_bool(0.5),
        });
    }

    fn garbage(&mut self) -> Step {
        let len = self.rng.gen_range(14..120);
        let frame = (0..len).map(|_| self.rng.r#gen()).collect();
        Step {
            hook: Hook::Xdp(LinkKind::Ethernet),
            frame,
            at_ns: self.now,
        }
    }

    /// One action on connection `i`.
    fn act(&mut self, i: usize) -> Option<Step> {
        let roll: f64 = self.rng.r#gen();
        let c = &mut self.conns[i];
        let (from_client, t) = match c.phase {
            0 => {
                c.phase = 1;
                (
                    true,
                    Tcp {
                        seq: c.c_next.wrapping_sub(1),
                        flags: TH_SYN,
                        window: 64240,
                        ..Default::default()
                    },
                )
            }
            1 => {
                c.phase = 2;
                let t = Tcp {
                    seq: c.s_next.wrapping_sub(1),
                    ack: c.c_next,
                    flags: TH_SYN | TH_ACK,
                    window: 65160,
                    ..Default::default()
                };
                (false, t)
            }
            2 => {
                c.phase = 3;
                (
                    true,
                    Tcp {
                        seq: c.c_next,
                        ack: c.s_next,
                        flags: TH_ACK,
                        window: c.at_client.window,
                        ..Default::default()
                    },
                )
            }
            4 => return None,
            _ => Self::established(&mut self.rng, c, roll)?,
        };
        let c = &self.conns[i];
        let (src, dst, hook) = if from_client {
            (c.client, c.server, c.to_server)
        } else {
            (c.server, c.client, c.to_client)
        };
        let t = Tcp {
            timestamps: c.timestamps,
            ..t
        };
        Some(Step {
            hook,
            frame: frame(src, dst, &t, &c.l2),
            at_ns: self.now,
        })
    }

    /// A step of an established connection: (sent by the client, segment), or None
    /// when the segment was lost before the monitor.
    fn established(rng: &mut SmallRng, c: &mut Conn, roll: f64) -> Option<(bool, Tcp)> {
        let client_data = |rng: &mut SmallRng, c: &Conn| -> Vec<u8> {
            if c.ctcp {
                ctcp_payload(rng.gen_range(25..1200))
            } else {
                vec![0x5a; rng.gen_range(1..1400)]
            }
        };
        if roll < 0.35 {
            // Client data, maybe lost before (upstream) or after (downstream) the monitor.
            let payload = client_data(rng, c);
            let seq = c.c_next;
            c.c_next = seq.wrapping_add(payload.len() as u32);
            let fate: f64 = rng.r#gen();
            if fate >= 0.08 {
                deliver(&mut c.at_server, seq, payload.len() as u32);
            }
            if fate < 0.04 {
                return None;
            }
            let t = Tcp {
                seq,
                ack: c.at_client.rcv,
                flags: TH_ACK | TH_PSH,
                window: c.at_client.window,
                payload,
                ..Default::default()
            };
            return Some((true, t));
        }
        if roll < 0.65 {
            // Server ACK (a duplicate one while a hole is open), with SACK above a hole.
            let r = &mut c.at_server;
            if rng.gen_bool(0.1) {
                r.window = if rng.gen_bool(0.2) {
                    0
                } else {
                    rng.gen_range(100..0xffff)
                };
            }
            let sack = r
                .hole_end
                .map(|end| vec![(end, r.held)])
                .unwrap_or_default();
            let t = Tcp {
                seq: c.s_next,
                ack: r.rcv,
                flags: TH_ACK,
                window: r.window,
                sack,
                ..Default::default()
            };
            return Some((false, t));
        }
        if roll < 0.75 {
            // Client retransmission: of the hole, or of older data.
            let r = &c.at_server;
            let (seq, len) = if let Some(end) = r.hole_end
                && rng.gen_bool(0.8)
            {
                (r.rcv, end.wrapping_sub(r.rcv).min(1400))
            } else {
                let back = rng.gen_range(1..3000u32);
                (c.c_next.wrapping_sub(back), back.min(1200))
            };
            if len == 0 {
                return None;
            }
            if rng.gen_bool(0.7) {
                deliver(&mut c.at_server, seq, len);
            }
            let payload = if c.ctcp && len > 24 {
                ctcp_payload(len as usize)
            } else {
                vec![0x33; len as usize]
            };
            let t = Tcp {
                seq,
                ack: c.at_client.rcv,
                flags: TH_ACK,
                window: c.at_client.window,
                payload,
                ..Default::default()
            };
            return Some((true, t));
        }
        if roll < 0.80 {
            // Keep-alive (0 or 1 byte one before nextseq), or a zero-window probe.
            let probe = c.at_server.window == 0;
            let (seq, len) = if probe {
                (c.c_next, 1)
            } else {
                (c.c_next.wrapping_sub(1), rng.gen_range(0..2))
            };
            let t = Tcp {
                seq,
                ack: c.at_client.rcv,
                flags: TH_ACK,
                window: c.at_client.window,
                payload: vec![0; len],
                ..Default::default()
            };
            return Some((true, t));
        }
        if roll < 0.90 {
            // Server data; the client ACKs it on a later step.
            let len = rng.gen_range(1..800);
            let seq = c.s_next;
            c.s_next = seq.wrapping_add(len);
            deliver(&mut c.at_client, seq, len);
            let t = Tcp {
                seq,
                ack: c.at_server.rcv,
                flags: TH_ACK | TH_PSH,
                window: c.at_server.window,
                payload: vec![0x77; len as usize],
                ..Default::default()
            };
            return Some((false, t));
        }
        if roll < 0.97 {
            // Client pure ACK of server data.
            let t = Tcp {
                seq: c.c_next,
                ack: c.at_client.rcv,
                flags: TH_ACK,
                window: c.at_client.window,
                ..Default::default()
            };
            return Some((true, t));
        }
        // FIN or RST from either side.
        let from_client = rng.gen_bool(0.5);
        let rst = rng.gen_bool(0.3);
        let (seq, ack, window) = if from_client {
            (c.c_next, c.at_client.rcv, c.at_client.window)
        } else {
            (c.s_next, c.at_server.rcv, c.at_server.window)
        };
        if rst || rng.gen_bool(0.5) {
            c.phase = 4;
        }
        let flags = if rst {
            TH_RST | TH_ACK
        } else {
            TH_FIN | TH_ACK
        };
        Some((
            from_client,
            Tcp {
                seq,
                ack,
                flags,
                window,
                ..Default::default()
            },
        ))
    }
}

/// The receiver gets [seq, seq + len).
fn deliver(r: &mut Receiver, seq: u32, len: u32) {
    let end = seq.wrapping_add(len);
    let lt = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
    if !lt(r.rcv, seq) && lt(r.rcv, end) {
        // Covers the ACK point: fills up to the data held above the hole.
        r.rcv = if r.hole_end.is_some() && lt(end, r.held) {
            r.held
        } else {
            end
        };
        r.hole_end = None;
        r.held = r.rcv;
    } else if lt(r.rcv, seq) {
        if r.hole_end.is_none() {
            r.hole_end = Some(seq);
        }
        if lt(r.held, end) {
            r.held = end;
        }
    }
}
