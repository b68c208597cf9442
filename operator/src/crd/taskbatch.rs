//! `TaskBatch`: a batch of tasks to run on a `WorkerPool`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions_schema;

/// The desired batch: its tasks, the WorkerPool that runs them, and how.
///
/// The tasks come from exactly one source: an inline list (small batches), a
/// workload file in a ConfigMap or an S3 object (one task a line, the format
/// of `cloudkon run`), or a generator (a task template repeated over a range,
/// for sweeps of millions of tasks that could never fit in etcd). The status
/// holds counts and statistics, never per-task state: results go to S3.
// The kube attribute repeats keys (printcolumn(name = ..., type_ = ...)).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cloudkon.io",
    version = "v1alpha1",
    kind = "TaskBatch",
    plural = "taskbatches",
    shortname = "tb",
    category = "cloudkon",
    namespaced,
    status = "TaskBatchStatus",
    doc = "A batch of many small tasks, run once each on a WorkerPool's workers (`kubectl explain taskbatch.spec`).",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Enqueuing, Running, Succeeded, Failed or Cancelled"
    ),
    printcolumn(
        name = "Done",
        type_ = "string",
        json_path = ".status.progress",
        description = "Finished tasks (succeeded or failed) / total"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.counts.failed",
        description = "Tasks that failed after all their attempts"
    ),
    printcolumn(
        name = "Rate",
        type_ = "number",
        json_path = ".status.throughput",
        description = "Finished tasks per second since the batch started"
    ),
    printcolumn(
        name = "ETA",
        type_ = "string",
        json_path = ".status.eta",
        description = "Time left at the rate of the last minute"
    ),
    printcolumn(
        name = "Cost",
        type_ = "string",
        json_path = ".status.cost.summary",
        description = "Dollars so far, and projected at completion"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TaskBatchSpec {
    /// Where the tasks come from: set exactly one of `inline`, `configMap`,
    /// `s3` or `generator`.
    pub tasks: TaskSource,

    /// The WorkerPool (in this namespace) whose workers run the tasks; its
    /// queue receives them.
    pub worker_pool: String,

    /// Per-task timeout in seconds; a task's own `timeoutSeconds` wins.
    /// Unset: the pool's default (none unless the pool sets one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub task_timeout_seconds: Option<i64>,

    /// Retries of failed tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Exactly-once execution through the DynamoDB ledger (default true).
    /// `false` runs at-least-once, as the CloudKon paper's runs without the
    /// ledger did: cheaper, but a redelivered bundle runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<bool>,

    /// The batch's share of its WorkerPool while other batches run on it: the
    /// pool's batches keep work enqueued in proportion to their weights, in
    /// task-seconds (default 1). A batch applied beside a running one starts
    /// at once either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: Option<i32>,

    /// Stop enqueuing (default false). Tasks already in the queue still run;
    /// setting it back to false resumes where enqueuing stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// Cancel the batch (default false): nothing more is enqueued, workers
    /// skip the batch's remaining bundles, and the phase becomes Cancelled.
    /// Cannot be undone; a finished batch is not affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,

    /// Delete the TaskBatch this many seconds after it finished (Succeeded,
    /// Failed or Cancelled). Unset: keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Where the results go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsSpec>,

    /// The order tasks are sent in (see [`TaskOrder`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<TaskOrder>,

    /// Give up on a batch whose tasks keep failing: past the policy nothing
    /// more is enqueued, workers skip its remaining bundles, and it ends
    /// Failed with a condition saying why. Unset: every task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
}

/// The order tasks are sent in: `longestFirst` (default) sends tasks of
/// unknown length first, then those that declare one (`sleep`, `run` with
/// `expectedMs`), longest first by powers of two, so that the batch does not
/// end waiting for a long task that started last; `asGiven` keeps the
/// workload's order.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TaskOrder {
    /// Unknown lengths first, then the declared ones, longest first.
    #[default]
    LongestFirst,
    /// The workload's own order.
    AsGiven,
}

/// When a batch is judged failed before its end.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Fail the batch once more than this percentage of its finished tasks
    /// failed (0: at the first failure).
    #[schemars(range(min = 0, max = 100))]
    pub max_failed_percent: i32,

    /// Judge only once this many tasks have finished (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_tasks_before_judging: Option<i64>,
}

