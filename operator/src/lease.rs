//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas one
//! reconciles and the others stand by. kube-runtime has none; this is the client-go scheme:
//! take the lease when it is free or expired, renew it while leading, clear the holder on
//! a clean exit so a standby takes over at once instead of waiting for expiry.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// How [`lead`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for (before or after the lease was won).
    Shutdown,
    /// Another replica took the lease: this one must exit and come back as a standby.
    LostLease,
}

/// Runs `work` while this replica leads: waits for the lease (without one — no leader
/// election — at once), starts `work` with a receiver that fires when it must stop, and stops
/// it on `shutdown` or when the lease is lost; then releases the lease so a standby takes
/// over at once.
pub async fn lead<W, Fut>(
    lease: Option<&LeaderLease>,
    shutdown: impl std::future::Future<Output = ()>,
    work: W,
) -> Ended
where
    W: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    if let Some(lease) = lease {
        tokio::select! {
            _ = lease.acquire() => {}
            _ = &mut shutdown => return Ended::Shutdown,
        }
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(work(stopped));
    let lost = async {
        match lease {
            Some(lease) => lease.hold().await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        _ = &mut shutdown => Ended::Shutdown,
        _ = lost => Ended::LostLease,
    };
    let _ = stop.send(());
    let _ = running.await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    ended
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity, usually its pod name.
    pub identity: String,
    /// A holder that has not renewed for this long has lost the lease.
    pub duration: Duration,
    /// How often the holder renews, and a standby retries.
    pub renew_every: Duration,
}

pub struct LeaderLease {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderLease {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Returns once this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_take().await {
                Ok(true) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "leader lease acquired");
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "leader lease: cannot read or take it")
                }
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Renews the lease; returns when it is lost (another holder, or no successful renewal
    /// within the lease duration).
    pub async fn hold(&self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            match self.try_take().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.config.name, "leader lease taken by another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "leader lease renewal failed");
                    if last_renewed.elapsed() >= self.config.duration {
                        tracing::error!(lease = %self.config.name, "leader lease expired");
                        return;
                    }
                }
            }
        }
    }

    /// Clears the holder if it is us, so a standby takes over without waiting.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.config.name, "leader lease released"),
            Err(e) => {
                tracing::warn!(lease = %self.config.name, error = %e, "could not release the leader lease")
            }
        }
    }

    /// Takes or renews the lease if it is ours, free or expired; false if someone else holds
    /// it (or won a race for it).
    async fn try_take(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = self.config.identity.as_str();
        let seconds = self.config.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(d)) => {
                *renewed + SignedDuration::from_secs(i64::from(d)) < now
            }
            _ => true,
        };
        let ours = holder.as_deref() == Some(me);
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me.to_owned());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // The resourceVersion from the read makes this a compare-and-swap: of two replicas
        // taking a free lease at once, one gets 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
