//! HTTP(S) checks against a local server that can delay, fail and answer chosen statuses
//! (HTTPS with a certificate made here), and DNS checks against a local responder.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use fiber_probe::checks::{self, CheckContext};
use fiberstack_model::{DnsCheck, DnsRecordType, HttpCheck, Sample, Target};
use serde_json::json;
use support::*;

async fn http_server() -> SocketAddr {
    let app = axum::Router::new()
        .route("/ok", axum::routing::get(|| async { "all is ok here" }))
        .route(
            "/status/{code}",
            axum::routing::get(|Path(code): Path<u16>| async move {
                (StatusCode::from_u16(code).unwrap(), "status")
            }),
        )
        .route(
            "/slow/{ms}",
            axum::routing::get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slow ok"
            }),
        )
        .route(
            "/redirect",
            axum::routing::get(|| async { Redirect::to("/ok").into_response() }),
        )
        .route(
            "/loop",
            axum::routing::get(|| async { Redirect::to("/loop").into_response() }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// Accepts connections and closes them at once: a server that fails mid-request.
async fn closing_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    addr
}

fn http(url: String, f: impl FnOnce(&mut HttpCheck)) -> Target {
    let mut check = HttpCheck {
        url,
        expect_status: vec![],
        body_contains: None,
        follow_redirects: false,
    };
    f(&mut check);
    Target {
        name: "web".into(),
        icmp: None,
        tcp: None,
        http: Some(check),
        dns: None,
        traceroute: None,
        thresholds: None,
        slo: None,
    }
}

async fn check(t: &Target, timeout_ms: u64) -> Sample {
    let s = checks::run(t, &CheckContext::new(Duration::from_millis(timeout_ms))).await;
    s.validate(chrono::Utc::now())
        .unwrap_or_else(|e| panic!("the sample would be rejected: {e}: {s:?}"));
    s
}

#[tokio::test]
async fn http_statuses_body_delay_redirects_and_failures() {
    let addr = http_server().await;
    let base = format!("http://{addr}");

    let s = check(&http(format!("{base}/ok"), |_| {}), 2000).await;
    assert!(s.up, "{s:?}");
    assert_eq!(s.status_code, Some(200));
    for phase in ["connect_ms", "ttfb_ms", "total_ms"] {
        assert!(s.metadata[phase].as_f64().unwrap() >= 0.0, "{phase}: {s:?}");
    }
    assert!(
        s.metadata.get("dns_ms").is_none(),
        "an IP literal needs no lookup"
    );
    assert!(s.metadata.get("tls_ms").is_none());

    let s = check(
        &http(format!("http://localhost:{}/ok", addr.port()), |_| {}),
        2000,
    )
    .await;
    assert!(s.up, "{s:?}");
    assert!(s.metadata["dns_ms"].as_f64().is_some());

    let s = check(&http(format!("{base}/status/503"), |_| {}), 2000).await;
    assert!(!s.up);
    assert_eq!(s.status_code, Some(503));
    assert_eq!(s.error.as_deref(), Some("status 503 is not 2xx"));

    let s = check(
        &http(format!("{base}/status/404"), |c| {
            c.expect_status = vec![404]
        }),
        2000,
    )
    .await;
    assert!(s.up, "an expected 404 is up: {s:?}");

    let s = check(
        &http(format!("{base}/ok"), |c| {
            c.body_contains = Some("is ok".into())
        }),
        2000,
    )
    .await;
    assert!(s.up);
    let s = check(
        &http(format!("{base}/ok"), |c| {
            c.body_contains = Some("missing".into())
        }),
        2000,
    )
    .await;
    assert!(!s.up);
    assert!(s.error.unwrap().contains("body does not contain"));

    let s = check(&http(format!("{base}/slow/300"), |_| {}), 2000).await;
    assert!(s.up);
    let ttfb = s.metadata["ttfb_ms"].as_f64().unwrap();
    assert!(ttfb >= 300.0, "the server's delay is in ttfb: {ttfb}");
    assert!(s.metadata["connect_ms"].as_f64().unwrap() < 100.0);

    let s = check(&http(format!("{base}/slow/2000"), |_| {}), 500).await;
    assert!(!s.up);
    assert!(s.error.unwrap().starts_with("timeout during request"));

    let s = check(&http(format!("{base}/redirect"), |_| {}), 2000).await;
    assert!(!s.up, "redirects are not followed by default");
    assert_eq!(s.status_code, Some(303));
    let s = check(
        &http(format!("{base}/redirect"), |c| c.follow_redirects = true),
        2000,
    )
    .await;
    assert!(s.up);
    assert_eq!(s.status_code, Some(200));
    assert_eq!(s.metadata["redirects"], json!(1));
    let s = check(
        &http(format!("{base}/loop"), |c| c.follow_redirects = true),
        2000,
    )
    .await;
    assert!(!s.up);
    assert!(s.error.unwrap().contains("more than 10 redirects"));

    let closing = closing_server().await;
    let s = check(&http(format!("http://{closing}/"), |_| {}), 2000).await;
    assert!(!s.up);
    assert!(s.error.as_deref().unwrap().starts_with("http:"), "{s:?}");

    let closed = ReservedPort::new().unwrap();
    let s = check(&http(format!("{}/", closed.url()), |_| {}), 2000).await;
    assert_eq!(s.error.as_deref(), Some("connect: connection refused"));
}

/// An HTTPS server with a self-signed certificate for `localhost` expiring in `days` days.
async fn https_server(days: i64) -> (SocketAddr, String) {
    let not_after = chrono::Utc::now().date_naive() + chrono::Duration::days(days);
    use chrono::Datelike;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(
        not_after.year(),
        not_after.month() as u8,
        not_after.day() as u8,
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from("secure ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, cert.pem())
}

fn once(config: &std::path::Path, env: &[(&str, &str)]) -> Vec<Sample> {
    let out = std::process::Command::new(binary())
        .args(["once", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn https_with_a_self_signed_certificate_trusted_through_ssl_cert_file() {
    let (addr, pem) = https_server(40).await;
    let scratch = Scratch::new("https");
    let ca = scratch.path("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let config = scratch.path("probe.yaml");
    std::fs::write(
        &config,
        format!(
            "node: n1\nprobe: t/p\nregion: r\ncountry: GH\ninterval: 10s\ntimeout: 3s\ningest: {{ urls: [\"http://127.0.0.1:1\"] }}\ntargets:\n  - {{ name: secure, http: {{ url: \"https://localhost:{}/\", bodyContains: secure }} }}\n",
            addr.port()
        ),
    )
    .unwrap();
    let config2 = config.clone();
    let ca2 = ca.clone();
    let trusted = tokio::task::spawn_blocking(move || {
        once(&config2, &[("SSL_CERT_FILE", ca2.to_str().unwrap())])
    })
    .await
    .unwrap();
    let s = &trusted[0];
    assert!(s.up, "{s:?}");
    assert_eq!(s.status_code, Some(200));
    let days = s.metadata["cert_days_to_expiry"].as_i64().unwrap();
    assert!((38..=40).contains(&days), "{days}");
    let not_after = chrono::Utc::now().date_naive() + chrono::Duration::days(40);
    assert_eq!(
        s.metadata["cert_not_after"],
        format!("{not_after}T00:00:00Z"),
        "the leaf certificate's notAfter, RFC 3339"
    );
    assert!(s.metadata["tls_ms"].as_f64().unwrap() > 0.0);
    assert!(s.metadata["dns_ms"].as_f64().is_some());

    // Without the test CA the certificate is unknown: down, with the TLS error.
    let empty = scratch.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let untrusted = tokio::task::spawn_blocking(move || {
        once(&config, &[("SSL_CERT_FILE", empty.to_str().unwrap())])
    })
    .await
    .unwrap();
    let s = &untrusted[0];
    assert!(!s.up);
    assert!(s.error.as_deref().unwrap().starts_with("tls:"), "{s:?}");
}

#[test]
fn certificate_expiry_is_read_from_der() {
    let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let t = fiber_probe::checks::http::not_after(cert.der()).unwrap();
    assert_eq!(t.to_rfc3339(), "2049-12-31T00:00:00+00:00");
    params.not_after = rcgen::date_time_ymd(2051, 1, 2);
    let cert = params.self_signed(&key).unwrap();
    let t = fiber_probe::checks::http::not_after(cert.der()).unwrap();
    assert_eq!(
        t.to_rfc3339(),
        "2051-01-02T00:00:00+00:00",
        "GeneralizedTime after 2049"
    );
    assert_eq!(
        fiber_probe::checks::http::not_after(b"\x30\x03\x02\x01"),
        None
    );
}

/// A DNS responder: `ok.test` has two A records, `empty.test` none, `missing.test` is
/// NXDOMAIN, `broken.test` SERVFAIL, `silent.test` gets no answer; `spoofed.test` is first
/// answered with a wrong id, then properly; `cut.test` gets its answer cut short in its last
/// record.
async fn dns_responder() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let query = &buf[..n];
            let qname_end = 12 + query[12..].iter().position(|b| *b == 0).unwrap() + 1;
            let question = &query[12..qname_end + 4];
            let mut name = Vec::new();
            let mut i = 12;
            while query[i] != 0 {
                let len = query[i] as usize;
                name.push(String::from_utf8_lossy(&query[i + 1..i + 1 + len]).to_string());
                i += len + 1;
            }
            let name = name.join(".");
            let (rcode, answers) = match name.as_str() {
                "ok.test" | "spoofed.test" | "cut.test" => (0u8, 2u16),
                "empty.test" => (0, 0),
                "missing.test" => (3, 0),
                "broken.test" => (2, 0),
                _ => continue,
            };
            let respond = |id: [u8; 2]| {
                let mut r = Vec::new();
                r.extend_from_slice(&id);
                r.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1]);
                r.extend_from_slice(&answers.to_be_bytes());
                r.extend_from_slice(&[0, 0, 0, 0]);
                r.extend_from_slice(question);
                for k in 0..answers {
                    r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2]);
                    r.push(k as u8 + 1);
                }
                r
            };
            if name == "spoofed.test" {
                let wrong = [query[0] ^ 0xFF, query[1]];
                socket.send_to(&respond(wrong), from).await.unwrap();
            }
            let mut answer = respond([query[0], query[1]]);
            if name == "cut.test" {
                answer.truncate(answer.len() - 3);
            }
            socket.send_to(&answer, from).await.unwrap();
        }
    });
    addr
}

