//! The whole system, from custom resources to status, as a user meets it: `helm install` the
//! chart with the images `make images` built (from the local registry, pinned by digest) on
//! the real nodes (kubelet + containerd each), Redis and PostgreSQL outside the cluster
//! reached through selector-less Services (as managed services are), apply FiberRegions and
//! FiberProbes. Then: the operator's pods are Ready by their own readiness probes and
//! `kubectl logs` shows their log, the operator's own token is refused what its RBAC does
//! not grant, every probe is placed and reporting on exactly its matching nodes, their
//! samples are in the database, a degraded target turns its probe unhealthy (a reason naming
//! it, an Event), deleting a FiberProbe removes its DaemonSet and pods, and `helm uninstall`
//! removes the operator but keeps the CRDs, the custom resources and the data.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fiberstack_e2e::{
    LocalEnv, ReservedPort, TestNamespace, connect_postgres, env_value, images, wait_for,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use serde_json::Value;
use support::{Process, pod_process, pod_processes, run, tool};

mod support;

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
    let db_url = env.fresh_postgres_database("flow").await?;
    let result = flow(&env, &client, &ns.name, &db_url).await;
    if result.is_ok() {
        ns.delete().await?;
        env.drop_postgres_database(&db_url, &[]).await?;
    } else {
        eprintln!(
            "namespace {} and database {db_url} kept for a look (kubectl -n {} get pods; kubectl logs …)",
            ns.name, ns.name
        );
    }
    result
}

/// What runs outside the cluster (PostgreSQL, Redis, the targets) as the pods reach it:
/// e2e/cluster/outside-services.yaml with this machine's address.
fn outside_services(host: &str) -> Result<String> {
    let yaml = std::fs::read_to_string(repo().join("e2e/cluster/outside-services.yaml"))?;
    Ok(yaml.replace("HOST_ADDR", host))
}

