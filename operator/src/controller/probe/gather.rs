//! The FiberProbe's gather step: the reads its status needs — the database's figures and the
//! nodes its pods run on. Reads only; what they mean is decided in [`super::decide`].

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::decide::{Observations, Placement};
use crate::controller::{Context, cache};
use crate::crd::{FiberProbe, FiberRegion};
use crate::error::Error;

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
            slo: None,
        });
    };
    let read = match ctx.region_database(region).await {
        Err(e) => Err(e),
        Ok(pool) => ctx
            .region_figures
            .figures(ctx, &pool, probe, ctx.settings.status_every)
            .await
            .map_err(|e| e.to_string()),
    };
    let (figures, slo) = match read {
        Ok(read) => (Ok(read.figures), read.slo),
        Err(e) => (Err(e.clone()), probe.spec.slo.as_ref().map(|_| Err(e))),
    };
    if let Some(Err(e)) = &slo {
        tracing::warn!(name = %probe.name_any(), namespace = %probe.namespace().unwrap_or_default(), error = %e, "SLO unavailable");
    }
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
        slo,
    })
}

/// Nodes that run (or should run) one of the probe's pods, from the pod cache (a list from
/// the API server while it has not synced).
async fn pod_nodes(ctx: &Context, probe: &FiberProbe) -> Result<Vec<String>, Error> {
    let ns = probe.namespace().unwrap_or_default();
    let instance = probe.name_any();
    let mine = |p: &Pod| {
        p.namespace().as_deref() == Some(ns.as_str())
            && p.labels().get("app.kubernetes.io/instance") == Some(&instance)
            && p.metadata.deletion_timestamp.is_none()
    };
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let mut nodes: Vec<String> = if cache::synced(&ctx.caches.pods).await {
        ctx.caches
            .pods
            .state()
            .iter()
            .filter(|p| mine(p))
            .filter_map(|p| node(p))
            .collect()
    } else {
        ctx.metrics.api_reads("Pod");
        let pods: Api<Pod> = ctx.api(&ns);
        pods.list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/name=fiber-probe,app.kubernetes.io/instance={instance}"
        )))
        .await?
        .items
        .iter()
        .filter(|p| mine(p))
        .filter_map(node)
        .collect()
    };
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}
