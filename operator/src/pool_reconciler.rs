//! The WorkerPool reconciler: the pool's queue (with its dead-letter queue),
//! its workers (a Deployment, or an EC2 fleet), and the scaler that sizes them
//! on the queue's backlog, every `poll` (1 s) and at once when a batch enqueues.
//! Decisions are [`crate::scale::desired_workers`]; this module reads and
//! writes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cloudkon_core::aws::{ErrorKind, PRIORITY_LANE_SUFFIX, QueueOptions, QueueStats, SqsQueue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};

use crate::build;
use crate::context::{Context, FINALIZER};
use crate::crd::WorkerPool;
use crate::crd::workerpool::{DeletionPolicy, WorkerPoolStatus};
use crate::error::Error;
use crate::pool_memory::{PoolMemory, QueueMade};
use crate::pool_plan::{self, Observed, Plan, Running};
use crate::pool_sharing;
use crate::provider::{Ec2Provider, fleet_identity};
use crate::scale::{self, Decision, ScaleConfig};
use crate::shares::PoolWork;
use crate::status::{self, set_condition};
use crate::status_patch;
use crate::validate;
use crate::worker_fleet::{FleetError, ObservedWorkers, WorkerFleet};

/// The pool reconciler's field manager for the WorkerPool's status.
pub const POOL_RECONCILER: &str = "cloudkon-pool-reconciler";

/// Receives before SQS moves a message to the dead-letter queue, by default.
const DEFAULT_MAX_RECEIVES: i32 = 5;
/// A pool's figures (backlog, workers, work) are written at most this often;
/// a change of conditions, generation or queue at once.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Whether `new` is worth a write now: something a reader acts on changed, or
/// the figures changed and the last write is `STATUS_EVERY` old.
fn status_due(
    old: &WorkerPoolStatus,
    new: &WorkerPoolStatus,
    written: Option<Instant>,
    now: Instant,
) -> bool {
    if old == new {
        return false;
    }
    let significant = old.conditions != new.conditions
        || old.observed_generation != new.observed_generation
        || old.queue_url != new.queue_url
        || old.dead_letter_queue_url != new.dead_letter_queue_url
        || old.selector != new.selector
        || old.desired_replicas != new.desired_replicas;
    significant || written.is_none_or(|t| now.duration_since(t) >= STATUS_EVERY)
}

/// The Event's reason when the pool's queue was deleted outside the operator.
pub const QUEUE_RECREATED: &str = "QueueRecreated";

/// The same for its dead-letter queue (a reason of its own: Events of one
/// reason are counted as one series, under the first one's message).
pub const DEAD_LETTER_QUEUE_RECREATED: &str = "DeadLetterQueueRecreated";

/// Event reason: bundles no worker read from the priority lane went to the
/// queue.
pub const LANE_BUNDLES_MOVED: &str = "LaneBundlesMoved";

/// How long a send to the priority lane is given before its bundles still
/// there go to the queue: a worker fetches every ~20 s of its slots' work
/// at most (a bundle holds that), and a lane no worker reads (workers older
/// than it) must not hold a batch's first bundles for good.
pub const LANE_WAIT: Duration = Duration::from_secs(30);

/// The most bundles moved from the lane in one reconcile (more are moved at
/// the next look).
pub(crate) const LANE_MOVE_MAX: usize = 10_000;

pub async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let what = format!("WorkerPool {ns}/{}", pool.name_any());
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Finalizer::Apply(pool) => apply(&pool, &ctx).await,
            Finalizer::Cleanup(pool) => cleanup(&pool, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::from_finalizer(&what, e))
}

fn uid(pool: &WorkerPool) -> String {
    pool.uid().unwrap_or_default()
}

