//! The pod runner: the fake (kwok) nodes run pods only on paper, so for each pod whose images
//! are FiberStack's own it runs the matching local binary as a kubelet would — the pod's
//! command, args and environment (downward API, Secret and ConfigMap references), its
//! ConfigMap/Secret/emptyDir volumes mounted at their paths, its user, its restart policy —
//! in a network namespace holding the pod's IP, and stops it when the pod goes away.
//! kwok still writes the pods' status; the runner writes `pods.json` in its state directory
//! (which process runs for which pod) for tests and people. See `e2e/README.md`.

pub mod forward;
pub mod network;
pub mod spec;
pub mod supervise;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};

use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use network::PodNetwork;
use spec::{PodPlan, Sources, TokenFile, VolumeContent};
use supervise::{HostMount, Launch, State};

pub struct Options {
    /// Where the "images" are: a container runs `<bin_dir>/<command[0]>`.
    pub bin_dir: PathBuf,
    /// Volumes, logs, copied binaries and `pods.json`.
    pub state_dir: PathBuf,
    /// Namespaces whose pods are run; empty: all.
    pub namespaces: Vec<String>,
    /// The host as pods see it (an extra address on `lo`).
    pub host_address: Ipv4Addr,
    /// The name pods resolve to `host_address`.
    pub host_name: String,
    /// Ports forwarded from `host_address` to the same port on 127.0.0.1.
    pub forwards: Vec<u16>,
    /// Pod IPs are taken from here (kwok's own `status.podIP` repeats across nodes, so the
    /// runner assigns its own; the downward API's `status.podIP` gives the runner's).
    pub pod_network: (Ipv4Addr, u8),
    /// Where pods reach the kube-apiserver (`KUBERNETES_SERVICE_HOST`/`_PORT`): the
    /// `kubernetes` Service's address, which the apiserver's certificate names.
    pub api_address: SocketAddrV4,
    /// The kube-apiserver itself (from the kubeconfig).
    pub api_target: SocketAddr,
    pub interval: Duration,
}

/// Names that resolve to `ips` in every pod's `/etc/hosts`.
struct HostsEntry {
    namespace: String,
    ips: Vec<Ipv4Addr>,
    names: Vec<String>,
}

/// A pod the runner runs.
struct Running {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    network: PodNetwork,
    dir: PathBuf,
    labels: BTreeMap<String, String>,
    plan: PodPlan,
    /// Each projected volume's current service-account token and when it was issued.
    tokens: HashMap<String, (String, Instant)>,
    containers: Vec<(String, Arc<Mutex<State>>, tokio::task::JoinHandle<()>)>,
    stop: watch::Sender<bool>,
    grace: Duration,
}

/// One pod of `pods.json`: what runs where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub dir: PathBuf,
    pub containers: Vec<ContainerReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<i32>,
    pub finished: bool,
    pub log: PathBuf,
}

