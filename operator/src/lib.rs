//! CloudKon's Kubernetes operator: the `TaskBatch` and `WorkerPool` custom
//! resources ([`crd`]), and the decisions the reconcilers make, as pure
//! functions with no I/O: the objects a spec wants ([`build`]), what a batch enqueues and
//! where a restart resumes ([`enqueue`]), how many workers a pool wants ([`scale`]), whether a
//! spec is valid ([`validate`]), and what the status says ([`status`]).
//!
//! `cloudkon-core` stays free of Kubernetes: this crate converts its resources
//! into core's task model.

pub mod build;
pub mod crd;
pub mod enqueue;
pub mod provider;
pub mod scale;
pub mod status;
pub mod validate;
