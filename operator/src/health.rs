//! Health rules, pure: which targets breach their thresholds, what Healthy says as observed
//! now, the hysteresis that keeps Healthy from flapping, and the one-word health of
//! `kubectl get`. No I/O: the figures come from [`crate::status`] (the SQL), the decision is
//! made in the controllers' decide steps.

use chrono::{DateTime, TimeDelta, Utc};

use crate::conditions::{ConditionType, Reason, Status, find, rfc3339};
use crate::crd::{
    Condition, FiberProbeSpec, Health, HealthStreak, Summary, TargetState, TargetStatus, Thresholds,
};
use crate::status::{Figures, WINDOW};

/// The thresholds a target is held to: its own where it sets them, the probe's otherwise.
pub fn thresholds_of(spec: &FiberProbeSpec, target: &str) -> Thresholds {
    let own = spec.targets.iter().find(|t| t.name == target);
    spec.thresholds
        .with(own.and_then(|t| t.thresholds.as_ref()))
}

/// Days from `now` to a certificate's expiry, fractional, negative once expired.
fn days_left(expires: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (expires - now).num_seconds() as f64 / 86_400.0
}

/// How far a target is past its thresholds: above 1 is a breach, larger is worse.
fn severity(row: &TargetStatus, t: &Thresholds, now: DateTime<Utc>) -> f64 {
    let s = &row.summary;
    let ratio = |value: Option<f64>, limit: f64| value.map_or(0.0, |v| v / limit.max(0.001));
    let p95 = ratio(s.latency_p95_ms, t.latency_p95_ms);
    let loss = ratio(s.packet_loss_pct, t.packet_loss_pct);
    let down = ratio(s.uptime_pct.map(|u| 100.0 - u), 100.0 - t.uptime_pct);
    let certificate = row
        .certificate_expires_at
        .as_deref()
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .filter(|_| t.cert_expiry_days > 0)
        .map_or(0.0, |at| {
            f64::from(t.cert_expiry_days) / days_left(at.with_timezone(&Utc), now).max(0.001)
        });
    p95.max(loss).max(down).max(certificate)
}

/// What is wrong with a target, or None when it meets every threshold.
pub(crate) fn breach(
    s: &Summary,
    certificate: Option<DateTime<Utc>>,
    t: &Thresholds,
    now: DateTime<Utc>,
) -> Option<String> {
    let mut what = Vec::new();
    if let Some(p95) = s.latency_p95_ms.filter(|v| *v > t.latency_p95_ms) {
        what.push(format!("p95 latency {p95} ms > {} ms", t.latency_p95_ms));
    }
    if let Some(loss) = s.packet_loss_pct.filter(|v| *v > t.packet_loss_pct) {
        what.push(format!("packet loss {loss} % > {} %", t.packet_loss_pct));
    }
    if let Some(up) = s.uptime_pct.filter(|v| *v < t.uptime_pct) {
        what.push(format!("uptime {up} % < {} %", t.uptime_pct));
    }
    let within = TimeDelta::days(i64::from(t.cert_expiry_days));
    if let Some(expires) = certificate.filter(|at| t.cert_expiry_days > 0 && *at - now < within) {
        what.push(if expires <= now {
            format!("certificate expired at {}", rfc3339(expires))
        } else {
            format!(
                "certificate expires in {:.1} days < {} days ({})",
                days_left(expires, now),
                t.cert_expiry_days,
                rfc3339(expires)
            )
        });
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// Rows for every target of the spec, in spec order, each judged by its own thresholds
/// ([`thresholds_of`]); a target without samples is NoData.
pub fn target_rows(
    spec: &FiberProbeSpec,
    figures: &Figures,
    now: DateTime<Utc>,
) -> Vec<TargetStatus> {
    spec.targets
        .iter()
        .map(|target| {
            let name = &target.name;
            let found = figures.targets.iter().find(|(n, _)| n == name);
            match found {
                None => TargetStatus {
                    name: name.clone(),
                    state: TargetState::NoData,
                    message: Some(no_data(figures, name)),
                    ..Default::default()
                },
                Some((_, s)) => {
                    let certificate = figures
                        .certificates
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, at)| *at);
                    let problem = breach(s, certificate, &thresholds_of(spec, name), now);
                    TargetStatus {
                        name: name.clone(),
                        summary: s.clone(),
                        state: if problem.is_some() {
                            TargetState::Breaching
                        } else {
                            TargetState::Healthy
                        },
                        message: problem,
                        certificate_expires_at: certificate.map(rfc3339),
                        ..Default::default()
                    }
                }
            }
        })
        .collect()
}

