//! The traceroute check on a real routed network of network namespaces:
//!
//! ```text
//!            10.1.1.0/24      router A      10.2.1.0/24
//!          ┌─────────────── (4 ms each way) ──────────────┐
//! prober ──┤                                               ├── target 10.9.9.9, fd09::9
//!          └─────────────── (7 ms each way) ──────────────┘
//!            10.1.2.0/24      router B      10.2.2.0/24
//! ```
//!
//! The prober's route to the target goes through A or B (switched mid-test); netem delays
//! on the routers make hop RTTs measurable, and Debian's `tracepath` measures the same path
//! for comparison. `fiber-probe once` runs inside the prober's namespace, unprivileged
//! sockets only.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use fiberstack_model::{Sample, path_fingerprint};
use support::netns::{Netns, run};
use support::*;

/// A namespace of the topology: as [`Netns::new`], and set to answer like a router should.
fn node(role: &str) -> Netns {
    let ns = Netns::new(&format!("ftr-{role}"));
    // Routers answer every probe: the kernel's ICMP rate limit (a burst of 6, then one a
    // second per destination) would otherwise turn later rounds into loss.
    ns.exec(&["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"]);
    // Links come up usable at once: duplicate address detection would hold the link-local
    // addresses, and with them neighbour discovery, for a second or two.
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
    ns
}

const TARGET_V4: &str = "10.9.9.9";
const TARGET_V6: &str = "fd09::9";
const A_V4: &str = "10.1.1.1";
const B_V4: &str = "10.1.2.1";
const A_V6: &str = "fd01:1::1";
const B_V6: &str = "fd01:2::1";
/// Delay of each router's two links, on the router's side: A's "time exceeded" crosses one
/// delayed link (4 ms), the target's answer through A two (8 ms).
const DELAY_A_MS: f64 = 4.0;
const DELAY_B_MS: f64 = 7.0;

struct Topology {
    /// Whether the routers delay their links: the kernel may lack sch_netem (the CI's VMs
    /// do), and then hop RTTs are those of bare veth pairs (tens of microseconds).
    delayed: bool,
    prober: Netns,
    a: Netns,
    b: Netns,
    target: Netns,
}

fn link(left: &Netns, left_if: &str, right: &Netns, right_if: &str) {
    run(&[
        "ip", "link", "add", left_if, "netns", &left.0, "type", "veth", "peer", "name", right_if,
        "netns", &right.0,
    ]);
}

fn address(ns: &Netns, dev: &str, v4: &str, v6: &str) {
    ns.exec(&["ip", "addr", "add", v4, "dev", dev]);
    ns.exec(&["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"]);
    ns.exec(&["ip", "link", "set", dev, "up"]);
}

