//! A timer thread with sub-millisecond precision for `sleep` tasks.
//!
//! Tokio's timer wheel rounds every deadline up to the next millisecond tick, so a
//! 100 ms sleep takes 100-101.x ms; over a chain of short sleeps that alone costs
//! more than 1% efficiency. One thread waiting on a condition variable with the
//! earliest deadline wakes within tens of microseconds instead, and serves any
//! number of sleeping tasks (no thread per task).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::oneshot;

struct Entry {
    deadline: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

#[derive(Default)]
struct Shared {
    timers: Mutex<Timers>,
    changed: Condvar,
}

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let shared = Arc::new(Shared::default());
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("cloudkon-timer".into())
            .spawn(move || run(&for_thread))
            .expect("spawn timer thread");
        shared
    })
}

fn run(shared: &Shared) {
    let mut timers = shared.timers.lock().expect("timer lock");
    loop {
        let now = Instant::now();
        match timers.heap.peek() {
            None => timers = shared.changed.wait(timers).expect("timer lock"),
            Some(Reverse(first)) if first.deadline <= now => {
                let Some(Reverse(entry)) = timers.heap.pop() else {
                    continue;
                };
                // The sleeper may be gone (its task timed out or was abandoned).
                let _ = entry.wake.send(());
            }
            Some(Reverse(first)) => {
                let wait = first.deadline - now;
                timers = shared
                    .changed
                    .wait_timeout(timers, wait)
                    .expect("timer lock")
                    .0;
            }
        }
    }
}

/// Completes at `deadline`, give or take the scheduler's wake-up latency.
pub async fn sleep_until(deadline: Instant) {
    if deadline <= Instant::now() {
        return;
    }
    let (wake, woken) = oneshot::channel();
    let shared = shared();
    {
        let mut timers = shared.timers.lock().expect("timer lock");
        timers.seq += 1;
        let seq = timers.seq;
        let earliest = timers
            .heap
            .peek()
            .is_none_or(|Reverse(first)| deadline < first.deadline);
        timers.heap.push(Reverse(Entry {
            deadline,
            seq,
            wake,
        }));
        if earliest {
            shared.changed.notify_one();
        }
    }
    let _ = woken.await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn never_wakes_early_and_in_deadline_order() {
        // Sleepers registered latest deadline first, the earliest last. A
        // round counts only if all four were registered before the earliest
        // deadline: a busy machine that got there first decides the order.
        for _ in 0..50 {
            let first = Instant::now() + Duration::from_millis(50);
            let woke = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for ms in [300u64, 100, 200, 0] {
                let woke = woke.clone();
                tasks.push(tokio::spawn(async move {
                    let deadline = first + Duration::from_millis(ms);
                    let mut sleep = std::pin::pin!(sleep_until(deadline));
                    // The first poll registers it, or finds its deadline past.
                    let past = tokio::time::timeout(Duration::ZERO, &mut sleep)
                        .await
                        .is_ok();
                    let registered = Instant::now();
                    if !past {
                        sleep.await;
                    }
                    assert!(Instant::now() >= deadline, "woke early");
                    woke.lock().unwrap().push(ms);
                    registered
                }));
            }
            let mut in_time = true;
            for t in tasks {
                in_time &= t.await.unwrap() < first;
            }
            if in_time {
                assert_eq!(*woke.lock().unwrap(), vec![0, 100, 200, 300]);
                return;
            }
        }
        panic!("never registered four sleepers before the first deadline");
    }

    #[tokio::test]
    async fn a_dropped_sleeper_does_not_stop_the_others() {
        // A sleeper registered, then dropped before its deadline (its task
        // timed out); again if a busy machine got to its deadline first.
        // (Bounded: a sleeper that never waits would loop here for ever.)
        let dropped = (0..50)
            .map(|_| Instant::now() + Duration::from_millis(5))
            .find(|&at| futures_util::FutureExt::now_or_never(sleep_until(at)).is_none())
            .expect("a sleeper 5 ms out waits");
        let live = dropped + Duration::from_millis(15);
        sleep_until(live).await;
        assert!(Instant::now() >= live);
    }
}
