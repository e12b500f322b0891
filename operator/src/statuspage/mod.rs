//! The status page and badges: fleet → regions → probes → targets, served read-only over HTTP
//! from an in-memory snapshot that a background task rebuilds every refresh interval.
//!
//! The path of the data: [`gather`] reads the FiberRegions and FiberProbes (their status holds
//! the 15-minute figures, health and the reason of a breach) and each region's database (the
//! rollups, [`figures`]) into a [`Snapshot`]; in public mode [`Snapshot::public`] drops what
//! must not leave the cluster *before* anything is rendered, so no renderer can leak it; then
//! [`html`] renders the page once per refresh and [`badge`] renders a badge per request from
//! the snapshot (microseconds). Requests never touch Kubernetes or the database.
//!
//! What each mode shows (also in the README):
//! - both: region names, display names and countries; probe namespaces and names; target
//!   names and kinds; health words; the 15-minute figures and the 24 h / 7 d / 30 d uptime,
//!   p95 and loss; the 90 daily uptime bars; a breaching target's reason (it is built from
//!   figures and thresholds, e.g. "latency p95 412 ms > 150 ms"); when figures were updated.
//! - internal only: target addresses (host, URL, DNS query), the vantage points (region/node)
//!   that see a breach and the nodes gone silent, the messages of conditions that are not
//!   True (they may carry error text), regions' ingest URLs, errors of the refresh itself,
//!   and probes annotated `fiberstack.io/status-page: private`.
//! - never: Secrets, tokens, database URLs; probes annotated `hidden`.

pub mod badge;
pub mod figures;
pub mod html;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    RETRY_AFTER, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::{FiberProbe, FiberRegion, Summary, Thresholds};
use crate::databases::Databases;
use figures::{Day, Windows};

/// The annotation a FiberProbe opts out with: `hidden` (never shown), `private` (shown only
/// on an internal page) or `public` (the default).
pub const VISIBILITY_ANNOTATION: &str = "fiberstack.io/status-page";

/// Who the page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inside the organisation: addresses, node names and error text are shown.
    Internal,
    /// Anyone: see the module's documentation for what is left out.
    Public,
}

/// A probe's [`VISIBILITY_ANNOTATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
    Hidden,
}

impl Visibility {
    /// The annotation's value read; a value it does not know counts as `private` (a typo
    /// must not publish a probe), with a message naming the annotation, the value and the
    /// accepted ones.
    pub fn parse(value: Option<&str>) -> (Self, Option<String>) {
        match value.map(str::trim) {
            None | Some("public") => (Self::Public, None),
            Some("private") => (Self::Private, None),
            Some("hidden") => (Self::Hidden, None),
            Some(other) => (
                Self::Private,
                Some(format!(
                    "annotation {VISIBILITY_ANNOTATION}: {other:?} is not one of hidden, private, public; treated as private"
                )),
            ),
        }
    }
}

/// Options of the status page (the operator's `--status-page-*` flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// How often the snapshot is rebuilt; also the badges' and the page's max-age.
    pub refresh_every: Duration,
    /// Only this namespace's regions and probes; all when unset.
    pub namespace: Option<String>,
}

/// Everything the page shows, as of one refresh.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generated_at: DateTime<Utc>,
    pub mode: Option<Mode>,
    pub refresh_every: Duration,
    pub regions: Vec<RegionView>,
    /// What went wrong while gathering (internal only).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RegionView {
    pub namespace: String,
    pub name: String,
    pub display_name: Option<String>,
    pub country: Option<String>,
    /// False for a region FiberProbes name but that does not exist.
    pub exists: bool,
    /// Condition type and message of each condition that is not True (internal only).
    pub messages: Vec<String>,
    /// The ingest Service's URL (internal only).
    pub ingest_url: Option<String>,
    pub probes: Vec<ProbeView>,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeView {
    pub namespace: String,
    pub name: String,
    /// The status's one word: Healthy, Degraded, NoData, Paused...
    pub health: String,
    pub visibility: Option<Visibility>,
    /// Why the visibility annotation was not understood (internal only).
    pub visibility_note: Option<String>,
    /// readyProbes/desiredProbes.
    pub ready: String,
    pub reporting_probes: i32,
    pub last_sample: Option<String>,
    /// The whole probe over 15 minutes (status.summary).
    pub now: Option<Summary>,
    pub windows: Windows,
    /// Messages of conditions that are not True (internal only).
    pub messages: Vec<String>,
    pub targets: Vec<TargetView>,
}

