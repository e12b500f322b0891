//! Build step of the pipelines: pure functions from a custom resource (and what it points
//! to) to the Kubernetes objects that realize it. No client, no clock, no randomness, so each
//! is tested against golden YAML.

pub mod probe;
pub mod region;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, ResourceRequirements, SeccompProfile};
use k8s_openapi::api::core::v1::{HTTPGetAction, PodSecurityContext, Probe, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::Resources;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "fiberstack-operator";
/// Label on everything the operator creates; owned-object watches select on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "fiberstack-operator");
/// Where the region's probe token is mounted in probe and ingest pods.
pub const TOKEN_DIR: &str = "/var/run/fiberstack";
/// The key of the token in the region's token Secret.
pub const TOKEN_KEY: &str = "token";
/// The audience of the probe pods' projected ServiceAccount tokens; fiber-ingest's
/// `--token-audience` takes this one (`fiber_ingest::auth::DEFAULT_AUDIENCE`).
pub const PROBE_TOKEN_AUDIENCE: &str = "fiberstack-ingest";
/// Lifetime the probe pods' ServiceAccount tokens are asked for; the kubelet renews a token
/// at 80 % of it, and the probe reads the file at every send.
pub const PROBE_TOKEN_SECONDS: i64 = 3600;
/// The ingest service's port.
pub const INGEST_PORT: i32 = 8080;
/// User and group the pods run as (distroless "nonroot").
pub const NONROOT_ID: i64 = 65532;

/// What the rendered workloads run with, from the operator's flags: images, pull policy and
/// where their spans go.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    pub ingest: String,
    pub etl: String,
    pub probe: String,
    /// Always, IfNotPresent or Never.
    pub pull_policy: String,
    /// OTLP/HTTP endpoint given to every ingest, ETL and probe container
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`); none: they export no spans.
    pub otlp_endpoint: Option<String>,
    /// The ServiceAccount ingest pods run as, allowed to create TokenReviews (the chart makes
    /// it). Set: probe pods present their own projected ServiceAccount token (audience
    /// [`PROBE_TOKEN_AUDIENCE`]), which binds them to their node and FiberProbe, and the
    /// region's static token is left to probes outside the cluster. None: probe pods mount
    /// the region's token, as every probe did before.
    pub ingest_service_account: Option<String>,
}

impl Images {
    /// `container` with the environment that turns on its span export, if configured.
    pub fn with_telemetry(
        &self,
        mut container: k8s_openapi::api::core::v1::Container,
    ) -> k8s_openapi::api::core::v1::Container {
        if let Some(endpoint) = &self.otlp_endpoint {
            container
                .env
                .get_or_insert_with(Vec::new)
                .push(k8s_openapi::api::core::v1::EnvVar {
                    name: "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                    value: Some(endpoint.clone()),
                    ..Default::default()
                });
        }
        container
    }
}

/// Names of the objects a region or probe owns, in one place so controllers, renderers and
/// tests agree.
pub mod names {
    pub fn ingest(region: &str) -> String {
        format!("fiberstack-ingest-{region}")
    }
    pub fn etl(region: &str) -> String {
        format!("fiberstack-etl-{region}")
    }
    pub fn token_secret(region: &str) -> String {
        format!("fiberstack-probe-token-{region}")
    }
    /// The read API's token Secret (key `token`), made by the user, not the operator.
    pub fn reader_token_secret(region: &str) -> String {
        format!("fiberstack-reader-token-{region}")
    }
    pub fn probe(probe: &str) -> String {
        format!("fiberstack-probe-{probe}")
    }
    /// The in-cluster URL of a region's ingest Service.
    pub fn ingest_url(region: &str, namespace: &str) -> String {
        format!(
            "http://{}.{namespace}.svc:{}",
            ingest(region),
            super::INGEST_PORT
        )
    }
}

/// Metadata of an object `owner` renders: in its namespace, owned by it (garbage-collected
/// with it), labelled with the app, the owner, the component and the region.
fn owned_metadata<K>(
    owner: &K,
    name: String,
    app: &str,
    component: &str,
    region: &str,
) -> ObjectMeta
where
    K: Resource<DynamicType = ()>,
{
    let mut labels = labels(app, &owner.name_any(), component);
    labels.insert("fiberstack.io/region".to_owned(), region.to_owned());
    ObjectMeta {
        name: Some(name),
        namespace: owner.namespace(),
        labels: Some(labels),
        owner_references: owner.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

fn labels(name: &str, instance: &str, component: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", name),
        ("app.kubernetes.io/instance", instance),
        ("app.kubernetes.io/component", component),
        ("app.kubernetes.io/part-of", "fiberstack"),
        MANAGED_BY,
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn selector(name: &str, instance: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", name),
        ("app.kubernetes.io/instance", instance),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn quantities(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

fn resources(given: Option<&Resources>, default: Resources) -> ResourceRequirements {
    let r = given.unwrap_or(&default);
    ResourceRequirements {
        requests: quantities(&r.requests),
        limits: quantities(&r.limits),
        ..Default::default()
    }
}

fn small(cpu: &str, memory: &str, memory_limit: &str) -> Resources {
    Resources {
        requests: [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        limits: [("memory".to_owned(), memory_limit.to_owned())].into(),
    }
}

/// Non-root, no privilege escalation, read-only root, no capabilities.
/// An HTTP GET probe of the container's named port, every 10 s.
fn http_probe(path: &str, port: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT_ID),
        run_as_group: Some(NONROOT_ID),
        fs_group: Some(NONROOT_ID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The volume `name` of a rendered pod, for the render tests.
#[cfg(test)]
pub(crate) fn volume(
    pod: &k8s_openapi::api::core::v1::PodSpec,
    name: &str,
) -> k8s_openapi::api::core::v1::Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no volume {name} in the pod"))
}

/// Golden-file comparison for the render tests: `UPDATE_GOLDEN=1` rewrites the files.
#[cfg(test)]
pub(crate) fn assert_golden<T: serde::Serialize>(name: &str, objects: &[T]) {
    let actual: String = objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        expected == actual,
        "{} differs from the rendered objects (UPDATE_GOLDEN=1 rewrites it):\n{actual}",
        path.display()
    );
}
