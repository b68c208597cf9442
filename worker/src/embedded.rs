//! The embedded engine: a workload streamed through an in-memory queue into a
//! slot pool on this machine. No cloud, no cluster.
//!
//! ```text
//! producer thread ──bundles──▶ MemoryQueue ──▶ feeder ──units──▶ slots ──batches──▶ collector thread
//! (parse, bundle)              (bounded)                         (execute)          (stats, results file)
//! ```
//! Every hand-off moves a bundle or a batch of results, never a single task, and
//! every channel is bounded, so memory stays flat however long the workload is.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudkon_core::queue::{MemoryQueue, TaskQueue};
use cloudkon_core::workload::{TaskDef, WorkloadError};
use cloudkon_core::{BatchId, BundlePlan, Stats, Summary, TaskResult};

use crate::exec::Registry;
use crate::pool::{PoolConfig, PoolEvent, Shutdown, WorkUnit, run_pool};

#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    pub pool: PoolConfig,
    pub batch: BatchId,
    /// Bundles the in-memory queue holds before the producer waits.
    pub queue_bundles: usize,
    pub plan: BundlePlan,
}

impl EmbeddedConfig {
    pub fn new(pool: PoolConfig, batch: BatchId) -> Self {
        Self {
            queue_bundles: pool.slots.max(1) * 4,
            pool,
            batch,
            plan: BundlePlan::EMBEDDED,
        }
    }
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

impl Progress {
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The workload stopped parsing mid-run (it was validated first, so it changed).
    #[error("the workload changed while it ran: {0}")]
    Workload(#[source] WorkloadError),
    /// Tasks past the checked count: lines added after the check, never
    /// checked and not counted in the summary.
    #[error("the workload changed while it ran: it holds more than the {0} tasks checked")]
    Grew(u64),
    #[error("cannot write results: {0}")]
    Results(#[source] io::Error),
}

/// How a run went. A failure stops the run, but what ran is still summarised.
#[derive(Debug)]
pub struct EmbeddedRun {
    pub summary: Summary,
    pub failure: Option<EmbeddedError>,
}

/// Runs `total` tasks from `tasks` and summarises them. `on_result` sees every
/// result (to write a results file); an error from it stops the run.
pub async fn run_embedded<W, F>(
    tasks: W,
    total: u64,
    config: EmbeddedConfig,
    registry: Arc<Registry>,
    on_result: F,
    progress: Arc<Progress>,
    shutdown: Shutdown,
) -> EmbeddedRun
where
    W: Iterator<Item = Result<TaskDef, WorkloadError>> + Send + 'static,
    F: FnMut(&TaskResult) -> io::Result<()> + Send + 'static,
{
    let start = Instant::now();
    let queue = MemoryQueue::bounded(config.queue_bundles);
    let (units_tx, units_rx) = async_channel::bounded(config.pool.slots.max(1) * 2);
    let (results_tx, results_rx) = async_channel::bounded(config.pool.slots.max(1) * 4);

    let producer = {
        let queue = queue.clone();
        let stop = shutdown.stop.clone();
        let (batch, plan) = (config.batch.clone(), config.plan);
        std::thread::Builder::new()
            .name("cloudkon-producer".into())
            .spawn(move || produce(tasks, total, batch, plan, &queue, &stop))
            .expect("spawn producer thread")
    };
    let collector = {
        let stop = shutdown.stop.clone();
        std::thread::Builder::new()
            .name("cloudkon-collector".into())
            .spawn(move || collect(results_rx, on_result, &progress, &stop))
            .expect("spawn collector thread")
    };
    let feeder = tokio::spawn(feed(queue, units_tx, shutdown.clone()));
    run_pool(
        config.pool.clone(),
        registry,
        units_rx,
        results_tx,
        shutdown.clone(),
    )
    .await;
    let _ = feeder.await;

    let (produced, collected) =
        tokio::task::spawn_blocking(move || (producer.join(), collector.join()))
            .await
            .expect("join engine threads");
    let produced = produced.expect("producer thread panicked");
    let (stats, write_error) = collected.expect("collector thread panicked");
    let wall = start.elapsed();

    let failure = match (produced, write_error) {
        (Err(e), _) => Some(e),
        (Ok(()), Some(e)) => Some(EmbeddedError::Results(e)),
        (Ok(()), None) => None,
    };
    let interrupted = shutdown.stop.is_cancelled() && failure.is_none();
    EmbeddedRun {
        summary: stats.summary(total, config.pool.slots, wall, interrupted),
        failure,
    }
}

/// Parses and bundles the first `total` tasks of the workload into the
/// queue; closes the queue at the end.
fn produce<W>(
    tasks: W,
    total: u64,
    batch: BatchId,
    plan: BundlePlan,
    queue: &MemoryQueue,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), EmbeddedError>
where
    W: Iterator<Item = Result<TaskDef, WorkloadError>>,
{
    let mut outcome = Ok(());
    // The engine's default timeout is the pool's: none here.
    for bundle in cloudkon_core::bundle::bundles(tasks, batch, plan, 0, None) {
        if stop.is_cancelled() {
            break;
        }
        match bundle {
            Ok(mut bundle) => {
                let grew = bundle.tasks.iter().any(|t| t.id >= total);
                bundle.tasks.retain(|t| t.id < total);
                if !bundle.tasks.is_empty() && queue.send_blocking(bundle).is_err() {
                    break; // Closed: the run is stopping.
                }
                if grew {
                    // The checked tasks still run; the rest are refused.
                    outcome = Err(EmbeddedError::Grew(total));
                    break;
                }
            }
            Err(e) => {
                stop.cancel();
                outcome = Err(EmbeddedError::Workload(e));
                break;
            }
        }
    }
    queue.close();
    outcome
}

/// Moves deliveries from the queue to the slots.
async fn feed(queue: MemoryQueue, units: async_channel::Sender<WorkUnit>, shutdown: Shutdown) {
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => break,
            received = queue.receive(16, Duration::from_secs(1)) => received,
        };
        let deliveries = match received {
            Ok(Some(deliveries)) => deliveries,
            Ok(None) | Err(_) => break,
        };
        for delivery in deliveries {
            let unit = WorkUnit {
                submitted: delivery.bundle.submitted,
                options: delivery.bundle.options,
                tasks: delivery.bundle.tasks,
                ticket: None,
                control: Default::default(),
            };
            if units.send(unit).await.is_err() {
                break;
            }
        }
    }
    // Unblocks a producer waiting on a full queue when the run stops early.
    queue.close();
}

fn collect<F>(
    events: async_channel::Receiver<PoolEvent>,
    mut on_result: F,
    progress: &Progress,
    stop: &tokio_util::sync::CancellationToken,
) -> (Stats, Option<io::Error>)
where
    F: FnMut(&TaskResult) -> io::Result<()>,
{
    let mut stats = Stats::new();
    let mut write_error = None;
    while let Ok(event) = events.recv_blocking() {
        let PoolEvent::Results { results, ideal, .. } = event else {
            continue;
        };
        let mut failed = 0;
        for (_, result) in &results {
            stats.record(result);
            failed += u64::from(!result.outcome.is_success());
            if write_error.is_none()
                && let Err(e) = on_result(result)
            {
                write_error = Some(e);
                stop.cancel();
            }
        }
        stats.add_ideal(ideal);
        progress
            .done
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        progress.failed.fetch_add(failed, Ordering::Relaxed);
    }
    (stats, write_error)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use cloudkon_core::workload::WorkloadReader;
    use cloudkon_core::{Outcome, TaskSpec};

    fn config(slots: usize) -> EmbeddedConfig {
        EmbeddedConfig::new(PoolConfig::new(slots, "test"), BatchId::new("batch-1"))
    }

    type Collected = Arc<Mutex<Vec<TaskResult>>>;

    async fn run_text(text: &str, slots: usize, shutdown: Shutdown) -> (EmbeddedRun, Collected) {
        let reader = WorkloadReader::new(io::Cursor::new(text.to_string()), "test");
        let total = cloudkon_core::workload::validate(WorkloadReader::new(text.as_bytes(), "t"))
            .unwrap()
            .tasks;
        let collected: Collected = Arc::default();
        let sink = collected.clone();
        let run = run_embedded(
            reader,
            total,
            config(slots),
            Arc::new(Registry::new()),
            move |r| {
                sink.lock().unwrap().push(r.clone());
                Ok(())
            },
            Arc::default(),
            shutdown,
        )
        .await;
        (run, collected)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_task_runs_exactly_once() {
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(match i % 100 {
                0 => "run true\n",
                1 => "sleep 1\n",
                _ => "sleep 0\n",
            });
        }
        let (run, collected) = run_text(&text, 4, Shutdown::new()).await;
        assert!(run.failure.is_none());
        let s = run.summary;
        assert_eq!(
            (s.tasks, s.succeeded, s.failed, s.not_run),
            (20_000, 20_000, 0, 0)
        );
        let results = collected.lock().unwrap();
        let mut seen = vec![0u8; 20_000];
        for r in results.iter() {
            seen[r.id as usize] += 1;
            assert_eq!(r.batch.as_str(), "batch-1");
            assert!(r.submitted <= r.started && r.started <= r.finished);
        }
        assert!(seen.iter().all(|&n| n == 1), "a task ran twice or never");
        // The work was spread over the slots.
        let slots: HashMap<&str, usize> = results.iter().fold(HashMap::new(), |mut m, r| {
            *m.entry(&*r.worker).or_default() += 1;
            m
        });
        assert!(slots.len() > 1, "{slots:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_and_timeouts_are_counted() {
        let text = "run false\nrun sh -c 'exit 7'\n{\"kind\":\"sleep\",\"ms\":5000,\"timeout_ms\":50}\nsleep 0\nrun /nonexistent\n";
        let (run, collected) = run_text(text, 2, Shutdown::new()).await;
        let s = run.summary;
        assert_eq!((s.succeeded, s.failed, s.timed_out), (1, 3, 1));
        let results = collected.lock().unwrap();
        let by_id: HashMap<u64, &TaskResult> = results.iter().map(|r| (r.id, r)).collect();
        assert_eq!(by_id[&1].exit_code, Some(7));
        assert_eq!(by_id[&2].outcome, Outcome::TimedOut);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_finishes_running_tasks_and_leaves_the_rest() {
        // 2 slots, 10 tasks that each announce their start and then run until
        // `release`: stop once two are running, then release them.
        let dir = tempfile::tempdir().unwrap();
        let started = dir.path().join("started");
        std::fs::create_dir(&started).unwrap();
        let release = dir.path().join("release");
        let text: String = (0..10)
            .map(|i| {
                format!(
                    "run sh -c 'touch \"$1\"; while [ ! -e \"$2\" ]; do sleep 0.01; done' sh {}/{i} {}\n",
                    started.display(),
                    release.display()
                )
            })
            .collect();
        let shutdown = Shutdown::new();
        let stopper = {
            let shutdown = shutdown.clone();
            let (started, release) = (started.clone(), release.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                while std::fs::read_dir(&started).unwrap().count() < 2 {
                    if Instant::now() > deadline {
                        // Let the run end, to fail below.
                        std::fs::write(&release, "").unwrap();
                        panic!("two tasks never started");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                shutdown.stop.cancel();
                std::fs::write(&release, "").unwrap();
            })
        };
        let (run, collected) = run_text(&text, 2, shutdown).await;
        stopper.await.unwrap();
        let s = run.summary;
        assert!(s.interrupted);
        assert_eq!(s.succeeded, 2, "the two running tasks finish: {s:?}");
        assert_eq!(s.not_run, 8);
        assert_eq!(collected.lock().unwrap().len(), 2);
        assert_eq!(
            std::fs::read_dir(&started).unwrap().count(),
            2,
            "a task started after stop"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_abandons_running_tasks() {
        let shutdown = Shutdown::new();
        shutdown.stop.cancel();
        shutdown.abort.cancel();
        let (run, _) = run_text(&"sleep 60000\n".repeat(3), 2, shutdown).await;
        assert!(run.summary.interrupted);
        assert_eq!(run.summary.not_run, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_results_write_error_stops_the_run() {
        let text = "sleep 0\n".repeat(100_000);
        let reader = WorkloadReader::new(io::Cursor::new(text), "t");
        let mut written = 0;
        let run = run_embedded(
            reader,
            100_000,
            config(2),
            Arc::new(Registry::new()),
            move |_| {
                written += 1;
                if written > 10 {
                    Err(io::Error::other("disk full"))
                } else {
                    Ok(())
                }
            },
            Arc::default(),
            Shutdown::new(),
        )
        .await;
        assert!(
            matches!(run.failure, Some(EmbeddedError::Results(_))),
            "{:?}",
            run.failure
        );
        assert!(run.summary.not_run > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workload_that_breaks_mid_run_is_reported() {
        let reader =
            WorkloadReader::new(io::Cursor::new("sleep 0\nsleep x\n".to_string()), "w.txt");
        let run = run_embedded(
            reader,
            2,
            config(1),
            Arc::new(Registry::new()),
            |_| Ok(()),
            Arc::default(),
            Shutdown::new(),
        )
        .await;
        let failure = run.failure.expect("a failure").to_string();
        assert!(failure.contains("w.txt:2:"), "{failure}");
    }

    #[tokio::test]
    async fn tasks_past_the_checked_count_are_not_run_and_reported() {
        let reader = WorkloadReader::new(
            io::Cursor::new("sleep 0\nsleep 0\nsleep 0\n".to_string()),
            "w.txt",
        );
        let ran = Arc::new(AtomicU64::new(0));
        let counted = ran.clone();
        let run = run_embedded(
            reader,
            2,
            config(1),
            Arc::new(Registry::new()),
            move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            },
            Arc::default(),
            Shutdown::new(),
        )
        .await;
        let failure = run.failure.expect("a failure").to_string();
        assert!(
            failure.contains("more than the 2 tasks checked"),
            "{failure}"
        );
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn sleep_specs_are_bundled_in_memory() {
        assert_eq!(
            BundlePlan::EMBEDDED.tasks_per_bundle(&TaskSpec::Sleep { ms: 0 }),
            1024
        );
    }
}
