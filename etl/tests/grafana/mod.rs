//! Grafana's side of the dashboards, shared by the dashboard test (`tests/dashboards.rs`)
//! and benchmark (`benches/dashboards.rs`): the provisioned dashboards as JSON, and their
//! queries expanded the way Grafana's PostgreSQL datasource expands them before it sends
//! them, so both run exactly what Grafana would.

#![allow(dead_code)] // the test and the bench each use their share

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::Value;

/// The rollups the dashboards read: continuous aggregates in TimescaleDB mode (migrations 0002,
/// 0007 and 0011), refreshed by `refresh_continuous_aggregate` when a test or bench needs them
/// now, in this order (the six-hour histograms aggregate the hourly ones).
pub const ROLLUPS: [&str; 7] = [
    "metrics_hourly",
    "metrics_daily",
    "metrics_latency_hourly",
    "metrics_latency_6h",
    "metrics_latency_daily",
    "metrics_latency_node_hourly",
    "metrics_latency_node_daily",
];

pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/fiberstack/dashboards")
}

pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

pub fn load_dashboards() -> Result<Vec<Dashboard>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let json = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            found.push(Dashboard {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            });
        }
    }
    found.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(found)
}

/// What Grafana substitutes before it sends a query: the time range, the interval it picked
/// for the panel, and the chosen values of the dashboard's variables.
pub struct QueryContext {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub interval: Duration,
    /// Grafana's `timescaledb` datasource option: `$__timeGroup` becomes `time_bucket`.
    pub timescaledb: bool,
    pub variables: BTreeMap<String, VariableValue>,
}

#[derive(Clone)]
pub enum VariableValue {
    /// A single-value variable is interpolated as it is (the dashboard quotes it).
    Single(String),
    /// Multi-value and "All": Grafana's PostgreSQL datasource joins quoted literals.
    Multi(Vec<String>),
}

impl VariableValue {
    pub fn interpolate(&self) -> String {
        match self {
            Self::Single(v) => v.clone(),
            Self::Multi(vs) => vs
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

pub fn grafana_interval(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn parse_interval(text: &str) -> Result<Duration> {
    let t = text.trim().trim_matches('\'');
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = number
        .parse()
        .with_context(|| format!("interval {text:?}"))?;
    Ok(match unit {
        "ms" => Duration::milliseconds(n),
        "s" => Duration::seconds(n),
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        _ => bail!("interval {text:?}: unknown unit"),
    })
}

impl QueryContext {
    fn rfc3339(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Nanos, true)
    }

    /// Interpolates variables (`$name`, `${name}`, Grafana's global `$__interval` and
    /// `$__interval_ms`), then expands the PostgreSQL datasource's macros. Anything it does
    /// not know is an error: the test must not pass a query Grafana would not run.
    pub fn expand(&self, sql: &str) -> Result<String> {
        let sql = sql
            .replace(
                "$__interval_ms",
                &self.interval.num_milliseconds().to_string(),
            )
            .replace("$__interval", &grafana_interval(self.interval));
        let sql = self.interpolate_variables(&sql)?;
        let expanded = self.expand_macros(&sql)?;
        if let Some(at) = expanded.find('$') {
            bail!("unexpanded `{}` in {expanded}", &expanded[at..]);
        }
        Ok(expanded)
    }

    fn interpolate_variables(&self, sql: &str) -> Result<String> {
        let mut out = String::with_capacity(sql.len());
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if after.starts_with("__") {
                // A macro: left for expand_macros.
                out.push('$');
                rest = after;
                continue;
            }
            let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced.find('}').context("unclosed ${")?;
                (&braced[..end], end + 2)
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            let value = self
                .variables
                .get(name)
                .with_context(|| format!("variable ${name} is not defined by the dashboard"))?;
            out.push_str(&value.interpolate());
            rest = &after[consumed..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn expand_macros(&self, sql: &str) -> Result<String> {
        let mut out = String::with_capacity(sql.len());
        let mut rest = sql;
        while let Some(at) = rest.find("$__") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 3..];
            let name_end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_end];
            let open = after[name_end..]
                .strip_prefix('(')
                .with_context(|| format!("macro $__{name} without arguments"))?;
            let close = open
                .find(')')
                .with_context(|| format!("macro $__{name}: no closing parenthesis"))?;
            let args: Vec<&str> = open[..close]
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .collect();
            out.push_str(&self.macro_value(name, &args)?);
            rest = &open[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn macro_value(&self, name: &str, args: &[&str]) -> Result<String> {
        let from = Self::rfc3339(self.from);
        let to = Self::rfc3339(self.to);
        let arg = |i: usize| -> Result<&str> {
            args.get(i)
                .copied()
                .with_context(|| format!("macro $__{name} needs argument {}", i + 1))
        };
        Ok(match name {
            "time" => format!("{} AS \"time\"", arg(0)?),
            "timeEpoch" => format!("extract(epoch from {}) AS \"time\"", arg(0)?),
            "timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", arg(0)?),
            "timeFrom" => format!("'{from}'"),
            "timeTo" => format!("'{to}'"),
            "timeGroup" | "timeGroupAlias" => {
                let column = arg(0)?;
                let seconds = parse_interval(arg(1)?)?.num_seconds();
                let group = if self.timescaledb {
                    format!("time_bucket('{seconds}s',{column})")
                } else {
                    format!("floor(extract(epoch from {column})/{seconds})*{seconds}")
                };
                if name == "timeGroupAlias" {
                    format!("{group} AS \"time\"")
                } else {
                    group
                }
            }
            other => bail!("macro $__{other} is not one Grafana's PostgreSQL datasource knows"),
        })
    }
}

/// Runs one query (on a pool, or a connection or transaction of it), returning its rows as
/// JSON objects (column → value).
pub async fn rows<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    sql: &str,
) -> Result<Vec<serde_json::Map<String, Value>>> {
    let wrapped = format!("select to_jsonb(q)::text from ({sql}) q");
    let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(wrapped))
        .fetch_all(executor)
        .await?;
    texts
        .into_iter()
        .map(|t| match serde_json::from_str(&t)? {
            Value::Object(map) => Ok(map),
            other => bail!("row is not an object: {other}"),
        })
        .collect()
}
