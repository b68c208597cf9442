//! Queue administration: creating queues (with their dead-letter queues),
//! finding them by name or URL, their counts, deleting and purging.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

use super::data::visibility_secs;
use super::{QueueStats, SERVICE, SqsClient, SqsQueue};
use crate::aws::error::{AwsError, ErrorKind};

/// The longest SQS keeps a message.
pub const MAX_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// How to create a queue.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// How long a received message stays hidden before it is delivered again.
    pub visibility_timeout: Duration,
    /// How long a message is kept: a bundle waits this long for a worker,
    /// results this long for their collector.
    pub retention: Duration,
    /// Create `<name>-dlq` and move a message there after this many receives.
    pub max_receives: Option<u32>,
    /// Create `<name>-pri` as well, with the same settings and dead-letter
    /// queue: the pool's priority lane (see [`crate::queue::Lanes`]).
    pub priority_lane: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            // SQS's longest, not its default 4 days: a batch whose pool has no
            // room for days must still find its bundles when workers come.
            retention: MAX_RETENTION,
            max_receives: None,
            priority_lane: false,
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

/// A queue's own attributes for `options` (its redrive policy apart). The
/// visibility timeout is rounded up to whole seconds, as receives round theirs:
/// a message is hidden at least as long as asked (500 ms is 1 s, not 0).
fn queue_attributes(options: &QueueOptions) -> HashMap<QueueAttributeName, String> {
    HashMap::from([
        (
            QueueAttributeName::VisibilityTimeout,
            visibility_secs(options.visibility_timeout).to_string(),
        ),
        (
            QueueAttributeName::MessageRetentionPeriod,
            options.retention.as_secs().to_string(),
        ),
    ])
}

impl SqsClient {
    /// Creates a queue (and its dead-letter queue), or takes the existing one
    /// and gives it these settings: SQS refuses a CreateQueue whose settings
    /// differ from the queue's (`QueueNameExists`), and a queue made by an
    /// older version, or before its pool's `maxReceives` changed, must not
    /// stop its pool or batch.
    pub async fn create_queue(
        &self,
        name: &str,
        options: &QueueOptions,
    ) -> Result<SqsQueue, AwsError> {
        let mut attributes = queue_attributes(options);
        let mut dead_letter_url = None;
        if let Some(max_receives) = options.max_receives {
            let dlq_name = format!("{name}-dlq");
            // The longest retention: a dead letter is kept for inspection.
            let dlq_attributes = HashMap::from([(
                QueueAttributeName::MessageRetentionPeriod,
                MAX_RETENTION.as_secs().to_string(),
            )]);
            let dlq_url = self.ensure(&dlq_name, dlq_attributes).await?;
            let arn = self.queue_arn(&dlq_url).await?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": max_receives,
            });
            attributes.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
            dead_letter_url = Some(dlq_url);
        }
        if options.priority_lane {
            let lane = format!("{name}{}", super::PRIORITY_LANE_SUFFIX);
            self.ensure(&lane, attributes.clone()).await?;
        }
        let url = self.ensure(name, attributes).await?;
        tracing::info!(%url, dead_letter = ?dead_letter_url, priority_lane = options.priority_lane, "queue ready");
        Ok(SqsQueue {
            sqs: self.clone(),
            url,
            dead_letter_url,
            receive_visibility: None,
        })
    }

    /// The URL of queue `name`, created with `attributes` or set to them.
    async fn ensure(
        &self,
        name: &str,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> Result<String, AwsError> {
        let created = self
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes.clone()))
            .send()
            .await;
        let out = match created {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(name_exists) => {
                let url = self.url_of(name).await?;
                self.client
                    .set_queue_attributes()
                    .queue_url(&url)
                    .set_attributes(Some(attributes))
                    .send()
                    .await
                    .map_err(|e| Self::err("SetQueueAttributes", &url, e))?;
                tracing::info!(%url, "the queue existed with other settings: it has these now");
                return Ok(url);
            }
            Err(e) => return Err(Self::err("CreateQueue", name, e)),
        };
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
        self.attributes_of(url, vec![name]).await
    }

    async fn attributes_of(
        &self,
        url: &str,
        names: Vec<QueueAttributeName>,
    ) -> Result<HashMap<QueueAttributeName, String>, AwsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names))
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
                    // A dead-letter queue deleted first (by hand, or by a
                    // pool's deletion) leaves the queue usable: reported
                    // missing, the queue was taken for deleted and kept.
                    Some(dlq_name) => match self.url_of(dlq_name).await {
                        Ok(dlq) => Some(dlq),
                        Err(e) if e.kind == ErrorKind::NotFound => {
                            tracing::warn!(%url, dead_letter_queue = dlq_name, "the queue's dead-letter queue is gone: opened without it");
                            None
                        }
                        Err(e) => return Err(e),
                    },
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
            receive_visibility: None,
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
}

/// SQS names this error by its query-protocol code
/// (`AWS.SimpleQueueService.QueueNameExists`), which the SDK does not map to
/// its own variant; older servers say `QueueAlreadyExists`.
fn name_exists(e: &aws_sdk_sqs::operation::create_queue::CreateQueueError) -> bool {
    use aws_sdk_sqs::error::ProvideErrorMetadata as _;
    e.is_queue_name_exists()
        || e.code()
            .is_some_and(|c| c.ends_with("QueueNameExists") || c.ends_with("QueueAlreadyExists"))
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

impl SqsQueue {
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

    /// The queue's settings as SQS has them (what [`SqsClient::create_queue`]
    /// sets); a number SQS does not give reads as zero, a missing redrive
    /// policy as no `max_receives`.
    pub async fn options(&self) -> Result<QueueOptions, AwsError> {
        let attributes = self
            .sqs
            .attributes_of(
                &self.url,
                vec![
                    QueueAttributeName::VisibilityTimeout,
                    QueueAttributeName::MessageRetentionPeriod,
                    QueueAttributeName::RedrivePolicy,
                ],
            )
            .await?;
        let secs = |name: QueueAttributeName| {
            Duration::from_secs(
                attributes
                    .get(&name)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )
        };
        let max_receives = attributes
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|v| match &v["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .and_then(|n| u32::try_from(n).ok());
        Ok(QueueOptions {
            visibility_timeout: secs(QueueAttributeName::VisibilityTimeout),
            retention: secs(QueueAttributeName::MessageRetentionPeriod),
            max_receives,
            // Whether it has a priority lane is not an attribute of its own.
            priority_lane: false,
        })
    }

    pub async fn stats(&self) -> Result<QueueStats, AwsError> {
        let attributes = self
            .sqs
            .attributes_of(
                &self.url,
                vec![
                    QueueAttributeName::ApproximateNumberOfMessages,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                ],
            )
            .await?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visibility(timeout: Duration) -> String {
        let options = QueueOptions {
            visibility_timeout: timeout,
            ..QueueOptions::default()
        };
        queue_attributes(&options)[&QueueAttributeName::VisibilityTimeout].clone()
    }

    #[test]
    fn a_queue_hides_a_message_at_least_its_visibility_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(visibility(ms(500)), "1");
        assert_eq!(visibility(ms(1500)), "2");
        assert_eq!(visibility(ms(30_000)), "30");
        assert_eq!(visibility(Duration::ZERO), "0");
        // As a receive's own visibility: SQS's 12 hours at most.
        assert_eq!(visibility(Duration::from_secs(13 * 3600)), "43200");
        let options = QueueOptions::default();
        assert_eq!(
            queue_attributes(&options)[&QueueAttributeName::MessageRetentionPeriod],
            MAX_RETENTION.as_secs().to_string()
        );
    }
}
