//! The probe's flow tables, established and pending, mapped into the agent's memory
//! (their buckets, slots, fill and occupancy maps are `BPF_F_MMAPABLE` arrays; layout
//! and locking in `ebpf_probe::table`).
//! Reading a flow is a memory copy, not a syscall: a whole pass reads the occupancy
//! bitmap, then only the buckets it marks and the slots in use. Writes (the sweep's
//! verdict, eviction) take the slot's lock, and never wait for it: a slot the probe
//! holds is left for the next sweep.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;

use aya::maps::MapData;
use ebpf_probe::abi::{Flow, FlowKey};
use ebpf_probe::table::{self, Bucket, Fill, Seed, Slot, Slots, WAYS};

/// One shared mapping of a BPF array map's values.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory; every access to it goes through `table`'s
// atomic or sequence-checked accesses.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(map: &MapData, bytes: usize) -> io::Result<Mapping> {
        let page = 4096;
        let len = bytes.div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's own memory, of its own size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr as *mut u8).expect("mmap returned null"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// What a reader copies of a slot: all of it, or what the sweep's whole pass reads
/// (`table::read_sweep`: the rest of the flow is zero).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Part {
    Whole,
    Sweep,
}

/// Whether `FlowTable::with_locked` frees the slot after its call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Free {
    Yes,
    No,
}

/// The maps of the established table: buckets, slots, fill, occupancy bitmap.
pub const ESTABLISHED_MAPS: [&str; 4] = ["BUCKETS", "FLOWS", "FILL", "OCCUPIED"];
/// The same of the pending table.
pub const PENDING_MAPS: [&str; 4] = [
    "PENDING_BUCKETS",
    "PENDING_SLOTS",
    "PENDING_FILL",
    "PENDING_OCCUPIED",
];

/// How far ahead of the slot it reads a walk prefetches (measured at 1M flows: 156 ms
/// a pass without, 81 with 4, 79 with 8, 80 with 16), in slots or in flows (`walk`).
const PREFETCH_AHEAD: u32 = 8;

pub struct FlowTable {
    buckets: Mapping,
    slots: Mapping,
    fill: Mapping,
    /// One bit a bucket: set by the publisher of a slot, cleared by the walk
    /// (`table::occupy`, `table::vacate`).
    occupied: Mapping,
    nbuckets: u32,
    /// Bytes from a bucket to the next: the map's value size (a pending bucket carries
    /// its ways' ages after its tags, `table::AgedBucket`).
    bucket_bytes: usize,
    seed: Seed,
}

/// The table's memory as `table` takes it. Shared memory: writers go through `table`'s
/// locks and atomics, so a shared reference is enough to reach it.
struct View<'a>(&'a FlowTable);

impl Slots for View<'_> {
    fn bucket(&mut self, b: u32) -> Option<*mut Bucket> {
        // SAFETY: in bounds of the mapping (checked).
        (b < self.0.nbuckets).then(|| unsafe {
            let base = self.0.buckets.ptr.as_ptr();
            base.add(b as usize * self.0.bucket_bytes) as *mut Bucket
        })
    }

    fn slot(&mut self, i: u32) -> Option<*mut Slot> {
        // SAFETY: as above.
        (i < self.0.nbuckets * WAYS)
            .then(|| unsafe { (self.0.slots.ptr.as_ptr() as *mut Slot).add(i as usize) })
    }

    fn fill(&mut self) -> Option<*mut Fill> {
        Some(self.0.fill.ptr.as_ptr() as *mut Fill)
    }

    /// As the probe's: the agent's own inserts (tests, benchmarks) set the bit too.
    fn published(&mut self, idx: u32) {
        let (w, bit) = table::occupancy(idx);
        if let Some(word) = self.0.occupancy_word(w) {
            table::occupy(word, bit);
        }
    }
}

/// The occupied buckets of a table from a bucket on, in order, as the bitmap reads
/// while it goes (a bit set or cleared meanwhile may or may not be seen).
#[derive(Clone)]
struct Occupied<'a> {
    table: &'a FlowTable,
    /// The word being read, and its bits not taken yet.
    word: u32,
    bits: u64,
}

impl<'a> Occupied<'a> {
    fn from(table: &'a FlowTable, b: u32) -> Self {
        let word = b / 64;
        let bits = table.load_word(word) & (u64::MAX << (b % 64));
        Occupied { table, word, bits }
    }
}

