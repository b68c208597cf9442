//! Receiving bundles and claiming them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudkon_core::ledger::{
    BatchMarks, BundleProgress, Claim, DedupLedger, LaneSight, claim_key, lane_look_due,
    lane_mark_fresh, lane_nudged,
};
use cloudkon_core::queue::{Delivery, Receipt, ResultRouter, TaskQueue};
use cloudkon_core::{TaskResult, TaskSpec, Timestamp};

use super::retry::Backoff;
use super::{Ctx, StopReason, Unable, WorkerStats};
use crate::pool::{PoolEvent, Shutdown, Ticket, UnitControl, UnitRun, WorkUnit};

/// SQS returns at most 10 messages per receive.
const MAX_RECEIVE: usize = 10;
/// When a claim fails (the ledger is unreachable), the message is hidden this
/// long before it is delivered again, times 3 for each earlier delivery: a
/// ledger outage of minutes must not use up the queue's `maxReceives` and send
/// bundles to the dead-letter queue.
const CLAIM_RETRY_DELAY: Duration = Duration::from_secs(2);
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(300);
/// A ledger call before a bundle is admitted gives up after this (the SDK
/// alone retries for ~25 s on a paused server): the other messages of the same
/// receive wait meanwhile, and must be hidden again before the queue's
/// visibility timeout (30 s) hands them to another worker, a receive burnt.
const ADMIT_LEDGER_LIMIT: Duration = Duration::from_secs(10);
/// After a failed claim the fetcher stops receiving for this long, doubling
/// up to `LEDGER_PAUSE_MAX` while claims keep failing: every receive of a
/// bundle that cannot be claimed counts towards the dead-letter queue.
const LEDGER_PAUSE: Duration = Duration::from_secs(1);
const LEDGER_PAUSE_MAX: Duration = Duration::from_secs(16);

/// How long a message whose claim failed stays hidden, by its receive count.
pub fn claim_retry_delay(receive_count: u32) -> Duration {
    let factor = 3u32.saturating_pow(receive_count.saturating_sub(1).min(10));
    CLAIM_RETRY_DELAY
        .saturating_mul(factor)
        .min(CLAIM_RETRY_MAX)
}

/// How many bundles to ask for: enough to bring the tasks held up to `hold`
/// (see [`super::tasks_to_hold`]), judged by the size of bundles so far, and
/// at least one. Before any bundle is seen, one: its size is unknown, and a
/// receive of ten bundles of ten-minute tasks would hide them all here.
pub fn bundles_wanted(
    hold: usize,
    tasks_held: usize,
    avg_bundle_tasks: Option<f64>,
    room: usize,
) -> usize {
    let Some(avg) = avg_bundle_tasks else {
        return 1;
    };
    let wanted_tasks = hold.saturating_sub(tasks_held) as f64;
    let bundles = (wanted_tasks / avg.max(1.0)).ceil() as usize;
    bundles.clamp(1, room.clamp(1, MAX_RECEIVE))
}

/// The bundle size `bundles_wanted` judges by, after a bundle of `tasks`
/// came: smoothed, as bundles vary from one task to thousands.
pub fn bundle_size_seen(before: Option<f64>, tasks: usize) -> f64 {
    let n = tasks as f64;
    before.map_or(n, |size| 0.7 * size + 0.3 * n)
}

/// The mean length the tasks declare (a sleep's, a run's `expected_ms`), if any does.
pub fn declared_length<'a>(specs: impl Iterator<Item = &'a TaskSpec>) -> Option<Duration> {
    let (sum, n) = specs
        .filter_map(TaskSpec::declared_length)
        .fold((Duration::ZERO, 0u32), |(sum, n), d| {
            (sum.saturating_add(d), n + 1)
        });
    (n > 0).then(|| sum / n)
}

/// Whether a worker whose receives have failed for `failing_for` stops:
/// only past its limit, and only while it holds no bundle (running work is
/// finished and reported first; the receives may come back meanwhile).
pub fn gives_up(limit: Option<Duration>, failing_for: Duration, held: usize) -> bool {
    limit.is_some_and(|limit| failing_for >= limit) && held == 0
}

