//! The order a batch's tasks are sent in. Tasks that declare their length
//! (a `sleep`, a `run` with `expected_ms`) go longest first (Graham's LPT
//! rule): a long task that starts late ends late, so the last tasks to start
//! should be the shortest. Not a full sort: tasks are classed by the power
//! of two of their declared length, and a workload is streamed once per
//! class, in the given order within it. A batch of millions is never held,
//! only a count per class and a byte per task (its class, so that a pass
//! parses only its own lines), and a position in the order maps back to
//! (class, rank): a restarted runner resumes at its checkpoint in the same
//! order.
//!
//! Tasks of unknown length go first: one of them may be the longest task of
//! all, and their results size the batch's bundles.

use std::sync::Arc;

use super::TaskDef;
use crate::task::{TaskId, TaskSpec};

/// The class of a task in the order: higher goes first. A declared length
/// of `ms` milliseconds is in class `bits(ms)` (0 for 0 ms, 1 for 1 ms, 2
/// for 2–3 ms, 3 for 4–7 ms…); an unknown length in the highest.
pub fn length_class(spec: &TaskSpec) -> u8 {
    match spec.declared_length() {
        None => u8::MAX,
        Some(d) => {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            (u64::BITS - ms.leading_zeros()) as u8
        }
    }
}

/// One batch's send order: its classes, first sent first, each with its
/// number of tasks. Empty or of one class: the given order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendOrder {
    passes: Vec<(u8, u64)>,
    /// Each task's class, by id (when the ids are 0, 1, 2…): a byte a task,
    /// so that a pass parses only its own (see [`Wanted`]).
    classes: Arc<[u8]>,
}

/// The tasks one read of the workload is for: those of one class. A reader
/// may leave the others unparsed ([`super::WorkloadReader::only`]).
#[derive(Clone, Debug)]
pub struct Wanted {
    class: u8,
    classes: Arc<[u8]>,
}

impl Wanted {
    /// Whether task `id` is wanted.
    pub fn contains(&self, id: TaskId) -> bool {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.classes.get(i))
            .is_some_and(|&c| c == self.class)
    }
}

impl SendOrder {
    /// The workload's own order.
    pub fn as_given() -> Self {
        Self::default()
    }

    /// Longest first over `tasks` (read once, to count each class), and
    /// how many items they are. A workload with an error keeps the given
    /// order: its stream ends at the error, after the tasks before it.
    pub fn longest_first<E>(tasks: impl Iterator<Item = Result<TaskDef, E>>) -> (Self, u64) {
        let mut counts = [0u64; 256];
        let mut items = 0u64;
        let mut broken = false;
        let mut classes = Vec::new();
        let mut dense = true;
        for task in tasks {
            items += 1;
            match task {
                Ok(t) => {
                    let class = length_class(&t.spec);
                    counts[usize::from(class)] += 1;
                    dense &= t.id == classes.len() as u64;
                    if dense {
                        classes.push(class);
                    }
                }
                Err(_) => broken = true,
            }
        }
        let passes: Vec<(u8, u64)> = (0..=u8::MAX)
            .rev()
            .map(|c| (c, counts[usize::from(c)]))
            .filter(|&(_, n)| n > 0)
            .collect();
        if broken || passes.len() <= 1 {
            return (Self::as_given(), items);
        }
        if !dense {
            classes.clear();
        }
        let classes = classes.into();
        (Self { passes, classes }, items)
    }

    /// Whether the tasks go in the workload's own order.
    pub fn is_as_given(&self) -> bool {
        self.passes.len() <= 1
    }

    /// The ids of the first `n` tasks in this order, without reading the
    /// workload (ids are 0, 1, 2… in the given order, and a byte per task
    /// tells its class in this one); `None` when the classes were not kept.
    pub fn first_ids(&self, n: u64) -> Option<Box<dyn Iterator<Item = TaskId> + Send>> {
        if self.is_as_given() {
            return Some(Box::new(0..n));
        }
        if self.classes.is_empty() {
            return None;
        }
        let classes = self.classes.clone();
        let passes: Vec<u8> = self.passes.iter().map(|&(c, _)| c).collect();
        let ids = passes.into_iter().flat_map(move |class| {
            let classes = classes.clone();
            (0..classes.len())
                .filter(move |&i| classes[i] == class)
                .map(|i| i as TaskId)
        });
        Some(Box::new(ids.take(usize::try_from(n).unwrap_or(usize::MAX))))
    }

