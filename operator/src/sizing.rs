//! Bundle sizes from observed cost. A batch whose tasks do not declare their
//! length starts with small bundles ([`BundlePlan::FIRST_UNKNOWN_TASKS`]);
//! as results tell how long its tasks take, its bundles are cut for that
//! length: they grow, at most [`GROWTH`] times at each step (the first
//! results are the short tasks), up to a bundle's worth of work, while
//! factoring's `spread` shrinks them towards the batch's end. Longer tasks
//! than thought shrink them at once. Until the sizing has caught up with the
//! estimate, the meter counts tasks at the sizing's length ([`window_cost`]):
//! the batch waits for the results that let its bundles grow, rather than
//! sending the whole batch in small ones.
//!
//! A change is written ahead: `status.bundleSizing` records the task from
//! which bundles are cut for a learned length, in the same status write as
//! the enqueue checkpoint at that task, before any such bundle is sent. A
//! restarted runner cuts again from there with the same length, so it sends
//! the bundles (the claim keys) it sent before.

use std::time::Duration;

use cloudkon_core::BundlePlan;

use crate::task_cost::MIN_TASK_COST;

/// The plan a TaskBatch cuts its bundles with, over `slots` slots of
/// `workers` workers, for tasks of unknown length taken to cost `learned`
/// (`None`: not learned yet).
///
/// A bundle holds at most [`bundle_work`] of work: the pool's queue then
/// holds about the window's 20 s of the pool's work, which is how long a
/// batch applied beside a big one waits behind it (SQS hands out messages
/// in about the order they were sent), and how long a bundle given back
/// waits for its next worker. `workers: None`: a batch started by an
/// operator that did not record its pool's workers, cut as it was.
///
/// Over the slots, not the workers, though a worker runs a bundle on all its
/// slots: spread over the workers, a 10 M batch went in 3.3 times fewer
/// bundles (simulated), but a small batch in fewer messages got fewer
/// workers from the backlog, and two batches sharing 2 workers took turns
/// in bundles of 10 s of a worker (61 % of the work for a weight of 75 %).
pub fn plan(total: u64, slots: u64, workers: Option<u64>, learned: Option<Duration>) -> BundlePlan {
    BundlePlan {
        max_unknown_tasks: Some(BundlePlan::FIRST_UNKNOWN_TASKS),
        max_bundle_time: workers.map_or(MAX_BUNDLE_TIME, |w| {
            // Not below what the first bundles of unknown tasks hold: the
            // length cut for is high while it is learned (each step waits
            // for results), and bundles of one task would slow the ramp.
            let learning = learned.map_or(Duration::ZERO, |l| {
                l.saturating_mul(BundlePlan::FIRST_UNKNOWN_TASKS as u32)
            });
            bundle_work(slots, w).max(learning).min(MAX_BUNDLE_TIME)
        }),
        min_bundle_time: tail_work(slots),
        ..BundlePlan::SQS
    }
    .spread(total, slots)
    .learned(learned)
}

/// The most work a bundle holds on a pool of `slots` slots and `workers`
/// workers: [`MAX_BUNDLE_TIME`], and no more than the window's time of the
/// pool's slots over one more than its workers. The window keeps at least
/// two bundles per worker and one more enqueued or running (`window`); with
/// bigger bundles that minimum is the window, the queue holds a bundle per
/// worker and more, and whatever comes next waits for them: a 100,000-task
/// batch of 50 ms tasks on 2 workers of 4 slots was cut in bundles of 55 s
/// of a worker, and a 200-task batch applied beside it took 145 s instead
/// of 3 s (simulated).
pub fn bundle_work(slots: u64, workers: u64) -> Duration {
    let per = u32::try_from(workers.saturating_add(1)).unwrap_or(u32::MAX);
    let pool =
        crate::window::WINDOW.saturating_mul(u32::try_from(slots.max(1)).unwrap_or(u32::MAX));
    (pool / per).min(MAX_BUNDLE_TIME)
}

