//! The controllers against the local control plane: what a FiberRegion and a FiberProbe
//! render, where the probe pods land (kube-controller-manager makes them, kube-scheduler
//! places them, the nodes' kubelets run them from the images `make images` built), and how
//! changes, pausing and deletion propagate.

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{TestNamespace, wait_for, wait_for_condition};
use fiberstack_operator::crd::{FiberProbe, FiberRegion};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Nodes running the probe's pods, once they are Running.
async fn running_nodes(client: &Client, ns: &str, probe: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={probe},app.kubernetes.io/name=fiber-probe"
        )))
        .await?;
    let mut nodes: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    nodes.sort();
    Ok(nodes)
}

async fn wait_nodes(client: &Client, ns: &str, probe: &str, expected: &[&str]) -> Result<()> {
    wait_for(
        &format!("probe pods on {expected:?}"),
        WAIT,
        EVERY,
        || async {
            let nodes = running_nodes(client, ns, probe).await?;
            Ok(if nodes == expected {
                Ok(())
            } else {
                Err(format!("{nodes:?}"))
            })
        },
    )
    .await
}

async fn wait_ready(probes: &Api<FiberProbe>, name: &str, expected: &str) -> Result<()> {
    wait_for(&format!("status.ready {expected}"), WAIT, EVERY, || async {
        let p = probes.get(name).await?;
        let ready = p.status.map(|s| s.ready).unwrap_or_default();
        Ok(if ready == expected {
            Ok(())
        } else {
            Err(ready)
        })
    })
    .await
}

#[tokio::test]
async fn region_and_probe_render_place_update_pause_and_delete() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-life").await?;
    let operator = Operator::start(&client, &ns.name, None);
    let result = lifecycle(&client, &ns.name).await;
    operator.stop().await;
    ns.delete().await?;
    result
}

