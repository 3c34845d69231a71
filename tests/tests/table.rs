//! The flow table in the kernel: half-open connections kept apart from established
//! ones, a full table refusing and counting, what is in scope, class and client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ackwatch::kernel::probe::Settings;
use ackwatch_tests::frames::{L2, TH_ACK, TH_PSH, TH_SYN, Tcp, ctcp_payload, frame};
use ackwatch_tests::harness::{Hook, Host, Kernel};
use ackwatch_tests::scenario::ctcp_flow;
use ebpf_probe::abi::{FlowClass, counter};
use ebpf_probe::parse::LinkKind;
use ebpf_probe::table::{self, Slots, WAYS};
use ebpf_probe::verdict::Config;

const XDP: Hook = Hook::Xdp(LinkKind::Ethernet);

fn addr(i: u32, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), port)
}

fn syn(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    frame(
        from,
        to,
        &Tcp {
            seq: 77,
            flags: TH_SYN,
            window: 1000,
            ..Default::default()
        },
        &L2::Ethernet,
    )
}

fn data(from: SocketAddr, to: SocketAddr, payload: Vec<u8>) -> Vec<u8> {
    frame(
        from,
        to,
        &Tcp {
            seq: 100,
            ack: 200,
            flags: TH_ACK | TH_PSH,
            window: 500,
            payload,
            ..Default::default()
        },
        &L2::Ethernet,
    )
}

#[test]
fn syn_flood_leaves_established_flows_alone() {
    let settings = Settings {
        max_flows: 64,
        max_pending: 256,
        ..Settings::default()
    };
    let mut k = Kernel::load(settings);
    let server = "198.51.100.1:10000".parse().unwrap();
    for i in 0..10 {
        for s in ctcp_flow(addr(1000 + i, 40_000), server, 5, None, 0) {
            k.feed(s.hook, &s.frame, s.at_ns);
        }
    }
    let before = k.snapshot().flows;
    assert_eq!(before.len(), 10);
    // 20,000 SYNs from spoofed sources to the cTCP port.
    for i in 0..20_000 {
        k.feed(
            XDP,
            &syn(addr(100_000 + i, 1024 + (i % 60_000) as u16), server),
            5_000_000_000,
        );
    }
    let after = k.snapshot();
    assert_eq!(
        after.flows, before,
        "established flows keep their entries and state"
    );
    assert!(
        after.pending.len() <= 256,
        "the pending table holds {} > its capacity",
        after.pending.len()
    );
    assert_eq!(
        after.counters[counter::PENDING_INSERTS as usize],
        10 + 20_000
    );
    assert_eq!(after.counters[counter::TABLE_FULL as usize], 0);
}

/// A kernel and a host with `settings`, both fed `flows` cTCP conversations of
/// `segments` segments each, from clients `first..`.
fn kernel_and_host(settings: Settings, first: u32, flows: u32, segments: u32) -> (Kernel, Host) {
    let mut k = Kernel::load(settings.clone());
    let mut h = Host::new(settings);
    let server = "198.51.100.1:10000".parse().unwrap();
    for i in first..first + flows {
        for s in ctcp_flow(addr(i, 40_000), server, segments, None, 0) {
            k.feed(s.hook, &s.frame, s.at_ns);
            h.feed(s.hook, &s.frame, s.at_ns);
        }
    }
    (k, h)
}

#[test]
fn full_table_refuses_new_flows_and_counts_them() {
    let settings = Settings {
        max_flows: 4,
        ..Settings::default()
    };
    let (k, h) = kernel_and_host(settings, 2000, 6, 3);
    let snap = k.snapshot();
    assert_eq!(snap.flows.len(), 4);
    // Flows 5 and 6 stay half open: every later packet of theirs is refused.
    assert!(snap.counters[counter::TABLE_FULL as usize] >= 2);
    assert_eq!(
        snap,
        h.snapshot(),
        "kernel and host agree on what was refused"
    );
}

