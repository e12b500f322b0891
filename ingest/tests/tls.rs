//! HTTPS: the `fiber-ingest` binary given a certificate and key as a mounted
//! `kubernetes.io/tls` Secret holds them (`tls.crt`, `tls.key` behind a `..data` symlink),
//! from a certificate authority made in the test. A client that trusts only that authority
//! writes a batch over HTTPS (202, in real Redis); when the Secret's files are swapped for a
//! renewed certificate the new one is served without a restart, and requests sent all
//! through the rotation are all answered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fiberstack_e2e::tls::Authority;
use fiberstack_e2e::{LocalEnv, ReservedPort, terminate, unique_name, wait_for};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "tls-test-token-0123456789";

/// Writes a certificate as the kubelet updates a Secret volume: the files in a new
/// directory, then the `..data` symlink swapped to it in one rename.
fn publish(dir: &Path, version: &str, cert: &str, key: &str) -> Result<()> {
    let data = dir.join(version);
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("tls.crt"), cert)?;
    std::fs::write(data.join("tls.key"), key)?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for file in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(file)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file))?;
        }
    }
    Ok(())
}

/// A client that trusts `ca` alone.
fn client(ca: &Authority) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let der = CertificateDer::from_pem(&ca.pem)?;
    roots.add(der)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Every connection a full handshake, as a new client's: a resumed session would carry on
    // with the certificate of the session it resumes, and show nothing of a rotation.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

trait FromPem: Sized {
    fn from_pem(pem: &str) -> Result<Self>;
}

impl FromPem for CertificateDer<'static> {
    fn from_pem(pem: &str) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
    }
}

/// One HTTPS request on a fresh connection: the common name of the certificate served,
/// the status and the body.
async fn request(
    tls: &tokio_rustls::TlsConnector,
    port: u16,
    head: &str,
    body: &[u8],
) -> Result<(String, u16, String)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let mut stream = tls.connect(name, tcp).await?;
    let served = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate served")?
        .clone();
    let request = format!(
        "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = answer
        .split(' ')
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Ok((common_name(&served)?, status, body))
}

/// The served certificate's common name, found by its DER encoding (OID 2.5.4.3, then a
/// UTF8String): enough to tell the test's two certificates apart.
fn common_name(der: &CertificateDer<'_>) -> Result<String> {
    let bytes = der.as_ref();
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    // The subject comes after the issuer: the last common name is the subject's.
    let at = bytes
        .windows(oid.len())
        .rposition(|w| w == oid)
        .context("no common name")?;
    let len = bytes[at + oid.len() + 1] as usize;
    let start = at + oid.len() + 2;
    Ok(String::from_utf8_lossy(&bytes[start..start + len]).into_owned())
}

struct Ingest {
    child: Child,
    port: ReservedPort,
    region: String,
    log: PathBuf,
}

async fn start(dir: &Path) -> Result<Ingest> {
    let env = LocalEnv::load()?;
    let port = ReservedPort::new()?;
    let region = unique_name("tls");
    let log = dir.join("ingest.log");
    let child = Command::new(env!("CARGO_BIN_EXE_fiber-ingest"))
        .args(["--region", &region, "--listen", &port.addr().to_string()])
        .env("REDIS_URL", &env.redis_url)
        .env("FIBER_TOKEN", TOKEN)
        .env("FIBER_TLS_CERT_FILE", dir.join("tls.crt"))
        .env("FIBER_TLS_KEY_FILE", dir.join("tls.key"))
        .env("FIBER_TLS_RELOAD_SECS", "1")
        .env("FIBER_RATE_PER_NODE", "1000")
        .env("FIBER_RATE_BURST", "1000")
        .env("FIBER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    Ok(Ingest {
        child,
        port,
        region,
        log,
    })
}

fn batch(region: &str) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "probe": "fiberstack/accra-edge", "region": region, "country": "GH",
        "node": "gh-accra-1", "agent_version": "0.1.0",
        "samples": [{ "time": chrono::Utc::now(), "target": "db", "kind": "tcp", "up": true,
                      "latency_ms": 1.5, "address": "127.0.0.1:5432" }],
    }))?)
}

