//! The `fiberstack-operator` binary as it is deployed: its flags, two replicas sharing a
//! leader Lease (one reconciles, the other stands by and takes over when the first exits),
//! and its /metrics, /healthz and /readyz.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::{EVERY, WAIT, apply_json};
use fiberstack_e2e::{LocalEnv, ReservedPort, TestNamespace, wait_for};
use fiberstack_operator::crd::{FiberProbe, FiberRegion};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_fiberstack-operator");

#[test]
fn help_documents_every_option_and_its_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--ingest-image",
        "--etl-image",
        "--probe-image",
        "--image-pull-policy",
        "--database-url",
        "--db-schema",
        "--watch-namespace",
        "--status-interval-secs",
        "--health-evaluations",
        "--health-evaluation-gap-secs",
        "--no-leader-election",
        "--lease-name",
        "--lease-namespace",
        "--identity",
        "--lease-duration-secs",
        "--metrics-listen",
        "--concurrency",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
    for env in [
        "FIBER_PROBE_IMAGE",
        "DATABASE_URL",
        "POD_NAMESPACE",
        "FIBER_METRICS_LISTEN",
    ] {
        assert!(
            help.contains(&format!("env: {env}")),
            "--help does not mention {env}"
        );
    }
}

struct Replica {
    child: Child,
    /// The metrics port, held while the replica runs (`Drop` kills it before fields drop).
    metrics: ReservedPort,
}

impl Replica {
    fn start(env: &LocalEnv, ns: &str, identity: &str) -> Result<Self> {
        let metrics = ReservedPort::new()?;
        let child = Command::new(BIN)
            .env("KUBECONFIG", &env.kubeconfig)
            .env_remove("DATABASE_URL")
            .env("FIBER_LOG", "info")
            .args(["--watch-namespace", ns, "--lease-namespace", ns])
            .args([
                "--lease-name",
                "fiberstack-operator",
                "--identity",
                identity,
            ])
            .args(["--lease-duration-secs", "3", "--status-interval-secs", "2"])
            .args(["--metrics-listen", &metrics.addr().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting fiberstack-operator")?;
        Ok(Self { child, metrics })
    }

    async fn get(&self, path: &str) -> Result<(u16, String)> {
        let r = reqwest::get(format!("{}{path}", self.metrics.url())).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> Result<std::process::ExitStatus> {
        fiberstack_e2e::terminate(&mut self.child, Duration::from_secs(10)).await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt("fiberstack-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn two_replicas_one_leads_and_the_other_takes_over_on_exit() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-leader").await?;
    let result = async {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
        let a = Replica::start(&env, &ns.name, "replica-a")?;
        wait_for("replica-a leads", WAIT, EVERY, || async {
            let h = holder(&leases).await?;
            Ok(if h.as_deref() == Some("replica-a") {
                Ok(())
            } else {
                Err(format!("{h:?}"))
            })
        })
        .await?;
        let b = Replica::start(&env, &ns.name, "replica-b")?;
        for r in [&a, &b] {
            wait_for("/readyz", WAIT, EVERY, || async {
                Ok(match r.get("/readyz").await {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                })
            })
            .await?;
            assert_eq!(r.get("/healthz").await?.0, 200);
        }

        let regions: Api<FiberRegion> = Api::namespaced(client.clone(), &ns.name);
        let probes: Api<FiberProbe> = Api::namespaced(client.clone(), &ns.name);
        apply_json(&regions, &common::region_json("ghana")).await?;
        apply_json(&probes, &common::probe_json("accra-edge", "ghana")).await?;
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        wait_for("ConfigMap from the leader", WAIT, EVERY, || async {
            Ok(configmaps
                .get_opt("fiberstack-probe-accra-edge")
                .await?
                .ok_or("absent".to_owned()))
        })
        .await?;
        // The reconcile that applied the ConfigMap is counted when it ends (after its status
        // write): wait for the count rather than race it.
        let metrics_a = wait_for(
            "the leader counts its probe reconcile",
            WAIT,
            EVERY,
            || async {
                let (_, text) = a.get("/metrics").await?;
                Ok(
                    if text.contains("fiberstack_operator_reconciles_total{controller=\"probe\"}") {
                        Ok(text)
                    } else {
                        Err("no probe reconcile counted yet".to_owned())
                    },
                )
            },
        )
        .await?;
        assert!(
            metrics_a.contains("fiberstack_operator_leader 1"),
            "{metrics_a}"
        );
        fiberstack_e2e::promtool::check_metrics(&metrics_a)?;
        let (_, metrics_b) = b.get("/metrics").await?;
        fiberstack_e2e::promtool::check_metrics(&metrics_b)?;
        assert!(
            metrics_b.contains("fiberstack_operator_leader 0"),
            "{metrics_b}"
        );
        assert!(
            !metrics_b.contains("fiberstack_operator_reconciles_total{"),
            "the standby reconciled:\n{metrics_b}"
        );

        // The leader exits cleanly and hands over at once (well before the lease expires).
        let status = a.terminate().await?;
        assert!(status.success(), "replica-a exited with {status}");
        wait_for(
            "replica-b leads",
            Duration::from_secs(10),
            EVERY,
            || async {
                let h = holder(&leases).await?;
                Ok(if h.as_deref() == Some("replica-b") {
                    Ok(())
                } else {
                    Err(format!("{h:?}"))
                })
            },
        )
        .await?;
        let mut changed = common::probe_json("accra-edge", "ghana");
        changed["spec"]["targets"] =
            json!([{ "name": "resolver", "dns": { "query": "example.com" } }]);
        apply_json(&probes, &changed).await?;
        wait_for("ConfigMap from the new leader", WAIT, EVERY, || async {
            let cm = configmaps.get("fiberstack-probe-accra-edge").await?;
            let yaml = cm
                .data
                .unwrap_or_default()
                .remove("probe.yaml")
                .unwrap_or_default();
            Ok(if yaml.contains("resolver") {
                Ok(())
            } else {
                Err(yaml)
            })
        })
        .await?;
        assert!(b.terminate().await?.success());
        Ok(())
    }
    .await;
    ns.delete().await?;
    result
}
