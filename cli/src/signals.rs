//! Ctrl-C and SIGTERM (`cloudkon_worker::signals`): the first stops taking
//! tasks, the second abandons the ones running; said on the terminal.

use cloudkon_worker::Shutdown;
use cloudkon_worker::signals::{self, Stage};

pub fn spawn_handler(shutdown: Shutdown) -> std::io::Result<tokio::task::JoinHandle<()>> {
    signals::spawn_handler(shutdown, |stage| match stage {
        Stage::Stop => eprintln!(
            "\nstopping: no new tasks; waiting for the running ones (interrupt again to abandon them)"
        ),
        Stage::Abort => eprintln!("\nabandoning the running tasks"),
    })
}

/// `cloudkon submit`'s: the tasks run on the workers, so the first stops
/// the batch there (see `cmd_submit::cancel`).
pub fn spawn_submit_handler(shutdown: Shutdown) -> std::io::Result<tokio::task::JoinHandle<()>> {
    signals::spawn_handler(shutdown, |stage| match stage {
        Stage::Stop => eprintln!("\nstopping: cancelling the batch on the workers"),
        Stage::Abort => {}
    })
}
