//! The flow table on the host, with the kernel's semantics: an established table that
//! refuses new flows when full, and a bounded pending table for half-open connections.
//! Used by the offline analyser and as the reference in the kernel tests.

use std::collections::{HashMap, VecDeque};
use std::vec::Vec;

use crate::abi::{Flow, FlowKey, StallRecord, StallWhat, counter, port_flag};
use crate::parse::{Frame, LinkKind, Reason, parse};
use crate::tracker::{Store, track};
use crate::verdict::{Config, StallSink};

pub struct HostStore {
    pub flows: HashMap<FlowKey, Flow>,
    pub pending: HashMap<FlowKey, Flow>,
    /// Insertion order of pending keys, oldest first (the kernel's LRU is approximate:
    /// tests that compare both keep the pending table from filling).
    pending_order: VecDeque<FlowKey>,
    pub ports: Vec<u8>,
    pub capacity: usize,
    pub pending_capacity: usize,
    /// The kernel's per-CPU counters, indexed by `abi::counter`.
    pub counters: Vec<u64>,
}

impl HostStore {
    pub fn new(capacity: usize, pending_capacity: usize, ctcp_ports: &[u16]) -> Self {
        let mut ports = std::vec![0u8; 65536];
        for &p in ctcp_ports {
            ports[p as usize] |= port_flag::CTCP;
        }
        HostStore {
            flows: HashMap::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            ports,
            capacity,
            pending_capacity,
            counters: std::vec![0; counter::COUNT as usize],
        }
    }
}

impl Store for HostStore {
    fn port_flags(&self, port: u16) -> u8 {
        self.ports[port as usize]
    }

    fn mark_signature_port(&mut self, port: u16) {
        self.ports[port as usize] |= port_flag::SIGNATURE;
    }

    fn established(&mut self, key: &FlowKey) -> Option<*mut Flow> {
        self.flows.get_mut(key).map(|f| f as *mut Flow)
    }

    fn pending(&mut self, key: &FlowKey) -> Option<*mut Flow> {
        self.pending.get_mut(key).map(|f| f as *mut Flow)
    }

    fn create(&mut self, key: &FlowKey, pending: bool) -> Result<*mut Flow, Reason> {
        if pending {
            while self.pending.len() >= self.pending_capacity {
                let Some(old) = self.pending_order.pop_front() else {
                    break;
                };
                self.pending.remove(&old);
            }
            self.pending_order.push_back(*key);
            return Ok(self.pending.entry(*key).or_default() as *mut Flow);
        }
        if self.flows.len() >= self.capacity {
            return Err(counter::TABLE_FULL);
        }
        Ok(self.flows.entry(*key).or_default() as *mut Flow)
    }

    fn promote(&mut self, key: &FlowKey) -> Result<*mut Flow, Reason> {
        if self.flows.len() >= self.capacity {
            return Err(counter::TABLE_FULL);
        }
        let flow = self.pending.remove(key).ok_or(counter::MAP_ERROR)?;
        self.pending_order.retain(|k| k != key);
        Ok(self.flows.entry(*key).or_insert(flow) as *mut Flow)
    }

    fn count(&mut self, index: u32) {
        self.counters[index as usize] += 1;
    }
}

impl HostStore {
    /// One frame through the parser and the tracker, as the probe's programs take it,
    /// its outcome counted as the probe counts it (`abi::counter`). Returns the stall
    /// records it caused.
    pub fn observe<F: Frame>(
        &mut self,
        frame: &F,
        link: LinkKind,
        cfg: &Config,
        now: u64,
        ifindex: u32,
    ) -> Vec<StallRecord> {
        let mut records = Vec::new();
        let result = parse(frame, link).and_then(|pkt| {
            let mut sink = Records {
                key: pkt.key,
                out: Vec::new(),
            };
            let tracked = track(self, &mut sink, cfg, &pkt, || now, ifindex);
            records = sink.out;
            tracked
        });
        self.count(result.err().unwrap_or(counter::TRACKED));
        records
    }
}

/// Collects stall records, as the ring buffer would carry them.
#[derive(Default)]
pub struct Records {
    pub key: FlowKey,
    pub out: Vec<StallRecord>,
}

impl StallSink for Records {
    fn stall(&mut self, flow: &Flow, r: usize, what: StallWhat, now: u64) {
        let mut rec = StallRecord::default();
        rec.fill(&self.key, flow, r, what, now);
        self.out.push(rec);
    }
}