impl Iterator for Occupied<'_> {
    type Item = u32;

    #[inline(always)]
    fn next(&mut self) -> Option<u32> {
        while self.bits == 0 {
            self.word += 1;
            if self.word >= table::occupancy_words(self.table.nbuckets) {
                return None;
            }
            self.bits = self.table.load_word(self.word);
        }
        let b = self.word * 64 + self.bits.trailing_zeros();
        self.bits &= self.bits - 1;
        (b < self.table.nbuckets).then_some(b)
    }
}

/// The slots in use of a table's occupied buckets, in order, as their tags read when
/// it comes to each bucket.
struct Used<'a> {
    buckets: Occupied<'a>,
    bucket: u32,
    /// Ways of `bucket` in use, not taken yet.
    ways: u32,
}

impl<'a> Used<'a> {
    fn new(buckets: Occupied<'a>) -> Self {
        Used {
            buckets,
            bucket: 0,
            ways: 0,
        }
    }
}

impl Iterator for Used<'_> {
    type Item = u32;

    #[inline(always)]
    fn next(&mut self) -> Option<u32> {
        while self.ways == 0 {
            self.bucket = self.buckets.next()?;
            let p = View(self.buckets.table).bucket(self.bucket)?;
            // SAFETY: a bucket of the mapping; tags are words, read whole.
            let tags = unsafe { std::ptr::read_volatile(p) }.tags;
            self.ways = (0..WAYS)
                .zip(tags)
                .fold(0, |m, (i, t)| m | ((t > table::RESERVED) as u32) << i);
        }
        let way = self.ways.trailing_zeros();
        self.ways &= self.ways - 1;
        Some(self.bucket * WAYS + way)
    }
}

impl FlowTable {
    /// Maps a table's maps: `maps` are its buckets, slots, fill and occupancy bitmap.
    pub fn map(maps: [&MapData; 4], nbuckets: u32, seed: Seed) -> io::Result<Self> {
        let [buckets, slots, fill, occupied] = maps;
        let words = table::occupancy_words(nbuckets) as usize;
        let bucket_bytes = buckets
            .info()
            .map_err(|e| io::Error::other(e.to_string()))?
            .value_size() as usize;
        if bucket_bytes < size_of::<Bucket>() || !bucket_bytes.is_multiple_of(size_of::<Bucket>()) {
            return Err(io::Error::other(format!(
                "buckets of {bucket_bytes} bytes: not a flow table"
            )));
        }
        Ok(FlowTable {
            buckets: Mapping::new(buckets, nbuckets as usize * bucket_bytes)?,
            slots: Mapping::new(slots, (nbuckets * WAYS) as usize * size_of::<Slot>())?,
            fill: Mapping::new(fill, size_of::<Fill>())?,
            occupied: Mapping::new(occupied, words * size_of::<u64>())?,
            nbuckets,
            bucket_bytes,
            seed,
        })
    }

    /// The established table a running agent pinned in `dir` (tests fill it from
    /// outside).
    pub fn open_pinned(dir: &std::path::Path) -> io::Result<Self> {
        Self::open_pinned_maps(dir, ESTABLISHED_MAPS)
    }

    /// The table whose maps (buckets, slots, fill, occupancy) a running agent pinned in
    /// `dir`.
    pub fn open_pinned_maps(dir: &std::path::Path, names: [&str; 4]) -> io::Result<Self> {
        use aya::maps::{Array, Map};
        let open = |name: &str| {
            MapData::from_pin(dir.join(name)).map_err(|e| io::Error::other(format!("{name}: {e}")))
        };
        let (buckets, slots) = (open(names[0])?, open(names[1])?);
        let nbuckets = buckets
            .info()
            .map_err(|e| io::Error::other(e.to_string()))?
            .max_entries();
        let seeds: Array<MapData, Seed> = Array::try_from(Map::Array(open("SEED")?))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let seed = seeds
            .get(&0, 0)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let (fill, occupied) = (open(names[2])?, open(names[3])?);
        FlowTable::map([&buckets, &slots, &fill, &occupied], nbuckets, seed)
    }

    /// Sets how many flows the table may hold (`--max-flows`), before the probe runs.
    pub fn set_capacity(&self, capacity: u32) {
        // SAFETY: the mapped `Fill`; the probe only reads `capacity`.
        unsafe {
            std::ptr::write_volatile(
                &raw mut (*(self.fill.ptr.as_ptr() as *mut Fill)).capacity,
                capacity as u64,
            )
        }
    }

    /// Flows in the table, as the probe and the agent counted them in and out.
    pub fn flows(&self) -> u64 {
        // SAFETY: the mapped `Fill`.
        unsafe { std::ptr::read_volatile(self.fill.ptr.as_ptr() as *const u64) }
    }