#[test]
fn scope_class_and_client() {
    let mut k = Kernel::load(Settings::default());
    let (c, other, sig_srv) = (addr(1, 45_000), addr(2, 5201), addr(3, 8443));
    // Plain TCP on another port: not tracked.
    k.feed(XDP, &data(c, other, vec![1; 100]), 1_000_000_000);
    assert_eq!(k.snapshot().counters[counter::OUT_OF_SCOPE as usize], 1);
    assert!(k.snapshot().flows.is_empty());
    // cTCP on 8443, recognized by its trailer; its pure ACKs are looked up too.
    k.feed(XDP, &data(c, sig_srv, ctcp_payload(200)), 1_000_000_000);
    let ack = frame(
        sig_srv,
        c,
        &Tcp {
            seq: 200,
            ack: 300,
            flags: TH_ACK,
            window: 500,
            ..Default::default()
        },
        &L2::Ethernet,
    );
    k.feed(Hook::Tc(LinkKind::Ethernet), &ack, 1_001_000_000);
    let snap = k.snapshot();
    assert_eq!(snap.flows.len(), 1);
    let (key, flow) = &snap.flows[0];
    assert_eq!(flow.class, FlowClass::Ctcp as u8);
    assert_eq!(
        flow.half[0].packets + flow.half[1].packets,
        2,
        "the ACK was tracked"
    );
    assert_eq!(
        key.port[flow.client as usize], 45_000,
        "the side not on the server port is the client"
    );
    // Another plain flow on 8443 is looked up and not created.
    k.feed(
        XDP,
        &data(addr(9, 46_000), sig_srv, vec![0; 100]),
        1_002_000_000,
    );
    assert_eq!(k.snapshot().flows.len(), 1);
    assert_eq!(k.snapshot().counters[counter::OUT_OF_SCOPE as usize], 2);

    // Tracking all TCP: plain TCP and RFC 9329 streams are tracked and labelled.
    let all = Settings {
        verdict: Config {
            track_all: true,
            ..Config::default()
        },
        ..Settings::default()
    };
    let mut k = Kernel::load(all);
    k.feed(XDP, &data(c, other, vec![1; 100]), 1_000_000_000);
    k.feed(
        XDP,
        &data(
            addr(4, 40_000),
            addr(5, 4500),
            b"IKETCP\x00\x20rest-of-ike".to_vec(),
        ),
        1_000_000_000,
    );
    // Each seen from one side only: tracked in the pending table.
    let classes: Vec<u8> = k.snapshot().pending.iter().map(|(_, f)| f.class).collect();
    assert_eq!(classes.len(), 2);
    assert!(
        classes.contains(&(FlowClass::Tcp as u8)) && classes.contains(&(FlowClass::Rfc9329 as u8)),
        "{classes:?}"
    );
}

/// On a cTCP port the probe reads only the payload's first bytes: `IKETCP` still opens
/// an RFC 9329 stream there, and a TCP flow that began before its port was made a cTCP
/// port (tracking all TCP) is cTCP from its next packet, as a new flow there would be.
/// The host takes the same steps.
#[test]
fn class_on_a_ctcp_port() {
    let all = Settings {
        verdict: Config {
            track_all: true,
            ..Config::default()
        },
        ..Settings::default()
    };
    let mut k = Kernel::load(all.clone());
    let mut h = Host::new(all);
    let (early, late) = (addr(7, 41_000), addr(8, 42_000));
    let steps = [
        (data(early, addr(6, 7000), vec![1; 100]), false),
        (data(early, addr(6, 7000), vec![1; 100]), true),
        (
            data(late, addr(5, 10_000), b"IKETCP\x00\x20rest-of-ike".to_vec()),
            true,
        ),
    ];
    let mut marked = false;
    for (i, (frame, on_port)) in steps.iter().enumerate() {
        if *on_port && !marked {
            k.probe
                .set_port_flags(7000, ebpf_probe::abi::port_flag::CTCP)
                .expect("mark port 7000");
            h.store.ports[7000] |= ebpf_probe::abi::port_flag::CTCP;
            marked = true;
        }
        let t = 1_000_000_000 + i as u64 * 1_000_000;
        k.feed(XDP, frame, t);
        h.feed(XDP, frame, t);
    }
    let class_of = |flows: &[(ebpf_probe::abi::FlowKey, ebpf_probe::abi::Flow)], port: u16| {
        flows
            .iter()
            .find(|(key, _)| key.port.contains(&port))
            .map(|(_, f)| f.class)
    };
    let pending = k.snapshot().pending;
    assert_eq!(class_of(&pending, 7000), Some(FlowClass::Ctcp as u8));
    assert_eq!(class_of(&pending, 10_000), Some(FlowClass::Rfc9329 as u8));
    assert_eq!(k.snapshot(), h.snapshot(), "kernel and host agree");
}

