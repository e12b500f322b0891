//! The alert history (table `alerts`, migration 0006): one row per episode, keyed by the
//! alert's id, so writing an episode again (after a crash, by a new leader) updates its row.

use sqlx::PgPool;

use crate::crd::{Alert, AlertState};

/// Writes `alert` as it stands; `notified`: the notifiers that acknowledged its start.
pub async fn record(
    pool: &PgPool,
    namespace: &str,
    probe: &str,
    region: &str,
    alert: &Alert,
    notified: &[String],
) -> Result<(), sqlx::Error> {
    let state = match alert.state {
        AlertState::Resolved => "resolved",
        _ => "firing",
    };
    sqlx::query(
        "insert into alerts (id, namespace, probe, region, target, state, reason, started_at, ended_at, notified)
         values ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz, $9::timestamptz, $10)
         on conflict (id) do update set
             state = excluded.state,
             ended_at = excluded.ended_at,
             notified = coalesce((select array_agg(distinct n order by n)
                                    from unnest(alerts.notified || excluded.notified) n), '{}'),
             updated_at = now()",
    )
    .bind(&alert.id)
    .bind(namespace)
    .bind(probe)
    .bind(region)
    .bind(&alert.target)
    .bind(state)
    .bind(&alert.reason)
    .bind(&alert.starts_at)
    .bind(&alert.ends_at)
    .bind(notified)
    .execute(pool)
    .await?;
    Ok(())
}
