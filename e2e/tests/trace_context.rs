//! Trace context across the data path, with the real binaries: `fiber-probe` → `fiber-ingest`
//! → Redis stream → `fiber-etl run` → PostgreSQL, each exporting spans over OTLP/HTTP to a
//! receiver in this test. The probe's delivery, ingest's handling and the ETL's write must
//! form one trace (the write linking to it, as one write serves many probes). Without an
//! OTLP endpoint nothing carries trace context and the logs stay JSON lines.
//!
//! Between the probe and ingest sits a TCP relay that records what the probe sends, to see
//! the `traceparent` header on the wire (or its absence).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use fiberstack_e2e::{LocalEnv, ReservedPort, terminate, unique_name, wait_for, workspace_binary};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "trace-context-token-0123456789abcdef";

/// Child processes killed when the test ends, however it ends; their stderr in files.
struct Processes {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Processes {
    fn spawn(&mut self, name: &str, command: &mut Command, otlp: Option<SocketAddr>) -> Result<()> {
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            command.env_remove(var);
        }
        if let Some(otlp) = otlp {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"));
            // Export every 200 ms instead of every 5 s (the test waits for the spans),
            // unless the test chose its own delay.
            if !command
                .get_envs()
                .any(|(k, _)| k == "OTEL_BSP_SCHEDULE_DELAY")
            {
                command.env("OTEL_BSP_SCHEDULE_DELAY", "200");
            }
        }
        let stderr = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = command
            .env("FIBER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.children.push(child);
        Ok(())
    }

    fn log(&self, name: &str) -> Result<String> {
        Ok(std::fs::read_to_string(
            self.dir.join(format!("{name}.log")),
        )?)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One span as received, ids in hex.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// (trace id, span id)
    links: Vec<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Spans = Arc<Mutex<Vec<Exported>>>;

/// An OTLP/HTTP trace receiver (protobuf, `POST /v1/traces`), as a collector would run it.
async fn otlp_receiver() -> Result<(SocketAddr, Spans)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let spans = Spans::default();
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let request = match ExportTraceServiceRequest::decode(body) {
                    Ok(r) => r,
                    Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()),
                };
                let mut store = store.lock().unwrap();
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                        .map(|v| match v {
                            Value::StringValue(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                        store.push(Exported {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            links: span
                                .links
                                .iter()
                                .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                                .collect(),
                        });
                    }
                }
                // An empty ExportTraceServiceResponse.
                (StatusCode::OK, String::new())
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, spans))
}

/// A TCP relay to `upstream` that keeps every byte its clients sent.
async fn recording_relay(upstream: SocketAddr) -> Result<(SocketAddr, Arc<Mutex<Vec<u8>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = client_read.read(&mut buf).await?;
                        if n == 0 {
                            return server_write.shutdown().await;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        server_write.write_all(&buf[..n]).await?;
                    }
                };
                let down = tokio::io::copy(&mut server_read, &mut client_write);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok((addr, sent))
}

/// The `traceparent` header values in the recorded requests.
fn traceparents_sent(bytes: &[u8]) -> Vec<String> {
    // Requests' bodies are gzip; only header lines are read, found by their CRLF framing.
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n")
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("traceparent")
                .then(|| value.trim().to_owned())
        })
        .collect()
}

/// Every line of a log is a JSON object in the house format.
fn assert_json_lines(name: &str, log: &str) {
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{name}: a log line that is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "fields", "target"] {
            assert!(value.get(key).is_some(), "{name}: no {key:?} in {line}");
        }
    }
}

fn write_probe_config(
    dir: &Path,
    region: &str,
    ingest: SocketAddr,
    target_port: u16,
) -> Result<PathBuf> {
    let config = dir.join("probe.yaml");
    std::fs::write(
        &config,
        format!(
            "node: placeholder\n\
             probe: fiberstack/trace-context\n\
             region: {region}\n\
             country: GH\n\
             interval: 2s\n\
             timeout: 1s\n\
             ingest:\n  urls: [\"http://{ingest}\"]\n  batchMaxDelay: 1s\n\
             buffer: {{ dir: {buffer} }}\n\
             targets:\n\
             \x20 - {{ name: listener, tcp: {{ host: 127.0.0.1, port: {target_port} }} }}\n",
            buffer = dir.join("buffer").display(),
        ),
    )?;
    Ok(config)
}