async fn lifecycle(client: &Client, ns: &str) -> Result<()> {
    let regions: Api<FiberRegion> = Api::namespaced(client.clone(), ns);
    let probes: Api<FiberProbe> = Api::namespaced(client.clone(), ns);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let region = apply_json(&regions, &common::region_json("ghana")).await?;
    let probe = apply_json(&probes, &common::probe_json("accra-edge", "ghana")).await?;

    // The region's data path.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token_of = || async {
        let s = secrets.get("fiberstack-probe-token-ghana").await?;
        anyhow::Ok(s.data.unwrap_or_default()["token"].0.clone())
    };
    let ingest = common::wait_exists(&deployments, "fiberstack-ingest-ghana").await?;
    let pod = ingest.spec.unwrap().template.spec.unwrap();
    let env = pod.containers[0].env.clone().unwrap();
    let by_name = |n: &str| env.iter().find(|e| e.name == n).cloned().unwrap();
    let redis = by_name("REDIS_URL")
        .value_from
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(
        (redis.name.as_str(), redis.key.as_str()),
        ("fiberstack-redis", "url")
    );
    let db = by_name("DATABASE_URL")
        .value_from
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(
        (db.name.as_str(), db.key.as_str()),
        ("fiberstack-db", "url")
    );
    assert_eq!(by_name("FIBER_REGION").value.as_deref(), Some("ghana"));
    assert_eq!(
        by_name("FIBER_TOKEN_FILE").value.as_deref(),
        Some("/var/run/fiberstack/token")
    );
    assert_eq!(
        pod.containers[0].command.as_deref(),
        Some(&["fiber-ingest".to_owned()][..])
    );
    let etl = common::wait_exists(&deployments, "fiberstack-etl-ghana").await?;
    let etl_env = etl.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let consumer = etl_env.iter().find(|e| e.name == "FIBER_CONSUMER").unwrap();
    assert_eq!(
        consumer
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.name"
    );
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let service = common::wait_exists(&services, "fiberstack-ingest-ghana").await?;
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 8080);
    let token = wait_for("token Secret", WAIT, EVERY, || async {
        Ok(token_of().await.map_err(|e| e.to_string()))
    })
    .await?;
    assert!(token.len() >= 32, "token of {} bytes", token.len());

    // The probe's ConfigMap and DaemonSet.
    let ds = common::wait_exists(&daemonsets, "fiberstack-probe-accra-edge").await?;
    let owner = &ds.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("FiberProbe", probe.uid().unwrap().as_str())
    );
    let cm = configmaps.get("fiberstack-probe-accra-edge").await?;
    assert_eq!(
        cm.metadata.owner_references.unwrap()[0].uid,
        probe.uid().unwrap()
    );
    let config = fiberstack_model::ProbeConfig::from_yaml(&cm.data.unwrap()["probe.yaml"])?;
    assert_eq!(config.probe, format!("{ns}/accra-edge"));
    assert_eq!(
        config.ingest.urls,
        [format!("http://fiberstack-ingest-ghana.{ns}.svc:8080")]
    );
    assert_eq!(config.country, "GH");
    let template = ds.spec.clone().unwrap().template;
    let pod = template.spec.clone().unwrap();
    assert_eq!(
        pod.node_selector.clone().unwrap(),
        map(&[
            ("topology.kubernetes.io/region", "gh"),
            ("fiberstack.io/edge", "true")
        ])
    );
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    let psc = pod.security_context.clone().unwrap();
    assert_eq!(psc.sysctls.unwrap()[0].name, "net.ipv4.ping_group_range");
    let node_name = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );

    // Placement: only the Ghanaian edge node; readyProbes follows.
    wait_nodes(client, ns, "accra-edge", &["gh-accra-1"]).await?;
    wait_ready(&probes, "accra-edge", "1/1").await?;

    // New targets: the ConfigMap changes, the pod template does not.
    let mut changed = common::probe_json("accra-edge", "ghana");
    changed["spec"]["targets"] =
        json!([{ "name": "resolver", "dns": { "query": "example.com", "server": "1.1.1.1" } }]);
    apply_json(&probes, &changed).await?;
    wait_for("ConfigMap with the new target", WAIT, EVERY, || async {
        let cm = configmaps.get("fiberstack-probe-accra-edge").await?;
        let yaml = cm
            .data
            .unwrap_or_default()
            .remove("probe.yaml")
            .unwrap_or_default();
        Ok(
            if yaml.contains("resolver") && !yaml.contains("google-dns") {
                Ok(())
            } else {
                Err(yaml)
            },
        )
    })
    .await?;
    let after = daemonsets.get("fiberstack-probe-accra-edge").await?;
    assert_eq!(
        after.spec.unwrap().template,
        template,
        "a config-only change must not restart pods"
    );
    assert_eq!(after.metadata.generation, ds.metadata.generation);

    // A new node selector on the probe, and a new one on the region: the DaemonSet follows
    // both, and the pods move.
    changed["spec"]["nodeSelector"] = json!({ "fiberstack.io/real": "true" });
    apply_json(&probes, &changed).await?;
    let mut region_json = common::region_json("ghana");
    region_json["spec"]["nodeSelector"] = json!({ "fiberstack.io/edge": "true" });
    apply_json(&regions, &region_json).await?;
    wait_for("DaemonSet with both new selectors", WAIT, EVERY, || async {
        let ds = daemonsets.get("fiberstack-probe-accra-edge").await?;
        let selector = ds
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .node_selector
            .unwrap_or_default();
        let want = map(&[
            ("fiberstack.io/edge", "true"),
            ("fiberstack.io/real", "true"),
        ]);
        Ok(if selector == want {
            Ok(())
        } else {
            Err(format!("{selector:?}"))
        })
    })
    .await?;
    wait_nodes(client, ns, "accra-edge", &["gh-accra-1", "ng-lagos-1"]).await?;
    wait_ready(&probes, "accra-edge", "2/2").await?;
    assert_eq!(
        token_of().await?,
        token,
        "the token must survive reconciles"
    );

    // Paused: pods gone, status says so.
    changed["spec"]["paused"] = json!(true);
    apply_json(&probes, &changed).await?;
    wait_for("paused", WAIT, EVERY, || async {
        let gone = daemonsets
            .get_opt("fiberstack-probe-accra-edge")
            .await?
            .is_none();
        let p = probes.get("accra-edge").await?;
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .cloned()
            .unwrap_or_default();
        Ok(
            if gone && status.health == "Paused" && ready.reason == "Paused" {
                Ok(())
            } else {
                Err(format!(
                    "daemonset gone: {gone}, health {}, Ready {ready:?}",
                    status.health
                ))
            },
        )
    })
    .await?;
    wait_nodes(client, ns, "accra-edge", &[]).await?;

    // Deletion: owned objects are collected by kube-controller-manager.
    probes
        .delete("accra-edge", &DeleteParams::background())
        .await?;
    regions.delete("ghana", &DeleteParams::background()).await?;
    wait_for("owned objects collected", WAIT, EVERY, || async {
        let cm = configmaps
            .get_opt("fiberstack-probe-accra-edge")
            .await?
            .is_some();
        let d = deployments.list(&ListParams::default()).await?.items.len();
        let s = secrets
            .get_opt("fiberstack-probe-token-ghana")
            .await?
            .is_some();
        Ok(if !cm && d == 0 && !s {
            Ok(())
        } else {
            Err(format!("configmap {cm}, deployments {d}, token {s}"))
        })
    })
    .await?;
    let _ = region;
    Ok(())
}

