//! The region's Redis stream as the operator sees it: backlog, pending entries and dead
//! letters, for the FiberRegion's status. Connections are opened on first use per URL and
//! kept.

use std::collections::HashMap;
use std::time::Duration;

use fiberstack_model::stream::{CONSUMER_GROUP, dead_letter_stream, samples_stream};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

/// How long a connection attempt or a round of reads may take before the region is
/// reported without stream figures.
pub const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFigures {
    /// Entries in `fiber:samples:<region>`: not yet written, or written and not yet trimmed.
    pub length: u64,
    /// Entries delivered to an ETL worker and not yet acknowledged.
    pub pending: u64,
    /// Entries in `fiber:dlq:<region>`.
    pub dead_letters: u64,
}

#[derive(Default)]
pub struct Streams {
    connections: Mutex<HashMap<String, MultiplexedConnection>>,
}

impl Streams {
    async fn connection(&self, url: &str) -> Result<MultiplexedConnection, String> {
        let mut connections = self.connections.lock().await;
        if let Some(c) = connections.get(url) {
            return Ok(c.clone());
        }
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        let c = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| format!("connecting to Redis timed out after {TIMEOUT:?}"))?
            .map_err(|e| format!("connecting to Redis: {e}"))?;
        connections.insert(url.to_owned(), c.clone());
        Ok(c)
    }

    /// The region's figures; an error text saying what failed otherwise.
    pub async fn figures(&self, url: &str, region: &str) -> Result<StreamFigures, String> {
        let mut c = self.connection(url).await?;
        let read = async {
            let stream = samples_stream(region);
            let length: u64 = c.xlen(&stream).await?;
            let pending = match c
                .xpending::<_, _, redis::streams::StreamPendingReply>(&stream, CONSUMER_GROUP)
                .await
            {
                Ok(reply) => reply.count() as u64,
                // No ETL worker has created the group yet: nothing is pending.
                Err(e) if e.code() == Some("NOGROUP") => 0,
                Err(e) => return Err(e),
            };
            let dead_letters: u64 = c.xlen(dead_letter_stream(region)).await?;
            Ok(StreamFigures {
                length,
                pending,
                dead_letters,
            })
        };
        match tokio::time::timeout(TIMEOUT, read).await {
            Ok(Ok(figures)) => Ok(figures),
            Ok(Err(e)) => {
                // A broken connection is dropped so the next round reconnects.
                self.connections.lock().await.remove(url);
                Err(format!("reading the stream: {e}"))
            }
            Err(_) => Err(format!("reading the stream timed out after {TIMEOUT:?}")),
        }
    }
}
