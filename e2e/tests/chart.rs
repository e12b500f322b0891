//! The Helm chart (`charts/fiberstack`): lint-clean, its values schema refuses bad values
//! naming them, what it renders is accepted by the API server (server-side dry run, in a
//! namespace that warns on anything the restricted Pod Security Standard forbids), and the
//! copies it carries of the CRDs and the operator's RBAC are the originals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use fiberstack_e2e::{LocalEnv, TestNamespace, images};
use serde::Deserialize as _;

mod support;
use support::tool;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/fiberstack")
}

fn run(mut command: Command) -> Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    Ok(out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn template(env: &LocalEnv, namespace: &str, sets: &[&str]) -> Result<Output> {
    let mut helm = tool("helm", env);
    helm.args([
        "template",
        "fs",
        chart().to_str().unwrap(),
        "--namespace",
        namespace,
    ]);
    for set in sets {
        helm.args(["--set", set]);
    }
    run(helm)
}

#[test]
fn chart_lints_clean() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut helm = tool("helm", &env);
    helm.args(["lint", "--strict", chart().to_str().unwrap()]);
    let out = run(helm)?;
    ensure!(
        out.status.success(),
        "helm lint: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn values_schema_refuses_bad_values_by_name() -> Result<()> {
    let env = LocalEnv::load()?;
    for (set, named) in [
        ("operator.replicas=0", "/operator/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("migration.retainRaw=7days", "/migration/retainRaw"),
        ("operatr.replicas=2", "operatr"),
        ("timescaledb.storage.size=lots", "/timescaledb/storage/size"),
        (
            "grafana.datasource.sslmode=maybe",
            "/grafana/datasource/sslmode",
        ),
        (
            "telemetry.otlpEndpoint=collector:4318",
            "/telemetry/otlpEndpoint",
        ),
        (
            "image.digests.fiber-probe=sha256:abc",
            "/image/digests/fiber-probe",
        ),
        ("image.digests.fiber-prob=sha256:abc", "fiber-prob"),
    ] {
        let out = template(&env, "default", &[set])?;
        let stderr = text(&out.stderr);
        ensure!(!out.status.success(), "{set} was accepted");
        ensure!(
            stderr.contains("values don't meet the specifications of the schema"),
            "{set}: {stderr}"
        );
        ensure!(
            stderr.contains(named),
            "{set}: the error does not name {named}: {stderr}"
        );
    }
    Ok(())
}

/// Every `image:` line and every `FIBER_*_IMAGE` value of a render, in order.
fn image_references(rendered: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut lines = rendered.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if let Some(image) = line.strip_prefix("image: ") {
            refs.push(image.trim_matches('"').to_owned());
        } else if line.starts_with("- name: FIBER_")
            && line.ends_with("_IMAGE")
            && let Some(value) = lines.peek().and_then(|l| l.trim().strip_prefix("value: "))
        {
            refs.push(value.trim_matches('"').to_owned());
        }
    }
    refs
}

#[test]
fn images_default_to_the_app_version_and_take_registry_tag_and_digest_overrides() -> Result<()> {
    let env = LocalEnv::load()?;
    let app_version = images::app_version()?;

    let plain = template(&env, "default", &[])?;
    ensure!(plain.status.success(), "{}", text(&plain.stderr));
    let refs = image_references(&text(&plain.stdout));
    for name in images::NAMES {
        let want = format!("ghcr.io/fiberstack/{name}:{app_version}");
        ensure!(refs.contains(&want), "{want} not rendered: {refs:?}");
    }

    let digest = format!("sha256:{}", "ab".repeat(32));
    let pinned = template(
        &env,
        "default",
        &[
            "image.registry=registry.example.com:5000/team",
            "image.tag=9.9.9",
            &format!("image.digests.fiber-probe={digest}"),
            &format!("image.digests.fiberstack-operator={digest}"),
        ],
    )?;
    ensure!(pinned.status.success(), "{}", text(&pinned.stderr));
    let refs = image_references(&text(&pinned.stdout));
    for name in images::NAMES {
        let tagged = format!("registry.example.com:5000/team/{name}:9.9.9");
        let want = match name {
            "fiber-probe" | "fiberstack-operator" => format!("{tagged}@{digest}"),
            _ => tagged,
        };
        ensure!(refs.contains(&want), "{want} not rendered: {refs:?}");
    }
    ensure!(
        !refs.iter().any(|r| r.contains("ghcr.io")),
        "the registry override left a default reference: {refs:?}"
    );
    Ok(())
}

#[test]
fn an_otlp_endpoint_reaches_the_operator_and_through_it_the_workloads() -> Result<()> {
    let env = LocalEnv::load()?;
    let endpoint = "http://otel-collector.monitoring:4318";
    let with = template(
        &env,
        "default",
        &[&format!("telemetry.otlpEndpoint={endpoint}")],
    )?;
    ensure!(with.status.success(), "{}", text(&with.stderr));
    let operator = text(&with.stdout);
    for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "FIBER_OTLP_ENDPOINT"] {
        ensure!(
            operator.contains(&format!(
                "- name: {var}\n              value: \"{endpoint}\""
            )),
            "{var} not set to {endpoint} in the operator's env"
        );
    }
    let without = template(&env, "default", &[])?;
    ensure!(without.status.success(), "{}", text(&without.stderr));
    ensure!(!text(&without.stdout).contains("OTLP_ENDPOINT"));
    Ok(())
}

