//! The FiberProbe's decide step, pure: previous status + observations + now → new status and
//! the transitions it makes. No database, no API server: every rule is unit-tested from
//! fixtures below.

use chrono::{DateTime, Utc};

use super::alerts;
use crate::conditions::{
    ConditionType as Type, Reason, Status, condition, find, merge, rfc3339, status_of,
};
use crate::controller::effects::Transition;
use crate::crd::{
    Condition, FiberProbe, FiberProbeSpec, FiberProbeStatus, Health, Scope, TargetState,
    TargetStatus,
};
use crate::health::{self, Hysteresis};
use crate::localize;
use crate::status::{Figures, REPORTING_INTERVALS};

/// Where the pipeline got with the probe's pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Stopped before the workloads: the region is missing or the spec is invalid. Said in
    /// every condition and in `health`.
    Blocked { reason: Reason, message: String },
    /// `spec.paused`: the pods are removed.
    Paused,
    /// The DaemonSet is applied; its pod counts.
    Placed { desired: i32, ready: i32 },
}

/// What the gather step saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    pub placement: Placement,
    /// Nodes that run (or should run) one of the probe's pods, sorted.
    pub pod_nodes: Vec<String>,
    /// The database's figures, or why they could not be read. Not read when blocked.
    pub figures: Option<Result<Figures, String>>,
    /// The SLO's counts when the spec or one of its targets has an slo (or why they could
    /// not be read).
    pub slo: Option<Result<crate::slo::ProbeSloCounts, String>>,
}

/// The status to write and what it makes true.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: FiberProbeStatus,
    pub transitions: Vec<Transition>,
}

