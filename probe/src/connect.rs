//! Opening HTTP(S) connections with each phase timed (resolve, TCP connect, TLS handshake)
//! and sending one request on them. Used by the HTTP check, which reports the phases, and by
//! the delivery, which only needs the request. reqwest hides the phases, hence hyper here.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// The TLS client settings, built once: the system's trust roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` replace them, as OpenSSL does) with the ring provider.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(native_roots().iter().cloned());
            if added == 0 {
                tracing::warn!("no trust roots found; every HTTPS check and delivery will fail certificate verification (set SSL_CERT_FILE)");
            }
            client_config(roots)
        })
        .clone()
}

/// [`tls_config`] trusting also the authorities of `pem` (a CA file or bundle, PEM): for an
/// ingest whose certificate a private CA signed. An error names what is wrong with `pem`.
pub fn tls_config_with(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let extra = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if extra.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(native_roots().iter().cloned());
    for (i, cert) in extra.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} of the file is not usable: {e}", i + 1))?;
    }
    Ok(client_config(roots))
}

/// The system's trust roots, loaded once (reading them takes a while).
fn native_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "a trust root could not be loaded");
        }
        found.certs
    })
}

fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// How long each phase of a request took. Absent phases were not needed (an IP literal needs
/// no lookup, plain HTTP no TLS).
#[derive(Debug, Clone, Default)]
pub struct Phases {
    pub dns: Option<Duration>,
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
    pub ttfb: Option<Duration>,
    pub total: Option<Duration>,
    /// DER of the server's leaf certificate (HTTPS only).
    pub leaf_cert: Option<Vec<u8>>,
}

/// A response with its body read (up to the limit given).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub phases: Phases,
}

/// Why a request failed, by phase.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{0}")]
    Dns(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("http: {0}")]
    Http(String),
    #[error("timeout during {phase} after {after:?}")]
    Timeout {
        phase: &'static str,
        after: Duration,
    },
}

impl RequestError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Url { .. } => "url",
            Self::Dns(_) => "dns",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Http(_) => "http",
            Self::Timeout { .. } => "timeout",
        }
    }
}

async fn within<T>(
    deadline: tokio::time::Instant,
    phase: &'static str,
    started: Instant,
    f: impl Future<Output = T>,
) -> Result<T, RequestError> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| RequestError::Timeout {
            phase,
            after: started.elapsed(),
        })
}

/// Sends `request` (its URI absolute) on a new connection, reading at most `body_limit` bytes
/// of the response body, all within `timeout`.
pub async fn send(
    request: Request<Full<Bytes>>,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    body_limit: usize,
) -> Result<Response, RequestError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let uri = request.uri().clone();
    let bad = |reason: &str| RequestError::Url {
        url: uri.to_string(),
        reason: reason.into(),
    };
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let mut phases = Phases::default();

    let (addr, dns) = crate::net::resolve(&host, port, timeout)
        .await
        .map_err(RequestError::Dns)?;
    phases.dns = dns;

    let t = Instant::now();
    let tcp = within(
        deadline,
        "connect",
        started,
        tokio::net::TcpStream::connect(addr),
    )
    .await?
    .map_err(|e| RequestError::Connect(crate::net::describe(&e)))?;
    let _ = tcp.set_nodelay(true);
    phases.connect = Some(t.elapsed());

    let mut request = request;
    if !request.headers().contains_key(hyper::header::HOST) {
        let value = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            request.headers_mut().insert(hyper::header::HOST, v);
        }
    }
    // HTTP/1 wants the path in the request line, not the whole URI.
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *request.uri_mut() = path.parse().map_err(|_| bad("bad path"))?;

    if https {
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| bad(&format!("host is not a TLS server name: {e}")))?;
        let t = Instant::now();
        let stream = within(
            deadline,
            "tls",
            started,
            tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await?
        .map_err(|e| RequestError::Tls(e.to_string()))?;
        phases.tls = Some(t.elapsed());
        phases.leaf_cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        exchange(stream, request, deadline, started, body_limit, phases).await
    } else {
        exchange(tcp, request, deadline, started, body_limit, phases).await
    }
}

async fn exchange<S>(
    io: S,
    request: Request<Full<Bytes>>,
    deadline: tokio::time::Instant,
    started: Instant,
    body_limit: usize,
    mut phases: Phases,
) -> Result<Response, RequestError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| RequestError::Http(e.to_string());
    let (mut sender, connection) = within(
        deadline,
        "handshake",
        started,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await?
    .map_err(http)?;
    let driver = tokio::spawn(connection);
    let t = Instant::now();
    let response = within(deadline, "request", started, sender.send_request(request))
        .await?
        .map_err(http);
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    };
    phases.ttfb = Some(t.elapsed());
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut collected = Vec::new();
    let read = within(deadline, "body", started, async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http)?;
            if let Some(data) = frame.data_ref() {
                let room = body_limit.saturating_sub(collected.len());
                collected.extend_from_slice(&data[..data.len().min(room)]);
                if collected.len() >= body_limit {
                    break;
                }
            }
        }
        Ok::<_, RequestError>(())
    })
    .await;
    driver.abort();
    read??;
    phases.total = Some(started.elapsed());
    Ok(Response {
        status,
        headers,
        body: Bytes::from(collected),
        phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_file_must_hold_pem_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        assert!(tls_config_with(ca.as_bytes()).is_ok());
        // A bundle: every certificate of it is taken.
        assert!(tls_config_with(format!("{ca}{ca}").as_bytes()).is_ok());
        let e = tls_config_with(b"").unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        // The key file given by mistake holds no certificate either.
        let e = tls_config_with(key.serialize_pem().as_bytes()).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
