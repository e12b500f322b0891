//! Fleet health in FiberProbe status from samples in a real, freshly migrated PostgreSQL
//! database: Reporting, the 15-minute summary, Healthy with its hysteresis and Events, what
//! `kubectl get fiberprobes` shows, and a database that cannot be reached.

mod common;

use anyhow::{Context, Result};
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, wait_for};
use fiberstack_operator::crd::{Condition, FiberProbe, FiberProbeStatus, FiberRegion};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use sqlx::PgPool;

/// `count` successful samples of one target from gh-accra-1, one every 10 s back from now
/// (offset by `skew_ms` so that two series never share a key).
async fn seed(
    pool: &PgPool,
    probe: &str,
    target: &str,
    count: i32,
    latency_ms: f64,
    skew_ms: i32,
) -> Result<()> {
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => g * 10) - make_interval(secs => $5::float8 / 1000),
                'gh-accra-1', $1, 'ghana', $2, 'icmp', true, $3, 0
           from generate_series(1, $4) g",
    )
    .bind(probe)
    .bind(target)
    .bind(latency_ms)
    .bind(count)
    .bind(skew_ms)
    .execute(pool)
    .await?;
    Ok(())
}

fn cond(s: &FiberProbeStatus, t: &str) -> Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
        .unwrap_or_default()
}

async fn wait_status(
    probes: &Api<FiberProbe>,
    what: &str,
    check: impl Fn(&FiberProbeStatus) -> bool,
) -> Result<FiberProbeStatus> {
    wait_for(what, WAIT, EVERY, || async {
        let s = probes.get("accra-edge").await?.status.unwrap_or_default();
        Ok(if check(&s) {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        })
    })
    .await
}

async fn health_events(client: &Client, ns: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

#[tokio::test]
async fn samples_drive_reporting_and_healthy_with_events() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let (url, pool) = common::migrated_database("fs_operator").await?;
    let ns = TestNamespace::create(&client, "op-health").await?;
    let db = fiberstack_operator::status::connect_lazy(&url, None)?;
    let operator = Operator::start(&client, &ns.name, Some(db));
    let result = health(&client, &ns.name, &pool, &operator).await;
    operator.stop().await;
    ns.delete().await?;
    result
}

