//! `cloudkon-operator bench` (and `cloudkon bench taskbatch`, which runs it):
//! the main path's figures on this machine, side by side in one run. Each
//! scenario gets a namespace of its own with this binary as its operator (a
//! host process), a WorkerPool drained by `cloudkon-worker` processes on the
//! host, and TaskBatches created through the API server; the references
//! (`cloudkon submit`, `cloudkon run`) run the same tasks in the same run.
//! It needs what the tests need: a cluster (KUBECONFIG; `scripts/control-plane
//! up`) and the AWS servers (`scripts/aws-servers up`), and the `cloudkon` and
//! `cloudkon-worker` binaries next to this one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cloudkon_core::aws::{Aws, ErrorKind};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::crd::{self, TaskBatch, WorkerPool};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `sleep 0` tasks with results to S3, against `cloudkon submit` and
    /// `cloudkon run`: throughput, runner restarts, operator memory, parts.
    Sleep0,
    /// `run true` against `cloudkon run`, as it is and with a region's
    /// latency: throughput and AWS requests per task.
    Run,
    /// Tasks of 1 s, 100 ms and 10 ms, lengths not declared, and 1 s declared.
    Efficiency,
    /// Two batches of weights 1 and 3 sharing the pool.
    Share,
    /// A 200-task batch alone, then beside a huge one.
    Beside,
    /// A 10-million-task generator batch with no worker: the meter, the
    /// status's size, the operator's memory.
    Huge,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which scenarios, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sleep0,run,efficiency,share,beside,huge"
    )]
    only: Vec<Scenario>,
    /// `sleep 0` tasks in the sleep0 batch (and the huge batch of `beside`).
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    /// `run true` tasks in the run scenario.
    #[arg(long, default_value_t = 10_000)]
    run_tasks: u64,
    /// Milliseconds added each way to SQS, S3 and DynamoDB in the run
    /// scenario's second half (a cloud region's round trip is ~5 ms each way).
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
    /// Tasks in the huge scenario's generator batch.
    #[arg(long, default_value_t = 10_000_000)]
    huge: u64,
}

/// Worker processes and slots each, as issue 13 measures: 8 slots.
const WORKERS: usize = 2;
const THREADS: usize = 4;
const SLOTS: usize = WORKERS * THREADS;

pub fn run(args: BenchArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = runtime
        .block_on(Client::try_default())
        .context("no cluster: set KUBECONFIG (e.g. source \"$(scripts/control-plane up)\")")?;
    ensure!(
        std::env::var_os("AWS_ENDPOINT_URL_SQS").is_some(),
        "no AWS endpoints: source \"$(scripts/aws-servers up)\" first"
    );
    runtime.block_on(install_crds(&client))?;
    let mut report = Vec::new();
    for scenario in &args.only {
        let lines = match scenario {
            Scenario::Sleep0 => sleep0(&runtime, &client, args.tasks)?,
            Scenario::Run => run_true(&runtime, &client, args.run_tasks, args.delay_ms)?,
            Scenario::Efficiency => efficiency(&runtime, &client)?,
            Scenario::Share => share(&runtime, &client)?,
            Scenario::Beside => beside(&runtime, &client, args.tasks)?,
            Scenario::Huge => huge(&runtime, &client, args.huge)?,
        };
        for line in &lines {
            println!("{line}");
        }
        report.extend(lines);
    }
    println!(
        "\nbench taskbatch ({WORKERS} host workers x {THREADS} threads):\n  {}",
        report.join("\n  ")
    );
    Ok(())
}

