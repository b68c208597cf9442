//! A simulation's configuration: one pool, its workers and the simulated AWS
//! services, and the batches that arrive on it (YAML, camelCase like the
//! CRDs; `examples/simulations/` has examples).

use std::path::Path;

use serde::Deserialize;

use super::dist::Durations;
use crate::allowed_names::AllowedNames;
use crate::crd::taskbatch::TaskOrder;
use crate::crd::workerpool::{
    QueueSpec, ScalingBehavior, WorkerPoolSpec, WorkerTemplate, WorkersSpec,
};
use crate::scale::ScaleConfig;

/// The most tasks a config may hold, over all its batches: the simulator
/// keeps a few bits per task (collected, started) and, for tasks that
/// declare their lengths, 4 bytes of length and 8 of send order; 100 M
/// declared tasks take ~1.3 GB.
pub const MAX_TASKS: u64 = 100_000_000;
/// The most workers a pool may have here (each is simulated).
pub const MAX_WORKERS: i32 = 100_000;
/// The most task slots (`max` × `threads`): the list-schedule bound keeps
/// one entry per slot.
pub const MAX_SLOTS: u64 = 10_000_000;
/// The most samples of the plots a run may take (`maxSeconds` over
/// `sampleSeconds`).
pub const MAX_SAMPLES: f64 = 10_000_000.0;
/// The longest simulated run, in seconds (about three years).
pub const MAX_RUN_SECONDS: f64 = 100_000_000.0;
/// SQS's longest visibility timeout (12 hours): a worker's lease is its
/// messages' visibility.
pub const MAX_LEASE_SECONDS: f64 = 43_200.0;
/// SQS's longest long poll.
pub const MAX_RECEIVE_WAIT_SECONDS: f64 = 20.0;
/// The shortest SQS round trip with short polls (`receiveWaitSeconds: 0`):
/// an idle simulated worker polls once per round trip, a thousand events a
/// simulated second at this.
pub const MIN_SHORT_POLL_LATENCY_MS: f64 = 1.0;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: {source} (a simulation config is a YAML mapping of pool, worker, aws and \
         batches: see examples/simulations/)"
    )]
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
    pub target_drain_seconds: Option<i32>,
    /// As the CRD's (a type shared with it, so unknown fields in it are
    /// ignored, as the API server would prune them).
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
    /// A receive's long poll (`--receive-wait`): whole seconds, as SQS
    /// takes it (the worker rounds a fraction up); 0 is a short poll, which
    /// comes back at once, empty on an empty queue, and is made again (a
    /// request each `aws.sqsLatencyMs` while a worker waits for work).
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
    /// Receives of a message before SQS moves it to the dead-letter queue
    /// (the pool's `queue.maxReceives`: 1 to 1,000).
    pub max_receives: u32,
    /// Dollars per million SQS requests.
    pub sqs_per_million: f64,
    /// Dollars per million DynamoDB write / read requests (on demand, a
    /// request of up to 1 KB written or 4 KB read; throttled requests are
    /// not billed).
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
            // On-demand throughput in us-east-1 since AWS halved it in
            // November 2024 (from $1.25 and $0.25).
            dynamodb_write_per_million: 0.625,
            dynamodb_read_per_million: 0.125,
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
    /// This assumes the cluster drains a node on the notice (the AWS Node
    /// Termination Handler, or Karpenter), as EKS clusters with spot nodes
    /// do; without one the notice is a crash (`crashFraction`).
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

    /// Every field within what can be simulated (each problem names its
    /// field and the range it must be in), and the pool as the operator
    /// would take it (`validate::workerpool` on the spec it makes).
    fn check(&self) -> Result<(), String> {
        let mut p = Vec::new();
        let w = &self.worker;
        let a = &self.aws;
        let d = &self.disruptions;

        let run_ok = within(&mut p, "maxSeconds", self.max_seconds, 1.0, MAX_RUN_SECONDS);
        // A sample reschedules itself `sampleSeconds` on: at 0 µs, for ever.
        let min_sample = if run_ok {
            (self.max_seconds / MAX_SAMPLES).max(0.001)
        } else {
            0.001
        };
        if !(self.sample_seconds.is_finite()
            && (min_sample..=MAX_RUN_SECONDS).contains(&self.sample_seconds))
        {
            p.push(format!(
                "sampleSeconds ({}) must be from {} to {}: at least 1 ms, and maxSeconds / {} (the plots keep at most that many samples)",
                shown(self.sample_seconds),
                shown(min_sample),
                shown(MAX_RUN_SECONDS),
                shown(MAX_SAMPLES)
            ));
        }

        // Below 1, and the rest of the pool's fields, as the operator checks
        // them (below).
        if self.pool.max > MAX_WORKERS {
            p.push(format!(
                "pool.max ({}) must be from 1 to {MAX_WORKERS}",
                self.pool.max
            ));
        }
        // The CRD's schema (the operator takes an invalid one as unset).
        if let Some(s) = self.pool.target_drain_seconds
            && s < 1
        {
            p.push(format!("pool.targetDrainSeconds ({s}) must be at least 1"));
        }
        let slots = u64::from(self.pool.threads).saturating_mul(self.pool.max.max(0) as u64);
        if self.pool.max <= MAX_WORKERS && slots > MAX_SLOTS {
            p.push(format!(
                "pool.max ({}) times pool.threads ({}) must be at most {MAX_SLOTS} task slots",
                self.pool.max, self.pool.threads
            ));
        }
        if let Err(problems) =
            crate::validate::workerpool(&self.pool_spec(), "simulated", &AllowedNames::default())
        {
            p.extend(problems.iter().map(|i| simulator_field(&i.message)));
        }

        within(
            &mut p,
            "worker.startupSeconds",
            w.startup_seconds,
            0.0,
            86_400.0,
        );
        within(
            &mut p,
            "worker.startupJitterSeconds",
            w.startup_jitter_seconds,
            0.0,
            86_400.0,
        );
        // SQS's visibility timeout, in whole seconds: a lease under a second
        // is renewed every 100 ms, more often than a third of it.
        within(
            &mut p,
            "worker.leaseSeconds",
            w.lease_seconds,
            1.0,
            MAX_LEASE_SECONDS,
        );
        // The worker cuts a longer `--results-linger` to its maximum: a run
        // past it would show what no worker does.
        let max_linger = cloudkon_worker::remote::MAX_RESULTS_LINGER.as_secs_f64() * 1000.0;
        within(&mut p, "worker.lingerMs", w.linger_ms, 0.0, max_linger);
        // As `cloudkon-worker --cancel-check` takes it.
        within(
            &mut p,
            "worker.cancelCheckSeconds",
            w.cancel_check_seconds,
            0.1,
            3600.0,
        );
        within(
            &mut p,
            "worker.receiveWaitSeconds",
            w.receive_wait_seconds,
            0.0,
            MAX_RECEIVE_WAIT_SECONDS,
        );
        // Short polls, made one after the other: a simulated worker waiting
        // for work asks every `sqsLatencyMs`, at 0 for ever at one instant.
        if w.receive_wait_seconds == 0.0
            && a.sqs_latency_ms.is_finite()
            && a.sqs_latency_ms < MIN_SHORT_POLL_LATENCY_MS
        {
            p.push(format!(
                "aws.sqsLatencyMs ({}) must be at least {MIN_SHORT_POLL_LATENCY_MS} when worker.receiveWaitSeconds is 0: each short poll takes a round trip, and an idle worker makes them one after the other",
                shown(a.sqs_latency_ms)
            ));
        }
        if w.prefetch > 1000 {
            p.push(format!(
                "worker.prefetch ({}) must be from 0 to 1000",
                w.prefetch
            ));
        }
        within(
            &mut p,
            "worker.graceSeconds",
            w.grace_seconds,
            0.0,
            86_400.0,
        );
        // The worker takes 0 as 1; here a bundle would be given up at its
        // first claim.
        if !(1..=1000).contains(&w.max_claims) {
            p.push(format!(
                "worker.maxClaims ({}) must be from 1 to 1000",
                w.max_claims
            ));
        }
        // The worker takes 0 as 1; past 20 the doubling backoff overflows.
        if !(1..=20).contains(&w.max_attempts) {
            p.push(format!(
                "worker.maxAttempts ({}) must be from 1 to 20",
                w.max_attempts
            ));
        }
        within(
            &mut p,
            "worker.retryBackoffSeconds",
            w.retry_backoff_seconds,
            0.0,
            3600.0,
        );
        within(
            &mut p,
            "worker.taskOverheadMs",
            w.task_overhead_ms,
            0.0,
            3_600_000.0,
        );

        within(&mut p, "aws.sqsLatencyMs", a.sqs_latency_ms, 0.0, 60_000.0);
        within(
            &mut p,
            "aws.dynamodbLatencyMs",
            a.dynamodb_latency_ms,
            0.0,
            60_000.0,
        );
        let rate = a.dynamodb_writes_per_second;
        if !(rate == 0.0 || (rate.is_finite() && (1.0..=1_000_000.0).contains(&rate))) {
            p.push(format!(
                "aws.dynamodbWritesPerSecond ({}) must be 0 (no limit) or from 1 to 1000000",
                shown(rate)
            ));
        }
        for (field, price) in [
            ("aws.sqsPerMillion", a.sqs_per_million),
            ("aws.dynamodbWritePerMillion", a.dynamodb_write_per_million),
            ("aws.dynamodbReadPerMillion", a.dynamodb_read_per_million),
            ("aws.workerPerHour", a.worker_per_hour),
        ] {
            within(&mut p, field, price, 0.0, 1_000_000.0);
        }

        if self.batches.is_empty() {
            p.push("batches: there is none".into());
        }
        let mut total: u64 = 0;
        for (i, b) in self.batches.iter().enumerate() {
            let at = format!("batches[{i}] ({})", b.name);
            if b.name.is_empty() {
                p.push(format!("batches[{i}].name must not be empty"));
            } else if self.batches[..i].iter().any(|o| o.name == b.name) {
                // Fair share knows a batch by its name.
                p.push(format!("{at}.name: another batch has that name"));
            }
            if !(1..=MAX_TASKS).contains(&b.tasks) {
                p.push(format!(
                    "{at}.tasks ({}) must be from 1 to {MAX_TASKS}",
                    b.tasks
                ));
            }
            total = total.saturating_add(b.tasks);
            // As the TaskBatch's `weight`.
            if !(1..=1000).contains(&b.weight) {
                p.push(format!("{at}.weight ({}) must be from 1 to 1000", b.weight));
            }
            within(
                &mut p,
                &format!("{at}.arrivalSeconds"),
                b.arrival_seconds,
                0.0,
                MAX_RUN_SECONDS,
            );
            if !(0.0..1.0).contains(&b.failure_rate) {
                p.push(format!(
                    "{at}.failureRate ({}) must be from 0 to less than 1",
                    shown(b.failure_rate)
                ));
            }
            if let Err(e) = b.durations.check(&format!("{at}.durations")) {
                p.push(e);
            }
        }
        if self.batches.len() > 1 && total > MAX_TASKS {
            p.push(format!(
                "batches: {total} tasks in all, more than the {MAX_TASKS} the simulator takes"
            ));
        }

        within(
            &mut p,
            "disruptions.spotFraction",
            d.spot_fraction,
            0.0,
            1.0,
        );
        within(
            &mut p,
            "disruptions.crashFraction",
            d.crash_fraction,
            0.0,
            1.0,
        );
        within(
            &mut p,
            "disruptions.noticeSeconds",
            d.notice_seconds,
            0.0,
            3600.0,
        );
        within(
            &mut p,
            "disruptions.fromSeconds",
            d.from_seconds,
            0.0,
            MAX_RUN_SECONDS,
        );
        if d.from_seconds.is_finite() {
            within(
                &mut p,
                "disruptions.toSeconds",
                d.to_seconds,
                d.from_seconds.max(0.0),
                MAX_RUN_SECONDS,
            );
        }
        // Without a span every loss falls at one instant, at 0 before any
        // worker is up: not what a fraction of the pool lost during the
        // run means.
        if (d.spot_fraction > 0.0 || d.crash_fraction > 0.0) && d.to_seconds <= d.from_seconds {
            p.push(
                "disruptions: spotFraction and crashFraction need toSeconds after fromSeconds \
                 (the span the losses are spread over)"
                    .to_string(),
            );
        }

        let t = &self.targets;
        for (field, target) in [
            ("targets.makespanOverIdeal", t.makespan_over_ideal),
            ("targets.makespanOverListBound", t.makespan_over_list_bound),
            ("targets.requestsPerTask", t.requests_per_task),
            ("targets.tailIdleFraction", t.tail_idle_fraction),
            ("targets.shareError", t.share_error),
            ("targets.wallSeconds", t.wall_seconds),
        ] {
            if let Some(target) = target {
                within(&mut p, field, target, 0.0, f64::MAX);
            }
        }
        if t.share_error.is_some() && self.batches.len() < 2 {
            p.push(
                "targets.shareError: a share is measured while two batches or more run at once, and this config has one batch".into(),
            );
        }

        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }

    /// The WorkerPool's spec the simulated pool stands for: its workers,
    /// threads, behavior and dead-letter setting (an image the Deployment
    /// provider requires; no queue name, so none the allowlists check).
    pub fn pool_spec(&self) -> WorkerPoolSpec {
        let p = &self.pool;
        WorkerPoolSpec {
            queue: Some(QueueSpec {
                max_receives: Some(i32::try_from(self.aws.max_receives).unwrap_or(i32::MAX)),
                ..QueueSpec::default()
            }),
            workers: WorkersSpec {
                min: Some(p.min),
                max: p.max,
                target_backlog_per_worker: p.target_backlog_per_worker,
                target_drain_seconds: p.target_drain_seconds,
            },
            template: WorkerTemplate {
                image: Some("cloudkon/worker:simulated".into()),
                threads: Some(i32::try_from(p.threads).unwrap_or(i32::MAX)),
                ..WorkerTemplate::default()
            },
            provider: None,
            behavior: p.behavior.clone(),
            replicas: None,
            price_per_worker_hour: Some(self.aws.worker_per_hour),
        }
    }

    /// The pool's scaler settings: the operator's `ScaleConfig::from_spec`
    /// on [`SimConfig::pool_spec`].
    pub fn scale_config(&self) -> ScaleConfig {
        ScaleConfig::from_spec(&self.pool_spec())
    }
}

/// Whether `value` is finite and within `min..=max`; if not, a problem
/// saying so.
fn within(problems: &mut Vec<String>, field: &str, value: f64, min: f64, max: f64) -> bool {
    let ok = value.is_finite() && (min..=max).contains(&value);
    if !ok {
        let range = if max == f64::MAX {
            format!("a number of at least {}", shown(min))
        } else {
            format!("from {} to {}", shown(min), shown(max))
        };
        problems.push(format!("{field} ({}) must be {range}", shown(value)));
    }
    ok
}

/// A number as a config would write it: `1e-9` and `1e300`, not their
/// hundreds of digits.
pub fn shown(value: f64) -> String {
    if value != 0.0 && value.is_finite() && !(1e-3..1e9).contains(&value.abs()) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

/// A problem with the pool's spec, in the config's field names.
fn simulator_field(message: &str) -> String {
    message
        .replace("spec.template.threads", "pool.threads")
        .replace("spec.queue.maxReceives", "aws.maxReceives")
        .replace("spec.workers.", "pool.")
        .replace("spec.behavior.", "pool.behavior.")
}
