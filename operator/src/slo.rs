//! Service level objectives (`spec.slo`): the counts behind them, read for many probes at
//! once from the rollups, and what they mean (pure): SLI, error budget left, burn rates and
//! the SRE workbook's multi-window burn alerts.
//!
//! The window is whole days ending now: complete days from the daily rollups, today's
//! complete hours from the hourly ones, the current hour from raw samples — so a 30-day SLO
//! reads about 30 rows per target and node, never 30 days of samples. The latency SLI counts
//! successful rounds under the threshold from the rollups' latency histograms (bins of 2 %:
//! a round in the threshold's own bin counts as over it, so the SLI errs by at most 2 % of
//! the threshold, on the strict side). Burn rates: the last 5 min, 30 min and 1 h from raw
//! samples, 6 h from the hourly rollups plus the current hour.
//!
//! A target may have objectives of its own (spec.targets[].slo): the same query templates,
//! joined on the target too, count them — one more query of each kind per batch when any
//! target has its own, never one per target. (Summing both from one read of the probe's rows
//! was measured first: 2-3x slower for the probes' objectives alone, which every status
//! period pays.)

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::crd::{Burn, ObjectiveStatus, Slo, SloStatus};

/// Rounds counted over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Rounds that arrived.
    pub rounds: i64,
    /// Of those, successful.
    pub up: i64,
    /// Successful rounds with a latency.
    pub timed: i64,
    /// Of those, under the latency threshold.
    pub fast: i64,
}

/// A probe's counts: over the SLO's window and the burn-rate windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SloCounts {
    pub window: Counts,
    /// Nodes that sent rounds in the window (for the expected count).
    pub nodes: i64,
    pub last_5m: Counts,
    pub last_30m: Counts,
    pub last_1h: Counts,
    pub last_6h: Counts,
}

/// A probe's counts for status: spec.slo's, and each target's own, by target name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeSloCounts {
    /// spec.slo's; None without one.
    pub probe: Option<SloCounts>,
    /// The targets with a slo of their own.
    pub targets: std::collections::BTreeMap<String, SloCounts>,
}

/// One probe of [`slo_counts_many`]: its spec.slo, over all its targets.
#[derive(Debug, Clone, PartialEq)]
pub struct SloQuery {
    /// `namespace/name`, as samples carry it.
    pub probe: String,
    pub window_days: u32,
    /// The latency objective's threshold; None without one.
    pub threshold_ms: Option<f64>,
}

/// One target's own objectives (spec.targets[].slo), counted over that target's rounds alone.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSloQuery {
    /// `namespace/name` of its probe.
    pub probe: String,
    /// The target's name in spec.targets.
    pub target: String,
    pub window_days: u32,
    pub threshold_ms: Option<f64>,
}

/// Whose rounds counts are of: a probe's (all its targets: `target` None) or one of its
/// targets'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SloKey {
    pub probe: String,
    pub target: Option<String>,
}

impl SloKey {
    pub fn probe(probe: &str) -> Self {
        Self {
            probe: probe.to_owned(),
            target: None,
        }
    }

    pub fn target(probe: &str, target: &str) -> Self {
        Self {
            probe: probe.to_owned(),
            target: Some(target.to_owned()),
        }
    }
}

/// A row of the counts: probe, target (NULL for the probe's), rounds, up, timed, fast, nodes.
type WindowRow = (String, Option<String>, i64, i64, i64, i64, i64);
/// A row of the burn windows: probe, target (NULL for the probe's), window, rounds, up,
/// timed, fast.
type BurnRow = (String, Option<String>, String, i64, i64, i64, i64);

/// A latency threshold as the queries take it: its bin, and the lower edge of that bin (a
/// round is "fast" when its bin is below the threshold's: `latency < edge`, no logarithm
/// per row). No threshold: bin 0, edge 0 — nothing is fast.
fn threshold(ms: Option<f64>) -> (i16, f64) {
    match ms {
        Some(ms) => {
            let bin = latency_bin(ms);
            (bin, 0.01 * 1.02f64.powi(i32::from(bin)))
        }
        None => (0, 0.0),
    }
}

