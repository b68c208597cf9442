//! A TaskBatch's runner in simulated time: the enqueue half (tasks in core's
//! `SendOrder`, longest first when they declare lengths; bundles cut by
//! core's `Bundler` with `sizing::plan`, re-cut by `sizing::next_cost`,
//! metered by `window::meter` and sent when `ShareGuard::take` grants the
//! turn, in groups of the runner's `SEND_GROUP`) and the collect half
//! (results received ten messages at a time, each task counted once, its
//! length observed by the batch's `Estimate`). Restarts are not simulated,
//! so neither is the enqueue horizon.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use cloudkon_core::workload::{SendOrder, TaskDef};
use cloudkon_core::{BatchId, Bundle, Bundler, TaskSpec};
use cloudkon_worker::remote::declared_length;

use super::config::BatchConfig;
use super::dist::{Durations, task_hash};
use super::engine::{Ev, SECOND, Sim, us};
use super::queue::T;
use crate::batch_runner::{RECEIVE_RESULTS, SEND_GROUP, collect_pause, flush_due, result_receives};
use crate::crd::taskbatch::TaskOrder;
use crate::shares::ShareGuard;
use crate::sizing::{self, SizingInput};
use crate::window::{self, Estimate, MeterInput};

/// The collector's long poll (its round's first receive).
const RESULTS_WAIT: T = crate::batch_runner::RESULTS_WAIT.as_micros() as T;
/// The runner's meter also wakes every `shares::TURN_RETRY` (in its select).
const METER_TICK: T = crate::shares::TURN_RETRY.as_micros() as T;

/// One task's result.
#[derive(Clone, Copy, Debug)]
pub struct ResultItem {
    pub id: u64,
    /// How long it ran (its last attempt), µs.
    pub took: T,
    pub ok: bool,
}

pub struct BatchSim {
    pub name: String,
    pub weight: u64,
    pub total: u64,
    pub durations: Durations,
    pub failure_rate: f64,
    /// What each task declares, when the batch declares lengths (`TaskSource`).
    declared_ms: Option<Arc<[u32]>>,
    hash_seed: u64,
    index: usize,
    id: BatchId,
    pub share: Option<ShareGuard>,
    planned_slots: u64,
    pool_workers: u64,
    pub enqueued: u64,
    pub finished: u64,
    pub failed: u64,
    pub duplicates: u64,
    pub estimate: Estimate,
    pub learned: Option<Duration>,
    /// Its collector goes on without pausing (`sizing::collector_cue`).
    growing: bool,
    observed_at_change: u64,
    pub resizes: u64,
    bundler: Option<Bundler>,
    /// The batch's send order (the runner's `order_tasks`).
    order: SendOrder,
    /// The tasks in that order from the bundler's next on.
    source: Option<Box<dyn Iterator<Item = Result<TaskDef, Infallible>> + Send>>,
    /// Out of the given order: the task at each position pulled so far.
    by_position: Vec<u64>,
    peeked: Option<Bundle>,
    pub bundles: u64,
    pub all_sent: bool,
    pub waiting: bool,
    wake_at: Option<T>,
    wake_token: u64,
    collected: Vec<u64>,
    /// The tasks started at least once (a bit each).
    started: Vec<u64>,
    inbox: VecDeque<Vec<ResultItem>>,
    polling: bool,
    poll_seq: u64,
    /// Results receives made at once (`result_receives`).
    receives: usize,
    /// Result receipts not deleted yet (the collector's flush deletes them).
    receipts: usize,
    last_flush: T,
    woke_pool: bool,
    pub arrived: Option<T>,
    pub sent_all_at: Option<T>,
    pub done_at: Option<T>,
    /// Seconds of work of the tasks collected, and the longest.
    pub done_work: f64,
    pub longest: f64,
}

