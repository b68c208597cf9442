//! The open-files limit: each running task holds descriptors (its output
//! pipes, its downloads), and the usual soft limit of 1,024 fails tasks with
//! "Too many open files" past a few hundred slots.

/// Raises the soft limit of open files to the hard one.
pub fn raise_limit() {
    let before = rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => tracing::debug!(before, now, "open files limit raised to the hard limit"),
        Err(e) => tracing::debug!(before, error = %e, "cannot raise the open files limit"),
    }
}
