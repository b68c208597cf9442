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
//!
//! It works through traits ([`Runner`]): core's task queue, results inbox and
//! object store, and a [`BatchRecord`]; SQS, S3 and the API server in the
//! operator, memory in the tests below.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudkon_core::aws::{QueueOptions, RequestStats, S3Store, S3Uri, SqsQueue, StatsSnapshot};
use cloudkon_core::id_set::IdSet;
use cloudkon_core::ledger::DedupLedger;
use cloudkon_core::queue::{QueueError, Receipt, ResultsInbox, TaskQueue};
use cloudkon_core::store::ObjectStore;
use cloudkon_core::task::Timestamp;
use cloudkon_core::workload::{SendOrder, TaskDef, Wanted, WorkloadReader};
use cloudkon_core::{BatchId, Bundle, BundleOptions, TaskResult};
use cloudkon_worker::remote::declared_length;
use hdrhistogram::Histogram;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp as JiffTimestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use std::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, watch};

pub use crate::batch_record::collected_configmap_name;
use crate::batch_record::{BatchRecord, KubeRecord};
use crate::build;
use crate::collected::Collected;
use crate::context::{Context, Settings};
use crate::crd::taskbatch::{BundleSizing, Latency, Phase, TaskBatchSpec, TaskCounts, TaskOrder};
use crate::crd::{TaskBatch, WorkerPool};
use crate::enqueue;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pool_idle::PoolIdle;
use crate::runner_handle::{Failures, RunnerHandle};
use crate::shares::{self, ShareGuard, Shares};
use crate::sizing::{self, SizingInput};
use crate::status::{self, PhaseInput};
use crate::status_patch::{CountsPatch, StatusPatch, count};
use crate::window::{self, Estimate, MeterInput};

/// Bundles per send (one SendMessageBatch when they fit) and per checkpoint.
pub(crate) const SEND_GROUP: usize = 10;
/// How often the enqueue checkpoint is written, at most.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Results messages per ReceiveMessage (SQS's most).
pub(crate) const RECEIVE_RESULTS: usize = 10;
/// Results receives the collector makes at once, at most.
pub(crate) const MAX_RESULT_RECEIVES: usize = 16;

/// How many results receives the collector makes at once next, after `got`
/// messages from `receives`: twice as many while every one came back full
/// (the response queue holds more), half as many when they did not. A
/// pool's workers each send a message per linger (1,000 workers at 200 ms:
/// 5,000 a second), and one receive at a time takes in ten per round trip
/// (about 1,000 a second at 10 ms): the collector would fall behind, the
/// batch's tasks would stay counted in flight, and the meter would starve
/// the pool.
pub fn result_receives(receives: usize, got: usize) -> usize {
    let receives = receives.max(1);
    if got >= RECEIVE_RESULTS * receives {
        (2 * receives).min(MAX_RESULT_RECEIVES)
    } else {
        (receives / 2).max(1)
    }
}

/// A results receive's long poll. SQS waits whole seconds (a 500 ms wait
/// is a second's), and returns as soon as a message is there.
pub(crate) const RESULTS_WAIT: Duration = Duration::from_secs(1);

/// One collector round: `receives` results receives at once. Only the
/// first long-polls, for `wait` ([`RESULTS_WAIT`]); the others take what
/// is there and return. The round
/// ends with its last receive, and with every receive long-polling, the
/// last messages of a busy stretch went to some while another waited out
/// its second: a 1 M-task batch ended ~1 s late in most runs of the bench.
pub async fn receive_round<I: ResultsInbox>(
    inbox: &I,
    receives: usize,
    wait: Duration,
) -> Result<Vec<(cloudkon_core::wire::ResultsMessage, Receipt)>, QueueError> {
    let rounds = futures_util::future::try_join_all((0..receives.max(1)).map(|i| {
        let wait = if i == 0 { wait } else { Duration::ZERO };
        inbox.receive_results(RECEIVE_RESULTS, wait)
    }))
    .await?;
    Ok(rounds.into_iter().flatten().collect())
}

/// How long the collector waits before its next round, after `got`
/// messages holding `results` from `receives`: a round that came back
/// neither empty nor full, with less than a send's worth of results, met a
/// trickle (with a long poll, a receive returns as soon as one message is
/// there), and the next would take about one message a receive: 1,000
/// workers sending 135 messages a second cost 356,000 receives for 747,000
/// messages (simulated). After [`COLLECT_PAUSE`], a round takes ten to a
/// receive. An empty round has waited its long poll already; a full one
/// goes on at once, and so does one that brought many results (bundles of
/// short tasks, each message thousands: the meter waits on their count).
/// So does every round while the batch's bundles are `growing`
/// ([`sizing::growing`]): each step of their growth waits for a round's
/// results, and 10,000 `run true` took ~3 s of pauses to grow from 16-task
/// bundles to their size, a third of the batch.
pub fn collect_pause(receives: usize, got: usize, results: usize, growing: bool) -> Duration {
    if !growing
        && got > 0
        && got < RECEIVE_RESULTS * receives.max(1)
        && results < cloudkon_worker::remote::RESULTS_PER_SEND
    {
        COLLECT_PAUSE
    } else {
        Duration::ZERO
    }
}

/// The collector's wait after a round that was not full: results are
/// counted up to this much later (a worker's results already wait up to its
/// 5 s linger).
pub const COLLECT_PAUSE: Duration = Duration::from_millis(500);

/// Result receipts the collector holds at most before a flush deletes them.
pub(crate) const FLUSH_RECEIPTS: usize = 200;

/// Whether the collector flushes now (writes its results out, deletes the
/// receipts): when it `must`, when `since_flush` is `flush_every`
/// (`Settings::flush_every`) or more, or when it holds `receipts` of
/// [`FLUSH_RECEIPTS`] or more.
pub(crate) fn flush_due(
    must: bool,
    since_flush: Duration,
    flush_every: Duration,
    receipts: usize,
) -> bool {
    must || since_flush >= flush_every || receipts >= FLUSH_RECEIPTS
}

/// Where a batch's tasks come from, read by the reconciler (which validates a
/// workload file before anything is enqueued).
pub enum Source {
    /// Inline tasks or a generator: in the spec.
    Spec,
    /// A workload file's bytes (ConfigMap or S3), already validated.
    File {
        name: String,
        bytes: Arc<crate::workload_memory::Workload>,
        /// [`crate::source_digest::of_bytes`] of the bytes, taken as read.
        digest: String,
    },
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
    /// The pool's `pricePerWorkerHour` when the batch started.
    pub worker_hour_price: Option<f64>,
    /// The pool's ledger table, where lane marks go (`mark_lane`).
    pub ledger_table: String,
}

/// Writes the lane mark of each batch given (see `BatchMarks::lane_at`),
/// off the runner's path: a mark lost costs a look at the lane, no work.
pub type MarkLane = Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// The batch id in task messages and ledger keys: the object's uid, so that a
/// batch deleted and created again under the same name is a new batch.
pub fn batch_id(batch: &TaskBatch) -> BatchId {
    BatchId::new(batch.uid().unwrap_or_default())
}

/// What a runner works through: the pool's queue, the batch's results inbox
/// (its response queue, whose address the bundles carry), the results' object
/// store and the batch's record, with the operator's shared parts.
pub struct Runner<Q, I, S, B> {
    pub pool_queue: Q,
    /// The pool's priority lane (see `shares::priority_lane`), if it has one.
    pub priority_lane: Option<Q>,
    /// After a send to the lane, marks the pool's other batches in the
    /// ledger, which workers whose slots they fill read every few seconds:
    /// those look at the lane then, rather than once a bundle of theirs ends.
    pub mark_lane: Option<MarkLane>,
    pub inbox: I,
    /// Where workers send results: the inbox's address.
    pub reply_to: String,
    pub store: S,
    pub record: B,
    pub shares: Arc<Shares>,
    /// Since when the pool has been idle with tasks outstanding.
    pub pool_idle: Arc<PoolIdle>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Wakes the pool's reconciler (the batch has tasks in the queue).
    pub wake_pool: UnboundedSender<ObjectRef<WorkerPool>>,
    /// The requests of this runner's clients (and only theirs): the
    /// operator's part of the batch's cost.
    pub requests: RequestStats,
}

/// The operator's runner: SQS, S3 and the API server. Makes the batch's
/// response queue.
async fn kube_runner(
    ctx: &Context,
    args: &RunnerArgs,
) -> Result<Runner<SqsQueue, SqsQueue, S3Store, KubeRecord>, Error> {
    let batch = &args.batch;
    // Clients of the batch's own, counting its requests apart.
    let aws = ctx.aws.counted_apart();
    let sqs = aws.sqs();
    let response = sqs
        .create_queue(
            &build::response_queue_name(&batch.uid().unwrap_or_default()),
            &QueueOptions::default(),
        )
        .await?;
    let pool_queue = sqs.at(args.pool_queue_url.clone());
    let ledger = aws.ledger(args.ledger_table.clone());
    let mark_lane: MarkLane = Arc::new(move |batches: Vec<String>| {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let at_ms = Timestamp::now().0 / 1000;
            for batch in batches {
                if let Err(e) = DedupLedger::mark_lane(&ledger, &batch, at_ms).await {
                    tracing::debug!(batch, error = %e, "cannot write a lane mark");
                }
            }
        });
    });
    Ok(Runner {
        priority_lane: Some(pool_queue.priority_lane()),
        mark_lane: Some(mark_lane),
        pool_queue,
        reply_to: response.url().to_string(),
        inbox: response,
        store: aws.s3(),
        record: KubeRecord::new(ctx.client.clone(), batch)?
            .with_events(ctx.recorder.clone(), batch),
        shares: ctx.shares.clone(),
        pool_idle: ctx.pool_idle.clone(),
        metrics: ctx.metrics.clone(),
        settings: ctx.settings.clone(),
        wake_pool: ctx.wake_pool.clone(),
        requests: aws.stats().clone(),
    })
}

/// Starts a batch's runner; `failures`: those of the runners before it.
pub fn spawn(ctx: Arc<Context>, args: RunnerArgs, failures: Failures) -> RunnerHandle {
    let (spec_tx, spec_rx) = watch::channel(args.batch.spec.clone());
    let task = tokio::spawn(async move {
        let name = args.batch.name_any();
        let result = match kube_runner(&ctx, &args).await {
            Ok(runner) => runner.run(args, spec_rx).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(batch = %name, error = %e, "batch runner stopped; it restarts from its checkpoint");
        }
        result
    });
    RunnerHandle::new(task, spec_tx, failures)
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
    /// Its bundles may grow at the next step: the collector does not pause
    /// ([`sizing::collector_cue`]).
    growing: AtomicBool,
    /// Finished tasks over time, for `estimatedCompletionTime`.
    eta: Mutex<crate::eta::Eta>,
}

impl Progress {
    /// Where a runner starts from, as the status says: what was sent and
    /// finished. Finished as the status counts it until the collector has
    /// loaded its collected ids (the status is written after them, so it
    /// never counts more): from 0, every task ever sent would count as
    /// running meanwhile, in the pool's shares (a scale-up, other batches
    /// held back) and in a checkpoint's status.
    fn resumed(counts: &TaskCounts, enqueue_done: bool) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let total = enqueue_done.then_some(count(counts.total));
        Progress {
            total: watch::channel(total).0,
            enqueued: AtomicU64::new(count(counts.enqueued)),
            finished: AtomicU64::new(count(counts.succeeded) + count(counts.failed)),
            collected: Notify::new(),
            planned: AtomicU64::new(total.unwrap_or(0)),
            estimate: Mutex::new(Estimate::default()),
            growing: AtomicBool::new(false),
            eta: Mutex::default(),
        }
    }

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

