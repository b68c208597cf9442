//! The distributed worker: bundles from a shared queue (SQS), exactly-once
//! claims in a ledger (DynamoDB), results to each batch's response queue.
//!
//! ```text
//! fetch ──claim──▶ units ──▶ pool: a unit's tasks ──▶ results as tasks finish ──▶ complete:
//!   ▲  (ledger)               on any free slot        (a bundle's end, or up    send to reply_to,
//!   │                                                  to a linger)
//!   │                                                                           mark progress; at a
//!   │                                                                           bundle's end: ledger
//!   │                                                                           done, delete message
//!   └── a task per slot and what the slots free within 10 s in hand (see
//!       `hold`), and at most slots + prefetch bundles
//! renew: every lease/3, extend the lease (writing each bundle's progress) of
//! each bundle held, and the visibilities of their messages in one request
//! cancels: every `cancel_check`, ask about the batches of which tasks held
//! have not started (`cancels`)
//! ```
//! A task's results are sent before they count in its bundle's progress, and a
//! message is deleted only after every result of its bundle was sent and the
//! claim completed. A worker that dies leaves the bundle to whoever claims it
//! after the lease: that worker runs only the tasks not in the progress of the
//! last renewal, so at most the tasks finished within one renewal period (a
//! third of the lease) plus those running run twice (their second results
//! count once: the collectors keep each task id once). On live workers a task
//! runs twice only when a worker's renewals were late past its lease and the
//! bundle was taken over: the tasks it was running then (it starts none of
//! the rest). No result is lost.

mod cancels;
pub use cancels::batches_to_watch;
mod complete;
pub use complete::{MAX_RESULTS_LINGER, RESULTS_PER_SEND, renew_every, results_wait};
mod fetch;
pub use fetch::{bundle_size_seen, bundles_wanted, declared_length};
mod heartbeat;
pub use heartbeat::{HEARTBEAT_LOOK_EVERY, HEARTBEAT_ROW_EVERY, heartbeat_due};
mod hold;
pub use hold::{TypicalTask, tasks_to_hold};
mod inflight;
mod outbox;
mod retry;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::ledger::DedupLedger;
use cloudkon_core::queue::{ResultRouter, TaskQueue};
use tokio::sync::Semaphore;

pub use stats::WorkerStats;

use crate::exec::Registry;
use crate::pool::{PoolConfig, Shutdown, run_pool_lanes};
use inflight::InFlight;

#[derive(Clone, Debug)]
pub struct RemoteConfig {
    pub pool: PoolConfig,
    /// Claims are held this long without a heartbeat; a dead worker's bundles are
    /// taken over after it.
    pub lease: Duration,
    /// How long a received message stays hidden from other workers per extension.
    pub visibility: Duration,
    /// Long-poll wait of one receive.
    pub receive_wait: Duration,
    /// Bundles held beyond one per slot, so that a slot finds work at once.
    pub prefetch: usize,
    /// How long a finished task's result waits for others to travel with
    /// (a bundle's last result and a send's worth leave at once: see
    /// [`results_wait`]).
    pub linger: Duration,
    /// Exit after this long with nothing received and nothing running.
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long running bundles may take before they are abandoned
    /// (and given back).
    pub grace: Duration,
    /// A bundle claimed this many times (its workers kept dying) is reported
    /// failed instead of run again.
    pub max_claims: u32,
    /// How often the ledger is asked whether each batch held was cancelled
    /// (one read per batch, its lane mark with it): how soon a cancel leaves the tasks not started,
    /// against a read per worker and period, which a pool of 1,000 workers
    /// finishing a few tasks a second each pays per task (see the README's
    /// simulation figures).
    pub cancel_check: Duration,
    /// Stop ([`StopReason::GaveUp`]) when every receive, or every claim, has
    /// failed for this long while nothing is held: an idle worker that cannot
    /// reach its queue or its ledger is of no use, and where something
    /// restarts it (Kubernetes) the stop says why. Also when every send of
    /// results has failed that long, holding bundles or not: they cannot end
    /// without their results, so they are given back for a worker that can.
    /// A queue refused that long while another queue took results is the
    /// queue's own refusal: only its batch's bundles are given back, and the
    /// worker goes on (after [`RESPONSE_QUEUE_RETURN`] when this is `None`).
    /// `None`: retry for ever.
    pub give_up_after: Option<Duration>,
    /// How long results whose response queue is not found are sent again
    /// while their batch is not cancelled in the ledger (a queue deleted by
    /// hand, which the batch's runner makes again) before they are dropped
    /// as a deleted batch's. A batch deleted through Kubernetes is marked
    /// first, so its results are dropped at once.
    pub response_queue_return: Duration,
}

