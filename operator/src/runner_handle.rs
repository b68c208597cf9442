//! What the operator holds of a running batch: its runner's task, the
//! channel that brings it the batch's latest spec, and the runners before it
//! that stopped on an error, so that a runner failing at once each time is
//! started again with growing delays and the batch says why.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::crd::taskbatch::TaskBatchSpec;
use crate::error::Error;

/// The first delay before a failed runner starts again; it doubles with
/// each failure in a row.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest delay between two runners of a batch.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// A runner that ran this long before it failed was not failing at once:
/// the count of failures in a row starts again.
pub const RAN_WELL: Duration = Duration::from_secs(120);

/// A running batch, as the reconciler holds it.
pub struct RunnerHandle {
    task: JoinHandle<Result<(), Error>>,
    /// The batch's latest spec (suspend).
    pub spec: watch::Sender<TaskBatchSpec>,
    pub started: Instant,
    /// The runners of this batch that stopped on an error, in a row, this
    /// one's end included once it was read.
    pub failures: Failures,
    /// The task's end was read into `failures` (a task's result is read once).
    ended: bool,
    /// It ended with `Ok`: its batch finished or gave up (or it was told to
    /// stop), its status written.
    ended_well: bool,
}

/// Runners of a batch that stopped on an error, in a row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    /// When the last one stopped, and why.
    pub last: Option<(Instant, String)>,
}

/// What a batch says of its failing runners: why, and how long until the
/// next one starts (zero: now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerFailing {
    pub count: u32,
    pub message: String,
    pub retry_in: Duration,
}

impl Failures {
    /// After a runner that ran for `ran` ended, with `error` if it failed.
    pub fn after(&self, ran: Duration, error: Option<String>, now: Instant) -> Failures {
        match error {
            None => Failures::default(),
            Some(message) => Failures {
                count: if ran >= RAN_WELL { 1 } else { self.count + 1 },
                last: Some((now, message)),
            },
        }
    }

    /// How long after the last failure the next runner starts.
    pub fn delay(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        FIRST_RETRY
            .saturating_mul(1 << (self.count - 1).min(16))
            .min(MAX_RETRY)
    }

    /// What the batch says at `now`: `running_for` is how long the current
    /// runner has run, `None` when none runs. Nothing once a runner ran
    /// well since the last failure.
    pub fn failing(&self, running_for: Option<Duration>, now: Instant) -> Option<RunnerFailing> {
        let (at, message) = self.last.as_ref()?;
        if self.count == 0 || running_for.is_some_and(|ran| ran >= RAN_WELL) {
            return None;
        }
        let retry_in = match running_for {
            Some(_) => Duration::ZERO,
            None => self
                .delay()
                .saturating_sub(now.saturating_duration_since(*at)),
        };
        Some(RunnerFailing {
            count: self.count,
            message: message.clone(),
            retry_in,
        })
    }
}

impl RunnerHandle {
    pub fn new(
        task: JoinHandle<Result<(), Error>>,
        spec: watch::Sender<TaskBatchSpec>,
        failures: Failures,
    ) -> Self {
        RunnerHandle {
            task,
            spec,
            started: Instant::now(),
            failures,
            ended: false,
            ended_well: false,
        }
    }

    /// Whether its task ended with `Ok`: its batch finished or gave up. No
    /// runner is to be started after it, though the object a reconcile read
    /// says the batch runs: that object is older than the runner's last
    /// write, and a runner started from it would write the batch back to
    /// Running (its counts back too) before the finish was seen again.
    pub fn ended_well(&mut self) -> bool {
        self.read_end(Instant::now());
        self.ended_well
    }

    /// Reads the task's end into `failures`, once, if it ended.
    fn read_end(&mut self, now: Instant) {
        if self.alive() || self.ended {
            return;
        }
        self.ended = true;
        let error = match (&mut self.task).now_or_never() {
            Some(Ok(Ok(()))) => {
                self.ended_well = true;
                None
            }
            Some(Ok(Err(e))) => Some(error_chain(&e)),
            Some(Err(e)) if e.is_panic() => Some("the batch's runner panicked".to_string()),
            // Aborted (stopped by the reconciler): not a failure.
            Some(Err(_)) | None => None,
        };
        let ran = now.saturating_duration_since(self.started);
        self.failures = self.failures.after(ran, error, now);
    }

    /// Whether its task still runs.
    pub fn alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// What the batch says of its runners now (see [`Failures::failing`]),
    /// once this one's end, if it ended, is counted.
    pub fn failing(&mut self, now: Instant) -> Option<RunnerFailing> {
        if self.alive() {
            let ran = now.saturating_duration_since(self.started);
            if ran >= RAN_WELL {
                self.failures = Failures::default();
            }
            return self.failures.failing(Some(ran), now);
        }
        self.read_end(now);
        self.failures.failing(None, now)
    }

