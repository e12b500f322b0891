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
    #[error(
        "stream {stream}'s entries not yet read by the ETL span {span_ms} ms of appends (the oldest waited {age_ms} ms), and the ETL reads {speed:.2} s of appends per second: a new one would wait {wait_ms} ms, over the limit of {limit_ms} ms; the ETL is behind"
    )]
    Expected {
        stream: String,
        age_ms: u64,
        span_ms: u64,
        speed: f64,
        wait_ms: u64,
        limit_ms: u64,
    },
}

impl AppendError {
    /// How long a refused writer should wait: for a backlog, 5 s; when a new batch would
    /// wait over the limit, about the time until it would not (the excess, 1 to 5 s) — a
    /// fixed 5 s sent every probe refused together away at once, and the ETL emptied the
    /// stream and idled before they came back.
    pub fn retry_after(&self) -> std::time::Duration {
        let secs = match self {
            Self::Expected {
                wait_ms, limit_ms, ..
            } => wait_ms.saturating_sub(*limit_ms).div_ceil(1000).clamp(1, 5),
            Self::Unavailable(_) | Self::Timeout(_) => 1,
            Self::Backlog { .. } | Self::Behind { .. } => 5,
        };
        std::time::Duration::from_secs(secs)
    }
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

/// The admission check, run by Redis in the same pipeline as the XADD and just before it:
/// `{length, age_ms, delivered_ms, now_ms}` of the stream, where
/// - `age_ms` is how long its oldest entry not yet delivered to the ETL (the one after the
///   consumer group's last-delivered-id; the stream's first when there is no group) has
///   waited, 0 when there is none or when `ARGV[2]` (the age limit, ms) is 0, and when the
///   length alone (`ARGV[1]`, the cap) already refuses;
/// - `delivered_ms` the time in the group's last-delivered-id (when the last entry the ETL
///   read was appended; −1 without a group or before it read anything) and `now_ms` Redis'
///   clock: from both, [`Drain`] measures how fast the ETL gets through the stream.
///
/// The age bounds what a sample waits in Redis: at saturation the length alone let the
/// backlog grow to half a minute of samples (10,000 batches) before anyone was refused.
///
/// Not the group's `lag` and `entries-read` counters: Redis cannot count them once an entry
/// after the group's position was deleted, which is what a refused batch's XDEL does — at
/// saturation they were unknown most of the time. Entry ids are always known.
///
/// The batch is not an argument of the script: a script's arguments are copied into Lua and
/// back, which for a 100 KB batch cost Redis (single-threaded, shared by every ingest and ETL
/// worker of the region) about 0.5 ms per request against 25 µs for the XADD alone.
/// Likewise the oldest undelivered entry (a whole batch) is only read when the group's `lag`
/// says there is one or cannot tell.
const ADMISSION_CHECK: &str = r"
local len = redis.call('XLEN', KEYS[1])
local max_age = tonumber(ARGV[2])
if len >= tonumber(ARGV[1]) or max_age <= 0 or len == 0 then
    return {len, 0, -1, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local from = '-'
local lag = false
local delivered = -1
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups > 0 then
    local g = groups[1]
    for i = 1, #g, 2 do
        local v = g[i + 1]
        if g[i] == 'last-delivered-id' then
            from = '(' .. v
            delivered = tonumber(string.match(v, '^(%d+)-'))
            if delivered == 0 then delivered = -1 end
        end
        if g[i] == 'lag' then lag = v end
    end
end
if lag == 0 then
    return {len, 0, delivered, now}
end
local oldest = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1)
if #oldest == 0 then
    return {len, 0, delivered, now}
end
local ms = tonumber(string.match(oldest[1][1], '^(%d+)-'))
return {len, math.max(now - ms, 0), delivered, now}
";

/// How fast the ETL gets through the stream when it has a backlog — its capacity, not the
/// append rate — as stream time per second: how far the append time of the last entry it
/// read (the group's last-delivered-id) moved, over windows of at least a second in which
/// entries waited unread at both ends (the ETL busy throughout), smoothed. An entry appended
/// now is read once the ETL has gone through the appends since the oldest unread one, the
/// oldest one's age in stream time: at speed `s`, after `age ÷ s`.
///
/// Why: the oldest unread entry's age alone lets freshness grow to the age limit × appended ÷
/// stored — once ingest accepted 3.7 × what the ETL stored, a 10 s limit let samples wait a
/// minute before anyone was refused.
#[derive(Debug, Default)]
struct Drain {
    /// Redis time (ms), the last-delivered entry's time then (ms), and whether entries were
    /// waiting unread.
    anchor: Option<(u64, u64, bool)>,
    /// Stream milliseconds read per millisecond.
    speed: Option<f64>,
    /// Redis time (ms) of this process's last accepted append: the end of the backlog while
    /// it refuses (see [`Drain::expected_wait_ms`]).
    accepted_ms: Option<u64>,
    /// Whether this process refused a batch since its last accepted append.
    refusing: bool,
    /// Stretches of stream time (ms, from and to) in which this process refused every batch:
    /// the ETL reads across one at once, so its length is not counted as stream read — else
    /// the speed measured over it came out several times the ETL's, and batches were taken
    /// until the oldest entry's age refused them again. (Another replica's appends may fall
    /// in one: then the speed is underestimated, never over.)
    gaps: std::collections::VecDeque<(u64, u64)>,
}

/// Refusal stretches kept at most (the oldest are forgotten first).
const MAX_GAPS: usize = 64;

/// A window shorter than this is not measured.
const DRAIN_WINDOW_MS: u64 = 1000;

impl Drain {
    fn observe(&mut self, now_ms: u64, delivered_ms: u64, busy: bool) {
        if let Some((at, then, was_busy)) = self.anchor
            && delivered_ms >= then
            && now_ms >= at
        {
            if now_ms - at < DRAIN_WINDOW_MS {
                // A window starts when the ETL is busy: one that began idle moves on.
                if !was_busy {
                    self.anchor = Some((now_ms, delivered_ms, busy));
                }
                return;
            }
            if was_busy && busy {
                let skipped: u64 = self
                    .gaps
                    .iter()
                    .map(|&(from, to)| to.min(delivered_ms).saturating_sub(from.max(then)))
                    .sum();
                let read = (delivered_ms - then).saturating_sub(skipped);
                let speed = read as f64 / (now_ms - at) as f64;
                self.speed = Some(self.speed.map_or(speed, |old| (old + speed) / 2.0));
            }
        }
        // Else the first look, or a position that went back (a recreated group).
        self.anchor = Some((now_ms, delivered_ms, busy));
        // Stretches the ETL has read past no longer count.
        self.gaps.retain(|&(_, to)| to > delivered_ms);
    }

