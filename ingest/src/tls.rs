//! HTTPS: the router served over rustls (ring), with a certificate read from PEM files — a
//! mounted `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`), as cert-manager writes it — and
//! re-read when the files change, so a renewed certificate is served without a restart.
//!
//! The files are polled rather than watched with inotify: a Secret volume is updated by
//! swapping a `..data` symlink, which never modifies the watched files themselves; reading
//! through the paths follows whatever the symlinks point to now. A new pair is taken only
//! when it parses and its key matches its certificate; otherwise the running one stays (a
//! writer that replaces the two files one at a time is caught up at the next poll).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {cause}")]
    Key { path: PathBuf, cause: String },
    #[error("the key {key} does not belong to the certificate {cert}: {cause}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        cause: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate served, re-read from its files by [`ReloadingCertificate::reload`].
pub struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' bytes as last read: a reload that finds them unchanged parses nothing.
    read: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

impl ReloadingCertificate {
    /// Loads the pair; an unusable pair is an error here, at start.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let certified = Self::parse(cert, key, &cert_pem, &key_pem)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            read: Mutex::new((cert_pem, key_pem)),
        }))
    }

    fn parse(
        cert: &Path,
        key: &Path,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertifiedKey, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::NoCertificate {
                path: cert.to_path_buf(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.to_path_buf(),
            });
        }
        let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
            path: key.to_path_buf(),
            cause: e.to_string(),
        })?;
        let signing = provider::sign::any_supported_type(&private).map_err(|e| TlsError::Key {
            path: key.to_path_buf(),
            cause: e.to_string(),
        })?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            cause: e.to_string(),
        })?;
        Ok(certified)
    }

    /// Re-reads the files: `Ok(true)` when a new certificate is now served, `Ok(false)` when
    /// they are unchanged, an error (the running certificate kept) when the new pair is not
    /// usable.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let mut last = self.read.lock().expect("read lock");
        if last.0 == cert_pem && last.1 == key_pem {
            return Ok(false);
        }
        let certified = Self::parse(&self.cert, &self.key, &cert_pem, &key_pem)?;
        *self.current.write().expect("certificate lock") = Arc::new(certified);
        *last = (cert_pem, key_pem);
        Ok(true)
    }

    /// Reloads every `every`, for as long as the server runs; a failed reload is logged
    /// once per change of its message.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(cert = %self.cert.display(), "TLS certificate changed; serving the new one");
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    let message = e.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::warn!(error = %message, "TLS certificate files changed but are not usable; serving the previous one");
                        last_error = Some(message);
                    }
                }
            }
        }
    }

    /// A rustls server configuration that serves this certificate (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (at most `grace`). Each request carries its peer's
/// `ConnectInfo<SocketAddr>`, as `axum::serve` with connect info gives it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: Arc<ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service =
                TowerToHyperService::new(
                    router.layer(axum::Extension(ConnectInfo::<SocketAddr>(peer))),
                );
            let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Each connection finishes its request in flight, then closes.
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the grace period; stopping");
    }
    Ok(())
}
