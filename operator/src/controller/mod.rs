//! The two controllers and what they share. Each reconcile is one pipeline:
//! dereference → validate → build → apply (server-side apply, one field manager) → status.

pub mod cache;
pub mod effects;
pub mod probe;
pub mod region;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::crd::{FiberNotifier, FiberProbe, FiberRegion, SecretKeyRef};
use crate::databases::Databases;
use crate::error::Error;
use crate::health::Hysteresis;
use crate::metrics::Metrics;
use crate::notify::Notifications;
use fiberstack_plumbing::backoff::Backoff;

/// A firing alert is re-sent to an Alertmanager this often (Prometheus's default), with an
/// end 4 times that far ahead.
const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
use crate::render::{FIELD_MANAGER, Images, MANAGED_BY};

/// The operator's settings, from its flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub images: Images,
    /// Watch only this namespace; all namespaces when None.
    pub namespace: Option<String>,
    /// Status is recomputed at least this often.
    pub status_every: Duration,
    pub hysteresis: Hysteresis,
    /// Schema of FiberStack's tables in every database read (`--db-schema`).
    pub db_schema: Option<String>,
    /// Reconciles running at once per controller. Unbounded, 2,000 probes' reconciles all
    /// wait on one API server together and each takes tens of seconds.
    pub concurrency: u16,
    /// `--alert-link`: the link notifications carry, a URL template with {namespace},
    /// {probe}, {region} and {target}.
    pub alert_link: Option<String>,
    /// How often what is remembered of deleted objects is dropped (cache memories, health
    /// series).
    pub prune_every: Duration,
}

/// What a reconcile needs besides the object.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    /// Read-only databases for fleet health.
    pub databases: Databases,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub notifications: Notifications,
    /// What reconciles read instead of the API server.
    pub caches: cache::Caches,
    /// The database's figures for probes' statuses, one batch per region and period.
    pub region_figures: probe::figures::RegionFigures,
}

impl Context {
    pub(crate) fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The read-only pool of the database `region` names: its reader Secret when set, the
    /// operator's own `--database-url` otherwise. An error text saying what is missing.
    async fn region_database(&self, region: &FiberRegion) -> Result<PgPool, String> {
        let Some(reference) = &region.spec.database.reader_url_secret_ref else {
            return self.databases.pool(None).await;
        };
        let ns = region.namespace().unwrap_or_default();
        let url = self
            .secret_value(&ns, reference)
            .await
            .map_err(|e| format!("{e} (spec.database.readerUrlSecretRef)"))?;
        self.databases.pool(Some(&url)).await
    }

    /// The text under a key of a Secret in `ns`, trimmed; an error naming the Secret and key,
    /// never the value (a URL there may carry a password).
    /// A value read within the status period is taken again without a read: every probe of
    /// a region names the same reader Secret.
    pub(crate) async fn secret_value(&self, ns: &str, r: &SecretKeyRef) -> Result<String, String> {
        let remembered = format!("{ns}/{}/{}", r.name, r.key);
        let ttl = self.settings.status_every.min(Duration::from_secs(15));
        if let Some(value) = self.caches.secret(&remembered, ttl) {
            return Ok(value);
        }
        let secret = self
            .api::<Secret>(ns)
            .get_opt(&r.name)
            .await
            .map_err(|e| format!("reading Secret {:?}: {e}", r.name))?
            .ok_or_else(|| format!("Secret {:?} does not exist", r.name))?;
        secret
            .data
            .and_then(|mut d| d.remove(&r.key))
            .and_then(|v| String::from_utf8(v.0).ok())
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| format!("Secret {:?} has no key {:?}", r.name, r.key))
            .inspect(|value| self.caches.remember_secret(remembered, value.clone()))
    }
}

/// The front both reconciles share: an unreadable object is reported in its own status; a
/// readable one is reconciled as the API server has it now — the watch cache can trail this
/// operator's own last status write (a requeue may fire before the watch delivers it), and
/// conditions merged onto that stale status would move lastTransitionTime a second time.
/// Counts the reconcile and its duration under `controller`.
async fn reconcile_fresh<K, F, Fut>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    controller: &'static str,
    inner: F,
) -> Result<Action, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    F: FnOnce(K, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let cached = match &guard.0 {
        Ok(cached) => cached,
        Err(invalid) => return report_unreadable::<K>(&ctx, invalid).await,
    };
    let started = std::time::Instant::now();
    let ns = cached
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = cached.name_any();
    // The cached object is the fresh one when it carries the version this operator last
    // saw fresh (its own last write, or its last read): then no read is needed.
    let fresh = if ctx.caches.is_fresh(cached) {
        Ok(Some(cached.clone()))
    } else {
        ctx.metrics.api_reads(K::kind(&()));
        ctx.api::<K>(&ns).get_opt(&name).await
    };
    let result = match fresh {
        Ok(Some(fresh)) => {
            ctx.caches.saw_fresh(&fresh);
            inner(fresh, ctx.clone()).await
        }
        Ok(None) => {
            // Deleted: its health series go with it.
            if K::kind(&()) == "FiberProbe" {
                ctx.metrics.measurements.forget(&ns, &name);
            }
            ctx.caches.forget::<K>(&ns, &name);
            Ok(Action::await_change())
        }
        Err(e) => Err(e.into()),
    };
    ctx.metrics.reconciled(controller, started.elapsed());
    tracing::debug!(controller, name = %name, namespace = %ns, took_ms = started.elapsed().as_millis() as u64, "reconciled");
    result
}

