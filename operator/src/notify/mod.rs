//! Notifications: a FiberProbe's alerts (decided in `controller::probe::alerts`, stored in
//! its status first) sent to the FiberNotifiers that concern it, and recorded in the alert
//! history.
//!
//! Exactly once per transition, across restarts and leader changes: the status is the
//! outbox. An alert's start or end is written to status before anything is sent; each
//! notifier's acknowledgement is written back into `status.alerts[].notified` after its
//! receiver answered 2xx; a reconcile sends only what a notifier has not acknowledged. A crash
//! between a receiver's answer and that write sends the same notification again, with the
//! same id (`Idempotency-Key` for webhooks; Alertmanager merges identical alerts), which the
//! receiver can deduplicate.
//!
//! A failing receiver is retried with exponential backoff (per notifier, in memory), shown in
//! the FiberNotifier's status and Events; its URL (from a Secret) never appears in either, nor
//! in logs.

pub mod history;
pub mod payload;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fiberstack_plumbing::backoff::Backoff;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tokio::sync::Mutex;

use crate::conditions::{ConditionType, Reason, Status, condition, merge, rfc3339};
use crate::controller::Context;
use crate::crd::{
    Alert, AlertState, FiberNotifier, FiberNotifierStatus, FiberProbe, FiberProbeStatus,
    FiberRegion, Notified, SecretKeyRef,
};
use payload::Subject;

/// Longest a receiver may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP(S) client notifications are sent with.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// The operator's notification state that need not survive it: when each firing alert was
/// last re-sent to an Alertmanager, and which notifiers are failing.
pub struct Notifications {
    client: HttpClient,
    sent_at: Mutex<HashMap<(String, String), Instant>>,
    failing: Mutex<HashMap<String, (u32, Instant)>>,
    backoff: Backoff,
    /// A firing alert is re-sent to an Alertmanager this often.
    pub resend_every: Duration,
    /// `--alert-link`: a URL template with {namespace}, {probe}, {region}, {target}.
    pub link: Option<String>,
}

impl Notifications {
    pub fn new(link: Option<String>, resend_every: Duration, backoff: Backoff) -> Self {
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Self {
            client,
            sent_at: Mutex::default(),
            failing: Mutex::default(),
            backoff,
            resend_every,
            link,
        }
    }
}

/// The kinds of receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Alertmanager,
    Webhook,
    Slack,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alertmanager => "alertmanager",
            Kind::Webhook => "webhook",
            Kind::Slack => "slack",
        }
    }
}

/// A FiberNotifier a probe notifies.
#[derive(Debug, Clone)]
pub struct Channel<'a> {
    pub notifier: &'a FiberNotifier,
    pub name: String,
    pub kind: Kind,
    pub secret: &'a SecretKeyRef,
}

/// The notifier's kind and URL Secret; None when it sets none (the API server's CEL rule
/// refuses that).
pub fn channel(notifier: &FiberNotifier) -> Option<Channel<'_>> {
    let spec = &notifier.spec;
    let (kind, endpoint) = if let Some(e) = &spec.alertmanager {
        (Kind::Alertmanager, e)
    } else if let Some(e) = &spec.webhook {
        (Kind::Webhook, e)
    } else {
        (Kind::Slack, spec.slack.as_ref()?)
    };
    Some(Channel {
        notifier,
        name: notifier.name_any(),
        kind,
        secret: &endpoint.url_secret_ref,
    })
}

/// The notifiers of `probe`: named in its spec.alerting.notifiers, or selecting its labels;
/// and the names it gives that do not exist.
pub fn select<'a>(
    probe: &FiberProbe,
    notifiers: &'a [FiberNotifier],
) -> (Vec<Channel<'a>>, Vec<String>) {
    let named = &probe.spec.alerting.notifiers;
    let labels = probe.labels();
    let selects = |selector: &BTreeMap<String, String>| {
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let channels = notifiers
        .iter()
        .filter(|n| named.contains(&n.name_any()) || selects(&n.spec.probe_selector))
        .filter_map(channel)
        .collect();
    let missing = named
        .iter()
        .filter(|name| !notifiers.iter().any(|n| &n.name_any() == *name))
        .cloned()
        .collect();
    (channels, missing)
}

/// One notification to send: alert `alert` in `state` to channel `channel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub alert: usize,
    pub channel: usize,
    pub state: AlertState,
}

