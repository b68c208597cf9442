//! Batch statistics: counts, throughput, efficiency and latency percentiles,
//! aggregated from results in constant memory.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::task::{Outcome, TaskResult, TaskSpec};

/// A task's ideal time: its nominal duration (a sleep's length) or, where none is
/// known before running it, the time it actually ran. A task that did not
/// succeed counts at most the time it ran: a sleep timed out early did not do
/// its length's work. Whoever still holds the task when its result is made
/// computes this; results do not carry their task.
pub fn ideal_time(spec: &TaskSpec, result: &TaskResult) -> Duration {
    let ran = result.run_time();
    match spec.nominal_duration() {
        Some(nominal) if result.outcome.is_success() => nominal,
        Some(nominal) => nominal.min(ran),
        None => ran,
    }
}

/// Accumulates results as they arrive.
#[derive(Clone, Debug)]
pub struct Stats {
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Sum of the tasks' [`ideal_time`]s.
    ideal: Duration,
    queue_wait_us: Histogram<u64>,
    end_to_end_us: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        // Three significant digits over 1 µs .. 1 year: a few tens of KiB each.
        let histogram =
            || Histogram::new_with_bounds(1, 365 * 24 * 3600 * 1_000_000, 3).expect("valid bounds");
        Self {
            succeeded: 0,
            failed: 0,
            timed_out: 0,
            ideal: Duration::ZERO,
            queue_wait_us: histogram(),
            end_to_end_us: histogram(),
        }
    }

    /// Records one result.
    pub fn record(&mut self, result: &TaskResult) {
        match result.outcome {
            Outcome::Succeeded => self.succeeded += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::TimedOut => self.timed_out += 1,
        }
        self.queue_wait_us
            .saturating_record(micros(result.queue_wait()));
        self.end_to_end_us
            .saturating_record(micros(result.end_to_end()));
    }

    /// Adds to the ideal time: see [`ideal_time`].
    pub fn add_ideal(&mut self, ideal: Duration) {
        self.ideal += ideal;
    }

    pub fn done(&self) -> u64 {
        self.succeeded + self.failed + self.timed_out
    }

    /// The summary of a run of `total` tasks on `slots` slots that took `wall`.
    pub fn summary(&self, total: u64, slots: usize, wall: Duration, interrupted: bool) -> Summary {
        let done = self.done();
        let secs = wall.as_secs_f64();
        let ideal = self.ideal.as_secs_f64() / slots.max(1) as f64;
        Summary {
            tasks: total,
            succeeded: self.succeeded,
            failed: self.failed,
            timed_out: self.timed_out,
            not_run: total.saturating_sub(done),
            interrupted,
            slots,
            wall_seconds: secs,
            throughput: if secs > 0.0 { done as f64 / secs } else { 0.0 },
            efficiency: if secs > 0.0 {
                (ideal / secs).min(1.0)
            } else {
                0.0
            },
            queue_wait: Latency::of(&self.queue_wait_us),
            end_to_end: Latency::of(&self.end_to_end_us),
            peak_rss_bytes: None,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What `cloudkon run` and `cloudkon submit` print at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub tasks: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Tasks that never ran (the run was interrupted).
    pub not_run: u64,
    pub interrupted: bool,
    pub slots: usize,
    pub wall_seconds: f64,
    /// Finished tasks per second of wall time.
    pub throughput: f64,
    /// Ideal time / actual time, the seed papers' measure: ideal is the sum of the
    /// tasks' durations spread perfectly over the slots.
    pub efficiency: f64,
    pub queue_wait: Latency,
    pub end_to_end: Latency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

impl Summary {
    /// Every task ran and succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.succeeded == self.tasks
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = if self.interrupted {
            "interrupted"
        } else {
            "done"
        };
        writeln!(
            f,
            "{head}: {}, {} succeeded, {} failed, {} timed out, {} not run",
            counted(self.tasks, "task"),
            self.succeeded,
            self.failed,
            self.timed_out,
            self.not_run
        )?;
        writeln!(
            f,
            "wall time {:.3} s on {}, throughput {} tasks/s, efficiency {:.1}%",
            self.wall_seconds,
            counted(self.slots as u64, "slot"),
            format_rate(self.throughput),
            self.efficiency * 100.0
        )?;
        writeln!(
            f,
            "latency (ms)  queue wait p50 {:.3} p99 {:.3} max {:.3} | end-to-end p50 {:.3} p99 {:.3} max {:.3}",
            self.queue_wait.p50_ms,
            self.queue_wait.p99_ms,
            self.queue_wait.max_ms,
            self.end_to_end.p50_ms,
            self.end_to_end.p99_ms,
            self.end_to_end.max_ms
        )?;
        if let Some(rss) = self.peak_rss_bytes {
            writeln!(f, "peak memory {:.1} MiB", rss as f64 / (1024.0 * 1024.0))?;
        }
        Ok(())
    }
}

/// A rate (tasks per second) for people: three significant digits below 100
/// (0.250, 2.50, 25.0), so that a slow run does not read as 0; whole numbers
/// from 100 up.
pub fn format_rate(rate: f64) -> String {
    if !rate.is_finite() || rate <= 0.0 {
        return format!("{rate:.0}");
    }
    // The exponent of the rate rounded to three significant digits ("2.50e-1"):
    // 99.96 rounds to 1.00e2, a whole number.
    let scientific = format!("{rate:.2e}");
    let exponent: i32 = scientific
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    // At most 9 digits after the point: a vanishing rate prints as 0.000000000.
    let decimals = (2 - exponent).clamp(0, 9) as usize;
    format!("{rate:.decimals$}")
}

/// `1 task`, `2 tasks`.
pub fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{BatchId, Timestamp};

    fn result(outcome: Outcome, submitted: u64, started: u64, finished: u64) -> TaskResult {
        TaskResult {
            batch: BatchId::new("b"),
            id: 0,
            attempt: 1,
            outcome,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            worker: "w".into(),
            submitted: Timestamp(submitted),
            started: Timestamp(started),
            finished: Timestamp(finished),
        }
    }

    #[test]
    fn counts_and_efficiency_follow_the_seed_definition() {
        let mut stats = Stats::new();
        // Four 100 ms sleeps on 2 slots: ideal 200 ms.
        for i in 0..4 {
            // Ran 101 ms, but the ideal is the nominal 100 ms.
            let r = result(Outcome::Succeeded, 0, i * 1000, i * 1000 + 101_000);
            stats.record(&r);
            stats.add_ideal(ideal_time(&TaskSpec::Sleep { ms: 100 }, &r));
        }
        stats.record(&result(Outcome::Failed { reason: "x".into() }, 0, 0, 0));
        let s = stats.summary(6, 2, Duration::from_millis(250), false);
        assert_eq!(
            (s.succeeded, s.failed, s.timed_out, s.not_run),
            (4, 1, 0, 1)
        );
        assert!((s.efficiency - 0.8).abs() < 1e-9, "{}", s.efficiency);
        assert!((s.throughput - 20.0).abs() < 1e-9);
        assert!(!s.all_succeeded());
    }

    #[test]
    fn a_task_that_did_not_succeed_counts_at_most_the_time_it_ran() {
        let sleep = TaskSpec::Sleep { ms: 10_000 };
        let mut stats = Stats::new();
        // Two 10 s sleeps timed out after 100 ms, on 2 slots, in 100 ms.
        for _ in 0..2 {
            let r = result(Outcome::TimedOut, 0, 0, 100_000);
            stats.record(&r);
            assert_eq!(ideal_time(&sleep, &r), Duration::from_millis(100));
            stats.add_ideal(ideal_time(&sleep, &r));
        }
        let s = stats.summary(2, 2, Duration::from_millis(200), false);
        assert!((s.efficiency - 0.5).abs() < 1e-9, "{}", s.efficiency);
        // A failure after longer than its length still counts the length.
        let failed = result(Outcome::Failed { reason: "x".into() }, 0, 0, 20_000_000);
        assert_eq!(ideal_time(&sleep, &failed), Duration::from_secs(10));
    }

    #[test]
    fn ideal_time_falls_back_to_measured_run_time() {
        let mut stats = Stats::new();
        let r = result(Outcome::Succeeded, 0, 0, 500_000);
        stats.record(&r);
        stats.add_ideal(ideal_time(
            &TaskSpec::Run {
                program: "x".into(),
                args: vec![],
                expected_ms: None,
            },
            &r,
        ));
        let s = stats.summary(1, 1, Duration::from_secs(1), false);
        assert!((s.efficiency - 0.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let mut stats = Stats::new();
        for i in 1..=100u64 {
            stats.record(&result(Outcome::Succeeded, 0, i * 1000, i * 1000));
        }
        let s = stats.summary(100, 1, Duration::from_secs(1), false);
        assert!(
            (s.queue_wait.p50_ms - 50.0).abs() < 0.1,
            "{:?}",
            s.queue_wait
        );
        assert!(
            (s.queue_wait.p99_ms - 99.0).abs() < 0.1,
            "{:?}",
            s.queue_wait
        );
        assert!(
            (s.queue_wait.max_ms - 100.0).abs() < 0.1,
            "{:?}",
            s.queue_wait
        );
    }

    #[test]
    fn a_slow_run_shows_its_throughput_not_zero() {
        // 16 tasks of 8 s on 2 slots: 64 s, 0.25 tasks/s.
        let mut stats = Stats::new();
        for i in 0..16 {
            let started = i / 2 * 8_000_000;
            let r = result(Outcome::Succeeded, 0, started, started + 8_000_000);
            stats.record(&r);
            stats.add_ideal(ideal_time(&TaskSpec::Sleep { ms: 8000 }, &r));
        }
        let s = stats.summary(16, 2, Duration::from_secs(64), false);
        let text = s.to_string();
        assert!(
            text.contains("on 2 slots, throughput 0.250 tasks/s, efficiency 100.0%"),
            "{text}"
        );
    }

    #[test]
    fn one_task_on_one_slot_is_said_in_the_singular() {
        let mut stats = Stats::new();
        stats.record(&result(Outcome::Succeeded, 0, 0, 1_000_000));
        let text = stats
            .summary(1, 1, Duration::from_secs(1), false)
            .to_string();
        assert!(text.starts_with("done: 1 task, 1 succeeded"), "{text}");
        assert!(text.contains(" on 1 slot, "), "{text}");
        assert_eq!(counted(2, "task"), "2 tasks");
        assert_eq!(counted(0, "slot"), "0 slots");
    }

    #[test]
    fn rates_have_three_significant_digits_below_100() {
        let cases = [
            (0.25, "0.250"),
            (2.5, "2.50"),
            (25.0, "25.0"),
            (0.0123, "0.0123"),
            (1.0 / 3.0, "0.333"),
            (99.94, "99.9"),
            // Rounding that reaches the next power of ten keeps three digits.
            (9.996, "10.0"),
            (99.96, "100"),
            (100.0, "100"),
            (1234.4, "1234"),
            (12_345.6, "12346"),
            (0.0, "0"),
        ];
        for (rate, text) in cases {
            assert_eq!(format_rate(rate), text, "{rate}");
        }
    }

    #[test]
    fn empty_run_has_zero_figures() {
        let s = Stats::new().summary(0, 4, Duration::ZERO, true);
        assert_eq!(s.throughput, 0.0);
        assert_eq!(s.queue_wait, Latency::default());
        assert!(s.to_string().starts_with("interrupted: 0 tasks"));
    }
}
