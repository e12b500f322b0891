//! Fixtures shared by the operator's tests against the local control plane.
#![allow(dead_code)]

pub mod netns;

use anyhow::Result;
use fiberstack_operator::crd::{FiberProbe, FiberRegion};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// Installs the CRDs exactly as `crds/` holds them, the way a user would.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for (_, yaml) in fiberstack_operator::crdgen::manifests() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml)?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("fiberstack-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        fiberstack_e2e::wait_for(
            &format!("CRD {name} established"),
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(200),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(if established {
                        Ok(())
                    } else {
                        Err("not established".to_owned())
                    })
                }
            },
        )
        .await?;
    }
    Ok(())
}

pub async fn client() -> Result<Client> {
    fiberstack_e2e::LocalEnv::load()?.kube().await
}

/// A FiberRegion for the `gh` nodes, as JSON so tests can break it at will.
pub fn region_json(name: &str) -> Value {
    json!({
        "apiVersion": "fiberstack.io/v1alpha1",
        "kind": "FiberRegion",
        "metadata": { "name": name },
        "spec": {
            "country": "GH",
            "displayName": "Ghana",
            "nodeSelector": { "topology.kubernetes.io/region": "gh" },
            "ingest": { "replicas": 1 },
            "etl": { "replicas": 1 },
            "redis": { "urlSecretRef": { "name": "fiberstack-redis", "key": "url" } },
            "database": { "urlSecretRef": { "name": "fiberstack-db", "key": "url" } }
        }
    })
}

/// A FiberProbe of `region` on its edge nodes.
pub fn probe_json(name: &str, region: &str) -> Value {
    json!({
        "apiVersion": "fiberstack.io/v1alpha1",
        "kind": "FiberProbe",
        "metadata": { "name": name },
        "spec": {
            "region": region,
            "nodeSelector": { "fiberstack.io/edge": "true" },
            "interval": "60s",
            "timeout": "5s",
            "targets": [
                { "name": "google-dns", "icmp": { "host": "8.8.8.8", "count": 5 } },
                { "name": "db", "tcp": { "host": "10.0.0.5", "port": 5432 } }
            ]
        }
    })
}

pub fn region(name: &str) -> FiberRegion {
    serde_json::from_value(region_json(name)).unwrap()
}

pub fn probe(name: &str, region: &str) -> FiberProbe {
    serde_json::from_value(probe_json(name, region)).unwrap()
}

/// The controllers, in this process, watching one test namespace.
pub struct Operator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    metrics: std::sync::Arc<fiberstack_operator::metrics::Metrics>,
}

/// The images `make images` built and pushed to the environment's registry: the pods the
/// controllers render run for real on the nodes.
pub fn images() -> fiberstack_operator::render::Images {
    let image = |name: &str| {
        fiberstack_e2e::images::reference(name)
            .unwrap_or_else(|e| panic!("the operator tests run the real images: {e:#}"))
    };
    fiberstack_operator::render::Images {
        ingest: image("fiber-ingest"),
        etl: image("fiber-etl"),
        probe: image("fiber-probe"),
        pull_policy: "IfNotPresent".to_owned(),
        otlp_endpoint: None,
        ingest_service_account: None,
    }
}

impl Operator {
    pub fn start(client: &Client, namespace: &str, db: Option<sqlx::PgPool>) -> Self {
        Self::start_with(client, namespace, db, |_| {})
    }

    /// [`Operator::start`] with the test's settings changed by `adjust` first.
    pub fn start_with(
        client: &Client,
        namespace: &str,
        db: Option<sqlx::PgPool>,
        adjust: impl FnOnce(&mut fiberstack_operator::controller::Settings),
    ) -> Self {
        let mut settings = fiberstack_operator::controller::Settings {
            images: images(),
            namespace: Some(namespace.to_owned()),
            db_schema: None,
            status_every: std::time::Duration::from_secs(2),
            hysteresis: fiberstack_operator::health::Hysteresis {
                evaluations: 2,
                min_gap: std::time::Duration::from_secs(1),
            },
            concurrency: 8,
            alert_link: Some(
                "https://grafana.test/d/fiberstack-target?var-probe={namespace}/{probe}&var-target={target}".to_owned(),
            ),
            prune_every: std::time::Duration::from_secs(2),
        };
        adjust(&mut settings);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = std::sync::Arc::new(fiberstack_operator::metrics::Metrics::default());
        let task = tokio::spawn(fiberstack_operator::controller::run(
            client.clone(),
            settings,
            db,
            metrics.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            stop: Some(tx),
            task,
            metrics,
        }
    }

    /// What this operator's `/metrics` would answer now.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// What `/metrics` would answer a scrape that does not ask for OpenMetrics (curl,
    /// promtool): the classic text format.
    pub fn metrics_classic_text(&self) -> String {
        self.metrics.exposition(None).1
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task).await;
    }
}

