//! SQS queues: the task queue the workers read, and the response queues the
//! results come back on.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use futures_util::StreamExt as _;

use super::config::AwsSettings;
use super::error::{AwsError, ErrorKind};
use super::stats::RequestStats;
use crate::bundle::Bundle;
use crate::queue::{Delivery, QueueError, Receipt, ResultRouter, ResultsInbox, TaskQueue};
use crate::wire::{self, SQS_MAX_MESSAGE_BYTES};

const SERVICE: &str = "SQS";
/// SQS takes at most 10 entries per batch request, and 256 KiB in all.
const MAX_BATCH_ENTRIES: usize = 10;
const MAX_BATCH_BYTES: usize = SQS_MAX_MESSAGE_BYTES;
/// Attempts at the failed entries of a partly failed batch (the SDK retries
/// whole requests, not entries).
const ENTRY_ATTEMPTS: u32 = 5;
const ENTRY_BACKOFF: Duration = Duration::from_millis(50);
const ENTRY_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Batch requests in flight at once for one call: a request takes ~10 ms in a
/// region, so one at a time would cap a sender at ~1,000 messages/s.
const CONCURRENT_REQUESTS: usize = 8;
/// SQS's longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// A handle on SQS: the client, its settings and the request counters.
/// Cheap to clone; hands out [`SqsQueue`]s.
#[derive(Clone, Debug)]
pub struct SqsClient {
    client: aws_sdk_sqs::Client,
    settings: AwsSettings,
    stats: RequestStats,
}

/// How to create a queue.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// How long a received message stays hidden before it is delivered again.
    pub visibility_timeout: Duration,
    pub retention: Duration,
    /// Create `<name>-dlq` and move a message there after this many receives.
    pub max_receives: Option<u32>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(4 * 24 * 3600),
            max_receives: None,
        }
    }
}

