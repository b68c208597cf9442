//! The worker's last words for Kubernetes: a fatal error written to its
//! container's termination-message file, so that the pod's status says why
//! it stopped (`lastState.terminated.message`) and the pool's
//! `WorkersFailing` condition can name the cause, not only an exit code.

use std::io::Write;
use std::path::Path;

/// Where Kubernetes reads a container's termination message by default
/// (`terminationMessagePath`).
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// What the kubelet keeps of the message, at most.
const MAX_BYTES: usize = 4096;

/// Writes `message` to the termination-message file: `CLOUDKON_TERMINATION_LOG`,
/// else [`DEFAULT_PATH`]. Nothing happens where that file does not exist
/// (outside a container): it is never created.
pub fn record(message: &str) {
    let path = std::env::var_os("CLOUDKON_TERMINATION_LOG").unwrap_or_else(|| DEFAULT_PATH.into());
    if let Err(e) = record_at(Path::new(&path), message) {
        tracing::debug!(path = %Path::new(&path).display(), error = %e, "no termination message written");
    }
}

/// Writes `message`, cut to what the kubelet keeps, to the existing file at `path`.
pub fn record_at(path: &Path, message: &str) -> std::io::Result<()> {
    let mut end = message.len().min(MAX_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(&message.as_bytes()[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_goes_to_an_existing_file_cut_to_what_the_kubelet_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        std::fs::write(&path, "an older message, longer than the next").unwrap();
        record_at(&path, "error: the queue does not exist").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "error: the queue does not exist"
        );

        let long = "é".repeat(MAX_BYTES);
        record_at(&path, &long).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept.len(), MAX_BYTES);
        assert!(long.starts_with(&kept));
    }

    #[test]
    fn no_file_is_made_where_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        assert!(record_at(&path, "error").is_err());
        assert!(!path.exists());
    }
}
