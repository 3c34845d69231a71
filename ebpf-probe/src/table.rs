//! The flow tables: open addressing in flat arrays that the kernel, the agent (through
//! `mmap`) and the host share, so a lookup costs no helper call. Two tables use this
//! code through `Slots`: the established table and the pending table (half-open and
//! one-sided flows).
//!
//! ```text
//!   BUCKETS [b] = 8 tags        FLOWS [b * 8 + i] = Slot { seq, key, flow }
//!   tag 0 empty, 1 being filled, else the key's tag (top bit set)
//! ```
//! A key lives in one of two buckets (two hashes), each with 8 ways: a lookup reads one
//! line of tags, and the key of a slot only where the tag matches. The hash is NH
//! (UMAC's universal hash) keyed with random words chosen when the tables are created,
//! so nobody can aim keys at one bucket; both tables share the seed (`Hash::place`).
//! A slot is claimed by compare-and-swap of its tag.
//!
//! The established table: a flow is inserted only by moving it from the pending table,
//! under that entry's lock, so one key is never inserted twice. When both buckets are
//! full, the new flow is refused. Only the agent deletes (idle flows), under the slot's
//! lock.
//!
//! The pending table: a new flow is inserted by the first packet that finds none, and
//! two CPUs may insert the same key at once: each checks after publishing
//! (`duplicated`), and the later one gives its slot up. When the table holds its
//! capacity or both buckets are full, the new flow takes the place of the oldest of
//! its 16 ways (`replace_oldest`), by a copy of each way's `flow.last_ts` kept beside
//! the tags (`Ages`). A promotion frees the slot, under its lock.
//!
//! `seq` is a sequence lock: odd while a writer (the XDP or TC program, or the agent's
//! sweep) holds the slot. Writers take it with compare-and-swap and a bounded spin; a
//! reader that must not block copies the slot between two equal even values.
//!
//! Each table has an occupancy bitmap beside it (`OCCUPIED [b / 64]`, bit `b % 64`),
//! for the agent's walk, which then reads only the buckets whose bit is set: a
//! publisher sets its bucket's bit after the tag (`Slots::published`, `occupy`), and
//! only the agent clears it, lazily, when its walk finds the bucket empty (`vacate`).
//! Invariant: a bucket holding a non-EMPTY tag whose publisher has returned has its
//! bit set. A set bit over an empty bucket only costs the walk a line read.

use core::mem::size_of;

use crate::abi::{Flow, FlowKey};

/// Ways of a bucket.
pub const WAYS: u32 = 8;
/// Tag of a free slot.
pub const EMPTY: u64 = 0;
/// Tag of a slot being filled.
pub const RESERVED: u64 = 1;
/// Words of the hash key (`Seed::words`): one per key word, rounded up to pairs.
pub const SEED_WORDS: usize = 10;
/// How often a writer tries to take a lock before it gives up on the packet. The
/// holder's critical section is a few hundred ns, but it may be interrupted (or its
/// vCPU descheduled) while it holds the lock; a try costs a few ns to a few tens, so this
/// waits up to a few hundred µs, and only ever on contention. 1,024 tries still lost 6
/// of 36,000 packets in a live lossy test (`flow_busy`).
pub const SPINS: u32 = 16_384;

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Bucket {
    pub tags: [u64; WAYS as usize],
}
/// One cache line.
const _: () = assert!(size_of::<Bucket>() == 64);

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Slot {
    pub seq: u64,
    pub key: FlowKey,
    pub _pad2: u32,
    pub flow: Flow,
}
const _: () = assert!(size_of::<Slot>() == 8 + 36 + 4 + size_of::<Flow>());
const _: () = assert!(size_of::<Slot>().is_multiple_of(8));

/// A copy of each way's `flow.last_ts`, in a table that evicts (the pending table):
/// choosing a victim then reads two lines of ages instead of 16 slots' lines after the
/// tags (~250 ns of a new flow in a flood against a full table: docs/decisions.md,
/// eighth round). Written under the slot's lock with the time `last_ts` gets
/// (`set_age`), read without it: a stale age only makes the choice less exact, as a
/// racing `last_ts` did.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Ages {
    pub last_ts: [u64; WAYS as usize],
}
const _: () = assert!(size_of::<Ages>() == 64);

