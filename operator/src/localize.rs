//! Where is the fault, pure: a target measured from several vantage points (the nodes that
//! run the probe, in their regions) is judged from each of them. Breaching from every
//! vantage point with data is the target itself ("Everywhere"); from only some of them it is
//! their path ("Partial", naming them); with a single vantage point it cannot be told
//! ("Single"). A node that should measure the target and sent nothing recent is *silent*:
//! the probe or its link, never counted as the target being down.

use chrono::{DateTime, Utc};

use crate::crd::{Scope, Summary, Thresholds};
use crate::health;

/// One vantage point's figures of one target over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Vantage {
    pub node: String,
    pub region: String,
    pub summary: Summary,
    /// Its newest sample of the target.
    pub newest: DateTime<Utc>,
}

impl Vantage {
    /// `region/node`, as status and notifications name a vantage point.
    pub fn label(&self) -> String {
        format!("{}/{}", self.region, self.node)
    }
}

/// What the vantage points say about one target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Localization {
    /// Set when at least one vantage point with data sees a breach.
    pub scope: Option<Scope>,
    /// The vantage points that see the breach (`region/node`), sorted.
    pub breaching: Vec<String>,
    /// Their regions, sorted and distinct.
    pub breaching_regions: Vec<String>,
    /// Every check failed from each of them (down, not only degraded).
    pub down: bool,
    /// Vantage points with recent data, of those that should measure.
    pub reporting: usize,
    /// Nodes that run the probe but sent nothing about this target within `recent`, sorted.
    pub silent: Vec<String>,
}

/// Whether a newest sample at `newest` is recent at `now`: at most `recent` old (a sample
/// exactly `recent` old still counts). The one rule, against the operator's clock, for a
/// target's silent nodes and for the nodes the Reporting condition counts.
pub fn recent(newest: DateTime<Utc>, now: DateTime<Utc>, recent: std::time::Duration) -> bool {
    let recent = chrono::Duration::from_std(recent).unwrap_or(chrono::Duration::MAX);
    now - newest <= recent
}

/// Judges `target` from each vantage point. `expected`: the nodes that run the probe's pods;
/// `recent`: how old a vantage point's newest sample may be to count.
pub fn localize(
    vantages: &[Vantage],
    expected: &[String],
    thresholds: &Thresholds,
    now: DateTime<Utc>,
    recent: std::time::Duration,
) -> Localization {
    let fresh: Vec<&Vantage> = vantages
        .iter()
        .filter(|v| self::recent(v.newest, now, recent))
        .collect();
    let mut silent: Vec<String> = expected
        .iter()
        .filter(|node| !fresh.iter().any(|v| &v.node == *node))
        .cloned()
        .collect();
    silent.sort();
    let breaching: Vec<&&Vantage> = fresh
        .iter()
        .filter(|v| health::breach(&v.summary, None, thresholds, now).is_some())
        .collect();
    let mut labels: Vec<String> = breaching.iter().map(|v| v.label()).collect();
    labels.sort();
    let mut regions: Vec<String> = breaching.iter().map(|v| v.region.clone()).collect();
    regions.sort();
    regions.dedup();
    let scope = match (breaching.len(), fresh.len()) {
        (0, _) => None,
        (_, 1) => Some(Scope::Single),
        (b, n) if b == n => Some(Scope::Everywhere),
        _ => Some(Scope::Partial),
    };
    Localization {
        scope,
        down: !breaching.is_empty() && breaching.iter().all(|v| v.summary.uptime_pct == Some(0.0)),
        breaching: labels,
        breaching_regions: regions,
        reporting: fresh.len(),
        silent,
    }
}

/// The words status and notifications use: "down everywhere", "degraded from
/// ghana/gh-accra-1 only", …
pub fn describe(l: &Localization) -> Option<String> {
    let how = if l.down { "down" } else { "degraded" };
    Some(match l.scope? {
        Scope::Everywhere => format!("{how} everywhere ({} vantage points)", l.reporting),
        Scope::Partial => format!(
            "{how} from {} only ({} of {} vantage points)",
            l.breaching.join(", "),
            l.breaching.len(),
            l.reporting
        ),
        _ => format!(
            "{how} from its only vantage point {}",
            l.breaching.join(", ")
        ),
    })
}

