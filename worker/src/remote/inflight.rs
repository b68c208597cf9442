//! The bundles a worker holds, for heartbeats, the idle check and the busy gauge.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cloudkon_core::queue::Receipt;

use super::WorkerStats;

#[derive(Debug)]
pub struct InFlight {
    /// Claim key → the delivery's receipt and the claim's owner token.
    held: Mutex<HashMap<String, (Option<Receipt>, String)>>,
    stats: Arc<WorkerStats>,
}

impl InFlight {
    pub fn new(stats: Arc<WorkerStats>) -> Self {
        Self {
            held: Mutex::default(),
            stats,
        }
    }

    pub fn insert(&self, key: String, receipt: Option<Receipt>, owner: String) {
        let mut held = self.held.lock().expect("inflight lock");
        held.insert(key, (receipt, owner));
        self.stats.held.store(held.len() as u64, Ordering::Relaxed);
    }

    pub fn remove(&self, key: &str) {
        let mut held = self.held.lock().expect("inflight lock");
        held.remove(key);
        self.stats.held.store(held.len() as u64, Ordering::Relaxed);
    }

    pub fn contains(&self, key: &str) -> bool {
        self.held.lock().expect("inflight lock").contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.held.lock().expect("inflight lock").len()
    }

    pub fn snapshot(&self) -> Vec<(String, Option<Receipt>, String)> {
        let held = self.held.lock().expect("inflight lock");
        held.iter()
            .map(|(k, (r, o))| (k.clone(), r.clone(), o.clone()))
            .collect()
    }
}