/// Why a target has no figures: the probe itself is silent (no target has samples in the
/// window; since its newest sample), or only this target is not measured, or it never was.
/// "No data" is never "down": a down target has samples, failed ones.
fn no_data(figures: &Figures, target: &str) -> String {
    let newest = figures
        .target_newest
        .iter()
        .find(|(n, _)| n == target)
        .map(|(_, t)| rfc3339(*t));
    match (figures.targets.is_empty(), newest, figures.last_sample) {
        (true, _, Some(last)) => format!(
            "no data: the probe is silent since {} (no sample of any target in the last {WINDOW}); the target is not known to be down",
            rfc3339(last)
        ),
        (_, Some(newest), _) => {
            format!(
                "no data: no sample of this target in the last {WINDOW}; the newest is from {newest}"
            )
        }
        (_, None, _) => "no data: no sample of this target received yet".to_owned(),
    }
}

/// Healthy as observed in one evaluation, before hysteresis.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// True, False, or Unknown when no target has data.
    pub status: Status,
    pub reason: Reason,
    /// Names the worst target.
    pub message: String,
}

/// Healthy as observed now, from the target rows of `spec`.
pub fn observe(rows: &[TargetStatus], spec: &FiberProbeSpec, now: DateTime<Utc>) -> Observed {
    let with_data: Vec<&TargetStatus> = rows
        .iter()
        .filter(|r| r.state != TargetState::NoData)
        .collect();
    let severity = |r: &TargetStatus| severity(r, &thresholds_of(spec, &r.name), now);
    let Some(worst) = with_data
        .iter()
        .max_by(|a, b| severity(a).total_cmp(&severity(b)))
    else {
        return Observed {
            status: Status::Unknown,
            reason: Reason::NoData,
            message: format!("no samples in the last {WINDOW}"),
        };
    };
    let breaching = with_data
        .iter()
        .filter(|r| r.state == TargetState::Breaching)
        .count();
    if breaching == 0 {
        Observed {
            status: Status::True,
            reason: Reason::ThresholdsMet,
            message: format!(
                "{}/{} targets reporting, all within thresholds over {WINDOW}; closest to a limit: {}",
                with_data.len(),
                rows.len(),
                worst.name
            ),
        }
    } else {
        Observed {
            status: Status::False,
            reason: Reason::ThresholdsBreached,
            message: format!(
                "worst target {}: {}; {breaching} of {} reporting targets breaching over {WINDOW}",
                worst.name,
                worst.message.as_deref().unwrap_or(""),
                with_data.len()
            ),
        }
    }
}

/// How long a changed health must hold before Healthy follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    /// Consecutive evaluations that must see the new state.
    pub evaluations: u32,
    /// Evaluations closer together than this count once: reconciles triggered by pod or
    /// spec changes must not shorten the hold time.
    pub min_gap: std::time::Duration,
}

/// What Healthy should say after this evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthDecision {
    /// Switch Healthy to the observed state now.
    pub switch: bool,
    /// The state being counted towards a switch, if any.
    pub streak: Option<HealthStreak>,
}

