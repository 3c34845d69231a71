//! Loading the BPF probe and reading its maps.

use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};
use aya_log::EbpfLogger;
use ebpf_probe::abi::{ClockParams, Flow, FlowKey, StallRecord, counter, port_flag};
use ebpf_probe::decap::TunnelPorts;
use ebpf_probe::parse::LinkKind;
use ebpf_probe::table::{self, Seed, WAYS};
use ebpf_probe::verdict::Config;

use crate::kernel::flow_table::{ESTABLISHED_MAPS, FlowTable, PENDING_MAPS, Part};

/// The probe object, built by build.rs.
static PROBE_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ackwatch-probe"));

/// What the kernel counted of one loaded program (`Probe::run_stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStats {
    pub id: u32,
    pub name: String,
    pub runs: u64,
    pub run_time: Duration,
}

impl RunStats {
    /// The hook the program runs on, as `ackwatch_packets_total` names it.
    pub fn hook(&self) -> &'static str {
        if self.name.starts_with("ackwatch_tc") {
            "tc"
        } else {
            "xdp"
        }
    }
}

/// Load-time settings of the probe.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Capacity of the established-flow table.
    pub max_flows: u32,
    /// Capacity of the pending table (half-open and one-sided flows).
    pub max_pending: u32,
    pub verdict: Config,
    pub ctcp_ports: Vec<u16>,
    /// Take the clock from the CLOCK map (deterministic tests and replays).
    pub clock_from_map: bool,
    /// Pin (or reuse the pins of) the maps that carry state across restarts here.
    pub pin_dir: Option<std::path::PathBuf>,
    /// Size of the stall-record ring buffer (a power of two, at least a page).
    pub event_ring_bytes: u32,
    /// The flow table's hash key; None: random, or the pinned table's own.
    pub table_seed: Option<Seed>,
    /// Mirror ports (`--mirror`): the mirror program's settings.
    pub mirror: Option<Mirror>,
}

/// Settings of the mirror program (`ebpf_probe::decap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub ports: TunnelPorts,
    /// Drop each copy after analysis (`--mirror-drop`).
    pub drop: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_flows: 262_144,
            max_pending: 65_536,
            verdict: Config::default(),
            ctcp_ports: vec![10_000],
            clock_from_map: false,
            pin_dir: None,
            event_ring_bytes: 256 * 1024,
            table_seed: None,
            mirror: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
    #[error("interface {0}: {1}")]
    Interface(String, std::io::Error),
    #[error("the probe's log: {0}")]
    Logger(String),
    #[error("reading map {0}: {1}")]
    Batch(&'static str, std::io::Error),
    #[error("pinning {0}: {1}")]
    Pin(std::path::PathBuf, String),
    #[error("mapping the flow table: {0}")]
    Mmap(std::io::Error),
    #[error("calibrating the clock: {0}")]
    Clock(String),
    #[error("choosing the flow table's hash key: {0}")]
    Seed(std::io::Error),
}

impl ProbeError {
    /// The interface already has a program of that kind (EBUSY on attach).
    pub fn is_busy(&self) -> bool {
        match self {
            ProbeError::Program(_, aya::programs::ProgramError::SyscallError(e)) => {
                e.io_error.raw_os_error() == Some(libc::EBUSY)
            }
            _ => false,
        }
    }
}

/// Program names in the object, by hook and link kind.
pub fn xdp_program(link: LinkKind) -> &'static str {
    match link {
        LinkKind::Ethernet => "ackwatch_xdp",
        LinkKind::RawIp => "ackwatch_xdp_ip",
    }
}

pub fn tc_program(link: LinkKind) -> &'static str {
    match link {
        LinkKind::Ethernet => "ackwatch_tc",
        LinkKind::RawIp => "ackwatch_tc_ip",
    }
}

/// The XDP program of mirror ports (Ethernet only).
pub const MIRROR_PROGRAM: &str = "ackwatch_xdp_mirror";

/// Run once at load, never attached: reads jiffies and the precise clock together.
const CLOCK_PROGRAM: &str = "ackwatch_clock";
const WALK_PROGRAM: &str = "ackwatch_walk";