pub async fn run<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    units: &async_channel::Sender<WorkUnit>,
    first_units: &async_channel::Sender<WorkUnit>,
    results: &async_channel::Sender<PoolEvent>,
    shutdown: &Shutdown,
) -> StopReason
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let mut idle_since = Instant::now();
    let mut backoff = Backoff::new();
    let slots = ctx.config.pool.slots.max(1);
    // Tasks per bundle received, smoothed: bundles vary from one task to
    // thousands, and how many to ask for depends on it.
    let mut avg_bundle_tasks: Option<f64> = None;
    // Set while the ledger fails: no receiving until then.
    let mut ledger_pause = LEDGER_PAUSE;
    // Since when every receive failed, and every claim.
    let mut failing_since: Option<Instant> = None;
    let mut ledger_failing_since: Option<Instant> = None;
    let mut renewals = ctx.renewals_failing.subscribe();
    loop {
        // Hold no more tasks than the slots can start soon: a message held here
        // is invisible to idle workers elsewhere.
        // Meanwhile a new lane mark has it look at the priority lane: its
        // bundles go ahead of those held, and would wait for one of them to
        // end otherwise (on a pool of few workers, each holding a window's
        // share of a big batch: ~13 s a round, simulated).
        while ctx.inflight.tasks() >= ctx.inflight.hold(slots) {
            tokio::select! {
                _ = shutdown.stop.cancelled() => return StopReason::Shutdown,
                _ = ctx.tasks_done.notified() => {},
                _ = ctx.lane_nudge.notified() => {
                    if let Some(stop) = look_at_lane(ctx, first_units, results, shutdown).await {
                        return stop;
                    }
                }
            }
        }
        // While lease renewals fail, nothing new is claimed (see
        // `complete::renew_leases`).
        tokio::select! {
            _ = shutdown.stop.cancelled() => return StopReason::Shutdown,
            _ = renewals.wait_for(|failing| !failing) => {},
        }
        let first = tokio::select! {
            _ = shutdown.stop.cancelled() => return StopReason::Shutdown,
            permit = ctx.room.acquire() => permit.expect("room semaphore open"),
        };
        first.forget();
        let want = bundles_wanted(
            ctx.inflight.hold(slots),
            ctx.inflight.tasks(),
            avg_bundle_tasks,
            1 + ctx.room.available_permits(),
        );
        let room = 1 + take_room(ctx, want.saturating_sub(1));
        if shutdown.stop.is_cancelled() {
            ctx.room.add_permits(room);
            return StopReason::Shutdown;
        }
        // Not cancelled on shutdown: messages received by a cancelled call would
        // stay hidden for a whole visibility timeout; these are given back at once.
        let asked = Instant::now();
        let received = if lane_look_due(lane_sight(ctx)) {
            ctx.queue.receive(room, ctx.config.receive_wait).await
        } else {
            ctx.queue.receive_main(room, ctx.config.receive_wait).await
        };
        let deliveries = match received {
            Ok(Some(deliveries)) => {
                backoff.reset();
                failing_since = None;
                deliveries
            }
            Ok(None) => {
                ctx.room.add_permits(room);
                return StopReason::Drained;
            }
            Err(e) => {
                ctx.room.add_permits(room);
                WorkerStats::add(&ctx.stats.backend_errors, 1);
                let failing_for = failing_since.get_or_insert(asked).elapsed();
                if gives_up(ctx.config.give_up_after, failing_for, ctx.inflight.len()) {
                    return StopReason::GaveUp {
                        unable: Unable::Receive,
                        failing_for,
                        error: e.to_string(),
                    };
                }
                tracing::warn!(error = %e, "receive failed; backing off");
                if !backoff.wait(&shutdown.stop).await {
                    return StopReason::Shutdown;
                }
                continue;
            }
        };
        ctx.room.add_permits(room - deliveries.len().min(room));
        for delivery in &deliveries {
            avg_bundle_tasks = Some(bundle_size_seen(
                avg_bundle_tasks,
                delivery.bundle.tasks.len(),
            ));
            if let Some(length) = declared_length(delivery.bundle.tasks.iter().map(|t| &t.spec)) {
                ctx.inflight.declared(length);
            }
        }
        if ctx.inflight.len() > 0 || !deliveries.is_empty() {
            idle_since = Instant::now();
        } else if ctx
            .config
            .idle_timeout
            .is_some_and(|idle| idle_since.elapsed() >= idle)
        {
            return StopReason::Idle;
        }
        // The ledger's error, when a claim (or cancel check) failed.
        let mut ledger_down: Option<String> = None;
        let admitting = Instant::now();
        let delivered = !deliveries.is_empty();
        for delivery in deliveries {
            if ledger_down.is_some() && !shutdown.stop.is_cancelled() {
                // Its claim would fail as the last one did, after as long a
                // wait: hidden at once, to come back later.
                ctx.room.add_permits(1);
                hide_unclaimed(ctx, delivery.receipt.as_ref(), delivery.receive_count).await;
                continue;
            }
            let to = if delivery.priority {
                first_units
            } else {
                units
            };
            match dispatch(ctx, delivery, to, results, shutdown).await {
                Ok(Some(error)) => ledger_down = Some(error),
                Ok(None) => {}
                Err(stop) => return stop,
            }
        }
        if let Some(error) = ledger_down {
            let failing_for = ledger_failing_since.get_or_insert(admitting).elapsed();
            if gives_up(ctx.config.give_up_after, failing_for, ctx.inflight.len()) {
                return StopReason::GaveUp {
                    unable: Unable::Claim,
                    failing_for,
                    error,
                };
            }
            tracing::warn!(pause = ?ledger_pause, "the ledger is unreachable: receiving again after a pause");
            tokio::select! {
                _ = shutdown.stop.cancelled() => return StopReason::Shutdown,
                _ = tokio::time::sleep(ledger_pause) => {},
            }
            ledger_pause = (ledger_pause * 2).min(LEDGER_PAUSE_MAX);
        } else {
            ledger_pause = LEDGER_PAUSE;
            if delivered {
                ledger_failing_since = None;
            }
        }
    }
}

