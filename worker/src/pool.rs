//! The slot pool: N concurrent slots that run tasks from work units handed
//! over a local channel. A unit (a bundle) is the unit of claim and
//! acknowledgement, not of serial execution: its tasks go to whichever slots
//! are free, and each task's result leaves as soon as it is done. The embedded
//! engine and the remote worker both run tasks through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cloudkon_core::queue::Receipt;
use cloudkon_core::summary::ideal_time;
use cloudkon_core::{BundleOptions, Task, TaskResult, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::exec::{ExecLimits, Registry};

/// A bundle's tasks, handed to the pool.
#[derive(Debug)]
pub struct WorkUnit {
    pub submitted: Timestamp,
    pub tasks: Vec<Task>,
    /// The batch's retry settings, over the pool's.
    pub options: BundleOptions,
    /// What the distributed worker needs back to finish the bundle; the pool
    /// only carries it through.
    pub ticket: Option<Ticket>,
    /// Its stop flag and the count of its tasks not started, shared with
    /// whoever holds the bundle.
    pub control: Arc<UnitControl>,
}

/// A unit as its holder sees it while the pool runs it.
#[derive(Debug, Default)]
pub struct UnitControl {
    stop: AtomicBool,
    waiting: AtomicUsize,
}

impl UnitControl {
    /// For a unit of `tasks` tasks, none started.
    pub fn new(tasks: usize) -> Arc<Self> {
        Arc::new(Self {
            stop: AtomicBool::new(false),
            waiting: AtomicUsize::new(tasks),
        })
    }

    /// Leaves the unit's tasks that have not started (its batch was
    /// cancelled): the unit then ends incomplete. False if it already was.
    pub fn stop(&self) -> bool {
        !self.stop.swap(true, Ordering::Relaxed)
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Tasks that will still start: none once stopped.
    pub fn waiting(&self) -> usize {
        if self.stopped() {
            0
        } else {
            self.waiting.load(Ordering::Relaxed)
        }
    }

    fn started(&self) {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
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
    /// Each unit task's position in the bundle as enqueued (tasks an earlier
    /// holder finished are left out of the unit); empty: the same positions.
    pub positions: Vec<u32>,
}

impl Ticket {
    /// The bundle position of the unit's task `index`.
    pub fn position(&self, index: usize) -> usize {
        self.positions.get(index).map_or(index, |&p| p as usize)
    }
}

/// A unit being run: shared by the slots that run its tasks.
#[derive(Debug)]
pub struct UnitRun {
    pub submitted: Timestamp,
    pub options: BundleOptions,
    pub ticket: Option<Ticket>,
    /// See [`WorkUnit::control`].
    pub control: Arc<UnitControl>,
    /// Tasks in the unit.
    pub total: usize,
    /// Tasks that finished, were abandoned, or will never start.
    ended: AtomicUsize,
    abandoned: AtomicBool,
}

impl UnitRun {
    pub fn new(unit: &WorkUnit) -> Arc<Self> {
        Arc::new(Self {
            submitted: unit.submitted,
            options: unit.options,
            ticket: unit.ticket.clone(),
            control: unit.control.clone(),
            total: unit.tasks.len(),
            ended: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
        })
    }

    /// Counts `n` tasks as ended (`ran`: all of them ran); when they were the
    /// unit's last, tells whether every task ran (`Some(true)`) or some did not.
    fn end_tasks(&self, n: usize, ran: bool) -> Option<bool> {
        if !ran {
            self.abandoned.store(true, Ordering::SeqCst);
        }
        let before = self.ended.fetch_add(n, Ordering::SeqCst);
        (before < self.total && before + n >= self.total)
            .then(|| !self.abandoned.load(Ordering::SeqCst))
    }
}

/// What the pool reports, in order for each unit: its tasks' results as they
/// finish, then its end.
#[derive(Debug)]
pub enum PoolEvent {
    /// Some of the unit's tasks finished (after their retries), each with its
    /// index in the unit.
    Results {
        unit: Arc<UnitRun>,
        results: Vec<(usize, TaskResult)>,
        /// The tasks' summed ideal time (see [`ideal_time`]), for efficiency.
        ideal: Duration,
    },
    /// Every task of the unit ended. `complete` is false when some were
    /// abandoned (abort) or never started (stop): the unit must not be
    /// acknowledged, but given back so that the rest runs elsewhere.
    UnitEnd { unit: Arc<UnitRun>, complete: bool },
}

impl PoolEvent {
    /// Reports a unit's results without running it (e.g. given up on).
    pub async fn report(
        unit: Arc<UnitRun>,
        results: Vec<TaskResult>,
        events: &async_channel::Sender<PoolEvent>,
    ) -> Result<(), async_channel::SendError<PoolEvent>> {
        let event = PoolEvent::Results {
            unit: unit.clone(),
            results: results.into_iter().enumerate().collect(),
            ideal: Duration::ZERO,
        };
        events.send(event).await?;
        events
            .send(PoolEvent::UnitEnd {
                unit,
                complete: true,
            })
            .await
    }
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
    /// Stop taking work; finish the tasks running. The units they belong to
    /// end incomplete, and their results so far stand: only the tasks that
    /// never started run again.
    pub stop: CancellationToken,
    /// Abandon the ones running too.
    pub abort: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Tasks of a unit that one slot runs in turn: one task of unknown or
/// noticeable length, or up to [`CHEAP_JOB`] of known-cheap ones (a `sleep 0`
/// must not pay a channel hand-off of its own).
struct Job {
    unit: Arc<UnitRun>,
    /// Each with its index in the unit.
    tasks: Vec<(usize, Task)>,
}

/// Known-cheap tasks share a job up to this much declared work.
const CHEAP_JOB: Duration = Duration::from_millis(1);
/// And up to this many tasks.
const CHEAP_JOB_TASKS: usize = 1024;

/// The next job from a unit's remaining tasks.
fn next_job<I>(tasks: &mut std::iter::Peekable<I>) -> Vec<(usize, Task)>
where
    I: Iterator<Item = (usize, Task)>,
{
    let cheap = |task: &Task| task.spec.nominal_duration().is_some_and(|d| d <= CHEAP_JOB);
    let Some(first) = tasks.next() else {
        return Vec::new();
    };
    let mut work = first.1.spec.nominal_duration().unwrap_or_default();
    let mut job = vec![first];
    if !cheap(&job[0].1) {
        return job;
    }
    while job.len() < CHEAP_JOB_TASKS {
        let Some((_, next)) = tasks.peek() else { break };
        let d = next.spec.nominal_duration();
        match d {
            Some(d) if cheap(next) && work + d <= CHEAP_JOB => work += d,
            _ => break,
        }
        job.extend(tasks.next());
    }
    job
}

/// Runs the pool until `units` is closed and drained, or until told to stop.
pub async fn run_pool(
    config: PoolConfig,
    registry: Arc<Registry>,
    units: async_channel::Receiver<WorkUnit>,
    events: async_channel::Sender<PoolEvent>,
    shutdown: Shutdown,
) {
    run_pool_lanes(config, registry, units, None, events, shutdown).await;
}

/// [`run_pool`], with the units of `first` (the bundles of the pool's
/// priority lane) dispatched before those of `units`, and between the jobs
/// of a unit under way: a bundle of the lane would otherwise start after
/// the worker's bundles held, ~13 s of a worker's slots on a small pool.
pub async fn run_pool_lanes(
    config: PoolConfig,
    registry: Arc<Registry>,
    units: async_channel::Receiver<WorkUnit>,
    first: Option<async_channel::Receiver<WorkUnit>>,
    events: async_channel::Sender<PoolEvent>,
    shutdown: Shutdown,
) {
    // One job in hand at most: a unit is taken from `units` only when a slot is
    // about to be free, so that units not yet started stay with whoever
    // holds them (the worker gives them back on shutdown).
    let (jobs_tx, jobs_rx) = async_channel::bounded::<Job>(1);
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..config.slots.max(1) {
        let worker: Arc<str> = format!("{}/{slot}", config.worker_id).into();
        slots.spawn(run_slot(
            worker,
            config.clone(),
            registry.clone(),
            jobs_rx.clone(),
            events.clone(),
            shutdown.clone(),
        ));
    }
    dispatch(&units, first, &jobs_tx, &events, &shutdown.stop).await;
    drop(jobs_tx);
    // Stopped: the slots take no more jobs, so the one waiting for a slot
    // ends now, for its bundle to be given back at once rather than after
    // the tasks running.
    if shutdown.stop.is_cancelled() {
        while let Ok(job) = jobs_rx.try_recv() {
            end_unstarted(&job.unit, job.tasks.len(), &events).await;
        }
    }
    while let Some(joined) = slots.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "a worker slot panicked");
        }
    }
    // Handed over but never started (the pool stopped).
    while let Ok(job) = jobs_rx.try_recv() {
        end_unstarted(&job.unit, job.tasks.len(), &events).await;
    }
}

/// Splits units into jobs for the slots, until `units` closes or `stop`;
/// the units of `first` before the others, and between their jobs.
async fn dispatch(
    units: &async_channel::Receiver<WorkUnit>,
    mut first: Option<async_channel::Receiver<WorkUnit>>,
    jobs: &async_channel::Sender<Job>,
    events: &async_channel::Sender<PoolEvent>,
    stop: &CancellationToken,
) {
    loop {
        let unit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            unit = recv_or_never(first.as_ref()) => match unit {
                Ok(unit) => unit,
                Err(_closed) => {
                    first = None;
                    continue;
                }
            },
            unit = units.recv() => match unit {
                Ok(unit) => unit,
                Err(_closed) => return,
            },
        };
        if !dispatch_unit(unit, first.as_ref(), jobs, events, stop).await {
            return;
        }
    }
}

