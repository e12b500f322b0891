//! Read and write credentials of the `fiber-ingest` binary as it is deployed (tokens from
//! mounted files, real Redis): the probe (writer) tokens write and never read, the reader
//! tokens read and never write, and two tokens of each are valid at once while one rotates;
//! a token file is re-read when it changes, so a rotation needs no restart.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};
use fiberstack_e2e::{LocalEnv, ReservedPort, terminate, unique_name, wait_for};
use fiberstack_model::{Batch, CheckKind, Sample};
use serde_json::Value;

const NEW_WRITER: &str = "writer-new-0123456789abcdef";
const OLD_WRITER: &str = "writer-old-0123456789abcdef";
const NEW_READER: &str = "reader-new-0123456789abcdef";
const OLD_READER: &str = "reader-old-0123456789abcdef";

struct Ingest {
    child: Child,
    port: ReservedPort,
    region: String,
    log: std::path::PathBuf,
}

/// Starts `fiber-ingest` with the tokens in files, as the Secrets are mounted.
async fn start(dir: &Path, writers: &str, readers: Option<&str>) -> Result<Ingest> {
    let env = LocalEnv::load()?;
    std::fs::write(dir.join("token"), writers)?;
    let reader_file = dir.join("reader");
    if let Some(readers) = readers {
        std::fs::write(&reader_file, readers)?;
    }
    let port = ReservedPort::new()?;
    let region = unique_name("credentials");
    let log = dir.join("ingest.log");
    let child = Command::new(env!("CARGO_BIN_EXE_fiber-ingest"))
        .args(["--region", &region, "--listen", &port.addr().to_string()])
        .env("REDIS_URL", &env.redis_url)
        .env("FIBER_TOKEN_FILE", dir.join("token"))
        .env("FIBER_READER_TOKEN_FILE", &reader_file)
        .env("FIBER_TOKEN_RELOAD_SECS", "1")
        .env("FIBER_LOG", "warn")
        // No database (the test's shell may export one): reads stop right after authentication.
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut ingest = Ingest {
        child,
        port,
        region,
        log,
    };
    let healthz = format!("{}/healthz", ingest.port.url());
    // Polled by hand rather than with `wait_for`: an exit is final, not "not yet".
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = ingest.child.try_wait()? {
            let stderr = std::fs::read_to_string(&ingest.log).unwrap_or_default();
            bail!("fiber-ingest exited ({status}); its stderr:\n{stderr}");
        }
        if reqwest::get(&healthz)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("fiber-ingest did not answer {healthz} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ingest)
}

impl Ingest {
    fn batch(&self) -> Batch {
        Batch {
            probe: "fiberstack/accra-edge".into(),
            region: self.region.clone(),
            country: "GH".into(),
            node: "gh-accra-1".into(),
            agent_version: "0.1.0".into(),
            samples: vec![Sample {
                latency_ms: Some(2.0),
                address: "127.0.0.1:5432".into(),
                ..Sample::new(chrono::Utc::now(), "db", CheckKind::Tcp, true)
            }],
        }
    }

    /// Status, `WWW-Authenticate` and error of a write with `token`.
    async fn write(&self, token: &str) -> Result<(u16, String, String)> {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/samples", self.port.url()))
            .bearer_auth(token)
            .json(&self.batch())
            .send()
            .await?;
        answer(response).await
    }

    /// Status, `WWW-Authenticate` and error of a read with `token`.
    async fn read(&self, token: &str) -> Result<(u16, String, String)> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/nodes", self.port.url()))
            .bearer_auth(token)
            .send()
            .await?;
        answer(response).await
    }

    async fn stop(mut self) -> Result<()> {
        let status = terminate(&mut self.child, Duration::from_secs(10)).await?;
        let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "{stderr}");
        Ok(())
    }
}

async fn answer(response: reqwest::Response) -> Result<(u16, String, String)> {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let error = body["error"].as_str().unwrap_or_default().to_owned();
    Ok((status, challenge, error))
}

