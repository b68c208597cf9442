//! The bundles a worker holds, for heartbeats, the idle check and the busy gauge.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cloudkon_core::queue::Receipt;

use super::WorkerStats;

/// A held bundle: its receipt, claim owner token (`None`: not claimed), and
/// whether it completed.
type Held = (Option<Receipt>, Option<String>, bool);

#[derive(Debug)]
pub struct InFlight {
    /// Claim key → the delivery's receipt, the claim's owner token, and
    /// whether its completion is recorded (no more heartbeats: the ledger row
    /// is done, and a renewal would fail as if the lease were lost).
    held: Mutex<HashMap<String, Held>>,
    stats: Arc<WorkerStats>,
}

impl InFlight {
    pub fn new(stats: Arc<WorkerStats>) -> Self {
        Self {
            held: Mutex::default(),
            stats,
        }
    }

    pub fn insert(&self, key: String, receipt: Option<Receipt>, owner: Option<String>) {
        let mut held = self.held.lock().expect("inflight lock");
        held.insert(key, (receipt, owner, false));
        self.stats.held.store(held.len() as u64, Ordering::Relaxed);
    }

    pub fn remove(&self, key: &str) {
        let mut held = self.held.lock().expect("inflight lock");
        held.remove(key);
        self.stats.held.store(held.len() as u64, Ordering::Relaxed);
    }

    /// The bundle's completion is recorded: heartbeats stop for it.
    pub fn completed(&self, key: &str) {
        if let Some(entry) = self.held.lock().expect("inflight lock").get_mut(key) {
            entry.2 = true;
        }
    }

    /// Held and not completed: its lease must be kept.
    pub fn needs_heartbeat(&self, key: &str) -> bool {
        self.held
            .lock()
            .expect("inflight lock")
            .get(key)
            .is_some_and(|e| !e.2)
    }

    pub fn len(&self) -> usize {
        self.held.lock().expect("inflight lock").len()
    }

    /// The bundles whose leases need renewing.
    pub fn snapshot(&self) -> Vec<(String, Option<Receipt>, Option<String>)> {
        let held = self.held.lock().expect("inflight lock");
        held.iter()
            .filter(|(_, (_, _, completed))| !completed)
            .map(|(k, (r, o, _))| (k.clone(), r.clone(), o.clone()))
            .collect()
    }
}
