//! One error type for every AWS call: which service, operation and resource
//! failed, the service's error code, and whether trying later may help.

use std::error::Error as StdError;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
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
    pub fn sdk<E>(
        service: &'static str,
        operation: &'static str,
        resource: impl Into<String>,
        err: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_string);
        // The server's trouble or a rate limit, whatever the code says (or
        // when it says none: a proxy's or an endpoint's bare 503): an outage
        // taken for a refusal would have workers give up and stop their tasks.
        let busy = err
            .raw_response()
            .is_some_and(|r| r.status().is_server_error() || r.status().as_u16() == 429);
        let kind = match &err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Transient,
            SdkError::ResponseError(_) => ErrorKind::Transient,
            SdkError::ServiceError(_) => match classify(code.as_deref()) {
                ErrorKind::Permanent if busy => ErrorKind::Transient,
                kind => kind,
            },
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
        | "InternalFailure"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "TooManyRequestsException"
        | "SlowDown" => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    /// The kind of a DynamoDB answer with this HTTP status and error code.
    fn kind_of(status: u16, code: Option<&str>) -> ErrorKind {
        let mut meta = ErrorMetadata::builder();
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        let err = SdkError::service_error(UpdateItemError::generic(meta.build()), raw);
        AwsError::sdk("DynamoDB", "UpdateItem", "t", err).kind
    }

    #[test]
    fn a_servers_trouble_or_a_rate_limit_is_transient_whatever_its_code() {
        assert_eq!(kind_of(500, None), ErrorKind::Transient);
        assert_eq!(kind_of(503, Some("SomethingNew")), ErrorKind::Transient);
        assert_eq!(kind_of(429, None), ErrorKind::Transient);
        assert_eq!(kind_of(500, Some("InternalFailure")), ErrorKind::Transient);
        assert_eq!(
            kind_of(400, Some("ThrottlingException")),
            ErrorKind::Transient
        );
        // Refusals stay refusals; a missing table is said as such.
        assert_eq!(
            kind_of(400, Some("AccessDeniedException")),
            ErrorKind::Permanent
        );
        assert_eq!(kind_of(400, None), ErrorKind::Permanent);
        assert_eq!(
            kind_of(400, Some("ResourceNotFoundException")),
            ErrorKind::NotFound
        );
    }
}
