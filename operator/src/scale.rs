//! How many workers a pool wants: a pure function of the queue's backlog, the
//! workers there are, the pool's bounds and behavior, and what was recommended
//! and done recently. No I/O: the reconciler reads the queue and the workers,
//! calls [`desired_workers`], and applies the result.
//!
//! The steps, in the spirit of KEDA's SQS scaler and the HPA's `behavior`:
//!
//! 1. **Recommendation.** backlog = visible + in-flight messages (a message in
//!    flight is a bundle being worked on: it still needs its worker), and
//!    recommendation = ceil(backlog / target backlog per worker): 0 exactly when
//!    the queue is empty. Workers that exist but are not ready yet (pods being
//!    scheduled, instances booting) count as capacity already provided, so a
//!    slow start never triggers a second scale-up for the same backlog.
//! 2. **Stabilization.** Scaling down goes only as low as the *highest*
//!    recommendation of the scale-down window; scaling up only as high as the
//!    *lowest* of the scale-up window.
//! 3. **Rate policies.** "At most N workers or P% per period", counted from the
//!    worker count at the period's start (the changes made within the period
//!    are in the input). A percent policy always allows at least one worker,
//!    or a pool at zero could never start.
//! 4. **Bounds.** `min` and `max` win over everything above.
//! 5. **Cooldown before zero.** The last worker goes only once the backlog
//!    has been empty for the cooldown (KEDA's `cooldownPeriod`).
//!
//! When `spec.replicas` is set (through `/scale`: an HPA, KEDA or a person),
//! none of this runs: the pool takes that number, capped at `max`.

use std::time::{Duration, SystemTime};

use crate::crd::workerpool::{
    ScalingBehavior, ScalingPolicyType, ScalingRules, SelectPolicy, WorkerPoolSpec,
};

/// Backlog one worker is expected to keep up with, when the spec says nothing.
pub const DEFAULT_TARGET_BACKLOG_PER_WORKER: i32 = 10;
/// The cooldown before scaling to zero, when the spec says nothing (KEDA's).
pub const DEFAULT_SCALE_TO_ZERO_COOLDOWN: Duration = Duration::from_secs(300);

/// A pool's scaling settings with every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleConfig {
    pub min: i32,
    pub max: i32,
    pub target_backlog_per_worker: i32,
    /// Work in the queue or running should drain within this.
    pub target_drain: Duration,
    /// Task slots per worker.
    pub slots_per_worker: u64,
    pub behavior: Behavior,
    /// `spec.replicas`: an outside controller decides.
    pub external_replicas: Option<i32>,
}

impl ScaleConfig {
    /// The settings of a (validated) spec.
    pub fn from_spec(spec: &WorkerPoolSpec) -> Self {
        ScaleConfig {
            min: spec.workers.min.unwrap_or(0),
            max: spec.workers.max,
            target_backlog_per_worker: spec
                .workers
                .target_backlog_per_worker
                .unwrap_or(DEFAULT_TARGET_BACKLOG_PER_WORKER),
            target_drain: Duration::from_secs(
                spec.workers
                    .target_drain_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(DEFAULT_TARGET_DRAIN_SECONDS),
            ),
            slots_per_worker: spec.slots_per_worker(),
            behavior: Behavior::from_spec(spec.behavior.as_ref()),
            external_replicas: spec.replicas,
        }
    }
}

/// `workers.targetDrainSeconds` when unset.
pub const DEFAULT_TARGET_DRAIN_SECONDS: u64 = 60;

/// Workers to drain `work` (tasks, task-seconds) within the target: no more
/// than the tasks can keep busy.
pub fn workers_for_work(tasks: u64, task_seconds: f64, config: &ScaleConfig) -> u64 {
    let slots = config.slots_per_worker.max(1);
    let drain = config.target_drain.as_secs_f64().max(1.0);
    let by_time = (task_seconds / drain / slots as f64).ceil() as u64;
    by_time.min(tasks.div_ceil(slots))
}

/// Scaling rules in both directions, with the HPA's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    pub scale_up: Rules,
    pub scale_down: Rules,
    pub scale_to_zero_cooldown: Duration,
}

/// Rules in one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub stabilization_window: Duration,
    pub select: SelectPolicy,
    pub policies: Vec<Policy>,
}

/// At most `value` workers (or percent of them) per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub kind: ScalingPolicyType,
    pub value: i32,
    pub period: Duration,
}

impl Policy {
    pub const fn pods(value: i32, period_secs: u64) -> Self {
        Policy {
            kind: ScalingPolicyType::Pods,
            value,
            period: Duration::from_secs(period_secs),
        }
    }

    pub const fn percent(value: i32, period_secs: u64) -> Self {
        Policy {
            kind: ScalingPolicyType::Percent,
            value,
            period: Duration::from_secs(period_secs),
        }
    }
}

impl Rules {
    /// The HPA's default for scaling up: no stabilization; at most +100% or +4
    /// workers every 15 s, whichever allows more.
    pub fn default_scale_up() -> Self {
        Rules {
            stabilization_window: Duration::ZERO,
            select: SelectPolicy::Max,
            policies: vec![Policy::percent(100, 15), Policy::pods(4, 15)],
        }
    }