fn days(d: u32) -> i32 {
    i32::try_from(d).unwrap_or(90)
}

/// The queries' parameters, column by column: the probes' objectives, or the targets'
/// (`targets` set).
#[derive(Default)]
struct Params<'a> {
    probes: Vec<&'a str>,
    targets: Vec<&'a str>,
    days: Vec<i32>,
    bins: Vec<i16>,
    edges: Vec<f64>,
}

impl<'a> Params<'a> {
    fn push(&mut self, probe: &'a str, days: u32, threshold_ms: Option<f64>) {
        let (bin, edge) = threshold(threshold_ms);
        self.probes.push(probe);
        self.days.push(self::days(days));
        self.bins.push(bin);
        self.edges.push(edge);
    }

    fn of_probes(probes: &'a [SloQuery]) -> Self {
        let mut p = Self::default();
        for q in probes {
            p.push(&q.probe, q.window_days, q.threshold_ms);
        }
        p
    }

    fn of_targets(targets: &'a [TargetSloQuery]) -> Self {
        let mut p = Self::default();
        for q in targets {
            p.push(&q.probe, q.window_days, q.threshold_ms);
            p.targets.push(&q.target);
        }
        p
    }
}

/// Fills a query template for the probes' objectives (`by_target` false: rows per probe) or
/// the targets' own (rows per probe and target, each relation joined on both; the target
/// names bound as `target_param`). One template, so that both count alike.
fn instantiate(template: &str, by_target: bool, target_param: &str) -> String {
    let fills: [(&str, String); 6] = if by_target {
        [
            ("{tp}", format!(", {target_param}::text[]")),
            ("{tc}", ", target".to_owned()),
            ("{k}", "q.probe, q.target".to_owned()),
            ("{tk}", ", target".to_owned()),
            ("{rt}", "r.target".to_owned()),
            ("{qt}", "q.target".to_owned()),
        ]
    } else {
        [
            ("{tp}", String::new()),
            ("{tc}", String::new()),
            ("{k}", "q.probe".to_owned()),
            ("{tk}", String::new()),
            ("{rt}", "null::text".to_owned()),
            ("{qt}", "null::text".to_owned()),
        ]
    };
    let mut sql = template.to_owned();
    for (from, to) in fills {
        sql = sql.replace(from, &to);
    }
    for alias in ["d", "h", "m", "l", "r"] {
        let on = if by_target {
            format!(" and {alias}.target = q.target")
        } else {
            String::new()
        };
        sql = sql.replace(&format!("{{on:{alias}}}"), &on);
    }
    sql
}

/// `fiberstack_latency_bin` (migration 0007) in Rust: bins of 2 % from 0.01 ms, 0–697.
pub fn latency_bin(ms: f64) -> i16 {
    ((ms.max(0.01) / 0.01).ln() / 1.02f64.ln())
        .floor()
        .clamp(0.0, 697.0) as i16
}

/// The latency a histogram bin stands for (its geometric middle), milliseconds, as
/// `fiberstack_latency_quantile` answers it.
pub fn latency_bin_value(bin: i16) -> f64 {
    0.01 * 1.02f64.powf(f64::from(bin) + 0.5)
}

/// The counts of many probes (one region's database): [`window_counts_many`] and
/// [`burn_counts_many`] together. Every probe asked for has an entry.
pub async fn slo_counts_many(
    pool: &PgPool,
    probes: &[SloQuery],
) -> Result<HashMap<String, SloCounts>, sqlx::Error> {
    Ok(by_probe(slo_counts_all(pool, probes, &[]).await?))
}

