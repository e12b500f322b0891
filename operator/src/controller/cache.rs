//! What the reconciles read instead of the API server: one reflector per kind they look at
//! (regions, probes, the probes' DaemonSets, ConfigMaps and pods, the regions' Deployments,
//! FiberNotifiers), and two memories that let a reconcile trust those caches:
//!
//! * the resourceVersion of each custom resource as this operator last saw it fresh (read
//!   from the API server, or returned by its own write): when the cached object carries that
//!   version it *is* the fresh object, and no GET is needed;
//! * what this operator last applied to each owned object (a hash of the rendered object)
//!   and the object's version after that apply: when the render is unchanged and the cached
//!   object still carries that version, nobody changed it since, and the apply is skipped.
//!
//! In steady state a reconcile therefore makes no request at all to the API server. A cache
//! that is not yet synced (the first seconds after a start) is waited for briefly, then
//! bypassed: the reconcile reads from the API server as before.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{FiberNotifier, FiberProbe, FiberRegion};

/// How long a reconcile waits for a cache's first sync before reading the API server.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// The caches the reconciles read. Every store is filled by a watch the operator runs
/// anyway (the controllers' own triggers) or by one reflector of its own.
#[derive(Clone)]
pub struct Caches {
    pub probes: Store<DeserializeGuard<FiberProbe>>,
    pub regions: Store<DeserializeGuard<FiberRegion>>,
    pub daemonsets: Store<DaemonSet>,
    pub configmaps: Store<ConfigMap>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub pods: Store<Pod>,
    pub notifiers: Store<FiberNotifier>,
    memory: Arc<Memory>,
}

#[derive(Default)]
struct Memory {
    /// Custom resource (kind/ns/name) → resourceVersion last seen fresh.
    fresh: Mutex<HashMap<String, String>>,
    /// Owned object (kind/ns/name) → (hash of what was applied, its version after the apply).
    applied: Mutex<HashMap<String, (u64, String)>>,
    /// Secret values (ns/name/key) read recently, with when.
    secrets: Mutex<HashMap<String, (String, Instant)>>,
}

fn key<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", K::kind(&()))
}

/// The version an owned object carries that changes when anyone changes what the operator
/// applied: its generation when it has one (a DaemonSet's status updates do not move it),
/// its resourceVersion otherwise (a ConfigMap has no status).
fn version<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    match meta.generation {
        Some(g) => format!("g{g}"),
        None => format!("r{}", meta.resource_version.as_deref().unwrap_or_default()),
    }
}

fn render_hash<K: Serialize>(object: &K) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(object)
        .expect("a rendered object serializes")
        .hash(&mut hasher);
    hasher.finish()
}