/// The least work a bundle holds at a batch's end, on a pool of `slots`
/// slots: enough that the slots, all busy, finish at most
/// [`TAIL_BUNDLES_PER_SECOND`] bundles a second (the core plan's second, on
/// a smaller pool). Factoring alone shrinks the last bundles to a task each,
/// and each bundle is a claim and a completion in the ledger: on 1,000
/// workers of 8 slots and tasks of ~3 s, the tail asked for 3,855 ledger
/// writes a second, 22 times the run's average, near the 4,000 a new
/// on-demand table takes at once (simulated). A floor that grows with the
/// pool, not with a worker's slots: a small pool's tail keeps its one-task
/// bundles, which a worker with one slot free starts at once.
pub fn tail_work(slots: u64) -> Duration {
    let per_slot = Duration::from_secs(1) / TAIL_BUNDLES_PER_SECOND;
    per_slot
        .saturating_mul(u32::try_from(slots).unwrap_or(u32::MAX))
        .max(BundlePlan::SQS.min_bundle_time)
}

/// The most bundles a pool's slots finish in a second at a batch's end
/// ([`tail_work`]): two ledger writes each, a quarter of what a new
/// on-demand table takes at once.
pub const TAIL_BUNDLES_PER_SECOND: u32 = 500;

/// A bundle's work at most. Factoring (`spread`: the remaining tasks over
/// twice the pool's slots) is what bounds bundles early in a big batch and
/// shrinks them at its end; a minute of work (core's SQS plan) cut a 10 M
/// batch of 3 s tasks into 391,000 bundles, each a receive, a claim, renewals,
/// a completion and a delete, where factoring alone cuts about 120,000
/// (simulated). Half an hour is about 4 minutes of a worker of 8 slots.
pub const MAX_BUNDLE_TIME: Duration = Duration::from_secs(30 * 60);

/// The most bundles grow in one step.
pub const GROWTH: u32 = 4;

/// What the first bundles of unknown tasks amount to: a bundle's work over
/// their size.
fn first_cost() -> Duration {
    MAX_BUNDLE_TIME / BundlePlan::FIRST_UNKNOWN_TASKS as u32
}

/// What the sizing decision looks at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizingInput {
    /// The task length bundles are cut for now (`None`: not learned yet).
    pub current: Option<Duration>,
    /// The batch's observed task length.
    pub estimate: Option<Duration>,
    /// Results observed since `current` was set.
    pub fresh: u64,
    /// The pool's slots the batch is planned for.
    pub slots: u64,
}

/// The task length to cut the next bundles for, when it should change:
/// `None` keeps the current one. A step needs a result per slot since the
/// last, and a change of more than half (not every wobble of the average
/// re-cuts the batch); growth is at most [`GROWTH`] times per step. Whole
/// microseconds, as `status.bundleSizing` records it.
pub fn next_cost(input: &SizingInput) -> Option<Duration> {
    let estimate = input.estimate?.max(MIN_TASK_COST);
    if input.fresh < input.slots.max(1) {
        return None;
    }
    let current = input.current.unwrap_or_else(first_cost);
    let next = if estimate < current {
        estimate.max(current / GROWTH)
    } else {
        estimate
    };
    let next = Duration::from_micros(u64::try_from(next.as_micros()).unwrap_or(u64::MAX));
    let (n, c) = (next.as_nanos(), current.as_nanos());
    (3 * n < 2 * c || 2 * n > 3 * c).then_some(next)
}

/// Whether bundles cut for `current` grow at the next step, once enough
/// results are fresh: the estimate is under two thirds of it. Meanwhile
/// the batch waits on results (see [`window_cost`]), and its collector
/// takes them without pausing.
pub fn growing(current: Option<Duration>, estimate: Option<Duration>) -> bool {
    let input = SizingInput {
        current,
        estimate,
        fresh: u64::MAX,
        slots: 1,
    };
    next_cost(&input).is_some_and(|next| next < current.unwrap_or_else(first_cost))
}

/// Whether the collector goes on without its pause (`collect_pause`): the
/// next bundles are of `unknown` tasks and cut anew by results, and either
/// no result has come yet (the first may show they can grow) or they are
/// [`growing`]. The runner's and the simulator's one decision.
pub fn collector_cue(unknown: bool, current: Option<Duration>, estimate: Option<Duration>) -> bool {
    unknown && estimate.is_none_or(|e| growing(current, Some(e)))
}