impl<Q: TaskQueue, I: ResultsInbox, S: ObjectStore, B: BatchRecord> Runner<Q, I, S, B> {
    /// Runs a batch to its end from where its status says it is, or until
    /// `spec`'s sender is dropped (the operator stopping: see
    /// [`crate::operator::stop_runners_gracefully`]); then it writes the
    /// checkpoint of every bundle it sent, so that the next operator, of
    /// whatever version, sends none of them again (see `enqueue_all`).
    pub async fn run(
        &self,
        args: RunnerArgs,
        spec: watch::Receiver<TaskBatchSpec>,
    ) -> Result<(), Error> {
        let mut closed = spec.clone();
        let batch = &args.batch;
        let status = batch.status.clone().unwrap_or_default();

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
        let share = self
            .shares
            .join(&pool_key, &batch.uid().unwrap_or_default(), weight);

        let enqueue_done = matches!(status.phase, Some(Phase::Running));
        let progress = Progress::resumed(&status.counts, enqueue_done);

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
        // And the workers the slots are on, for the size of a bundle; a
        // batch started by an operator that recorded slots but not workers
        // keeps its cut.
        let planned_workers = match status.planned_slots {
            Some(_) => status.planned_workers.and_then(|w| u64::try_from(w).ok()),
            None => Some(args.pool_workers.max(1)),
        };
        // The same for the order: the checkpoint is a position in it. A batch
        // started by an operator that wrote no order (it wrote the planned
        // slots) was sent as given.
        let send_order = status.send_order.unwrap_or(match status.planned_slots {
            Some(_) => TaskOrder::AsGiven,
            None => args.batch.spec.order.unwrap_or_default(),
        });
        // And what the tasks are (the reconciler refuses other ones); an
        // older operator's batch has none, and gets none.
        let source_digest = status.source_digest.clone().or_else(|| {
            status
                .planned_slots
                .is_none()
                .then(|| crate::source_digest::current(&args.batch.spec.tasks, &args.source))?
        });
        // And the pool (its queue and ledger), as the digest.
        let worker_pool = status.worker_pool.clone().or_else(|| {
            status
                .planned_slots
                .is_none()
                .then(|| args.batch.spec.worker_pool.clone())
        });
        self.record
            .patch_status(StatusPatch {
                start_time: Some(start_time.clone()),
                worker_pool,
                planned_slots: Some(i64::try_from(planned_slots).unwrap_or(i64::MAX)),
                planned_workers: planned_workers.map(|w| i64::try_from(w).unwrap_or(i64::MAX)),
                send_order: Some(send_order),
                source_digest,
                results: args.results.as_ref().map(ToString::to_string),
                ..StatusPatch::default()
            })
            .await?;

        let enqueue = async {
            if enqueue_done {
                return Ok(Enqueued::All);
            }
            self.enqueue_all(
                &args,
                status.counts.enqueued as u64,
                status.bundle_sizing.clone(),
                status
                    .enqueue_horizon
                    .and_then(|h| u64::try_from(h).ok())
                    .unwrap_or(0),
                planned_slots,
                planned_workers,
                send_order,
                spec,
                &progress,
                &share,
            )
            .await
        };
        let collect = self.collect(&args, &start_time, send_order, &progress, &share);
        // Collecting ends the batch; an error of either half ends the runner
        // (the reconciler starts it again from the checkpoint).
        tokio::pin!(enqueue);
        tokio::pin!(collect);
        tokio::select! {
            r = &mut enqueue => match r? {
                Enqueued::All => {}
                Enqueued::Stopped => return Ok(()),
            },
            r = &mut collect => return r,
        }
        tokio::select! {
            r = collect => r,
            () = sender_dropped(&mut closed) => Ok(()),
        }
    }
}

/// How the enqueue half ended.
#[derive(Debug, PartialEq, Eq)]
enum Enqueued {
    /// Every task is in the queue.
    All,
    /// The runner was stopped, its checkpoint written.
    Stopped,
}

/// Returns once the spec's sender is dropped.
async fn sender_dropped<T>(rx: &mut watch::Receiver<T>) {
    while rx.changed().await.is_ok() {}
}

impl<Q: TaskQueue, I: ResultsInbox, S: ObjectStore, B: BatchRecord> Runner<Q, I, S, B> {
    #[allow(clippy::too_many_arguments)]
    async fn enqueue_all(
        &self,
        args: &RunnerArgs,
        checkpoint: u64,
        sized: Option<BundleSizing>,
        last_horizon: u64,
        planned_slots: u64,
        planned_workers: Option<u64>,
        send_order: TaskOrder,
        mut spec: watch::Receiver<TaskBatchSpec>,
        progress: &Progress,
        share: &ShareGuard,
    ) -> Result<Enqueued, Error> {
        let batch = &args.batch;
        let name = batch.name_any();
        let id = batch_id(batch);
        let options = bundle_options(&batch.spec);
        let mut enqueued = checkpoint;
        let mut group: Vec<Bundle> = Vec::with_capacity(SEND_GROUP);
        let (order, total) = order_tasks(args, send_order);
        if !order.is_as_given() {
            tracing::info!(batch = %name, classes = order.passes().len(), "tasks sent longest first");
        }
        progress.planned.store(total, Ordering::Relaxed);
        // Cut with the sizing the status recorded (see `sizing`; written with
        // a checkpoint at or before this one), from the checkpoint on. A
        // bundle's size depends only on where it starts, so the bundles from
        // the checkpoint are the ones a run from the batch's first task would
        // have sent after it: the bundles sent since come again with the same
        // claim keys. And an operator of another version, whose plan cuts
        // otherwise, starts its first bundle at the checkpoint: no task sent
        // before it is sent again.
        let mut learned = sized
            .as_ref()
            .and_then(|s| u64::try_from(s.task_microseconds).ok())
            .map(Duration::from_micros);
        let mut bundles = cloudkon_core::bundle::bundles(
            tasks_from(args, &order, checkpoint)?,
            id.clone(),
            sizing::plan(total, planned_slots, planned_workers, learned),
            checkpoint,
            task_timeout(&args.batch.spec),
        )
        .peekable();
        let mut observed_at_change = 0;
        // What the last runner may have sent: cut again as it was (see
        // `write_checkpoint`), so no new sizing before it. Reserved anew as we go.
        let resize_from = last_horizon.max(checkpoint);
        let mut horizon = resize_from;
        let mut woke_pool = false;
        // The last checkpoint (the status it resumed from, first).
        let mut written = Written::now(enqueued, horizon);
        let mut turns = self.shares.subscribe();
        // The pool's priority lane, until a send finds it missing.
        let mut lane = self.priority_lane.as_ref();
        loop {
            if spec.has_changed().is_err() {
                return stopped(&self.record, &name, enqueued, horizon, progress).await;
            }
            // Tasks of unknown length: cut for what their results tell, the new
            // sizing written ahead with the checkpoint where it starts.
            let unknown = matches!(bundles.peek(), Some(Ok(b))
                if b.tasks.first().is_some_and(|t| t.spec.declared_length().is_none()));
            let resizable = unknown && enqueued >= resize_from;
            if resizable {
                let (estimate, observed) = progress.estimate_observed();
                let input = SizingInput {
                    current: learned,
                    estimate,
                    fresh: observed.saturating_sub(observed_at_change),
                    slots: planned_slots,
                };
                if let Some(next) = sizing::next_cost(&input) {
                    write_sizing(&self.record, enqueued, horizon, next, progress).await?;
                    written = Written::now(enqueued, horizon);
                    tracing::debug!(batch = %name, from = enqueued, task = ?next, "bundles cut for a learned task length");
                    learned = Some(next);
                    observed_at_change = observed;
                    bundles = cloudkon_core::bundle::bundles(
                        tasks_from(args, &order, enqueued)?,
                        id.clone(),
                        sizing::plan(total, planned_slots, planned_workers, learned),
                        enqueued,
                        task_timeout(&args.batch.spec),
                    )
                    .peekable();
                }
            }
            // Suspended: wait here, sending nothing and holding no one back.
            if spec.borrow().suspend == Some(true) {
                share.set_backlogged(false);
                while spec.borrow().suspend == Some(true) {
                    if spec.changed().await.is_err() {
                        return stopped(&self.record, &name, enqueued, horizon, progress).await;
                    }
                }
                share.set_backlogged(true);
            }
            // The meter: wait for the batch's turn in its pool's window (see
            // `window` and `shares`), writing the checkpoint meanwhile.
            let peeked = |bundles: &mut std::iter::Peekable<_>| match bundles.peek() {
                Some(Ok(b)) => {
                    let b: &Bundle = b;
                    b.tasks.len() as u64
                }
                Some(Err(_)) | None => 1,
            };
            let next = peeked(&mut bundles);
            let declared = match bundles.peek() {
                Some(Ok(b)) => {
                    progress.seed_estimate(b.tasks.first().and_then(|t| t.spec.declared_length()));
                    declared_length(b.tasks.iter().map(|t| &t.spec))
                }
                _ => None,
            };
            let (cost, window) = loop {
                let estimate = progress.estimate();
                progress.growing.store(
                    sizing::collector_cue(resizable, learned, estimate),
                    Ordering::Relaxed,
                );
                let (cost, window) = window::meter(&MeterInput {
                    unknown,
                    learned,
                    estimate,
                    declared,
                    pool_slots: planned_slots,
                    pool_workers: args.pool_workers,
                    next_bundle: next,
                });
                share.update(progress.running(), progress.estimate());
                share.set_waiting(total.saturating_sub(enqueued));
                if share.take(next, cost, window) {
                    break (cost, window);
                }
                // Only what was sent since the last one: each send of any
                // other batch wakes this wait.
                if written.at.elapsed() >= CHECKPOINT_EVERY && written.of != (enqueued, horizon) {
                    write_checkpoint(&self.record, enqueued, horizon, progress).await?;
                    written = Written::now(enqueued, horizon);
                }
                tokio::select! {
                    _ = progress.collected.notified() => {}
                    _ = turns.changed() => {}
                    changed = spec.changed() => if changed.is_err() {
                        return stopped(&self.record, &name, enqueued, horizon, progress).await;
                    },
                    _ = tokio::time::sleep(crate::shares::TURN_RETRY) => {}
                }
            };
            // The granted bundle, and the next ones while the turn stays ours.
            while let Some(bundle) = bundles.next() {
                let mut bundle = bundle.map_err(|e| Error::Other(format!("batch {name}: {e}")))?;
                bundle.submitted = Timestamp::now();
                bundle.reply_to = Some(self.reply_to.clone());
                bundle.options = options;
                group.push(bundle);
                if group.len() >= SEND_GROUP
                    || bundles.peek().is_none()
                    || !share.take(peeked(&mut bundles), cost, window)
                {
                    break;
                }
            }
            let last = bundles.peek().is_none();
            if !group.is_empty() {
                let sent: u64 = group.iter().map(|b| b.tasks.len() as u64).sum();
                // Positions in the send order, not task numbers: bundles
                // start where the checkpoint ends (see `enqueue_all`).
                let next = enqueued + sent;
                // Bundles with tasks of unknown length (whose cut a sizing
                // changes) are reserved before they are sent, a room's worth
                // ahead, so that a restart knows how far they may go.
                let sized = group
                    .iter()
                    .any(|b| b.tasks.iter().any(|t| t.spec.declared_length().is_none()));
                if sized && next > horizon {
                    let window_tasks = window.as_nanos() / cost.window.as_nanos().max(1);
                    horizon = next + sent.max(u64::try_from(window_tasks).unwrap_or(u64::MAX));
                    write_checkpoint(&self.record, enqueued, horizon, progress).await?;
                    written = Written::now(enqueued, horizon);
                }
                let group = std::mem::take(&mut group);
                let priority = lane.filter(|_| share.priority(window));
                let unsent = match priority {
                    Some(p) => match p.send(group.clone()).await {
                        Ok(()) => {
                            if let Some(mark) = &self.mark_lane {
                                mark(share.others());
                            }
                            None
                        }
                        Err(QueueError::NotFound(e)) => {
                            tracing::info!(batch = %name, error = %e, "the pool has no priority lane: its queue only");
                            lane = None;
                            Some(group)
                        }
                        Err(e) => return Err(Error::Other(format!("batch {name}: {e}"))),
                    },
                    None => Some(group),
                };
                if let Some(group) = unsent {
                    self.pool_queue
                        .send(group)
                        .await
                        .map_err(|e| Error::Other(format!("batch {name}: {e}")))?;
                }
                self.metrics.tasks_enqueued.inc_by(sent);
                enqueued = next;
                progress.enqueued.store(enqueued, Ordering::Relaxed);
                if !woke_pool {
                    // The pool scales on this backlog now, not at its next poll.
                    let _ = self.wake_pool.send(args.pool.clone());
                    woke_pool = true;
                }
            }
            share.sent(progress.running());
            if last {
                break;
            }
            // The checkpoint at most every CHECKPOINT_EVERY: a restart resends
            // what was sent since (the ledger runs it once: the bundles are cut
            // the same), and a sweep of a million bundles does not write its
            // status 100,000 times.
            if written.at.elapsed() >= CHECKPOINT_EVERY {
                write_checkpoint(&self.record, enqueued, horizon, progress).await?;
                written = Written::now(enqueued, horizon);
            }
        }
        // Every task is in the queue: the total is final. (The results, and
        // so the batch's end, are the collecting half's.)
        share.set_backlogged(false);
        progress.growing.store(false, Ordering::Relaxed);
        let all = i64::try_from(enqueued).unwrap_or(i64::MAX);
        let phase = status::phase_of(&PhaseInput {
            previous: Some(Phase::Enqueuing),
            accepted: true,
            cancel: false,
            enqueue_finished: true,
            counts: TaskCounts {
                total: all,
                enqueued: all,
                ..TaskCounts::default()
            },
            gave_up: false,
        });
        self.record
            .patch_status(StatusPatch {
                counts: CountsPatch {
                    enqueued: count(enqueued),
                    total: count(enqueued),
                    running: count(progress.running()),
                    ..CountsPatch::default()
                },
                phase: Some(phase),
                ..StatusPatch::default()
            })
            .await?;
        let _ = self.wake_pool.send(args.pool.clone());
        progress.total.send_replace(Some(enqueued));
        tracing::info!(batch = %name, tasks = enqueued, "every task enqueued");
        Ok(Enqueued::All)
    }
}

