//! A partial TaskBatch status, typed: what the runner and the reconciler
//! each own of it. Each writes its part with server-side apply under a field
//! manager of its own ([`RECONCILER`], [`RUNNER`]), whole every time: a field
//! a manager owned and leaves out is removed, the other's fields stay. As a
//! change (in memory, or merged into a part), a field left `None` stays as it
//! is and `Some(None)` (where a field can be cleared) removes it.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::crd::TaskBatch;
use crate::crd::taskbatch::{BatchCost, BundleSizing, Latency, Phase, TaskBatchStatus, TaskOrder};
use crate::error::Error;

/// The reconciler's field manager: conditions, observedGeneration, the
/// results location, and the phase where it decides it
/// ([`crate::batch_plan::reconciler_part`]).
pub const RECONCILER: &str = "cloudkon-reconciler";
/// The batch runner's field manager: counts, progress, figures, checkpoints,
/// and the phase while it runs.
pub const RUNNER: &str = "cloudkon-runner";

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<Option<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(skip_serializing_if = "CountsPatch::is_empty")]
    pub counts: CountsPatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_completion_time: Option<Option<Time>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<BatchCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_slots: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_workers: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_order: Option<TaskOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_sizing: Option<BundleSizing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueue_horizon: Option<i64>,
}

/// The task counts a patch sets.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CountsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueued: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<i64>,
}

impl CountsPatch {
    fn is_empty(&self) -> bool {
        *self == CountsPatch::default()
    }
}

/// A count as the status holds it.
pub fn count(n: u64) -> Option<i64> {
    Some(i64::try_from(n).unwrap_or(i64::MAX))
}

impl CountsPatch {
    fn merge(&mut self, newer: CountsPatch) {
        let CountsPatch {
            total,
            enqueued,
            running,
            succeeded,
            failed,
            retried,
            dead_lettered,
            lost,
        } = newer;
        newer_wins(&mut self.total, total);
        newer_wins(&mut self.enqueued, enqueued);
        newer_wins(&mut self.running, running);
        newer_wins(&mut self.succeeded, succeeded);
        newer_wins(&mut self.failed, failed);
        newer_wins(&mut self.retried, retried);
        newer_wins(&mut self.dead_lettered, dead_lettered);
        newer_wins(&mut self.lost, lost);
    }
}

fn newer_wins<T>(field: &mut Option<T>, newer: Option<T>) {
    if newer.is_some() {
        *field = newer;
    }
}

impl StatusPatch {
    /// As a JSON merge patch: cleared fields are null. A patch that ends the
    /// batch writes its cost as spent: the runner's figures when it gives up
    /// still project to a completion that will not come.
    pub fn to_value(&self) -> Value {
        if self.phase.is_some_and(Phase::is_finished) && self.cost.is_some() {
            let mut ended = self.clone();
            ended.cost = ended.cost.map(crate::cost::ended);
            return serde_json::to_value(ended).expect("a status patch always serializes");
        }
        serde_json::to_value(self).expect("a status patch always serializes")
    }

    /// As an applied part: cleared fields are left out (server-side apply
    /// removes what its manager owned and no longer sends).
    pub fn to_apply_value(&self) -> Value {
        let mut value = self.to_value();
        drop_nulls(&mut value);
        value
    }

    /// Takes `newer`'s fields over this one's (a change onto a part).
    pub fn merge(&mut self, newer: StatusPatch) {
        // Destructured, so that a new field cannot be forgotten here.
        let StatusPatch {
            phase,
            observed_generation,
            conditions,
            counts,
            progress,
            start_time,
            completion_time,
            estimated_completion_time,
            eta,
            throughput,
            latency,
            cost,
            results,
            planned_slots,
            planned_workers,
            worker_pool,
            send_order,
            source_digest,
            bundle_sizing,
            enqueue_horizon,
        } = newer;
        newer_wins(&mut self.phase, phase);
        newer_wins(&mut self.observed_generation, observed_generation);
        newer_wins(&mut self.conditions, conditions);
        self.counts.merge(counts);
        newer_wins(&mut self.progress, progress);
        newer_wins(&mut self.start_time, start_time);
        newer_wins(&mut self.completion_time, completion_time);
        newer_wins(
            &mut self.estimated_completion_time,
            estimated_completion_time,
        );
        newer_wins(&mut self.eta, eta);
        newer_wins(&mut self.throughput, throughput);
        newer_wins(&mut self.latency, latency);
        newer_wins(&mut self.cost, cost);
        newer_wins(&mut self.results, results);
        newer_wins(&mut self.planned_slots, planned_slots);
        newer_wins(&mut self.planned_workers, planned_workers);
        newer_wins(&mut self.worker_pool, worker_pool);
        newer_wins(&mut self.send_order, send_order);
        newer_wins(&mut self.source_digest, source_digest);
        newer_wins(&mut self.bundle_sizing, bundle_sizing);
        newer_wins(&mut self.enqueue_horizon, enqueue_horizon);
    }

