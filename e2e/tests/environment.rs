//! Tests of the local environment itself: each part is up and behaves as the real thing.
//! They fail (not skip) when a part is missing; `make test` brings the environment up first.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fiberstack_e2e::{LocalEnv, TestNamespace, env_value, unique_name, wait_for};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, Client};
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde_json::json;

const POD_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(500);

/// The three real nodes (e2e/scripts/nodes.sh): name, region, edge, InternalIP, podCIDR.
const NODES: [(&str, &str, bool, &str, &str); 3] = [
    ("gh-accra-1", "gh", true, "10.240.0.11", "10.244.1.0/24"),
    ("ke-nairobi-1", "ke", false, "10.240.0.13", "10.244.3.0/24"),
    ("ng-lagos-1", "ng", true, "10.240.0.12", "10.244.2.0/24"),
];

async fn kube() -> Result<Client> {
    LocalEnv::load()?.kube().await
}

/// The environment tests' image, built here and pulled by the nodes from the local registry:
/// a static program, no shell (`e2e/cluster/netcheck/netcheck.c`).
fn netcheck_image() -> Result<String> {
    env_value("FIBERSTACK_NETCHECK_IMAGE")
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
async fn three_real_nodes_are_ready_with_region_labels_containerd_and_their_own_addresses()
-> Result<()> {
    let nodes = Api::<Node>::all(kube().await?)
        .list(&ListParams::default().labels("fiberstack.io/real=true"))
        .await?;
    let mut seen: Vec<(String, String, bool, String, String)> = nodes
        .items
        .iter()
        .map(|n| {
            let l = labels(n);
            let internal_ip = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
                .unwrap_or_default();
            (
                n.metadata.name.clone().unwrap_or_default(),
                l.get("topology.kubernetes.io/region")
                    .cloned()
                    .unwrap_or_default(),
                l.get("fiberstack.io/edge").is_some_and(|v| v == "true"),
                internal_ip,
                n.spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String, bool, String, String)> = NODES
        .iter()
        .map(|(n, r, e, ip, cidr)| {
            (
                (*n).to_owned(),
                (*r).to_owned(),
                *e,
                (*ip).to_owned(),
                (*cidr).to_owned(),
            )
        })
        .collect();
    assert_eq!(seen, expected);
    for node in &nodes.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        assert!(is_ready(node), "node {name} is not Ready");
        assert!(
            node.metadata
                .annotations
                .as_ref()
                .is_none_or(|a| !a.contains_key("kwok.x-k8s.io/node")),
            "node {name} is one of kwok's"
        );
        let info = node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .context("nodeInfo")?;
        assert!(
            info.container_runtime_version.starts_with("containerd://"),
            "node {name}: runtime {}",
            info.container_runtime_version
        );
        assert!(
            info.kubelet_version.starts_with("v1.34."),
            "node {name}: kubelet {}",
            info.kubelet_version
        );
    }
    Ok(())
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the pods matching `selector` in `ns` are exactly `want` Running and Ready
/// pods, and returns the names of the nodes they run on, sorted.
async fn running_pod_nodes(
    client: &Client,
    ns: &str,
    selector: &str,
    want: usize,
) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let what = format!("{want} Running and Ready pods with {selector} in {ns}");
    wait_for(&what, POD_TIMEOUT, POLL, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels(selector)).await?;
            let states: Vec<(String, String, bool)> = list
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
                        pod_ready(p),
                    )
                })
                .collect();
            if states.len() == want
                && states
                    .iter()
                    .all(|(_, phase, ready)| phase == "Running" && *ready)
            {
                let mut nodes: Vec<String> = states.into_iter().map(|(node, ..)| node).collect();
                nodes.sort();
                Ok(Ok(nodes))
            } else {
                Ok(Err(format!("{states:?}")))
            }
        }
    })
    .await
}

