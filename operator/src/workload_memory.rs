//! What workload files may take of the operator's memory. A batch's file
//! (ConfigMap or S3) is read whole and held while its runner lives: one file
//! is capped by `--max-workload-bytes`, all of them together by
//! `--workload-memory-bytes`, so that many large batches applied at once wait
//! their turn (Pending, with an Event) instead of taking the operator down.

use std::sync::{Arc, Mutex};

/// The operator's budget for workload files.
#[derive(Debug)]
pub struct WorkloadMemory {
    limit: u64,
    held: Mutex<u64>,
}

/// Bytes taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct Held {
    memory: Arc<WorkloadMemory>,
    bytes: u64,
}

impl WorkloadMemory {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(0),
        })
    }

    /// As much of `want` as is free, or `None` when nothing is.
    pub fn take_up_to(self: &Arc<Self>, want: u64) -> Option<Held> {
        let mut held = self.held.lock().expect("workload memory lock");
        let bytes = want.min(self.limit - *held);
        if bytes == 0 && want > 0 {
            return None;
        }
        *held += bytes;
        Some(Held {
            memory: Arc::clone(self),
            bytes,
        })
    }

    /// Bytes held now, by every batch.
    pub fn held(&self) -> u64 {
        *self.held.lock().expect("workload memory lock")
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl Held {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back what is over `bytes` (the file turned out smaller).
    pub fn shrink_to(&mut self, bytes: u64) {
        let give = self.bytes.saturating_sub(bytes);
        *self.memory.held.lock().expect("workload memory lock") -= give;
        self.bytes -= give;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        *self.memory.held.lock().expect("workload memory lock") -= self.bytes;
    }
}

/// A workload file's bytes with their share of the budget: both go when the
/// last runner's copy does.
#[derive(Debug)]
pub struct Workload {
    bytes: Vec<u8>,
    _held: Held,
}

impl Workload {
    /// `bytes` counted against `held` (shrunk to their length).
    pub fn new(bytes: Vec<u8>, mut held: Held) -> Self {
        held.shrink_to(bytes.len() as u64);
        Self { bytes, _held: held }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_share_the_budget_and_give_it_back() {
        let memory = WorkloadMemory::new(100);
        let mut a = memory.take_up_to(60).unwrap();
        assert_eq!(a.bytes(), 60);
        // Only what is left.
        let b = memory.take_up_to(60).unwrap();
        assert_eq!((b.bytes(), memory.held()), (40, 100));
        assert!(memory.take_up_to(1).is_none(), "nothing is free");
        a.shrink_to(10);
        assert_eq!(memory.held(), 50);
        let w = Workload::new(vec![0; 5], a);
        assert_eq!(memory.held(), 45);
        drop(b);
        assert_eq!(memory.held(), 5);
        drop(w);
        assert_eq!(memory.held(), 0);
        // Nothing wanted is always granted.
        assert_eq!(memory.take_up_to(0).unwrap().bytes(), 0);
    }
}
