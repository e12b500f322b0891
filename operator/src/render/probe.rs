//! FiberProbe → the probe's ConfigMap (its `ProbeConfig`) and DaemonSet.

use std::collections::BTreeMap;

use fiberstack_model::{BufferConfig, Duration, IngestConfig, ProbeConfig, Target};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, KeyToPath, ObjectFieldSelector, PodSpec, PodTemplateSpec, ProjectedVolumeSource,
    SecretVolumeSource, ServiceAccountTokenProjection, Sysctl, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use super::{
    Images, TOKEN_DIR, TOKEN_KEY, labels, names, owned_metadata, resources, selector, small,
};
use crate::crd::{FiberProbe, FiberRegion};

/// Where the ConfigMap is mounted and its key.
pub const CONFIG_DIR: &str = "/etc/fiberstack";
pub const CONFIG_KEY: &str = "probe.yaml";
/// Where the authority of the region's ingest certificate is mounted (`spec.ingest.tls`),
/// and its file: the probe's `ingest.caFile`.
pub const CA_DIR: &str = "/var/run/fiberstack-ca";
pub const CA_FILE: &str = "ca.crt";
/// The probe's disk buffer.
pub const BUFFER_DIR: &str = "/var/lib/fiberstack/buffer";
/// The probe's own /metrics.
pub const METRICS_PORT: u16 = 9090;
/// Stands in for the node in the rendered file; every pod sets `NODE_NAME`, which overrides it.
pub const NODE_PLACEHOLDER: &str = "${NODE_NAME}";
/// Lets every group open unprivileged ICMP datagram sockets, so no NET_RAW is needed.
pub const PING_GROUP_RANGE: &str = "0 2147483647";

/// `namespace/name`, as the samples carry it.
pub fn probe_key(probe: &FiberProbe) -> String {
    format!(
        "{}/{}",
        probe.namespace().unwrap_or_default(),
        probe.name_any()
    )
}

/// The ingest services a probe of `region` sends to, in the order it tries them (seed 001's
/// fallback): its own region's first; then, only when probe pods present their own
/// ServiceAccount token (`images.ingest_service_account`), which proves their region to any
/// region's ingest, the other regions of `regions` (the FiberRegions in the probe's
/// namespace). They follow in name order starting after the probe's own region, so that
/// probes of different regions do not all fall back onto the same one. A static region
/// token is good at its own region's ingest only: without pod identity the list is that one.
///
/// A fallback speaks what the own region speaks: a probe whose region serves HTTPS never
/// sends its token in the clear to another, and one without the region's authority
/// (`spec.ingest.tls`) could not verify another's HTTPS.
pub fn ingest_urls(region: &FiberRegion, regions: &[FiberRegion], images: &Images) -> Vec<String> {
    let own = region.name_any();
    let mut urls = vec![super::region::ingest_url(region)];
    if images.ingest_service_account.is_none() {
        return urls;
    }
    let https = region.spec.ingest.tls.is_some();
    let mut others: Vec<&FiberRegion> = regions
        .iter()
        .filter(|r| r.name_any() != own && r.spec.ingest.tls.is_some() == https)
        .collect();
    others.sort_by_key(|r| r.name_any());
    others.dedup_by_key(|r| r.name_any());
    let after = others.partition_point(|r| r.name_any() < own);
    others.rotate_left(after);
    urls.extend(others.iter().map(|r| super::region::ingest_url(r)));
    urls
}

/// The configuration `fiber-probe` reads, with the node left to `NODE_NAME`, sending to its
/// own region's ingest only (what validation looks at; [`build_configmap`] adds fallbacks).
pub fn probe_config(probe: &FiberProbe, region: &FiberRegion) -> ProbeConfig {
    probe_config_sending_to(probe, region, vec![super::region::ingest_url(region)])
}

