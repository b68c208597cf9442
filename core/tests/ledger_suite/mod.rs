//! What every `DedupLedger` does, whatever its backend: run against the
//! in-memory ledger (`memory_ledger.rs`) and DynamoDB Local (`aws_ledger.rs`),
//! so that the two cannot drift apart. Each case takes a fresh ledger.

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::ledger::{BatchMarks, BundleProgress, Claim, DedupLedger};

pub const LEASE: Duration = Duration::from_secs(30);

pub fn progress(positions: &[usize]) -> BundleProgress {
    let mut p = BundleProgress::new();
    for &i in positions {
        p.insert(i);
    }
    p
}

pub fn granted(attempt: u32, done: &[usize]) -> Claim {
    Claim::Granted {
        attempt,
        done: progress(done),
    }
}

fn none() -> BundleProgress {
    BundleProgress::new()
}

/// Lets a lease of `Duration::ZERO` expire: lease times are whole
/// milliseconds in DynamoDB, so "expired" is strict one millisecond on.
async fn past_a_zero_lease() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

pub async fn first_claim_wins_and_others_see_it_held<L: DedupLedger>(l: &L) {
    assert_eq!(l.claim("k", "a", LEASE).await.unwrap(), granted(1, &[]));
    match l.claim("k", "b", LEASE).await.unwrap() {
        Claim::Held { remaining } => assert!(
            remaining > LEASE - Duration::from_secs(10) && remaining <= LEASE,
            "{remaining:?}"
        ),
        other => panic!("{other:?}"),
    }
    // The holder claiming again (its earlier answer lost) still holds it.
    assert_eq!(l.claim("k", "a", LEASE).await.unwrap(), granted(1, &[]));
}

pub async fn an_expired_lease_is_taken_over_with_the_next_attempt<L: DedupLedger>(l: &L) {
    l.claim("k", "a", Duration::ZERO).await.unwrap();
    past_a_zero_lease().await;
    assert_eq!(l.claim("k", "b", LEASE).await.unwrap(), granted(2, &[]));
    // The old holder lost it: it can neither renew nor complete.
    assert!(!l.renew("k", "a", LEASE, &none()).await.unwrap());
    assert!(!l.complete("k", "a", b"late".to_vec()).await.unwrap());
    assert!(l.complete("k", "b", b"r".to_vec()).await.unwrap());
    assert_eq!(
        l.claim("k", "c", LEASE).await.unwrap(),
        Claim::Done {
            results: b"r".to_vec()
        }
    );
}

pub async fn done_returns_the_stored_results<L: DedupLedger>(l: &L) {
    l.claim("k", "a", LEASE).await.unwrap();
    assert!(l.renew("k", "a", LEASE, &none()).await.unwrap());
    let results: Vec<u8> = (0..=255).cycle().take(50_000).collect();
    assert!(l.complete("k", "a", results.clone()).await.unwrap());
    // Completing twice (a retried request) still says it is ours and done.
    assert!(l.complete("k", "a", results.clone()).await.unwrap());
    assert!(!l.complete("k", "b", results.clone()).await.unwrap());
    assert_eq!(
        l.claim("k", "b", LEASE).await.unwrap(),
        Claim::Done {
            results: results.clone()
        }
    );
    // Done is final: a renewal racing its holder's completion is no lost
    // lease, and changes nothing; another's is refused.
    assert!(l.renew("k", "a", LEASE, &progress(&[3])).await.unwrap());
    assert!(!l.renew("k", "b", LEASE, &none()).await.unwrap());
    assert_eq!(
        l.claim("k", "c", LEASE).await.unwrap(),
        Claim::Done { results }
    );
}

