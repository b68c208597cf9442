//! Real pods (issue 7): the operator installed with the Helm chart as a pod,
//! its WorkerPool's worker pods started by a real kubelet and containerd, the
//! AWS servers reached over the cluster's network. Needs the one-node cluster
//! of `scripts/e2e-cluster` and is not part of the fast suite (`test = false`):
//!
//! ```sh
//! cargo build --workspace && scripts/e2e-images build --out /tmp/ck-images
//! scripts/e2e-cluster up --images /tmp/ck-images
//! scripts/e2e-cluster exec -- cargo test --offline -p cloudkon-operator --test pods -- --nocapture
//! scripts/e2e-cluster down
//! ```
//!
//! `scripts/test --pods` does all of that.

mod common;

use common::{serial, unique};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudkon_core::aws::Aws;
use cloudkon_operator::crd::taskbatch::Phase;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;

/// What `scripts/e2e-cluster` exports.
struct ClusterEnv {
    kubectl: String,
    helm: String,
    node_ip: String,
    api_port: String,
    sqs_port: String,
    dynamodb_port: String,
    operator_image: String,
    worker_image: String,
    region: String,
}

fn require_cluster() -> ClusterEnv {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: these tests need the one-node cluster of scripts/e2e-cluster \
                 (scripts/e2e-cluster up; scripts/e2e-cluster exec -- cargo test --offline \
                 -p cloudkon-operator --test pods), or run scripts/test --pods"
            )
        })
    };
    // This cluster's variables first: a plain control plane is not enough.
    let node_ip = var("CLOUDKON_E2E_NODE_IP");
    let (kubectl, helm) = common::require_control_plane();
    ClusterEnv {
        kubectl,
        helm,
        node_ip,
        api_port: var("CLOUDKON_E2E_APISERVER_PORT"),
        sqs_port: var("CLOUDKON_E2E_SQS_PORT"),
        dynamodb_port: var("CLOUDKON_E2E_DYNAMODB_PORT"),
        operator_image: var("CLOUDKON_E2E_IMAGE_OPERATOR"),
        worker_image: var("CLOUDKON_E2E_IMAGE_WORKER"),
        region: var("AWS_REGION"),
    }
}

/// Seconds since `t0`, for the timelines.
fn secs(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64()
}

/// A namespace with the chart installed in it (the operator as a pod,
/// watching that namespace); uninstalled and deleted when dropped.
struct Install {
    kube: common::Kube,
    env: ClusterEnv,
    release: String,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Install {
    type Target = common::Kube;
    fn deref(&self) -> &common::Kube {
        &self.kube
    }
}

impl Install {
    fn new(prefix: &str) -> Install {
        let env = require_cluster();
        let i = Install {
            kube: common::Kube::new(env.kubectl.clone(), unique(prefix)),
            release: "ck".into(),
            env,
            dir: tempfile::tempdir().unwrap(),
        };
        i.ok(&["create", "namespace", &i.ns]);
        let (repository, tag) = i.env.operator_image.rsplit_once(':').unwrap();
        // No kube-proxy in this cluster: the operator reaches the API server
        // by the node's address, not the kubernetes Service.
        // (AWS_REGION is the chart's aws.region.)
        let mut extra = i.aws_env();
        extra.retain(|(k, _)| *k != "AWS_REGION");
        extra.push(("KUBERNETES_SERVICE_HOST", i.env.node_ip.clone()));
        extra.push(("KUBERNETES_SERVICE_PORT", i.env.api_port.clone()));
        extra.push(("RUST_LOG", "info,kube_runtime=warn".into()));
        let values = serde_json::json!({
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "watchNamespace": i.ns,
            "logFormat": "text",
            "aws": {"region": i.env.region},
            "extraEnv": env_list(&extra),
        });
        let values_file = i.dir.path().join("values.yaml");
        std::fs::write(&values_file, serde_json::to_string(&values).unwrap()).unwrap();
        let started = Instant::now();
        i.helm(&[
            "install",
            &i.release,
            "charts/cloudkon",
            "-n",
            &i.ns,
            "-f",
            values_file.to_str().unwrap(),
        ]);
        i.wait_for("the operator pod Ready", Duration::from_secs(120), |i| {
            let pods = i.pods("app.kubernetes.io/name=cloudkon-operator");
            pods.iter().any(ready).then_some(())
        });
        println!(
            "[{}] operator pod Ready {:.1} s after helm install",
            i.ns,
            started.elapsed().as_secs_f64()
        );
        i
    }

