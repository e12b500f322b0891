//! How FiberStack's binaries reach the outside, written once.
//!
//! What belongs here is what several binaries need to talk to a service they do not own, with
//! the same limits and the same care for secrets:
//! - [`postgres`]: the database pool — the writer's (creates its schema) and a reader's
//!   (read-only transactions, optionally connecting on first use);
//! - [`redis`]: a Redis connection whose connect and response timeouts are stated, with the
//!   rule that a response timeout outlasts any blocking read;
//! - [`backoff`]: how long to wait before retrying, exponential with jitter;
//! - [`metrics`]: the `/metrics` exposition (content type, encoding, counters read from
//!   atomics).
//!
//! What does not belong: the wire types and their validation (`fiberstack-model`), logs and
//! traces (`fiberstack-telemetry`), and anything one part does with the connection once it has
//! it — queries, stream commands, HTTP routes stay in the part that owns them. A part links
//! only the model, telemetry and this crate, never another part's crate.
//!
//! Every error message names the URL through [`redact`], never with its password.
//! `postgres` and `redis` are features (both default), so a binary that talks to neither (the
//! probe) does not build sqlx or the Redis client.

pub mod backoff;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

/// Query parameters that carry a password: libpq's `password`, and redis-rs' `pass` (Unix
/// socket URLs).
const PASSWORD_PARAMS: [&str; 2] = ["password", "pass"];

/// `url` with its password replaced by `***`, for messages and logs: the one in the user-info
/// part and any `password=`/`pass=` query parameter. A URL that does not parse is redacted by
/// its text, erring towards hiding too much: everything between the first `:` after the scheme
/// and the last `@`.
pub fn redact(url: &str) -> String {
    let redacted = match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => redact_text(url),
    };
    redact_query(&redacted)
}

fn redact_text(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    match (rest.find(':'), rest.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => {
            format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            )
        }
        _ => url.to_owned(),
    }
}

/// Replaces the values of [`PASSWORD_PARAMS`] in the query, leaving the rest as written.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if PASSWORD_PARAMS.contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// An error and all its sources, as `anyhow`'s `{:#}` prints them: what the tests search
/// for a leaked password.
#[cfg(test)]
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_user_info_password() {
        assert_eq!(
            redact("postgres://etl:s3cret@db:5432/fiber?sslmode=disable"),
            "postgres://etl:***@db:5432/fiber?sslmode=disable"
        );
        assert_eq!(
            redact("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for url in [
            "postgres://db/fiber",
            "postgres://etl@db/fiber?sslmode=verify-full&sslrootcert=/etc/ca.crt",
            "redis://127.0.0.1:16379",
        ] {
            assert_eq!(redact(url), url);
        }
    }

    #[test]
    fn redacts_password_query_parameters() {
        assert_eq!(
            redact("postgres://db/fiber?user=etl&password=s3cret&sslmode=require"),
            "postgres://db/fiber?user=etl&password=***&sslmode=require"
        );
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
    }

    #[test]
    fn redacts_urls_that_do_not_parse() {
        // A bad port, and a password with an unescaped '/': neither parses as a URL.
        for (url, expected) in [
            (
                "postgres://etl:s3cret@db:port/fiber",
                "postgres://etl:***@db:port/fiber",
            ),
            (
                "postgres://etl:s3/cret@db/fiber",
                "postgres://etl:***@db/fiber",
            ),
            (
                "postgres://etl:s3cret@db:port/fiber?password=again",
                "postgres://etl:***@db:port/fiber?password=***",
            ),
        ] {
            assert!(url::Url::parse(url).is_err(), "{url} parses");
            let redacted = redact(url);
            assert_eq!(redacted, expected);
            assert!(!redacted.contains("s3") && !redacted.contains("again"));
        }
        assert_eq!(redact("not a url"), "not a url");
    }
}