/// The batch's `taskTimeoutSeconds`: for its tasks that set no timeout.
fn task_timeout(spec: &TaskBatchSpec) -> Option<Duration> {
    spec.task_timeout_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
}

/// The batch's tasks in `order` (see `spec.order`), and how many they are.
/// A workload file is read once for both; a generator's tasks are all of
/// one length (its template's), so they go as given without being made.
fn order_tasks(args: &RunnerArgs, order: TaskOrder) -> (SendOrder, u64) {
    let spec = &args.batch.spec;
    let longest_first = order == TaskOrder::LongestFirst;
    match &args.source {
        Source::Spec => {
            let total = enqueue::source_len(&spec.tasks).unwrap_or(0);
            match enqueue::source_tasks(&spec.tasks, 0) {
                Some(tasks) if longest_first && spec.tasks.generator.is_none() => {
                    (SendOrder::longest_first(tasks).0, total)
                }
                _ => (SendOrder::as_given(), total),
            }
        }
        Source::File { name, bytes, .. } => {
            let tasks = WorkloadReader::new(bytes.as_slice(), name.clone());
            if longest_first {
                SendOrder::longest_first(tasks)
            } else {
                (SendOrder::as_given(), tasks.count() as u64)
            }
        }
    }
}

/// The tasks of the batch from position `from` of its send order on.
fn tasks_from<'a>(
    args: &'a RunnerArgs,
    order: &SendOrder,
    from: u64,
) -> Result<Box<dyn Iterator<Item = Result<TaskDef, String>> + Send + 'a>, Error> {
    let batch = &args.batch;
    match &args.source {
        Source::Spec => {
            if enqueue::source_tasks(&batch.spec.tasks, 0).is_none() {
                return Err(Error::Other(
                    "the batch has no inline or generator tasks".into(),
                ));
            }
            let open = move |skip, _| {
                enqueue::source_tasks(&batch.spec.tasks, skip)
                    .unwrap_or_else(|| Box::new(std::iter::empty()))
            };
            Ok(order.tasks_from(open, from))
        }
        Source::File { name, bytes, .. } => {
            // A pass parses only its class's lines.
            let open = move |skip, wanted: Option<Wanted>| {
                let reader = WorkloadReader::new(bytes.as_slice(), name.clone());
                match wanted {
                    Some(w) => reader.only(move |id| w.contains(id)),
                    None => reader,
                }
                .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                .map(|r| r.map_err(|e| e.to_string()))
            };
            Ok(order.tasks_from(open, from))
        }
    }
}

/// A new bundle sizing from task `from` (tasks enqueued so far) on, with
/// the checkpoint there: written before any bundle cut by it is sent.
async fn write_sizing(
    record: &impl BatchRecord,
    from: u64,
    horizon: u64,
    task: Duration,
    progress: &Progress,
) -> Result<(), Error> {
    let sizing = BundleSizing {
        from: i64::try_from(from).unwrap_or(i64::MAX),
        task_microseconds: i64::try_from(task.as_micros()).unwrap_or(i64::MAX),
    };
    record
        .patch_status(StatusPatch {
            bundle_sizing: Some(sizing),
            ..checkpoint(from, horizon, progress)
        })
        .await
}

/// The enqueue checkpoint: the tasks in the queue so far (a restart resumes
/// after them), and the horizon: the tasks before it may be in the queue too
/// (reserved before they are sent), so a restarted runner that resends them
/// keeps cutting them as they were cut.
/// The enqueue checkpoint last written: when, and what it said (tasks
/// enqueued, horizon).
struct Written {
    at: Instant,
    of: (u64, u64),
}

impl Written {
    fn now(enqueued: u64, horizon: u64) -> Self {
        Written {
            at: Instant::now(),
            of: (enqueued, horizon),
        }
    }
}

async fn write_checkpoint(
    record: &impl BatchRecord,
    enqueued: u64,
    horizon: u64,
    progress: &Progress,
) -> Result<(), Error> {
    record
        .patch_status(checkpoint(enqueued, horizon, progress))
        .await
}

/// The enqueue half's end when the runner is stopped: the checkpoint of
/// every bundle sent, so that none is sent again, whatever the next
/// operator's cut.
async fn stopped(
    record: &impl BatchRecord,
    name: &str,
    enqueued: u64,
    horizon: u64,
    progress: &Progress,
) -> Result<Enqueued, Error> {
    write_checkpoint(record, enqueued, horizon, progress).await?;
    tracing::info!(
        batch = name,
        "batch runner stopped at its checkpoint of {enqueued} tasks"
    );
    Ok(Enqueued::Stopped)
}

fn checkpoint(enqueued: u64, horizon: u64, progress: &Progress) -> StatusPatch {
    let counts = TaskCounts {
        enqueued: count(enqueued).unwrap_or_default(),
        ..TaskCounts::default()
    };
    // Mid-enqueue: Enqueuing once a task is in the queue, Pending before.
    let phase = status::phase_of(&PhaseInput {
        previous: None,
        accepted: true,
        cancel: false,
        enqueue_finished: false,
        counts,
        gave_up: false,
    });
    StatusPatch {
        counts: CountsPatch {
            enqueued: count(enqueued),
            running: count(progress.running()),
            ..CountsPatch::default()
        },
        enqueue_horizon: count(horizon),
        phase: Some(phase),
        progress: Some(progress.column()),
        ..StatusPatch::default()
    }
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
    /// The runner's request counters when last charged to the batch.
    charged: StatsSnapshot,
}

