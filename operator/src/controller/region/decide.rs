//! The FiberRegion's decide step, pure: previous status + observations + now → new status.
//! Unit-tested from fixtures below, without Redis or an API server.

use chrono::{DateTime, Utc};

use crate::conditions::{ConditionType as Type, Reason, Status, condition, merge, rfc3339};
use crate::crd::{Condition, FiberRegion, FiberRegionStatus};
use crate::render::names;
use crate::status::StreamFigures;

/// The ETL records the stream's figures every housekeeping round (10 s by default); older
/// than this, they no longer describe the stream.
pub const STREAM_FIGURES_STALE_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Replica counts of one Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replicas {
    pub desired: i32,
    pub ready: i32,
    pub available: i32,
}

/// What the gather step saw of a valid region's workloads and stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Workloads {
    pub ingest: Replicas,
    pub etl: Replicas,
    /// FiberProbes of the namespace naming this region.
    pub probes: i32,
    /// The newest figures the region's ETL recorded (None: none yet), or why they could
    /// not be read.
    pub stream: Result<Option<StreamFigures>, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Observations {
    /// The spec does not validate: the error. Nothing was applied.
    Invalid(String),
    Running(Workloads),
}

pub fn decide(
    region: &FiberRegion,
    observed: &Observations,
    now: DateTime<Utc>,
) -> FiberRegionStatus {
    let previous = region.status.clone().unwrap_or_default();
    let generation = region.metadata.generation;
    let w = match observed {
        Observations::Invalid(e) => {
            return FiberRegionStatus {
                observed_generation: generation,
                conditions: merge(
                    &previous.conditions,
                    vec![condition(
                        Type::Ready,
                        Status::False,
                        Reason::InvalidSpec,
                        e.clone(),
                    )],
                    generation,
                    now,
                ),
                ..Default::default()
            };
        }
        Observations::Running(w) => w,
    };
    let name = region.metadata.name.clone().unwrap_or_default();
    let ingest_available = availability(Type::IngestAvailable, "ingest", w.ingest);
    let etl_available = availability(Type::EtlAvailable, "ETL", w.etl);
    let ready = if ingest_available.status == Status::True && etl_available.status == Status::True {
        condition(
            Type::Ready,
            Status::True,
            Reason::Available,
            "ingest and ETL are available",
        )
    } else {
        let down: Vec<&str> = [&ingest_available, &etl_available]
            .iter()
            .filter(|c| c.status != Status::True)
            .map(|c| c.message.as_str())
            .collect();
        condition(
            Type::Ready,
            Status::False,
            Reason::NotAvailable,
            down.join("; "),
        )
    };
    let figures = w.stream.as_ref().ok().and_then(Option::as_ref);
    FiberRegionStatus {
        observed_generation: generation,
        conditions: merge(
            &previous.conditions,
            vec![
                ready,
                ingest_available,
                etl_available,
                degraded(&name, &w.stream, now),
            ],
            generation,
            now,
        ),
        ingest: replicas(w.ingest),
        etl: replicas(w.etl),
        probes: w.probes,
        backlog: figures.map(|f| f.length as i64),
        pending: figures.map(|f| f.pending as i64),
        dead_letters: figures.map(|f| f.dead_letters as i64),
        ingest_url: Some(crate::render::region::ingest_url(region)),
        token_secret: Some(names::token_secret(&name)),
    }
}

fn replicas(r: Replicas) -> String {
    format!("{}/{}", r.ready, r.desired)
}

fn availability(type_: Type, what: &str, r: Replicas) -> Condition {
    let Replicas {
        desired,
        ready,
        available,
    } = r;
    if desired == 0 {
        condition(
            type_,
            Status::False,
            Reason::ScaledToZero,
            format!("{what} has 0 replicas"),
        )
    } else if available >= 1 && ready >= desired {
        condition(
            type_,
            Status::True,
            Reason::MinimumReplicasAvailable,
            format!("{ready} of {desired} {what} pods ready"),
        )
    } else {
        condition(
            type_,
            Status::False,
            Reason::ReplicasNotReady,
            format!("{ready} of {desired} {what} pods ready"),
        )
    }
}

