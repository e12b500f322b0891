//! Cluster networking on one machine. Each pod gets a network namespace holding its pod IP
//! (the one kwok wrote into `status.podIP`), joined to the host by a veth pair, routed the
//! way Calico does it: a /32 route per pod on the host, and in the pod a default route via a
//! link-local gateway whose neighbour entry is the host end of the veth. So two pods can both
//! listen on `0.0.0.0:8080`, reach each other by pod IP, and the host reaches every pod.
//!
//! Names resolve through `/etc/hosts`: `ip netns exec` bind-mounts `/etc/netns/<ns>/hosts`
//! over `/etc/hosts` for the processes it starts, and the runner keeps that file listing each
//! Service (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`) with its ready pods.
//! Services on the host (the local Redis and PostgreSQL, the kube-apiserver) are reached at
//! extra host addresses on `lo` (no dummy interfaces here: the kernel has no module for
//! them), forwarded to their loopback ports.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The interface holding the host addresses pods reach the machine's services on.
pub const HOST_INTERFACE: &str = "lo";
/// Link-local gateway every pod routes through (the host end of its veth answers for it).
const GATEWAY: &str = "169.254.1.1";

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Puts `addresses` on the host's loopback interface and turns on IPv4 forwarding, which
/// pod-to-pod traffic through the host needs. Idempotent: several runners may share them.
pub fn host_addresses(addresses: &[Ipv4Addr]) -> Result<()> {
    for a in addresses {
        run(&[
            "ip",
            "addr",
            "replace",
            &format!("{a}/32"),
            "dev",
            HOST_INTERFACE,
        ])?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("cannot enable net.ipv4.ip_forward")?;
    Ok(())
}

/// A pod's network namespace and the names derived from its UID.
pub struct PodNetwork {
    pub netns: String,
    host_veth: String,
    pub ip: Ipv4Addr,
}

impl PodNetwork {
    pub fn names(uid: &str, ip: Ipv4Addr) -> Self {
        let short: String = uid.chars().filter(|c| *c != '-').take(10).collect();
        Self {
            netns: format!("fs-{short}"),
            host_veth: format!("fsv{short}"),
            ip,
        }
    }

    /// The file `ip netns exec` shows the pod as `/etc/hosts`.
    pub fn hosts_file(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.netns).join("hosts")
    }

    /// Creates the namespace, the veth pair and the routes; applies the pod's sysctls inside
    /// the namespace (the `net.*` ones are per namespace, as in a real pod).
    pub fn create(&self, sysctls: &[(String, String)]) -> Result<()> {
        self.destroy();
        let ns = self.netns.as_str();
        let veth = self.host_veth.as_str();
        run(&["ip", "netns", "add", ns])?;
        run(&[
            "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        run(&["ip", "link", "set", veth, "up"])?;
        let mac = std::fs::read_to_string(format!("/sys/class/net/{veth}/address"))
            .with_context(|| format!("MAC of {veth}"))?;
        let ip = format!("{}/32", self.ip);
        let in_ns = |args: &[&str]| -> Result<String> {
            let mut all = vec!["ip", "netns", "exec", ns];
            all.extend_from_slice(args);
            run(&all)
        };
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&["ip", "addr", "add", &ip, "dev", "eth0"])?;
        in_ns(&["ip", "link", "set", "eth0", "up"])?;
        in_ns(&[
            "ip", "route", "add", GATEWAY, "dev", "eth0", "scope", "link",
        ])?;
        in_ns(&[
            "ip",
            "neigh",
            "replace",
            GATEWAY,
            "lladdr",
            mac.trim(),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        in_ns(&[
            "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0",
        ])?;
        run(&["ip", "route", "replace", &ip, "dev", veth])?;
        for (name, value) in sysctls {
            if !name.starts_with("net.") {
                tracing::warn!(sysctl = %name, "only net.* sysctls are applied (per network namespace)");
                continue;
            }
            in_ns(&["sysctl", "-q", "-w", &format!("{name}={value}")])
                .with_context(|| format!("sysctl {name}"))?;
        }
        std::fs::create_dir_all(self.hosts_file().parent().expect("has a parent"))?;
        Ok(())
    }

    /// Removes what `create` made; what is already gone is fine.
    pub fn destroy(&self) {
        let _ = run(&["ip", "link", "del", &self.host_veth]);
        let _ = run(&["ip", "netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.netns));
    }
}

/// Removes every pod network a runner left behind (after a crash or `kill -9`), and the host
/// addresses.
pub fn destroy_all_leftovers(addresses: &[Ipv4Addr]) {
    for a in addresses {
        let _ = run(&[
            "ip",
            "addr",
            "del",
            &format!("{a}/32"),
            "dev",
            HOST_INTERFACE,
        ]);
    }
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if let Some(short) = name.strip_prefix("fs-") {
                let _ = run(&["ip", "link", "del", &format!("fsv{short}")]);
                let _ = run(&["ip", "netns", "del", name]);
                let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
            }
        }
    }
}

/// Rewrites `path` in place (not by rename): the running processes see it through a bind
/// mount of the original inode.
pub fn write_in_place(path: &std::path::Path, content: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))
}
