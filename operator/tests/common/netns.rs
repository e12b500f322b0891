//! Network namespaces and the real data path for the operator's netns tests (root only):
//! `ip` commands, a namespace removed on drop, veth links, and the region's own
//! `fiber-ingest` and `fiber-etl` processes killed when the test ends.

use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, ensure};
use fiberstack_e2e::{LocalEnv, ReservedPort, workspace_binary};

/// Runs `cmd`, failing with its stderr when it fails.
pub fn run(cmd: &[&str]) -> Result<Output> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A network namespace with its loopback up; deleted on drop (its veth ends go with it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        // A leftover of an earlier run with the same name would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full)
    }

    /// Lets it route between its links.
    pub fn forward(&self) -> Result<()> {
        self.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair named `a_if`/`b_if` between `a` and `b` (None: this machine), with the
/// addresses (CIDR) given, both up. On this machine's side it must be deleted by the caller
/// (a namespace's side goes with the namespace).
pub fn veth(
    (a, a_if, a_addr): (Option<&Netns>, &str, &str),
    (b, b_if, b_addr): (Option<&Netns>, &str, &str),
) -> Result<()> {
    let _ = Command::new("ip").args(["link", "del", a_if]).output();
    run(&[
        "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if,
    ])?;
    for (ns, iface, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        let exec = |cmd: &[&str]| match ns {
            Some(ns) => ns.exec(cmd),
            None => run(cmd),
        };
        if let Some(ns) = ns {
            run(&["ip", "link", "set", iface, "netns", &ns.name])?;
        }
        exec(&["ip", "addr", "add", addr, "dev", iface])?;
        exec(&["ip", "link", "set", iface, "up"])?;
    }
    Ok(())
}

/// Child processes killed when the test ends, however it ends.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The region's own `fiber-ingest` (on every address of this machine, static `token`) and
/// `fiber-etl` into `database_url`: the ingest port, and the processes.
pub fn data_path(
    env: &LocalEnv,
    region: &str,
    database_url: &str,
    token: &str,
) -> Result<(ReservedPort, Processes)> {
    let ingest_port = ReservedPort::new()?;
    let etl_metrics = ReservedPort::new()?;
    let mut processes = Processes(Vec::new());
    processes.0.push(
        Command::new(workspace_binary("fiber-ingest")?)
            .args(["--region", region])
            .args(["--listen", &format!("0.0.0.0:{}", ingest_port.port())])
            .env("REDIS_URL", &env.redis_url)
            .env("FIBER_TOKEN", token)
            .env("FIBER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    processes.0.push(
        Command::new(workspace_binary("fiber-etl")?)
            .args(["run", "--region", region, "--database-url", database_url])
            .args(["--metrics-listen", &etl_metrics.addr().to_string()])
            .env("REDIS_URL", &env.redis_url)
            .env("FIBER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    Ok((ingest_port, processes))
}

/// Deletes the region's stream and dead-letter stream, which [`data_path`]'s processes used.
pub async fn drop_region_streams(env: &LocalEnv, region: &str) -> Result<()> {
    let mut redis = env.redis().await?;
    let _: () = redis::cmd("DEL")
        .arg(format!("fiber:samples:{region}"))
        .arg(format!("fiber:dlq:{region}"))
        .query_async(&mut redis)
        .await?;
    Ok(())
}
