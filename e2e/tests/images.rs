//! The four images `make images` builds (images/build.sh; the test command runs it before the
//! tests): what is inside each OCI archive and how it is configured, that a second build of
//! the same sources gives the same digest, and that the root Dockerfile describes the same
//! images. Running them on real nodes is e2e/tests/nodes.rs's and full_flow.rs's business.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use fiberstack_e2e::images::{self, NAMES, app_version};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn images_dir() -> PathBuf {
    repo().join("target/images")
}

fn built() -> Result<BTreeMap<String, images::Built>> {
    Ok(images::built()?
        .into_iter()
        .map(|b| (b.name.clone(), b))
        .collect())
}

fn run(command: &mut Command) -> Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// An OCI archive unpacked into a temporary directory: its index, manifest, config and the
/// entries of its layers.
struct Archive {
    dir: PathBuf,
    manifest_digest: String,
    config: Value,
    /// path (without leading ./) → `tar -tv` mode string, e.g. `-rwxr-xr-x`.
    entries: BTreeMap<String, String>,
}

impl Drop for Archive {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn open(name: &str) -> Result<Archive> {
    let archive = images_dir().join(format!("{name}.tar"));
    let dir = std::env::temp_dir().join(format!(
        "fiberstack-image-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir))?;
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?
        .to_owned();
    let manifest: Value = serde_json::from_slice(&std::fs::read(blob(&dir, &manifest_digest))?)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest names no config")?;
    let config: Value = serde_json::from_slice(&std::fs::read(blob(&dir, config_digest))?)?;
    let mut entries = BTreeMap::new();
    for layer in manifest["layers"]
        .as_array()
        .context("manifest has no layers")?
    {
        let digest = layer["digest"].as_str().context("layer without digest")?;
        let listing = run(Command::new("tar")
            .arg("-tvzf")
            .arg(blob(&dir, digest))
            .env("LC_ALL", "C"))?;
        for line in String::from_utf8_lossy(&listing).lines() {
            let mode = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            // `-rwxr-xr-x 0/0 123 1970-01-01 00:00 ./usr/local/bin/x` (symlinks add ` -> t`)
            let path = line
                .split_whitespace()
                .nth(5)
                .unwrap_or_default()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            if !path.is_empty() {
                entries.insert(path, mode);
            }
        }
    }
    Ok(Archive {
        dir,
        manifest_digest,
        config,
        entries,
    })
}

fn head_revision() -> Result<String> {
    let out = run(Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["rev-parse", "HEAD"]))?;
    Ok(String::from_utf8(out)?.trim().to_owned())
}

#[test]
fn each_image_is_the_binary_on_scratch_as_uid_65532_without_a_shell() -> Result<()> {
    let built = built()?;
    let version = app_version()?;
    let revision = head_revision()?;
    for name in NAMES {
        let row = built
            .get(name)
            .with_context(|| format!("{name} is not in images.tsv"))?;
        let image = open(name)?;
        ensure!(
            image.manifest_digest == row.digest,
            "{name}: archive digest {} but images.tsv says {}",
            image.manifest_digest,
            row.digest
        );
        ensure!(row.version == version, "{name}: version {}", row.version);

        let config = &image.config["config"];
        ensure!(
            config["User"] == "65532:65532",
            "{name}: user {}",
            config["User"]
        );
        ensure!(
            config["Entrypoint"] == serde_json::json!([format!("/usr/local/bin/{name}")]),
            "{name}: entrypoint {}",
            config["Entrypoint"]
        );
        let labels = &config["Labels"];
        ensure!(
            labels["org.opencontainers.image.version"] == version.as_str(),
            "{name}: labels {labels}"
        );
        let label_revision = labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            label_revision.starts_with(&revision),
            "{name}: revision label {label_revision:?}, HEAD is {revision}"
        );
        ensure!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://")),
            "{name}: labels {labels}"
        );