/// The counts of many probes' and targets' objectives: [`window_counts_all`] and
/// [`burn_counts_all`] together. Every objective asked for has an entry.
pub async fn slo_counts_all(
    pool: &PgPool,
    probes: &[SloQuery],
    targets: &[TargetSloQuery],
) -> Result<HashMap<SloKey, SloCounts>, sqlx::Error> {
    let mut counts = burn_counts_all(pool, probes, targets).await?;
    for (key, (window, nodes)) in window_counts_all(pool, probes, targets).await? {
        if let Some(c) = counts.get_mut(&key) {
            c.window = window;
            c.nodes = nodes;
        }
    }
    Ok(counts)
}

fn by_probe<T>(counts: HashMap<SloKey, T>) -> HashMap<String, T> {
    counts
        .into_iter()
        .filter(|(k, _)| k.target.is_none())
        .map(|(k, c)| (k.probe, c))
        .collect()
}

/// The rounds over each probe's SLO window and the nodes that sent them
/// ([`window_counts_all`] without targets' objectives).
pub async fn window_counts_many(
    pool: &PgPool,
    probes: &[SloQuery],
) -> Result<HashMap<String, (Counts, i64)>, sqlx::Error> {
    Ok(by_probe(window_counts_all(pool, probes, &[]).await?))
}

/// The window counts' query (a template of [`instantiate`]): complete days from the daily
/// rollups, today's complete hours from the hourly ones, the current hour raw.
const WINDOW_SQL: &str = "with q as (select * from unnest($1::text[], $2::int4[], $3::int2[], $4::float8[]{tp})
                               q(probe, days, bin, edge{tc})),
     b as (select date_trunc('day', now()) as today, date_trunc('hour', now()) as hour),
     rounds as (
       select {k}, d.node, d.samples, d.up_samples
         from q cross join b
         join metrics_daily d on d.probe = q.probe{on:d}
              and d.bucket >= b.today - make_interval(days => q.days - 1) and d.bucket < b.today
       union all
       select {k}, h.node, h.samples, h.up_samples
         from q cross join b
         join metrics_hourly h on h.probe = q.probe{on:h} and h.bucket >= b.today and h.bucket < b.hour
       union all
       select {k}, m.node, count(*), count(*) filter (where m.up)
         from q cross join b
         join metrics m on m.probe = q.probe{on:m} and m.time >= b.hour
        group by {k}, m.node
     ),
     timing as (
       select {k}, sum(l.samples) as timed, sum(l.samples) filter (where l.bin < q.bin) as fast
         from q cross join b
         join metrics_latency_daily l on l.probe = q.probe{on:l}
              and l.bucket >= b.today - make_interval(days => q.days - 1) and l.bucket < b.today
        group by {k}
       union all
       select {k}, sum(l.samples), sum(l.samples) filter (where l.bin < q.bin)
         from q cross join b
         join metrics_latency_hourly l on l.probe = q.probe{on:l} and l.bucket >= b.today and l.bucket < b.hour
        group by {k}
       union all
       select {k}, count(*) filter (where m.up and m.latency_ms is not null),
              count(*) filter (where m.up and m.latency_ms < q.edge)
         from q cross join b
         join metrics m on m.probe = q.probe{on:m} and m.time >= b.hour
        group by {k}
     ),
     r as (select probe{tk}, sum(samples)::int8 as rounds, sum(up_samples)::int8 as up,
                  count(distinct node)::int8 as nodes from rounds group by probe{tk}),
     t as (select probe{tk}, coalesce(sum(timed), 0)::int8 as timed, coalesce(sum(fast), 0)::int8 as fast
             from timing group by probe{tk})
     select r.probe, {rt}, r.rounds, r.up, coalesce(t.timed, 0), coalesce(t.fast, 0), r.nodes
       from r left join t using (probe{tk})";

static WINDOW_BY_PROBE: LazyLock<String> = LazyLock::new(|| instantiate(WINDOW_SQL, false, ""));
static WINDOW_BY_TARGET: LazyLock<String> = LazyLock::new(|| instantiate(WINDOW_SQL, true, "$5"));

