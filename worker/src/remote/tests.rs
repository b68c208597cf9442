//! The worker's protocol against the in-memory backends. (The same flows run
//! against SQS and DynamoDB Local in the integration tests.)

use std::collections::HashMap;
use std::sync::Mutex;

use cloudkon_core::ledger::{
    BatchMarks, BundleProgress, Claim, DedupLedger, LedgerError, MemoryLedger, claim_key,
};
use cloudkon_core::queue::{Delivery, MemoryQueue, QueueError, Receipt};
use cloudkon_core::wire::decode_results;
use cloudkon_core::{
    BatchId, Bundle, BundleOptions, Outcome, Task, TaskResult, TaskSpec, Timestamp,
};

use super::*;

#[derive(Default)]
pub(super) struct MemoryRouter {
    sent: Mutex<HashMap<String, Vec<String>>>,
}

impl ResultRouter for MemoryRouter {
    async fn send_results(&self, reply_to: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        self.sent
            .lock()
            .unwrap()
            .entry(reply_to.to_string())
            .or_default()
            .extend(bodies);
        Ok(())
    }
}

impl MemoryRouter {
    fn bodies(&self, reply_to: &str) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .get(reply_to)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn results(&self, reply_to: &str) -> Vec<TaskResult> {
        self.bodies(reply_to)
            .iter()
            .flat_map(|b| decode_results(b).unwrap().results)
            .collect()
    }
}

pub(super) fn bundle(first: u64, specs: Vec<TaskSpec>) -> Bundle {
    Bundle {
        submitted: Timestamp::now(),
        tasks: specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Task {
                batch: BatchId::new("b"),
                id: first + i as u64,
                attempt: 1,
                timeout: None,
                spec,
            })
            .collect(),
        reply_to: Some("resp".into()),
        options: Default::default(),
    }
}

pub(super) fn config() -> RemoteConfig {
    let mut config = RemoteConfig::new(PoolConfig::new(2, "w1"));
    config.receive_wait = Duration::from_millis(50);
    config.linger = Duration::from_millis(1);
    config
}

struct Run {
    reason: StopReason,
    router: Arc<MemoryRouter>,
    stats: Arc<WorkerStats>,
}

async fn run(bundles: Vec<Bundle>, ledger: Option<Arc<MemoryLedger>>, config: RemoteConfig) -> Run {
    let router = Arc::new(MemoryRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let reason = run_through(bundles, ledger, router.clone(), config, stats.clone()).await;
    Run {
        reason,
        router,
        stats,
    }
}

/// A worker on a queue of `bundles` (closed: it stops once they are done),
/// sending results through `router`.
async fn run_through<L: DedupLedger, R: ResultRouter>(
    bundles: Vec<Bundle>,
    ledger: Option<Arc<L>>,
    router: Arc<R>,
    config: RemoteConfig,
    stats: Arc<WorkerStats>,
) -> StopReason {
    let queue = Arc::new(MemoryQueue::bounded(bundles.len().max(1)));
    queue.send(bundles).await.unwrap();
    queue.close();
    run_remote(
        queue,
        ledger,
        router,
        Arc::new(Registry::new()),
        config,
        Shutdown::new(),
        stats,
    )
    .await
}

/// A worker on `queue` until the `Shutdown` returned stops it.
fn start<Q: TaskQueue, L: DedupLedger, R: ResultRouter>(
    queue: Arc<Q>,
    ledger: Option<Arc<L>>,
    router: Arc<R>,
    config: RemoteConfig,
) -> (tokio::task::JoinHandle<StopReason>, Shutdown) {
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(run_remote(
        queue,
        ledger,
        router,
        Arc::new(Registry::new()),
        config,
        shutdown.clone(),
        Arc::new(WorkerStats::default()),
    ));
    (worker, shutdown)
}

fn sleeps(n: usize) -> Vec<TaskSpec> {
    vec![TaskSpec::Sleep { ms: 0 }; n]
}

/// Shell words that wait until the file `gate` exists.
fn wait_for(gate: &std::path::Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.01; done", gate.display())
}

/// A task that adds a line to the file `started` (made by its first run:
/// one line per run), then waits until `gate` exists.
fn started_then_waits(started: &std::path::Path, gate: &std::path::Path) -> TaskSpec {
    TaskSpec::Run {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("echo x >> {}; {}", started.display(), wait_for(gate)),
        ],
        expected_ms: None,
    }
}

/// Waits until `done` holds; fails after 20 s, saying `what` never came.
pub(super) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn every_bundle_runs_once_and_is_recorded_done() {
    let ledger = Arc::new(MemoryLedger::new());
    let bundles = vec![
        bundle(0, sleeps(100)),
        bundle(100, sleeps(100)),
        bundle(200, sleeps(5)),
    ];
    let keys: Vec<String> = bundles.iter().map(claim_key).collect();
    let run = run(bundles, Some(ledger.clone()), config()).await;
    assert_eq!(run.reason, StopReason::Drained);
    let mut ids: Vec<u64> = run.router.results("resp").iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..205).collect::<Vec<_>>());
    for key in keys {
        assert!(matches!(
            ledger.claim(&key, "other", LEASE).await.unwrap(),
            Claim::Done { .. }
        ));
    }
    assert_eq!(WorkerStats::get(&run.stats.tasks_succeeded), 205);
}

const LEASE: Duration = Duration::from_secs(60);

/// The bundle `key` was given back with nothing reported: the next claim
/// runs every task, as the same attempt.
async fn assert_given_back_untouched(ledger: &MemoryLedger, key: &str) {
    assert_eq!(
        ledger.claim(key, "next", LEASE).await.unwrap(),
        Claim::Granted {
            attempt: 1,
            done: BundleProgress::new()
        }
    );
}

#[tokio::test]
async fn a_done_bundle_is_not_run_again_and_its_stored_results_are_resent() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let b = bundle(
        0,
        vec![TaskSpec::Run {
            program: "touch".into(),
            args: vec![marker.display().to_string()],
            expected_ms: None,
        }],
    );
    let ledger = Arc::new(MemoryLedger::new());
    let key = claim_key(&b);
    ledger.claim(&key, "first-worker", LEASE).await.unwrap();
    ledger
        .complete(&key, "first-worker", b"stored results".to_vec())
        .await
        .unwrap();
    let run = run(vec![b], Some(ledger), config()).await;
    assert!(!marker.exists(), "a done bundle ran again");
    assert_eq!(
        run.router.bodies("resp"),
        vec!["stored results".to_string()]
    );
    assert_eq!(WorkerStats::get(&run.stats.resent), 1);
}

#[tokio::test]
async fn a_bundle_held_by_a_live_worker_is_skipped() {
    let b = bundle(0, sleeps(3));
    let ledger = Arc::new(MemoryLedger::new());
    ledger
        .claim(&claim_key(&b), "busy-worker", LEASE)
        .await
        .unwrap();
    let run = run(vec![b], Some(ledger), config()).await;
    assert!(run.router.bodies("resp").is_empty());
    assert_eq!(WorkerStats::get(&run.stats.duplicates), 1);
}

#[tokio::test]
async fn a_dead_workers_bundle_is_taken_over_with_the_next_attempt() {
    let b = bundle(0, sleeps(3));
    let ledger = Arc::new(MemoryLedger::new());
    ledger
        .claim(&claim_key(&b), "dead-worker", Duration::ZERO)
        .await
        .unwrap();
    let run = run(vec![b], Some(ledger), config()).await;
    let results = run.router.results("resp");
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| r.attempt == 2 && r.outcome.is_success())
    );
    assert_eq!(WorkerStats::get(&run.stats.taken_over), 1);
}

#[tokio::test]
async fn a_bundle_whose_workers_keep_dying_is_reported_failed() {
    let b = bundle(0, sleeps(2));
    let ledger = Arc::new(MemoryLedger::new());
    let key = claim_key(&b);
    ledger.claim(&key, "dead-1", Duration::ZERO).await.unwrap();
    ledger.claim(&key, "dead-2", Duration::ZERO).await.unwrap();
    let mut config = config();
    config.max_claims = 2;
    let run = run(vec![b], Some(ledger), config).await;
    let results = run.router.results("resp");
    assert_eq!(results.len(), 2);
    for r in &results {
        let Outcome::Failed { reason } = &r.outcome else {
            panic!("{r:?}")
        };
        assert!(reason.starts_with("gave up: claimed 3 times"), "{reason}");
    }
}

#[tokio::test]
async fn a_second_delivery_to_the_same_worker_while_running_is_held() {
    // Two deliveries of one bundle, one worker: the second claim must not be
    // taken for the first (claims carry a token unique per claim). The task
    // runs until `release`, made once the second delivery was decided on.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let release = dir.path().join("release");
    let b = bundle(0, vec![started_then_waits(&log, &release)]);
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(MemoryRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let worker = tokio::spawn(run_through(
        vec![b.clone(), b],
        Some(ledger),
        router,
        config(),
        stats.clone(),
    ));
    // Held (a duplicate) or claimed again (a second bundle).
    until("the second delivery was never claimed", || {
        WorkerStats::get(&stats.duplicates) + WorkerStats::get(&stats.bundles) >= 2
    })
    .await;
    std::fs::write(&release, "").unwrap();
    assert_eq!(worker.await.unwrap(), StopReason::Drained);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        1,
        "ran twice"
    );
    assert_eq!(WorkerStats::get(&stats.duplicates), 1);
}

#[tokio::test]
async fn without_dedup_every_delivery_runs() {
    let run = run(vec![bundle(0, sleeps(4))], None, config()).await;
    assert_eq!(run.router.results("resp").len(), 4);
}

#[tokio::test]
async fn a_bundle_without_a_response_queue_is_dropped_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut b = bundle(
        0,
        vec![TaskSpec::Run {
            program: "touch".into(),
            args: vec![marker.display().to_string()],
            expected_ms: None,
        }],
    );
    b.reply_to = None;
    let run = run(vec![b], Some(Arc::new(MemoryLedger::new())), config()).await;
    assert_eq!(run.reason, StopReason::Drained);
    assert!(!marker.exists());
}

