//! The JSON line printed on stdout for each stall transition.

use ebpf_probe::abi::{StallRecord, StallWhat};
use serde_json::{Value, json};

use crate::flows::{class_name, endpoint, kind_name, loss_name, rfc3339};
use crate::offline::report::advice_for;

/// `iface` names the interface the record's flow was last seen on; `offset` turns the
/// probe's monotonic clock into wall-clock time.
pub fn event_json(r: &StallRecord, iface: &str, offset: u64) -> Value {
    let what = StallWhat::try_from(r.what).unwrap_or(StallWhat::Ended);
    let (c, class) = (r.client as usize & 1, class_name(r.class));
    let (client, server) = (endpoint(&r.key, c), endpoint(&r.key, c ^ 1));
    let kind = kind_name(r.kind);
    let mut e = json!({
        "ts": rfc3339(r.at + offset),
        "event": match what {
            StallWhat::Started => "stall_started",
            StallWhat::Recovered => "stall_recovered",
            StallWhat::Ended => "stall_ended",
            StallWhat::Candidate => "stall_candidate",
            StallWhat::LateAnswer => "late_answer",
        },
        "iface": iface,
        "class": class,
        "client": client.to_string(),
        "server": server.to_string(),
        "stuck_side": if r.stuck == r.client { "client" } else { "server" },
        "kind": kind,
        "hole_seq": r.hole,
        "dup_acks": r.dup_acks,
        "loss": loss_name(r.loss),
        "advice": advice_for(class, kind, &client.to_string(), &server.to_string()),
    });
    if what != StallWhat::Started {
        e["stalled_ms"] = json!((r.at.saturating_sub(r.since)) / 1_000_000);
    }
    e
}