    /// The runner's part of a status as it stands: what a runner taking
    /// over the batch (after a restart) starts from, so that its first apply
    /// keeps what the one before it wrote.
    pub fn runner_part(st: &TaskBatchStatus) -> StatusPatch {
        let c = &st.counts;
        StatusPatch {
            phase: st.phase,
            counts: CountsPatch {
                total: Some(c.total),
                enqueued: Some(c.enqueued),
                running: Some(c.running),
                succeeded: Some(c.succeeded),
                failed: Some(c.failed),
                retried: Some(c.retried),
                dead_lettered: Some(c.dead_lettered),
                lost: (c.lost > 0).then_some(c.lost),
            },
            progress: st.progress.clone(),
            start_time: st.start_time.clone(),
            completion_time: st.completion_time.clone(),
            estimated_completion_time: Some(st.estimated_completion_time.clone()),
            eta: Some(st.eta.clone()),
            throughput: Some(st.throughput),
            latency: st.latency,
            cost: st.cost.clone(),
            planned_slots: st.planned_slots,
            planned_workers: st.planned_workers,
            worker_pool: st.worker_pool.clone(),
            send_order: st.send_order,
            source_digest: st.source_digest.clone(),
            bundle_sizing: st.bundle_sizing.clone(),
            enqueue_horizon: st.enqueue_horizon,
            ..StatusPatch::default()
        }
    }
}

fn drop_nulls(value: &mut Value) {
    if let Value::Object(fields) = value {
        fields.retain(|_, v| !v.is_null());
        fields.values_mut().for_each(drop_nulls);
    }
}

/// Applies `part` as the TaskBatch's status owned by `manager` (forced: the
/// phase passes from the reconciler to the runner and back on cancel).
pub async fn apply(
    api: &Api<TaskBatch>,
    name: &str,
    manager: &str,
    part: &StatusPatch,
) -> Result<(), Error> {
    apply_status(api, name, manager, part.to_apply_value()).await
}

/// Applies `status` as the status of `K` `name`, owned by `manager`.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    status: impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(Error::kube(format!(
        "cannot write the status of {} {name}",
        K::kind(&())
    )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_fields_set_are_written_and_cleared_ones_are_null() {
        let patch = StatusPatch {
            phase: Some(Phase::Running),
            counts: CountsPatch {
                enqueued: count(5),
                running: Some(2),
                ..CountsPatch::default()
            },
            eta: Some(None),
            estimated_completion_time: Some(None),
            enqueue_horizon: Some(9),
            ..StatusPatch::default()
        };
        assert_eq!(
            patch.to_value(),
            json!({"phase": "Running", "counts": {"enqueued": 5, "running": 2},
                   "eta": null, "estimatedCompletionTime": null, "enqueueHorizon": 9})
        );
        assert_eq!(StatusPatch::default().to_value(), json!({}));
        // Applied, a cleared field is left out.
        assert_eq!(
            patch.to_apply_value(),
            json!({"phase": "Running", "counts": {"enqueued": 5, "running": 2},
                   "enqueueHorizon": 9})
        );
    }

    #[test]
    fn a_patch_that_ends_the_batch_writes_its_cost_as_spent() {
        let cost = crate::cost::a_tenth_done();
        assert_eq!(cost.summary, "$0.0500 / $0.500");
        let mut patch = StatusPatch {
            phase: Some(Phase::Running),
            cost: Some(cost),
            ..StatusPatch::default()
        };
        assert_eq!(patch.to_value()["cost"]["summary"], "$0.0500 / $0.500");
        // Given up by its failure policy at a tenth of the tasks.
        patch.merge(StatusPatch {
            phase: Some(Phase::Failed),
            ..StatusPatch::default()
        });
        let applied = patch.to_apply_value();
        assert_eq!(applied["cost"]["summary"], "$0.0500", "{applied}");
        assert_eq!(applied["cost"]["projectedDollars"], 0.05, "{applied}");
        assert_eq!(applied["cost"]["dollars"], 0.05, "{applied}");
    }

    #[test]
    fn a_change_merged_into_a_part_keeps_what_it_does_not_name() {
        let mut status = TaskBatchStatus::default();
        status.counts.succeeded = 40;
        status.counts.enqueued = 90;
        status.eta = Some("2m".into());
        status.enqueue_horizon = Some(100);
        let mut part = StatusPatch::runner_part(&status);
        part.merge(StatusPatch {
            counts: CountsPatch {
                enqueued: count(120),
                ..CountsPatch::default()
            },
            eta: Some(None),
            phase: Some(Phase::Enqueuing),
            ..StatusPatch::default()
        });
        let applied = part.to_apply_value();
        assert_eq!(applied["counts"]["succeeded"], 40, "{applied}");
        assert_eq!(applied["counts"]["enqueued"], 120);
        assert_eq!(applied["enqueueHorizon"], 100);
        assert_eq!(applied["phase"], "Enqueuing");
        assert!(applied.get("eta").is_none(), "cleared: {applied}");
        // Not the runner's: conditions and observedGeneration stay out.
        assert!(applied.get("conditions").is_none());
        assert!(applied.get("observedGeneration").is_none());
    }
}