impl Topology {
    fn new() -> Self {
        let prober = node("p");
        let probe_netem = prober.command(&[
            "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ]);
        let delayed = Command::new(probe_netem[0])
            .args(&probe_netem[1..])
            .output()
            .is_ok_and(|o| o.status.success());
        if delayed {
            prober.exec(&["tc", "qdisc", "del", "dev", "lo", "root"]);
        } else {
            eprintln!("this kernel has no sch_netem: the routers add no delay");
        }
        let t = Topology {
            delayed,
            prober,
            a: node("a"),
            b: node("b"),
            target: node("t"),
        };
        link(&t.prober, "pa", &t.a, "ap");
        link(&t.prober, "pb", &t.b, "bp");
        link(&t.a, "at", &t.target, "ta");
        link(&t.b, "bt", &t.target, "tb");
        address(&t.prober, "pa", "10.1.1.2/24", "fd01:1::2/64");
        address(&t.prober, "pb", "10.1.2.2/24", "fd01:2::2/64");
        address(&t.a, "ap", "10.1.1.1/24", "fd01:1::1/64");
        address(&t.a, "at", "10.2.1.1/24", "fd02:1::1/64");
        address(&t.b, "bp", "10.1.2.1/24", "fd01:2::1/64");
        address(&t.b, "bt", "10.2.2.1/24", "fd02:2::1/64");
        address(&t.target, "ta", "10.2.1.2/24", "fd02:1::2/64");
        address(&t.target, "tb", "10.2.2.2/24", "fd02:2::2/64");
        t.target
            .exec(&["ip", "addr", "add", "10.9.9.9/32", "dev", "lo"]);
        t.target
            .exec(&["ip", "-6", "addr", "add", "fd09::9/128", "dev", "lo"]);
        for (router, to_target, next_v4, next_v6, delay) in [
            (&t.a, "at", "10.2.1.2", "fd02:1::2", DELAY_A_MS),
            (&t.b, "bt", "10.2.2.2", "fd02:2::2", DELAY_B_MS),
        ] {
            router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            router.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
            router.exec(&["ip", "route", "add", TARGET_V4, "via", next_v4]);
            router.exec(&["ip", "-6", "route", "add", TARGET_V6, "via", next_v6]);
            let delay = format!("{delay}ms");
            for dev in [to_target, if to_target == "at" { "ap" } else { "bp" }]
                .into_iter()
                .filter(|_| t.delayed)
            {
                router.exec(&[
                    "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", &delay,
                ]);
            }
        }
        for (net, via) in [
            ("10.1.1.0/24", "10.2.1.1"),
            ("10.1.2.0/24", "10.2.2.1"),
            ("fd01:1::/64", "fd02:1::1"),
            ("fd01:2::/64", "fd02:2::1"),
        ] {
            t.target.exec(&["ip", "route", "add", net, "via", via]);
        }
        t.route_via(A_V4, A_V6);
        t
    }

    /// Sends the prober's traffic to the target through the router at `v4` / `v6`.
    fn route_via(&self, v4: &str, v6: &str) {
        self.prober
            .exec(&["ip", "route", "replace", TARGET_V4, "via", v4]);
        self.prober
            .exec(&["ip", "-6", "route", "replace", TARGET_V6, "via", v6]);
    }

    /// One round of a traceroute target by `fiber-probe once` in the prober's namespace.
    fn trace(&self, name: &str, check: &str) -> Sample {
        let scratch = Scratch::new("traceroute");
        let config = scratch.path("probe.yaml");
        std::fs::write(
            &config,
            format!(
                "node: n1\nprobe: t/p\nregion: r\ncountry: GH\ninterval: 10s\ntimeout: 2s\ningest: {{ urls: [\"http://127.0.0.1:1\"] }}\ntargets:\n  - {{ name: {name}, traceroute: {check} }}\n"
            ),
        )
        .unwrap();
        let out = self
            .prober
            .exec(&[binary(), "once", "--config", config.to_str().unwrap()]);
        let s: Sample = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        s.validate(chrono::Utc::now()).unwrap();
        assert_eq!(s.target, name);
        s
    }

    /// `tracepath -n` from the prober: per hop address, the RTTs it printed.
    fn tracepath(&self, target: &str) -> BTreeMap<String, Vec<f64>> {
        let family = if target.contains(':') { "-6" } else { "-4" };
        let out = self
            .prober
            .exec(&["tracepath", family, "-n", "-m", "5", target]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut hops: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        // e.g. " 1:  10.1.1.1     4.123ms" or " 2:  10.9.9.9    8.201ms reached"
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 3
                && fields[0].ends_with(':')
                && fields[0].trim_end_matches(':').parse::<u8>().is_ok()
                && let Some(ms) = fields[2].strip_suffix("ms")
                && let Ok(ms) = ms.parse::<f64>()
            {
                hops.entry(fields[1].to_owned()).or_default().push(ms);
            }
        }
        assert!(!hops.is_empty(), "no hops in tracepath's output:\n{text}");
        hops
    }
}

fn addresses(s: &Sample) -> Vec<Option<&str>> {
    s.hops.iter().map(|h| h.address.as_deref()).collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Rounds compared with `tracepath` per hop: RTTs of veth pairs are tens of microseconds,
/// and on a busy machine one preempted probe of either tool can take a millisecond; the
/// median of five rounds of each is what one of them measures, the outliers are not.
const COMPARED_ROUNDS: usize = 5;

/// Our hop RTTs agree with `tracepath`'s within 10 % or 0.2 ms, and with the netem delays:
/// the median over `first` and further rounds of `check` against the median of as many
/// `tracepath` runs.
fn agrees_with_tracepath(t: &Topology, first: &Sample, check: &str, target: &str, delay_ms: f64) {
    let mut rounds = vec![first.clone()];
    while rounds.len() < COMPARED_ROUNDS {
        let next = t.trace(&first.target, check);
        assert_eq!(addresses(&next), addresses(first), "{next:?}");
        rounds.push(next);
    }
    let mut reference: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..COMPARED_ROUNDS {
        for (address, rtts) in t.tracepath(target) {
            reference.entry(address).or_default().extend(rtts);
        }
    }
    for (i, hop) in first.hops.iter().enumerate() {
        let address = hop.address.as_deref().unwrap();
        let ours = median(
            rounds
                .iter()
                .map(|s| s.hops[i].latency_ms.unwrap())
                .collect(),
        );
        let theirs = reference
            .get(address)
            .unwrap_or_else(|| panic!("tracepath did not see {address}: {reference:?}"));
        let theirs = median(theirs.clone());
        let off = (ours - theirs).abs();
        eprintln!(
            "{target} hop {} {address}: fiber-probe {ours:.3} ms (first round min {:.3}, max {:.3}), tracepath {theirs:.3} ms, off by {off:.3} ms",
            hop.ttl,
            hop.latency_min_ms.unwrap(),
            hop.latency_max_ms.unwrap(),
        );
        assert!(
            off <= 0.2 || off <= 0.1 * theirs,
            "hop {address}: {ours} ms, tracepath {theirs} ms"
        );
        if !t.delayed {
            continue;
        }
        // Hop 1 crosses one delayed link, the target two.
        let expected = delay_ms * (i + 1) as f64;
        assert!(
            ours >= expected && ours < expected + 2.0,
            "hop {address}: {ours} ms, netem delays add up to {expected} ms"
        );
    }
}

const CHECK: &str = "{ host: HOST, maxHops: 5, probesPerHop: 3, hopTimeout: 300ms }";

fn check(host: &str) -> String {
    CHECK.replace("HOST", host)
}

/// The probes a test sends: UDP datagrams (the default) or ICMP echo requests.
#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Udp,
    Icmp,
}

impl Protocol {
    /// `check` (a flow-style mapping) with this protocol.
    fn check(self, check: &str) -> String {
        match self {
            Protocol::Udp => check.to_owned(),
            Protocol::Icmp => check.replacen("{ ", "{ protocol: icmp, ", 1),
        }
    }

    /// The metadata key of what keeps rounds on one flow: the UDP source port, the ICMP echo
    /// identifier.
    fn flow_key(self) -> &'static str {
        match self {
            Protocol::Udp => "source_port",
            Protocol::Icmp => "echo_id",
        }
    }

    /// nftables words matching this protocol's probes (IPv4 and IPv6 for ICMP).
    fn probe_match(self) -> Vec<Vec<&'static str>> {
        match self {
            Protocol::Udp => vec![vec!["udp", "dport", "33434"]],
            Protocol::Icmp => vec![
                vec!["icmp", "type", "echo-request"],
                vec!["icmpv6", "type", "echo-request"],
            ],
        }
    }
}

