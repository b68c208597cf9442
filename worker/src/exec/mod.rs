//! Executors: what running a task means for each kind, shared by every mode.

pub mod animoto;
mod output;
mod run;
mod sleep;
mod timer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::{Outcome, Task, TaskSpec};

pub use animoto::{AnimotoConfig, AnimotoExecutor};
pub use output::OutputTail;

/// What one execution produced, before the pool stamps ids and times on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub artifact: Option<String>,
    /// A credential-free URL of the artifact (a presigned S3 GET).
    pub artifact_url: Option<String>,
    /// A failure that another attempt on this worker cannot change (the
    /// program is not there, or may not be run): not retried.
    pub retry_futile: bool,
}

impl ExecOutput {
    pub fn succeeded() -> Self {
        Self::with_outcome(Outcome::Succeeded)
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Self::with_outcome(Outcome::Failed {
            reason: reason.into(),
        })
    }

    pub fn timed_out() -> Self {
        Self::with_outcome(Outcome::TimedOut)
    }

    fn with_outcome(outcome: Outcome) -> Self {
        Self {
            outcome,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            retry_futile: false,
        }
    }
}

/// Per-execution limits.
#[derive(Clone, Copy, Debug)]
pub struct ExecLimits {
    /// `None`: no limit.
    pub timeout: Option<Duration>,
    /// Bytes kept from the end of each of stdout and stderr.
    pub output_bytes: usize,
}

pub type ExecFuture<'a> = Pin<Box<dyn Future<Output = ExecOutput> + Send + 'a>>;

/// A pluggable executor for kinds beyond the built-in ones (Animoto).
pub trait Executor: Send + Sync {
    /// Checks, once at start-up, that the executor can work here (a missing
    /// program is one clear error then, not a failure per task).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    fn execute<'a>(&'a self, task: &'a Task, limits: ExecLimits) -> ExecFuture<'a>;
}

/// Maps task kinds to executors. `sleep` and `run` are built in and dispatched
/// statically (the `sleep 0` path must cost nanoseconds); others plug in.
#[derive(Clone, Default)]
pub struct Registry {
    animoto: Option<Arc<dyn Executor>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_animoto(mut self, executor: Arc<dyn Executor>) -> Self {
        self.animoto = Some(executor);
        self
    }

    /// Runs start-up checks of the plugged executors.
    pub fn check(&self) -> Result<(), String> {
        self.animoto.as_ref().map_or(Ok(()), |e| e.check())
    }

    /// The result without awaiting anything, for tasks that complete at once.
    pub fn execute_now(&self, task: &Task) -> Option<ExecOutput> {
        match task.spec {
            TaskSpec::Sleep { ms: 0 } => Some(ExecOutput::succeeded()),
            _ => None,
        }
    }

    pub async fn execute(&self, task: &Task, limits: ExecLimits) -> ExecOutput {
        match &task.spec {
            TaskSpec::Sleep { ms } => {
                sleep::sleep(Duration::from_millis(*ms), limits.timeout).await
            }
            TaskSpec::Run { program, args, .. } => run::run(program, args, limits).await,
            TaskSpec::Animoto(_) => match &self.animoto {
                Some(executor) => executor.execute(task, limits).await,
                None => ExecOutput::failed("this worker has no animoto executor"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::{AnimotoSpec, BatchId};

    fn task(spec: TaskSpec) -> Task {
        Task {
            batch: BatchId::new("b"),
            id: 0,
            attempt: 1,
            timeout: None,
            spec,
        }
    }

    const LIMITS: ExecLimits = ExecLimits {
        timeout: None,
        output_bytes: 1024,
    };

    #[test]
    fn only_sleep_zero_completes_at_once() {
        let registry = Registry::new();
        assert_eq!(
            registry.execute_now(&task(TaskSpec::Sleep { ms: 0 })),
            Some(ExecOutput::succeeded())
        );
        assert_eq!(registry.execute_now(&task(TaskSpec::Sleep { ms: 1 })), None);
    }

    #[tokio::test]
    async fn animoto_without_its_executor_fails_clearly() {
        let spec = TaskSpec::Animoto(AnimotoSpec {
            urls: vec!["file:///x.png".into()],
            seconds_per_image: None,
            resolution: None,
            frame_rate: None,
            output: None,
        });
        let out = Registry::new().execute(&task(spec), LIMITS).await;
        assert_eq!(
            out.outcome,
            Outcome::Failed {
                reason: "this worker has no animoto executor".into()
            }
        );
    }

    struct Fixed;

    impl Executor for Fixed {
        fn check(&self) -> Result<(), String> {
            Err("fixed: missing tool".into())
        }

        fn execute<'a>(&'a self, _task: &'a Task, _limits: ExecLimits) -> ExecFuture<'a> {
            Box::pin(async {
                let mut out = ExecOutput::succeeded();
                out.artifact = Some("/tmp/video.mp4".into());
                out
            })
        }
    }

    #[tokio::test]
    async fn plugged_executor_runs_and_is_checked() {
        let registry = Registry::new().with_animoto(Arc::new(Fixed));
        assert_eq!(registry.check(), Err("fixed: missing tool".into()));
        let spec = TaskSpec::Animoto(AnimotoSpec {
            urls: vec!["file:///x.png".into()],
            seconds_per_image: None,
            resolution: None,
            frame_rate: None,
            output: None,
        });
        let out = registry.execute(&task(spec), LIMITS).await;
        assert_eq!(out.artifact.as_deref(), Some("/tmp/video.mp4"));
    }
}