/// A bucket of the kernel's pending table: its ages on the line after its tags, in the
/// same page, so they cost no page walk of their own (a VM's dearest miss). The agent
/// finds the tags by the map's value size.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct AgedBucket {
    pub bucket: Bucket,
    pub ages: Ages,
}

/// The table's hash key and geometry, chosen when the table is created.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Seed {
    pub words: [u32; SEED_WORDS],
}
const _: () = assert!(size_of::<Seed>() == 40);

/// How many flows the table holds, and may hold (`--max-flows`): the slots are more (50%
/// spare, for placement), the flows never.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Fill {
    pub flows: u64,
    pub capacity: u64,
}

/// Where a key may live: its two buckets and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub bucket: [u32; 2],
    pub tag: u64,
}

/// Buckets for a table that holds `flows` flows: 50% more slots than flows, so that
/// two-choice placement (the emptier bucket) does not refuse a flow before the table
/// holds `flows` (simulated with a million keys: with 25% more, refusals began at 87-90%
/// of `flows`; with 50%, none in three trials).
pub fn buckets_for(flows: u32) -> u32 {
    let slots = flows as u64 + flows as u64 / 2;
    slots.div_ceil(WAYS as u64).max(1) as u32
}

/// Words of the occupancy bitmap of a table of `buckets` buckets (one bit a bucket).
#[inline(always)]
pub fn occupancy_words(buckets: u32) -> u32 {
    buckets.div_ceil(64).max(1)
}

/// The occupancy bitmap's word and bit for the bucket of slot `idx`.
#[inline(always)]
pub fn occupancy(idx: u32) -> (u32, u64) {
    let b = idx / WAYS;
    (b / 64, 1 << (b % 64))
}

/// Sets `bit` of an occupancy bitmap's `word` (`Slots::published`), after the tag was
/// published: an atomic OR (a compare-and-swap loop in x86's JIT), only if the bit is
/// clear, as it is not in a busy bucket. If the agent's `vacate` clears it just after
/// this read, it reads the tags again after its AND and finds this one (published
/// before the read, by an exchange: a full barrier), and sets the bit back.
#[inline(always)]
pub fn occupy(word: *mut u64, bit: u64) {
    if atomic::load(word) & bit == 0 {
        atomic::or(word, bit);
    }
}

/// A key's hash under a table's seed: where it lives in a table of any size follows
/// from it (`Hash::place`), so the established and the pending table, which share the
/// seed, hash a key once between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hash {
    /// The finalized hash: the bucket indices.
    pub mixed: u64,
    /// NH itself with the top bit set.
    pub tag: u64,
}

/// NH (sum of products of key and seed words, mod 2^64), then a 64-bit finalizer for
/// the bucket indices; the tag is NH itself with the top bit set.
#[inline(always)]
pub fn hash(key: &FlowKey, seed: &Seed) -> Hash {
    let a = &key.addr;
    let m = [
        a[0][0],
        a[0][1],
        a[0][2],
        a[0][3],
        a[1][0],
        a[1][1],
        a[1][2],
        a[1][3],
        key.port[0] as u32 | (key.port[1] as u32) << 16,
        0,
    ];
    let k = &seed.words;
    let mut h: u64 = 0;
    let mut i = 0;
    while i < SEED_WORDS {
        let x = m[i].wrapping_add(k[i]) as u64;
        let y = m[i + 1].wrapping_add(k[i + 1]) as u64;
        h = h.wrapping_add(x.wrapping_mul(y));
        i += 2;
    }
    let mut x = h ^ (h >> 31);
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    Hash {
        mixed: x,
        tag: h | 1 << 63,
    }
}

impl Hash {
    /// The key's two buckets in a table of `buckets` buckets, and its tag.
    #[inline(always)]
    pub fn place(&self, buckets: u32) -> Place {
        let (x, n) = (self.mixed, buckets as u64);
        Place {
            bucket: [
                (((x & 0xffff_ffff) * n) >> 32) as u32,
                (((x >> 32) * n) >> 32) as u32,
            ],
            tag: self.tag,
        }
    }
}

/// Where `key` lives in a table of `buckets` buckets hashed with `seed`.
#[inline(always)]
pub fn place(key: &FlowKey, seed: &Seed, buckets: u32) -> Place {
    hash(key, seed).place(buckets)
}