pub async fn release_lets_the_next_claim_in_at_once_as_the_same_attempt<L: DedupLedger>(l: &L) {
    l.claim("k", "a", LEASE).await.unwrap();
    l.release("k", "b", &progress(&[7])).await.unwrap(); // not the owner: no effect
    assert!(matches!(
        l.claim("k", "c", LEASE).await.unwrap(),
        Claim::Held { .. }
    ));
    l.release("k", "a", &progress(&[0, 2])).await.unwrap();
    assert_eq!(l.claim("k", "c", LEASE).await.unwrap(), granted(1, &[0, 2]));
    // Give-backs (scale-downs, rolling updates) never use up attempts.
    let mut holder = "c".to_string();
    for n in 0..3 {
        l.release("k", &holder, &progress(&[0, 2, n + 3]))
            .await
            .unwrap();
        holder = format!("w{n}");
        match l.claim("k", &holder, LEASE).await.unwrap() {
            Claim::Granted { attempt, done } => {
                assert_eq!(attempt, 1);
                assert_eq!(done, progress(&[0, 2, n + 3]));
            }
            other => panic!("{other:?}"),
        }
    }
    // Releasing what one does not hold, or what does not exist, is fine.
    l.release("k", "a", &none()).await.unwrap();
    l.release("nothing", "a", &none()).await.unwrap();
    assert!(!l.renew("nothing", "a", LEASE, &none()).await.unwrap());
    assert!(!l.complete("nothing", "a", vec![1]).await.unwrap());
}

pub async fn a_renewal_after_a_release_takes_nothing_back<L: DedupLedger>(l: &L) {
    // A worker's renewal round, snapshot taken before it gave the bundle
    // back, lands after: the bundle stays given back, with its progress.
    l.claim("k", "a", LEASE).await.unwrap();
    l.release("k", "a", &progress(&[0, 2])).await.unwrap();
    assert!(!l.renew("k", "a", LEASE, &progress(&[0])).await.unwrap());
    assert_eq!(l.claim("k", "c", LEASE).await.unwrap(), granted(1, &[0, 2]));
}

pub async fn a_late_renewal_takes_no_progress_back<L: DedupLedger>(l: &L) {
    // A renewal that timed out on the worker (or that the SDK sent again)
    // lands after the next one: the holder keeps the bundle, and the
    // ledger its progress, for the next holder to resume from.
    l.claim("k", "a", LEASE).await.unwrap();
    assert!(
        l.renew("k", "a", Duration::ZERO, &progress(&[1, 2]))
            .await
            .unwrap()
    );
    assert!(
        l.renew("k", "a", Duration::ZERO, &progress(&[1]))
            .await
            .unwrap(),
        "a late renewal is no lost lease"
    );
    past_a_zero_lease().await;
    assert_eq!(l.claim("k", "b", LEASE).await.unwrap(), granted(2, &[1, 2]));
    // Given back with more: the next holder's renewals go on from there.
    l.release("k", "b", &progress(&[1, 2, 3])).await.unwrap();
    assert_eq!(
        l.claim("k", "c", LEASE).await.unwrap(),
        granted(2, &[1, 2, 3])
    );
    assert!(
        l.renew("k", "c", Duration::ZERO, &progress(&[1, 2, 3, 4]))
            .await
            .unwrap()
    );
    past_a_zero_lease().await;
    assert_eq!(
        l.claim("k", "d", LEASE).await.unwrap(),
        granted(3, &[1, 2, 3, 4])
    );
}

pub async fn a_take_over_resumes_from_the_last_renewal<L: DedupLedger>(l: &L) {
    l.claim("k", "a", LEASE).await.unwrap();
    assert!(
        l.renew("k", "a", Duration::ZERO, &progress(&[1]))
            .await
            .unwrap()
    );
    // The holder's set only grows: the next renewal carries the earlier too.
    assert!(
        l.renew("k", "a", Duration::ZERO, &progress(&[1, 4095]))
            .await
            .unwrap()
    );
    past_a_zero_lease().await;
    assert_eq!(
        l.claim("k", "b", LEASE).await.unwrap(),
        granted(2, &[1, 4095])
    );
    // Results sent before completion: nothing stored, nothing to resend.
    assert!(l.complete("k", "b", Vec::new()).await.unwrap());
    assert_eq!(
        l.claim("k", "c", LEASE).await.unwrap(),
        Claim::Done { results: vec![] }
    );
}