pub fn decide(
    probe: &FiberProbe,
    observed: &Observations,
    hysteresis: Hysteresis,
    now: DateTime<Utc>,
) -> Decision {
    let previous = probe.status.clone().unwrap_or_default();
    let generation = probe.metadata.generation;
    let spec = &probe.spec;

    let (desired, ready) = match &observed.placement {
        Placement::Blocked { reason, message } => {
            return blocked(&previous, generation, reason, message, now);
        }
        Placement::Paused => (0, 0),
        Placement::Placed { desired, ready } => (*desired, *ready),
    };
    let ready_condition = if spec.paused {
        condition(
            Type::Ready,
            Status::False,
            Reason::Paused,
            "spec.paused is true: the probe pods are removed",
        )
    } else if desired == 0 {
        condition(
            Type::Ready,
            Status::False,
            Reason::NoMatchingNodes,
            "no node matches the region's nodeSelector and the probe's nodeSelector",
        )
    } else if ready < desired {
        condition(
            Type::Ready,
            Status::False,
            Reason::PodsNotReady,
            format!("{ready} of {desired} probe pods ready"),
        )
    } else {
        condition(
            Type::Ready,
            Status::True,
            Reason::AllPodsReady,
            format!("{ready} of {desired} probe pods ready"),
        )
    };

    let mut status = FiberProbeStatus {
        observed_generation: generation,
        desired_probes: desired,
        ready_probes: ready,
        ready: format!("{ready}/{desired}"),
        ..Default::default()
    };
    let recent = fiberstack_model::Duration(spec.interval.as_std() * REPORTING_INTERVALS);

    let mut alert_transitions = vec![];
    let no_figures = Err("the database was not read".to_owned());
    let (reporting, healthy) = match observed.figures.as_ref().unwrap_or(&no_figures) {
        Err(e) => {
            // Keep the last known figures: they are the best information there is.
            status.reporting_probes = previous.reporting_probes;
            status.last_sample_time = previous.last_sample_time.clone();
            status.summary = previous.summary.clone();
            status.targets = previous.targets.clone();
            status.alerts = previous.alerts.clone();
            let message = format!("cannot read samples from the database: {e}");
            (
                condition(
                    Type::Reporting,
                    Status::Unknown,
                    Reason::DatabaseUnavailable,
                    message.clone(),
                ),
                // Healthy keeps its last state: an outage of our own database says nothing
                // about the network.
                find(&previous.conditions, &Type::Healthy)
                    .cloned()
                    .unwrap_or_else(|| {
                        condition(
                            Type::Healthy,
                            Status::Unknown,
                            Reason::DatabaseUnavailable,
                            message,
                        )
                    }),
            )
        }
        Ok(figures) => {
            // Judged here, against `now`, as the targets' silent nodes are below: one clock
            // and one rule for both.
            let reporting_nodes = figures.reporting_nodes(now, recent.as_std());
            status.reporting_probes = reporting_nodes.len() as i32;
            status.last_sample_time = figures.last_sample.map(rfc3339);
            status.summary = Some(figures.summary.clone());
            let mut rows = health::target_rows(spec, figures, now);
            let agreed = localize_rows(spec, &mut rows, figures, &observed.pod_nodes, now, recent);
            status.scope = overall_scope(&rows);
            let reporting = reporting(
                spec.paused,
                observed,
                figures,
                &reporting_nodes,
                &status,
                recent,
            );
            let seen = health::observe(&rows, spec, now);
            let (alerts, started_or_ended) = alerts::evolve(
                probe.metadata.namespace.as_deref().unwrap_or_default(),
                probe.metadata.name.as_deref().unwrap_or_default(),
                &mut rows,
                &agreed,
                &previous.targets,
                &previous.alerts,
                hysteresis,
                now,
            );
            status.alerts = alerts;
            alert_transitions = started_or_ended;
            status.targets = rows;
            let current = find(&previous.conditions, &Type::Healthy);
            let healthy = if seen.status == Status::Unknown {
                status.health_streak = None;
                condition(Type::Healthy, Status::Unknown, seen.reason, seen.message)
            } else {
                let decision = health::decide_health(
                    hysteresis,
                    current.map(|c| c.status),
                    previous.health_streak.as_ref(),
                    seen.status,
                    now,
                );
                status.health_streak = decision.streak;
                if decision.switch || current.is_none_or(|c| c.status == seen.status) {
                    condition(Type::Healthy, seen.status, seen.reason, seen.message)
                } else {
                    current.cloned().expect("checked above")
                }
            };
            (reporting, healthy)
        }
    };

    status.conditions = merge(
        &previous.conditions,
        vec![ready_condition, reporting, healthy],
        generation,
        now,
    );
    status.health = health::health_word(&status.conditions, spec.paused);
    let (slo, slo_transition) = decide_slo(probe, &previous, observed, now);
    let burning = slo.as_ref().and_then(|s| s.burning.clone());
    let message = slo.as_ref().map(slo_message).unwrap_or_default();
    alerts::evolve_slo(
        probe.metadata.namespace.as_deref().unwrap_or_default(),
        probe.metadata.name.as_deref().unwrap_or_default(),
        &mut status.alerts,
        burning.as_ref(),
        &message,
        now,
    );
    status.slo = slo;
    let target_slo_transitions = if matches!(observed.figures, Some(Ok(_))) {
        decide_target_slos(probe, &previous, observed, &mut status, now)
    } else {
        // The rows (and their slo) are the previous ones, as are the alerts.
        vec![]
    };
    let rounds = observed.figures.as_ref().and_then(|f| f.as_ref().ok());
    let rounds = rounds.and_then(|f| f.paths.as_deref());
    let path_transitions = crate::paths::evolve(probe, &previous.paths, rounds, &mut status, now);
    let transitions = health_transition(&previous.conditions, &status.conditions)
        .into_iter()
        .chain(alert_transitions)
        .chain(slo_transition)
        .chain(target_slo_transitions)
        .chain(path_transitions)
        .collect();
    Decision {
        status,
        transitions,
    }
}

/// status.slo from the counts (the previous one while they cannot be read), and the burn
/// that started or ended.
fn decide_slo(
    probe: &FiberProbe,
    previous: &FiberProbeStatus,
    observed: &Observations,
    now: DateTime<Utc>,
) -> (Option<crate::crd::SloStatus>, Option<Transition>) {
    let Some(spec) = &probe.spec.slo else {
        return (None, None);
    };
    let counts = match &observed.slo {
        Some(Ok(counts)) => counts.probe.as_ref(),
        _ => None,
    };
    let Some(counts) = counts else {
        return (previous.slo.clone(), None);
    };
    let status = evaluate_slo(probe, spec, counts, now);
    let transition = burn_transition(previous.slo.as_ref(), &status, None);
    (Some(status), transition)
}

/// An objective's status from its counts, the rounds its window should hold counted from
/// the probe's creation.
fn evaluate_slo(
    probe: &FiberProbe,
    spec: &crate::crd::Slo,
    counts: &crate::slo::SloCounts,
    now: DateTime<Utc>,
) -> crate::crd::SloStatus {
    let created = probe
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0).unwrap_or(now));
    let expected = crate::slo::expected_rounds(
        counts,
        spec.window_days,
        probe.spec.interval.as_std(),
        created,
        now,
    );
    crate::slo::evaluate(spec, counts, expected)
}

