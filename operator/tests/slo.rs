//! Service level objectives against a real, migrated PostgreSQL database: the counts read
//! from the rollups (daily, hourly, the current hour raw) equal those of the raw samples they
//! stand for, per probe and per target from the same query; a FiberProbe with spec.slo gets
//! status.slo with its budget, burn rates and a fast burn announced as an Event; a target
//! with its own slo gets its own status and its own burn alert.

mod common;

use anyhow::Result;
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, wait_for};
use fiberstack_operator::crd::{AlertState, Burn, FiberProbe, FiberRegion, ObjectiveStatus};
use fiberstack_operator::slo::{
    Counts, SloKey, SloQuery, TargetSloQuery, slo_counts_all, slo_counts_many,
};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use sqlx::PgPool;

/// Two nodes, one round a minute each for the last 3 days: of `web` 2 % failing, latencies
/// cycling through 50–249 ms; of `api` (from node-1 only) 1 in 7 failing, 20–119 ms.
async fn three_days(pool: &PgPool, probe: &str) -> Result<()> {
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select date_trunc('minute', now()) - make_interval(mins => g) + make_interval(secs => n),
                'node-' || n, $1, 'ghana', 'web', 'http', g % 50 <> 0,
                case when g % 50 <> 0 then 50 + (g % 200) + 0.5 end, 0
           from generate_series(0, 3 * 24 * 60) g, generate_series(1, 2) n
         union all
         select date_trunc('minute', now()) - make_interval(mins => g) + interval '30 seconds',
                'node-1', $1, 'ghana', 'api', 'http', g % 7 <> 0,
                case when g % 7 <> 0 then 20 + (g % 100) + 0.5 end, 0
           from generate_series(0, 3 * 24 * 60) g",
    )
    .bind(probe)
    .execute(pool)
    .await?;
    sqlx::query("select fiberstack_refresh_rollups(now() - interval '4 days', now())")
        .execute(pool)
        .await?;
    Ok(())
}

/// The same counts from the raw samples since `from` (an SQL expression).
async fn raw(pool: &PgPool, probe: &str, from: &str, threshold: f64) -> Result<Counts> {
    raw_of(pool, probe, None, from, threshold).await
}

/// [`raw`] of one target, or of all when `target` is None.
async fn raw_of(
    pool: &PgPool,
    probe: &str,
    target: Option<&str>,
    from: &str,
    threshold: f64,
) -> Result<Counts> {
    // `from` is one of this file's literals.
    let (rounds, up, timed, fast): (i64, i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select count(*), count(*) filter (where up),
                count(*) filter (where up and latency_ms is not null),
                count(*) filter (where up and fiberstack_latency_bin(latency_ms) < fiberstack_latency_bin($2))
           from metrics where probe = $1 and time >= {from} and ($3::text is null or target = $3)"
    )))
    .bind(probe)
    .bind(threshold)
    .bind(target)
    .fetch_one(pool)
    .await?;
    Ok(Counts {
        rounds,
        up,
        timed,
        fast,
    })
}

