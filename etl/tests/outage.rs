//! PostgreSQL stopped for 30 s under load, then started again: `fiber-etl run` loses
//! nothing and stores nothing twice. The test runs a PostgreSQL of its own (the shared one
//! serves other tests), with the environment's Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use anyhow::{Context, Result, bail};
use fiberstack_e2e::batch;
use fiberstack_e2e::{LocalEnv, ReservedPort, unique_name, wait_for};
use fiberstack_model::stream::{BATCH_FIELD, CONSUMER_GROUP, encode_batch, samples_stream};
use fiberstack_model::{Batch, CheckKind, Sample};
use fiberstack_plumbing::postgres::DbConfig;
use redis::AsyncCommands;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway PostgreSQL 15 run as the `postgres` user, trust auth on loopback.
struct OwnPostgres {
    dir: PathBuf,
    /// Held across the outage too: a port merely free while the server is down could be
    /// handed to another test's server, and this one could not come back.
    port: ReservedPort,
    server: Option<Child>,
}

impl OwnPostgres {
    fn init() -> Result<Self> {
        let dir = PathBuf::from("/var/tmp").join(unique_name("fiberstack-test-pg"));
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("chown").arg("postgres").arg(&dir).status()?;
        if !status.success() {
            bail!("chown postgres {}", dir.display());
        }
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/initdb"), "-D"])
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self {
            dir,
            port: ReservedPort::new()?,
            server: None,
        })
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port.port()
        )
    }

    async fn start(&mut self) -> Result<()> {
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/postgres"), "-D"])
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.port().to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(&self.dir)
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.server = Some(child);
        let url = self.url();
        wait_for(
            "own PostgreSQL accepting connections",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let url = url.clone();
                async move {
                    Ok(match fiberstack_e2e::connect_postgres(&url).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(format!("{e:#}")),
                    })
                }
            },
        )
        .await
    }

    /// Fast shutdown (SIGINT to the postmaster), waiting until it is gone.
    fn stop(&mut self) -> Result<()> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .context("postmaster.pid")?;
        let pid = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Command::new("kill").args(["-INT", &pid]).status()?;
        if let Some(mut child) = self.server.take() {
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.server.is_some() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Batch `n` of the load: ten samples a few milliseconds apart.
fn numbered_batch(n: u32, base: chrono::DateTime<chrono::Utc>) -> Batch {
    let samples = (0..10u32)
        .map(|i| Sample {
            latency_ms: Some(f64::from(i) + 1.0),
            ..Sample::new(
                base + chrono::Duration::milliseconds(i64::from(n * 10 + i)),
                "db",
                CheckKind::Tcp,
                true,
            )
        })
        .collect();
    batch("gh-accra-1", samples)
}

#[tokio::test]
async fn postgres_down_for_30s_under_load_loses_nothing() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut pg = OwnPostgres::init()?;
    pg.start().await?;
    let pool = DbConfig::new(pg.url()).connect().await?;
    fiber_etl::migrate::migrate(&pool).await?;
    pool.close().await;

    let region = unique_name("outage");
    let metrics = ReservedPort::new()?;
    let mut etl = Command::new(env!("CARGO_BIN_EXE_fiber-etl"))
        .args(["run", "--region", &region, "--consumer", "outage-worker"])
        .args(["--metrics-listen", &metrics.addr().to_string()])
        .env("REDIS_URL", &env.redis_url)
        .env("DATABASE_URL", pg.url())
        .env("FIBER_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;

    let mut redis = env.redis().await?;
    let stream = samples_stream(&region);
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    // Load: a batch every 20 ms, before, during and after a 30 s outage.
    let started = Instant::now();
    let mut n = 0u32;
    let mut stopped_at = None;
    while started.elapsed() < Duration::from_secs(40) {
        let _: String = redis
            .xadd(
                &stream,
                "*",
                &[(BATCH_FIELD, encode_batch(&numbered_batch(n, base)))],
            )
            .await?;
        n += 1;
        if stopped_at.is_none() && started.elapsed() > Duration::from_secs(5) {
            pg.stop()?;
            assert!(
                fiberstack_e2e::connect_postgres(&pg.url()).await.is_err(),
                "PostgreSQL is down"
            );
            stopped_at = Some(Instant::now());
        }
        if let Some(at) = stopped_at
            && pg.server.is_none()
            && at.elapsed() > Duration::from_secs(30)
        {
            pg.start().await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if pg.server.is_none() {
        pg.start().await?;
    }
    let expected = i64::from(n) * 10;
    let url = pg.url();
    let stored = wait_for(
        "every sample stored after the outage",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let url = url.clone();
            async move {
                let db = fiberstack_e2e::connect_postgres(&url).await?;
                let count: i64 = db
                    .query_one("select count(*) from metrics", &[])
                    .await?
                    .get(0);
                Ok(if count == expected {
                    Ok(count)
                } else {
                    Err(format!("{count} of {expected}"))
                })
            }
        },
    )
    .await;
    let metrics = reqwest::get(format!("{}/metrics", metrics.url()))
        .await?
        .text()
        .await?;
    etl.kill()?;
    etl.wait()?;
    assert_eq!(stored?, expected);
    let retries: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"fiber_etl_errors_total{stage="send",error_type="database"} "#)
        })
        .and_then(|v| v.trim().parse().ok())
        .context("fiber_etl_errors_total{stage=send,error_type=database} in /metrics")?;
    assert!(
        retries > 0,
        "the worker met the outage and retried: {metrics}"
    );
    let db = fiberstack_e2e::connect_postgres(&pg.url()).await?;
    let distinct: i64 = db
        .query_one(
            "select count(*) from (select distinct node, probe, target, time from metrics) d",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(distinct, expected, "no duplicates");
    let pending: redis::streams::StreamPendingReply =
        redis.xpending(&stream, CONSUMER_GROUP).await?;
    assert_eq!(pending.count(), 0);
    let _: () = redis.del(&stream).await?;
    Ok(())
}
