//! `pod-runner`: runs the pods of FiberStack's images that are scheduled on the local
//! environment's fake (kwok) nodes as local processes. See `e2e/README.md`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fiberstack_e2e::pod_runner::{Options, Runner, network};

#[derive(Parser)]
#[command(
    version,
    about = "Runs FiberStack's pods on the fake nodes as local processes (needs root)",
    long_about = "Runs FiberStack's pods on the local environment's fake (kwok) nodes as local \
processes, as a kubelet would: for every pod whose container images are FiberStack's own \
(the image's last path segment names a binary in --bin-dir), it starts that binary with the \
pod's command, args and environment (downward API, Secret and ConfigMap references), mounts \
the pod's ConfigMap/Secret/emptyDir volumes and service-account token at their paths in a \
private mount namespace, runs it as the pod's user in a network namespace holding the pod's \
IP, restarts it per the restart policy and stops it when the pod goes away. Services resolve \
through each pod's /etc/hosts; the machine's own services are reached at --host-address \
(resolved as --host-name). Needs root (network and mount namespaces)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pods until SIGINT/SIGTERM, then stop them all.
    Run(RunArgs),
    /// Remove pod network namespaces and veths a killed runner left behind, and the host
    /// addresses on `lo`.
    Cleanup {
        #[arg(long, default_value = "10.240.255.254")]
        host_address: Ipv4Addr,
        #[arg(long, default_value = "10.96.0.1")]
        api_address: Ipv4Addr,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory holding the binaries (the "images"). Default: this program's directory.
    #[arg(long, env = "FIBER_RUNNER_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Volumes, logs (<state-dir>/pods/<ns>_<pod>_<uid>/<container>.log), copied binaries
    /// and pods.json.
    #[arg(
        long,
        env = "FIBER_RUNNER_STATE_DIR",
        default_value = "/run/fiberstack-pod-runner"
    )]
    state_dir: PathBuf,
    /// Only run pods of this namespace (repeatable). Default: every namespace.
    #[arg(long = "namespace", short = 'n')]
    namespaces: Vec<String>,
    /// The machine as pods see it: put an extra address on lo.
    #[arg(long, default_value = "10.240.255.254")]
    host_address: Ipv4Addr,
    /// The name every pod resolves to --host-address.
    #[arg(long, default_value = "host.fiberstack.internal")]
    host_name: String,
    /// A port forwarded from --host-address to the same port on 127.0.0.1 (repeatable):
    /// the local Redis, PostgreSQL and TimescaleDB.
    #[arg(long = "forward", default_values_t = [16379u16, 15432, 15433])]
    forwards: Vec<u16>,
    /// Pod IPs are assigned from this network (a runner beside another needs its own).
    #[arg(long, default_value = "10.245.0.0/16", value_parser = parse_cidr)]
    pod_network: (Ipv4Addr, u8),
    /// Where pods reach the kube-apiserver (KUBERNETES_SERVICE_HOST:PORT); its serving
    /// certificate must name this IP.
    #[arg(long, default_value = "10.96.0.1:443")]
    api_address: SocketAddrV4,
    /// How often pods are compared with processes.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIBER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Cleanup {
            host_address,
            api_address,
        } => {
            network::destroy_all_leftovers(&[host_address, api_address]);
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(args)),
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("0");
    anyhow::ensure!(
        euid == "0",
        "pod-runner needs root (effective uid {euid}): it creates network namespaces, veths and \
         routes, and bind-mounts volumes; run it with sudo"
    );
    let config = kube::Config::infer()
        .await
        .context("kubeconfig (set KUBECONFIG; `source e2e/.env/env.sh`)")?;
    let api_target = api_target(&config.cluster_url)?;
    let client = kube::Client::try_from(config)?;
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .to_path_buf(),
    };
    let options = Options {
        bin_dir,
        state_dir: args.state_dir,
        namespaces: args.namespaces,
        host_address: args.host_address,
        host_name: args.host_name,
        forwards: args.forwards,
        pod_network: args.pod_network,
        api_address: args.api_address,
        api_target,
        interval: Duration::from_millis(args.interval_ms),
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    Runner::new(client, options).run(shutdown).await
}

fn api_target(url: &http::Uri) -> Result<SocketAddr> {
    let host = url.host().context("the kubeconfig's server has no host")?;
    let port = url.port_u16().unwrap_or(443);
    (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {host}"))
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected an IPv4 network like 10.245.0.0/16"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{len:?}: {e}"))?;
    if !(8..=30).contains(&len) {
        return Err(format!("/{len}: the prefix length must be 8 to 30"));
    }
    Ok((ip, len))
}
