//! The shapes that cross process boundaries in FiberStack, and the rules they must obey.
//!
//! - [`Sample`] and [`Batch`]: what a probe sends to the ingest service and what travels
//!   through the Redis stream to the ETL (DESIGN.md §3).
//! - [`ProbeConfig`]: the YAML the operator renders into a probe's ConfigMap and
//!   `fiber-probe --config` reads.
//! - [`PushSample`]: the original single-sample contract of `POST /api/push`.
//! - [`binary`]: the compact encoding of a [`Batch`] that fiber-probe sends and the samples
//!   streams carry.
//!
//! Validation lives beside the types so that ingest, ETL and probe apply the very same rules,
//! and every [`ValidationError`] names the field it is about.

pub mod binary;
pub mod config;
pub mod duration;
pub mod push;
pub mod quantity;
pub mod sample;
pub mod stream;
pub mod validate;

pub use config::{
    BufferConfig, Check, ConfigError, DnsCheck, DnsRecordType, HttpCheck, IcmpCheck, IngestConfig,
    LatencyObjective, ProbeConfig, Slo, Target, TargetThresholds, TcpCheck, TracerouteCheck,
    TracerouteProtocol,
};
pub use duration::Duration;
pub use push::PushSample;
pub use quantity::ByteSize;
pub use sample::{Batch, CheckKind, Hop, Rejection, Sample, path_fingerprint};
pub use validate::ValidationError;