/// Claims `key`, waiting at most [`ADMIT_LEDGER_LIMIT`] for the answer. A
/// claim that fails may still have landed (an attempt whose answer was lost,
/// the SDK's retries then throttled), and one not answered in time may land
/// later: either is given back, or an owner token never used again held it
/// for a whole lease (the next claim `Held`, then taken over as one attempt
/// more, towards `max_claims` though no worker died).
async fn claim_within<L: DedupLedger>(
    ledger: &Arc<L>,
    key: &str,
    owner: &str,
    lease: Duration,
) -> Result<Claim, cloudkon_core::ledger::LedgerError> {
    let mut claim = tokio::spawn({
        let (ledger, key, owner) = (ledger.clone(), key.to_string(), owner.to_string());
        async move { ledger.claim(&key, &owner, lease).await }
    });
    match tokio::time::timeout(ADMIT_LEDGER_LIMIT, &mut claim).await {
        Ok(Ok(Ok(claim))) => Ok(claim),
        Ok(Ok(Err(e))) => {
            give_back_failed_claim(ledger, key, owner, async { true });
            Err(e)
        }
        Ok(Err(e)) => {
            give_back_failed_claim(ledger, key, owner, async { true });
            Err(cloudkon_core::ledger::LedgerError::Unavailable(format!(
                "the claim stopped: {e}"
            )))
        }
        Err(_) => {
            // Whatever the late answer, but a refusal: an error may hide a
            // grant too.
            let landed = async move {
                !matches!(claim.await, Ok(Ok(Claim::Held { .. } | Claim::Done { .. })))
            };
            give_back_failed_claim(ledger, key, owner, landed);
            Err(cloudkon_core::ledger::LedgerError::Unavailable(format!(
                "no answer within {ADMIT_LEDGER_LIMIT:?}"
            )))
        }
    }
}

