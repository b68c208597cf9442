//! The bundles a worker holds, for heartbeats, the idle check, the busy gauge
//! and how much to fetch next.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use cloudkon_core::ledger::BundleProgress;
use cloudkon_core::queue::Receipt;

use super::WorkerStats;
use super::cancels::batches_to_watch;
use super::hold::{TypicalTask, tasks_to_hold};
use crate::pool::UnitControl;

/// A bundle's batch, from its claim key (`batch#first`: core's `claim_key`).
pub(super) fn batch_of(key: &str) -> Option<&str> {
    key.rsplit_once('#').map(|(batch, _)| batch)
}

/// A held bundle.
#[derive(Debug)]
struct Held {
    receipt: Option<Receipt>,
    /// The claim's owner token; `None`: not claimed.
    owner: Option<String>,
    /// Its completion is recorded: no more heartbeats (the ledger row is done,
    /// and a renewal would fail as if the lease were lost).
    completed: bool,
    /// Another worker took it over (see [`InFlight::lose`]).
    lost: bool,
    /// Positions whose results are sent (or were, by an earlier holder):
    /// written to the ledger at each renewal.
    progress: BundleProgress,
    /// Stopped when its batch is cancelled (the tasks not started are
    /// left); how many have not started.
    control: Arc<UnitControl>,
    /// Later deliveries of the same bundle, kept hidden until this claim
    /// ends (see [`InFlight::park`]).
    parked: Vec<Receipt>,
    /// About when its lease was last set: at its claim, then at each
    /// renewal that succeeded (see [`InFlight::snapshot`]).
    leased_at: tokio::time::Instant,
}

/// What a heartbeat renews.
pub struct Renewal {
    pub key: String,
    pub receipt: Option<Receipt>,
    pub owner: Option<String>,
    pub progress: BundleProgress,
}

#[derive(Debug)]
pub struct InFlight {
    held: Mutex<HashMap<String, Held>>,
    /// Tasks held and not finished: the fetcher receives more only when the
    /// slots are about to run out of them.
    tasks: AtomicUsize,
    /// How long this worker's tasks typically take: how far ahead it holds.
    typical: Mutex<TypicalTask>,
    stats: Arc<WorkerStats>,
}

impl InFlight {
    pub fn new(stats: Arc<WorkerStats>) -> Self {
        Self {
            held: Mutex::default(),
            tasks: AtomicUsize::new(0),
            typical: Mutex::default(),
            stats,
        }
    }

    pub fn insert(
        &self,
        key: String,
        receipt: Option<Receipt>,
        owner: Option<String>,
        progress: BundleProgress,
        control: Arc<UnitControl>,
    ) {
        let mut held = self.held.lock().expect("inflight lock");
        held.insert(
            key,
            Held {
                receipt,
                owner,
                completed: false,
                lost: false,
                progress,
                control,
                parked: Vec::new(),
                leased_at: tokio::time::Instant::now(),
            },
        );
        self.stats.held.store(held.len() as u64, Ordering::Relaxed);
    }

    /// Lets the bundle go; the deliveries parked on it, to be made visible.
    pub fn remove(&self, key: &str) -> Vec<Receipt> {
        let mut held = self.held.lock().expect("inflight lock");
        let parked = held.remove(key).map(|e| e.parked).unwrap_or_default();
        self.stats.held.store(held.len() as u64, Ordering::Relaxed);
        parked
    }

    /// Keeps `receipt`, another delivery of the bundle `key` held here, until
    /// this claim of it ends: one claim per bundle here, and hidden meanwhile
    /// by the heartbeats rather than for a while, or every time it came back
    /// here it cost a receive, on its way to the dead-letter queue unrun.
    /// False if the bundle is no longer held.
    pub fn park(&self, key: &str, receipt: Receipt) -> bool {
        match self.held.lock().expect("inflight lock").get_mut(key) {
            Some(entry) => {
                entry.parked.push(receipt);
                true
            }
            None => false,
        }
    }

    /// Whether `receipt` is still parked on the bundle `key`.
    pub fn is_parked(&self, key: &str, receipt: &Receipt) -> bool {
        self.held
            .lock()
            .expect("inflight lock")
            .get(key)
            .is_some_and(|e| e.parked.contains(receipt))
    }

    /// The deliveries parked on the bundles held, with their bundles' keys.
    pub fn parked(&self) -> Vec<(String, Receipt)> {
        let held = self.held.lock().expect("inflight lock");
        held.iter()
            .flat_map(|(key, e)| e.parked.iter().map(move |r| (key.clone(), r.clone())))
            .collect()
    }

    /// The bundle's completion is recorded, or it is being given back:
    /// heartbeats stop for it.
    pub fn completed(&self, key: &str) {
        if let Some(entry) = self.held.lock().expect("inflight lock").get_mut(key) {
            entry.completed = true;
        }
    }

