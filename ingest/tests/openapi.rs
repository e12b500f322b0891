//! `/api/openapi.json` tells the truth: every route the router serves is documented, and every
//! documented operation, sent as the document describes it (its examples, with and without
//! the token, with a malformed request, an oversized or mistyped body, another region's
//! batch), answers with a documented status, the headers documented for it, and a body that
//! matches the documented schema — no missing required field, no undocumented one.

mod common;

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use chrono::DateTime;
use common::{DASHBOARD_ORIGIN, READER, TOKEN, seed, serve, serve_with};
use serde_json::Value;

fn document() -> Result<Value> {
    Ok(serde_json::from_str(&fiber_ingest::api::OPENAPI)?)
}

/// Resolves a local `$ref` such as `#/components/schemas/Sample`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> Result<&'a Value> {
    match schema.get("$ref").and_then(Value::as_str) {
        None => Ok(schema),
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .with_context(|| format!("non-local $ref {reference}"))?;
            doc.pointer(pointer)
                .with_context(|| format!("$ref {reference} points nowhere"))
        }
    }
}

/// Checks `value` against the subset of JSON Schema the document uses. Objects are strict:
/// a property the schema does not name is an error, so the document cannot fall behind.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<()> {
    let schema = resolve(doc, schema)?;
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let errors: Vec<String> = options
            .iter()
            .filter_map(|o| check(doc, o, value, at).err().map(|e| format!("{e:#}")))
            .collect();
        ensure!(
            errors.len() < options.len(),
            "{at}: matches none of anyOf: {errors:?}"
        );
        return Ok(());
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => bail!("{at}: schema type {other}"),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        ensure!(fits, "{at}: {value} is {actual}, documented as {types:?}");
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        ensure!(
            allowed.contains(value),
            "{at}: {value} is not one of {allowed:?}"
        );
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            ensure!(n >= min, "{at}: {n} < minimum {min}");
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            ensure!(n <= max, "{at}: {n} > maximum {max}");
        }
    }
    if let Some(text) = value.as_str()
        && schema.get("format").and_then(Value::as_str) == Some("date-time")
    {
        DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("{at}: {text:?} is not a date-time"))?;
    }
    if let Value::Array(items) = value
        && let Some(item_schema) = schema.get("items")
    {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    if let Value::Object(fields) = value
        && schema.get("type").and_then(Value::as_str) == Some("object")
    {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            ensure!(
                fields.contains_key(required),
                "{at}: required field {required} is missing from {value}"
            );
        }
        if let Some(properties) = properties {
            for (name, field) in fields {
                let field_schema = properties
                    .get(name)
                    .with_context(|| format!("{at}.{name}: not in the document"))?;
                check(doc, field_schema, field, &format!("{at}.{name}"))?;
            }
        }
    }
    Ok(())
}

/// The routes `api::router` registers, read from its source: `.route("/path", get(…))`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api.rs");
    source
        .split(".route(\"")
        .skip(1)
        .map(|rest| {
            let (path, after) = rest.split_once('"').unwrap();
            let method = after.trim_start_matches([',', ' ']);
            let method = &method[..method.find('(').unwrap()];
            (path.to_owned(), method.to_owned())
        })
        .collect()
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((path.clone(), method.clone(), op));
        }
    }
    ops
}

#[test]
fn every_route_is_documented_and_nothing_else() -> Result<()> {
    let doc = document()?;
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .collect();
    let served = routes_in_source();
    assert!(served.len() >= 9, "the route scan found {served:?}");
    assert_eq!(documented, served);
    Ok(())
}

#[test]
fn the_document_is_openapi_3_1() -> Result<()> {
    let doc = document()?;
    let version = doc["openapi"].as_str().context("openapi")?;
    ensure!(version.starts_with("3.1."), "openapi: {version}");
    ensure!(doc["info"]["version"] == env!("CARGO_PKG_VERSION"));
    ensure!(
        doc.pointer("/components/securitySchemes/bearer/scheme") == Some(&"bearer".into()),
        "the bearer scheme"
    );
    ensure!(doc["security"] == serde_json::json!([{ "bearer": [] }]));
    Ok(())
}

