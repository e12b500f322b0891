//! Where is the fault, from samples in a real, migrated PostgreSQL database: one target
//! measured from three nodes in three regions. One slow path is Partial and named; all slow
//! is Everywhere; the scope reaches the target's status, the Healthy message, the printer
//! column and the alert's Event reason; a quorum of two vantage points holds the alert back
//! while only one sees the breach.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, wait_for};
use fiberstack_operator::crd::{FiberProbe, FiberProbeStatus, FiberRegion, Scope, TargetStatus};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::json;
use sqlx::PgPool;

const VANTAGES: [(&str, &str); 3] = [
    ("gh-accra-1", "ghana"),
    ("ng-lagos-1", "nigeria"),
    ("ke-nairobi-1", "kenya"),
];

struct World {
    client: Client,
    ns: TestNamespace,
    pool: PgPool,
    url: String,
    key: String,
}

impl World {
    async fn new(prefix: &str, quorum: Option<serde_json::Value>) -> Result<Self> {
        let client = common::client().await?;
        common::install_crds(&client).await?;
        let (url, pool) = common::migrated_database("fs_localize").await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        apply_json(
            &Api::<FiberRegion>::namespaced(client.clone(), &ns.name),
            &common::region_json("ghana"),
        )
        .await?;
        let mut probe = common::probe_json("accra-edge", "ghana");
        if let Some(quorum) = quorum {
            probe["spec"]["alerting"] = json!({ "quorum": quorum });
        }
        apply_json(
            &Api::<FiberProbe>::namespaced(client.clone(), &ns.name),
            &probe,
        )
        .await?;
        let key = format!("{}/accra-edge", ns.name);
        Ok(Self {
            client,
            ns,
            pool,
            url,
            key,
        })
    }

    /// google-dns as slow (400 ms) from the nodes in `slow`, fast (20 ms) from the others;
    /// db fast from gh-accra-1. In one transaction: a status period in between would see some
    /// vantage points without samples, or with the old ones.
    async fn slow_from(&self, slow: &[&str]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (node, region) in VANTAGES {
            let latency = if slow.contains(&node) { 400.0 } else { 20.0 };
            common::replace_samples_in(&mut tx, &self.key, "google-dns", node, region, latency)
                .await?;
        }
        common::replace_samples_in(&mut tx, &self.key, "db", "gh-accra-1", "ghana", 5.0).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn until(
        &self,
        what: &str,
        check: impl Fn(&FiberProbeStatus, &TargetStatus) -> bool,
    ) -> Result<FiberProbeStatus> {
        let probes: Api<FiberProbe> = Api::namespaced(self.client.clone(), &self.ns.name);
        wait_for(what, WAIT, EVERY, || async {
            let s = probes.get("accra-edge").await?.status.unwrap_or_default();
            let target = s
                .targets
                .iter()
                .find(|t| t.name == "google-dns")
                .cloned()
                .unwrap_or_default();
            Ok(if check(&s, &target) {
                Ok(s)
            } else {
                Err(format!("{target:?}; alerts {:?}", s.alerts))
            })
        })
        .await
    }

    async fn event_reasons(&self) -> Result<Vec<String>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect())
    }

    async fn delete(self) -> Result<()> {
        self.pool.close().await;
        self.ns.delete().await?;
        LocalEnv::load()?
            .drop_postgres_database(&self.url, &[])
            .await
    }
}

async fn run(world: &World, test: impl AsyncFnOnce(&World) -> Result<()>) -> Result<()> {
    let db = fiberstack_operator::status::connect_lazy(&world.url, None)?;
    let operator = Operator::start(&world.client, &world.ns.name, Some(db));
    let result = test(world).await;
    operator.stop().await;
    result
}

#[tokio::test]
async fn one_slow_path_is_partial_and_named_all_slow_is_everywhere() -> Result<()> {
    let world = World::new("op-localize", None).await?;
    let result = run(&world, async |world| {
        world.slow_from(&["gh-accra-1"]).await?;
        let s = world
            .until(
                "google-dns Partial from ghana/gh-accra-1, its alert firing",
                |s, t| t.scope == Some(Scope::Partial) && !s.alerts.is_empty(),
            )
            .await?;
        let target = s.targets.iter().find(|t| t.name == "google-dns").unwrap();
        assert_eq!(target.vantage_points, ["ghana/gh-accra-1"]);
        let message = target.message.clone().unwrap_or_default();
        assert!(
            message.contains("degraded from ghana/gh-accra-1 only (1 of 3 vantage points)"),
            "{message}"
        );
        assert_eq!(s.scope, Some(Scope::Partial));
        assert_eq!(s.alerts[0].scope, Some(Scope::Partial));
        assert_eq!(s.alerts[0].vantage_points, ["ghana/gh-accra-1"]);
        let healthy = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Healthy")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(healthy.contains("from ghana/gh-accra-1 only"), "{healthy}");
        let reasons = world.event_reasons().await?;
        assert!(
            reasons.iter().any(|r| r == "AlertFiringPartial"),
            "{reasons:?}"
        );

        // `kubectl get` shows it.
        let env = LocalEnv::load()?;
        let out = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &env.kubeconfig)
            .args(["get", "fiberprobes", "-n", &world.ns.name])
            .output()?;
        let table = String::from_utf8_lossy(&out.stdout);
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let column = header
            .iter()
            .position(|h| *h == "SCOPE")
            .expect("a SCOPE column");
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(row.get(column), Some(&"Partial"), "{table}");

        // Slow from everywhere: the target itself.
        world
            .slow_from(&["gh-accra-1", "ng-lagos-1", "ke-nairobi-1"])
            .await?;
        let s = world
            .until("google-dns Everywhere", |_, t| {
                t.scope == Some(Scope::Everywhere)
            })
            .await?;
        let target = s.targets.iter().find(|t| t.name == "google-dns").unwrap();
        assert_eq!(target.vantage_points.len(), 3);
        assert!(
            target
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("degraded everywhere (3 vantage points)"),
            "{:?}",
            target.message
        );
        assert_eq!(s.scope, Some(Scope::Everywhere));
        Ok(())
    })
    .await;
    world.delete().await?;
    result
}

#[tokio::test]
async fn a_quorum_of_two_holds_the_alert_until_two_vantage_points_agree() -> Result<()> {
    let world = World::new("op-localize-quorum", Some(json!({ "nodes": 2 }))).await?;
    let result = run(&world, async |world| {
        world.slow_from(&["gh-accra-1"]).await?;
        world
            .until("google-dns Partial", |_, t| t.scope == Some(Scope::Partial))
            .await?;
        // Several evaluations (every 2 s, hysteresis 2): one vantage point is not a quorum.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let probes: Api<FiberProbe> = Api::namespaced(world.client.clone(), &world.ns.name);
        let s = probes.get("accra-edge").await?.status.unwrap_or_default();
        assert!(s.alerts.is_empty(), "{:?}", s.alerts);

        world.slow_from(&["gh-accra-1", "ng-lagos-1"]).await?;
        let s = world
            .until("the alert fires once two agree", |s, _| {
                !s.alerts.is_empty()
            })
            .await?;
        assert_eq!(
            s.alerts[0].vantage_points,
            ["ghana/gh-accra-1", "nigeria/ng-lagos-1"]
        );
        Ok(())
    })
    .await;
    world.delete().await?;
    result
}
