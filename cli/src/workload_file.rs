//! What `cloudkon run` and `cloudkon submit` share: checking the workload before
//! anything runs, the results file, the summary and the exit status.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cloudkon_core::workload::{self, WorkloadStats};
use cloudkon_core::{Summary, TaskResult};

use crate::exit;

/// The flags `run` and `submit` share: where results go, and the batch.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Write every task's result to this file, one JSON object a line.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print the summary as JSON on stdout (and no progress display).
    #[arg(long)]
    pub json: bool,

    /// Per-task timeout, e.g. `30s` or `500ms`; a task's own `timeout_ms` wins.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// The batch's name in results [default: the workload's file name and the time].
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
}

impl BatchArgs {
    /// `--batch`, or a name made from the workload's file name and the time.
    pub fn batch_name(&self, workload: &Path) -> String {
        self.batch
            .clone()
            .unwrap_or_else(|| default_batch_name(workload))
    }
}

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

/// The results file: JSON Lines, shared by whoever collects results.
#[derive(Clone)]
pub struct ResultsWriter(Arc<Mutex<BufWriter<File>>>);

impl ResultsWriter {
    pub fn write(&mut self, result: &TaskResult) -> std::io::Result<()> {
        let mut w = self.0.lock().expect("results writer lock");
        serde_json::to_writer(&mut *w, result)?;
        w.write_all(b"\n")
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.lock().expect("results writer lock").flush()
    }
}

/// Creates the results file before anything runs, so that a bad path costs nothing.
pub fn create_results(path: Option<&Path>) -> Result<Option<ResultsWriter>> {
    path.map(|path| {
        let file = File::create(path)
            .with_context(|| format!("cannot create results file {}", path.display()))?;
        Ok(ResultsWriter(Arc::new(Mutex::new(
            BufWriter::with_capacity(1 << 20, file),
        ))))
    })
    .transpose()
}

/// Flushing can fail too (a full disk): that is a failed run, not a footnote.
pub fn flush_results(writer: Option<&ResultsWriter>) -> std::io::Result<()> {
    writer.map_or(Ok(()), ResultsWriter::flush)
}

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

pub fn exit_code(summary: &Summary) -> u8 {
    if summary.interrupted {
        exit::INTERRUPTED
    } else if summary.failed + summary.timed_out > 0 {
        exit::TASKS_FAILED
    } else {
        0
    }
}

fn default_batch_name(workload: &Path) -> String {
    let stem = workload
        .file_stem()
        .map_or("batch".into(), |s| s.to_string_lossy().into_owned());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{stem}-{secs}")
}