/// The task length the meter counts a batch of unknown tasks at, once
/// results tell: the estimate, or the length its bundles are still cut for
/// when longer. (Before any result, the meter's own guess for unknown tasks,
/// so that a pool scaled to zero still sees a backlog worth its workers.)
pub fn window_cost(current: Option<Duration>, estimate: Option<Duration>) -> Option<Duration> {
    estimate.map(|e| e.max(current.unwrap_or_else(first_cost)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::TaskSpec;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn input(current: Option<Duration>, estimate: Option<Duration>, fresh: u64) -> SizingInput {
        SizingInput {
            current,
            estimate,
            fresh,
            slots: 8,
        }
    }

    #[test]
    fn sizing_table() {
        // (current, estimate, fresh results) -> the next length, if any
        let cases = [
            // Nothing observed, or too little: keep.
            ((None, None, 100), None),
            ((None, Some(MS(2)), 7), None),
            // Short tasks: the first step quarters the first length (112.5 s).
            (
                (None, Some(MS(2)), 8),
                Some(Duration::from_micros(28_125_000)),
            ),
            // ... and each step again, down to the estimate.
            (
                (Some(MS(1875)), Some(MS(2)), 8),
                Some(Duration::from_micros(468_750)),
            ),
            ((Some(MS(4)), Some(MS(2)), 8), Some(MS(2))),
            ((Some(MS(12)), Some(MS(2)), 8), Some(MS(3))),
            // Within half of it: keep.
            ((Some(MS(2)), Some(MS(2)), 1000), None),
            ((Some(MS(2)), Some(MS(1) + MS(1) / 2), 1000), None),
            ((Some(MS(2)), Some(MS(3)), 1000), None),
            // Longer than thought: at once.
            ((Some(MS(2)), Some(MS(500)), 8), Some(MS(500))),
            (
                (None, Some(Duration::from_secs(60)), 8),
                Some(Duration::from_secs(60)),
            ),
            // `sleep 0`-like tasks count as 1 ms.
            ((Some(MS(1)), Some(Duration::ZERO), 1000), None),
        ];
        for ((current, estimate, fresh), want) in cases {
            assert_eq!(
                next_cost(&input(current, estimate, fresh)),
                want,
                "{current:?} {estimate:?} {fresh}"
            );
        }
    }

    #[test]
    fn bundles_are_growing_while_the_estimate_is_well_below_their_sizing() {
        // (sizing, estimate) -> growing
        let cases = [
            ((None, None), false),
            ((Some(MS(500)), None), false),
            // Before any sizing, bundles are cut for `first_cost`.
            ((None, Some(MS(2))), true),
            ((None, Some(Duration::from_secs(200))), false),
            ((Some(MS(500)), Some(MS(2))), true),
            ((Some(MS(12)), Some(MS(2))), true),
            // Within half: no step. Longer than thought: shrinking.
            ((Some(MS(3)), Some(MS(2))), false),
            ((Some(MS(2)), Some(MS(2))), false),
            ((Some(MS(2)), Some(MS(500))), false),
        ];
        for ((current, estimate), want) in cases {
            assert_eq!(growing(current, estimate), want, "{current:?} {estimate:?}");
        }
    }

    #[test]
    fn the_collector_goes_on_without_pausing_until_the_bundles_have_grown() {
        // (unknown, sizing, estimate) -> no pause
        let cases = [
            ((true, None, None), true),
            ((true, Some(MS(500)), None), true),
            ((true, None, Some(MS(2))), true),
            ((true, Some(MS(2)), Some(MS(2))), false),
            ((true, Some(MS(2)), Some(MS(500))), false),
            // Declared lengths, or bundles the runner may not cut anew.
            ((false, None, None), false),
            ((false, None, Some(MS(2))), false),
        ];
        for ((unknown, current, estimate), want) in cases {
            assert_eq!(
                collector_cue(unknown, current, estimate),
                want,
                "{unknown} {current:?} {estimate:?}"
            );
        }
    }

    #[test]
    fn a_bundle_holds_at_most_the_windows_time_of_the_pool_over_its_workers_and_one() {
        let s = Duration::from_secs;
        assert_eq!(
            bundle_work(8, 2),
            Duration::from_millis(53_333) + Duration::from_nanos(333_333)
        );
        assert_eq!(bundle_work(4, 1), s(40));
        assert!(bundle_work(8_000, 1_000) < s(160));
        assert_eq!(bundle_work(1_000_000, 1), MAX_BUNDLE_TIME);
        let run = TaskSpec::Run {
            program: "true".into(),
            args: vec![],
            expected_ms: None,
        };
        // 100,000 tasks of 50 ms on 2 workers of 4 slots: factoring alone
        // cuts bundles of 4,096 (205 s of work, 51 s of a worker).
        let learned = Some(MS(50));
        assert_eq!(
            plan(100_000, 8, None, learned).tasks_per_bundle_at(&run, 0),
            4_096
        );
        let capped = plan(100_000, 8, Some(2), learned).tasks_per_bundle_at(&run, 0);
        assert_eq!(capped, 1_066);
        // Then the window is its 20 s of the slots, a running task each and
        // a bundle per worker: the minimum of bundles does not swell it.
        let bundle = |n: usize| crate::window::WindowInput {
            pool_slots: 8,
            pool_workers: 2,
            cost: MS(50),
            next_bundle: n as u64,
        };
        let by_slots = |n: usize| (crate::window::WINDOW + MS(50)) * 8 + MS(50) * (2 * n as u32);
        assert_eq!(
            crate::window::window_work(&bundle(capped)),
            by_slots(capped)
        );
        assert!(crate::window::window_work(&bundle(4_096)) > by_slots(4_096));
        // While a length is learned, bundles hold what the first ones did.
        assert_eq!(
            plan(100_000, 8, Some(2), Some(s(28))).tasks_per_bundle_at(&run, 0),
            BundlePlan::FIRST_UNKNOWN_TASKS
        );
    }

    #[test]
    fn a_big_pools_last_bundles_hold_enough_work_to_spare_the_ledger() {
        let run = TaskSpec::Run {
            program: "true".into(),
            args: vec![],
            expected_ms: None,
        };
        let s = Duration::from_secs;
        let last = |slots| {
            plan(10_000_000, slots, Some(slots / 8), Some(s(3)))
                .tasks_per_bundle_at(&run, 10_000_000 - 1)
        };
        // 8,000 slots, each busy, finish 500 bundles of 16 s a second.
        assert_eq!(tail_work(8_000), s(16));
        assert_eq!(last(8_000), 5);
        // A small pool's tail goes a task at a time, as factoring cuts it.
        assert_eq!(tail_work(400), BundlePlan::SQS.min_bundle_time);
        assert_eq!(last(800), 1);
        assert_eq!(last(8), 1);
        // Early in the batch factoring's bundles are bigger than the floor.
        let first = plan(10_000_000, 8_000, Some(1_000), Some(s(3)));
        assert!(first.tasks_per_bundle_at(&run, 0) > 5);
    }

    #[test]
    fn unknown_tasks_start_small_and_grow_to_a_bundle_of_work() {
        let run = TaskSpec::Run {
            program: "true".into(),
            args: vec![],
            expected_ms: None,
        };
        let sizes = |learned| plan(1_000_000, 8, None, learned).tasks_per_bundle_at(&run, 0);
        assert_eq!(sizes(None), BundlePlan::FIRST_UNKNOWN_TASKS);
        // Following the steps of 2 ms tasks, each bundle at most 4x the last.
        let mut current = None;
        let mut last = sizes(None);
        let mut steps = 0;
        while let Some(next) = next_cost(&input(current, Some(MS(2)), 8)) {
            current = Some(next);
            let size = sizes(current);
            assert!(size <= GROWTH as usize * last, "{last} then {size}");
            last = size;
            steps += 1;
        }
        assert_eq!(current, Some(MS(2)));
        assert_eq!(last, BundlePlan::SQS.max_tasks);
        assert!(steps <= 8, "{steps} steps");
        // 1 s tasks: half an hour's work per bundle, early in a big batch.
        assert_eq!(sizes(Some(Duration::from_secs(1))), 1_800);
        // ... and factoring's share of it later: 10,000 left over 8 slots.
        let late = plan(1_000_000, 8, None, Some(Duration::from_secs(1)));
        assert_eq!(late.tasks_per_bundle_at(&run, 990_000), 625);
    }

    #[test]
    fn the_meter_counts_tasks_at_the_sizing_until_it_catches_up() {
        let s = Duration::from_secs;
        // (sizing, estimate) -> the length the window counts
        let cases = [
            ((None, None), None),
            ((Some(MS(500)), None), None),
            ((None, Some(MS(2))), Some(first_cost())),
            ((Some(MS(500)), Some(MS(2))), Some(MS(500))),
            ((Some(MS(2)), Some(MS(2))), Some(MS(2))),
            ((Some(MS(2)), Some(s(5))), Some(s(5))),
        ];
        for ((current, estimate), want) in cases {
            assert_eq!(
                window_cost(current, estimate),
                want,
                "{current:?} {estimate:?}"
            );
        }
    }
}
