//! `cloudkon batch` (run as `cloudkon-operator batch`, which holds the
//! Kubernetes client so that the `cloudkon` binary stays small): TaskBatches
//! from the command line. The cluster is found as kubectl finds it
//! (KUBECONFIG, ~/.kube/config), and so is the namespace.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cloudkon_core::aws::{Aws, S3Uri};
use cloudkon_core::workload::{self, WorkloadReader};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::crd::taskbatch::{Phase, TaskBatchStatus};
use crate::crd::{TaskBatch, WorkerPool};

/// A workload up to this size goes in a ConfigMap (the API server's limit is
/// 1 MiB with the object's metadata); a larger one needs `--upload`.
const CONFIGMAP_WORKLOAD_MAX: usize = 900 << 10;
/// The ConfigMap key holding a submitted workload.
const WORKLOAD_KEY: &str = "workload.txt";

#[derive(Debug, clap::Subcommand)]
pub enum BatchCommand {
    /// Put a workload file (one task a line, as `cloudkon run` reads it) in a
    /// ConfigMap, or in S3 with --upload, and create a TaskBatch for it on a
    /// WorkerPool. The file is checked first: nothing is created when a line
    /// is malformed.
    ///
    ///   cloudkon batch submit sweep.txt --pool default --watch
    ///   cloudkon batch submit big.txt --pool gpu --upload s3://my-bucket/workloads
    #[command(verbatim_doc_comment)]
    Submit(SubmitArgs),
    /// Follow a TaskBatch until it finishes: a progress bar with the rate,
    /// ETA and failures from its status. Exit status 0 when it Succeeded, 1
    /// when it Failed or was Cancelled. Reads that fail for a moment (the API
    /// server restarting) are tried again, for up to 5 minutes.
    ///
    ///   cloudkon batch watch sweep
    #[command(verbatim_doc_comment)]
    Watch(NameArgs),
    /// Merge a TaskBatch's results (the JSON Lines parts in S3 under
    /// status.results) into one file, in part order.
    ///
    ///   cloudkon batch results sweep -o sweep.jsonl
    #[command(verbatim_doc_comment)]
    Results(ResultsArgs),
    /// Cancel a TaskBatch (spec.cancel): nothing more is enqueued and the
    /// workers skip its queued tasks. One already finished is left as it is.
    ///
    ///   cloudkon batch cancel sweep
    #[command(verbatim_doc_comment)]
    Cancel(NameArgs),
    /// List the namespace's TaskBatches with their phase, progress, rate, ETA
    /// and cost.
    ///
    ///   cloudkon batch list -n team-a
    #[command(verbatim_doc_comment)]
    List(NamespaceArgs),
}

#[derive(Debug, clap::Args)]
pub struct NamespaceArgs {
    /// The namespace (default: the kubeconfig context's, as kubectl).
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The TaskBatch's name.
    name: String,
    #[command(flatten)]
    ns: NamespaceArgs,
}

#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    batch: NameArgs,
    /// The JSON Lines file to write (written whole, then renamed into place).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The workload file.
    workload: PathBuf,
    /// The WorkerPool to run on (in the same namespace).
    #[arg(long)]
    pool: String,
    /// The TaskBatch's name (default: the file's name, made a valid name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    ns: NamespaceArgs,
    /// Put the workload in S3 under this `s3://bucket/prefix` instead of a
    /// ConfigMap (needed past 900 KiB).
    #[arg(long, value_name = "S3_PREFIX")]
    upload: Option<String>,
    /// The batch's weight among the pool's batches (spec.weight).
    #[arg(long)]
    weight: Option<i32>,
    /// Results to `s3://bucket/prefix` (spec.results.s3Prefix; default: the
    /// operator's --results-prefix, if any).
    #[arg(long, value_name = "S3_PREFIX")]
    results: Option<String>,
    /// Give up once more than this percentage of finished tasks failed
    /// (spec.failurePolicy.maxFailedPercent).
    #[arg(long, value_name = "PERCENT")]
    max_failed_percent: Option<i32>,
    /// Follow the batch until it finishes, as `cloudkon batch watch`.
    #[arg(long)]
    watch: bool,
}

