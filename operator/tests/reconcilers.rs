//! The reconcilers against a scripted API server: kube's client runs over a
//! tower service that answers each request from a script and keeps it, so a
//! test says what the API server holds and checks what the reconciler asked
//! of it — which writes, by which field manager, how many. No AWS request is
//! made on these paths (the AWS clients point at a closed loopback port).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use cloudkon_core::aws::{Aws, AwsSettings};
use cloudkon_operator::context::{Context, FINALIZER, Settings};
use cloudkon_operator::crd::{TaskBatch, WorkerPool};
use cloudkon_operator::runner_handle::{Failures, RunnerHandle};
use cloudkon_operator::{batch_reconciler, pool_reconciler};
use http::{Request, Response};
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

/// A request the reconciler made.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    body: Value,
}

impl Seen {
    fn is_status_write(&self) -> bool {
        self.method == "PATCH" && self.uri.contains("/status?")
    }

    fn is_event(&self) -> bool {
        self.method == "POST" && self.uri.contains("/events")
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// A client whose API server is `script`: (status code, JSON body) for
/// each request.
fn scripted(script: impl Fn(&Seen) -> (u16, Value) + Send + Sync + 'static) -> (Client, Log) {
    let log: Log = Arc::default();
    let kept = log.clone();
    let script = Arc::new(script);
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let (kept, script) = (kept.clone(), script.clone());
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("a request body");
            let seen = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, answer) = script(&seen);
            kept.lock().unwrap().push(seen);
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(
                    serde_json::to_vec(&answer).unwrap(),
                ))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    (Client::new(service, "default"), log)
}

fn context(client: Client) -> Arc<Context> {
    // A region and an endpoint given, so that nothing looks for them (the
    // instance metadata service least of all); nothing is sent there.
    let sdk = SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .behavior_version(BehaviorVersion::latest())
        .build();
    let aws = Aws::from_sdk_config(sdk, AwsSettings::default());
    let settings = Settings::default();
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "cloudkon-operator".into(),
                instance: None,
            },
        ),
        client,
        sqs: aws.sqs(),
        s3: aws.s3(),
        aws,
        metrics: Default::default(),
        workload_memory: cloudkon_operator::workload_memory::WorkloadMemory::new(
            settings.workload_memory_bytes,
        ),
        settings,
        pools: Default::default(),
        runners: Default::default(),
        shares: Default::default(),
        pool_idle: Default::default(),
        wake_pool: tokio::sync::mpsc::unbounded_channel().0,
        cleanup_retries: Default::default(),
        reconcile_retries: Default::default(),
    })
}

/// An object as the API server holds it, with the operator's finalizer.
fn object<K: serde::de::DeserializeOwned>(
    kind: &str,
    metadata: Value,
    spec: Value,
    status: Option<Value>,
) -> K {
    let mut object = json!({
        "apiVersion": "cloudkon.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    });
    object["metadata"]["namespace"] = json!("ns");
    object["metadata"]["finalizers"] = json!([FINALIZER]);
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).unwrap()
}

fn batch(spec: Value, status: Option<Value>) -> TaskBatch {
    let metadata = json!({"name": "b", "uid": "u-1", "generation": 1});
    object("TaskBatch", metadata, spec, status)
}

fn sleep_spec(extra: Value) -> Value {
    let mut spec = json!({"workerPool": "pool",
                          "tasks": {"inline": [{"kind": "sleep", "ms": 1000}]}});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

/// The API server of a namespace that holds the batch `b` as `object`
/// and not its pool: the pool's read is a 404, a read of or a write to the
/// batch answers `object`, an Event itself.
fn batch_server(object: Value) -> (Client, Log) {
    scripted(move |seen| {
        if seen.method == "GET" && seen.uri.contains("/workerpools/pool") {
            not_found()
        } else if seen.uri.contains("/taskbatches/b") {
            (200, object.clone())
        } else {
            (201, seen.body.clone())
        }
    })
}

/// Reconciles `b` on a [`batch_server`] holding it (a write answers the
/// batch as it was: the reconciler reads nothing of the answer).
async fn reconcile_batch(b: TaskBatch) -> (Action, Vec<Seen>) {
    let (client, log) = batch_server(serde_json::to_value(&b).unwrap());
    let action = batch_reconciler::reconcile(Arc::new(b), context(client))
        .await
        .expect("a reconcile");
    let seen = log.lock().unwrap().clone();
    (action, seen)
}

fn status_writes(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter().filter(|s| s.is_status_write()).collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn a_batch_whose_pool_is_missing_is_reported_in_one_status_apply_and_a_warning() {
    let (action, seen) = reconcile_batch(batch(sleep_spec(json!({})), None)).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2)), "{seen:#?}");
    let writes = status_writes(&seen);
    assert_eq!(writes.len(), 1, "one status write: {seen:#?}");
    let write = writes[0];
    assert!(
        write.uri.contains("/namespaces/ns/taskbatches/b/status?")
            && write.uri.contains("fieldManager=cloudkon-reconciler")
            && write.uri.contains("force=true"),
        "server-side apply by the reconciler: {}",
        write.uri
    );
    assert_eq!(write.body["kind"], "TaskBatch");
    let status = &write.body["status"];
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["observedGeneration"], 1);
    let accepted = condition(status, "Accepted");
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&json!("False"), &json!("WorkerPoolNotFound"))
    );
    // Nothing of the runner's.
    assert!(status.get("counts").is_none(), "{status}");
    let events: Vec<_> = seen.iter().filter(|s| s.is_event()).collect();
    assert_eq!(events.len(), 1, "{seen:#?}");
    assert_eq!(events[0].body["type"], "Warning");
    assert_eq!(events[0].body["reason"], "WorkerPoolNotFound");
}

