//! The whole system, from custom resources to status, as a user meets it: `helm install` the
//! chart (external Redis and PostgreSQL: the local ones), apply FiberRegions and FiberProbes,
//! and the pod runner (`pod-runner`, this crate) runs what the operator rendered — the real
//! operator, ingest, ETL and probe binaries — on the fake nodes. Then: every probe is placed
//! and reporting on exactly its matching nodes, their samples are in the database, a
//! degraded target turns its probe unhealthy (a reason naming it, an Event), deleting a
//! FiberProbe removes its DaemonSet, pods and processes, and `helm uninstall` removes the
//! operator but keeps the CRDs, the custom resources and the data.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fiberstack_e2e::{
    LocalEnv, ReservedPort, TestNamespace, connect_postgres, wait_for, workspace_binary,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use serde_json::Value;
use support::{Process, alive, pids_of, run, runner_pods, start_runner, tool};

mod support;

const HOST_NAME: &str = "host.fiberstack.internal";
const HOST_ADDRESS: &str = "10.240.255.254";
const EVERY: Duration = Duration::from_secs(2);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A UDP port free right now. It cannot be held like a [`ReservedPort`]: a socket left
/// bound to it would make `demo-targets`' plain bind fail (EADDRINUSE), whatever the
/// addresses. So it is picked just before `demo-targets` starts, and only a UDP port-0 bind
/// in the few milliseconds until `demo-targets` binds it could take it.
fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("0.0.0.0:0")?.local_addr()?.port())
}

fn fiber_api(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("fiberstack.io", "v1alpha1", kind),
        plural,
    )
}

fn condition<'a>(obj: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The nodes whose labels match every `key=value` of `selector`.
async fn matching_nodes(client: &Client, selector: &str) -> Result<BTreeSet<String>> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(nodes
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_custom_resources_to_status() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    let ns = TestNamespace::create(&client, "flow").await?;
    let result = flow(&env, &client, &ns.name).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(PathBuf::from("/run/fiberstack-pod-runner").join(&ns.name));
        ns.delete().await?;
    } else {
        eprintln!(
            "namespace {} kept for a look; the runner's logs are under /run/fiberstack-pod-runner/{}",
            ns.name, ns.name
        );
    }
    result
}