pub fn run(command: BatchCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        match command {
            BatchCommand::Submit(args) => submit(args).await,
            BatchCommand::Watch(args) => {
                let (client, ns) = connect(&args.ns).await?;
                watch(&client, &ns, &args.name).await
            }
            BatchCommand::Results(args) => results(args).await,
            BatchCommand::Cancel(args) => cancel(args).await,
            BatchCommand::List(args) => list(args).await,
        }
    })
}

async fn connect(ns: &NamespaceArgs) -> Result<(Client, String)> {
    let config = kube::Config::infer()
        .await
        .context("cannot find the cluster (KUBECONFIG, ~/.kube/config)")?;
    let namespace = ns
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("cannot make a Kubernetes client")?;
    Ok((client, namespace))
}

/// A file name made a Kubernetes object name: lower case, `-` for anything
/// else, at most 50 characters (room for `-workload`).
pub fn name_from_path(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_string_lossy().to_lowercase();
    let mut name = String::with_capacity(stem.len());
    for c in stem.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    name.truncate(50);
    let name = name.trim_matches('-').to_string();
    (!name.is_empty()).then_some(name)
}

async fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let path = &args.workload;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let label = path.display().to_string();
    // Checked here as the operator will, so that a mistake costs nothing.
    let stats = workload::validate(WorkloadReader::new(bytes.as_slice(), label.clone())).map_err(
        |errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!(
                "{} is not a valid workload:\n  {}",
                label,
                lines.join("\n  ")
            )
        },
    )?;
    ensure!(
        stats.tasks > 0,
        "{label} has no tasks: only blank lines and comments"
    );
    crate::validate::workload_tasks_fit("workload", &label, &bytes).map_err(|too_large| {
        let lines: Vec<String> = too_large.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{label} cannot be sent to a queue:\n  {}",
            lines.join("\n  ")
        )
    })?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => name_from_path(path)
            .with_context(|| format!("cannot make a TaskBatch name from {label}: give --name"))?,
    };
    let (client, ns) = connect(&args.ns).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm_name = format!("{name}-workload");
    // Where the workload will be, so that the TaskBatch is made, and
    // checked, before anything is created.
    let (tasks, held_in, upload) = match &args.upload {
        Some(prefix) => {
            let uri = S3Uri::parse(prefix).with_context(|| format!("--upload {prefix}"))?;
            let key = format!(
                "{}{ns}/{name}.txt",
                if uri.key.is_empty() || uri.key.ends_with('/') {
                    uri.key.clone()
                } else {
                    format!("{}/", uri.key)
                }
            );
            let object = format!("s3://{}/{key}", uri.bucket);
            (
                json!({ "s3": { "uri": object } }),
                object,
                Some((uri.bucket, key)),
            )
        }
        None => {
            ensure!(
                bytes.len() <= CONFIGMAP_WORKLOAD_MAX,
                "{label} is {} bytes, more than a ConfigMap holds ({CONFIGMAP_WORKLOAD_MAX}): \
                 give --upload s3://bucket/prefix",
                bytes.len()
            );
            (
                json!({ "configMap": { "name": cm_name, "key": WORKLOAD_KEY } }),
                format!("configmap/{cm_name}"),
                None,
            )
        }
    };
    let batch = new_batch(&args, &name, &ns, tasks)?;
    let pools: Api<WorkerPool> = Api::namespaced(client.clone(), &ns);
    pools
        .get_opt(&args.pool)
        .await
        .with_context(|| format!("cannot read WorkerPool {ns}/{}", args.pool))?
        .with_context(|| format!("WorkerPool {} does not exist in namespace {ns}", args.pool))?;
    let batches: Api<TaskBatch> = Api::namespaced(client.clone(), &ns);
    ensure!(
        batches.get_opt(&name).await?.is_none(),
        "TaskBatch {name} already exists in namespace {ns}: give another --name"
    );

    match upload {
        Some((bucket, key)) => {
            Aws::load()
                .await
                .s3()
                .put_bytes(&bucket, &key, bytes)
                .await
                .with_context(|| format!("cannot upload {label}"))?;
        }
        None => {
            let text =
                String::from_utf8(bytes).with_context(|| format!("{label} is not UTF-8 text"))?;
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(cm_name.clone()),
                    ..ObjectMeta::default()
                },
                data: Some([(WORKLOAD_KEY.to_string(), text)].into()),
                ..ConfigMap::default()
            };
            configmaps
                .create(&PostParams::default(), &cm)
                .await
                .with_context(|| format!("cannot create ConfigMap {ns}/{cm_name}"))?;
        }
    }
    let created = match batches.create(&PostParams::default(), &batch).await {
        Ok(b) => b,
        Err(e) => {
            if args.upload.is_none() {
                let _ = configmaps.delete(&cm_name, &Default::default()).await;
            }
            return Err(e).with_context(|| format!("cannot create TaskBatch {ns}/{name}"));
        }
    };
    // The workload's ConfigMap goes with its batch.
    if args.upload.is_none() {
        let owner = OwnerReference {
            api_version: "cloudkon.io/v1alpha1".into(),
            kind: "TaskBatch".into(),
            name: name.clone(),
            uid: created.uid().unwrap_or_default(),
            ..OwnerReference::default()
        };
        configmaps
            .patch(
                &cm_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "ownerReferences": [owner] } })),
            )
            .await
            .with_context(|| format!("cannot give ConfigMap {cm_name} to its TaskBatch"))?;
    }
    println!(
        "taskbatch/{name} created in namespace {ns}: {} tasks from {held_in}",
        stats.tasks
    );
    if args.watch {
        return watch(&client, &ns, &name).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The TaskBatch `submit` creates, checked as the operator will check it:
/// a spec it would refuse is refused here, before anything is created.
fn new_batch(
    args: &SubmitArgs,
    name: &str,
    ns: &str,
    tasks: serde_json::Value,
) -> Result<TaskBatch> {
    let mut spec = json!({ "workerPool": args.pool, "tasks": tasks });
    if let Some(w) = args.weight {
        spec["weight"] = json!(w);
    }
    if let Some(r) = &args.results {
        spec["results"] = json!({ "s3Prefix": r });
    }
    if let Some(p) = args.max_failed_percent {
        spec["failurePolicy"] = json!({ "maxFailedPercent": p });
    }
    let batch: TaskBatch = serde_json::from_value(json!({
        "apiVersion": "cloudkon.io/v1alpha1",
        "kind": "TaskBatch",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    }))
    .context("the TaskBatch")?;
    if let Err(problems) = crate::validate::taskbatch(&batch.spec) {
        // The spec's fields by the options that set them.
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!(
            "TaskBatch {name} would be refused (nothing was created):\n  {}\n\
             (--results sets spec.results.s3Prefix, --weight spec.weight, \
             --max-failed-percent spec.failurePolicy.maxFailedPercent)",
            lines.join("\n  ")
        );
    }
    Ok(batch)
}

/// `done/total` or `done/enqueued+`, the rate, the ETA and the cost, from a
/// status.
fn describe(st: &TaskBatchStatus) -> String {
    let mut parts = vec![st.progress.clone().unwrap_or_else(|| "0/0+".into())];
    if let Some(rate) = st.throughput {
        parts.push(format!("{rate:.1} tasks/s"));
    }
    if let Some(eta) = &st.eta {
        parts.push(format!("ETA {eta}"));
    }
    if let Some(cost) = &st.cost {
        parts.push(format!("cost {}", cost.summary));
    }
    if st.counts.failed > 0 {
        parts.push(format!("{} failed", st.counts.failed));
    }
    parts.join(", ")
}

/// What holds a batch up, from its conditions: a spec or a pool or bucket
/// refused or missing (`Accepted` false), its pool's workers failing, or
/// its runner in the operator failing.
fn holding(st: &TaskBatchStatus) -> Option<String> {
    let said = |type_: &str, status: &str| {
        st.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| format!("{}: {}", c.reason, c.message))
    };
    said("Accepted", "False")
        .or_else(|| said("WorkersFailing", "True"))
        .or_else(|| said("RunnerFailing", "True"))
}

