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
use crate::slo::{self, SloCounts, SloQuery};
use crate::status::{self, Figures, ProbeQuery};

/// What a probe's status reads from the database: its figures, and its SLO counts when it
/// has spec.slo (or why they could not be read: the figures still count).
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub figures: Figures,
    pub slo: Option<Result<SloCounts, String>>,
}

/// What was asked of the database for a probe.
#[derive(Debug, Clone, PartialEq)]
struct Asked {
    figures: ProbeQuery,
    slo: Option<SloQuery>,
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
        paths: crate::paths::queries(probe),
    }
}

/// How long a probe's SLO window counts are reused: over a window of days, minutes do not
/// move the SLI or the budget visibly, and reading days of rollups is the dearest query.
const WINDOW_EVERY: Duration = Duration::from_secs(300);

/// The SLO window counts read, per probe: what was asked, the counts and nodes, and when.
type Windows = std::sync::Mutex<HashMap<String, (SloQuery, slo::Counts, i64, Instant)>>;

/// The figures and SLO counts of `asked`: one query of each kind for them all; the SLO's
/// window counts only for the probes whose last are older than [`WINDOW_EVERY`].
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
    let stale: Vec<SloQuery> = {
        let windows = windows.lock().expect("poisoned");
        slos.iter()
            .filter(|q| {
                windows
                    .get(&q.probe)
                    .is_none_or(|(was, .., at)| was != *q || at.elapsed() >= WINDOW_EVERY)
            })
            .cloned()
            .collect()
    };
    let mut counts: Result<HashMap<String, SloCounts>, String> = async {
        if slos.is_empty() {
            return Ok(HashMap::new());
        }
        let mut counts = slo::burn_counts_many(pool, &slos).await?;
        let fresh = if stale.is_empty() {
            HashMap::new()
        } else {
            slo::window_counts_many(pool, &stale).await?
        };
        let mut windows = windows.lock().expect("poisoned");
        for q in &stale {
            let (c, nodes) = fresh.get(&q.probe).copied().unwrap_or_default();
            windows.insert(q.probe.clone(), (q.clone(), c, nodes, Instant::now()));
        }
        for (probe, c) in counts.iter_mut() {
            if let Some((_, window, nodes, _)) = windows.get(probe) {
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
            let slo = a.slo.as_ref().map(|_| match &mut counts {
                Ok(counts) => Ok(counts.remove(&key).unwrap_or_default()),
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
