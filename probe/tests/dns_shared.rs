//! The shared DNS socket: many rounds at once on one socket per address family each get
//! exactly their own answer (from CoreDNS, the real server the environment builds, over IPv4
//! and IPv6); an answer from another address or with another id is not taken; a round that
//! ends or is aborted leaves nothing registered. A responder in the test answers out of order
//! and forges answers, which a real server does not do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fiber_probe::checks::{self, CheckContext};
use fiberstack_model::{Sample, Target};
use serde_json::json;
use tokio::net::UdpSocket;

fn dns(name: &str, query: &str, server: SocketAddr) -> Target {
    serde_json::from_value(json!({
        "name": name,
        "dns": { "query": query, "server": server.to_string() },
    }))
    .unwrap()
}

fn valid(s: Sample) -> Sample {
    s.validate(chrono::Utc::now())
        .unwrap_or_else(|e| panic!("the sample would be rejected: {e}: {s:?}"));
    s
}

/// CoreDNS on 127.0.0.1 and ::1 (one port): `*.one.test` has one A record, `*.two.test`
/// two, `*.nx.test` is NXDOMAIN. Killed on drop.
struct CoreDns {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Drop for CoreDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

impl CoreDns {
    async fn start() -> Self {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/.env/bin/coredns");
        assert!(
            bin.exists(),
            "{} is missing: run `make env-up` first (it builds CoreDNS)",
            bin.display()
        );
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!(
            "fiber-probe-coredns-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let corefile = dir.join("Corefile");
        std::fs::write(
            &corefile,
            format!(
                r#".:{port} {{
  bind 127.0.0.1 ::1
  template IN A one.test {{
    answer "{{{{ .Name }}}} 60 IN A 192.0.2.1"
  }}
  template IN A two.test {{
    answer "{{{{ .Name }}}} 60 IN A 192.0.2.1"
    answer "{{{{ .Name }}}} 60 IN A 192.0.2.2"
  }}
  template ANY ANY nx.test {{
    rcode NXDOMAIN
  }}
}}
"#
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("-conf")
            .arg(&corefile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        // Ready once it answers.
        let ctx = CheckContext::new(Duration::from_millis(200));
        for _ in 0..100 {
            let s = checks::run(&dns("ready", "ready.one.test", server.v4()), &ctx).await;
            if s.up {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("CoreDNS did not answer on {} within 10 s", server.v4());
    }

    fn v4(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn v6(&self) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.port))
    }
}

#[tokio::test]
async fn concurrent_rounds_over_both_families_each_get_their_own_answer_from_coredns() {
    let coredns = CoreDns::start().await;
    let ctx = CheckContext::new(Duration::from_millis(3000));
    let v4 = ctx.dns.get(coredns.v4()).unwrap();
    let v6 = ctx.dns.get(coredns.v6()).unwrap();
    let mut set = tokio::task::JoinSet::new();
    let rounds = 300;
    for i in 0..rounds {
        let server = if i % 2 == 0 {
            coredns.v4()
        } else {
            coredns.v6()
        };
        let zone = ["one", "two", "nx"][i % 3];
        let target = dns(&format!("r{i}"), &format!("r{i}.{zone}.test"), server);
        let ctx = ctx.clone();
        set.spawn(async move { (i, server, checks::run(&target, &ctx).await) });
    }
    let samples = set.join_all().await;
    assert_eq!(samples.len(), rounds);
    for (i, server, s) in samples {
        let s = valid(s);
        assert_eq!(s.target, format!("r{i}"));
        assert_eq!(s.address, server.to_string());
        let zone = ["one", "two", "nx"][i % 3];
        assert_eq!(s.metadata["query"], json!(format!("r{i}.{zone}.test")));
        let (rcode, answers) = match zone {
            "one" => ("NOERROR", 1),
            "two" => ("NOERROR", 2),
            _ => ("NXDOMAIN", 0),
        };
        assert_eq!(s.metadata["rcode"], json!(rcode), "{s:?}");
        assert_eq!(s.metadata["answers"], json!(answers), "{s:?}");
        assert_eq!(s.up, answers > 0, "{s:?}");
        assert!(s.latency_ms.is_some_and(|l| l >= 0.0), "{s:?}");
        // An answer handed to the wrong round would be counted there as not its own.
        assert!(s.metadata.get("ignored_messages").is_none(), "{s:?}");
    }
    // Every round used the context's one socket of its family.
    assert!(Arc::ptr_eq(&v4, &ctx.dns.get(coredns.v4()).unwrap()));
    assert!(Arc::ptr_eq(&v6, &ctx.dns.get(coredns.v6()).unwrap()));
    assert!(v4.local_addr().unwrap().is_ipv4() && v6.local_addr().unwrap().is_ipv6());
    assert_eq!(ctx.dns.pending(), 0, "queries left registered");
    assert_eq!(ctx.dns.unsolicited(), 0);
}

/// The labels of the question of `query`, joined by dots.
fn question_name(query: &[u8]) -> String {
    let mut name = Vec::new();
    let mut i = 12;
    while i < query.len() && query[i] != 0 {
        let len = query[i] as usize;
        name.push(String::from_utf8_lossy(&query[i + 1..i + 1 + len]).to_string());
        i += len + 1;
    }
    name.join(".")
}

/// An answer to `query` with `id`, `rcode` and `answers` A records.
fn answer(query: &[u8], id: u16, rcode: u8, answers: u8) -> Vec<u8> {
    let end = 12 + query[12..].iter().position(|b| *b == 0).unwrap() + 1 + 4;
    let mut r = query[..end].to_vec();
    r[..2].copy_from_slice(&id.to_be_bytes());
    r[2] = 0x81;
    r[3] = 0x80 | rcode;
    r[4..12].copy_from_slice(&[0, 1, 0, answers, 0, 0, 0, 0]);
    for k in 0..answers {
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, k + 1]);
    }
    r
}

/// A responder on 127.0.0.1 and an impostor on another port of it. By question:
/// `forged.test`: the impostor answers first (NXDOMAIN, with the query's id), then the
/// server (two records); `wrongid.test`: the server answers with another id (REFUSED), then
/// properly (two records); `late.test`: answered after 400 ms; `bN.batch.test`: held until
/// 20 such queries are in, then all answered in reverse order of arrival with N % 3 + 1
/// records; anything else: no answer.
async fn responder() -> (SocketAddr, SocketAddr) {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let impostor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (addr, impostor_addr) = (socket.local_addr().unwrap(), impostor.local_addr().unwrap());
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let mut held: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let query = buf[..n].to_vec();
            let id = u16::from_be_bytes([query[0], query[1]]);
            let name = question_name(&query);
            match name.as_str() {
                "forged.test" => {
                    impostor
                        .send_to(&answer(&query, id, 3, 0), from)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    socket
                        .send_to(&answer(&query, id, 0, 2), from)
                        .await
                        .unwrap();
                }
                "wrongid.test" => {
                    socket
                        .send_to(&answer(&query, id ^ 0x5555, 5, 0), from)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    socket
                        .send_to(&answer(&query, id, 0, 2), from)
                        .await
                        .unwrap();
                }
                "late.test" => {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        socket
                            .send_to(&answer(&query, id, 0, 1), from)
                            .await
                            .unwrap();
                    });
                }
                batch if batch.ends_with(".batch.test") => {
                    held.push((query, from));
                    if held.len() == 20 {
                        for (query, from) in held.drain(..).rev() {
                            let name = question_name(&query);
                            let n: u8 = name[1..name.find('.').unwrap()].parse().unwrap();
                            let id = u16::from_be_bytes([query[0], query[1]]);
                            socket
                                .send_to(&answer(&query, id, 0, n % 3 + 1), from)
                                .await
                                .unwrap();
                        }
                    }
                }
                _ => {}
            }
        }
    });
    (addr, impostor_addr)
}