    /// This process appended a batch at `now_ms` (Redis time).
    fn accepted(&mut self, now_ms: u64) {
        if let Some(last) = self.accepted_ms
            && self.refusing
            && now_ms > last
        {
            if self.gaps.len() == MAX_GAPS {
                self.gaps.pop_front();
            }
            self.gaps.push_back((last, now_ms));
        }
        self.refusing = false;
        self.accepted_ms = Some(now_ms);
    }

    /// The stretch of appends the ETL has still to read before an entry appended at `now_ms`
    /// (Redis time), when the oldest unread one is `age_ms` old: from that one to the last
    /// entry this process accepted — nothing was appended by it since, and an empty stretch
    /// costs the ETL nothing. Measured to `now_ms` itself when this process accepted nothing
    /// after the oldest unread entry (another ingest replica's may be newer: assume so).
    ///
    /// Why: with the age alone (`now − oldest`), a refused stream's backlog seemed to grow
    /// while nobody appended — a new batch's wait was overestimated by the whole time since
    /// the refusals began, the refusals went on while the ETL emptied the stream, and it
    /// idled (4 s of 20 at saturation, the cores 95 % idle, in the load bench).
    fn span_ms(&self, age_ms: u64, now_ms: u64) -> u64 {
        let oldest = now_ms.saturating_sub(age_ms);
        match self.accepted_ms {
            Some(accepted) if accepted >= oldest && accepted <= now_ms => accepted - oldest,
            _ => age_ms,
        }
    }

