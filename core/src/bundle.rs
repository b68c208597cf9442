//! Bundling: tasks travel (and are claimed) in bundles, so that a task does not
//! pay a queue round trip, a claim and a completion of its own. A worker spreads
//! a bundle's tasks over its free slots, so tasks of any length bundle; what
//! bounds a bundle is the batch's tail: with `spread`, bundle sizes follow
//! factoring (Hummel, Schonberg & Flynn): about the remaining tasks over twice
//! the pool's slots, so bundles shrink as the batch nears its end and the last
//! ones leave no slot idle for long.

use std::time::Duration;

use crate::task::{BatchId, Task, TaskSpec, Timestamp};
use crate::workload::TaskDef;

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
    /// A bundle's declared run time (summed) stays under this.
    pub max_bundle_time: Duration,
    /// With `spread`, the tail's bundles still hold this much declared work
    /// (cheap tasks cannot unbalance the tail: a bundle of `sleep 0`s is not
    /// cut to one task).
    pub min_bundle_time: Duration,
    /// Tasks of unknown length per bundle at most (`None`: they travel alone),
    /// until a length is learned.
    pub max_unknown_tasks: Option<usize>,
    /// What a task of unknown length is taken to cost, learned from the
    /// batch's results: such tasks are then cut as if they declared it.
    pub learned: Option<Duration>,
    /// Spread a batch of `total` tasks over `slots` slots: bundles of about
    /// the remaining tasks over twice the slots (see the module doc).
    pub spread: Option<Spread>,
}

/// A batch's size and the slots it is planned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spread {
    pub total: u64,
    pub slots: u64,
}

impl BundlePlan {
    /// For an in-process queue: hand-off is cheap, so only truly cheap tasks bundle.
    pub const EMBEDDED: BundlePlan = BundlePlan {
        max_tasks: 1024,
        max_bundle_time: Duration::from_millis(1),
        min_bundle_time: Duration::ZERO,
        max_unknown_tasks: None,
        learned: None,
        spread: None,
    };

    /// For SQS: every request costs money and ~10 ms, so bundles are big: up to
    /// a minute of declared work, or 256 tasks of unknown length (a `run`), cut
    /// smaller towards the batch's end by `spread`. 4096 `sleep 0`s encode to
    /// ~40 KB, well under the 256 KiB message limit (larger bundles are split
    /// to fit by the encoder).
    pub const SQS: BundlePlan = BundlePlan {
        max_tasks: 4096,
        max_bundle_time: Duration::from_secs(60),
        min_bundle_time: Duration::from_secs(1),
        max_unknown_tasks: Some(256),
        learned: None,
        spread: None,
    };

    /// Tasks of unknown length in a bundle before their length is learned,
    /// when it will be (a TaskBatch): small, so that a batch of long tasks
    /// does not start with a worker holding hundreds of them.
    pub const FIRST_UNKNOWN_TASKS: usize = 16;

    /// This plan, spread over a pool (see [`Spread`]).
    pub fn spread(self, total: u64, slots: u64) -> Self {
        Self {
            spread: Some(Spread {
                total,
                slots: slots.max(1),
            }),
            ..self
        }
    }

    /// This plan, cutting tasks of unknown length as if they took `task`
    /// (`None`: in bundles of `max_unknown_tasks`).
    pub fn learned(self, task: Option<Duration>) -> Self {
        Self {
            learned: task,
            ..self
        }
    }

    /// What a task like this one is taken to cost: declared, else learned.
    fn cost(&self, spec: &TaskSpec) -> Option<Duration> {
        spec.declared_length().or(self.learned)
    }

    /// How many tasks like this one may share a bundle, whatever the tail.
    pub fn tasks_per_bundle(&self, spec: &TaskSpec) -> usize {
        match self.cost(spec) {
            None => self.max_unknown_tasks.unwrap_or(1).clamp(1, self.max_tasks),
            Some(d) if d.is_zero() => self.max_tasks,
            Some(d) => {
                let fit = self.max_bundle_time.as_nanos() / d.as_nanos();
                usize::try_from(fit)
                    .unwrap_or(usize::MAX)
                    .clamp(1, self.max_tasks)
            }
        }
    }

    /// How many tasks like this one may share the bundle that starts with
    /// task number `index` (counted from 0 in the batch's order).
    pub fn tasks_per_bundle_at(&self, spec: &TaskSpec, index: u64) -> usize {
        let limit = self.tasks_per_bundle(spec);
        let Some(s) = self.spread else {
            return limit;
        };
        let floor = match self.cost(spec) {
            None => 1,
            Some(d) if d.is_zero() => limit,
            Some(d) => usize::try_from(self.min_bundle_time.as_nanos() / d.as_nanos())
                .unwrap_or(usize::MAX)
                .max(1),
        };
        limit.min(spread_size(s.total.saturating_sub(index), s.slots).max(floor))
    }
}

