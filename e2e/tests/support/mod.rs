//! What the pod-runner tests share: the environment's tools, child processes stopped at the
//! end of a test, and reading the runner's `pods.json`.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fiberstack_e2e::LocalEnv;
use fiberstack_e2e::pod_runner::{PodReport, read_report};

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

/// The runner's `pods.json`.
pub fn runner_pods(state: &Path) -> Result<Vec<PodReport>> {
    read_report(state)
}

/// The pids of the running containers of the pods whose names start with `prefix`.
pub fn pids_of(pods: &[PodReport], prefix: &str) -> Vec<u32> {
    pods.iter()
        .filter(|p| p.name.starts_with(prefix))
        .flat_map(|p| p.containers.iter().filter_map(|c| c.pid))
        .collect()
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

/// A pod runner for namespace `ns` with its own pod network; its state directory.
pub fn start_runner(
    env: &LocalEnv,
    ns: &str,
    pod_network: &str,
) -> Result<(Process, std::path::PathBuf)> {
    let state = Path::new("/run/fiberstack-pod-runner").join(ns);
    std::fs::create_dir_all(&state)?;
    let mut runner = Command::new(env!("CARGO_BIN_EXE_pod-runner"));
    runner
        .args(["run", "--namespace", ns, "--state-dir"])
        .arg(&state)
        .args(["--pod-network", pod_network, "--interval-ms", "500"])
        .env("KUBECONFIG", &env.kubeconfig);
    let process = Process::start("pod-runner", runner, &state.join("runner.log"))?;
    Ok((process, state))
}
