//! The slot pool: N concurrent slots that take work units from a local channel,
//! execute their tasks, and hand results on in batches. The embedded engine and
//! the remote worker both run tasks through it.

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::queue::Receipt;
use cloudkon_core::summary::ideal_time;
use cloudkon_core::{BundleOptions, Task, TaskResult, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::exec::{ExecLimits, Registry};

/// Tasks a slot runs one after the other: a bundle.
#[derive(Debug)]
pub struct WorkUnit {
    pub submitted: Timestamp,
    pub tasks: Vec<Task>,
    /// The batch's retry settings, over the pool's.
    pub options: BundleOptions,
    /// What the distributed worker needs back to finish the bundle; the pool
    /// only carries it through.
    pub ticket: Option<Ticket>,
}

/// A delivered bundle's handles: to acknowledge it, complete its claim, and
/// send its results.
#[derive(Clone, Debug, Default)]
pub struct Ticket {
    pub receipt: Option<Receipt>,
    pub claim_key: Option<String>,
    /// The owner token the claim was made with: unique per claim, so that a
    /// second delivery of the same bundle to the same worker is not taken for
    /// its own earlier claim. `None`: not claimed (no ledger, or the batch
    /// runs without dedup).
    pub claim_owner: Option<String>,
    pub reply_to: Option<String>,
}

/// The results of one work unit.
#[derive(Debug)]
pub struct ResultBatch {
    pub results: Vec<TaskResult>,
    /// Sum of the tasks' ideal times (see [`ideal_time`]), for efficiency.
    pub ideal: Duration,
    pub ticket: Option<Ticket>,
    /// False when the unit was abandoned part-way (abort): it must not be
    /// acknowledged, but given back so that its queue delivers it again.
    pub complete: bool,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub slots: usize,
    /// Results name the worker and slot that ran them: `<worker_id>/<slot>`.
    pub worker_id: String,
    pub default_timeout: Option<Duration>,
    pub output_bytes: usize,
    /// Executions of a failing task, the first included (1: no retry).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
}

impl PoolConfig {
    pub fn new(slots: usize, worker_id: impl Into<String>) -> Self {
        Self {
            slots,
            worker_id: worker_id.into(),
            default_timeout: None,
            output_bytes: 4096,
            max_attempts: 1,
            retry_backoff: Duration::from_secs(1),
        }
    }
}

/// How the pool is told to stop.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop taking work; finish the units running. A unit is one expensive task
    /// or at most about a millisecond of cheap ones (see `BundlePlan`), and a unit
    /// left half-done would have to run again whole, so slots stop between units.
    pub stop: CancellationToken,
    /// Abandon the ones running too.
    pub abort: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Runs the pool until `units` is closed and drained, or until told to stop.
pub async fn run_pool(
    config: PoolConfig,
    registry: Arc<Registry>,
    units: async_channel::Receiver<WorkUnit>,
    results: async_channel::Sender<ResultBatch>,
    shutdown: Shutdown,
) {
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..config.slots.max(1) {
        let worker: Arc<str> = format!("{}/{slot}", config.worker_id).into();
        slots.spawn(run_slot(
            worker,
            config.clone(),
            registry.clone(),
            units.clone(),
            results.clone(),
            shutdown.clone(),
        ));
    }
    while let Some(joined) = slots.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "a worker slot panicked");
        }
    }
}

async fn run_slot(
    worker: Arc<str>,
    config: PoolConfig,
    registry: Arc<Registry>,
    units: async_channel::Receiver<WorkUnit>,
    results: async_channel::Sender<ResultBatch>,
    shutdown: Shutdown,
) {
    loop {
        let unit = tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => return,
            unit = units.recv() => match unit {
                Ok(unit) => unit,
                Err(_closed) => return,
            },
        };
        let batch = run_unit(&worker, &config, &registry, unit, &shutdown.abort).await;
        if results.send(batch).await.is_err() {
            return; // Nobody collects results any more.
        }
    }
}

async fn run_unit(
    worker: &Arc<str>,
    config: &PoolConfig,
    registry: &Registry,
    unit: WorkUnit,
    abort: &CancellationToken,
) -> ResultBatch {
    let mut results = Vec::with_capacity(unit.tasks.len());
    let mut ideal = Duration::ZERO;
    let total = unit.tasks.len();
    for mut task in unit.tasks {
        let Some(result) = run_task(
            worker,
            config,
            &unit.options,
            registry,
            &mut task,
            unit.submitted,
            abort,
        )
        .await
        else {
            break;
        };
        ideal += ideal_time(&task.spec, &result);
        results.push(result);
    }
    ResultBatch {
        complete: results.len() == total,
        results,
        ideal,
        ticket: unit.ticket,
    }
}

