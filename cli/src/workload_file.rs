//! Checking a workload file whole before anything runs (`cloudkon run` and
//! `cloudkon submit`).

use crate::same_file::same_file;
use std::path::Path;
use std::process::ExitCode;

use cloudkon_core::workload::{self, WorkloadStats};

use crate::exit;

/// Where the checked workload's tasks go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Run here, from memory: a task of any size.
    Memory,
    /// Sent to a queue: each task must fit in a message.
    Queue,
}

/// Reads the whole workload; on any malformed line, reports them all and
/// returns the exit code to stop with (nothing has run). `output`, the
/// results file, is checked first: it must not be the workload itself.
pub fn validate(
    path: &Path,
    output: Option<&Path>,
    to: Destination,
) -> std::result::Result<WorkloadStats, ExitCode> {
    if let Err(message) = check_readable_twice(path, output) {
        say!("error: {message}");
        say!("nothing was run");
        return Err(ExitCode::from(exit::USAGE));
    }
    match workload::validate_file(path) {
        Ok(stats) if stats.tasks == 0 => {
            say!("error: {}: no tasks in this workload", path.display());
            Err(ExitCode::from(exit::USAGE))
        }
        Ok(stats) => match to {
            Destination::Queue => fits_messages(path).map(|()| stats),
            Destination::Memory => Ok(stats),
        },
        Err(errors) => {
            for e in &errors {
                say!("error: {e}");
            }
            if errors.len() >= workload::MAX_REPORTED_ERRORS {
                say!("(stopped after {} errors)", errors.len());
            }
            say!("nothing was run: fix the workload and try again");
            Err(ExitCode::from(exit::USAGE))
        }
    }
}

/// Every task fits in a queue message: one that does not would be refused by
/// SQS at each send, and its bundle's tasks never run.
fn fits_messages(path: &Path) -> std::result::Result<(), ExitCode> {
    let refuse = |message: String| {
        say!("error: {message}");
        say!("nothing was sent");
        Err(ExitCode::from(exit::USAGE))
    };
    let long = std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .and_then(workload::has_long_line);
    match long {
        Ok(false) => return Ok(()),
        Ok(true) => {}
        Err(e) => return refuse(format!("cannot read {}: {e}", path.display())),
    }
    let reader = match workload::WorkloadReader::open(path) {
        Ok(reader) => reader,
        Err(e) => return refuse(e.to_string()),
    };
    let too_large = workload::too_large_tasks(reader, 5);
    if too_large.is_empty() {
        return Ok(());
    }
    for t in &too_large {
        say!("error: {}: {}", path.display(), t.message());
    }
    refuse(format!(
        "{}: tasks too large for a queue message (`cloudkon run` runs them here)",
        path.display()
    ))
}

/// The workload is read twice, whole to check it and then to run it: a pipe
/// would be drained by the check (and a named one block), and a results file
/// that is the workload would empty it before the second read.
fn check_readable_twice(path: &Path, output: Option<&Path>) -> Result<(), String> {
    // A missing or unreadable workload is left to the check, which says why.
    let Ok(workload) = std::fs::metadata(path) else {
        return Ok(());
    };
    if !workload.is_file() {
        return Err(format!(
            "{}: not a regular file (a pipe, a device or a directory): the workload is read \
             twice, to check it whole and then to run it; save it to a file first \
             (e.g. `... > workload.txt`) and give that",
            path.display()
        ));
    }
    if let Some(output) = output
        && let Ok(out) = std::fs::metadata(output)
        && same_file(&out, &workload)
    {
        return Err(format!(
            "-o {}: that is the workload {} itself, which the results would overwrite; \
             write them to another file",
            output.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_file_that_is_the_workload_is_refused_by_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let workload = dir.path().join("w.txt");
        std::fs::write(&workload, "sleep 0\n").unwrap();
        let link = dir.path().join("link.txt");
        std::fs::hard_link(&workload, &link).unwrap();
        for output in [&workload, &link] {
            let err = check_readable_twice(&workload, Some(output)).unwrap_err();
            assert!(err.contains("that is the workload"), "{err}");
        }
        let other = dir.path().join("r.jsonl");
        assert_eq!(check_readable_twice(&workload, Some(&other)), Ok(()));
        std::fs::write(&other, "").unwrap();
        assert_eq!(check_readable_twice(&workload, Some(&other)), Ok(()));
        assert_eq!(check_readable_twice(&workload, None), Ok(()));
    }

    #[test]
    fn a_workload_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_readable_twice(dir.path(), None).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(err.contains("save it to a file first"), "{err}");
        // Missing: the check that follows says so.
        assert_eq!(check_readable_twice(&dir.path().join("none"), None), Ok(()));
    }

    #[test]
    fn a_task_too_large_for_a_message_is_refused_for_a_queue_only() {
        let dir = tempfile::tempdir().unwrap();
        let workload = dir.path().join("w.txt");
        let big = "x".repeat(cloudkon_core::wire::SQS_MAX_MESSAGE_BYTES);
        std::fs::write(&workload, format!("sleep 1\nrun echo {big}\n")).unwrap();
        assert_eq!(
            validate(&workload, None, Destination::Queue).unwrap_err(),
            ExitCode::from(exit::USAGE)
        );
        assert_eq!(
            validate(&workload, None, Destination::Memory)
                .unwrap()
                .tasks,
            2
        );
        std::fs::write(&workload, "sleep 1\nrun echo hi\n").unwrap();
        assert_eq!(
            validate(&workload, None, Destination::Queue).unwrap().tasks,
            2
        );
    }
}