/// Adds a table `t` and a filter chain `chain` on `hook` to `ns`, then a rule per match of
/// `matches`, each followed by `then`.
fn nft_rules(ns: &Netns, chain: &str, hook: &str, matches: &[Vec<&str>], then: &[&str]) {
    ns.nft_chain("inet", chain, hook);
    for m in matches {
        ns.nft_rule("inet", chain, &[&m[..], then].concat().join(" "));
    }
}

fn hops_follow_the_route(protocol: Protocol) {
    let t = Topology::new();
    let check = |host: &str| protocol.check(&check(host));
    for (target, hop_a, hop_b) in [(TARGET_V4, A_V4, B_V4), (TARGET_V6, A_V6, B_V6)] {
        t.route_via(A_V4, A_V6);
        // Neighbours resolved before measuring, for tracepath and for us alike.
        t.tracepath(target);
        let via_a = t.trace("path", &check(target));
        assert!(via_a.up, "{via_a:?}");
        assert_eq!(addresses(&via_a), [Some(hop_a), Some(target)]);
        assert_eq!(via_a.hops[0].ttl, 1);
        assert!(via_a.hops.iter().all(|h| h.sent == 3 && h.received == 3));
        assert_eq!(via_a.latency_ms, via_a.hops[1].latency_ms);
        assert_eq!(via_a.packet_loss, Some(0.0));
        agrees_with_tracepath(&t, &via_a, &check(target), target, DELAY_A_MS);

        // The same path next round: the same fingerprint, whatever the RTTs.
        let again = t.trace("path", &check(target));
        assert_eq!(again.path_fingerprint, via_a.path_fingerprint);
        // And the same source port (echo identifier): rounds keep to one flow.
        let key = protocol.flow_key();
        assert!(via_a.metadata[key].as_u64().is_some(), "{via_a:?}");
        assert_eq!(again.metadata[key], via_a.metadata[key]);

        // The route switched: the hops are B's and the fingerprint changes.
        t.route_via(B_V4, B_V6);
        t.tracepath(target);
        let via_b = t.trace("path", &check(target));
        assert!(via_b.up, "{via_b:?}");
        assert_eq!(addresses(&via_b), [Some(hop_b), Some(target)]);
        assert_ne!(via_b.path_fingerprint, via_a.path_fingerprint);
        assert_eq!(
            via_b.path_fingerprint.as_deref(),
            Some(path_fingerprint(&via_b.hops).as_str())
        );
        agrees_with_tracepath(&t, &via_b, &check(target), target, DELAY_B_MS);
    }
}

