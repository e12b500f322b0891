//! Alert notifications end to end: samples in a real, migrated PostgreSQL database make a
//! target breach; the operator (in this process, against the local API server) fires its
//! alert to a real Alertmanager (routing to a webhook receiver in this test), a generic
//! webhook and a Slack-shaped receiver, once; recovery resolves it, once; the alert history
//! holds the episode once. Also: a receiver that is down gets the notification when it comes
//! back; a muted probe notifies nothing until the mute ends; a restarted operator sends
//! nothing twice.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use common::{EVERY, Operator, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, wait_for};
use fiberstack_operator::crd::{
    AlertState, FiberNotifier, FiberProbe, FiberProbeStatus, FiberRegion,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Longer than the health tests' wait: Alertmanager adds its group wait.
const WAIT: Duration = Duration::from_secs(60);

/// What a receiver got: path (which receiver), Idempotency-Key, body.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    key: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// While true, every request is answered 503 and not counted.
    down: Arc<Mutex<bool>>,
}

impl Receiver {
    async fn start() -> Result<(Self, SocketAddr)> {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((receiver, addr))
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }
}

async fn receive(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if *r.down.lock().unwrap() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    r.got.lock().unwrap().push(Received { path, key, body });
    StatusCode::OK
}

/// Samples of `target` from gh-accra-1 at `latency_ms` (replacing its earlier ones).
async fn seed(pool: &PgPool, probe: &str, target: &str, latency_ms: f64) -> Result<()> {
    common::replace_samples(pool, probe, target, "gh-accra-1", "ghana", latency_ms).await
}

/// One test's world: a namespace with the CRDs, a migrated database, the Secrets, a region.
struct World {
    client: Client,
    ns: TestNamespace,
    pool: PgPool,
    url: String,
}

impl World {
    async fn new(prefix: &str) -> Result<Self> {
        let client = common::client().await?;
        common::install_crds(&client).await?;
        let (url, pool) = common::migrated_database("fs_notify").await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let world = Self {
            client,
            ns,
            pool,
            url,
        };
        // The region's writer URL: the operator writes the alert history through it.
        world.secret("fiberstack-db", &world.url.clone()).await?;
        apply_json(
            &world.ns.api::<FiberRegion>(),
            &common::region_json("ghana"),
        )
        .await?;
        Ok(world)
    }

    async fn secret(&self, name: &str, url: &str) -> Result<()> {
        common::url_secret(&self.ns.api::<Secret>(), name, url).await
    }

    /// A FiberNotifier `name` of `kind` whose URL Secret holds `url`.
    async fn notifier(&self, name: &str, kind: &str, url: &str) -> Result<()> {
        self.secret(&format!("{name}-url"), url).await?;
        apply_json(
            &self.ns.api::<FiberNotifier>(),
            &json!({
                "apiVersion": "fiberstack.io/v1alpha1",
                "kind": "FiberNotifier",
                "metadata": { "name": name },
                "spec": { kind: { "urlSecretRef": { "name": format!("{name}-url"), "key": "url" } } }
            }),
        )
        .await?;
        Ok(())
    }

    /// The probe `accra-edge` notifying `notifiers`, its google-dns target breaching.
    async fn breaching_probe(&self, notifiers: &[&str], muted_until: Option<&str>) -> Result<()> {
        let mut probe = common::probe_json("accra-edge", "ghana");
        probe["spec"]["alerting"] = json!({ "notifiers": notifiers });
        if let Some(until) = muted_until {
            probe["spec"]["alerting"]["mutedUntil"] = json!(until);
        }
        apply_json(&self.ns.api::<FiberProbe>(), &probe).await?;
        let key = format!("{}/accra-edge", self.ns.name);
        seed(&self.pool, &key, "google-dns", 400.0).await?;
        seed(&self.pool, &key, "db", 5.0).await?;
        Ok(())
    }