impl Pending {
    /// `result` as a line of the next results part.
    fn keep(&mut self, result: &TaskResult) {
        serde_json::to_writer(&mut self.lines, result).expect("a result always serializes");
        self.lines.push(b'\n');
        self.results += 1;
    }
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

/// Failures in a row of a results write before the batch says so (an
/// Event): a passing S3 error is only logged.
const WRITE_FAILURES_SAID: u32 = 3;
/// A write still failing is said again this often.
const WRITE_FAILURE_RESAID: Duration = Duration::from_secs(600);

/// Retries `op` with backoff (0.5 s doubling to 30 s) until it succeeds: a
/// write the batch cannot go on without, failing for a while (S3 or the API
/// server restarting), must not restart the runner and redo its work.
/// Failures that go on are said on the batch (`record`).
async fn retrying<T, F, Fut>(record: &impl BatchRecord, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = Duration::from_millis(500);
    let mut failures = 0;
    let mut said: Option<Instant> = None;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                if failures >= WRITE_FAILURES_SAID
                    && said.is_none_or(|at| at.elapsed() >= WRITE_FAILURE_RESAID)
                {
                    record
                        .warn(
                            "ResultsWriteFailing",
                            format!(
                                "{what} failed {failures} times in a row, last: {e}; retried every 30 s at most. The results wait in the batch's response queue until it succeeds (nothing is lost): fix the bucket, or the operator's permissions on it"
                            ),
                        )
                        .await;
                    said = Some(Instant::now());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

impl<Q: TaskQueue, I: ResultsInbox, S: ObjectStore, B: BatchRecord> Runner<Q, I, S, B> {
    async fn collect(
        &self,
        args: &RunnerArgs,
        start_time: &Time,
        send_order: TaskOrder,
        progress: &Progress,
        share: &ShareGuard,
    ) -> Result<(), Error> {
        let mut total = progress.total.subscribe();
        let batch = &args.batch;
        let name = batch.name_any();
        let mut collected = match self.record.load_collected().await? {
            Some(stored) => Collected::decode(&stored)
                .map_err(|e| Error::Other(format!("the collected ids of TaskBatch {name}: {e}")))?,
            None => Collected::default(),
        };
        self.blank_parts_left_behind(args, collected.result_parts)
            .await;
        let mut latency = Histogram::<u64>::new(3).expect("3 significant figures is valid");
        let mut pending = Pending {
            charged: self.requests.snapshot(),
            ..Pending::default()
        };
        let mut last_flush = Instant::now();
        // The last status written, by a flush or while the batch stalls, and
        // what it showed of the pace.
        let mut last_status = Instant::now();
        let mut shown: Option<Shown> = None;
        let started = start_time.0;
        let mut receives = 1;
        // The last write-out, still going while the next results come in:
        // its S3 parts took ~40 % of a 1 M-task batch's collection when the
        // collector waited for them. The next one starts after it.
        let mut writing: Option<Writing<'_>> = None;
        // Since when no result was new and no task sent (see `pool_idle`).
        let mut quiet = Quiet::new(progress.enqueued.load(Ordering::Relaxed));
        let mut lost: Option<LostReport> = None;
        loop {
            // No long poll while lost tasks are being reported.
            let wait = if lost.is_some() {
                Duration::ZERO
            } else {
                RESULTS_WAIT
            };
            let round = receive_round(&self.inbox, receives, wait);
            let messages = match alongside(&mut writing, round).await? {
                Ok(messages) => messages,
                Err(QueueError::NotFound(e)) => {
                    // Deleted outside the operator: the runner's start makes
                    // it again, under its name (at its URL), and the workers
                    // send it the results they hold (see the worker's
                    // `response_queue_return`).
                    self.record
                        .warn(
                            "ResponseQueueRecreated",
                            format!("the batch's response queue was deleted outside the operator ({e}): it is made again, and the workers send it the results they hold; the runner restarts from its checkpoint"),
                        )
                        .await;
                    return Err(Error::Other(format!(
                        "batch {name}: its response queue was deleted: {e}"
                    )));
                }
                Err(e) => return Err(Error::Other(format!("batch {name}: {e}"))),
            };
            let results = messages.iter().map(|(m, _)| m.results.len()).sum();
            let growing = progress.growing.load(Ordering::Relaxed);
            let pause = collect_pause(receives, messages.len(), results, growing);
            receives = result_receives(receives, messages.len());
            for (message, receipt) in messages {
                let mut new = false;
                for result in &message.results {
                    if !collected.ids.insert(result.id) {
                        continue;
                    }
                    new = true;
                    quiet.heard();
                    if result.outcome.is_success() {
                        collected.succeeded += 1;
                        pending.succeeded += 1;
                    } else {
                        collected.failed += 1;
                        pending.failed += 1;
                        if crate::dead_letters::is_dead_letter(result) {
                            collected.dead_lettered += 1;
                        }
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
                        pending.keep(result);
                    }
                }
                // A message whose results were all counted is a duplicate
                // (a redelivery, a resend): its usage was charged with them.
                if new {
                    collected.usage.add(&message.usage);
                    collected.worker_usage.add(&message.usage);
                }
                pending.receipts.push(receipt);
            }
            let enqueued = progress.enqueued.load(Ordering::Relaxed);
            let missing_after = self.settings.missing_after;
            if lost.is_none()
                && quiet.for_(enqueued) >= missing_after
                && enqueued > collected.finished() as u64
                && self.pool_idle.idle_for(share.pool()) >= missing_after
            {
                let report =
                    LostReport::of(args, send_order, enqueued, &collected.ids, missing_after);
                tracing::warn!(batch = %name, lost = report.ids.len(), "tasks sent and found nowhere: reported failed");
                lost = Some(report);
            }
            // A round's worth, written out before the next (below).
            let mut reported_lost = false;
            if let Some(report) = &mut lost {
                for result in report.next(lost_per_round(self.settings.results_part_bytes)) {
                    // A result may have come since.
                    if !collected.ids.insert(result.id) {
                        continue;
                    }
                    collected.failed += 1;
                    collected.lost += 1;
                    pending.failed += 1;
                    if args.results.is_some() {
                        pending.keep(&result);
                    }
                }
                reported_lost = true;
                quiet.heard();
                if report.ids.is_empty() {
                    lost = None;
                }
            }
            progress
                .finished
                .store(collected.finished() as u64, Ordering::Relaxed);
            progress.collected.notify_one();
            share.update(progress.running(), progress.estimate());
            let known_total = *total.borrow_and_update();
            let done = known_total.is_some_and(|t| collected.finished() as u64 >= t);
            // Past its failure policy the batch ends here: the enqueue half
            // stops with the runner, and the reconciler has the workers skip
            // what is still queued.
            // Not while lost tasks are reported: the rest are neither
            // finished nor to be skipped, but lost too (a batch whose every
            // task finished is not judged).
            let gave_up = status::failure_policy_verdict(
                batch.spec.failure_policy.as_ref(),
                &counts_of(&collected, known_total),
            )
            .filter(|_| lost.is_none());
            // Written out at least every part's worth, so that memory and parts
            // stay bounded whatever the batch's size.
            let full = pending.lines.len() >= self.settings.results_part_bytes
                || pending.results >= PART_MAX_RESULTS
                || reported_lost;
            let must = done || gave_up.is_some() || full;
            let due = flush_due(
                must,
                last_flush.elapsed(),
                self.settings.flush_every,
                pending.receipts.len(),
            );
            // While a write-out goes on, the next waits unless it must go now
            // (memory stays within two parts' worth).
            if due && (writing.is_none() || must) {
                if let Some(commit) = writing.take() {
                    commit.await?;
                }
                let flush = self.prepare_flush(
                    args,
                    &mut collected,
                    &mut pending,
                    &latency,
                    (known_total, gave_up.is_some()),
                    started,
                    progress,
                );
                if let Some(flush) = flush {
                    shown = Some(Shown::of(&flush.status));
                    let commit = Box::pin(self.commit(args, flush));
                    if done || gave_up.is_some() {
                        commit.await?;
                    } else {
                        writing = Some(commit);
                    }
                    last_status = Instant::now();
                } else if last_status.elapsed() >= self.settings.status_refresh {
                    // Nothing new: the pace still changes (the RATE falls, the
                    // ETA grows, then goes), and the running count with it.
                    // Written only when a column moves: a batch that waits
                    // for its turn, nothing done yet, writes nothing.
                    let patch =
                        stalled_status(collected.finished(), known_total, started, progress);
                    let now_shown = Shown::of(&patch);
                    if shown.as_ref() != Some(&now_shown) {
                        self.record.patch_status(patch).await?;
                        shown = Some(now_shown);
                    }
                    last_status = Instant::now();
                }
                last_flush = Instant::now();
            }
            if done {
                tracing::info!(batch = %name, succeeded = collected.succeeded, failed = collected.failed, "batch finished");
                return Ok(());
            }
            if let Some(why) = gave_up {
                tracing::warn!(batch = %name, succeeded = collected.succeeded, failed = collected.failed, "batch given up: {why}");
                return Ok(());
            }
            if !pause.is_zero() {
                alongside(&mut writing, tokio::time::sleep(pause)).await?;
            }
        }
    }
}

/// The `worker` of the results the operator makes for tasks found nowhere.
pub const LOST_WORKER: &str = "cloudkon-operator/lost";

/// Since when a collector heard nothing: no new result, no task sent.
struct Quiet {
    since: Instant,
    enqueued: u64,
}

impl Quiet {
    fn new(enqueued: u64) -> Self {
        Self {
            since: Instant::now(),
            enqueued,
        }
    }

    fn heard(&mut self) {
        self.since = Instant::now();
    }

    /// How long it has been quiet, with `enqueued` tasks sent now.
    fn for_(&mut self, enqueued: u64) -> Duration {
        if enqueued != self.enqueued {
            self.enqueued = enqueued;
            self.heard();
        }
        self.since.elapsed()
    }
}

/// The tasks found nowhere (see `pool_idle`), reported failed a part's
/// worth a round: a purged queue of millions made them all at once, ~440
/// bytes of JSON each and about as much held as results, past the
/// operator's memory limit, and a restart did the same.
struct LostReport {
    ids: IdSet,
    reason: String,
    batch: BatchId,
    worker: Arc<str>,
    at: Timestamp,
}

impl LostReport {
    /// The tasks among the first `enqueued` sent (in the batch's order)
    /// that have no result; none when the order cannot tell which those are.
    fn of(
        args: &RunnerArgs,
        send_order: TaskOrder,
        enqueued: u64,
        collected: &IdSet,
        missing_after: Duration,
    ) -> Self {
        let (order, _) = order_tasks(args, send_order);
        let mut ids = IdSet::new();
        match order.first_ids(enqueued) {
            Some(first) => first.filter(|&id| !collected.contains(id)).for_each(|id| {
                ids.insert(id);
            }),
            None => {
                tracing::warn!(batch = %args.batch.name_any(), "tasks seem lost, but the batch's order cannot tell which");
            }
        }
        LostReport {
            ids,
            reason: format!(
                "lost: sent to the pool's queue, then found nowhere: for {} the queue held no message and none of its workers ran a task (the queue was purged or deleted, or its messages expired)",
                humantime::format_duration(missing_after)
            ),
            batch: batch_id(&args.batch),
            worker: LOST_WORKER.into(),
            at: Timestamp::now(),
        }
    }

    /// The failed results of the next `n` tasks, taken out of the report.
    fn next(&mut self, n: u64) -> impl Iterator<Item = TaskResult> + '_ {
        self.ids.take_first(n).into_iter().map(|id| {
            TaskResult::not_run_id(
                &self.batch,
                id,
                1,
                self.reason.clone(),
                self.worker.clone(),
                self.at,
                self.at,
            )
        })
    }
}

/// Lost tasks reported a round: within a results part (a result of
/// theirs is ~440 bytes as JSON, counted as 512), at most a part's count.
fn lost_per_round(part_bytes: usize) -> u64 {
    (part_bytes as u64 / 512).clamp(1, PART_MAX_RESULTS as u64)
}

/// The counts the status shows for `collected`, with the total once known.
fn counts_of(collected: &Collected, total: Option<u64>) -> TaskCounts {
    let mut counts = TaskCounts::default();
    collected.apply_to(&mut counts);
    counts.total = total.map_or(0, |t| t as i64);
    counts
}

impl<Q: TaskQueue, I: ResultsInbox, S: ObjectStore, B: BatchRecord> Runner<Q, I, S, B> {
    /// What the next write-out holds, taken from `pending` (and the part
    /// numbers counted in `collected`): `None` when there is nothing to
    /// write. Its writes are [`Self::commit`]'s.
    #[allow(clippy::too_many_arguments)]
    fn prepare_flush(
        &self,
        args: &RunnerArgs,
        collected: &mut Collected,
        pending: &mut Pending,
        latency: &Histogram<u64>,
        (total, gave_up): (Option<u64>, bool),
        started: JiffTimestamp,
        progress: &Progress,
    ) -> Option<Flush> {
        let counts = counts_of(collected, total);
        let ending = total.is_some_and(|t| collected.finished() as u64 == t) || gave_up;
        // Results with no message are those of lost tasks.
        if pending.receipts.is_empty() && pending.lines.is_empty() && !ending {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(results) = &args.results
            && !pending.lines.is_empty()
        {
            let lines = std::mem::take(&mut pending.lines);
            pending.results = 0;
            for part in split_parts(&lines, self.settings.results_part_bytes, PART_MAX_RESULTS) {
                let key = crate::results_parts::key(&results.key, collected.result_parts);
                parts.push((key, part.to_vec()));
                collected.result_parts += 1;
            }
        }
        // The runner's own requests so far go with the collected ids.
        let requests = self.requests.snapshot();
        collected
            .usage
            .add(&requests.since(&pending.charged).usage());
        pending.charged = requests;
        let collected_ids = collected.encode();
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
            gave_up,
        });
        let now = JiffTimestamp::now();
        let elapsed = Duration::from_millis(
            u64::try_from(now.as_millisecond() - started.as_millisecond()).unwrap_or(0),
        );
        let mut patch = StatusPatch {
            counts: CountsPatch {
                succeeded: Some(counts.succeeded),
                failed: Some(counts.failed),
                retried: Some(counts.retried),
                dead_lettered: Some(counts.dead_lettered),
                // Written only once some are: an older CRD lacks the field.
                lost: (counts.lost > 0).then_some(counts.lost),
                running: count(progress.running()),
                total: enqueue_finished.then_some(counts.total),
                ..CountsPatch::default()
            },
            progress: Some(if enqueue_finished {
                status::progress(&counts, true)
            } else {
                progress.column()
            }),
            // Mid-enqueue only when given up (the failure policy).
            phase: (enqueue_finished || phase.is_finished()).then_some(phase),
            cost: Some(crate::cost::batch_cost(
                &collected.usage,
                &collected.worker_usage,
                &self.settings.prices,
                args.worker_hour_price,
                collected.finished() as u64,
                total,
            )),
            ..StatusPatch::default()
        };
        if !latency.is_empty() {
            patch.latency = Some(Latency {
                p50_millis: latency.value_at_quantile(0.5) as i64,
                p99_millis: latency.value_at_quantile(0.99) as i64,
            });
        }
        pace(
            &mut patch,
            collected.finished(),
            total,
            (now, elapsed),
            progress,
            phase.is_finished(),
        );
        if phase.is_finished() {
            patch.completion_time = Some(Time(now));
        }
        Some(Flush {
            parts,
            collected_ids,
            receipts: std::mem::take(&mut pending.receipts),
            succeeded: std::mem::take(&mut pending.succeeded),
            failed: std::mem::take(&mut pending.failed),
            status: patch,
        })
    }

    /// Blanks the results parts past the `written` ones, which a stopped
    /// write-out left (see [`crate::results_parts`]). Blanked, not deleted:
    /// the operator may put and list, and needs no more.
    async fn blank_parts_left_behind(&self, args: &RunnerArgs, written: u64) {
        let Some(results) = &args.results else {
            return;
        };
        let bucket = &results.bucket;
        let left = match crate::results_parts::left_behind(
            &self.store,
            bucket,
            &results.key,
            written,
        )
        .await
        {
            Ok(left) => left,
            Err(e) => {
                // Rare harm (a stop mid write-out), so no reason to
                // hold the batch's results: said, and gone on.
                self.record
                        .warn(
                            "ResultsPartsUnchecked",
                            format!("cannot list the batch's results parts to blank those a stopped write-out may have left ({e}): if one did, some results appear twice in the parts"),
                        )
                        .await;
                return;
            }
        };
        for key in left {
            tracing::info!(batch = %args.batch.name_any(), part = %key, "blanking a results part a stopped write-out left: its results are written again");
            self.put_part("blanking", bucket, &key, Vec::new()).await;
        }
    }

    /// Puts a results part, retried until it lands (see [`retrying`]);
    /// `doing` names the write in what is said of its failures.
    async fn put_part(&self, doing: &str, bucket: &str, key: &str, bytes: Vec<u8>) {
        retrying(
            &self.record,
            &format!("{doing} s3://{bucket}/{key}"),
            || async {
                self.store
                    .put(bucket, key, bytes.clone())
                    .await
                    .map_err(|e| Error::Other(e.to_string()))
            },
        )
        .await;
    }

    /// Writes a flush out, in the order that makes a crash anywhere lose and
    /// count nothing twice: the results objects (a crash before the next
    /// step writes the same part numbers again, and the next runner blanks
    /// those past them), the collected ids (a crash after them finds the
    /// redelivered results already counted), the messages' deletes, the
    /// status.
    async fn commit(&self, args: &RunnerArgs, flush: Flush) -> Result<(), Error> {
        if let Some(results) = &args.results {
            for (key, part) in flush.parts {
                self.put_part("writing", &results.bucket, &key, part).await;
            }
        }
        self.record.store_collected(flush.collected_ids).await?;
        self.inbox
            .ack_results(flush.receipts)
            .await
            .map_err(|e| Error::Other(format!("batch {}: {e}", args.batch.name_any())))?;
        self.metrics
            .tasks_collected
            .get_or_create(&crate::metrics::BatchOutcome {
                outcome: "succeeded",
            })
            .inc_by(flush.succeeded);
        self.metrics
            .tasks_collected
            .get_or_create(&crate::metrics::BatchOutcome { outcome: "failed" })
            .inc_by(flush.failed);
        self.record.patch_status(flush.status).await
    }
}

/// Sets the batch's pace in `patch`: its RATE (finished tasks a second
/// since it started) and, while it runs, its ETA at the last minute's rate
/// (see [`crate::eta`]); `at` is now and the time since it started.
fn pace(
    patch: &mut StatusPatch,
    finished: i64,
    total: Option<u64>,
    (now, elapsed): (JiffTimestamp, Duration),
    progress: &Progress,
    ended: bool,
) {
    patch.throughput = Some(status::throughput(finished, elapsed));
    let planned = total.unwrap_or(progress.planned.load(Ordering::Relaxed));
    let left = {
        let mut eta = progress.eta.lock().expect("eta lock");
        eta.observe(elapsed, finished as u64);
        eta.time_left(planned)
    };
    match left {
        Some(left) if !ended => {
            let eta = now
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                    left.as_secs() as i64
                ))
                .unwrap_or(now);
            patch.estimated_completion_time = Some(Some(Time(eta)));
            patch.eta = Some(Some(status::eta_column(left)));
        }
        _ => {
            patch.estimated_completion_time = Some(None);
            patch.eta = Some(None);
        }
    }
}

/// The status of a batch from which no result came since its last write:
/// its pace ([`pace`]) and its running tasks, which the workers' claims
/// change meanwhile.
fn stalled_status(
    finished: i64,
    total: Option<u64>,
    started: JiffTimestamp,
    progress: &Progress,
) -> StatusPatch {
    let now = JiffTimestamp::now();
    let elapsed = Duration::from_millis(
        u64::try_from(now.as_millisecond() - started.as_millisecond()).unwrap_or(0),
    );
    let mut patch = StatusPatch {
        counts: CountsPatch {
            running: count(progress.running()),
            ..CountsPatch::default()
        },
        ..StatusPatch::default()
    };
    pace(&mut patch, finished, total, (now, elapsed), progress, false);
    patch
}

/// What `kubectl get taskbatches` shows of a batch's pace.
#[derive(Debug, PartialEq)]
struct Shown {
    rate: Option<Option<f64>>,
    eta: Option<Option<String>>,
    running: Option<i64>,
}

