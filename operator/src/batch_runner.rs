//! The work of one TaskBatch, as a task of its own: enqueue its bundles into
//! the pool's queue (with the checkpoint `status.counts.enqueued` written after
//! each send), and collect the results from the batch's response queue into
//! the counts, the collected-ids ConfigMap and the results objects in S3.
//!
//! Restart safety: every step can be repeated. Bundling is deterministic, so a
//! runner started again (operator restart, error) resends at most the bundles
//! after the last checkpoint, and those carry the same claim keys, so the
//! ledger runs them once. Results are counted by task id against the collected
//! set, which is stored before the results messages are deleted.
//!
//! The runner writes only its part of the status (counts, progress, phase
//! Enqueuing/Running/Succeeded/Failed, times, throughput, latency); the
//! reconciler owns the conditions and acts on the phases the runner sets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudkon_core::aws::{QueueOptions, S3Uri, SqsQueue};
use cloudkon_core::queue::Receipt;
use cloudkon_core::task::Timestamp;
use cloudkon_core::wire::{self, SQS_MAX_MESSAGE_BYTES};
use cloudkon_core::workload::{TaskDef, WorkloadReader};
use cloudkon_core::{BatchId, Bundle, BundleOptions};
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp as JiffTimestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::sync::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::build;
use crate::collected::Collected;
use crate::context::{Context, Error, MANAGER};
use crate::crd::taskbatch::{BundleSizing, Latency, Phase, TaskBatchSpec, TaskCounts};
use crate::crd::{TaskBatch, WorkerPool};
use crate::enqueue;
use crate::shares::{self, ShareGuard};
use crate::sizing::{self, SizingInput};
use crate::status::{self, PhaseInput};
use crate::window::{self, Estimate, WindowInput};

/// The key of the collected-ids ConfigMap's value.
const COLLECTED_KEY: &str = "collected";
/// Bundles per send (one SendMessageBatch when they fit) and per checkpoint.
const SEND_GROUP: usize = 10;
/// How often the enqueue checkpoint is written, at most.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// A running batch, as the reconciler holds it.
pub struct RunnerHandle {
    pub task: JoinHandle<Result<(), Error>>,
    /// The batch's latest spec (suspend).
    pub spec: watch::Sender<TaskBatchSpec>,
}

/// Where a batch's tasks come from, read by the reconciler (which validates a
/// workload file before anything is enqueued).
pub enum Source {
    /// Inline tasks or a generator: in the spec.
    Spec,
    /// A workload file's bytes (ConfigMap or S3), already validated.
    File { name: String, bytes: Arc<Vec<u8>> },
}

pub struct RunnerArgs {
    pub batch: Arc<TaskBatch>,
    pub pool_queue_url: String,
    pub pool: ObjectRef<WorkerPool>,
    /// The pool's task slots at its largest (`WorkerPoolSpec::max_slots`).
    pub pool_slots: u64,
    /// The pool's workers at its largest.
    pub pool_workers: u64,
    pub source: Source,
    /// `s3://bucket/prefix/<ns>/<name>/`, or `None`: results are counted only.
    pub results: Option<S3Uri>,
}

/// The ConfigMap holding a batch's collected ids.
pub fn collected_configmap_name(batch: &str) -> String {
    format!("{batch}-cloudkon-collected")
}

/// The batch id in task messages and ledger keys: the object's uid, so that a
/// batch deleted and created again under the same name is a new batch.
pub fn batch_id(batch: &TaskBatch) -> BatchId {
    BatchId::new(batch.uid().unwrap_or_default())
}

pub fn spawn(ctx: Arc<Context>, args: RunnerArgs) -> RunnerHandle {
    let (spec_tx, spec_rx) = watch::channel(args.batch.spec.clone());
    let task = tokio::spawn(async move {
        let name = args.batch.name_any();
        let result = run(&ctx, args, spec_rx).await;
        if let Err(e) = &result {
            tracing::warn!(batch = %name, error = %e, "batch runner stopped; it restarts from its checkpoint");
        }
        result
    });
    RunnerHandle {
        task,
        spec: spec_tx,
    }
}