/// The tasks of a batch. Set exactly one source.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskSource {
    /// The tasks themselves, for small batches (at most 10,000: a TaskBatch
    /// lives in etcd; use `configMap`, `s3` or `generator` for more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Vec<InlineTask>>,

    /// A workload file (one task a line, as `cloudkon run` reads) in a key of
    /// a ConfigMap in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapWorkload>,

    /// A workload file (one task a line) in S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Workload>,

    /// A task template repeated `count` times or over a `range` of values:
    /// parameter sweeps of any size, with nothing stored per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Generator>,
}

/// One task, in the fields of a workload file's JSON form. `kind` says which
/// other fields apply: `sleep` takes `ms`; `run` takes `program` and `args`;
/// `animoto` takes `urls`, `secondsPerImage`, `resolution`, `frameRate` and
/// `output`.
///
/// (A flat object rather than core's tagged enum: a `oneOf` per kind would not
/// be a structural schema, which the API server requires.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InlineTask {
    /// Which executor runs the task.
    pub kind: TaskKind,

    /// `sleep`: how long, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ms: Option<i64>,

    /// `run`: the program (looked up on the worker's PATH; no shell runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,

    /// `run`: the program's arguments, passed as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// `run`: how long the task is expected to run, in milliseconds. The
    /// batch then bundles it by that length from the start and sends it in
    /// its place longest first (see `order`), instead of learning lengths
    /// from the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub expected_ms: Option<i64>,

    /// `animoto`: the images, as `http(s)://`, `s3://` or `file://` URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,

    /// `animoto`: seconds each image is shown (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub seconds_per_image: Option<i32>,

    /// `animoto`: `WIDTHxHEIGHT`, even numbers (default 1920x1080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,

    /// `animoto`: frames per second of the video (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub frame_rate: Option<i32>,

    /// `animoto`: where the video goes, `s3://bucket/prefix` (default: the
    /// worker's `--animoto-out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,

    /// This task's timeout in seconds (default: the batch's
    /// `taskTimeoutSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
}

/// Which executor runs a task: core's, whose names the CRD takes.
pub use cloudkon_core::TaskKind;

/// A workload file in a ConfigMap.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapWorkload {
    /// The ConfigMap's name (same namespace as the TaskBatch).
    pub name: String,
    /// The key holding the workload file.
    pub key: String,
}

/// A workload file in S3.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Workload {
    /// The object, as `s3://bucket/key`.
    pub uri: String,
}

/// A task template and how many times to instantiate it: set `count` or
/// `range`. `{i}` in the template's `program`, `args`, `urls` and `output` is
/// replaced by the task's value (its ordinal for `count`, the range's value
/// for `range`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Generator {
    /// The task to repeat.
    pub template: InlineTask,

    /// Make this many tasks, `{i}` = 0, 1, ..., count - 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<i64>,

    /// Make one task per value of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ParameterRange>,
}

/// Values `start`, `start + step`, ... below `end`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParameterRange {
    /// The first value.
    pub start: i64,
    /// The end of the range, excluded.
    pub end: i64,
    /// The distance between values (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub step: Option<i64>,
}

/// Retries of a failed task (one that exited non-zero or timed out).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Executions of a failing task, the first included (default 1: no retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<i32>,

    /// Seconds before the first retry, doubled for each further one
    /// (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub backoff_seconds: Option<i32>,
}

/// Where a batch's results go.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResultsSpec {
    /// An `s3://bucket/prefix`: the results, as JSON Lines (one object per
    /// task: id, attempt, status, exit code, output tails, timestamps,
    /// artifact), go under `<prefix>/<namespace>/<name>/<uid>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_prefix: Option<String>,
}

/// Bundles cut for a learned task length from a task on (`status.bundleSizing`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleSizing {
    /// The first task (counted from 0) cut for this length.
    pub from: i64,
    /// The learned task length, in microseconds.
    pub task_microseconds: i64,
}