/// Decides whether Healthy follows `observed` (True or False). The first known state is
/// taken at once; afterwards a change must be seen in `h.evaluations` consecutive
/// evaluations, at least `h.min_gap` apart. Seeing the current state again resets the count.
pub fn decide_health(
    h: Hysteresis,
    current: Option<Status>,
    streak: Option<&HealthStreak>,
    observed: Status,
    now: DateTime<Utc>,
) -> HealthDecision {
    let settled = matches!(current, Some(Status::True | Status::False));
    if !settled || h.evaluations <= 1 {
        return HealthDecision {
            switch: current != Some(observed),
            streak: None,
        };
    }
    if current == Some(observed) {
        return HealthDecision {
            switch: false,
            streak: None,
        };
    }
    let count = match streak {
        Some(s) if s.status == observed => {
            let last = DateTime::parse_from_rfc3339(&s.last_evaluation_time)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let gap = (now - last).to_std().unwrap_or_default();
            if gap < h.min_gap {
                return HealthDecision {
                    switch: false,
                    streak: Some(s.clone()),
                };
            }
            s.count + 1
        }
        _ => 1,
    };
    if count >= h.evaluations {
        HealthDecision {
            switch: true,
            streak: None,
        }
    } else {
        HealthDecision {
            switch: false,
            streak: Some(HealthStreak {
                status: observed,
                count,
                last_evaluation_time: crate::conditions::rfc3339(now),
            }),
        }
    }
}