#[tokio::test]
async fn counts_from_the_rollups_equal_the_raw_samples_they_stand_for() -> Result<()> {
    let (url, pool) = common::migrated_database("fs_slo_counts").await?;
    let probe = "ns/edge";
    three_days(&pool, probe).await?;
    let query = SloQuery {
        probe: probe.to_owned(),
        window_days: 2,
        threshold_ms: Some(150.0),
    };
    let other = SloQuery {
        probe: "ns/silent".to_owned(),
        window_days: 30,
        threshold_ms: None,
    };
    let counts = slo_counts_many(&pool, &[query.clone(), other]).await?;
    let c = &counts[probe];

    // Two whole days: yesterday and today, up to now.
    let window = raw(
        &pool,
        probe,
        "date_trunc('day', now()) - interval '1 day'",
        150.0,
    )
    .await?;
    assert_eq!(c.window, window);
    assert_eq!(c.nodes, 2);
    assert!(window.rounds > 2 * 24 * 60, "{window:?}");
    // The histogram's answer errs only within the threshold's bin (2 % wide), on the strict
    // side: at least every round under 150/1.02 ms, at most those under 150 ms.
    let under = async |ms: f64| -> Result<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from metrics where probe = $1 and up and latency_ms < $2
                and time >= date_trunc('day', now()) - interval '1 day'",
        )
        .bind(probe)
        .bind(ms)
        .fetch_one(&pool)
        .await?)
    };
    let (low, high) = (under(150.0 / 1.02).await?, under(150.0).await?);
    assert!(
        low <= c.window.fast && c.window.fast <= high && low < high,
        "{} not within [{low}, {high}]",
        c.window.fast
    );

    let six = raw(
        &pool,
        probe,
        "date_trunc('hour', now()) - interval '5 hours'",
        150.0,
    )
    .await?;
    assert_eq!(c.last_6h, six);
    for (counted, span) in [
        (c.last_1h, "1 hour"),
        (c.last_30m, "30 minutes"),
        (c.last_5m, "5 minutes"),
    ] {
        let exact = raw(&pool, probe, &format!("now() - interval '{span}'"), 150.0).await?;
        // `>=` against `>`: a round exactly at the edge may count on one side only.
        assert!(
            (counted.rounds - exact.rounds).abs() <= 2 && counted.rounds > 0,
            "{span}: {counted:?} vs {exact:?}"
        );
    }
    // A probe without rounds has zeros, and no threshold counts nothing as fast.
    assert_eq!(counts["ns/silent"].window, Counts::default());

    // The targets' own objectives from the same queries: `api` over 2 days under 60 ms, `web`
    // over 3 days under 100 ms; the probe's counts stay what they were alone.
    let targets = [
        TargetSloQuery {
            probe: probe.to_owned(),
            target: "api".to_owned(),
            window_days: 2,
            threshold_ms: Some(60.0),
        },
        TargetSloQuery {
            probe: probe.to_owned(),
            target: "web".to_owned(),
            window_days: 3,
            threshold_ms: Some(100.0),
        },
        TargetSloQuery {
            probe: "ns/silent".to_owned(),
            target: "none".to_owned(),
            window_days: 30,
            threshold_ms: None,
        },
    ];
    let all = slo_counts_all(&pool, std::slice::from_ref(&query), &targets).await?;
    assert_eq!(
        all[&SloKey::probe(probe)],
        *c,
        "the probe's counts are unchanged"
    );
    assert_eq!(all.len(), 4, "{:?}", all.keys().collect::<Vec<_>>());
    let yesterday = "date_trunc('day', now()) - interval '1 day'";
    let api = raw_of(&pool, probe, Some("api"), yesterday, 60.0).await?;
    let web = raw_of(
        &pool,
        probe,
        Some("web"),
        "date_trunc('day', now()) - interval '2 days'",
        100.0,
    )
    .await?;
    assert_eq!(all[&SloKey::target(probe, "api")].window, api);
    assert_eq!(all[&SloKey::target(probe, "api")].nodes, 1);
    assert_eq!(all[&SloKey::target(probe, "web")].window, web);
    assert_eq!(all[&SloKey::target(probe, "web")].nodes, 2);
    assert!(
        api.rounds > 0 && api.up < api.rounds && api.fast < api.timed,
        "{api:?}"
    );
    let api_six = raw_of(
        &pool,
        probe,
        Some("api"),
        "date_trunc('hour', now()) - interval '5 hours'",
        60.0,
    )
    .await?;
    assert_eq!(all[&SloKey::target(probe, "api")].last_6h, api_six);
    let web_six = raw_of(
        &pool,
        probe,
        Some("web"),
        "date_trunc('hour', now()) - interval '5 hours'",
        100.0,
    )
    .await?;
    assert_eq!(all[&SloKey::target(probe, "web")].last_6h, web_six);
    assert_eq!(
        all[&SloKey::target("ns/silent", "none")],
        Default::default()
    );

    pool.close().await;
    LocalEnv::load()?.drop_postgres_database(&url, &[]).await
}

/// Region ghana and `probe` applied in a namespace of their own, with a migrated database of
/// their own, for the tests that run the operator.
struct World {
    client: kube::Client,
    url: String,
    pool: PgPool,
    ns: TestNamespace,
    probes: Api<FiberProbe>,
    /// The probe's key in the samples (`<namespace>/accra-edge`).
    key: String,
}

impl World {
    async fn new(prefix: &str, probe: &serde_json::Value) -> Result<Self> {
        let client = common::client().await?;
        common::install_crds(&client).await?;
        let (url, pool) =
            common::migrated_database(&format!("fs_{}", prefix.replace('-', "_"))).await?;
        let ns = TestNamespace::create(&client, &format!("op-{prefix}")).await?;
        apply_json(&ns.api::<FiberRegion>(), &common::region_json("ghana")).await?;
        let probes = ns.api::<FiberProbe>();
        apply_json(&probes, probe).await?;
        let key = format!("{}/accra-edge", ns.name);
        Ok(Self {
            client,
            url,
            pool,
            ns,
            probes,
            key,
        })
    }

