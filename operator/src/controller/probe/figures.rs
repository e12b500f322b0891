//! The database's figures for a probe's status, read for the whole region at once: the first
//! reconcile of a region's probes in a status period runs one batch of queries for every
//! probe of that region ([`status::probe_figures_many`]) and the others take their share from
//! it. Reconciles of the same region wait for that batch instead of each querying; a probe
//! the batch does not cover as it is now (created, or its targets changed, since) is queried
//! alone and added, so creating many probes does not re-run the region's batch per probe.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::controller::Context;
use crate::crd::FiberProbe;
use crate::render::probe as render;
use crate::slo::{self, ProbeSloCounts, SloCounts, SloKey, SloQuery, TargetSloQuery};
use crate::status::{self, Figures, ProbeQuery};

/// What a probe's status reads from the database: its figures, and its SLO counts when it
/// or one of its targets has an slo (or why they could not be read: the figures still
/// count).
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub figures: Figures,
    pub slo: Option<Result<ProbeSloCounts, String>>,
}

/// What was asked of the database for a probe.
#[derive(Debug, Clone, PartialEq)]
struct Asked {
    figures: ProbeQuery,
    slo: Option<SloQuery>,
    /// The targets' own objectives.
    target_slos: Vec<TargetSloQuery>,
    /// The traceroute targets' rounds ([`crate::paths`]).
    paths: Vec<crate::paths::PathQuery>,
}

/// One region's latest batch.
struct Batch {
    at: Instant,
    /// Per probe key: what was asked, and what the database said.
    figures: HashMap<String, (Asked, Read)>,
}

/// The batches, one per region (`namespace/name`).
#[derive(Default)]
pub struct RegionFigures {
    regions: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<Batch>>>>>,
    windows: Windows,
}

fn asked(probe: &FiberProbe) -> Asked {
    Asked {
        figures: ProbeQuery {
            probe: render::probe_key(probe),
            targets: probe.spec.targets.iter().map(|t| t.name.clone()).collect(),
            interval: probe.spec.interval.as_std(),
        },
        slo: probe.spec.slo.as_ref().map(|s| SloQuery {
            probe: render::probe_key(probe),
            window_days: s.window_days,
            threshold_ms: s.latency.as_ref().map(|l| l.threshold_ms),
        }),
        target_slos: probe
            .spec
            .targets
            .iter()
            .filter_map(|t| {
                let s = t.slo.as_ref()?;
                Some(TargetSloQuery {
                    probe: render::probe_key(probe),
                    target: t.name.clone(),
                    window_days: s.window_days,
                    threshold_ms: s.latency.as_ref().map(|l| l.threshold_ms),
                })
            })
            .collect(),
        paths: crate::paths::queries(probe),
    }
}

/// How long a probe's SLO window counts are reused: over a window of days, minutes do not
/// move the SLI or the budget visibly, and reading days of rollups is the dearest query.
const WINDOW_EVERY: Duration = Duration::from_secs(300);

/// The SLO window counts read, per objective: what was asked (window days, latency
/// threshold), the counts and nodes, and when.
type Windows = std::sync::Mutex<HashMap<SloKey, (Objective, slo::Counts, i64, Instant)>>;

/// What a window's counts depend on: its days and latency threshold.
type Objective = (u32, Option<f64>);

