//! The status page and badges against the real kube-apiserver and a freshly migrated
//! PostgreSQL: FiberRegions and FiberProbes whose status the controllers compute from real
//! samples, rollups refreshed from those samples, the page and badges served over HTTP (in
//! internal and public mode) and rendered by a real headless Chromium.

mod common;

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use chrono::{TimeDelta, Utc};
use common::{EVERY, Operator, WAIT, apply_json};
use fiberstack_e2e::{TestNamespace, wait_for};
use fiberstack_operator::crd::{FiberProbe, FiberRegion};
use fiberstack_operator::databases::Databases;
use fiberstack_operator::statuspage::{self, Mode, StatusPage};
use kube::{Api, Client};
use serde_json::json;
use sqlx::PgPool;

/// A label no node carries: the controllers place no pod, the status is still computed from
/// the samples (and says, in a Ready condition message, that no node matches).
const NO_NODE: &str = "status-page-test-none";
/// The degraded target's address: internal only.
const DB_ADDRESS: &str = "10.0.0.5";
/// The private probe's target address.
const PRIVATE_ADDRESS: &str = "secret-backend.internal.example";

fn region(name: &str, display: &str, country: &str) -> serde_json::Value {
    let mut r = common::region_json(name);
    r["spec"]["displayName"] = json!(display);
    r["spec"]["country"] = json!(country);
    r["spec"]["nodeSelector"] = json!({ "topology.kubernetes.io/region": NO_NODE });
    r
}

fn probe(name: &str, region: &str, visibility: Option<&str>) -> serde_json::Value {
    let mut p = common::probe_json(name, region);
    p["spec"]["nodeSelector"] = json!({ "fiberstack.io/edge": NO_NODE });
    if let Some(v) = visibility {
        p["metadata"]["annotations"] = json!({ statuspage::VISIBILITY_ANNOTATION: v });
    }
    p
}

/// `count` samples of a target from gh-accra-1 at `at_secs_ago` seconds back, 10 s apart;
/// the first `up` of them successful.
#[allow(clippy::too_many_arguments)]
/// What a histogram p95 reads for latencies of `ms`: the middle of its 2 % bin, rounded as the
/// page rounds.
fn binned(ms: f64) -> f64 {
    let v = fiberstack_operator::slo::latency_bin_value(fiberstack_operator::slo::latency_bin(ms));
    (v * 100.0).round() / 100.0
}

