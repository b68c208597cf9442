//! Retrying calls to a backend that may be briefly unreachable.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff between `FIRST` and `MAX`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The current delay, doubling the next.
    pub fn step(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// Waits the current delay (false if cancelled first) and doubles it.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.step();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

/// Calls `op` until it succeeds, backing off between failures; `None` only if
/// `cancel` fires first. For work whose loss would cost a re-run: recording a
/// completion, sending results.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    cancel: &CancellationToken,
    errors: &std::sync::atomic::AtomicU64,
    mut op: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new();
    loop {
        match op().await {
            Ok(value) => return Some(value),
            Err(e) => {
                super::WorkerStats::add(errors, 1);
                tracing::warn!(error = %e, "{what} failed; retrying");
                if !backoff.wait(cancel).await {
                    return None;
                }
            }
        }
    }
}