/// A pod running the netcheck image: `args` as its arguments (`say`, `serve`, `get`, ...).
fn pod_template(app: &str, args: &[&str]) -> Result<serde_json::Value> {
    Ok(json!({
        "metadata": { "labels": { "app": app } },
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "main",
                "image": netcheck_image()?,
                "args": args,
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "runAsNonRoot": true
                }
            }]
        }
    }))
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
        let mut template = pod_template(app, &["say", app])?;
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
            "template": pod_template("web", &["serve", "8080"])?
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

/// Creates a pod from `spec` (JSON), waits until it is Running and Ready, returns it.
async fn run_pod(pods: &Api<Pod>, pod: serde_json::Value) -> Result<Pod> {
    let pod: Pod = serde_json::from_value(pod)?;
    let name = pod.metadata.name.clone().context("pod name")?;
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    wait_for(
        &format!("pod {name} Running and Ready"),
        POD_TIMEOUT,
        POLL,
        || {
            let pods = pods.clone();
            let name = name.clone();
            async move {
                let p = pods.get(&name).await?;
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                Ok(if pod_ready(&p) {
                    Ok(p)
                } else {
                    Err(format!(
                        "phase {phase:?}, containers {:?}",
                        p.status.and_then(|s| s.container_statuses)
                    ))
                })
            }
        },
    )
    .await
}

/// Waits until the pod `name` has finished (Succeeded or Failed); returns the phase.
async fn finished(pods: &Api<Pod>, name: &str) -> Result<String> {
    wait_for(&format!("pod {name} finished"), POD_TIMEOUT, POLL, || {
        let pods = pods.clone();
        let name = name.to_owned();
        async move {
            let p = pods.get(&name).await?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(if phase == "Succeeded" || phase == "Failed" {
                Ok(phase)
            } else {
                Err(phase)
            })
        }
    })
    .await
}

async fn logs(pods: &Api<Pod>, pod: &str, container: &str) -> Result<String> {
    pods.logs(
        pod,
        &LogParams {
            container: Some(container.to_owned()),
            ..LogParams::default()
        },
    )
    .await
    .with_context(|| format!("logs of {pod}/{container}"))
}

fn pod_ip(p: &Pod) -> Result<String> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod has no IP")
}

#[tokio::test]
async fn pod_logs_are_what_the_container_printed() -> Result<()> {
    let client = kube().await?;
    let ns = TestNamespace::create(&client, "e2e-logs").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let line = unique_name("printed-by-the-container");
    let mut pod = pod_template("talker", &["say", &line, "second line"])?;
    pod["metadata"]["name"] = json!("talker");
    let p = run_pod(&pods, pod).await?;
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
    // The apiserver fetches them from the pod's kubelet (its kubelet-client certificate,
    // the kubelet's x509 + Webhook authorization), as `kubectl logs` does.
    let text = wait_for("the pod's logs", Duration::from_secs(30), POLL, || {
        let pods = pods.clone();
        async move {
            let text = logs(&pods, "talker", "main").await?;
            Ok(if text.contains("second line") {
                Ok(text)
            } else {
                Err(text)
            })
        }
    })
    .await?;
    assert_eq!(text, format!("{line}\nsecond line\n"), "on node {node:?}");
    ns.delete().await
}

