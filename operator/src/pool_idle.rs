//! Since when each pool has been idle with work outstanding: its queue
//! holding no message at all (waiting, in flight or delayed) and none of its
//! workers running a task, while its batches count tasks sent and not
//! finished. Those tasks are then nowhere: the queue was purged or deleted,
//! or their messages expired. The pool's reconciler tells what it sees; a
//! batch's collector asks (see `batch_runner`), and reports such tasks
//! failed after `Settings::missing_after` instead of waiting for ever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A pool's last look older than this says nothing: its reconciler may have
/// stopped looking (the pool deleted, invalid, or its queue unreadable).
pub const FRESH: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Seen {
    at: Instant,
    idle_since: Option<Instant>,
}

/// Per pool (by `shares::pool_key`).
#[derive(Debug, Default)]
pub struct PoolIdle {
    seen: Mutex<HashMap<String, Seen>>,
}

impl PoolIdle {
    /// The pool's reconciler looked: `idle` as the module says.
    pub fn saw(&self, pool: &str, idle: bool) {
        self.saw_at(pool, idle, Instant::now());
    }

    pub fn saw_at(&self, pool: &str, idle: bool, now: Instant) {
        let mut seen = self.seen.lock().expect("pool idle lock");
        let since = seen.get(pool).and_then(|s| s.idle_since);
        seen.insert(
            pool.to_string(),
            Seen {
                at: now,
                idle_since: idle.then(|| since.unwrap_or(now)),
            },
        );
    }

    /// How long the pool has been idle, as last seen; zero when it is not,
    /// or when nobody looked within [`FRESH`].
    pub fn idle_for(&self, pool: &str) -> Duration {
        self.idle_for_at(pool, Instant::now())
    }

    pub fn idle_for_at(&self, pool: &str, now: Instant) -> Duration {
        let seen = self.seen.lock().expect("pool idle lock");
        match seen.get(pool) {
            Some(s) if now.saturating_duration_since(s.at) <= FRESH => s
                .idle_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_from_the_first_idle_look_and_only_while_looks_are_fresh() {
        let idle = PoolIdle::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(idle.idle_for_at("ns/p", t0), Duration::ZERO, "never seen");

        idle.saw_at("ns/p", true, at(0));
        idle.saw_at("ns/p", true, at(10));
        assert_eq!(idle.idle_for_at("ns/p", at(20)), Duration::from_secs(20));
        assert_eq!(idle.idle_for_at("ns/q", at(20)), Duration::ZERO, "per pool");

        // A busy look starts it over.
        idle.saw_at("ns/p", false, at(25));
        assert_eq!(idle.idle_for_at("ns/p", at(26)), Duration::ZERO);
        idle.saw_at("ns/p", true, at(30));
        assert_eq!(idle.idle_for_at("ns/p", at(40)), Duration::from_secs(10));

        // Nobody looked for longer than FRESH: not known to be idle.
        assert_eq!(
            idle.idle_for_at("ns/p", at(30) + FRESH + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
