//! Which WorkerPools use the same queue or the same group of instances: two
//! pools on one queue would run each other's bundles under each other's
//! ledgers, and two on one Auto Scaling group or node group would scale it
//! against each other. The pool made first keeps them; the others are
//! refused until it goes.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::build;
use crate::crd::WorkerPool;
use crate::provider::fleet_identity;

/// What one pool uses, or would use once accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uses {
    /// The queue's name.
    pub queue: String,
    /// The fleet's identity ([`fleet_identity`]).
    pub fleet: String,
}

impl Uses {
    /// What the pool's spec names.
    pub fn by_spec(pool: &WorkerPool) -> Self {
        let ns = pool.namespace().unwrap_or_default();
        Self {
            queue: build::queue_name(
                &ns,
                &pool.name_any(),
                pool.spec.queue.as_ref().and_then(|q| q.name.as_deref()),
            ),
            fleet: fleet_identity(pool.spec.provider.as_ref()),
        }
    }

    /// Whether `other` shares the queue or the group: Deployments and
    /// `Instances` are each the pool's own (named and tagged after it).
    fn meets(&self, queue: Option<&str>, fleet: Option<&str>) -> bool {
        let group =
            self.fleet.starts_with("AutoScalingGroup/") || self.fleet.starts_with("EksNodegroup/");
        queue == Some(self.queue.as_str()) || (group && fleet == Some(self.fleet.as_str()))
    }
}

/// The order in which pools were made, the first keeping what they share:
/// creation time, then namespace and name, so that two pools made in the
/// same second still agree on which one is first.
fn made(p: &WorkerPool) -> impl Ord {
    (
        p.metadata.creation_timestamp.clone().map(|t| t.0),
        p.namespace().unwrap_or_default(),
        p.name_any(),
    )
}

fn key(p: &WorkerPool) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// Whether `other` has, by its status, what `uses` names.
fn holds(uses: &Uses, other: &WorkerPool) -> bool {
    let st = other.status.as_ref();
    uses.meets(
        st.and_then(|s| s.queue_url.as_deref())
            .map(build::queue_name_in_url),
        st.and_then(|s| s.fleet.as_deref()),
    )
}

/// Whether `other`'s spec names what `uses` names.
fn names(uses: &Uses, other: &WorkerPool) -> bool {
    let spec = Uses::by_spec(other);
    uses.meets(Some(&spec.queue), Some(&spec.fleet))
}

fn alive<'a>(
    pool: &'a WorkerPool,
    listed: &'a [WorkerPool],
) -> impl Iterator<Item = &'a WorkerPool> {
    listed
        .iter()
        .filter(move |o| o.uid() != pool.uid() && o.metadata.deletion_timestamp.is_none())
}

/// The pools made before `pool` that have, or name in their spec, what
/// `pool` would use. Their specs count as well as their statuses: two pools
/// applied together have no status yet, and both passed when only statuses
/// were compared.
pub fn taken_before(pool: &WorkerPool, uses: &Uses, listed: &[WorkerPool]) -> Vec<String> {
    alive(pool, listed)
        .filter(|o| made(o) < made(pool))
        .filter(|o| holds(uses, o) || names(uses, o))
        .map(key)
        .collect()
}

/// The pools, made before or after `pool`, that have what it has (their
/// statuses): what a deleted pool must leave in place.
pub fn in_use_by_others(pool: &WorkerPool, uses: &Uses, listed: &[WorkerPool]) -> Vec<String> {
    alive(pool, listed)
        .filter(|o| holds(uses, o))
        .map(key)
        .collect()
}

