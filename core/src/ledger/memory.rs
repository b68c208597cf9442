//! An in-process ledger, for tests and single-process use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{BatchMarks, BundleProgress, Claim, DedupLedger, LedgerError};

#[derive(Debug)]
enum Entry {
    Running {
        owner: String,
        until: Instant,
        attempt: u32,
        done: BundleProgress,
    },
    Done {
        results: Vec<u8>,
        /// Who completed it (none: a cancel mark): its retried completion
        /// still succeeds.
        owner: Option<String>,
    },
}

#[derive(Debug, Default)]
pub struct MemoryLedger {
    entries: Mutex<HashMap<String, Entry>>,
    /// Batch → its lane mark.
    lane_marks: Mutex<HashMap<String, u64>>,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }
}

impl DedupLedger for MemoryLedger {
    async fn cancel_batch(&self, batch: &str) -> Result<(), LedgerError> {
        let key = super::cancel_key(batch);
        self.entries.lock().expect("ledger lock").insert(
            key,
            Entry::Done {
                results: Vec::new(),
                owner: None,
            },
        );
        Ok(())
    }

    async fn batch_marks(&self, batch: &str) -> Result<BatchMarks, LedgerError> {
        let key = super::cancel_key(batch);
        Ok(BatchMarks {
            cancelled: self.entries.lock().expect("ledger lock").contains_key(&key),
            lane_at: self
                .lane_marks
                .lock()
                .expect("ledger lock")
                .get(batch)
                .copied(),
        })
    }

    async fn mark_lane(&self, batch: &str, at_ms: u64) -> Result<(), LedgerError> {
        self.lane_marks
            .lock()
            .expect("ledger lock")
            .insert(batch.to_string(), at_ms);
        Ok(())
    }

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim, LedgerError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("ledger lock");
        let (attempt, done) = match entries.get(key) {
            None => (1, BundleProgress::new()),
            Some(Entry::Done { results, .. }) => {
                return Ok(Claim::Done {
                    results: results.clone(),
                });
            }
            // Its holder asking again (the answer to its claim was lost):
            // still its own, the same attempt.
            Some(Entry::Running {
                owner: o,
                attempt,
                done,
                ..
            }) if o == owner => (*attempt, done.clone()),
            Some(Entry::Running { until, .. }) if *until > now => {
                return Ok(Claim::Held {
                    remaining: *until - now,
                });
            }
            Some(Entry::Running { attempt, done, .. }) => (attempt + 1, done.clone()),
        };
        entries.insert(
            key.to_string(),
            Entry::Running {
                owner: owner.to_string(),
                until: now + lease,
                attempt,
                done: done.clone(),
            },
        );
        Ok(Claim::Granted { attempt, done })
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        progress: &BundleProgress,
    ) -> Result<bool, LedgerError> {
        let mut entries = self.entries.lock().expect("ledger lock");
        match entries.get_mut(key) {
            Some(Entry::Running {
                owner: o,
                until,
                done,
                ..
            }) if o == owner => {
                // The holder's progress only grows: what it sends is all of
                // it, unless a later renewal landed first (this one was late),
                // which holds more and a later lease.
                if progress.len() >= done.len() {
                    *until = Instant::now() + lease;
                    *done = progress.clone();
                }
                Ok(true)
            }
            Some(Entry::Done { owner: Some(o), .. }) => Ok(o == owner),
            _ => Ok(false),
        }
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        results: Vec<u8>,
    ) -> Result<bool, LedgerError> {
        let mut entries = self.entries.lock().expect("ledger lock");
        match entries.get(key) {
            Some(Entry::Running { owner: o, .. }) if o == owner => {
                entries.insert(
                    key.to_string(),
                    Entry::Done {
                        results,
                        owner: Some(owner.to_string()),
                    },
                );
                Ok(true)
            }
            // A retried completion.
            Some(Entry::Done { owner: Some(o), .. }) => Ok(o == owner),
            _ => Ok(false),
        }
    }

    async fn release(
        &self,
        key: &str,
        owner: &str,
        progress: &BundleProgress,
    ) -> Result<(), LedgerError> {
        let mut entries = self.entries.lock().expect("ledger lock");
        if let Some(Entry::Running {
            owner: o,
            until,
            attempt,
            done,
        }) = entries.get_mut(key)
            && o == owner
        {
            // Expired now, one attempt back: the next claim takes it over at
            // once as the same attempt (a give-back is not a failure).
            *until = Instant::now();
            *attempt = attempt.saturating_sub(1);
            // As DynamoDB's: no progress given, the stored one stays.
            if !progress.is_empty() {
                *done = progress.clone();
            }
            *o = super::RELEASED_OWNER.to_string();
        }
        Ok(())
    }
}

// Tested by core/tests/ledger_suite, the cases every ledger passes.