/// Reads (the queue, the workers, the pool's work), asks the scaler, decides
/// the status ([`pool_plan::decide`]), then scales, records, and writes the
/// status once.
async fn apply(pool: &WorkerPool, ctx: &Context) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let now = Time(Timestamp::now());
    let queue_url = pool.status.as_ref().and_then(|s| s.queue_url.as_deref());
    let queue_name = build::queue_name(
        &ns,
        &name,
        pool.spec.queue.as_ref().and_then(|q| q.name.as_deref()),
    );
    let validation = validate::workerpool(&pool.spec, &ns, &ctx.settings.allowed_names)
        .and_then(|()| validate::workerpool_name(&name, &pool.spec).map_err(|e| vec![e]))
        .and_then(|()| validate::queue_kept(&queue_name, queue_url).map_err(|e| vec![e]))
        .and_then(|()| {
            let st = pool.status.as_ref();
            validate::fleet_kept(
                &fleet_identity(pool.spec.provider.as_ref()),
                st.and_then(|s| s.fleet.as_deref()),
                st.map_or(0, |s| s.replicas.max(s.desired_replicas)),
            )
            .map_err(|e| vec![e])
        });
    if let Err(problems) = &validation {
        let plan = pool_plan::decide(pool, &Observed::Invalid(problems), ctx.settings.poll, &now);
        return carry_out(pool, ctx, plan, None).await;
    }

    // What this run remembers of the pool, held for the whole reconcile (the
    // controller runs one reconcile of an object at a time).
    let memory = ctx.pool_memory(&uid(pool));
    let mut memory = memory.lock().await;

    // Its dead-letter queue deleted outside the operator: the reader stopped
    // on it, and both are made again as for the queue itself (below).
    if memory
        .dead_letters
        .as_ref()
        .is_some_and(|r| r.0.is_finished())
    {
        let dlq = memory
            .queue
            .as_ref()
            .and_then(|(q, _)| q.dead_letter_url())
            .map(build::queue_name_in_url)
            .unwrap_or_default()
            .to_string();
        forget_deleted_queue(
            pool,
            ctx,
            &mut memory,
            DEAD_LETTER_QUEUE_RECREATED,
            format!("the pool's dead-letter queue {dlq} was deleted outside the operator: it is made again, and read again"),
        )
        .await;
    }

    // The queue: made once per operator run and spec, then remembered.
    let known = memory.queue.is_some();
    if !known {
        let uses = pool_sharing::Uses::by_spec(pool);
        let taken = pool_sharing::taken_before(pool, &uses, &all_pools(pool, ctx).await?);
        if !taken.is_empty() {
            let problems = [validate::shared(&queue_name, &taken)];
            let plan =
                pool_plan::decide(pool, &Observed::Invalid(&problems), ctx.settings.poll, &now);
            return carry_out(pool, ctx, plan, None).await;
        }
    }
    let queue = match ensure_queue(pool, ctx, &mut memory, queue_name.clone()).await {
        Ok(q) => q,
        Err(e) => {
            let observed = Observed::QueueUnavailable(e.to_string());
            let plan = pool_plan::decide(pool, &observed, ctx.settings.poll, &now);
            return carry_out(pool, ctx, plan, Some(&mut memory)).await;
        }
    };
    let stats = match queue.stats().await {
        Ok(stats) => stats,
        // Just made: SQS may take a moment to show a new queue.
        Err(e) if e.kind == ErrorKind::NotFound && !known => {
            tracing::debug!(queue = %queue_name, error = %e, "a queue just made is not there yet");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        // Deleted behind the operator's back (by hand, by a cleanup): made
        // again at once under its name, so at its URL, where the workers
        // and runners find it again by themselves. What it held is gone;
        // the batches report those tasks lost after --missing-after.
        Err(e) if e.kind == ErrorKind::NotFound => {
            forget_deleted_queue(
                pool,
                ctx,
                &mut memory,
                QUEUE_RECREATED,
                format!(
                    "the pool's queue {queue_name} was deleted outside the operator: it is made again; the bundles it held are gone, and their batches report those tasks lost after the operator's --missing-after"
                ),
            )
            .await;
            return Ok(Action::requeue(Duration::ZERO));
        }
        Err(e) => return Err(e.into()),
    };
    // Bundles left in the priority lane, once in this run (a restart
    // forgets the sends) and a while after sends to it.
    let key = crate::shares::pool_key(&ns, &name);
    if !std::mem::replace(&mut memory.lane_looked, true)
        || ctx.shares.lane_to_look_at(&key, LANE_WAIT, Instant::now())
    {
        move_lane_leftovers(pool, ctx, &key, &queue).await;
    }
    let fleet = WorkerFleet::of(pool, ctx, &mut memory, queue.url())?;
    let workers = match fleet.observe(pool, ctx).await {
        Ok(workers) => workers,
        Err(e) => {
            return fleet_failed(
                pool,
                ctx,
                &mut memory,
                format!("cannot read the workers: {e}"),
                e,
            )
            .await;
        }
    };
    let worker_problem = worker_problem(pool, ctx, &mut memory, &fleet, &workers).await;
    let work = ctx.shares.work(&key);
    ctx.shares.saw_queue(&key, stats.visible);
    let idle = stats.visible + stats.in_flight + stats.delayed == 0
        && work.tasks > 0
        && !busy(pool, ctx, &mut memory).await;
    ctx.pool_idle.saw(&key, idle);
    let config = ScaleConfig::from_spec(&pool.spec);
    let (decision, busy_hosts) = scale_decision(
        pool,
        ctx,
        &mut memory,
        &fleet,
        &config,
        &stats,
        &workers,
        &work,
    )
    .await;
    let decision = crate::scale::within_bounds(decision, workers.bounds);

    let observed = Observed::Running(Running {
        fleet: fleet_identity(pool.spec.provider.as_ref()),
        queue_url: queue.url().to_string(),
        dead_letter_queue_url: queue.dead_letter_url().map(str::to_string),
        stats,
        workers: &workers,
        work: &work,
        decision: &decision,
        min: config.min,
        slots_per_worker: config.slots_per_worker,
        worker_problem: worker_problem.as_deref(),
    });
    let plan = pool_plan::decide(pool, &observed, ctx.settings.poll, &now);
    if let Err(e) = fleet
        .scale(
            pool,
            ctx,
            &mut memory,
            queue.url(),
            decision.replicas,
            &workers,
            busy_hosts,
        )
        .await
    {
        let why = format!(
            "cannot make the workers {} (now {}): {e}",
            decision.replicas, workers.current
        );
        return fleet_failed(pool, ctx, &mut memory, why, e).await;
    }
    memory.fleet_failing_since = None;
    let labels = pool_labels(&ns, &name);
    if plan.change != 0 {
        memory.scale.scaled(SystemTime::now(), plan.change);
        ctx.metrics.scale_changes.get_or_create(&labels).inc();
        tracing::info!(pool = %format!("{ns}/{name}"), from = workers.current, to = decision.replicas, reason = %decision.reason, "scaled");
    }
    ctx.metrics
        .backlog
        .get_or_create(&labels)
        .set(plan.status.backlog);
    ctx.metrics
        .desired_workers
        .get_or_create(&labels)
        .set(i64::from(decision.replicas));
    ctx.metrics
        .ready_workers
        .get_or_create(&labels)
        .set(i64::from(workers.ready));
    carry_out(pool, ctx, plan, Some(&mut memory)).await
}

