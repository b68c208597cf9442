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

/// How long a batch's tasks take, in seconds.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(
    tag = "kind",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
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
    /// The length of the task whose hash is `h`.
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
        .max(0.0)
    }

    /// The mean length.
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

    #[test]
    fn a_task_always_takes_the_same_time() {
        let d = Durations::Exponential { mean_seconds: 2.0 };
        assert_eq!(d.sample(task_hash(1, 2, 3)), d.sample(task_hash(1, 2, 3)));
        assert_ne!(d.sample(task_hash(1, 2, 3)), d.sample(task_hash(1, 2, 4)));
    }
}
