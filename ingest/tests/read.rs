//! The read API against real PostgreSQL: a fresh, migrated database per test, seeded through
//! the ETL (the `fiber-etl` binary).

mod common;

use anyhow::Result;
use chrono::Duration;
use common::{get, hour, seed, serve};
use serde_json::Value;

#[tokio::test]
async fn nodes_are_listed() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let (status, body) = get(&format!("{url}/api/v1/nodes")).await?;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gh-accra-1", "ng-lagos-1"]);
    assert_eq!(body[0]["country"], "GH");
    Ok(())
}

#[tokio::test]
async fn raw_and_rolled_up_metrics_with_filters() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let start = (hour() - Duration::minutes(5))
        .to_rfc3339()
        .replace("+00:00", "Z");
    let base = format!("{url}/api/v1/metrics?start={start}");

    let (status, body) = get(&format!("{base}&node=gh-accra-1&target=db")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aggregation"], "raw");
    let latencies: Vec<f64> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["latency_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(latencies, [10.0, 20.0]);

    let (status, body) = get(&format!("{base}&aggregation=hourly&target=db")).await?;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    assert_eq!(
        (rows[0]["node"].as_str(), rows[0]["samples"].as_i64()),
        (Some("gh-accra-1"), Some(2))
    );
    assert_eq!(rows[0]["latency_p50_ms"], 15.0);
    assert_eq!(
        (rows[1]["node"].as_str(), rows[1]["uptime_pct"].as_f64()),
        (Some("ng-lagos-1"), Some(50.0))
    );

    let day_start = (hour() - Duration::days(1))
        .to_rfc3339()
        .replace("+00:00", "Z");
    let (status, body) = get(&format!(
        "{url}/api/v1/metrics?start={day_start}&aggregation=daily&node=gh-accra-1"
    ))
    .await?;
    assert_eq!(status, 200, "{body}");
    let samples: i64 = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["samples"].as_i64().unwrap())
        .sum();
    assert_eq!(samples, 3);
    Ok(())
}

#[tokio::test]
async fn bad_parameters_are_named() -> Result<()> {
    let url = serve(&seed(), true).await?;
    for (query, expected) in [
        (
            "aggregation=weekly",
            "aggregation: \"weekly\" is not one of raw, hourly, daily",
        ),
        (
            "start=yesterday",
            "start: \"yesterday\" is not an RFC 3339 time",
        ),
        (
            "start=2026-11-23T10:00:00Z&end=2026-11-23T09:00:00Z",
            "is not before end",
        ),
        ("limit=0", "limit: 0 is out of range"),
    ] {
        let (status, body) = get(&format!("{url}/api/v1/metrics?{query}")).await?;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{query}: {body}"
        );
    }
    let unauthorized = reqwest::get(format!("{url}/api/v1/nodes")).await?;
    assert_eq!(unauthorized.status().as_u16(), 401);
    Ok(())
}

#[tokio::test]
async fn without_a_database_the_read_api_says_so() -> Result<()> {
    let url = serve(&[], false).await?;
    let (status, body) = get(&format!("{url}/api/v1/nodes")).await?;
    assert_eq!(status, 503);
    assert!(
        body["error"].as_str().unwrap().contains("no DATABASE_URL"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn status_names_the_region_stream_and_dependencies() -> Result<()> {
    let url = serve(&seed(), true).await?;
    let body: Value = reqwest::get(format!("{url}/api/status"))
        .await?
        .json()
        .await?;
    assert_eq!(body["service"], "fiber-ingest");
    assert!(body["region"].as_str().unwrap().starts_with("read-test-"));
    assert_eq!(
        body["stream"],
        format!("fiber:samples:{}", body["region"].as_str().unwrap())
    );
    assert_eq!(
        (body["redis"].as_str(), body["database"].as_str()),
        (Some("ok"), Some("ok"))
    );
    assert_eq!(body["stream_length"], 0);
    let without_db: Value = reqwest::get(format!("{}/api/status", serve(&[], false).await?))
        .await?
        .json()
        .await?;
    assert_eq!(without_db["database"], "off");
    Ok(())
}
