//! FiberRegion → ingest Deployment and Service, ETL Deployment, PodDisruptionBudgets, and
//! the Secret holding the region's probe token.

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    Secret, SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    INGEST_PORT, Images, TOKEN_DIR, TOKEN_KEY, http_probe, labels, names, owned_metadata,
    resources, selector, small,
};
use crate::crd::{FiberRegion, SecretKeyRef};

/// Where the region's reader token Secret (optional) is mounted in ingest pods.
pub const READER_TOKEN_DIR: &str = "/var/run/fiberstack-reader";
/// Port of the ETL's /metrics and /healthz.
pub const ETL_METRICS_PORT: i32 = 9090;

fn metadata(region: &FiberRegion, name: String, app: &str, component: &str) -> ObjectMeta {
    owned_metadata(region, name, app, component, &region.name_any())
}

/// The Secret holding the probes' bearer token. The token comes from the caller: it is made
/// once, when the Secret does not exist, and never replaced by a reconcile.
pub fn build_token_secret(region: &FiberRegion, token: &str) -> Secret {
    Secret {
        metadata: metadata(
            region,
            names::token_secret(&region.name_any()),
            "fiberstack",
            "probe-token",
        ),
        type_: Some("Opaque".to_owned()),
        data: Some([(TOKEN_KEY.to_owned(), ByteString(token.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_from_secret(name: &str, source: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: source.name.clone(),
                key: source.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn deployment(
    region: &FiberRegion,
    name: String,
    app: &str,
    component: &str,
    replicas: i32,
    container: Container,
    volumes: Vec<Volume>,
) -> Deployment {
    let mut pod_labels = labels(app, &region.name_any(), component);
    pod_labels.insert("fiberstack.io/region".to_owned(), region.name_any());
    Deployment {
        metadata: metadata(region, name, app, component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(app, &region.name_any())),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(super::restricted_pod()),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The dashboard read API's settings, only where they differ from ingest's defaults (so a
/// region that sets nothing renders as before).
fn read_api_env(read: &crate::crd::ReadApi) -> Vec<EnvVar> {
    let mut vars = vec![];
    if !read.cors_origins.is_empty() {
        vars.push(env("FIBER_CORS_ORIGINS", read.cors_origins.join(",")));
    }
    if read.requests_per_minute != crate::crd::ReadApi::default().requests_per_minute {
        vars.push(env(
            "FIBER_READ_RATE_PER_MINUTE",
            read.requests_per_minute.to_string(),
        ));
    }
    vars
}

pub fn build_ingest_deployment(region: &FiberRegion, images: &Images) -> Deployment {
    let spec = &region.spec;
    let container = Container {
        name: "ingest".to_owned(),
        image: Some(images.ingest.clone()),
        image_pull_policy: Some(images.pull_policy.clone()),
        command: Some(vec!["fiber-ingest".to_owned()]),
        env: Some(
            vec![
                env("FIBER_LISTEN", format!("0.0.0.0:{INGEST_PORT}")),
                env("FIBER_REGION", region.name_any()),
                env_from_secret("REDIS_URL", &spec.redis.url_secret_ref),
                env_from_secret("DATABASE_URL", &spec.database.url_secret_ref),
                env("FIBER_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_KEY}")),
                env(
                    "FIBER_READER_TOKEN_FILE",
                    format!("{READER_TOKEN_DIR}/{TOKEN_KEY}"),
                ),
                env(
                    "FIBER_RATE_PER_NODE",
                    spec.ingest.rate_limit.per_probe_per_second.to_string(),
                ),
                env("FIBER_RATE_BURST", spec.ingest.rate_limit.burst.to_string()),
            ]
            .into_iter()
            .chain(read_api_env(&spec.ingest.read_api))
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: INGEST_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", "http")),
        liveness_probe: Some(http_probe("/healthz", "http")),
        resources: Some(resources(
            spec.ingest.resources.as_ref(),
            small("50m", "64Mi", "256Mi"),
        )),
        security_context: Some(super::restricted_container()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "token".to_owned(),
                mount_path: TOKEN_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "reader-token".to_owned(),
                mount_path: READER_TOKEN_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let token = Volume {
        name: "token".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::token_secret(&region.name_any())),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The read API's credential is the user's to make (and to rotate: `new,old` under the
    // key `token`); until the Secret exists the read API stays closed.
    let reader_token = Volume {
        name: "reader-token".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::reader_token_secret(&region.name_any())),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut container = images.with_telemetry(container);
    if images.ingest_service_account.is_some() {
        container
            .env
            .get_or_insert_with(Vec::new)
            .push(env("FIBER_TOKEN_AUDIENCE", super::PROBE_TOKEN_AUDIENCE));
    }
    let mut deployment = deployment(
        region,
        names::ingest(&region.name_any()),
        "fiber-ingest",
        "ingest",
        spec.ingest.replicas,
        container,
        vec![token, reader_token],
    );
    // Ingest verifies the probe pods' tokens with TokenReviews: it needs its own API
    // credentials, those of a ServiceAccount allowed that and nothing else.
    if let Some(account) = &images.ingest_service_account {
        let pod = deployment
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .expect("the deployment has a pod spec");
        pod.service_account_name = Some(account.clone());
        pod.automount_service_account_token = Some(true);
    }
    deployment
}

pub fn build_ingest_service(region: &FiberRegion) -> Service {
    Service {
        metadata: metadata(
            region,
            names::ingest(&region.name_any()),
            "fiber-ingest",
            "ingest",
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector("fiber-ingest", &region.name_any())),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: INGEST_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn build_etl_deployment(region: &FiberRegion, images: &Images) -> Deployment {
    let spec = &region.spec;
    let container = Container {
        name: "etl".to_owned(),
        image: Some(images.etl.clone()),
        image_pull_policy: Some(images.pull_policy.clone()),
        command: Some(vec!["fiber-etl".to_owned()]),
        args: Some(vec!["run".to_owned()]),
        env: Some(vec![
            env("FIBER_REGION", region.name_any()),
            env_from_secret("REDIS_URL", &spec.redis.url_secret_ref),
            env_from_secret("DATABASE_URL", &spec.database.url_secret_ref),
            // Each pod is its own consumer of the group; its name survives restarts of the
            // container, so pending entries are picked up again by the same consumer.
            EnvVar {
                name: "FIBER_CONSUMER".to_owned(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            env("FIBER_ETL_READ_COUNT", spec.etl.batch_size.to_string()),
            env(
                "FIBER_METRICS_LISTEN",
                format!("0.0.0.0:{ETL_METRICS_PORT}"),
            ),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: ETL_METRICS_PORT,
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", "metrics")),
        resources: Some(resources(
            spec.etl.resources.as_ref(),
            small("50m", "64Mi", "256Mi"),
        )),
        security_context: Some(super::restricted_container()),
        ..Default::default()
    };
    deployment(
        region,
        names::etl(&region.name_any()),
        "fiber-etl",
        "etl",
        spec.etl.replicas,
        images.with_telemetry(container),
        vec![],
    )
}

/// At most one pod of the component down at a time during voluntary disruptions.
pub fn build_pdb(region: &FiberRegion, app: &str, component: &str) -> PodDisruptionBudget {
    let name = match component {
        "ingest" => names::ingest(&region.name_any()),
        _ => names::etl(&region.name_any()),
    };
    PodDisruptionBudget {
        metadata: metadata(region, name, app, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(app, &region.name_any())),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{images, probe, region};
    use crate::render::assert_golden;

    #[test]
    fn an_otlp_endpoint_reaches_every_workload_and_nothing_else_changes() {
        let env_of = |c: &k8s_openapi::api::core::v1::PodSpec| {
            c.containers[0]
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|e| e.value.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let (r, p) = (region(), probe());
        let with = Images {
            otlp_endpoint: Some("http://collector:4318".to_owned()),
            ..images()
        };
        let specs = |i: &Images| {
            [
                build_ingest_deployment(&r, i)
                    .spec
                    .unwrap()
                    .template
                    .spec
                    .unwrap(),
                build_etl_deployment(&r, i)
                    .spec
                    .unwrap()
                    .template
                    .spec
                    .unwrap(),
                crate::render::probe::build_daemonset(&p, &r, i)
                    .unwrap()
                    .spec
                    .unwrap()
                    .template
                    .spec
                    .unwrap(),
            ]
        };
        for (plain, traced) in specs(&images()).iter().zip(specs(&with).iter()) {
            assert!(env_of(plain).is_empty());
            assert_eq!(env_of(traced), ["http://collector:4318"]);
            let mut stripped = traced.clone();
            stripped.containers[0]
                .env
                .as_mut()
                .unwrap()
                .retain(|e| e.name != "OTEL_EXPORTER_OTLP_ENDPOINT");
            assert_eq!(&stripped, plain);
        }
    }

    #[test]
    fn renders_the_design_example() {
        let r = region();
        assert_golden(
            "region-deployments.yaml",
            &[
                build_ingest_deployment(&r, &images()),
                build_etl_deployment(&r, &images()),
            ],
        );
        assert_golden("region-service.yaml", &[build_ingest_service(&r)]);
        assert_golden(
            "region-pdbs.yaml",
            &[
                build_pdb(&r, "fiber-ingest", "ingest"),
                build_pdb(&r, "fiber-etl", "etl"),
            ],
        );
        assert_golden(
            "region-token-secret.yaml",
            &[build_token_secret(&r, "not-a-real-token")],
        );
    }

    #[test]
    fn the_read_api_settings_reach_ingest_only_when_set() {
        let env_of = |region: &FiberRegion| -> Vec<(String, String)> {
            build_ingest_deployment(region, &crate::fixtures::images())
                .spec
                .and_then(|s| s.template.spec)
                .map(|p| p.containers[0].env.clone().unwrap_or_default())
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.name.starts_with("FIBER_CORS") || e.name.starts_with("FIBER_READ_"))
                .map(|e| (e.name, e.value.unwrap_or_default()))
                .collect()
        };
        let mut region = crate::fixtures::region();
        assert!(env_of(&region).is_empty(), "defaults render nothing new");
        region.spec.ingest.read_api.cors_origins =
            vec!["https://noc.example".into(), "http://localhost:3000".into()];
        region.spec.ingest.read_api.requests_per_minute = 120;
        assert_eq!(
            env_of(&region),
            [
                (
                    "FIBER_CORS_ORIGINS".to_owned(),
                    "https://noc.example,http://localhost:3000".to_owned()
                ),
                ("FIBER_READ_RATE_PER_MINUTE".to_owned(), "120".to_owned())
            ]
        );
    }

    #[test]
    fn env_comes_from_the_referenced_secrets() {
        let d = build_ingest_deployment(&region(), &images());
        let env = d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let redis = env.iter().find(|e| e.name == "REDIS_URL").unwrap();
        let key = redis
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str()),
            ("fiberstack-redis", "url")
        );
        assert!(
            redis.value.is_none(),
            "the URL must not be copied into the spec"
        );
    }
}