/// The key the probe gives a frame's flow.
fn key_of(frame: &[u8]) -> ebpf_probe::abi::FlowKey {
    ebpf_probe::parse::parse(&frame, LinkKind::Ethernet)
        .expect("a TCP frame")
        .key
}

/// A pending table that fills up gives the new flow the place of the oldest entry of
/// its ways, counts it, and never touches an established flow; the kernel and the host
/// do exactly the same (same table code, same seed).
#[test]
fn full_pending_table_evicts_the_oldest_in_kernel_and_host() {
    let settings = Settings {
        max_flows: 64,
        max_pending: 64,
        ..Settings::default()
    };
    let (mut k, mut h) = kernel_and_host(settings, 1000, 10, 5);
    let server = "198.51.100.1:10000".parse().unwrap();
    let before = k.snapshot().flows;
    assert_eq!(before.len(), 10);
    // 2,000 SYNs from spoofed sources, one a microsecond: each newer than the last.
    const SYNS: u32 = 2_000;
    let syns: Vec<Vec<u8>> = (0..SYNS)
        .map(|i| syn(addr(100_000 + i, 1024 + i as u16), server))
        .collect();
    for (i, f) in syns.iter().enumerate() {
        let at = 5_000_000_000 + i as u64 * 1_000;
        k.feed(XDP, f, at);
        h.feed(XDP, f, at);
    }
    let (ks, hs) = (k.snapshot(), h.snapshot());
    assert_eq!(ks, hs, "kernel and host hold and count the same");
    assert_eq!(
        ks.flows, before,
        "established flows keep their entries and state"
    );
    let c = |i: u32| ks.counters[i as usize];
    let held = ks.pending.len() as u64;
    assert!(
        (48..=64).contains(&held),
        "the pending table holds {held} of its 64"
    );
    assert_eq!(c(counter::PENDING_INSERTS), 10 + SYNS as u64);
    // Each SYN took a free slot or an entry's place; none was refused.
    assert_eq!(c(counter::TABLE_FULL) + c(counter::FLOW_BUSY), 0);
    assert_eq!(c(counter::PENDING_EVICTIONS), SYNS as u64 - held);
    // The newest flows are all there, the oldest are gone.
    let pending: Vec<_> = ks.pending.iter().map(|(key, _)| *key).collect();
    assert!(pending.contains(&key_of(&syns[SYNS as usize - 1])));
    assert!(!pending.contains(&key_of(&syns[0])));
    // Nothing old survives: a new flow takes the oldest of its ways, by their ages
    // (none older than the last 137 SYNs in 300 tables of other seeds; the first way
    // instead, as with ages never written, keeps SYNs from the flood's start).
    let newest: Vec<_> = syns[SYNS as usize - 400..]
        .iter()
        .map(|f| key_of(f))
        .collect();
    for key in &pending {
        assert!(newest.contains(key), "{key:?} survived 400 newer SYNs");
    }
    // And the ages are the flows' last times (the host's, which the kernel's match).
    let t = &mut h.store.pending;
    for idx in 0..t.buckets() * WAYS {
        if table::tag(t, idx) > table::RESERVED {
            let (slot, ages) = (t.slot(idx).unwrap(), t.ages(idx / WAYS).unwrap());
            // SAFETY: the host table's own memory, not shared.
            let (last, age) =
                unsafe { ((*slot).flow.last_ts, (*ages).last_ts[(idx % WAYS) as usize]) };
            assert_eq!(age, last, "slot {idx}: age against last seen");
        }
    }
    // Found by the agent through its mapping of the pending table, as by the walk.
    for key in &pending {
        assert!(k.probe.pending_table().find(key).is_some());
    }
    // An evicted SYN's flow starts over with its next packet.
    k.feed(XDP, &syns[0], 6_000_000_000);
    h.feed(XDP, &syns[0], 6_000_000_000);
    let ks = k.snapshot();
    assert!(ks.pending.iter().any(|(key, _)| *key == key_of(&syns[0])));
    assert_eq!(ks, h.snapshot());
}

