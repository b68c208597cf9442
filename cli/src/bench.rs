//! `cloudkon bench local`: the embedded engine's figures on this machine, each
//! measured by running `cloudkon run` itself as a child process (so that memory
//! and start-up are counted as a user would see them), with references measured
//! in the same run.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cloudkon_core::Summary;
use cloudkon_core::workload;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The embedded engine: `sleep 0` throughput and memory, `run true` against
    /// `xargs -P`, and efficiency of 100 ms tasks.
    Local(LocalArgs),
}

#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// `sleep 0` tasks for the throughput and memory figures.
    #[arg(long, default_value_t = 1_000_000)]
    sleep_tasks: u64,
    /// `run true` tasks for the spawn figure (and as many `true`s for xargs).
    #[arg(long, default_value_t = 2000)]
    spawn_tasks: u64,
    /// Slots for the spawn figure (xargs gets the same -P).
    #[arg(long, default_value_t = 2)]
    spawn_slots: u32,
    /// Repetitions of the spawn comparison; the best of each side is kept.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

pub fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Local(args) => local(&args).map(|()| ExitCode::SUCCESS),
    }
}

fn local(args: &LocalArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
    let mut rows = Vec::new();

    // 1. sleep 0: hand-off cost, and memory for a long workload.
    let path = dir.path().join("sleep0.txt");
    write_workload(&path, |w| {
        workload::write_sleep_workload(w, 0, args.sleep_tasks)
    })?;
    let (summary, wall) = cloudkon_run(&path, &["--workers", "2"])?;
    ensure!(
        summary.succeeded == args.sleep_tasks,
        "sleep 0 run lost tasks: {summary:?}"
    );
    rows.push(Row::new(
        format!("sleep 0 x {}: engine throughput", args.sleep_tasks),
        format!("{:.0} tasks/s", summary.throughput),
        ">= 1,000,000 tasks/s",
        summary.throughput >= 1_000_000.0,
    ));
    rows.push(Row::info(
        format!(
            "sleep 0 x {}: whole command (parse twice, run)",
            args.sleep_tasks
        ),
        format!(
            "{:.3} s, {:.0} tasks/s",
            wall.as_secs_f64(),
            args.sleep_tasks as f64 / wall.as_secs_f64()
        ),
    ));
    let rss = summary.peak_rss_bytes.context("no peak RSS reported")? as f64 / (1024.0 * 1024.0);
    rows.push(Row::new(
        format!("sleep 0 x {}: peak RSS", args.sleep_tasks),
        format!("{rss:.1} MiB"),
        "<= 64 MiB",
        rss <= 64.0,
    ));

    // 2. run true: process spawning against xargs -P, alternated, best of rounds.
    let path = dir.path().join("true.txt");
    let argv = vec!["true".to_string()];
    write_workload(&path, |w| {
        workload::write_run_workload(w, &argv, args.spawn_tasks)
    })?;
    let slots = args.spawn_slots.to_string();
    let (mut ours, mut xargs) = (Duration::MAX, Duration::MAX);
    for _ in 0..args.rounds.max(1) {
        let (summary, wall) = cloudkon_run(&path, &["--workers", &slots])?;
        ensure!(
            summary.succeeded == args.spawn_tasks,
            "run true lost tasks: {summary:?}"
        );
        ours = ours.min(wall);
        xargs = xargs.min(xargs_true(args.spawn_tasks, &slots)?);
    }
    let (ours_rate, xargs_rate) = (rate(args.spawn_tasks, ours), rate(args.spawn_tasks, xargs));
    let ratio = ours_rate / xargs_rate;
    rows.push(Row::info(
        format!("run true x {} on {slots} slots", args.spawn_tasks),
        format!("{ours_rate:.0} tasks/s (xargs -P {slots} -n 1 true: {xargs_rate:.0}/s)"),
    ));
    rows.push(Row::new(
        "run true: ratio to xargs".to_string(),
        format!("{ratio:.2}x"),
        ">= 0.9x",
        ratio >= 0.9,
    ));

    // 3. Efficiency: 8 slots x 20 tasks of 100 ms, ideal 2 s.
    let path = dir.path().join("sleep100.txt");
    write_workload(&path, |w| workload::write_sleep_workload(w, 100, 160))?;
    let (summary, _) = cloudkon_run(&path, &["--workers", "8"])?;
    ensure!(
        summary.succeeded == 160,
        "efficiency run lost tasks: {summary:?}"
    );
    rows.push(Row::new(
        "sleep 100 x 160 on 8 slots: efficiency".to_string(),
        format!(
            "{:.2}% (wall {:.3} s, ideal 2.000 s)",
            summary.efficiency * 100.0,
            summary.wall_seconds
        ),
        ">= 99%",
        summary.efficiency >= 0.99,
    ));

    print_rows(&rows);
    Ok(())
}

fn rate(tasks: u64, wall: Duration) -> f64 {
    tasks as f64 / wall.as_secs_f64()
}

fn write_workload(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    write(&mut out)?;
    out.flush()?;
    Ok(())
}

/// Runs `cloudkon run FILE --json ARGS` and returns its summary and wall time.
fn cloudkon_run(workload: &Path, extra: &[&str]) -> Result<(Summary, Duration)> {
    let exe = std::env::current_exe().context("cannot find the cloudkon executable")?;
    let start = Instant::now();
    let output = Command::new(exe)
        .arg("run")
        .arg(workload)
        .arg("--json")
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cloudkon run")?;
    let wall = start.elapsed();
    if !output.status.success() {
        bail!(
            "cloudkon run {} failed: {}",
            workload.display(),
            output.status
        );
    }
    let summary =
        serde_json::from_slice(&output.stdout).context("cannot read the run's JSON summary")?;
    Ok((summary, wall))
}

/// `xargs -P slots -n 1 true` over `tasks` arguments.
fn xargs_true(tasks: u64, slots: &str) -> Result<Duration> {
    use std::io::Write;
    let start = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", slots, "-n", "1", "true"])
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start xargs")?;
    {
        let mut stdin = child.stdin.take().context("xargs stdin")?;
        stdin.write_all("x\n".repeat(tasks as usize).as_bytes())?;
    }
    let status = child.wait()?;
    ensure!(status.success(), "xargs failed: {status}");
    Ok(start.elapsed())
}

struct Row {
    what: String,
    figure: String,
    target: &'static str,
    met: Option<bool>,
}

impl Row {
    fn new(what: String, figure: String, target: &'static str, met: bool) -> Self {
        Self {
            what,
            figure,
            target,
            met: Some(met),
        }
    }

    fn info(what: String, figure: String) -> Self {
        Self {
            what,
            figure,
            target: "",
            met: None,
        }
    }
}

fn print_rows(rows: &[Row]) {
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    println!(
        "cloudkon bench local ({} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for row in rows {
        let verdict = match row.met {
            Some(true) => format!("  [target {}: met]", row.target),
            Some(false) => format!("  [target {}: MISSED]", row.target),
            None => String::new(),
        };
        println!("{:width$}  {}{verdict}", row.what, row.figure);
    }
}