impl Caches {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        probes: Store<DeserializeGuard<FiberProbe>>,
        regions: Store<DeserializeGuard<FiberRegion>>,
        daemonsets: Store<DaemonSet>,
        configmaps: Store<ConfigMap>,
        deployments: Store<Deployment>,
        services: Store<Service>,
        pdbs: Store<PodDisruptionBudget>,
        pods: Store<Pod>,
        notifiers: Store<FiberNotifier>,
    ) -> Self {
        Self {
            probes,
            regions,
            daemonsets,
            configmaps,
            deployments,
            services,
            pdbs,
            pods,
            notifiers,
            memory: Arc::default(),
        }
    }

    /// Remembers `object`'s resourceVersion as fresh (just read, or returned by a write).
    pub fn saw_fresh<K: Resource<DynamicType = ()>>(&self, object: &K) {
        let (Some(ns), Some(rv)) = (object.namespace(), object.resource_version()) else {
            return;
        };
        let k = key::<K>(&ns, &object.name_any());
        self.memory.fresh.lock().expect("poisoned").insert(k, rv);
    }

    /// Whether `cached` is the object as this operator last saw it fresh.
    pub fn is_fresh<K: Resource<DynamicType = ()>>(&self, cached: &K) -> bool {
        let (Some(ns), Some(rv)) = (cached.namespace(), cached.resource_version()) else {
            return false;
        };
        let k = key::<K>(&ns, &cached.name_any());
        self.memory.fresh.lock().expect("poisoned").get(&k) == Some(&rv)
    }

    /// Forgets a deleted custom resource.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, ns: &str, name: &str) {
        self.memory
            .fresh
            .lock()
            .expect("poisoned")
            .remove(&key::<K>(ns, name));
    }

    /// The live object when applying `rendered` again would change nothing: the same render
    /// as the last apply, and the object (in `store`) untouched since.
    pub async fn unchanged<K>(&self, store: &Store<K>, rendered: &K) -> Option<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize,
    {
        let ns = rendered.namespace()?;
        let name = rendered.name_any();
        let remembered = self
            .memory
            .applied
            .lock()
            .expect("poisoned")
            .get(&key::<K>(&ns, &name))
            .cloned()?;
        if !synced(store).await {
            return None;
        }
        let live = store.get(&ObjectRef::new(&name).within(&ns))?;
        (remembered == (render_hash(rendered), version(&*live))).then_some(live)
    }

    /// Remembers that `rendered` was applied and the API server answered `applied`.
    pub fn applied<K>(&self, rendered: &K, applied: &K)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let Some(ns) = rendered.namespace() else {
            return;
        };
        self.memory.applied.lock().expect("poisoned").insert(
            key::<K>(&ns, &rendered.name_any()),
            (render_hash(rendered), version(applied)),
        );
    }

    /// A Secret value read within `ttl`, if any.
    pub fn secret(&self, k: &str, ttl: Duration) -> Option<String> {
        let secrets = self.memory.secrets.lock().expect("poisoned");
        secrets
            .get(k)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(v, _)| v.clone())
    }

    /// Drops what is remembered of objects that no longer exist (a deleted probe's or
    /// region's own entry and its ConfigMap's, DaemonSet's, … applied render), judged by the
    /// synced caches: without it every object ever applied stays in memory. An entry dropped
    /// for an object the cache has not seen yet costs one apply or read later, nothing more.
    /// Returns how many entries were dropped.
    pub fn prune(&self) -> usize {
        fn exists<K>(store: &Store<K>, ns: &str, name: &str) -> bool
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            store.get(&ObjectRef::new(name).within(ns)).is_some()
        }
        // Kinds whose store has not synced yet keep their entries.
        let live = |k: &str| -> bool {
            let mut parts = k.splitn(3, '/');
            let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            let (found, ready) = match kind {
                "FiberProbe" => (exists(&self.probes, ns, name), ready(&self.probes)),
                "FiberRegion" => (exists(&self.regions, ns, name), ready(&self.regions)),
                "DaemonSet" => (exists(&self.daemonsets, ns, name), ready(&self.daemonsets)),
                "ConfigMap" => (exists(&self.configmaps, ns, name), ready(&self.configmaps)),
                "Deployment" => (
                    exists(&self.deployments, ns, name),
                    ready(&self.deployments),
                ),
                "Service" => (exists(&self.services, ns, name), ready(&self.services)),
                "PodDisruptionBudget" => (exists(&self.pdbs, ns, name), ready(&self.pdbs)),
                // A kind without a cache here: keep it.
                _ => (true, true),
            };
            found || !ready
        };
        let mut fresh = self.memory.fresh.lock().expect("poisoned");
        let mut applied = self.memory.applied.lock().expect("poisoned");
        let before = fresh.len() + applied.len();
        fresh.retain(|k, _| live(k));
        applied.retain(|k, _| live(k));
        before - fresh.len() - applied.len()
    }

    /// Entries remembered (fresh versions and applied renders), for tests and metrics.
    pub fn remembered(&self) -> usize {
        self.memory.fresh.lock().expect("poisoned").len()
            + self.memory.applied.lock().expect("poisoned").len()
    }

    pub fn remember_secret(&self, k: String, value: String) {
        let mut secrets = self.memory.secrets.lock().expect("poisoned");
        // Secrets read once and never again (a renamed reference) are dropped on the way.
        secrets.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(600));
        secrets.insert(k, (value, Instant::now()));
    }
}

/// Whether `store` has synced, waiting up to [`SYNC_WAIT`] for it.
pub async fn synced<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    matches!(
        tokio::time::timeout(SYNC_WAIT, store.wait_until_ready()).await,
        Ok(Ok(()))
    )
}

