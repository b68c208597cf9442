//! Finishing bundles. Results leave as tasks finish, batched (see
//! [`results_wait`]):
//! sent to their response queue, then counted in the bundle's progress (which
//! the heartbeats write to the ledger). When a bundle's last result is sent,
//! its claim is completed and only then its message deleted — so a message is
//! never deleted with results unsent, and a worker that dies re-runs only what
//! it had not reported by its last heartbeat. Each response queue is tried
//! once per flush and at its own backoff ([`super::outbox`]), so that one
//! batch's missing or refusing queue never holds back the others' results.
//! Also the heartbeats themselves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::aws::StatsSnapshot;
use cloudkon_core::ledger::{DedupLedger, LedgerError};
use cloudkon_core::queue::{QueueError, Receipt, ResultRouter, TaskQueue};
use cloudkon_core::wire::{ResultsMessage, SQS_MAX_MESSAGE_BYTES, encode_results_split};
use cloudkon_core::{TaskResult, Usage};
use tokio_util::sync::CancellationToken;

use super::outbox::{Failing, Outbox};
use super::retry::until_ok;
use super::{Ctx, StopReason, Unable, WorkerStats};
use crate::pool::{PoolEvent, Ticket, UnitRun};

/// Results gathered that leave at once, whatever the linger: about a full
/// SendMessageBatch of short results.
pub const RESULTS_PER_SEND: usize = 1_000;

/// The longest `--results-linger` the worker takes (a longer one is cut to
/// it): results that wait longer are lost with a crashed worker and hold the
/// batch's meter.
pub const MAX_RESULTS_LINGER: Duration = Duration::from_secs(10);

/// How much longer the results gathered for `waited` wait for company:
/// zero when they leave now. Each send is an SQS request (and a message the
/// operator receives and deletes), so results wait up to the `linger` for
/// others; but a bundle whose every task ended leaves at once (its
/// completion, the delete of its message and the room for the next wait on
/// its results, and the operator counts its tasks in flight until they
/// arrive), and so does a send's worth ([`RESULTS_PER_SEND`]).
pub fn results_wait(
    waited: Duration,
    gathered: usize,
    bundle_ended: bool,
    linger: Duration,
) -> Duration {
    if bundle_ended || gathered >= RESULTS_PER_SEND {
        Duration::ZERO
    } else {
        linger.saturating_sub(waited)
    }
}

/// A held bundle's results not yet sent, and how it ended.
struct Pending {
    unit: Arc<UnitRun>,
    unsent: Vec<(usize, TaskResult)>,
    ideal: Duration,
    /// `Some(complete)` once every task ended.
    end: Option<bool>,
    /// Results received for it so far.
    seen: usize,
    /// Its share of the worker's usage from sends that failed: it travels
    /// with its next results.
    carried: Usage,
}

pub async fn run<Q, L, R>(
    ctx: Arc<Ctx<Q, L, R>>,
    events: async_channel::Receiver<PoolEvent>,
    abort: CancellationToken,
) where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut meter = Meter::new(&ctx.stats);
    let mut outbox = Outbox::default();
    loop {
        // Results, or a failing queue's next try, whichever comes first.
        let first = match outbox.next_retry() {
            Some(at) => match tokio::time::timeout_at(at, events.recv()).await {
                Ok(Ok(event)) => Some(event),
                Ok(Err(_)) => break,
                Err(_) => None,
            },
            None => match events.recv().await {
                Ok(event) => Some(event),
                Err(_) => break,
            },
        };
        if let Some(first) = first {
            let started = tokio::time::Instant::now();
            let (mut gathered, mut ended) = absorb(&ctx, &mut pending, first);
            loop {
                let wait = results_wait(started.elapsed(), gathered, ended, ctx.config.linger);
                if wait.is_zero() {
                    break;
                }
                match tokio::time::timeout(wait, events.recv()).await {
                    Ok(Ok(event)) => {
                        let (n, end) = absorb(&ctx, &mut pending, event);
                        gathered += n;
                        ended |= end;
                    }
                    _ => break,
                }
            }
        }
        flush(&ctx, &mut pending, &mut meter, &mut outbox, &abort).await;
    }
    // The pool has stopped. Results still waiting on a failing queue are
    // tried until sent, dropped or given back, unless aborted.
    while let Some(at) = outbox.next_retry() {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = abort.cancelled() => break,
        }
        flush(&ctx, &mut pending, &mut meter, &mut outbox, &abort).await;
    }
    // What is left could not be sent (abort). Never delete those messages;
    // give the bundles back with what was reported.
    for (_, p) in pending.drain() {
        if let Some(ticket) = &p.unit.ticket {
            give_back(&ctx, ticket, false).await;
        }
    }
}

