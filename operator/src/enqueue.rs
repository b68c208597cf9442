//! What a TaskBatch enqueues, as pure functions: its tasks in a fixed order,
//! packed into bundles the same way every time, so that an operator restarted
//! mid-enqueue resumes from its checkpoint (the tasks enqueued so far, recorded
//! in status after each send) and neither skips nor repeats a task.
//!
//! Workload files (`configMap`, `s3`) are read by the reconciler with core's
//! `WorkloadReader`, which numbers tasks the same way on every read.

use cloudkon_core::workload::TaskDef;

use crate::crd::taskbatch::{Generator, InlineTask, TaskSource};

/// The tasks of an inline or generated source, in order, numbered from 0,
/// from task number `from` on (those before are skipped without being made);
/// `None` for workload-file sources (see the module doc).
pub fn source_tasks(
    source: &TaskSource,
    from: u64,
) -> Option<Box<dyn Iterator<Item = Result<TaskDef, String>> + Send + '_>> {
    let skip = usize::try_from(from).unwrap_or(usize::MAX);
    if let Some(inline) = &source.inline {
        return Some(Box::new(
            inline
                .iter()
                .enumerate()
                .skip(skip)
                .map(|(i, task)| task_def(i as u64, task, None)),
        ));
    }
    let generator = source.generator.as_ref()?;
    Some(Box::new(parameters(generator).enumerate().skip(skip).map(
        |(i, param)| task_def(i as u64, &generator.template, Some(&param.to_string())),
    )))
}

/// How many tasks an inline or generated source holds, without making them;
/// `None` for workload-file sources.
pub fn source_len(source: &TaskSource) -> Option<u64> {
    if let Some(inline) = &source.inline {
        return Some(inline.len() as u64);
    }
    let generator = source.generator.as_ref()?;
    Some(match (&generator.count, &generator.range) {
        (Some(count), _) => u64::try_from(*count).unwrap_or(0),
        (None, Some(range)) => {
            let step = u64::try_from(range.step.unwrap_or(1).max(1)).unwrap_or(1);
            let span = u64::try_from(range.end.saturating_sub(range.start)).unwrap_or(0);
            span.div_ceil(step)
        }
        (None, None) => 0,
    })
}

/// The values `{i}` takes: `0..count`, or `start..end` by `step`.
pub fn parameters(generator: &Generator) -> Box<dyn Iterator<Item = i64> + Send + '_> {
    match (&generator.count, &generator.range) {
        (Some(count), _) => Box::new(0..(*count).max(0)),
        (None, Some(range)) => {
            let step = usize::try_from(range.step.unwrap_or(1).max(1)).unwrap_or(usize::MAX);
            Box::new((range.start..range.end).step_by(step))
        }
        (None, None) => Box::new(std::iter::empty()),
    }
}

