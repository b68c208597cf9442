//! `cloudkon-operator`: CloudKon's Kubernetes operator. `run` reconciles
//! TaskBatches and WorkerPools; `crd` prints the CustomResourceDefinitions.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cloudkon_core::Prices;
use cloudkon_operator::allowed_names::{self, AllowedNames};
use cloudkon_operator::context::Settings;
use cloudkon_operator::leader::LeaseConfig;
use cloudkon_operator::{crd, operator};
use cloudkon_worker::logging::{self, LogFormat};

/// CloudKon's Kubernetes operator: TaskBatch (a batch of tasks) and WorkerPool
/// (a queue and the workers that drain it, scaled on its backlog).
///
/// Install the CRDs:
///
///   cloudkon-operator crd | kubectl apply -f -
///
/// Run it (in the cluster, or anywhere with a kubeconfig and AWS access):
///
///   cloudkon-operator run
#[derive(Debug, Parser)]
#[command(
    name = "cloudkon-operator",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (TaskBatch, WorkerPool) as one
    /// multi-document YAML stream, or write one file per CRD with --out-dir.
    ///
    /// The committed crds/*.yaml are made with
    /// `cargo run -p cloudkon-operator -- crd --out-dir crds`.
    Crd {
        /// Write `<kind>.yaml` files (taskbatch.yaml, workerpool.yaml) into
        /// this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Print the field reference (Markdown tables) instead, as README.md
        /// holds it between its `reference` markers.
        #[arg(long, conflicts_with = "out_dir")]
        reference: bool,
    },
    /// The main path's figures on this machine, side by side in one run
    /// (what `cloudkon bench taskbatch` runs): TaskBatches through this
    /// operator and `cloudkon-worker` processes on the host, against `cloudkon
    /// submit` and `cloudkon run` of the same tasks. Needs a cluster and the
    /// AWS servers:
    ///
    ///   source "$(scripts/control-plane up)"; source "$(scripts/aws-servers up)"
    ///   cloudkon-operator bench --only run,efficiency
    #[command(verbatim_doc_comment)]
    Bench(Box<cloudkon_operator::bench::BenchArgs>),
    /// Reconcile TaskBatches and WorkerPools until SIGTERM. The cluster is
    /// found as kubectl finds it (KUBECONFIG, ~/.kube/config, or the pod's
    /// service account); AWS through the SDK's standard chain
    /// (AWS_REGION, IRSA, AWS_ENDPOINT_URL_SQS, ...).
    Run(Box<RunArgs>),
    /// TaskBatches from the command line (what `cloudkon batch` runs):
    /// submit a workload file, watch, merge results, cancel, list. Exit
    /// status: 0 done, 1 a watched batch Failed or was Cancelled, 2 an error.
    #[command(subcommand)]
    Batch(cloudkon_operator::batch_cli::BatchCommand),
    /// Simulate a pool and its batches in time-warped, discrete-event time:
    /// the operator's own decisions (bundle sizing, the metered window, fair
    /// share, the scaler) and the worker's, against simulated SQS, DynamoDB
    /// and workers (start-up delay, task durations, failures, spot
    /// interruptions). Prints each run's report and its targets; exits 1
    /// when a target is not met, 2 for a bad config or a plots' directory
    /// that cannot be written (nothing runs), 3 when a plot could not be
    /// written. Configs: examples/simulations/*.yaml.
    ///
    ///   cloudkon-operator simulate examples/simulations/shares-1-2-5.yaml --svg /tmp/sim
    #[command(verbatim_doc_comment)]
    Simulate(SimulateArgs),
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Simulation configs (YAML), run one after the other.
    #[arg(required = true, value_name = "CONFIG")]
    configs: Vec<PathBuf>,
    /// Write each run's plots (queue depth, workers) as SVG here.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// Seed every run with this instead of its config's seed.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "CLOUDKON_WATCH_NAMESPACE")]
    namespace: Option<String>,

    /// Elect a leader through a Lease, so that several replicas can run and
    /// only one acts.
    #[arg(long, env = "CLOUDKON_LEADER_ELECT")]
    leader_elect: bool,

    /// The Lease's namespace (default: the pod's, from POD_NAMESPACE, else
    /// `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    #[arg(long, env = "CLOUDKON_LEASE_NAME", default_value = "cloudkon-operator")]
    lease_name: String,

    /// How long a leader's Lease lasts without renewal.
    #[arg(long, default_value = "15s", value_parser = |s: &str| at_least(s, Duration::from_secs(1)))]
    lease_duration: Duration,

    /// This replica's identity in the Lease and in Events (default: the
    /// pod's name from POD_NAME, else the host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Serve /metrics and /healthz here ("" to disable).
    #[arg(long, env = "CLOUDKON_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,

    /// How often a pool's queue is looked at between events.
    #[arg(long, default_value = "1s", value_parser = |s: &str| at_least(s, Duration::from_millis(100)))]
    poll: Duration,

    /// Results of batches that set no `results.s3Prefix` go under this
    /// `s3://bucket/prefix` (default: such results are only counted).
    #[arg(long, env = "CLOUDKON_RESULTS_PREFIX")]
    results_prefix: Option<String>,

    /// Largest results part written to S3, in bytes (parts also hold at most
    /// 100,000 results). Under S3's single-PUT limit and local S3 servers' body
    /// limits (10 MiB), whatever the batch's size.
    #[arg(long, env = "CLOUDKON_RESULTS_PART_BYTES", default_value_t = 8 << 20,
          value_parser = clap::value_parser!(u64).range(4096..=(5u64 << 30)))]
    results_part_bytes: u64,

    /// Largest workload file (`spec.tasks.s3` or `spec.tasks.configMap`) a
    /// TaskBatch may name, in bytes. The operator reads it whole and holds it
    /// while the batch enqueues: a larger one is refused (Accepted=False,
    /// InvalidSpec) before its body is read. Mind the operator's memory limit
    /// when raising it.
    #[arg(long, env = "CLOUDKON_MAX_WORKLOAD_BYTES",
          default_value_t = cloudkon_operator::context::DEFAULT_MAX_WORKLOAD_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=(4u64 << 30)))]
    max_workload_bytes: u64,

    /// What the workload files of all running TaskBatches may hold together,
    /// in bytes (at least --max-workload-bytes). A batch whose file does not
    /// fit stays Pending, with a WaitingForMemory Event, until others finish.
    #[arg(long, env = "CLOUDKON_WORKLOAD_MEMORY_BYTES",
          default_value_t = cloudkon_operator::context::DEFAULT_WORKLOAD_MEMORY_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=(16u64 << 30)))]
    workload_memory_bytes: u64,

    /// Queue names a WorkerPool's `spec.queue.name` may take, as patterns
    /// (`*` any text, `{namespace}` the pool's namespace), comma-separated.
    /// With one namespace per tenant, `cloudkon-{namespace}_*` keeps each in
    /// its own names (pools without a name get `cloudkon-<namespace>_<pool>`).
    #[arg(long, value_name = "PATTERN,...", env = "CLOUDKON_ALLOWED_QUEUE_NAMES",
          value_delimiter = ',', default_value = allowed_names::DEFAULT_PATTERN)]
    allowed_queue_names: Vec<String>,

    /// Launch templates (names or ids) a WorkerPool's `Instances` provider may use.
    #[arg(long, value_name = "PATTERN,...", env = "CLOUDKON_ALLOWED_LAUNCH_TEMPLATES",
          value_delimiter = ',', default_value = allowed_names::DEFAULT_PATTERN)]
    allowed_launch_templates: Vec<String>,

    /// Auto Scaling groups a WorkerPool may scale.
    #[arg(long, value_name = "PATTERN,...", env = "CLOUDKON_ALLOWED_AUTO_SCALING_GROUPS",
          value_delimiter = ',', default_value = allowed_names::DEFAULT_PATTERN)]
    allowed_auto_scaling_groups: Vec<String>,

    /// EKS node groups a WorkerPool may scale, as `<cluster>/<nodegroup>` patterns.
    #[arg(long, value_name = "PATTERN,...", env = "CLOUDKON_ALLOWED_EKS_NODEGROUPS",
          value_delimiter = ',', default_value = allowed_names::DEFAULT_EKS_PATTERN)]
    allowed_eks_nodegroups: Vec<String>,

    /// How long a batch's tasks may be nowhere before they are reported
    /// failed: sent, not finished, while the pool's queue holds no message
    /// and none of its workers runs a task (the queue was purged or deleted,
    /// or its messages expired). Longer than a bundle's work, so that a worker
    /// still running a purged bundle reports first.
    #[arg(long, env = "CLOUDKON_MISSING_AFTER", default_value = "30m",
          value_parser = |s: &str| at_least(s, Duration::from_secs(1)))]
    missing_after: Duration,

    #[command(flatten)]
    prices: PriceArgs,

    #[arg(long, env = "CLOUDKON_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// The price table of each TaskBatch's `status.cost`, in US dollars per
