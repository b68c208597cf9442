//! The task queue: where bundles wait for a worker.

mod lanes;
mod memory;
mod responses;

use std::future::Future;
use std::time::Duration;

pub use lanes::Lanes;
pub use memory::MemoryQueue;
pub use responses::{MemoryInbox, MemoryResponses};

use crate::bundle::Bundle;
use crate::wire::ResultsMessage;

/// Identifies one delivery of a bundle, to acknowledge it once its results are out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt(pub String);

/// A bundle as a worker received it.
#[derive(Debug)]
pub struct Delivery {
    pub bundle: Bundle,
    /// `None` where the queue needs no acknowledgement (in memory).
    pub receipt: Option<Receipt>,
    /// How many times this bundle has been delivered, this one included.
    pub receive_count: u32,
    /// It came from the pool's priority lane (see [`Lanes`]): its tasks
    /// start before those of bundles already held.
    pub priority: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is closed")]
    Closed,
    /// The queue does not exist (deleted with its batch): retrying is pointless.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Backend(String),
    /// Refused for good (a receipt the queue does not know, access denied):
    /// asking again gets the same answer.
    #[error("{0}")]
    Refused(String),
}

/// A queue of bundles: in memory for the embedded engine, SQS for the cloud.
pub trait TaskQueue: Send + Sync + 'static {
    /// Enqueues bundles.
    fn send(&self, bundles: Vec<Bundle>) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Receives up to `max` bundles, waiting up to `wait` for the first one.
    /// `Ok(None)` means the queue is finite, closed and drained: no more will come.
    fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Vec<Delivery>>, QueueError>> + Send;

    /// Receives up to `max` bundles from the priority lane only, without
    /// waiting: a worker whose slots are all taken looks there when told
    /// that the lane just got bundles. A queue without a lane has none.
    fn receive_priority(
        &self,
        _max: usize,
    ) -> impl Future<Output = Result<Vec<Delivery>, QueueError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// [`Self::receive`] from the main queue alone, where the queue has a
    /// priority lane: the worker knows there is no need to look at the lane
    /// (see `ledger::lane_look_due`).
    fn receive_main(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Vec<Delivery>>, QueueError>> + Send {
        self.receive(max, wait)
    }

    /// Acknowledges deliveries whose results are out, so they are not delivered again.
    fn ack(&self, receipts: Vec<Receipt>) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Keeps a delivery from other workers for `timeout` more (a long task).
    fn extend(
        &self,
        _receipt: &Receipt,
        _timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send {
        async { Ok(()) }
    }

    /// [`Self::extend`] for many deliveries, in as few requests as the
    /// backend allows (SQS: 10 a request). An error says that some were not
    /// extended, not which: the caller extends those it still needs one by
    /// one.
    fn extend_all(
        &self,
        receipts: Vec<Receipt>,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send {
        async move {
            let mut first = None;
            for receipt in &receipts {
                if let Err(e) = self.extend(receipt, timeout).await {
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), Err)
        }
    }

    /// Makes a delivery visible to other workers at once (work given back).
    fn release(&self, _receipt: &Receipt) -> impl Future<Output = Result<(), QueueError>> + Send {
        async { Ok(()) }
    }
}

/// Carries encoded results messages back to the submitter: to the response
/// queue a bundle names in its `reply_to`.
pub trait ResultRouter: Send + Sync + 'static {
    fn send_results(
        &self,
        reply_to: &str,
        bodies: Vec<String>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// Where a batch's results arrive (its response queue), for the side that
/// counts them: messages with receipts, deleted once counted, so that what a
/// crash leaves undeleted comes back and is found counted already.
pub trait ResultsInbox: Send + Sync + 'static {
    /// Up to `max` results messages, waiting up to `wait` for the first.
    fn receive_results(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<(ResultsMessage, Receipt)>, QueueError>> + Send;

    /// Deletes counted messages.
    fn ack_results(
        &self,
        receipts: Vec<Receipt>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}