pub const PROGRAMS: [&str; 5] = [
    "ackwatch_xdp",
    "ackwatch_xdp_ip",
    "ackwatch_tc",
    "ackwatch_tc_ip",
    MIRROR_PROGRAM,
];

/// The loaded probe: programs verified and loaded, maps created, not attached.
pub struct Probe {
    ebpf: Ebpf,
    /// Reads the probe's aya-log records (its AYA_LOGS map must stay open while the
    /// programs load); the agent takes it to forward them to its log.
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    table: FlowTable,
    pending: FlowTable,
}

impl Probe {
    pub fn load(s: &Settings) -> Result<Self, ProbeError> {
        let track_all = s.verdict.track_all as u8;
        let clock = s.clock_from_map as u8;
        let mut loader = EbpfLoader::new();
        if let Some(dir) = &s.pin_dir {
            for name in crate::kernel::pins::PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let buckets = table::buckets_for(s.max_flows);
        let pending_buckets = table::buckets_for(s.max_pending);
        let mirror = s.mirror.unwrap_or(Mirror {
            ports: TunnelPorts::default(),
            drop: false,
        });
        let mirror_drop = mirror.drop as u8;
        let mut ebpf = loader
            .override_global("DUPACK_THRESHOLD", &s.verdict.dupack_threshold, true)
            .override_global("STALL_TIMEOUT_NS", &s.verdict.stall_timeout_ns, true)
            .override_global("TRACK_ALL", &track_all, true)
            .override_global("CLOCK_FROM_MAP", &clock, true)
            .override_global("FLOW_BUCKETS", &buckets, true)
            .override_global("PENDING_TABLE_BUCKETS", &pending_buckets, true)
            .override_global("MIRROR_DROP", &mirror_drop, true)
            .override_global("TUNNEL_PORTS", &mirror.ports, true)
            .map_max_entries("BUCKETS", buckets)
            .map_max_entries("FLOWS", buckets * WAYS)
            .map_max_entries("OCCUPIED", table::occupancy_words(buckets))
            .map_max_entries("PENDING_BUCKETS", pending_buckets)
            .map_max_entries("PENDING_SLOTS", pending_buckets * WAYS)
            .map_max_entries("PENDING_OCCUPIED", table::occupancy_words(pending_buckets))
            .map_max_entries("EVENTS", s.event_ring_bytes)
            .load(PROBE_OBJECT)?;
        let logger = EbpfLogger::init(&mut ebpf).map_err(|e| ProbeError::Logger(e.to_string()))?;
        let seed = table_seed(&mut ebpf, s.table_seed)?;
        let map = |names: [&'static str; 4], nbuckets| {
            let [buckets, slots, fill, occupied] = names.map(|name| array_data(&ebpf, name));
            FlowTable::map([buckets?, slots?, fill?, occupied?], nbuckets, seed)
                .map_err(ProbeError::Mmap)
        };
        let table = map(ESTABLISHED_MAPS, buckets)?;
        table.set_capacity(s.max_flows);
        let pending = map(PENDING_MAPS, pending_buckets)?;
        pending.set_capacity(s.max_pending);
        let mut probe = Probe {
            ebpf,
            logger: Some(logger),
            table,
            pending,
        };
        if !s.clock_from_map {
            probe.calibrate_clock()?;
        }
        if s.pin_dir.is_some() {
            probe.reset_ctcp_ports(&s.ctcp_ports)?;
        } else {
            for &p in &s.ctcp_ports {
                probe.set_port_flags(p, port_flag::CTCP)?;
            }
        }
        Ok(probe)
    }

    /// The XDP program for `link`, loaded (verified) on first use: each program costs
    /// about half a second of verification here, and an agent needs only the programs
    /// of its interfaces' link kinds.
    pub fn xdp(&mut self, link: LinkKind) -> Result<&mut Xdp, ProbeError> {
        self.load_program(xdp_program(link))?;
        program(&mut self.ebpf, xdp_program(link))
    }

    /// The mirror ports' XDP program, loaded on first use (as `xdp`).
    pub fn xdp_mirror(&mut self) -> Result<&mut Xdp, ProbeError> {
        self.load_program(MIRROR_PROGRAM)?;
        program(&mut self.ebpf, MIRROR_PROGRAM)
    }

    /// The TC program for `link`, loaded on first use (as `xdp`).
    pub fn tc(&mut self, link: LinkKind) -> Result<&mut SchedClassifier, ProbeError> {
        self.load_program(tc_program(link))?;
        program(&mut self.ebpf, tc_program(link))
    }

    /// Loads program `name` unless it is loaded.
    fn load_program(&mut self, name: &'static str) -> Result<(), ProbeError> {
        use aya::programs::Program;
        let loaded = match self.ebpf.program_mut(name) {
            Some(Program::Xdp(p)) if p.fd().is_err() => p.load(),
            Some(Program::SchedClassifier(p)) if p.fd().is_err() => p.load(),
            Some(_) => Ok(()),
            None => Err(not_found()),
        };
        loaded.map_err(|e| ProbeError::Program(name, e))
    }

    /// Mean time of one run of XDP program `name` (loaded on first use) on `frame`,
    /// over `repeat` runs of BPF_PROG_TEST_RUN: what the benchmarks measure.
    pub fn xdp_run_time(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<std::time::Duration, ProbeError> {
        use aya::programs::{TestRun, TestRunOptions};
        self.load_program(name)?;
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        prog.test_run(opts)
            .map(|r| r.duration)
            .map_err(|e| ProbeError::Program(name, e))
    }

    /// As `xdp_run_time` for program `to`, but each run sees the frame as the run before
    /// left it plus `step` in the big-endian word at byte `offset` (`xdp_walk`).
    pub fn xdp_walk_time(
        &mut self,
        to: &'static str,
        frame: &[u8],
        step: [u32; 2],
        repeat: u32,
    ) -> Result<std::time::Duration, ProbeError> {
        self.xdp_walk(to, step)?;
        self.xdp_run_time(WALK_PROGRAM, frame, repeat)
    }

    /// `ackwatch_walk`, set to add `step` (`[offset, step]`) to the big-endian word at
    /// byte `offset` of its frame before each run, then go on to XDP program `to`: its
    /// repeated test runs are consecutive segments of one flow, or a new flow each, with
    /// warm caches (benchmarks and tests only).
    pub fn xdp_walk(&mut self, to: &'static str, step: [u32; 2]) -> Result<&mut Xdp, ProbeError> {
        use aya::maps::ProgramArray;
        self.load_program(to)?;
        let fd = program::<Xdp>(&mut self.ebpf, to)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|e| ProbeError::Program(to, e))?;
        let mut walk_to: ProgramArray<&mut MapData> = map_mut(&mut self.ebpf, "WALK_TO")?;
        walk_to
            .set(0, &fd, 0)
            .map_err(|e| ProbeError::Map("WALK_TO", e))?;
        let mut walk: Array<&mut MapData, [u32; 2]> = map_mut(&mut self.ebpf, "WALK")?;
        walk.set(0, step, 0)
            .map_err(|e| ProbeError::Map("WALK", e))?;
        self.load_program(WALK_PROGRAM)?;
        program(&mut self.ebpf, WALK_PROGRAM)
    }

    /// Kernel ids of the loaded programs.
    pub fn program_ids(&self) -> Vec<u32> {
        PROGRAMS
            .iter()
            .filter_map(|name| self.ebpf.program(name)?.info().ok().map(|i| i.id()))
            .collect()
    }

    /// Entries of the flow table and of the pending table, as the probe counts them
    /// (what decides a refusal), at this instant.
    pub fn table_fill(&self) -> [u64; 2] {
        [self.table().flows(), self.pending_table().flows()]
    }

    /// The kernel's run count and run time of every loaded program of this probe: the
    /// programs that use its flow table, so after a restart with pins also those of the
    /// run that attached them (still the ones running). Both stay 0 while the kernel
    /// does not time BPF programs (`--probe-stats`, or `kernel.bpf_stats_enabled`).
    pub fn run_stats(&self) -> Result<Vec<RunStats>, ProbeError> {
        let table = array_data(&self.ebpf, "FLOWS")?
            .info()
            .map_err(|e| ProbeError::Map("FLOWS", e))?
            .id();
        let mut all = Vec::new();
        for info in aya::programs::loaded_programs() {
            // A program unloaded meanwhile, or one this process may not inspect.
            let Ok(info) = info else { continue };
            // Named as ours first: listing a program's maps is a second syscall.
            let Some(name) = info.name_as_str().filter(|n| n.starts_with("ackwatch_")) else {
                continue;
            };
            let ours = info
                .map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&table));
            if ours {
                all.push(RunStats {
                    id: info.id(),
                    name: name.to_string(),
                    runs: info.run_count(),
                    run_time: info.run_time(),
                });
            }
        }
        Ok(all)
    }

    /// Instructions the verifier processed for a program (loaded now if it is not yet).
    pub fn verified_instructions(&mut self, name: &'static str) -> Result<u32, ProbeError> {
        self.load_program(name)?;
        let prog = self
            .ebpf
            .program(name)
            .ok_or(ProbeError::Program(name, not_found()))?;
        let info = prog.info().map_err(|e| ProbeError::Program(name, e))?;
        Ok(info.verified_instruction_count().unwrap_or(0))
    }

    pub fn set_port_flags(&mut self, port: u16, flags: u8) -> Result<(), ProbeError> {
        let mut ports: Array<&mut MapData, u8> = map_mut(&mut self.ebpf, "PORTS")?;
        ports
            .set(port as u32, flags, 0)
            .map_err(|e| ProbeError::Map("PORTS", e))
    }

    /// Makes exactly `ports` the cTCP ports of a (possibly reused) PORTS map, keeping
    /// the signature marks.
    fn reset_ctcp_ports(&mut self, ports: &[u16]) -> Result<(), ProbeError> {
        let mut map: Array<&mut MapData, u8> = map_mut(&mut self.ebpf, "PORTS")?;
        for port in 0..=u16::MAX {
            let old = map
                .get(&(port as u32), 0)
                .map_err(|e| ProbeError::Map("PORTS", e))?;
            let ctcp = if ports.contains(&port) {
                port_flag::CTCP
            } else {
                0
            };
            let new = (old & !port_flag::CTCP) | ctcp;
            if new != old {
                map.set(port as u32, new, 0)
                    .map_err(|e| ProbeError::Map("PORTS", e))?;
            }
        }
        Ok(())
    }

    /// Sets the probe's clock (only read with `Settings::clock_from_map`).
    pub fn set_clock(&mut self, now: Duration) -> Result<(), ProbeError> {
        self.write_clock(ClockParams {
            map_now: now.as_nanos() as u64,
            ..Default::default()
        })
    }

    /// The clock's calibration (or the map's time).
    pub fn clock(&self) -> Result<ClockParams, ProbeError> {
        let map = self
            .ebpf
            .map("CLOCK")
            .ok_or(ProbeError::MissingMap("CLOCK"))?;
        let clock: Array<&MapData, ClockParams> =
            Array::try_from(map).map_err(|e| ProbeError::Map("CLOCK", e))?;
        clock.get(&0, 0).map_err(|e| ProbeError::Map("CLOCK", e))
    }

    fn write_clock(&mut self, params: ClockParams) -> Result<(), ProbeError> {
        let mut clock: Array<&mut MapData, ClockParams> = map_mut(&mut self.ebpf, "CLOCK")?;
        clock
            .set(0, params, 0)
            .map_err(|e| ProbeError::Map("CLOCK", e))
    }

    /// Sets the coarse clock (`jiffies * tick + offset`) to read CLOCK_MONOTONIC, as the
    /// precise one does, to within half a tick: the tick from the coarse clock's
    /// resolution, the offset from samples of both clocks taken together in the kernel
    /// over two ticks (the smallest difference is the one taken right after a tick).
    fn calibrate_clock(&mut self) -> Result<(), ProbeError> {
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill.
        if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
            return Err(ProbeError::Clock(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        let tick = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
        let start = std::time::Instant::now();
        let mut offset = u64::MAX;
        while start.elapsed().as_nanos() < 2 * tick as u128 + 1_000_000 {
            self.xdp_run_time(CLOCK_PROGRAM, &[0u8; 64], 1)?;
            let c = self.clock()?;
            offset = offset.min(
                c.sample_ns
                    .wrapping_sub(c.sample_jiffies.wrapping_mul(tick)),
            );
        }
        self.write_clock(ClockParams {
            ns_per_jiffy: tick,
            offset: offset.wrapping_add(tick / 2),
            ..Default::default()
        })
    }

    /// Counters summed over CPUs, indexed by `abi::counter`.
    pub fn counters(&self) -> Result<Vec<u64>, ProbeError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(ProbeError::MissingMap("COUNTERS"))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| ProbeError::Map("COUNTERS", e))?;
        let raw = (0..counter::ENTRIES)
            .map(|i| {
                arr.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|e| ProbeError::Map("COUNTERS", e))
            })
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(counter::fold(&raw).to_vec())
    }

    /// Every established flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, ProbeError> {
        let mut all = Vec::new();
        self.for_each_flow(|k, f| {
            all.push((*k, *f));
            true
        });
        Ok(all)
    }

    /// Every half-open or one-sided flow (the pending table, through its mapping).
    pub fn pending(&self) -> Result<Vec<(FlowKey, Flow)>, ProbeError> {
        let mut all = Vec::new();
        self.pending
            .walk(&mut 0, usize::MAX, Part::Whole, |_, k, f| {
                all.push((*k, *f));
                true
            });
        Ok(all)
    }

    /// Calls `each` with a consistent copy of every established flow until it returns
    /// false.
    pub fn for_each_flow(&self, mut each: impl FnMut(&FlowKey, &Flow) -> bool) {
        self.table
            .walk(&mut 0, usize::MAX, Part::Whole, |_, k, f| each(k, f));
    }

    /// Continues a walk of the established table (`FlowTable::walk`) with `part` of
    /// each flow.
    pub fn walk_flows(
        &self,
        cursor: &mut u32,
        max: usize,
        part: Part,
        each: impl FnMut(u32, &FlowKey, &Flow) -> bool,
    ) -> bool {
        self.table.walk(cursor, max, part, each)
    }

    /// The established table, for lookups, the sweep's locked updates and eviction.
    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The pending table, for the sweep's eviction of idle entries.
    pub fn pending_table(&self) -> &FlowTable {
        &self.pending
    }

    /// Takes every record waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Result<Vec<StallRecord>, ProbeError> {
        let map = self
            .ebpf
            .map_mut("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        let mut ring = RingBuf::try_from(map).map_err(|e| ProbeError::Map("EVENTS", e))?;
        Ok(drain(&mut ring))
    }

    /// Moves the log reader out, for the agent's task that forwards the records.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Moves the ring buffer out, for a reader that waits on its descriptor.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map("EVENTS", e))
    }
}

