//! From a parsed packet to the flow table: scope, where the entry lives, and the update,
//! all under the entry's lock.
//!
//! A new flow starts in the pending table, and moves to the established table (which
//! never evicts: the agent's sweep removes idle flows) with the first packet without
//! SYN once both sides have been seen. Both are `table`s in arrays, with their own
//! buckets and slots. So a SYN flood, or spoofed one-sided packets to a cTCP port,
//! churn only the pending table (full, it gives the oldest of a new key's 16 ways to
//! the new flow) and never take an established flow's place; when the established
//! table is full, a flow's packets are refused (counted) until room frees.
//!
//! XDP (one direction) and TC (the other) run on different CPUs at once and update the
//! same entry: every update, and every verdict, happens under the entry's lock
//! (`table::lock`, a compare-and-swap, no helper call), so no verdict reads a state that
//! another CPU is halfway through writing. A promotion, and a pending entry's eviction,
//! happen under the pending entry's lock too: a CPU that found the entry and waited for
//! its lock sees its tag or key changed (`table::lock_found`) and looks again.

use crate::abi::{Flow, FlowClass, FlowKey, StallRecord, StallWhat, counter, half_flag, port_flag};
use crate::classify::PayloadClass;
use crate::clock::Clock;
use crate::parse::{Frame, Located, Packet, Reason, TH_ACK, TH_RST, TH_SYN, payload_class};
use crate::table::{self, Hash, Held, Place, Slot, Slots};
use crate::verdict::{self, Config, StallSink};

/// Where flows live: BPF maps in the kernel, memory on the host. Entries are handed
/// out as pointers (a map value in the kernel): `track` holds one only while it makes
/// no other call on the store that could free it.
pub trait Store {
    type Established: Slots;
    type Pending: Slots;
    /// The established table's memory.
    fn established(&mut self) -> &mut Self::Established;
    /// The pending table's memory.
    fn pending(&mut self) -> &mut Self::Pending;
    /// `port_flag` bits of a port.
    fn port_flags(&self, port: u16) -> u8;
    /// Marks a port on which a cTCP payload signature was seen.
    fn mark_signature_port(&mut self, port: u16);
    /// `key`'s hash under the tables' hash key (`Hash::place` then places it in either).
    fn hash(&mut self, key: &FlowKey) -> Result<Hash, Reason>;
    /// How many buckets the pending table (true) or the established table has.
    fn buckets(&self, pending: bool) -> u32;
    /// Bumps a counter (`abi::counter`).
    fn count(&mut self, index: u32);
}

/// What `scope` found: the `port_flag`s of a packet's source and destination ports,
/// and what its payload showed.
#[derive(Clone, Copy, Debug)]
pub struct PortFlags {
    src: u8,
    dst: u8,
    payload: PayloadClass,
}

/// The scope decision, from the headers alone, before the packet is parsed: a packet
/// is out of scope unless everything is tracked, one of its ports is a cTCP port or
/// one where the cTCP signature was seen, or its payload carries the signature. The
/// payload is read here once for the whole packet; on a cTCP port only its first
/// bytes (the port already says cTCP: only `IKETCP` can add to it), which spares the
/// trailer's read on nearly every tracked packet.
#[inline(always)]
pub fn scope<S: Store, F: Frame>(
    store: &S,
    cfg: &Config,
    f: &F,
    at: &Located,
) -> Result<PortFlags, Reason> {
    let (sport, dport) = at.ports();
    let (src, dst) = (store.port_flags(sport), store.port_flags(dport));
    let any = src | dst;
    let payload = payload_class(f, at, any & port_flag::CTCP == 0);
    if cfg.track_all
        || any & (port_flag::CTCP | port_flag::SIGNATURE) != 0
        || payload == PayloadClass::Ctcp
    {
        Ok(PortFlags { src, dst, payload })
    } else {
        Err(counter::OUT_OF_SCOPE)
    }
}

