//! The generated CRDs: `crds/` is up to date, and the API server itself refuses bad specs
//! with a message that says what is wrong.

mod common;

use anyhow::Result;
use fiberstack_operator::crd::FiberProbe;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Resource};
use serde_json::{Value, json};

#[test]
fn crds_directory_is_up_to_date() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (name, yaml) in fiberstack_operator::crdgen::manifests() {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "crds/{name} is stale: run `cargo run -p fiberstack-operator --bin crdgen`"
        );
    }
}

/// Creates the probe in dry-run mode (all validation, nothing stored) and returns the API
/// server's refusal.
async fn refusal(edit: impl FnOnce(&mut Value)) -> Result<String> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let mut value = common::probe_json(&fiberstack_e2e::unique_name("bad"), "ghana");
    edit(&mut value);
    let object: DynamicObject = serde_json::from_value(value)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, "default", &ApiResource::erase::<FiberProbe>(&()));
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => anyhow::bail!("the API server accepted it"),
        Err(e) => Ok(e.to_string()),
    }
}

fn assert_says(message: &str, expected: &[&str]) {
    for part in expected {
        assert!(message.contains(part), "{message:?} does not say {part:?}");
    }
}

#[tokio::test]
async fn a_valid_probe_is_accepted() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let value = common::probe_json(&fiberstack_e2e::unique_name("good"), "ghana");
    let object: DynamicObject = serde_json::from_value(value)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, "default", &ApiResource::erase::<FiberProbe>(&()));
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = api.create(&params, &object).await?;
    // Defaults are filled in by the API server.
    assert_eq!(
        created.data["spec"]["thresholds"]["latencyP95Ms"].as_f64(),
        Some(150.0)
    );
    assert_eq!(
        created.data["spec"]["thresholds"]["certExpiryDays"].as_u64(),
        Some(14)
    );
    assert_eq!(
        created.data["spec"]["targets"][0]["icmp"]["spacing"],
        json!("200ms")
    );
    assert_eq!(FiberProbe::kind(&()), "FiberProbe");
    Ok(())
}

#[tokio::test]
async fn a_region_with_a_bad_country_is_refused() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let mut value = common::region_json(&fiberstack_e2e::unique_name("bad"));
    value["spec"]["country"] = json!("Gh");
    let object: DynamicObject = serde_json::from_value(value)?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &ApiResource::erase::<fiberstack_operator::crd::FiberRegion>(&()),
    );
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let e = api.create(&params, &object).await.unwrap_err().to_string();
    assert_says(&e, &["spec.country", "\"Gh\"", "^[A-Z]{2}$"]);
    Ok(())
}

#[tokio::test]
async fn a_target_without_a_check_is_refused() -> Result<()> {
    let e = refusal(|v| v["spec"]["targets"][0] = json!({"name": "nothing"})).await?;
    assert_says(
        &e,
        &[
            "spec.targets[0]",
            "exactly one check: one of icmp, tcp, http, dns",
        ],
    );
    Ok(())
}

#[tokio::test]
async fn a_target_with_two_checks_is_refused() -> Result<()> {
    let e = refusal(|v| {
        v["spec"]["targets"][1]["http"] = json!({"url": "https://example.com"});
    })
    .await?;
    assert_says(
        &e,
        &[
            "spec.targets[1]",
            "exactly one check: one of icmp, tcp, http, dns",
        ],
    );
    Ok(())
}

#[tokio::test]
async fn duplicate_target_names_are_refused() -> Result<()> {
    let e = refusal(|v| v["spec"]["targets"][1]["name"] = json!("google-dns")).await?;
    assert_says(&e, &["spec.targets[1]", "Duplicate value", "google-dns"]);
    Ok(())
}

#[tokio::test]
async fn an_interval_under_one_second_is_refused() -> Result<()> {
    let e = refusal(|v| {
        v["spec"]["interval"] = json!("500ms");
        v["spec"]["timeout"] = json!("100ms");
    })
    .await?;
    assert_says(&e, &["spec.interval", "interval must be at least 1s"]);
    Ok(())
}

#[tokio::test]
async fn a_timeout_not_below_the_interval_is_refused() -> Result<()> {
    let e = refusal(|v| v["spec"]["timeout"] = json!("1m")).await?;
    assert_says(
        &e,
        &["spec.timeout", "timeout must be shorter than interval"],
    );
    Ok(())
}

#[tokio::test]
async fn an_unparsable_duration_is_refused() -> Result<()> {
    let e = refusal(|v| v["spec"]["interval"] = json!("1 minute")).await?;
    assert_says(&e, &["spec.interval", "\"1 minute\"", "should match"]);
    let e = refusal(|v| v["spec"]["targets"][0]["icmp"]["spacing"] = json!("2x")).await?;
    assert_says(&e, &["spec.targets[0].icmp.spacing", "\"2x\""]);
    Ok(())
}

#[tokio::test]
async fn an_empty_target_list_is_refused() -> Result<()> {
    let e = refusal(|v| v["spec"]["targets"] = json!([])).await?;
    assert_says(&e, &["spec.targets", "should have at least 1 items"]);
    Ok(())
}

#[tokio::test]
async fn numbers_the_operator_could_not_read_are_refused() -> Result<()> {
    let e = refusal(|v| v["spec"]["targets"][0]["icmp"]["count"] = json!(4_294_967_296u64)).await?;
    assert_says(
        &e,
        &["spec.targets[0].icmp.count", "less than or equal to 100"],
    );
    Ok(())
}

#[tokio::test]
async fn a_targets_own_thresholds_are_bounded_like_the_probes() -> Result<()> {
    let e = refusal(|v| {
        v["spec"]["targets"][0]["thresholds"] = json!({ "uptimePct": 101, "certExpiryDays": 4000 })
    })
    .await?;
    assert_says(
        &e,
        &[
            "spec.targets[0].thresholds.uptimePct",
            "less than or equal to 100",
            "spec.targets[0].thresholds.certExpiryDays",
            "less than or equal to 3650",
        ],
    );
    Ok(())
}