/// million (AWS list prices, us-east-1, by default). Worker time is priced by
/// each WorkerPool's `spec.pricePerWorkerHour`.
#[derive(Debug, clap::Args)]
struct PriceArgs {
    /// SQS requests (standard queues), per million.
    #[arg(long, env = "CLOUDKON_PRICE_SQS_REQUESTS", default_value_t = Prices::LIST.sqs_requests,
          value_parser = non_negative_price)]
    price_sqs_requests: f64,
    /// DynamoDB on-demand write request units, per million.
    #[arg(long, env = "CLOUDKON_PRICE_DYNAMODB_WRITE_UNITS", default_value_t = Prices::LIST.dynamodb_write_units,
          value_parser = non_negative_price)]
    price_dynamodb_write_units: f64,
    /// S3 PUT, COPY, POST and LIST requests, per million.
    #[arg(long, env = "CLOUDKON_PRICE_S3_WRITES", default_value_t = Prices::LIST.s3_writes,
          value_parser = non_negative_price)]
    price_s3_writes: f64,
    /// S3 GET and HEAD requests, per million.
    #[arg(long, env = "CLOUDKON_PRICE_S3_READS", default_value_t = Prices::LIST.s3_reads,
          value_parser = non_negative_price)]
    price_s3_reads: f64,
}

