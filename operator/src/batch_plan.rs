//! What one reconcile of a TaskBatch does, decided without I/O: from what
//! the reconciler read ([`Observed`]) to a [`Plan`] — the reconciler's part
//! of the status (written once), the Events, the runner to start, keep or
//! stop, the cancel mark, and when to look again. The reconciler
//! ([`crate::batch_reconciler`]) reads, calls [`decide`], and carries it out.

use std::time::Duration;

use cloudkon_core::aws::S3Uri;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::crd::taskbatch::{Phase, TaskBatchStatus};
use crate::crd::{TaskBatch, WorkerPool};
use crate::runner_handle::RunnerFailing;
use crate::status::{self, BatchConditionsInput, Missing, PhaseInput, set_condition};
use crate::status_patch::{CountsPatch, StatusPatch};
use crate::validate::Invalid;

/// How often a batch whose workload file was found invalid reads it again.
pub const FILE_RECHECK: Duration = Duration::from_secs(30);

/// What a reconcile of a live batch read.
pub struct Observed<'a> {
    pub batch: &'a TaskBatch,
    /// The spec's validation, with the workload file's when it was read.
    pub validation: Result<(), Vec<Invalid>>,
    /// The batch's WorkerPool exists.
    pub pool_exists: bool,
    /// The pool's queue, once the pool made it.
    pub queue_url: Option<String>,
    /// The workload file waits for operator memory: why.
    pub waiting_for_memory: Option<String>,
    /// Where results go: kept once the batch started ([`results_location`]).
    pub results: Option<S3Uri>,
    /// The results' bucket does not exist: what to say (nothing is sent
    /// until it does).
    pub missing_bucket: Option<String>,
    /// The workload file could not be read (missing, or the read failed):
    /// what to say. Read again until it is.
    pub workload_unreadable: Option<String>,
    /// The validation's problems are the workload file's (a ConfigMap or S3
    /// object): read again, as its fix changes no TaskBatch.
    pub file_invalid: bool,
    /// The pool's workers cannot start or keep crashing: what it says.
    pub workers_failing: Option<String>,
    /// The batch's runners stopped on an error, in a row: why, and when the
    /// next starts.
    pub runner_failing: Option<RunnerFailing>,
    pub now: Time,
}

/// An Event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// The batch's runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runner {
    /// Stop it if it runs.
    Stop,
    /// Leave it as it is (running or not).
    Leave,
    /// Start it on the pool's queue if it is not running; hand a running one
    /// the spec.
    Run { queue_url: String },
}

/// When to look at the batch again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    Requeue(Duration),
    AwaitChange,
    /// Delete it at this Unix second (`ttlSecondsAfterFinished`).
    Expire {
        at: i64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The reconciler's part of the status, whole (as server-side apply
    /// wants it); `None` when it is what the status holds already.
    pub status: Option<StatusPatch>,
    /// The runner's part of the status, to apply under the runner's field
    /// manager once it is stopped (before [`Plan::status`]): a cancelled
    /// batch's estimate and running count, which only their owner removes.
    pub runner_status: Option<StatusPatch>,
    pub events: Vec<Note>,
    pub runner: Runner,
    /// Write the batch's cancel mark in its pool's ledger (first).
    pub cancel_mark: bool,
    pub then: Then,
}

/// The status fields the reconciler owns, from a status: conditions,
/// observedGeneration and the results location always; the phase and
/// completion time only where the reconciler decides them — Pending before
/// the runner takes over, and a finished phase (which never changes). While
/// a runner runs, the phase is the runner's.
pub fn reconciler_part(st: &TaskBatchStatus) -> StatusPatch {
    let decided = st.phase.filter(|p| *p == Phase::Pending || p.is_finished());
    StatusPatch {
        phase: decided,
        completion_time: decided
            .filter(|p| p.is_finished())
            .and(st.completion_time.clone()),
        observed_generation: Some(st.observed_generation),
        conditions: Some(st.conditions.clone()),
        results: st.results.clone(),
        ..StatusPatch::default()
    }
}

/// The runner's part of a cancelled batch's status, its runner stopped:
/// as it left it, but with no estimate, nothing running and its cost as
/// spent (no projection), since nothing runs for the batch now. `None` when
/// there is nothing to clear. The runner
/// clears these itself only for the phases it ends a batch in; the fields
/// are its field manager's, so only an apply under that manager that leaves
/// them out removes them. Its phase is left as the runner wrote it, so that
/// the reconciler's part, applied next, takes it over.
fn stopped_runner_part(st: &TaskBatchStatus) -> Option<StatusPatch> {
    let cost = st.cost.clone().map(crate::cost::ended);
    if st.eta.is_none()
        && st.estimated_completion_time.is_none()
        && st.counts.running == 0
        && cost == st.cost
    {
        return None;
    }
    let mut part = StatusPatch::runner_part(st);
    part.merge(StatusPatch {
        eta: Some(None),
        estimated_completion_time: Some(None),
        counts: CountsPatch {
            running: Some(0),
            ..CountsPatch::default()
        },
        // The runner wrote it at the start; kept, whoever else owns it.
        results: st.results.clone(),
        cost,
        ..StatusPatch::default()
    });
    Some(part)
}