/// Degraded: the ETL's figures of the stream are missing, unreadable or stale, or the stream
/// holds dead letters.
fn degraded(
    region: &str,
    stream: &Result<Option<StreamFigures>, String>,
    now: DateTime<Utc>,
) -> Condition {
    match stream {
        Err(e) => condition(
            Type::Degraded,
            Status::Unknown,
            Reason::DatabaseUnavailable,
            e.clone(),
        ),
        Ok(None) => condition(
            Type::Degraded,
            Status::Unknown,
            Reason::NoStreamFigures,
            "the region's ETL has not recorded the stream's figures yet (table stream_stats)",
        ),
        Ok(Some(f)) if now - f.recorded_at > STREAM_FIGURES_STALE_AFTER => condition(
            Type::Degraded,
            Status::True,
            Reason::StreamFiguresStale,
            format!(
                "the region's ETL last recorded the stream's figures at {}, over {} s ago: is it running, and can it reach Redis and the database?",
                rfc3339(f.recorded_at),
                STREAM_FIGURES_STALE_AFTER.num_seconds()
            ),
        ),
        Ok(Some(f)) if f.dead_letters > 0 => condition(
            Type::Degraded,
            Status::True,
            Reason::DeadLetters,
            format!(
                "{} entries in {} could not be stored; read their reasons there",
                f.dead_letters,
                fiberstack_model::stream::dead_letter_stream(region)
            ),
        ),
        Ok(Some(f)) => condition(
            Type::Degraded,
            Status::False,
            Reason::StreamHealthy,
            format!("{} entries in the stream, {} pending", f.length, f.pending),
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::conditions::{find, rfc3339};
    use crate::fixtures::{Fixture, region};

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn up(n: i32) -> Replicas {
        Replicas {
            desired: n,
            ready: n,
            available: n,
        }
    }

    fn running(stream: Result<Option<StreamFigures>, String>) -> Observations {
        Observations::Running(Workloads {
            ingest: up(2),
            etl: up(2),
            probes: 3,
            stream,
        })
    }

    /// Figures recorded 5 s before the evaluations at `at(0)`.
    fn figures(dead_letters: u64) -> Option<StreamFigures> {
        Some(StreamFigures {
            length: 12,
            pending: 2,
            dead_letters,
            recorded_at: at(-5),
        })
    }

    fn words(s: &FiberRegionStatus) -> Vec<(&str, Status, &str)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status, c.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_running_region_is_ready_with_its_stream_figures() {
        let s = decide(&region().generation(1), &running(Ok(figures(0))), at(0));
        assert_eq!(
            words(&s),
            [
                ("Ready", Status::True, "Available"),
                ("IngestAvailable", Status::True, "MinimumReplicasAvailable"),
                ("EtlAvailable", Status::True, "MinimumReplicasAvailable"),
                ("Degraded", Status::False, "StreamHealthy"),
            ]
        );
        assert_eq!(
            (s.backlog, s.pending, s.dead_letters),
            (Some(12), Some(2), Some(0))
        );
        assert_eq!(
            (s.ingest.as_str(), s.etl.as_str(), s.probes),
            ("2/2", "2/2", 3)
        );
        assert_eq!(
            s.ingest_url.as_deref(),
            Some("http://fiberstack-ingest-ghana.fiberstack.svc:8080")
        );
        assert_eq!(
            s.token_secret.as_deref(),
            Some("fiberstack-probe-token-ghana")
        );
    }

    #[test]
    fn unavailable_workloads_are_named_in_ready() {
        let o = Observations::Running(Workloads {
            ingest: Replicas {
                desired: 2,
                ready: 1,
                available: 1,
            },
            etl: up(0),
            probes: 0,
            stream: Ok(figures(0)),
        });
        let s = decide(&region(), &o, at(0));
        let ready = find(&s.conditions, &Type::Ready).unwrap();
        assert_eq!(
            (ready.status, &ready.reason),
            (Status::False, &Reason::NotAvailable)
        );
        assert_eq!(
            ready.message,
            "1 of 2 ingest pods ready; ETL has 0 replicas"
        );
        let etl = find(&s.conditions, &Type::EtlAvailable).unwrap();
        assert_eq!(etl.reason, Reason::ScaledToZero);
    }

    #[test]
    fn dead_letters_and_an_unreadable_stream_degrade_the_region() {
        let s = decide(&region(), &running(Ok(figures(4))), at(0));
        let degraded = find(&s.conditions, &Type::Degraded).unwrap();
        assert_eq!(
            (degraded.status, &degraded.reason),
            (Status::True, &Reason::DeadLetters)
        );
        assert!(
            degraded.message.starts_with("4 entries in fiber:dlq:ghana"),
            "{}",
            degraded.message
        );

        let down = "cannot read the stream's figures from the database: refused".to_owned();
        let s = decide(&region(), &running(Err(down)), at(0));
        let degraded = find(&s.conditions, &Type::Degraded).unwrap();
        assert_eq!(
            (degraded.status, &degraded.reason),
            (Status::Unknown, &Reason::DatabaseUnavailable)
        );
        assert_eq!((s.backlog, s.dead_letters), (None, None));
    }

    #[test]
    fn missing_or_stale_figures_are_said_not_taken_for_a_healthy_stream() {
        let s = decide(&region(), &running(Ok(None)), at(0));
        let degraded = find(&s.conditions, &Type::Degraded).unwrap();
        assert_eq!(
            (degraded.status, &degraded.reason),
            (Status::Unknown, &Reason::NoStreamFigures)
        );
        assert_eq!(s.backlog, None);

        // Recorded at -5 s: fresh at 50 s, stale after 65 s.
        let s = decide(&region(), &running(Ok(figures(3))), at(50));
        let degraded = find(&s.conditions, &Type::Degraded).unwrap();
        assert_eq!(degraded.reason, Reason::DeadLetters);
        let s = decide(&region(), &running(Ok(figures(3))), at(66));
        let degraded = find(&s.conditions, &Type::Degraded).unwrap();
        assert_eq!(
            (degraded.status, &degraded.reason),
            (Status::True, &Reason::StreamFiguresStale)
        );
        let recorded = rfc3339(at(-5));
        assert!(
            degraded
                .message
                .contains(&format!("figures at {recorded}, over 60 s ago")),
            "{}",
            degraded.message
        );
        assert_eq!(
            s.backlog,
            Some(12),
            "the last known figures are still shown"
        );
    }

    #[test]
    fn an_invalid_spec_says_so_in_ready_and_keeps_the_other_conditions() {
        let before = decide(&region().generation(1), &running(Ok(figures(0))), at(0));
        let r = region().generation(2).with_status(before.clone());
        let s = decide(
            &r,
            &Observations::Invalid("spec.country: \"gh\"".into()),
            at(30),
        );
        let ready = find(&s.conditions, &Type::Ready).unwrap();
        assert_eq!(
            (ready.status, &ready.reason),
            (Status::False, &Reason::InvalidSpec)
        );
        assert_eq!(ready.last_transition_time, rfc3339(at(30)));
        assert_eq!(ready.observed_generation, Some(2));
        let ingest = find(&s.conditions, &Type::IngestAvailable).unwrap();
        assert_eq!(
            ingest.observed_generation,
            Some(1),
            "kept, and says how old it is"
        );
        assert_eq!(s.conditions.len(), 4);
        assert_eq!(s.backlog, None);
    }

    #[test]
    fn transition_times_move_only_with_the_status() {
        let first = decide(&region(), &running(Ok(figures(0))), at(0));
        let r = region().with_status(first);
        let second = decide(&r, &running(Ok(figures(2))), at(30));
        let ready = find(&second.conditions, &Type::Ready).unwrap();
        assert_eq!(ready.last_transition_time, rfc3339(at(0)));
        let degraded = find(&second.conditions, &Type::Degraded).unwrap();
        assert_eq!(degraded.last_transition_time, rfc3339(at(30)));
    }
}
