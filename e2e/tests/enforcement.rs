//! What a kubelet enforces, shown on FiberStack's own images on the real nodes (`make
//! env-up`: kubelet + containerd + runc per node; the images come from the local registry,
//! pinned by the digests `make images` wrote). Each test has a twin that differs only in the
//! setting under test, so it fails if the enforcement were missing:
//! - a write to the read-only root filesystem fails (and succeeds when it is writable);
//! - the probe's unprivileged ICMP works through the pod's `net.ipv4.ping_group_range`
//!   sysctl and is refused without it;
//! - a failing liveness probe gets the container restarted (a passing one does not);
//! - a probe pod's memory limit is written into its container's cgroup, and a container that
//!   allocates past its limit is OOM-killed while its twin under the limit lives;
//! - the images run as uid 65532 and have no shell (`kubectl exec … sh` fails).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fiberstack_e2e::{LocalEnv, TestNamespace, env_value, images, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{LogParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

mod support;
use support::{pod_process, tool, uid_of};

const EVERY: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(90);
const CONFIG_DIR: &str = "/etc/fiberstack";
/// A target for pods that only need to run: TCP to a closed port of the pod itself.
const IDLE_TARGET: &str = "{ name: t, tcp: { host: 127.0.0.1, port: 9 } }";

/// A probe configuration whose one target is `target` (YAML flow mapping), delivering to a
/// port where nothing listens (these pods only measure) and buffering in `buffer`.
fn probe_config(target: &str, buffer: &str) -> String {
    format!(
        r#"node: test-node
probe: test/enforcement
region: test
country: GH
interval: 2s
timeout: 1s
ingest:
  urls: ["http://127.0.0.1:9"]
buffer: {{ dir: {buffer}, maxBytes: 1Mi }}
metricsListen: 0.0.0.0:9090
targets:
  - {target}
"#
    )
}

async fn config_map(client: &Client, ns: &str, name: &str, config: &str) -> Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": name },
        "data": { "probe.yaml": config }
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}

/// A fiber-probe pod as the operator renders one (restricted security context, uid 65532,
/// the configuration from a ConfigMap), on `node`; `edit` changes what the test is about.
fn probe_pod(
    name: &str,
    node: &str,
    config: &str,
    args: &[&str],
    edit: impl FnOnce(&mut Value),
) -> Result<Pod> {
    let mut pod = json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
                "sysctls": [{ "name": "net.ipv4.ping_group_range", "value": "0 2147483647" }]
            },
            "containers": [{
                "name": "probe",
                "image": images::reference("fiber-probe")?,
                "imagePullPolicy": "IfNotPresent",
                "command": ["fiber-probe"],
                "args": args,
                "env": [{ "name": "FIBER_TOKEN", "value": "enforcement-test-token-0123456789" }],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": { "drop": ["ALL"] }
                },
                "volumeMounts": [{ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true }]
            }],
            "volumes": [{ "name": "config", "configMap": { "name": config } }]
        }
    });
    edit(&mut pod);
    Ok(serde_json::from_value(pod)?)
}

/// The probe's disk buffer on an emptyDir at /buffer (where `probe_config(…, "/buffer")`
/// puts it), as the operator renders it: off the read-only root filesystem.
fn with_buffer_volume(pod: &mut Value) {
    pod["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "buffer", "mountPath": "/buffer" }));
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "buffer", "emptyDir": {} }));
}

async fn create(pods: &Api<Pod>, pod: &Pod) -> Result<()> {
    pods.create(&PostParams::default(), pod).await?;
    Ok(())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn container_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
}

/// Waits until the pod's phase is one of `phases`; returns the pod.
async fn wait_phase(pods: &Api<Pod>, name: &str, phases: &[&str]) -> Result<Pod> {
    wait_for(
        &format!("pod {name} in {phases:?}"),
        WAIT,
        EVERY,
        || async {
            let pod = pods.get(name).await?;
            Ok(if phases.contains(&phase(&pod)) {
                Ok(pod)
            } else {
                Err(format!("{:?}", pod.status))
            })
        },
    )
    .await
}