    /// What the ETL's maintenance does every minute in plain mode: the hours before the
    /// current one are read from the rollups.
    async fn refresh_rollups(&self) -> Result<()> {
        sqlx::query("select fiberstack_refresh_rollups(now() - interval '2 hours', 'infinity')")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Runs `checks` with the operator running on the database, then stops it and removes
    /// the namespace and the database, whatever `checks` returned.
    async fn with_operator(self, checks: impl AsyncFnOnce(&Self) -> Result<()>) -> Result<()> {
        let db = fiberstack_operator::status::connect_lazy(&self.url, None)?;
        let operator = Operator::start(&self.client, &self.ns.name, Some(db));
        let result = checks(&self).await;
        operator.stop().await;
        self.pool.close().await;
        self.ns.delete().await?;
        LocalEnv::load()?
            .drop_postgres_database(&self.url, &[])
            .await?;
        result
    }
}

#[tokio::test]
async fn a_probe_with_an_slo_reports_its_budget_and_a_fast_burn() -> Result<()> {
    let mut probe = common::probe_json("accra-edge", "ghana");
    probe["spec"]["slo"] = json!({
        "availabilityPct": 99.9,
        "latency": { "thresholdMs": 150, "percent": 99 },
        "windowDays": 7
    });
    let world = World::new("slo", &probe).await?;
    // The last 40 minutes, one round every 10 s: every third failing.
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => 10 * g), 'gh-accra-1', $1, 'ghana', 'google-dns',
                'icmp', g % 3 <> 0, 20, 0
           from generate_series(0, 239) g",
    )
    .bind(&world.key)
    .execute(&world.pool)
    .await?;
    world.refresh_rollups().await?;

    world
        .with_operator(async |w| {
            let slo = wait_for("status.slo burning Fast", WAIT, EVERY, || async {
                let s = w.probes.get("accra-edge").await?.status.unwrap_or_default();
                Ok(match s.slo {
                    Some(slo) if slo.burning == Some(Burn::Fast) => Ok(slo),
                    other => Err(format!("{other:?}")),
                })
            })
            .await?;
            assert_eq!(slo.window_days, 7);
            let a = slo.availability.clone().unwrap();
            assert_eq!(a.objective_pct, 99.9);
            // 80 of 240 failed: 66.667 %, a third bad against 0.1 % allowed.
            assert_eq!(a.sli_pct, Some(66.667));
            assert_eq!(a.burn_rate_1h, Some(333.3));
            assert!(a.error_budget_remaining_pct.unwrap() < -30_000.0, "{a:?}");
            // Every successful round took 20 ms: the latency objective is met in full.
            let l = slo.latency.clone().unwrap();
            assert_eq!(
                (l.sli_pct, l.error_budget_remaining_pct),
                (Some(100.0), Some(100.0))
            );
            // The probe was created a moment ago: until one interval has passed nothing is
            // expected (None); after that, its rounds cover all that is expected (0) — never a
            // positive unknown share.
            assert!(matches!(slo.unknown_pct, None | Some(0.0)), "{slo:?}");
            // The burn is an alert too, for the notifiers.
            let s = w.probes.get("accra-edge").await?.status.unwrap_or_default();
            let alert = s.alerts.iter().find(|a| a.burn.is_some()).cloned();
            let alert = alert.unwrap_or_else(|| panic!("no SLO alert in {:?}", s.alerts));
            assert_eq!(
                (alert.target.as_str(), alert.burn),
                ("slo", Some(Burn::Fast))
            );
            assert!(
                alert
                    .reason
                    .starts_with("error budget burning fast: availability 66.667 %"),
                "{}",
                alert.reason
            );

            let events = w.ns.api::<Event>();
            wait_for("a SloBurnFast Event", WAIT, EVERY, || async {
                let reasons: Vec<String> = events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .filter_map(|e| e.reason)
                    .collect();
                Ok(if reasons.iter().any(|r| r == "SloBurnFast") {
                    Ok(())
                } else {
                    Err(format!("{reasons:?}"))
                })
            })
            .await
        })
        .await
}

/// An objective's expected status from the rounds counted in the database: the SLI to
/// 3 places, the budget left and the burn rate to 1 place, as percentages.
fn expected(objective_pct: f64, good: i64, total: i64) -> (f64, f64, f64) {
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    let good_share = good as f64 / total as f64;
    let allowed = 1.0 - objective_pct / 100.0;
    (
        round(100.0 * good_share, 3),
        round(100.0 * (1.0 - (1.0 - good_share) / allowed), 1),
        round((1.0 - good_share) / allowed, 1),
    )
}

fn observed(o: &ObjectiveStatus) -> (f64, f64, f64) {
    (
        o.sli_pct.unwrap_or(f64::NAN),
        o.error_budget_remaining_pct.unwrap_or(f64::NAN),
        o.burn_rate_1h.unwrap_or(f64::NAN),
    )
}

