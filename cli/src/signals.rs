//! Ctrl-C, SIGTERM and SIGHUP (`cloudkon_worker::signals`): the first stops
//! taking tasks, the second abandons the ones running; said on the terminal.

use std::io::Write;

use cloudkon_worker::Shutdown;
use cloudkon_worker::signals::{self, Stage};

pub fn spawn_handler(shutdown: Shutdown) -> std::io::Result<tokio::task::JoinHandle<()>> {
    signals::spawn_handler(shutdown, |stage| match stage {
        Stage::Stop => say(
            "stopping: no new tasks; waiting for the running ones (interrupt again to abandon them)",
        ),
        Stage::Abort => say("abandoning the running tasks"),
    })
}

/// `cloudkon submit`'s: the tasks run on the workers, so the first stops
/// the batch there (see `cmd_submit::cancel`).
pub fn spawn_submit_handler(shutdown: Shutdown) -> std::io::Result<tokio::task::JoinHandle<()>> {
    signals::spawn_handler(shutdown, |stage| match stage {
        Stage::Stop => say("stopping: cancelling the batch on the workers"),
        Stage::Abort => {}
    })
}

/// On a terminal that is gone (SIGHUP) writes fail: `eprintln!` would panic
/// the handler before it stops the run.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "\n{text}");
}