    async fn recover(&self) -> Result<()> {
        let key = format!("{}/accra-edge", self.ns.name);
        seed(&self.pool, &key, "google-dns", 20.0).await
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
                Err(format!("{:?}", s.alerts))
            })
        })
        .await
    }

    /// The history's rows: (id, state, ended, notified).
    async fn history(&self) -> Result<Vec<(String, String, bool, Vec<String>)>> {
        Ok(sqlx::query_as(
            "select id, state, ended_at is not null, notified from alerts order by started_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete(self) -> Result<()> {
        self.pool.close().await;
        self.ns.delete().await?;
        LocalEnv::load()?
            .drop_postgres_database(&self.url, &[])
            .await
    }
}

async fn operator(world: &World) -> Result<Operator> {
    let db = fiberstack_operator::status::connect_lazy(&world.url, None)?;
    Ok(Operator::start(&world.client, &world.ns.name, Some(db)))
}

async fn until_received(receiver: &Receiver, path: &str, count: usize) -> Result<Vec<Received>> {
    wait_for(
        &format!("{count} notification(s) on /{path}"),
        WAIT,
        EVERY,
        || async {
            let got = receiver.on(path);
            Ok(if got.len() >= count {
                Ok(got)
            } else {
                Err(format!("{got:?}"))
            })
        },
    )
    .await
}

fn am_alerts(r: &Received) -> Vec<(String, String)> {
    r.body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["status"].as_str().unwrap_or_default().to_owned(),
                a["labels"]["target"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_breach_fires_once_everywhere_and_recovery_resolves_it_once() -> Result<()> {
    let world = World::new("op-notify").await?;
    let (receiver, addr) = Receiver::start().await?;
    let am = common::Alertmanager::start(addr, "alertname, namespace, probe, target").await?;
    let operator = operator(&world).await?;
    let result = fire_and_resolve(&world, &receiver, &am, addr).await;
    operator.stop().await;
    drop(am);
    world.delete().await?;
    result
}

async fn fire_and_resolve(
    world: &World,
    receiver: &Receiver,
    am: &common::Alertmanager,
    addr: SocketAddr,
) -> Result<()> {
    world.notifier("am", "alertmanager", &am.url).await?;
    world
        .notifier("hook", "webhook", &format!("http://{addr}/hook"))
        .await?;
    world
        .notifier("chat", "slack", &format!("http://{addr}/slack"))
        .await?;
    world.breaching_probe(&["am", "hook", "chat"], None).await?;

    // Fired once to each: the webhook with its key, Slack as text, Alertmanager routed on.
    let hook = until_received(receiver, "hook", 1).await?;
    assert_eq!(hook[0].body["status"], "firing");
    assert_eq!(hook[0].body["target"], "google-dns");
    assert_eq!(hook[0].body["region"], "ghana");
    assert_eq!(hook[0].body["probe"], "accra-edge");
    assert!(
        hook[0].body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("400 ms > 150 ms"),
        "{:?}",
        hook[0].body
    );
    let id = hook[0].body["id"].as_str().context("id")?.to_owned();
    assert_eq!(
        hook[0].key.as_deref(),
        Some(format!("{id}/firing").as_str())
    );
    assert!(
        hook[0].body["link"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&format!(
                "var-probe={}/accra-edge&var-target=google-dns",
                world.ns.name
            )),
        "{:?}",
        hook[0].body
    );
    let slack = until_received(receiver, "slack", 1).await?;
    let text = slack[0].body["text"].as_str().unwrap_or_default();
    assert!(text.contains("*FIRING* target google-dns"), "{text}");
    let routed = until_received(receiver, "am", 1).await?;
    assert_eq!(
        am_alerts(&routed[0]),
        [("firing".to_owned(), "google-dns".to_owned())]
    );
    assert_eq!(
        routed[0].body["alerts"][0]["labels"]["alertname"],
        "FiberTargetBreaching"
    );
    assert_eq!(
        routed[0].body["alerts"][0]["labels"]["namespace"],
        world.ns.name.as_str()
    );

    // The status records each acknowledgement and the history write.
    let s = world
        .status_until("three acknowledgements and the history", |s| {
            s.alerts.len() == 1
                && s.alerts[0].notified.len() == 3
                && s.alerts[0].recorded == Some(AlertState::Firing)
        })
        .await?;
    assert_eq!(s.alerts[0].id, id);
    assert_eq!(s.alerts[0].state, AlertState::Firing);
    let notifier = world.ns.api::<FiberNotifier>().get("hook").await?;
    let ns_status = notifier.status.clone().context("notifier status")?;
    assert_eq!(ns_status.kind.as_deref(), Some("webhook"));
    assert_eq!(ns_status.sent, 1);
    assert_eq!(ready(&notifier), "True");

    // Recovery resolves it once everywhere, and the alert leaves the status.
    world.recover().await?;
    let hook = until_received(receiver, "hook", 2).await?;
    assert_eq!(hook[1].body["status"], "resolved");
    assert_eq!(hook[1].body["id"], id.as_str());
    assert_eq!(
        hook[1].key.as_deref(),
        Some(format!("{id}/resolved").as_str())
    );
    let slack = until_received(receiver, "slack", 2).await?;
    assert!(
        slack[1].body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("*RESOLVED*")
    );
    let routed = wait_for(
        "Alertmanager routes the resolution",
        WAIT,
        EVERY,
        || async {
            let got = receiver.on("am");
            Ok(
                if got
                    .iter()
                    .any(|r| am_alerts(r).iter().any(|(s, _)| s == "resolved"))
                {
                    Ok(got)
                } else {
                    Err(format!("{got:?}"))
                },
            )
        },
    )
    .await?;
    world
        .status_until("the resolved alert leaves the status", |s| {
            s.alerts.is_empty()
        })
        .await?;

    // Nothing more arrives: a few more evaluations, and the counts stand.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(receiver.on("hook").len(), 2, "{:?}", receiver.on("hook"));
    assert_eq!(receiver.on("slack").len(), 2);
    let am_firing = receiver
        .on("am")
        .iter()
        .filter(|r| r.body["status"] == "firing")
        .count();
    assert_eq!(am_firing, 1, "{routed:?}");
    let history = world.history().await?;
    assert_eq!(history.len(), 1, "{history:?}");
    let (hid, state, ended, notified) = &history[0];
    assert_eq!(
        (hid.as_str(), state.as_str(), *ended),
        (id.as_str(), "resolved", true)
    );
    assert_eq!(notified, &["am", "chat", "hook"]);
    Ok(())
}

/// The Ready condition's status of a notifier ("" when it has none).
fn ready(notifier: &FiberNotifier) -> String {
    fiberstack_e2e::conditions(notifier)
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_the_notification_when_it_is_back() -> Result<()> {
    let world = World::new("op-notify-down").await?;
    let (receiver, addr) = Receiver::start().await?;
    receiver.set_down(true);
    let operator = operator(&world).await?;
    let result = async {
        world
            .notifier(
                "hook",
                "webhook",
                &format!("http://{addr}/hook?token=s3cret"),
            )
            .await?;
        world.breaching_probe(&["hook"], None).await?;
        let notifiers = world.ns.api::<FiberNotifier>();
        let failing = wait_for("the notifier reports failures", WAIT, EVERY, || async {
            let n = notifiers.get("hook").await?;
            let s = n.status.clone().unwrap_or_default();
            Ok(if s.consecutive_failures >= 2 {
                Ok(n)
            } else {
                Err(format!("{s:?}"))
            })
        })
        .await?;
        assert_eq!(ready(&failing), "False");
        let text = serde_json::to_string(&failing.status)?;
        assert!(text.contains("503"), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("/hook"),
            "the URL leaked: {text}"
        );
        let s = world
            .ns.api::<FiberProbe>()
            .get("accra-edge")
            .await?
            .status
            .unwrap_or_default();
        assert!(
            s.alerts[0].notified.is_empty(),
            "nothing acknowledged while down"
        );

        receiver.set_down(false);
        let got = until_received(&receiver, "hook", 1).await?;
        assert_eq!(got[0].body["status"], "firing");
        wait_for("the notifier is ready again", WAIT, EVERY, || async {
            let n = notifiers.get("hook").await?;
            Ok(if ready(&n) == "True" {
                Ok(())
            } else {
                Err(format!("{:?}", n.status))
            })
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(receiver.on("hook").len(), 1, "delivered once");

        // And in the operator's metrics: the failed attempts and the one delivery.
        let text = operator.metrics_text();
        let value = |result: &str| -> f64 {
            let series = format!(
                "fiberstack_notifications_total{{namespace=\"{}\",notifier=\"hook\",kind=\"webhook\",result=\"{result}\"}}",
                world.ns.name
            );
            common::metric_value(&text, &series).unwrap_or(-1.0)
        };
        assert_eq!(value("sent"), 1.0, "{text}");
        assert!(value("failed") >= 2.0, "{text}");
        Ok(())
    }
    .await;
    operator.stop().await;
    world.delete().await?;
    result
}

#[tokio::test]
async fn a_muted_probe_notifies_nothing_until_the_mute_ends() -> Result<()> {
    let world = World::new("op-notify-mute").await?;
    let (receiver, addr) = Receiver::start().await?;
    let operator = operator(&world).await?;
    let result = async {
        world
            .notifier("hook", "webhook", &format!("http://{addr}/hook"))
            .await?;
        world
            .breaching_probe(&["hook"], Some("2099-01-01T00:00:00Z"))
            .await?;
        world
            .status_until("the alert fires in status", |s| {
                s.alerts.iter().any(|a| a.state == AlertState::Firing)
            })
            .await?;
        // Several evaluations (every 2 s) while muted: nothing sent, nothing acknowledged.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(receiver.on("hook").is_empty(), "{:?}", receiver.on("hook"));
        let s = world
            .ns
            .api::<FiberProbe>()
            .get("accra-edge")
            .await?
            .status
            .unwrap_or_default();
        assert!(s.alerts[0].notified.is_empty());
        assert_eq!(
            s.alerts[0].recorded,
            Some(AlertState::Firing),
            "history is kept even when muted"
        );

        // The mute ends: what still fires is sent, once.
        let mut probe = common::probe_json("accra-edge", "ghana");
        probe["spec"]["alerting"] =
            json!({ "notifiers": ["hook"], "mutedUntil": "2000-01-01T00:00:00Z" });
        apply_json(&world.ns.api::<FiberProbe>(), &probe).await?;
        let got = until_received(&receiver, "hook", 1).await?;
        assert_eq!(got[0].body["status"], "firing");
        Ok(())
    }
    .await;
    operator.stop().await;
    world.delete().await?;
    result
}

#[tokio::test]
async fn a_restarted_operator_sends_nothing_twice_and_loses_nothing() -> Result<()> {
    let world = World::new("op-notify-restart").await?;
    let (receiver, addr) = Receiver::start().await?;
    let result = async {
        world
            .notifier("hook", "webhook", &format!("http://{addr}/hook"))
            .await?;
        world.breaching_probe(&["hook"], None).await?;
        let first = operator(&world).await?;
        until_received(&receiver, "hook", 1).await?;
        world
            .status_until("the acknowledgement is stored", |s| {
                s.alerts.first().is_some_and(|a| !a.notified.is_empty())
            })
            .await?;
        first.stop().await;

        // A new operator (a new leader: no memory of the last one) takes over; the target
        // recovers meanwhile.
        world.recover().await?;
        let second = operator(&world).await?;
        let got = until_received(&receiver, "hook", 2).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        second.stop().await;
        let got = got?;
        assert_eq!(got[1].body["status"], "resolved");
        let all = receiver.on("hook");
        let statuses: Vec<&str> = all
            .iter()
            .map(|r| r.body["status"].as_str().unwrap_or_default())
            .collect();
        if statuses != ["firing", "resolved"] {
            bail!("expected one firing and one resolved notification, got {statuses:?}");
        }
        let history = world.history().await?;
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].1, "resolved");
        Ok(())
    }
    .await;
    world.delete().await?;
    result
}

#[tokio::test]
async fn the_example_is_accepted_and_a_notifier_of_two_kinds_is_refused() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-notify-example").await?;
    let result = async {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/notifiers.yaml"
        );
        let text = std::fs::read_to_string(path)?;
        let mut kinds = vec![];
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "FiberNotifier" => {
                    let n: FiberNotifier = serde_json::from_value(value.clone())?;
                    apply_json(
                        &Api::<FiberNotifier>::namespaced(client.clone(), &ns.name),
                        &serde_json::to_value(n)?,
                    )
                    .await?;
                }
                "FiberProbe" => {
                    let p: FiberProbe = serde_json::from_value(value.clone())?;
                    assert_eq!(p.spec.alerting.notifiers, ["alertmanager", "ticketing"]);
                    apply_json(
                        &Api::<FiberProbe>::namespaced(client.clone(), &ns.name),
                        &value,
                    )
                    .await?;
                }
                "Secret" => {}
                other => bail!("unexpected kind {other} in the example"),
            }
            kinds.push(kind);
        }
        assert_eq!(kinds.iter().filter(|k| *k == "FiberNotifier").count(), 3);

        let two = json!({
            "apiVersion": "fiberstack.io/v1alpha1",
            "kind": "FiberNotifier",
            "metadata": { "name": "both" },
            "spec": {
                "webhook": { "urlSecretRef": { "name": "a", "key": "url" } },
                "slack": { "urlSecretRef": { "name": "b", "key": "url" } }
            }
        });
        let err = apply_json(
            &Api::<FiberNotifier>::namespaced(client.clone(), &ns.name),
            &two,
        )
        .await
        .expect_err("a notifier of two kinds is refused");
        assert!(
            format!("{err:#}").contains("set exactly one of alertmanager, webhook and slack"),
            "{err:#}"
        );
        let mut bad_mute = common::probe_json("muted", "ghana");
        bad_mute["spec"]["alerting"] = json!({ "mutedUntil": "tomorrow" });
        let err = apply_json(
            &Api::<FiberProbe>::namespaced(client.clone(), &ns.name),
            &bad_mute,
        )
        .await
        .expect_err("a mute that is not a time is refused");
        assert!(format!("{err:#}").contains("mutedUntil"), "{err:#}");
        Ok(())
    }
    .await;
    ns.delete().await?;
    result
}

