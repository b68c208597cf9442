//! Helpers shared by the tests that talk to the AWS test servers
//! (`scripts/aws-servers`; `scripts/test` starts them).
#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use cloudkon_core::Bundle;
use cloudkon_core::aws::{Aws, AwsSettings};
use cloudkon_core::task::{BatchId, Task, TaskSpec, Timestamp};

/// The SDK configuration, pointed at the test servers. Refuses to run against
/// real AWS: the endpoints must be set.
pub async fn aws() -> Aws {
    aws_with(AwsSettings::default()).await
}

pub async fn aws_with(settings: AwsSettings) -> Aws {
    cloudkon_testkit::require_aws_servers();
    Aws::load_with(settings).await
}

pub use cloudkon_testkit::unique;

pub fn sleep0_bundle(batch: &str, first: u64, n: u64) -> Bundle {
    Bundle {
        submitted: Timestamp::now(),
        tasks: (first..first + n)
            .map(|id| Task {
                batch: BatchId::new(batch),
                id,
                attempt: 1,
                timeout: None,
                spec: TaskSpec::Sleep { ms: 0 },
            })
            .collect(),
        reply_to: None,
        options: Default::default(),
    }
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
