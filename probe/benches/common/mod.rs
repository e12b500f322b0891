//! What the probe's benchmarks share: per-process CPU and memory figures read from /proc,
//! and the local HTTP and DNS targets.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use fiberstack_model::Sample;

use crate::support::{Scratch, binary, permit_icmp};

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (utime, stime) of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    (utime / clock_ticks(), stime / clock_ticks())
}

pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The 1-minute load average of the machine (other builds share it).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub async fn http_server() -> SocketAddr {
    let app = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// Answers every query NOERROR with one A record (192.0.2.1).
pub async fn dns_responder() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            // The header and the question only (an EDNS record of the query is dropped).
            let mut end = 12;
            while end < n && buf[end] != 0 {
                end += 1 + buf[end] as usize;
            }
            end += 5;
            if end > n {
                continue;
            }
            let mut r = buf[..end].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[4..12].copy_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
            r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
            let _ = socket.send_to(&r, from).await;
        }
    });
    addr
}

/// ICMP capacity of one core: `fiber-probe once` with 100 targets × 100 echoes 10 ms apart
/// (10,000 echoes offered at 10,000/s), inside a network namespace whose nftables rule drops
/// 30 % of echo requests (on loopback without loss when no namespace can be made). Prints
/// the figures and returns echoes per CPU-second of the process (user + system, so the
/// kernel's loopback work is charged to it).
pub fn icmp_capacity() -> f64 {
    permit_icmp();
    let scratch = Scratch::new("bench-icmp");
    let (targets, count) = (100, 100);
    let mut text = String::from(
        "node: bench\nprobe: bench/probe\nregion: bench\ncountry: GH\ninterval: 10s\ntimeout: 1s\ningest: { urls: [\"http://127.0.0.1:1\"] }\ntargets:\n",
    );
    for i in 0..targets {
        text.push_str(&format!(
            "  - {{ name: p{i}, icmp: {{ host: 127.0.0.1, count: {count}, spacing: 10ms }} }}\n"
        ));
    }
    let config = scratch.path("probe.yaml");
    std::fs::write(&config, text).unwrap();
    let ns = format!("fpbench-{}", std::process::id());
    let netns = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .is_ok_and(|s| s.success());
    let inject = netns
        && {
            let sh = "ip link set lo up && sysctl -qw net.ipv4.ping_group_range='0 2147483647' && nft add table inet t && nft add chain inet t in '{ type filter hook input priority 0; }' && nft add rule inet t in icmp type echo-request numgen random mod 10 '<' 3 drop";
            Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c", sh])
                .status()
                .is_ok_and(|s| s.success())
        };
    // bash's `times` reports the CPU time of the finished child.
    let run = if inject {
        format!(
            "ip netns exec {ns} {} once --config {} > {}; times",
            binary(),
            config.display(),
            scratch.path("out").display()
        )
    } else {
        format!(
            "{} once --config {} > {}; times",
            binary(),
            config.display(),
            scratch.path("out").display()
        )
    };
    let t0 = Instant::now();
    let out = Command::new("bash").args(["-c", &run]).output().unwrap();
    let wall = t0.elapsed().as_secs_f64();
    if netns {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    let times = String::from_utf8_lossy(&out.stdout);
    let child_line = times.lines().nth(1).unwrap_or("");
    let secs = |t: &str| -> f64 {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    };
    let cpu: f64 = child_line.split_whitespace().map(secs).sum();
    let samples: Vec<Sample> = std::fs::read_to_string(scratch.path("out"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent: u32 = samples.iter().map(|s| s.sent.unwrap_or(0)).sum();
    let received: u32 = samples.iter().map(|s| s.received.unwrap_or(0)).sum();
    let loss = f64::from(sent - received) * 100.0 / f64::from(sent.max(1));
    println!(
        "== ICMP capacity: {targets} targets × {count} echoes 10 ms apart in one process ({})",
        if inject {
            "network namespace, nftables drops 30 % of echo requests"
        } else {
            "loopback, no loss injected (no netns)"
        }
    );
    println!(
        "{sent} echoes in {wall:.2} s wall, {cpu:.3} s CPU (user+sys, process start included): {:.0} echoes per CPU-second (goal ≥ 5,000 per core)",
        f64::from(sent) / cpu.max(1e-3)
    );
    println!(
        "measured loss {loss:.2} % (injected {}); samples: {}",
        if inject { "30 %" } else { "0 %" },
        samples.len()
    );
    f64::from(sent) / cpu.max(1e-3)
}