async fn seed(
    pool: &PgPool,
    probe: &str,
    target: &str,
    seconds_ago: i64,
    count: i32,
    up: i32,
    latency_ms: f64,
) -> Result<()> {
    sqlx::query(
        "insert into metrics (time, node, probe, region, target, kind, up, latency_ms, packet_loss)
         select now() - make_interval(secs => $3::float8 + g * 10), 'gh-accra-1', $1, 'ghana', $2,
                'icmp', g <= $5, $6, 0
           from generate_series(1, $4) g",
    )
    .bind(probe)
    .bind(target)
    .bind(seconds_ago as f64)
    .bind(count)
    .bind(up)
    .bind(latency_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// A namespace with three regions, a public probe with a healthy and a degraded target, a
/// private probe and a hidden one, samples and their rollups, and the controllers having
/// written the degraded target's status.
struct Fleet {
    ns: TestNamespace,
    operator: Operator,
    client: Client,
    pool: PgPool,
    url: String,
}

/// Seconds back from now of the samples of 3 and 10 days ago: noon of those UTC days, so
/// every sample of a day stays in that day's bucket.
fn noon_days_ago(days: i64) -> (i64, chrono::NaiveDate) {
    let now = Utc::now();
    let date = now.date_naive() - TimeDelta::days(days);
    let noon = date.and_hms_opt(12, 0, 0).unwrap().and_utc();
    ((now - noon).num_seconds(), date)
}

async fn fleet(prefix: &str) -> Result<Fleet> {
    let client = common::client().await?;
    common::install_crds(&client).await?;
    let (url, pool) = common::migrated_database("fs_statuspage").await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let db = fiberstack_operator::status::connect_lazy(&url, None)?;
    let operator = Operator::start(&client, &ns.name, Some(db));
    let fleet = Fleet {
        ns,
        operator,
        client,
        pool,
        url,
    };
    if let Err(e) = populate(&fleet).await {
        fleet.stop().await;
        return Err(e);
    }
    Ok(fleet)
}

impl Fleet {
    async fn stop(self) {
        self.operator.stop().await;
        let _ = self.ns.delete().await;
        // The database goes too: a test run should not fill the machine's disk.
        self.pool.close().await;
        if let Ok(env) = fiberstack_e2e::LocalEnv::load() {
            let _ = env.drop_postgres_database(&self.url, &[]).await;
        }
    }

    /// A status page of this namespace in `mode`, refreshed once.
    async fn page(&self, mode: Mode) -> Arc<StatusPage> {
        let page = StatusPage::new(statuspage::Settings {
            mode,
            refresh_every: std::time::Duration::from_secs(30),
            namespace: Some(self.ns.name.clone()),
        });
        page.refresh(&self.client, &Databases::new(Some(self.pool.clone()), None))
            .await;
        page
    }
}

async fn populate(f: &Fleet) -> Result<()> {
    let ns = &f.ns.name;
    let regions: Api<FiberRegion> = Api::namespaced(f.client.clone(), ns);
    let probes: Api<FiberProbe> = Api::namespaced(f.client.clone(), ns);
    apply_json(&regions, &region("ghana", "Ghana", "GH")).await?;
    apply_json(&regions, &region("kenya", "Kenya", "KE")).await?;
    apply_json(&regions, &region("nigeria", "Nigeria", "NG")).await?;
    apply_json(&probes, &probe("accra-edge", "ghana", None)).await?;
    let mut private = probe("vault-edge", "kenya", Some("private"));
    private["spec"]["targets"] =
        json!([{ "name": "vault", "tcp": { "host": PRIVATE_ADDRESS, "port": 8200 } }]);
    apply_json(&probes, &private).await?;
    apply_json(&probes, &probe("shadow-edge", "nigeria", Some("hidden"))).await?;

    let key = format!("{ns}/accra-edge");
    // Now: google-dns healthy at 20 ms, db degraded at 400 ms (threshold 150 ms).
    seed(&f.pool, &key, "google-dns", 0, 30, 30, 20.0).await?;
    seed(&f.pool, &key, "db", 0, 30, 30, 400.0).await?;
    seed(
        &f.pool,
        &format!("{ns}/vault-edge"),
        "vault",
        0,
        30,
        30,
        5.0,
    )
    .await?;
    // History of google-dns: 3 days ago half down, 10 days ago all up.
    let (three, _) = noon_days_ago(3);
    let (ten, _) = noon_days_ago(10);
    seed(&f.pool, &key, "google-dns", three, 10, 5, 30.0).await?;
    seed(&f.pool, &key, "google-dns", ten, 20, 20, 25.0).await?;
    // The rollups, as fiber-etl's maintenance refreshes them in plain PostgreSQL.
    sqlx::query(
        "select fiberstack_refresh_rollups(now() - interval '40 days', now() + interval '1 hour')",
    )
    .execute(&f.pool)
    .await?;

    wait_for("db Breaching in accra-edge's status", WAIT, EVERY, || {
        let probes = probes.clone();
        async move {
            let s = probes.get("accra-edge").await?.status.unwrap_or_default();
            let state = |name: &str| {
                s.targets
                    .iter()
                    .find(|t| t.name == name)
                    .map(|t| t.state.as_str().to_owned())
            };
            Ok(
                if state("db").as_deref() == Some("Breaching")
                    && state("google-dns").as_deref() == Some("Healthy")
                {
                    Ok(())
                } else {
                    Err(format!("{:?}", s.targets))
                },
            )
        }
    })
    .await?;
    // The page counts every target: vault-edge's status must be in too (its figures may come
    // from its region's batch of the period before the seed).
    wait_for("vault Healthy in vault-edge's status", WAIT, EVERY, || {
        let probes = probes.clone();
        async move {
            let s = probes.get("vault-edge").await?.status.unwrap_or_default();
            let vault = s.targets.iter().find(|t| t.name == "vault");
            Ok(match vault.map(|t| t.state.as_str().to_owned()) {
                Some(state) if state == "Healthy" => Ok(()),
                _ => Err(format!("{:?}", s.targets)),
            })
        }
    })
    .await?;
    Ok(())
}

/// Serves `page` on a free local port; its base URL.
async fn serve(page: Arc<StatusPage>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, statuspage::router(page)).await });
    Ok(format!("http://{addr}"))
}

