//! A simulation's configuration: one pool, its workers and the simulated AWS
//! services, and the batches that arrive on it (YAML, camelCase like the
//! CRDs; `examples/simulations/` has examples).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::dist::Durations;
use crate::crd::taskbatch::TaskOrder;
use crate::crd::workerpool::ScalingBehavior;
use crate::scale::ScaleConfig;
use crate::scale::{Behavior, DEFAULT_TARGET_BACKLOG_PER_WORKER, DEFAULT_TARGET_DRAIN_SECONDS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimConfig {
    /// A name for the report (default: the file's name).
    #[serde(default)]
    pub name: String,
    /// Seeds every random choice: the same seed, the same run.
    #[serde(default = "one")]
    pub seed: u64,
    pub pool: PoolConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub aws: AwsConfig,
    pub batches: Vec<BatchConfig>,
    #[serde(default)]
    pub disruptions: Disruptions,
    /// Queue depth and workers are sampled this often (seconds) for the plots.
    #[serde(default = "ten")]
    pub sample_seconds: f64,
    /// The simulation stops here whatever is left (simulated seconds).
    #[serde(default = "day")]
    pub max_seconds: f64,
    /// What the run should achieve; checked and printed with the report.
    #[serde(default)]
    pub targets: Targets,
}

/// The WorkerPool: its `workers` and `behavior`, as in the CRD.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub min: i32,
    pub max: i32,
    /// Slots per worker (`template.threads`).
    pub threads: u32,
    #[serde(default)]
    pub target_backlog_per_worker: Option<i32>,
    #[serde(default)]
    pub target_drain_seconds: Option<u64>,
    #[serde(default)]
    pub behavior: Option<ScalingBehavior>,
    /// The pool has a priority lane (default; a pool made before lanes, or
    /// whose lane was deleted, has not): see `shares::priority_lane`.
    #[serde(default = "yes")]
    pub priority_lane: bool,
    /// The runner marks the other batches in the ledger after a send to
    /// the lane, and workers whose slots they fill look at the lane when
    /// they read the mark (default; `false`: workers and operators from
    /// before the marks, whose workers look at the lane only as they
    /// receive).
    #[serde(default = "yes")]
    pub lane_marks: bool,
}

/// `cloudkon-worker`'s settings and how a worker comes up.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerConfig {
    /// From being asked for to receiving (pod scheduling, node start, image).
    pub startup_seconds: f64,
    /// Plus a uniform random part up to this.
    pub startup_jitter_seconds: f64,
    pub lease_seconds: f64,
    pub linger_ms: f64,
    /// How often a worker asks whether each batch it holds was cancelled
    /// (`--cancel-check`).
    pub cancel_check_seconds: f64,
    pub receive_wait_seconds: f64,
    pub prefetch: usize,
    pub grace_seconds: f64,
    pub max_claims: u32,
    /// Executions of a failing task, the first included (`--max-attempts`).
    pub max_attempts: u32,
    pub retry_backoff_seconds: f64,
    /// Added to every task's run (process start, executor).
    pub task_overhead_ms: f64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            startup_seconds: 60.0,
            startup_jitter_seconds: 0.0,
            lease_seconds: 60.0,
            linger_ms: 5000.0,
            cancel_check_seconds: 3.0,
            receive_wait_seconds: 10.0,
            prefetch: 2,
            grace_seconds: 25.0,
            max_claims: 3,
            max_attempts: 3,
            retry_backoff_seconds: 1.0,
            task_overhead_ms: 0.0,
        }
    }
}

/// The simulated services: latency per request, DynamoDB's write capacity,
/// and prices.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsConfig {
    pub sqs_latency_ms: f64,
    pub dynamodb_latency_ms: f64,
    /// Writes per second before DynamoDB throttles (0: no limit); a throttled
    /// write waits for capacity and costs one more request (the SDK's retry).
    pub dynamodb_writes_per_second: f64,
    /// Receives of a message before SQS moves it to the dead-letter queue.
    pub max_receives: u32,
    /// Dollars per million SQS requests.
    pub sqs_per_million: f64,
    /// Dollars per million DynamoDB write / read requests (on demand).
    pub dynamodb_write_per_million: f64,
    pub dynamodb_read_per_million: f64,
    /// Dollars per worker-hour, from being asked for to gone.
    pub worker_per_hour: f64,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            sqs_latency_ms: 10.0,
            dynamodb_latency_ms: 5.0,
            dynamodb_writes_per_second: 0.0,
            max_receives: 5,
            sqs_per_million: 0.40,
            dynamodb_write_per_million: 1.25,
            dynamodb_read_per_million: 0.25,
            worker_per_hour: 0.10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchConfig {
    pub name: String,
    pub tasks: u64,
    #[serde(default = "one")]
    pub weight: u64,
    /// When the TaskBatch is applied (simulated seconds).
    #[serde(default)]
    pub arrival_seconds: f64,
    pub durations: Durations,
    /// Each task declares its length (a `sleep` of it); otherwise they are
    /// of unknown length (`run`) and the operator learns it.
    #[serde(default)]
    pub declared: bool,
    /// The TaskBatch's `order` (default `longestFirst`, which only changes
    /// the order of tasks that declare lengths).
    #[serde(default)]
    pub order: TaskOrder,
    /// Probability that an execution of a task fails (retried by the worker).
    #[serde(default)]
    pub failure_rate: f64,
}

