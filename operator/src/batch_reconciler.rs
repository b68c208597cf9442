//! The TaskBatch reconciler: validate the spec and its pool, start the batch's
//! runner ([`crate::batch_runner`]) and keep it going, report conditions and
//! Events as the phase moves, cancel, and delete finished batches after their
//! TTL. The finalizer deletes the batch's response queue.

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::aws::{ErrorKind, Limited, S3Uri};
use cloudkon_core::ledger::DedupLedger;
use cloudkon_core::workload::{self, WorkloadError, WorkloadReader};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::batch_plan::{self, Observed, Runner, Then};
use crate::batch_runner::{self, RunnerArgs, Source};
use crate::build;
use crate::context::{Context, FINALIZER};
use crate::crd::taskbatch::{Phase, TaskBatchSpec};
use crate::crd::{TaskBatch, WorkerPool};
use crate::error::Error;
use crate::runner_handle::RunnerHandle;
use crate::status::{self, set_condition};
use crate::status_patch::{self, RECONCILER, RUNNER};
use crate::validate::{self, Invalid};
use crate::workload_memory::Workload;

pub async fn reconcile(batch: Arc<TaskBatch>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = batch.namespace().unwrap_or_default();
    let what = format!("TaskBatch {ns}/{}", batch.name_any());
    let api: Api<TaskBatch> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, batch, |event| async {
        match event {
            Finalizer::Apply(b) => apply(b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup(&b, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::from_finalizer(&what, e))
}

/// Event reason: the ledger mark that has workers leave a cancelled (or
/// given-up) batch's tasks could not be written yet.
pub const CANCEL_NOT_MARKED: &str = "CancelNotMarked";

fn uid(batch: &TaskBatch) -> String {
    batch.uid().unwrap_or_default()
}

/// Reads, decides ([`batch_plan::decide`]), carries the plan out: the runner
/// stopped first, the cancel mark, the stopped runner's part of the status,
/// the reconciler's in one write, the Events, then the runner started and
/// the TTL.
async fn apply(batch: Arc<TaskBatch>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let api: Api<TaskBatch> =
        Api::namespaced(ctx.client.clone(), &batch.namespace().unwrap_or_default());
    let (observed, pool, source) = observe(&batch, ctx).await?;
    let plan = batch_plan::decide(&observed);
    let key = uid(&batch);
    if plan.runner == Runner::Stop && stop_runner(ctx, &key).await {
        // The runner's last writes may have landed since the look (a batch
        // that succeeded as it was cancelled): the plan is made again on
        // the status as it is now, else its counts would be overwritten
        // with older ones and its phase with Cancelled. The second look
        // finds no runner to stop.
        let now = api
            .get(&batch.name_any())
            .await
            .map_err(|source| Error::Kube {
                what: "cannot read the batch again after its runner stopped".into(),
                source,
            })?;
        if now.resource_version() != batch.resource_version() {
            return Box::pin(apply(Arc::new(now), ctx)).await;
        }
    }
    if plan.cancel_mark
        && let Some(pool) = &pool
        && let Err(e) = write_cancel_mark(ctx, pool, &batch).await
    {
        // Written before the status that ends the batch (or says its failure
        // policy was acted on), which would not ask again: the status waits,
        // and the batch says why (its runner is stopped already).
        let message = format!(
            "cannot yet tell the workers to leave this batch's queued tasks (its mark in the ledger), retried: {e}"
        );
        ctx.event(batch.as_ref(), true, CANCEL_NOT_MARKED, message)
            .await;
        return Err(e);
    }
    if let Some(part) = &plan.runner_status {
        status_patch::apply(&api, &batch.name_any(), RUNNER, part).await?;
    }
    if let Some(part) = &plan.status {
        status_patch::apply(&api, &batch.name_any(), RECONCILER, part).await?;
    }
    for note in plan.events {
        ctx.event(batch.as_ref(), note.warning, &note.reason, note.message)
            .await;
    }
    if plan.runner == Runner::Leave {
        hand_spec(&ctx.runners.lock().expect("runner lock"), &key, &batch.spec);
    }
    if let Runner::Run { queue_url } = plan.runner {
        run(
            ctx,
            &batch,
            pool.as_ref(),
            queue_url,
            source,
            observed.results,
        );
    }
    match plan.then {
        Then::Requeue(after) => Ok(Action::requeue(after)),
        Then::AwaitChange => Ok(Action::await_change()),
        Then::Expire { at } => expire(ctx, &batch, at).await,
    }
}

/// What [`apply`] decides on, with the pool itself and where the batch's
/// tasks come from: the pool, the validation and, for a batch whose runner
/// is to start, its workload file, read and checked whole before anything is
/// enqueued.
async fn observe<'a>(
    batch: &'a TaskBatch,
    ctx: &Context,
) -> Result<(Observed<'a>, Option<WorkerPool>, Source), Error> {
    let ns = batch.namespace().unwrap_or_default();
    let spec = &batch.spec;
    let old = batch.status.clone().unwrap_or_default();
    let mut validation = validate::taskbatch(spec);
    let pool = batch_pool(ctx, &ns, batch_plan::pool_of(batch)).await?;
    let runner_alive = runner_alive(ctx, &uid(batch));
    let runner_failing = runner_failing(ctx, &uid(batch));
    // The pool has made its queue: a runner could start.
    let pool_ready = pool
        .as_ref()
        .is_some_and(|p| p.status.as_ref().is_some_and(|s| s.queue_url.is_some()));
    let runner_waits = runner_failing
        .as_ref()
        .is_some_and(|f| !f.retry_in.is_zero());
    // Tasks still to send: the workload is read (for a runner to start) and
    // checked against what was sent; not while no runner could start (the
    // pool or its queue missing, a failed runner's delay), which would read
    // a file of up to the size limit at every look.
    let sending = batch_plan::is_live(batch)
        && !batch_plan::enqueue_done_in(&old)
        && pool_ready
        && !runner_waits;
    let mut source = Source::Spec;
    let mut waiting_for_memory = None;
    let mut workload_unreadable = None;
    let mut file_invalid = false;
    if sending && validation.is_ok() && !runner_alive {
        match read_workload(ctx, batch).await {
            Ok(Some(s)) => source = s,
            Ok(None) => {}
            Err(Unread::Invalid(problems)) => {
                validation = Err(problems);
                file_invalid = true;
            }
            Err(Unread::Unreadable(message)) => {
                tracing::info!(batch = %batch.name_any(), namespace = %ns, "{message}");
                workload_unreadable = Some(message);
            }
            Err(Unread::NoMemory(message)) => {
                tracing::info!(batch = %batch.name_any(), namespace = %ns, "{message}");
                waiting_for_memory = Some(message);
            }
        }
    }
    // Resuming over other tasks than those sent would run some twice and
    // others never: refused until they are put back.
    if sending && validation.is_ok() {
        let now = crate::source_digest::current(&spec.tasks, &source);
        if let Err(changed) = crate::source_digest::check(
            old.source_digest.as_deref(),
            now.as_deref(),
            &spec.tasks,
            old.counts.enqueued,
            old.counts.total,
        ) {
            validation = Err(vec![changed]);
            file_invalid = matches!(source, Source::File { .. });
        }
    }
    if batch_plan::is_live(batch)
        && validation.is_ok()
        && let Err(moved) =
            crate::validate::pool_kept(&spec.worker_pool, old.worker_pool.as_deref())
    {
        validation = Err(vec![moved]);
    }
    if validation.is_ok()
        && let Some(p) = &pool
        && let Err(unrunnable) = crate::validate::pool_runs(&p.name_any(), &p.spec)
    {
        validation = Err(vec![unrunnable]);
    }
    // Once started, the results stay where they went: a prefix changed in
    // the spec since is refused, one of the operator's default is not used.
    if batch_plan::is_live(batch) && validation.is_ok() && old.start_time.is_some() {
        let from_spec = spec
            .results
            .as_ref()
            .and_then(|r| r.s3_prefix.as_deref())
            .and_then(|prefix| results_under(prefix, batch))
            .map(|uri| uri.to_string());
        if let Err(moved) = crate::validate::results_kept(
            from_spec.as_deref(),
            old.results.as_deref(),
            &results_suffix(batch),
        ) {
            validation = Err(vec![moved]);
        }
    }
    let results = batch_plan::results_location(&old, results_location(ctx, batch));
    // Results that could not be written would hold the batch for ever, its
    // tasks run: a missing bucket (a typo, most often) is said before
    // anything is sent, and looked for again until it is made.
    let mut missing_bucket = None;
    if let Some(r) = &results
        && batch_plan::is_live(batch)
        && validation.is_ok()
        && !runner_alive
    {
        match ctx.s3.bucket_exists(&r.bucket).await {
            Ok(true) => {}
            // Started: its results stay there, so only making it helps.
            Ok(false) if old.start_time.is_some() => {
                missing_bucket = Some(format!(
                    "the results' bucket {:?}, where the batch's results so far are, does not exist: create it again; nothing is sent until then",
                    r.bucket
                ));
            }
            Ok(false) => {
                missing_bucket = Some(format!(
                    "the results' bucket {:?} does not exist: create it, or set spec.results.s3Prefix to a bucket that does; nothing is sent until then",
                    r.bucket
                ));
            }
            // Denied (the operator may write without listing) or failing:
            // the writes themselves will tell.
            Err(e) => {
                tracing::debug!(bucket = %r.bucket, error = %e, "cannot tell whether the results' bucket exists");
            }
        }
    }
    let observed = Observed {
        batch,
        validation,
        pool_exists: pool.is_some(),
        queue_url: pool
            .as_ref()
            .and_then(|p| p.status.as_ref()?.queue_url.clone()),
        waiting_for_memory,
        results,
        missing_bucket,
        workload_unreadable,
        file_invalid,
        workers_failing: pool.as_ref().and_then(batch_plan::workers_failing),
        runner_failing,
        now: Time(Timestamp::now()),
    };
    Ok((observed, pool, source))
}

/// Hands the batch's runner, if one runs (the answer), the spec: it reads
/// `suspend` from it. A batch left as it is may still have one, started
/// before a `suspend` set at once after creation, which it would not see
/// otherwise (it sent a small batch whole while the batch said Suspended).
fn hand_spec(
    runners: &std::collections::HashMap<String, RunnerHandle>,
    key: &str,
    spec: &TaskBatchSpec,
) -> bool {
    let running = runners.get(key).filter(|r| r.alive());
    if let Some(r) = running {
        r.spec.send_replace(spec.clone());
    }
    running.is_some()
}

/// Hands a running runner the spec ([`hand_spec`]), or starts one.
fn run(
    ctx: &Arc<Context>,
    batch: &Arc<TaskBatch>,
    pool: Option<&WorkerPool>,
    queue_url: String,
    source: Source,
    results: Option<S3Uri>,
) {
    let mut runners = ctx.runners.lock().expect("runner lock");
    if hand_spec(&runners, &uid(batch), &batch.spec) {
        return;
    }
    // Finished since this object was read: its finish is seen next.
    if runners.get_mut(&uid(batch)).is_some_and(|r| r.ended_well()) {
        return;
    }
    let old = runners.get(&uid(batch));
    // Those before it that failed, counted when the reconcile read
    // the old one's end (`runner_failing`).
    let failures = old.map(|r| r.failures.clone()).unwrap_or_default();
    let ns = batch.namespace().unwrap_or_default();
    let phase = batch.status.as_ref().and_then(|s| s.phase);
    if phase.is_none() || phase == Some(Phase::Pending) {
        tracing::info!(batch = %format!("{ns}/{}", batch.name_any()), "starting");
    }
    let handle = batch_runner::spawn(
        ctx.clone(),
        RunnerArgs {
            batch: batch.clone(),
            pool_queue_url: queue_url,
            pool: ObjectRef::<WorkerPool>::new(batch_plan::pool_of(batch)).within(&ns),
            pool_slots: pool.map_or(1, |p| p.spec.max_slots()),
            pool_workers: pool.map_or(1, |p| p.spec.max_workers()),
            source,
            results,
            worker_hour_price: pool.and_then(|p| p.spec.price_per_worker_hour),
            ledger_table: pool.map_or_else(
                || crate::crd::workerpool::DEFAULT_LEDGER_TABLE.to_string(),
                |p| p.spec.ledger_table(),
            ),
        },
        failures,
    );
    runners.insert(uid(batch), handle);
}

/// The batch's WorkerPool ([`batch_plan::pool_of`]), `None` when it does
/// not exist.
async fn batch_pool(ctx: &Context, ns: &str, name: &str) -> Result<Option<WorkerPool>, Error> {
    let pools: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), ns);
    pools
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("cannot read WorkerPool {ns}/{name}")))
}

