//! The periodic sweep of the flow table: evicts idle and closed flows, and applies the
//! stall rule to flows whose sender went silent (no packet comes to trigger it in the
//! kernel).
//!
//! Reading the table costs ~0.6 µs a flow here (BPF_MAP_LOOKUP_BATCH copies each
//! 360-byte entry), so a tick does not read all of it: it checks the flows the probe
//! named candidates (their K-th duplicate ACK: the only ones the stall rule can fire
//! for without a packet), and walks the next slice of the table, sized so that a whole
//! pass takes about a minute. Eviction and the per-class gauges follow the pass.

use std::collections::HashSet;

use ebpf_probe::abi::{Flow, FlowKey, FlowState, StallRecord, StallWhat, event, half_flag};
use ebpf_probe::host::Records;
use ebpf_probe::verdict::{Config, end_stalls};

use crate::batch::Cursor;
use crate::probe::{Probe, ProbeError};

/// Closed flows stay this long, so late packets of the close find their entry.
const CLOSED_GRACE_NS: u64 = 10_000_000_000;
/// A whole pass of the table takes about this many ticks (at least one slice a tick).
const TICKS_PER_PASS: usize = 60;
/// The smallest slice: a table this size is walked whole at every tick.
const MIN_SLICE: usize = 2048;

/// What a whole pass of the table found: flows by [class][state], entries, totals.
#[derive(Clone, Default)]
pub struct Pass {
    pub flows: [[i64; 4]; 3],
    pub entries: usize,
    /// Per metrics class, `EVENT_TOTALS` of the flows in the table.
    pub live: [[u64; 5]; 3],
    /// The same, of the flows evicted during the pass (their last counts).
    pub evicted: [[u64; 5]; 3],
}

/// What one tick did.
#[derive(Default)]
pub struct Tick {
    /// Stall transitions it caused.
    pub records: Vec<StallRecord>,
    /// Flows it evicted (idle or closed).
    pub evictions: u64,
    /// A start record, stamped now, for each stalled side in the slice it walked.
    pub stalled: Vec<StallRecord>,
    /// The pass it completed, if it did.
    pub pass: Option<Pass>,
}

/// The sweep's state from one tick to the next.
pub struct Sweeper {
    cfg: Config,
    idle_ns: u64,
    cursor: Cursor,
    /// The pass so far.
    pass: Pass,
    /// Entries of the last whole pass (before the first: the capacity), to size slices.
    last_entries: usize,
    /// Flows to check at every tick (candidate records).
    pub watch: HashSet<FlowKey>,
}

impl Sweeper {
    pub fn new(cfg: Config, idle_ns: u64, capacity: usize) -> Sweeper {
        Sweeper {
            cfg,
            idle_ns,
            cursor: Cursor::default(),
            pass: Pass::default(),
            last_entries: capacity,
            watch: HashSet::new(),
        }
    }

    /// Checks the watched flows, then walks the next slice of the table.
    pub fn tick(&mut self, probe: &mut Probe, now: u64) -> Result<Tick, ProbeError> {
        let mut tick = Tick::default();
        self.check_watched(probe, now, &mut tick)?;
        let slice = MIN_SLICE.max(self.last_entries.div_ceil(TICKS_PER_PASS));
        self.walk(probe, now, slice, &mut tick)?;
        Ok(tick)
    }

    /// The stall rule for each candidate; a flow leaves the list once no side of it is
    /// a candidate that has not stalled yet (its ACK moved, or it stalled), or it is gone.
    fn check_watched(
        &mut self,
        probe: &mut Probe,
        now: u64,
        tick: &mut Tick,
    ) -> Result<(), ProbeError> {
        let mut done = Vec::new();
        for key in &self.watch {
            let Some(mut flow) = probe.flow(key)? else {
                done.push(*key);
                continue;
            };
            let mut sink = Records {
                key: *key,
                out: Vec::new(),
            };
            flow.check_stalls(&self.cfg, now, &mut sink);
            if !sink.out.is_empty() {
                probe.write_flow(key, &flow)?;
            }
            let waiting = flow
                .half
                .iter()
                .any(|h| h.flags & half_flag::CANDIDATE != 0 && h.flags & half_flag::STALLED == 0);
            if !waiting {
                done.push(*key);
            }
            tick.records.extend(sink.out);
        }
        for key in done {
            self.watch.remove(&key);
        }
        Ok(())
    }

    fn walk(
        &mut self,
        probe: &mut Probe,
        now: u64,
        slice: usize,
        tick: &mut Tick,
    ) -> Result<(), ProbeError> {
        // Removals and write-backs wait for the end of the slice (the walk borrows the
        // probe); both are few.
        let (mut evict, mut write) = (Vec::new(), Vec::new());
        let (cfg, idle_ns, pass) = (&self.cfg, self.idle_ns, &mut self.pass);
        let complete = probe.walk_flows(&mut self.cursor, slice, |key, flow| {
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
                add_totals(&mut pass.evicted[metrics_class(flow.class)], &flow);
            } else {
                flow.check_stalls(cfg, now, &mut sink);
                if !sink.out.is_empty() {
                    // A packet may update the entry between our read and this write;
                    // the counts of that packet are then lost, never the verdict.
                    write.push((*key, flow));
                }
                tick.stalled.extend(stalled_sides(key, &flow, Some(now)));
                pass.entries += 1;
                let c = metrics_class(flow.class);
                pass.flows[c][flow.state.min(3) as usize] += 1;
                add_totals(&mut pass.live[c], &flow);
            }
            tick.records.extend(sink.out);
            true
        })?;
        for key in &evict {
            probe.remove_flow(key)?;
        }
        for (key, flow) in &write {
            probe.write_flow(key, flow)?;
        }
        tick.evictions = evict.len() as u64;
        if complete {
            self.last_entries = self.pass.entries;
            tick.pass = Some(std::mem::take(&mut self.pass));
        }
        Ok(())
    }
}

/// One whole pass at once, nothing watched (the tests and the benchmarks).
pub fn sweep(
    probe: &mut Probe,
    cfg: &Config,
    idle_ns: u64,
    now: u64,
) -> Result<(Tick, Pass), ProbeError> {
    let mut s = Sweeper::new(*cfg, idle_ns, 0);
    let mut tick = Tick::default();
    s.walk(probe, now, usize::MAX, &mut tick)?;
    let pass = tick.pass.clone().unwrap_or_default();
    Ok((tick, pass))
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
/// a side stalled in the table without an open episode at two sightings in a row, one
/// pass apart (a record still queued at the first is read long before the second).
#[derive(Default)]
pub struct LostStarts {
    suspects: HashSet<(FlowKey, u8)>,
    /// Suspects seen again in the current pass; the others are forgotten at its end.
    seen: HashSet<(FlowKey, u8)>,
}

impl LostStarts {
    /// The records to report now, of the stalled sides a tick found.
    pub fn check(
        &mut self,
        tick: &Tick,
        reported: impl Fn(&StallRecord) -> bool,
    ) -> Vec<StallRecord> {
        let mut lost = Vec::new();
        for r in tick.stalled.iter().filter(|r| !reported(r)) {
            let side = (r.key, r.stuck);
            if self.suspects.remove(&side) {
                lost.push(*r);
            } else {
                self.seen.insert(side);
            }
        }
        if tick.pass.is_some() {
            self.suspects = std::mem::take(&mut self.seen);
        }
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
