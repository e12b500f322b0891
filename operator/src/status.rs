//! Fleet health from the database: which nodes report, the newest sample, and the
//! 15-minute figures of a probe and of each of its targets. Read-only; the figures are
//! computed from the samples of the window (percentiles are never averaged).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::crd::{Summary, TargetStatus, Thresholds};

/// The window of `summary` and `targets`.
pub const WINDOW: &str = "15 minutes";
/// Samples are "recent" within this many probe intervals.
pub const REPORTING_INTERVALS: u32 = 3;

/// A small read-only pool; it connects lazily, so the operator starts and keeps running
/// without a database, and every transaction is read-only.
pub fn connect_lazy(url: &str, schema: Option<&str>) -> Result<PgPool, sqlx::Error> {
    let mut options: PgConnectOptions = url.parse()?;
    options = options.options([("default_transaction_read_only", "on")]);
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
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
}

type Row = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);
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
    Ok(Figures {
        reporting_nodes,
        last_sample,
        summary: summary(total),
        targets: per_target
            .into_iter()
            .map(|(name, n, p50, p95, loss, up)| (name, summary((n, p50, p95, loss, up))))
            .collect(),
    })
}

/// How far a target is past its thresholds: above 1 is a breach, larger is worse.
fn severity(s: &Summary, t: &Thresholds) -> f64 {
    let ratio = |value: Option<f64>, limit: f64| value.map_or(0.0, |v| v / limit.max(0.001));
    let p95 = ratio(s.latency_p95_ms, t.latency_p95_ms);
    let loss = ratio(s.packet_loss_pct, t.packet_loss_pct);
    let down = ratio(s.uptime_pct.map(|u| 100.0 - u), 100.0 - t.uptime_pct);
    p95.max(loss).max(down)
}

/// What is wrong with a target, or None when it meets every threshold.
fn breach(s: &Summary, t: &Thresholds) -> Option<String> {
    let mut what = Vec::new();
    if let Some(p95) = s.latency_p95_ms.filter(|v| *v > t.latency_p95_ms) {
        what.push(format!("p95 latency {p95} ms > {} ms", t.latency_p95_ms));
    }
    if let Some(loss) = s.packet_loss_pct.filter(|v| *v > t.packet_loss_pct) {
        what.push(format!("packet loss {loss} % > {} %", t.packet_loss_pct));
    }
    if let Some(up) = s.uptime_pct.filter(|v| *v < t.uptime_pct) {
        what.push(format!("uptime {up} % < {} %", t.uptime_pct));
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// Rows for every target of the spec, in spec order; a target without samples is NoData.
pub fn target_rows(
    spec_targets: &[String],
    figures: &Figures,
    t: &Thresholds,
) -> Vec<TargetStatus> {
    spec_targets
        .iter()
        .map(|name| {
            let found = figures.targets.iter().find(|(n, _)| n == name);
            match found {
                None => TargetStatus {
                    name: name.clone(),
                    state: "NoData".to_owned(),
                    message: Some(format!("no samples in the last {WINDOW}")),
                    ..Default::default()
                },
                Some((_, s)) => {
                    let problem = breach(s, t);
                    TargetStatus {
                        name: name.clone(),
                        summary: s.clone(),
                        state: if problem.is_some() {
                            "Breaching"
                        } else {
                            "Healthy"
                        }
                        .to_owned(),
                        message: problem,
                    }
                }
            }
        })
        .collect()
}

/// Healthy as observed now: (status, reason, message naming the worst target).
pub fn observed_health(
    rows: &[TargetStatus],
    t: &Thresholds,
) -> (&'static str, &'static str, String) {
    let with_data: Vec<&TargetStatus> = rows.iter().filter(|r| r.state != "NoData").collect();
    if with_data.is_empty() {
        return (
            crate::conditions::UNKNOWN,
            "NoData",
            format!("no samples in the last {WINDOW}"),
        );
    }
    let worst = with_data
        .iter()
        .max_by(|a, b| severity(&a.summary, t).total_cmp(&severity(&b.summary, t)))
        .expect("not empty");
    let breaching = with_data.iter().filter(|r| r.state == "Breaching").count();
    if breaching == 0 {
        (
            crate::conditions::TRUE,
            "ThresholdsMet",
            format!(
                "{}/{} targets reporting, all within thresholds over {WINDOW}; closest to a limit: {}",
                with_data.len(),
                rows.len(),
                worst.name
            ),
        )
    } else {
        (
            crate::conditions::FALSE,
            "ThresholdsBreached",
            format!(
                "worst target {}: {}; {breaching} of {} reporting targets breaching over {WINDOW}",
                worst.name,
                worst.message.as_deref().unwrap_or(""),
                with_data.len()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p95: f64, loss: f64, up: f64) -> Summary {
        Summary {
            samples: 10,
            latency_p50_ms: Some(p95 / 2.0),
            latency_p95_ms: Some(p95),
            packet_loss_pct: Some(loss),
            uptime_pct: Some(up),
        }
    }

    #[test]
    fn the_worst_breaching_target_is_named() {
        let t = Thresholds::default();
        let figures = Figures {
            targets: vec![
                ("a".into(), s(160.0, 0.0, 100.0)),
                ("b".into(), s(20.0, 30.0, 100.0)),
                ("c".into(), s(20.0, 0.0, 100.0)),
            ],
            ..Default::default()
        };
        let names = ["a", "b", "c", "d"].map(String::from);
        let rows = target_rows(&names, &figures, &t);
        let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(states, ["Breaching", "Breaching", "Healthy", "NoData"]);
        let (status, reason, message) = observed_health(&rows, &t);
        assert_eq!((status, reason), ("False", "ThresholdsBreached"));
        assert!(
            message.starts_with("worst target b: packet loss 30 % > 2 %"),
            "{message}"
        );
        assert!(message.contains("2 of 3 reporting targets"), "{message}");
    }

    #[test]
    fn no_samples_is_unknown_not_healthy() {
        let rows = target_rows(
            &["a".to_owned()],
            &Figures::default(),
            &Thresholds::default(),
        );
        assert_eq!(observed_health(&rows, &Thresholds::default()).0, "Unknown");
    }
}
