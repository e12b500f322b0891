//! `fiber-ingest`: configuration, wiring and signals only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use fiber_ingest::api::{AppState, router};
use fiber_ingest::auth::{Token, TokenReviewer, WhenMissing};
use fiber_ingest::dashboard::CorsOrigins;
use fiber_ingest::ratelimit::RateLimiter;
use fiber_ingest::stream::StreamWriter;
use fiber_ingest::tls::ReloadingCertificate;
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
    /// The region's probe (writer) token, at least 16 characters; several, comma- or
    /// newline-separated, are all valid at once (rotation: `new,old`, move the probes, drop
    /// `old`). It writes and never reads. Prefer --token-file.
    #[arg(
        long,
        env = "FIBER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the region's probe token(s) (a mounted Secret), as --token. Re-read
    /// every --token-reload-secs: a rotation (`new,old`, then `new`) needs no restart.
    #[arg(long, env = "FIBER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Seconds between looks at --token-file and --reader-token-file for a change.
    #[arg(long, env = "FIBER_TOKEN_RELOAD_SECS", default_value_t = 10)]
    token_reload_secs: u64,
    /// The read API's token(s) (GET /api/v1/*, /api/metrics, /api/nodes), as --token: it
    /// reads and never writes, and a probe token is refused there (403). Without one the read
    /// API answers 401 to everyone. Prefer --reader-token-file.
    #[arg(
        long,
        env = "FIBER_READER_TOKEN",
        hide_env_values = true,
        conflicts_with = "reader_token_file"
    )]
    reader_token: Option<String>,
    /// File holding the reader token(s) (a mounted Secret), re-read as --token-file. While
    /// the file does not exist (an optional Secret not made yet, or deleted) the read API is
    /// closed; tokens written to it later are taken at the next look, and deleting it closes
    /// the read API again at the next look.
    #[arg(long, env = "FIBER_READER_TOKEN_FILE")]
    reader_token_file: Option<PathBuf>,
    /// Also take probe pods' projected ServiceAccount tokens of this audience, verified by a
    /// TokenReview against the Kubernetes API (in-cluster, or KUBECONFIG; needs `create` on
    /// `tokenreviews`). Such a token writes only as its pod's node and FiberProbe: a batch
    /// that says otherwise is refused with 403. Unset: only the region token writes.
    #[arg(long, env = "FIBER_TOKEN_AUDIENCE")]
    token_audience: Option<String>,
    /// Seconds a token the Kubernetes API vouched for is taken without asking again (a token
    /// revoked meanwhile, its pod deleted, is taken at most this long); 0 asks every time.
    #[arg(long, env = "FIBER_TOKEN_REVIEW_CACHE_SECS", default_value_t = 60)]
    token_review_cache_secs: u64,
    /// Serve HTTPS with this PEM certificate (chain), e.g. `tls.crt` of a mounted
    /// `kubernetes.io/tls` Secret (cert-manager's). Re-read when it changes: a renewed
    /// certificate is served without a restart. Needs --tls-key-file.
    #[arg(long, env = "FIBER_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --tls-cert-file (PKCS#8, PKCS#1 or SEC1), e.g. `tls.key`.
    #[arg(long, env = "FIBER_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Seconds between looks at the certificate files for a change.
    #[arg(long, env = "FIBER_TLS_RELOAD_SECS", default_value_t = 10)]
    tls_reload_secs: u64,
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
    /// Seconds a batch may wait in the stream for the ETL (fractions allowed): new batches
    /// are refused with 503 and Retry-After while the oldest one not yet read has waited
    /// that long, or while a new one would (the appends still unread, from that one to the
    /// last this ingest accepted, over the speed at which the ETL was measured getting
    /// through a backlog). At saturation this bounds how stale stored samples
    /// get, where the length cap alone lets the backlog grow to half a minute of samples.
    /// 0 turns it off (only --max-backlog applies).
    #[arg(long, env = "FIBER_MAX_BACKLOG_AGE", default_value_t = fiber_ingest::stream::DEFAULT_MAX_AGE.as_secs_f64())]
    max_backlog_age: f64,
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

