//! The event loop: simulated time jumps from event to event (a binary heap;
//! no tokio, no sleeping), and the pool's scaler and the fleet (the
//! Deployment's ReplicaSet: workers asked for start after their start-up
//! delay, workers removed drain) act on it. The batch runners are in
//! `runner`, the workers in `worker`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use cloudkon_worker::remote::renew_every;

use super::config::SimConfig;
use super::dist::Rng;
use super::queue::{Claim, Queue, T};
use super::runner::{BatchSim, ResultItem};
use super::worker::{WState, WorkerSim};
use crate::context::Settings;
use crate::dead_letters::{POLL_WAIT, look_again_after};
use crate::pool_reconciler::{BUSY_READ_EVERY, LANE_MOVE_MAX, LANE_WAIT};
use crate::scale::{Observed, ScaleConfig, ScaleMemory};
use crate::shares::Shares;

pub const SECOND: T = 1_000_000;

/// The dead-letter reader's long poll (`dead_letters::POLL_WAIT`).
const DEAD_LETTER_POLL: T = POLL_WAIT.as_micros() as T;

pub fn us(seconds: f64) -> T {
    (seconds.max(0.0) * SECOND as f64).round() as T
}

pub fn secs(t: T) -> f64 {
    t as f64 / SECOND as f64
}

/// What happens, and to whom.
#[derive(Debug)]
pub enum Ev {
    BatchArrives(usize),
    RunnerWake {
        b: usize,
        token: u64,
    },
    MessagesVisible(Vec<usize>),
    /// Results messages (one per bundle) reach a batch's response queue.
    ResultsArrive {
        b: usize,
        messages: Vec<Vec<ResultItem>>,
    },
    CollectorTimeout {
        b: usize,
        seq: u64,
    },
    CollectorGot {
        b: usize,
        /// Receives the round made.
        made: usize,
        messages: Vec<Vec<ResultItem>>,
    },
    /// The collector's next round, after its pause (`collect_pause`).
    CollectorPoll {
        b: usize,
    },
    /// The pool reconciler's periodic pass.
    ScalerTick,
    /// A pass on a batch's first enqueue (the runner wakes the pool).
    ScalerWake,
    Sample,
    WorkerReady(usize),
    PollTimeout {
        w: usize,
        seq: u64,
    },
    /// A worker reads a new lane mark (`fetch::note_lane_mark`) and looks
    /// at the priority lane.
    LaneLook(usize),
    Delivered {
        w: usize,
        msgs: Vec<usize>,
    },
    Claimed {
        w: usize,
        msg: usize,
    },
    FetcherFree(usize),
    TaskDone {
        w: usize,
        msg: usize,
        pos: u32,
        result: ResultItem,
        ran: T,
    },
    /// The results gathered leave (unless a later gather's: `seq`).
    Flush {
        w: usize,
        seq: u64,
    },
    FlushDone {
        w: usize,
        items: Vec<(usize, u32)>,
    },
    Renew(usize),
    VisibilityEnds {
        msg: usize,
        generation: u32,
    },
    Spot,
    Crash,
    NodeGone(usize),
    GraceEnds(usize),
    /// The operator reads a bundle back from the dead-letter queue.
    DeadLetter(usize),
}