/// Every record waiting in `ring`.
pub fn drain<T: std::borrow::BorrowMut<MapData>>(ring: &mut RingBuf<T>) -> Vec<StallRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() == size_of::<StallRecord>() {
            // SAFETY: the probe writes whole StallRecords; the length is checked.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const StallRecord) });
        }
    }
    out
}

/// The table's hash key: the pinned table's own if it has one (a table reused across
/// restarts must keep its placement), else `wanted`, else random; written to SEED.
fn table_seed(ebpf: &mut Ebpf, wanted: Option<Seed>) -> Result<Seed, ProbeError> {
    let mut map: Array<&mut MapData, Seed> = map_mut(ebpf, "SEED")?;
    let old = map.get(&0, 0).map_err(|e| ProbeError::Map("SEED", e))?;
    if old != Seed::default() {
        return Ok(old);
    }
    let seed = match wanted {
        Some(seed) => seed,
        None => Seed::random().map_err(ProbeError::Seed)?,
    };
    map.set(0, seed, 0)
        .map_err(|e| ProbeError::Map("SEED", e))?;
    Ok(seed)
}

fn array_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, ProbeError> {
    match ebpf.map(name) {
        Some(aya::maps::Map::Array(data)) => Ok(data),
        Some(_) => Err(ProbeError::Map(
            name,
            aya::maps::MapError::InvalidMapType { map_type: 0 },
        )),
        None => Err(ProbeError::MissingMap(name)),
    }
}

fn not_found() -> aya::programs::ProgramError {
    aya::programs::ProgramError::UnexpectedProgramType
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Program(name, not_found()))?;
    prog.try_into().map_err(|e| ProbeError::Program(name, e))
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|e| ProbeError::Map(name, e))
}
