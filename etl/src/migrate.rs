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

/// A retention period: whole days or hours, at least one hour (`7d`, `36h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPeriod {
    hours: u32,
}

impl RetentionPeriod {
    pub fn days(days: u32) -> Self {
        Self { hours: days * 24 }
    }

    /// The period as PostgreSQL interval text.
    pub fn as_interval(&self) -> String {
        match self.hours % 24 {
            0 => format!("{} days", self.hours / 24),
            _ => format!("{} hours", self.hours),
        }
    }
}

impl std::str::FromStr for RetentionPeriod {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad = || {
            format!(
                "{text:?} is not a retention period such as 7d or 36h (whole days or hours, at least 1h)"
            )
        };
        let (number, per) = if let Some(n) = t.strip_suffix('d') {
            (n, 24)
        } else if let Some(n) = t.strip_suffix('h') {
            (n, 1)
        } else {
            return Err(bad());
        };
        let n: u32 = number.parse().map_err(|_| bad())?;
        let hours = n.checked_mul(per).filter(|h| *h >= 1).ok_or_else(bad)?;
        // Ten years: past that a typo (`3650000d`) is likelier than intent.
        if hours > 24 * 3653 {
            return Err(format!("{text:?} is over ten years"));
        }
        Ok(Self { hours })
    }
}

/// How long raw samples and the two rollups are kept. `None`: leave the current setting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw: Option<RetentionPeriod>,
    pub hourly: Option<RetentionPeriod>,
    pub daily: Option<RetentionPeriod>,
}

impl Retention {
    pub fn is_unchanged(&self) -> bool {
        self.raw.is_none() && self.hourly.is_none() && self.daily.is_none()
    }
}

/// Sets the retention periods (TimescaleDB: replaces the retention policies; plain
/// PostgreSQL: the maintenance loop reads them) and returns the settings now in force, as
/// PostgreSQL interval text: raw, hourly, daily.
pub async fn set_retention(
    pool: &PgPool,
    retention: Retention,
) -> Result<[String; 3], sqlx::Error> {
    let text = |p: Option<RetentionPeriod>| p.map(|p| p.as_interval());
    sqlx::query(
        "select fiberstack_set_retention(coalesce($1::interval, fiberstack_retention('raw')),
                                         coalesce($2::interval, fiberstack_retention('hourly')),
                                         coalesce($3::interval, fiberstack_retention('daily')))",
    )
    .bind(text(retention.raw))
    .bind(text(retention.hourly))
    .bind(text(retention.daily))
    .execute(pool)
    .await?;
    current_retention(pool).await
}

/// The retention periods in force: raw, hourly, daily.
pub async fn current_retention(pool: &PgPool) -> Result<[String; 3], sqlx::Error> {
    let (raw, hourly, daily) = sqlx::query_as(
        "select fiberstack_retention('raw')::text, fiberstack_retention('hourly')::text,
                fiberstack_retention('daily')::text",
    )
    .fetch_one(pool)
    .await?;
    Ok([raw, hourly, daily])
}

/// Which of the roles the migrations create a login user joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `fiberstack_writer`: the ETL and the ingest service.
    Writer,
    /// `fiberstack_reader`: Grafana, the read API, the operator.
    Reader,
}

impl Grant {
    fn role(self) -> &'static str {
        match self {
            Grant::Writer => "fiberstack_writer",
            Grant::Reader => "fiberstack_reader",
        }
    }
}

/// Creates login user `user` as a member of `grant`'s role, or sets its password and
/// membership when it exists, so a deployment can hand each component a user with only the
/// rights it needs. The password travels as a bound parameter, never inside SQL text.
pub async fn ensure_login(
    pool: &PgPool,
    user: &str,
    password: &str,
    grant: Grant,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select set_config('fiberstack.login_user', $1, true), set_config('fiberstack.login_password', $2, true), set_config('fiberstack.login_role', $3, true)")
        .bind(user)
        .bind(password)
        .bind(grant.role())
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "do $login$
         declare
             u text := current_setting('fiberstack.login_user');
             p text := current_setting('fiberstack.login_password');
             r text := current_setting('fiberstack.login_role');
         begin
             if exists (select 1 from pg_roles where rolname = u) then
                 execute format('alter role %I login password %L', u, p);
             else
                 execute format('create role %I login password %L', u, p);
             end if;
             execute format('grant %I to %I', r, u);
         end
         $login$",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
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
    let mode = storage_mode(pool).await?;
    if mode == StorageMode::TimescaleDb {
        fill_once(pool, "latency_histograms_filled", &LATENCY_HISTOGRAMS).await?;
        fill_once(pool, "latency_6h_filled", &["metrics_latency_6h"]).await?;
    }
    Ok(MigrateReport { applied, mode })
}

/// The continuous aggregates of migration 0007.
const LATENCY_HISTOGRAMS: [&str; 4] = [
    "metrics_latency_hourly",
    "metrics_latency_daily",
    "metrics_latency_node_hourly",
    "metrics_latency_node_daily",
];

/// Continuous aggregates a migration added, filled once (recorded in `fiberstack_meta` under
/// `key`) from what they aggregate: their refresh policies only ever cover the last days
/// (0007's hourly 1, daily 3; 0011's six-hour 3), and once a policy has run, a real-time
/// aggregate no longer computes what lies before its watermark — an installation upgraded to
/// 0007 would show latency percentiles of the last days only, and one upgraded to 0011 would
/// read six-hour histograms that are not there for older ranges. 0007's are filled from the
/// raw samples still kept, 0011's from the hourly histograms (kept longer). `CALL
/// refresh_continuous_aggregate` cannot run inside the migration's transaction, so it runs
/// here, after it, once; on a fresh database it finds nothing to do.
async fn fill_once(pool: &PgPool, key: &str, views: &[&str]) -> Result<(), sqlx::Error> {
    let done: Option<String> =
        sqlx::query_scalar("select value from fiberstack_meta where key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?;
    if done.is_some() {
        return Ok(());
    }
    for view in views {
        let started = std::time::Instant::now();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "call refresh_continuous_aggregate('{view}', null, now())"
        )))
        .execute(pool)
        .await?;
        tracing::info!(
            view,
            seconds = started.elapsed().as_secs_f64(),
            "filled from what it aggregates"
        );
    }
    sqlx::query("insert into fiberstack_meta (key, value) values ($1, now()::text) on conflict (key) do nothing")
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_periods_parse_days_and_hours_only() {
        assert_eq!("7d".parse(), Ok(RetentionPeriod::days(7)));
        assert_eq!(
            "36h".parse::<RetentionPeriod>().unwrap().as_interval(),
            "36 hours"
        );
        for bad in [
            "", "d", "0d", "0h", "7", "7 days", "1.5d", "-1d", "3w", "4000d",
        ] {
            let e = bad.parse::<RetentionPeriod>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