    /// The HPA's default for scaling down: the highest recommendation of the
    /// last 5 minutes; then any number at once (-100% every 15 s).
    pub fn default_scale_down() -> Self {
        Rules {
            stabilization_window: Duration::from_secs(300),
            select: SelectPolicy::Max,
            policies: vec![Policy::percent(100, 15)],
        }
    }

    /// The spec's rules, each field missing taken from `default`.
    fn from_spec(spec: Option<&ScalingRules>, default: Rules) -> Self {
        let Some(spec) = spec else { return default };
        Rules {
            stabilization_window: spec
                .stabilization_window_seconds
                .map_or(default.stabilization_window, secs),
            select: spec.select_policy.unwrap_or(default.select),
            policies: if spec.policies.is_empty() {
                default.policies
            } else {
                spec.policies
                    .iter()
                    .map(|p| Policy {
                        kind: p.type_,
                        value: p.value,
                        period: secs(p.period_seconds),
                    })
                    .collect()
            },
        }
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: Rules::default_scale_up(),
            scale_down: Rules::default_scale_down(),
            scale_to_zero_cooldown: DEFAULT_SCALE_TO_ZERO_COOLDOWN,
        }
    }
}

impl Behavior {
    pub fn from_spec(spec: Option<&ScalingBehavior>) -> Self {
        let Some(spec) = spec else {
            return Behavior::default();
        };
        Behavior {
            scale_up: Rules::from_spec(spec.scale_up.as_ref(), Rules::default_scale_up()),
            scale_down: Rules::from_spec(spec.scale_down.as_ref(), Rules::default_scale_down()),
            scale_to_zero_cooldown: spec
                .scale_to_zero_cooldown_seconds
                .map_or(DEFAULT_SCALE_TO_ZERO_COOLDOWN, secs),
        }
    }

    /// How much history [`desired_workers`] looks at: recommendations and
    /// scale events older than this can be dropped.
    pub fn history_needed(&self) -> Duration {
        let periods = self
            .scale_up
            .policies
            .iter()
            .chain(&self.scale_down.policies)
            .map(|p| p.period);
        periods
            .chain([
                self.scale_up.stabilization_window,
                self.scale_down.stabilization_window,
            ])
            .max()
            .unwrap_or_default()
    }
}

fn secs(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// A past recommendation (step 1's result), for stabilization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    pub at: SystemTime,
    pub replicas: i32,
}

/// A past change of the worker count, for the rate policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    pub at: SystemTime,
    /// Workers added (positive) or removed (negative).
    pub change: i32,
}

/// What the scaler sees now.
#[derive(Clone, Debug)]
pub struct ScaleInput<'a> {
    pub config: &'a ScaleConfig,
    /// Messages waiting in the queue.
    pub backlog_visible: u64,
    /// Messages received and not yet deleted: bundles being worked on.
    pub backlog_in_flight: u64,
    /// The pool's batches' tasks not finished — in the queue, running, or
    /// not sent yet — and their task-seconds (see
    /// [`crate::shares::PoolWork::to_run`]).
    pub work_tasks: u64,
    pub work_task_seconds: f64,
    /// Workers that exist, ready or not.
    pub current: i32,
    /// Of those, the ready ones.
    pub ready: i32,
    /// Earlier recommendations (any order; older than
    /// [`Behavior::history_needed`] are ignored).
    pub history: &'a [Recommendation],
    /// Earlier changes of the worker count.
    pub events: &'a [ScaleEvent],
    pub now: SystemTime,
    /// When the backlog was last non-empty; `None`: never seen so.
    pub last_active: Option<SystemTime>,
}

/// What a pool's scaler sees of its queue, work and workers (the parts of
/// [`ScaleInput`] that are not history).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    pub backlog_visible: u64,
    pub backlog_in_flight: u64,
    pub work_tasks: u64,
    pub work_task_seconds: f64,
    pub current: i32,
    pub ready: i32,
    pub last_active: Option<SystemTime>,
}

/// What the scaler remembers of a pool between decisions: its recent
/// recommendations (stabilization) and changes (rate policies). The pool
/// reconciler and the simulator keep one per pool.
#[derive(Clone, Debug, Default)]
pub struct ScaleMemory {
    history: Vec<Recommendation>,
    events: Vec<ScaleEvent>,
}

impl ScaleMemory {
    /// Decides at `now`, records the recommendation, and forgets what no
    /// rule looks at any more.
    pub fn decide(&mut self, config: &ScaleConfig, seen: &Observed, now: SystemTime) -> Decision {
        if self.history.is_empty() {
            // A (re)started operator has no history: take the workers there
            // are as the recent recommendation, so that a restart does not
            // skip the scale-down stabilization window.
            self.history.push(Recommendation {
                at: now,
                replicas: seen.current,
            });
        }
        let decision = desired_workers(&ScaleInput {
            config,
            backlog_visible: seen.backlog_visible,
            backlog_in_flight: seen.backlog_in_flight,
            work_tasks: seen.work_tasks,
            work_task_seconds: seen.work_task_seconds,
            current: seen.current,
            ready: seen.ready,
            history: &self.history,
            events: &self.events,
            now,
            last_active: seen.last_active,
        });
        self.history.push(Recommendation {
            at: now,
            replicas: decision.recommendation,
        });
        let keep = config.behavior.history_needed() + Duration::from_secs(1);
        self.history
            .retain(|r| now.duration_since(r.at).unwrap_or_default() <= keep);
        self.events
            .retain(|e| now.duration_since(e.at).unwrap_or_default() <= keep);
        decision
    }

