//! Shared pieces of FiberStack's end-to-end tests: where the local environment's parts
//! listen (`make env-up` writes it to `e2e/.env/env.sh`), clients for them, test
//! namespaces, ports held for the length of a test, and waiting for a condition.

pub mod bench;
pub mod etl;
pub mod images;
mod ports;
pub mod promtool;
pub mod tls;

pub use ports::ReservedPort;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// Addresses of the local environment's parts.
#[derive(Debug, Clone)]
pub struct LocalEnv {
    pub kubeconfig: PathBuf,
    pub redis_url: String,
    pub database_url: String,
    pub timescale_url: String,
}

const VARS: [&str; 4] = ["KUBECONFIG", "REDIS_URL", "DATABASE_URL", "TIMESCALE_URL"];

/// The `e2e/.env/env.sh` that `make env-up` writes.
pub fn env_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".env/env.sh")
}

/// The environment's certificate authority: it signed the kube-apiserver's and PostgreSQL's
/// serving certificates (for clients that verify them: `sslmode=verify-full&sslrootcert=…`).
pub fn ca_certificate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".env/pki/ca.crt")
}

impl LocalEnv {
    /// Takes each address from the process environment, or else from `e2e/.env/env.sh`, so
    /// tests also run from a shell that has not sourced it. Fails, naming what is missing,
    /// when the environment is not up: these tests need the real parts.
    pub fn load() -> Result<Self> {
        let file = env_file();
        let from_file = match std::fs::read_to_string(&file) {
            Ok(text) => parse_env_file(&text),
            Err(_) => HashMap::new(),
        };
        let get = |key: &str| -> Result<String> {
            std::env::var(key)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| from_file.get(key).cloned())
                .with_context(|| {
                    format!(
                        "{key} is not set and {} does not define it: run `make env-up` first",
                        file.display()
                    )
                })
        };
        let [kubeconfig, redis_url, database_url, timescale_url] = VARS.map(get);
        Ok(Self {
            kubeconfig: PathBuf::from(kubeconfig?),
            redis_url: redis_url?,
            database_url: database_url?,
            timescale_url: timescale_url?,
        })
    }

    pub async fn kube(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", self.kubeconfig.display()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?;
        Client::try_from(config).context("building the Kubernetes client")
    }

    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.redis_url.as_str())
            .with_context(|| format!("REDIS_URL {}", self.redis_url))?;
        client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to Redis at {}", self.redis_url))
    }

    /// PostgreSQL 15 (many connections; load and fault tests).
    pub async fn postgres(&self) -> Result<tokio_postgres::Client> {
        connect_postgres(&self.database_url).await
    }

    /// Creates an empty database on PostgreSQL 15 for one test; returns its URL.
    pub async fn fresh_postgres_database(&self, prefix: &str) -> Result<String> {
        let admin = self.postgres().await?;
        let name = unique_name(prefix).replace('-', "_");
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let (base, query) = self
            .database_url
            .split_once('?')
            .unwrap_or((&self.database_url, ""));
        let (server, _) = base
            .rsplit_once('/')
            .context("DATABASE_URL has no database path")?;
        Ok(if query.is_empty() {
            format!("{server}/{name}")
        } else {
            format!("{server}/{name}?{query}")
        })
    }

    /// Drops a database made by [`Self::fresh_postgres_database`] (its URL) and the roles a
    /// test created for it: roles are cluster-wide, so they go with the database.
    pub async fn drop_postgres_database(&self, url: &str, roles: &[&str]) -> Result<()> {
        let admin = self.postgres().await?;
        let base = url.split_once('?').map_or(url, |(base, _)| base);
        let (_, database) = base.rsplit_once('/').context("a URL without a database")?;
        let mut statements = vec![format!("drop database {database} with (force)")];
        statements.extend(roles.iter().map(|role| format!("drop role {role}")));
        for statement in statements {
            admin
                .batch_execute(&statement)
                .await
                .with_context(|| statement.clone())?;
        }
        Ok(())
    }

    /// TimescaleDB (one connection at a time; schema, policy and query tests).
    pub async fn timescale(&self) -> Result<tokio_postgres::Client> {
        connect_postgres(&self.timescale_url).await
    }
}

