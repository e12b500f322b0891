//! What the benchmarks share: their settings from the environment and the batches they
//! send (the data-path load benchmark in `e2e/benches`, the ETL writer's in `etl/benches`).

use chrono::{DateTime, Utc};
use fiberstack_model::{Batch, CheckKind, Sample};

/// A numeric setting from the environment variable `name`, or `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Batch `seq` of node `load-node-<node>`: `size` ICMP samples over 20 targets, one
/// millisecond apart, unique per node.
pub fn batch(node: usize, seq: u64, size: usize, base: DateTime<Utc>) -> Batch {
    let samples = (0..size)
        .map(|i| {
            let n = seq * size as u64 + i as u64;
            Sample {
                address: "127.0.0.1".into(),
                latency_ms: Some(1.0 + (n % 97) as f64),
                latency_min_ms: Some(1.0),
                latency_max_ms: Some(100.0),
                jitter_ms: Some(0.3),
                packet_loss: Some(0.0),
                sent: Some(5),
                received: Some(5),
                // Unique per probe: one target of 20, one millisecond each.
                ..Sample::new(
                    base + chrono::Duration::milliseconds((n / 20) as i64),
                    format!("target-{}", n % 20),
                    CheckKind::Icmp,
                    true,
                )
            }
        })
        .collect();
    Batch {
        probe: "load/bench".into(),
        region: "load".into(),
        country: "GH".into(),
        node: format!("load-node-{node}"),
        agent_version: "bench".into(),
        samples,
    }
}