/// The table's memory: bucket `b`'s tags and slot `i`, or None past the end.
pub trait Slots {
    fn bucket(&mut self, b: u32) -> Option<*mut Bucket>;
    fn slot(&mut self, i: u32) -> Option<*mut Slot>;
    /// The table's `Fill`.
    fn fill(&mut self) -> Option<*mut Fill>;
    /// Bucket `b`'s `Ages`, in a table that evicts (the pending table), else None.
    #[inline(always)]
    fn ages(&mut self, _b: u32) -> Option<*mut Ages> {
        None
    }
    /// Returns `v` unchanged, but unknown to the BPF verifier (as `abi::opaque`): a slot
    /// index found in way `i` is a different known value on each of the 16 paths of a
    /// lookup, and the verifier would check the rest of the program once per path.
    #[inline(always)]
    fn launder(&mut self, v: u32) -> u32 {
        v
    }
    /// Takes a lock of this table's memory (`lock`).
    #[inline(always)]
    fn lock(&mut self, seq: *mut u64) -> Option<Held> {
        lock(seq)
    }
    /// Slot `idx` was published under a key's tag: the kernel and the agent set its
    /// bucket's bit in the table's occupancy bitmap (`occupy`); the host keeps an index
    /// of the slots in use instead. Either way a walk finds the flow without scanning
    /// every bucket.
    #[inline(always)]
    fn published(&mut self, _idx: u32) {}
    /// Slot `idx` was freed.
    #[inline(always)]
    fn freed(&mut self, _idx: u32) {}
}

/// Atomic accesses to a u64 of table memory. Rust's `core` has no compare-and-swap for
/// the BPF target (its spec says none), but LLVM and the kernel do (BPF_CMPXCHG), so
/// the kernel side calls the compiler's intrinsics. 64-bit words: LLVM has 32-bit
/// atomics for BPF only with ALU32 (cpu v3), which would change all the probe's code. Every pointer given here is aligned
/// table memory that outlives the call, and is only ever accessed atomically by
/// concurrent writers. On x86 (TSO) the JIT's locked instructions are full barriers.
#[cfg(target_arch = "bpf")]
mod atomic {
    use core::intrinsics::AtomicOrdering::SeqCst;
    use core::intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, atomic_xchg};

    /// A volatile load: LLVM's BPF backend cannot select atomic loads of this width
    /// before cpu v4; on x86 a load is not reordered with older loads anyway, nor with
    /// the locked operations.
    #[inline(always)]
    pub fn load(p: *mut u64) -> u64 {
        // SAFETY: see the module comment.
        unsafe { core::ptr::read_volatile(p) }
    }
    /// `load`, and LLVM may not move later memory accesses before it (an asm
    /// statement that may touch memory); x86 does not reorder loads with older loads.
    #[inline(always)]
    pub fn load_acquire(p: *mut u64) -> u64 {
        let mut v = load(p);
        // SAFETY: `v = v` on a register.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) v, options(nostack)) };
        v
    }
    #[inline(always)]
    pub fn cas(p: *mut u64, old: u64, new: u64) -> bool {
        // SAFETY: see the module comment.
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1 }
    }
    #[inline(always)]
    pub fn swap(p: *mut u64, v: u64) {
        // SAFETY: see the module comment.
        unsafe { atomic_xchg::<u64, { SeqCst }>(p, v) };
    }
    /// The previous value is not returned: BPF before cpu v3 cannot use it.
    #[inline(always)]
    pub fn fetch_add(p: *mut u64, v: u64) {
        // SAFETY: see the module comment.
        unsafe { atomic_xadd::<u64, u64, { SeqCst }>(p, v) };
    }
    /// As `fetch_add`, returning the previous value: BPF_ATOMIC | BPF_ADD | BPF_FETCH
    /// (kernel 5.12), written out because LLVM selects it only for cpu v3.
    #[inline(always)]
    pub fn fetch_add_prev(p: *mut u64, v: u64) -> u64 {
        let mut v = v;
        // SAFETY: see the module comment.
        unsafe {
            core::arch::asm!(
                "{0} = atomic_fetch_add((u64 *)({1} + 0), {0})",
                inout(reg) v,
                in(reg) p,
                options(nostack),
            )
        };
        v
    }
    /// BPF_ATOMIC | BPF_OR. LLVM emits it with BPF_FETCH before cpu v3 even when the
    /// previous value goes unused (the x86 JIT then makes it a `lock cmpxchg` loop).
    #[inline(always)]
    pub fn or(p: *mut u64, v: u64) {
        // SAFETY: see the module comment.
        unsafe { atomic_or::<u64, u64, { SeqCst }>(p, v) };
    }
}