/// `name` with every character SQS refuses in a queue name (it takes letters,
/// digits, `-` and `_`) replaced by `-`. The length is the caller's to bound.
pub fn queue_name_chars(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `name` as an SQS queue name of at most `max` characters: itself when it
/// is one; else its characters as [`queue_name_chars`] has them, cut to leave
/// room for a hash of the whole name, so that two names never share a queue
/// (a cut or a replaced character alone would let them).
pub fn bounded_queue_name(name: &str, max: usize) -> String {
    let clean = queue_name_chars(name);
    if clean == name && name.len() <= max {
        return clean;
    }
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let suffix = format!("-{:08x}", hash as u32);
    let keep = max.saturating_sub(suffix.len()).min(clean.len());
    format!("{}{suffix}", &clean[..keep])
}

/// One SQS queue.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    sqs: SqsClient,
    url: String,
    /// Where undecodable messages go; `None`: they are deleted.
    dead_letter_url: Option<String>,
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

    fn err<E, R>(
        operation: &'static str,
        resource: &str,
        e: aws_sdk_sqs::error::SdkError<E, R>,
    ) -> AwsError
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        AwsError::sdk(SERVICE, operation, resource, e)
    }

    /// Creates a queue (and its dead-letter queue), or returns the existing one
    /// if it has the same settings. With different settings SQS refuses:
    /// `QueueAlreadyExists`.
    pub async fn create_queue(
        &self,
        name: &str,
        options: &QueueOptions,
    ) -> Result<SqsQueue, AwsError> {
        let mut attributes = HashMap::from([
            (
                QueueAttributeName::VisibilityTimeout,
                options.visibility_timeout.as_secs().to_string(),
            ),
            (
                QueueAttributeName::MessageRetentionPeriod,
                options.retention.as_secs().to_string(),
            ),
        ]);
        let mut dead_letter_url = None;
        if let Some(max_receives) = options.max_receives {
            let dlq_name = format!("{name}-dlq");
            // The longest retention: a dead letter is kept for inspection.
            let dlq_attributes = HashMap::from([(
                QueueAttributeName::MessageRetentionPeriod,
                (14 * 24 * 3600).to_string(),
            )]);
            let dlq_url = self.create_raw(&dlq_name, dlq_attributes).await?;
            let arn = self.queue_arn(&dlq_url).await?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": max_receives,
            });
            attributes.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
            dead_letter_url = Some(dlq_url);
        }
        let url = self.create_raw(name, attributes).await?;
        tracing::info!(%url, dead_letter = ?dead_letter_url, "queue ready");
        Ok(SqsQueue {
            sqs: self.clone(),
            url,
            dead_letter_url,
        })
    }

    async fn create_raw(
        &self,
        name: &str,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> Result<String, AwsError> {
        let out = self
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| Self::err("CreateQueue", name, e))?;
        out.queue_url.ok_or_else(|| {
            AwsError::new(
                SERVICE,
                "CreateQueue",
                name,
                ErrorKind::Permanent,
                "no queue URL in the answer",
            )
        })
    }

    async fn queue_arn(&self, url: &str) -> Result<String, AwsError> {
        let mut attributes = self.attributes(url, QueueAttributeName::QueueArn).await?;
        attributes
            .remove(&QueueAttributeName::QueueArn)
            .ok_or_else(|| {
                AwsError::new(
                    SERVICE,
                    "GetQueueAttributes",
                    url,
                    ErrorKind::Permanent,
                    "no QueueArn in the answer",
                )
            })
    }

    async fn attributes(
        &self,
        url: &str,
        name: QueueAttributeName,
    ) -> Result<HashMap<QueueAttributeName, String>, AwsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(name)
            .send()
            .await
            .map_err(|e| Self::err("GetQueueAttributes", url, e))?;
        Ok(out.attributes.unwrap_or_default())
    }

    /// An existing queue, by URL or by name, with its dead-letter queue if it has
    /// a redrive policy. A queue that does not exist is a [`ErrorKind::NotFound`]
    /// error naming it.
    pub async fn open(&self, url_or_name: &str) -> Result<SqsQueue, AwsError> {
        let url = if url_or_name.contains("://") {
            url_or_name.to_string()
        } else {
            self.url_of(url_or_name).await?
        };
        let mut attributes = self
            .attributes(&url, QueueAttributeName::RedrivePolicy)
            .await
            .map_err(|e| not_found_names_queue(e, url_or_name))?;
        let dead_letter_url = match attributes.remove(&QueueAttributeName::RedrivePolicy) {
            None => None,
            Some(policy) => {
                let target = serde_json::from_str::<serde_json::Value>(&policy)
                    .ok()
                    .and_then(|v| v["deadLetterTargetArn"].as_str().map(str::to_string));
                match target.as_deref().and_then(|arn| arn.rsplit(':').next()) {
                    Some(dlq_name) => Some(self.url_of(dlq_name).await?),
                    None => {
                        tracing::warn!(%url, %policy, "unreadable redrive policy: no dead-letter queue");
                        None
                    }
                }
            }
        };
        Ok(SqsQueue {
            sqs: self.clone(),
            url,
            dead_letter_url,
        })
    }

    async fn url_of(&self, name: &str) -> Result<String, AwsError> {
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| not_found_names_queue(Self::err("GetQueueUrl", name, e), name))?;
        out.queue_url.ok_or_else(|| {
            AwsError::new(
                SERVICE,
                "GetQueueUrl",
                name,
                ErrorKind::Permanent,
                "no queue URL in the answer",
            )
        })
    }

    /// A queue by URL, without asking SQS anything: for sending to a bundle's
    /// `reply_to`. It has no dead-letter queue: undecodable messages are deleted.
    pub fn at(&self, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            sqs: self.clone(),
            url: url.into(),
            dead_letter_url: None,
        }
    }
}

fn not_found_names_queue(mut e: AwsError, name: &str) -> AwsError {
    if e.kind == ErrorKind::NotFound
        || e.code
            .as_deref()
            .is_some_and(|c| c.contains("NonExistentQueue") || c == "QueueDoesNotExist")
    {
        e.kind = ErrorKind::NotFound;
        e.message = format!("queue `{name}` does not exist ({})", e.message);
    }
    e
}

