//! Applies `migrations/` (embedded at build time) under PostgreSQL's advisory lock, so
//! several replicas may run it at once: one applies, the others wait and find nothing to do.

use std::collections::BTreeSet;
use std::fmt;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The migrations of `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How rollups and retention are implemented in this database (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// Hypertable, continuous aggregates, compression and retention policies.
    TimescaleDb,
    /// Plain tables; fiber-etl's maintenance loop refreshes rollups and applies retention.
    Postgres,
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageMode::TimescaleDb => "timescaledb",
            StorageMode::Postgres => "postgres",
        })
    }
}

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// `version_description` of each migration this run applied (empty: already up to date).
    pub applied: Vec<String>,
    pub mode: StorageMode,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("reading migration state: {0}")]
    Query(#[from] sqlx::Error),
    #[error("fiberstack_meta.storage_mode is {0:?}, expected timescaledb or postgres")]
    UnknownMode(String),
}

async fn applied_versions(pool: &PgPool) -> Result<BTreeSet<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("select version from _sqlx_migrations where success")
            .fetch_all(pool)
            .await?;
    Ok(versions.into_iter().collect())
}

/// The storage mode recorded by the migrations.
pub async fn storage_mode(pool: &PgPool) -> Result<StorageMode, MigrateError> {
    let mode: String =
        sqlx::query_scalar("select value from fiberstack_meta where key = 'storage_mode'")
            .fetch_one(pool)
            .await?;
    match mode.as_str() {
        "timescaledb" => Ok(StorageMode::TimescaleDb),
        "postgres" => Ok(StorageMode::Postgres),
        _ => Err(MigrateError::UnknownMode(mode)),
    }
}

/// Applies every migration not applied yet. Safe to run again (a no-op) and from several
/// processes at once. Refuses to run when an applied migration's file has changed since.
pub async fn migrate(pool: &PgPool) -> Result<MigrateReport, MigrateError> {
    let before = applied_versions(pool).await?;
    MIGRATOR.run(pool).await?;
    let after = applied_versions(pool).await?;
    let applied = MIGRATOR
        .iter()
        .filter(|m| after.contains(&m.version) && !before.contains(&m.version))
        .map(|m| format!("{}_{}", m.version, m.description))
        .collect();
    Ok(MigrateReport {
        applied,
        mode: storage_mode(pool).await?,
    })
}
