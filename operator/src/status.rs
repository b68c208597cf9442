//! Status computation, pure: a TaskBatch's phase from its counts, the
//! conditions of both resources, the `kubectl get` columns; and condition
//! bookkeeping by the Kubernetes API conventions (`lastTransitionTime`
//! changes only when a condition's `status` does).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::taskbatch::{FailurePolicy, Phase, TaskCounts};
use crate::validate::{Invalid, summary};

/// What a batch's phase depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseInput {
    /// The phase in the status now (`None` for a new batch).
    pub previous: Option<Phase>,
    /// The spec is valid and its WorkerPool exists.
    pub accepted: bool,
    /// `spec.cancel`.
    pub cancel: bool,
    /// The source has been read through and every task is in the queue, so
    /// `counts.total` is final.
    pub enqueue_finished: bool,
    pub counts: TaskCounts,
    /// `spec.failurePolicy` gave up on the batch ([`failure_policy_verdict`]).
    pub gave_up: bool,
}

/// A batch's phase:
///
/// - a finished phase (Succeeded, Failed, Cancelled) never changes;
/// - `spec.cancel` → Cancelled;
/// - not accepted (invalid spec, missing pool) → the phase stays as it is
///   (Pending for a new batch): tasks already queued still run, and fixing
///   the spec goes on from there;
/// - past its failure policy → Failed;
/// - every task enqueued and finished → Failed if any failed, else Succeeded
///   (an empty batch succeeds);
/// - every task enqueued → Running;
/// - some enqueued (or Enqueuing already) → Enqueuing; none → Pending.
pub fn phase_of(input: &PhaseInput) -> Phase {
    if let Some(previous) = input.previous.filter(|p| p.is_finished()) {
        return previous;
    }
    if input.cancel {
        return Phase::Cancelled;
    }
    if !input.accepted {
        return input.previous.unwrap_or(Phase::Pending);
    }
    if input.gave_up {
        return Phase::Failed;
    }
    let c = &input.counts;
    if input.enqueue_finished {
        if c.succeeded + c.failed >= c.total {
            return if c.failed > 0 {
                Phase::Failed
            } else {
                Phase::Succeeded
            };
        }
        return Phase::Running;
    }
    // Never back from Enqueuing (a checkpoint may say so before its first
    // task is counted).
    if c.enqueued > 0 || input.previous == Some(Phase::Enqueuing) {
        Phase::Enqueuing
    } else {
        Phase::Pending
    }
}

/// `spec.failurePolicy.minTasksBeforeJudging` by default.
pub const MIN_TASKS_BEFORE_JUDGING: i64 = 100;

/// Whether a Failed batch was given up by its failure policy, as its status
/// tells: it failed before every task finished (one that ends by itself has
/// finished them all). Told by the status, not the spec: the policy may
/// have been edited since the runner judged by it, and a finished batch's
/// story does not change.
pub fn given_up(phase: Phase, counts: &TaskCounts) -> bool {
    phase == Phase::Failed && !every_task_finished(counts)
}

/// Every task of the batch finished: its total is known and reached.
fn every_task_finished(counts: &TaskCounts) -> bool {
    counts.total > 0 && counts.succeeded + counts.failed >= counts.total
}

/// The Failed condition that says the failure policy gave up, if said.
pub fn given_up_said(conditions: &[Condition]) -> Option<&Condition> {
    condition(conditions, batch_condition::FAILED)
        .filter(|c| c.reason == batch_condition::FAILURE_POLICY_REASON)
}

/// Why a batch [`given_up`] was: what its policy says of its counts, or,
/// when the policy was relaxed since, what the counts say.
pub fn given_up_why(policy: Option<&FailurePolicy>, counts: &TaskCounts) -> String {
    failure_policy_verdict(policy, counts).unwrap_or_else(|| {
        let finished = counts.succeeded + counts.failed;
        format!(
            "{} of {finished} finished tasks failed ({:.1} %), over spec.failurePolicy when the batch was judged (it was changed since): nothing more is enqueued and the batch's remaining tasks are skipped",
            counts.failed,
            100.0 * counts.failed as f64 / finished.max(1) as f64
        )
    })
}