/// The rounds over each objective's window and the nodes that sent them: one query for the
/// probes' objectives and, when any target has its own, one for the targets' (the same
/// template joined on the target too) — never one per probe or target. Objectives without
/// rounds have no entry. The window changes slowly: callers may keep this for minutes.
pub async fn window_counts_all(
    pool: &PgPool,
    probes: &[SloQuery],
    targets: &[TargetSloQuery],
) -> Result<HashMap<SloKey, (Counts, i64)>, sqlx::Error> {
    let mut rows: Vec<WindowRow> = vec![];
    for (q, sql) in [
        (Params::of_probes(probes), &*WINDOW_BY_PROBE),
        (Params::of_targets(targets), &*WINDOW_BY_TARGET),
    ] {
        if q.probes.is_empty() {
            continue;
        }
        // The SQL is one of the two fillings of WINDOW_SQL above.
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(q.probes)
            .bind(q.days)
            .bind(q.bins)
            .bind(q.edges);
        if !q.targets.is_empty() {
            query = query.bind(q.targets);
        }
        rows.extend(query.fetch_all(pool).await?);
    }
    Ok(rows
        .into_iter()
        .map(|(probe, target, rounds, up, timed, fast, nodes)| {
            let counts = Counts {
                rounds,
                up,
                timed,
                fast,
            };
            (SloKey { probe, target }, (counts, nodes))
        })
        .collect())
}

/// The burn-rate windows of many probes ([`burn_counts_all`] without targets' objectives).
pub async fn burn_counts_many(
    pool: &PgPool,
    probes: &[SloQuery],
) -> Result<HashMap<String, SloCounts>, sqlx::Error> {
    Ok(by_probe(burn_counts_all(pool, probes, &[]).await?))
}

/// The burn windows' query (a template of [`instantiate`]): the last 5 min, 30 min and 1 h
/// from raw samples, the last 6 h from the hourly rollups plus the current hour.
const BURN_SQL: &str = "with q as (select * from unnest($1::text[], $2::int2[], $3::float8[]{tp})
                               q(probe, bin, edge{tc})),
     b as (select date_trunc('hour', now()) as hour),
     raw as (
       select {k}, w.name,
              count(*) as rounds, count(*) filter (where m.up) as up,
              count(*) filter (where m.up and m.latency_ms is not null) as timed,
              count(*) filter (where m.up and m.latency_ms < q.edge) as fast
         from q cross join b
         join metrics m on m.probe = q.probe{on:m}
              and m.time > least(now() - interval '1 hour', b.hour)
         cross join (values ('5m', now() - interval '5 minutes'),
                            ('30m', now() - interval '30 minutes'),
                            ('1h', now() - interval '1 hour'),
                            ('hour', date_trunc('hour', now()))) w(name, since)
        where m.time > w.since or (w.name = 'hour' and m.time >= w.since)
        group by {k}, w.name
     ),
     hours as (
       select {k}, sum(h.samples) as rounds, sum(h.up_samples) as up
         from q cross join b
         join metrics_hourly h on h.probe = q.probe{on:h}
              and h.bucket >= b.hour - interval '5 hours' and h.bucket < b.hour
        group by {k}
     ),
     hour_timing as (
       select {k}, sum(l.samples) as timed, sum(l.samples) filter (where l.bin < q.bin) as fast
         from q cross join b
         join metrics_latency_hourly l on l.probe = q.probe{on:l}
              and l.bucket >= b.hour - interval '5 hours' and l.bucket < b.hour
        group by {k}
     )
     select r.probe, {rt}, r.name, r.rounds::int8, r.up::int8, r.timed::int8, r.fast::int8
       from raw r where r.name <> 'hour'
     union all
     select q.probe, {qt}, '6h',
            (coalesce(h.rounds, 0) + coalesce(r.rounds, 0))::int8,
            (coalesce(h.up, 0) + coalesce(r.up, 0))::int8,
            (coalesce(t.timed, 0) + coalesce(r.timed, 0))::int8,
            (coalesce(t.fast, 0) + coalesce(r.fast, 0))::int8
       from q left join hours h using (probe{tk}) left join hour_timing t using (probe{tk})
              left join raw r on r.probe = q.probe{on:r} and r.name = 'hour'";