impl BatchSim {
    pub fn new(index: usize, cfg: &BatchConfig, pool_slots: u64, seed: u64) -> Self {
        let mut batch = Self {
            name: cfg.name.clone(),
            weight: cfg.weight,
            total: cfg.tasks,
            durations: cfg.durations,
            failure_rate: cfg.failure_rate,
            declared_ms: cfg.declared.then(|| {
                (0..cfg.tasks)
                    .map(|id| declared_ms(cfg.durations, task_hash(seed, index, id)))
                    .collect()
            }),
            hash_seed: seed,
            index,
            id: BatchId::new(cfg.name.as_str()),
            share: None,
            planned_slots: pool_slots.max(1),
            pool_workers: 0,
            enqueued: 0,
            finished: 0,
            failed: 0,
            duplicates: 0,
            estimate: Estimate::default(),
            learned: None,
            growing: false,
            observed_at_change: 0,
            resizes: 0,
            bundler: None,
            order: SendOrder::as_given(),
            source: None,
            by_position: Vec::new(),
            peeked: None,
            bundles: 0,
            all_sent: false,
            waiting: false,
            wake_at: None,
            wake_token: 0,
            collected: vec![0; cfg.tasks.div_ceil(64) as usize],
            started: vec![0; cfg.tasks.div_ceil(64) as usize],
            inbox: VecDeque::new(),
            polling: false,
            poll_seq: 0,
            receives: 1,
            receipts: 0,
            last_flush: 0,
            woke_pool: false,
            arrived: None,
            sent_all_at: None,
            done_at: None,
            done_work: 0.0,
            longest: 0.0,
        };
        batch.order_tasks(cfg.order);
        batch
    }

    /// Task `id`'s length in µs, and whether its execution `attempt` fails.
    pub fn task(&self, id: u64, attempt: u32) -> (T, bool) {
        let h = task_hash(self.hash_seed, self.index, id);
        let took = us(self.durations.sample(h));
        let fails = self.failure_rate > 0.0
            && super::dist::unit(super::dist::mix(h ^ u64::from(attempt))) < self.failure_rate;
        (took, fails)
    }

    fn source(&self) -> TaskSource {
        TaskSource {
            declared_ms: self.declared_ms.clone(),
        }
    }

    /// Orders the batch's tasks as the runner's `order_tasks` does (tasks of
    /// unknown length are all of one class: as given, without a pass).
    fn order_tasks(&mut self, order: TaskOrder) {
        let source = self.source();
        self.order = match order {
            TaskOrder::LongestFirst if self.declared_ms.is_some() => {
                SendOrder::longest_first(
                    (0..self.total).map(|id| Ok::<_, Infallible>(source.def(id))),
                )
                .0
            }
            _ => SendOrder::as_given(),
        };
    }

    /// The task sent at `position` of the batch's order.
    pub fn id_at(&self, position: u64) -> u64 {
        if self.order.is_as_given() {
            position
        } else {
            self.by_position[position as usize]
        }
    }

    /// The tasks in the batch's send order from `position` on (the
    /// runner's `tasks_from`).
    fn tasks_from(
        &self,
        position: u64,
    ) -> Box<dyn Iterator<Item = Result<TaskDef, Infallible>> + Send> {
        let source = self.source();
        let total = self.total;
        let open = move |skip: u64, _| {
            let source = source.clone();
            (skip..total).map(move |id| Ok(source.def(id)))
        };
        self.order.tasks_from(open, position)
    }

    /// Every task's id in the batch's send order.
    pub fn ids_in_order(&self) -> impl Iterator<Item = u64> + use<> {
        self.tasks_from(0).map(|t| match t {
            Ok(t) => t.id,
        })
    }

    /// The length the tasks of a bundle declare, as a worker reads it off
    /// the bundle (`remote::declared_length`; its typical task's length from
    /// then on).
    pub fn declared(&self, first: u64, len: u32) -> Option<Duration> {
        self.declared_ms.as_ref()?;
        let source = self.source();
        let specs: Vec<TaskSpec> = (first..first + u64::from(len))
            .map(|p| source.def(self.id_at(p)).spec)
            .collect();
        declared_length(specs.iter())
    }

    /// Enqueued and not finished.
    pub fn running(&self) -> u64 {
        self.enqueued.saturating_sub(self.finished)
    }

