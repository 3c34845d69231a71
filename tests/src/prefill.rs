//! Tables filled by hand: many flows that look like the probe's own entries, for the
//! benchmarks and for tests of the agent with a large table.

use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
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

/// The FLOWS table an agent pinned under `pin_root` (waits for the pin).
pub fn pinned_flows(pin_root: &str) -> HashMap<MapData, FlowKey, Flow> {
    let root = std::path::PathBuf::from(pin_root);
    let t = Instant::now();
    loop {
        let found = std::fs::read_dir(&root).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("FLOWS"))
                .find(|p| p.exists())
        });
        if let Some(path) = found {
            let data = MapData::from_pin(&path).expect("open the pinned FLOWS");
            return HashMap::try_from(Map::HashMap(data)).expect("FLOWS is a hash map");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no FLOWS pin under {root:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Adds flows `from..to` (keys by `key`) to `table`, last seen now.
pub fn fill(table: &mut HashMap<MapData, FlowKey, Flow>, from: u32, to: u32) {
    let f = flow(ackwatch::flows::monotonic_now());
    for i in from..to {
        table.insert(key(i), f, 0).expect("fill FLOWS");
    }
}
