//! A partial TaskBatch status, typed: what the runner and the reconciler
//! each write of it, as a JSON merge patch. A field left `None` stays as it
//! is; `Some(None)` (where a field can be cleared) removes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

use crate::crd::taskbatch::{BatchCost, BundleSizing, Latency, Phase};

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

impl StatusPatch {
    /// The merge patch's body.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a status patch always serializes")
    }
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
    }
}