pub async fn racing_claimers_exactly_one_is_granted<L: DedupLedger>(l: Arc<L>) {
    for round in 0..5 {
        let key = format!("race-{round}");
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let l = l.clone();
                let key = key.clone();
                tokio::spawn(async move { l.claim(&key, &format!("w{i}"), LEASE).await.unwrap() })
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::Granted { attempt, .. } => {
                    assert_eq!(attempt, 1);
                    granted += 1;
                }
                Claim::Held { .. } => {}
                Claim::Done { .. } => panic!("nobody completed {key}"),
            }
        }
        assert_eq!(granted, 1, "{key}");
    }
}

pub async fn a_cancel_mark_is_seen_and_is_no_claim<L: DedupLedger>(l: &L) {
    let batch = "cancelled";
    assert!(!l.batch_marks(batch).await.unwrap().cancelled);
    l.cancel_batch(batch).await.unwrap();
    assert!(l.batch_marks(batch).await.unwrap().cancelled);
    assert!(!l.batch_marks("cancelled-other").await.unwrap().cancelled);
    // The batch's bundles are still claimed as usual (workers check the mark
    // before they claim).
    assert_eq!(
        l.claim(&format!("{batch}#0"), "a", LEASE).await.unwrap(),
        granted(1, &[])
    );
}

pub async fn a_lane_mark_is_read_with_the_cancel_mark_and_cancels_nothing<L: DedupLedger>(l: &L) {
    let batch = "nudged";
    assert_eq!(l.batch_marks(batch).await.unwrap(), BatchMarks::default());
    l.mark_lane(batch, 1_000).await.unwrap();
    l.mark_lane(batch, 2_000).await.unwrap();
    assert_eq!(
        l.batch_marks(batch).await.unwrap(),
        BatchMarks {
            cancelled: false,
            lane_at: Some(2_000)
        }
    );
    assert_eq!(l.batch_marks("nudged-other").await.unwrap().lane_at, None);
    l.cancel_batch(batch).await.unwrap();
    assert_eq!(
        l.batch_marks(batch).await.unwrap(),
        BatchMarks {
            cancelled: true,
            lane_at: Some(2_000)
        }
    );
    // No claim key: the batch's bundles are claimed as usual.
    assert_eq!(
        l.claim(&format!("{batch}#0"), "a", LEASE).await.unwrap(),
        granted(1, &[])
    );
}

/// Every case above as a test, each on a ledger of its own from `$fresh`,
/// handed to `$done` at the end (to drop its tables), with `$attr`s.
#[macro_export]
macro_rules! ledger_suite {
    ($fresh:expr, $done:path; $($attr:meta),*) => {
        ledger_suite!(@case $fresh, $done, [$($attr),*], first_claim_wins_and_others_see_it_held);
        ledger_suite!(@case $fresh, $done, [$($attr),*], an_expired_lease_is_taken_over_with_the_next_attempt);
        ledger_suite!(@case $fresh, $done, [$($attr),*], done_returns_the_stored_results);
        ledger_suite!(@case $fresh, $done, [$($attr),*], release_lets_the_next_claim_in_at_once_as_the_same_attempt);
        ledger_suite!(@case $fresh, $done, [$($attr),*], a_renewal_after_a_release_takes_nothing_back);
        ledger_suite!(@case $fresh, $done, [$($attr),*], a_take_over_resumes_from_the_last_renewal);
        ledger_suite!(@case $fresh, $done, [$($attr),*], a_late_renewal_takes_no_progress_back);
        ledger_suite!(@case $fresh, $done, [$($attr),*], a_cancel_mark_is_seen_and_is_no_claim);
        ledger_suite!(@case $fresh, $done, [$($attr),*], a_lane_mark_is_read_with_the_cancel_mark_and_cancels_nothing);
        #[tokio::test]
        $(#[$attr])*
        async fn racing_claimers_exactly_one_is_granted() {
            let l = std::sync::Arc::new($fresh.await);
            ledger_suite::racing_claimers_exactly_one_is_granted(l.clone()).await;
            $done(&l).await;
        }
    };
    (@case $fresh:expr, $done:path, [$($attr:meta),*], $name:ident) => {
        #[tokio::test]
        $(#[$attr])*
        async fn $name() {
            let l = $fresh.await;
            ledger_suite::$name(&l).await;
            $done(&l).await;
        }
    };
}