fn dns(query: &str, server: SocketAddr) -> Target {
    Target {
        name: "dns".into(),
        icmp: None,
        tcp: None,
        http: None,
        dns: Some(DnsCheck {
            query: query.into(),
            record_type: DnsRecordType::A,
            server: Some(server.to_string()),
        }),
        traceroute: None,
        thresholds: None,
        slo: None,
    }
}

#[tokio::test]
async fn dns_rcodes_answers_and_timeouts() {
    let server = dns_responder().await;
    let s = check(&dns("ok.test", server), 1000).await;
    assert!(s.up, "{s:?}");
    assert_eq!(s.metadata["rcode"], json!("NOERROR"));
    assert_eq!(s.metadata["answers"], json!(2));
    assert_eq!(s.address, server.to_string());
    assert!(s.latency_ms.unwrap() < 100.0);

    let s = check(&dns("empty.test", server), 1000).await;
    assert!(!s.up);
    assert_eq!(s.metadata["answers"], json!(0));

    let s = check(&dns("missing.test", server), 1000).await;
    assert!(!s.up);
    assert_eq!(s.metadata["rcode"], json!("NXDOMAIN"));
    assert_eq!(s.error.as_deref(), Some("missing.test answered NXDOMAIN"));

    let s = check(&dns("broken.test", server), 1000).await;
    assert_eq!(s.metadata["rcode"], json!("SERVFAIL"));

    let s = check(&dns("spoofed.test", server), 1000).await;
    assert!(s.up, "the answer with the right id counts: {s:?}");
    assert_eq!(s.metadata["ignored_messages"], json!(1));

    let s = check(&dns("cut.test", server), 1000).await;
    assert!(!s.up);
    let error = s.error.unwrap();
    assert!(
        error.starts_with(&format!("malformed answer from {server}: ")),
        "{error}"
    );
    assert_eq!(s.metadata["query"], json!("cut.test"));

    let s = check(&dns("silent.test", server), 300).await;
    assert!(!s.up);
    assert!(s.error.unwrap().starts_with("timeout"));
}
