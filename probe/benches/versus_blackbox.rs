//! fiber-probe and Prometheus blackbox_exporter side by side (prints figures; never fails
//! on time).
//!
//! The same 1,000 local targets (250 each of ICMP echo to 127.0.0.1, TCP connect to a
//! listener, HTTP GET to a local server, DNS A query to a local responder), each probed once
//! every 10 s — 100 probes/s — first by fiber-probe (its own schedule, samples delivered to a
//! local receiver speaking the ingest contract), then by blackbox_exporter (modules icmp,
//! tcp_connect, http_2xx, dns of a generated blackbox.yml) driven by a scrape loop in this
//! process that calls `/probe?module=…&target=…` 100 times per second, evenly spread. One
//! ICMP echo per probe on both sides: blackbox's icmp prober sends one, so fiber-probe's
//! ICMP targets here have `count: 1`. For each, after a 15 s warm-up, over
//! `PROBE_BENCH_SECS` (default 60): CPU time of the process (user + system) as % of one
//! core, its peak RSS (VmHWM), and the probes done per second. The scrape loop's own CPU
//! (and the targets', which run in this process) is charged to neither.
//!
//! fiber-probe's ICMP rounds in that window (loopback, one echo each, while its batches are
//! delivered): the share that read an RTT above 1 ms.
//!
//! Then the RTT bias: on a veth pair between two network namespaces, the mean RTT of 200
//! echoes from `fiber-probe once` less that of 200 from iputils `ping` (when installed) run
//! at the same time on the same path. Last, the ICMP capacity of one core (as `probe_load`
//! part 2 measures it).
//!
//! blackbox_exporter is not built in CI: the bench says so and skips when the binary is
//! absent. Build it once (the module proxy serves the version when asked by version):
//!
//! ```sh
//! mkdir -p /root/.cache/fiberstack/bbx-build && cd /root/.cache/fiberstack/bbx-build
//! go mod init bbxbuild && go get github.com/prometheus/blackbox_exporter@v0.27.0
//! go build -o /root/.cache/fiberstack/blackbox-v0.27.0/blackbox_exporter github.com/prometheus/blackbox_exporter
//! ```
//!
//! (`GOBIN=… go install …@v0.27.0` works too where the proxy answers its deprecation
//! query.) `BLACKBOX_EXPORTER=/path/to/binary` points elsewhere. Run as root:
//! `cargo bench -p fiber-probe --bench versus_blackbox`. Last it prints one JSON line.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fiberstack_model::Sample;
use support::*;

const DEFAULT_BLACKBOX: &str = "/root/.cache/fiberstack/blackbox-v0.27.0/blackbox_exporter";
const TARGETS: usize = 1000;

/// What one process cost over the measured window.
struct Figures {
    cpu_pct: f64,
    user_pct: f64,
    sys_pct: f64,
    hwm_mib: f64,
    probes_per_s: f64,
    failed: u64,
    /// fiber-probe only: of the ICMP rounds measured (one echo each, while batches were being
    /// delivered), how many, and how many read an RTT above 1 ms.
    icmp_rounds: u64,
    icmp_spikes: u64,
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:>16}: CPU {:.2} % of one core (user {:.2} %, system {:.2} %), peak RSS {:.1} MiB, {:.1} probes/s, {} failed",
        f.cpu_pct, f.user_pct, f.sys_pct, f.hwm_mib, f.probes_per_s, f.failed
    );
}

/// Waits `warmup`, then measures `pid` for `secs`; `done()` counts probes completed so far.
async fn measure(pid: u32, warmup: Duration, secs: u64, done: impl Fn() -> (u64, u64)) -> Figures {
    tokio::time::sleep(warmup).await;
    let cpu0 = cpu_seconds(pid);
    let (ok0, failed0) = done();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu1 = cpu_seconds(pid);
    let wall = t0.elapsed().as_secs_f64();
    let (ok1, failed1) = done();
    let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    Figures {
        cpu_pct: (user + sys) / wall * 100.0,
        user_pct: user / wall * 100.0,
        sys_pct: sys / wall * 100.0,
        hwm_mib: status_kib(pid, "VmHWM:") as f64 / 1024.0,
        probes_per_s: (ok1 + failed1 - ok0 - failed0) as f64 / wall,
        failed: failed1 - failed0,
        icmp_rounds: 0,
        icmp_spikes: 0,
    }
}