/// Splits entries of these sizes, in order, into batch requests of at most
/// `max_entries` entries and `max_bytes` bytes. An entry larger than
/// `max_bytes` gets a request of its own (and SQS's refusal).
fn plan_batches(sizes: &[usize], max_entries: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (i - start == max_entries || bytes + size > max_bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Entries that failed for good after the retries.
fn entries_error(
    operation: &'static str,
    url: &str,
    failures: &[BatchResultErrorEntry],
    total: usize,
) -> AwsError {
    let first = &failures[0];
    let mut e = AwsError::new(
        SERVICE,
        operation,
        url,
        if failures.iter().all(|f| !f.sender_fault()) {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        },
        format!(
            "{} of {total} entries failed; the first: {}: {}",
            failures.len(),
            first.code(),
            first.message().unwrap_or("(no message)")
        ),
    );
    e.code = Some(first.code().to_string());
    e
}

impl SqsQueue {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn dead_letter_url(&self) -> Option<&str> {
        self.dead_letter_url.as_deref()
    }

    /// The same client on another queue (e.g. this queue's dead-letter queue).
    pub fn sibling(&self, url: impl Into<String>) -> SqsQueue {
        self.sqs.at(url)
    }

    fn client(&self) -> &aws_sdk_sqs::Client {
        &self.sqs.client
    }

    pub async fn delete(&self) -> Result<(), AwsError> {
        self.client()
            .delete_queue()
            .queue_url(&self.url)
            .send()
            .await
            .map_err(|e| SqsClient::err("DeleteQueue", &self.url, e))?;
        Ok(())
    }

    /// Deletes every message (SQS allows one purge a minute per queue).
    pub async fn purge(&self) -> Result<(), AwsError> {
        self.client()
            .purge_queue()
            .queue_url(&self.url)
            .send()
            .await
            .map_err(|e| SqsClient::err("PurgeQueue", &self.url, e))?;
        Ok(())
    }

    pub async fn stats(&self) -> Result<QueueStats, AwsError> {
        let out = self
            .client()
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| SqsClient::err("GetQueueAttributes", &self.url, e))?;
        let attributes = out.attributes.unwrap_or_default();
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueStats {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    /// Runs a batch operation over `items`: planned into requests by
    /// `sizes`, up to [`CONCURRENT_REQUESTS`] at once, and the failed entries of
    /// partly failed requests retried with backoff. Entries failed by the
    /// sender's fault are not retried. A request failing as a whole (after the
    /// SDK's retries) fails the call; entries already done stay done.
    async fn batched<'a, T, F, Fut>(
        &self,
        operation: &'static str,
        items: &'a [T],
        size: impl Fn(&T) -> usize,
        max_bytes: usize,
        call: F,
    ) -> Result<(), AwsError>
    where
        F: Fn(Vec<(String, &'a T)>) -> Fut,
        Fut: Future<Output = Result<Vec<BatchResultErrorEntry>, AwsError>>,
    {
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut backoff = ENTRY_BACKOFF;
        for attempt in 1..=ENTRY_ATTEMPTS {
            let current = std::mem::take(&mut pending);
            let sizes: Vec<usize> = current.iter().map(|&i| size(&items[i])).collect();
            let requests = plan_batches(&sizes, MAX_BATCH_ENTRIES, max_bytes)
                .into_iter()
                .map(|range| {
                    // Entry ids are indices into `items`: unique within a request.
                    let entries = current[range]
                        .iter()
                        .map(|&i| (i.to_string(), &items[i]))
                        .collect();
                    call(entries)
                });
            let mut answers =
                futures_util::stream::iter(requests).buffer_unordered(CONCURRENT_REQUESTS);
            let mut retry = Vec::new();
            let mut permanent = Vec::new();
            while let Some(answer) = answers.next().await {
                for failure in answer? {
                    if failure.sender_fault() {
                        permanent.push(failure);
                    } else {
                        match failure.id().parse::<usize>() {
                            Ok(i) if i < items.len() => retry.push((i, failure)),
                            _ => permanent.push(failure),
                        }
                    }
                }
            }
            if !permanent.is_empty() {
                return Err(entries_error(operation, &self.url, &permanent, items.len()));
            }
            if retry.is_empty() {
                return Ok(());
            }
            if attempt == ENTRY_ATTEMPTS {
                let failures: Vec<_> = retry.into_iter().map(|(_, f)| f).collect();
                return Err(entries_error(operation, &self.url, &failures, items.len()));
            }
            tracing::debug!(
                queue = %self.url, operation, failed = retry.len(), attempt,
                "retrying the failed entries of a batch"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(ENTRY_MAX_BACKOFF);
            pending = retry.into_iter().map(|(i, _)| i).collect();
            pending.sort_unstable();
        }
        unreachable!("the last attempt returns")
    }

    /// Sends message bodies with SendMessageBatch: up to 10 a request and 256 KiB
    /// in all.
    pub async fn send_bodies(&self, bodies: Vec<String>) -> Result<(), AwsError> {
        self.batched(
            "SendMessageBatch",
            &bodies,
            String::len,
            MAX_BATCH_BYTES,
            |entries| async move {
                let entries = entries
                    .into_iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(body.as_str())
                            .build()
                            .expect("id and body are set")
                    })
                    .collect();
                let out = self
                    .client()
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| SqsClient::err("SendMessageBatch", &self.url, e))?;
                Ok(out.failed)
            },
        )
        .await
    }

    /// Receives up to `max` (at most 10) messages, waiting up to `wait` (at most
    /// 20 s, whole seconds) for the first.
    pub async fn receive_raw(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<RawMessage>, AwsError> {
        // Whole seconds, rounded up: a 500 ms wait sent as WaitTimeSeconds=0
        // would be a short poll, and a loop over it would spin on an idle queue.
        let wait = wait_secs(wait);
        let override_timeouts = aws_sdk_sqs::config::Builder::default()
            .timeout_config(self.sqs.settings.timeouts(wait));
        let out = self
            .client()
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH_ENTRIES) as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(override_timeouts)
            .send()
            .await
            .map_err(|e| SqsClient::err("ReceiveMessage", &self.url, e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                RawMessage {
                    message_id: m.message_id.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receipt: Receipt(m.receipt_handle.unwrap_or_default()),
                    receive_count,
                }
            })
            .collect())
    }

    /// Deletes received messages, 10 a request.
    pub async fn delete_batch(&self, receipts: Vec<Receipt>) -> Result<(), AwsError> {
        self.batched(
            "DeleteMessageBatch",
            &receipts,
            |_| 0,
            MAX_BATCH_BYTES,
            |entries| async move {
                let entries = entries
                    .into_iter()
                    .map(|(id, receipt)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(id)
                            .receipt_handle(receipt.0.as_str())
                            .build()
                            .expect("id and receipt are set")
                    })
                    .collect();
                let out = self
                    .client()
                    .delete_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| SqsClient::err("DeleteMessageBatch", &self.url, e))?;
                Ok(out.failed)
            },
        )
        .await
    }

    /// Hides a received message for `timeout` from now (0: visible at once).
    pub async fn change_visibility(
        &self,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<(), AwsError> {
        self.client()
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(visibility_secs(timeout))
            .send()
            .await
            .map_err(|e| SqsClient::err("ChangeMessageVisibility", &self.url, e))?;
        Ok(())
    }

    /// [`Self::change_visibility`] for many messages, 10 a request.
    pub async fn change_visibility_batch(
        &self,
        changes: Vec<(Receipt, Duration)>,
    ) -> Result<(), AwsError> {
        self.batched(
            "ChangeMessageVisibilityBatch",
            &changes,
            |_| 0,
            MAX_BATCH_BYTES,
            |entries| async move {
                let entries = entries
                    .into_iter()
                    .map(|(id, (receipt, timeout))| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(id)
                            .receipt_handle(receipt.0.as_str())
                            .visibility_timeout(visibility_secs(*timeout))
                            .build()
                            .expect("id and receipt are set")
                    })
                    .collect();
                let out = self
                    .client()
                    .change_message_visibility_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| SqsClient::err("ChangeMessageVisibilityBatch", &self.url, e))?;
                Ok(out.failed)
            },
        )
        .await
    }

    /// Takes a message that is not ours out of the way: to the dead-letter queue
    /// if there is one (with the reason as a message attribute), else deleted.
    async fn move_aside(&self, message: &RawMessage, reason: &str) {
        tracing::warn!(
            queue = %self.url,
            message_id = %message.message_id,
            dead_letter = ?self.dead_letter_url,
            %reason,
            "undecodable message taken out of the queue"
        );
        if let Some(dlq) = &self.dead_letter_url {
            let sent = self
                .client()
                .send_message()
                .queue_url(dlq)
                .message_body(&message.body)
                .message_attributes(
                    "cloudkon-reason",
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(reason)
                        .build()
                        .expect("data type is set"),
                )
                .send()
                .await;
            if let Err(e) = sent {
                // Leave it in place: the redrive policy moves it after
                // maxReceiveCount receives anyway.
                tracing::warn!(
                    message_id = %message.message_id,
                    error = %SqsClient::err("SendMessage", dlq, e),
                    "could not move the message to the dead-letter queue; left in place"
                );
                return;
            }
        }
        if let Err(e) = self.delete_batch(vec![message.receipt.clone()]).await {
            tracing::warn!(message_id = %message.message_id, error = %e, "could not delete the undecodable message");
        }
    }

    /// Sends a results message to this (response) queue.
    pub async fn send_results(&self, results: &wire::ResultsMessage) -> Result<(), AwsError> {
        let body = wire::encode_results(results, SQS_MAX_MESSAGE_BYTES).map_err(|e| {
            AwsError::new(
                SERVICE,
                "SendMessageBatch",
                &self.url,
                ErrorKind::Permanent,
                e.to_string(),
            )
        })?;
        self.send_bodies(vec![body]).await
    }

    /// Receives results messages; like [`TaskQueue::receive`], what does not
    /// decode is moved aside. Each comes with its receipt, to delete it once
    /// counted.
    pub async fn receive_results(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(wire::ResultsMessage, Receipt)>, AwsError> {
        let mut out = Vec::new();
        for message in self.receive_raw(max, wait).await? {
            match wire::decode_results(&message.body) {
                Ok(results) => out.push((results, message.receipt)),
                Err(e) => self.move_aside(&message, &e.to_string()).await,
            }
        }
        Ok(out)
    }
}

