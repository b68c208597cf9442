//! Which watch events wake a reconciler. Without a filter every status patch
//! (the batch runner writes a batch's counts as results arrive; the pool
//! reconciler its backlog every poll) comes back as an event and costs a
//! reconcile, with its reads and sometimes another write. These predicates
//! (for `WatchStreamExt::predicate_filter`) let through only what a
//! reconciler acts on:
//!
//! - `metadata.generation`: the spec changed, or deletion began (the API
//!   server bumps a custom resource's generation when it sets
//!   `deletionTimestamp`; checked against Kubernetes 1.20);
//! - the finalizers: `kube::runtime::finalizer` adds its own and waits for
//!   that change to run the Apply step (adding one leaves the generation);
//! - `deletionTimestamp`, in case a server does not bump the generation;
//! - for a TaskBatch, `status.phase`: its runner finishing (Succeeded,
//!   Failed) is what sets the conditions, sends the Event and starts the TTL;
//!   and `status.counts.deadLettered` (its condition and Event).
//!
//! Everything else a reconciler needs it gets from its own requeue (a pool
//! every `--poll`, a running batch every 5 s).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use kube::ResourceExt;

use crate::crd::{TaskBatch, WorkerPool};

fn hash(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn metadata<K: ResourceExt>(obj: &K) -> impl Hash + '_ {
    (
        obj.meta().generation,
        obj.finalizers(),
        obj.meta().deletion_timestamp.is_some(),
    )
}

/// The WorkerPool changes its reconciler acts on.
pub fn workerpool(pool: &WorkerPool) -> Option<u64> {
    Some(hash(metadata(pool)))
}

/// The TaskBatch changes its reconciler acts on.
pub fn taskbatch(batch: &TaskBatch) -> Option<u64> {
    let phase = batch
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"));
    // Dead-lettered tasks get a condition and an Event at once, not at the
    // next requeue.
    let dead_lettered = batch.status.as_ref().map_or(0, |s| s.counts.dead_lettered);
    Some(hash((metadata(batch), phase, dead_lettered)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::taskbatch::{Phase, TaskBatchStatus};

    fn batch() -> TaskBatch {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkon.io/v1alpha1",
            "kind": "TaskBatch",
            "metadata": {"name": "b", "generation": 1},
            "spec": {"workerPool": "p", "tasks": {"inline": [{"kind": "sleep", "ms": 1}]}},
        }))
        .unwrap()
    }

    #[test]
    fn status_numbers_do_not_wake_a_batch_but_its_phase_spec_finalizers_and_deletion_do() {
        let base = batch();
        let mut counts = base.clone();
        let mut st = TaskBatchStatus::default();
        st.counts.succeeded = 5;
        st.throughput = Some(3.0);
        counts.status = Some(st.clone());
        assert_eq!(taskbatch(&base), taskbatch(&counts));

        let mut phase = counts.clone();
        st.phase = Some(Phase::Succeeded);
        phase.status = Some(st);
        assert_ne!(taskbatch(&counts), taskbatch(&phase));

        let mut spec = base.clone();
        spec.metadata.generation = Some(2);
        assert_ne!(taskbatch(&base), taskbatch(&spec));

        let mut finalizer = base.clone();
        finalizer.metadata.finalizers = Some(vec!["cloudkon.io/cleanup".into()]);
        assert_ne!(taskbatch(&base), taskbatch(&finalizer));

        let mut deleted = finalizer.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert_ne!(taskbatch(&finalizer), taskbatch(&deleted));
    }

    #[test]
    fn a_pool_wakes_on_spec_and_finalizers_not_on_its_status() {
        let pool: WorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkon.io/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": "p", "generation": 3},
            "spec": {"workers": {"min": 0, "max": 2}, "template": {"image": "x"}},
        }))
        .unwrap();
        let mut status = pool.clone();
        status.status = Some(Default::default());
        status.status.as_mut().unwrap().backlog = 40;
        assert_eq!(workerpool(&pool), workerpool(&status));
        let mut spec = pool.clone();
        spec.metadata.generation = Some(4);
        assert_ne!(workerpool(&pool), workerpool(&spec));
        let mut finalizer = pool.clone();
        finalizer.metadata.finalizers = Some(vec!["cloudkon.io/cleanup".into()]);
        assert_ne!(workerpool(&pool), workerpool(&finalizer));
    }
}
