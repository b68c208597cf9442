//! `cloudkon bench sqs`: tasks (`sleep 0` by default, or any workload line such
//! as `run true`) through SQS and DynamoDB with remote worker processes, with
//! and without dedup: throughput against `cloudkon run` of the same tasks on
//! as many slots (in the same run), AWS requests per task by API (counted by
//! the programs themselves), and cost per million tasks.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cloudkon_core::aws::{Aws, Prices, QueueOptions, StatsSnapshot};
use cloudkon_core::{BatchId, workload};
use cloudkon_worker::{Progress, Shutdown};

use crate::cmd_submit::{Submission, submit};

#[derive(Debug, clap::Args)]
pub struct SqsArgs {
    /// Tasks per run.
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    /// The task, as a workload line: every task of the run is this one.
    #[arg(long, default_value = "sleep 0")]
    task: String,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Slots per worker.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Milliseconds added each way to every SQS and DynamoDB call, by a
    /// delaying proxy of the bench's own in front of the local servers (a
    /// cloud region's round trip is about 5 ms each way).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The task's length in milliseconds, when known (e.g. 100 for `run sleep
    /// 0.1`): prints each path's efficiency, tasks × length / slots / wall.
    #[arg(long)]
    task_ms: Option<u64>,
    /// Which modes to run.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    modes: Modes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Modes {
    Both,
    Dedup,
    NoDedup,
}

/// Set in the bench's own child process, which runs behind the proxy.
const PROXIED_ENV: &str = "CLOUDKON_BENCH_PROXIED_DELAY_MS";

/// Starts the delaying proxies and runs the bench again behind them, as a
/// child whose AWS endpoints (and its workers') are the proxies.
fn run_behind_proxy(args: &SqsArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let delay = Duration::from_millis(args.delay_ms);
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(std::env::args_os().skip(1))
        .env(PROXIED_ENV, args.delay_ms.to_string());
    for var in ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"] {
        let url = std::env::var(var).with_context(|| {
            format!("--delay-ms needs {var} (the local servers: scripts/aws-servers up)")
        })?;
        let authority = url
            .strip_prefix("http://")
            .with_context(|| format!("{var}={url}: the bench proxies plain http:// endpoints"))?
            .trim_end_matches('/');
        let upstream: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .with_context(|| format!("{var}={url}: not host:port"))?
            .find(|a| a.ip().is_loopback())
            .with_context(|| format!("{var}={url}: the bench proxies loopback servers only"))?;
        let proxy = runtime.block_on(cloudkon_worker::delay_proxy::start(upstream, delay))?;
        command.env(var, format!("http://{proxy}"));
    }
    let status = command
        .status()
        .context("cannot run the bench behind the proxy")?;
    ensure!(
        status.success(),
        "the bench behind the proxy failed: {status}"
    );
    Ok(())
}

struct Measured {
    mode: &'static str,
    wall: Duration,
    requests: StatsSnapshot,
}

