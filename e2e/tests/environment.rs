//! Tests of the local environment itself: each part is up and behaves as the real thing.
//! They fail (not skip) when a part is missing; `make test` brings the environment up first.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use fiberstack_e2e::{LocalEnv, TestNamespace, unique_name, wait_for};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde_json::json;

const POD_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(500);

async fn kube() -> Result<Client> {
    LocalEnv::load()?.kube().await
}

fn labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn three_fake_nodes_are_ready_with_region_labels() -> Result<()> {
    let nodes = Api::<Node>::all(kube().await?)
        .list(&ListParams::default().labels("fiberstack.io/fake=true"))
        .await?;
    let mut regions: Vec<(String, String, bool)> = nodes
        .items
        .iter()
        .map(|n| {
            let l = labels(n);
            (
                l.get("topology.kubernetes.io/region")
                    .cloned()
                    .unwrap_or_default(),
                n.metadata.name.clone().unwrap_or_default(),
                l.get("fiberstack.io/edge").is_some_and(|v| v == "true"),
            )
        })
        .collect();
    regions.sort();
    assert_eq!(
        regions,
        vec![
            ("gh".to_owned(), "gh-accra-1".to_owned(), true),
            ("ke".to_owned(), "ke-nairobi-1".to_owned(), false),
            ("ng".to_owned(), "ng-lagos-1".to_owned(), true),
        ]
    );
    for node in &nodes.items {
        assert!(is_ready(node), "node {:?} is not Ready", node.metadata.name);
    }
    Ok(())
}

/// Waits until the pods matching `selector` in `ns` are exactly `want` Running pods, and
/// returns the names of the nodes they run on, sorted.
async fn running_pod_nodes(
    client: &Client,
    ns: &str,
    selector: &str,
    want: usize,
) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let what = format!("{want} Running pods with {selector} in {ns}");
    wait_for(&what, POD_TIMEOUT, POLL, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels(selector)).await?;
            let states: Vec<(String, String)> = list
                .items
                .iter()
                .map(|p| {
                    (
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_default(),
                        p.status
                            .as_ref()
                            .and_then(|s| s.phase.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            if states.len() == want && states.iter().all(|(_, phase)| phase == "Running") {
                let mut nodes: Vec<String> = states.into_iter().map(|(node, _)| node).collect();
                nodes.sort();
                Ok(Ok(nodes))
            } else {
                Ok(Err(format!("{states:?}")))
            }
        }
    })
    .await
}

fn pod_template(app: &str) -> serde_json::Value {
    json!({
        "metadata": { "labels": { "app": app } },
        "spec": {
            "containers": [{ "name": "main", "image": "registry.invalid/fiberstack/placeholder:1" }]
        }
    })
}

#[tokio::test]
async fn daemonset_with_region_selector_runs_on_exactly_the_matching_nodes() -> Result<()> {
    let client = kube().await?;
    let ns = TestNamespace::create(&client, "e2e-daemonset").await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    for (app, selector, expected) in [
        (
            "edge",
            json!({ "fiberstack.io/edge": "true" }),
            vec!["gh-accra-1", "ng-lagos-1"],
        ),
        (
            "kenya",
            json!({ "topology.kubernetes.io/region": "ke" }),
            vec!["ke-nairobi-1"],
        ),
    ] {
        let mut template = pod_template(app);
        template["spec"]["nodeSelector"] = selector;
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": { "name": app },
            "spec": { "selector": { "matchLabels": { "app": app } }, "template": template }
        }))?;
        daemonsets
            .create(&PostParams::default(), &ds)
            .await
            .context("creating DaemonSet")?;
        let nodes =
            running_pod_nodes(&client, &ns.name, &format!("app={app}"), expected.len()).await?;
        assert_eq!(nodes, expected, "DaemonSet {app}");
    }
    ns.delete().await
}

