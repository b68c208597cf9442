//! Where a pool's workers run, behind one interface: a Deployment in the
//! pool's namespace, or an EC2 fleet (instances, an Auto Scaling group, an
//! EKS node group). The pool reconciler observes and scales it without
//! asking which.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::build::{self, POOL_LABEL};
use crate::context::{Context, MANAGER};
use crate::crd::WorkerPool;
use crate::crd::workerpool::ProviderType;
use crate::error::Error;
use crate::pool_memory::PoolMemory;
use crate::provider::{BusyHosts, Ec2Provider, ProviderError};

/// The annotation the ReplicaSet controller reads to pick which pods go
/// first on scale-down (lowest cost first).
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A heartbeat older than this no longer says a worker is busy: two of the
/// worker's refresh periods and some slack (a row also goes as soon as the
/// worker turns idle or busy).
const HEARTBEAT_FRESH: Duration =
    Duration::from_secs(2 * cloudkon_worker::remote::HEARTBEAT_ROW_EVERY.as_secs() + 10);

/// What a pool's EC2 fleet is made from: the provider's spec, the workers'
/// settings it puts in their user data, and the queue they read.
fn fleet_made(pool: &WorkerPool, env: &[(String, String)], queue_url: &str) -> String {
    serde_json::json!([pool.spec.provider, env, queue_url]).to_string()
}

/// A pool's workers.
pub enum WorkerFleet {
    /// The pool's worker Deployment.
    Deployment,
    /// Instances, an Auto Scaling group or an EKS node group.
    Ec2(Arc<Ec2Provider>),
}

/// Workers asked for and ready.
pub struct ObservedWorkers {
    pub current: i32,
    pub ready: i32,
    /// The Deployment does not exist (yet, or any more).
    pub missing: bool,
    /// The Deployment's `metadata.generation`: a spec changed by someone
    /// else (`kubectl scale`, `set image`, an edit) moves it.
    pub generation: Option<i64>,
    /// The fleet's own min and max (a group's), which it keeps to.
    pub bounds: Option<(i32, i32)>,
}

/// The fleet could not be read or scaled.
#[derive(Debug)]
pub struct FleetError {
    pub error: Error,
    /// It passes by itself in a few seconds (see
    /// [`crate::provider::ProviderError::is_temporary`]): a node group
    /// still updating, throttling, a timeout.
    pub temporary: bool,
}

