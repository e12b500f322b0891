//! The effects step of both controllers: the status write first, then what that write made
//! true — Events today, notifications later. A transition is announced only after the status
//! that records it is stored, so a failed write (retried by the next reconcile, which sees
//! the old status again and decides the same transition) never announces it twice.

use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, apply_status};
use crate::crd::Scope;
use crate::error::Error;

/// A change a decide step found, to be announced once its status is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Healthy turned False: from True, or at the first evaluation with data (a probe that
    /// is degraded from the start deserves the same warning). The message names the worst
    /// target.
    HealthDegraded { message: String },
    /// Healthy turned from False back to True.
    HealthRecovered { message: String },
    /// A target's alert started (its breach held for the hysteresis); where it is seen from.
    AlertFiring {
        target: String,
        message: String,
        scope: Option<Scope>,
    },
    /// A target's alert ended.
    AlertResolved { target: String, message: String },
    /// An objective's error budget started burning fast or slow (or moved between them).
    SloBurning { message: String, fast: bool },
    /// No objective's budget burns fast or slow any more.
    SloBurnEnded { message: String },
    /// A node's path to a traceroute target changed and the new one held for the target's
    /// changeAfterRounds; the message names the node and the hops that changed.
    PathChanged {
        target: String,
        node: String,
        message: String,
    },
}

impl Transition {
    /// The Kubernetes Event announcing it.
    pub fn event(&self) -> Event {
        let (type_, reason, message) = match self {
            Transition::HealthDegraded { message } => {
                (EventType::Warning, "HealthDegraded", message)
            }
            Transition::HealthRecovered { message } => {
                (EventType::Normal, "HealthRecovered", message)
            }
            // The reason says where: the target (everywhere) or a path (from some).
            Transition::AlertFiring { message, scope, .. } => (
                EventType::Warning,
                match scope {
                    Some(Scope::Everywhere) => "AlertFiringEverywhere",
                    Some(Scope::Partial) => "AlertFiringPartial",
                    Some(Scope::Single) => "AlertFiringSingleVantage",
                    None => "AlertFiring",
                },
                message,
            ),
            Transition::AlertResolved { message, .. } => {
                (EventType::Normal, "AlertResolved", message)
            }
            Transition::SloBurning { message, fast } => (
                EventType::Warning,
                if *fast { "SloBurnFast" } else { "SloBurnSlow" },
                message,
            ),
            Transition::SloBurnEnded { message } => (EventType::Normal, "SloBurnEnded", message),
            // Normal: a new path is not by itself a fault (what it does to latency and loss
            // is judged by Healthy and the target's alert); it explains what they show.
            Transition::PathChanged { message, .. } => (EventType::Normal, "PathChanged", message),
        };
        Event {
            type_,
            reason: reason.to_owned(),
            // The Events API refuses notes over 1 kB.
            note: Some(message.chars().take(1000).collect()),
            action: "EvaluateHealth".to_owned(),
            secondary: None,
        }
    }
}

/// Writes `status` (server-side apply), then publishes the transitions. A failed publish is
/// logged, not retried: the status already says what happened. A status equal to the one
/// the object has is not written at all: in steady state a reconcile makes no write.
pub async fn write_status_then_announce<K, S>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    status: &S,
    transitions: &[Transition],
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    S: Serialize,
{
    let status = serde_json::to_value(status).expect("status serializes");
    let kind = K::kind(&());
    let current = serde_json::to_value(object)
        .ok()
        .and_then(|mut o| o.get_mut("status").map(serde_json::Value::take));
    let unchanged = current.as_ref() == Some(&status);
    let result = if unchanged { "unchanged" } else { "written" };
    ctx.metrics
        .status_writes
        .get_or_create(&crate::metrics::StatusWriteLabels {
            kind: if kind == "FiberProbe" {
                "FiberProbe"
            } else {
                "FiberRegion"
            },
            result,
        })
        .inc();
    if !unchanged {
        apply_status(ctx, api, object, status).await?;
    }
    for transition in transitions {
        if let Err(e) = ctx
            .recorder
            .publish(&transition.event(), &object.object_ref(&()))
            .await
        {
            tracing::warn!(name = %object.name_any(), namespace = %object.namespace().unwrap_or_default(), error = %e, ?transition, "could not publish an event");
        }
    }
    Ok(())
}