/// What the batch says of its runners that stopped on an error: see
/// [`crate::runner_handle::Failures::failing`].
fn runner_failing(ctx: &Context, key: &str) -> Option<crate::runner_handle::RunnerFailing> {
    ctx.runners
        .lock()
        .expect("runner lock")
        .get_mut(key)?
        .failing(std::time::Instant::now())
}

fn runner_alive(ctx: &Context, key: &str) -> bool {
    ctx.runners
        .lock()
        .expect("runner lock")
        .get(key)
        .is_some_and(RunnerHandle::alive)
}

/// Stops the batch's runner, if it has one; whether it had.
async fn stop_runner(ctx: &Context, key: &str) -> bool {
    let Some(handle) = ctx.runners.lock().expect("runner lock").remove(key) else {
        return false;
    };
    if let Some(task) = handle.abort() {
        let _ = task.await;
    }
    true
}

/// Where the spec's `results.s3Prefix` (or the operator's default) puts the
/// batch's results: see [`results_under`].
fn results_location(ctx: &Context, batch: &TaskBatch) -> Option<S3Uri> {
    let prefix = batch
        .spec
        .results
        .as_ref()
        .and_then(|r| r.s3_prefix.clone())
        .or_else(|| ctx.settings.default_results_prefix.clone())?;
    results_under(&prefix, batch)
}

