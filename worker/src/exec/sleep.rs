//! The `sleep` task: an async timer, no thread per task.

use std::time::{Duration, Instant};

use super::ExecOutput;
use super::timer::sleep_until;

pub async fn sleep(length: Duration, timeout: Option<Duration>) -> ExecOutput {
    let start = Instant::now();
    match timeout {
        Some(limit) if limit < length => {
            sleep_until(start + limit).await;
            ExecOutput::timed_out()
        }
        _ => {
            sleep_until(start + length).await;
            ExecOutput::succeeded()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::Outcome;

    #[tokio::test]
    async fn sleeps_its_length() {
        let start = Instant::now();
        let out = sleep(Duration::from_millis(150), None).await;
        assert_eq!(out.outcome, Outcome::Succeeded);
        assert!(start.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn times_out_at_the_limit() {
        let start = Instant::now();
        let out = sleep(Duration::from_secs(60), Some(Duration::from_millis(200))).await;
        assert_eq!(out.outcome, Outcome::TimedOut);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(60),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_limit_longer_than_the_sleep_does_not_matter() {
        let out = sleep(Duration::from_millis(10), Some(Duration::from_millis(10))).await;
        assert_eq!(out.outcome, Outcome::Succeeded);
    }
}
