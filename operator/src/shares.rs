//! What the batch runners of each pool tell each other and the pool's scaler:
//! their weights (for the enqueue windows) and the work they have in the queue
//! or running (for scaling on work). In memory: a restarted operator's runners
//! register again as they start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One batch, as its runner last said.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchShare {
    pub weight: u64,
    /// Tasks enqueued and not finished.
    pub in_flight: u64,
    /// Its task length estimate; `None`: unknown.
    pub estimate: Option<Duration>,
}

/// A pool's work, summed over its batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolWork {
    pub tasks: u64,
    /// Tasks × their batch's estimate (unknown lengths as
    /// [`crate::window::UNKNOWN_TASK`]).
    pub task_seconds: f64,
}

/// The key a pool's batches register under: the one the runners and the
/// pool's reconciler both use.
pub fn pool_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[derive(Debug, Default)]
pub struct Shares {
    /// Pool (`namespace/name`) → batch uid → its share.
    pools: Mutex<HashMap<String, HashMap<String, BatchShare>>>,
}

impl Shares {
    /// Registers a batch on a pool until the guard drops.
    pub fn join(self: &Arc<Self>, pool: &str, batch: &str, weight: u64) -> ShareGuard {
        self.pools
            .lock()
            .expect("shares lock")
            .entry(pool.to_string())
            .or_default()
            .insert(
                batch.to_string(),
                BatchShare {
                    weight: weight.max(1),
                    ..BatchShare::default()
                },
            );
        ShareGuard {
            shares: self.clone(),
            pool: pool.to_string(),
            batch: batch.to_string(),
            weight: weight.max(1),
        }
    }

    /// The sum of the weights of the pool's batches.
    pub fn total_weight(&self, pool: &str) -> u64 {
        self.pools
            .lock()
            .expect("shares lock")
            .get(pool)
            .map_or(0, |b| b.values().map(|s| s.weight).sum())
    }

    /// The pool's work in the queue or running.
    pub fn work(&self, pool: &str) -> PoolWork {
        let pools = self.pools.lock().expect("shares lock");
        let mut work = PoolWork::default();
        for share in pools.get(pool).into_iter().flat_map(|b| b.values()) {
            let cost = share
                .estimate
                .unwrap_or(crate::window::UNKNOWN_TASK)
                .max(crate::window::MIN_TASK_COST);
            work.tasks += share.in_flight;
            work.task_seconds += share.in_flight as f64 * cost.as_secs_f64();
        }
        work
    }
}

/// A batch's place in its pool's shares; updated by its runner, removed on drop.
pub struct ShareGuard {
    shares: Arc<Shares>,
    pool: String,
    batch: String,
    weight: u64,
}

impl ShareGuard {
    pub fn pool(&self) -> &str {
        &self.pool
    }

    pub fn weight(&self) -> u64 {
        self.weight
    }

    pub fn update(&self, in_flight: u64, estimate: Option<Duration>) {
        let mut pools = self.shares.pools.lock().expect("shares lock");
        if let Some(share) = pools
            .get_mut(&self.pool)
            .and_then(|b| b.get_mut(&self.batch))
        {
            share.in_flight = in_flight;
            share.estimate = estimate;
        }
    }
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        let mut pools = self.shares.pools.lock().expect("shares lock");
        if let Some(batches) = pools.get_mut(&self.pool) {
            batches.remove(&self.batch);
            if batches.is_empty() {
                pools.remove(&self.pool);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_join_and_leave_their_pools_shares() {
        let shares = Arc::new(Shares::default());
        let a = shares.join("ns/p", "a", 1);
        let b = shares.join("ns/p", "b", 3);
        let _other = shares.join("ns/q", "c", 5);
        assert_eq!(shares.total_weight("ns/p"), 4);
        a.update(100, Some(Duration::from_millis(10)));
        b.update(10, None);
        let work = shares.work("ns/p");
        assert_eq!(work.tasks, 110);
        assert!((work.task_seconds - (1.0 + 10.0)).abs() < 1e-9, "{work:?}");
        drop(b);
        assert_eq!(shares.total_weight("ns/p"), 1);
        drop(a);
        assert_eq!(shares.total_weight("ns/p"), 0);
        assert_eq!(shares.work("ns/p"), PoolWork::default());
        assert_eq!(shares.total_weight("ns/q"), 5);
    }
}