#[tokio::test]
async fn the_page_and_badges_show_real_statuses_and_rollups() -> Result<()> {
    let fleet = fleet("op-statuspage").await?;
    let result = page_and_badges(&fleet).await;
    fleet.stop().await;
    result
}

async fn page_and_badges(f: &Fleet) -> Result<()> {
    let ns = &f.ns.name;
    let http = reqwest::Client::new();
    let internal = serve(f.page(Mode::Internal).await).await?;
    let public = serve(f.page(Mode::Public).await).await?;

    // Identity first (reqwest would otherwise ask for gzip when a crate enables its feature).
    let response = http
        .get(format!("{internal}/"))
        .header("accept-encoding", "identity")
        .send()
        .await?;
    ensure!(response.status() == 200, "{}", response.status());
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let etag = response.headers()["etag"].to_str()?.to_owned();
    assert_eq!(response.headers()["cache-control"], "private, max-age=30");
    let html = response.text().await?;

    // Regions, probes and targets, from the real statuses.
    for text in [
        "<title>FiberStack status</title>",
        "Ghana (GH)",
        "Kenya (KE)",
        "Nigeria (NG)",
        "Probe accra-edge",
        ">google-dns<",
        ">db<",
        "Probe vault-edge",
    ] {
        assert!(
            html.contains(text),
            "{text:?} missing from the page:\n{html}"
        );
    }
    assert!(!html.contains("shadow-edge"), "a hidden probe is shown");
    // The degraded target, marked with its reason, in the incidents and in its card.
    let incidents = section(&html, "<h2 id=\"incidents\">");
    assert!(
        incidents.contains("accra-edge / db</strong>: <span class=\"state s-bad\">Breaching</span> — p95 latency 400 ms &gt; 150 ms"),
        "{incidents}"
    );
    assert!(!incidents.contains("google-dns"), "{incidents}");
    // The operator says where it is seen from: a node name, internal only.
    assert!(
        html.contains("<p class=\"state s-bad\">Breaching</p><p class=\"reason\">p95 latency 400 ms &gt; 150 ms; degraded from its only vantage point ghana/gh-accra-1</p>"),
        "{}",
        target_card(&html, "db")
    );
    assert!(
        html.contains("2 of 3 targets healthy; 1 incident<"),
        "{html}"
    );

    // The rollups' figures: google-dns's 7 days are 30 up now + 5 of 10 three days ago.
    let card = target_card(&html, "google-dns");
    assert!(
        card.contains(r#"<th scope="row">7 d</th><td>87.5 %</td>"#),
        "{card}"
    );
    // 30 days from the daily rollup: 55 of 60.
    assert!(
        card.contains(r#"<th scope="row">30 d</th><td>91.66 %</td>"#),
        "{card}"
    );
    assert!(
        card.contains(r#"<th scope="row">24 h</th><td>100 %</td><td>20 ms</td><td>0 %</td>"#),
        "{card}"
    );

    // 90 bars, each with its figure; the SVG parses as XML.
    let svg = between(&card, "<svg", "</svg>").context("no bars")?;
    let doc = roxmltree::Document::parse(&svg)?;
    let bars: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect"))
        .collect();
    assert_eq!(bars.len(), 90);
    let title = |n: &roxmltree::Node| {
        n.children()
            .find(|c| c.has_tag_name("title"))
            .and_then(|t| t.text())
            .unwrap_or_default()
            .to_owned()
    };
    let (_, three) = noon_days_ago(3);
    let (_, ten) = noon_days_ago(10);
    let titles: Vec<String> = bars.iter().map(title).collect();
    assert!(
        titles.contains(&format!("{three}: uptime 50 % (10 samples)")),
        "{titles:?}"
    );
    assert!(
        titles.contains(&format!("{ten}: uptime 100 % (20 samples)")),
        "{titles:?}"
    );
    let half = bars
        .iter()
        .find(|b| title(b).starts_with(&three.to_string()))
        .unwrap();
    assert_eq!(half.attribute("class"), Some("b-bad"));
    assert_eq!(half.attribute("tabindex"), Some("0"));
    let empty = &bars[0];
    assert_eq!(empty.attribute("class"), Some("b-none"));
    assert!(title(empty).ends_with("no samples"));

    // Internal view shows what public mode must drop; the public page leaks none of it.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(f.client.clone(), ns);
    let mut private = vec![
        DB_ADDRESS.to_owned(),
        "8.8.8.8".to_owned(),
        PRIVATE_ADDRESS.to_owned(),
        "vault-edge".to_owned(),
        "gh-accra-1".to_owned(),
        "no node matches".to_owned(),
        "internal view".to_owned(),
    ];
    for needle in &private {
        assert!(
            html.contains(needle.as_str()),
            "the internal page lacks {needle:?}"
        );
    }
    let region = Api::<FiberRegion>::namespaced(f.client.clone(), ns)
        .get("ghana")
        .await?;
    let status = region.status.unwrap_or_default();
    if let Some(token_secret) = status.token_secret {
        if let Some(token) = secrets
            .get_opt(&token_secret)
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get("token").cloned())
        {
            private.push(String::from_utf8(token.0)?);
        }
        private.push(token_secret);
    }
    if let Some(ingest) = status.ingest_url {
        private.push(ingest);
    }
    let public_html = http
        .get(format!("{public}/"))
        .header("accept-encoding", "identity")
        .send()
        .await?
        .text()
        .await?;
    for needle in &private {
        assert!(
            !public_html.contains(needle.as_str()),
            "the public page leaks {needle:?}"
        );
    }
    assert!(
        public_html.contains("<p class=\"reason\">p95 latency 400 ms &gt; 150 ms; degraded from its only vantage point ghana</p>"),
        "{}",
        target_card(&public_html, "db")
    );
    assert!(public_html.contains("Kenya (KE)"));
    assert!(public_html.contains("1 of 2 targets healthy; 1 incident<"));

    // Gzipped for who asks (a browser), with its own validator; the same page.
    let gzipped = http
        .get(format!("{internal}/"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await?;
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(gzipped.headers()["vary"], "accept-encoding");
    let gz_etag = gzipped.headers()["etag"].to_str()?.to_owned();
    assert_ne!(gz_etag, etag);
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&gzipped.bytes().await?[..]),
        &mut unzipped,
    )?;
    assert_eq!(unzipped, html);

    // ETag and 304.
    let again = http
        .get(format!("{internal}/"))
        .header("accept-encoding", "identity")
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert!(again.text().await?.is_empty());
    let other = http
        .get(format!("{internal}/"))
        .header("accept-encoding", "identity")
        .header("if-none-match", "\"something-else\"")
        .send()
        .await?;
    assert_eq!(other.status(), 200);

    // Badges: valid XML with the right numbers, cacheable.
    let badge = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).send().await?;
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.text().await?;
            anyhow::Ok((status, headers, body))
        }
    };
    let (status, headers, body) = badge(format!(
        "{internal}/badges/{ns}/accra-edge/google-dns/uptime.svg?window=7d"
    ))
    .await?;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/svg+xml; charset=utf-8");
    assert_eq!(headers["cache-control"], "private, max-age=30");
    let (label, value, fill) = badge_parts(&body)?;
    assert_eq!((label.as_str(), value.as_str()), ("uptime 7d", "87.5%"));
    assert_eq!(fill, "#cf222e", "87.5 % is below the 99 % threshold");
    let tag = headers["etag"].to_str()?.to_owned();
    let cached = http
        .get(format!(
            "{internal}/badges/{ns}/accra-edge/google-dns/uptime.svg?window=7d"
        ))
        .header("if-none-match", &tag)
        .send()
        .await?;
    assert_eq!(cached.status(), 304);

    let (_, _, body) = badge(format!("{internal}/badges/{ns}/accra-edge/db/latency.svg")).await?;
    assert_eq!(
        badge_parts(&body)?,
        (
            "p95 24h".into(),
            format!("{:.0} ms", binned(400.0)),
            "#cf222e".into()
        )
    );
    let (_, _, body) = badge(format!(
        "{public}/badges/{ns}/accra-edge/google-dns/latency.svg?window=24h"
    ))
    .await?;
    assert_eq!(
        badge_parts(&body)?,
        ("p95 24h".into(), "20 ms".into(), "#1a7f37".into())
    );
    let (_, _, body) = badge(format!(
        "{internal}/badges/{ns}/accra-edge/google-dns/uptime.svg?window=30d"
    ))
    .await?;
    assert_eq!(badge_parts(&body)?.1, "91.66%");

    // The private probe's badge exists internally only; bad requests say what is accepted.
    let (status, _, _) = badge(format!("{internal}/badges/{ns}/vault-edge/uptime.svg")).await?;
    assert_eq!(status, 200);
    let (status, _, body) = badge(format!("{public}/badges/{ns}/vault-edge/uptime.svg")).await?;
    assert_eq!(status, 404);
    assert_eq!(badge_parts(&body)?.1, "not found");
    let (status, _, body) = badge(format!(
        "{internal}/badges/{ns}/accra-edge/uptime.svg?window=1y"
    ))
    .await?;
    assert_eq!(status, 400);
    assert!(
        body.contains("window=\"1y\"") && body.contains("24h, 7d and 30d"),
        "{body}"
    );
    Ok(())
}