/// What is owed, pure: a firing alert to every notifier that has not acknowledged it (and,
/// for an Alertmanager, again when `resend_due` says so); an alert's end to every notifier
/// that acknowledged its start. Nothing while muted.
pub fn plan(
    alerts: &[Alert],
    channels: &[Channel],
    muted: bool,
    resend_due: impl Fn(&Alert, &Channel) -> bool,
) -> Vec<Due> {
    if muted {
        return vec![];
    }
    let mut due = vec![];
    for (a, alert) in alerts.iter().enumerate() {
        for (c, channel) in channels.iter().enumerate() {
            let acknowledged = alert
                .notified
                .iter()
                .find(|n| n.notifier == channel.name)
                .map(|n| &n.state);
            let send = match alert.state {
                AlertState::Resolved => acknowledged == Some(&AlertState::Firing),
                _ => {
                    acknowledged != Some(&AlertState::Firing)
                        || (channel.kind == Kind::Alertmanager && resend_due(alert, channel))
                }
            };
            if send {
                due.push(Due {
                    alert: a,
                    channel: c,
                    state: alert.state,
                });
            }
        }
    }
    due
}

/// What delivering did: whether `status` changed (acknowledgements or history recorded; it
/// must be written again) and when to try again what could not be sent.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub changed: bool,
    pub retry_in: Option<Duration>,
}

/// Sends what `status.alerts` owes and records it, after that status was written. Never
/// fails: what could not be done is logged, reported and left owed for the next reconcile.
pub async fn deliver(
    ctx: &Context,
    probe: &FiberProbe,
    region: Option<&FiberRegion>,
    status: &mut FiberProbeStatus,
    now: DateTime<Utc>,
) -> Outcome {
    let mut outcome = Outcome::default();
    if status.alerts.is_empty() {
        return outcome;
    }
    let ns = probe.namespace().unwrap_or_default();
    let name = probe.name_any();
    let region_name = probe.spec.region.clone();
    let notes = &ctx.notifications;

    let cached = crate::controller::cache::synced(&ctx.caches.notifiers)
        .await
        .then(|| {
            ctx.caches
                .notifiers
                .state()
                .iter()
                .filter(|n| n.namespace().as_deref() == Some(ns.as_str()))
                .map(|n| (**n).clone())
                .collect::<Vec<_>>()
        });
    let listed = match cached {
        Some(notifiers) => Ok(notifiers),
        None => {
            ctx.metrics.api_reads("FiberNotifier");
            ctx.api::<FiberNotifier>(&ns)
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
        }
    };
    let notifiers = match listed {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(probe = %name, namespace = %ns, error = %e, "cannot list FiberNotifiers");
            outcome.retry_in = Some(notes.backoff.base);
            vec![]
        }
    };
    let (channels, missing) = select(probe, &notifiers);
    if !missing.is_empty() {
        tracing::warn!(probe = %name, namespace = %ns, ?missing, "spec.alerting.notifiers names FiberNotifiers that do not exist");
    }
    let sent_at = notes.sent_at.lock().await.clone();
    let due = plan(
        &status.alerts,
        &channels,
        probe.spec.alerting.muted_at(now),
        |alert, channel| {
            sent_at
                .get(&(alert.id.clone(), channel.name.clone()))
                .is_none_or(|t| t.elapsed() >= notes.resend_every)
        },
    );

    for (c, channel) in channels.iter().enumerate() {
        let mine: Vec<&Due> = due.iter().filter(|d| d.channel == c).collect();
        if mine.is_empty() {
            continue;
        }
        let key = format!("{ns}/{}", channel.name);
        if let Some((_, next)) = notes.failing.lock().await.get(&key)
            && *next > Instant::now()
        {
            let wait = *next - Instant::now();
            outcome.retry_in = Some(outcome.retry_in.map_or(wait, |r| r.min(wait)));
            continue;
        }
        let mut sent = 0;
        let failure = match ctx.secret_value(&ns, channel.secret).await {
            Err(e) => Some((Reason::SecretNotFound, e)),
            Ok(url) => {
                let mut failure = None;
                for d in mine {
                    let alert = &status.alerts[d.alert];
                    let subject = Subject {
                        namespace: &ns,
                        probe: &name,
                        region: &region_name,
                        kind: &kind_of(probe, &alert.target),
                        alert,
                        state: d.state,
                        link: notes
                            .link
                            .as_deref()
                            .map(|t| payload::link(t, &ns, &name, &region_name, &alert.target)),
                    };
                    match send(notes, channel.kind, &url, &subject, now).await {
                        Ok(()) => {
                            sent += 1;
                            // Re-send times matter only while firing: an end forgets them.
                            let key = (alert.id.clone(), channel.name.clone());
                            let mut sent_at = notes.sent_at.lock().await;
                            if d.state == AlertState::Resolved {
                                sent_at.remove(&key);
                            } else {
                                sent_at.insert(key, Instant::now());
                            }
                            drop(sent_at);
                            let alert = &mut status.alerts[d.alert];
                            if acknowledge(alert, &channel.name, &d.state, now) {
                                outcome.changed = true;
                            }
                        }
                        Err(e) => {
                            failure = Some((Reason::DeliveryFailed, e));
                            break;
                        }
                    }
                }
                failure
            }
        };
        match &failure {
            None => {
                notes.failing.lock().await.remove(&key);
            }
            Some((_, e)) => {
                let mut failing = notes.failing.lock().await;
                let failures = failing.get(&key).map_or(0, |(n, _)| *n);
                let wait = notes.backoff.delay(failures);
                failing.insert(key.clone(), (failures + 1, Instant::now() + wait));
                outcome.retry_in = Some(outcome.retry_in.map_or(wait, |r| r.min(wait)));
                tracing::warn!(notifier = %channel.name, namespace = %ns, kind = channel.kind.as_str(), error = %e, retry_in_ms = wait.as_millis() as u64, "notification not delivered");
            }
        }
        let labels = |result| crate::metrics::NotificationLabels {
            namespace: ns.clone(),
            notifier: channel.name.clone(),
            kind: channel.kind.as_str(),
            result,
        };
        ctx.metrics
            .notifications
            .get_or_create(&labels("sent"))
            .inc_by(sent as u64);
        if failure.is_some() {
            ctx.metrics
                .notifications
                .get_or_create(&labels("failed"))
                .inc();
        }
        report(ctx, channel, sent, failure, now).await;
    }

    if let Some(region) = region {
        outcome.changed |= record_history(ctx, probe, region, status).await;
    }
    outcome
}