#[tokio::test]
async fn shutdown_finishes_running_bundles_and_gives_the_rest_back() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let release = dir.path().join("release");
    // Each task runs until `release`, made after the stop.
    let task = |i: u64| TaskSpec::Run {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("touch {}-{i}; {}", started.display(), wait_for(&release)),
        ],
        expected_ms: None,
    };
    let bundles: Vec<Bundle> = (0..6).map(|i| bundle(i, vec![task(i)])).collect();
    let keys: Vec<String> = bundles.iter().map(claim_key).collect();
    let queue = Arc::new(MemoryQueue::bounded(8));
    queue.send(bundles).await.unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(MemoryRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let shutdown = Shutdown::new();
    let mut config = config();
    config.pool.slots = 1;
    config.prefetch = 2;
    let worker = tokio::spawn(run_remote(
        queue.clone(),
        Some(ledger.clone()),
        router.clone(),
        Arc::new(Registry::new()),
        config,
        shutdown.clone(),
        stats.clone(),
    ));
    // Once the first task runs (and the next bundle is claimed: two tasks in
    // hand per slot), stop.
    let first = dir.path().join("started-0");
    until(
        "the first task never ran with the next bundle claimed",
        || first.exists() && WorkerStats::get(&stats.bundles) >= 2,
    )
    .await;
    shutdown.stop.cancel();
    std::fs::write(&release, "").unwrap();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
    // The running bundle finished and reported; the prefetched one was given
    // back, and its next claim is still the first attempt.
    let results = router.results("resp");
    assert_eq!(results.iter().map(|r| r.id).collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        WorkerStats::get(&stats.bundles),
        2,
        "held no more than two tasks"
    );
    assert_eq!(WorkerStats::get(&stats.released), 1);
    assert!(matches!(
        ledger.claim(&keys[0], "next", LEASE).await.unwrap(),
        Claim::Done { .. }
    ));
    assert_given_back_untouched(&ledger, &keys[1]).await;
    for i in 1..6 {
        assert!(
            !dir.path().join(format!("started-{i}")).exists(),
            "bundle {i} started after the stop"
        );
    }
}

#[tokio::test]
async fn a_batch_without_dedup_skips_the_ledger_and_its_retries_win() {
    let ledger = Arc::new(MemoryLedger::new());
    // A batch that asked for at-least-once and 3 attempts, on a worker with
    // a ledger and no retries: `false` fails every time.
    let mut b = bundle(
        0,
        vec![TaskSpec::Run {
            program: "false".into(),
            args: vec![],
            expected_ms: None,
        }],
    );
    b.options = BundleOptions {
        max_attempts: Some(3),
        retry_backoff: Some(Duration::from_millis(1)),
        dedup: Some(false),
    };
    let key = claim_key(&b);
    let run = run(vec![b.clone(), b], Some(ledger.clone()), config()).await;
    let results = run.router.results("resp");
    assert_eq!(results.len(), 2, "both deliveries ran: no claim");
    assert!(results.iter().all(|r| r.attempt == 3), "{results:?}");
    assert!(
        matches!(
            ledger.claim(&key, "other", LEASE).await.unwrap(),
            Claim::Granted { .. }
        ),
        "nothing was written to the ledger"
    );
}

#[tokio::test]
async fn bundles_of_a_cancelled_batch_are_deleted_without_running() {
    let ledger = Arc::new(MemoryLedger::new());
    ledger.cancel_batch("b").await.unwrap();
    let run = run(
        vec![bundle(0, sleeps(3)), bundle(3, sleeps(3))],
        Some(ledger.clone()),
        config(),
    )
    .await;
    assert_eq!(run.reason, StopReason::Drained);
    assert!(run.router.results("resp").is_empty(), "nothing ran");
    assert_eq!(WorkerStats::get(&run.stats.cancelled), 2);
    assert!(!ledger.batch_marks("other").await.unwrap().cancelled);
}

#[tokio::test]
async fn a_taken_over_bundle_runs_only_what_its_dead_holder_had_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let specs: Vec<TaskSpec> = (0..5)
        .map(|i| TaskSpec::Run {
            program: "sh".into(),
            args: vec!["-c".into(), format!("echo {i} >> {}", log.display())],
            expected_ms: None,
        })
        .collect();
    let b = bundle(10, specs);
    let ledger = Arc::new(MemoryLedger::new());
    let key = claim_key(&b);
    // The dead holder had reported tasks 0 and 2 by its last renewal.
    ledger.claim(&key, "dead", Duration::ZERO).await.unwrap();
    let mut reported = BundleProgress::new();
    reported.insert(0);
    reported.insert(2);
    ledger
        .renew(&key, "dead", Duration::ZERO, &reported)
        .await
        .unwrap();
    let run = run(vec![b], Some(ledger.clone()), config()).await;
    let mut ran: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, vec![1, 3, 4], "ran again what was reported");
    let mut ids: Vec<u64> = run.router.results("resp").iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![11, 13, 14]);
    assert_eq!(WorkerStats::get(&run.stats.tasks_skipped), 2);
    assert!(matches!(
        ledger.claim(&key, "other", LEASE).await.unwrap(),
        Claim::Done { .. }
    ));
}

/// A router whose "gone" queue was deleted and whose "down" queue fails.
#[derive(Default)]
struct FlakyRouter {
    inner: MemoryRouter,
}

impl ResultRouter for FlakyRouter {
    async fn send_results(&self, reply_to: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        match reply_to {
            "gone" => Err(QueueError::NotFound(format!(
                "queue {reply_to} does not exist"
            ))),
            "down" => Err(QueueError::Backend("connection refused".into())),
            _ => self.inner.send_results(reply_to, bodies).await,
        }
    }
}

#[tokio::test]
async fn results_for_a_deleted_batch_are_dropped_and_other_batches_go_on() {
    let mut deleted = bundle(0, sleeps(3));
    deleted.reply_to = Some("gone".into());
    let live = bundle(100, sleeps(2));
    let keys = [claim_key(&deleted), claim_key(&live)];
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(FlakyRouter::default());
    let stats = Arc::new(WorkerStats::default());
    // Not cancelled in the ledger: sent again for a while, then dropped.
    let mut config = config();
    config.response_queue_return = Duration::from_millis(300);
    let reason = run_through(
        vec![deleted, live],
        Some(ledger.clone()),
        router.clone(),
        config,
        stats.clone(),
    )
    .await;
    assert_eq!(reason, StopReason::Drained);
    let ids: Vec<u64> = router.inner.results("resp").iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![100, 101]);
    assert!(WorkerStats::get(&stats.results_dropped) >= 1);
    assert_eq!(
        WorkerStats::get(&stats.backend_errors),
        0,
        "not counted as a failing backend"
    );
    for key in &keys {
        assert!(matches!(
            ledger.claim(key, "other", LEASE).await.unwrap(),
            Claim::Done { .. }
        ));
    }
}

#[tokio::test]
async fn a_bundle_whose_results_cannot_be_sent_is_given_back_not_deleted() {
    let mut b = bundle(0, sleeps(3));
    b.reply_to = Some("down".into());
    let key = claim_key(&b);
    let queue = Arc::new(MemoryQueue::bounded(2));
    queue.send(vec![b]).await.unwrap();
    queue.close();
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(FlakyRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(run_remote(
        queue,
        Some(ledger.clone()),
        router,
        Arc::new(Registry::new()),
        config(),
        shutdown.clone(),
        stats.clone(),
    ));
    // The sends keep failing (and are retried); then the worker is aborted.
    while WorkerStats::get(&stats.backend_errors) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.stop.cancel();
    shutdown.abort.cancel();
    worker.await.unwrap();
    // Not completed, not counted as done: given back with nothing reported, so
    // the next claim runs every task, as the same attempt.
    assert_eq!(WorkerStats::get(&stats.released), 1);
    assert_eq!(WorkerStats::get(&stats.tasks_succeeded), 0);
    assert_given_back_untouched(&ledger, &key).await;
}

/// A router whose "gone" queue is not found for its first `missing` sends
/// (deleted by hand, then made again by the batch's runner), or, with
/// `cancel`, is not found and its batch cancelled in the ledger first (the
/// batch deleted through Kubernetes).
struct ReturningRouter {
    inner: MemoryRouter,
    missing: std::sync::atomic::AtomicU32,
    cancel: Option<Arc<MemoryLedger>>,
}

impl ResultRouter for ReturningRouter {
    async fn send_results(&self, reply_to: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        if let Some(ledger) = &self.cancel {
            ledger.cancel_batch("b").await.unwrap();
            return Err(QueueError::NotFound(format!(
                "queue {reply_to} does not exist"
            )));
        }
        let left = self.missing.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.missing
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(QueueError::NotFound(format!(
                "queue {reply_to} does not exist"
            )));
        }
        self.inner.send_results(reply_to, bodies).await
    }
}

#[tokio::test]
async fn results_wait_for_a_response_queue_made_again_while_their_batch_runs() {
    let mut b = bundle(0, sleeps(3));
    b.reply_to = Some("gone".into());
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(ReturningRouter {
        inner: MemoryRouter::default(),
        missing: 3.into(),
        cancel: None,
    });
    let stats = Arc::new(WorkerStats::default());
    let reason = run_through(
        vec![b],
        Some(ledger),
        router.clone(),
        config(),
        stats.clone(),
    )
    .await;
    assert_eq!(reason, StopReason::Drained);
    let mut ids: Vec<u64> = router.inner.results("gone").iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2]);
    assert_eq!(WorkerStats::get(&stats.results_dropped), 0);
}

