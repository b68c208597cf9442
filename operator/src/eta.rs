//! When a batch will finish: its rate of finished tasks over the last
//! minute, counted from its first result. The average since the batch began
//! would count the workers' start-up as if tasks ran at that pace, and a pool
//! scaled up since would not show for a long time.

use std::collections::VecDeque;
use std::time::Duration;

/// How far back the rate looks.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Finished-task counts over time (times from any fixed origin).
#[derive(Clone, Debug, Default)]
pub struct Eta {
    /// (when, finished), oldest first; the first is at or before the
    /// window's start once the batch is older than the window.
    samples: VecDeque<(Duration, u64)>,
}

impl Eta {
    /// Counts from the first result on: nothing before it is kept.
    pub fn observe(&mut self, at: Duration, finished: u64) {
        if finished == 0 {
            return;
        }
        if self.samples.back().is_some_and(|&(t, _)| at < t) {
            return; // the clock went back: keep what is known
        }
        self.samples.push_back((at, finished));
        // Keep one sample at or before the window's start.
        while self.samples.len() > 2 && self.samples[1].0 + WINDOW <= at {
            self.samples.pop_front();
        }
    }

    /// Time left for `total` tasks at the window's rate; `None` before two
    /// samples, without progress in the window, or when done.
    pub fn time_left(&self, total: u64) -> Option<Duration> {
        let (&(t0, f0), &(t1, f1)) = (self.samples.front()?, self.samples.back()?);
        if f1 >= total || f1 <= f0 || t1 <= t0 {
            return None;
        }
        let rate = (f1 - f0) as f64 / (t1 - t0).as_secs_f64();
        // Past what a Duration holds (a generator of 10^19 tasks): no
        // estimate, where `from_secs_f64` panicked the runner at each flush.
        Duration::try_from_secs_f64((total - f1) as f64 / rate).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    /// A uniform batch: nothing for `startup` seconds (workers starting),
    /// then `rate` tasks a second, looked at every second.
    fn uniform(total: u64, startup: f64, rate: f64, until: u64) -> Eta {
        let mut eta = Eta::default();
        let mut t = 0.0;
        loop {
            let finished = (((t - startup) * rate).max(0.0) as u64).min(total);
            eta.observe(s(t), finished);
            if finished >= until {
                return eta;
            }
            t += 1.0;
        }
    }

    #[test]
    fn a_tenth_into_a_uniform_batch_the_estimate_is_within_a_fifth() {
        // 60 s of start-up, then 100 tasks/s for 100,000 tasks (1,000 s).
        for (startup, rate) in [(0.0, 100.0), (60.0, 100.0), (300.0, 100.0), (60.0, 3.0)] {
            let total = (1000.0 * rate) as u64;
            let tenth = total / 10;
            let eta = uniform(total, startup, rate, tenth);
            let left = eta.time_left(total).unwrap().as_secs_f64();
            let truth = (total - tenth) as f64 / rate;
            let error = (left - truth).abs() / truth;
            assert!(
                error <= 0.2,
                "startup {startup} s, {rate}/s: {left:.0} s left, truly {truth:.0} s ({:.1} % off)",
                100.0 * error
            );
            // The average since the batch began is off by the start-up.
            let naive = (startup + tenth as f64 / rate) / tenth as f64 * (total - tenth) as f64;
            if startup >= 300.0 {
                assert!((naive - truth).abs() / truth > 0.2, "{naive} vs {truth}");
            }
        }
    }

    #[test]
    fn a_pool_scaled_up_shows_within_the_window() {
        let mut eta = Eta::default();
        // 10/s for 300 s, then 40/s.
        let mut finished = 0;
        for t in 1..=300 {
            finished += 10;
            eta.observe(s(t as f64), finished);
        }
        for t in 301..=400 {
            finished += 40;
            eta.observe(s(t as f64), finished);
        }
        let total = finished + 40_000;
        let left = eta.time_left(total).unwrap().as_secs_f64();
        assert!((left - 1000.0).abs() < 1.0, "{left}");
    }

    #[test]
    fn no_estimate_without_progress_or_when_done() {
        let mut eta = Eta::default();
        assert_eq!(eta.time_left(10), None);
        eta.observe(s(1.0), 0);
        eta.observe(s(2.0), 5);
        assert_eq!(eta.time_left(10), None, "one sample");
        eta.observe(s(3.0), 5);
        assert_eq!(eta.time_left(10), None, "no progress");
        eta.observe(s(4.0), 7);
        assert_eq!(eta.time_left(10), Some(s(3.0)));
        eta.observe(s(5.0), 10);
        assert_eq!(eta.time_left(10), None, "done");
    }

    #[test]
    fn no_estimate_past_what_a_duration_holds() {
        let mut eta = Eta::default();
        eta.observe(s(0.0), 1);
        eta.observe(s(1000.0), 2);
        assert_eq!(eta.time_left(u64::MAX), None);
        let left = eta.time_left(1002).unwrap().as_secs_f64();
        assert!((left - 1_000_000.0).abs() < 1.0, "{left}");
    }
}