/// Once `landed` says the failed claim of `key` by `owner` may hold it,
/// releases it, in the background (best effort). The release is
/// conditional on `owner`, a token of this claim alone: a claim that never
/// landed, or a bundle another worker holds, is left as it is.
fn give_back_failed_claim<L: DedupLedger>(
    ledger: &Arc<L>,
    key: &str,
    owner: &str,
    landed: impl Future<Output = bool> + Send + 'static,
) {
    let (ledger, key, owner) = (ledger.clone(), key.to_string(), owner.to_string());
    tokio::spawn(async move {
        if !landed.await {
            return;
        }
        match ledger.release(&key, &owner, &BundleProgress::new()).await {
            Ok(()) => tracing::debug!(key, "a failed or late claim given back, if it landed"),
            Err(e) => {
                tracing::debug!(key, error = %e, "could not give back a failed or late claim; if it landed, it expires with its lease")
            }
        }
    });
}

/// Takes up to `most` room permits that are free now (each one bundle's
/// room, given back as the bundle ends); how many.
fn take_room<Q, L, R>(ctx: &Ctx<Q, L, R>, most: usize) -> usize {
    let mut room = 0;
    while room < most {
        match ctx.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                room += 1;
            }
            Err(_) => break,
        }
    }
    room
}

/// One receive from the priority lane alone, for as many bundles as the
/// worker has room for, each admitted and dispatched ahead of those held;
/// `Some`: the worker is to stop.
async fn look_at_lane<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    first_units: &async_channel::Sender<WorkUnit>,
    results: &async_channel::Sender<PoolEvent>,
    shutdown: &Shutdown,
) -> Option<StopReason>
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let room = take_room(ctx, MAX_RECEIVE);
    if room == 0 {
        return None;
    }
    let deliveries = match ctx.queue.receive_priority(room).await {
        Ok(deliveries) => deliveries,
        Err(e) => {
            tracing::debug!(error = %e, "cannot look at the priority lane");
            Vec::new()
        }
    };
    ctx.room.add_permits(room - deliveries.len().min(room));
    WorkerStats::add(&ctx.stats.lane_marked, deliveries.len() as u64);
    let mut ledger_down = false;
    for delivery in deliveries {
        // The ledger down: the bundle is hidden to come back, the others at
        // once (their claims would wait as long to fail), and the main
        // loop finds out on its next claim.
        if ledger_down && !shutdown.stop.is_cancelled() {
            ctx.room.add_permits(1);
            hide_unclaimed(ctx, delivery.receipt.as_ref(), delivery.receive_count).await;
            continue;
        }
        match dispatch(ctx, delivery, first_units, results, shutdown).await {
            Ok(Some(_)) => ledger_down = true,
            Ok(None) => {}
            Err(stop) => return Some(stop),
        }
    }
    None
}

/// Admits a bundle received (one room permit taken for it) and sends it
/// `to` the slots, or reports it given up; received after the stop, it goes
/// straight back to the queue (one received while lease renewals fail, see
/// within). `Ok(Some)`: the ledger's error, the bundle
/// hidden to come back; `Err`: the worker is to stop.
async fn dispatch<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    delivery: Delivery,
    to: &async_channel::Sender<WorkUnit>,
    results: &async_channel::Sender<PoolEvent>,
    shutdown: &Shutdown,
) -> Result<Option<String>, StopReason>
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    // Lease renewals began to fail while this receive waited (past the
    // fetcher's check of them): no claim until a round succeeds. A message
    // with a receipt comes back later, as one whose claim failed: made
    // visible at once, each flip of a throttled ledger's renewals would cost
    // it a receive, and a few its way to the dead-letter queue unrun. One
    // from an in-process queue has nowhere else to go, and waits.
    if *ctx.renewals_failing.borrow() && !shutdown.stop.is_cancelled() {
        if delivery.receipt.is_some() {
            ctx.room.add_permits(1);
            hide_unclaimed(ctx, delivery.receipt.as_ref(), delivery.receive_count).await;
            return Ok(None);
        }
        let mut renewals = ctx.renewals_failing.subscribe();
        tokio::select! {
            _ = shutdown.stop.cancelled() => {},
            _ = renewals.wait_for(|failing| !failing) => {},
        }
    }
    if shutdown.stop.is_cancelled() {
        ctx.room.add_permits(1);
        if let Some(receipt) = &delivery.receipt {
            let _ = ctx.queue.release(receipt).await;
        }
        return Ok(None);
    }
    match admit(ctx, delivery).await {
        Admitted::Run(unit) => to.send(unit).await.map_err(|_| StopReason::Shutdown)?,
        Admitted::GiveUp(unit, failed) => PoolEvent::report(unit, failed, results)
            .await
            .map_err(|_| StopReason::Shutdown)?,
        Admitted::Skip => ctx.room.add_permits(1),
        Admitted::LedgerDown(error) => {
            ctx.room.add_permits(1);
            return Ok(Some(error));
        }
    }
    Ok(None)
}

