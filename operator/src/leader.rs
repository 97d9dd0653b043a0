//! Leader election on a `coordination.k8s.io/v1` Lease: one replica writes, the others wait.
//!
//! Acquisition and renewal are compare-and-swap writes on the Lease's resourceVersion. A leader
//! that cannot renew before its lease would expire steps down, and the process exits so that
//! nothing it started keeps writing (controller-runtime does the same).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// Lease timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// This replica's identity (pod name, or host and pid).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and candidates retry.
    pub retry: Duration,
}

/// Why leadership could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica took the lease.
    #[error("lease {0} was taken by {1}")]
    Lost(String, String),
    /// Renewal kept failing until the lease expired.
    #[error("could not renew lease {0} before it expired")]
    Expired(String, #[source] kube::Error),
}

/// Outcome of one attempt to take or renew the lease.
enum Attempt {
    Held,
    HeldByOther(String),
}

/// A candidate for leadership.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    /// A candidate using `client`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_hold().await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "acquired leadership");
                    return;
                }
                Ok(Attempt::HeldByOther(holder)) if !logged => {
                    tracing::info!(lease = %self.config.name, %holder, "another replica leads; standing by");
                    logged = true;
                }
                Ok(Attempt::HeldByOther(_)) => {}
                Err(err) => tracing::debug!(error = %err, "lease attempt failed; retrying"),
            }
            tokio::time::sleep(self.config.retry).await;
        }
    }

    /// Renews the lease until it is lost; returns why.
    pub async fn hold(&self) -> LeaseError {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry).await;
            match self.try_hold().await {
                Ok(Attempt::Held) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::HeldByOther(holder)) => {
                    return LeaseError::Lost(self.config.name.clone(), holder);
                }
                Err(err) if last_renewal.elapsed() >= self.config.duration => {
                    return LeaseError::Expired(self.config.name.clone(), err);
                }
                Err(err) => tracing::warn!(error = %err, "renewing the lease failed; retrying"),
            }
        }
    }

    async fn try_hold(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let params = PostParams {
            field_manager: Some(crate::context::FIELD_MANAGER.into()),
            ..Default::default()
        };
        let duration_secs = i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&params, &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::HeldByOther(String::new()))
                }
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let valid_for = spec.lease_duration_seconds.unwrap_or(duration_secs);
        let expired = renewed.as_second() + i64::from(valid_for) < now.as_second();
        if !mine && !expired && !holder.is_empty() {
            return Ok(Attempt::HeldByOther(holder));
        }
        if !mine {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration_secs);
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(&self.config.name, &params, &lease).await {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldByOther(holder)),
            Err(err) => Err(err),
        }
    }
}