/// The bounds utoipa takes as literals in the model's `schema(...)` attributes are the ones
/// `validate` enforces.
#[test]
fn the_documented_bounds_are_the_models() -> Result<()> {
    use fiberstack_model::validate::*;
    let doc = document()?;
    let schemas = &doc["components"]["schemas"];
    let sample = &schemas["Sample"]["properties"];
    for field in [
        "latency_ms",
        "latency_min_ms",
        "latency_max_ms",
        "jitter_ms",
    ] {
        ensure!(sample[field]["maximum"] == MAX_LATENCY_MS, "Sample.{field}");
    }
    ensure!(schemas["PushSample"]["properties"]["latency_ms"]["maximum"] == MAX_LATENCY_MS);
    ensure!(sample["target"]["maxLength"] == MAX_TARGET_NAME_LEN);
    ensure!(sample["address"]["maxLength"] == MAX_ADDRESS_LEN);
    ensure!(sample["error"]["maxLength"] == MAX_ERROR_LEN);
    for field in ["sent", "received"] {
        ensure!(sample[field]["maximum"] == MAX_COUNT, "Sample.{field}");
        ensure!(sample[field]["minimum"] == 0, "Sample.{field}");
    }
    let batch = &schemas["Batch"]["properties"];
    ensure!(batch["samples"]["maxItems"] == MAX_SAMPLES_PER_BATCH);
    for field in ["probe", "region", "node"] {
        ensure!(batch[field]["maxLength"] == MAX_NAME_LEN, "Batch.{field}");
    }
    for field in ["node_id", "region"] {
        ensure!(
            schemas["PushSample"]["properties"][field]["maxLength"] == MAX_NAME_LEN,
            "PushSample.{field}"
        );
    }
    Ok(())
}

/// A traceroute sample's hops are documented with the bounds `Sample::validate` enforces.
#[test]
fn the_documented_hops_are_the_models() -> Result<()> {
    use fiberstack_model::validate::*;
    let doc = document()?;
    let schemas = &doc["components"]["schemas"];
    let sample = &schemas["Sample"]["properties"];
    ensure!(sample["hops"]["maxItems"] == fiberstack_model::sample::MAX_HOPS);
    ensure!(resolve(&doc, &sample["hops"]["items"])? == &schemas["Hop"]);
    ensure!(sample["path_fingerprint"]["pattern"] == "^[0-9a-f]{16}$");
    let hop = &schemas["Hop"]["properties"];
    ensure!(hop["ttl"]["minimum"] == 1 && hop["ttl"]["maximum"] == 255);
    for field in ["latency_ms", "latency_min_ms", "latency_max_ms"] {
        ensure!(hop[field]["maximum"] == MAX_LATENCY_MS, "Hop.{field}");
    }
    ensure!(hop["packet_loss"]["maximum"] == 100);
    for field in ["sent", "received"] {
        ensure!(hop[field]["maximum"] == MAX_COUNT, "Hop.{field}");
    }
    let required: Vec<&str> = schemas["Hop"]["required"]
        .as_array()
        .context("Hop.required")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        required == ["ttl", "sent", "received", "packet_loss"],
        "{required:?}"
    );
    Ok(())
}

#[test]
fn the_documented_check_kinds_are_the_models() -> Result<()> {
    let doc = document()?;
    let documented: Vec<&str> = doc
        .pointer("/components/schemas/CheckKind/enum")
        .and_then(Value::as_array)
        .context("components.schemas.CheckKind.enum")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let model: Vec<&str> = fiberstack_model::CheckKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    ensure!(
        documented == model,
        "the document lists {documented:?}, the model {model:?}"
    );
    Ok(())
}

