//! `cloudkon run`: a workload on this machine, with the embedded engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cloudkon_core::BatchId;
use cloudkon_core::workload::WorkloadReader;
use cloudkon_worker::exec::animoto::{
    AddressPolicy, S3ObjectStore, check_output, parse_presign_expiry,
};
use cloudkon_worker::{
    AnimotoConfig, AnimotoExecutor, EmbeddedConfig, PoolConfig, Progress, Registry, Shutdown,
    run_embedded,
};

use crate::{batch_args, exit, memory, outcome, progress, results_file, signals, workload_file};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 all tasks succeeded, 1 some task failed or timed out, \
2 bad usage or a malformed workload (nothing ran), 3 the run could not go on, \
130 interrupted (Ctrl-C, SIGTERM or SIGHUP: the first stops taking tasks, the second abandons running ones)."
)]
pub struct RunArgs {
    /// The workload file (see `cloudkon --help` for its format).
    pub workload: PathBuf,

    #[command(flatten)]
    pub common: batch_args::BatchArgs,

    /// Concurrent worker slots, at most one per task [default: the number of CPUs].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub workers: Option<u32>,

    /// Executions of a failing task, the first included (1: no retry).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Wait before the first retry of a failed task; doubled for each further one.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,

    /// Bytes of stdout and of stderr kept per task (the last ones).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub output_bytes: usize,

    /// Where `animoto` tasks put their videos (`<batch>-<id>.mp4`), unless a task
    /// names its own `output`: a local directory or `s3://bucket/prefix`.
    #[arg(long, value_name = "DIR|S3URI", default_value = "animoto-out")]
    pub animoto_out: String,

    /// How long the presigned HTTPS URLs of videos put in S3 work (results'
    /// `artifact_url`); at most 7 days, S3's limit.
    #[arg(long, value_name = "DURATION", env = "CLOUDKON_PRESIGN_EXPIRY", default_value = "7d", value_parser = parse_presign_expiry)]
    pub presign_expiry: Duration,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let stats = match workload_file::validate(
        &args.workload,
        args.common.output.as_deref(),
        workload_file::Destination::Memory,
    ) {
        Ok(stats) => stats,
        Err(code) => return Ok(code),
    };
    if let Err(e) = check_output(&args.animoto_out) {
        say!("error: --animoto-out: {e}");
        return Ok(ExitCode::from(exit::USAGE));
    }
    // The S3 client is made when the first s3:// URL comes: runs that never
    // touch S3 need no AWS configuration.
    let animoto = AnimotoExecutor::new(AnimotoConfig {
        output: args.animoto_out.clone(),
        // One's own machine and one's own tasks: images may come from
        // anywhere it reaches, loopback and the private network included.
        addresses: AddressPolicy::allow_all(),
        ..AnimotoConfig::default()
    })
    .with_object_store(Arc::new(S3ObjectStore::lazy(args.presign_expiry)));
    let registry = Registry::new().with_animoto(Arc::new(animoto));
    // Only what the workload uses is checked: no ffmpeg is needed for sleep and run.
    if stats.animoto > 0
        && let Err(e) = registry.check()
    {
        anyhow::bail!("cannot run animoto tasks: {e}");
    }
    let writer = results_file::create_results(args.common.output.as_deref())?;
    // No more slots than tasks: a slot costs memory whether or not it ever
    // runs one (-w 100000 over 10,000 tasks took 2 GB).
    let slots = args
        .workers
        .map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n as usize,
        )
        .min(usize::try_from(stats.tasks).unwrap_or(usize::MAX))
        .max(1);
    let batch = args.common.batch_name(&args.workload);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cloudkon-slot")
        .build()
        .context("cannot start the async runtime")?;
    let reader = WorkloadReader::open(&args.workload)?;
    let on_result = {
        let mut writer = writer.clone();
        move |result: &cloudkon_core::TaskResult| -> std::io::Result<()> {
            match writer.as_mut() {
                Some(w) => w.write(result),
                None => Ok(()),
            }
        }
    };
    let mut pool = PoolConfig::new(slots, "local");
    pool.default_timeout = args.common.timeout;
    pool.output_bytes = args.output_bytes;
    pool.max_attempts = args.max_attempts;
    pool.retry_backoff = args.retry_backoff;
    let config = EmbeddedConfig::new(pool, BatchId::new(batch));

    let (mut summary, failure) = runtime.block_on(async {
        let shutdown = Shutdown::new();
        let signals = signals::spawn_handler(shutdown.clone()).context("cannot handle signals")?;
        let progress = Arc::new(Progress::default());
        let display = progress::Display::start(stats.tasks, progress.clone(), args.common.json);
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
    let flushed = results_file::flush_results(writer.as_ref());
    summary.peak_rss_bytes = memory::peak_rss_bytes();
    outcome::print_summary(&summary, args.common.json)?;
    if let Some(failure) = failure {
        say!("error: {failure}");
        return Ok(ExitCode::from(exit::ERROR));
    }
    if let Err(e) = flushed {
        say!("error: cannot write results: {e}");
        return Ok(ExitCode::from(exit::ERROR));
    }
    if let Some(path) = &args.common.output
        && !args.common.json
    {
        println!("results in {}", path.display());
    }
    Ok(outcome::finish(&summary))
}