struct Entry {
    at: T,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Earliest first (BinaryHeap is a max-heap); ties in the order scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// AWS requests by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requests {
    /// SendMessageBatch of bundles (the runner).
    pub bundle_sends: u64,
    /// ReceiveMessage by workers, long polls that return empty included.
    pub bundle_receives: u64,
    /// DeleteMessage(Batch) by workers, and of settled dead letters.
    pub bundle_deletes: u64,
    /// ChangeMessageVisibility(Batch) requests: renewals (a worker's messages
    /// together, 10 a request), give-backs, held claims, dead letters hidden
    /// until their holder's lease ends.
    pub visibility_changes: u64,
    /// SendMessageBatch of results (workers).
    pub results_sends: u64,
    /// ReceiveMessage and DeleteMessageBatch of results (the runner).
    pub results_receives: u64,
    pub results_deletes: u64,
    /// DynamoDB: claims, renewals, completions, releases; retries of throttled ones.
    pub ledger_writes: u64,
    pub ledger_throttled: u64,
    /// DynamoDB BatchGetItem: the cancel check (cancel and lane marks).
    pub ledger_reads: u64,
    /// DynamoDB PutItem of each worker's heartbeat row: at its start, when
    /// it turns busy or idle, and every `HEARTBEAT_ROW_EVERY` while busy.
    pub heartbeat_rows: u64,
    /// The operator's receives of its dead-letter queue: a long poll of
    /// 20 s at a time while it is empty, and one per dead-lettered bundle.
    pub dead_letter_receives: u64,
    /// The pool reconciler's GetQueueAttributes of the queue, every pass.
    pub queue_attributes: u64,
    /// The pool reconciler's looks at the priority lane (once, then a while
    /// after sends to it): receives, and the bundles left there moved to
    /// the queue (sends, deletes).
    pub lane_looks: u64,
    /// DynamoDB Scans of the workers' heartbeat rows by the pool reconciler:
    /// before each scale-down (which pods run tasks) and, every 10 s at
    /// most, while the queue is empty and tasks are outstanding (whether a
    /// worker may still run one). A scan is counted as one request.
    pub heartbeat_scans: u64,
}

impl Requests {
    pub fn sqs(&self) -> u64 {
        self.bundle_sends
            + self.bundle_receives
            + self.bundle_deletes
            + self.visibility_changes
            + self.results_sends
            + self.results_receives
            + self.results_deletes
            + self.dead_letter_receives
            + self.queue_attributes
            + self.lane_looks
    }

    /// Every request made, the throttled ones included (billed or not).
    pub fn total(&self) -> u64 {
        self.sqs()
            + self.ledger_writes
            + self.ledger_throttled
            + self.ledger_reads
            + self.heartbeat_rows
            + self.heartbeat_scans
    }

    /// What they cost at `aws`'s prices. DynamoDB does not bill a throttled
    /// request. Each read is billed as one read request unit: a Scan of the
    /// heartbeat rows is billed by the size it reads (a unit per 8 KB,
    /// eventually consistent), a few units on a pool of hundreds of workers,
    /// one here.
    pub fn dollars(&self, aws: &super::config::AwsConfig) -> f64 {
        (self.sqs() as f64 * aws.sqs_per_million
            + (self.ledger_writes + self.heartbeat_rows) as f64 * aws.dynamodb_write_per_million
            + (self.ledger_reads + self.heartbeat_scans) as f64 * aws.dynamodb_read_per_million)
            / 1e6
    }
}

/// One point of the plots.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t: f64,
    pub visible: u64,
    pub in_flight: u64,
    /// Workers asked for and not gone (starting, ready or draining).
    pub workers: u64,
    pub ready: u64,
    pub busy_slots: u64,
    /// Ledger writes issued so far (claims, renewals, completions, releases).
    pub ledger_writes: u64,
}

/// Counts the report needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub task_starts: u64,
    /// Starts of a task that had started before (its first start not
    /// counted; tasks reported failed without running not either).
    pub reruns: u64,
    pub failed_attempts: u64,
    pub abandoned: u64,
    pub given_back: u64,
    pub taken_over: u64,
    pub spot: u64,
    pub crashes: u64,
    /// Tasks reported failed from the dead-letter queue.
    pub dead_letter_failed: u64,
    /// Spot interruptions and crashes that fell due while no worker was
    /// ready: each was carried out when one next became ready.
    pub disruptions_deferred: u64,
    /// Of those, the ones still waiting when the run ended (no worker
    /// became ready again): not carried out.
    pub disruptions_missed: u64,
    pub workers_started: u64,
    /// Worker-microseconds paid (asked for to gone) and slot-microseconds busy.
    pub paid: u128,
    pub busy: u128,
    /// The same, when the queue last handed out bundles.
    pub paid_at_last_receive: u128,
    pub busy_at_last_receive: u128,
    pub last_receive: T,
}

