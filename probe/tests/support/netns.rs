//! Network namespaces for the tests that run `fiber-probe` on real (virtual) networks:
//! `netns`, `icmp_netns` and `traceroute`.

use std::process::{Command, Output};

/// Runs `cmd` and fails the test with its stderr when it fails.
pub fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace with `lo` up and ping sockets allowed for every group, deleted on
/// drop (also when the test fails). Its name is `tag`, the test's process id and a random
/// number: tests running at once do not meet.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("{tag}-{}-{}", std::process::id(), fastrand::u32(..));
        run(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // The sysctl is per network namespace; a new one starts at "1 0" (nobody).
        ns.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
        ns
    }

    /// Runs `cmd` inside the namespace; fails the test when it fails.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        run(&self.command(cmd))
    }

    /// Adds table `t` of nftables `family` (`ip`, `inet`) with a filter chain `chain` on
    /// `hook` (`input`, `output`), priority 0.
    pub fn nft_chain(&self, family: &str, chain: &str, hook: &str) {
        self.exec(&["nft", "add", "table", family, "t"]);
        let spec = format!("{{ type filter hook {hook} priority 0; }}");
        self.exec(&["nft", "add", "chain", family, "t", chain, &spec]);
    }

    /// Appends `rule` (nft's syntax, e.g. `tcp dport 9 drop`) to `chain` of table `t`.
    pub fn nft_rule(&self, family: &str, chain: &str, rule: &str) {
        self.exec(&["nft", "add", "rule", family, "t", chain, rule]);
    }

    /// `cmd` prefixed to run inside the namespace, for a caller that judges its result.
    pub fn command<'a>(&'a self, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(cmd);
        full
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
