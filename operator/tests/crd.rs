//! The generated CRDs: `crds/` is up to date, and the API server itself refuses bad specs
//! with a message that says what is wrong.

mod common;

use anyhow::{Context, Result};
use fiberstack_operator::crd::FiberProbe;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Resource};
use serde::Deserialize;
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

/// Every property of every CRD, and every kind, has `kubectl explain` text of our own.
#[test]
fn every_field_and_kind_is_explained() {
    /// Walks `schema` and what it holds; returns how many schemas it saw.
    fn walk(schema: &Value, path: &str, missing: &mut Vec<String>) -> usize {
        let description = schema["description"].as_str().unwrap_or_default();
        if description.trim().is_empty() || description.contains("Auto-generated") {
            missing.push(format!("{path}: {description:?}"));
        }
        let mut seen = 1;
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                seen += walk(property, &format!("{path}.{name}"), missing);
            }
        }
        // A list's items and a map's values are explained by the field that holds them; their
        // own fields still need text.
        for (inner, suffix) in [
            (&schema["items"], "[]"),
            (&schema["additionalProperties"], "{}"),
        ] {
            if let Some(properties) = inner["properties"].as_object() {
                for (name, property) in properties {
                    seen += walk(property, &format!("{path}{suffix}.{name}"), missing);
                }
            }
        }
        seen
    }
    let mut missing = Vec::new();
    let mut seen = 0;
    for (file, yaml) in fiberstack_operator::crdgen::manifests() {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or(file);
        for version in crd["spec"]["versions"].as_array().unwrap() {
            seen += walk(&version["schema"]["openAPIV3Schema"], kind, &mut missing);
        }
    }
    assert!(
        seen > 100,
        "only {seen} schemas seen: the walk lost its way"
    );
    assert!(missing.is_empty(), "without our own text: {missing:#?}");
}

fn probes(client: kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(client, "default", &ApiResource::erase::<FiberProbe>(&()))
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
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
    match probes(client).create(&dry_run(), &object).await {
        Ok(_) => anyhow::bail!("the API server accepted it"),
        Err(e) => Ok(e.to_string()),
    }
}

/// Creates the probe in dry-run mode and fails with the API server's refusal, if any.
async fn accepted(edit: impl FnOnce(&mut Value)) -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let mut value = common::probe_json(&fiberstack_e2e::unique_name("good"), "ghana");
    edit(&mut value);
    let object: DynamicObject = serde_json::from_value(value.clone())?;
    probes(client)
        .create(&dry_run(), &object)
        .await
        .map_err(|e| anyhow::anyhow!("{} was refused: {e}", value["spec"]))?;
    Ok(())
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

/// FiberRegions of the namespace `default`, the CRDs installed (with [`dry_run`], nothing is
/// stored).
async fn regions() -> Result<Api<DynamicObject>> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    Ok(Api::namespaced_with(
        client,
        "default",
        &ApiResource::erase::<fiberstack_operator::crd::FiberRegion>(&()),
    ))
}

#[tokio::test]
async fn a_region_with_a_bad_country_is_refused() -> Result<()> {
    let mut value = common::region_json(&fiberstack_e2e::unique_name("bad"));
    value["spec"]["country"] = json!("Gh");
    let object: DynamicObject = serde_json::from_value(value)?;
    let e = regions()
        .await?
        .create(&dry_run(), &object)
        .await
        .unwrap_err()
        .to_string();
    assert_says(&e, &["spec.country", "\"Gh\"", "^[A-Z]{2}$"]);
    Ok(())
}

/// Creating `object` (dry run) is refused with an error that says each of `says`.
async fn refused(api: &Api<DynamicObject>, object: &DynamicObject, says: &[&str]) -> Result<()> {
    let e = api
        .create(&dry_run(), object)
        .await
        .err()
        .with_context(|| format!("accepted: {:?}", object.data["spec"]))?
        .to_string();
    assert_says(&e, says);
    Ok(())
}