#[tokio::test]
async fn a_cancelled_batch_ends_cancelled_by_the_reconcilers_apply() {
    let running = json!({"phase": "Running", "counts": {"total": 5, "enqueued": 5}});
    let b = batch(sleep_spec(json!({"cancel": true})), Some(running));
    let (action, seen) = reconcile_batch(b).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    let writes = status_writes(&seen);
    assert_eq!(writes.len(), 1, "{seen:#?}");
    let status = &writes[0].body["status"];
    assert_eq!(status["phase"], "Cancelled");
    assert!(status["completionTime"].is_string(), "{status}");
    assert!(status.get("counts").is_none(), "the runner's: {status}");
}

#[tokio::test]
async fn a_batch_that_succeeded_as_it_was_cancelled_keeps_what_its_runner_wrote() {
    // The reconciler looked at the batch running; its runner's last write
    // (Succeeded, every count) landed before the runner was stopped.
    let looked_at = json!({"phase": "Running",
                           "counts": {"total": 5, "enqueued": 5, "running": 2, "succeeded": 3}});
    let mut b = batch(sleep_spec(json!({"cancel": true})), Some(looked_at));
    b.metadata.resource_version = Some("1".into());
    let mut now = b.clone();
    now.metadata.resource_version = Some("2".into());
    now.status = Some(
        serde_json::from_value(json!({
            "phase": "Succeeded", "completionTime": "2026-12-04T10:00:00Z",
            "counts": {"total": 5, "enqueued": 5, "running": 0, "succeeded": 5}}))
        .unwrap(),
    );
    let (client, log) = batch_server(serde_json::to_value(&now).unwrap());
    let ctx = context(client);
    let spec = b.spec.clone();
    ctx.runners.lock().unwrap().insert(
        "u-1".into(),
        RunnerHandle::new(
            tokio::spawn(std::future::pending()),
            tokio::sync::watch::channel(spec).0,
            Failures::default(),
        ),
    );
    batch_reconciler::reconcile(Arc::new(b), ctx)
        .await
        .expect("a reconcile");
    let seen = log.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.method == "GET" && s.uri.contains("/taskbatches/b")),
        "the batch read again once its runner stopped: {seen:#?}"
    );
    for write in status_writes(&seen) {
        let status = &write.body["status"];
        assert_ne!(status["phase"], "Cancelled", "{seen:#?}");
        assert!(
            status.get("counts").is_none(),
            "the runner's counts kept: {status}"
        );
    }
}

#[tokio::test]
async fn a_finished_batch_seen_again_writes_nothing() {
    let done = json!({"phase": "Succeeded", "completionTime": "2026-11-30T10:00:00Z",
                      "counts": {"total": 1, "enqueued": 1, "succeeded": 1}});
    let (action, seen) = reconcile_batch(batch(sleep_spec(json!({})), Some(done))).await;
    assert_eq!(action, Action::await_change());
    let writes = status_writes(&seen);
    assert_eq!(writes.len(), 1, "the conditions, once: {seen:#?}");
    let status = &writes[0].body["status"];
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(condition(status, "Complete")["status"], "True");
    // The status as written, read back: nothing more to write or say.
    let mut whole = status.clone();
    whole["counts"] = json!({"total": 1, "enqueued": 1, "succeeded": 1});
    let (_, again) = reconcile_batch(batch(sleep_spec(json!({})), Some(whole))).await;
    assert!(
        again.iter().all(|s| s.method == "GET"),
        "only reads: {again:#?}"
    );
}

