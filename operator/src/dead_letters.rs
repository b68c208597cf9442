//! A pool's dead-letter queue: bundles SQS moved there after `maxReceives`
//! receives (their workers could not claim or finish them) would otherwise
//! leave their batches Running for ever. The operator reads each pool's
//! dead-letter queue (one long poll at a time, a task per pool) and reports
//! the tasks of each dead bundle that have no result yet as failed, with the
//! reason, to the bundle's `reply_to`: the batch's own collector then counts
//! them once (its collected set drops a second result for a task), the batch
//! finishes, and its `DeadLettered` condition and Event say how many.
//!
//! Which tasks have no result comes from the ledger, as for a worker taking a
//! bundle over: the operator claims the bundle itself. Done: its results were
//! sent (nothing to report). Held: a worker still runs it (look again after
//! its lease). Granted: the tasks not in its progress are reported, then the
//! claim is completed, so that a copy of the message still in the pool's
//! queue is skipped. The message is deleted only once that is done.

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::aws::{DynamoLedger, ErrorKind, SqsClient, SqsQueue};
use cloudkon_core::ledger::{Claim, DedupLedger, LedgerError, claim_key};
use cloudkon_core::queue::{QueueError, ResultRouter};
use cloudkon_core::wire::{self, ResultsMessage, SQS_MAX_MESSAGE_BYTES};
use cloudkon_core::{Bundle, TaskResult, Timestamp};

/// The `worker` of the results the operator makes for dead-lettered tasks:
/// how the collector tells them from a worker's own failures.
pub const DEAD_LETTER_WORKER: &str = "cloudkon-operator/dead-letter-queue";
/// The ledger owner of the operator's claims on dead bundles.
const OWNER: &str = "cloudkon-operator/dead-letter-queue";
/// How long the operator holds such a claim: it sends a few messages.
const LEASE: Duration = Duration::from_secs(60);
/// SQS's longest long poll: an idle dead-letter queue costs a request per 20 s.
pub(crate) const POLL_WAIT: Duration = Duration::from_secs(20);
/// A message that cannot be dealt with now (ledger or response queue failing)
/// comes back after this.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// A message that is not a bundle stays (for a person to look at), hidden
/// this long between looks.
const UNDECODABLE_HIDE: Duration = Duration::from_secs(3600);

/// Whether a result is one the operator made for a dead-lettered task.
pub fn is_dead_letter(result: &TaskResult) -> bool {
    &*result.worker == DEAD_LETTER_WORKER
}

/// What became of a dead bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// This many of its tasks were reported failed (those without a result).
    Reported(usize),
    /// It had finished: its results were sent by its worker.
    Finished,
    /// Nobody reads its results (the batch, and its response queue, are gone,
    /// or it names none).
    NoReader,
    /// A worker holds it: look again after this long.
    Later(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("sending the failed results to {reply_to}: {source}")]
    Send {
        reply_to: String,
        #[source]
        source: QueueError,
    },
    #[error("encoding the failed results: {0}")]
    Encode(#[from] wire::WireError),
}

/// When to look again at a dead bundle whose claim a worker holds for
/// `remaining` more: just after its lease runs out.
pub(crate) fn look_again_after(remaining: Duration) -> Duration {
    remaining + Duration::from_secs(1)
}

