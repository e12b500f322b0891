//! The pod runner runs a pod as a kubelet would: the pod's binary, in its own network
//! namespace with the runner's pod IP, as the pod's user, with its environment from the
//! downward API and a Secret, its ConfigMap mounted where it asked (and updated in place),
//! restarted after it dies, stopped — network and all — when the pod is deleted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fiberstack_e2e::{LocalEnv, TestNamespace, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

mod support;
use support::{alive, runner_pods, start_runner};

const EVERY: Duration = Duration::from_millis(500);

fn probe_config(port: u16, targets: usize) -> String {
    let mut text = String::from(
        "node: ${NODE_NAME}\nprobe: runner-test/probe\nregion: ghana\ncountry: GH\n\
         interval: 2s\ntimeout: 1s\ningest:\n  urls: [\"http://127.0.0.1:9\"]\n\
         buffer:\n  dir: /var/lib/fiberstack/buffer\n  maxBytes: 1Mi\ntargets:\n",
    );
    for i in 0..targets {
        text.push_str(&format!(
            "- name: t{i}\n  tcp: {{ host: host.fiberstack.internal, port: {port} }}\n"
        ));
    }
    text
}

/// The pod's first container's pid in `pods.json`, and its restart count.
fn pid_of(state: &std::path::Path, pod: &str) -> Result<Option<(u32, u32)>> {
    Ok(runner_pods(state)?
        .into_iter()
        .find(|p| p.name == pod)
        .and_then(|p| {
            let c = p.containers.first()?;
            Some((c.pid?, c.restarts))
        }))
}

fn status_field(pid: u32, field: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_pod_as_its_kubelet_would() -> Result<()> {
    let env = LocalEnv::load()?;
    let client = env.kube().await?;
    let ns = TestNamespace::create(&client, "runner").await?;
    let (runner, state) = start_runner(&env, &ns.name, "10.247.0.0/16")?;

    // A TCP target on the host: who connects to it, from which address.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    let peers: Arc<Mutex<Vec<std::net::IpAddr>>> = Arc::default();
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((_, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer.ip());
        }
    });

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "token"}, "stringData": {"token": "s3cret"}
            }))?,
        )
        .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "probe"}, "data": {"probe.yaml": probe_config(port, 1)}
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {
            "nodeName": "gh-accra-1",
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532, "runAsNonRoot": true,
                "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 2147483647"}]
            },
            "containers": [{
                "name": "probe",
                "image": "ghcr.io/fiberstack/fiber-probe:test",
                "command": ["fiber-probe"],
                "args": ["--config", "/etc/fiberstack/probe.yaml"],
                "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "FIBER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "token"}}},
                    {"name": "FIBER_LOG", "value": "info"}
                ],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/fiberstack", "readOnly": true},
                    {"name": "buffer", "mountPath": "/var/lib/fiberstack/buffer"}
                ]
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "probe"}},
                {"name": "buffer", "emptyDir": {}}
            ]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    let (pid, _) = wait_for(
        "the probe process",
        Duration::from_secs(60),
        EVERY,
        || async { Ok(pid_of(&state, "probe")?.ok_or_else(|| "not in pods.json yet".to_string())) },
    )
    .await?;
    let entry = runner_pods(&state)?
        .into_iter()
        .find(|p| p.name == "probe")
        .context("listed")?;
    let ip = std::net::IpAddr::V4(entry.ip);
    let netns = entry.netns;
    let log = entry.containers.first().context("a container")?.log.clone();

    // The pod's user, in its own network namespace.
    ensure!(
        status_field(pid, "Uid:")?
            .split_whitespace()
            .all(|u| u == "65532"),
        "uid: {}",
        status_field(pid, "Uid:")?
    );
    ensure!(
        status_field(pid, "Groups:")?
            .split_whitespace()
            .any(|g| g == "65532"),
        "fsGroup is not a supplementary group"
    );
    ensure!(
        std::fs::read_link(format!("/proc/{pid}/ns/net"))?
            != std::fs::read_link("/proc/self/ns/net")?,
        "the probe shares the host's network namespace"
    );
    // The downward API, the ConfigMap at its mount path, the host name and the pod IP.
    wait_for(
        "the probe's TCP rounds from the pod IP",
        Duration::from_secs(30),
        EVERY,
        || async {
            let from = peers.lock().unwrap().clone();
            Ok(if from.contains(&ip) {
                Ok(())
            } else {
                Err(format!("connections from {from:?}, pod IP {ip}"))
            })
        },
    )
    .await?;
    let text = std::fs::read_to_string(&log)?;
    ensure!(
        text.contains("fiber-probe starting") && text.contains("\"node\":\"gh-accra-1\""),
        "{text}"
    );

    // A changed ConfigMap reaches the running process, without a restart.
    config_maps
        .patch(
            "probe",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"probe.yaml": probe_config(port, 2)}})),
        )
        .await?;
    wait_for(
        "the probe applies its new configuration",
        Duration::from_secs(30),
        EVERY,
        || async {
            let text = std::fs::read_to_string(&log)?;
            Ok(
                if text.contains("configuration changed; applying it")
                    && text.contains("\"targets\":2")
                {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                },
            )
        },
    )
    .await?;
    ensure!(
        pid_of(&state, "probe")?.map(|p| p.0) == Some(pid),
        "restarted for a config change"
    );

    // Killed: restarted (restartPolicy Always).
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    let (second, restarts) = wait_for(
        "a restarted probe",
        Duration::from_secs(30),
        EVERY,
        || async {
            Ok(match pid_of(&state, "probe")? {
                Some((p, r)) if p != pid && r >= 1 => Ok((p, r)),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;
    ensure!(restarts == 1 && alive(second));

    // Deleted: the process, the pod's network namespace and its listing go.
    pods.delete("probe", &DeleteParams::default()).await?;
    wait_for(
        "the pod stopped",
        Duration::from_secs(30),
        EVERY,
        || async {
            let listed = runner_pods(&state)?.iter().any(|p| p.name == "probe");
            let netns_left = std::process::Command::new("ip")
                .args(["netns", "list"])
                .output()?
                .stdout;
            let netns_left = String::from_utf8_lossy(&netns_left).contains(&netns);
            Ok(if !listed && !alive(second) && !netns_left {
                Ok(())
            } else {
                Err(format!(
                    "listed {listed}, alive {}, netns {netns_left}",
                    alive(second)
                ))
            })
        },
    )
    .await?;
    drop(runner);
    let _ = std::fs::remove_dir_all(&state);
    ns.delete().await?;
    Ok(())
}