pub struct Sim<'c> {
    pub cfg: &'c SimConfig,
    pub now: T,
    heap: BinaryHeap<Entry>,
    seq: u64,
    pub events: u64,
    pub rng: Rng,
    base: Instant,
    epoch: SystemTime,
    pub shares: Arc<Shares>,
    pub pool_key: String,
    /// Told when a turn may be free, as the runners are.
    turns: watch::Receiver<u64>,
    pub batches: Vec<BatchSim>,
    pub queue: Queue,
    pub workers: Vec<WorkerSim>,
    /// Workers long-polling an empty queue: (worker, poll, bundles wanted).
    pub pollers: VecDeque<(usize, u64, usize)>,
    scale: ScaleMemory,
    pub scale_config: ScaleConfig,
    last_active: Option<T>,
    /// The Deployment's replicas.
    pub replicas: i32,
    pub live: u64,
    pub busy_slots: u64,
    /// Slots running each batch's tasks, and the slot-µs they ran so far.
    pub busy_by_batch: Vec<u64>,
    pub slot_time_by_batch: Vec<u128>,
    pub req: Requests,
    /// When the ledger write capacity taken so far is paid back (see
    /// `ledger_write`).
    db_free: T,
    pub samples: Vec<Sample>,
    pub counters: Counters,
    /// Slot-seconds each batch's tasks ran, when the last one arrived and
    /// when the first had sent everything: the stretch where all ran.
    pub share_from: Option<(T, Vec<f64>)>,
    pub share_to: Option<(T, Vec<f64>)>,
    /// A batch had sent everything when the last one arrived: there was no
    /// stretch where all sent.
    pub shares_never_together: bool,
    /// Whether the pool reconciler looked at the priority lane once (it
    /// does at its first pass; then `Shares::lane_to_look_at` says when).
    lane_looked: bool,
    /// Interruptions due while no worker was ready, in the order they fell
    /// due: carried out as workers become ready.
    waiting_disruptions: VecDeque<Disruption>,
    /// When the pool reconciler last read the heartbeats to tell whether a
    /// worker is busy (`pool_reconciler::busy`).
    busy_read: Option<T>,
    /// When the operator's dead-letter reader's next long poll begins.
    dead_letter_poll: T,
    // Settings in microseconds.
    pub lat_sqs: T,
    pub lat_db: T,
    pub lease: T,
    /// How often a worker renews what it holds (`remote::renew_every`; the
    /// worker's visibility is its lease).
    pub renew_every: T,
    pub linger: T,
    /// How often a batch's collector flushes (`Settings::flush_every`).
    pub flush_every: Duration,
    pub cancel_check: T,
    /// The receive's wait, as `SqsQueue::receive_raw` sends it: whole
    /// seconds, a fraction rounded up (0: a short poll).
    pub receive_wait: T,
    pub grace: T,
    pub slots: u32,
}

