//! FiberRegion: validate → the probe token Secret (created once) → ingest Deployment and
//! Service, ETL Deployment, PodDisruptionBudgets → status from the Deployments.

use std::io::Read;
use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, PostParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{Context, apply, apply_status};
use crate::conditions::{FALSE, TRUE, condition, merge};
use crate::crd::{Condition, FiberProbe, FiberRegion, FiberRegionStatus};
use crate::error::Error;
use crate::render::{names, region as render};
use crate::stream::StreamFigures;
use crate::validate::validate_region;

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
    let name = region.name_any();
    let requeue = Action::requeue(ctx.settings.status_every);
    let previous = region.status.clone().unwrap_or_default();
    let now = Utc::now();

    if let Err(e) = validate_region(region) {
        tracing::info!(name = %name, namespace = %ns, error = %e, "region invalid");
        let status = FiberRegionStatus {
            observed_generation: region.metadata.generation,
            conditions: merge(
                &previous.conditions,
                vec![condition("Ready", FALSE, "InvalidSpec", e.to_string())],
                region.metadata.generation,
                now,
            ),
            ..Default::default()
        };
        apply_status(
            &ctx.api::<FiberRegion>(&ns),
            region,
            serde_json::to_value(&status).expect("serializes"),
        )
        .await?;
        return Ok(requeue);
    }

    // The token is read first and made only when missing: a reconcile never replaces it.
    let secrets: Api<Secret> = ctx.api(&ns);
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
    let deployments: Api<Deployment> = ctx.api(&ns);
    let ingest = apply(
        &deployments,
        &render::build_ingest_deployment(region, images),
    )
    .await?;
    apply(
        &ctx.api::<Service>(&ns),
        &render::build_ingest_service(region),
    )
    .await?;
    let etl = apply(&deployments, &render::build_etl_deployment(region, images)).await?;
    let pdbs: Api<PodDisruptionBudget> = ctx.api(&ns);
    apply(&pdbs, &render::build_pdb(region, "fiber-ingest", "ingest")).await?;
    apply(&pdbs, &render::build_pdb(region, "fiber-etl", "etl")).await?;

    let probes: Api<FiberProbe> = ctx.api(&ns);
    let probes_of_region = probes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.spec.region == name)
        .count() as i32;

    let (figures, degraded) = stream_health(ctx, region, &ns, &name).await?;

    let ingest_available = availability("IngestAvailable", "ingest", &ingest);
    let etl_available = availability("EtlAvailable", "ETL", &etl);
    let ready = if ingest_available.status == TRUE && etl_available.status == TRUE {
        condition("Ready", TRUE, "Available", "ingest and ETL are available")
    } else {
        let down: Vec<&str> = [&ingest_available, &etl_available]
            .iter()
            .filter(|c| c.status != TRUE)
            .map(|c| c.message.as_str())
            .collect();
        condition("Ready", FALSE, "NotAvailable", down.join("; "))
    };
    let status = FiberRegionStatus {
        observed_generation: region.metadata.generation,
        conditions: merge(
            &previous.conditions,
            vec![ready, ingest_available, etl_available, degraded],
            region.metadata.generation,
            now,
        ),
        ingest: replicas(&ingest),
        etl: replicas(&etl),
        probes: probes_of_region,
        backlog: figures.map(|f| f.length as i64),
        pending: figures.map(|f| f.pending as i64),
        dead_letters: figures.map(|f| f.dead_letters as i64),
        ingest_url: Some(names::ingest_url(&name, &ns)),
        token_secret: Some(token_name),
    };
    apply_status(
        &ctx.api::<FiberRegion>(&ns),
        region,
        serde_json::to_value(&status).expect("serializes"),
    )
    .await?;
    Ok(requeue)
}

fn counts(d: &Deployment) -> (i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (ready, desired)
}

fn replicas(d: &Deployment) -> String {
    let (ready, desired) = counts(d);
    format!("{ready}/{desired}")
}

fn availability(type_: &str, what: &str, d: &Deployment) -> Condition {
    let (ready, desired) = counts(d);
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if desired == 0 {
        condition(
            type_,
            FALSE,
            "ScaledToZero",
            format!("{what} has 0 replicas"),
        )
    } else if available >= 1 && ready >= desired {
        condition(
            type_,
            TRUE,
            "MinimumReplicasAvailable",
            format!("{ready} of {desired} {what} pods ready"),
        )
    } else {
        condition(
            type_,
            FALSE,
            "ReplicasNotReady",
            format!("{ready} of {desired} {what} pods ready"),
        )
    }
}

/// The stream's figures and the Degraded condition they make.
async fn stream_health(
    ctx: &Context,
    region: &FiberRegion,
    ns: &str,
    name: &str,
) -> Result<(Option<StreamFigures>, Condition), Error> {
    let reference = &region.spec.redis.url_secret_ref;
    let secret = ctx.api::<Secret>(ns).get_opt(&reference.name).await?;
    let url = secret
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(&reference.key))
        .and_then(|v| String::from_utf8(v.0).ok());
    let Some(url) = url else {
        return Ok((
            None,
            condition(
                "Degraded",
                TRUE,
                "RedisSecretMissing",
                format!(
                    "Secret {:?} has no key {:?} (spec.redis.urlSecretRef)",
                    reference.name, reference.key
                ),
            ),
        ));
    };
    Ok(match ctx.streams.figures(url.trim(), name).await {
        Err(e) => (None, condition("Degraded", TRUE, "StreamUnavailable", e)),
        Ok(f) if f.dead_letters > 0 => (
            Some(f),
            condition(
                "Degraded",
                TRUE,
                "DeadLetters",
                format!(
                    "{} entries in {} could not be stored; read their reasons there",
                    f.dead_letters,
                    fiberstack_model::stream::dead_letter_stream(name)
                ),
            ),
        ),
        Ok(f) => (
            Some(f),
            condition(
                "Degraded",
                FALSE,
                "StreamHealthy",
                format!("{} entries in the stream, {} pending", f.length, f.pending),
            ),
        ),
    })
}
