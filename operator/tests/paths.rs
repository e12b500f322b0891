//! Path changes of a traceroute target: rounds stored by the real ETL (`fiber-etl run`, from
//! a Redis stream into a real, migrated PostgreSQL database), judged by the operator (in this
//! process, against the local API server). Flaps of one and two rounds change nothing; a
//! lasting switch on one node is one `PathChanged` Event naming the node and the changed
//! hops, status holds the hops before and after, and its `FiberPathChanged` alert reaches a
//! real Alertmanager with labels probe/target/node, then resolves after changeAlertFor; a
//! restarted operator announces nothing again.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, SubsecRound, Utc};
use common::{EVERY, Operator, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, wait_for};
use fiberstack_model::{Batch, CheckKind, Hop, Sample, path_fingerprint};
use fiberstack_operator::crd::{
    AlertState, FiberNotifier, FiberProbe, FiberProbeStatus, FiberRegion,
};
use fiberstack_operator::paths::VantagePath;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::ListParams;
use serde_json::{Value, json};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(60);
const TARGET: &str = "route";
const N1: &str = "vp-accra-1";
const N2: &str = "vp-accra-2";

/// Router A's path and router B's (whose middle hop does not answer).
type Route = [Option<&'static str>; 3];
const A: Route = [Some("10.1.0.1"), Some("10.1.0.2"), Some("10.9.0.1")];
const B: Route = [Some("10.2.0.1"), None, Some("10.9.0.1")];

fn hops(route: &[Option<&str>]) -> Vec<Hop> {
    route
        .iter()
        .enumerate()
        .map(|(i, address)| Hop {
            ttl: i as u8 + 1,
            address: address.map(str::to_owned),
            sent: 3,
            received: if address.is_some() { 3 } else { 0 },
            packet_loss: if address.is_some() { 0.0 } else { 100.0 },
            latency_ms: address.map(|_| 1.0 + i as f64),
            latency_min_ms: address.map(|_| 0.5 + i as f64),
            latency_max_ms: address.map(|_| 1.5 + i as f64),
        })
        .collect()
}

/// The hop list as status shows it.
fn shown(route: &[Option<&str>]) -> Vec<String> {
    route.iter().map(|a| a.unwrap_or("*").to_owned()).collect()
}

/// What a receiver got on a path.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Result<(Self, SocketAddr)> {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route(
                "/am",
                axum::routing::post(
                    |axum::extract::State(r): axum::extract::State<Receiver>,
                     body: axum::body::Bytes| async move {
                        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        r.got.lock().unwrap().push(body);
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((receiver, addr))
    }

    /// (status, alertname, probe, target, node) of every alert Alertmanager sent.
    fn alerts(&self) -> Vec<[String; 5]> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
            .map(|a| {
                let l = &a["labels"];
                [
                    text(&a["status"]),
                    text(&l["alertname"]),
                    text(&l["probe"]),
                    text(&l["target"]),
                    text(&l["node"]),
                ]
            })
            .collect()
    }
}

/// One test's world: a namespace with the CRDs, a migrated database, a region, a probe with
/// one traceroute target notifying Alertmanager `am`.
struct World {
    client: Client,
    ns: TestNamespace,
    pool: PgPool,
    url: String,
    redis_url: String,
    key: String,
    /// The newest round stored: the next ones come after it.
    last: DateTime<Utc>,
}

impl World {
    async fn new(am: &str) -> Result<Self> {
        let client = common::client().await?;
        common::install_crds(&client).await?;
        let (url, pool) = common::migrated_database("fs_paths").await?;
        let ns = TestNamespace::create(&client, "op-paths").await?;
        let env = LocalEnv::load()?;
        let world = Self {
            client,
            key: format!("{}/accra-edge", ns.name),
            ns,
            pool,
            url,
            redis_url: env.redis_url.clone(),
            last: Utc::now() - chrono::TimeDelta::minutes(5),
        };
        // The region's writer URL: the operator writes the alert history through it.
        world.secret("fiberstack-db", &world.url.clone()).await?;
        world.secret("am-url", am).await?;
        apply_json(
            &world.ns.api::<FiberRegion>(),
            &common::region_json("ghana"),
        )
        .await?;
        apply_json(
            &world.ns.api::<FiberNotifier>(),
            &json!({
                "apiVersion": "fiberstack.io/v1alpha1",
                "kind": "FiberNotifier",
                "metadata": { "name": "am" },
                "spec": { "alertmanager": { "urlSecretRef": { "name": "am-url", "key": "url" } } }
            }),
        )
        .await?;
        let mut probe = common::probe_json("accra-edge", "ghana");
        // No node matches: the rounds come from this test only.
        probe["spec"]["nodeSelector"] = json!({ "fiberstack.io/paths-test": "none" });
        probe["spec"]["targets"] = json!([{
            "name": TARGET,
            "traceroute": { "host": "10.9.0.1", "changeAfterRounds": 3, "changeAlertFor": "20s" }
        }]);
        probe["spec"]["alerting"] = json!({ "notifiers": ["am"] });
        apply_json(&world.ns.api::<FiberProbe>(), &probe).await?;
        Ok(world)
    }