/// Whether `store` has synced already (no waiting).
fn ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    use futures::FutureExt;
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// The cached object named `name` in `ns`, once `store` has synced; None when it does not
/// exist, and Err(()) when the cache cannot be trusted yet (read the API server instead).
pub async fn lookup<K>(store: &Store<K>, ns: &str, name: &str) -> Result<Option<Arc<K>>, ()>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    if !synced(store).await {
        return Err(());
    }
    Ok(store.get(&ObjectRef::new(name).within(ns)))
}

/// A watch of `api` with `config`, reflected into a new store; the stream drives the store
/// and must be polled (by a controller, or by [`spawn`]). Managed fields are dropped: no
/// reconcile reads them, and they are most of an object's size.
pub fn reflect<K>(
    api: kube::Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    reflect_trimmed(api, config, |_| {})
}

/// [`reflect`], keeping of each object only what `trim` leaves: for the kinds of which
/// there is one object per probe (2,000 probes: 2,000 pods, DaemonSets and ConfigMaps), what
/// the reconciles read, and nothing else.
pub fn reflect_trimmed<K>(
    api: kube::Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |o| {
            o.managed_fields_mut().clear();
            trim(o);
        })
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// What a probe pod's reconcile reads: its namespace, labels, deletion and node
/// (`probe::gather`); its containers, volumes and status are dropped.
pub fn trim_pod(pod: &mut Pod) {
    pod.metadata.annotations = None;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        node_name,
        ..Default::default()
    });
    pod.status = None;
}

/// What is read of a probe's DaemonSet: its version (to skip an unchanged apply) and its
/// status (pods desired and ready); the pod template, the bulk of it, is dropped.
pub fn trim_daemonset(daemonset: &mut DaemonSet) {
    daemonset.metadata.annotations = None;
    if let Some(spec) = daemonset.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// What is read of a probe's ConfigMap: its version (to skip an unchanged apply); the
/// probe's configuration in it is dropped.
pub fn trim_configmap(configmap: &mut ConfigMap) {
    configmap.metadata.annotations = None;
    configmap.data = None;
    configmap.binary_data = None;
}

/// Drives a reflector stream in the background (a cache nothing triggers on).
pub fn spawn<S, T>(stream: S)
where
    S: Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::warn!(error = %e, "cache watch failed; retrying");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trimmed_pod_keeps_what_the_probe_reconcile_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "probe-abc", "namespace": "ns",
                "labels": { "app.kubernetes.io/instance": "probe" },
                "annotations": { "big": "x".repeat(4096) },
                "deletionTimestamp": "2026-11-30T00:00:00Z",
                "managedFields": [{ "manager": "kubelet" }]
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [{ "name": "probe", "image": "fiber-probe", "args": ["--config", "/etc/probe.yaml"] }],
                "volumes": [{ "name": "config", "configMap": { "name": "probe" } }]
            },
            "status": { "phase": "Running", "podIP": "10.0.0.1" }
        }))
        .unwrap();
        pod.managed_fields_mut().clear();
        trim_pod(&mut pod);
        assert_eq!(pod.namespace().as_deref(), Some("ns"));
        assert_eq!(
            pod.labels()
                .get("app.kubernetes.io/instance")
                .map(String::as_str),
            Some("probe")
        );
        assert!(pod.metadata.deletion_timestamp.is_some());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert!(spec.containers.is_empty() && spec.volumes.is_none());
        assert!(pod.status.is_none() && pod.metadata.annotations.is_none());
        assert!(serde_json::to_vec(&pod).unwrap().len() < 400);
    }

    #[test]
    fn a_trimmed_daemonset_keeps_its_version_and_status() {
        let mut ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "probe", "namespace": "ns", "generation": 3, "resourceVersion": "42" },
            "spec": {
                "selector": { "matchLabels": { "app": "probe" } },
                "template": { "spec": { "containers": [{ "name": "probe", "image": "fiber-probe" }] } }
            },
            "status": { "desiredNumberScheduled": 2, "numberReady": 1, "currentNumberScheduled": 2,
                        "numberMisscheduled": 0 }
        }))
        .unwrap();
        trim_daemonset(&mut ds);
        assert_eq!(version(&ds), "g3");
        let status = ds.status.as_ref().unwrap();
        assert_eq!(
            (status.desired_number_scheduled, status.number_ready),
            (2, 1)
        );
        assert!(ds.spec.unwrap().template.spec.is_none());
    }
}