/// Factoring's chunk: the remaining tasks over twice the slots, at least one.
pub fn spread_size(remaining: u64, slots: u64) -> usize {
    let size = remaining.div_ceil(2 * slots.max(1)).max(1);
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// The bundles of a workload's `tasks` (from task number `start` on, a
/// bundle boundary) cut with `plan`: the first attempts of batch `batch`'s
/// tasks, with `default_timeout` where a task sets none. What the embedded
/// engine, `cloudkon submit` and the operator's runner all do. The first
/// error ends the stream; the partial bundle before it is not handed out.
pub fn bundles<I, E>(
    tasks: I,
    batch: BatchId,
    plan: BundlePlan,
    start: u64,
    default_timeout: Option<Duration>,
) -> impl Iterator<Item = Result<Bundle, E>>
where
    I: Iterator<Item = Result<TaskDef, E>>,
{
    let mut bundler = Some(Bundler::starting_at(plan, start));
    let mut tasks = tasks;
    std::iter::from_fn(move || {
        loop {
            let b = bundler.as_mut()?;
            let next = match tasks.next() {
                Some(Ok(def)) => b.push(def.into_task(&batch, default_timeout)),
                Some(Err(e)) => {
                    bundler = None;
                    return Some(Err(e));
                }
                None => bundler.take()?.finish(),
            };
            if let Some(bundle) = next {
                return Some(Ok(bundle));
            }
        }
    })
}

/// Packs a stream of tasks into bundles following a plan.
pub struct Bundler {
    plan: BundlePlan,
    tasks: Vec<Task>,
    limit: usize,
    /// Tasks pushed so far: where the batch is, for `spread`.
    pushed: u64,
}

impl Bundler {
    pub fn new(plan: BundlePlan) -> Self {
        Self::starting_at(plan, 0)
    }

    /// A bundler whose first task is the batch's task number `index`: the cut
    /// is the one a bundler given every task from 0 would make from a bundle
    /// that starts at `index` on.
    pub fn starting_at(plan: BundlePlan, index: u64) -> Self {
        Self {
            plan,
            tasks: Vec::new(),
            limit: plan.max_tasks,
            pushed: index,
        }
    }

    /// Adds a task; returns the previous bundle when this task does not fit in it.
    /// (A full bundle is handed out on the next push or on `finish`, so that one
    /// push never has two bundles to return.)
    pub fn push(&mut self, task: Task) -> Option<Bundle> {
        // Sized by where its bundle starts: the same cut on every run, so that
        // a restarted producer sends the bundles (and claim keys) it sent before.
        let index = self.pushed;
        self.pushed += 1;
        let start = index - self.tasks.len() as u64;
        let limit = self.plan.tasks_per_bundle_at(&task.spec, start);
        let shared_limit = self.limit.min(limit);
        let closed = if !self.tasks.is_empty() && self.tasks.len() >= shared_limit {
            // This task opens the next bundle.
            self.limit = self.plan.tasks_per_bundle_at(&task.spec, index);
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
            expected_ms: None,
        }
    }

    #[test]
    fn tasks_per_bundle_by_expected_duration() {
        let plan = BundlePlan {
            max_tasks: 100,
            max_bundle_time: Duration::from_millis(10),
            min_bundle_time: Duration::ZERO,
            max_unknown_tasks: None,
            learned: None,
            spread: None,
        };
        let cases = [
            (sleep(0), 100),
            (sleep(1), 10),
            (sleep(3), 3),
            (sleep(10), 1),
            (sleep(5000), 1),
            (run(), 1),
            // A run that says how long it takes bundles as a sleep of it.
            (
                TaskSpec::Run {
                    program: "true".into(),
                    args: vec![],
                    expected_ms: Some(3),
                },
                3,
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(plan.tasks_per_bundle(&spec), want, "{spec:?}");
        }
    }

    #[test]
    fn sqs_plan_bundles_every_kind_up_to_a_minute_of_declared_work() {
        let cases = [
            (sleep(0), 4096),
            (sleep(1), 4096),
            (sleep(100), 600),
            (sleep(1000), 60),
            (sleep(60_000), 1),
            (sleep(600_000), 1),
            (run(), 256),
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
            min_bundle_time: Duration::ZERO,
            max_unknown_tasks: None,
            learned: None,
            spread: None,
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
    fn spread_sizes_follow_factoring_and_shrink_to_one_at_the_tail() {
        // (remaining, slots) -> size
        let cases = [
            (10_000, 8, 625),
            (1_000_000, 8, 62_500),
            (16, 8, 1),
            (17, 8, 2),
            (1, 8, 1),
            (0, 8, 1),
            (100, 0, 50),
        ];
        for (remaining, slots, want) in cases {
            assert_eq!(
                spread_size(remaining, slots),
                want,
                "{remaining} over {slots}"
            );
        }
    }

    #[test]
    fn a_spread_batch_of_unknown_tasks_bundles_big_first_and_single_at_the_end() {
        let plan = BundlePlan::SQS.spread(2_000, 8);
        let specs: Vec<_> = (0..2_000).map(|_| run()).collect();
        let bundles = bundle_sizes(plan, specs);
        let sizes: Vec<usize> = bundles.iter().map(Vec::len).collect();
        // Capped at 256 unknown tasks, then factoring's shrinking sizes.
        assert_eq!(sizes[0], 125, "{sizes:?}");
        assert!(
            sizes.windows(2).all(|w| w[0] >= w[1]),
            "never grows: {sizes:?}"
        );
        assert_eq!(
            &sizes[sizes.len() - 16..],
            &[1; 16],
            "the tail is single tasks"
        );
        // The tail's bound: no bundle holds more than the remaining over 2 × slots.
        let mut remaining = 2_000;
        for size in &sizes {
            assert!(*size <= spread_size(remaining, 8));
            remaining -= *size as u64;
        }
        assert_eq!(bundles.concat(), (0..2_000).collect::<Vec<_>>());
        // Far fewer messages than one per task.
        assert!(sizes.len() < 150, "{} bundles", sizes.len());
        // Deterministic: the same cut every time.
        let again = bundle_sizes(plan, (0..2_000).map(|_| run()).collect());
        assert_eq!(again, bundles);
    }

    #[test]
    fn the_tail_keeps_a_second_of_declared_work_per_bundle() {
        // (spec, remaining) -> tasks per bundle, spread over 8 slots
        let plan = BundlePlan::SQS.spread(100_000, 8);
        let at = |remaining: u64| 100_000 - remaining;
        let cases = [
            (sleep(0), 10, 4096),
            (sleep(0), 100_000, 4096),
            (sleep(10), 50, 100),
            (sleep(10), 100_000, 4096),
            (sleep(2000), 50, 4),
            (sleep(2000), 10, 1),
            (run(), 10, 1),
        ];
        for (spec, remaining, want) in cases {
            assert_eq!(
                plan.tasks_per_bundle_at(&spec, at(remaining)),
                want,
                "{spec:?} with {remaining} left"
            );
        }
    }

    #[test]
    fn empty_bundler_finishes_with_nothing() {
        assert!(Bundler::new(BundlePlan::EMBEDDED).finish().is_none());
    }

    #[test]
    fn a_workloads_bundles_take_the_default_timeout_and_stop_at_an_error() {
        let def = |id: u64, timeout: Option<u64>| -> Result<TaskDef, String> {
            Ok(TaskDef {
                id,
                timeout: timeout.map(Duration::from_millis),
                spec: sleep(0),
            })
        };
        let plan = BundlePlan {
            max_tasks: 2,
            ..BundlePlan::EMBEDDED
        };
        let default = Some(Duration::from_secs(9));
        let tasks = vec![def(0, None), def(1, Some(5)), def(2, None)];
        let out: Vec<Bundle> = bundles(tasks.into_iter(), BatchId::new("b"), plan, 0, default)
            .collect::<Result<_, _>>()
            .unwrap();
        let ids: Vec<Vec<u64>> = out
            .iter()
            .map(|b| b.tasks.iter().map(|t| t.id).collect())
            .collect();
        assert_eq!(ids, [vec![0, 1], vec![2]]);
        let timeouts: Vec<_> = out
            .iter()
            .flat_map(|b| &b.tasks)
            .map(|t| t.timeout)
            .collect();
        assert_eq!(timeouts, [default, Some(Duration::from_millis(5)), default]);
        assert!(
            out.iter()
                .flat_map(|b| &b.tasks)
                .all(|t| t.attempt == 1 && t.batch.as_str() == "b")
        );
        // An error ends the stream: the bundle it interrupted is not handed out.
        let broken = vec![
            def(0, None),
            def(1, None),
            def(2, None),
            Err("line 4: bad".to_string()),
            def(4, None),
        ];
        let out: Vec<_> = bundles(broken.into_iter(), BatchId::new("b"), plan, 0, None).collect();
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap().tasks.len(), 2);
        assert_eq!(out[1].as_ref().unwrap_err(), "line 4: bad");
    }
}
