//! `ackwatch flows`: the flow table of a running agent, read from its /flows API.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

/// `GET path` from the agent at `addr`: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: ackwatch\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Prints the agent's flows as a table (or one JSON object per line).
pub fn print_flows(out: &mut impl Write, flows: &[Value], json: bool) -> std::io::Result<()> {
    if json {
        for f in flows {
            writeln!(out, "{f}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<40} {:<40} {:<7} {:<9} {:>8} {:>8} {:>7} {:>6} {:>6}",
        "CLIENT", "SERVER", "CLASS", "STATE", "PKTS>", "PKTS<", "DUPACK", "RETX", "STALLS"
    )?;
    for f in flows {
        let d = |i: usize, k: &str| f["directions"][i][k].as_u64().unwrap_or(0);
        writeln!(
            out,
            "{:<40} {:<40} {:<7} {:<9} {:>8} {:>8} {:>7} {:>6} {:>6}",
            f["client"].as_str().unwrap_or(""),
            f["server"].as_str().unwrap_or(""),
            f["class"].as_str().unwrap_or(""),
            f["state"].as_str().unwrap_or(""),
            d(0, "packets"),
            d(1, "packets"),
            d(0, "dup_acks") + d(1, "dup_acks"),
            d(0, "retransmissions") + d(1, "retransmissions"),
            f["stalls"].as_array().map_or(0, |s| s.len())
        )?;
        for s in f["stalls"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "    stall: {} stuck, hole at seq {}, {} duplicate ACKs, {}, loss {}, since {}, {}",
                s["stuck_side"].as_str().unwrap_or(""),
                s["hole_seq"],
                s["dup_acks"],
                s["kind"].as_str().unwrap_or(""),
                s["loss"].as_str().unwrap_or(""),
                s["start_ts"].as_str().unwrap_or(""),
                s["outcome"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
