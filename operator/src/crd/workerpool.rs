//! `WorkerPool`: a request queue and the workers that drain it, scaled on the
//! queue's backlog.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions_schema;

/// The desired pool: a queue (with its dead-letter queue) and the
/// `cloudkon-worker`s that run its tasks, scaled between `workers.min` and
/// `workers.max` on the queue's backlog: desired workers = ceil(backlog /
/// workers.targetBacklogPerWorker), where the backlog counts visible and
/// in-flight messages, tempered by `behavior` as a HorizontalPodAutoscaler's
/// would be.
///
/// The `/scale` subresource acts on `spec.replicas`: setting it (by hand with
/// `kubectl scale`, or from an HPA or a KEDA ScaledObject) hands the worker
/// count to that controller and turns the built-in scaler off; removing it
/// turns the built-in scaler back on. (The API server serves a GET of
/// `/scale` only once `spec.replicas` exists: give it a value in the manifest
/// before pointing an HPA or KEDA at the pool.)
// The kube attribute repeats keys (printcolumn(name = ..., type_ = ...)).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cloudkon.io",
    version = "v1alpha1",
    kind = "WorkerPool",
    plural = "workerpools",
    shortname = "wp",
    category = "cloudkon",
    namespaced,
    status = "WorkerPoolStatus",
    doc = "A request queue and the cloudkon-workers that drain it, scaled on its backlog (`kubectl explain workerpool.spec`).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.workers",
        description = "Ready workers / desired workers"
    ),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        json_path = ".status.backlog",
        description = "Messages in the queue, visible and in flight"
    ),
    printcolumn(
        name = "Density",
        type_ = "number",
        json_path = ".status.density",
        description = "Backlog per worker"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolSpec {
    /// The request queue, created and owned by the pool (default: named
    /// after the pool, 5 receives before the dead-letter queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,

    /// How many workers, and when to add or remove them.
    pub workers: WorkersSpec,

    /// The worker: its image, resources and settings.
    pub template: WorkerTemplate,

    /// Where workers run (default: a Deployment in this namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,

    /// Scale rates and stabilization, as in a HorizontalPodAutoscaler's
    /// `behavior` (same defaults), plus a cooldown before scaling to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<ScalingBehavior>,

    /// The number of workers, when an outside controller (HPA, KEDA) or a
    /// person (`kubectl scale`) decides it: set (directly or through the
    /// `/scale` subresource), it turns the built-in scaler off; it is capped
    /// at `workers.max`. Leave unset for the built-in, queue-driven scaler.
    /// An HPA or KEDA needs it set before it starts: the API server refuses
    /// to read `/scale` while it is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// What one worker costs an hour in US dollars, to price the worker time
    /// in each batch's `status.cost` (unset: shown, not priced). Its node's
    /// share: `0.0425` for a spot c6i.large running one worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub price_per_worker_hour: Option<f64>,
}

/// Slots per worker when the template sets no `threads`: the operator plans
/// for them and gives them to the worker (`CLOUDKON_THREADS`), whose own
/// default, its CPUs, the operator cannot see.
pub const DEFAULT_WORKER_SLOTS: u64 = 2;

/// The workers' ledger table when a pool names none (`cloudkon-worker`'s default).
pub const DEFAULT_LEDGER_TABLE: &str = "cloudkon-ledger";

impl WorkerPoolSpec {
    /// The DynamoDB table the pool's workers claim in.
    pub fn ledger_table(&self) -> String {
        self.template
            .ledger_table
            .clone()
            .unwrap_or_else(|| DEFAULT_LEDGER_TABLE.to_string())
    }

    /// The most workers, at least one.
    pub fn max_workers(&self) -> u64 {
        u64::try_from(self.workers.max.max(1)).unwrap_or(1)
    }

    /// Task slots per worker (`template.threads`, else
    /// [`DEFAULT_WORKER_SLOTS`]).
    pub fn slots_per_worker(&self) -> u64 {
        self.template
            .threads
            .and_then(|t| u64::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or(DEFAULT_WORKER_SLOTS)
    }

    /// The pool's task slots at its largest: what bundle sizes are cut for.
    pub fn max_slots(&self) -> u64 {
        self.max_workers().saturating_mul(self.slots_per_worker())
    }
}

/// The request queue (SQS) and its dead-letter queue.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// The queue's name (default `cloudkon-<namespace>_<pool name>`, dots as
    /// `_`); the dead-letter queue is `<name>-dlq`, the priority lane
    /// `<name>-pri`. At most 76 characters:
    /// letters, digits, `-` and `_`, matching the operator's allowed names
    /// (default `cloudkon-*`), and none the operator derives for other
    /// pools and batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Receives of a message before SQS moves it to the dead-letter queue
    /// (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_receives: Option<i32>,

    /// What happens to the queues when the pool is deleted (default Delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// What happens to a resource the pool created when the pool is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Delete it with the pool.
    Delete,
    /// Keep it (and whatever it holds).
    Retain,
}

/// Worker counts and the scaling target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// The fewest workers (default 0: no backlog, no workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min: Option<i32>,

    /// The most workers.
    #[schemars(range(min = 1))]
    pub max: i32,

    /// Backlog (messages visible and in flight) one worker is expected to
    /// keep up with: the seed systems' "density" threshold (default 10). A
    /// message is a bundle of tasks, so cheap tasks count for little.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_backlog_per_worker: Option<i32>,

    /// How long the queued and running work of the pool's batches (tasks ×
    /// their observed lengths) should take to drain: the pool asks for enough
    /// workers to do it in this time, as well as for the backlog rule above
    /// (default 60). A bundle holds many tasks, so messages alone undercount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_drain_seconds: Option<i32>,
}

