//! What the operator remembers of a pool between reconciliations.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cloudkon_core::aws::SqsQueue;

use crate::provider::Ec2Provider;
use crate::scale::ScaleMemory;

/// What the operator remembers of a pool between reconciliations (the pool
/// reconciler's).
#[derive(Default)]
pub struct PoolMemory {
    /// The pool's queue, with the name and receives it was made with: made
    /// again (given the new settings) when the spec changes them.
    pub queue: Option<(SqsQueue, QueueMade)>,
    pub scale: ScaleMemory,
    /// The generation whose Deployment was last applied.
    pub applied_generation: Option<i64>,
    /// The Deployment's own generation after that apply: another one means
    /// someone else changed its spec since.
    pub deployment_generation: Option<i64>,
    /// The EC2 fleet, for pools whose provider is not a Deployment.
    pub ec2: Option<Arc<Ec2Provider>>,
    /// What the fleet was made from (the provider, the workers' settings and
    /// the queue): made again when they change, so that new workers get
    /// the new launch template, instance type or settings.
    pub fleet_made: Option<String>,
    /// When the backlog was last seen non-empty, to the nanosecond: the
    /// status keeps it to the second and only at most once a second, which
    /// would cut the cooldown before zero short by up to two seconds.
    pub last_active: Option<SystemTime>,
    /// When the status was last written (see `pool_reconciler::status_due`).
    pub status_written: Option<Instant>,
    /// The task reading the pool's dead-letter queue (aborted when dropped).
    pub dead_letters: Option<crate::dead_letters::Reader>,
    /// The last read of whether a worker runs a task, and when: read again
    /// at most every `pool_reconciler::BUSY_READ_EVERY`.
    pub busy_read: Recent<bool>,
    /// The last look at why workers are not ready, and when: looked at
    /// again at most every `pool_reconciler::PROBLEM_READ_EVERY`.
    pub worker_problem: Recent<Option<String>>,
    /// Being deleted: the batches the deletion waits for, as last told in
    /// an Event (told again only when they change).
    pub deletion_waits_for: Vec<String>,
    /// The priority lane was looked at for bundles no worker read, once in
    /// this run (see `pool_reconciler::move_lane_leftovers`).
    pub lane_looked: bool,
    /// Since when the fleet has failed with errors that pass by themselves
    /// (see `pool_reconciler::retry_soon`); `None` once it answers.
    pub fleet_failing_since: Option<Instant>,
}

/// What a pool's queue was made with, from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMade {
    pub name: String,
    pub max_receives: u32,
}

/// A value read now and then, with when it was read: read again only once
/// it is older than the caller's period.
#[derive(Debug)]
pub struct Recent<T>(Option<(Instant, T)>);

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Clone> Recent<T> {
    /// The value, if it was read within `every`.
    pub fn within(&self, every: Duration) -> Option<T> {
        self.0
            .as_ref()
            .filter(|(at, _)| at.elapsed() < every)
            .map(|(_, v)| v.clone())
    }

    /// Keeps `value`, read now, and gives it back.
    pub fn set(&mut self, value: T) -> T {
        self.0 = Some((Instant::now(), value.clone()));
        value
    }

    pub fn forget(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_value_is_given_within_its_period_only() {
        let mut r = Recent::default();
        assert_eq!(r.within(Duration::from_secs(3600)), None, "never read");
        assert_eq!(r.set(7), 7);
        assert_eq!(r.within(Duration::from_secs(3600)), Some(7));
        assert_eq!(r.within(Duration::ZERO), None, "older than no time");
        r.forget();
        assert_eq!(r.within(Duration::from_secs(3600)), None);
    }
}
