//! `ackwatch run`: load and attach the probe, print each stall transition as a JSON
//! line, sweep the table, serve /metrics, /healthz and /flows; detach on SIGINT or
//! SIGTERM.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::programs::xdp::XdpMode;
use ebpf_probe::abi::{FlowKey, StallRecord, StallWhat, event, half_flag};
use ebpf_probe::parse::LinkKind;
use ebpf_probe::verdict::Config;
use tokio::io::unix::AsyncFd;

use crate::cli::{RunArgs, XdpModeArg};
use crate::flows::{self, Episode};
use crate::kernel::caps;
use crate::kernel::pins::{PinError, Pins};
use crate::kernel::probe::{self, Mirror, Probe, ProbeError, Settings};
use crate::kernel::sweep::{LostStarts, Pass, Sweeper, stalled_sides};
use crate::serve::alerting::Alerter;
use crate::serve::events::event_json;
use crate::serve::metrics::Metrics;
use crate::serve::web_config::WebConfig;

/// Why `run` stopped before starting: bad input (exit 2) or a failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Failed(String),
}

/// What the tasks share.
pub struct Shared {
    pub probe: Mutex<Probe>,
    pub episodes: Mutex<HashMap<FlowKey, Vec<Episode>>>,
    /// Flows the probe named candidates since the last sweep.
    candidates: Mutex<std::collections::HashSet<FlowKey>>,
    pub metrics: Metrics,
    /// Wall clock minus the probe's monotonic clock.
    pub offset: u64,
    ifnames: HashMap<u32, String>,
    alerter: std::sync::OnceLock<Alerter>,
    /// TLS and basic auth of the HTTP side (--web-config-file).
    pub web: Option<Arc<WebConfig>>,
    pins: Pins,
    cfg: Config,
    /// Held while the kernel times BPF programs for us (--probe-stats).
    timing: Option<std::os::fd::OwnedFd>,
}

impl Shared {
    /// The probe's programs' run counts and times, while the kernel times them (ours,
    /// or `kernel.bpf_stats_enabled`); else None, without walking the host's programs.
    fn run_stats(&self, probe: &Probe) -> Result<Option<Vec<probe::RunStats>>, ProbeError> {
        let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled");
        if self.timing.is_none() && sysctl.is_ok_and(|v| v.trim() == "0") {
            return Ok(None);
        }
        probe.run_stats().map(Some)
    }

    /// After a restart: episodes already open in the pinned table were reported by the
    /// previous run. Remember them and fire their alerts again (Alertmanager merges
    /// them), but print and count nothing: no second stall_started. Candidates of the
    /// previous run are watched again.
    fn resume_open_stalls(&self) {
        let flows = self.probe.lock().unwrap().flows().unwrap_or_default();
        for (key, flow) in flows {
            if flow
                .half
                .iter()
                .any(|h| h.flags & half_flag::CANDIDATE != 0)
            {
                self.candidates.lock().unwrap().insert(key);
            }
            for rec in stalled_sides(&key, &flow, None) {
                let iface = self.iface(rec.ifindex);
                flows::apply(
                    self.episodes.lock().unwrap().entry(key).or_default(),
                    &rec,
                    self.offset,
                );
                if let Some(a) = self.alerter.get() {
                    a.record(&rec, iface, self.offset);
                }
            }
        }
    }

    /// Whether the agent holds an open episode for the stuck side of `r`.
    fn is_open(&self, r: &StallRecord) -> bool {
        self.episodes
            .lock()
            .unwrap()
            .get(&r.key)
            .is_some_and(|e| e.iter().any(|e| e.is_open() && e.stuck_index == r.stuck))
    }

    /// The receiver's ACKs of the stuck sender's data that the probe never saw (its
    /// ACKed-unseen count): on a mirror port, copies the mirror lost, so that an
    /// `unanswered` stall may rest on a retransmission it missed.
    fn unseen_segments(&self, r: &StallRecord) -> Option<u32> {
        let probe = self.probe.lock().unwrap();
        let table = probe.table();
        let (_, flow) = table.read(table.find(&r.key)?)?;
        Some(flow.half[(r.stuck as usize & 1) ^ 1].events[event::ACKED_UNSEEN])
    }

    /// The name of an attached interface.
    fn iface(&self, ifindex: u32) -> &str {
        self.ifnames
            .get(&ifindex)
            .map(String::as_str)
            .unwrap_or("unknown")
    }