/// How soon a pool whose fleet failed for a while only is looked at again.
const FLEET_RETRY_SOON: Duration = Duration::from_secs(5);

/// Errors that should pass by themselves but have lasted this long are
/// said as failures (a node group stuck updating, throttling that never
/// ends): retried quietly for ever, they reached neither the status nor an
/// Event.
const FLEET_QUIET_AT_MOST: Duration = Duration::from_secs(120);

/// When the fleet's error `e` passes by itself in seconds (a node group
/// still updating, throttling, a timeout) and such errors began less than
/// [`FLEET_QUIET_AT_MOST`] ago (`since`, set at the first): how soon to try
/// again, quietly. None: a failure, to be said and backed off from.
fn retry_soon(e: &FleetError, since: &mut Option<Instant>, now: Instant) -> Option<Duration> {
    if !e.temporary {
        return None;
    }
    let since = *since.get_or_insert(now);
    (now.saturating_duration_since(since) < FLEET_QUIET_AT_MOST).then_some(FLEET_RETRY_SOON)
}

/// The fleet could not be read or scaled. For a while only
/// ([`retry_soon`]): tried again shortly, the conditions as they are, and
/// only the log says it. Otherwise said in the status (`Available=False`,
/// `FleetError`) and a warning Event, where it was only in the operator's
/// log, and the error returned, so that the reconcile is retried with
/// growing delays (EC2 out of capacity is not asked every poll).
async fn fleet_failed(
    pool: &WorkerPool,
    ctx: &Context,
    memory: &mut PoolMemory,
    why: String,
    e: FleetError,
) -> Result<Action, Error> {
    if let Some(after) = retry_soon(&e, &mut memory.fleet_failing_since, Instant::now()) {
        tracing::info!(
            pool = %format!("{}/{}", pool.namespace().unwrap_or_default(), pool.name_any()),
            retry_in = ?after,
            "{why} (for a while only: trying again)"
        );
        return Ok(Action::requeue(after));
    }
    let now = Time(Timestamp::now());
    let plan = pool_plan::decide(
        pool,
        &Observed::FleetUnavailable(why),
        ctx.settings.poll,
        &now,
    );
    carry_out(pool, ctx, plan, Some(memory)).await?;
    Err(e.error)
}

/// Heartbeats are read at most this often to tell whether a worker runs a
/// task (a table scan; only while the queue is empty and tasks outstanding).
pub const BUSY_READ_EVERY: Duration = Duration::from_secs(10);

/// Why workers are not ready is looked at most this often (a list of the
/// pool's pods, only while some are not ready).
pub const PROBLEM_READ_EVERY: Duration = Duration::from_secs(5);

/// Why the workers asked for are not all ready, as last looked at.
async fn worker_problem(
    pool: &WorkerPool,
    ctx: &Context,
    memory: &mut PoolMemory,
    fleet: &WorkerFleet,
    workers: &ObservedWorkers,
) -> Option<String> {
    if workers.ready >= workers.current {
        memory.worker_problem.forget();
        return None;
    }
    if let Some(problem) = memory.worker_problem.within(PROBLEM_READ_EVERY) {
        return problem;
    }
    let problem = fleet.problem(pool, ctx).await;
    memory.worker_problem.set(problem)
}

