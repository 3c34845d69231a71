//! The body of a `CtcpFlowStalled` alert (Alertmanager's v2 API).

use ebpf_probe::abi::StallRecord;
use serde_json::{Value, json};

use crate::flows::rfc3339;
use crate::offline::report::{host, port};
use crate::serve::events::event_json;

/// The alert of `r`'s flow; it starts when the hole opened (`r.since`). `headend`
/// names the machine, so that alerts of a fleet say where they come from.
pub fn alert_json(r: &StallRecord, iface: &str, offset: u64, headend: &str) -> Value {
    let e = event_json(r, iface, offset);
    let (client, server) = (
        e["client"].as_str().unwrap_or(""),
        e["server"].as_str().unwrap_or(""),
    );
    let bypass = format!(
        "access-list ctcp-bypass extended permit tcp host {} host {} eq {}\nclass-map ctcp-bypass-class\n match access-list ctcp-bypass\npolicy-map global_policy\n class ctcp-bypass-class\n  set connection advanced-options tcp-state-bypass",
        host(client),
        host(server),
        port(server)
    );
    json!({
        "labels": {
            "alertname": "CtcpFlowStalled",
            "client": client,
            "server": server,
            "class": e["class"],
            "iface": iface,
            "headend": headend,
            "severity": "critical",
        },
        "annotations": {
            "summary": format!("{} flow {client} -> {server} stuck on duplicate ACKs", e["class"].as_str().unwrap_or("")),
            "description": format!(
                "hole at seq {}, {} duplicate ACKs, the {} side is stuck ({}), loss {}",
                r.hole, r.dup_acks, e["stuck_side"].as_str().unwrap_or(""), e["kind"].as_str().unwrap_or(""), e["loss"].as_str().unwrap_or("")
            ),
            "remediation": e["advice"],
            "tcp_state_bypass": bypass,
        },
        "startsAt": rfc3339(r.since + offset),
    })
}

/// This machine's host name (the `headend` label).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
