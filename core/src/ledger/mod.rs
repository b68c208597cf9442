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
    match at {
        Some(at) => seen != Some(at) && lane_mark_fresh(at, now_ms),
        None => false,
    }
}

/// The owner a released claim is left with: no holder's renewal, late
/// after the release, matches it (and takes the bundle back for a lease).
pub const RELEASED_OWNER: &str = "#released";

/// A worker that asks the ledger about its batches at least this often is
/// told by their lane marks when the priority lane gets bundles
/// ([`lane_look_due`]).
pub const LANE_MARK_READ_MAX: Duration = Duration::from_secs(5);

/// What decides whether a worker's receive looks at the priority lane first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneSight {
    /// Its ledger answers lane marks (no ledger, or one whose IAM policy
    /// refuses BatchGetItem, reads none).
    pub marks_read: bool,
    /// How often it asks the ledger about the batches it watches.
    pub check_every: Duration,
    /// It holds tasks not started, so it watches their batches.
    pub watching: bool,
    /// It saw a lane mark written within [`LANE_MARK_FRESH`].
    pub fresh_mark: bool,
}

/// Whether a receive looks at the pool's priority lane before the main
/// queue: a request each time, mostly of an empty lane (0.022 of the 0.42
/// requests a task of `big-lognormal`, simulated), and a round trip before
/// every receive. A worker that watches its batches every
/// [`LANE_MARK_READ_MAX`] or sooner, in a ledger that answers lane marks,
/// is told when the lane gets bundles (the runner marks the batches that
/// share the pool) and looks then; it looks before each receive only while
/// a mark it saw is fresh, as more may come. Any other worker reads no
/// marks (a pool of long tasks, where none is held), and looks each time.
pub fn lane_look_due(sight: LaneSight) -> bool {
    let told = sight.marks_read && sight.watching && sight.check_every <= LANE_MARK_READ_MAX;
    !told || sight.fresh_mark
}

/// Whether a lane mark written at `at` (ms since the epoch) is fresh at
/// `now_ms`: within [`LANE_MARK_FRESH`], or ahead of this clock.
pub fn lane_mark_fresh(at: u64, now_ms: u64) -> bool {
    let fresh_ms = u64::try_from(LANE_MARK_FRESH.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(at) < fresh_ms
}

pub trait DedupLedger: Send + Sync + 'static {
    /// Whether [`Self::batch_marks`] answers lane marks (else `lane_at` is
    /// always `None`).
    fn reads_lane_marks(&self) -> bool {
        true
    }

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
    /// expired and another worker took the bundle over, or it was given
    /// back). `Ok(true)` and nothing changed when `owner` completed it (a
    /// renewal racing its own completion) or a later renewal of its landed
    /// first (the progress never goes back).
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

    #[test]
    fn a_worker_told_by_lane_marks_looks_at_the_lane_only_while_one_is_fresh() {
        let told = LaneSight {
            marks_read: true,
            check_every: Duration::from_secs(3),
            watching: true,
            fresh_mark: false,
        };
        assert!(!lane_look_due(told));
        assert!(lane_look_due(LaneSight {
            fresh_mark: true,
            ..told
        }));
        // Not told: it looks each time.
        for not_told in [
            LaneSight {
                marks_read: false,
                ..told
            },
            LaneSight {
                watching: false,
                ..told
            },
            LaneSight {
                check_every: Duration::from_secs(60),
                ..told
            },
        ] {
            assert!(lane_look_due(not_told), "{not_told:?}");
        }
        assert!(!lane_look_due(LaneSight {
            check_every: LANE_MARK_READ_MAX,
            ..told
        }));
    }
}
