//! Where is the fault, measured for real: two `fiber-probe` processes, each in its own network
//! namespace standing for a node (gh-accra-1, ng-lagos-1), measure one TCP target on this
//! machine and deliver through the real `fiber-ingest`, Redis and `fiber-etl` into a migrated
//! PostgreSQL database; the operator (in-process, against the local control plane) judges the
//! samples. nftables in a node's namespace breaks its path:
//!
//! 1. the target dropped from ng-lagos-1 only → the target is Partial, naming that node;
//! 2. gh-accra-1 cut off from ingest, then killed → that node is silent (NoData: named in the
//!    target's `silent` and the Reporting condition with "silent since"), never counted as
//!    seeing the target down; restarted with the link back, the samples its disk buffer kept
//!    arrive and are counted as late (`lateSamples`);
//! 3. the target stopped → Everywhere, from both nodes.
//!
//! Needs root (`ip netns`, veth pairs, nftables), like the probe's own netns tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::netns::{self, run};
use common::{EVERY, Operator, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, unique_name, wait_for, workspace_binary};
use fiberstack_operator::crd::{FiberProbe, FiberProbeStatus, FiberRegion, Scope, TargetStatus};
use kube::Api;
use serde_json::json;

/// Long enough for a probe round (2 s), its delivery, the ETL and a status period (2 s), with
/// room for a busy machine.
const WAIT: Duration = Duration::from_secs(90);
const TOKEN: &str = "netns-region-token-0123456789abcdef";

/// A node: a network namespace joined to this machine by a veth pair (10.203.k.1 on this
/// side, 10.203.k.2 inside), with an nftables output chain to break its paths. Removed on
/// drop, however the test ends.
struct NodeNet {
    ns: String,
    host_if: String,
    /// This machine's address as the node sees it: the target and ingest are reached there.
    host_ip: String,
}