/// Tracks one packet seen on interface `ifindex`, in scope by `ports` (`scope`);
/// `clock` is read only once the packet's flow is found. `Err` carries the reason it
/// was not tracked.
#[inline(always)]
pub fn track<S: Store, K: StallSink, C: Clock>(
    store: &mut S,
    sink: &mut K,
    cfg: &Config,
    pkt: &Packet,
    ports: PortFlags,
    clock: &mut C,
    ifindex: u32,
) -> Result<(), Reason> {
    let (src, dst, payload) = (ports.src, ports.dst, ports.payload);
    let on_port = (src | dst) & port_flag::CTCP != 0;
    // Off the cTCP ports only: there `scope` read the trailer.
    let signature = payload == PayloadClass::Ctcp;
    let may_create = cfg.track_all || on_port || signature;
    if signature {
        store.mark_signature_port(pkt.src_port());
        store.mark_signature_port(pkt.dst_port());
    }
    let (flow, held) = entry(store, pkt, may_create, clock)?;
    // SAFETY: the pointer is a live entry of `store`, locked by us, and the store is not
    // called again while this reference lives.
    let flow = unsafe { &mut *flow };
    let now = clock.coarse();
    // A fresh entry is all zeros; clocks (boot time, capture time) never read 0.
    if flow.first_ts == 0 {
        init(flow, pkt, src, dst, on_port || signature, now);
    }
    classify(flow, pkt, payload, on_port);
    flow.ifindex = ifindex;
    flow.update(pkt.dir, &pkt.seg, now, clock, cfg, sink);
    table::unlock(held);
    Ok(())
}

/// The packet's flow, locked: established, pending, or a new pending entry.
#[inline(always)]
fn entry<S: Store, C: Clock>(
    store: &mut S,
    pkt: &Packet,
    may_create: bool,
    clock: &mut C,
) -> Result<(*mut Flow, Held), Reason> {
    let hash = store.hash(&pkt.key)?;
    let at = hash.place(store.buckets(false));
    if let Some(found) = established(store, pkt, &at)? {
        return Ok(found);
    }
    // Placed in the pending table only now: an established flow's packet pays nothing.
    let pending_at = hash.place(store.buckets(true));
    table::prefetch(store.pending(), &pending_at);
    let (idx, slot, held) = match table::lookup(store.pending(), &pkt.key, &pending_at) {
        Some(found) => match table::lock_found(store.pending(), found, &pkt.key, &pending_at) {
            Ok((slot, held)) => (found.idx, slot, held),
            Err(true) => return Err(counter::FLOW_BUSY),
            // Moved to the established table while we waited; or gone meanwhile (a
            // duplicate that the CPU which inserted it at the same instant gave up, or
            // an entry evicted for a new flow, or idle): the entry was busy.
            Err(false) => {
                return established(store, pkt, &at)?.ok_or(counter::FLOW_BUSY);
            }
        },
        None if !may_create => return Err(counter::OUT_OF_SCOPE),
        None if pkt.seg.has(TH_RST) => return Err(counter::NO_FLOW),
        None => create(store, &pkt.key, &pending_at, &at)?,
    };
    // SAFETY: a live pending slot, locked by us.
    let flow = unsafe { &mut (*slot).flow };
    let other_seen = flow.half[(pkt.dir & 1) ^ 1].flags & half_flag::SEEN != 0;
    if pkt.seg.has(TH_SYN) || !other_seen {
        // Its age (`table::Ages`): `track`'s update makes `last_ts` this same coarse
        // time. Stored now, under the lock, so that its line's trip to memory overlaps
        // the update rather than delay the unlock (a full barrier).
        table::set_age(store.pending(), idx, clock.coarse());
        return Ok((flow, held));
    }
    promote(store, pkt, &at, idx, flow, held)
}

/// A new pending entry for `key`, zeroed and locked: a free slot, else the place of the
/// oldest entry of its ways (counted). Gives its slot up, and its packet passes
/// untracked (`flow_busy`), when it finds after publishing that another CPU inserted
/// the same key at once (the later to look gives up), or promoted it meanwhile: a
/// promotion publishes the established entry before it frees the pending one, so a
/// lookup that missed both (the established one before, the pending one after) sees
/// the established one now.
#[inline(always)]
fn create<S: Store>(
    store: &mut S,
    key: &FlowKey,
    at: &Place,
    established: &Place,
) -> Result<(u32, *mut Slot, Held), Reason> {
    store.count(counter::PENDING_INSERTS);
    let (idx, slot, held) = match table::claim(store.pending(), key, at) {
        Some(claimed) => claimed,
        None => {
            let taken = table::replace_oldest(store.pending(), key, at).map_err(|busy| {
                if busy {
                    counter::FLOW_BUSY
                } else {
                    counter::TABLE_FULL
                }
            })?;
            store.count(counter::PENDING_EVICTIONS);
            taken
        }
    };
    // SAFETY: a slot claimed and locked by us.
    unsafe { (*slot).flow.clear() };
    table::publish(store.pending(), idx, at);
    if table::duplicated(store.pending(), idx, key, at)
        || table::find(store.established(), key, established).is_some()
    {
        table::free(store.pending(), idx);
        table::unlock(held);
        return Err(counter::FLOW_BUSY);
    }
    Ok((idx, slot, held))
}