/// The `pods.json` a runner keeps in `state_dir`.
pub fn read_report(state_dir: &Path) -> Result<Vec<PodReport>> {
    let path = state_dir.join("pods.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

pub struct Runner {
    client: Client,
    options: Options,
    running: HashMap<String, Running>,
    /// Pods that ran to completion (restart policy Never/OnFailure): not started again.
    done: std::collections::HashSet<String>,
    /// The last reason each pod could not start, logged once per change.
    waiting: HashMap<String, String>,
}

impl Runner {
    pub fn new(client: Client, options: Options) -> Self {
        Self {
            client,
            options,
            running: HashMap::new(),
            done: Default::default(),
            waiting: HashMap::new(),
        }
    }

    fn service_env(&self) -> Vec<(String, String)> {
        let a = self.options.api_address;
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), a.ip().to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), a.port().to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), a.port().to_string()),
        ]
    }

    fn has_binary(&self, name: &str) -> bool {
        self.options.bin_dir.join(name).is_file()
    }

    /// Sets up the host side, then syncs pods with processes until `shutdown` resolves;
    /// then stops every pod it runs.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        std::fs::create_dir_all(self.options.state_dir.join("pods"))?;
        std::fs::create_dir_all(self.options.state_dir.join("bin"))?;
        set_mode(&self.options.state_dir, 0o755)?;
        network::host_addresses(&[self.options.host_address, *self.options.api_address.ip()])?;
        let mut forwards = Vec::new();
        for port in &self.options.forwards {
            let from = SocketAddr::from((self.options.host_address, *port));
            let to = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            forwards.push(forward::forward(from, to).await?);
        }
        forwards.push(
            forward::forward(self.options.api_address.into(), self.options.api_target).await?,
        );
        tracing::info!(
            host = %self.options.host_address,
            forwards = ?self.options.forwards,
            api = %self.options.api_address,
            bin_dir = %self.options.bin_dir.display(),
            state_dir = %self.options.state_dir.display(),
            "pod runner ready"
        );
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.sync().await {
                tracing::warn!(error = format!("{e:#}"), "sync failed; retrying");
            }
            self.report();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.options.interval) => {}
            }
        }
        tracing::info!(pods = self.running.len(), "stopping every pod");
        let uids: Vec<String> = self.running.keys().cloned().collect();
        let stops = uids.into_iter().filter_map(|u| self.running.remove(&u));
        futures::future::join_all(stops.map(stop_pod)).await;
        self.report();
        for f in forwards {
            f.abort();
        }
        Ok(())
    }

    /// Every object of kind `K` in the runner's namespaces (or all namespaces).
    async fn list_all<K>(&self) -> Result<Vec<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let apis: Vec<Api<K>> = if self.options.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.options
                .namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect()
        };
        let mut out = Vec::new();
        for api in apis {
            out.extend(api.list(&ListParams::default()).await?.items);
        }
        Ok(out)
    }

    async fn sync(&mut self) -> Result<()> {
        let pods: Vec<Pod> = self.list_all().await.context("list pods")?;
        let services: Vec<Service> = self.list_all().await.context("list services")?;
        let config_maps: Vec<ConfigMap> = self.list_all().await.context("list configmaps")?;
        let secrets: Vec<Secret> = self.list_all().await.context("list secrets")?;

        let wanted: HashMap<String, &Pod> = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
                    && spec::is_ours(p, &|n| self.has_binary(n))
            })
            .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
            .collect();

        // Pods gone or being deleted: stop their processes.
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|u| !wanted.contains_key(*u))
            .cloned()
            .collect();
        let mut stopping = Vec::new();
        for uid in gone {
            if let Some(r) = self.running.remove(&uid) {
                tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), "pod gone; stopping");
                stopping.push(stop_pod(r));
            }
        }
        futures::future::join_all(stopping).await;
        self.done.retain(|u| wanted.contains_key(u));
        self.waiting.retain(|u, _| wanted.contains_key(u));

        let service_env = self.service_env();
        // A pod starting now gets /etc/hosts before its process does; the Services it finds
        // there are those of the pods already running (the rewrite at the end adds it).
        let entries = self.service_entries(&services);
        for (uid, pod) in &wanted {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let Some(ip) = self
                .running
                .get(uid)
                .map(|r| r.ip)
                .or_else(|| self.free_ip())
            else {
                tracing::warn!("no free pod IP left in the pod network");
                break;
            };
            let mut pod = (*pod).clone();
            pod.status.get_or_insert_with(Default::default).pod_ip = Some(ip.to_string());
            let pod = &pod;
            let sources = Sources {
                config_maps: config_maps
                    .iter()
                    .filter(|c| c.metadata.namespace.as_deref() == Some(&ns))
                    .filter_map(|c| Some((c.metadata.name.clone()?, c)))
                    .collect(),
                secrets: secrets
                    .iter()
                    .filter(|c| c.metadata.namespace.as_deref() == Some(&ns))
                    .filter_map(|c| Some((c.metadata.name.clone()?, c)))
                    .collect(),
            };
            let plan = spec::plan(pod, &sources, &service_env);
            let uid = &uid.to_string();
            if self.running.contains_key(uid) {
                if let Err(e) = self.refresh_volumes(uid, pod, plan.ok()).await {
                    tracing::warn!(pod = %format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or_default()), error = format!("{e:#}"), "cannot update the pod's volumes; retrying");
                }
                let r = &self.running[uid];
                if r.containers
                    .iter()
                    .all(|(_, s, _)| s.lock().expect("state").finished)
                {
                    self.done.insert(uid.clone());
                }
                continue;
            }
            if self.done.contains(uid) {
                continue;
            }
            let plan = match plan {
                Ok(p) => p,
                Err(e) => {
                    let why = e.to_string();
                    if self.waiting.get(uid) != Some(&why) {
                        tracing::warn!(pod = %format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or_default()), reason = %why, "cannot start the pod yet");
                        self.waiting.insert(uid.clone(), why);
                    }
                    continue;
                }
            };
            match self.start_pod(pod, plan, ip, &entries).await {
                Ok(r) => {
                    self.waiting.remove(uid);
                    self.running.insert(uid.clone(), r);
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    if self.waiting.get(uid) != Some(&why) {
                        tracing::warn!(pod = %format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or_default()), reason = %why, "cannot start the pod; retrying");
                        self.waiting.insert(uid.clone(), why);
                    }
                }
            }
        }
        let entries = self.service_entries(&services);
        // Again, now with the pods this sync started and without those it stopped.
        for r in self.running.values() {
            let text = self.hosts_text(&r.namespace, &r.name, r.ip, &entries);
            network::write_in_place(&r.network.hosts_file(), &text)?;
        }
        Ok(())
    }

    /// The lowest address of the pod network no running pod holds.
    fn free_ip(&self) -> Option<Ipv4Addr> {
        let (base, prefix) = self.options.pod_network;
        let size = 1u64 << (32 - u32::from(prefix));
        let base = u32::from(base) & !((size - 1) as u32);
        let used: std::collections::HashSet<Ipv4Addr> =
            self.running.values().map(|r| r.ip).collect();
        (1..size.saturating_sub(1))
            .map(|i| Ipv4Addr::from(base + i as u32))
            .find(|ip| !used.contains(ip))
    }

    async fn start_pod(
        &self,
        pod: &Pod,
        plan: PodPlan,
        ip: Ipv4Addr,
        entries: &[HostsEntry],
    ) -> Result<Running> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // The "images" first: a missing binary leaves nothing half made behind.
        let binaries = plan
            .containers
            .iter()
            .map(|c| self.image_binary(&c.program))
            .collect::<Result<Vec<_>>>()?;
        let dir = self.options.state_dir.join("pods").join(format!(
            "{ns}_{name}_{}",
            uid.chars().take(8).collect::<String>()
        ));
        let volumes_dir = dir.join("volumes");
        let _ = std::fs::remove_dir_all(&volumes_dir);
        std::fs::create_dir_all(&volumes_dir)?;
        set_mode(&dir, 0o755)?;
        set_mode(&volumes_dir, 0o755)?;
        let owner = plan.containers.first().and_then(|c| c.user);
        let mut tokens = HashMap::new();
        for (vname, content) in &plan.volumes {
            let path = volumes_dir.join(vname);
            match content {
                VolumeContent::Files { files, token } => {
                    let mut files = files.clone();
                    if let Some(t) = token {
                        let jwt = self.request_token(pod, t).await?;
                        files.insert(t.path.clone(), jwt.clone().into_bytes());
                        tokens.insert(vname.clone(), (jwt, Instant::now()));
                    }
                    write_files(&path, &files)?;
                }
                VolumeContent::EmptyDir => {
                    std::fs::create_dir_all(&path)?;
                    // fsGroup owns the volume and its setgid bit keeps new files in it.
                    std::os::unix::fs::chown(
                        &path,
                        owner.map(|u| u as u32),
                        plan.fs_group.map(|g| g as u32),
                    )?;
                    set_mode(
                        &path,
                        if plan.fs_group.is_some() {
                            0o2775
                        } else {
                            0o777
                        },
                    )?;
                }
            }
        }
        let network = PodNetwork::names(&uid, ip);
        if let Err(e) = network.create(&plan.sysctls).and_then(|()| {
            network::write_in_place(
                &network.hosts_file(),
                &self.hosts_text(&ns, &name, ip, entries),
            )
        }) {
            network.destroy();
            return Err(e);
        }

        let (stop, stop_rx) = watch::channel(false);
        let mut containers = Vec::new();
        for (c, binary) in plan.containers.iter().zip(binaries) {
            let mut mounts = Vec::new();
            for m in &c.mounts {
                let mut source = volumes_dir.join(&m.volume);
                if let Some(sub) = &m.sub_path {
                    source = source.join(sub);
                }
                mounts.push(HostMount {
                    source,
                    target: m.path.clone(),
                    read_only: m.read_only,
                });
            }
            let log = dir.join(format!("{}.log", c.name));
            let launch = Launch {
                netns: network.netns.clone(),
                binary,
                args: c.args.clone(),
                env: c.env.clone(),
                mounts,
                user: c.user,
                group: c.group,
                supplementary_group: plan.fs_group,
                log,
                restart: plan.restart,
                grace: Duration::from_secs(plan.grace_seconds.max(0) as u64),
            };
            let state = Arc::new(Mutex::new(State::default()));
            let label = format!("{ns}/{name}/{}", c.name);
            let task = tokio::spawn(supervise::supervise(
                label,
                launch,
                state.clone(),
                stop_rx.clone(),
            ));
            containers.push((c.name.clone(), state, task));
        }
        tracing::info!(pod = %format!("{ns}/{name}"), %ip, netns = %network.netns, "pod started");
        Ok(Running {
            namespace: ns,
            name,
            ip,
            network,
            dir,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            grace: Duration::from_secs(plan.grace_seconds.max(0) as u64),
            plan,
            tokens,
            containers,
            stop,
        })
    }

    /// The "image": the binary copied into the state directory (a non-root pod user must
    /// be able to read it; the build directory may sit under a private home).
    fn image_binary(&self, program: &str) -> Result<PathBuf> {
        let src = self.options.bin_dir.join(program);
        let dst = self.options.state_dir.join("bin").join(program);
        let meta = std::fs::metadata(&src)
            .with_context(|| format!("no binary {} for the image", src.display()))?;
        let fresh = std::fs::metadata(&dst)
            .is_ok_and(|d| d.len() == meta.len() && d.modified().ok() >= meta.modified().ok());
        if !fresh {
            let tmp = dst.with_extension("tmp");
            std::fs::copy(&src, &tmp)?;
            set_mode(&tmp, 0o755)?;
            std::fs::rename(&tmp, &dst)?;
        }
        Ok(dst)
    }

    /// Keeps a running pod's ConfigMap/Secret/projected volumes equal to their objects (the
    /// kubelet updates them in place) and renews service-account tokens at 80 % of their
    /// lifetime, as the kubelet does.
    async fn refresh_volumes(&mut self, uid: &str, pod: &Pod, plan: Option<PodPlan>) -> Result<()> {
        let Some(plan) = plan else { return Ok(()) };
        let mut renewed = Vec::new();
        {
            let r = &self.running[uid];
            for (name, content) in &plan.volumes {
                if let VolumeContent::Files { token: Some(t), .. } = content
                    && r.tokens.get(name).is_none_or(|(_, at)| {
                        at.elapsed().as_secs_f64() > 0.8 * t.expiration_seconds as f64
                    })
                {
                    renewed.push((name.clone(), self.request_token(pod, t).await?));
                }
            }
        }
        let r = self.running.get_mut(uid).expect("running");
        for (name, jwt) in renewed {
            tracing::info!(pod = %r.name, volume = %name, "service-account token renewed");
            r.tokens.insert(name, (jwt, Instant::now()));
        }
        for (name, content) in &plan.volumes {
            if let VolumeContent::Files { files, token } = content {
                let mut files = files.clone();
                if let (Some(t), Some((jwt, _))) = (token, r.tokens.get(name)) {
                    files.insert(t.path.clone(), jwt.clone().into_bytes());
                }
                if write_files(&r.dir.join("volumes").join(name), &files)? {
                    tracing::info!(pod = %r.name, volume = %name, "volume content changed; updated");
                }
            }
        }
        r.plan.volumes = plan.volumes;
        Ok(())
    }

    /// A service-account token bound to the pod, as the kubelet requests for a projected
    /// volume.
    async fn request_token(&self, pod: &Pod, t: &TokenFile) -> Result<String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: t.audience.iter().cloned().collect(),
                expiration_seconds: Some(t.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let answer: TokenRequest = api
            .create_subresource("token", &sa, &PostParams::default(), &request)
            .await
            .with_context(|| format!("token for service account {ns}/{sa}"))?;
        answer
            .status
            .map(|s| s.token)
            .context("the token request returned no token")
    }

    /// The names every pod resolves: the apiserver, and each Service of the runner's
    /// namespaces with the addresses of the pods behind it that the runner runs.
    fn service_entries(&self, services: &[Service]) -> Vec<HostsEntry> {
        let mut entries: Vec<HostsEntry> = Vec::new();
        let api = self.options.api_address;
        entries.push(HostsEntry {
            namespace: "default".into(),
            ips: vec![*api.ip()],
            names: vec![
                "kubernetes.default.svc.cluster.local".into(),
                "kubernetes.default.svc".into(),
                "kubernetes.default".into(),
            ],
        });
        for svc in services {
            let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) else {
                continue;
            };
            let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            let mut ips: Vec<Ipv4Addr> = self
                .running
                .values()
                .filter(|r| {
                    r.namespace == *ns
                        && !selector.is_empty()
                        && selector.iter().all(|(k, v)| r.labels.get(k) == Some(v))
                        && r.containers
                            .iter()
                            .any(|(_, s, _)| s.lock().expect("state").pid.is_some())
                })
                .map(|r| r.ip)
                .collect();
            ips.sort();
            if ips.is_empty() {
                continue;
            }
            entries.push(HostsEntry {
                namespace: ns.clone(),
                ips,
                names: vec![
                    format!("{name}.{ns}.svc.cluster.local"),
                    format!("{name}.{ns}.svc"),
                    format!("{name}.{ns}"),
                    name.clone(),
                ],
            });
        }
        entries
    }

    /// One pod's `/etc/hosts`: itself, the host, and `entries` (a Service's short name only
    /// in its own namespace, as the DNS search path would resolve it).
    fn hosts_text(&self, ns: &str, name: &str, ip: Ipv4Addr, entries: &[HostsEntry]) -> String {
        let mut text = format!(
            "# written by the FiberStack pod runner\n127.0.0.1 localhost\n{ip} {name}\n{} {}\n",
            self.options.host_address, self.options.host_name
        );
        // Each pod lists a Service's addresses from its own offset, so clients spread over
        // the replicas the way kube-proxy's random choice would.
        let offset = name.bytes().map(usize::from).sum::<usize>();
        for e in entries {
            let names: Vec<&str> = e
                .names
                .iter()
                .filter(|n| e.namespace == ns || n.contains('.'))
                .map(String::as_str)
                .collect();
            for i in 0..e.ips.len() {
                let ip = e.ips[(offset + i) % e.ips.len()];
                text.push_str(&format!("{ip} {}\n", names.join(" ")));
            }
        }
        text
    }

    /// `pods.json`: what runs where, rewritten after each sync.
    fn report(&self) {
        let mut pods: Vec<PodReport> = self
            .running
            .iter()
            .map(|(uid, r)| PodReport {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                uid: uid.clone(),
                ip: r.ip,
                netns: r.network.netns.clone(),
                dir: r.dir.clone(),
                containers: r
                    .containers
                    .iter()
                    .map(|(name, s, _)| {
                        let s = s.lock().expect("state");
                        ContainerReport {
                            name: name.clone(),
                            pid: s.pid,
                            restarts: s.restarts,
                            last_exit: s.last_exit,
                            finished: s.finished,
                            log: r.dir.join(format!("{name}.log")),
                        }
                    })
                    .collect(),
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let path = self.options.state_dir.join("pods.json");
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&pods).unwrap_or_default();
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

async fn stop_pod(r: Running) {
    let _ = r.stop.send(true);
    for (_, _, task) in r.containers {
        // The supervisor itself SIGKILLs after the grace period; this bounds a stuck one.
        let _ = tokio::time::timeout(r.grace + Duration::from_secs(5), task).await;
    }
    r.network.destroy();
    let _ = std::fs::remove_dir_all(r.dir.join("volumes"));
    tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), "pod stopped");
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Writes a ConfigMap/Secret/projected volume: each key a file, replaced by rename so a
/// reader never sees half a file; keys no longer present are removed. True when anything
/// changed.
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<bool> {
    let mut changed = false;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        set_mode(dir, 0o755)?;
    }
    for (name, content) in files {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() == Some(content.as_slice()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = dir.join(format!(".{}.tmp", name.replace('/', "_")));
        std::fs::write(&tmp, content)?;
        set_mode(&tmp, 0o644)?;
        std::fs::rename(&tmp, &path)?;
        changed = true;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && !files.contains_key(&name) && !name.starts_with('.') {
            std::fs::remove_file(entry.path())?;
            changed = true;
        }
    }
    Ok(changed)
}
