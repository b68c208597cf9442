//! What a run of `cloudkon run` or `cloudkon submit` ends with: its summary
//! on stdout and its exit status.

use std::io::Write;

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
    } else if summary.failed + summary.timed_out > 0 {
        exit::TASKS_FAILED
    } else {
        0
    }
}
