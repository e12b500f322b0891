//! `demo-targets`: what the demo's probes measure, on this machine (there is no internet
//! here): a healthy HTTP server, a deliberately degraded one (slow, and failing a share of
//! requests), a TCP listener and a DNS responder.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Local targets for the FiberStack demo")]
struct Cli {
    /// Address every target listens on.
    #[arg(long, default_value = "0.0.0.0")]
    listen: IpAddr,
    /// Healthy HTTP server: 200 at once.
    #[arg(long, default_value_t = 18080)]
    http_port: u16,
    /// Degraded HTTP server: answers after --slow-ms ± 50 %, and 503 for --fail-percent.
    #[arg(long, default_value_t = 18081)]
    degraded_port: u16,
    #[arg(long, default_value_t = 400)]
    slow_ms: u64,
    #[arg(long, default_value_t = 30)]
    fail_percent: u32,
    /// TCP listener (accepts and closes).
    #[arg(long, default_value_t = 18082)]
    tcp_port: u16,
    /// DNS responder (UDP): every A query is answered with --dns-answer.
    #[arg(long, default_value_t = 18053)]
    dns_port: u16,
    #[arg(long, default_value = "10.240.255.254")]
    dns_answer: Ipv4Addr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let healthy = Router::new().route("/", get(|| async { "FiberStack demo: healthy\n" }));
    let (slow, fail) = (cli.slow_ms, cli.fail_percent);
    let degraded = Router::new().route(
        "/",
        get(move || async move {
            let ms = slow / 2 + fastrand::u64(0..=slow);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if fastrand::u32(0..100) < fail {
                (StatusCode::SERVICE_UNAVAILABLE, "degraded: failing\n")
            } else {
                (StatusCode::OK, "degraded: slow\n")
            }
        }),
    );
    let bind = |port| SocketAddr::new(cli.listen, port);
    let h = tokio::net::TcpListener::bind(bind(cli.http_port))
        .await
        .with_context(|| format!("listen on {}", bind(cli.http_port)))?;
    let d = tokio::net::TcpListener::bind(bind(cli.degraded_port))
        .await
        .with_context(|| format!("listen on {}", bind(cli.degraded_port)))?;
    let t = tokio::net::TcpListener::bind(bind(cli.tcp_port))
        .await
        .with_context(|| format!("listen on {}", bind(cli.tcp_port)))?;
    let u = tokio::net::UdpSocket::bind(bind(cli.dns_port))
        .await
        .with_context(|| format!("listen on udp {}", bind(cli.dns_port)))?;
    eprintln!(
        "demo targets: http :{} degraded :{} tcp :{} dns :{} (A → {})",
        cli.http_port, cli.degraded_port, cli.tcp_port, cli.dns_port, cli.dns_answer
    );
    tokio::spawn(async move { axum::serve(h, healthy).await });
    tokio::spawn(async move { axum::serve(d, degraded).await });
    tokio::spawn(async move {
        while let Ok((s, _)) = t.accept().await {
            drop(s);
        }
    });
    let answer = cli.dns_answer;
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = u.recv_from(&mut buf).await {
            if let Some(reply) = dns_reply(&buf[..n], answer) {
                let _ = u.send_to(&reply, peer).await;
            }
        }
    });
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The answer to a one-question query: `answer` for type A, no records for any other type.
fn dns_reply(query: &[u8], answer: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the zero length, then type and class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + *query.get(i)? as usize;
    }
    let question_end = i + 5;
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    query.get(question_end - 1)?;
    let a = qtype == 1;
    let mut out = Vec::with_capacity(question_end + 16);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    if a {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&answer.octets());
    }
    Some(out)
}