#[tokio::test]
async fn ingest_admission_limits_are_bounded() -> Result<()> {
    let api = regions().await?;
    let params = dry_run();
    let region = |admission: Value| -> Result<DynamicObject> {
        let mut value = common::region_json(&fiberstack_e2e::unique_name("admit"));
        value["spec"]["ingest"]["admission"] = admission;
        Ok(serde_json::from_value(value)?)
    };
    for ok in [
        json!({ "maxBacklog": 50000, "maxBacklogAge": "30s" }),
        json!({ "maxBacklogAge": "0s" }),
        json!({ "maxBacklogAge": "5m" }),
    ] {
        api.create(&params, &region(ok.clone())?)
            .await
            .map_err(|e| anyhow::anyhow!("{ok} was refused: {e}"))?;
    }
    for (bad, says) in [
        (
            json!({ "maxBacklogAge": "301s" }),
            &["spec.ingest.admission.maxBacklogAge", "at most 300s"][..],
        ),
        (
            json!({ "maxBacklogAge": "10" }),
            &["spec.ingest.admission.maxBacklogAge"][..],
        ),
        (
            json!({ "maxBacklog": 0 }),
            &["spec.ingest.admission.maxBacklog"][..],
        ),
    ] {
        refused(&api, &region(bad)?, says).await?;
    }
    Ok(())
}

#[tokio::test]
async fn etl_settings_are_bounded() -> Result<()> {
    let api = regions().await?;
    let params = dry_run();
    let region = |etl: Value| -> Result<DynamicObject> {
        let mut value = common::region_json(&fiberstack_e2e::unique_name("etl"));
        value["spec"]["etl"] = etl;
        Ok(serde_json::from_value(value)?)
    };
    for ok in [
        json!({ "batchSize": 1000, "lingerMs": 0 }),
        json!({ "lingerMs": 1000 }),
    ] {
        api.create(&params, &region(ok.clone())?)
            .await
            .map_err(|e| anyhow::anyhow!("{ok} was refused: {e}"))?;
    }
    for (bad, says) in [
        (
            json!({ "lingerMs": 1001 }),
            &["spec.etl.lingerMs", "less than or equal to 1000"][..],
        ),
        (
            json!({ "lingerMs": -1 }),
            &["spec.etl.lingerMs", "greater than or equal to 0"][..],
        ),
        (
            json!({ "batchSize": 0 }),
            &["spec.etl.batchSize", "greater than or equal to 1"][..],
        ),
    ] {
        refused(&api, &region(bad)?, says).await?;
    }
    Ok(())
}

#[tokio::test]
async fn read_api_origins_must_be_origins() -> Result<()> {
    let api = regions().await?;
    let params = dry_run();
    let region = |origins: Value, per_minute: Value| -> Result<DynamicObject> {
        let mut value = common::region_json(&fiberstack_e2e::unique_name("read"));
        value["spec"]["ingest"]["readApi"] =
            json!({ "corsOrigins": origins, "requestsPerMinute": per_minute });
        Ok(serde_json::from_value(value)?)
    };
    let ok = region(
        json!(["https://noc.example", "http://localhost:3000"]),
        json!(120),
    )?;
    api.create(&params, &ok).await?;
    for bad in ["*", "https://noc.example/path", "ftp://x", "https://a b"] {
        let e = api
            .create(&params, &region(json!([bad]), json!(120))?)
            .await
            .unwrap_err()
            .to_string();
        assert_says(&e, &["spec.ingest.readApi.corsOrigins[0]"]);
    }
    let e = api
        .create(&params, &region(json!([]), json!(0))?)
        .await
        .unwrap_err()
        .to_string();
    assert_says(&e, &["spec.ingest.readApi.requestsPerMinute"]);
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

#[tokio::test]
async fn an_http_url_must_be_http_or_https_with_a_host() -> Result<()> {
    for url in [
        "ftp://x",
        "https//example.com",
        "http://:80/",
        "http://example.com:99999/",
    ] {
        let e = refusal(|v| {
            v["spec"]["targets"][1] = json!({ "name": "api", "http": { "url": url } });
        })
        .await?;
        let says = format!("\"{url}\" is not an http:// or https:// URL with a host");
        assert_says(&e, &["spec.targets[1].http.url", &says]);
    }
    let long = format!("https://example.com/{}", "a".repeat(2_048));
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({ "name": "api", "http": { "url": long } });
    })
    .await?;
    assert_says(&e, &["spec.targets[1].http.url", "2048"]);
    Ok(())
}