pub fn run(args: &SqsArgs) -> Result<()> {
    if args.delay_ms > 0 && std::env::var_os(PROXIED_ENV).is_none() {
        return run_behind_proxy(args);
    }
    if std::env::var_os("AWS_ENDPOINT_URL_SQS").is_none()
        && std::env::var_os("AWS_ENDPOINT_URL").is_none()
    {
        say!(
            "note: no AWS_ENDPOINT_URL_SQS: this runs against real AWS in your default region, \
             and costs money. For local servers: source \"$(scripts/aws-servers up)\""
        );
    }
    match workload::parse_line(&args.task) {
        Ok(Some(_)) => {}
        Ok(None) => bail!("--task {:?} is empty or a comment, not a task", args.task),
        Err(e) => bail!("--task {:?} is not a workload line: {e}", args.task),
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for _ in 0..args.tasks {
        writeln!(out, "{}", args.task)?;
    }
    out.flush()?;
    drop(out);
    // The embedded engine on the same slots, for the ratio.
    let slots = (args.workers * args.threads).to_string();
    let (_, embedded) = crate::bench::cloudkon_run(&path, &["--workers", &slots])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for (mode, dedup) in [("dedup on", true), ("--no-dedup", false)] {
        let wanted = match args.modes {
            Modes::Both => true,
            Modes::Dedup => dedup,
            Modes::NoDedup => !dedup,
        };
        if wanted {
            rows.push(runtime.block_on(measure(args, &path, mode, dedup))?);
        }
    }
    print(args, &rows, embedded);
    Ok(())
}

async fn measure(args: &SqsArgs, path: &Path, mode: &'static str, dedup: bool) -> Result<Measured> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let aws = Aws::load().await;
    let sqs = aws.sqs();
    let name = format!(
        "cloudkon-bench-{}-{stamp}",
        if dedup { "dedup" } else { "nodedup" }
    );
    let options = QueueOptions {
        visibility_timeout: Duration::from_secs(60),
        ..QueueOptions::default()
    };
    let queue = sqs
        .create_queue(&name, &options)
        .await
        .context("cannot create the bench queue")?;
    let table = format!("cloudkon-bench-ledger-{stamp}");
    let mut workers = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..args.workers {
        let addr = free_addr()?;
        let mut cmd = Command::new(sibling("cloudkon-worker")?);
        cmd.args(["--queue", queue.url(), "--ledger-table", &table])
            .args([
                "--threads",
                &args.threads.to_string(),
                "--receive-wait",
                "2s",
            ])
            .args([
                "--metrics-addr",
                &addr.to_string(),
                "--worker-id",
                &format!("bench-{i}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        if !dedup {
            cmd.arg("--no-dedup");
        }
        workers.push(Guard(cmd.spawn().context("cannot start cloudkon-worker")?));
        addrs.push(addr);
    }
    for addr in &addrs {
        wait_healthy(*addr)?;
    }
    let before = aws.stats().snapshot();
    let start = Instant::now();
    let (summary, _) = submit(
        &sqs,
        &queue,
        Submission {
            workload: path.to_owned(),
            total: args.tasks,
            batch: BatchId::new(format!("bench-{stamp}")),
            timeout: None,
            slots: u64::from(args.workers * args.threads),
        },
        None,
        Arc::new(Progress::default()),
        &Shutdown::new(),
    )
    .await?;
    let wall = start.elapsed();
    ensure!(summary.succeeded == args.tasks, "lost tasks: {summary:?}");
    let mut requests = aws.stats().snapshot().since(&before);
    for addr in &addrs {
        add(&mut requests, &scrape(*addr)?);
    }
    drop(workers);
    let _ = queue.delete().await;
    let ledger = aws.ledger(table);
    let _ = ledger.delete_tables().await;
    Ok(Measured {
        mode,
        wall,
        requests,
    })
}

fn add(total: &mut StatsSnapshot, more: &StatsSnapshot) {
    for (k, n) in &more.requests {
        *total.requests.entry(k.clone()).or_default() += n;
    }
    total.write_units += more.write_units;
    total.estimated_writes += more.estimated_writes;
}

/// The AWS request counters a worker exposes on `/metrics`.
fn scrape(addr: SocketAddr) -> Result<StatsSnapshot> {
    let body = http_get(addr, "/metrics")?;
    let mut snapshot = StatsSnapshot::default();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("cloudkon_aws_requests_total{operation=\"") {
            let (op, value) = rest.split_once("\"} ").context("unexpected metrics line")?;
            snapshot
                .requests
                .insert(op.to_string(), value.trim().parse()?);
        } else if let Some(value) = line.strip_prefix("cloudkon_aws_dynamodb_write_units_total ") {
            snapshot.write_units = value.trim().parse()?;
        }
    }
    Ok(snapshot)
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}

fn wait_healthy(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http_get(addr, "/healthz").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("a worker never became healthy on {addr}")
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn sibling(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release --workspace`",
        path.display()
    );
    Ok(path)
}

/// Stops a worker (SIGTERM, then waits) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn print(args: &SqsArgs, rows: &[Measured], embedded: Duration) {
    let delay = std::env::var(PROXIED_ENV).unwrap_or_else(|_| "0".into());
    println!(
        "cloudkon bench sqs: {} `{}` tasks, {} workers x {} slots, {delay} ms added each way to AWS calls",
        args.tasks, args.task, args.workers, args.threads
    );
    let tasks = args.tasks as f64;
    let embedded_rate = tasks / embedded.as_secs_f64();
    let slots = f64::from(args.workers * args.threads);
    let efficiency = |wall: Duration| {
        args.task_ms.map_or(String::new(), |ms| {
            format!(
                ", efficiency {:.1} %",
                100.0 * tasks * ms as f64 / 1000.0 / slots / wall.as_secs_f64()
            )
        })
    };
    println!(
        "\n[cloudkon run, {} slots]\n  throughput            {embedded_rate:.0} tasks/s (wall {:.2} s){}",
        args.workers * args.threads,
        embedded.as_secs_f64(),
        efficiency(embedded)
    );
    for m in rows {
        let r = &m.requests;
        println!("\n[{}]", m.mode);
        let rate = tasks / m.wall.as_secs_f64();
        println!(
            "  throughput            {rate:.0} tasks/s (wall {:.2} s), {:.2}x cloudkon run{}",
            m.wall.as_secs_f64(),
            rate / embedded_rate,
            efficiency(m.wall)
        );
        println!(
            "  AWS requests per task {:.5}  [target <= 0.05 with dedup on]",
            r.total() as f64 / tasks
        );
        let per_api: BTreeMap<_, _> = r.requests.iter().collect();
        for (api, n) in per_api {
            println!("    {api:<32} {n:>8}  {:.5}/task", *n as f64 / tasks);
        }
        let estimated = if r.estimated_writes > 0 {
            " (estimated from item sizes)"
        } else {
            ""
        };
        println!(
            "  DynamoDB write units  {:.0}{estimated}, {:.5}/task",
            r.write_units,
            r.write_units / tasks
        );
        println!(
            "  cost per million tasks ${:.4} (SQS $0.40/M requests, DynamoDB $0.625/M write units)",
            r.cost_usd(&Prices::LIST) / tasks * 1e6
        );
    }
}