#[tokio::test]
async fn a_batch_without_the_finalizer_gets_it_before_anything_else() {
    let mut b = batch(sleep_spec(json!({})), None);
    b.metadata.finalizers = None;
    let (_, seen) = reconcile_batch(b).await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "PATCH");
    assert!(
        seen[0]
            .uri
            .starts_with("/apis/cloudkon.io/v1alpha1/namespaces/ns/taskbatches/b?")
    );
    assert!(
        seen[0].body.to_string().contains(FINALIZER),
        "{}",
        seen[0].body
    );
}

fn pool(spec: Value, status: Option<Value>) -> WorkerPool {
    let metadata = json!({"name": "pool", "uid": "p-1", "generation": 4});
    object("WorkerPool", metadata, spec, status)
}

/// Reconciles `refused`, a pool whose spec is refused, against an API
/// server that holds it: it awaits a change after one status write. What
/// the reconciler asked.
async fn refused(refused: WorkerPool) -> Vec<Seen> {
    let object = serde_json::to_value(&refused).unwrap();
    let (client, log) = scripted(move |seen| {
        if seen.uri.contains("/workerpools/pool") {
            (200, object.clone())
        } else {
            (201, seen.body.clone())
        }
    });
    let action = pool_reconciler::reconcile(Arc::new(refused), context(client))
        .await
        .expect("a reconcile");
    assert_eq!(action, Action::await_change());
    let seen = log.lock().unwrap().clone();
    assert_eq!(status_writes(&seen).len(), 1, "{seen:#?}");
    seen
}

#[tokio::test]
async fn an_invalid_pool_is_said_once_in_its_status_applied_whole() {
    let invalid = json!({"workers": {"min": 5, "max": 2}, "template": {"image": "w:1"}});
    let seen = refused(pool(invalid.clone(), None)).await;
    let writes = status_writes(&seen);
    assert!(
        writes[0]
            .uri
            .contains("/namespaces/ns/workerpools/pool/status?")
            && writes[0]
                .uri
                .contains("fieldManager=cloudkon-pool-reconciler"),
        "{}",
        writes[0].uri
    );
    let status = writes[0].body["status"].clone();
    assert_eq!(status["observedGeneration"], 4);
    let accepted = condition(&status, "Accepted");
    assert_eq!(accepted["reason"], "InvalidSpec");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("spec.workers"),
        "{accepted}"
    );
    assert_eq!(seen.iter().filter(|s| s.is_event()).count(), 1, "{seen:#?}");
    // Seen again with that status: nothing to write, nothing to say.
    let (client, log) = scripted(|seen| (201, seen.body.clone()));
    pool_reconciler::reconcile(Arc::new(pool(invalid, Some(status))), context(client))
        .await
        .expect("a reconcile");
    let again = log.lock().unwrap().clone();
    assert!(again.is_empty(), "{again:#?}");
}

#[tokio::test]
async fn a_pool_whose_provider_moves_off_its_running_workers_is_refused() {
    // Its workers are 3 instances; the spec now asks for a Deployment.
    let spec = json!({"workers": {"min": 0, "max": 5}, "template": {"image": "w:1"}});
    let status = json!({"fleet": "Instances", "replicas": 3, "desiredReplicas": 3,
                        "queueUrl": "http://127.0.0.1:9/000000000000/cloudkon-ns_pool"});
    let seen = refused(pool(spec, Some(status))).await;
    let writes = status_writes(&seen);
    let status = &writes[0].body["status"];
    let accepted = condition(status, "Accepted");
    assert_eq!(accepted["reason"], "InvalidSpec");
    let message = accepted["message"].as_str().unwrap();
    assert!(
        message.contains("spec.provider moves the workers from Instances to Deployment"),
        "{message}"
    );
    // Nothing applied: no Deployment made beside the instances.
    assert!(
        !seen.iter().any(|s| s.uri.contains("/deployments")),
        "{seen:#?}"
    );
}

