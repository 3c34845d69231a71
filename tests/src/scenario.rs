//! Scripted conversations with known outcomes, for kernel tests and the demo.

use std::net::SocketAddr;

use ebpf_probe::parse::LinkKind;

use crate::conversation::Step;
use crate::frames::{L2, TH_ACK, TH_PSH, TH_SYN, Tcp, ctcp_payload, frame};
use crate::harness::Hook;

pub const MS: u64 = 1_000_000;

/// A cTCP client that sends `segments` segments of `len` bytes, of which segment
/// `lost` (if any) never reaches the headend (lost after the monitor, downstream); the
/// headend sends a duplicate ACK with SACK for every later segment; the client never
/// retransmits. Client packets enter by XDP, headend packets leave by TC, as on a
/// headend. One segment every 5 ms from t = 1 s, then `quiet_ms` more of duplicate ACKs
/// every 100 ms (the client keeps quiet).
pub fn ctcp_flow(
    client: SocketAddr,
    server: SocketAddr,
    segments: u32,
    lost: Option<u32>,
    quiet_ms: u64,
) -> Vec<Step> {
    ctcp_flow_on(&L2::Ethernet, client, server, segments, lost, quiet_ms)
}

/// `ctcp_flow` over the given layer 2 (VLAN tags, say).
pub fn ctcp_flow_on(
    l2: &L2,
    client: SocketAddr,
    server: SocketAddr,
    segments: u32,
    lost: Option<u32>,
    quiet_ms: u64,
) -> Vec<Step> {
    let (c_isn, s_isn, len) = (1_000u32, 900_000u32, 400u32);
    let (up, down) = (Hook::Xdp(LinkKind::Ethernet), Hook::Tc(LinkKind::Ethernet));
    let mut t = 1_000 * MS;
    let mut out = Vec::new();
    let mut push = |hook, src, dst, tcp: Tcp, at| {
        out.push(Step {
            hook,
            frame: frame(src, dst, &tcp, l2),
            at_ns: at,
        })
    };
    push(
        up,
        client,
        server,
        Tcp {
            seq: c_isn,
            flags: TH_SYN,
            window: 64240,
            ..Default::default()
        },
        t,
    );
    push(
        down,
        server,
        client,
        Tcp {
            seq: s_isn,
            ack: c_isn + 1,
            flags: TH_SYN | TH_ACK,
            window: 65160,
            ..Default::default()
        },
        t + MS,
    );
    t += 2 * MS;
    push(
        up,
        client,
        server,
        Tcp {
            seq: c_isn + 1,
            ack: s_isn + 1,
            flags: TH_ACK,
            window: 502,
            ..Default::default()
        },
        t,
    );
    // The headend's pure ACKs: same window, so repeats are duplicate ACKs.
    let server_ack = |ack, sack| Tcp {
        seq: s_isn + 1,
        ack,
        flags: TH_ACK,
        window: 509,
        sack,
        ..Default::default()
    };
    let mut acked = c_isn + 1;
    let hole = lost.map(|i| c_isn + 1 + i * len);
    for i in 0..segments {
        t += 5 * MS;
        let seq = c_isn + 1 + i * len;
        let data = Tcp {
            seq,
            ack: s_isn + 1,
            flags: TH_ACK | TH_PSH,
            window: 502,
            payload: ctcp_payload(len as usize),
            ..Default::default()
        };
        push(up, client, server, data, t);
        if Some(seq) == hole {
            continue; // lost after the monitor: the headend never sees it
        }
        let sack = match hole {
            Some(h) if seq > h => vec![(h + len, seq + len)],
            _ => {
                acked = seq + len;
                vec![]
            }
        };
        push(down, server, client, server_ack(acked, sack), t + MS / 2);
    }
    let end = c_isn + 1 + segments * len;
    let mut q = 0;
    while let Some(h) = hole
        && q < quiet_ms
    {
        q += 100;
        let ack = server_ack(acked, vec![(h + len, end)]);
        push(down, server, client, ack, t + q * MS);
    }
    out
}
