//! `cloudkon-worker`: a remote back-end worker. Pulls bundles from an SQS queue,
//! runs each exactly once (DynamoDB leases), and sends the results to each
//! batch's response queue.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use cloudkon_core::Timestamp;
use cloudkon_core::aws::{Aws, DynamoLedger, WorkerHeartbeat};
use cloudkon_core::queue::Lanes;
use cloudkon_worker::exec::animoto::{
    AddressPolicy, FetchLimits, S3ObjectStore, check_output, parse_presign_expiry,
};
use cloudkon_worker::logging::LogFormat;
use cloudkon_worker::remote::{RemoteConfig, StopReason, Unable, WorkerStats, run_remote};
use cloudkon_worker::serve::{WorkerCollector, serve};
use cloudkon_worker::termination;
use cloudkon_worker::{AnimotoConfig, AnimotoExecutor, PoolConfig, Registry, Shutdown};
use tokio_util::sync::CancellationToken;

/// Runs CloudKon tasks from an SQS queue. Every flag can also be set with the
/// environment variable shown, which is how the Helm chart configures it.
///
/// Exactly once: each bundle is claimed in DynamoDB with a lease before it runs;
/// a worker that dies loses its lease and another takes the bundle over.
/// SIGTERM: stop receiving, finish running bundles within --grace, give the
/// rest back at once; a second SIGTERM (or Ctrl-C) abandons running bundles.
/// SIGHUP counts as SIGTERM.
#[derive(Debug, Parser)]
#[command(
    name = "cloudkon-worker",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Args {
    /// The request queue: its URL, or its name in this account and region.
    #[arg(long, env = "CLOUDKON_QUEUE")]
    queue: String,

    /// Concurrent task slots [default: the number of CPUs].
    #[arg(long, env = "CLOUDKON_THREADS", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    threads: Option<u32>,

    /// The DynamoDB table of the dedup ledger (created if missing); worker
    /// heartbeats go to `<table>-workers`.
    #[arg(long, env = "CLOUDKON_LEDGER_TABLE", default_value = "cloudkon-ledger")]
    ledger_table: String,

    /// Run every delivery without claiming it (at-least-once), to measure what
    /// dedup costs, as the CloudKon paper did.
    #[arg(long, env = "CLOUDKON_NO_DEDUP")]
    no_dedup: bool,

    /// A claim's lease, and how long a received message stays hidden;
    /// renewed every third of it while the bundle runs. 1s to 12h (SQS's
    /// longest visibility timeout).
    #[arg(long, env = "CLOUDKON_LEASE", default_value = "60s", value_parser = parse_lease)]
    lease: Duration,

    /// How long a finished task's result waits for others to leave with it
    /// (one send per response queue): longer means fewer SQS requests per
    /// task, results a little later. A bundle's last result leaves at once
    /// (at most 10s).
    #[arg(long, env = "CLOUDKON_RESULTS_LINGER", default_value = "5s", value_parser = humantime::parse_duration)]
    results_linger: Duration,

    /// How often the ledger is asked whether a batch whose bundles run here
    /// was cancelled: a cancel leaves their tasks not started within it.
    /// Each is a DynamoDB read per batch of which tasks wait here to start
    /// (none while every task held runs): with a big pool of short tasks, a
    /// longer period saves most of its requests per task.
    #[arg(long, env = "CLOUDKON_CANCEL_CHECK", default_value = "3s", value_parser = parse_cancel_check)]
    cancel_check: Duration,

    /// Exit with an error when every receive (SQS), or every claim (the
    /// DynamoDB ledger), has failed for this long while the worker holds no
    /// bundle (running ones are finished first), or one send of results has
    /// (its bundles are given back, for a worker that can), or every renewal
    /// of its leases was refused (a deleted table, IAM; not unanswered: its
    /// bundles are given back, their running tasks left to run again
    /// elsewhere): for Kubernetes, which
    /// restarts it and shows the error as its termination message (the
    /// operator's Deployments set 2m). Unset: retry for ever.
    #[arg(long, env = "CLOUDKON_GIVE_UP_AFTER", value_parser = humantime::parse_duration)]
    give_up_after: Option<Duration>,

    /// Long-poll wait of each receive (at most 20s).
    #[arg(long, env = "CLOUDKON_RECEIVE_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    receive_wait: Duration,

    /// Exit after this long with no work (for dynamic provisioning).
    #[arg(long, env = "CLOUDKON_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,

    /// On SIGTERM, how long running bundles may take before they are given back.
    #[arg(long, env = "CLOUDKON_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    grace: Duration,

    /// Default per-task timeout (a task's own timeout wins).
    #[arg(long, env = "CLOUDKON_TASK_TIMEOUT", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// Executions of a failing task, the first included.
    #[arg(long, env = "CLOUDKON_MAX_ATTEMPTS", default_value_t = 1)]
    max_attempts: u32,

    /// Wait before the first retry of a failed task; doubled for each further one.
    #[arg(long, env = "CLOUDKON_RETRY_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,

    /// Claims of one bundle (its workers kept dying) before its tasks are reported failed.
    #[arg(long, env = "CLOUDKON_MAX_CLAIMS", default_value_t = 3)]
    max_claims: u32,

    /// Bytes of stdout and of stderr kept per task.
    #[arg(long, env = "CLOUDKON_OUTPUT_BYTES", default_value_t = 4096)]
    output_bytes: usize,

    /// Where `/metrics` and `/healthz` are served; `off` for nowhere.
    #[arg(long, env = "CLOUDKON_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: String,

    /// On an EC2 spot instance: the instance metadata service to watch for
    /// an interruption notice (IMDSv2), `http://169.254.169.254` on EC2
    /// (the operator's `Instances` pools set it). On notice the worker drains
    /// as on SIGTERM, abandoning what still runs --spot-margin before the
    /// interruption. Off when unset or empty.
    #[arg(long, env = "CLOUDKON_SPOT_METADATA", value_name = "URL")]
    spot_metadata: Option<String>,

    /// How often the metadata service is asked.
    #[arg(long, env = "CLOUDKON_SPOT_POLL", default_value = "5s", value_parser = humantime::parse_duration)]
    spot_poll: Duration,

    /// Running bundles are given back this long before a spot interruption.
    #[arg(long, env = "CLOUDKON_SPOT_MARGIN", default_value = "15s", value_parser = humantime::parse_duration)]
    spot_margin: Duration,

    /// Drain on a rebalance recommendation too, not only on an interruption notice.
    #[arg(long, env = "CLOUDKON_SPOT_DRAIN_ON_REBALANCE")]
    spot_drain_on_rebalance: bool,

    /// Where animoto tasks put their videos unless a task names its own
    /// `output`: `s3://bucket/prefix` (use this: videos on a worker's disk are
    /// out of the client's reach, and gone with the pod) or a local directory.
    #[arg(
        long,
        value_name = "DIR|S3URI",
        env = "CLOUDKON_ANIMOTO_OUT",
        default_value = "/tmp/cloudkon-animoto"
    )]
    animoto_out: String,

    /// Bytes all of one animoto task's images may take in the scratch space
    /// [default: no limit but the disk's]. A worker pod's `/tmp` is small and
    /// shared by its tasks, and filling it evicts the pod with all of them:
    /// the operator sets this to the pod's `tmpSizeLimit` / 2 / its slots.
    #[arg(long, value_name = "BYTES", env = "CLOUDKON_ANIMOTO_TASK_BYTES")]
    animoto_task_bytes: Option<u64>,

    /// How long the presigned HTTPS URLs of videos put in S3 work (results'
    /// `artifact_url`); at most 7 days, S3's limit.
    #[arg(long, value_name = "DURATION", env = "CLOUDKON_PRESIGN_EXPIRY", default_value = "7d", value_parser = parse_presign_expiry)]
    presign_expiry: Duration,

    /// Let animoto tasks download images from any address. By default only
    /// public addresses are reached: not loopback, link-local (the instance
    /// metadata service), private, shared-NAT, multicast or reserved ones,
    /// checked on the resolved address of every redirect hop, as a worker
    /// shared by tenants needs. For a worker of one's own, on premises.
    #[arg(long, env = "CLOUDKON_ALLOW_PRIVATE_DOWNLOADS")]
    allow_private_downloads: bool,

    /// Networks besides the public ones that animoto images may come from,
    /// comma-separated CIDRs (an on-premises image server: `10.20.0.0/16`).
    #[arg(
        long,
        value_name = "CIDR,...",
        env = "CLOUDKON_ALLOW_DOWNLOADS_FROM",
        value_delimiter = ','
    )]
    allow_downloads_from: Vec<ipnet::IpNet>,

    /// This worker's name in results and heartbeats [default: host name and PID].
    #[arg(long, env = "CLOUDKON_WORKER_ID")]
    worker_id: Option<String>,

    /// Log format on stderr (filtered by RUST_LOG, default `info`).
    #[arg(long, env = "CLOUDKON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // A bad flag or env value: the pod's status says which (help and
            // version are not errors).
            if e.use_stderr() {
                let text = e.to_string();
                termination::record(text.lines().next().unwrap_or_default());
            }
            e.exit()
        }
    };
    cloudkon_worker::logging::init(args.log_format, "info");
    cloudkon_worker::open_files::raise_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            termination::record(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(StopReason::GaveUp {
            unable,
            failing_for,
            error,
        }) => {
            let (what, attempt) = match unable {
                Unable::Receive => ("receive from the queue", "receive"),
                Unable::Claim => ("claim bundles in the ledger", "claim"),
                Unable::SendResults => ("send results to a batch's response queue", "send"),
                Unable::Renew => ("renew its bundles' leases in the ledger", "renewal"),
            };
            let message = format!(
                "error: cannot {what}: every {attempt} failed for {} s: {error}",
                failing_for.as_secs()
            );
            tracing::error!("{message}");
            termination::record(&message);
            ExitCode::FAILURE
        }
        Ok(reason) => {
            tracing::info!(?reason, "worker stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            termination::record(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<StopReason> {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let worker_id = args
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    let slots = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let metrics_addr: Option<SocketAddr> = match args.metrics_addr.as_str() {
        "off" | "" => None,
        addr => Some(
            addr.parse()
                .with_context(|| format!("--metrics-addr: `{addr}` is not HOST:PORT or `off`"))?,
        ),
    };
    check_output(&args.animoto_out).context("--animoto-out")?;
    let aws = Aws::load().await;
    let addresses = if args.allow_private_downloads {
        tracing::warn!(
            "animoto downloads may reach any address, private and metadata ones included (--allow-private-downloads)"
        );
        AddressPolicy::allow_all()
    } else {
        AddressPolicy::allowing(args.allow_downloads_from.clone())
    };
    let defaults = AnimotoConfig::default();
    let animoto = AnimotoExecutor::new(AnimotoConfig {
        output: args.animoto_out.clone(),
        addresses,
        fetch: FetchLimits {
            task_bytes: args.animoto_task_bytes,
            ..defaults.fetch.clone()
        },
        ..defaults
    })
    .with_object_store(Arc::new(S3ObjectStore::new(aws.s3(), args.presign_expiry)));
    let registry = Registry::new().with_animoto(Arc::new(animoto));
    // A worker cannot know whether animoto tasks will come: without ffmpeg it
    // still runs the other kinds, and each animoto task fails saying why.
    if let Err(e) = registry.check() {
        tracing::warn!("animoto tasks will fail on this worker: {e}");
    }
    if !args.animoto_out.starts_with("s3://") {
        tracing::info!(
            dir = %args.animoto_out,
            "animoto videos stay on this worker's disk unless a task names an s3:// output (set --animoto-out s3://BUCKET/PREFIX)"
        );
    }
    let sqs = aws.sqs();
    // Hidden for a lease from the receive: the first extension comes up to
    // a third of a lease later.
    let queue = sqs
        .open(&args.queue)
        .await
        .with_context(|| format!("cannot open the request queue `{}`", args.queue))?
        .hidden_on_receive(args.lease);
    let ledger = if args.no_dedup {
        tracing::warn!("dedup is off: a redelivered bundle runs again (at-least-once)");
        None
    } else {
        let ledger = aws.ledger(args.ledger_table.clone());
        ledger
            .ensure_table()
            .await
            .with_context(|| format!("cannot use the ledger table `{}`", args.ledger_table))?;
        Some(Arc::new(ledger))
    };

    let mut pool = PoolConfig::new(slots, worker_id.clone());
    pool.default_timeout = args.timeout;
    pool.output_bytes = args.output_bytes;
    pool.max_attempts = args.max_attempts.max(1);
    pool.retry_backoff = args.retry_backoff;
    let mut config = RemoteConfig::new(pool);
    config.lease = args.lease;
    config.visibility = args.lease;
    config.receive_wait = args.receive_wait.min(Duration::from_secs(20));
    config.linger = args
        .results_linger
        .min(cloudkon_worker::remote::MAX_RESULTS_LINGER);
    config.idle_timeout = args.idle_timeout;
    config.grace = args.grace;
    config.max_claims = args.max_claims.max(1);
    config.cancel_check = args.cancel_check;
    config.give_up_after = args.give_up_after;

    let shutdown = Shutdown::new();
    spawn_signal_handler(shutdown.clone())?;
    if let Some(endpoint) = args.spot_metadata.as_deref().filter(|e| !e.is_empty()) {
        tokio::spawn(cloudkon_worker::spot::watch(
            cloudkon_worker::spot::SpotConfig {
                endpoint: endpoint.to_string(),
                poll: args.spot_poll,
                margin: args.spot_margin,
                on_rebalance: args.spot_drain_on_rebalance,
            },
            shutdown.clone(),
        ));
    }
    let stats = Arc::new(WorkerStats::with_requests(aws.stats().clone()));
    let done = CancellationToken::new();
    if let Some(addr) = metrics_addr {
        let mut metrics = prometheus_client::registry::Registry::default();
        let requests = aws.stats().clone();
        metrics.register_collector(Box::new(WorkerCollector {
            stats: stats.clone(),
            slots,
            requests: Some(Arc::new(move || requests.snapshot())),
        }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tokio::spawn(serve(
            listener,
            metrics,
            shutdown.stop.clone(),
            done.clone(),
        ));
    }
    let heartbeats = ledger.clone().map(|ledger| {
        tokio::spawn(heartbeat_rows(
            ledger,
            WorkerHeartbeat {
                id: worker_id.clone(),
                host,
                slots: slots as u32,
                busy: 0,
                tasks_done: 0,
                started_at: Timestamp::now(),
                last_seen: Timestamp::now(),
            },
            stats.clone(),
            done.clone(),
        ))
    });

    tracing::info!(worker = %worker_id, slots, queue = %queue.url(), dedup = !args.no_dedup, "worker started");
    // The pool's priority lane first (`<queue>-pri`: the operator sends a
    // batch's first bundles there while others fill the queue). Always: a
    // bundle there waits otherwise until the operator moves it to the queue
    // (30 s). A queue without one is asked again once a minute.
    let lane = Some(queue.priority_lane());
    let reason = run_remote(
        Arc::new(Lanes::new(queue, lane)),
        ledger,
        Arc::new(sqs),
        Arc::new(registry),
        config,
        shutdown,
        stats,
    )
    .await;
    done.cancel();
    if let Some(task) = heartbeats {
        let _ = task.await;
    }
    Ok(reason)
}

/// The paper's monitoring: a row per worker with what it is doing, written
/// when it turns idle or busy, else now and then (`remote::heartbeat_due`).
async fn heartbeat_rows(
    ledger: Arc<DynamoLedger>,
    mut row: WorkerHeartbeat,
    stats: Arc<WorkerStats>,
    done: CancellationToken,
) {
    use cloudkon_worker::remote::{HEARTBEAT_LOOK_EVERY, heartbeat_due};
    let mut last: Option<(std::time::Instant, bool)> = None;
    loop {
        let busy = WorkerStats::get(&stats.held).min(u64::from(row.slots)) as u32;
        if heartbeat_due(last.map(|(at, was)| (at.elapsed(), was)), busy > 0) {
            row.busy = busy;
            row.tasks_done =
                WorkerStats::get(&stats.tasks_succeeded) + WorkerStats::get(&stats.tasks_failed);
            // A failed write waits for the period too: no retry storm on
            // an outage.
            if let Err(e) = ledger.put_worker_heartbeat(&row).await {
                tracing::warn!(error = %e, "could not write the heartbeat row");
            }
            last = Some((std::time::Instant::now(), busy > 0));
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_LOOK_EVERY) => {},
        }
    }
}

/// SIGTERM, SIGHUP or Ctrl-C: stop receiving; the second one abandons running work.
fn spawn_signal_handler(shutdown: Shutdown) -> Result<()> {
    use cloudkon_worker::signals::{self, Stage};
    signals::spawn_handler(shutdown, |stage| match stage {
        Stage::Stop => {
            tracing::info!(
                "stopping: no new work; finishing running bundles, giving the rest back"
            );
        }
        Stage::Abort => tracing::warn!("abandoning running bundles"),
    })
    .context("cannot handle SIGTERM, SIGHUP and SIGINT")?;
    Ok(())
}

/// `--lease`: a duration from 1s to 12h. It is also the messages'
/// visibility timeout: at 0 a claim would expire as it is made and the
/// message show at once to other workers; SQS cuts a visibility past 12h
/// to 12h, which would leave a lease the queue does not keep.
fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(12 * 3600) {
        return Err(format!("{s} is outside 1s..12h"));
    }
    Ok(d)
}

/// `--cancel-check`: a duration from 100ms to an hour (zero would ask the
/// ledger without pause).
fn parse_cancel_check(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is outside 100ms..1h"));
    }
    Ok(d)
}