fn temp_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(unique_name("fiber-ingest-credentials"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn writers_write_readers_read_and_two_of_each_are_valid_at_once() -> Result<()> {
    let dir = temp_dir()?;
    // As a Secret holds them mid-rotation: the new token, then the old, a newline at the end.
    let ingest = start(
        &dir,
        &format!("{NEW_WRITER},{OLD_WRITER}\n"),
        Some(&format!("{NEW_READER}\n{OLD_READER}\n")),
    )
    .await?;
    for writer in [NEW_WRITER, OLD_WRITER] {
        let (status, _, error) = ingest.write(writer).await?;
        assert_eq!(status, 202, "{writer}: {error}");
        // A probe's token does not read.
        let (status, challenge, error) = ingest.read(writer).await?;
        assert_eq!(status, 403, "{writer} reading: {error}");
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(error.contains("reading needs the reader token"), "{error}");
    }
    for reader in [NEW_READER, OLD_READER] {
        // Past authentication: this service has no database, which is the next thing it says.
        let (status, _, error) = ingest.read(reader).await?;
        assert_eq!(status, 503, "{reader}: {error}");
        assert!(error.contains("DATABASE_URL"), "{error}");
        // The reader's token does not write.
        let (status, challenge, error) = ingest.write(reader).await?;
        assert_eq!(status, 403, "{reader} writing: {error}");
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(error.contains("this is the reader token"), "{error}");
    }
    for wrong in ["writer-new-0123456789abcdeX", "reader-old-0123456789abcde"] {
        assert_eq!(ingest.write(wrong).await?.0, 401, "{wrong}");
        assert_eq!(ingest.read(wrong).await?.0, 401, "{wrong}");
    }
    // Both tokens in one header are no token.
    let both = format!("{NEW_WRITER},{OLD_WRITER}");
    assert_eq!(ingest.write(&both).await?.0, 401);
    ingest.stop().await?;

    // The rotation done: the old tokens are refused.
    let ingest = start(&dir, NEW_WRITER, Some(NEW_READER)).await?;
    assert_eq!(ingest.write(NEW_WRITER).await?.0, 202);
    assert_eq!(ingest.write(OLD_WRITER).await?.0, 401);
    assert_eq!(ingest.read(NEW_READER).await?.0, 503);
    assert_eq!(ingest.read(OLD_READER).await?.0, 401);
    ingest.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn without_a_reader_token_the_read_api_is_closed() -> Result<()> {
    let dir = temp_dir()?;
    // The optional reader Secret was never created: its file is absent.
    let ingest = start(&dir, NEW_WRITER, None).await?;
    let (status, challenge, error) = ingest.read(NEW_READER).await?;
    assert_eq!(status, 401, "{error}");
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(error.contains("no reader token"), "{error}");
    assert_eq!(ingest.read(NEW_WRITER).await?.0, 403);
    assert_eq!(ingest.write(NEW_WRITER).await?.0, 202);
    ingest.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_reader_token_that_also_writes_is_refused_at_start() -> Result<()> {
    let dir = temp_dir()?;
    let refused = start(
        &dir,
        &format!("{NEW_WRITER},{OLD_WRITER}"),
        Some(&format!("{NEW_READER},{OLD_WRITER}")),
    )
    .await;
    let Err(e) = refused else {
        bail!("fiber-ingest started with a reader token that is also a probe token");
    };
    assert!(
        format!("{e:#}").contains("the reader token is also a probe token"),
        "{e:#}"
    );
    // A short token among two is named.
    let refused = start(&dir, &format!("{NEW_WRITER},short"), None).await;
    let Err(e) = refused else {
        bail!("fiber-ingest started with a 5-character token");
    };
    assert!(
        format!("{e:#}").contains("token 2 of 2 is 5 characters long"),
        "{e:#}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Replaces `path` as the kubelet updates a Secret volume: the new content appears at once,
/// whole (written beside, then renamed over).
fn replace(path: &Path, content: &str) -> Result<()> {
    let beside = path.with_extension("new");
    std::fs::write(&beside, content)?;
    std::fs::rename(&beside, path)?;
    Ok(())
}

/// Waits until a request with `token` is answered `status`.
async fn until_answered<F, Fut>(what: &str, status: u16, ask: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(u16, String, String)>>,
{
    wait_for(
        what,
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let (got, _, error) = ask().await?;
            Ok(if got == status {
                Ok(())
            } else {
                Err(format!("{got} {error}"))
            })
        },
    )
    .await
}

#[tokio::test]
async fn token_files_are_reread_so_a_rotation_needs_no_restart() -> Result<()> {
    let dir = temp_dir()?;
    let ingest = start(&dir, OLD_WRITER, Some(OLD_READER)).await?;
    assert_eq!(ingest.write(NEW_WRITER).await?.0, 401);
    assert_eq!(ingest.read(NEW_READER).await?.0, 401);

    // Mid-rotation: the new token is added; it is taken, and the old one keeps working.
    replace(&dir.join("token"), &format!("{NEW_WRITER}\n{OLD_WRITER}\n"))?;
    replace(&dir.join("reader"), &format!("{NEW_READER},{OLD_READER}"))?;
    until_answered("the new writer token to be taken", 202, || {
        ingest.write(NEW_WRITER)
    })
    .await?;
    // No database: 503 is what a reader past authentication hears.
    until_answered("the new reader token to be taken", 503, || {
        ingest.read(NEW_READER)
    })
    .await?;
    assert_eq!(ingest.write(OLD_WRITER).await?.0, 202);
    assert_eq!(ingest.read(OLD_READER).await?.0, 503);

    // A file that breaks a rule (a short token; a writer token as a reader's) changes
    // nothing: both tokens of each stay valid.
    replace(&dir.join("token"), "short")?;
    replace(&dir.join("reader"), &format!("{NEW_READER},{NEW_WRITER}"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ingest.write(NEW_WRITER).await?.0, 202);
    assert_eq!(ingest.write(OLD_WRITER).await?.0, 202);
    let (status, _, error) = ingest.read(NEW_WRITER).await?;
    assert_eq!(status, 403, "a writer token became a reader's: {error}");
    assert_eq!(ingest.read(OLD_READER).await?.0, 503);

    // The rotation done: the old token is dropped from the files, and refused.
    replace(&dir.join("token"), NEW_WRITER)?;
    replace(&dir.join("reader"), NEW_READER)?;
    until_answered("the old writer token to be refused", 401, || {
        ingest.write(OLD_WRITER)
    })
    .await?;
    until_answered("the old reader token to be refused", 401, || {
        ingest.read(OLD_READER)
    })
    .await?;
    assert_eq!(ingest.write(NEW_WRITER).await?.0, 202);
    assert_eq!(ingest.read(NEW_READER).await?.0, 503);
    ingest.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The reader's Secret is optional: made after ingest started, its token is taken at the next
/// look (no restart), and the writers' watch keeps the two roles apart from then on; deleted,
/// the read API closes again. (A writer token file that goes missing keeps its tokens: the
/// operator keeps that Secret, and dropping them would stop every probe.)
#[tokio::test]
async fn a_reader_token_made_after_start_is_taken_and_its_removal_closes_the_read_api() -> Result<()>
{
    let dir = temp_dir()?;
    let ingest = start(&dir, NEW_WRITER, None).await?;
    let (status, _, error) = ingest.read(NEW_READER).await?;
    assert_eq!(status, 401, "{error}");
    assert!(error.contains("no reader token"), "{error}");

    replace(&dir.join("reader"), NEW_READER)?;
    // No database: 503 is what a reader past authentication hears.
    until_answered("the late reader token to be taken", 503, || {
        ingest.read(NEW_READER)
    })
    .await?;
    let (status, _, error) = ingest.write(NEW_READER).await?;
    assert_eq!(status, 403, "the reader token wrote: {error}");
    assert_eq!(ingest.read(NEW_WRITER).await?.0, 403);

    // The writers' file may not take the late reader's token either.
    replace(&dir.join("token"), &format!("{NEW_WRITER},{NEW_READER}"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _, error) = ingest.write(NEW_READER).await?;
    assert_eq!(status, 403, "the reader token became a writer's: {error}");
    assert_eq!(ingest.write(NEW_WRITER).await?.0, 202);

    std::fs::remove_file(dir.join("reader"))?;
    until_answered("the deleted reader token to be refused", 401, || {
        ingest.read(NEW_READER)
    })
    .await?;
    let (_, _, error) = ingest.read(NEW_READER).await?;
    assert!(error.contains("no reader token"), "{error}");
    // Writing is untouched by the reader's comings and goings.
    assert_eq!(ingest.write(NEW_WRITER).await?.0, 202);
    ingest.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
