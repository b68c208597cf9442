//! One error type for every AWS call: which service, operation and resource
//! failed, the service's error code, and whether trying later may help.

use std::error::Error as StdError;
use std::fmt::Debug;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// What kind of failure, for the caller's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The queue, table, bucket or key does not exist.
    NotFound,
    /// Timeouts, connection failures, throttling, 5xx, after the SDK's own
    /// retries: the same call may succeed later.
    Transient,
    /// Anything else (bad input, access denied, a limit): retrying will not help.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
#[error("{service} {operation} on {resource}: {message}")]
pub struct AwsError {
    pub service: &'static str,
    pub operation: &'static str,
    /// The queue URL, table name, `s3://bucket/key`...
    pub resource: String,
    /// The service's error code (`QueueDoesNotExist`, `NoSuchKey`...), if any.
    pub code: Option<String>,
    pub kind: ErrorKind,
    pub message: String,
}

impl AwsError {
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    pub(crate) fn new(
        service: &'static str,
        operation: &'static str,
        resource: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            service,
            operation,
            resource: resource.into(),
            code: None,
            kind,
            message: message.into(),
        }
    }

    /// From an SDK error: a service's answer as its code and message, a
    /// transport failure with its whole chain of causes. Public so that the
    /// operator's EC2 clients render their errors the same way.
    pub fn sdk<E, R>(
        service: &'static str,
        operation: &'static str,
        resource: impl Into<String>,
        err: SdkError<E, R>,
    ) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: Debug,
    {
        let code = err.code().map(str::to_string);
        let kind = match &err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Transient,
            SdkError::ResponseError(_) => ErrorKind::Transient,
            SdkError::ServiceError(_) => classify(code.as_deref()),
            _ => ErrorKind::Permanent,
        };
        // A service's answer is its code and message; the raw response would
        // only bury them. Transport failures need their chain of causes.
        let message = match (&err, code.as_deref(), err.message()) {
            (SdkError::ServiceError(_), Some(code), Some(message)) => format!("{code}: {message}"),
            (SdkError::ServiceError(_), Some(code), None) => code.to_string(),
            _ => cause_chain(&err),
        };
        Self {
            service,
            operation,
            resource: resource.into(),
            kind,
            message,
            code,
        }
    }
}

/// "outer: cause: root cause", without the debug dump the SDK's own rendering
/// appends, and without a cause that repeats its parent's text.
fn cause_chain(err: &dyn StdError) -> String {
    let mut parts = vec![err.to_string()];
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn classify(code: Option<&str>) -> ErrorKind {
    match code.unwrap_or("") {
        "QueueDoesNotExist"
        | "AWS.SimpleQueueService.NonExistentQueue"
        | "ResourceNotFoundException"
        | "NoSuchBucket"
        | "NoSuchKey"
        | "NotFound" => ErrorKind::NotFound,
        "ThrottlingException"
        | "Throttling"
        | "RequestThrottled"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "InternalServerError"
        | "InternalError"
        | "ServiceUnavailable"
        | "SlowDown" => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}
