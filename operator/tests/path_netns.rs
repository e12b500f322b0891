//! A path change, measured for real: a `fiber-probe` process in a network namespace (the
//! node gh-accra-1) traces a target in another namespace that it reaches through router A or
//! router B, and delivers through the real `fiber-ingest`, Redis and `fiber-etl` into a
//! migrated database; the operator (in-process, against the local control plane) judges the
//! rounds. The route is switched from A to B mid-test:
//!
//! * before: status.paths holds the node's path through A (A's address, then the target);
//! * after: exactly one `PathChanged` Event naming the node, status.paths holds the path
//!   through B and `lastChange` the hops before and after; more rounds on B add no Event.
//!
//! ```text
//!            .1 ┌────────┐ .1         .2
//!   prober ─────┤router A├───────────── target 10.206.9.1
//!  10.206.1/30  └────────┘ 10.206.3/30    │
//!      │     .1 ┌────────┐ .1         .2  │
//!      └────────┤router B├────────────────┘
//!  10.206.2/30  └────────┘ 10.206.4/30
//!  (and 10.206.0/30 to this machine, for ingest)
//! ```
//!
//! Needs root (`ip netns`, veth pairs), like the probe's own netns tests.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::netns::{self, Netns, veth};
use common::{EVERY, Operator, apply_json};
use fiberstack_e2e::{LocalEnv, TestNamespace, unique_name, wait_for, workspace_binary};
use fiberstack_operator::crd::{FiberProbe, FiberRegion};
use fiberstack_operator::paths::TargetPath;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

/// Rounds every 2 s, a change held for 2 rounds, delivery and a status period (2 s), with
/// room for a busy machine.
const WAIT: Duration = Duration::from_secs(90);
const TOKEN: &str = "netns-path-token-0123456789abcdef";
const TARGET: &str = "10.206.9.1";
const VIA_A: &str = "10.206.1.2";
const VIA_B: &str = "10.206.2.2";

/// The five ends of the picture above; deleted on drop (with this machine's veth end).
struct Topology {
    prober: Netns,
    _routers: [Netns; 2],
    _target: Netns,
    host_if: String,
}

impl Topology {
    fn new() -> Result<Self> {
        let id = std::process::id() % 100_000;
        let ns = |role: &str| Netns::new(format!("fspath-{id}-{role}"));
        let (prober, a, b, target) = (ns("p")?, ns("a")?, ns("b")?, ns("t")?);
        let host_if = format!("fsph{id}");
        let topology = Self {
            prober,
            _routers: [a, b],
            _target: target,
            host_if,
        };
        let (p, [a, b], t) = (&topology.prober, &topology._routers, &topology._target);
        let link = |n: &str| format!("fsp{id}{n}");
        veth(
            (None, &topology.host_if, "10.206.0.1/30"),
            (Some(p), &link("ph"), "10.206.0.2/30"),
        )?;
        veth(
            (Some(p), &link("pa"), "10.206.1.1/30"),
            (Some(a), &link("ap"), "10.206.1.2/30"),
        )?;
        veth(
            (Some(p), &link("pb"), "10.206.2.1/30"),
            (Some(b), &link("bp"), "10.206.2.2/30"),
        )?;
        veth(
            (Some(a), &link("at"), "10.206.3.1/30"),
            (Some(t), &link("ta"), "10.206.3.2/30"),
        )?;
        veth(
            (Some(b), &link("bt"), "10.206.4.1/30"),
            (Some(t), &link("tb"), "10.206.4.2/30"),
        )?;
        t.exec(&["ip", "addr", "add", &format!("{TARGET}/32"), "dev", "lo"])?;
        // Replies go back the way their request came: each prober address by its router.
        t.exec(&["ip", "route", "add", "10.206.1.0/30", "via", "10.206.3.1"])?;
        t.exec(&["ip", "route", "add", "10.206.2.0/30", "via", "10.206.4.1"])?;
        for (router, next) in [(a, "10.206.3.2"), (b, "10.206.4.2")] {
            router.forward()?;
            router.exec(&["ip", "route", "add", TARGET, "via", next])?;
        }
        topology.route_via(VIA_A)?;
        Ok(topology)
    }