    /// The classes, first sent first, with their task counts.
    pub fn passes(&self) -> &[(u8, u64)] {
        &self.passes
    }

    /// The tasks in this order from position `from` on. `open(skip, wanted)`
    /// reads the workload in its own order from its `skip`-th item on, and
    /// may leave out tasks that are not `wanted` (when it is `Some`); it is
    /// called once per class still to send (only once in the given order).
    pub fn tasks_from<'a, F, I, E>(
        &self,
        mut open: F,
        from: u64,
    ) -> Box<dyn Iterator<Item = Result<TaskDef, E>> + Send + 'a>
    where
        F: FnMut(u64, Option<Wanted>) -> I + Send + 'a,
        I: Iterator<Item = Result<TaskDef, E>> + Send + 'a,
        E: 'a,
    {
        if self.is_as_given() {
            return Box::new(open(from, None));
        }
        // The class `from` falls in, and its rank there.
        let mut pass = 0;
        let mut skip = from;
        while pass < self.passes.len() && skip >= self.passes[pass].1 {
            skip -= self.passes[pass].1;
            pass += 1;
        }
        let passes = self.passes.clone();
        let classes = self.classes.clone();
        let mut reading: Option<I> = None;
        Box::new(std::iter::from_fn(move || {
            loop {
                let &(class, _) = passes.get(pass)?;
                if reading.is_none() {
                    let wanted = (!classes.is_empty()).then(|| Wanted {
                        class,
                        classes: classes.clone(),
                    });
                    reading = Some(open(0, wanted));
                }
                let item = reading.as_mut().and_then(Iterator::next);
                match item {
                    None => {
                        pass += 1;
                        skip = 0;
                        reading = None;
                    }
                    Some(Ok(t)) if length_class(&t.spec) == class => {
                        if skip == 0 {
                            return Some(Ok(t));
                        }
                        skip -= 1;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        // Counted without one, so the workload changed: stop.
                        pass = passes.len();
                        return Some(Err(e));
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Task `id`: a sleep of `ms`, else a run of unknown length.
    fn def(id: u64, ms: Option<u64>) -> TaskDef {
        TaskDef {
            id,
            timeout: None,
            spec: match ms {
                Some(ms) => TaskSpec::Sleep { ms },
                None => TaskSpec::Run {
                    program: "true".into(),
                    args: vec![],
                    expected_ms: None,
                },
            },
        }
    }

    fn workload(lengths: &[Option<u64>]) -> Vec<TaskDef> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &ms)| def(i as u64, ms))
            .collect()
    }

    fn ids(order: &SendOrder, tasks: &[TaskDef], from: u64) -> Vec<u64> {
        let owned = tasks.to_vec();
        order
            .tasks_from(
                move |skip, _| {
                    owned
                        .clone()
                        .into_iter()
                        .skip(skip as usize)
                        .map(Ok::<_, String>)
                },
                from,
            )
            .map(|t| t.unwrap().id)
            .collect()
    }

    #[test]
    fn the_first_ids_are_those_the_order_sends_first() {
        let tasks = workload(&[Some(1), None, Some(1000), Some(1), Some(30), None]);
        let (order, _) = SendOrder::longest_first(tasks.iter().cloned().map(Ok::<_, String>));
        assert!(!order.is_as_given());
        let sent = ids(&order, &tasks, 0);
        for n in 0..=tasks.len() {
            let first: Vec<u64> = order.first_ids(n as u64).unwrap().collect();
            assert_eq!(first, sent[..n], "{n}");
        }
        let given: Vec<u64> = SendOrder::as_given().first_ids(3).unwrap().collect();
        assert_eq!(given, [0, 1, 2]);
    }

    #[test]
    fn classes_are_powers_of_two_of_the_declared_length() {
        let cases = [
            (Some(0), 0),
            (Some(1), 1),
            (Some(2), 2),
            (Some(3), 2),
            (Some(4), 3),
            (Some(1000), 10),
            (Some(1023), 10),
            (Some(1024), 11),
            (None, u8::MAX),
        ];
        for (ms, class) in cases {
            assert_eq!(length_class(&def(0, ms).spec), class, "{ms:?}");
        }
        let expected = TaskSpec::Run {
            program: "render".into(),
            args: vec![],
            expected_ms: Some(1000),
        };
        assert_eq!(length_class(&expected), 10);
    }

    #[test]
    fn unknown_lengths_go_first_then_the_longest_classes_each_in_the_given_order() {
        let tasks = workload(&[
            Some(10),
            Some(5000),
            None,
            Some(12),
            Some(0),
            Some(4000),
            None,
            Some(9),
        ]);
        let (order, items) = SendOrder::longest_first(tasks.iter().cloned().map(Ok::<_, ()>));
        assert_eq!(items, 8);
        assert_eq!(
            order.passes(),
            &[(u8::MAX, 2), (13, 1), (12, 1), (4, 3), (0, 1)][..]
        );
        // 10, 12 and 9 ms share a class (8-15 ms) and keep their order.
        assert_eq!(ids(&order, &tasks, 0), vec![2, 6, 1, 5, 0, 3, 7, 4]);
    }

    #[test]
    fn a_restart_anywhere_resumes_with_the_rest_of_the_same_order() {
        let lengths: Vec<Option<u64>> = (0..200u64)
            .map(|i| (i % 7 != 3).then(|| (i * 7919) % 3000))
            .collect();
        let tasks = workload(&lengths);
        let (order, _) = SendOrder::longest_first(tasks.iter().cloned().map(Ok::<_, ()>));
        let all = ids(&order, &tasks, 0);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>(), "each task once");
        let classes: Vec<u8> = all
            .iter()
            .map(|&id| length_class(&tasks[id as usize].spec))
            .collect();
        assert!(classes.windows(2).all(|w| w[0] >= w[1]), "{classes:?}");
        for from in 0..=200 {
            assert_eq!(
                ids(&order, &tasks, from),
                all[from as usize..],
                "from {from}"
            );
        }
    }

    #[test]
    fn one_class_or_an_error_keeps_the_given_order() {
        let same = workload(&[Some(100), Some(120), Some(127)]);
        let (order, _) = SendOrder::longest_first(same.iter().cloned().map(Ok::<_, ()>));
        assert!(order.is_as_given());
        assert_eq!(ids(&order, &same, 1), vec![1, 2]);

        let items = vec![
            Ok(def(0, Some(1))),
            Err("line 2: bad"),
            Ok(def(2, Some(5000))),
        ];
        let (order, n) = SendOrder::longest_first(items.into_iter());
        assert_eq!((order, n), (SendOrder::as_given(), 3));
    }

    #[test]
    fn a_workload_file_parses_each_task_once_however_many_classes() {
        let text = "# lengths\nsleep 1\n\nsleep 100\n{\"kind\":\"run\",\"program\":\"x\",\"expected_ms\":9000}\n  # aside\nrun y\nsleep 3\n";
        let read = || super::super::WorkloadReader::new(text.as_bytes(), "w");
        let (order, items) = SendOrder::longest_first(read());
        assert_eq!(items, 5);
        let parsed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = parsed.clone();
        let open = move |skip: u64, wanted: Option<Wanted>| {
            let wanted = wanted.expect("a class per pass");
            let counter = counter.clone();
            assert_eq!(skip, 0);
            read().only(move |id| {
                let keep = wanted.contains(id);
                counter.fetch_add(u64::from(keep), std::sync::atomic::Ordering::Relaxed);
                keep
            })
        };
        let ids: Vec<u64> = order.tasks_from(open, 0).map(|t| t.unwrap().id).collect();
        // run y (unknown), then 9 s, 100 ms, 3 ms, 1 ms.
        assert_eq!(ids, vec![3, 2, 1, 4, 0]);
        assert_eq!(parsed.load(std::sync::atomic::Ordering::Relaxed), 5);
    }

    #[test]
    fn the_workload_is_read_once_per_class_left_to_send() {
        let tasks = workload(&[Some(1), Some(100), Some(10_000), Some(1)]);
        let (order, _) = SendOrder::longest_first(tasks.iter().cloned().map(Ok::<_, ()>));
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = opened.clone();
        let owned = tasks.clone();
        let rest: Vec<u64> = order
            .tasks_from(
                move |skip, _| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    owned
                        .clone()
                        .into_iter()
                        .skip(skip as usize)
                        .map(Ok::<_, ()>)
                },
                1,
            )
            .map(|t| t.unwrap().id)
            .collect();
        assert_eq!(rest, vec![1, 0, 3]);
        assert_eq!(opened.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
