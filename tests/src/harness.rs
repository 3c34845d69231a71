//! The same packets through the real loaded BPF programs (BPF_PROG_TEST_RUN) and
//! through the host's copy of the state machine, with one clock for both.

use std::time::Duration;

use ackwatch::kernel::probe::{Probe, ProbeError, Settings};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};
use aya_obj::programs::XdpAttachType;
use ebpf_probe::abi::{Flow, FlowKey, StallRecord, counter};
use ebpf_probe::host::HostStore;
use ebpf_probe::parse::LinkKind;
use ebpf_probe::table::Seed;
use ebpf_probe::tracker::Store;

/// Where a frame enters the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp(LinkKind),
    Tc(LinkKind),
}

impl Hook {
    fn counter(self) -> u32 {
        match self {
            Hook::Xdp(_) => counter::PACKETS_XDP,
            Hook::Tc(_) => counter::PACKETS_TC,
        }
    }
    fn link(self) -> LinkKind {
        match self {
            Hook::Xdp(l) | Hook::Tc(l) => l,
        }
    }
}

/// The flow table's hash key in the kernel and host trackers compared: one key, so
/// both refuse the same flows when a table fills.
pub const TEST_SEED: Seed = Seed {
    words: [
        0x9e37_79b9,
        0x7f4a_7c15,
        0xbf58_476d,
        0x1ce4_e5b9,
        0x94d0_49bb,
        0x1331_11eb,
        0x2545_f491,
        0x4f6c_dd1d,
        0x6a09_e667,
        0xbb67_ae85,
    ],
};

/// BPF_PROG_TEST_RUN gives both program types the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Everything a tracker holds after a run, for comparison.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub flows: Vec<(FlowKey, Flow)>,
    pub pending: Vec<(FlowKey, Flow)>,
    pub counters: Vec<u64>,
}

/// The probe loaded with the map clock, fed through BPF_PROG_TEST_RUN.
pub struct Kernel {
    pub probe: Probe,
    /// The probe reads the time from its map (`feed` sets it), not the kernel's clocks.
    map_clock: bool,
}

impl Kernel {
    pub fn load(mut settings: Settings) -> Self {
        settings.clock_from_map = true;
        Self::load_as_is(settings)
    }

    /// The probe with the kernel's clock (the coarse and precise clocks), for tests in
    /// which time must pass by itself: `feed`'s time is then ignored.
    pub fn load_with_kernel_clock(mut settings: Settings) -> Self {
        settings.clock_from_map = false;
        Self::load_as_is(settings)
    }

    fn load_as_is(mut settings: Settings) -> Self {
        settings.table_seed.get_or_insert(TEST_SEED);
        let probe = Probe::load(&settings).unwrap_or_else(|e| panic!("loading the probe: {e}"));
        Kernel {
            probe,
            map_clock: settings.clock_from_map,
        }
    }

    /// Runs one frame at time `now_ns`; returns the program's verdict.
    pub fn feed(&mut self, hook: Hook, frame: &[u8], now_ns: u64) -> u32 {
        self.try_feed(hook, frame, now_ns)
            .unwrap_or_else(|e| panic!("test run of {} byte frame on {hook:?}: {e}", frame.len()))
    }

    /// As `feed`, but returns the kernel's refusal: BPF_PROG_TEST_RUN for TC programs
    /// rejects some frames (EINVAL) before the program runs, for example an IPv4
    /// ethertype without a whole IPv4 header.
    pub fn try_feed(&mut self, hook: Hook, frame: &[u8], now_ns: u64) -> Result<u32, String> {
        self.set_clock(now_ns);
        match hook {
            Hook::Xdp(l) => test_run(self.probe.xdp(l).expect("xdp program"), frame, 1),
            Hook::Tc(l) => test_run(self.probe.tc(l).expect("tc program"), frame, 1),
        }
    }

    /// Runs one frame through the mirror program at time `now_ns`; returns its verdict.
    pub fn feed_mirror(&mut self, frame: &[u8], now_ns: u64) -> u32 {
        self.set_clock(now_ns);
        let prog = self.probe.xdp_mirror().expect("mirror program");
        test_run(prog, frame, 1)
            .unwrap_or_else(|e| panic!("test run of {} byte copy: {e}", frame.len()))
    }

    /// Sets the map's time; with the kernel's clocks, leaves their calibration alone.
    fn set_clock(&mut self, now_ns: u64) {
        if self.map_clock {
            self.probe
                .set_clock(Duration::from_nanos(now_ns))
                .expect("set clock");
        }
    }

