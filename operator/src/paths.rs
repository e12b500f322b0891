//! Path-change detection for traceroute targets: the rounds' path fingerprints read for many
//! probes at once (the gather step's SQL), and what they mean (pure, part of the decide
//! step): each node's current path with hysteresis, the changes, the `PathChanged` Events and
//! the `FiberPathChanged` alerts.
//!
//! Hysteresis: a node's new fingerprint becomes its current path only once it held for
//! `changeAfterRounds` rounds in a row (default 3, at least 2); a shorter run of another
//! fingerprint is a flap and leaves the current path as it is. The rounds are judged one by
//! one in time order; status keeps, per node, the newest round judged and the run being
//! counted, so each round counts once whatever the reconcile rate, and a restarted operator
//! (or a new leader) goes on from the status and announces nothing twice: a change is
//! announced only after the status that records the new path is written.
//!
//! The query reads the fingerprints of a bounded window of the newest rounds (15 minutes,
//! at least `changeAfterRounds + 1` intervals, at most 100 intervals) from the natural key
//! index of `metrics`, and the hop lists from `hops` only for the newest round of each
//! distinct path of each node in that window (one index lookup each): in steady state, one
//! round per node, however big the hops table.
//!
//! The alert: a path change is an event, not a state. A node's `FiberPathChanged` alert fires
//! when its change is announced and resolves by itself `changeAlertFor` later (default 1 h;
//! 0s: no alert, the Event only). Another change of the same node while it fires updates the
//! alert in place (reason and lifetime) instead of opening a second alert with the same
//! labels, which Alertmanager would merge anyway.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::conditions::rfc3339;
use crate::controller::effects::Transition;
use crate::crd::{Alert, AlertState, FiberProbe, FiberProbeSpec};
use fiberstack_model::TracerouteCheck;

/// A traceroute target's paths in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetPath {
    /// The traceroute target's name in spec.targets.
    pub target: String,
    /// The path each node (vantage point) currently takes, by node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub vantage_points: Vec<VantagePath>,
    /// The newest change of any node's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<PathChange>,
}

/// One node's current path to a traceroute target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VantagePath {
    /// The node probing from.
    pub node: String,
    /// Its region.
    pub region: String,
    /// The path's fingerprint (16 hex digits, as in the samples' path_fingerprint).
    pub fingerprint: String,
    /// The hops' addresses in TTL order from the target's firstHop, `*` for a hop that did
    /// not answer.
    #[serde(default)]
    pub hops: Vec<String>,
    /// The first round of this path, RFC 3339.
    pub since: String,
    /// When the operator took this path as a change of the previous one, RFC 3339; absent
    /// for the first path it learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    /// The newest round judged, RFC 3339 with microseconds: later rounds are judged next.
    pub last_round: String,
    /// Another path seen in the newest rounds, not yet held long enough to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingPath>,
}

/// A path being counted before it may replace the current one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingPath {
    /// Its fingerprint.
    pub fingerprint: String,
    /// Rounds in a row that took it.
    pub rounds: u32,
    /// The first of those rounds, RFC 3339.
    pub since: String,
}

/// A node's path changed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathChange {
    /// The first round of the new path, RFC 3339.
    pub time: String,
    /// When the operator took it as a change (the new path had held for changeAfterRounds
    /// rounds), RFC 3339.
    pub detected_at: String,
    /// The node whose path changed.
    pub node: String,
    /// Its region.
    pub region: String,
    /// The hops before, `*` for a silent hop.
    #[serde(default)]
    pub before: Vec<String>,
    /// The hops after.
    #[serde(default)]
    pub after: Vec<String>,
}

/// One traceroute target of [`rounds_many`].
#[derive(Debug, Clone, PartialEq)]
pub struct PathQuery {
    /// `namespace/name`, as samples carry it.
    pub probe: String,
    pub target: String,
    /// How far back to read, seconds.
    pub lookback_secs: f64,
}

/// One round of a traceroute target from one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub target: String,
    pub node: String,
    pub region: String,
    pub time: DateTime<Utc>,
    pub fingerprint: String,
    /// The hop addresses (`*` for silent hops): read only for the newest round of each path
    /// of each node in the window.
    pub hops: Option<Vec<String>>,
}

/// The window of rounds read: 15 minutes, at least `rounds + 1` intervals (so that a run of
/// `rounds` fits with the round before it), at most 100 intervals (so a short interval does
/// not read thousands of rounds per node).
pub fn lookback(interval: Duration, rounds: u32) -> Duration {
    let least = interval * (rounds + 1);
    let most = interval * 100;
    Duration::from_secs(900).clamp(least, most.max(least))
}