/// Pending entries stay until the sweep finds them idle (nothing evicts them by
/// age in the kernel): then it evicts them under their locks.
#[test]
fn the_sweep_evicts_idle_pending_entries() {
    use ackwatch::kernel::sweep::sweep;
    let mut k = Kernel::load(Settings::default());
    let server: SocketAddr = "198.51.100.1:10000".parse().unwrap();
    let (quiet, busy) = (syn(addr(1, 40_000), server), syn(addr(2, 40_000), server));
    const SEC: u64 = 1_000_000_000;
    const IDLE: u64 = 60 * SEC;
    k.feed(XDP, &quiet, SEC);
    k.feed(XDP, &busy, SEC);
    k.feed(XDP, &busy, 30 * SEC);
    assert_eq!(k.snapshot().pending.len(), 2);
    let cfg = Config::default();
    let (tick, _) = sweep(&k.probe, &cfg, IDLE, SEC + IDLE - 1);
    assert_eq!(tick.pending_evictions, 0, "not idle yet");
    assert_eq!(k.snapshot().pending.len(), 2);
    let (tick, _) = sweep(&k.probe, &cfg, IDLE, SEC + IDLE);
    assert_eq!(tick.pending_evictions, 1);
    let left: Vec<_> = k.snapshot().pending.iter().map(|(key, _)| *key).collect();
    assert_eq!(left, vec![key_of(&busy)]);
    // A pending entry the probe holds is left for the next sweep.
    let table = k.probe.pending_table();
    let i = table.find(&key_of(&busy)).expect("pending");
    let evicted = table.with_locked(i, &key_of(&busy), |_| {
        let (tick, _) = sweep(&k.probe, &cfg, IDLE, 30 * SEC + IDLE);
        (
            tick.pending_evictions,
            ackwatch::kernel::flow_table::Free::No,
        )
    });
    assert_eq!(evicted, Some(0), "busy: not waited for");
    let (tick, _) = sweep(&k.probe, &cfg, IDLE, 30 * SEC + IDLE);
    assert_eq!(tick.pending_evictions, 1);
    assert!(k.snapshot().pending.is_empty());
    // The freed slots take new flows.
    k.feed(XDP, &quiet, 100 * SEC);
    assert_eq!(k.snapshot().pending.len(), 1);
}

