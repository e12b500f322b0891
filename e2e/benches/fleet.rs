//! 2,000 FiberProbes of 5 targets each across 3 FiberRegions on the local control plane, reconciled by the
//! `fiberstack-operator` binary (a separate process, so its memory is its own; the release
//! build the image ships): time until every probe has a status for its generation,
//! reconciles per second, the operator's peak RSS. Prints figures; never fails on time.
//!
//! `cargo bench -p fiberstack-e2e --bench fleet` (FIBER_BENCH_PROBES overrides 2000).
//! The probes run on three kwok nodes, one per region, made for the run (`make env-up` runs
//! kwok, which plays their kubelet: each probe's DaemonSet gets a pod that turns Running with
//! no process behind it), so the operator also watches and counts 2,000 pods, as in a
//! cluster. `FIBER_BENCH_NODES=none` makes no node and the probes select none: the operator
//! and the API server without the pods. The objects are plain JSON, as a user's manifests
//! are; the CRDs are the checked-in `crds/`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fiberstack_e2e::{LocalEnv, ReservedPort, TestNamespace, etl, wait_for, workspace_binary};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// The CRDs as `kubectl apply -f crds/` installs them.
async fn install_crds(client: &Client) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("fiberstack-bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        names.push(name);
    }
    for name in names {
        wait_for(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                let crd = api.get(&name).await?;
                let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                Ok(if established {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                })
            },
        )
        .await?;
    }
    Ok(())
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("fiberstack.io", "v1alpha1", kind))
}

/// The operator's JSON log, kept next to the binaries for a look at what limited the run.
fn operator_log(binary: &std::path::Path) -> Result<Stdio> {
    let path = binary.with_file_name("fleet-operator.log");
    println!("operator log: {}", path.display());
    Ok(std::fs::File::create(path)?.into())
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The sum of the operator's series named `prefix` whose labels contain `having`.
async fn counted(port: u16, prefix: &str, having: &str) -> Result<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(fiberstack_e2e::metric_sum(&text, prefix, having))
}

async fn reconciles(port: u16) -> Result<f64> {
    counted(port, "fiberstack_operator_reconciles_total{", "").await
}

/// The operator's writes to the API server: status patches and applies it made.
async fn writes(port: u16) -> Result<f64> {
    Ok(counted(
        port,
        "fiberstack_operator_status_writes_total{",
        "result=\"written\"",
    )
    .await?
        + counted(
            port,
            "fiberstack_operator_applies_total{",
            "result=\"applied\"",
        )
        .await?)
}

/// Reads the operator made from the API server because a cache could not answer.
async fn reads(port: u16) -> Result<f64> {
    counted(port, "fiberstack_operator_api_reads_total{", "").await
}

/// An object as the API server returned it, made into what a client would send: server
/// fields dropped, moved to namespace `ns`.
fn resend(mut object: serde_json::Value, ns: &str) -> serde_json::Value {
    if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for field in [
            "resourceVersion",
            "uid",
            "managedFields",
            "creationTimestamp",
            "generation",
            "ownerReferences",
        ] {
            meta.remove(field);
        }
        meta.insert("namespace".to_owned(), json!(ns));
    }
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    object
}

