//! HTTP(S): one GET per round with its phases timed apart (`dns_ms`, `connect_ms`, `tls_ms`,
//! `ttfb_ms`, `total_ms` in `metadata`) so a slow network and a slow server can be told
//! apart, the status checked against `expectStatus` (any 2xx when empty), the body
//! optionally searched, and for HTTPS when the leaf certificate expires (`cert_not_after`,
//! `cert_days_to_expiry`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use fiberstack_model::{CheckKind, HttpCheck, Sample};
use http_body_util::Full;
use serde_json::json;

use super::{CheckContext, down, millis};
use crate::connect::{self, Phases};

/// Redirects followed at most, when `followRedirects` is on.
pub const MAX_REDIRECTS: usize = 10;
/// Bytes of the body kept for `bodyContains`; the rest is not read.
pub const BODY_LIMIT: usize = 1 << 20;

fn request(url: &str) -> Result<hyper::Request<Full<Bytes>>, String> {
    hyper::Request::get(url)
        .header(
            "user-agent",
            concat!("fiber-probe/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("invalid URL {url:?}: {e}"))
}

pub async fn run(check: &HttpCheck, ctx: &CheckContext) -> Sample {
    let started = Instant::now();
    let mut url = check.url.clone();
    let mut redirects = 0usize;
    let response = loop {
        let remaining = ctx.timeout.saturating_sub(started.elapsed());
        let req = match request(&url) {
            Ok(r) => r,
            Err(e) => return down(CheckKind::Http, url, e),
        };
        let body_limit = if check.body_contains.is_some() {
            BODY_LIMIT
        } else {
            0
        };
        let response = match connect::send(req, &ctx.tls, remaining, body_limit).await {
            Ok(r) => r,
            Err(e) => return down(CheckKind::Http, url, e.to_string()),
        };
        let location = response
            .headers
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok());
        match location {
            Some(loc) if check.follow_redirects && (300..400).contains(&response.status) => {
                if redirects == MAX_REDIRECTS {
                    let mut s = down(
                        CheckKind::Http,
                        url,
                        format!("more than {MAX_REDIRECTS} redirects"),
                    );
                    s.status_code = Some(response.status);
                    return s;
                }
                let next = url::Url::parse(&url).and_then(|base| base.join(loc));
                match next {
                    Ok(next) => url = next.to_string(),
                    Err(e) => {
                        return down(
                            CheckKind::Http,
                            url,
                            format!("redirect to an invalid location {loc:?}: {e}"),
                        );
                    }
                }
                redirects += 1;
            }
            _ => break response,
        }
    };
    let total = started.elapsed();
    let mut s = down(CheckKind::Http, check.url.clone(), String::new());
    s.error = None;
    s.status_code = Some(response.status);
    s.latency_ms = Some(millis(total));
    let expected = if check.expect_status.is_empty() {
        (200..300).contains(&response.status)
    } else {
        check.expect_status.contains(&response.status)
    };
    let body_ok = match &check.body_contains {
        Some(text) => {
            let found = String::from_utf8_lossy(&response.body).contains(text.as_str());
            (found, text.as_str())
        }
        None => (true, ""),
    };
    s.up = expected && body_ok.0;
    if !expected {
        s.error = Some(if check.expect_status.is_empty() {
            format!("status {} is not 2xx", response.status)
        } else {
            format!(
                "status {} is not one of {:?}",
                response.status, check.expect_status
            )
        });
    } else if !body_ok.0 {
        s.error = Some(super::truncate(format!(
            "body does not contain {:?}",
            body_ok.1
        )));
    }
    phases_metadata(&mut s, &response.phases, total);
    if redirects > 0 {
        s.metadata.insert("redirects".into(), json!(redirects));
    }
    s
}

fn phases_metadata(s: &mut Sample, p: &Phases, total: Duration) {
    for (key, d) in [
        ("dns_ms", p.dns),
        ("connect_ms", p.connect),
        ("tls_ms", p.tls),
        ("ttfb_ms", p.ttfb),
    ] {
        if let Some(d) = d {
            s.metadata.insert(key.into(), json!(millis(d)));
        }
    }
    s.metadata.insert("total_ms".into(), json!(millis(total)));
    if let Some(not_after) = p.leaf_cert.as_deref().and_then(not_after) {
        s.metadata.insert(
            "cert_days_to_expiry".into(),
            json!((not_after - Utc::now()).num_days()),
        );
        // The exact instant, for the operator's expiry figure and alert (days alone lose up
        // to a day).
        s.metadata.insert(
            "cert_not_after".into(),
            json!(not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        );
    }
}

/// One DER element: tag, content, rest.
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first & 0x80 == 0 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `notAfter` of an X.509 certificate: Certificate → TBSCertificate → (version?, serial,
/// signature, issuer, validity{notBefore, notAfter}). Only this one field is needed, which
/// does not warrant an ASN.1 library.
pub fn not_after(der: &[u8]) -> Option<chrono::DateTime<Utc>> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xA0 {
        rest = after; // explicit [0] version
    }
    for _ in 0..3 {
        rest = element(rest)?.2; // serial, signature algorithm, issuer
    }
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?.trim_end_matches('Z');
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest.get(r).and_then(|s| s.parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(year, num(0..2)?, num(2..4)?)?;
    let time = date.and_hms_opt(num(4..6)?, num(6..8)?, num(8..10)?)?;
    Some(time.and_utc())
}
