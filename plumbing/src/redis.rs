//! A Redis connection whose waits are stated, not inherited from the client's defaults.
//!
//! Two shapes, both multiplexed (one socket, many concurrent commands):
//! - [`RedisConfig::connection_manager`] reconnects in the background after a failure; for
//!   long-running workers (ingest's writer, the ETL's consumer);
//! - [`RedisConfig::multiplexed`] does not; its owner drops it and connects again (the
//!   operator's stream figures).
//!
//! One rule binds the two timeouts to what runs on the connection: the response timeout must
//! outlast every blocking read (XREADGROUP BLOCK). A read the client abandons while Redis
//! still serves it hands the next entry to nobody: it stays pending until reclaimed. Set it
//! with [`RedisConfig::for_blocking_reads`].

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, Client};

use crate::redact;

/// How much longer than its longest blocking read a connection waits for an answer.
pub const BLOCKING_READ_MARGIN: Duration = Duration::from_secs(10);

/// Where Redis is and how long its connection waits.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`, `rediss://` for TLS.
    pub url: String,
    /// Longest one connection attempt may take.
    pub connect_timeout: Duration,
    /// Longest a command waits for its answer.
    pub response_timeout: Duration,
    /// Connection attempts after the first, when connecting or reconnecting (connection
    /// manager only).
    pub reconnect_retries: usize,
    /// Longest wait between reconnection attempts, which grow exponentially from 100 ms
    /// (connection manager only); unbounded when `None`.
    pub reconnect_max_delay: Option<Duration>,
}

/// Why Redis could not be reached; the message names the URL without its password.
#[derive(Debug, thiserror::Error)]
pub enum RedisConnectError {
    #[error("Redis URL {url}: {source}")]
    Url {
        url: String,
        source: ::redis::RedisError,
    },
    #[error("connecting to Redis at {url}: {source}")]
    Connect {
        url: String,
        source: ::redis::RedisError,
    },
}

impl RedisConnectError {
    /// A stable name of the error's kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisConnectError::Url { .. } => "url",
            RedisConnectError::Connect { .. } => "connect",
        }
    }
}

impl RedisConfig {
    /// The Redis client's own defaults, written out: 1 s to connect, 500 ms per answer, 6
    /// reconnection attempts with no cap on the wait between them.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(500),
            reconnect_retries: 6,
            reconnect_max_delay: None,
        }
    }

    /// For a connection whose reads block for up to `block`: answers are awaited
    /// [`BLOCKING_READ_MARGIN`] longer than that.
    pub fn for_blocking_reads(self, block: Duration) -> Self {
        Self {
            response_timeout: block + BLOCKING_READ_MARGIN,
            ..self
        }
    }

    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// A connection that reconnects by itself; the first connection is made now, so an
    /// unreachable Redis is reported at once.
    pub async fn connection_manager(&self) -> Result<ConnectionManager, RedisConnectError> {
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(self.reconnect_retries);
        if let Some(max) = self.reconnect_max_delay {
            config = config.set_max_delay(max);
        }
        self.client()?
            .get_connection_manager_with_config(config)
            .await
            .map_err(|source| self.connect_error(source))
    }

    /// One connection, made now; after a failure its owner drops it and connects again.
    pub async fn multiplexed(&self) -> Result<MultiplexedConnection, RedisConnectError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        self.client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| self.connect_error(source))
    }

    fn client(&self) -> Result<Client, RedisConnectError> {
        Client::open(self.url.as_str()).map_err(|source| RedisConnectError::Url {
            url: self.redacted_url(),
            source,
        })
    }

    fn connect_error(&self, source: ::redis::RedisError) -> RedisConnectError {
        RedisConnectError::Connect {
            url: self.redacted_url(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 1.
    const REFUSED: &str = "redis://:s3cret@127.0.0.1:1";

    fn message(e: &RedisConnectError) -> String {
        crate::error_chain(e)
    }

    #[test]
    fn defaults_are_the_clients_and_blocking_reads_get_the_margin() {
        let config = RedisConfig::new("redis://r");
        assert_eq!(config.connect_timeout, Duration::from_secs(1));
        assert_eq!(config.response_timeout, Duration::from_millis(500));
        let blocking = config.for_blocking_reads(Duration::from_secs(1));
        assert_eq!(blocking.response_timeout, Duration::from_secs(11));
        assert_eq!(blocking.connect_timeout, Duration::from_secs(1));
        assert!(
            RedisConfig::new("redis://r")
                .for_blocking_reads(Duration::from_secs(30))
                .response_timeout
                > Duration::from_secs(30)
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_without_the_password() {
        let config = RedisConfig {
            reconnect_retries: 0,
            ..RedisConfig::new(REFUSED)
        };
        let errors = [
            config.connection_manager().await.expect_err("refused"),
            config.multiplexed().await.expect_err("refused"),
        ];
        for e in errors {
            assert_eq!(e.kind(), "connect");
            let text = message(&e);
            assert!(text.contains("redis://:***@127.0.0.1:1"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_silent_server_is_given_up_on_after_the_connect_timeout() {
        // Accepts the TCP connection and never answers the handshake.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = RedisConfig {
            connect_timeout: Duration::from_millis(300),
            response_timeout: Duration::from_millis(300),
            reconnect_retries: 0,
            ..RedisConfig::new(format!("redis://{addr}"))
        };
        let started = std::time::Instant::now();
        let e = config.multiplexed().await.expect_err("no answer");
        assert_eq!(e.kind(), "connect");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_malformed_url_is_refused_without_the_password() {
        let e = RedisConfig::new("http://:s3cret@127.0.0.1:1")
            .multiplexed()
            .await
            .expect_err("not a Redis URL");
        assert_eq!(e.kind(), "url");
        assert!(!message(&e).contains("s3cret"), "{}", message(&e));
    }
}
