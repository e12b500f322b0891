//! The chart's PrometheusRule (`prometheusRule.enabled`): what it renders passes `promtool
//! check rules`, reads only series the binaries export, with the labels the chart's monitors
//! give them, and `promtool test rules` runs the unit tests of `e2e/tests/rules/` on it — each
//! alert with a case where it fires and one where it must not. That those tests can fail is
//! itself tested: each alert broken so it never fires, fires without its hold (`for`), or on a
//! looser condition, must make them fail.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use fiberstack_e2e::{LocalEnv, promtool, unique_name};
use serde_yaml::Value;

mod support;
use support::tool;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's documents rendered with `sets`.
fn render(env: &LocalEnv, sets: &[&str]) -> Result<Vec<Value>> {
    let mut helm = tool("helm", env);
    helm.args(["template", "fs"])
        .arg(repo().join("charts/fiberstack"))
        .args(["--namespace", "fiberstack"]);
    for set in sets {
        helm.args(["--set", set]);
    }
    let out = helm.output().context("running helm")?;
    ensure!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8(out.stdout)?)
        .map(serde::Deserialize::deserialize)
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect::<Result<_, _>>()
        .context("parsing what helm rendered")
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Result<&'a Value> {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .with_context(|| format!("no {kind} rendered"))
}

/// The rule groups of the PrometheusRule rendered with `sets`, as a rule file's `groups:`.
fn rules(env: &LocalEnv, sets: &[&str]) -> Result<Value> {
    let mut sets = sets.to_vec();
    sets.push("prometheusRule.enabled=true");
    let documents = render(env, &sets)?;
    let spec = &of_kind(&documents, "PrometheusRule")?["spec"];
    let mut file = serde_yaml::Mapping::new();
    file.insert("groups".into(), spec["groups"].clone());
    Ok(Value::Mapping(file))
}

/// Every alerting rule of a rule file.
fn alerts(file: &Value) -> Vec<&Value> {
    file["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .filter(|r| r["alert"].is_string())
        .collect()
}

fn alert_mut<'a>(file: &'a mut Value, name: &str) -> &'a mut Value {
    file["groups"]
        .as_sequence_mut()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence_mut().into_iter().flatten())
        .find(|r| r["alert"].as_str() == Some(name))
        .expect("the alert was rendered")
}

/// A directory with the rendered rule files and the unit tests beside them (promtool reads a
/// test's `rule_files` relative to the test).
struct Workspace {
    dir: PathBuf,
    tests: Vec<PathBuf>,
}

const DEFAULT_RULES: &str = "fiberstack-rules.yaml";
const CUSTOM_RULES: &str = "fiberstack-rules-custom.yaml";