/// Two operator binaries sharing the leader Lease; the leader is killed (SIGKILL) the moment
/// its first notification arrives — between the receiver's answer and the acknowledgement's
/// write, possibly — and the other takes over: the receiver sees each transition once per
/// idempotency key (a re-send after such a kill carries the same key and body), none is lost,
/// and the history holds the episode once.
#[tokio::test]
async fn killing_the_leader_mid_way_loses_nothing_and_duplicates_nothing_by_key() -> Result<()> {
    const BIN: &str = env!("CARGO_BIN_EXE_fiberstack-operator");
    let world = World::new("op-notify-failover").await?;
    let (receiver, addr) = Receiver::start().await?;
    let env = LocalEnv::load()?;
    let replica = |identity: &str| -> Result<std::process::Child> {
        std::process::Command::new(BIN)
            .env("KUBECONFIG", &env.kubeconfig)
            .env("FIBER_LOG", "warn")
            .args(["--database-url", &world.url])
            .args([
                "--watch-namespace",
                &world.ns.name,
                "--lease-namespace",
                &world.ns.name,
            ])
            .args(["--identity", identity, "--lease-duration-secs", "3"])
            .args(["--status-interval-secs", "2", "--health-evaluations", "2"])
            .args([
                "--health-evaluation-gap-secs",
                "1",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting fiberstack-operator")
    };
    let mut a = replica("replica-a")?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = world.ns.api();
    let leads = |who: &'static str| {
        let leases = leases.clone();
        async move {
            wait_for(&format!("{who} leads"), WAIT, EVERY, || async {
                let holder = leases
                    .get_opt("fiberstack-operator")
                    .await?
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity);
                Ok(if holder.as_deref() == Some(who) {
                    Ok(())
                } else {
                    Err(format!("{holder:?}"))
                })
            })
            .await
        }
    };
    let result = async {
        leads("replica-a").await?;
        let mut b = replica("replica-b")?;
        let result = async {
            world
                .notifier("hook", "webhook", &format!("http://{addr}/hook"))
                .await?;
            world.breaching_probe(&["hook"], None).await?;
            until_received(&receiver, "hook", 1).await?;
            a.kill()?;
            a.wait()?;
            world.recover().await?;
            leads("replica-b").await?;
            wait_for("the resolution", WAIT, EVERY, || async {
                let got = receiver.on("hook");
                Ok(if got.iter().any(|r| r.body["status"] == "resolved") {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                })
            })
            .await?;
            world
                .status_until("the resolved alert leaves the status", |s| {
                    s.alerts.is_empty()
                })
                .await?;
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        let _ = b.kill();
        let _ = b.wait();
        result?;
        let got = receiver.on("hook");
        let id = got[0].body["id"].as_str().context("id")?.to_owned();
        let mut keys: Vec<String> = got.iter().filter_map(|r| r.key.clone()).collect();
        keys.dedup();
        assert_eq!(
            keys,
            [format!("{id}/firing"), format!("{id}/resolved")],
            "{got:?}"
        );
        for r in &got {
            let first = got.iter().find(|o| o.key == r.key).expect("itself");
            assert_eq!(r.body, first.body, "a re-send carries the same body");
        }
        let resolved = got
            .iter()
            .filter(|r| r.body["status"] == "resolved")
            .count();
        assert_eq!(resolved, 1, "{got:?}");
        let history = world.history().await?;
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].1, "resolved");
        Ok(())
    }
    .await;
    let _ = a.kill();
    let _ = a.wait();
    world.delete().await?;
    result
}