    /// Its lease was found lost (another worker took the bundle over): no
    /// more heartbeats, and its tasks not started are left to the new holder,
    /// which runs them. False if it is not held, or its completion was
    /// recorded meanwhile (a renewal after it is refused the same way).
    pub fn lose(&self, key: &str) -> bool {
        let mut held = self.held.lock().expect("inflight lock");
        let Some(entry) = held.get_mut(key).filter(|e| !e.completed) else {
            return false;
        };
        entry.completed = true;
        entry.lost = true;
        entry.control.stop();
        true
    }

    /// Its lease was lost: its claim and its message are the new holder's.
    pub fn lost(&self, key: &str) -> bool {
        self.held
            .lock()
            .expect("inflight lock")
            .get(key)
            .is_some_and(|e| e.lost)
    }

    /// Records positions whose results are sent.
    pub fn sent(&self, key: &str, positions: impl IntoIterator<Item = usize>) {
        if let Some(entry) = self.held.lock().expect("inflight lock").get_mut(key) {
            for p in positions {
                entry.progress.insert(p);
            }
        }
    }

    /// The bundle's progress so far.
    pub fn progress(&self, key: &str) -> BundleProgress {
        self.held
            .lock()
            .expect("inflight lock")
            .get(key)
            .map(|e| e.progress.clone())
            .unwrap_or_default()
    }

    /// Held in any state: running, given back or lost but with tasks still
    /// running.
    pub fn holds(&self, key: &str) -> bool {
        self.held.lock().expect("inflight lock").contains_key(key)
    }

    /// Held and not completed: its lease must be kept.
    pub fn needs_heartbeat(&self, key: &str) -> bool {
        self.held
            .lock()
            .expect("inflight lock")
            .get(key)
            .is_some_and(|e| !e.completed)
    }

    pub fn len(&self) -> usize {
        self.held.lock().expect("inflight lock").len()
    }

    /// The bundles whose leases need renewing, the lease that runs out first
    /// first: a round of renewals stops at its first failure, and in the
    /// map's order, which holds while the same bundles are held, a partly
    /// throttled ledger left the same ones unrenewed round after round until
    /// their leases ran out.
    pub fn snapshot(&self) -> Vec<Renewal> {
        let held = self.held.lock().expect("inflight lock");
        let mut due: Vec<(&String, &Held)> = held.iter().filter(|(_, e)| !e.completed).collect();
        due.sort_by_key(|(key, e)| (e.leased_at, *key));
        due.into_iter()
            .map(|(key, e)| Renewal {
                key: key.clone(),
                receipt: e.receipt.clone(),
                owner: e.owner.clone(),
                progress: e.progress.clone(),
            })
            .collect()
    }

    /// The lease of the bundle `key` was renewed by a request sent `at`.
    pub fn renewed(&self, key: &str, at: tokio::time::Instant) {
        if let Some(e) = self.held.lock().expect("inflight lock").get_mut(key) {
            e.leased_at = e.leased_at.max(at);
        }
    }

    /// The batches whose cancel is worth asking about: see
    /// [`batches_to_watch`].
    pub fn batches_to_watch(&self) -> Vec<String> {
        let held = self.held.lock().expect("inflight lock");
        batches_to_watch(
            held.iter()
                .filter_map(|(key, e)| Some((batch_of(key)?.to_string(), e.control.waiting()))),
        )
    }

    /// Leaves the unstarted tasks of `batch`'s bundles (it was cancelled);
    /// returns how many bundles were stopped.
    pub fn stop_batch(&self, batch: &str) -> usize {
        let held = self.held.lock().expect("inflight lock");
        let mut stopped = 0;
        for (key, entry) in held.iter() {
            if batch_of(key) == Some(batch) && entry.control.stop() {
                stopped += 1;
            }
        }
        stopped
    }

    /// Tasks held and not yet finished.
    pub fn tasks(&self) -> usize {
        self.tasks.load(Ordering::Relaxed)
    }

    pub fn add_tasks(&self, n: usize) {
        self.tasks.fetch_add(n, Ordering::Relaxed);
    }

    pub fn finish_tasks(&self, n: usize) {
        // Saturating: a give-back counts what never started.
        let _ = self
            .tasks
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(n))
            });
    }

    /// Tasks finished after running this long (one lock for a results
    /// event, which may carry thousands).
    pub fn observe(&self, took: impl IntoIterator<Item = std::time::Duration>) {
        let mut typical = self.typical.lock().expect("typical lock");
        for t in took {
            typical.observe(t);
        }
    }

    /// Tasks received declare this length.
    pub fn declared(&self, length: std::time::Duration) {
        self.typical.lock().expect("typical lock").declared(length);
    }

    /// How many tasks to hold with `slots` slots (see [`tasks_to_hold`]).
    pub fn hold(&self, slots: usize) -> usize {
        tasks_to_hold(slots, self.typical.lock().expect("typical lock").get())
    }
}