/// Probe identity (on by default): the ingest ServiceAccount may create TokenReviews and
/// nothing else, and the operator is told to render ingest pods with it; off, neither. The
/// Ingress routes each host to its region's ingest Service.
#[test]
fn probe_identity_and_the_ingest_ingress_render_as_configured() -> Result<()> {
    let env = LocalEnv::load()?;
    let on = template(&env, "fs", &["ingest.probeIdentity.namespaces={regions-a}"])?;
    ensure!(on.status.success(), "{}", text(&on.stderr));
    let docs = documents(&text(&on.stdout))?;
    let of_kind = |kind: &str| -> Vec<&serde_yaml::Value> {
        docs.iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == "fs-fiberstack-ingest")
            .collect()
    };
    let role = of_kind("ClusterRole");
    ensure!(role.len() == 1, "one ingest ClusterRole: {role:?}");
    let rules: serde_yaml::Value = serde_yaml::from_str(
        "[{apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}]",
    )?;
    ensure!(role[0]["rules"] == rules, "{:?}", role[0]["rules"]);
    let accounts: Vec<_> = of_kind("ServiceAccount")
        .iter()
        .map(|a| {
            a["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    ensure!(accounts == ["fs", "regions-a"], "{accounts:?}");
    let binding = of_kind("ClusterRoleBinding");
    let subjects: Vec<_> = binding[0]["subjects"]
        .as_sequence()
        .context("subjects")?
        .iter()
        .map(|s| s["namespace"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(subjects == ["fs", "regions-a"], "{subjects:?}");
    // In each namespace, that namespace's ingest may read its probe pods (their region label)
    // and nothing else.
    let pod_rules: serde_yaml::Value =
        serde_yaml::from_str("[{apiGroups: [''], resources: [pods], verbs: [get]}]")?;
    for ns in ["fs", "regions-a"] {
        let in_ns = |kind: &str| {
            of_kind(kind)
                .into_iter()
                .find(|d| d["metadata"]["namespace"] == ns)
                .with_context(|| format!("no {kind} in {ns}"))
        };
        let role = in_ns("Role")?;
        ensure!(role["rules"] == pod_rules, "{ns}: {:?}", role["rules"]);
        let binding = in_ns("RoleBinding")?;
        let subjects: serde_yaml::Value = serde_yaml::from_str(&format!(
            "[{{kind: ServiceAccount, name: fs-fiberstack-ingest, namespace: {ns}}}]"
        ))?;
        ensure!(
            binding["subjects"] == subjects,
            "{ns}: {:?}",
            binding["subjects"]
        );
        ensure!(
            binding["roleRef"]["kind"] == "Role",
            "{ns}: {:?}",
            binding["roleRef"]
        );
    }
    let operator = text(&on.stdout);
    ensure!(
        operator.contains(
            "- name: FIBER_INGEST_SERVICE_ACCOUNT\n              value: fs-fiberstack-ingest"
        ),
        "the operator is not told the ingest ServiceAccount"
    );
    ensure!(
        !operator.contains("kind: Ingress\n"),
        "an Ingress without asking"
    );

    let off = template(
        &env,
        "fs",
        &[
            "ingest.probeIdentity.enabled=false",
            "ingest.ingress.enabled=true",
            "ingest.ingress.hosts[0].host=ingest-ghana.example.org",
            "ingest.ingress.hosts[0].region=ghana",
        ],
    )?;
    ensure!(off.status.success(), "{}", text(&off.stderr));
    let rendered = text(&off.stdout);
    ensure!(!rendered.contains("FIBER_INGEST_SERVICE_ACCOUNT"));
    ensure!(!rendered.contains("tokenreviews"));
    let docs = documents(&rendered)?;
    let ingress = docs
        .iter()
        .find(|d| d["kind"] == "Ingress")
        .context("no Ingress")?;
    let rule = &ingress["spec"]["rules"][0];
    ensure!(rule["host"] == "ingest-ghana.example.org", "{rule:?}");
    let backend = &rule["http"]["paths"][0]["backend"]["service"];
    ensure!(
        backend["name"] == "fiberstack-ingest-ghana" && backend["port"]["number"] == 8080,
        "{backend:?}"
    );

    // A host without its region is refused, naming the field.
    let no_region = template(
        &env,
        "fs",
        &[
            "ingest.ingress.enabled=true",
            "ingest.ingress.hosts[0].host=ingest-ghana.example.org",
        ],
    )?;
    ensure!(!no_region.status.success());
    ensure!(
        text(&no_region.stderr).contains("region"),
        "{}",
        text(&no_region.stderr)
    );
    Ok(())
}

/// The status page (off by default): on, the operator serves it on a named container port the
/// Service targets, with the mode and refresh it was given; the Service selects exactly the
/// operator's pods, the Ingress routes its host to the Service's port, and the operator's
/// NetworkPolicy lets the port in.
#[test]
fn the_status_page_renders_when_enabled() -> Result<()> {
    let env = LocalEnv::load()?;
    let off = template(&env, "fs", &[])?;
    ensure!(off.status.success(), "{}", text(&off.stderr));
    let rendered = text(&off.stdout);
    ensure!(
        !rendered.contains("FIBER_STATUS_PAGE_LISTEN")
            && !rendered.contains("fs-fiberstack-status"),
        "a status page without asking"
    );

    let on = template(
        &env,
        "fs",
        &[
            "statusPage.enabled=true",
            "statusPage.public=true",
            "statusPage.refreshSeconds=60",
            "statusPage.service.port=8000",
            "statusPage.ingress.enabled=true",
            "statusPage.ingress.host=status.example.org",
        ],
    )?;
    ensure!(on.status.success(), "{}", text(&on.stderr));
    let docs = documents(&text(&on.stdout))?;
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("no {kind} {name}"))
    };
    let operator = find("Deployment", "fs-fiberstack-operator")?;
    let pod = &operator["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let env_value = |name: &str| {
        container["env"]
            .as_sequence()
            .and_then(|env| env.iter().find(|e| e["name"] == name))
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    ensure!(env_value("FIBER_STATUS_PAGE_LISTEN").as_deref() == Some("0.0.0.0:8081"));
    ensure!(env_value("FIBER_STATUS_PAGE_PUBLIC").as_deref() == Some("true"));
    ensure!(env_value("FIBER_STATUS_PAGE_REFRESH_SECS").as_deref() == Some("60"));
    let port = container["ports"]
        .as_sequence()
        .and_then(|p| p.iter().find(|p| p["name"] == "status-page"))
        .context("no status-page container port")?;
    ensure!(port["containerPort"] == 8081, "{port:?}");

    let service = find("Service", "fs-fiberstack-status")?;
    let labels = pod["metadata"]["labels"]
        .as_mapping()
        .context("pod labels")?;
    let selector = service["spec"]["selector"]
        .as_mapping()
        .context("Service selector")?;
    ensure!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Service selects {selector:?}, the operator's pods carry {labels:?}"
    );
    let service_port = &service["spec"]["ports"][0];
    ensure!(
        service_port["port"] == 8000 && service_port["targetPort"] == "status-page",
        "{service_port:?}"
    );

    let ingress = find("Ingress", "fs-fiberstack-status")?;
    let rule = &ingress["spec"]["rules"][0];
    ensure!(rule["host"] == "status.example.org", "{rule:?}");
    let backend = &rule["http"]["paths"][0]["backend"]["service"];
    ensure!(
        backend["name"] == "fs-fiberstack-status"
            && backend["port"]["name"] == service_port["name"],
        "{backend:?}"
    );

    let allowed: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .filter(|d| {
            d["spec"]["podSelector"]["matchLabels"]
                .as_mapping()
                .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .flat_map(|d| {
            d["spec"]["ingress"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|rule| rule["ports"].as_sequence().into_iter().flatten())
                .map(|p| p["port"].clone())
                .collect::<Vec<_>>()
        })
        .collect();
    ensure!(
        allowed.iter().any(|p| p == "status-page"),
        "the operator's NetworkPolicy lets in {allowed:?}"
    );
    Ok(())
}

/// The YAML documents of `text`.
fn documents(text: &str) -> Result<Vec<serde_yaml::Value>> {
    serde_yaml::Deserializer::from_str(text)
        .map(serde_yaml::Value::deserialize)
        .filter(|d| !matches!(d, Ok(serde_yaml::Value::Null)))
        .collect::<Result<_, _>>()
        .context("parsing YAML")
}

/// Whether an endpoint's `keep` relabelings on pod labels let a pod with `labels` through
/// (`regex` read as alternatives of literal values, which is all the chart writes).
fn endpoint_keeps(endpoint: &serde_yaml::Value, labels: &serde_yaml::Mapping) -> bool {
    let sanitized = |key: &str| -> String {
        key.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    endpoint["relabelings"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|r| r["action"].as_str() == Some("keep"))
        .all(|r| {
            let source = r["sourceLabels"][0].as_str().unwrap_or_default();
            let Some(label) = source.strip_prefix("__meta_kubernetes_pod_label_") else {
                return false;
            };
            let value = labels
                .iter()
                .find(|(k, _)| k.as_str().is_some_and(|k| sanitized(k) == label))
                .and_then(|(_, v)| v.as_str());
            let regex = r["regex"].as_str().unwrap_or_default();
            value.is_some_and(|v| regex.split('|').any(|alt| alt == v))
        })
}

/// The chart's PodMonitor scrapes every workload the operator renders — the probe, ingest and
/// ETL pod templates as the operator's golden files hold them (the operator's own tests keep
/// those equal to its render functions) — on a port the pod declares, and every endpoint
/// scrapes some workload.
#[test]
fn the_pod_monitor_scrapes_every_workload_the_operator_renders() -> Result<()> {
    let env = LocalEnv::load()?;
    let out = template(&env, "default", &["metrics.podMonitor.enabled=true"])?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let rendered = documents(&text(&out.stdout))?;
    let monitor = rendered
        .iter()
        .find(|d| d["kind"].as_str() == Some("PodMonitor"))
        .context("no PodMonitor rendered")?;
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .context("PodMonitor selector")?;
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_sequence()
        .context("podMetricsEndpoints")?;
    let golden = repo().join("operator/tests/golden");
    let mut used = vec![false; endpoints.len()];
    let mut workloads = Vec::new();
    for file in ["region-deployments.yaml", "probe-daemonset.yaml"] {
        for doc in documents(&std::fs::read_to_string(golden.join(file))?)? {
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let template = &doc["spec"]["template"];
            let labels = template["metadata"]["labels"]
                .as_mapping()
                .with_context(|| format!("{name}: pod labels"))?;
            ensure!(
                selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
                "{name}: the PodMonitor's selector {selector:?} does not match its pods {labels:?}"
            );
            let ports: Vec<&str> = template["spec"]["containers"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
                .filter_map(|p| p["name"].as_str())
                .collect();
            let scraping: Vec<usize> = endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e["port"].as_str().is_some_and(|p| ports.contains(&p))
                        && endpoint_keeps(e, labels)
                })
                .map(|(i, _)| i)
                .collect();
            ensure!(
                scraping.len() == 1,
                "{name} (ports {ports:?}) is scraped by {} PodMonitor endpoints, not one",
                scraping.len()
            );
            used[scraping[0]] = true;
            workloads.push(name);
        }
    }
    ensure!(
        workloads.len() == 3,
        "expected the ingest, ETL and probe workloads: {workloads:?}"
    );
    ensure!(
        used.iter().all(|u| *u),
        "an endpoint scrapes no workload: {endpoints:?}"
    );
    Ok(())
}

#[test]
fn chart_carries_the_generated_crds_and_the_operators_rbac() -> Result<()> {
    for (copy, original) in [
        (
            "charts/fiberstack/crds/fiberregions.yaml",
            "crds/fiberregions.yaml",
        ),
        (
            "charts/fiberstack/crds/fiberprobes.yaml",
            "crds/fiberprobes.yaml",
        ),
        (
            "charts/fiberstack/files/operator-rbac.yaml",
            "operator/rbac.yaml",
        ),
    ] {
        let a = std::fs::read_to_string(repo().join(copy)).with_context(|| copy.to_owned())?;
        let b =
            std::fs::read_to_string(repo().join(original)).with_context(|| original.to_owned())?;
        ensure!(
            a == b,
            "{copy} differs from {original}: copy it again (cp {original} {copy})"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rendered_objects_are_accepted_by_the_api_server_under_restricted_pod_security()
-> Result<()> {
    let env = LocalEnv::load()?;
    let ns = TestNamespace::create(&env.kube().await?, "fs-chart").await?;
    let outcome = async {
        let mut label = tool("kubectl", &env);
        label.args([
            "label",
            "namespace",
            &ns.name,
            "pod-security.kubernetes.io/warn=restricted",
        ]);
        let out = run(label)?;
        ensure!(out.status.success(), "{}", text(&out.stderr));
        for sets in [
            &[][..],
            &["timescaledb.enabled=true", "redis.enabled=true"][..],
            &[
                "database.existingSecret=my-db",
                "operator.replicas=1",
                "networkPolicy.enabled=false",
            ][..],
            &[
                "ingest.ingress.enabled=true",
                "ingest.ingress.className=nginx",
                "ingest.ingress.hosts[0].host=ingest-ghana.example.org",
                "ingest.ingress.hosts[0].region=ghana",
                "ingest.ingress.tls[0].secretName=ingest-tls",
                "ingest.ingress.tls[0].hosts[0]=ingest-ghana.example.org",
                "ingest.probeIdentity.enabled=false",
            ][..],
            &[
                "statusPage.enabled=true",
                "statusPage.public=true",
                "statusPage.ingress.enabled=true",
                "statusPage.ingress.host=status.example.org",
                "statusPage.ingress.tls[0].secretName=status-tls",
                "statusPage.ingress.tls[0].hosts[0]=status.example.org",
            ][..],
        ] {
            let rendered = template(&env, &ns.name, sets)?;
            ensure!(
                rendered.status.success(),
                "{sets:?}: {}",
                text(&rendered.stderr)
            );
            let manifest = text(&rendered.stdout);
            check_restricted(&manifest).with_context(|| format!("{sets:?}"))?;
            let path = std::env::temp_dir().join(format!("{}-{}.yaml", ns.name, sets.len()));
            std::fs::write(&path, &manifest)?;
            let mut apply = tool("kubectl", &env);
            apply.args([
                "apply",
                "--dry-run=server",
                "-n",
                &ns.name,
                "-f",
                path.to_str().unwrap(),
            ]);
            let out = run(apply)?;
            let _ = std::fs::remove_file(&path);
            let stderr = text(&out.stderr);
            ensure!(
                out.status.success(),
                "{sets:?}: the API server refused: {stderr}"
            );
            // The bundled TimescaleDB's entrypoint needs a writable root (documented in
            // values.yaml); everything of FiberStack's own must pass "restricted".
            let warnings: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("PodSecurity") && !l.contains("timescaledb"))
                .collect();
            ensure!(warnings.is_empty(), "{sets:?}: {warnings:?}");
        }
        Ok(())
    }
    .await;
    ns.delete().await?;
    outcome
}

/// FiberStack's own containers (operator, migration, Redis) run non-root, without privilege
/// escalation or capabilities, read-only, with the runtime's seccomp profile.
fn check_restricted(manifest: &str) -> Result<()> {
    let mut checked = 0;
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let object = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        let kind = object["kind"].as_str().unwrap_or_default();
        if !["Deployment", "StatefulSet", "Job"].contains(&kind) {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if name.ends_with("-timescaledb") {
            continue;
        }
        let pod = &object["spec"]["template"]["spec"];
        ensure!(
            pod["securityContext"]["runAsNonRoot"] == true,
            "{kind} {name}: runAsNonRoot"
        );
        for container in pod["containers"].as_array().context("containers")? {
            let sc = &container["securityContext"];
            let what = format!("{kind} {name} container {}", container["name"]);
            ensure!(
                sc["allowPrivilegeEscalation"] == false,
                "{what}: allowPrivilegeEscalation"
            );
            ensure!(
                sc["readOnlyRootFilesystem"] == true,
                "{what}: readOnlyRootFilesystem"
            );
            ensure!(
                sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
                "{what}: drop ALL"
            );
            ensure!(
                sc["seccompProfile"]["type"] == "RuntimeDefault",
                "{what}: seccomp"
            );
            checked += 1;
        }
    }
    ensure!(checked >= 1, "no container checked");
    Ok(())
}

#[test]
fn install_bundle_is_up_to_date() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut render = Command::new("bash");
    render
        .arg(repo().join("e2e/scripts/render-manifests.sh"))
        .env(
            "HELM",
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".env/bin/helm"),
        )
        .env("KUBECONFIG", &env.kubeconfig);
    let out = run(render)?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(repo().join("manifests/fiberstack.yaml"))?;
    ensure!(
        text(&out.stdout) == committed,
        "manifests/fiberstack.yaml is stale: run `make manifests`"
    );
    Ok(())
}

#[tokio::test]
async fn examples_are_accepted_by_the_api_server() -> Result<()> {
    let env = LocalEnv::load()?;
    let mut crds = tool("kubectl", &env);
    crds.args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(repo().join("crds"));
    let out = run(crds)?;
    ensure!(
        out.status.success(),
        "installing the CRDs: {}",
        text(&out.stderr)
    );
    let ns = TestNamespace::create(&env.kube().await?, "fs-examples").await?;
    let mut apply = tool("kubectl", &env);
    apply
        .args(["apply", "--dry-run=server", "-n", &ns.name, "-f"])
        .arg(repo().join("manifests/examples"));
    let out = run(apply)?;
    ns.delete().await?;
    let stdout = text(&out.stdout);
    ensure!(out.status.success(), "{stdout}{}", text(&out.stderr));
    // probe.yaml: one region and one probe; three-regions.yaml: three of each;
    // notifiers.yaml: three notifiers, their three Secrets and a probe.
    let accepted = stdout.matches("created (server dry run)").count();
    ensure!(accepted == 15, "{accepted} objects accepted: {stdout}");
    Ok(())
}