/// The probe's traceroute targets as [`rounds_many`] takes them.
pub fn queries(probe: &FiberProbe) -> Vec<PathQuery> {
    let key = crate::render::probe::probe_key(probe);
    traceroutes(&probe.spec)
        .map(|(name, check)| PathQuery {
            probe: key.clone(),
            target: name.to_owned(),
            lookback_secs: lookback(probe.spec.interval.as_std(), check.change_after_rounds)
                .as_secs_f64(),
        })
        .collect()
}

fn traceroutes(spec: &FiberProbeSpec) -> impl Iterator<Item = (&str, &TracerouteCheck)> {
    spec.targets
        .iter()
        .filter_map(|t| t.traceroute.as_ref().map(|c| (t.name.as_str(), c)))
}

type RoundRow = (
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    String,
    Option<Vec<String>>,
);

/// The rounds of every target of `queries` in its window, by probe, each probe's sorted by
/// target, node and time — one statement for them all.
pub async fn rounds_many(
    pool: &PgPool,
    queries: &[PathQuery],
) -> Result<HashMap<String, Vec<Round>>, sqlx::Error> {
    let mut by_probe: HashMap<String, Vec<Round>> = HashMap::new();
    if queries.is_empty() {
        return Ok(by_probe);
    }
    let probes: Vec<&str> = queries.iter().map(|q| q.probe.as_str()).collect();
    let targets: Vec<&str> = queries.iter().map(|q| q.target.as_str()).collect();
    let secs: Vec<f64> = queries.iter().map(|q| q.lookback_secs).collect();
    let widest = secs.iter().copied().fold(0.0, f64::max);
    // The widest window bounds the scan for chunk exclusion; each target keeps its own.
    let rows: Vec<RoundRow> = sqlx::query_as(
        "with r as (
           select t.probe, t.target, m.node, m.region, m.time, m.path_fingerprint,
                  row_number() over (partition by t.probe, t.target, m.node, m.path_fingerprint
                                     order by m.time desc) as nth
             from unnest($1::text[], $2::text[], $3::float8[]) t(probe, target, secs)
             join metrics m on m.probe = t.probe and m.target = t.target
                           and m.time > now() - make_interval(secs => t.secs)
            where m.time > now() - make_interval(secs => $4)
              and m.path_fingerprint is not null
         )
         select r.probe, r.target, r.node, r.region, r.time, r.path_fingerprint,
                case when r.nth = 1 then
                  (select array_agg(coalesce(host(h.address), '*') order by h.ttl)
                     from hops h
                    where h.probe = r.probe and h.target = r.target
                      and h.node = r.node and h.time = r.time)
                end
           from r
          order by r.probe, r.target, r.node, r.time",
    )
    .bind(&probes)
    .bind(&targets)
    .bind(&secs)
    .bind(widest)
    .fetch_all(pool)
    .await?;
    for (probe, target, node, region, time, fingerprint, hops) in rows {
        by_probe.entry(probe).or_default().push(Round {
            target,
            node,
            region,
            time,
            fingerprint,
            hops,
        });
    }
    Ok(by_probe)
}

/// How long a node's path is kept in status after its last round (a node gone for good).
const FORGET_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A change found by [`judge`].
#[derive(Debug, Clone, PartialEq)]
struct Change {
    target: String,
    record: PathChange,
    message: String,
}

/// status.paths after this evaluation, the `PathChanged` transitions, and the path alerts
/// started, updated or resolved in `status.alerts`. `rounds`: the probe's rounds in the
/// window; None when they could not be read (the paths stay as they were; alerts still
/// expire).
pub fn evolve(
    probe: &FiberProbe,
    previous: &[TargetPath],
    rounds: Option<&[Round]>,
    status: &mut crate::crd::FiberProbeStatus,
    now: DateTime<Utc>,
) -> Vec<Transition> {
    let spec = &probe.spec;
    let mut paths = vec![];
    let mut changes = vec![];
    for (name, check) in traceroutes(spec) {
        let before = previous.iter().find(|p| p.target == name);
        let Some(rounds) = rounds else {
            paths.extend(before.cloned());
            continue;
        };
        let mine: Vec<&Round> = rounds.iter().filter(|r| r.target == name).collect();
        let (path, found) = judge(name, check, before, &mine, now);
        changes.extend(found);
        if !path.vantage_points.is_empty() || path.last_change.is_some() {
            paths.push(path);
        }
    }
    status.paths = paths;
    evolve_alerts(probe, &mut status.alerts, &status.paths, &changes, now);
    changes
        .into_iter()
        .map(|c| Transition::PathChanged {
            target: c.target,
            node: c.record.node,
            message: c.message,
        })
        .collect()
}