impl From<Error> for FleetError {
    fn from(error: Error) -> Self {
        FleetError {
            error,
            temporary: false,
        }
    }
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl WorkerFleet {
    /// The pool's fleet; an EC2 one is made once per operator run and spec,
    /// and kept in `memory`.
    pub fn of(
        pool: &WorkerPool,
        ctx: &Context,
        memory: &mut PoolMemory,
        queue_url: &str,
    ) -> Result<Self, Error> {
        let deployment = pool
            .spec
            .provider
            .as_ref()
            .is_none_or(|p| matches!(p.type_, ProviderType::Deployment));
        // A Deployment pool (most) needs nothing made, every poll.
        if deployment {
            memory.ec2 = None;
            memory.fleet_made = None;
            return Ok(WorkerFleet::Deployment);
        }
        let env = build::instance_env(&pool.spec);
        let made = fleet_made(pool, &env, queue_url);
        // Made once per operator run and spec.
        if memory.ec2.is_none() || memory.fleet_made.as_ref() != Some(&made) {
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
            memory.fleet_made = Some(made);
        }
        Ok(match &memory.ec2 {
            Some(fleet) => WorkerFleet::Ec2(fleet.clone()),
            None => WorkerFleet::Deployment,
        })
    }

    pub async fn observe(
        &self,
        pool: &WorkerPool,
        ctx: &Context,
    ) -> Result<ObservedWorkers, FleetError> {
        match self {
            WorkerFleet::Ec2(fleet) => {
                let count = fleet.observe().await.map_err(|e| fleet_error(pool, e))?;
                Ok(ObservedWorkers {
                    current: count.current,
                    ready: count.ready,
                    missing: false,
                    generation: None,
                    bounds: count.bounds,
                })
            }
            WorkerFleet::Deployment => Ok(observe_deployment(pool, ctx).await?),
        }
    }

    /// Why workers that were asked for are not ready, when the fleet can
    /// tell and waiting will not fix it (see `pod_problems`).
    pub async fn problem(&self, pool: &WorkerPool, ctx: &Context) -> Option<String> {
        match self {
            WorkerFleet::Deployment => {
                let ns = pool.namespace().unwrap_or_default();
                let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                let selector = format!("{POOL_LABEL}={}", pool.name_any());
                let from_pods = match pods.list(&ListParams::default().labels(&selector)).await {
                    Ok(list) => crate::pod_problems::first_problem(&list.items),
                    Err(e) => {
                        tracing::debug!(pool = %format!("{ns}/{}", pool.name_any()), error = %e, "cannot list worker pods");
                        None
                    }
                };
                if from_pods.is_some() {
                    return from_pods;
                }
                // No pod to say it: pods the Deployment cannot make.
                let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                let name = build::deployment_name(&pool.name_any());
                match deployments.get_opt(&name).await {
                    Ok(d) => d.as_ref().and_then(crate::pod_problems::deployment_problem),
                    Err(e) => {
                        tracing::debug!(pool = %format!("{ns}/{name}"), error = %e, "cannot read the worker Deployment");
                        None
                    }
                }
            }
            WorkerFleet::Ec2(_) => None,
        }
    }

    /// Before a scale-down: how many workers run tasks and should stay, when
    /// the fleet can tell (`None`: it removes whichever it removes), and for
    /// an EC2 fleet the hosts that run them, for [`Self::scale`] to spare
    /// (read once per scale-down).
    pub async fn busy_before_scale_down(
        &self,
        pool: &WorkerPool,
        ctx: &Context,
    ) -> (Option<i32>, Option<BusyHosts>) {
        match self {
            WorkerFleet::Deployment => (Some(mark_idle_pods(pool, ctx).await), None),
            WorkerFleet::Ec2(fleet) => {
                let Some(hosts) = busy_hosts(pool, ctx).await else {
                    return (None, None);
                };
                let busy = fleet.busy(&hosts).await.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "cannot tell which workers are busy; scale-down picks by age");
                    None
                });
                (busy, Some(hosts))
            }
        }
    }

    /// Sizes the fleet to `replicas` from `workers` as observed; a Deployment
    /// is also applied again when the pool's spec changed or it is missing.
    /// An EC2 fleet going down spares the machines of `busy` (from
    /// [`Self::busy_before_scale_down`]; read here when not given).
    #[allow(clippy::too_many_arguments)] // the pool, what was observed and decided, named
    pub async fn scale(
        &self,
        pool: &WorkerPool,
        ctx: &Context,
        memory: &mut PoolMemory,
        queue_url: &str,
        replicas: i32,
        workers: &ObservedWorkers,
        busy: Option<BusyHosts>,
    ) -> Result<(), FleetError> {
        let change = replicas != workers.current;
        match self {
            WorkerFleet::Ec2(fleet) if change => {
                // Idle machines go first (see `BusyHosts`).
                let busy = match busy {
                    Some(busy) => busy,
                    None if replicas < workers.current => {
                        busy_hosts(pool, ctx).await.unwrap_or_default()
                    }
                    None => BusyHosts::default(),
                };
                fleet
                    .scale_sparing(replicas, &busy)
                    .await
                    .map_err(|e| fleet_error(pool, e))
            }
            WorkerFleet::Ec2(_) => Ok(()),
            WorkerFleet::Deployment => {
                let generation = pool.metadata.generation;
                // Applied again when the pool changed, or the Deployment
                // did under another hand: the pool's spec and scaler own
                // its replicas and template (server-side apply restores
                // only the fields the operator set: a `rollout restart`'s
                // annotation stays).
                let as_applied = memory.applied_generation == generation
                    && !workers.missing
                    && workers.generation == memory.deployment_generation;
                if !change && as_applied {
                    return Ok(());
                }
                let applied = apply_deployment(pool, ctx, queue_url, replicas).await?;
                memory.applied_generation = generation;
                memory.deployment_generation = applied.metadata.generation;
                Ok(())
            }
        }
    }
}

