//! Below the checks and the connections: name resolution and the words for socket errors,
//! shared by [`crate::checks`] and [`crate::connect`].

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Resolves `host` (an IP literal or a name) to its first address, and how long the lookup
/// took when one was needed.
pub async fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(SocketAddr, Option<Duration>), String> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok((SocketAddr::new(ip, port), None));
    }
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(format!("dns: resolving {host} timed out after {timeout:?}")),
        Ok(Err(e)) => Err(format!("dns: cannot resolve {host}: {e}")),
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(a) => Ok((a, Some(started.elapsed()))),
            None => Err(format!("dns: {host} has no address")),
        },
    }
}

/// Text of a failed connect, by cause.
pub fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::TimedOut => "timeout".into(),
        ErrorKind::HostUnreachable => format!("host unreachable: {e}"),
        ErrorKind::NetworkUnreachable => format!("network unreachable: {e}"),
        _ => format!("connect failed: {e}"),
    }
}