/// The pools whose spec names what a deleted pool released: refused while
/// it was there, they are woken to take it (nothing else changes on them).
pub fn waiting_for(
    pool: &WorkerPool,
    released: &Uses,
    listed: &[WorkerPool],
) -> Vec<ObjectRef<WorkerPool>> {
    alive(pool, listed)
        .filter(|o| names(released, o))
        .map(ObjectRef::from_obj)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(
        name: &str,
        made: &str,
        queue: Option<&str>,
        status: Option<serde_json::Value>,
    ) -> WorkerPool {
        let mut spec = json!({"workers": {"min": 0, "max": 5}, "template": {"image": "w:1"}});
        if let Some(q) = queue {
            spec["queue"] = json!({"name": q});
        }
        let mut o = json!({
            "apiVersion": "cloudkon.io/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"),
                         "creationTimestamp": made},
            "spec": spec,
        });
        if let Some(s) = status {
            o["status"] = s;
        }
        serde_json::from_value(o).unwrap()
    }

    fn group(mut p: WorkerPool, name: &str) -> WorkerPool {
        let mut v = serde_json::to_value(&p).unwrap();
        v["spec"]["provider"] =
            json!({"type": "AutoScalingGroup", "autoScalingGroup": {"name": name}});
        p = serde_json::from_value(v).unwrap();
        p
    }

    #[test]
    fn of_two_pools_applied_together_on_one_queue_only_the_later_is_refused() {
        // Neither has a status yet: both were applied in one kubectl apply.
        let a = pool("a", "2026-12-04T10:00:00Z", Some("cloudkon-shared"), None);
        let b = pool("b", "2026-12-04T10:00:01Z", Some("cloudkon-shared"), None);
        let listed = [a.clone(), b.clone()];
        assert!(taken_before(&a, &Uses::by_spec(&a), &listed).is_empty());
        assert_eq!(taken_before(&b, &Uses::by_spec(&b), &listed), ["ns/a"]);
    }

    #[test]
    fn in_the_same_second_the_name_decides() {
        let a = pool("a", "2026-12-04T10:00:00Z", Some("q"), None);
        let b = pool("b", "2026-12-04T10:00:00Z", Some("q"), None);
        let listed = [b.clone(), a.clone()];
        assert!(taken_before(&a, &Uses::by_spec(&a), &listed).is_empty());
        assert_eq!(taken_before(&b, &Uses::by_spec(&b), &listed), ["ns/a"]);
    }

    #[test]
    fn a_queue_held_by_status_counts_as_well_as_one_named() {
        // "a" runs on q (its status) though its spec now names another
        // queue (refused on it): a later pool naming q is still refused.
        let status = json!({"queueUrl": "http://127.0.0.1:9/000000000000/q"});
        let a = pool("a", "2026-12-04T10:00:00Z", Some("other"), Some(status));
        let b = pool("b", "2026-12-04T10:00:01Z", Some("q"), None);
        assert_eq!(
            taken_before(&b, &Uses::by_spec(&b), &[a, b.clone()]),
            ["ns/a"]
        );
    }

    #[test]
    fn pools_with_their_own_queues_share_only_a_group() {
        let a = group(pool("a", "2026-12-04T10:00:00Z", None, None), "workers");
        let b = group(pool("b", "2026-12-04T10:00:01Z", None, None), "workers");
        let c = group(pool("c", "2026-12-04T10:00:02Z", None, None), "others");
        let d = pool("d", "2026-12-04T10:00:03Z", None, None);
        let listed = [a, b.clone(), c.clone(), d.clone()];
        assert_eq!(taken_before(&b, &Uses::by_spec(&b), &listed), ["ns/a"]);
        assert!(taken_before(&c, &Uses::by_spec(&c), &listed).is_empty());
        assert!(taken_before(&d, &Uses::by_spec(&d), &listed).is_empty());
    }

    #[test]
    fn a_pool_being_deleted_takes_nothing_and_wakes_the_one_it_held_back() {
        let mut a = pool("a", "2026-12-04T10:00:00Z", Some("q"), None);
        let b = pool("b", "2026-12-04T10:00:01Z", Some("q"), None);
        let c = pool("c", "2026-12-04T10:00:02Z", Some("other"), None);
        a.metadata.deletion_timestamp = b.metadata.creation_timestamp.clone();
        let listed = [a.clone(), b.clone(), c];
        assert!(taken_before(&b, &Uses::by_spec(&b), &listed).is_empty());
        let woken = waiting_for(&a, &Uses::by_spec(&a), &listed);
        assert_eq!(woken, [ObjectRef::from_obj(&b)]);
    }

    #[test]
    fn a_deleted_pool_keeps_what_a_later_pool_runs_on_but_not_what_it_only_names() {
        let a = pool("a", "2026-12-04T10:00:00Z", Some("q"), None);
        let running = json!({"queueUrl": "http://127.0.0.1:9/000000000000/q"});
        let b = pool("b", "2026-12-04T10:00:01Z", Some("q"), Some(running));
        let c = pool("c", "2026-12-04T10:00:02Z", Some("q"), None);
        let uses = Uses::by_spec(&a);
        assert_eq!(
            in_use_by_others(&a, &uses, &[a.clone(), b.clone(), c.clone()]),
            ["ns/b"]
        );
        assert!(in_use_by_others(&a, &uses, &[a.clone(), c]).is_empty());
    }
}
