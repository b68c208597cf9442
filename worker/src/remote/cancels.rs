//! Cancels seen by a worker: a cancelled batch's tasks that have not started
//! are left, and those running finish. The worker asks the ledger (a read
//! per batch and `cancel_check`) only for the batches of which it holds tasks
//! not started: a worker whose slots all run ten-minute tasks has nothing a
//! cancel would change, and asked every 3 s anyway, 15 of the 65 requests
//! such a task cost (simulated). One answer serves both readers: a bundle's
//! admission and this watch each take the other's answer while it is younger
//! than the period, so a batch is asked about once a period, not once more
//! for each bundle received.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Which of the `watched` batches to ask about now, and how long until the
/// next one is due: a batch is due once its last answer (`age`: how long
/// ago, from whichever read; `None`: never asked) is `period` old. So a
/// batch is asked about at most `period` after its last answer, and a bundle
/// admitted a moment ago costs no second read. Never waits less than
/// [`MIN_WAIT`] (answers just short of due are asked with the rest).
pub fn due_checks<B: Clone>(
    watched: &[B],
    age: impl Fn(&B) -> Option<Duration>,
    period: Duration,
) -> (Vec<B>, Duration) {
    let mut due = Vec::new();
    let mut wait = period;
    for batch in watched {
        match age(batch).and_then(|a| period.checked_sub(a)) {
            Some(left) if left > MIN_WAIT => wait = wait.min(left),
            _ => due.push(batch.clone()),
        }
    }
    (due, wait.max(MIN_WAIT))
}

/// The shortest wait between two rounds of cancel checks.
pub const MIN_WAIT: Duration = Duration::from_millis(10);

/// Asks whether the batches of [`batches_to_watch`] were cancelled, each
/// `cancel_check` after its last answer ([`due_checks`]), and leaves their
/// tasks that have not started: a bundle holds many tasks, and a cancel must
/// not wait for all of them. (The bundle is then given back, and the next
/// worker to receive it deletes it.)
pub async fn watch<Q, L, R>(ctx: Arc<Ctx<Q, L, R>>, done: CancellationToken)
where
    Q: TaskQueue,
    L: DedupLedger,
    R: ResultRouter,
{
    let Some(ledger) = ctx.ledger.clone() else {
        return;
    };
    let period = ctx.config.cancel_check;
    // This watch's own asks, answered or not: a ledger that fails is asked
    // again a period later, not in a tight loop.
    let mut asked: HashMap<String, Instant> = HashMap::new();
    let mut wait = period;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(wait) => {},
        }
        let watched = ctx.inflight.batches_to_watch();
        asked.retain(|b, _| watched.contains(b));
        let (due, _) = due_checks(&watched, |b| answer_age(&ctx, &asked, b), period);
        for batch in due {
            // A cancel is for good: once seen, nothing to ask.
            let cancelled = match fetch::cached_cancel(&ctx, &batch) {
                Some((true, _)) => true,
                _ => {
                    asked.insert(batch.clone(), Instant::now());
                    match ledger.batch_marks(&batch).await {
                        Ok(marks) => fetch::remember_marks(&ctx, &batch, marks),
                        Err(e) => {
                            tracing::debug!(batch, error = %e, "cannot check for cancellation");
                            false
                        }
                    }
                }
            };
            if cancelled {
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
        let watched = ctx.inflight.batches_to_watch();
        wait = due_checks(&watched, |b| answer_age(&ctx, &asked, b), period).1;
    }
}

/// How long ago `batch` was last answered on, or asked about by the watch.
fn answer_age<Q, L, R>(
    ctx: &Ctx<Q, L, R>,
    asked: &HashMap<String, Instant>,
    batch: &String,
) -> Option<Duration> {
    let answered = fetch::cached_cancel(ctx, batch).map(|(_, at)| at.elapsed());
    let tried = asked.get(batch).map(Instant::elapsed);
    answered.into_iter().chain(tried).min()
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

    #[test]
    fn a_batch_is_due_a_period_after_its_last_answer() {
        let ms = Duration::from_millis;
        let period = ms(3000);
        let ages = |a: Option<u64>, b: Option<u64>| {
            move |batch: &&str| match *batch {
                "a" => a.map(ms),
                _ => b.map(ms),
            }
        };
        // Ages of a and b (ms) -> due, wait (ms).
        type Case = (Option<u64>, Option<u64>, &'static [&'static str], u64);
        let cases: [Case; 6] = [
            (None, None, &["a", "b"], 3000),
            (Some(0), Some(0), &[], 3000),
            (Some(1000), Some(2500), &[], 500),
            (Some(3000), Some(2500), &["a"], 500),
            // Just short of due: asked with the rest, not a moment later.
            (Some(2995), Some(9000), &["a", "b"], 3000),
            (Some(2000), None, &["b"], 1000),
        ];
        for (a, b, due, wait) in cases {
            let got = due_checks(&["a", "b"], ages(a, b), period);
            assert_eq!(got, (due.to_vec(), ms(wait)), "ages {a:?} {b:?}");
        }
        let (due, wait) = due_checks::<&str>(&[], |_| None, period);
        assert!(due.is_empty());
        assert_eq!(wait, period, "nothing watched: a period");
    }
}