#[tokio::test]
async fn pods_on_different_nodes_reach_each_other_by_pod_ip_service_ip_and_dns_name() -> Result<()>
{
    let client = kube().await?;
    let ns = TestNamespace::create(&client, "e2e-network").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);

    let mut server = pod_template("server", &["serve", "8080"])?;
    server["metadata"]["name"] = json!("server");
    server["spec"]["nodeName"] = json!("gh-accra-1");
    server["spec"]["containers"][0]["readinessProbe"] =
        json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 1 });
    let server = run_pod(&pods, server).await?;
    let server_ip = pod_ip(&server)?;
    assert!(
        server_ip.starts_with("10.244.1."),
        "gh-accra-1's pod IP {server_ip} is not from its podCIDR 10.244.1.0/24"
    );
    // A port that differs from the target port: kube-proxy translates it.
    let svc: Service = serde_json::from_value(json!({
        "metadata": { "name": "server" },
        "spec": {
            "selector": { "app": "server" },
            "ports": [{ "name": "tcp", "port": 80, "targetPort": 8080 }]
        }
    }))?;
    let svc = services.create(&PostParams::default(), &svc).await?;
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service has no ClusterIP")?;

    let fqdn = format!("server.{}.svc.cluster.local", ns.name);
    let image = netcheck_image()?;
    let client_pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "client" },
        "spec": {
            "nodeName": "ke-nairobi-1",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "get",
                    "image": image,
                    "args": ["get", format!("{server_ip}:8080"), format!("{cluster_ip}:80"),
                             "server:80", format!("{fqdn}:80")]
                },
                {
                    // The apiserver as in-cluster clients reach it.
                    "name": "apiserver",
                    "image": image,
                    "args": ["connect", "kubernetes.default.svc.cluster.local:443", "10.96.0.1:443"]
                }
            ]
        }
    }))?;
    pods.create(&PostParams::default(), &client_pod).await?;
    // Not `?`: when it hangs, what it printed tells why.
    let phase = finished(&pods, "client")
        .await
        .unwrap_or_else(|e| format!("{e:#}"));
    let get = logs(&pods, "client", "get").await?;
    let apiserver = logs(&pods, "client", "apiserver").await?;
    assert_eq!(
        phase, "Succeeded",
        "client on ke-nairobi-1:\n{get}\n{apiserver}"
    );
    for target in [
        format!("{server_ip}:8080 ({server_ip}) answered: hello from server"),
        format!("{cluster_ip}:80 ({cluster_ip}) answered: hello from server"),
        format!("server:80 ({cluster_ip}) answered: hello from server"),
        format!("{fqdn}:80 ({cluster_ip}) answered: hello from server"),
    ] {
        assert!(get.contains(&target), "expected {target:?} in:\n{get}");
    }
    assert!(
        apiserver.contains("kubernetes.default.svc.cluster.local:443 (10.96.0.1) connected"),
        "{apiserver}"
    );
    let client_ip = pod_ip(&pods.get("client").await?)?;
    assert!(
        client_ip.starts_with("10.244.3."),
        "ke-nairobi-1's pod IP {client_ip}"
    );
    ns.delete().await
}

#[tokio::test]
async fn pods_reach_host_services_through_a_selectorless_service() -> Result<()> {
    // As a user with managed Redis and PostgreSQL: a Service without selector whose
    // EndpointSlice names the machine's address (FIBERSTACK_HOST_ADDR).
    let host = env_value("FIBERSTACK_HOST_ADDR")?;
    let client = kube().await?;
    let ns = TestNamespace::create(&client, "e2e-host-services").await?;
    let mut names = vec![];
    for (name, port) in [("redis", 16379), ("postgres", 15432)] {
        let objects = json!([
            {
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": name },
                "spec": { "ports": [{ "name": "tcp", "port": port }] }
            },
            {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": { "name": format!("{name}-host"),
                              "labels": { "kubernetes.io/service-name": name } },
                "addressType": "IPv4",
                "endpoints": [{ "addresses": [host] }],
                "ports": [{ "name": "tcp", "port": port, "protocol": "TCP" }]
            }
        ]);
        let svc: Service = serde_json::from_value(objects[0].clone())?;
        Api::<Service>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &svc)
            .await?;
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(objects[1].clone())?;
        Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &slice)
            .await?;
        names.push(format!("{name}:{port}"));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut args = vec!["connect".to_owned()];
    args.extend(names.iter().cloned());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "client" },
        "spec": {
            "nodeName": "ng-lagos-1",
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": netcheck_image()?, "args": args }]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let phase = finished(&pods, "client")
        .await
        .unwrap_or_else(|e| format!("{e:#}"));
    let out = logs(&pods, "client", "main").await?;
    if phase != "Succeeded" {
        bail!("client on ng-lagos-1 {phase}:\n{out}");
    }
    for name in &names {
        assert!(out.contains(&format!("{name} (")), "{name} in:\n{out}");
    }
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
