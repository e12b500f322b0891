//! Load figures of `fiber-probe` (prints them; never fails on time).
//!
//! 1. 1,000 local targets (250 each of ICMP to 127.0.0.1 with 5 echoes, TCP connect to a
//!    listener, HTTP GET to a local server, DNS A query to a local responder) at a 10 s
//!    interval, delivered to a local receiver speaking the ingest contract. After a 15 s
//!    warm-up, over `PROBE_BENCH_SECS` (default 120): the probe process's peak RSS (VmHWM),
//!    its CPU time as % of one core, and samples/s the receiver accepted.
//! 2. ICMP capacity of one core: `fiber-probe once` with 100 targets × 100 echoes 10 ms
//!    apart (10,000 echoes offered at 10,000/s), inside a network namespace whose nftables
//!    rule drops 30 % of echo requests: echoes per CPU-second of the process (user + system,
//!    so the kernel's loopback work is charged to it) and the loss it measured.
//!
//! Run: `cargo bench -p fiber-probe` (as root: it sets net.ipv4.ping_group_range and uses
//! `ip netns`). `PROBE_BENCH_SECS=30` shortens part 1; `PROBE_BENCH_KINDS=icmp,tcp` limits it
//! to some kinds (still 1,000 targets); `PROBE_BENCH_SKIP_ICMP=1` skips part 2;
//! `PROBE_BENCH_BASELINE=/path/to/another/fiber-probe[,…]` runs those binaries on the same targets
//! side by side with this build's over the same window and prints both (on a shared machine
//! only figures taken at the same time compare); `PROBE_BENCH_BINARY` replaces this build's.
//!
//! Measured 2026-11-23 on 2 shared vCPUs with a load average of about 6 (other builds):
//! part 1, 120 s: VmHWM 8.2 MiB, CPU 3.39 % of one core (user 1.32 %, system 2.07 %),
//! 100.0 samples/s delivered, none down; part 2: 57,800 echoes per CPU-second, 29.71 %
//! loss measured for 30 % injected. 1,000 targets at 10 s is 100 rounds/s, about 340 µs of
//! CPU per round, two thirds of it in the kernel, which on loopback includes the targets'
//! side of every exchange (a SYN's SYN-ACK, the echo reply, the DNS answer are processed in
//! the probe's system calls). A profile of the DNS-only run: 60 % in system calls, of which
//! about a third is the per-round socket's life (socket, bind, epoll_ctl, close).
//!
//! 2026-11-30, one ICMP socket per address family shared by all rounds (was one per round),
//! RTTs from kernel receive timestamps; 2 shared vCPUs, load average 4.7 (other builds),
//! 60 s: part 1 before 3.40 % of one core (user 1.32, system 2.08), VmHWM 10.2 MiB; after
//! 3.13 % (user 1.28, system 1.85), VmHWM 10.4 MiB. ICMP only (1,000 ICMP targets, 5 echoes,
//! the old and new binaries side by side at the same time): 3.43 % → 2.93 %. Part 2: 95,200
//! → 101,000 echoes per CPU-second. Against blackbox_exporter: `benches/versus_blackbox.rs`.
//!
//! 2026-11-30 (later), each `PROBE_BENCH_BASELINE` run side by side with the binary from
//! before these changes, 2 shared vCPUs, load average 4–6 (other builds). Profile of the mixed
//! run before (perf, 60 s): runtime wake-ups (epoll_wait, context switch, timer wheel) 19 %
//! and 6 % more in the timer wheel, ICMP 17 %, TCP connects 13 % + 9 %, HTTP 11 %, buffer
//! append (JSON, allocation, one write) 9 %, DNS 7 %, the targets' loop 6 %, delivery 1 %,
//! fsync 1 %; netfilter (the host's kube-proxy rules and conntrack) 7 % across all kinds.
//! About 240 wake-ups/s: one per round start and one per ICMP echo, each costing more than
//! the round it started. Changes: DNS over one UDP socket per family with kernel receive
//! timestamps (DNS only 1.87 → 1.55 %); the sample record encoded into a reused buffer; round
//! starts on a 50 ms grid (`schedule::GRID`), so that 5 rounds share a wake-up (grid 20 ms:
//! 2.23 → 1.78 %, 50 ms: 1.26 %, 100 ms: 0.85 %). Mixed, 120 s: 2.70 % (user 1.33, system
//! 1.37), VmHWM 10.6 MiB before → 1.37 % (user 0.72, system 0.64), VmHWM 11.6 MiB after. Per
//! kind, 60 s: DNS 2.67 → 0.62 %, TCP 2.78 → 0.95 %, HTTP 3.53 → 1.27 %, ICMP 3.40 → 1.13 %.
//! The price of the grid, in the latencies this bench prints (p50, loopback, same run): TCP
//! 0.135 → 0.270 ms, HTTP 0.342 → 0.461 ms, DNS 0.115 → 0.209 ms: the rounds of a step hit the
//! local targets, which answer one after another, at once; ICMP 0.014 → 0.007 ms.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use support::*;

/// A probe process under measurement and where its samples go.
struct Measured {
    name: String,
    probe: ProbeProcess,
    receiver: Receiver,
    cpu0: (f64, f64),
    samples0: usize,
}