/// The floor: a plain client makes the writes the operator made — each probe created, its
/// ConfigMap and DaemonSet applied, its status applied — with the operator's concurrency,
/// in a namespace of its own. Returns how long that took.
async fn floor(client: &Client, from: &str, concurrency: usize) -> Result<Duration> {
    let ns = TestNamespace::create(client, "op-floor").await?;
    let probes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), from, &resource("FiberProbe"));
    let list = probes.list(&ListParams::default()).await?;
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), from);
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), from);
    let cms: std::collections::HashMap<String, serde_json::Value> = configmaps
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| {
            Some((
                c.metadata
                    .labels
                    .as_ref()?
                    .get("app.kubernetes.io/instance")?
                    .clone(),
                serde_json::to_value(c).ok()?,
            ))
        })
        .collect();
    let dss: std::collections::HashMap<String, serde_json::Value> = daemonsets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|d| {
            Some((
                d.metadata
                    .labels
                    .as_ref()?
                    .get("app.kubernetes.io/instance")?
                    .clone(),
                serde_json::to_value(d).ok()?,
            ))
        })
        .collect();
    let work: Vec<_> = list
        .items
        .into_iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let status = p.data.get("status").cloned()?;
            let probe = resend(serde_json::to_value(&p).ok()?, &ns.name);
            let cm = resend(cms.get(&name)?.clone(), &ns.name);
            let ds = resend(dss.get(&name)?.clone(), &ns.name);
            Some((name, probe, cm, ds, status))
        })
        .collect();
    let to_probes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &resource("FiberProbe"));
    let to_cms: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
    );
    let to_dss: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<k8s_openapi::api::apps::v1::DaemonSet>(&()),
    );
    let n = work.len();
    let start = Instant::now();
    let apply = PatchParams::apply("fiberstack-floor").force();
    futures::stream::iter(work)
        .map(|(name, probe, cm, ds, status)| {
            let (to_probes, to_cms, to_dss, apply) = (to_probes.clone(), to_cms.clone(), to_dss.clone(), apply.clone());
            async move {
                to_probes.patch(&name, &apply, &Patch::Apply(&probe)).await?;
                let cm_name = cm["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                to_cms.patch(&cm_name, &apply, &Patch::Apply(&cm)).await?;
                let ds_name = ds["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                to_dss.patch(&ds_name, &apply, &Patch::Apply(&ds)).await?;
                let status = json!({ "apiVersion": "fiberstack.io/v1alpha1", "kind": "FiberProbe", "status": status });
                to_probes.patch_status(&name, &apply, &Patch::Apply(&status)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let took = start.elapsed();
    println!(
        "floor: a plain client made the same writes for {n} probes (create, ConfigMap, DaemonSet, status; {concurrency} at once) in {:.1} s",
        took.as_secs_f64()
    );
    ns.delete().await?;
    Ok(took)
}

/// The bench's kwok nodes, one per region (`fiberstack.io/bench-region`, which the bench's
/// regions select, and `fiberstack.io/bench: kwok`, which its probes select).
const KWOK_NODES: [(&str, &str); 3] = [
    ("fleet-bench-gh", "gh"),
    ("fleet-bench-ng", "ng"),
    ("fleet-bench-ke", "ke"),
];

async fn create_kwok_nodes(client: &Client) -> Result<()> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for (name, region) in KWOK_NODES {
        let resources = json!({ "cpu": "64", "memory": "256Gi", "pods": "3000" });
        let node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": { "kwok.x-k8s.io/node": "fake" },
                "labels": {
                    "kubernetes.io/hostname": name,
                    // Not the region label the real nodes carry: no workload but the
                    // bench's selects these nodes (also when a run was cut short and left
                    // them behind).
                    "fiberstack.io/bench-region": region,
                    "fiberstack.io/bench": "kwok",
                    "type": "kwok"
                }
            },
            "status": { "capacity": resources, "allocatable": resources }
        }))?;
        match nodes.create(&Default::default(), &node).await {
            Ok(_) => {}
            // Left by an interrupted run: used again.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating kwok node {name}")),
        }
    }
    wait_for(
        "the kwok nodes are Ready",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let mut ready = 0;
            for (name, _) in KWOK_NODES {
                let node = nodes.get(name).await?;
                let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
                ready += usize::from(
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True"),
                );
            }
            Ok(if ready == KWOK_NODES.len() {
                Ok(())
            } else {
                Err(format!("{ready} of {}", KWOK_NODES.len()))
            })
        },
    )
    .await
}

async fn delete_kwok_nodes(client: &Client) -> Result<()> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for (name, _) in KWOK_NODES {
        match nodes.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting kwok node {name}")),
        }
    }
    Ok(())
}

