//! FiberStack's operator: the `FiberRegion` and `FiberProbe` custom resources, the
//! controllers that turn them into workloads, and the fleet health written into their status.
//!
//! Each controller is a pipeline (see `controller`): dereference what the spec points to,
//! validate ([`validate`]), build the objects ([`render`], pure functions), apply them with
//! server-side apply under one field manager, then status in three steps: gather (reads:
//! [`status`] holds the SQL), decide (pure: [`health`] holds the rules, [`conditions`] the
//! typed vocabulary), effects (the status write, then Events, then the notifications of
//! [`notify`] and the alert history).

pub mod conditions;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod databases;
pub mod error;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod health;
pub mod lease;
pub mod localize;
pub mod measurements;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod render;
pub mod server;
pub mod slo;
pub mod status;
pub mod statuspage;
pub mod validate;
mod words;