/// The Event of a burn that started, changed pace or ended: spec.slo's (`target` None) or a
/// target's own.
fn burn_transition(
    before: Option<&crate::crd::SloStatus>,
    after: &crate::crd::SloStatus,
    target: Option<&str>,
) -> Option<Transition> {
    let message = match target {
        None => slo_message(after),
        Some(target) => format!("target {target}: {}", slo_message(after)),
    };
    match (before.and_then(|s| s.burning.as_ref()), &after.burning) {
        (before, Some(burn)) if before != Some(burn) => Some(Transition::SloBurning {
            message,
            fast: *burn == crate::crd::Burn::Fast,
        }),
        (Some(_), None) => Some(Transition::SloBurnEnded { message }),
        _ => None,
    }
}

/// Each target's own slo (spec.targets[].slo) into its row (the previous one while the
/// counts cannot be read), its burn alert beside the target's breach alert, and the burns
/// that started or ended. A burn alert of a target that no longer has an slo resolves.
fn decide_target_slos(
    probe: &FiberProbe,
    previous: &FiberProbeStatus,
    observed: &Observations,
    status: &mut FiberProbeStatus,
    now: DateTime<Utc>,
) -> Vec<Transition> {
    let namespace = probe.metadata.namespace.as_deref().unwrap_or_default();
    let name = probe.metadata.name.as_deref().unwrap_or_default();
    let counts = match &observed.slo {
        Some(Ok(counts)) => Some(&counts.targets),
        _ => None,
    };
    let mut transitions = vec![];
    for target in &probe.spec.targets {
        let Some(spec) = &target.slo else {
            continue;
        };
        let before = previous
            .targets
            .iter()
            .find(|r| r.name == target.name)
            .and_then(|r| r.slo.as_ref());
        let slo = match counts.and_then(|c| c.get(&target.name)) {
            Some(c) => {
                let slo = evaluate_slo(probe, spec, c, now);
                transitions.extend(burn_transition(before, &slo, Some(&target.name)));
                Some(slo)
            }
            None => before.cloned(),
        };
        let message = slo.as_ref().map(slo_message).unwrap_or_default();
        let burning = slo.as_ref().and_then(|s| s.burning.as_ref());
        alerts::evolve_burn(
            namespace,
            name,
            Some(&target.name),
            &mut status.alerts,
            burning,
            &message,
            now,
        );
        if let Some(row) = status.targets.iter_mut().find(|r| r.name == target.name) {
            row.slo = slo;
        }
    }
    let gone: Vec<String> = status
        .alerts
        .iter()
        .filter(|a| {
            a.state == crate::crd::AlertState::Firing
                && alerts::is_burn_of(a, namespace, name, Some(&a.target))
                && !probe
                    .spec
                    .targets
                    .iter()
                    .any(|t| t.name == a.target && t.slo.is_some())
        })
        .map(|a| a.target.clone())
        .collect();
    for target in gone {
        alerts::evolve_burn(
            namespace,
            name,
            Some(&target),
            &mut status.alerts,
            None,
            "",
            now,
        );
    }
    transitions
}

