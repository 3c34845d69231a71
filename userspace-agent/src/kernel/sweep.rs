//! The periodic sweep of the flow table: evicts idle and closed flows, and applies the
//! stall rule to flows whose sender went silent (no packet comes to trigger it in the
//! kernel).
//!
//! The table is mapped into the agent's memory (`flow_table`): a tick checks the flows
//! the probe named candidates (their K-th duplicate ACK: the only ones the stall rule
//! can fire for without a packet) and walks the next slice of the table, sized so that
//! a whole pass takes about a minute. Eviction and the per-class gauges follow the
//! pass. The stall rule runs on the live entry under its lock, as the probe's does, so
//! the verdict never reads a half-written state and no packet's update is lost; a flow
//! the probe holds at that instant is checked at the next tick.
//!
//! The pending table (half-open and one-sided flows) is walked the same way, with its
//! own cursor: its entries no longer leave by themselves (the probe evicts one only
//! when a new flow needs its place), so the sweep evicts the idle (or closed) ones as
//! it evicts established flows: under their locks, never waiting for the probe. They
//! count in no gauge: they are not flows yet.

use std::collections::HashSet;

use ebpf_probe::abi::{Flow, FlowKey, FlowState, StallRecord, StallWhat, event, half_flag};
use ebpf_probe::host::Records;
use ebpf_probe::verdict::{self, Config, end_stalls};

use crate::kernel::flow_table::{Free, Part};
use crate::kernel::probe::Probe;

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
    /// Pending entries it evicted (idle or closed).
    pub pending_evictions: u64,
    /// A start record, stamped now, for each stalled side in the slice it walked.
    pub stalled: Vec<StallRecord>,
    /// The pass it completed, if it did.
    pub pass: Option<Pass>,
    /// Verdicts refused on an impossible state.
    pub impossible: u64,
}

/// The sweep's state from one tick to the next.
pub struct Sweeper {
    cfg: Config,
    idle_ns: u64,
    /// Next slot of the walk.
    cursor: u32,
    /// Next slot of the pending table's walk.
    pending_cursor: u32,
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
            cursor: 0,
            pending_cursor: 0,
            pass: Pass::default(),
            last_entries: capacity,
            watch: HashSet::new(),
        }
    }

    /// Checks the watched flows, then walks the next slice of the table.
    pub fn tick(&mut self, probe: &Probe, now: u64) -> Tick {
        let mut tick = Tick::default();
        self.check_watched(probe, now, &mut tick);
        let slice = MIN_SLICE.max(self.last_entries.div_ceil(TICKS_PER_PASS));
        self.walk(probe, now, slice, &mut tick);
        let pending = probe.pending_table();
        let slice = MIN_SLICE.max((pending.slots() as usize).div_ceil(TICKS_PER_PASS));
        self.walk_pending(probe, now, slice, &mut tick);
        tick
    }

    /// The stall rule for each candidate; a flow leaves the list once no side of it is
    /// a candidate that has not stalled yet (its ACK moved, or it stalled), or it is gone.
    fn check_watched(&mut self, probe: &Probe, now: u64, tick: &mut Tick) {
        let mut done = Vec::new();
        let table = probe.table();
        for key in &self.watch {
            let Some(i) = table.find(key) else {
                done.push(*key);
                continue;
            };
            let mut sink = Records::new(*key);
            let waiting = table.with_locked(i, key, |flow| {
                flow.check_stalls(&self.cfg, now, &mut sink);
                let waiting = flow.half.iter().any(|h| {
                    h.flags & half_flag::CANDIDATE != 0 && h.flags & half_flag::STALLED == 0
                });
                (waiting, Free::No)
            });
            // Busy: checked at the next tick.
            if waiting == Some(false) {
                done.push(*key);
            }
            tick.impossible += sink.impossible;
            tick.records.extend(sink.out);
        }
        for key in done {
            self.watch.remove(&key);
        }
    }

    fn walk(&mut self, probe: &Probe, now: u64, slice: usize, tick: &mut Tick) {
        // Flows the rule or eviction must change: done under their locks after the
        // slice (the walk borrows the probe); they are few.
        let mut due = Vec::new();
        let (cfg, idle_ns, pass) = (&self.cfg, self.idle_ns, &mut self.pass);
        let table = probe.table();
        // The pass reads what the stall rule's test, eviction and the totals need (3-4
        // of a slot's 7 cache lines), and all of a flow only when one of them may
        // concern it.
        let complete = probe.walk_flows(&mut self.cursor, slice, Part::Sweep, |i, _, part| {
            let applies = (0..2).any(|r| verdict::stall_rule_applies(part, r, cfg));
            if !applies && part.stalled_sides() == 0 && !evictable(part, now, idle_ns) {
                pass.count(part);
                return true;
            }
            // Gone since: nothing to do; busy: the next pass sees it.
            let Some((key, flow)) = table.read(i) else {
                return true;
            };
            let (key, flow) = (&key, &flow);
            // The rule on a copy says whether the live entry needs it.
            let due_now = (0..2).any(|r| verdict::stall_rule_applies(flow, r, cfg)) && {
                let mut trial = *flow;
                let mut sink = Records::new(*key);
                trial.check_stalls(cfg, now, &mut sink);
                !sink.out.is_empty()
            };
            if evictable(flow, now, idle_ns) || due_now {
                due.push((i, *key, *flow));
            } else {
                pass.count(flow);
                tick.stalled.extend(stalled_sides(key, flow, Some(now)));
            }
            true
        });
        for (i, key, seen) in due {
            let mut sink = Records::new(key);
            // Decided again on the live entry: a packet may have come since the copy.
            let done = table.with_locked(i, &key, |flow| {
                let evict = evictable(flow, now, idle_ns);
                if evict {
                    end_stalls(flow, now, &mut sink);
                } else {
                    flow.check_stalls(cfg, now, &mut sink);
                }
                ((*flow, evict), if evict { Free::Yes } else { Free::No })
            });
            // Busy or gone: as it was seen, for the next tick to look at again.
            let (flow, evicted) = done.unwrap_or((seen, false));
            if evicted {
                tick.evictions += 1;
                add_totals(&mut pass.evicted[metrics_class(flow.class)], &flow);
            } else {
                pass.count(&flow);
                tick.stalled.extend(stalled_sides(&key, &flow, Some(now)));
            }
            tick.impossible += sink.impossible;
            tick.records.extend(sink.out);
        }
        if complete {
            self.last_entries = self.pass.entries;
            tick.pass = Some(std::mem::take(&mut self.pass));
        }
    }

    /// Evicts the idle entries of the next `slice` pending flows: decided on a copy,
    /// then again under the entry's lock (a packet may have come since).
    fn walk_pending(&mut self, probe: &Probe, now: u64, slice: usize, tick: &mut Tick) {
        let table = probe.pending_table();
        let idle_ns = self.idle_ns;
        let mut due = Vec::new();
        table.walk(
            &mut self.pending_cursor,
            slice,
            Part::Sweep,
            |i, key, flow| {
                if evictable(flow, now, idle_ns) {
                    due.push((i, *key));
                }
                true
            },
        );
        for (i, key) in due {
            let mut sink = Records::new(key);
            let evicted = table.with_locked(i, &key, |flow| {
                let evict = evictable(flow, now, idle_ns);
                if evict {
                    end_stalls(flow, now, &mut sink);
                }
                (evict, if evict { Free::Yes } else { Free::No })
            });
            tick.pending_evictions += evicted.unwrap_or(false) as u64;
            tick.records.extend(sink.out);
        }
    }
}

