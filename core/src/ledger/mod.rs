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

/// The ledger key of a batch's lane mark: the last time its pool's priority
/// lane got bundles of another batch (see [`BatchMarks::lane_at`]). Ends
/// with `#`, as the cancel mark, so never a claim key; a key apart from the
/// cancel mark, whose mere presence older workers read as a cancel.
pub fn lane_key(batch: &str) -> String {
    format!("#lane#{batch}#")
}

/// A batch's marks in the ledger, read together in one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchMarks {
    pub cancelled: bool,
    /// When (ms since the epoch) the operator last sent bundles of another
    /// batch to the pool's priority lane while this one had work there.
    /// Workers read these marks every few seconds for each batch of which
    /// they hold tasks not started, which is when their slots are all taken
    /// and they would not receive again before a bundle of theirs ends: a
    /// mark newer than the last they saw has them look at the lane at once
    /// (`lane_nudged`), at no extra request.
    pub lane_at: Option<u64>,
}

/// A lane mark seen more than this after it was written is not acted on: by
/// then the operator has moved what was left in the lane to the queue.
pub const LANE_MARK_FRESH: Duration = Duration::from_secs(30);

/// Whether a lane mark read now (`at`, ms since the epoch) calls for a look
/// at the priority lane, given the last mark seen for the batch (`seen`):
/// a mark not seen before, written within [`LANE_MARK_FRESH`] of `now_ms`.
pub fn lane_nudged(seen: Option<u64>, at: Option<u64>, now_ms: u64) -> bool {
    let fresh_ms = u64::try_from(LANE_MARK_FRESH.as_millis()).unwrap_or(u64::MAX);
    match at {
        Some(at) => seen != Some(at) && now_ms.saturating_sub(at) < fresh_ms,
        None => false,
    }
}

pub trait DedupLedger: Send + Sync + 'static {
    /// Marks `batch` cancelled: workers skip (and delete) its bundles that
    /// have not started.
    fn cancel_batch(&self, batch: &str) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Whether `batch` was cancelled, and its lane mark: one request.
    fn batch_marks(
        &self,
        batch: &str,
    ) -> impl Future<Output = Result<BatchMarks, LedgerError>> + Send;

    /// Writes `batch`'s lane mark at `at_ms` (ms since the epoch): its
    /// pool's priority lane just got bundles of another batch.
    fn mark_lane(
        &self,
        batch: &str,
        at_ms: u64,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_mark_nudges_once_and_only_while_fresh() {
        let now = 1_000_000;
        // Never marked, or the mark already acted on.
        assert!(!lane_nudged(None, None, now));
        assert!(!lane_nudged(Some(now - 10), Some(now - 10), now));
        // A new mark, first seen or after an older one.
        assert!(lane_nudged(None, Some(now - 10), now));
        assert!(lane_nudged(Some(now - 5_000), Some(now - 10), now));
        // Too old: the operator has moved the lane's bundles to the queue.
        assert!(!lane_nudged(None, Some(now - 30_000), now));
        // Written ahead of this clock (clocks differ): still acted on.
        assert!(lane_nudged(None, Some(now + 2_000), now));
    }
}
