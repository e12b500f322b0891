//! `fiber-probe --config`: the configuration watcher, the schedule, the buffer, the delivery
//! and the metrics endpoint wired together, and the orderly stop on SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fiberstack_model::{Check, Sample};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::buffer::Buffer;
use crate::checks::{self, CheckContext};
use crate::config::{Overrides, Settings};
use crate::deliver::Deliverer;
use crate::metrics::Stats;
use crate::schedule::{self, Sink};

/// How an agent runs; the defaults are the production values.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config_path: PathBuf,
    pub overrides: Overrides,
    /// How often the configuration file is re-read.
    pub reload_every: Duration,
    /// How long SIGTERM may spend delivering what is buffered.
    pub flush_for: Duration,
}

impl AgentOptions {
    pub fn new(config_path: PathBuf, overrides: Overrides) -> Self {
        Self {
            config_path,
            overrides,
            reload_every: Duration::from_secs(5),
            flush_for: Duration::from_secs(5),
        }
    }
}

/// Writes each sample to the buffer and wakes the delivery.
struct BufferSink {
    buffer: Arc<Mutex<Buffer>>,
    /// `ingest.batchMaxSamples` of the running configuration.
    batch_max: Arc<AtomicUsize>,
    appended: Arc<Notify>,
    stats: Arc<Stats>,
}

impl Sink for BufferSink {
    fn record(&self, sample: Sample) {
        self.stats.check_done(sample.kind, sample.up);
        let pending = {
            let mut buffer = self.buffer.lock().expect("buffer lock");
            if let Err(e) = buffer.append(&sample) {
                // Counted as dropped: nothing else can be done with it.
                self.stats.dropped(crate::metrics::DropReason::Corrupt, 1);
                tracing::error!(error = %e, kind = e.kind(), target = %sample.target, "cannot write a sample to the buffer; it is lost");
            }
            buffer.pending()
        };
        // The delivery only needs waking for the first sample of a batch (to start its
        // batchMaxDelay clock) and for a full batch; not for every sample in between.
        if pending == 1 || pending >= self.batch_max.load(Ordering::Relaxed) as u64 {
            self.appended.notify_one();
        }
    }
}

/// Logs, with the remedy, when the configuration has ICMP targets this process may not probe.
pub fn warn_if_icmp_not_permitted(settings: &Settings) {
    let has_icmp = settings.config.targets.iter().any(|t| match t.check() {
        Ok(Check::Icmp(_)) => true,
        // A traceroute's ICMP mode sends echoes on a ping socket too.
        Ok(Check::Traceroute(c)) => c.protocol == fiberstack_model::TracerouteProtocol::Icmp,
        _ => false,
    });
    if has_icmp && let Err(e) = checks::icmp::check_permitted() {
        tracing::error!("{e}");
    }
}

