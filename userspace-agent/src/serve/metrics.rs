//! Prometheus metrics. Bounded labels only: hook, reason, class, state; a 5-tuple never
//! becomes a label. Kernel counters are mirrored at each sweep.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use ebpf_probe::abi::{FlowKey, StallRecord, StallWhat, counter};
use ebpf_probe::decap::ENCAP_NAMES;

use crate::flows::{class_name, endpoint};
use crate::kernel::probe::RunStats;

pub const CLASSES: [&str; 3] = ["ctcp", "rfc9329", "tcp"];
pub const STATES: [&str; 4] = ["active", "stalled", "recovered", "closed"];
/// The `hook` label's values: the probe's ingress (XDP) and egress (TC) programs.
const HOOKS: [&str; 2] = ["xdp", "tc"];

pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    untracked: IntCounterVec,
    mirror_frames: IntCounterVec,
    refused: IntCounterVec,
    events_lost: prometheus::IntCounter,
    stalls: IntCounterVec,
    recoveries: IntCounterVec,
    stall_seconds: Histogram,
    late_answers: IntCounterVec,
    late_answer_seconds: Histogram,
    /// Verdicts refused, or records dropped, because they came from an impossible
    /// state, by where it was caught: never expected.
    pub impossible: IntCounterVec,
    flows: IntGaugeVec,
    /// Entries of the flow table and of the pending table, as the probe counts them.
    entries: [IntGauge; 2],
    stalled_info: IntGaugeVec,
    /// Segments, duplicate ACKs, retransmissions, lost segments, ACKed-unseen, by class.
    flow_totals: [IntCounterVec; 5],
    /// Totals of flows already evicted, by class: added to the live ones.
    evicted: std::sync::Mutex<[[u64; 5]; 3]>,
    /// At most this many ackwatch_stalled_flow_info series at once.
    max_stalled_series: usize,
    /// The labels of each flow's ackwatch_stalled_flow_info series: a stall may end on
    /// another interface than it started on (a gateway sees each direction on one).
    stalled_series: std::sync::Mutex<std::collections::HashMap<FlowKey, [String; 4]>>,
    /// HTTP connections closed at accept: too many open at once.
    pub http_refused: prometheus::IntCounter,
    /// Flows the sweep removed (idle or closed).
    pub evictions: prometheus::IntCounter,
    /// Pending entries removed: by the probe for a new flow (full), by the sweep (idle).
    pub pending_evictions: IntCounterVec,
    /// How long the last sweep of the flow table took.
    pub sweep_seconds: prometheus::Gauge,
    pub alertmanager_errors: IntCounterVec,
    pub alerts_dropped: prometheus::IntCounter,
    /// Kernel counters at the last mirror, to add only what is new.
    last: std::sync::Mutex<Vec<u64>>,
    /// Runs of the probe's programs and their time, by hook, as the kernel counts them.
    probe_runs: IntCounterVec,
    probe_run_seconds: prometheus::CounterVec,
    /// Each program's runs and run time in ns at the last mirror, by program id.
    last_runs: std::sync::Mutex<std::collections::HashMap<u32, (u64, u64)>>,
}

/// A counter of integers (`IntCounterVec`) or of floats (`CounterVec`), registered,
/// with a series at 0 for each of `values`.
fn counter_vec<P: prometheus::core::Atomic + 'static>(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> prometheus::core::GenericCounterVec<P> {
    let c =
        prometheus::core::GenericCounterVec::new(Opts::new(name, help), &[label]).expect("metric");
    for v in values {
        c.with_label_values(&[v]); // start at 0 for every known value
    }
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

