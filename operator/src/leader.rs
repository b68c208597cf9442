//! Leader election with a `coordination.k8s.io` Lease, as client-go does it:
//! the holder renews the lease every `renew_every`; another candidate takes it
//! over once it has not been renewed for `lease_duration`. Every write is a
//! replace conditional on the `resourceVersion` read, so two candidates can
//! never both believe they won the same term.
//!
//! Only the leader runs the reconcilers. A leader that cannot renew in time
//! stops (the process exits and is restarted as a candidate) rather than risk
//! two operators enqueuing the same batch.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (the pod's name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
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

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
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
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        if !ours && !holder.is_empty() && !expired(spec, now) {
            return Ok(Attempt::Following { holder });
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

    /// Waits until this candidate leads.
    pub async fn acquire(&self) {
        let mut last_holder = None;
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "leading");
                    return;
                }
                Ok(Attempt::Following { holder }) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(%holder, "another operator leads; waiting");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Renews the lease until it cannot: returns the reason leadership was
    /// lost (someone else holds it, or no renewal succeeded within the lease
    /// duration minus one renewal period, which leaves the next leader a
    /// clean hand-over).
    pub async fn keep(&self) -> LeaderError {
        let mut last_ok = tokio::time::Instant::now();
        let deadline = self
            .config
            .lease_duration
            .saturating_sub(self.config.renew_every);
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            let last = match self.try_acquire().await {
                Ok(Attempt::Leading) => {
                    last_ok = tokio::time::Instant::now();
                    continue;
                }
                Ok(Attempt::Following { holder }) => format!("{holder:?} holds the lease"),
                Err(e) => e.to_string(),
            };
            let since = last_ok.elapsed();
            if since >= deadline || last.contains("holds the lease") {
                return LeaderError::Lost {
                    namespace: self.config.namespace.clone(),
                    name: self.config.name.clone(),
                    since,
                    last,
                };
            }
            tracing::warn!(error = %last, "could not renew the lease; retrying");
        }
    }
}

/// Whether a lease has not been renewed within its duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let age = now.as_second() - renewed.0.as_second();
    age >= duration
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::now().as_second();
        LeaseSpec {
            renew_time: Some(MicroTime(
                Timestamp::from_second(now - renewed_secs_ago).unwrap(),
            )),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration() {
        let now = Timestamp::now();
        assert!(!expired(&spec(0, 15), now));
        assert!(!expired(&spec(14, 15), now));
        assert!(expired(&spec(15, 15), now));
        assert!(expired(&spec(100, 15), now));
        assert!(expired(&LeaseSpec::default(), now), "never renewed");
    }
}
