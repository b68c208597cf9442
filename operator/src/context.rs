//! What every reconciliation shares: the clients, the event recorder, the
//! metrics, and the operator's memory of each pool and running batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudkon_core::aws::{Aws, S3Store, SqsClient};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::UnboundedSender;

use crate::crd::WorkerPool;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pool_memory::PoolMemory;
use crate::runner_handle::RunnerHandle;

/// The finalizer on both resources: their queues are deleted before they go.
pub const FINALIZER: &str = "cloudkon.io/cleanup";
/// The field manager of everything the operator applies.
pub const MANAGER: &str = "cloudkon-operator";

/// `--max-workload-bytes` by default.
pub const DEFAULT_MAX_WORKLOAD_BYTES: u64 = 32 << 20;
/// `--workload-memory-bytes` by default: three files at the largest, with
/// the results parts in flight, stay well within the chart's 256 MiB.
pub const DEFAULT_WORKLOAD_MEMORY_BYTES: u64 = 96 << 20;

/// Settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a pool's queue is looked at when nothing else wakes it.
    pub poll: Duration,
    /// Results of batches that name no `results.s3Prefix` go here, if set.
    pub default_results_prefix: Option<String>,
    /// How often a batch's collected results are written out.
    pub flush_every: Duration,
    /// How often a batch's RATE and ETA are written while no result comes
    /// (else they keep the last values for as long as it stalls).
    pub status_refresh: Duration,
    /// Largest results part (bytes); see `cloudkon-operator run --help`.
    pub results_part_bytes: usize,
    /// Largest workload file (ConfigMap or S3) a batch may name, in bytes:
    /// it is read whole and held while the batch enqueues.
    pub max_workload_bytes: u64,
    /// What all batches' workload files may hold together, in bytes; a
    /// batch whose file does not fit waits.
    pub workload_memory_bytes: u64,
    /// What WorkerPools may name: queues and fleets.
    pub allowed_names: crate::allowed_names::AllowedNames,
    /// The price table of batches' `status.cost`.
    pub prices: cloudkon_core::Prices,
    /// How long tasks may be nowhere before they are reported failed (see
    /// `pool_idle`).
    pub missing_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll: Duration::from_secs(1),
            default_results_prefix: None,
            flush_every: Duration::from_secs(1),
            status_refresh: Duration::from_secs(10),
            results_part_bytes: 8 << 20,
            max_workload_bytes: DEFAULT_MAX_WORKLOAD_BYTES,
            workload_memory_bytes: DEFAULT_WORKLOAD_MEMORY_BYTES,
            allowed_names: crate::allowed_names::AllowedNames::default(),
            prices: cloudkon_core::Prices::LIST,
            missing_after: Duration::from_secs(30 * 60),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub aws: Aws,
    pub sqs: SqsClient,
    pub s3: S3Store,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// What the workload files of live runners hold, of
    /// `Settings::workload_memory_bytes`.
    pub workload_memory: Arc<crate::workload_memory::WorkloadMemory>,
    /// Per pool (by uid): the scaler's history and the queue.
    pub pools: Mutex<HashMap<String, Arc<tokio::sync::Mutex<PoolMemory>>>>,
    /// Per batch (by uid): the task that enqueues and collects.
    pub runners: Mutex<HashMap<String, RunnerHandle>>,
    /// Per pool: its batches' weights and work (enqueue windows, scaling).
    pub shares: Arc<crate::shares::Shares>,
    /// Per pool: since when it has been idle with tasks outstanding.
    pub pool_idle: Arc<crate::pool_idle::PoolIdle>,
    /// Wakes a pool's reconciler at once (a batch just enqueued tasks).
    pub wake_pool: UnboundedSender<ObjectRef<WorkerPool>>,
    /// Per object (by uid): failed cleanups in a row, for growing retries.
    pub cleanup_retries: crate::retry_delays::RetryDelays,
    /// Failed reconciles in a row per object (by controller and uid): the
    /// next try waits 1 s, 2 s, 4 s... up to 5 minutes.
    pub reconcile_retries: crate::retry_delays::RetryDelays,
}

impl Context {
    /// What this run remembers of the pool `key` (its uid), made on first use.
    pub fn pool_memory(&self, key: &str) -> Arc<tokio::sync::Mutex<PoolMemory>> {
        self.pools
            .lock()
            .expect("pool memory lock")
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// A finalizer's cleanup of the object `key` (its uid): done once
    /// `release` succeeds; a failure is reported (`report`, with the message)
    /// and retried with growing delays.
    pub async fn finalize<R, F>(
        &self,
        key: &str,
        release: R,
        report: impl FnOnce(String) -> F,
    ) -> Result<kube::runtime::controller::Action, Error>
    where
        R: std::future::Future<Output = Result<(), Error>>,
        F: std::future::Future<Output = ()>,
    {
        match release.await {
            Ok(()) => {
                self.cleanup_retries.succeeded(key);
                Ok(kube::runtime::controller::Action::await_change())
            }
            Err(e) => {
                let retry_in = self.cleanup_retries.failed(key);
                let message = e.to_string();
                report(message.clone()).await;
                Err(Error::CleanupFailed { message, retry_in })
            }
        }
    }

    /// Publishes an Event about `obj`; a failure is logged, never fatal.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        publish_event(&self.recorder, &obj.object_ref(&()), warning, reason, note).await;
    }
}

/// Publishes an Event about the object `reference` names; a failure is
/// logged, never fatal.
pub async fn publish_event(
    recorder: &Recorder,
    reference: &ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(truncate(note, 1000)),
        action: reason.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        let object = reference.name.as_deref().unwrap_or_default();
        tracing::warn!(%object, %reason, error = %e, "cannot publish an Event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
