//! The lossy healthy-flow scenario (issue 11): the `ackwatch run` agent watching real
//! Linux TCP flows to cTCP ports through the lab under random loss, beside one
//! emulated cTCP flow that stalls, and what the agent's events must and must never say.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{CLIENT4, HEADEND4, HEADEND6, Lab, Offloads};
use crate::live::{
    AGENT_ADDR, Agent, Amount, Headend, Transfer, http_get, real_tcp_downloads, real_tcp_uploads,
};
use crate::observe::metric;
use crate::stall_lab::{CtcpRun, HOLE, ISN, ctcp_from, drop_holes_at_headend};

/// The healthy uploads' server port (a cTCP port: the agent tracks it).
pub const UPLOAD_PORT: u16 = 10_000;
/// The healthy downloads' server port, given to the agent as a second cTCP port.
pub const DOWNLOAD_PORT: u16 = 10_001;
/// The emulated cTCP client's port (in `ctcp::PORTS`).
pub const STALLED_CTCP_PORT: u16 = 50_000;
/// The verdict's defaults: K duplicate ACKs, T of the ACK staying at the hole.
pub const K: u64 = 3;
pub const T: Duration = Duration::from_secs(1);
/// The emulator's segments after its 20 first ones, one every 100 ms: it outlives T.
const CTCP_MORE_SEGMENTS: usize = 16;
/// The client kernel's own ports (`Lab::with_offloads` sets its port range).
const KERNEL_PORTS: &str = "20000-40000";

/// Where the agent runs: XDP on the interface's ingress, TC on its egress, native XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentOn {
    /// `--iface h0` on the headend: uploads cross XDP, their ACKs TC.
    Headend,
    /// `--iface g1` on the gateway, its side towards the headend: uploads cross TC,
    /// their ACKs XDP.
    Gateway,
}

impl AgentOn {
    /// The namespace and the interface the agent watches.
    pub fn interface(self, lab: &Lab) -> (&str, &str) {
        match self {
            AgentOn::Headend => (&lab.headend, "h0"),
            AgentOn::Gateway => (&lab.gateway, "g1"),
        }
    }
}

/// One run: healthy real TCP flows through random loss, and one cTCP flow that
/// stalls (its ninth segment dropped at the headend's input, after the agent saw it).
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub agent_on: AgentOn,
    /// Random loss of the healthy flows' packets towards their receiver (SYNs
    /// excepted): half at the gateway's forwarding, half at the receiver's input.
    pub loss_percent: u32,
    pub uploads: usize,
    pub downloads: usize,
    /// How long each healthy flow sends.
    pub traffic: Duration,
    pub offloads: Offloads,
    /// The healthy flows over IPv6 (the cTCP flow stays on IPv4).
    pub ipv6: bool,
    /// Read /metrics and /flows once a sweep has mirrored the kernel's counters
    /// after the traffic (about a second more).
    pub read_metrics: bool,
}

/// An event line of the agent, and when the test read it.
#[derive(Clone, Debug)]
pub struct Event {
    pub read_at: Instant,
    pub json: Value,
}

/// What a run gave.
#[derive(Debug)]
pub struct Outcome {
    pub events: Vec<Event>,
    /// Every broken rule, each with the event lines it is about.
    pub problems: Vec<Problem>,
    /// stall_started events of the healthy flows (a problem at 2%, reported at the
    /// other rates).
    pub healthy_stalls: Vec<Value>,
    /// From the duplicate ACK that opened the cTCP flow's hole to its stall_started.
    pub ctcp_reported_after: Option<Duration>,
    /// The agent's /metrics after the traffic, when asked for (then checked: no
    /// packet counted as truncated or with a bad header length), and its /flows.
    pub metrics: Option<String>,
    pub flows: Option<Value>,
    pub healthy_bytes: u64,
}