#[test]
fn hops_follow_the_route_and_agree_with_tracepath_on_ipv4_and_ipv6() {
    hops_follow_the_route(Protocol::Udp);
}

#[test]
fn icmp_hops_follow_the_route_and_agree_with_tracepath_on_ipv4_and_ipv6() {
    hops_follow_the_route(Protocol::Icmp);
}

fn loss_shows_at_the_hop_and_beyond(protocol: Protocol) {
    let t = Topology::new();
    t.trace("warm-up", &protocol.check(&check(TARGET_V4)));
    // Every second probe entering router A is dropped, before A decides whether it expires
    // there or is forwarded: each hop's 10 probes lose exactly 5.
    nft_rules(
        &t.a,
        "pre",
        "prerouting",
        &protocol.probe_match(),
        &["numgen", "inc", "mod", "2", "==", "0", "drop"],
    );
    let s = t.trace(
        "lossy",
        &protocol.check("{ host: 10.9.9.9, maxHops: 5, probesPerHop: 10, hopTimeout: 300ms }"),
    );
    assert!(s.up, "{s:?}");
    assert_eq!(addresses(&s), [Some(A_V4), Some(TARGET_V4)]);
    for hop in &s.hops {
        assert_eq!((hop.sent, hop.received), (10, 5), "{hop:?}");
        assert_eq!(hop.packet_loss, 50.0);
    }
    assert_eq!(s.packet_loss, Some(50.0));
    assert_eq!((s.sent, s.received), (Some(10), Some(5)));
}

#[test]
fn loss_on_a_router_shows_at_that_hop_and_beyond() {
    loss_shows_at_the_hop_and_beyond(Protocol::Udp);
}

#[test]
fn icmp_loss_on_a_router_shows_at_that_hop_and_beyond() {
    loss_shows_at_the_hop_and_beyond(Protocol::Icmp);
}

fn a_silent_hop_is_a_star(protocol: Protocol) {
    let t = Topology::new();
    t.route_via(B_V4, B_V6);
    // Router B forwards but never says that a TTL ran out.
    nft_rules(
        &t.b,
        "out",
        "output",
        &[
            vec!["icmp", "type", "time-exceeded"],
            vec!["icmpv6", "type", "time-exceeded"],
        ],
        &["drop"],
    );
    for target in [TARGET_V4, TARGET_V6] {
        // Neighbours resolved first: a new link's first packets wait for it a second or so.
        t.tracepath(target);
        let s = t.trace("silent", &protocol.check(&check(target)));
        assert!(s.up, "{s:?}");
        assert_eq!(addresses(&s), [None, Some(target)], "{s:?}");
        let star = &s.hops[0];
        assert_eq!((star.sent, star.received), (3, 0));
        assert_eq!(star.packet_loss, 100.0);
        assert!(star.latency_ms.is_none());
        assert_eq!(s.packet_loss, Some(0.0));
    }

    // A host that never answers: the round is down, its hops are still told.
    t.route_via(A_V4, A_V6);
    nft_rules(&t.target, "in", "input", &protocol.probe_match(), &["drop"]);
    let s = t.trace(
        "unreached",
        &protocol.check("{ host: 10.9.9.9, maxHops: 3, probesPerHop: 2, hopTimeout: 200ms }"),
    );
    assert!(!s.up);
    assert_eq!(addresses(&s), [Some(A_V4), None, None]);
    assert_eq!(
        s.error.as_deref(),
        Some("10.9.9.9 not reached within 3 hops")
    );
    assert!(s.path_fingerprint.is_some());
}

#[test]
fn a_silent_hop_is_a_star_and_does_not_fail_the_round() {
    a_silent_hop_is_a_star(Protocol::Udp);
}

#[test]
fn icmp_a_silent_hop_is_a_star_and_does_not_fail_the_round() {
    a_silent_hop_is_a_star(Protocol::Icmp);
}

