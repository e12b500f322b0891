//! Appends accepted batches to the region's Redis stream, refusing when the backlog is over
//! its cap so that a stalled ETL pushes back on probes (which buffer on disk) instead of
//! filling Redis' memory.

use fiberstack_model::Batch;
use fiberstack_model::stream::{BATCH_FIELD, TRACEPARENT_FIELD, encode_batch, samples_stream};
use fiberstack_plumbing::redis::{RedisConfig, RedisConnectError};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

/// Longest a request waits for Redis before it is answered 503.
pub const REDIS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("redis is unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("stream {stream} holds {len} entries, over its cap of {cap}; the ETL is behind")]
    Backlog { stream: String, len: u64, cap: u64 },
}

/// Connects to Redis so that an outage is reported within about two seconds, not hidden
/// behind long reconnect attempts: probes are told 503 and retry later from their buffer.
pub async fn connect(url: &str) -> Result<ConnectionManager, RedisConnectError> {
    RedisConfig {
        connect_timeout: REDIS_DEADLINE,
        response_timeout: REDIS_DEADLINE,
        reconnect_retries: 1,
        reconnect_max_delay: Some(std::time::Duration::from_millis(500)),
        ..RedisConfig::new(url)
    }
    .connection_manager()
    .await
}

/// XADD unless the stream already holds `ARGV[1]` entries or more. Returns `{id, length}`
/// on success and `{false, length}` when refused (Lua's false becomes a nil reply). The
/// entry's fields are the pairs from `ARGV[2]` on: the batch, then the optional ones.
static APPEND_UNDER_CAP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local len = redis.call('XLEN', KEYS[1])
        if len >= tonumber(ARGV[1]) then
            return {false, len}
        end
        return {redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2)), len + 1}
        ",
    )
});

#[derive(Clone)]
pub struct StreamWriter {
    redis: ConnectionManager,
    stream: String,
    max_backlog: u64,
}

impl StreamWriter {
    pub fn new(redis: ConnectionManager, region: &str, max_backlog: u64) -> Self {
        Self {
            redis,
            stream: samples_stream(region),
            max_backlog,
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Appends `batch`, with the `traceparent` of the request's span when there is one;
    /// returns the entry id. The backlog is the stream's length: the ETL trims acknowledged
    /// entries, so what remains is (about) what it has not stored yet.
    pub async fn append(
        &self,
        batch: &Batch,
        traceparent: Option<&str>,
    ) -> Result<String, AppendError> {
        // While Redis is down the connection manager reconnects in the background and a
        // command may wait for it: bound the wait so probes hear 503 quickly.
        tokio::time::timeout(REDIS_DEADLINE, self.append_now(batch, traceparent))
            .await
            .unwrap_or(Err(AppendError::Timeout(REDIS_DEADLINE)))
    }

    async fn append_now(
        &self,
        batch: &Batch,
        traceparent: Option<&str>,
    ) -> Result<String, AppendError> {
        let mut redis = self.redis.clone();
        // One round trip, and atomic: the length check and the append cannot be split by
        // another writer's append.
        let mut script = APPEND_UNDER_CAP.key(&self.stream);
        script
            .arg(self.max_backlog)
            .arg(BATCH_FIELD)
            .arg(encode_batch(batch));
        if let Some(tp) = traceparent {
            script.arg(TRACEPARENT_FIELD).arg(tp);
        }
        let appended: Result<String, u64> = script
            .invoke_async::<(Option<String>, u64)>(&mut redis)
            .await
            .map(|(id, len)| id.ok_or(len))?;
        appended.map_err(|len| AppendError::Backlog {
            stream: self.stream.clone(),
            len,
            cap: self.max_backlog,
        })
    }

    /// The stream's length, or `None` when Redis does not answer in time.
    pub async fn length(&self) -> Option<u64> {
        let mut redis = self.redis.clone();
        let stream = self.stream.clone();
        let len = async move { redis.xlen::<_, u64>(&stream).await };
        match tokio::time::timeout(REDIS_DEADLINE, len).await {
            Ok(Ok(n)) => Some(n),
            _ => None,
        }
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        let mut redis = self.redis.clone();
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut redis).await };
        matches!(tokio::time::timeout(REDIS_DEADLINE, ping).await, Ok(Ok(_)))
    }
}
