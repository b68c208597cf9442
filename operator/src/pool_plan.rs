//! What one reconcile of a WorkerPool writes, decided without I/O: from
//! what the reconciler read and the scaler's decision ([`Observed`]) to a
//! [`Plan`] — the whole status, the Events, and when to look again. The
//! reconciler ([`crate::pool_reconciler`]) reads, asks the scaler
//! ([`crate::scale`]), calls [`decide`], then scales and writes once.

use std::time::Duration;

use cloudkon_core::aws::QueueStats;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::batch_plan::Note;
use crate::build::POOL_LABEL;
use crate::crd::WorkerPool;
use crate::crd::workerpool::WorkerPoolStatus;
use crate::scale::Decision;
use crate::shares::PoolWork;
use crate::status::{self, ConditionUpdate, PoolConditionsInput, set_condition};
use crate::validate::{self, Invalid};
use crate::worker_fleet::ObservedWorkers;

/// What a reconcile of a pool found.
pub enum Observed<'a> {
    /// The spec is refused: nothing else was read.
    Invalid(&'a [Invalid]),
    /// The queue could not be made: why.
    QueueUnavailable(String),
    /// The workers could not be read or scaled (a Deployment refused, EC2
    /// out of capacity or refusing the operator's role): why.
    FleetUnavailable(String),
    /// The queue, the workers, the work, and the scaler's decision.
    Running(Running<'a>),
}

pub struct Running<'a> {
    /// The fleet scaled (see `provider::fleet_identity`).
    pub fleet: String,
    pub queue_url: String,
    pub dead_letter_queue_url: Option<String>,
    pub stats: QueueStats,
    pub workers: &'a ObservedWorkers,
    pub work: &'a PoolWork,
    pub decision: &'a Decision,
    pub min: i32,
    pub slots_per_worker: u64,
    /// Why workers asked for are not ready, when waiting will not fix it.
    pub worker_problem: Option<&'a str>,
}

/// The reason of `Available=False` when the fleet could not be read or
/// scaled.
pub const FLEET_ERROR: &str = "FleetError";

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The pool's status, whole.
    pub status: WorkerPoolStatus,
    pub events: Vec<Note>,
    /// Workers added (+) or removed (−) by the decision.
    pub change: i32,
    pub then: Then,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    Requeue(Duration),
    AwaitChange,
}

/// A pool whose queue or fleet could not be had: its last observation
/// stands, with why; tried again shortly.
fn unavailable(status: WorkerPoolStatus, events: Vec<Note>) -> Plan {
    Plan {
        status,
        events,
        change: 0,
        then: Then::Requeue(Duration::from_secs(5)),
    }
}