/// A long poll's wait as SQS takes it: whole seconds, rounded up, at most 20.
fn wait_secs(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs).min(MAX_WAIT)
}

fn visibility_secs(timeout: Duration) -> i32 {
    // SQS takes whole seconds up to 12 hours; round up so "at least" holds.
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    secs.min(12 * 3600) as i32
}

fn queue_error(e: AwsError) -> QueueError {
    match e.kind {
        ErrorKind::NotFound => QueueError::NotFound(e.to_string()),
        _ => QueueError::Backend(e.to_string()),
    }
}

impl TaskQueue for SqsQueue {
    async fn send(&self, bundles: Vec<Bundle>) -> Result<(), QueueError> {
        let mut bodies = Vec::with_capacity(bundles.len());
        for bundle in &bundles {
            let parts = wire::encode_bundle_within(bundle, SQS_MAX_MESSAGE_BYTES)
                .map_err(|e| QueueError::Backend(format!("cannot send to {}: {e}", self.url)))?;
            bodies.extend(parts);
        }
        self.send_bodies(bodies).await.map_err(queue_error)
    }

    /// Never `Ok(None)`: an SQS queue has no end.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<Delivery>>, QueueError> {
        let messages = self.receive_raw(max, wait).await.map_err(queue_error)?;
        let mut out = Vec::with_capacity(messages.len());
        for message in messages {
            match wire::decode_bundle(&message.body) {
                Ok(bundle) => out.push(Delivery {
                    bundle,
                    receipt: Some(message.receipt),
                    receive_count: message.receive_count,
                }),
                Err(e) => self.move_aside(&message, &e.to_string()).await,
            }
        }
        Ok(Some(out))
    }

    async fn ack(&self, receipts: Vec<Receipt>) -> Result<(), QueueError> {
        self.delete_batch(receipts).await.map_err(queue_error)
    }

    async fn extend(&self, receipt: &Receipt, timeout: Duration) -> Result<(), QueueError> {
        self.change_visibility(receipt, timeout)
            .await
            .map_err(queue_error)
    }

    async fn release(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.change_visibility(receipt, Duration::ZERO)
            .await
            .map_err(queue_error)
    }
}