    /// The program of `hook` as a handle of its own (a second descriptor of the same
    /// loaded program, same maps), which another thread can run while this one reads
    /// the maps.
    pub fn runner(&mut self, hook: Hook) -> Runner {
        let fail = |e: &dyn std::fmt::Display| -> ! { panic!("a handle of {hook:?}: {e}") };
        match hook {
            Hook::Xdp(l) => xdp_runner(self.probe.xdp(l), &format!("{hook:?}")),
            Hook::Tc(l) => {
                let prog = self.probe.tc(l).unwrap_or_else(|e| fail(&e));
                let info = prog.info().unwrap_or_else(|e| fail(&e));
                let prog = SchedClassifier::from_program_info(info, "runner".into());
                Runner::Tc(prog.unwrap_or_else(|e| fail(&e)))
            }
        }
    }

    /// A handle of `ackwatch_walk` going on to the XDP program for Ethernet links
    /// (`Probe::xdp_walk`), for runs from several threads.
    pub fn walk_runner(&mut self, step: [u32; 2]) -> Runner {
        let to = ackwatch::kernel::probe::xdp_program(LinkKind::Ethernet);
        xdp_runner(self.probe.xdp_walk(to, step), "the walk")
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut flows = self.probe.flows().expect("read FLOWS");
        let mut pending = self.probe.pending().expect("read PENDING");
        flows.sort_by_key(|(k, _)| *k);
        pending.sort_by_key(|(k, _)| *k);
        Snapshot {
            flows,
            pending,
            counters: self.probe.counters().expect("read COUNTERS"),
        }
    }

    pub fn events(&mut self) -> Vec<StallRecord> {
        self.probe.drain_events().expect("drain EVENTS")
    }
}

/// One hook's loaded program, run by BPF_PROG_TEST_RUN on the calling thread's CPU.
pub enum Runner {
    Xdp(Xdp),
    Tc(SchedClassifier),
}

impl Runner {
    /// Runs the program `repeat` times (at least once) on `frame`; returns its verdict.
    pub fn run(&self, frame: &[u8], repeat: u32) -> Result<u32, String> {
        match self {
            Runner::Xdp(p) => test_run(p, frame, repeat),
            Runner::Tc(p) => test_run(p, frame, repeat),
        }
    }
}

/// A handle of its own of the loaded XDP program `prog` (`what` names it in a panic).
fn xdp_runner(prog: Result<&mut Xdp, ProbeError>, what: &str) -> Runner {
    let fail = |e: &dyn std::fmt::Display| -> ! { panic!("a handle of {what}: {e}") };
    let info = prog
        .unwrap_or_else(|e| fail(&e))
        .info()
        .unwrap_or_else(|e| fail(&e));
    let prog = Xdp::from_program_info(info, "runner".into(), XdpAttachType::Interface);
    Runner::Xdp(prog.unwrap_or_else(|e| fail(&e)))
}

fn test_run<P>(prog: &P, frame: &[u8], repeat: u32) -> Result<u32, String>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    prog.test_run(opts).map(|r| r.return_value).map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|c| c.to_string())
            .unwrap_or_default();
        format!("{e}: {cause}")
    })
}

/// The host's state machine with the kernel's table semantics.
pub struct Host {
    pub store: HostStore,
    pub settings: Settings,
    pub events: Vec<StallRecord>,
}

impl Host {
    pub fn new(settings: Settings) -> Self {
        let store = HostStore::new(
            settings.max_flows as usize,
            settings.max_pending as usize,
            &settings.ctcp_ports,
            settings.table_seed.unwrap_or(TEST_SEED),
        );
        Host {
            store,
            settings,
            events: Vec::new(),
        }
    }

    pub fn feed(&mut self, hook: Hook, frame: &[u8], now_ns: u64) {
        self.store.count(hook.counter());
        let records = self.store.observe(
            &frame,
            hook.link(),
            &self.settings.verdict,
            now_ns,
            TEST_RUN_IFINDEX,
        );
        self.events.extend(records);
    }

    /// A mirror port's frame, as `Kernel::feed_mirror` runs it.
    pub fn feed_mirror(&mut self, frame: &[u8], now_ns: u64) {
        let ports = self.settings.mirror.expect("mirror settings").ports;
        self.store.count(counter::PACKETS_XDP);
        let records = self.store.observe_copy(
            &frame,
            &ports,
            &self.settings.verdict,
            now_ns,
            TEST_RUN_IFINDEX,
        );
        self.events.extend(records);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut flows: Vec<_> = self.store.flows().map(|(k, v)| (*k, *v)).collect();
        let mut pending: Vec<_> = self.store.pending_flows().map(|(k, f)| (*k, *f)).collect();
        flows.sort_by_key(|(k, _)| *k);
        pending.sort_by_key(|(k, _)| *k);
        Snapshot {
            flows,
            pending,
            counters: self.store.counters.clone(),
        }
    }
}