/// How long `watch` waits for an operator to look at a batch before it
/// says that none has.
const UNSEEN: Duration = Duration::from_secs(10);

/// No operator has looked at the batch in the `watched` time: the most
/// likely reasons, for a status that would otherwise stay empty for ever.
fn unseen(st: &TaskBatchStatus, watched: Duration, ns: &str) -> Option<String> {
    (st.observed_generation.is_none() && watched >= UNSEEN).then(|| {
        format!(
            "NoOperator: no operator has looked at this TaskBatch in {} s: is cloudkon-operator running (helm install cloudkon charts/cloudkon), and does it watch namespace {ns}?",
            UNSEEN.as_secs()
        )
    })
}

async fn get_batch(batches: &Api<TaskBatch>, ns: &str, name: &str) -> Result<TaskBatch> {
    batches
        .get_opt(name)
        .await
        .with_context(|| format!("cannot read TaskBatch {ns}/{name}"))?
        .with_context(|| format!("TaskBatch {name} does not exist in namespace {ns}"))
}

/// How `watch` paces its reads of the batch.
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// Between two reads.
    poll: Duration,
    /// The wait after a read that failed, doubled after each one that
    /// follows, up to `retry_max`.
    retry_first: Duration,
    retry_max: Duration,
    /// Reads failing this long in a row end the watch.
    give_up: Duration,
}

