//! The periodic walk of the flow table: evicts idle and closed flows, and applies the
//! stall rule to flows whose sender went silent (no packet comes to trigger it in the
//! kernel).

use ebpf_probe::abi::{FlowState, StallRecord};
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
}

pub fn sweep(probe: &mut Probe, cfg: &Config, idle_ns: u64, now: u64) -> Result<Swept, ProbeError> {
    let mut swept = Swept {
        records: Vec::new(),
        flows: [[0; 4]; 3],
        entries: 0,
    };
    for (key, mut flow) in probe.flows()? {
        let quiet = now.saturating_sub(flow.last_ts);
        let closed = flow.state == FlowState::Closed as u8;
        let mut sink = Records {
            key,
            out: Vec::new(),
        };
        if quiet >= idle_ns || (closed && quiet >= CLOSED_GRACE_NS) {
            end_stalls(&mut flow, now, &mut sink);
            probe.remove_flow(&key)?;
        } else {
            flow.check_stalls(cfg, now, &mut sink);
            if !sink.out.is_empty() {
                // A packet may update the entry between our read and this write; the
                // counts of that packet are then lost, never the verdict.
                probe.write_flow(&key, &flow)?;
            }
            swept.entries += 1;
            let (c, s) = (flow.class.min(2) as usize, flow.state.min(3) as usize);
            // Class order in metrics is ctcp, rfc9329, tcp; in the ABI tcp comes first.
            let c = [2, 0, 1][c];
            swept.flows[c][s] += 1;
        }
        swept.records.extend(sink.out);
    }
    Ok(swept)
}