struct Targets {
    tcp: std::net::SocketAddr,
    http: std::net::SocketAddr,
    dns: std::net::SocketAddr,
}

const KINDS: [&str; 4] = ["icmp", "tcp", "http", "dns"];

async fn fiber_probe(t: &Targets, secs: u64) -> Figures {
    let scratch = Scratch::new("versus-fiber");
    let receiver = Receiver::start().await;
    let mut text = format!(
        "node: bench\nprobe: bench/probe\nregion: bench\ncountry: GH\ninterval: 10s\ntimeout: 2s\ningest: {{ urls: [\"{}\"] }}\nbuffer: {{ dir: {}, maxBytes: 64Mi }}\ntargets:\n",
        receiver.url(),
        scratch.path("buf").display()
    );
    for i in 0..TARGETS / KINDS.len() {
        let (tcp, http, dns) = (t.tcp.port(), t.http, t.dns);
        text.push_str(&format!(
            "  - {{ name: icmp{i}, icmp: {{ host: 127.0.0.1, count: 1 }} }}\n  - {{ name: tcp{i}, tcp: {{ host: 127.0.0.1, port: {tcp} }} }}\n  - {{ name: http{i}, http: {{ url: \"http://{http}/ok\" }} }}\n  - {{ name: dns{i}, dns: {{ query: host{i}.bench.test, server: \"{dns}\" }} }}\n"
        ));
    }
    let config = scratch.path("probe.yaml");
    std::fs::write(&config, text).unwrap();
    let mut probe = ProbeProcess::start(&config, &scratch.path("log"), &[("FIBER_LOG", "warn")]);
    let pid = probe.child.id();
    // Samples arrive in batches: what is counted is the rounds that started inside the
    // measured window, once the batches carrying them have arrived.
    let window = std::sync::Mutex::new((chrono::Utc::now(), chrono::Utc::now()));
    let counts = || {
        let mut w = window.lock().unwrap();
        w.0 = w.1;
        w.1 = chrono::Utc::now();
        (0, 0)
    };
    let mut f = measure(pid, Duration::from_secs(15), secs, counts).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (from, to) = *window.lock().unwrap();
    {
        let st = receiver.state.lock().unwrap();
        let inside: Vec<&Sample> = st
            .samples
            .iter()
            .filter(|s| s.time >= from && s.time < to)
            .collect();
        let wall = (to - from).as_seconds_f64();
        f.probes_per_s = inside.len() as f64 / wall;
        f.failed = inside.iter().filter(|s| !s.up).count() as u64;
        let icmp: Vec<f64> = inside
            .iter()
            .filter(|s| s.kind == fiberstack_model::CheckKind::Icmp)
            .filter_map(|s| s.latency_ms)
            .collect();
        f.icmp_rounds = icmp.len() as u64;
        f.icmp_spikes = icmp.iter().filter(|&&ms| ms > 1.0).count() as u64;
    }
    assert!(probe.terminate().await.success());
    f
}

fn blackbox_config() -> String {
    "modules:
  icmp:
    prober: icmp
    timeout: 2s
    icmp:
      preferred_ip_protocol: ip4
  tcp_connect:
    prober: tcp
    timeout: 2s
    tcp:
      preferred_ip_protocol: ip4
  http_2xx:
    prober: http
    timeout: 2s
    http:
      preferred_ip_protocol: ip4
  dns:
    prober: dns
    timeout: 2s
    dns:
      preferred_ip_protocol: ip4
      transport_protocol: udp
      query_name: host.bench.test
      query_type: A
"
    .to_string()
}

/// The module and target of blackbox probe `i`.
fn blackbox_probe(t: &Targets, i: usize) -> (&'static str, String) {
    match i % KINDS.len() {
        0 => ("icmp", "127.0.0.1".into()),
        1 => ("tcp_connect", t.tcp.to_string()),
        2 => ("http_2xx", format!("http://{}/ok", t.http)),
        _ => ("dns", t.dns.to_string()),
    }
}