impl Metrics {
    /// `capacity`: of the flow table and of the pending table.
    pub fn new(capacity: [u32; 2], max_stalled_series: usize) -> Metrics {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("ackwatch_build_info", "ackwatch's version"),
            &["version"],
        )
        .unwrap();
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build)).unwrap();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap();
            r.register(Box::new(g.clone())).unwrap();
            g
        };
        let table = "Capacity of the flow table (established flows)";
        gauge("ackwatch_flow_table_capacity", table).set(capacity[0] as i64);
        let pending = "Capacity of the pending table (half-open and one-sided flows)";
        gauge("ackwatch_pending_table_capacity", pending).set(capacity[1] as i64);
        let entries = [
            gauge("ackwatch_flow_table_entries", "Flows in the flow table"),
            gauge(
                "ackwatch_pending_table_entries",
                "Half-open and one-sided flows in the pending table",
            ),
        ];
        let flows = IntGaugeVec::new(
            Opts::new("ackwatch_flows", "Flows by class and state"),
            &["class", "state"],
        )
        .unwrap();
        for c in CLASSES {
            for s in STATES {
                flows.with_label_values(&[c, s]);
            }
        }
        r.register(Box::new(flows.clone())).unwrap();
        let stall_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ackwatch_stall_duration_seconds",
                "How long ended or recovered stalls lasted, from the first duplicate ACK",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0]),
        )
        .unwrap();
        r.register(Box::new(stall_seconds.clone())).unwrap();
        let late_answer_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ackwatch_late_answer_seconds",
                "How long a hole waited, from the first duplicate ACK, for a retransmission \
                 that came after the stall timeout but before a stall was declared",
            )
            .buckets(vec![1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 15.0, 30.0]),
        )
        .unwrap();
        r.register(Box::new(late_answer_seconds.clone())).unwrap();
        let stalled_info = IntGaugeVec::new(
            Opts::new(
                "ackwatch_stalled_flow_info",
                "1 for each stalled flow, up to --max-stalled-series of them",
            ),
            &["client", "server", "class", "iface"],
        )
        .unwrap();
        r.register(Box::new(stalled_info.clone())).unwrap();
        let totals = [
            ("ackwatch_segments_total", "TCP segments of tracked flows"),
            (
                "ackwatch_dup_acks_total",
                "Duplicate ACKs (Wireshark's definition)",
            ),
            (
                "ackwatch_retransmissions_total",
                "Retransmissions of every kind",
            ),
            (
                "ackwatch_lost_segments_total",
                "Segments the probe never saw (previous segment not captured)",
            ),
            (
                "ackwatch_acked_unseen_total",
                "ACKs of data the probe never saw",
            ),
        ]
        .map(|(name, help)| counter_vec(&r, name, help, "class", &CLASSES));
        Metrics {
            flow_totals: totals,
            evicted: std::sync::Mutex::new([[0; 5]; 3]),
            stalled_info,
            max_stalled_series,
            stalled_series: Default::default(),
            packets: counter_vec(
                &r,
                "ackwatch_packets_total",
                "Packets seen by the probe",
                "hook",
                &HOOKS,
            ),
            untracked: counter_vec(
                &r,
                "ackwatch_untracked_packets_total",
                "Packets not tracked, by reason",
                "reason",
                &counter::REASON_NAMES,
            ),
            mirror_frames: counter_vec(
                &r,
                "ackwatch_mirror_frames_total",
                "Mirror-port copies whose frame was found, by encapsulation",
                "encap",
                &ENCAP_NAMES,
            ),
            refused: counter_vec(
                &r,
                "ackwatch_flow_table_refused_total",
                "New flows refused",
                "reason",
                &["table_full"],
            ),
            events_lost: plain_counter(
                &r,
                "ackwatch_events_lost_total",
                "Stall records lost: the ring buffer was full",
            ),
            stalls: counter_vec(
                &r,
                "ackwatch_stalls_total",
                "Stall episodes started",
                "class",
                &CLASSES,
            ),
            recoveries: counter_vec(
                &r,
                "ackwatch_stall_recoveries_total",
                "Stall episodes recovered",
                "class",
                &CLASSES,
            ),
            stall_seconds,
            late_answers: counter_vec(
                &r,
                "ackwatch_late_answers_total",
                "Holes answered by a retransmission after the stall timeout, before a stall \
                 was declared (a slow but healthy sender, not a stall)",
                "class",
                &CLASSES,
            ),
            late_answer_seconds,
            impossible: counter_vec(
                &r,
                "ackwatch_impossible_states_total",
                "Verdicts refused, or stall records dropped, because they came from an \
                 impossible state (a bug to report: never expected)",
                "source",
                &["probe", "sweep", "record"],
            ),
            flows,
            entries,
            http_refused: plain_counter(
                &r,
                "ackwatch_http_connections_refused_total",
                "HTTP connections closed at accept: 256 were open already",
            ),
            evictions: plain_counter(
                &r,
                "ackwatch_flows_evicted_total",
                "Flows removed from the table by the sweep (idle or closed)",
            ),
            pending_evictions: counter_vec(
                &r,
                "ackwatch_pending_evicted_total",
                "Half-open and one-sided flows removed from the pending table: by the probe \
                 for a new flow when the table was full (full), by the sweep (idle)",
                "reason",
                &["full", "idle"],
            ),
            sweep_seconds: {
                let g = prometheus::Gauge::new(
                    "ackwatch_sweep_duration_seconds",
                    "How long the last sweep of the flow table took",
                )
                .unwrap();
                r.register(Box::new(g.clone())).unwrap();
                g
            },
            alertmanager_errors: counter_vec(
                &r,
                "ackwatch_alertmanager_errors_total",
                "Pushes to an Alertmanager replica that failed after retries, by reason",
                "reason",
                &crate::serve::alerting::REASONS,
            ),
            alerts_dropped: plain_counter(
                &r,
                "ackwatch_alerts_dropped_total",
                "Alerts not queued for Alertmanager (queue full)",
            ),
            last: std::sync::Mutex::new(vec![0; counter::COUNT as usize]),
            probe_runs: counter_vec(
                &r,
                "ackwatch_probe_runs_total",
                "Runs of the probe's programs, as the kernel counts them: 0 unless it times \
                 BPF programs (--probe-stats, or sysctl kernel.bpf_stats_enabled=1)",
                "hook",
                &HOOKS,
            ),
            probe_run_seconds: counter_vec(
                &r,
                "ackwatch_probe_run_seconds_total",
                "Time spent in the probe's programs, as the kernel times them (with its own \
                 clock reads): 0 unless it does (see ackwatch_probe_runs_total)",
                "hook",
                &HOOKS,
            ),
            last_runs: Default::default(),
            registry: r,
        }
    }

    /// Counts a stall transition; `iface` is where the flow was last seen.
    pub fn on_record(&self, r: &StallRecord, iface: &str) {
        let class = class_name(r.class);
        let c = r.client as usize & 1;
        let (client, server) = (
            endpoint(&r.key, c).to_string(),
            endpoint(&r.key, c ^ 1).to_string(),
        );
        let mut series = self.stalled_series.lock().unwrap();
        match StallWhat::try_from(r.what) {
            Ok(StallWhat::Started) => {
                self.stalls.with_label_values(&[class]).inc();
                if series.len() < self.max_stalled_series && !series.contains_key(&r.key) {
                    let info = [client, server, class.to_string(), iface.to_string()];
                    self.stalled_info.with_label_values(&info).set(1);
                    series.insert(r.key, info);
                }
            }
            Ok(StallWhat::LateAnswer) => {
                self.late_answers.with_label_values(&[class]).inc();
                self.late_answer_seconds
                    .observe(r.at.saturating_sub(r.since) as f64 / 1e9);
            }
            Ok(StallWhat::Candidate) | Err(_) => {}
            Ok(what) => {
                // The series as it was set, wherever the flow was seen last.
                if let Some(info) = series.remove(&r.key) {
                    let _ = self.stalled_info.remove_label_values(&info);
                }
                if what == StallWhat::Recovered {
                    self.recoveries.with_label_values(&[class]).inc();
                }
                self.stall_seconds
                    .observe(r.at.saturating_sub(r.since) as f64 / 1e9);
            }
        }
    }

    /// Per-class flow totals: those of the evicted flows so far plus the live ones.
    pub fn refresh_totals(&self, live: &[[u64; 5]; 3], evicted: &[[u64; 5]; 3]) {
        let mut base = self.evicted.lock().unwrap();
        for (c, class) in CLASSES.iter().enumerate() {
            for (i, counter) in self.flow_totals.iter().enumerate() {
                base[c][i] += evicted[c][i];
                let c_ = counter.with_label_values(&[class]);
                c_.inc_by((base[c][i] + live[c][i]).saturating_sub(c_.get()));
            }
        }
    }

    /// Mirrors the probe's counters (`abi::counter`), the table's make-up, and the
    /// entries of the flow table and the pending table (`Probe::table_fill`).
    pub fn refresh(&self, counters: &[u64], flows: &[[i64; 4]; 3], entries: [u64; 2]) {
        let mut last = self.last.lock().unwrap();
        let full_before = last[counter::TABLE_FULL as usize];
        let mut add = |i: u32, c: &prometheus::IntCounter| {
            let (now, before) = (counters[i as usize], last[i as usize]);
            c.inc_by(now.saturating_sub(before));
            last[i as usize] = now;
        };
        add(
            counter::PACKETS_XDP,
            &self.packets.with_label_values(&["xdp"]),
        );
        add(
            counter::PACKETS_TC,
            &self.packets.with_label_values(&["tc"]),
        );
        for (i, name) in counter::REASON_NAMES.iter().enumerate() {
            add(i as u32, &self.untracked.with_label_values(&[name]));
        }
        for (i, name) in ENCAP_NAMES.iter().enumerate() {
            let c = self.mirror_frames.with_label_values(&[name]);
            add(counter::MIRROR_FRAMES + i as u32, &c);
        }
        let full = counters[counter::TABLE_FULL as usize].saturating_sub(full_before);
        self.refused.with_label_values(&["table_full"]).inc_by(full);
        add(counter::RINGBUF_FULL, &self.events_lost);
        add(
            counter::PENDING_EVICTIONS,
            &self.pending_evictions.with_label_values(&["full"]),
        );
        add(
            counter::IMPOSSIBLE_STATE,
            &self.impossible.with_label_values(&["probe"]),
        );
        for (c, class) in CLASSES.iter().enumerate() {
            for (s, state) in STATES.iter().enumerate() {
                self.flows
                    .with_label_values(&[class, state])
                    .set(flows[c][s]);
            }
        }
        for (gauge, n) in self.entries.iter().zip(entries) {
            gauge.set(n as i64);
        }
    }

    /// Mirrors the kernel's run counts and times of the probe's programs. A program's
    /// counts since the last mirror are added; a program loaded since then adds all of
    /// its own (a new program starts at 0), and one gone adds nothing more.
    pub fn refresh_runs(&self, stats: &[RunStats]) {
        let mut last = self.last_runs.lock().unwrap();
        let mut now = std::collections::HashMap::new();
        for s in stats {
            let ns = s.run_time.as_nanos() as u64;
            let (runs, before_ns) = last.get(&s.id).copied().unwrap_or((0, 0));
            let hook = [s.hook()];
            self.probe_runs
                .with_label_values(&hook)
                .inc_by(s.runs.saturating_sub(runs));
            self.probe_run_seconds
                .with_label_values(&hook)
                .inc_by(ns.saturating_sub(before_ns) as f64 / 1e9);
            now.insert(s.id, (s.runs, ns));
        }
        *last = now;
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encode metrics");
        String::from_utf8(out).expect("utf-8 metrics")
    }
}
