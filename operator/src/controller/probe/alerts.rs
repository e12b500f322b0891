//! The targets' alerts, part of the FiberProbe's decide step and as pure: each target's
//! breach goes through the same hysteresis as Healthy before an alert fires or resolves, and
//! what notifiers have acknowledged is carried over from the previous status.
//!
//! An alert is dropped from status once its end is owed to nobody: every notifier told of its
//! start was told of its end, and the history holds its end.

use chrono::{DateTime, Utc};

use crate::conditions::{Status, rfc3339};
use crate::controller::effects::Transition;
use crate::crd::{Alert, AlertState, Burn, TargetState, TargetStatus};
use crate::health::{self, Hysteresis};

/// The stable key of an episode: `namespace/probe/target@start` in Unix seconds.
pub fn alert_id(namespace: &str, probe: &str, target: &str, starts_at: DateTime<Utc>) -> String {
    format!("{namespace}/{probe}/{target}@{}", starts_at.timestamp())
}

/// The alerts after this evaluation, and their starts and ends. `rows` are this evaluation's
/// targets (their `streak` is set here); `agreed[i]`: whether enough vantage points agree on
/// row i's breach to notify it (a breach without the quorum counts as no breach);
/// `previous_rows` and `previous` the last status's.
#[allow(clippy::too_many_arguments)]
pub fn evolve(
    namespace: &str,
    probe: &str,
    rows: &mut [TargetStatus],
    agreed: &[bool],
    previous_rows: &[TargetStatus],
    previous: &[Alert],
    hysteresis: Hysteresis,
    now: DateTime<Utc>,
) -> (Vec<Alert>, Vec<Transition>) {
    let mut alerts: Vec<Alert> = previous.iter().filter(|a| owed(a)).cloned().collect();
    let mut transitions = vec![];
    for (i, row) in rows.iter_mut().enumerate() {
        let firing = alerts.iter().position(|a| {
            a.target == row.name
                && a.state == AlertState::Firing
                && a.burn.is_none()
                && a.node.is_none()
        });
        let seen = match row.state {
            TargetState::Breaching if agreed.get(i).copied().unwrap_or(true) => Status::False,
            TargetState::Breaching => Status::True,
            TargetState::Healthy => Status::True,
            // No samples: nothing to judge; the count starts over.
            TargetState::NoData => {
                row.streak = None;
                continue;
            }
        };
        let current = if firing.is_some() {
            Status::False
        } else {
            Status::True
        };
        let streak = previous_rows
            .iter()
            .find(|r| r.name == row.name)
            .and_then(|r| r.streak.as_ref());
        let decision = health::decide_health(hysteresis, Some(current), streak, seen, now);
        row.streak = decision.streak;
        if !decision.switch || seen == current {
            continue;
        }
        match firing {
            None => {
                let reason = row
                    .message
                    .clone()
                    .unwrap_or_else(|| "thresholds breached".to_owned());
                transitions.push(Transition::AlertFiring {
                    target: row.name.clone(),
                    message: format!("target {}: {reason}", row.name),
                    scope: row.scope,
                });
                alerts.push(Alert {
                    id: alert_id(namespace, probe, &row.name, now),
                    target: row.name.clone(),
                    state: AlertState::Firing,
                    reason,
                    starts_at: rfc3339(now),
                    scope: row.scope,
                    vantage_points: row.vantage_points.clone(),
                    ..Default::default()
                });
            }
            Some(i) => {
                let alert = &mut alerts[i];
                transitions.push(Transition::AlertResolved {
                    target: row.name.clone(),
                    message: format!(
                        "target {} is within its thresholds again (was: {})",
                        row.name, alert.reason
                    ),
                });
                alert.state = AlertState::Resolved;
                alert.ends_at = Some(rfc3339(now));
            }
        }
    }
    // A target taken out of the spec ends its alert.
    for alert in alerts.iter_mut() {
        if alert.state == AlertState::Firing
            && alert.burn.is_none()
            && !rows.iter().any(|r| r.name == alert.target)
        {
            transitions.push(Transition::AlertResolved {
                target: alert.target.clone(),
                message: format!("target {} was removed from the spec", alert.target),
            });
            alert.state = AlertState::Resolved;
            alert.ends_at = Some(rfc3339(now));
        }
    }
    (alerts, transitions)
}

/// The target of an SLO's burn alert.
pub const SLO_TARGET: &str = "slo";

