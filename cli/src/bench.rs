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
    /// The Animoto task: one 60-image 1080p video against bare ffmpeg making the
    /// same video from the same files, then 16 such tasks on 2 slots.
    Animoto(AnimotoArgs),
    /// The distributed path: `sleep 0` tasks through SQS and DynamoDB with
    /// `cloudkon-worker` processes, dedup on and off: throughput, AWS requests
    /// per task by API, cost per million tasks.
    Sqs(crate::bench_sqs::SqsArgs),
    /// A TaskBatch's longest-first send order over a workload file of tasks
    /// of many declared lengths: its reads (one to count the classes, one
    /// per class) against one plain read, in the operator's CPU.
    Order(OrderArgs),
    /// The main path, `kubectl apply` of TaskBatches through the operator to
    /// `cloudkon-worker`s, against `cloudkon submit` and `cloudkon run` of the
    /// same tasks: runs `cloudkon-operator bench` (next to this binary) with
    /// these arguments (`cloudkon bench taskbatch --help` shows them). Needs
    /// a cluster and the AWS servers, e.g.
    ///
    ///   source "$(scripts/control-plane up)"; source "$(scripts/aws-servers up)"
    ///   cloudkon bench taskbatch --only run,efficiency
    #[command(disable_help_flag = true, verbatim_doc_comment)]
    Taskbatch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, clap::Args)]
pub struct OrderArgs {
    /// Lines of the workload: sleeps and runs with `expected_ms` in turn,
    /// of lengths spread over 1 ms to half an hour.
    #[arg(long, default_value_t = 1_000_000)]
    lines: u64,
}

#[derive(Debug, clap::Args)]
pub struct AnimotoArgs {
    /// Images per video (one second each).
    #[arg(long, default_value_t = 60)]
    images: u32,
    /// Tasks in the throughput run.
    #[arg(long, default_value_t = 16)]
    tasks: u32,
    /// Slots for the throughput run.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Repetitions of the single-video comparison; the best of each side is kept.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
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
        BenchCommand::Animoto(args) => animoto(&args).map(|()| ExitCode::SUCCESS),
        BenchCommand::Sqs(args) => crate::bench_sqs::run(&args).map(|()| ExitCode::SUCCESS),
        BenchCommand::Order(args) => order(&args).map(|()| ExitCode::SUCCESS),
        BenchCommand::Taskbatch { args } => crate::operator_exec::run("bench", &args),
    }
}

fn order(args: &OrderArgs) -> Result<()> {
    use workload::{SendOrder, Wanted, WorkloadReader};
    let mut text = String::new();
    // A fixed xorshift: the same workload every run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..args.lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ms = (x % 1_800_000) >> (x % 21);
        if i % 2 == 0 {
            text.push_str(&format!(
                "{{\"kind\":\"run\",\"program\":\"sim\",\"args\":[\"{i}\"],\"expected_ms\":{ms}}}\n"
            ));
        } else {
            text.push_str(&format!("sleep {ms}\n"));
        }
    }
    let bytes = text.as_bytes();
    let read = || WorkloadReader::new(bytes, "bench");
    let started = Instant::now();
    let plain = read().count() as u64;
    let one = started.elapsed();
    let started = Instant::now();
    let (order, items) = SendOrder::longest_first(read());
    let counted = started.elapsed();
    let started = Instant::now();
    let open = |skip: u64, wanted: Option<Wanted>| {
        match wanted {
            Some(w) => read().only(move |id| w.contains(id)),
            None => read(),
        }
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
    };
    let mut sent = 0u64;
    for task in order.tasks_from(open, 0) {
        task.context("the bench's own workload")?;
        sent += 1;
    }
    let passes = started.elapsed();
    ensure!(
        plain == args.lines && items == args.lines && sent == args.lines,
        "lost tasks: {plain} read, {items} counted, {sent} sent of {}",
        args.lines
    );
    println!(
        "longest first over {} lines ({:.1} MiB): one plain read {:.2} s; counting the classes {:.2} s; sending every task in {} classes {:.2} s = {:.1} plain reads",
        args.lines,
        bytes.len() as f64 / f64::from(1 << 20),
        one.as_secs_f64(),
        counted.as_secs_f64(),
        order.passes().len(),
        passes.as_secs_f64(),
        passes.as_secs_f64() / one.as_secs_f64().max(1e-9),
    );
    Ok(())
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

    print_rows("local", &rows);
    Ok(())
}

