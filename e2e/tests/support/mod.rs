//! What the cluster tests share: the environment's tools, child processes stopped at the end
//! of a test, and the host processes of a pod's containers.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fiberstack_e2e::LocalEnv;

/// `helm`/`kubectl` from the environment's binaries, pointed at its cluster.
pub fn tool(name: &str, env: &LocalEnv) -> Command {
    let mut command = Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".env/bin")
            .join(name),
    );
    command.env("KUBECONFIG", &env.kubeconfig);
    command
}

pub fn run(mut command: Command, stdin: Option<&str>) -> Result<String> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child process stopped with SIGTERM (then SIGKILL) when the test ends, pass or fail.
pub struct Process {
    child: Child,
    what: &'static str,
}

impl Process {
    pub fn start(what: &'static str, mut command: Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self { child, what })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..120 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("{} did not stop after SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host pids of the processes in the pod's containers (the kubelet's cgroup paths carry
/// `pod<uid>`), with their command names.
pub fn pod_processes(uid: &str) -> Result<BTreeMap<u32, String>> {
    let needle = format!("pod{uid}");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if cgroup.contains(&needle) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.insert(pid, comm.trim().to_owned());
        }
    }
    Ok(found)
}

/// The host pid of the process in pod `uid` whose command name (`comm`, at most 15 bytes)
/// starts with `comm`.
pub fn pod_process(uid: &str, comm: &str) -> Result<u32> {
    let processes = pod_processes(uid)?;
    processes
        .iter()
        .find(|(_, c)| c.starts_with(comm))
        .map(|(pid, _)| *pid)
        .with_context(|| format!("no {comm} process in pod {uid}: {processes:?}"))
}

pub fn uid_of(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("no Uid line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("Uid line")?
        .parse()?)
}