static BURN_BY_PROBE: LazyLock<String> = LazyLock::new(|| instantiate(BURN_SQL, false, ""));
static BURN_BY_TARGET: LazyLock<String> = LazyLock::new(|| instantiate(BURN_SQL, true, "$4"));

/// The burn-rate windows of many probes' and targets' objectives: one query for the probes'
/// and, when any target has its own, one for the targets'. Every objective asked for has an
/// entry (its window counts left at zero).
pub async fn burn_counts_all(
    pool: &PgPool,
    probes: &[SloQuery],
    targets: &[TargetSloQuery],
) -> Result<HashMap<SloKey, SloCounts>, sqlx::Error> {
    let mut counts: HashMap<SloKey, SloCounts> = probes
        .iter()
        .map(|p| SloKey::probe(&p.probe))
        .chain(targets.iter().map(|t| SloKey::target(&t.probe, &t.target)))
        .map(|key| (key, SloCounts::default()))
        .collect();
    let mut rows: Vec<BurnRow> = vec![];
    for (q, sql) in [
        (Params::of_probes(probes), &*BURN_BY_PROBE),
        (Params::of_targets(targets), &*BURN_BY_TARGET),
    ] {
        if q.probes.is_empty() {
            continue;
        }
        // The SQL is one of the two fillings of BURN_SQL above.
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(q.probes)
            .bind(q.bins)
            .bind(q.edges);
        if !q.targets.is_empty() {
            query = query.bind(q.targets);
        }
        rows.extend(query.fetch_all(pool).await?);
    }
    for (probe, target, w, rounds, up, timed, fast) in rows {
        let Some(c) = counts.get_mut(&SloKey { probe, target }) else {
            continue;
        };
        let counted = Counts {
            rounds,
            up,
            timed,
            fast,
        };
        match w.as_str() {
            "5m" => c.last_5m = counted,
            "30m" => c.last_30m = counted,
            "1h" => c.last_1h = counted,
            _ => c.last_6h = counted,
        }
    }
    Ok(counts)
}

/// The SRE workbook's pairs: a burn of 14.4 spends 2 % of a 30-day budget in an hour (page);
/// 6 spends 5 % in 6 hours (ticket).
pub const FAST_BURN: f64 = 14.4;
pub const SLOW_BURN: f64 = 6.0;

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Bad share over good+bad, as a burn rate of an objective (percent): None without rounds.
fn burn(good: i64, total: i64, objective_pct: f64) -> Option<f64> {
    if total <= 0 {
        return None;
    }
    let bad = (total - good) as f64 / total as f64;
    let allowed = 1.0 - objective_pct / 100.0;
    Some(round(bad / allowed, 1))
}

fn objective(
    objective_pct: f64,
    pick: impl Fn(&Counts) -> (i64, i64),
    c: &SloCounts,
) -> (ObjectiveStatus, Option<Burn>) {
    let (good, total) = pick(&c.window);
    let allowed = 1.0 - objective_pct / 100.0;
    let (sli, budget) = if total > 0 {
        let sli = good as f64 / total as f64;
        let spent = (1.0 - sli) / allowed;
        (
            Some(round(100.0 * sli, 3)),
            Some(round(100.0 * (1.0 - spent), 1)),
        )
    } else {
        (None, None)
    };
    let rate = |w: &Counts| {
        let (good, total) = pick(w);
        burn(good, total, objective_pct)
    };
    let over = |a: Option<f64>, b: Option<f64>, limit: f64| {
        a.is_some_and(|a| a > limit) && b.is_some_and(|b| b > limit)
    };
    let burning = if over(rate(&c.last_1h), rate(&c.last_5m), FAST_BURN) {
        Some(Burn::Fast)
    } else if over(rate(&c.last_6h), rate(&c.last_30m), SLOW_BURN) {
        Some(Burn::Slow)
    } else {
        None
    };
    (
        ObjectiveStatus {
            objective_pct,
            sli_pct: sli,
            error_budget_remaining_pct: budget,
            burn_rate_1h: rate(&c.last_1h),
            burn_rate_6h: rate(&c.last_6h),
        },
        burning,
    )
}