/// Why the failure policy gives up on a batch, or `None`: more than
/// `maxFailedPercent` of its finished tasks failed, with at least
/// `minTasksBeforeJudging` finished. A batch whose every task finished
/// (`counts.total` known and reached) ended by itself and is not judged.
pub fn failure_policy_verdict(
    policy: Option<&FailurePolicy>,
    counts: &TaskCounts,
) -> Option<String> {
    let policy = policy?;
    let finished = counts.succeeded + counts.failed;
    let min = policy
        .min_tasks_before_judging
        .unwrap_or(MIN_TASKS_BEFORE_JUDGING)
        .max(1);
    if finished < min || every_task_finished(counts) {
        return None;
    }
    // failed / finished > max / 100, in integers.
    let max = i64::from(policy.max_failed_percent.clamp(0, 100));
    (counts.failed * 100 > max * finished).then(|| {
        format!(
            "{} of {finished} finished tasks failed ({:.1} %), over spec.failurePolicy.maxFailedPercent ({max} %): nothing more is enqueued and the batch's remaining tasks are skipped",
            counts.failed,
            100.0 * counts.failed as f64 / finished as f64
        )
    })
}

/// `finished/total` for `kubectl get`; while enqueuing, the total so far
/// with a `+`.
pub fn progress(counts: &TaskCounts, enqueue_finished: bool) -> String {
    let finished = counts.succeeded + counts.failed;
    if enqueue_finished {
        format!("{finished}/{}", counts.total)
    } else {
        format!("{finished}/{}+", counts.enqueued)
    }
}

/// Finished tasks per second over `elapsed`, to 0.1 task/s (so that the
/// status does not change on every look); `None` before any time passed.
pub fn throughput(finished: i64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| (finished as f64 / secs * 10.0).round() / 10.0)
}