/// The figures and SLO counts of `asked`: one query of each kind for them all, the probes'
/// objectives and their targets' own together; the window counts only for the objectives
/// whose last are older than [`WINDOW_EVERY`].
async fn read(
    pool: &PgPool,
    asked: &[Asked],
    windows: &Windows,
) -> Result<HashMap<String, Read>, sqlx::Error> {
    let queries: Vec<ProbeQuery> = asked.iter().map(|a| a.figures.clone()).collect();
    let mut figures = status::probe_figures_many(pool, &queries).await?;
    let paths: Vec<crate::paths::PathQuery> =
        asked.iter().flat_map(|a| a.paths.iter().cloned()).collect();
    if !paths.is_empty() {
        // The paths are read apart: their failure leaves them as status has them and must
        // not make the rest of the figures unavailable.
        match crate::paths::rounds_many(pool, &paths).await {
            Ok(mut rounds) => {
                for a in asked.iter().filter(|a| !a.paths.is_empty()) {
                    if let Some(f) = figures.get_mut(&a.figures.probe) {
                        f.paths = Some(rounds.remove(&a.figures.probe).unwrap_or_default());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the traceroute targets' paths"),
        }
    }
    let slos: Vec<SloQuery> = asked.iter().filter_map(|a| a.slo.clone()).collect();
    let target_slos: Vec<TargetSloQuery> = asked
        .iter()
        .flat_map(|a| a.target_slos.iter().cloned())
        .collect();
    let (stale, stale_targets): (Vec<SloQuery>, Vec<TargetSloQuery>) = {
        let windows = windows.lock().expect("poisoned");
        let stale = |key: SloKey, asked: Objective| {
            windows
                .get(&key)
                .is_none_or(|(was, .., at)| *was != asked || at.elapsed() >= WINDOW_EVERY)
        };
        (
            slos.iter()
                .filter(|q| stale(SloKey::probe(&q.probe), (q.window_days, q.threshold_ms)))
                .cloned()
                .collect(),
            target_slos
                .iter()
                .filter(|q| {
                    stale(
                        SloKey::target(&q.probe, &q.target),
                        (q.window_days, q.threshold_ms),
                    )
                })
                .cloned()
                .collect(),
        )
    };
    let mut counts: Result<HashMap<SloKey, SloCounts>, String> = async {
        if slos.is_empty() && target_slos.is_empty() {
            return Ok(HashMap::new());
        }
        let mut counts = slo::burn_counts_all(pool, &slos, &target_slos).await?;
        let fresh = if stale.is_empty() && stale_targets.is_empty() {
            HashMap::new()
        } else {
            slo::window_counts_all(pool, &stale, &stale_targets).await?
        };
        let mut windows = windows.lock().expect("poisoned");
        let now = Instant::now();
        let asked = stale
            .iter()
            .map(|q| (SloKey::probe(&q.probe), (q.window_days, q.threshold_ms)))
            .chain(stale_targets.iter().map(|q| {
                (
                    SloKey::target(&q.probe, &q.target),
                    (q.window_days, q.threshold_ms),
                )
            }));
        for (key, objective) in asked {
            let (c, nodes) = fresh.get(&key).copied().unwrap_or_default();
            windows.insert(key, (objective, c, nodes, now));
        }
        // Every objective still asked for is read again each WINDOW_EVERY: one not read for
        // three is a deleted probe's, or a target's slo removed, and is forgotten.
        windows.retain(|_, (.., at)| now.duration_since(*at) < WINDOW_EVERY * 3);
        for (key, c) in counts.iter_mut() {
            if let Some((_, window, nodes, _)) = windows.get(key) {
                c.window = *window;
                c.nodes = *nodes;
            }
        }
        Ok(counts)
    }
    .await
    .map_err(|e: sqlx::Error| format!("cannot read the SLO's counts from the database: {e}"));
    Ok(asked
        .iter()
        .map(|a| {
            let key = a.figures.probe.clone();
            let wanted = a.slo.is_some() || !a.target_slos.is_empty();
            let slo = wanted.then(|| match &mut counts {
                Ok(counts) => {
                    let mut take = |k: SloKey| counts.remove(&k).unwrap_or_default();
                    Ok(ProbeSloCounts {
                        probe: a.slo.as_ref().map(|_| take(SloKey::probe(&key))),
                        targets: a
                            .target_slos
                            .iter()
                            .map(|t| (t.target.clone(), take(SloKey::target(&key, &t.target))))
                            .collect(),
                    })
                }
                Err(e) => Err(e.clone()),
            });
            let figures = figures.remove(&key).unwrap_or_default();
            (key, Read { figures, slo })
        })
        .collect())
}

impl RegionFigures {
    /// `probe`'s figures from `pool` (its region's database): from the region's batch when it
    /// is younger than `period` and asked the same of this probe; otherwise a new batch for
    /// the region's probes (the batch is old) or a query of this probe alone (it is new).
    pub async fn figures(
        &self,
        ctx: &Context,
        pool: &PgPool,
        probe: &FiberProbe,
        period: Duration,
    ) -> Result<Read, sqlx::Error> {
        let ns = probe.namespace().unwrap_or_default();
        let region = format!("{ns}/{}", probe.spec.region);
        let slot = self
            .regions
            .lock()
            .expect("poisoned")
            .entry(region)
            .or_default()
            .clone();
        let mut batch = slot.lock().await;
        let mine = asked(probe);
        let key = mine.figures.probe.clone();
        let fresh = batch.as_ref().filter(|b| b.at.elapsed() < period);
        if let Some(b) = fresh {
            if let Some((was, read)) = b.figures.get(&key)
                && *was == mine
            {
                return Ok(read.clone());
            }
            // New since the batch (or changed): this probe alone, added to the batch.
            let read = read(pool, std::slice::from_ref(&mine), &self.windows)
                .await?
                .remove(&key)
                .unwrap_or_default();
            if let Some(b) = batch.as_mut() {
                b.figures.insert(key, (mine, read.clone()));
            }
            return Ok(read);
        }
        // A new period: every probe of the region, this one as it is now.
        let mut all: Vec<Asked> = ctx
            .caches
            .probes
            .state()
            .iter()
            .filter_map(|p| p.0.as_ref().ok())
            .filter(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && p.spec.region == probe.spec.region
                    && p.name_any() != probe.name_any()
                    && !p.spec.paused
            })
            .map(asked)
            .collect();
        all.push(mine);
        let started = Instant::now();
        let mut reads = read(pool, &all, &self.windows).await?;
        tracing::debug!(region = %probe.spec.region, namespace = %ns, probes = all.len(), took_ms = started.elapsed().as_millis() as u64, "region's status figures read");
        let figures: HashMap<String, (Asked, Read)> = all
            .into_iter()
            .map(|a| {
                let read = reads.remove(&a.figures.probe).unwrap_or_default();
                (a.figures.probe.clone(), (a, read))
            })
            .collect();
        let result = figures
            .get(&key)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        *batch = Some(Batch {
            at: Instant::now(),
            figures,
        });
        Ok(result)
    }
}