/// The next unit of `lane`; never, without one.
async fn recv_or_never(
    lane: Option<&async_channel::Receiver<WorkUnit>>,
) -> Result<WorkUnit, async_channel::RecvError> {
    match lane {
        Some(lane) => lane.recv().await,
        None => std::future::pending().await,
    }
}

/// Hands a unit's tasks to the slots, a job at a time, and before each job
/// the units waiting in `first`, whole. False once stopped.
async fn dispatch_unit(
    unit: WorkUnit,
    first: Option<&async_channel::Receiver<WorkUnit>>,
    jobs: &async_channel::Sender<Job>,
    events: &async_channel::Sender<PoolEvent>,
    stop: &CancellationToken,
) -> bool {
    let run = UnitRun::new(&unit);
    if run.total == 0 {
        // Every task done by an earlier holder: nothing to run.
        let _ = events
            .send(PoolEvent::UnitEnd {
                unit: run,
                complete: true,
            })
            .await;
        return true;
    }
    let mut tasks = unit.tasks.into_iter().enumerate().peekable();
    loop {
        while let Some(ahead) = first.and_then(|f| f.try_recv().ok()) {
            if !Box::pin(dispatch_unit(ahead, None, jobs, events, stop)).await {
                end_unstarted(&run, tasks.len(), events).await;
                return false;
            }
        }
        let job = next_job(&mut tasks);
        if job.is_empty() {
            return true;
        }
        let n = job.len();
        let job = Job {
            unit: run.clone(),
            tasks: job,
        };
        let sent = tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            sent = jobs.send(job) => sent.is_ok(),
        };
        if !sent {
            end_unstarted(&run, n + tasks.len(), events).await;
            return false;
        }
    }
}

