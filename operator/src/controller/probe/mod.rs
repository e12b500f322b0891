//! FiberProbe: dereference the region → validate → build ConfigMap and DaemonSet → apply →
//! status in three steps: gather (the database's figures, the pods' nodes), decide (pure:
//! previous status + observations → new status and transitions), effects (status write, then
//! Events).

pub mod alerts;
pub mod decide;
pub mod figures;
mod gather;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{Context, apply, cache, effects};
use crate::conditions::Reason;
use crate::crd::{FiberProbe, FiberProbeStatus, FiberRegion};
use crate::error::Error;
use crate::notify;
use crate::render::{names, probe as render};
use crate::validate::validate_probe;
use decide::Placement;

const CONTROLLER: &str = "probe";

pub async fn reconcile(
    guard: Arc<DeserializeGuard<FiberProbe>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    super::reconcile_fresh(guard, ctx, CONTROLLER, |probe, ctx| async move {
        reconcile_inner(&probe, &ctx).await
    })
    .await
}

/// While a probe has alerts in status it carries this finalizer, so that deleting it first
/// resolves them — sent to the notifiers that heard their start, written to the history —
/// and only then lets it go.
pub const ALERTS_FINALIZER: &str = "fiberstack.io/alerts";

/// How long a deleted probe waits for its alerts' ends to be delivered before it goes anyway
/// (a receiver that stays down must not keep it forever).
const DELETION_GRACE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

async fn reconcile_inner(probe: &FiberProbe, ctx: &Context) -> Result<Action, Error> {
    let ns = probe
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    if probe.metadata.deletion_timestamp.is_some() {
        return end_alerts_then_let_go(probe, ctx, &ns).await;
    }
    let (region, placement) = place(probe, ctx, &ns).await?;
    if let Placement::Blocked { reason, message } = &placement {
        tracing::info!(name = %probe.name_any(), namespace = %ns, %reason, %message, "probe not placed");
    }
    let observed = gather::gather(probe, region.as_ref(), ctx, placement).await?;
    let now = Utc::now();
    let decide::Decision {
        mut status,
        transitions,
    } = decide::decide(probe, &observed, ctx.settings.hysteresis, now);
    let api = ctx.api::<FiberProbe>(&ns);
    effects::write_status_then_announce(ctx, &api, probe, &status, &transitions).await?;
    // The alerts' starts and ends are stored: now send them, then store who acknowledged.
    let delivered = notify::deliver(ctx, probe, region.as_ref(), &mut status, now).await;
    if delivered.changed {
        effects::write_status_then_announce(ctx, &api, probe, &status, &[]).await?;
    }
    keep_finalizer(&api, probe, !status.alerts.is_empty()).await?;
    ctx.metrics.measurements.record(probe, &status);
    let every = ctx.settings.status_every;
    Ok(Action::requeue(
        delivered
            .retry_in
            .map_or(every, |r| r.clamp(Duration::from_secs(1), every)),
    ))
}

/// A deleted probe: its firing alerts end ("the FiberProbe was deleted"), the ends are sent
/// and recorded, and the finalizer goes once nothing is owed — or while muted, or after
/// [`DELETION_GRACE`].
async fn end_alerts_then_let_go(
    probe: &FiberProbe,
    ctx: &Context,
    ns: &str,
) -> Result<Action, Error> {
    let api = ctx.api::<FiberProbe>(ns);
    let now = Utc::now();
    let previous = probe.status.clone().unwrap_or_default();
    let (alerts, transitions) =
        alerts::resolve_all(&previous.alerts, now, "the FiberProbe was deleted");
    let mut status = FiberProbeStatus { alerts, ..previous };
    effects::write_status_then_announce(ctx, &api, probe, &status, &transitions).await?;
    let region = region_of(probe, ctx, ns).await?;
    let delivered = notify::deliver(ctx, probe, region.as_ref(), &mut status, now).await;
    if delivered.changed {
        effects::write_status_then_announce(ctx, &api, probe, &status, &[]).await?;
    }
    let owed = status.alerts.iter().any(alerts::owed);
    let waited = probe
        .metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|t| now.timestamp() - t.0.as_second() > DELETION_GRACE.num_seconds());
    if owed && !waited && !probe.spec.alerting.muted_at(now) {
        return Ok(Action::requeue(
            delivered
                .retry_in
                .unwrap_or(Duration::from_secs(5))
                .clamp(Duration::from_secs(1), ctx.settings.status_every),
        ));
    }
    if owed {
        tracing::warn!(name = %probe.name_any(), namespace = %ns, "deleted with alert ends still undelivered (muted, or receivers down for 10 minutes)");
    }
    keep_finalizer(&api, probe, false).await?;
    Ok(Action::await_change())
}