/// Shared between the enqueue and collect halves.
struct Progress {
    /// Set once every task is in the queue.
    total: watch::Sender<Option<u64>>,
    /// Tasks in the queue so far (the checkpoint).
    enqueued: AtomicU64,
    /// Results counted so far.
    finished: AtomicU64,
    /// Told when results are counted: the meter may let more in.
    collected: Notify,
    /// The batch's size, once the enqueue half has counted it.
    planned: AtomicU64,
    /// The batch's task length, from its results (or declared).
    estimate: Mutex<Estimate>,
}

impl Progress {
    /// Enqueued and not finished.
    fn running(&self) -> u64 {
        self.enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(self.finished.load(Ordering::Relaxed))
    }

    fn estimate(&self) -> Option<Duration> {
        self.estimate.lock().expect("estimate lock").get()
    }

    /// The estimate and how many results it has seen.
    fn estimate_observed(&self) -> (Option<Duration>, u64) {
        let e = self.estimate.lock().expect("estimate lock");
        (e.get(), e.observed())
    }

    /// Takes a declared task length until results tell.
    fn seed_estimate(&self, declared: Option<Duration>) {
        let mut estimate = self.estimate.lock().expect("estimate lock");
        if estimate.get().is_none() && declared.is_some() {
            *estimate = Estimate::seeded(declared);
        }
    }

    /// `finished/enqueued+`, the `kubectl get` column while enqueuing.
    fn column(&self) -> String {
        format!(
            "{}/{}+",
            self.finished.load(Ordering::Relaxed),
            self.enqueued.load(Ordering::Relaxed)
        )
    }
}

async fn run(
    ctx: &Context,
    args: RunnerArgs,
    spec: watch::Receiver<TaskBatchSpec>,
) -> Result<(), Error> {
    let batch = &args.batch;
    let ns = batch.namespace().unwrap_or_default();
    let name = batch.name_any();
    let api: Api<TaskBatch> = Api::namespaced(ctx.client.clone(), &ns);
    let status = batch.status.clone().unwrap_or_default();

    let response = ctx
        .sqs
        .create_queue(
            &build::response_queue_name(&batch.uid().unwrap_or_default()),
            &QueueOptions::default(),
        )
        .await?;
    let pool_queue = ctx.sqs.at(args.pool_queue_url.clone());

    // The batch's place among its pool's batches, while it runs.
    let pool_key = shares::pool_key(
        args.pool.namespace.as_deref().unwrap_or_default(),
        &args.pool.name,
    );
    let weight = batch
        .spec
        .weight
        .and_then(|w| u64::try_from(w).ok())
        .unwrap_or(1);
    let share = ctx
        .shares
        .join(&pool_key, &batch.uid().unwrap_or_default(), weight);

    let enqueue_done = matches!(status.phase, Some(Phase::Running));
    let (total_tx, _) = watch::channel(enqueue_done.then_some(status.counts.total as u64));
    let progress = Progress {
        total: total_tx,
        enqueued: AtomicU64::new(status.counts.enqueued as u64),
        finished: AtomicU64::new(0),
        collected: Notify::new(),
        planned: AtomicU64::new(if enqueue_done {
            status.counts.total as u64
        } else {
            0
        }),
        estimate: Mutex::new(Estimate::default()),
    };

    let start_time = status
        .start_time
        .clone()
        .unwrap_or(Time(JiffTimestamp::now()));
    // Fixed before the first bundle is sent, so that a restarted runner cuts
    // the same bundles (the same claim keys) however the pool changed since.
    let planned_slots = status
        .planned_slots
        .and_then(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)
        .unwrap_or(args.pool_slots.max(1));
    let mut first = json!({ "startTime": start_time, "plannedSlots": planned_slots });
    if let Some(r) = &args.results {
        first["results"] = json!(r.to_string());
    }
    patch_status(&api, &name, first).await?;

    let enqueue = async {
        if enqueue_done {
            return Ok(());
        }
        enqueue_all(
            ctx,
            &args,
            &api,
            &pool_queue,
            response.url(),
            status.counts.enqueued as u64,
            status.bundle_sizing.clone(),
            planned_slots,
            spec,
            &progress,
            &share,
        )
        .await
    };
    let collect = collect(ctx, &args, &api, &response, &start_time, &progress, &share);
    // Collecting ends the batch; an error of either half ends the runner
    // (the reconciler starts it again from the checkpoint).
    tokio::pin!(enqueue);
    tokio::pin!(collect);
    tokio::select! {
        r = &mut enqueue => {
            r?;
            collect.await
        }
        r = &mut collect => r,
    }
}