    /// The environment pods need to reach the AWS servers in the cluster's netns.
    fn aws_env(&self) -> Vec<(&'static str, String)> {
        let e = &self.env;
        let sqs = format!("http://{}:{}", e.node_ip, e.sqs_port);
        vec![
            ("AWS_ENDPOINT_URL_SQS", sqs.clone()),
            ("AWS_ENDPOINT_URL_S3", sqs),
            (
                "AWS_ENDPOINT_URL_DYNAMODB",
                format!("http://{}:{}", e.node_ip, e.dynamodb_port),
            ),
            ("AWS_REGION", e.region.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// A WorkerPool of real pods: the e2e worker image, small requests,
    /// quick to scale both ways.
    fn pool_yaml(&self, name: &str, max: i32, per_worker: i32, cooldown: i32) -> String {
        let pool = serde_json::json!({
            "apiVersion": "cloudkon.io/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {
                // Under the operator's default allowed names (cloudkon-*).
                "queue": {"name": format!("cloudkon-{}-{name}", self.ns)},
                "workers": {"min": 0, "max": max, "targetBacklogPerWorker": per_worker},
                "template": {
                    "image": self.env.worker_image,
                    "imagePullPolicy": "Never",
                    "threads": 4,
                    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"},
                                  "limits": {"memory": "512Mi"}},
                    "env": env_list(&self.aws_env()),
                    // The Animoto test serves its images from the node's
                    // address, which workers refuse unless allowed.
                    "allowDownloadsFrom": [format!("{}/32", self.env.node_ip)],
                },
                "behavior": {
                    "scaleDown": {"stabilizationWindowSeconds": 0},
                    "scaleToZeroCooldownSeconds": cooldown,
                },
            },
        });
        serde_json::to_string(&pool).unwrap()
    }

    fn helm(&self, args: &[&str]) -> String {
        common::ok(&self.env.helm, args, None)
    }

    fn pods(&self, selector: &str) -> Vec<Pod> {
        self.rt
            .block_on(
                self.api::<Pod>()
                    .list(&ListParams::default().labels(selector)),
            )
            .unwrap()
            .items
    }

    fn workers(&self, pool: &str) -> Vec<Pod> {
        self.pods(&format!("cloudkon.io/workerpool={pool}"))
    }

    /// Polls `f` every 100 ms until it returns `Some`, for at most `within`;
    /// on a timeout, fails with what the cluster shows.
    fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let every = Duration::from_millis(100);
        common::poll(what, within, every, || f(self), || self.diagnostics())
    }