/// Hides a message whose bundle could not be claimed (the ledger is
/// unreachable) for longer the more often it was received, so that an outage
/// of minutes does not use up the queue's `maxReceives`.
async fn hide_unclaimed<Q, L, R>(ctx: &Ctx<Q, L, R>, receipt: Option<&Receipt>, receive_count: u32)
where
    Q: TaskQueue,
{
    WorkerStats::add(&ctx.stats.backend_errors, 1);
    if let Some(receipt) = receipt {
        let _ = ctx
            .queue
            .extend(receipt, claim_retry_delay(receive_count))
            .await;
    }
}

enum Admitted {
    Run(WorkUnit),
    /// Claimed too often: report the tasks failed without running them.
    GiveUp(Arc<UnitRun>, Vec<TaskResult>),
    Skip,
    /// The ledger did not answer (its error): the message is hidden for a
    /// while, and the rest of this receive too, without trying.
    LedgerDown(String),
}

async fn admit<Q, L, R>(ctx: &Ctx<Q, L, R>, delivery: Delivery) -> Admitted
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let Delivery {
        mut bundle,
        receipt,
        receive_count,
        priority: _,
    } = delivery;

    let key = claim_key(&bundle);
    let Some(reply_to) = bundle.reply_to.clone() else {
        // Nowhere to report results: running it would be work nobody sees.
        tracing::warn!(key, "bundle without a response queue; dropping it");
        if let Some(receipt) = receipt {
            let _ = ctx.queue.ack(vec![receipt]).await;
        }
        return Admitted::Skip;
    };
    if bundle.options.dedup != Some(false) && ctx.inflight.holds(&key) {
        // Held here already: a duplicate delivery, or one after another worker
        // took the bundle over from this one and gave it back while a task of
        // it still runs here. One claim per bundle here: this worker keeps
        // its bundles by key, and a second claim's records would be taken
        // for the first's. It is parked on the first, and made visible once
        // that one ends, for whichever worker. (At-least-once batches run
        // every delivery.)
        WorkerStats::add(&ctx.stats.duplicates, 1);
        if let Some(receipt) = receipt {
            let hide = if ctx.inflight.park(&key, receipt.clone()) {
                ctx.config.visibility
            } else {
                // Let go meanwhile: back soon.
                claim_retry_delay(receive_count)
            };
            let _ = ctx.queue.extend(&receipt, hide).await;
        }
        return Admitted::Skip;
    }
    let cancelled = match (&ctx.ledger, bundle.tasks.first().map(|t| t.batch.clone())) {
        (Some(ledger), Some(batch)) => {
            match is_cancelled(ctx, ledger.as_ref(), batch.as_str()).await {
                Ok(c) => c,
                Err(e) if bundle.options.dedup != Some(false) => {
                    // The claim would fail too.
                    tracing::warn!(key, "ledger unreachable; the bundle comes back later");
                    hide_unclaimed(ctx, receipt.as_ref(), receive_count).await;
                    return Admitted::LedgerDown(e);
                }
                // Running a cancelled task is the lesser harm.
                Err(_) => false,
            }
        }
        _ => false,
    };
    if cancelled {
        tracing::info!(key, "batch cancelled: bundle deleted without running");
        WorkerStats::add(&ctx.stats.cancelled, 1);
        if let Some(receipt) = receipt {
            let _ = ctx.queue.ack(vec![receipt]).await;
        }
        return Admitted::Skip;
    }
    let mut attempt = 1;
    let mut done = BundleProgress::new();
    let owner = ctx.claim_owner();
    // A batch that asked for at-least-once (`dedup: false`) skips the ledger.
    let ledger = ctx
        .ledger
        .as_ref()
        .filter(|_| bundle.options.dedup != Some(false));
    if let Some(ledger) = ledger {
        let claimed = claim_within(ledger, &key, &owner, ctx.config.lease).await;
        match claimed {
            Err(e) => {
                // Not claimed, so not run: let the message come back soon rather
                // than after a whole visibility timeout.
                let delay = claim_retry_delay(receive_count);
                tracing::warn!(key, error = %e, retry_in = ?delay, "claim failed; the bundle comes back later");
                hide_unclaimed(ctx, receipt.as_ref(), receive_count).await;
                return Admitted::LedgerDown(e.to_string());
            }
            Ok(Claim::Held { remaining }) => {
                WorkerStats::add(&ctx.stats.duplicates, 1);
                if let Some(receipt) = &receipt {
                    let hide = remaining + Duration::from_secs(1);
                    let _ = ctx.queue.extend(receipt, hide).await;
                }
                return Admitted::Skip;
            }
            Ok(Claim::Done { results }) => {
                WorkerStats::add(&ctx.stats.duplicates, 1);
                // Results are sent before completion; older workers stored
                // them in the ledger instead, to be sent again here.
                let resent = if results.is_empty() {
                    true
                } else {
                    let body = String::from_utf8_lossy(&results).into_owned();
                    let sent = ctx.router.send_results(&reply_to, vec![body]).await;
                    WorkerStats::add(&ctx.stats.resent, u64::from(sent.is_ok()));
                    sent.is_ok()
                };
                if resent && let Some(receipt) = receipt {
                    let _ = ctx.queue.ack(vec![receipt]).await;
                }
                return Admitted::Skip;
            }
            Ok(Claim::Granted {
                attempt: a,
                done: d,
            }) => {
                attempt = a;
                done = d;
            }
        }
    }
    WorkerStats::add(&ctx.stats.bundles, 1);
    if attempt > 1 {
        WorkerStats::add(&ctx.stats.taken_over, 1);
        tracing::info!(
            key,
            attempt,
            "taking over a bundle whose worker stopped heartbeating"
        );
    }
    for task in &mut bundle.tasks {
        task.attempt = task.attempt.max(attempt);
    }
    // Only what earlier holders did not finish and report.
    let bundle_len = bundle.tasks.len();
    let mut positions = Vec::new();
    if !done.is_empty() {
        let all = std::mem::take(&mut bundle.tasks);
        for (position, task) in all.into_iter().enumerate() {
            if !done.contains(position) {
                positions.push(position as u32);
                bundle.tasks.push(task);
            }
        }
        let skipped = bundle_len - bundle.tasks.len();
        WorkerStats::add(&ctx.stats.tasks_skipped, skipped as u64);
        tracing::info!(
            key,
            skipped,
            left = bundle.tasks.len(),
            "resuming a bundle from its last recorded progress"
        );
    }
    let claim_owner = ledger.map(|_| owner);
    let control = UnitControl::new(bundle.tasks.len());
    ctx.inflight.insert(
        key.clone(),
        receipt.clone(),
        claim_owner.clone(),
        done,
        control.clone(),
    );
    ctx.inflight.add_tasks(bundle.tasks.len());
    let ticket = Ticket {
        receipt,
        claim_key: Some(key),
        claim_owner,
        reply_to: Some(reply_to),
        positions,
    };
    let unit = WorkUnit {
        submitted: bundle.submitted,
        options: bundle.options,
        tasks: bundle.tasks,
        ticket: Some(ticket),
        control,
    };
    if attempt > ctx.config.max_claims {
        WorkerStats::add(&ctx.stats.given_up, 1);
        let failed = give_up(&unit.tasks, unit.submitted, attempt, &ctx.owner);
        return Admitted::GiveUp(UnitRun::new(&unit), failed);
    }
    Admitted::Run(unit)
}

