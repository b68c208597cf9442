//! Metered enqueue: how many of a batch's tasks may be in its pool's queue or
//! running at once. A batch of ten million must not sit in SQS (past its
//! retention, hiding later batches behind it): it is kept to a few seconds of
//! the pool's work, topped up as results arrive. Batches sharing a pool split
//! that work by weight, in task-seconds rather than messages, so a small batch
//! applied beside a huge one starts at once and both progress in proportion.

use std::time::Duration;

/// Seconds of the whole pool's work a pool's batches keep enqueued together.
pub const WINDOW: Duration = Duration::from_secs(5);
/// What a task of unknown length is taken to cost until results tell.
pub const UNKNOWN_TASK: Duration = Duration::from_secs(1);
/// The least a task is taken to cost: `sleep 0` still takes a slot a moment.
pub const MIN_TASK_COST: Duration = Duration::from_millis(1);

/// What the window of one batch depends on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowInput {
    /// The pool's slots at its largest.
    pub pool_slots: u64,
    /// The pool's workers at its largest.
    pub pool_workers: u64,
    /// This batch's weight, and the sum over the batches enqueuing on the pool
    /// (this one included).
    pub weight: u64,
    pub total_weight: u64,
    /// The batch's task length: observed, else declared; `None`: unknown.
    pub estimate: Option<Duration>,
    /// Tasks in the batch's next bundle.
    pub next_bundle: u64,
}

/// Tasks of the batch that may be enqueued and not finished: its weighted
/// share of [`WINDOW`] of the pool's work, and never less than its share of
/// a bundle for every worker and one more (so that, all batches together, no
/// worker waits on the meter), at least one bundle.
pub fn window_tasks(input: &WindowInput) -> u64 {
    // Integer arithmetic: the same inputs give the same window everywhere.
    let weight = u128::from(input.weight.max(1));
    let total_weight = u128::from(input.total_weight).max(weight);
    let cost = input
        .estimate
        .unwrap_or(UNKNOWN_TASK)
        .max(MIN_TASK_COST)
        .as_nanos();
    let work = u128::from(input.pool_slots.max(1)) * WINDOW.as_nanos() * weight;
    let by_work = work.div_ceil(total_weight * cost);
    let bundles = ((u128::from(input.pool_workers.max(1)) + 1) * weight).div_ceil(total_weight);
    let by_bundles = u128::from(input.next_bundle.max(1)) * bundles;
    u64::try_from(by_work.max(by_bundles)).unwrap_or(u64::MAX)
}

/// A smoothed task length from observed ones (exponentially weighted, so it
/// follows a batch whose tasks change as it goes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    nanos: Option<f64>,
    /// Observations so far (the declared seed is none).
    observed: u64,
}

impl Estimate {
    /// Weight of each new observation.
    const ALPHA: f64 = 0.05;

    pub fn seeded(declared: Option<Duration>) -> Self {
        Self {
            nanos: declared.map(|d| d.as_nanos() as f64),
            observed: 0,
        }
    }

    pub fn observe(&mut self, took: Duration) {
        let x = took.as_nanos() as f64;
        self.observed += 1;
        self.nanos = Some(match self.nanos {
            None => x,
            Some(m) => m + Self::ALPHA * (x - m),
        });
    }

    /// Observations so far.
    pub fn observed(&self) -> u64 {
        self.observed
    }

    pub fn get(&self) -> Option<Duration> {
        self.nanos.map(|n| Duration::from_nanos(n.max(0.0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        weight: u64,
        total_weight: u64,
        estimate: Option<Duration>,
        next_bundle: u64,
    ) -> WindowInput {
        WindowInput {
            pool_slots: 8,
            pool_workers: 2,
            weight,
            total_weight,
            estimate,
            next_bundle,
        }
    }

    #[test]
    fn window_table() {
        let ms = Duration::from_millis;
        // (weight, total weight, estimate, next bundle) -> tasks
        let cases = [
            // 8 slots x 5 s of 1 s unknown tasks; bundles of 1 need 3.
            ((1, 1, None, 1), 40),
            // Learned 10 ms: 4,000 tasks.
            ((1, 1, Some(ms(10)), 1), 4_000),
            // sleep 0 counts as 1 ms: 40,000.
            ((1, 1, Some(Duration::ZERO), 4096), 40_000),
            // Big bundles: one per worker and one more.
            ((1, 1, Some(ms(10)), 2_000), 6_000),
            // Weights 1 and 3: a quarter and three quarters of the work.
            ((1, 4, Some(ms(10)), 1), 1_000),
            ((3, 4, Some(ms(10)), 1), 3_000),
            // The bundle floor follows the share too: 3 bundles in all.
            ((1, 4, Some(ms(10)), 2_000), 2_000),
            ((3, 4, Some(ms(10)), 2_000), 6_000),
            // A total below the weight (not registered yet) counts as alone.
            ((2, 0, Some(ms(10)), 1), 4_000),
        ];
        for ((w, tw, est, next), want) in cases {
            assert_eq!(
                window_tasks(&input(w, tw, est, next)),
                want,
                "{w}/{tw} {est:?} {next}"
            );
        }
    }

    #[test]
    fn the_windows_of_weighted_batches_hold_work_in_proportion() {
        // Same task length: tasks in proportion; different lengths: seconds.
        let a = window_tasks(&input(1, 4, Some(Duration::from_millis(100)), 1));
        let b = window_tasks(&input(3, 4, Some(Duration::from_millis(20)), 1));
        let work_a = a as f64 * 0.1;
        let work_b = b as f64 * 0.02;
        assert!((work_b / work_a - 3.0).abs() < 0.05, "{work_a} vs {work_b}");
    }

    #[test]
    fn estimates_start_from_the_declared_length_and_follow_observations() {
        let mut e = Estimate::seeded(None);
        assert_eq!(e.get(), None);
        e.observe(Duration::from_millis(100));
        assert_eq!(e.get(), Some(Duration::from_millis(100)));
        let mut e = Estimate::seeded(Some(Duration::from_secs(1)));
        for _ in 0..200 {
            e.observe(Duration::from_millis(10));
        }
        let got = e.get().unwrap();
        assert!(got < Duration::from_millis(15), "{got:?}");
    }
}