#[cfg(not(target_arch = "bpf"))]
mod atomic {
    use core::sync::atomic::{AtomicU64, Ordering};

    #[inline(always)]
    fn at<'a>(p: *mut u64) -> &'a AtomicU64 {
        // SAFETY: see the module comment on the BPF side.
        unsafe { AtomicU64::from_ptr(p) }
    }
    #[inline(always)]
    pub fn load(p: *mut u64) -> u64 {
        at(p).load(Ordering::Acquire)
    }
    #[inline(always)]
    pub fn load_acquire(p: *mut u64) -> u64 {
        load(p)
    }
    #[inline(always)]
    pub fn cas(p: *mut u64, old: u64, new: u64) -> bool {
        at(p)
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
    #[inline(always)]
    pub fn swap(p: *mut u64, v: u64) {
        at(p).swap(v, Ordering::AcqRel);
    }
    #[inline(always)]
    pub fn fetch_add(p: *mut u64, v: u64) {
        at(p).fetch_add(v, Ordering::AcqRel);
    }
    #[inline(always)]
    pub fn fetch_add_prev(p: *mut u64, v: u64) -> u64 {
        at(p).fetch_add(v, Ordering::AcqRel)
    }
    #[inline(always)]
    pub fn or(p: *mut u64, v: u64) {
        at(p).fetch_or(v, Ordering::SeqCst);
    }
    #[inline(always)]
    pub fn and(p: *mut u64, v: u64) {
        at(p).fetch_and(v, Ordering::SeqCst);
    }
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    // Word by word: array equality may become a bcmp call in BPF.
    let mut same = a.port[0] == b.port[0] && a.port[1] == b.port[1];
    for i in 0..2 {
        for j in 0..4 {
            same &= a.addr[i][j] == b.addr[i][j];
        }
    }
    same
}

/// The tag word of way `i` of bucket `b`.
#[inline(always)]
fn tag_of(bucket: *mut Bucket, i: u32) -> *mut u64 {
    // SAFETY: `bucket` is a live bucket; `i & 7` is in range.
    unsafe { (*bucket).tags.as_mut_ptr().add((i & (WAYS - 1)) as usize) }
}

/// Slot index of `key`, found by tag and key (not locked), or None.
#[inline(always)]
pub fn find<S: Slots>(s: &mut S, key: &FlowKey, at: &Place) -> Option<u32> {
    find_other(s, key, at, u32::MAX).map(|f| f.idx)
}

/// Where `find` found a key: the slot, and its lock word as it was before the key
/// was compared (`lock_found` takes the lock from that value). With the slot's and its
/// bucket's memory, which `lock_found` then needs not look up again (in the kernel,
/// two array lookups).
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub idx: u32,
    pub(crate) seen: u64,
    pub(crate) slot: *mut Slot,
    pub(crate) bucket: *mut Bucket,
}

/// As `find`, with the lock word seen.
#[inline(always)]
pub fn lookup<S: Slots>(s: &mut S, key: &FlowKey, at: &Place) -> Option<Found> {
    find_other(s, key, at, u32::MAX)
}

/// As `lookup`, slot `except` aside.
#[inline(always)]
fn find_other<S: Slots>(s: &mut S, key: &FlowKey, at: &Place, except: u32) -> Option<Found> {
    for w in 0..2 {
        let b = at.bucket[w];
        let bucket = s.bucket(b)?;
        for i in 0..WAYS {
            if atomic::load(tag_of(bucket, i)) != at.tag {
                continue;
            }
            let idx = s.launder(b * WAYS + i);
            let slot = s.slot(idx)?;
            // SAFETY: a live slot; the lock word is read before the key.
            let seen = atomic::load_acquire(unsafe { &raw mut (*slot).seq });
            // SAFETY: as above; its key only changes under its lock.
            if idx != except && same_key(unsafe { &(*slot).key }, key) {
                return Some(Found {
                    idx,
                    seen,
                    slot,
                    bucket,
                });
            }
        }
    }
    None
}

/// A lock held: the lock word and the odd value it holds.
#[derive(Clone, Copy)]
pub struct Held {
    pub seq: *mut u64,
    pub value: u64,
}

