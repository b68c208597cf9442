//! `cloudkon-worker` in simulated time: it holds a task per slot and what its
//! slots free soon (`tasks_to_hold` by its `TypicalTask`, and
//! `bundles_wanted`: the worker's own rules) and at most slots + prefetch
//! bundles, claims each bundle in the ledger before running it, runs its
//! tasks on free slots, sends results as `results_wait` says (the worker's
//! own rule: a bundle's end, a send's worth, or the linger), renews its claims and the
//! messages' visibility every third of the lease (writing the progress),
//! completes a bundle (ledger, then delete) once its results are sent, and on
//! SIGTERM stops receiving, lets running tasks finish within the grace and
//! gives the rest back with its progress.

use std::collections::VecDeque;

use std::time::Duration;

use cloudkon_core::ledger::{LaneSight, lane_look_due, lane_mark_fresh};
use cloudkon_core::wire::SQS_MAX_BATCH_ENTRIES;
use cloudkon_worker::pool::retry_delay;
use cloudkon_worker::remote::{
    HEARTBEAT_ROW_EVERY, TypicalTask, batches_to_watch, bundle_size_seen, bundles_wanted,
    heartbeat_due, results_wait, tasks_to_hold,
};

use super::engine::{Ev, SECOND, Sim, us};
use super::queue::{Claim, MsgState, T};
use super::runner::ResultItem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WState {
    Starting,
    Ready,
    Draining,
    Gone,
}

/// A bundle the worker holds.
#[derive(Debug)]
pub struct Held {
    msg: usize,
    /// Claimed: its tasks may run.
    claimed: bool,
    /// Positions not started.
    pending: VecDeque<u32>,
    running: u32,
    /// Finished, results not yet sent.
    unsent: u32,
    /// Results sent (or sent by an earlier holder).
    sent: Vec<bool>,
    sent_count: u32,
}

#[derive(Debug)]
pub struct WorkerSim {
    pub state: WState,
    pub requested: T,
    pub gone_at: Option<T>,
    free: u32,
    held: Vec<Held>,
    /// Tasks held and not finished.
    pub tasks_held: usize,
    avg_bundle_tasks: Option<f64>,
    /// How long its tasks typically take: how far ahead it holds.
    typical: TypicalTask,
    /// A receive (or the claims after it) is under way.
    pub fetching: bool,
    poll_seq: u64,
    results: Vec<(usize, u32, ResultItem)>,
    /// A gather is under way: since when, whether a bundle ended in it, and
    /// whether its flush is due now.
    flushing: bool,
    gather_from: T,
    bundle_ended: bool,
    due_now: bool,
    /// The current gather's flush (earlier ones scheduled are stale).
    flush_seq: u64,
    cancel_checked: Vec<Option<T>>,
    /// Time since the last cancel poll counted (`watch_cancels`, below).
    cancel_poll_rest: T,
    /// The last heartbeat row: when, and whether it said busy.
    heartbeat_last: Option<(T, bool)>,
    /// When it last read a lane mark (and looked at the lane).
    mark_seen: Option<T>,
}

impl WorkerSim {
    pub fn new(now: T, slots: u32, batches: usize) -> Self {
        Self {
            state: WState::Starting,
            requested: now,
            gone_at: None,
            free: slots,
            held: Vec::new(),
            tasks_held: 0,
            avg_bundle_tasks: None,
            typical: TypicalTask::default(),
            fetching: false,
            poll_seq: 0,
            results: Vec::new(),
            flushing: false,
            gather_from: 0,
            bundle_ended: false,
            due_now: false,
            flush_seq: 0,
            cancel_checked: vec![None; batches],
            cancel_poll_rest: 0,
            heartbeat_last: None,
            mark_seen: None,
        }
    }

    /// Runs tasks now (what its heartbeat's `busy` tells), and is not gone.
    pub fn running(&self) -> bool {
        matches!(self.state, WState::Ready | WState::Draining)
            && self.held.iter().any(|h| h.running > 0)
    }

    /// Whether the flush scheduled as `seq` is the current gather's.
    pub fn flush_due(&self, seq: u64) -> bool {
        self.flushing && seq == self.flush_seq
    }