    /// Pods, events and the operator's log, for failure messages.
    fn diagnostics(&self) -> String {
        let show = |args: &[&str]| {
            let out = self.run(args, None);
            format!(
                "$ kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        [
            show(&[
                "get",
                "pods,deployments,workerpools,taskbatches",
                "-o",
                "wide",
            ]),
            show(&["get", "events", "--sort-by=.lastTimestamp"]),
            show(&[
                "logs",
                "-l",
                "app.kubernetes.io/name=cloudkon-operator",
                "--tail=60",
            ]),
            show(&[
                "logs",
                "-l",
                "app.kubernetes.io/name=cloudkon-operator",
                "--tail=20",
                "--previous",
            ]),
        ]
        .join("\n")
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        // The TaskBatches and WorkerPools first, while the operator still runs
        // and can remove its finalizers (and delete its queues).
        for kind in ["taskbatches", "workerpools"] {
            let _ = Command::new(&self.env.kubectl)
                .args(["-n", &self.ns, "delete", kind, "--all", "--timeout=60s"])
                .output();
        }
        let _ = Command::new(&self.env.helm)
            .args(["uninstall", &self.release, "-n", &self.ns, "--wait"])
            .output();
        let _ = Command::new(&self.env.kubectl)
            .args(["delete", "namespace", &self.ns, "--timeout=120s"])
            .output();
    }
}

/// Name/value pairs as a container's `env` list.
fn env_list(vars: &[(&str, String)]) -> serde_json::Value {
    vars.iter()
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// 2,000 tasks of four kinds, as a workload file in a ConfigMap.
fn mixed_workload(count: u32) -> String {
    let mut lines = String::from("# 2,000 mixed tasks for the real-pods test\n");
    for i in 0..count {
        lines += &match i % 4 {
            0 => "sleep 0\n".to_string(),
            1 => "sleep 100\n".to_string(),
            2 => format!("run echo task {i}\n"),
            // A relative path written: the pod's root is read-only, and
            // the worker image starts tasks in its writable /tmp.
            _ => format!(
                "run sh -c 'echo seed={i} square=$(({i} * {i})) > out-{i} && cat out-{i} && rm out-{i}'\n"
            ),
        };
    }
    lines
}

#[test]
fn a_2000_task_batch_scales_worker_pods_from_zero_and_back() {
    let _serial = serial();
    let c = Install::new("pods-sweep");
    let bucket = "cloudkon-results";
    c.rt.block_on(async { Aws::load().await.s3().ensure_bucket(bucket).await })
        .unwrap();
    let pool = "sweep-pool";
    c.apply(&c.pool_yaml(pool, 4, 10, 5));
    c.wait_for("the pool's queue", Duration::from_secs(60), |c| {
        c.pool(pool).status?.queue_url
    });
    assert_eq!(c.replicas(&format!("{pool}-workers")), Some(0));
    assert!(c.workers(pool).is_empty(), "an idle pool has no pods");

    let count = 2000;
    let workload = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "sweep-tasks"},
        "data": {"tasks.txt": mixed_workload(count)},
    });
    c.apply(&workload.to_string());
    let batch = format!(
        r#"
apiVersion: cloudkon.io/v1alpha1
kind: TaskBatch
metadata: {{name: sweep}}
spec:
  workerPool: {pool}
  tasks:
    configMap: {{name: sweep-tasks, key: tasks.txt}}
  taskTimeoutSeconds: 60
  retry: {{maxAttempts: 3, backoffSeconds: 1}}
  results: {{s3Prefix: "s3://{bucket}/pods"}}
"#
    );
    let t0 = Instant::now();
    c.apply(&batch);