/// Whether a worker of the pool may run a task, as last read.
async fn busy(pool: &WorkerPool, ctx: &Context, memory: &mut PoolMemory) -> bool {
    if let Some(busy) = memory.busy_read.within(BUSY_READ_EVERY) {
        return busy;
    }
    let busy = crate::worker_fleet::any_worker_busy(pool, ctx).await;
    memory.busy_read.set(busy)
}

/// The scaler's decision on what was read: idle workers go first on a
/// scale-down, the busy ones stay; with the hosts of an EC2 fleet's busy
/// workers, read for a scale-down, for the fleet to spare.
#[allow(clippy::too_many_arguments)] // what the scaler reads, named
async fn scale_decision(
    pool: &WorkerPool,
    ctx: &Context,
    memory: &mut PoolMemory,
    fleet: &WorkerFleet,
    config: &ScaleConfig,
    stats: &QueueStats,
    workers: &ObservedWorkers,
    work: &PoolWork,
) -> (Decision, Option<crate::provider::BusyHosts>) {
    let system_now = SystemTime::now();
    if stats.visible + stats.in_flight + stats.delayed > 0 {
        memory.last_active = Some(system_now);
    }
    // After a restart only the status knows (see `PoolMemory::last_active`).
    let last_active = memory.last_active.or_else(|| {
        pool.status
            .as_ref()
            .and_then(|s| s.last_active_time.as_ref())
            .map(end_of_second)
    });
    let (work_tasks, work_task_seconds) = work.to_run();
    let mut decision = memory.scale.decide(
        config,
        &scale::Observed {
            backlog_visible: stats.visible + stats.delayed,
            backlog_in_flight: stats.in_flight,
            work_tasks,
            work_task_seconds,
            current: workers.current,
            ready: workers.ready,
            last_active,
        },
        system_now,
    );
    let mut busy_hosts = None;
    if decision.scales_down(workers.current) {
        let (busy, hosts) = fleet.busy_before_scale_down(pool, ctx).await;
        if let Some(busy) = busy {
            decision.keep_busy(busy, workers.current, stats.in_flight, config.max);
        }
        busy_hosts = hosts;
    }
    (decision, busy_hosts)
}

/// The plan's Events and its status: written when something a reader acts
/// on changed, figures at most once a second (the next poll writes what is
/// held back now).
async fn carry_out(
    pool: &WorkerPool,
    ctx: &Context,
    plan: Plan,
    memory: Option<&mut PoolMemory>,
) -> Result<Action, Error> {
    for note in plan.events {
        ctx.event(pool, note.warning, &note.reason, note.message)
            .await;
    }
    let old = pool.status.clone().unwrap_or_default();
    let now = Instant::now();
    let written = memory.as_ref().and_then(|m| m.status_written);
    if status_due(&old, &plan.status, written, now) {
        let api: Api<WorkerPool> =
            Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
        write_status(&api, &pool.name_any(), &plan.status).await?;
        if let Some(m) = memory {
            m.status_written = Some(now);
        }
    }
    Ok(match plan.then {
        pool_plan::Then::Requeue(after) => Action::requeue(after),
        pool_plan::Then::AwaitChange => Action::await_change(),
    })
}

fn pool_labels(ns: &str, name: &str) -> crate::metrics::PoolLabels {
    crate::metrics::PoolLabels {
        namespace: ns.to_string(),
        pool: name.to_string(),
    }
}

/// The latest instant a status `Time` (kept to the second) may stand for:
/// counting the cooldown from there never cuts it short.
fn end_of_second(t: &Time) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.0.as_second()).unwrap_or(0) + 1)
}

/// A queue of the pool (it or its dead-letter queue) was deleted outside
/// the operator: both are forgotten, with the dead-letter reader, so that
/// [`ensure_queue`] makes them again; `message` goes to the log and to a
/// Warning Event of `reason`.
async fn forget_deleted_queue(
    pool: &WorkerPool,
    ctx: &Context,
    memory: &mut PoolMemory,
    reason: &str,
    message: String,
) {
    let pool_name = format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    );
    tracing::warn!(pool = %pool_name, "{message}");
    memory.queue = None;
    memory.dead_letters = None;
    ctx.event(pool, true, reason, message).await;
}

