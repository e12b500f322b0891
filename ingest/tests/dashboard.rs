//! The seed's dashboard read API (`GET /api/metrics`, `GET /api/nodes`) against real
//! PostgreSQL seeded through the ETL: seed 000's shapes, its filters and aggregations, CORS
//! and the read rate limit.

mod common;

use anyhow::Result;
use chrono::{DateTime, Duration, DurationRound, Utc};
use common::{DASHBOARD_ORIGIN, READER, get, hour, sample, serve, serve_with};
use fiber_ingest::dashboard::CorsOrigins;
use fiberstack_e2e::batch;
use fiberstack_model::Batch;
use serde_json::{Value, json};

fn lossy(target: &str, minute: i64, latency: f64, loss: f64) -> fiberstack_model::Sample {
    fiberstack_model::Sample {
        packet_loss: Some(loss),
        ..sample(target, minute, latency, true)
    }
}

/// gh-accra-1: db at minute 1 (10 ms, 0 % loss) and 2 (20 ms, 10 %), api at minute 2 (30 ms,
/// 30 %); ng-lagos-1: db up at minute 1 (40 ms), down at minute 2.
fn seed() -> Vec<Batch> {
    vec![
        batch(
            "gh-accra-1",
            vec![
                lossy("db", 1, 10.0, 0.0),
                lossy("db", 2, 20.0, 10.0),
                lossy("api", 2, 30.0, 30.0),
            ],
        ),
        batch(
            "ng-lagos-1",
            vec![sample("db", 1, 40.0, true), sample("db", 2, 0.0, false)],
        ),
    ]
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339().replace("+00:00", "Z")
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// `(time, latency_ms, uptime_pct, packet_loss)` of each point, latency and loss rounded to
/// 0.01.
fn points(body: &Value) -> Vec<(String, Option<f64>, f64, Option<f64>)> {
    let round = |v: &Value| v.as_f64().map(|x| (x * 100.0).round() / 100.0);
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {body}"))
        .iter()
        .map(|p| {
            (
                p["time"].as_str().unwrap().to_owned(),
                round(&p["latency_ms"]),
                p["uptime_pct"].as_f64().unwrap(),
                round(&p["packet_loss"]),
            )
        })
        .collect()
}

fn at(minute: i64) -> String {
    rfc3339(hour() + Duration::minutes(minute))
}

#[tokio::test]
async fn metrics_answer_in_the_seeds_shape() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let (start, end) = (at(-5), at(30));
    let (status, body) = get(&format!(
        "{url}/api/metrics?node_id=gh-accra-1&start={start}&end={end}&aggregation=raw"
    ))
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["data", "node_id", "timeframe"]);
    assert_eq!(body["node_id"], "gh-accra-1");
    assert_eq!(body["timeframe"], json!({ "start": start, "end": end }));
    for point in body["data"].as_array().unwrap() {
        assert_eq!(
            keys(point),
            ["latency_ms", "packet_loss", "time", "uptime_pct"]
        );
        assert!(point["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        for number in ["latency_ms", "uptime_pct", "packet_loss"] {
            assert!(point[number].is_f64(), "{number} in {point}");
        }
    }
    // One point per sample time, over the node's targets.
    assert_eq!(
        points(&body),
        [
            (at(1), Some(10.0), 100.0, Some(0.0)),
            (at(2), Some(25.0), 100.0, Some(20.0)),
        ]
    );
    // The defaults: the last hour, raw.
    let (status, body) = get(&format!("{url}/api/metrics?node_id=gh-accra-1")).await?;
    assert_eq!(status, 200, "{body}");
    let start = DateTime::parse_from_rfc3339(body["timeframe"]["start"].as_str().unwrap())?;
    let end = DateTime::parse_from_rfc3339(body["timeframe"]["end"].as_str().unwrap())?;
    assert_eq!(end - start, Duration::hours(1));
    assert!((Utc::now() - end.with_timezone(&Utc)).num_seconds().abs() < 60);
    assert_eq!(points(&body), [], "the seeded samples are two hours old");
    Ok(())
}