    /// Prints, counts and remembers one stall transition; a candidate is only noted
    /// for the sweep to check, a late answer only counted. A record that no consistent
    /// state can produce is dropped and counted, never reported.
    fn record(&self, r: &StallRecord) {
        if r.what == StallWhat::Candidate as u8 {
            self.candidates.lock().unwrap().insert(r.key);
            return;
        }
        if !ebpf_probe::verdict::possible(r, &self.cfg) {
            self.metrics.impossible.with_label_values(&["record"]).inc();
            log::error!("dropped an impossible stall record (a bug, please report): {r:?}");
            return;
        }
        if r.what == StallWhat::LateAnswer as u8 {
            self.metrics.on_record(r, self.iface(r.ifindex));
            return;
        }
        let iface = self.iface(r.ifindex);
        let mut line = event_json(r, iface, self.offset);
        if let Some(n) = self.unseen_segments(r) {
            line["unseen_segments"] = n.into();
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        self.metrics.on_record(r, iface);
        if let Some(a) = self.alerter.get() {
            a.record(r, iface, self.offset);
        }
        flows::apply(
            self.episodes.lock().unwrap().entry(r.key).or_default(),
            r,
            self.offset,
        );
    }
}

/// Checks the input and the machine, loads and attaches the probe.
pub fn start(args: &RunArgs) -> Result<Arc<Shared>, RunError> {
    for i in &args.ifaces {
        if !caps::interface_exists(i) {
            return Err(RunError::Input(format!("unknown interface {i}")));
        }
    }
    // Files first: a bad one is named before anything is attached.
    let web = args
        .web_config_file
        .as_deref()
        .map(WebConfig::load)
        .transpose()
        .map_err(RunError::Input)?;
    let max_pending = (args.max_flows / 4).max(1024);
    let metrics = Metrics::new([args.max_flows, max_pending], args.max_stalled_series);
    let alerter = std::sync::OnceLock::new();
    if !args.alertmanager.urls.is_empty() {
        let (errors, dropped) = (
            metrics.alertmanager_errors.clone(),
            metrics.alerts_dropped.clone(),
        );
        let a = Alerter::new(&args.alertmanager, errors, dropped).map_err(RunError::Input)?;
        let _ = alerter.set(a);
    }
    let missing = caps::missing_capabilities();
    if !missing.is_empty() {
        return Err(RunError::Input(format!(
            "missing capabilities: {} (run as root, or grant them)",
            missing.join(", ")
        )));
    }
    // Before anything is attached: a refusal is named, and nothing is left behind.
    let timing = args
        .probe_stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .transpose()
        .map_err(|e| {
            RunError::Input(format!(
                "--probe-stats: the kernel refused to time BPF programs (it needs CAP_SYS_ADMIN): {e}"
            ))
        })?;
    let mirror = args
        .mirror
        .ports()
        .map_err(RunError::Input)?
        .map(|ports| Mirror {
            ports,
            drop: args.mirror_drop,
        });
    if mirror.is_some() {
        for i in &args.ifaces {
            if !matches!(crate::kernel::attach::link_kind(i), Ok(LinkKind::Ethernet)) {
                let why = format!("{i} is not an Ethernet interface: a mirror port must be");
                return Err(RunError::Input(why));
            }
        }
    }
    let mut settings = Settings {
        max_flows: args.max_flows,
        max_pending,
        verdict: args.verdict.config(),
        ctcp_ports: args.verdict.ctcp_ports.clone(),
        clock_from_map: false,
        pin_dir: None,
        event_ring_bytes: args.event_ring_kib * 1024,
        table_seed: None,
        mirror,
    };
    let pins = Pins::prepare(&args.pin_path, &settings).map_err(|e| match e {
        PinError::NotBpffs(_) | PinError::Busy(_) => RunError::Input(e.to_string()),
        PinError::Io(..) => RunError::Failed(e.to_string()),
    })?;
    settings.pin_dir = Some(pins.dir.clone());
    let mut probe = Probe::load(&settings).map_err(|e| RunError::Failed(e.to_string()))?;
    let mut ifnames = HashMap::new();
    for i in &args.ifaces {
        let failed = |e: ProbeError| {
            if e.is_busy() {
                RunError::Input(format!(
                    "{i} already has an XDP program (another ackwatch with another --pin-path, or another tool); ackwatch does not replace it"
                ))
            } else {
                RunError::Failed(format!("{i}: {e}"))
            }
        };
        let xdp_pin = pins.link("xdp", i);
        let mut attach = |mode| match mirror {
            Some(_) => probe.attach_mirror(i, mode, Some(&xdp_pin)),
            None => probe.attach_ingress(i, mode, Some(&xdp_pin)),
        };
        // auto: native where the driver has it, else generic; the log says which.
        let (fresh, mode) = match args.xdp_mode {
            XdpModeArg::Native => (attach(XdpMode::Driver), "native"),
            XdpModeArg::Generic => (attach(XdpMode::Skb), "generic"),
            XdpModeArg::Auto => match attach(XdpMode::Driver) {
                Err(e) if !e.is_busy() => (attach(XdpMode::Skb), "generic"),
                other => (other, "native"),
            },
        };
        let fresh = fresh.map_err(failed)?;
        let egress = !args.no_egress && mirror.is_none();
        if egress {
            probe
                .attach_egress(i, Some(&pins.link("tc", i)))
                .map_err(failed)?;
        }
        let how = if fresh {
            "attached"
        } else {
            "still attached (pinned by the previous run), kept"
        };
        let hooks = match (mirror, egress) {
            (Some(m), _) if m.drop => "mirror port (XDP), copies dropped after analysis",
            (Some(_), _) => "mirror port (XDP)",
            (None, false) => "XDP ingress",
            (None, true) => "XDP ingress, TC egress",
        };
        let mode = if fresh { mode } else { "as before" };
        log::info!("{i}: {how}: {hooks}, XDP {mode}");
        ifnames.insert(caps::ifindex(i), i.clone());
    }
    Ok(Arc::new(Shared {
        probe: Mutex::new(probe),
        episodes: Mutex::new(HashMap::new()),
        candidates: Mutex::new(Default::default()),
        metrics,
        offset: flows::monotonic_to_wall(),
        ifnames,
        alerter,
        web: web.map(Arc::new),
        pins,
        cfg: args.verdict.config(),
        timing,
    }))
}

/// Runs until SIGINT or SIGTERM; dropping the probe then detaches it.
pub async fn serve(shared: Arc<Shared>, args: &RunArgs) -> Result<(), RunError> {
    // Handlers first: once the port answers, a SIGTERM must detach cleanly, not kill.
    let signal = |kind| {
        tokio::signal::unix::signal(kind).map_err(|e| RunError::Failed(format!("signals: {e}")))
    };
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let ring = shared
        .probe
        .lock()
        .unwrap()
        .take_events()
        .map_err(|e| RunError::Failed(e.to_string()))?;
    // SAFETY: the AsyncFd owns the ring buffer, so its descriptor stays open while
    // registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| RunError::Failed(format!("ring buffer: {e}")))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| RunError::Input(format!("cannot listen on {}: {e}", args.listen)))?;
    let scheme = match shared.web.as_deref() {
        Some(w) if w.tls.is_some() => "https",
        _ => "http",
    };
    log::info!(
        "serving /metrics, /healthz and /flows on {scheme}://{}",
        args.listen
    );
    let http = tokio::spawn(crate::serve::http::serve(listener, shared.clone()));
    if let Some(a) = shared.alerter.get() {
        a.spawn();
    }
    shared.resume_open_stalls();

    let events = {
        let shared = shared.clone();
        async move {
            loop {
                let Ok(mut guard) = ring.readable_mut().await else {
                    return;
                };
                for r in probe::drain(guard.get_inner_mut()) {
                    shared.record(&r);
                }
                guard.clear_ready();
            }
        }
    };
    let sweeps = {
        let shared = shared.clone();
        let mut sweeper = Sweeper::new(
            args.verdict.config(),
            args.verdict.idle_timeout.as_nanos() as u64,
            args.max_flows as usize,
        );
        let mut lost_starts = LostStarts::default();
        let mut pass = Pass::default();
        let mut tick = tokio::time::interval(args.verdict.sweep_interval);
        // A sweep longer than the interval is followed by a full interval, not by
        // another sweep at once.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        async move {
            loop {
                tick.tick().await;
                // bpf(2) calls: on a blocking thread, so HTTP answers meanwhile.
                let walk = shared.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    sweeper
                        .watch
                        .extend(walk.candidates.lock().unwrap().drain());
                    let probe = walk.probe.lock().unwrap();
                    let ticked = sweeper.tick(&probe, flows::monotonic_now());
                    walk.metrics
                        .sweep_seconds
                        .set(started.elapsed().as_secs_f64());
                    let result = probe
                        .counters()
                        .and_then(|c| Ok((ticked, c, walk.run_stats(&probe)?, probe.table_fill())));
                    (sweeper, result)
                })
                .await;
                let Ok((back, result)) = done else {
                    return; // the runtime is shutting down
                };
                sweeper = back;
                match result {
                    Ok((t, counters, runs, fill)) => {
                        shared
                            .metrics
                            .impossible
                            .with_label_values(&["sweep"])
                            .inc_by(t.impossible);
                        for r in &t.records {
                            shared.record(r);
                        }
                        for r in lost_starts.check(&t, |r| shared.is_open(r)) {
                            log::warn!(
                                "a stall record was lost (ring buffer full): reporting it from the flow table"
                            );
                            shared.record(&r);
                        }
                        if let Some(p) = t.pass {
                            shared.metrics.refresh_totals(&p.live, &p.evicted);
                            pass = p;
                        }
                        shared.metrics.refresh(&counters, &pass.flows, fill);
                        if let Some(runs) = runs {
                            shared.metrics.refresh_runs(&runs);
                        }
                        shared.metrics.evictions.inc_by(t.evictions);
                        shared
                            .metrics
                            .pending_evictions
                            .with_label_values(&["idle"])
                            .inc_by(t.pending_evictions);
                    }
                    Err(e) => log::warn!("sweep: {e}"),
                }
            }
        }
    };
    // The probe's own log records (aya-log: one per stall transition), forwarded to
    // ours at our level. Polled: they are rare, and a poll needs no wakeup.
    if let Some(mut logger) = shared.probe.lock().unwrap().take_logger() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                logger.flush();
            }
        });
    }
    tokio::select! {
        _ = events => {}
        _ = sweeps => {}
        _ = int.recv() => log::info!("SIGINT: detaching"),
        _ = term.recv() => log::info!("SIGTERM: detaching"),
    }
    http.abort();
    if args.keep_attached {
        log::info!(
            "--keep-attached: the probe stays attached, pinned under {}",
            shared.pins.dir.display()
        );
    } else {
        shared.pins.remove();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}