pub(crate) fn fleet_error(pool: &WorkerPool, e: ProviderError) -> FleetError {
    FleetError {
        temporary: e.is_temporary(),
        error: Error::Other(format!(
            "WorkerPool {}/{}: {e}",
            pool.namespace().unwrap_or_default(),
            pool.name_any()
        )),
    }
}

async fn apply_deployment(
    pool: &WorkerPool,
    ctx: &Context,
    queue_url: &str,
    replicas: i32,
) -> Result<Deployment, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let name = build::deployment_name(&pool.name_any());
    let deployment = build::worker_deployment(pool, queue_url, replicas)?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    deployments
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await
        .map_err(Error::kube(format!("cannot apply Deployment {ns}/{name}")))
}

async fn observe_deployment(pool: &WorkerPool, ctx: &Context) -> Result<ObservedWorkers, Error> {
    let ns = pool.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::deployment_name(&pool.name_any());
    let Some(d) = deployments
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("cannot read Deployment {ns}/{name}")))?
    else {
        return Ok(ObservedWorkers {
            current: 0,
            ready: 0,
            missing: true,
            generation: None,
            bounds: None,
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
        generation: d.metadata.generation,
        bounds: None,
    })
}

/// Whether a worker of the pool's ledger table may be running a task: a
/// recent heartbeat says so, or the heartbeats cannot be read. Workers of
/// other pools that share the table count too: this only ever delays the
/// report of tasks that are nowhere (`pool_idle`).
pub async fn any_worker_busy(pool: &WorkerPool, ctx: &Context) -> bool {
    let now = cloudkon_core::Timestamp::now().0;
    let fresh = u64::try_from(HEARTBEAT_FRESH.as_micros()).unwrap_or(u64::MAX);
    match ctx
        .aws
        .ledger(pool.spec.ledger_table())
        .list_workers()
        .await
    {
        Ok(rows) => rows
            .iter()
            .any(|h| h.busy > 0 && now.saturating_sub(h.last_seen.0) <= fresh),
        // No table: no worker ever ran there.
        Err(e) if e.kind == cloudkon_core::aws::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::debug!(error = %e, "no worker heartbeats: the pool's workers may be busy");
            true
        }
    }
}

/// The hosts of the pool's ledger table's workers that run tasks, per a
/// fresh heartbeat; `None` when the rows cannot be read.
async fn busy_hosts(pool: &WorkerPool, ctx: &Context) -> Option<BusyHosts> {
    match ctx
        .aws
        .ledger(pool.spec.ledger_table())
        .list_workers()
        .await
    {
        Ok(rows) => Some(BusyHosts::from_rows(
            &rows,
            cloudkon_core::Timestamp::now(),
            HEARTBEAT_FRESH,
        )),
        Err(e) => {
            tracing::debug!(error = %e, "no worker heartbeats; scale-down picks machines by age");
            None
        }
    }
}

/// Gives each worker pod a deletion cost equal to the tasks it is running
/// (from its heartbeat), so that the ReplicaSet removes idle workers first.
/// Returns how many of the pool's pods run tasks (per a fresh heartbeat).
/// Best effort: a failure only loses the preference (and counts no pod busy).
async fn mark_idle_pods(pool: &WorkerPool, ctx: &Context) -> i32 {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
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
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let list = match pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={name}")))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(pool = %format!("{ns}/{name}"), error = %e, "cannot list worker pods");
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