/// Notes `notifier`'s acknowledgement of `state`; whether that changed the alert (a re-send
/// of an acknowledged state does not).
fn acknowledge(alert: &mut Alert, notifier: &str, state: &AlertState, now: DateTime<Utc>) -> bool {
    match alert.notified.iter_mut().find(|n| n.notifier == notifier) {
        Some(n) if &n.state == state => false,
        Some(n) => {
            n.state = *state;
            n.time = rfc3339(now);
            true
        }
        None => {
            alert.notified.push(Notified {
                notifier: notifier.to_owned(),
                state: *state,
                time: rfc3339(now),
            });
            true
        }
    }
}

/// The check kind of `target` in the probe's spec, for labels.
fn kind_of(probe: &FiberProbe, target: &str) -> String {
    probe
        .spec
        .targets
        .iter()
        .find(|t| t.name == target)
        .and_then(|t| t.check().ok())
        .map_or("unknown", |c| c.kind().as_str())
        .to_owned()
}

/// One POST; an error that never contains the URL (it may carry a credential).
async fn send(
    notes: &Notifications,
    kind: Kind,
    url: &str,
    subject: &Subject<'_>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    use http_body_util::BodyExt;
    use hyper::header::{CONTENT_TYPE, USER_AGENT};

    let (url, body) = match kind {
        Kind::Alertmanager => (
            format!("{}/api/v2/alerts", url.trim_end_matches('/')),
            payload::alertmanager(subject, now, notes.resend_every * 4),
        ),
        Kind::Webhook => (url.to_owned(), payload::webhook(subject)),
        Kind::Slack => (url.to_owned(), payload::slack(subject)),
    };
    let who = kind.as_str();
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| format!("the {who} URL in the Secret is not a valid http(s) URL"))?;
    let mut request = hyper::Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("fiberstack-operator/", env!("CARGO_PKG_VERSION")),
        );
    if kind == Kind::Webhook {
        request = request.header("Idempotency-Key", payload::idempotency_key(subject));
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .map_err(|e| format!("{who} request: {e}"))?;
    let exchange = async {
        let response = notes
            .client
            .request(request)
            .await
            .map_err(|e| format!("{who} receiver: {}", error_chain(&e)))?;
        let code = response.status();
        if code.is_success() {
            return Ok(());
        }
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let text: String = text.trim().chars().take(200).collect();
        Err(format!("{who} receiver answered {code}: {text}"))
    };
    tokio::time::timeout(SEND_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{who} receiver: no answer within {SEND_TIMEOUT:?}"))?
}

/// An error and its sources, on one line (hyper's errors never name the URL).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The FiberNotifier's status after an attempt: counts, times, Ready, and an Event when it
/// failed. Optimistic: a conflicting write by another reconcile is re-read and retried.
async fn report(
    ctx: &Context,
    channel: &Channel<'_>,
    sent: i64,
    failure: Option<(Reason, String)>,
    now: DateTime<Utc>,
) {
    let ns = channel.notifier.namespace().unwrap_or_default();
    let api = ctx.api::<FiberNotifier>(&ns);
    let mut notifier = channel.notifier.clone();
    for _ in 0..3 {
        let previous = notifier.status.clone().unwrap_or_default();
        let ready = match &failure {
            None => condition(
                ConditionType::Ready,
                Status::True,
                Reason::Delivered,
                format!("{sent} notification(s) delivered at {}", rfc3339(now)),
            ),
            Some((reason, e)) => condition(
                ConditionType::Ready,
                Status::False,
                reason.clone(),
                e.clone(),
            ),
        };
        let status = FiberNotifierStatus {
            kind: Some(channel.kind.as_str().to_owned()),
            conditions: merge(&previous.conditions, vec![ready], None, now),
            sent: previous.sent + sent,
            consecutive_failures: if failure.is_some() {
                previous.consecutive_failures + 1
            } else {
                0
            },
            last_sent_time: if sent > 0 {
                Some(rfc3339(now))
            } else {
                previous.last_sent_time.clone()
            },
            last_failure_time: if failure.is_some() {
                Some(rfc3339(now))
            } else {
                previous.last_failure_time.clone()
            },
        };
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": notifier.resource_version() },
            "status": status,
        });
        match api
            .patch_status(
                &channel.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&channel.name).await {
                Ok(fresh) => notifier = fresh,
                Err(_) => break,
            },
            Err(e) => {
                tracing::warn!(notifier = %channel.name, namespace = %ns, error = %e, "cannot write the notifier's status");
                break;
            }
        }
    }
    if let Some((reason, e)) = failure {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.as_str().to_owned(),
            note: Some(e.chars().take(1000).collect()),
            action: "Notify".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx
            .recorder
            .publish(&event, &channel.notifier.object_ref(&()))
            .await
        {
            tracing::warn!(notifier = %channel.name, error = %e, "could not publish an event");
        }
    }
}