/// `prefix` + `<namespace>/<name>/<uid>/`: a batch created again under the
/// same name writes apart from the old one.
fn results_under(prefix: &str, batch: &TaskBatch) -> Option<S3Uri> {
    let mut uri = S3Uri::parse(prefix).ok()?;
    if !uri.key.is_empty() && !uri.key.ends_with('/') {
        uri.key.push('/');
    }
    uri.key.push_str(&results_suffix(batch));
    Some(uri)
}

fn results_suffix(batch: &TaskBatch) -> String {
    format!(
        "{}/{}/{}/",
        batch.namespace().unwrap_or_default(),
        batch.name_any(),
        batch.uid().unwrap_or_default()
    )
}

/// Why a workload file was not taken.
enum Unread {
    Invalid(Vec<Invalid>),
    /// It would not fit in what other batches' files leave of
    /// `--workload-memory-bytes`: look again later.
    NoMemory(String),
    /// It is not there (yet), or its read failed: read again later.
    Unreadable(String),
}

impl From<Vec<Invalid>> for Unread {
    fn from(problems: Vec<Invalid>) -> Self {
        Unread::Invalid(problems)
    }
}

/// A malformed workload's first five lines said, and that there are more.
fn workload_problems(field: &str, name: &str, errors: &[WorkloadError]) -> Vec<Invalid> {
    const SAID: usize = 5;
    let mut problems: Vec<Invalid> = errors
        .iter()
        .take(SAID)
        .map(|e| Invalid {
            field: field.to_string(),
            message: e.to_string(),
        })
        .collect();
    if errors.len() > SAID {
        // The check stops at MAX_REPORTED_ERRORS: there may be more still.
        let or_more = if errors.len() >= workload::MAX_REPORTED_ERRORS {
            " or more"
        } else {
            ""
        };
        problems.push(Invalid {
            field: field.to_string(),
            message: format!(
                "{name}: and {}{or_more} more malformed lines (`cloudkon workload check` lists them)",
                errors.len() - SAID
            ),
        });
    }
    problems
}