async fn logs(pods: &Api<Pod>, name: &str) -> Result<String> {
    Ok(pods.logs(name, &LogParams::default()).await?)
}

/// A node of the environment and its own address (the pods' way to this machine).
async fn a_node(client: &Client) -> Result<(String, String)> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?;
    let node = nodes
        .items
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some("gh-accra-1"))
        .context("node gh-accra-1 is not registered: is `make env-up` up?")?;
    let ip = node
        .status
        .and_then(|s| s.addresses)
        .and_then(|a| a.into_iter().find(|a| a.type_ == "InternalIP"))
        .context("gh-accra-1 has no InternalIP")?
        .address;
    Ok(("gh-accra-1".to_owned(), ip))
}

async fn setup(prefix: &str) -> Result<(LocalEnv, Client, TestNamespace, String, String)> {
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let (node, ip) = a_node(&client).await?;
    Ok((env, client, ns, node, ip))
}

#[tokio::test]
async fn a_write_to_the_read_only_root_filesystem_fails() -> Result<()> {
    let (_env, client, ns, node, _) = setup("ro-root").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // The probe's disk buffer on the root filesystem (/tmp of the image, mode 1777).
    config_map(
        &client,
        &ns.name,
        "cfg",
        &probe_config(IDLE_TARGET, "/tmp/buffer"),
    )
    .await?;
    let args = ["--config", "/etc/fiberstack/probe.yaml"];
    create(&pods, &probe_pod("read-only", &node, "cfg", &args, |_| {})?).await?;
    create(
        &pods,
        &probe_pod("writable", &node, "cfg", &args, |p| {
            p["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = json!(false)
        })?,
    )
    .await?;

    wait_phase(&pods, "read-only", &["Failed"]).await?;
    let refused = logs(&pods, "read-only").await?;
    ensure!(
        refused.contains("Read-only file system"),
        "the read-only pod failed, but not on its write: {refused}"
    );
    wait_for(
        "the writable twin running with its buffer on /tmp",
        WAIT,
        EVERY,
        || async {
            let pod = pods.get("writable").await?;
            let log = logs(&pods, "writable").await.unwrap_or_default();
            Ok(if phase(&pod) == "Running" && log.contains("\"level\"") {
                Ok(())
            } else {
                Err(format!("phase {}, log {log}", phase(&pod)))
            })
        },
    )
    .await?;
    let log = logs(&pods, "writable").await?;
    ensure!(
        !log.contains("Read-only file system"),
        "the writable twin could not write either: {log}"
    );
    ns.delete().await
}

/// The samples a `fiber-probe once` pod printed.
async fn once_samples(pods: &Api<Pod>, name: &str) -> Result<Vec<Value>> {
    wait_phase(pods, name, &["Succeeded", "Failed"]).await?;
    let log = logs(pods, name).await?;
    let samples: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        // Samples, not the log lines (which go to stderr, merged here by the runtime).
        .filter(|v| v.get("kind").is_some() && v.get("level").is_none())
        .collect();
    ensure!(!samples.is_empty(), "{name} printed no sample: {log}");
    Ok(samples)
}

#[tokio::test]
async fn icmp_works_through_the_pods_ping_group_range_sysctl_and_not_without_it() -> Result<()> {
    let (_env, client, ns, node, node_ip) = setup("icmp").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    config_map(
        &client,
        &ns.name,
        "cfg",
        &probe_config(
            &format!("{{ name: node, icmp: {{ host: {node_ip}, count: 2, spacing: 50ms }} }}"),
            "/tmp/buffer",
        ),
    )
    .await?;
    let args = ["--config", "/etc/fiberstack/probe.yaml", "once"];
    create(
        &pods,
        &probe_pod("with-sysctl", &node, "cfg", &args, |_| {})?,
    )
    .await?;
    create(
        &pods,
        &probe_pod("without-sysctl", &node, "cfg", &args, |p| {
            p["spec"]["securityContext"]
                .as_object_mut()
                .unwrap()
                .remove("sysctls");
        })?,
    )
    .await?;

    let with = once_samples(&pods, "with-sysctl").await?;
    ensure!(
        with.iter().all(|s| s["up"] == true && s["received"] == 2),
        "ICMP to the node failed with the sysctl set: {with:?}"
    );
    let without = once_samples(&pods, "without-sysctl").await?;
    ensure!(
        without.iter().all(|s| s["up"] == false),
        "ICMP worked without the pod's sysctl (the node's own range leaked in?): {without:?}"
    );
    let errors: Vec<&str> = without.iter().filter_map(|s| s["error"].as_str()).collect();
    ensure!(
        errors
            .iter()
            .any(|e| e.to_lowercase().contains("permission") || e.contains("ping_group_range")),
        "the refusal does not say why: {errors:?}"
    );
    ns.delete().await
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() -> Result<()> {
    let (_env, client, ns, node, _) = setup("liveness").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    config_map(
        &client,
        &ns.name,
        "cfg",
        &probe_config(IDLE_TARGET, "/buffer"),
    )
    .await?;
    let args = ["--config", "/etc/fiberstack/probe.yaml"];
    let with_probe = |port: u16| {
        move |p: &mut Value| {
            p["spec"]["restartPolicy"] = json!("Always");
            let c = &mut p["spec"]["containers"][0];
            c["livenessProbe"] = json!({
                "httpGet": { "path": "/healthz", "port": port },
                "periodSeconds": 1, "failureThreshold": 2, "timeoutSeconds": 1
            });
            with_buffer_volume(p);
        }
    };
    // 9090 is the probe's /healthz; nothing listens on 9091.
    create(
        &pods,
        &probe_pod("dead", &node, "cfg", &args, with_probe(9091))?,
    )
    .await?;
    create(
        &pods,
        &probe_pod("alive", &node, "cfg", &args, with_probe(9090))?,
    )
    .await?;

    wait_for(
        "the kubelet restarting the container whose liveness probe fails",
        WAIT,
        EVERY,
        || async {
            let pod = pods.get("dead").await?;
            let restarts = container_status(&pod).map_or(0, |c| c.restart_count);
            Ok(if restarts >= 1 {
                Ok(())
            } else {
                Err(format!("restarts {restarts}: {:?}", pod.status))
            })
        },
    )
    .await?;
    let alive = wait_phase(&pods, "alive", &["Running"]).await?;
    let status = container_status(&alive).context("alive: no container status")?;
    ensure!(
        status.restart_count == 0,
        "the container whose liveness probe passes was restarted too: {status:?}"
    );
    ns.delete().await
}

/// The memory cgroup (v1) directory of the pod's container process `pid`.
fn memory_cgroup(pid: u32) -> Result<std::path::PathBuf> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = cgroup
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_owned())
        })
        .context("no memory cgroup")?;
    Ok(std::path::PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')))
}

