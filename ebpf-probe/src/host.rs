//! The flow tables on the host, with the kernel's semantics: the same established table
//! (`table`: its buckets in memory allocated zeroed, its slots allocated as flows take
//! them, so the memory follows the flows held, not the capacity) and a bounded
//! pending table for half-open and one-sided flows. Used by the offline analyser and as
//! the reference in the kernel tests.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::boxed::Box;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::vec::Vec;

use crate::abi::{Flow, FlowKey, Pending, StallRecord, StallWhat, counter, port_flag};
use crate::clock::Fixed;
use crate::decap::{self, Inner, TunnelPorts};
use crate::parse::{Frame, LinkKind, Packet, Reason, locate, parse_located};
use crate::table::{self, Bucket, Fill, Place, Seed, Slot, Slots, WAYS};
use crate::tracker::{Store, scope, track};
use crate::verdict::{Config, StallSink};

/// `n` zeroed values of a type for which all-zero bytes are a valid value.
struct Zeroed<T> {
    ptr: *mut T,
    len: usize,
}

impl<T> Zeroed<T> {
    fn new(len: usize) -> Self {
        let layout = Layout::array::<T>(len.max(1)).expect("table size");
        // SAFETY: a non-zero size; the callers' types are plain integers.
        let ptr = unsafe { alloc_zeroed(layout) } as *mut T;
        assert!(!ptr.is_null(), "allocating {len} table entries");
        Zeroed { ptr, len }
    }

    fn get(&self, i: u32) -> Option<*mut T> {
        // SAFETY: in bounds.
        ((i as usize) < self.len).then(|| unsafe { self.ptr.add(i as usize) })
    }
}

impl<T> Drop for Zeroed<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe {
            dealloc(
                self.ptr as *mut u8,
                Layout::array::<T>(self.len.max(1)).unwrap(),
            )
        }
    }
}

impl Seed {
    /// A hash key from the system's random source.
    pub fn random() -> std::io::Result<Seed> {
        use std::io::Read;
        let mut bytes = [0u8; size_of::<Seed>()];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Seed {
            words: core::array::from_fn(|i| {
                u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
            }),
        })
    }
}

pub struct HostStore {
    buckets: Zeroed<Bucket>,
    /// Slots in use or once used, by index (boxed: their addresses must not move).
    slots: HashMap<u32, Box<Slot>>,
    /// How many slots the table has.
    nslots: u32,
    fill: Box<Fill>,
    /// Slots in use, in slot order (the kernel's walk order).
    live: BTreeSet<u32>,
    seed: Seed,
    pub pending: HashMap<FlowKey, Pending>,
    /// Insertion order of pending keys, oldest first (the kernel's LRU is approximate:
    /// tests that compare both keep the pending table from filling).
    pending_order: VecDeque<FlowKey>,
    pub ports: Vec<u8>,
    pub pending_capacity: usize,
    /// The kernel's per-CPU counters, indexed by `abi::counter`.
    pub counters: Vec<u64>,
}

impl HostStore {
    /// Tables for `capacity` established and `pending_capacity` pending flows, hashed
    /// with `seed` (the kernel's, where the two are compared).
    pub fn new(capacity: usize, pending_capacity: usize, ctcp_ports: &[u16], seed: Seed) -> Self {
        let mut ports = std::vec![0u8; 65536];
        for &p in ctcp_ports {
            ports[p as usize] |= port_flag::CTCP;
        }
        let buckets = table::buckets_for(capacity as u32);
        HostStore {
            buckets: Zeroed::new(buckets as usize),
            slots: HashMap::new(),
            nslots: buckets * WAYS,
            fill: Box::new(Fill {
                flows: 0,
                capacity: capacity as u64,
            }),
            live: BTreeSet::new(),
            seed,
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            ports,
            pending_capacity,
            counters: std::vec![0; counter::COUNT as usize],
        }
    }

    /// Established slots in use.
    fn used(&self) -> impl Iterator<Item = *mut Slot> + '_ {
        self.live
            .iter()
            .filter_map(|i| self.slots.get(i).map(|b| &**b as *const Slot as *mut Slot))
    }

    /// Every established flow.
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, &Flow)> {
        // SAFETY: live slots, borrowed with self.
        self.used().map(|s| unsafe { (&(*s).key, &(*s).flow) })
    }

    /// Every flow of both tables, established first, changeable.
    pub fn for_each_mut(&mut self, mut each: impl FnMut(&FlowKey, &mut Flow)) {
        for s in self.used().collect::<Vec<_>>() {
            // SAFETY: a live slot; `self` is borrowed mutably for the whole loop.
            let s = unsafe { &mut *s };
            each(&s.key, &mut s.flow);
        }
        for (k, p) in self.pending.iter_mut() {
            each(k, &mut p.flow);
        }
    }

    /// The established flow of `key`.
    pub fn flow_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let at = self.place(key).ok()?;
        let i = table::find(self, key, &at)?;
        Some(&mut self.slots.get_mut(&i)?.flow)
    }

    /// Removes `key`'s flow from either table, and returns it.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        if let Some(p) = self.pending.remove(key) {
            self.pending_order.retain(|k| k != key);
            return Some(p.flow);
        }
        let at = self.place(key).ok()?;
        let i = table::find(self, key, &at)?;
        let flow = self.slots.get(&i)?.flow;
        table::free(self, i);
        self.live.remove(&i);
        self.slots.remove(&i);
        Some(flow)
    }
}