/// To one decimal, as status shows figures.
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The `ETA` column: time left, coarse enough that the status does not
/// change every second (`45s`, `12m`, `3h5m`, `2d4h`).
pub fn eta_column(left: Duration) -> String {
    let s = left.as_secs();
    match s {
        0..60 => format!("{}s", (s / 5) * 5),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// A WorkerPool's `workers` column: `ready/desired`.
pub fn workers_column(ready: i32, desired: i32) -> String {
    format!("{ready}/{desired}")
}

/// Backlog per worker, to 0.1 (the backlog itself when there is no worker).
pub fn density(backlog: i64, workers: i32) -> f64 {
    let per = backlog as f64 / f64::from(workers.max(1));
    (per * 10.0).round() / 10.0
}

/// A condition to set: everything but the transition time, which
/// [`set_condition`] manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl ConditionUpdate {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        ConditionUpdate {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

fn status_word(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Sets one condition in `conditions`, keyed by type: `lastTransitionTime`
/// becomes `now` when the condition is new or its status changes, and stays
/// otherwise (reason, message and observedGeneration are updated in place).
/// Returns whether anything changed, so that an unchanged status is not
/// written again.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: &ConditionUpdate,
    observed_generation: Option<i64>,
    now: &Time,
) -> bool {
    let status = status_word(update.status);
    // An empty message is refused: a JSON merge patch of the status (on
    // Kubernetes 1.20 at least) turns "" into null, and the schema wants a
    // string. The reason says it as well.
    let message = if update.message.is_empty() {
        update.reason.clone()
    } else {
        update.message.clone()
    };
    let fresh = || Condition {
        type_: update.type_.to_string(),
        status: status.to_string(),
        reason: update.reason.clone(),
        message: message.clone(),
        observed_generation,
        last_transition_time: now.clone(),
    };
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        None => {
            conditions.push(fresh());
            true
        }
        Some(existing) if existing.status != status => {
            *existing = fresh();
            true
        }
        Some(existing) => {
            let changed = existing.reason != update.reason
                || existing.message != message
                || existing.observed_generation != observed_generation;
            existing.reason.clone_from(&update.reason);
            existing.message = message;
            existing.observed_generation = observed_generation;
            changed
        }
    }
}

/// The condition of that type, if any.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Condition types of a TaskBatch.
pub mod batch_condition {
    /// The spec is valid and its WorkerPool exists.
    pub const ACCEPTED: &str = "Accepted";
    /// `spec.suspend` is in effect.
    pub const SUSPENDED: &str = "Suspended";
    /// Every task succeeded.
    pub const COMPLETE: &str = "Complete";
    /// The batch finished with failed tasks, or was cancelled.
    pub const FAILED: &str = "Failed";
    /// Some of its tasks reached the pool's dead-letter queue (and were
    /// reported failed): present only then, with how many.
    pub const DEAD_LETTERED: &str = "DeadLettered";
    /// Some of its tasks were nowhere (see `TaskCounts::lost`) and were
    /// reported failed: present only then, with how many.
    pub const LOST: &str = "Lost";
    /// The `Failed` condition's reason when the failure policy ended the batch.
    pub const FAILURE_POLICY_REASON: &str = "FailurePolicy";
    /// Set while the batch is being deleted and its response queue or cancel
    /// mark could not be dealt with yet (retried with growing delays).
    pub const CLEANUP_FAILED: &str = "CleanupFailed";
    /// Its pool's workers cannot start or keep crashing (the pool's
    /// `Available` condition, reason `WorkersFailing`, repeated here while
    /// the batch runs): present once it was true.
    pub const WORKERS_FAILING: &str = "WorkersFailing";
    /// Its runner (the operator's task that sends its tasks and collects
    /// their results) stopped on an error, again and again: present once it
    /// was true, with the last error.
    pub const RUNNER_FAILING: &str = "RunnerFailing";
}

/// What a valid batch waits for before it sends anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing<'a> {
    /// Its WorkerPool, by name.
    Pool(&'a str),
    /// Its results' bucket: what to say.
    Bucket(&'a str),
    /// Its workload file could not be read (missing, or the read failed):
    /// what to say.
    Workload(&'a str),
}

/// What a TaskBatch's conditions should say.
#[derive(Clone, Debug)]
pub struct BatchConditionsInput<'a> {
    pub phase: Phase,
    /// The result of [`crate::validate::taskbatch`].
    pub validation: &'a Result<(), Vec<Invalid>>,
    /// What a valid batch waits for, if anything.
    pub missing: Option<Missing<'a>>,
    pub suspend: bool,
    pub counts: TaskCounts,
    /// [`failure_policy_verdict`], when the policy gave up on the batch.
    pub gave_up: Option<String>,
    /// The batch's pool's workers fail to start or run: what its pool says.
    pub workers_failing: Option<&'a str>,
    /// The batch has a `WorkersFailing` condition already (true or false).
    pub workers_failing_said: bool,
}

/// The four conditions of a TaskBatch, to pass to [`set_condition`].
pub fn batch_conditions(input: &BatchConditionsInput<'_>) -> Vec<ConditionUpdate> {
    use batch_condition::*;
    let accepted = match (input.validation, input.missing) {
        (Err(problems), _) => {
            ConditionUpdate::new(ACCEPTED, false, "InvalidSpec", summary(problems))
        }
        (Ok(()), Some(Missing::Pool(pool))) => ConditionUpdate::new(
            ACCEPTED,
            false,
            "WorkerPoolNotFound",
            format!("WorkerPool {pool:?} does not exist in this namespace"),
        ),
        (Ok(()), Some(Missing::Bucket(message))) => {
            ConditionUpdate::new(ACCEPTED, false, "ResultsBucketNotFound", message)
        }
        (Ok(()), Some(Missing::Workload(message))) => {
            ConditionUpdate::new(ACCEPTED, false, "WorkloadUnreadable", message)
        }
        (Ok(()), None) => ConditionUpdate::new(
            ACCEPTED,
            true,
            "Valid",
            "the spec is valid and its WorkerPool exists",
        ),
    };
    let suspended = if input.suspend && !input.phase.is_finished() {
        ConditionUpdate::new(
            SUSPENDED,
            true,
            "Suspended",
            "spec.suspend is set: nothing more is enqueued",
        )
    } else {
        ConditionUpdate::new(SUSPENDED, false, "NotSuspended", "")
    };
    let c = &input.counts;
    let complete = match input.phase {
        Phase::Succeeded => ConditionUpdate::new(
            COMPLETE,
            true,
            "AllTasksSucceeded",
            format!("{} of {} tasks succeeded", c.succeeded, c.total),
        ),
        _ => ConditionUpdate::new(COMPLETE, false, "NotFinished", ""),
    };
    let failed = match (input.phase, &input.gave_up) {
        (Phase::Failed, Some(why)) => {
            ConditionUpdate::new(FAILED, true, FAILURE_POLICY_REASON, why.clone())
        }
        (Phase::Failed, None) => ConditionUpdate::new(
            FAILED,
            true,
            "TasksFailed",
            format!(
                "{} of {} tasks failed after all their attempts",
                c.failed, c.total
            ),
        ),
        (Phase::Cancelled, _) => ConditionUpdate::new(
            FAILED,
            true,
            "Cancelled",
            format!(
                "cancelled (spec.cancel) with {} of {} tasks finished",
                c.succeeded + c.failed,
                c.total.max(c.enqueued)
            ),
        ),
        _ => ConditionUpdate::new(FAILED, false, "NoFailure", ""),
    };
    let mut updates = vec![accepted, suspended, complete, failed];
    // A batch waiting on workers that cannot start says so itself: whoever
    // looks only at the batch learns why nothing moves.
    match input.workers_failing {
        Some(problem) if !input.phase.is_finished() => updates.push(ConditionUpdate::new(
            WORKERS_FAILING,
            true,
            WORKERS_FAILING,
            problem,
        )),
        _ if input.workers_failing_said => {
            updates.push(ConditionUpdate::new(
                WORKERS_FAILING,
                false,
                "NotFailing",
                "",
            ));
        }
        _ => {}
    }
    if c.dead_lettered > 0 {
        updates.push(ConditionUpdate::new(
            DEAD_LETTERED,
            true,
            "TasksDeadLettered",
            format!(
                "{} tasks reached the dead-letter queue and were reported failed",
                c.dead_lettered
            ),
        ));
    }
    if c.lost > 0 {
        updates.push(ConditionUpdate::new(
            LOST,
            true,
            "TasksLost",
            format!(
                "{} tasks were sent and then found nowhere: the pool's queue held no message and none of its workers ran a task for the operator's --missing-after (the queue was purged or deleted, or its messages expired); they were reported failed",
                c.lost
            ),
        ));
    }
    updates
}

/// Condition types of a WorkerPool.
pub mod pool_condition {
    /// The spec is valid.
    pub const ACCEPTED: &str = "Accepted";
    /// The queue and its dead-letter queue exist.
    pub const QUEUE_READY: &str = "QueueReady";
    /// At least `workers.min` workers (and at least one, when there is a
    /// backlog) are ready.
    pub const AVAILABLE: &str = "Available";
    /// The desired worker count was held back from the backlog's
    /// recommendation (by min, max, a rate policy, stabilization, the
    /// cooldown, or an outside controller).
    pub const SCALING_LIMITED: &str = "ScalingLimited";
    /// Set while the pool is being deleted and its queues or fleet could not
    /// be released yet (the message says why; retried with growing delays).
    pub const CLEANUP_FAILED: &str = "CleanupFailed";
}

/// What a WorkerPool's conditions should say.
#[derive(Clone, Debug)]
pub struct PoolConditionsInput<'a> {
    /// The result of [`crate::validate::workerpool`].
    pub validation: &'a Result<(), Vec<Invalid>>,
    /// `None` when the queues exist, else why not.
    pub queue_problem: Option<&'a str>,
    pub ready: i32,
    pub min: i32,
    /// Messages visible plus in flight.
    pub backlog: i64,
    /// The scaler's latest decision.
    pub decision: &'a crate::scale::Decision,
    /// Why workers asked for are not ready, when waiting will not fix it.
    pub worker_problem: Option<&'a str>,
}

/// The `Available` condition's reason when workers cannot start or keep
/// crashing (the message says which pod and why).
pub const WORKERS_FAILING: &str = "WorkersFailing";

/// The four conditions of a WorkerPool, to pass to [`set_condition`].
pub fn pool_conditions(input: &PoolConditionsInput<'_>) -> Vec<ConditionUpdate> {
    use pool_condition::*;
    let accepted = match input.validation {
        Err(problems) => ConditionUpdate::new(ACCEPTED, false, "InvalidSpec", summary(problems)),
        Ok(()) => ConditionUpdate::new(ACCEPTED, true, "Valid", "the spec is valid"),
    };
    let queue = match input.queue_problem {
        Some(problem) => ConditionUpdate::new(QUEUE_READY, false, "QueueUnavailable", problem),
        None => ConditionUpdate::new(
            QUEUE_READY,
            true,
            "QueueReady",
            "the queue and its dead-letter queue exist",
        ),
    };
    let needed = if input.backlog > 0 {
        input.min.max(1)
    } else {
        input.min
    };
    let available = if input.ready >= needed {
        ConditionUpdate::new(
            AVAILABLE,
            true,
            "EnoughWorkers",
            format!("{} ready, {needed} needed", input.ready),
        )
    } else if let Some(problem) = input.worker_problem {
        ConditionUpdate::new(
            AVAILABLE,
            false,
            WORKERS_FAILING,
            format!("{} ready, {needed} needed: {problem}", input.ready),
        )
    } else {
        ConditionUpdate::new(
            AVAILABLE,
            false,
            "TooFewReadyWorkers",
            format!("{} ready, {needed} needed", input.ready),
        )
    };
    let limited = match input.decision.constraint {
        Some(constraint) => ConditionUpdate::new(
            SCALING_LIMITED,
            true,
            constraint.reason(),
            input.decision.reason.clone(),
        ),
        None => ConditionUpdate::new(
            SCALING_LIMITED,
            false,
            "DesiredWithinRange",
            input.decision.reason.clone(),
        ),
    };
    vec![accepted, queue, available, limited]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate;

    fn counts(total: i64, enqueued: i64, succeeded: i64, failed: i64) -> TaskCounts {
        TaskCounts {
            total,
            enqueued,
            succeeded,
            failed,
            ..TaskCounts::default()
        }
    }

    #[test]
    fn phase_table() {
        use Phase::*;
        // (name, previous, accepted, cancel, enqueue finished, counts, want)
        let cases = [
            (
                "new and not accepted",
                None,
                false,
                false,
                false,
                counts(0, 0, 0, 0),
                Pending,
            ),
            (
                "accepted, nothing enqueued yet",
                None,
                true,
                false,
                false,
                counts(0, 0, 0, 0),
                Pending,
            ),
            (
                "enqueuing",
                Some(Pending),
                true,
                false,
                false,
                counts(0, 500, 10, 0),
                Enqueuing,
            ),
            (
                "never back from enqueuing",
                Some(Enqueuing),
                true,
                false,
                false,
                counts(0, 0, 0, 0),
                Enqueuing,
            ),
            (
                "all enqueued",
                Some(Enqueuing),
                true,
                false,
                true,
                counts(1000, 1000, 10, 0),
                Running,
            ),
            (
                "all succeeded",
                Some(Running),
                true,
                false,
                true,
                counts(1000, 1000, 1000, 0),
                Succeeded,
            ),
            (
                "all finished, some failed",
                Some(Running),
                true,
                false,
                true,
                counts(1000, 1000, 997, 3),
                Failed,
            ),
            (
                "an empty batch succeeds at once",
                None,
                true,
                false,
                true,
                counts(0, 0, 0, 0),
                Succeeded,
            ),
            (
                "finished tasks while enqueuing are not the end",
                Some(Enqueuing),
                true,
                false,
                false,
                counts(0, 10, 10, 0),
                Enqueuing,
            ),
            (
                "cancelled while running",
                Some(Running),
                true,
                true,
                true,
                counts(1000, 1000, 10, 0),
                Cancelled,
            ),
            (
                "cancelled before being accepted",
                None,
                false,
                true,
                false,
                counts(0, 0, 0, 0),
                Cancelled,
            ),
            (
                "cancel after success changes nothing",
                Some(Succeeded),
                true,
                true,
                true,
                counts(5, 5, 5, 0),
                Succeeded,
            ),
            (
                "a failed batch stays failed",
                Some(Failed),
                true,
                false,
                true,
                counts(5, 5, 5, 0),
                Failed,
            ),
            (
                "a cancelled batch stays cancelled",
                Some(Cancelled),
                true,
                false,
                true,
                counts(5, 5, 5, 0),
                Cancelled,
            ),
            (
                "spec made invalid while running: keep running",
                Some(Running),
                false,
                false,
                true,
                counts(5, 5, 5, 0),
                Running,
            ),
        ];
        for (name, previous, accepted, cancel, enqueue_finished, counts, want) in cases {
            let input = PhaseInput {
                previous,
                accepted,
                cancel,
                enqueue_finished,
                counts,
                gave_up: false,
            };
            assert_eq!(phase_of(&input), want, "{name}");
        }
        // The failure policy ends a batch Failed mid-way, unless cancelled
        // first or not accepted; a finished batch stays as it is.
        let gave_up = |previous, accepted, cancel| {
            phase_of(&PhaseInput {
                previous,
                accepted,
                cancel,
                enqueue_finished: false,
                counts: counts(0, 500, 10, 90),
                gave_up: true,
            })
        };
        assert_eq!(gave_up(Some(Enqueuing), true, false), Failed);
        assert_eq!(gave_up(Some(Enqueuing), true, true), Cancelled);
        assert_eq!(gave_up(Some(Enqueuing), false, false), Enqueuing);
        assert_eq!(gave_up(Some(Succeeded), true, false), Succeeded);
    }

    #[test]
    fn a_batch_given_up_is_told_by_its_status_alone() {
        // Failed mid-enqueue (no total yet), or before every task finished.
        assert!(given_up(Phase::Failed, &counts(0, 200, 10, 90)));
        assert!(given_up(Phase::Failed, &counts(300, 300, 10, 90)));
        // Ended by itself, or not failed.
        assert!(!given_up(Phase::Failed, &counts(100, 100, 10, 90)));
        assert!(!given_up(Phase::Running, &counts(0, 200, 10, 90)));
        assert!(!given_up(Phase::Cancelled, &counts(300, 300, 10, 90)));
        let relaxed = given_up_why(None, &counts(0, 200, 10, 90));
        assert!(
            relaxed.starts_with(
                "90 of 100 finished tasks failed (90.0 %), over spec.failurePolicy when"
            ),
            "{relaxed}"
        );
    }

    #[test]
    fn the_failure_policy_judges_after_enough_tasks_and_not_a_finished_batch() {
        let policy = |max, min| FailurePolicy {
            max_failed_percent: max,
            min_tasks_before_judging: min,
        };
        let judge = |p: Option<&FailurePolicy>, total, succeeded, failed| {
            failure_policy_verdict(p, &counts(total, total, succeeded, failed))
        };
        let ten = policy(10, None);
        // No policy, or too few finished (100 by default): not judged.
        assert_eq!(judge(None, 1000, 0, 500), None);
        assert_eq!(judge(Some(&ten), 1000, 0, 99), None);
        // At the percentage: still fine; one over: given up.
        assert_eq!(judge(Some(&ten), 1000, 90, 10), None);
        let why = judge(Some(&ten), 1000, 89, 11).unwrap();
        assert_eq!(
            why,
            "11 of 100 finished tasks failed (11.0 %), over spec.failurePolicy.maxFailedPercent (10 %): nothing more is enqueued and the batch's remaining tasks are skipped"
        );
        // The total unknown yet (still enqueuing): judged.
        assert!(judge(Some(&ten), 0, 50, 50).is_some());
        // Every task finished: it ended by itself.
        assert_eq!(judge(Some(&ten), 100, 50, 50), None);
        // 0 %: the first failure, once enough have finished.
        let zero = policy(0, Some(1));
        assert!(judge(Some(&zero), 1000, 0, 1).is_some());
        assert_eq!(judge(Some(&zero), 1000, 5, 0), None);
        // 100 %: never.
        assert_eq!(judge(Some(&policy(100, Some(1))), 1000, 0, 999), None);
    }

    #[test]
    fn the_eta_column_is_coarse() {
        let s = Duration::from_secs;
        assert_eq!(eta_column(s(44)), "40s");
        assert_eq!(eta_column(s(61)), "1m");
        assert_eq!(eta_column(s(3600 * 3 + 5 * 60 + 59)), "3h5m");
        assert_eq!(eta_column(s(86400 * 2 + 3600 * 4)), "2d4h");
        assert_eq!(round(2.345), 2.3);
    }

    #[test]
    fn columns() {
        assert_eq!(progress(&counts(1000, 1000, 990, 3), true), "993/1000");
        assert_eq!(progress(&counts(0, 4096, 10, 0), false), "10/4096+");
        assert_eq!(throughput(1000, Duration::from_secs(3)), Some(333.3));
        assert_eq!(throughput(5, Duration::ZERO), None);
        assert_eq!(workers_column(2, 5), "2/5");
        assert_eq!(density(35, 4), 8.8);
        assert_eq!(density(35, 0), 35.0);
    }

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    #[test]
    fn last_transition_time_changes_only_with_the_status() {
        let mut conditions = Vec::new();
        let ready = |status, reason: &str| ConditionUpdate::new("Ready", status, reason, reason);

        // (step, update, generation, now, want changed, want status, want lastTransitionTime)
        let steps = [
            (
                "new condition",
                ready(false, "Starting"),
                1,
                0,
                true,
                "False",
                0,
            ),
            (
                "same again: nothing to write",
                ready(false, "Starting"),
                1,
                10,
                false,
                "False",
                0,
            ),
            (
                "new reason, same status: time kept",
                ready(false, "Waiting"),
                1,
                20,
                true,
                "False",
                0,
            ),
            (
                "new generation only: time kept",
                ready(false, "Waiting"),
                2,
                30,
                true,
                "False",
                0,
            ),
            (
                "status flips: time moves",
                ready(true, "Ready"),
                2,
                40,
                true,
                "True",
                40,
            ),
            ("flips back", ready(false, "Lost"), 2, 50, true, "False", 50),
        ];
        for (step, update, generation, now, want_changed, want_status, want_time) in steps {
            let changed = set_condition(&mut conditions, &update, Some(generation), &time(now));
            assert_eq!(changed, want_changed, "{step}");
            assert_eq!(conditions.len(), 1, "{step}");
            let c = condition(&conditions, "Ready").unwrap();
            assert_eq!(c.status, want_status, "{step}");
            assert_eq!(c.last_transition_time, time(want_time), "{step}");
            assert_eq!(c.reason, update.reason, "{step}");
            assert_eq!(c.observed_generation, Some(generation), "{step}");
        }

        // Another type is another condition.
        set_condition(
            &mut conditions,
            &ConditionUpdate::new("Other", true, "X", ""),
            None,
            &time(60),
        );
        assert_eq!(conditions.len(), 2);
        assert_eq!(
            condition(&conditions, "Ready")
                .unwrap()
                .last_transition_time,
            time(50)
        );
    }

    #[test]
    fn batch_conditions_table() {
        let valid: Result<(), Vec<Invalid>> = Ok(());
        let spec: crate::crd::TaskBatchSpec = serde_json::from_value(serde_json::json!({
            "tasks": {}, "workerPool": "",
        }))
        .unwrap();
        let invalid = validate::taskbatch(&spec);
        let input = |phase, validation, missing, suspend| BatchConditionsInput {
            phase,
            validation,
            missing,
            suspend,
            counts: counts(10, 10, 7, 3),
            gave_up: None,
            workers_failing: None,
            workers_failing_said: false,
        };
        // (name, input, want: [(type, status, reason)])
        let cases = [
            (
                "invalid spec",
                input(Phase::Pending, &invalid, None, false),
                [
                    ("Accepted", false, "InvalidSpec"),
                    ("Suspended", false, "NotSuspended"),
                    ("Complete", false, "NotFinished"),
                    ("Failed", false, "NoFailure"),
                ],
            ),
            (
                "missing pool",
                input(Phase::Pending, &valid, Some(Missing::Pool("pool-a")), false),
                [
                    ("Accepted", false, "WorkerPoolNotFound"),
                    ("Suspended", false, "NotSuspended"),
                    ("Complete", false, "NotFinished"),
                    ("Failed", false, "NoFailure"),
                ],
            ),
            (
                "suspended while enqueuing",
                input(Phase::Enqueuing, &valid, None, true),
                [
                    ("Accepted", true, "Valid"),
                    ("Suspended", true, "Suspended"),
                    ("Complete", false, "NotFinished"),
                    ("Failed", false, "NoFailure"),
                ],
            ),
            (
                "succeeded",
                input(Phase::Succeeded, &valid, None, false),
                [
                    ("Accepted", true, "Valid"),
                    ("Suspended", false, "NotSuspended"),
                    ("Complete", true, "AllTasksSucceeded"),
                    ("Failed", false, "NoFailure"),
                ],
            ),
            (
                "failed; suspend no longer matters",
                input(Phase::Failed, &valid, None, true),
                [
                    ("Accepted", true, "Valid"),
                    ("Suspended", false, "NotSuspended"),
                    ("Complete", false, "NotFinished"),
                    ("Failed", true, "TasksFailed"),
                ],
            ),
            (
                "cancelled",
                input(Phase::Cancelled, &valid, None, false),
                [
                    ("Accepted", true, "Valid"),
                    ("Suspended", false, "NotSuspended"),
                    ("Complete", false, "NotFinished"),
                    ("Failed", true, "Cancelled"),
                ],
            ),
        ];
        for (name, input, want) in cases {
            let got: Vec<_> = batch_conditions(&input)
                .into_iter()
                .map(|c| (c.type_, c.status, c.reason))
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(t, s, r)| (t, s, r.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
        let messages = batch_conditions(&input(Phase::Failed, &invalid, None, false));
        assert_eq!(
            messages[0].message,
            "spec.tasks has no source: set one of inline, configMap, s3 or generator; spec.workerPool is required"
        );
        assert_eq!(
            messages[3].message,
            "3 of 10 tasks failed after all their attempts"
        );
        assert!(
            messages
                .iter()
                .all(|c| c.type_ != batch_condition::DEAD_LETTERED),
            "no DeadLettered condition without dead-lettered tasks"
        );
        let dead = batch_conditions(&BatchConditionsInput {
            counts: TaskCounts {
                dead_lettered: 2,
                ..counts(10, 10, 7, 3)
            },
            ..input(Phase::Failed, &valid, None, false)
        });
        let last = dead.last().unwrap();
        assert_eq!(
            (last.type_, last.status, last.reason.as_str()),
            (batch_condition::DEAD_LETTERED, true, "TasksDeadLettered")
        );
        assert_eq!(
            last.message,
            "2 tasks reached the dead-letter queue and were reported failed"
        );
        assert!(dead.iter().all(|c| c.type_ != batch_condition::LOST));
        let lost = batch_conditions(&BatchConditionsInput {
            counts: TaskCounts {
                lost: 4,
                ..counts(10, 10, 6, 4)
            },
            ..input(Phase::Failed, &valid, None, false)
        });
        let last = lost.last().unwrap();
        assert_eq!(
            (last.type_, last.status, last.reason.as_str()),
            (batch_condition::LOST, true, "TasksLost")
        );
        assert!(
            last.message
                .starts_with("4 tasks were sent and then found nowhere")
        );
        let gave_up = batch_conditions(&BatchConditionsInput {
            gave_up: Some("too many failed".into()),
            ..input(Phase::Failed, &valid, None, false)
        });
        assert_eq!(
            (
                gave_up[3].type_,
                gave_up[3].status,
                gave_up[3].reason.as_str()
            ),
            (batch_condition::FAILED, true, "FailurePolicy")
        );
        assert_eq!(gave_up[3].message, "too many failed");
    }

    #[test]
    fn pool_conditions_table() {
        use crate::scale::{Constraint, Decision};
        let valid: Result<(), Vec<Invalid>> = Ok(());
        let spec: crate::crd::WorkerPoolSpec = serde_json::from_value(serde_json::json!({
            "workers": {"min": 3, "max": 1}, "template": {"image": "x"},
        }))
        .unwrap();
        let invalid = validate::workerpool(&spec, "ns", &Default::default());
        let free = Decision {
            replicas: 2,
            recommendation: 2,
            constraint: None,
            reason: "backlog 20".into(),
        };
        let capped = Decision {
            constraint: Some(Constraint::Max),
            ..free.clone()
        };
        let input =
            |validation, queue_problem, ready, min, backlog, decision| PoolConditionsInput {
                validation,
                queue_problem,
                ready,
                min,
                backlog,
                decision,
                worker_problem: None,
            };
        // (name, input, want: [(type, status, reason)])
        let cases = [
            (
                "all well",
                input(&valid, None, 2, 0, 20, &free),
                [
                    ("Accepted", true, "Valid"),
                    ("QueueReady", true, "QueueReady"),
                    ("Available", true, "EnoughWorkers"),
                    ("ScalingLimited", false, "DesiredWithinRange"),
                ],
            ),
            (
                "an idle pool at zero is available",
                input(&valid, None, 0, 0, 0, &free),
                [
                    ("Accepted", true, "Valid"),
                    ("QueueReady", true, "QueueReady"),
                    ("Available", true, "EnoughWorkers"),
                    ("ScalingLimited", false, "DesiredWithinRange"),
                ],
            ),
            (
                "a backlog and no ready worker",
                input(&valid, None, 0, 0, 5, &free),
                [
                    ("Accepted", true, "Valid"),
                    ("QueueReady", true, "QueueReady"),
                    ("Available", false, "TooFewReadyWorkers"),
                    ("ScalingLimited", false, "DesiredWithinRange"),
                ],
            ),
            (
                "below min",
                input(&valid, None, 1, 2, 0, &free),
                [
                    ("Accepted", true, "Valid"),
                    ("QueueReady", true, "QueueReady"),
                    ("Available", false, "TooFewReadyWorkers"),
                    ("ScalingLimited", false, "DesiredWithinRange"),
                ],
            ),
            (
                "invalid, no queue, capped",
                input(
                    &invalid,
                    Some("AccessDenied on CreateQueue"),
                    1,
                    1,
                    9,
                    &capped,
                ),
                [
                    ("Accepted", false, "InvalidSpec"),
                    ("QueueReady", false, "QueueUnavailable"),
                    ("Available", true, "EnoughWorkers"),
                    ("ScalingLimited", true, "TooManyReplicas"),
                ],
            ),
        ];
        for (name, input, want) in cases {
            let got: Vec<_> = pool_conditions(&input)
                .into_iter()
                .map(|c| (c.type_, c.status, c.reason))
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(t, s, r)| (t, s, r.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
        // Workers that cannot start: which pod and why.
        let failing = pool_conditions(&PoolConditionsInput {
            worker_problem: Some("pod p-1: ImagePullBackOff: no such image"),
            ..input(&valid, None, 0, 0, 5, &free)
        });
        assert_eq!(
            (
                failing[2].status,
                failing[2].reason.as_str(),
                failing[2].message.as_str()
            ),
            (
                false,
                WORKERS_FAILING,
                "0 ready, 1 needed: pod p-1: ImagePullBackOff: no such image"
            )
        );
    }
}