#[allow(clippy::too_many_arguments)]
async fn enqueue_all(
    ctx: &Context,
    args: &RunnerArgs,
    api: &Api<TaskBatch>,
    queue: &SqsQueue,
    reply_to: &str,
    checkpoint: u64,
    sized: Option<BundleSizing>,
    planned_slots: u64,
    mut spec: watch::Receiver<TaskBatchSpec>,
    progress: &Progress,
    share: &ShareGuard,
) -> Result<(), Error> {
    let batch = &args.batch;
    let name = batch.name_any();
    let id = batch_id(batch);
    let options = bundle_options(&batch.spec);
    let mut enqueued = checkpoint;
    let mut group: Vec<Bundle> = Vec::with_capacity(SEND_GROUP);
    let total = match &args.source {
        Source::Spec => enqueue::source_len(&batch.spec.tasks).unwrap_or(0),
        Source::File { name, bytes } => {
            WorkloadReader::new(bytes.as_slice(), name.clone()).count() as u64
        }
    };
    progress.planned.store(total, Ordering::Relaxed);
    // Cut from the sizing the status recorded (see `sizing`), from its first
    // task on: the bundles sent since the checkpoint come again the same.
    let (from, mut learned) = match &sized {
        Some(s) => (
            u64::try_from(s.from).unwrap_or(0).min(checkpoint),
            u64::try_from(s.task_microseconds)
                .ok()
                .map(Duration::from_micros),
        ),
        None => (0, None),
    };
    let mut bundles = enqueue::bundles_from(
        tasks_from(args, from)?,
        id.clone(),
        sizing::plan(total, planned_slots, learned),
        from,
        checkpoint,
    )
    .peekable();
    let mut observed_at_change = 0;
    let mut woke_pool = false;
    let mut last_checkpoint = Instant::now();
    loop {
        // Tasks of unknown length: cut for what their results tell, the new
        // sizing written ahead with the checkpoint where it starts.
        let unknown = matches!(bundles.peek(), Some(Ok(b))
            if b.tasks.first().is_some_and(|t| t.spec.nominal_duration().is_none()));
        if unknown {
            let (estimate, observed) = progress.estimate_observed();
            let input = SizingInput {
                current: learned,
                estimate,
                fresh: observed.saturating_sub(observed_at_change),
                slots: planned_slots,
            };
            if let Some(next) = sizing::next_cost(&input) {
                write_sizing(api, &name, enqueued, next, progress).await?;
                last_checkpoint = Instant::now();
                tracing::debug!(batch = %name, from = enqueued, task = ?next, "bundles cut for a learned task length");
                learned = Some(next);
                observed_at_change = observed;
                bundles = enqueue::bundles_from(
                    tasks_from(args, enqueued)?,
                    id.clone(),
                    sizing::plan(total, planned_slots, learned),
                    enqueued,
                    enqueued,
                )
                .peekable();
            }
        }
        // The meter: wait until the batch's enqueued, unfinished tasks are
        // under its window (see `window`), writing the checkpoint meanwhile.
        let next = match bundles.peek() {
            Some(Ok(b)) => b.tasks.len() as u64,
            Some(Err(_)) | None => 1,
        };
        if let Some(Ok(b)) = bundles.peek() {
            progress.seed_estimate(b.tasks.first().and_then(|t| t.spec.nominal_duration()));
        }
        let room = loop {
            let estimate = if unknown {
                Some(sizing::window_cost(learned, progress.estimate()))
            } else {
                progress.estimate()
            };
            let window = window::window_tasks(&WindowInput {
                pool_slots: planned_slots,
                pool_workers: args.pool_workers,
                weight: share.weight(),
                total_weight: ctx.shares.total_weight(share.pool()),
                estimate,
                next_bundle: next,
            });
            share.update(progress.running(), progress.estimate());
            let running = progress.running();
            if running < window {
                break window - running;
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                last_checkpoint = Instant::now();
                write_checkpoint(api, &name, enqueued, progress).await?;
            }
            tokio::select! {
                _ = progress.collected.notified() => {}
                changed = spec.changed() => if changed.is_err() {
                    return Ok(()); // The runner is being stopped.
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        let mut group_tasks = 0;
        while group.len() < SEND_GROUP && group_tasks < room {
            let Some(bundle) = bundles.next() else { break };
            let mut bundle = bundle.map_err(|e| Error::Other(format!("batch {name}: {e}")))?;
            bundle.submitted = Timestamp::now();
            bundle.reply_to = Some(reply_to.to_string());
            bundle.options = options;
            group_tasks += bundle.tasks.len() as u64;
            group.push(bundle);
        }
        let last = bundles.peek().is_none();
        // Suspended: wait here, the checkpoint written, until resumed.
        while spec.borrow().suspend == Some(true) {
            if spec.changed().await.is_err() {
                return Ok(());
            }
        }
        if !group.is_empty() {
            let mut bodies = Vec::with_capacity(group.len());
            for b in &group {
                bodies.extend(
                    wire::encode_bundle_within(b, SQS_MAX_MESSAGE_BYTES)
                        .map_err(|e| Error::Other(format!("batch {name}: {e}")))?,
                );
            }
            queue.send_bodies(bodies).await?;
            let sent: u64 = group.iter().map(|b| b.tasks.len() as u64).sum();
            ctx.metrics.tasks_enqueued.inc_by(sent);
            enqueued = group
                .last()
                .and_then(|b| b.tasks.last())
                .map_or(enqueued, |t| t.id + 1);
            group.clear();
            progress.enqueued.store(enqueued, Ordering::Relaxed);
            share.update(progress.running(), progress.estimate());
            if !woke_pool {
                // The pool scales on this backlog now, not at its next poll.
                let _ = ctx.wake_pool.send(args.pool.clone());
                woke_pool = true;
            }
        }
        if last {
            break;
        }
        // The checkpoint at most every CHECKPOINT_EVERY: a restart resends
        // what was sent since (the ledger runs it once: the bundles are cut
        // the same), and a sweep of a million bundles does not write its
        // status 100,000 times.
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            last_checkpoint = Instant::now();
            write_checkpoint(api, &name, enqueued, progress).await?;
        }
    }
    // Every task is in the queue: the total is final.
    patch_status(
        api,
        &name,
        json!({ "counts": { "enqueued": enqueued, "total": enqueued, "running": progress.running() },
            "phase": Phase::Running }),
    )
    .await?;
    let _ = ctx.wake_pool.send(args.pool.clone());
    progress.total.send_replace(Some(enqueued));
    tracing::info!(batch = %name, tasks = enqueued, "every task enqueued");
    Ok(())
}

/// The tasks of the batch from task number `from` on, with the batch's task
/// timeout where a task sets none.
fn tasks_from(
    args: &RunnerArgs,
    from: u64,
) -> Result<Box<dyn Iterator<Item = Result<TaskDef, String>> + Send + '_>, Error> {
    let batch = &args.batch;
    let skip = usize::try_from(from).unwrap_or(usize::MAX);
    let tasks: Box<dyn Iterator<Item = Result<TaskDef, String>> + Send + '_> = match &args.source {
        Source::Spec => enqueue::source_tasks(&batch.spec.tasks, from)
            .ok_or_else(|| Error::Other("the batch has no inline or generator tasks".into()))?,
        Source::File { name, bytes } => Box::new(
            WorkloadReader::new(bytes.as_slice(), name.clone())
                .skip(skip)
                .map(|r| r.map_err(|e| e.to_string())),
        ),
    };
    let timeout = batch
        .spec
        .task_timeout_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
    Ok(Box::new(tasks.map(move |def| {
        def.map(|mut d| {
            d.timeout = d.timeout.or(timeout);
            d
        })
    })))
}