/// A pod of the environment's test image (`netcheck hog MIB`: allocate and touch MIB
/// mebibytes, then sleep) under a memory limit.
fn hog_pod(name: &str, node: &str, mib: u32, limit: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "hog",
                "image": env_value("FIBERSTACK_NETCHECK_IMAGE")?,
                "args": ["hog", mib.to_string()],
                "resources": { "limits": { "memory": limit } }
            }]
        }
    }))?)
}

#[tokio::test]
async fn a_memory_limit_is_applied_and_enforced() -> Result<()> {
    let (_env, client, ns, node, _) = setup("memory").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    config_map(
        &client,
        &ns.name,
        "cfg",
        &probe_config(IDLE_TARGET, "/buffer"),
    )
    .await?;
    let args = ["--config", "/etc/fiberstack/probe.yaml"];
    // A probe pod with a limit: the kubelet writes it into the container's cgroup.
    create(
        &pods,
        &probe_pod("probe", &node, "cfg", &args, |p| {
            let c = &mut p["spec"]["containers"][0];
            c["resources"] = json!({ "limits": { "memory": "48Mi" } });
            with_buffer_volume(p);
        })?,
    )
    .await?;
    // And the kernel holds a container to its limit: 64 MiB under 32Mi is killed, 16 MiB
    // under the same limit lives.
    create(&pods, &hog_pod("over", &node, 64, "32Mi")?).await?;
    create(&pods, &hog_pod("under", &node, 16, "32Mi")?).await?;

    let probe = wait_phase(&pods, "probe", &["Running"]).await?;
    let uid = probe.metadata.uid.clone().context("no uid")?;
    let pid = pod_process(&uid, "fiber-probe")?;
    let limit = std::fs::read_to_string(memory_cgroup(pid)?.join("memory.limit_in_bytes"))?;
    ensure!(
        limit.trim() == (48u64 << 20).to_string(),
        "the probe container's memory.limit_in_bytes is {limit}, not 48Mi"
    );

    let over = wait_phase(&pods, "over", &["Failed"]).await?;
    let terminated = container_status(&over)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .context("over: not terminated")?;
    ensure!(
        terminated.reason.as_deref() == Some("OOMKilled"),
        "the container over its limit ended otherwise than by the OOM killer: {terminated:?}"
    );
    let held = logs(&pods, "over").await?;
    ensure!(
        held.contains("holding 20 MiB") && !held.contains("holding 64 MiB"),
        "the killed container held {held}"
    );
    wait_for(
        "the container under its limit holding 16 MiB",
        WAIT,
        EVERY,
        || async {
            let pod = pods.get("under").await?;
            let log = logs(&pods, "under").await.unwrap_or_default();
            Ok(
                if phase(&pod) == "Running" && log.contains("holding 16 MiB") {
                    Ok(())
                } else {
                    Err(format!("phase {}, log {log}", phase(&pod)))
                },
            )
        },
    )
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn images_run_as_uid_65532_and_have_no_shell() -> Result<()> {
    let (env, client, ns, node, _) = setup("no-shell").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    config_map(
        &client,
        &ns.name,
        "cfg",
        &probe_config(IDLE_TARGET, "/buffer"),
    )
    .await?;
    let args = ["--config", "/etc/fiberstack/probe.yaml"];
    // No runAsUser anywhere: the user is the image's own.
    create(
        &pods,
        &probe_pod("probe", &node, "cfg", &args, |p| {
            let security = p["spec"]["securityContext"].as_object_mut().unwrap();
            security.remove("runAsUser");
            security.remove("runAsGroup");
            with_buffer_volume(p);
        })?,
    )
    .await?;
    let pod = wait_phase(&pods, "probe", &["Running"]).await?;
    let uid = pod.metadata.uid.clone().context("no uid")?;
    let pid = pod_process(&uid, "fiber-probe")?;
    ensure!(
        uid_of(pid)? == 65532,
        "fiber-probe runs as uid {}",
        uid_of(pid)?
    );

    let exec = |argv: &[&str]| -> Result<std::process::Output> {
        let mut kubectl = tool("kubectl", &env);
        kubectl
            .args(["-n", &ns.name, "exec", "probe", "--"])
            .args(argv);
        Ok(kubectl.output()?)
    };
    // exec itself works: the binary answers.
    let version = exec(&["fiber-probe", "--version"])?;
    ensure!(
        version.status.success(),
        "kubectl exec of the binary failed: {}",
        String::from_utf8_lossy(&version.stderr)
    );
    for shell in ["sh", "/bin/sh", "bash"] {
        let out = exec(&[shell, "-c", "id"])?;
        ensure!(
            !out.status.success(),
            "`kubectl exec probe -- {shell}` ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.contains("no such file") && !stderr.contains("not found") {
            bail!("`kubectl exec probe -- {shell}` failed, but not for want of a shell: {stderr}");
        }
    }
    ns.delete().await
}