/// Whether a batch was cancelled, from the cache or the ledger; `Err`: the
/// ledger did not answer (within [`ADMIT_LEDGER_LIMIT`]), and why.
async fn is_cancelled<Q, L, R>(ctx: &Ctx<Q, L, R>, ledger: &L, batch: &str) -> Result<bool, String>
where
    L: DedupLedger,
{
    if let Some((cancelled, at)) = cached_cancel(ctx, batch)
        && (cancelled || at.elapsed() < ctx.config.cancel_check)
    {
        return Ok(cancelled);
    }
    ask_cancelled(ctx, ledger, batch).await
}

/// Whether a batch was cancelled, asked of the ledger afresh (and cached,
/// its lane mark noted: [`note_lane_mark`]); `Err`: it did not answer
/// within [`ADMIT_LEDGER_LIMIT`], and why.
pub(super) async fn ask_cancelled<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    ledger: &L,
    batch: &str,
) -> Result<bool, String>
where
    L: DedupLedger,
{
    let marks = match tokio::time::timeout(ADMIT_LEDGER_LIMIT, ledger.batch_marks(batch)).await {
        Ok(Ok(marks)) => marks,
        Ok(Err(e)) => {
            tracing::debug!(batch, error = %e, "cannot check for cancellation");
            return Err(e.to_string());
        }
        Err(_) => {
            tracing::debug!(batch, "no answer from the ledger on cancellation");
            return Err(format!(
                "the ledger gave no answer within {ADMIT_LEDGER_LIMIT:?} (cancel check)"
            ));
        }
    };
    Ok(remember_marks(ctx, batch, marks))
}