    // The timeline, polled every 100 ms.
    let mut marks: BTreeMap<&str, Instant> = BTreeMap::new();
    let mut max_pods = 0;
    let mut zero_at = None; // wall clock, to compare with the status's times
    let within = Duration::from_secs(600);
    loop {
        let now = Instant::now();
        let status = c.pool(pool).status.unwrap_or_default();
        if status.backlog > 0 {
            marks.entry("1 backlog seen").or_insert(now);
        }
        let replicas = c.replicas(&format!("{pool}-workers")).unwrap_or(0);
        if replicas > 0 {
            marks.entry("2 replicas patched").or_insert(now);
        }
        let pods = c.workers(pool);
        max_pods = max_pods.max(pods.iter().filter(|p| running(p)).count());
        if pods.iter().any(running) {
            marks.entry("3 first pod Running").or_insert(now);
        }
        let b = c.batch("sweep").status.unwrap_or_default();
        if b.counts.succeeded > 0 {
            marks.entry("4 first task done").or_insert(now);
        }
        if b.phase.is_some_and(|p| p.is_finished()) {
            marks.entry("5 last task (batch finished)").or_insert(now);
        }
        let finished = marks.contains_key("5 last task (batch finished)");
        if finished && replicas == 0 {
            marks.entry("6 replicas back to 0").or_insert(now);
            zero_at.get_or_insert_with(SystemTime::now);
        }
        if finished && pods.is_empty() {
            marks.insert("7 zero pods", now);
            break;
        }
        assert!(
            t0.elapsed() < within,
            "the batch did not finish and scale to zero within {within:?}: {marks:?}\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("timeline of {count} mixed tasks on real pods (s after kubectl apply):");
    for (mark, at) in &marks {
        println!("  {mark:<32} {:>7.1}", secs(t0, *at));
    }
    println!("  at most {max_pods} worker pods Running at once (max 4)");

    let s = c.batch("sweep").status.unwrap();
    assert_eq!(
        (s.phase, s.counts.total, s.counts.succeeded, s.counts.failed),
        (Some(Phase::Succeeded), count as i64, count as i64, 0),
        "{s:?}\n{}",
        c.diagnostics()
    );
    let table = c.ok(&["get", "taskbatches"]);
    println!("{table}");
    let row = table.lines().find(|l| l.starts_with("sweep ")).unwrap();
    assert!(
        row.contains("Succeeded") && row.contains(&format!("{count}/{count}")),
        "{table}"
    );
    assert!(
        max_pods >= 2,
        "the backlog should have asked for several pods"
    );
    // Every task's result, once.
    let results = s.results.clone().expect("a results location");
    let prefix = results.trim_start_matches(&format!("s3://{bucket}/"));
    let ids = common::results_in_s3(&c.rt, bucket, prefix);
    assert_eq!(ids.len(), count as usize, "distinct results");
    assert!(ids.values().all(|&n| n == 1), "a task reported twice");
    // The last worker stayed for the cooldown (5 s) after the operator last
    // saw a backlog (its status says when, to the second).
    let active = c
        .pool(pool)
        .status
        .and_then(|s| s.last_active_time)
        .expect("the pool's status has lastActiveTime");
    let active = UNIX_EPOCH + Duration::from_secs(active.0.as_second().try_into().unwrap());
    let idle = zero_at.unwrap().duration_since(active).unwrap_or_default();
    println!(
        "  replicas at 0 {:.1} s after the backlog was last seen (cooldown 5 s)",
        idle.as_secs_f64()
    );
    assert!(
        idle >= Duration::from_secs(4),
        "scaled to zero {idle:?} after the backlog was last seen: before the 5 s cooldown"
    );
}

/// What the tasks of the drain test report: "start|end TASK POD" lines.
#[derive(Default)]
struct Reports {
    events: Vec<(String, u64, String)>,
}

/// A TCP server on the node IP that the tasks tell when they start and end
/// (bash's /dev/tcp: no HTTP client needed in the image).
fn report_server(ip: &str) -> (u16, Arc<Mutex<Reports>>) {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let reports: Arc<Mutex<Reports>> = Arc::default();
    let seen = reports.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut parts = line.split_whitespace();
                    if let (Some(what), Some(task), Some(pod)) =
                        (parts.next(), parts.next(), parts.next())
                        && let Ok(task) = task.parse()
                    {
                        seen.lock()
                            .unwrap()
                            .events
                            .push((what.to_string(), task, pod.to_string()));
                    }
                }
            });
        }
    });
    (port, reports)
}

