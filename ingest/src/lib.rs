//! fiber-ingest: the HTTP front door of the data path. Probes POST batches; a batch is
//! answered 202 only after it was appended to the region's Redis stream.

pub mod api;
pub mod app;
pub mod auth;
pub mod dashboard;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod read;
pub mod stream;
pub mod tls;
