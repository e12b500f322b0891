//! `fiberstack-operator`: configuration, wiring and signals only; the work is in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fiberstack_operator::controller::{self, Settings};
use fiberstack_operator::databases::Databases;
use fiberstack_operator::health::Hysteresis;
use fiberstack_operator::lease::{self, Ended, LeaderLease, LeaseConfig};
use fiberstack_operator::metrics::Metrics;
use fiberstack_operator::render::Images;
use fiberstack_operator::server::{self, Health};
use fiberstack_operator::status;
use fiberstack_operator::statuspage::{self, StatusPage};
use tokio::signal::unix::{SignalKind, signal};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(
    name = "fiberstack-operator",
    version,
    about = "Reconciles FiberRegions into ingest and ETL workloads and FiberProbes into probe DaemonSets, and writes fleet health (from the samples database) into their status.",
    after_help = fiberstack_telemetry::ENV_HELP
)]
struct Config {
    /// Image of the ingest service (runs `fiber-ingest`).
    #[arg(long, env = "FIBER_INGEST_IMAGE", default_value_t = format!("ghcr.io/fiberstack/fiber-ingest:{VERSION}"))]
    ingest_image: String,
    /// Image of the ETL workers (runs `fiber-etl run`).
    #[arg(long, env = "FIBER_ETL_IMAGE", default_value_t = format!("ghcr.io/fiberstack/fiber-etl:{VERSION}"))]
    etl_image: String,
    /// Image of the probe agent (runs `fiber-probe`).
    #[arg(long, env = "FIBER_PROBE_IMAGE", default_value_t = format!("ghcr.io/fiberstack/fiber-probe:{VERSION}"))]
    probe_image: String,
    /// imagePullPolicy of every workload: Always, IfNotPresent or Never.
    #[arg(long, env = "FIBER_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: String,
    /// OTLP/HTTP endpoint (e.g. http://otel-collector.monitoring:4318) set as
    /// OTEL_EXPORTER_OTLP_ENDPOINT in every ingest, ETL and probe pod, so their spans (one
    /// trace per batch, probe → ingest → ETL) are exported. The operator's own spans follow
    /// its OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "FIBER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// ServiceAccount (in each FiberRegion's namespace) that ingest pods run as, allowed to
    /// create TokenReviews (the chart makes it). Set: each probe pod presents its own
    /// projected ServiceAccount token (audience fiberstack-ingest), so it can write only as
    /// its node and FiberProbe; the region's static token stays for probes outside the
    /// cluster. Unset: probe pods mount the region's static token.
    #[arg(long, env = "FIBER_INGEST_SERVICE_ACCOUNT")]
    ingest_service_account: Option<String>,
    /// PostgreSQL URL of a read-only role, for fleet health in status, of every region that
    /// names no reader of its own (spec.database.readerUrlSecretRef). Without either, status
    /// says Reporting=Unknown (DatabaseUnavailable).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema holding FiberStack's tables; the role's default search_path when unset.
    #[arg(long, env = "FIBER_DB_SCHEMA")]
    db_schema: Option<String>,
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, env = "FIBER_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Seconds between status recomputations of each object (at most 30 is the contract).
    #[arg(long, env = "FIBER_STATUS_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=30))]
    status_interval_secs: u64,
    /// Consecutive evaluations a change of health must hold before Healthy follows it.
    #[arg(long, env = "FIBER_HEALTH_EVALUATIONS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    health_evaluations: u32,
    /// Seconds that must pass between two evaluations counted towards that hold.
    #[arg(long, env = "FIBER_HEALTH_EVALUATION_GAP_SECS", default_value_t = 20)]
    health_evaluation_gap_secs: u64,
    /// Reconciles each controller runs at once (0: unbounded).
    #[arg(long, env = "FIBER_RECONCILE_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// The link every alert notification carries (Alertmanager's generatorURL, the
    /// webhook's and Slack's link): a URL template where {namespace}, {probe}, {region} and
    /// {target} are filled in, e.g. a Grafana dashboard:
    /// https://grafana.example/d/fiberstack-target?var-probe={namespace}/{probe}&var-target={target}
    #[arg(long, env = "FIBER_ALERT_LINK")]
    alert_link: Option<String>,
    /// Run without leader election (a single replica only).
    #[arg(long, env = "FIBER_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "FIBER_LEASE_NAME", default_value = "fiberstack-operator")]
    lease_name: String,
    /// Namespace of that Lease; the operator's own namespace in a pod.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease; the pod name in a pod.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader that stops renewing keeps the Lease.
    #[arg(long, env = "FIBER_LEASE_DURATION_SECS", default_value_t = 15)]
    lease_duration_secs: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FIBER_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Serve the read-only status page (/) and SVG badges
    /// (/badges/{namespace}/{probe}[/{target}]/{uptime|latency}.svg?window=24h|7d|30d) on this
    /// address, e.g. 0.0.0.0:8081. Off when unset. Every replica serves it, leader or not.
    #[arg(long, env = "FIBER_STATUS_PAGE_LISTEN")]
    status_page_listen: Option<SocketAddr>,
    /// Make the status page public: it then leaves out target addresses, node names, the
    /// text of conditions and errors, ingest URLs, and FiberProbes annotated
    /// fiberstack.io/status-page: private (hidden ones are never shown).
    #[arg(long, env = "FIBER_STATUS_PAGE_PUBLIC")]
    status_page_public: bool,
    /// Seconds between refreshes of the status page's snapshot (also its Cache-Control
    /// max-age).
    #[arg(long, env = "FIBER_STATUS_PAGE_REFRESH_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=3600))]
    status_page_refresh_secs: u64,
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = fiberstack_telemetry::init("fiberstack-operator");

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", config.metrics_listen))?;
    let app = server::router(metrics.clone(), health.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let db = config
        .database_url
        .as_deref()
        .map(|url| status::connect_lazy(url, config.db_schema.as_deref()))
        .transpose()
        .context("--database-url is not a PostgreSQL URL")?;
    if let Some(addr) = config.status_page_listen {
        let page = StatusPage::new(statuspage::Settings {
            mode: if config.status_page_public {
                statuspage::Mode::Public
            } else {
                statuspage::Mode::Internal
            },
            refresh_every: Duration::from_secs(config.status_page_refresh_secs),
            namespace: config.watch_namespace.clone(),
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --status-page-listen {addr}"))?;
        let databases = Databases::new(db.clone(), config.db_schema.clone());
        tokio::spawn(
            page.clone()
                .run(client.clone(), databases, std::future::pending()),
        );
        let app = statuspage::router(page);
        tokio::spawn(async move { axum::serve(listener, app).await });
        tracing::info!(%addr, public = config.status_page_public, "status page serving");
    }
    let settings = Settings {
        images: Images {
            ingest: config.ingest_image,
            etl: config.etl_image,
            probe: config.probe_image,
            pull_policy: config.image_pull_policy,
            otlp_endpoint: config.otlp_endpoint,
            ingest_service_account: config.ingest_service_account.filter(|s| !s.is_empty()),
        },
        namespace: config.watch_namespace,
        db_schema: config.db_schema.clone(),
        status_every: Duration::from_secs(config.status_interval_secs),
        hysteresis: Hysteresis {
            evaluations: config.health_evaluations,
            min_gap: Duration::from_secs(config.health_evaluation_gap_secs),
        },
        concurrency: config.concurrency,
        alert_link: config.alert_link.clone(),
        prune_every: Duration::from_secs(300),
    };

    let lease = (!config.no_leader_election).then(|| {
        LeaderLease::new(
            client.clone(),
            LeaseConfig {
                name: config.lease_name,
                namespace: config.lease_namespace,
                identity: config
                    .identity
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| format!("fiberstack-operator-{}", std::process::id())),
                duration: Duration::from_secs(config.lease_duration_secs),
                renew_every: Duration::from_secs((config.lease_duration_secs / 3).max(1)),
            },
        )
    });
    // A standby is ready: it serves and will take over; only the leader reconciles.
    health.ready.store(true, Ordering::Relaxed);
    // Said at once, so a standby's log is not empty while it waits for the lease.
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        metrics = %config.metrics_listen,
        namespace = settings.namespace.as_deref().unwrap_or("(all)"),
        lease = lease.as_ref().map_or("(no leader election)", |_| "waiting for it"),
        "fiberstack-operator started"
    );
    let ended = lease::lead(lease.as_ref(), shutdown_signal(), |stop| {
        metrics.leader.set(1);
        controller::run(client, settings, db, metrics.clone(), async move {
            let _ = stop.await;
        })
    })
    .await;
    if ended == Ended::LostLease {
        // Another replica leads now; exit so that this one restarts as a standby.
        anyhow::bail!("lost the leader lease");
    }
    Ok(())
}
