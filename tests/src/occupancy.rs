//! What the tests of the occupancy bitmap check on a flow table (`FlowTable::walk`
//! reads only the buckets whose bit is set).

use ackwatch::kernel::flow_table::{FlowTable, Part};
use ebpf_probe::abi::FlowKey;
use ebpf_probe::table::WAYS;

/// The keys of every slot holding a flow, read slot by slot without the bitmap, sorted.
pub fn every_slot(table: &FlowTable) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = (0..table.slots())
        .filter_map(|i| table.read(i).map(|(k, _)| k))
        .collect();
    keys.sort();
    keys
}

/// The keys a whole walk finds, in slices of `max` flows (the sweep's cursor), sorted.
pub fn walked(table: &FlowTable, max: usize) -> Vec<FlowKey> {
    let (mut cursor, mut keys) = (0, Vec::new());
    while !table.walk(&mut cursor, max, Part::Whole, |_, k, _| {
        keys.push(*k);
        true
    }) {}
    keys.sort();
    keys
}

/// Buckets holding a flow (or a slot being filled) whose bit is clear: the walk would
/// miss them.
pub fn unmarked(table: &FlowTable) -> Vec<u32> {
    (0..table.slots() / WAYS)
        .filter(|&b| !table.bucket_is_empty(b) && !table.occupied(b))
        .collect()
}

/// Empty buckets whose bit is set (the walk clears them lazily).
pub fn marked_empty(table: &FlowTable) -> Vec<u32> {
    (0..table.slots() / WAYS)
        .filter(|&b| table.bucket_is_empty(b) && table.occupied(b))
        .collect()
}

/// Every flow in a slot is found by a whole walk and by walks in slices of 1 and 3
/// flows, and no bucket that holds one lacks its bit. `what` names the table.
pub fn assert_walk_finds_every_flow(table: &FlowTable, what: &str) -> Vec<FlowKey> {
    assert_eq!(
        unmarked(table),
        Vec::<u32>::new(),
        "{what}: buckets without their bit"
    );
    let all = every_slot(table);
    for max in [usize::MAX, 1, 3] {
        assert_eq!(walked(table, max), all, "{what}: a walk in slices of {max}");
    }
    all
}