/// One target: each node's rounds judged after the previous status's paths.
fn judge(
    name: &str,
    check: &TracerouteCheck,
    before: Option<&TargetPath>,
    rounds: &[&Round],
    now: DateTime<Utc>,
) -> (TargetPath, Vec<Change>) {
    let mut by_node: BTreeMap<&str, Vec<&Round>> = BTreeMap::new();
    for r in rounds {
        by_node.entry(r.node.as_str()).or_default().push(r);
    }
    let previous: Vec<VantagePath> = before.map(|b| b.vantage_points.clone()).unwrap_or_default();
    let mut nodes: Vec<&str> = by_node.keys().copied().collect();
    nodes.extend(previous.iter().map(|v| v.node.as_str()));
    nodes.sort_unstable();
    nodes.dedup();

    let mut vantage_points = vec![];
    let mut changes = vec![];
    for node in nodes {
        let mut vantage = previous.iter().find(|v| v.node == node).cloned();
        let mine = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        // The newest round of each path in the window carries its hops.
        let mut hops_of: HashMap<&str, &Vec<String>> = HashMap::new();
        for r in mine {
            if let Some(h) = &r.hops {
                hops_of.insert(&r.fingerprint, h);
            }
        }
        let judged = vantage.as_ref().and_then(|v| parse_time(&v.last_round));
        // A node without a path yet starts from nothing on every evaluation: until a path
        // held long enough, there is no state worth keeping.
        let mut pending: Option<PendingPath> = vantage.as_mut().and_then(|v| v.pending.take());
        for r in mine.iter().filter(|r| judged.is_none_or(|j| r.time > j)) {
            if let Some(v) = vantage.as_mut() {
                v.last_round = precise(r.time);
                if v.fingerprint == r.fingerprint {
                    pending = None;
                    continue;
                }
            }
            match pending.as_mut() {
                Some(p) if p.fingerprint == r.fingerprint => p.rounds += 1,
                _ => {
                    pending = Some(PendingPath {
                        fingerprint: r.fingerprint.clone(),
                        rounds: 1,
                        since: rfc3339(r.time),
                    })
                }
            }
            let Some(p) = pending.take_if(|p| p.rounds >= check.change_after_rounds) else {
                continue;
            };
            let hops = hops_of
                .get(p.fingerprint.as_str())
                .map(|h| (*h).clone())
                .unwrap_or_default();
            let next = VantagePath {
                node: node.to_owned(),
                region: r.region.clone(),
                fingerprint: p.fingerprint,
                hops,
                since: p.since,
                changed_at: vantage.is_some().then(|| rfc3339(now)),
                last_round: precise(r.time),
                pending: None,
            };
            if let Some(old) = &vantage {
                let record = PathChange {
                    time: next.since.clone(),
                    detected_at: rfc3339(now),
                    node: node.to_owned(),
                    region: next.region.clone(),
                    before: old.hops.clone(),
                    after: next.hops.clone(),
                };
                changes.push(Change {
                    target: name.to_owned(),
                    message: describe(name, &record, check),
                    record,
                });
            }
            vantage = Some(next);
        }
        let Some(mut v) = vantage else { continue };
        v.pending = pending;
        let gone =
            mine.is_empty() && parse_time(&v.last_round).is_none_or(|t| now - t > FORGET_AFTER);
        if !gone {
            vantage_points.push(v);
        }
    }
    let last_change = changes
        .iter()
        .map(|c| c.record.clone())
        .chain(before.and_then(|b| b.last_change.clone()))
        .max_by(|a, b| (&a.detected_at, &a.time).cmp(&(&b.detected_at, &b.time)));
    (
        TargetPath {
            target: name.to_owned(),
            vantage_points,
            last_change,
        },
        changes,
    )
}