/// An API server for the deletion of pool "pool" (`deleted`): it lists
/// every namespace's pools as `pools` answers, no TaskBatches.
fn deletion_server(deleted: Value, pools: (u16, Value)) -> (Client, Log) {
    scripted(move |seen| {
        if seen
            .uri
            .starts_with("/apis/cloudkon.io/v1alpha1/workerpools")
        {
            pools.clone()
        } else if seen.uri.contains("/taskbatches") {
            (
                200,
                json!({"apiVersion": "cloudkon.io/v1alpha1", "kind": "TaskBatchList",
                         "metadata": {}, "items": []}),
            )
        } else if seen.uri.contains("/workerpools/pool") {
            (200, deleted.clone())
        } else {
            (201, seen.body.clone())
        }
    })
}

#[tokio::test]
async fn a_pool_deleted_keeps_the_queue_another_pool_uses() {
    // Pool "pool" is deleted; pool "a" (made first) has the same queue.
    let queue = "http://127.0.0.1:9/000000000000/cloudkon-shared";
    let spec = json!({"workers": {"min": 0, "max": 5}, "template": {"image": "w:1"},
                      "queue": {"name": "cloudkon-shared"}});
    let status = json!({"queueUrl": queue, "fleet": "Deployment"});
    let mut deleted = serde_json::to_value(pool(spec.clone(), Some(status.clone()))).unwrap();
    deleted["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
    let mut other = serde_json::to_value(pool(spec, Some(status))).unwrap();
    other["metadata"]["name"] = json!("a");
    other["metadata"]["uid"] = json!("a-1");
    let pools = json!({"apiVersion": "cloudkon.io/v1alpha1", "kind": "WorkerPoolList",
                       "metadata": {}, "items": [other, deleted.clone()]});
    let (client, log) = deletion_server(deleted.clone(), (200, pools));
    let pool: WorkerPool = serde_json::from_value(deleted).unwrap();
    // Deleting the queues would go to a closed port and fail the cleanup.
    pool_reconciler::reconcile(Arc::new(pool), context(client))
        .await
        .expect("the cleanup ends without deleting the shared queue");
    let seen = log.lock().unwrap().clone();
    let kept = seen
        .iter()
        .filter(|s| s.is_event())
        .any(|s| s.body.to_string().contains("WorkerPool ns/a uses them too"));
    assert!(kept, "{seen:#?}");
    let finalizer_removed = seen
        .iter()
        .any(|s| s.method == "PATCH" && s.uri.contains("/workerpools/pool?"));
    assert!(finalizer_removed, "{seen:#?}");
}

#[tokio::test]
async fn a_pool_deleted_while_the_pools_cannot_be_listed_keeps_its_queue_for_now() {
    // The list of every namespace's pools fails (not Forbidden): the pool
    // cannot tell whether another namespace's pool uses its queue.
    let spec = json!({"workers": {"min": 0, "max": 5}, "template": {"image": "w:1"},
                      "queue": {"name": "cloudkon-shared"}});
    let status = json!({"queueUrl": "http://127.0.0.1:9/000000000000/cloudkon-shared",
                        "fleet": "Deployment"});
    let mut deleted = serde_json::to_value(pool(spec, Some(status))).unwrap();
    deleted["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
    let down = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "reason": "InternalError", "code": 500, "message": "etcd is down"});
    let (client, log) = deletion_server(deleted.clone(), (500, down));
    let pool: WorkerPool = serde_json::from_value(deleted).unwrap();
    let failed = pool_reconciler::reconcile(Arc::new(pool), context(client)).await;
    let message = format!("{:?}", failed.expect_err("the cleanup waits for the list"));
    assert!(message.contains("every namespace"), "{message}");
    let seen = log.lock().unwrap().clone();
    // Not looked up in its own namespace alone, and the finalizer stays.
    assert!(
        !seen.iter().any(|s| s
            .uri
            .starts_with("/apis/cloudkon.io/v1alpha1/namespaces/ns/workerpools?")),
        "{seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PATCH" && s.uri.contains("/workerpools/pool?")),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn a_failed_write_names_the_object_and_keeps_its_category() {
    let b = batch(sleep_spec(json!({})), None);
    let (client, _) = scripted(|seen| {
        if seen.method == "GET" {
            not_found()
        } else {
            (
                500,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "InternalError", "code": 500, "message": "etcd is down"}),
            )
        }
    });
    let error = batch_reconciler::reconcile(Arc::new(b), context(client))
        .await
        .expect_err("the status write fails");
    let message = error.to_string();
    assert!(message.contains("TaskBatch ns/b"), "{message}");
    // Counted in metrics as what it is, an API server error.
    assert_eq!(error.category(), "kube", "{message}");
    assert!(message.contains("etcd is down"), "{message}");
}
