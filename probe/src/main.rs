//! `fiber-probe`: configuration, wiring and signals only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use fiber_probe::agent::{self, AgentOptions};
use fiber_probe::config::{Overrides, Settings};
use fiber_probe::metrics::Stats;
use tokio::signal::unix::{SignalKind, signal};

/// The probe's own environment, then what every binary shares.
static PROBE_HELP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "Environment overrides of the configuration file: NODE_NAME (node), FIBER_INGEST_URL (ingest.urls, comma-separated, tried in order), FIBER_TOKEN (the bearer token itself) or FIBER_TOKEN_FILE (ingest.tokenFile), FIBER_BUFFER_DIR (buffer.dir). Unprivileged ICMP needs net.ipv4.ping_group_range to include the process's group.\n\n{}",
        fiberstack_telemetry::ENV_HELP
    )
});

#[derive(Parser)]
#[command(
    name = "fiber-probe",
    version,
    about = "FiberStack's probe agent: measures ICMP, TCP, HTTP(S), DNS and traceroute targets once per interval and delivers every sample to fiber-ingest through a disk buffer that survives restarts and outages.",
    after_help = PROBE_HELP.as_str()
)]
struct Cli {
    /// The ProbeConfig YAML (DESIGN.md §3). Re-read every few seconds; a valid change is
    /// applied without a restart.
    #[arg(
        long,
        global = true,
        env = "FIBER_PROBE_CONFIG",
        default_value = "/etc/fiberstack/probe.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every target once, print the samples as JSON lines on stdout and exit (nothing is
    /// buffered or sent). For trying a configuration; exits 1 if the configuration is invalid.
    Once,
}

async fn terminated() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}

// One thread: the probe waits on sockets almost all the time, and a single-threaded runtime
// keeps the resident memory down.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _telemetry = fiberstack_telemetry::init("fiber-probe");
    let cli = Cli::parse();
    let overrides = Overrides::from_env();
    match cli.command {
        Some(Command::Once) => {
            let settings = match Settings::load(&cli.config, &overrides) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, kind = e.kind(), "cannot use the configuration");
                    return ExitCode::FAILURE;
                }
            };
            for sample in agent::once(&settings).await {
                println!(
                    "{}",
                    serde_json::to_string(&sample).expect("a sample always serializes")
                );
            }
            ExitCode::SUCCESS
        }
        None => {
            let options = AgentOptions::new(cli.config, overrides);
            match agent::run(options, Arc::new(Stats::default()), terminated()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "fiber-probe cannot run");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