/// "availability 99.2 % (objective 99.9 %), 18.4 % of the 30-day budget left, burning 15.2x
/// over 1 h; latency ..."
fn slo_message(s: &crate::crd::SloStatus) -> String {
    let one = |name: &str, o: &crate::crd::ObjectiveStatus| {
        let num = |v: Option<f64>| v.map_or("?".to_owned(), |v| v.to_string());
        format!(
            "{name} {} % (objective {} %), {} % of the {}-day budget left, burn rate {} over 1 h and {} over 6 h",
            num(o.sli_pct),
            o.objective_pct,
            num(o.error_budget_remaining_pct),
            s.window_days,
            num(o.burn_rate_1h),
            num(o.burn_rate_6h)
        )
    };
    s.availability
        .iter()
        .map(|o| one("availability", o))
        .chain(s.latency.iter().map(|o| one("latency", o)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Judges each target from its vantage points ([`localize`]): its scope, the vantage points
/// that see a breach and the silent nodes go into its row, the scope into its message.
/// Returns, per row, whether enough vantage points agree to notify (`spec.alerting.quorum`).
fn localize_rows(
    spec: &FiberProbeSpec,
    rows: &mut [TargetStatus],
    figures: &Figures,
    expected: &[String],
    now: DateTime<Utc>,
    recent: fiberstack_model::Duration,
) -> Vec<bool> {
    let quorum = spec.alerting.quorum;
    rows.iter_mut()
        .map(|row| {
            let vantages: Vec<localize::Vantage> = figures
                .vantages
                .iter()
                .filter(|(target, _)| *target == row.name)
                .map(|(_, v)| v.clone())
                .collect();
            let thresholds = health::thresholds_of(spec, &row.name);
            let l = localize::localize(&vantages, expected, &thresholds, now, recent.as_std());
            row.silent = l.silent.clone();
            if row.state != TargetState::Breaching {
                return true;
            }
            // A breach no single vantage point sees on its own (a certificate, or figures
            // that only breach together) is the target's own.
            row.scope = Some(l.scope.unwrap_or(Scope::Everywhere));
            row.vantage_points = l.breaching.clone();
            if let (Some(message), Some(where_)) = (&row.message, localize::describe(&l)) {
                row.message = Some(format!("{message}; {where_}"));
            }
            quorum.is_none_or(|q| localize::quorum_met(&l, q.nodes, q.regions))
        })
        .collect()
}

/// The probe's scope for `kubectl get`: the widest of its breaching targets'.
fn overall_scope(rows: &[TargetStatus]) -> Option<Scope> {
    let scopes: Vec<Scope> = rows.iter().filter_map(|r| r.scope).collect();
    [Scope::Everywhere, Scope::Partial, Scope::Single]
        .into_iter()
        .find(|s| scopes.contains(s))
}

/// Reporting: do samples arrive from every node that runs a probe pod?
fn reporting(
    paused: bool,
    observed: &Observations,
    figures: &Figures,
    reporting_nodes: &[String],
    status: &FiberProbeStatus,
    recent: fiberstack_model::Duration,
) -> Condition {
    let missing: Vec<&str> = observed
        .pod_nodes
        .iter()
        .filter(|n| !paused && !reporting_nodes.contains(n))
        .map(|n| n.as_str())
        .collect();
    if paused {
        condition(
            Type::Reporting,
            Status::False,
            Reason::Paused,
            "spec.paused is true",
        )
    } else if reporting_nodes.is_empty() {
        condition(
            Type::Reporting,
            Status::False,
            Reason::NoRecentSamples,
            match &status.last_sample_time {
                Some(t) => {
                    format!("no samples within 3 intervals ({recent}); the newest is from {t}")
                }
                None => "no samples received yet".to_owned(),
            },
        )
    } else if !missing.is_empty() {
        // Each silent node's newest sample of the window, when it has one: "silent since".
        let silent: Vec<String> = missing
            .iter()
            .map(|node| {
                let newest = figures
                    .vantages
                    .iter()
                    .filter(|(_, v)| v.node == *node)
                    .map(|(_, v)| v.newest)
                    .max();
                match newest {
                    Some(t) => format!(
                        "{node} (silent since {})",
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    None => format!("{node} (nothing in the last {})", crate::status::WINDOW),
                }
            })
            .collect();
        condition(
            Type::Reporting,
            Status::False,
            Reason::NodesNotReporting,
            format!(
                "no samples within 3 intervals ({recent}) from {}: the probe or its link, not the targets",
                silent.join(", ")
            ),
        )
    } else {
        condition(
            Type::Reporting,
            Status::True,
            Reason::SamplesArriving,
            format!(
                "{} nodes sent samples within 3 intervals ({recent})",
                reporting_nodes.len()
            ),
        )
    }
}

/// The status of a probe the pipeline could not place: every condition says why.
fn blocked(
    previous: &FiberProbeStatus,
    generation: Option<i64>,
    reason: &Reason,
    message: &str,
    now: DateTime<Utc>,
) -> Decision {
    let conditions = merge(
        &previous.conditions,
        [Type::Ready, Type::Reporting, Type::Healthy]
            .into_iter()
            .map(|type_| {
                let status = if type_ == Type::Ready {
                    Status::False
                } else {
                    Status::Unknown
                };
                condition(type_, status, reason.clone(), message)
            })
            .collect(),
        generation,
        now,
    );
    Decision {
        status: FiberProbeStatus {
            observed_generation: generation,
            conditions,
            health: Health::from(reason.as_str()),
            ready: "0/0".to_owned(),
            // Not evaluated: open alerts and what is owed on them stay as they were.
            alerts: previous.alerts.clone(),
            paths: previous.paths.clone(),
            ..Default::default()
        },
        transitions: vec![],
    }
}

/// An Event when Healthy turns False — from True, or at the first evaluation with data
/// (Unknown → False) — and when it turns from False back to True.
fn health_transition(before: &[Condition], after: &[Condition]) -> Option<Transition> {
    let a = find(after, &Type::Healthy)?;
    let message = a.message.clone();
    match (status_of(before, &Type::Healthy), a.status) {
        (Some(Status::False), Status::False) => None,
        (_, Status::False) => Some(Transition::HealthDegraded { message }),
        (Some(Status::False), Status::True) => Some(Transition::HealthRecovered { message }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::crd::{AlertState, Burn, Summary, TargetState};
    use crate::fixtures::{Fixture, ProbeFixture, probe};

    const H: Hysteresis = Hysteresis {
        evaluations: 3,
        min_gap: std::time::Duration::from_secs(10),
    };

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn two_targets() -> FiberProbe {
        probe().generation(1).only_targets(&["google-dns", "db"])
    }

    fn good() -> Summary {
        Summary {
            samples: 30,
            latency_p50_ms: Some(10.0),
            latency_p95_ms: Some(20.0),
            packet_loss_pct: Some(0.0),
            uptime_pct: Some(100.0),
            late_samples: None,
        }
    }

    fn slow() -> Summary {
        Summary {
            latency_p95_ms: Some(400.0),
            ..good()
        }
    }

    /// Both nodes run a pod and report; `db` has the given figures, google-dns is good.
    fn seen(db: Option<Summary>) -> Observations {
        let mut targets = vec![("google-dns".to_owned(), good())];
        targets.extend(db.map(|s| ("db".to_owned(), s)));
        Observations {
            placement: Placement::Placed {
                desired: 2,
                ready: 2,
            },
            pod_nodes: vec!["gh-accra-1".into(), "gh-accra-2".into()],
            figures: Some(Ok(Figures {
                node_newest: vec![("gh-accra-1".into(), at(-5)), ("gh-accra-2".into(), at(-5))],
                last_sample: Some(at(-5)),
                summary: good(),
                targets,
                ..Default::default()
            })),
            slo: None,
        }
    }

    fn healthy(d: &Decision) -> &Condition {
        find(&d.status.conditions, &Type::Healthy).expect("Healthy is always written")
    }

    /// Evaluates `observations` in turn at the given seconds, each on the status the previous
    /// one wrote; returns every decision.
    fn evaluate(mut p: FiberProbe, steps: &[(i64, Observations)]) -> Vec<Decision> {
        steps
            .iter()
            .map(|(t, o)| {
                let d = decide(&p, o, H, at(*t));
                p = p.clone().with_status(d.status.clone());
                d
            })
            .collect()
    }

    #[test]
    fn a_first_evaluation_within_thresholds_is_healthy_at_once_without_an_event() {
        let d = decide(&two_targets(), &seen(Some(good())), H, at(0));
        assert_eq!(healthy(&d).status, Status::True);
        assert_eq!(healthy(&d).reason, Reason::ThresholdsMet);
        assert_eq!(healthy(&d).last_transition_time, rfc3339(at(0)));
        assert_eq!(d.status.health, Health::Healthy);
        assert_eq!(d.status.ready, "2/2");
        assert_eq!(d.status.reporting_probes, 2);
        assert!(d.transitions.is_empty(), "{:?}", d.transitions);
    }

    #[test]
    fn a_first_evaluation_in_breach_is_degraded_at_once_and_announced() {
        let d = decide(&two_targets(), &seen(Some(slow())), H, at(0));
        assert_eq!(healthy(&d).status, Status::False);
        assert_eq!(d.status.health, Health::Degraded);
        let [Transition::HealthDegraded { message }] = d.transitions.as_slice() else {
            panic!("one HealthDegraded: {:?}", d.transitions);
        };
        assert!(
            message.starts_with("worst target db: p95 latency 400 ms > 150 ms"),
            "{message}"
        );
        let states: Vec<&TargetState> = d.status.targets.iter().map(|t| &t.state).collect();
        assert_eq!(states, [&TargetState::Healthy, &TargetState::Breaching]);
    }

    #[test]
    fn a_breach_is_announced_once_after_it_held_for_the_hysteresis() {
        let decisions = evaluate(
            two_targets(),
            &[
                (0, seen(Some(good()))),
                (30, seen(Some(slow()))),
                (60, seen(Some(slow()))),
                (90, seen(Some(slow()))),
                (120, seen(Some(slow()))),
            ],
        );
        let statuses: Vec<Status> = decisions.iter().map(|d| healthy(d).status).collect();
        use Status::{False as F, True as T};
        assert_eq!(statuses, [T, T, T, F, F]);
        let streaks: Vec<Option<u32>> = decisions
            .iter()
            .map(|d| d.status.health_streak.as_ref().map(|s| s.count))
            .collect();
        assert_eq!(streaks, [None, Some(1), Some(2), None, None]);
        let announced: Vec<usize> = decisions.iter().map(|d| d.transitions.len()).collect();
        // The probe's Healthy and the target's alert share the hysteresis: both at once.
        assert_eq!(announced, [0, 0, 0, 2, 0]);
        assert!(matches!(
            decisions[3].transitions[0],
            Transition::HealthDegraded { .. }
        ));
        assert!(matches!(
            &decisions[3].transitions[1],
            Transition::AlertFiring { target, .. } if target == "db"
        ));
        assert_eq!(decisions[3].status.alerts.len(), 1);
        assert_eq!(decisions[4].status.alerts, decisions[3].status.alerts);
        assert_eq!(healthy(&decisions[3]).last_transition_time, rfc3339(at(90)));
        assert_eq!(healthy(&decisions[4]).last_transition_time, rfc3339(at(90)));
        // While the old state holds, Healthy keeps its old message too.
        assert_eq!(healthy(&decisions[2]).reason, Reason::ThresholdsMet);
    }

    #[test]
    fn a_recovery_is_announced_after_the_same_hold() {
        let decisions = evaluate(
            two_targets(),
            &[
                (0, seen(Some(slow()))),
                (30, seen(Some(good()))),
                (60, seen(Some(good()))),
                (90, seen(Some(good()))),
            ],
        );
        let kinds: Vec<Vec<&Transition>> = decisions
            .iter()
            .map(|d| d.transitions.iter().collect())
            .collect();
        assert!(matches!(kinds[0][..], [Transition::HealthDegraded { .. }]));
        assert!(kinds[1].is_empty() && kinds[2].is_empty());
        assert!(matches!(kinds[3][..], [Transition::HealthRecovered { .. }]));
        assert_eq!(decisions[3].status.health, Health::Healthy);
    }

    #[test]
    fn quick_reevaluations_do_not_shorten_the_hold() {
        let decisions = evaluate(
            two_targets(),
            &[
                (0, seen(Some(good()))),
                (30, seen(Some(slow()))),
                (31, seen(Some(slow()))),
                (32, seen(Some(slow()))),
            ],
        );
        assert!(decisions.iter().all(|d| healthy(d).status == Status::True));
        assert!(decisions.iter().all(|d| d.transitions.is_empty()));
    }

    #[test]
    fn no_samples_is_no_data_and_clears_the_streak() {
        let decisions = evaluate(
            two_targets(),
            &[(0, seen(Some(good()))), (30, seen(Some(slow())))],
        );
        assert!(decisions[1].status.health_streak.is_some());
        let mut empty = seen(None);
        if let Some(Ok(f)) = &mut empty.figures {
            f.targets.clear();
        }
        let p = two_targets().with_status(decisions[1].status.clone());
        let d = decide(&p, &empty, H, at(60));
        assert_eq!(
            (healthy(&d).status, &healthy(&d).reason),
            (Status::Unknown, &Reason::NoData)
        );
        assert_eq!(d.status.health, Health::NoData);
        assert_eq!(d.status.health_streak, None);
        assert!(d.transitions.is_empty());
        assert!(
            d.status
                .targets
                .iter()
                .all(|t| t.state == TargetState::NoData)
        );
    }

    #[test]
    fn a_target_without_samples_does_not_make_the_probe_unknown() {
        let d = decide(&two_targets(), &seen(None), H, at(0));
        assert_eq!(healthy(&d).status, Status::True);
        assert!(
            healthy(&d).message.starts_with("1/2 targets reporting"),
            "{}",
            healthy(&d).message
        );
        assert_eq!(d.status.targets[1].state, TargetState::NoData);
    }

    #[test]
    fn a_database_outage_keeps_healthy_and_the_last_figures() {
        let before = decide(&two_targets(), &seen(Some(slow())), H, at(0));
        let p = two_targets().with_status(before.status.clone());
        let mut outage = seen(None);
        outage.figures = Some(Err("connection refused".into()));
        let d = decide(&p, &outage, H, at(30));
        let reporting = find(&d.status.conditions, &Type::Reporting).unwrap();
        assert_eq!(
            (reporting.status, &reporting.reason),
            (Status::Unknown, &Reason::DatabaseUnavailable)
        );
        assert!(reporting.message.contains("connection refused"));
        assert_eq!(healthy(&d), healthy(&before), "Healthy untouched");
        assert_eq!(d.status.targets, before.status.targets);
        assert_eq!(d.status.summary, before.status.summary);
        assert_eq!(d.status.health, Health::Degraded);
        assert!(d.transitions.is_empty(), "nothing new to announce");
    }

    #[test]
    fn a_missing_region_is_said_in_every_condition_and_in_health() {
        let before = decide(&two_targets(), &seen(Some(slow())), H, at(0));
        let p = two_targets().generation(2).with_status(before.status);
        let blocked = Observations {
            placement: Placement::Blocked {
                reason: Reason::RegionNotFound,
                message: "FiberRegion \"ghana\" does not exist".into(),
            },
            pod_nodes: vec![],
            figures: None,
            slo: None,
        };
        let d = decide(&p, &blocked, H, at(30));
        assert_eq!(d.status.health, Health::RegionNotFound);
        assert_eq!(d.status.ready, "0/0");
        assert_eq!(d.status.observed_generation, Some(2));
        let words: Vec<(&str, Status, &str)> = d
            .status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status, c.reason.as_str()))
            .collect();
        assert_eq!(
            words,
            [
                ("Ready", Status::False, "RegionNotFound"),
                ("Reporting", Status::Unknown, "RegionNotFound"),
                ("Healthy", Status::Unknown, "RegionNotFound"),
            ]
        );
        assert!(
            d.transitions.is_empty(),
            "False → Unknown is not a recovery"
        );
    }

    #[test]
    fn a_paused_probe_says_paused() {
        let paused = Observations {
            placement: Placement::Paused,
            pod_nodes: vec![],
            ..seen(Some(good()))
        };
        let d = decide(&two_targets().paused(), &paused, H, at(0));
        assert_eq!(d.status.health, Health::Paused);
        for type_ in [Type::Ready, Type::Reporting] {
            let c = find(&d.status.conditions, &type_).unwrap();
            assert_eq!((c.status, &c.reason), (Status::False, &Reason::Paused));
        }
        assert_eq!(d.status.ready, "0/0");
    }

    #[test]
    fn ready_and_reporting_name_what_is_missing() {
        let mut o = seen(Some(good()));
        o.placement = Placement::Placed {
            desired: 3,
            ready: 2,
        };
        o.pod_nodes.push("gh-accra-3".into());
        let d = decide(&two_targets(), &o, H, at(0));
        let ready = find(&d.status.conditions, &Type::Ready).unwrap();
        assert_eq!(
            (ready.status, &ready.reason),
            (Status::False, &Reason::PodsNotReady)
        );
        assert_eq!(ready.message, "2 of 3 probe pods ready");
        let reporting = find(&d.status.conditions, &Type::Reporting).unwrap();
        assert_eq!(reporting.reason, Reason::NodesNotReporting);
        assert!(
            reporting
                .message
                .ends_with("from gh-accra-3 (nothing in the last 15 minutes): the probe or its link, not the targets"),
            "{}",
            reporting.message
        );
        // A node that sent samples earlier in the window is silent since its newest one.
        if let Some(Ok(f)) = &mut o.figures {
            f.vantages.push((
                "google-dns".into(),
                localize::Vantage {
                    node: "gh-accra-3".into(),
                    region: "ghana".into(),
                    summary: good(),
                    newest: at(-300),
                },
            ));
        }
        let d = decide(&two_targets(), &o, H, at(0));
        let reporting = find(&d.status.conditions, &Type::Reporting).unwrap();
        assert!(
            reporting.message.contains(&format!(
                "from gh-accra-3 (silent since {})",
                at(-300).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            "{}",
            reporting.message
        );

        o.placement = Placement::Placed {
            desired: 0,
            ready: 0,
        };
        let d = decide(&two_targets(), &o, H, at(0));
        let ready = find(&d.status.conditions, &Type::Ready).unwrap();
        assert_eq!(ready.reason, Reason::NoMatchingNodes);

        if let Some(Ok(f)) = &mut o.figures {
            f.node_newest.clear();
        }
        let d = decide(&two_targets(), &o, H, at(0));
        let reporting = find(&d.status.conditions, &Type::Reporting).unwrap();
        assert_eq!(reporting.reason, Reason::NoRecentSamples);
        assert!(
            reporting.message.contains("the newest is from"),
            "{}",
            reporting.message
        );
    }

    #[test]
    fn a_node_at_the_edge_of_the_span_is_judged_alike_by_reporting_and_by_its_targets() {
        // Interval 60 s: a node reports, and measures a target, while its newest sample is at
        // most 3 intervals (180 s) old. gh-accra-2's newest is exactly 180 s old at at(0).
        let edge = |node: &str, age: i64| (node.to_owned(), at(-age));
        let mut o = seen(Some(good()));
        if let Some(Ok(f)) = &mut o.figures {
            f.node_newest = vec![edge("gh-accra-1", 5), edge("gh-accra-2", 180)];
            f.vantages = [("gh-accra-1", 5), ("gh-accra-2", 180)]
                .map(|(node, age)| {
                    let v = localize::Vantage {
                        node: node.into(),
                        region: "ghana".into(),
                        summary: good(),
                        newest: at(-age),
                    };
                    ("google-dns".to_owned(), v)
                })
                .to_vec();
        }
        let judged = |now: DateTime<Utc>| {
            let d = decide(&two_targets(), &o, H, now);
            let reporting = find(&d.status.conditions, &Type::Reporting)
                .unwrap()
                .clone();
            let silent = d.status.targets[0].silent.clone();
            (reporting, d.status.reporting_probes, silent)
        };
        // At the edge: both count it.
        let (reporting, count, silent) = judged(at(0));
        assert_eq!(
            (reporting.status, &reporting.reason, count),
            (Status::True, &Reason::SamplesArriving, 2)
        );
        assert!(silent.is_empty(), "{silent:?}");
        // A second later: both call it silent.
        let (reporting, count, silent) = judged(at(1));
        assert_eq!(
            (reporting.status, &reporting.reason, count),
            (Status::False, &Reason::NodesNotReporting, 1)
        );
        assert!(
            reporting.message.contains("gh-accra-2 (silent since"),
            "{}",
            reporting.message
        );
        assert_eq!(silent, ["gh-accra-2"]);
    }

    fn slo_of(pct: f64) -> crate::crd::Slo {
        crate::crd::Slo {
            availability_pct: pct,
            latency: None,
            window_days: 30,
        }
    }

    fn burning_counts() -> crate::slo::SloCounts {
        // A fifth of the rounds failing in every window: a burn of 20 against 99 %.
        let c = |rounds: i64| crate::slo::Counts {
            rounds,
            up: rounds * 4 / 5,
            timed: 0,
            fast: 0,
        };
        crate::slo::SloCounts {
            window: c(1_000),
            nodes: 2,
            last_5m: c(10),
            last_30m: c(60),
            last_1h: c(120),
            last_6h: c(720),
        }
    }

    #[test]
    fn a_targets_own_slo_is_in_its_row_and_its_burn_alerts_apart() {
        let mut p = two_targets();
        p.spec.slo = Some(slo_of(99.0));
        p.spec.targets[1].slo = Some(slo_of(99.0));
        let mut o = seen(Some(good()));
        let healthy = crate::slo::SloCounts {
            window: crate::slo::Counts {
                rounds: 1_000,
                up: 1_000,
                timed: 0,
                fast: 0,
            },
            nodes: 2,
            ..Default::default()
        };
        o.slo = Some(Ok(crate::slo::ProbeSloCounts {
            probe: Some(healthy),
            targets: [("db".to_owned(), burning_counts())].into(),
        }));
        let d = decide(&p, &o, H, at(0));
        assert_eq!(d.status.slo.as_ref().unwrap().burning, None);
        assert_eq!(
            d.status.targets[0].slo, None,
            "google-dns has no slo of its own"
        );
        let db = d.status.targets[1].slo.clone().unwrap();
        assert_eq!(db.burning, Some(Burn::Fast));
        assert_eq!(db.availability.unwrap().sli_pct, Some(80.0));
        let [alert] = d.status.alerts.as_slice() else {
            panic!("one burn alert: {:?}", d.status.alerts);
        };
        assert_eq!(
            (alert.target.as_str(), alert.burn.clone()),
            ("db", Some(Burn::Fast))
        );
        assert_eq!(
            alert.id,
            format!("fiberstack/accra-edge/db/slo@{}", at(0).timestamp())
        );
        assert!(d.transitions.iter().any(|t| matches!(
            t,
            Transition::SloBurning { message, fast: true } if message.starts_with("target db: availability 80 %")
        )));
        // The probe's own slo burns too: its alert is another one; the target's stays.
        let p = p.with_status(d.status.clone());
        let mut both = o.clone();
        if let Some(Ok(c)) = &mut both.slo {
            c.probe = Some(burning_counts());
        }
        let d = decide(&p, &both, H, at(30));
        let ids: Vec<(&str, &str)> = d
            .status
            .alerts
            .iter()
            .map(|a| (a.target.as_str(), a.id.as_str()))
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(ids[0].0, "db");
        assert_eq!(
            ids[1],
            (
                "slo",
                format!("fiberstack/accra-edge/slo@{}", at(30).timestamp()).as_str()
            )
        );
        // The target's slo is taken out of the spec: its alert resolves, the probe's fires on.
        let mut p = p.with_status(d.status.clone());
        p.spec.targets[1].slo = None;
        let d = decide(&p, &both, H, at(60));
        let states: Vec<(&str, AlertState)> = d
            .status
            .alerts
            .iter()
            .map(|a| (a.target.as_str(), a.state))
            .collect();
        assert_eq!(
            states,
            [("db", AlertState::Resolved), ("slo", AlertState::Firing)]
        );
        assert_eq!(d.status.targets[1].slo, None);
    }
}