/// Takes `seq`'s lock, trying `SPINS` times; None if it stayed held. (The kernel
/// spins through `Slots::lock` instead: an inlined loop is verified once per try.)
#[inline(always)]
pub fn lock(seq: *mut u64) -> Option<Held> {
    for _ in 0..SPINS {
        let held = try_lock(seq);
        if held.is_some() {
            return held;
        }
    }
    None
}

/// Takes `seq`'s lock if it is free now (the agent never waits for the probe).
#[inline(always)]
pub fn try_lock(seq: *mut u64) -> Option<Held> {
    let s = atomic::load(seq);
    let value = s.wrapping_add(1);
    (s & 1 == 0 && atomic::cas(seq, s, value)).then_some(Held { seq, value })
}

/// Releases a lock by storing the next even value (not by adding one: if the memory
/// was handed to another key meanwhile, the word ends unlocked).
#[inline(always)]
pub fn unlock(held: Held) {
    atomic::swap(held.seq, held.value.wrapping_add(1));
}

/// Locks the slot `lookup` found if it still holds `key` (the agent may have freed it
/// meanwhile). Err(true) when the lock stayed held, Err(false) when the key is gone.
/// If the lock word still holds the even value seen before the key was compared, no
/// writer came in between: the key is the same, and only the tag needs checking (a
/// free does not clear the key). Else the lock is taken as it comes, and both are
/// checked.
#[inline(always)]
pub fn lock_found<S: Slots>(
    s: &mut S,
    found: Found,
    key: &FlowKey,
    at: &Place,
) -> Result<(*mut Slot, Held), bool> {
    let (idx, slot, bucket) = (found.idx, found.slot, found.bucket);
    // SAFETY: a live slot.
    let seq = unsafe { &raw mut (*slot).seq };
    let (seen, value) = (found.seen, found.seen.wrapping_add(1));
    if seen & 1 == 0 && atomic::cas(seq, seen, value) {
        let held = Held { seq, value };
        if atomic::load(tag_of(bucket, idx)) != at.tag {
            unlock(held);
            return Err(false);
        }
        return Ok((slot, held));
    }
    let held = s.lock(seq).ok_or(true)?;
    let tag = atomic::load(tag_of(bucket, idx));
    // SAFETY: as above, and locked.
    if tag != at.tag || !same_key(unsafe { &(*slot).key }, key) {
        unlock(held);
        return Err(false);
    }
    Ok((slot, held))
}

/// Claims a free slot for `key` in the emptier of its buckets (the first if equal) and
/// returns it locked, with the key written and the tag still `RESERVED`: the caller
/// fills the flow, then calls `publish`. None when the table holds its capacity of
/// flows, when both buckets are full, or when a claimed slot stayed locked. The
/// emptier bucket, not the first with room: with first-fit, a table of 8-way buckets
/// starts refusing at a third of its slots.
#[inline(always)]
pub fn claim<S: Slots>(s: &mut S, key: &FlowKey, at: &Place) -> Option<(u32, *mut Slot, Held)> {
    let fill = s.fill()?;
    // SAFETY: the table's live `Fill`; `flows` is only changed atomically.
    let (flows, capacity) = unsafe { (&raw mut (*fill).flows, (*fill).capacity) };
    if !count_in(flows, capacity) {
        return None;
    }
    let claimed = claim_slot(s, key, at);
    if claimed.is_none() {
        atomic::fetch_add(flows, u64::MAX);
    }
    claimed
}

/// Adds one to `flows` if it is below `capacity`: one atomic add, which always
/// succeeds, however many CPUs insert at once (a compare-and-swap fails when another
/// CPU's insert comes in between, and a bounded retry then refused flows, or evicted
/// them, with room to spare: 7% of the inserts on two CPUs with one try). An add that
/// went past the capacity is taken back: until then another CPU's add there may be
/// refused too, only ever within a few flows of a full table. A full table is seen
/// by a load first, so a flood against it does not write the shared line.
#[inline(always)]
fn count_in(flows: *mut u64, capacity: u64) -> bool {
    if atomic::load(flows) >= capacity {
        return false;
    }
    if atomic::fetch_add_prev(flows, 1) < capacity {
        return true;
    }
    atomic::fetch_add(flows, u64::MAX);
    false
}