pub fn decide(o: &Observed<'_>) -> Plan {
    let batch = o.batch;
    let spec = &batch.spec;
    let old = batch.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = batch.metadata.generation;
    let mut events = Vec::new();
    let missing = match (o.pool_exists, &o.workload_unreadable, &o.missing_bucket) {
        (false, _, _) => Some(Missing::Pool(pool_of(batch))),
        (true, Some(message), _) => Some(Missing::Workload(message)),
        (true, None, Some(message)) => Some(Missing::Bucket(message)),
        (true, None, None) => None,
    };
    // The phase as the status and spec say it; the failure policy's verdict
    // is the runner's to act on (it stops enqueueing first).
    let phase = status::phase_of(&PhaseInput {
        previous: old.phase,
        accepted: o.validation.is_ok() && o.pool_exists && missing.is_none(),
        cancel: spec.cancel == Some(true),
        enqueue_finished: enqueue_done_in(&old),
        counts: old.counts,
        gave_up: false,
    });
    st.phase = Some(phase);

    let mut runner_status = None;
    let (runner, cancel_mark, then) = if old.phase.is_some_and(|p| p.is_finished()) {
        // Finished: conditions, the Event, then the TTL. Given up by its
        // failure policy (the runner ended it): its bundles still queued are
        // skipped, once, before the condition says so.
        let gave_up = status::given_up(phase, &old.counts);
        let said = status::given_up_said(&old.conditions).is_some();
        let none = Waits::default();
        set_conditions(batch, &mut st, phase, &Ok(()), &none, &o.now, &mut events);
        // Cancelled by an older operator, or a runner's write that landed
        // after it was stopped: cleared now.
        if phase == Phase::Cancelled {
            runner_status = stopped_runner_part(&old);
        }
        let then = match (spec.ttl_seconds_after_finished, &st.completion_time) {
            (Some(ttl), Some(done)) => Then::Expire {
                at: done.0.as_second() + i64::from(ttl),
            },
            _ => Then::AwaitChange,
        };
        (Runner::Stop, gave_up && !said && o.pool_exists, then)
    } else if phase == Phase::Cancelled {
        // Workers skip (and delete) the batch's bundles still in the queue:
        // the pool's queue is shared, so it cannot be purged for one batch.
        st.completion_time = Some(o.now.clone());
        runner_status = stopped_runner_part(&old);
        let waits = Waits {
            missing,
            workers_failing: None,
        };
        set_conditions(
            batch,
            &mut st,
            phase,
            &o.validation,
            &waits,
            &o.now,
            &mut events,
        );
        (
            Runner::Stop,
            o.pool_exists,
            Then::Requeue(Duration::from_secs(1)),
        )
    } else if let Some(message) = &o.waiting_for_memory {
        events.push(Note {
            warning: false,
            reason: "WaitingForMemory".into(),
            message: message.clone(),
        });
        (Runner::Leave, false, Then::Requeue(Duration::from_secs(5)))
    } else {
        // Not finished and not cancelled: the phase is the runner's once it
        // runs (the reconciler applies it only as Pending, or once finished).
        let waits = Waits {
            missing,
            workers_failing: o.workers_failing.as_deref(),
        };
        set_conditions(
            batch,
            &mut st,
            phase,
            &o.validation,
            &waits,
            &o.now,
            &mut events,
        );
        match (&o.validation, &o.queue_url) {
            // A workload file is fixed (or put back) outside the spec.
            (Err(_), _) if o.file_invalid => (Runner::Leave, false, Then::Requeue(FILE_RECHECK)),
            (Err(_), _) => (Runner::Leave, false, Then::AwaitChange),
            // Read again: a ConfigMap or object made later, or a read that
            // failed (S3 throttling, credentials not ready yet).
            (Ok(()), _) if o.workload_unreadable.is_some() => {
                (Runner::Leave, false, Then::Requeue(Duration::from_secs(10)))
            }
            // The pool is missing, or has no queue yet: look again soon.
            (Ok(()), None) => (Runner::Leave, false, Then::Requeue(Duration::from_secs(2))),
            // Nothing is sent for results that could not be written; the
            // bucket may be made any time.
            (Ok(()), Some(_)) if o.missing_bucket.is_some() => {
                (Runner::Leave, false, Then::Requeue(Duration::from_secs(10)))
            }
            // Created suspended: no runner until it is resumed. A runner
            // records the batch's pool, tasks and cut as it starts, and
            // those are fixed from then on: its spec stays free to edit
            // while nothing was sent (a runner already running, suspended
            // before it wrote its start, is left, and handed the spec: it
            // waits itself).
            (Ok(()), Some(_)) if spec.suspend == Some(true) && old.start_time.is_none() => {
                (Runner::Leave, false, Then::AwaitChange)
            }
            // The last runner failed: the next waits its turn.
            (Ok(()), Some(_))
                if o.runner_failing
                    .as_ref()
                    .is_some_and(|f| !f.retry_in.is_zero()) =>
            {
                let wait = o
                    .runner_failing
                    .as_ref()
                    .map_or(Duration::ZERO, |f| f.retry_in);
                (Runner::Leave, false, Then::Requeue(wait))
            }
            (Ok(()), Some(url)) => {
                if let Some(r) = &o.results {
                    st.results = Some(r.to_string());
                }
                // The runner drives the batch; a look now and then restarts
                // it if it stopped on an error.
                (
                    Runner::Run {
                        queue_url: url.clone(),
                    },
                    false,
                    Then::Requeue(Duration::from_secs(5)),
                )
            }
        }
    };
    let live = !phase.is_finished() && phase != Phase::Cancelled;
    runner_condition(
        batch,
        &mut st,
        o.runner_failing.as_ref().filter(|_| live),
        &o.now,
        &mut events,
    );
    let part = reconciler_part(&st);
    Plan {
        status: (part != reconciler_part(&old)).then_some(part),
        runner_status,
        events,
        runner,
        cancel_mark,
        then,
    }
}