/// The reader token, if one is configured; a configured file that is absent is an empty
/// token (the read API closed) that the file's watch fills when the file appears.
fn reader_token(config: &Config) -> anyhow::Result<Option<Token>> {
    let text = match (&config.reader_token, &config.reader_token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no reader token file: the read API is closed until it appears");
                return Ok(Some(Token::none()));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading FIBER_READER_TOKEN_FILE {}", path.display())
                });
            }
        },
        (None, None) => return Ok(None),
    };
    let reader = Token::new(&text).map_err(|e| anyhow::anyhow!("reader token: {e}"))?;
    Ok(Some(reader))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let token = token(&config)?;
    let reader = reader_token(&config)?;
    if config.rate_per_node.is_nan() || config.rate_per_node <= 0.0 {
        bail!("--rate-per-node {} must be above 0", config.rate_per_node);
    }
    let redis = fiber_ingest::stream::connect(&config.redis_url)
        .await
        .context("REDIS_URL")?;
    if !(config.max_backlog_age >= 0.0 && config.max_backlog_age.is_finite()) {
        bail!(
            "--max-backlog-age {} must be 0 or more seconds",
            config.max_backlog_age
        );
    }
    let writer = StreamWriter::new(redis, &config.region, config.max_backlog)
        .with_max_age(std::time::Duration::from_secs_f64(config.max_backlog_age));
    let cors = CorsOrigins::parse(&config.cors_origins)
        .map_err(|e| anyhow::anyhow!("--cors-origins: {e}"))?;
    if config.read_rate_per_minute == 0 {
        bail!("--read-rate-per-minute must be above 0");
    }
    let limiter = RateLimiter::new(config.rate_per_node, config.rate_burst);
    let mut state = AppState::new(&config.region, token, limiter, writer)
        .with_read_rate(config.read_rate_per_minute)
        .with_cors_origins(cors);
    if let Some(reader) = reader {
        if reader.overlaps(&state.token) {
            bail!("the reader token is also a probe token: give the read API a token of its own");
        }
        state = state.with_reader_token(reader);
    }
    // Rotation without a restart: the files are polled, as the certificate is.
    let every = std::time::Duration::from_secs(config.token_reload_secs.max(1));
    if let (None, Some(path)) = (&config.token, &config.token_file) {
        let writers = state.token.clone();
        let readers = state.reader.clone();
        tokio::spawn(writers.watch(
            path.clone(),
            every,
            "probe token",
            readers,
            WhenMissing::Keep,
        ));
    }
    if let (None, Some(path), Some(reader)) = (
        &config.reader_token,
        &config.reader_token_file,
        state.reader.clone(),
    ) {
        let writers = Some(state.token.clone());
        tokio::spawn(reader.watch(
            path.clone(),
            every,
            "reader token",
            writers,
            WhenMissing::Close,
        ));
    }
    if let Some(audience) = config.token_audience.as_deref().filter(|a| !a.is_empty()) {
        let client = kube::Client::try_default().await.context(
            "--token-audience: connecting to the Kubernetes API (in-cluster or KUBECONFIG)",
        )?;
        let ttl = std::time::Duration::from_secs(config.token_review_cache_secs);
        state = state.with_token_review(TokenReviewer::new(client, audience, ttl));
    }
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
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
    };
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let certificate = ReloadingCertificate::load(cert, key)
                .map_err(|e| anyhow::anyhow!("--tls-cert-file/--tls-key-file: {e}"))?;
            let tls = certificate.server_config()?;
            tokio::spawn(certificate.watch(std::time::Duration::from_secs(
                config.tls_reload_secs.max(1),
            )));
            tracing::info!(listen = %config.listen, region = %config.region, "ingest ready (HTTPS)");
            fiber_ingest::tls::serve(
                listener,
                router(state),
                tls,
                shutdown,
                std::time::Duration::from_secs(25),
            )
            .await?;
        }
        (None, None) => {
            tracing::info!(listen = %config.listen, region = %config.region, "ingest ready");
            // The peer address keys the dashboard API's rate limit.
            let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        _ => bail!("--tls-cert-file and --tls-key-file go together: give both or neither"),
    }
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