/// Takes an event into `pending`; returns how many results it brought, and
/// whether it ended a bundle.
fn absorb<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    pending: &mut HashMap<String, Pending>,
    event: PoolEvent,
) -> (usize, bool) {
    let (unit, results, ideal, end) = match event {
        PoolEvent::Results {
            unit,
            results,
            ideal,
        } => (unit, results, ideal, None),
        PoolEvent::UnitEnd { unit, complete } => (unit, Vec::new(), Duration::ZERO, Some(complete)),
    };
    let Some(key) = unit.ticket.as_ref().and_then(|t| t.claim_key.clone()) else {
        return (0, false);
    };
    let n = results.len();
    ctx.inflight.observe(
        results
            .iter()
            .filter(|(_, r)| r.finished > r.started)
            .map(|(_, r)| r.finished.since(r.started)),
    );
    let entry = pending.entry(key).or_insert_with(|| Pending {
        unit,
        unsent: Vec::new(),
        ideal: Duration::ZERO,
        end: None,
        seen: 0,
        carried: Usage::default(),
    });
    entry.unsent.extend(results);
    entry.ideal += ideal;
    entry.seen += n;
    ctx.inflight.finish_tasks(n);
    if let Some(complete) = end {
        entry.end = Some(complete);
        // Abandoned or never started: no longer held either.
        ctx.inflight
            .finish_tasks(entry.unit.total.saturating_sub(entry.seen));
        // Its tasks are over: room for another bundle now, not after its
        // results' linger and deletion (a tail of one-task bundles would
        // otherwise go at a few per linger).
        ctx.room.add_permits(1);
    }
    ctx.tasks_done.notify_one();
    (n, end.is_some())
}

/// The worker's AWS requests and time since the results last sent: what the
/// next results carry, split between their bundles by their tasks' run time.
/// A request serves many batches at once (a receive, a delete of many
/// messages), and the time between results is the workers' whoever it was
/// for: charging it to the results that follow keeps the sum over batches
/// equal to what the worker spent, which a per-call attribution would not.
struct Meter {
    last: StatsSnapshot,
    at: std::time::Instant,
}

impl Meter {
    fn new(stats: &WorkerStats) -> Self {
        Self {
            last: stats
                .requests
                .as_ref()
                .map(|r| r.snapshot())
                .unwrap_or_default(),
            at: std::time::Instant::now(),
        }
    }

    /// What was spent since the last call.
    fn take(&mut self, stats: &WorkerStats) -> Usage {
        let now = std::time::Instant::now();
        let mut usage = match &stats.requests {
            Some(requests) => {
                let snapshot = requests.snapshot();
                let usage = snapshot.since(&self.last).usage();
                self.last = snapshot;
                usage
            }
            None => Usage::default(),
        };
        usage.worker_seconds = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        usage
    }
}

/// A bundle's weight in the split of a flush's usage: its results' run time
/// (a millisecond at least each, so that instant tasks still count).
fn run_seconds(results: &[TaskResult]) -> f64 {
    results
        .iter()
        .map(|r| (r.finished.0.saturating_sub(r.started.0).max(1_000)) as f64 / 1e6)
        .sum()
}

