//! From a parsed packet to the flow table: scope, where the entry lives, and the update,
//! all under the entry's lock.
//!
//! A new flow starts in the pending table (an LRU), and moves to the established table
//! (`table`, which never evicts: the agent's sweep removes idle flows) with the first
//! packet without SYN once both sides have been seen. So a SYN flood, or spoofed
//! one-sided packets to a cTCP port, churn only the pending table and never take an
//! established flow's place; when the established table is full, a flow's packets are
//! refused (counted) until room frees.
//!
//! XDP (one direction) and TC (the other) run on different CPUs at once and update the
//! same entry: every update, and every verdict, happens under the entry's lock
//! (`table::lock`, a compare-and-swap, no helper call), so no verdict reads a state that
//! another CPU is halfway through writing.

use crate::abi::{
    Flow, FlowClass, FlowKey, Pending, StallRecord, StallWhat, counter, half_flag, port_flag,
};
use crate::classify::PayloadClass;
use crate::clock::Clock;
use crate::parse::{Frame, Located, Packet, Reason, TH_ACK, TH_RST, TH_SYN, payload_class};
use crate::table::{self, Held, Place, Slots};
use crate::verdict::{self, Config, StallSink};

/// Where flows live: BPF maps in the kernel, memory on the host. Entries are handed
/// out as pointers (a map value in the kernel): `track` holds one only while it makes
/// no other call on the store that could free it.
pub trait Store: Slots {
    /// `port_flag` bits of a port.
    fn port_flags(&self, port: u16) -> u8;
    /// Marks a port on which a cTCP payload signature was seen.
    fn mark_signature_port(&mut self, port: u16);
    /// Where `key` lives in the established table (the table's hash key and size).
    fn place(&mut self, key: &FlowKey) -> Result<Place, Reason>;
    fn pending(&mut self, key: &FlowKey) -> Option<*mut Pending>;
    /// Inserts a zeroed pending entry unless the key has one, and returns the entry.
    fn create_pending(&mut self, key: &FlowKey) -> Result<*mut Pending, Reason>;
    fn remove_pending(&mut self, key: &FlowKey);
    /// The established table gained a flow at slot `idx` (the host keeps an index of
    /// them, so it walks its flows without scanning every slot).
    #[inline(always)]
    fn established_at(&mut self, _idx: u32) {}
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
    store: &mut S,
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
    let (flow, held) = entry(store, pkt, may_create)?;
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
fn entry<S: Store>(
    store: &mut S,
    pkt: &Packet,
    may_create: bool,
) -> Result<(*mut Flow, Held), Reason> {
    let at = store.place(&pkt.key)?;
    if let Some(found) = established(store, pkt, &at)? {
        return Ok(found);
    }
    let p = match store.pending(&pkt.key) {
        Some(p) => p,
        None if !may_create => return Err(counter::OUT_OF_SCOPE),
        None if pkt.seg.has(TH_RST) => return Err(counter::NO_FLOW),
        None => {
            store.count(counter::PENDING_INSERTS);
            store.create_pending(&pkt.key)?
        }
    };
    // SAFETY: a live pending entry.
    let held = store
        .lock(unsafe { &mut (*p).seq })
        .ok_or(counter::FLOW_BUSY)?;
    // SAFETY: as above, locked.
    let pending = unsafe { &mut *p };
    if pending.moved != 0 {
        // Moved to the established table while we looked.
        table::unlock(held);
        return established(store, pkt, &at)?.ok_or(counter::MAP_ERROR);
    }
    let other_seen = pending.flow.half[(pkt.dir & 1) ^ 1].flags & half_flag::SEEN != 0;
    if pkt.seg.has(TH_SYN) || !other_seen {
        return Ok((&mut pending.flow, held));
    }
    promote(store, pkt, &at, pending, held)
}

/// The established entry of the packet's flow, locked, if there is one.
#[inline(always)]
fn established<S: Store>(
    store: &mut S,
    pkt: &Packet,
    at: &Place,
) -> Result<Option<(*mut Flow, Held)>, Reason> {
    let Some(idx) = table::find(store, &pkt.key, at) else {
        return Ok(None);
    };
    match table::lock_found(store, idx, &pkt.key, at) {
        // SAFETY: a live slot, locked by us.
        Ok((slot, held)) => Ok(Some((unsafe { &mut (*slot).flow }, held))),
        Err(true) => Err(counter::FLOW_BUSY),
        // Evicted by the agent meanwhile: the flow starts over.
        Err(false) => Ok(None),
    }
}

/// Moves a pending flow (locked, `held`) to the established table; the new entry is
/// returned locked. Refused, and counted, when both of its buckets are full.
#[inline(always)]
fn promote<S: Store>(
    store: &mut S,
    pkt: &Packet,
    at: &Place,
    pending: &mut Pending,
    held: Held,
) -> Result<(*mut Flow, Held), Reason> {
    let Some((idx, slot, slot_held)) = table::claim(store, &pkt.key, at) else {
        table::unlock(held);
        return Err(counter::TABLE_FULL);
    };
    // SAFETY: a slot claimed and locked by us.
    let slot = unsafe { &mut *slot };
    slot.flow.copy_from(&pending.flow);
    table::publish(store, idx, at);
    store.established_at(idx);
    pending.moved = 1;
    table::unlock(held);
    store.remove_pending(&pkt.key);
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