#[tokio::test]
async fn expected_statuses_are_http_status_codes() -> Result<()> {
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "api",
            "http": { "url": "https://example.com/", "expectStatus": [200, 999, 99] }
        });
    })
    .await?;
    assert_says(
        &e,
        &[
            "spec.targets[1].http.expectStatus[1]",
            "less than or equal to 599",
            "spec.targets[1].http.expectStatus[2]",
            "greater than or equal to 100",
        ],
    );
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "api",
            "http": { "url": "https://example.com/", "bodyContains": "" }
        });
    })
    .await?;
    assert_says(
        &e,
        &["spec.targets[1].http.bodyContains", "at least 1 chars long"],
    );
    Ok(())
}

#[tokio::test]
async fn a_tcp_port_is_1_to_65535() -> Result<()> {
    let e = refusal(|v| v["spec"]["targets"][1]["tcp"]["port"] = json!(0)).await?;
    assert_says(
        &e,
        &["spec.targets[1].tcp.port", "greater than or equal to 1"],
    );
    let e = refusal(|v| v["spec"]["targets"][1]["tcp"]["port"] = json!(65_536)).await?;
    assert_says(
        &e,
        &["spec.targets[1].tcp.port", "less than or equal to 65535"],
    );
    Ok(())
}

#[tokio::test]
async fn a_host_is_an_ip_address_or_a_host_name() -> Result<()> {
    for host in [
        "a b",
        "1.2.3",
        "-edge.example.com",
        "example.com/health",
        "[::1]",
    ] {
        let e = refusal(|v| {
            v["spec"]["targets"][0]["icmp"]["host"] = json!(host);
            v["spec"]["targets"][1]["tcp"]["host"] = json!(host);
        })
        .await?;
        let says = format!("\"{host}\" is not an IP address or a host name");
        assert_says(
            &e,
            &[
                "spec.targets[0].icmp.host",
                "spec.targets[1].tcp.host",
                &says,
            ],
        );
    }
    Ok(())
}

#[tokio::test]
async fn dns_queries_and_servers_are_checked() -> Result<()> {
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "resolver",
            "dns": { "query": "a..example.com", "server": "1.1.1.1:99999" }
        });
    })
    .await?;
    assert_says(
        &e,
        &[
            "spec.targets[1].dns.query",
            "\"a..example.com\" is not a DNS name",
            "spec.targets[1].dns.server",
            "\"1.1.1.1:99999\" is not an IP address or ip:port",
        ],
    );
    // Brackets hold an IPv6 address only, as for the probe.
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "resolver",
            "dns": { "query": "example.com", "server": "[1.1.1.1]:53" }
        });
    })
    .await?;
    assert_says(&e, &["spec.targets[1].dns.server", "\"[1.1.1.1]:53\""]);
    Ok(())
}

/// A probe whose targets[0] (google-dns) sends `count` echoes `spacing` apart, with
/// `interval` and `timeout`.
fn icmp_round(
    interval: &'static str,
    timeout: &'static str,
    count: u32,
    spacing: &'static str,
) -> impl FnOnce(&mut Value) {
    move |v: &mut Value| {
        v["spec"]["interval"] = json!(interval);
        v["spec"]["timeout"] = json!(timeout);
        v["spec"]["targets"][0]["icmp"]["count"] = json!(count);
        v["spec"]["targets"][0]["icmp"]["spacing"] = json!(spacing);
    }
}