/// A duration of at least `min`: 0 would make a lease that is never
/// held, a poll that spins, or every running task lost at once.
fn at_least(text: &str, min: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < min {
        return Err(format!(
            "{text:?} is too short: at least {}",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

fn non_negative_price(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!(
            "{text:?} is not a price: give dollars per million as a number >= 0, e.g. 0.40"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Batch(command) => {
            return match cloudkon_operator::batch_cli::run(command) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Crd {
            reference: true, ..
        } => {
            print!("{}", crd::reference::markdown());
            Ok(())
        }
        Command::Crd { out_dir, .. } => print_crds(out_dir),
        Command::Run(args) => run(*args),
        Command::Bench(args) => cloudkon_operator::bench::run(*args),
        Command::Simulate(args) => return simulate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs each config; 1 when a run missed a target, 2 when a config is bad
/// or the plots' directory cannot be written (both found before any run),
/// 3 when a plot could not be written after its run.
fn simulate(args: &SimulateArgs) -> ExitCode {
    use cloudkon_operator::simulate::{self, SimConfig};
    logging::init(LogFormat::Text, "warn");
    let mut configs = Vec::with_capacity(args.configs.len());
    for path in &args.configs {
        match SimConfig::load(path) {
            Ok(mut config) => {
                if let Some(seed) = args.seed {
                    config.seed = seed;
                }
                configs.push(config);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(dir) = &args.svg
        && let Err(e) = simulate::check_svg_dir(dir)
    {
        eprintln!("error: cannot write the plots in {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let stems = simulate::plot_stems(configs.iter().map(|c| c.name.as_str()));
    let (mut all_met, mut plots_written) = (true, true);
    for (config, stem) in configs.iter().zip(&stems) {
        let report = simulate::simulate(config);
        print!("{}", report.text(&config.targets));
        all_met &= report.checks(&config.targets).iter().all(|(_, met)| *met);
        if let Some(dir) = &args.svg {
            match simulate::write_svgs(&report, dir, stem) {
                Ok(files) => {
                    for f in files {
                        println!("  plot: {}", f.display());
                    }
                }
                // The other runs still go on: their plots may be written.
                Err(e) => {
                    eprintln!("error: cannot write the plots in {}: {e}", dir.display());
                    plots_written = false;
                }
            }
        }
        println!();
    }
    if !plots_written {
        ExitCode::from(3)
    } else if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_crds(out_dir: Option<PathBuf>) -> Result<()> {
    let crds = crd::crds();
    match out_dir {
        None => {
            let all: String = crds.iter().map(crd::to_yaml).collect();
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(all.as_bytes())
                .and_then(|()| stdout.flush())
            {
                // `cloudkon-operator crd | head`: not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("cannot write to standard output")?,
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for c in &crds {
                let path = dir.join(crd::file_name(c));
                std::fs::write(&path, crd::to_yaml(c))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    logging::init(args.log_format, "info,kube_runtime=warn");
    if args.workload_memory_bytes < args.max_workload_bytes {
        anyhow::bail!(
            "--workload-memory-bytes {} is below --max-workload-bytes {}: no workload file of the largest size would ever fit",
            args.workload_memory_bytes,
            args.max_workload_bytes
        );
    }
    if let Some(prefix) = &args.results_prefix {
        cloudkon_core::aws::S3Uri::parse(prefix)
            .with_context(|| format!("--results-prefix {prefix:?}"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("cannot find the cluster (KUBECONFIG, ~/.kube/config or in-cluster config)")?;
        // Fail now, with a clear message, when the CRDs are missing or the
        // API server is unreachable, rather than retrying forever in a watch.
        // In the watched namespace only: there the chart grants a Role, not
        // a ClusterRole.
        let probe: kube::Api<crd::TaskBatch> = match &args.namespace {
            Some(ns) => kube::Api::namespaced(client.clone(), ns),
            None => kube::Api::all(client.clone()),
        };
        probe
            .list(&kube::api::ListParams::default().limit(1))
            .await
            .context("cannot list TaskBatches: is the API server up, and are the CRDs installed (`cloudkon-operator crd | kubectl apply -f -`)?")?;
        let aws = cloudkon_core::aws::Aws::load().await;
        let identity = args.identity.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "operator".into());
            format!("{host}-{}", std::process::id())
        });
        let metrics_listener = if args.metrics_addr.is_empty() {
            None
        } else {
            Some(
                tokio::net::TcpListener::bind(&args.metrics_addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.metrics_addr))?,
            )
        };
        if let Some(l) = &metrics_listener {
            tracing::info!(addr = %l.local_addr()?, "serving /metrics and /healthz");
        }
        let lease = args.leader_elect.then(|| LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_every: args.lease_duration / 5,
        });
        operator::run(
            client,
            aws,
            operator::Options {
                namespace: args.namespace,
                lease,
                metrics_listener,
                settings: Settings {
                    poll: args.poll,
                    default_results_prefix: args.results_prefix,
                    results_part_bytes: usize::try_from(args.results_part_bytes)
                        .unwrap_or(usize::MAX),
                    max_workload_bytes: args.max_workload_bytes,
                    workload_memory_bytes: args.workload_memory_bytes,
                    missing_after: args.missing_after,
                    prices: Prices {
                        sqs_requests: args.prices.price_sqs_requests,
                        dynamodb_write_units: args.prices.price_dynamodb_write_units,
                        s3_writes: args.prices.price_s3_writes,
                        s3_reads: args.prices.price_s3_reads,
                    },
                    allowed_names: AllowedNames {
                        queues: args.allowed_queue_names,
                        launch_templates: args.allowed_launch_templates,
                        auto_scaling_groups: args.allowed_auto_scaling_groups,
                        eks_nodegroups: args.allowed_eks_nodegroups,
                    },
                    ..Settings::default()
                },
                identity,
            },
        )
        .await
    });
    // Out at once, e.g. after losing the leadership: no task left behind
    // (a request stuck on an unanswering API server) may delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}
