//! What the operator's tests against the local control plane share.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cloudkon_core::aws::{Aws, ErrorKind};
use cloudkon_operator::crd::{TaskBatch, WorkerPool};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

pub mod dashboard;

/// The workspace root (the examples, charts and README are read from it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate is in the workspace")
        .to_path_buf()
}

#[allow(unused_imports)] // each test binary uses a different part
pub use cloudkon_testkit::{make_image, probe, serial, unique};

/// The control plane's kubectl and helm, when KUBECONFIG is the one
/// `scripts/control-plane` wrote; otherwise fails saying how to start it (a
/// test must never touch another cluster).
pub fn require_control_plane() -> (String, String) {
    let state = std::env::var_os("CLOUDKON_KUBE_STATE_DIR");
    let kubeconfig = std::env::var_os("KUBECONFIG");
    let local = match (&state, &kubeconfig) {
        (Some(state), Some(kubeconfig)) => {
            Path::new(kubeconfig) == Path::new(state).join("kubeconfig")
        }
        _ => false,
    };
    assert!(
        local,
        "KUBECONFIG is not the local control plane's: run scripts/test, or \
         source \"$(scripts/control-plane up)\" first"
    );
    (
        std::env::var("CLOUDKON_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        std::env::var("CLOUDKON_HELM").unwrap_or_else(|_| "helm".into()),
    )
}

/// Every result line of a batch, from all its parts (`<prefix>part-NNNNNN.jsonl`:
/// the operator writes a part per flush, so results finished apart may be in
/// different parts).
pub fn result_lines(
    rt: &tokio::runtime::Runtime,
    bucket: &str,
    prefix: &str,
) -> Vec<serde_json::Value> {
    let s3 = rt.block_on(Aws::load()).s3();
    let mut lines = Vec::new();
    for part in 0.. {
        let key = format!("{prefix}part-{part:06}.jsonl");
        match rt.block_on(s3.get_bytes(bucket, &key)) {
            Ok(bytes) => {
                for line in String::from_utf8(bytes).unwrap().lines() {
                    lines.push(serde_json::from_str(line).unwrap());
                }
            }
            Err(e) if e.kind == ErrorKind::NotFound => break,
            Err(e) => panic!("{e}"),
        }
    }
    lines
}

/// The results of a batch: task id → how many lines.
pub fn results_in_s3(
    rt: &tokio::runtime::Runtime,
    bucket: &str,
    prefix: &str,
) -> BTreeMap<u64, u32> {
    let mut ids = BTreeMap::new();
    for v in result_lines(rt, bucket, prefix) {
        *ids.entry(v["id"].as_u64().unwrap()).or_default() += 1;
    }
    ids
}

/// Runs `program` in the workspace root, feeding it `stdin`.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Like `run`, and returns stdout; fails with the output when `program` does.
pub fn ok(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(program, args, stdin);
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Calls `f` every `every` until it returns `Some`, for at most `within`.
pub fn poll_opt<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Calls `f` every `every` until it returns `Some`, for at most `within`; on
/// a timeout, fails saying what it waited for, followed by `context()`.
pub fn poll<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(every);
    }
}

/// kubectl and a kube client for one namespace of the test cluster.
pub struct Kube {
    pub kubectl: String,
    pub ns: String,
    pub client: kube::Client,
    pub rt: tokio::runtime::Runtime,
}

impl Kube {
    /// For namespace `ns` (not created here).
    pub fn new(kubectl: String, ns: String) -> Kube {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(kube::Client::try_default()).unwrap();
        Kube {
            kubectl,
            ns,
            client,
            rt,
        }
    }

    /// kubectl's arguments, in this namespace.
    fn in_ns<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        [&["-n", self.ns.as_str()], args].concat()
    }

    /// `kubectl -n <ns> args...`
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run(&self.kubectl, &self.in_ns(args), stdin)
    }

    /// `kubectl -n <ns> args...`, stdout; fails when kubectl does.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(&self.kubectl, &self.in_ns(args), None)
    }

    pub fn apply(&self, yaml: &str) {
        ok(
            &self.kubectl,
            &self.in_ns(&["apply", "-f", "-"]),
            Some(yaml),
        );
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pool(&self, name: &str) -> WorkerPool {
        self.rt
            .block_on(self.api::<WorkerPool>().get(name))
            .unwrap()
    }

    pub fn batch(&self, name: &str) -> TaskBatch {
        self.rt.block_on(self.api::<TaskBatch>().get(name)).unwrap()
    }

    /// A Deployment's spec.replicas; None while it does not exist.
    pub fn replicas(&self, deployment: &str) -> Option<i32> {
        self.rt
            .block_on(self.api::<Deployment>().get_opt(deployment))
            .unwrap()
            .and_then(|d| d.spec?.replicas)
    }
}

/// A TaskBatch of 2 Animoto tasks on `pool`: 3 images (`urls`) × 2 s at
/// 640x360 each, results under `s3://<bucket>/results`.
pub fn slideshows_batch(pool: &str, bucket: &str, urls: &[String; 3]) -> String {
    let urls = serde_json::to_string(urls).unwrap();
    format!(
        r#"
apiVersion: cloudkon.io/v1alpha1
kind: TaskBatch
metadata: {{name: slideshows}}
spec:
  workerPool: {pool}
  results: {{s3Prefix: "s3://{bucket}/results"}}
  tasks:
    generator:
      count: 2
      template:
        kind: animoto
        urls: {urls}
        secondsPerImage: 2
        resolution: 640x360
        output: "s3://{bucket}/videos/show-{{i}}"
"#
    )
}

/// Checks the 2 videos of `slideshows_batch`: each result
/// names a video in S3 and a presigned URL; each video is h264, 640x360, 6 s.
/// `results`: where the batch's status says its results are.
pub fn check_slideshows(rt: &tokio::runtime::Runtime, bucket: &str, results: &str, dir: &Path) {
    let s3 = rt.block_on(Aws::load()).s3();
    let prefix = results
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap_or_else(|| panic!("results at {results}, not in {bucket}"));
    let results = result_lines(rt, bucket, prefix);
    assert_eq!(results.len(), 2, "{results:?}");
    for v in &results {
        assert!(v["artifact_url"].as_str().unwrap().starts_with("http"));
        let artifact = v["artifact"].as_str().unwrap();
        let uri = cloudkon_core::aws::S3Uri::object(artifact).unwrap();
        let video = dir.join("video.mp4");
        std::fs::write(
            &video,
            rt.block_on(s3.get_bytes(&uri.bucket, &uri.key)).unwrap(),
        )
        .unwrap();
        let p = probe(&video);
        assert_eq!(
            (p.codec.as_str(), p.size().as_str()),
            ("h264", "640x360"),
            "{artifact}: {p:?}"
        );
        assert!(
            (p.duration - 6.0).abs() < 0.3,
            "{artifact}: {} s",
            p.duration
        );
        println!("{artifact}: {} {} {:.1} s", p.codec, p.size(), p.duration);
    }
}
