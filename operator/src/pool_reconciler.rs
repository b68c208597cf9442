//! The WorkerPool reconciler: the pool's queue (with its dead-letter queue),
//! its workers (a Deployment, or an EC2 fleet), and the scaler that sizes them
//! on the queue's backlog, every `poll` (1 s) and at once when a batch enqueues.
//! Decisions are [`crate::scale::desired_workers`]; this module reads and
//! writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cloudkon_core::aws::{QueueOptions, SqsQueue};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::build::{self, POOL_LABEL};
use crate::context::{Context, FINALIZER, MANAGER};
use crate::crd::WorkerPool;
use crate::crd::workerpool::{DeletionPolicy, WorkerPoolStatus};
use crate::error::Error;
pub use crate::pool_memory::PoolMemory;
use crate::provider::Ec2Provider;
use crate::scale::{self, Observed, ScaleConfig};
use crate::status::{self, PoolConditionsInput, set_condition};
use crate::validate;

/// Receives before SQS moves a message to the dead-letter queue, by default.
const DEFAULT_MAX_RECEIVES: i32 = 5;
/// The annotation the ReplicaSet controller reads to pick which pods go
/// first on scale-down (lowest cost first).
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A pool's figures (backlog, workers, work) are written at most this often;
/// a change of conditions, generation or queue at once.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Whether `new` is worth a write now: something a reader acts on changed, or
/// the figures changed and the last write is `STATUS_EVERY` old.
fn status_due(
    old: &WorkerPoolStatus,
    new: &WorkerPoolStatus,
    written: Option<Instant>,
    now: Instant,
) -> bool {
    if old == new {
        return false;
    }
    let significant = old.conditions != new.conditions
        || old.observed_generation != new.observed_generation
        || old.queue_url != new.queue_url
        || old.dead_letter_queue_url != new.dead_letter_queue_url
        || old.selector != new.selector
        || old.desired_replicas != new.desired_replicas;
    significant || written.is_none_or(|t| now.duration_since(t) >= STATUS_EVERY)
}

pub async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Finalizer::Apply(pool) => apply(&pool, &ctx).await,
            Finalizer::Cleanup(pool) => cleanup(&pool, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::from_finalizer(&format!("WorkerPool {ns}"), e))
}

fn uid(pool: &WorkerPool) -> String {
    pool.uid().unwrap_or_default()
}

