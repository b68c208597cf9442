//! Growing delays between retries of one object's failing cleanup: 1 s,
//! 2 s, 4 s... up to 5 minutes, so that a finalizer that cannot finish (an
//! outage, a denied call) neither hammers AWS nor hides; forgotten on success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(300);

/// The delay before the next attempt after `failures` failures in a row.
pub fn delay_after(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    FIRST.saturating_mul(factor).min(MAX)
}

/// Failures in a row, per object (by uid).
#[derive(Debug, Default)]
pub struct RetryDelays {
    failures: Mutex<HashMap<String, u32>>,
}

impl RetryDelays {
    /// Counts a failure of `key`; returns how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("retry delays lock");
        let n = failures.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        delay_after(*n)
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("retry delays lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=11).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(delay_after(u32::MAX), MAX);
    }

    #[test]
    fn a_success_starts_the_count_again() {
        let delays = RetryDelays::default();
        assert_eq!(delays.failed("a"), Duration::from_secs(1));
        assert_eq!(delays.failed("a"), Duration::from_secs(2));
        assert_eq!(delays.failed("b"), Duration::from_secs(1));
        delays.succeeded("a");
        assert_eq!(delays.failed("a"), Duration::from_secs(1));
    }
}