fn all_or_namespaced<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Server-side apply of an owned object under the operator's field manager; forced, since
/// the operator owns these objects' fields. Skipped when the same render was applied last
/// time and the object (as `store` has it) has not changed since: the cached object is
/// returned then.
async fn apply<K>(ctx: &Context, store: &Store<K>, api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let kind = K::kind(&());
    if let Some(live) = ctx.caches.unchanged(store, object).await {
        ctx.metrics.applied(&kind, false);
        return Ok((*live).clone());
    }
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
    ctx.metrics.applied(&kind, true);
    ctx.caches.applied(object, &applied);
    Ok(applied)
}

/// Server-side apply of a custom resource's status; the object as written is remembered as
/// fresh, so the next reconcile can take it from the cache once the watch delivers it.
async fn apply_status<K>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    status: serde_json::Value,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.caches.saw_fresh(&written);
    Ok(())
}

/// An object the operator cannot read (stored under an older, laxer schema, say) is
/// reported in its own status and left alone; the watch, and every other object, go on.
async fn report_unreadable<K>(ctx: &Context, invalid: &InvalidObject) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = invalid
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let ns = invalid
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    tracing::warn!(name = %name, namespace = %ns, kind = %K::kind(&()), error = %invalid.error, "object cannot be read; skipping it");
    let status = unreadable_status(invalid, chrono::Utc::now());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    ctx.api::<K>(&ns)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(Action::await_change())
}

/// The status of an unreadable object: Ready=False, reason InvalidObject, and the
/// deserialization error, which names the field.
pub fn unreadable_status(
    invalid: &InvalidObject,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let message = format!("the operator cannot read this object: {}", invalid.error);
    use crate::conditions::{ConditionType, Reason, Status, condition, merge};
    let ready = merge(
        &[],
        vec![condition(
            ConditionType::Ready,
            Status::False,
            Reason::InvalidObject,
            message,
        )],
        invalid.metadata.generation,
        now,
    );
    serde_json::json!({
        "observedGeneration": invalid.metadata.generation,
        "conditions": ready,
        "health": crate::crd::Health::InvalidSpec,
    })
}

fn error_policy<K: Resource>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |object, error, ctx| {
        ctx.metrics.failed(controller, error.kind());
        tracing::warn!(
            controller,
            name = %object.meta().name.as_deref().unwrap_or_default(),
            namespace = %object.meta().namespace.as_deref().unwrap_or_default(),
            kind = error.kind(),
            %error,
            "reconcile failed; retrying"
        );
        Action::requeue(Duration::from_secs(5))
    }
}

fn managed(app: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={},app.kubernetes.io/name={app}",
        MANAGED_BY.0, MANAGED_BY.1
    ))
}