#[tokio::test]
async fn a_probe_without_its_region_says_so_and_recovers_when_it_appears() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-noregion").await?;
    let operator = Operator::start(&client, &ns.name, None);
    let result = async {
        let probes: Api<FiberProbe> = Api::namespaced(client.clone(), &ns.name);
        apply_json(&probes, &common::probe_json("orphan", "kenya")).await?;
        let p = wait_for_condition(&probes, "orphan", "Ready", WAIT, |c| {
            c.reason == "RegionNotFound" && c.message.contains("\"kenya\"")
        })
        .await?;
        // Written with the condition, in the same status.
        assert_eq!(p.status.unwrap_or_default().health, "RegionNotFound");
        let regions: Api<FiberRegion> = Api::namespaced(client.clone(), &ns.name);
        let mut kenya = common::region_json("kenya");
        kenya["spec"]["country"] = json!("KE");
        kenya["spec"]["nodeSelector"] = json!({ "topology.kubernetes.io/region": "ke" });
        apply_json(&regions, &kenya).await?;
        // The probe asks for edge nodes; Kenya has none.
        let mut probe = common::probe_json("orphan", "kenya");
        probe["spec"]["nodeSelector"] = json!({});
        apply_json(&probes, &probe).await?;
        wait_nodes(&client, &ns.name, "orphan", &["ke-nairobi-1"]).await?;
        // A conflict between the two selectors is refused with the key named.
        probe["spec"]["nodeSelector"] = json!({ "topology.kubernetes.io/region": "gh" });
        apply_json(&probes, &probe).await?;
        wait_for_condition(&probes, "orphan", "Ready", WAIT, |c| {
            c.reason == "InvalidSpec" && c.message.contains("topology.kubernetes.io/region")
        })
        .await?;
        Ok(())
    }
    .await;
    operator.stop().await;
    ns.delete().await?;
    result
}

#[tokio::test]
async fn region_status_reports_availability_and_its_stream() -> Result<()> {
    let env = fiberstack_e2e::LocalEnv::load()?;
    let client = env.kube().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-region").await?;
    // A region name of its own: its stream keys are this test's alone.
    let name = fiberstack_e2e::unique_name("gh");
    let samples = format!("fiber:samples:{name}");
    let dlq = format!("fiber:dlq:{name}");
    let mut redis = env.redis().await?;
    let operator = Operator::start(&client, &ns.name, None);
    let database = env.fresh_postgres_database("op_region").await?;
    let result = async {
        // Redis and PostgreSQL as the region's pods reach them: at the machine's address.
        let host = fiberstack_e2e::env_value("FIBERSTACK_HOST_ADDR")?;
        let redis_url = env.redis_url.replace("127.0.0.1", &host);
        let db_url = database.clone();
        // Migrated, as the chart's Job does: the ETL records the stream's figures there.
        fiberstack_e2e::etl::migrate(&db_url, None).await?;
        // As the operator, in this process, reaches it.
        let reader_url = db_url.clone();
        let db_url = db_url.replace("127.0.0.1", &host);
        for (secret, url) in [
            ("fiberstack-redis", &redis_url),
            ("fiberstack-db", &db_url),
            ("fiberstack-db-reader", &reader_url),
        ] {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": { "name": secret },
                "stringData": { "url": url }
            }))?;
            Api::<Secret>::namespaced(client.clone(), &ns.name)
                .create(&Default::default(), &secret)
                .await?;
        }

        let regions: Api<FiberRegion> = Api::namespaced(client.clone(), &ns.name);
        // The operator reads the region's figures from the region's own database (it was
        // started without one of its own).
        let mut region = common::region_json(&name);
        region["spec"]["database"]["readerUrlSecretRef"] =
            json!({ "name": "fiberstack-db-reader", "key": "url" });
        apply_json(&regions, &region).await?;
        let cond = |r: &FiberRegion, t: &str| {
            r.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned())
                .unwrap_or_default()
        };
        wait_for(
            "region available: its ingest and ETL pods Ready",
            WAIT,
            EVERY,
            || async {
                let r = regions.get(&name).await?;
                let s = r.status.clone().unwrap_or_default();
                let ok = s.ingest == "1/1"
                    && s.etl == "1/1"
                    && cond(&r, "IngestAvailable").status == "True"
                    && cond(&r, "EtlAvailable").status == "True"
                    && cond(&r, "Ready").status == "True"
                    && s.dead_letters == Some(0);
                Ok(if ok { Ok(()) } else { Err(format!("{s:?}")) })
            },
        )
        .await?;

        // Three entries no ETL can store, and one dead letter already there: the region's
        // real ETL dead-letters the three, acknowledges and trims them; the status follows.
        for i in 0..3 {
            redis::cmd("XADD")
                .arg(&samples)
                .arg("*")
                .arg("batch")
                .arg(i)
                .query_async::<String>(&mut redis)
                .await?;
        }
        redis::cmd("XADD")
            .arg(&dlq)
            .arg("*")
            .arg("reason")
            .arg("test")
            .query_async::<String>(&mut redis)
            .await?;
        wait_for(
            "the three entries dead-lettered by the ETL, in the status",
            WAIT,
            EVERY,
            || async {
                let r = regions.get(&name).await?;
                let s = r.status.clone().unwrap_or_default();
                let ok = s.backlog == Some(0)
                    && s.pending == Some(0)
                    && s.dead_letters == Some(4)
                    && cond(&r, "Degraded").reason == "DeadLetters";
                Ok(if ok { Ok(()) } else { Err(format!("{s:?}")) })
            },
        )
        .await?;
        redis::cmd("DEL")
            .arg(&dlq)
            .query_async::<i64>(&mut redis)
            .await?;
        wait_for_condition(&regions, &name, "Degraded", WAIT, |c| c.status == "False").await?;
        let out = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &env.kubeconfig)
            .args(["get", "fiberregions", "-n", &ns.name])
            .output()?;
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME", "COUNTRY", "INGEST", "ETL", "BACKLOG", "PROBES", "READY", "AGE"
            ],
            "{table}"
        );
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            &row[1..7],
            ["GH", "1/1", "1/1", "0", "0", "True"],
            "{table}"
        );
        anyhow::Ok(())
    }
    .await;
    operator.stop().await;
    let _ = redis::cmd("DEL")
        .arg(&samples)
        .arg(&dlq)
        .query_async::<i64>(&mut redis)
        .await;
    ns.delete().await?;
    // The region's ETL pods may still be connected: the drop ends their sessions.
    env.drop_postgres_database(&database, &[]).await?;
    result
}

