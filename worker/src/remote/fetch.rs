//! Receiving bundles and claiming them.

use std::time::{Duration, Instant};

use cloudkon_core::ledger::{Claim, DedupLedger, claim_key};
use cloudkon_core::queue::{Delivery, ResultRouter, TaskQueue};
use cloudkon_core::{Outcome, TaskResult, Timestamp};

use super::retry::Backoff;
use super::{Ctx, StopReason, WorkerStats};
use crate::pool::{ResultBatch, Shutdown, Ticket, WorkUnit};

/// SQS returns at most 10 messages per receive.
const MAX_RECEIVE: usize = 10;
/// When a claim fails (the ledger is unreachable), the message is hidden this
/// long before it is delivered again.
const CLAIM_RETRY_DELAY: Duration = Duration::from_secs(2);

pub async fn run<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    units: &async_channel::Sender<WorkUnit>,
    results: &async_channel::Sender<ResultBatch>,
    shutdown: &Shutdown,
) -> StopReason
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let mut idle_since = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        // Hold no more bundles than the slots can start soon: a message held here
        // is invisible to idle workers elsewhere.
        let first = tokio::select! {
            _ = shutdown.stop.cancelled() => return StopReason::Shutdown,
            permit = ctx.room.acquire() => permit.expect("room semaphore open"),
        };
        first.forget();
        let mut room = 1;
        while room < MAX_RECEIVE {
            match ctx.room.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    room += 1;
                }
                Err(_) => break,
            }
        }
        if shutdown.stop.is_cancelled() {
            ctx.room.add_permits(room);
            return StopReason::Shutdown;
        }
        // Not cancelled on shutdown: messages received by a cancelled call would
        // stay hidden for a whole visibility timeout; these are given back at once.
        let received = ctx.queue.receive(room, ctx.config.receive_wait).await;
        let deliveries = match received {
            Ok(Some(deliveries)) => {
                backoff.reset();
                deliveries
            }
            Ok(None) => {
                ctx.room.add_permits(room);
                return StopReason::Drained;
            }
            Err(e) => {
                ctx.room.add_permits(room);
                WorkerStats::add(&ctx.stats.backend_errors, 1);
                tracing::warn!(error = %e, "receive failed; backing off");
                if !backoff.wait(&shutdown.stop).await {
                    return StopReason::Shutdown;
                }
                continue;
            }
        };
        ctx.room.add_permits(room - deliveries.len().min(room));
        if ctx.inflight.len() > 0 || !deliveries.is_empty() {
            idle_since = Instant::now();
        } else if ctx
            .config
            .idle_timeout
            .is_some_and(|idle| idle_since.elapsed() >= idle)
        {
            return StopReason::Idle;
        }
        for delivery in deliveries {
            if shutdown.stop.is_cancelled() {
                // Received after the stop: straight back to the queue.
                ctx.room.add_permits(1);
                if let Some(receipt) = &delivery.receipt {
                    let _ = ctx.queue.release(receipt).await;
                }
                continue;
            }
            match admit(ctx, delivery).await {
                Admitted::Run(unit) => {
                    if units.send(unit).await.is_err() {
                        return StopReason::Shutdown;
                    }
                }
                Admitted::GiveUp(batch) => {
                    if results.send(batch).await.is_err() {
                        return StopReason::Shutdown;
                    }
                }
                Admitted::Skip => ctx.room.add_permits(1),
            }
        }
    }
}

