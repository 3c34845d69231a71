//! Tables filled by hand: many flows that look like the probe's own entries, for the
//! benchmarks and for tests of the agent with a large table.

use std::time::{Duration, Instant};

use ackwatch::kernel::flow_table::FlowTable;
use ebpf_probe::abi::{Flow, FlowClass, FlowKey};

/// The key of filled flow `i`: distinct IPv4 clients (172.16/12) of one cTCP server.
pub fn key(i: u32) -> FlowKey {
    let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let mut key = FlowKey::default();
    key.addr[0] = [
        0,
        0,
        mapped,
        u32::from_ne_bytes([172, 16, 0, 0]) ^ i.to_be(),
    ];
    key.addr[1] = [0, 0, mapped, u32::from_ne_bytes([172, 31, 0, 1])];
    key.port = [40_000, 10_000];
    key
}

/// An active cTCP entry last seen at `now` (the probe's clock), so it does not age out.
pub fn flow(now: u64) -> Flow {
    let mut flow = Flow {
        class: FlowClass::Ctcp as u8,
        ..Flow::default()
    };
    flow.first_ts = now;
    flow.last_ts = now;
    flow
}

/// The flow table an agent pinned under `pin_root` (waits for the pin).
pub fn pinned_flows(pin_root: &str) -> FlowTable {
    let root = std::path::PathBuf::from(pin_root);
    let t = Instant::now();
    loop {
        let found = std::fs::read_dir(&root).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join("SEED").exists())
        });
        if let Some(dir) = found {
            return FlowTable::open_pinned(&dir).expect("open the pinned flow table");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no flow table pinned under {root:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Adds flows `from..to` (keys by `key`) to `table`, last seen now.
pub fn fill(table: &FlowTable, from: u32, to: u32) {
    let f = flow(ackwatch::flows::monotonic_now());
    for i in from..to {
        assert!(table.insert(&key(i), &f), "fill FLOWS: refused at {i}");
    }
}
