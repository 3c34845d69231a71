//! The probe's cost per packet with BPF_PROG_TEST_RUN: the XDP program against an
//! XDP_PASS program of the same object, same run, same CPU, for each kind of packet,
//! with the flow table pre-filled to several sizes.

use std::net::SocketAddr;

use ackwatch::kernel::probe::{MIRROR_PROGRAM, Mirror, Probe, Settings};
use ackwatch_tests::encap::{Tunnel, wrap};
use ackwatch_tests::frames::{L2, TH_ACK, TH_PSH, TH_SYN, Tcp, ctcp_payload, frame};
use ackwatch_tests::prefill;
use ebpf_probe::decap::TunnelPorts;

use crate::report::Figure;

/// Runs of BPF_PROG_TEST_RUN per measurement.
const REPEAT: u32 = 1_000_000;
/// Measurements per figure, alternating the program and XDP_PASS: the figure is the
/// median of the differences (this machine's noise moves both for seconds at a time).
const ROUNDS: usize = 5;
/// New flows measured one run each for the insert figures.
const INSERTS: u32 = 20_000;
/// Payload bytes of the data segments.
const SEGMENT: usize = 1000;
/// Initial RTT of the WAN client's flow (`in_order_segments_wan`).
const WAN_RTT: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Default)]
struct Seg<'a> {
    src: &'a str,
    dst: &'a str,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: Vec<u8>,
    sack: Vec<(u32, u32)>,
}

fn build(s: Seg) -> Vec<u8> {
    let addr = |a: &str| -> SocketAddr { a.parse().unwrap() };
    let timestamps = !s.sack.is_empty();
    let tcp = Tcp {
        seq: s.seq,
        ack: s.ack,
        flags: s.flags,
        window: 500,
        payload: s.payload,
        sack: s.sack,
        timestamps,
    };
    frame(addr(s.src), addr(s.dst), &tcp, &L2::Ethernet)
}

/// A UDP datagram: an IPv4 frame whose protocol says UDP (the probe reads no further).
fn udp(src: &str, dst: &str) -> Vec<u8> {
    let mut f = data(src, dst, 1, vec![0x5a; 1000]);
    f[14 + 9] = 17;
    f
}

fn data(src: &str, dst: &str, seq: u32, payload: Vec<u8>) -> Vec<u8> {
    build(Seg {
        src,
        dst,
        seq,
        ack: 1,
        flags: TH_ACK | TH_PSH,
        payload,
        ..Default::default()
    })
}

fn ack(src: &str, dst: &str, ack: u32) -> Vec<u8> {
    sack_ack(src, dst, ack, &[])
}

/// A pure ACK with SACK blocks (and then timestamps, as Linux sends them).
fn sack_ack(src: &str, dst: &str, ack: u32, sack: &[(u32, u32)]) -> Vec<u8> {
    build(Seg {
        src,
        dst,
        seq: 1,
        ack,
        flags: TH_ACK,
        sack: sack.to_vec(),
        ..Default::default()
    })
}

/// Pins this thread to CPU 0 (the test runs execute on the calling CPU).
pub fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; this thread's own affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Writes `n` flows, then as many more as fit if `fill` (until the table refuses).
pub fn prefill(probe: &mut Probe, n: u32, fill: bool) {
    let flow = prefill::flow(1);
    let mut i = 0;
    while i < n || fill {
        if !probe.table().insert(&prefill::key(i + 1), &flow) {
            assert!(fill, "prefill refused at {i} of {n}");
            return;
        }
        i += 1;
    }
}

fn ns(probe: &mut Probe, prog: &'static str, frame: &[u8], repeat: u32) -> f64 {
    probe
        .xdp_run_time(prog, frame, repeat)
        .expect("test run")
        .as_nanos() as f64
}

/// Program `prog`'s and XDP_PASS's ns per run on `frame`, of the round whose difference is
/// the median.
fn hot_loop(probe: &mut Probe, prog: &'static str, frame: &[u8]) -> (f64, f64) {
    median_pair(probe, (prog, frame), ("ackwatch_pass", frame))
}

