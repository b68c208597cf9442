//! Loading the SDK configuration, with timeouts and retries that suit a system
//! that must keep going when a service stalls.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use super::stats::{CountRequests, RequestStats};
use super::{DynamoLedger, S3Store, SqsClient};

/// Timeouts and retries for every AWS call.
#[derive(Clone, Copy, Debug)]
pub struct AwsSettings {
    /// One attempt of one call gives up after this. Without it a server that
    /// accepts connections and never answers (paused, overloaded) hangs the call
    /// forever. SQS long polls add their wait time to it.
    pub attempt_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per call, the first included (the SDK's standard retry mode:
    /// exponential backoff with jitter on throttling, timeouts and 5xx).
    pub max_attempts: u32,
    pub max_backoff: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            max_attempts: 4,
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl AwsSettings {
    /// The timeouts of one call that may wait `extra` on the server by design
    /// (an SQS long poll).
    pub(crate) fn timeouts(&self, extra: Duration) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout + extra)
            .operation_attempt_timeout(self.attempt_timeout + extra)
            .build()
    }

    fn retries(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts.max(1))
            .with_max_backoff(self.max_backoff)
    }
}

/// The SDK's own hyper + rustls client, with ring as the crypto provider (see the
/// workspace Cargo.toml: aws-lc's C build is too slow for a cold build). Used by
/// every client, and by the credential providers (STS for IRSA, IMDS).
fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The loaded configuration and the request counters every client shares.
#[derive(Clone, Debug)]
pub struct Aws {
    sdk: SdkConfig,
    settings: AwsSettings,
    stats: RequestStats,
}

impl Aws {
    /// The standard chain with [`AwsSettings::default`].
    pub async fn load() -> Self {
        Self::load_with(AwsSettings::default()).await
    }

    pub async fn load_with(settings: AwsSettings) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .timeout_config(settings.timeouts(Duration::ZERO))
            .retry_config(settings.retries())
            .load()
            .await;
        tracing::debug!(region = ?sdk.region(), "AWS configuration loaded");
        Self {
            sdk,
            settings,
            stats: RequestStats::default(),
        }
    }

    /// A configuration made by the caller (a test's, whose clients must
    /// not look for credentials or a region on the way).
    pub fn from_sdk_config(sdk: SdkConfig, settings: AwsSettings) -> Self {
        Self {
            sdk,
            settings,
            stats: RequestStats::default(),
        }
    }

    /// Requests made by every client handed out by this value.
    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    /// The same configuration whose clients count their requests apart
    /// (and in this value's counters too): one batch's share.
    pub fn counted_apart(&self) -> Aws {
        Aws {
            sdk: self.sdk.clone(),
            settings: self.settings,
            stats: self.stats.child(),
        }
    }

    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk
    }

    pub fn sqs(&self) -> SqsClient {
        let config = aws_sdk_sqs::config::Builder::from(&self.sdk)
            .interceptor(CountRequests(self.stats.clone()))
            .build();
        SqsClient::new(
            aws_sdk_sqs::Client::from_conf(config),
            self.settings,
            self.stats.clone(),
        )
    }

    /// The dedup ledger in `table` (see [`DynamoLedger::ensure_table`]).
    pub fn ledger(&self, table: impl Into<String>) -> DynamoLedger {
        self.ledger_with(table, aws_sdk_dynamodb::config::Builder::from(&self.sdk))
    }

    /// [`Aws::ledger`] whose requests go to `endpoint` (a proxy in front of
    /// DynamoDB) whatever the environment says.
    pub fn ledger_at(&self, table: impl Into<String>, endpoint: &str) -> DynamoLedger {
        let config = aws_sdk_dynamodb::config::Builder::from(&self.sdk).endpoint_url(endpoint);
        self.ledger_with(table, config)
    }

    fn ledger_with(
        &self,
        table: impl Into<String>,
        config: aws_sdk_dynamodb::config::Builder,
    ) -> DynamoLedger {
        let config = config
            .interceptor(CountRequests(self.stats.clone()))
            .build();
        DynamoLedger::new(
            aws_sdk_dynamodb::Client::from_conf(config),
            table.into(),
            self.stats.clone(),
        )
    }

    pub fn s3(&self) -> S3Store {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk)
            // Bucket names with dots, and S3-compatible servers, need path style.
            .force_path_style(true)
            .interceptor(CountRequests(self.stats.clone()))
            .build();
        S3Store::new(aws_sdk_s3::Client::from_conf(config), self.settings)
    }
}
