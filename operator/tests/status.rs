//! The status queries on a real, migrated PostgreSQL database: the figures of many probes of
//! one region computed together (`probe_figures_many`, four queries whatever the number of
//! probes) are those of each probe alone (`probe_figures`), and are the right figures: counts,
//! exact percentiles of the window, each target from each node, reporting nodes, the newest
//! sample (none for a target never sampled), certificates.

mod common;

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use fiberstack_operator::status::{self, Figures, ProbeQuery};

/// Probe `a` measures `gateway` from two nodes in two regions (latencies 1–20 ms, every 10 s
/// back from now) and `web` from one node, whose newest sample saw a certificate; probe `b`
/// measures `dns` (the last 15 minutes) and `old` (an hour ago only); probe `c` has no samples.
async fn seed(pool: &sqlx::PgPool) -> Result<()> {
    sqlx::raw_sql(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => 1 + g * 10), n.node, 'st/a', n.region, 'gateway', 'icmp',
                g % 10 <> 0, g + 1 + n.shift, case when g % 4 = 0 then 20 else 0 end
           from generate_series(0, 19) g,
                (values ('gh-accra-1', 'ghana', 0), ('ng-lagos-1', 'nigeria', 100)) n(node, region, shift);
         insert into metrics (time, node, probe, region, target, kind, up, latency_ms, metadata)
         select now() - make_interval(secs => 2 + g * 10), 'gh-accra-1', 'st/a', 'ghana', 'web', 'http',
                true, 50,
                case when g = 0 then '{\"cert_not_after\": \"2027-03-01T00:00:00Z\"}'::jsonb
                     else '{\"cert_not_after\": \"2027-01-01T00:00:00Z\"}'::jsonb end
           from generate_series(0, 4) g;
         insert into metrics (time, node, probe, region, target, kind, up, latency_ms)
         select now() - make_interval(secs => 30 + g * 60), 'gh-accra-2', 'st/b', 'ghana', 'dns', 'dns',
                true, g
           from generate_series(1, 9) g;
         insert into metrics (time, node, probe, region, target, kind, up, latency_ms)
         values (now() - interval '1 hour', 'gh-accra-2', 'st/b', 'ghana', 'old', 'dns', true, 7);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

fn query(probe: &str, targets: &[&str]) -> ProbeQuery {
    ProbeQuery {
        probe: probe.to_owned(),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        interval: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn many_probes_in_one_query_per_period_match_each_alone() -> Result<()> {
    let (url, pool) = common::migrated_database("fs_status").await?;
    seed(&pool).await?;
    let queries = [
        query("st/a", &["gateway", "web", "new"]),
        query("st/b", &["dns", "old"]),
        query("st/c", &["nothing"]),
    ];
    let many = status::probe_figures_many(&pool, &queries).await?;
    assert_eq!(many.len(), 3);
    for q in &queries {
        let alone = status::probe_figures(&pool, &q.probe, &q.targets, q.interval).await?;
        assert_eq!(many[&q.probe], alone, "{}", q.probe);
    }

    let a = &many["st/a"];
    // Both nodes sampled `gateway` within 3 intervals (30 s); `web`'s node did too.
    let recent = Duration::from_secs(30);
    assert_eq!(
        a.reporting_nodes(Utc::now(), recent),
        ["gh-accra-1", "ng-lagos-1"]
    );
    assert_eq!(a.summary.samples, 45);
    let names: Vec<&str> = a.targets.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        names,
        ["gateway", "web"],
        "a target never sampled has no row"
    );
    let gateway = &a.targets[0].1;
    assert_eq!(gateway.samples, 40);
    // Latencies 1–20 from one node and 101–120 from the other: the median is their middle.
    assert_eq!(gateway.latency_p50_ms, Some(60.5));
    assert_eq!(gateway.uptime_pct, Some(90.0));
    assert_eq!(gateway.packet_loss_pct, Some(5.0));
    let vantages: Vec<(&str, &str, i64, Option<f64>)> = a
        .vantages
        .iter()
        .map(|(t, v)| {
            (
                t.as_str(),
                v.node.as_str(),
                v.summary.samples,
                v.summary.latency_p50_ms,
            )
        })
        .collect();
    assert_eq!(
        vantages,
        [
            ("gateway", "gh-accra-1", 20, Some(10.5)),
            ("gateway", "ng-lagos-1", 20, Some(110.5)),
            ("web", "gh-accra-1", 5, Some(50.0)),
        ]
    );
    // The newest certificate sample of the node counts: the renewed certificate.
    assert_eq!(
        a.certificates,
        [("web".to_owned(), "2027-03-01T00:00:00Z".parse()?)]
    );
    let newest: DateTime<Utc> =
        sqlx::query_scalar("select max(time) from metrics where probe = 'st/a'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(a.last_sample, Some(newest));

    let b = &many["st/b"];
    assert!(
        b.reporting_nodes(Utc::now(), recent).is_empty(),
        "its newest sample is 90 s old"
    );
    assert_eq!(
        b.summary.samples, 9,
        "the hour-old sample is outside the window"
    );
    assert_eq!(b.summary.latency_p50_ms, Some(5.0));
    let newest_dns: DateTime<Utc> =
        sqlx::query_scalar("select max(time) from metrics where target = 'dns'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(b.last_sample, Some(newest_dns));

    assert_eq!(many["st/c"], Figures::default(), "no samples, no figures");
    assert_eq!(
        status::newest_sample(&pool, "st/a", &["new".to_owned()]).await?,
        None
    );

    pool.close().await;
    fiberstack_e2e::LocalEnv::load()?
        .drop_postgres_database(&url, &[])
        .await?;
    Ok(())
}