#[tokio::test]
async fn a_target_with_its_own_slo_gets_its_own_status_and_burn_alert() -> Result<()> {
    // The probe's objective is loose, db's own is tight: db's failures burn db's budget fast
    // and leave the probe's, spread over both targets, burning slowly or not at all.
    let mut probe = common::probe_json("accra-edge", "ghana");
    probe["spec"]["slo"] = json!({
        "availabilityPct": 80,
        "latency": { "thresholdMs": 150, "percent": 99 },
        "windowDays": 7
    });
    probe["spec"]["targets"][1]["slo"] = json!({
        "availabilityPct": 99.9,
        "latency": { "thresholdMs": 30, "percent": 99 },
        "windowDays": 3
    });
    let world = World::new("slo-target", &probe).await?;
    // The last 40 minutes, one round every 10 s of each target: google-dns always up in
    // 20 ms; db failing one round in 5 (no latency), the others in 25 or 45 ms in turn.
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => 10 * g), 'gh-accra-1', $1, 'ghana', 'google-dns',
                'icmp', true, 20, 0
           from generate_series(0, 239) g
         union all
         select now() - make_interval(secs => 10 * g), 'gh-accra-1', $1, 'ghana', 'db',
                'tcp', g % 5 <> 0,
                case when g % 5 = 0 then null when g % 2 = 0 then 25 else 45 end, 0
           from generate_series(0, 239) g",
    )
    .bind(&world.key)
    .execute(&world.pool)
    .await?;
    world.refresh_rollups().await?;
    // What the objectives count, from the samples themselves.
    let count = async |target: Option<&str>, under_ms: f64| -> Result<(i64, i64, i64, i64)> {
        Ok(sqlx::query_as(
            "select count(*), count(*) filter (where up),
                    count(*) filter (where up and latency_ms is not null),
                    count(*) filter (where up and latency_ms < $3)
               from metrics where probe = $1 and ($2::text is null or target = $2)",
        )
        .bind(&world.key)
        .bind(target)
        .bind(under_ms)
        .fetch_one(&world.pool)
        .await?)
    };
    let (p_rounds, p_up, p_timed, p_fast) = count(None, 150.0).await?;
    let (t_rounds, t_up, t_timed, t_fast) = count(Some("db"), 30.0).await?;
    // The two differ, and only db's burns fast (> 14.4 over the last hour).
    let p_avail = expected(80.0, p_up, p_rounds);
    let t_avail = expected(99.9, t_up, t_rounds);
    assert!(
        p_avail.2 < 14.4 && t_avail.2 > 14.4,
        "{p_avail:?} {t_avail:?}"
    );

    world
        .with_operator(async |w| {
            let s = wait_for("db's own slo burning Fast", WAIT, EVERY, || async {
                let s = w.probes.get("accra-edge").await?.status.unwrap_or_default();
                let db = s.targets.iter().find(|t| t.name == "db");
                Ok(match db.and_then(|t| t.slo.clone()) {
                    Some(slo) if slo.burning == Some(Burn::Fast) => Ok(s),
                    other => Err(format!("{other:?}")),
                })
            })
            .await?;
            // The probe's objectives over both targets.
            let slo = s.slo.clone().expect("status.slo");
            assert_eq!(slo.window_days, 7);
            assert_eq!(observed(slo.availability.as_ref().unwrap()), p_avail);
            assert_eq!(
                observed(slo.latency.as_ref().unwrap()),
                expected(99.0, p_fast, p_timed)
            );
            assert_ne!(slo.burning, Some(Burn::Fast));
            // db's own, over db's rounds alone.
            let row = |name: &str| s.targets.iter().find(|t| t.name == name).unwrap();
            let own = row("db").slo.clone().unwrap();
            assert_eq!(own.window_days, 3);
            assert_eq!(observed(own.availability.as_ref().unwrap()), t_avail);
            assert_eq!(
                observed(own.latency.as_ref().unwrap()),
                expected(99.0, t_fast, t_timed)
            );
            assert_ne!(own.availability, slo.availability);
            assert_eq!(row("google-dns").slo, None, "no slo of its own");
            // Its own alert: the target's name, the burn, an id of its own.
            let burns: Vec<_> = s.alerts.iter().filter(|a| a.burn.is_some()).collect();
            let alert = burns
                .iter()
                .find(|a| a.target == "db")
                .unwrap_or_else(|| panic!("no burn alert of db in {:?}", s.alerts));
            assert_eq!(
                (alert.burn.clone(), alert.state),
                (Some(Burn::Fast), AlertState::Firing)
            );
            assert!(
                alert
                    .id
                    .starts_with(&format!("{}/accra-edge/db/slo@", w.ns.name)),
                "{}",
                alert.id
            );
            assert!(
                burns
                    .iter()
                    .all(|a| a.target != "slo" || a.burn != Some(Burn::Fast)),
                "the probe's own objective does not burn fast: {burns:?}"
            );
            Ok(())
        })
        .await
}
