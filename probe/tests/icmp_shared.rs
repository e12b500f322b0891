//! The shared ICMP socket: many rounds at once on one socket each get their own replies, and
//! no echo stays registered once its round has ended, also when the round is aborted.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fiber_probe::checks::{self, CheckContext};
use fiberstack_model::{IcmpCheck, Target};
use support::*;

fn icmp_target(name: &str, host: &str, count: u32, spacing_ms: u64) -> Target {
    Target {
        name: name.into(),
        icmp: Some(IcmpCheck {
            host: host.into(),
            count,
            spacing: fiberstack_model::Duration::from_millis(spacing_ms),
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

#[tokio::test]
async fn concurrent_rounds_share_one_socket_and_each_gets_its_own_replies() {
    permit_icmp();
    let ctx = CheckContext::new(Duration::from_millis(1000));
    let ip = "127.0.0.1".parse().unwrap();
    let socket = ctx.icmp.get(ip).unwrap();
    let mut set = tokio::task::JoinSet::new();
    let rounds = 30;
    for i in 0..rounds {
        let ctx = ctx.clone();
        let target = icmp_target(&format!("r{i}"), "127.0.0.1", 20, 2);
        set.spawn(async move { checks::run(&target, &ctx).await });
    }
    let samples = set.join_all().await;
    assert_eq!(samples.len(), rounds);
    for s in &samples {
        s.validate(chrono::Utc::now()).unwrap();
        assert!(s.up, "{s:?}");
        assert_eq!((s.sent, s.received), (Some(20), Some(20)), "{s:?}");
        // A reply handed to the wrong round would show up as foreign (token mismatch).
        assert!(s.metadata.is_empty(), "{s:?}");
    }
    // Every round used the one socket the context holds for IPv4.
    assert!(Arc::ptr_eq(&socket, &ctx.icmp.get(ip).unwrap()));
    assert_eq!(
        ctx.icmp.pending(),
        0,
        "echoes left registered after the rounds ended"
    );
}

#[tokio::test]
async fn an_aborted_round_frees_its_sequence_numbers() {
    permit_icmp();
    let ctx = CheckContext::new(Duration::from_millis(1000));
    // 127.0.0.1 answers at once; what is checked is the table while and after the round runs.
    let target = icmp_target("long", "127.0.0.1", 100, 20);
    let task = {
        let ctx = ctx.clone();
        tokio::spawn(async move { checks::run(&target, &ctx).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ctx.icmp.pending() > 0,
        "a running round has its echoes registered"
    );
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        ctx.icmp.pending(),
        0,
        "the aborted round left echoes registered"
    );
    // The socket still serves the next round.
    let s = checks::run(&icmp_target("after", "127.0.0.1", 3, 5), &ctx).await;
    assert_eq!((s.sent, s.received), (Some(3), Some(3)), "{s:?}");
    assert_eq!(ctx.icmp.pending(), 0);
}

#[tokio::test]
async fn the_socket_closes_with_its_context() {
    permit_icmp();
    let ctx = CheckContext::new(Duration::from_millis(1000));
    let s = checks::run(&icmp_target("one", "127.0.0.1", 2, 5), &ctx).await;
    assert!(s.up, "{s:?}");
    let weak = Arc::downgrade(&ctx.icmp.get("127.0.0.1".parse().unwrap()).unwrap());
    drop(ctx);
    assert!(
        weak.upgrade().is_none(),
        "the shared socket outlived every context and round"
    );
}
