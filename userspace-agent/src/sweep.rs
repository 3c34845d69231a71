//! The periodic walk of the flow table: evicts idle and closed flows, and applies the
//! stall rule to flows whose sender went silent (no packet comes to trigger it in the
//! kernel).

use std::collections::HashSet;

use ebpf_probe::abi::{Flow, FlowKey, FlowState, StallRecord, StallWhat, event, half_flag};
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
    /// A start record for each side the table holds stalled, stamped now.
    pub stalled: Vec<StallRecord>,
}

/// A start record for each side of `flow` that is stalled, stamped `at` (else when
/// its hole opened).
pub fn stalled_sides(key: &FlowKey, flow: &Flow, at: Option<u64>) -> Vec<StallRecord> {
    (0..2)
        .filter(|&r| flow.half[r].flags & half_flag::STALLED != 0)
        .map(|r| {
            let mut rec = StallRecord::default();
            let at = at.unwrap_or(flow.half[r].hole_since);
            rec.fill(key, flow, r, StallWhat::Started, at);
            rec
        })
        .collect()
}

/// Finds stalls whose start record never reached the agent (the ring buffer was full):
/// a side stalled in the table without an open episode in two sweeps in a row (a record
/// still queued at the first is read by the second).
#[derive(Default)]
pub struct LostStarts {
    suspects: HashSet<(FlowKey, u8)>,
}

impl LostStarts {
    /// The records to report now, of the table's `stalled` sides.
    pub fn check(
        &mut self,
        stalled: &[StallRecord],
        reported: impl Fn(&StallRecord) -> bool,
    ) -> Vec<StallRecord> {
        let mut lost = Vec::new();
        let mut suspects = HashSet::new();
        for r in stalled.iter().filter(|r| !reported(r)) {
            let side = (r.key, r.stuck);
            if self.suspects.contains(&side) {
                lost.push(*r);
            } else {
                suspects.insert(side);
            }
        }
        self.suspects = suspects;
        lost
    }
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
        stalled: Vec::new(),
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
            swept.stalled.extend(stalled_sides(key, &flow, Some(now)));
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
