//! The dedup ledger: exactly-once execution on top of at-least-once queues.
//!
//! Before running a bundle a worker claims it: a conditional write that succeeds
//! only if nobody holds it, or if the holder's lease ran out (the holder died).
//! The holder renews its lease while it runs (heartbeats), stores the results
//! when done, and only then sends them and deletes the message. A redelivered
//! message is thus skipped, or its stored results are sent again if they never
//! reached the response queue.

mod memory;
mod progress;

use std::future::Future;
use std::time::Duration;

pub use memory::MemoryLedger;
pub use progress::BundleProgress;

use crate::bundle::Bundle;

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the bundle now. `attempt` is 1 the first time, and one
    /// more on each take-over of an expired lease (a give-back does not count:
    /// nothing failed). `done`: the tasks earlier holders ran and reported, by
    /// their last renewal or give-back; only the rest need to run.
    Granted { attempt: u32, done: BundleProgress },
    /// The bundle ran already; these are its stored (encoded) results.
    Done { results: Vec<u8> },
    /// Another worker holds a live lease for about this long.
    Held { remaining: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("ledger: {0}")]
    Backend(String),
}

/// The key a bundle is claimed under: its batch and its first task, which no
/// other bundle of the batch shares.
pub fn claim_key(bundle: &Bundle) -> String {
    let first = bundle.tasks.first().map_or(0, |t| t.id);
    let batch = bundle.tasks.first().map_or("", |t| t.batch.as_str());
    format!("{batch}#{first}")
}

/// The ledger key that marks a batch cancelled. Claim keys end with a task
/// number, so a key ending with `#` is never one.
pub fn cancel_key(batch: &str) -> String {
    format!("#cancel#{batch}#")
}

pub trait DedupLedger: Send + Sync + 'static {
    /// Marks `batch` cancelled: workers skip (and delete) its bundles that
    /// have not started.
    fn cancel_batch(&self, batch: &str) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Whether `batch` was cancelled.
    fn is_cancelled(&self, batch: &str) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Claims `key` for `owner` for `lease`.
    fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, LedgerError>> + Send;

    /// Extends `owner`'s lease on `key` and records the bundle's progress (the
    /// tasks whose results are sent); `Ok(false)`: the lease was lost (it
    /// expired and another worker took the bundle over).
    fn renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        done: &BundleProgress,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Marks `key` done, with its encoded results when they are to be sent again
    /// on a redelivery (empty: they were sent already); `Ok(false)`: the lease
    /// was lost (the new holder reports).
    fn complete(
        &self,
        key: &str,
        owner: &str,
        results: Vec<u8>,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Gives an unfinished claim back at once (graceful shutdown, scale-down),
    /// with its progress, so that the next delivery is granted without waiting
    /// for the lease to run out, runs only the rest, and is not counted as a
    /// new attempt.
    fn release(
        &self,
        key: &str,
        owner: &str,
        done: &BundleProgress,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;
}