    /// The worker count changed by `change` at `now` (for the rate policies).
    pub fn scaled(&mut self, now: SystemTime, change: i32) {
        if change != 0 {
            self.events.push(ScaleEvent { at: now, change });
        }
    }
}

/// The scaler's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The workers the pool should have.
    pub replicas: i32,
    /// Step 1's recommendation: record it (at `now`) in the history.
    pub recommendation: i32,
    /// What held the count back from the recommendation, if anything.
    pub constraint: Option<Constraint>,
    /// Why, for people: goes to `status.lastScaleReason` and Events.
    pub reason: String,
}

impl Decision {
    /// Whether it removes some of the `current` workers: which of them run
    /// tasks is then read, for [`Decision::keep_busy`].
    pub fn scales_down(&self, current: i32) -> bool {
        self.replicas < current
    }

    /// [`keep_busy`] applied to this decision, the reason saying so when it
    /// holds the scale-down back.
    pub fn keep_busy(&mut self, busy: i32, current: i32, in_flight: u64, max: i32) {
        let kept = keep_busy(self.replicas, busy, current, in_flight, max);
        if kept != self.replicas {
            self.reason += &format!("; {kept} kept: {busy} workers run tasks");
            self.replicas = kept;
        }
    }
}

/// What kept the worker count from following the backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Constraint {
    /// `spec.replicas` is set: an outside controller decides.
    External,
    /// Raised to `workers.min`.
    Min,
    /// Cut to `workers.max`.
    Max,
    /// A stabilization window held the count.
    Stabilized,
    /// A scale-up rate policy cut the increase.
    ScaleUpLimit,
    /// A scale-down rate policy cut the decrease.
    ScaleDownLimit,
    /// `selectPolicy: Disabled` in that direction.
    Disabled,
    /// The last worker stays until the cooldown has passed.
    Cooldown,
    /// The fleet's own bounds (an Auto Scaling group's or node group's min
    /// and max, its owner's to change).
    FleetBounds,
}

impl Constraint {
    /// The CamelCase reason of the `ScalingLimited` condition.
    pub fn reason(self) -> &'static str {
        match self {
            Constraint::External => "ExternallyScaled",
            Constraint::Min => "TooFewReplicas",
            Constraint::Max => "TooManyReplicas",
            Constraint::Stabilized => "Stabilized",
            Constraint::ScaleUpLimit => "ScaleUpLimit",
            Constraint::ScaleDownLimit => "ScaleDownLimit",
            Constraint::Disabled => "ScalingDisabled",
            Constraint::Cooldown => "ScaleToZeroCooldown",
            Constraint::FleetBounds => "FleetBounds",
        }
    }
}

/// The decision moved into the fleet's own `bounds` (min, max), which the
/// fleet applies anyway: the count the pool will have. Recorded as decided,
/// a pool at its node group's minimum of 1 said "ScaledDown 1 -> 0" each
/// poll for a scale that never happened.
pub fn within_bounds(d: Decision, bounds: Option<(i32, i32)>) -> Decision {
    let Some((min, max)) = bounds else {
        return d;
    };
    let replicas = d.replicas.clamp(min, max.max(min));
    if replicas == d.replicas {
        return d;
    }
    Decision {
        reason: format!(
            "{}; the fleet's own bounds [{min}, {max}] make it {replicas}",
            d.reason
        ),
        replicas,
        constraint: Some(Constraint::FleetBounds),
        ..d
    }
}

/// A scale-down to `desired` of the `current` workers, `busy` of which run
/// tasks (their heartbeats say so), while `in_flight` bundles are held: it
/// stops at the busy ones. The ReplicaSet removes idle pods first (their
/// deletion cost), but past them it would remove workers whose tasks are
/// then abandoned at the end of the grace and run again from the start —
/// at a batch's tail, where the long tasks run, again and again, and each
/// give-back counts towards the queue's `maxReceives`. Scale-ups and an
/// empty queue (no bundle held) are not held back, and `max` (lowered by a
/// person) still wins.
pub fn keep_busy(desired: i32, busy: i32, current: i32, in_flight: u64, max: i32) -> i32 {
    if desired >= current || in_flight == 0 {
        return desired;
    }
    let holding =
        i64::from(busy.clamp(0, current)).min(i64::try_from(in_flight).unwrap_or(i64::MAX));
    desired.max(i32::try_from(holding).unwrap_or(current).min(max))
}

