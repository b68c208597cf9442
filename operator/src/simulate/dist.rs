//! Task durations and the simulator's randomness. A task's length is a pure
//! function of the seed, its batch and its id (a hash, not a stream), so that
//! a task run twice takes the same time and a run is the same whatever the
//! order of events.

use serde::Deserialize;

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform number in [0, 1) from a hash.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The hash of task `id` of batch `batch` in a run seeded `seed`.
pub fn task_hash(seed: u64, batch: usize, id: u64) -> u64 {
    mix(seed ^ mix(((batch as u64) << 40) ^ id))
}

/// A small seeded generator for the simulator's own choices (which worker
/// is interrupted, start-up jitter).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(mix(seed ^ 0x5EED))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    pub fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// A number in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// z of the 99th percentile of the standard normal.
const Z99: f64 = 2.326_347_874_040_840_8;

/// The longest a simulated task runs (11.6 days), and so the most any length
/// of a distribution may be: a lognormal's or an exponential's draws are cut
/// there (a heavy tail's draws reach ~3.7 times its p99 over median in
/// logarithms: the tail of a median of 1 s and a p99 of 1,000,000 s would
/// overflow the simulated clock). A declared length is whole milliseconds
/// in 32 bits (49.7 days), so it holds this.
pub const MAX_TASK_SECONDS: f64 = 1_000_000.0;

/// The shortest median of a lognormal: its spread is the logarithm of p99
/// over the median, infinite at 0.
pub const MIN_MEDIAN_SECONDS: f64 = 0.001;

/// How long a batch's tasks take, in seconds.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(
    tag = "kind",
    rename_all = "lowercase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Durations {
    /// Every task the same.
    Fixed { seconds: f64 },
    /// Uniform between two lengths.
    Uniform { min_seconds: f64, max_seconds: f64 },
    /// Lognormal given by its median and 99th percentile (a heavy tail).
    Lognormal {
        median_seconds: f64,
        p99_seconds: f64,
    },
    /// Exponential with this mean.
    Exponential { mean_seconds: f64 },
}

impl Durations {
    /// Why these durations cannot be simulated, if they cannot: each length
    /// finite and within `0..=MAX_TASK_SECONDS`, a uniform's `minSeconds`
    /// not above its `maxSeconds`, a lognormal's median at least
    /// `MIN_MEDIAN_SECONDS` and its p99 not below it (a lower p99 is a
    /// negative spread: the distribution mirrored). `field` names them in
    /// the message (`batches[0].durations`).
    pub fn check(&self, field: &str) -> Result<(), String> {
        let length = |name: &str, value: f64, min: f64| {
            if value.is_finite() && (min..=MAX_TASK_SECONDS).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{field}.{name} ({}) must be a length in seconds from {min} to {MAX_TASK_SECONDS}",
                    super::config::shown(value)
                ))
            }
        };
        match *self {
            Durations::Fixed { seconds } => length("seconds", seconds, 0.0),
            Durations::Uniform {
                min_seconds,
                max_seconds,
            } => {
                length("minSeconds", min_seconds, 0.0)?;
                length("maxSeconds", max_seconds, 0.0)?;
                if min_seconds > max_seconds {
                    return Err(format!(
                        "{field}.minSeconds ({min_seconds}) must not be above {field}.maxSeconds ({max_seconds})"
                    ));
                }
                Ok(())
            }
            Durations::Lognormal {
                median_seconds,
                p99_seconds,
            } => {
                length("medianSeconds", median_seconds, MIN_MEDIAN_SECONDS)?;
                length("p99Seconds", p99_seconds, 0.0)?;
                if p99_seconds < median_seconds {
                    return Err(format!(
                        "{field}.p99Seconds ({p99_seconds}) must not be below {field}.medianSeconds ({median_seconds}): a lognormal's 99th percentile is above its median"
                    ));
                }
                Ok(())
            }
            Durations::Exponential { mean_seconds } => length("meanSeconds", mean_seconds, 0.0),
        }
    }

    /// The length of the task whose hash is `h` (at most `MAX_TASK_SECONDS`).
    pub fn sample(&self, h: u64) -> f64 {
        match *self {
            Durations::Fixed { seconds } => seconds,
            Durations::Uniform {
                min_seconds,
                max_seconds,
            } => min_seconds + unit(h) * (max_seconds - min_seconds),
            Durations::Lognormal {
                median_seconds,
                p99_seconds,
            } => {
                let sigma = (p99_seconds / median_seconds).ln() / Z99;
                median_seconds * (sigma * normal(h)).exp()
            }
            Durations::Exponential { mean_seconds } => -mean_seconds * (1.0 - unit(h)).ln(),
        }
        .clamp(0.0, MAX_TASK_SECONDS)
    }

    /// The mean length (of the distribution, before draws are cut at
    /// `MAX_TASK_SECONDS`).
    pub fn mean(&self) -> f64 {
        match *self {
            Durations::Fixed { seconds } => seconds,
            Durations::Uniform {
                min_seconds,
                max_seconds,
            } => (min_seconds + max_seconds) / 2.0,
            Durations::Lognormal {
                median_seconds,
                p99_seconds,
            } => {
                let sigma = (p99_seconds / median_seconds).ln() / Z99;
                median_seconds * (sigma * sigma / 2.0).exp()
            }
            Durations::Exponential { mean_seconds } => mean_seconds,
        }
    }
}

