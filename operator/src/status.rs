//! Fleet health from the database — the SQL of the gather step: which nodes report, the
//! newest sample, and the 15-minute figures of a probe, of each of its targets, and of each
//! target from each node (for localization).
//! Read-only; the figures are computed from the samples of the window (percentiles are never
//! averaged). What the figures mean for health is decided in [`crate::health`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::crd::Summary;

/// The window of `summary` and `targets`.
pub const WINDOW: &str = "15 minutes";
/// Samples are "recent" within this many probe intervals.
pub const REPORTING_INTERVALS: u32 = 3;

/// A small read-only pool (fiberstack-plumbing's): it connects lazily, so the operator starts
/// and keeps running without a database, and every transaction is read-only. Errors name the
/// URL without its password.
pub fn connect_lazy(
    url: &str,
    schema: Option<&str>,
) -> Result<PgPool, fiberstack_plumbing::postgres::DbError> {
    fiberstack_plumbing::postgres::DbConfig {
        schema: schema.map(str::to_owned),
        ..fiberstack_plumbing::postgres::DbConfig::new(url)
    }
    .connect_lazy_read_only()
}

/// A region's stream as its ETL last recorded it in `stream_stats`: the ETL owns these
/// figures (it reads them from Redis at every housekeeping round); the operator reads them
/// here and needs no connection to any region's Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFigures {
    /// Entries in `fiber:samples:<region>`: not yet written, or written and not yet trimmed.
    pub length: u64,
    /// Entries delivered to an ETL worker and not yet acknowledged.
    pub pending: u64,
    /// Entries in `fiber:dlq:<region>`.
    pub dead_letters: u64,
    /// When the ETL recorded them.
    pub recorded_at: DateTime<Utc>,
}

/// The newest figures the region's ETL recorded; None before its first record.
pub async fn stream_figures(
    pool: &PgPool,
    region: &str,
) -> Result<Option<StreamFigures>, sqlx::Error> {
    let row: Option<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
        "select time, stream_length, pending, dead_letters from stream_stats
          where region = $1 order by time desc limit 1",
    )
    .bind(region)
    .fetch_optional(pool)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(row.map(|(time, length, pending, dead)| StreamFigures {
        length: count(length),
        pending: count(pending),
        dead_letters: count(dead),
        recorded_at: time,
    }))
}

/// What the database says about one probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Nodes with a sample within [`REPORTING_INTERVALS`] intervals, sorted.
    pub reporting_nodes: Vec<String>,
    pub last_sample: Option<DateTime<Utc>>,
    pub summary: Summary,
    /// Targets with samples in the window, by name.
    pub targets: Vec<(String, Summary)>,
    /// HTTPS targets' certificate expiry (notAfter), by name: the earliest over the nodes, each
    /// node's from its newest sample of the window that saw a certificate (so a renewed
    /// certificate counts from its first sample on).
    pub certificates: Vec<(String, DateTime<Utc>)>,
    /// Each target from each vantage point (node) that measured it in the window, by target
    /// name: what [`crate::localize`] judges.
    pub vantages: Vec<(String, crate::localize::Vantage)>,
}

type Row = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);
/// A sample that saw a certificate: target, time, `cert_not_after`, `cert_days_to_expiry`.
type CertificateRow = (String, DateTime<Utc>, Option<String>, Option<String>);
/// A target from one vantage point: target, node, region, newest sample, then [`Row`].
type VantageRow = (
    String,
    String,
    String,
    DateTime<Utc>,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);