/// Sends what each held bundle has unsent (one try per response queue that
/// is due), then completes the bundles whose every task ended and whose
/// results are all out, and gives back those whose queue refuses them.
async fn flush<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    pending: &mut HashMap<String, Pending>,
    meter: &mut Meter,
    outbox: &mut Outbox,
    abort: &CancellationToken,
) where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let now = tokio::time::Instant::now();
    let mut messages: Vec<(String, ResultsMessage)> = Vec::new();
    for (key, p) in pending.iter_mut() {
        if p.unsent.is_empty() {
            continue;
        }
        let Some(reply_to) = p.unit.ticket.as_ref().and_then(|t| t.reply_to.clone()) else {
            continue;
        };
        if !outbox.due(&reply_to, now) {
            continue;
        }
        messages.push((
            reply_to,
            ResultsMessage {
                key: key.clone(),
                ideal: std::mem::take(&mut p.ideal),
                results: p.unsent.iter().map(|(_, r)| r.clone()).collect(),
                usage: std::mem::take(&mut p.carried),
            },
        ));
    }
    if !messages.is_empty() {
        let weights: Vec<f64> = messages
            .iter()
            .map(|(_, m)| run_seconds(&m.results))
            .collect();
        let shares = meter.take(&ctx.stats).split(&weights);
        for ((_, m), share) in messages.iter_mut().zip(shares) {
            m.usage.add(&share);
        }
    }
    // One send per response queue, each bundle's results in as few messages
    // as fit.
    let mut sends: HashMap<String, (Vec<String>, Vec<Taken>)> = HashMap::new();
    for (reply_to, message) in messages {
        let key = message.key.clone();
        match encode_results_split(&message, SQS_MAX_MESSAGE_BYTES) {
            Ok(bodies) => {
                let (all, taken) = sends.entry(reply_to).or_default();
                all.extend(bodies);
                taken.push(Taken {
                    key,
                    ideal: message.ideal,
                    usage: message.usage,
                });
            }
            Err(e) => {
                // Cannot happen (a result alone is cut to fit, or replaced by
                // a small failure saying it was too large); if it does, the
                // results stay unsent and the bundle is given back, not lost.
                tracing::error!(key, error = %e, "cannot encode results");
                if let Some(p) = pending.get_mut(&key) {
                    p.end = Some(false);
                }
            }
        }
    }
    // Queues that refuse results while others take them: their ended
    // bundles go back below.
    let mut refused = std::collections::HashSet::new();
    for (reply_to, (bodies, taken)) in sends {
        // One response queue per batch: its keys' batch.
        let batch = taken
            .first()
            .and_then(|t| super::inflight::batch_of(&t.key))
            .map(str::to_string);
        let asked = tokio::time::Instant::now();
        let count = bodies.len();
        let error = match ctx.router.send_results(&reply_to, bodies).await {
            Ok(()) => {
                outbox.sent(&reply_to, tokio::time::Instant::now());
                let mut usage = Usage::default();
                for t in &taken {
                    usage.add(&t.usage);
                }
                ctx.stats.charged.lock().expect("charged lock").add(&usage);
                mark_sent(ctx, pending, &taken);
                continue;
            }
            Err(e) => e,
        };
        match error {
            QueueError::NotFound(e)
                if outbox.missing(&reply_to, asked, ctx.config.response_queue_return)
                    && !batch_ended(ctx, batch.as_deref()).await =>
            {
                // Deleted under a running batch: its runner makes it again.
                tracing::warn!(reply_to, error = %e, "response queue not found, its batch not cancelled: sending again until it is made again");
            }
            QueueError::NotFound(e) => {
                // Its batch was deleted or cancelled: nobody will read these
                // results, so they are dropped.
                WorkerStats::add(&ctx.stats.results_dropped, count as u64);
                outbox.forget(&reply_to);
                // Once per queue: its batch's remaining bundles all end here.
                let first = {
                    let mut gone = ctx.gone.lock().expect("gone lock");
                    if gone.len() > super::REMEMBERED_BATCHES {
                        gone.clear();
                    }
                    gone.insert(reply_to.to_string())
                };
                if first {
                    tracing::warn!(reply_to, error = %e, "response queue gone, its batch deleted or cancelled (or not made again in time): its results are dropped");
                }
                mark_sent(ctx, pending, &taken);
                continue;
            }
            e => {
                WorkerStats::add(&ctx.stats.backend_errors, 1);
                match outbox.failed(
                    &reply_to,
                    asked,
                    ctx.config.give_up_after,
                    super::RESPONSE_QUEUE_RETURN,
                ) {
                    Failing::Retry => {
                        tracing::warn!(reply_to, error = %e, "sending results failed; retrying");
                    }
                    Failing::GiveBack => {
                        tracing::warn!(reply_to, error = %e, "this response queue has refused results for the give-up period while other batches' were sent: giving its batch's ended bundles back");
                        refused.insert(reply_to.clone());
                    }
                    Failing::GiveUp { failing_for } => give_up(
                        ctx,
                        StopReason::GaveUp {
                            unable: Unable::SendResults,
                            failing_for,
                            error: e.to_string(),
                        },
                    ),
                }
            }
        }
        // Not sent: the results stay unsent, with their share of `ideal`
        // and usage, for the next try.
        for t in taken {
            if let Some(p) = pending.get_mut(&t.key) {
                p.ideal += t.ideal;
                p.carried.add(&t.usage);
            }
        }
    }
    // Bundles whose every task ended and whose results are all out, or
    // whose queue refuses them.
    let ended: Vec<String> = pending
        .iter()
        .filter(|(_, p)| {
            p.end.is_some()
                && (p.unsent.is_empty()
                    || p.unit
                        .ticket
                        .as_ref()
                        .and_then(|t| t.reply_to.as_ref())
                        .is_some_and(|q| refused.contains(q)))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let mut receipts = Vec::new();
    let mut finished = Vec::new();
    for key in ended {
        let p = pending.remove(&key).expect("listed above");
        let ticket = p.unit.ticket.as_ref().expect("pending units have tickets");
        if ctx.inflight.lost(&key) {
            // Taken over (see `renew_leases`): what ran here was sent, and
            // the claim and the message are the new holder's to finish.
            let_go(ctx, &key).await;
            continue;
        }
        if p.end != Some(true) || !p.unsent.is_empty() {
            give_back(ctx, ticket, false).await;
            continue;
        }
        if let (Some(ledger), Some(owner)) = (&ctx.ledger, &ticket.claim_owner) {
            let recorded = until_ok(
                "recording a completion",
                abort,
                &ctx.stats.backend_errors,
                || ledger.complete(&key, owner, Vec::new()),
            )
            .await;
            match recorded {
                Some(true) => {}
                Some(false) => {
                    // Lost the lease (a slow heartbeat): the new holder
                    // finishes it; our results were sent and count once.
                    WorkerStats::add(&ctx.stats.leases_lost, 1);
                    tracing::warn!(
                        key,
                        "completion not recorded: another worker holds the bundle"
                    );
                    let_go(ctx, &key).await;
                    continue;
                }
                None => {
                    give_back(ctx, ticket, false).await;
                    continue;
                }
            }
        }
        ctx.inflight.completed(&key);
        receipts.extend(ticket.receipt.clone());
        finished.push(key);
    }
    if !receipts.is_empty() {
        // Completed in the ledger already: if this never succeeds, the next
        // delivery finds the bundle done and deletes it then. So a queue
        // gone or a receipt refused for good is not asked again: retried,
        // it held this loop, and with it every result and room, for good.
        until_ok(
            "deleting finished messages",
            abort,
            &ctx.stats.backend_errors,
            || async {
                match ctx.queue.ack(receipts.clone()).await {
                    Err(QueueError::NotFound(e) | QueueError::Refused(e)) => {
                        tracing::warn!(error = %e, "finished messages not deleted: their next delivery finds them done");
                        Ok(())
                    }
                    other => other,
                }
            },
        )
        .await;
    }
    for key in &finished {
        let_go(ctx, key).await;
    }
    // A queue's failures count while results wait on it.
    let waiting: std::collections::HashSet<&str> = pending
        .values()
        .filter(|p| !p.unsent.is_empty())
        .filter_map(|p| p.unit.ticket.as_ref()?.reply_to.as_deref())
        .collect();
    outbox.retain(|q| waiting.contains(q));
}

/// A bundle's part of one send: what goes back to it if the send fails.
struct Taken {
    key: String,
    ideal: Duration,
    usage: Usage,
}

/// The bundles' results went out (or were dropped with their deleted
/// batch): counted, and recorded in their progress.
fn mark_sent<Q, L, R>(ctx: &Ctx<Q, L, R>, pending: &mut HashMap<String, Pending>, taken: &[Taken]) {
    for t in taken {
        let Some(p) = pending.get_mut(&t.key) else {
            continue;
        };
        let ticket = p.unit.ticket.as_ref().expect("pending units have tickets");
        let failed = p
            .unsent
            .iter()
            .filter(|(_, r)| !r.outcome.is_success())
            .count();
        WorkerStats::add(&ctx.stats.tasks_succeeded, (p.unsent.len() - failed) as u64);
        WorkerStats::add(&ctx.stats.tasks_failed, failed as u64);
        ctx.inflight
            .sent(&t.key, p.unsent.drain(..).map(|(i, _)| ticket.position(i)));
    }
}

/// Whether `batch` was cancelled or deleted (marked in the ledger): its
/// results have nowhere to go. A cancel cached is for good; otherwise asked
/// afresh, not from the admission cache, which may predate the deletion's
/// mark by `cancel_check`. Without a ledger (no dedup) or a batch, taken as
/// ended, as a missing response queue always was; a ledger that does not
/// answer within [`ENDED_ASK_LIMIT`], as not (asked again at the queue's
/// next try).
async fn batch_ended<Q, L, R>(ctx: &Ctx<Q, L, R>, batch: Option<&str>) -> bool
where
    L: DedupLedger,
{
    let (Some(ledger), Some(batch)) = (&ctx.ledger, batch) else {
        return true;
    };
    if super::fetch::cached_cancel(ctx, batch).is_some_and(|(cancelled, _)| cancelled) {
        return true;
    }
    let asked = super::fetch::ask_cancelled(ctx, ledger.as_ref(), batch);
    matches!(
        tokio::time::timeout(ENDED_ASK_LIMIT, asked).await,
        Ok(Ok(true))
    )
}

/// How long the completer's round waits for [`batch_ended`]'s answer: the
/// other batches' results wait with it.
const ENDED_ASK_LIMIT: Duration = Duration::from_secs(1);

/// Stops the worker for `reason`: no more receives, running tasks abandoned,
/// and every held bundle given back with what was reported (the completer's
/// end), for a worker that can finish it.
fn give_up<Q, L, R>(ctx: &Ctx<Q, L, R>, reason: StopReason) {
    tracing::error!(?reason, "giving up: stopping and giving every bundle back");
    ctx.gave_up
        .lock()
        .expect("gave_up lock")
        .get_or_insert(reason);
    ctx.shutdown.stop.cancel();
    ctx.shutdown.abort.cancel();
}

/// Lets a bundle go: the deliveries of it parked meanwhile (see
/// [`super::inflight::InFlight::park`]) are made visible, for any worker.
async fn let_go<Q, L, R>(ctx: &Ctx<Q, L, R>, key: &str)
where
    Q: TaskQueue,
{
    make_visible(ctx, key, ctx.inflight.remove(key)).await;
}

/// Makes the bundle `key`'s messages `receipts` visible again, after a round
/// of extensions under way, which may hold them and would hide them again
/// (a bundle let go is in no later round).
async fn make_visible<Q, L, R>(ctx: &Ctx<Q, L, R>, key: &str, receipts: Vec<Receipt>)
where
    Q: TaskQueue,
{
    if receipts.is_empty() {
        return;
    }
    let _round = ctx.visibility_round.lock().await;
    for receipt in receipts {
        if let Err(e) = ctx.queue.release(&receipt).await {
            tracing::warn!(key, error = %e, "could not make a message visible again; it returns after its visibility timeout");
        }
    }
}

/// Gives an unfinished bundle back with its progress: the claim released and
/// the message visible again, so that another worker takes it at once and runs
/// only what was not reported here. `return_room`: the bundle never reached
/// the pool (whose end of a unit returns its room otherwise).
pub async fn give_back<Q, L, R>(ctx: &Ctx<Q, L, R>, ticket: &Ticket, return_room: bool)
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let Some(key) = &ticket.claim_key else {
        return;
    };
    if ctx.inflight.lost(key) {
        // Another worker took it over: its claim and its message are that
        // worker's, and releasing them would hand the bundle to a third.
        let_go(ctx, key).await;
        if return_room {
            ctx.room.add_permits(1);
        }
        return;
    }
    let progress = ctx.inflight.progress(key);
    // No renewal of it from here on (a round under way passes over it).
    ctx.inflight.completed(key);
    if let (Some(ledger), Some(owner)) = (&ctx.ledger, &ticket.claim_owner)
        && let Err(e) = ledger.release(key, owner, &progress).await
    {
        tracing::warn!(key, error = %e, "could not release the claim; it expires with its lease");
    }
    // Its message, and any later delivery parked on it.
    let mut receipts = ctx.inflight.remove(key);
    receipts.extend(ticket.receipt.clone());
    make_visible(ctx, key, receipts).await;
    WorkerStats::add(&ctx.stats.released, 1);
    if return_room {
        ctx.room.add_permits(1);
    }
}

