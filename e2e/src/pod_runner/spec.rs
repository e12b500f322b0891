//! What a pod asks for, read off its spec the way a kubelet would: the program, arguments
//! and environment of each container, the files it mounts and the user it runs as. Pure
//! functions over the pod and the ConfigMaps/Secrets it names, so every rule is unit-tested
//! without a cluster.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

/// The ConfigMaps and Secrets of the pod's namespace, by name, as the plan reads them.
#[derive(Default)]
pub struct Sources<'a> {
    pub config_maps: HashMap<String, &'a ConfigMap>,
    pub secrets: HashMap<String, &'a Secret>,
}

impl Sources<'_> {
    fn config_map_data(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let cm = self.config_maps.get(name)?;
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        Some(out)
    }

    fn secret_data(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.secrets.get(name)?;
        let mut out: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            out.insert(k.clone(), v.clone().into_bytes());
        }
        Some(out)
    }
}

/// Why a pod cannot be started yet (a kubelet reports the same as CreateContainerConfigError
/// and retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{what} {name:?} not found")]
    Missing { what: &'static str, name: String },
    #[error("{what} {name:?} has no key {key:?}")]
    MissingKey {
        what: &'static str,
        name: String,
        key: String,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// What a volume holds: files to write (ConfigMap, Secret, projected) or an empty directory
/// that lives as long as the pod. A projected volume's service-account token is requested
/// from the API server when the pod starts (and renewed): `token` says where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeContent {
    Files {
        files: BTreeMap<String, Vec<u8>>,
        token: Option<TokenFile>,
    },
    EmptyDir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    pub path: String,
    pub expiration_seconds: i64,
    pub audience: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    /// Where the container sees it (an absolute path).
    pub path: PathBuf,
    pub sub_path: Option<String>,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    /// The binary's name, looked up in the runner's binary directory (the "image").
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub user: Option<i64>,
    pub group: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub containers: Vec<ContainerPlan>,
    pub volumes: BTreeMap<String, VolumeContent>,
    pub sysctls: Vec<(String, String)>,
    pub fs_group: Option<i64>,
    pub restart: Restart,
    pub grace_seconds: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

/// The last path segment of an image reference without tag or digest:
/// `ghcr.io/fiberstack/fiber-probe:0.1.0` → `fiber-probe`.
pub fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// Whether the runner runs this pod: every container's image is one of `binaries`.
pub fn is_ours(pod: &Pod, binaries: &dyn Fn(&str) -> bool) -> bool {
    let Some(spec) = &pod.spec else { return false };
    !spec.containers.is_empty()
        && spec
            .containers
            .iter()
            .all(|c| c.image.as_deref().is_some_and(|i| binaries(image_name(i))))
}

/// `$(VAR)` references expanded from `env` as the kubelet does; `$$` escapes, unknown
/// references are left as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_ref(pod: &Pod, path: &str) -> Result<String, PlanError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        p => {
            let key = |prefix: &str| {
                p.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix("']"))
                    .map(str::to_string)
            };
            if let Some(k) = key("metadata.labels['") {
                label(&meta.labels, &k)
            } else if let Some(k) = key("metadata.annotations['") {
                label(&meta.annotations, &k)
            } else {
                return Err(PlanError::Unsupported(format!("fieldRef {p}")));
            }
        }
    };
    Ok(value)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn container_env(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
) -> Result<Vec<(String, String)>, PlanError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what, name) = if let Some(r) = &from.config_map_ref {
            (
                sources.config_map_data(&r.name),
                r.optional.unwrap_or(false),
                "ConfigMap",
                r.name.clone(),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                sources.secret_data(&r.name),
                r.optional.unwrap_or(false),
                "Secret",
                r.name.clone(),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut env, format!("{prefix}{k}"), text(&v));
                }
            }
            None if optional => {}
            None => return Err(PlanError::Missing { what, name }),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &env)
        } else if let Some(from) = &e.value_from {
            let keyed = |data: Option<BTreeMap<String, Vec<u8>>>,
                         what: &'static str,
                         name: &str,
                         key: &str,
                         optional: bool|
             -> Result<Option<String>, PlanError> {
                match data {
                    Some(d) => match d.get(key) {
                        Some(v) => Ok(Some(text(v))),
                        None if optional => Ok(None),
                        None => Err(PlanError::MissingKey {
                            what,
                            name: name.into(),
                            key: key.into(),
                        }),
                    },
                    None if optional => Ok(None),
                    None => Err(PlanError::Missing {
                        what,
                        name: name.into(),
                    }),
                }
            };
            if let Some(f) = &from.field_ref {
                field_ref(pod, &f.field_path)?
            } else if let Some(s) = &from.secret_key_ref {
                match keyed(
                    sources.secret_data(&s.name),
                    "Secret",
                    &s.name,
                    &s.key,
                    s.optional.unwrap_or(false),
                )? {
                    Some(v) => v,
                    None => continue,
                }
            } else if let Some(m) = &from.config_map_key_ref {
                match keyed(
                    sources.config_map_data(&m.name),
                    "ConfigMap",
                    &m.name,
                    &m.key,
                    m.optional.unwrap_or(false),
                )? {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                return Err(PlanError::Unsupported(format!(
                    "env {}: resourceFieldRef",
                    e.name
                )));
            }
        } else {
            String::new()
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// Reads what `pod` asks for. `service_env` holds what a kubelet adds to every container
/// (`KUBERNETES_SERVICE_HOST`, `…_PORT`); the pod's own variables win over it.
pub fn plan(
    pod: &Pod,
    sources: &Sources,
    service_env: &[(String, String)],
) -> Result<PodPlan, PlanError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| PlanError::Unsupported("pod without spec".into()))?;
    let psc = spec.security_context.as_ref();
    let mut volumes = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let content = if let Some(cm) = &v.config_map {
            match sources.config_map_data(&cm.name) {
                Some(d) => files(select_items(d, cm.items.as_deref())),
                None if cm.optional.unwrap_or(false) => files(BTreeMap::new()),
                None => {
                    return Err(PlanError::Missing {
                        what: "ConfigMap",
                        name: cm.name.clone(),
                    });
                }
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match sources.secret_data(&name) {
                Some(d) => files(select_items(d, s.items.as_deref())),
                None if s.optional.unwrap_or(false) => files(BTreeMap::new()),
                None => {
                    return Err(PlanError::Missing {
                        what: "Secret",
                        name,
                    });
                }
            }
        } else if v.empty_dir.is_some() {
            VolumeContent::EmptyDir
        } else if let Some(p) = &v.projected {
            projected(pod, p, sources)?
        } else {
            return Err(PlanError::Unsupported(format!(
                "volume {:?}: only configMap, secret, projected and emptyDir",
                v.name
            )));
        };
        volumes.insert(v.name.clone(), content);
    }
    let mut containers = Vec::new();
    for c in &spec.containers {
        let image = c.image.as_deref().unwrap_or_default();
        let mut env: Vec<(String, String)> = service_env.to_vec();
        for (k, v) in container_env(pod, c, sources)? {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        let command: Vec<String> = c
            .command
            .iter()
            .flatten()
            .map(|a| expand(a, &env))
            .collect();
        let args: Vec<String> = c.args.iter().flatten().map(|a| expand(a, &env)).collect();
        let (program, mut argv) = match command.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => (image_name(image).to_string(), Vec::new()),
        };
        argv.extend(args);
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            if !volumes.contains_key(&m.name) {
                return Err(PlanError::Missing {
                    what: "volume",
                    name: m.name.clone(),
                });
            }
            mounts.push(Mount {
                volume: m.name.clone(),
                path: PathBuf::from(&m.mount_path),
                sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        let csc = c.security_context.as_ref();
        containers.push(ContainerPlan {
            name: c.name.clone(),
            program: std::path::Path::new(&program)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or(program),
            args: argv,
            env,
            mounts,
            user: csc
                .and_then(|s| s.run_as_user)
                .or(psc.and_then(|s| s.run_as_user)),
            group: csc
                .and_then(|s| s.run_as_group)
                .or(psc.and_then(|s| s.run_as_group)),
        });
    }
    let restart = match spec.restart_policy.as_deref() {
        Some("Never") => Restart::Never,
        Some("OnFailure") => Restart::OnFailure,
        _ => Restart::Always,
    };
    Ok(PodPlan {
        containers,
        volumes,
        sysctls: psc
            .and_then(|s| s.sysctls.as_ref())
            .map(|v| {
                v.iter()
                    .map(|s| (s.name.clone(), s.value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        fs_group: psc.and_then(|s| s.fs_group),
        restart,
        grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
    })
}

fn files(files: BTreeMap<String, Vec<u8>>) -> VolumeContent {
    VolumeContent::Files { files, token: None }
}

/// A projected volume — what the ServiceAccount admission plugin adds to every pod that
/// does not opt out: a token, the cluster CA from `kube-root-ca.crt`, the namespace.
fn projected(
    pod: &Pod,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    sources: &Sources,
) -> Result<VolumeContent, PlanError> {
    let mut out = BTreeMap::new();
    let mut token = None;
    for src in p.sources.iter().flatten() {
        if let Some(t) = &src.service_account_token {
            token = Some(TokenFile {
                path: t.path.clone(),
                expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                audience: t.audience.clone(),
            });
        } else if let Some(cm) = &src.config_map {
            match sources.config_map_data(&cm.name) {
                Some(d) => out.extend(select_items(d, cm.items.as_deref())),
                None if cm.optional.unwrap_or(false) => {}
                None => {
                    return Err(PlanError::Missing {
                        what: "ConfigMap",
                        name: cm.name.clone(),
                    });
                }
            }
        } else if let Some(s) = &src.secret {
            match sources.secret_data(&s.name) {
                Some(d) => out.extend(select_items(d, s.items.as_deref())),
                None if s.optional.unwrap_or(false) => {}
                None => {
                    return Err(PlanError::Missing {
                        what: "Secret",
                        name: s.name.clone(),
                    });
                }
            }
        } else if let Some(d) = &src.downward_api {
            for item in d.items.iter().flatten() {
                let Some(f) = &item.field_ref else {
                    return Err(PlanError::Unsupported(format!(
                        "downwardAPI item {}: resourceFieldRef",
                        item.path
                    )));
                };
                out.insert(
                    item.path.clone(),
                    field_ref(pod, &f.field_path)?.into_bytes(),
                );
            }
        } else {
            return Err(PlanError::Unsupported(
                "projected source other than serviceAccountToken, configMap, secret, downwardAPI"
                    .into(),
            ));
        }
    }
    Ok(VolumeContent::Files { files: out, token })
}

fn select_items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => data,
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v.clone())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_json::from_value(serde_yaml_value(yaml)).unwrap()
    }

    fn serde_yaml_value(yaml: &str) -> serde_json::Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    const POD: &str = r#"
metadata: { name: p1, namespace: ns, uid: u-1, labels: { app: x } }
spec:
  nodeName: gh-accra-1
  automountServiceAccountToken: false
  securityContext: { runAsUser: 65532, runAsGroup: 65533, fsGroup: 65534,
                     sysctls: [{ name: net.ipv4.ping_group_range, value: "0 2147483647" }] }
  containers:
    - name: probe
      image: ghcr.io/fiberstack/fiber-probe:0.1.0
      command: [fiber-probe]
      args: [--config, /etc/fiberstack/probe.yaml, "--node=$(NODE_NAME)", "$$(NODE_NAME)"]
      env:
        - { name: NODE_NAME, valueFrom: { fieldRef: { fieldPath: spec.nodeName } } }
        - { name: APP, valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } }
        - { name: URL, valueFrom: { secretKeyRef: { name: s, key: url } } }
        - { name: OPT, valueFrom: { secretKeyRef: { name: gone, key: url, optional: true } } }
        - { name: LEVEL, valueFrom: { configMapKeyRef: { name: c, key: level } } }
        - { name: BOTH, value: "$(NODE_NAME)/$(APP)/$(UNKNOWN)" }
      volumeMounts:
        - { name: config, mountPath: /etc/fiberstack }
        - { name: buffer, mountPath: /var/lib/fiberstack/buffer }
  volumes:
    - { name: config, configMap: { name: c } }
    - { name: buffer, emptyDir: {} }
status: { podIP: 10.244.0.7, phase: Running }
"#;

    fn sources_with<'a>(cm: &'a ConfigMap, s: &'a Secret) -> Sources<'a> {
        Sources {
            config_maps: [("c".to_string(), cm)].into(),
            secrets: [("s".to_string(), s)].into(),
        }
    }

    fn cm() -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c"},
            "data": {"level": "info", "probe.yaml": "node: x\n"}
        }))
        .unwrap()
    }

    fn secret() -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "data": {"url": "cmVkaXM6Ly9oOjEvMA=="}
        }))
        .unwrap()
    }

    #[test]
    fn a_probe_pod_reads_as_the_kubelet_would() {
        let (cm, s) = (cm(), secret());
        let plan = plan(&pod(POD), &sources_with(&cm, &s), &[]).unwrap();
        let c = &plan.containers[0];
        assert_eq!(c.program, "fiber-probe");
        assert_eq!(
            c.args,
            [
                "--config",
                "/etc/fiberstack/probe.yaml",
                "--node=gh-accra-1",
                "$(NODE_NAME)"
            ]
        );
        let env: HashMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(env["NODE_NAME"], "gh-accra-1");
        assert_eq!(env["APP"], "x");
        assert_eq!(env["URL"], "redis://h:1/0");
        assert_eq!(env["LEVEL"], "info");
        assert_eq!(env["BOTH"], "gh-accra-1/x/$(UNKNOWN)");
        assert!(!env.contains_key("OPT"));
        assert_eq!((c.user, c.group), (Some(65532), Some(65533)));
        assert_eq!(plan.fs_group, Some(65534));
        assert_eq!(
            plan.sysctls,
            [(
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string()
            )]
        );
        assert_eq!(plan.restart, Restart::Always);
        assert_eq!(plan.grace_seconds, 30);
        assert!(
            matches!(&plan.volumes["config"], VolumeContent::Files { files, token: None } if files["probe.yaml"] == b"node: x\n")
        );
        assert_eq!(plan.volumes["buffer"], VolumeContent::EmptyDir);
        assert_eq!(c.mounts.len(), 2);
    }

    #[test]
    fn a_missing_secret_or_key_is_named() {
        let cm = cm();
        let empty: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"}, "data": {}
        }))
        .unwrap();
        let err = plan(&pod(POD), &sources_with(&cm, &empty), &[]).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingKey {
                what: "Secret",
                name: "s".into(),
                key: "url".into()
            }
        );
        let only_cm = Sources {
            config_maps: [("c".to_string(), &cm)].into(),
            secrets: HashMap::new(),
        };
        let err = plan(&pod(POD), &only_cm, &[]).unwrap_err();
        assert_eq!(err.to_string(), "Secret \"s\" not found");
    }

    #[test]
    fn the_admission_plugins_projected_token_volume_is_read() {
        let (cm, s) = (cm(), secret());
        let root_ca: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "PEM"}
        }))
        .unwrap();
        let text = POD.replace(
            "    - { name: buffer, emptyDir: {} }",
            r#"    - { name: buffer, emptyDir: {} }
    - name: kube-api-access-x
      projected:
        sources:
          - serviceAccountToken: { expirationSeconds: 3607, path: token }
          - configMap: { name: kube-root-ca.crt, items: [{ key: ca.crt, path: ca.crt }] }
          - downwardAPI: { items: [{ path: namespace, fieldRef: { fieldPath: metadata.namespace } }] }"#,
        );
        let mut sources = sources_with(&cm, &s);
        sources
            .config_maps
            .insert("kube-root-ca.crt".into(), &root_ca);
        let plan = plan(
            &pod(&text),
            &sources,
            &[("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into())],
        )
        .unwrap();
        let VolumeContent::Files { files, token } = &plan.volumes["kube-api-access-x"] else {
            panic!("{:?}", plan.volumes);
        };
        assert_eq!(files["ca.crt"], b"PEM");
        assert_eq!(files["namespace"], b"ns");
        assert_eq!(
            token,
            &Some(TokenFile {
                path: "token".into(),
                expiration_seconds: 3607,
                audience: None
            })
        );
        assert!(
            plan.containers[0]
                .env
                .contains(&("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()))
        );
        sources.config_maps.remove("kube-root-ca.crt");
        assert_eq!(
            super::plan(&pod(&text), &sources, &[]).unwrap_err(),
            PlanError::Missing {
                what: "ConfigMap",
                name: "kube-root-ca.crt".into()
            }
        );
    }

    #[test]
    fn images_map_to_binaries() {
        assert_eq!(
            image_name("ghcr.io/fiberstack/fiber-etl:0.1.0"),
            "fiber-etl"
        );
        assert_eq!(image_name("fiber-etl"), "fiber-etl");
        assert_eq!(
            image_name("localhost:5000/x/fiber-etl@sha256:ab"),
            "fiber-etl"
        );
        let ours = |n: &str| n == "fiber-probe";
        assert!(is_ours(&pod(POD), &ours));
        let busybox = POD.replace("ghcr.io/fiberstack/fiber-probe:0.1.0", "busybox");
        assert!(!is_ours(&pod(&busybox), &ours));
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("$(A)-$$(A)-$(B)-$", &env), "1-$(A)-$(B)-$");
        assert_eq!(expand("no refs", &env), "no refs");
        assert_eq!(expand("$(A", &env), "$(A");
    }
}
