//! The `sleep` task: an async timer, no thread per task.

use std::time::Duration;

use super::ExecOutput;

pub async fn sleep(length: Duration, timeout: Option<Duration>) -> ExecOutput {
    match timeout {
        Some(limit) if limit < length => {
            tokio::time::sleep(limit).await;
            ExecOutput::timed_out()
        }
        _ => {
            tokio::time::sleep(length).await;
            ExecOutput::succeeded()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::Outcome;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn sleeps_its_length() {
        let start = Instant::now();
        let out = sleep(Duration::from_millis(1500), None).await;
        assert_eq!(out.outcome, Outcome::Succeeded);
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_at_the_limit() {
        let start = Instant::now();
        let out = sleep(Duration::from_secs(10), Some(Duration::from_millis(200))).await;
        assert_eq!(out.outcome, Outcome::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_longer_than_the_sleep_does_not_matter() {
        let out = sleep(Duration::from_millis(10), Some(Duration::from_millis(10))).await;
        assert_eq!(out.outcome, Outcome::Succeeded);
    }
}
