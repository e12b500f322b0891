//! Loading the probe's configuration: the `ProbeConfig` YAML plus the environment overrides
//! the DaemonSet sets (`NODE_NAME`, `FIBER_INGEST_URL`, `FIBER_TOKEN`, `FIBER_TOKEN_FILE`,
//! `FIBER_BUFFER_DIR`), and noticing when the file changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fiberstack_model::{ProbeConfig, ValidationError};
use tokio::sync::watch;

/// Why a configuration could not be loaded. Each message already names its cause, so the
/// cause is a plain field, not a `#[source]` that `{:#}` would print a second time.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the probe configuration {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("probe configuration {path} is not valid YAML for this version: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_yaml::Error,
    },
    #[error("probe configuration {path} is invalid: {cause}")]
    Invalid {
        path: PathBuf,
        cause: ValidationError,
    },
    #[error("cannot read the ingest token from {path}: {cause}")]
    Token {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl ConfigError {
    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Parse { .. } => "parse",
            ConfigError::Invalid { .. } => "invalid",
            ConfigError::Token { .. } => "token",
        }
    }
}

/// The environment overrides, captured once so tests can pass their own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub node: Option<String>,
    pub ingest_urls: Option<Vec<String>>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub buffer_dir: Option<PathBuf>,
}

impl Overrides {
    /// Reads the overrides from the process environment; empty variables count as unset.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            node: var("NODE_NAME"),
            ingest_urls: var("FIBER_INGEST_URL").map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect()
            }),
            token: var("FIBER_TOKEN").map(|t| t.trim().to_string()),
            token_file: var("FIBER_TOKEN_FILE").map(PathBuf::from),
            buffer_dir: var("FIBER_BUFFER_DIR").map(PathBuf::from),
        }
    }
}

/// A loaded configuration: the file with the overrides applied, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config: ProbeConfig,
    /// `FIBER_TOKEN`, which wins over any token file.
    token: Option<String>,
}

impl Settings {
    /// Applies the overrides to a parsed file and validates the result. Validation comes
    /// after the overrides because the file may leave `node` and `ingest.urls` to them.
    pub fn new(
        mut config: ProbeConfig,
        overrides: &Overrides,
        path: &Path,
    ) -> Result<Self, ConfigError> {
        if let Some(node) = &overrides.node {
            config.node = node.clone();
        }
        if let Some(urls) = &overrides.ingest_urls {
            config.ingest.urls = urls.clone();
        }
        if let Some(file) = &overrides.token_file {
            config.ingest.token_file = Some(file.clone());
        }
        if let Some(dir) = &overrides.buffer_dir {
            config.buffer.dir = dir.clone();
        }
        config.validate().map_err(|cause| ConfigError::Invalid {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(Self {
            config,
            token: overrides.token.clone(),
        })
    }

    /// Parses YAML text (the content of `path`).
    pub fn from_yaml(text: &str, overrides: &Overrides, path: &Path) -> Result<Self, ConfigError> {
        let config: ProbeConfig =
            serde_yaml::from_str(text).map_err(|cause| ConfigError::Parse {
                path: path.to_path_buf(),
                cause,
            })?;
        Self::new(config, overrides, path)
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::from_yaml(&text, overrides, path)
    }

    /// The bearer token: `FIBER_TOKEN`, else the token file (read at each call, so a
    /// rotated Secret is picked up), else none.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        match &self.config.ingest.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|cause| ConfigError::Token {
                    path: path.clone(),
                    cause,
                }),
            None => Ok(None),
        }
    }
}

/// Re-reads `path` every `every` and publishes a new [`Settings`] when the content changed
/// and is valid; an invalid change is logged and the running configuration kept.
///
/// Polling the content rather than watching with inotify: a ConfigMap volume is updated by
/// swapping a `..data` symlink, which never modifies the watched file itself; reading
/// through the path follows whatever the symlinks point to now.
pub async fn watch_file(
    path: PathBuf,
    overrides: Overrides,
    every: Duration,
    tx: watch::Sender<std::sync::Arc<Settings>>,
) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let Ok(now) = std::fs::read(&path) else {
            // A ConfigMap update briefly removes the file; keep what runs.
            continue;
        };
        if last.as_deref() == Some(now.as_slice()) {
            continue;
        }
        last = Some(now.clone());
        let text = String::from_utf8_lossy(&now);
        match Settings::from_yaml(&text, &overrides, &path) {
            Ok(settings) => {
                tracing::info!(path = %path.display(), targets = settings.config.targets.len(), "configuration changed; applying it");
                let _ = tx.send(std::sync::Arc::new(settings));
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, kind = e.kind(), "configuration changed but is not usable; keeping the running one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "probe: ns/p\nregion: ghana\ncountry: GH\ningest: {}\ntargets: [{ name: t, tcp: { host: 127.0.0.1, port: 1 } }]\n";

    #[test]
    fn overrides_fill_what_the_file_leaves_to_the_environment() {
        let path = Path::new("probe.yaml");
        let e = Settings::from_yaml(MINIMAL, &Overrides::default(), path).unwrap_err();
        assert!(e.to_string().contains("node"), "{e}");
        let o = Overrides {
            node: Some("n1".into()),
            ingest_urls: Some(vec!["http://a:1".into(), "http://b:2".into()]),
            token: Some("secret".into()),
            token_file: None,
            buffer_dir: Some("/tmp/b".into()),
        };
        let s = Settings::from_yaml(MINIMAL, &o, path).unwrap();
        assert_eq!(s.config.node, "n1");
        assert_eq!(s.config.ingest.urls, ["http://a:1", "http://b:2"]);
        assert_eq!(s.config.buffer.dir, PathBuf::from("/tmp/b"));
        assert_eq!(s.token().unwrap().as_deref(), Some("secret"));
    }

    /// A projected ServiceAccount token is renewed by the kubelet as a ConfigMap is: new
    /// files, then the `..data` symlink swapped. The next send reads the new token.
    #[test]
    fn a_rotated_token_is_read_at_the_next_send() {
        let dir = std::env::temp_dir().join(format!("fiber-probe-rotate-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        std::fs::write(dir.join("v1/token"), "first.jwt.token\n").unwrap();
        std::fs::write(dir.join("v2/token"), "second.jwt.token\n").unwrap();
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        let o = Overrides {
            node: Some("n1".into()),
            ingest_urls: Some(vec!["http://a:1".into()]),
            token_file: Some(dir.join("token")),
            ..Overrides::default()
        };
        let s = Settings::from_yaml(MINIMAL, &o, Path::new("p")).unwrap();
        assert_eq!(s.token().unwrap().as_deref(), Some("first.jwt.token"));
        std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(s.token().unwrap().as_deref(), Some("second.jwt.token"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("fiber-probe-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc\n").unwrap();
        let o = Overrides {
            node: Some("n1".into()),
            ingest_urls: Some(vec!["http://a:1".into()]),
            token_file: Some(file.clone()),
            ..Overrides::default()
        };
        let s = Settings::from_yaml(MINIMAL, &o, Path::new("p")).unwrap();
        assert_eq!(s.token().unwrap().as_deref(), Some("abc"));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(s.token().unwrap_err().kind(), "token");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
