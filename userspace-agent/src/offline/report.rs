//! The readable report of `ackwatch analyze`.

use std::io::{self, Write};

use ebpf_probe::abi::counter;

use crate::flows::{Episode, FlowReport};

pub fn text(
    out: &mut impl Write,
    flows: &[FlowReport],
    counters: &[u64],
    frames: u64,
) -> io::Result<()> {
    writeln!(
        out,
        "{:<40} {:<40} {:<7} {:<9} {:>8} {:>8} {:>7} {:>6} {:>5} {:>6}",
        "CLIENT", "SERVER", "CLASS", "STATE", "PKTS>", "PKTS<", "DUPACK", "RETX", "LOST", "STALLS"
    )?;
    for f in flows {
        let [c, s] = &f.directions;
        writeln!(
            out,
            "{:<40} {:<40} {:<7} {:<9} {:>8} {:>8} {:>7} {:>6} {:>5} {:>6}",
            f.client,
            f.server,
            f.class,
            f.state,
            c.packets,
            s.packets,
            c.dup_acks + s.dup_acks,
            c.retransmissions + s.retransmissions,
            c.lost_segments + s.lost_segments,
            f.stalls.len()
        )?;
    }
    let stalls: Vec<(&FlowReport, &Episode)> = flows
        .iter()
        .flat_map(|f| f.stalls.iter().map(move |e| (f, e)))
        .collect();
    if !stalls.is_empty() {
        writeln!(out, "\nStalls:")?;
    }
    for (f, e) in &stalls {
        let (stuck, other) = if e.stuck_side == "client" {
            (&f.client, &f.server)
        } else {
            (&f.server, &f.client)
        };
        writeln!(
            out,
            "  {} {stuck} -> {other} ({}): hole at seq {}, {} duplicate ACKs",
            e.detected_ts, f.class, e.hole_seq, e.dup_acks
        )?;
        writeln!(out, "    {}", describe(e))?;
        writeln!(
            out,
            "    outcome: {}{}",
            e.outcome,
            e.end_ts
                .as_ref()
                .map(|t| format!(" at {t}"))
                .unwrap_or_default()
        )?;
        writeln!(out, "    what to do: {}", advice(f, e))?;
    }
    let tracked = counters[counter::TRACKED as usize];
    writeln!(
        out,
        "\n{frames} frames, {tracked} TCP packets tracked, {} flows shown, {} stalls",
        flows.len(),
        stalls.len()
    )?;
    let untracked: Vec<String> = counter::REASON_NAMES
        .iter()
        .zip(counters)
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    if !untracked.is_empty() {
        writeln!(out, "not tracked: {}", untracked.join(" "))?;
    }
    Ok(())
}

fn describe(e: &Episode) -> String {
    let who = e.stuck_side;
    let what = if e.kind == "unanswered" {
        format!(
            "the {who} never retransmitted the missing segment (it ignores duplicate ACKs: no TCP stack, as cTCP)"
        )
    } else {
        format!(
            "the {who} retransmitted the missing segment, and the retransmissions were lost too"
        )
    };
    let loss = match e.loss {
        "upstream" => {
            format!("the segment was lost before the monitor (between the {who} and the monitor)")
        }
        "downstream" => {
            "the monitor saw the segment: it was lost after it, on the way to the receiver"
                .to_string()
        }
        _ => "where the segment was lost is unknown (the monitor joined mid-flow)".to_string(),
    };
    format!("{what}; {loss}")
}

/// The operator's choices, from semantics.md.
pub fn advice(f: &FlowReport, e: &Episode) -> String {
    advice_for(f.class, e.kind, &f.client, &f.server)
}

/// What to do about a stall of `kind` on a flow of `class` between `client` and
/// `server` ("ip:port").
pub fn advice_for(class: &str, kind: &str, client: &str, server: &str) -> String {
    if class == "ctcp" && kind == "unanswered" {
        format!(
            "move this client to IPsec over UDP (NAT-T, UDP 4500) or native ESP, or to AnyConnect; \
             or exempt the flow from stateful checks on the ASA \
             (access-list ctcp-bypass extended permit tcp host {} host {} eq {}, \
             matched by a class with set connection advanced-options tcp-state-bypass); and find the loss",
            host(client),
            host(server),
            port(server)
        )
    } else {
        "find the loss: the path keeps dropping this segment".to_string()
    }
}

/// The address part of an "ip:port" endpoint, without IPv6 brackets.
pub(crate) fn host(ep: &str) -> &str {
    ep.rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(ep)
}

/// The port part of an "ip:port" endpoint.
pub(crate) fn port(ep: &str) -> &str {
    ep.rsplit_once(':').map(|(_, p)| p).unwrap_or("10000")
}
