//! The data path: sending, receiving, deleting and hiding messages in
//! batches, and the queue traits the workers and the operator use.

use std::ops::Range;
use std::time::Duration;

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use futures_util::StreamExt as _;

use super::{RawMessage, SERVICE, SqsClient, SqsQueue};
use crate::aws::error::{AwsError, ErrorKind};
use crate::bundle::Bundle;
use crate::queue::{Delivery, QueueError, Receipt, ResultRouter, ResultsInbox, TaskQueue};
use crate::wire::{self, SQS_MAX_BATCH_ENTRIES, SQS_MAX_MESSAGE_BYTES};

/// SQS takes at most 10 entries per batch request, and 256 KiB in all.
const MAX_BATCH_ENTRIES: usize = SQS_MAX_BATCH_ENTRIES;
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
            .set_visibility_timeout(self.receive_visibility.map(visibility_secs))
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

    /// Moves up to `max` of this queue's visible messages to `to`, as they
    /// are (a pool's priority lane that no worker reads, to its queue): each
    /// is sent there before it is deleted here, so none is lost; one whose
    /// delete fails comes back here after its visibility timeout, and the
    /// ledger runs its bundle once. Returns how many moved.
    pub async fn move_visible_to(&self, to: &SqsQueue, max: usize) -> Result<usize, AwsError> {
        let mut moved = 0;
        while moved < max {
            let got = self
                .receive_raw((max - moved).min(MAX_BATCH_ENTRIES), Duration::ZERO)
                .await?;
            if got.is_empty() {
                break;
            }
            let (bodies, receipts): (Vec<_>, Vec<_>) =
                got.into_iter().map(|m| (m.body, m.receipt)).unzip();
            moved += bodies.len();
            to.send_bodies(bodies).await?;
            self.delete_batch(receipts).await?;
        }
        Ok(moved)
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

    /// A message that does not decode: one of a newer release is hidden for
    /// [`NEWER_VERSION_WAIT`] and left for a newer reader (a rolling
    /// upgrade: moved aside, newer results were deleted, newer bundles
    /// reported failed from the dead-letter queue); anything else is moved
    /// aside.
    async fn undecodable(&self, message: &RawMessage, error: &wire::WireError) {
        if !error.is_newer() {
            return self.move_aside(message, &error.to_string()).await;
        }
        tracing::warn!(
            queue = %self.url,
            message_id = %message.message_id,
            %error,
            "a message of a newer release: left for a newer reader (is an upgrade under way?)"
        );
        if let Err(e) = self
            .change_visibility(&message.receipt, NEWER_VERSION_WAIT)
            .await
        {
            tracing::debug!(message_id = %message.message_id, error = %e, "could not hide the newer message; it shows again after the queue's visibility timeout");
        }
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
                Err(e) => self.undecodable(&message, &e).await,
            }
        }
        Ok(out)
    }
}

/// How long a message of a newer release is hidden from this one's readers.
const NEWER_VERSION_WAIT: Duration = Duration::from_secs(60);

/// A long poll's wait as SQS takes it: whole seconds, rounded up, at most 20.
fn wait_secs(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs).min(MAX_WAIT)
}

pub(crate) fn visibility_secs(timeout: Duration) -> i32 {
    // SQS takes whole seconds up to 12 hours; round up so "at least" holds.
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    secs.min(12 * 3600) as i32
}

fn queue_error(e: AwsError) -> QueueError {
    match e.kind {
        ErrorKind::NotFound => QueueError::NotFound(e.to_string()),
        ErrorKind::Permanent => QueueError::Refused(e.to_string()),
        _ => QueueError::Backend(e.to_string()),
    }
}

impl TaskQueue for SqsQueue {
    async fn send(&self, bundles: Vec<Bundle>) -> Result<(), QueueError> {
        let mut bodies = Vec::with_capacity(bundles.len());
        for bundle in &bundles {
            // A task too large for a message is refused at every send.
            let parts = wire::encode_bundle_within(bundle, SQS_MAX_MESSAGE_BYTES)
                .map_err(|e| QueueError::Refused(format!("cannot send to {}: {e}", self.url)))?;
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
                    priority: false,
                }),
                Err(e) => self.undecodable(&message, &e).await,
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

    async fn extend_all(
        &self,
        receipts: Vec<Receipt>,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let changes = receipts.into_iter().map(|r| (r, timeout)).collect();
        self.change_visibility_batch(changes)
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
