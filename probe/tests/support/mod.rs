//! Test parts shared by the probe's integration tests: a receiver that speaks the ingest
//! contract (DESIGN.md §3) and records samples by natural key, a `fiber-probe` process, and
//! scratch directories.

#![allow(dead_code)]

pub mod netns;

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
pub use fiberstack_e2e::ReservedPort;
use fiberstack_model::{Batch, Sample};

pub const TOKEN: &str = "test-token";

/// `(node, probe, target, time)`.
pub type Key = (String, String, String, String);

/// A scripted answer instead of the normal 202.
#[derive(Debug, Clone)]
pub enum Scripted {
    Status(u16, Option<u64>),
}

#[derive(Default)]
pub struct Recorded {
    /// How often each natural key arrived in a 202-answered batch (rejected ones included).
    pub keys: BTreeMap<Key, u32>,
    pub samples: Vec<Sample>,
    /// Every request: when it came and the status answered.
    pub requests: Vec<(Instant, u16)>,
    pub script: VecDeque<Scripted>,
    /// Targets whose samples are answered as rejected.
    pub reject_targets: Vec<String>,
    pub rejected_keys: BTreeMap<Key, u32>,
    /// Answer 415 to a binary batch, as an ingest from before the binary encoding does.
    pub json_only: bool,
    /// The `Content-Type` of every request past the token check.
    pub content_types: Vec<String>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<Recorded>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

pub fn key(b: &Batch, s: &Sample) -> Key {
    (
        b.node.clone(),
        b.probe.clone(),
        s.target.clone(),
        s.time.to_rfc3339(),
    )
}

async fn samples(
    State(state): State<Arc<Mutex<Recorded>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = state.lock().unwrap();
    let now = Instant::now();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {TOKEN}") {
        st.requests.push((now, 401));
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    if let Some(Scripted::Status(code, retry)) = st.script.pop_front() {
        st.requests.push((now, code));
        let mut r = (StatusCode::from_u16(code).unwrap(), "scripted").into_response();
        if let Some(s) = retry {
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
        }
        return r;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    st.content_types.push(content_type.clone());
    let binary = content_type == fiberstack_model::binary::MEDIA_TYPE;
    if binary && st.json_only {
        st.requests.push((now, 415));
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json").into_response();
    }
    let bytes = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        body.to_vec()
    };
    let parsed = if binary {
        fiberstack_model::binary::decode(&bytes).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Batch>(&bytes).map_err(|e| e.to_string())
    };
    let batch: Batch = match parsed {
        Ok(b) => b,
        Err(e) => {
            st.requests.push((now, 400));
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    st.requests.push((now, 202));
    let mut rejected = Vec::new();
    for (i, s) in batch.samples.iter().enumerate() {
        let k = key(&batch, s);
        if st.reject_targets.contains(&s.target) {
            *st.rejected_keys.entry(k).or_default() += 1;
            rejected.push(serde_json::json!({"index": i, "error": format!("samples[{i}].target: refused by the test")}));
        } else {
            *st.keys.entry(k).or_default() += 1;
            st.samples.push(s.clone());
        }
    }
    let accepted = batch.samples.len() - rejected.len();
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"accepted": accepted, "rejected": rejected})),
    )
        .into_response()
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, Arc::new(Mutex::new(Recorded::default()))).await
    }

    /// Serves `state` on `addr` (a receiver coming back up keeps what it recorded).
    pub async fn start_with(addr: SocketAddr, state: Arc<Mutex<Recorded>>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, state)
    }

    /// Starts answering on a port the test held until now (a receiver coming up late).
    pub fn start_on_reserved(port: ReservedPort) -> Self {
        Self::serve(
            port.listen().unwrap(),
            Arc::new(Mutex::new(Recorded::default())),
        )
    }

    fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<Recorded>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/api/v1/samples", axum::routing::post(samples))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            state,
            task: Arc::new(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(self) -> Arc<Mutex<Recorded>> {
        self.task.abort();
        self.state.clone()
    }

    pub fn keys(&self) -> BTreeMap<Key, u32> {
        self.state.lock().unwrap().keys.clone()
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "fiber-probe-test-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP listener that accepts and drops connections, as a TCP target.
pub async fn tcp_target() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        }
    });
    (addr, task)
}

