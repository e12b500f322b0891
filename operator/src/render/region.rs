//! FiberRegion → ingest Deployment and Service, ETL Deployment, PodDisruptionBudgets, and
//! the Secret holding the region's probe token.

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, Secret, SecretKeySelector, SecretVolumeSource, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
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
/// Where the certificate Secret of `spec.ingest.tls` is mounted in ingest pods.
pub const TLS_DIR: &str = "/var/run/fiberstack-tls";
/// The keys of a kubernetes.io/tls Secret ingest reads.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// The in-cluster URL of `region`'s ingest Service: `https://` when the region serves
/// HTTPS (`spec.ingest.tls`), else `http://`. Its host is the name the certificate must hold.
pub fn ingest_url(region: &FiberRegion) -> String {
    let url = names::ingest_url(&region.name_any(), &region.namespace().unwrap_or_default());
    match &region.spec.ingest.tls {
        Some(_) => url.replacen("http://", "https://", 1),
        None => url,
    }
}

/// The name of the ingest port, in the container and the Service: what it speaks.
fn ingest_port_name(region: &FiberRegion) -> &'static str {
    if region.spec.ingest.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// The kubelet's GET of `path` on the ingest port, over HTTPS when ingest serves it (the
/// kubelet does not verify the certificate).
fn ingest_probe(region: &FiberRegion, path: &str) -> Probe {
    let port = ingest_port_name(region);
    let mut probe = http_probe(path, port);
    if region.spec.ingest.tls.is_some()
        && let Some(get) = probe.http_get.as_mut()
    {
        get.scheme = Some("HTTPS".to_owned());
    }
    probe
}

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
    let mut container = Container {
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
                env(
                    "FIBER_MAX_BACKLOG",
                    spec.ingest.admission.max_backlog.to_string(),
                ),
                env(
                    "FIBER_MAX_BACKLOG_AGE",
                    spec.ingest
                        .admission
                        .max_backlog_age
                        .as_std()
                        .as_secs_f64()
                        .to_string(),
                ),
            ]
            .into_iter()
            .chain(read_api_env(&spec.ingest.read_api))
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some(ingest_port_name(region).to_owned()),
            container_port: INGEST_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(ingest_probe(region, "/readyz")),
        liveness_probe: Some(ingest_probe(region, "/healthz")),
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
    let mut volumes = vec![token, reader_token];
    // HTTPS: the certificate and its key only (a kubernetes.io/tls Secret may hold ca.crt
    // too, which ingest has no use for); a renewal reaches the files, and ingest re-reads them.
    if let Some(tls) = &spec.ingest.tls {
        container.env.get_or_insert_with(Vec::new).extend([
            env("FIBER_TLS_CERT_FILE", format!("{TLS_DIR}/{TLS_CERT_KEY}")),
            env("FIBER_TLS_KEY_FILE", format!("{TLS_DIR}/{TLS_KEY_KEY}")),
        ]);
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "tls".to_owned(),
                mount_path: TLS_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            });
        volumes.push(Volume {
            name: "tls".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                items: Some(
                    [TLS_CERT_KEY, TLS_KEY_KEY]
                        .map(|key| KeyToPath {
                            key: key.to_owned(),
                            path: key.to_owned(),
                            ..Default::default()
                        })
                        .to_vec(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
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
        volumes,
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
                name: Some(ingest_port_name(region).to_owned()),
                port: INGEST_PORT,
                target_port: Some(IntOrString::String(ingest_port_name(region).to_owned())),
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
            env("FIBER_ETL_LINGER_MS", spec.etl.linger_ms.to_string()),
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
    use crate::render::{assert_golden, volume};

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

    /// The values of `names` in the environment of a Deployment's first container.
    fn env_values(deployment: Deployment, names: [&str; 2]) -> [Option<String>; 2] {
        let spec = deployment.spec.unwrap().template.spec.unwrap();
        let env = spec.containers[0].env.clone().unwrap_or_default();
        names.map(|name| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        })
    }

    #[test]
    fn admission_limits_reach_the_ingest_flags() {
        let env = |r: &FiberRegion| {
            env_values(
                build_ingest_deployment(r, &images()),
                ["FIBER_MAX_BACKLOG", "FIBER_MAX_BACKLOG_AGE"],
            )
        };
        // The defaults are ingest's own.
        assert_eq!(env(&region()), [Some("10000".into()), Some("10".into())]);
        let mut r = region();
        r.spec.ingest.admission = crate::crd::Admission {
            max_backlog: 50_000,
            max_backlog_age: "1500ms".parse().unwrap(),
        };
        assert_eq!(env(&r), [Some("50000".into()), Some("1.5".into())]);
    }

    #[test]
    fn etl_settings_reach_the_etl_flags() {
        let env = |r: &FiberRegion| {
            env_values(
                build_etl_deployment(r, &images()),
                ["FIBER_ETL_READ_COUNT", "FIBER_ETL_LINGER_MS"],
            )
        };
        // The defaults are fiber-etl's own.
        assert_eq!(env(&region()), [Some("50".into()), Some("10".into())]);
        let mut r = region();
        r.spec.etl.batch_size = 500;
        r.spec.etl.linger_ms = 0;
        assert_eq!(env(&r), [Some("500".into()), Some("0".into())]);
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

    /// The design's region serving HTTPS with a cert-manager Certificate's Secret.
    fn with_tls(mut r: FiberRegion) -> FiberRegion {
        r.spec.ingest.tls = Some(crate::crd::IngestTls {
            secret_name: "fiberstack-ingest-ghana-tls".to_owned(),
            ca_secret_ref: None,
        });
        r
    }

    #[test]
    fn a_region_with_a_certificate_serves_https_and_its_probes_check_https() {
        let r = with_tls(region());
        let deployment = build_ingest_deployment(&r, &images());
        let service = build_ingest_service(&r);
        assert_golden(
            "region-deployment-tls.yaml",
            std::slice::from_ref(&deployment),
        );
        assert_golden("region-service-tls.yaml", std::slice::from_ref(&service));

        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        let env = |name: &str| {
            container
                .env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            env("FIBER_TLS_CERT_FILE").as_deref(),
            Some("/var/run/fiberstack-tls/tls.crt")
        );
        assert_eq!(
            env("FIBER_TLS_KEY_FILE").as_deref(),
            Some("/var/run/fiberstack-tls/tls.key")
        );
        for probe in [&container.readiness_probe, &container.liveness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
            assert_eq!(get.port, IntOrString::String("https".to_owned()));
        }
        assert_eq!(
            container.ports.as_ref().unwrap()[0].name.as_deref(),
            Some("https")
        );
        let tls = volume(&pod, "tls").secret.unwrap();
        assert_eq!(
            tls.secret_name.as_deref(),
            Some("fiberstack-ingest-ghana-tls")
        );
        let keys: Vec<String> = tls.items.unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, ["tls.crt", "tls.key"]);
        let port = &service.spec.unwrap().ports.unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.target_port.clone()),
            (
                Some("https"),
                INGEST_PORT,
                Some(IntOrString::String("https".to_owned()))
            )
        );
        assert_eq!(
            ingest_url(&r),
            "https://fiberstack-ingest-ghana.fiberstack.svc:8080"
        );
        // Without the setting: plain HTTP, as the design example's golden files say.
        assert_eq!(
            ingest_url(&region()),
            "http://fiberstack-ingest-ghana.fiberstack.svc:8080"
        );
        let plain = build_ingest_deployment(&region(), &images());
        let plain = plain.spec.unwrap().template.spec.unwrap();
        assert!(
            plain.containers[0]
                .env
                .iter()
                .flatten()
                .all(|e| !e.name.starts_with("FIBER_TLS"))
        );
        assert!(plain.volumes.unwrap().iter().all(|v| v.name != "tls"));
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
