//! The checks against real local targets: loopback ICMP, a TCP listener and a closed port,
//! a local HTTP(S) server, a local DNS responder.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use fiber_probe::checks::{self, CheckContext};
use fiberstack_model::{CheckKind, IcmpCheck, Sample, Target, TcpCheck};
use support::*;

fn ctx(timeout_ms: u64) -> CheckContext {
    CheckContext::new(Duration::from_millis(timeout_ms))
}

fn icmp_target(host: &str, count: u32) -> Target {
    Target {
        name: "icmp".into(),
        icmp: Some(IcmpCheck {
            host: host.into(),
            count,
            spacing: fiberstack_model::Duration::from_millis(10),
            payload_bytes: 56,
        }),
        tcp: None,
        http: None,
        dns: None,
        traceroute: None,
        thresholds: None,
        slo: None,
    }
}

fn tcp_target_of(addr: SocketAddr) -> Target {
    Target {
        name: "tcp".into(),
        icmp: None,
        tcp: Some(TcpCheck {
            host: addr.ip().to_string(),
            port: addr.port(),
        }),
        http: None,
        dns: None,
        traceroute: None,
        thresholds: None,
        slo: None,
    }
}

fn assert_valid(s: &Sample) {
    s.validate(chrono::Utc::now())
        .unwrap_or_else(|e| panic!("the sample would be rejected: {e}: {s:?}"));
}

#[tokio::test]
async fn icmp_to_ipv4_loopback() {
    permit_icmp();
    let s = checks::run(&icmp_target("127.0.0.1", 10), &ctx(1000)).await;
    assert_valid(&s);
    assert!(s.up, "{s:?}");
    assert_eq!(s.kind, CheckKind::Icmp);
    assert_eq!((s.sent, s.received), (Some(10), Some(10)));
    assert_eq!(s.packet_loss, Some(0.0));
    let (min, mean, max) = (
        s.latency_min_ms.unwrap(),
        s.latency_ms.unwrap(),
        s.latency_max_ms.unwrap(),
    );
    assert!(
        0.0 < min && min <= mean && mean <= max && max < 100.0,
        "{s:?}"
    );
    assert!(s.jitter_ms.is_some());
    assert!(s.metadata.get("duplicates").is_none(), "{s:?}");
}

#[tokio::test]
async fn icmp_to_ipv6_loopback_if_present() {
    permit_icmp();
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let s = checks::run(&icmp_target("::1", 5), &ctx(1000)).await;
    assert_valid(&s);
    assert!(s.up, "{s:?}");
    assert_eq!((s.sent, s.received), (Some(5), Some(5)));
    assert_eq!(s.address, "::1");
}

#[tokio::test]
async fn tcp_listener_is_up_with_a_connect_time() {
    let (addr, _task) = tcp_target().await;
    let s = checks::run(&tcp_target_of(addr), &ctx(1000)).await;
    assert_valid(&s);
    assert!(s.up, "{s:?}");
    assert_eq!(s.address, addr.to_string());
    assert!(s.latency_ms.unwrap() < 100.0);
}

#[tokio::test]
async fn tcp_closed_port_is_refused() {
    let closed = ReservedPort::new().unwrap();
    let addr = closed.addr();
    let s = checks::run(&tcp_target_of(addr), &ctx(1000)).await;
    assert_valid(&s);
    assert!(!s.up);
    assert_eq!(s.error.as_deref(), Some("connection refused"));
}

#[tokio::test]
async fn tcp_reset_is_told_apart() {
    // A listener that is full refuses by RST only on some kernels; a closed socket with
    // SO_LINGER 0 resets reliably after accept, which the connect itself does not see. The
    // classification is what can be checked without a middlebox.
    let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert_eq!(fiber_probe::net::describe(&e), "connection reset");
    let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(fiber_probe::net::describe(&e), "connection refused");
}

#[test]
fn example_config_parses_and_validates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/probe.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let settings = fiber_probe::config::Settings::from_yaml(
        &text,
        &fiber_probe::config::Overrides::default(),
        std::path::Path::new(path),
    )
    .unwrap();
    let kinds: std::collections::BTreeSet<_> = settings
        .config
        .targets
        .iter()
        .map(|t| t.check().unwrap().kind())
        .collect();
    assert_eq!(kinds.len(), 4, "the example shows every kind of check");
    fiberstack_model::ProbeConfig::from_yaml(&text).unwrap();
}

#[test]
fn once_prints_one_json_sample_per_target() {
    permit_icmp();
    let scratch = Scratch::new("once");
    let config = scratch.path("probe.yaml");
    let reserved = ReservedPort::new().unwrap();
    let closed = reserved.port();
    std::fs::write(
        &config,
        format!(
            "node: n1\nprobe: t/p\nregion: r\ncountry: GH\ninterval: 5s\ntimeout: 1s\ningest: {{ urls: [\"http://127.0.0.1:1\"] }}\ntargets:\n  - {{ name: ping, icmp: {{ host: 127.0.0.1, count: 3, spacing: 10ms }} }}\n  - {{ name: closed, tcp: {{ host: 127.0.0.1, port: {closed} }} }}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Sample> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].target, "ping");
    assert!(samples[0].up);
    assert_eq!(samples[1].error.as_deref(), Some("connection refused"));
}