/// Whether enough vantage points agree to notify: at least `nodes` of them, in at least
/// `regions` regions. A breach seen without per-vantage figures (a certificate) counts as
/// agreed.
pub fn quorum_met(l: &Localization, nodes: u32, regions: u32) -> bool {
    if l.scope.is_none() {
        return true;
    }
    l.breaching.len() >= nodes as usize && l.breaching_regions.len() >= regions as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 1, 15, 12, 0, 0).unwrap()
    }

    fn v(region: &str, node: &str, p95: f64, uptime: f64, age_s: i64) -> Vantage {
        Vantage {
            node: node.into(),
            region: region.into(),
            summary: Summary {
                samples: 30,
                latency_p50_ms: Some(p95 / 2.0),
                latency_p95_ms: Some(p95),
                packet_loss_pct: Some(0.0),
                uptime_pct: Some(uptime),
                late_samples: None,
            },
            newest: now() - chrono::Duration::seconds(age_s),
        }
    }

    const RECENT: std::time::Duration = std::time::Duration::from_secs(30);

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn one_bad_path_is_partial_and_names_it() {
        let l = localize(
            &[
                v("ghana", "gh-accra-1", 400.0, 100.0, 5),
                v("nigeria", "ng-lagos-1", 20.0, 100.0, 5),
                v("kenya", "ke-nairobi-1", 25.0, 100.0, 5),
            ],
            &nodes(&["gh-accra-1", "ng-lagos-1", "ke-nairobi-1"]),
            &Thresholds::default(),
            now(),
            RECENT,
        );
        assert_eq!(l.scope, Some(Scope::Partial));
        assert_eq!(l.breaching, ["ghana/gh-accra-1"]);
        assert_eq!(l.breaching_regions, ["ghana"]);
        assert!(!l.down);
        assert!(l.silent.is_empty());
        assert_eq!(
            describe(&l).unwrap(),
            "degraded from ghana/gh-accra-1 only (1 of 3 vantage points)"
        );
    }

    #[test]
    fn down_from_every_vantage_point_is_everywhere() {
        let l = localize(
            &[
                v("ghana", "gh-accra-1", 0.0, 0.0, 5),
                v("nigeria", "ng-lagos-1", 0.0, 0.0, 5),
            ],
            &nodes(&["gh-accra-1", "ng-lagos-1"]),
            &Thresholds::default(),
            now(),
            RECENT,
        );
        assert_eq!(l.scope, Some(Scope::Everywhere));
        assert!(l.down);
        assert_eq!(describe(&l).unwrap(), "down everywhere (2 vantage points)");
    }

    #[test]
    fn a_silent_node_is_named_and_not_counted_as_down() {
        let l = localize(
            &[
                v("ghana", "gh-accra-1", 20.0, 100.0, 5),
                // Its last sample is older than `recent`: the probe or its link is silent.
                v("nigeria", "ng-lagos-1", 0.0, 0.0, 120),
            ],
            &nodes(&["gh-accra-1", "ng-lagos-1", "ke-nairobi-1"]),
            &Thresholds::default(),
            now(),
            RECENT,
        );
        assert_eq!(l.scope, None, "the fresh vantage point sees it healthy");
        assert_eq!(l.silent, ["ke-nairobi-1", "ng-lagos-1"]);
        assert_eq!(l.reporting, 1);
    }

    #[test]
    fn a_single_vantage_point_cannot_tell_and_says_so() {
        let l = localize(
            &[v("ghana", "gh-accra-1", 400.0, 100.0, 5)],
            &nodes(&["gh-accra-1"]),
            &Thresholds::default(),
            now(),
            RECENT,
        );
        assert_eq!(l.scope, Some(Scope::Single));
        assert_eq!(
            describe(&l).unwrap(),
            "degraded from its only vantage point ghana/gh-accra-1"
        );
    }

    #[test]
    fn the_quorum_counts_vantage_points_and_regions() {
        let l = localize(
            &[
                v("ghana", "gh-accra-1", 400.0, 100.0, 5),
                v("ghana", "gh-accra-2", 400.0, 100.0, 5),
                v("nigeria", "ng-lagos-1", 20.0, 100.0, 5),
            ],
            &nodes(&["gh-accra-1", "gh-accra-2", "ng-lagos-1"]),
            &Thresholds::default(),
            now(),
            RECENT,
        );
        assert!(quorum_met(&l, 1, 1));
        assert!(quorum_met(&l, 2, 1));
        assert!(!quorum_met(&l, 3, 1), "two nodes agree, not three");
        assert!(!quorum_met(&l, 1, 2), "one region agrees, not two");
        assert!(quorum_met(&Localization::default(), 5, 5));
    }
}