/// The worker process and its pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// The container image holding `cloudkon-worker` (and whatever programs
    /// the `run` tasks call). Required with the `Deployment` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Always, IfNotPresent or Never (Kubernetes' default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,

    /// Concurrent task slots per worker (default 2). The operator sizes
    /// bundles and scales for these slots and gives the worker the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub threads: Option<i32>,

    /// CPU and memory requests and limits of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables of the worker container (`CLOUDKON_*`
    /// variables set any `cloudkon-worker` flag; see its `--help`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// The pod's service account: with IAM roles for service accounts, the
    /// one that may use the queue, the ledger table and the S3 buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Labels a node must have to run a worker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// The DynamoDB table of the dedup ledger (default `cloudkon-ledger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_table: Option<String>,

    /// Networks besides the public internet that Animoto images may be
    /// downloaded from, as CIDRs (an on-premises image server:
    /// `10.20.0.0/16`). Workers refuse loopback, link-local (the instance
    /// metadata service), private and other non-public addresses by default;
    /// `0.0.0.0/0` and `::/0` allow them all, for a pool that serves no other
    /// tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_downloads_from: Vec<String>,

    /// The size limit of the worker pod's `/tmp` (an emptyDir, where tasks
    /// and Animoto scratch files write), as a Kubernetes quantity (default
    /// `1Gi`): a task that fills it gets its pod evicted instead of filling
    /// the node's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_size_limit: Option<Quantity>,
}

/// Where the workers run. A union: `type` names the member that is set
/// (none for `Deployment`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    /// Deployment (default): worker pods in this namespace. Instances: EC2
    /// instances the pool launches and terminates itself. AutoScalingGroup:
    /// the desired capacity of an existing EC2 Auto Scaling group.
    /// EksNodegroup: the desired size of an EKS managed node group.
    #[serde(rename = "type")]
    pub type_: ProviderType,

    /// With `type: Instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Ec2Instances>,

    /// With `type: AutoScalingGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_scaling_group: Option<AutoScalingGroup>,

    /// With `type: EksNodegroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eks_nodegroup: Option<EksNodegroup>,
}

/// Which kind of machine a worker is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProviderType {
    /// A pod of a Deployment the pool owns.
    #[default]
    Deployment,
    /// An EC2 instance the pool launches from a launch template.
    Instances,
    /// An instance of an existing EC2 Auto Scaling group.
    AutoScalingGroup,
    /// A node of an EKS managed node group.
    EksNodegroup,
}

