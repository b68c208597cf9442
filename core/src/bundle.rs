//! Bundling: several cheap tasks travel (and are claimed) as one unit, so that a
//! `sleep 0` does not pay a queue round trip of its own, while an expensive task
//! travels alone so that idle slots can pick up its neighbours.

use std::time::Duration;

use crate::task::{Task, TaskSpec, Timestamp};

/// Tasks that travel together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// When the bundle was handed to the queue: the start of every task's queue wait.
    pub submitted: Timestamp,
    pub tasks: Vec<Task>,
    /// Where the results go in the distributed mode: the batch's response queue.
    pub reply_to: Option<String>,
    /// The batch's own settings; what is unset, the worker's flags decide.
    pub options: BundleOptions,
}

/// How workers treat a bundle's tasks, when its batch says (a TaskBatch's
/// `retry` and `dedup`); `None`: the worker's own flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BundleOptions {
    /// Executions of a failing task, the first included.
    pub max_attempts: Option<u32>,
    /// Wait before the first retry, doubled for each further one.
    pub retry_backoff: Option<Duration>,
    /// `Some(false)`: run without claiming in the ledger (at-least-once).
    pub dedup: Option<bool>,
}

/// How many tasks of each kind may share a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundlePlan {
    /// Hard cap on tasks in one bundle.
    pub max_tasks: usize,
    /// A bundle's expected run time stays under this, so that one slot does not
    /// serialise work that other slots could share.
    pub max_bundle_time: Duration,
}

impl BundlePlan {
    /// For an in-process queue: hand-off is cheap, so only truly cheap tasks bundle.
    pub const EMBEDDED: BundlePlan = BundlePlan {
        max_tasks: 1024,
        max_bundle_time: Duration::from_millis(1),
    };

    /// For SQS: every request costs money and ~10 ms, so bundles are bigger; but a
    /// bundle's tasks run one after another on one slot, so a bundle of long tasks
    /// stays short (1 s) lest one slot serialise what others could share.
    /// 4096 `sleep 0`s encode to ~40 KB, well under the 256 KiB message limit.
    pub const SQS: BundlePlan = BundlePlan {
        max_tasks: 4096,
        max_bundle_time: Duration::from_secs(1),
    };

    /// How many tasks like this one may share a bundle.
    pub fn tasks_per_bundle(&self, spec: &TaskSpec) -> usize {
        match spec.nominal_duration() {
            // Unknown run time (programs, videos): assume expensive.
            None => 1,
            Some(d) if d.is_zero() => self.max_tasks,
            Some(d) => {
                let fit = self.max_bundle_time.as_nanos() / d.as_nanos();
                usize::try_from(fit)
                    .unwrap_or(usize::MAX)
                    .clamp(1, self.max_tasks)
            }
        }
    }
}

/// Packs a stream of tasks into bundles following a plan.
pub struct Bundler {
    plan: BundlePlan,
    tasks: Vec<Task>,
    limit: usize,
}

impl Bundler {
    pub fn new(plan: BundlePlan) -> Self {
        Self {
            plan,
            tasks: Vec::new(),
            limit: plan.max_tasks,
        }
    }

    /// Adds a task; returns the previous bundle when this task does not fit in it.
    /// (A full bundle is handed out on the next push or on `finish`, so that one
    /// push never has two bundles to return.)
    pub fn push(&mut self, task: Task) -> Option<Bundle> {
        let limit = self.plan.tasks_per_bundle(&task.spec);
        let shared_limit = self.limit.min(limit);
        let closed = if !self.tasks.is_empty() && self.tasks.len() >= shared_limit {
            self.limit = limit;
            self.take()
        } else {
            self.limit = if self.tasks.is_empty() {
                limit
            } else {
                shared_limit
            };
            None
        };
        self.tasks.push(task);
        closed
    }

    /// The last, partly filled bundle.
    pub fn finish(mut self) -> Option<Bundle> {
        self.take()
    }

    fn take(&mut self) -> Option<Bundle> {
        if self.tasks.is_empty() {
            return None;
        }
        let cap = self.plan.max_tasks.min(64);
        let tasks = std::mem::replace(&mut self.tasks, Vec::with_capacity(cap));
        Some(Bundle {
            submitted: Timestamp::now(),
            tasks,
            reply_to: None,
            options: BundleOptions::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::BatchId;

    fn task(id: u64, spec: TaskSpec) -> Task {
        Task {
            batch: BatchId::new("b"),
            id,
            attempt: 1,
            timeout: None,
            spec,
        }
    }

    fn sleep(ms: u64) -> TaskSpec {
        TaskSpec::Sleep { ms }
    }

    fn run() -> TaskSpec {
        TaskSpec::Run {
            program: "true".into(),
            args: vec![],
        }
    }

    #[test]
    fn tasks_per_bundle_by_expected_duration() {
        let plan = BundlePlan {
            max_tasks: 100,
            max_bundle_time: Duration::from_millis(10),
        };
        let cases = [
            (sleep(0), 100),
            (sleep(1), 10),
            (sleep(3), 3),
            (sleep(10), 1),
            (sleep(5000), 1),
            (run(), 1),
        ];
        for (spec, want) in cases {
            assert_eq!(plan.tasks_per_bundle(&spec), want, "{spec:?}");
        }
    }

    #[test]
    fn sqs_plan_bundles_more_but_keeps_bundles_short() {
        let cases = [
            (sleep(0), 4096),
            (sleep(1), 1000),
            (sleep(100), 10),
            (sleep(400), 2),
            (sleep(1000), 1),
            (sleep(60_000), 1),
            (run(), 1),
        ];
        for (spec, want) in cases {
            assert_eq!(BundlePlan::SQS.tasks_per_bundle(&spec), want, "{spec:?}");
        }
        let specs: Vec<_> = (0..10_000).map(|_| sleep(0)).collect();
        let sizes: Vec<usize> = bundle_sizes(BundlePlan::SQS, specs)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![4096, 4096, 1808]);
    }

    fn bundle_sizes(plan: BundlePlan, specs: Vec<TaskSpec>) -> Vec<Vec<u64>> {
        let mut bundler = Bundler::new(plan);
        let mut out = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            out.extend(bundler.push(task(i as u64, spec)));
        }
        out.extend(bundler.finish());
        out.into_iter()
            .map(|b| b.tasks.iter().map(|t| t.id).collect())
            .collect()
    }

    #[test]
    fn bundler_packs_cheap_tasks_and_isolates_expensive_ones() {
        let plan = BundlePlan {
            max_tasks: 3,
            max_bundle_time: Duration::from_millis(1),
        };
        let specs = vec![
            sleep(0),
            sleep(0),
            sleep(0),
            sleep(0),
            run(),
            sleep(0),
            sleep(0),
            sleep(7),
        ];
        assert_eq!(
            bundle_sizes(plan, specs),
            vec![vec![0, 1, 2], vec![3], vec![4], vec![5, 6], vec![7]]
        );
    }

    #[test]
    fn bundler_keeps_every_task_once_in_order() {
        let specs: Vec<_> = (0..1000)
            .map(|i| if i % 7 == 0 { run() } else { sleep(0) })
            .collect();
        let ids: Vec<u64> = bundle_sizes(BundlePlan::EMBEDDED, specs).concat();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn empty_bundler_finishes_with_nothing() {
        assert!(Bundler::new(BundlePlan::EMBEDDED).finish().is_none());
    }
}
