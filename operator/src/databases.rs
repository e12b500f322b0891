//! The databases the operator reads fleet health from: its own `--database-url`, and each
//! region's reader (`spec.database.readerUrlSecretRef`) when the region names one, so regions
//! can be spread over several databases. Pools are read-only, opened lazily on first use per
//! URL, and kept.

use std::collections::HashMap;

use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::status::connect_lazy;

pub struct Databases {
    default: Option<PgPool>,
    schema: Option<String>,
    by_url: Mutex<HashMap<String, PgPool>>,
}

impl Databases {
    /// `default`: the pool of `--database-url`; `schema`: `--db-schema`, for every pool.
    pub fn new(default: Option<PgPool>, schema: Option<String>) -> Self {
        Self {
            default,
            schema,
            by_url: Mutex::default(),
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
}
