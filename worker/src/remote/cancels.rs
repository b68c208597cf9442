//! Cancels seen by a worker: a cancelled batch's tasks that have not started
//! are left, and those running finish. The worker asks the ledger (a GetItem
//! per batch and `cancel_check`) only for the batches of which it holds tasks
//! not started: a worker whose slots all run ten-minute tasks has nothing a
//! cancel would change, and asked every 3 s anyway, 15 of the 65 requests
//! such a task cost (simulated).

use std::sync::Arc;

use cloudkon_core::ledger::DedupLedger;
use cloudkon_core::queue::{ResultRouter, TaskQueue};
use tokio_util::sync::CancellationToken;

use super::{Ctx, WorkerStats, fetch};

/// The batches to ask about, from each bundle held: its batch and its tasks
/// not started (0 for a bundle already stopped). Sorted, each once. The
/// simulator calls this too.
pub fn batches_to_watch<B: Ord>(held: impl IntoIterator<Item = (B, usize)>) -> Vec<B> {
    let mut batches: Vec<B> = held
        .into_iter()
        .filter(|(_, waiting)| *waiting > 0)
        .map(|(batch, _)| batch)
        .collect();
    batches.sort();
    batches.dedup();
    batches
}

/// Every `cancel_check`, asks whether the batches of [`batches_to_watch`]
/// were cancelled, and leaves their tasks that have not started: a bundle
/// holds many tasks, and a cancel must not wait for all of them. (The bundle
/// is then given back, and the next worker to receive it deletes it.)
pub async fn watch<Q, L, R>(ctx: Arc<Ctx<Q, L, R>>, done: CancellationToken)
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let Some(ledger) = ctx.ledger.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(ctx.config.cancel_check) => {},
        }
        for batch in ctx.inflight.batches_to_watch() {
            // Asked afresh (not from the admission cache): a cancel is seen
            // within one period.
            let cancelled = ledger.is_cancelled(&batch).await.unwrap_or(false);
            if cancelled {
                fetch::remember_cancelled(&ctx, &batch, true);
                let stopped = ctx.inflight.stop_batch(&batch);
                if stopped > 0 {
                    tracing::info!(
                        batch,
                        bundles = stopped,
                        "batch cancelled: leaving its tasks not started"
                    );
                    WorkerStats::add(&ctx.stats.cancelled, stopped as u64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_batches_with_tasks_not_started_are_watched() {
        let held = [("b", 0), ("a", 3), ("c", 0), ("a", 0), ("b", 1), ("a", 1)];
        assert_eq!(batches_to_watch(held), vec!["a", "b"]);
        assert!(batches_to_watch([("a", 0), ("b", 0)]).is_empty());
        assert!(batches_to_watch(Vec::<(u8, usize)>::new()).is_empty());
    }
}
