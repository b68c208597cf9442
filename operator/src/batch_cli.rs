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
    /// when it Failed or was Cancelled.
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
    /// workers skip its queued tasks.
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

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm_name = format!("{name}-workload");
    let (tasks, held_in) = match &args.upload {
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
            Aws::load()
                .await
                .s3()
                .put_bytes(&uri.bucket, &key, bytes)
                .await
                .with_context(|| format!("cannot upload {label}"))?;
            let object = format!("s3://{}/{key}", uri.bucket);
            (json!({ "s3": { "uri": object } }), object)
        }
        None => {
            ensure!(
                bytes.len() <= CONFIGMAP_WORKLOAD_MAX,
                "{label} is {} bytes, more than a ConfigMap holds ({CONFIGMAP_WORKLOAD_MAX}): \
                 give --upload s3://bucket/prefix",
                bytes.len()
            );
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
            (
                json!({ "configMap": { "name": cm_name, "key": WORKLOAD_KEY } }),
                format!("configmap/{cm_name}"),
            )
        }
    };
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
/// refused or missing (`Accepted` false), or its pool's workers failing.
fn holding(st: &TaskBatchStatus) -> Option<String> {
    let said = |type_: &str, status: &str| {
        st.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| format!("{}: {}", c.reason, c.message))
    };
    said("Accepted", "False").or_else(|| said("WorkersFailing", "True"))
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

async fn watch(client: &Client, ns: &str, name: &str) -> Result<ExitCode> {
    let batches: Api<TaskBatch> = Api::namespaced(client.clone(), ns);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    let mut said = None;
    let started = std::time::Instant::now();
    loop {
        let batch = get_batch(&batches, ns, name).await?;
        let st = batch.status.unwrap_or_default();
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
            let why = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Failed" && c.status == "True")
                .map(|c| format!(" ({})", c.message))
                .unwrap_or_default();
            println!(
                "{name}: {phase:?}, {} succeeded, {} failed of {}{why}",
                c.succeeded, c.failed, c.total
            );
            return Ok(if phase == Phase::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn results(args: ResultsArgs) -> Result<ExitCode> {
    let (client, ns) = connect(&args.batch.ns).await?;
    let name = &args.batch.name;
    let batches: Api<TaskBatch> = Api::namespaced(client, &ns);
    let batch = get_batch(&batches, &ns, name).await?;
    let st = batch.status.unwrap_or_default();
    let Some(location) = st.results.clone() else {
        bail!(
            "TaskBatch {name} has no results location: set spec.results.s3Prefix, or run the operator with --results-prefix"
        );
    };
    let uri = S3Uri::parse(&location).with_context(|| format!("status.results {location}"))?;
    let s3 = Aws::load().await.s3();
    let mut keys = s3
        .list_keys(&uri.bucket, &uri.key)
        .await
        .with_context(|| format!("cannot list {location}"))?;
    keys.retain(|k| k.ends_with(".jsonl"));
    keys.sort();
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

async fn cancel(args: NameArgs) -> Result<ExitCode> {
    let (client, ns) = connect(&args.ns).await?;
    let batches: Api<TaskBatch> = Api::namespaced(client, &ns);
    let name = &args.name;
    batches
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
    println!("taskbatch/{name} cancelled");
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
        assert_eq!(holding(&st(serde_json::json!([fine, fixed]))), None);
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