/// Creates (or updates) an object from JSON with server-side apply, as `kubectl apply
/// --server-side` would.
pub async fn apply_json<K>(api: &Api<K>, value: &Value) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply("fiberstack-tests").force(),
            &Patch::Apply(value),
        )
        .await?)
}

/// A Secret `name` whose key `url` holds `url` (a database or notifier URL), applied in `api`'s
/// namespace.
pub async fn url_secret(
    api: &Api<k8s_openapi::api::core::v1::Secret>,
    name: &str,
    url: &str,
) -> Result<()> {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": { "url": url }
    });
    apply_json(api, &secret).await?;
    Ok(())
}

pub const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
pub const EVERY: std::time::Duration = std::time::Duration::from_millis(300);

/// Waits (up to [`WAIT`]) until object `name` of `api` exists, and returns it.
pub async fn wait_exists<K>(api: &Api<K>, name: &str) -> Result<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    fiberstack_e2e::wait_for(&format!("{} {name}", K::kind(&())), WAIT, EVERY, || async {
        Ok(api.get_opt(name).await?.ok_or("absent".to_owned()))
    })
    .await
}

/// A fresh PostgreSQL database, migrated as the chart's Job does: its URL and a pool.
pub async fn migrated_database(prefix: &str) -> Result<(String, sqlx::PgPool)> {
    let url = fiberstack_e2e::LocalEnv::load()?
        .fresh_postgres_database(prefix)
        .await?;
    fiberstack_e2e::etl::migrate(&url, None).await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    Ok((url, pool))
}

/// 30 successful ICMP samples of `target` from `node` (in `region`) at `latency_ms`, one
/// every 10 s back from now; the node's earlier samples of the target are replaced, in one
/// transaction (a status period between the two would see the node without samples).
pub async fn replace_samples(
    pool: &sqlx::PgPool,
    probe: &str,
    target: &str,
    node: &str,
    region: &str,
    latency_ms: f64,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    replace_samples_in(&mut tx, probe, target, node, region, latency_ms).await?;
    tx.commit().await?;
    Ok(())
}

/// [`replace_samples`] inside the caller's transaction, for a change of several nodes that
/// the operator must see whole.
pub async fn replace_samples_in(
    conn: &mut sqlx::PgConnection,
    probe: &str,
    target: &str,
    node: &str,
    region: &str,
    latency_ms: f64,
) -> Result<()> {
    sqlx::query("delete from metrics where probe = $1 and target = $2 and node = $3")
        .bind(probe)
        .bind(target)
        .bind(node)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => g * 10), $3, $1, $4, $2, 'icmp', true, $5, 0
           from generate_series(1, 30) g",
    )
    .bind(probe)
    .bind(target)
    .bind(node)
    .bind(region)
    .bind(latency_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The value of one series (name and labels exactly as exposed) in a /metrics text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A real Alertmanager (the environment's binary) routing every alert to `receiver`/am and
/// flushing groups within a second; grouped by `group_by` (e.g. `alertname, namespace, probe,
/// target`). Stopped and its files removed on drop.
#[allow(dead_code)] // not every test binary that includes common starts one
pub struct Alertmanager {
    _child: tokio::process::Child,
    pub url: String,
    dir: std::path::PathBuf,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(dead_code)]
impl Alertmanager {
    pub async fn start(receiver: std::net::SocketAddr, group_by: &str) -> Result<Self> {
        use anyhow::Context as _;
        let bin = std::path::PathBuf::from(fiberstack_e2e::env_value("FIBERSTACK_BIN")?)
            .join("alertmanager");
        let dir = std::env::temp_dir().join(fiberstack_e2e::unique_name("alertmanager"));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "route:\n  receiver: test\n  group_by: [{group_by}]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: http://{receiver}/am\n        send_resolved: true\n"
        );
        std::fs::write(dir.join("alertmanager.yml"), config)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/ready");
        fiberstack_e2e::wait_for("Alertmanager ready", WAIT, EVERY, || async {
            Ok(match reqwest::get(&ready).await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{}", r.status())),
                Err(e) => Err(e.to_string()),
            })
        })
        .await?;
        Ok(Self {
            _child: child,
            url,
            dir,
        })
    }
}