/// Caches a fresh answer on `batch`'s marks, from a bundle's admission or
/// `cancels::watch`, and notes its lane mark; whether it was cancelled.
pub fn remember_marks<Q, L, R>(ctx: &Ctx<Q, L, R>, batch: &str, marks: BatchMarks) -> bool {
    remember_cancelled(ctx, batch, marks.cancelled);
    note_lane_mark(ctx, batch, marks.lane_at);
    marks.cancelled
}

/// What tells whether this receive looks at the priority lane first.
fn lane_sight<Q, L, R>(ctx: &Ctx<Q, L, R>) -> LaneSight
where
    L: DedupLedger,
{
    let now_ms = Timestamp::now().0 / 1000;
    LaneSight {
        marks_read: ctx.ledger.as_ref().is_some_and(|l| l.reads_lane_marks()),
        check_every: ctx.config.cancel_check,
        watching: !ctx.inflight.batches_to_watch().is_empty(),
        fresh_mark: ctx
            .lane_marks
            .lock()
            .expect("lane marks")
            .values()
            .any(|&at| lane_mark_fresh(at, now_ms)),
    }
}

/// Wakes the fetcher to look at the priority lane when `batch`'s lane mark
/// is new (`lane_nudged`).
fn note_lane_mark<Q, L, R>(ctx: &Ctx<Q, L, R>, batch: &str, at: Option<u64>) {
    let Some(at) = at else { return };
    let mut seen = ctx.lane_marks.lock().expect("lane marks");
    let now_ms = Timestamp::now().0 / 1000;
    if lane_nudged(seen.get(batch).copied(), Some(at), now_ms) {
        tracing::debug!(batch, "the priority lane got bundles: looking at it");
        ctx.lane_nudge.notify_one();
    }
    if seen.len() > super::REMEMBERED_BATCHES {
        seen.clear();
    }
    seen.insert(batch.to_string(), at);
}

/// The cached cancel answer on `batch` and when it was given, from a
/// bundle's admission or `cancels::watch`.
pub fn cached_cancel<Q, L, R>(ctx: &Ctx<Q, L, R>, batch: &str) -> Option<(bool, Instant)> {
    ctx.cancelled
        .lock()
        .expect("cancel cache")
        .get(batch)
        .copied()
}