impl<'c> Sim<'c> {
    pub fn new(cfg: &'c SimConfig) -> Self {
        let shares = Arc::new(Shares::default());
        let mut turns = shares.subscribe();
        turns.mark_unchanged();
        let pool_key = crate::shares::pool_key("sim", "pool");
        let pool_slots = u64::from(cfg.pool.threads) * cfg.pool.max as u64;
        let batches = cfg
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| BatchSim::new(i, b, pool_slots, cfg.seed))
            .collect();
        let w = &cfg.worker;
        Self {
            cfg,
            now: 0,
            heap: BinaryHeap::new(),
            seq: 0,
            events: 0,
            rng: Rng::new(cfg.seed),
            base: Instant::now(),
            epoch: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            shares,
            pool_key,
            turns,
            batches,
            queue: Queue::default(),
            workers: Vec::new(),
            pollers: VecDeque::new(),
            scale: ScaleMemory::default(),
            scale_config: cfg.scale_config(),
            last_active: None,
            replicas: 0,
            live: 0,
            busy_slots: 0,
            busy_by_batch: vec![0; cfg.batches.len()],
            slot_time_by_batch: vec![0; cfg.batches.len()],
            req: Requests::default(),
            db_free: 0,
            samples: Vec::new(),
            counters: Counters::default(),
            share_from: None,
            share_to: None,
            shares_never_together: false,
            lane_looked: false,
            waiting_disruptions: VecDeque::new(),
            busy_read: None,
            dead_letter_poll: 0,
            lat_sqs: us(cfg.aws.sqs_latency_ms / 1000.0),
            lat_db: us(cfg.aws.dynamodb_latency_ms / 1000.0),
            lease: us(w.lease_seconds),
            renew_every: {
                // Checked: finite, 1 s to 12 hours.
                let lease = Duration::from_secs_f64(w.lease_seconds);
                us(renew_every(lease, lease).as_secs_f64())
            },
            linger: us(w.linger_ms / 1000.0),
            flush_every: Settings::default().flush_every,
            cancel_check: us(w.cancel_check_seconds).max(1),
            receive_wait: us(w.receive_wait_seconds.ceil()),
            grace: us(w.grace_seconds),
            slots: cfg.pool.threads,
        }
    }

    pub fn at(&mut self, at: T, ev: Ev) {
        self.seq += 1;
        self.heap.push(Entry {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    /// The shares' clock: real `Instant`s, `now` after a fixed base.
    pub fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    /// The scaler's clock.
    fn system_time(&self) -> SystemTime {
        self.epoch + Duration::from_micros(self.now)
    }

    /// A DynamoDB write issued now: when it completes, waiting for capacity
    /// above the write rate (a throttled write is retried: one more request).
    /// A second's worth of writes may come at once, as a table's capacity
    /// is per second (generic cell rate: `db_free` is when the capacity
    /// taken so far is paid back); past that, writes wait their turn.
    pub fn ledger_write(&mut self) -> T {
        self.req.ledger_writes += 1;
        let rate = self.cfg.aws.dynamodb_writes_per_second;
        if rate <= 0.0 {
            return self.now + self.lat_db;
        }
        let each = us(1.0 / rate).max(1);
        let burst = SECOND.saturating_sub(each);
        let start = self.db_free.saturating_sub(burst).max(self.now);
        if start > self.now {
            self.req.ledger_throttled += 1;
        }
        self.db_free = self.db_free.max(self.now) + each;
        start + self.lat_db
    }

    /// The runner's `mark_lane`: a ledger write for each of the batches
    /// `marked` (throttled as any write), then the workers holding their
    /// tasks read the marks (`lane_marked`).
    pub fn write_lane_marks(&mut self, marked: &[usize]) {
        let mut written = self.now;
        for _ in marked {
            written = written.max(self.ledger_write());
        }
        self.lane_marked(marked, written);
    }

    /// Runs to the end: every batch done and every worker gone, or the time limit.
    pub fn run(&mut self) {
        let cfg = self.cfg;
        for (i, b) in cfg.batches.iter().enumerate() {
            self.at(us(b.arrival_seconds), Ev::BatchArrives(i));
        }
        self.at(0, Ev::ScalerTick);
        self.at(0, Ev::Sample);
        self.schedule_disruptions();
        let limit = us(self.cfg.max_seconds);
        while let Some(Entry { at, ev, .. }) = self.heap.pop() {
            if at > limit {
                break;
            }
            self.advance(at);
            self.events += 1;
            self.handle(ev);
            for msg in std::mem::take(&mut self.queue.newly_dead) {
                // The operator's long poll on the dead-letter queue.
                self.at(self.now + self.lat_sqs, Ev::DeadLetter(msg));
            }
            if self.finished() {
                break;
            }
        }
        self.counters.disruptions_missed = self.waiting_disruptions.len() as u64;
    }

    /// Moves the clock, integrating paid worker-time and busy slot-time.
    fn advance(&mut self, to: T) {
        let dt = u128::from(to.saturating_sub(self.now));
        self.counters.paid += u128::from(self.live) * dt;
        self.counters.busy += u128::from(self.busy_slots) * dt;
        for (time, &busy) in self.slot_time_by_batch.iter_mut().zip(&self.busy_by_batch) {
            *time += u128::from(busy) * dt;
        }
        self.now = to.max(self.now);
    }

    pub(super) fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::BatchArrives(b) => self.batch_arrives(b),
            Ev::RunnerWake { b, token } => {
                if self.batches[b].take_wake(token) {
                    self.runner_step(b);
                }
            }
            Ev::MessagesVisible(ids) => {
                for id in ids {
                    self.queue.make_visible(id, self.cfg.aws.max_receives);
                }
                self.serve_pollers();
            }
            Ev::ResultsArrive { b, messages } => self.results_arrive(b, messages),
            Ev::CollectorTimeout { b, seq } => self.collector_timeout(b, seq),
            Ev::CollectorGot { b, made, messages } => self.collector_got(b, made, messages),
            Ev::CollectorPoll { b } => self.collector_poll(b),
            Ev::ScalerTick => {
                self.scale();
                if !self.finished() {
                    self.at(self.now + SECOND, Ev::ScalerTick);
                }
            }
            Ev::ScalerWake => self.scale(),
            Ev::Sample => self.sample(),
            Ev::WorkerReady(w) => {
                self.worker_ready(w);
                self.disrupt_waiting();
            }
            Ev::PollTimeout { w, seq } => self.poll_timeout(w, seq),
            Ev::LaneLook(w) => self.lane_look(w),
            Ev::Delivered { w, msgs } => self.delivered(w, msgs),
            Ev::Claimed { w, msg } => self.claimed(w, msg),
            Ev::FetcherFree(w) => {
                self.workers[w].fetching = false;
                self.maybe_fetch(w);
            }
            Ev::TaskDone {
                w,
                msg,
                pos,
                result,
                ran,
            } => self.task_done(w, msg, pos, result, ran),
            Ev::Flush { w, seq } => {
                if self.workers[w].flush_due(seq) {
                    self.flush(w);
                }
            }
            Ev::FlushDone { w, items } => self.flush_done(w, items),
            Ev::Renew(w) => self.renew(w),
            Ev::VisibilityEnds { msg, generation } => {
                if self.queue.messages[msg].visibility == generation
                    && self.queue.make_visible(msg, self.cfg.aws.max_receives)
                {
                    self.serve_pollers();
                }
            }
            Ev::Spot => self.spot(),
            Ev::Crash => self.crash(),
            Ev::NodeGone(w) => {
                if self.workers[w].state != WState::Gone {
                    self.kill(w);
                }
            }
            Ev::GraceEnds(w) => self.grace_ends(w),
            Ev::DeadLetter(msg) => self.dead_letter(msg),
        }
    }

    /// A bundle read back from the dead-letter queue, as `dead_letters` does:
    /// the operator claims it in the ledger — finished, dropped; held by a
    /// live lease, looked at again after it; otherwise its tasks without a
    /// result in the progress are reported failed to their batch.
    fn dead_letter(&mut self, msg: usize) {
        self.req.dead_letter_receives += 1;
        // `settle` claims the bundle whatever the ledger then answers.
        self.ledger_write();
        let until = match self.queue.messages[msg].claim {
            Claim::Done => {
                // `Settled::Finished`: the message is deleted.
                self.req.bundle_deletes += 1;
                return;
            }
            Claim::Held { until, .. } => until,
            Claim::Free => 0,
        };
        if until > self.now {
            // `dead_letters::settle`'s `Settled::Later`: the message is
            // hidden that long (a ChangeMessageVisibility).
            self.req.visibility_changes += 1;
            let after = look_again_after(Duration::from_micros(until - self.now));
            self.at(self.now + us(after.as_secs_f64()), Ev::DeadLetter(msg));
            return;
        }
        // `Settled::Reported`: the claim is completed and the message deleted.
        self.ledger_write();
        self.req.bundle_deletes += 1;
        let m = &mut self.queue.messages[msg];
        m.claim = Claim::Done;
        let (b, first) = (m.batch, m.first);
        let batch = &self.batches[b];
        let results: Vec<ResultItem> = (0..m.len)
            .filter(|&p| !m.progress.get(p as usize).copied().unwrap_or(false))
            .map(|p| ResultItem {
                id: batch.id_at(first + u64::from(p)),
                took: 0,
                ok: false,
            })
            .collect();
        self.counters.dead_letter_failed += results.len() as u64;
        if !results.is_empty() {
            self.req.results_sends += 1;
            let messages = vec![results];
            self.at(self.now + self.lat_sqs, Ev::ResultsArrive { b, messages });
        }
    }

    /// Every batch has all its results.
    pub fn batches_done(&self) -> bool {
        self.batches.iter().all(|b| b.done_at.is_some())
    }

    /// Nothing left to simulate: batches done, and no worker left beyond
    /// the pool's minimum.
    fn finished(&self) -> bool {
        self.batches_done() && self.live <= u64::try_from(self.cfg.pool.min.max(0)).unwrap_or(0)
    }

    /// Runners waiting for a turn look again when the shares changed (the
    /// `turns` channel the real runners wait on).
    pub fn notice_turns(&mut self) {
        if self.turns.has_changed().unwrap_or(false) {
            self.turns.mark_unchanged();
            for b in 0..self.batches.len() {
                if self.batches[b].waiting {
                    self.wake_runner(b, self.now);
                }
            }
        }
    }

    pub fn wake_runner(&mut self, b: usize, at: T) {
        if let Some(token) = self.batches[b].wake(at) {
            self.at(at, Ev::RunnerWake { b, token });
        }
    }

    /// Every second, as the pool reconciler (`pool_reconciler::apply`):
    /// reads the queue's figures (a GetQueueAttributes), looks at the
    /// priority lane when due, reads the heartbeats when the queue is empty
    /// and tasks are outstanding; the real scaler decides, the heartbeats
    /// are read again before a scale-down, and the Deployment follows. The
    /// operator's dead-letter reader's long polls are counted here too.
    pub fn scale(&mut self) {
        let now_sys = self.system_time();
        self.req.queue_attributes += 1;
        self.dead_letter_polls();
        self.look_at_lane();
        let backlog = self.queue.visible() + self.queue.in_flight;
        self.shares
            .saw_queue(&self.pool_key, self.queue.visible_main());
        if backlog > 0 {
            self.last_active = Some(self.now);
        }
        let work = self.shares.work(&self.pool_key);
        if self.queue.visible_main() + self.queue.in_flight == 0
            && work.tasks > 0
            && self
                .busy_read
                .is_none_or(|at| self.now - at >= us(BUSY_READ_EVERY.as_secs_f64()))
        {
            self.busy_read = Some(self.now);
            self.req.heartbeat_scans += 1;
        }
        let (work_tasks, work_task_seconds) = work.to_run();
        let ready = self
            .workers
            .iter()
            .filter(|w| w.state == WState::Ready)
            .count();
        let seen = Observed {
            backlog_visible: self.queue.visible_main(),
            backlog_in_flight: self.queue.in_flight,
            work_tasks,
            work_task_seconds,
            current: self.replicas,
            ready: i32::try_from(ready).unwrap_or(i32::MAX),
            last_active: self
                .last_active
                .map(|t| self.epoch + Duration::from_micros(t)),
        };
        let mut decision = self.scale.decide(&self.scale_config, &seen, now_sys);
        if decision.scales_down(self.replicas) {
            // The pool reconciler's heartbeats, a Scan (fresher here: it
            // reads rows up to 10 s old).
            self.req.heartbeat_scans += 1;
            let busy = self.workers.iter().filter(|w| w.running()).count();
            decision.keep_busy(
                i32::try_from(busy).unwrap_or(i32::MAX),
                self.replicas,
                self.queue.in_flight,
                self.scale_config.max,
            );
        }
        let change = decision.replicas - self.replicas;
        if change != 0 {
            tracing::debug!(t = secs(self.now), from = self.replicas, to = decision.replicas, reason = %decision.reason, "scaled");
            self.replicas = decision.replicas;
            self.scale.scaled(now_sys, change);
            self.reconcile_fleet();
        }
    }

    /// The dead-letter reader's long polls of an empty queue since the last
    /// pass (`dead_letters::POLL_WAIT`, 20 s, each).
    fn dead_letter_polls(&mut self) {
        while self.dead_letter_poll <= self.now {
            self.req.dead_letter_receives += 1;
            self.dead_letter_poll += DEAD_LETTER_POLL;
        }
    }

    /// `pool_reconciler::move_lane_leftovers`: at the first pass, and once
    /// a send to the lane is `LANE_WAIT` old, the bundles still visible in
    /// the lane go to the queue (received ten at a time until the lane is
    /// empty, sent to the queue, deleted from the lane).
    fn look_at_lane(&mut self) {
        let now = self.instant();
        if std::mem::replace(&mut self.lane_looked, true)
            && !self.shares.lane_to_look_at(&self.pool_key, LANE_WAIT, now)
        {
            return;
        }
        let moved = self.queue.move_lane_to_main(LANE_MOVE_MAX) as u64;
        let rounds = moved.div_ceil(10);
        // The receive that finds the lane empty ends it.
        let empty = u64::from((moved as usize) < LANE_MOVE_MAX);
        self.req.lane_looks += rounds + empty + 2 * rounds;
        if moved > 0 {
            self.serve_pollers();
        }
    }

    /// The ReplicaSet: as many workers starting or ready as the replicas;
    /// removes those not ready first, then the least busy (the operator
    /// marks idle pods cheapest to delete).
    pub fn reconcile_fleet(&mut self) {
        let live: Vec<usize> = (0..self.workers.len())
            .filter(|&w| matches!(self.workers[w].state, WState::Starting | WState::Ready))
            .collect();
        let want = usize::try_from(self.replicas.max(0)).unwrap_or(0);
        if live.len() < want {
            for _ in live.len()..want {
                self.start_worker();
            }
        } else if live.len() > want {
            let mut order = live;
            order.sort_by_key(|&w| {
                let worker = &self.workers[w];
                (
                    worker.state == WState::Ready,
                    worker.tasks_held,
                    std::cmp::Reverse(w),
                )
            });
            let excess = order.len() - want;
            for &w in order.iter().take(excess) {
                self.drain(w);
            }
        }
    }

    fn start_worker(&mut self) {
        let w = self.workers.len();
        let startup = us(self.cfg.worker.startup_seconds
            + self.cfg.worker.startup_jitter_seconds * self.rng.unit());
        self.workers
            .push(WorkerSim::new(self.now, self.slots, self.batches.len()));
        self.live += 1;
        self.counters.workers_started += 1;
        self.at(self.now + startup, Ev::WorkerReady(w));
    }

    fn sample(&mut self) {
        let mut workers = 0;
        let mut ready = 0;
        for w in &self.workers {
            match w.state {
                WState::Gone => {}
                WState::Ready => {
                    workers += 1;
                    ready += 1;
                }
                _ => workers += 1,
            }
        }
        self.samples.push(Sample {
            t: secs(self.now),
            visible: self.queue.visible(),
            in_flight: self.queue.in_flight,
            workers,
            ready,
            busy_slots: self.busy_slots,
            ledger_writes: self.req.ledger_writes,
        });
        if !self.finished() {
            self.at(self.now + us(self.cfg.sample_seconds), Ev::Sample);
        }
    }

    /// `n` slots of batch `b` start (positive) or stop running tasks.
    pub fn busy(&mut self, b: usize, n: i64) {
        let add = |x: u64| x.checked_add_signed(n).expect("busy slots stay >= 0");
        self.busy_slots = add(self.busy_slots);
        self.busy_by_batch[b] = add(self.busy_by_batch[b]);
    }

    fn schedule_disruptions(&mut self) {
        let cfg = self.cfg;
        let d = &cfg.disruptions;
        let max = f64::from(self.cfg.pool.max);
        let spot = (d.spot_fraction * max).round() as u64;
        let crash = (d.crash_fraction * max).round() as u64;
        let (from, to) = (us(d.from_seconds), us(d.to_seconds.max(d.from_seconds)));
        for i in 0..spot {
            self.at(spread(from, to, i, spot), Ev::Spot);
        }
        for i in 0..crash {
            self.at(spread(from, to, i, crash), Ev::Crash);
        }
    }

    /// Carries out the interruptions that found no ready worker, while
    /// there is one.
    fn disrupt_waiting(&mut self) {
        while self.workers.iter().any(|w| w.state == WState::Ready)
            && let Some(what) = self.waiting_disruptions.pop_front()
        {
            match what {
                Disruption::Spot => self.spot(),
                Disruption::Crash => self.crash(),
            }
        }
    }

    /// An interruption due now that finds no ready worker (all starting,
    /// draining or gone: at the start, before the first is up) waits for
    /// the next to be ready.
    fn defer(&mut self, what: Disruption) {
        self.counters.disruptions_deferred += 1;
        self.waiting_disruptions.push_back(what);
    }

    /// A ready worker at random, if any.
    fn victim(&mut self) -> Option<usize> {
        let ready: Vec<usize> = (0..self.workers.len())
            .filter(|&w| self.workers[w].state == WState::Ready)
            .collect();
        (!ready.is_empty()).then(|| ready[self.rng.below(ready.len())])
    }

    /// A spot interruption: the notice drains the worker (SIGTERM: the
    /// cluster's Node Termination Handler or Karpenter drains the node), its
    /// node goes after the notice, and the ReplicaSet asks for another at
    /// once.
    fn spot(&mut self) {
        let Some(w) = self.victim() else {
            return self.defer(Disruption::Spot);
        };
        self.counters.spot += 1;
        self.drain(w);
        let notice = us(self.cfg.disruptions.notice_seconds);
        self.at(self.now + notice, Ev::NodeGone(w));
        self.reconcile_fleet();
    }

    /// A worker killed outright: its claims and messages wait for their
    /// lease and visibility to run out.
    fn crash(&mut self) {
        let Some(w) = self.victim() else {
            return self.defer(Disruption::Crash);
        };
        self.counters.crashes += 1;
        self.kill(w);
        self.reconcile_fleet();
    }
}

