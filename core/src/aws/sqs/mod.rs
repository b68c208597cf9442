//! SQS queues: the task queue the workers read, and the response queues the
//! results come back on. The handles here; creating and looking at queues in
//! `admin`, the messages themselves in `data`.

mod admin;
mod data;

pub use admin::{QueueOptions, bounded_queue_name, queue_name_chars};

use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::config::AwsSettings;
use super::error::AwsError;
use super::stats::RequestStats;
use crate::queue::Receipt;

const SERVICE: &str = "SQS";

/// A handle on SQS: the client, its settings and the request counters.
/// Cheap to clone; hands out [`SqsQueue`]s.
#[derive(Clone, Debug)]
pub struct SqsClient {
    client: aws_sdk_sqs::Client,
    settings: AwsSettings,
    stats: RequestStats,
}

/// One SQS queue.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    sqs: SqsClient,
    url: String,
    /// Where undecodable messages go; `None`: they are deleted.
    dead_letter_url: Option<String>,
    /// How long a receive hides what it gets; `None`: the queue's own
    /// visibility timeout (see [`SqsQueue::hidden_on_receive`]).
    receive_visibility: Option<Duration>,
}

/// A message as SQS delivered it.
#[derive(Clone, Debug)]
pub struct RawMessage {
    pub message_id: String,
    pub body: String,
    pub receipt: Receipt,
    /// Deliveries of this message so far, this one included.
    pub receive_count: u32,
}

/// Approximate counts, as SQS reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and not yet deleted (in flight).
    pub in_flight: u64,
    pub delayed: u64,
}

impl SqsClient {
    pub(crate) fn new(
        client: aws_sdk_sqs::Client,
        settings: AwsSettings,
        stats: RequestStats,
    ) -> Self {
        Self {
            client,
            settings,
            stats,
        }
    }

    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    fn err<E>(
        operation: &'static str,
        resource: &str,
        e: aws_sdk_sqs::error::SdkError<E, HttpResponse>,
    ) -> AwsError
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        AwsError::sdk(SERVICE, operation, resource, e)
    }

    /// A queue by URL, without asking SQS anything: for sending to a bundle's
    /// `reply_to`. It has no dead-letter queue: undecodable messages are deleted.
    pub fn at(&self, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            sqs: self.clone(),
            url: url.into(),
            dead_letter_url: None,
            receive_visibility: None,
        }
    }
}

/// What a pool queue's priority lane adds to its name (as long as the
/// dead-letter queue's `-dlq`).
pub const PRIORITY_LANE_SUFFIX: &str = "-pri";

impl SqsQueue {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn dead_letter_url(&self) -> Option<&str> {
        self.dead_letter_url.as_deref()
    }

    /// This queue's priority lane (see [`crate::queue::Lanes`]): the queue
    /// named as it is with [`PRIORITY_LANE_SUFFIX`], with the same
    /// dead-letter queue. Whether it exists is SQS's to say.
    pub fn priority_lane(&self) -> SqsQueue {
        SqsQueue {
            sqs: self.sqs.clone(),
            url: format!("{}{PRIORITY_LANE_SUFFIX}", self.url),
            dead_letter_url: self.dead_letter_url.clone(),
            receive_visibility: self.receive_visibility,
        }
    }

    /// This queue, its receives hiding what they get for `visibility`
    /// rather than the queue's own timeout (a pool queue's is 30 s). A
    /// worker's first extension of a bundle comes a third of its lease
    /// after some receive, not after this one: with a lease of 90 s or
    /// more, its bundles showed again before it, were received by other
    /// workers (a receive of their `maxReceives` each, up to the
    /// dead-letter queue) and its receipts went stale.
    pub fn hidden_on_receive(self, visibility: Duration) -> Self {
        Self {
            receive_visibility: Some(visibility),
            ..self
        }
    }

    /// The same client on another queue (e.g. this queue's dead-letter queue).
    pub fn sibling(&self, url: impl Into<String>) -> SqsQueue {
        self.sqs.at(url)
    }

    fn client(&self) -> &aws_sdk_sqs::Client {
        &self.sqs.client
    }
}