/// The one word of `kubectl get`, from the conditions.
pub fn health_word(conditions: &[Condition], paused: bool) -> Health {
    if paused {
        return Health::Paused;
    }
    match find(conditions, &ConditionType::Healthy) {
        Some(c) if c.status == Status::True => Health::Healthy,
        Some(c) if c.status == Status::False => Health::Degraded,
        Some(c) if c.reason == Reason::NoData => Health::NoData,
        _ => Health::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn s(p95: f64, loss: f64, up: f64) -> Summary {
        Summary {
            samples: 10,
            latency_p50_ms: Some(p95 / 2.0),
            latency_p95_ms: Some(p95),
            packet_loss_pct: Some(loss),
            uptime_pct: Some(up),
            late_samples: None,
        }
    }

    /// The fixture's spec with one ICMP target of each name (probe thresholds 150 ms, 2 %,
    /// 99 %, certificates 14 days).
    fn spec(names: &[&str]) -> FiberProbeSpec {
        let mut spec = crate::fixtures::probe().spec;
        let template = spec.targets[0].clone();
        spec.targets = names
            .iter()
            .map(|n| fiberstack_model::Target {
                name: (*n).to_owned(),
                ..template.clone()
            })
            .collect();
        spec
    }

    fn own(spec: &mut FiberProbeSpec, target: &str, t: fiberstack_model::TargetThresholds) {
        let target = spec.targets.iter_mut().find(|x| x.name == target).unwrap();
        target.thresholds = Some(t);
    }

    fn days(n: f64) -> DateTime<Utc> {
        at((n * 86_400.0) as i64)
    }

    #[test]
    fn no_data_says_whether_the_probe_is_silent_or_the_target_unmeasured() {
        let spec = spec(&["a", "b", "c"]);
        // Only "a" has samples in the window; "b" had some before, "c" never.
        let figures = Figures {
            targets: vec![("a".into(), s(20.0, 0.0, 100.0))],
            target_newest: vec![("a".into(), at(-5)), ("b".into(), at(-3600))],
            last_sample: Some(at(-5)),
            ..Default::default()
        };
        let rows = target_rows(&spec, &figures, at(0));
        assert_eq!(
            rows[1].message.as_deref(),
            Some(
                "no data: no sample of this target in the last 15 minutes; the newest is from 2027-01-15T07:00:00Z"
            )
        );
        assert_eq!(
            rows[2].message.as_deref(),
            Some("no data: no sample of this target received yet")
        );
        // Nothing in the window from any target: the probe is silent, the targets not down.
        let silent = Figures {
            targets: vec![],
            last_sample: Some(at(-1800)),
            ..figures
        };
        let rows = target_rows(&spec, &silent, at(0));
        assert!(rows.iter().all(|r| r.state == TargetState::NoData));
        assert_eq!(
            rows[0].message.as_deref(),
            Some(
                "no data: the probe is silent since 2027-01-15T07:30:00Z (no sample of any target in the last 15 minutes); the target is not known to be down"
            )
        );
    }

    #[test]
    fn the_worst_breaching_target_is_named() {
        let figures = Figures {
            targets: vec![
                ("a".into(), s(160.0, 0.0, 100.0)),
                ("b".into(), s(20.0, 30.0, 100.0)),
                ("c".into(), s(20.0, 0.0, 100.0)),
            ],
            ..Default::default()
        };
        let spec = spec(&["a", "b", "c", "d"]);
        let rows = target_rows(&spec, &figures, at(0));
        let states: Vec<TargetState> = rows.iter().map(|r| r.state).collect();
        use TargetState::*;
        assert_eq!(states, [Breaching, Breaching, Healthy, NoData]);
        let observed = observe(&rows, &spec, at(0));
        assert_eq!(
            (observed.status, observed.reason),
            (Status::False, Reason::ThresholdsBreached)
        );
        let message = observed.message;
        assert!(
            message.starts_with("worst target b: packet loss 30 % > 2 %"),
            "{message}"
        );
        assert!(message.contains("2 of 3 reporting targets"), "{message}");
    }

    #[test]
    fn no_samples_is_unknown_not_healthy() {
        let spec = spec(&["a"]);
        let rows = target_rows(&spec, &Figures::default(), at(0));
        let observed = observe(&rows, &spec, at(0));
        assert_eq!(
            (observed.status, observed.reason),
            (Status::Unknown, Reason::NoData)
        );
    }

    #[test]
    fn a_certificate_expiring_within_cert_expiry_days_breaches() {
        let names = ["soon", "later", "expired", "plain"];
        let figures = Figures {
            targets: names.map(|n| (n.to_owned(), s(20.0, 0.0, 100.0))).to_vec(),
            certificates: vec![
                ("soon".into(), days(10.5)),
                ("later".into(), days(14.5)),
                ("expired".into(), days(-2.0)),
            ],
            ..Default::default()
        };
        let mut spec = spec(&names);
        let rows = target_rows(&spec, &figures, at(0));
        let states: Vec<TargetState> = rows.iter().map(|r| r.state).collect();
        use TargetState::*;
        assert_eq!(states, [Breaching, Healthy, Breaching, Healthy]);
        assert_eq!(
            rows[0].message.as_deref(),
            Some("certificate expires in 10.5 days < 14 days (2027-01-25T20:00:00Z)")
        );
        assert_eq!(
            rows[2].message.as_deref(),
            Some("certificate expired at 2027-01-13T08:00:00Z")
        );
        let expires: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.certificate_expires_at.as_deref())
            .collect();
        assert_eq!(
            expires,
            [
                Some("2027-01-25T20:00:00Z"),
                Some("2027-01-29T20:00:00Z"),
                Some("2027-01-13T08:00:00Z"),
                None
            ],
            "the figure is reported whether or not it breaches"
        );
        let observed = observe(&rows, &spec, at(0));
        assert!(
            observed
                .message
                .starts_with("worst target expired: certificate expired"),
            "{}",
            observed.message
        );

        // Four days on, the second one is within 14 days too.
        let rows = target_rows(&spec, &figures, days(4.0));
        assert_eq!(rows[1].state, Breaching, "{:?}", rows[1].message);

        spec.thresholds.cert_expiry_days = 0;
        let rows = target_rows(&spec, &figures, at(0));
        assert!(
            rows.iter().all(|r| r.state == Healthy),
            "0 turns the rule off: {rows:?}"
        );
    }

    #[test]
    fn a_targets_own_thresholds_replace_the_probes_field_by_field() {
        use fiberstack_model::TargetThresholds;
        let names = ["lenient", "strict", "cert"];
        let figures = Figures {
            targets: vec![
                ("lenient".into(), s(300.0, 2.5, 100.0)),
                ("strict".into(), s(120.0, 1.0, 100.0)),
                ("cert".into(), s(20.0, 0.0, 100.0)),
            ],
            certificates: vec![("cert".into(), days(20.0))],
            ..Default::default()
        };
        let mut spec = spec(&names);
        let rows = target_rows(&spec, &figures, at(0));
        let states: Vec<TargetState> = rows.iter().map(|r| r.state).collect();
        use TargetState::*;
        assert_eq!(states, [Breaching, Healthy, Healthy], "the probe's limits");

        own(
            &mut spec,
            "lenient",
            TargetThresholds {
                latency_p95_ms: Some(400.0),
                ..Default::default()
            },
        );
        own(
            &mut spec,
            "strict",
            TargetThresholds {
                latency_p95_ms: Some(100.0),
                ..Default::default()
            },
        );
        own(
            &mut spec,
            "cert",
            TargetThresholds {
                cert_expiry_days: Some(30),
                ..Default::default()
            },
        );
        let rows = target_rows(&spec, &figures, at(0));
        let messages: Vec<Option<&str>> = rows.iter().map(|r| r.message.as_deref()).collect();
        assert_eq!(
            messages,
            [
                // Its latency limit is its own; its loss limit is still the probe's 2 %.
                Some("packet loss 2.5 % > 2 %"),
                Some("p95 latency 120 ms > 100 ms"),
                Some("certificate expires in 20.0 days < 30 days (2027-02-04T08:00:00Z)"),
            ]
        );
        // Severity is measured against each target's own limits: loss 1.25 × the limit,
        // latency 1.2 ×, and the certificate 30 / 20 = 1.5 × (by the probe's 150 ms, the
        // lenient target's 300 ms would have been the worst at 2 ×).
        let observed = observe(&rows, &spec, at(0));
        assert!(
            observed.message.starts_with("worst target cert: "),
            "{}",
            observed.message
        );
    }

    const H: Hysteresis = Hysteresis {
        evaluations: 3,
        min_gap: std::time::Duration::from_secs(10),
    };

    /// Runs evaluations (second, observed) from Healthy=`start`; returns Healthy after each.
    fn run(start: Status, evaluations: &[(i64, Status)]) -> Vec<Status> {
        let mut current = start;
        let mut streak = None;
        evaluations
            .iter()
            .map(|(t, observed)| {
                let d = decide_health(H, Some(current), streak.as_ref(), *observed, at(*t));
                if d.switch {
                    current = *observed;
                }
                streak = d.streak;
                current
            })
            .collect()
    }

    use Status::{False as F, True as T};

    #[test]
    fn a_breach_must_hold_for_three_evaluations() {
        let seen = run(T, &[(0, F), (30, F), (60, F), (90, F)]);
        assert_eq!(seen, [T, T, F, F]);
    }

    #[test]
    fn a_single_good_evaluation_resets_the_count() {
        let seen = run(T, &[(0, F), (30, F), (60, T), (90, F), (120, F), (150, F)]);
        assert_eq!(seen, [T, T, T, T, T, F]);
    }

    #[test]
    fn recovery_needs_the_same_hold() {
        let seen = run(F, &[(0, T), (30, T), (60, T)]);
        assert_eq!(seen, [F, F, T]);
    }

    #[test]
    fn evaluations_in_quick_succession_count_once() {
        let seen = run(T, &[(0, F), (1, F), (2, F), (3, F), (12, F), (24, F)]);
        assert_eq!(seen, [T, T, T, T, T, F]);
    }

    #[test]
    fn the_first_known_state_is_taken_at_once() {
        let d = decide_health(H, None, None, F, at(0));
        assert!(d.switch);
        let d = decide_health(H, Some(Status::Unknown), None, T, at(0));
        assert!(d.switch);
    }
}