/// Idle for the idle timeout, or closed for `CLOSED_GRACE_NS`.
fn evictable(flow: &Flow, now: u64, idle_ns: u64) -> bool {
    let quiet = now.saturating_sub(flow.last_ts);
    let closed = flow.state == FlowState::Closed as u8;
    quiet >= idle_ns || (closed && quiet >= CLOSED_GRACE_NS)
}

impl Pass {
    /// Counts a flow that stays in the table.
    fn count(&mut self, flow: &Flow) {
        self.entries += 1;
        let c = metrics_class(flow.class);
        self.flows[c][flow.state.min(3) as usize] += 1;
        add_totals(&mut self.live[c], flow);
    }
}

/// One whole pass at once, nothing watched (the tests and the benchmarks).
pub fn sweep(probe: &Probe, cfg: &Config, idle_ns: u64, now: u64) -> (Tick, Pass) {
    let mut s = Sweeper::new(*cfg, idle_ns, 0);
    let mut tick = Tick::default();
    s.walk(probe, now, usize::MAX, &mut tick);
    s.walk_pending(probe, now, usize::MAX, &mut tick);
    let pass = tick.pass.clone().unwrap_or_default();
    (tick, pass)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ebpf_probe::table::{Slot, read, read_sweep};

    /// The whole pass decides on `table::read_sweep`'s part of a flow: every test it
    /// makes there must come out as on the whole flow, whatever the flow holds.
    #[test]
    fn the_sweep_part_of_a_flow_decides_as_the_whole_flow() {
        let cfg = Config::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut applies, mut evicts) = (0, 0);
        for _ in 0..10_000 {
            let mut slot = Slot::default();
            let words = size_of::<Slot>() / 8;
            let p = &mut slot as *mut Slot as *mut u64;
            for w in 1..words {
                // SAFETY: whole words of the slot (the lock word stays 0: unlocked).
                unsafe { p.add(w).write(next()) };
            }
            let f = &mut slot.flow;
            f.state = (next() % 4) as u8;
            f.class = (next() % 3) as u8;
            f.last_ts = next() % 2_000;
            for h in &mut f.half {
                h.dup_run = (next() % 6) as u32;
                h.flags = (next() & 0x7f) as u32;
                h.packets = next() % 1_000_000;
            }
            // SAFETY: a live slot on this stack.
            let (_, whole) = unsafe { read(&slot) }.expect("unlocked");
            let (_, part) = unsafe { read_sweep(&slot) }.expect("unlocked");
            for r in 0..2 {
                let a = verdict::stall_rule_applies(&whole, r, &cfg);
                assert_eq!(verdict::stall_rule_applies(&part, r, &cfg), a);
                applies += a as u32;
            }
            assert_eq!(part.stalled_sides(), whole.stalled_sides());
            let evict = evictable(&whole, 1_000, 500);
            assert_eq!(evictable(&part, 1_000, 500), evict);
            evicts += evict as u32;
            let (mut a, mut b) = (Pass::default(), Pass::default());
            a.count(&whole);
            b.count(&part);
            assert_eq!((a.flows, a.live), (b.flows, b.live));
        }
        assert!(applies > 1_000 && evicts > 1_000, "{applies} {evicts}");
    }
}