/// How many probes' status passes `test`.
async fn count_status(
    probes: &Api<DynamicObject>,
    test: impl Fn(&DynamicObject, &serde_json::Value) -> bool,
) -> Result<usize> {
    let list = probes.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| test(p, &p.data["status"]))
        .count())
}

/// Probes whose status counts as many ready pods as desired, at least one.
async fn pods_ready(probes: &Api<DynamicObject>) -> Result<usize> {
    count_status(probes, |_, status| {
        let desired = status["desiredProbes"].as_i64().unwrap_or(0);
        desired > 0 && status["readyProbes"].as_i64() == Some(desired)
    })
    .await
}

/// Probes whose status has conditions for their current generation.
async fn statused(probes: &Api<DynamicObject>) -> Result<usize> {
    count_status(probes, |p, status| {
        status["observedGeneration"].as_i64() == p.metadata.generation
            && status["conditions"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let count: usize = std::env::var("FIBER_BENCH_PROBES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let on_kwok = std::env::var("FIBER_BENCH_NODES").as_deref() != Ok("none");
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    install_crds(&client).await?;
    if on_kwok {
        create_kwok_nodes(&client).await?;
    }
    let selected = if on_kwok { "kwok" } else { "none" };
    let db_url = env.fresh_postgres_database("fs_op_bench").await?;
    etl::migrate(&db_url, None).await?;
    let ns = TestNamespace::create(&client, "op-bench").await?;

    let metrics = ReservedPort::new()?;
    let port = metrics.port();
    let binary = workspace_binary("fiberstack-operator")?;
    let mut operator = Command::new(&binary)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("FIBER_LOG", "warn")
        .args(["--watch-namespace", &ns.name, "--no-leader-election"])
        .args(["--database-url", &db_url])
        .args(["--metrics-listen", &metrics.addr().to_string()])
        .stdout(Stdio::null())
        .stderr(operator_log(&binary)?)
        .spawn()
        .context("starting the operator")?;
    let pid = operator.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = peak_rss_mib(pid).unwrap_or_default();

    let result = async {
        let regions: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns.name, &resource("FiberRegion"));
        let probes: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns.name, &resource("FiberProbe"));
        for (name, country, label) in [("ghana", "GH", "gh"), ("nigeria", "NG", "ng"), ("kenya", "KE", "ke")] {
            let region = json!({
                "apiVersion": "fiberstack.io/v1alpha1", "kind": "FiberRegion",
                "metadata": { "name": name },
                "spec": {
                    "country": country,
                    "nodeSelector": { "fiberstack.io/bench-region": label },
                    "ingest": { "replicas": 1 }, "etl": { "replicas": 1 },
                    "redis": { "urlSecretRef": { "name": "redis", "key": "url" } },
                    "database": { "urlSecretRef": { "name": "db", "key": "url" } }
                }
            });
            regions.patch(name, &PatchParams::apply("fiberstack-bench"), &Patch::Apply(&region)).await?;
        }

        let start = Instant::now();
        let before = reconciles(port).await?;
        futures::stream::iter(0..count)
            .map(|i| {
                let probes = probes.clone();
                async move {
                    let region = ["ghana", "nigeria", "kenya"][i % 3];
                    let name = format!("probe-{i:05}");
                    let probe = json!({
                        "apiVersion": "fiberstack.io/v1alpha1", "kind": "FiberProbe",
                        "metadata": { "name": name },
                        "spec": {
                            "region": region,
                            "nodeSelector": { "fiberstack.io/bench": selected },
                            "interval": "60s",
                            "targets": [
                                { "name": "dns", "icmp": { "host": "8.8.8.8" } },
                                { "name": "web", "http": { "url": "https://example.com/" } },
                                { "name": "api", "tcp": { "host": "api.example.com", "port": 443 } },
                                { "name": "resolver", "dns": { "query": "example.com", "server": "1.1.1.1" } },
                                { "name": "edge", "icmp": { "host": "2606:4700::1111" } }
                            ]
                        }
                    });
                    probes
                        .patch(&name, &PatchParams::apply("fiberstack-bench"), &Patch::Apply(&probe))
                        .await
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<_>>()
            .await?;
        let created = start.elapsed();
        println!("created {count} FiberProbes in {:.1} s", created.as_secs_f64());

        let all = wait_for("every probe has status", Duration::from_secs(600), Duration::from_millis(500), || async {
            let n = statused(&probes).await?;
            Ok(if n == count { Ok(start.elapsed()) } else { Err(format!("{n} of {count}")) })
        })
        .await?;
        let during = reconciles(port).await? - before;
        println!(
            "all {count} statuses written {:.1} s after the first create ({:.0} reconciles, {:.0} reconciles/s)",
            all.as_secs_f64(),
            during,
            during / all.as_secs_f64()
        );

        // The pods come after: the DaemonSet controller creates them at its own pace, and
        // each probe's status changes once more when its pod is ready.
        if on_kwok {
            let ready = wait_for("every probe's pod ready", Duration::from_secs(900), Duration::from_secs(2), || async {
                let n = pods_ready(&probes).await?;
                Ok(if n == count { Ok(start.elapsed()) } else { Err(format!("{n} of {count}")) })
            })
            .await?;
            println!(
                "every probe's status shows its pod ready {:.1} s after the first create",
                ready.as_secs_f64()
            );
        }
        // Steady state: every probe is recomputed at least every 30 s (one status period),
        // and with nothing changing, should neither write nor read the API server.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let steady_from = reconciles(port).await?;
        let (writes_from, reads_from) = (writes(port).await?, reads(port).await?);
        let window = Duration::from_secs(30);
        tokio::time::sleep(window).await;
        let steady = reconciles(port).await? - steady_from;
        let steady_writes = writes(port).await? - writes_from;
        println!(
            "steady state: {:.0} reconciles/s over {} s (at least {:.0}/s needed for every probe every 30 s); API writes in that status period: {:.0}, reads not answered by a cache: {:.0}",
            steady / window.as_secs_f64(),
            window.as_secs(),
            count as f64 / 30.0,
            steady_writes,
            reads(port).await? - reads_from,
        );
        anyhow::Ok((all, steady_writes * 60.0 / window.as_secs_f64()))
    }
    .await;

    let peak = peak_rss_mib(pid).unwrap_or_default();
    println!(
        "operator peak RSS: {peak:.1} MiB (idle at start: {idle_rss:.1} MiB; {:.1} KiB per probe)",
        (peak - idle_rss) * 1024.0 / count as f64
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = operator.wait();
    let result = match result {
        Ok((all, steady_writes_per_min)) => {
            // The operator reconciles 16 at once by default.
            let floor = floor(&client, &ns.name, 16).await;
            floor.map(|floor| {
                println!(
                    "operator: {:.1} s = {:.2} x the floor ({:.1} s)",
                    all.as_secs_f64(),
                    all.as_secs_f64() / floor.as_secs_f64(),
                    floor.as_secs_f64()
                );
                println!(
                    "{}",
                    json!({
                        "bench": "operator-fleet",
                        "probes": count,
                        "statused_secs": (all.as_secs_f64() * 10.0).round() / 10.0,
                        "floor_secs": (floor.as_secs_f64() * 10.0).round() / 10.0,
                        "rss_mib": (peak * 10.0).round() / 10.0,
                        "rss_kib_per_probe": ((peak - idle_rss) * 1024.0 / count as f64 * 10.0).round() / 10.0,
                        "steady_writes_per_min": steady_writes_per_min,
                        "commit": fiberstack_e2e::bench::commit(),
                        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
                    })
                );
            })
        }
        Err(e) => Err(e),
    };
    ns.delete().await?;
    if on_kwok {
        delete_kwok_nodes(&client).await?;
    }
    result
}
