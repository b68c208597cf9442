//! What a run of `cloudkon run` or `cloudkon submit` ends with: its summary
//! on stdout and its exit status.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use cloudkon_core::Summary;

use crate::exit;

/// The summary as text, or as one JSON object with `--json`.
pub fn print_summary(summary: &Summary, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, summary)?;
        writeln!(out)?;
    } else {
        write!(out, "{summary}")?;
    }
    Ok(())
}

/// 0 when every task succeeded; else why not (see `main::exit`).
pub fn exit_code(summary: &Summary) -> u8 {
    if summary.interrupted {
        exit::INTERRUPTED
    } else if summary.not_run > 0 {
        // Not stopped, yet tasks never ran: the workload read for the run
        // was shorter than the one checked.
        exit::ERROR
    } else if summary.failed + summary.timed_out > 0 {
        exit::TASKS_FAILED
    } else {
        0
    }
}

/// The exit status, saying on stderr why when tasks were left unrun unasked.
pub fn finish(summary: &Summary) -> ExitCode {
    let code = exit_code(summary);
    if code == exit::ERROR {
        say!(
            "error: {} of {} tasks were not run: the workload changed while it ran",
            summary.not_run,
            summary.tasks
        );
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cloudkon_core::Stats;

    use super::*;

    #[test]
    fn tasks_not_run_unasked_are_an_error() {
        let summary = |interrupted| Stats::new().summary(3, 1, Duration::from_secs(1), interrupted);
        assert_eq!(exit_code(&summary(true)), exit::INTERRUPTED);
        assert_eq!(exit_code(&summary(false)), exit::ERROR);
        assert_eq!(
            exit_code(&Stats::new().summary(0, 1, Duration::from_secs(1), false)),
            0
        );
    }
}
