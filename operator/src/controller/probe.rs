//! FiberProbe: dereference the region → validate → build ConfigMap and DaemonSet → apply →
//! status from the DaemonSet and the database.

use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::{Context, apply, apply_status};
use crate::conditions::{FALSE, TRUE, UNKNOWN, condition, decide_health, find, merge, rfc3339};
use crate::crd::{Condition, FiberProbe, FiberProbeStatus, FiberRegion};
use crate::error::Error;
use crate::render::{names, probe as render};
use crate::status::{self, REPORTING_INTERVALS};
use crate::validate::validate_probe;

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

/// Where the pipeline stopped before the workloads: said in Ready, reflected in `health`.
struct Blocked {
    reason: &'static str,
    message: String,
}

async fn reconcile_inner(probe: &FiberProbe, ctx: &Context) -> Result<Action, Error> {
    let ns = probe
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = probe.name_any();
    let requeue = Action::requeue(ctx.settings.status_every);

    // Dereference.
    let regions: Api<FiberRegion> = ctx.api(&ns);
    let Some(region) = regions.get_opt(&probe.spec.region).await? else {
        let blocked = Blocked {
            reason: "RegionNotFound",
            message: format!(
                "FiberRegion {:?} does not exist in namespace {ns}; create it or fix spec.region",
                probe.spec.region
            ),
        };
        write_blocked(probe, ctx, blocked).await?;
        return Ok(requeue);
    };

    // Validate.
    if let Err(e) = validate_probe(probe, &region) {
        let blocked = Blocked {
            reason: "InvalidSpec",
            message: e.to_string(),
        };
        write_blocked(probe, ctx, blocked).await?;
        return Ok(requeue);
    }

    // Build and apply.
    let images = &ctx.settings.images;
    let configmap = render::build_configmap(probe, &region);
    apply(&ctx.api::<ConfigMap>(&ns), &configmap).await?;
    let daemonsets: Api<DaemonSet> = ctx.api(&ns);
    let daemonset = if probe.spec.paused {
        match daemonsets
            .delete(&names::probe(&name), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        None
    } else {
        let built = render::build_daemonset(probe, &region, images)
            .ok_or(Error::MissingField("node selector (validated)"))?;
        Some(apply(&daemonsets, &built).await?)
    };

    // Status.
    let status = compute_status(probe, ctx, &ns, daemonset.as_ref()).await?;
    apply_status(
        &ctx.api::<FiberProbe>(&ns),
        probe,
        serde_json::to_value(&status).expect("status serializes"),
    )
    .await?;
    Ok(requeue)
}

async fn write_blocked(probe: &FiberProbe, ctx: &Context, blocked: Blocked) -> Result<(), Error> {
    tracing::info!(name = %probe.name_any(), namespace = %probe.namespace().unwrap_or_default(), reason = blocked.reason, message = %blocked.message, "probe not placed");
    let previous = probe.status.clone().unwrap_or_default();
    let now = Utc::now();
    let conditions = merge(
        &previous.conditions,
        vec![
            condition("Ready", FALSE, blocked.reason, blocked.message.clone()),
            condition(
                "Reporting",
                UNKNOWN,
                blocked.reason,
                blocked.message.clone(),
            ),
            condition("Healthy", UNKNOWN, blocked.reason, blocked.message),
        ],
        probe.metadata.generation,
        now,
    );
    let status = FiberProbeStatus {
        observed_generation: probe.metadata.generation,
        conditions,
        health: blocked.reason.to_owned(),
        ready: "0/0".to_owned(),
        ..Default::default()
    };
    let ns = probe.namespace().unwrap_or_default();
    apply_status(
        &ctx.api::<FiberProbe>(&ns),
        probe,
        serde_json::to_value(&status).expect("status serializes"),
    )
    .await
}

async fn compute_status(
    probe: &FiberProbe,
    ctx: &Context,
    ns: &str,
    daemonset: Option<&DaemonSet>,
) -> Result<FiberProbeStatus, Error> {
    let previous = probe.status.clone().unwrap_or_default();
    let now = Utc::now();
    let spec = &probe.spec;
    let (desired, ready) = daemonset
        .and_then(|d| d.status.as_ref())
        .map_or((0, 0), |s| (s.desired_number_scheduled, s.number_ready));

    let ready_condition = if spec.paused {
        condition(
            "Ready",
            FALSE,
            "Paused",
            "spec.paused is true: the probe pods are removed",
        )
    } else if desired == 0 {
        condition(
            "Ready",
            FALSE,
            "NoMatchingNodes",
            "no node matches the region's nodeSelector and the probe's nodeSelector",
        )
    } else if ready < desired {
        condition(
            "Ready",
            FALSE,
            "PodsNotReady",
            format!("{ready} of {desired} probe pods ready"),
        )
    } else {
        condition(
            "Ready",
            TRUE,
            "AllPodsReady",
            format!("{ready} of {desired} probe pods ready"),
        )
    };

    let target_names: Vec<String> = spec.targets.iter().map(|t| t.name.clone()).collect();
    let figures = match &ctx.db {
        None => Err("no database configured (--database-url)".to_owned()),
        Some(pool) => status::probe_figures(
            pool,
            &render::probe_key(probe),
            &target_names,
            spec.interval.as_std(),
        )
        .await
        .map_err(|e| e.to_string()),
    };

    let mut status = FiberProbeStatus {
        observed_generation: probe.metadata.generation,
        desired_probes: desired,
        ready_probes: ready,
        ready: format!("{ready}/{desired}"),
        ..Default::default()
    };
    let recent = spec.interval.as_std() * REPORTING_INTERVALS;
    let recent = fiberstack_model::Duration(recent);

    let (reporting, healthy) = match figures {
        Err(e) => {
            tracing::warn!(name = %probe.name_any(), namespace = %ns, error = %e, "fleet health unavailable");
            // Keep the last known figures: they are the best information there is.
            status.reporting_probes = previous.reporting_probes;
            status.last_sample_time = previous.last_sample_time.clone();
            status.summary = previous.summary.clone();
            status.targets = previous.targets.clone();
            let message = format!("cannot read samples from the database: {e}");
            (
                condition("Reporting", UNKNOWN, "DatabaseUnavailable", message.clone()),
                // Healthy keeps its last state: an outage of our own database says nothing
                // about the network.
                find(&previous.conditions, "Healthy")
                    .cloned()
                    .unwrap_or_else(|| {
                        condition("Healthy", UNKNOWN, "DatabaseUnavailable", message)
                    }),
            )
        }
        Ok(figures) => {
            status.reporting_probes = figures.reporting_nodes.len() as i32;
            status.last_sample_time = figures.last_sample.map(rfc3339);
            status.summary = Some(figures.summary.clone());
            let rows = status::target_rows(&target_names, &figures, &spec.thresholds);
            let expected = if spec.paused {
                vec![]
            } else {
                pod_nodes(ctx, ns, probe).await?
            };
            let missing: Vec<&String> = expected
                .iter()
                .filter(|n| !figures.reporting_nodes.contains(n))
                .collect();
            let reporting = if spec.paused {
                condition("Reporting", FALSE, "Paused", "spec.paused is true")
            } else if figures.reporting_nodes.is_empty() {
                condition(
                    "Reporting",
                    FALSE,
                    "NoRecentSamples",
                    match &status.last_sample_time {
                        Some(t) => format!(
                            "no samples within 3 intervals ({recent}); the newest is from {t}"
                        ),
                        None => "no samples received yet".to_owned(),
                    },
                )
            } else if !missing.is_empty() {
                condition(
                    "Reporting",
                    FALSE,
                    "NodesNotReporting",
                    format!(
                        "no samples within 3 intervals ({recent}) from {}",
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            } else {
                condition(
                    "Reporting",
                    TRUE,
                    "SamplesArriving",
                    format!(
                        "{} nodes sent samples within 3 intervals ({recent})",
                        figures.reporting_nodes.len()
                    ),
                )
            };
            let (observed, reason, message) = status::observed_health(&rows, &spec.thresholds);
            status.targets = rows;
            let current = find(&previous.conditions, "Healthy");
            let healthy = if observed == UNKNOWN {
                status.health_streak = None;
                condition("Healthy", UNKNOWN, reason, message)
            } else {
                let decision = decide_health(
                    ctx.settings.hysteresis,
                    current.map(|c| c.status.as_str()),
                    previous.health_streak.as_ref(),
                    observed,
                    now,
                );
                status.health_streak = decision.streak;
                if decision.switch || current.is_none_or(|c| c.status == observed) {
                    condition("Healthy", observed, reason, message)
                } else {
                    current.cloned().expect("checked above")
                }
            };
            (reporting, healthy)
        }
    };

    status.conditions = merge(
        &previous.conditions,
        vec![ready_condition, reporting, healthy],
        probe.metadata.generation,
        now,
    );
    status.health = health_word(&status.conditions, spec.paused);
    publish_health_event(probe, ctx, &previous.conditions, &status.conditions).await;
    Ok(status)
}

/// Nodes that run (or should run) one of the probe's pods.
async fn pod_nodes(ctx: &Context, ns: &str, probe: &FiberProbe) -> Result<Vec<String>, Error> {
    let pods: Api<Pod> = ctx.api(ns);
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

fn health_word(conditions: &[Condition], paused: bool) -> String {
    if paused {
        return "Paused".to_owned();
    }
    match find(conditions, "Healthy") {
        Some(c) if c.status == TRUE => "Healthy",
        Some(c) if c.status == FALSE => "Degraded",
        Some(c) if c.reason == "NoData" => "NoData",
        _ => "Unknown",
    }
    .to_owned()
}

/// An Event when Healthy turns False — from True, or at the first evaluation with data
/// (Unknown → False: a probe that is degraded from the start deserves the same warning) —
/// and when it turns from False back to True.
async fn publish_health_event(
    probe: &FiberProbe,
    ctx: &Context,
    before: &[Condition],
    after: &[Condition],
) {
    let Some(a) = find(after, "Healthy") else {
        return;
    };
    let b = find(before, "Healthy").map(|c| c.status.as_str());
    let (type_, reason) = match (b, a.status.as_str()) {
        (Some(FALSE), FALSE) => return,
        (_, FALSE) => (EventType::Warning, "HealthDegraded"),
        (Some(FALSE), TRUE) => (EventType::Normal, "HealthRecovered"),
        _ => return,
    };
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(a.message.chars().take(1000).collect()),
        action: "EvaluateHealth".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &probe.object_ref(&())).await {
        tracing::warn!(name = %probe.name_any(), error = %e, "could not publish the health event");
    }
}