#[tokio::test]
async fn an_icmp_round_longer_than_the_interval_is_refused() -> Result<()> {
    // 99 spacings of 1s and the 5s timeout: 104s in a 60s interval.
    let e = refusal(icmp_round("60s", "5s", 100, "1s")).await?;
    assert_says(
        &e,
        &[
            "spec.targets",
            "the ICMP round of target google-dns does not fit in the interval 60s",
            "(icmp.count - 1) × icmp.spacing + timeout must be shorter than interval",
        ],
    );
    // At the edge: 5 spacings of 200ms and the 1s timeout fill a 2s interval exactly, which
    // leaves no time between rounds; 4 spacings fit.
    let e = refusal(icmp_round("2s", "1s", 6, "200ms")).await?;
    assert_says(
        &e,
        &[
            "spec.targets",
            "target google-dns does not fit in the interval 2s",
        ],
    );
    accepted(icmp_round("2s", "1s", 5, "200ms")).await?;
    // Milliseconds the interval has only in part are not rounded against the user:
    // 500.2ms + 500ms fits in 1.0005s.
    accepted(icmp_round("1.0005s", "500ms", 2, "500.2ms")).await?;
    Ok(())
}

#[tokio::test]
async fn a_timeout_of_zero_is_refused() -> Result<()> {
    let e = refusal(|v| v["spec"]["timeout"] = json!("0s")).await?;
    assert_says(&e, &["spec.timeout", "timeout must be above 0"]);
    Ok(())
}

#[tokio::test]
async fn a_probes_region_is_a_dns_label() -> Result<()> {
    for region in ["Ghana", "ghana_1", "1ghana", "ghana.west", "ghana-"] {
        let e = refusal(|v| v["spec"]["region"] = json!(region)).await?;
        assert_says(
            &e,
            &["spec.region", &format!("\"{region}\""), "should match"],
        );
    }
    let e = refusal(|v| v["spec"]["region"] = json!("g".repeat(46))).await?;
    assert_says(&e, &["spec.region", "Too long: may not be more than 45"]);
    accepted(|v| v["spec"]["region"] = json!("g".repeat(45))).await?;
    Ok(())
}

#[tokio::test]
async fn a_region_whose_name_cannot_name_its_service_is_refused() -> Result<()> {
    let api = regions().await?;
    let long = "g".repeat(46);
    for name in ["1ghana", "gh.west", &long] {
        let object: DynamicObject = serde_json::from_value(common::region_json(name))?;
        let e = api
            .create(&dry_run(), &object)
            .await
            .unwrap_err()
            .to_string();
        assert_says(
            &e,
            &[
                &format!("metadata.name \"{name}\" cannot name the ingest Service"),
                "at most 45 lower-case letters",
            ],
        );
    }
    let longest: DynamicObject = serde_json::from_value(common::region_json(&"g".repeat(45)))?;
    api.create(&dry_run(), &longest).await?;
    Ok(())
}

#[tokio::test]
async fn a_probe_name_longer_than_a_label_is_refused() -> Result<()> {
    let e = refusal(|v| v["metadata"]["name"] = json!("p".repeat(64))).await?;
    assert_says(&e, &["metadata.name must be at most 63 characters"]);
    Ok(())
}