/// Adds or removes [`ALERTS_FINALIZER`]: a merge patch guarded by the resourceVersion, so
/// a finalizer someone else added meanwhile is not lost; on a conflict (our own status write
/// moved the version on) the object is read again and the patch retried.
async fn keep_finalizer(
    api: &Api<FiberProbe>,
    probe: &FiberProbe,
    want: bool,
) -> Result<(), Error> {
    let mut probe = probe.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = probe.finalizers();
        let has = current.iter().any(|f| f == ALERTS_FINALIZER);
        if has == want {
            return Ok(());
        }
        let finalizers: Vec<&str> = current
            .iter()
            .map(String::as_str)
            .filter(|f| *f != ALERTS_FINALIZER)
            .chain(want.then_some(ALERTS_FINALIZER))
            .collect();
        let patch = serde_json::json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": probe.resource_version(),
            }
        });
        match api
            .patch(
                &probe.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 3 => {
                match api.get_opt(&probe.name_any()).await? {
                    Some(fresh) => probe = fresh,
                    None => return Ok(()),
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Dereference → validate → build → apply; the region (when found) and where that got to.
async fn place(
    probe: &FiberProbe,
    ctx: &Context,
    ns: &str,
) -> Result<(Option<FiberRegion>, Placement), Error> {
    let name = probe.name_any();

    // Dereference.
    let Some(region) = region_of(probe, ctx, ns).await? else {
        return Ok((
            None,
            Placement::Blocked {
                reason: Reason::RegionNotFound,
                message: format!(
                    "FiberRegion {:?} does not exist in namespace {ns}; create it or fix spec.region",
                    probe.spec.region
                ),
            },
        ));
    };

    // Validate.
    if let Err(e) = validate_probe(probe, &region) {
        let blocked = Placement::Blocked {
            reason: Reason::InvalidSpec,
            message: e.to_string(),
        };
        return Ok((Some(region), blocked));
    }

    // Build and apply.
    let images = &ctx.settings.images;
    let caches = &ctx.caches;
    let fallbacks = fallback_regions(ctx, ns).await?;
    let configmap = render::build_configmap(probe, &region, &fallbacks, images);
    apply(
        ctx,
        &caches.configmaps,
        &ctx.api::<ConfigMap>(ns),
        &configmap,
    )
    .await?;
    let daemonsets: Api<DaemonSet> = ctx.api(ns);
    if probe.spec.paused {
        // Deleted already (the cache knows): nothing to do.
        if let Ok(None) = cache::lookup(&caches.daemonsets, ns, &names::probe(&name)).await {
            return Ok((Some(region), Placement::Paused));
        }
        match daemonsets
            .delete(&names::probe(&name), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok((Some(region), Placement::Paused));
    }
    let built = render::build_daemonset(probe, &region, images)
        .ok_or(Error::MissingField("node selector (validated)"))?;
    let daemonset = apply(ctx, &caches.daemonsets, &daemonsets, &built).await?;
    let (desired, ready) = daemonset
        .status
        .as_ref()
        .map_or((0, 0), |s| (s.desired_number_scheduled, s.number_ready));
    Ok((Some(region), Placement::Placed { desired, ready }))
}

/// The FiberRegions of `ns` whose ingest a probe may fall back to (only asked
/// for when probe pods carry their own identity, which other regions' ingest verifies), from
/// the cache (the API server while the cache has not synced). A region being deleted is left
/// out. A region added later reaches the probes of other regions at their next periodic
/// reconcile (a region's changes reconcile that region's probes only).
async fn fallback_regions(ctx: &Context, ns: &str) -> Result<Vec<FiberRegion>, Error> {
    if ctx.settings.images.ingest_service_account.is_none() {
        return Ok(Vec::new());
    }
    let live = |r: &FiberRegion| r.metadata.deletion_timestamp.is_none();
    if cache::synced(&ctx.caches.regions).await {
        return Ok(ctx
            .caches
            .regions
            .state()
            .iter()
            .filter(|g| g.namespace().as_deref() == Some(ns))
            .filter_map(|g| g.0.as_ref().ok().filter(|r| live(r)).cloned())
            .collect());
    }
    ctx.metrics.api_reads("FiberRegion");
    let listed = ctx
        .api::<FiberRegion>(ns)
        .list(&kube::api::ListParams::default())
        .await?;
    Ok(listed.items.into_iter().filter(|r| live(r)).collect())
}

/// The probe's region, from the cache (the API server while the cache has not synced). A
/// region the operator cannot read counts as missing.
async fn region_of(
    probe: &FiberProbe,
    ctx: &Context,
    ns: &str,
) -> Result<Option<FiberRegion>, Error> {
    let name = &probe.spec.region;
    match cache::lookup(&ctx.caches.regions, ns, name).await {
        Ok(cached) => Ok(cached.and_then(|guard| guard.0.as_ref().ok().cloned())),
        Err(()) => {
            ctx.metrics.api_reads("FiberRegion");
            Ok(ctx.api::<FiberRegion>(ns).get_opt(name).await?)
        }
    }
}
