//! Leader election with a `coordination.k8s.io` Lease, as client-go does it:
//! the holder renews the lease every `renew_every`; another candidate takes it
//! over once it has seen the same lease record, unrenewed, for
//! `lease_duration` by its own clock. Every write is a replace conditional on
//! the `resourceVersion` read, so two candidates can never both believe they
//! won the same term.
//!
//! Only the leader runs the reconcilers, and it must stop before anyone else
//! can start: [`Elector::keep`] gives up `margin` (one renewal period) before
//! `lease_duration` has passed since the *start* of its last successful
//! renewal, measured on the local monotonic clock, and every renewal is cut
//! off at that point, so an API server that stops answering cannot hold the
//! leader in a pending request past its lease. Wall clocks are never
//! compared: a candidate counts the lease's age from when it saw the record.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (the pod's name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// How long after the start of its last successful renewal a leader
    /// stops: the lease duration less one renewal period, the margin that
    /// covers stopping itself and clocks that run at slightly different rates.
    pub fn hold_for(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_every)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "lost the leadership: Lease {namespace}/{name} not renewed for {since:?} (the last error: {last})"
    )]
    Lost {
        namespace: String,
        name: String,
        since: Duration,
        last: String,
    },
}

/// The outcome of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Leading,
    /// Someone else holds an unexpired lease.
    Following { holder: String },
}

/// Another holder's lease record as this candidate saw it: the record (its
/// resourceVersion) and when it was first seen, on the local monotonic clock.
#[derive(Debug, Default)]
struct Observed {
    record: Option<(String, Instant)>,
}

impl Observed {
    /// Whether the record has stayed the same for `duration` since this
    /// candidate first saw it. A new record starts the count again.
    fn expired(&mut self, record: &str, duration: Duration, now: Instant) -> bool {
        match &self.record {
            Some((seen, since)) if seen == record => now.duration_since(*since) >= duration,
            _ => {
                self.record = Some((record.to_string(), now));
                false
            }
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Mutex<Observed>,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(Observed::default()),
        }
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn lost(&self, since: Duration, last: String) -> LeaderError {
        LeaderError::Lost {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            since,
            last,
        }
    }

    /// One attempt to acquire or renew. A conflict (someone wrote the lease
    /// between our read and our write) is "not leading this time", not an error.
    pub async fn try_acquire(&self) -> Result<Attempt, LeaderError> {
        let now = Timestamp::now();
        let secs = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => self.following(None).await,
                Err(e) => Err(self.err(e)),
            };
        };
        let record = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        if !ours && !holder.is_empty() {
            // The holder's own duration, as it promised to keep to it.
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let expired = self.observed.lock().expect("observed lease lock").expired(
                &record,
                duration,
                Instant::now(),
            );
            if !expired {
                return Ok(Attempt::Following { holder });
            }
        }
        if !ours {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(secs);
        // `replace` sends the resourceVersion we read: a concurrent writer
        // makes it fail with 409 Conflict.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(e)) if e.code == 409 => self.following(Some(holder)).await,
            Err(e) => Err(self.err(e)),
        }
    }

    async fn following(&self, holder: Option<String>) -> Result<Attempt, LeaderError> {
        let holder = match holder {
            Some(h) if !h.is_empty() => h,
            _ => self
                .api
                .get_opt(&self.config.name)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity)
                .unwrap_or_default(),
        };
        Ok(Attempt::Following { holder })
    }

    /// Waits until this candidate leads; returns when the winning attempt
    /// started, which is where [`Elector::keep`] counts the lease from.
    pub async fn acquire(&self) -> Instant {
        let mut last_holder = None;
        loop {
            let started = Instant::now();
            // An attempt that hangs must not make a leader of us long after
            // the lease it wrote began: it is cut off, and the lease counted
            // from its start.
            match tokio::time::timeout(self.config.hold_for(), self.try_acquire()).await {
                Ok(Ok(Attempt::Leading)) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "leading");
                    return started;
                }
                Ok(Ok(Attempt::Following { holder })) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(%holder, "another operator leads; waiting");
                        last_holder = Some(holder);
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election"),
                Err(_) => tracing::warn!("leader election: the API server did not answer in time"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Renews the lease (held since `renewed`, the start of the attempt that
    /// won it) until it cannot, and returns why: someone else holds it, or no
    /// renewal succeeded within [`LeaseConfig::hold_for`] of the start of the
    /// last successful one. Returns by that deadline even when the API server
    /// does not answer at all: a pending renewal is abandoned, so the caller
    /// stops acting before another candidate can take the lease.
    pub async fn keep(&self, mut renewed: Instant) -> LeaderError {
        let renew_every = self.config.renew_every;
        let retry_every = (renew_every / 2).max(Duration::from_millis(100));
        let mut next = renewed + renew_every;
        let mut last = "none".to_string();
        loop {
            let deadline = renewed + self.config.hold_for();
            tokio::time::sleep_until(next.min(deadline)).await;
            if Instant::now() >= deadline {
                return self.lost(renewed.elapsed(), last);
            }
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(Attempt::Leading)) => {
                    renewed = started;
                    next = started + renew_every;
                }
                Ok(Ok(Attempt::Following { holder })) => {
                    return self.lost(renewed.elapsed(), format!("{holder:?} holds the lease"));
                }
                Ok(Err(e)) => {
                    last = e.to_string();
                    tracing::warn!(error = %last, "could not renew the lease; retrying");
                    next = Instant::now() + retry_every;
                }
                Err(_) => {
                    let since = renewed.elapsed();
                    return self.lost(
                        since,
                        format!("a renewal was still unanswered {since:?} after the last success"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_once_its_record_went_unchanged_for_its_duration() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let mut seen = Observed::default();
        // However old its renewTime, a record first seen now is counted from now.
        assert!(!seen.expired("1", d, t0));
        assert!(!seen.expired("1", d, t0 + Duration::from_secs(14)));
        assert!(seen.expired("1", d, t0 + d));
        // A renewal (a new resourceVersion) starts the count again.
        assert!(!seen.expired("2", d, t0 + Duration::from_secs(20)));
        assert!(!seen.expired("2", d, t0 + Duration::from_secs(34)));
        assert!(seen.expired("2", d, t0 + Duration::from_secs(35)));
    }

    #[test]
    fn a_leader_stops_one_renewal_period_before_its_lease_ends() {
        let config = LeaseConfig {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(3),
        };
        assert_eq!(config.hold_for(), Duration::from_secs(12));
    }
}