/// "path of target web from ghana/gh-accra-1 changed (new since 2026-…, held 3 rounds): hop
/// 2 10.1.0.1 → 10.2.0.1; hop 3 * → 10.2.0.2; 4 hops, were 5"
fn describe(target: &str, c: &PathChange, check: &TracerouteCheck) -> String {
    let hop = |list: &[String], i: usize| list.get(i).cloned().unwrap_or_else(|| "-".into());
    let differ: Vec<String> = (0..c.before.len().max(c.after.len()))
        .filter(|i| c.before.get(*i) != c.after.get(*i))
        .map(|i| {
            format!(
                "hop {} {} → {}",
                check.first_hop as usize + i,
                hop(&c.before, i),
                hop(&c.after, i)
            )
        })
        .collect();
    let mut text = format!(
        "path of target {target} from {}/{} changed (new since {}, held {} rounds): ",
        c.region, c.node, c.time, check.change_after_rounds
    );
    const SHOWN: usize = 8;
    text.push_str(
        &differ
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    );
    if differ.len() > SHOWN {
        text.push_str(&format!("; {} more hops differ", differ.len() - SHOWN));
    }
    if differ.is_empty() {
        text.push_str("the same addresses, another fingerprint");
    }
    if c.before.len() != c.after.len() {
        text.push_str(&format!(
            "; {} hops, were {}",
            c.after.len(),
            c.before.len()
        ));
    }
    text
}

/// The `FiberPathChanged` alerts after this evaluation's changes: one per changed node,
/// firing from the change for the target's changeAlertFor.
fn evolve_alerts(
    probe: &FiberProbe,
    alerts: &mut Vec<Alert>,
    paths: &[TargetPath],
    changes: &[Change],
    now: DateTime<Utc>,
) {
    let alert_for = |target: &str| {
        traceroutes(&probe.spec)
            .find(|(name, _)| *name == target)
            .map(|(_, c)| c.change_alert_for.as_std())
            .filter(|d| !d.is_zero())
    };
    let namespace = probe.metadata.namespace.as_deref().unwrap_or_default();
    let name = probe.metadata.name.as_deref().unwrap_or_default();
    for change in changes {
        if alert_for(&change.target).is_none() {
            continue;
        }
        let node = &change.record.node;
        let firing = alerts.iter_mut().find(|a| {
            a.state == AlertState::Firing
                && a.target == change.target
                && a.node.as_deref() == Some(node.as_str())
        });
        match firing {
            Some(alert) => alert.reason = change.message.clone(),
            None => alerts.push(Alert {
                id: alert_id(namespace, name, &change.target, node, now),
                target: change.target.clone(),
                state: AlertState::Firing,
                reason: change.message.clone(),
                starts_at: rfc3339(now),
                vantage_points: vec![format!("{}/{node}", change.record.region)],
                node: Some(node.clone()),
                ..Default::default()
            }),
        }
    }
    for alert in alerts
        .iter_mut()
        .filter(|a| a.state == AlertState::Firing && a.node.is_some())
    {
        let node = alert.node.as_deref().unwrap_or_default();
        let changed_at = paths
            .iter()
            .find(|p| p.target == alert.target)
            .and_then(|p| p.vantage_points.iter().find(|v| v.node == node))
            .and_then(|v| v.changed_at.as_deref())
            .and_then(parse_time);
        let until = changed_at
            .zip(alert_for(&alert.target))
            .and_then(|(at, d)| {
                chrono::TimeDelta::from_std(d)
                    .ok()
                    .and_then(|d| at.checked_add_signed(d))
            });
        if until.is_none_or(|until| now >= until) {
            alert.state = AlertState::Resolved;
            alert.ends_at = Some(rfc3339(now));
        }
    }
}

/// The key of a node's path-change alert: `namespace/probe/target/path/node@start`.
pub fn alert_id(
    namespace: &str,
    probe: &str,
    target: &str,
    node: &str,
    starts_at: DateTime<Utc>,
) -> String {
    format!(
        "{namespace}/{probe}/{target}/path/{node}@{}",
        starts_at.timestamp()
    )
}