/// The text from `start` to the next `<h2` (or the end).
fn section(html: &str, start: &str) -> String {
    let from = html.find(start).map_or("", |i| &html[i..]);
    let end = from[1..].find("<h2").map_or(from.len(), |i| i + 1);
    from[..end].to_owned()
}

/// A target's card (`<li class="target"...>...</li>`) by its name.
fn target_card(html: &str, name: &str) -> String {
    let heading = format!(">{name}<span class=\"kind\">");
    let at = html
        .find(&heading)
        .unwrap_or_else(|| panic!("no card of {name}"));
    let start = html[..at].rfind("<li class=\"target\"").unwrap();
    let end = html[at..].find("</li>").unwrap() + at;
    html[start..end].to_owned()
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let i = text.find(start)?;
    let j = text[i..].find(end)? + i + end.len();
    Some(text[i..j].to_owned())
}

/// A badge's label, value and value colour, read as XML.
fn badge_parts(svg: &str) -> Result<(String, String, String)> {
    let doc = roxmltree::Document::parse(svg).with_context(|| format!("badge {svg}"))?;
    let root = doc.root_element();
    ensure!(root.has_tag_name("svg"), "root is not svg: {svg}");
    let texts: Vec<&str> = root
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    let fills: Vec<&str> = root
        .descendants()
        .filter(|n| n.has_tag_name("rect"))
        .filter_map(|n| n.attribute("fill"))
        .collect();
    ensure!(texts.len() == 2 && fills.len() == 2, "{svg}");
    let title = root
        .children()
        .find(|n| n.has_tag_name("title"))
        .and_then(|n| n.text())
        .unwrap_or_default();
    ensure!(title == format!("{}: {}", texts[0], texts[1]), "{svg}");
    Ok((
        texts[0].to_owned(),
        texts[1].to_owned(),
        fills[1].to_owned(),
    ))
}