impl Slots for HostStore {
    fn bucket(&mut self, b: u32) -> Option<*mut Bucket> {
        self.buckets.get(b)
    }

    fn slot(&mut self, i: u32) -> Option<*mut Slot> {
        (i < self.nslots).then(|| &mut **self.slots.entry(i).or_default() as *mut Slot)
    }

    fn fill(&mut self) -> Option<*mut Fill> {
        Some(&mut *self.fill)
    }
}

impl Store for HostStore {
    fn port_flags(&self, port: u16) -> u8 {
        self.ports[port as usize]
    }

    fn mark_signature_port(&mut self, port: u16) {
        self.ports[port as usize] |= port_flag::SIGNATURE;
    }

    fn place(&mut self, key: &FlowKey) -> Result<Place, Reason> {
        Ok(table::place(key, &self.seed, self.buckets.len as u32))
    }

    fn pending(&mut self, key: &FlowKey) -> Option<*mut Pending> {
        self.pending.get_mut(key).map(|f| f as *mut Pending)
    }

    fn create_pending(&mut self, key: &FlowKey) -> Result<*mut Pending, Reason> {
        while self.pending.len() >= self.pending_capacity {
            let Some(old) = self.pending_order.pop_front() else {
                break;
            };
            self.pending.remove(&old);
        }
        self.pending_order.push_back(*key);
        Ok(self.pending.entry(*key).or_default() as *mut Pending)
    }

    fn remove_pending(&mut self, key: &FlowKey) {
        if self.pending.remove(key).is_some() {
            self.pending_order.retain(|k| k != key);
        }
    }

    fn established_at(&mut self, idx: u32) {
        self.live.insert(idx);
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
        // The kernel's steps, in its order: scope before the full parse.
        let result = locate(frame, link).and_then(|at| {
            let ports = scope(self, cfg, frame, &at)?;
            let mut pkt = Packet::default();
            parse_located(frame, &at, &mut pkt)?;
            let mut sink = Records {
                key: pkt.key,
                out: Vec::new(),
                impossible: 0,
            };
            let tracked = track(self, &mut sink, cfg, &pkt, ports, &mut Fixed(now), ifindex);
            self.counters[counter::IMPOSSIBLE_STATE as usize] += sink.impossible;
            records = sink.out;
            tracked
        });
        self.count(result.err().unwrap_or(counter::TRACKED));
        records
    }
}

impl HostStore {
    /// One frame of a mirror port, as the probe's mirror program takes it: the copy
    /// found (`decap`) and counted by its encapsulation, then observed as any frame.
    pub fn observe_copy<F: Frame>(
        &mut self,
        frame: &F,
        ports: &TunnelPorts,
        cfg: &Config,
        now: u64,
        ifindex: u32,
    ) -> Vec<StallRecord> {
        match decap::copy_start(frame, ports) {
            Ok(copy) => {
                self.count(counter::MIRROR_FRAMES + copy.encap as u32);
                let inner = Inner {
                    outer: frame,
                    base: copy.base,
                };
                self.observe(&inner, LinkKind::Ethernet, cfg, now, ifindex)
            }
            Err(reason) => {
                self.count(reason);
                Vec::new()
            }
        }
    }
}

/// Collects stall records, as the ring buffer would carry them.
#[derive(Default)]
pub struct Records {
    pub key: FlowKey,
    pub out: Vec<StallRecord>,
    /// Verdicts refused on an impossible state.
    pub impossible: u64,
}

impl Records {
    pub fn new(key: FlowKey) -> Self {
        Records {
            key,
            ..Default::default()
        }
    }
}

impl StallSink for Records {
    fn stall(&mut self, flow: &Flow, r: usize, what: StallWhat, now: u64) {
        let mut rec = StallRecord::default();
        rec.fill(&self.key, flow, r, what, now);
        self.out.push(rec);
    }

    fn impossible(&mut self) {
        self.impossible += 1;
    }
}
