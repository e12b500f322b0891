//! The images `make images` built (`target/images/images.tsv`, written by images/build.sh),
//! as the local environment's registry serves them: tests run exactly those on the real
//! nodes, pinned by digest.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

/// The images, one per binary (images/build.sh builds them in this order).
pub const NAMES: [&str; 4] = [
    "fiberstack-operator",
    "fiber-probe",
    "fiber-ingest",
    "fiber-etl",
];

/// The version the images are tagged with: the chart's appVersion.
pub fn app_version() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/fiberstack/Chart.yaml");
    let chart =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .with_context(|| format!("{} has no appVersion", path.display()))?
        .trim_matches('"')
        .to_owned())
}

/// `target/images/images.tsv` of this checkout.
pub fn table() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/images.tsv")
}

/// One built image: its digest, and where the registry serves it (`None` when the build did
/// not push, e.g. with the environment down).
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub reference: Option<String>,
}

pub fn built() -> Result<Vec<Built>> {
    let path = table();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is missing: run `make images` first", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        ensure!(
            cols.len() == 5,
            "malformed line in {}: {line:?}",
            path.display()
        );
        rows.push(Built {
            name: cols[0].to_owned(),
            version: cols[1].to_owned(),
            digest: cols[2].to_owned(),
            reference: (cols[4] != "-").then(|| cols[4].to_owned()),
        });
    }
    Ok(rows)
}

/// `<registry>/fiberstack/<name>@sha256:…` of a pushed image.
pub fn reference(name: &str) -> Result<String> {
    built()?
        .into_iter()
        .find(|b| b.name == name)
        .with_context(|| format!("{name} is not in {}", table().display()))?
        .reference
        .with_context(|| {
            format!("{name} was built but not pushed: run `make images` with the environment up")
        })
}