async fn blackbox(bin: &str, t: &Targets, secs: u64) -> Figures {
    let scratch = Scratch::new("versus-blackbox");
    let config = scratch.path("blackbox.yml");
    std::fs::write(&config, blackbox_config()).unwrap();
    let port = ReservedPort::new().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address={listen}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path("log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client
            .get(format!("{base}/-/healthy"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blackbox_exporter did not come up; its log: {}",
            std::fs::read_to_string(scratch.path("log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let urls: Vec<String> = (0..TARGETS)
        .map(|i| {
            let (module, target) = blackbox_probe(t, i);
            let mut url = url::Url::parse(&format!("{base}/probe")).unwrap();
            url.query_pairs_mut()
                .append_pair("module", module)
                .append_pair("target", &target);
            url.to_string()
        })
        .collect();
    // 100 probes per second, one every 10 ms, each target once per 10 s.
    let scraper = {
        let (ok, failed, first_failure) = (ok.clone(), failed.clone(), first_failure.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0.. {
                tick.tick().await;
                let url = urls[i % urls.len()].clone();
                let (client, ok, failed, first_failure) = (
                    client.clone(),
                    ok.clone(),
                    failed.clone(),
                    first_failure.clone(),
                );
                tokio::spawn(async move {
                    let body = match client.get(&url).send().await {
                        Ok(r) => r.text().await.unwrap_or_default(),
                        Err(e) => e.to_string(),
                    };
                    if body.lines().any(|l| l == "probe_success 1") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_failure.lock().unwrap().get_or_insert_with(|| {
                            format!("{url}: {}", &body[..body.len().min(400)])
                        });
                    }
                });
            }
        })
    };
    let counts = || (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let f = measure(pid, Duration::from_secs(15), secs, counts).await;
    scraper.abort();
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some(e) = first_failure.lock().unwrap().take() {
        println!("first failed blackbox probe: {e}");
    }
    f
}

fn run(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Mean RTT (ms) of fiber-probe and of ping across a veth pair between two namespaces.
fn rtt_versus_ping() -> Option<(f64, f64)> {
    if !run(&["sh", "-c", "command -v ping"]) {
        println!("RTT bias: iputils ping is not installed; skipped");
        return None;
    }
    let tag = std::process::id();
    let (a, b) = (format!("fpva-{tag}"), format!("fpvb-{tag}"));
    let ok = run(&["ip", "netns", "add", &a])
        && run(&["ip", "netns", "add", &b])
        && run(&[
            "ip",
            "netns",
            "exec",
            &a,
            "sh",
            "-c",
            &format!(
                "ip link set lo up && sysctl -qw net.ipv4.ping_group_range='0 2147483647' && ip link add va{tag} type veth peer name vb{tag} netns {b} && ip addr add 10.78.0.1/24 dev va{tag} && ip link set va{tag} up"
            ),
        ])
        && run(&[
            "ip",
            "netns",
            "exec",
            &b,
            "sh",
            "-c",
            &format!(
                "ip link set lo up && ip addr add 10.78.0.2/24 dev vb{tag} && ip link set vb{tag} up"
            ),
        ]);
    let result = ok.then(|| {
        let scratch = Scratch::new("versus-rtt");
        let config = scratch.path("probe.yaml");
        let mut text = String::from(
            "node: bench\nprobe: bench/probe\nregion: bench\ncountry: GH\ninterval: 30s\ntimeout: 1s\ningest: { urls: [\"http://127.0.0.1:1\"] }\ntargets:\n",
        );
        for i in 0..2 {
            text.push_str(&format!(
                "  - {{ name: v{i}, icmp: {{ host: 10.78.0.2, count: 100, spacing: 10ms }} }}\n"
            ));
        }
        std::fs::write(&config, text).unwrap();
        // ping runs over the same two seconds as the probe, so both see the same machine.
        let ping = Command::new("ip")
            .args(["netns", "exec", &a, "ping", "-q", "-n", "-c", "200", "-i", "0.01", "10.78.0.2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &a, binary(), "once", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let samples: Vec<Sample> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let (sum, n) = samples.iter().fold((0.0, 0u32), |(s, n), x| {
            let r = x.received.unwrap_or(0);
            (s + x.latency_ms.unwrap_or(0.0) * f64::from(r), n + r)
        });
        let ping = ping.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&ping.stdout);
        let ping_mean: Option<f64> = text
            .lines()
            .find(|l| l.contains("min/avg/max"))
            .and_then(|l| l.split('=').nth(1))
            .and_then(|f| f.trim().split('/').nth(1))
            .and_then(|m| m.parse().ok());
        (n > 0).then(|| sum / f64::from(n)).zip(ping_mean)
    });
    run(&["ip", "netns", "del", &a]);
    run(&["ip", "netns", "del", &b]);
    result.flatten()
}

fn main() {
    let bin = std::env::var("BLACKBOX_EXPORTER").unwrap_or_else(|_| DEFAULT_BLACKBOX.into());
    if !std::path::Path::new(&bin).is_file() {
        println!(
            "versus_blackbox: SKIPPED: no blackbox_exporter binary at {bin} (it is not built in CI). Build it as this bench's header says, or set BLACKBOX_EXPORTER."
        );
        return;
    }
    let secs: u64 = std::env::var("PROBE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    permit_icmp();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let load_before = load_average();
    let (fiber, bbx) = rt.block_on(async {
        let (tcp, _t) = tcp_target().await;
        let targets = Targets {
            tcp,
            http: http_server().await,
            dns: dns_responder().await,
        };
        let fiber = fiber_probe(&targets, secs).await;
        let bbx = blackbox(&bin, &targets, secs).await;
        (fiber, bbx)
    });
    let load_after = load_average();
    println!(
        "== {TARGETS} targets (250 each of ICMP 1 echo, TCP, HTTP, DNS; all local) at 10 s = 100 probes/s, {secs} s measured after 15 s warm-up, one after the other; load average {load_before} before, {load_after} after (2 shared cores)"
    );
    print("fiber-probe", &fiber);
    print("blackbox_exporter", &bbx);
    let (cpu_ratio, rss_ratio) = (fiber.cpu_pct / bbx.cpu_pct, fiber.hwm_mib / bbx.hwm_mib);
    println!(
        "fiber-probe / blackbox_exporter: CPU {cpu_ratio:.2}×, peak RSS {rss_ratio:.2}× (goal ≤ 0.5× on both)"
    );
    let spikes_pct = 100.0 * fiber.icmp_spikes as f64 / fiber.icmp_rounds.max(1) as f64;
    println!(
        "fiber-probe ICMP rounds (loopback, while batches were delivered): {} of {} read above 1 ms ({spikes_pct:.3} %; goal < 0.1 %)",
        fiber.icmp_spikes, fiber.icmp_rounds
    );
    let rtt = rtt_versus_ping();
    if let Some((probe, ping)) = rtt {
        println!(
            "RTT on a veth pair (200 echoes each, at the same time): fiber-probe mean {probe:.4} ms, ping mean {ping:.4} ms, bias {:+.1} µs",
            (probe - ping) * 1000.0
        );
    }
    let icmp_per_s_core = icmp_capacity();
    let commit = commit();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{}",
        serde_json::json!({
            "bench": "probe",
            "targets": TARGETS,
            "cpu_pct": round2(fiber.cpu_pct),
            "rss_mb": round2(fiber.hwm_mib),
            "icmp_per_s_core": icmp_per_s_core.round(),
            "icmp_spikes_pct": round2(spikes_pct),
            "blackbox_cpu_pct": round2(bbx.cpu_pct),
            "blackbox_rss_mb": round2(bbx.hwm_mib),
            "rtt_bias_us": rtt.map(|(p, q)| round2((p - q) * 1000.0)),
            "commit": commit,
            "cores": cores,
        })
    );
}

/// The checked-out commit, read from the repository's files (no git command is run).
fn commit() -> String {
    let git = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    let head = std::fs::read_to_string(git.join("HEAD")).unwrap_or_default();
    let head = head.trim();
    let full = match head.strip_prefix("ref: ") {
        Some(r) => std::fs::read_to_string(git.join(r))
            .ok()
            .or_else(|| {
                let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
                packed
                    .lines()
                    .find(|l| l.ends_with(r))
                    .map(|l| l.split(' ').next().unwrap_or("").to_string())
            })
            .unwrap_or_default(),
        None => head.to_string(),
    };
    full.trim().chars().take(12).collect()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