    /// Cuts bundles from position `from` on with the current sizing, as the
    /// runner's `bundle::bundles(tasks_from(from), .., from, ..)`.
    fn recut(&mut self, from: u64) {
        let plan = sizing::plan(
            self.total,
            self.planned_slots,
            Some(self.pool_workers),
            self.learned,
        );
        self.bundler = Some(Bundler::starting_at(plan, from));
        self.source = Some(self.tasks_from(from));
        if !self.order.is_as_given() {
            self.by_position.truncate(from as usize);
        }
        self.peeked = None;
    }

    /// The next bundle, cut when first looked at.
    fn peek(&mut self) -> Option<&Bundle> {
        while self.peeked.is_none() {
            let Some(Ok(def)) = self.source.as_mut()?.next() else {
                self.peeked = self.bundler.take().and_then(Bundler::finish);
                break;
            };
            if !self.order.is_as_given() {
                self.by_position.push(def.id);
            }
            let bundler = self.bundler.as_mut()?;
            self.peeked = bundler.push(def.into_task(&self.id, None));
        }
        self.peeked.as_ref()
    }

    /// Schedules a wake at `at` unless one as early is pending: the token of
    /// the new wake.
    pub fn wake(&mut self, at: T) -> Option<u64> {
        if self.wake_at.is_some_and(|w| w <= at) || self.done_at.is_some() {
            return None;
        }
        self.wake_token += 1;
        self.wake_at = Some(at);
        Some(self.wake_token)
    }

    /// Whether a wake with this token is the current one.
    pub fn take_wake(&mut self, token: u64) -> bool {
        if token != self.wake_token {
            return false;
        }
        self.wake_at = None;
        true
    }

    /// Counts a task's result once; whether it was new.
    fn collect(&mut self, id: u64) -> bool {
        first_mark(&mut self.collected, id)
    }

    /// Task `id` starts: whether for the first time.
    pub fn first_start(&mut self, id: u64) -> bool {
        first_mark(&mut self.started, id)
    }
}

/// Sets bit `id`; whether it was clear.
fn first_mark(bits: &mut [u64], id: u64) -> bool {
    let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
    let new = bits[word] & bit == 0;
    bits[word] |= bit;
    new
}

/// What a task of hash `h` declares: its length in whole ms.
fn declared_ms(durations: Durations, h: u64) -> u32 {
    (durations.sample(h) * 1000.0).round() as u32
}

/// What makes a batch's tasks, cloned into its source's iterators. The
/// lengths are drawn once: the send order's passes over the batch and the
/// workers' reading of each bundle's declared lengths drew each task's
/// again, and 10 M declared tasks took 64 s to simulate (17 s undeclared).
#[derive(Clone)]
struct TaskSource {
    /// What each task declares when the batch declares lengths.
    declared_ms: Option<Arc<[u32]>>,
}

impl TaskSource {
    /// Task `id` as its workload gives it: a `sleep` of its own length when
    /// the batch declares lengths, else a `run` of unknown length.
    fn def(&self, id: u64) -> TaskDef {
        let spec = if let Some(ms) = &self.declared_ms {
            TaskSpec::Sleep {
                ms: u64::from(ms[id as usize]),
            }
        } else {
            TaskSpec::Run {
                program: "true".into(),
                args: vec![],
                expected_ms: None,
            }
        };
        TaskDef {
            id,
            timeout: None,
            spec,
        }
    }
}