impl RemoteConfig {
    pub fn new(pool: PoolConfig) -> Self {
        Self {
            pool,
            lease: Duration::from_secs(60),
            visibility: Duration::from_secs(60),
            receive_wait: Duration::from_secs(10),
            prefetch: 2,
            linger: Duration::from_secs(5),
            idle_timeout: None,
            grace: Duration::from_secs(25),
            max_claims: 3,
            cancel_check: Duration::from_secs(3),
            give_up_after: None,
            response_queue_return: RESPONSE_QUEUE_RETURN,
        }
    }
}

/// See [`RemoteConfig::response_queue_return`]: past SQS's 60 s refusal of
/// a deleted queue's name, with the runner's restart after it.
pub const RESPONSE_QUEUE_RETURN: Duration = Duration::from_secs(120);

/// Why the worker stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Told to (SIGTERM).
    Shutdown,
    /// Nothing to do for `idle_timeout`.
    Idle,
    /// The queue is finite and drained (in-memory queues in tests).
    Drained,
    /// Every attempt at `unable` failed for `RemoteConfig::give_up_after`
    /// (with nothing held, but for results and renewals).
    GaveUp {
        unable: Unable,
        failing_for: Duration,
        /// The last attempt's error.
        error: String,
    },
}

/// What a worker that gave up could not do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unable {
    /// Receive from its queue (SQS).
    Receive,
    /// Claim a bundle, or ask whether its batch was cancelled (the ledger).
    Claim,
    /// Send results to a batch's response queue (SQS): IAM without
    /// `sqs:SendMessage` on `cloudkon-tb-*`, say. The worker gave its bundles
    /// back, their tasks not reported.
    SendResults,
    /// Renew the leases of the bundles it holds (the ledger): the table
    /// deleted, or IAM without `dynamodb:UpdateItem`, say. Its running tasks
    /// are left, and run again elsewhere.
    Renew,
}

/// The most batches a worker remembers something of (a cancel answer, a lane
/// mark, a response queue found gone): batches come and go over a worker's
/// life, and past this all are forgotten at once, to be asked again.
const REMEMBERED_BATCHES: usize = 10_000;

/// The parts every stage shares.
struct Ctx<Q, L, R> {
    queue: Arc<Q>,
    /// `None`: dedup off (`--no-dedup`), as the paper measured: at-least-once.
    ledger: Option<Arc<L>>,
    router: Arc<R>,
    config: RemoteConfig,
    /// The worker's id; each claim's owner token is this plus a sequence number.
    owner: String,
    claims: std::sync::atomic::AtomicU64,
    stats: Arc<WorkerStats>,
    inflight: InFlight,
    /// Permits for bundles this worker may hold.
    room: Arc<Semaphore>,
    /// Tasks finished or ended: the fetcher waits on it when it holds enough.
    tasks_done: tokio::sync::Notify,
    /// Response queues found deleted (logged once each; at most
    /// [`REMEMBERED_BATCHES`], as the caches below).
    gone: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Batch → (cancelled, when looked up): the ledger is asked at most every
    /// `config.cancel_check` per batch.
    cancelled: std::sync::Mutex<std::collections::HashMap<String, (bool, std::time::Instant)>>,
    /// Batch → its last lane mark seen (see `BatchMarks::lane_at`).
    lane_marks: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// A new lane mark was seen: the fetcher looks at the priority lane
    /// even though it holds enough.
    lane_nudge: tokio::sync::Notify,
    /// Stops the fetcher and aborts the pool when a stage gives up.
    shutdown: Shutdown,
    /// Why a stage other than the fetcher gave up, first one only.
    gave_up: std::sync::Mutex<Option<StopReason>>,
    /// The last round of lease renewals failed: the fetcher claims nothing
    /// new until one succeeds (see `complete::renew_leases`).
    renewals_failing: tokio::sync::watch::Sender<bool>,
    /// Held while a round of visibility extensions runs: a message given
    /// back waits for it, or an extension under way would hide it again
    /// for a whole visibility timeout (see `complete::renew_leases`).
    visibility_round: tokio::sync::Mutex<()>,
}

