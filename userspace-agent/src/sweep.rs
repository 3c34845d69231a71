//! The periodic walk of the flow table: evicts idle and closed flows, and applies the
//! stall rule to flows whose sender went silent (no packet comes to trigger it in the
//! kernel).

use ebpf_probe::abi::{Flow, FlowState, StallRecord, event};
use ebpf_probe::host::Records;
use ebpf_probe::verdict::{Config, end_stalls};

use crate::probe::{Probe, ProbeError};

/// Closed flows stay this long, so late packets of the close find their entry.
const CLOSED_GRACE_NS: u64 = 10_000_000_000;

/// What one sweep saw: records of its transitions, flows by [class][state], entries.
pub struct Swept {
    pub records: Vec<StallRecord>,
    pub flows: [[i64; 4]; 3],
    pub entries: usize,
    /// Per metrics class, `EVENT_TOTALS` of the flows in the table.
    pub live: [[u64; 5]; 3],
    /// The same, of the flows this sweep evicted (their last counts).
    pub evicted: [[u64; 5]; 3],
    /// Flows this sweep evicted (idle or closed).
    pub evictions: u64,
}

/// Per-flow totals the metrics carry by class: segments, and the `abi::event`s below.
pub const EVENT_TOTALS: [usize; 4] = [
    event::DUP_ACK,
    event::RETRANSMISSION,
    event::LOST_SEGMENT,
    event::ACKED_UNSEEN,
];

/// Index of a flow's class in the metrics' order (ctcp, rfc9329, tcp; the ABI puts tcp first).
fn metrics_class(class: u8) -> usize {
    [2, 0, 1][class.min(2) as usize]
}

fn add_totals(into: &mut [u64; 5], flow: &Flow) {
    for h in &flow.half {
        into[0] += h.packets;
        for (i, e) in EVENT_TOTALS.iter().enumerate() {
            into[i + 1] += h.events[*e] as u64;
        }
    }
}

pub fn sweep(probe: &mut Probe, cfg: &Config, idle_ns: u64, now: u64) -> Result<Swept, ProbeError> {
    let mut swept = Swept {
        records: Vec::new(),
        flows: [[0; 4]; 3],
        entries: 0,
        live: [[0; 5]; 3],
        evicted: [[0; 5]; 3],
        evictions: 0,
    };
    // Removals and write-backs wait for the end of the walk (the walk borrows the probe);
    // both are few.
    let (mut evict, mut write) = (Vec::new(), Vec::new());
    probe.for_each_flow(|key, flow| {
        let mut flow = *flow;
        let quiet = now.saturating_sub(flow.last_ts);
        let closed = flow.state == FlowState::Closed as u8;
        let mut sink = Records {
            key: *key,
            out: Vec::new(),
        };
        if quiet >= idle_ns || (closed && quiet >= CLOSED_GRACE_NS) {
            end_stalls(&mut flow, now, &mut sink);
            evict.push(*key);
            add_totals(&mut swept.evicted[metrics_class(flow.class)], &flow);
        } else {
            flow.check_stalls(cfg, now, &mut sink);
            if !sink.out.is_empty() {
                // A packet may update the entry between our read and this write; the
                // counts of that packet are then lost, never the verdict.
                write.push((*key, flow));
            }
            swept.entries += 1;
            let c = metrics_class(flow.class);
            swept.flows[c][flow.state.min(3) as usize] += 1;
            add_totals(&mut swept.live[c], &flow);
        }
        swept.records.extend(sink.out);
        true
    })?;
    for key in &evict {
        probe.remove_flow(key)?;
    }
    swept.evictions = evict.len() as u64;
    for (key, flow) in &write {
        probe.write_flow(key, flow)?;
    }
    Ok(swept)
}