impl NodeNet {
    fn new(k: u32) -> Result<Self> {
        let id = std::process::id() % 100_000;
        let net = Self {
            ns: format!("fsnode-{id}-{k}"),
            host_if: format!("fsh{id}x{k}"),
            host_ip: format!("10.203.{k}.1"),
        };
        let peer = format!("fsp{id}x{k}");
        // A leftover of an earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &net.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &net.host_if])
            .output();
        run(&["ip", "netns", "add", &net.ns])?;
        run(&[
            "ip",
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &net.ns])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", net.host_ip),
            "dev",
            &net.host_if,
        ])?;
        run(&["ip", "link", "set", &net.host_if, "up"])?;
        net.exec(&["ip", "link", "set", "lo", "up"])?;
        net.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.203.{k}.2/30"),
            "dev",
            &peer,
        ])?;
        net.exec(&["ip", "link", "set", &peer, "up"])?;
        net.exec(&["nft", "add", "table", "inet", "t"])?;
        net.exec(&[
            "nft",
            "add",
            "chain",
            "inet",
            "t",
            "out",
            "{ type filter hook output priority 0; }",
        ])?;
        Ok(net)
    }

    fn exec(&self, cmd: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.ns];
        full.extend_from_slice(cmd);
        run(&full)
    }

    /// Drops this node's TCP packets to `port` on this machine.
    fn drop_port(&self, port: u16) -> Result<()> {
        self.exec(&[
            "nft",
            "add",
            "rule",
            "inet",
            "t",
            "out",
            "ip",
            "daddr",
            &self.host_ip,
            "tcp",
            "dport",
            &port.to_string(),
            "drop",
        ])?;
        Ok(())
    }

    fn heal(&self) -> Result<()> {
        self.exec(&["nft", "flush", "chain", "inet", "t", "out"])?;
        Ok(())
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A probe process of one node, in its namespace; killed on drop.
struct ProbeNode {
    name: &'static str,
    net: NodeNet,
    config: PathBuf,
    child: Option<Child>,
}

impl ProbeNode {
    fn start(&mut self) -> Result<()> {
        let binary = workspace_binary("fiber-probe")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.ns])
            .arg(binary)
            .arg("--config")
            .arg(&self.config)
            .env("NODE_NAME", self.name)
            .env("FIBER_TOKEN", TOKEN)
            .env("FIBER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting fiber-probe")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: what the disk buffer holds survives.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProbeNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn probe_config(
    scratch: &Path,
    node: &str,
    probe: &str,
    region: &str,
    host: &str,
    ingest_port: u16,
    target_port: u16,
) -> Result<PathBuf> {
    let path = scratch.join(format!("{node}.yaml"));
    std::fs::write(
        &path,
        format!(
            "node: placeholder\n\
             probe: {probe}\n\
             region: {region}\n\
             country: GH\n\
             interval: 2s\n\
             timeout: 1s\n\
             ingest:\n  urls: [\"http://{host}:{ingest_port}\"]\n  batchMaxDelay: 1s\n\
             buffer: {{ dir: {buffer} }}\n\
             targets:\n\
             \x20 - {{ name: api, tcp: {{ host: {host}, port: {target_port} }} }}\n",
            buffer = scratch.join(format!("buffer-{node}")).display(),
        ),
    )?;
    Ok(path)
}

async fn until(
    probes: &Api<FiberProbe>,
    what: &str,
    check: impl Fn(&FiberProbeStatus, &TargetStatus) -> bool,
) -> Result<FiberProbeStatus> {
    wait_for(what, WAIT, EVERY, || async {
        let s = probes.get("edge").await?.status.unwrap_or_default();
        let api = s
            .targets
            .iter()
            .find(|t| t.name == "api")
            .cloned()
            .unwrap_or_default();
        Ok(if check(&s, &api) {
            Ok(s)
        } else {
            Err(format!("api {api:?}; conditions {:?}", s.conditions))
        })
    })
    .await
}

fn api(s: &FiberProbeStatus) -> &TargetStatus {
    s.targets
        .iter()
        .find(|t| t.name == "api")
        .expect("api's row")
}

fn condition_message(s: &FiberProbeStatus, type_: &str) -> String {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_broken_path_a_silent_probe_and_a_dead_target_are_told_apart() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let (url, pool) = common::migrated_database("fs_fault_netns").await?;
    let ns = TestNamespace::create(&client, "op-fault-netns").await?;
    let region = unique_name("netns");
    let scratch = std::env::temp_dir().join(unique_name("fs-fault-netns"));
    std::fs::create_dir_all(&scratch)?;
    let db = fiberstack_operator::status::connect_lazy(&url, None)?;
    let operator = Operator::start(&client, &ns.name, Some(db));

    let outcome = async {
        // The target: a TCP listener on every address of this machine.
        let target = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
        let target_port = target.local_addr()?.port();
        let accepting = tokio::spawn(async move {
            while let Ok((socket, _)) = target.accept().await {
                drop(socket);
            }
        });

        // Ingest and the ETL of the test's own region (its own stream).
        let (ingest_port, processes) = netns::data_path(&env, &region, &url, TOKEN)?;

        // The region and the probe: pods on both edge nodes (gh-accra-1, ng-lagos-1), which
        // the operator takes as the vantage points that should report.
        let mut region_spec = common::region_json(&region);
        region_spec["spec"]["nodeSelector"] = json!({ "fiberstack.io/edge": "true" });
        apply_json(
            &Api::<FiberRegion>::namespaced(client.clone(), &ns.name),
            &region_spec,
        )
        .await?;
        let mut probe = common::probe_json("edge", &region);
        probe["spec"]["interval"] = json!("2s");
        probe["spec"]["timeout"] = json!("1s");
        probe["spec"]["targets"] =
            json!([{ "name": "api", "tcp": { "host": "10.203.0.1", "port": target_port } }]);
        let probes: Api<FiberProbe> = Api::namespaced(client.clone(), &ns.name);
        apply_json(&probes, &probe).await?;

        let key = format!("{}/edge", ns.name);
        let base = (std::process::id() % 120) * 2 + 1;
        let mut nodes = Vec::new();
        for (i, name) in ["gh-accra-1", "ng-lagos-1"].into_iter().enumerate() {
            let net = NodeNet::new(base + i as u32)?;
            let config = probe_config(
                &scratch,
                name,
                &key,
                &region,
                &net.host_ip,
                ingest_port.port(),
                target_port,
            )?;
            let mut node = ProbeNode {
                name,
                net,
                config,
                child: None,
            };
            node.start()?;
            nodes.push(node);
        }
        let vantage = |node: &str| format!("{region}/{node}");

        // Both nodes see the target up.
        until(&probes, "api healthy from both nodes", |s, t| {
            s.reporting_probes == 2 && t.summary.uptime_pct == Some(100.0) && t.silent.is_empty()
        })
        .await?;

        // 1. The path from ng-lagos-1 only: Partial, that node named, the other not.
        nodes[1].net.drop_port(target_port)?;
        let s = until(&probes, "api Partial from ng-lagos-1", |_, t| {
            t.scope == Some(Scope::Partial)
        })
        .await?;
        assert_eq!(api(&s).vantage_points, [vantage("ng-lagos-1")]);
        let message = api(&s).message.clone().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "from {} only (1 of 2 vantage points)",
                vantage("ng-lagos-1")
            )),
            "{message}"
        );
        nodes[1].net.heal()?;

        // 2. gh-accra-1 loses its link to ingest: silent, not down. Then it is killed.
        nodes[0].net.drop_port(ingest_port.port())?;
        // The target's silent nodes and the Reporting condition are judged by one rule against
        // one clock (localize::recent); both are waited for, as each is asserted below.
        let s = until(&probes, "gh-accra-1 silent", |s, t| {
            t.silent == ["gh-accra-1"]
                && condition_message(s, "Reporting").contains("gh-accra-1 (silent since ")
        })
        .await?;
        let reporting = condition_message(&s, "Reporting");
        assert!(
            reporting.contains("gh-accra-1 (silent since "),
            "{reporting}"
        );
        assert!(
            !api(&s).vantage_points.contains(&vantage("gh-accra-1")),
            "a silent node is not a vantage point seeing a breach: {:?}",
            api(&s).vantage_points
        );
        // The rounds it measures meanwhile wait in its disk buffer; a few more of them.
        tokio::time::sleep(Duration::from_secs(6)).await;
        nodes[0].kill9();
        nodes[0].net.heal()?;
        nodes[0].start()?;
        let s = until(
            &probes,
            "gh-accra-1 back, its buffered rounds counted late",
            |s, t| {
                t.silent.is_empty()
                    && s.summary
                        .as_ref()
                        .and_then(|s| s.late_samples)
                        .is_some_and(|n| n >= 3)
            },
        )
        .await?;
        let late = api(&s).summary.late_samples.unwrap_or(0);
        assert!(late >= 3, "api's late samples: {late}");
        let stored: i64 = sqlx::query_scalar(
            "select count(*) from metrics
              where node = 'gh-accra-1' and received_at > time + interval '6 seconds'",
        )
        .fetch_one(&pool)
        .await?;
        assert!(
            stored >= late,
            "{stored} late rows stored, {late} counted in status"
        );
        let none_late: i64 = sqlx::query_scalar(
            "select count(*) from metrics
              where node = 'ng-lagos-1' and received_at > time + interval '6 seconds'",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(none_late, 0, "ng-lagos-1 was never cut off");

        // 3. The target itself stops: Everywhere, both nodes named.
        accepting.abort();
        let _ = accepting.await;
        let s = until(&probes, "api Everywhere", |_, t| {
            t.scope == Some(Scope::Everywhere)
        })
        .await?;
        assert_eq!(
            api(&s).vantage_points,
            [vantage("gh-accra-1"), vantage("ng-lagos-1")]
        );
        drop(nodes);
        drop(processes);
        Ok::<_, anyhow::Error>(())
    }
    .await;

    operator.stop().await;
    netns::drop_region_streams(&env, &region).await?;
    pool.close().await;
    ns.delete().await?;
    env.drop_postgres_database(&url, &[]).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}