    /// The wait of an entry appended at `now_ms` (Redis time), in ms, when the oldest unread
    /// one is `age_ms` old: [`Drain::span_ms`] at the measured speed; None before the speed
    /// was measured.
    fn expected_wait_ms(&self, age_ms: u64, now_ms: u64) -> Option<u64> {
        let speed = self.speed?;
        let span = self.span_ms(age_ms, now_ms);
        if age_ms == 0 {
            return Some(0);
        }
        if speed <= 0.0 {
            return Some(u64::MAX);
        }
        Some((span as f64 / speed).min(u64::MAX as f64) as u64)
    }
}

/// Default for [`StreamWriter::with_max_age`]: a sample waits at most this long in Redis
/// for the ETL before new batches are refused.
pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct StreamWriter {
    redis: ConnectionManager,
    stream: String,
    max_backlog: u64,
    max_age: std::time::Duration,
    drain: std::sync::Arc<std::sync::Mutex<Drain>>,
}

impl StreamWriter {
    pub fn new(redis: ConnectionManager, region: &str, max_backlog: u64) -> Self {
        Self {
            redis,
            stream: samples_stream(region),
            max_backlog,
            max_age: DEFAULT_MAX_AGE,
            drain: Default::default(),
        }
    }

    /// Refuse batches while the oldest entry the ETL has not read yet is this old, or while a
    /// new one would wait this long at the rate the ETL reads a backlog (zero: no limit but
    /// the length).
    pub fn with_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.max_age = max_age;
        self
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Appends `batch`, with the `traceparent` of the request's span when there is one,
    /// unless the stream is over its length cap or its oldest unread entry over the age limit;
    /// returns the entry id. Never `Ok` for a batch not appended. The backlog is the stream's length: the ETL trims acknowledged
    /// entries, so what remains is (about) what it has not stored yet.
    pub async fn append(
        &self,
        batch: &Batch,
        traceparent: Option<&str>,
    ) -> Result<String, AppendError> {
        self.append_encoded(encode_batch(batch), traceparent).await
    }

    /// [`Self::append`] of a batch already encoded: `payload` must be what
    /// [`encode_batch`] writes for a valid [`Batch`] (or a binary request body that decoded
    /// as one with nothing refused: the ETL reads either as the same batch).
    pub async fn append_encoded(
        &self,
        payload: Vec<u8>,
        traceparent: Option<&str>,
    ) -> Result<String, AppendError> {
        // While Redis is down the connection manager reconnects in the background and a
        // command may wait for it: bound the wait so probes hear 503 quickly.
        tokio::time::timeout(REDIS_DEADLINE, self.append_now(payload, traceparent))
            .await
            .unwrap_or(Err(AppendError::Timeout(REDIS_DEADLINE)))
    }

