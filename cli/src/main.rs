//! `cloudkon`: run many-task workloads on this machine, or (later) in the cloud.

/// `eprintln!` that does not panic when stderr is closed (`2>&1 | head`): a
/// message no one reads, rather than exit 101 in place of the command's own.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod batch_args;
mod bench;
mod bench_sqs;
mod cmd_queue;
mod cmd_run;
mod cmd_submit;
mod cmd_workload;
mod memory;
mod operator_exec;
mod outcome;
mod progress;
mod report;
mod results_file;
mod same_file;
mod signals;
mod temp_outputs;
mod workload_file;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cloudkon_worker::logging::LogFormat;

/// CloudKon runs huge batches of small tasks: parameter sweeps, media jobs,
/// many-task science.
///
/// Start here, with no cloud and no cluster:
///
///   cloudkon workload sleep --ms 0 --count 100000 -o sleep0.txt
///   cloudkon run sleep0.txt
///
/// A workload is a text file with one task a line: `sleep MS`, `run PROGRAM
/// [ARGS...]` (split like a shell would, but no shell runs), `animoto URL...`, or
/// a JSON object such as {"kind":"run","program":"echo","args":["hi"],"timeout_ms":5000}.
/// Blank lines and lines starting with # are ignored.
#[derive(Debug, Parser)]
#[command(name = "cloudkon", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Log format on stderr (logs are filtered by RUST_LOG, default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CLOUDKON_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workload on this machine with the embedded engine (in-memory queue and
    /// a pool of worker slots).
    Run(cmd_run::RunArgs),
    /// Send a workload to remote workers through an SQS queue and wait for its
    /// results (the distributed path: see `cloudkon-worker --help`).
    Submit(cmd_submit::SubmitArgs),
    /// Create, inspect, purge or delete request queues.
    #[command(subcommand)]
    Queue(cmd_queue::QueueCommand),
    /// List the workers by their heartbeat rows in the ledger.
    Workers(cmd_queue::WorkersArgs),
    /// Generate or check workload files.
    #[command(subcommand)]
    Workload(cmd_workload::WorkloadCommand),
    /// Make a results file into one HTML page (timeline per slot, throughput,
    /// latency histograms, failures) and a Chrome trace for Perfetto.
    Report(report::ReportArgs),
    /// Measure this machine: throughput, spawn cost against xargs, efficiency, memory.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// TaskBatches on a Kubernetes cluster, found as kubectl finds it: submit
    /// a workload file, watch a batch, merge its results, cancel, list. Runs
    /// `cloudkon-operator batch` (next to this binary); `cloudkon batch
    /// --help` lists its commands.
    ///
    ///   cloudkon batch submit sweep.txt --pool default --watch
    ///   cloudkon batch results sweep -o sweep.jsonl
    #[command(disable_help_flag = true, verbatim_doc_comment)]
    Batch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Simulate a pool and its batches in time-warped time with the
    /// operator's own decision code: runs `cloudkon-operator simulate` (next
    /// to this binary) with these arguments (`cloudkon simulate --help`
    /// shows them).
    ///
    ///   cloudkon simulate examples/simulations/shares-1-2-5.yaml --svg /tmp/sim
    #[command(disable_help_flag = true, verbatim_doc_comment)]
    Simulate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cloudkon_worker::logging::init(cli.log_format, "warn");
    cloudkon_worker::open_files::raise_limit();
    let result = match cli.command {
        Command::Run(args) => cmd_run::run(args),
        Command::Submit(args) => cmd_submit::run(args),
        Command::Queue(cmd) => cmd_queue::run(cmd),
        Command::Workers(args) => cmd_queue::workers(args),
        Command::Workload(cmd) => temp_outputs::remove_on_signal()
            .context("cannot watch for signals")
            .and_then(|()| cmd_workload::run(cmd)),
        Command::Report(args) => temp_outputs::remove_on_signal()
            .context("cannot watch for signals")
            .and_then(|()| report::run(args)),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Batch { args } => operator_exec::run("batch", &args),
        Command::Simulate { args } => operator_exec::run("simulate", &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Exit codes, documented in `cloudkon run --help`.
mod exit {
    /// Some task failed or timed out.
    pub const TASKS_FAILED: u8 = 1;
    /// Bad usage or a bad workload: nothing ran.
    pub const USAGE: u8 = 2;
    /// The run could not go on (results could not be written, ...).
    pub const ERROR: u8 = 3;
    /// Interrupted (Ctrl-C or SIGTERM).
    pub const INTERRUPTED: u8 = 130;
}
