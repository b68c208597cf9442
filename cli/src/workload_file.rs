//! Checking a workload file whole before anything runs (`cloudkon run` and
//! `cloudkon submit`).

use std::path::Path;
use std::process::ExitCode;

use cloudkon_core::workload::{self, WorkloadStats};

use crate::exit;

/// Reads the whole workload; on any malformed line, reports them all and
/// returns the exit code to stop with (nothing has run).
pub fn validate(path: &Path) -> std::result::Result<WorkloadStats, ExitCode> {
    match workload::validate_file(path) {
        Ok(stats) if stats.tasks == 0 => {
            eprintln!("error: {}: no tasks in this workload", path.display());
            Err(ExitCode::from(exit::USAGE))
        }
        Ok(stats) => Ok(stats),
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            if errors.len() >= workload::MAX_REPORTED_ERRORS {
                eprintln!("(stopped after {} errors)", errors.len());
            }
            eprintln!("nothing was run: fix the workload and try again");
            Err(ExitCode::from(exit::USAGE))
        }
    }
}
