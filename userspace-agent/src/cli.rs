//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ebpf_probe::decap::{MAX_TUNNEL_PORTS, TunnelPorts};
use ebpf_probe::verdict::Config;

#[derive(Parser)]
#[command(
    name = "ackwatch",
    version,
    about = "Finds TCP-encapsulated VPN flows stuck on duplicate ACKs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// RunArgs is the large one; parsed once at start, so never boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Attach the probe to interfaces and report stuck flows (the daemon).
    Run(RunArgs),
    /// Analyse a pcap or pcapng capture with the probe's own state machine.
    Analyze(AnalyzeArgs),
    /// Print the flow table of a running agent.
    Flows(FlowsArgs),
}

#[derive(Args)]
pub struct FlowsArgs {
    /// Only stalled flows.
    #[arg(long)]
    pub stalled: bool,
    /// One JSON object per flow and line.
    #[arg(long)]
    pub json: bool,
    /// The agent's HTTP address (its --listen).
    #[arg(long, default_value = "127.0.0.1:9977", env = "ACKWATCH_LISTEN")]
    pub api: String,
}

#[derive(Args)]
pub struct RunArgs {
    /// Interface to watch (repeatable): XDP on its ingress, TC on its egress.
    #[arg(
        long = "iface",
        required = true,
        env = "ACKWATCH_IFACE",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,
    /// Watch ingress only (a transit gateway: XDP on both of its interfaces).
    #[arg(long)]
    pub no_egress: bool,
    /// XDP mode: auto (native where the driver has it, else generic), native or generic.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Capacity of the established-flow table.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_flows: u32,
    /// Size of the kernel's stall-record ring buffer in KiB (a power of two, 4-65536):
    /// what queues while the agent is not reading.
    #[arg(long, default_value_t = 256, value_parser = ring_kib)]
    pub event_ring_kib: u32,
    /// Address of /metrics, /healthz and /flows (a headend faces the Internet: loopback by default).
    #[arg(long, default_value = "127.0.0.1:9977", env = "ACKWATCH_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// TLS and basic auth of /metrics, /healthz and /flows: a file in the Prometheus
    /// exporter-toolkit web config format (tls_server_config, basic_auth_users).
    #[arg(long, env = "ACKWATCH_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
    #[command(flatten)]
    pub alertmanager: crate::serve::alerting::AlertmanagerArgs,
    /// At most this many ackwatch_stalled_flow_info series (one per stalled flow).
    #[arg(long, default_value_t = 100)]
    pub max_stalled_series: usize,
    /// Where the probe's maps and links are pinned (on a BPF filesystem), so that a
    /// restart finds the probe attached and the flows tracked.
    #[arg(
        long,
        default_value = "/sys/fs/bpf/ackwatch",
        env = "ACKWATCH_PIN_PATH"
    )]
    pub pin_path: std::path::PathBuf,
    /// Have the kernel time every run of the probe's programs while the agent runs
    /// (ackwatch_probe_run_seconds_total, ackwatch_probe_runs_total). Its clock reads
    /// add ~70 ns to every packet of every BPF program on the host (measured on an AMD
    /// EPYC VM); needs CAP_SYS_ADMIN.
    #[arg(long)]
    pub probe_stats: bool,
    /// On SIGINT/SIGTERM, leave the probe attached and pinned (for an upgrade).
    #[arg(long)]
    pub keep_attached: bool,
    /// Log level of the human logs on stderr.
    #[arg(long, default_value = "info", env = "ACKWATCH_LOG_LEVEL")]
    pub log_level: log::LevelFilter,
    /// Logs on stderr as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "ACKWATCH_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub verdict: VerdictArgs,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// With --mirror: drop each copy after analysis (XDP_DROP), so the collector's
    /// stack does not spend time on it; the port's own ARP and ICMPv6 still pass.
    #[arg(long, requires = "mirror")]
    pub mirror_drop: bool,
}

/// Mirror ports (README, "Mirror ports"); the same for `run` and `analyze`.
#[derive(Args, Clone)]
pub struct MirrorArgs {
    /// The traffic is a mirror port's copies of both directions, plain (SPAN, TAP) or
    /// in VXLAN, GENEVE or ERSPAN II/III; `run` attaches XDP only.
    #[arg(long)]
    pub mirror: bool,
    /// UDP port read as VXLAN (repeatable, up to 4; default 4789).
    #[arg(long = "vxlan-port", requires = "mirror", value_parser = clap::value_parser!(u16).range(1..))]
    pub vxlan_ports: Vec<u16>,
    /// UDP port read as GENEVE (repeatable, up to 4; default 6081).
    #[arg(long = "geneve-port", requires = "mirror", value_parser = clap::value_parser!(u16).range(1..))]
    pub geneve_ports: Vec<u16>,
}

impl MirrorArgs {
    /// The tunnel ports with --mirror, None without it.
    pub fn ports(&self) -> Result<Option<TunnelPorts>, String> {
        if !self.mirror {
            return Ok(None);
        }
        TunnelPorts::new(&self.vxlan_ports, &self.geneve_ports)
            .map(Some)
            .ok_or_else(|| {
                format!("at most {MAX_TUNNEL_PORTS} --vxlan-port and --geneve-port each")
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    /// The capture: pcap or pcapng; Ethernet, Linux cooked (SLL, SLL2) or raw IP.
    pub file: PathBuf,
    /// Only flows that stalled.
    #[arg(long)]
    pub stalled: bool,
    /// One JSON object per flow and line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub verdict: VerdictArgs,
    #[command(flatten)]
    pub mirror: MirrorArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Track {
    /// cTCP only: a configured server port, or the cTCP payload signature.
    Ctcp,
    /// Every TCP flow.
    All,
}

/// Settings that change the verdict; the same for `run` and `analyze`.
#[derive(Args, Clone)]
pub struct VerdictArgs {
    /// Which flows to track.
    #[arg(long, value_enum, default_value_t = Track::Ctcp, env = "ACKWATCH_TRACK")]
    pub track: Track,
    /// cTCP server port (repeatable).
    #[arg(long = "ctcp-port", default_values_t = [10000u16], value_parser = clap::value_parser!(u16).range(1..))]
    pub ctcp_ports: Vec<u16>,
    /// K: duplicate ACKs for one hole before a flow may be stalled.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub dupack_threshold: u32,
    /// T: how long the receiver's ACK must stay at the hole.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub stall_timeout: Duration,
    /// Flows without a packet for this long are evicted.
    #[arg(long, default_value = "300s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// How often quiet flows are checked and idle ones evicted.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub sweep_interval: Duration,
}

impl VerdictArgs {
    pub fn config(&self) -> Config {
        Config {
            dupack_threshold: self.dupack_threshold,
            stall_timeout_ns: self.stall_timeout.as_nanos() as u64,
            track_all: self.track == Track::All,
        }
    }
}

pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 1s, 5m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn ring_kib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(4..=65_536).contains(&n) || !n.is_power_of_two() {
        return Err("a power of two from 4 to 65536".into());
    }
    Ok(n)
}
