//! Counters of one worker, for `/metrics` and its heartbeat row.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Bundles received and claimed (or admitted, with dedup off).
    pub bundles: AtomicU64,
    pub tasks_succeeded: AtomicU64,
    pub tasks_failed: AtomicU64,
    /// Deliveries skipped because the bundle was held or done elsewhere.
    pub duplicates: AtomicU64,
    /// Stored results sent again (they had not reached the response queue).
    pub resent: AtomicU64,
    /// Bundles taken over from a worker whose lease expired.
    pub taken_over: AtomicU64,
    /// Bundles given back unfinished (shutdown).
    pub released: AtomicU64,
    /// Bundles of cancelled batches deleted without running.
    pub cancelled: AtomicU64,
    /// Bundles reported failed after too many claims.
    pub given_up: AtomicU64,
    /// Calls to the queue or ledger that failed and were retried.
    pub backend_errors: AtomicU64,
    /// Tasks an earlier holder of a taken-over bundle had finished and
    /// reported: not run again.
    pub tasks_skipped: AtomicU64,
    /// Results dropped because their response queue no longer exists (the
    /// batch was deleted).
    pub results_dropped: AtomicU64,
    /// Bundles held now (running or about to): a gauge.
    pub held: AtomicU64,
}

impl WorkerStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
