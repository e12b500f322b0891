//! The crates' dependency graph keeps the design's layers: the parts (ingest, ETL, probe,
//! operator) meet only through the ground crates (model, telemetry, plumbing) — never one part
//! linking another, dev-dependencies and benches included — the ground links no part, and the
//! test-support crate links no part (tests run the parts' binaries, as a user does) and is
//! itself only ever a dev-dependency.

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

/// Workspace package → the workspace packages it depends on, each with its kind (`normal`,
/// `dev` or `build`).
fn graph() -> Result<BTreeMap<String, BTreeSet<(String, String)>>> {
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
                .filter(|d| d["name"].as_str().is_some_and(|n| names.contains(n)))
                .map(|d| {
                    let name = d["name"].as_str().unwrap_or_default().to_owned();
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    (name, kind)
                })
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
        for (dep, kind) in deps {
            // Any crate may test with the support crate; nothing ships linking it or a part.
            let allowed = GROUND.contains(&dep.as_str())
                || (dep == SUPPORT && kind == "dev" && package != SUPPORT);
            if !allowed {
                wrong.push(format!("{package} → {dep} ({kind})"));
            }
        }
    }
    assert!(wrong.is_empty(), "links that cross the layers: {wrong:?}");
    Ok(())
}