#[tokio::test]
async fn deployment_with_two_replicas_gets_two_running_pods() -> Result<()> {
    let client = kube().await?;
    let ns = TestNamespace::create(&client, "e2e-deployment").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": pod_template("web")
        }
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let nodes = running_pod_nodes(&client, &ns.name, "app=web", 2).await?;
    assert_eq!(nodes.len(), 2);
    let available = wait_for("Deployment web available", POD_TIMEOUT, POLL, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("web").await?;
            let ready = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            Ok(if ready == 2 {
                Ok(ready)
            } else {
                Err(format!("{ready} available"))
            })
        }
    })
    .await?;
    assert_eq!(available, 2);
    ns.delete().await
}

#[tokio::test]
async fn redis_stream_round_trip_through_a_consumer_group() -> Result<()> {
    let mut redis = LocalEnv::load()?.redis().await?;
    let stream = unique_name("fiber:test:samples");
    let group = "fiber-etl";
    let _: () = redis.xgroup_create_mkstream(&stream, group, "$").await?;
    let id: String = redis.xadd(&stream, "*", &[("batch", "{\"n\":1}")]).await?;

    let opts = StreamReadOptions::default()
        .group(group, "worker-1")
        .count(10);
    let reply: StreamReadReply = redis.xread_options(&[&stream], &[">"], &opts).await?;
    let entries = &reply.keys[0].ids;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, id);
    let payload: String = entries[0].get("batch").context("field batch")?;
    assert_eq!(payload, "{\"n\":1}");

    let pending: redis::streams::StreamPendingReply = redis.xpending(&stream, group).await?;
    assert_eq!(pending.count(), 1, "read but not acked is pending");
    let acked: i64 = redis.xack(&stream, group, &[&id]).await?;
    assert_eq!(acked, 1);
    let pending: redis::streams::StreamPendingReply = redis.xpending(&stream, group).await?;
    assert_eq!(pending.count(), 0, "acked is no longer pending");

    // AOF is on, as the data path's durability relies on it.
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut redis)
        .await?;
    assert_eq!(aof, vec!["appendonly", "yes"]);
    let _: () = redis.del(&stream).await?;
    Ok(())
}