/// One Animoto task against bare ffmpeg with the executor's own settings (the
/// same filter graph and encoder options, from the same local files), with the
/// images downloaded from a loopback HTTP server and then as file:// URLs; then
/// a batch on a few slots against the ideal of bare ffmpeg times spread over them.
fn animoto(args: &AnimotoArgs) -> Result<()> {
    use cloudkon_worker::exec::animoto::{
        DEFAULT_HEIGHT, DEFAULT_WIDTH, EncodePlan, Orientation, check_ffmpeg,
    };
    use cloudkon_worker::loopback_http::LoopbackServer;

    check_ffmpeg(Path::new("ffmpeg")).map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
    let images = dir.path().join("images");
    std::fs::create_dir(&images)?;
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=size={DEFAULT_WIDTH}x{DEFAULT_HEIGHT}:rate=1"
        ))
        .args(["-frames:v", &args.images.to_string()])
        .arg(images.join("img-%03d.jpg"))
        .status()
        .context("cannot run ffmpeg to make the images")?;
    ensure!(
        status.success(),
        "ffmpeg could not make the images: {status}"
    );
    let names: Vec<String> = (1..=args.images)
        .map(|i| format!("img-{i:03}.jpg"))
        .collect();

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let server = runtime.block_on(LoopbackServer::serve_dir(images.clone()))?;
    let line = |url: &dyn Fn(&str) -> String| {
        let urls: Vec<String> = names.iter().map(|n| url(n)).collect();
        format!("animoto {}\n", urls.join(" "))
    };
    let http_line = line(&|n| server.url(n));
    let file_line = line(&|n| format!("file://{}", images.join(n).display()));
    let (http, file, batch) = (
        dir.path().join("http.txt"),
        dir.path().join("file.txt"),
        dir.path().join("batch.txt"),
    );
    std::fs::write(&http, &http_line)?;
    std::fs::write(&file, &file_line)?;
    std::fs::write(&batch, http_line.repeat(args.tasks as usize))?;

    // Bare ffmpeg: the executor's command, run directly in the images' directory.
    let plan = EncodePlan {
        width: DEFAULT_WIDTH,
        height: DEFAULT_HEIGHT,
        seconds_per_image: 1,
        frame_rate: cloudkon_worker::AnimotoConfig::default().frame_rate,
    };
    let graph = dir.path().join("graph.txt");
    // The generated images carry no EXIF orientation.
    let upright = vec![Orientation::UPRIGHT; names.len()];
    std::fs::write(&graph, plan.filter_graph(&names, &upright))?;
    let bare_video = dir.path().join("bare.mp4");
    let bare = || -> Result<Duration> {
        let start = Instant::now();
        let status = Command::new("ffmpeg")
            .args(plan.ffmpeg_args(names.len(), &graph, &bare_video))
            .current_dir(&images)
            .status()
            .context("cannot run ffmpeg")?;
        ensure!(status.success(), "bare ffmpeg failed: {status}");
        Ok(start.elapsed())
    };
    let out = dir.path().join("videos");
    let task_time = |workload: &Path| -> Result<Duration> {
        let results = dir.path().join("results.jsonl");
        let (summary, _) = cloudkon_run(
            workload,
            &[
                "--workers",
                "1",
                "--animoto-out",
                &out.to_string_lossy(),
                "--output",
                &results.to_string_lossy(),
            ],
        )?;
        ensure!(
            summary.succeeded == 1,
            "the animoto task failed: {summary:?}"
        );
        let text = std::fs::read_to_string(&results)?;
        let result: cloudkon_core::TaskResult =
            serde_json::from_str(text.lines().next().context("no result")?)?;
        Ok(result.run_time())
    };

    let (mut best_bare, mut best_http, mut best_file) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..args.rounds.max(1) {
        best_bare = best_bare.min(bare()?);
        best_http = best_http.min(task_time(&http)?);
        best_file = best_file.min(task_time(&file)?);
    }
    let overhead = |t: Duration| (t.as_secs_f64() / best_bare.as_secs_f64() - 1.0) * 100.0;
    let video = format!("{} images -> {} s 1080p", args.images, args.images);
    let mut rows = vec![Row::info(
        format!("bare ffmpeg, {video}"),
        format!("{:.3} s", best_bare.as_secs_f64()),
    )];
    rows.push(Row::new(
        "one task, images over loopback HTTP".to_string(),
        format!(
            "{:.3} s ({:+.1}% over bare ffmpeg)",
            best_http.as_secs_f64(),
            overhead(best_http)
        ),
        "<= +10%",
        overhead(best_http) <= 10.0,
    ));
    rows.push(Row::info(
        "one task, file:// images".to_string(),
        format!(
            "{:.3} s ({:+.1}% over bare ffmpeg)",
            best_file.as_secs_f64(),
            overhead(best_file)
        ),
    ));

    let slots = args.slots.to_string();
    let (summary, _) = cloudkon_run(
        &batch,
        &["--workers", &slots, "--animoto-out", &out.to_string_lossy()],
    )?;
    ensure!(
        summary.succeeded == u64::from(args.tasks),
        "the animoto batch lost tasks: {summary:?}"
    );
    let ideal = best_bare.as_secs_f64() * f64::from(args.tasks) / f64::from(args.slots.max(1));
    rows.push(Row::info(
        format!("{} tasks on {slots} slots (HTTP)", args.tasks),
        format!(
            "{:.3} s, efficiency {:.1}% (ideal {ideal:.3} s = {} x bare / {slots} slots)",
            summary.wall_seconds,
            ideal / summary.wall_seconds * 100.0,
            args.tasks
        ),
    ));
    drop(server);
    print_rows("animoto", &rows);
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
pub(crate) fn cloudkon_run(workload: &Path, extra: &[&str]) -> Result<(Summary, Duration)> {
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

fn print_rows(bench: &str, rows: &[Row]) {
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    println!(
        "cloudkon bench {bench} ({} CPUs)",
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