#[tokio::test]
async fn a_target_name_has_no_surrounding_spaces_or_control_characters() -> Result<()> {
    for name in [" google-dns", "google-dns\u{a0}", "google\u{7}dns"] {
        let e = refusal(|v| v["spec"]["targets"][0]["name"] = json!(name)).await?;
        assert_says(
            &e,
            &[
                "spec.targets[0].name",
                "must not begin or end with a space or hold control characters",
            ],
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_form_the_probe_accepts_is_accepted() -> Result<()> {
    accepted(|v| {
        v["spec"]["targets"] = json!([
            { "name": "v4", "icmp": { "host": "8.8.8.8" } },
            { "name": "v6", "icmp": { "host": "2001:4860:4860::8888" } },
            { "name": "fqdn", "icmp": { "host": "host.fiberstack.svc.cluster.local." } },
            { "name": "underscore", "tcp": { "host": "db_1.internal", "port": 65_535 } },
            { "name": "short", "tcp": { "host": "localhost", "port": 1 } },
            { "name": "with port", "http": {
                "url": "http://[::1]:8080/health?x=1", "expectStatus": [100, 599] } },
            { "name": "upper case", "http": { "url": "HTTPS://Example.com" } },
            { "name": "dns-v4-port", "dns": { "query": "example.com.", "server": "1.1.1.1:5353" } },
            { "name": "dns-v6-port", "dns": {
                "query": "_dmarc.example.com", "server": "[2606:4700::1111]:53" } },
            { "name": "dns-v6", "dns": { "query": "example.com", "server": "::1" } },
            { "name": "dns-system", "dns": { "query": "example.com", "type": "TXT" } },
            { "name": "trace", "traceroute": { "host": "example.com" } },
            { "name": "trace-one-hop", "traceroute": {
                "host": "2001:4860:4860::8888", "firstHop": 255, "maxHops": 255, "port": 65_535 } }
        ]);
    })
    .await
}

/// The demo's objects (e2e/demo/three-regions.yaml) pass the CRDs' rules; the chart test
/// does the same for manifests/examples.
#[tokio::test]
async fn the_demo_is_accepted_by_the_api_server() -> Result<()> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/demo/three-regions.yaml");
    let text = std::fs::read_to_string(path)?;
    let mut kinds = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value)?;
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let resource = match kind.as_str() {
            "FiberRegion" => ApiResource::erase::<fiberstack_operator::crd::FiberRegion>(&()),
            "FiberProbe" => ApiResource::erase::<FiberProbe>(&()),
            other => anyhow::bail!("the demo holds a {other}; teach this test its kind"),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
        let name = object.metadata.name.clone().unwrap_or_default();
        api.create(&dry_run(), &object)
            .await
            .map_err(|e| anyhow::anyhow!("{kind} {name}: {e}"))?;
        kinds.push(kind);
    }
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    Ok(())
}

#[tokio::test]
async fn a_traceroute_target_is_checked_by_the_api_server() -> Result<()> {
    accepted(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "path",
            "traceroute": { "host": "2001:4860:4860::8888", "firstHop": 2, "maxHops": 20,
                            "probesPerHop": 5, "hopTimeout": "500ms", "sourcePort": 40000 }
        });
    })
    .await?;
    // Defaults fill in before the rule: firstHop 1 <= maxHops 30.
    accepted(|v| {
        v["spec"]["targets"][1] = json!({ "name": "path", "traceroute": { "host": "8.8.8.8" } })
    })
    .await?;
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "path",
            "traceroute": { "host": "8.8.8.8", "firstHop": 10, "maxHops": 5 }
        });
    })
    .await?;
    assert_says(
        &e,
        &[
            "spec.targets[1].traceroute",
            "firstHop must not be above maxHops",
        ],
    );
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "path",
            "traceroute": { "host": "1.2.3", "maxHops": 256, "probesPerHop": 0 }
        });
    })
    .await?;
    assert_says(
        &e,
        &[
            "spec.targets[1].traceroute.host",
            "\"1.2.3\" is not an IP address or a host name",
            "spec.targets[1].traceroute.maxHops",
            "less than or equal to 255",
            "spec.targets[1].traceroute.probesPerHop",
            "greater than or equal to 1",
        ],
    );
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "path",
            "traceroute": { "host": "8.8.8.8" },
            "icmp": { "host": "8.8.8.8" }
        });
    })
    .await?;
    assert_says(&e, &["exactly one check", "traceroute"]);
    let e = refusal(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "path",
            "traceroute": { "host": "8.8.8.8", "changeAlertFor": "168h1s" }
        });
    })
    .await?;
    assert_says(
        &e,
        &[
            "spec.targets[1].traceroute.changeAlertFor",
            "must be at most 168h",
        ],
    );
    accepted(|v| {
        v["spec"]["targets"][1] = json!({
            "name": "path",
            "traceroute": { "host": "8.8.8.8", "protocol": "icmp", "changeAlertFor": "168h" }
        });
    })
    .await?;
    Ok(())
}