        let binary = format!("usr/local/bin/{name}");
        ensure!(
            image
                .entries
                .get(&binary)
                .is_some_and(|m| m.starts_with("-rwx")),
            "{name}: {binary} missing or not executable"
        );
        for path in image.entries.keys() {
            let file = path.rsplit('/').next().unwrap_or_default();
            ensure!(
                ![
                    "sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg", "ash"
                ]
                .contains(&file),
                "{name} carries {path}: images have no shell and no package manager"
            );
            let top = path.split('/').next().unwrap_or_default();
            ensure!(
                ["etc", "lib", "lib64", "usr", "tmp"].contains(&top),
                "{name}: unexpected {path}"
            );
        }
        for needed in [
            "etc/passwd",
            "etc/group",
            "etc/ssl/certs/ca-certificates.crt",
        ] {
            ensure!(image.entries.contains_key(needed), "{name}: no {needed}");
        }
        let passwd =
            std::fs::read_to_string(images_dir().join("rootfs").join(name).join("etc/passwd"))?;
        ensure!(
            passwd
                .lines()
                .any(|l| l.starts_with("nonroot:x:65532:65532:")),
            "{name}: /etc/passwd has no uid 65532: {passwd}"
        );
        let size = std::fs::metadata(images_dir().join(format!("{name}.tar")))?.len();
        println!(
            "{name}: {} {:.1} MiB (archive)",
            image.manifest_digest,
            size as f64 / 1_048_576.0
        );
    }
    Ok(())
}

#[test]
fn a_second_build_of_the_same_sources_has_the_same_digest() -> Result<()> {
    let built = built()?;
    let first = &built
        .get("fiber-probe")
        .context("fiber-probe not built")?
        .digest;
    let out = std::env::temp_dir().join(format!("fiberstack-images-again-{}", std::process::id()));
    let result = run(Command::new("bash")
        .arg(repo().join("images/build.sh"))
        .args(["--no-push", "--no-cargo", "--only", "fiber-probe", "--out"])
        .arg(&out));
    let again = std::fs::read_to_string(out.join("fiber-probe.digest"));
    let _ = std::fs::remove_dir_all(&out);
    result?;
    let again = again?;
    ensure!(
        again.trim() == first,
        "rebuilt fiber-probe is {} but the first build was {first}",
        again.trim()
    );
    Ok(())
}

/// `FROM scratch AS <name>` stages of the root Dockerfile: instruction → its text, with line
/// continuations joined.
fn dockerfile_stages() -> Result<BTreeMap<String, Vec<(String, String)>>> {
    let text = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let joined = text.replace("\\\n", " ");
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let instruction = instruction.to_uppercase();
        if instruction == "FROM" {
            current = rest
                .strip_prefix("scratch AS ")
                .map(|name| name.trim().to_owned());
            continue;
        }
        if let Some(name) = &current {
            stages
                .entry(name.clone())
                .or_insert_with(Vec::new)
                .push((instruction, rest.trim().to_owned()));
        }
    }
    Ok(stages)
}

#[test]
fn the_dockerfile_describes_the_same_images() -> Result<()> {
    let stages = dockerfile_stages()?;
    ensure!(
        stages.keys().map(String::as_str).collect::<BTreeSet<_>>()
            == NAMES.into_iter().collect::<BTreeSet<_>>(),
        "Dockerfile final stages {:?}, images {NAMES:?}",
        stages.keys()
    );
    for name in NAMES {
        let image = open(name)?;
        let config = &image.config["config"];
        let stage = &stages[name];
        let get = |instruction: &str| -> Result<&str> {
            stage
                .iter()
                .find(|(i, _)| i == instruction)
                .map(|(_, rest)| rest.as_str())
                .with_context(|| format!("Dockerfile stage {name} has no {instruction}"))
        };
        ensure!(
            get("USER")? == config["User"].as_str().unwrap_or_default(),
            "{name}: USER {} vs {}",
            get("USER")?,
            config["User"]
        );
        let entrypoint: Value = serde_json::from_str(get("ENTRYPOINT")?)?;
        ensure!(
            entrypoint == config["Entrypoint"],
            "{name}: ENTRYPOINT {entrypoint} vs {}",
            config["Entrypoint"]
        );
        ensure!(
            get("COPY")? == format!("--from=build /rootfs/{name}/ /"),
            "{name}: COPY {}",
            get("COPY")?
        );
        let env: BTreeSet<String> = get("ENV")?.split_whitespace().map(str::to_owned).collect();
        let image_env: BTreeSet<String> = config["Env"]
            .as_array()
            .context("no Env")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        ensure!(env == image_env, "{name}: ENV {env:?} vs {image_env:?}");
        let label_keys: BTreeSet<String> = get("LABEL")?
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        let image_keys: BTreeSet<String> = config["Labels"]
            .as_object()
            .context("no Labels")?
            .keys()
            .cloned()
            .collect();
        ensure!(
            label_keys == image_keys,
            "{name}: LABEL keys {label_keys:?} vs {image_keys:?}"
        );
    }
    Ok(())
}