    /// Asks the runner to stop at its next step (it writes its checkpoint
    /// first: see `Runner::run`); its task ends when it has. `None` when its
    /// end was read already (a task's end is awaited once).
    pub fn stop(self) -> Option<JoinHandle<Result<(), Error>>> {
        drop(self.spec);
        (!self.ended).then_some(self.task)
    }

    /// Aborts the runner; its task, to await its end, unless that was read.
    pub fn abort(self) -> Option<JoinHandle<Result<(), Error>>> {
        self.task.abort();
        (!self.ended).then_some(self.task)
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        // thiserror's `{source}` in a message repeats it.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runners_failing_at_once_wait_longer_each_time_up_to_five_minutes() {
        let t0 = Instant::now();
        let mut f = Failures::default();
        assert_eq!(f.delay(), Duration::ZERO);
        assert_eq!(f.failing(None, t0), None);
        let mut delays = Vec::new();
        for _ in 0..8 {
            f = f.after(Duration::from_secs(1), Some("denied".into()), t0);
            delays.push(f.delay().as_secs());
        }
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        let said = f.failing(None, t0 + Duration::from_secs(100)).unwrap();
        assert_eq!(said.count, 8);
        assert_eq!(said.message, "denied");
        assert_eq!(said.retry_in, Duration::from_secs(200));
        // A runner started again: no wait, still said until it ran well.
        assert_eq!(
            f.failing(Some(Duration::from_secs(10)), t0)
                .unwrap()
                .retry_in,
            Duration::ZERO
        );
        assert_eq!(f.failing(Some(RAN_WELL), t0), None);
        // One that ran well before it failed starts the count again.
        f = f.after(RAN_WELL, Some("throttled".into()), t0);
        assert_eq!((f.count, f.delay()), (1, FIRST_RETRY));
        // One that ended without an error clears them.
        assert_eq!(f.after(Duration::ZERO, None, t0), Failures::default());
    }

    #[tokio::test]
    async fn a_runner_that_failed_is_read_once_and_counted_once() {
        let spec: TaskBatchSpec = serde_json::from_value(
            serde_json::json!({"workerPool": "p", "tasks": {"inline": [{"kind": "sleep", "ms": 1}]}}),
        )
        .unwrap();
        let (spec, _) = watch::channel(spec);
        let task =
            tokio::spawn(async { Err(Error::Other("cannot write the collected ids".into())) });
        let mut handle = RunnerHandle::new(task, spec, Failures::default());
        while handle.alive() {
            tokio::task::yield_now().await;
        }
        let now = Instant::now();
        let said = handle.failing(now).expect("failing");
        assert_eq!(
            (said.count, said.message.as_str()),
            (1, "cannot write the collected ids")
        );
        assert!(said.retry_in <= FIRST_RETRY, "{said:?}");
        // Read again: the same failure, not a second one.
        assert_eq!(handle.failing(now).unwrap().count, 1);
        // Its end was read: stopping it does not await it again (tokio
        // panics on a JoinHandle polled after completion).
        assert!(handle.abort().is_none());
    }

    /// A runner whose batch finished (`Ok`) is not followed by another: the
    /// reconcile that saw it ended may hold an object older than its finish.
    /// One that failed, or was aborted, is.
    #[tokio::test]
    async fn only_a_runner_that_ended_well_is_not_followed() {
        let spec: TaskBatchSpec = serde_json::from_value(
            serde_json::json!({"workerPool": "p", "tasks": {"inline": [{"kind": "sleep", "ms": 1}]}}),
        )
        .unwrap();
        let ended = |task: JoinHandle<Result<(), Error>>| {
            let (spec, _) = watch::channel(spec.clone());
            RunnerHandle::new(task, spec, Failures::default())
        };
        let mut well = ended(tokio::spawn(async { Ok(()) }));
        let mut failed = ended(tokio::spawn(async { Err(Error::Other("denied".into())) }));
        let mut aborted = ended(tokio::spawn(std::future::pending()));
        aborted.task.abort();
        let mut running = ended(tokio::spawn(std::future::pending()));
        while well.alive() || failed.alive() || aborted.alive() {
            tokio::task::yield_now().await;
        }
        assert!(well.ended_well());
        assert!(!failed.ended_well());
        assert!(!aborted.ended_well());
        assert!(!running.ended_well());
        // Its end read once: still said after, and a failure still counted.
        assert!(well.ended_well());
        assert_eq!(failed.failing(Instant::now()).map(|f| f.count), Some(1));
    }
}
