//! `fiber-etl`: configuration, wiring and signals only; the work is in the library.

use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fiber_etl::consumer::{Consumer, ConsumerConfig, Stats};
use fiber_etl::migrate::{
    Grant, Retention, RetentionPeriod, current_retention, ensure_login, migrate, set_retention,
};
use fiberstack_plumbing::metrics;
use fiberstack_plumbing::postgres::DbConfig;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "fiber-etl",
    version,
    about = "FiberStack's database side: `fiber-etl migrate` applies the schema migrations; `fiber-etl run` moves samples from a region's Redis stream into PostgreSQL/TimescaleDB.",
    after_help = fiberstack_telemetry::ENV_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations (idempotent; safe to run from several replicas at once,
    /// they serialize on an advisory lock). Uses TimescaleDB (hypertable, continuous
    /// aggregates, compression and retention policies) when the extension is available,
    /// plain PostgreSQL tables otherwise.
    Migrate(MigrateArgs),
    /// Consume the region's stream fiber:samples:<region> as consumer group fiber-etl and
    /// write the batches into the database. Acknowledges an entry only after its samples are
    /// committed; entries that can never be stored go to fiber:dlq:<region> with the reason.
    /// On database errors nothing is acknowledged and the write is retried with backoff.
    /// SIGTERM finishes the batch in hand, acknowledges it and exits.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Redis URL, e.g. redis://redis:6379
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: String,
    /// PostgreSQL URL of the writer role (the schema must be migrated). TLS with
    /// `?sslmode=require`, or `?sslmode=verify-full&sslrootcert=/path/ca.crt` to verify the
    /// server (the system's roots are used without sslrootcert).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Schema holding FiberStack's tables; the role's default search_path when unset.
    #[arg(long, env = "FIBER_DB_SCHEMA")]
    schema: Option<String>,
    /// The FiberRegion whose stream to consume.
    #[arg(long, env = "FIBER_REGION")]
    region: String,
    /// This worker's name in the consumer group; defaults to the host name (the pod name).
    #[arg(long, env = "FIBER_CONSUMER")]
    consumer: Option<String>,
    /// Most stream entries (batches of up to 5000 samples) written per transaction.
    #[arg(long, env = "FIBER_ETL_READ_COUNT", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    read_count: u16,
    /// Milliseconds to wait, after a read that found fewer entries than the read count, for
    /// more to write in the same transaction (fewer, larger transactions under moderate load;
    /// adds at most this to freshness). 0 writes every read at once.
    #[arg(long, env = "FIBER_ETL_LINGER_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1000))]
    linger_ms: u64,
    /// Seconds an entry may stay unacknowledged in another worker before this one takes it
    /// over (the other worker is presumed dead).
    #[arg(long, env = "FIBER_ETL_CLAIM_IDLE_SECS", default_value_t = 60)]
    claim_idle_secs: u64,
    /// Seconds between maintenance rounds in plain-PostgreSQL mode (refreshing the hourly
    /// and daily rollups, applying retention); TimescaleDB does this with its own policies.
    #[arg(long, env = "FIBER_ETL_MAINTENANCE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    maintenance_secs: u64,
    /// Address of this worker's /metrics (Prometheus) and /healthz.
    #[arg(long, env = "FIBER_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: std::net::SocketAddr,
    /// Database connections in the pool.
    #[arg(long, env = "FIBER_DB_MAX_CONNECTIONS", default_value_t = 4)]
    db_max_connections: u32,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// PostgreSQL URL of a role allowed to create tables (and, for TimescaleDB, the
    /// extension), e.g. postgres://fiberstack:secret@db:5432/fiberstack?sslmode=verify-full
    /// (sslmode disable|prefer|require|verify-ca|verify-full; sslrootcert=/path/ca.crt)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Schema to create FiberStack's objects in (created if missing); the role's default
    /// search_path when unset.
    #[arg(long, env = "FIBER_DB_SCHEMA")]
    schema: Option<String>,
    /// How long raw samples are kept, e.g. 7d or 36h (default 7d; unset: keep the current
    /// setting).
    #[arg(long, env = "FIBER_RETAIN_RAW")]
    retain_raw: Option<RetentionPeriod>,
    /// How long hourly rollups are kept (default 90d; unset: keep the current setting).
    #[arg(long, env = "FIBER_RETAIN_HOURLY")]
    retain_hourly: Option<RetentionPeriod>,
    /// How long daily rollups are kept (default 365d; unset: keep the current setting).
    #[arg(long, env = "FIBER_RETAIN_DAILY")]
    retain_daily: Option<RetentionPeriod>,
    /// Create (or update) this login user as a member of fiberstack_reader (read-only:
    /// Grafana, the read API, the operator); its password from --reader-password.
    #[arg(long, env = "FIBER_READER_USER", requires = "reader_password")]
    reader_user: Option<String>,
    #[arg(long, env = "FIBER_READER_PASSWORD", hide_env_values = true)]
    reader_password: Option<String>,
    /// Create (or update) this login user as a member of fiberstack_writer (fiber-etl run);
    /// its password from --writer-password.
    #[arg(long, env = "FIBER_WRITER_USER", requires = "writer_password")]
    writer_user: Option<String>,
    #[arg(long, env = "FIBER_WRITER_PASSWORD", hide_env_values = true)]
    writer_password: Option<String>,
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = DbConfig {
        schema: args.schema,
        max_connections: 1,
        ..DbConfig::new(args.database_url)
    };
    let pool = config.connect().await?;
    let report = migrate(&pool).await?;
    let retention = Retention {
        raw: args.retain_raw,
        hourly: args.retain_hourly,
        daily: args.retain_daily,
    };
    let [raw, hourly, daily] = if retention.is_unchanged() {
        current_retention(&pool).await?
    } else {
        set_retention(&pool, retention).await?
    };
    tracing::info!(raw = %raw, hourly = %hourly, daily = %daily, "retention");
    for (user, password, grant) in [
        (&args.reader_user, &args.reader_password, Grant::Reader),
        (&args.writer_user, &args.writer_password, Grant::Writer),
    ] {
        if let (Some(user), Some(password)) = (user, password) {
            ensure_login(&pool, user, password, grant).await?;
            tracing::info!(user = %user, role = ?grant, "login user ready");
        }
    }
    if report.applied.is_empty() {
        tracing::info!(mode = %report.mode, database = %config.redacted_url(), "schema already up to date");
    } else {
        tracing::info!(mode = %report.mode, applied = ?report.applied, database = %config.redacted_url(), "migrations applied");
    }
    pool.close().await;
    Ok(())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fiber-etl".to_owned())
}

