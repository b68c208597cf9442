//! Finishing bundles: results stored in the ledger, sent to their response
//! queue, then the message deleted — in that order, so that no crash loses them.
//! Also the heartbeats that keep held bundles' leases and messages alive.

use std::collections::HashMap;
use std::time::Duration;

use cloudkon_core::ledger::DedupLedger;
use cloudkon_core::queue::{ResultRouter, TaskQueue};
use cloudkon_core::wire::{ResultsMessage, SQS_MAX_MESSAGE_BYTES, encode_results};
use tokio_util::sync::CancellationToken;

use super::retry::until_ok;
use super::{Ctx, WorkerStats};
use crate::pool::{ResultBatch, Ticket};

/// Most result messages sent (and messages deleted) per request.
const MAX_BATCH: usize = 10;

pub async fn run<Q, L, R>(
    ctx: std::sync::Arc<Ctx<Q, L, R>>,
    results: async_channel::Receiver<ResultBatch>,
    abort: CancellationToken,
) where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    while let Ok(first) = results.recv().await {
        let mut batches = vec![first];
        let deadline = tokio::time::Instant::now() + ctx.config.linger;
        while batches.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, results.recv()).await {
                Ok(Ok(batch)) => batches.push(batch),
                _ => break,
            }
        }
        finish(&ctx, batches, &abort).await;
    }
}

async fn finish<Q, L, R>(ctx: &Ctx<Q, L, R>, batches: Vec<ResultBatch>, abort: &CancellationToken)
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let errors = &ctx.stats.backend_errors;
    let mut sends: HashMap<String, Vec<String>> = HashMap::new();
    let mut receipts = Vec::new();
    let mut done = Vec::new();
    for batch in batches {
        let Some(ticket) = batch.ticket else { continue };
        let (Some(key), Some(reply_to)) = (ticket.claim_key.clone(), ticket.reply_to.clone())
        else {
            continue;
        };
        let owner = ticket.claim_owner.clone();
        if !batch.complete {
            give_back(ctx, ticket).await;
            continue;
        }
        let failed = batch
            .results
            .iter()
            .filter(|r| !r.outcome.is_success())
            .count() as u64;
        let total = batch.results.len() as u64;
        let message = ResultsMessage {
            key: key.clone(),
            ideal: batch.ideal,
            results: batch.results,
        };
        let body = match encode_results(&message, SQS_MAX_MESSAGE_BYTES) {
            Ok(body) => body,
            Err(e) => {
                // Cannot happen for well-formed results (tails are shortened to
                // fit); if it does, the bundle is given back rather than lost.
                tracing::error!(key, error = %e, "cannot encode results");
                give_back(ctx, ticket).await;
                continue;
            }
        };
        if let (Some(ledger), Some(owner)) = (&ctx.ledger, &owner) {
            let recorded = until_ok("recording a completion", abort, errors, || {
                ledger.complete(&key, owner, body.clone().into_bytes())
            })
            .await;
            if recorded != Some(true) {
                // Lost the lease (a slow heartbeat): the new holder reports. Or
                // aborted: the message comes back and the bundle runs again.
                tracing::warn!(key, "completion not recorded; dropping these results");
                ctx.inflight.remove(&key);
                ctx.room.add_permits(1);
                continue;
            }
        }
        ctx.inflight.completed(&key);
        WorkerStats::add(&ctx.stats.tasks_succeeded, total - failed);
        WorkerStats::add(&ctx.stats.tasks_failed, failed);
        sends.entry(reply_to).or_default().push(body);
        receipts.extend(ticket.receipt);
        done.push(key);
    }
    for (reply_to, bodies) in sends {
        // Stored in the ledger already: if this never succeeds, the next delivery
        // of the message re-sends them.
        until_ok("sending results", abort, errors, || {
            ctx.router.send_results(&reply_to, bodies.clone())
        })
        .await;
    }
    if !receipts.is_empty() {
        until_ok("deleting finished messages", abort, errors, || {
            ctx.queue.ack(receipts.clone())
        })
        .await;
    }
    for key in &done {
        ctx.inflight.remove(key);
    }
    ctx.room.add_permits(done.len());
}

/// Gives an unfinished bundle back: the claim released and the message visible
/// again, so that another worker takes it at once.
pub async fn give_back<Q, L, R>(ctx: &Ctx<Q, L, R>, ticket: Ticket)
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let Some(key) = ticket.claim_key else {
        return;
    };
    if let (Some(ledger), Some(owner)) = (&ctx.ledger, &ticket.claim_owner)
        && let Err(e) = ledger.release(&key, owner).await
    {
        tracing::warn!(key, error = %e, "could not release the claim; it expires with its lease");
    }
    if let Some(receipt) = &ticket.receipt
        && let Err(e) = ctx.queue.release(receipt).await
    {
        tracing::warn!(key, error = %e, "could not release the message; it returns after its visibility timeout");
    }
    WorkerStats::add(&ctx.stats.released, 1);
    ctx.inflight.remove(&key);
    ctx.room.add_permits(1);
}

/// Heartbeats: every third of a lease, extends the lease and the message
/// visibility of each bundle held.
pub async fn renew_leases<Q, L, R>(ctx: std::sync::Arc<Ctx<Q, L, R>>, done: CancellationToken)
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let every = (ctx.config.lease.min(ctx.config.visibility) / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {},
        }
        for (key, receipt, owner) in ctx.inflight.snapshot() {
            if let (Some(ledger), Some(owner)) = (&ctx.ledger, &owner) {
                match ledger.renew(&key, owner, ctx.config.lease).await {
                    Ok(true) => {}
                    // Completed meanwhile (the snapshot is older than the completion).
                    Ok(false) if !ctx.inflight.needs_heartbeat(&key) => {}
                    Ok(false) => {
                        tracing::warn!(key, "lease lost: another worker took this bundle over")
                    }
                    Err(e) => {
                        WorkerStats::add(&ctx.stats.backend_errors, 1);
                        tracing::warn!(key, error = %e, "lease renewal failed");
                    }
                }
            }
            if let Some(receipt) = &receipt
                && let Err(e) = ctx.queue.extend(receipt, ctx.config.visibility).await
                && ctx.inflight.needs_heartbeat(&key)
            {
                tracing::warn!(key, error = %e, "visibility extension failed");
            }
        }
    }
}
