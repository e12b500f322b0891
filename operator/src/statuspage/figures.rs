//! The status page's long-window figures, read from the rollups only (`metrics_hourly` for
//! 24 h and 7 d, `metrics_daily` for 30 d and the 90 daily bars): raw samples are never
//! scanned beyond what the FiberProbe status already summarises (15 minutes).
//!
//! Uptime and loss are exact over a window: they are re-weighted by each bucket's sample
//! count. A percentile cannot be combined from the buckets' percentiles, so the p95 of a
//! window is read from the merged latency histograms (migration 0007): within the histogram's
//! 2 % bins of the p95 of every sample in the window. 24 h merges hourly histograms; 7 d and
//! 30 d merge daily ones (7 d: the UTC days since the one 7 days ago, so 7 to 8 days); being
//! the costliest read, they are reused for [`PERCENTILES_EVERY`].

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

/// Days of uptime bars per target.
pub const DAYS: usize = 90;

/// One window's figures of a probe or a target.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Samples the window's buckets hold.
    pub samples: i64,
    /// Share of successful checks, percent.
    pub uptime_pct: Option<f64>,
    /// The 95th percentile of the window's latencies (from the merged histograms),
    /// milliseconds.
    pub latency_p95_ms: Option<f64>,
    /// Mean packet loss, percent, weighted by samples.
    pub packet_loss_pct: Option<f64>,
}

/// The three windows the page shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Windows {
    pub day: Window,
    pub week: Window,
    pub month: Window,
    /// Start of the newest hourly bucket: how far the rollups reach.
    pub newest_bucket: Option<DateTime<Utc>>,
}

/// One day's uptime (UTC days).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    pub samples: i64,
    pub uptime_pct: Option<f64>,
}

/// Everything one database says about a set of probes. Keys are `namespace/name` (the
/// samples' `probe`) and, for targets, the target's name.
#[derive(Debug, Clone, Default)]
pub struct Rollups {
    pub probes: HashMap<String, Windows>,
    pub targets: HashMap<(String, String), Windows>,
    /// Days with samples, oldest first; days without are absent.
    pub days: HashMap<(String, String), Vec<Day>>,
}

/// probe, target (null on a probe's row), samples, uptime, loss of the short window, then of
/// the long one, then the newest bucket.
type WindowsRow = (
    String,
    Option<String>,
    i64,
    Option<f64>,
    Option<f64>,
    i64,
    Option<f64>,
    Option<f64>,
    Option<DateTime<Utc>>,
);

/// probe, target (null on a probe's row), p95 of the short window, then of the long one.
type P95Row = (String, Option<String>, Option<f64>, Option<f64>);

/// The figures of rollup buckets since `$2` (the short window) and since `$3` (the long one),
/// per target and per probe, of the probes in `$1`. `{table}` is a rollup table.
macro_rules! windows_query {
    ($table:literal) => {
        concat!(
            "select probe, target,
                    coalesce(sum(samples) filter (where bucket >= $2), 0)::int8,
                    (100.0 * sum(up_samples) filter (where bucket >= $2)
                       / nullif(sum(samples) filter (where bucket >= $2), 0))::float8,
                    (sum(packet_loss_avg * samples) filter (where bucket >= $2)
                       / nullif(sum(samples) filter (where bucket >= $2
                                                     and packet_loss_avg is not null), 0))::float8,
                    coalesce(sum(samples), 0)::int8,
                    (100.0 * sum(up_samples) / nullif(sum(samples), 0))::float8,
                    (sum(packet_loss_avg * samples)
                       / nullif(sum(samples) filter (where packet_loss_avg is not null), 0))::float8,
                    max(bucket)
               from ",
            $table,
            " where probe = any($1) and bucket >= $3
              group by grouping sets ((probe, target), (probe))"
        )
    };
}

/// The p95 latency since `$2` (the short window) and since `$3` (the long one), per target and
/// per probe of the probes in `$1`, from a latency histogram rollup `{table}`: each window's
/// bins summed, then the quantile read from the merged histogram.
macro_rules! p95_query {
    ($table:literal) => {
        concat!(
            "with h as (
                 select probe, target, bin,
                        sum(samples) filter (where bucket >= $2) as short_n,
                        sum(samples) as long_n
                   from ",
            $table,
            "   where probe = any($1) and bucket >= $3
                  group by grouping sets ((probe, target, bin), (probe, bin)))
             select probe, target,
                    fiberstack_latency_quantile(0.95, array_agg(bin) filter (where short_n > 0),
                                                array_agg(short_n) filter (where short_n > 0)),
                    fiberstack_latency_quantile(0.95, array_agg(bin), array_agg(long_n))
               from h
              group by probe, target"
        )
    };
}