/// How often a worker renews its leases and visibilities: a third of the
/// shorter (at least 100 ms), so that one late or failed renewal does not
/// lose a bundle. The simulator calls this too.
pub fn renew_every(lease: Duration, visibility: Duration) -> Duration {
    (lease.min(visibility) / 3).max(Duration::from_millis(100))
}

/// Lease renewals under way at once: a slow or throttled ledger's calls
/// overlap, so that a round over many bundles still ends well within its
/// period, without a burst of one write per bundle held.
pub(super) const RENEWALS_AT_ONCE: usize = 8;

/// Heartbeats: every [`renew_every`], extends the message visibility of
/// each bundle held, then its lease (recording its progress). The
/// visibilities go first and all at once: a ledger that does not answer
/// (each call then takes the SDK's timeouts and retries) must not let a
/// held message become visible, be received elsewhere and use up a receive
/// of its `maxReceives`. Rounds of lease renewals start at a fixed cadence
/// (see [`renew_round`]); after a failed or late one, the next comes at a
/// quarter of the period, and the fetcher claims nothing new until a round
/// succeeds in time.
pub async fn renew_leases<Q, L, R>(ctx: Arc<Ctx<Q, L, R>>, done: CancellationToken)
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let every = renew_every(ctx.config.lease, ctx.config.visibility);
    let (visibility_done, ledger_done) = (done.clone(), done);
    let visibility = async {
        loop {
            tokio::select! {
                _ = visibility_done.cancelled() => return,
                _ = tokio::time::sleep(every) => {},
            }
            // Until its extensions land: see `visibility_round`.
            let _round = ctx.visibility_round.lock().await;
            let mut held: Vec<(String, Receipt)> = ctx
                .inflight
                .snapshot()
                .into_iter()
                .filter_map(|h| Some((h.key, h.receipt?)))
                .collect();
            held.extend(ctx.inflight.parked());
            if held.is_empty() {
                continue;
            }
            // All in one go (SQS: 10 a request). A failure there is usually
            // a bundle completed meanwhile, its message deleted: the others
            // are extended again one by one, and only theirs is reported.
            let receipts = held.iter().map(|(_, r)| r.clone()).collect();
            if ctx
                .queue
                .extend_all(receipts, ctx.config.visibility)
                .await
                .is_ok()
            {
                continue;
            }
            for (key, receipt) in &held {
                let kept =
                    || ctx.inflight.needs_heartbeat(key) || ctx.inflight.is_parked(key, receipt);
                if kept()
                    && let Err(e) = ctx.queue.extend(receipt, ctx.config.visibility).await
                    && kept()
                {
                    tracing::warn!(key = %key, error = %e, "visibility extension failed");
                }
            }
        }
    };
    let leases = async {
        let Some(ledger) = &ctx.ledger else {
            return;
        };
        let mut next = tokio::time::Instant::now() + every;
        // Since when every round had a renewal fail (a slow round is not one).
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = ledger_done.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {},
            }
            let started = tokio::time::Instant::now();
            let error = renew_round(&ctx, ledger.as_ref(), every).await;
            let mut failed = error.is_some();
            if let Some(RoundError {
                message: error,
                for_good: true,
            }) = error
            {
                // A ledger that refuses for good (its table gone, IAM) wedged
                // the worker: completions retried, nothing claimed, healthy
                // to its probe. Past `give_up_after` it stops, saying why,
                // and gives its bundles back (their leases ran out long ago).
                // Not for an outage (timeouts, throttling): the tasks running
                // go on, and their bundles once it ends.
                let failing_for = failing_since.get_or_insert(started).elapsed();
                if ctx
                    .config
                    .give_up_after
                    .is_some_and(|limit| failing_for >= limit)
                {
                    give_up(
                        &ctx,
                        StopReason::GaveUp {
                            unable: Unable::Renew,
                            failing_for,
                            error,
                        },
                    );
                    return;
                }
            } else {
                failing_since = None;
            }
            let took = started.elapsed();
            if !failed && took > every {
                // Every call answered, but the last bundles went longer than
                // a period unrenewed: with a few more bundles or a slower
                // ledger, their leases run out while every call succeeds.
                tracing::warn!(?took, period = ?every, "a round of lease renewals took longer than its period; no new bundle is claimed until one does not");
                failed = true;
            }
            // Running work first: a throttled ledger's writes go to the
            // leases held, not to claims of more bundles, whose leases would
            // then run out as well and be taken over (their tasks run twice).
            ctx.renewals_failing
                .send_if_modified(|failing| std::mem::replace(failing, failed) != failed);
            // From the round's start, however long its calls took (a late
            // round's successor starts at once); sooner after a failed
            // round: the leases are at stake, and claims wait for it.
            next = started + if failed { every / 4 } else { every };
        }
    };
    tokio::join!(visibility, leases);
}