/// Reports a dead bundle's unfinished tasks failed (see the module's
/// comment). `ledger`: `None` when the pool's workers have none, and ignored
/// for a batch without dedup (its workers never claim). `max_receives`: the
/// queue's, for the reason.
pub async fn settle<L, R>(
    bundle: &Bundle,
    ledger: Option<&L>,
    router: &R,
    max_receives: u32,
) -> Result<Settled, SettleError>
where
    L: DedupLedger,
    R: ResultRouter,
{
    let Some(reply_to) = &bundle.reply_to else {
        return Ok(Settled::NoReader);
    };
    let key = claim_key(bundle);
    let ledger = ledger.filter(|_| bundle.options.dedup != Some(false));
    let (attempt, done) = match ledger {
        None => (1, Default::default()),
        Some(ledger) => match ledger.claim(&key, OWNER, LEASE).await? {
            Claim::Held { remaining } => {
                return Ok(Settled::Later(look_again_after(remaining)));
            }
            Claim::Done { results } => {
                // Older workers stored results instead of sending them first.
                if !results.is_empty() {
                    let body = String::from_utf8_lossy(&results).into_owned();
                    if !send_to_batch(router, reply_to, vec![body]).await? {
                        return Ok(Settled::NoReader);
                    }
                }
                return Ok(Settled::Finished);
            }
            Claim::Granted { attempt, done } => (attempt, done),
        },
    };
    let reason = format!(
        "the bundle reached the dead-letter queue after {max_receives} receives: its workers could not claim or finish it"
    );
    let now = Timestamp::now();
    let worker: Arc<str> = DEAD_LETTER_WORKER.into();
    let results: Vec<TaskResult> = bundle
        .tasks
        .iter()
        .enumerate()
        .filter(|(position, _)| !done.contains(*position))
        .map(|(_, task)| {
            let attempt = attempt.max(task.attempt);
            TaskResult::not_run(
                task,
                attempt,
                reason.clone(),
                worker.clone(),
                bundle.submitted,
                now,
            )
        })
        .collect();
    let reported = results.len();
    if !results.is_empty() {
        let message = ResultsMessage {
            key: key.clone(),
            ideal: Duration::ZERO,
            results,
            usage: Default::default(),
        };
        let bodies = wire::encode_results_split(&message, SQS_MAX_MESSAGE_BYTES)?;
        if !send_to_batch(router, reply_to, bodies).await? {
            return Ok(Settled::NoReader);
        }
    }
    if let Some(ledger) = ledger {
        // Best effort: the results are out; a copy delivered again without
        // this runs the tasks again, and their second results count once.
        match ledger.complete(&key, OWNER, Vec::new()).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(key, "dead bundle taken by a worker meanwhile"),
            Err(e) => tracing::warn!(key, error = %e, "cannot mark the dead bundle done"),
        }
    }
    Ok(Settled::Reported(reported))
}

/// Sends results to a batch's response queue; `false` when the queue is
/// gone (the batch was deleted: nobody reads them).
async fn send_to_batch<R: ResultRouter>(
    router: &R,
    reply_to: &str,
    bodies: Vec<String>,
) -> Result<bool, SettleError> {
    match router.send_results(reply_to, bodies).await {
        Ok(()) => Ok(true),
        Err(QueueError::NotFound(_)) => Ok(false),
        Err(source) => Err(SettleError::Send {
            reply_to: reply_to.to_string(),
            source,
        }),
    }
}