#[test]
fn rounds_of_a_target_keep_to_one_path_through_a_load_balanced_route() {
    let t = Topology::new();
    // The prober balances the target's traffic over A and B by each flow's addresses and
    // ports.
    t.prober
        .exec(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"]);
    t.prober.exec(&[
        "ip", "route", "replace", TARGET_V4, "nexthop", "via", A_V4, "nexthop", "via", B_V4,
    ]);
    t.tracepath(TARGET_V4);
    let mut paths = std::collections::BTreeSet::new();
    // Twelve targets (twelve source ports): all on one path has a chance of 2 in 4096.
    for i in 0..12 {
        let name = format!("balanced-{i}");
        let first = t.trace(&name, &check(TARGET_V4));
        assert!(first.up, "{first:?}");
        let hops: Vec<Option<String>> = first.hops.iter().map(|h| h.address.clone()).collect();
        assert!(
            hops == [Some(A_V4.into()), Some(TARGET_V4.into())]
                || hops == [Some(B_V4.into()), Some(TARGET_V4.into())],
            "{hops:?}"
        );
        for _ in 0..2 {
            let next = t.trace(&name, &check(TARGET_V4));
            assert_eq!(
                next.path_fingerprint, first.path_fingerprint,
                "{name}: {:?} then {:?}",
                first.hops, next.hops
            );
        }
        paths.insert(hops);
    }
    assert_eq!(paths.len(), 2, "both paths are used: {paths:?}");
}

/// The checksums of the echo requests router A forwards or answers, recorded by nftables in
/// a set per family (`seen4`, `seen6`), and how many requests there were.
fn echo_checksums_seen(t: &Topology) -> Vec<(Vec<u64>, u64)> {
    let out = t.a.exec(&["nft", "-j", "list", "table", "inet", "t"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["nftables"].as_array().unwrap();
    ["seen4", "seen6"]
        .iter()
        .map(|set| {
            let set = items
                .iter()
                .find(|i| i["set"]["name"] == *set)
                .unwrap_or_else(|| panic!("no set {set}: {v}"));
            let elements = set["set"]["elem"]
                .as_array()
                .map(|e| e.iter().map(|x| x.as_u64().unwrap()).collect())
                .unwrap_or_default();
            let counter = items
                .iter()
                .filter_map(|i| i["rule"]["expr"].as_array())
                .find(|expr| {
                    expr.iter().any(|e| {
                        e["set"]["set"] == format!("@{}", set["set"]["name"].as_str().unwrap())
                    })
                })
                .and_then(|expr| expr.iter().find_map(|e| e["counter"]["packets"].as_u64()))
                .unwrap_or_else(|| panic!("no counter for {set}: {v}"));
            (elements, counter)
        })
        .collect()
}

#[test]
fn icmp_probes_of_every_round_are_one_flow_on_the_wire() {
    let t = Topology::new();
    t.a.nft_chain("inet", "pre", "prerouting");
    for (set, proto) in [("seen4", "icmp"), ("seen6", "icmpv6")] {
        let spec = format!("{{ typeof {proto} checksum; flags dynamic; }}");
        t.a.exec(&["nft", "add", "set", "inet", "t", set, &spec]);
        t.a.nft_rule(
            "inet",
            "pre",
            &format!("{proto} type echo-request counter add @{set} {{ {proto} checksum }}"),
        );
    }
    let icmp = |host: &str| Protocol::Icmp.check(&check(host));
    // Neighbours resolved first; tracepath's probes are UDP, not counted.
    t.tracepath(TARGET_V4);
    t.tracepath(TARGET_V6);
    let mut ids = Vec::new();
    for target in [TARGET_V4, TARGET_V6] {
        for _ in 0..3 {
            let s = t.trace("path", &icmp(target));
            assert!(s.up, "{s:?}");
            assert_eq!(s.hops.len(), 2, "{s:?}");
            ids.push(s.metadata["echo_id"].clone());
        }
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // Three rounds of two hops of three probes per family, one checksum for all of them.
    for (family, (checksums, echoes)) in ["IPv4", "IPv6"].iter().zip(echo_checksums_seen(&t)) {
        assert_eq!(echoes, 18, "{family}");
        assert_eq!(checksums.len(), 1, "{family}: {checksums:?}");
    }
    // Another target is another flow (another echo identifier), and the set tells it apart.
    let other = t.trace("another-path", &icmp(TARGET_V4));
    assert_ne!(other.metadata["echo_id"], ids[0]);
    let (checksums, echoes) = echo_checksums_seen(&t).remove(0);
    assert_eq!(echoes, 24);
    assert_eq!(checksums.len(), 2, "{checksums:?}");
}
