//! What the operator holds of a running batch: its runner's task and the
//! channel that brings it the batch's latest spec.

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::crd::taskbatch::TaskBatchSpec;
use crate::error::Error;

/// A running batch, as the reconciler holds it.
pub struct RunnerHandle {
    pub task: JoinHandle<Result<(), Error>>,
    /// The batch's latest spec (suspend).
    pub spec: watch::Sender<TaskBatchSpec>,
}

impl RunnerHandle {
    /// Asks the runner to stop at its next step (it writes its checkpoint
    /// first: see `Runner::run`); its task ends when it has.
    pub fn stop(self) -> JoinHandle<Result<(), Error>> {
        drop(self.spec);
        self.task
    }
}
