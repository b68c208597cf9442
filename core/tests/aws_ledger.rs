//! DynamoLedger against DynamoDB Local (started by scripts/test): the cases of
//! MemoryLedger's tests, races, and the workers' heartbeats.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::aws::{DynamoLedger, WorkerHeartbeat};
use cloudkon_core::ledger::{BundleProgress, Claim, DedupLedger};
use cloudkon_core::task::Timestamp;
use common::{aws, unique};

const LEASE: Duration = Duration::from_secs(30);

fn progress(positions: &[usize]) -> BundleProgress {
    let mut p = BundleProgress::new();
    for &i in positions {
        p.insert(i);
    }
    p
}

fn granted(attempt: u32, done: &[usize]) -> Claim {
    Claim::Granted {
        attempt,
        done: progress(done),
    }
}

fn none() -> BundleProgress {
    BundleProgress::new()
}

async fn ledger() -> DynamoLedger {
    let ledger = aws().await.ledger(unique("ck-ledger"));
    ledger.ensure_table().await.unwrap();
    ledger
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn first_claim_wins_and_others_see_it_held() {
    let l = ledger().await;
    assert_eq!(l.claim("k", "a", LEASE).await.unwrap(), granted(1, &[]));
    match l.claim("k", "b", LEASE).await.unwrap() {
        Claim::Held { remaining } => {
            assert!(
                remaining > LEASE - Duration::from_secs(10) && remaining <= LEASE,
                "{remaining:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The holder claiming again (its earlier answer lost) still holds it.
    assert_eq!(l.claim("k", "a", LEASE).await.unwrap(), granted(1, &[]));
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn an_expired_lease_is_taken_over_with_the_next_attempt() {
    let l = ledger().await;
    l.claim("k", "a", Duration::ZERO).await.unwrap();
    // Lease times are whole milliseconds: let one pass so "expired" is strict.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(l.claim("k", "b", LEASE).await.unwrap(), granted(2, &[]));
    assert!(!l.renew("k", "a", LEASE, &none()).await.unwrap());
    assert!(!l.complete("k", "a", b"late".to_vec()).await.unwrap());
    assert!(l.complete("k", "b", b"r".to_vec()).await.unwrap());
    assert_eq!(
        l.claim("k", "c", LEASE).await.unwrap(),
        Claim::Done {
            results: b"r".to_vec()
        }
    );
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn done_returns_the_stored_results() {
    let l = ledger().await;
    l.claim("k", "a", LEASE).await.unwrap();
    assert!(l.renew("k", "a", LEASE, &none()).await.unwrap());
    let results: Vec<u8> = (0..=255).cycle().take(50_000).collect();
    assert!(l.complete("k", "a", results.clone()).await.unwrap());
    // Completing twice (a retried request) still says it is ours and done.
    assert!(l.complete("k", "a", results.clone()).await.unwrap());
    assert_eq!(
        l.claim("k", "b", LEASE).await.unwrap(),
        Claim::Done { results }
    );
    // Done is final: no renewal.
    assert!(!l.renew("k", "a", LEASE, &none()).await.unwrap());
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn release_lets_the_next_claim_in_at_once_as_the_same_attempt() {
    let l = ledger().await;
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
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_take_over_resumes_from_the_last_renewal_and_completion_needs_no_results() {
    let l = ledger().await;
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
    tokio::time::sleep(Duration::from_millis(5)).await;
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
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn racing_claimers_exactly_one_is_granted() {
    let l = Arc::new(ledger().await);
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
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn ensure_table_is_idempotent_and_writes_are_counted() {
    let aws = aws().await;
    let l = aws.ledger(unique("ck-ledger"));
    l.ensure_table().await.unwrap();
    l.ensure_table().await.unwrap();
    let before = aws.stats().snapshot();
    l.claim("k", "a", LEASE).await.unwrap();
    l.claim("k", "b", LEASE).await.unwrap(); // held: a failed conditional write
    l.complete("k", "a", vec![0; 3000]).await.unwrap();
    let used = aws.stats().snapshot().since(&before);
    // One request per ledger call: the claim learns "held" from the failed write.
    assert_eq!(used.get("DynamoDB.UpdateItem"), 3, "{used}");
    assert_eq!(used.total(), 3, "{used}");
    // 1 + 1 (failed conditional write) + 3 (a 3 KB item).
    assert!(used.write_units >= 5.0, "{used}");
    println!("write units for claim + held claim + complete(3 KB): {used}");
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn worker_heartbeats_are_listed() {
    let l = ledger().await;
    let beat = |id: &str, busy| WorkerHeartbeat {
        id: id.into(),
        host: "ip-10-0-0-1".into(),
        slots: 4,
        busy,
        tasks_done: 10,
        started_at: Timestamp(1_777_000_000_000_000),
        last_seen: Timestamp(0),
    };
    let t0 = Timestamp::now();
    l.put_worker_heartbeat(&beat("w2", 1)).await.unwrap();
    l.put_worker_heartbeat(&beat("w1", 2)).await.unwrap();
    l.put_worker_heartbeat(&beat("w1", 3)).await.unwrap();
    let workers = l.list_workers().await.unwrap();
    assert_eq!(
        workers.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["w1", "w2"]
    );
    assert_eq!(workers[0].busy, 3);
    assert_eq!(workers[0].slots, 4);
    assert_eq!(workers[0].started_at, Timestamp(1_777_000_000_000_000));
    assert!(workers.iter().all(|w| w.last_seen >= t0));
    // Heartbeats do not show up as claims.
    assert_eq!(l.claim("w1", "x", LEASE).await.unwrap(), granted(1, &[]));
    l.delete_tables().await.unwrap();
}

#[tokio::test]
#[ignore = "needs DynamoDB Local: run through scripts/test"]
async fn a_cancel_mark_is_seen_and_is_no_claim() {
    let l = ledger().await;
    let batch = unique("cancelled");
    assert!(!l.is_cancelled(&batch).await.unwrap());
    l.cancel_batch(&batch).await.unwrap();
    assert!(l.is_cancelled(&batch).await.unwrap());
    assert!(!l.is_cancelled(&format!("{batch}-other")).await.unwrap());
    // The batch's bundles are still claimed as usual (workers check the mark
    // before they claim).
    assert!(matches!(
        l.claim(&format!("{batch}#0"), "a", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Granted { attempt: 1, .. }
    ));
}