#[tokio::test]
async fn results_of_a_cancelled_batch_whose_response_queue_is_gone_are_dropped_at_once() {
    let mut b = bundle(0, sleeps(3));
    b.reply_to = Some("gone".into());
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(ReturningRouter {
        inner: MemoryRouter::default(),
        missing: 0.into(),
        cancel: Some(ledger.clone()),
    });
    let stats = Arc::new(WorkerStats::default());
    let mut config = config();
    // What the test would wait without the mark; and the admission's answer
    // (not cancelled) is cached longer than the test.
    config.response_queue_return = Duration::from_secs(600);
    config.cancel_check = Duration::from_secs(600);
    let started = std::time::Instant::now();
    let reason = run_through(vec![b], Some(ledger), router, config, stats.clone()).await;
    assert_eq!(reason, StopReason::Drained);
    assert!(WorkerStats::get(&stats.results_dropped) >= 1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// IAM without `sqs:SendMessage` on the response queues: the worker stops by
/// itself past `give_up_after`, saying so, and gives its bundle back.
#[tokio::test]
async fn a_worker_whose_results_cannot_be_sent_gives_up_and_gives_its_bundles_back() {
    let mut b = bundle(0, sleeps(3));
    b.reply_to = Some("down".into());
    let key = claim_key(&b);
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(FlakyRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let mut config = config();
    config.give_up_after = Some(Duration::from_millis(300));
    let reason = run_through(vec![b], Some(ledger.clone()), router, config, stats.clone()).await;
    let (unable, failing_for, error) = gave_up(reason);
    assert_eq!(unable, Unable::SendResults);
    assert!(failing_for >= Duration::from_millis(300), "{failing_for:?}");
    assert!(error.contains("connection refused"), "{error}");
    assert!(WorkerStats::get(&stats.backend_errors) >= 2);
    assert_eq!(WorkerStats::get(&stats.released), 1);
    assert_eq!(WorkerStats::get(&stats.tasks_succeeded), 0);
    assert_given_back_untouched(&ledger, &key).await;
}

/// What a worker that gave up could not do, for how long, and its last error.
fn gave_up(reason: StopReason) -> (Unable, Duration, String) {
    let StopReason::GaveUp {
        unable,
        failing_for,
        error,
    } = reason
    else {
        panic!("did not give up: {reason:?}");
    };
    (unable, failing_for, error)
}

/// A worker on a ledger that takes claims and refuses every renewal and
/// completion as `refused` says, with a bundle of two tasks, a 3 s lease
/// and a 30 s `give_up_after`.
fn unrenewable(
    refused: Refusal,
) -> (
    Arc<ReceiptQueue>,
    Arc<MemoryRouter>,
    Shutdown,
    tokio::task::JoinHandle<StopReason>,
) {
    let queue = Arc::new(ReceiptQueue::new(vec![bundle(0, sleeps(2))]));
    let router = Arc::new(MemoryRouter::default());
    let mut config = config();
    config.lease = Duration::from_secs(3);
    config.visibility = Duration::from_secs(3);
    config.give_up_after = Some(Duration::from_secs(30));
    let stop = Shutdown::new();
    let ledger = TakenOverLedger {
        refused: Some(refused),
        ..Default::default()
    };
    let worker = tokio::spawn(run_remote(
        queue.clone(),
        Some(Arc::new(ledger)),
        router.clone(),
        Arc::new(Registry::new()),
        config,
        stop.clone(),
        Arc::new(WorkerStats::default()),
    ));
    (queue, router, stop, worker)
}

/// Renewals and completions refused for good: the worker retried the
/// completion for ever, claimed nothing more, and stayed healthy to its
/// probe, holding its bundle's message. Past `give_up_after` it stops,
/// saying why, and gives the bundle back.
#[tokio::test(start_paused = true)]
async fn a_worker_whose_leases_cannot_be_renewed_gives_up_and_gives_its_bundles_back() {
    let (queue, router, _stop, worker) = unrenewable(Refusal::ForGood);
    let reason = tokio::time::timeout(Duration::from_secs(600), worker)
        .await
        .expect("still running after 10 minutes")
        .unwrap();
    let (unable, failing_for, error) = gave_up(reason);
    assert_eq!(unable, Unable::Renew);
    assert!(failing_for >= Duration::from_secs(30), "{failing_for:?}");
    assert!(error.contains("AccessDenied"), "{error}");
    assert_eq!(router.results("resp").len(), 2, "its results were sent");
    assert_eq!(queue.counts(), (0, 1), "its message given back");
}

/// The same for an outage (renewals unanswered): the worker waits it out,
/// its tasks going on, rather than stop them two minutes in.
#[tokio::test(start_paused = true)]
async fn a_worker_rides_out_a_ledger_outage_past_its_give_up_period() {
    let (_, _, stop, worker) = unrenewable(Refusal::Outage);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!worker.is_finished(), "{:?}", worker.await);
    stop.abort.cancel();
    stop.stop.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

/// A batch whose response queue is missing ("gone", its batch not
/// cancelled: sent to again for `response_queue_return`) or failing
/// ("down", for `give_up_after`) must not hold back another batch's results
/// on the same worker: each queue is tried once per flush, then at its own
/// backoff.
#[tokio::test]
async fn a_missing_or_failing_response_queue_does_not_hold_back_other_batches_results() {
    let mut missing = bundle(0, sleeps(3));
    missing.reply_to = Some("gone".into());
    let mut failing = bundle(10, sleeps(3));
    failing.reply_to = Some("down".into());
    // Ends after both: their results are flushed (and fail) first.
    let live = bundle(
        100,
        vec![TaskSpec::Sleep { ms: 300 }, TaskSpec::Sleep { ms: 300 }],
    );
    let queue = Arc::new(MemoryQueue::bounded(3));
    queue.send(vec![missing, failing, live]).await.unwrap();
    queue.close();
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(FlakyRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let shutdown = Shutdown::new();
    let mut config = config();
    config.pool.slots = 4;
    // Longer than the test: neither is dropped nor given back meanwhile.
    config.response_queue_return = Duration::from_secs(600);
    config.give_up_after = Some(Duration::from_secs(600));
    let worker = tokio::spawn(run_remote(
        queue,
        Some(ledger.clone()),
        router.clone(),
        Arc::new(Registry::new()),
        config,
        shutdown.clone(),
        stats.clone(),
    ));
    let started = std::time::Instant::now();
    while router.inner.results("resp").len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the live batch's results wait behind the failing queues"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Sent while the other two were still being tried.
    assert!(WorkerStats::get(&stats.backend_errors) >= 1);
    assert_eq!(WorkerStats::get(&stats.results_dropped), 0);
    assert_eq!(WorkerStats::get(&stats.released), 0);
    shutdown.stop.cancel();
    shutdown.abort.cancel();
    // (Drained, maybe: the queue was, while the completer still tried.)
    let reason = worker.await.unwrap();
    assert!(!matches!(reason, StopReason::GaveUp { .. }), "{reason:?}");
    // Their bundles go back unreported: another worker runs them.
    assert_eq!(WorkerStats::get(&stats.released), 2);
    assert_eq!(WorkerStats::get(&stats.tasks_succeeded), 2);
}

/// Whether a batch whose response queue is missing was cancelled is asked
/// of the ledger in the completer's round: a ledger that does not answer
/// holds that round (every batch's results) for 1 s at most, not for the
/// claim's 10 s, each round again while the queue is missing.
#[tokio::test]
async fn a_stalled_cancel_question_does_not_hold_back_other_batches_results() {
    let mut missing = bundle(0, vec![TaskSpec::Sleep { ms: 0 }]);
    missing.reply_to = Some("gone".into());
    for t in &mut missing.tasks {
        t.batch = BatchId::new("old");
    }
    // Ends after the first round has asked about "old".
    let live = bundle(
        100,
        vec![TaskSpec::Sleep { ms: 300 }, TaskSpec::Sleep { ms: 300 }],
    );
    let queue = Arc::new(MemoryQueue::bounded(2));
    queue.send(vec![missing, live]).await.unwrap();
    queue.close();
    let ledger = Arc::new(CountingLedger::default());
    // Its admission is answered; the completer's question never is.
    *ledger.stalled_marks.lock().unwrap() = Some(("old".into(), 0));
    let router = Arc::new(FlakyRouter::default());
    let mut config = config();
    config.pool.slots = 4;
    config.response_queue_return = Duration::from_secs(600);
    config.cancel_check = Duration::from_secs(600);
    let (worker, shutdown) = start(queue, Some(ledger.clone()), router.clone(), config);
    let started = std::time::Instant::now();
    while router.inner.results("resp").len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the live batch's results wait behind the question on the other"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ledger.stalled_marks.lock().unwrap().as_ref().unwrap().1 >= 2);
    shutdown.stop.cancel();
    shutdown.abort.cancel();
    worker.await.unwrap();
}

/// A policy on one batch's response queue refuses the worker's sends while
/// its other batches' go through: past `give_up_after` the worker gives that
/// batch's bundle back (for a worker that can send, or the dead-letter
/// queue) and goes on, rather than stopping and dropping every batch's work.
#[tokio::test]
async fn a_queue_refused_while_other_batches_results_go_gives_its_bundles_back() {
    let mut refused = bundle(0, sleeps(3));
    refused.reply_to = Some("down".into());
    let key = claim_key(&refused);
    let mut bundles = vec![refused];
    bundles.extend((0..6).map(|i| bundle(100 + i, vec![TaskSpec::Sleep { ms: 100 }])));
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(FlakyRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let mut config = config();
    config.give_up_after = Some(Duration::from_millis(300));
    let reason = run_through(
        bundles,
        Some(ledger.clone()),
        router.clone(),
        config,
        stats.clone(),
    )
    .await;
    assert_eq!(reason, StopReason::Drained);
    let mut ids: Vec<u64> = router.inner.results("resp").iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (100..106).collect::<Vec<_>>());
    assert_eq!(WorkerStats::get(&stats.released), 1);
    assert_given_back_untouched(&ledger, &key).await;
}

#[tokio::test]
async fn a_bundles_tasks_run_on_all_the_slots_and_results_leave_as_they_finish() {
    // One bundle, four slots: each task waits until all four have started.
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "touch {0}/$$; while [ $(ls {0} | wc -l) -lt 4 ]; do sleep 0.01; done",
        dir.path().display()
    );
    let mut b = bundle(
        0,
        vec![
            TaskSpec::Run {
                program: "sh".into(),
                args: vec!["-c".into(), script],
                expected_ms: None
            };
            4
        ],
    );
    for t in &mut b.tasks {
        t.timeout = Some(Duration::from_secs(20));
    }
    let mut config = config();
    config.pool.slots = 4;
    let run = run(vec![b], Some(Arc::new(MemoryLedger::new())), config).await;
    let results = run.router.results("resp");
    assert_eq!(results.len(), 4);
    assert!(
        results.iter().all(|r| r.outcome.is_success()),
        "{results:?}"
    );
}

#[tokio::test]
async fn a_bundles_results_leave_together_at_its_end_not_after_the_linger() {
    let mut config = config();
    config.linger = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let run = run(
        vec![bundle(0, sleeps(5)), bundle(5, sleeps(3))],
        Some(Arc::new(MemoryLedger::new())),
        config,
    )
    .await;
    assert_eq!(run.reason, StopReason::Drained);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the linger: {:?}",
        started.elapsed()
    );
    // One message per bundle, each with every result of it.
    let mut sizes: Vec<usize> = run
        .router
        .bodies("resp")
        .iter()
        .map(|b| decode_results(b).unwrap().results.len())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![3, 5]);
}

#[tokio::test]
async fn a_cancel_leaves_the_unstarted_tasks_of_a_bundle_already_running() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let specs: Vec<TaskSpec> = (0..40)
        .map(|i| TaskSpec::Run {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!("echo {i} >> {}; sleep 0.2", log.display()),
            ],
            expected_ms: None,
        })
        .collect();
    let ledger = Arc::new(MemoryLedger::new());
    let queue = Arc::new(MemoryQueue::bounded(2));
    queue.send(vec![bundle(0, specs)]).await.unwrap();
    queue.close();
    let stats = Arc::new(WorkerStats::default());
    let mut config = config();
    config.pool.slots = 1;
    // Shorter than the default 3 s: the worker asks at the period it is given.
    let check = Duration::from_secs(1);
    config.cancel_check = check;
    let worker = tokio::spawn(run_remote(
        queue,
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        Arc::new(Registry::new()),
        config,
        Shutdown::new(),
        stats.clone(),
    ));
    while !log.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledger.cancel_batch("b").await.unwrap();
    worker.await.unwrap();
    let ran = std::fs::read_to_string(&log).unwrap().lines().count();
    // 40 tasks of 0.2 s on one slot take 8 s; the cancel is seen within
    // the cancel check's period plus the task running then.
    let bound = (check.as_secs_f64() / 0.2) as usize + 2;
    assert!(
        ran <= bound,
        "{ran} of 40 ran after the cancel (bound {bound})"
    );
    assert!(WorkerStats::get(&stats.cancelled) >= 1);
}