/// probe, target, day bucket, samples, uptime.
type DayRow = (String, String, DateTime<Utc>, i64, Option<f64>);

fn window((samples, uptime, p95, loss): (i64, Option<f64>, Option<f64>, Option<f64>)) -> Window {
    let round = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
    Window {
        samples,
        // Not rounded: shown floored, so that 99.996 % never reads as 100 %.
        uptime_pct: uptime,
        latency_p95_ms: round(p95),
        packet_loss_pct: round(loss),
    }
}

/// The rollups of `probes` (`namespace/name`) as of `now`.
pub async fn rollups(
    pool: &PgPool,
    probes: &[String],
    now: DateTime<Utc>,
) -> Result<Rollups, sqlx::Error> {
    let hours = |h: i64| now - chrono::TimeDelta::hours(h);
    let mut out = Rollups::default();

    // 24 h and 7 d from the hourly rollup.
    let hourly: Vec<WindowsRow> = sqlx::query_as(windows_query!("metrics_hourly"))
        .bind(probes)
        .bind(hours(24))
        .bind(hours(24 * 7))
        .fetch_all(pool)
        .await?;
    for (probe, target, n, up, loss, n7, up7, loss7, newest) in hourly {
        let windows = Windows {
            day: window((n, up, None, loss)),
            week: window((n7, up7, None, loss7)),
            month: Window::default(),
            newest_bucket: newest,
        };
        match target {
            Some(target) => out.targets.insert((probe, target), windows),
            None => out.probes.insert(probe, windows),
        };
    }

    // 30 d from the daily rollup (its short window is unused: the same bound twice).
    let daily: Vec<WindowsRow> = sqlx::query_as(windows_query!("metrics_daily"))
        .bind(probes)
        .bind(hours(24 * 30))
        .bind(hours(24 * 30))
        .fetch_all(pool)
        .await?;
    for (probe, target, _, _, _, n, up, loss, _) in daily {
        let month = window((n, up, None, loss));
        let entry = match target {
            Some(target) => out.targets.entry((probe, target)).or_default(),
            None => out.probes.entry(probe).or_default(),
        };
        entry.month = month;
    }

    // The p95s from the merged histograms: the most expensive read here, so reused for
    // [`PERCENTILES_EVERY`].
    let p95s = percentiles(pool, probes, now).await?;
    for ((probe, target), (day, week, month)) in p95s.iter() {
        let entry = match target {
            Some(target) => out
                .targets
                .entry((probe.clone(), target.clone()))
                .or_default(),
            None => out.probes.entry(probe.clone()).or_default(),
        };
        entry.day.latency_p95_ms = *day;
        entry.week.latency_p95_ms = *week;
        entry.month.latency_p95_ms = *month;
    }

    // One bar a day: every node's buckets of that UTC day summed.
    let days: Vec<DayRow> = sqlx::query_as(
        "select probe, target, bucket, sum(samples)::int8,
                (100.0 * sum(up_samples) / nullif(sum(samples), 0))::float8
           from metrics_daily
          where probe = any($1) and bucket >= $2
          group by probe, target, bucket
          order by probe, target, bucket",
    )
    .bind(probes)
    .bind(first_day(now).and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
    .fetch_all(pool)
    .await?;
    for (probe, target, bucket, samples, uptime) in days {
        let bars = out.days.entry((probe, target)).or_default();
        let date = bucket.date_naive();
        // A database whose day buckets are not UTC midnights (a session time zone other than
        // UTC in plain PostgreSQL mode) folds two buckets into one UTC day here.
        match bars.last_mut() {
            Some(last) if last.date == date => {
                let up = last.uptime_pct.unwrap_or(0.0) * last.samples as f64
                    + uptime.unwrap_or(0.0) * samples as f64;
                last.samples += samples;
                last.uptime_pct = (last.samples > 0).then(|| up / last.samples as f64);
            }
            _ => bars.push(Day {
                date,
                samples,
                uptime_pct: uptime,
            }),
        }
    }
    Ok(out)
}

/// How long the p95s of a set of probes are reused: they move slowly over a day or more, and
/// merging a day of hourly histograms of 1,000 targets takes the database about a second.
pub const PERCENTILES_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// (probe, target — None for the probe) → p95 of 24 h, 7 d, 30 d.
pub type Percentiles = HashMap<(String, Option<String>), (Option<f64>, Option<f64>, Option<f64>)>;

/// When they were read, and what: one region's percentiles.
type Read = (DateTime<Utc>, std::sync::Arc<Percentiles>);

/// The last percentiles read, by the database and the probes they were read for (one entry
/// per region).
static PERCENTILES: std::sync::LazyLock<std::sync::Mutex<HashMap<Vec<String>, Read>>> =
    std::sync::LazyLock::new(Default::default);

/// The p95s of `probes` over 24 h (hourly histograms), 7 d (the daily histograms of the UTC
/// days since the one 7 days ago: 7 to 8 days) and 30 d (daily), read anew when the last read
/// for the same probes is older than [`PERCENTILES_EVERY`].
async fn percentiles(
    pool: &PgPool,
    probes: &[String],
    now: DateTime<Utc>,
) -> Result<std::sync::Arc<Percentiles>, sqlx::Error> {
    // Keyed by the database too: the same probe names in another database are other figures.
    let options = pool.connect_options();
    let mut key = vec![format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )];
    let mut names = probes.to_vec();
    names.sort();
    key.extend(names);
    if let Some((at, cached)) = PERCENTILES.lock().expect("not poisoned").get(&key)
        && now - *at < PERCENTILES_EVERY
        && now >= *at
    {
        return Ok(cached.clone());
    }
    let out = std::sync::Arc::new(read_percentiles(pool, probes, now).await?);
    let mut cache = PERCENTILES.lock().expect("not poisoned");
    // Regions whose probes changed leave entries behind: drop the stale ones.
    cache.retain(|_, (at, _)| now - *at < PERCENTILES_EVERY * 2);
    cache.insert(key, (now, out.clone()));
    Ok(out)
}