/// `spec.ingest.tls`: the API server takes the field (and refuses it without its Secret's
/// name) and every object the operator renders from it: the ingest Deployment serving
/// HTTPS with the Secret's certificate and checked over HTTPS, its Service's port named
/// https, and the probes' DaemonSet with the authority alone and a ConfigMap that sends to
/// the https URL the certificate must name.
#[tokio::test]
async fn a_region_serving_https_renders_what_the_api_server_takes() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-tls").await?;
    let operator = Operator::start(&client, &ns.name, None);
    let result = async {
        let regions: Api<FiberRegion> = Api::namespaced(client.clone(), &ns.name);
        let probes: Api<FiberProbe> = Api::namespaced(client.clone(), &ns.name);
        let mut region = common::region_json("ghana");
        region["spec"]["ingest"]["tls"] = json!({});
        let refused = apply_json(&regions, &region).await.unwrap_err();
        assert!(format!("{refused:#}").contains("secretName"), "{refused:#}");
        region["spec"]["ingest"]["tls"] = json!({ "secretName": "ingest-ghana-tls" });
        apply_json(&regions, &region).await?;
        apply_json(&probes, &common::probe_json("accra-edge", "ghana")).await?;

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let ingest = common::wait_exists(&deployments, "fiberstack-ingest-ghana").await?;
        let pod = ingest.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        let env = |name: &str| {
            container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            env("FIBER_TLS_CERT_FILE").as_deref(),
            Some("/var/run/fiberstack-tls/tls.crt")
        );
        assert_eq!(
            env("FIBER_TLS_KEY_FILE").as_deref(),
            Some("/var/run/fiberstack-tls/tls.key")
        );
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            readiness.http_get.as_ref().unwrap().scheme.as_deref(),
            Some("HTTPS")
        );
        let tls = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.clone())
            .unwrap();
        assert_eq!(tls.secret_name.as_deref(), Some("ingest-ghana-tls"));

        let services = Api::<Service>::namespaced(client.clone(), &ns.name);
        let service = common::wait_exists(&services, "fiberstack-ingest-ghana").await?;
        let port = &service.spec.unwrap().ports.unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("https"), 8080));

        let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
        let ds = common::wait_exists(&daemonsets, "fiberstack-probe-accra-edge").await?;
        let ca = ds
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "ingest-ca")
            .and_then(|v| v.secret)
            .unwrap();
        assert_eq!(ca.secret_name.as_deref(), Some("ingest-ghana-tls"));
        let keys: Vec<String> = ca.items.unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, ["ca.crt"]);
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        let cm = configmaps.get("fiberstack-probe-accra-edge").await?;
        let config = fiberstack_model::ProbeConfig::from_yaml(&cm.data.unwrap()["probe.yaml"])?;
        assert_eq!(
            config.ingest.urls,
            [format!(
                "https://fiberstack-ingest-ghana.{}.svc:8080",
                ns.name
            )]
        );
        assert_eq!(
            config.ingest.ca_file.as_deref(),
            Some(std::path::Path::new("/var/run/fiberstack-ca/ca.crt"))
        );
        Ok(())
    }
    .await;
    operator.stop().await;
    ns.delete().await?;
    result
}
