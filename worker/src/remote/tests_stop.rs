//! Claims and bundles a worker gives back: a claim that failed but may have
//! landed, and on a stop the bundles received but not started.

use std::sync::atomic::{AtomicUsize, Ordering};

use cloudkon_core::TaskSpec;
use cloudkon_core::ledger::{
    BatchMarks, BundleProgress, Claim, DedupLedger, LedgerError, MemoryLedger, claim_key,
};
use cloudkon_core::queue::MemoryQueue;

use super::tests::{self, MemoryRouter, bundle, until};
use super::*;

const LEASE: Duration = Duration::from_secs(60);

fn config(slots: usize) -> RemoteConfig {
    let mut config = tests::config();
    config.pool.slots = slots;
    config
}

/// A worker on `queue`, until the `Shutdown` returned stops it.
fn start<L: DedupLedger>(
    queue: Arc<MemoryQueue>,
    ledger: Arc<L>,
    router: Arc<MemoryRouter>,
    config: RemoteConfig,
    stats: Arc<WorkerStats>,
) -> (tokio::task::JoinHandle<StopReason>, Shutdown) {
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(run_remote(
        queue,
        Some(ledger),
        router,
        Arc::new(Registry::new()),
        config,
        shutdown.clone(),
        stats,
    ));
    (worker, shutdown)
}

/// The in-memory ledger, whose first `lost_answers` claims land after
/// `stall` and then fail: the answer to the attempt that landed was lost,
/// and the SDK's retries were throttled.
struct LostAnswerLedger {
    inner: MemoryLedger,
    lost_answers: AtomicUsize,
    stall: Duration,
    claims: AtomicUsize,
}

impl DedupLedger for LostAnswerLedger {
    async fn cancel_batch(&self, batch: &str) -> Result<(), LedgerError> {
        self.inner.cancel_batch(batch).await
    }

    async fn batch_marks(&self, batch: &str) -> Result<BatchMarks, LedgerError> {
        self.inner.batch_marks(batch).await
    }

    async fn mark_lane(&self, batch: &str, at_ms: u64) -> Result<(), LedgerError> {
        self.inner.mark_lane(batch, at_ms).await
    }

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim, LedgerError> {
        self.claims.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.stall).await;
        let claim = self.inner.claim(key, owner, lease).await;
        let lost = self
            .lost_answers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(LedgerError::Unavailable(
                "ProvisionedThroughputExceededException".into(),
            ));
        }
        claim
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        done: &BundleProgress,
    ) -> Result<bool, LedgerError> {
        self.inner.renew(key, owner, lease, done).await
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        results: Vec<u8>,
    ) -> Result<bool, LedgerError> {
        self.inner.complete(key, owner, results).await
    }

    async fn release(
        &self,
        key: &str,
        owner: &str,
        done: &BundleProgress,
    ) -> Result<(), LedgerError> {
        self.inner.release(key, owner, done).await
    }
}

// Paused time: the clock moves only once every task of the test waits, so
// the give-back spawned on the failed claim has run by then.
#[tokio::test(start_paused = true)]
async fn a_claim_that_landed_but_failed_is_given_back() {
    // Kept, it held the bundle for a lease under an owner token never used
    // again: the next claim `Held`, then a take-over as attempt 2, and
    // under throttling bundles reached `max_claims` with no worker dead.
    // The error comes at once, or after the worker stopped waiting (10 s).
    for stall in [Duration::ZERO, Duration::from_secs(15)] {
        let b = bundle(0, vec![TaskSpec::Sleep { ms: 1000 }]);
        let key = claim_key(&b);
        let queue = Arc::new(MemoryQueue::bounded(1));
        queue.send(vec![b]).await.unwrap();
        let ledger = Arc::new(LostAnswerLedger {
            inner: MemoryLedger::new(),
            lost_answers: AtomicUsize::new(1),
            stall,
            claims: AtomicUsize::new(0),
        });
        let stats = Arc::new(WorkerStats::default());
        let (worker, shutdown) = start(
            queue,
            ledger.clone(),
            Arc::new(MemoryRouter::default()),
            config(1),
            stats.clone(),
        );
        tokio::time::sleep(stall + Duration::from_millis(500)).await;
        assert_eq!(ledger.claims.load(Ordering::Relaxed), 1, "{stall:?}");
        assert_eq!(WorkerStats::get(&stats.bundles), 0, "not run");
        let claim = ledger.inner.claim(&key, "another", LEASE).await.unwrap();
        assert_eq!(
            claim,
            Claim::Granted {
                attempt: 1,
                done: BundleProgress::new()
            },
            "answered after {stall:?}"
        );
        shutdown.stop.cancel();
        shutdown.abort.cancel();
        assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
    }
}

#[tokio::test]
async fn a_stop_gives_the_bundles_not_started_back_before_the_running_ones_end() {
    // Three slots run a bundle of three tasks; the worker holds three more
    // bundles of one task (twice the slots in tasks): one waits for a slot
    // in the pool, one in its dispatcher, one in the worker's channel. All
    // three stayed hidden until the running tasks ended, up to `grace`.
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let task = |name: String| TaskSpec::Run {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "touch {}; while [ ! -e {} ]; do sleep 0.01; done",
                dir.path().join(name).display(),
                release.display()
            ),
        ],
        expected_ms: None,
    };
    let mut bundles = vec![bundle(0, (0..3).map(|j| task(format!("0-{j}"))).collect())];
    bundles.extend((1..6).map(|i| bundle(10 * i, vec![task(format!("{i}"))])));
    let keys: Vec<String> = bundles.iter().map(claim_key).collect();
    let queue = Arc::new(MemoryQueue::bounded(8));
    queue.send(bundles).await.unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(MemoryRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let mut config = config(3);
    config.prefetch = 2;
    // Not what ends the give-back: only the release does, after it.
    config.grace = Duration::from_secs(3600);
    let (worker, shutdown) = start(queue, ledger.clone(), router.clone(), config, stats.clone());
    until("the first bundle never ran with three more claimed", || {
        (0..3).all(|j| dir.path().join(format!("0-{j}")).exists())
            && WorkerStats::get(&stats.bundles) >= 4
    })
    .await;
    assert_eq!(WorkerStats::get(&stats.bundles), 4, "holds twice the slots");
    shutdown.stop.cancel();
    until(
        "the bundles not started were not given back while tasks ran",
        || WorkerStats::get(&stats.released) == 3,
    )
    .await;
    assert!(
        router.results("resp").is_empty(),
        "the running tasks still run"
    );
    std::fs::write(&release, "").unwrap();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
    let mut ids: Vec<u64> = router.results("resp").iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2]);
    assert!(matches!(
        ledger.claim(&keys[0], "next", LEASE).await.unwrap(),
        Claim::Done { .. }
    ));
    // Given back untouched: the next claim runs every task, as the same attempt.
    for key in &keys[1..4] {
        assert_eq!(
            ledger.claim(key, "next", LEASE).await.unwrap(),
            Claim::Granted {
                attempt: 1,
                done: BundleProgress::new()
            }
        );
    }
    for i in 1..6 {
        assert!(
            !dir.path().join(i.to_string()).exists(),
            "bundle {i} started after the stop"
        );
    }
}