/// Counts `n` tasks of `unit` as never started, and reports its end if that
/// was the last of them.
async fn end_unstarted(unit: &Arc<UnitRun>, n: usize, events: &async_channel::Sender<PoolEvent>) {
    if let Some(complete) = unit.end_tasks(n, false) {
        let _ = events
            .send(PoolEvent::UnitEnd {
                unit: unit.clone(),
                complete,
            })
            .await;
    }
}

async fn run_slot(
    worker: Arc<str>,
    config: PoolConfig,
    registry: Arc<Registry>,
    jobs: async_channel::Receiver<Job>,
    events: async_channel::Sender<PoolEvent>,
    shutdown: Shutdown,
) {
    loop {
        let Job { unit, tasks } = tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => return,
            job = jobs.recv() => match job {
                Ok(job) => job,
                Err(_closed) => return,
            },
        };
        let n = tasks.len();
        let mut results = Vec::with_capacity(n);
        let mut ideal = Duration::ZERO;
        for (index, mut task) in tasks {
            if unit.control.stopped() {
                break;
            }
            unit.control.started();
            let Some(result) = run_task(
                &worker,
                &config,
                &unit.options,
                &registry,
                &mut task,
                unit.submitted,
                &shutdown,
            )
            .await
            else {
                break;
            };
            ideal += ideal_time(&task.spec, &result);
            results.push((index, result));
        }
        let ran = results.len() == n;
        if !results.is_empty() {
            let event = PoolEvent::Results {
                unit: unit.clone(),
                results,
                ideal,
            };
            if events.send(event).await.is_err() {
                return; // Nobody collects results any more.
            }
        }
        if let Some(complete) = unit.end_tasks(n, ran)
            && events
                .send(PoolEvent::UnitEnd { unit, complete })
                .await
                .is_err()
        {
            return;
        }
    }
}

