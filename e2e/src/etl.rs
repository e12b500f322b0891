//! The database side of a test or bench, reached the way a user reaches it: through the
//! `fiber-etl` binary. Tests of other parts migrate and fill a database with it instead of
//! linking fiber-etl's library (DESIGN.md: a part links only the model, telemetry and
//! plumbing).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fiberstack_model::Batch;
use fiberstack_model::stream::{
    BATCH_FIELD, CONSUMER_GROUP, REASON_FIELD, dead_letter_stream, encode_batch, samples_stream,
};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoGroupsReply, StreamRangeReply};

use crate::{terminate, unique_name, wait_for, workspace_binary};

/// How long [`drain`] waits for the worker to store a stream.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The statements that drop a TimescaleDB test schema `schema` that `fiber-etl migrate` built,
/// in the order TimescaleDB takes them: the continuous aggregates first (a six-hour one before
/// the hourly one it aggregates), then one hypertable a statement — it refuses to drop a
/// hypertable in a schema's cascade, or more than one at once.
pub fn timescale_schema_drop(schema: &str) -> [String; 4] {
    [
        "drop materialized view if exists metrics_latency_6h, metrics_hourly, metrics_daily,
            metrics_latency_hourly, metrics_latency_daily, metrics_latency_node_hourly,
            metrics_latency_node_daily cascade"
            .to_owned(),
        "drop table if exists hops".to_owned(),
        "drop table if exists metrics".to_owned(),
        format!("drop schema {schema} cascade"),
    ]
}

/// `fiber-etl migrate` on `database_url`, in `schema` when given (created if missing);
/// fails with the command's stderr.
pub async fn migrate(database_url: &str, schema: Option<&str>) -> Result<()> {
    let mut command = tokio::process::Command::new(workspace_binary("fiber-etl")?);
    command
        .args(["migrate", "--database-url", database_url])
        .env("FIBER_LOG", "warn")
        .env_remove("FIBER_DB_SCHEMA");
    if let Some(schema) = schema {
        command.args(["--schema", schema]);
    }
    let out = command
        .output()
        .await
        .context("running fiber-etl migrate")?;
    if !out.status.success() {
        bail!(
            "fiber-etl migrate ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Stores `batches` as the data path does: appended to a stream of their own, then written
/// by `fiber-etl run` (see [`drain`]). The stream is deleted afterwards.
pub async fn store(redis_url: &str, database_url: &str, batches: &[Batch]) -> Result<()> {
    let region = unique_name("store");
    let mut redis = connect(redis_url).await?;
    let stream = samples_stream(&region);
    for batch in batches {
        let _: String = redis
            .xadd(&stream, "*", &[(BATCH_FIELD, encode_batch(batch))])
            .await?;
    }
    let drained = drain(redis_url, database_url, &region).await;
    let _: () = redis.del(&[stream, dead_letter_stream(&region)]).await?;
    drained
}

/// Runs `fiber-etl run` for `region` until every entry in the region's stream is written and
/// acknowledged, then stops it with SIGTERM. Fails when the worker exits early or stops
/// badly, and when it dead-lettered an entry (naming the reasons).
pub async fn drain(redis_url: &str, database_url: &str, region: &str) -> Result<()> {
    let mut redis = connect(redis_url).await?;
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("fiber-etl-run")));
    let mut child = std::process::Command::new(workspace_binary("fiber-etl")?)
        .args(["run", "--region", region, "--database-url", database_url])
        .args(["--consumer", "e2e-drain", "--metrics-listen", "127.0.0.1:0"])
        .env("REDIS_URL", redis_url)
        .env("FIBER_LOG", "warn")
        .env_remove("FIBER_DB_SCHEMA")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting fiber-etl run")?;
    let stream = samples_stream(region);
    let drained = wait_for(
        &format!("fiber-etl run to store every entry of {stream}"),
        DRAIN_TIMEOUT,
        Duration::from_millis(100),
        || {
            let exited = child.try_wait();
            let mut redis = redis.clone();
            let stream = stream.clone();
            async move {
                if let Some(status) = exited? {
                    bail!("fiber-etl run exited early ({status})");
                }
                unstored(&mut redis, &stream).await
            }
        },
    )
    .await;
    let stopped = terminate(&mut child, Duration::from_secs(10)).await;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let explain = |e: anyhow::Error| e.context(format!("fiber-etl run's stderr:\n{stderr}"));
    drained.map_err(explain)?;
    let status = stopped.map_err(explain)?;
    if !status.success() {
        return Err(explain(anyhow::anyhow!(
            "fiber-etl run stopped with {status}"
        )));
    }
    let dead: StreamRangeReply = redis.xrange_all(dead_letter_stream(region)).await?;
    if !dead.ids.is_empty() {
        let reasons: Vec<String> = dead
            .ids
            .iter()
            .map(|e| e.get::<String>(REASON_FIELD).unwrap_or_default())
            .collect();
        bail!(
            "fiber-etl dead-lettered {} entries: {reasons:?}",
            reasons.len()
        );
    }
    Ok(())
}

async fn connect(redis_url: &str) -> Result<MultiplexedConnection> {
    redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {redis_url}"))
}

/// `Ok(())` when the consumer group has been handed every entry of `stream` and acknowledged
/// them all; what is left otherwise.
async fn unstored(redis: &mut MultiplexedConnection, stream: &str) -> Result<Result<(), String>> {
    let groups: StreamInfoGroupsReply = match redis.xinfo_groups(stream).await {
        Ok(groups) => groups,
        // Neither the stream nor the group exists until something appends or the worker starts.
        Err(e) => return Ok(Err(format!("no consumer group yet ({e})"))),
    };
    let Some(group) = groups.groups.iter().find(|g| g.name == CONSUMER_GROUP) else {
        return Ok(Err("no consumer group yet".into()));
    };
    let last: StreamRangeReply = redis.xrevrange_count(stream, "+", "-", 1).await?;
    let delivered_all = last
        .ids
        .first()
        // Acknowledged entries are trimmed: an empty stream holds nothing unstored.
        .is_none_or(|entry| entry.id == group.last_delivered_id);
    Ok(if delivered_all && group.pending == 0 {
        Ok(())
    } else {
        Err(format!(
            "delivered up to {}, {} pending, newest entry {:?}",
            group.last_delivered_id,
            group.pending,
            last.ids.first().map(|e| &e.id)
        ))
    })
}
