//! The bundles a worker holds, for heartbeats and the idle check.

use std::collections::HashMap;
use std::sync::Mutex;

use cloudkon_core::queue::Receipt;

#[derive(Debug, Default)]
pub struct InFlight {
    held: Mutex<HashMap<String, Option<Receipt>>>,
}

impl InFlight {
    pub fn insert(&self, key: String, receipt: Option<Receipt>) {
        self.held
            .lock()
            .expect("inflight lock")
            .insert(key, receipt);
    }

    pub fn remove(&self, key: &str) {
        self.held.lock().expect("inflight lock").remove(key);
    }

    pub fn len(&self) -> usize {
        self.held.lock().expect("inflight lock").len()
    }

    pub fn snapshot(&self) -> Vec<(String, Option<Receipt>)> {
        let held = self.held.lock().expect("inflight lock");
        held.iter().map(|(k, r)| (k.clone(), r.clone())).collect()
    }
}