/// Runs until `stop` resolves; returns once the flush is done.
pub async fn run(
    options: AgentOptions,
    stats: Arc<Stats>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let settings = Settings::load(&options.config_path, &options.overrides)?;
    let config = &settings.config;
    tracing::info!(
        node = %config.node, probe = %config.probe, targets = config.targets.len(),
        interval = %config.interval, urls = ?config.ingest.urls, buffer = %config.buffer.dir.display(),
        version = crate::AGENT_VERSION, "fiber-probe starting"
    );
    warn_if_icmp_not_permitted(&settings);
    let buffer = Buffer::open(&config.buffer.dir, config.buffer.max_bytes.0, stats.clone())?;
    if buffer.pending() > 0 {
        tracing::info!(
            samples = buffer.pending(),
            "buffer holds samples from before; delivering them"
        );
    }
    let buffer = Arc::new(Mutex::new(buffer));
    let appended = Arc::new(Notify::new());
    let (settings_tx, mut settings_rx) = watch::channel(Arc::new(settings));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut background = JoinSet::new();
    if let Some(addr) = settings_rx.borrow().config.metrics_listen {
        let stats = stats.clone();
        background.spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, stats).await {
                tracing::error!(%addr, error = %e, "cannot serve /metrics");
            }
        });
    }
    background.spawn(crate::config::watch_file(
        options.config_path.clone(),
        options.overrides.clone(),
        options.reload_every,
        settings_tx,
    ));
    {
        let buffer = buffer.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let file = buffer.lock().expect("buffer lock").take_unsynced();
                let synced = match file {
                    Ok(Some(f)) => tokio::task::spawn_blocking(move || f.sync_data())
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                    Ok(None) => Ok(()),
                    Err(e) => Err(std::io::Error::other(e)),
                };
                if let Err(e) = synced {
                    tracing::error!(error = %e, "cannot sync the buffer to disk");
                }
            }
        });
    }
    let deliverer = Deliverer::new(
        buffer.clone(),
        settings_rx.clone(),
        stats.clone(),
        appended.clone(),
    );
    let delivery = tokio::spawn(deliverer.run(stop_rx, options.flush_for));

    let batch_max = Arc::new(AtomicUsize::new(
        settings_rx.borrow().config.ingest.batch_max_samples,
    ));
    let sink: Arc<dyn Sink> = Arc::new(BufferSink {
        buffer: buffer.clone(),
        batch_max: batch_max.clone(),
        appended,
        stats: stats.clone(),
    });
    let mut rounds = JoinSet::new();
    let start_rounds = |rounds: &mut JoinSet<()>, s: &Settings| {
        schedule::start(
            rounds,
            &s.config.targets,
            s.config.interval.as_std(),
            CheckContext::new(s.config.timeout.as_std()),
            sink.clone(),
        );
    };
    let mut current = settings_rx.borrow_and_update().clone();
    // The buffer is opened once; a changed buffer section waits for the next start.
    let running_buffer = current.config.buffer.clone();
    start_rounds(&mut rounds, &current);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = settings_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let new = settings_rx.borrow_and_update().clone();
                if new.config.buffer != running_buffer {
                    tracing::warn!("buffer settings changed; they take effect at the next restart");
                }
                batch_max.store(new.config.ingest.batch_max_samples, Ordering::Relaxed);
                let schedule_changed = new.config.targets != current.config.targets
                    || new.config.interval != current.config.interval
                    || new.config.timeout != current.config.timeout;
                if schedule_changed {
                    warn_if_icmp_not_permitted(&new);
                    // Rounds in flight are abandoned: their target may be gone or changed.
                    rounds.abort_all();
                    start_rounds(&mut rounds, &new);
                }
                // Ingest settings and the envelope (node, region, …) are read by the delivery
                // at each batch: nothing to restart for them.
                current = new;
            }
        }
    }
    tracing::info!("stopping: no new rounds; delivering what is buffered");
    rounds.abort_all();
    let _ = stop_tx.send(true);
    if let Err(e) = delivery.await {
        // A panic's message is already on stderr; this says what it cost.
        tracing::error!(error = %e, "the delivery failed; what it had not sent stays in the buffer for the next start");
    }
    if let Err(e) = buffer.lock().expect("buffer lock").sync() {
        tracing::error!(error = %e, "cannot sync the buffer to disk");
    }
    background.abort_all();
    tracing::info!("fiber-probe stopped");
    Ok(())
}

/// `fiber-probe once`: every target once, at the same time; the samples in target order.
pub async fn once(settings: &Settings) -> Vec<Sample> {
    warn_if_icmp_not_permitted(settings);
    let ctx = CheckContext::new(settings.config.timeout.as_std());
    let mut set = JoinSet::new();
    for (i, target) in settings.config.targets.iter().enumerate() {
        let target = target.clone();
        let ctx = ctx.clone();
        set.spawn(async move { (i, checks::run(&target, &ctx).await) });
    }
    let mut samples: Vec<(usize, Sample)> = set.join_all().await;
    samples.sort_by_key(|(i, _)| *i);
    samples.into_iter().map(|(_, s)| s).collect()
}
