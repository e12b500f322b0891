//! The read API against real PostgreSQL: a fresh, migrated database per test, seeded through
//! the ETL (the `fiber-etl` binary).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration as StdDuration;

use anyhow::Result;
use chrono::Duration;
use common::{READER, TOKEN, get, hour, seed, serve};
use fiberstack_e2e::{LocalEnv, ReservedPort, etl, terminate, unique_name, wait_for};
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
    // From the hour's latency histogram: the sample at rank ⌊0.5·(2−1)⌋ of {10, 20} ms,
    // within the bins' 1 % (no interpolation between samples, as percentile_cont would).
    let p50 = rows[0]["latency_p50_ms"].as_f64().unwrap();
    assert!((p50 / 10.0 - 1.0).abs() <= 0.01, "{body}");
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
        // Refused by the extractor, answered with the JSON error all the same.
        ("limit=abc", "limit: invalid digit found in string"),
        // The database cannot take a NUL: 400 naming the parameter, not a database error.
        ("node=gh%00accra", "node: contains a NUL character"),
        ("target=%00", "target: contains a NUL character"),
        ("probe=a%00/b", "probe: contains a NUL character"),
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
    assert_eq!(
        unauthorized.headers()["www-authenticate"],
        "Bearer realm=\"fiberstack\""
    );
    let wrong = reqwest::Client::new()
        .get(format!("{url}/api/v1/metrics?limit=abc"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401, "the token is checked first");
    assert_eq!(
        wrong.headers()["www-authenticate"],
        "Bearer realm=\"fiberstack\", error=\"invalid_token\""
    );
    let lower_case = reqwest::Client::new()
        .get(format!("{url}/api/v1/nodes"))
        .header("authorization", format!("bearer {READER}"))
        .send()
        .await?;
    assert_eq!(
        lower_case.status().as_u16(),
        200,
        "the scheme is case-insensitive"
    );
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

/// The binary as a user runs it with DESIGN.md §4's roles: a reader login (no right to create
/// anything) and FiberStack's tables in their own schema.
#[tokio::test]
async fn the_binary_reads_with_a_reader_role_in_its_schema() -> Result<()> {
    let env = LocalEnv::load()?;
    let url = env.fresh_postgres_database("fs_read_role").await?;
    let schema = "fs_read_api";
    etl::migrate(&url, Some(schema)).await?;
    let reader = unique_name("fs_api_reader").replace('-', "_");
    let admin = sqlx::PgPool::connect(&url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create role {reader} login password 'reader-password';
         grant fiberstack_reader to {reader};
         insert into {schema}.nodes (name, region, country) values ('gh-accra-1', 'ghana', 'GH');"
    )))
    .execute(&admin)
    .await?;
    let mut reader_url = url::Url::parse(&url)?;
    reader_url.set_username(&reader).expect("a user");
    reader_url
        .set_password(Some("reader-password"))
        .expect("a password");
    let port = ReservedPort::new()?;
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("fiber-ingest")));
    let mut ingest = Command::new(env!("CARGO_BIN_EXE_fiber-ingest"))
        .args([
            "--region",
            &unique_name("read-role"),
            "--listen",
            &port.addr().to_string(),
        ])
        .args(["--database-url", reader_url.as_str(), "--db-schema", schema])
        .env("REDIS_URL", &env.redis_url)
        .env("FIBER_TOKEN", TOKEN)
        .env("FIBER_READER_TOKEN", READER)
        .env("FIBER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let outcome = async {
        wait_for(
            "fiber-ingest up",
            StdDuration::from_secs(30),
            StdDuration::from_millis(50),
            || {
                let exited = ingest.try_wait();
                let healthz = format!("{}/healthz", port.url());
                async move {
                    if let Some(status) = exited? {
                        anyhow::bail!("fiber-ingest exited ({status})");
                    }
                    Ok(match reqwest::get(healthz).await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        other => Err(format!("{other:?}")),
                    })
                }
            },
        )
        .await?;
        let (status, body) = get(&format!("{}/api/v1/nodes", port.url())).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[0]["name"], "gh-accra-1", "{body}");
        anyhow::Ok(())
    }
    .await;
    let stopped = terminate(&mut ingest, StdDuration::from_secs(10)).await;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    admin.close().await;
    env.drop_postgres_database(&url, &[&reader]).await?;
    outcome.map_err(|e| e.context(format!("fiber-ingest's stderr:\n{stderr}")))?;
    assert!(stopped?.success(), "{stderr}");
    Ok(())
}