#[tokio::test]
async fn postgresql_answers_as_a_superuser() -> Result<()> {
    let pg = LocalEnv::load()?.postgres().await?;
    let version: i32 = pg
        .query_one("select current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    assert!(
        (150_000..160_000).contains(&version),
        "PostgreSQL 15 expected, got {version}"
    );
    let superuser: bool = pg
        .query_one(
            "select rolsuper from pg_roles where rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    assert!(superuser);
    pg.batch_execute("create temporary table t (v int primary key); insert into t values (1), (2)")
        .await?;
    let n: i64 = pg.query_one("select sum(v) from t", &[]).await?.get(0);
    assert_eq!(n, 3);
    let err = pg
        .execute("insert into t values (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    Ok(())
}

#[tokio::test]
async fn timescaledb_creates_the_extension_and_a_hypertable() -> Result<()> {
    let db = LocalEnv::load()?.timescale().await?;
    db.batch_execute("create extension if not exists timescaledb")
        .await?;
    let version: String = db
        .query_one(
            "select extversion from pg_extension where extname = 'timescaledb'",
            &[],
        )
        .await?
        .get(0);
    assert!(
        version.starts_with("2."),
        "TimescaleDB 2.x expected, got {version}"
    );
    let table = unique_name("e2e_metrics").replace('-', "_");
    db.batch_execute(&format!(
        "create table {table} (time timestamptz not null, node text not null, latency_ms double precision);
         select create_hypertable('{table}', by_range('time', interval '1 day'));
         insert into {table} values ('2026-11-20T10:00:00Z', 'gh-accra-1', 20), ('2026-11-22T10:00:00Z', 'gh-accra-1', 30);"
    ))
    .await?;
    let hypertables: i64 = db
        .query_one(
            "select count(*) from timescaledb_information.hypertables where hypertable_name = $1",
            &[&table],
        )
        .await?
        .get(0);
    assert_eq!(hypertables, 1);
    let chunks: i64 = db
        .query_one(
            "select count(*) from timescaledb_information.chunks where hypertable_name = $1",
            &[&table],
        )
        .await?
        .get(0);
    assert_eq!(chunks, 2, "two days apart with 1-day chunks");
    let avg: f64 = db
        .query_one(
            &format!(
                "select avg(latency_ms) from {table} where time > now() - interval '10 years'"
            ),
            &[],
        )
        .await?
        .get(0);
    assert_eq!(avg, 25.0);
    // The community-licensed features the data path relies on are enabled.
    db.batch_execute(&format!(
        "alter table {table} set (timescaledb.compress, timescaledb.compress_segmentby = 'node');
         select add_compression_policy('{table}', interval '3 days');
         select add_retention_policy('{table}', interval '7 days');
         create materialized view {table}_hourly with (timescaledb.continuous) as
           select time_bucket('1 hour', time) as bucket, node,
                  percentile_cont(0.5) within group (order by latency_ms) as p50
           from {table} group by 1, 2 with no data;"
    ))
    .await?;
    // A refresh cannot run inside a transaction, so not within a multi-statement batch.
    db.batch_execute(&format!(
        "call refresh_continuous_aggregate('{table}_hourly', null, null)"
    ))
    .await?;
    let p50: f64 = db
        .query_one(
            &format!("select p50 from {table}_hourly where bucket = '2026-11-22T10:00:00Z'"),
            &[],
        )
        .await?
        .get(0);
    assert_eq!(p50, 30.0);
    let jobs: i64 = db
        .query_one(
            "select count(*) from timescaledb_information.jobs where hypertable_name = $1 and proc_name in ('policy_compression', 'policy_retention')",
            &[&table],
        )
        .await?
        .get(0);
    assert_eq!(jobs, 2);
    db.batch_execute(&format!(
        "drop materialized view {table}_hourly; drop table {table}"
    ))
    .await?;
    Ok(())
}

#[tokio::test]
async fn timescaledb_gives_each_connection_a_fresh_session() -> Result<()> {
    let env = LocalEnv::load()?;
    let table = unique_name("e2e_uncommitted").replace('-', "_");
    {
        let db = env.timescale().await?;
        db.batch_execute("set search_path = leaked_schema; prepare leaked as select 1")
            .await?;
        // Left open: a real server rolls it back when the connection goes away.
        db.batch_execute(&format!("begin; create table public.{table} (x int)"))
            .await?;
    }
    // The server serves one connection at a time: the next one waits until the first is gone.
    let db = env.timescale().await?;
    let search_path: String = db.query_one("show search_path", &[]).await?.get(0);
    assert_eq!(search_path, "\"$user\", public");
    let prepared: i64 = db
        .query_one(
            "select count(*) from pg_prepared_statements where name = 'leaked'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(prepared, 0);
    let table_exists: bool = db
        .query_one(
            "select to_regclass($1) is not null",
            &[&format!("public.{table}")],
        )
        .await?
        .get(0);
    assert!(
        !table_exists,
        "the previous connection's open transaction was rolled back"
    );
    Ok(())
}

#[tokio::test]
async fn timescaledb_takes_statements_larger_than_one_socket_read() -> Result<()> {
    // pglite-socket passed each TCP read to PGlite as it came; a message split across reads
    // (anything over 64 KiB) aborted the server. server.mjs re-frames the stream.
    let env = LocalEnv::load()?;
    let db = env.timescale().await?;
    let literal = "x".repeat(1 << 20);
    let sql = format!("select length('{literal}')");
    let length: i32 = db.query_one(&sql, &[]).await?.get(0);
    assert_eq!(length, 1 << 20);
    // A large bound parameter travels in an extended-protocol Bind message.
    let echoed: i32 = db
        .query_one("select length($1::text)", &[&literal])
        .await?
        .get(0);
    assert_eq!(echoed, 1 << 20);
    drop(db);
    let next: i32 = env
        .timescale()
        .await?
        .query_one("select 1", &[])
        .await?
        .get(0);
    assert_eq!(next, 1, "the server still answers");
    Ok(())
}