/// The page as Debian's Chromium renders it on a phone-sized window: its DOM holds the
/// regions, probes and targets and the degraded one's reason; the screenshot is kept.
#[tokio::test]
async fn a_headless_chromium_renders_the_page_on_a_phone() -> Result<()> {
    let Some(chromium) = chromium()? else {
        return Ok(());
    };
    let fleet = fleet("op-statuspage-browser").await?;
    let result = browser(&fleet, &chromium).await;
    fleet.stop().await;
    result
}

/// Chromium's path; None (with a message) only outside CI when it is not installed.
fn chromium() -> Result<Option<std::path::PathBuf>> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    });
    match found {
        Some(path) => Ok(Some(path)),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            anyhow::bail!(
                "chromium is not installed (apt-get install chromium; e2e/scripts/env.sh installs it)"
            )
        }
        None => {
            eprintln!(
                "SKIPPED: chromium is not installed (apt-get install chromium); in CI this test fails instead"
            );
            Ok(None)
        }
    }
}

async fn browser(f: &Fleet, chromium: &std::path::Path) -> Result<()> {
    let url = format!("{}/", serve(f.page(Mode::Public).await).await?);
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map_or_else(|| "target".into(), |root| root.join("target"))
        })
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let screenshot = artifacts.join("statuspage-390x844.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = tempdir()?;
    let run = |args: Vec<String>| {
        let chromium = chromium.to_owned();
        let profile = profile.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(&chromium)
                    .args([
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--no-first-run",
                        "--hide-scrollbars",
                        &format!("--user-data-dir={}", profile.display()),
                        "--window-size=390,844",
                    ])
                    .args(args)
                    .output()
            })
            .await?
            .context("running chromium")
        }
    };
    let out = run(vec!["--dump-dom".to_owned(), url.clone()]).await?;
    ensure!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8(out.stdout)?;
    for text in [
        "Ghana (GH)",
        "Kenya (KE)",
        "Nigeria (NG)",
        "Probe accra-edge",
        "google-dns",
        "p95 latency 400 ms &gt; 150 ms",
        "<title>",
    ] {
        assert!(
            dom.contains(text),
            "{text:?} missing from Chromium's DOM:\n{dom}"
        );
    }
    assert!(!dom.contains("vault-edge") && !dom.contains(DB_ADDRESS));
    assert_eq!(
        dom.matches("<rect ").count(),
        90 * 2,
        "90 bars per public target"
    );

    let out = run(vec![
        format!("--screenshot={}", screenshot.display()),
        url.clone(),
    ])
    .await?;
    ensure!(
        out.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&screenshot)
        .with_context(|| format!("no screenshot at {}", screenshot.display()))?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // The PNG's IHDR: the 390 px wide viewport.
    let width = u32::from_be_bytes(png[16..20].try_into()?);
    assert_eq!(width, 390);
    println!("status page screenshot: {}", screenshot.display());
    let _ = std::fs::remove_dir_all(&profile);
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(fiberstack_e2e::unique_name("statuspage-chromium"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The rollup queries on TimescaleDB (continuous aggregates, real-time over the raw samples:
/// PGlite runs no refresh jobs), in a schema of their own: the figures and the daily bars.
#[tokio::test]
async fn rollup_figures_on_timescaledb() -> Result<()> {
    let env = fiberstack_e2e::LocalEnv::load()?;
    let single = |schema: Option<String>| fiberstack_plumbing::postgres::DbConfig {
        schema,
        max_connections: 1,
        ..fiberstack_plumbing::postgres::DbConfig::new(&env.timescale_url)
    };
    // The extension goes to `public` (see etl/tests/common: PGlite loads it once), and each
    // connection is closed before the next opens: the server takes one at a time.
    let admin = single(None).connect().await?;
    sqlx::raw_sql("create extension if not exists timescaledb")
        .execute(&admin)
        .await?;
    admin.close().await;
    let schema = fiberstack_e2e::unique_name("fs_statuspage").replace('-', "_");
    fiberstack_e2e::etl::migrate(&env.timescale_url, Some(&schema)).await?;
    let pool = single(Some(schema.clone())).connect().await?;
    let outcome = timescale_figures(&pool).await;
    for statement in fiberstack_e2e::etl::timescale_schema_drop(&schema) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .context("dropping the test schema")?;
    }
    outcome
}

async fn timescale_figures(pool: &PgPool) -> Result<()> {
    let key = "ns/accra-edge";
    seed(pool, key, "web", 0, 30, 30, 20.0).await?;
    let (three, three_date) = noon_days_ago(3);
    seed(pool, key, "web", three, 10, 5, 30.0).await?;
    let (ten, ten_date) = noon_days_ago(10);
    seed(pool, key, "web", ten, 20, 20, 25.0).await?;
    let rollups =
        statuspage::figures::rollups(pool, &[key.to_owned(), "ns/other".to_owned()], Utc::now())
            .await?;
    let web = rollups.targets[&(key.to_owned(), "web".to_owned())];
    assert_eq!(web.day.samples, 30);
    assert_eq!(web.day.uptime_pct, Some(100.0));
    assert_eq!(web.day.latency_p95_ms, Some(binned(20.0)));
    assert_eq!(web.week.samples, 40);
    // 30 of 40 at 20 ms, 10 at 30 ms: the p95 is a 30 ms one, from the merged histogram (the
    // 95th percentile of hourly p95s would say so only by luck of the buckets).
    assert_eq!(web.week.latency_p95_ms, Some(binned(30.0)));
    assert_eq!(web.month.latency_p95_ms, Some(binned(30.0)));
    assert_eq!(web.week.uptime_pct, Some(87.5));
    assert_eq!(web.month.samples, 60);
    let month = web.month.uptime_pct.context("30 d uptime")?;
    assert!((month - 55.0 / 60.0 * 100.0).abs() < 1e-9, "{month}");
    // The probe's row holds the same samples (one target).
    assert_eq!(rollups.probes[key].week.uptime_pct, Some(87.5));
    let days = &rollups.days[&(key.to_owned(), "web".to_owned())];
    let day = |date| days.iter().find(|d| d.date == date).copied();
    assert_eq!(
        day(three_date).map(|d| (d.samples, d.uptime_pct)),
        Some((10, Some(50.0)))
    );
    assert_eq!(
        day(ten_date).map(|d| (d.samples, d.uptime_pct)),
        Some((20, Some(100.0)))
    );
    assert!(!rollups.probes.contains_key("ns/other"));
    Ok(())
}
