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
    #[error(
        "stream {stream}'s oldest entry not yet read by the ETL waited {age_ms} ms, over the limit of {limit_ms} ms; the ETL is behind"
    )]
    Behind {
        stream: String,
        age_ms: u64,
        limit_ms: u64,
    },
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

/// XADD unless the stream already holds `ARGV[1]` entries or more, or its oldest entry not
/// yet delivered to the ETL (the one after the consumer group's last-delivered-id; the
/// stream's first when there is no group) is `ARGV[2]` ms old or more (0: no age limit).
/// Returns `{id, length, 0}` on success and `{false, length, age_ms}` when refused (Lua's
/// false becomes a nil reply). The entry's fields are the pairs from `ARGV[3]` on: the
/// batch, then the optional ones.
///
/// The age bounds what a sample waits in Redis: at saturation the length alone let the
/// backlog grow to half a minute of samples (10,000 batches) before anyone was refused.
static APPEND_UNDER_CAP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local len = redis.call('XLEN', KEYS[1])
        if len >= tonumber(ARGV[1]) then
            return {false, len, 0}
        end
        local max_age = tonumber(ARGV[2])
        if max_age > 0 and len > 0 then
            local from = '-'
            local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
            if #groups > 0 then
                local g = groups[1]
                for i = 1, #g, 2 do
                    if g[i] == 'last-delivered-id' then from = '(' .. g[i + 1] end
                end
            end
            local oldest = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1)
            if #oldest > 0 then
                local ms = tonumber(string.match(oldest[1][1], '^(%d+)-'))
                local t = redis.call('TIME')
                local age = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ms
                if age >= max_age then
                    return {false, len, age}
                end
            end
        end
        return {redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3)), len + 1, 0}
        ",
    )
});

/// Default for [`StreamWriter::with_max_age`]: a sample waits at most this long in Redis
/// for the ETL before new batches are refused.
pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct StreamWriter {
    redis: ConnectionManager,
    stream: String,
    max_backlog: u64,
    max_age: std::time::Duration,
}

impl StreamWriter {
    pub fn new(redis: ConnectionManager, region: &str, max_backlog: u64) -> Self {
        Self {
            redis,
            stream: samples_stream(region),
            max_backlog,
            max_age: DEFAULT_MAX_AGE,
        }
    }

    /// Refuse batches while the oldest entry the ETL has not read yet is this old (zero: no
    /// limit but the length).
    pub fn with_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.max_age = max_age;
        self
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
        let max_age_ms = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        script
            .arg(self.max_backlog)
            .arg(max_age_ms)
            .arg(BATCH_FIELD)
            .arg(encode_batch(batch));
        if let Some(tp) = traceparent {
            script.arg(TRACEPARENT_FIELD).arg(tp);
        }
        let (id, len, age_ms) = script
            .invoke_async::<(Option<String>, u64, u64)>(&mut redis)
            .await?;
        match id {
            Some(id) => Ok(id),
            None if age_ms > 0 => Err(AppendError::Behind {
                stream: self.stream.clone(),
                age_ms,
                limit_ms: max_age_ms,
            }),
            None => Err(AppendError::Backlog {
                stream: self.stream.clone(),
                len,
                cap: self.max_backlog,
            }),
        }
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
