//! HTTPS delivery inside the cluster, as the operator renders it for a region with
//! `spec.ingest.tls`: the `fiber-probe` binary, given the region's authority as
//! `ingest.caFile` (its Secret's `ca.crt`), delivers to the real `fiber-ingest` binary
//! serving a certificate that authority signed, into real Redis; it refuses a server whose
//! certificate another authority signed, or that does not name the host of the URL, and
//! sends nothing there (the samples wait in its buffer). A renewed authority in the file is
//! taken without a restart.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};
use fiberstack_e2e::tls::Authority;
use fiberstack_e2e::{LocalEnv, unique_name, workspace_binary};
use support::*;

const INGEST_TOKEN: &str = "ingest-tls-token-0123456789";

/// `fiber-ingest` serving HTTPS with `cert`, as the operator runs it (the Secret's files given
/// by FIBER_TLS_CERT_FILE / FIBER_TLS_KEY_FILE); killed on drop.
struct Ingest {
    child: Child,
    port: ReservedPort,
    region: String,
    log: std::path::PathBuf,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ingest {
    async fn start(scratch: &Scratch, cert: &(String, String)) -> Result<Self> {
        let env = LocalEnv::load()?;
        let dir = scratch.path("tls");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("tls.crt"), &cert.0)?;
        std::fs::write(dir.join("tls.key"), &cert.1)?;
        let port = ReservedPort::new()?;
        let region = unique_name("probe-tls");
        let log = scratch.path("ingest.log");
        let child = Command::new(workspace_binary("fiber-ingest")?)
            .args(["--region", &region, "--listen", &port.addr().to_string()])
            .env("REDIS_URL", &env.redis_url)
            .env("FIBER_TOKEN", INGEST_TOKEN)
            .env("FIBER_TLS_CERT_FILE", dir.join("tls.crt"))
            .env("FIBER_TLS_KEY_FILE", dir.join("tls.key"))
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut ingest = Self {
            child,
            port,
            region,
            log,
        };
        // Listening once a TCP connection is taken (the handshake is the probe's to judge).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = ingest.child.try_wait()? {
                let stderr = std::fs::read_to_string(&ingest.log).unwrap_or_default();
                bail!("fiber-ingest exited ({status}); its stderr:\n{stderr}");
            }
            if tokio::net::TcpStream::connect(ingest.port.addr())
                .await
                .is_ok()
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "fiber-ingest did not listen on {} within 30 s",
                    ingest.port.addr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ingest)
    }

    /// The URL the probe is given: the certificate must name its host, 127.0.0.1.
    fn url(&self) -> String {
        format!("https://{}", self.port.addr())
    }

    /// Batches the region's stream holds: only what ingest answered 202.
    async fn stored(&self) -> Result<u64> {
        let mut redis = LocalEnv::load()?.redis().await?;
        let len: u64 = redis::cmd("XLEN")
            .arg(format!("fiber:samples:{}", self.region))
            .query_async(&mut redis)
            .await?;
        Ok(len)
    }

    async fn forget(&self) -> Result<()> {
        let mut redis = LocalEnv::load()?.redis().await?;
        let _: () = redis::cmd("DEL")
            .arg(format!("fiber:samples:{}", self.region))
            .query_async(&mut redis)
            .await?;
        Ok(())
    }
}

/// A probe of the ingest's region measuring one TCP target every second, trusting the
/// authorities in `ca_file` for its HTTPS ingest URL.
fn start_probe(
    scratch: &Scratch,
    ingest: &Ingest,
    ca_file: &Path,
    target: std::net::SocketAddr,
) -> ProbeProcess {
    let config = scratch.path("probe.yaml");
    std::fs::write(
        &config,
        format!(
            "node: n1\nprobe: test/probe\nregion: {region}\ncountry: GH\ninterval: 1s\ntimeout: 500ms\n\
             ingest:\n  urls: [\"{url}\"]\n  caFile: {ca}\n  batchMaxSamples: 50\n  batchMaxDelay: 300ms\n\
             buffer: {{ dir: {buffer}, maxBytes: 4Mi }}\n\
             targets:\n  - {{ name: db, tcp: {{ host: {host}, port: {port} }} }}\n",
            region = ingest.region,
            url = ingest.url(),
            ca = ca_file.display(),
            buffer = scratch.path("buf").display(),
            host = target.ip(),
            port = target.port(),
        ),
    )
    .unwrap();
    ProbeProcess::start(
        &config,
        &scratch.path("probe.log"),
        &[("FIBER_TOKEN", INGEST_TOKEN)],
    )
}

