//! FiberStack's operator: the `FiberRegion` and `FiberProbe` custom resources, the
//! controllers that turn them into workloads, and the fleet health written into their status.
//!
//! Each controller is a pipeline (see `controller`): dereference what the spec points to,
//! validate ([`validate`]), build the objects ([`render`], pure functions), apply them with
//! server-side apply under one field manager, then compute status ([`status`],
//! [`conditions`]).

pub mod conditions;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod render;
pub mod server;
pub mod status;
pub mod stream;
pub mod validate;