/// Starts ingest on `region` and a probe delivering to it through a recording relay.
async fn probe_and_ingest(
    processes: &mut Processes,
    env: &LocalEnv,
    region: &str,
    node: &str,
    otlp: Option<SocketAddr>,
) -> Result<Arc<Mutex<Vec<u8>>>> {
    let ingest_port = ReservedPort::new()?;
    let ingest = ingest_port.addr();
    processes.spawn(
        "ingest",
        Command::new(workspace_binary("fiber-ingest")?)
            .args(["--region", region, "--listen", &ingest.to_string()])
            .env("REDIS_URL", &env.redis_url)
            .env("FIBER_TOKEN", TOKEN),
        otlp,
    )?;
    let (relay, sent) = recording_relay(ingest).await?;
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target_port = target.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = target.accept().await {
            drop(socket);
        }
    });
    let config = write_probe_config(&processes.dir, region, relay, target_port)?;
    processes.spawn(
        "probe",
        Command::new(workspace_binary("fiber-probe")?)
            .arg("--config")
            .arg(&config)
            .env("NODE_NAME", node)
            .env("FIBER_TOKEN", TOKEN),
        otlp,
    )?;
    Ok(sent)
}

fn scratch(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn one_trace_from_probe_through_ingest_to_the_etl_write() -> Result<()> {
    let env = LocalEnv::load()?;
    let (otlp, spans) = otlp_receiver().await?;
    let database = env.fresh_postgres_database("fs_trace").await?;
    let region = unique_name("trace");
    let node = unique_name("node");
    let mut processes = Processes {
        children: Vec::new(),
        dir: scratch("fs-trace")?,
    };
    fiberstack_e2e::etl::migrate(&database, None).await?;
    let etl_metrics = ReservedPort::new()?;
    processes.spawn(
        "etl",
        Command::new(workspace_binary("fiber-etl")?)
            .args(["run", "--region", &region, "--database-url", &database])
            .args(["--metrics-listen", &etl_metrics.addr().to_string()])
            .env("REDIS_URL", &env.redis_url),
        Some(otlp),
    )?;
    let sent = probe_and_ingest(&mut processes, &env, &region, &node, Some(otlp)).await?;

    // A chain: the ETL's write links to an ingest request span, whose parent is a probe
    // delivery span of the same trace.
    let (probe, ingest, etl) = wait_for(
        "a probe delivery, its ingest request and the ETL write linked in the exported spans",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let spans = spans.lock().unwrap().clone();
            let of = |service: &str, name: &str| {
                spans
                    .iter()
                    .filter(|s| s.service == service && s.name == name)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (deliveries, requests, writes) = (
                of("fiber-probe", "deliver_batch"),
                of("fiber-ingest", "post_samples"),
                of("fiber-etl", "store_entries"),
            );
            for write in &writes {
                for (trace_id, span_id) in &write.links {
                    let Some(request) = requests
                        .iter()
                        .find(|r| &r.trace_id == trace_id && &r.span_id == span_id)
                    else {
                        continue;
                    };
                    if let Some(delivery) = deliveries.iter().find(|d| {
                        d.trace_id == request.trace_id && d.span_id == request.parent_span_id
                    }) {
                        return Ok(Ok((delivery.clone(), request.clone(), write.clone())));
                    }
                }
            }
            Ok(Err(format!(
                "{} deliveries, {} ingest requests, {} writes ({} links) so far",
                deliveries.len(),
                requests.len(),
                writes.len(),
                writes.iter().map(|w| w.links.len()).sum::<usize>()
            )))
        },
    )
    .await?;
    assert_eq!(probe.trace_id, ingest.trace_id);
    assert_ne!(probe.span_id, ingest.span_id);
    assert!(
        etl.links
            .contains(&(ingest.trace_id.clone(), ingest.span_id.clone())),
        "{etl:?}"
    );
    // The write starts its own trace: it serves entries of many traces at once.
    assert_ne!(etl.trace_id, probe.trace_id);

    // On the wire: the probe sent its delivery span as `traceparent`.
    let on_wire = traceparents_sent(&sent.lock().unwrap());
    assert!(
        on_wire.contains(&format!("00-{}-{}-01", probe.trace_id, probe.span_id)),
        "delivery span {} / {} not among the traceparents sent: {on_wire:?}",
        probe.trace_id,
        probe.span_id
    );

    // The samples themselves arrived, as without tracing.
    let db = fiberstack_e2e::connect_postgres(&database).await?;
    let stored: i64 = db
        .query_one("select count(*) from metrics where node = $1", &[&node])
        .await?
        .get(0);
    assert!(stored > 0, "no samples stored");
    for name in ["ingest", "probe", "etl"] {
        assert_json_lines(name, &processes.log(name)?);
    }
    let dir = processes.dir.clone();
    drop(processes);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn without_an_otlp_endpoint_no_trace_context_travels() -> Result<()> {
    let env = LocalEnv::load()?;
    let region = unique_name("untraced");
    let node = unique_name("node");
    let mut processes = Processes {
        children: Vec::new(),
        dir: scratch("fs-untraced")?,
    };
    // No ETL: the entries stay in the stream to be read here.
    let sent = probe_and_ingest(&mut processes, &env, &region, &node, None).await?;
    let stream = fiberstack_model::stream::samples_stream(&region);
    let mut redis = env.redis().await?;
    let entries = wait_for(
        "entries from the probe in the stream",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let mut redis = redis.clone();
            let stream = stream.clone();
            async move {
                let reply: redis::streams::StreamRangeReply =
                    redis::AsyncCommands::xrange_all(&mut redis, &stream).await?;
                Ok(if reply.ids.len() >= 2 {
                    Ok(reply.ids)
                } else {
                    Err(format!("{} entries so far", reply.ids.len()))
                })
            }
        },
    )
    .await?;
    for entry in &entries {
        assert!(
            entry
                .map
                .contains_key(fiberstack_model::stream::BATCH_FIELD)
        );
        assert!(
            !entry
                .map
                .contains_key(fiberstack_model::stream::TRACEPARENT_FIELD),
            "an entry carries trace context with tracing off: {entry:?}"
        );
    }
    let recorded = sent.lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&recorded).contains("POST /api/v1/samples"),
        "the relay saw no delivery"
    );
    assert_eq!(traceparents_sent(&recorded), Vec::<String>::new());
    let ingest_log = processes.log("ingest")?;
    assert!(ingest_log.contains("ingest ready"), "{ingest_log}");
    assert_json_lines("ingest", &ingest_log);
    assert_json_lines("probe", &processes.log("probe")?);
    let _: () = redis::AsyncCommands::del(&mut redis, &stream).await?;
    let dir = processes.dir.clone();
    drop(processes);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn spans_still_queued_are_exported_when_sigterm_stops_a_binary() -> Result<()> {
    let env = LocalEnv::load()?;
    let (otlp, spans) = otlp_receiver().await?;
    let region = unique_name("flush");
    let ingest_port = ReservedPort::new()?;
    let ingest = ingest_port.addr();
    let mut processes = Processes {
        children: Vec::new(),
        dir: scratch("fs-flush")?,
    };
    processes.spawn(
        "ingest",
        Command::new(workspace_binary("fiber-ingest")?)
            .args(["--region", &region, "--listen", &ingest.to_string()])
            .env("REDIS_URL", &env.redis_url)
            .env("FIBER_TOKEN", TOKEN)
            // No scheduled export within the test: what arrives was flushed at exit.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        Some(otlp),
    )?;
    // Any request makes a handler span, even one refused as invalid.
    let answer = wait_for(
        "fiber-ingest to answer a request",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let Ok(mut socket) = tokio::net::TcpStream::connect(ingest).await else {
                return Ok(Err("not listening yet".to_owned()));
            };
            socket
                .write_all(
                    format!(
                        "POST /api/v1/samples HTTP/1.1\r\nhost: ingest\r\n\
                         authorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n\
                         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
                         content-length: 2\r\nconnection: close\r\n\r\n{{}}"
                    )
                    .as_bytes(),
                )
                .await?;
            let mut answer = String::new();
            socket.read_to_string(&mut answer).await?;
            Ok(Ok(answer))
        },
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Give a (wrongly) scheduled export time to show up before the stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        spans.lock().unwrap().is_empty(),
        "spans exported before the stop: the test would prove nothing"
    );
    let exit = terminate(&mut processes.children[0], Duration::from_secs(30)).await?;
    assert!(exit.success(), "{exit:?}: {}", processes.log("ingest")?);
    let exported = spans.lock().unwrap().clone();
    let request = exported
        .iter()
        .find(|s| s.service == "fiber-ingest" && s.name == "post_samples")
        .unwrap_or_else(|| panic!("the request's span was not flushed at exit: {exported:?}"));
    assert_eq!(request.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(request.parent_span_id, "00f067aa0ba902b7");
    let dir = processes.dir.clone();
    drop(processes);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