#[test]
fn deleting_a_busy_worker_pod_drains_it_and_loses_nothing() {
    let _serial = serial();
    let c = Install::new("pods-drain");
    let (port, reports) = report_server(&c.env.node_ip);
    let pool = "drain-pool";
    c.apply(&c.pool_yaml(pool, 3, 4, 5));
    c.wait_for("the pool's queue", Duration::from_secs(60), |c| {
        c.pool(pool).status?.queue_url
    });
    let count = 150u64;
    let script = format!(
        "echo start $0 $HOSTNAME >/dev/tcp/{ip}/{port} && sleep 1.5 && echo end $0 $HOSTNAME >/dev/tcp/{ip}/{port}",
        ip = c.env.node_ip
    );
    c.apply(&format!(
        r#"
apiVersion: cloudkon.io/v1alpha1
kind: TaskBatch
metadata: {{name: drain}}
spec:
  workerPool: {pool}
  tasks:
    generator:
      template: {{kind: run, program: bash, args: ["-c", {script:?}, "{{i}}"]}}
      count: {count}
  taskTimeoutSeconds: 60
"#
    ));

    // Wait until some pod runs tasks and a quarter of the batch is done,
    // then delete the pod with the most tasks in flight.
    let in_flight = |r: &Reports| -> BTreeMap<String, BTreeSet<u64>> {
        let mut open: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (what, task, pod) in &r.events {
            let set = open.entry(pod.clone()).or_default();
            if what == "start" {
                set.insert(*task);
            } else {
                set.remove(task);
            }
        }
        open
    };
    let (victim, busy) = c.wait_for("a busy worker pod", Duration::from_secs(300), |_| {
        let r = reports.lock().unwrap();
        let ends = r.events.iter().filter(|e| e.0 == "end").count() as u64;
        if ends < count / 4 {
            return None;
        }
        in_flight(&r)
            .into_iter()
            .filter(|(_, tasks)| tasks.len() >= 2)
            .max_by_key(|(_, tasks)| tasks.len())
    });
    // Its log from now on, with the container runtime's timestamps: the
    // worker's last line says when it exited even if the pod is gone
    // before its container's terminated state is seen.
    let log = LogFollower::start(&c, &victim, "worker");
    let deleted_at = Instant::now();
    let deleted_wall = k8s_openapi::jiff::Timestamp::now();
    c.ok(&["delete", "pod", &victim, "--wait=false"]);
    println!(
        "deleted pod {victim} with {} tasks in flight: {busy:?}",
        busy.len()
    );
    // The worker's own exit: its container's terminated state (exit code and
    // time), or, if the pod is gone before that is seen, the worker's last
    // log line ("worker stopped", written as it returns success), else the
    // pod's removal, which comes after it. Not the removal alone: how soon
    // the kubelet deletes the object after its containers stopped is the
    // node's housekeeping (seen at 53 s once on this machine, containers
    // gone in 10).
    let since_delete = |t: k8s_openapi::jiff::Timestamp| {
        Duration::try_from(t.duration_since(deleted_wall)).unwrap_or(Duration::ZERO)
    };
    let (exited_after, exit_code) = c.wait_for(
        "the deleted pod's worker to exit",
        Duration::from_secs(90),
        |c| {
            let Some(pod) = c.rt.block_on(c.api::<Pod>().get_opt(&victim)).unwrap() else {
                let gone = deleted_at.elapsed();
                // The stream ends with the container; its last lines may
                // still be on their way.
                common::poll_opt(Duration::from_secs(10), Duration::from_millis(100), || {
                    log.finished().then_some(())
                });
                return Some(match log.time_of("worker stopped") {
                    Some(t) => (since_delete(t), Some(0)),
                    None => (gone, None),
                });
            };
            let terminated = pod
                .status?
                .container_statuses?
                .into_iter()
                .find(|s| s.name == "worker")?
                .state?
                .terminated?;
            Some((
                since_delete(terminated.finished_at?.0),
                Some(terminated.exit_code),
            ))
        },
    );
    println!(
        "the worker exited {:.1} s after the delete (exit code {exit_code:?})",
        exited_after.as_secs_f64()
    );
    assert!(
        exited_after < Duration::from_secs(30),
        "past its grace period (30 s): {exited_after:?}; its log since the delete:\n{}",
        log.tail_since(deleted_wall)
    );
    if let Some(code) = exit_code {
        assert_eq!(code, 0, "the worker was killed, not drained");
    }
    c.wait_for(
        "the deleted pod to be gone",
        Duration::from_secs(120),
        |c| {
            c.rt.block_on(c.api::<Pod>().get_opt(&victim))
                .unwrap()
                .is_none()
                .then_some(())
        },
    );

    let s = c.wait_for("the batch to finish", Duration::from_secs(300), |c| {
        c.batch("drain")
            .status
            .filter(|s| s.phase.is_some_and(|p| p.is_finished()))
    });
    assert_eq!(
        (s.phase, s.counts.succeeded, s.counts.failed),
        (Some(Phase::Succeeded), count as i64, 0),
        "{s:?}\n{}",
        c.diagnostics()
    );
    let r = reports.lock().unwrap();
    // The victim's tasks in flight finished there (graceful drain).
    for task in &busy {
        assert!(
            r.events
                .iter()
                .any(|(w, t, p)| w == "end" && t == task && *p == victim),
            "task {task} was cut off in {victim}"
        );
    }
    let mut starts: BTreeMap<u64, u32> = BTreeMap::new();
    let mut ends: BTreeSet<u64> = BTreeSet::new();
    for (what, task, _) in &r.events {
        if what == "start" {
            *starts.entry(*task).or_default() += 1;
        } else {
            ends.insert(*task);
        }
    }
    let missing: Vec<u64> = (0..count).filter(|t| !ends.contains(t)).collect();
    assert!(missing.is_empty(), "tasks that never finished: {missing:?}");
    let twice: Vec<u64> = starts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| *t)
        .collect();
    println!(
        "{count} tasks: all finished; {} ran more than once {twice:?} ({} were in flight in the deleted pod)",
        twice.len(),
        busy.len()
    );
    assert!(
        twice.iter().all(|t| busy.contains(t)),
        "tasks ran twice that were not in flight in the deleted pod: {twice:?} (in flight: {busy:?})"
    );
}

