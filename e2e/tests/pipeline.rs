//! The real binaries together, as they run in a cluster: `fiber-probe` measures loopback
//! targets and delivers to `fiber-ingest`, which appends to Redis; `fiber-etl run` stores the
//! samples in a freshly migrated PostgreSQL database. The parts' own tests each speak to a
//! stand-in of their neighbour; this one checks that the neighbours agree.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use fiberstack_e2e::{LocalEnv, ReservedPort, unique_name, wait_for, workspace_binary};

/// Child processes killed when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Processes {
    fn spawn(&mut self, command: &mut Command) -> Result<()> {
        let child = command
            .env("FIBER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.0.push(child);
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn probe_ingest_etl_and_postgres_agree() -> Result<()> {
    let env = LocalEnv::load()?;
    let database = env.fresh_postgres_database("fs_pipeline").await?;
    let region = unique_name("pipeline");
    let node = unique_name("node");
    let token = "pipeline-token-0123456789abcdef";
    let scratch = std::env::temp_dir().join(unique_name("fs-pipeline"));
    std::fs::create_dir_all(&scratch)?;
    let mut processes = Processes(Vec::new());

    fiberstack_e2e::etl::migrate(&database, None).await?;
    // Held until the end: the processes bind them, and no other test's server can meanwhile.
    let etl_metrics = ReservedPort::new()?;
    let ingest_port = ReservedPort::new()?;
    processes.spawn(
        Command::new(workspace_binary("fiber-etl")?)
            .args(["run", "--region", &region, "--database-url", &database])
            .args(["--metrics-listen", &etl_metrics.addr().to_string()])
            .env("REDIS_URL", &env.redis_url),
    )?;
    let ingest = ingest_port.addr();
    processes.spawn(
        Command::new(workspace_binary("fiber-ingest")?)
            .args(["--region", &region, "--listen", &ingest.to_string()])
            .env("REDIS_URL", &env.redis_url)
            .env("FIBER_TOKEN", token),
    )?;
    // A TCP target that accepts, and (for the HTTP-free part of the contract) ICMP loopback.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_port = target.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = target.accept().await {
            drop(socket);
        }
    });
    let config = scratch.join("probe.yaml");
    std::fs::write(
        &config,
        format!(
            "node: placeholder\n\
             probe: fiberstack/pipeline\n\
             region: {region}\n\
             country: GH\n\
             interval: 2s\n\
             timeout: 1s\n\
             ingest:\n  urls: [\"http://{ingest}\"]\n  batchMaxDelay: 1s\n\
             buffer: {{ dir: {buffer} }}\n\
             targets:\n\
             \x20 - {{ name: loopback, icmp: {{ host: 127.0.0.1, count: 3, spacing: 50ms }} }}\n\
             \x20 - {{ name: listener, tcp: {{ host: 127.0.0.1, port: {target_port} }} }}\n",
            buffer = scratch.join("buffer").display(),
        ),
    )?;
    processes.spawn(
        Command::new(workspace_binary("fiber-probe")?)
            .arg("--config")
            .arg(&config)
            // The overrides a pod gets from the operator: node from the downward API, the
            // token from the region's Secret.
            .env("NODE_NAME", &node)
            .env("FIBER_TOKEN", token),
    )?;

    let db = fiberstack_e2e::connect_postgres(&database).await?;
    let rows = wait_for(
        "two rounds of both targets stored",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let rows = db
                .query(
                    "select target, kind, up, sent, received, packet_loss, error, region, probe
                       from metrics where node = $1 order by time, target",
                    &[&node],
                )
                .await?;
            let rounds = |t: &str| rows.iter().filter(|r| r.get::<_, &str>(0) == t).count();
            Ok(if rounds("loopback") >= 2 && rounds("listener") >= 2 {
                Ok(rows)
            } else {
                Err(format!("{} rows so far", rows.len()))
            })
        },
    )
    .await?;
    for row in &rows {
        let (target, kind, up): (&str, &str, bool) = (row.get(0), row.get(1), row.get(2));
        assert!(up, "{target} is down: {:?}", row.get::<_, Option<&str>>(6));
        assert_eq!(row.get::<_, &str>(7), region);
        assert_eq!(row.get::<_, &str>(8), "fiberstack/pipeline");
        match target {
            "loopback" => {
                assert_eq!(kind, "icmp");
                let sent: Option<i32> = row.get(3);
                let received: Option<i32> = row.get(4);
                assert_eq!((sent, received), (Some(3), Some(3)));
                assert_eq!(row.get::<_, Option<f64>>(5), Some(0.0));
            }
            "listener" => assert_eq!(kind, "tcp"),
            other => panic!("unexpected target {other}"),
        }
    }
    let registered: i64 = db
        .query_one(
            "select count(*) from nodes where name = $1 and country = 'GH'",
            &[&node],
        )
        .await?
        .get(0);
    assert_eq!(registered, 1, "the node is registered");
    drop(processes);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
