//! DynamoLedger against DynamoDB Local (started by scripts/test): the ledger
//! suite every backend passes (`ledger_suite/`), and what only DynamoDB has:
//! its tables, request counts and the workers' heartbeats.

mod common;
#[macro_use]
mod ledger_suite;

use cloudkon_core::aws::{DynamoLedger, WorkerHeartbeat};
use cloudkon_core::ledger::DedupLedger;
use cloudkon_core::task::Timestamp;
use common::{aws, unique};
use ledger_suite::{LEASE, granted};

async fn ledger() -> DynamoLedger {
    let ledger = aws().await.ledger(unique("ck-ledger"));
    ledger.ensure_table().await.unwrap();
    ledger
}

async fn drop_tables(l: &DynamoLedger) {
    l.delete_tables().await.unwrap();
}

ledger_suite!(ledger(), drop_tables; ignore = "needs the AWS test servers: scripts/test starts them");

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

/// A worker policy from before lane marks allows GetItem and not
/// BatchGetItem: the cancel mark is still read (alone, and BatchGetItem is
/// not asked again), so cancels still reach such workers.
#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn without_batch_get_item_the_cancel_mark_is_read_alone() {
    let aws = aws().await;
    let table = unique("ck-ledger");
    let direct = aws.ledger(table.as_str());
    direct.ensure_table().await.unwrap();
    direct.cancel_batch("gone").await.unwrap();
    direct.mark_lane("gone", 1_000).await.unwrap();
    let dynamodb = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("AWS_ENDPOINT_URL_DYNAMODB");
    let proxy = cloudkon_testkit::RefusingProxy::start(&dynamodb, |r| {
        r.header("x-amz-target")
            .is_some_and(|t| t.ends_with(".BatchGetItem"))
    });
    let refused = aws.ledger_at(table.as_str(), &proxy.url());
    let marks = refused.batch_marks("gone").await.unwrap();
    assert_eq!((marks.cancelled, marks.lane_at), (true, None));
    assert!(!refused.batch_marks("other").await.unwrap().cancelled);
    assert_eq!(proxy.refused(), 1, "BatchGetItem asked once");
    // Through DynamoDB itself, both marks in one request.
    assert_eq!(
        direct.batch_marks("gone").await.unwrap().lane_at,
        Some(1_000)
    );
    direct.delete_tables().await.unwrap();
}
