//! The measurements. Each kind has its module; each turns one round against one target into
//! one [`Sample`], down with an `error` rather than failing, so every round leaves a trace.

pub mod dns;
pub mod dns_socket;
pub mod http;
pub mod icmp;
pub mod icmp_socket;
pub mod socket_slots;
pub mod tcp;
pub mod traceroute;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fiberstack_model::{Check, Sample, Target};

pub(crate) use crate::net::resolve;

/// What every check needs besides its target.
#[derive(Clone)]
pub struct CheckContext {
    /// Longest a round may take (`timeout` of the configuration).
    pub timeout: Duration,
    /// TLS client settings for HTTPS checks (trust roots loaded once).
    pub tls: Arc<rustls::ClientConfig>,
    /// The ICMP sockets every ICMP round of this context shares, one per address family.
    pub icmp: Arc<icmp_socket::IcmpSockets>,
    /// The UDP sockets every DNS round of this context shares, one per address family.
    pub dns: Arc<dns_socket::DnsSockets>,
}

impl CheckContext {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            tls: crate::connect::tls_config(),
            icmp: Arc::default(),
            dns: Arc::default(),
        }
    }
}

/// Runs one round of the target's check. `time` of the sample is when the round started.
pub async fn run(target: &Target, ctx: &CheckContext) -> Sample {
    let time = Utc::now();
    let check = match target.check() {
        Ok(c) => c,
        Err(e) => {
            // Validation refuses such targets; a sample still says why nothing was measured.
            let mut s = Sample::new(time, &target.name, fiberstack_model::CheckKind::Tcp, false);
            s.error = Some(e.to_string());
            return s;
        }
    };
    // Boxed: a round's state lives on the heap only while the round runs, so a thousand
    // idle targets cost a thousand small tasks, not a thousand HTTP-sized futures.
    let mut sample = match check {
        Check::Icmp(c) => Box::pin(icmp::run(c, ctx)).await,
        Check::Tcp(c) => Box::pin(tcp::run(c, ctx.timeout)).await,
        Check::Http(c) => Box::pin(http::run(c, ctx)).await,
        Check::Dns(c) => Box::pin(dns::run(c, ctx)).await,
        Check::Traceroute(c) => Box::pin(traceroute::run(c, &target.name, ctx.timeout)).await,
    };
    sample.time = time;
    sample.target = target.name.clone();
    // What was measured may hold a NUL (a DNS answer, a server's error text): ingest refuses
    // a sample carrying one, so it is replaced here rather than the round lost.
    sample.scrub_nul();
    sample
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A down sample of `kind` with `error`.
pub(crate) fn down(kind: fiberstack_model::CheckKind, address: String, error: String) -> Sample {
    let mut s = Sample::new(Utc::now(), "", kind, false);
    s.address = address;
    s.error = Some(truncate(error));
    s
}

/// Errors longer than the model allows would get the whole sample rejected.
pub(crate) fn truncate(mut error: String) -> String {
    const MAX: usize = 1000;
    if error.len() > MAX {
        let mut cut = MAX;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    error
}