#[derive(Debug, Clone, Default)]
pub struct TargetView {
    pub name: String,
    /// icmp, tcp, http, dns...
    pub kind: String,
    /// Host, URL or DNS query (internal only).
    pub address: Option<String>,
    /// Healthy, Breaching or NoData (status.targets[].state); Unknown before a status.
    pub state: String,
    /// Why it breaches (status.targets[].message).
    pub reason: Option<String>,
    /// Vantage points (region/node) that see the breach (internal only).
    pub vantage_points: Vec<String>,
    /// Nodes that sent no recent sample of it (internal only).
    pub silent: Vec<String>,
    pub now: Summary,
    pub windows: Windows,
    /// [`figures::DAYS`] bars, oldest first.
    pub days: Vec<Day>,
    pub thresholds: Thresholds,
}

impl TargetView {
    /// Breaching or without data: an incident on the page.
    pub fn is_incident(&self) -> bool {
        self.state != "Healthy"
    }
}

impl Snapshot {
    /// This snapshot without anything the public must not see: probes that are not public,
    /// addresses, node names, condition and refresh error text, ingest URLs.
    pub fn public(mut self) -> Self {
        self.mode = Some(Mode::Public);
        self.problems.clear();
        for region in &mut self.regions {
            region.messages.clear();
            region.ingest_url = None;
            region
                .probes
                .retain(|p| p.visibility == Some(Visibility::Public));
            for probe in &mut region.probes {
                probe.messages.clear();
                probe.visibility_note = None;
                for target in &mut probe.targets {
                    target.reason = target
                        .reason
                        .take()
                        .map(|r| without_nodes(&r, &target.vantage_points, &target.silent));
                    target.address = None;
                    target.vantage_points.clear();
                    target.silent.clear();
                }
            }
        }
        // A region left without probes still shows: its name and country are public.
        self
    }

    /// The probe `namespace/name`, when the snapshot holds it.
    pub fn probe(&self, namespace: &str, name: &str) -> Option<&ProbeView> {
        self.regions
            .iter()
            .flat_map(|r| &r.probes)
            .find(|p| p.namespace == namespace && p.name == name)
    }
}

/// A breach's reason with its node names taken out: the operator appends where the breach is
/// seen from ("degraded from its only vantage point ghana/gh-accra-1"); a vantage point
/// `region/node` becomes its region, and a silent node's bare name "a node".
fn without_nodes(reason: &str, vantage_points: &[String], silent: &[String]) -> String {
    let mut text = reason.to_owned();
    for vp in vantage_points {
        let region = vp.split_once('/').map_or("a vantage point", |(r, _)| r);
        text = text.replace(vp.as_str(), region);
    }
    let nodes = silent.iter().map(String::as_str).chain(
        vantage_points
            .iter()
            .filter_map(|vp| vp.split_once('/').map(|(_, n)| n)),
    );
    for node in nodes.filter(|n| !n.is_empty()) {
        text = text.replace(node, "a node");
    }
    text
}

/// The text of one Secret key, trimmed; an error naming the Secret and key, never the value.
async fn secret_value(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name:?}: {e}"))?
        .ok_or_else(|| format!("Secret {name:?} does not exist"))?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .and_then(|v| String::from_utf8(v.0).ok())
        .map(|s| s.trim().to_owned())
        .ok_or_else(|| format!("Secret {name:?} has no key {key:?}"))
}

