//! FiberRegion: validate → the probe token Secret (created once) → ingest Deployment and
//! Service, ETL Deployment, PodDisruptionBudgets → status in three steps: gather (replica
//! counts, probes, the stream's figures), decide (pure), effects (the status write).

pub mod decide;
mod gather;

use std::io::Read;
use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::PostParams;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{Context, apply, effects};
use crate::crd::FiberRegion;
use crate::error::Error;
use crate::render::{names, region as render};
use crate::validate::validate_region;
use decide::Observations;

const CONTROLLER: &str = "region";

pub async fn reconcile(
    guard: Arc<DeserializeGuard<FiberRegion>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    super::reconcile_fresh(guard, ctx, CONTROLLER, |region, ctx| async move {
        reconcile_inner(&region, &ctx).await
    })
    .await
}

/// 32 random bytes from the kernel, hex-encoded (64 characters).
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn reconcile_inner(region: &FiberRegion, ctx: &Context) -> Result<Action, Error> {
    let ns = region
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let observed = match validate_region(region) {
        Err(e) => {
            tracing::info!(name = %region.name_any(), namespace = %ns, error = %e, "region invalid");
            Observations::Invalid(e.to_string())
        }
        Ok(()) => {
            let (ingest, etl) = place(region, ctx, &ns).await?;
            Observations::Running(gather::gather(region, ctx, &ingest, &etl).await?)
        }
    };
    let status = decide::decide(region, &observed, Utc::now());
    effects::write_status_then_announce(ctx, &ctx.api::<FiberRegion>(&ns), region, &status, &[])
        .await?;
    Ok(Action::requeue(ctx.settings.status_every))
}

/// The token Secret (made once), then the Deployments, Service and PodDisruptionBudgets;
/// returns the ingest and ETL Deployments as applied.
async fn place(
    region: &FiberRegion,
    ctx: &Context,
    ns: &str,
) -> Result<(Deployment, Deployment), Error> {
    let name = region.name_any();
    // The token is read first and made only when missing: a reconcile never replaces it.
    let secrets: Api<Secret> = ctx.api(ns);
    let token_name = names::token_secret(&name);
    if secrets.get_opt(&token_name).await?.is_none() {
        let token = generate_token().map_err(Error::Token)?;
        match secrets
            .create(
                &PostParams::default(),
                &render::build_token_secret(region, &token),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(name = %name, namespace = %ns, secret = %token_name, "probe token generated")
            }
            // Another replica (or a previous attempt) made it first: keep theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }

    let images = &ctx.settings.images;
    let caches = &ctx.caches;
    let deployments: Api<Deployment> = ctx.api(ns);
    let ingest = render::build_ingest_deployment(region, images);
    let ingest = apply(ctx, &caches.deployments, &deployments, &ingest).await?;
    let service = render::build_ingest_service(region);
    apply(ctx, &caches.services, &ctx.api::<Service>(ns), &service).await?;
    let etl = render::build_etl_deployment(region, images);
    let etl = apply(ctx, &caches.deployments, &deployments, &etl).await?;
    let pdbs: Api<PodDisruptionBudget> = ctx.api(ns);
    for pdb in [
        render::build_pdb(region, "fiber-ingest", "ingest"),
        render::build_pdb(region, "fiber-etl", "etl"),
    ] {
        apply(ctx, &caches.pdbs, &pdbs, &pdb).await?;
    }
    Ok((ingest, etl))
}
