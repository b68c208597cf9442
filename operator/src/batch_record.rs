//! Where a batch runner keeps what must survive it: the batch's status (the
//! runner's part of it, [`crate::status_patch`]) and its collected-ids set.
//! On the API server in production ([`KubeRecord`]: the TaskBatch's status
//! subresource and ConfigMaps it owns); in memory in tests ([`MemoryRecord`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::{Api, Resource, ResourceExt};

use crate::collected::{Encoded, Piece};
use crate::context::MANAGER;
use crate::crd::TaskBatch;
use crate::crd::taskbatch::TaskBatchStatus;
use crate::error::Error;
use crate::status_patch::{self, RUNNER, StatusPatch};

/// The first encoding's key (base64 text): still read.
const LEGACY_KEY: &str = "collected";
/// The head of the collected set (binary).
const HEAD_KEY: &str = "head";
/// The digests of the pieces the head names, one a line.
const PIECES_KEY: &str = "pieces";
/// A piece's ConfigMap's key (binary).
const PIECE_KEY: &str = "ids";
/// What the API server takes in one ConfigMap (data and binaryData).
pub const CONFIGMAP_MAX: usize = 1 << 20;

/// A batch's durable record, as its runner writes it.
pub trait BatchRecord: Send + Sync + 'static {
    /// Writes `status`, a change to the runner's part of the batch's status:
    /// only the fields given change (the reconciler's part is its own).
    fn patch_status(&self, status: StatusPatch) -> impl Future<Output = Result<(), Error>> + Send;

    /// The collected-ids set as last stored (encoded), if any.
    fn load_collected(&self) -> impl Future<Output = Result<Option<Encoded>, Error>> + Send;

    /// Stores the collected-ids set (encoded), replacing the last one at
    /// once: a crash on the way leaves the last one whole.
    fn store_collected(&self, encoded: Encoded) -> impl Future<Output = Result<(), Error>> + Send;

    /// Says something wrong about the batch to its readers (a Warning
    /// Event): what the runner rides out but a person should fix.
    fn warn(&self, reason: &str, message: String) -> impl Future<Output = ()> + Send;
}

/// The ConfigMap holding a batch's collected ids (its head): a batch named
/// longer than 234 characters gets one from its uid, where the head's write
/// failed at each flush and the batch never counted a result.
pub fn collected_configmap_name(batch: &str, uid: &str) -> String {
    within_object_name(format!("{batch}-cloudkon-collected"), || {
        format!("cloudkon-collected-{uid}")
    })
}

/// A collected set's large piece's ConfigMap: named by its content, so a
/// piece is written once and a head names only whole pieces; and by its
/// batch's uid, so that no two batches share one (a batch created again
/// under its name while the garbage collector still deletes the old one's
/// pieces, or two batches whose names are too long to prefix).
pub fn collected_piece_name(batch: &str, uid: &str, digest: &str) -> String {
    let short: String = uid.chars().take(8).collect();
    within_object_name(
        format!("{batch}-cloudkon-collected-{short}-{digest}"),
        || format!("cloudkon-collected-{uid}-{digest}"),
    )
}

/// `name`, or `shorter()` where `name` is over the 253 characters of an
/// object's name.
fn within_object_name(name: String, shorter: impl FnOnce() -> String) -> String {
    if name.len() > 253 { shorter() } else { name }
}

/// A TaskBatch's status subresource and its collected-ids ConfigMaps: the
/// head (counts, small pieces, the names of the large ones) in
/// `<batch>-cloudkon-collected`, each large piece in a ConfigMap of its own
/// written before the head that names it. The head's write is the switch;
/// pieces no head names any more are deleted after it (a crash leaves at
/// most a flush's worth, owned by the TaskBatch and deleted with it).
pub struct KubeRecord {
    batches: Api<TaskBatch>,
    configmaps: Api<ConfigMap>,
    name: String,
    namespace: String,
    owner: OwnerReference,
    /// The pieces the last head named (read or written).
    pieces: Mutex<BTreeSet<String>>,
    /// The runner's part of the status, whole, as last applied: each change
    /// is merged into it and the whole applied, held across the write so
    /// that two writes of one runner cannot cross.
    part: tokio::sync::Mutex<StatusPatch>,
    /// Where [`BatchRecord::warn`] goes, with the batch's reference.
    events: Option<(Recorder, ObjectReference)>,
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
            pieces: Mutex::default(),
            part: tokio::sync::Mutex::new(StatusPatch::runner_part(
                &batch.status.clone().unwrap_or_default(),
            )),
            events: None,
        })
    }

    /// Warnings go to `recorder`, as Events of `batch`.
    pub fn with_events(mut self, recorder: Recorder, batch: &TaskBatch) -> Self {
        self.events = Some((recorder, batch.object_ref(&())));
        self
    }

    fn configmap_name(&self) -> String {
        collected_configmap_name(&self.name, self.owner.uid.as_str())
    }

    fn configmap(&self, name: String, data: ConfigMap) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                owner_references: Some(vec![self.owner.clone()]),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..data
        }
    }

    async fn apply(&self, cm: &ConfigMap) -> Result<(), Error> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        self.configmaps
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(cm),
            )
            .await
            .map_err(Error::kube(format!(
                "cannot write ConfigMap {}/{name}",
                self.namespace
            )))?;
        Ok(())
    }

    async fn load_piece(&self, digest: &str) -> Result<Piece, Error> {
        let name = collected_piece_name(&self.name, &self.owner.uid, digest);
        let what = format!(
            "ConfigMap {}/{name} (a piece of TaskBatch {}'s collected ids)",
            self.namespace, self.name
        );
        let cm = self
            .configmaps
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!("cannot read {what}")))?
            .ok_or_else(|| Error::Other(format!("{what} is missing")))?;
        let bytes = cm
            .binary_data
            .and_then(|mut d| d.remove(PIECE_KEY))
            .ok_or_else(|| Error::Other(format!("{what} has no {PIECE_KEY}")))?;
        Ok(Piece {
            digest: digest.to_string(),
            bytes: bytes.0,
        })
    }
}