#[inline(always)]
fn claim_slot<S: Slots>(s: &mut S, key: &FlowKey, at: &Place) -> Option<(u32, *mut Slot, Held)> {
    let (first, second) = (s.bucket(at.bucket[0])?, s.bucket(at.bucket[1])?);
    let free = |bucket: *mut Bucket| {
        (0..WAYS).fold(0, |n, i| {
            n + (atomic::load(tag_of(bucket, i)) == EMPTY) as u32
        })
    };
    // Laundered: the counts are known values on each path of the verifier's.
    let (f0, f1) = (free(first), free(second));
    let (f0, f1) = (s.launder(f0), s.launder(f1));
    let swap = s.launder((f1 > f0) as u32) != 0;
    let order = if swap {
        [at.bucket[1], at.bucket[0]]
    } else {
        at.bucket
    };
    for b in order {
        let bucket = s.bucket(b)?;
        for i in 0..WAYS {
            let tag = tag_of(bucket, i);
            if atomic::load(tag) != EMPTY || !atomic::cas(tag, EMPTY, RESERVED) {
                continue;
            }
            let idx = s.launder(b * WAYS + i);
            let slot = s.slot(idx)?;
            touch(slot);
            // SAFETY: a live slot, reserved by us: nobody finds it by its tag.
            let Some(held) = s.lock(unsafe { &mut (*slot).seq }) else {
                atomic::swap(tag, EMPTY);
                return None;
            };
            // SAFETY: as above, and locked.
            unsafe { (*slot).key = *key };
            return Some((idx, slot, held));
        }
    }
    None
}

/// Loads the tags of `at`'s two buckets and the first word of each bucket's slots, all
/// at once, before a lookup and a claim read them one after the other: the lines (and
/// the pages, whose translations are dear in a VM) of a table too large for the caches
/// then arrive together. BPF has no prefetch instruction: loads whose values go unused
/// are the next best thing. Kernel only: the host's tables make a slot's memory when it
/// is first asked for, and this would make two for every key looked up (the offline
/// analyser's memory then grew with the capture's flows).
#[inline(always)]
pub fn prefetch<S: Slots>(s: &mut S, at: &Place) {
    if cfg!(not(target_arch = "bpf")) {
        return;
    }
    for b in at.bucket {
        if let Some(bucket) = s.bucket(b) {
            atomic::load(tag_of(bucket, 0));
        }
        if let Some(slot) = s.slot(b * WAYS) {
            // SAFETY: a live slot; the word is only read, atomically.
            atomic::load(unsafe { &raw mut (*slot).seq });
        }
        if let Some(ages) = s.ages(b) {
            // SAFETY: live ages; the word is only read, atomically.
            atomic::load(unsafe { &raw mut (*ages).last_ts[0] });
        }
    }
}

/// Loads a word of each cache line of `slot` at once, before the lock's
/// compare-and-swap waits for the first line and the writes of a whole new flow for
/// the others, one after the other (as `prefetch`).
#[inline(always)]
fn touch(slot: *mut Slot) {
    let words = slot as *mut u64;
    const LAST: usize = size_of::<Slot>() / 8 - 1;
    let mut i = 0;
    while i < LAST {
        // SAFETY: word `i` of a live slot, only read, atomically.
        atomic::load(unsafe { words.add(i) });
        i += 8;
    }
    // SAFETY: the slot's last word, which may sit on a line of its own.
    atomic::load(unsafe { words.add(LAST) });
}

/// Makes a claimed slot findable under `at.tag`.
#[inline(always)]
pub fn publish<S: Slots>(s: &mut S, idx: u32, at: &Place) {
    if let Some(bucket) = s.bucket(idx / WAYS) {
        atomic::swap(tag_of(bucket, idx), at.tag);
        s.published(idx);
    }
}

/// After `publish`, for a table whose inserts are not serialized by another lock (the
/// pending table): whether another slot holds `key` as well, published by another CPU
/// that inserted it at the same instant. Both publish before they look (atomic swaps,
/// full barriers), so at least the later of the two sees the other: the caller frees
/// its own slot and lets the other one hold the flow.
#[inline(always)]
pub fn duplicated<S: Slots>(s: &mut S, idx: u32, key: &FlowKey, at: &Place) -> bool {
    find_other(s, key, at, idx).is_some()
}

