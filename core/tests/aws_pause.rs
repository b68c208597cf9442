//! A paused DynamoDB (SIGSTOP: it accepts connections and never answers) must
//! not hang a ledger call. Its own test binary: the pause would slow the other
//! ledger tests, which run in parallel within a binary.

mod common;

use std::process::Command;
use std::time::Duration;

use cloudkon_core::aws::AwsSettings;
use cloudkon_core::ledger::{Claim, DedupLedger, LedgerError};
use common::{aws_with, unique};

/// Sends a signal to the server; CONT again on drop, so that a failing test
/// does not leave DynamoDB Local stopped for the others.
struct Paused(String);

fn signal(sig: &str, pid: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

impl Paused {
    fn new(pid: String) -> Self {
        signal("-STOP", &pid);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

#[tokio::test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
async fn a_claim_during_a_pause_of_dynamodb_returns() {
    let pid = std::env::var("CLOUDKON_DYNAMODB_PID").expect("CLOUDKON_DYNAMODB_PID (scripts/test)");
    let aws = aws_with(AwsSettings {
        attempt_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        ..AwsSettings::default()
    })
    .await;
    let l = aws.ledger(unique("ck-pause"));
    l.ensure_table().await.unwrap();

    let paused = Paused::new(pid);
    let started = tokio::time::Instant::now();
    let claim = tokio::spawn({
        let l = l.clone();
        async move { l.claim("k", "a", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await; // the pause itself
    drop(paused);
    let answer = tokio::time::timeout(Duration::from_secs(60), claim)
        .await
        .expect("the claim hung after the server came back")
        .unwrap();
    println!(
        "claim across a 3 s pause: {answer:?} after {:?}",
        started.elapsed()
    );
    match answer {
        Ok(Claim::Granted { attempt: 1, .. }) => {}
        Err(LedgerError::Unavailable(e)) => println!("retryable: {e}"),
        other => panic!("neither granted nor retryable: {other:?}"),
    }
    // Whatever the first call saw, the ledger is consistent afterwards: the
    // owner holds it (its first attempt may have landed), others do not.
    assert_eq!(
        l.claim("k", "a", Duration::from_secs(30)).await.unwrap(),
        Claim::Granted {
            attempt: 1,
            done: Default::default()
        }
    );
    assert!(matches!(
        l.claim("k", "b", Duration::from_secs(30)).await.unwrap(),
        Claim::Held { .. }
    ));
    let used = aws.stats().snapshot();
    println!("requests: {used}");
    l.delete_tables().await.unwrap();
}