fn task_def(id: u64, task: &InlineTask, param: Option<&str>) -> Result<TaskDef, String> {
    let (spec, timeout) = task
        .to_task_spec(param)
        .map_err(|e| format!("task {id}: {e}"))?;
    Ok(TaskDef { id, timeout, spec })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::taskbatch::{ParameterRange, TaskKind};
    use cloudkon_core::{BatchId, Bundle, BundlePlan, TaskSpec};

    fn template(kind: TaskKind) -> InlineTask {
        serde_json::from_value(serde_json::json!({
            "kind": kind.to_string(),
            "ms": 0,
            "program": "./simulate",
            "args": ["--seed", "{i}"],
        }))
        .unwrap()
    }

    fn generator(count: Option<i64>, range: Option<ParameterRange>, kind: TaskKind) -> TaskSource {
        TaskSource {
            generator: Some(Generator {
                template: template(kind),
                count,
                range,
            }),
            ..TaskSource::default()
        }
    }

    fn ids(bundles: &[Bundle]) -> Vec<u64> {
        bundles
            .iter()
            .flat_map(|b| b.tasks.iter().map(|t| t.id))
            .collect()
    }

    #[test]
    fn parameters_of_counts_and_ranges() {
        // (count, range as (start, end, step), the values `{i}` takes)
        type Case = (Option<i64>, Option<(i64, i64, Option<i64>)>, Vec<i64>);
        let cases: [Case; 4] = [
            (Some(3), None, vec![0, 1, 2]),
            (None, Some((10, 13, None)), vec![10, 11, 12]),
            (None, Some((-4, 5, Some(4))), vec![-4, 0, 4]),
            (None, Some((5, 5, None)), vec![]),
        ];
        for (count, range, want) in cases {
            let range = range.map(|(start, end, step)| ParameterRange { start, end, step });
            let g = Generator {
                template: template(TaskKind::Sleep),
                count,
                range,
            };
            assert_eq!(parameters(&g).collect::<Vec<_>>(), want, "{count:?}");
        }
    }

    #[test]
    fn a_generator_fills_in_its_parameter_in_order() {
        let source = generator(
            None,
            Some(ParameterRange {
                start: 100,
                end: 103,
                step: None,
            }),
            TaskKind::Run,
        );
        let defs: Vec<TaskDef> = source_tasks(&source, 0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(defs.iter().map(|d| d.id).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            defs[2].spec,
            TaskSpec::Run {
                program: "./simulate".into(),
                args: vec!["--seed".into(), "102".into()],
                expected_ms: None
            }
        );
    }

    #[test]
    fn workload_file_sources_are_left_to_the_reader() {
        assert!(source_tasks(&TaskSource::default(), 0).is_none());
    }

    #[test]
    fn a_restart_at_any_checkpoint_neither_skips_nor_repeats() {
        let fixed = BundlePlan {
            max_tasks: 7,
            max_bundle_time: std::time::Duration::from_millis(1),
            min_bundle_time: std::time::Duration::ZERO,
            max_unknown_tasks: None,
            learned: None,
            spread: None,
        };
        // Unknown-length tasks spread over 4 slots: shrinking bundles.
        let spread = BundlePlan::SQS.spread(50, 4);
        for (plan, kind) in [(fixed, TaskKind::Sleep), (spread, TaskKind::Run)] {
            let source = generator(Some(50), None, kind);
            let all: Vec<Bundle> = cloudkon_core::bundle::bundles(
                source_tasks(&source, 0).unwrap(),
                BatchId::new("b"),
                plan,
                0,
                None,
            )
            .map(Result::unwrap)
            .collect();
            assert_eq!(ids(&all), (0..50).collect::<Vec<_>>());
            assert!(all.len() > 5, "{plan:?}: {} bundles", all.len());
            // Checkpoints are recorded after whole bundles were sent; a
            // restart cuts from there.
            let mut sent = 0;
            for (n, bundle) in all.iter().enumerate() {
                sent += bundle.tasks.len() as u64;
                let resumed: Vec<Bundle> = cloudkon_core::bundle::bundles(
                    source_tasks(&source, sent).unwrap(),
                    BatchId::new("b"),
                    plan,
                    sent,
                    None,
                )
                .map(Result::unwrap)
                .collect();
                assert_eq!(
                    ids(&resumed),
                    (sent..50).collect::<Vec<_>>(),
                    "after bundle {n}"
                );
                // The same bundles (claim keys) as the first run would have sent.
                let firsts: Vec<u64> = resumed.iter().map(|b| b.tasks[0].id).collect();
                let expected: Vec<u64> = all[n + 1..].iter().map(|b| b.tasks[0].id).collect();
                assert_eq!(firsts, expected);
            }
        }
    }

    #[test]
    fn a_restart_after_learned_sizes_cuts_what_was_sent() {
        use crate::sizing;
        use std::time::Duration;
        let (total, slots) = (3_000, 4);
        let source = generator(Some(total as i64), None, TaskKind::Run);
        let cut = |learned, start| -> Vec<Bundle> {
            let tasks = source_tasks(&source, start).unwrap();
            let plan = sizing::plan(total, slots, None, learned);
            cloudkon_core::bundle::bundles(tasks, BatchId::new("b"), plan, start, None)
                .map(Result::unwrap)
                .collect()
        };
        // A runner that learns twice: (bundles sent, then the next length).
        let steps = [
            (3, Some(Duration::from_millis(28_125))),
            (2, Some(Duration::from_millis(7_500))),
            (usize::MAX, None),
        ];
        let (mut sent, mut learned, mut start) = (Vec::new(), None, 0);
        let mut segments = vec![(0, None)];
        for (bundles, next) in steps {
            let mut segment = cut(learned, start);
            segment.truncate(bundles);
            start += segment.iter().map(|b| b.tasks.len() as u64).sum::<u64>();
            sent.extend(segment);
            learned = next;
            // Written ahead, with the checkpoint at `start`.
            segments.push((start, next));
        }
        assert_eq!(ids(&sent), (0..total).collect::<Vec<_>>());
        let sizes: Vec<usize> = sent.iter().map(|b| b.tasks.len()).collect();
        assert!(sizes[3] > sizes[2] && sizes[5] > sizes[4], "{sizes:?}");
        // A restart at each checkpoint, with the sizing the status may hold
        // then (at a segment's start: the one before or this one), cuts what
        // was sent under that sizing, up to where the next one began.
        let each = |b: &[Bundle]| {
            b.iter()
                .map(|b| ids(std::slice::from_ref(b)))
                .collect::<Vec<_>>()
        };
        let mut checkpoint = 0;
        let mut checked = 0;
        for bundle in &sent {
            checkpoint += bundle.tasks.len() as u64;
            for (k, &(from, learned)) in segments.iter().enumerate() {
                let until = segments.get(k + 1).map_or(total, |s| s.0);
                if from > checkpoint || until < checkpoint {
                    continue;
                }
                let expected: Vec<Bundle> = sent
                    .iter()
                    .filter(|b| (checkpoint..until).contains(&b.tasks[0].id))
                    .cloned()
                    .collect();
                let mut resumed = cut(learned, checkpoint);
                resumed.truncate(expected.len());
                assert_eq!(each(&resumed), each(&expected), "at {checkpoint}");
                checked += 1;
            }
        }
        assert!(checked > sent.len(), "{checked} restarts checked");
    }

    #[test]
    fn source_tasks_skip_to_a_task_without_making_those_before() {
        let source = generator(Some(i64::MAX), None, TaskKind::Sleep);
        let first = source_tasks(&source, u64::MAX / 4).unwrap().next();
        assert_eq!(first.unwrap().unwrap().id, u64::MAX / 4);
    }

    #[test]
    fn source_len_counts_what_source_tasks_makes() {
        let sources = [
            generator(Some(7), None, TaskKind::Sleep),
            generator(Some(0), None, TaskKind::Sleep),
            generator(
                None,
                Some(ParameterRange {
                    start: -4,
                    end: 5,
                    step: Some(4),
                }),
                TaskKind::Sleep,
            ),
            generator(
                None,
                Some(ParameterRange {
                    start: 10,
                    end: 13,
                    step: None,
                }),
                TaskKind::Sleep,
            ),
            TaskSource {
                inline: Some(vec![template(TaskKind::Sleep); 3]),
                ..TaskSource::default()
            },
        ];
        for source in &sources {
            let made = source_tasks(source, 0).unwrap().count() as u64;
            assert_eq!(source_len(source), Some(made), "{source:?}");
        }
        assert_eq!(source_len(&TaskSource::default()), None);
    }

    #[test]
    fn a_bad_task_stops_the_stream_with_its_number() {
        let mut bad = template(TaskKind::Run);
        bad.program = Some(String::new());
        let source = TaskSource {
            inline: Some(vec![template(TaskKind::Sleep), bad]),
            ..TaskSource::default()
        };
        let out: Vec<_> = cloudkon_core::bundle::bundles(
            source_tasks(&source, 0).unwrap(),
            BatchId::new("b"),
            BundlePlan::SQS,
            0,
            None,
        )
        .collect();
        assert_eq!(out.len(), 1);
        let err = out[0].as_ref().unwrap_err();
        assert!(err.starts_with("task 1: "), "{err}");
    }
}
