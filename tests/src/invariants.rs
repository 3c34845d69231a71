//! What every stall record must satisfy, whatever the traffic: the verdict only
//! reports a hole with at least K duplicate ACKs, the first of which it timed.

use ebpf_probe::abi::{StallRecord, StallWhat};
use ebpf_probe::verdict::Config;

/// The rules `rec` breaks (none for a record the verdict can produce from a consistent
/// flow state):
/// - every record (candidate, started, recovered, ended) is about a run of at least K
///   duplicate ACKs (`dup_acks >= K`), timed from its first one (`since != 0`), which
///   came before the transition (`since <= at`);
/// - a start comes T or more after that first duplicate ACK (`at - since >= T`): the
///   verdict compares exactly these two times. A recovery or an end may come sooner
///   after the start than the clocks of two CPUs suggest, so only starts are held to T.
pub fn record_faults(rec: &StallRecord, cfg: &Config) -> Vec<&'static str> {
    let mut faults = Vec::new();
    if rec.dup_acks < cfg.dupack_threshold {
        faults.push("dup_acks < K");
    }
    if rec.since == 0 {
        faults.push("since == 0");
    }
    if rec.since > rec.at {
        faults.push("since > at");
    }
    if rec.what == StallWhat::Started as u8
        && rec.since <= rec.at
        && rec.at - rec.since < cfg.stall_timeout_ns
    {
        faults.push("started before T");
    }
    faults
}

/// One line for a record: what, hole, duplicate ACKs, first one, transition, and the
/// time between them as the agent would report it (`stalled_ms`, here in µs).
pub fn describe(rec: &StallRecord) -> String {
    format!(
        "{} hole={} dup_acks={} since={} at={} at-since={}µs kind={} retx_seen={}",
        what(rec),
        rec.hole,
        rec.dup_acks,
        rec.since,
        rec.at,
        (rec.at as i128 - rec.since as i128) / 1000,
        rec.kind,
        rec.retx_seen
    )
}

/// The record's transition by name.
pub fn what(rec: &StallRecord) -> String {
    StallWhat::try_from(rec.what)
        .map(|w| format!("{w:?}"))
        .unwrap_or_else(|v| format!("what={v}"))
}