/// Moves the bundles waiting in the pool's priority lane to its queue: no
/// worker read them within [`LANE_WAIT`] (workers older than the lane read
/// only the queue), or those that would are busy; the queue serves them
/// either way.
async fn move_lane_leftovers(pool: &WorkerPool, ctx: &Context, name: &str, queue: &SqsQueue) {
    let lane = queue.priority_lane();
    match lane.move_visible_to(queue, LANE_MOVE_MAX).await {
        Ok(0) => {}
        Ok(n) => {
            let message = format!(
                "{n} bundles waited over {}s in the priority lane {}: moved to the queue (do the pool's workers run a version that reads the lane?)",
                LANE_WAIT.as_secs(),
                lane.url()
            );
            tracing::warn!(pool = %name, "{message}");
            ctx.event(pool, true, LANE_BUNDLES_MOVED, message).await;
        }
        Err(e) if e.kind == ErrorKind::NotFound => {
            tracing::debug!(pool = %name, error = %e, "no priority lane to look at");
        }
        Err(e) => {
            tracing::warn!(pool = %name, error = %e, "cannot move the priority lane's bundles to the queue; trying again after the next send to it");
        }
    }
}

/// The pool's queue `name`, made (or given the spec's settings) when this
/// run has not made it with them yet.
async fn ensure_queue(
    pool: &WorkerPool,
    ctx: &Context,
    memory: &mut PoolMemory,
    name: String,
) -> Result<SqsQueue, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let spec = pool.spec.queue.clone().unwrap_or_default();
    let made = QueueMade {
        name,
        max_receives: u32::try_from(spec.max_receives.unwrap_or(DEFAULT_MAX_RECEIVES)).unwrap_or(5),
    };
    if let Some((q, with)) = &memory.queue
        && *with == made
    {
        return Ok(q.clone());
    }
    let options = QueueOptions {
        max_receives: Some(made.max_receives),
        priority_lane: true,
        ..QueueOptions::default()
    };
    let queue = ctx.sqs.create_queue(&made.name, &options).await?;
    // Read for as long as the operator remembers the pool: its dead bundles'
    // batches would otherwise never finish.
    let reader = queue.dead_letter_url().map(|dlq| {
        let table = pool.spec.ledger_table();
        crate::dead_letters::Reader(tokio::spawn(crate::dead_letters::watch(
            format!("{ns}/{}", pool.name_any()),
            queue.sibling(dlq),
            Some(ctx.aws.ledger(table)),
            ctx.sqs.clone(),
            options.max_receives.unwrap_or(5),
        )))
    });
    memory.queue = Some((queue.clone(), made));
    memory.dead_letters = reader;
    Ok(queue)
}

/// Applies the pool's status, whole: the reconciler is its only writer.
async fn write_status(
    api: &Api<WorkerPool>,
    name: &str,
    status: &WorkerPoolStatus,
) -> Result<(), Error> {
    status_patch::apply_status(api, name, POOL_RECONCILER, status).await
}

/// How often a pool being deleted looks again at the batches it waits for.
const DELETION_WAIT_EVERY: Duration = Duration::from_secs(2);

/// The TaskBatches among `batches` that still run on pool `pool`, by name:
/// those live ([`crate::batch_plan::is_live`]: not finished or cancelled),
/// not being deleted, that sent tasks to its queue. A pool deleted under them would take their queued bundles
/// with its queue, and they would wait for ever for tasks that no longer
/// exist anywhere. (One that sent nothing yet loses nothing: it waits for a
/// pool of that name, as before it started.)
pub fn batches_in_the_way(pool: &str, batches: &[crate::crd::TaskBatch]) -> Vec<String> {
    let mut names: Vec<String> = batches
        .iter()
        .filter(|b| {
            let first = b.status.as_ref().and_then(|s| s.worker_pool.as_deref());
            (b.spec.worker_pool == pool || first == Some(pool))
                && b.metadata.deletion_timestamp.is_none()
        })
        .filter(|b| crate::batch_plan::is_live(b))
        .filter(|b| b.status.as_ref().is_some_and(|s| s.counts.enqueued > 0))
        .map(|b| b.name_any())
        .collect();
    names.sort();
    names
}

/// The finalizer. First, while TaskBatches still run on the pool, it waits:
/// the pool goes on (its workers serve them, scaled as usual) and an Event
/// names them. Then it releases the fleet and deletes the queues. What is
/// already gone (a group, node group or queue deleted behind the pool's
/// back) counts as done; any other failure keeps the finalizer, is reported
/// in the `CleanupFailed` condition and an Event, and is retried with
/// growing delays.
async fn cleanup(pool: &WorkerPool, ctx: &Context) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let batches: Api<crate::crd::TaskBatch> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = batches
        .list(&Default::default())
        .await
        .map_err(Error::kube(format!("cannot list the TaskBatches of {ns}")))?;
    let waits_for = batches_in_the_way(&pool.name_any(), &listed.items);
    if !waits_for.is_empty() {
        let message = format!(
            "the deletion waits for the TaskBatches that run on this pool: {} (its queue holds \
             their tasks; they finish first, or cancel or delete them)",
            waits_for.join(", ")
        );
        let memory = ctx.pool_memory(&uid(pool));
        let told = std::mem::replace(
            &mut memory.lock().await.deletion_waits_for,
            waits_for.clone(),
        );
        if told != waits_for {
            ctx.event(pool, false, "DeletionWaits", message.clone())
                .await;
        }
        apply(pool, ctx).await?;
        return Err(Error::DeletionWaits {
            message,
            retry_in: DELETION_WAIT_EVERY,
        });
    }
    ctx.finalize(&uid(pool), release(pool, ctx), |message| async move {
        report_cleanup_failure(pool, ctx, &message).await
    })
    .await
}

