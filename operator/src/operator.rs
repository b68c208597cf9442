//! Starting the operator: clients, leader election, the two controllers and
//! the metrics server; stopping on SIGTERM or when leadership is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudkon_core::aws::Aws;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

use crate::context::{Context, MANAGER, Settings};
use crate::crd::{TaskBatch, WorkerPool};
use crate::error::Error;
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::{Health, Metrics};
use crate::runner_handle::RunnerHandle;
use crate::{batch_reconciler, pool_reconciler};

pub struct Options {
    /// Watch one namespace; `None`: all.
    pub namespace: Option<String>,
    /// `None`: no leader election (one replica).
    pub lease: Option<LeaseConfig>,
    pub metrics_listener: Option<tokio::net::TcpListener>,
    pub settings: Settings,
    /// This operator's name in Events (the pod's name).
    pub identity: String,
}

/// Runs until SIGTERM/SIGINT (Ok) or until leadership is lost (Err).
pub async fn run(client: Client, aws: Aws, options: Options) -> anyhow::Result<()> {
    let stats = aws.stats().clone();
    let metrics = Arc::new(Metrics::with_aws_requests(Some(Arc::new(move || {
        stats.snapshot()
    }))));
    // Before anything is written with them: an older schema would refuse
    // this operator's status writes one by one.
    crate::crd_check::check(&client, &crate::crd::crds()).await?;
    let health = Health::default();
    if let Some(listener) = options.metrics_listener {
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            health.clone(),
        ));
    }

    let elector = options
        .lease
        .clone()
        .map(|config| Elector::new(client.clone(), config));
    let mut renewed = None;
    if let Some(e) = &elector {
        tokio::select! {
            at = e.acquire() => renewed = Some(at),
            () = shutdown_signal() => return Ok(()),
        }
    }
    metrics.leader.set(1);

    let (wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        client: client.clone(),
        sqs: aws.sqs(),
        s3: aws.s3(),
        aws,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        ),
        metrics: metrics.clone(),
        workload_memory: crate::workload_memory::WorkloadMemory::new(
            options.settings.workload_memory_bytes,
        ),
        settings: options.settings,
        pools: Mutex::new(HashMap::new()),
        runners: Mutex::new(HashMap::new()),
        shares: Default::default(),
        pool_idle: Default::default(),
        wake_pool: wake_tx,
        cleanup_retries: Default::default(),
        reconcile_retries: Default::default(),
    });

    let (pools, batches, deployments): (Api<WorkerPool>, Api<TaskBatch>, Api<Deployment>) =
        match &options.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };

    // Status-only changes wake no reconciler (see triggers.rs).
    let (pool_store, pool_writer) = reflector::store();
    let pool_events = watcher(pools, watcher::Config::default())
        .default_backoff()
        .reflect(pool_writer)
        .applied_objects()
        .predicate_filter(crate::triggers::workerpool, Default::default());
    let (batch_store, batch_writer) = reflector::store();
    let batch_events = watcher(batches, watcher::Config::default())
        .default_backoff()
        .reflect(batch_writer)
        .applied_objects()
        .predicate_filter(crate::triggers::taskbatch, Default::default());

    let pool_controller = Controller::for_stream(pool_events, pool_store)
        .owns(
            deployments,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=cloudkon-operator"),
        )
        .reconcile_on(futures_util::stream::unfold(wake_rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        }))
        .graceful_shutdown_on(shutdown_signal())
        .run(
            timed("workerpool", pool_reconciler::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "workerpool reconcile");
            }
        });
    let batch_controller = Controller::for_stream(batch_events, batch_store)
        .graceful_shutdown_on(shutdown_signal())
        .run(
            timed("taskbatch", batch_reconciler::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "taskbatch reconcile");
            }
        });
    tracing::info!(namespace = ?options.namespace, "controllers started");

    let lost = async {
        match (&elector, renewed) {
            (Some(e), Some(at)) => Some(e.keep(at).await),
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(lost);
    tokio::select! {
        ((), ()) = async { tokio::join!(pool_controller, batch_controller) } => {
            health.set(false);
            tracing::info!("controllers stopped");
            // Still the leader, as long as the lease is kept: the runners
            // write where they stopped.
            stop_runners_gracefully(&ctx, &mut lost).await;
            Ok(())
        }
        Some(e) = &mut lost => {
            // The controllers are dropped with this select; the batch runners
            // are tasks of their own and must stop writing too, now.
            stop_runners(&ctx);
            health.set(false);
            metrics.leader.set(0);
            tracing::error!(error = %e, "lost leadership: standing down");
            Err(anyhow::Error::new(e).context("stopping: another operator may lead now"))
        }
    }
}

/// How long a stopping operator waits for its batch runners to write their
/// checkpoints, well within a pod's default 30 s of grace.
const RUNNER_STOP: Duration = Duration::from_secs(10);

/// Stops every batch runner at its next step, each writing the checkpoint
/// of every bundle it sent (see `Runner::run`), for [`RUNNER_STOP`] at most
/// and while the leadership lasts (`lost`: resolves when it is lost); one
/// still going then is aborted. An operator of another version, whose plan
/// cuts the rest otherwise, then sends none of those bundles again (a runner
/// aborted between a send and its checkpoint leaves up to 250 ms of
/// bundles that the next operator cuts anew).
pub async fn stop_runners_gracefully(ctx: &Context, lost: impl Future) {
    let runners: Vec<RunnerHandle> = ctx
        .runners
        .lock()
        .expect("runner lock")
        .drain()
        .map(|(_, runner)| runner)
        .collect();
    let mut stopping: Vec<_> = runners.into_iter().filter_map(RunnerHandle::stop).collect();
    let all = async {
        for task in stopping.iter_mut() {
            let _ = task.await;
        }
    };
    tokio::select! {
        () = all => {}
        _ = tokio::time::sleep(RUNNER_STOP) => {
            tracing::warn!("batch runners did not stop in time: aborted; they restart from their last checkpoints");
        }
        _ = lost => {
            tracing::warn!("leadership lost while batch runners stopped: aborted; they restart from their last checkpoints");
        }
    }
    for task in &stopping {
        task.abort();
    }
    // The dead-letter readers, and any runner started meanwhile.
    stop_runners(ctx);
}

/// Aborts every batch runner (they restart from their checkpoints under the
/// next leader) and dead-letter reader.
fn stop_runners(ctx: &Context) {
    for (_, runner) in ctx.runners.lock().expect("runner lock").drain() {
        let _ = runner.abort();
    }
    // With them the pools' dead-letter readers (see `dead_letters::Reader`).
    ctx.pools.lock().expect("pool memory lock").clear();
}

/// Wraps a reconciler to count it and time it.
fn timed<K, F, Fut>(
    controller: &'static str,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<Context>) -> futures_util::future::BoxFuture<'static, Result<Action, Error>>
where
    K: kube::ResourceExt + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        Box::pin(async move {
            let start = Instant::now();
            let key = retry_key(obj.as_ref());
            let result = reconcile(obj, ctx.clone()).await;
            // A deletion that waits (a pool for its batches) did not fail.
            let error = result
                .as_ref()
                .err()
                .filter(|e| !matches!(e, Error::DeletionWaits { .. }))
                .map(Error::category);
            ctx.metrics.reconciled(controller, error, start.elapsed());
            if error.is_none() {
                ctx.reconcile_retries.succeeded(&key);
            }
            result
        })
    }
}

fn error_policy<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: kube::ResourceExt,
{
    if let Error::CleanupFailed { retry_in, .. } = error {
        tracing::warn!(object = %obj.name_any(), %error, "cleanup failed");
        return Action::requeue(*retry_in);
    }
    if let Error::DeletionWaits { retry_in, .. } = error {
        tracing::debug!(object = %obj.name_any(), %error);
        return Action::requeue(*retry_in);
    }
    // Growing delays: an object that keeps failing (a denied call, an
    // outage) neither hammers the API server and AWS nor hides.
    let retry_in = ctx.reconcile_retries.failed(&retry_key::<K>(&obj));
    tracing::warn!(object = %obj.name_any(), namespace = ?obj.namespace(), category = error.category(), %error, ?retry_in, "reconcile failed; retrying");
    Action::requeue(retry_in)
}

/// One object's key in `reconcile_retries`: its kind and uid.
fn retry_key<K: kube::ResourceExt>(obj: &K) -> String {
    format!(
        "{}/{}",
        std::any::type_name::<K>(),
        obj.uid().unwrap_or_else(|| obj.name_any())
    )
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
