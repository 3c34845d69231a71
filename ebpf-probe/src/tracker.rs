//! From a parsed packet to the flow table: scope, where the entry lives, and the update.
//!
//! Half-open connections (a SYN, a SYN-ACK) live in a separate LRU table, so that a SYN
//! flood to a cTCP port churns only that table and never pushes established flows out;
//! the first packet without SYN moves the entry to the established table, which never
//! evicts (the agent's sweep removes idle flows) and refuses new flows when full.

use crate::abi::{Flow, FlowClass, FlowKey, StallRecord, StallWhat, counter, port_flag};
use crate::classify::PayloadClass;
use crate::parse::{Packet, Reason, TH_ACK, TH_RST, TH_SYN};
use crate::verdict::{self, Config, StallSink};

/// Where flows live: BPF maps in the kernel, hash maps on the host. Entries are handed
/// out as pointers (a map value in the kernel): `track` holds one only while it makes
/// no other call on the store.
pub trait Store {
    /// `port_flag` bits of a port.
    fn port_flags(&self, port: u16) -> u8;
    /// Marks a port on which a cTCP payload signature was seen.
    fn mark_signature_port(&mut self, port: u16);
    fn established(&mut self, key: &FlowKey) -> Option<*mut Flow>;
    fn pending(&mut self, key: &FlowKey) -> Option<*mut Flow>;
    /// Inserts a zeroed flow in the pending (LRU) or established table.
    fn create(&mut self, key: &FlowKey, pending: bool) -> Result<*mut Flow, Reason>;
    /// Moves a pending flow to the established table.
    fn promote(&mut self, key: &FlowKey) -> Result<*mut Flow, Reason>;
    /// Bumps a counter (`abi::counter`).
    fn count(&mut self, index: u32);
}

/// Tracks one packet seen on interface `ifindex`; `clock` gives the time (ns), read
/// only once the packet's flow is found (a clock read costs as much as a hash lookup in
/// the kernel). `Err` carries the reason it was not tracked.
#[inline(always)]
pub fn track<S: Store, K: StallSink>(
    store: &mut S,
    sink: &mut K,
    cfg: &Config,
    pkt: &Packet,
    clock: impl FnOnce() -> u64,
    ifindex: u32,
) -> Result<(), Reason> {
    let (src, dst) = (
        store.port_flags(pkt.src_port()),
        store.port_flags(pkt.dst_port()),
    );
    let ports = src | dst;
    let signature = pkt.payload == PayloadClass::Ctcp;
    let may_create = cfg.track_all || ports & port_flag::CTCP != 0 || signature;
    if !may_create && ports & port_flag::SIGNATURE == 0 {
        return Err(counter::OUT_OF_SCOPE);
    }
    if signature && ports & port_flag::CTCP == 0 {
        store.mark_signature_port(pkt.src_port());
        store.mark_signature_port(pkt.dst_port());
    }
    let flow = entry(store, pkt, may_create)?;
    // SAFETY: the pointer is a live entry of `store`, which is not called again while
    // this reference lives.
    let flow = unsafe { &mut *flow };
    let now = clock();
    // A fresh entry is all zeros; clocks (boot time, capture time) never read 0.
    if flow.first_ts == 0 {
        init(flow, pkt, src, dst, now);
    }
    classify(flow, pkt);
    flow.ifindex = ifindex;
    flow.update(pkt.dir, &pkt.seg, now, cfg, sink);
    Ok(())
}

#[inline(always)]
fn entry<S: Store>(store: &mut S, pkt: &Packet, may_create: bool) -> Result<*mut Flow, Reason> {
    if let Some(f) = store.established(&pkt.key) {
        return Ok(f);
    }
    let syn = pkt.seg.has(TH_SYN);
    if let Some(f) = store.pending(&pkt.key) {
        return if syn { Ok(f) } else { store.promote(&pkt.key) };
    }
    if !may_create {
        return Err(counter::OUT_OF_SCOPE);
    }
    if pkt.seg.has(TH_RST) {
        return Err(counter::NO_FLOW);
    }
    if syn {
        store.count(counter::PENDING_INSERTS);
    }
    store.create(&pkt.key, syn)
}

/// A new entry: first time, class from the port, and which side is the client: the
/// SYN sender, else the side not on a configured port, else the first sender.
#[inline(always)]
fn init(flow: &mut Flow, pkt: &Packet, src: u8, dst: u8, now: u64) {
    flow.first_ts = now;
    let on_port = (src | dst) & port_flag::CTCP != 0;
    let ctcp = on_port || pkt.payload == PayloadClass::Ctcp;
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

/// Upgrades the class from what the payload shows: `IKETCP` opens an RFC 9329 stream,
/// the cTCP trailer marks cTCP on any port.
#[inline(always)]
fn classify(flow: &mut Flow, pkt: &Packet) {
    match pkt.payload {
        PayloadClass::Rfc9329 if flow.half[pkt.dir & 1].bytes == 0 => {
            flow.class = FlowClass::Rfc9329 as u8
        }
        PayloadClass::Ctcp if flow.class == FlowClass::Tcp as u8 => {
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
