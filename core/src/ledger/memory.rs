//! An in-process ledger, for tests and single-process use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{BundleProgress, Claim, DedupLedger, LedgerError};

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
    },
}

#[derive(Debug, Default)]
pub struct MemoryLedger {
    entries: Mutex<HashMap<String, Entry>>,
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
            },
        );
        Ok(())
    }

    async fn is_cancelled(&self, batch: &str) -> Result<bool, LedgerError> {
        let key = super::cancel_key(batch);
        Ok(self.entries.lock().expect("ledger lock").contains_key(&key))
    }

    async fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim, LedgerError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("ledger lock");
        let (attempt, done) = match entries.get(key) {
            None => (1, BundleProgress::new()),
            Some(Entry::Done { results }) => {
                return Ok(Claim::Done {
                    results: results.clone(),
                });
            }
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
                *until = Instant::now() + lease;
                done.union(progress);
                Ok(true)
            }
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
                entries.insert(key.to_string(), Entry::Done { results });
                Ok(true)
            }
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
            done.union(progress);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn first_claim_wins_and_others_see_it_held() {
        let l = MemoryLedger::new();
        assert_eq!(
            l.claim("k", "a", LEASE).await.unwrap(),
            Claim::Granted {
                attempt: 1,
                done: BundleProgress::new()
            }
        );
        assert!(matches!(
            l.claim("k", "b", LEASE).await.unwrap(),
            Claim::Held { .. }
        ));
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_the_next_attempt() {
        let l = MemoryLedger::new();
        l.claim("k", "a", Duration::ZERO).await.unwrap();
        assert_eq!(
            l.claim("k", "b", LEASE).await.unwrap(),
            Claim::Granted {
                attempt: 2,
                done: BundleProgress::new()
            }
        );
        // The old holder lost it: it can neither renew nor complete.
        assert!(
            !l.renew("k", "a", LEASE, &BundleProgress::new())
                .await
                .unwrap()
        );
        assert!(!l.complete("k", "a", b"late".to_vec()).await.unwrap());
        assert!(l.complete("k", "b", b"r".to_vec()).await.unwrap());
    }

    #[tokio::test]
    async fn done_returns_the_stored_results() {
        let l = MemoryLedger::new();
        l.claim("k", "a", LEASE).await.unwrap();
        assert!(
            l.renew("k", "a", LEASE, &BundleProgress::new())
                .await
                .unwrap()
        );
        assert!(l.complete("k", "a", b"results".to_vec()).await.unwrap());
        assert_eq!(
            l.claim("k", "b", LEASE).await.unwrap(),
            Claim::Done {
                results: b"results".to_vec()
            }
        );
    }

    fn progress(positions: &[usize]) -> BundleProgress {
        let mut p = BundleProgress::new();
        for &i in positions {
            p.insert(i);
        }
        p
    }

    #[tokio::test]
    async fn release_lets_the_next_claim_in_at_once_as_the_same_attempt() {
        let l = MemoryLedger::new();
        l.claim("k", "a", LEASE).await.unwrap();
        l.release("k", "b", &progress(&[9])).await.unwrap(); // not the owner: no effect
        assert!(matches!(
            l.claim("k", "c", LEASE).await.unwrap(),
            Claim::Held { .. }
        ));
        l.release("k", "a", &progress(&[0, 2])).await.unwrap();
        assert_eq!(
            l.claim("k", "c", LEASE).await.unwrap(),
            Claim::Granted {
                attempt: 1,
                done: progress(&[0, 2])
            }
        );
        // Give-backs (scale-downs, rolling updates) never use up attempts.
        let mut holder = "c".to_string();
        for n in 0..3 {
            l.release("k", &holder, &BundleProgress::new())
                .await
                .unwrap();
            holder = format!("w{n}");
            assert!(matches!(
                l.claim("k", &holder, LEASE).await.unwrap(),
                Claim::Granted { attempt: 1, .. }
            ));
        }
    }

    #[tokio::test]
    async fn a_take_over_finds_the_progress_of_the_last_renewal() {
        let l = MemoryLedger::new();
        l.claim("k", "a", Duration::ZERO).await.unwrap();
        assert!(
            l.renew("k", "a", Duration::ZERO, &progress(&[1]))
                .await
                .unwrap()
        );
        assert!(
            l.renew("k", "a", Duration::ZERO, &progress(&[3]))
                .await
                .unwrap()
        );
        assert_eq!(
            l.claim("k", "b", LEASE).await.unwrap(),
            Claim::Granted {
                attempt: 2,
                done: progress(&[1, 3])
            }
        );
    }
}