/// A new bundle sizing from task `from` (tasks enqueued so far) on, with
/// the checkpoint there: written before any bundle cut by it is sent.
async fn write_sizing(
    api: &Api<TaskBatch>,
    name: &str,
    from: u64,
    task: Duration,
    progress: &Progress,
) -> Result<(), Error> {
    let sizing = BundleSizing {
        from: i64::try_from(from).unwrap_or(i64::MAX),
        task_microseconds: i64::try_from(task.as_micros()).unwrap_or(i64::MAX),
    };
    let patch = json!({ "counts": { "enqueued": from, "running": progress.running() },
        "phase": Phase::Enqueuing,
        "progress": progress.column(),
        "bundleSizing": sizing });
    patch_status(api, name, patch).await
}

/// The enqueue checkpoint: the tasks in the queue so far (a restart resumes
/// after them).
async fn write_checkpoint(
    api: &Api<TaskBatch>,
    name: &str,
    enqueued: u64,
    progress: &Progress,
) -> Result<(), Error> {
    let counts = json!({ "counts": { "enqueued": enqueued, "running": progress.running() },
        "phase": Phase::Enqueuing,
        "progress": progress.column() });
    patch_status(api, name, counts).await
}

/// What the workers need to know of the batch: its retries and dedup.
pub fn bundle_options(spec: &TaskBatchSpec) -> BundleOptions {
    let retry = spec.retry.clone().unwrap_or_default();
    BundleOptions {
        max_attempts: retry.max_attempts.and_then(|n| u32::try_from(n).ok()),
        retry_backoff: retry
            .backoff_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
        dedup: spec.dedup,
    }
}

