//! The crates' dependency graph keeps the design's layers: the parts (ingest, ETL, probe,
//! operator) meet only through the ground crates (model, telemetry, plumbing) — never one part
//! linking another, dev-dependencies and benches included — and the test-support crate links
//! no part (tests run the parts' binaries, as a user does).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde_json::Value;

const PARTS: [&str; 4] = [
    "fiber-ingest",
    "fiber-etl",
    "fiber-probe",
    "fiberstack-operator",
];
const GROUND: [&str; 3] = [
    "fiberstack-model",
    "fiberstack-telemetry",
    "fiberstack-plumbing",
];
const SUPPORT: &str = "fiberstack-e2e";

/// Workspace package → the workspace packages it depends on (any kind).
fn graph() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .context("cargo metadata")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout)?;
    let packages = metadata["packages"].as_array().context("packages")?;
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    Ok(packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str())
                .filter(|d| names.contains(*d))
                .map(str::to_owned)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_owned(), deps)
        })
        .collect())
}

#[test]
fn parts_meet_only_through_the_ground_crates() -> Result<()> {
    let graph = graph()?;
    for must in PARTS.iter().chain(&GROUND).chain([&SUPPORT]) {
        assert!(
            graph.contains_key(*must),
            "no workspace package {must}: {graph:?}"
        );
    }
    let mut wrong = Vec::new();
    for (package, deps) in &graph {
        let allowed: BTreeSet<&str> = if GROUND.contains(&package.as_str()) {
            GROUND.into_iter().collect()
        } else if PARTS.contains(&package.as_str()) {
            GROUND.into_iter().chain([SUPPORT]).collect()
        } else {
            // The test-support crate and anything else: the ground only.
            GROUND.into_iter().collect()
        };
        for dep in deps {
            if !allowed.contains(dep.as_str()) {
                wrong.push(format!("{package} → {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "links that cross the layers: {wrong:?}");
    Ok(())
}
