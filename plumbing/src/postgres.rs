//! The PostgreSQL pool: one place that knows about schemas, roles and connection limits.
//!
//! Two kinds of pool, for the two roles of DESIGN.md §4:
//! - the writer's ([`DbConfig::connect`]): `fiber-etl` creates its schema if missing;
//! - a reader's ([`DbConfig::connect_read_only`], [`DbConfig::connect_lazy_read_only`]): the
//!   read API and the operator; every transaction is read-only and the schema is only
//!   searched, never created (a reader role may not create schemas).
//!
//! TLS is sqlx's, from the URL (`sslmode`, `sslrootcert`), as libpq reads it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool};

use crate::redact;

/// How long a lazily connecting reader waits for a connection before the query fails: its
/// caller reports the database as unavailable and tries again next round, rather than
/// stalling on a database that is down.
pub const LAZY_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

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
    #[error(
        "schema name {0:?}: use lowercase letters, digits and underscores, starting with a letter or underscore, at most 63"
    )]
    Schema(String),
}

impl DbError {
    /// A stable name of the error's kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::Url { .. } => "url",
            DbError::Connect { .. } => "connect",
            DbError::Schema(_) => "schema",
        }
    }
}

/// Whether `name` is a schema name that can be placed in a statement as it is: a plain
/// lowercase identifier, which PostgreSQL takes without quoting and folds to itself.
pub fn valid_schema(name: &str) -> bool {
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

    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// The writer's pool: every connection uses `schema` (created if missing) ahead of
    /// `public`, where extensions such as TimescaleDB put their functions.
    pub async fn connect(&self) -> Result<PgPool, DbError> {
        let options = self.options()?;
        // The name was checked by `options`: safe to place in the statement.
        let setup = self.schema.as_ref().map(|schema| {
            format!("create schema if not exists {schema}; set search_path = {schema}, public")
        });
        self.check(&options, setup.as_deref()).await?;
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .after_connect(move |conn, _meta| {
                let setup = setup.clone();
                Box::pin(async move {
                    if let Some(sql) = setup {
                        conn.execute(sqlx::AssertSqlSafe(sql)).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| self.connect_error(source))
    }

    /// A reader's pool, its first connection made at once: a refused connection or a bad
    /// password stops the caller at start, with the server's own words.
    pub async fn connect_read_only(&self) -> Result<PgPool, DbError> {
        let options = self.read_only_options()?;
        self.check(&options, None).await?;
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .connect_with(options)
            .await
            .map_err(|source| self.connect_error(source))
    }

    /// A reader's pool that connects on first use, so its caller starts and keeps running
    /// without a database; a query waits at most [`LAZY_ACQUIRE_TIMEOUT`] for a connection.
    /// Only a malformed URL or schema name fails here.
    pub fn connect_lazy_read_only(&self) -> Result<PgPool, DbError> {
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(LAZY_ACQUIRE_TIMEOUT)
            .connect_lazy_with(self.read_only_options()?))
    }

    /// A writer's pool that connects on first use, for a caller with occasional writes that
    /// must keep running without a database (the operator's alert history): the schema, which
    /// must exist, ahead of `public`; a query waits at most [`LAZY_ACQUIRE_TIMEOUT`].
    pub fn connect_lazy(&self) -> Result<PgPool, DbError> {
        let mut options = self.options()?;
        if let Some(schema) = &self.schema {
            options = options.options([("search_path", format!("{schema}, public"))]);
        }
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(LAZY_ACQUIRE_TIMEOUT)
            .connect_lazy_with(options))
    }

    fn options(&self) -> Result<PgConnectOptions, DbError> {
        let options = PgConnectOptions::from_str(&self.url).map_err(|source| DbError::Url {
            url: self.redacted_url(),
            source,
        })?;
        if let Some(schema) = &self.schema
            && !valid_schema(schema)
        {
            return Err(DbError::Schema(schema.clone()));
        }
        Ok(options)
    }

    /// Set at connection start (no statement per connection, and a lazy pool needs none):
    /// read-only transactions, and the schema ahead of `public`.
    fn read_only_options(&self) -> Result<PgConnectOptions, DbError> {
        let mut options = self
            .options()?
            .options([("default_transaction_read_only", "on")]);
        if let Some(schema) = &self.schema {
            options = options.options([("search_path", format!("{schema}, public"))]);
        }
        Ok(options)
    }

    /// One direct connection first, running the pool's `setup` statement: a refused
    /// connection, a bad password or a missing right (a reader cannot create the writer's
    /// schema) is reported at once, with the server's own words, instead of as a pool timeout
    /// after the pool retried for half a minute.
    async fn check(&self, options: &PgConnectOptions, setup: Option<&str>) -> Result<(), DbError> {
        let mut conn = options
            .connect()
            .await
            .map_err(|source| self.connect_error(source))?;
        if let Some(sql) = setup {
            conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                .await
                .map_err(|source| self.connect_error(source))?;
        }
        conn.close().await.ok();
        Ok(())
    }

    fn connect_error(&self, source: sqlx::Error) -> DbError {
        DbError::Connect {
            url: self.redacted_url(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 1.
    const REFUSED: &str = "postgres://fiber:s3cret@127.0.0.1:1/fiber?sslmode=disable";

    fn message(e: &DbError) -> String {
        crate::error_chain(e)
    }

    #[test]
    fn schema_names() {
        assert!(valid_schema("fiberstack"));
        assert!(valid_schema("t_1"));
        assert!(valid_schema("_x"));
        assert!(valid_schema(&"x".repeat(63)));
        for bad in ["", "1x", "a-b", "A", "a;drop", "a b", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_at_once_without_the_password() {
        for connect in [
            DbConfig::new(REFUSED).connect().await,
            DbConfig::new(REFUSED).connect_read_only().await,
        ] {
            let e = connect.expect_err("nothing listens on port 1");
            assert_eq!(e.kind(), "connect");
            let text = message(&e);
            assert!(
                text.contains("postgres://fiber:***@127.0.0.1:1/fiber"),
                "{text}"
            );
            assert!(text.contains("refused"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_lazy_reader_starts_without_a_database_and_fails_on_use() {
        let pool = DbConfig::new(REFUSED)
            .connect_lazy_read_only()
            .expect("a well-formed URL");
        let started = std::time::Instant::now();
        let e = sqlx::query("select 1").execute(&pool).await.unwrap_err();
        assert!(
            started.elapsed() < LAZY_ACQUIRE_TIMEOUT + Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn malformed_urls_are_refused_without_the_password() {
        for url in [
            "postgres://fiber:s3cret@db:port/fiber",
            "postgres://fiber:s3cret@db/fiber?sslmode=sometimes",
        ] {
            for e in [
                DbConfig::new(url).connect().await.unwrap_err(),
                DbConfig::new(url).connect_lazy_read_only().unwrap_err(),
            ] {
                assert_eq!(e.kind(), "url", "{url}: {e}");
                let text = message(&e);
                assert!(!text.contains("s3cret"), "{text}");
            }
        }
    }

    #[tokio::test]
    async fn bad_schema_names_are_refused_before_connecting() {
        let config = DbConfig {
            schema: Some("fiber; drop table metrics".into()),
            ..DbConfig::new(REFUSED)
        };
        // Refused as a schema, not as a connection: nothing was tried.
        assert_eq!(config.connect().await.unwrap_err().kind(), "schema");
        assert_eq!(
            config.connect_read_only().await.unwrap_err().kind(),
            "schema"
        );
        assert_eq!(
            config.connect_lazy_read_only().unwrap_err().kind(),
            "schema"
        );
    }
}