/// Reads a ConfigMap or S3 workload file and checks every line; `None` for
/// inline and generator sources.
async fn read_workload(ctx: &Context, batch: &TaskBatch) -> Result<Option<Source>, Unread> {
    let ns = batch.namespace().unwrap_or_default();
    let memory = &ctx.workload_memory;
    let no_memory = |size: String| {
        Unread::NoMemory(format!(
            "waiting for memory for the workload file ({size}): the workload files of running batches hold {} of the operator's {} bytes (--workload-memory-bytes)",
            memory.held(),
            memory.limit()
        ))
    };
    let tasks = &batch.spec.tasks;
    let (field, name, bytes, held) = if let Some(cm) = &tasks.config_map {
        let field = "spec.tasks.configMap";
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let map = api
            .get_opt(&cm.name)
            .await
            .map_err(|e| {
                Unread::Unreadable(format!("{field}: cannot read ConfigMap {:?}: {e}", cm.name))
            })?
            .ok_or_else(|| {
                Unread::Unreadable(format!("{field}: ConfigMap {:?} does not exist", cm.name))
            })?;
        let bytes = map
            .data
            .as_ref()
            .and_then(|d| d.get(&cm.key))
            .map(|s| s.clone().into_bytes())
            .or_else(|| {
                map.binary_data
                    .as_ref()
                    .and_then(|d| d.get(&cm.key))
                    .map(|b| b.0.clone())
            })
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("ConfigMap {:?} has no key {:?}", cm.name, cm.key),
                )
            })?;
        // The API server keeps a ConfigMap under 1 MiB; the operator's
        // limit may be lower.
        let limit = ctx.settings.max_workload_bytes;
        let size = bytes.len() as u64;
        if size > limit {
            let what = format!("ConfigMap {:?} key {:?}", cm.name, cm.key);
            let size = format!("{size} bytes");
            return Err(invalid(field, too_large(&what, &size, limit)).into());
        }
        let held = memory
            .take_up_to(size)
            .filter(|h| h.bytes() == size)
            .ok_or_else(|| no_memory(format!("{size} bytes")))?;
        (
            field,
            format!("configmap/{}/{}", cm.name, cm.key),
            bytes,
            held,
        )
    } else if let Some(s3) = &tasks.s3 {
        let field = "spec.tasks.s3.uri";
        let uri = S3Uri::object(&s3.uri).map_err(|e| invalid(field, e.to_string()))?;
        let limit = ctx.settings.max_workload_bytes;
        // The size is known only from the read: hold what is free, up to the
        // limit, and read no more than that.
        let held = memory
            .take_up_to(limit)
            .ok_or_else(|| no_memory("its size is known once read".into()))?;
        let read = ctx
            .s3
            .get_bytes_at_most(&uri.bucket, &uri.key, held.bytes())
            .await
            .map_err(|e| {
                Unread::Unreadable(if e.kind == ErrorKind::NotFound {
                    format!("{field}: {} does not exist", s3.uri)
                } else {
                    format!("{field}: cannot read {}: {e}", s3.uri)
                })
            })?;
        let bytes = match read {
            Limited::Bytes(bytes) => bytes,
            // Over what was free but maybe not over the limit: wait.
            Limited::TooLarge { size, declared }
                if held.bytes() < limit && (!declared || size <= limit) =>
            {
                let size = if declared {
                    format!("{size} bytes")
                } else {
                    format!("more than {} bytes", held.bytes())
                };
                return Err(no_memory(size));
            }
            Limited::TooLarge { size, declared } => {
                let size = if declared {
                    format!("{size} bytes")
                } else {
                    format!("more than {limit} bytes")
                };
                return Err(invalid(field, too_large(&s3.uri, &size, limit)).into());
            }
        };
        (field, s3.uri.clone(), bytes, held)
    } else {
        return Ok(None);
    };
    if let Err(errors) = workload::validate(WorkloadReader::new(bytes.as_slice(), name.clone())) {
        let problems = workload_problems(field, &name, &errors);
        return Err(problems.into());
    }
    // An empty file is a mistake (the wrong key or object), as an empty
    // inline list is: not a batch that succeeds with nothing done.
    if WorkloadReader::new(bytes.as_slice(), name.clone())
        .next()
        .is_none()
    {
        return Err(invalid(
            field,
            format!("{name} has no tasks: only blank lines and comments"),
        )
        .into());
    }
    // A task larger than a message would be refused by SQS and sent again
    // for ever: refused here, with its number.
    validate::workload_tasks_fit(field, &name, &bytes)?;
    Ok(Some(Source::File {
        name,
        digest: crate::source_digest::of_bytes(&bytes),
        bytes: Arc::new(Workload::new(bytes, held)),
    }))
}

