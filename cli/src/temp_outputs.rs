//! Outputs written beside their final name ([`crate::report::temp_beside`])
//! and renamed into place once whole: a signal that ends the command first
//! would leave the half-written file behind, hidden (`.tmpXXXXXX`) and as
//! large as the output got. Commands that write them call [`remove_on_signal`]
//! first: Ctrl-C, SIGTERM and SIGHUP then remove them and exit 130.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};

static WRITING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Blocks the three signals in this thread and every thread it starts after,
/// and waits for them in a thread of its own. Call before any other thread
/// is started, or a signal may be taken by one that does not block it.
pub fn remove_on_signal() -> std::io::Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("cloudkon-signals".into())
        .spawn(move || {
            if signals.wait().is_ok() {
                for path in WRITING.lock().expect("temp outputs lock").drain(..) {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
        })?;
    Ok(())
}

/// `path` is being written: removed if a signal ends the command.
pub fn writing(path: &Path) {
    WRITING
        .lock()
        .expect("temp outputs lock")
        .push(path.to_path_buf());
}

/// `path` is renamed into place or removed: no longer to remove.
pub fn done(path: &Path) {
    WRITING
        .lock()
        .expect("temp outputs lock")
        .retain(|p| p != path);
}