async fn apply(pool: &WorkerPool, ctx: &Context) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    let now_time = Time(now);
    let generation = pool.metadata.generation;
    let old = pool.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = generation;

    let validation = validate::workerpool(&pool.spec, &ns, &ctx.settings.allowed_names);
    if let Err(problems) = &validation {
        let message = validate::summary(problems);
        let update = status::ConditionUpdate::new(
            status::pool_condition::ACCEPTED,
            false,
            "InvalidSpec",
            message.clone(),
        );
        if set_condition(&mut st.conditions, &update, generation, &now_time) {
            ctx.event(pool, true, "InvalidSpec", message).await;
        }
        write_status(&api, &name, &old, &st).await?;
        return Ok(Action::await_change());
    }

    // The queue: created once per operator run, then remembered.
    let queue = match ensure_queue(pool, ctx).await {
        Ok(q) => q,
        Err(e) => {
            let message = format!("cannot create the queue: {e}");
            let update = status::ConditionUpdate::new(
                status::pool_condition::QUEUE_READY,
                false,
                "QueueUnavailable",
                message.clone(),
            );
            if set_condition(&mut st.conditions, &update, generation, &now_time) {
                ctx.event(pool, true, "QueueUnavailable", message).await;
            }
            write_status(&api, &name, &old, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
    };
    st.queue_url = Some(queue.url().to_string());
    st.dead_letter_queue_url = queue.dead_letter_url().map(str::to_string);
    let stats = queue.stats().await?;

    let ec2 = ec2_fleet(pool, ctx, queue.url())?;
    let workers = match &ec2 {
        Some(fleet) => {
            let count = fleet
                .observe()
                .await
                .map_err(|e| Error::Other(format!("WorkerPool {ns}/{name}: {e}")))?;
            ObservedWorkers {
                current: count.current,
                ready: count.ready,
                missing: false,
            }
        }
        None => observe_deployment(ctx, &ns, &name).await?,
    };

    let config = ScaleConfig::from_spec(&pool.spec);
    let system_now = SystemTime::now();
    let backlog = stats.visible + stats.in_flight + stats.delayed;
    let last_active = if backlog > 0 {
        st.last_active_time = Some(now_time.clone());
        Some(system_now)
    } else {
        st.last_active_time.as_ref().map(to_system_time)
    };
    let work = ctx.shares.work(&crate::shares::pool_key(&ns, &name));
    let (work_tasks, work_task_seconds) = work.to_run();
    let decision = {
        let mut pools = ctx.pools.lock().expect("pool memory lock");
        let memory = pools.entry(uid(pool)).or_default();
        memory.scale.decide(
            &config,
            &Observed {
                backlog_visible: stats.visible + stats.delayed,
                backlog_in_flight: stats.in_flight,
                work_tasks,
                work_task_seconds,
                current: workers.current,
                ready: workers.ready,
                last_active,
            },
            system_now,
        )
    };

    let mut decision = decision;
    if ec2.is_none() && decision.replicas < workers.current {
        // Idle pods first (their deletion cost); the busy ones stay.
        let busy = mark_idle_pods(pool, ctx, &ns, &name).await;
        let kept = scale::keep_busy(
            decision.replicas,
            busy,
            workers.current,
            stats.in_flight,
            config.max,
        );
        if kept != decision.replicas {
            decision.reason += &format!("; {kept} kept: {busy} workers run tasks");
            decision.replicas = kept;
        }
    }
    let change = decision.replicas - workers.current;
    match &ec2 {
        Some(fleet) => {
            if change != 0 {
                fleet
                    .scale_to(decision.replicas)
                    .await
                    .map_err(|e| Error::Other(format!("WorkerPool {ns}/{name}: {e}")))?;
            }
        }
        None => {
            apply_deployment(pool, ctx, queue.url(), decision.replicas, change, &workers).await?;
        }
    }
    if change != 0 {
        if let Some(m) = ctx
            .pools
            .lock()
            .expect("pool memory lock")
            .get_mut(&uid(pool))
        {
            m.scale.scaled(system_now, change);
        }
        st.last_scale_time = Some(now_time.clone());
        st.last_scale_reason = Some(decision.reason.clone());
        let labels = pool_labels(&ns, &name);
        ctx.metrics.scale_changes.get_or_create(&labels).inc();
        tracing::info!(pool = %format!("{ns}/{name}"), from = workers.current, to = decision.replicas, reason = %decision.reason, "scaled");
        ctx.event(
            pool,
            false,
            if change > 0 { "ScaledUp" } else { "ScaledDown" },
            format!(
                "workers {} -> {}: {}",
                workers.current, decision.replicas, decision.reason
            ),
        )
        .await;
    }

    let backlog = i64::try_from(backlog).unwrap_or(i64::MAX);
    st.replicas = workers.current;
    st.ready_replicas = workers.ready;
    st.desired_replicas = decision.replicas;
    st.workers = Some(status::workers_column(workers.ready, decision.replicas));
    st.selector = Some(format!("{POOL_LABEL}={name}"));
    st.backlog = backlog;
    st.backlog_visible = i64::try_from(stats.visible + stats.delayed).unwrap_or(i64::MAX);
    st.backlog_in_flight = i64::try_from(stats.in_flight).unwrap_or(i64::MAX);
    st.density = Some(status::density(backlog, workers.ready));
    st.work_tasks = i64::try_from(work.tasks).unwrap_or(i64::MAX);
    st.work_seconds = (work.tasks > 0).then(|| status::round(work.task_seconds));
    st.estimated_drain_seconds = (work.tasks > 0 && workers.ready > 0).then(|| {
        let slots = workers.ready as f64 * config.slots_per_worker.max(1) as f64;
        status::round(work.task_seconds / slots)
    });
    let conditions = status::pool_conditions(&PoolConditionsInput {
        validation: &validation,
        queue_problem: None,
        ready: workers.ready,
        min: config.min,
        backlog,
        decision: &decision,
    });
    for update in &conditions {
        set_condition(&mut st.conditions, update, generation, &now_time);
    }
    let labels = pool_labels(&ns, &name);
    ctx.metrics.backlog.get_or_create(&labels).set(backlog);
    ctx.metrics
        .desired_workers
        .get_or_create(&labels)
        .set(i64::from(decision.replicas));
    ctx.metrics
        .ready_workers
        .get_or_create(&labels)
        .set(i64::from(workers.ready));
    // Figures only: at most one write a second (the next poll writes what is
    // held back now).
    let written = ctx
        .pools
        .lock()
        .expect("pool memory lock")
        .get(&uid(pool))
        .and_then(|m| m.status_written);
    let now = Instant::now();
    if status_due(&old, &st, written, now) {
        write_status(&api, &name, &old, &st).await?;
        if let Some(m) = ctx
            .pools
            .lock()
            .expect("pool memory lock")
            .get_mut(&uid(pool))
        {
            m.status_written = Some(now);
        }
    }
    Ok(Action::requeue(ctx.settings.poll))
}

fn pool_labels(ns: &str, name: &str) -> crate::metrics::PoolLabels {
    crate::metrics::PoolLabels {
        namespace: ns.to_string(),
        pool: name.to_string(),
    }
}

fn to_system_time(t: &Time) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.0.as_second()).unwrap_or(0))
}