/// The WorkerPool a batch is on: the one it first enqueued on (its status
/// says, and a changed `spec.workerPool` is refused), else its spec's. Its
/// bundles are in that pool's queue and claimed in its ledger table, so the
/// cancel mark goes there.
pub fn pool_of(batch: &TaskBatch) -> &str {
    batch
        .status
        .as_ref()
        .and_then(|s| s.worker_pool.as_deref())
        .unwrap_or(&batch.spec.worker_pool)
}

/// Where a batch's results go: once it started, where they went then (its
/// `status.results`, which its runner wrote at its start), so that its parts
/// stay under one prefix, the one `cloudkon batch results` reads; before,
/// where its spec or the operator's default puts them (`configured`).
pub fn results_location(old: &TaskBatchStatus, configured: Option<S3Uri>) -> Option<S3Uri> {
    if old.start_time.is_none() {
        return configured;
    }
    match old.results.as_deref().map(S3Uri::parse) {
        Some(Ok(kept)) => Some(kept),
        // Not one the operator wrote (edited by hand): the spec's.
        Some(Err(_)) => configured,
        // Started without one: its results were counted only, and stay so.
        None => None,
    }
}

/// What a batch repeats of its pool: that its workers cannot start or keep
/// crashing (the pool's `Available` condition, reason `WorkersFailing`).
pub fn workers_failing(pool: &WorkerPool) -> Option<String> {
    let conditions = &pool.status.as_ref()?.conditions;
    let available = status::condition(conditions, status::pool_condition::AVAILABLE)?;
    (available.status == "False" && available.reason == status::WORKERS_FAILING)
        .then(|| format!("WorkerPool {}: {}", pool.name_any(), available.message))
}

/// The batch is still to run: not finished and not cancelled.
pub fn is_live(batch: &TaskBatch) -> bool {
    let finished = batch
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p.is_finished());
    !finished && batch.spec.cancel != Some(true)
}

/// Every task is in the queue (the runner wrote Running).
pub fn enqueue_done_in(status: &TaskBatchStatus) -> bool {
    matches!(status.phase, Some(Phase::Running))
}

/// The batch's `RunnerFailing` condition: true, with a Warning for each
/// failure, while its runners stop on an error (each started again after a
/// growing delay); false once one ran well, or the batch ended.
fn runner_condition(
    batch: &TaskBatch,
    st: &mut TaskBatchStatus,
    failing: Option<&RunnerFailing>,
    now: &Time,
    events: &mut Vec<Note>,
) {
    use status::batch_condition::RUNNER_FAILING;
    let update = match failing {
        Some(f) => status::ConditionUpdate::new(
            RUNNER_FAILING,
            true,
            RUNNER_FAILING,
            format!(
                "the batch's runner stopped on an error {} time{} in a row; it is started again after a growing delay (at most {} s): {}",
                f.count,
                if f.count == 1 { "" } else { "s" },
                crate::runner_handle::MAX_RETRY.as_secs(),
                f.message
            ),
        ),
        None if status::condition(&st.conditions, RUNNER_FAILING).is_some() => {
            status::ConditionUpdate::new(RUNNER_FAILING, false, "NotFailing", "")
        }
        None => return,
    };
    let message = update.message.clone();
    let failing_now = update.status;
    if set_condition(&mut st.conditions, &update, batch.metadata.generation, now) && failing_now {
        events.push(Note {
            warning: true,
            reason: RUNNER_FAILING.into(),
            message,
        });
    }
}

/// What a batch waits on that is not its own doing.
#[derive(Default)]
struct Waits<'a> {
    /// Its pool or its results' bucket.
    missing: Option<Missing<'a>>,
    /// Its pool's workers, which cannot start or keep crashing.
    workers_failing: Option<&'a str>,
}