/// Turns true on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the batch in hand"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn run_consumer(args: RunArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let db = DbConfig {
        schema: args.schema,
        max_connections: args.db_max_connections,
        ..DbConfig::new(args.database_url)
    };
    let pool = db.connect().await?;
    let mut config = ConsumerConfig::new(args.region, args.consumer.unwrap_or_else(host_name));
    let redis = fiber_etl::consumer::redis_config(&args.redis_url, &config)
        .connection_manager()
        .await?;
    config.read_count = usize::from(args.read_count);
    config.claim_idle = Duration::from_secs(args.claim_idle_secs);
    config.linger = Duration::from_millis(args.linger_ms);
    tracing::info!(region = %config.region, consumer = %config.consumer, database = %db.redacted_url(), "consuming");
    let mut consumer = Consumer::new(redis, pool.clone(), config);
    let stats = consumer.stats();
    let registry = std::sync::Arc::new(fiber_etl::metrics::registry(stats.clone()));
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("listening on {} for /metrics", args.metrics_listen))?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let registry = registry.clone();
                async move {
                    let accept = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let (content_type, text) = metrics::exposition(&registry, accept);
                    ([(axum::http::header::CONTENT_TYPE, content_type)], text)
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    let maintenance = tokio::spawn(fiber_etl::maintenance::run(
        pool.clone(),
        stats.clone(),
        Duration::from_secs(args.maintenance_secs),
        shutdown.clone(),
    ));
    consumer.run(shutdown).await?;
    let _ = maintenance.await;
    tracing::info!(
        entries = Stats::get(&stats.entries_received),
        samples_written = Stats::get(&stats.samples_written),
        dead_lettered = Stats::get(&stats.dead_lettered),
        "stopped"
    );
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = fiberstack_telemetry::init("fiber-etl");
    let result = match cli.command {
        Command::Migrate(args) => run_migrate(args).await,
        Command::Run(args) => run_consumer(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fiber-etl failed");
            eprintln!("fiber-etl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