/// What the operator observed of a batch. Counts and statistics only: a batch
/// of millions of tasks keeps a status of constant size.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskBatchStatus {
    /// Where the batch is in its life: Pending, Enqueuing, Running, Succeeded,
    /// Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Task counts.
    #[serde(default)]
    pub counts: TaskCounts,

    /// `finished/total`, for `kubectl get` (finished = succeeded + failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// When the first task was enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the batch finished (Succeeded, Failed or Cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the batch should finish, at the rate its tasks finished over
    /// the last minute (set once results arrive, until it finishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion_time: Option<Time>,

    /// Time left until `estimatedCompletionTime`, coarse (`45s`, `12m`,
    /// `3h5m`): the `ETA` column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,

    /// Finished tasks per second since `startTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,

    /// End-to-end latency of the finished tasks (enqueued to finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,

    /// What the batch has cost so far: the AWS requests of the operator and
    /// of the workers for it, DynamoDB write units, worker time, and their
    /// price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<BatchCost>,

    /// Where the results are: `s3://bucket/prefix/<namespace>/<name>/<uid>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<String>,

    /// The pool's task slots the bundles are cut for, fixed when the batch
    /// first enqueues: bundles hold about the remaining tasks over twice this,
    /// so they shrink towards the end, and a restarted operator cuts the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_slots: Option<i64>,

    /// The pool's workers the bundles are cut for, fixed with
    /// `plannedSlots`: a bundle holds at most 20 s of the pool's slots over
    /// one more than this, so that the queue holds about 20 s of the pool's
    /// work and a batch applied beside this one starts within about that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_workers: Option<i64>,

    /// The WorkerPool the batch first enqueued on: its bundles are in that
    /// pool's queue and claimed in its ledger table, so a batch whose
    /// `spec.workerPool` changed since is not accepted until it is put back,
    /// and that pool's deletion waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pool: Option<String>,

    /// The order the tasks are sent in: `spec.order` when the batch first
    /// enqueued, fixed then, so that a restarted operator resumes at its
    /// checkpoint in the same order whatever `spec.order` says since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_order: Option<TaskOrder>,

    /// The SHA-256 of the tasks when the batch first enqueued: of
    /// `spec.tasks` for inline tasks and generators, of the workload file's
    /// bytes for a ConfigMap or S3 file. The checkpoint is a position in
    /// these tasks: a runner does not resume over other ones (the batch is
    /// not accepted until they are put back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,

    /// The task length bundles of tasks of unknown length are cut for, from
    /// task `from` on, learned from the results: written before any such
    /// bundle is sent, so that a restarted operator cuts the same bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_sizing: Option<BundleSizing>,

    /// Tasks before this may be in the queue already: the runner reserves
    /// ahead of each send. A restarted runner cuts them with `bundleSizing`
    /// as recorded, whatever it learns meanwhile, so it resends what was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueue_horizon: Option<i64>,

    /// The latest observations of the batch's state, by type: `Accepted`
    /// (the spec is valid and its WorkerPool exists), `Suspended`, `Complete`,
    /// `Failed`, and `CleanupFailed` (being deleted, the response queue could
    /// not be deleted yet: why, retried with growing delays).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A batch's cost so far. Requests are the operator's for the batch
/// (enqueue, results, their S3 parts) and the workers' (receives, claims,
/// lease renewals, results, deletes): each worker charges what it spent
/// between two results messages to the batches of the second, in
/// proportion to their tasks' run time, so a pool shared by batches is
/// split between them, and a worker's time after its last results is
/// charged to no batch. Fractional where shared.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchCost {
    /// SQS requests (sends, receives, deletes, visibility changes).
    pub sqs_requests: f64,
    /// DynamoDB requests (claims, lease renewals, completions, heartbeats).
    pub dynamodb_requests: f64,
    /// DynamoDB write capacity units, as the server reported them (or one
    /// per started KiB written where it did not).
    pub dynamodb_write_units: f64,
    /// S3 GetObject and HeadObject.
    pub s3_reads: f64,
    /// Other S3 requests (PutObject, List...), billed as writes.
    pub s3_writes: f64,
    /// Of the requests above, those the workers made.
    pub worker_requests: f64,
    /// Worker process time (not slots) spent for the batch.
    pub worker_seconds: f64,
    /// US dollars so far: the requests at the operator's price table
    /// (`cloudkon-operator --price-*`, AWS list prices by default) and the
    /// worker time at the pool's `pricePerWorkerHour` (none: not counted).
    pub dollars: f64,
    /// Dollars at completion, at the cost per task so far (set once tasks
    /// finished and the total is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_dollars: Option<f64>,
    /// `$0.0123 / $0.0456`: dollars so far and projected, the `Cost` column.
    pub summary: String,
}