/// `POST /api/v1/samples` takes fiber-probe's binary batch besides JSON, and says so; the
/// seed's push takes JSON only.
#[test]
fn the_binary_batch_is_documented_where_it_is_taken() -> Result<()> {
    let doc = document()?;
    let types = |path: &str| -> Vec<String> {
        doc["paths"][path]["post"]["requestBody"]["content"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        types("/api/v1/samples"),
        ["application/json", fiberstack_model::binary::MEDIA_TYPE]
    );
    assert_eq!(types("/api/push"), ["application/json"]);
    Ok(())
}

#[test]
fn examples_match_their_schemas() -> Result<()> {
    let doc = document()?;
    let mut checked = 0;
    for (path, method, op) in operations(&doc) {
        if let Some(content) = op.pointer("/requestBody/content/application~1json") {
            let example = content.get("example").context("request example")?;
            check(
                &doc,
                &content["schema"],
                example,
                &format!("{method} {path} example"),
            )?;
            checked += 1;
        }
    }
    assert_eq!(checked, 2);
    // The checker itself refuses what it must.
    let sample = &doc["components"]["schemas"]["Sample"];
    let mut bad = serde_json::json!({"time": "2026-11-23T10:00:00Z", "target": "t", "kind": "icmp", "up": true});
    check(&doc, sample, &bad, "ok")?;
    bad["kind"] = "smtp".into();
    assert!(check(&doc, sample, &bad, "enum").is_err());
    bad["kind"] = "icmp".into();
    bad["surprise"] = 1.into();
    assert!(check(&doc, sample, &bad, "unknown field").is_err());
    bad.as_object_mut().unwrap().remove("surprise");
    bad.as_object_mut().unwrap().remove("up");
    assert!(check(&doc, sample, &bad, "required").is_err());
    Ok(())
}

/// The request a client following the document would send: examples as the body and as
/// query parameters. Sample times are moved to now so they are current, and a batch is of
/// the `region` the service serves (as `/api/status` tells).
fn documented_request(op: &Value, region: &str) -> (Option<Value>, Vec<(String, String)>) {
    let now = chrono::Utc::now().to_rfc3339();
    let body = op
        .pointer("/requestBody/content/application~1json/example")
        .cloned()
        .map(|mut body| {
            if let Some(samples) = body.get_mut("samples").and_then(Value::as_array_mut) {
                samples
                    .iter_mut()
                    .for_each(|s| s["time"] = now.clone().into());
                body["region"] = region.into();
            }
            if body.get("timestamp").is_some() {
                body["timestamp"] = now.clone().into();
            }
            body
        });
    let query = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p.get("example")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    (body, query)
}

/// Checks an answer against the operation's documented responses — status, headers, body;
/// returns the status.
async fn answer_is_documented(
    doc: &Value,
    op: &Value,
    what: &str,
    response: reqwest::Response,
) -> Result<u16> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await?;
    let documented = op["responses"]
        .get(status.to_string())
        .with_context(|| format!("{what}: status {status} is not documented ({text})"))?;
    let documented = resolve(doc, documented)?;
    let documents_content = documented.get("content").is_some();
    for name in documented
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|h| h.keys())
    {
        ensure!(
            headers.contains_key(name.as_str()),
            "{what}: {status} answered without its documented header {name}"
        );
    }
    if !documents_content && status == 204 {
        ensure!(text.is_empty(), "{what}: 204 with a body: {text}");
        return Ok(status);
    }
    let content = documented["content"]
        .as_object()
        .with_context(|| format!("{what}: {status} documents no content"))?;
    let (media, spec) = content
        .iter()
        .find(|(media, _)| content_type.starts_with(media.as_str()))
        .with_context(|| {
            format!(
                "{what}: {status} answered {content_type}, documented {:?}",
                content.keys()
            )
        })?;
    if media == "application/json" {
        let body: Value = serde_json::from_str(&text)
            .with_context(|| format!("{what}: {status} body is not JSON: {text}"))?;
        check(doc, &spec["schema"], &body, &format!("{what} → {status}"))?;
    }
    Ok(status)
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() -> Result<()> {
    let doc = document()?;
    let url = serve(&seed(), true).await?;
    let client = reqwest::Client::new();
    let status: Value = client
        .get(format!("{url}/api/status"))
        .send()
        .await?
        .json()
        .await?;
    let region = status["region"]
        .as_str()
        .context("the status names the region")?;
    let mut seen = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let (body, query) = documented_request(op, region);
        let secured = op
            .get("security")
            .and_then(Value::as_array)
            .is_none_or(|s| !s.is_empty());
        let target = url::Url::parse_with_params(&format!("{url}{path}"), &query)?;
        let start = |token: Option<&str>| {
            let mut r = match method.as_str() {
                "get" => client.get(target.clone()),
                "post" => client.post(target.clone()),
                // A browser's CORS preflight, from the origin the server allows.
                "options" => client
                    .request(reqwest::Method::OPTIONS, target.clone())
                    .header("origin", DASHBOARD_ORIGIN)
                    .header("access-control-request-method", "GET"),
                other => panic!("method {other}"),
            };
            if let Some(token) = token {
                r = r.bearer_auth(token);
            }
            r
        };
        // Reads take the reader token, writes the probe token; each is refused the other's.
        let (own, others) = if method == "get" {
            (READER, TOKEN)
        } else {
            (TOKEN, READER)
        };
        let request = |token: bool, body: Option<Value>| {
            let mut r = start(token.then_some(own));
            if let Some(body) = body {
                r = r.json(&body);
            }
            r.send()
        };
        let what = format!("{method} {path}");
        let status =
            answer_is_documented(&doc, op, &what, request(true, body.clone()).await?).await?;
        ensure!(
            (200..300).contains(&status),
            "{what}: answered {status} to the documented request"
        );
        seen.insert(format!("{what} {status}"));
        if secured {
            let status = answer_is_documented(
                &doc,
                op,
                &format!("{what} without token"),
                request(false, body.clone()).await?,
            )
            .await?;
            ensure!(status == 401, "{what} without a token: {status}");
            seen.insert(format!("{what} {status}"));
            let mut wrong = start(Some("wrong-token-0123456789"));
            if let Some(body) = &body {
                wrong = wrong.json(body);
            }
            let response = wrong.send().await?;
            let challenge = response.headers().get("www-authenticate").cloned();
            let what_wrong = format!("{what} with a wrong token");
            let status = answer_is_documented(&doc, op, &what_wrong, response).await?;
            ensure!(status == 401, "{what_wrong}: {status}");
            ensure!(
                challenge.is_some_and(|c| c
                    .to_str()
                    .is_ok_and(|c| c.contains("error=\"invalid_token\""))),
                "{what_wrong}: the challenge says the token is invalid"
            );
            let mut crossed = start(Some(others));
            if let Some(body) = &body {
                crossed = crossed.json(body);
            }
            let response = crossed.send().await?;
            let challenge = response.headers().get("www-authenticate").cloned();
            let what_crossed = format!("{what} with the other role's token");
            let status = answer_is_documented(&doc, op, &what_crossed, response).await?;
            ensure!(status == 403, "{what_crossed}: {status}");
            ensure!(
                challenge.is_some_and(|c| c
                    .to_str()
                    .is_ok_and(|c| c.contains("error=\"insufficient_scope\""))),
                "{what_crossed}: the challenge says the token's scope is insufficient"
            );
            seen.insert(format!("{what} {status}"));
        }
        if body.is_some() {
            let status = answer_is_documented(
                &doc,
                op,
                &format!("{what} with {{}}"),
                request(true, Some(serde_json::json!({}))).await?,
            )
            .await?;
            ensure!(status == 400, "{what} with an empty object: {status}");
            seen.insert(format!("{what} {status}"));
            let too_large = start(Some(TOKEN))
                .header("content-type", "application/json")
                .body(vec![b' '; fiber_ingest::api::MAX_BODY_BYTES + 1])
                .send()
                .await?;
            let status =
                answer_is_documented(&doc, op, &format!("{what} over 1 MiB"), too_large).await?;
            ensure!(status == 413, "{what} over 1 MiB: {status}");
            seen.insert(format!("{what} {status}"));
            let mistyped = start(Some(TOKEN))
                .header("content-type", "text/plain")
                .body(serde_json::to_vec(&body)?)
                .send()
                .await?;
            let status =
                answer_is_documented(&doc, op, &format!("{what} as text/plain"), mistyped).await?;
            ensure!(status == 415, "{what} as text/plain: {status}");
            seen.insert(format!("{what} {status}"));
        }
    }
    // Another region's batch.
    let op = doc.pointer("/paths/~1api~1v1~1samples/post").unwrap();
    let (Some(mut forged), _) = documented_request(op, "nigeria") else {
        bail!("postSamples has an example");
    };
    forged["node"] = "ng-fake-9".into();
    let response = client
        .post(format!("{url}/api/v1/samples"))
        .bearer_auth(TOKEN)
        .json(&forged)
        .send()
        .await?;
    let status = answer_is_documented(&doc, op, "another region's batch", response).await?;
    ensure!(status == 403, "another region's batch: {status}");
    seen.insert(format!("post /api/v1/samples {status}"));
    // Malformed query parameters: a documented 400 with the Error schema.
    let op = doc.pointer("/paths/~1api~1v1~1metrics/get").unwrap();
    for bad in [
        "aggregation=weekly",
        "limit=0",
        "limit=abc",
        "start=yesterday",
        "node=gh%00accra",
    ] {
        let response = client
            .get(format!("{url}/api/v1/metrics?{bad}"))
            .bearer_auth(READER)
            .send()
            .await?;
        let status = answer_is_documented(&doc, op, &format!("metrics?{bad}"), response).await?;
        ensure!(status == 400, "metrics?{bad}: {status}");
    }
    // The dashboard API: a preflight from an origin not allowed, malformed parameters, points
    // of every aggregation.
    for path in ["/api/metrics", "/api/nodes"] {
        let op = &doc["paths"][path]["options"];
        let response = client
            .request(reqwest::Method::OPTIONS, format!("{url}{path}"))
            .header("origin", "https://elsewhere.example.com")
            .header("access-control-request-method", "GET")
            .send()
            .await?;
        let what = format!("options {path} from another origin");
        let status = answer_is_documented(&doc, op, &what, response).await?;
        ensure!(status == 403, "{what}: {status}");
        seen.insert(format!("options {path} {status}"));
    }
    let dashboard = doc.pointer("/paths/~1api~1metrics/get").unwrap();
    for bad in [
        "aggregation=weekly",
        "node_id=gh-accra-1&aggregation=weekly",
        "node_id=gh-accra-1&start=yesterday",
        "node_id=gh-accra-1&start=2026-11-23T10:00:00Z&end=2026-11-23T09:00:00Z",
        "node_id=gh%00accra",
    ] {
        let response = client
            .get(format!("{url}/api/metrics?{bad}"))
            .bearer_auth(READER)
            .send()
            .await?;
        let status =
            answer_is_documented(&doc, dashboard, &format!("api/metrics?{bad}"), response).await?;
        ensure!(status == 400, "api/metrics?{bad}: {status}");
        seen.insert(format!("get /api/metrics {status}"));
    }
    let start = (common::hour() - chrono::Duration::days(2)).to_rfc3339();
    for aggregation in ["raw", "hourly", "daily"] {
        let target = url::Url::parse_with_params(
            &format!("{url}/api/metrics"),
            [
                ("node_id", "gh-accra-1"),
                ("aggregation", aggregation),
                ("start", &start),
            ],
        )?;
        let response = client.get(target).bearer_auth(READER).send().await?;
        let what = format!("api/metrics {aggregation}");
        ensure!(response.status() == 200, "{what}: {}", response.status());
        let body: Value = response.json().await?;
        ensure!(
            !body["data"].as_array().context("data")?.is_empty(),
            "{what}: no points"
        );
        let schema = dashboard
            .pointer("/responses/200/content/application~1json/schema")
            .unwrap();
        check(&doc, schema, &body, &what)?;
    }
    // Over the read rate limit (one request a minute).
    let limited = serve_with(&[], false, |s| s.with_read_rate(1)).await?;
    for path in ["/api/nodes", "/api/metrics"] {
        let op = &doc["paths"][path]["get"];
        let _first = client.get(format!("{limited}{path}")).send().await?;
        let response = client
            .get(format!("{limited}{path}?node_id=gh-accra-1"))
            .bearer_auth(READER)
            .send()
            .await?;
        let what = format!("get {path} over the read rate limit");
        let status = answer_is_documented(&doc, op, &what, response).await?;
        ensure!(status == 429, "{what}: {status}");
        seen.insert(format!("get {path} {status}"));
    }
    // Rows of every aggregation, on the seeded samples (the examples name other targets).
    let start = (common::hour() - chrono::Duration::days(2)).to_rfc3339();
    for aggregation in ["raw", "hourly", "daily"] {
        let target = url::Url::parse_with_params(
            &format!("{url}/api/v1/metrics"),
            [("aggregation", aggregation), ("start", &start)],
        )?;
        let response = client.get(target).bearer_auth(READER).send().await?;
        let what = format!("metrics {aggregation}");
        ensure!(response.status() == 200, "{what}: {}", response.status());
        let body: Value = response.json().await?;
        ensure!(
            !body["rows"].as_array().context("rows")?.is_empty(),
            "{what}: no rows"
        );
        let schema = op
            .pointer("/responses/200/content/application~1json/schema")
            .unwrap();
        check(&doc, schema, &body, &what)?;
    }
    assert_eq!(seen.len(), 36, "{seen:?}");
    Ok(())
}