/// Ns per run of program `a.0` on frame `a.1` and of `b.0` on `b.1`, measured in
/// alternation, of the round whose difference is the median.
fn median_pair(
    probe: &mut Probe,
    a: (&'static str, &[u8]),
    b: (&'static str, &[u8]),
) -> (f64, f64) {
    median_round(|_| {
        let second = ns(probe, b.0, b.1, REPEAT);
        (ns(probe, a.0, a.1, REPEAT), second)
    })
}

/// `ROUNDS` rounds of `round(r)`, a program's and its baseline's ns per run: the round
/// whose difference is the median (this machine's noise moves both for seconds).
fn median_round(round: impl FnMut(u32) -> (f64, f64)) -> (f64, f64) {
    let mut rounds: Vec<(f64, f64)> = (0..ROUNDS as u32).map(round).collect();
    rounds.sort_by(|x, y| (x.0 - x.1).total_cmp(&(y.0 - y.1)));
    rounds[ROUNDS / 2]
}

/// The mean of single runs over distinct frames (each a new flow), and of XDP_PASS
/// over the same frames.
fn per_frame(probe: &mut Probe, frames: &[Vec<u8>]) -> (f64, f64) {
    let (mut prog, mut pass) = (0.0, 0.0);
    for f in frames {
        pass += ns(probe, "ackwatch_pass", f, 1);
        prog += ns(probe, "ackwatch_xdp", f, 1);
    }
    (prog / frames.len() as f64, pass / frames.len() as f64)
}

fn new_flows(flags: u8, third_octet: u8) -> Vec<Vec<u8>> {
    (0..INSERTS)
        .map(|i| new_flow(flags, third_octet, i))
        .collect()
}

/// The first packet of new flow `i` from 10.`third_octet`/16.
fn new_flow(flags: u8, third_octet: u8, i: u32) -> Vec<u8> {
    let src = format!(
        "10.{third_octet}.{}.{}:{}",
        i / 250,
        i % 250 + 1,
        20_000 + i % 1000
    );
    let payload = if flags & TH_SYN != 0 {
        Vec::new()
    } else {
        vec![7; 200]
    };
    build(Seg {
        src: &src,
        dst: "10.0.0.2:10000",
        seq: 1,
        ack: if flags & TH_SYN != 0 { 0 } else { 1 },
        flags,
        payload,
        ..Default::default()
    })
}

/// Consecutive new segments of one flow from `client` (opened with a handshake of
/// `irtt` if given, so its out-of-order window is that long; else it is 3 ms), `REPEAT`
/// per round (`ackwatch_walk` moves the sequence number on by a segment each run): the
/// probe's and XDP_PASS's ns per run, of the round whose difference is the median:
/// the path of a flow moving data (one segment repeated is a retransmission each time).
fn in_order_walk(probe: &mut Probe, client: &str, irtt: Option<std::time::Duration>) -> (f64, f64) {
    let server = "10.0.0.2:10000";
    match irtt {
        Some(irtt) => establish_after_handshake(probe, "ackwatch_xdp", client, server, irtt),
        None => establish(probe, "ackwatch_xdp", client, server),
    }
    let len = SEGMENT as u32;
    let first = data(client, server, 1, ctcp_payload(SEGMENT));
    let seq_at = 14 + 4 * (first[14] & 0xf) as u32 + 4;
    // The walk adds a segment before each run: a round starts one segment back.
    let mut next = 1u32;
    median_round(|_| {
        let pass = walk_ns(probe, "ackwatch_pass", &first, [seq_at, len], REPEAT);
        let frame = data(client, server, next, ctcp_payload(SEGMENT));
        next = next.wrapping_add(REPEAT.wrapping_mul(len));
        (
            walk_ns(probe, "ackwatch_xdp", &frame, [seq_at, len], REPEAT),
            pass,
        )
    })
}

/// Where `ackwatch_walk` steps to a new flow: the IPv4 source address.
const SRC_AT: usize = 14 + 12;

/// New flows again, warm: `ROUNDS` rounds of `INSERTS / ROUNDS` runs, each run from a
/// new source address in 10.`net`/16 (`ackwatch_walk`), as in a flood. What the single
/// runs cost beyond this is their cold start. As `in_order_walk`, the round of the
/// median.
fn insert_walk(probe: &mut Probe, net: u8) -> (f64, f64) {
    let first = new_flow(TH_ACK | TH_PSH, net, 0);
    let runs = INSERTS / ROUNDS as u32;
    let step = [SRC_AT as u32, 1];
    median_round(|r| {
        let mut frame = first.clone();
        // Rounds apart by more than their runs: every run a flow never seen.
        let src = u32::from_be_bytes(frame[SRC_AT..SRC_AT + 4].try_into().unwrap());
        frame[SRC_AT..SRC_AT + 4].copy_from_slice(&(src + r * 2 * runs).to_be_bytes());
        let pass = walk_ns(probe, "ackwatch_pass", &frame, step, runs);
        (walk_ns(probe, "ackwatch_xdp", &frame, step, runs), pass)
    })
}

/// New flows from 10.`net`/16 until the pending table holds `capacity` flows, and a
/// thousand more (a new flow whose two buckets are full evicts before the table is).
fn fill_pending(probe: &mut Probe, capacity: u32, net: u8) {
    let room = capacity.saturating_sub(probe.table_fill()[1] as u32);
    let first = &new_flow(TH_ACK | TH_PSH, net, 0);
    walk_ns(
        probe,
        "ackwatch_xdp",
        first,
        [SRC_AT as u32, 1],
        room + 1_000,
    );
}

/// Ns per run of program `to` over `repeat` runs of `ackwatch_walk` from `frame`.
fn walk_ns(probe: &mut Probe, to: &'static str, frame: &[u8], step: [u32; 2], repeat: u32) -> f64 {
    probe
        .xdp_walk_time(to, frame, step, repeat)
        .expect("test run")
        .as_nanos() as f64
}

/// The client's first segment (`SEGMENT` bytes from sequence number 1) and the
/// server's ACK of it, through program `prog`.
fn establish(probe: &mut Probe, prog: &'static str, client: &str, server: &str) {
    for f in [
        data(client, server, 1, ctcp_payload(SEGMENT)),
        ack(server, client, 1 + SEGMENT as u32),
    ] {
        probe.xdp_run_time(prog, &f, 1).expect("establish");
    }
}

/// A handshake whose initial RTT is `irtt` (SYN, SYN-ACK, then the client's ACK), then
/// `establish`: a flow as a client across a WAN opens it.
fn establish_after_handshake(
    probe: &mut Probe,
    prog: &'static str,
    client: &str,
    server: &str,
    irtt: std::time::Duration,
) {
    let syn = |src, dst, flags, ack| {
        build(Seg {
            src,
            dst,
            seq: 0,
            ack,
            flags,
            ..Default::default()
        })
    };
    probe
        .xdp_run_time(prog, &syn(client, server, TH_SYN, 0), 1)
        .expect("SYN");
    probe
        .xdp_run_time(prog, &syn(server, client, TH_SYN | TH_ACK, 1), 1)
        .expect("SYN-ACK");
    std::thread::sleep(irtt);
    probe
        .xdp_run_time(prog, &ack(client, server, 1), 1)
        .expect("ACK");
    establish(probe, prog, client, server);
}

/// Every figure at one table size.
fn at_size(prefilled: u32, figures: &mut Vec<Figure>, zero: &mut Vec<(String, f64)>) {
    let mut probe = Probe::load(&Settings {
        max_flows: prefilled + INSERTS + 64,
        ..Settings::default()
    })
    .expect("load the probe");
    prefill(&mut probe, prefilled, false);
    let plain = vec![0x5a; 1000];
    // Established flows (both sides seen), as a tracked flow is: a one-sided flow stays
    // in the pending table, measured apart.
    for (client, server) in [
        ("10.0.0.1:40000", "10.0.0.2:10000"),
        ("[fd00::1]:40000", "[fd00::2]:10000"),
        ("10.0.0.1:40001", "10.0.0.2:10000"),
    ] {
        establish(&mut probe, "ackwatch_xdp", client, server);
    }
    // A flow with the client's data outstanding, so the server's ACKs below it repeat.
    probe
        .xdp_run_time(
            "ackwatch_xdp",
            &data("10.0.0.1:40003", "10.0.0.2:10000", 5000, plain.clone()),
            1,
        )
        .expect("prime");
    let mut arp = ack("10.0.0.1:40000", "10.0.0.2:10000", 1);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Targets: issue 12's.
    let cases: [(&str, Vec<u8>, Option<f64>); 9] = [
        ("non_ip", arp, Some(5.0)),
        ("udp", udp("10.0.0.1:40000", "10.0.0.2:4500"), Some(10.0)),
        (
            "tcp_out_of_scope",
            data("10.0.0.1:40000", "10.0.0.2:5201", 1, plain.clone()),
            Some(10.0),
        ),
        (
            "ipv4_data_tracked",
            data("10.0.0.1:40000", "10.0.0.2:10000", 1, ctcp_payload(SEGMENT)),
            Some(60.0),
        ),
        // A client whose server never answered (a spoofed flood's path).
        (
            "one_sided_data",
            data("10.0.0.1:40007", "10.0.0.2:10000", 1, ctcp_payload(SEGMENT)),
            None,
        ),
        (
            "ipv6_data_tracked",
            data(
                "[fd00::1]:40000",
                "[fd00::2]:10000",
                1,
                ctcp_payload(SEGMENT),
            ),
            Some(70.0),
        ),
        (
            "pure_ack",
            ack("10.0.0.2:10000", "10.0.0.1:40001", 1),
            Some(60.0),
        ),
        (
            "duplicate_ack",
            ack("10.0.0.2:10000", "10.0.0.1:40003", 1000),
            Some(60.0),
        ),
        (
            "sack_duplicate_ack",
            sack_ack("10.0.0.2:10000", "10.0.0.1:40003", 1000, &[(5000, 6000)]),
            Some(70.0),
        ),
    ];
    println!(
        "probe, {prefilled} flows (BPF_PROG_TEST_RUN, CPU 0, median of {ROUNDS} x {REPEAT} runs against XDP_PASS):"
    );
    for (name, frame, target) in &cases {
        let (t, pass) = hot_loop(&mut probe, "ackwatch_xdp", frame);
        push(figures, zero, prefilled, name, t, pass, *target);
    }
    // Consecutive new segments, warm: a round's runs move one flow on by a segment
    // each (`ackwatch_walk`), as a flow moving data does.
    let (t, p) = in_order_walk(&mut probe, "10.0.0.1:40005", None);
    push(
        figures,
        zero,
        prefilled,
        "in_order_segments",
        t,
        p,
        Some(60.0),
    );
    // A WAN client's flow: its out-of-order window (one initial RTT) is long enough
    // for the coarse clock.
    let (t, p) = in_order_walk(&mut probe, "10.0.0.1:40006", Some(WAN_RTT));
    push(
        figures,
        zero,
        prefilled,
        "in_order_segments_wan",
        t,
        p,
        Some(60.0),
    );
    // Single runs (a new flow each): slower than the hot loop for any program, as
    // caches are cold after the syscall, and noisier.
    let one_sided = new_flows(TH_ACK | TH_PSH, 1);
    let (t, p) = per_frame(&mut probe, &one_sided);
    push(
        figures,
        zero,
        prefilled,
        "insert_established",
        t,
        p,
        Some(300.0),
    );
    // The same flows again, each now found in the pending table: what visiting a flow
    // whose memory is cold costs without the insert, the floor under the figure above.
    let (t, p) = per_frame(&mut probe, &one_sided);
    push(figures, zero, prefilled, "cold_flow_found", t, p, None);
    let (t, p) = per_frame(&mut probe, &new_flows(TH_SYN, 2));
    push(
        figures,
        zero,
        prefilled,
        "insert_syn_pending",
        t,
        p,
        Some(300.0),
    );
    let (t, p) = insert_walk(&mut probe, 3);
    push(figures, zero, prefilled, "insert_warm", t, p, None);
    // A flood against a full pending table: every new flow takes the place of the
    // oldest of its ways (the live floods' 30,000 flows never fill it).
    fill_pending(&mut probe, Settings::default().max_pending, 5);
    let (t, p) = insert_walk(&mut probe, 8);
    push(figures, zero, prefilled, "insert_evicting", t, p, None);
    prefill(&mut probe, prefilled + INSERTS + 64, true);
    let refused = data("10.0.0.9:40009", "10.0.0.2:10000", 1, ctcp_payload(SEGMENT));
    let (t, pass) = hot_loop(&mut probe, "ackwatch_xdp", &refused);
    push(
        figures,
        zero,
        prefilled,
        "table_full_refused",
        t,
        pass,
        None,
    );
}

/// One figure: ns over XDP_PASS, printed with the ratio. At sizes above 0 the target is
/// twice the figure at 0 flows.
fn push(
    figures: &mut Vec<Figure>,
    zero: &mut Vec<(String, f64)>,
    prefilled: u32,
    name: &str,
    ns: f64,
    pass: f64,
    target: Option<f64>,
) {
    let added = ns - pass;
    let target = if prefilled == 0 {
        zero.push((name.to_string(), added));
        target
    } else {
        // Twice the figure at 0 flows; below 10 ns a figure is within the noise.
        zero.iter()
            .find(|(n, _)| n == name)
            .map(|(_, at0)| 2.0 * at0.max(10.0))
    };
    let mark = match target {
        Some(t) if added > t => format!("  MISSED target {t:.0}"),
        Some(t) => format!("  (target {t:.0})"),
        None => String::new(),
    };
    println!(
        "  {name:<20} {ns:7.1} ns per run, {added:6.1} ns over XDP_PASS ({:.2}x){mark}",
        ns / pass
    );
    figures.push(Figure {
        name: format!("probe_added_ns_{name}_{}", size_name(prefilled)),
        value: added,
        unit: "ns/packet",
        target,
    });
    figures.push(Figure {
        name: format!("probe_ratio_{name}_{}", size_name(prefilled)),
        value: ns / pass,
        unit: "ratio",
        target: None,
    });
}

pub fn size_name(n: u32) -> String {
    match n {
        0 => "0".into(),
        n if n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n => format!("{}k", n / 1000),
    }
}

/// Mirror ports: the mirror program on plain copies (a SPAN) and on VXLAN copies of
/// the same frames; decapsulation may add at most 10 ns, measured against the plain
/// copy in alternation (both vary with this machine's noise).
fn mirror(figures: &mut Vec<Figure>, zero: &mut Vec<(String, f64)>) {
    let mut probe = Probe::load(&Settings {
        mirror: Some(Mirror {
            ports: TunnelPorts::new(&[], &[]).expect("default ports"),
            drop: false,
        }),
        ..Settings::default()
    })
    .expect("load the probe");
    // An established flow, as for the inline figures.
    establish(
        &mut probe,
        MIRROR_PROGRAM,
        "10.0.0.1:40000",
        "10.0.0.2:10000",
    );
    println!("mirror program, plain and VXLAN copies of the same frames:");
    for (name, inner) in [
        (
            "tracked",
            data("10.0.0.1:40000", "10.0.0.2:10000", 1, ctcp_payload(SEGMENT)),
        ),
        (
            "out_of_scope",
            data("10.0.0.1:40000", "10.0.0.2:5201", 1, vec![0x5a; 1000]),
        ),
    ] {
        let (t, pass) = hot_loop(&mut probe, MIRROR_PROGRAM, &inner);
        push(
            figures,
            zero,
            0,
            &format!("mirror_plain_{name}"),
            t,
            pass,
            None,
        );
        let copy = wrap(&inner, &Tunnel::Vxlan { port: 4789 }, false, None);
        let (t, pass) = hot_loop(&mut probe, MIRROR_PROGRAM, &copy);
        push(
            figures,
            zero,
            0,
            &format!("mirror_vxlan_{name}"),
            t,
            pass,
            None,
        );
        let (vxlan, plain) = median_pair(
            &mut probe,
            (MIRROR_PROGRAM, &copy),
            (MIRROR_PROGRAM, &inner),
        );
        let added = vxlan - plain;
        let mark = if added > 10.0 {
            "MISSED target 10"
        } else {
            "(target 10)"
        };
        println!("  VXLAN decapsulation, {name}: {added:5.1} ns over the plain copy  {mark}");
        figures.push(Figure {
            name: format!("mirror_vxlan_decap_ns_{name}"),
            value: added,
            unit: "ns/packet",
            target: Some(10.0),
        });
    }
}

pub fn run(sizes: &[u32], figures: &mut Vec<Figure>) {
    pin_to_cpu0();
    let mut zero = Vec::new();
    for &n in sizes {
        at_size(n, figures, &mut zero);
    }
    mirror(figures, &mut zero);
}