    /// The prober's route to the target: through the router at `via`.
    fn route_via(&self, via: &str) -> Result<()> {
        self.prober
            .exec(&["ip", "route", "replace", TARGET, "via", via])?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// The probe process, in the prober's namespace; killed on drop.
struct ProbeProcess(Child);

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_probe(
    ns: &Netns,
    scratch: &Path,
    probe: &str,
    region: &str,
    port: u16,
) -> Result<ProbeProcess> {
    let config = scratch.join("probe.yaml");
    std::fs::write(
        &config,
        format!(
            "node: placeholder\n\
             probe: {probe}\n\
             region: {region}\n\
             country: GH\n\
             interval: 2s\n\
             timeout: 1500ms\n\
             ingest:\n  urls: [\"http://10.206.0.1:{port}\"]\n  batchMaxDelay: 1s\n\
             buffer: {{ dir: {buffer} }}\n\
             targets:\n\
             \x20 - {{ name: path, traceroute: {{ host: {TARGET}, maxHops: 4, probesPerHop: 2, hopTimeout: 300ms, changeAfterRounds: 2 }} }}\n",
            buffer = scratch.join("buffer").display(),
        ),
    )?;
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(workspace_binary("fiber-probe")?)
        .arg("--config")
        .arg(&config)
        .env("NODE_NAME", "gh-accra-1")
        .env("FIBER_TOKEN", TOKEN)
        .env("FIBER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting fiber-probe")?;
    Ok(ProbeProcess(child))
}

async fn path_of(probes: &Api<FiberProbe>) -> Result<Option<TargetPath>> {
    let status = probes.get("edge").await?.status.unwrap_or_default();
    Ok(status.paths.into_iter().find(|p| p.target == "path"))
}

/// The node's current hops, once status has a path for it.
async fn until_hops(probes: &Api<FiberProbe>, what: &str, hops: &[&str]) -> Result<TargetPath> {
    wait_for(what, WAIT, EVERY, || async {
        let path = path_of(probes).await?;
        let now: Option<Vec<String>> = path
            .as_ref()
            .and_then(|p| p.vantage_points.iter().find(|v| v.node == "gh-accra-1"))
            .map(|v| v.hops.clone());
        Ok(match (path, now) {
            (Some(path), Some(now)) if now == hops => Ok(path),
            (_, now) => Err(format!("gh-accra-1's hops {now:?}")),
        })
    })
    .await
}

async fn path_events(client: &kube::Client, ns: &str) -> Result<Vec<String>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PathChanged"))
        .map(|e| e.note.unwrap_or_default())
        .collect())
}

#[tokio::test]
async fn a_route_switch_is_one_path_change_with_the_hops_of_both_routes() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let (url, pool) = common::migrated_database("fs_path_netns").await?;
    let ns = TestNamespace::create(&client, "op-path-netns").await?;
    let region = unique_name("pathns");
    let scratch = std::env::temp_dir().join(unique_name("fs-path-netns"));
    std::fs::create_dir_all(&scratch)?;
    let db = fiberstack_operator::status::connect_lazy(&url, None)?;
    let operator = Operator::start(&client, &ns.name, Some(db));

    let outcome = async {
        let topology = Topology::new()?;
        let (ingest_port, processes) = netns::data_path(&env, &region, &url, TOKEN)?;
        let mut region_spec = common::region_json(&region);
        region_spec["spec"]["nodeSelector"] = json!({ "kubernetes.io/hostname": "gh-accra-1" });
        apply_json(
            &Api::<FiberRegion>::namespaced(client.clone(), &ns.name),
            &region_spec,
        )
        .await?;
        let mut probe = common::probe_json("edge", &region);
        probe["spec"]["interval"] = json!("2s");
        probe["spec"]["timeout"] = json!("1500ms");
        probe["spec"]["targets"] = json!([{ "name": "path", "traceroute": {
            "host": TARGET, "maxHops": 4, "probesPerHop": 2, "hopTimeout": "300ms",
            "changeAfterRounds": 2, "changeAlertFor": "0s"
        } }]);
        let probes: Api<FiberProbe> = Api::namespaced(client.clone(), &ns.name);
        apply_json(&probes, &probe).await?;
        let key = format!("{}/edge", ns.name);
        let _probe = start_probe(
            &topology.prober,
            &scratch,
            &key,
            &region,
            ingest_port.port(),
        )?;

        // Route A: its router, then the target (which answers the last TTL itself).
        until_hops(&probes, "the path through router A", &[VIA_A, TARGET]).await?;
        assert_eq!(
            path_events(&client, &ns.name).await?,
            Vec::<String>::new(),
            "a first path is learned silently"
        );

        topology.route_via(VIA_B)?;
        let path = until_hops(&probes, "the path through router B", &[VIA_B, TARGET]).await?;
        let change = path.last_change.context("lastChange after the switch")?;
        assert_eq!(change.node, "gh-accra-1");
        assert_eq!(
            (change.before.as_slice(), change.after.as_slice()),
            (
                &[VIA_A.to_owned(), TARGET.to_owned()][..],
                &[VIA_B.to_owned(), TARGET.to_owned()][..]
            )
        );
        let events = wait_for("one PathChanged Event", WAIT, EVERY, || async {
            let events = path_events(&client, &ns.name).await?;
            Ok(if events.is_empty() {
                Err("none yet".to_owned())
            } else {
                Ok(events)
            })
        })
        .await?;
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            events[0].contains("gh-accra-1") && events[0].contains(VIA_B),
            "{}",
            events[0]
        );

        // Rounds keep coming on B: nothing more is announced.
        let stored_before: i64 =
            sqlx::query_scalar("select count(*) from metrics where target = 'path'")
                .fetch_one(&pool)
                .await?;
        wait_for("four more rounds stored", WAIT, EVERY, || async {
            let n: i64 = sqlx::query_scalar("select count(*) from metrics where target = 'path'")
                .fetch_one(&pool)
                .await?;
            Ok(if n >= stored_before + 4 {
                Ok(())
            } else {
                Err(format!("{n} rounds"))
            })
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let events = path_events(&client, &ns.name).await?;
        assert_eq!(events.len(), 1, "a held path is announced once: {events:?}");
        // The rounds stored carry the hops the status names.
        let hops: Vec<(i16, Option<String>)> = sqlx::query_as(
            "select ttl, host(address) from hops
              where target = 'path' and time = (select max(time) from hops where target = 'path')
              order by ttl",
        )
        .fetch_all(&pool)
        .await?;
        assert_eq!(
            hops,
            [(1, Some(VIA_B.to_owned())), (2, Some(TARGET.to_owned()))]
        );
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