impl Sim<'_> {
    pub fn batch_arrives(&mut self, b: usize) {
        let now = self.instant();
        let weight = self.batches[b].weight;
        let share = self
            .shares
            .join_at(&self.pool_key, &self.batches[b].name, weight, now);
        let pool_workers = self.cfg.pool.max as u64;
        let batch = &mut self.batches[b];
        batch.share = Some(share);
        batch.pool_workers = pool_workers;
        batch.arrived = Some(self.now);
        batch.last_flush = self.now;
        batch.recut(0);
        if self.batches.iter().all(|b| b.arrived.is_some()) && self.batches.len() > 1 {
            if self.batches.iter().any(|b| b.all_sent) {
                // A batch had sent its last bundle: they never all sent at
                // once, and no stretch measures their shares.
                self.shares_never_together = true;
            } else {
                self.share_from = Some((self.now, self.done_work()));
            }
        }
        self.wake_runner(b, self.now);
        self.collector_poll(b);
        self.notice_turns();
    }

    /// Slot-seconds each batch's tasks ran so far.
    fn done_work(&self) -> Vec<f64> {
        self.slot_time_by_batch
            .iter()
            .map(|&t| t as f64 / SECOND as f64)
            .collect()
    }

    /// One pass of the runner's enqueue loop: re-cut for a learned length,
    /// ask for the turn, send the granted bundles.
    pub fn runner_step(&mut self, b: usize) {
        let now = self.now;
        let instant = self.instant();
        let lat = self.lat_sqs;
        let batch = &mut self.batches[b];
        if batch.all_sent || batch.share.is_none() {
            return;
        }
        batch.waiting = false;
        let unknown = batch.peek().is_some_and(|x| {
            x.tasks
                .first()
                .is_some_and(|t| t.spec.declared_length().is_none())
        });
        if unknown {
            let input = SizingInput {
                current: batch.learned,
                estimate: batch.estimate.get(),
                fresh: batch
                    .estimate
                    .observed()
                    .saturating_sub(batch.observed_at_change),
                slots: batch.planned_slots,
            };
            if let Some(next) = sizing::next_cost(&input) {
                batch.learned = Some(next);
                batch.observed_at_change = batch.estimate.observed();
                batch.resizes += 1;
                let from = batch.enqueued;
                batch.recut(from);
            }
        }
        batch.growing = sizing::collector_cue(unknown, batch.learned, batch.estimate.get());
        let Some(bundle) = batch.peek() else {
            return;
        };
        let next = bundle.tasks.len() as u64;
        let bundle_length = declared_length(bundle.tasks.iter().map(|t| &t.spec));
        let declared = bundle.tasks.first().and_then(|t| t.spec.declared_length());
        if batch.estimate.get().is_none() && declared.is_some() {
            batch.estimate = Estimate::seeded(declared);
        }
        let (cost, window) = window::meter(&MeterInput {
            unknown,
            learned: batch.learned,
            estimate: batch.estimate.get(),
            declared: bundle_length,
            pool_slots: batch.planned_slots,
            pool_workers: batch.pool_workers,
            next_bundle: next,
        });
        let share = batch.share.take().expect("a running batch has its share");
        share.update(batch.running(), batch.estimate.get());
        share.set_waiting(batch.total.saturating_sub(batch.enqueued));
        if !share.take_at(next, cost, window, instant) {
            batch.share = Some(share);
            batch.waiting = true;
            self.wake_runner(b, now + METER_TICK);
            self.notice_turns();
            return;
        }
        let mut group = Vec::with_capacity(SEND_GROUP);
        // Bundles are sent by their position in the batch's order.
        let mut first = batch.enqueued;
        while let Some(bundle) = batch.peeked.take() {
            group.push((first, bundle.tasks.len() as u32));
            first += bundle.tasks.len() as u64;
            if group.len() >= SEND_GROUP {
                break;
            }
            match batch.peek() {
                Some(n) => {
                    let n = n.tasks.len() as u64;
                    if !share.take_at(n, cost, window, instant) {
                        break;
                    }
                }
                None => break,
            }
        }
        batch.enqueued = first;
        batch.bundles += group.len() as u64;
        let last = batch.peek().is_none();
        // A send to the lane is stamped on the simulated clock: the pool
        // reconciler looks at the lane `LANE_WAIT` after.
        let priority = self.cfg.pool.priority_lane && share.priority_at(window, instant);
        // The runner's `mark_lane`: the other batches' lane marks.
        let others = if priority && self.cfg.pool.lane_marks {
            share.others()
        } else {
            Vec::new()
        };
        share.sent_at(batch.running(), instant);
        if last {
            batch.all_sent = true;
            batch.growing = false;
            batch.sent_all_at = Some(now);
            share.set_backlogged_at(false, instant);
        }
        batch.share = Some(share);
        let woke_pool = std::mem::replace(&mut batch.woke_pool, true);
        self.req.bundle_sends += 1;
        let ids = group
            .into_iter()
            .map(|(first, len)| self.queue.add(b, first, len, priority))
            .collect();
        self.at(now + lat, Ev::MessagesVisible(ids));
        let marked: Vec<usize> = (0..self.batches.len())
            .filter(|&o| others.contains(&self.batches[o].name))
            .collect();
        if !marked.is_empty() {
            self.write_lane_marks(&marked);
        }
        if last && self.share_to.is_none() && self.share_from.is_some() {
            self.share_to = Some((now, self.done_work()));
        }
        if !woke_pool {
            // The pool scales on this backlog now, not at its next poll.
            self.at(now + lat, Ev::ScalerWake);
        }
        if !last {
            self.wake_runner(b, now + lat);
        }
        self.notice_turns();
    }

    /// The collector's next receive: results waiting, or a long poll.
    pub fn collector_poll(&mut self, b: usize) {
        let now = self.now;
        let batch = &mut self.batches[b];
        if batch.done_at.is_some() {
            return;
        }
        if batch.inbox.is_empty() {
            batch.polling = true;
            batch.poll_seq += 1;
            let seq = batch.poll_seq;
            self.at(now + RESULTS_WAIT, Ev::CollectorTimeout { b, seq });
            return;
        }
        // The round's receives go at once and come back together.
        let n = batch.inbox.len().min(RECEIVE_RESULTS * batch.receives);
        let messages: Vec<_> = batch.inbox.drain(..n).collect();
        let made = batch.receives;
        self.req.results_receives += made as u64;
        batch.receives = result_receives(made, n);
        self.at(now + self.lat_sqs, Ev::CollectorGot { b, made, messages });
    }

    pub fn results_arrive(&mut self, b: usize, messages: Vec<Vec<ResultItem>>) {
        let batch = &mut self.batches[b];
        batch.inbox.extend(messages);
        if batch.polling {
            // The long poll returns with it (only a round's first receive
            // waits: `receive_round`).
            batch.polling = false;
            batch.poll_seq += 1;
            self.collector_poll(b);
        }
    }

    pub fn collector_timeout(&mut self, b: usize, seq: u64) {
        let batch = &mut self.batches[b];
        if batch.polling && batch.poll_seq == seq {
            batch.polling = false;
            self.req.results_receives += batch.receives as u64;
            batch.receives = result_receives(batch.receives, 0);
            self.collector_poll(b);
        }
    }

    pub fn collector_got(&mut self, b: usize, made: usize, messages: Vec<Vec<ResultItem>>) {
        let now = self.now;
        let results = messages.iter().map(Vec::len).sum();
        let batch = &mut self.batches[b];
        let pause = collect_pause(made, messages.len(), results, batch.growing);
        for r in messages.iter().flatten() {
            if !batch.collect(r.id) {
                batch.duplicates += 1;
                continue;
            }
            batch.finished += 1;
            if !r.ok {
                batch.failed += 1;
            }
            let took = r.took as f64 / SECOND as f64;
            batch.done_work += took;
            batch.longest = batch.longest.max(took);
            batch.estimate.observe(Duration::from_micros(r.took));
        }
        batch.receipts += messages.len();
        let done = batch.finished >= batch.total;
        let since_flush = Duration::from_micros(now - batch.last_flush);
        if flush_due(done, since_flush, self.flush_every, batch.receipts) {
            self.req.results_deletes += batch.receipts.div_ceil(10) as u64;
            batch.receipts = 0;
            batch.last_flush = now;
        }
        if let Some(share) = &batch.share {
            share.update(batch.running(), batch.estimate.get());
        }
        if done {
            batch.done_at = Some(now);
            // The runner ends: its share leaves the pool.
            batch.share = None;
        } else if batch.waiting {
            // `progress.collected`: the meter may let more in.
            self.wake_runner(b, now);
        }
        self.notice_turns();
        if !done {
            if pause.is_zero() {
                self.collector_poll(b);
            } else {
                self.at(now + us(pause.as_secs_f64()), Ev::CollectorPoll { b });
            }
        }
    }
}
