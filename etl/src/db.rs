//! Connecting to the database: one place that knows about schemas and connection limits.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};

/// Where FiberStack's tables live.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `postgres://user:password@host:port/database?sslmode=...`
    pub url: String,
    /// Schema for FiberStack's objects; the server's default search_path when `None`.
    pub schema: Option<String>,
    /// Most connections the pool opens.
    pub max_connections: u32,
}

/// Why the database could not be reached; the message names the URL without its password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL {url}: {source}")]
    Url { url: String, source: sqlx::Error },
    #[error("connecting to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("schema name {0:?}: use letters, digits and underscores, starting with a letter")]
    Schema(String),
}

/// The URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

impl DbConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            max_connections: 4,
        }
    }

    /// Opens a pool whose connections all use `schema` (created if missing) ahead of
    /// `public`, where extensions such as TimescaleDB put their functions.
    pub async fn connect(&self) -> Result<PgPool, DbError> {
        let options = PgConnectOptions::from_str(&self.url).map_err(|source| DbError::Url {
            url: redact(&self.url),
            source,
        })?;
        if let Some(schema) = &self.schema
            && !valid_schema(schema)
        {
            return Err(DbError::Schema(schema.clone()));
        }
        // One direct connection first: a refused connection or a bad password is reported
        // at once, with the server's own words, instead of as a pool timeout.
        options
            .connect()
            .await
            .map_err(|source| DbError::Connect {
                url: redact(&self.url),
                source,
            })?
            .close()
            .await
            .ok();
        let schema = self.schema.clone();
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .after_connect(move |conn, _meta| {
                let schema = schema.clone();
                Box::pin(async move {
                    if let Some(schema) = schema {
                        // The name was checked above: safe to place in the statement.
                        let sql = format!(
                            "create schema if not exists {schema}; set search_path = {schema}, public"
                        );
                        conn.execute(sqlx::AssertSqlSafe(sql)).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| DbError::Connect {
                url: redact(&self.url),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://etl:s3cret@db:5432/fiber?sslmode=disable"),
            "postgres://etl:***@db:5432/fiber?sslmode=disable"
        );
        assert_eq!(redact("postgres://db/fiber"), "postgres://db/fiber");
    }

    #[test]
    fn schema_names() {
        assert!(valid_schema("fiberstack"));
        assert!(valid_schema("t_1"));
        for bad in ["", "1x", "a-b", "A", "a;drop", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