/// The SLO's burn alert after this evaluation: it fires when the budget starts burning (the
/// multi-window pairs are their own hysteresis), follows Fast ↔ Slow in place, and resolves
/// when neither pair burns or spec.slo is gone. `message` says how the objectives stand.
pub fn evolve_slo(
    namespace: &str,
    probe: &str,
    alerts: &mut Vec<Alert>,
    burning: Option<&Burn>,
    message: &str,
    now: DateTime<Utc>,
) -> Vec<Transition> {
    evolve_burn(namespace, probe, None, alerts, burning, message, now)
}

/// The start of a burn alert's id: `namespace/probe/slo@` for spec.slo's,
/// `namespace/probe/<target>/slo@` for a target's own slo (its target is then the target's
/// name, so a target named "slo" cannot be mistaken for spec.slo, nor its breach alert,
/// `namespace/probe/<target>@`, for its burn alert).
fn burn_key(namespace: &str, probe: &str, target: Option<&str>) -> String {
    match target {
        None => format!("{namespace}/{probe}/{SLO_TARGET}@"),
        Some(target) => format!("{namespace}/{probe}/{target}/{SLO_TARGET}@"),
    }
}

/// Whether `alert` is the burn alert of spec.slo (`target` None) or of that target's slo.
pub fn is_burn_of(alert: &Alert, namespace: &str, probe: &str, target: Option<&str>) -> bool {
    alert.burn.is_some()
        && alert
            .id
            .strip_prefix(&burn_key(namespace, probe, target))
            .is_some_and(|start| !start.is_empty() && start.bytes().all(|b| b.is_ascii_digit()))
}

/// [`evolve_slo`] for spec.slo (`target` None) or for a target's own slo: its alert carries
/// the target's name.
pub fn evolve_burn(
    namespace: &str,
    probe: &str,
    target: Option<&str>,
    alerts: &mut Vec<Alert>,
    burning: Option<&Burn>,
    message: &str,
    now: DateTime<Utc>,
) -> Vec<Transition> {
    let firing = alerts
        .iter()
        .position(|a| a.state == AlertState::Firing && is_burn_of(a, namespace, probe, target));
    match (firing, burning) {
        (None, Some(burn)) => {
            alerts.push(Alert {
                id: format!("{}{}", burn_key(namespace, probe, target), now.timestamp()),
                target: target.unwrap_or(SLO_TARGET).to_owned(),
                state: AlertState::Firing,
                reason: format!(
                    "error budget burning {}: {message}",
                    burn.as_str().to_lowercase()
                ),
                starts_at: rfc3339(now),
                burn: Some(burn.clone()),
                ..Default::default()
            });
            vec![]
        }
        (Some(i), Some(burn)) => {
            alerts[i].burn = Some(burn.clone());
            vec![]
        }
        (Some(i), None) => {
            let alert = &mut alerts[i];
            alert.state = AlertState::Resolved;
            alert.ends_at = Some(rfc3339(now));
            vec![]
        }
        (None, None) => vec![],
    }
}

/// Every firing alert resolved at `now` with `why` (the probe is going away), and their ends.
pub fn resolve_all(
    alerts: &[Alert],
    now: DateTime<Utc>,
    why: &str,
) -> (Vec<Alert>, Vec<Transition>) {
    let mut transitions = vec![];
    let alerts = alerts
        .iter()
        .filter(|a| owed(a))
        .cloned()
        .map(|mut alert| {
            if alert.state == AlertState::Firing {
                transitions.push(Transition::AlertResolved {
                    target: alert.target.clone(),
                    message: format!("target {}: {why}", alert.target),
                });
                alert.state = AlertState::Resolved;
                alert.ends_at = Some(rfc3339(now));
            }
            alert
        })
        .collect();
    (alerts, transitions)
}