/// One round of lease renewals, [`RENEWALS_AT_ONCE`] at a time, each call
/// given `every` to answer. A lease found lost stops its bundle (see
/// [`super::inflight::InFlight::lose`]). Returns whether a renewal failed
/// or did not answer in time (the first error); the renewals not yet asked
/// then wait for the next round, so that a throttled ledger is not asked more,
/// where they come first.
async fn renew_round<Q, L, R>(ctx: &Ctx<Q, L, R>, ledger: &L, every: Duration) -> Option<RoundError>
where
    L: DedupLedger,
{
    use futures_util::StreamExt;

    let failed: std::sync::Mutex<Option<RoundError>> = std::sync::Mutex::default();
    let renewals = ctx
        .inflight
        .snapshot()
        .into_iter()
        .filter_map(|h| Some((h.key, h.owner?, h.progress)));
    futures_util::stream::iter(renewals)
        .for_each_concurrent(RENEWALS_AT_ONCE, |(key, owner, progress)| {
            let failed = &failed;
            async move {
                // Given back or completed since the snapshot: a renewal now
                // would take it back for a lease.
                if failed.lock().expect("failed lock").is_some()
                    || !ctx.inflight.needs_heartbeat(&key)
                {
                    return;
                }
                let asked = tokio::time::Instant::now();
                let renewal = ledger.renew(&key, &owner, ctx.config.lease, &progress);
                let error = match tokio::time::timeout(every, renewal).await {
                    Ok(Ok(true)) => {
                        ctx.inflight.renewed(&key, asked);
                        return;
                    }
                    Ok(Ok(false)) => {
                        // Unless completed meanwhile (the snapshot is older
                        // than the completion): the lease ran out and
                        // another worker took the bundle over, and runs its
                        // tasks not reported. Those not started here are
                        // left to it; those running finish and their results
                        // are sent (the collectors keep each task id once,
                        // and the new holder may die too).
                        if ctx.inflight.lose(&key) {
                            WorkerStats::add(&ctx.stats.leases_lost, 1);
                            tracing::warn!(
                                key,
                                "lease lost: another worker took this bundle over; its tasks not started are left to it"
                            );
                        }
                        return;
                    }
                    Ok(Err(e)) => RoundError {
                        for_good: matches!(e, LedgerError::Backend(_)),
                        message: e.to_string(),
                    },
                    Err(_) => RoundError {
                        message: format!("no answer within {every:?}"),
                        for_good: false,
                    },
                };
                WorkerStats::add(&ctx.stats.backend_errors, 1);
                tracing::warn!(key, error = error.message, "lease renewal failed; the others wait for the next round, and no new bundle is claimed until a round succeeds");
                failed.lock().expect("failed lock").get_or_insert(error);
            }
        })
        .await;
    failed.into_inner().expect("failed lock")
}

