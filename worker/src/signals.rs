//! SIGTERM and Ctrl-C as every CloudKon program takes them: the first stops
//! taking work ([`Shutdown::stop`]), the second abandons what runs
//! ([`Shutdown::abort`]). SIGHUP (a closed terminal, a dropped ssh) counts as
//! SIGTERM: its default would kill the program and leave its tasks, each in
//! a process group of its own, running with nobody to wait for them.

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::pool::Shutdown;

/// Which of the two a signal brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The first: no new work; what runs finishes.
    Stop,
    /// The second: what runs is abandoned.
    Abort,
}

/// Handles both signals until the second; `tell` says what happens, in the
/// program's own words (a terminal line, a log line).
pub fn spawn_handler(
    shutdown: Shutdown,
    tell: impl Fn(Stage) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
            _ = hangup.recv() => {},
        }
        tell(Stage::Stop);
        shutdown.stop.cancel();
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
            _ = hangup.recv() => {},
        }
        tell(Stage::Abort);
        shutdown.abort.cancel();
    }))
}