/// status.slo from the counts: `expected_rounds` is how many rounds the window should hold
/// (None when it cannot be told), for the unknown share.
pub fn evaluate(slo: &Slo, c: &SloCounts, expected_rounds: Option<f64>) -> SloStatus {
    let (availability, fast_a) = objective(slo.availability_pct, |w| (w.up, w.rounds), c);
    let latency = slo
        .latency
        .as_ref()
        .map(|l| objective(l.percent, |w| (w.fast, w.timed), c));
    let burning = [Some(fast_a), latency.as_ref().map(|(_, b)| b.clone())]
        .into_iter()
        .flatten()
        .flatten()
        .min_by_key(|b| match b {
            Burn::Fast => 0,
            _ => 1,
        });
    let unknown_pct = expected_rounds.filter(|e| *e >= 1.0).map(|expected| {
        let missing = (expected - c.window.rounds as f64).max(0.0);
        round(100.0 * missing / expected, 2)
    });
    SloStatus {
        window_days: slo.window_days,
        availability: Some(availability),
        latency: latency.map(|(s, _)| s),
        unknown_pct,
        burning,
    }
}

/// Rounds the window should hold: every node that sent rounds, once per interval, from the
/// window's start or the probe's creation, whichever is later.
pub fn expected_rounds(
    c: &SloCounts,
    window_days: u32,
    interval: Duration,
    created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let start_of_today = now.date_naive().and_hms_opt(0, 0, 0)?.and_utc();
    let window_start = start_of_today - chrono::TimeDelta::days(i64::from(window_days) - 1);
    let from = created.map_or(window_start, |c| c.max(window_start));
    let seconds = (now - from).num_milliseconds() as f64 / 1000.0;
    let every = interval.as_secs_f64();
    (c.nodes > 0 && every > 0.0 && seconds > 0.0)
        .then(|| c.nodes as f64 * (seconds / every).floor())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::LatencyObjective;

    #[test]
    fn both_fillings_leave_no_placeholder_and_join_every_relation_on_the_target() {
        for (sql, by_target) in [
            (&*WINDOW_BY_PROBE, false),
            (&*WINDOW_BY_TARGET, true),
            (&*BURN_BY_PROBE, false),
            (&*BURN_BY_TARGET, true),
        ] {
            assert!(!sql.contains('{'), "{sql}");
            let joins = sql.matches(" on ").count();
            let on_target = sql.matches(".target = q.target").count();
            if by_target {
                assert_eq!(on_target, joins, "{sql}");
            } else {
                assert_eq!(on_target, 0, "{sql}");
            }
        }
    }

    #[test]
    fn the_bin_and_its_edge_agree() {
        for ms in [0.005, 0.01, 1.0, 20.0, 149.99, 150.0, 10_000.0, 1e9] {
            let bin = latency_bin(ms);
            let edge = 0.01 * 1.02f64.powi(i32::from(bin));
            assert!(
                ms < 0.01 || bin == 697 || (edge <= ms * (1.0 + 1e-12) && ms < edge * 1.02),
                "{ms}: bin {bin}, edge {edge}"
            );
        }
        assert_eq!(latency_bin(0.0), 0);
        assert_eq!(latency_bin(1e9), 697);
    }

    fn counts(rounds: i64, up: i64) -> Counts {
        Counts {
            rounds,
            up,
            timed: up,
            fast: up,
        }
    }

    fn slo() -> Slo {
        Slo {
            availability_pct: 99.0,
            latency: None,
            window_days: 30,
        }
    }

    #[test]
    fn budget_and_burn_rates_follow_the_bad_share() {
        // 10,000 rounds, 50 failed: 0.5 % bad of a 1 % budget: half of it left.
        let c = SloCounts {
            window: counts(10_000, 9_950),
            nodes: 1,
            last_1h: counts(360, 360),
            last_6h: counts(2_160, 2_138),
            ..Default::default()
        };
        let s = evaluate(&slo(), &c, Some(10_000.0));
        let a = s.availability.unwrap();
        assert_eq!(a.sli_pct, Some(99.5));
        assert_eq!(a.error_budget_remaining_pct, Some(50.0));
        assert_eq!(a.burn_rate_1h, Some(0.0));
        // 22 of 2,160 bad: 1.02 % bad, a burn of 1.0.
        assert_eq!(a.burn_rate_6h, Some(1.0));
        assert_eq!(s.unknown_pct, Some(0.0));
        assert_eq!(s.burning, None);
    }

    #[test]
    fn an_overspent_budget_is_negative_and_no_rounds_tell_nothing() {
        let c = SloCounts {
            window: counts(1_000, 970),
            ..Default::default()
        };
        let a = evaluate(&slo(), &c, None).availability.unwrap();
        assert_eq!(a.error_budget_remaining_pct, Some(-200.0));
        let none = evaluate(&slo(), &SloCounts::default(), None);
        assert_eq!(none.availability.unwrap().sli_pct, None);
        assert_eq!(none.unknown_pct, None);
    }

    #[test]
    fn fast_burn_needs_both_windows_and_wins_over_slow() {
        // 20 % failing in the last hour and the last 5 minutes: a burn of 20 > 14.4.
        let mut c = SloCounts {
            window: counts(10_000, 9_900),
            last_1h: counts(360, 288),
            last_5m: counts(30, 24),
            last_6h: counts(2_160, 2_000),
            last_30m: counts(180, 144),
            ..Default::default()
        };
        assert_eq!(evaluate(&slo(), &c, None).burning, Some(Burn::Fast));
        // The last 5 minutes recovered: not fast any more, but 6 h and 30 min still burn > 6.
        c.last_5m = counts(30, 30);
        assert_eq!(evaluate(&slo(), &c, None).burning, Some(Burn::Slow));
        // The last 30 minutes recovered too: nothing burns.
        c.last_30m = counts(180, 180);
        assert_eq!(evaluate(&slo(), &c, None).burning, None);
    }

    #[test]
    fn the_latency_objective_counts_fast_successful_rounds() {
        let slo = Slo {
            latency: Some(LatencyObjective {
                threshold_ms: 150.0,
                percent: 99.0,
            }),
            ..slo()
        };
        let c = SloCounts {
            window: Counts {
                rounds: 1_000,
                up: 1_000,
                timed: 1_000,
                fast: 995,
            },
            ..Default::default()
        };
        let s = evaluate(&slo, &c, None);
        let l = s.latency.unwrap();
        assert_eq!(l.objective_pct, 99.0);
        assert_eq!(l.sli_pct, Some(99.5));
        assert_eq!(l.error_budget_remaining_pct, Some(50.0));
    }

    #[test]
    fn missing_rounds_are_unknown_from_the_later_of_window_and_creation() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = SloCounts {
            window: counts(1_080, 1_080),
            nodes: 3,
            ..Default::default()
        };
        // Created 2 hours ago, 3 nodes every 10 s: 2,160 expected, 1,080 arrived.
        let created = now - chrono::TimeDelta::hours(2);
        let expected =
            expected_rounds(&c, 30, Duration::from_secs(10), Some(created), now).unwrap();
        assert_eq!(expected, 2_160.0);
        assert_eq!(evaluate(&slo(), &c, Some(expected)).unknown_pct, Some(50.0));
        // A window of 1 day: from midnight (12 h), whatever the creation before it.
        let old = now - chrono::TimeDelta::days(10);
        let expected = expected_rounds(&c, 1, Duration::from_secs(10), Some(old), now).unwrap();
        assert_eq!(expected, 3.0 * 4_320.0);
    }
}
