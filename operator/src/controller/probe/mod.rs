//! FiberProbe: dereference the region → validate → build ConfigMap and DaemonSet → apply →
//! status in three steps: gather (the database's figures, the pods' nodes), decide (pure:
//! previous status + observations → new status and transitions), effects (status write, then
//! Events).

pub mod alerts;
pub mod decide;
mod gather;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DeleteParams;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{Context, apply, effects};
use crate::conditions::Reason;
use crate::crd::{FiberProbe, FiberRegion};
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

async fn reconcile_inner(probe: &FiberProbe, ctx: &Context) -> Result<Action, Error> {
    let ns = probe
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
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
    ctx.metrics.measurements.record(probe, &status);
    let every = ctx.settings.status_every;
    Ok(Action::requeue(
        delivered
            .retry_in
            .map_or(every, |r| r.clamp(Duration::from_secs(1), every)),
    ))
}

/// Dereference → validate → build → apply; the region (when found) and where that got to.
async fn place(
    probe: &FiberProbe,
    ctx: &Context,
    ns: &str,
) -> Result<(Option<FiberRegion>, Placement), Error> {
    let name = probe.name_any();

    // Dereference.
    let regions: Api<FiberRegion> = ctx.api(ns);
    let Some(region) = regions.get_opt(&probe.spec.region).await? else {
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
    let configmap = render::build_configmap(probe, &region);
    apply(&ctx.api::<ConfigMap>(ns), &configmap).await?;
    let daemonsets: Api<DaemonSet> = ctx.api(ns);
    if probe.spec.paused {
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
    let daemonset = apply(&daemonsets, &built).await?;
    let (desired, ready) = daemonset
        .status
        .as_ref()
        .map_or((0, 0), |s| (s.desired_number_scheduled, s.number_ready));
    Ok((Some(region), Placement::Placed { desired, ready }))
}