#[tokio::test]
async fn answers_out_of_order_reach_their_rounds() {
    let (server, _) = responder().await;
    let ctx = CheckContext::new(Duration::from_millis(3000));
    let mut set = tokio::task::JoinSet::new();
    for n in 0..20u8 {
        let target = dns(&format!("b{n}"), &format!("b{n}.batch.test"), server);
        let ctx = ctx.clone();
        set.spawn(async move { (n, checks::run(&target, &ctx).await) });
    }
    let mut seen = HashMap::new();
    for (n, s) in set.join_all().await {
        let s = valid(s);
        assert!(s.up, "{s:?}");
        assert_eq!(s.metadata["answers"], json!(n % 3 + 1), "{s:?}");
        assert!(s.metadata.get("ignored_messages").is_none(), "{s:?}");
        seen.insert(n, s.latency_ms.unwrap());
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(ctx.dns.pending(), 0);
}

#[tokio::test]
async fn answers_from_another_address_or_with_another_id_are_not_taken() {
    let (server, impostor) = responder().await;
    assert_eq!(server.ip(), impostor.ip());
    let ctx = CheckContext::new(Duration::from_millis(2000));

    let s = valid(checks::run(&dns("forged", "forged.test", server), &ctx).await);
    assert!(s.up, "the impostor's NXDOMAIN was taken: {s:?}");
    assert_eq!(s.metadata["rcode"], json!("NOERROR"));
    assert_eq!(s.metadata["answers"], json!(2));
    assert!(
        s.latency_ms.unwrap() >= 50.0,
        "the answer timed is the server's, sent 50 ms after the impostor's: {s:?}"
    );
    // The impostor's datagram reached the shared socket and was dropped there.
    assert_eq!(ctx.dns.unsolicited(), 1);

    let s = valid(checks::run(&dns("wrongid", "wrongid.test", server), &ctx).await);
    assert!(s.up, "the answer with another id was taken: {s:?}");
    assert_eq!(s.metadata["rcode"], json!("NOERROR"));
    assert_eq!(s.metadata["answers"], json!(2));
    assert_eq!(s.metadata["ignored_messages"], json!(1), "{s:?}");
    assert_eq!(ctx.dns.unsolicited(), 1);
    assert_eq!(ctx.dns.pending(), 0);
}

#[tokio::test]
async fn a_round_that_ends_or_is_aborted_leaves_nothing_registered() {
    let (server, _) = responder().await;
    let ctx = CheckContext::new(Duration::from_millis(3000));

    // Timed out: unregistered when the round returns.
    let short = CheckContext {
        timeout: Duration::from_millis(200),
        ..ctx.clone()
    };
    let s = valid(checks::run(&dns("silent", "silent.test", server), &short).await);
    assert!(s.error.unwrap().starts_with("timeout"));
    assert_eq!(ctx.dns.pending(), 0);

    // Aborted while waiting for an answer that comes 400 ms after the query.
    let task = {
        let ctx = ctx.clone();
        tokio::spawn(async move { checks::run(&dns("late", "late.test", server), &ctx).await })
    };
    for _ in 0..100 {
        if ctx.dns.pending() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        ctx.dns.pending(),
        1,
        "a running round has its query registered"
    );
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        ctx.dns.pending(),
        0,
        "the aborted round left its query registered"
    );
    // Its late answer finds no round: dropped on the socket, not handed to anyone.
    for _ in 0..100 {
        if ctx.dns.unsolicited() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ctx.dns.unsolicited(), 1);

    // The socket still serves the next round.
    let s = valid(checks::run(&dns("late", "late.test", server), &ctx).await);
    assert!(s.up, "{s:?}");
    assert!(s.latency_ms.unwrap() >= 400.0, "{s:?}");
    assert_eq!(ctx.dns.pending(), 0);
}

#[tokio::test]
async fn the_sockets_close_with_their_context() {
    let (server, _) = responder().await;
    let ctx = CheckContext::new(Duration::from_millis(200));
    let _ = checks::run(&dns("silent", "silent.test", server), &ctx).await;
    let weak = Arc::downgrade(&ctx.dns.get(server).unwrap());
    drop(ctx);
    assert!(
        weak.upgrade().is_none(),
        "the shared socket outlived every context and round"
    );
}
