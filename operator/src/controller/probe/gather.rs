//! The FiberProbe's gather step: the reads its status needs — the database's figures and the
//! nodes its pods run on. Reads only; what they mean is decided in [`super::decide`].

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::decide::{Observations, Placement};
use crate::controller::Context;
use crate::crd::{FiberProbe, FiberRegion};
use crate::error::Error;
use crate::render::probe as render;
use crate::status;

/// `region` is the probe's region when the pipeline found it: its database holds the
/// probe's samples.
pub async fn gather(
    probe: &FiberProbe,
    region: Option<&FiberRegion>,
    ctx: &Context,
    placement: Placement,
) -> Result<Observations, Error> {
    let Some(region) = region.filter(|_| !matches!(placement, Placement::Blocked { .. })) else {
        return Ok(Observations {
            placement,
            pod_nodes: vec![],
            figures: None,
        });
    };
    let spec = &probe.spec;
    let target_names: Vec<String> = spec.targets.iter().map(|t| t.name.clone()).collect();
    let figures = match ctx.region_database(region).await {
        Err(e) => Err(e),
        Ok(pool) => status::probe_figures(
            &pool,
            &render::probe_key(probe),
            &target_names,
            spec.interval.as_std(),
        )
        .await
        .map_err(|e| e.to_string()),
    };
    if let Err(e) = &figures {
        tracing::warn!(name = %probe.name_any(), namespace = %probe.namespace().unwrap_or_default(), error = %e, "fleet health unavailable");
    }
    let pod_nodes = match placement {
        Placement::Paused => vec![],
        _ => pod_nodes(ctx, probe).await?,
    };
    Ok(Observations {
        placement,
        pod_nodes,
        figures: Some(figures),
    })
}

/// Nodes that run (or should run) one of the probe's pods.
async fn pod_nodes(ctx: &Context, probe: &FiberProbe) -> Result<Vec<String>, Error> {
    let ns = probe.namespace().unwrap_or_default();
    let pods: Api<Pod> = ctx.api(&ns);
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/name=fiber-probe,app.kubernetes.io/instance={}",
            probe.name_any()
        )))
        .await?;
    let mut nodes: Vec<String> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}