    async fn append_now(
        &self,
        payload: Vec<u8>,
        traceparent: Option<&str>,
    ) -> Result<String, AppendError> {
        let mut redis = self.redis.clone();
        let max_age_ms = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        // One round trip: the admission check and the append in one pipeline, the check
        // first. EVAL, not EVALSHA: the script is small, and Redis caches it by its digest,
        // so a restarted Redis (NOSCRIPT) cannot fail the pipeline after the XADD ran.
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(ADMISSION_CHECK)
            .arg(1)
            .arg(&self.stream)
            .arg(self.max_backlog)
            .arg(max_age_ms);
        let xadd = pipe
            .cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg(BATCH_FIELD)
            .arg(payload);
        if let Some(tp) = traceparent {
            xadd.arg(TRACEPARENT_FIELD).arg(tp);
        }
        let ((len, age_ms, delivered_ms, now_ms), id): ((u64, u64, i64, u64), String) =
            pipe.query_async(&mut redis).await?;
        let refused = {
            let mut drain = self.drain.lock().expect("drain lock");
            let expected = match u64::try_from(delivered_ms) {
                Ok(delivered_ms) if max_age_ms > 0 => {
                    drain.observe(now_ms, delivered_ms, age_ms > 0);
                    drain.expected_wait_ms(age_ms, now_ms).map(|wait| {
                        (
                            drain.speed.unwrap_or(0.0),
                            drain.span_ms(age_ms, now_ms),
                            wait,
                        )
                    })
                }
                _ => None,
            };
            let refused = if len >= self.max_backlog {
                AppendError::Backlog {
                    stream: self.stream.clone(),
                    len,
                    cap: self.max_backlog,
                }
            } else if max_age_ms > 0 && age_ms >= max_age_ms {
                AppendError::Behind {
                    stream: self.stream.clone(),
                    age_ms,
                    limit_ms: max_age_ms,
                }
            } else if let Some((speed, span_ms, wait_ms)) = expected
                && wait_ms >= max_age_ms
            {
                AppendError::Expected {
                    stream: self.stream.clone(),
                    age_ms,
                    span_ms,
                    speed,
                    wait_ms,
                    limit_ms: max_age_ms,
                }
            } else {
                // Redis' clock is read when something waits (`now_ms` 0 otherwise: then this
                // append is the backlog's first entry, and no stretch is measured from it).
                if now_ms > 0 {
                    drain.accepted(now_ms);
                }
                return Ok(id);
            };
            drain.refusing = true;
            refused
        };
        // Refused, yet appended: take the entry back (a second round trip, on this path
        // only). Should the ETL read it first, or the XDEL fail, the sample is stored once
        // all the same: the probe sends it again later, and the database's natural key
        // keeps one copy.
        if let Err(e) = redis.xdel::<_, _, u64>(&self.stream, &[&id]).await {
            tracing::warn!(error = %e, id, "cannot take back a refused entry");
        }
        Err(refused)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_speed_is_measured_only_while_the_etl_has_a_backlog() {
        let mut drain = Drain::default();
        assert_eq!(
            drain.expected_wait_ms(100, 10_000),
            None,
            "nothing measured yet"
        );
        drain.observe(10_000, 5_000, false);
        // Idle when the window began: it starts again at the first busy look.
        drain.observe(10_200, 5_100, true);
        drain.observe(11_000, 5_300, true);
        assert_eq!(drain.speed, None, "a window under a second");
        drain.observe(12_200, 5_600, true);
        assert_eq!(drain.speed, Some(0.25), "500 ms of appends read in 2 s");
        assert_eq!(drain.expected_wait_ms(2_000, 12_200), Some(8_000));
        assert_eq!(drain.expected_wait_ms(0, 12_200), Some(0));
        // Refusing since the last accepted append (at 11,000): the backlog ends there, and
        // the wait of a new entry does not grow while nobody appends.
        drain.accepted_ms = Some(11_000);
        assert_eq!(drain.span_ms(2_000, 12_200), 800);
        assert_eq!(drain.expected_wait_ms(2_000, 12_200), Some(3_200));
        assert_eq!(drain.expected_wait_ms(4_000, 14_200), Some(3_200));
        // Last accepted before the oldest unread entry (appended by another replica): up to
        // now, as if appends had gone on.
        assert_eq!(drain.expected_wait_ms(1_000, 12_200), Some(4_000));
        drain.accepted_ms = None;
        // Idle at one end: the ETL read what came, not what it could; not taken.
        drain.observe(13_200, 6_600, false);
        drain.observe(14_200, 7_600, true);
        assert_eq!(drain.speed, Some(0.25));
        // Busy again: smoothed with what was known.
        drain.observe(15_200, 8_350, true);
        assert_eq!(drain.speed, Some(0.5));
        // Stalled with entries waiting: the speed halves each second, a new entry's wait
        // grows.
        drain.observe(16_200, 8_350, true);
        assert_eq!(drain.speed, Some(0.25));
        // A position that went back (the group was made again) starts over.
        drain.observe(17_200, 100, true);
        assert_eq!(drain.speed, Some(0.25));
        drain.observe(18_200, 850, true);
        assert_eq!(drain.speed, Some(0.5));
        // A refusal stretch: accepted at 20,000, everything refused until 23,000. The ETL
        // reading across it (its position 19,500 → 23,500 in a second) read one second of
        // appends, not four.
        let mut drain = Drain::default();
        drain.accepted(20_000);
        drain.accepted(20_500);
        assert!(drain.gaps.is_empty(), "no refusal in between");
        drain.refusing = true;
        drain.accepted(23_000);
        assert_eq!(drain.gaps, [(20_500, 23_000)]);
        drain.observe(30_000, 19_500, true);
        drain.observe(31_000, 23_500, true);
        assert_eq!(drain.speed, Some(1.5));
        assert!(drain.gaps.is_empty(), "read past, forgotten");
        let expected = |wait_ms| AppendError::Expected {
            stream: "s".into(),
            age_ms: 1,
            span_ms: 1,
            speed: 1.0,
            wait_ms,
            limit_ms: 10_000,
        };
        let secs = |e: AppendError| e.retry_after().as_secs();
        assert_eq!(secs(expected(10_000)), 1);
        assert_eq!(secs(expected(12_001)), 3);
        assert_eq!(secs(expected(u64::MAX)), 5);
        let stalled = Drain {
            speed: Some(0.0),
            ..Drain::default()
        };
        assert_eq!(stalled.expected_wait_ms(1, 10_000), Some(u64::MAX));
    }
}