/// Runs a task, retrying a failure up to `max_attempts`; `None` if abandoned.
async fn run_task(
    worker: &Arc<str>,
    config: &PoolConfig,
    options: &BundleOptions,
    registry: &Registry,
    task: &mut Task,
    submitted: Timestamp,
    abort: &CancellationToken,
) -> Option<TaskResult> {
    let mut backoff = options.retry_backoff.unwrap_or(config.retry_backoff);
    let max_attempts = options.max_attempts.unwrap_or(config.max_attempts);
    loop {
        let started = Timestamp::now();
        let output = match registry.execute_now(task) {
            Some(output) => output,
            None => {
                let limits = ExecLimits {
                    timeout: task.timeout.or(config.default_timeout),
                    output_bytes: config.output_bytes,
                };
                tokio::select! {
                    output = registry.execute(task, limits) => output,
                    _ = abort.cancelled() => return None,
                }
            }
        };
        if !output.outcome.is_success() && task.attempt < max_attempts {
            tracing::debug!(task = task.id, attempt = task.attempt, outcome = ?output.outcome, "retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = abort.cancelled() => return None,
            }
            backoff = backoff.saturating_mul(2);
            task.attempt += 1;
            continue;
        }
        return Some(TaskResult {
            batch: task.batch.clone(),
            id: task.id,
            attempt: task.attempt,
            outcome: output.outcome,
            exit_code: output.exit_code,
            stdout: output.stdout,
            stderr: output.stderr,
            truncated: output.truncated,
            artifact: output.artifact,
            artifact_url: output.artifact_url,
            worker: worker.clone(),
            submitted,
            started,
            finished: Timestamp::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::{BatchId, Outcome, TaskSpec};

    fn unit(specs: Vec<TaskSpec>) -> WorkUnit {
        WorkUnit {
            submitted: Timestamp::now(),
            options: BundleOptions::default(),
            tasks: specs
                .into_iter()
                .enumerate()
                .map(|(i, spec)| Task {
                    batch: BatchId::new("b"),
                    id: i as u64,
                    attempt: 1,
                    timeout: None,
                    spec,
                })
                .collect(),
            ticket: Some(Ticket {
                claim_key: Some("b#0".into()),
                ..Ticket::default()
            }),
        }
    }

    fn sh(script: &str) -> TaskSpec {
        TaskSpec::Run {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[tokio::test]
    async fn a_failing_task_is_retried_up_to_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Fails twice, then succeeds: appends a line per execution.
        let script = format!("echo x >> {0}; test $(wc -l < {0}) -ge 3", count.display());
        let mut config = PoolConfig::new(1, "w");
        config.retry_backoff = Duration::from_millis(1);
        config.max_attempts = 3;
        let worker: Arc<str> = "w/0".into();
        let batch = run_unit(
            &worker,
            &config,
            &Registry::new(),
            unit(vec![sh(&script)]),
            &CancellationToken::new(),
        )
        .await;
        assert!(batch.complete);
        assert_eq!(batch.results[0].outcome, Outcome::Succeeded);
        assert_eq!(batch.results[0].attempt, 3);
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
        assert_eq!(batch.ticket.unwrap().claim_key.as_deref(), Some("b#0"));
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts_and_report_the_last_failure() {
        let mut config = PoolConfig::new(1, "w");
        config.retry_backoff = Duration::from_millis(1);
        config.max_attempts = 2;
        let worker: Arc<str> = "w/0".into();
        let batch = run_unit(
            &worker,
            &config,
            &Registry::new(),
            unit(vec![sh("exit 4")]),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(batch.results[0].attempt, 2);
        assert_eq!(batch.results[0].exit_code, Some(4));
    }

    #[tokio::test]
    async fn an_aborted_unit_is_incomplete_with_what_ran() {
        let abort = CancellationToken::new();
        let worker: Arc<str> = "w/0".into();
        let config = PoolConfig::new(1, "w");
        let registry = Registry::new();
        let fut = run_unit(
            &worker,
            &config,
            &registry,
            unit(vec![
                TaskSpec::Sleep { ms: 0 },
                TaskSpec::Sleep { ms: 60_000 },
            ]),
            &abort,
        );
        let canceller = async {
            tokio::task::yield_now().await;
            abort.cancel();
        };
        let (batch, ()) = tokio::join!(fut, canceller);
        assert!(!batch.complete);
        assert_eq!(batch.results.len(), 1);
        assert!(
            batch.ticket.is_some(),
            "the ticket comes back so the bundle can be given back"
        );
    }
}