/// Applies the worker Deployment when the replicas or the spec changed (or it
/// is missing).
async fn apply_deployment(
    pool: &WorkerPool,
    ctx: &Context,
    queue_url: &str,
    replicas: i32,
    change: i32,
    workers: &ObservedWorkers,
) -> Result<(), Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = build::deployment_name(&pool.name_any());
    let generation = pool.metadata.generation;
    let applied = ctx
        .pools
        .lock()
        .expect("pool memory lock")
        .get(&uid(pool))
        .and_then(|m| m.applied_generation);
    if change == 0 && applied == generation && !workers.missing {
        return Ok(());
    }
    let deployment = build::worker_deployment(pool, queue_url, replicas)?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    deployments
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await
        .map_err(Error::kube(format!("cannot apply Deployment {ns}/{name}")))?;
    if let Some(m) = ctx
        .pools
        .lock()
        .expect("pool memory lock")
        .get_mut(&uid(pool))
    {
        m.applied_generation = generation;
    }
    Ok(())
}

/// The pool's EC2 fleet, when its provider is not a Deployment (made once
/// per operator run).
fn ec2_fleet(
    pool: &WorkerPool,
    ctx: &Context,
    queue_url: &str,
) -> Result<Option<Arc<Ec2Provider>>, Error> {
    let mut pools = ctx.pools.lock().expect("pool memory lock");
    let memory = pools.entry(uid(pool)).or_default();
    if memory.ec2.is_none() {
        // Plain values only: an instance has no pod to resolve `valueFrom`.
        let template = &pool.spec.template;
        let env: Vec<(String, String)> = build::download_env(template)
            .map(|(name, value)| (name.to_string(), value))
            .into_iter()
            .chain(
                template
                    .env
                    .iter()
                    .filter_map(|e| Some((e.name.clone(), e.value.clone()?))),
            )
            .collect();
        memory.ec2 = Ec2Provider::from_spec(
            pool.spec.provider.as_ref(),
            &pool.namespace().unwrap_or_default(),
            &pool.name_any(),
            queue_url,
            &env,
            ctx.aws.sdk_config(),
        )
        .map_err(|e| Error::Other(e.to_string()))?
        .map(Arc::new);
    }
    Ok(memory.ec2.clone())
}

