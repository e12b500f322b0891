//! The FiberRegion's gather step: its Deployments' replica counts (from the apply), the
//! probes naming it, and its stream's figures. Reads only.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::decide::{Replicas, StreamProblem, Workloads};
use crate::controller::Context;
use crate::crd::{FiberProbe, FiberRegion};
use crate::error::Error;

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
    let probes: Api<FiberProbe> = ctx.api(&ns);
    let probes = probes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.spec.region == name)
        .count() as i32;
    Ok(Workloads {
        ingest: replicas(ingest),
        etl: replicas(etl),
        probes,
        stream: stream(ctx, region, &ns, &name).await?,
    })
}

/// The stream's figures, read from the region's Redis.
async fn stream(
    ctx: &Context,
    region: &FiberRegion,
    ns: &str,
    name: &str,
) -> Result<Result<crate::stream::StreamFigures, StreamProblem>, Error> {
    let reference = &region.spec.redis.url_secret_ref;
    let secret = ctx.api::<Secret>(ns).get_opt(&reference.name).await?;
    let url = secret
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(&reference.key))
        .and_then(|v| String::from_utf8(v.0).ok());
    let Some(url) = url else {
        return Ok(Err(StreamProblem::SecretMissing {
            secret: reference.name.clone(),
            key: reference.key.clone(),
        }));
    };
    Ok(ctx
        .streams
        .figures(url.trim(), name)
        .await
        .map_err(StreamProblem::Unavailable))
}
