//! `cloudkon workload`: generate the seed experiments' workloads, check a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cloudkon_core::workload;

use crate::exit;

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
                eprintln!("error: {}: no tasks in this workload", path.display());
                Ok(ExitCode::from(exit::USAGE))
            }
            Ok(stats) => {
                println!(
                    "{}: {} tasks ({} sleep, {} run, {} animoto)",
                    path.display(),
                    stats.tasks,
                    stats.sleep,
                    stats.run,
                    stats.animoto
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                if errors.len() >= workload::MAX_REPORTED_ERRORS {
                    eprintln!("(stopped after {} errors)", errors.len());
                }
                Ok(ExitCode::from(exit::USAGE))
            }
        },
    }
}

fn write_to(
    output: Option<PathBuf>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<ExitCode> {
    match output {
        Some(path) => {
            let file =
                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = BufWriter::new(file);
            write(&mut out)
                .and_then(|()| out.flush())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            match write(&mut out).and_then(|()| out.flush()) {
                // `cloudkon workload ... | head` is fine.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("cannot write the workload to stdout")?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