async fn ensure_queue(pool: &WorkerPool, ctx: &Context) -> Result<SqsQueue, Error> {
    let key = uid(pool);
    if let Some(q) = ctx
        .pools
        .lock()
        .expect("pool memory lock")
        .get(&key)
        .and_then(|m| m.queue.clone())
    {
        return Ok(q);
    }
    let ns = pool.namespace().unwrap_or_default();
    let spec = pool.spec.queue.clone().unwrap_or_default();
    let name = build::queue_name(&ns, &pool.name_any(), spec.name.as_deref());
    let options = QueueOptions {
        max_receives: Some(
            u32::try_from(spec.max_receives.unwrap_or(DEFAULT_MAX_RECEIVES)).unwrap_or(5),
        ),
        ..QueueOptions::default()
    };
    let queue = ctx.sqs.create_queue(&name, &options).await?;
    // Read for as long as the operator remembers the pool: its dead bundles'
    // batches would otherwise never finish.
    let reader = queue.dead_letter_url().map(|dlq| {
        let table = pool.spec.ledger_table();
        crate::dead_letters::Reader(tokio::spawn(crate::dead_letters::watch(
            format!("{ns}/{}", pool.name_any()),
            queue.sibling(dlq),
            Some(ctx.aws.ledger(table)),
            ctx.sqs.clone(),
            options.max_receives.unwrap_or(5),
        )))
    });
    let mut pools = ctx.pools.lock().expect("pool memory lock");
    let memory = pools.entry(key).or_default();
    memory.queue = Some(queue.clone());
    memory.dead_letters = reader;
    Ok(queue)
}

struct ObservedWorkers {
    current: i32,
    ready: i32,
    missing: bool,
}

async fn observe_deployment(ctx: &Context, ns: &str, pool: &str) -> Result<ObservedWorkers, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = build::deployment_name(pool);
    let Some(d) = deployments
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("cannot read Deployment {ns}/{name}")))?
    else {
        return Ok(ObservedWorkers {
            current: 0,
            ready: 0,
            missing: true,
        });
    };
    // The replicas asked for: pods being created count as capacity already
    // provided (see scale.rs), and the status lags the spec by a moment.
    let asked = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let status = d.status.unwrap_or_default();
    Ok(ObservedWorkers {
        current: asked,
        ready: status.ready_replicas.unwrap_or(0),
        missing: false,
    })
}

/// A heartbeat older than this no longer says a worker is busy (they come
/// every 10 s).
const HEARTBEAT_FRESH: Duration = Duration::from_secs(30);

/// Before a scale-down: gives each worker pod a deletion cost equal to the
/// tasks it is running (from its heartbeat), so that the ReplicaSet removes
/// idle workers first. Returns how many of the pool's pods run tasks (per a
/// fresh heartbeat). Best effort: a failure only loses the preference (and
/// counts no pod busy).
async fn mark_idle_pods(pool: &WorkerPool, ctx: &Context, ns: &str, name: &str) -> i32 {
    let table = pool.spec.ledger_table();
    let now = cloudkon_core::Timestamp::now().0;
    let fresh = u64::try_from(HEARTBEAT_FRESH.as_micros()).unwrap_or(u64::MAX);
    let (busy, recent): (BTreeMap<String, u32>, BTreeMap<String, bool>) =
        match ctx.aws.ledger(table).list_workers().await {
            Ok(rows) => rows
                .into_iter()
                .map(|h| {
                    let recent = now.saturating_sub(h.last_seen.0) <= fresh;
                    ((h.id.clone(), h.busy), (h.id, recent))
                })
                .unzip(),
            Err(e) => {
                tracing::debug!(error = %e, "no worker heartbeats; scale-down picks pods by age");
                return 0;
            }
        };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = match pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={name}")))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list worker pods");
            return 0;
        }
    };
    let mut running = 0;
    for pod in list {
        let pod_name = pod.name_any();
        let tasks = busy.get(&pod_name).copied().unwrap_or(0);
        if tasks > 0 && recent.get(&pod_name).copied().unwrap_or(false) {
            running += 1;
        }
        let cost = tasks.to_string();
        if pod.annotations().get(DELETION_COST) == Some(&cost) {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {DELETION_COST: cost}}});
        if let Err(e) = pods
            .patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(pod = %pod_name, error = %e, "cannot set the pod deletion cost");
        }
    }
    running
}