/// Results received and not yet written out.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Result lines in `lines`.
    results: usize,
    receipts: Vec<Receipt>,
    succeeded: u64,
    failed: u64,
}

/// Results per part at most (with `Settings::results_part_bytes`).
const PART_MAX_RESULTS: usize = 100_000;

/// JSON Lines cut into parts of at most `max_bytes` and `max_lines` each, at
/// line ends (a line longer than `max_bytes` makes a part of its own).
pub fn split_parts(lines: &[u8], max_bytes: usize, max_lines: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut end = 0;
    let mut count = 0;
    while end < lines.len() {
        let next = lines[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(lines.len(), |i| end + i + 1);
        if end > start && (next - start > max_bytes || count >= max_lines) {
            parts.push(&lines[start..end]);
            start = end;
            count = 0;
        }
        end = next;
        count += 1;
    }
    if end > start {
        parts.push(&lines[start..end]);
    }
    parts
}

/// Retries `op` with backoff (0.5 s doubling to 30 s) until it succeeds: a
/// write the batch cannot go on without, failing for a while (S3 or the API
/// server restarting), must not restart the runner and redo its work.
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn collect(
    ctx: &Context,
    args: &RunnerArgs,
    api: &Api<TaskBatch>,
    response: &SqsQueue,
    start_time: &Time,
    progress: &Progress,
    share: &ShareGuard,
) -> Result<(), Error> {
    let mut total = progress.total.subscribe();
    let batch = &args.batch;
    let ns = batch.namespace().unwrap_or_default();
    let name = batch.name_any();
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let cm_name = collected_configmap_name(&name);
    let mut collected = match configmaps
        .get_opt(&cm_name)
        .await
        .map_err(Error::kube(format!("cannot read ConfigMap {ns}/{cm_name}")))?
        .and_then(|cm| cm.data?.remove(COLLECTED_KEY))
    {
        Some(text) => Collected::decode(&text)
            .map_err(|e| Error::Other(format!("ConfigMap {ns}/{cm_name}: {e}")))?,
        None => Collected::default(),
    };
    let mut latency = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let mut pending = Pending::default();
    let mut last_flush = Instant::now();
    let started = start_time.0;
    loop {
        let messages = response
            .receive_results(10, Duration::from_millis(500))
            .await?;
        for (message, receipt) in messages {
            for result in &message.results {
                if !collected.ids.insert(result.id) {
                    continue;
                }
                if result.outcome.is_success() {
                    collected.succeeded += 1;
                    pending.succeeded += 1;
                } else {
                    collected.failed += 1;
                    pending.failed += 1;
                }
                collected.retried += i64::from(result.attempt.saturating_sub(1));
                let took = result.finished.0.saturating_sub(result.started.0);
                progress
                    .estimate
                    .lock()
                    .expect("estimate lock")
                    .observe(Duration::from_micros(took));
                let e2e = result.finished.0.saturating_sub(result.submitted.0) / 1000;
                let _ = latency.record(e2e.max(1));
                if args.results.is_some() {
                    serde_json::to_writer(&mut pending.lines, result)
                        .expect("a result always serializes");
                    pending.lines.push(b'\n');
                    pending.results += 1;
                }
            }
            pending.receipts.push(receipt);
        }
        progress
            .finished
            .store(collected.finished() as u64, Ordering::Relaxed);
        progress.collected.notify_one();
        share.update(progress.running(), progress.estimate());
        let known_total = *total.borrow_and_update();
        let done = known_total.is_some_and(|t| collected.finished() as u64 >= t);
        // Written out at least every part's worth, so that memory and parts
        // stay bounded whatever the batch's size.
        let full = pending.lines.len() >= ctx.settings.results_part_bytes
            || pending.results >= PART_MAX_RESULTS;
        if done
            || full
            || last_flush.elapsed() >= ctx.settings.flush_every
            || pending.receipts.len() >= 200
        {
            flush(
                ctx,
                args,
                api,
                &configmaps,
                &cm_name,
                response,
                &mut collected,
                &mut pending,
                &latency,
                known_total,
                started,
                progress,
            )
            .await?;
            last_flush = Instant::now();
        }
        if done {
            tracing::info!(batch = %name, succeeded = collected.succeeded, failed = collected.failed, "batch finished");
            return Ok(());
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn flush(
    ctx: &Context,
    args: &RunnerArgs,
    api: &Api<TaskBatch>,
    configmaps: &Api<ConfigMap>,
    cm_name: &str,
    response: &SqsQueue,
    collected: &mut Collected,
    pending: &mut Pending,
    latency: &Histogram<u64>,
    total: Option<u64>,
    started: JiffTimestamp,
    progress: &Progress,
) -> Result<(), Error> {
    let batch = &args.batch;
    let name = batch.name_any();
    let ns = batch.namespace().unwrap_or_default();
    if pending.receipts.is_empty() && total.is_none_or(|t| collected.finished() as u64 != t) {
        return Ok(());
    }
    // 1. The results objects, each bounded (a crash before step 2 writes
    //    the same part numbers again).
    if let Some(results) = &args.results
        && !pending.lines.is_empty()
    {
        let lines = std::mem::take(&mut pending.lines);
        pending.results = 0;
        for part in split_parts(&lines, ctx.settings.results_part_bytes, PART_MAX_RESULTS) {
            let key = format!("{}part-{:06}.jsonl", results.key, collected.result_parts);
            retrying(
                &format!("writing s3://{}/{key}", results.bucket),
                || async {
                    ctx.s3
                        .put_bytes(&results.bucket, &key, part.to_vec())
                        .await
                        .map_err(Error::from)
                },
            )
            .await;
            collected.result_parts += 1;
        }
    }
    // 2. The collected ids, before the messages go: a crash after this
    //    point finds the redelivered results already counted.
    let owner = batch
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Other(format!("TaskBatch {name} has no uid")))?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.to_string()),
            namespace: Some(ns.clone()),
            owner_references: Some(vec![owner]),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            COLLECTED_KEY.to_string(),
            collected.encode(),
        )])),
        ..ConfigMap::default()
    };
    configmaps
        .patch(
            cm_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(Error::kube(format!(
            "cannot write ConfigMap {ns}/{cm_name}"
        )))?;
    // 3. The messages.
    response
        .delete_batch(std::mem::take(&mut pending.receipts))
        .await?;
    ctx.metrics
        .tasks_collected
        .get_or_create(&crate::metrics::BatchOutcome {
            outcome: "succeeded",
        })
        .inc_by(std::mem::take(&mut pending.succeeded));
    ctx.metrics
        .tasks_collected
        .get_or_create(&crate::metrics::BatchOutcome { outcome: "failed" })
        .inc_by(std::mem::take(&mut pending.failed));
    // 4. The status.
    let mut counts = TaskCounts::default();
    collected.apply_to(&mut counts);
    counts.total = total.map_or(0, |t| t as i64);
    let enqueue_finished = total.is_some();
    let phase = status::phase_of(&PhaseInput {
        previous: Some(if enqueue_finished {
            Phase::Running
        } else {
            Phase::Enqueuing
        }),
        accepted: true,
        cancel: false,
        enqueue_finished,
        counts: TaskCounts {
            enqueued: counts.total.max(1),
            ..counts
        },
    });
    let now = JiffTimestamp::now();
    let elapsed = Duration::from_millis(
        u64::try_from(now.as_millisecond() - started.as_millisecond()).unwrap_or(0),
    );
    let mut patch = json!({
        "counts": { "succeeded": counts.succeeded, "failed": counts.failed, "retried": counts.retried,
            "running": progress.running() },
        "throughput": status::throughput(collected.finished(), elapsed),
    });
    if enqueue_finished {
        patch["counts"]["total"] = json!(counts.total);
        patch["progress"] = json!(status::progress(&counts, true));
        patch["phase"] = json!(phase);
    } else {
        patch["progress"] = json!(progress.column());
    }
    if !latency.is_empty() {
        patch["latency"] = json!(Latency {
            p50_millis: latency.value_at_quantile(0.5) as i64,
            p99_millis: latency.value_at_quantile(0.99) as i64,
        });
    }
    let planned = total.unwrap_or(progress.planned.load(Ordering::Relaxed));
    match status::time_to_finish(collected.finished() as u64, planned, elapsed) {
        Some(left) if !phase.is_finished() => {
            let eta = now
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                    left.as_secs() as i64
                ))
                .unwrap_or(now);
            patch["estimatedCompletionTime"] = json!(Time(eta));
        }
        _ => patch["estimatedCompletionTime"] = serde_json::Value::Null,
    }
    if phase.is_finished() {
        patch["completionTime"] = json!(Time(now));
    }
    patch_status(api, &name, patch).await
}