/// nft rules dropping `percent`% of the healthy flows' packets towards their receiver
/// (not SYNs: a lost SYN only delays a flow by a second), half of it at the gateway's
/// forwarding and half at the receiver's input: for either placement, some segments
/// are lost before the agent sees them and some after. The cTCP emulator's ports are
/// left alone: it never retransmits, so its only loss is its hole.
pub fn random_loss(lab: &Lab, percent: u32) {
    if percent == 0 {
        return;
    }
    assert!(200 % percent == 0, "{percent}% is not 2 x 1/n");
    let every = 200 / percent;
    let upload = format!(
        "tcp sport {KERNEL_PORTS} tcp dport {UPLOAD_PORT} tcp flags & syn == 0 numgen random mod {every} == 0 drop"
    );
    let download = format!(
        "tcp sport {DOWNLOAD_PORT} tcp dport {KERNEL_PORTS} tcp flags & syn == 0 numgen random mod {every} == 0 drop"
    );
    let both = format!("{upload}\n  {download}");
    lab.nft_rule(&lab.gateway, "ackwatch_random_loss", "forward", &both);
    lab.nft_rule(&lab.headend, "ackwatch_random_loss", "input", &upload);
    lab.nft_rule(&lab.client, "ackwatch_random_loss", "input", &download);
}

/// Runs `s` in a lab of its own (removed on return, pass or fail) and checks the
/// agent's events.
pub fn run(s: &Scenario) -> Outcome {
    let lab = Lab::with_offloads(s.offloads);
    lab.quiet_client_kernel();
    drop_holes_at_headend(&lab, &[ISN]);
    random_loss(&lab, s.loss_percent);
    let uploads_to = Headend::start(&lab, &[UPLOAD_PORT]);
    let downloads_from = Headend::start_sending(&lab, &[DOWNLOAD_PORT], s.traffic);
    let (ns, iface) = s.agent_on.interface(&lab);
    let (up, down) = (UPLOAD_PORT.to_string(), DOWNLOAD_PORT.to_string());
    let agent = Agent::start(
        ns,
        &[
            "--iface",
            iface,
            "--xdp-mode",
            "native",
            "--listen",
            AGENT_ADDR,
            "--ctcp-port",
            &up,
            "--ctcp-port",
            &down,
        ],
    );
    let headend = if s.ipv6 { HEADEND6 } else { HEADEND4 };
    let server = |port| SocketAddr::new(headend.parse().unwrap(), port);
    let mut events = Vec::new();
    let mut read = |agent: &Agent, wait| {
        if let Some(json) = agent.next_event(wait) {
            events.push(Event {
                read_at: Instant::now(),
                json,
            });
        }
    };
    let (transfers, ctcp_opened, ctcp_run) = std::thread::scope(|scope| {
        let uploads = scope.spawn(|| {
            real_tcp_uploads(&lab, server(UPLOAD_PORT), s.uploads, Amount::For(s.traffic))
        });
        let downloads =
            scope.spawn(|| real_tcp_downloads(&lab, server(DOWNLOAD_PORT), s.downloads));
        let ctcp = scope.spawn(|| {
            let opened = Instant::now();
            (
                opened,
                ctcp_from(&lab, STALLED_CTCP_PORT, ISN, CTCP_MORE_SEGMENTS),
            )
        });
        // Every transfer is bounded by its sockets' timeouts; this loop by a deadline.
        let deadline = Instant::now() + s.traffic + Duration::from_secs(60);
        while ![
            uploads.is_finished(),
            downloads.is_finished(),
            ctcp.is_finished(),
        ]
        .iter()
        .all(|d| *d)
            && Instant::now() < deadline
        {
            read(&agent, Duration::from_millis(20));
        }
        let mut transfers = uploads.join().expect("uploads");
        transfers.extend(downloads.join().expect("downloads"));
        let (opened, run) = ctcp.join().expect("the cTCP emulator");
        (transfers, opened, run)
    });
    // Records of the last packets (FINs), then a sweep when the metrics are wanted.
    let tail = if s.read_metrics {
        T + Duration::from_millis(300)
    } else {
        Duration::from_millis(300)
    };
    let until = Instant::now() + tail;
    while Instant::now() < until {
        read(&agent, Duration::from_millis(20));
    }
    let metrics = s
        .read_metrics
        .then(|| http_get(ns, AGENT_ADDR, "/metrics").1);
    let flows = s.read_metrics.then(|| {
        let body = http_get(ns, AGENT_ADDR, "/flows?limit=100000").1;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/flows: {e}: {body}"))
    });
    let (_, rest) = agent.stop_with_events();
    let stopped = Instant::now();
    events.extend(rest.into_iter().map(|json| Event {
        read_at: stopped,
        json,
    }));
    let healthy_bytes = uploads_to.stop() + downloads_from.stop();
    let mut opened: HashMap<String, Instant> = transfers
        .iter()
        .map(|t: &Transfer| (t.local.to_string(), t.opened))
        .collect();
    let ctcp_client = format!("{CLIENT4}:{STALLED_CTCP_PORT}");
    opened.insert(ctcp_client.clone(), ctcp_opened);
    let mut outcome = Outcome {
        problems: Vec::new(),
        healthy_stalls: Vec::new(),
        ctcp_reported_after: None,
        metrics,
        flows,
        healthy_bytes,
        events: Vec::new(),
    };
    check_records(&events, &opened, &mut outcome.problems);
    check_ctcp_stall(&events, &ctcp_client, &ctcp_run, &mut outcome);
    if let Some(m) = &outcome.metrics {
        for reason in ["truncated", "bad_header_length"] {
            let name = format!("ackwatch_untracked_packets_total{{reason=\"{reason}\"}}");
            match metric(m, &name) {
                Some(0.0) => {}
                n => outcome
                    .problems
                    .push(Problem::new(rule::MISREAD, format!("{name} {n:?}"))),
            }
        }
    }
    outcome.healthy_stalls = started(&events)
        .filter(|e| e.json["client"] != ctcp_client.as_str())
        .map(|e| e.json.clone())
        .collect();
    if s.loss_percent == 2 {
        for e in &outcome.healthy_stalls {
            outcome
                .problems
                .push(Problem::new(rule::HEALTHY_STALL_AT_2_PERCENT, Line(e)));
        }
    }
    outcome.events = events;
    outcome
}