/// [`probe_config`], sending to `urls` in order.
pub fn probe_config_sending_to(
    probe: &FiberProbe,
    region: &FiberRegion,
    urls: Vec<String>,
) -> ProbeConfig {
    ProbeConfig {
        node: NODE_PLACEHOLDER.to_owned(),
        probe: probe_key(probe),
        region: region.name_any(),
        country: region.spec.country.clone(),
        interval: probe.spec.interval,
        timeout: probe.spec.timeout,
        ingest: IngestConfig {
            urls,
            token_file: Some(format!("{TOKEN_DIR}/{TOKEN_KEY}").into()),
            ca_file: region
                .spec
                .ingest
                .tls
                .as_ref()
                .map(|_| format!("{CA_DIR}/{CA_FILE}").into()),
            batch_max_samples: 500,
            batch_max_delay: Duration::from_secs(5),
        },
        buffer: BufferConfig {
            dir: BUFFER_DIR.into(),
            ..BufferConfig::default()
        },
        metrics_listen: Some(([0, 0, 0, 0], METRICS_PORT).into()),
        // A target's thresholds and objectives are the operator's to judge: left out, so
        // that changing one leaves the probe's configuration as it was.
        targets: probe
            .spec
            .targets
            .iter()
            .map(|t| Target {
                thresholds: None,
                slo: None,
                ..t.clone()
            })
            .collect(),
    }
}