/// A JSON merge patch of the batch's status: only the fields given change, so
/// the runner and the reconciler each write their own.
pub(crate) async fn patch_status(
    api: &Api<TaskBatch>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(Error::kube(format!(
        "cannot write the status of TaskBatch {name}"
    )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parts_are_cut_at_line_ends_within_both_bounds() {
        let lines: Vec<u8> = (0..1000)
            .flat_map(|i| format!("{{\"id\":{i}}}\n").into_bytes())
            .collect();
        for (max_bytes, max_lines) in [(100, 1000), (4096, 50), (1 << 20, 1000), (10, 3)] {
            let parts = split_parts(&lines, max_bytes, max_lines);
            assert_eq!(parts.concat(), lines, "nothing lost or reordered");
            for part in &parts {
                assert!(part.ends_with(b"\n"), "cut mid-line");
                let n = part.iter().filter(|&&b| b == b'\n').count();
                assert!(n <= max_lines, "{n} lines > {max_lines}");
                // Only a single line longer than the bound may exceed it.
                assert!(
                    part.len() <= max_bytes || n == 1,
                    "{} bytes > {max_bytes}",
                    part.len()
                );
            }
        }
        assert_eq!(split_parts(&lines, 1 << 20, 1000).len(), 1);
        assert_eq!(split_parts(&lines, 1 << 20, 100).len(), 10);
        assert!(split_parts(b"", 10, 10).is_empty());
        // A last line without its newline is kept.
        assert_eq!(split_parts(b"a\nb", 2, 10), vec![&b"a\n"[..], &b"b"[..]]);
    }
}
