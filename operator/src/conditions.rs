//! Conditions computed by small builders and merged so that `lastTransitionTime` moves only
//! when a condition's status really changes; and the hysteresis that keeps Healthy from
//! flapping.

use chrono::{DateTime, Utc};

use crate::crd::{Condition, HealthStreak};

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// A condition without its transition time, which [`merge`] decides.
pub fn condition(type_: &str, status: &str, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

/// The new conditions, each keeping the previous `lastTransitionTime` of its type when its
/// status did not change, and taking `now` otherwise.
pub fn merge(
    previous: &[Condition],
    next: Vec<Condition>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    next.into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = match previous.iter().find(|p| p.type_ == c.type_) {
                Some(p) if p.status == c.status && !p.last_transition_time.is_empty() => {
                    p.last_transition_time.clone()
                }
                _ => rfc3339(now),
            };
            c
        })
        .collect()
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
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
    current: Option<&str>,
    streak: Option<&HealthStreak>,
    observed: &str,
    now: DateTime<Utc>,
) -> HealthDecision {
    let settled = matches!(current, Some(TRUE) | Some(FALSE));
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
                status: observed.to_owned(),
                count,
                last_evaluation_time: rfc3339(now),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = merge(
            &[],
            vec![condition("Ready", TRUE, "AllPodsReady", "3 of 3")],
            Some(1),
            at(0),
        );
        assert_eq!(first[0].last_transition_time, rfc3339(at(0)));
        let same = merge(
            &first,
            vec![condition(
                "Ready",
                TRUE,
                "AllPodsReady",
                "2 of 2, a node left",
            )],
            Some(2),
            at(60),
        );
        assert_eq!(same[0].last_transition_time, rfc3339(at(0)));
        assert_eq!(same[0].message, "2 of 2, a node left");
        assert_eq!(same[0].observed_generation, Some(2));
        let changed = merge(
            &same,
            vec![condition("Ready", FALSE, "RollingOut", "1 of 2")],
            Some(2),
            at(90),
        );
        assert_eq!(changed[0].last_transition_time, rfc3339(at(90)));
    }

    const H: Hysteresis = Hysteresis {
        evaluations: 3,
        min_gap: std::time::Duration::from_secs(10),
    };

    /// Runs evaluations (second, observed) from Healthy=`start`; returns Healthy after each.
    fn run(start: &str, evaluations: &[(i64, &str)]) -> Vec<String> {
        let mut current = start.to_owned();
        let mut streak = None;
        evaluations
            .iter()
            .map(|(t, observed)| {
                let d = decide_health(H, Some(&current), streak.as_ref(), observed, at(*t));
                if d.switch {
                    current = observed.to_string();
                }
                streak = d.streak;
                current.clone()
            })
            .collect()
    }

    #[test]
    fn a_breach_must_hold_for_three_evaluations() {
        let seen = run(TRUE, &[(0, FALSE), (30, FALSE), (60, FALSE), (90, FALSE)]);
        assert_eq!(seen, [TRUE, TRUE, FALSE, FALSE]);
    }

    #[test]
    fn a_single_good_evaluation_resets_the_count() {
        let seen = run(
            TRUE,
            &[
                (0, FALSE),
                (30, FALSE),
                (60, TRUE),
                (90, FALSE),
                (120, FALSE),
                (150, FALSE),
            ],
        );
        assert_eq!(seen, [TRUE, TRUE, TRUE, TRUE, TRUE, FALSE]);
    }

    #[test]
    fn recovery_needs_the_same_hold() {
        let seen = run(FALSE, &[(0, TRUE), (30, TRUE), (60, TRUE)]);
        assert_eq!(seen, [FALSE, FALSE, TRUE]);
    }

    #[test]
    fn evaluations_in_quick_succession_count_once() {
        let seen = run(
            TRUE,
            &[
                (0, FALSE),
                (1, FALSE),
                (2, FALSE),
                (3, FALSE),
                (12, FALSE),
                (24, FALSE),
            ],
        );
        assert_eq!(seen, [TRUE, TRUE, TRUE, TRUE, TRUE, FALSE]);
    }

    #[test]
    fn the_first_known_state_is_taken_at_once() {
        let d = decide_health(H, None, None, FALSE, at(0));
        assert!(d.switch);
        let d = decide_health(H, Some(UNKNOWN), None, TRUE, at(0));
        assert!(d.switch);
    }
}
