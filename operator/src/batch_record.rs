//! Where a batch runner keeps what must survive it: the batch's status (JSON
//! merge patches of the fields the runner owns) and its collected-ids set.
//! On the API server in production ([`KubeRecord`]: the TaskBatch's status
//! subresource and a ConfigMap it owns); in memory in tests ([`MemoryRecord`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::context::{Error, MANAGER};
use crate::crd::TaskBatch;
use crate::crd::taskbatch::TaskBatchStatus;

/// The key of the collected-ids ConfigMap's value.
const COLLECTED_KEY: &str = "collected";

/// A batch's durable record, as its runner writes it.
pub trait BatchRecord: Send + Sync + 'static {
    /// Merges `status` into the batch's status (only the fields given change,
    /// so the runner and the reconciler each write their own).
    fn patch_status(&self, status: Value) -> impl Future<Output = Result<(), Error>> + Send;

    /// The collected-ids set as last stored (encoded), if any.
    fn load_collected(&self) -> impl Future<Output = Result<Option<String>, Error>> + Send;

    /// Stores the collected-ids set (encoded), replacing the last one.
    fn store_collected(&self, encoded: String) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The ConfigMap holding a batch's collected ids.
pub fn collected_configmap_name(batch: &str) -> String {
    format!("{batch}-cloudkon-collected")
}

/// A TaskBatch's status subresource and its collected-ids ConfigMap.
pub struct KubeRecord {
    batches: Api<TaskBatch>,
    configmaps: Api<ConfigMap>,
    name: String,
    namespace: String,
    owner: OwnerReference,
}

impl KubeRecord {
    pub fn new(client: kube::Client, batch: &TaskBatch) -> Result<Self, Error> {
        let namespace = batch.namespace().unwrap_or_default();
        let name = batch.name_any();
        let owner = batch
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Other(format!("TaskBatch {name} has no uid")))?;
        Ok(Self {
            batches: Api::namespaced(client.clone(), &namespace),
            configmaps: Api::namespaced(client, &namespace),
            name,
            namespace,
            owner,
        })
    }

    fn configmap_name(&self) -> String {
        collected_configmap_name(&self.name)
    }
}

impl BatchRecord for KubeRecord {
    async fn patch_status(&self, status: Value) -> Result<(), Error> {
        patch_status(&self.batches, &self.name, status).await
    }

    async fn load_collected(&self) -> Result<Option<String>, Error> {
        let cm_name = self.configmap_name();
        let Some(cm) = self
            .configmaps
            .get_opt(&cm_name)
            .await
            .map_err(Error::kube(format!(
                "cannot read ConfigMap {}/{cm_name}",
                self.namespace
            )))?
        else {
            return Ok(None);
        };
        // Left by an earlier batch of the same name (deleted without its
        // dependents): not this batch's results. Overwritten at the first flush.
        let ours = cm
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == self.owner.uid);
        if !ours {
            tracing::info!(configmap = %cm_name, namespace = %self.namespace,
                "collected ids of an earlier batch of this name: ignored");
            return Ok(None);
        }
        Ok(cm.data.and_then(|mut d| d.remove(COLLECTED_KEY)))
    }

    async fn store_collected(&self, encoded: String) -> Result<(), Error> {
        let cm_name = self.configmap_name();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(cm_name.clone()),
                namespace: Some(self.namespace.clone()),
                owner_references: Some(vec![self.owner.clone()]),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(COLLECTED_KEY.to_string(), encoded)])),
            ..ConfigMap::default()
        };
        self.configmaps
            .patch(
                &cm_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(Error::kube(format!(
                "cannot write ConfigMap {}/{cm_name}",
                self.namespace
            )))?;
        Ok(())
    }
}

/// A JSON merge patch of a TaskBatch's status.
pub(crate) async fn patch_status(
    api: &Api<TaskBatch>,
    name: &str,
    status: Value,
) -> Result<(), Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(Error::kube(format!(
        "cannot write the status of TaskBatch {name}"
    )))?;
    Ok(())
}

/// A batch's record in memory: the status as the merge patches leave it.
#[derive(Debug, Default)]
pub struct MemoryRecord {
    status: Mutex<Value>,
    collected: Mutex<Option<String>>,
    writes: Mutex<u64>,
}

impl MemoryRecord {
    /// The status so far.
    pub fn status(&self) -> TaskBatchStatus {
        let status = self.status.lock().expect("record lock").clone();
        if status.is_null() {
            return TaskBatchStatus::default();
        }
        serde_json::from_value(status).expect("the runner writes a valid status")
    }

    /// Status patches and collected-set writes so far.
    pub fn writes(&self) -> u64 {
        *self.writes.lock().expect("record lock")
    }
}

impl BatchRecord for MemoryRecord {
    async fn patch_status(&self, status: Value) -> Result<(), Error> {
        merge(&mut self.status.lock().expect("record lock"), status);
        *self.writes.lock().expect("record lock") += 1;
        Ok(())
    }

    async fn load_collected(&self) -> Result<Option<String>, Error> {
        Ok(self.collected.lock().expect("record lock").clone())
    }

    async fn store_collected(&self, encoded: String) -> Result<(), Error> {
        *self.collected.lock().expect("record lock") = Some(encoded);
        *self.writes.lock().expect("record lock") += 1;
        Ok(())
    }
}

/// RFC 7386 JSON merge patch, as the API server applies `Patch::Merge`.
fn merge(target: &mut Value, patch: Value) {
    let Value::Object(fields) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let object = target.as_object_mut().expect("made an object above");
    for (key, value) in fields {
        if value.is_null() {
            object.remove(&key);
        } else {
            merge(object.entry(key).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_replace_add_and_remove_fields() {
        let mut status =
            json!({"counts": {"enqueued": 5, "total": 9}, "phase": "Enqueuing", "eta": "x"});
        merge(
            &mut status,
            json!({"counts": {"enqueued": 7}, "phase": "Running", "eta": null, "throughput": 1.5}),
        );
        assert_eq!(
            status,
            json!({"counts": {"enqueued": 7, "total": 9}, "phase": "Running", "throughput": 1.5})
        );
    }
}