/// Whether an alert still has to stay in status: firing, or its end not yet delivered to a
/// notifier told of its start, or not yet in the history.
pub(crate) fn owed(alert: &Alert) -> bool {
    alert.state == AlertState::Firing
        || alert.recorded != Some(AlertState::Resolved)
        || alert
            .notified
            .iter()
            .any(|n| n.state != AlertState::Resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{HealthStreak, Notified};
    use chrono::TimeZone;

    const H: Hysteresis = Hysteresis {
        evaluations: 3,
        min_gap: std::time::Duration::from_secs(10),
    };

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn row(name: &str, state: TargetState) -> TargetStatus {
        TargetStatus {
            name: name.to_owned(),
            state,
            message: (state == TargetState::Breaching).then(|| "packet loss 30 % > 2 %".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_slo_burn_alert_fires_follows_and_resolves_beside_a_target_named_slo() {
        // A target that happens to be named "slo" keeps its own alert.
        let mut alerts = vec![Alert {
            id: "ns/edge/slo@1".into(),
            target: "slo".into(),
            state: AlertState::Firing,
            ..Default::default()
        }];
        evolve_slo(
            "ns",
            "edge",
            &mut alerts,
            Some(&Burn::Fast),
            "avail 90 %",
            at(0),
        );
        assert_eq!(alerts.len(), 2);
        let burn = &alerts[1];
        assert_eq!(burn.id, alert_id("ns", "edge", SLO_TARGET, at(0)));
        assert_eq!(burn.burn, Some(Burn::Fast));
        assert_eq!(burn.reason, "error budget burning fast: avail 90 %");
        // Fast → Slow: the same episode, its burn updated.
        evolve_slo("ns", "edge", &mut alerts, Some(&Burn::Slow), "x", at(60));
        assert_eq!(
            (alerts.len(), alerts[1].burn.clone()),
            (2, Some(Burn::Slow))
        );
        // The target rows do not touch it: no row named "slo" ends only the target's alert.
        let (after, _) = evolve("ns", "edge", &mut [], &[], &[], &alerts, H, at(90));
        assert_eq!(after[0].state, AlertState::Resolved);
        assert_eq!(after[1].state, AlertState::Firing);
        // Nothing burns: resolved.
        let mut alerts = after;
        evolve_slo("ns", "edge", &mut alerts, None, "", at(120));
        assert_eq!(alerts[1].state, AlertState::Resolved);
        assert_eq!(alerts[1].ends_at, Some(rfc3339(at(120))));
    }

    /// Runs evaluations of target `a` (second, state) from no alert; returns the alerts and
    /// transitions after each.
    fn run(states: &[(i64, TargetState)]) -> Vec<(Vec<Alert>, Vec<Transition>)> {
        let mut rows: Vec<TargetStatus> = vec![];
        let mut alerts: Vec<Alert> = vec![];
        states
            .iter()
            .map(|(t, state)| {
                let mut now_rows = vec![row("a", *state)];
                let (next, transitions) = evolve(
                    "ns",
                    "edge",
                    &mut now_rows,
                    &[true],
                    &rows,
                    &alerts,
                    H,
                    at(*t),
                );
                rows = now_rows;
                alerts = next;
                (alerts.clone(), transitions)
            })
            .collect()
    }

    use TargetState::{Breaching as B, Healthy as Ok_, NoData as N};

    #[test]
    fn an_alert_fires_once_after_the_hold_and_resolves_after_the_same_hold() {
        let steps = run(&[
            (0, B),
            (30, B),
            (60, B),
            (90, B),
            (120, Ok_),
            (150, Ok_),
            (180, Ok_),
            (210, Ok_),
        ]);
        let fired: Vec<usize> = steps
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| matches!(t.as_slice(), [Transition::AlertFiring { .. }]))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(fired, [2], "fires at the third breaching evaluation only");
        let resolved: Vec<usize> = steps
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| matches!(t.as_slice(), [Transition::AlertResolved { .. }]))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(resolved, [6]);
        let (alerts, _) = &steps[2];
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert.id, format!("ns/edge/a@{}", at(60).timestamp()));
        assert_eq!(alert.state, AlertState::Firing);
        assert_eq!(alert.reason, "packet loss 30 % > 2 %");
        assert_eq!(alert.starts_at, rfc3339(at(60)));
        let (alerts, _) = &steps[6];
        assert_eq!(alerts[0].state, AlertState::Resolved);
        assert_eq!(alerts[0].ends_at, Some(rfc3339(at(180))));
        assert_eq!(alerts[0].id, steps[2].0[0].id, "the same episode");
    }

    #[test]
    fn a_short_breach_fires_nothing_and_no_data_restarts_the_count() {
        let steps = run(&[
            (0, B),
            (30, B),
            (60, Ok_),
            (90, B),
            (120, N),
            (150, B),
            (180, B),
        ]);
        assert!(steps.iter().all(|(a, t)| a.is_empty() && t.is_empty()));
        let steps = run(&[(0, B), (30, B), (60, N), (90, B), (120, B), (150, B)]);
        assert!(matches!(
            steps[5].1.as_slice(),
            [Transition::AlertFiring { .. }]
        ));
        assert!(steps[..5].iter().all(|(a, _)| a.is_empty()));
    }

    #[test]
    fn the_streak_is_kept_per_target() {
        let mut rows = vec![row("a", B), row("b", Ok_)];
        let (_, _) = evolve("ns", "p", &mut rows, &[true, true], &[], &[], H, at(0));
        assert_eq!(
            rows[0].streak,
            Some(HealthStreak {
                status: Status::False,
                count: 1,
                last_evaluation_time: rfc3339(at(0)),
            })
        );
        assert_eq!(
            rows[1].streak, None,
            "healthy and not firing: nothing to count"
        );
    }

    fn resolved(notified: &[(&str, AlertState)], recorded: Option<AlertState>) -> Alert {
        Alert {
            id: "ns/p/a@1".into(),
            target: "a".into(),
            state: AlertState::Resolved,
            reason: "r".into(),
            starts_at: rfc3339(at(0)),
            ends_at: Some(rfc3339(at(60))),
            notified: notified
                .iter()
                .map(|(n, s)| Notified {
                    notifier: (*n).into(),
                    state: *s,
                    time: rfc3339(at(60)),
                })
                .collect(),
            recorded,
            ..Default::default()
        }
    }

    #[test]
    fn a_resolved_alert_stays_until_its_end_is_delivered_and_recorded() {
        let evolve_one = |alert: Alert| {
            let mut rows = vec![row("a", Ok_)];
            evolve("ns", "p", &mut rows, &[true], &[], &[alert], H, at(90)).0
        };
        use AlertState::{Firing as F, Resolved as R};
        assert_eq!(evolve_one(resolved(&[("am", F)], Some(R))).len(), 1);
        assert_eq!(evolve_one(resolved(&[("am", R)], Some(F))).len(), 1);
        assert_eq!(evolve_one(resolved(&[("am", R)], None)).len(), 1);
        assert!(evolve_one(resolved(&[("am", R), ("slack", R)], Some(R))).is_empty());
        assert!(
            evolve_one(resolved(&[], Some(R))).is_empty(),
            "nobody was told of its start: its end is owed to nobody"
        );
    }

    #[test]
    fn a_target_removed_from_the_spec_resolves_its_alert() {
        let firing = Alert {
            state: AlertState::Firing,
            ends_at: None,
            ..resolved(&[], None)
        };
        let mut rows = vec![row("b", Ok_)];
        let (alerts, transitions) =
            evolve("ns", "p", &mut rows, &[true], &[], &[firing], H, at(90));
        assert_eq!(alerts[0].state, AlertState::Resolved);
        assert_eq!(alerts[0].ends_at, Some(rfc3339(at(90))));
        assert!(matches!(
            transitions.as_slice(),
            [Transition::AlertResolved { target, .. }] if target == "a"
        ));
    }

    #[test]
    fn a_new_episode_gets_a_new_id_while_the_old_end_is_still_owed() {
        let old = resolved(&[("am", AlertState::Firing)], None);
        let mut rows = vec![row("a", B)];
        let previous_rows = vec![TargetStatus {
            streak: Some(HealthStreak {
                status: Status::False,
                count: 2,
                last_evaluation_time: rfc3339(at(60)),
            }),
            ..row("a", B)
        }];
        let (alerts, transitions) = evolve(
            "ns",
            "p",
            &mut rows,
            &[true],
            &previous_rows,
            std::slice::from_ref(&old),
            H,
            at(90),
        );
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0], old);
        assert_eq!(alerts[1].state, AlertState::Firing);
        assert_ne!(alerts[1].id, old.id);
        assert_eq!(transitions.len(), 1);
    }

    #[test]
    fn a_breach_without_the_quorum_fires_nothing() {
        let mut rows: Vec<TargetStatus> = vec![];
        let mut alerts: Vec<Alert> = vec![];
        for t in [0, 30, 60, 90] {
            let mut now_rows = vec![row("a", B)];
            let (next, transitions) =
                evolve("ns", "p", &mut now_rows, &[false], &rows, &alerts, H, at(t));
            assert!(transitions.is_empty() && next.is_empty());
            rows = now_rows;
            alerts = next;
        }
    }

    #[test]
    fn deleting_resolves_what_fires_and_keeps_only_what_is_owed() {
        let firing = Alert {
            state: AlertState::Firing,
            ends_at: None,
            ..resolved(&[("am", AlertState::Firing)], Some(AlertState::Firing))
        };
        let done = Alert {
            id: "ns/p/b@1".into(),
            target: "b".into(),
            ..resolved(&[("am", AlertState::Resolved)], Some(AlertState::Resolved))
        };
        let (alerts, transitions) =
            resolve_all(&[firing, done], at(90), "the FiberProbe was deleted");
        assert_eq!(alerts.len(), 1, "the delivered episode is owed nothing");
        assert_eq!(alerts[0].state, AlertState::Resolved);
        assert_eq!(alerts[0].ends_at, Some(rfc3339(at(90))));
        assert!(
            owed(&alerts[0]),
            "its end is still owed to am and the history"
        );
        assert!(matches!(
            transitions.as_slice(),
            [Transition::AlertResolved { message, .. }] if message == "target a: the FiberProbe was deleted"
        ));
    }
}
