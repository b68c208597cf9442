//! What a task counts for: in a pool's metered window and in its fair share,
//! before results tell its length and after. Shared by the window, the
//! shares and bundle sizing, which otherwise import each other.

use std::time::Duration;

/// What a task of unknown length is taken to cost until results tell.
pub const UNKNOWN_TASK: Duration = Duration::from_secs(1);
/// The least a task is taken to cost: `sleep 0` still takes a slot a moment.
pub const MIN_TASK_COST: Duration = Duration::from_millis(1);

/// What a task is taken to cost in the window: its length (observed, else
/// declared), else [`UNKNOWN_TASK`]; at least [`MIN_TASK_COST`].
pub fn task_cost(estimate: Option<Duration>) -> Duration {
    estimate.unwrap_or(UNKNOWN_TASK).max(MIN_TASK_COST)
}

/// What one of a batch's tasks counts for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskCost {
    /// In the pool's window: the length its bundles are metered at.
    pub window: Duration,
    /// In its fair share: the length its tasks are expected to take. Not the
    /// metered one, which stays long while bundles are cut for longer tasks
    /// than the results show and would charge the batch for work not done.
    pub share: Duration,
}

impl TaskCost {
    pub fn same(length: Duration) -> Self {
        Self {
            window: length,
            share: length,
        }
    }
}