/// Reads one pool's dead-letter queue until the queue is deleted (or the task
/// is aborted with the pool's memory).
pub async fn watch(
    pool: String,
    dlq: SqsQueue,
    ledger: Option<DynamoLedger>,
    router: SqsClient,
    max_receives: u32,
) {
    let mut table_ready = false;
    let mut failures = 0u32;
    loop {
        let messages = match dlq.receive_raw(10, POLL_WAIT).await {
            Ok(m) => {
                failures = 0;
                m
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                tracing::info!(pool, error = %e, "dead-letter queue gone: no longer read");
                return;
            }
            Err(e) => {
                failures += 1;
                let delay = Duration::from_secs(1 << failures.min(5));
                tracing::warn!(pool, error = %e, retry_in = ?delay, "cannot read the dead-letter queue");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        for message in messages {
            let bundle = match wire::decode_bundle(&message.body) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(pool, message_id = %message.message_id, error = %e,
                        "a message in the dead-letter queue is not a bundle: left there");
                    hide(&dlq, &message.receipt, UNDECODABLE_HIDE).await;
                    continue;
                }
            };
            // The table exists once a worker claimed; a bundle no worker could
            // claim may predate it.
            if let Some(ledger) = &ledger
                && !table_ready
            {
                match ledger.ensure_table().await {
                    Ok(()) => table_ready = true,
                    Err(e) => {
                        tracing::warn!(pool, error = %e, "cannot reach the ledger table");
                        hide(&dlq, &message.receipt, RETRY_AFTER).await;
                        continue;
                    }
                }
            }
            let key = claim_key(&bundle);
            let batch = bundle
                .tasks
                .first()
                .map(|t| t.batch.to_string())
                .unwrap_or_default();
            match settle(&bundle, ledger.as_ref(), &router, max_receives).await {
                Ok(Settled::Later(after)) => {
                    tracing::info!(
                        pool,
                        key,
                        ?after,
                        "dead bundle still held by a worker; looking again later"
                    );
                    hide(&dlq, &message.receipt, after).await;
                    continue;
                }
                Ok(Settled::Reported(n)) => {
                    tracing::warn!(
                        pool,
                        key,
                        batch,
                        tasks = n,
                        "bundle in the dead-letter queue: its unfinished tasks reported failed"
                    );
                }
                Ok(Settled::Finished) => {
                    tracing::info!(
                        pool,
                        key,
                        batch,
                        "bundle in the dead-letter queue had finished: deleted"
                    );
                }
                Ok(Settled::NoReader) => {
                    tracing::info!(
                        pool,
                        key,
                        batch,
                        "bundle in the dead-letter queue has no batch left to report to: deleted"
                    );
                }
                Err(e) => {
                    tracing::warn!(pool, key, error = %e, retry_in = ?RETRY_AFTER, "cannot settle a dead bundle now");
                    hide(&dlq, &message.receipt, RETRY_AFTER).await;
                    continue;
                }
            }
            if let Err(e) = dlq.delete_batch(vec![message.receipt]).await {
                // It comes back; settling it again reports nothing new (the
                // ledger says done).
                tracing::warn!(pool, key, error = %e, "cannot delete a settled dead bundle");
            }
        }
    }
}

async fn hide(dlq: &SqsQueue, receipt: &cloudkon_core::queue::Receipt, for_: Duration) {
    if let Err(e) = dlq.change_visibility(receipt, for_).await {
        tracing::debug!(error = %e, "cannot hide a dead-letter message; it returns after the queue's visibility timeout");
    }
}