async fn report_cleanup_failure(pool: &WorkerPool, ctx: &Context, message: &str) {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &ns);
    let old = pool.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let update = status::ConditionUpdate::new(
        status::pool_condition::CLEANUP_FAILED,
        true,
        "CleanupFailed",
        message.to_string(),
    );
    let now = Time(Timestamp::now());
    if set_condition(&mut st.conditions, &update, pool.metadata.generation, &now) {
        ctx.event(pool, true, "CleanupFailed", message.to_string())
            .await;
    }
    if old == st {
        return;
    }
    if let Err(e) = write_status(&api, &name, &st).await {
        tracing::warn!(pool = %format!("{ns}/{name}"), error = %e, "cannot report the failed cleanup");
    }
}

/// Every WorkerPool the operator may see: in all namespaces (explicit queue
/// names may meet across them), or in the pool's own where it may list only
/// that one (Forbidden: an operator of one namespace). Any other error is
/// the reconcile's: a pool accepted, or a queue deleted, on a partial list
/// could take or delete another namespace's queue.
async fn all_pools(pool: &WorkerPool, ctx: &Context) -> Result<Vec<WorkerPool>, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let listed = match Api::<WorkerPool>::all(ctx.client.clone())
        .list(&Default::default())
        .await
    {
        Ok(list) => list,
        Err(e) if !is_forbidden(&e) => {
            return Err(Error::kube(
                "cannot list the WorkerPools of every namespace",
            )(e));
        }
        Err(_) => Api::<WorkerPool>::namespaced(ctx.client.clone(), &ns)
            .list(&Default::default())
            .await
            .map_err(Error::kube(format!("cannot list the WorkerPools of {ns}")))?,
    };
    Ok(listed.items)
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

/// Which fleet (its [`fleet_identity`]) a pool being deleted releases: the
/// EC2 fleet this run scaled (`known`), else the one its status records
/// (`recorded`: the fleet it ran, after a restart or a failed release, which
/// forgets the pool), and the spec's only when neither knows. Never the spec's
/// over those: a spec moved to another fleet while workers remain is
/// refused, and releasing it would leave the pool's workers running on a
/// deleted queue and scale down a fleet that is not the pool's.
fn fleet_to_release(
    known: Option<String>,
    recorded: Option<&str>,
    spec: Option<&crate::crd::workerpool::Provider>,
) -> String {
    known
        .or_else(|| recorded.map(str::to_string))
        .unwrap_or_else(|| fleet_identity(spec))
}