/// EC2 instances launched by the pool, one worker each.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ec2Instances {
    /// The launch template (name or `lt-` id) whose instances start
    /// `cloudkon-worker` (in their user data or image).
    pub launch_template: String,
    /// Overrides the launch template's instance type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Subnets to launch into (default: the launch template's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,
}

/// An existing EC2 Auto Scaling group whose desired capacity the pool sets.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoScalingGroup {
    /// The group's name.
    pub name: String,
}

/// An EKS managed node group whose desired size the pool sets.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EksNodegroup {
    /// The EKS cluster's name.
    pub cluster: String,
    /// The node group's name.
    pub nodegroup: String,
}

/// How fast the worker count may move: the shape and defaults of a
/// HorizontalPodAutoscaler's `behavior`, plus the cooldown before zero.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Rules for adding workers (default: no stabilization; at most double,
    /// or add 4, every 15 seconds, whichever is more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,

    /// Rules for removing workers (default: the highest recommendation of
    /// the last 300 seconds; any number every 15 seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,

    /// Seconds the backlog must have been empty before the last worker goes
    /// (default 300), as KEDA's `cooldownPeriod`. Only matters with
    /// `workers.min` = 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_to_zero_cooldown_seconds: Option<i32>,
}

/// Scaling rules in one direction, as in an HPA's `behavior.scaleUp` or
/// `behavior.scaleDown`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Seconds of past recommendations to consider: scaling down takes the
    /// highest of the window, scaling up the lowest, so that a short dip or
    /// spike does not move the pool (0 to 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,

    /// Which policy wins when several apply: Max (the largest change, the
    /// default), Min (the smallest), or Disabled (no scaling this way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,

    /// Limits on the change per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<ScalingPolicy>,
}

/// Which of several policies wins.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// At most `value` workers (`type: Pods`) or `value` percent of the workers
/// at the period's start (`type: Percent`) change within `periodSeconds`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// Pods or Percent.
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    /// The change allowed per period (at least 1).
    #[schemars(range(min = 1))]
    pub value: i32,
    /// The period, in seconds (1 to 1800).
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

/// What a scaling policy's `value` counts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalingPolicyType {
    /// Workers.
    Pods,
    /// Percent of the workers at the period's start.
    Percent,
}

/// What the operator observed of a pool.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Workers that exist now, ready or not (the `/scale` status).
    #[serde(default)]
    pub replicas: i32,

    /// Workers that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Workers the pool wants.
    #[serde(default)]
    pub desired_replicas: i32,

    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,

    /// The label selector of the worker pods, in string form (for the
    /// `/scale` subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Messages in the queue: visible plus in flight.
    #[serde(default)]
    pub backlog: i64,

    /// Messages waiting to be received.
    #[serde(default)]
    pub backlog_visible: i64,

    /// Messages received by a worker and not yet deleted.
    #[serde(default)]
    pub backlog_in_flight: i64,

    /// Backlog per worker (the backlog itself when there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<f64>,

    /// Tasks of the pool's batches enqueued and not finished (a message holds
    /// a bundle of many).
    #[serde(default)]
    pub work_tasks: i64,

    /// Those tasks' work in task-seconds, from each batch's observed task
    /// length (unknown lengths count as 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_seconds: Option<f64>,

    /// Seconds the ready workers need for that work at full use of their
    /// slots; none without ready workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_drain_seconds: Option<f64>,

    /// The request queue's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,

    /// The dead-letter queue's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_url: Option<String>,

    /// Where the workers run: `Deployment`, `Instances`,
    /// `AutoScalingGroup/<name>` or `EksNodegroup/<cluster>/<nodegroup>`.
    /// A `spec.provider` naming another fleet is refused while this one has
    /// workers: they would be left running, scaled by nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,

    /// When the worker count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// Why it changed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,

    /// When the backlog was last seen non-empty (for the cooldown before
    /// scaling to zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<Time>,

    /// The latest observations of the pool's state, by type: `Accepted` (the
    /// spec is valid), `QueueReady`, `Available` (at least `workers.min`
    /// ready workers), `ScalingLimited` (the desired count was cut by min,
    /// max or a rate policy), and `CleanupFailed` (being deleted, the queues or
    /// the fleet could not be released yet: why, retried with growing delays).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