/// The instance metadata service as far as spot notices go, on loopback:
/// IMDSv2 tokens, and `notice`'s body once it is set.
async fn metadata_stub() -> (String, Arc<Mutex<Option<String>>>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, put};

    let notice = Arc::new(Mutex::new(None::<String>));
    let shown = notice.clone();
    let app = axum::Router::new()
        .route(
            "/latest/api/token",
            put(|headers: HeaderMap| async move {
                match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(_) => (StatusCode::OK, "token-1".to_string()),
                    None => (StatusCode::BAD_REQUEST, String::new()),
                }
            }),
        )
        .route(
            "/latest/meta-data/spot/instance-action",
            get(move |headers: HeaderMap| {
                let shown = shown.clone();
                async move {
                    if headers
                        .get("x-aws-ec2-metadata-token")
                        .is_none_or(|t| t != "token-1")
                    {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    match shown.lock().unwrap().clone() {
                        Some(body) => (StatusCode::OK, body),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                }
            }),
        )
        .route(
            "/latest/meta-data/events/recommendations/rebalance",
            get(|| async { StatusCode::NOT_FOUND }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), notice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_drains_the_worker_and_only_what_cannot_finish_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // Bundle 1 takes 30 s and cannot finish before the interruption; the
    // others take 0.3 s. Each run appends to its `runs-<i>` file.
    let task = |i: u64| {
        let seconds = if i == 1 { 30.0 } else { 0.3 };
        TaskSpec::Run {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!("echo run >> {0}/runs-{i}; sleep {seconds}", path.display()),
            ],
            expected_ms: None,
        }
    };
    let n = 8;
    let bundles: Vec<Bundle> = (0..n).map(|i| bundle(i, vec![task(i)])).collect();
    let keys: Vec<String> = bundles.iter().map(claim_key).collect();
    let queue = Arc::new(MemoryQueue::bounded(16));
    queue.send(bundles).await.unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(MemoryRouter::default());
    let (endpoint, notice) = metadata_stub().await;
    let shutdown = Shutdown::new();
    let spot = tokio::spawn(crate::spot::watch(
        crate::spot::SpotConfig {
            endpoint,
            poll: Duration::from_millis(100),
            margin: Duration::from_millis(1500),
            on_rebalance: false,
        },
        shutdown.clone(),
    ));
    let mut config = config();
    config.pool.slots = 2;
    config.prefetch = 2;
    let first = tokio::spawn(run_remote(
        queue.clone(),
        Some(ledger.clone()),
        router.clone(),
        Arc::new(Registry::new()),
        config.clone(),
        shutdown.clone(),
        Arc::new(WorkerStats::default()),
    ));
    let runs = |i: u64| {
        std::fs::read_to_string(dir.path().join(format!("runs-{i}")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while runs(1) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two minutes' notice, scaled down: the instance goes in 4 s.
    let at = std::time::SystemTime::now() + Duration::from_secs(4);
    *notice.lock().unwrap() = Some(format!(
        r#"{{"action": "terminate", "time": "{}"}}"#,
        humantime::format_rfc3339(at)
    ));
    assert_eq!(first.await.unwrap(), StopReason::Shutdown);
    assert!(
        std::time::SystemTime::now() < at,
        "the worker was still at work when the instance went"
    );
    spot.await.unwrap();
    // Nothing lost: each bundle is either reported done, or free for the
    // next worker as its first attempt (given back; a give-back is no failed
    // attempt). Only what could not finish ran without its result: the long
    // task. (The in-memory queue does not deliver again; SQS does, tested
    // against fauxqs.)
    let reported: Vec<u64> = router.results("resp").iter().map(|r| r.id).collect();
    assert!(!reported.contains(&1), "the long task cannot have finished");
    assert!(reported.contains(&0), "{reported:?}");
    for (i, key) in keys.iter().enumerate() {
        let i = i as u64;
        let claim = ledger.claim(key, "next", LEASE).await.unwrap();
        if reported.contains(&i) {
            assert!(matches!(claim, Claim::Done { .. }), "{i}: {claim:?}");
            assert_eq!(runs(i), 1, "{i}");
        } else {
            assert_eq!(
                claim,
                Claim::Granted {
                    attempt: 1,
                    done: BundleProgress::new()
                },
                "bundle {i} was not given back"
            );
            let want = usize::from(i == 1);
            assert_eq!(runs(i), want, "bundle {i} ran {} times", runs(i));
        }
    }
}

/// A router that counts its sends as the SDK's interceptor counts requests.
struct CountingRouter {
    inner: MemoryRouter,
    requests: cloudkon_core::aws::RequestStats,
}

impl ResultRouter for CountingRouter {
    async fn send_results(&self, reply_to: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        self.requests.record_request("SQS", "SendMessageBatch");
        self.inner.send_results(reply_to, bodies).await
    }
}

#[tokio::test]
async fn results_carry_the_workers_requests_and_time_and_their_sum_is_what_it_spent() {
    let requests = cloudkon_core::aws::RequestStats::default();
    let router = Arc::new(CountingRouter {
        inner: MemoryRouter::default(),
        requests: requests.clone(),
    });
    let stats = Arc::new(WorkerStats::with_requests(requests.clone()));
    let mut other = bundle(100, vec![TaskSpec::Sleep { ms: 20 }; 10]);
    other.reply_to = Some("resp-2".into());
    let bundles = vec![bundle(0, vec![TaskSpec::Sleep { ms: 5 }; 30]), other];
    let started = std::time::Instant::now();
    run_through(
        bundles,
        Some(Arc::new(MemoryLedger::new())),
        router.clone(),
        config(),
        stats.clone(),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut carried = cloudkon_core::Usage::default();
    for reply_to in ["resp", "resp-2"] {
        let mut batch = cloudkon_core::Usage::default();
        for body in router.inner.bodies(reply_to) {
            batch.add(&decode_results(&body).unwrap().usage);
        }
        assert!(batch.worker_seconds > 0.0, "{reply_to}: {batch:?}");
        carried.add(&batch);
    }
    let charged = stats.charged();
    assert!((carried.requests() - charged.requests()).abs() < 1e-9);
    assert!((carried.worker_seconds - charged.worker_seconds).abs() < 1e-9);
    // Every send but the last is charged: the last one's share would go
    // with results that never come.
    let sent = requests.snapshot().total() as f64;
    assert!(sent >= 2.0, "{sent}");
    assert!(
        (charged.sqs_requests - (sent - 1.0)).abs() < 1e-9,
        "{charged:?}, {sent} sends"
    );
    assert!(
        charged.worker_seconds <= elapsed,
        "{charged:?} in {elapsed} s"
    );
}

/// A queue that hands out receipts, as SQS does: a message received is hidden
/// until it is deleted or given back, so a test can see what a worker holds.
#[derive(Default)]
struct ReceiptQueue {
    /// Each message, and whether it is held (received, not given back).
    messages: Mutex<Vec<(Bundle, bool)>>,
    receives: std::sync::atomic::AtomicUsize,
    /// Visibility requests: one message, many at once.
    extends: std::sync::atomic::AtomicUsize,
    extend_alls: std::sync::atomic::AtomicUsize,
    /// Deletes asked for, each refused for good (a receipt SQS no longer
    /// takes); the other tests finish nothing.
    refused_acks: std::sync::atomic::AtomicUsize,
    /// Messages given back.
    releases: std::sync::atomic::AtomicUsize,
    /// A send wakes a receive waiting on an empty queue, as a long poll.
    sent: tokio::sync::Notify,
    /// Each single extension's timeout.
    extended_by: Mutex<Vec<Duration>>,
    /// Whether a message held comes back once its last single extension
    /// ends (as SQS's do), and when each does; the other tests' messages
    /// stay held until given back.
    timed: bool,
    visible_at: Mutex<std::collections::HashMap<usize, tokio::time::Instant>>,
    /// While set, extensions of many at once wait (counted in `stalled`)
    /// until it is cleared and `resumed` notified, and land then: a slow
    /// SQS.
    stalling: std::sync::atomic::AtomicBool,
    stalled: std::sync::atomic::AtomicUsize,
    resumed: tokio::sync::Notify,
}

impl ReceiptQueue {
    fn new(bundles: Vec<Bundle>) -> Self {
        Self {
            messages: Mutex::new(bundles.into_iter().map(|b| (b, false)).collect()),
            receives: Default::default(),
            extends: Default::default(),
            extend_alls: Default::default(),
            refused_acks: Default::default(),
            releases: Default::default(),
            sent: Default::default(),
            extended_by: Default::default(),
            timed: false,
            visible_at: Default::default(),
            stalling: Default::default(),
            stalled: Default::default(),
            resumed: Default::default(),
        }
    }

    /// Lets the extensions waiting (see `stalling`) go on.
    fn resume(&self) {
        self.stalling
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    /// A queue whose messages come back once their last extension ends, as
    /// SQS's do.
    fn timed(bundles: Vec<Bundle>) -> Self {
        Self {
            timed: true,
            ..Self::new(bundles)
        }
    }

    /// Hides message `receipt` for `timeout` from now, if timed: visible
    /// or not, as SQS does with a receipt not yet replaced by a newer one.
    fn hide(&self, receipt: &Receipt, timeout: Duration) {
        if self.timed {
            let i: usize = receipt.0.parse().unwrap();
            self.messages.lock().unwrap()[i].1 = true;
            self.visible_at
                .lock()
                .unwrap()
                .insert(i, tokio::time::Instant::now() + timeout);
        }
    }

    /// (held, visible) messages.
    fn counts(&self) -> (usize, usize) {
        let messages = self.messages.lock().unwrap();
        let held = messages.iter().filter(|(_, h)| *h).count();
        (held, messages.len() - held)
    }

    /// Hides and hands out up to `max` visible messages.
    fn take(&self, max: usize) -> Vec<Delivery> {
        let mut messages = self.messages.lock().unwrap();
        let now = tokio::time::Instant::now();
        self.visible_at.lock().unwrap().retain(|&i, at| {
            let back = *at <= now;
            if back {
                messages[i].1 = false;
            }
            !back
        });
        messages
            .iter_mut()
            .enumerate()
            .filter(|(_, (_, held))| !*held)
            .take(max)
            .map(|(i, (bundle, held))| {
                *held = true;
                if self.timed {
                    // The queue's own visibility timeout (SQS's default).
                    self.visible_at
                        .lock()
                        .unwrap()
                        .insert(i, now + Duration::from_secs(30));
                }
                Delivery {
                    bundle: bundle.clone(),
                    receipt: Some(Receipt(i.to_string())),
                    receive_count: 1,
                    priority: false,
                }
            })
            .collect()
    }
}

impl TaskQueue for ReceiptQueue {
    async fn send(&self, bundles: Vec<Bundle>) -> Result<(), QueueError> {
        self.messages
            .lock()
            .unwrap()
            .extend(bundles.into_iter().map(|b| (b, false)));
        self.sent.notify_waiters();
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<Delivery>>, QueueError> {
        self.receives
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = self.sent.notified();
        let got = self.take(max);
        if !got.is_empty() {
            return Ok(Some(got));
        }
        let until = tokio::time::Instant::now() + wait;
        let back = self.visible_at.lock().unwrap().values().min().copied();
        tokio::select! {
            _ = tokio::time::sleep_until(back.map_or(until, |b| b.min(until))) => Ok(Some(self.take(max))),
            _ = sent => Ok(Some(self.take(max))),
        }
    }

    async fn ack(&self, _receipts: Vec<Receipt>) -> Result<(), QueueError> {
        self.refused_acks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(QueueError::Refused(
            "ReceiptHandleIsInvalid: the receipt handle has expired".into(),
        ))
    }

    async fn extend(&self, receipt: &Receipt, timeout: Duration) -> Result<(), QueueError> {
        self.extends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.extended_by.lock().unwrap().push(timeout);
        self.hide(receipt, timeout);
        if self.timed {
            // A receive under way waits for it too (one message hidden for a
            // while; the heartbeats' extensions of all need no look).
            self.sent.notify_waiters();
        }
        Ok(())
    }

    async fn extend_all(
        &self,
        receipts: Vec<Receipt>,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        assert!(receipts.len() <= 10, "one request");
        self.extend_alls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.stalling.load(std::sync::atomic::Ordering::SeqCst) {
            // Meanwhile the messages stay hidden, as by a long extension
            // before: a test waiting on a real process lets paused time run
            // past a short one.
            for receipt in &receipts {
                self.hide(receipt, Duration::from_secs(3600));
            }
            self.stalled
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            loop {
                let resumed = self.resumed.notified();
                if !self.stalling.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                resumed.await;
            }
        }
        for receipt in &receipts {
            self.hide(receipt, timeout);
        }
        Ok(())
    }

    async fn release(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.releases
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let i: usize = receipt.0.parse().unwrap();
        self.messages.lock().unwrap()[i].1 = false;
        self.visible_at.lock().unwrap().remove(&i);
        self.sent.notify_waiters();
        Ok(())
    }
}

// Paused time: the clock moves only when every task of the test waits, so
// "after a second" means "once the worker has done all it would".
#[tokio::test(start_paused = true)]
async fn a_worker_holds_no_long_task_ahead_and_gives_what_it_holds_back_at_once() {
    // Six bundles of one ten-minute task, two slots: the worker holds a task
    // per slot (its slots free one within `HOLD_AHEAD` far less than once),
    // not two per slot, which hid from other workers tasks they could run now.
    let bundles: Vec<Bundle> = (0..6)
        .map(|i| bundle(i, vec![TaskSpec::Sleep { ms: 600_000 }]))
        .collect();
    let queue = Arc::new(ReceiptQueue::new(bundles));
    let stats = Arc::new(WorkerStats::default());
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(run_remote(
        queue.clone(),
        Some(Arc::new(MemoryLedger::new())),
        Arc::new(MemoryRouter::default()),
        Arc::new(Registry::new()),
        config(),
        shutdown.clone(),
        stats.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(queue.counts(), (2, 4), "held, visible");
    assert_eq!(WorkerStats::get(&stats.held), 2);
    // The first receive asks for one bundle (its size unknown), the next
    // for the one the hold still wants; then none.
    assert_eq!(queue.receives.load(std::sync::atomic::Ordering::Relaxed), 2);
    // Both visibilities are renewed in one request each third of the lease.
    let lease = config().lease;
    tokio::time::sleep(lease).await;
    let count = |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(count(&queue.extend_alls), 3, "renewals in one lease");
    assert_eq!(count(&queue.extends), 0, "none one by one");
    shutdown.stop.cancel();
    shutdown.abort.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
    assert_eq!(queue.counts(), (0, 6), "all given back");
}

#[tokio::test]
async fn a_delete_refused_for_good_does_not_hold_the_next_results() {
    // One slot, three bundles of a 100 ms task, every delete refused: each
    // bundle is completed in the ledger (its next delivery is deleted
    // then), and the next bundles' results still go out. Retried, the
    // first refusal held the results loop for good.
    let task = || TaskSpec::Run {
        program: "sleep".into(),
        args: vec!["0.1".into()],
        expected_ms: None,
    };
    let bundles: Vec<Bundle> = (0..3).map(|i| bundle(i, vec![task()])).collect();
    let queue = Arc::new(ReceiptQueue::new(bundles));
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(MemoryRouter::default());
    let mut config = config();
    config.pool.slots = 1;
    let (worker, shutdown) = start(queue.clone(), Some(ledger.clone()), router.clone(), config);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while router.results("resp").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "results of {} bundles out, {} deletes refused",
            router.results("resp").len(),
            queue
                .refused_acks
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = queue
        .refused_acks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=3).contains(&refused), "{refused} deletes asked");
    for id in 0..3 {
        let key = claim_key(&bundle(id, vec![task()]));
        let claim = ledger.claim(&key, "another", Duration::from_secs(60)).await;
        assert!(
            matches!(claim, Ok(Claim::Done { .. })),
            "bundle {id}: {claim:?}"
        );
    }
    shutdown.stop.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

// Paused time: the ledger's stall takes no wall time.
#[tokio::test(start_paused = true)]
async fn a_claim_answered_after_the_worker_stopped_waiting_is_given_back() {
    // The claim lands 15 s after it was asked, past the 10 s the worker
    // waits: granted to an owner token never used again, it held the
    // bundle for a lease (the next claim `Held`), then went to a take-over
    // as one attempt more. Given back as it lands, the next claim gets it
    // at once, as the first attempt.
    let b = bundle(0, vec![TaskSpec::Sleep { ms: 1000 }]);
    let key = claim_key(&b);
    let queue = Arc::new(ReceiptQueue::new(vec![b]));
    let ledger = Arc::new(CountingLedger::default());
    *ledger.slow_claim.lock().unwrap() = Some(Duration::from_secs(15));
    let (worker, shutdown) = start(
        queue.clone(),
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        config(),
    );
    tokio::time::sleep(Duration::from_secs(16)).await;
    let claim = ledger
        .inner
        .claim(&key, "another", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        matches!(claim, Claim::Granted { attempt: 1, .. }),
        "{claim:?}"
    );
    shutdown.stop.cancel();
    shutdown.abort.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

/// The in-memory ledger, counting the cancel checks asked of it and
/// recording its claims and renewals in order; its renewals fail while
/// `failing_renewals` is set (a throttled table).
#[derive(Default)]
struct CountingLedger {
    inner: MemoryLedger,
    cancel_checks: std::sync::atomic::AtomicUsize,
    failing_renewals: std::sync::atomic::AtomicBool,
    calls: Mutex<Vec<LedgerCall>>,
    /// The next claim answers after this long (a ledger that stalls).
    slow_claim: Mutex<Option<Duration>>,
    /// Claims fail while set (a ledger down).
    failing_claims: std::sync::atomic::AtomicBool,
    /// Reads of this batch's marks after its first never answer (a ledger
    /// that stalls on one item).
    stalled_marks: Mutex<Option<(String, usize)>>,
}

impl CountingLedger {
    fn cancel_checks(&self) -> usize {
        self.cancel_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn calls(&self) -> Vec<LedgerCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl DedupLedger for CountingLedger {
    async fn cancel_batch(&self, batch: &str) -> Result<(), LedgerError> {
        self.inner.cancel_batch(batch).await
    }

    async fn batch_marks(&self, batch: &str) -> Result<BatchMarks, LedgerError> {
        self.cancel_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stall = match &mut *self.stalled_marks.lock().unwrap() {
            Some((stalled, asked)) if stalled == batch => {
                *asked += 1;
                *asked > 1
            }
            _ => false,
        };
        if stall {
            std::future::pending::<()>().await;
        }
        self.inner.batch_marks(batch).await
    }

    async fn mark_lane(&self, batch: &str, at_ms: u64) -> Result<(), LedgerError> {
        self.inner.mark_lane(batch, at_ms).await
    }

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim, LedgerError> {
        self.calls
            .lock()
            .unwrap()
            .push(LedgerCall::Claim(key.to_string()));
        let slow = self.slow_claim.lock().unwrap().take();
        if let Some(slow) = slow {
            tokio::time::sleep(slow).await;
        }
        if self
            .failing_claims
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(LedgerError::Unavailable("connection refused".into()));
        }
        self.inner.claim(key, owner, lease).await
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        done: &BundleProgress,
    ) -> Result<bool, LedgerError> {
        if self
            .failing_renewals
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.calls.lock().unwrap().push(LedgerCall::RenewFailed);
            return Err(LedgerError::Unavailable("throttled".into()));
        }
        self.calls.lock().unwrap().push(LedgerCall::Renewed);
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

/// A worker of one slot on `main` and its priority `lane`, asking `ledger`
/// about its batches (lane marks included) every 100 ms.
fn one_slot_lane_worker<L: DedupLedger + Send + Sync + 'static>(
    main: MemoryQueue,
    lane: MemoryQueue,
    ledger: Arc<L>,
) -> (
    tokio::task::JoinHandle<StopReason>,
    Arc<WorkerStats>,
    Shutdown,
) {
    let stats = Arc::new(WorkerStats::default());
    let shutdown = Shutdown::new();
    let mut config = config();
    config.pool.slots = 1;
    config.cancel_check = Duration::from_millis(100);
    let worker = tokio::spawn(run_remote(
        Arc::new(cloudkon_core::queue::Lanes::new(main, Some(lane))),
        Some(ledger),
        Arc::new(MemoryRouter::default()),
        Arc::new(Registry::new()),
        config,
        shutdown.clone(),
        stats.clone(),
    ));
    (worker, stats, shutdown)
}

#[tokio::test]
async fn a_lane_mark_has_a_worker_whose_slots_are_taken_look_at_the_lane() {
    // One slot and a bundle of ten tasks of batch b: the worker holds
    // enough, and would receive again only as b's tasks end. Another
    // batch's bundle comes to the priority lane with a lane mark on b: read
    // with b's next cancel check (every 100 ms), it has the worker take the
    // lane's bundle, which runs next, ahead of b's tasks held. b's tasks
    // run until `release`, made once the lane's bundle was taken.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let release = dir.path().join("release");
    let task = |name: &str| TaskSpec::Run {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("echo {name} >> {}; {}", log.display(), wait_for(&release)),
        ],
        expected_ms: None,
    };
    let started = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let main = MemoryQueue::bounded(4);
    let lane = MemoryQueue::bounded(4);
    let b_tasks = (0..10).map(|i| task(&format!("b{i}"))).collect();
    main.send(vec![bundle(0, b_tasks)]).await.unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    let (worker, stats, shutdown) = one_slot_lane_worker(main, lane.clone(), ledger.clone());
    until("b0 never started", || started().contains(&"b0".to_string())).await;
    let mut newcomer = bundle(100, vec![task("n")]);
    newcomer.tasks[0].batch = BatchId::new("n");
    lane.send(vec![newcomer]).await.unwrap();
    ledger
        .mark_lane("b", Timestamp::now().0 / 1000)
        .await
        .unwrap();
    // Counted as claimed, and handed to the pool in the same poll (this
    // runtime has one thread): it waits in the pool's lane when released.
    until("the lane's bundle was never taken", || {
        WorkerStats::get(&stats.bundles) >= 2
    })
    .await;
    assert_eq!(
        WorkerStats::get(&stats.lane_marked),
        1,
        "taken for the mark"
    );
    std::fs::write(&release, "").unwrap();
    until("n never started", || started().contains(&"n".to_string())).await;
    let order = started();
    let before = order.iter().take_while(|t| *t != "n").count();
    // b0 running, b1 in hand, and b2 at worst (already on its way to the
    // slot when n came); without the mark, n is not taken while b's tasks
    // run.
    assert!(
        before <= 3,
        "n started after {before} of b's tasks: {order:?}"
    );
    shutdown.stop.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

#[tokio::test]
async fn a_look_at_the_lane_claims_no_more_once_the_ledger_is_down() {
    // As above, a worker whose one slot is taken is told of the lane by a
    // mark; the lane holds three bundles and the ledger is down by then.
    // The first claim fails: the others taken are hidden without a claim
    // each (which would wait as long to fail as well), as the main loop
    // does.
    let dir = tempfile::tempdir().unwrap();
    let (started, release) = (dir.path().join("started"), dir.path().join("release"));
    let first = started_then_waits(&started, &release);
    let main = MemoryQueue::bounded(4);
    let lane = MemoryQueue::bounded(4);
    main.send(vec![bundle(0, vec![first, TaskSpec::Sleep { ms: 0 }])])
        .await
        .unwrap();
    let ledger = Arc::new(CountingLedger::default());
    let (worker, stats, shutdown) = one_slot_lane_worker(main, lane.clone(), ledger.clone());
    until("the first task never started", || started.exists()).await;
    let claims = || {
        ledger
            .calls()
            .iter()
            .filter(|c| matches!(c, LedgerCall::Claim(_)))
            .count()
    };
    let before = claims();
    let errors = WorkerStats::get(&stats.backend_errors);
    ledger
        .failing_claims
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let newcomers = (0..3)
        .map(|i| {
            let mut b = bundle(100 + i, vec![TaskSpec::Sleep { ms: 0 }]);
            b.tasks[0].batch = BatchId::new("n");
            b
        })
        .collect();
    lane.send(newcomers).await.unwrap();
    ledger
        .inner
        .mark_lane("b", Timestamp::now().0 / 1000)
        .await
        .unwrap();
    // As many taken as the worker has room for (two here), each hidden.
    let taken = || WorkerStats::get(&stats.lane_marked);
    until("the lane's bundles were never hidden", || {
        taken() >= 2 && WorkerStats::get(&stats.backend_errors) >= errors + taken()
    })
    .await;
    assert_eq!(
        claims() - before,
        1,
        "one claim for the {} bundles taken",
        taken()
    );
    std::fs::write(&release, "").unwrap();
    shutdown.stop.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

/// A queue that counts its receives.
#[derive(Clone)]
struct CountingQueue {
    inner: MemoryQueue,
    receives: Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingQueue {
    fn new(inner: MemoryQueue) -> Self {
        Self {
            inner,
            receives: Default::default(),
        }
    }

    fn receives(&self) -> usize {
        self.receives.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl TaskQueue for CountingQueue {
    async fn send(&self, bundles: Vec<Bundle>) -> Result<(), QueueError> {
        self.inner.send(bundles).await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<Delivery>>, QueueError> {
        self.receives
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.receive(max, wait).await
    }

    async fn ack(&self, receipts: Vec<Receipt>) -> Result<(), QueueError> {
        self.inner.ack(receipts).await
    }
}

#[tokio::test]
async fn a_worker_told_by_lane_marks_receives_without_looking_at_the_lane() {
    // Two slots and bundles of four 50 ms tasks: the worker receives again
    // while it holds tasks not started, so it watches their batch, and its
    // lane marks would tell it of the lane's bundles; those receives ask
    // the main queue alone. Then a mark has it look at the lane.
    let main = CountingQueue::new(MemoryQueue::bounded(64));
    let lane = CountingQueue::new(MemoryQueue::bounded(4));
    let sleep = || TaskSpec::Run {
        program: "sleep".into(),
        args: vec!["0.05".into()],
        expected_ms: None,
    };
    let bundles: Vec<Bundle> = (0..12)
        .map(|i| bundle(i * 4, (0..4).map(|_| sleep()).collect()))
        .collect();
    main.send(bundles).await.unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    let router = Arc::new(MemoryRouter::default());
    let mut config = config();
    config.cancel_check = Duration::from_millis(100);
    let (worker, shutdown) = start(
        Arc::new(cloudkon_core::queue::Lanes::new(
            main.clone(),
            Some(lane.clone()),
        )),
        Some(ledger.clone()),
        router.clone(),
        config,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while router.results("resp").len() < 48 {
        assert!(std::time::Instant::now() < deadline, "b never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (main_receives, lane_receives) = (main.receives(), lane.receives());
    // Each receive looked at the lane before: as many lane receives.
    assert!(main_receives >= 6, "{main_receives} receives");
    assert!(
        lane_receives * 2 < main_receives,
        "{lane_receives} looks at the lane for {main_receives} receives"
    );

    // A bundle of another batch in the lane and b's mark: taken.
    let mut newcomer = bundle(1000, vec![sleep()]);
    newcomer.tasks[0].batch = BatchId::new("n");
    lane.send(vec![newcomer]).await.unwrap();
    main.send(vec![bundle(100, (0..40).map(|_| sleep()).collect())])
        .await
        .unwrap();
    ledger
        .mark_lane("b", Timestamp::now().0 / 1000)
        .await
        .unwrap();
    while !router
        .results("resp")
        .iter()
        .any(|r| r.batch.as_str() == "n")
    {
        assert!(std::time::Instant::now() < deadline, "n never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.stop.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

#[tokio::test]
async fn cancels_are_asked_about_only_while_tasks_wait_to_start() {
    // Two slots, a bundle of three tasks: the third waits for the first to
    // end, and its batch is asked about every `cancel_check`; once it has
    // started, a cancel would change nothing, and nothing is asked.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let task = |i: u32, secs: f64| TaskSpec::Run {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("echo {i} >> {}; sleep {secs}", log.display()),
        ],
        expected_ms: None,
    };
    let started = |i: u32| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == i.to_string())
    };
    let queue = Arc::new(MemoryQueue::bounded(2));
    queue
        .send(vec![bundle(
            0,
            vec![task(0, 1.0), task(1, 3.0), task(2, 2.5)],
        )])
        .await
        .unwrap();
    queue.close();
    let ledger = Arc::new(CountingLedger::default());
    let mut config = config();
    config.pool.slots = 2;
    config.cancel_check = Duration::from_millis(100);
    let worker = tokio::spawn(run_remote(
        queue,
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        Arc::new(Registry::new()),
        config,
        Shutdown::new(),
        Arc::new(WorkerStats::default()),
    ));
    while !started(0) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let admitted = ledger.cancel_checks();
    while ledger.cancel_checks() < admitted + 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!started(2), "checked three times while task 2 waited");
    while !started(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A check under way when it started may still land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = ledger.cancel_checks();
    // Ten periods while every task held runs (task 2 runs until 3.5 s).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ledger.cancel_checks(),
        before,
        "no check while every task held runs"
    );
    assert_eq!(worker.await.unwrap(), StopReason::Drained);
}

#[tokio::test]
async fn a_batch_is_asked_about_once_a_period_by_the_watch_and_admissions_together() {
    // 20 bundles of four 25 ms sleeps on two slots: a bundle admitted about
    // every 50 ms and tasks waiting to start all along, for about a second.
    // The watch and the admissions take each other's answers: one ask per
    // period, where each asking for itself made about two.
    let period = Duration::from_millis(100);
    let bundles = (0..20)
        .map(|i| bundle(4 * i, vec![TaskSpec::Sleep { ms: 25 }; 4]))
        .collect();
    let ledger = Arc::new(CountingLedger::default());
    let mut config = config();
    config.cancel_check = period;
    let stats = Arc::new(WorkerStats::default());
    let started = std::time::Instant::now();
    let reason = run_through(
        bundles,
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        config,
        stats.clone(),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(reason, StopReason::Drained);
    assert_eq!(
        WorkerStats::get(&stats.tasks_succeeded),
        80,
        "every task ran"
    );
    let asks = ledger.cancel_checks();
    let bound = (elapsed.as_secs_f64() / period.as_secs_f64()).ceil() as usize + 1;
    assert!(
        asks <= bound,
        "{asks} asks in {elapsed:?} (at most {bound})"
    );
}

/// What a [`CountingLedger`] saw, in order.
#[derive(Clone, Debug, PartialEq)]
enum LedgerCall {
    Claim(String),
    RenewFailed,
    Renewed,
}

#[tokio::test]
async fn a_worker_whose_renewals_fail_claims_nothing_new_until_they_succeed() {
    renewals_fail_while_a_bundle_comes(Arc::new(MemoryQueue::bounded(4))).await;
}

#[tokio::test]
async fn a_bundle_received_while_renewals_fail_comes_back_later() {
    // Not given back at once: each receive counts towards the queue's
    // `maxReceives`, and a ledger whose renewals fail on and off (a
    // throttled table) would send it to the dead-letter queue unrun.
    let queue = Arc::new(ReceiptQueue::timed(Vec::new()));
    renewals_fail_while_a_bundle_comes(queue.clone()).await;
    assert_eq!(
        queue.releases.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "received during the failures, it was made visible at once"
    );
    let hidden = queue.extended_by.lock().unwrap().clone();
    assert!(
        hidden.contains(&fetch::claim_retry_delay(1)),
        "not hidden for a claim's retry delay: {hidden:?}"
    );
}

/// One slot, a 2 s task held under a 300 ms lease (renewed every 100 ms)
/// whose renewals fail; a second bundle comes meanwhile, ending a receive
/// that was waiting. It is claimed only after a round of renewals succeeds
/// again.
async fn renewals_fail_while_a_bundle_comes<Q: TaskQueue + 'static>(queue: Arc<Q>) {
    let ledger = Arc::new(CountingLedger::default());
    ledger
        .failing_renewals
        .store(true, std::sync::atomic::Ordering::Relaxed);
    queue
        .send(vec![bundle(0, vec![TaskSpec::Sleep { ms: 2_000 }])])
        .await
        .unwrap();
    let mut config = config();
    config.pool.slots = 1;
    config.lease = Duration::from_millis(300);
    // A long poll: the fetcher is waiting in a receive when the renewals
    // start to fail, past its check of them, and the second bundle ends it.
    config.receive_wait = Duration::from_secs(5);
    let stop = Shutdown::new();
    let worker = tokio::spawn(run_remote(
        queue.clone(),
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        Arc::new(Registry::new()),
        config,
        stop.clone(),
        Arc::new(WorkerStats::default()),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ledger.calls().contains(&LedgerCall::RenewFailed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            ledger.calls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    queue
        .send(vec![bundle(1, vec![TaskSpec::Sleep { ms: 1 }])])
        .await
        .unwrap();
    // Time for a worker that claims regardless to claim it (a receive takes
    // a few ms here), over several failed rounds.
    tokio::time::sleep(Duration::from_millis(400)).await;
    ledger
        .failing_renewals
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let second = LedgerCall::Claim(claim_key(&bundle(1, vec![TaskSpec::Sleep { ms: 1 }])));
    while !ledger.calls().contains(&second) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            ledger.calls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = ledger.calls();
    let claimed = calls.iter().position(|c| *c == second).unwrap();
    let renewed = calls.iter().position(|c| *c == LedgerCall::Renewed);
    assert!(
        renewed.is_some_and(|r| r < claimed),
        "claimed before a renewal succeeded: {calls:?}"
    );
    stop.stop.cancel();
    worker.await.unwrap();
}

/// The in-memory ledger whose bundles another worker takes over once
/// `taken_over` is set: renewals and completions then answer that the lease
/// was lost. Counts those renewals, and the releases asked of it. Or one
/// that refuses every renewal and completion (`refused`).
#[derive(Default)]
struct TakenOverLedger {
    inner: MemoryLedger,
    taken_over: std::sync::atomic::AtomicBool,
    lost_renewals: std::sync::atomic::AtomicUsize,
    releases: std::sync::atomic::AtomicUsize,
    /// Each claim asked for: its key and owner token.
    claims: Mutex<Vec<(String, String)>>,
    refused: Option<Refusal>,
}

/// How a ledger refuses renewals and completions.
#[derive(Clone, Copy)]
enum Refusal {
    /// Its table deleted, or IAM without `dynamodb:UpdateItem`.
    ForGood,
    /// Unreachable: an error that may pass.
    Outage,
}

impl TakenOverLedger {
    /// The refusal, if it refuses.
    fn refusal(&self) -> Result<(), LedgerError> {
        match self.refused {
            None => Ok(()),
            Some(Refusal::ForGood) => Err(LedgerError::Backend(
                "AccessDeniedException: not allowed".into(),
            )),
            Some(Refusal::Outage) => Err(LedgerError::Unavailable(
                "dispatch failure: connection refused".into(),
            )),
        }
    }

    fn taken_over(&self) -> bool {
        self.taken_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lost_renewals(&self) -> usize {
        self.lost_renewals
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl DedupLedger for TakenOverLedger {
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
        self.claims
            .lock()
            .unwrap()
            .push((key.to_string(), owner.to_string()));
        self.inner.claim(key, owner, lease).await
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        done: &BundleProgress,
    ) -> Result<bool, LedgerError> {
        self.refusal()?;
        if self.taken_over() {
            self.lost_renewals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(false);
        }
        self.inner.renew(key, owner, lease, done).await
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        results: Vec<u8>,
    ) -> Result<bool, LedgerError> {
        self.refusal()?;
        if self.taken_over() {
            return Ok(false);
        }
        self.inner.complete(key, owner, results).await
    }

    async fn release(
        &self,
        key: &str,
        owner: &str,
        done: &BundleProgress,
    ) -> Result<(), LedgerError> {
        self.releases
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.release(key, owner, done).await
    }
}

// Paused time: the renewal rounds while the first task runs go by at once.
#[tokio::test(start_paused = true)]
async fn a_worker_that_lost_a_lease_starts_no_more_of_its_tasks_and_leaves_its_message() {
    // One slot, a bundle of three tasks; while the first runs (until a gate
    // opens), another worker takes the bundle over. The renewal that finds
    // out stops the bundle: no more renewals or visibility extensions, the
    // two tasks not started are left to the new holder, and the message
    // and the claim stay its own (not released: a third worker would run
    // the bundle too). The first task's result is sent (the collectors keep
    // each task id once).
    let dir = tempfile::tempdir().unwrap();
    let (started, gate) = (dir.path().join("started"), dir.path().join("gate"));
    let first = started_then_waits(&started, &gate);
    let specs = vec![first, TaskSpec::Sleep { ms: 0 }, TaskSpec::Sleep { ms: 0 }];
    let queue = Arc::new(ReceiptQueue::new(vec![bundle(0, specs)]));
    let ledger = Arc::new(TakenOverLedger::default());
    let router = Arc::new(MemoryRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let mut config = config();
    config.pool.slots = 1;
    config.lease = Duration::from_secs(3);
    config.visibility = Duration::from_secs(3);
    let every = renew_every(config.lease, config.visibility);
    let stop = Shutdown::new();
    let worker = tokio::spawn(run_remote(
        queue.clone(),
        Some(ledger.clone()),
        router.clone(),
        Arc::new(Registry::new()),
        config,
        stop.clone(),
        stats.clone(),
    ));
    until("the first task runs", || started.exists()).await;
    ledger
        .taken_over
        .store(true, std::sync::atomic::Ordering::Relaxed);
    until("a renewal finds the lease lost", || {
        ledger.lost_renewals() >= 1
    })
    .await;
    let extends = || {
        queue.extends.load(std::sync::atomic::Ordering::Relaxed)
            + queue.extend_alls.load(std::sync::atomic::Ordering::Relaxed)
    };
    let extended = extends();
    // Ten rounds of heartbeats while the first task still runs.
    tokio::time::sleep(every * 10).await;
    assert_eq!(ledger.lost_renewals(), 1, "renewed after the loss");
    assert_eq!(
        extends(),
        extended,
        "its message kept hidden after the loss"
    );
    std::fs::write(&gate, "").unwrap();
    until("the bundle is let go", || {
        !router.results("resp").is_empty() && WorkerStats::get(&stats.held) == 0
    })
    .await;
    let ids: Vec<u64> = router.results("resp").iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![0], "only the task running at the loss ran here");
    assert_eq!(
        queue.releases.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the new holder's message made visible"
    );
    assert_eq!(
        queue.counts(),
        (1, 0),
        "the message stays with the new holder"
    );
    assert_eq!(
        ledger.releases.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the new holder's claim released"
    );
    assert_eq!(WorkerStats::get(&stats.released), 0);
    assert_eq!(WorkerStats::get(&stats.leases_lost), 1, "counted once");
    stop.stop.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

// Paused time, as above.
#[tokio::test(start_paused = true)]
async fn a_bundle_delivered_again_while_its_lost_claim_still_runs_here_waits_for_it() {
    // Two slots. The bundle's first task runs here when another worker takes
    // the bundle over, then gives it back: its message comes back to this
    // worker while that task still runs. Claimed and run here beside it, the
    // two claims shared this worker's records of the bundle (kept by its
    // key): the first's end was taken for the second's, and the task started
    // again here. Hidden for a while instead, it came back here again and
    // again, each time a receive towards the dead-letter queue. It is parked
    // on the first claim, kept hidden by the heartbeats, and made visible
    // when that claim ends.
    let dir = tempfile::tempdir().unwrap();
    let (log, gate) = (dir.path().join("log"), dir.path().join("gate"));
    let b = bundle(
        0,
        vec![started_then_waits(&log, &gate), TaskSpec::Sleep { ms: 0 }],
    );
    let queue = Arc::new(ReceiptQueue::timed(vec![b]));
    let ledger = Arc::new(TakenOverLedger::default());
    let router = Arc::new(MemoryRouter::default());
    let stats = Arc::new(WorkerStats::default());
    let mut config = config();
    config.pool.slots = 4;
    config.lease = Duration::from_secs(3);
    config.visibility = Duration::from_secs(3);
    let stop = Shutdown::new();
    let worker = tokio::spawn(run_remote(
        queue.clone(),
        Some(ledger.clone()),
        router.clone(),
        Arc::new(Registry::new()),
        config.clone(),
        stop.clone(),
        stats.clone(),
    ));
    let started = || std::fs::read_to_string(&log).map_or(0, |l| l.lines().count());
    until("the first task runs", || started() == 1).await;
    ledger
        .taken_over
        .store(true, std::sync::atomic::Ordering::Relaxed);
    until("a renewal finds the lease lost", || {
        ledger.lost_renewals() >= 1
    })
    .await;
    // The other worker gives the bundle back; this one no longer hides its
    // message, which comes back.
    ledger
        .taken_over
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (key, owner) = ledger.claims.lock().unwrap()[0].clone();
    ledger
        .inner
        .release(&key, &owner, &BundleProgress::new())
        .await
        .unwrap();
    until("the message delivered again", || {
        WorkerStats::get(&stats.duplicates) >= 1
    })
    .await;
    tokio::time::sleep(config.visibility * 10).await;
    assert_eq!(WorkerStats::get(&stats.bundles), 1, "claimed again here");
    assert_eq!(started(), 1, "its task started again beside itself");
    assert_eq!(
        WorkerStats::get(&stats.duplicates),
        1,
        "received again and again while the first claim ran"
    );
    // The first claim ends while a round of extensions, which holds the
    // parked delivery, waits on SQS: made visible meanwhile, the delivery
    // was hidden again when the round went on, for a visibility timeout
    // (unless a worker received it in between). It waits for the round.
    queue
        .stalling
        .store(true, std::sync::atomic::Ordering::SeqCst);
    until("a round of extensions waits", || {
        queue.stalled.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    until("the first claim's task ends", || {
        router.results("resp").iter().any(|r| r.id == 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        WorkerStats::get(&stats.bundles),
        1,
        "made visible while a round of extensions held it"
    );
    queue.resume();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        WorkerStats::get(&stats.bundles),
        2,
        "not claimed again at once: hidden again by the round"
    );
    until("the bundle run again once the first claim ended", || {
        started() == 2
    })
    .await;
    assert!(
        queue.releases.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the parked delivery made visible"
    );
    stop.stop.cancel();
    assert_eq!(worker.await.unwrap(), StopReason::Shutdown);
}

/// The in-memory ledger whose renewals each take `delay` (a throttled
/// table, its SDK retrying), recording when each claim was made and each
/// renewal answered.
#[derive(Default)]
struct SlowRenewalsLedger {
    inner: MemoryLedger,
    delay: Mutex<Duration>,
    claims: Mutex<Vec<(String, tokio::time::Instant)>>,
    renewed: Mutex<Vec<(String, tokio::time::Instant)>>,
    /// Every this many renewals asked, one is throttled (a table partly
    /// over its capacity); 0: none.
    throttle_every: usize,
    asked: std::sync::atomic::AtomicUsize,
}

impl SlowRenewalsLedger {
    fn new(delay: Duration) -> Self {
        Self {
            delay: Mutex::new(delay),
            ..Self::default()
        }
    }

    fn claims(&self) -> Vec<(String, tokio::time::Instant)> {
        self.claims.lock().unwrap().clone()
    }

    fn renewed(&self) -> Vec<(String, tokio::time::Instant)> {
        self.renewed.lock().unwrap().clone()
    }
}

impl DedupLedger for SlowRenewalsLedger {
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
        self.claims
            .lock()
            .unwrap()
            .push((key.to_string(), tokio::time::Instant::now()));
        self.inner.claim(key, owner, lease).await
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        done: &BundleProgress,
    ) -> Result<bool, LedgerError> {
        let delay = *self.delay.lock().unwrap();
        let asked = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        tokio::time::sleep(delay).await;
        if self.throttle_every > 0 && asked.is_multiple_of(self.throttle_every) {
            return Err(LedgerError::Unavailable(
                "ProvisionedThroughputExceededException".into(),
            ));
        }
        let renewed = self.inner.renew(key, owner, lease, done).await;
        self.renewed
            .lock()
            .unwrap()
            .push((key.to_string(), tokio::time::Instant::now()));
        renewed
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

/// Bundles of one ten-minute task: they run for the whole of a test (the
/// sleep task's timer is the wall clock's, not paused).
fn long_bundles(first: u64, n: u64) -> Vec<Bundle> {
    (first..first + n)
        .map(|i| bundle(i, vec![TaskSpec::Sleep { ms: 600_000 }]))
        .collect()
}

// Paused time: a renewal's delay is exact, and minutes go by at once.
#[tokio::test(start_paused = true)]
async fn slow_renewals_of_many_bundles_still_come_once_a_period() {
    // A 60 s lease renewed every 20 s, 12 bundles held, and each renewal
    // taking 3 s: one after another, a round takes 36 s, and each bundle
    // went 56 s between renewals. A few at once, from each round's start,
    // each bundle is renewed within a period and a renewal's time.
    let delay = Duration::from_secs(3);
    let ledger = Arc::new(SlowRenewalsLedger::new(delay));
    let queue = Arc::new(MemoryQueue::bounded(12));
    queue.send(long_bundles(0, 12)).await.unwrap();
    let mut config = config();
    config.pool.slots = 12;
    config.lease = Duration::from_secs(60);
    config.visibility = Duration::from_secs(60);
    let every = renew_every(config.lease, config.visibility);
    let (worker, stop) = start(
        queue,
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        config,
    );
    tokio::time::sleep(every * 6).await;
    let mut by_key: HashMap<String, Vec<tokio::time::Instant>> = HashMap::new();
    for (key, at) in ledger.renewed() {
        by_key.entry(key).or_default().push(at);
    }
    assert_eq!(by_key.len(), 12, "{by_key:?}");
    for (key, times) in &by_key {
        assert!(times.len() >= 4, "{key}: {times:?}");
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap <= every + delay,
                "{key} went {gap:?} between renewals (period {every:?})"
            );
        }
    }
    stop.stop.cancel();
    stop.abort.cancel();
    worker.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_partly_throttled_ledger_still_renews_every_bundle_in_time() {
    // Each round stops at its first failure, every sixth renewal is
    // throttled, and 24 bundles are held: taken in the same order each
    // round, the last ones were never renewed and their leases ran out.
    let ledger = Arc::new(SlowRenewalsLedger {
        throttle_every: 6,
        ..SlowRenewalsLedger::new(Duration::from_millis(50))
    });
    let held = 24;
    let queue = Arc::new(MemoryQueue::bounded(held));
    queue.send(long_bundles(0, held as u64)).await.unwrap();
    let mut config = config();
    config.pool.slots = held;
    config.lease = Duration::from_secs(3);
    config.visibility = Duration::from_secs(3);
    let (worker, stop) = start(
        queue,
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        config.clone(),
    );
    tokio::time::sleep(config.lease * 8).await;
    let end = tokio::time::Instant::now();
    let claims = ledger.claims();
    assert_eq!(claims.len(), held);
    let renewed = ledger.renewed();
    for (key, claimed) in claims {
        let mut last = claimed;
        for at in renewed.iter().filter(|(k, _)| *k == key).map(|(_, at)| *at) {
            assert!(
                at - last < config.lease,
                "{key} went {:?} unrenewed, past its lease",
                at - last
            );
            last = at;
        }
        assert!(
            end - last < config.lease,
            "{key} unrenewed for the last {:?}, past its lease",
            end - last
        );
    }
    stop.stop.cancel();
    stop.abort.cancel();
    worker.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_round_of_renewals_longer_than_its_period_holds_back_claims() {
    // Each call answers within the period, but more bundles than are
    // renewed at once make the round overrun it.
    let held = complete::RENEWALS_AT_ONCE as u64 + 1;
    slow_renewals_hold_back_claims(held, Duration::from_millis(600)).await;
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_does_not_answer_within_the_period_holds_back_claims() {
    slow_renewals_hold_back_claims(1, Duration::from_secs(3_600)).await;
}

/// `held` bundles held under a 3 s lease (renewed every second), their
/// renewals taking `delay`; a bundle that comes meanwhile, with a slot
/// free for it, is claimed only once renewals keep to their period again.
async fn slow_renewals_hold_back_claims(held: u64, delay: Duration) {
    let ledger = Arc::new(SlowRenewalsLedger::new(delay));
    let queue = Arc::new(MemoryQueue::bounded(held as usize + 1));
    queue.send(long_bundles(0, held)).await.unwrap();
    let mut config = config();
    config.pool.slots = held as usize + 1;
    config.lease = Duration::from_secs(3);
    config.visibility = Duration::from_secs(3);
    let every = renew_every(config.lease, config.visibility);
    let (worker, stop) = start(
        queue.clone(),
        Some(ledger.clone()),
        Arc::new(MemoryRouter::default()),
        config,
    );
    // Past the first round, however it ends.
    tokio::time::sleep(every * 3).await;
    assert_eq!(ledger.claims().len(), held as usize);
    let late = long_bundles(held, 1);
    let late_key = claim_key(&late[0]);
    queue.send(late).await.unwrap();
    // Rounds go by, each late.
    tokio::time::sleep(every * 5).await;
    assert!(
        ledger.claims().iter().all(|(key, _)| *key != late_key),
        "claimed while renewals ran late: {:?}",
        ledger.claims()
    );
    *ledger.delay.lock().unwrap() = Duration::ZERO;
    let fast_from = tokio::time::Instant::now();
    let deadline = fast_from + every * 10;
    let claimed = loop {
        if let Some((_, at)) = ledger.claims().into_iter().find(|(k, _)| *k == late_key) {
            break at;
        }
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        ledger
            .renewed()
            .iter()
            .any(|(_, at)| *at >= fast_from && *at <= claimed),
        "claimed before a round kept to its period"
    );
    stop.stop.cancel();
    stop.abort.cancel();
    worker.await.unwrap();
}