    pub fn slots(&self) -> u32 {
        self.nbuckets * WAYS
    }

    /// Slot index of `key`, if the table holds it.
    pub fn find(&self, key: &FlowKey) -> Option<u32> {
        let at = table::place(key, &self.seed, self.nbuckets);
        table::find(&mut View(self), key, &at)
    }

    /// Continues a walk of the table at slot `cursor` for `max` flows (free slots cost
    /// a tag check and do not count), calling `each(slot, key, flow)` with `part` of
    /// each flow until it returns false; true when it reached the end of the table (the
    /// cursor starts over). Only the buckets whose bit the occupancy bitmap has set are
    /// read (a walk stopped inside a bucket goes on with the rest of it); a set bit
    /// over an empty bucket is cleared (`table::vacate`). Inlined, with the reads: as a
    /// call of its own it copied each flow it returned once more (memmove took 12% of a
    /// whole pass, 27 -> 49 ms at 1M).
    #[inline(always)]
    pub fn walk(
        &self,
        cursor: &mut u32,
        max: usize,
        part: Part,
        mut each: impl FnMut(u32, &FlowKey, &Flow) -> bool,
    ) -> bool {
        let end = self.slots();
        let mut seen = 0;
        // A table more than a quarter full is streamed: the slot `PREFETCH_AHEAD` slots
        // ahead is prefetched whether it holds a flow or not (the old walk's way). A
        // sparser one prefetches only the slots in use, `PREFETCH_AHEAD` flows ahead:
        // each is a page of its own there, and the rest of its bucket's slots would
        // be read for nothing. Measured whole passes at 10k, 100k, 300k, 400k, 500k and
        // 1M flows in a table of 1.7M slots: the stream takes 27-32 ms from 100k flows
        // on, the flows alone 1.4, 9, 21, 28, 31 and 49 ms.
        let dense = self.flows() * 4 > end as u64;
        let mut occupied = Occupied::from(self, cursor.div_ceil(WAYS));
        // The occupied buckets ahead: their tags are loaded twice as far ahead as the
        // slots, which a sparse walk finds by them.
        let mut tags_ahead = occupied.clone();
        for b in tags_ahead.by_ref().take(2 * PREFETCH_AHEAD as usize) {
            self.prefetch_bucket(b);
        }
        let mut used_ahead = Used::new(occupied.clone());
        if !dense {
            for u in used_ahead.by_ref().take(PREFETCH_AHEAD as usize) {
                self.prefetch_slot(u, part);
            }
        }
        while *cursor < end && seen < max {
            let mut i = *cursor;
            if i.is_multiple_of(WAYS) {
                let Some(b) = occupied.next() else {
                    *cursor = end;
                    break;
                };
                if let Some(a) = tags_ahead.next() {
                    self.prefetch_bucket(a);
                }
                i = b * WAYS;
                *cursor = i;
                if self.bucket_is_empty(b) {
                    self.vacate(b);
                    *cursor += WAYS;
                    continue;
                }
            }
            if dense {
                self.prefetch_slot(i + PREFETCH_AHEAD, part);
            }
            *cursor += 1;
            if let Some((k, f)) = self.read_part(i, part) {
                if !dense && let Some(u) = used_ahead.next() {
                    self.prefetch_slot(u, part);
                }
                seen += 1;
                if !each(i, &k, &f) {
                    return false;
                }
            }
        }
        if *cursor >= end {
            *cursor = 0;
            return true;
        }
        false
    }

    /// Asks the CPU to start loading `part` of slot `i` (a walk's slot a few steps
    /// ahead): a slot is seven cache lines, and a walk over a large table waits on
    /// memory.
    pub fn prefetch_slot(&self, i: u32, part: Part) {
        if let Some(p) = View(self).slot(i) {
            let p = p as *const u8;
            match part {
                Part::Whole => prefetch(p, size_of::<Slot>()),
                Part::Sweep => {
                    for (lo, hi) in table::SWEEP_RANGES {
                        prefetch(p.wrapping_add(lo), hi - lo);
                    }
                }
            }
        }
    }

    /// The same for bucket `b`'s tags (one line).
    pub fn prefetch_bucket(&self, b: u32) {
        if let Some(p) = View(self).bucket(b) {
            prefetch(p as *const u8, size_of::<Bucket>());
        }
    }

    /// Whether bucket `b`'s bit is set in the occupancy bitmap.
    pub fn occupied(&self, b: u32) -> bool {
        let (w, bit) = table::occupancy(b * WAYS);
        self.load_word(w) & bit != 0
    }