/// A container's log as `kubectl logs -f --timestamps` streams it, kept
/// line by line: what a pod said up to its end, even once it is gone.
struct LogFollower {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl LogFollower {
    /// Starts following and returns once the first line arrived (the log
    /// so far comes first), so that nothing said from now on is missed.
    fn start(c: &Install, pod: &str, container: &str) -> LogFollower {
        let mut child = Command::new(&c.env.kubectl)
            .args([
                "-n",
                &c.ns,
                "logs",
                "-f",
                "--timestamps",
                pod,
                "-c",
                container,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run kubectl logs");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, f) = (lines.clone(), finished.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let follower = LogFollower {
            child,
            lines,
            finished,
        };
        c.wait_for(
            &format!("the log of {pod}/{container}"),
            Duration::from_secs(30),
            |_| (!follower.lines.lock().unwrap().is_empty()).then_some(()),
        );
        follower
    }

    /// The stream ended: the container stopped (or kubectl failed).
    fn finished(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The time stamped on the last line that holds `needle`.
    fn time_of(&self, needle: &str) -> Option<k8s_openapi::jiff::Timestamp> {
        let lines = self.lines.lock().unwrap();
        stamp(lines.iter().rev().find(|l| l.contains(needle))?)
    }

    /// The lines stamped at or after `t`.
    fn tail_since(&self, t: k8s_openapi::jiff::Timestamp) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| stamp(l).is_none_or(|at| at >= t))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The time `kubectl logs --timestamps` put at the start of a line.
fn stamp(line: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    line.split_once(' ')?.0.parse().ok()
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves the files of a directory over HTTP/1.0 on the node IP.
fn file_server(ip: &str, dir: std::path::PathBuf) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 2048];
            let n = stream.read(&mut request).unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let file = dir.join(path.trim_start_matches('/'));
            let _ = match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => stream
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| stream.write_all(&body)),
                _ => stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            };
        }
    });
    port
}

#[test]
fn an_animoto_batch_on_worker_pods_makes_videos_in_s3() {
    let _serial = serial();
    let c = Install::new("pods-animoto");
    let bucket = "cloudkon-animoto-pods";
    c.rt.block_on(async { Aws::load().await.s3().ensure_bucket(bucket).await })
        .unwrap();
    let images = c.dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for (i, size) in ["640x480", "300x500", "1280x720"].iter().enumerate() {
        common::make_image(&images.join(format!("img{i}.png")), size);
    }
    let port = file_server(&c.env.node_ip, images);
    let urls = [0, 1, 2].map(|i| format!("http://{}:{port}/img{i}.png", c.env.node_ip));
    c.apply(&c.pool_yaml("media", 2, 1, 5));
    c.apply(&common::slideshows_batch("media", bucket, &urls));
    let s = c.wait_for("the batch to finish", Duration::from_secs(300), |c| {
        c.batch("slideshows")
            .status
            .filter(|s| s.phase.is_some_and(|p| p.is_finished()))
    });
    assert_eq!(
        (s.phase, s.counts.succeeded),
        (Some(Phase::Succeeded), 2),
        "{s:?}\n{}",
        c.diagnostics()
    );
    let results = s.results.clone().expect("a results location");
    common::check_slideshows(&c.rt, bucket, &results, c.dir.path());
}