impl BatchRecord for KubeRecord {
    async fn warn(&self, reason: &str, message: String) {
        if let Some((recorder, reference)) = &self.events {
            crate::context::publish_event(recorder, reference, true, reason, message).await;
        }
    }

    async fn patch_status(&self, status: StatusPatch) -> Result<(), Error> {
        let mut part = self.part.lock().await;
        let mut next = part.clone();
        next.merge(status);
        status_patch::apply(&self.batches, &self.name, RUNNER, &next).await?;
        *part = next;
        Ok(())
    }

    async fn load_collected(&self) -> Result<Option<Encoded>, Error> {
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
        let mut data = cm.data.unwrap_or_default();
        if let Some(head) = cm.binary_data.and_then(|mut d| d.remove(HEAD_KEY)) {
            let digests: Vec<String> = data
                .get(PIECES_KEY)
                .map(|s| s.lines().map(str::to_string).collect())
                .unwrap_or_default();
            let mut pieces = Vec::with_capacity(digests.len());
            for digest in &digests {
                pieces.push(self.load_piece(digest).await?);
            }
            *self.pieces.lock().expect("pieces lock") = digests.into_iter().collect();
            return Ok(Some(Encoded {
                head: head.0,
                pieces,
            }));
        }
        // The first encoding: base64 text, no pieces.
        let Some(text) = data.remove(LEGACY_KEY) else {
            return Ok(None);
        };
        let head = BASE64.decode(text.trim()).map_err(|e| {
            Error::Other(format!(
                "ConfigMap {}/{cm_name}: the collected ids are not base64: {e}",
                self.namespace
            ))
        })?;
        Ok(Some(Encoded {
            head,
            pieces: Vec::new(),
        }))
    }

    async fn store_collected(&self, encoded: Encoded) -> Result<(), Error> {
        let stored = self.pieces.lock().expect("pieces lock").clone();
        // 1. The pieces not stored yet (a piece's name is its content).
        for piece in &encoded.pieces {
            if stored.contains(&piece.digest) {
                continue;
            }
            let cm = self.configmap(
                collected_piece_name(&self.name, &self.owner.uid, &piece.digest),
                ConfigMap {
                    binary_data: Some(BTreeMap::from([(
                        PIECE_KEY.to_string(),
                        ByteString(piece.bytes.clone()),
                    )])),
                    ..ConfigMap::default()
                },
            );
            self.apply(&cm).await?;
        }
        // 2. The head: the switch to the new set. Applying it without the
        //    first encoding's key removes that key.
        let digests: BTreeSet<String> = encoded.pieces.iter().map(|p| p.digest.clone()).collect();
        let manifest: Vec<&str> = encoded.pieces.iter().map(|p| p.digest.as_str()).collect();
        let head = self.configmap(
            self.configmap_name(),
            ConfigMap {
                data: Some(BTreeMap::from([(
                    PIECES_KEY.to_string(),
                    manifest.join("\n"),
                )])),
                binary_data: Some(BTreeMap::from([(
                    HEAD_KEY.to_string(),
                    ByteString(encoded.head),
                )])),
                ..ConfigMap::default()
            },
        );
        self.apply(&head).await?;
        *self.pieces.lock().expect("pieces lock") = digests.clone();
        // 3. The pieces no head names now. Left behind on an error: they go
        //    with the TaskBatch.
        for digest in stored.difference(&digests) {
            let name = collected_piece_name(&self.name, &self.owner.uid, digest);
            match self.configmaps.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(configmap = %name, namespace = %self.namespace,
                    error = %e, "cannot delete an old piece of collected ids; it goes with its TaskBatch"),
            }
        }
        Ok(())
    }
}

/// A batch's record in memory: the status as the runner's applied part
/// leaves it (each change merged into the part, as [`KubeRecord`] does), and
/// the collected set, held to the API server's size limits.
#[derive(Debug, Default)]
pub struct MemoryRecord {
    part: Mutex<StatusPatch>,
    collected: Mutex<Option<Encoded>>,
    writes: Mutex<u64>,
    warnings: Mutex<Vec<(String, String)>>,
}