    fn held(&mut self, msg: usize) -> Option<&mut Held> {
        self.held.iter_mut().find(|h| h.msg == msg)
    }
}

impl Sim<'_> {
    /// A bundle held (a worker that turns busy writes its heartbeat row).
    fn hold(&mut self, w: usize, held: Held) {
        self.workers[w].held.push(held);
        self.heartbeat_look(w);
    }

    /// The heartbeat rows `w` writes up to now, by `remote::heartbeat_due`:
    /// the worker looks every second, so the rows of the period fall due
    /// while nothing changes (counted here since the last row), and one goes
    /// when it turns busy (holds a bundle) or idle.
    fn heartbeat_look(&mut self, w: usize) {
        let now = self.now;
        let worker = &mut self.workers[w];
        let busy = !worker.held.is_empty();
        let ago = |at: T| Duration::from_micros(now.saturating_sub(at));
        while let Some((at, was)) = worker.heartbeat_last
            && heartbeat_due(Some((ago(at), was)), was)
        {
            self.req.heartbeat_rows += 1;
            worker.heartbeat_last = Some((at + us(HEARTBEAT_ROW_EVERY.as_secs_f64()), was));
        }
        if heartbeat_due(worker.heartbeat_last.map(|(at, was)| (ago(at), was)), busy) {
            self.req.heartbeat_rows += 1;
            worker.heartbeat_last = Some((now, busy));
        }
    }

    pub fn worker_ready(&mut self, w: usize) {
        if self.workers[w].state != WState::Starting {
            return;
        }
        self.workers[w].state = WState::Ready;
        // The first heartbeat row goes as the worker starts.
        self.heartbeat_look(w);
        self.at(self.now + self.renew_every, Ev::Renew(w));
        self.maybe_fetch(w);
    }

    /// The fetch loop: receive when the slots are about to run out of tasks
    /// and there is room for another bundle.
    pub fn maybe_fetch(&mut self, w: usize) {
        let slots = self.slots as usize;
        let prefetch = self.cfg.worker.prefetch;
        let worker = &mut self.workers[w];
        let hold = tasks_to_hold(slots, worker.typical.get());
        if worker.state != WState::Ready || worker.fetching || worker.tasks_held >= hold {
            return;
        }
        let room = (slots + prefetch).saturating_sub(worker.held.len());
        if room == 0 {
            return;
        }
        let want = bundles_wanted(hold, worker.tasks_held, worker.avg_bundle_tasks, room);
        let mark_seen = worker.mark_seen;
        worker.fetching = true;
        // The mark taken as written when read (a cancel check later at
        // most): the worker's own test, in ms.
        let sight = LaneSight {
            marks_read: self.cfg.pool.lane_marks,
            check_every: Duration::from_micros(self.cancel_check),
            watching: !self.watched(w).is_empty(),
            fresh_mark: mark_seen.is_some_and(|at| lane_mark_fresh(at / 1000, self.now / 1000)),
        };
        let look = self.cfg.pool.priority_lane && lane_look_due(sight);
        let (got, requests) = self.queue.receive(want, look);
        self.req.bundle_receives += requests;
        if got.is_empty() {
            let worker = &mut self.workers[w];
            worker.poll_seq += 1;
            let seq = worker.poll_seq;
            let wait = self.receive_wait;
            // A long poll waits for messages (`serve_pollers`); a short one
            // (a wait of 0) is answered at once, empty, and the worker asks
            // again: each answer, empty or not, comes a round trip later.
            if wait > 0 {
                self.pollers.push_back((w, seq, want));
            }
            let answered = wait.max(self.lat_sqs).max(1);
            self.at(self.now + answered, Ev::PollTimeout { w, seq });
        } else {
            self.received(w, got);
        }
    }

    /// The pool's priority lane just got bundles, and the runner marked the
    /// other batches (`others`) in the ledger, written at `written`: each
    /// worker holding tasks not started of one of them reads the mark with
    /// its next cancel check after that (`cancel_check` apart, at a phase of
    /// its own: drawn here) and looks at the lane then.
    pub fn lane_marked(&mut self, others: &[usize], written: T) {
        for w in 0..self.workers.len() {
            if self.workers[w].state != WState::Ready {
                continue;
            }
            if self.watched(w).iter().any(|b| others.contains(b)) {
                let next_check = (self.cancel_check as f64 * self.rng.unit()) as T;
                self.at(written + next_check + self.lat_db, Ev::LaneLook(w));
            }
        }
    }

    /// The batches worker `w` asks the ledger about every `cancel_check`
    /// (`batches_to_watch` over the bundles it has claimed).
    fn watched(&self, w: usize) -> Vec<usize> {
        batches_to_watch(
            self.workers[w]
                .held
                .iter()
                .filter(|h| h.claimed)
                .map(|h| (self.queue.messages[h.msg].batch, h.pending.len())),
        )
    }

    /// `fetch::look_at_lane`: the fetch loop, waiting while the worker holds
    /// enough, receives from the lane alone, as many bundles as it has
    /// room for.
    pub fn lane_look(&mut self, w: usize) {
        let slots = self.slots as usize;
        let prefetch = self.cfg.worker.prefetch;
        let worker = &mut self.workers[w];
        if worker.state != WState::Ready || worker.fetching {
            return;
        }
        let room = (slots + prefetch)
            .saturating_sub(worker.held.len())
            .min(SQS_MAX_BATCH_ENTRIES);
        if room == 0 {
            return;
        }
        self.req.bundle_receives += 1;
        self.workers[w].mark_seen = Some(self.now);
        let got = self.queue.receive_priority(room);
        if !got.is_empty() {
            self.workers[w].fetching = true;
            self.received(w, got);
        }
    }

    /// Messages received by `w`: hidden for the visibility timeout, delivered
    /// after the request's latency.
    fn received(&mut self, w: usize, msgs: Vec<usize>) {
        for &m in &msgs {
            let generation = self.queue.messages[m].visibility;
            self.at(
                self.now + self.lease,
                Ev::VisibilityEnds { msg: m, generation },
            );
        }
        self.counters.last_receive = self.now;
        self.counters.paid_at_last_receive = self.counters.paid;
        self.counters.busy_at_last_receive = self.counters.busy;
        self.at(self.now + self.lat_sqs, Ev::Delivered { w, msgs });
    }

    /// Long polls waiting on an empty queue return with what became visible.
    pub fn serve_pollers(&mut self) {
        while self.queue.visible_main() > 0 {
            let Some((w, seq, want)) = self.pollers.pop_front() else {
                return;
            };
            let worker = &mut self.workers[w];
            if worker.state != WState::Ready || !worker.fetching || worker.poll_seq != seq {
                continue;
            }
            worker.poll_seq += 1;
            let got = self.queue.receive_main(want);
            self.received(w, got);
        }
    }

    /// A receive came back empty: its poll leaves the pollers, and the
    /// worker asks again.
    pub fn poll_timeout(&mut self, w: usize, seq: u64) {
        // Every long poll waits as long, and each ends once (served, which
        // takes the front of the pollers, or here): a poll ending here is
        // the front one, unless it was served.
        if self
            .pollers
            .front()
            .is_some_and(|&(pw, ps, _)| (pw, ps) == (w, seq))
        {
            self.pollers.pop_front();
        }
        let worker = &mut self.workers[w];
        if worker.fetching && worker.poll_seq == seq {
            worker.fetching = false;
            self.maybe_fetch(w);
        }
    }

    /// Claims each delivered bundle in turn (`admit`), as the fetch loop does.
    pub fn delivered(&mut self, w: usize, msgs: Vec<usize>) {
        match self.workers[w].state {
            WState::Gone => return,
            WState::Draining | WState::Starting => {
                // Received after the stop: straight back to the queue.
                for m in msgs {
                    self.req.visibility_changes += 1;
                    self.queue.make_visible(m, self.cfg.aws.max_receives);
                }
                self.workers[w].fetching = false;
                self.serve_pollers();
                return;
            }
            WState::Ready => {}
        }
        let mut free_at = self.now;
        let max_claims = self.cfg.worker.max_claims;
        for m in msgs {
            let (batch, len) = {
                let msg = &self.queue.messages[m];
                (msg.batch, msg.len)
            };
            let first = self.queue.messages[m].first;
            let declared = self.batches[batch].declared(first, len);
            let worker = &mut self.workers[w];
            worker.avg_bundle_tasks = Some(bundle_size_seen(worker.avg_bundle_tasks, len as usize));
            if let Some(length) = declared {
                worker.typical.declared(length);
            }
            // The cached answer serves: the worker's own (a bundle of this
            // batch admitted within the period), or its `cancels::watch`'s,
            // which asks about each batch it holds tasks not started of once
            // a period (counted in `renew`).
            let watched = worker.held.iter().any(|h| {
                h.claimed && !h.pending.is_empty() && self.queue.messages[h.msg].batch == batch
            });
            if !watched
                && worker.cancel_checked[batch].is_none_or(|t| self.now - t >= self.cancel_check)
            {
                worker.cancel_checked[batch] = Some(self.now);
                self.req.ledger_reads += 1;
            }
            // One claim after the other: each waits for the last.
            let done_at = self.ledger_write() + (free_at - self.now);
            free_at = done_at;
            let msg = &mut self.queue.messages[m];
            match msg.claim {
                Claim::Done => {
                    self.req.bundle_deletes += 1;
                    self.queue.delete(m);
                    continue;
                }
                Claim::Held {
                    worker: other,
                    until,
                } if other != w && until > self.now => {
                    // Held by a live worker: hide it until its lease would end.
                    msg.visibility += 1;
                    let generation = msg.visibility;
                    self.req.visibility_changes += 1;
                    self.at(until + SECOND, Ev::VisibilityEnds { msg: m, generation });
                    continue;
                }
                _ => {}
            }
            msg.attempt += 1;
            msg.claim = Claim::Held {
                worker: w,
                until: self.now + self.lease,
            };
            if msg.attempt > 1 {
                self.counters.taken_over += 1;
            }
            // The ledger's `Claim::Granted { done }`: the progress earlier
            // holders recorded stays in the row (a claimant that dies before
            // its first renewal leaves it for the next), and this holder
            // starts from it, running only the rest.
            let mut sent = msg.progress.clone();
            sent.resize(len as usize, false);
            let give_up = msg.attempt > max_claims;
            let first = msg.first;
            let pending: VecDeque<u32> = (0..len).filter(|&p| !sent[p as usize]).collect();
            let sent_count = len - pending.len() as u32;
            let mut held = Held {
                msg: m,
                claimed: false,
                pending,
                running: 0,
                unsent: 0,
                sent,
                sent_count,
            };
            if give_up {
                // Claimed too often: its tasks are reported failed, not run.
                let pending = std::mem::take(&mut held.pending);
                held.unsent = pending.len() as u32;
                held.claimed = true;
                let worker = &mut self.workers[w];
                for p in pending {
                    let item = ResultItem {
                        id: self.batches[batch].id_at(first + u64::from(p)),
                        took: 0,
                        ok: false,
                    };
                    worker.results.push((m, p, item));
                }
                self.hold(w, held);
                self.schedule_flush(w, true);
                continue;
            }
            self.hold(w, held);
            self.at(done_at, Ev::Claimed { w, msg: m });
        }
        self.at(free_at, Ev::FetcherFree(w));
    }

    pub fn claimed(&mut self, w: usize, msg: usize) {
        let state = self.workers[w].state;
        if state == WState::Gone {
            return;
        }
        let worker = &mut self.workers[w];
        let Some(held) = worker.held(msg) else { return };
        held.claimed = true;
        if state == WState::Draining {
            held.pending.clear();
            self.try_finish(w, msg);
            return;
        }
        let n = held.pending.len();
        worker.tasks_held += n;
        self.start_tasks(w);
    }

    /// Free slots take the next tasks of the bundles held, oldest first.
    fn start_tasks(&mut self, w: usize) {
        let max_attempts = self.cfg.worker.max_attempts.max(1);
        // Checked: finite, 0 to an hour.
        let backoff = Duration::from_secs_f64(self.cfg.worker.retry_backoff_seconds);
        let overhead = super::engine::us(self.cfg.worker.task_overhead_ms / 1000.0);
        loop {
            let messages = &self.queue.messages;
            let worker = &mut self.workers[w];
            if worker.free == 0 {
                return;
            }
            // A bundle of the priority lane first, as the worker's pool
            // dispatches them (`pool::dispatch`).
            let startable = |h: &Held| h.claimed && !h.pending.is_empty();
            let first = worker
                .held
                .iter()
                .position(|h| startable(h) && messages[h.msg].priority)
                .or_else(|| worker.held.iter().position(startable));
            let Some(i) = first else {
                return;
            };
            let held = &mut worker.held[i];
            let pos = held.pending.pop_front().expect("not empty");
            held.running += 1;
            worker.free -= 1;
            let msg = held.msg;
            let (batch, first) = {
                let m = &self.queue.messages[msg];
                (m.batch, m.first)
            };
            let id = self.batches[batch].id_at(first + u64::from(pos));
            if !self.batches[batch].first_start(id) {
                self.counters.reruns += 1;
            }
            // The worker retries a failing task in place, with backoff.
            let b = &self.batches[batch];
            let mut ran = 0;
            let mut attempt = 1;
            let (took, ok) = loop {
                let (took, fails) = b.task(id, attempt);
                ran += took + overhead;
                if !fails || attempt >= max_attempts {
                    break (took, !fails);
                }
                self.counters.failed_attempts += 1;
                ran += us(retry_delay(backoff, attempt).as_secs_f64());
                attempt += 1;
            };
            self.counters.task_starts += 1;
            self.busy(batch, 1);
            let result = ResultItem { id, took, ok };
            self.at(
                self.now + ran,
                Ev::TaskDone {
                    w,
                    msg,
                    pos,
                    result,
                    ran,
                },
            );
        }
    }

    pub fn task_done(&mut self, w: usize, msg: usize, pos: u32, result: ResultItem, _ran: T) {
        if self.workers[w].state == WState::Gone {
            return;
        }
        self.busy(self.queue.messages[msg].batch, -1);
        let worker = &mut self.workers[w];
        worker.free += 1;
        worker.tasks_held -= 1;
        if result.took > 0 {
            worker.typical.observe(Duration::from_micros(result.took));
        }
        let mut ended = false;
        if let Some(held) = worker.held(msg) {
            held.running -= 1;
            held.unsent += 1;
            ended = held.running == 0 && held.pending.is_empty();
        }
        worker.results.push((msg, pos, result));
        self.schedule_flush(w, ended);
        self.start_tasks(w);
        self.maybe_fetch(w);
    }

    /// A result gathered (`ended`: its bundle's last), as the completer
    /// takes it in: the flush is scheduled when `results_wait` says.
    fn schedule_flush(&mut self, w: usize, ended: bool) {
        let now = self.now;
        let worker = &mut self.workers[w];
        let first = !worker.flushing;
        if first {
            worker.flushing = true;
            worker.gather_from = now;
            worker.bundle_ended = false;
            worker.due_now = false;
        }
        worker.bundle_ended |= ended;
        let waited = Duration::from_micros(now - worker.gather_from);
        let linger = Duration::from_micros(self.linger);
        let wait = results_wait(waited, worker.results.len(), worker.bundle_ended, linger);
        // Only when the flush moves: at the first result, and when it is due now.
        if first || (wait.is_zero() && !worker.due_now) {
            worker.due_now = wait.is_zero();
            worker.flush_seq += 1;
            let seq = worker.flush_seq;
            let at = now + u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
            self.at(at, Ev::Flush { w, seq });
        }
    }

    /// The gather is over: one message per bundle, sent in batches of ten
    /// per response queue.
    pub fn flush(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        worker.flushing = false;
        if worker.state == WState::Gone {
            return;
        }
        let mut results = std::mem::take(&mut worker.results);
        // Grouped by bundle, in the order their first result came.
        results.sort_by_key(|&(msg, _, _)| msg);
        let mut by_batch: Vec<Vec<Vec<ResultItem>>> = vec![Vec::new(); self.batches.len()];
        let mut items = Vec::with_capacity(results.len());
        let mut last = None;
        for (msg, pos, r) in results {
            let messages = &mut by_batch[self.queue.messages[msg].batch];
            if last != Some(msg) {
                messages.push(Vec::new());
                last = Some(msg);
            }
            messages.last_mut().expect("pushed").push(r);
            items.push((msg, pos));
        }
        let arrive = self.now + self.lat_sqs;
        for (b, messages) in by_batch.into_iter().enumerate() {
            if !messages.is_empty() {
                self.req.results_sends += messages.len().div_ceil(10) as u64;
                self.at(arrive, Ev::ResultsArrive { b, messages });
            }
        }
        self.at(arrive, Ev::FlushDone { w, items });
    }

    /// The results are sent: they count in the bundles' progress; bundles
    /// whose every result is sent are completed (ledger, then one delete
    /// batch).
    pub fn flush_done(&mut self, w: usize, items: Vec<(usize, u32)>) {
        if self.workers[w].state == WState::Gone {
            return;
        }
        let mut touched = Vec::new();
        for (msg, pos) in items {
            if let Some(held) = self.workers[w].held(msg) {
                if !held.sent[pos as usize] {
                    held.sent[pos as usize] = true;
                    held.sent_count += 1;
                }
                held.unsent -= 1;
                if !touched.contains(&msg) {
                    touched.push(msg);
                }
            }
        }
        let mut completed = 0;
        for msg in touched {
            completed += u64::from(self.try_finish(w, msg));
        }
        self.req.bundle_deletes += completed.div_ceil(10);
        self.maybe_fetch(w);
        self.check_drained(w);
    }

    /// A bundle with nothing left to run or send leaves: completed when every
    /// result was sent (returns true), else given back with its progress.
    fn try_finish(&mut self, w: usize, msg: usize) -> bool {
        let worker = &mut self.workers[w];
        let Some(i) = worker.held.iter().position(|h| h.msg == msg) else {
            return false;
        };
        let h = &worker.held[i];
        if !h.claimed || !h.pending.is_empty() || h.running > 0 || h.unsent > 0 {
            return false;
        }
        let held = worker.held.remove(i);
        // Turned idle: its heartbeat row goes at once.
        self.heartbeat_look(w);
        let len = self.queue.messages[msg].len;
        if held.sent_count >= len {
            // The ledger's `complete`, on the holder's claim only: one that
            // lost it (another worker took the bundle over) leaves the
            // bundle to the new holder and deletes nothing.
            self.ledger_write();
            if !self.holds_claim(w, msg) {
                return false;
            }
            let m = &mut self.queue.messages[msg];
            m.claim = Claim::Done;
            self.queue.delete(msg);
            true
        } else {
            self.give_back(w, msg, held.sent);
            false
        }
    }

    /// Whether `w` holds `msg`'s claim in the ledger: the condition of the
    /// ledger's `renew`, `complete` and `release` (its owner, running; the
    /// lease may have run out, as long as no one took the bundle over).
    fn holds_claim(&self, w: usize, msg: usize) -> bool {
        matches!(self.queue.messages[msg].claim, Claim::Held { worker, .. } if worker == w)
    }

    /// Releases `w`'s claim with its progress (not an attempt) and makes the
    /// message visible at once. A claim taken over since is not `w`'s to
    /// release (the ledger's conditional write fails), and its receipt,
    /// older than the new holder's receive, changes nothing either.
    fn give_back(&mut self, w: usize, msg: usize, progress: Vec<bool>) {
        self.ledger_write();
        if !self.holds_claim(w, msg) {
            self.req.visibility_changes += 1;
            return;
        }
        self.counters.given_back += 1;
        let m = &mut self.queue.messages[msg];
        m.claim = Claim::Free;
        m.attempt = m.attempt.saturating_sub(1);
        m.progress = progress;
        if m.state == MsgState::InFlight {
            self.req.visibility_changes += 1;
            if self.queue.make_visible(msg, self.cfg.aws.max_receives) {
                self.serve_pollers();
            }
        }
    }

    /// Every third of the lease: each claim renewed with its progress, each
    /// message's visibility extended.
    pub fn renew(&mut self, w: usize) {
        if self.workers[w].state == WState::Gone {
            return;
        }
        let claimed: Vec<(usize, Vec<bool>)> = self.workers[w]
            .held
            .iter()
            .filter(|h| h.claimed)
            .map(|h| (h.msg, h.sent.clone()))
            .collect();
        // The worker's `cancels::watch` asks the ledger every
        // `cancel_check` whether each batch of `batches_to_watch` was
        // cancelled: counted here for the period since the last renewal, for
        // the bundles held now (claimed: what the worker's `InFlight` holds;
        // an event per check and worker would add nothing else).
        let batches = self.watched(w);
        let worker = &mut self.workers[w];
        let span = self.renew_every;
        let polls = ticks(&mut worker.cancel_poll_rest, span, self.cancel_check);
        self.req.ledger_reads += polls * batches.len() as u64;
        if polls > 0 {
            // Its answers are cached for a bundle's admission too.
            for &batch in &batches {
                worker.cancel_checked[batch] = Some(self.now);
            }
        }
        // The visibilities in one go: `TaskQueue::extend_all`, 10 a request.
        self.req.visibility_changes += claimed.len().div_ceil(SQS_MAX_BATCH_ENTRIES) as u64;
        for (msg, progress) in claimed {
            self.ledger_write();
            // The ledger's renewal is on its holder's claim only; one taken
            // over is the new holder's (this one runs on and finds it out at
            // the completion), and this worker's receipt no longer extends
            // the message.
            if !self.holds_claim(w, msg) {
                continue;
            }
            let until = self.now + self.lease;
            let m = &mut self.queue.messages[msg];
            m.claim = Claim::Held { worker: w, until };
            m.progress = progress;
            m.visibility += 1;
            let generation = m.visibility;
            self.at(until, Ev::VisibilityEnds { msg, generation });
        }
        self.heartbeat_look(w);
        self.at(self.now + self.renew_every, Ev::Renew(w));
    }

    /// SIGTERM: no more receives, tasks not started given back at once,
    /// running ones finish within the grace.
    pub fn drain(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        match worker.state {
            WState::Gone | WState::Draining => return,
            WState::Starting => {
                worker.state = WState::Gone;
                worker.gone_at = Some(self.now);
                self.live -= 1;
                return;
            }
            WState::Ready => {}
        }
        worker.state = WState::Draining;
        worker.poll_seq += 1;
        let mut msgs = Vec::new();
        for h in &mut worker.held {
            if h.claimed {
                worker.tasks_held -= h.pending.len().min(worker.tasks_held);
            }
            h.pending.clear();
            msgs.push(h.msg);
        }
        for msg in msgs {
            self.try_finish(w, msg);
        }
        self.at(self.now + self.grace, Ev::GraceEnds(w));
        self.check_drained(w);
    }

    /// The grace is over: running tasks are abandoned, their bundles given
    /// back with what was sent.
    pub fn grace_ends(&mut self, w: usize) {
        if self.workers[w].state != WState::Draining {
            return;
        }
        let held = std::mem::take(&mut self.workers[w].held);
        for h in held {
            self.counters.abandoned += u64::from(h.running);
            self.busy(self.queue.messages[h.msg].batch, -i64::from(h.running));
            if h.claimed {
                self.give_back(w, h.msg, h.sent);
            }
        }
        self.gone(w);
    }

    fn check_drained(&mut self, w: usize) {
        let worker = &self.workers[w];
        if worker.state == WState::Draining
            && worker.held.is_empty()
            && worker.results.is_empty()
            && !worker.flushing
        {
            self.gone(w);
        }
    }

    /// Killed outright: what it held waits for the lease and visibility.
    pub fn kill(&mut self, w: usize) {
        let held = std::mem::take(&mut self.workers[w].held);
        for h in held {
            self.counters.abandoned += u64::from(h.running);
            self.busy(self.queue.messages[h.msg].batch, -i64::from(h.running));
        }
        self.gone(w);
    }

    fn gone(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        if worker.state == WState::Gone {
            return;
        }
        worker.state = WState::Gone;
        worker.gone_at = Some(self.now);
        worker.results.clear();
        self.live -= 1;
    }
}

/// How many times something done every `every` falls in `span` more, with
/// `rest` the time since it last did (carried from call to call).
fn ticks(rest: &mut T, span: T, every: T) -> u64 {
    let elapsed = span + *rest;
    *rest = elapsed % every;
    elapsed / every
}
