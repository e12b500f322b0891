//! Service level objectives against a real, migrated PostgreSQL database: the counts read
//! from the rollups (daily, hourly, the current hour raw) equal those of the raw samples they
//! stand for, and a FiberProbe with spec.slo gets status.slo with its budget, burn rates and
//! a fast burn announced as an Event.

mod common;

use anyhow::Result;
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, wait_for};
use fiberstack_operator::crd::{Burn, FiberProbe, FiberRegion};
use fiberstack_operator::slo::{Counts, SloQuery, slo_counts_many};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use sqlx::PgPool;

/// Two nodes, one round a minute each for the last 3 days: 2 % failing, latencies cycling
/// through 50–249 ms.
async fn three_days(pool: &PgPool, probe: &str) -> Result<()> {
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select date_trunc('minute', now()) - make_interval(mins => g) + make_interval(secs => n),
                'node-' || n, $1, 'ghana', 'web', 'http', g % 50 <> 0,
                case when g % 50 <> 0 then 50 + (g % 200) + 0.5 end, 0
           from generate_series(0, 3 * 24 * 60) g, generate_series(1, 2) n",
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
    // `from` is one of this file's literals.
    let (rounds, up, timed, fast): (i64, i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select count(*), count(*) filter (where up),
                count(*) filter (where up and latency_ms is not null),
                count(*) filter (where up and fiberstack_latency_bin(latency_ms) < fiberstack_latency_bin($2))
           from metrics where probe = $1 and time >= {from}"
    )))
    .bind(probe)
    .bind(threshold)
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
    let counts = slo_counts_many(&pool, &[query, other]).await?;
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

    pool.close().await;
    LocalEnv::load()?.drop_postgres_database(&url, &[]).await
}

#[tokio::test]
async fn a_probe_with_an_slo_reports_its_budget_and_a_fast_burn() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let (url, pool) = common::migrated_database("fs_slo").await?;
    let ns = TestNamespace::create(&client, "op-slo").await?;
    apply_json(
        &Api::<FiberRegion>::namespaced(client.clone(), &ns.name),
        &common::region_json("ghana"),
    )
    .await?;
    let mut probe = common::probe_json("accra-edge", "ghana");
    probe["spec"]["slo"] = json!({
        "availabilityPct": 99.9,
        "latency": { "thresholdMs": 150, "percent": 99 },
        "windowDays": 7
    });
    let probes = Api::<FiberProbe>::namespaced(client.clone(), &ns.name);
    apply_json(&probes, &probe).await?;
    let key = format!("{}/accra-edge", ns.name);
    // The last 40 minutes, one round every 10 s: every third failing.
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => 10 * g), 'gh-accra-1', $1, 'ghana', 'google-dns',
                'icmp', g % 3 <> 0, 20, 0
           from generate_series(0, 239) g",
    )
    .bind(&key)
    .execute(&pool)
    .await?;
    // What the ETL's maintenance does every minute in plain mode: the hours before the
    // current one are read from the rollups.
    sqlx::query("select fiberstack_refresh_rollups(now() - interval '2 hours', 'infinity')")
        .execute(&pool)
        .await?;

    let db = fiberstack_operator::status::connect_lazy(&url, None)?;
    let operator = Operator::start(&client, &ns.name, Some(db));
    let result = async {
        let slo = wait_for("status.slo burning Fast", WAIT, EVERY, || async {
            let s = probes.get("accra-edge").await?.status.unwrap_or_default();
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
        let s = probes.get("accra-edge").await?.status.unwrap_or_default();
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

        let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
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
    }
    .await;
    operator.stop().await;
    pool.close().await;
    ns.delete().await?;
    LocalEnv::load()?.drop_postgres_database(&url, &[]).await?;
    result
}