/// A round's time as status keeps it: to the microsecond, as the database does, so that the
/// next evaluation judges exactly the rounds after it.
fn precise(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::crd::FiberProbeStatus;
    use crate::fixtures::probe;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    /// A probe with one traceroute target "path" (changeAfterRounds 3, alert for 5 min).
    fn tracer() -> FiberProbe {
        let mut p = probe();
        p.spec.targets = vec![
            serde_json::from_value(serde_json::json!({
                "name": "path",
                "traceroute": { "host": "10.9.0.1", "changeAlertFor": "5m" }
            }))
            .unwrap(),
        ];
        p
    }

    fn hops(path: char) -> Vec<String> {
        match path {
            'A' => vec!["10.1.0.1".into(), "10.1.0.2".into(), "10.9.0.1".into()],
            'B' => vec!["10.2.0.1".into(), "*".into(), "10.9.0.1".into()],
            _ => vec!["10.3.0.1".into(), "10.9.0.1".into()],
        }
    }

    fn fingerprint(path: char) -> String {
        format!("{:016x}", path as u32)
    }

    /// Rounds of `node` every 10 s from `start`, one per letter of `paths`; the newest of
    /// each path carries its hops, as the query returns them.
    fn rounds(node: &str, start: i64, paths: &str) -> Vec<Round> {
        let mut rounds: Vec<Round> = paths
            .chars()
            .enumerate()
            .map(|(i, p)| Round {
                target: "path".into(),
                node: node.into(),
                region: "ghana".into(),
                time: at(start + 10 * i as i64) + chrono::TimeDelta::microseconds(250),
                fingerprint: fingerprint(p),
                hops: None,
            })
            .collect();
        for p in paths.chars() {
            if let Some(r) = rounds
                .iter_mut()
                .rev()
                .find(|r| r.fingerprint == fingerprint(p))
            {
                r.hops = Some(hops(p));
            }
        }
        rounds
    }

    /// Evaluates the windows in turn, each on the status the previous one left.
    fn run(windows: &[(i64, Vec<Round>)]) -> Vec<(FiberProbeStatus, Vec<Transition>)> {
        let p = tracer();
        let mut status = FiberProbeStatus::default();
        windows
            .iter()
            .map(|(now, rounds)| {
                let previous = status.paths.clone();
                let t = evolve(&p, &previous, Some(rounds), &mut status, at(*now));
                (status.clone(), t)
            })
            .collect()
    }

    fn current(s: &FiberProbeStatus, node: &str) -> Option<String> {
        s.paths
            .first()?
            .vantage_points
            .iter()
            .find(|v| v.node == node)
            .map(|v| v.fingerprint.clone())
    }

    #[test]
    fn the_first_path_is_learned_after_it_held_without_an_announcement() {
        let steps = run(&[(15, rounds("n1", 0, "AA")), (25, rounds("n1", 0, "AAA"))]);
        assert_eq!(
            current(&steps[0].0, "n1"),
            None,
            "two rounds are not enough"
        );
        assert!(steps[0].0.paths.is_empty());
        let v = &steps[1].0.paths[0].vantage_points[0];
        assert_eq!(
            (v.fingerprint.clone(), v.hops.clone()),
            (fingerprint('A'), hops('A'))
        );
        assert_eq!(v.since, rfc3339(at(0)));
        assert_eq!(v.changed_at, None);
        assert_eq!(v.last_round, "2027-01-15T08:00:20.000250Z");
        assert!(steps.iter().all(|(_, t)| t.is_empty()));
        assert!(steps[1].0.alerts.is_empty());
    }

    #[test]
    fn flaps_shorter_than_the_hold_never_count() {
        // One round of B, then two of C, each back to A; then B and C alternating.
        let steps = run(&[
            (40, rounds("n1", 0, "AAAA")),
            (80, rounds("n1", 0, "AAAABACC")),
            (120, rounds("n1", 0, "AAAABACCABCBC")),
        ]);
        assert!(steps.iter().all(|(_, t)| t.is_empty()), "{steps:?}");
        assert!(
            steps
                .iter()
                .all(|(s, _)| current(s, "n1") == Some(fingerprint('A')))
        );
        let pending = steps[2].0.paths[0].vantage_points[0]
            .pending
            .clone()
            .unwrap();
        assert_eq!((pending.fingerprint, pending.rounds), (fingerprint('C'), 1));
    }

    #[test]
    fn a_lasting_change_is_announced_once_with_the_hops_before_and_after() {
        let steps = run(&[
            (40, rounds("n1", 0, "AAAA")),
            (60, rounds("n1", 0, "AAAABB")),
            (70, rounds("n1", 0, "AAAABBB")),
            (80, rounds("n1", 0, "AAAABBB")),
            (90, rounds("n1", 0, "AAAABBBB")),
        ]);
        let announced: Vec<usize> = steps.iter().map(|(_, t)| t.len()).collect();
        assert_eq!(announced, [0, 0, 1, 0, 0]);
        let [
            Transition::PathChanged {
                target,
                node,
                message,
            },
        ] = steps[2].1.as_slice()
        else {
            panic!("{:?}", steps[2].1);
        };
        assert_eq!((target.as_str(), node.as_str()), ("path", "n1"));
        assert_eq!(
            message,
            "path of target path from ghana/n1 changed (new since 2027-01-15T08:00:40Z, held 3 rounds): \
             hop 1 10.1.0.1 → 10.2.0.1; hop 2 10.1.0.2 → *"
        );
        let s = &steps[2].0;
        let change = s.paths[0].last_change.clone().unwrap();
        assert_eq!((change.before, change.after), (hops('A'), hops('B')));
        assert_eq!(change.time, rfc3339(at(40)));
        assert_eq!(change.detected_at, rfc3339(at(70)));
        let v = &s.paths[0].vantage_points[0];
        assert_eq!(v.changed_at, Some(rfc3339(at(70))));
        assert_eq!(v.hops, hops('B'));
        // The alert fires for changeAlertFor (5 min) from the detection, then resolves.
        let [alert] = s.alerts.as_slice() else {
            panic!("{:?}", s.alerts)
        };
        assert_eq!(alert.state, AlertState::Firing);
        assert_eq!(alert.node.as_deref(), Some("n1"));
        assert_eq!(
            alert.id,
            format!("fiberstack/accra-edge/path/path/n1@{}", at(70).timestamp())
        );
        assert_eq!(alert.reason, *message);
        assert_eq!(alert.vantage_points, ["ghana/n1"]);
        let p = tracer();
        let mut status = s.clone();
        let previous = status.paths.clone();
        evolve(
            &p,
            &previous,
            Some(&rounds("n1", 0, "AAAABBBB")),
            &mut status,
            at(369),
        );
        assert_eq!(status.alerts[0].state, AlertState::Firing);
        evolve(
            &p,
            &previous,
            Some(&rounds("n1", 0, "AAAABBBB")),
            &mut status,
            at(370),
        );
        assert_eq!(status.alerts[0].state, AlertState::Resolved);
        assert_eq!(status.alerts[0].ends_at, Some(rfc3339(at(370))));
    }

    #[test]
    fn only_the_changed_node_is_named_and_a_second_change_updates_its_alert() {
        let mut both = rounds("n1", 0, "AAAABBB");
        both.extend(rounds("n2", 0, "AAAAAAA"));
        let mut again = rounds("n1", 0, "AAAABBBCCC");
        again.extend(rounds("n2", 0, "AAAAAAAAAA"));
        let steps = run(&[(40, rounds("n1", 0, "AAAA")), (70, both), (100, again)]);
        assert_eq!(steps[1].1.len(), 1);
        assert!(matches!(&steps[1].1[0], Transition::PathChanged { node, .. } if node == "n1"));
        assert_eq!(current(&steps[1].0, "n2"), Some(fingerprint('A')));
        assert!(
            matches!(&steps[2].1[..], [Transition::PathChanged { message, .. }] if message.contains("hop 1 10.2.0.1 → 10.3.0.1"))
        );
        let s = &steps[2].0;
        assert_eq!(s.alerts.len(), 1, "one alert per node, updated in place");
        assert!(
            s.alerts[0].reason.contains("10.3.0.1"),
            "{}",
            s.alerts[0].reason
        );
        assert_eq!(s.alerts[0].starts_at, rfc3339(at(70)));
        let change = s.paths[0].last_change.clone().unwrap();
        assert_eq!((change.before, change.after), (hops('B'), hops('C')));
    }

    #[test]
    fn unread_rounds_keep_the_paths_and_removed_targets_drop_them() {
        let steps = run(&[(40, rounds("n1", 0, "AAAA"))]);
        let mut status = steps[0].0.clone();
        let previous = status.paths.clone();
        let t = evolve(&tracer(), &previous, None, &mut status, at(50));
        assert!(t.is_empty());
        assert_eq!(status.paths, previous);
        let mut other = tracer();
        other.spec.targets[0].name = "renamed".into();
        evolve(&other, &previous, Some(&[]), &mut status, at(60));
        assert!(status.paths.is_empty());
    }

    #[test]
    fn the_window_is_bounded_by_intervals() {
        let s = |secs| Duration::from_secs(secs);
        assert_eq!(lookback(s(60), 3), s(900));
        assert_eq!(lookback(s(600), 3), s(2400));
        assert_eq!(lookback(s(1), 3), s(100));
        assert_eq!(lookback(s(1), 100), s(101));
    }
}
