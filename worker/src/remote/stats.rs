//! Counters of one worker, for `/metrics` and its heartbeat row.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cloudkon_core::Usage;
use cloudkon_core::aws::RequestStats;

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
    /// Bundles this worker held whose lease ran out and another worker took
    /// over (its renewals too slow or failing): their tasks not started
    /// here are the new holder's.
    pub leases_lost: AtomicU64,
    /// Bundles given back unfinished (shutdown).
    pub released: AtomicU64,
    /// Bundles of cancelled batches deleted without running.
    pub cancelled: AtomicU64,
    /// Bundles reported failed after too many claims.
    pub given_up: AtomicU64,
    /// Bundles taken from the priority lane on a lane mark, while the
    /// worker held enough to receive nothing else.
    pub lane_marked: AtomicU64,
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
    /// The counters of the worker's AWS clients (none with memory backends):
    /// each results message carries its share of what they counted since
    /// the previous one.
    pub requests: Option<RequestStats>,
    /// What the results sent so far carried: the worker's requests and time
    /// charged to batches.
    pub charged: Mutex<Usage>,
}

impl WorkerStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// With the worker's AWS request counters.
    pub fn with_requests(requests: RequestStats) -> Self {
        Self {
            requests: Some(requests),
            ..Self::default()
        }
    }

    pub fn charged(&self) -> Usage {
        *self.charged.lock().expect("charged lock")
    }
}