fn not_true_messages(conditions: &[crate::crd::Condition]) -> Vec<String> {
    conditions
        .iter()
        .filter(|c| c.status.as_str() != "True" && !c.message.is_empty())
        .map(|c| format!("{}: {}", c.type_.as_str(), c.message))
        .collect()
}

/// The address a target's check reaches, whatever its kind: read from the check's fields so
/// that a new kind needs no change here.
fn target_address(target: &fiberstack_model::Target) -> Option<String> {
    let value = serde_json::to_value(target).ok()?;
    value.as_object()?.iter().find_map(|(field, check)| {
        if field == "name" || field == "thresholds" {
            return None;
        }
        ["url", "host", "query"]
            .iter()
            .find_map(|k| check.get(k)?.as_str().map(str::to_owned))
    })
}

/// Reads the fleet and its rollups into a snapshot (internal: [`Snapshot::public`] trims it).
pub async fn gather(
    client: &Client,
    databases: &Databases,
    namespace: Option<&str>,
    now: DateTime<Utc>,
) -> Snapshot {
    let mut problems = Vec::new();
    let regions: Vec<FiberRegion> = {
        let api: Api<FiberRegion> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                problems.push(format!("listing FiberRegions: {e}"));
                Vec::new()
            }
        }
    };
    // FiberProbes are listed untyped and read one by one: an object this version cannot read
    // is left out (and named) instead of emptying the page.
    let probes: Vec<FiberProbe> = {
        let resource = ApiResource::erase::<FiberProbe>(&());
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter_map(|object| {
                    let name = format!(
                        "{}/{}",
                        object.namespace().unwrap_or_default(),
                        object.name_any()
                    );
                    serde_json::to_value(object)
                        .and_then(serde_json::from_value::<FiberProbe>)
                        .map_err(|e| problems.push(format!("FiberProbe {name}: {e}")))
                        .ok()
                })
                .collect(),
            Err(e) => {
                problems.push(format!("listing FiberProbes: {e}"));
                Vec::new()
            }
        }
    };

    // (namespace, region name) → the region, when it exists, and the probes naming it.
    type Group<'a> = (Option<&'a FiberRegion>, Vec<&'a FiberProbe>);
    let mut views: BTreeMap<(String, String), Group> = BTreeMap::new();
    for region in &regions {
        views.insert(
            (region.namespace().unwrap_or_default(), region.name_any()),
            (Some(region), Vec::new()),
        );
    }
    for probe in &probes {
        let key = (
            probe.namespace().unwrap_or_default(),
            probe.spec.region.clone(),
        );
        views.entry(key).or_default().1.push(probe);
    }

    let mut out = Vec::new();
    for ((ns, name), (region, probes)) in views {
        let keys: Vec<String> = probes
            .iter()
            .map(|p| format!("{}/{}", ns, p.name_any()))
            .collect();
        let rollups = match region {
            Some(region) if !keys.is_empty() => {
                match region_rollups(client, databases, region, &keys, now).await {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push(format!("region {ns}/{name}: {e}"));
                        Default::default()
                    }
                }
            }
            _ => Default::default(),
        };
        let status = region.and_then(|r| r.status.clone()).unwrap_or_default();
        let mut probes: Vec<ProbeView> = probes
            .into_iter()
            .map(|p| probe_view(p, &rollups, now))
            .filter(|p| p.visibility != Some(Visibility::Hidden))
            .collect();
        probes.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(RegionView {
            namespace: ns,
            name,
            display_name: region.and_then(|r| r.spec.display_name.clone()),
            country: region.map(|r| r.spec.country.clone()),
            exists: region.is_some(),
            messages: not_true_messages(&status.conditions),
            ingest_url: status.ingest_url.clone(),
            probes,
        });
    }
    Snapshot {
        generated_at: now,
        mode: Some(Mode::Internal),
        refresh_every: Duration::ZERO,
        regions: out,
        problems,
    }
}