/// Workers lost during the run, spread evenly over `fromSeconds..toSeconds`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Disruptions {
    /// Spot interruptions, as a fraction of `pool.max`: a notice, the worker
    /// drains (SIGTERM, grace), and the node is gone `noticeSeconds` later.
    pub spot_fraction: f64,
    pub notice_seconds: f64,
    /// Workers killed outright (kill -9, a node failing), as a fraction of `pool.max`.
    pub crash_fraction: f64,
    pub from_seconds: f64,
    pub to_seconds: f64,
}

impl Default for Disruptions {
    fn default() -> Self {
        Self {
            spot_fraction: 0.0,
            notice_seconds: 120.0,
            crash_fraction: 0.0,
            from_seconds: 0.0,
            to_seconds: 0.0,
        }
    }
}

/// Pass marks printed with the report (unset: not checked).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Targets {
    pub makespan_over_ideal: Option<f64>,
    /// Makespan over the list-schedule bound (the scheduler's own cost).
    pub makespan_over_list_bound: Option<f64>,
    pub requests_per_task: Option<f64>,
    pub tail_idle_fraction: Option<f64>,
    pub share_error: Option<f64>,
    pub wall_seconds: Option<f64>,
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}
fn ten() -> f64 {
    10.0
}
fn day() -> f64 {
    86_400.0
}

impl SimConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: shown.clone(),
                source,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: shown.clone(),
                message,
            },
            other => other,
        })?;
        if config.name.is_empty() {
            config.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: SimConfig =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: String::new(),
                source,
            })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: String::new(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.pool.max < 1 || self.pool.threads < 1 {
            return Err("pool.max and pool.threads must be at least 1".into());
        }
        if self.batches.is_empty() {
            return Err("no batches".into());
        }
        if self.sample_seconds <= 0.0 {
            return Err("sampleSeconds must be positive".into());
        }
        // As `cloudkon-worker --cancel-check` takes it.
        if !(0.1..=3600.0).contains(&self.worker.cancel_check_seconds) {
            return Err("worker.cancelCheckSeconds must be in [0.1, 3600]".into());
        }
        // The worker cuts a longer `--results-linger` to its maximum: a run
        // past it would show what no worker does.
        let max_linger = cloudkon_worker::remote::MAX_RESULTS_LINGER.as_secs_f64() * 1000.0;
        if !(0.0..=max_linger).contains(&self.worker.linger_ms) {
            return Err(format!(
                "worker.lingerMs must be in [0, {max_linger}] (cloudkon-worker takes at most {:?})",
                cloudkon_worker::remote::MAX_RESULTS_LINGER
            ));
        }
        for b in &self.batches {
            if b.tasks == 0 {
                return Err(format!("batch {}: no tasks", b.name));
            }
            if !(0.0..1.0).contains(&b.failure_rate) {
                return Err(format!("batch {}: failureRate must be in [0, 1)", b.name));
            }
        }
        Ok(())
    }

    /// The pool's scaler settings, as `ScaleConfig::from_spec` makes them.
    pub fn scale_config(&self) -> ScaleConfig {
        let p = &self.pool;
        ScaleConfig {
            min: p.min,
            max: p.max,
            target_backlog_per_worker: p
                .target_backlog_per_worker
                .unwrap_or(DEFAULT_TARGET_BACKLOG_PER_WORKER),
            target_drain: Duration::from_secs(
                p.target_drain_seconds
                    .unwrap_or(DEFAULT_TARGET_DRAIN_SECONDS),
            ),
            slots_per_worker: u64::from(p.threads),
            behavior: Behavior::from_spec(p.behavior.as_ref()),
            external_replicas: None,
        }
    }
}