/// Sets the batch's conditions; an Event for each that changed to a state a
/// person wants to hear about.
fn set_conditions(
    batch: &TaskBatch,
    st: &mut TaskBatchStatus,
    phase: Phase,
    validation: &Result<(), Vec<Invalid>>,
    waits: &Waits<'_>,
    now: &Time,
    events: &mut Vec<Note>,
) {
    use status::batch_condition::WORKERS_FAILING;
    let was_failing = status::condition(&st.conditions, WORKERS_FAILING);
    let workers_failing_said = was_failing.is_some();
    let was_failing = was_failing.is_some_and(|c| c.status == "True");
    let updates = status::batch_conditions(&BatchConditionsInput {
        phase,
        validation,
        missing: waits.missing,
        suspend: batch.spec.suspend == Some(true),
        counts: st.counts,
        gave_up: status::given_up(phase, &st.counts).then(|| {
            // As said once: the policy may have been edited since.
            status::given_up_said(&st.conditions)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| {
                    status::given_up_why(batch.spec.failure_policy.as_ref(), &st.counts)
                })
        }),
        workers_failing: waits.workers_failing,
        workers_failing_said,
    });
    for update in updates {
        if set_condition(&mut st.conditions, &update, batch.metadata.generation, now) {
            let (warning, reason) = match (update.type_, update.status) {
                // When it starts; its message follows the pool's quietly.
                (WORKERS_FAILING, true) if !was_failing => (true, WORKERS_FAILING),
                (status::batch_condition::ACCEPTED, false) => (true, update.reason.as_str()),
                (status::batch_condition::ACCEPTED, true) => (false, "Accepted"),
                (status::batch_condition::SUSPENDED, true) => (false, "Suspended"),
                (status::batch_condition::COMPLETE, true) => (false, "Succeeded"),
                (status::batch_condition::FAILED, true) => (true, update.reason.as_str()),
                // Again whenever the count changes (the message says it).
                (status::batch_condition::DEAD_LETTERED, true) => (true, "DeadLettered"),
                (status::batch_condition::LOST, true) => (true, "TasksLost"),
                _ => continue,
            };
            let message = if update.message.is_empty() {
                reason.to_string()
            } else {
                update.message.clone()
            };
            events.push(Note {
                warning,
                reason: reason.to_string(),
                message,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::taskbatch::TaskCounts;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn batch(extra: serde_json::Value, status: Option<TaskBatchStatus>) -> TaskBatch {
        let mut spec =
            json!({"workerPool": "pool", "tasks": {"inline": [{"kind": "sleep", "ms": 1000}]}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut b = TaskBatch::new("b", serde_json::from_value(spec).unwrap());
        b.metadata.generation = Some(3);
        b.status = status;
        b
    }

    fn observed(batch: &TaskBatch) -> Observed<'_> {
        Observed {
            batch,
            validation: Ok(()),
            pool_exists: true,
            queue_url: Some("http://q".into()),
            waiting_for_memory: None,
            results: None,
            missing_bucket: None,
            workload_unreadable: None,
            file_invalid: false,
            workers_failing: None,
            runner_failing: None,
            now: at(NOW),
        }
    }

    fn phase(p: Phase) -> Option<TaskBatchStatus> {
        Some(TaskBatchStatus {
            phase: Some(p),
            ..TaskBatchStatus::default()
        })
    }

    fn condition<'a>(part: &'a StatusPatch, type_: &str) -> (&'a str, &'a str) {
        let c = part
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} in {part:?}"));
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_new_valid_batch_is_pending_accepted_and_its_runner_starts() {
        let b = batch(json!({}), None);
        let plan = decide(&observed(&b));
        assert_eq!(
            plan.runner,
            Runner::Run {
                queue_url: "http://q".into()
            }
        );
        assert_eq!(plan.then, Then::Requeue(Duration::from_secs(5)));
        assert!(!plan.cancel_mark);
        let part = plan.status.expect("a first status");
        assert_eq!(part.phase, Some(Phase::Pending));
        assert_eq!(part.observed_generation, Some(Some(3)));
        assert_eq!(condition(&part, "Accepted"), ("True", "Valid"));
        assert!(
            plan.events
                .iter()
                .any(|e| e.reason == "Accepted" && !e.warning)
        );
        // Looked at again with that status: nothing to write, nothing to say.
        let st = TaskBatchStatus {
            phase: part.phase,
            observed_generation: Some(3),
            conditions: part.conditions.clone().unwrap(),
            ..TaskBatchStatus::default()
        };
        let again = batch(json!({}), Some(st));
        let plan = decide(&observed(&again));
        assert_eq!(plan.status, None);
        assert!(plan.events.is_empty(), "{:?}", plan.events);
    }

    /// The status a plan leaves, to decide on again: 10 tasks sent, running
    /// or (for a finished phase) succeeded.
    fn after(plan: &Plan, phase: Phase) -> TaskBatchStatus {
        let part = plan.status.as_ref().expect("a status to write");
        TaskBatchStatus {
            conditions: part.conditions.clone().unwrap(),
            ..ten_tasks(phase)
        }
    }

    fn ten_tasks(phase: Phase) -> TaskBatchStatus {
        let done = if phase.is_finished() { 10 } else { 0 };
        TaskBatchStatus {
            phase: Some(phase),
            observed_generation: Some(3),
            counts: TaskCounts {
                total: 10,
                enqueued: 10,
                running: 10 - done,
                succeeded: done,
                ..TaskCounts::default()
            },
            ..TaskBatchStatus::default()
        }
    }

    #[test]
    fn a_batch_created_suspended_starts_no_runner_until_resumed() {
        let b = batch(json!({"suspend": true}), None);
        let plan = decide(&observed(&b));
        assert_eq!(plan.runner, Runner::Leave);
        assert_eq!(plan.then, Then::AwaitChange);
        let part = plan.status.expect("a first status");
        assert_eq!(part.phase, Some(Phase::Pending));
        assert_eq!(condition(&part, "Accepted"), ("True", "Valid"));
        assert_eq!(condition(&part, "Suspended"), ("True", "Suspended"));
        // Resumed: its runner starts.
        let b = batch(json!({"suspend": false}), None);
        assert!(matches!(decide(&observed(&b)).runner, Runner::Run { .. }));
        // Suspended once started: its runner runs on, and waits itself.
        let started = TaskBatchStatus {
            phase: Some(Phase::Enqueuing),
            start_time: Some(at(NOW - 60)),
            ..TaskBatchStatus::default()
        };
        let b = batch(json!({"suspend": true}), Some(started));
        assert!(matches!(decide(&observed(&b)).runner, Runner::Run { .. }));
    }

    /// A runner that stops on an error each time it starts: the next waits
    /// its delay (no runner, no reconcile before it), the batch says why
    /// with a Warning per failure, and says it no more once one ran well.
    #[test]
    fn a_failing_runner_waits_its_delay_and_the_batch_says_why() {
        let failing = |b: &TaskBatch, count: u32, retry_in: u64| {
            decide(&Observed {
                runner_failing: Some(RunnerFailing {
                    count,
                    message: "cannot write the collected ids: quota exceeded".into(),
                    retry_in: Duration::from_secs(retry_in),
                }),
                ..observed(b)
            })
        };
        let b = batch(json!({}), Some(ten_tasks(Phase::Running)));
        let plan = failing(&b, 1, 5);
        assert_eq!(plan.runner, Runner::Leave);
        assert_eq!(plan.then, Then::Requeue(Duration::from_secs(5)));
        let part = plan.status.as_ref().unwrap();
        assert_eq!(condition(part, "RunnerFailing"), ("True", "RunnerFailing"));
        let said: Vec<_> = plan
            .events
            .iter()
            .filter(|e| e.reason == "RunnerFailing")
            .collect();
        assert_eq!(said.len(), 1, "{:?}", plan.events);
        assert!(said[0].warning && said[0].message.contains("quota exceeded"));

        // Its delay over: started again; said already, so nothing new.
        let b = batch(json!({}), Some(after(&plan, Phase::Running)));
        let plan = failing(&b, 1, 0);
        assert_eq!(
            plan.runner,
            Runner::Run {
                queue_url: "http://q".into()
            }
        );
        assert!(plan.events.is_empty(), "{:?}", plan.events);

        // Failed again: a Warning again, a longer wait.
        let plan = failing(&b, 2, 10);
        assert_eq!(plan.then, Then::Requeue(Duration::from_secs(10)));
        assert_eq!(plan.events.len(), 1, "{:?}", plan.events);

        // One ran well: false, quietly.
        let b = batch(json!({}), Some(after(&plan, Phase::Running)));
        let plan = decide(&observed(&b));
        assert_eq!(
            condition(plan.status.as_ref().unwrap(), "RunnerFailing"),
            ("False", "NotFailing")
        );
        assert!(plan.events.is_empty(), "{:?}", plan.events);
    }

    #[test]
    fn a_batch_repeats_that_its_pools_workers_fail_with_one_event() {
        let b = batch(json!({}), Some(ten_tasks(Phase::Running)));
        let failing = |b: &TaskBatch, problem: &str| {
            decide(&Observed {
                workers_failing: Some(problem.into()),
                ..observed(b)
            })
        };
        let plan = failing(
            &b,
            "WorkerPool pool: 0 ready, 1 needed: pod p: CrashLoopBackOff",
        );
        assert_eq!(
            condition(plan.status.as_ref().unwrap(), "WorkersFailing"),
            ("True", "WorkersFailing")
        );
        let said: Vec<_> = plan
            .events
            .iter()
            .filter(|e| e.reason == "WorkersFailing")
            .collect();
        assert_eq!(said.len(), 1, "{:?}", plan.events);
        assert!(said[0].warning && said[0].message.contains("CrashLoopBackOff"));

        // The pool's message moves on: the condition follows, no new Event.
        let b = batch(json!({}), Some(after(&plan, Phase::Running)));
        let plan = failing(
            &b,
            "WorkerPool pool: 0 ready, 2 needed: pod q: ErrImagePull",
        );
        let part = plan.status.as_ref().unwrap();
        let c = part
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "WorkersFailing");
        assert!(c.unwrap().message.ends_with("pod q: ErrImagePull"), "{c:?}");
        assert!(plan.events.is_empty(), "{:?}", plan.events);

        // Fixed: it turns false and stays, quietly.
        let b = batch(json!({}), Some(after(&plan, Phase::Running)));
        let plan = decide(&observed(&b));
        assert_eq!(
            condition(plan.status.as_ref().unwrap(), "WorkersFailing"),
            ("False", "NotFailing")
        );
        assert!(plan.events.is_empty(), "{:?}", plan.events);

        // Failing again: said again.
        let b = batch(json!({}), Some(after(&plan, Phase::Running)));
        let plan = failing(
            &b,
            "WorkerPool pool: 0 ready, 1 needed: pod r: ErrImagePull",
        );
        assert_eq!(plan.events.len(), 1, "{:?}", plan.events);

        // A finished or cancelled batch waits on no worker.
        for (phase, extra) in [
            (Phase::Succeeded, json!({})),
            (Phase::Running, json!({"cancel": true})),
        ] {
            let b = batch(extra, Some(after(&plan, phase)));
            let done = failing(
                &b,
                "WorkerPool pool: 0 ready, 1 needed: pod r: ErrImagePull",
            );
            assert_eq!(
                condition(done.status.as_ref().unwrap(), "WorkersFailing"),
                ("False", "NotFailing"),
                "{phase:?}"
            );
        }

        // A batch whose pool never failed has no such condition.
        let plan = decide(&observed(&batch(
            json!({}),
            Some(ten_tasks(Phase::Running)),
        )));
        let part = plan.status.unwrap();
        assert!(
            !part
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "WorkersFailing")
        );
    }

    #[test]
    fn a_pools_workers_failing_is_read_from_its_available_condition() {
        let pool = |available: serde_json::Value| -> WorkerPool {
            serde_json::from_value(json!({
                "apiVersion": "cloudkon.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "p"},
                "spec": {"workers": {"max": 1}, "template": {"image": "w:1"}},
                "status": {"conditions": [available]},
            }))
            .unwrap()
        };
        let cond = |status: &str, reason: &str| {
            json!({"type": "Available", "status": status, "reason": reason,
                   "message": "0 ready, 1 needed: pod x: ErrImagePull",
                   "lastTransitionTime": "2026-12-02T00:00:00Z"})
        };
        assert_eq!(
            workers_failing(&pool(cond("False", "WorkersFailing"))).as_deref(),
            Some("WorkerPool p: 0 ready, 1 needed: pod x: ErrImagePull")
        );
        assert_eq!(
            workers_failing(&pool(cond("False", "TooFewReadyWorkers"))),
            None
        );
        assert_eq!(workers_failing(&pool(cond("True", "WorkersFailing"))), None);
    }

    #[test]
    fn while_the_runner_runs_the_phase_is_not_the_reconcilers() {
        let b = batch(json!({}), phase(Phase::Enqueuing));
        let plan = decide(&observed(&b));
        let part = plan.status.unwrap();
        assert_eq!(part.phase, None, "the runner's");
        assert!(matches!(plan.runner, Runner::Run { .. }));
    }

    #[test]
    fn the_phase_is_status_phase_of_what_the_status_says() {
        // Every task enqueued and finished: Succeeded, whoever looks first.
        let mut st = phase(Phase::Running).unwrap();
        st.counts = TaskCounts {
            total: 2,
            enqueued: 2,
            succeeded: 2,
            ..TaskCounts::default()
        };
        let b = batch(json!({}), Some(st));
        let part = decide(&observed(&b)).status.unwrap();
        assert_eq!(part.phase, Some(Phase::Succeeded));
        assert_eq!(condition(&part, "Complete").0, "True");
        // Some enqueued, the runner's Enqueuing: left to the runner.
        let mut st = phase(Phase::Enqueuing).unwrap();
        st.counts.enqueued = 5;
        let b = batch(json!({}), Some(st));
        assert_eq!(decide(&observed(&b)).status.unwrap().phase, None);
    }

    #[test]
    fn an_invalid_spec_or_a_missing_pool_waits_and_says_why() {
        let b = batch(json!({}), None);
        let mut o = observed(&b);
        o.validation = Err(vec![Invalid {
            field: "spec.tasks".into(),
            message: "no tasks".into(),
        }]);
        let plan = decide(&o);
        assert_eq!(plan.runner, Runner::Leave);
        assert_eq!(plan.then, Then::AwaitChange);
        let part = plan.status.unwrap();
        assert_eq!(condition(&part, "Accepted").0, "False");
        assert!(plan.events.iter().any(|e| e.warning));

        let mut o = observed(&b);
        o.pool_exists = false;
        o.queue_url = None;
        let plan = decide(&o);
        assert_eq!(plan.runner, Runner::Leave);
        assert_eq!(plan.then, Then::Requeue(Duration::from_secs(2)));
        assert_eq!(
            condition(plan.status.as_ref().unwrap(), "Accepted").0,
            "False"
        );

        // The results' bucket missing: nothing starts, and it is looked
        // for again.
        // Nothing starts, looked at again in 10 s, Accepted=False for
        // `reason` with a Warning saying `message`.
        let waits = |o: &Observed<'_>, reason: &str, message: &str| {
            let plan = decide(o);
            assert_eq!(plan.runner, Runner::Leave);
            assert_eq!(plan.then, Then::Requeue(Duration::from_secs(10)));
            let part = plan.status.unwrap();
            assert_eq!(part.phase, Some(Phase::Pending));
            assert_eq!(condition(&part, "Accepted"), ("False", reason));
            assert!(
                plan.events
                    .iter()
                    .any(|e| e.warning && e.reason == reason && e.message == message),
                "{:?}",
                plan.events
            );
        };
        let mut o = observed(&b);
        o.missing_bucket = Some("no bucket".into());
        waits(&o, "ResultsBucketNotFound", "no bucket");

        // The workload file missing or its read failed: read again soon,
        // said as such; found invalid: read again now and then (a file is
        // fixed outside the spec), where a spec waits for its change.
        let mut o = observed(&b);
        o.workload_unreadable = Some("ConfigMap \"w\" does not exist".into());
        waits(&o, "WorkloadUnreadable", "ConfigMap \"w\" does not exist");
        let problem = || {
            Err(vec![Invalid {
                field: "spec.tasks.configMap".into(),
                message: "w.txt:2: not a task".into(),
            }])
        };
        let mut o = observed(&b);
        (o.validation, o.file_invalid) = (problem(), true);
        assert_eq!(decide(&o).then, Then::Requeue(FILE_RECHECK));
        o.file_invalid = false;
        assert_eq!(decide(&o).then, Then::AwaitChange);
    }

    #[test]
    fn cancel_stops_the_runner_marks_the_ledger_and_ends_cancelled() {
        let b = batch(json!({"cancel": true}), phase(Phase::Running));
        let plan = decide(&observed(&b));
        assert_eq!(plan.runner, Runner::Stop);
        assert!(plan.cancel_mark);
        let part = plan.status.unwrap();
        assert_eq!(part.phase, Some(Phase::Cancelled));
        assert_eq!(part.completion_time, Some(at(NOW)));
        // No pool, no ledger to mark.
        let mut o = observed(&b);
        o.pool_exists = false;
        assert!(!decide(&o).cancel_mark);
    }

    #[test]
    fn a_cancelled_batch_is_marked_in_the_pool_it_sent_to() {
        // spec.workerPool changed after the start (refused), then cancelled:
        // the bundles are in the first pool's queue and ledger.
        let mut st = phase(Phase::Running).unwrap();
        st.worker_pool = Some("first".into());
        let b = batch(json!({"workerPool": "other", "cancel": true}), Some(st));
        assert_eq!(pool_of(&b), "first");
        let fresh = batch(json!({"workerPool": "other"}), None);
        assert_eq!(pool_of(&fresh), "other", "nothing sent yet");
        assert!(decide(&observed(&b)).cancel_mark);
        // That pool gone: said by its name.
        let mut o = observed(&b);
        (o.pool_exists, o.queue_url) = (false, None);
        let plan = decide(&o);
        assert!(!plan.cancel_mark);
        let accepted = plan.status.unwrap().conditions.unwrap();
        let accepted = accepted.iter().find(|c| c.type_ == "Accepted").unwrap();
        assert!(accepted.message.contains("\"first\""), "{accepted:?}");
    }

    #[test]
    fn a_cancelled_batch_keeps_no_estimate_and_nothing_running() {
        let mut st = ten_tasks(Phase::Running);
        st.eta = Some("2m".into());
        st.estimated_completion_time = Some(at(NOW + 120));
        st.results = Some("s3://bkt/ns/b/u/".into());
        st.counts.succeeded = 4;
        let b = batch(json!({"cancel": true}), Some(st));
        let plan = decide(&observed(&b));
        let runner = plan.runner_status.expect("the runner's part, cleared");
        let applied = runner.to_apply_value();
        // Left out: removed, as the runner's field manager owned them.
        assert!(applied.get("eta").is_none(), "{applied}");
        assert!(
            applied.get("estimatedCompletionTime").is_none(),
            "{applied}"
        );
        assert_eq!(applied["counts"]["running"], 0, "{applied}");
        // The rest as the runner left it.
        assert_eq!(applied["counts"]["succeeded"], 4, "{applied}");
        assert_eq!(applied["counts"]["enqueued"], 10, "{applied}");
        assert_eq!(applied["results"], "s3://bkt/ns/b/u/", "{applied}");
        assert_eq!(
            applied["phase"], "Running",
            "the reconciler's part takes it over"
        );
        assert_eq!(plan.status.unwrap().phase, Some(Phase::Cancelled));

        // Cancelled with them left behind: cleared then.
        let mut st = ten_tasks(Phase::Cancelled);
        st.eta = Some("2m".into());
        let b = batch(json!({"cancel": true}), Some(st));
        let applied = decide(&observed(&b))
            .runner_status
            .unwrap()
            .to_apply_value();
        assert!(applied.get("eta").is_none(), "{applied}");
        assert_eq!(applied["counts"]["running"], 0, "{applied}");
        assert_eq!(applied["phase"], "Cancelled", "{applied}");
        // Cancelled before anything ran: nothing to clear.
        let b = batch(json!({"cancel": true}), phase(Phase::Pending));
        assert_eq!(decide(&observed(&b)).runner_status, None);
        // Not cancelled: the runner's part is the runner's.
        let b = batch(json!({}), Some(ten_tasks(Phase::Running)));
        assert_eq!(decide(&observed(&b)).runner_status, None);
    }

    #[test]
    fn a_cancelled_batch_keeps_its_cost_as_spent_not_projected() {
        let projected = crate::cost::a_tenth_done();
        assert_eq!(projected.summary, "$0.0500 / $0.500");
        // Nothing else to clear: the runner had written its last figures.
        let mut st = ten_tasks(Phase::Cancelled);
        st.counts.running = 0;
        st.counts.succeeded = 1;
        st.cost = Some(projected);
        let b = batch(json!({"cancel": true}), Some(st.clone()));
        let applied = decide(&observed(&b))
            .runner_status
            .expect("the runner's part, its cost as spent")
            .to_apply_value();
        assert_eq!(applied["cost"]["summary"], "$0.0500", "{applied}");
        assert_eq!(applied["cost"]["projectedDollars"], 0.05, "{applied}");
        // Written so: nothing more to clear.
        st.cost = Some(serde_json::from_value(applied["cost"].clone()).unwrap());
        let b = batch(json!({"cancel": true}), Some(st));
        assert_eq!(decide(&observed(&b)).runner_status, None);
    }

    #[test]
    fn a_started_batch_keeps_its_results_location() {
        let uri = |s: &str| S3Uri::parse(s).unwrap();
        let spec = || Some(uri("s3://new/p/ns/b/u/"));
        // Not started: where the spec (or the default) says now.
        let mut st = phase(Phase::Pending).unwrap();
        st.results = Some("s3://old/p/ns/b/u/".into());
        assert_eq!(results_location(&st, spec()), spec());
        // Started: where its parts are.
        st.start_time = Some(at(NOW));
        assert_eq!(
            results_location(&st, spec()),
            Some(uri("s3://old/p/ns/b/u/"))
        );
        // Started without one: none, however the default changed.
        st.results = None;
        assert_eq!(results_location(&st, spec()), None);

        // And the plan writes that, not the spec's.
        let mut st = ten_tasks(Phase::Running);
        st.results = Some("s3://old/p/ns/b/u/".into());
        st.start_time = Some(at(NOW));
        let b = batch(json!({}), Some(st.clone()));
        let o = Observed {
            results: results_location(&st, spec()),
            ..observed(&b)
        };
        let part = decide(&o).status.unwrap();
        assert_eq!(part.results.as_deref(), Some("s3://old/p/ns/b/u/"));
    }

    #[test]
    fn a_finished_batch_keeps_its_phase_stops_its_runner_and_expires_after_its_ttl() {
        let mut st = phase(Phase::Succeeded).unwrap();
        st.completion_time = Some(at(NOW - 10));
        st.counts = TaskCounts {
            total: 1,
            enqueued: 1,
            succeeded: 1,
            ..TaskCounts::default()
        };
        let b = batch(
            json!({"ttlSecondsAfterFinished": 60, "cancel": true}),
            Some(st),
        );
        let plan = decide(&observed(&b));
        assert_eq!(plan.runner, Runner::Stop);
        assert!(!plan.cancel_mark, "finished before the cancel");
        assert_eq!(plan.then, Then::Expire { at: NOW + 50 });
        let part = plan.status.unwrap();
        assert_eq!(part.phase, Some(Phase::Succeeded));
        assert_eq!(part.completion_time, Some(at(NOW - 10)));
        assert_eq!(condition(&part, "Complete"), ("True", "AllTasksSucceeded"));
    }

    /// A batch the runner failed mid-enqueue: 90 of 100 finished failed.
    fn given_up() -> TaskBatchStatus {
        let mut st = phase(Phase::Failed).unwrap();
        st.counts = TaskCounts {
            enqueued: 200,
            succeeded: 10,
            failed: 90,
            ..TaskCounts::default()
        };
        st
    }

    #[test]
    fn a_batch_given_up_by_its_failure_policy_is_marked_once() {
        let mut st = given_up();
        let b = batch(
            json!({"failurePolicy": {"maxFailedPercent": 20}}),
            Some(st.clone()),
        );
        let plan = decide(&observed(&b));
        assert!(plan.cancel_mark);
        let part = plan.status.unwrap();
        assert_eq!(
            condition(&part, "Failed"),
            ("True", status::batch_condition::FAILURE_POLICY_REASON)
        );
        // Said once: the next look marks nothing.
        st.conditions = part.conditions.unwrap();
        let b = batch(json!({"failurePolicy": {"maxFailedPercent": 20}}), Some(st));
        assert!(!decide(&observed(&b)).cancel_mark);
    }

    #[test]
    fn a_given_up_batch_is_marked_and_stays_so_though_its_policy_was_relaxed() {
        let st = given_up();
        for spec in [
            json!({"failurePolicy": {"maxFailedPercent": 95}}),
            json!({}),
        ] {
            let plan = decide(&observed(&batch(spec.clone(), Some(st.clone()))));
            assert!(plan.cancel_mark, "{spec}");
            let part = plan.status.unwrap();
            assert_eq!(
                condition(&part, "Failed"),
                ("True", status::batch_condition::FAILURE_POLICY_REASON),
                "{spec}"
            );
            // Said once, and not unsaid by the relaxed policy.
            let mut said = st.clone();
            said.conditions = part.conditions.unwrap();
            let again = decide(&observed(&batch(spec.clone(), Some(said))));
            assert!(!again.cancel_mark, "{spec}");
            assert!(
                again.events.iter().all(|e| e.reason != "TasksFailed"),
                "{spec}: {:?}",
                again.events
            );
        }
        // A condition said under the first policy keeps its words.
        let strict = json!({"failurePolicy": {"maxFailedPercent": 20}});
        let part = decide(&observed(&batch(strict, Some(st.clone()))))
            .status
            .unwrap();
        let mut said = st.clone();
        said.conditions = part.conditions.unwrap();
        let words = |s: &TaskBatchStatus| {
            status::condition(&s.conditions, "Failed")
                .map(|c| c.message.clone())
                .unwrap()
        };
        let first = words(&said);
        assert!(
            first.contains("over spec.failurePolicy.maxFailedPercent (20 %)"),
            "{first}"
        );
        let relaxed = decide(&observed(&batch(json!({}), Some(said))));
        let mut after = st.clone();
        after.conditions = relaxed.status.unwrap().conditions.unwrap();
        assert_eq!(words(&after), first);
        // Failed with every task finished ended by itself: never marked.
        let mut done = ten_tasks(Phase::Failed);
        done.counts.failed = 5;
        done.counts.succeeded = 5;
        let b = batch(
            json!({"failurePolicy": {"maxFailedPercent": 0, "minTasksBeforeJudging": 1}}),
            Some(done),
        );
        assert!(!decide(&observed(&b)).cancel_mark);
    }

    #[test]
    fn a_workload_waiting_for_memory_says_so_and_looks_again() {
        let b = batch(json!({}), None);
        let mut o = observed(&b);
        o.waiting_for_memory = Some("waiting for memory".into());
        let plan = decide(&o);
        assert_eq!(plan.runner, Runner::Leave);
        assert_eq!(plan.then, Then::Requeue(Duration::from_secs(5)));
        assert_eq!(plan.events[0].reason, "WaitingForMemory");
        assert_eq!(plan.status.unwrap().phase, Some(Phase::Pending));
    }
}