type TargetRow = (
    String,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

fn summary((samples, p50, p95, loss, uptime): Row) -> Summary {
    let round = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
    Summary {
        samples,
        latency_p50_ms: round(p50),
        latency_p95_ms: round(p95),
        packet_loss_pct: round(loss),
        uptime_pct: round(uptime),
    }
}

/// The figures of a group of samples, as a literal so queries stay `&'static str`.
macro_rules! figures {
    () => {
        "count(*)::int8,
         percentile_cont(0.5) within group (order by latency_ms),
         percentile_cont(0.95) within group (order by latency_ms),
         avg(packet_loss)::float8,
         (100.0 * avg(case when up then 1 else 0 end))::float8"
    };
}

/// `probe` is `namespace/name`; `targets` are the spec's target names (the newest sample is
/// looked up per target, which the (probe, target, time) index answers directly).
pub async fn probe_figures(
    pool: &PgPool,
    probe: &str,
    targets: &[String],
    interval: Duration,
) -> Result<Figures, sqlx::Error> {
    let recent = interval.as_secs_f64() * f64::from(REPORTING_INTERVALS);
    let reporting_nodes: Vec<String> = sqlx::query_scalar(
        "select distinct node from metrics
          where probe = $1 and time > now() - make_interval(secs => $2) order by node",
    )
    .bind(probe)
    .bind(recent)
    .fetch_all(pool)
    .await?;
    let last_sample: Option<DateTime<Utc>> = sqlx::query_scalar(
        "select max(m.time) from unnest($2::text[]) t(name)
           cross join lateral (select time from metrics
                                where probe = $1 and target = t.name
                                order by time desc limit 1) m",
    )
    .bind(probe)
    .bind(targets)
    .fetch_one(pool)
    .await?;
    let total: Row = sqlx::query_as(concat!(
        "select ",
        figures!(),
        " from metrics where probe = $1 and time > now() - interval '15 minutes'"
    ))
    .bind(probe)
    .fetch_one(pool)
    .await?;
    let per_target: Vec<TargetRow> = sqlx::query_as(concat!(
        "select target, ",
        figures!(),
        " from metrics where probe = $1 and time > now() - interval '15 minutes'
              group by target order by target"
    ))
    .bind(probe)
    .fetch_all(pool)
    .await?;
    let per_vantage: Vec<VantageRow> = sqlx::query_as(concat!(
        "select target, node, region, max(time), ",
        figures!(),
        " from metrics where probe = $1 and time > now() - interval '15 minutes'
              group by target, node, region order by target, region, node"
    ))
    .bind(probe)
    .fetch_all(pool)
    .await?;
    // The metadata is read as text and parsed here: a malformed value in one sample must not
    // fail the whole status query.
    let newest_certificates: Vec<CertificateRow> = sqlx::query_as(
        "select distinct on (target, node) target, time,
                    metadata->>'cert_not_after', metadata->>'cert_days_to_expiry'
               from metrics
              where probe = $1 and time > now() - interval '15 minutes'
                and (metadata ? 'cert_not_after' or metadata ? 'cert_days_to_expiry')
              order by target, node, time desc",
    )
    .bind(probe)
    .fetch_all(pool)
    .await?;
    Ok(Figures {
        reporting_nodes,
        last_sample,
        summary: summary(total),
        targets: per_target
            .into_iter()
            .map(|(name, n, p50, p95, loss, up)| (name, summary((n, p50, p95, loss, up))))
            .collect(),
        certificates: earliest_certificates(newest_certificates),
        vantages: per_vantage
            .into_iter()
            .map(|(target, node, region, newest, n, p50, p95, loss, up)| {
                let vantage = crate::localize::Vantage {
                    node,
                    region,
                    summary: summary((n, p50, p95, loss, up)),
                    newest,
                };
                (target, vantage)
            })
            .collect(),
    })
}

/// Per target, the earliest notAfter of the rows (target, sample time, `cert_not_after`,
/// `cert_days_to_expiry`). A sample of a probe that records only the whole days counts as
/// expiring at its time plus those days, which is within a day of the truth; a value that
/// does not parse is skipped.
fn earliest_certificates(rows: Vec<CertificateRow>) -> Vec<(String, DateTime<Utc>)> {
    let mut earliest: std::collections::BTreeMap<String, DateTime<Utc>> = Default::default();
    for (target, time, not_after, days) in rows {
        let exact = not_after
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc));
        let from_days = || {
            let days: i64 = days?.parse().ok()?;
            time.checked_add_signed(chrono::TimeDelta::try_days(days)?)
        };
        if let Some(at) = exact.or_else(from_days) {
            let entry = earliest.entry(target).or_insert(at);
            *entry = (*entry).min(at);
        }
    }
    earliest.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_earliest_certificate_counts_and_a_malformed_one_is_skipped() {
        let at = |day: u32| Utc.with_ymd_and_hms(2027, 1, day, 0, 0, 0).unwrap();
        let text = |s: &str| Some(s.to_owned());
        let rows = vec![
            ("api".into(), at(1), text("2027-03-01T00:00:00Z"), None),
            ("api".into(), at(1), None, text("20")),
            ("api".into(), at(1), text("next tuesday"), None),
            (
                "web".into(),
                at(1),
                text("2027-02-01T00:00:00+01:00"),
                text("x"),
            ),
            ("dns".into(), at(1), text("soon"), text("many")),
        ];
        assert_eq!(
            earliest_certificates(rows),
            [
                ("api".to_owned(), at(21)),
                (
                    "web".to_owned(),
                    Utc.with_ymd_and_hms(2027, 1, 31, 23, 0, 0).unwrap()
                ),
            ]
        );
    }
}
