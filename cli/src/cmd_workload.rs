//! `cloudkon workload`: generate the seed experiments' workloads, check a file.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use cloudkon_core::workload;

use crate::{exit, report};

#[derive(Debug, clap::Subcommand)]
pub enum WorkloadCommand {
    /// Print COUNT lines of `sleep MS` (the seed systems' benchmark task).
    Sleep {
        /// Milliseconds each task sleeps.
        #[arg(long)]
        ms: u64,
        /// Number of tasks.
        #[arg(long)]
        count: u64,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print COUNT lines of `run PROGRAM ARGS...`; `{i}` in an argument becomes
    /// the task's number (0, 1, ...), for parameter sweeps.
    Run {
        /// Number of tasks.
        #[arg(long)]
        count: u64,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]...")]
        command: Vec<String>,
    },
    /// Check a workload file: report every malformed line, or count its tasks.
    Check { workload: PathBuf },
}

pub fn run(command: WorkloadCommand) -> Result<ExitCode> {
    match command {
        WorkloadCommand::Sleep { ms, count, output } => {
            write_to(output, |w| workload::write_sleep_workload(w, ms, count))
        }
        WorkloadCommand::Run {
            count,
            output,
            command,
        } => write_to(output, |w| workload::write_run_workload(w, &command, count)),
        WorkloadCommand::Check { workload: path } => match workload::validate_file(&path) {
            // What `run` and `submit` refuse is not a valid workload either.
            Ok(stats) if stats.tasks == 0 => {
                say!("error: {}: no tasks in this workload", path.display());
                Ok(ExitCode::from(exit::USAGE))
            }
            Ok(stats) => {
                println!(
                    "{}: {} ({} sleep, {} run, {} animoto)",
                    path.display(),
                    cloudkon_core::summary::counted(stats.tasks, "task"),
                    stats.sleep,
                    stats.run,
                    stats.animoto
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                for e in &errors {
                    say!("error: {e}");
                }
                if errors.len() >= workload::MAX_REPORTED_ERRORS {
                    say!("(stopped after {} errors)", errors.len());
                }
                Ok(ExitCode::from(exit::USAGE))
            }
        },
    }
}

/// Writes the generated workload to `output` or stdout. A file is written
/// beside its name and renamed over it once whole: a refused input (`run` with
/// no program) or a failure midway (a full disk) leaves an existing file as it
/// was, not emptied or cut short to fewer tasks.
fn write_to(
    output: Option<PathBuf>,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<ExitCode> {
    let Some(path) = output else {
        // `cloudkon workload ... | head` is fine.
        return write_straight(io::stdout().lock(), write, "the workload to stdout", true);
    };
    if std::fs::metadata(&path).is_ok_and(|meta| !meta.is_file() && !meta.is_dir()) {
        // A device or a pipe (`-o /dev/stdout`, a FIFO): nothing in it to keep,
        // and nothing to rename over it.
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        return write_straight(file, write, &path.display().to_string(), false);
    }
    if let Some(message) = report::not_a_file("-o", &path) {
        say!("error: {message}");
        return Ok(ExitCode::from(exit::USAGE));
    }
    let mut out = BufWriter::new(report::temp_beside(&path)?);
    let written = write(&mut out).and_then(|()| out.into_inner().map_err(|e| e.into_error()));
    match written {
        Ok(temp) => report::persist(temp, &path)?,
        // The temporary file goes with `out`.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => return refused(&e, Some(&path)),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot write {} (left as it was)", path.display()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the workload straight into `out`, named `what` in an error; a
/// reader gone (`BrokenPipe`) is no error when `reader_may_leave`.
fn write_straight(
    out: impl Write,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    what: &str,
    reader_may_leave: bool,
) -> Result<ExitCode> {
    let mut out = BufWriter::new(out);
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if reader_may_leave && e.kind() == io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => refused(&e, None),
        other => {
            other.with_context(|| format!("cannot write {what}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A workload the generator refuses to write (`run` with no program): bad usage.
fn refused(e: &io::Error, path: Option<&Path>) -> Result<ExitCode> {
    match path {
        Some(path) => say!("error: {e}: nothing written to {}", path.display()),
        None => say!("error: {e}"),
    }
    Ok(ExitCode::from(exit::USAGE))
}