/// The pending table is pinned with the established one: a probe loaded again on the
/// same pins (an agent's restart) finds the half-open flows the last one left.
#[test]
fn pending_entries_survive_a_reload_from_pins() {
    use ackwatch_tests::live::BpfFs;
    let bpffs = BpfFs::mount();
    let dir = std::path::PathBuf::from(bpffs.pin_path());
    std::fs::create_dir_all(&dir).unwrap();
    let settings = Settings {
        pin_dir: Some(dir.clone()),
        max_pending: 1024,
        ..Settings::default()
    };
    let server: SocketAddr = "198.51.100.1:10000".parse().unwrap();
    let first = syn(addr(7, 40_000), server);
    let pending = {
        let mut k = Kernel::load(settings.clone());
        k.feed(XDP, &first, 1_000_000_000);
        k.snapshot().pending
    };
    assert_eq!(pending.len(), 1);
    let mut k = Kernel::load(settings);
    assert_eq!(
        k.snapshot().pending,
        pending,
        "the pending flow is still there"
    );
    // And it goes on from there: the server's answer completes the handshake.
    let mut synack = syn(server, addr(7, 40_000));
    // Its ACK flag (byte 13 of the TCP header, after 14 of Ethernet and 20 of IPv4).
    synack[14 + 20 + 13] |= TH_ACK;
    k.feed(Hook::Tc(LinkKind::Ethernet), &synack, 1_001_000_000);
    let snap = k.snapshot();
    assert_eq!(snap.pending.len(), 1);
    assert_eq!(
        snap.pending[0].1.half[0].packets + snap.pending[0].1.half[1].packets,
        2
    );
    for name in ackwatch::kernel::pins::PINNED_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// The agent's walk reads only the buckets the occupancy bitmap marks: the probe sets a
/// bucket's bit when it publishes a slot there, and the walk clears it once it finds
/// the bucket empty. Flows inserted by the probe (both tables, 24 and 12 buckets),
/// evicted by the agent's sweep, then new flows inserted into the same buckets: every
/// walk finds exactly the flows in the slots, whole or in slices, and a bucket the
/// eviction emptied keeps its bit until the next walk, then loses it.
#[test]
fn the_walk_finds_every_flow_through_the_occupancy_bitmap() {
    use ackwatch::kernel::sweep::sweep;
    use ackwatch_tests::occupancy::{assert_walk_finds_every_flow, marked_empty, walked};
    const SEC: u64 = 1_000_000_000;
    let mut k = Kernel::load(Settings {
        max_flows: 128,
        max_pending: 64,
        ..Settings::default()
    });
    let server: SocketAddr = "198.51.100.1:10000".parse().unwrap();
    let conversation = |i: u32| ctcp_flow(addr(3000 + i, 40_000), server, 2, None, 0);
    let half_open = |i: u32| syn(addr(5000 + i, 41_000), server);
    // `n` flows of each kind from `first` on, at `at` (ctcp_flow starts at 1 s).
    let insert = |k: &mut Kernel, first: u32, n: u32, at: u64| {
        for i in first..first + n {
            for s in conversation(i) {
                k.feed(s.hook, &s.frame, s.at_ns - SEC + at);
            }
            k.feed(XDP, &half_open(i), at);
        }
    };
    let check = |k: &Kernel, flows: usize, pending: usize| {
        let est = assert_walk_finds_every_flow(k.probe.table(), "established");
        let pen = assert_walk_finds_every_flow(k.probe.pending_table(), "pending");
        assert_eq!((est.len(), pen.len()), (flows, pending));
        (est, pen)
    };
    insert(&mut k, 0, 40, SEC);
    check(&k, 40, 40);
    // Four of each stay busy; the sweep evicts the others.
    for i in 0..4 {
        let last = conversation(i).pop().unwrap();
        k.feed(last.hook, &last.frame, 50 * SEC);
        k.feed(XDP, &half_open(i), 50 * SEC);
    }
    let (tick, _) = sweep(&k.probe, &Config::default(), 30 * SEC, 50 * SEC);
    assert_eq!((tick.evictions, tick.pending_evictions), (36, 36));
    // The sweep walked before it evicted: the buckets it emptied still have their bits.
    let emptied = marked_empty(k.probe.table());
    let pending_emptied = marked_empty(k.probe.pending_table());
    assert!(
        !emptied.is_empty() && !pending_emptied.is_empty(),
        "the eviction emptied no bucket of a table"
    );
    let (est, pen) = check(&k, 4, 4);
    // ... which the walks of `check` cleared.
    for (table, emptied) in [
        (k.probe.table(), emptied),
        (k.probe.pending_table(), pending_emptied),
    ] {
        assert_eq!(marked_empty(table), Vec::<u32>::new());
        assert!(emptied.iter().all(|&b| !table.occupied(b)));
    }
    // New flows in the same buckets, their bits cleared or not.
    insert(&mut k, 100, 40, 60 * SEC);
    let (est2, pen2) = check(&k, 44, 44);
    assert!(est.iter().all(|key| est2.contains(key)));
    assert!(pen.iter().all(|key| pen2.contains(key)));
    // The agent's own inserts (tests, benchmarks) mark their buckets too.
    let table = k.probe.table();
    let flow = ackwatch_tests::prefill::flow(60 * SEC);
    for i in 0..20 {
        assert!(table.insert(&ackwatch_tests::prefill::key(i), &flow));
    }
    assert_eq!(walked(table, usize::MAX).len(), 64);
    check(&k, 64, 44);
}
