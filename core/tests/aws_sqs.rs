//! SqsQueue against a real SQS server (fauxqs, started by scripts/test).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cloudkon_core::aws::{ErrorKind, QueueOptions, SqsQueue};
use cloudkon_core::queue::{Delivery, Lanes, TaskQueue};
use cloudkon_core::wire;
use common::{aws, eventually, sleep0_bundle, unique};

const WAIT: Duration = Duration::from_secs(1);

fn options(visibility_secs: u64) -> QueueOptions {
    QueueOptions {
        visibility_timeout: Duration::from_secs(visibility_secs),
        ..QueueOptions::default()
    }
}

/// Receives until `n` deliveries arrived (bounded), without acknowledging.
async fn receive_n(q: &SqsQueue, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {} of {n}",
            got.len()
        );
        got.extend(q.receive(10, WAIT).await.unwrap().unwrap());
    }
    got
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn twenty_five_bundles_cost_three_send_batches_and_come_back_whole() {
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-send25"), &options(30))
        .await
        .unwrap();
    let bundles: Vec<_> = (0..25)
        .map(|i| sleep0_bundle("b25", i * 100, 100))
        .collect();
    let before = aws.stats().snapshot();
    q.send(bundles.clone()).await.unwrap();
    let sent = aws.stats().snapshot().since(&before);
    assert_eq!(sent.get("SQS.SendMessageBatch"), 3, "{sent}");
    assert_eq!(sent.total(), 3, "{sent}");

    // Every task once, every delivery a first delivery.
    let all = receive_n(&q, 25).await;
    assert_eq!(all.len(), 25);
    let ids: BTreeSet<u64> = all
        .iter()
        .flat_map(|d| d.bundle.tasks.iter().map(|t| t.id))
        .collect();
    assert_eq!(ids, (0..2500).collect());
    assert!(all.iter().all(|d| d.receive_count == 1));
    let first = all.iter().find(|d| d.bundle.tasks[0].id == 0).unwrap();
    assert_eq!(first.bundle, bundles[0]);

    // Acknowledged: gone. 25 receipts are 3 DeleteMessageBatch requests.
    let before = aws.stats().snapshot();
    q.ack(all.into_iter().map(|d| d.receipt.unwrap()).collect())
        .await
        .unwrap();
    assert_eq!(
        aws.stats()
            .snapshot()
            .since(&before)
            .get("SQS.DeleteMessageBatch"),
        3
    );
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0), "{stats:?}");
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn batches_stay_under_256_kib() {
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-big"), &options(30))
        .await
        .unwrap();
    // 10 bodies of 60 KiB: 600 KiB in all; 4 fit in one 256 KiB request.
    let bodies: Vec<String> = (0..10)
        .map(|i| format!("{i:02}{}", "x".repeat(60 * 1024)))
        .collect();
    let before = aws.stats().snapshot();
    q.send_bodies(bodies.clone()).await.unwrap();
    assert_eq!(
        aws.stats()
            .snapshot()
            .since(&before)
            .get("SQS.SendMessageBatch"),
        3
    );
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 10 {
        assert!(tokio::time::Instant::now() < deadline);
        for m in q.receive_raw(10, WAIT).await.unwrap() {
            got.insert(m.body);
        }
    }
    assert_eq!(got, bodies.into_iter().collect());

    // A bundle too big for one message is split, and still sent whole.
    let huge = sleep0_bundle("huge", 0, 60_000);
    assert!(wire::encode_bundle(&huge).len() > wire::SQS_MAX_MESSAGE_BYTES);
    q.purge().await.unwrap();
    q.send(vec![huge]).await.unwrap();
    let mut ids = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ids.len() < 60_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 60000 tasks",
            ids.len()
        );
        for d in q.receive(10, WAIT).await.unwrap().unwrap() {
            ids.extend(d.bundle.tasks.iter().map(|t| t.id));
        }
    }
    assert_eq!(ids, (0..60_000).collect());

    // One task too large for a message: refused for good, nothing sent.
    let mut alone = sleep0_bundle("alone", 0, 1);
    alone.tasks[0].spec = cloudkon_core::TaskSpec::Run {
        program: "echo".into(),
        args: vec!["x".repeat(wire::SQS_MAX_MESSAGE_BYTES)],
        expected_ms: None,
    };
    let before = aws.stats().snapshot();
    let err = q.send(vec![alone]).await.unwrap_err();
    assert!(
        matches!(&err, cloudkon_core::queue::QueueError::Refused(m) if m.contains("task 0 of batch alone")),
        "{err:?}"
    );
    assert_eq!(
        aws.stats()
            .snapshot()
            .since(&before)
            .get("SQS.SendMessageBatch"),
        0
    );
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn an_unacknowledged_bundle_comes_back_with_receive_count_two() {
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-redeliver"), &options(1))
        .await
        .unwrap();
    q.send(vec![sleep0_bundle("r", 0, 3)]).await.unwrap();
    let first = receive_n(&q, 1).await;
    assert_eq!(first[0].receive_count, 1);
    let again = eventually(Duration::from_secs(15), "the redelivery", || {
        let q = q.clone();
        async move { q.receive(10, WAIT).await.unwrap().unwrap().pop() }
    })
    .await;
    assert_eq!(again.receive_count, 2);
    assert_eq!(again.bundle, first[0].bundle);
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_worker_queue_hides_what_it_receives_for_its_lease_not_the_queues_timeout() {
    // The queue's own timeout is 1 s; a worker with a 10 s lease receives
    // (8 s more than the check below needs: a slow machine may stall).
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-hidden"), &options(1))
        .await
        .unwrap();
    let worker = q.clone().hidden_on_receive(Duration::from_secs(10));
    q.send(vec![sleep0_bundle("h", 0, 1)]).await.unwrap();
    let got = receive_n(&worker, 1).await;
    // Twice the queue's timeout later: still hidden, where the queue's
    // timeout showed it again before the worker's first extension.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = q.receive_raw(10, Duration::ZERO).await.unwrap();
    assert!(seen.is_empty(), "shown again: {seen:?}");
    // Then it shows again, as a worker that crashed leaves it.
    let again = eventually(Duration::from_secs(40), "the redelivery", || {
        let q = q.clone();
        async move { q.receive(10, WAIT).await.unwrap().unwrap().pop() }
    })
    .await;
    assert_eq!(again.bundle, got[0].bundle);
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn extend_keeps_a_bundle_hidden_and_release_shows_it_at_once() {
    // The queue's timeout leaves a slow machine 5 s between receive and extend.
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-visibility"), &options(5))
        .await
        .unwrap();
    q.send(vec![sleep0_bundle("v", 0, 1)]).await.unwrap();
    let d = receive_n(&q, 1).await.pop().unwrap();
    let received = tokio::time::Instant::now();
    let receipt = d.receipt.clone().unwrap();
    q.extend(&receipt, Duration::from_secs(60)).await.unwrap();
    // Without the extension it would be back 5 s after the receive: watch
    // until 2 s past that.
    let watch = received + Duration::from_secs(7);
    while tokio::time::Instant::now() < watch {
        let got = q.receive(10, WAIT).await.unwrap().unwrap();
        assert!(got.is_empty(), "an extended delivery came back");
    }
    assert_eq!(q.stats().await.unwrap().in_flight, 1);

    q.release(&receipt).await.unwrap();
    // Released: visible at once, though most of its 60 s of hiding is left
    // (the 5 s long poll would end empty otherwise).
    let back = q
        .receive(10, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), 1, "released delivery not visible");
    assert_eq!(back[0].receive_count, 2);

    // The batched variant does the same.
    let receipt = back[0].receipt.clone().unwrap();
    q.change_visibility_batch(vec![(receipt, Duration::ZERO)])
        .await
        .unwrap();
    let back = q
        .receive(10, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].receive_count, 3);
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn extend_all_keeps_twelve_bundles_hidden_in_two_requests() {
    // The queue's timeout leaves a slow machine 8 s between the first
    // receive and the extension.
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-extend-all"), &options(8))
        .await
        .unwrap();
    let bundles: Vec<_> = (0..12).map(|i| sleep0_bundle("x", i, 1)).collect();
    q.send(bundles).await.unwrap();
    let got = receive_n(&q, 12).await;
    let received = tokio::time::Instant::now();
    let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone().unwrap()).collect();
    let before = aws.stats().snapshot();
    q.extend_all(receipts.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let made = aws.stats().snapshot().since(&before);
    assert_eq!(made.get("SQS.ChangeMessageVisibilityBatch"), 2, "{made}");
    assert_eq!(made.total(), 2, "{made}");
    // Without the extension they would be back within 8 s of the last
    // receive: watch until 2 s past that.
    let watch = received + Duration::from_secs(10);
    while tokio::time::Instant::now() < watch {
        let back = q.receive(10, WAIT).await.unwrap().unwrap();
        assert!(back.is_empty(), "an extended delivery came back");
    }
    assert_eq!(q.stats().await.unwrap().in_flight, 12);

    // One deleted meanwhile (its bundle completed): the call says so, and
    // the others are changed all the same (to 1 s: they come back).
    let first_id = |d: &Delivery| d.bundle.tasks[0].id;
    let gone = got[0].receipt.clone().unwrap();
    q.ack(vec![gone]).await.unwrap();
    let err = q
        .extend_all(receipts, Duration::from_secs(1))
        .await
        .expect_err("the deleted message's entry fails");
    assert!(err.to_string().contains("1 of 12 entries failed"), "{err}");
    let expected: BTreeSet<u64> = got[1..].iter().map(first_id).collect();
    let mut back = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while back.len() < expected.len() {
        assert!(tokio::time::Instant::now() < deadline, "back: {back:?}");
        for d in q.receive(10, WAIT).await.unwrap().unwrap() {
            assert_ne!(first_id(&d), first_id(&got[0]), "the deleted one came back");
            back.insert(first_id(&d));
        }
    }
    assert_eq!(back, expected);
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_malformed_message_goes_to_the_dead_letter_queue_never_to_a_worker() {
    let aws = aws().await;
    let sqs = aws.sqs();
    let name = unique("ck-malformed");
    let q = sqs
        .create_queue(
            &name,
            &QueueOptions {
                max_receives: Some(5),
                ..options(30)
            },
        )
        .await
        .unwrap();
    let dlq_url = q
        .dead_letter_url()
        .expect("a dead-letter queue")
        .to_string();
    assert!(dlq_url.ends_with(&format!("{name}-dlq")), "{dlq_url}");
    q.send_bodies(vec!["{\"not\": \"a cloudkon bundle\"}".into()])
        .await
        .unwrap();
    q.send(vec![sleep0_bundle("m", 0, 2)]).await.unwrap();

    // The worker-facing receive returns the bundle, and never the stranger.
    let mut bundles = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for d in q.receive(10, WAIT).await.unwrap().unwrap() {
            assert_eq!(d.bundle.tasks.len(), 2);
            bundles += 1;
            q.ack(vec![d.receipt.unwrap()]).await.unwrap();
        }
        let stats = q.stats().await.unwrap();
        if bundles == 1 && stats.visible == 0 && stats.in_flight == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{bundles} bundles, {stats:?}"
        );
    }
    let dlq = q.sibling(&dlq_url);
    let dead = eventually(Duration::from_secs(10), "the dead letter", || {
        let dlq = dlq.clone();
        async move { dlq.receive_raw(10, WAIT).await.unwrap().pop() }
    })
    .await;
    assert_eq!(dead.body, "{\"not\": \"a cloudkon bundle\"}");

    // Opened by name, the queue knows its dead-letter queue.
    let opened = sqs.open(&name).await.unwrap();
    assert_eq!(opened.url(), q.url());
    assert_eq!(opened.dead_letter_url(), Some(dlq_url.as_str()));

    // Its dead-letter queue deleted first (a pool's deletion did so): the
    // queue still opens, without one, and is not taken for gone.
    dlq.delete().await.unwrap();
    let opened = sqs.open(&name).await.unwrap();
    assert_eq!(opened.url(), q.url());
    assert_eq!(opened.dead_letter_url(), None);
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn without_a_dead_letter_queue_a_malformed_message_is_deleted() {
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-nodlq"), &options(30))
        .await
        .unwrap();
    assert!(q.dead_letter_url().is_none());
    // Valid base64, but a results message: not a bundle either.
    let results = wire::encode_results(
        &wire::ResultsMessage {
            key: "k".into(),
            ideal: Duration::ZERO,
            results: vec![],
            usage: Default::default(),
        },
        1000,
    )
    .unwrap();
    q.send_bodies(vec!["garbage".into(), results])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = q.receive(10, WAIT).await.unwrap().unwrap();
        assert!(got.is_empty(), "a malformed message was returned");
        let stats = q.stats().await.unwrap();
        if stats.visible == 0 && stats.in_flight == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
    }
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_message_of_a_newer_release_is_left_for_a_newer_reader() {
    // A rolling upgrade: a newer operator's bundle meets this worker. It is
    // neither run, nor moved to the dead-letter queue (whose reader would
    // report its tasks failed), nor deleted: hidden, and left in place.
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(
            &unique("ck-newer"),
            &QueueOptions {
                max_receives: Some(5),
                ..options(30)
            },
        )
        .await
        .unwrap();
    let mut bytes = engine
        .decode(cloudkon_core::wire::encode_bundle(&sleep0_bundle(
            "n", 0, 1,
        )))
        .unwrap();
    bytes[0] = 200;
    q.send_bodies(vec![engine.encode(&bytes)]).await.unwrap();
    let got = q.receive(10, WAIT).await.unwrap().unwrap();
    assert!(got.is_empty(), "{got:?}");
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 1));
    let dlq = q.sibling(q.dead_letter_url().unwrap());
    assert!(
        dlq.receive_raw(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    q.delete().await.unwrap();
    dlq.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn queue_stats_count_waiting_and_in_flight() {
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-stats"), &options(30))
        .await
        .unwrap();
    q.send((0..3).map(|i| sleep0_bundle("s", i, 1)).collect())
        .await
        .unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (3, 0, 0));
    let got = q.receive_raw(1, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (2, 1));
    q.purge().await.unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.visible, 0, "{stats:?}");
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn create_is_idempotent_and_a_missing_queue_is_a_clear_error() {
    let aws = aws().await;
    let sqs = aws.sqs();
    let name = unique("ck-create");
    let a = sqs.create_queue(&name, &options(30)).await.unwrap();
    let b = sqs.create_queue(&name, &options(30)).await.unwrap();
    assert_eq!(a.url(), b.url());
    assert_eq!(sqs.open(&name).await.unwrap().url(), a.url());
    assert_eq!(sqs.open(a.url()).await.unwrap().url(), a.url());

    let missing = unique("ck-missing");
    let err = sqs.open(&missing).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(!err.is_retryable());

    a.delete().await.unwrap();
    let err = sqs.open(&name).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_queue_made_with_other_settings_is_given_the_new_ones() {
    let aws = aws().await;
    let sqs = aws.sqs();
    let name = unique("ck-resettle");
    // As an older version made it: SQS's default retention, 5 receives.
    let old = QueueOptions {
        visibility_timeout: Duration::from_secs(30),
        retention: Duration::from_secs(4 * 24 * 3600),
        max_receives: Some(5),
        priority_lane: false,
    };
    let a = sqs.create_queue(&name, &old).await.unwrap();
    let read = a.options().await.unwrap();
    assert_eq!(
        (read.visibility_timeout, read.retention, read.max_receives),
        (old.visibility_timeout, old.retention, Some(5))
    );

    let new = QueueOptions {
        visibility_timeout: Duration::from_secs(45),
        max_receives: Some(2),
        ..QueueOptions::default()
    };
    let b = sqs.create_queue(&name, &new).await.unwrap();
    assert_eq!(a.url(), b.url());
    assert_eq!(a.dead_letter_url(), b.dead_letter_url());
    let read = b.options().await.unwrap();
    assert_eq!(
        (read.visibility_timeout, read.retention, read.max_receives),
        (
            new.visibility_timeout,
            Duration::from_secs(14 * 24 * 3600),
            Some(2)
        )
    );
    // Asked again with the same settings: nothing to change.
    let c = sqs.create_queue(&name, &new).await.unwrap();
    assert_eq!(c.url(), a.url());
    a.delete().await.unwrap();
    if let Some(dlq) = a.dead_letter_url() {
        sqs.at(dlq).delete().await.unwrap();
    }
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn results_travel_to_the_reply_queue() {
    let aws = aws().await;
    let sqs = aws.sqs();
    let replies = sqs
        .create_queue(&unique("ck-replies"), &options(30))
        .await
        .unwrap();
    let msg = wire::ResultsMessage {
        key: "b#0".into(),
        ideal: Duration::from_millis(5),
        results: vec![],
        usage: Default::default(),
    };
    // A worker knows only the URL, from the bundle's reply_to.
    sqs.at(replies.url()).send_results(&msg).await.unwrap();
    let (got, receipt) = eventually(Duration::from_secs(10), "the results", || {
        let replies = replies.clone();
        async move { replies.receive_results(10, WAIT).await.unwrap().pop() }
    })
    .await;
    assert_eq!(got, msg);
    replies.delete_batch(vec![receipt]).await.unwrap();
    replies.delete().await.unwrap();
}

/// Not an assertion: a figure for the report. Bundles of 100 `sleep 0`s.
#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn throughput_of_send_and_receive_plus_delete() {
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-speed"), &options(60))
        .await
        .unwrap();
    let n = 2000;
    let bundles: Vec<_> = (0..n).map(|i| sleep0_bundle("t", i * 100, 100)).collect();
    let t = std::time::Instant::now();
    q.send(bundles).await.unwrap();
    let send = t.elapsed();
    let t = std::time::Instant::now();
    let mut got = 0;
    while got < n as usize {
        assert!(t.elapsed() < Duration::from_secs(60), "{got} of {n}");
        let ds = q.receive(10, WAIT).await.unwrap().unwrap();
        got += ds.len();
        q.ack(ds.into_iter().map(|d| d.receipt.unwrap()).collect())
            .await
            .unwrap();
    }
    let recv = t.elapsed();
    println!(
        "SQS throughput: send {:.0} msgs/s ({:.0} tasks/s); receive+ack (one consumer) {:.0} msgs/s",
        n as f64 / send.as_secs_f64(),
        (n * 100) as f64 / send.as_secs_f64(),
        n as f64 / recv.as_secs_f64()
    );
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_long_poll_longer_than_the_attempt_timeout_is_not_cut_short() {
    let aws = common::aws_with(cloudkon_core::aws::AwsSettings {
        attempt_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-longpoll"), &options(30))
        .await
        .unwrap();
    // The receive waits 12 s on the server, over twice the attempt timeout:
    // its own timeouts stretch by the wait (5 s to spare for a slow server).
    let started = tokio::time::Instant::now();
    let got = q
        .receive(10, Duration::from_secs(12))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(11_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        aws.stats().snapshot().get("SQS.ReceiveMessage"),
        1,
        "no retries"
    );
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_sub_second_wait_still_long_polls_an_idle_queue() {
    // The operator's collector waits 500 ms per receive: sent as
    // WaitTimeSeconds=0 it would spin on an idle response queue.
    let aws = aws().await;
    let q = aws
        .sqs()
        .create_queue(&unique("ck-idle"), &options(30))
        .await
        .unwrap();
    let before = aws.stats().snapshot();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert!(
            q.receive_results(10, Duration::from_millis(500))
                .await
                .unwrap()
                .is_empty()
        );
    }
    let elapsed = started.elapsed();
    let calls = aws
        .stats()
        .snapshot()
        .since(&before)
        .get("SQS.ReceiveMessage");
    assert_eq!(calls, 3);
    // Each receive waited (rounded up to a whole second): at most one call a second.
    assert!(
        elapsed >= Duration::from_millis(2_900),
        "3 idle receives in {elapsed:?}"
    );
    q.delete().await.unwrap();
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_worker_takes_the_priority_lane_first_and_answers_each_lane_for_its_own() {
    let aws = aws().await;
    let sqs = aws.sqs();
    let name = unique("ck-lanes");
    let q = sqs
        .create_queue(
            &name,
            &QueueOptions {
                max_receives: Some(5),
                priority_lane: true,
                ..options(30)
            },
        )
        .await
        .unwrap();
    let lane = q.priority_lane();
    assert_eq!(lane.url(), format!("{}-pri", q.url()));
    // The lane has the queue's settings and dead-letter queue.
    let made = sqs.open(lane.url()).await.unwrap();
    assert_eq!(made.dead_letter_url(), q.dead_letter_url());
    assert_eq!(made.options().await.unwrap().max_receives, Some(5));

    // Three bundles in the queue first, then one in the lane.
    q.send((0..3).map(|i| sleep0_bundle("main", i, 1)).collect())
        .await
        .unwrap();
    lane.send(vec![sleep0_bundle("lane", 0, 1)]).await.unwrap();
    let lanes = Lanes::new(q.clone(), Some(lane.clone()));
    let before = aws.stats().snapshot();
    let first = lanes.receive(10, WAIT).await.unwrap().unwrap();
    let asked = aws.stats().snapshot().since(&before);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].bundle.tasks[0].batch.as_str(), "lane");
    assert_eq!(asked.get("SQS.ReceiveMessage"), 1, "{asked}");
    // The lane empty: the queue's, after one more request.
    let before = aws.stats().snapshot();
    let mut rest = Vec::new();
    while rest.len() < 3 {
        rest.extend(lanes.receive(10, WAIT).await.unwrap().unwrap());
    }
    let asked = aws.stats().snapshot().since(&before);
    assert!(
        rest.iter()
            .all(|d| d.bundle.tasks[0].batch.as_str() == "main")
    );
    assert!(asked.get("SQS.ReceiveMessage") >= 2, "{asked}");

    // Extensions, releases and acks go to the lane each came from: a
    // receipt given to the other queue would fail.
    let lane_receipt = first[0].receipt.clone().unwrap();
    let main_receipts: Vec<_> = rest.iter().map(|d| d.receipt.clone().unwrap()).collect();
    let mut all = main_receipts.clone();
    all.push(lane_receipt.clone());
    lanes
        .extend_all(all.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    lanes.release(&lane_receipt).await.unwrap();
    let again = lanes.receive(10, WAIT).await.unwrap().unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].bundle.tasks[0].batch.as_str(), "lane");
    assert_eq!(again[0].receive_count, 2);
    let mut acks = main_receipts;
    acks.push(again[0].receipt.clone().unwrap());
    lanes.ack(acks).await.unwrap();
    for queue in [&q, &lane] {
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.visible, stats.in_flight), (0, 0), "{}", queue.url());
    }

    // A look at the lane alone (a worker told by a lane mark): its bundle,
    // in one request, the queue's left where they are; then nothing, in one.
    q.send(vec![sleep0_bundle("main", 7, 1)]).await.unwrap();
    lane.send(vec![sleep0_bundle("marked", 0, 1)])
        .await
        .unwrap();
    let before = aws.stats().snapshot();
    let looked = lanes.receive_priority(10).await.unwrap();
    assert_eq!(looked.len(), 1);
    assert!(looked[0].priority);
    assert_eq!(looked[0].bundle.tasks[0].batch.as_str(), "marked");
    assert!(lanes.receive_priority(10).await.unwrap().is_empty());
    let asked = aws.stats().snapshot().since(&before);
    assert_eq!(asked.get("SQS.ReceiveMessage"), 2, "{asked}");
    assert_eq!(q.stats().await.unwrap().visible, 1);
    // Its ack goes to the lane.
    lanes
        .ack(vec![looked[0].receipt.clone().unwrap()])
        .await
        .unwrap();

    // The main queue alone (a worker its lane marks tell): the queue's
    // bundle in one request, the lane's left in the lane.
    lane.send(vec![sleep0_bundle("passed", 0, 1)])
        .await
        .unwrap();
    let before = aws.stats().snapshot();
    let main_left = lanes.receive_main(10, WAIT).await.unwrap().unwrap();
    let asked = aws.stats().snapshot().since(&before);
    assert_eq!(asked.get("SQS.ReceiveMessage"), 1, "{asked}");
    assert_eq!(main_left.len(), 1);
    assert!(!main_left[0].priority);
    assert_eq!(main_left[0].bundle.tasks[0].batch.as_str(), "main");
    assert_eq!(lane.stats().await.unwrap().visible, 1);
    lanes
        .ack(main_left.into_iter().map(|d| d.receipt.unwrap()).collect())
        .await
        .unwrap();
    let passed = lanes.receive_priority(10).await.unwrap();
    assert_eq!(passed[0].bundle.tasks[0].batch.as_str(), "passed");
    lanes
        .ack(vec![passed[0].receipt.clone().unwrap()])
        .await
        .unwrap();
    for queue in [&q, &lane] {
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.visible, stats.in_flight), (0, 0), "{}", queue.url());
    }

    // What no worker took from the lane moves to the queue, whole.
    lane.send((0..12).map(|i| sleep0_bundle("left", i, 1)).collect())
        .await
        .unwrap();
    assert_eq!(lane.move_visible_to(&q, 100).await.unwrap(), 12);
    assert_eq!(lane.stats().await.unwrap().visible, 0);
    let moved = receive_n(&q, 12).await;
    let ids: BTreeSet<u64> = moved.iter().map(|d| d.bundle.tasks[0].id).collect();
    assert_eq!(ids, (0..12).collect());
    q.delete_batch(moved.into_iter().map(|d| d.receipt.unwrap()).collect())
        .await
        .unwrap();

    // Without its lane (deleted, or a pool made before lanes), the queue
    // alone serves, and the lane is not asked again for a while.
    lane.delete().await.unwrap();
    q.send(vec![sleep0_bundle("main", 9, 1)]).await.unwrap();
    let lanes = Lanes::new(q.clone(), Some(lane));
    let got = lanes.receive(10, WAIT).await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    let before = aws.stats().snapshot();
    lanes
        .ack(vec![got[0].receipt.clone().unwrap()])
        .await
        .unwrap();
    assert!(
        lanes
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    let asked = aws.stats().snapshot().since(&before);
    assert_eq!(asked.get("SQS.ReceiveMessage"), 1, "{asked}");
    q.delete().await.unwrap();
    sqs.open(q.dead_letter_url().unwrap())
        .await
        .unwrap()
        .delete()
        .await
        .unwrap();
}