async fn region_rollups(
    client: &Client,
    databases: &Databases,
    region: &FiberRegion,
    probes: &[String],
    now: DateTime<Utc>,
) -> Result<figures::Rollups, String> {
    let reader = match &region.spec.database.reader_url_secret_ref {
        Some(r) => Some(
            secret_value(
                client,
                &region.namespace().unwrap_or_default(),
                &r.name,
                &r.key,
            )
            .await
            .map_err(|e| format!("{e} (spec.database.readerUrlSecretRef)"))?,
        ),
        None => None,
    };
    let pool = databases.pool(reader.as_deref()).await?;
    figures::rollups(&pool, probes, now)
        .await
        .map_err(|e| format!("reading the rollups: {e}"))
}

fn probe_view(probe: &FiberProbe, rollups: &figures::Rollups, now: DateTime<Utc>) -> ProbeView {
    let key = format!(
        "{}/{}",
        probe.namespace().unwrap_or_default(),
        probe.name_any()
    );
    let status = probe.status.clone().unwrap_or_default();
    let (visibility, visibility_note) = Visibility::parse(
        probe
            .meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(VISIBILITY_ANNOTATION))
            .map(String::as_str),
    );
    let targets = probe
        .spec
        .targets
        .iter()
        .map(|target| {
            let observed = status.targets.iter().find(|t| t.name == target.name);
            let rollup_key = (key.clone(), target.name.clone());
            TargetView {
                name: target.name.clone(),
                kind: target
                    .check()
                    .map(|c| c.kind().as_str().to_owned())
                    .unwrap_or_else(|_| "invalid".to_owned()),
                address: target_address(target),
                state: observed
                    .map(|t| t.state.as_str().to_owned())
                    .unwrap_or_else(|| "Unknown".to_owned()),
                reason: observed.and_then(|t| t.message.clone()),
                vantage_points: observed
                    .map(|t| t.vantage_points.clone())
                    .unwrap_or_default(),
                silent: observed.map(|t| t.silent.clone()).unwrap_or_default(),
                now: observed.map(|t| t.summary.clone()).unwrap_or_default(),
                windows: rollups
                    .targets
                    .get(&rollup_key)
                    .copied()
                    .unwrap_or_default(),
                days: figures::bars(
                    rollups
                        .days
                        .get(&rollup_key)
                        .map(Vec::as_slice)
                        .unwrap_or(&[]),
                    now,
                ),
                thresholds: probe.spec.thresholds.with(target.thresholds.as_ref()),
            }
        })
        .collect();
    ProbeView {
        namespace: probe.namespace().unwrap_or_default(),
        name: probe.name_any(),
        health: match status.health.as_str() {
            "" => "Unknown".to_owned(),
            word => word.to_owned(),
        },
        visibility: Some(visibility),
        visibility_note,
        ready: status.ready.clone(),
        reporting_probes: status.reporting_probes,
        last_sample: status.last_sample_time.clone(),
        now: status.summary.clone(),
        windows: rollups.probes.get(&key).copied().unwrap_or_default(),
        messages: not_true_messages(&status.conditions),
        targets,
    }
}

/// A rendered body and its validator, and for the page its gzipped form and validator.
#[derive(Debug, Clone)]
pub struct Cached {
    pub body: Bytes,
    pub etag: String,
    pub gzip: Option<(Bytes, String)>,
}

impl Cached {
    pub fn new(body: impl Into<Bytes>) -> Self {
        let body = body.into();
        Self {
            etag: etag_of(&body),
            body,
            gzip: None,
        }
    }

    /// With a gzipped copy, made once here rather than per request: the page of a large
    /// fleet is mostly repeated bar markup and shrinks about twentyfold.
    pub fn compressed(body: impl Into<Bytes>) -> Self {
        use std::io::Write as _;
        let mut cached = Self::new(body);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        if encoder.write_all(&cached.body).is_ok()
            && let Ok(gzip) = encoder.finish()
        {
            // A different representation: its own validator.
            let etag = format!("{}-gz\"", cached.etag.trim_end_matches('"'));
            cached.gzip = Some((gzip.into(), etag));
        }
        cached
    }
}