/// Results go to the response queue each bundle names: any queue URL, through
/// the same client.
impl ResultRouter for SqsClient {
    async fn send_results(&self, reply_to: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        self.at(reply_to)
            .send_bodies(bodies)
            .await
            .map_err(queue_error)
    }
}

/// A response queue, for the side that counts its results.
impl ResultsInbox for SqsQueue {
    async fn receive_results(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(wire::ResultsMessage, Receipt)>, QueueError> {
        SqsQueue::receive_results(self, max, wait)
            .await
            .map_err(queue_error)
    }

    async fn ack_results(&self, receipts: Vec<Receipt>) -> Result<(), QueueError> {
        self.delete_batch(receipts).await.map_err(queue_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_ten_entries_and_the_byte_limit() {
        assert_eq!(plan_batches(&[], 10, 100), Vec::<Range<usize>>::new());
        assert_eq!(plan_batches(&[1; 25], 10, 100), vec![0..10, 10..20, 20..25]);
        assert_eq!(
            plan_batches(&[40, 40, 40, 10, 90, 10], 10, 100),
            vec![0..2, 2..4, 4..6]
        );
        // Exactly at the limit fits; an oversized entry goes alone.
        assert_eq!(
            plan_batches(&[50, 50, 150, 1], 10, 100),
            vec![0..2, 2..3, 3..4]
        );
    }

    #[test]
    fn long_poll_waits_round_up_to_whole_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(wait_secs(Duration::ZERO), Duration::ZERO);
        assert_eq!(wait_secs(ms(1)), ms(1000));
        assert_eq!(wait_secs(ms(500)), ms(1000));
        assert_eq!(wait_secs(ms(2000)), ms(2000));
        assert_eq!(wait_secs(ms(60_000)), ms(20_000));
    }

    #[test]
    fn visibility_rounds_up_to_whole_seconds_within_limits() {
        assert_eq!(visibility_secs(Duration::ZERO), 0);
        assert_eq!(visibility_secs(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_secs(Duration::from_secs(30)), 30);
        assert_eq!(visibility_secs(Duration::from_secs(100_000)), 43_200);
    }
}
