//! Packet loss and silence injected for real: `fiber-probe once` runs inside a network
//! namespace whose nftables rules drop a share of the ICMP echo requests, all echoes to one
//! address, and SYNs to one port.

mod support;

use fiberstack_model::Sample;
use support::netns::Netns;
use support::*;

#[test]
fn measured_loss_matches_the_injected_loss_and_silence_is_told_apart() {
    let ns = Netns::new("fprobe");
    ns.nft_chain("inet", "in", "input");
    ns.nft_rule(
        "inet",
        "in",
        "ip daddr 127.0.0.3 icmp type echo-request drop",
    );
    ns.nft_rule("inet", "in", "tcp dport 9 drop");
    ns.nft_rule(
        "inet",
        "in",
        "icmp type echo-request numgen random mod 10 < 3 drop",
    );

    let scratch = Scratch::new("netns");
    let config = scratch.path("probe.yaml");
    let rounds = 20;
    let mut text = String::from(
        "node: n1\nprobe: t/p\nregion: r\ncountry: GH\ninterval: 10s\ntimeout: 1s\ningest: { urls: [\"http://127.0.0.1:1\"] }\ntargets:\n",
    );
    for i in 0..rounds {
        text.push_str(&format!(
            "  - {{ name: loss{i}, icmp: {{ host: 127.0.0.1, count: 100, spacing: 2ms }} }}\n"
        ));
    }
    text.push_str("  - { name: silent, icmp: { host: 127.0.0.3, count: 3, spacing: 10ms } }\n");
    text.push_str("  - { name: dropped-syn, tcp: { host: 127.0.0.1, port: 9 } }\n");
    std::fs::write(&config, text).unwrap();

    let out = ns.exec(&[binary(), "once", "--config", config.to_str().unwrap()]);
    let samples: Vec<Sample> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), rounds + 2);

    let (mut sent, mut received) = (0u32, 0u32);
    for s in &samples[..rounds] {
        s.validate(chrono::Utc::now()).unwrap();
        sent += s.sent.unwrap();
        received += s.received.unwrap();
        let expected =
            f64::from(s.sent.unwrap() - s.received.unwrap()) * 100.0 / f64::from(s.sent.unwrap());
        assert!((s.packet_loss.unwrap() - expected).abs() < 1e-9);
        assert!(s.metadata.get("duplicates").is_none(), "{s:?}");
    }
    assert_eq!(sent, 2000);
    let loss = f64::from(sent - received) * 100.0 / f64::from(sent);
    eprintln!("measured loss over {sent} echoes: {loss:.2} %");
    // 2,000 echoes each dropped with p = 0.3: the measured share has a standard deviation of
    // sqrt(0.3 · 0.7 / 2000) = 1.02 points. ±5 points is about 4.9 σ: a correct probe fails
    // this about once in a million runs, a probe off by 5 points passes about half the time.
    assert!(
        (loss - 30.0).abs() <= 5.0,
        "measured {loss:.2} % loss, injected 30 %"
    );

    let silent = &samples[rounds];
    assert!(!silent.up);
    assert_eq!(silent.packet_loss, Some(100.0));
    assert_eq!((silent.sent, silent.received), (Some(3), Some(0)));

    let syn = &samples[rounds + 1];
    assert!(!syn.up);
    assert!(
        syn.error.as_deref().unwrap().starts_with("timeout"),
        "{syn:?}"
    );
}

#[test]
fn icmp_not_permitted_is_said_clearly_with_the_remedy() {
    let ns = Netns::new("fprobe");
    // Back to the kernel's default: no group may open ping sockets, not even root's.
    ns.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=1 0"]);
    let scratch = Scratch::new("netns-denied");
    let config = scratch.path("probe.yaml");
    std::fs::write(
        &config,
        "node: n1\nprobe: t/p\nregion: r\ncountry: GH\ninterval: 10s\ntimeout: 1s\ningest: { urls: [\"http://127.0.0.1:1\"] }\ntargets:\n  - { name: ping, icmp: { host: 127.0.0.1, count: 1 } }\n",
    )
    .unwrap();
    let out = ns.exec(&[binary(), "once", "--config", config.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("unprivileged ICMP is not permitted")
            && log.contains("sysctl -w net.ipv4.ping_group_range"),
        "{log}"
    );
    let s: Sample = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert!(!s.up);
    assert!(s.error.unwrap().contains("ping_group_range"));
}

#[test]
fn duplicated_replies_are_counted_apart_not_as_received() {
    let ns = Netns::new("fprobe");
    // Every echo reply leaves twice.
    ns.nft_chain("ip", "out", "output");
    ns.nft_rule(
        "ip",
        "out",
        "icmp type echo-reply dup to 127.0.0.1 device lo",
    );
    let scratch = Scratch::new("netns-dup");
    let config = scratch.path("probe.yaml");
    std::fs::write(
        &config,
        "node: n1\nprobe: t/p\nregion: r\ncountry: GH\ninterval: 10s\ntimeout: 1s\ningest: { urls: [\"http://127.0.0.1:1\"] }\ntargets:\n  - { name: ping, icmp: { host: 127.0.0.1, count: 10, spacing: 20ms } }\n",
    )
    .unwrap();
    let out = ns.exec(&[binary(), "once", "--config", config.to_str().unwrap()]);
    let s: Sample = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    s.validate(chrono::Utc::now()).unwrap();
    assert_eq!((s.sent, s.received), (Some(10), Some(10)), "{s:?}");
    assert_eq!(s.packet_loss, Some(0.0));
    // The round ends at the last first reply, so the last duplicate may come too late to
    // be seen.
    let dups = s.metadata["duplicates"].as_u64().unwrap();
    assert!((9..=10).contains(&dups), "{s:?}");
}