/// A standard normal number from a hash (Box-Muller).
fn normal(h: u64) -> f64 {
    let u1 = unit(h).max(f64::MIN_POSITIVE);
    let u2 = unit(mix(h));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lognormal_has_the_median_and_p99_asked_for() {
        let d = Durations::Lognormal {
            median_seconds: 1.0,
            p99_seconds: 30.0,
        };
        let mut xs: Vec<f64> = (0..200_000).map(|i| d.sample(task_hash(7, 0, i))).collect();
        xs.sort_by(f64::total_cmp);
        let median = xs[xs.len() / 2];
        let p99 = xs[xs.len() * 99 / 100];
        assert!((median - 1.0).abs() < 0.02, "median {median}");
        assert!((p99 / 30.0 - 1.0).abs() < 0.05, "p99 {p99}");
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!(
            (mean / d.mean() - 1.0).abs() < 0.03,
            "{mean} vs {}",
            d.mean()
        );
    }

    /// A heavy tail's draws stop at `MAX_TASK_SECONDS`: a median of 1,000 s
    /// and a p99 of 1,000,000 s drew tasks of ~10^8 s over 200,000 draws
    /// (years of simulated time; ~10^14 s at the tail's end, past the
    /// clock's microseconds).
    #[test]
    fn a_heavy_tails_draws_stop_at_the_longest_task() {
        let d = Durations::Lognormal {
            median_seconds: 1000.0,
            p99_seconds: MAX_TASK_SECONDS,
        };
        assert_eq!(d.check("d"), Ok(()));
        let longest = (0..200_000)
            .map(|i| d.sample(task_hash(3, 0, i)))
            .fold(0.0, f64::max);
        assert_eq!(longest, MAX_TASK_SECONDS);
    }

    #[test]
    fn distributions_that_are_no_distribution_are_refused() {
        let bad = [
            (
                Durations::Lognormal {
                    median_seconds: 2.0,
                    p99_seconds: 1.0,
                },
                "d.p99Seconds",
            ),
            (
                Durations::Lognormal {
                    median_seconds: 0.0,
                    p99_seconds: 1.0,
                },
                "d.medianSeconds",
            ),
            (
                Durations::Lognormal {
                    median_seconds: f64::NAN,
                    p99_seconds: 1.0,
                },
                "d.medianSeconds",
            ),
            (Durations::Fixed { seconds: -1.0 }, "d.seconds"),
            (
                Durations::Exponential { mean_seconds: -1.0 },
                "d.meanSeconds",
            ),
            (
                Durations::Uniform {
                    min_seconds: 2.0,
                    max_seconds: 1.0,
                },
                "d.minSeconds",
            ),
            (
                Durations::Uniform {
                    min_seconds: 0.0,
                    max_seconds: f64::INFINITY,
                },
                "d.maxSeconds",
            ),
        ];
        for (d, field) in bad {
            let message = d.check("d").expect_err("refused");
            assert!(message.starts_with(field), "{field}: {message}");
        }
        assert_eq!(Durations::Fixed { seconds: 0.0 }.check("d"), Ok(()));
    }

    #[test]
    fn a_task_always_takes_the_same_time() {
        let d = Durations::Exponential { mean_seconds: 2.0 };
        assert_eq!(d.sample(task_hash(1, 2, 3)), d.sample(task_hash(1, 2, 3)));
        assert_ne!(d.sample(task_hash(1, 2, 3)), d.sample(task_hash(1, 2, 4)));
    }
}
