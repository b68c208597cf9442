//! The cloud backends: SQS task queues, the DynamoDB dedup ledger, S3 storage.
//!
//! [`Aws::load`] reads the SDK configuration from the standard chain (environment,
//! profile, web identity for IRSA, IMDS; `AWS_ENDPOINT_URL_<SERVICE>` points a
//! service elsewhere) and hands out clients that share one [`RequestStats`], so
//! the program itself counts what it asks of AWS, request by request.

mod config;
mod error;
mod ledger;
mod s3;
mod sqs;
mod stats;

pub use crate::usage::Prices;
pub use config::{Aws, AwsSettings};
pub use error::{AwsError, ErrorKind};
pub use ledger::{DEFAULT_RESULT_TTL, DynamoLedger, WorkerHeartbeat};
pub use s3::{
    Limited, ObjectReader, S3Store, S3Uri, S3UriError, VideoPlaceError, check_video_place,
};
pub use sqs::{
    PRIORITY_LANE_SUFFIX, QueueOptions, QueueStats, RawMessage, SqsClient, SqsQueue,
    bounded_queue_name, queue_name_chars,
};
pub use stats::{RequestStats, StatsSnapshot};