/// An interruption waiting for a ready worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disruption {
    Spot,
    Crash,
}

/// The `i`th of `n` times spread evenly over `from..to` (the middles of
/// `n` equal parts). In u128: a span of 10^8 s in µs times the 2 × 10^5
/// parts of 10^5 interruptions is past u64.
fn spread(from: T, to: T, i: u64, n: u64) -> T {
    let n = n.max(1);
    let offset = u128::from(to.saturating_sub(from)) * u128::from(2 * i + 1) / (2 * u128::from(n));
    from + T::try_from(offset).expect("within the span")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::config::{MAX_RUN_SECONDS, MAX_WORKERS};

    /// Disruptions spread over the first second all fall before any worker
    /// is up (5 s start-up): each is carried out as a worker becomes
    /// ready, not dropped. With a run that ends before any worker
    /// is up, they are counted missed.
    #[test]
    fn interruptions_that_find_no_ready_worker_wait_for_one() {
        let yaml = |max_seconds: u32| {
            format!(
                r#"
pool: {{ max: 4, threads: 2 }}
worker: {{ startupSeconds: 5, startupJitterSeconds: 0, graceSeconds: 3, leaseSeconds: 9 }}
batches:
  - {{ name: a, tasks: 400, durations: {{ kind: fixed, seconds: 1 }} }}
disruptions: {{ spotFraction: 0.5, noticeSeconds: 10, crashFraction: 0.25, fromSeconds: 0, toSeconds: 1 }}
maxSeconds: {max_seconds}
"#
            )
        };
        let cfg = SimConfig::parse(&yaml(100_000)).expect("a valid config");
        let mut sim = Sim::new(&cfg);
        sim.run();
        let c = sim.counters;
        assert_eq!((c.spot, c.crashes), (2, 1), "{c:?}");
        assert_eq!(
            (c.disruptions_deferred, c.disruptions_missed),
            (3, 0),
            "{c:?}"
        );
        assert!(sim.batches_done(), "{c:?}");
        assert_eq!(sim.batches[0].finished, 400);

        let cfg = SimConfig::parse(&yaml(3)).expect("a valid config");
        let mut sim = Sim::new(&cfg);
        sim.run();
        let c = sim.counters;
        assert_eq!((c.spot, c.crashes), (0, 0), "{c:?}");
        assert_eq!(
            (c.disruptions_deferred, c.disruptions_missed),
            (3, 3),
            "{c:?}"
        );
    }

    /// The longest span over the most interruptions.
    #[test]
    fn interruptions_spread_over_the_longest_span_on_the_biggest_pool() {
        let (from, to) = (SECOND, us(MAX_RUN_SECONDS));
        let n = MAX_WORKERS as u64;
        let step = (to - from) / n;
        assert_eq!(spread(from, to, 0, n), from + step / 2);
        let last = spread(from, to, n - 1, n);
        assert_eq!(last, to - step / 2);
        assert_eq!(spread(from, from, 3, n), from);
    }
}
