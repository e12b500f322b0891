//! Conditions: their typed vocabulary (types, statuses, reasons — serialised to the same
//! strings as ever), a builder, and [`merge`], which moves `lastTransitionTime` only when a
//! condition's status really changes and keeps the conditions a reconcile did not recompute.

use chrono::{DateTime, Utc};

use crate::crd::Condition;
use crate::words::string_enum;

string_enum! {
    /// What a condition is about.
    pub enum ConditionType {
        /// FiberProbe: its pods are rolled out. FiberRegion: ingest and ETL are available.
        /// FiberNotifier: the last delivery succeeded.
        Ready,
        /// FiberProbe: samples arrive from every node within 3 intervals.
        Reporting,
        /// FiberProbe: every target meets the thresholds.
        Healthy,
        /// FiberRegion: the ingest Deployment has its pods ready.
        IngestAvailable,
        /// FiberRegion: the ETL Deployment has its pods ready.
        EtlAvailable,
        /// FiberRegion: the ETL's figures of the stream are missing or stale, or the stream
        /// holds dead letters.
        Degraded,
    }
    else Other(String)
}

string_enum! {
    /// A condition's status, as Kubernetes spells it.
    pub enum Status { True, False, Unknown }
    else Unknown
}

string_enum! {
    /// Why a condition has its status: one CamelCase word.
    pub enum Reason {
        // Placement (FiberProbe Ready, and all three when the probe cannot be placed).
        RegionNotFound,
        InvalidSpec,
        InvalidObject,
        Paused,
        NoMatchingNodes,
        PodsNotReady,
        AllPodsReady,
        // Reporting.
        DatabaseUnavailable,
        NoRecentSamples,
        NodesNotReporting,
        SamplesArriving,
        // Healthy.
        NoData,
        ThresholdsMet,
        ThresholdsBreached,
        // FiberRegion Ready, IngestAvailable, EtlAvailable.
        Available,
        NotAvailable,
        ScaledToZero,
        MinimumReplicasAvailable,
        ReplicasNotReady,
        // FiberRegion Degraded.
        NoStreamFigures,
        StreamFiguresStale,
        DeadLetters,
        StreamHealthy,
        // FiberNotifier Ready.
        NothingSentYet,
        Delivered,
        DeliveryFailed,
        SecretNotFound,
    }
    else Other(String)
}

/// A condition without its transition time, which [`merge`] decides.
pub fn condition(
    type_: ConditionType,
    status: Status,
    reason: Reason,
    message: impl Into<String>,
) -> Condition {
    Condition {
        type_,
        status,
        reason,
        message: message.into(),
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

/// The conditions after a reconcile: each of `next` keeps the previous `lastTransitionTime`
/// of its type when its status did not change and takes `now` otherwise; conditions of
/// `previous` that `next` does not recompute are kept as they were (their
/// `observedGeneration` says how old they are), as operator-rs does. Order: `next` first.
pub fn merge(
    previous: &[Condition],
    next: Vec<Condition>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let kept: Vec<Condition> = previous
        .iter()
        .filter(|p| !next.iter().any(|c| c.type_ == p.type_))
        .cloned()
        .collect();
    next.into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = match find(previous, &c.type_) {
                Some(p) if p.status == c.status && !p.last_transition_time.is_empty() => {
                    p.last_transition_time.clone()
                }
                _ => rfc3339(now),
            };
            c
        })
        .chain(kept)
        .collect()
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn find<'a>(conditions: &'a [Condition], type_: &ConditionType) -> Option<&'a Condition> {
    conditions.iter().find(|c| &c.type_ == type_)
}

/// The status of a condition type; None when the condition is absent.
pub fn status_of(conditions: &[Condition], type_: &ConditionType) -> Option<Status> {
    find(conditions, type_).map(|c| c.status)
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
        let ready = |status, reason, message: &str| {
            condition(ConditionType::Ready, status, reason, message)
        };
        let first = merge(
            &[],
            vec![ready(Status::True, Reason::AllPodsReady, "3 of 3")],
            Some(1),
            at(0),
        );
        assert_eq!(first[0].last_transition_time, rfc3339(at(0)));
        let same = merge(
            &first,
            vec![ready(
                Status::True,
                Reason::AllPodsReady,
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
            vec![ready(Status::False, Reason::PodsNotReady, "1 of 2")],
            Some(2),
            at(90),
        );
        assert_eq!(changed[0].last_transition_time, rfc3339(at(90)));
    }

    #[test]
    fn conditions_not_recomputed_are_kept_as_they_were() {
        let before = merge(
            &[],
            vec![
                condition(ConditionType::Ready, Status::True, Reason::Available, "ok"),
                condition(
                    ConditionType::IngestAvailable,
                    Status::True,
                    Reason::MinimumReplicasAvailable,
                    "2 of 2",
                ),
                condition(
                    ConditionType::Other("Custom".into()),
                    Status::False,
                    Reason::Other("Set".into()),
                    "by hand",
                ),
            ],
            Some(1),
            at(0),
        );
        let after = merge(
            &before,
            vec![condition(
                ConditionType::Ready,
                Status::False,
                Reason::InvalidSpec,
                "bad",
            )],
            Some(2),
            at(30),
        );
        let types: Vec<&str> = after.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "IngestAvailable", "Custom"]);
        assert_eq!(after[0].observed_generation, Some(2));
        assert_eq!(after[1], before[1], "kept untouched, generation 1 included");
        assert_eq!(after[2].reason.as_str(), "Set");
    }

    #[test]
    fn words_are_todays_strings() {
        let c = condition(
            ConditionType::Healthy,
            Status::Unknown,
            Reason::NoData,
            "none",
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["type"], "Healthy");
        assert_eq!(json["status"], "Unknown");
        assert_eq!(json["reason"], "NoData");
    }
}