/// Aborts the reader when the pool's memory goes (pool deleted, operator
/// standing down).
#[derive(Debug)]
pub struct Reader(pub tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::Outcome;
    use cloudkon_core::ledger::{BundleProgress, MemoryLedger};
    use cloudkon_core::task::{Task, TaskSpec};
    use cloudkon_core::{BatchId, BundleOptions};
    use std::sync::Mutex;

    /// Records what is sent; `gone`: the response queue was deleted.
    #[derive(Default)]
    struct Router {
        sent: Mutex<Vec<(String, ResultsMessage)>>,
        gone: bool,
    }

    impl ResultRouter for Router {
        async fn send_results(
            &self,
            reply_to: &str,
            bodies: Vec<String>,
        ) -> Result<(), QueueError> {
            if self.gone {
                return Err(QueueError::NotFound(reply_to.into()));
            }
            let mut sent = self.sent.lock().unwrap();
            for body in bodies {
                sent.push((reply_to.into(), wire::decode_results(&body).unwrap()));
            }
            Ok(())
        }
    }

    impl Router {
        fn failed_ids(&self) -> Vec<u64> {
            let sent = self.sent.lock().unwrap();
            let mut ids: Vec<u64> = sent
                .iter()
                .flat_map(|(_, m)| m.results.iter())
                .inspect(|r| {
                    assert!(is_dead_letter(r));
                    assert!(
                        matches!(&r.outcome, Outcome::Failed { reason } if reason.contains("dead-letter queue after 5 receives")),
                        "{:?}",
                        r.outcome
                    );
                })
                .map(|r| r.id)
                .collect();
            ids.sort_unstable();
            ids
        }
    }

    fn bundle(first: u64, n: u64) -> Bundle {
        Bundle {
            submitted: Timestamp::now(),
            tasks: (first..first + n)
                .map(|id| Task {
                    batch: BatchId::new("b1"),
                    id,
                    attempt: 1,
                    timeout: None,
                    spec: TaskSpec::Sleep { ms: 1 },
                })
                .collect(),
            reply_to: Some("responses".into()),
            options: BundleOptions::default(),
        }
    }

    #[tokio::test]
    async fn a_bundle_never_claimed_is_reported_failed_whole_and_marked_done() {
        let ledger = MemoryLedger::new();
        let router = Router::default();
        let b = bundle(10, 3);
        let settled = settle(&b, Some(&ledger), &router, 5).await.unwrap();
        assert_eq!(settled, Settled::Reported(3));
        assert_eq!(router.failed_ids(), vec![10, 11, 12]);
        // A copy still in the pool's queue is skipped by the workers.
        let claim = ledger.claim(&claim_key(&b), "w", LEASE).await.unwrap();
        assert!(matches!(claim, Claim::Done { .. }), "{claim:?}");
        // Settled again (the delete failed): nothing more is reported.
        assert_eq!(
            settle(&b, Some(&ledger), &router, 5).await.unwrap(),
            Settled::Finished
        );
        assert_eq!(router.failed_ids().len(), 3);
    }

    #[tokio::test]
    async fn only_the_tasks_without_results_are_reported() {
        let ledger = MemoryLedger::new();
        let router = Router::default();
        let b = bundle(0, 4);
        let key = claim_key(&b);
        // A worker ran and reported positions 0 and 2, then gave it back.
        assert!(matches!(
            ledger.claim(&key, "w", LEASE).await.unwrap(),
            Claim::Granted { .. }
        ));
        let mut progress = BundleProgress::new();
        progress.insert(0);
        progress.insert(2);
        ledger.release(&key, "w", &progress).await.unwrap();
        assert_eq!(
            settle(&b, Some(&ledger), &router, 5).await.unwrap(),
            Settled::Reported(2)
        );
        assert_eq!(router.failed_ids(), vec![1, 3]);
    }

    #[tokio::test]
    async fn finished_held_and_orphaned_bundles_report_nothing() {
        let ledger = MemoryLedger::new();
        let router = Router::default();
        // Finished by its worker: its results are out already.
        let finished = bundle(0, 2);
        let key = claim_key(&finished);
        ledger.claim(&key, "w", LEASE).await.unwrap();
        assert!(ledger.complete(&key, "w", Vec::new()).await.unwrap());
        assert_eq!(
            settle(&finished, Some(&ledger), &router, 5).await.unwrap(),
            Settled::Finished
        );
        // Held by a live worker: look again after its lease.
        let held = bundle(2, 2);
        ledger
            .claim(&claim_key(&held), "w", Duration::from_secs(30))
            .await
            .unwrap();
        match settle(&held, Some(&ledger), &router, 5).await.unwrap() {
            Settled::Later(after) => assert!(after > Duration::from_secs(25), "{after:?}"),
            other => panic!("{other:?}"),
        }
        assert!(router.failed_ids().is_empty());
        // The batch is gone.
        let gone = Router {
            gone: true,
            ..Router::default()
        };
        assert_eq!(
            settle(&bundle(4, 1), Some(&ledger), &gone, 5)
                .await
                .unwrap(),
            Settled::NoReader
        );
        let mut no_reply = bundle(5, 1);
        no_reply.reply_to = None;
        assert_eq!(
            settle(&no_reply, Some(&ledger), &router, 5).await.unwrap(),
            Settled::NoReader
        );
    }

    #[tokio::test]
    async fn without_dedup_every_task_is_reported() {
        let ledger = MemoryLedger::new();
        let router = Router::default();
        let mut b = bundle(0, 2);
        b.options.dedup = Some(false);
        let key = claim_key(&b);
        // A dedup-off batch never claims; whatever the ledger says is ignored.
        ledger.claim(&key, "w", LEASE).await.unwrap();
        assert_eq!(
            settle(&b, Some(&ledger), &router, 5).await.unwrap(),
            Settled::Reported(2)
        );
        assert_eq!(
            settle(&b, None::<&MemoryLedger>, &router, 5).await.unwrap(),
            Settled::Reported(2)
        );
    }
}
