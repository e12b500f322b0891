//! Runs one container's process and keeps it running per the pod's restart policy, until
//! told to stop: then SIGTERM, the pod's grace period, SIGKILL — as a kubelet does.
//!
//! The process is started as
//! `ip netns exec <pod netns> /bin/sh -c '<bind mounts>; exec setpriv … -- <binary> <args>'`:
//! `ip netns exec` enters the pod's network namespace and a fresh mount namespace (with
//! `/etc/hosts` replaced by the pod's); the shell bind-mounts the pod's volumes at the paths
//! the container asked for, inside that mount namespace only; `setpriv` drops to the pod's
//! user and group. Nothing else is translated.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::watch;

use super::spec::Restart;

/// A volume mount resolved to a directory or file on the host.
#[derive(Debug, Clone)]
pub struct HostMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct Launch {
    pub netns: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<HostMount>,
    pub user: Option<i64>,
    pub group: Option<i64>,
    pub supplementary_group: Option<i64>,
    pub log: PathBuf,
    pub restart: Restart,
    pub grace: Duration,
}

/// What a supervisor reports.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<i32>,
    /// Run to completion (restart policy Never/OnFailure) and will not run again.
    pub finished: bool,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell script that mounts the volumes and execs the program (as `"$@"`).
pub fn script(l: &Launch) -> String {
    let mut s = String::from("set -e\n");
    for m in &l.mounts {
        let (src, dst) = (
            quote(&m.source.to_string_lossy()),
            quote(&m.target.to_string_lossy()),
        );
        if m.source.is_dir() {
            s.push_str(&format!("mkdir -p {dst}\n"));
        } else {
            let parent = m.target.parent().unwrap_or(Path::new("/"));
            s.push_str(&format!(
                "mkdir -p {}\n[ -e {dst} ] || touch {dst}\n",
                quote(&parent.to_string_lossy())
            ));
        }
        s.push_str(&format!("mount --bind {src} {dst}\n"));
        if m.read_only {
            s.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    }
    match (l.user, l.group) {
        (None, None) => s.push_str("exec \"$@\"\n"),
        (user, group) => {
            let mut cmd = String::from("exec setpriv");
            if let Some(u) = user {
                cmd.push_str(&format!(" --reuid={u}"));
            }
            if let Some(g) = group.or(user) {
                cmd.push_str(&format!(" --regid={g}"));
            }
            match l.supplementary_group {
                Some(g) => cmd.push_str(&format!(" --groups={g}")),
                None => cmd.push_str(" --clear-groups"),
            }
            cmd.push_str(" -- \"$@\"\n");
            s.push_str(&cmd);
        }
    }
    s
}

async fn signal(pid: u32, sig: &str) {
    // The process leads its own group: the whole group gets the signal.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .status()
        .await;
}

/// Runs `launch` until `stop` turns true (or, for run-to-completion pods, until done).
pub async fn supervise(
    name: String,
    launch: Launch,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return;
        }
        let log = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(container = %name, error = %e, "cannot open the log file");
                return;
            }
        };
        let Ok(log2) = log.try_clone() else { return };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &launch.netns, "/bin/sh", "-c"])
            .arg(script(&launch))
            .arg("sh")
            .arg(&launch.binary)
            .args(&launch.args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(container = %name, error = %e, "cannot start");
                return;
            }
        };
        let pid = child.id().unwrap_or_default();
        state.lock().expect("state").pid = Some(pid);
        tracing::info!(container = %name, pid, binary = %launch.binary.display(), "started");
        let status = tokio::select! {
            s = child.wait() => s.ok(),
            _ = stop.changed() => {
                signal(pid, "TERM").await;
                let status = match tokio::time::timeout(launch.grace, child.wait()).await {
                    Ok(s) => s.ok(),
                    Err(_) => {
                        tracing::warn!(container = %name, pid, "still running after the grace period; SIGKILL");
                        signal(pid, "KILL").await;
                        child.wait().await.ok()
                    }
                };
                let mut st = state.lock().expect("state");
                st.pid = None;
                st.last_exit = status.and_then(|s| s.code());
                tracing::info!(container = %name, pid, code = ?st.last_exit, "stopped");
                return;
            }
        };
        let code = status.and_then(|s| s.code());
        let ran = started.elapsed();
        let again = match launch.restart {
            Restart::Always => true,
            Restart::OnFailure => code != Some(0),
            Restart::Never => false,
        };
        {
            let mut st = state.lock().expect("state");
            st.pid = None;
            st.last_exit = code;
            st.finished = !again;
        }
        if !again {
            tracing::info!(container = %name, ?code, "exited; restart policy says done");
            return;
        }
        if ran > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(container = %name, ?code, ran_ms = ran.as_millis() as u64, restart_in_ms = backoff.as_millis() as u64, "exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        state.lock().expect("state").restarts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_mounts_then_drops_privileges() {
        let dir = std::env::temp_dir();
        let l = Launch {
            netns: "fs-x".into(),
            binary: "/bin/true".into(),
            args: vec![],
            env: vec![],
            mounts: vec![
                HostMount {
                    source: dir.clone(),
                    target: "/etc/it's here".into(),
                    read_only: true,
                },
                HostMount {
                    source: "/nonexistent/file".into(),
                    target: "/etc/one/file".into(),
                    read_only: false,
                },
            ],
            user: Some(65532),
            group: None,
            supplementary_group: Some(65534),
            log: "/dev/null".into(),
            restart: Restart::Always,
            grace: Duration::from_secs(1),
        };
        let s = script(&l);
        assert!(s.contains(r"mkdir -p '/etc/it'\''s here'"), "{s}");
        assert!(
            s.contains(r"mount -o remount,bind,ro '/etc/it'\''s here'"),
            "{s}"
        );
        assert!(
            s.contains("[ -e '/etc/one/file' ] || touch '/etc/one/file'"),
            "{s}"
        );
        assert!(
            s.ends_with("exec setpriv --reuid=65532 --regid=65532 --groups=65534 -- \"$@\"\n"),
            "{s}"
        );
    }
}