pub fn decide(pool: &WorkerPool, o: &Observed<'_>, poll: Duration, now: &Time) -> Plan {
    let generation = pool.metadata.generation;
    let old = pool.status.clone().unwrap_or_default();
    let mut st = old;
    st.observed_generation = generation;
    // A condition that went wrong is said in a warning Event too.
    let failed = |st: &mut WorkerPoolStatus, update: ConditionUpdate| {
        set_condition(&mut st.conditions, &update, generation, now)
            .then_some(Note {
                warning: true,
                reason: update.reason,
                message: update.message,
            })
            .into_iter()
            .collect::<Vec<_>>()
    };
    let r = match o {
        Observed::Invalid(problems) => {
            let update = ConditionUpdate::new(
                status::pool_condition::ACCEPTED,
                false,
                "InvalidSpec",
                validate::summary(problems),
            );
            let events = failed(&mut st, update);
            return Plan {
                status: st,
                events,
                change: 0,
                then: Then::AwaitChange,
            };
        }
        Observed::QueueUnavailable(why) => {
            let update = ConditionUpdate::new(
                status::pool_condition::QUEUE_READY,
                false,
                "QueueUnavailable",
                format!("cannot create the queue: {why}"),
            );
            let events = failed(&mut st, update);
            return unavailable(st, events);
        }
        Observed::FleetUnavailable(why) => {
            let update = ConditionUpdate::new(
                status::pool_condition::AVAILABLE,
                false,
                FLEET_ERROR,
                why.clone(),
            );
            let events = failed(&mut st, update);
            return unavailable(st, events);
        }
        Observed::Running(r) => r,
    };
    st.queue_url = Some(r.queue_url.clone());
    st.fleet = Some(r.fleet.clone());
    st.dead_letter_queue_url = r.dead_letter_queue_url.clone();
    let (stats, workers, decision) = (&r.stats, r.workers, r.decision);
    let backlog = stats.visible + stats.in_flight + stats.delayed;
    if backlog > 0 {
        st.last_active_time = Some(now.clone());
    }
    let change = decision.replicas - workers.current;
    let mut events = Vec::new();
    if change != 0 {
        st.last_scale_time = Some(now.clone());
        st.last_scale_reason = Some(decision.reason.clone());
        events.push(Note {
            warning: false,
            reason: if change > 0 { "ScaledUp" } else { "ScaledDown" }.into(),
            message: format!(
                "workers {} -> {}: {}",
                workers.current, decision.replicas, decision.reason
            ),
        });
    }
    let backlog = i64::try_from(backlog).unwrap_or(i64::MAX);
    let work = r.work;
    st.replicas = workers.current;
    st.ready_replicas = workers.ready;
    st.desired_replicas = decision.replicas;
    st.workers = Some(status::workers_column(workers.ready, decision.replicas));
    st.selector = Some(format!(
        "{POOL_LABEL}={}",
        pool.metadata.name.as_deref().unwrap_or_default()
    ));
    st.backlog = backlog;
    st.backlog_visible = i64::try_from(stats.visible + stats.delayed).unwrap_or(i64::MAX);
    st.backlog_in_flight = i64::try_from(stats.in_flight).unwrap_or(i64::MAX);
    st.density = Some(status::density(backlog, workers.ready));
    st.work_tasks = i64::try_from(work.tasks).unwrap_or(i64::MAX);
    st.work_seconds = (work.tasks > 0).then(|| status::round(work.task_seconds));
    st.estimated_drain_seconds = (work.tasks > 0 && workers.ready > 0).then(|| {
        let slots = f64::from(workers.ready) * r.slots_per_worker.max(1) as f64;
        status::round(work.task_seconds / slots)
    });
    let conditions = status::pool_conditions(&PoolConditionsInput {
        validation: &Ok(()),
        queue_problem: None,
        ready: workers.ready,
        min: r.min,
        backlog,
        decision,
        worker_problem: r.worker_problem,
    });
    for update in &conditions {
        // Said in an Event when it starts (its message changes as pods
        // back off, and is written, not repeated).
        let new_problem = update.reason == status::WORKERS_FAILING
            && !st
                .conditions
                .iter()
                .any(|c| c.type_ == update.type_ && c.reason == update.reason);
        set_condition(&mut st.conditions, update, generation, now);
        if new_problem {
            events.push(Note {
                warning: true,
                reason: status::WORKERS_FAILING.into(),
                message: update.message.clone(),
            });
        }
    }
    Plan {
        status: st,
        events,
        change,
        then: Then::Requeue(poll),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn pool(status: Option<WorkerPoolStatus>) -> WorkerPool {
        let mut pool: WorkerPool =
            serde_yaml::from_str(include_str!("../../examples/workerpool.yaml")).unwrap();
        pool.metadata.namespace = Some("batch".into());
        pool.metadata.generation = Some(2);
        pool.status = status;
        pool
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn decision(replicas: i32) -> Decision {
        Decision {
            replicas,
            recommendation: replicas,
            constraint: None,
            reason: format!("backlog asks for {replicas}"),
        }
    }

    fn workers(current: i32) -> ObservedWorkers {
        ObservedWorkers {
            current,
            ready: current,
            missing: false,
            generation: None,
            bounds: None,
        }
    }

    const WORK: PoolWork = PoolWork {
        tasks: 40,
        task_seconds: 80.0,
        waiting_tasks: 0,
        waiting_task_seconds: 0.0,
    };

    fn running<'a>(
        d: &'a Decision,
        workers: &'a ObservedWorkers,
        visible: u64,
        in_flight: u64,
    ) -> Observed<'a> {
        Observed::Running(Running {
            fleet: "Deployment".into(),
            queue_url: "http://q".into(),
            dead_letter_queue_url: Some("http://q-dlq".into()),
            stats: QueueStats {
                visible,
                in_flight,
                delayed: 0,
            },
            workers,
            work: &WORK,
            decision: d,
            min: 0,
            slots_per_worker: 4,
            worker_problem: None,
        })
    }

    fn reason<'a>(st: &'a WorkerPoolStatus, type_: &str) -> (&'a str, &'a str) {
        let c = st.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    const POLL: Duration = Duration::from_secs(1);

    #[test]
    fn a_scale_up_is_written_said_and_figured() {
        let (d, w) = (decision(5), workers(2));
        let plan = decide(&pool(None), &running(&d, &w, 8, 2), POLL, &now());
        assert_eq!(plan.change, 3);
        assert_eq!(plan.then, Then::Requeue(POLL));
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.events[0].reason, "ScaledUp");
        assert_eq!(plan.events[0].message, "workers 2 -> 5: backlog asks for 5");
        let st = &plan.status;
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!((st.replicas, st.desired_replicas), (2, 5));
        assert_eq!(st.backlog, 10);
        assert_eq!(st.workers.as_deref(), Some("2/5"));
        assert_eq!(st.last_scale_time, Some(now()));
        assert_eq!(st.last_active_time, Some(now()));
        assert_eq!(st.queue_url.as_deref(), Some("http://q"));
        // 80 task-seconds over 2 ready workers × 4 slots.
        assert_eq!(st.estimated_drain_seconds, Some(10.0));
        assert_eq!(reason(st, "Accepted"), ("True", "Valid"));
    }

    #[test]
    fn no_change_no_event_and_an_idle_pool_keeps_its_last_active_time() {
        let d = decision(2);
        let old = WorkerPoolStatus {
            last_active_time: Some(Time(Timestamp::from_second(1).unwrap())),
            ..WorkerPoolStatus::default()
        };
        let w = workers(2);
        let plan = decide(
            &pool(Some(old.clone())),
            &running(&d, &w, 0, 0),
            POLL,
            &now(),
        );
        assert_eq!(plan.change, 0);
        assert!(plan.events.is_empty());
        assert_eq!(plan.status.last_active_time, old.last_active_time);
        assert_eq!(plan.status.last_scale_time, None);
    }

    #[test]
    fn workers_that_cannot_start_are_said_once_while_the_message_follows() {
        let d = decision(2);
        let w = ObservedWorkers {
            current: 2,
            ready: 0,
            missing: false,
            generation: None,
            bounds: None,
        };
        let with = |problem| {
            let Observed::Running(r) = running(&d, &w, 5, 0) else {
                unreachable!()
            };
            Running {
                worker_problem: Some(problem),
                ..r
            }
        };
        let plan = decide(
            &pool(None),
            &Observed::Running(with("pod p-1: CrashLoopBackOff: back-off 10s")),
            POLL,
            &now(),
        );
        assert_eq!(
            reason(&plan.status, "Available"),
            ("False", "WorkersFailing")
        );
        let said: Vec<_> = plan.events.iter().filter(|e| e.warning).collect();
        assert_eq!(said.len(), 1);
        assert_eq!(
            said[0].message,
            "0 ready, 1 needed: pod p-1: CrashLoopBackOff: back-off 10s"
        );
        // Backing off longer: the message follows, no second Event.
        let again = decide(
            &pool(Some(plan.status.clone())),
            &Observed::Running(with("pod p-1: CrashLoopBackOff: back-off 20s")),
            POLL,
            &now(),
        );
        assert!(
            again.events.iter().all(|e| !e.warning),
            "{:?}",
            again.events
        );
        let available = again
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap();
        assert!(available.message.ends_with("back-off 20s"));
    }

    #[test]
    fn a_refused_spec_or_a_missing_queue_says_why_once() {
        let problems = vec![Invalid {
            field: "spec.workers.max".into(),
            message: "must be at least 1".into(),
        }];
        let plan = decide(&pool(None), &Observed::Invalid(&problems), POLL, &now());
        assert_eq!(plan.then, Then::AwaitChange);
        assert_eq!(reason(&plan.status, "Accepted"), ("False", "InvalidSpec"));
        assert_eq!(plan.events.len(), 1);
        assert!(plan.events[0].warning);
        // Said already: the status holds it, no second Event.
        let again = decide(
            &pool(Some(plan.status.clone())),
            &Observed::Invalid(&problems),
            POLL,
            &now(),
        );
        assert!(again.events.is_empty());
        assert_eq!(again.status, plan.status);

        let plan = decide(
            &pool(None),
            &Observed::QueueUnavailable("throttled".into()),
            POLL,
            &now(),
        );
        assert_eq!(plan.then, Then::Requeue(Duration::from_secs(5)));
        let (status, why) = reason(&plan.status, "QueueReady");
        assert_eq!((status, why), ("False", "QueueUnavailable"));
        assert_eq!(plan.events[0].message, "cannot create the queue: throttled");
    }

    #[test]
    fn a_fleet_that_cannot_scale_is_said_and_scales_nothing() {
        // Was running 2 workers, scaled up to 5 by the last decision.
        let (d, w) = (decision(5), workers(2));
        let before = decide(&pool(None), &running(&d, &w, 8, 2), POLL, &now()).status;
        let why = "cannot make the workers 8 (now 5): InsufficientInstanceCapacity";
        let plan = decide(
            &pool(Some(before.clone())),
            &Observed::FleetUnavailable(why.into()),
            POLL,
            &now(),
        );
        assert_eq!(plan.change, 0, "no scale recorded for a scale not made");
        assert_eq!(reason(&plan.status, "Available"), ("False", FLEET_ERROR));
        assert_eq!(plan.events.len(), 1);
        assert!(plan.events[0].warning);
        assert_eq!(plan.events[0].message, why);
        // The last observation stands otherwise.
        assert_eq!(plan.status.desired_replicas, before.desired_replicas);
        assert_eq!(plan.status.last_scale_time, before.last_scale_time);
    }
}
