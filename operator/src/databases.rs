//! The databases the operator reads fleet health from: its own `--database-url`, and each
//! region's reader (`spec.database.readerUrlSecretRef`) when the region names one, so regions
//! can be spread over several databases. Pools are read-only, opened lazily on first use per
//! URL, and kept. The one write the operator makes, the alert history, goes through the
//! region's writer URL (`spec.database.urlSecretRef`, the ETL's), in a pool of its own.

use std::collections::HashMap;

use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::status::connect_lazy;

pub struct Databases {
    default: Option<PgPool>,
    schema: Option<String>,
    by_url: Mutex<HashMap<String, PgPool>>,
    writers: Mutex<HashMap<String, PgPool>>,
}

impl Databases {
    /// `default`: the pool of `--database-url`; `schema`: `--db-schema`, for every pool.
    pub fn new(default: Option<PgPool>, schema: Option<String>) -> Self {
        Self {
            default,
            schema,
            by_url: Mutex::default(),
            writers: Mutex::default(),
        }
    }

    /// The pool of a region's reader URL, or the operator's own when the region names none;
    /// an error text saying what is missing otherwise.
    pub async fn pool(&self, reader_url: Option<&str>) -> Result<PgPool, String> {
        let Some(url) = reader_url else {
            return self.default.clone().ok_or_else(|| {
                "no database configured (--database-url, or the region's spec.database.readerUrlSecretRef)"
                    .to_owned()
            });
        };
        let mut pools = self.by_url.lock().await;
        if let Some(pool) = pools.get(url) {
            return Ok(pool.clone());
        }
        let pool = connect_lazy(url, self.schema.as_deref()).map_err(|e| {
            format!("spec.database.readerUrlSecretRef is not a PostgreSQL URL: {e}")
        })?;
        pools.insert(url.to_owned(), pool.clone());
        Ok(pool)
    }

    /// The writer pool of a region's writer URL (opened lazily, kept).
    pub async fn writer(&self, url: &str) -> Result<PgPool, String> {
        let mut pools = self.writers.lock().await;
        if let Some(pool) = pools.get(url) {
            return Ok(pool.clone());
        }
        let pool = fiberstack_plumbing::postgres::DbConfig {
            schema: self.schema.clone(),
            max_connections: 2,
            ..fiberstack_plumbing::postgres::DbConfig::new(url)
        }
        .connect_lazy()
        .map_err(|e| format!("spec.database.urlSecretRef is not a PostgreSQL URL: {e}"))?;
        pools.insert(url.to_owned(), pool.clone());
        Ok(pool)
    }
}