impl<Q, L, R> Ctx<Q, L, R> {
    /// A fresh owner token for one claim.
    fn claim_owner(&self) -> String {
        let n = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}#{n}", self.owner)
    }
}

/// Runs a worker until it is told to stop, idles out, or its queue is drained.
pub async fn run_remote<Q, L, R>(
    queue: Arc<Q>,
    ledger: Option<Arc<L>>,
    router: Arc<R>,
    registry: Arc<Registry>,
    config: RemoteConfig,
    shutdown: Shutdown,
    stats: Arc<WorkerStats>,
) -> StopReason
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let slots = config.pool.slots.max(1);
    let ctx = Arc::new(Ctx {
        queue,
        ledger,
        router,
        owner: config.pool.worker_id.clone(),
        claims: std::sync::atomic::AtomicU64::new(0),
        shutdown: shutdown.clone(),
        gave_up: Default::default(),
        room: Arc::new(Semaphore::new(slots + config.prefetch)),
        config,
        inflight: InFlight::new(stats.clone()),
        tasks_done: tokio::sync::Notify::new(),
        gone: Default::default(),
        stats,
        cancelled: Default::default(),
        lane_marks: Default::default(),
        lane_nudge: tokio::sync::Notify::new(),
        renewals_failing: tokio::sync::watch::channel(false).0,
        visibility_round: tokio::sync::Mutex::new(()),
    });
    let (units_tx, units_rx) = async_channel::bounded(slots + ctx.config.prefetch);
    // The priority lane's bundles: dispatched before the others held.
    let (first_tx, first_rx) = async_channel::bounded(slots + ctx.config.prefetch);
    let (results_tx, results_rx) = async_channel::bounded(slots * 4);

    let pool = tokio::spawn(run_pool_lanes(
        ctx.config.pool.clone(),
        registry,
        units_rx.clone(),
        Some(first_rx.clone()),
        results_tx.clone(),
        shutdown.clone(),
    ));
    let completer = tokio::spawn(complete::run(
        ctx.clone(),
        results_rx,
        shutdown.abort.clone(),
    ));
    let renewer_done = tokio_util::sync::CancellationToken::new();
    let renewer = tokio::spawn(complete::renew_leases(ctx.clone(), renewer_done.clone()));
    let canceller = tokio::spawn(cancels::watch(ctx.clone(), renewer_done.clone()));

    let reason = fetch::run(&ctx, &units_tx, &first_tx, &results_tx, &shutdown).await;
    drop(units_tx);
    drop(first_tx);
    drop(results_tx);
    if reason == StopReason::Shutdown {
        let abort = shutdown.abort.clone();
        let grace = ctx.config.grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            abort.cancel();
        });
    }
    // Stopped: the pool takes no more units, so those waiting go back now,
    // not after the running tasks (hidden meanwhile from every other
    // worker). After the grace began: the releases may be slow.
    if shutdown.stop.is_cancelled() {
        give_back_unstarted(&ctx, &first_rx).await;
        give_back_unstarted(&ctx, &units_rx).await;
    }
    let _ = pool.await;
    // Units received but never started (a stop after the queue was drained
    // or the worker idled out).
    give_back_unstarted(&ctx, &first_rx).await;
    give_back_unstarted(&ctx, &units_rx).await;
    let _ = completer.await;
    renewer_done.cancel();
    let _ = renewer.await;
    let _ = canceller.await;
    let gave_up = ctx.gave_up.lock().expect("gave_up lock").take();
    gave_up.unwrap_or(reason)
}

/// Gives back the units waiting for a slot: another worker runs them.
async fn give_back_unstarted<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    units: &async_channel::Receiver<crate::WorkUnit>,
) where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    while let Ok(unit) = units.try_recv() {
        ctx.inflight.finish_tasks(unit.tasks.len());
        if let Some(ticket) = &unit.ticket {
            complete::give_back(ctx, ticket, true).await;
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_stop;