/// Why a workload file is refused for its size: what to do about it.
fn too_large(what: &str, size: &str, limit: u64) -> String {
    format!(
        "{what} is {size}, over the operator's limit of {limit} bytes for a workload file \
         (cloudkon-operator --max-workload-bytes): split it into several TaskBatches, \
         use a generator, or raise the limit with the operator's memory"
    )
}

fn invalid(field: &str, message: String) -> Vec<Invalid> {
    vec![Invalid {
        field: field.to_string(),
        message,
    }]
}

/// Deletes a finished batch once `ttlSecondsAfterFinished` has passed
/// (at Unix second `at`).
async fn expire(ctx: &Context, batch: &TaskBatch, at: i64) -> Result<Action, Error> {
    let left = at - Timestamp::now().as_second();
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left as u64)));
    }
    let name = batch.name_any();
    let ns = batch.namespace().unwrap_or_default();
    let ttl = batch.spec.ttl_seconds_after_finished.unwrap_or_default();
    tracing::info!(batch = %format!("{ns}/{name}"), ttl, "deleting the finished batch (ttlSecondsAfterFinished)");
    ctx.event(
        batch,
        false,
        "Expired",
        format!("finished {ttl} s ago (ttlSecondsAfterFinished): deleting"),
    )
    .await;
    let api: Api<TaskBatch> = Api::namespaced(ctx.client.clone(), &ns);
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            return Err(Error::kube(format!("cannot delete TaskBatch {ns}/{name}"))(
                e,
            ));
        }
    }
    Ok(Action::await_change())
}

