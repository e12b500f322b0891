//! `fiber-probe`: measures what the network does from an edge node and delivers every sample.
//!
//! The data's path through the crate:
//! - [`config`]: the `ProbeConfig` file with its environment overrides, re-read when it changes.
//! - [`schedule`]: one round per target per interval, spread over the interval.
//! - [`checks`]: one module per kind of measurement ([`checks::icmp`], [`checks::tcp`],
//!   [`checks::http`], [`checks::dns`], [`checks::traceroute`]); each turns one round into one
//!   `Sample`.
//! - [`buffer`]: the disk buffer every sample is written to before it is sent.
//! - [`deliver`]: batches from the buffer to `fiber-ingest`, with retries and failover.
//! - [`agent`]: wires the parts together for `fiber-probe --config`.
//! - [`metrics`]: the counters behind `/metrics`.
//! - [`net`]: name resolution and socket error words, below the checks and the connections.

pub mod agent;
pub mod buffer;
pub mod checks;
pub mod config;
pub mod connect;
pub mod deliver;
pub mod metrics;
pub mod net;
pub mod schedule;

/// The version every batch carries as `agent_version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
