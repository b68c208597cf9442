//! Metered enqueue: how many of a batch's tasks may be in its pool's queue or
//! running at once. A batch of ten million must not sit in SQS (past its
//! retention, hiding later batches behind it): it is kept to a few seconds of
//! the pool's work, topped up as results arrive. Batches sharing a pool fill
//! that window in turn by weight, in task-seconds rather than messages (see
//! `shares`), so a small batch applied beside a huge one gets its turn at
//! once, waits behind no more than the window in the queue (see
//! `sizing::bundle_work`), and both progress in proportion.

use std::time::Duration;

use crate::sizing;
use crate::task_cost::{TaskCost, task_cost};

/// Seconds of the whole pool's work a pool's batches keep enqueued and
/// unfinished together. It covers the workers' results' linger (up to 5 s,
/// counted in flight until they arrive) and the round trip to the next
/// bundle: at 5 s the meter kept the queue empty and 14 % of a big pool's
/// worker-seconds idle (simulated).
pub const WINDOW: Duration = Duration::from_secs(20);

/// What a pool's window depends on, as one of its batches sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowInput {
    /// The pool's slots at its largest.
    pub pool_slots: u64,
    /// The pool's workers at its largest.
    pub pool_workers: u64,
    /// What one of the batch's tasks costs: see [`task_cost`].
    pub cost: Duration,
    /// Tasks in the batch's next bundle.
    pub next_bundle: u64,
}

/// The work a pool's batches may hold enqueued and unfinished together: a
/// running task per slot and a waiting bundle per worker (what the workers
/// hold: see the worker's `tasks_to_hold`), plus [`WINDOW`] of the pool's
/// slots; and never less than two bundles for every worker and one more (a
/// worker fetches its next bundle while its last tasks run, so that no
/// worker waits on the meter). Running tasks count in the window: with
/// [`WINDOW`] alone, ten-minute tasks on 800 slots had ~600 out and the pool
/// 37 % efficient (simulated). Which batch fills it is fair share's business
/// (see `shares`).
pub fn window_work(input: &WindowInput) -> Duration {
    let times = |d: Duration, n: u64| d.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    let slots = input.pool_slots.max(1);
    let workers = input.pool_workers.max(1);
    let bundle = times(input.cost, input.next_bundle.max(1));
    let by_slots =
        times(WINDOW.saturating_add(input.cost), slots).saturating_add(times(bundle, workers));
    let by_bundles = times(bundle, 2 * workers + 1);
    by_slots.max(by_bundles)
}

/// What the meter looks at before a batch asks for its turn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeterInput {
    /// The next bundle's tasks are of unknown length (cut by a learned sizing).
    pub unknown: bool,
    /// The task length bundles are cut for now (see `sizing`).
    pub learned: Option<Duration>,
    /// The batch's observed (else declared) task length.
    pub estimate: Option<Duration>,
    /// The mean length the next bundle's tasks declare, if they do.
    pub declared: Option<Duration>,
    /// The pool's slots the batch is planned for.
    pub pool_slots: u64,
    /// The pool's workers at its largest.
    pub pool_workers: u64,
    /// Tasks in the batch's next bundle.
    pub next_bundle: u64,
}

/// What the batch's next tasks cost (in the window and in its share) and the
/// pool's window they are metered against: the runner's and the simulator's
/// one decision. In the window a task counts for at most [`WINDOW`]: batches
/// of a pool fill one window together, and ten-minute tasks counted at their
/// length filled it beside a batch of 1 s tasks, which then sent a bundle
/// only when it had nothing in flight (4.4× the ideal, 76 % of the
/// worker-seconds idle; simulated). A long task holds one slot whatever its
/// length; the window still counts every slot's running task.
pub fn meter(input: &MeterInput) -> (TaskCost, Duration) {
    // Tasks that declare their length cost that: sent longest first, they
    // are longer than the results so far, and charged at the estimate a
    // batch of them took 14.6 % of the slot-time for a weight of 12.5 %
    // (+16.5 %; 12.3 % sent as given; simulated).
    let (metered, length) = if input.unknown {
        let metered = sizing::window_cost(input.learned, input.estimate);
        (metered, input.estimate)
    } else {
        let length = input.declared.or(input.estimate);
        (length, length)
    };
    let cost = TaskCost {
        window: task_cost(metered).min(WINDOW),
        share: task_cost(length),
    };
    let window = window_work(&WindowInput {
        pool_slots: input.pool_slots,
        pool_workers: input.pool_workers,
        cost: cost.window,
        next_bundle: input.next_bundle,
    });
    (cost, window)
}

/// A smoothed task length from observed ones: their mean at first, then
/// exponentially weighted over about the last [`Estimate::ALPHA`]⁻¹ (so it
/// follows a batch whose tasks change as it goes). Over few results a
/// heavy-tailed batch's average swings: weighted over the last 20, a
/// lognormal's (median 1 s, p99 30 s) moved by ±40 %, and fair share, which
/// charges each bundle at the estimate when it is sent, gave batches 10–20 %
/// more or less than their weight (simulated).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    nanos: Option<f64>,
    /// Observations so far (the declared seed is none).
    observed: u64,
    /// Started from a declared length.
    seeded: bool,
}

impl Estimate {
    /// Weight of each new observation, once there are more than its inverse.
    const ALPHA: f64 = 0.002;

