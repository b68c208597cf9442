//! CloudKon's Kubernetes operator: the `TaskBatch` and `WorkerPool` custom
//! resources ([`crd`]), and the decisions the reconcilers make, as pure
//! functions with no I/O: the objects a spec wants ([`build`]), what a batch enqueues and
//! where a restart resumes ([`enqueue`]), bundle sizes from observed cost ([`sizing`]),
//! how many workers a pool wants ([`scale`]), whether a
//! spec is valid ([`validate`]), and what the status says ([`status`]).
//!
//! The I/O around them: [`operator::run`] starts the two controllers
//! ([`pool_reconciler`], [`batch_reconciler`] with its [`batch_runner`]) under
//! [`leader`] election, with [`metrics`].
//!
//! `cloudkon-core` stays free of Kubernetes: this crate converts its resources
//! into core's task model.

pub mod allowed_names;
pub mod batch_cli;
pub mod batch_plan;
pub mod batch_reconciler;
pub mod batch_record;
pub mod batch_runner;
pub mod bench;
pub mod build;
pub mod collected;
pub mod context;
pub mod cost;
pub mod crd;
pub mod crd_check;
pub mod dead_letters;
pub mod enqueue;
pub mod error;
pub mod eta;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod pod_problems;
pub mod pool_idle;
pub mod pool_memory;
pub mod pool_plan;
pub mod pool_reconciler;
pub mod pool_sharing;
pub mod provider;
pub mod results_parts;
pub mod retry_delays;
pub mod runner_handle;
pub mod scale;
pub mod shares;
pub mod simulate;
pub mod sizing;
pub mod source_digest;
pub mod status;
pub mod status_patch;
pub mod task_cost;
pub mod triggers;
pub mod validate;
pub mod window;
pub mod worker_fleet;
pub mod workload_memory;