impl MemoryRecord {
    /// The status so far.
    pub fn status(&self) -> TaskBatchStatus {
        let applied = self.part.lock().expect("record lock").to_apply_value();
        serde_json::from_value(applied).expect("the runner writes a valid status")
    }

    /// Status patches and collected-set writes so far.
    pub fn writes(&self) -> u64 {
        *self.writes.lock().expect("record lock")
    }

    /// The warnings so far: (reason, message).
    pub fn warnings(&self) -> Vec<(String, String)> {
        self.warnings.lock().expect("record lock").clone()
    }
}

impl BatchRecord for MemoryRecord {
    async fn warn(&self, reason: &str, message: String) {
        self.warnings
            .lock()
            .expect("record lock")
            .push((reason.to_string(), message));
    }

    async fn patch_status(&self, status: StatusPatch) -> Result<(), Error> {
        self.part.lock().expect("record lock").merge(status);
        *self.writes.lock().expect("record lock") += 1;
        Ok(())
    }

    async fn load_collected(&self) -> Result<Option<Encoded>, Error> {
        Ok(self.collected.lock().expect("record lock").clone())
    }

    async fn store_collected(&self, encoded: Encoded) -> Result<(), Error> {
        // What the API server would refuse (with room for names and labels).
        let largest = encoded
            .pieces
            .iter()
            .map(|p| p.bytes.len())
            .max()
            .unwrap_or(0);
        if encoded.head.len().max(largest) + 4096 > CONFIGMAP_MAX {
            return Err(Error::Other(format!(
                "a collected-ids ConfigMap of {} bytes is over the limit",
                encoded.head.len().max(largest)
            )));
        }
        *self.collected.lock().expect("record lock") = Some(encoded);
        *self.writes.lock().expect("record lock") += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collected::Collected;
    use crate::crd::taskbatch::Phase;
    use crate::status_patch::CountsPatch;

    #[tokio::test]
    async fn ten_million_ids_every_other_go_through_a_memory_record_within_its_limits() {
        let record = MemoryRecord::default();
        assert_eq!(record.load_collected().await.unwrap(), None);
        let mut collected = Collected::default();
        for id in (0..10_000_000).step_by(2) {
            collected.ids.insert(id);
        }
        collected.succeeded = 5_000_000;
        record.store_collected(collected.encode()).await.unwrap();
        let loaded = record.load_collected().await.unwrap().unwrap();
        assert_eq!(Collected::decode(&loaded).unwrap(), collected);
        // What the API server would refuse, the memory record refuses too.
        let too_big = Encoded {
            head: vec![2; CONFIGMAP_MAX],
            pieces: vec![],
        };
        assert!(record.store_collected(too_big).await.is_err());
    }

    #[test]
    fn piece_names_are_valid_and_never_shared_between_batches() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let other = "0f1e2d3c-ffff-6978-8796-a5b4c3d2e1f0";
        let digest = "00112233445566778899aabbccddeeff";
        assert_eq!(
            collected_piece_name("big", uid, digest),
            format!("big-cloudkon-collected-0f1e2d3c-{digest}")
        );
        // Names too long to prefix fall back to the whole uid: still distinct.
        let long = "b".repeat(240);
        let a = collected_piece_name(&long, uid, digest);
        let b = collected_piece_name(&long, other, digest);
        assert!(a.len() <= 253 && b.len() <= 253, "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn a_head_name_is_valid_whatever_the_batch_is_named() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(
            collected_configmap_name("big", uid),
            "big-cloudkon-collected"
        );
        let longest = "b".repeat(234);
        assert_eq!(
            collected_configmap_name(&longest, uid),
            format!("{longest}-cloudkon-collected")
        );
        // Object names have at most 253 characters, batch names too.
        let head = collected_configmap_name(&"b".repeat(253), uid);
        assert_eq!(head, format!("cloudkon-collected-{uid}"));
        let piece = collected_piece_name(&"b".repeat(253), uid, "00ff");
        assert!(piece.len() <= 253, "{piece}");
    }

    #[tokio::test]
    async fn changes_replace_add_and_remove_fields_of_the_runners_part() {
        let record = MemoryRecord::default();
        record
            .patch_status(StatusPatch {
                counts: CountsPatch {
                    enqueued: Some(5),
                    total: Some(9),
                    ..CountsPatch::default()
                },
                phase: Some(Phase::Enqueuing),
                eta: Some(Some("x".into())),
                ..StatusPatch::default()
            })
            .await
            .unwrap();
        record
            .patch_status(StatusPatch {
                counts: CountsPatch {
                    enqueued: Some(7),
                    ..CountsPatch::default()
                },
                phase: Some(Phase::Running),
                eta: Some(None),
                throughput: Some(Some(1.5)),
                ..StatusPatch::default()
            })
            .await
            .unwrap();
        // Replaced, kept, removed, added.
        let status = record.status();
        assert_eq!((status.counts.enqueued, status.counts.total), (7, 9));
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.eta, None);
        assert_eq!(status.throughput, Some(1.5));
    }
}