async fn write_status(
    api: &Api<WorkerPool>,
    name: &str,
    old: &WorkerPoolStatus,
    new: &WorkerPoolStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": new })),
    )
    .await
    .map_err(Error::kube(format!(
        "cannot write the status of WorkerPool {name}"
    )))?;
    Ok(())
}

/// The finalizer: releases the fleet and deletes the queues. What is already
/// gone (a group, node group or queue deleted behind the pool's back) counts
/// as done; any other failure keeps the finalizer, is reported in the
/// `CleanupFailed` condition and an Event, and is retried with growing delays.
async fn cleanup(pool: &WorkerPool, ctx: &Context) -> Result<Action, Error> {
    ctx.finalize(&uid(pool), release(pool, ctx), |message| async move {
        report_cleanup_failure(pool, ctx, &message).await
    })
    .await
}

async fn report_cleanup_failure(pool: &WorkerPool, ctx: &Context, message: &str) {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &ns);
    let old = pool.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let update = status::ConditionUpdate::new(
        status::pool_condition::CLEANUP_FAILED,
        true,
        "CleanupFailed",
        message.to_string(),
    );
    let now = Time(Timestamp::now());
    if set_condition(&mut st.conditions, &update, pool.metadata.generation, &now) {
        ctx.event(pool, true, "CleanupFailed", message.to_string())
            .await;
    }
    if let Err(e) = write_status(&api, &name, &old, &st).await {
        tracing::warn!(pool = %format!("{ns}/{name}"), error = %e, "cannot report the failed cleanup");
    }
}

async fn release(pool: &WorkerPool, ctx: &Context) -> Result<(), Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let memory = ctx
        .pools
        .lock()
        .expect("pool memory lock")
        .remove(&uid(pool));
    // The fleet as this run knew it, or as the spec says (after a restart).
    let spec_queue = pool.spec.queue.clone().unwrap_or_default();
    let queue_name = build::queue_name(&ns, &name, spec_queue.name.as_deref());
    let fleet = match memory.and_then(|m| m.ec2) {
        Some(fleet) => Some(fleet),
        None => Ec2Provider::from_spec(
            pool.spec.provider.as_ref(),
            &ns,
            &name,
            &queue_name,
            &[],
            ctx.aws.sdk_config(),
        )
        .ok()
        .flatten()
        .map(Arc::new),
    };
    if let Some(fleet) = fleet {
        match fleet.delete_all().await {
            Ok(()) => {}
            // Nothing left to scale down.
            Err(e) if e.is_not_found() => {
                tracing::info!(pool = %format!("{ns}/{name}"), error = %e, "the fleet is already gone");
            }
            Err(e) => return Err(Error::Other(format!("cannot release the workers: {e}"))),
        }
    }
    if spec_queue.deletion_policy != Some(DeletionPolicy::Retain) {
        for q in [format!("{queue_name}-dlq"), queue_name] {
            let deleted = match ctx.sqs.open(&q).await {
                Ok(queue) => queue.delete().await,
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => {}
                Err(e) if e.kind == cloudkon_core::aws::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Other(format!("cannot delete queue {q}: {e}"))),
            }
        }
        ctx.event(
            pool,
            false,
            "QueuesDeleted",
            "the queue and its dead-letter queue are deleted".into(),
        )
        .await;
    }
    // The Deployment goes with its owner (garbage collection).
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_written_at_most_once_a_second_and_conditions_at_once() {
        let t0 = Instant::now();
        let old = WorkerPoolStatus::default();
        let mut figures = old.clone();
        figures.backlog = 7;
        assert!(!status_due(&old, &old, None, t0), "nothing changed");
        assert!(status_due(&old, &figures, None, t0), "never written");
        assert!(!status_due(
            &old,
            &figures,
            Some(t0),
            t0 + Duration::from_millis(400)
        ));
        assert!(status_due(&old, &figures, Some(t0), t0 + STATUS_EVERY));
        let mut generation = figures.clone();
        generation.observed_generation = Some(2);
        assert!(status_due(&old, &generation, Some(t0), t0));
        let mut desired = old.clone();
        desired.desired_replicas = 3;
        assert!(status_due(&old, &desired, Some(t0), t0));
    }
}
