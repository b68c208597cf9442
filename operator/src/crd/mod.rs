//! The custom resources: [`TaskBatch`] and [`WorkerPool`], in API group
//! `cloudkon.io`, version `v1alpha1`.
//!
//! The CRD manifests in `crds/` are generated from these types
//! (`cloudkon-operator crd`), never edited by hand; a test fails when they
//! differ.

pub mod reference;
pub mod taskbatch;
pub mod workerpool;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use taskbatch::{TaskBatch, TaskBatchSpec, TaskBatchStatus};
pub use workerpool::{WorkerPool, WorkerPoolSpec, WorkerPoolStatus};

/// The API group of CloudKon's resources.
pub const GROUP: &str = "cloudkon.io";

/// Every CRD of the operator, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![TaskBatch::crd(), WorkerPool::crd()]
}

/// One CRD as a YAML document (as committed under `crds/`).
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml::to_string(crd).expect("a CRD always serializes");
    format!("---\n{yaml}")
}

/// The file under `crds/` that holds a CRD: `taskbatch.yaml`, `workerpool.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.spec.names.kind.to_lowercase())
}

/// The schema of `status.conditions`: Kubernetes' `metav1.Condition` list,
/// keyed by `type` so that server-side apply merges conditions one by one.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The latest observations of the object's state, one per type (Kubernetes API conventions: `lastTransitionTime` changes only when `status` does).",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "properties": {
                "type": { "type": "string", "description": "The condition's type, in CamelCase." },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"], "description": "True, False or Unknown." },
                "observedGeneration": { "type": "integer", "format": "int64", "description": "The `metadata.generation` the condition was set from." },
                "lastTransitionTime": { "type": "string", "format": "date-time", "description": "When `status` last changed." },
                "reason": { "type": "string", "description": "Why, in one CamelCase word." },
                "message": { "type": "string", "description": "Why, for people." }
            },
            "required": ["type", "status", "lastTransitionTime", "reason", "message"]
        }
    })
}