/// Caches a batch's cancel answer for `cancel_check` (a cancel
/// for good).
fn remember_cancelled<Q, L, R>(ctx: &Ctx<Q, L, R>, batch: &str, cancelled: bool) {
    let mut cache = ctx.cancelled.lock().expect("cancel cache");
    if cache.len() > super::REMEMBERED_BATCHES {
        cache.clear();
    }
    cache.insert(batch.to_string(), (cancelled, std::time::Instant::now()));
}

fn give_up(
    tasks: &[cloudkon_core::Task],
    submitted: Timestamp,
    attempt: u32,
    owner: &str,
) -> Vec<TaskResult> {
    let now = Timestamp::now();
    let worker: std::sync::Arc<str> = owner.into();
    let reason = format!(
        "gave up: claimed {attempt} times, and the previous {} workers stopped before finishing it",
        attempt - 1
    );
    tasks
        .iter()
        .map(|task| {
            TaskResult::not_run(
                task,
                attempt,
                reason.clone(),
                worker.clone(),
                submitted,
                now,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gives_up_receiving_only_past_its_limit_and_holding_nothing() {
        let s = Duration::from_secs;
        assert!(!gives_up(None, s(3600), 0), "no limit: for ever");
        assert!(!gives_up(Some(s(120)), s(119), 0));
        assert!(gives_up(Some(s(120)), s(120), 0));
        assert!(!gives_up(Some(s(120)), s(600), 1), "its bundles first");
    }

    #[test]
    fn failed_claims_back_off_past_a_minute_long_outage() {
        let delays: Vec<u64> = (1..=6).map(|n| claim_retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![2, 6, 18, 54, 162, 300]);
        // Four failed claims (the fifth receive is the last before the DLQ at
        // maxReceives 5) span 80 s of outage.
        assert_eq!(delays[..4].iter().sum::<u64>(), 80);
        assert_eq!(claim_retry_delay(0).as_secs(), 2);
        assert_eq!(claim_retry_delay(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn bundles_wanted_brings_the_tasks_held_up_to_the_hold() {
        // (hold, tasks held, average bundle, room) -> bundles.
        let cases = [
            ((8, 0, Some(1.0), 12), 8),
            ((8, 0, Some(1.0), 5), 5),
            ((8, 0, Some(1.0), 40), 8),
            ((16, 0, Some(1.0), 40), 10),
            ((8, 6, Some(1.0), 12), 2),
            ((8, 0, Some(100.0), 12), 1),
            ((8, 8, Some(1.0), 12), 1),
            ((8, 0, Some(3.0), 12), 3),
            ((8, 0, Some(0.0), 12), 8),
            // Nothing seen yet: one, whatever its size turns out to be.
            ((16, 0, None, 12), 1),
            // Ten-minute tasks on 8 slots hold 9: one bundle at a time.
            ((9, 8, Some(1.0), 12), 1),
        ];
        for ((hold, held, avg, room), want) in cases {
            assert_eq!(
                bundles_wanted(hold, held, avg, room),
                want,
                "hold {hold}, {held} held, {avg:?} per bundle, room {room}"
            );
        }
    }

    #[test]
    fn the_declared_length_of_a_bundle_is_its_tasks_mean() {
        let sleeps = [TaskSpec::Sleep { ms: 1_000 }, TaskSpec::Sleep { ms: 3_000 }];
        assert_eq!(declared_length(sleeps.iter()), Some(Duration::from_secs(2)));
        let run = TaskSpec::Run {
            program: "true".into(),
            args: vec![],
            expected_ms: None,
        };
        assert_eq!(declared_length([run.clone()].iter()), None);
        let mixed = [run, TaskSpec::Sleep { ms: 500 }];
        assert_eq!(
            declared_length(mixed.iter()),
            Some(Duration::from_millis(500))
        );
        // A run that says how long it takes counts as a sleep of that.
        let expected = TaskSpec::Run {
            program: "render".into(),
            args: vec![],
            expected_ms: Some(600_000),
        };
        assert_eq!(
            declared_length([expected, TaskSpec::Sleep { ms: 0 }].iter()),
            Some(Duration::from_secs(300))
        );
    }
}