enum Admitted {
    Run(WorkUnit),
    /// Claimed too often: report the tasks failed without running them.
    GiveUp(ResultBatch),
    Skip,
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
        ..
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
    if let (Some(ledger), Some(batch)) =
        (&ctx.ledger, bundle.tasks.first().map(|t| t.batch.clone()))
        && is_cancelled(ctx, ledger.as_ref(), batch.as_str()).await
    {
        tracing::info!(key, batch = %batch, "batch cancelled: bundle deleted without running");
        WorkerStats::add(&ctx.stats.cancelled, 1);
        if let Some(receipt) = receipt {
            let _ = ctx.queue.ack(vec![receipt]).await;
        }
        return Admitted::Skip;
    }
    let mut attempt = 1;
    let owner = ctx.claim_owner();
    // A batch that asked for at-least-once (`dedup: false`) skips the ledger.
    let ledger = ctx
        .ledger
        .as_ref()
        .filter(|_| bundle.options.dedup != Some(false));
    if let Some(ledger) = ledger {
        match ledger.claim(&key, &owner, ctx.config.lease).await {
            Err(e) => {
                // Not claimed, so not run: let the message come back soon rather
                // than after a whole visibility timeout.
                WorkerStats::add(&ctx.stats.backend_errors, 1);
                tracing::warn!(key, error = %e, "claim failed; the bundle comes back shortly");
                if let Some(receipt) = &receipt {
                    let _ = ctx.queue.extend(receipt, CLAIM_RETRY_DELAY).await;
                }
                return Admitted::Skip;
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
                let body = String::from_utf8_lossy(&results).into_owned();
                if ctx.router.send_results(&reply_to, vec![body]).await.is_ok() {
                    WorkerStats::add(&ctx.stats.resent, 1);
                    if let Some(receipt) = receipt {
                        let _ = ctx.queue.ack(vec![receipt]).await;
                    }
                }
                return Admitted::Skip;
            }
            Ok(Claim::Granted { attempt: a }) => attempt = a,
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
    let claim_owner = ledger.map(|_| owner);
    ctx.inflight
        .insert(key.clone(), receipt.clone(), claim_owner.clone());
    let ticket = Ticket {
        receipt,
        claim_key: Some(key),
        claim_owner,
        reply_to: Some(reply_to),
    };
    if attempt > ctx.config.max_claims {
        WorkerStats::add(&ctx.stats.given_up, 1);
        return Admitted::GiveUp(give_up(
            bundle.tasks,
            bundle.submitted,
            attempt,
            &ctx.owner,
            ticket,
        ));
    }
    Admitted::Run(WorkUnit {
        submitted: bundle.submitted,
        options: bundle.options,
        tasks: bundle.tasks,
        ticket: Some(ticket),
    })
}

/// Whether a batch was cancelled, from the cache or the ledger. A ledger
/// error counts as "not cancelled": running a cancelled task is the lesser harm.
async fn is_cancelled<Q, L, R>(ctx: &Ctx<Q, L, R>, ledger: &L, batch: &str) -> bool
where
    L: DedupLedger,
{
    if let Some((cancelled, at)) = ctx.cancelled.lock().expect("cancel cache").get(batch)
        && (*cancelled || at.elapsed() < super::CANCEL_CHECK_EVERY)
    {
        return *cancelled;
    }
    let cancelled = match ledger.is_cancelled(batch).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(batch, error = %e, "cannot check for cancellation");
            false
        }
    };
    let mut cache = ctx.cancelled.lock().expect("cancel cache");
    // Bounded: batches come and go over a worker's life.
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(batch.to_string(), (cancelled, std::time::Instant::now()));
    cancelled
}

fn give_up(
    tasks: Vec<cloudkon_core::Task>,
    submitted: Timestamp,
    attempt: u32,
    owner: &str,
    ticket: Ticket,
) -> ResultBatch {
    let now = Timestamp::now();
    let worker: std::sync::Arc<str> = owner.into();
    let reason = format!(
        "gave up: claimed {attempt} times, and the previous {} workers stopped before finishing it",
        attempt - 1
    );
    let results = tasks
        .into_iter()
        .map(|task| TaskResult {
            batch: task.batch,
            id: task.id,
            attempt,
            outcome: Outcome::Failed {
                reason: reason.clone(),
            },
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            worker: worker.clone(),
            submitted,
            started: now,
            finished: now,
        })
        .collect();
    ResultBatch {
        results,
        ideal: Duration::ZERO,
        ticket: Some(ticket),
        complete: true,
    }
}