#[tokio::test]
async fn metrics_are_filtered_by_node_and_time() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let base = format!("{url}/api/metrics?aggregation=raw");
    let between = rfc3339(hour() + Duration::seconds(90));
    let (status, body) = get(&format!(
        "{base}&node_id=gh-accra-1&start={between}&end={}",
        at(30)
    ))
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(points(&body), [(at(2), Some(25.0), 100.0, Some(20.0))]);
    let (_, body) = get(&format!(
        "{base}&node_id=gh-accra-1&start={}&end={between}",
        at(-5)
    ))
    .await?;
    assert_eq!(points(&body), [(at(1), Some(10.0), 100.0, Some(0.0))]);
    // The end is exclusive.
    let (_, body) = get(&format!(
        "{base}&node_id=gh-accra-1&start={}&end={}",
        at(-5),
        at(1)
    ))
    .await?;
    assert_eq!(points(&body), []);
    let (_, body) = get(&format!(
        "{base}&node_id=ng-lagos-1&start={}&end={}",
        at(-5),
        at(30)
    ))
    .await?;
    assert_eq!(
        points(&body),
        [(at(1), Some(40.0), 100.0, None), (at(2), None, 0.0, None)]
    );
    let (status, body) = get(&format!(
        "{base}&node_id=nobody&start={}&end={}",
        at(-5),
        at(30)
    ))
    .await?;
    assert_eq!((status, &body["data"]), (200, &json!([])), "{body}");
    assert_eq!(body["node_id"], "nobody");
    Ok(())
}

#[tokio::test]
async fn metrics_hourly_and_daily_come_from_the_rollups() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let start = rfc3339(hour() - Duration::days(1));
    let end = rfc3339(hour() + Duration::hours(1));
    let query = |node: &str, aggregation: &str| {
        format!(
            "{url}/api/metrics?node_id={node}&start={start}&end={end}&aggregation={aggregation}"
        )
    };
    // db: 2 samples, 15 ms, 5 % loss; api: 1 sample, 30 ms, 30 %: weighted by samples.
    let accra = (Some(20.0), 100.0, Some(13.33));
    let (status, body) = get(&query("gh-accra-1", "hourly")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        points(&body),
        [(rfc3339(hour()), accra.0, accra.1, accra.2)]
    );
    let (_, body) = get(&query("ng-lagos-1", "hourly")).await?;
    assert_eq!(points(&body), [(rfc3339(hour()), Some(40.0), 50.0, None)]);
    let day = hour().duration_trunc(Duration::days(1))?;
    let (status, body) = get(&query("gh-accra-1", "daily")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(points(&body), [(rfc3339(day), accra.0, accra.1, accra.2)]);
    Ok(())
}

#[tokio::test]
async fn nodes_are_listed_in_the_seeds_shape() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let (status, body) = get(&format!("{url}/api/nodes")).await?;
    assert_eq!(status, 200, "{body}");
    let nodes = body.as_array().unwrap();
    let names: Vec<&str> = nodes
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gh-accra-1", "ng-lagos-1"]);
    for node in nodes {
        assert_eq!(
            keys(node),
            [
                "country",
                "created_at",
                "last_seen_at",
                "node_id",
                "probe_version",
                "region"
            ]
        );
        for time in ["created_at", "last_seen_at"] {
            DateTime::parse_from_rfc3339(node[time].as_str().unwrap())?;
        }
        assert!(node["probe_version"].is_string(), "{node}");
    }
    assert_eq!(
        (&nodes[0]["country"], &nodes[0]["region"]),
        (&json!("GH"), &json!("ghana"))
    );
    Ok(())
}

#[tokio::test]
async fn bad_parameters_are_named() -> Result<()> {
    let url = serve(&seed(), true).await?;
    for (query, expected) in [
        (
            "node_id=gh-accra-1&aggregation=weekly",
            "aggregation: \"weekly\" is not one of raw, hourly, daily",
        ),
        (
            "node_id=gh-accra-1&start=2026-11-23T10:00:00Z&end=2026-11-23T09:00:00Z",
            "end: 2026-11-23 09:00:00 UTC is not after start",
        ),
        (
            "node_id=gh-accra-1&start=yesterday",
            "start: \"yesterday\" is not an RFC 3339 time",
        ),
        ("node_id=gh%00accra", "node_id: contains a NUL character"),
        ("aggregation=raw", "node_id: missing"),
        ("node_id=", "node_id: missing"),
    ] {
        let (status, body) = get(&format!("{url}/api/metrics?{query}")).await?;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{query}: {body}"
        );
    }
    for path in ["/api/metrics?node_id=gh-accra-1", "/api/nodes"] {
        let response = reqwest::get(format!("{url}{path}")).await?;
        assert_eq!(response.status().as_u16(), 401, "{path}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{path}"
        );
        let body: Value = response.json().await?;
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    Ok(())
}

async fn get_from(url: &str, origin: &str) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .get(url)
        .bearer_auth(READER)
        .header("origin", origin)
        .send()
        .await?)
}

async fn preflight(url: &str, origin: &str) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await?)
}

const ALLOW_ORIGIN: &str = "access-control-allow-origin";