/// Writes every alert whose state the history does not hold yet, through the region's
/// writer URL; whether any was written.
async fn record_history(
    ctx: &Context,
    probe: &FiberProbe,
    region: &FiberRegion,
    status: &mut FiberProbeStatus,
) -> bool {
    if status
        .alerts
        .iter()
        .all(|a| a.recorded.as_ref() == Some(&a.state))
    {
        return false;
    }
    let ns = probe.namespace().unwrap_or_default();
    let pool = match ctx
        .secret_value(&ns, &region.spec.database.url_secret_ref)
        .await
    {
        Ok(url) => ctx.databases.writer(&url).await,
        Err(e) => Err(format!("{e} (the region's spec.database.urlSecretRef)")),
    };
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => {
            tracing::warn!(probe = %probe.name_any(), namespace = %ns, error = %e, "alert history not written");
            return false;
        }
    };
    let mut changed = false;
    for alert in status
        .alerts
        .iter_mut()
        .filter(|a| a.recorded.as_ref() != Some(&a.state))
    {
        let notified: Vec<String> = alert.notified.iter().map(|n| n.notifier.clone()).collect();
        match history::record(
            &pool,
            &ns,
            &probe.name_any(),
            &probe.spec.region,
            alert,
            &notified,
        )
        .await
        {
            Ok(()) => {
                alert.recorded = Some(alert.state);
                changed = true;
            }
            Err(e) => {
                tracing::warn!(probe = %probe.name_any(), namespace = %ns, alert = %alert.id, error = %e, "alert history not written");
                break;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Endpoint, FiberNotifierSpec};

    fn notifier(name: &str, kind: Kind, selector: &[(&str, &str)]) -> FiberNotifier {
        let endpoint = Some(Endpoint {
            url_secret_ref: SecretKeyRef {
                name: format!("{name}-url"),
                key: "url".into(),
            },
        });
        let mut spec = FiberNotifierSpec {
            alertmanager: None,
            webhook: None,
            slack: None,
            probe_selector: selector
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        };
        match kind {
            Kind::Alertmanager => spec.alertmanager = endpoint,
            Kind::Webhook => spec.webhook = endpoint,
            Kind::Slack => spec.slack = endpoint,
        }
        let mut n = FiberNotifier::new(name, spec);
        n.metadata.namespace = Some("ns".into());
        n
    }

    fn alert(state: AlertState, acked: &[(&str, AlertState)]) -> Alert {
        Alert {
            id: "ns/p/a@1".into(),
            target: "a".into(),
            state,
            notified: acked
                .iter()
                .map(|(n, s)| Notified {
                    notifier: (*n).into(),
                    state: *s,
                    time: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn notifiers_are_named_or_select_by_label() {
        let mut probe = crate::fixtures::probe();
        probe.spec.alerting.notifiers = vec!["pager".into(), "gone".into()];
        probe.metadata.labels = Some([("team".to_owned(), "noc".to_owned())].into());
        let all = vec![
            notifier("pager", Kind::Alertmanager, &[]),
            notifier("noc-slack", Kind::Slack, &[("team", "noc")]),
            notifier("other", Kind::Webhook, &[("team", "core")]),
            notifier("unlabelled", Kind::Webhook, &[]),
        ];
        let (channels, missing) = select(&probe, &all);
        let names: Vec<(&str, Kind)> = channels.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            names,
            [("pager", Kind::Alertmanager), ("noc-slack", Kind::Slack)]
        );
        assert_eq!(missing, ["gone"]);
    }

    #[test]
    fn what_is_owed_is_sent_once_and_an_end_only_to_who_heard_the_start() {
        use AlertState::{Firing as F, Resolved as R};
        let all = [
            notifier("am", Kind::Alertmanager, &[]),
            notifier("hook", Kind::Webhook, &[]),
        ];
        let channels: Vec<Channel> = all.iter().filter_map(channel).collect();
        let never = |_: &Alert, _: &Channel| false;
        let due = |alerts: &[Alert]| -> Vec<(usize, AlertState)> {
            plan(alerts, &channels, false, never)
                .into_iter()
                .map(|d| (d.channel, d.state))
                .collect()
        };
        assert_eq!(due(&[alert(F, &[])]), [(0, F), (1, F)]);
        assert_eq!(due(&[alert(F, &[("am", F)])]), [(1, F)]);
        assert!(due(&[alert(F, &[("am", F), ("hook", F)])]).is_empty());
        assert_eq!(due(&[alert(R, &[("am", F), ("hook", R)])]), [(0, R)]);
        assert!(
            due(&[alert(R, &[])]).is_empty(),
            "an end nobody heard the start of is owed to nobody"
        );
        // Muted: nothing at all.
        assert!(plan(&[alert(F, &[])], &channels, true, never).is_empty());
        // Alertmanager (only) gets a firing alert again when its re-send is due.
        let always = |_: &Alert, _: &Channel| true;
        let resent: Vec<usize> = plan(
            &[alert(F, &[("am", F), ("hook", F)])],
            &channels,
            false,
            always,
        )
        .into_iter()
        .map(|d| d.channel)
        .collect();
        assert_eq!(resent, [0]);
    }

    #[test]
    fn an_acknowledgement_changes_the_alert_only_when_its_state_is_new() {
        let now = Utc::now();
        let mut a = alert(AlertState::Firing, &[]);
        assert!(acknowledge(&mut a, "am", &AlertState::Firing, now));
        assert!(!acknowledge(&mut a, "am", &AlertState::Firing, now));
        a.state = AlertState::Resolved;
        assert!(acknowledge(&mut a, "am", &AlertState::Resolved, now));
        assert_eq!(a.notified.len(), 1);
        assert_eq!(a.notified[0].state, AlertState::Resolved);
    }
}
