//! Offline analysis: a capture through the same state machine as the probe, with the
//! capture's timestamps as the clock and the agent's sweep applied every second of
//! capture time (stalls of senders that fell silent, idle eviction), so that memory
//! holds the live flows only.

use std::collections::HashMap;

use ebpf_probe::abi::{FlowKey, StallRecord, counter};
use ebpf_probe::decap::TunnelPorts;
use ebpf_probe::host::{HostStore, Records};
use ebpf_probe::parse::{LinkKind, Snapped};
use ebpf_probe::table::Seed;
use ebpf_probe::verdict::{Config, end_stalls};

use crate::flows::{self, Episode, FlowReport};
use crate::offline::capture::{Frame, Link};

/// Settings that change the verdict, as for `ackwatch run`.
#[derive(Clone, Debug)]
pub struct Options {
    pub verdict: Config,
    pub ctcp_ports: Vec<u16>,
    pub idle_timeout_ns: u64,
    pub sweep_interval_ns: u64,
    /// A mirror port's capture (`--mirror`): copies are decapsulated as the probe's
    /// mirror program does.
    pub mirror: Option<TunnelPorts>,
}

/// Flows held at once (idle ones leave at each sweep): far above what a capture holds
/// live. Past it, new flows are refused and counted as `table_full`, as in the probe.
const HOST_TABLE: usize = 1 << 20;

pub struct Analyzer<F: FnMut(FlowReport)> {
    opts: Options,
    store: HostStore,
    episodes: HashMap<FlowKey, Vec<Episode>>,
    next_sweep: u64,
    now: u64,
    /// Receives each flow when it leaves the table (idle, or at the end).
    done: F,
}

impl<F: FnMut(FlowReport)> Analyzer<F> {
    pub fn new(opts: Options, done: F) -> Self {
        // A random hash key: a crafted capture cannot aim its flows at one bucket.
        let seed = Seed::random().unwrap_or_default();
        let store = HostStore::new(HOST_TABLE, HOST_TABLE, &opts.ctcp_ports, seed);
        Analyzer {
            opts,
            store,
            episodes: HashMap::new(),
            next_sweep: 0,
            now: 0,
            done,
        }
    }

    /// Counters as the probe keeps them (`abi::counter`).
    pub fn counters(&self) -> &[u64] {
        &self.store.counters
    }

    pub fn feed(&mut self, frame: &Frame<'_>) {
        self.now = self.now.max(frame.ts_ns);
        if self.now >= self.next_sweep {
            self.sweep();
            self.next_sweep = self.now + self.opts.sweep_interval_ns;
        }
        match strip_link(frame) {
            Ok((bytes, link)) => {
                let header = frame.data.len() - bytes.len();
                let wire_len = frame.orig_len.max(frame.data.len()) - header;
                let (snapped, cfg) = (Snapped { bytes, wire_len }, &self.opts.verdict);
                let records = match &self.opts.mirror {
                    Some(ports) if link == LinkKind::Ethernet => {
                        self.store
                            .observe_copy(&snapped, ports, cfg, frame.ts_ns, 0)
                    }
                    _ => self.store.observe(&snapped, link, cfg, frame.ts_ns, 0),
                };
                self.note(records);
            }
            Err(reason) => self.store.counters[reason as usize] += 1,
        }
    }

    /// Applies the stall rule to quiet flows and evicts idle ones.
    fn sweep(&mut self) {
        let (now, cfg, idle) = (self.now, self.opts.verdict, self.opts.idle_timeout_ns);
        let mut records = Vec::new();
        let mut idle_keys = Vec::new();
        self.store.for_each_mut(|key, flow| {
            let mut sink = Records::new(*key);
            flow.check_stalls(&cfg, now, &mut sink);
            if now.saturating_sub(flow.last_ts) >= idle {
                end_stalls(flow, now, &mut sink);
                idle_keys.push(*key);
            }
            records.extend(sink.out);
        });
        self.note(records);
        for key in idle_keys {
            self.retire(key);
        }
    }

    fn note(&mut self, records: Vec<StallRecord>) {
        for r in records {
            flows::apply(self.episodes.entry(r.key).or_default(), &r, 0);
        }
    }

    fn retire(&mut self, key: FlowKey) {
        if let Some(flow) = self.store.remove(&key) {
            let episodes = self.episodes.remove(&key).unwrap_or_default();
            (self.done)(FlowReport::new(&key, &flow, episodes, 0));
        }
    }

    /// End of capture: a last sweep, then every flow still held, oldest first.
    pub fn finish(mut self) -> Vec<u64> {
        self.sweep();
        let mut keys: Vec<(u64, FlowKey)> = self
            .store
            .flows()
            .chain(self.store.pending_flows())
            .map(|(k, f)| (f.first_ts, *k))
            .collect();
        keys.sort();
        for (_, key) in keys {
            self.retire(key);
        }
        self.store.counters.clone()
    }
}

/// The frame's bytes from where the probe's parser starts, and how to parse them.
fn strip_link<'a>(frame: &Frame<'a>) -> Result<(&'a [u8], LinkKind), u32> {
    let (data, skip, proto_at) = match frame.link {
        Link::Ethernet => return Ok((frame.data, LinkKind::Ethernet)),
        Link::RawIp => return Ok((frame.data, LinkKind::RawIp)),
        Link::Sll => (frame.data, 16, 14),
        Link::Sll2 => (frame.data, 20, 0),
    };
    let proto = data.get(proto_at..proto_at + 2).ok_or(counter::TRUNCATED)?;
    if proto != [0x08, 0x00] && proto != [0x86, 0xdd] {
        return Err(counter::NOT_IP);
    }
    Ok((data.get(skip..).ok_or(counter::TRUNCATED)?, LinkKind::RawIp))
}