/// Reads `export KEY="value"` lines.
/// One variable of the local environment (e.g. `FIBERSTACK_REGISTRY`, written by
/// `e2e/scripts/nodes.sh`): from the process environment, or else from `e2e/.env/env.sh`.
/// Fails, naming it, when the environment is not up.
pub fn env_value(key: &str) -> Result<String> {
    if let Some(v) = std::env::var(key).ok().filter(|v| !v.is_empty()) {
        return Ok(v);
    }
    let file = env_file();
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| parse_env_file(&text).remove(key))
        .with_context(|| {
            format!(
                "{key} is not set and {} does not define it: run `make env-up` first",
                file.display()
            )
        })
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

pub async fn connect_postgres(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection closed: {e}");
        }
    });
    Ok(client)
}

/// A binary of another package of this workspace (`fiber-etl`, `fiber-ingest`, …), as
/// `build_binaries` leaves it next to the running test or bench (`target/<profile>/`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let dir = profile_dir()?;
    build_binaries(&dir)?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    Ok(path)
}

/// `target/<profile>/` of the running test or bench (its executable is in `deps/` below it).
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(Path::to_owned)
        .context("test binary outside target/<profile>/deps")
}

/// Builds the workspace's binaries, once per process, for the profile of `dir`, so a test
/// never runs a stale binary of a package `cargo test -p` did not build. The build runs only
/// under cargo (`CARGO` is set for `cargo test` and `cargo bench`); when nothing changed it is
/// a second's fingerprint check. Tests (`target/debug`) get `cargo build --workspace --bins`,
/// which differs from `cargo test --workspace`'s own build only in dev-dependency features
/// (reqwest's); benches (`target/release`) get the images' build (images/build.sh): they
/// measure what ships, and after `make images` nothing is rebuilt.
fn build_binaries(dir: &Path) -> Result<()> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(());
    };
    BUILT
        .get_or_init(|| {
            let target_dir = dir.parent().ok_or("target/<profile> has no parent")?;
            let mut command = std::process::Command::new(cargo);
            command
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                .args(["build", "--locked", "--bins", "--target-dir"])
                .arg(target_dir);
            match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => command.arg("--workspace"),
                Some("release") => {
                    command.arg("--release");
                    images::NAMES
                        .iter()
                        .fold(&mut command, |c, name| c.args(["-p", name]))
                }
                other => return Err(format!("no build for the profile directory {other:?}")),
            };
            eprintln!("building the workspace's binaries: {command:?}");
            let out = command
                .output()
                .map_err(|e| format!("running {command:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{command:?} failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// SIGTERM to `child`, then its exit status, waiting at most `within` without blocking the
/// thread (a test's own servers may share the runtime and must keep answering the child's
/// shutdown). A child still running after that is killed, and that is an error.
pub async fn terminate(
    child: &mut std::process::Child,
    within: Duration,
) -> Result<std::process::ExitStatus> {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(sent.success(), "kill -TERM {} failed", child.id());
    let pid = child.id();
    let exited = wait_for(
        &format!("process {pid} to exit after SIGTERM"),
        within,
        Duration::from_millis(50),
        || {
            let exited = child.try_wait();
            async move { Ok(exited?.ok_or_else(|| "still running".to_owned())) }
        },
    )
    .await;
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// A batch of `node` for the FiberProbe fiberstack/accra-edge of region ghana (GH): the
/// envelope the ingest, ETL and end-to-end tests share.
pub fn batch(node: &str, samples: Vec<fiberstack_model::Sample>) -> fiberstack_model::Batch {
    fiberstack_model::Batch {
        probe: "fiberstack/accra-edge".into(),
        region: "ghana".into(),
        country: "GH".into(),
        node: node.into(),
        agent_version: "0.1.0".into(),
        samples,
    }
}

/// The sum of the values of the series in Prometheus text `text` that start with `prefix`
/// (a metric name and its opening brace) and whose line contains `having` (a label, or "").
pub fn metric_sum(text: &str, prefix: &str, having: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(having))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A name no other test run uses: `prefix-<time><pid>`, within Kubernetes' 63 characters.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!(
        "{:x}{n:x}",
        (nanos as u64) ^ u64::from(std::process::id()) << 40
    );
    let keep = 63 - suffix.len() - 1;
    format!("{}-{suffix}", &prefix[..prefix.len().min(keep)])
}

/// A namespace of one test; `delete` removes it and everything in it.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// The API of namespaced `K` objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("fiberstack.io/test".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace, and clears the operator's finalizers from its FiberProbes: a
    /// test's in-process operator has usually stopped by then, and nothing else would ever
    /// remove them (the namespace would stay Terminating for good).
    pub async fn delete(self) -> Result<()> {
        use kube::api::{
            ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        };
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        let kind = GroupVersionKind::gvk("fiberstack.io", "v1alpha1", "FiberProbe");
        let probes: Api<DynamicObject> =
            Api::namespaced_with(self.client, &self.name, &ApiResource::from_gvk(&kind));
        // No CRDs installed (a test of the API server alone): nothing to clear.
        let Ok(list) = probes.list(&ListParams::default()).await else {
            return Ok(());
        };
        let clear = Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } }));
        for probe in list.items {
            let has = probe
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty());
            if let (true, Some(name)) = (has, probe.metadata.name.as_deref()) {
                // Gone in between: fine.
                let _ = probes.patch(name, &PatchParams::default(), &clear).await;
            }
        }
        Ok(())
    }
}

