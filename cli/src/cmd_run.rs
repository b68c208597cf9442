//! `cloudkon run`: a workload on this machine, with the embedded engine.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use cloudkon_core::workload::{self, WorkloadReader};
use cloudkon_core::{BatchId, Summary};
use cloudkon_worker::{
    AnimotoConfig, AnimotoExecutor, EmbeddedConfig, PoolConfig, Progress, Registry, Shutdown,
    run_embedded,
};

use crate::{exit, memory, progress, signals};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 all tasks succeeded, 1 some task failed or timed out, \
2 bad usage or a malformed workload (nothing ran), 3 the run could not go on, \
130 interrupted (Ctrl-C or SIGTERM: the first stops taking tasks, the second abandons running ones)."
)]
pub struct RunArgs {
    /// The workload file (see `cloudkon --help` for its format).
    pub workload: PathBuf,

    /// Concurrent worker slots [default: the number of CPUs].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub workers: Option<u32>,

    /// Write every task's result to this file, one JSON object a line.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print the summary as JSON on stdout (and no progress display).
    #[arg(long)]
    pub json: bool,

    /// Per-task timeout, e.g. `30s` or `500ms`; a task's own `timeout_ms` wins.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Bytes of stdout and of stderr kept per task (the last ones).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub output_bytes: usize,

    /// The batch's name in results [default: the workload's file name and the time].
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,

    /// Where `animoto` tasks put their videos (`<batch>-<id>.mp4`), unless a task
    /// names its own `output`.
    #[arg(long, value_name = "DIR", default_value = "animoto-out")]
    pub animoto_out: PathBuf,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let stats = match workload::validate_file(&args.workload) {
        Ok(stats) => stats,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            if errors.len() >= workload::MAX_REPORTED_ERRORS {
                eprintln!("(stopped after {} errors)", errors.len());
            }
            eprintln!("nothing was run: fix the workload and try again");
            return Ok(ExitCode::from(exit::USAGE));
        }
    };
    if stats.tasks == 0 {
        eprintln!(
            "error: {}: no tasks in this workload",
            args.workload.display()
        );
        return Ok(ExitCode::from(exit::USAGE));
    }
    let registry = Registry::new().with_animoto(Arc::new(AnimotoExecutor::new(AnimotoConfig {
        output_dir: args.animoto_out.clone(),
        ..AnimotoConfig::default()
    })));
    // Only what the workload uses is checked: no ffmpeg is needed for sleep and run.
    if stats.animoto > 0
        && let Err(e) = registry.check()
    {
        anyhow::bail!("cannot run animoto tasks: {e}");
    }
    let results_file = match &args.output {
        Some(path) => Some(
            File::create(path)
                .with_context(|| format!("cannot create results file {}", path.display()))?,
        ),
        None => None,
    };
    let slots = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let batch = args
        .batch
        .clone()
        .unwrap_or_else(|| default_batch_name(&args.workload));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cloudkon-slot")
        .build()
        .context("cannot start the async runtime")?;
    let reader = WorkloadReader::open(&args.workload)?;
    let writer = results_file.map(|f| Arc::new(Mutex::new(BufWriter::with_capacity(1 << 20, f))));
    let on_result = {
        let writer = writer.clone();
        move |result: &cloudkon_core::TaskResult| -> std::io::Result<()> {
            if let Some(w) = &writer {
                let mut w = w.lock().expect("results writer lock");
                serde_json::to_writer(&mut *w, result)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        }
    };
    let config = EmbeddedConfig::new(
        PoolConfig {
            slots,
            worker_id: "local".into(),
            default_timeout: args.timeout,
            output_bytes: args.output_bytes,
        },
        BatchId::new(batch),
    );

    let (mut summary, failure) = runtime.block_on(async {
        let shutdown = Shutdown::new();
        let signals = signals::spawn_handler(shutdown.clone()).context("cannot handle signals")?;
        let progress = Arc::new(Progress::default());
        let display = progress::Display::start(stats.tasks, progress.clone(), args.json);
        let run = run_embedded(
            reader,
            stats.tasks,
            config,
            Arc::new(registry),
            on_result,
            progress,
            shutdown,
        )
        .await;
        display.finish().await;
        signals.abort();
        anyhow::Ok((run.summary, run.failure))
    })?;
    // Flushing can fail too (a full disk): that is a failed run, not a footnote.
    let flushed = match &writer {
        Some(w) => w.lock().expect("results writer lock").flush(),
        None => Ok(()),
    };
    summary.peak_rss_bytes = memory::peak_rss_bytes();
    print_summary(&summary, args.json)?;
    if let Some(failure) = failure {
        eprintln!("error: {failure}");
        return Ok(ExitCode::from(exit::ERROR));
    }
    if let Err(e) = flushed {
        eprintln!("error: cannot write results: {e}");
        return Ok(ExitCode::from(exit::ERROR));
    }
    if let Some(path) = &args.output
        && !args.json
    {
        println!("results in {}", path.display());
    }
    Ok(ExitCode::from(exit_code(&summary)))
}

fn exit_code(summary: &Summary) -> u8 {
    if summary.interrupted {
        exit::INTERRUPTED
    } else if summary.failed + summary.timed_out > 0 {
        exit::TASKS_FAILED
    } else {
        0
    }
}

fn print_summary(summary: &Summary, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, summary)?;
        writeln!(out)?;
    } else {
        write!(out, "{summary}")?;
    }
    Ok(())
}

fn default_batch_name(workload: &std::path::Path) -> String {
    let stem = workload
        .file_stem()
        .map_or("batch".into(), |s| s.to_string_lossy().into_owned());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{stem}-{secs}")
}