/// A pool's `Available` condition: (status, reason, message).
fn available(c: &Install, pool: &str) -> Option<(String, String, String)> {
    let x = c
        .pool(pool)
        .status?
        .conditions
        .into_iter()
        .find(|x| x.type_ == "Available")?;
    Some((x.status, x.reason, x.message))
}

#[test]
fn workers_that_cannot_start_are_said_on_their_pool() {
    let _serial = serial();
    let c = Install::new("pods-failing");
    // One worker each, wanted at once (min 1): an image the node does not
    // have (never pulled: no traffic leaves the node), and the real image
    // with a setting it refuses (it exits at start, again and again).
    let with = |name: &str, image: &str, env: Option<(&str, &str)>| {
        let mut pool: serde_json::Value =
            serde_json::from_str(&c.pool_yaml(name, 1, 10, 5)).unwrap();
        let spec = &mut pool["spec"];
        spec["workers"]["min"] = 1.into();
        spec["template"]["image"] = image.into();
        if let Some((k, v)) = env {
            let list = spec["template"]["env"].as_array_mut().unwrap();
            list.push(serde_json::json!({"name": k, "value": v}));
        }
        pool.to_string()
    };
    c.apply(&with("no-image", "cloudkon/not-on-this-node:1", None));
    let worker_image = c.env.worker_image.clone();
    c.apply(&with(
        "crashing",
        &worker_image,
        Some(("CLOUDKON_LEASE", "a while")),
    ));

    let t0 = Instant::now();
    let (_, reason, message) =
        c.wait_for("the missing image said", Duration::from_secs(120), |c| {
            available(c, "no-image").filter(|x| x.1 == "WorkersFailing")
        });
    println!(
        "no-image: {reason} after {:.1} s: {message}",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        message.starts_with("0 ready, 1 needed: pod no-image-workers-")
            && message.contains("ErrImageNeverPull")
            && message.contains("cloudkon/not-on-this-node:1"),
        "{message}"
    );
    let (_, reason, message) = c.wait_for("the crashes said", Duration::from_secs(120), |c| {
        available(c, "crashing").filter(|x| x.1 == "WorkersFailing")
    });
    println!(
        "crashing: {reason} after {:.1} s: {message}",
        t0.elapsed().as_secs_f64()
    );
    // The worker's own words, from its termination message.
    assert!(
        message.contains("CrashLoopBackOff")
            && message.contains("last exit code 2")
            && message.contains("invalid value 'a while' for '--lease"),
        "{message}"
    );

    // A batch on the crashing pool says it too: whoever looks only at the
    // batch learns why nothing moves.
    c.apply(
        "apiVersion: cloudkon.io/v1alpha1\nkind: TaskBatch\nmetadata: {name: waits}\n\
         spec: {workerPool: crashing, tasks: {inline: [{kind: sleep, ms: 1}]}}\n",
    );
    let t1 = Instant::now();
    let said = c.wait_for("the batch said", Duration::from_secs(60), |c| {
        let st = c.batch("waits").status?;
        let x = st
            .conditions
            .into_iter()
            .find(|x| x.type_ == "WorkersFailing")?;
        (x.status == "True").then_some(x.message)
    });
    println!(
        "batch waits: WorkersFailing after {:.1} s: {said}",
        t1.elapsed().as_secs_f64()
    );
    assert!(
        said.starts_with("WorkerPool crashing: 0 ready, 1 needed: pod crashing-workers-")
            && said.contains("--lease"),
        "{said}"
    );
    let events = c.ok(&["get", "events", "--field-selector", "reason=WorkersFailing"]);
    assert!(
        events.contains("no-image")
            && events.contains("crashing")
            && events.contains("taskbatch/waits"),
        "{events}"
    );
}