/// Whether the request's Accept-Encoding takes gzip (and does not refuse it with q=0).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// A strong ETag of a body. SipHash with fixed keys: the same body gives the same tag in
/// every replica running this build, so a Service may send a client to either.
pub fn etag_of(body: &[u8]) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}-{:x}\"", hasher.finish(), body.len())
}

/// What the server answers from: the newest snapshot and its rendered page.
struct Rendered {
    snapshot: Arc<Snapshot>,
    page: Cached,
}

/// The status page's state, shared by the refresh task and the HTTP handlers.
pub struct StatusPage {
    settings: Settings,
    current: RwLock<Option<Arc<Rendered>>>,
}

impl StatusPage {
    pub fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            current: RwLock::new(None),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Publishes a snapshot gathered in internal form: trimmed for the mode, rendered once.
    pub fn publish(&self, mut snapshot: Snapshot) {
        snapshot.refresh_every = self.settings.refresh_every;
        if self.settings.mode == Mode::Public {
            snapshot = snapshot.public();
        }
        let page = Cached::compressed(html::page(&snapshot));
        let rendered = Arc::new(Rendered {
            snapshot: Arc::new(snapshot),
            page,
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(rendered);
    }

    fn current(&self) -> Option<Arc<Rendered>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The newest published snapshot.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current().map(|r| r.snapshot.clone())
    }

    /// Gathers and publishes one snapshot.
    pub async fn refresh(&self, client: &Client, databases: &Databases) {
        let snapshot = gather(
            client,
            databases,
            self.settings.namespace.as_deref(),
            Utc::now(),
        )
        .await;
        for problem in &snapshot.problems {
            tracing::warn!(%problem, "status page refresh");
        }
        self.publish(snapshot);
    }

    /// Refreshes every `refresh_every` until `stop` completes.
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        databases: Databases,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(self.settings.refresh_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => self.refresh(&client, &databases).await,
            }
        }
    }
}

/// The status page's HTTP routes: `/` (the page), and the badges
/// `/badges/{namespace}/{probe}/{uptime|latency}.svg` and
/// `/badges/{namespace}/{probe}/{target}/{uptime|latency}.svg`, each taking `?window=24h|7d|30d`.
pub fn router(page: Arc<StatusPage>) -> Router {
    Router::new()
        .route("/", get(serve_page))
        .route("/badges/{namespace}/{probe}/{metric}", get(probe_badge))
        .route(
            "/badges/{namespace}/{probe}/{target}/{metric}",
            get(target_badge),
        )
        .with_state(page)
}

/// Fresh for one refresh interval; an internal page is for the browser's cache only.
fn max_age(page: &StatusPage) -> String {
    format!(
        "{}, max-age={}",
        match page.settings.mode {
            Mode::Public => "public",
            Mode::Internal => "private",
        },
        page.settings.refresh_every.as_secs().max(1)
    )
}

/// 304 when the client holds `cached` already (If-None-Match), else the body.
fn conditional(
    headers: &HeaderMap,
    cached: &Cached,
    content_type: &'static str,
    cache_control: String,
    status: StatusCode,
) -> Response {
    let gzip = cached.gzip.as_ref().filter(|_| accepts_gzip(headers));
    let (body, etag) = match gzip {
        Some((body, etag)) => (body, etag),
        None => (&cached.body, &cached.etag),
    };
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag);
    let mut response = if matches && status == StatusCode::OK {
        (StatusCode::NOT_MODIFIED, Body::empty()).into_response()
    } else {
        (status, Body::from(body.clone())).into_response()
    };
    let h = response.headers_mut();
    if !matches || status != StatusCode::OK {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if gzip.is_some() {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
    if cached.gzip.is_some() {
        h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cache_control) {
        h.insert(CACHE_CONTROL, v);
    }
    response
}

fn not_ready() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(RETRY_AFTER, "5")],
        "the status page is being prepared (its first refresh has not finished)\n",
    )
        .into_response()
}

