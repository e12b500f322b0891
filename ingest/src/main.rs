//! `fiber-ingest`: configuration, wiring and signals only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::Token;
use fiber_ingest::dashboard::CorsOrigins;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiberstack_plumbing::postgres::DbConfig;

/// FiberStack's HTTP ingest: probes POST batches of samples to /api/v1/samples (bearer
/// token, JSON, gzip accepted, at most 1 MiB and 5000 samples, of this region only); a batch
/// is answered 202 only after it was appended to the region's Redis stream
/// fiber:samples:<region>, and a sample that could not be stored as sent is refused by name.
/// POST /api/push takes the original single-sample contract onto the same path.
#[derive(Parser)]
#[command(name = "fiber-ingest", version, after_help = fiberstack_telemetry::ENV_HELP)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "FIBER_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Redis URL, e.g. redis://redis:6379
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: String,
    /// The FiberRegion this service ingests for (names the stream). A batch whose `region`
    /// is another is refused with 403.
    #[arg(long, env = "FIBER_REGION")]
    region: String,
    /// The region's probe token (at least 16 characters). Prefer --token-file.
    #[arg(
        long,
        env = "FIBER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the region's probe token (a mounted Secret).
    #[arg(long, env = "FIBER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Batches per second each node may send on average.
    #[arg(long, env = "FIBER_RATE_PER_NODE", default_value_t = 5.0)]
    rate_per_node: f64,
    /// Batches a node may send at once above its average rate.
    #[arg(long, env = "FIBER_RATE_BURST", default_value_t = 50)]
    rate_burst: u32,
    /// PostgreSQL URL (read-only role) for the read API, GET /api/v1/nodes and
    /// /api/v1/metrics; without it those answer 503. TLS: `?sslmode=verify-full&sslrootcert=…`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema holding FiberStack's tables; the role's default search_path when unset.
    #[arg(long, env = "FIBER_DB_SCHEMA")]
    db_schema: Option<String>,
    /// Stream length (entries, one batch each) above which batches are refused with 503:
    /// the ETL is behind, and probes keep their samples on disk meanwhile instead of Redis
    /// holding them in memory. 10,000 batches of 500 samples are about 1 GB.
    #[arg(long, env = "FIBER_MAX_BACKLOG", default_value_t = 10_000)]
    max_backlog: u64,
    /// Origins whose browsers may read GET /api/metrics and /api/nodes, comma-separated, e.g.
    /// https://dashboard.example.org,http://localhost:3000. None by default: no CORS header
    /// is sent and every preflight is refused.
    #[arg(long, env = "FIBER_CORS_ORIGINS", default_value = "")]
    cors_origins: String,
    /// Requests a minute each client address may make to GET /api/metrics and /api/nodes
    /// together (all at once at most); beyond that they are answered 429 with Retry-After.
    #[arg(long, env = "FIBER_READ_RATE_PER_MINUTE", default_value_t = fiber_ingest::dashboard::DEFAULT_READ_RATE_PER_MINUTE)]
    read_rate_per_minute: u32,
}

fn token(config: &Config) -> anyhow::Result<Token> {
    let text = match (&config.token, &config.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading FIBER_TOKEN_FILE {}", path.display()))?,
        (None, None) => bail!("no probe token: set FIBER_TOKEN_FILE (or FIBER_TOKEN)"),
    };
    Token::new(&text).map_err(|e| anyhow::anyhow!("probe token: {e}"))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let token = token(&config)?;
    if config.rate_per_node.is_nan() || config.rate_per_node <= 0.0 {
        bail!("--rate-per-node {} must be above 0", config.rate_per_node);
    }
    let redis = fiber_ingest::stream::connect(&config.redis_url)
        .await
        .context("REDIS_URL")?;
    let writer = StreamWriter::new(redis, &config.region, config.max_backlog);
    let cors = CorsOrigins::parse(&config.cors_origins)
        .map_err(|e| anyhow::anyhow!("--cors-origins: {e}"))?;
    if config.read_rate_per_minute == 0 {
        bail!("--read-rate-per-minute must be above 0");
    }
    let limiter = RateLimiter::new(config.rate_per_node, config.rate_burst);
    let mut state = AppState::new(&config.region, token, limiter, writer)
        .with_read_rate(config.read_rate_per_minute)
        .with_cors_origins(cors);
    if let Some(url) = &config.database_url {
        let db = DbConfig {
            schema: config.db_schema.clone(),
            ..DbConfig::new(url)
        };
        // Read-only, and the schema is only searched: the read API's role may create nothing.
        state = state.with_database(db.connect_read_only().await?);
    }
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(listen = %config.listen, region = %config.region, "ingest ready");
    // The peer address keys the dashboard API's rate limit.
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("shutting down: finishing requests in flight");
        })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let _telemetry = fiberstack_telemetry::init("fiber-ingest");
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fiber-ingest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