async fn flow(env: &LocalEnv, client: &Client, ns: &str) -> Result<()> {
    for name in [
        "fiberstack-operator",
        "fiber-ingest",
        "fiber-etl",
        "fiber-probe",
    ] {
        workspace_binary(name)?;
    }

    // Targets on this machine: healthy HTTP, a degraded HTTP server, TCP, DNS.
    // Held for the whole test; demo-targets binds them on 0.0.0.0 all the same (see
    // ReservedPort).
    let (http_port, degraded_port, tcp_port) = (
        ReservedPort::new()?,
        ReservedPort::new()?,
        ReservedPort::new()?,
    );
    let (http, degraded, tcp) = (http_port.port(), degraded_port.port(), tcp_port.port());
    let dns = free_udp_port()?;
    let mut targets = Command::new(env!("CARGO_BIN_EXE_demo-targets"));
    targets.args([
        "--http-port",
        &http.to_string(),
        "--degraded-port",
        &degraded.to_string(),
        "--tcp-port",
        &tcp.to_string(),
        "--dns-port",
        &dns.to_string(),
        "--slow-ms",
        "300",
        "--fail-percent",
        "50",
    ]);
    let _targets = Process::start(
        "demo-targets",
        targets,
        &std::env::temp_dir().join(format!("{ns}-targets.log")),
    )?;

    let (_runner, state) = start_runner(env, ns, "10.246.0.0/16")?;

    // The Secrets the chart and the regions read: the database and Redis as pods see them.
    let db_url = env.fresh_postgres_database("flow").await?;
    let db_name = db_url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .context("database name")?
        .to_string();
    let pod_db_url =
        format!("postgres://postgres:postgres@{HOST_NAME}:15432/{db_name}?sslmode=require");
    for (name, url) in [
        ("fiberstack-db", pod_db_url.as_str()),
        ("fiberstack-redis", &format!("redis://{HOST_NAME}:16379/")),
    ] {
        let mut create = tool("kubectl", env);
        create.args([
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal=url={url}"),
        ]);
        run(create, None)?;
    }

    let release = "flow";
    let mut install = tool("helm", env);
    install
        .args(["install", release])
        .arg(repo().join("charts/fiberstack"))
        .args(["-n", ns, "--wait", "--timeout", "3m"])
        .args(["--set", "database.existingSecret=fiberstack-db"])
        .args(["--set", &format!("operator.watchNamespace={ns}")])
        .args(["--set", "operator.statusIntervalSeconds=5"])
        .args(["--set", "operator.healthEvaluations=2"]);
    run(install, None)?;

    // Region names are the stream keys in the shared Redis: unique per run.
    let suffix = ns.rsplit('-').next().unwrap_or("x");
    let suffix = &suffix[suffix.len().saturating_sub(8)..];
    let (gh, ng) = (format!("gh-{suffix}"), format!("ng-{suffix}"));
    let resources = format!(
        r#"
apiVersion: fiberstack.io/v1alpha1
kind: FiberRegion
metadata: {{ name: {gh} }}
spec:
  country: GH
  nodeSelector: {{ topology.kubernetes.io/region: gh }}
  ingest: {{ replicas: 2 }}
  etl: {{ replicas: 1 }}
  redis: {{ urlSecretRef: {{ name: fiberstack-redis, key: url }} }}
  database: {{ urlSecretRef: {{ name: fiberstack-db, key: url }} }}
---
apiVersion: fiberstack.io/v1alpha1
kind: FiberRegion
metadata: {{ name: {ng} }}
spec:
  country: NG
  nodeSelector: {{ topology.kubernetes.io/region: ng }}
  ingest: {{ replicas: 1 }}
  etl: {{ replicas: 1 }}
  redis: {{ urlSecretRef: {{ name: fiberstack-redis, key: url }} }}
  database: {{ urlSecretRef: {{ name: fiberstack-db, key: url }} }}
---
apiVersion: fiberstack.io/v1alpha1
kind: FiberProbe
metadata: {{ name: accra }}
spec:
  region: {gh}
  nodeSelector: {{ fiberstack.io/edge: "true" }}
  interval: 5s
  timeout: 2s
  targets:
    - {{ name: gateway, icmp: {{ host: {HOST_ADDRESS}, count: 3, spacing: 50ms }} }}
    - {{ name: web, http: {{ url: "http://{HOST_NAME}:{http}/", expectStatus: [200] }} }}
    - {{ name: port, tcp: {{ host: {HOST_NAME}, port: {tcp} }} }}
    - {{ name: resolver, dns: {{ query: fiberstack.test, type: A, server: "{HOST_ADDRESS}:{dns}" }} }}
  thresholds: {{ latencyP95Ms: 150, packetLossPct: 2, uptimePct: 99 }}
---
apiVersion: fiberstack.io/v1alpha1
kind: FiberProbe
metadata: {{ name: lagos }}
spec:
  region: {ng}
  interval: 5s
  timeout: 2s
  targets:
    - {{ name: gateway, icmp: {{ host: {HOST_ADDRESS}, count: 3, spacing: 50ms }} }}
    - {{ name: checkout-api, http: {{ url: "http://{HOST_NAME}:{degraded}/", expectStatus: [200] }} }}
  thresholds: {{ latencyP95Ms: 150, packetLossPct: 2, uptimePct: 99 }}
"#
    );
    let mut apply = tool("kubectl", env);
    apply.args(["-n", ns, "apply", "-f", "-"]);
    run(apply, Some(&resources))?;

    let probes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &fiber_api("FiberProbe", "fiberprobes"));
    let expected = [
        (
            "accra",
            matching_nodes(
                client,
                "topology.kubernetes.io/region=gh,fiberstack.io/edge=true",
            )
            .await?,
        ),
        (
            "lagos",
            matching_nodes(client, "topology.kubernetes.io/region=ng").await?,
        ),
    ];
    for (name, nodes) in &expected {
        ensure!(!nodes.is_empty(), "no fake node matches probe {name}");
        let want = nodes.len() as i64;
        wait_for(
            &format!("{name}: readyProbes = reportingProbes = {want}"),
            Duration::from_secs(180),
            EVERY,
            || async {
                let p = probes.get(name).await?;
                let s = &p.data["status"];
                let (ready, reporting) = (
                    s["readyProbes"].as_i64().unwrap_or(-1),
                    s["reportingProbes"].as_i64().unwrap_or(-1),
                );
                Ok(if ready == want && reporting == want {
                    Ok(())
                } else {
                    Err(format!(
                        "ready {ready}, reporting {reporting}; conditions {}",
                        s["conditions"]
                    ))
                })
            },
        )
        .await?;
        let p = probes.get(name).await?;
        for type_ in ["Ready", "Reporting"] {
            let c = condition(&p, type_).with_context(|| format!("{name}: no {type_}"))?;
            ensure!(c["status"] == "True", "{name}: {type_} is {c}");
        }
    }

    // Every matching node's samples are in the database, and no other node's.
    let db = connect_postgres(&db_url).await?;
    for (name, nodes) in &expected {
        let rows = db
            .query(
                "select node, count(*) from metrics where probe = $1 group by node",
                &[&format!("{ns}/{name}")],
            )
            .await?;
        let stored: BTreeSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        ensure!(
            &stored == nodes,
            "{name}: samples from {stored:?}, expected {nodes:?}"
        );
        for r in &rows {
            ensure!(r.get::<_, i64>(1) > 0);
        }
    }

    // The degraded target: Healthy=False naming it, and an Event saying so.
    wait_for(
        "lagos Healthy=False naming checkout-api",
        Duration::from_secs(150),
        EVERY,
        || async {
            let p = probes.get("lagos").await?;
            Ok(match condition(&p, "Healthy") {
                Some(c)
                    if c["status"] == "False"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("checkout-api")) =>
                {
                    Ok(())
                }
                c => Err(format!("Healthy: {c:?}")),
            })
        },
    )
    .await?;
    let accra = probes.get("accra").await?;
    let healthy = condition(&accra, "Healthy").context("accra: no Healthy")?;
    ensure!(
        healthy["status"] == "True",
        "accra's targets are all healthy, yet {healthy}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(
        "a HealthDegraded Event for lagos naming checkout-api",
        Duration::from_secs(30),
        EVERY,
        || async {
            let list = events.list(&ListParams::default()).await?;
            let found = list.items.iter().any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("lagos")
                    && e.reason.as_deref() == Some("HealthDegraded")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("checkout-api"))
            });
            Ok(if found {
                Ok(())
            } else {
                Err(format!(
                    "events: {:?}",
                    list.items
                        .iter()
                        .map(|e| (e.reason.clone(), e.note.clone()))
                        .collect::<Vec<_>>()
                ))
            })
        },
    )
    .await?;

    // Deleting a FiberProbe removes its DaemonSet, its pods and their processes.
    let before = runner_pods(&state)?;
    let accra_pids = pids_of(&before, "fiberstack-probe-accra-");
    ensure!(
        !accra_pids.is_empty() && accra_pids.iter().all(|p| alive(*p)),
        "the runner shows no running accra probe process: {before:?}"
    );
    probes
        .delete("accra", &Default::default())
        .await
        .context("deleting FiberProbe accra")?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        "accra's DaemonSet, pods and processes gone",
        Duration::from_secs(90),
        EVERY,
        || async {
            let ds = daemonsets
                .get_opt("fiberstack-probe-accra")
                .await?
                .is_some();
            let left_pods = pods
                .list(&ListParams::default().labels("app.kubernetes.io/instance=accra"))
                .await?
                .items
                .len();
            let running: Vec<u32> = accra_pids.iter().copied().filter(|p| alive(*p)).collect();
            let listed = runner_pods(&state)?
                .iter()
                .any(|p| p.name.starts_with("fiberstack-probe-accra-"));
            Ok(if !ds && left_pods == 0 && running.is_empty() && !listed {
                Ok(())
            } else {
                Err(format!(
                    "daemonset present: {ds}, pods: {left_pods}, processes alive: {running:?}, runner lists it: {listed}"
                ))
            })
        },
    )
    .await?;

    // `helm uninstall`: the operator goes; the CRDs, the custom resources and the data stay.
    let stored_before: i64 = db
        .query_one("select count(*) from metrics", &[])
        .await?
        .get(0);
    let operator_pids = pids_of(
        &runner_pods(&state)?,
        &format!("{release}-fiberstack-operator-"),
    );
    ensure!(!operator_pids.is_empty(), "no operator process ran");
    let mut uninstall = tool("helm", env);
    uninstall.args(["uninstall", release, "-n", ns, "--wait", "--timeout", "2m"]);
    run(uninstall, None)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the operator's Deployment and processes gone",
        Duration::from_secs(60),
        EVERY,
        || async {
            let d = deployments
                .get_opt(&format!("{release}-fiberstack-operator"))
                .await?
                .is_some();
            let running: Vec<u32> = operator_pids
                .iter()
                .copied()
                .filter(|p| alive(*p))
                .collect();
            Ok(if !d && running.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "deployment present: {d}, processes alive: {running:?}"
                ))
            })
        },
    )
    .await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ["fiberprobes.fiberstack.io", "fiberregions.fiberstack.io"] {
        if crds.get_opt(crd).await?.is_none() {
            bail!("helm uninstall removed the CRD {crd}");
        }
    }
    ensure!(
        probes.get_opt("lagos").await?.is_some(),
        "helm uninstall removed FiberProbe lagos"
    );
    let stored_after: i64 = db
        .query_one("select count(*) from metrics", &[])
        .await?
        .get(0);
    ensure!(
        stored_after >= stored_before && stored_before > 0,
        "stored samples went from {stored_before} to {stored_after}"
    );
    Ok(())
}