/// Waits until the stream holds a batch; the probe's log on failure.
async fn until_stored(ingest: &Ingest, probe: &ProbeProcess) -> Result<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = ingest.stored().await?;
        if stored > 0 {
            return Ok(stored);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "nothing stored in 30 s; the probe's log:\n{}\ningest's:\n{}",
                probe.log_text(),
                std::fs::read_to_string(&ingest.log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_probe_trusting_the_regions_authority_delivers_over_https() -> Result<()> {
    let scratch = Scratch::new("ingest-tls-ok");
    let (target, _t) = tcp_target().await;
    let ca = Authority::new("fiberstack region CA")?;
    let ingest = Ingest::start(&scratch, &ca.leaf("fiberstack-ingest", &["127.0.0.1"])?).await?;
    let ca_file = scratch.path("ca.crt");
    std::fs::write(&ca_file, &ca.pem)?;
    let mut probe = start_probe(&scratch, &ingest, &ca_file, target);
    let stored = until_stored(&ingest, &probe).await?;
    assert!(stored >= 1);
    assert!(probe.terminate().await.success());
    let log = probe.log_text();
    assert!(!log.contains("ingest unreachable"), "{log}");
    ingest.forget().await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_of_another_authority_is_refused_until_the_file_trusts_it() -> Result<()> {
    let scratch = Scratch::new("ingest-tls-other-ca");
    let (target, _t) = tcp_target().await;
    let trusted = Authority::new("fiberstack region CA")?;
    let other = Authority::new("someone else's CA")?;
    let ingest = Ingest::start(&scratch, &other.leaf("fiberstack-ingest", &["127.0.0.1"])?).await?;
    let ca_file = scratch.path("ca.crt");
    std::fs::write(&ca_file, &trusted.pem)?;
    let mut probe = start_probe(&scratch, &ingest, &ca_file, target);
    wait_for(
        "the probe to refuse the certificate",
        Duration::from_secs(30),
        || probe.log_text().contains("UnknownIssuer").then_some(()),
    )
    .await;
    assert_eq!(
        ingest.stored().await?,
        0,
        "a batch reached an unverified server"
    );

    // The authority renewed in the Secret (the kubelet swaps the file): taken at the next
    // send, and what waited in the buffer arrives.
    let swapped = scratch.path("ca.crt.new");
    std::fs::write(&swapped, format!("{}{}", trusted.pem, other.pem))?;
    std::fs::rename(&swapped, &ca_file)?;
    until_stored(&ingest, &probe).await?;
    assert!(probe.terminate().await.success());
    ingest.forget().await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_that_does_not_name_the_host_is_refused() -> Result<()> {
    let scratch = Scratch::new("ingest-tls-name");
    let (target, _t) = tcp_target().await;
    let ca = Authority::new("fiberstack region CA")?;
    // Signed by the trusted authority, for another service's name.
    let ingest = Ingest::start(
        &scratch,
        &ca.leaf(
            "fiberstack-ingest",
            &["fiberstack-ingest-nigeria.fiberstack.svc"],
        )?,
    )
    .await?;
    let ca_file = scratch.path("ca.crt");
    std::fs::write(&ca_file, &ca.pem)?;
    let mut probe = start_probe(&scratch, &ingest, &ca_file, target);
    wait_for(
        "the probe to refuse the server's name",
        Duration::from_secs(30),
        || {
            let log = probe.log_text();
            (log.contains("not valid for name") || log.contains("NotValidForName")).then_some(())
        },
    )
    .await;
    assert_eq!(
        ingest.stored().await?,
        0,
        "a batch reached a server of another name"
    );
    assert!(probe.terminate().await.success());
    Ok(())
}