/// Why a round of renewals failed: the first error.
struct RoundError {
    message: String,
    /// Refused for good (a deleted table, IAM), not unanswered or throttled.
    for_good: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_three_times_per_lease_or_visibility() {
        let s = Duration::from_secs;
        assert_eq!(renew_every(s(60), s(60)), s(20));
        assert_eq!(renew_every(s(60), s(9)), s(3), "the shorter");
        assert_eq!(renew_every(s(0), s(60)), Duration::from_millis(100));
    }

    #[test]
    fn results_wait_for_the_linger_unless_a_bundle_ended_or_a_send_is_full() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (waited, gathered, a bundle ended) -> wait more, with a 5 s linger
        let cases = [
            ((ms(0), 1, false), s(5)),
            ((ms(1_200), 7, false), ms(3_800)),
            ((s(5), 7, false), ms(0)),
            ((s(9), 7, false), ms(0)),
            // A bundle's last result: its completion must not wait.
            ((ms(0), 1, true), ms(0)),
            ((s(2), 40, true), ms(0)),
            // A send's worth.
            ((ms(10), RESULTS_PER_SEND - 1, false), ms(4_990)),
            ((ms(10), RESULTS_PER_SEND, false), ms(0)),
        ];
        for ((waited, gathered, ended), want) in cases {
            assert_eq!(
                results_wait(waited, gathered, ended, s(5)),
                want,
                "{waited:?} {gathered} {ended}"
            );
        }
    }
}