    async fn secret(&self, name: &str, url: &str) -> Result<()> {
        common::url_secret(&self.ns.api::<Secret>(), name, url).await
    }

    /// Rounds of the traceroute target, one per route, from each node given, after the
    /// rounds stored before; stored through a Redis stream by `fiber-etl run`.
    async fn rounds(&mut self, nodes: &[(&str, &[Route])]) -> Result<()> {
        // Whole milliseconds: the database keeps microseconds.
        let start = self
            .last
            .max(Utc::now() - chrono::TimeDelta::seconds(30))
            .trunc_subsecs(3);
        let mut batches = vec![];
        for (node, routes) in nodes {
            let samples: Vec<Sample> = routes
                .iter()
                .enumerate()
                .map(|(i, route)| {
                    let time = start + chrono::TimeDelta::milliseconds(100 * (i as i64 + 1));
                    self.last = self.last.max(time);
                    let hops = hops(route);
                    Sample {
                        address: "10.9.0.1".into(),
                        latency_ms: Some(3.0),
                        path_fingerprint: Some(path_fingerprint(&hops)),
                        hops,
                        ..Sample::new(time, TARGET, CheckKind::Traceroute, true)
                    }
                })
                .collect();
            batches.push(Batch {
                probe: self.key.clone(),
                region: "ghana".into(),
                country: "GH".into(),
                node: (*node).to_owned(),
                agent_version: "test".into(),
                samples,
            });
        }
        fiberstack_e2e::etl::store(&self.redis_url, &self.url, &batches).await
    }

    async fn status_until(
        &self,
        what: &str,
        check: impl Fn(&FiberProbeStatus) -> bool,
    ) -> Result<FiberProbeStatus> {
        let probes = self.ns.api::<FiberProbe>();
        wait_for(what, WAIT, EVERY, || async {
            let s = probes.get("accra-edge").await?.status.unwrap_or_default();
            Ok(if check(&s) {
                Ok(s)
            } else {
                Err(format!("paths {:?}; alerts {:?}", s.paths, s.alerts))
            })
        })
        .await
    }

    /// Waits until the operator judged every round stored so far from `node`.
    async fn judged(&self, node: &str) -> Result<FiberProbeStatus> {
        let last = self.last;
        self.status_until(&format!("{node}'s rounds up to {last} judged"), |s| {
            vantage(s, node).is_some_and(|v| {
                DateTime::parse_from_rfc3339(&v.last_round).is_ok_and(|t| t >= last)
            })
        })
        .await
    }