/// A broken rule and the event lines it is about.
#[derive(Clone, Debug)]
pub struct Problem {
    /// One of `rule::*`.
    pub rule: &'static str,
    pub detail: String,
}

impl Problem {
    fn new(rule: &'static str, detail: impl std::fmt::Display) -> Problem {
        Problem {
            rule,
            detail: detail.to_string(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// The rules a run's events must keep, by name (for tallies over many runs).
pub mod rule {
    pub const FEWER_THAN_K_DUP_ACKS: &str = "a stall record with fewer than K = 3 duplicate ACKs";
    pub const ZERO_MS: &str = "a stall of 0 ms";
    pub const SHORTER_THAN_T: &str = "a stall shorter than T (1 s)";
    pub const STARTED_BEFORE_T: &str =
        "a stall started before its first duplicate ACK was T old (as its end dates it)";
    pub const LONGER_THAN_THE_FLOW: &str = "a stall longer than its flow has lived";
    pub const END_BEFORE_START: &str = "a stall's end printed before its stall_started";
    pub const END_NEVER_STARTED: &str = "the end of a stall never started";
    pub const OTHER_HOLE: &str = "an episode that ends at another hole than it started";
    pub const SECOND_START: &str = "a second stall_started while one is open";
    pub const UNKNOWN_FLOW: &str = "an event for a flow this run never opened";
    pub const UNKNOWN_EVENT: &str = "an unknown event";
    pub const HEALTHY_STALL_AT_2_PERCENT: &str = "a healthy flow stalled at 2% loss";
    pub const CTCP_NOT_ONCE: &str = "the stalled cTCP flow not reported exactly once";
    pub const CTCP_LATE: &str =
        "the cTCP stall reported later than T + 1 s after its first duplicate ACK";
    pub const CTCP_WRONG: &str = "the cTCP stall's details are wrong";
    pub const MISREAD: &str =
        "packets counted as truncated or with a bad header length (super-packets misread)";
}

/// An event line as printed in problems and reports: without its `advice`, the same
/// long text for every stall of a class.
pub struct Line<'a>(pub &'a Value);

impl std::fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let mut e = self.0.clone();
        if let Some(o) = e.as_object_mut() {
            o.remove("advice");
        }
        write!(f, "{e}")
    }
}

/// An event's `ts`.
fn ts(e: &Value) -> std::time::SystemTime {
    let ts = e["ts"].as_str().unwrap_or_default();
    humantime::parse_rfc3339(ts).unwrap_or_else(|err| panic!("ts {ts}: {err}: {e}"))
}

fn started(events: &[Event]) -> impl Iterator<Item = &Event> {
    events.iter().filter(|e| e.json["event"] == "stall_started")
}

/// The rules every stall record keeps, whatever the loss (semantics.md,
/// "Consistency"): at least K duplicate ACKs; an episode that ends was started (and
/// printed in that order), at least T after its first duplicate ACK, lasted at least
/// T (so never 0 ms) and not longer than its flow has lived; one flow, one open
/// episode at a time.
fn check_records(events: &[Event], opened: &HashMap<String, Instant>, problems: &mut Vec<Problem>) {
    let mut by_flow: HashMap<&str, Vec<&Event>> = HashMap::new();
    for ev in events {
        let e = &ev.json;
        let dup_acks = e["dup_acks"].as_u64().unwrap_or(0);
        if dup_acks < K {
            problems.push(Problem::new(rule::FEWER_THAN_K_DUP_ACKS, Line(e)));
        }
        let client = e["client"].as_str().unwrap_or_default();
        if !opened.contains_key(client) {
            problems.push(Problem::new(rule::UNKNOWN_FLOW, Line(e)));
            continue;
        }
        by_flow.entry(client).or_default().push(ev);
    }
    for (client, events) in by_flow {
        let flow_opened = opened[client];
        // Episodes: (start, end), paired by hole, in the order printed.
        let (mut open, mut early_ends, mut episodes) =
            (Vec::<&Event>::new(), Vec::<&Event>::new(), Vec::new());
        for ev in events {
            let e = &ev.json;
            match e["event"].as_str() {
                Some("stall_started") => {
                    if let Some(i) = early_ends
                        .iter()
                        .position(|x| x.json["hole_seq"] == e["hole_seq"])
                    {
                        let end = early_ends.remove(i);
                        problems.push(Problem::new(
                            rule::END_BEFORE_START,
                            format!("\n  {}\n  {}", Line(&end.json), Line(e)),
                        ));
                        episodes.push((ev, end));
                        continue;
                    }
                    if let Some(before) = open.last() {
                        problems.push(Problem::new(
                            rule::SECOND_START,
                            format!("\n  {}\n  {}", Line(&before.json), Line(e)),
                        ));
                    }
                    open.push(ev);
                }
                Some("stall_recovered" | "stall_ended") => {
                    let stalled_ms = e["stalled_ms"].as_u64().unwrap_or(0);
                    let lived_ms = ev.read_at.duration_since(flow_opened).as_millis() as u64;
                    if stalled_ms == 0 {
                        problems.push(Problem::new(rule::ZERO_MS, Line(e)));
                    } else if stalled_ms < T.as_millis() as u64 {
                        problems.push(Problem::new(rule::SHORTER_THAN_T, Line(e)));
                    }
                    if stalled_ms > lived_ms + 1 {
                        problems.push(Problem::new(
                            rule::LONGER_THAN_THE_FLOW,
                            format!("{stalled_ms} ms in a flow {lived_ms} ms old: {}", Line(e)),
                        ));
                    }
                    if let Some(i) = open
                        .iter()
                        .position(|s| s.json["hole_seq"] == e["hole_seq"])
                    {
                        episodes.push((open.remove(i), ev));
                    } else if let Some(s) = open.pop() {
                        problems.push(Problem::new(
                            rule::OTHER_HOLE,
                            format!("\n  {}\n  {}", Line(&s.json), Line(e)),
                        ));
                    } else {
                        early_ends.push(ev);
                    }
                }
                _ => problems.push(Problem::new(rule::UNKNOWN_EVENT, Line(e))),
            }
        }
        for end in early_ends {
            problems.push(Problem::new(rule::END_NEVER_STARTED, Line(&end.json)));
        }
        for (start, end) in episodes {
            let (s, e) = (&start.json, &end.json);
            let stalled_ms = e["stalled_ms"].as_u64().unwrap_or(0);
            // The episode's first duplicate ACK, as its end dates it: stalled_ms is
            // rounded down to the millisecond, so it came up to 1 ms before this.
            let first_dup_ack = ts(e) - Duration::from_millis(stalled_ms);
            if ts(s) + Duration::from_millis(1) < first_dup_ack + T {
                let when = match ts(s).duration_since(first_dup_ack) {
                    Ok(d) => format!("{} µs after", d.as_micros()),
                    Err(d) => format!("{} µs before", d.duration().as_micros()),
                };
                problems.push(Problem::new(
                    rule::STARTED_BEFORE_T,
                    format!(
                        "started {when} its first duplicate ACK (-0/+1 ms)\n  {}\n  {}",
                        Line(s),
                        Line(e)
                    ),
                ));
            }
        }
    }
}

/// The cTCP flow that stalls: exactly one stall_started, within T + 1 s of the
/// duplicate ACK that opened its hole, naming the flow, the hole, the client as the
/// stuck side, "unanswered" and where the hole was lost. The hole is the one the
/// headend really has (its last ACK): the planned one, dropped at the headend's input
/// after the probe saw it ("downstream"), unless the lab lost an earlier segment
/// before the probe (a veth with native XDP drops when its ring is full), which the
/// verdict must then name, "upstream".
fn check_ctcp_stall(events: &[Event], client: &str, run: &CtcpRun, outcome: &mut Outcome) {
    let first_dup_ack = run.after_hole;
    let hole = match run.acked {
        Some(acked) if acked == HOLE || (acked.wrapping_sub(ISN) as i32 > 0 && acked < HOLE) => {
            acked
        }
        other => {
            outcome.problems.push(Problem::new(
                rule::CTCP_WRONG,
                format!("the headend's last ACK {other:?} is not a hole at or before {HOLE}"),
            ));
            return;
        }
    };
    let loss = if hole == HOLE {
        "downstream"
    } else {
        "upstream"
    };
    let ours: Vec<&Event> = started(events)
        .filter(|e| e.json["client"] == client)
        .collect();
    let [e] = ours[..] else {
        let lines: Vec<String> = ours.iter().map(|e| Line(&e.json).to_string()).collect();
        outcome.problems.push(Problem::new(
            rule::CTCP_NOT_ONCE,
            format!("{} stall_started for {client}: {lines:?}", ours.len()),
        ));
        return;
    };
    let after = e.read_at.saturating_duration_since(first_dup_ack);
    outcome.ctcp_reported_after = Some(after);
    if after > T + Duration::from_secs(1) {
        outcome.problems.push(Problem::new(
            rule::CTCP_LATE,
            format!("{after:?}: {}", Line(&e.json)),
        ));
    }
    let want = [
        ("server", Value::from(format!("{HEADEND4}:{UPLOAD_PORT}"))),
        ("hole_seq", Value::from(hole)),
        ("stuck_side", Value::from("client")),
        ("kind", Value::from("unanswered")),
        ("loss", Value::from(loss)),
        ("class", Value::from("ctcp")),
    ];
    for (field, value) in want {
        if e.json[field] != value {
            outcome.problems.push(Problem::new(
                rule::CTCP_WRONG,
                format!(
                    "{field} is {}, not {value}: {}",
                    e.json[field],
                    Line(&e.json)
                ),
            ));
        }
    }
}