/// Nodes of the region that the probe also selects; `None` when the two disagree on a key
/// (no node can match both), which validation reports.
pub fn node_selector(probe: &FiberProbe, region: &FiberRegion) -> Option<BTreeMap<String, String>> {
    let mut merged = region.spec.node_selector.clone();
    for (key, value) in &probe.spec.node_selector {
        match merged.get(key) {
            Some(existing) if existing != value => return None,
            _ => {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    Some(merged)
}

fn metadata(probe: &FiberProbe) -> ObjectMeta {
    let name = names::probe(&probe.name_any());
    owned_metadata(probe, name, "fiber-probe", "probe", &probe.spec.region)
}

/// The probe's ConfigMap; `regions` are the FiberRegions of its namespace, the fallbacks of
/// [`ingest_urls`].
pub fn build_configmap(
    probe: &FiberProbe,
    region: &FiberRegion,
    regions: &[FiberRegion],
    images: &Images,
) -> ConfigMap {
    let config = probe_config_sending_to(probe, region, ingest_urls(region, regions, images));
    ConfigMap {
        metadata: metadata(probe),
        data: Some([(CONFIG_KEY.to_owned(), config.to_yaml())].into()),
        ..Default::default()
    }
}

/// The DaemonSet; its pod template changes only when pods must be replaced (image, nodes,
/// region), never for a change of targets or timing, which the probe reloads from the file.
pub fn build_daemonset(
    probe: &FiberProbe,
    region: &FiberRegion,
    images: &Images,
) -> Option<DaemonSet> {
    let name = probe.name_any();
    let pod_labels = {
        let mut l = labels("fiber-probe", &name, "probe");
        l.insert("fiberstack.io/region".to_owned(), probe.spec.region.clone());
        l
    };
    let container = Container {
        name: "probe".to_owned(),
        image: Some(images.probe.clone()),
        image_pull_policy: Some(images.pull_policy.clone()),
        command: Some(vec!["fiber-probe".to_owned()]),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        env: Some(vec![EnvVar {
            name: "NODE_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: i32::from(METRICS_PORT),
            ..Default::default()
        }]),
        // /healthz is served by the probe's single-threaded runtime: a wedged runtime stops
        // answering and the kubelet restarts the container (the disk buffer keeps its samples).
        liveness_probe: Some(super::http_probe("/healthz", "metrics")),
        resources: Some(resources(None, small("10m", "32Mi", "128Mi"))),
        security_context: Some(super::restricted_container()),
        volume_mounts: Some(
            [
                mount("config", CONFIG_DIR),
                mount("token", TOKEN_DIR),
                VolumeMount {
                    name: "buffer".to_owned(),
                    mount_path: BUFFER_DIR.to_owned(),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(ca_volume(region).map(|_| mount("ingest-ca", CA_DIR)))
            .collect(),
        ),
        ..Default::default()
    };
    let mut security = super::restricted_pod();
    security.sysctls = Some(vec![Sysctl {
        name: "net.ipv4.ping_group_range".to_owned(),
        value: PING_GROUP_RANGE.to_owned(),
    }]);
    Some(DaemonSet {
        metadata: metadata(probe),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector("fiber-probe", &name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_selector: Some(node_selector(probe, region)?),
                    automount_service_account_token: Some(false),
                    security_context: Some(security),
                    containers: vec![images.with_telemetry(container)],
                    termination_grace_period_seconds: Some(30),
                    volumes: Some(
                        [
                            Volume {
                                name: "config".to_owned(),
                                config_map: Some(ConfigMapVolumeSource {
                                    name: names::probe(&name),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                            token_volume(region, images),
                            Volume {
                                name: "buffer".to_owned(),
                                empty_dir: Some(EmptyDirVolumeSource {
                                    // The buffer's own cap is 64Mi; the volume leaves headroom.
                                    size_limit: Some(Quantity("128Mi".to_owned())),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        ]
                        .into_iter()
                        .chain(ca_volume(region))
                        .collect(),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The probe's bearer token, at `TOKEN_DIR/TOKEN_KEY` either way: its pod's own
/// ServiceAccount token for ingest's audience (renewed by the kubelet; ingest takes the node
/// and the FiberProbe from it), or, when ingest cannot review tokens, the region's token.
fn token_volume(region: &FiberRegion, images: &Images) -> Volume {
    if images.ingest_service_account.is_some() {
        Volume {
            name: "token".to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(super::PROBE_TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(super::PROBE_TOKEN_SECONDS),
                        path: TOKEN_KEY.to_owned(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    } else {
        Volume {
            name: "token".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names::token_secret(&region.name_any())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The authority of the region's ingest certificate, when it serves HTTPS: that one key of
/// its Secret (`ca.crt` of the certificate's own Secret by default), never the private key
/// beside it, at `CA_DIR/CA_FILE`.
fn ca_volume(region: &FiberRegion) -> Option<Volume> {
    let ca = region.spec.ingest.tls.as_ref()?.ca();
    Some(Volume {
        name: "ingest-ca".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(ca.name),
            items: Some(vec![KeyToPath {
                key: ca.key,
                path: CA_FILE.to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::render::{assert_golden, volume};

    /// The pod spec of the probe's rendered DaemonSet.
    fn pod(p: &FiberProbe, r: &FiberRegion, images: &Images) -> PodSpec {
        build_daemonset(p, r, images)
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn renders_the_design_example() {
        let (p, r) = (probe(), region());
        assert_golden(
            "probe-configmap.yaml",
            &[build_configmap(&p, &r, &all_regions(), &images())],
        );
        assert_golden(
            "probe-daemonset.yaml",
            &[build_daemonset(&p, &r, &images()).unwrap()],
        );
    }

    #[test]
    fn rendered_config_is_a_valid_probe_config_once_the_node_is_set() {
        let yaml = build_configmap(&probe(), &region(), &all_regions(), &images())
            .data
            .unwrap()[CONFIG_KEY]
            .clone();
        let config = ProbeConfig::from_yaml(&yaml).unwrap();
        assert_eq!(config.probe, "fiberstack/accra-edge");
        assert_eq!(
            config.ingest.urls,
            [
                "http://fiberstack-ingest-ghana.fiberstack.svc:8080",
                "http://fiberstack-ingest-kenya.fiberstack.svc:8080",
                "http://fiberstack-ingest-nigeria.fiberstack.svc:8080",
            ]
        );
        assert_eq!(config.targets.len(), 4);
    }

    #[test]
    fn without_token_review_the_probe_mounts_the_region_token() {
        let (p, r) = (probe(), region());
        let token = |images: &Images| volume(&pod(&p, &r, images), "token");
        let projected = token(&images()).projected.unwrap().sources.unwrap();
        let sa = projected[0].service_account_token.as_ref().unwrap();
        assert_eq!(sa.audience.as_deref(), Some("fiberstack-ingest"));
        assert_eq!(sa.path, TOKEN_KEY);
        let static_token = token(&Images {
            ingest_service_account: None,
            ..images()
        });
        assert_eq!(
            static_token.secret.unwrap().secret_name.as_deref(),
            Some("fiberstack-probe-token-ghana")
        );
        // The file the probe reads is the same either way: the ConfigMap does not change.
        assert_eq!(
            probe_config(&p, &r).ingest.token_file.unwrap(),
            std::path::PathBuf::from(format!("{TOKEN_DIR}/{TOKEN_KEY}"))
        );
    }

    #[test]
    fn selectors_are_anded_and_a_conflict_is_refused() {
        let (mut p, r) = (probe(), region());
        let merged = node_selector(&p, &r).unwrap();
        assert_eq!(merged["topology.kubernetes.io/region"], "gh");
        assert_eq!(merged["fiberstack.io/edge"], "true");
        p.spec
            .node_selector
            .insert("topology.kubernetes.io/region".into(), "ng".into());
        assert_eq!(node_selector(&p, &r), None);
        assert!(build_daemonset(&p, &r, &images()).is_none());
    }

    #[test]
    fn a_config_only_change_keeps_the_pod_template() {
        let (p, r) = (probe(), region());
        let mut changed = p.clone();
        changed.spec.targets.pop();
        changed.spec.interval = Duration::from_secs(30);
        let before = build_daemonset(&p, &r, &images()).unwrap();
        let after = build_daemonset(&changed, &r, &images()).unwrap();
        assert_eq!(before, after);
        let configmap = |p: &FiberProbe| build_configmap(p, &r, &all_regions(), &images());
        assert_ne!(configmap(&p), configmap(&changed));
        let mut moved = p.clone();
        moved.spec.node_selector.insert("disk".into(), "ssd".into());
        assert_ne!(before, build_daemonset(&moved, &r, &images()).unwrap());
    }

    #[test]
    fn a_targets_thresholds_stay_out_of_the_probes_configuration() {
        let (p, r) = (probe(), region());
        let mut stricter = p.clone();
        stricter.spec.targets[0].thresholds = Some(fiberstack_model::TargetThresholds {
            latency_p95_ms: Some(20.0),
            ..Default::default()
        });
        let configmap = |p: &FiberProbe| build_configmap(p, &r, &all_regions(), &images());
        assert_eq!(configmap(&p), configmap(&stricter));
        assert_eq!(probe_config(&stricter, &r).targets[0].thresholds, None);
        stricter.spec.targets[0].slo = Some(fiberstack_model::Slo {
            availability_pct: 99.0,
            latency: None,
            window_days: 7,
        });
        assert_eq!(configmap(&p), configmap(&stricter));
        assert_eq!(probe_config(&stricter, &r).targets[0].slo, None);
    }

    fn with_tls(mut r: FiberRegion) -> FiberRegion {
        let name = r.name_any();
        r.spec.ingest.tls = Some(crate::crd::IngestTls {
            secret_name: format!("fiberstack-ingest-{name}-tls"),
            ca_secret_ref: None,
        });
        r
    }

    #[test]
    fn a_region_serving_https_gives_its_probes_https_urls_and_its_authority() {
        let (p, r) = (probe(), with_tls(region()));
        let regions = vec![
            with_tls(region_named("nigeria")),
            r.clone(),
            region_named("kenya"),
        ];
        let configmap = build_configmap(&p, &r, &regions, &images());
        let daemonset = build_daemonset(&p, &r, &images()).unwrap();
        assert_golden("probe-configmap-tls.yaml", std::slice::from_ref(&configmap));
        assert_golden("probe-daemonset-tls.yaml", std::slice::from_ref(&daemonset));

        let config = ProbeConfig::from_yaml(&configmap.data.unwrap()[CONFIG_KEY]).unwrap();
        // Kenya serves plain HTTP: the probe's token never goes there in the clear.
        assert_eq!(
            config.ingest.urls,
            [
                "https://fiberstack-ingest-ghana.fiberstack.svc:8080",
                "https://fiberstack-ingest-nigeria.fiberstack.svc:8080",
            ]
        );
        assert_eq!(
            config.ingest.ca_file,
            Some(std::path::PathBuf::from("/var/run/fiberstack-ca/ca.crt"))
        );
        let rendered = daemonset.spec.unwrap().template.spec.unwrap();
        let ca = volume(&rendered, "ingest-ca").secret.unwrap();
        assert_eq!(
            ca.secret_name.as_deref(),
            Some("fiberstack-ingest-ghana-tls")
        );
        // Only the authority: the certificate's private key stays out of probe pods.
        let items = ca.items.unwrap();
        assert_eq!(
            items
                .iter()
                .map(|i| (i.key.as_str(), i.path.as_str()))
                .collect::<Vec<_>>(),
            [("ca.crt", "ca.crt")]
        );
        let mount = rendered.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "ingest-ca")
            .unwrap();
        assert_eq!(mount.mount_path, CA_DIR);

        // An authority kept elsewhere (a bundle for every region, say) is the one mounted.
        let mut bundled = r.clone();
        bundled.spec.ingest.tls.as_mut().unwrap().ca_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "fiberstack-ca-bundle".to_owned(),
            key: "bundle.pem".to_owned(),
        });
        let ca = volume(&pod(&p, &bundled, &images()), "ingest-ca")
            .secret
            .unwrap();
        assert_eq!(ca.secret_name.as_deref(), Some("fiberstack-ca-bundle"));
        assert_eq!(ca.items.unwrap()[0].key, "bundle.pem");

        // A plain region falls back to plain regions only (it has no authority to check
        // another's HTTPS with), and its probes mount no authority.
        let plain = region();
        assert_eq!(
            ingest_urls(&plain, &regions, &images()),
            [
                "http://fiberstack-ingest-ghana.fiberstack.svc:8080",
                "http://fiberstack-ingest-kenya.fiberstack.svc:8080",
            ]
        );
        assert_eq!(probe_config(&p, &plain).ingest.ca_file, None);
        let volumes = pod(&p, &plain, &images()).volumes.unwrap();
        assert!(volumes.iter().all(|v| v.name != "ingest-ca"));
    }

    /// The regions of the design's namespace: the probe's own among them.
    fn all_regions() -> Vec<FiberRegion> {
        ["nigeria", "ghana", "kenya"].map(region_named).to_vec()
    }

    fn region_named(name: &str) -> FiberRegion {
        let mut r = region();
        r.metadata.name = Some(name.to_owned());
        r
    }

    #[test]
    fn the_ingest_list_is_the_own_region_then_the_others_after_it_in_name_order() {
        let url = |r: &str| format!("http://fiberstack-ingest-{r}.fiberstack.svc:8080");
        let urls =
            |own: &str, images: &Images| ingest_urls(&region_named(own), &all_regions(), images);
        // Each region starts with itself and goes on after itself, wrapping around: the
        // probes of different regions do not all fall back onto one.
        assert_eq!(
            urls("ghana", &images()),
            [url("ghana"), url("kenya"), url("nigeria")]
        );
        assert_eq!(
            urls("kenya", &images()),
            [url("kenya"), url("nigeria"), url("ghana")]
        );
        assert_eq!(
            urls("nigeria", &images()),
            [url("nigeria"), url("ghana"), url("kenya")]
        );
        // A region alone, or listed twice, falls back nowhere and repeats nothing.
        assert_eq!(
            ingest_urls(&region(), &[region_named("ghana")], &images()),
            [url("ghana")]
        );
        assert_eq!(
            ingest_urls(
                &region(),
                &["kenya", "ghana", "kenya"].map(region_named),
                &images()
            ),
            [url("ghana"), url("kenya")]
        );
        // Probes with the static region token: another region's ingest would refuse it.
        let static_token = Images {
            ingest_service_account: None,
            ..images()
        };
        assert_eq!(urls("kenya", &static_token), [url("kenya")]);
        let yaml = build_configmap(&probe(), &region(), &all_regions(), &static_token)
            .data
            .unwrap()[CONFIG_KEY]
            .clone();
        assert_eq!(
            ProbeConfig::from_yaml(&yaml).unwrap().ingest.urls,
            [url("ghana")]
        );
    }
}