/// Runs both controllers until `shutdown` completes.
pub async fn run(
    client: Client,
    settings: Settings,
    db: Option<PgPool>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: std::env::var("HOSTNAME").ok(),
    };
    let ns = settings.namespace.clone();
    let concurrency = settings.concurrency;
    let db_schema = settings.db_schema.clone();
    let notifications = Notifications::new(
        settings.alert_link.clone(),
        ALERTMANAGER_RESEND,
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
    );
    // The watches: each kind a reconcile reads is cached once. Regions, DaemonSets and
    // Deployments also trigger reconciles (their streams go to the controllers, which poll
    // them); ConfigMaps, pods and FiberNotifiers are only read (their streams run alone).
    let (probe_store, probe_writer) = reflector::store();
    let probe_stream = watcher(
        all_or_namespaced::<DeserializeGuard<FiberProbe>>(&client, ns.as_deref()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|p| p.managed_fields_mut().clear())
    .reflect(probe_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let (regions, region_stream) = cache::reflect(
        all_or_namespaced::<DeserializeGuard<FiberRegion>>(&client, ns.as_deref()),
        watcher::Config::default(),
    );
    let (daemonsets, daemonset_stream) = cache::reflect_trimmed(
        all_or_namespaced::<DaemonSet>(&client, ns.as_deref()),
        managed("fiber-probe"),
        cache::trim_daemonset,
    );
    let region_owned =
        || watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let (deployments, deployment_stream) = cache::reflect(
        all_or_namespaced::<Deployment>(&client, ns.as_deref()),
        region_owned(),
    );
    let (configmaps, configmap_stream) = cache::reflect_trimmed(
        all_or_namespaced::<ConfigMap>(&client, ns.as_deref()),
        managed("fiber-probe"),
        cache::trim_configmap,
    );
    cache::spawn(configmap_stream);
    let (services, service_stream) = cache::reflect(
        all_or_namespaced::<Service>(&client, ns.as_deref()),
        region_owned(),
    );
    cache::spawn(service_stream);
    let (pdbs, pdb_stream) = cache::reflect(
        all_or_namespaced::<PodDisruptionBudget>(&client, ns.as_deref()),
        region_owned(),
    );
    cache::spawn(pdb_stream);
    let (pods, pod_stream) = cache::reflect_trimmed(
        all_or_namespaced::<Pod>(&client, ns.as_deref()),
        managed("fiber-probe"),
        cache::trim_pod,
    );
    cache::spawn(pod_stream);
    let (notifiers, notifier_stream) = cache::reflect(
        all_or_namespaced::<FiberNotifier>(&client, ns.as_deref()),
        watcher::Config::default(),
    );
    cache::spawn(notifier_stream);

    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        databases: Databases::new(db, db_schema),
        metrics,
        recorder: Recorder::new(client.clone(), reporter),
        notifications,
        caches: cache::Caches::new(
            probe_store.clone(),
            regions,
            daemonsets,
            configmaps,
            deployments,
            services,
            pdbs,
            pods,
            notifiers,
        ),
        region_figures: Default::default(),
    });
    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stop = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    // Probes: reconciled on spec changes (generation), on their DaemonSet's changes, on a
    // change of their region, and every `status_every`. Their own status writes do not
    // trigger a reconcile: in the benchmark those made most of the work.
    let store = probe_store.clone();
    let probe_controller = Controller::for_stream(probe_stream, probe_store)
        .owns_stream(daemonset_stream)
        .watches_stream(region_stream, move |region| {
            let namespace = region.namespace();
            let name = region.name_any();
            store
                .state()
                .into_iter()
                .filter(|p| {
                    p.namespace() == namespace && p.0.as_ref().is_ok_and(|p| p.spec.region == name)
                })
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop(&shutdown_tx))
        .run(probe::reconcile, error_policy("probe"), ctx.clone())
        .for_each(|_| async {});

    let region_controller = Controller::new(
        all_or_namespaced::<DeserializeGuard<FiberRegion>>(&client, ns.as_deref()),
        watcher::Config::default().any_semantic(),
    )
    .owns_stream(deployment_stream)
    .with_config(controller::Config::default().concurrency(concurrency))
    .graceful_shutdown_on(stop(&shutdown_tx))
    .run(region::reconcile, error_policy("region"), ctx.clone())
    .for_each(|_| async {});

    // What is remembered of deleted objects goes: the controllers see a deletion only as
    // an object missing from their cache, and nothing else would drop it.
    let (pruned, mut pruner_stop) = (ctx.clone(), shutdown_tx.subscribe());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(pruned.settings.prune_every);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = pruner_stop.recv() => return,
            }
            let dropped = pruned.caches.prune();
            let probes = &pruned.caches.probes;
            if cache::synced(probes).await {
                pruned.metrics.measurements.retain(|ns, name| {
                    probes
                        .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                        .is_some()
                });
            }
            pruned
                .metrics
                .remembered
                .set(i64::try_from(pruned.caches.remembered()).unwrap_or(i64::MAX));
            tracing::debug!(dropped, "pruned the memory of deleted objects");
        }
    });

    let tx = shutdown_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    futures::join!(probe_controller, region_controller);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_probe_is_kept_apart_and_its_status_says_why() {
        // 2^32 echoes: a schema without the upper bound would have let this through.
        let guard: DeserializeGuard<FiberProbe> = serde_json::from_value(serde_json::json!({
            "apiVersion": "fiberstack.io/v1alpha1",
            "kind": "FiberProbe",
            "metadata": { "name": "old", "namespace": "ns", "generation": 4 },
            "spec": {
                "region": "ghana",
                "targets": [{ "name": "x", "icmp": { "host": "8.8.8.8", "count": 4294967296u64 } }]
            }
        }))
        .unwrap();
        let invalid = guard.0.unwrap_err();
        assert_eq!(invalid.metadata.name.as_deref(), Some("old"));
        let status = unreadable_status(&invalid, chrono::Utc::now());
        assert_eq!(status["conditions"][0]["reason"], "InvalidObject");
        assert_eq!(status["observedGeneration"], 4);
        let message = status["conditions"][0]["message"].as_str().unwrap();
        assert!(message.contains("4294967296"), "{message}");
    }
}