async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for c in crd::crds() {
        let name = c.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("cloudkon-bench").force(),
            &Patch::Apply(&c),
        )
        .await
        .with_context(|| format!("cannot install CRD {name}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = api.get(&name).await?.status.is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            ensure!(Instant::now() < deadline, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// One scenario's namespace, operator, pool and workers; all stopped and
/// deleted on drop.
struct Stage<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: Client,
    ns: String,
    dir: tempfile::TempDir,
    operator: Child,
    operator_metrics: String,
    workers: Vec<Child>,
    worker_metrics: Vec<String>,
    queue: String,
    /// Proxies' runtime (kept alive while the stage runs).
    _proxies: Option<tokio::runtime::Runtime>,
}

impl<'a> Stage<'a> {
    /// CPU seconds used so far by the operator and by the workers together.
    fn cpu_seconds(&self) -> (f64, f64) {
        (
            cpu_seconds(self.operator.id()),
            self.workers.iter().map(|w| cpu_seconds(w.id())).sum(),
        )
    }

    /// A namespace with the operator and `WORKERS` workers; with `delay`,
    /// both reach SQS, S3 and DynamoDB through delaying proxies.
    fn new(
        rt: &'a tokio::runtime::Runtime,
        client: &Client,
        name: &str,
        delay: Option<Duration>,
    ) -> Result<Self> {
        static STAGES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = format!("cloudkon-bench-{name}-{}-{n}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        rt.block_on(namespaces.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        ))
        .with_context(|| format!("cannot create namespace {ns}"))?;
        let (env, proxies) = match delay {
            Some(d) => {
                let (env, rt) = delayed_aws_env(d)?;
                (env, Some(rt))
            }
            None => (Vec::new(), None),
        };
        let operator_metrics = free_addr()?.to_string();
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("operator.log"))?;
        let operator = Command::new(std::env::current_exe()?)
            .args(["run", "--namespace", &ns, "--poll", "500ms"])
            .args(["--metrics-addr", &operator_metrics])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,kube_runtime=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the operator")?;
        let mut stage = Stage {
            rt,
            client: client.clone(),
            ns,
            dir,
            operator,
            operator_metrics,
            workers: Vec::new(),
            worker_metrics: Vec::new(),
            queue: String::new(),
            _proxies: proxies,
        };
        let table = stage.ns.clone();
        stage.create::<WorkerPool>(json!({
            "metadata": {"name": "p"},
            "spec": {"workers": {"min": 0, "max": WORKERS},
                     "template": {"image": "cloudkon/worker:bench", "threads": THREADS, "ledgerTable": table}}
        }))?;
        stage.queue = stage.wait("the pool's queue", Duration::from_secs(60), |s| {
            s.get::<WorkerPool>("p").ok()?.status?.queue_url
        })?;
        for i in 0..WORKERS {
            let metrics = free_addr()?.to_string();
            let child = Command::new(sibling("cloudkon-worker")?)
                .args(["--queue", &stage.queue, "--ledger-table", &table])
                .args(["--worker-id", &format!("{}-w{i}", stage.ns)])
                .args([
                    "--threads",
                    &THREADS.to_string(),
                    "--lease",
                    "10s",
                    "--receive-wait",
                    "1s",
                ])
                .args(["--metrics-addr", &metrics])
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start cloudkon-worker")?;
            stage.workers.push(child);
            stage.worker_metrics.push(metrics);
        }
        for addr in std::iter::once(&stage.operator_metrics).chain(&stage.worker_metrics) {
            stage.wait(
                &format!("metrics on {addr}"),
                Duration::from_secs(30),
                |_| TcpStream::connect(addr).ok(),
            )?;
        }
        Ok(stage)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn create<K>(&self, object: Value) -> Result<()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + serde::de::DeserializeOwned
            + serde::Serialize
            + Clone
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let mut object = object;
        object["apiVersion"] = json!("cloudkon.io/v1alpha1");
        object["kind"] = json!(K::kind(&Default::default()));
        let k: K = serde_json::from_value(object)?;
        self.rt
            .block_on(self.api::<K>().create(&PostParams::default(), &k))
            .context("cannot create an object")?;
        Ok(())
    }

    fn get<K>(&self, name: &str) -> Result<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(self.rt.block_on(self.api::<K>().get(name))?)
    }

    /// Polls `f` every 50 ms until it answers, for at most `within`.
    fn wait<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {within:?} waiting for {what}; operator log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[text.floor_char_boundary(start)..].to_string()
    }

    /// Creates a generator batch and waits for it to finish: wall time from
    /// the create to Succeeded as a watch sees it, and the AWS requests the
    /// operator and workers sent meanwhile, by operation.
    fn batch(
        &self,
        name: &str,
        count: u64,
        template: Value,
        extra: Value,
    ) -> Result<(Duration, Requests)> {
        let before = self.requests()?;
        let started = Instant::now();
        self.create_batch(name, count, template, extra)?;
        let b = self.finished(name, Duration::from_secs(3600))?;
        let wall = started.elapsed();
        let s = b.status.unwrap_or_default();
        ensure!(
            s.counts.succeeded == count as i64,
            "batch {name}: {} of {count} succeeded ({:?})",
            s.counts.succeeded,
            s.phase
        );
        Ok((wall, self.requests()?.since(&before)))
    }

    fn create_batch(&self, name: &str, count: u64, template: Value, extra: Value) -> Result<()> {
        let mut spec = json!({"workerPool": "p", "tasks": {"generator": {"template": template, "count": count}}});
        if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
            spec.extend(extra);
        }
        self.create::<TaskBatch>(json!({"metadata": {"name": name}, "spec": spec}))
    }

    /// Watched, not polled: a GET every 50 ms was a fifth of a core of API
    /// server and etcd on this machine, taken from the workers it measures,
    /// and up to 50 ms late.
    fn finished(&self, name: &str, within: Duration) -> Result<TaskBatch> {
        let finished = |b: Option<&TaskBatch>| {
            b.and_then(|b| b.status.as_ref()?.phase)
                .is_some_and(|p| p.is_finished())
        };
        let watch = kube::runtime::wait::await_condition(self.api::<TaskBatch>(), name, finished);
        // The timer is made inside the runtime, which it needs.
        let watched = self
            .rt
            .block_on(async { tokio::time::timeout(within, watch).await });
        match watched {
            Ok(Ok(Some(b))) => Ok(b),
            Ok(Ok(None)) => bail!("TaskBatch {name} was deleted before it finished"),
            Ok(Err(e)) => Err(e).with_context(|| format!("cannot watch TaskBatch {name}")),
            Err(_) => bail!(
                "timed out after {within:?} waiting for TaskBatch {name} to finish; operator log:\n{}",
                self.log()
            ),
        }
    }

    fn requests(&self) -> Result<Requests> {
        let mut out = Requests::default();
        for addr in std::iter::once(&self.operator_metrics).chain(&self.worker_metrics) {
            for line in http_get(addr, "/metrics")?.lines() {
                let Some(rest) = line.strip_prefix("cloudkon_aws_requests_total{operation=\"")
                else {
                    continue;
                };
                let (operation, value) = rest.split_once("\"} ").context("a metrics line")?;
                *out.0.entry(operation.to_string()).or_default() += value.parse::<u64>()?;
            }
        }
        Ok(out)
    }

    fn stop_workers(&mut self) {
        for w in &mut self.workers {
            stop(w);
        }
        self.worker_metrics.clear();
    }

    fn restarts(&self) -> usize {
        self.log().matches("batch runner stopped").count()
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        // The namespace first, while the operator still runs: its finalizers
        // delete the queues, and the namespace does not hang in Terminating.
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = self.rt.block_on(async {
            namespaces
                .delete(&self.ns, &DeleteParams::default())
                .await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && namespaces.get_opt(&self.ns).await?.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<_, kube::Error>(())
        });
        for w in &mut self.workers {
            stop(w);
        }
        stop(&mut self.operator);
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// AWS requests by operation.
#[derive(Default)]
struct Requests(BTreeMap<String, u64>);

impl Requests {
    fn since(&self, before: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .map(|(op, n)| (op.clone(), n - before.0.get(op).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn top(&self) -> String {
        let mut ops: Vec<_> = self.0.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1));
        ops.iter()
            .take(5)
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn sleep0(rt: &tokio::runtime::Runtime, client: &Client, tasks: u64) -> Result<Vec<String>> {
    let stage = Stage::new(rt, client, "sleep0", None)?;
    let s3 = rt.block_on(Aws::load()).s3();
    rt.block_on(s3.ensure_bucket("cloudkon-bench"))?;
    let cpu_before = stage.cpu_seconds();
    let (wall, _) = stage.batch(
        "zero",
        tasks,
        json!({"kind": "sleep", "ms": 0}),
        json!({"results": {"s3Prefix": "s3://cloudkon-bench/r"}}),
    )?;
    let (operator_cpu, workers_cpu) = {
        let after = stage.cpu_seconds();
        (after.0 - cpu_before.0, after.1 - cpu_before.1)
    };
    // The results: every task once, in parts under the local S3's 10 MiB.
    let location = stage
        .get::<TaskBatch>("zero")?
        .status
        .unwrap_or_default()
        .results;
    let location = cloudkon_core::aws::S3Uri::parse(&location.context("no results location")?)?;
    let prefix = location.key;
    let (mut parts, mut largest) = (0, 0);
    let mut seen = vec![false; tasks as usize];
    for part in 0.. {
        let key = format!("{prefix}part-{part:06}.jsonl");
        let bytes = match rt.block_on(s3.get_bytes("cloudkon-bench", &key)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind == ErrorKind::NotFound => break,
            Err(e) => return Err(e.into()),
        };
        parts += 1;
        largest = largest.max(bytes.len());
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line)?;
            let id = v["id"].as_u64().context("a result without id")? as usize;
            ensure!(
                !std::mem::replace(&mut seen[id], true),
                "task {id} has two results"
            );
        }
    }
    ensure!(seen.iter().all(|&s| s), "tasks without a result");
    ensure!(largest < 10 << 20, "a results part of {largest} bytes");
    let rss = peak_rss_mib(stage.operator.id());
    let restarts = stage.restarts();

    let workload = stage.dir.path().join("zero.txt");
    std::fs::write(&workload, "sleep 0\n".repeat(tasks as usize))?;
    let started = Instant::now();
    let status = Command::new(sibling("cloudkon")?)
        .arg("submit")
        .arg(&workload)
        .args([
            "--queue",
            &stage.queue,
            "--slots",
            &SLOTS.to_string(),
            "--json",
        ])
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "cloudkon submit failed");
    let submit = started.elapsed();
    let run = embedded_wall(stage.dir.path(), "sleep 0", tasks)?;
    let rate = |w: Duration| tasks as f64 / w.as_secs_f64();
    Ok(vec![format!(
        "TaskBatch {tasks} `sleep 0`, results to S3: {:.1} s = {:.0} tasks/s = {:.2}x `cloudkon submit` ({:.0} tasks/s), \
             {:.3}x `cloudkon run` ({:.0} tasks/s); runner restarts {restarts}; operator peak RSS {rss:.0} MiB; \
             {parts} results parts of at most {:.1} MiB, every task once; CPU while it ran: operator {operator_cpu:.1} s, \
             workers {workers_cpu:.1} s (of {:.1} s on {} cores)",
        wall.as_secs_f64(),
        rate(wall),
        rate(wall) / rate(submit),
        rate(submit),
        rate(wall) / rate(run),
        rate(run),
        largest as f64 / f64::from(1 << 20),
        wall.as_secs_f64() * cores() as f64,
        cores(),
    )])
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn run_true(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    n: u64,
    delay_ms: u64,
) -> Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let embedded = embedded_wall(dir.path(), "run true", n)?;
    let rate = |w: Duration| n as f64 / w.as_secs_f64();
    let mut out = Vec::new();
    for delay in [None, Some(Duration::from_millis(delay_ms))] {
        let stage = Stage::new(rt, client, "run", delay)?;
        let (wall, requests) = stage.batch(
            "run",
            n,
            json!({"kind": "run", "program": "true"}),
            json!({}),
        )?;
        let sizing = stage
            .get::<TaskBatch>("run")?
            .status
            .and_then(|s| s.bundle_sizing);
        out.push(format!(
            "TaskBatch {n} `run true`{}: {:.1} s = {:.0} tasks/s = {:.2}x `cloudkon run` on {SLOTS} slots ({:.0} tasks/s); \
             {:.4} AWS requests per task ({}); bundles end cut for {} us tasks",
            delay.map_or(String::new(), |d| format!(", {} ms each way", d.as_millis())),
            wall.as_secs_f64(),
            rate(wall),
            rate(wall) / rate(embedded),
            rate(embedded),
            requests.total() as f64 / n as f64,
            requests.top(),
            sizing.map_or("unknown".into(), |s| s.task_microseconds.to_string()),
        ));
    }
    Ok(out)
}

fn efficiency(rt: &tokio::runtime::Runtime, client: &Client) -> Result<Vec<String>> {
    let stage = Stage::new(rt, client, "eff", None)?;
    let cases = [
        (
            "s1",
            640,
            json!({"kind": "run", "program": "sleep", "args": ["1"]}),
            1.0,
            "run sleep 1",
        ),
        (
            "s01",
            3200,
            json!({"kind": "run", "program": "sleep", "args": ["0.1"]}),
            0.1,
            "run sleep 0.1",
        ),
        (
            "s001",
            16_000,
            json!({"kind": "run", "program": "sleep", "args": ["0.01"]}),
            0.01,
            "run sleep 0.01",
        ),
        (
            "d1",
            640,
            json!({"kind": "sleep", "ms": 1000}),
            1.0,
            "sleep 1000 (declared)",
        ),
    ];
    let mut out = Vec::new();
    for (name, count, template, secs, label) in cases {
        let (wall, _) = stage.batch(name, count, template, json!({}))?;
        out.push(format!(
            "efficiency {label} x {count} on {SLOTS} slots: {:.1} s, {:.1} %",
            wall.as_secs_f64(),
            100.0 * count as f64 * secs / SLOTS as f64 / wall.as_secs_f64(),
        ));
    }
    Ok(out)
}

fn share(rt: &tokio::runtime::Runtime, client: &Client) -> Result<Vec<String>> {
    let stage = Stage::new(rt, client, "share", None)?;
    let template = json!({"kind": "run", "program": "sleep", "args": ["0.02"]});
    stage.create_batch("light", 10_000, template.clone(), json!({"weight": 1}))?;
    // The heavy one larger: it must still have tasks to send at the end of
    // the measure (about 10,000 sent by then), or the light one gets the pool.
    stage.create_batch("heavy", 24_000, template, json!({"weight": 3}))?;
    let done = |s: &Stage| -> Option<(i64, i64)> {
        let count = |name| {
            let c = s.get::<TaskBatch>(name).ok()?.status?.counts;
            Some(c.succeeded + c.failed)
        };
        Some((count("light")?, count("heavy")?))
    };
    // Over a stretch where both run, once the windows have settled (the first
    // are sized before any task length is known): from 2,500 done to 12,500.
    // The counts are the statuses', each written about once a second: over
    // 2,500 tasks (~6 s) that alone moved the share by up to ±15 points.
    let (l0, h0) = stage.wait("2,500 done", Duration::from_secs(600), |s| {
        done(s).filter(|(l, h)| l + h >= 2500)
    })?;
    let (l1, h1) = stage.wait("12,500 done", Duration::from_secs(600), |s| {
        done(s).filter(|(l, h)| l + h >= 12_500)
    })?;
    ensure!(
        l1 < 10_000 && h1 < 24_000,
        "a batch finished within the measure"
    );
    let heavy = (h1 - h0) as f64 / ((l1 - l0) + (h1 - h0)) as f64;
    Ok(vec![format!(
        "weights 1 and 3, 10,000 and 24,000 x `run sleep 0.02`: {} and {} tasks done while both ran: the weight-3 batch {:.1} % (ideal 75 %)",
        l1 - l0,
        h1 - h0,
        100.0 * heavy
    )])
}

fn beside(rt: &tokio::runtime::Runtime, client: &Client, tasks: u64) -> Result<Vec<String>> {
    let stage = Stage::new(rt, client, "beside", None)?;
    let small = json!({"kind": "run", "program": "sleep", "args": ["0.1"]});
    let (alone, _) = stage.batch("small-alone", 200, small.clone(), json!({}))?;
    stage.create_batch("huge", tasks, json!({"kind": "sleep", "ms": 0}), json!({}))?;
    stage.wait("the huge batch running", Duration::from_secs(60), |s| {
        (s.get::<TaskBatch>("huge").ok()?.status?.counts.succeeded > 0).then_some(())
    })?;
    let (beside, _) = stage.batch("small-beside", 200, small, json!({}))?;
    let huge = stage.get::<TaskBatch>("huge")?.status.unwrap_or_default();
    Ok(vec![format!(
        "200 `run sleep 0.1`: alone {:.1} s, beside a {tasks}-task batch {:.1} s = {:.2}x (the huge batch {:?}, {} done then)",
        alone.as_secs_f64(),
        beside.as_secs_f64(),
        beside.as_secs_f64() / alone.as_secs_f64(),
        huge.phase,
        huge.counts.succeeded,
    )])
}

fn huge(rt: &tokio::runtime::Runtime, client: &Client, tasks: u64) -> Result<Vec<String>> {
    let mut stage = Stage::new(rt, client, "huge", None)?;
    stage.stop_workers();
    stage.create_batch("huge", tasks, json!({"kind": "sleep", "ms": 0}), json!({}))?;
    stage.wait("the huge batch enqueuing", Duration::from_secs(60), |s| {
        (s.get::<TaskBatch>("huge").ok()?.status?.counts.enqueued > 0).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(20));
    let b = stage.get::<TaskBatch>("huge")?;
    let bytes = serde_json::to_vec(&b)?.len();
    let enqueued = b.status.unwrap_or_default().counts.enqueued;
    let backlog = stage
        .get::<WorkerPool>("p")?
        .status
        .unwrap_or_default()
        .backlog;
    Ok(vec![format!(
        "{tasks}-task generator batch after 20 s with no worker: {enqueued} enqueued ({backlog} messages in the queue), \
         object with status {:.1} KiB, operator peak RSS {:.0} MiB",
        bytes as f64 / 1024.0,
        peak_rss_mib(stage.operator.id())
    )])
}

/// `cloudkon run` of `count` copies of `line` on `SLOTS` slots: its wall time.
fn embedded_wall(dir: &Path, line: &str, count: u64) -> Result<Duration> {
    let workload = dir.join("embedded.txt");
    std::fs::write(&workload, format!("{line}\n").repeat(count as usize))?;
    let started = Instant::now();
    let status = Command::new(sibling("cloudkon")?)
        .arg("run")
        .arg(&workload)
        .args(["--workers", &SLOTS.to_string(), "--json"])
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "cloudkon run failed");
    Ok(started.elapsed())
}

/// AWS endpoints behind delaying proxies (`delay` each way), served by the
/// runtime returned (keep it alive).
fn delayed_aws_env(delay: Duration) -> Result<(Vec<(String, String)>, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut env = Vec::new();
    for var in [
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_DYNAMODB",
    ] {
        let url = std::env::var(var).with_context(|| format!("{var} is not set"))?;
        let upstream: SocketAddr = url
            .strip_prefix("http://")
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .with_context(|| format!("{var}={url}: the bench proxies http://IP:PORT endpoints"))?;
        let proxy = rt.block_on(cloudkon_worker::delay_proxy::start(upstream, delay))?;
        env.push((var.to_string(), format!("http://{proxy}")));
    }
    Ok((env, rt))
}

/// A plain HTTP/1.0 GET on loopback.
fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot reach {addr}"))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A binary installed next to this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    ensure!(
        path.exists(),
        "{} not found: build it (cargo build --release -p cloudkon-cli -p cloudkon-worker)",
        path.display()
    );
    Ok(path)
}

/// User and system CPU seconds a process has used (`/proc/PID/stat`, in
/// USER_HZ ticks, 100 a second on Linux); 0 once it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields count from its closing ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime: fields 14 and 15, 12 and 13 after the name.
    (tick(11) + tick(12)) as f64 / 100.0
}

/// Peak resident memory of a process, from /proc (KiB → MiB).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_seconds_grow_as_it_works_and_a_gone_one_has_none() {
        let me = std::process::id();
        let start = cpu_seconds(me);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_seconds(me) < start + 0.05 && Instant::now() < deadline {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(
            cpu_seconds(me) >= start + 0.05,
            "{start} -> {}",
            cpu_seconds(me)
        );
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