    /// Clears bucket `b`'s bit unless the bucket holds a flow (`table::vacate`).
    fn vacate(&self, b: u32) {
        let (w, bit) = table::occupancy(b * WAYS);
        if let Some(word) = self.occupancy_word(w) {
            table::vacate(&mut View(self), b, word, bit);
        }
    }

    /// Word `w` of the occupancy bitmap, None past its end.
    fn occupancy_word(&self, w: u32) -> Option<*mut u64> {
        // SAFETY: in bounds of the mapping (checked).
        (w < table::occupancy_words(self.nbuckets))
            .then(|| unsafe { (self.occupied.ptr.as_ptr() as *mut u64).add(w as usize) })
    }

    /// Word `w` of the occupancy bitmap, read atomically (0 past its end).
    #[inline(always)]
    fn load_word(&self, w: u32) -> u64 {
        self.occupancy_word(w).map_or(0, |p| {
            // SAFETY: a word of the mapping, only ever accessed atomically.
            unsafe { std::sync::atomic::AtomicU64::from_ptr(p) }
                .load(std::sync::atomic::Ordering::Acquire)
        })
    }

    /// No slot of bucket `b` holds a flow (or is being filled).
    pub fn bucket_is_empty(&self, b: u32) -> bool {
        View(self).bucket(b).is_none_or(|p| {
            // SAFETY: a bucket of the mapping; tags are words, read whole.
            let tags = unsafe { std::ptr::read_volatile(p) }.tags;
            tags.iter().all(|&t| t == table::EMPTY)
        })
    }

    /// A consistent copy of slot `i`, if it holds a flow (None while the probe keeps it
    /// busy, which a bounded wait makes very rare).
    pub fn read(&self, i: u32) -> Option<(FlowKey, Flow)> {
        self.read_part(i, Part::Whole)
    }

    /// As `read`, of `part` of the slot.
    #[inline(always)]
    pub fn read_part(&self, i: u32, part: Part) -> Option<(FlowKey, Flow)> {
        let v = &mut View(self);
        if table::tag(v, i) <= table::RESERVED {
            return None;
        }
        let slot = v.slot(i)?;
        // SAFETY: a slot of the mapping, which lives as long as `self`.
        let copy = unsafe {
            match part {
                Part::Whole => table::read(slot)?,
                Part::Sweep => table::read_sweep(slot)?,
            }
        };
        // Freed while we copied.
        (table::tag(v, i) > table::RESERVED).then_some(copy)
    }

    /// Calls `f` on slot `i`'s flow under its lock if it still holds `key` and the
    /// lock is free now; None otherwise (busy or gone: the next sweep sees it again).
    /// `f` also says whether to free the slot, which then happens under the same lock:
    /// no packet can slip in between the decision and the eviction.
    pub fn with_locked<T>(
        &self,
        i: u32,
        key: &FlowKey,
        f: impl FnOnce(&mut Flow) -> (T, Free),
    ) -> Option<T> {
        let at = table::place(key, &self.seed, self.nbuckets);
        let v = &mut View(self);
        let slot = v.slot(i)?;
        // SAFETY: a slot of the mapping.
        let held = table::try_lock(unsafe { &mut (*slot).seq })?;
        // SAFETY: as above; locked, so the key is stable.
        let ours = table::tag(v, i) == at.tag && unsafe { (*slot).key == *key };
        let out = ours.then(|| {
            // SAFETY: as above.
            let (out, free) = f(unsafe { &mut (*slot).flow });
            if free == Free::Yes {
                table::free(v, i);
            }
            out
        });
        table::unlock(held);
        out
    }

    /// Inserts `flow` as the probe would move it from the pending table (benchmarks and
    /// tests fill tables this way); false when both of its buckets are full.
    pub fn insert(&self, key: &FlowKey, flow: &Flow) -> bool {
        let at = table::place(key, &self.seed, self.nbuckets);
        let v = &mut View(self);
        let Some((i, slot, held)) = table::claim(v, key, &at) else {
            return false;
        };
        // SAFETY: claimed and locked by us.
        unsafe { (*slot).flow = *flow };
        table::publish(v, i, &at);
        table::unlock(held);
        true
    }
}

/// Asks the CPU to start loading the `len` bytes at `p` into its caches (x86-64 only;
/// elsewhere nothing).
fn prefetch(p: *const u8, len: usize) {
    // Every line the bytes touch (slots are not line-aligned).
    #[cfg(target_arch = "x86_64")]
    for line in (0..(p as usize % 64 + len).div_ceil(64)).map(|l| l * 64) {
        let at = p.wrapping_sub(p as usize % 64).wrapping_add(line);
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at as *const i8)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}