    /// The PathChanged Events: (note, how many times it was reported).
    async fn path_events(&self) -> Result<Vec<(String, i32)>> {
        Ok(self
            .ns
            .api::<Event>()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("PathChanged"))
            .map(|e| {
                let count = e.series.as_ref().map_or(1, |s| s.count);
                (e.note.unwrap_or_default(), count)
            })
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

fn vantage(s: &FiberProbeStatus, node: &str) -> Option<VantagePath> {
    s.paths
        .iter()
        .find(|p| p.target == TARGET)?
        .vantage_points
        .iter()
        .find(|v| v.node == node)
        .cloned()
}

fn operator(world: &World) -> Result<Operator> {
    let db = fiberstack_operator::status::connect_lazy(&world.url, None)?;
    Ok(Operator::start(&world.client, &world.ns.name, Some(db)))
}

#[tokio::test]
async fn flaps_change_nothing_and_a_lasting_switch_is_announced_once() -> Result<()> {
    let (receiver, addr) = Receiver::start().await?;
    let am = common::Alertmanager::start(addr, "alertname, namespace, probe, target, node").await?;
    let mut world = World::new(&am.url).await?;
    let mut running = Some(operator(&world)?);
    let result = scenario(&mut world, &receiver, &mut running).await;
    if let Some(operator) = running {
        operator.stop().await;
    }
    drop(am);
    world.delete().await?;
    result
}

async fn scenario(
    world: &mut World,
    receiver: &Receiver,
    running: &mut Option<Operator>,
) -> Result<()> {
    let fp = |route: &[Option<&str>]| path_fingerprint(&hops(route));

    // Both nodes take router A for four rounds: their first path, learned silently.
    world.rounds(&[(N1, &[A; 4]), (N2, &[A; 4])]).await?;
    world.judged(N1).await?;
    let s = world.judged(N2).await?;
    for node in [N1, N2] {
        let v = vantage(&s, node).unwrap();
        assert_eq!(
            (v.fingerprint, v.hops.clone()),
            (fp(&A), shown(&A)),
            "{node}"
        );
        assert_eq!((v.region.as_str(), v.changed_at), ("ghana", None));
    }
    assert!(s.paths[0].last_change.is_none());

    // A one-round flap to B, then a two-round one: each is counted, then forgotten.
    for flap in [1, 2] {
        let routes = vec![B; flap];
        world.rounds(&[(N1, &routes)]).await?;
        let s = world.judged(N1).await?;
        let v = vantage(&s, N1).unwrap();
        assert_eq!(v.fingerprint, fp(&A), "a {flap}-round flap is no change");
        let pending = v
            .pending
            .unwrap_or_else(|| panic!("B pending in {:?}", s.paths));
        assert_eq!((pending.fingerprint, pending.rounds), (fp(&B), flap as u32));
        world.rounds(&[(N1, &[A])]).await?;
        let s = world.judged(N1).await?;
        assert_eq!(vantage(&s, N1).unwrap().pending, None);
        assert!(s.alerts.is_empty(), "{:?}", s.alerts);
    }
    assert_eq!(world.path_events().await?, []);

    // The switch: N1 takes B for three rounds, N2 stays on A.
    world.rounds(&[(N1, &[B; 3]), (N2, &[A; 3])]).await?;
    let s = world
        .status_until("N1 on router B", |s| {
            vantage(s, N1).is_some_and(|v| v.fingerprint == fp(&B))
        })
        .await?;
    let n1 = vantage(&s, N1).unwrap();
    assert_eq!(n1.hops, shown(&B));
    assert!(n1.changed_at.is_some());
    let change = s.paths[0].last_change.clone().unwrap();
    assert_eq!(change.node, N1);
    assert_eq!((change.before, change.after), (shown(&A), shown(&B)));
    assert_eq!(change.time, n1.since);
    let s = world.judged(N2).await?;
    assert_eq!(vantage(&s, N2).unwrap().fingerprint, fp(&A));

    let alert = s
        .alerts
        .iter()
        .find(|a| a.node.as_deref() == Some(N1))
        .cloned()
        .unwrap_or_else(|| panic!("no path alert in {:?}", s.alerts));
    assert_eq!(
        (alert.target.as_str(), alert.state),
        (TARGET, AlertState::Firing)
    );
    assert_eq!(s.alerts.len(), 1, "{:?}", s.alerts);

    let events = wait_for("one PathChanged Event", WAIT, EVERY, || async {
        let events = world.path_events().await?;
        Ok(if events.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(events)
        })
    })
    .await?;
    let [(note, 1)] = events.as_slice() else {
        panic!("one PathChanged Event reported once: {events:?}");
    };
    assert!(note.contains(&format!("ghana/{N1}")), "{note}");
    assert!(
        note.contains("hop 1 10.1.0.1 → 10.2.0.1; hop 2 10.1.0.2 → *"),
        "{note}"
    );
    assert!(!note.contains(N2), "{note}");
    assert_eq!(alert.reason, *note);

    let firing = wait_for(
        "FiberPathChanged firing in Alertmanager",
        WAIT,
        EVERY,
        || async {
            let got = receiver.alerts();
            Ok(if got.is_empty() {
                Err("nothing".to_owned())
            } else {
                Ok(got)
            })
        },
    )
    .await?;
    assert_eq!(
        firing[0],
        [
            "firing".to_owned(),
            "FiberPathChanged".to_owned(),
            "accra-edge".to_owned(),
            TARGET.to_owned(),
            N1.to_owned()
        ]
    );

    // A new operator goes on from the status: nothing is announced again, and the alert
    // resolves 20 s (changeAlertFor) after the change was taken.
    running.take().unwrap().stop().await;
    *running = Some(operator(world)?);
    world.rounds(&[(N1, &[B]), (N2, &[A])]).await?;
    world.judged(N1).await?;
    wait_for(
        "FiberPathChanged resolved in Alertmanager",
        WAIT,
        EVERY,
        || async {
            let got = receiver.alerts();
            Ok(if got.iter().any(|a| a[0] == "resolved") {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            })
        },
    )
    .await?;
    let resolved = receiver
        .alerts()
        .into_iter()
        .find(|a| a[0] == "resolved")
        .unwrap();
    assert_eq!(resolved[1..], firing[0][1..]);
    let history: Vec<(String, String, String)> =
        sqlx::query_as("select id, target, state from alerts")
            .fetch_all(&world.pool)
            .await?;
    assert_eq!(
        history,
        [(alert.id.clone(), TARGET.to_owned(), "resolved".to_owned())]
    );
    let s = world
        .status_until("the resolved alert delivered and dropped", |s| {
            s.alerts.is_empty()
        })
        .await?;
    assert_eq!(vantage(&s, N1).unwrap().fingerprint, fp(&B));
    assert_eq!(world.path_events().await?, events, "announced once");
    Ok(())
}
