//! The maintenance loop of plain-PostgreSQL mode: what TimescaleDB's background jobs do
//! (refreshing the hourly and daily rollups — the summaries of migration 0002 and the latency
//! histograms of 0007, all in `fiberstack_refresh_rollups` — and dropping data past retention)
//! done by the ETL. In TimescaleDB mode the database's own policies do it and this loop does
//! nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::consumer::Stats;
use crate::migrate::{StorageMode, storage_mode};

/// What one maintenance round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintained {
    /// Start of the refreshed window, when samples had been written since the last round.
    pub refreshed_from: Option<DateTime<Utc>>,
}

/// One round: refresh the rollups from the earliest sample written since the last round,
/// then apply retention. A failed refresh leaves the window marked for the next round.
pub async fn maintain_once(pool: &PgPool, stats: &Stats) -> Result<Maintained, sqlx::Error> {
    let since = stats.dirty_since.swap(i64::MAX, Ordering::Relaxed);
    let from = (since != i64::MAX)
        .then(|| DateTime::<Utc>::from_timestamp(since, 0))
        .flatten();
    if let Some(from) = from {
        let refreshed = sqlx::query("select fiberstack_refresh_rollups($1, 'infinity')")
            .bind(from)
            .execute(pool)
            .await;
        if let Err(e) = refreshed {
            stats.dirty_since.fetch_min(since, Ordering::Relaxed);
            return Err(e);
        }
    }
    sqlx::query("select fiberstack_apply_retention()")
        .execute(pool)
        .await?;
    Ok(Maintained {
        refreshed_from: from,
    })
}

/// Runs [`maintain_once`] every `every` until shutdown, in plain-PostgreSQL mode only.
pub async fn run(
    pool: PgPool,
    stats: Arc<Stats>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    match storage_mode(&pool).await {
        Ok(StorageMode::TimescaleDb) => {
            tracing::info!("TimescaleDB mode: rollups and retention are the database's policies");
            return;
        }
        Ok(StorageMode::Postgres) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot tell the storage mode; is the schema migrated? no maintenance");
            return;
        }
    }
    while !*shutdown.borrow() {
        match maintain_once(&pool, &stats).await {
            Ok(m) => tracing::debug!(refreshed_from = ?m.refreshed_from, "maintenance done"),
            Err(e) => tracing::warn!(error = %e, "maintenance failed; retrying next round"),
        }
        let _ = tokio::time::timeout(every, shutdown.changed()).await;
    }
}