#[tokio::test]
async fn deleting_a_probe_with_a_firing_alert_sends_its_end_first() -> Result<()> {
    let world = World::new("op-notify-delete").await?;
    let (receiver, addr) = Receiver::start().await?;
    let operator = operator(&world).await?;
    let result = async {
        world
            .notifier("hook", "webhook", &format!("http://{addr}/hook"))
            .await?;
        world.breaching_probe(&["hook"], None).await?;
        until_received(&receiver, "hook", 1).await?;
        let probes = world.ns.api::<FiberProbe>();
        wait_for("the alerts finalizer", WAIT, EVERY, || async {
            let p = probes.get("accra-edge").await?;
            let f = p.metadata.finalizers.clone().unwrap_or_default();
            Ok(if f.iter().any(|f| f == "fiberstack.io/alerts") {
                Ok(())
            } else {
                Err(format!("{f:?}"))
            })
        })
        .await?;

        probes.delete("accra-edge", &Default::default()).await?;
        let got = until_received(&receiver, "hook", 2).await?;
        assert_eq!(got[1].body["status"], "resolved");
        assert_eq!(got[1].body["id"], got[0].body["id"]);
        wait_for("the probe is gone", WAIT, EVERY, || async {
            Ok(match probes.get_opt("accra-edge").await? {
                None => Ok(()),
                Some(p) => Err(format!("{:?}", p.metadata.finalizers)),
            })
        })
        .await?;
        let history = world.history().await?;
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!((history[0].1.as_str(), history[0].2), ("resolved", true));
        Ok(())
    }
    .await;
    operator.stop().await;
    world.delete().await?;
    result
}