/// Frees slot `idx`, which the caller holds locked (a promotion out of the pending
/// table, or the agent's eviction).
#[inline(always)]
pub fn free<S: Slots>(s: &mut S, idx: u32) {
    if let Some(bucket) = s.bucket(idx / WAYS) {
        atomic::swap(tag_of(bucket, idx), EMPTY);
        s.freed(idx);
        if let Some(fill) = s.fill() {
            // SAFETY: the table's live `Fill`.
            atomic::fetch_add(unsafe { &raw mut (*fill).flows }, u64::MAX);
        }
    }
}

/// Records `last_ts` as slot `idx`'s age (`Ages`), in a table that keeps ages; the
/// caller holds the slot's lock.
#[inline(always)]
pub fn set_age<S: Slots>(s: &mut S, idx: u32, last_ts: u64) {
    if let Some(ages) = s.ages(idx / WAYS) {
        // SAFETY: live ages; `idx & 7` is in range.
        unsafe {
            let at = (*ages)
                .last_ts
                .as_mut_ptr()
                .add((idx & (WAYS - 1)) as usize);
            core::ptr::write_volatile(at, last_ts);
        }
    }
}

/// For a table that evicts (the pending table) when `claim` found no room: takes the
/// place of the entry with the oldest `flow.last_ts` (read from `Ages`) among `key`'s
/// 16 ways (the first in way order on a tie), under the victim's lock taken with one
/// try. Returned as `claim` returns a slot: locked, `key` written, tag `RESERVED` (a
/// CPU waiting for the victim's lock then sees the tag changed and gives up on it);
/// the number of flows does not change. Err(true) when the victim was busy,
/// Err(false) when no way held a flow (the table holds its capacity of flows
/// elsewhere).
#[inline(always)]
pub fn replace_oldest<S: Slots>(
    s: &mut S,
    key: &FlowKey,
    at: &Place,
) -> Result<(u32, *mut Slot, Held), bool> {
    let (mut oldest, mut victim) = (u64::MAX, u32::MAX);
    for w in 0..2 {
        let b = at.bucket[w];
        let bucket = s.bucket(b).ok_or(false)?;
        let ages = s.ages(b).ok_or(false)?;
        for i in 0..WAYS {
            if atomic::load(tag_of(bucket, i)) <= RESERVED {
                continue;
            }
            // SAFETY: live ages. Not locked: a racing write only makes the choice of
            // victim less exact, and the victim is checked again under its lock.
            let ts = unsafe { core::ptr::read_volatile(&raw const (*ages).last_ts[i as usize]) };
            if ts < oldest {
                oldest = ts;
                victim = b * WAYS + i;
            }
        }
    }
    // Laundered: the victim is a different known index on each path.
    let victim = s.launder(victim);
    let slot = s.slot(victim).ok_or(false)?;
    let bucket = s.bucket(victim / WAYS).ok_or(false)?;
    // SAFETY: a live slot.
    let held = try_lock(unsafe { &raw mut (*slot).seq }).ok_or(true)?;
    let tag = tag_of(bucket, victim);
    // Freed meanwhile (and maybe being claimed): not ours to take.
    if atomic::load(tag) <= RESERVED {
        unlock(held);
        return Err(true);
    }
    atomic::swap(tag, RESERVED);
    // SAFETY: as above, and locked.
    unsafe { (*slot).key = *key };
    Ok((victim, slot, held))
}

#[cfg(not(target_arch = "bpf"))]
/// Clears bucket `b`'s `bit` in the occupancy bitmap's `word`, which a walk found set
/// over an empty bucket, unless a flow is being put there meanwhile. The agent only.
///
/// Why no flow is lost: a publisher stores its tag (the claim's compare-and-swap, then
/// the publishing swap: locked instructions, full barriers on x86) before its OR. The
/// AND here, a full fence, then a second read of the tags: either the publisher's OR
/// comes after the AND (the bit ends set), or it came before, and then so did its tag
/// store, which the second read sees (not EMPTY: the bit is set again). A claim that
/// starts after the second read publishes and ORs later: the bit ends set.
pub fn vacate<S: Slots>(s: &mut S, b: u32, word: *mut u64, bit: u64) {
    let Some(bucket) = s.bucket(b) else {
        return;
    };
    let empty = || (0..WAYS).all(|i| atomic::load(tag_of(bucket, i)) == EMPTY);
    if !empty() {
        return;
    }
    atomic::and(word, !bit);
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    if !empty() {
        atomic::or(word, bit);
    }
}

