//! What every stall record must satisfy, whatever the traffic: the verdict only
//! reports a hole with at least K duplicate ACKs, the first of which it timed.

use ebpf_probe::abi::{StallRecord, StallWhat};
use ebpf_probe::verdict::Config;

/// The rules `rec` breaks (`verdict::record_faults`), as a list for messages.
pub fn record_faults(rec: &StallRecord, cfg: &Config) -> Vec<&'static str> {
    ebpf_probe::verdict::record_faults(rec, cfg).collect()
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