/// [`percentiles`] read from the database, every time.
pub async fn read_percentiles(
    pool: &PgPool,
    probes: &[String],
    now: DateTime<Utc>,
) -> Result<Percentiles, sqlx::Error> {
    let round = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
    let hours = |h: i64| now - chrono::TimeDelta::hours(h);
    let day_start = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let hourly: Vec<P95Row> = sqlx::query_as(p95_query!("metrics_latency_hourly"))
        .bind(probes)
        .bind(hours(24))
        .bind(hours(24))
        .fetch_all(pool)
        .await?;
    let daily: Vec<P95Row> = sqlx::query_as(p95_query!("metrics_latency_daily"))
        .bind(probes)
        .bind(day_start(hours(24 * 7).date_naive()))
        .bind(hours(24 * 30))
        .fetch_all(pool)
        .await?;
    let mut out = Percentiles::new();
    for (probe, target, day, _) in hourly {
        out.entry((probe, target)).or_default().0 = round(day);
    }
    for (probe, target, week, month) in daily {
        let entry = out.entry((probe, target)).or_default();
        entry.1 = round(week);
        entry.2 = round(month);
    }
    Ok(out)
}

/// The oldest of the [`DAYS`] UTC days ending with `now`'s.
pub fn first_day(now: DateTime<Utc>) -> NaiveDate {
    now.date_naive() - chrono::TimeDelta::days(DAYS as i64 - 1)
}

/// The [`DAYS`] bars ending with `now`'s day, oldest first, each with the figures `days`
/// holds for it (none for a day without samples).
pub fn bars(days: &[Day], now: DateTime<Utc>) -> Vec<Day> {
    let first = first_day(now);
    (0..DAYS as i64)
        .map(|i| {
            let date = first + chrono::TimeDelta::days(i);
            days.iter()
                .find(|d| d.date == date)
                .copied()
                .unwrap_or(Day {
                    date,
                    samples: 0,
                    uptime_pct: None,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn ninety_bars_end_today_and_keep_each_days_figures() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 5, 0, 0).unwrap();
        let day = |d: u32, up: f64| Day {
            date: NaiveDate::from_ymd_opt(2026, 11, d).unwrap(),
            samples: 10,
            uptime_pct: Some(up),
        };
        let bars = bars(&[day(2, 90.0), day(30, 99.5)], now);
        assert_eq!(bars.len(), DAYS);
        assert_eq!(bars[0].date, NaiveDate::from_ymd_opt(2026, 9, 2).unwrap());
        assert_eq!(bars[DAYS - 1], day(30, 99.5));
        assert_eq!(bars[DAYS - 29], day(2, 90.0));
        assert_eq!(bars[DAYS - 2].uptime_pct, None);
        assert_eq!(bars[DAYS - 2].samples, 0);
    }
}