#[cfg(not(target_arch = "bpf"))]
/// The tag of slot `idx` (EMPTY, RESERVED or a key's tag).
pub fn tag<S: Slots>(s: &mut S, idx: u32) -> u64 {
    s.bucket(idx / WAYS)
        .map(|b| atomic::load(tag_of(b, idx)))
        .unwrap_or(EMPTY)
}

#[cfg(not(target_arch = "bpf"))]
/// A consistent copy of slot `slot`'s key and flow without taking its lock (the
/// agent's readers), or None if writers kept it busy.
///
/// # Safety
/// `slot` points to a slot of a live table (its memory stays mapped for the call).
pub unsafe fn read(slot: *const Slot) -> Option<(FlowKey, Flow)> {
    // SAFETY: as the caller promised; a torn copy is detected by `consistent`.
    unsafe { consistent(slot, |s| core::ptr::read_volatile(s)) }.map(|c| (c.key, c.flow))
}

#[cfg(not(target_arch = "bpf"))]
/// Byte ranges of a slot that `read_sweep` reads: the lock, the key and the flow's own
/// fields, then each half's leading `SWEEP_HALF_BYTES`.
pub const SWEEP_RANGES: [(usize, usize); 2] = {
    use crate::abi::{Half, SWEEP_HALF_BYTES};
    use core::mem::offset_of;
    let half0 = offset_of!(Slot, flow) + offset_of!(Flow, half);
    let half1 = half0 + size_of::<Half>();
    [
        (0, half0 + SWEEP_HALF_BYTES),
        (half1, half1 + SWEEP_HALF_BYTES),
    ]
};

#[cfg(not(target_arch = "bpf"))]
/// As `read`, but only what the agent's whole pass looks at: the key, the flow's own
/// fields and each half's leading `SWEEP_HALF_BYTES` (the rest of the copy is zero).
/// Three or four cache lines of the slot's seven.
///
/// # Safety
/// As `read`.
pub unsafe fn read_sweep(slot: *const Slot) -> Option<(FlowKey, Flow)> {
    let copy = |s: *const Slot| {
        let mut out = Slot::default();
        let (from, to) = (s as *const u64, &mut out as *mut Slot as *mut u64);
        for (lo, hi) in SWEEP_RANGES {
            for w in lo / 8..hi / 8 {
                // SAFETY: whole words inside both slots.
                unsafe { to.add(w).write(core::ptr::read_volatile(from.add(w))) }
            }
        }
        out
    };
    // SAFETY: as the caller promised.
    unsafe { consistent(slot, copy) }.map(|c| (c.key, c.flow))
}

#[cfg(not(target_arch = "bpf"))]
/// `copy(slot)` taken between two equal even values of its sequence lock, or None if
/// writers kept it busy through `SPINS` tries.
///
/// # Safety
/// `slot` points to a slot of a live table.
unsafe fn consistent(slot: *const Slot, copy: impl Fn(*const Slot) -> Slot) -> Option<Slot> {
    let seq = slot as *mut u64;
    for _ in 0..SPINS {
        let before = atomic::load(seq);
        if before & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        let c = copy(slot);
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        if atomic::load(seq) == before {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod count_tests {
    use super::{atomic, count_in};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Four threads take and give back places in a table of two, all at its capacity
    /// at once, so that adds past it (taken back) happen all the time: never more
    /// holders than places, every add taken back, and a place free for each thread in
    /// turn (no count lost upwards, which would leave the table full for good).
    #[test]
    fn counting_in_at_the_capacity_never_holds_more_and_loses_nothing() {
        const CAPACITY: u64 = 2;
        let mut flows = 0u64;
        let flows = &raw mut flows as usize;
        let (holders, most, taken) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200_000 {
                        if !count_in(flows as *mut u64, CAPACITY) {
                            continue;
                        }
                        let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        taken.fetch_add(1, Ordering::Relaxed);
                        holders.fetch_sub(1, Ordering::SeqCst);
                        atomic::fetch_add(flows as *mut u64, u64::MAX);
                    }
                });
            }
        });
        assert!(
            most.load(Ordering::SeqCst) <= CAPACITY,
            "more holders than places"
        );
        assert_eq!(atomic::load(flows as *mut u64), 0, "every place given back");
        assert!(taken.load(Ordering::Relaxed) > 200_000, "places were taken");
    }
}