/// A configuration of TCP targets to `addr`, delivered to `urls`.
pub fn tcp_config(
    node: &str,
    targets: &[&str],
    addr: SocketAddr,
    urls: &[String],
    buffer: &Path,
    extra: &str,
) -> String {
    let mut text = format!(
        "node: {node}\nprobe: test/probe\nregion: test\ncountry: GH\ninterval: 1s\ntimeout: 500ms\ningest:\n  urls: {urls:?}\n  batchMaxSamples: 50\n  batchMaxDelay: 300ms\nbuffer: {{ dir: {}, maxBytes: 4Mi }}\n{extra}targets:\n",
        buffer.display()
    );
    for t in targets {
        text.push_str(&format!(
            "  - {{ name: {t}, tcp: {{ host: {}, port: {} }} }}\n",
            addr.ip(),
            addr.port()
        ));
    }
    text
}

/// A running `fiber-probe` process; killed on drop.
pub struct ProbeProcess {
    pub child: Child,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fiber-probe")
}

impl ProbeProcess {
    /// A probe of node `n1` measuring the TCP `targets` at `addr` and delivering to `urls`,
    /// its configuration (`tcp_config` with `extra`), buffer and log in `scratch`.
    pub fn start_tcp(
        scratch: &Scratch,
        targets: &[&str],
        addr: SocketAddr,
        urls: &[String],
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = scratch.path("probe.yaml");
        std::fs::write(
            &config,
            tcp_config("n1", targets, addr, urls, &scratch.path("buf"), extra),
        )
        .unwrap();
        Self::start(&config, &scratch.path("log"), env)
    }

    pub fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("--config")
            .arg(config)
            .env("FIBER_TOKEN", TOKEN)
            .env("FIBER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            log: log.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status. Waits without blocking the thread: a test's receiver
    /// runs on the same (single-threaded) runtime and must keep answering the probe's
    /// shutdown flush meanwhile.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        fiberstack_e2e::terminate(&mut self.child, Duration::from_secs(20))
            .await
            .expect("fiber-probe did not exit after SIGTERM")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lets unprivileged ICMP sockets be opened by everyone (tests run as root in CI; the
/// default `1 0` allows nobody, not even root).
pub fn permit_icmp() {
    let path = "/proc/sys/net/ipv4/ping_group_range";
    let now = std::fs::read_to_string(path).unwrap_or_default();
    if now.split_whitespace().collect::<Vec<_>>() != ["0", "2147483647"] {
        std::fs::write(path, "0 2147483647").expect(
            "cannot set net.ipv4.ping_group_range (tests need root, or run sysctl -w net.ipv4.ping_group_range=\"0 2147483647\")",
        );
    }
}

/// For each target, the sample times received, sorted.
pub fn times_by_target(
    keys: &BTreeMap<Key, u32>,
) -> BTreeMap<String, Vec<chrono::DateTime<chrono::Utc>>> {
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for node_probe_target_time in keys.keys() {
        let t = chrono::DateTime::parse_from_rfc3339(&node_probe_target_time.3)
            .unwrap()
            .with_timezone(&chrono::Utc);
        out.entry(node_probe_target_time.2.clone())
            .or_default()
            .push(t);
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Asserts each target's rounds are `interval` apart with none missing (a gap of ≥ 1.5
/// intervals means a lost sample).
pub fn assert_no_gaps(keys: &BTreeMap<Key, u32>, interval: Duration, allowed_gaps: usize) {
    for (target, times) in times_by_target(keys) {
        let gaps: Vec<_> = times
            .windows(2)
            .filter(|w| (w[1] - w[0]).to_std().unwrap() > interval.mul_f64(1.5))
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            gaps.len() <= allowed_gaps,
            "target {target}: samples missing between {gaps:?}"
        );
    }
}
