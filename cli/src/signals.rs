//! Ctrl-C and SIGTERM: the first stops taking tasks, the second abandons the
//! ones running.

use cloudkon_worker::Shutdown;
use tokio::signal::unix::{SignalKind, signal};

pub fn spawn_handler(shutdown: Shutdown) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::spawn(async move {
        let mut count = 0;
        loop {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
            count += 1;
            if count == 1 {
                eprintln!(
                    "\nstopping: no new tasks; waiting for the running ones (interrupt again to abandon them)"
                );
                shutdown.stop.cancel();
            } else {
                eprintln!("\nabandoning the running tasks");
                shutdown.abort.cancel();
                return;
            }
        }
    }))
}