async fn health(client: &Client, ns: &str, pool: &PgPool, operator: &Operator) -> Result<()> {
    let regions: Api<FiberRegion> = Api::namespaced(client.clone(), ns);
    let probes: Api<FiberProbe> = Api::namespaced(client.clone(), ns);
    apply_json(&regions, &common::region_json("ghana")).await?;
    apply_json(&probes, &common::probe_json("accra-edge", "ghana")).await?;
    let key = format!("{ns}/accra-edge");

    // No samples yet: placed, not reporting, health unknown.
    let s = wait_status(&probes, "NoRecentSamples", |s| {
        cond(s, "Reporting").reason == "NoRecentSamples" && s.ready == "1/1"
    })
    .await?;
    assert_eq!(cond(&s, "Healthy").status, "Unknown");
    assert_eq!(s.health, "NoData");

    // Healthy samples from the one node the probe runs on.
    seed(pool, &key, "google-dns", 30, 20.0, 0).await?;
    seed(pool, &key, "db", 30, 5.0, 1).await?;
    let s = wait_status(&probes, "Reporting and Healthy", |s| {
        cond(s, "Reporting").status == "True" && cond(s, "Healthy").status == "True"
    })
    .await?;
    assert_eq!(s.reporting_probes, 1);
    assert!(s.last_sample_time.is_some());
    let summary = s.summary.clone().context("summary")?;
    assert_eq!(summary.samples, 60);
    assert_eq!(summary.uptime_pct, Some(100.0));
    assert_eq!(s.targets.len(), 2);
    assert_eq!(s.targets[0].name, "google-dns");
    assert_eq!(s.targets[0].summary.latency_p95_ms, Some(20.0));
    assert_eq!(s.targets[0].state, "Healthy");
    let healthy_since = cond(&s, "Healthy").last_transition_time;

    // `kubectl get` tells the story in one line.
    let env = LocalEnv::load()?;
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["get", "fiberprobes", "-n", ns])
        .output()
        .context("running kubectl")?;
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REGION",
            "READY",
            "REPORTING",
            "P95",
            "LOSS",
            "UPTIME",
            "HEALTH",
            "SCOPE",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..8],
        [
            "accra-edge",
            "ghana",
            "1/1",
            "1",
            "20",
            "0",
            "100",
            "Healthy"
        ],
        "{table}"
    );

    // A later evaluation with nothing new keeps the transition time.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let s = probes.get("accra-edge").await?.status.unwrap_or_default();
    assert_eq!(cond(&s, "Healthy").last_transition_time, healthy_since);

    // Steady state: nothing changes, so reconciles (every 2 s) write no status at all.
    let counted = |text: &str, result: &str| -> f64 {
        let series = format!(
            "fiberstack_operator_status_writes_total{{kind=\"FiberProbe\",result=\"{result}\"}}"
        );
        common::metric_value(text, &series).unwrap_or(0.0)
    };
    let version = probes.get("accra-edge").await?.metadata.resource_version;
    let before = operator.metrics_text();
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let after = operator.metrics_text();
    assert_eq!(
        counted(&after, "written"),
        counted(&before, "written"),
        "a status write in steady state:\n{after}"
    );
    assert!(
        counted(&after, "unchanged") >= counted(&before, "unchanged") + 2.0,
        "reconciles ran and found nothing to write:\n{after}"
    );
    assert_eq!(
        probes.get("accra-edge").await?.metadata.resource_version,
        version
    );
    // ... and neither applies its ConfigMap, DaemonSet or the region's workloads again, nor
    // reads anything from the API server: the caches answer.
    let sum = fiberstack_e2e::metric_sum;
    let applies = "fiberstack_operator_applies_total{";
    assert_eq!(
        sum(&after, applies, "result=\"applied\""),
        sum(&before, applies, "result=\"applied\""),
        "an apply in steady state:\n{after}"
    );
    assert!(
        sum(&after, applies, "result=\"unchanged\"")
            >= sum(&before, applies, "result=\"unchanged\"") + 4.0,
        "the probe's ConfigMap and DaemonSet were found unchanged at each reconcile:\n{after}"
    );
    let reads = "fiberstack_operator_api_reads_total{";
    assert_eq!(
        sum(&after, reads, ""),
        sum(&before, reads, ""),
        "a read from the API server in steady state:\n{after}"
    );

    // The DNS target degrades: 60 slow, lossy samples outweigh the 30 good ones.
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => g) - interval '3 milliseconds',
                'gh-accra-1', $1, 'ghana', 'google-dns', 'icmp', true, 400, 10
           from generate_series(1, 60) g",
    )
    .bind(&key)
    .execute(pool)
    .await?;
    let s = wait_status(&probes, "Healthy=False", |s| {
        cond(s, "Healthy").status == "False"
    })
    .await?;
    let healthy = cond(&s, "Healthy");
    assert_eq!(healthy.reason, "ThresholdsBreached");
    assert!(
        healthy
            .message
            .starts_with("worst target google-dns: p95 latency 400 ms > 150 ms"),
        "{}",
        healthy.message
    );
    assert_eq!(s.health, "Degraded");
    let target = &s.targets[0];
    assert_eq!(
        (target.name.as_str(), target.state.as_str()),
        ("google-dns", "Breaching")
    );
    // The same verdict as Prometheus series, for alerting rules (recorded just after the
    // status write the test has seen, so waited for).
    let labels = format!(r#"namespace="{ns}",probe="accra-edge",region="ghana""#);
    let expected = [
        format!("fiberstack_probe_healthy{{{labels}}} 0.0"),
        format!(r#"fiberstack_target_healthy{{{labels},target="google-dns",kind="icmp"}} 0.0"#),
        format!(
            r#"fiberstack_target_latency_p95_seconds{{{labels},target="google-dns",kind="icmp"}} 0.4"#
        ),
    ];
    wait_for("the Degraded probe's series", WAIT, EVERY, || async {
        let metrics = operator.metrics_text();
        Ok(
            match expected.iter().find(|s| !metrics.contains(s.as_str())) {
                None => Ok(()),
                Some(missing) => Err(format!("no {missing} in\n{metrics}")),
            },
        )
    })
    .await?;
    wait_for("HealthDegraded event", WAIT, EVERY, || async {
        let reasons = health_events(client, ns).await?;
        Ok(if reasons.iter().any(|r| r == "HealthDegraded") {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        })
    })
    .await?;

    // Recovery: the bad samples go away.
    sqlx::query("delete from metrics where probe = $1 and latency_ms = 400")
        .bind(&key)
        .execute(pool)
        .await?;
    wait_status(&probes, "Healthy=True again", |s| {
        cond(s, "Healthy").status == "True"
    })
    .await?;
    wait_for("HealthRecovered event", WAIT, EVERY, || async {
        let reasons = health_events(client, ns).await?;
        Ok(if reasons.iter().any(|r| r == "HealthRecovered") {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        })
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_makes_reporting_unknown() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-nodb").await?;
    // Nothing listens on port 1.
    let db =
        fiberstack_operator::status::connect_lazy("postgres://postgres@127.0.0.1:1/none", None)?;
    let operator = Operator::start(&client, &ns.name, Some(db));
    let result = async {
        let regions: Api<FiberRegion> = Api::namespaced(client.clone(), &ns.name);
        let probes: Api<FiberProbe> = Api::namespaced(client.clone(), &ns.name);
        apply_json(&regions, &common::region_json("ghana")).await?;
        apply_json(&probes, &common::probe_json("accra-edge", "ghana")).await?;
        let s = wait_status(&probes, "DatabaseUnavailable", |s| {
            cond(s, "Reporting").reason == "DatabaseUnavailable" && s.ready == "1/1"
        })
        .await?;
        assert_eq!(cond(&s, "Reporting").status, "Unknown");
        assert!(
            cond(&s, "Reporting")
                .message
                .contains("cannot read samples")
        );
        Ok(())
    }
    .await;
    operator.stop().await;
    ns.delete().await?;
    result
}

/// Certificate expiry from HTTPS samples' metadata, against a real database: per node the
/// newest sample that saw a certificate, the earliest over the nodes, in status
/// (certificateExpiresAt) and as a series, breaching the target's own certExpiryDays.
#[tokio::test]
async fn certificate_expiry_reaches_status_series_and_health() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let (url, pool) = common::migrated_database("fs_operator").await?;
    let ns = TestNamespace::create(&client, "op-cert").await?;
    let db = fiberstack_operator::status::connect_lazy(&url, None)?;
    let operator = Operator::start(&client, &ns.name, Some(db));
    let result = certificates(&client, &ns.name, &pool, &operator).await;
    operator.stop().await;
    ns.delete().await?;
    result
}

async fn certificates(client: &Client, ns: &str, pool: &PgPool, operator: &Operator) -> Result<()> {
    use chrono::{DateTime, Duration, SubsecRound, Utc};
    let regions: Api<FiberRegion> = Api::namespaced(client.clone(), ns);
    let probes: Api<FiberProbe> = Api::namespaced(client.clone(), ns);
    apply_json(&regions, &common::region_json("ghana")).await?;
    let mut probe = common::probe_json("accra-edge", "ghana");
    // The probe's certExpiryDays stays the default 14 and its uptimePct 99; the target's own
    // are 30 and 50 (one failed check of four is no breach).
    probe["spec"]["targets"] = serde_json::json!([
        { "name": "api", "http": { "url": "https://api.example.com/health" },
          "thresholds": { "certExpiryDays": 30, "uptimePct": 50 } },
        { "name": "google-dns", "icmp": { "host": "8.8.8.8" } }
    ]);
    apply_json(&probes, &probe).await?;
    let key = format!("{ns}/accra-edge");

    let now = Utc::now().trunc_subsecs(0);
    let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let at = |secs: i64| now - Duration::seconds(secs);
    // gh-accra-1 saw an old certificate (5 days left), then the renewed one (90 days);
    // gh-accra-2 runs a probe that records whole days only (20), then failed a check (no
    // certificate). The earliest of the nodes' newest: gh-accra-2's, 20 days from its sample.
    let samples = [
        (
            at(60),
            "gh-accra-1",
            "api",
            "http",
            true,
            serde_json::json!({ "cert_not_after": rfc3339(now + Duration::days(5)) }),
        ),
        (
            at(30),
            "gh-accra-1",
            "api",
            "http",
            true,
            serde_json::json!({ "cert_not_after": rfc3339(now + Duration::days(90)) }),
        ),
        (
            at(40),
            "gh-accra-2",
            "api",
            "http",
            true,
            serde_json::json!({ "cert_days_to_expiry": 20 }),
        ),
        (
            at(10),
            "gh-accra-2",
            "api",
            "http",
            false,
            serde_json::json!({}),
        ),
        (
            at(20),
            "gh-accra-1",
            "google-dns",
            "icmp",
            true,
            serde_json::json!({}),
        ),
    ];
    // One transaction: the operator, already running, must not read the status between two
    // of these rows (CI saw google-dns NoData when a period fell before its row).
    let mut tx = pool.begin().await?;
    for (time, node, target, kind, up, metadata) in samples {
        sqlx::query(
            "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, metadata)
             values ($1, $2, $3, 'ghana', $4, $5, $6, 20, $7::jsonb)",
        )
        .bind(time)
        .bind(node)
        .bind(&key)
        .bind(target)
        .bind(kind)
        .bind(up)
        .bind(metadata.to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let expected = at(40) + Duration::days(20);

    let s = wait_status(&probes, "the certificate figure", |s| {
        s.targets.iter().any(|t| t.certificate_expires_at.is_some())
    })
    .await?;
    let api = &s.targets[0];
    assert_eq!(api.name, "api");
    assert_eq!(
        api.certificate_expires_at.as_deref(),
        Some(rfc3339(expected).as_str())
    );
    assert_eq!(api.state, "Breaching", "20 days < the target's 30");
    let message = api.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("certificate expires in ") && message.contains("< 30 days"),
        "{message}"
    );
    assert_eq!(s.targets[1].certificate_expires_at, None);
    assert_eq!(s.targets[1].state, "Healthy");

    // The same figure as a series, Unix time; and the nodes that report.
    let labels = format!(r#"namespace="{ns}",probe="accra-edge",region="ghana""#);
    wait_for("the certificate series", WAIT, EVERY, || async {
        // desiredProbes follows the DaemonSet's status, which may move after the status read
        // above: the series must show what the status shows now.
        let desired = probes
            .get("accra-edge")
            .await?
            .status
            .map_or(0, |s| s.desired_probes);
        let wanted = [
            format!(
                r#"fiberstack_target_certificate_expiry_timestamp_seconds{{{labels},target="api",kind="http"}} {}.0"#,
                expected.timestamp()
            ),
            format!("fiberstack_probe_reporting_nodes{{{labels}}} 2.0"),
            format!("fiberstack_probe_desired_nodes{{{labels}}} {desired}.0"),
        ];
        let metrics = operator.metrics_text();
        Ok(
            match wanted.iter().find(|s| !metrics.contains(s.as_str())) {
                None => Ok(()),
                Some(missing) => Err(format!("no {missing} in\n{metrics}")),
            },
        )
    })
    .await?;
    fiberstack_e2e::promtool::check_metrics(&operator.metrics_classic_text())?;
    Ok(())
}
