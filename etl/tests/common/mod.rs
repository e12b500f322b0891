//! Fixtures shared by fiber-etl's integration tests.

#![allow(dead_code)] // each test binary uses its own share of these

use anyhow::{Context, Result};
use fiberstack_e2e::{LocalEnv, unique_name};
use fiberstack_plumbing::postgres::DbConfig;
use sqlx::{Executor, PgPool};

/// A fresh schema on the TimescaleDB of `make env-up`, for one test: a pool of one
/// connection (the server takes one at a time) whose search path puts the schema first.
pub struct TimescaleSchema {
    pub pool: PgPool,
    pub name: String,
}

impl TimescaleSchema {
    pub async fn create(prefix: &str) -> Result<Self> {
        let env = LocalEnv::load()?;
        let single = |schema: Option<String>| DbConfig {
            schema,
            max_connections: 1,
            ..DbConfig::new(&env.timescale_url)
        };
        // The extension goes to `public` first: created by a migration it would land in the
        // test's schema and be dropped with it, and PGlite's single backend cannot load the
        // extension's library a second time for the next test that creates it.
        single(None)
            .connect()
            .await?
            .execute("create extension if not exists timescaledb")
            .await?;
        let name = unique_name(prefix).replace('-', "_");
        let pool = single(Some(name.clone())).connect().await?;
        Ok(Self { pool, name })
    }

    /// Drops the schema (TimescaleDB refuses to drop a hypertable in a schema's cascade, so
    /// the aggregates and the hypertable go first).
    pub async fn drop(self) -> Result<()> {
        for statement in fiberstack_e2e::etl::timescale_schema_drop(&self.name) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&self.pool)
                .await
                .context("dropping a test schema")?;
        }
        Ok(())
    }
}