async fn serve_page(State(page): State<Arc<StatusPage>>, headers: HeaderMap) -> Response {
    let Some(current) = page.current() else {
        return not_ready();
    };
    conditional(
        &headers,
        &current.page,
        "text/html; charset=utf-8",
        max_age(&page),
        StatusCode::OK,
    )
}

#[derive(Debug, serde::Deserialize)]
struct BadgeQuery {
    window: Option<String>,
}

async fn probe_badge(
    State(page): State<Arc<StatusPage>>,
    Path((namespace, probe, metric)): Path<(String, String, String)>,
    Query(query): Query<BadgeQuery>,
    headers: HeaderMap,
) -> Response {
    badge_response(&page, &headers, &namespace, &probe, None, &metric, query)
}

async fn target_badge(
    State(page): State<Arc<StatusPage>>,
    Path((namespace, probe, target, metric)): Path<(String, String, String, String)>,
    Query(query): Query<BadgeQuery>,
    headers: HeaderMap,
) -> Response {
    badge_response(
        &page,
        &headers,
        &namespace,
        &probe,
        Some(&target),
        &metric,
        query,
    )
}

fn badge_response(
    page: &StatusPage,
    headers: &HeaderMap,
    namespace: &str,
    probe: &str,
    target: Option<&str>,
    metric: &str,
    query: BadgeQuery,
) -> Response {
    let request = match badge::Request::parse(metric, query.window.as_deref()) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Some(snapshot) = page.snapshot() else {
        return not_ready();
    };
    // A probe the mode leaves out answers as one that does not exist.
    let (svg, status) = match badge::render(&snapshot, namespace, probe, target, request) {
        Some(svg) => (svg, StatusCode::OK),
        None => (badge::not_found(request), StatusCode::NOT_FOUND),
    };
    conditional(
        headers,
        &Cached::new(svg),
        "image/svg+xml; charset=utf-8",
        max_age(page),
        status,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_visibility_is_private_and_named() {
        assert_eq!(Visibility::parse(None).0, Visibility::Public);
        assert_eq!(Visibility::parse(Some("hidden")).0, Visibility::Hidden);
        let (v, note) = Visibility::parse(Some("secret"));
        assert_eq!(v, Visibility::Private);
        let note = note.unwrap();
        assert!(note.contains(VISIBILITY_ANNOTATION) && note.contains("\"secret\""));
        assert!(note.contains("hidden, private, public"));
    }

    #[test]
    fn public_reasons_name_regions_not_nodes() {
        assert_eq!(
            without_nodes(
                "latency p95 400 ms > 150 ms; degraded from ghana/gh-accra-1, kenya/ke-1 only (2 of 3 vantage points)",
                &["ghana/gh-accra-1".into(), "kenya/ke-1".into()],
                &["gh-accra-2".into()],
            ),
            "latency p95 400 ms > 150 ms; degraded from ghana, kenya only (2 of 3 vantage points)"
        );
        assert_eq!(
            without_nodes("stale on gh-accra-2", &[], &["gh-accra-2".into()]),
            "stale on a node"
        );
    }

    #[test]
    fn gzip_is_served_to_who_takes_it() {
        let take = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&h)
        };
        assert!(take("gzip, deflate, br"));
        assert!(take("br;q=1.0, GZIP;q=0.5"));
        assert!(!take("gzip;q=0, br"));
        assert!(!take("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_address_is_read_from_any_kind() {
        let target: fiberstack_model::Target = serde_json::from_value(serde_json::json!({
            "name": "web", "http": { "url": "https://10.1.2.3/health" }
        }))
        .unwrap();
        assert_eq!(
            target_address(&target).as_deref(),
            Some("https://10.1.2.3/health")
        );
    }
}