/// The wait before a failing task runs again, after its `failed`-th failure
/// here: `first`, doubled for each further one. The simulator calls this too.
pub fn retry_delay(first: Duration, failed: u32) -> Duration {
    first.saturating_mul(2u32.saturating_pow(failed.saturating_sub(1)))
}

/// Runs a task, retrying a failure up to `max_attempts`; `None` if abandoned.
/// Once the pool stops taking work, a failed attempt is the task's result:
/// a retry is new work.
async fn run_task(
    worker: &Arc<str>,
    config: &PoolConfig,
    options: &BundleOptions,
    registry: &Registry,
    task: &mut Task,
    submitted: Timestamp,
    shutdown: &Shutdown,
) -> Option<TaskResult> {
    let Shutdown { stop, abort } = shutdown;
    let first_delay = options.retry_backoff.unwrap_or(config.retry_backoff);
    let max_attempts = options.max_attempts.unwrap_or(config.max_attempts);
    let mut failed = 0;
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
        let finished = Timestamp::now();
        if !output.outcome.is_success()
            && !output.retry_futile
            && task.attempt < max_attempts
            && !stop.is_cancelled()
        {
            tracing::debug!(task = task.id, attempt = task.attempt, outcome = ?output.outcome, "retrying");
            failed += 1;
            let retry = tokio::select! {
                biased;
                _ = abort.cancelled() => return None,
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(retry_delay(first_delay, failed)) => true,
            };
            if retry {
                task.attempt += 1;
                continue;
            }
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
            finished,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use cloudkon_core::{BatchId, Outcome, TaskSpec};

    fn unit(specs: Vec<TaskSpec>) -> WorkUnit {
        let n = specs.len();
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
            control: UnitControl::new(n),
        }
    }

    fn sh(script: &str) -> TaskSpec {
        TaskSpec::Run {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            expected_ms: None,
        }
    }

    /// Shell words that wait until the file `gate` exists.
    fn wait_for(gate: &std::path::Path) -> String {
        format!("while [ ! -e {} ]; do sleep 0.01; done", gate.display())
    }

    /// Runs `units` through a pool and returns what it reported, in order.
    async fn run(config: PoolConfig, units: Vec<WorkUnit>, shutdown: Shutdown) -> Vec<PoolEvent> {
        let (units_tx, units_rx) = async_channel::unbounded();
        for unit in units {
            units_tx.send(unit).await.unwrap();
        }
        drop(units_tx);
        let (events_tx, events_rx) = async_channel::unbounded();
        run_pool(
            config,
            Arc::new(Registry::new()),
            units_rx,
            events_tx,
            shutdown,
        )
        .await;
        let mut events = Vec::new();
        while let Ok(event) = events_rx.try_recv() {
            events.push(event);
        }
        events
    }

    fn results(events: &[PoolEvent]) -> Vec<&TaskResult> {
        events
            .iter()
            .flat_map(|e| match e {
                PoolEvent::Results { results, .. } => results.iter().map(|(_, r)| r).collect(),
                PoolEvent::UnitEnd { .. } => Vec::new(),
            })
            .collect()
    }

    fn ends(events: &[PoolEvent]) -> Vec<bool> {
        events
            .iter()
            .filter_map(|e| match e {
                PoolEvent::UnitEnd { complete, .. } => Some(*complete),
                PoolEvent::Results { .. } => None,
            })
            .collect()
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
        let events = run(config, vec![unit(vec![sh(&script)])], Shutdown::new()).await;
        assert_eq!(ends(&events), vec![true]);
        let results = results(&events);
        assert_eq!(results[0].outcome, Outcome::Succeeded);
        assert_eq!(results[0].attempt, 3);
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
        let PoolEvent::UnitEnd { unit, .. } = events.last().unwrap() else {
            panic!("the unit's end comes last");
        };
        let ticket = unit.ticket.as_ref().unwrap();
        assert_eq!(ticket.claim_key.as_deref(), Some("b#0"));
    }

    #[tokio::test]
    async fn a_program_that_is_not_there_is_not_retried() {
        let mut config = PoolConfig::new(1, "w");
        config.retry_backoff = Duration::from_millis(1);
        config.max_attempts = 3;
        let missing = TaskSpec::Run {
            program: "/nonexistent/prog".into(),
            args: vec![],
            expected_ms: None,
        };
        let events = run(config, vec![unit(vec![missing])], Shutdown::new()).await;
        let results = results(&events);
        assert_eq!(results[0].attempt, 1);
        assert!(
            matches!(&results[0].outcome, Outcome::Failed { reason } if reason.contains("cannot start")),
            "{:?}",
            results[0].outcome
        );
    }

    #[tokio::test]
    async fn a_stop_ends_retries_with_the_failed_attempt_as_the_result() {
        let shutdown = Shutdown::new();
        let stop = shutdown.stop.clone();
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let script = format!("echo x >> {}; exit 4", count.display());
        let mut config = PoolConfig::new(1, "w");
        config.retry_backoff = Duration::from_secs(60);
        config.max_attempts = 3;
        let (units_tx, units_rx) = async_channel::unbounded();
        units_tx.send(unit(vec![sh(&script)])).await.unwrap();
        drop(units_tx);
        let (events_tx, events_rx) = async_channel::unbounded();
        let pool = tokio::spawn(run_pool(
            config,
            Arc::new(Registry::new()),
            units_rx,
            events_tx,
            shutdown,
        ));
        // Stop once the first attempt has failed, in its backoff.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&count)
            .unwrap_or_default()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "the task never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stopped = Instant::now();
        stop.cancel();
        // Without the stop, the next retry would wait a minute.
        tokio::time::timeout(Duration::from_secs(20), pool)
            .await
            .unwrap_or_else(|_| panic!("still retrying {:?} after the stop", stopped.elapsed()))
            .unwrap();
        let mut events = Vec::new();
        while let Ok(event) = events_rx.try_recv() {
            events.push(event);
        }
        let results = results(&events);
        assert_eq!(results.len(), 1);
        assert_eq!((results[0].attempt, results[0].exit_code), (1, Some(4)));
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts_and_report_the_last_failure() {
        let mut config = PoolConfig::new(1, "w");
        config.retry_backoff = Duration::from_millis(1);
        config.max_attempts = 2;
        let events = run(config, vec![unit(vec![sh("exit 4")])], Shutdown::new()).await;
        let results = results(&events);
        assert_eq!(results[0].attempt, 2);
        assert_eq!(results[0].exit_code, Some(4));
    }

    #[tokio::test]
    async fn one_units_tasks_run_side_by_side_on_free_slots() {
        // Each task waits until all four have started: run in turn, the first
        // would wait for ever (and time out).
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "touch {0}/$$; while [ $(ls {0} | wc -l) -lt 4 ]; do sleep 0.01; done",
            dir.path().display()
        );
        let mut work = unit(vec![sh(&script); 4]);
        for task in &mut work.tasks {
            task.timeout = Some(Duration::from_secs(20));
        }
        let events = run(PoolConfig::new(4, "w"), vec![work], Shutdown::new()).await;
        let results = results(&events);
        assert_eq!(results.len(), 4);
        for r in &results {
            assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        }
        let mut slots: Vec<&str> = results.iter().map(|r| &*r.worker).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 4, "each task on its own slot: {slots:?}");
        assert_eq!(ends(&events), vec![true]);
        assert!(
            matches!(events.last(), Some(PoolEvent::UnitEnd { .. })),
            "the end comes after every result"
        );
    }

    #[tokio::test]
    async fn an_aborted_unit_ends_incomplete_with_what_ran() {
        let shutdown = Shutdown::new();
        let abort = shutdown.abort.clone();
        let (units_tx, units_rx) = async_channel::unbounded();
        units_tx
            .send(unit(vec![
                TaskSpec::Sleep { ms: 0 },
                TaskSpec::Sleep { ms: 60_000 },
            ]))
            .await
            .unwrap();
        drop(units_tx);
        let (events_tx, events_rx) = async_channel::unbounded();
        let pool = tokio::spawn(run_pool(
            PoolConfig::new(1, "w"),
            Arc::new(Registry::new()),
            units_rx,
            events_tx,
            shutdown,
        ));
        // The first result, then abort the long second task.
        let first = events_rx.recv().await.unwrap();
        let PoolEvent::Results { results, .. } = first else {
            panic!("expected results, got {first:?}");
        };
        assert_eq!(results.len(), 1);
        abort.cancel();
        pool.await.unwrap();
        let end = events_rx.recv().await.unwrap();
        let PoolEvent::UnitEnd { unit, complete } = end else {
            panic!("expected the unit's end, got {end:?}");
        };
        assert!(!complete);
        assert!(
            unit.ticket.is_some(),
            "the ticket comes back so the bundle can be given back"
        );
        assert!(events_rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_unit_of_the_priority_lane_starts_before_the_rest_of_the_unit_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let release = dir.path().join("release");
        // The held tasks wait for `release`, made once the lane's unit came.
        let held = format!("echo held >> {}; {}", log.display(), wait_for(&release));
        let (units_tx, units_rx) = async_channel::unbounded();
        units_tx.send(unit(vec![sh(&held); 20])).await.unwrap();
        let (first_tx, first_rx) = async_channel::unbounded();
        let (events_tx, events_rx) = async_channel::unbounded();
        let pool = tokio::spawn(run_pool_lanes(
            PoolConfig::new(1, "w"),
            Arc::new(Registry::new()),
            units_rx,
            Some(first_rx),
            events_tx,
            Shutdown::new(),
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
            assert!(Instant::now() < deadline, "the unit never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lane = format!("echo lane >> {}", log.display());
        first_tx.send(unit(vec![sh(&lane)])).await.unwrap();
        std::fs::write(&release, "").unwrap();
        drop((units_tx, first_tx));
        pool.await.unwrap();
        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), 21);
        // After the task running and the job in hand when it came, at most.
        let at = lines.iter().position(|l| l == "lane").unwrap();
        assert!(at <= 3, "the lane's task ran {}th: {lines:?}", at + 1);
        let mut ended = 0;
        while let Ok(event) = events_rx.try_recv() {
            ended += usize::from(matches!(event, PoolEvent::UnitEnd { complete: true, .. }));
        }
        assert_eq!(ended, 2);
    }

    #[tokio::test]
    async fn a_stop_finishes_running_tasks_and_ends_the_unit_incomplete() {
        let shutdown = Shutdown::new();
        let stop = shutdown.stop.clone();
        let dir = tempfile::tempdir().unwrap();
        let started = dir.path().join("started");
        std::fs::create_dir(&started).unwrap();
        let release = dir.path().join("release");
        // Each task runs until `release`, made after the stop.
        let script = format!("touch {}/$$; {}", started.display(), wait_for(&release));
        let (units_tx, units_rx) = async_channel::unbounded();
        units_tx.send(unit(vec![sh(&script); 6])).await.unwrap();
        let (events_tx, events_rx) = async_channel::unbounded();
        let pool = tokio::spawn(run_pool(
            PoolConfig::new(2, "w"),
            Arc::new(Registry::new()),
            units_rx,
            events_tx,
            shutdown,
        ));
        // Stop once both slots are busy.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_dir(&started).unwrap().count() < 2 {
            assert!(Instant::now() < deadline, "two tasks never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        std::fs::write(&release, "").unwrap();
        pool.await.unwrap();
        drop(units_tx);
        let mut events = Vec::new();
        while let Ok(event) = events_rx.try_recv() {
            events.push(event);
        }
        // The two running tasks finished; the four others never started.
        assert_eq!(results(&events).len(), 2);
        assert_eq!(ends(&events), vec![false]);
        assert_eq!(std::fs::read_dir(&started).unwrap().count(), 2);
    }

    #[test]
    fn cheap_tasks_share_a_job_and_others_go_alone() {
        let specs = [
            TaskSpec::Sleep { ms: 0 },
            TaskSpec::Sleep { ms: 0 },
            TaskSpec::Sleep { ms: 1 },
            TaskSpec::Sleep { ms: 1 },
            sh("true"),
            TaskSpec::Sleep { ms: 0 },
            TaskSpec::Sleep { ms: 50 },
        ];
        let mut tasks = unit(specs.to_vec())
            .tasks
            .into_iter()
            .enumerate()
            .peekable();
        let mut jobs = Vec::new();
        loop {
            let job: Vec<usize> = next_job(&mut tasks).into_iter().map(|(i, _)| i).collect();
            if job.is_empty() {
                break;
            }
            jobs.push(job);
        }
        assert_eq!(
            jobs,
            vec![vec![0, 1, 2], vec![3], vec![4], vec![5], vec![6]]
        );
        let many = unit(vec![TaskSpec::Sleep { ms: 0 }; 3000]);
        let mut tasks = many.tasks.into_iter().enumerate().peekable();
        assert_eq!(next_job(&mut tasks).len(), CHEAP_JOB_TASKS);
    }

    #[test]
    fn retry_delays_double_from_the_first() {
        let s = Duration::from_secs;
        let delays: Vec<Duration> = (1..=4).map(|n| retry_delay(s(1), n)).collect();
        assert_eq!(delays, vec![s(1), s(2), s(4), s(8)]);
        assert_eq!(retry_delay(s(1), 0), s(1));
        assert_eq!(
            retry_delay(s(1), 200),
            s(u64::from(u32::MAX)),
            "no overflow"
        );
    }

    #[tokio::test]
    async fn a_stopped_unit_leaves_its_unstarted_tasks() {
        let work = unit(vec![TaskSpec::Sleep { ms: 0 }; 3]);
        assert_eq!(work.control.waiting(), 3);
        assert!(work.control.stop());
        assert!(!work.control.stop(), "stopped once");
        assert_eq!(work.control.waiting(), 0, "none will start");
        let events = run(PoolConfig::new(1, "w"), vec![work], Shutdown::new()).await;
        assert!(results(&events).is_empty());
        assert_eq!(ends(&events), vec![false]);
    }

    #[tokio::test]
    async fn an_empty_unit_ends_complete_at_once() {
        let events = run(PoolConfig::new(2, "w"), vec![unit(vec![])], Shutdown::new()).await;
        assert_eq!(ends(&events), vec![true]);
    }
}