    /// From a declared length, which weighs as one observation.
    pub fn seeded(declared: Option<Duration>) -> Self {
        Self {
            nanos: declared.map(|d| d.as_nanos() as f64),
            observed: 0,
            seeded: declared.is_some(),
        }
    }

    pub fn observe(&mut self, took: Duration) {
        let x = took.as_nanos() as f64;
        self.observed += 1;
        let n = self.observed + u64::from(self.seeded);
        let alpha = Self::ALPHA.max(1.0 / n as f64);
        self.nanos = Some(match self.nanos {
            None => x,
            Some(m) => m + alpha * (x - m),
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

    fn input(cost: Duration, next_bundle: u64) -> WindowInput {
        WindowInput {
            pool_slots: 8,
            pool_workers: 2,
            cost,
            next_bundle,
        }
    }

    #[test]
    fn window_table() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // (cost, next bundle) -> work
        let cases = [
            // 8 slots x (20 s + a running task) and a bundle per worker.
            ((s(1), 1), s(170)),
            ((ms(10), 1), ms(160_100)),
            ((ms(10), 2_000), ms(200_080)),
            // Big bundles: two per worker and one more.
            ((ms(100), 2_000), s(1_000)),
            // Long tasks: every slot's running one on top of the 20 s.
            ((s(60), 1), s(760)),
            ((s(600), 1), s(6_160)),
        ];
        for ((cost, next), want) in cases {
            assert_eq!(window_work(&input(cost, next)), want, "{cost:?} {next}");
        }
        // A task costs its length, at least 1 ms, 1 s while unknown.
        assert_eq!(task_cost(None), s(1));
        assert_eq!(task_cost(Some(Duration::ZERO)), ms(1));
        assert_eq!(task_cost(Some(ms(20))), ms(20));
    }

    #[test]
    fn the_meter_counts_unknown_tasks_at_their_sizing_and_shares_at_the_estimate() {
        let ms = Duration::from_millis;
        let input = MeterInput {
            unknown: true,
            learned: Some(ms(500)),
            estimate: Some(ms(2)),
            declared: None,
            pool_slots: 8,
            pool_workers: 2,
            next_bundle: 10,
        };
        let (cost, window) = meter(&input);
        assert_eq!(
            cost,
            TaskCost {
                window: ms(500),
                share: ms(2)
            }
        );
        assert_eq!(window, Duration::from_secs(174));
        // Declared (or known) tasks: the estimate for both.
        let (cost, _) = meter(&MeterInput {
            unknown: false,
            ..input
        });
        assert_eq!(cost, TaskCost::same(ms(2)));
        // Long tasks: a running one per slot and a bundle per worker on
        // top of the 20 s (8 x 30 s + 2 x 60 s).
        let (_, window) = meter(&MeterInput {
            unknown: false,
            estimate: Some(Duration::from_secs(10)),
            next_bundle: 6,
            ..input
        });
        assert_eq!(window, Duration::from_secs(360));
        // Big bundles: two per worker and one more (5 x 600 s).
        let (_, window) = meter(&MeterInput {
            unknown: false,
            estimate: Some(Duration::from_secs(10)),
            next_bundle: 60,
            ..input
        });
        assert_eq!(window, Duration::from_secs(3_000));
        // Ten-minute tasks count for 20 s in the window (8 x 40 s + 2 x 20 s),
        // and for their length in the share.
        let (cost, window) = meter(&MeterInput {
            unknown: false,
            estimate: Some(Duration::from_secs(600)),
            next_bundle: 1,
            ..input
        });
        assert_eq!(
            cost,
            TaskCost {
                window: WINDOW,
                share: Duration::from_secs(600)
            }
        );
        assert_eq!(window, Duration::from_secs(360));
        // A bundle whose tasks declare their length costs that, in the share
        // and in the window, whatever the estimate; tasks of unknown length
        // are not declared.
        let declared = MeterInput {
            unknown: false,
            estimate: Some(ms(2)),
            declared: Some(ms(300)),
            ..input
        };
        assert_eq!(meter(&declared).0, TaskCost::same(ms(300)));
        let (cost, _) = meter(&MeterInput {
            unknown: true,
            ..declared
        });
        assert_eq!(cost.share, ms(2));
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

    #[test]
    fn an_estimate_of_heavy_tailed_lengths_holds_still() {
        // Lengths of 1 s with one of 100 s in every 50: mean 2.98 s. After a
        // long task the estimate must not jump (it did by 5 s, to 2.7x).
        let mut e = Estimate::seeded(None);
        let mut worst: f64 = 0.0;
        for i in 0..20_000u64 {
            let s = if i % 50 == 49 { 100.0 } else { 1.0 };
            e.observe(Duration::from_secs_f64(s));
            if i >= 1_000 {
                let got = e.get().unwrap().as_secs_f64();
                worst = worst.max((got / 2.98 - 1.0).abs());
            }
        }
        assert!(worst < 0.1, "off by {:.0} %", worst * 100.0);
    }

    #[test]
    fn an_estimate_follows_tasks_that_change() {
        let mut e = Estimate::seeded(None);
        for _ in 0..10_000 {
            e.observe(Duration::from_secs(1));
        }
        for _ in 0..2_000 {
            e.observe(Duration::from_secs(10));
        }
        let got = e.get().unwrap().as_secs_f64();
        assert!(got > 9.0, "{got}");
    }
}
