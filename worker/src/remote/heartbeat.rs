//! When `cloudkon-worker` writes its heartbeat row (`<table>-workers`): what
//! the pool reconciler reads to remove idle workers first, and what
//! `cloudkon workers` lists. Each row is a DynamoDB write, which at 1,000
//! workers every 10 s came to 0.037 requests per task (simulated): the row
//! now goes at once when the worker turns idle or busy, which is what a
//! scale-down needs to know, and otherwise every `HEARTBEAT_ROW_EVERY`.

use std::time::Duration;

/// The longest a row goes unwritten while the worker lives (its task count
/// and busy slots are at most this old). The simulator counts these too.
pub const HEARTBEAT_ROW_EVERY: Duration = Duration::from_secs(30);

/// How often the worker looks whether it turned idle or busy (no request).
pub const HEARTBEAT_LOOK_EVERY: Duration = Duration::from_secs(1);

/// Whether a row is due: never written, the worker turned idle or busy since
/// the last one (`last`: how long ago, and busy then), or the period passed.
pub fn heartbeat_due(last: Option<(Duration, bool)>, busy: bool) -> bool {
    match last {
        None => true,
        Some((ago, was_busy)) => was_busy != busy || ago >= HEARTBEAT_ROW_EVERY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_goes_first_on_a_change_between_idle_and_busy_else_every_period() {
        let s = Duration::from_secs;
        assert!(heartbeat_due(None, false), "the first row");
        assert!(!heartbeat_due(Some((s(1), true)), true), "still busy");
        assert!(!heartbeat_due(Some((s(29), false)), false), "still idle");
        assert!(heartbeat_due(Some((s(1), true)), false), "turned idle");
        assert!(heartbeat_due(Some((s(1), false)), true), "turned busy");
        assert!(heartbeat_due(Some((s(30), true)), true), "the period");
    }
}
