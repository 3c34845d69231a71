//! `ackwatch`: the agent's command line.

use std::io::Write;
use std::process::ExitCode;

use ackwatch::cli::{AnalyzeArgs, Cli, Command, FlowsArgs, LogFormat, RunArgs};
use ackwatch::daemon::{self, RunError};
use ackwatch::flows::FlowReport;
use ackwatch::offline::analyze::{Analyzer, Options};
use ackwatch::offline::capture::{Capture, CaptureError};
use ackwatch::offline::report;
use ackwatch::serve::client;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Analyze(args) => analyze(&args),
        Command::Flows(args) => flows(&args),
    }
}

/// Exit 0; 1 when the agent cannot be reached or answers with an error.
fn flows(args: &FlowsArgs) -> ExitCode {
    let path = if args.stalled {
        "/flows?state=stalled"
    } else {
        "/flows"
    };
    let got = client::http_get(&args.api, path)
        .map_err(|e| format!("cannot reach the agent at {}: {e}", args.api))
        .and_then(|(status, body)| match status {
            200 => serde_json::from_str::<Vec<serde_json::Value>>(&body)
                .map_err(|e| format!("bad answer from the agent: {e}")),
            s => Err(format!("the agent answered {s}: {body}")),
        });
    match got {
        Ok(flows) => {
            let _ = client::print_flows(&mut std::io::stdout().lock(), &flows, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ackwatch: {e}");
            ExitCode::from(1)
        }
    }
}

/// Exit 0 after SIGINT/SIGTERM; 2 on bad input; 1 when the probe cannot be started.
fn run(args: &RunArgs) -> ExitCode {
    let mut logs = env_logger::Builder::new();
    logs.filter_level(args.log_level)
        .target(env_logger::Target::Stderr);
    if args.log_format == LogFormat::Json {
        logs.format(|buf, r| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
                "level": r.level().as_str(),
                "target": r.target(),
                "msg": r.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    logs.init();
    let result = daemon::start(args).and_then(|shared| {
        let rt = tokio::runtime::Runtime::new().map_err(|e| RunError::Failed(e.to_string()))?;
        rt.block_on(daemon::serve(shared, args))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ RunError::Input(_)) => {
            eprintln!("ackwatch: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("ackwatch: {e}");
            ExitCode::from(1)
        }
    }
}

/// Exit 0; 1 when the capture was cut short (results up to there are printed); 2 on
/// bad input.
fn analyze(args: &AnalyzeArgs) -> ExitCode {
    let mut capture = match Capture::open(&args.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ackwatch: {e}");
            return ExitCode::from(2);
        }
    };
    let mirror = match args.mirror.ports() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ackwatch: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        mirror,
        verdict: args.verdict.config(),
        ctcp_ports: args.verdict.ctcp_ports.clone(),
        idle_timeout_ns: args.verdict.idle_timeout.as_nanos() as u64,
        sweep_interval_ns: args.verdict.sweep_interval.as_nanos() as u64,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut kept: Vec<FlowReport> = Vec::new();
    let (json, stalled_only) = (args.json, args.stalled);
    let mut analyzer = Analyzer::new(opts, |r: FlowReport| {
        if stalled_only && !r.is_stalled() {
            return;
        }
        if json {
            // Streamed: memory holds live flows only.
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string(&r).expect("flow report serializes")
            );
        } else {
            kept.push(r);
        }
    });
    let read = capture.for_each(|frame| analyzer.feed(&frame));
    let counters = analyzer.finish();
    if !json {
        let _ = report::text(&mut out, &kept, &counters, capture.frames());
    }
    let _ = out.flush();
    match read {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ CaptureError::Truncated { .. }) => {
            eprintln!("ackwatch: {e}; results above cover the frames read");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ackwatch: {e}");
            ExitCode::from(2)
        }
    }
}