async fn flow(env: &LocalEnv, client: &Client, ns: &str, db_url: &str) -> Result<()> {
    let registry = env_value("FIBERSTACK_REGISTRY")?;
    let host_address = env_value("FIBERSTACK_HOST_ADDR")?;
    let host_name = format!("host.{ns}.svc.cluster.local");

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
    // On the machine's address as the pods see it, not 0.0.0.0: the DNS responder's UDP
    // answers must come from the address the question went to, and a wildcard socket
    // answers a pod from the address of the pod's bridge instead.
    targets.args([
        "--listen",
        &host_address,
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

    let mut apply = tool("kubectl", env);
    apply.args(["-n", ns, "apply", "-f", "-"]);
    run(apply, Some(&outside_services(&host_address)?))?;

    // The Secrets the chart and the regions read: the database and Redis as pods see them.
    let db_name = db_url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .context("database name")?
        .to_string();
    let pod_db_url =
        format!("postgres://postgres:postgres@postgres.{ns}.svc:15432/{db_name}?sslmode=require");
    for (name, url) in [
        ("fiberstack-db", pod_db_url.as_str()),
        (
            "fiberstack-redis",
            &format!("redis://redis.{ns}.svc:16379/"),
        ),
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

    // Region names are the stream keys in the shared Redis, and the release names the
    // chart's cluster-wide RBAC objects (which a namespace kept after a failure keeps): unique
    // per run.
    let suffix = ns.rsplit('-').next().unwrap_or("x");
    let suffix = &suffix[suffix.len().saturating_sub(8)..];
    // The images as built, from the local registry, pinned by digest.
    let release = &format!("flow-{suffix}");
    let mut install = tool("helm", env);
    install
        .args(["install", release])
        .arg(repo().join("charts/fiberstack"))
        .args(["-n", ns, "--wait", "--timeout", "3m"])
        .args(["--set", &format!("image.registry={registry}/fiberstack")]);
    for image in images::built()? {
        ensure!(
            image.reference.is_some(),
            "{} was not pushed to the registry: run `make images` with the environment up",
            image.name
        );
        install.args([
            "--set",
            &format!("image.digests.{}={}", image.name, image.digest),
        ]);
    }
    install
        .args(["--set", "database.existingSecret=fiberstack-db"])
        .args(["--set", &format!("operator.watchNamespace={ns}")])
        .args(["--set", "operator.statusIntervalSeconds=5"])
        .args(["--set", "operator.healthEvaluations=2"]);
    run(install, None)?;
    operator_checks(env, client, ns).await?;

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
    - {{ name: gateway, icmp: {{ host: {host_address}, count: 3, spacing: 50ms }} }}
    - {{ name: web, http: {{ url: "http://{host_name}:{http}/", expectStatus: [200] }} }}
    - {{ name: port, tcp: {{ host: {host_name}, port: {tcp} }} }}
    - {{ name: resolver, dns: {{ query: fiberstack.test, type: A, server: "{host_address}:{dns}" }} }}
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
    - {{ name: gateway, icmp: {{ host: {host_address}, count: 3, spacing: 50ms }} }}
    - {{ name: checkout-api, http: {{ url: "http://{host_name}:{degraded}/", expectStatus: [200] }} }}
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
        ensure!(!nodes.is_empty(), "no node matches probe {name}");
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
    let db = connect_postgres(db_url).await?;
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

    // Deleting a FiberProbe removes its DaemonSet, its pods and their containers.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let accra_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=accra"))
        .await?;
    // The probe's liveness probe (its /healthz) holds on a working probe: no restarts.
    for pod in &accra_pods.items {
        let restarts: i32 = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.restart_count)
            .sum();
        ensure!(
            restarts == 0,
            "probe pod {:?} was restarted {restarts} times",
            pod.metadata.name
        );
    }
    let accra_uids: Vec<String> = accra_pods
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    ensure!(
        !accra_uids.is_empty()
            && accra_uids
                .iter()
                .all(|uid| pod_processes(uid).is_ok_and(|p| p.values().any(|c| c == "fiber-probe"))),
        "no running fiber-probe process in accra's pods {accra_uids:?}"
    );
    probes
        .delete("accra", &Default::default())
        .await
        .context("deleting FiberProbe accra")?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
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
            let running: Vec<&String> = accra_uids
                .iter()
                .filter(|uid| pod_processes(uid).is_ok_and(|p| !p.is_empty()))
                .collect();
            Ok(if !ds && left_pods == 0 && running.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "daemonset present: {ds}, pods: {left_pods}, pods with processes left: {running:?}"
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
    let operator_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await?;
    ensure!(!operator_pods.items.is_empty(), "no operator pod ran");
    let mut uninstall = tool("helm", env);
    uninstall.args(["uninstall", release, "-n", ns, "--wait", "--timeout", "2m"]);
    run(uninstall, None)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the operator's Deployment and pods gone",
        Duration::from_secs(60),
        EVERY,
        || async {
            let d = deployments
                .get_opt(&format!("{release}-fiberstack-operator"))
                .await?
                .is_some();
            let left = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
                .await?
                .items
                .len();
            Ok(if !d && left == 0 {
                Ok(())
            } else {
                Err(format!("deployment present: {d}, operator pods: {left}"))
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

/// The operator as the kubelet runs it: its pods Ready by their own readiness probes, on the
/// image digests the chart was given; `kubectl logs` shows its JSON log; and with its own
/// ServiceAccount token — read from inside its container — it is refused what
/// operator/rbac.yaml does not grant and allowed what it does.
async fn operator_checks(env: &LocalEnv, client: &Client, ns: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let digest = images::built()?
        .into_iter()
        .find(|b| b.name == "fiberstack-operator")
        .context("fiberstack-operator not built")?
        .digest;
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await?;
    ensure!(!list.items.is_empty(), "no operator pod");
    let mut uid = None;
    for pod in &list.items {
        let status = pod.status.as_ref().context("operator pod without status")?;
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ensure!(
            ready,
            "operator pod not Ready after helm --wait: {status:?}"
        );
        let container = status
            .container_statuses
            .iter()
            .flatten()
            .next()
            .context("no container status")?;
        ensure!(
            container.image_id.ends_with(&digest),
            "the operator runs {} rather than the built {digest}",
            container.image_id
        );
        uid = pod.metadata.uid.clone();
    }

    // `kubectl logs` of each operator pod (through the apiserver and its kubelet) shows its
    // JSON log; a pod that has just become Ready may not have flushed its first line yet.
    for pod in &list.items {
        let name = pod
            .metadata
            .name
            .clone()
            .context("operator pod without name")?;
        wait_for(
            &format!("kubectl logs {name} showing a JSON log line"),
            Duration::from_secs(30),
            EVERY,
            || async {
                let mut logs = tool("kubectl", env);
                logs.args(["-n", ns, "logs", &name]);
                let log = run(logs, None)?;
                Ok(
                    if log
                        .lines()
                        .any(|l| l.starts_with('{') && l.contains("\"level\""))
                    {
                        Ok(())
                    } else {
                        Err(format!("log: {log:?}"))
                    },
                )
            },
        )
        .await?;
    }

    let uid = uid.context("no operator pod uid")?;
    // comm is cut at 15 bytes: "fiberstack-oper".
    let pid = pod_process(&uid, "fiberstack-oper")?;
    let token = std::fs::read_to_string(format!(
        "/proc/{pid}/root/var/run/secrets/kubernetes.io/serviceaccount/token"
    ))
    .context("reading the operator's token from inside its container")?;
    let as_operator = |args: &[&str]| -> Result<std::process::Output> {
        let mut kubectl = tool("kubectl", env);
        kubectl.arg(format!("--token={}", token.trim())).args(args);
        Ok(kubectl.output()?)
    };
    let allowed = as_operator(&["-n", ns, "get", "fiberprobes"])?;
    ensure!(
        allowed.status.success(),
        "the operator's token may not list FiberProbes: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    for refused in [
        vec!["-n", ns, "get", "secrets"],
        vec!["get", "nodes"],
        vec![
            "-n",
            ns,
            "delete",
            "configmap",
            "kube-root-ca.crt",
            "--dry-run=server",
        ],
    ] {
        let out = as_operator(&refused)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("Forbidden"),
            "the operator's token was not refused `{}`: {stderr}",
            refused.join(" ")
        );
    }
    Ok(())
}