/// Marks the batch cancelled in its pool's ledger: workers delete its queued
/// bundles unrun and leave the unstarted tasks of those they run.
async fn write_cancel_mark(
    ctx: &Context,
    pool: &WorkerPool,
    batch: &TaskBatch,
) -> Result<(), Error> {
    let table = pool.spec.ledger_table();
    let id = batch_runner::batch_id(batch);
    let ledger = ctx.aws.ledger(table.clone());
    // The table exists once a worker ran; before that, make it, so that the
    // first worker already sees the mark.
    ledger.ensure_table().await?;
    ledger
        .cancel_batch(id.as_str())
        .await
        .map_err(|e| Error::Other(format!("cannot cancel in ledger table {table}: {e}")))
}

/// The finalizer: stops the runner, marks an unfinished batch cancelled,
/// deletes the response queue. A queue already gone counts as done; any other
/// failure keeps the finalizer, is reported in the `CleanupFailed` condition
/// and an Event, and is retried with growing delays.
async fn cleanup(batch: &TaskBatch, ctx: &Context) -> Result<Action, Error> {
    ctx.finalize(&uid(batch), release(batch, ctx), |message| async move {
        report_cleanup_failure(batch, ctx, &message).await
    })
    .await
}

async fn report_cleanup_failure(batch: &TaskBatch, ctx: &Context, message: &str) {
    let ns = batch.namespace().unwrap_or_default();
    let name = batch.name_any();
    let api: Api<TaskBatch> = Api::namespaced(ctx.client.clone(), &ns);
    let old = batch.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let update = status::ConditionUpdate::new(
        status::batch_condition::CLEANUP_FAILED,
        true,
        "CleanupFailed",
        message.to_string(),
    );
    let now = Time(Timestamp::now());
    if !set_condition(&mut st.conditions, &update, batch.metadata.generation, &now) {
        return;
    }
    ctx.event(batch, true, "CleanupFailed", message.to_string())
        .await;
    let part = batch_plan::reconciler_part(&st);
    if let Err(e) = status_patch::apply(&api, &name, RECONCILER, &part).await {
        tracing::warn!(batch = %format!("{ns}/{name}"), error = %e, "cannot report the failed cleanup");
    }
}