/// Where a batch is in its life: Pending (nothing enqueued), Enqueuing,
/// Running (every task enqueued), Succeeded, Failed (finished, some tasks
/// failed) or Cancelled.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted or not yet looked at; nothing enqueued.
    Pending,
    /// Tasks are being put in the queue (some may already run).
    Enqueuing,
    /// Every task is in the queue; some have not finished.
    Running,
    /// Every task succeeded.
    Succeeded,
    /// Every task finished, and some failed after all their attempts.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl Phase {
    /// Succeeded, Failed and Cancelled are final: a batch never leaves them.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }
}

/// How many tasks are where. `succeeded + failed` never exceeds `total`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskCounts {
    /// Tasks in the batch (known once the source has been read through).
    #[serde(default)]
    pub total: i64,
    /// Tasks put in the queue.
    #[serde(default)]
    pub enqueued: i64,
    /// Tasks enqueued and not finished: waiting in the queue or being
    /// executed (a pool's queue is shared by its batches, so the two are not
    /// told apart per batch).
    #[serde(default)]
    pub running: i64,
    /// Tasks that succeeded.
    #[serde(default)]
    pub succeeded: i64,
    /// Tasks that failed after all their attempts (or timed out).
    #[serde(default)]
    pub failed: i64,
    /// Retries so far (executions after a task's first).
    #[serde(default)]
    pub retried: i64,
    /// Tasks whose bundle reached the pool's dead-letter queue: counted in
    /// `failed` too (the operator reports them failed, with the reason).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dead_lettered: i64,
    /// Tasks sent and then found nowhere: the pool's queue held no message
    /// and none of its workers ran a task for the operator's
    /// `--missing-after` (the queue was purged or deleted, or its messages
    /// expired). Counted in `failed` too, with the reason.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Latency percentiles, in milliseconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Median.
    pub p50_millis: i64,
    /// 99th percentile.
    pub p99_millis: i64,
}

impl InlineTask {
    /// The task in core's model, and its own timeout, checked by the same
    /// rules as a workload file's line. `{i}` in `program`, `args`, `urls` and
    /// `output` becomes `param` when given (a generator's value). Fields that
    /// do not apply to the kind are ignored here ([`crate::validate`] reports
    /// them).
    pub fn to_task_spec(
        &self,
        param: Option<&str>,
    ) -> Result<(cloudkon_core::TaskSpec, Option<std::time::Duration>), String> {
        use cloudkon_core::{AnimotoSpec, TaskSpec};
        let fill = |s: &str| match param {
            Some(p) => s.replace("{i}", p),
            None => s.to_owned(),
        };
        let spec = match self.kind {
            TaskKind::Sleep => {
                let ms = non_negative("ms", self.ms)?.ok_or("sleep needs `ms`")?;
                TaskSpec::Sleep { ms }
            }
            TaskKind::Run => TaskSpec::Run {
                program: fill(self.program.as_deref().unwrap_or_default()),
                args: self.args.iter().map(|a| fill(a)).collect(),
                expected_ms: non_negative("expectedMs", self.expected_ms)?,
            },
            TaskKind::Animoto => TaskSpec::Animoto(AnimotoSpec {
                urls: self.urls.iter().map(|u| fill(u)).collect(),
                seconds_per_image: non_negative("secondsPerImage", self.seconds_per_image)?,
                resolution: self.resolution.clone(),
                frame_rate: non_negative("frameRate", self.frame_rate)?,
                output: self.output.as_deref().map(fill),
            }),
        };
        let timeout = match self.timeout_seconds {
            None => None,
            Some(secs) => Some(
                u64::try_from(secs)
                    .ok()
                    .filter(|s| *s > 0)
                    .and_then(|s| s.checked_mul(1000))
                    .map(std::time::Duration::from_millis)
                    .ok_or_else(|| format!("timeoutSeconds must be positive, got {secs}"))?,
            ),
        };
        Ok((cloudkon_core::workload::check_spec(spec)?, timeout))
    }
}

/// A field's value as unsigned, or why not.
fn non_negative<N, U>(name: &str, n: Option<N>) -> Result<Option<U>, String>
where
    N: Copy + std::fmt::Display,
    U: TryFrom<N>,
{
    n.map(|n| U::try_from(n).map_err(|_| format!("{name} must not be negative, got {n}")))
        .transpose()
}