impl Workspace {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_name("alert-rules"));
        std::fs::create_dir_all(&dir)?;
        let mut tests = vec![];
        let mut sources: Vec<PathBuf> = std::fs::read_dir(repo().join("e2e/tests/rules"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        sources.sort();
        for source in sources {
            let copy = dir.join(source.file_name().context("file name")?);
            std::fs::copy(&source, &copy)?;
            tests.push(copy);
        }
        ensure!(!tests.is_empty(), "no rule tests in e2e/tests/rules");
        Ok(Self { dir, tests })
    }

    fn write(&self, name: &str, rules: &Value) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, serde_yaml::to_string(rules)?)?;
        Ok(path)
    }

    fn test(&self) -> Result<String> {
        let tests: Vec<&Path> = self.tests.iter().map(PathBuf::as_path).collect();
        promtool::test_rules(&tests)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ALERTS: [&str; 7] = [
    "FiberStackTargetDown",
    "FiberStackTargetBreaching",
    "FiberStackCertificateExpiring",
    "FiberStackProbeNotReporting",
    "FiberStackRegionBacklogGrowing",
    "FiberStackDeadLettersPresent",
    "FiberStackEtlNotWriting",
];

/// Loosened conditions, one alert at a time (text of the default rendering → replacement):
/// each must make some case that must not fire fire.
const LOOSENED: [(&str, &str, &str); 9] = [
    ("FiberStackTargetDown", "== 0", ">= 0"),
    (
        "FiberStackTargetBreaching",
        "fiberstack_target_healthy == 0",
        "fiberstack_target_healthy >= 0",
    ),
    ("FiberStackCertificateExpiring", "< 14 *", "< 140 *"),
    ("FiberStackProbeNotReporting", " < ", " <= "),
    (
        "FiberStackRegionBacklogGrowing",
        "(fiber_etl_stream_length) > 1000",
        "(fiber_etl_stream_length) > 0",
    ),
    (
        "FiberStackRegionBacklogGrowing",
        "[15m])) > 0",
        "[15m])) >= 0",
    ),
    ("FiberStackDeadLettersPresent", "> 0", ">= 0"),
    ("FiberStackEtlNotWriting", "unless on", "or on"),
    (
        "FiberStackEtlNotWriting",
        "(rate(fiber_ingest_sent_samples_total[10m])) > 0",
        "(rate(fiber_ingest_sent_samples_total[10m])) >= 0",
    ),
];

#[test]
fn the_charts_alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let env = LocalEnv::load()?;
    let defaults = rules(&env, &[])?;
    let custom = rules(
        &env,
        &[
            "prometheusRule.certificateExpiryDays=30",
            "prometheusRule.alertLabels.team=network",
        ],
    )?;
    let names: Vec<&str> = alerts(&defaults)
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    ensure!(names == ALERTS, "rendered alerts: {names:?}");
    for rule in alerts(&defaults) {
        let name = rule["alert"].as_str().unwrap_or_default();
        ensure!(rule["for"].is_string(), "{name}: no `for`");
        ensure!(
            ["critical", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity {:?}",
            rule["labels"]["severity"]
        );
        for annotation in ["summary", "description"] {
            ensure!(
                rule["annotations"][annotation].is_string(),
                "{name}: no {annotation}"
            );
        }
    }

    let work = Workspace::new()?;
    let default_file = work.write(DEFAULT_RULES, &defaults)?;
    let custom_file = work.write(CUSTOM_RULES, &custom)?;
    let checked = promtool::check_rules(&[&default_file, &custom_file])?;
    ensure!(
        checked.matches("SUCCESS: 7 rules found").count() == 2,
        "{checked}"
    );
    covered(&work.tests)?;
    work.test()?;

    // The tests can fail.
    let broken = |what: &str, edit: &dyn Fn(&mut Value) -> Result<()>| -> Result<()> {
        let mut mutated = defaults.clone();
        edit(&mut mutated)?;
        work.write(DEFAULT_RULES, &mutated)?;
        let outcome = work.test();
        work.write(DEFAULT_RULES, &defaults)?;
        match outcome {
            Ok(said) => bail!("the rule tests pass with {what}:\n{said}"),
            Err(_) => Ok(()),
        }
    };
    for name in ALERTS {
        broken(&format!("{name} never firing"), &|rules| {
            alert_mut(rules, name)["expr"] = "vector(1) > 2".into();
            Ok(())
        })?;
        broken(&format!("{name} without its hold"), &|rules| {
            alert_mut(rules, name)["for"] = "0s".into();
            Ok(())
        })?;
    }
    for (name, from, to) in LOOSENED {
        broken(
            &format!("{name} loosened from {from:?} to {to:?}"),
            &|rules| {
                let rule = alert_mut(rules, name);
                let expr = rule["expr"].as_str().unwrap_or_default();
                ensure!(
                    expr.contains(from),
                    "{name}: the expression no longer holds {from:?} (update LOOSENED): {expr}"
                );
                rule["expr"] = expr.replacen(from, to, 1).into();
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// Every alert the tests name is one the chart renders (promtool would find nothing of a
/// misspelt one and pass), and each rendered alert has a case expecting it and one
/// expecting nothing of it.
fn covered(tests: &[PathBuf]) -> Result<()> {
    let mut fires = vec![];
    let mut quiet = vec![];
    for path in tests {
        let file: Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
        for case in file["tests"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        {
            let name = case["alertname"].as_str().unwrap_or_default().to_owned();
            ensure!(
                ALERTS.contains(&name.as_str()),
                "{}: no alert {name:?} is rendered",
                path.display()
            );
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 { &mut fires } else { &mut quiet }.push(name);
        }
    }
    for name in ALERTS {
        ensure!(
            fires.iter().any(|n| n == name),
            "no rule test expects {name} to fire"
        );
        ensure!(
            quiet.iter().any(|n| n == name),
            "no rule test expects {name} to stay quiet"
        );
    }
    Ok(())
}

/// The rules read series the binaries export, with the labels they group by: the operator's
/// keep their own `namespace` (the ServiceMonitor honours it), the workloads' get `region`
/// from their pods (the PodMonitor copies it, and every workload the operator renders has it).
#[test]
fn the_rules_read_series_that_exist_with_the_labels_they_use() -> Result<()> {
    let env = LocalEnv::load()?;
    let rendered = rules(&env, &[])?;
    let sources: String = [
        "operator/src/measurements.rs",
        "etl/src/metrics.rs",
        "ingest/src/metrics.rs",
        "probe/src/metrics.rs",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(repo().join(f)))
    .collect::<Result<_, _>>()?;
    for rule in alerts(&rendered) {
        let expr = rule["expr"].as_str().unwrap_or_default();
        for name in series_names(expr) {
            // A counter is registered without its `_total`.
            let registered = name.strip_suffix("_total").unwrap_or(name);
            ensure!(
                sources.contains(&format!("\"{registered}\"")),
                "{:?}: {name} is exported by none of the binaries",
                rule["alert"]
            );
        }
    }

    let documents = render(
        &env,
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.podMonitor.enabled=true",
        ],
    )?;
    let service_monitor = of_kind(&documents, "ServiceMonitor")?;
    for endpoint in service_monitor["spec"]["endpoints"]
        .as_sequence()
        .context("endpoints")?
    {
        ensure!(
            endpoint["honorLabels"].as_bool() == Some(true),
            "the operator's namespace label would become exported_namespace: {endpoint:?}"
        );
    }
    let pod_monitor = of_kind(&documents, "PodMonitor")?;
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]
        .as_sequence()
        .context("podMetricsEndpoints")?
    {
        let copies_region = endpoint["relabelings"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|r| {
                r["sourceLabels"][0].as_str()
                    == Some("__meta_kubernetes_pod_label_fiberstack_io_region")
                    && r["targetLabel"].as_str() == Some("region")
                    && r["action"].as_str().is_none_or(|a| a == "replace")
            });
        ensure!(copies_region, "no region label: {endpoint:?}");
    }
    let golden = repo().join("operator/tests/golden");
    for file in ["region-deployments.yaml", "probe-daemonset.yaml"] {
        let text = std::fs::read_to_string(golden.join(file))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(doc)?;
            let labels = &doc["spec"]["template"]["metadata"]["labels"];
            ensure!(
                labels["fiberstack.io/region"].is_string(),
                "{file} {:?}: pods without fiberstack.io/region",
                doc["metadata"]["name"]
            );
        }
    }
    Ok(())
}

/// The metric names in a PromQL expression: the words starting `fiber`.
fn series_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("fiber"))
        .collect()
}