/// Starts `binary` on the targets of `targets` (YAML list items), delivering to a receiver
/// of its own.
async fn start_probe(
    name: &str,
    binary: &str,
    targets: &str,
    scratch: &Scratch,
) -> (ProbeProcess, Receiver) {
    let receiver = Receiver::start().await;
    let text = format!(
        "node: bench\nprobe: bench/{name}\nregion: bench\ncountry: GH\ninterval: 10s\ntimeout: 2s\ningest: {{ urls: [\"{}\"] }}\nbuffer: {{ dir: {}, maxBytes: 64Mi }}\ntargets:\n{targets}",
        receiver.url(),
        scratch.path(&format!("buf-{name}")).display()
    );
    let config = scratch.path(&format!("probe-{name}.yaml"));
    std::fs::write(&config, text).unwrap();
    let log = scratch.path(&format!("log-{name}"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("FIBER_TOKEN", TOKEN)
        .env("FIBER_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap();
    (ProbeProcess { child, log }, receiver)
}

async fn load(secs: u64) {
    permit_icmp();
    let scratch = Scratch::new("bench");
    let (tcp, _t) = tcp_target().await;
    let http = http_server().await;
    let dns = dns_responder().await;
    let mut targets = String::new();
    let kinds = std::env::var("PROBE_BENCH_KINDS").unwrap_or_else(|_| "icmp,tcp,http,dns".into());
    let kinds: Vec<&str> = kinds.split(',').collect();
    for i in 0..1000 / kinds.len() {
        for kind in &kinds {
            targets.push_str(&match *kind {
                "icmp" => format!("  - {{ name: icmp{i}, icmp: {{ host: 127.0.0.1 }} }}\n"),
                "tcp" => format!("  - {{ name: tcp{i}, tcp: {{ host: 127.0.0.1, port: {} }} }}\n", tcp.port()),
                "http" => format!("  - {{ name: http{i}, http: {{ url: \"http://{http}/ok\" }} }}\n"),
                "dns" => format!("  - {{ name: dns{i}, dns: {{ query: host{i}.bench.test, server: \"{dns}\" }} }}\n"),
                other => panic!("PROBE_BENCH_KINDS: {other:?} is not icmp, tcp, http or dns"),
            });
        }
    }
    // The probe of this build, and side by side (same targets, same window) the binary
    // `PROBE_BENCH_BASELINE` names, if any: on a shared machine only figures taken at the
    // same time compare.
    let this = std::env::var("PROBE_BENCH_BINARY").unwrap_or_else(|_| binary().to_string());
    let mut binaries = vec![("probe".to_string(), this)];
    if let Ok(list) = std::env::var("PROBE_BENCH_BASELINE") {
        for (k, b) in list.split(',').enumerate() {
            binaries.push((format!("baseline{k}"), b.to_string()));
        }
    }
    let mut measured = Vec::new();
    for (name, bin) in &binaries {
        let (probe, receiver) = start_probe(name, bin, &targets, &scratch).await;
        measured.push(Measured {
            name: format!("{name} ({bin})"),
            probe,
            receiver,
            cpu0: (0.0, 0.0),
            samples0: 0,
        });
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    for m in &mut measured {
        m.cpu0 = cpu_seconds(m.probe.child.id());
        m.samples0 = m.receiver.keys().len();
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "== 1,000 targets ({}; ICMP 5 echoes 200 ms apart; all local) at 10 s, {wall:.0} s measured after 15 s warm-up; load average {}",
        kinds.join(", "),
        load_average()
    );
    for m in &mut measured {
        let pid = m.probe.child.id();
        let cpu1 = cpu_seconds(pid);
        let (user, sys) = (cpu1.0 - m.cpu0.0, cpu1.1 - m.cpu0.1);
        let cpu = user + sys;
        let samples = m.receiver.keys().len() - m.samples0;
        let hwm = status_kib(pid, "VmHWM:");
        let rss = status_kib(pid, "VmRSS:");
        if binaries.len() > 1 {
            println!("-- {}", m.name);
        }
        println!(
            "peak RSS (VmHWM): {:.1} MiB   (RSS at end {:.1} MiB; goal < 15 MiB)",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        );
        println!(
            "CPU: {:.2} % of one core (user {:.2} %, system {:.2} %; goal < 2 %)",
            cpu / wall * 100.0,
            user / wall * 100.0,
            sys / wall * 100.0
        );
        let st = m.receiver.state.lock().unwrap();
        let down = st.samples.iter().filter(|s| !s.up).count();
        println!(
            "delivered: {:.1} samples/s (expected 100/s), {} samples received in all, {} down",
            samples as f64 / wall,
            st.samples.len(),
            down
        );
        // What was measured, so that a change of cost can be weighed against a change of
        // the figures (all targets are local: µs matter).
        let mut line = String::from("latency ms p50/p90/p99:");
        for kind in &kinds {
            let mut l: Vec<f64> = st
                .samples
                .iter()
                .filter(|s| s.target.starts_with(kind))
                .filter_map(|s| s.latency_ms)
                .collect();
            if l.is_empty() {
                continue;
            }
            l.sort_by(f64::total_cmp);
            let q = |p: f64| l[((l.len() - 1) as f64 * p) as usize];
            line.push_str(&format!(
                "  {kind} {:.3}/{:.3}/{:.3}",
                q(0.5),
                q(0.9),
                q(0.99)
            ));
        }
        println!("{line}");
    }
    for m in &mut measured {
        assert!(m.probe.terminate().await.success());
    }
}

fn main() {
    let secs = std::env::var("PROBE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    if std::env::var("PROBE_BENCH_SKIP_ICMP").is_err() {
        icmp_capacity();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(load(secs));
}