/// Polls `probe` every `every` until it returns `Ok(Ok(value))`, for at most `timeout`.
/// `Ok(Err(state))` means "not yet"; the last such state is reported on timeout.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(state)) => state,
            Err(e) => format!("error: {e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("{what}: not reached within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A status condition as the tests read it: the object's own type need not be known.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The conditions in an object's `status.conditions`.
pub fn conditions<K: serde::Serialize>(object: &K) -> Vec<Condition> {
    serde_json::to_value(object)
        .ok()
        .and_then(|v| v.pointer("/status/conditions").cloned())
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default()
}

/// Polls object `name` until its condition `type_` exists and passes `accept`, for at most
/// `timeout`; returns the object as it was then. On timeout the error shows the condition
/// as last seen.
pub async fn wait_for_condition<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    timeout: Duration,
    accept: impl Fn(&Condition) -> bool,
) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    wait_for(
        &format!("{name}: condition {type_}"),
        timeout,
        Duration::from_millis(250),
        || async {
            let object = api.get(name).await?;
            let found = conditions(&object).into_iter().find(|c| c.type_ == type_);
            Ok(match found {
                Some(c) if accept(&c) => Ok(object),
                Some(c) => Err(format!("{c:?}")),
                None => Err(format!("no {type_} condition yet")),
            })
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_file() {
        let vars = parse_env_file(
            "# comment\nexport KUBECONFIG=\"/x/kubeconfig\"\nexport REDIS_URL=\"redis://127.0.0.1:16379\"\nexport PATH=\"/b:$PATH\"\n",
        );
        assert_eq!(vars["KUBECONFIG"], "/x/kubeconfig");
        assert_eq!(vars["REDIS_URL"], "redis://127.0.0.1:16379");
        assert!(!vars.contains_key("# comment"));
    }

    #[test]
    fn unique_names_fit_kubernetes() {
        let a = unique_name(&"x".repeat(80));
        assert!(a.len() <= 63, "{a}");
        let b = unique_name("e2e-ds");
        assert!(b.starts_with("e2e-ds-"));
        assert_ne!(unique_name("p"), unique_name("p"));
    }
}
