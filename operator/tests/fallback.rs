//! With pod identity on (the chart's `ingest.probeIdentity`), a probe's ConfigMap lists its
//! own region's ingest first and then the namespace's other regions, as the controller finds
//! them in its region cache: a region added later joins every probe's list, a region
//! deleted leaves it — against the API server, without restarting the operator.

mod common;

use anyhow::Result;
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{TestNamespace, wait_for};
use fiberstack_model::ProbeConfig;
use fiberstack_operator::crd::{FiberProbe, FiberRegion};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::DeleteParams;

#[tokio::test]
async fn a_probes_fallback_list_follows_the_namespaces_regions() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "op-fallback").await?;
    let operator = Operator::start_with(&client, &ns.name, None, |s| {
        s.images.ingest_service_account = Some("fiberstack-ingest".to_owned());
    });
    let result = async {
        let regions: Api<FiberRegion> = Api::namespaced(client.clone(), &ns.name);
        let probes: Api<FiberProbe> = Api::namespaced(client.clone(), &ns.name);
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        let url = |region: &str| format!("http://fiberstack-ingest-{region}.{}.svc:8080", ns.name);
        let urls_of = |probe: &'static str| {
            let configmaps = configmaps.clone();
            async move {
                let Some(cm) = configmaps
                    .get_opt(&format!("fiberstack-probe-{probe}"))
                    .await?
                else {
                    return Ok(Vec::new());
                };
                let text = cm.data.unwrap_or_default().remove("probe.yaml");
                Ok::<_, anyhow::Error>(
                    ProbeConfig::from_yaml(&text.unwrap_or_default())?
                        .ingest
                        .urls,
                )
            }
        };
        let wait_urls = |probe: &'static str, want: Vec<String>| {
            let urls_of = &urls_of;
            async move {
                wait_for(
                    &format!("{probe}'s ingest list {want:?}"),
                    WAIT,
                    EVERY,
                    || async {
                        let urls = urls_of(probe).await?;
                        Ok(if urls == want {
                            Ok(())
                        } else {
                            Err(format!("{urls:?}"))
                        })
                    },
                )
                .await
            }
        };

        for region in ["ghana", "nigeria"] {
            apply_json(&regions, &common::region_json(region)).await?;
        }
        apply_json(&probes, &common::probe_json("accra-edge", "ghana")).await?;
        apply_json(&probes, &common::probe_json("lagos-edge", "nigeria")).await?;
        wait_urls("accra-edge", vec![url("ghana"), url("nigeria")]).await?;
        // The others after the own region, in name order from it, wrapping around.
        wait_urls("lagos-edge", vec![url("nigeria"), url("ghana")]).await?;

        // A region made later reaches the probes already there.
        apply_json(&regions, &common::region_json("kenya")).await?;
        wait_urls(
            "accra-edge",
            vec![url("ghana"), url("kenya"), url("nigeria")],
        )
        .await?;
        wait_urls(
            "lagos-edge",
            vec![url("nigeria"), url("ghana"), url("kenya")],
        )
        .await?;

        // A region deleted leaves them.
        regions.delete("kenya", &DeleteParams::default()).await?;
        wait_urls("accra-edge", vec![url("ghana"), url("nigeria")]).await?;
        wait_urls("lagos-edge", vec![url("nigeria"), url("ghana")]).await?;
        Ok(())
    }
    .await;
    operator.stop().await;
    ns.delete().await?;
    result
}