async fn release(pool: &WorkerPool, ctx: &Context) -> Result<(), Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let memory = ctx
        .pools
        .lock()
        .expect("pool memory lock")
        .remove(&uid(pool));
    let known = match memory {
        Some(m) => m.lock().await.ec2.clone(),
        None => None,
    };
    let spec_queue = pool.spec.queue.clone().unwrap_or_default();
    // The queue the pool has (a changed spec.queue.name is refused, and
    // never names the queue deleted here), else the spec's.
    let queue_name = pool
        .status
        .as_ref()
        .and_then(|s| s.queue_url.as_deref())
        .map(build::queue_name_in_url)
        .map_or_else(
            || build::queue_name(&ns, &name, spec_queue.name.as_deref()),
            str::to_string,
        );
    let identity = fleet_to_release(
        known.as_deref().map(Ec2Provider::identity),
        pool.status.as_ref().and_then(|s| s.fleet.as_deref()),
        pool.spec.provider.as_ref(),
    );
    let uses = pool_sharing::Uses {
        queue: queue_name.clone(),
        fleet: identity.clone(),
    };
    let pools = all_pools(pool, ctx).await?;
    let sharers = pool_sharing::in_use_by_others(pool, &uses, &pools);
    if !sharers.is_empty() {
        ctx.event(
            pool,
            true,
            "SharedKept",
            format!(
                "the queue {queue_name} and the workers are kept: WorkerPool {} uses them too",
                sharers.join(", ")
            ),
        )
        .await;
        ctx.metrics.forget_pool(&pool_labels(&ns, &name));
        return Ok(());
    }
    let fleet = match known {
        Some(fleet) if fleet.identity() == identity => Some(fleet),
        _ => Ec2Provider::from_identity(&identity, &ns, &name, ctx.aws.sdk_config())
            .map_err(|e| Error::Other(format!("cannot release the workers: {e}")))?
            .map(Arc::new),
    };
    if let Some(fleet) = fleet {
        match fleet.delete_all().await {
            Ok(()) => {}
            // Nothing left to scale down.
            Err(e) if e.is_not_found() => {
                tracing::info!(pool = %format!("{ns}/{name}"), error = %e, "the fleet is already gone");
            }
            Err(e) => return Err(Error::Other(format!("cannot release the workers: {e}"))),
        }
    }
    if spec_queue.deletion_policy != Some(DeletionPolicy::Retain) {
        let lane = format!("{queue_name}{PRIORITY_LANE_SUFFIX}");
        // The dead-letter queue last: while it lasts, the others open.
        for q in [queue_name.clone(), lane, format!("{queue_name}-dlq")] {
            let deleted = match ctx.sqs.open(&q).await {
                Ok(queue) => queue.delete().await,
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => {}
                Err(e) if e.kind == cloudkon_core::aws::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Other(format!("cannot delete queue {q}: {e}"))),
            }
        }
        ctx.event(
            pool,
            false,
            "QueuesDeleted",
            "the queue, its priority lane and its dead-letter queue are deleted".into(),
        )
        .await;
    }
    ctx.metrics.forget_pool(&pool_labels(&ns, &name));
    // Pools refused for naming what this one had wait on nothing else: no
    // change of their own would wake them.
    for waiting in pool_sharing::waiting_for(pool, &uses, &pools) {
        let _ = ctx.wake_pool.send(waiting);
    }
    // The Deployment goes with its owner (garbage collection).
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_waits_only_for_the_batches_that_still_run_on_it() {
        use crate::crd::TaskBatch;
        use serde_json::json;
        let batch = |name: &str, pool: &str, extra: serde_json::Value| -> TaskBatch {
            let mut v = json!({
                "apiVersion": "cloudkon.io/v1alpha1", "kind": "TaskBatch",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"workerPool": pool, "tasks": {"inline": [{"kind": "sleep", "ms": 1}]}},
            });
            for (k, x) in extra.as_object().unwrap() {
                match k.as_str() {
                    "cancel" => v["spec"]["cancel"] = x.clone(),
                    "phase" => v["status"] = json!({"phase": x, "counts": {"enqueued": 5}}),
                    "nothing sent" => v["status"] = json!({"phase": x}),
                    "deleting" => v["metadata"]["deletionTimestamp"] = x.clone(),
                    "moved from" => {
                        v["status"] =
                            json!({"phase": "Running", "counts": {"enqueued": 5}, "workerPool": x})
                    }
                    _ => unreachable!(),
                }
            }
            serde_json::from_value(v).unwrap()
        };
        let batches = [
            batch("running", "p", json!({"phase": "Running"})),
            batch("pending", "p", json!({})),
            batch("suspended", "p", json!({"nothing sent": "Pending"})),
            batch("enqueuing", "p", json!({"phase": "Enqueuing"})),
            batch("other-pool", "q", json!({"phase": "Running"})),
            // Its spec moved to q after it sent to p: p's queue holds its tasks.
            batch("moved", "q", json!({"moved from": "p"})),
            batch("done", "p", json!({"phase": "Succeeded"})),
            batch("failed", "p", json!({"phase": "Failed"})),
            batch("cancelled", "p", json!({"phase": "Cancelled"})),
            batch(
                "cancelling",
                "p",
                json!({"phase": "Running", "cancel": true}),
            ),
            batch(
                "deleted",
                "p",
                json!({"phase": "Running", "deleting": "2026-12-01T00:00:00Z"}),
            ),
        ];
        assert_eq!(
            batches_in_the_way("p", &batches),
            vec!["enqueuing", "moved", "running"]
        );
        assert!(batches_in_the_way("r", &batches).is_empty());
    }

    #[test]
    fn a_deleted_pool_releases_the_fleet_it_ran_not_the_one_its_spec_names() {
        use crate::crd::workerpool::{AutoScalingGroup, Provider, ProviderType};
        let spec = |type_, group: Option<&str>| Provider {
            type_,
            instances: None,
            auto_scaling_group: group.map(|g| AutoScalingGroup { name: g.into() }),
            eks_nodegroup: None,
        };
        let deployment = spec(ProviderType::Deployment, None);
        let other_group = spec(ProviderType::AutoScalingGroup, Some("theirs"));
        // Instances, then a spec moved (refused) to a Deployment or another
        // pool's group: after a restart only the status knows.
        for moved in [&deployment, &other_group] {
            assert_eq!(
                fleet_to_release(None, Some("Instances"), Some(moved)),
                "Instances"
            );
        }
        assert_eq!(
            fleet_to_release(None, Some("AutoScalingGroup/mine"), Some(&other_group)),
            "AutoScalingGroup/mine"
        );
        assert_eq!(
            fleet_to_release(None, Some("Deployment"), Some(&other_group)),
            "Deployment"
        );
        // What this run scaled, first.
        assert_eq!(
            fleet_to_release(
                Some("AutoScalingGroup/mine".into()),
                Some("Instances"),
                Some(&other_group)
            ),
            "AutoScalingGroup/mine"
        );
        // Nothing recorded (never written): the spec.
        assert_eq!(
            fleet_to_release(None, None, Some(&other_group)),
            "AutoScalingGroup/theirs"
        );
        assert_eq!(fleet_to_release(None, None, None), "Deployment");
    }

    #[test]
    fn a_fleet_error_that_passes_by_itself_is_tried_again_soon_not_reported() {
        use crate::provider::ProviderError;
        use cloudkon_core::aws::AwsError;
        let pool: WorkerPool =
            serde_yaml::from_str(include_str!("../../examples/workerpool.yaml")).unwrap();
        let aws = |code: &str, kind| {
            ProviderError::Aws(AwsError {
                service: "EKS",
                operation: "UpdateNodegroupConfig",
                resource: "node group n of EKS cluster c".into(),
                code: Some(code.into()),
                kind,
                message: "m".into(),
            })
        };
        let fleet = |e| crate::worker_fleet::fleet_error(&pool, e);
        for temporary in [
            aws("ResourceInUseException", ErrorKind::Transient),
            aws("ThrottlingException", ErrorKind::Transient),
            aws("ScalingActivityInProgress", ErrorKind::Transient),
        ] {
            let t0 = Instant::now();
            let mut since = None;
            assert_eq!(
                retry_soon(&fleet(temporary), &mut since, t0),
                Some(FLEET_RETRY_SOON)
            );
            assert_eq!(since, Some(t0));
            let later = t0 + FLEET_QUIET_AT_MOST - Duration::from_secs(1);
            assert_eq!(
                retry_soon(
                    &fleet(aws("ThrottlingException", ErrorKind::Transient)),
                    &mut since,
                    later
                ),
                Some(FLEET_RETRY_SOON),
                "counted from the first"
            );
            // Lasting: said as a failure.
            assert_eq!(
                retry_soon(
                    &fleet(aws("ThrottlingException", ErrorKind::Transient)),
                    &mut since,
                    t0 + FLEET_QUIET_AT_MOST
                ),
                None
            );
        }
        for failure in [
            // Short of capacity may last hours: the pool says so.
            aws("InsufficientInstanceCapacity", ErrorKind::Transient),
            aws("AccessDeniedException", ErrorKind::Permanent),
            aws("ResourceNotFoundException", ErrorKind::NotFound),
            ProviderError::UnknownFleet("x".into()),
        ] {
            assert_eq!(retry_soon(&fleet(failure), &mut None, Instant::now()), None);
        }
        // A Deployment's errors are failures.
        assert_eq!(
            retry_soon(&Error::Other("x".into()).into(), &mut None, Instant::now()),
            None
        );
    }

    #[test]
    fn a_status_time_stands_for_the_end_of_its_second() {
        // Written at 12.9 s, read back as 12 s: the cooldown counts from 13 s.
        let t = Time(k8s_openapi::jiff::Timestamp::from_second(12).unwrap());
        assert_eq!(
            end_of_second(&t),
            SystemTime::UNIX_EPOCH + Duration::from_secs(13)
        );
    }

    #[test]
    fn figures_are_written_at_most_once_a_second_and_conditions_at_once() {
        let t0 = Instant::now();
        let old = WorkerPoolStatus::default();
        let mut figures = old.clone();
        figures.backlog = 7;
        assert!(!status_due(&old, &old, None, t0), "nothing changed");
        assert!(status_due(&old, &figures, None, t0), "never written");
        assert!(!status_due(
            &old,
            &figures,
            Some(t0),
            t0 + Duration::from_millis(400)
        ));
        assert!(status_due(&old, &figures, Some(t0), t0 + STATUS_EVERY));
        let mut generation = figures.clone();
        generation.observed_generation = Some(2);
        assert!(status_due(&old, &generation, Some(t0), t0));
        let mut desired = old.clone();
        desired.desired_replicas = 3;
        assert!(status_due(&old, &desired, Some(t0), t0));
    }
}