/// How many workers the pool should have now. See the module's docs.
pub fn desired_workers(input: &ScaleInput<'_>) -> Decision {
    let cfg = input.config;
    let current = input.current.max(0);

    if let Some(external) = cfg.external_replicas {
        let replicas = external.clamp(0, cfg.max.max(0));
        let reason = if replicas < external {
            format!("spec.replicas {external} (set through /scale), capped at max {replicas}")
        } else {
            format!("spec.replicas {external} (set through /scale)")
        };
        let constraint = Some(if replicas < external {
            Constraint::Max
        } else {
            Constraint::External
        });
        return Decision {
            replicas,
            recommendation: replicas,
            constraint,
            reason,
        };
    }

    // 1. The recommendation.
    let backlog = input
        .backlog_visible
        .saturating_add(input.backlog_in_flight);
    let target = u64::try_from(cfg.target_backlog_per_worker.max(1)).unwrap_or(1);
    let by_backlog = i32::try_from(backlog.div_ceil(target)).unwrap_or(i32::MAX);
    let by_work = i32::try_from(workers_for_work(
        input.work_tasks,
        input.work_task_seconds,
        cfg,
    ))
    .unwrap_or(i32::MAX);
    let recommendation = by_backlog.max(by_work);
    let mut reason = format!(
        "backlog {backlog} ({} visible, {} in flight) at {target} per worker: {by_backlog} {}",
        input.backlog_visible,
        input.backlog_in_flight,
        workers(by_backlog)
    );
    if by_work > by_backlog {
        reason = format!(
            "work {:.0} task-seconds in {} tasks to drain in {}s: {by_work} {}",
            input.work_task_seconds,
            input.work_tasks,
            cfg.target_drain.as_secs(),
            workers(by_work)
        );
    }
    let not_ready = current - input.ready.clamp(0, current);
    if not_ready > 0 {
        reason += &format!(" (of the {current} there are, {not_ready} not ready yet)");
    }
    let mut constraint = None;

    // 2. Stabilization.
    let behavior = &cfg.behavior;
    let mut lowest_up = recommendation;
    let mut highest_down = recommendation;
    for past in input.history {
        if within(past.at, input.now, behavior.scale_up.stabilization_window) {
            lowest_up = lowest_up.min(past.replicas);
        }
        if within(past.at, input.now, behavior.scale_down.stabilization_window) {
            highest_down = highest_down.max(past.replicas);
        }
    }
    let stabilized = current.max(lowest_up).min(highest_down);
    if stabilized != recommendation {
        constraint = Some(Constraint::Stabilized);
        let (window, direction) = if stabilized > recommendation {
            (behavior.scale_down.stabilization_window, "down")
        } else {
            (behavior.scale_up.stabilization_window, "up")
        };
        reason += &format!(
            "; held at {stabilized} by the scale-{direction} stabilization window ({}s)",
            window.as_secs()
        );
    }

    // 3. Rate policies.
    let mut desired = stabilized;
    if stabilized > current {
        match rate_limit(&behavior.scale_up, Direction::Up, current, input) {
            None => {
                desired = current;
                constraint = Some(Constraint::Disabled);
                reason += "; scaling up is disabled (behavior.scaleUp.selectPolicy)";
            }
            Some(limit) if limit < stabilized => {
                desired = limit.max(current);
                constraint = Some(Constraint::ScaleUpLimit);
                reason += &format!("; limited to {desired} by the scale-up policies");
            }
            Some(_) => {}
        }
    } else if stabilized < current {
        match rate_limit(&behavior.scale_down, Direction::Down, current, input) {
            None => {
                desired = current;
                constraint = Some(Constraint::Disabled);
                reason += "; scaling down is disabled (behavior.scaleDown.selectPolicy)";
            }
            Some(limit) if limit > stabilized => {
                desired = limit.min(current);
                constraint = Some(Constraint::ScaleDownLimit);
                reason += &format!("; limited to {desired} by the scale-down policies");
            }
            Some(_) => {}
        }
    }

    // 4. Bounds.
    if desired < cfg.min {
        desired = cfg.min;
        constraint = Some(Constraint::Min);
        reason += &format!("; raised to min {}", cfg.min);
    } else if desired > cfg.max {
        desired = cfg.max;
        constraint = Some(Constraint::Max);
        reason += &format!("; capped at max {}", cfg.max);
    }

    // 5. Cooldown before zero.
    let cooldown = behavior.scale_to_zero_cooldown;
    if desired == 0
        && current > 0
        && let Some(active) = input.last_active
        && within(active, input.now, cooldown)
    {
        desired = 1;
        constraint = Some(Constraint::Cooldown);
        let idle = input.now.duration_since(active).unwrap_or_default();
        reason += &format!(
            "; keeping 1 worker: the backlog has been empty for {}s of the {}s cooldown",
            idle.as_secs(),
            cooldown.as_secs()
        );
    }

    Decision {
        replicas: desired,
        recommendation,
        constraint,
        reason,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// The furthest the rules let the count go from `current` in `direction`
/// (HPA's algorithm); `None` when scaling that way is disabled.
fn rate_limit(
    rules: &Rules,
    direction: Direction,
    current: i32,
    input: &ScaleInput,
) -> Option<i32> {
    if rules.select == SelectPolicy::Disabled {
        return None;
    }
    let limits = rules.policies.iter().map(|policy| {
        // The changes made within the policy's period count against it.
        let changed: i64 = input
            .events
            .iter()
            .filter(|e| within(e.at, input.now, policy.period))
            .map(|e| match direction {
                Direction::Up => i64::from(e.change.max(0)),
                Direction::Down => i64::from((-e.change).max(0)),
            })
            .sum();
        let current = i64::from(current);
        let value = i64::from(policy.value.max(0));
        match direction {
            Direction::Up => {
                let start = (current - changed).max(0);
                match policy.kind {
                    ScalingPolicyType::Pods => start + value,
                    // Rounded up, and at least one.
                    ScalingPolicyType::Percent => {
                        ((start * (100 + value) + 99) / 100).max(start + 1)
                    }
                }
            }
            Direction::Down => {
                let start = current + changed;
                let limit = match policy.kind {
                    ScalingPolicyType::Pods => start - value,
                    ScalingPolicyType::Percent => start * (100 - value).max(0) / 100,
                };
                limit.max(0)
            }
        }
    });
    // Max picks the policy allowing the largest change: the highest limit up,
    // the lowest down; Min the opposite.
    let take_highest = matches!(
        (rules.select, direction),
        (SelectPolicy::Max, Direction::Up) | (SelectPolicy::Min, Direction::Down)
    );
    let limit = if take_highest {
        limits.max()
    } else {
        limits.min()
    };
    // No policy at all: nothing limits.
    let limit = limit.unwrap_or(match direction {
        Direction::Up => i64::from(i32::MAX),
        Direction::Down => 0,
    });
    Some(i32::try_from(limit).unwrap_or(i32::MAX))
}

/// Whether `at` is less than `window` before `now` (a time after `now` is).
fn within(at: SystemTime, now: SystemTime, window: Duration) -> bool {
    now.duration_since(at).map_or(true, |age| age < window)
}

fn workers(n: i32) -> &'static str {
    if n == 1 { "worker" } else { "workers" }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn config(min: i32, max: i32, target: i32) -> ScaleConfig {
        ScaleConfig {
            min,
            max,
            target_backlog_per_worker: target,
            target_drain: Duration::from_secs(DEFAULT_TARGET_DRAIN_SECONDS),
            slots_per_worker: 4,
            behavior: Behavior::default(),
            external_replicas: None,
        }
    }

    /// One row of a scaling table.
    struct Case {
        name: &'static str,
        config: ScaleConfig,
        visible: u64,
        in_flight: u64,
        current: i32,
        ready: i32,
        /// (seconds before now, replicas)
        history: Vec<(u64, i32)>,
        /// (seconds before now, change)
        events: Vec<(u64, i32)>,
        /// Seconds before now the backlog was last non-empty.
        last_active: Option<u64>,
        want: i32,
        want_constraint: Option<Constraint>,
        /// A piece of the reason.
        reason_has: &'static str,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                config: config(0, 100, 10),
                visible: 0,
                in_flight: 0,
                current: 0,
                ready: 0,
                history: vec![],
                events: vec![],
                last_active: None,
                want: 0,
                want_constraint: None,
                reason_has: "",
            }
        }
    }

    fn run(case: &Case) -> Decision {
        let now = at(10_000);
        let history: Vec<_> = case
            .history
            .iter()
            .map(|&(ago, replicas)| Recommendation {
                at: now - Duration::from_secs(ago),
                replicas,
            })
            .collect();
        let events: Vec<_> = case
            .events
            .iter()
            .map(|&(ago, change)| ScaleEvent {
                at: now - Duration::from_secs(ago),
                change,
            })
            .collect();
        desired_workers(&ScaleInput {
            config: &case.config,
            backlog_visible: case.visible,
            backlog_in_flight: case.in_flight,
            work_tasks: 0,
            work_task_seconds: 0.0,
            current: case.current,
            ready: case.ready,
            history: &history,
            events: &events,
            now,
            last_active: case.last_active.map(|ago| now - Duration::from_secs(ago)),
        })
    }

    #[test]
    fn workers_for_work_table() {
        let c = config(0, 100, 10); // 4 slots per worker, drain in 60 s
        // (tasks, task-seconds) -> workers
        let cases = [
            ((0, 0.0), 0),
            ((1, 1.0), 1),
            ((256, 256.0), 2),         // 256 s of work: 2 workers drain it in 60 s
            ((256, 0.5), 1),           // cheap: one worker
            ((10_000, 24_000.0), 100), // 100 workers x 4 slots x 60 s
            ((8, 10_000.0), 2),        // long, but 8 tasks keep only 2 workers busy
        ];
        for ((tasks, secs), want) in cases {
            assert_eq!(
                workers_for_work(tasks, secs, &c),
                want,
                "{tasks} tasks, {secs} s"
            );
        }
        // A single bundle (one message) of long tasks scales out on its work.
        let now = SystemTime::now();
        let d = desired_workers(&ScaleInput {
            config: &c,
            backlog_visible: 1,
            backlog_in_flight: 0,
            work_tasks: 256,
            work_task_seconds: 2_560.0,
            current: 0,
            ready: 0,
            history: &[],
            events: &[],
            now,
            last_active: Some(now),
        });
        assert_eq!(d.recommendation, 11, "{d:?}");
        assert!(
            d.reason.starts_with("work 2560 task-seconds in 256 tasks"),
            "{}",
            d.reason
        );
    }

    fn behavior(f: impl FnOnce(&mut Behavior)) -> ScaleConfig {
        let mut c = config(0, 100, 10);
        f(&mut c.behavior);
        c
    }

    #[test]
    fn desired_workers_table() {
        let cases = [
            Case {
                name: "empty queue, no workers: stay at zero",
                want: 0,
                reason_has: "backlog 0 (0 visible, 0 in flight) at 10 per worker: 0 workers",
                ..Case::default()
            },
            Case {
                name: "scale from zero on backlog (ceil: 35 / 10 = 4)",
                visible: 35,
                want: 4,
                reason_has: "backlog 35 (35 visible, 0 in flight) at 10 per worker: 4 workers",
                ..Case::default()
            },
            Case {
                name: "one message is enough to start a worker",
                visible: 1,
                want: 1,
                ..Case::default()
            },
            Case {
                name: "from zero, the +4 pods policy beats +100% of nothing",
                visible: 1000,
                want: 4,
                want_constraint: Some(Constraint::ScaleUpLimit),
                reason_has: "limited to 4 by the scale-up policies",
                ..Case::default()
            },
            Case {
                name: "in-flight messages count as backlog",
                visible: 0,
                in_flight: 25,
                current: 3,
                ready: 3,
                want: 3,
                reason_has: "(0 visible, 25 in flight)",
                ..Case::default()
            },
            Case {
                name: "no scale-down to zero while messages are in flight",
                visible: 0,
                in_flight: 1,
                current: 2,
                ready: 2,
                history: vec![(400, 2)],
                last_active: Some(0),
                want: 1,
                ..Case::default()
            },
            Case {
                name: "pending pods count as capacity: no second scale-up for the same backlog",
                visible: 40,
                current: 4,
                ready: 0,
                events: vec![(5, 4)],
                want: 4,
                want_constraint: None,
                reason_has: "(of the 4 there are, 4 not ready yet)",
                ..Case::default()
            },
            Case {
                name: "a growing backlog while pods are pending: the period's +4 is used up",
                visible: 100,
                current: 4,
                ready: 0,
                events: vec![(5, 4)],
                want: 4,
                want_constraint: Some(Constraint::ScaleUpLimit),
                ..Case::default()
            },
            Case {
                name: "once the period is over: +100% (or +4) from 4",
                visible: 100,
                current: 4,
                ready: 4,
                events: vec![(20, 4)],
                want: 8,
                want_constraint: Some(Constraint::ScaleUpLimit),
                ..Case::default()
            },
            Case {
                name: "scale-down stabilization: the highest recommendation of the window wins",
                visible: 20,
                current: 8,
                ready: 8,
                history: vec![(250, 8), (100, 6), (10, 3)],
                want: 8,
                want_constraint: Some(Constraint::Stabilized),
                reason_has: "held at 8 by the scale-down stabilization window (300s)",
                ..Case::default()
            },
            Case {
                name: "scale-down stabilization: recommendations older than the window are ignored",
                visible: 20,
                current: 8,
                ready: 8,
                history: vec![(301, 8), (100, 6), (10, 3)],
                want: 6,
                want_constraint: Some(Constraint::Stabilized),
                ..Case::default()
            },
            Case {
                name: "scale-down after a quiet window: straight to the recommendation",
                visible: 20,
                current: 8,
                ready: 8,
                history: vec![(400, 8)],
                want: 2,
                ..Case::default()
            },
            Case {
                name: "scale-up stabilization: the lowest recommendation of the window wins",
                config: behavior(|b| b.scale_up.stabilization_window = Duration::from_secs(60)),
                visible: 100,
                current: 2,
                ready: 2,
                history: vec![(30, 5), (90, 1)],
                want: 5,
                want_constraint: Some(Constraint::Stabilized),
                reason_has: "held at 5 by the scale-up stabilization window (60s)",
                ..Case::default()
            },
            Case {
                name: "scale-down rate: at most 2 pods per minute",
                config: behavior(|b| {
                    b.scale_down.stabilization_window = Duration::ZERO;
                    b.scale_down.policies = vec![Policy::pods(2, 60)];
                }),
                visible: 10,
                current: 10,
                ready: 10,
                want: 8,
                want_constraint: Some(Constraint::ScaleDownLimit),
                reason_has: "limited to 8 by the scale-down policies",
                ..Case::default()
            },
            Case {
                name: "scale-down rate: removals within the period count",
                config: behavior(|b| {
                    b.scale_down.stabilization_window = Duration::ZERO;
                    b.scale_down.policies = vec![Policy::pods(2, 60)];
                }),
                visible: 10,
                current: 8,
                ready: 8,
                events: vec![(30, -2)],
                want: 8,
                want_constraint: Some(Constraint::ScaleDownLimit),
                ..Case::default()
            },
            Case {
                name: "scale-down rate: 50% per minute, Min picks the smaller change",
                config: behavior(|b| {
                    b.scale_down.stabilization_window = Duration::ZERO;
                    b.scale_down.select = SelectPolicy::Min;
                    b.scale_down.policies = vec![Policy::percent(50, 60), Policy::pods(1, 60)];
                }),
                visible: 0,
                in_flight: 10,
                current: 10,
                ready: 10,
                want: 9,
                want_constraint: Some(Constraint::ScaleDownLimit),
                ..Case::default()
            },
            Case {
                name: "scale-up rate: Min of +50% and +10 pods",
                config: behavior(|b| {
                    b.scale_up.select = SelectPolicy::Min;
                    b.scale_up.policies = vec![Policy::percent(50, 60), Policy::pods(10, 60)];
                }),
                visible: 1000,
                current: 10,
                ready: 10,
                want: 15,
                want_constraint: Some(Constraint::ScaleUpLimit),
                ..Case::default()
            },
            Case {
                name: "a percent policy alone still starts a pool at zero",
                config: behavior(|b| b.scale_up.policies = vec![Policy::percent(100, 15)]),
                visible: 50,
                want: 1,
                want_constraint: Some(Constraint::ScaleUpLimit),
                ..Case::default()
            },
            Case {
                name: "scale-up disabled",
                config: behavior(|b| b.scale_up.select = SelectPolicy::Disabled),
                visible: 50,
                current: 2,
                ready: 2,
                want: 2,
                want_constraint: Some(Constraint::Disabled),
                reason_has: "scaling up is disabled",
                ..Case::default()
            },
            Case {
                name: "scale-down disabled",
                config: behavior(|b| b.scale_down.select = SelectPolicy::Disabled),
                visible: 0,
                current: 5,
                ready: 5,
                want: 5,
                want_constraint: Some(Constraint::Disabled),
                ..Case::default()
            },
            Case {
                name: "min wins over an empty queue",
                config: config(2, 10, 10),
                visible: 0,
                current: 0,
                want: 2,
                want_constraint: Some(Constraint::Min),
                reason_has: "raised to min 2",
                ..Case::default()
            },
            Case {
                name: "max caps a huge backlog",
                config: config(0, 3, 10),
                visible: 1_000_000,
                current: 3,
                ready: 3,
                want: 3,
                want_constraint: Some(Constraint::Max),
                reason_has: "capped at max 3",
                ..Case::default()
            },
            Case {
                name: "max lowers a pool above it (max was reduced)",
                config: config(0, 3, 10),
                visible: 100,
                current: 6,
                ready: 6,
                want: 3,
                want_constraint: Some(Constraint::Max),
                ..Case::default()
            },
            Case {
                name: "cooldown before zero: the last worker stays",
                visible: 0,
                current: 1,
                ready: 1,
                history: vec![(400, 1)],
                last_active: Some(100),
                want: 1,
                want_constraint: Some(Constraint::Cooldown),
                reason_has: "empty for 100s of the 300s cooldown",
                ..Case::default()
            },
            Case {
                name: "cooldown before zero: from several workers, down to one",
                visible: 0,
                current: 5,
                ready: 5,
                history: vec![(400, 5)],
                last_active: Some(100),
                want: 1,
                want_constraint: Some(Constraint::Cooldown),
                ..Case::default()
            },
            Case {
                name: "cooldown passed: to zero",
                visible: 0,
                current: 1,
                ready: 1,
                history: vec![(400, 1)],
                last_active: Some(300),
                want: 0,
                ..Case::default()
            },
            Case {
                name: "a huge backlog does not overflow",
                config: config(0, i32::MAX, 1),
                visible: u64::MAX,
                in_flight: u64::MAX,
                current: 1_000_000,
                ready: 1_000_000,
                events: vec![(100, 1_000_000)],
                want: 2_000_000,
                want_constraint: Some(Constraint::ScaleUpLimit),
                ..Case::default()
            },
        ];
        for case in &cases {
            let got = run(case);
            assert_eq!(got.replicas, case.want, "{}: {}", case.name, got.reason);
            assert_eq!(
                got.constraint, case.want_constraint,
                "{}: {}",
                case.name, got.reason
            );
            assert!(
                got.reason.contains(case.reason_has),
                "{}: reason {:?} lacks {:?}",
                case.name,
                got.reason,
                case.reason_has
            );
        }
    }

    #[test]
    fn the_recommendation_to_record_is_the_backlog_one() {
        let case = Case {
            visible: 20,
            current: 8,
            ready: 8,
            history: vec![(10, 8)],
            ..Case::default()
        };
        let got = run(&case);
        assert_eq!((got.replicas, got.recommendation), (8, 2));
    }

    #[test]
    fn external_replicas_turn_the_scaler_off() {
        let mut cfg = config(2, 10, 10);
        cfg.external_replicas = Some(0);
        let case = Case {
            config: cfg.clone(),
            visible: 500,
            current: 4,
            ready: 4,
            ..Case::default()
        };
        let got = run(&case);
        assert_eq!(got.replicas, 0, "{}", got.reason);
        assert_eq!(got.constraint, Some(Constraint::External));
        assert_eq!(got.reason, "spec.replicas 0 (set through /scale)");

        cfg.external_replicas = Some(25);
        let got = run(&Case {
            config: cfg,
            ..case
        });
        assert_eq!(got.replicas, 10);
        assert_eq!(got.constraint, Some(Constraint::Max));
        assert_eq!(
            got.reason,
            "spec.replicas 25 (set through /scale), capped at max 10"
        );
    }

    #[test]
    fn spec_defaults_are_the_hpa_ones() {
        let spec: WorkerPoolSpec = serde_json::from_value(serde_json::json!({
            "workers": {"max": 5},
            "template": {"image": "cloudkon/worker:1"},
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}
        }))
        .unwrap();
        let cfg = ScaleConfig::from_spec(&spec);
        assert_eq!(
            (cfg.min, cfg.max, cfg.target_backlog_per_worker),
            (0, 5, 10)
        );
        assert_eq!(cfg.behavior.scale_up, Rules::default_scale_up());
        assert_eq!(
            cfg.behavior.scale_down,
            Rules {
                stabilization_window: Duration::from_secs(60),
                ..Rules::default_scale_down()
            }
        );
        assert_eq!(
            cfg.behavior.scale_to_zero_cooldown,
            Duration::from_secs(300)
        );
        assert_eq!(cfg.behavior.history_needed(), Duration::from_secs(60));
        assert_eq!(
            Behavior::default().history_needed(),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn a_decision_held_back_by_busy_workers_says_so() {
        let decision = |replicas| Decision {
            replicas,
            recommendation: replicas,
            constraint: None,
            reason: "the backlog".into(),
        };
        let mut down = decision(2);
        assert!(down.scales_down(10));
        down.keep_busy(5, 10, 40, 10);
        assert_eq!(down.replicas, 5);
        assert_eq!(down.reason, "the backlog; 5 kept: 5 workers run tasks");
        // Nothing held back: the reason stays as it was.
        let mut idle = decision(2);
        idle.keep_busy(0, 10, 40, 10);
        assert_eq!((idle.replicas, idle.reason.as_str()), (2, "the backlog"));
        assert!(!decision(12).scales_down(10));
    }

    #[test]
    fn a_scale_down_stops_at_the_workers_running_tasks() {
        // (desired, busy, current, bundles in flight, max) -> workers.
        let cases = [
            ((2, 5, 10, 40, 10), 5),
            ((2, 5, 10, 3, 10), 3),
            ((6, 5, 10, 40, 10), 6),
            ((2, 20, 10, 40, 10), 10),
            ((0, 5, 10, 0, 10), 0),
            ((12, 5, 10, 40, 20), 12),
            ((2, 0, 10, 40, 10), 2),
            ((2, -1, 10, 40, 10), 2),
            ((2, 8, 10, 40, 4), 4),
        ];
        for ((desired, busy, current, in_flight, max), want) in cases {
            assert_eq!(
                keep_busy(desired, busy, current, in_flight, max),
                want,
                "{desired} desired, {busy} busy of {current}, {in_flight} in flight, max {max}"
            );
        }
    }

    #[test]
    fn the_memory_holds_a_restarted_pool_for_the_scale_down_window() {
        let cfg = config(0, 10, 10);
        let mut memory = ScaleMemory::default();
        let idle = Observed {
            current: 5,
            ready: 5,
            ..Observed::default()
        };
        // A restarted operator takes the workers there are as the recent
        // recommendation: the empty queue does not drop them at once.
        assert_eq!(memory.decide(&cfg, &idle, at(0)).replicas, 5);
        assert_eq!(memory.decide(&cfg, &idle, at(299)).replicas, 5);
        // After the 300 s window, down to the recommendation.
        assert_eq!(memory.decide(&cfg, &idle, at(301)).replicas, 0);
    }

    #[test]
    fn a_decision_outside_the_fleets_own_bounds_is_what_the_fleet_keeps() {
        let d = |replicas| Decision {
            replicas,
            recommendation: replicas,
            constraint: None,
            reason: "backlog".into(),
        };
        // A node group of minSize 1: a pool at its minimum scales nothing.
        let kept = within_bounds(d(0), Some((1, 10)));
        assert_eq!(kept.replicas, 1);
        assert_eq!(kept.recommendation, 0);
        assert_eq!(kept.constraint, Some(Constraint::FleetBounds));
        assert!(
            kept.reason.contains("bounds [1, 10] make it 1"),
            "{}",
            kept.reason
        );
        assert_eq!(within_bounds(d(12), Some((1, 10))).replicas, 10);
        assert_eq!(within_bounds(d(4), Some((1, 10))), d(4));
        assert_eq!(within_bounds(d(0), None), d(0));
    }
}