const PACE: Pace = Pace {
    poll: Duration::from_secs(1),
    retry_first: Duration::from_secs(1),
    retry_max: Duration::from_secs(15),
    give_up: Duration::from_secs(300),
};

/// A read of the batch that failed.
#[derive(Debug)]
enum ReadError {
    /// Worth another try: the API server restarting, a connection dropped,
    /// throttling.
    Transient(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Whether a failed request to the API server may succeed if made again.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        // No answer: refused, reset, timed out.
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The batch's status, `None` when it does not exist.
async fn read_status(
    batches: &Api<TaskBatch>,
    ns: &str,
    name: &str,
) -> Result<Option<TaskBatchStatus>, ReadError> {
    match batches.get_opt(name).await {
        Ok(batch) => Ok(batch.map(|b| b.status.unwrap_or_default())),
        Err(e) => {
            let retry = transient(&e);
            let e = anyhow::Error::new(e).context(format!("cannot read TaskBatch {ns}/{name}"));
            Err(if retry {
                ReadError::Transient(e)
            } else {
                ReadError::Fatal(e)
            })
        }
    }
}

/// 0 for a batch that Succeeded, 1 for one that Failed or was Cancelled.
fn exit_code(phase: Phase) -> ExitCode {
    if phase == Phase::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn watch(client: &Client, ns: &str, name: &str) -> Result<ExitCode> {
    let batches: Api<TaskBatch> = Api::namespaced(client.clone(), ns);
    let phase = follow(ns, name, PACE, || read_status(&batches, ns, name)).await?;
    Ok(exit_code(phase))
}

/// The line that ends a watch: its phase and counts, and why it failed.
fn outcome_line(name: &str, phase: Phase, st: &TaskBatchStatus) -> String {
    let c = st.counts;
    let why = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| format!(" ({})", c.message))
        .unwrap_or_default();
    // The total is known only once every task was enqueued: a batch
    // cancelled or given up before that has its enqueued ones.
    format!(
        "{name}: {phase:?}, {} succeeded, {} failed of {}{why}",
        c.succeeded,
        c.failed,
        c.total.max(c.enqueued)
    )
}

/// Reads the batch with `read` until it finishes, showing its progress;
/// returns its phase then. A read that fails for a while (the API server
/// restarting, a connection dropped) is tried again, waiting longer each
/// time, for up to `pace.give_up`.
async fn follow<F, Fut>(ns: &str, name: &str, pace: Pace, mut read: F) -> Result<Phase>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<TaskBatchStatus>, ReadError>>,
{
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    let mut said = None;
    let started = std::time::Instant::now();
    let mut last_seen: Option<Phase> = None;
    let mut failing_since = None;
    let mut retry = pace.retry_first;
    loop {
        let st = match read().await {
            Ok(Some(st)) => {
                (failing_since, retry) = (None, pace.retry_first);
                st
            }
            Ok(None) => match last_seen {
                None => bail!("TaskBatch {name} does not exist in namespace {ns}"),
                // Finished and deleted (ttlSecondsAfterFinished) between two
                // reads: its outcome went with it.
                Some(phase) => bail!(
                    "TaskBatch {name} was deleted from namespace {ns} after it was last seen \
                     {phase:?} (a ttlSecondsAfterFinished of 0 deletes a batch as soon as it \
                     finishes): its Events may say how it ended: kubectl get events -n {ns} \
                     --field-selector involvedObject.name={name}"
                ),
            },
            Err(ReadError::Fatal(e)) => return Err(e),
            Err(ReadError::Transient(e)) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= pace.give_up {
                    return Err(e.context(format!(
                        "gave up watching TaskBatch {ns}/{name}: it could not be read for {} s",
                        pace.give_up.as_secs()
                    )));
                }
                bar.suspend(|| {
                    eprintln!(
                        "{name}: cannot read the batch, trying again in {} s: {e:#}",
                        retry.as_secs_f64()
                    )
                });
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(pace.retry_max);
                continue;
            }
        };
        // What holds the batch up, once each time it changes: a bar that
        // stands still says nothing of why.
        let holding = holding(&st).or_else(|| unseen(&st, started.elapsed(), ns));
        if holding.is_some() && holding != said {
            bar.suspend(|| {
                eprintln!(
                    "{name}: waiting: {}",
                    holding.as_deref().unwrap_or_default()
                )
            });
        }
        said = holding;
        let c = st.counts;
        bar.set_length(c.total.max(c.enqueued).max(0) as u64);
        bar.set_position((c.succeeded + c.failed).max(0) as u64);
        let phase = st.phase.unwrap_or(Phase::Pending);
        bar.set_message(format!("{phase:?}: {}", describe(&st)));
        if phase.is_finished() {
            bar.finish();
            println!("{}", outcome_line(name, phase, &st));
            return Ok(phase);
        }
        last_seen = Some(phase);
        tokio::time::sleep(pace.poll).await;
    }
}

async fn results(args: ResultsArgs) -> Result<ExitCode> {
    let (client, ns) = connect(&args.batch.ns).await?;
    let name = &args.batch.name;
    let batches: Api<TaskBatch> = Api::namespaced(client, &ns);
    let batch = get_batch(&batches, &ns, name).await?;
    let st = batch.status.unwrap_or_default();
    let Some(location) = st.results.clone() else {
        bail!("{}", no_results(name, &st));
    };
    let uri = S3Uri::parse(&location).with_context(|| format!("status.results {location}"))?;
    let s3 = Aws::load().await.s3();
    let mut keys = s3
        .list_keys(&uri.bucket, &uri.key)
        .await
        .with_context(|| format!("cannot list {location}"))?;
    keys.retain(|k| k.ends_with(".jsonl"));
    crate::results_parts::sort(&mut keys);
    let output = &args.output;
    let partial = output.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?,
    );
    let mut lines = 0u64;
    for key in &keys {
        let bytes = s3
            .get_bytes(&uri.bucket, key)
            .await
            .with_context(|| format!("cannot read s3://{}/{key}", uri.bucket))?;
        lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        file.write_all(&bytes)
            .with_context(|| format!("cannot write {}", partial.display()))?;
    }
    file.flush()
        .with_context(|| format!("cannot write {}", partial.display()))?;
    drop(file);
    std::fs::rename(&partial, output).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            output.display()
        )
    })?;
    let phase = st.phase.unwrap_or(Phase::Pending);
    let note = if phase.is_finished() {
        String::new()
    } else {
        format!(" (the batch is {phase:?}: more may come)")
    };
    println!(
        "{lines} results from {} parts under {location} written to {}{note}",
        keys.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What `cancel` says of a batch it found already finished (nothing to
/// cancel), `None` for one it cancels.
fn already_finished(name: &str, st: &TaskBatchStatus) -> Option<String> {
    let phase = st.phase.filter(|p| p.is_finished())?;
    Some(format!(
        "taskbatch/{name} had already finished ({phase:?}): nothing to cancel"
    ))
}

/// Why a batch has no results location in its status.
fn no_results(name: &str, st: &TaskBatchStatus) -> String {
    let phase = st.phase.unwrap_or(Phase::Pending);
    // The location is written when the batch starts.
    if st.start_time.is_none() {
        if phase.is_finished() {
            return format!(
                "TaskBatch {name} ended ({phase:?}) before it started: it has no results"
            );
        }
        let waiting = holding(st)
            .map(|h| format!(", waiting: {h}"))
            .unwrap_or_default();
        return format!(
            "TaskBatch {name} has not started yet ({phase:?}{waiting}): its results are written \
             once it runs; try again then (`cloudkon batch watch {name}` follows it)"
        );
    }
    format!(
        "TaskBatch {name} has no results location: it started without one (its results were \
         counted, not written); set spec.results.s3Prefix, or run the operator with \
         --results-prefix, for the next batches"
    )
}

async fn cancel(args: NameArgs) -> Result<ExitCode> {
    let (client, ns) = connect(&args.ns).await?;
    let batches: Api<TaskBatch> = Api::namespaced(client, &ns);
    let name = &args.name;
    // A finished batch is left as it is: a cancel mark on it would say it
    // was cancelled.
    let st = get_batch(&batches, &ns, name)
        .await?
        .status
        .unwrap_or_default();
    if let Some(said) = already_finished(name, &st) {
        println!("{said}");
        return Ok(ExitCode::SUCCESS);
    }
    let patched = batches
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "cancel": true } })),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => {
                anyhow::anyhow!("TaskBatch {name} does not exist in namespace {ns}")
            }
            e => anyhow::Error::new(e).context(format!("cannot cancel TaskBatch {ns}/{name}")),
        })?;
    // Finished between the read and the patch: the mark changes nothing.
    match already_finished(name, &patched.status.unwrap_or_default()) {
        Some(said) => println!("{said}"),
        None => println!("taskbatch/{name} cancelled"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: NamespaceArgs) -> Result<ExitCode> {
    let (client, ns) = connect(&args).await?;
    let batches: Api<TaskBatch> = Api::namespaced(client, &ns);
    let all = batches
        .list(&ListParams::default())
        .await
        .with_context(|| format!("cannot list TaskBatches in namespace {ns}"))?;
    let rows: Vec<[String; 7]> = all
        .items
        .iter()
        .map(|b| {
            let st = b.status.clone().unwrap_or_default();
            [
                b.name_any(),
                format!("{:?}", st.phase.unwrap_or(Phase::Pending)),
                st.progress.clone().unwrap_or_default(),
                st.counts.failed.to_string(),
                st.throughput.map(|r| format!("{r:.1}")).unwrap_or_default(),
                st.eta.clone().unwrap_or_default(),
                st.cost.map(|c| c.summary).unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["NAME", "PHASE", "DONE", "FAILED", "RATE", "ETA", "COST"],
            &rows
        )
    );
    if rows.is_empty() {
        eprintln!("no TaskBatches in namespace {ns}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell, as kubectl prints them.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("   ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths_are_valid_object_names() {
        let name = |p: &str| name_from_path(Path::new(p));
        assert_eq!(
            name("sweeps/My Sweep_2026.txt").as_deref(),
            Some("my-sweep-2026")
        );
        assert_eq!(name("--x--.jsonl").as_deref(), Some("x"));
        assert_eq!(name("___.txt"), None);
        let long = name(&format!("{}.txt", "a".repeat(80))).unwrap();
        assert_eq!(long.len(), 50);
    }

    #[test]
    fn what_holds_a_batch_up_is_read_from_its_conditions() {
        let st = |conditions: serde_json::Value| -> TaskBatchStatus {
            serde_json::from_value(serde_json::json!({ "conditions": conditions })).unwrap()
        };
        let c = |type_: &str, status: &str, reason: &str, message: &str| {
            serde_json::json!({"type": type_, "status": status, "reason": reason,
                "message": message, "lastTransitionTime": "2026-12-02T00:00:00Z"})
        };
        let fine = c("Accepted", "True", "Valid", "ok");
        assert_eq!(holding(&st(serde_json::json!([fine.clone()]))), None);
        assert_eq!(
            holding(&st(serde_json::json!([
                c(
                    "Accepted",
                    "False",
                    "WorkerPoolNotFound",
                    "WorkerPool \"p\" does not exist"
                ),
                c(
                    "WorkersFailing",
                    "True",
                    "WorkersFailing",
                    "WorkerPool p: ..."
                ),
            ])))
            .as_deref(),
            Some("WorkerPoolNotFound: WorkerPool \"p\" does not exist")
        );
        let failing = c(
            "WorkersFailing",
            "True",
            "WorkersFailing",
            "WorkerPool p: 0 ready",
        );
        assert_eq!(
            holding(&st(serde_json::json!([fine.clone(), failing]))).as_deref(),
            Some("WorkersFailing: WorkerPool p: 0 ready")
        );
        let fixed = c("WorkersFailing", "False", "NotFailing", "NotFailing");
        assert_eq!(holding(&st(serde_json::json!([fine.clone(), fixed]))), None);
        let runner = c(
            "RunnerFailing",
            "True",
            "RunnerFailing",
            "the batch's runner stopped on an error 2 times in a row",
        );
        assert_eq!(
            holding(&st(serde_json::json!([fine, runner]))).as_deref(),
            Some("RunnerFailing: the batch's runner stopped on an error 2 times in a row")
        );
    }

    #[test]
    fn a_batch_no_operator_looked_at_is_said_after_a_while() {
        let empty = TaskBatchStatus::default();
        assert_eq!(unseen(&empty, UNSEEN / 2, "ns"), None);
        let said = unseen(&empty, UNSEEN, "ns").unwrap();
        assert!(
            said.starts_with("NoOperator: ") && said.contains("namespace ns?"),
            "{said}"
        );
        let seen = TaskBatchStatus {
            observed_generation: Some(1),
            ..TaskBatchStatus::default()
        };
        assert_eq!(unseen(&seen, UNSEEN * 6, "ns"), None);
    }

    const FAST: Pace = Pace {
        poll: Duration::from_millis(1),
        retry_first: Duration::from_millis(1),
        retry_max: Duration::from_millis(4),
        give_up: Duration::from_millis(50),
    };

    fn status(phase: Phase) -> Option<TaskBatchStatus> {
        Some(TaskBatchStatus {
            phase: Some(phase),
            ..TaskBatchStatus::default()
        })
    }

    /// `follow` on these reads, in order (the last one again once they run
    /// out), giving up after `give_up` of failed reads.
    async fn follow_reads(
        reads: Vec<Result<Option<TaskBatchStatus>, ReadError>>,
        give_up: Duration,
    ) -> (Result<Phase>, usize) {
        let mut reads = std::collections::VecDeque::from(reads);
        let mut made = 0;
        let pace = Pace { give_up, ..FAST };
        let got = follow("ns", "b", pace, || {
            made += 1;
            let read = if reads.len() > 1 {
                reads.pop_front().unwrap()
            } else {
                match reads.front().unwrap() {
                    Ok(st) => Ok(st.clone()),
                    Err(ReadError::Transient(e)) => {
                        Err(ReadError::Transient(anyhow::anyhow!("{e}")))
                    }
                    Err(ReadError::Fatal(e)) => Err(ReadError::Fatal(anyhow::anyhow!("{e}"))),
                }
            };
            std::future::ready(read)
        })
        .await;
        (got, made)
    }

    #[tokio::test]
    async fn a_watch_outlasts_a_failed_read() {
        let dropped = || ReadError::Transient(anyhow::anyhow!("connection reset"));
        let (got, made) = follow_reads(
            vec![
                Ok(status(Phase::Running)),
                Err(dropped()),
                Err(dropped()),
                Ok(status(Phase::Succeeded)),
            ],
            // Far more than two retries take, however busy the machine.
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(got.unwrap(), Phase::Succeeded);
        assert_eq!(made, 4);
        assert_eq!(exit_code(Phase::Succeeded), ExitCode::SUCCESS);
        assert_eq!(exit_code(Phase::Cancelled), ExitCode::from(1));
        // Failing for ever: given up, saying why.
        let (got, _) = follow_reads(vec![Err(dropped())], FAST.give_up).await;
        let e = format!("{:#}", got.unwrap_err());
        assert!(
            e.contains("gave up watching TaskBatch ns/b") && e.contains("connection reset"),
            "{e}"
        );
        // Refused (e.g. forbidden): at once.
        let (got, made) = follow_reads(
            vec![Err(ReadError::Fatal(anyhow::anyhow!("forbidden")))],
            FAST.give_up,
        )
        .await;
        assert_eq!(
            (got.unwrap_err().to_string(), made),
            ("forbidden".into(), 1)
        );
    }

    #[tokio::test]
    async fn a_batch_gone_is_said_as_never_there_or_deleted_since() {
        let (got, _) = follow_reads(vec![Ok(None)], FAST.give_up).await;
        let e = got.unwrap_err().to_string();
        assert_eq!(e, "TaskBatch b does not exist in namespace ns");
        let (got, _) = follow_reads(vec![Ok(status(Phase::Running)), Ok(None)], FAST.give_up).await;
        let e = got.unwrap_err().to_string();
        assert!(
            e.starts_with(
                "TaskBatch b was deleted from namespace ns after it was last seen Running"
            ),
            "{e}"
        );
        // Seen finished (a batch deleted at once keeps its status until its
        // finalizer is done): its outcome, not a read of it gone.
        let (got, made) =
            follow_reads(vec![Ok(status(Phase::Failed)), Ok(None)], FAST.give_up).await;
        assert_eq!((got.unwrap(), made), (Phase::Failed, 1));
    }

    #[test]
    fn transient_errors_are_the_servers_and_the_connections() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            }))
        };
        assert!(transient(&api(503)));
        assert!(transient(&api(429)));
        assert!(!transient(&api(403)));
        assert!(!transient(&api(401)));
    }

    #[test]
    fn the_last_line_counts_what_was_enqueued_when_the_total_is_unknown() {
        let mut st = status(Phase::Cancelled).unwrap();
        st.counts.enqueued = 7;
        st.counts.succeeded = 5;
        assert_eq!(
            outcome_line("b", Phase::Cancelled, &st),
            "b: Cancelled, 5 succeeded, 0 failed of 7"
        );
        st.counts.total = 10;
        st.counts.enqueued = 10;
        assert_eq!(
            outcome_line("b", Phase::Cancelled, &st),
            "b: Cancelled, 5 succeeded, 0 failed of 10"
        );
    }

    #[test]
    fn cancelling_a_finished_batch_says_it_had_finished() {
        let said = already_finished("b", &status(Phase::Succeeded).unwrap());
        assert_eq!(
            said.as_deref(),
            Some("taskbatch/b had already finished (Succeeded): nothing to cancel")
        );
        assert_eq!(
            already_finished("b", &status(Phase::Running).unwrap()),
            None
        );
        assert_eq!(already_finished("b", &TaskBatchStatus::default()), None);
    }

    #[test]
    fn results_of_a_batch_not_started_say_so() {
        let e = no_results("b", &status(Phase::Pending).unwrap());
        assert!(
            e.starts_with("TaskBatch b has not started yet (Pending)") && !e.contains("s3Prefix"),
            "{e}"
        );
        let e = no_results("b", &TaskBatchStatus::default());
        assert!(e.contains("has not started yet (Pending)"), "{e}");
        let e = no_results("b", &status(Phase::Cancelled).unwrap());
        assert_eq!(
            e,
            "TaskBatch b ended (Cancelled) before it started: it has no results"
        );
        let mut started = status(Phase::Running).unwrap();
        started.start_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        ));
        let e = no_results("b", &started);
        assert!(e.contains("set spec.results.s3Prefix"), "{e}");
    }

    #[test]
    fn a_spec_the_operator_would_refuse_is_refused_before_anything_is_made() {
        let args = |results: Option<&str>| SubmitArgs {
            workload: "w.txt".into(),
            pool: "default".into(),
            name: None,
            ns: NamespaceArgs { namespace: None },
            upload: None,
            weight: None,
            results: results.map(String::from),
            max_failed_percent: None,
            watch: false,
        };
        let tasks = json!({ "configMap": { "name": "w-workload", "key": WORKLOAD_KEY } });
        let e = new_batch(&args(Some("my-bucket/out")), "w", "ns", tasks.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("TaskBatch w would be refused (nothing was created):")
                && e.contains("spec.results.s3Prefix (\"my-bucket/out\") must be s3://bucket"),
            "{e}"
        );
        let b = new_batch(&args(Some("s3://my-bucket/out")), "w", "ns", tasks).unwrap();
        assert_eq!(b.spec.worker_pool, "default");
    }

    #[test]
    fn tables_pad_their_columns() {
        let rows = [
            ["a".to_string(), "Running".to_string()],
            ["longer".to_string(), "".to_string()],
        ];
        assert_eq!(
            table(&["NAME", "PHASE"], &rows),
            "NAME     PHASE\na        Running\nlonger\n"
        );
    }
}