impl Shown {
    fn of(patch: &StatusPatch) -> Self {
        Shown {
            rate: patch.throughput,
            eta: patch.eta.clone(),
            running: patch.counts.running,
        }
    }
}

/// A write-out in progress.
type Writing<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Runs `work` while the write-out in progress (if any) goes on; a
/// write-out that ends first is done with (its error returned), one that
/// does not is kept for later.
async fn alongside<T>(
    writing: &mut Option<Writing<'_>>,
    work: impl Future<Output = T>,
) -> Result<T, Error> {
    let Some(mut commit) = writing.take() else {
        return Ok(work.await);
    };
    tokio::pin!(work);
    tokio::select! {
        written = &mut commit => {
            written?;
            Ok(work.await)
        }
        out = &mut work => {
            *writing = Some(commit);
            Ok(out)
        }
    }
}

/// One write-out of collected results: see [`Runner::commit`].
struct Flush {
    /// The results objects: key, bytes.
    parts: Vec<(String, Vec<u8>)>,
    collected_ids: crate::collected::Encoded,
    receipts: Vec<Receipt>,
    succeeded: u64,
    failed: u64,
    status: StatusPatch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch_record::MemoryRecord;
    use crate::crd::taskbatch::TaskBatchStatus;
    use cloudkon_core::Outcome;
    use cloudkon_core::ledger::MemoryLedger;
    use cloudkon_core::queue::{MemoryInbox, MemoryQueue, MemoryResponses, ResultRouter};
    use cloudkon_core::store::MemoryStore;
    use cloudkon_worker::remote::{RemoteConfig, WorkerStats, run_remote};
    use cloudkon_worker::{PoolConfig, Registry, Shutdown};
    use serde_json::json;
    use std::collections::BTreeSet;
    use tokio::task::JoinHandle;

    type MemoryRunner = Runner<MemoryQueue, MemoryInbox, MemoryStore, MemoryRecord>;

    const REPLY_TO: &str = "responses";

    /// A TaskBatch as the API server hands it to the reconciler.
    fn batch(spec: serde_json::Value, status: Option<TaskBatchStatus>) -> Arc<TaskBatch> {
        let mut b = TaskBatch::new("b", serde_json::from_value(spec).unwrap());
        b.metadata.namespace = Some("ns".into());
        b.metadata.uid = Some("00000000-0000-0000-0000-00000000000b".into());
        b.status = status;
        Arc::new(b)
    }

    fn generator(template: serde_json::Value, count: u64) -> serde_json::Value {
        json!({ "workerPool": "p", "tasks": { "generator": { "template": template, "count": count } } })
    }

    fn args(batch: Arc<TaskBatch>, results: bool) -> RunnerArgs {
        RunnerArgs {
            batch,
            pool_queue_url: "memory".into(),
            pool: ObjectRef::new("p").within("ns"),
            pool_slots: 4,
            pool_workers: 2,
            source: Source::Spec,
            results: results.then(|| S3Uri {
                bucket: "results".into(),
                key: "ns/b/".into(),
            }),
            worker_hour_price: Some(0.5),
            ledger_table: "ledger".into(),
        }
    }

    fn runner(
        queue: &MemoryQueue,
        responses: &Arc<MemoryResponses>,
        record: MemoryRecord,
    ) -> MemoryRunner {
        Runner {
            pool_queue: queue.clone(),
            priority_lane: None,
            mark_lane: None,
            inbox: responses.inbox(REPLY_TO),
            reply_to: REPLY_TO.into(),
            store: MemoryStore::default(),
            record,
            shares: Arc::default(),
            pool_idle: Arc::default(),
            metrics: Arc::new(Metrics::new()),
            settings: Settings {
                flush_every: Duration::from_millis(20),
                // Small parts: a 20,000-task batch writes several.
                results_part_bytes: 256 << 10,
                ..Settings::default()
            },
            wake_pool: tokio::sync::mpsc::unbounded_channel().0,
            requests: RequestStats::default(),
        }
    }

    /// `cloudkon-worker`'s loop on the same memory queue, ledger and
    /// response queues, until `stop`.
    fn worker(
        queue: &MemoryQueue,
        ledger: &Arc<MemoryLedger>,
        responses: &Arc<MemoryResponses>,
        id: &str,
        stop: &Shutdown,
    ) -> JoinHandle<cloudkon_worker::remote::StopReason> {
        worker_with(queue, ledger, responses, id, stop, Arc::default())
    }

    fn worker_with(
        queue: &MemoryQueue,
        ledger: &Arc<MemoryLedger>,
        responses: &Arc<MemoryResponses>,
        id: &str,
        stop: &Shutdown,
        stats: Arc<WorkerStats>,
    ) -> JoinHandle<cloudkon_worker::remote::StopReason> {
        let mut config = RemoteConfig::new(PoolConfig::new(2, id));
        config.receive_wait = Duration::from_millis(20);
        config.linger = Duration::from_millis(5);
        tokio::spawn(run_remote(
            Arc::new(queue.clone()),
            Some(ledger.clone()),
            responses.clone(),
            Arc::new(Registry::new()),
            config,
            stop.clone(),
            stats,
        ))
    }

    /// Runs `b` on `r` to its end (a minute at most), then stops the workers.
    async fn run_to_end(
        r: &MemoryRunner,
        b: Arc<TaskBatch>,
        results: bool,
        stop: &Shutdown,
        workers: impl IntoIterator<Item = JoinHandle<cloudkon_worker::remote::StopReason>>,
    ) {
        let (_tx, spec) = watch::channel(b.spec.clone());
        tokio::time::timeout(Duration::from_secs(60), r.run(args(b, results), spec))
            .await
            .expect("the batch finishes")
            .unwrap();
        stop.stop.cancel();
        for w in workers {
            w.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_status_cost_is_what_the_workers_charged_priced_by_the_pool() {
        let (queue, responses) = (MemoryQueue::bounded(64), MemoryResponses::new());
        let ledger = Arc::new(MemoryLedger::new());
        let stop = Shutdown::new();
        let stats: Vec<Arc<WorkerStats>> = (0..2).map(|_| Arc::default()).collect();
        let workers: Vec<_> = stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                worker_with(
                    &queue,
                    &ledger,
                    &responses,
                    &format!("w{i}"),
                    &stop,
                    s.clone(),
                )
            })
            .collect();
        let b = batch(generator(json!({"kind": "sleep", "ms": 2}), 400), None);
        let r = runner(&queue, &responses, MemoryRecord::default());
        run_to_end(&r, b, false, &stop, workers).await;
        let cost = r.record.status().cost.expect("a cost");
        let charged: f64 = stats.iter().map(|s| s.charged().worker_seconds).sum();
        assert!(charged > 0.0);
        assert!(
            (cost.worker_seconds - charged).abs() < 0.02,
            "{cost:?} vs {charged}"
        );
        // No AWS here: the dollars are the worker time at the pool's 0.5/h.
        assert!(
            (cost.dollars - cost.worker_seconds / 3600.0 * 0.5).abs() < 1e-4,
            "{cost:?}"
        );
        assert_eq!(cost.projected_dollars, Some(cost.dollars));
        assert_eq!(cost.worker_requests, 0.0);
        assert!(cost.summary.starts_with('$'), "{cost:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_runs_to_succeeded_through_memory_backends() {
        let (queue, responses) = (MemoryQueue::bounded(64), MemoryResponses::new());
        let ledger = Arc::new(MemoryLedger::new());
        let stop = Shutdown::new();
        let workers = [
            worker(&queue, &ledger, &responses, "w1", &stop),
            worker(&queue, &ledger, &responses, "w2", &stop),
        ];
        let n = 20_000;
        let b = batch(generator(json!({"kind": "sleep", "ms": 0}), n), None);
        let r = runner(&queue, &responses, MemoryRecord::default());
        run_to_end(&r, b, true, &stop, workers).await;
        let status = r.record.status();
        assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
        assert_eq!(
            (
                status.counts.total,
                status.counts.succeeded,
                status.counts.failed
            ),
            (n as i64, n as i64, 0)
        );
        assert_eq!(status.planned_slots, Some(4));
        // Every task once in the results, in parts within the bound.
        let parts = r.store.list("results", "ns/b/");
        assert!(parts.len() > 2, "{} parts", parts.len());
        let mut ids = BTreeSet::new();
        for (key, bytes) in &parts {
            assert!(key.starts_with("ns/b/part-"), "{key}");
            assert!(bytes.len() <= 256 << 10, "{key}: {} bytes", bytes.len());
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let result: TaskResult = serde_json::from_slice(line).unwrap();
                assert_eq!(result.outcome, Outcome::Succeeded);
                assert!(ids.insert(result.id), "task {} twice", result.id);
            }
        }
        assert_eq!(ids.len() as u64, n);
        // Every results message was counted and deleted.
        assert_eq!(responses.len(REPLY_TO), 0);
    }

    /// A store whose first writes fail, as S3 restarting would, and whose
    /// writes wait while its gate is shut.
    #[derive(Default)]
    struct TestStore {
        failures_left: std::sync::atomic::AtomicU32,
        shut: std::sync::atomic::AtomicBool,
        opened: tokio::sync::Notify,
        puts: std::sync::atomic::AtomicUsize,
        /// Its listings fail, as without `s3:ListBucket`.
        lists_refused: std::sync::atomic::AtomicBool,
        inner: MemoryStore,
    }

    impl TestStore {
        fn open(&self) {
            self.shut.store(false, Ordering::SeqCst);
            self.opened.notify_waiters();
        }
    }

    impl ObjectStore for TestStore {
        async fn put(
            &self,
            bucket: &str,
            key: &str,
            bytes: Vec<u8>,
        ) -> Result<(), cloudkon_core::store::StoreError> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            while self.shut.load(Ordering::SeqCst) {
                let opened = self.opened.notified();
                if !self.shut.load(Ordering::SeqCst) {
                    break;
                }
                opened.await;
            }
            let left = self.failures_left.load(Ordering::Relaxed);
            if left > 0 {
                self.failures_left.store(left - 1, Ordering::Relaxed);
                return Err(cloudkon_core::store::StoreError(format!(
                    "{bucket}/{key}: 503"
                )));
            }
            self.inner.put(bucket, key, bytes).await
        }

