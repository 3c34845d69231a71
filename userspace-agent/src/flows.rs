//! The flow object ackwatch reports: `ackwatch analyze --json` prints one per line, and
//! the agent's flows API returns the same. Timestamps are nanoseconds on the clock the
//! flow was seen with (capture time offline, the kernel's monotonic clock live) plus
//! `offset`, the distance to the wall clock (0 offline), rendered as RFC 3339.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use ebpf_probe::abi::{
    Flow, FlowClass, FlowKey, FlowState, Half, LossSide, StallKind, StallRecord, StallWhat, event,
};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowReport {
    pub client: String,
    pub server: String,
    pub class: &'static str,
    pub state: &'static str,
    pub first_ts: String,
    pub last_ts: String,
    pub stalls: Vec<Episode>,
    /// Client to server, then server to client.
    pub directions: [Direction; 2],
    /// Live only (/flows): milliseconds since the first and since the last packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Direction {
    pub src: String,
    pub dst: String,
    pub packets: u64,
    pub bytes: u64,
    pub dup_acks: u32,
    /// Every kind, as tshark's `tcp.analysis.retransmission`.
    pub retransmissions: u32,
    pub fast_retransmissions: u32,
    pub spurious_retransmissions: u32,
    pub out_of_order: u32,
    pub lost_segments: u32,
    pub acked_unseen: u32,
    pub zero_windows: u32,
    pub keep_alives: u32,
}

/// One stall episode.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Episode {
    pub hole_seq: u32,
    pub stuck_side: &'static str,
    pub kind: &'static str,
    pub dup_acks: u32,
    pub loss: &'static str,
    /// The first duplicate ACK for the hole.
    pub start_ts: String,
    /// When the stall rule was met.
    pub detected_ts: String,
    pub end_ts: Option<String>,
    /// "open", "recovered" or "ended".
    pub outcome: &'static str,
    /// A retransmission covering the hole was seen.
    pub retransmission_seen: bool,
    #[serde(skip)]
    pub stuck_index: u8,
}

impl Episode {
    pub fn started(r: &StallRecord, offset: u64) -> Episode {
        Episode {
            hole_seq: r.hole,
            stuck_side: if r.stuck == r.client {
                "client"
            } else {
                "server"
            },
            kind: kind_name(r.kind),
            dup_acks: r.dup_acks,
            loss: loss_name(r.loss),
            start_ts: rfc3339(r.since + offset),
            detected_ts: rfc3339(r.at + offset),
            end_ts: None,
            outcome: "open",
            retransmission_seen: r.retx_seen != 0,
            stuck_index: r.stuck,
        }
    }

    pub fn is_open(&self) -> bool {
        self.end_ts.is_none()
    }

    pub fn close(&mut self, r: &StallRecord, what: StallWhat, offset: u64) {
        self.end_ts = Some(rfc3339(r.at + offset));
        self.outcome = if what == StallWhat::Recovered {
            "recovered"
        } else {
            "ended"
        };
        self.retransmission_seen = r.retx_seen != 0;
        self.dup_acks = self.dup_acks.max(r.dup_acks);
    }
}

impl FlowReport {
    pub fn new(key: &FlowKey, flow: &Flow, stalls: Vec<Episode>, offset: u64) -> FlowReport {
        let c = flow.client as usize & 1;
        let (client, server) = (endpoint(key, c), endpoint(key, c ^ 1));
        FlowReport {
            client: client.to_string(),
            server: server.to_string(),
            class: class_name(flow.class),
            state: state_name(flow.state),
            first_ts: rfc3339(flow.first_ts + offset),
            last_ts: rfc3339(flow.last_ts + offset),
            stalls,
            directions: [
                direction(&flow.half[c], client, server),
                direction(&flow.half[c ^ 1], server, client),
            ],
            age_ms: None,
            idle_ms: None,
        }
    }

    pub fn is_stalled(&self) -> bool {
        !self.stalls.is_empty()
    }
}

fn direction(h: &Half, src: SocketAddr, dst: SocketAddr) -> Direction {
    Direction {
        src: src.to_string(),
        dst: dst.to_string(),
        packets: h.packets,
        bytes: h.bytes,
        dup_acks: h.events[event::DUP_ACK],
        retransmissions: h.events[event::RETRANSMISSION],
        fast_retransmissions: h.events[event::FAST_RETRANSMISSION],
        spurious_retransmissions: h.events[event::SPURIOUS_RETRANSMISSION],
        out_of_order: h.events[event::OUT_OF_ORDER],
        lost_segments: h.events[event::LOST_SEGMENT],
        acked_unseen: h.events[event::ACKED_UNSEEN],
        zero_windows: h.events[event::ZERO_WINDOW],
        keep_alives: h.events[event::KEEP_ALIVE],
    }
}

/// Endpoint `i` of a key, IPv4-mapped addresses shown as IPv4.
pub fn endpoint(key: &FlowKey, i: usize) -> SocketAddr {
    let ip = Ipv6Addr::from(key.addr_bytes(i));
    let ip = ip
        .to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(ip));
    SocketAddr::new(ip, key.port[i & 1])
}

/// Adds a stall record to a flow's episodes: a start opens one, a recovery or an end
/// closes the open one of the same stuck side.
pub fn apply(episodes: &mut Vec<Episode>, r: &StallRecord, offset: u64) {
    match StallWhat::try_from(r.what) {
        Ok(StallWhat::Started) => episodes.push(Episode::started(r, offset)),
        Ok(StallWhat::Candidate) | Err(_) => {}
        Ok(what) => {
            if let Some(open) = episodes
                .iter_mut()
                .rev()
                .find(|e| e.is_open() && e.stuck_index == r.stuck)
            {
                open.close(r, what, offset);
            }
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: clock_gettime fills the zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monotonic clock the probe stamps with (bpf_ktime_get_ns), in nanoseconds.
pub fn monotonic_now() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall clock minus the monotonic clock the probe stamps with, in nanoseconds.
pub fn monotonic_to_wall() -> u64 {
    clock_ns(libc::CLOCK_REALTIME).saturating_sub(monotonic_now())
}

pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

pub fn class_name(c: u8) -> &'static str {
    match FlowClass::try_from(c) {
        Ok(FlowClass::Ctcp) => "ctcp",
        Ok(FlowClass::Rfc9329) => "rfc9329",
        _ => "tcp",
    }
}

pub fn state_name(s: u8) -> &'static str {
    match FlowState::try_from(s) {
        Ok(FlowState::Stalled) => "stalled",
        Ok(FlowState::Recovered) => "recovered",
        Ok(FlowState::Closed) => "closed",
        _ => "active",
    }
}

pub fn kind_name(k: u8) -> &'static str {
    match StallKind::try_from(k) {
        Ok(StallKind::RetransmissionsLost) => "retransmissions_lost",
        _ => "unanswered",
    }
}

pub fn loss_name(l: u8) -> &'static str {
    match LossSide::try_from(l) {
        Ok(LossSide::Upstream) => "upstream",
        Ok(LossSide::Downstream) => "downstream",
        _ => "unknown",
    }
}