async fn release(batch: &TaskBatch, ctx: &Context) -> Result<(), Error> {
    stop_runner(ctx, &uid(batch)).await;
    // Its tasks still in the pool's queue, or in bundles workers run, must
    // not run for nobody; and a worker that finds the response queue gone
    // (it goes next) drops the results of a marked batch at once, where it
    // would send them again for a while to a queue deleted by hand (see the
    // worker's `response_queue_return`). Finished batches too: a late
    // duplicate bundle.
    // The pool it sent to, which a changed spec.workerPool may not name.
    let ns = batch.namespace().unwrap_or_default();
    // A batch that never started sent nothing: no mark, so its deletion
    // needs no ledger (nor makes its table). Asked of the batch as it is
    // now, its runner stopped: it writes its start before it sends.
    let api: Api<TaskBatch> = Api::namespaced(ctx.client.clone(), &ns);
    let started = match api.get_opt(&batch.name_any()).await {
        Ok(Some(now)) if now.uid() == batch.uid() => {
            now.status.is_some_and(|s| s.start_time.is_some())
        }
        // Gone, or read from a cache that cannot say: marked, as before.
        _ => true,
    };
    if started && let Some(pool) = batch_pool(ctx, &ns, batch_plan::pool_of(batch)).await? {
        write_cancel_mark(ctx, &pool, batch).await?;
    }
    let queue = build::response_queue_name(&uid(batch));
    let deleted = match ctx.sqs.open(&queue).await {
        Ok(q) => q.delete().await,
        Err(e) => Err(e),
    };
    match deleted {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Other(format!("cannot delete queue {queue}: {e}"))),
    }
    // The collected-ids ConfigMap goes with its owner (garbage collection).
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_with_many_bad_lines_says_five_and_that_there_are_more() {
        let errors = |n: usize| {
            let text = "sleep x\n".repeat(n);
            workload::validate(WorkloadReader::new(text.as_bytes(), "w.txt")).unwrap_err()
        };
        let said = workload_problems("spec.tasks.configMap", "w.txt", &errors(3));
        assert_eq!(said.len(), 3);
        let said = workload_problems("spec.tasks.configMap", "w.txt", &errors(7));
        assert_eq!(said.len(), 6);
        assert!(
            said[4].message.starts_with("w.txt:5:"),
            "{}",
            said[4].message
        );
        assert_eq!(
            said[5].message,
            "w.txt: and 2 more malformed lines (`cloudkon workload check` lists them)"
        );
        let said = workload_problems("spec.tasks.configMap", "w.txt", &errors(100));
        assert!(
            said[5].message.contains("and 15 or more"),
            "{}",
            said[5].message
        );
    }

    /// A runner left running gets the spec's `suspend`: suspended at once
    /// after creation, before its start reached the reconciler, it never
    /// learned of it.
    #[tokio::test]
    async fn a_runner_left_running_is_handed_the_spec() {
        let spec: TaskBatchSpec = serde_json::from_value(
            serde_json::json!({"workerPool": "p", "tasks": {"inline": [{"kind": "sleep", "ms": 1}]}}),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::watch::channel(spec.clone());
        let handle =
            RunnerHandle::new(tokio::spawn(std::future::pending()), tx, Default::default());
        let runners = std::collections::HashMap::from([("uid".to_string(), handle)]);
        let suspended = TaskBatchSpec {
            suspend: Some(true),
            ..spec
        };
        hand_spec(&runners, "other", &suspended);
        assert_eq!(rx.borrow().suspend, None, "another batch's runner");
        hand_spec(&runners, "uid", &suspended);
        assert_eq!(rx.borrow().suspend, Some(true));
    }
}