        async fn keys(
            &self,
            bucket: &str,
            prefix: &str,
        ) -> Result<Vec<String>, cloudkon_core::store::StoreError> {
            if self.lists_refused.load(Ordering::SeqCst) {
                return Err(cloudkon_core::store::StoreError(format!(
                    "{bucket}/{prefix}: AccessDenied"
                )));
            }
            self.inner.keys(bucket, prefix).await
        }
    }

    /// A batch of `n` `sleep 0`.
    fn sleeps(n: u64) -> Arc<TaskBatch> {
        batch(generator(json!({"kind": "sleep", "ms": 0}), n), None)
    }

    /// `b` run by a worker, its results written to `store`: the runner once
    /// the batch succeeded.
    async fn run_on(
        b: Arc<TaskBatch>,
        store: TestStore,
    ) -> Runner<MemoryQueue, MemoryInbox, TestStore, MemoryRecord> {
        let (queue, responses) = (MemoryQueue::bounded(64), MemoryResponses::new());
        let ledger = Arc::new(MemoryLedger::new());
        let stop = Shutdown::new();
        let w = worker(&queue, &ledger, &responses, "w1", &stop);
        let r = with_store(runner(&queue, &responses, MemoryRecord::default()), store);
        let (_tx, spec) = watch::channel(b.spec.clone());
        tokio::time::timeout(Duration::from_secs(60), r.run(args(b, true), spec))
            .await
            .expect("the batch finishes")
            .expect("the runner finishes the batch");
        stop.stop.cancel();
        w.await.unwrap();
        assert_eq!(r.record.status().phase, Some(Phase::Succeeded));
        r
    }

    /// A batch of `n` `sleep 0` run by a worker, whose results store fails
    /// its first `failures` writes; the runner once the batch finished.
    async fn run_with_failing_writes(
        n: u64,
        failures: u32,
    ) -> Runner<MemoryQueue, MemoryInbox, TestStore, MemoryRecord> {
        let store = TestStore {
            failures_left: failures.into(),
            ..TestStore::default()
        };
        let r = run_on(sleeps(n), store).await;
        assert_eq!(r.store.failures_left.load(Ordering::Relaxed), 0);
        assert_eq!(stored_ids(&r.store.inner).len() as u64, n);
        r
    }

    /// A batch of `n` `sleep 0` run by a worker, written to `store`, which
    /// holds what a write-out stopped before its record left: parts 0 to 99,
    /// each with the result of task `part % n`, past the record's count
    /// (none). The runner once the batch finished.
    async fn run_after_a_stopped_write_out(
        n: u64,
        store: TestStore,
    ) -> Runner<MemoryQueue, MemoryInbox, TestStore, MemoryRecord> {
        let b = sleeps(n);
        let now = Timestamp::now();
        for part in 0..100u64 {
            let result = TaskResult::not_run_id(
                &batch_id(&b),
                part % n,
                1,
                "left by a stopped write-out".into(),
                "w0".into(),
                now,
                now,
            );
            let line = format!("{}\n", serde_json::to_string(&result).unwrap());
            let key = crate::results_parts::key("ns/b/", part);
            store
                .inner
                .put("results", &key, line.into_bytes())
                .await
                .unwrap();
        }
        run_on(b, store).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_parts_a_stopped_write_out_left_are_blanked_so_no_result_comes_twice() {
        let r = run_after_a_stopped_write_out(20, TestStore::default()).await;
        // Each task once: the parts left (more than the batch writes) hold
        // none.
        assert_eq!(stored_ids(&r.store.inner).len(), 20);
        let written = r.store.inner.list("results", "ns/b/");
        assert!(written.len() >= 100, "{} parts", written.len());
        assert!(
            written.iter().any(|(_, bytes)| bytes.is_empty()),
            "none blanked"
        );
        assert_eq!(r.record.warnings(), []);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_that_cannot_be_listed_are_said_and_do_not_hold_the_batch() {
        let store = TestStore {
            lists_refused: true.into(),
            ..TestStore::default()
        };
        let r = run_after_a_stopped_write_out(20, store).await;
        let warnings = r.record.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let (reason, message) = &warnings[0];
        assert_eq!(reason, "ResultsPartsUnchecked");
        assert!(message.contains("AccessDenied"), "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_results_write_is_retried_without_losing_or_repeating_results() {
        let r = run_with_failing_writes(2_000, 2).await;
        // Two failures in a row are only logged.
        assert_eq!(r.record.warnings(), []);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_writes_that_keep_failing_are_said_on_the_batch() {
        let r = run_with_failing_writes(100, WRITE_FAILURES_SAID).await;
        let warnings = r.record.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let (reason, message) = &warnings[0];
        assert_eq!(reason, "ResultsWriteFailing");
        assert!(
            message.starts_with(
                "writing s3://results/ns/b/part-000000.jsonl failed 3 times in a row, last: "
            ) && message.contains("503")
                && message.contains("nothing is lost"),
            "{message}"
        );
    }

    /// What the pool's queue holds now, as (first task, tasks) per bundle.
    async fn drain(queue: &MemoryQueue) -> Vec<(u64, usize)> {
        let bundles = drain_ids(queue).await;
        bundles.iter().map(|ids| (ids[0], ids.len())).collect()
    }

    /// What the pool's queue holds now, as the tasks of each bundle.
    async fn drain_ids(queue: &MemoryQueue) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        while !queue.is_empty() {
            let rx = queue.receive(100, Duration::ZERO).await;
            for d in rx.unwrap().unwrap_or_default() {
                out.push(d.bundle.tasks.iter().map(|t| t.id).collect());
            }
        }
        out
    }

    /// Results for bundles as a worker would send them: each task took `took`.
    async fn answer(responses: &MemoryResponses, bundles: &[(u64, usize)], took: Duration) {
        answer_with(responses, bundles, took, Outcome::Succeeded).await;
    }

    async fn answer_with(
        responses: &MemoryResponses,
        bundles: &[(u64, usize)],
        took: Duration,
        outcome: Outcome,
    ) {
        let bundles: Vec<Vec<u64>> = bundles
            .iter()
            .map(|&(first, len)| (first..first + len as u64).collect())
            .collect();
        answer_ids(responses, &bundles, took, outcome).await;
    }

    /// Results for bundles of these tasks, each of which took `took`.
    async fn answer_ids(
        responses: &MemoryResponses,
        bundles: &[Vec<u64>],
        took: Duration,
        outcome: Outcome,
    ) {
        for ids in bundles {
            let first = ids[0];
            let results = ids
                .iter()
                .map(|&id| TaskResult {
                    batch: BatchId::new("b"),
                    id,
                    attempt: 1,
                    outcome: outcome.clone(),
                    exit_code: Some(0),
                    stdout: String::new(),
                    stderr: String::new(),
                    truncated: false,
                    artifact: None,
                    artifact_url: None,
                    worker: "w".into(),
                    submitted: Timestamp(0),
                    started: Timestamp(0),
                    finished: Timestamp(took.as_micros() as u64),
                })
                .collect();
            let message = cloudkon_core::wire::ResultsMessage {
                key: format!("k{first}"),
                ideal: Duration::ZERO,
                results,
                usage: Default::default(),
            };
            let body = cloudkon_core::wire::encode_results(&message, usize::MAX).unwrap();
            responses.send_results(REPLY_TO, vec![body]).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_past_its_failure_policy_ends_failed_and_stops_enqueuing() {
        let (queue, responses) = (MemoryQueue::bounded(1 << 20), MemoryResponses::new());
        let n = 1_000_000;
        let mut spec = generator(json!({"kind": "sleep", "ms": 1000}), n);
        spec["failurePolicy"] = json!({"maxFailedPercent": 10, "minTasksBeforeJudging": 50});
        let b = batch(spec, None);
        let r = Arc::new(runner(&queue, &responses, MemoryRecord::default()));
        let (_tx, spec) = watch::channel(b.spec.clone());
        let run = {
            let r = r.clone();
            tokio::spawn(async move { r.run(args(b, false), spec).await })
        };
        // Every task fails, as workers would report.
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run.is_finished() {
            assert!(Instant::now() < deadline, "the runner did not give up");
            let received = queue.receive(100, Duration::from_millis(50)).await;
            for d in received.unwrap().unwrap_or_default() {
                sent += d.bundle.tasks.len();
                let failed = Outcome::Failed {
                    reason: "exit 1".into(),
                };
                answer_with(
                    &responses,
                    &[(d.bundle.tasks[0].id, d.bundle.tasks.len())],
                    Duration::from_millis(1),
                    failed,
                )
                .await;
            }
        }
        run.await.unwrap().unwrap();
        let status = r.record.status();
        assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
        assert!(status.completion_time.is_some(), "{status:?}");
        let finished = status.counts.succeeded + status.counts.failed;
        assert!(finished >= 50, "judged after {finished}");
        // What was queued when it gave up is all that was ever sent: the
        // metered window, far from the million.
        sent += drain(&queue).await.iter().map(|b| b.1).sum::<usize>();
        assert!(sent < 10_000, "{sent} tasks sent");
        // Given up mid-enqueue: no total, and the progress column says so.
        assert_eq!(status.counts.total, 0, "{status:?}");
        assert_eq!(status.counts.failed, finished);
        assert!(status.progress.unwrap().ends_with('+'));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_batchs_rate_falls_and_its_eta_moves_without_new_results() {
        let (queue, responses) = (MemoryQueue::bounded(1 << 10), MemoryResponses::new());
        let b = batch(generator(json!({"kind": "sleep", "ms": 1000}), 100), None);
        let mut r = runner(&queue, &responses, MemoryRecord::default());
        r.settings.status_refresh = Duration::from_millis(200);
        let r = Arc::new(r);
        let (_tx, spec) = watch::channel(b.spec.clone());
        let run = {
            let r = r.clone();
            tokio::spawn(async move { r.run(args(b, false), spec).await })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status_until = |what: &str, ok: &dyn Fn(&TaskBatchStatus) -> bool| {
            let status = r.record.status();
            assert!(Instant::now() < deadline, "{what}: {status:?}");
            ok(&status)
        };
        // The tasks sent so far, at least `n` (the meter sends more as
        // results come).
        let mut tasks = Vec::new();
        let mut sent = async |n: usize| {
            while tasks.len() < n {
                assert!(!run.is_finished() && Instant::now() < deadline, "{tasks:?}");
                tasks.extend(drain_ids(&queue).await.into_iter().flatten());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tasks.clone()
        };
        // Two rounds of results, so that there is a rate over the window,
        // then none.
        let one_each = |ids: &[u64]| ids.iter().map(|&id| vec![id]).collect::<Vec<_>>();
        let took = Duration::from_millis(1);
        let first = sent(50).await;
        answer_ids(
            &responses,
            &one_each(&first[..50]),
            took,
            Outcome::Succeeded,
        )
        .await;
        while !status_until("the first round", &|s| s.counts.succeeded == 50) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let second = sent(75).await;
        answer_ids(
            &responses,
            &one_each(&second[50..75]),
            took,
            Outcome::Succeeded,
        )
        .await;
        while !status_until("the second round", &|s| {
            s.counts.succeeded == 75 && s.estimated_completion_time.is_some()
        }) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = r.record.status();
        let (rate, eta) = (
            before.throughput.unwrap(),
            before.estimated_completion_time.clone().unwrap().0,
        );
        // Nothing more comes: the rate is written lower, and the end later.
        while !status_until("the stall", &|s| {
            s.throughput.is_some_and(|t| t < rate / 2.0)
                && s.estimated_completion_time
                    .as_ref()
                    .is_some_and(|e| e.0.duration_since(eta).as_secs() >= 1)
        }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(r.record.status().counts.succeeded, 75);
        run.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_lettered_tasks_count_as_failed_once_and_the_batch_finishes() {
        let (queue, responses) = (MemoryQueue::bounded(64), MemoryResponses::new());
        let ledger = MemoryLedger::new();
        let n = 30;
        // Declared 1 s: bundles of a few tasks (1 ms tasks would all go in one,
        // the bundle floor being 1 s of work); the test answers for workers.
        let b = batch(generator(json!({"kind": "sleep", "ms": 1000}), n), None);
        let r = Arc::new(runner(&queue, &responses, MemoryRecord::default()));
        let (_tx, spec) = watch::channel(b.spec.clone());
        let run = {
            let r = r.clone();
            tokio::spawn(async move { r.run(args(b, false), spec).await })
        };
        // The first bundle dies (reported by the dead-letter reader), the
        // rest succeed; a late success of a dead task counts nothing.
        let mut dead: Option<Bundle> = None;
        let mut late_sent = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run.is_finished() {
            assert!(Instant::now() < deadline, "the batch did not finish");
            let received = queue.receive(100, Duration::from_millis(50)).await;
            for d in received.unwrap().unwrap_or_default() {
                if dead.is_none() {
                    let settled = crate::dead_letters::settle(
                        &d.bundle,
                        Some(&ledger),
                        responses.as_ref(),
                        5,
                    )
                    .await
                    .unwrap();
                    assert_eq!(
                        settled,
                        crate::dead_letters::Settled::Reported(d.bundle.tasks.len())
                    );
                    dead = Some(d.bundle);
                } else {
                    let mut bundles = vec![(d.bundle.tasks[0].id, d.bundle.tasks.len())];
                    if !late_sent && let Some(dead) = &dead {
                        bundles.push((dead.tasks[0].id, dead.tasks.len()));
                        late_sent = true;
                    }
                    answer(&responses, &bundles, Duration::from_millis(1)).await;
                }
            }
        }
        run.await.unwrap().unwrap();
        let dead = dead.expect("a bundle");
        assert!(late_sent, "the late successes were sent");
        let status = r.record.status();
        let k = dead.tasks.len() as i64;
        assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
        assert_eq!(
            (
                status.counts.succeeded,
                status.counts.failed,
                status.counts.dead_lettered
            ),
            (n as i64 - k, k, k)
        );
    }

    /// A batch of `n` `sleep` tasks of `ms`, of whose first bundle
    /// `answered` tasks run, the rest purged from the queue, with results
    /// parts of `part_bytes`, under `failure_policy`: the runner once it
    /// reported them, how many were purged, and the record's writes before
    /// the report.
    async fn report_purged(
        (n, ms): (u64, u64),
        answered: usize,
        part_bytes: usize,
        failure_policy: Option<serde_json::Value>,
    ) -> (Arc<MemoryRunner>, usize, u64) {
        let (queue, responses) = (MemoryQueue::bounded(64), MemoryResponses::new());
        let mut spec = generator(json!({"kind": "sleep", "ms": ms}), n);
        if let Some(policy) = failure_policy {
            spec["failurePolicy"] = policy;
        }
        let b = batch(spec, None);
        let mut plain = runner(&queue, &responses, MemoryRecord::default());
        plain.settings.missing_after = Duration::from_millis(300);
        plain.settings.results_part_bytes = part_bytes;
        let r = Arc::new(plain);
        let key = shares::pool_key("ns", "p");
        let (_tx, spec) = watch::channel(b.spec.clone());
        let run = {
            let r = r.clone();
            tokio::spawn(async move { r.run(args(b, true), spec).await })
        };
        // The first bundle runs; the others are purged from the queue.
        let mut ran = 0;
        let mut purged = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while ran + purged < n as usize {
            assert!(
                Instant::now() < deadline,
                "the batch's tasks were not all sent"
            );
            r.pool_idle.saw(&key, false);
            for d in queue
                .receive(100, Duration::from_millis(50))
                .await
                .unwrap()
                .unwrap_or_default()
            {
                let len = d.bundle.tasks.len();
                let run_here = if ran == 0 { len.min(answered) } else { 0 };
                if run_here > 0 {
                    ran = run_here;
                    answer(
                        &responses,
                        &[(d.bundle.tasks[0].id, ran)],
                        Duration::from_millis(1),
                    )
                    .await;
                }
                purged += len - run_here;
            }
        }
        assert!(purged > 0);
        // While a worker may still run something, nothing is reported, for
        // longer than --missing-after.
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            r.pool_idle.saw(&key, false);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!run.is_finished(), "reported while the pool was busy");
        assert_eq!(r.record.status().counts.failed, 0);
        let writes = r.record.writes();
        // The pool idle: the purged tasks are reported failed, once.
        while !run.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the lost tasks were not reported"
            );
            r.pool_idle.saw(&key, true);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run.await.unwrap().unwrap();
        (r, purged, writes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_found_nowhere_are_reported_failed_once_the_pool_is_idle_long_enough() {
        let (r, purged, _) = report_purged((30, 1000), usize::MAX, 256 << 10, None).await;
        let ran = 30 - purged;
        let status = r.record.status();
        assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
        let c = status.counts;
        let k = purged as i64;
        assert_eq!(
            (c.succeeded, c.failed, c.lost, c.dead_lettered),
            (ran as i64, k, k, 0)
        );
        let mut lost = 0;
        for (_, bytes) in r.store.list("results", "ns/b/") {
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let result: TaskResult = serde_json::from_slice(line).unwrap();
                if let Outcome::Failed { reason } = &result.outcome {
                    assert_eq!(&*result.worker, LOST_WORKER);
                    assert!(
                        reason.starts_with("lost: sent to the pool's queue"),
                        "{reason}"
                    );
                    lost += 1;
                }
            }
        }
        assert_eq!(lost, purged);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_lost_tasks_are_reported_a_part_at_a_time() {
        // Parts of 16 KiB: 32 lost tasks a round, each round written out
        // before the next is made (a purged queue of millions made them all
        // at once, past the operator's memory).
        // Short tasks: the window lets them all be sent, in a bundle or
        // two, of which one task runs. A failure policy the lost tasks are
        // over judges nothing until they are all reported.
        let policy = json!({"maxFailedPercent": 10, "minTasksBeforeJudging": 1});
        let (r, purged, before) = report_purged((3_000, 0), 1, 16 << 10, Some(policy)).await;
        let per_round = lost_per_round(16 << 10) as usize;
        assert_eq!(per_round, 32);
        assert!(purged > 20 * per_round, "{purged} purged");
        let status = r.record.status();
        assert_eq!(status.phase, Some(Phase::Failed));
        let c = status.counts;
        assert_eq!((c.failed, c.lost), (purged as i64, purged as i64));
        assert_eq!(c.succeeded + c.failed, c.total, "every task finished");
        // A status write and a collected-set write a round, at least.
        let writes = r.record.writes() - before;
        assert!(
            writes >= 2 * (purged / per_round) as u64,
            "{writes} writes for {purged} lost tasks"
        );
        // Every task once, run or lost.
        assert_eq!(stored_ids(&r.store).len(), 3_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_collector_does_not_pause_while_the_bundles_grow() {
        // 2 ms tasks of unknown length: their bundles grow from 16 tasks in
        // seven steps, each on a round's results. Most rounds of the ramp are
        // neither empty nor full: with the collector's 500 ms pause after
        // them, the steps took 1.06 s here (80 ms without; 10,000 `run true`
        // on the local servers: ~3 s).
        let spec = generator(json!({"kind": "run", "program": "true"}), 100_000);
        let (queue, responses) = (MemoryQueue::bounded(1 << 20), MemoryResponses::new());
        let r = runner(&queue, &responses, MemoryRecord::default());
        let b = batch(spec, None);
        let (_tx, rx) = watch::channel(b.spec.clone());
        let mut running = Box::pin(r.run(args(b, false), rx));
        let started = tokio::time::Instant::now();
        let grown = |r: &MemoryRunner| {
            r.record
                .status()
                .bundle_sizing
                .is_some_and(|s| s.task_microseconds <= 10_000)
        };
        while !grown(&r) {
            tokio::select! {
                r = &mut running => panic!("the batch ended first: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            let bundles = drain(&queue).await;
            answer(&responses, &bundles, Duration::from_millis(2)).await;
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not grown: {:?}",
                r.record.status()
            );
        }
        assert!(
            started.elapsed() < COLLECT_PAUSE,
            "grown in {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_runner_sends_the_bundles_it_sent_before_after_learning_sizes() {
        // Tasks of unknown length: small bundles first, then cut for the
        // length their results tell (2 ms), with the sizing written ahead.
        let n = 50_000;
        let spec = generator(json!({"kind": "run", "program": "true"}), n);
        let (queue, responses) = (MemoryQueue::bounded(100_000), MemoryResponses::new());
        let first = runner(&queue, &responses, MemoryRecord::default());
        let b = batch(spec.clone(), None);
        let (_tx, rx) = watch::channel(b.spec.clone());
        let mut sent = Vec::new();
        let mut running = Box::pin(first.run(args(b, false), rx));
        // Answer what comes until the sizing has grown twice, then stop the
        // runner (an operator killed) at a moment of its own.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                r = &mut running => panic!("the batch ended first: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let bundles = drain(&queue).await;
            answer(&responses, &bundles, Duration::from_millis(2)).await;
            sent.extend(bundles);
            // Stopped with bundles sent since its checkpoint, by a grown sizing.
            let status = first.record.status();
            let sent_tasks: u64 = sent.iter().map(|b| b.1 as u64).sum();
            if status
                .bundle_sizing
                .is_some_and(|s| s.task_microseconds < 100_000 && (s.from as u64) < sent_tasks)
                && (status.counts.enqueued as u64) < sent_tasks
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no learned sizing: {:?}",
                first.record.status()
            );
        }
        drop(running);
        sent.extend(drain(&queue).await);
        let status = first.record.status();
        let sizing = status.bundle_sizing.clone().unwrap();
        let checkpoint = status.counts.enqueued as u64;
        assert!(sizing.from as u64 <= checkpoint, "{status:?}");
        let sizes: Vec<usize> = sent.iter().map(|b| b.1).collect();
        assert_eq!(
            sizes[0],
            cloudkon_core::BundlePlan::FIRST_UNKNOWN_TASKS,
            "starts small: {sizes:?}"
        );
        assert!(
            sizes.iter().max() > Some(&(4 * cloudkon_core::BundlePlan::FIRST_UNKNOWN_TASKS)),
            "grows: {sizes:?}"
        );
        // The restart: a new runner from the status (and collected set) left;
        // the results the first had received and not deleted come back.
        let record = first.record;
        responses.redeliver(REPLY_TO);
        let second = runner(&queue, &responses, record);
        let b = batch(spec, Some(status));
        let (_tx, rx) = watch::channel(b.spec.clone());
        // The pool has grown since: the cut stays the one fixed in the
        // status (the planned slots).
        let grown = RunnerArgs {
            pool_slots: 40,
            pool_workers: 10,
            ..args(b, false)
        };
        let mut again = Box::pin(second.run(grown, rx));
        // Nothing below the checkpoint again, and what was sent after it
        // comes again cut the same (the same claim keys).
        let after: Vec<(u64, usize)> = sent.iter().copied().filter(|b| b.0 >= checkpoint).collect();
        let wanted: usize = after.iter().map(|b| b.1).sum();
        let mut resent: Vec<(u64, usize)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while resent.iter().map(|b| b.1).sum::<usize>() < wanted {
            tokio::select! {
                r = &mut again => panic!("the batch ended first: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let bundles = drain(&queue).await;
            answer(&responses, &bundles, Duration::from_millis(2)).await;
            resent.extend(bundles);
            assert!(
                Instant::now() < deadline,
                "resent {resent:?}, wanted {after:?}"
            );
        }
        assert!(
            !after.is_empty(),
            "killed right at a checkpoint: nothing to compare"
        );
        assert_eq!(resent[..after.len()], after[..], "checkpoint {checkpoint}");
        assert!(resent.iter().all(|b| b.0 >= checkpoint));
    }

    /// `status` as an operator of another version would cut from it: for 16
    /// workers of 4 slots, not the 2 of 2 the batch was planned for (a plan
    /// is code, and code changes across an upgrade).
    fn planned_otherwise(mut status: TaskBatchStatus) -> TaskBatchStatus {
        status.planned_slots = Some(64);
        status.planned_workers = Some(16);
        status
    }

    /// Every task of `n` once among `bundles`.
    fn each_once<'a>(bundles: impl IntoIterator<Item = &'a Vec<u64>>, n: u64) {
        let mut times = vec![0u32; n as usize];
        for &id in bundles.into_iter().flatten() {
            times[id as usize] += 1;
        }
        let twice: Vec<usize> = (0..times.len()).filter(|&i| times[i] > 1).collect();
        let never: Vec<usize> = (0..times.len()).filter(|&i| times[i] == 0).collect();
        assert!(
            twice.is_empty() && never.is_empty(),
            "sent more than once: {twice:?}; never: {never:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_that_cuts_otherwise_sends_nothing_before_its_checkpoint_again() {
        let n = 3_000;
        let spec = generator(json!({"kind": "sleep", "ms": 100}), n);
        let (sent, _) = send_order_of(&spec, None, &[], n as usize).await;
        let (half, status) = killed_at_half(&sent);
        let checkpoint: usize = sent[..half].iter().map(Vec::len).sum();
        let (resent, _) = send_order_of(
            &spec,
            Some(planned_otherwise(status)),
            &sent[..half],
            n as usize - checkpoint,
        )
        .await;
        let sizes = |b: &[Vec<u64>]| b.iter().map(Vec::len).collect::<Vec<_>>();
        assert_ne!(sizes(&resent), sizes(&sent[half..]), "not cut otherwise");
        each_once(sent[..half].iter().chain(&resent), n);
    }

    /// A batch waiting for its turn behind a full window, woken each time
    /// any other batch of the operator sends: it has nothing new to
    /// checkpoint, and writes nothing. It wrote its status at each wake, 250
    /// ms apart at the most: four writes a second while others sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_waiting_for_its_turn_writes_nothing_while_others_send() {
        let spec = generator(json!({"kind": "sleep", "ms": 1000}), 1_000);
        let (queue, responses) = (MemoryQueue::bounded(100_000), MemoryResponses::new());
        let r = runner(&queue, &responses, MemoryRecord::default());
        // Another batch on the pool holds far more than its window.
        let other = r
            .shares
            .join(&crate::shares::pool_key("ns", "p"), "other", 1);
        let cost = crate::task_cost::TaskCost::same(Duration::from_secs(1));
        assert!(other.take(1_000_000, cost, Duration::from_secs(20)));
        other.sent(1_000_000);
        let b = batch(spec, None);
        let (_tx, rx) = watch::channel(b.spec.clone());
        let mut running = Box::pin(r.run(args(b, false), rx));
        let deadline = Instant::now() + Duration::from_secs(30);
        while r.record.status().counts.enqueued == 0 {
            tokio::select! {
                res = &mut running => panic!("the batch ended: {res:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            assert!(Instant::now() < deadline, "its first bundle never went");
        }
        // Past its last checkpoint of what it sent.
        let settle = tokio::time::sleep(Duration::from_millis(600));
        tokio::select! {
            res = &mut running => panic!("the batch ended: {res:?}"),
            _ = settle => {}
        }
        let (before, enqueued) = (r.record.writes(), r.record.status().counts.enqueued);
        // Two seconds of the other batch sending, every 50 ms.
        let others_send = async {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                other.sent(1_000_000);
            }
        };
        tokio::select! {
            res = &mut running => panic!("the batch ended: {res:?}"),
            () = others_send => {}
        }
        assert_eq!(r.record.status().counts.enqueued, enqueued, "it sent");
        assert_eq!(r.record.writes(), before, "writes while it waited");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_runner_checkpoints_every_bundle_it_sent() {
        let n = 3_000;
        let spec = generator(json!({"kind": "sleep", "ms": 100}), n);
        let (queue, responses) = (MemoryQueue::bounded(100_000), MemoryResponses::new());
        let first = runner(&queue, &responses, MemoryRecord::default());
        let b = batch(spec.clone(), None);
        let (tx, rx) = watch::channel(b.spec.clone());
        let mut running = Box::pin(first.run(args(b, false), rx));
        let mut sent: Vec<Vec<u64>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.iter().map(Vec::len).sum::<usize>() < n as usize / 3 {
            tokio::select! {
                r = &mut running => panic!("the batch ended first: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let bundles = drain_ids(&queue).await;
            let took = Duration::from_millis(100);
            answer_ids(&responses, &bundles, took, Outcome::Succeeded).await;
            sent.extend(bundles);
            assert!(Instant::now() < deadline, "{:?}", first.record.status());
        }
        // The operator stopping (`stop_runners_gracefully`): the runner ends
        // at its next step, its checkpoint written for all it sent.
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the runner stops")
            .unwrap();
        sent.extend(drain_ids(&queue).await);
        let status = first.record.status();
        let sent_tasks: usize = sent.iter().map(Vec::len).sum();
        assert_eq!(status.counts.enqueued as usize, sent_tasks, "{status:?}");
        assert!(sent_tasks < n as usize, "all sent: nothing left to cut");
        // The next operator cuts otherwise, and sends each task not sent, once.
        let rest = n as usize - sent_tasks;
        let status = Some(planned_otherwise(status));
        let (resent, _) = send_order_of(&spec, status, &sent, rest).await;
        each_once(sent.iter().chain(&resent), n);
    }

    /// An inline batch of `n` tasks of 1 ms to 2 s in a scrambled order,
    /// sleeps and runs of an expected length in turn, sent in `order`; and
    /// each task's class in the send order.
    fn scrambled_lengths(n: u64, order: &str) -> (serde_json::Value, impl Fn(u64) -> u8) {
        let ms = |id: u64| 1u64 << ((id * 7) % 12);
        let inline: Vec<_> = (0..n)
            .map(|id| match id % 2 {
                0 => json!({"kind": "sleep", "ms": ms(id)}),
                _ => json!({"kind": "run", "program": "./sim", "expectedMs": ms(id)}),
            })
            .collect();
        let spec = json!({ "workerPool": "p", "order": order, "tasks": { "inline": inline } });
        let class = move |id| {
            cloudkon_core::workload::length_class(&cloudkon_core::TaskSpec::Sleep { ms: ms(id) })
        };
        (spec, class)
    }

    /// Runs `spec` on a runner started from `status`, with the results of
    /// the bundles `done` (sent before) waiting, answering every bundle as
    /// it comes, until `tasks` were sent or the batch ended: the bundles
    /// sent, as their tasks, and the status the runner left.
    async fn send_order_of(
        spec: &serde_json::Value,
        status: Option<TaskBatchStatus>,
        done: &[Vec<u64>],
        tasks: usize,
    ) -> (Vec<Vec<u64>>, TaskBatchStatus) {
        let (queue, responses) = (MemoryQueue::bounded(100_000), MemoryResponses::new());
        answer_ids(
            &responses,
            done,
            Duration::from_millis(1),
            Outcome::Succeeded,
        )
        .await;
        let r = runner(&queue, &responses, MemoryRecord::default());
        let b = batch(spec.clone(), status);
        let (_tx, rx) = watch::channel(b.spec.clone());
        let mut running = Box::pin(r.run(args(b, false), rx));
        let mut sent: Vec<Vec<u64>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.iter().map(Vec::len).sum::<usize>() < tasks {
            let ended = tokio::select! {
                r = &mut running => { r.unwrap(); true }
                _ = tokio::time::sleep(Duration::from_millis(20)) => false,
            };
            let bundles = drain_ids(&queue).await;
            answer_ids(
                &responses,
                &bundles,
                Duration::from_millis(1),
                Outcome::Succeeded,
            )
            .await;
            sent.extend(bundles);
            if ended {
                break;
            }
            assert!(Instant::now() < deadline, "{:?}", r.record.status());
        }
        (sent, r.record.status())
    }

    /// An operator killed after its checkpoint at the middle bundle of
    /// `sent`: how many bundles came before it, and the status it left.
    fn killed_at_half(sent: &[Vec<u64>]) -> (usize, TaskBatchStatus) {
        let half = sent.len() / 2;
        let checkpoint: usize = sent[..half].iter().map(Vec::len).sum();
        let status = TaskBatchStatus {
            counts: TaskCounts {
                enqueued: checkpoint as i64,
                ..TaskCounts::default()
            },
            phase: Some(Phase::Enqueuing),
            ..TaskBatchStatus::default()
        };
        (half, status)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn declared_lengths_go_longest_first_and_a_restart_resumes_in_that_order() {
        let n = 3_000;
        let (spec, class) = scrambled_lengths(n, "longestFirst");
        let (sent, first) = send_order_of(&spec, None, &[], n as usize).await;
        // Every task once, the longest classes first.
        let order: Vec<u64> = sent.iter().flatten().copied().collect();
        let mut ids = order.clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
        let classes: Vec<u8> = order.iter().map(|&id| class(id)).collect();
        assert!(classes.windows(2).all(|w| w[0] >= w[1]), "{classes:?}");
        assert_eq!((classes[0], classes[classes.len() - 1]), (12, 1));
        // An operator killed after its checkpoint at a bundle in the middle:
        // a new runner sends the same bundles from there (the same claim
        // keys), and none before.
        // The order is the one it started with (in status), not the spec's
        // since: edited to asGiven, the positions would mean other tasks.
        let (half, left) = killed_at_half(&sent);
        let left = TaskBatchStatus {
            send_order: Some(TaskOrder::LongestFirst),
            ..left
        };
        let checkpoint = left.counts.enqueued as usize;
        let mut edited = spec.clone();
        edited["order"] = json!("asGiven");
        let (resent, _) =
            send_order_of(&edited, Some(left), &sent[..half], n as usize - checkpoint).await;
        assert_eq!(resent, sent[half..], "checkpoint {checkpoint}");
        // What the tasks were is fixed with the first enqueue: the
        // reconciler refuses other ones (`source_digest`).
        let b = batch(spec.clone(), None);
        assert_eq!(
            first.source_digest,
            crate::source_digest::current(&b.spec.tasks, &Source::Spec)
        );
        assert!(first.source_digest.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn order_as_given_keeps_the_workloads_order() {
        let n = 300;
        let (spec, _) = scrambled_lengths(n, "asGiven");
        let (sent, _) = send_order_of(&spec, None, &[], n as usize).await;
        let order: Vec<u64> = sent.iter().flatten().copied().collect();
        assert_eq!(order, (0..n).collect::<Vec<_>>());
        // A batch an operator of before `spec.order` started (its status
        // has the planned slots, no order) goes on as given, the default
        // longestFirst notwithstanding.
        let (half, older) = killed_at_half(&sent);
        // (Its planned workers as this operator's first half was cut with:
        // they size the bundles, the order is what is tested here.)
        let older = TaskBatchStatus {
            planned_slots: Some(4),
            planned_workers: Some(2),
            ..older
        };
        let checkpoint = older.counts.enqueued as usize;
        let mut default = spec.clone();
        default.as_object_mut().unwrap().remove("order");
        let (resent, left) = send_order_of(
            &default,
            Some(older),
            &sent[..half],
            n as usize - checkpoint,
        )
        .await;
        assert_eq!(resent, sent[half..], "checkpoint {checkpoint}");
        // Nor is a digest of its tasks made up now: they may have been
        // edited since it started.
        assert_eq!(left.source_digest, None);
    }

    /// The same runner writing to `store`.
    fn with_store<S: ObjectStore>(
        r: MemoryRunner,
        store: S,
    ) -> Runner<MemoryQueue, MemoryInbox, S, MemoryRecord> {
        Runner {
            pool_queue: r.pool_queue,
            priority_lane: r.priority_lane,
            mark_lane: r.mark_lane,
            inbox: r.inbox,
            reply_to: r.reply_to,
            store,
            record: r.record,
            shares: r.shares,
            pool_idle: r.pool_idle,
            metrics: r.metrics,
            settings: r.settings,
            wake_pool: r.wake_pool,
            requests: r.requests,
        }
    }

    /// The task ids of the results parts under `ns/b/`, each once (a
    /// second one fails).
    fn stored_ids(store: &MemoryStore) -> BTreeSet<u64> {
        let mut ids = BTreeSet::new();
        for (_, bytes) in store.list("results", "ns/b/") {
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let result: TaskResult = serde_json::from_slice(line).unwrap();
                assert!(ids.insert(result.id), "task {} twice", result.id);
            }
        }
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_keep_coming_in_while_a_write_out_is_slow() {
        let n = 2_000;
        let (queue, responses) = (MemoryQueue::bounded(100_000), MemoryResponses::new());
        let mut plain = runner(&queue, &responses, MemoryRecord::default());
        // Parts larger than the batch's results: nothing must be written
        // while the first write-out waits.
        plain.settings.results_part_bytes = 8 << 20;
        let r = with_store(
            plain,
            TestStore {
                shut: true.into(),
                ..TestStore::default()
            },
        );
        // Tasks of unknown length: small bundles, sent as results come.
        let b = batch(
            generator(json!({"kind": "run", "program": "true"}), n),
            None,
        );
        let (_tx, rx) = watch::channel(b.spec.clone());
        let running = r.run(args(b, true), rx);
        let check = async {
            // Answered as sent until a write-out begins: it waits at the gate.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut answered = 0;
            while r.store.puts.load(Ordering::SeqCst) == 0 {
                assert!(Instant::now() < deadline, "no write-out began");
                let sent = drain(&queue).await;
                answered += sent.iter().map(|b| b.1 as u64).sum::<u64>();
                answer(&responses, &sent, Duration::from_millis(1)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The rest are sent, answered and received while it waits.
            while answered < n || responses.waiting(REPLY_TO) > 0 {
                assert!(
                    Instant::now() < deadline,
                    "{answered} of {n} tasks answered, {} results messages not received, \
                     while a write-out waits",
                    responses.waiting(REPLY_TO)
                );
                let sent = drain(&queue).await;
                answered += sent.iter().map(|b| b.1 as u64).sum::<u64>();
                answer(&responses, &sent, Duration::from_millis(1)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(
                r.store.puts.load(Ordering::SeqCst),
                1,
                "one write at a time"
            );
            r.store.open();
        };
        let (ran, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(30), running),
            check
        );
        ran.expect("the batch finishes").unwrap();
        // Every task once in the parts.
        assert_eq!(stored_ids(&r.store.inner).len() as u64, n);
        assert_eq!(r.record.status().counts.succeeded, n as i64);
    }

    #[test]
    fn a_runner_resumed_mid_batch_counts_as_running_only_what_has_not_finished() {
        let counts = TaskCounts {
            total: 1_000,
            enqueued: 600,
            succeeded: 500,
            failed: 90,
            ..TaskCounts::default()
        };
        let p = Progress::resumed(&counts, false);
        assert_eq!(p.running(), 10);
        assert_eq!(*p.total.borrow(), None);
        assert_eq!(p.planned.load(Ordering::Relaxed), 0);
        let p = Progress::resumed(&counts, true);
        assert_eq!(*p.total.borrow(), Some(1_000));
        assert_eq!(p.planned.load(Ordering::Relaxed), 1_000);
    }
    #[test]
    fn the_collector_pauses_after_a_round_that_met_a_trickle() {
        // (receives, messages got, results in them) -> pause before the
        // next round.
        let cases = [
            ((1, 0, 0), Duration::ZERO),
            ((1, 1, 13), COLLECT_PAUSE),
            ((1, 9, 120), COLLECT_PAUSE),
            ((1, 10, 130), Duration::ZERO),
            ((4, 39, 500), COLLECT_PAUSE),
            ((4, 40, 500), Duration::ZERO),
            ((16, 0, 0), Duration::ZERO),
            ((0, 5, 60), COLLECT_PAUSE),
            // Two messages of 4,096 `sleep 0` results each.
            ((1, 2, 8_192), Duration::ZERO),
            ((1, 2, 999), COLLECT_PAUSE),
        ];
        for ((receives, got, results), want) in cases {
            assert_eq!(
                collect_pause(receives, got, results, false),
                want,
                "{receives} {got} {results}"
            );
            // While bundles grow, no round waits.
            assert_eq!(
                collect_pause(receives, got, results, true),
                Duration::ZERO,
                "{receives} {got} {results}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_ends_with_the_messages_there_not_after_its_long_poll() {
        let responses = MemoryResponses::new();
        let inbox = responses.inbox(REPLY_TO);
        // Three messages for a round of four receives: the first takes them
        // all, and the others must not wait out a long poll for more.
        answer(&responses, &[(0, 1), (1, 1), (2, 1)], Duration::ZERO).await;
        let started = tokio::time::Instant::now();
        let got = receive_round(&inbox, 4, RESULTS_WAIT).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(started.elapsed(), Duration::ZERO, "the round waited");
        // An empty queue: the round long-polls, and returns with what comes.
        let started = tokio::time::Instant::now();
        let late = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            answer(&responses, &[(3, 1)], Duration::ZERO).await;
        };
        let (got, ()) = tokio::join!(receive_round(&inbox, 4, RESULTS_WAIT), late);
        assert_eq!(got.unwrap().len(), 1);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // Nothing comes: one long poll.
        let started = tokio::time::Instant::now();
        assert!(
            receive_round(&inbox, 2, RESULTS_WAIT)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(started.elapsed(), RESULTS_WAIT);
    }

    #[test]
    fn the_collector_doubles_its_receives_while_they_come_back_full() {
        // (receives, messages got) -> receives next.
        let cases = [
            ((1, 0), 1),
            ((1, 9), 1),
            ((1, 10), 2),
            ((2, 20), 4),
            ((8, 80), 16),
            ((16, 160), 16),
            ((16, 159), 8),
            ((4, 0), 2),
            ((0, 0), 1),
        ];
        for ((receives, got), want) in cases {
            assert_eq!(
                result_receives(receives, got),
                want,
                "{receives} receives, {got} got"
            );
        }
    }

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