/// The established entry of the packet's flow, locked, if there is one.
#[inline(always)]
fn established<S: Store>(
    store: &mut S,
    pkt: &Packet,
    at: &Place,
) -> Result<Option<(*mut Flow, Held)>, Reason> {
    let e = store.established();
    let Some(found) = table::lookup(e, &pkt.key, at) else {
        return Ok(None);
    };
    match table::lock_found(e, found, &pkt.key, at) {
        // SAFETY: a live slot, locked by us.
        Ok((slot, held)) => Ok(Some((unsafe { &mut (*slot).flow }, held))),
        Err(true) => Err(counter::FLOW_BUSY),
        // Evicted by the agent meanwhile: the flow starts over.
        Err(false) => Ok(None),
    }
}

/// Moves the pending flow in slot `from` (locked, `held`) to the established table and
/// frees its slot; the new entry is returned locked. Refused, and counted, when both of
/// its buckets are full (the flow stays pending).
#[inline(always)]
fn promote<S: Store>(
    store: &mut S,
    pkt: &Packet,
    at: &Place,
    from: u32,
    pending: &mut Flow,
    held: Held,
) -> Result<(*mut Flow, Held), Reason> {
    let e = store.established();
    let Some((idx, slot, slot_held)) = table::claim(e, &pkt.key, at) else {
        table::unlock(held);
        return Err(counter::TABLE_FULL);
    };
    // SAFETY: a slot claimed and locked by us.
    let slot = unsafe { &mut *slot };
    slot.flow.copy_from(pending);
    table::publish(e, idx, at);
    // Freed under its lock: a CPU waiting for it then finds the tag changed.
    table::free(store.pending(), from);
    table::unlock(held);
    Ok((&mut slot.flow, slot_held))
}

/// A new entry: first time, class (cTCP by its port or its signature), and which side
/// is the client: the SYN sender, else the side not on a configured port, else the
/// first sender.
#[inline(always)]
fn init(flow: &mut Flow, pkt: &Packet, src: u8, dst: u8, ctcp: bool, now: u64) {
    flow.first_ts = now;
    flow.class = if ctcp {
        FlowClass::Ctcp as u8
    } else {
        FlowClass::Tcp as u8
    };
    let seg = &pkt.seg;
    let sender_is_client = if seg.has(TH_SYN) {
        !seg.has(TH_ACK)
    } else {
        dst & port_flag::CTCP != 0 || src & port_flag::CTCP == 0
    };
    flow.client = if sender_is_client {
        pkt.dir as u8
    } else {
        1 - pkt.dir as u8
    };
}

/// Upgrades the class: `IKETCP` opens an RFC 9329 stream; the cTCP trailer, or a cTCP
/// port (a flow that began before the port was configured), marks a TCP flow cTCP.
#[inline(always)]
fn classify(flow: &mut Flow, pkt: &Packet, payload: PayloadClass, on_port: bool) {
    let tcp = flow.class == FlowClass::Tcp as u8;
    match payload {
        PayloadClass::Rfc9329 if flow.half[pkt.dir & 1].bytes == 0 => {
            flow.class = FlowClass::Rfc9329 as u8
        }
        _ if tcp && (on_port || payload == PayloadClass::Ctcp) => {
            flow.class = FlowClass::Ctcp as u8
        }
        _ => {}
    }
}

impl StallRecord {
    /// Fills the record for a transition of the episode with `r` as R.
    #[inline(always)]
    pub fn fill(&mut self, key: &FlowKey, flow: &Flow, r: usize, what: StallWhat, now: u64) {
        let rh = &flow.half[r & 1];
        self.key = *key;
        self.what = what as u8;
        self.class = flow.class;
        self.stuck = ((r & 1) ^ 1) as u8;
        self.kind = verdict::kind(flow, r) as u8;
        self.loss = verdict::loss(flow, r) as u8;
        self.client = flow.client;
        self.retx_seen = (rh.flags & crate::abi::half_flag::HOLE_RETX != 0) as u8;
        self._pad = 0;
        self.hole = rh.hole;
        self.dup_acks = rh.dup_run;
        self.ifindex = flow.ifindex;
        self.since = rh.hole_since;
        self.at = now;
    }
}
