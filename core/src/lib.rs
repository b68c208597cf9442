//! CloudKon's core: the task model, workload files, bundling, batch statistics,
//! and the queue abstraction with its backends. Nothing here knows Kubernetes.

pub mod aws;
pub mod bundle;
pub mod id_set;
pub mod ledger;
pub mod queue;
pub mod store;
pub mod summary;
pub mod task;
pub mod usage;
pub mod wire;
pub mod workload;

pub use bundle::{Bundle, BundleOptions, BundlePlan, Bundler};
pub use id_set::IdSet;
pub use summary::{Stats, Summary};
pub use task::{
    AnimotoSpec, BatchId, Outcome, Task, TaskId, TaskKind, TaskResult, TaskSpec, Timestamp,
};
pub use usage::{Prices, Usage};
