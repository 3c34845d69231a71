//! The flow tables on the host, with the kernel's semantics: the same established and
//! pending tables (`table`, the same code), in host memory. Used by the offline
//! analyser and as the reference in the kernel tests, which compare both byte for byte
//! even when the pending table is full.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::boxed::Box;
use std::collections::{BTreeSet, HashMap};
use std::vec::Vec;

use crate::abi::{Flow, FlowKey, StallRecord, StallWhat, counter, port_flag};
use crate::clock::Fixed;
use crate::decap::{self, Inner, TunnelPorts};
use crate::parse::{Frame, LinkKind, Packet, Reason, locate, parse_located};
use crate::table::{self, Ages, Bucket, Fill, Hash, Place, Seed, Slot, Slots, WAYS};
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

/// One table (`table`) in host memory: its buckets allocated zeroed, its slots as flows
/// take them, so the memory follows the flows held, not the capacity.
pub struct HostTable {
    buckets: Zeroed<Bucket>,
    /// Kept by every table, used by the pending one (`Slots::ages`): its pages are
    /// only taken when written.
    ages: Zeroed<Ages>,
    /// Slots in use or once used, by index (boxed: their addresses must not move).
    slots: HashMap<u32, Box<Slot>>,
    /// How many slots the table has.
    nslots: u32,
    fill: Box<Fill>,
    /// Slots in use, in slot order (the kernel's walk order).
    live: BTreeSet<u32>,
    /// Slots freed since the last `release_freed`: their memory goes then, not when
    /// they are freed (the freeing caller still holds their lock).
    freed: Vec<u32>,
}

impl HostTable {
    /// A table for `capacity` flows.
    pub fn new(capacity: usize) -> Self {
        let buckets = table::buckets_for(capacity as u32);
        HostTable {
            buckets: Zeroed::new(buckets as usize),
            ages: Zeroed::new(buckets as usize),
            slots: HashMap::new(),
            nslots: buckets * WAYS,
            fill: Box::new(Fill {
                flows: 0,
                capacity: capacity as u64,
            }),
            live: BTreeSet::new(),
            freed: Vec::new(),
        }
    }

    /// Slots whose memory exists.
    #[cfg(test)]
    pub(crate) fn materialized(&self) -> usize {
        self.slots.len()
    }

    /// Drops the memory of the slots freed since the last call that are still free, so
    /// the offline analyser's memory follows its live flows. Call only while no slot
    /// pointer is held (between packets).
    pub fn release_freed(&mut self) {
        for idx in std::mem::take(&mut self.freed) {
            if table::tag(self, idx) == table::EMPTY {
                self.slots.remove(&idx);
            }
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets.len as u32
    }

    /// Slots in use.
    fn used(&self) -> impl Iterator<Item = *mut Slot> + '_ {
        self.live
            .iter()
            .filter_map(|i| self.slots.get(i).map(|b| &**b as *const Slot as *mut Slot))
    }

    /// Every flow of the table, in slot order.
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, &Flow)> {
        // SAFETY: live slots, borrowed with self.
        self.used().map(|s| unsafe { (&(*s).key, &(*s).flow) })
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The flow of `key`, placed at `at`.
    fn flow_mut(&mut self, key: &FlowKey, at: &Place) -> Option<&mut Flow> {
        let i = table::find(self, key, at)?;
        Some(&mut self.slots.get_mut(&i)?.flow)
    }

    /// Removes `key`'s flow, placed at `at`, and returns it.
    fn remove(&mut self, key: &FlowKey, at: &Place) -> Option<Flow> {
        let i = table::find(self, key, at)?;
        let flow = self.slots.get(&i)?.flow;
        table::free(self, i);
        self.slots.remove(&i);
        Some(flow)
    }
}

impl Slots for HostTable {
    fn bucket(&mut self, b: u32) -> Option<*mut Bucket> {
        self.buckets.get(b)
    }

    fn slot(&mut self, i: u32) -> Option<*mut Slot> {
        (i < self.nslots).then(|| &mut **self.slots.entry(i).or_default() as *mut Slot)
    }

    fn fill(&mut self) -> Option<*mut Fill> {
        Some(&mut *self.fill)
    }

    fn ages(&mut self, b: u32) -> Option<*mut Ages> {
        self.ages.get(b)
    }

    fn published(&mut self, idx: u32) {
        self.live.insert(idx);
    }

    fn freed(&mut self, idx: u32) {
        self.live.remove(&idx);
        self.freed.push(idx);
    }
}

pub struct HostStore {
    pub established: HostTable,
    /// Half-open and one-sided flows: the same table, evicting the oldest of a new
    /// key's ways when full, as the kernel's.
    pub pending: HostTable,
    seed: Seed,
    pub ports: Vec<u8>,
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
        HostStore {
            established: HostTable::new(capacity),
            pending: HostTable::new(pending_capacity),
            seed,
            ports,
            counters: std::vec![0; counter::COUNT as usize],
        }
    }

    /// Every established flow.
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, &Flow)> {
        self.established.flows()
    }

    /// Every pending (half-open or one-sided) flow.
    pub fn pending_flows(&self) -> impl Iterator<Item = (&FlowKey, &Flow)> {
        self.pending.flows()
    }

    /// Every flow of both tables, established first, changeable.
    pub fn for_each_mut(&mut self, mut each: impl FnMut(&FlowKey, &mut Flow)) {
        for table in [&mut self.established, &mut self.pending] {
            for s in table.used().collect::<Vec<_>>() {
                // SAFETY: a live slot; `self` is borrowed mutably for the whole loop.
                let s = unsafe { &mut *s };
                each(&s.key, &mut s.flow);
            }
        }
    }

    /// Where `key` lives in the pending table (true) or the established table.
    pub fn place(&self, key: &FlowKey, pending: bool) -> Place {
        table::hash(key, &self.seed).place(self.buckets(pending))
    }

    /// The established flow of `key`.
    pub fn flow_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let at = self.place(key, false);
        self.established.flow_mut(key, &at)
    }

    /// Removes `key`'s flow from either table, and returns it.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let (pending, established) = (self.place(key, true), self.place(key, false));
        self.pending
            .remove(key, &pending)
            .or_else(|| self.established.remove(key, &established))
    }
}

impl Store for HostStore {
    type Established = HostTable;
    type Pending = HostTable;

    fn established(&mut self) -> &mut HostTable {
        &mut self.established
    }

    fn pending(&mut self) -> &mut HostTable {
        &mut self.pending
    }

    fn port_flags(&self, port: u16) -> u8 {
        self.ports[port as usize]
    }

    fn mark_signature_port(&mut self, port: u16) {
        self.ports[port as usize] |= port_flag::SIGNATURE;
    }

    fn hash(&mut self, key: &FlowKey) -> Result<Hash, Reason> {
        Ok(table::hash(key, &self.seed))
    }

    fn buckets(&self, pending: bool) -> u32 {
        if pending {
            self.pending.buckets()
        } else {
            self.established.buckets()
        }
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
        self.established.release_freed();
        self.pending.release_freed();
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
