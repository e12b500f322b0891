//! The FiberRegion's gather step: its Deployments' replica counts (from the apply), the
//! probes naming it, and its stream's figures as its ETL recorded them. Reads only.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::decide::{Replicas, Workloads};
use crate::controller::{Context, cache};
use crate::crd::{FiberProbe, FiberRegion};
use crate::error::Error;
use crate::status::{self, StreamFigures};

pub fn replicas(d: &Deployment) -> Replicas {
    let status = d.status.as_ref();
    Replicas {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        available: status.and_then(|s| s.available_replicas).unwrap_or(0),
    }
}

pub async fn gather(
    region: &FiberRegion,
    ctx: &Context,
    ingest: &Deployment,
    etl: &Deployment,
) -> Result<Workloads, Error> {
    let ns = region.namespace().unwrap_or_default();
    let name = region.name_any();
    let probes = if cache::synced(&ctx.caches.probes).await {
        ctx.caches
            .probes
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
            .filter(|p| p.0.as_ref().is_ok_and(|p| p.spec.region == name))
            .count() as i32
    } else {
        ctx.metrics.api_reads("FiberProbe");
        let probes: Api<FiberProbe> = ctx.api(&ns);
        probes
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.spec.region == name)
            .count() as i32
    };
    Ok(Workloads {
        ingest: replicas(ingest),
        etl: replicas(etl),
        probes,
        stream: stream(ctx, region, &name).await,
    })
}

/// The stream's figures as the region's ETL recorded them in its database.
async fn stream(
    ctx: &Context,
    region: &FiberRegion,
    name: &str,
) -> Result<Option<StreamFigures>, String> {
    let pool = ctx.region_database(region).await?;
    status::stream_figures(&pool, name)
        .await
        .map_err(|e| format!("cannot read the stream's figures from the database: {e}"))
}