#[tokio::test]
async fn https_serves_the_mounted_certificate_and_a_renewed_one_without_restart() -> Result<()> {
    let dir = std::env::temp_dir().join(unique_name("fiber-ingest-tls"));
    std::fs::create_dir_all(&dir)?;
    let ca = Authority::new("fiberstack test CA")?;
    let (cert, key) = ca.leaf("ingest-first", &["localhost", "127.0.0.1"])?;
    publish(&dir, "v1", &cert, &key)?;
    let mut ingest = start(&dir).await?;
    let port = ingest.port.addr().port();
    let tls = client(&ca)?;

    let outcome = async {
        wait_for(
            "fiber-ingest up over HTTPS",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                Ok(match request(&tls, port, "GET /healthz HTTP/1.1", b"").await {
                    Ok((_, 200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        let head = format!(
            "POST /api/v1/samples HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json"
        );
        let (served, status, body) = request(&tls, port, &head, &batch(&ingest.region)?).await?;
        assert_eq!((served.as_str(), status), ("ingest-first", 202), "{body}");
        let mut redis = LocalEnv::load()?.redis().await?;
        let stored: usize = redis::AsyncCommands::xlen(
            &mut redis,
            fiberstack_model::stream::samples_stream(&ingest.region),
        )
        .await?;
        assert_eq!(stored, 1);

        // Plain HTTP on the HTTPS port gets no answer a client could take for one.
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP was served");

        // Requests keep coming while the certificate is renewed: every one is answered.
        let sender = {
            let tls = tls.clone();
            let head = head.clone();
            let body = batch(&ingest.region)?;
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..400 {
                    answers.push(request(&tls, port, &head, &body).await.map(|(cn, s, b)| {
                        // The body only where the status is not the expected one.
                        (cn, s, if s == 202 { String::new() } else { b })
                    }));
                    if matches!(answers.last(), Some(Ok((cn, _, _))) if cn == "ingest-second") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                answers
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (cert, key) = ca.leaf("ingest-second", &["localhost", "127.0.0.1"])?;
        publish(&dir, "v2", &cert, &key)?;
        let answers = sender.await?;
        let failed: Vec<_> = answers.iter().filter(|a| !matches!(a, Ok((_, 202, _)))).collect();
        assert!(failed.is_empty(), "requests failed during the rotation: {failed:?}");
        assert!(
            matches!(answers.last(), Some(Ok((cn, 202, _))) if cn == "ingest-second"),
            "the renewed certificate was not served within {} requests",
            answers.len()
        );
        assert!(
            matches!(answers.first(), Some(Ok((cn, 202, _))) if cn == "ingest-first"),
            "{answers:?}"
        );
        let first_renewed = answers
            .iter()
            .position(|a| matches!(a, Ok((cn, _, _)) if cn == "ingest-second"))
            .unwrap_or_default();
        println!(
            "rotation: {} requests every 25 ms over fresh connections, all 202; the renewed certificate from request {} on (files polled every 1 s)",
            answers.len(),
            first_renewed + 1
        );

        // A renewal that is not usable (a key of another certificate) is not taken: the
        // running certificate stays, and requests keep being answered.
        let (_, stranger) = ca.leaf("stranger", &["localhost", "127.0.0.1"])?;
        publish(&dir, "v3", &cert, &stranger)?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (served, status, _) = request(&tls, port, "GET /healthz HTTP/1.1", b"").await?;
        assert_eq!((served.as_str(), status), ("ingest-second", 200));
        anyhow::Ok(())
    }
    .await;
    let stopped = terminate(&mut ingest.child, Duration::from_secs(10)).await;
    let stderr = std::fs::read_to_string(&ingest.log).unwrap_or_default();
    outcome.map_err(|e| e.context(format!("fiber-ingest's stderr:\n{stderr}")))?;
    assert!(stopped?.success(), "{stderr}");
    assert!(
        stderr.contains("does not belong to the certificate"),
        "the refused renewal is logged: {stderr}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_without_its_key_or_a_bad_file_is_refused_at_start() -> Result<()> {
    let dir = std::env::temp_dir().join(unique_name("fiber-ingest-tls-bad"));
    std::fs::create_dir_all(&dir)?;
    let ca = Authority::new("fiberstack test CA")?;
    let (cert, _) = ca.leaf("a", &["localhost", "127.0.0.1"])?;
    let (_, other_key) = ca.leaf("b", &["localhost", "127.0.0.1"])?;
    for (what, cert, key, expected) in [
        (
            "a key of another certificate",
            cert.as_str(),
            other_key.as_str(),
            "does not belong to the certificate",
        ),
        (
            "no certificate",
            "not a pem",
            other_key.as_str(),
            "holds no PEM certificate",
        ),
        (
            "no key",
            cert.as_str(),
            "not a pem",
            "is not a PEM private key",
        ),
    ] {
        publish(&dir, what, cert, key)?;
        let mut ingest = start(&dir).await?;
        let status = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(status) = ingest.child.try_wait()? {
                    return anyhow::Ok(status);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .with_context(|| format!("{what}: fiber-ingest did not exit"))??;
        let stderr = std::fs::read_to_string(&ingest.log)?;
        if status.success() || !stderr.contains(expected) {
            bail!("{what}: exit {status}, stderr: {stderr}");
        }
    }
    // Only one of the two files given.
    let output = Command::new(env!("CARGO_BIN_EXE_fiber-ingest"))
        .args(["--region", "x", "--tls-cert-file", "/nonexistent"])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("FIBER_TOKEN", TOKEN)
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-key-file"), "{stderr}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
