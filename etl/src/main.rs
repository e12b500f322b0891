//! `fiber-etl`: configuration, wiring and signals only; the work is in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fiber_etl::db::{DbConfig, redact};
use fiber_etl::migrate::migrate;

#[derive(Parser)]
#[command(
    name = "fiber-etl",
    version,
    about = "FiberStack's database side. `fiber-etl migrate` applies the schema migrations to PostgreSQL or TimescaleDB."
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
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// PostgreSQL URL of a role allowed to create tables (and, for TimescaleDB, the
    /// extension), e.g. postgres://fiberstack:secret@db:5432/fiberstack?sslmode=disable
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Schema to create FiberStack's objects in (created if missing); the role's default
    /// search_path when unset.
    #[arg(long, env = "FIBER_DB_SCHEMA")]
    schema: Option<String>,
}

fn init_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIBER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = DbConfig {
        schema: args.schema,
        max_connections: 1,
        ..DbConfig::new(args.database_url)
    };
    let pool = config.connect().await?;
    let report = migrate(&pool).await?;
    if report.applied.is_empty() {
        tracing::info!(mode = %report.mode, database = %redact(&config.url), "schema already up to date");
    } else {
        tracing::info!(mode = %report.mode, applied = ?report.applied, database = %redact(&config.url), "migrations applied");
    }
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Migrate(args) => run_migrate(args).await,
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