#[tokio::test]
async fn cors_answers_the_configured_origins_only() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let other = "https://evil.example.com";
    for path in ["/api/metrics?node_id=gh-accra-1", "/api/nodes"] {
        let allowed = get_from(&format!("{url}{path}"), DASHBOARD_ORIGIN).await?;
        assert_eq!(allowed.status().as_u16(), 200, "{path}");
        assert_eq!(allowed.headers()[ALLOW_ORIGIN], DASHBOARD_ORIGIN, "{path}");
        assert_eq!(allowed.headers()["vary"], "origin", "{path}");
        let refused = get_from(&format!("{url}{path}"), other).await?;
        assert_eq!(
            refused.status().as_u16(),
            200,
            "{path}: CORS is the browser's to enforce"
        );
        assert!(!refused.headers().contains_key(ALLOW_ORIGIN), "{path}");
        // Refusals are readable by the dashboard too.
        let unauthorized = reqwest::Client::new()
            .get(format!("{url}{path}"))
            .header("origin", DASHBOARD_ORIGIN)
            .send()
            .await?;
        assert_eq!(unauthorized.status().as_u16(), 401);
        assert_eq!(unauthorized.headers()[ALLOW_ORIGIN], DASHBOARD_ORIGIN);

        let path = path.split('?').next().unwrap();
        let answered = preflight(&format!("{url}{path}"), DASHBOARD_ORIGIN).await?;
        assert_eq!(answered.status().as_u16(), 204, "{path}");
        let headers = answered.headers();
        assert_eq!(headers[ALLOW_ORIGIN], DASHBOARD_ORIGIN);
        assert_eq!(headers["access-control-allow-methods"], "GET");
        assert_eq!(headers["access-control-allow-headers"], "authorization");
        assert_eq!(headers["access-control-max-age"], "600");
        let refused = preflight(&format!("{url}{path}"), other).await?;
        assert_eq!(refused.status().as_u16(), 403, "{path}");
        assert!(!refused.headers().contains_key(ALLOW_ORIGIN));
        let body: Value = refused.json().await?;
        assert!(
            body["error"].as_str().unwrap().contains("evil.example.com"),
            "{body}"
        );
    }
    // Only the dashboard routes: the /api/v1 ones stay as they were.
    let v1 = get_from(&format!("{url}/api/v1/nodes"), DASHBOARD_ORIGIN).await?;
    assert!(!v1.headers().contains_key(ALLOW_ORIGIN));
    let v1 = preflight(&format!("{url}/api/v1/nodes"), DASHBOARD_ORIGIN).await?;
    assert_eq!(v1.status().as_u16(), 405);
    Ok(())
}

#[tokio::test]
async fn without_cors_origins_no_cors_header_is_sent() -> Result<()> {
    let url = serve_with(&seed(), true, |s| {
        s.with_cors_origins(CorsOrigins::default())
    })
    .await?;
    let response = get_from(&format!("{url}/api/nodes"), DASHBOARD_ORIGIN).await?;
    assert_eq!(response.status().as_u16(), 200);
    assert!(!response.headers().contains_key(ALLOW_ORIGIN));
    assert!(!response.headers().contains_key("vary"));
    let response = preflight(&format!("{url}/api/metrics"), DASHBOARD_ORIGIN).await?;
    assert_eq!(response.status().as_u16(), 403);
    assert!(!response.headers().contains_key(ALLOW_ORIGIN));
    Ok(())
}

#[tokio::test]
async fn the_read_rate_limit_answers_429_with_retry_after() -> Result<()> {
    let url = serve_with(&seed(), true, |s| s.with_read_rate(3)).await?;
    // Both routes draw on one allowance per client address.
    for path in [
        "/api/nodes",
        "/api/metrics?node_id=gh-accra-1",
        "/api/nodes",
    ] {
        let (status, body) = get(&format!("{url}{path}")).await?;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let over = get_from(
        &format!("{url}/api/metrics?node_id=gh-accra-1"),
        DASHBOARD_ORIGIN,
    )
    .await?;
    assert_eq!(over.status().as_u16(), 429);
    // 3 a minute: the next request is 20 s away.
    assert_eq!(over.headers()["retry-after"], "20");
    assert_eq!(over.headers()[ALLOW_ORIGIN], DASHBOARD_ORIGIN);
    assert_eq!(
        over.headers()["access-control-expose-headers"],
        "retry-after"
    );
    let body: Value = over.json().await?;
    assert_eq!(keys(&body), ["error"]);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("over the read rate limit of 3 requests a minute"),
        "{body}"
    );
    // Without a token too: the limit is checked first.
    let anonymous = reqwest::get(format!("{url}/api/nodes")).await?;
    assert_eq!(anonymous.status().as_u16(), 429);
    // The /api/v1 read routes are not limited by it.
    let (status, _) = get(&format!("{url}/api/v1/nodes")).await?;
    assert_eq!(status, 200);
    // A preflight is not counted.
    let answered = preflight(&format!("{url}/api/nodes"), DASHBOARD_ORIGIN).await?;
    assert_eq!(answered.status().as_u16(), 204);
    Ok(())
}
