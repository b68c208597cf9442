//! The slot pool: N concurrent slots that take work units from a local channel,
//! execute their tasks, and hand results on in batches. The embedded engine and
//! the remote worker both run tasks through it.

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::queue::Receipt;
use cloudkon_core::summary::ideal_time;
use cloudkon_core::{Task, TaskResult, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::exec::{ExecLimits, Registry};

/// Tasks a slot runs one after the other: a bundle, or part of one.
#[derive(Debug)]
pub struct WorkUnit {
    pub submitted: Timestamp,
    pub tasks: Vec<Task>,
    /// Acknowledged once all of this unit's results are out.
    pub receipt: Option<Receipt>,
}

/// The results of one work unit.
#[derive(Debug)]
pub struct ResultBatch {
    pub results: Vec<TaskResult>,
    /// Sum of the tasks' ideal times (see [`ideal_time`]), for efficiency.
    pub ideal: Duration,
    /// Present only when every task of the unit ran: an unfinished unit is not
    /// acknowledged, so that its queue delivers it again.
    pub receipt: Option<Receipt>,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub slots: usize,
    /// Results name the worker and slot that ran them: `<worker_id>/<slot>`.
    pub worker_id: String,
    pub default_timeout: Option<Duration>,
    pub output_bytes: usize,
}

/// How the pool is told to stop.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop taking tasks; finish the ones running.
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
        let batch = run_unit(&worker, &config, &registry, unit, &shutdown).await;
        if (!batch.results.is_empty() || batch.receipt.is_some())
            && results.send(batch).await.is_err()
        {
            return; // Nobody collects results any more.
        }
        if shutdown.stop.is_cancelled() {
            return;
        }
    }
}

async fn run_unit(
    worker: &Arc<str>,
    config: &PoolConfig,
    registry: &Registry,
    unit: WorkUnit,
    shutdown: &Shutdown,
) -> ResultBatch {
    let mut results = Vec::with_capacity(unit.tasks.len());
    let mut ideal = Duration::ZERO;
    let total = unit.tasks.len();
    for task in unit.tasks {
        if shutdown.stop.is_cancelled() {
            break;
        }
        let started = Timestamp::now();
        let output = match registry.execute_now(&task) {
            Some(output) => output,
            None => {
                let limits = ExecLimits {
                    timeout: task.timeout.or(config.default_timeout),
                    output_bytes: config.output_bytes,
                };
                tokio::select! {
                    output = registry.execute(&task, limits) => output,
                    _ = shutdown.abort.cancelled() => break,
                }
            }
        };
        let result = TaskResult {
            batch: task.batch.clone(),
            id: task.id,
            attempt: task.attempt,
            outcome: output.outcome,
            exit_code: output.exit_code,
            stdout: output.stdout,
            stderr: output.stderr,
            truncated: output.truncated,
            artifact: output.artifact,
            worker: worker.clone(),
            submitted: unit.submitted,
            started,
            finished: Timestamp::now(),
        };
        ideal += ideal_time(&task.spec, &result);
        results.push(result);
    }
    let complete = results.len() == total;
    ResultBatch {
        results,
        ideal,
        receipt: if complete { unit.receipt } else { None },
    }
}
