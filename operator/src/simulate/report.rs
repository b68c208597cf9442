//! What a run measured, and its text form.

use std::fmt::Write as _;
use std::time::Duration;

use super::config::SimConfig;
use super::engine::{Counters, Requests, SECOND, Sample, Sim, secs};

#[derive(Clone, Debug)]
pub struct BatchReport {
    pub name: String,
    pub weight: u64,
    pub tasks: u64,
    pub collected: u64,
    pub failed: u64,
    pub duplicates: u64,
    pub bundles: u64,
    pub resizes: u64,
    pub arrived: f64,
    pub done: Option<f64>,
    /// Its part of the slot-time the pool ran tasks while all batches sent
    /// (the slots its tasks held), and its weight's part.
    pub share: Option<f64>,
    pub share_target: f64,
}

impl BatchReport {
    /// Relative error of its share: 0.1 is 10 % over its part.
    pub fn share_error(&self) -> Option<f64> {
        self.share.map(|s| s / self.share_target - 1.0)
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub name: String,
    pub seed: u64,
    pub wall: Duration,
    pub events: u64,
    pub tasks: u64,
    pub collected: u64,
    /// From the first batch's arrival to the last one's last result.
    pub makespan: Option<f64>,
    /// Start-up delay plus the tasks' work spread over every slot of the
    /// pool; for batches arriving apart, the most of that from each
    /// arrival on (see `ideal_and_longest`).
    pub ideal: f64,
    /// Start-up plus the longest task (from its batch's arrival): no
    /// schedule beats it either.
    pub longest_bound: f64,
    /// The tasks in their order (batch after batch, as they arrive) on the
    /// first free slot of `max` workers from the start-up on, with no
    /// overhead of any kind: what a scheduler that cannot know task lengths
    /// does at best.
    pub list_bound: f64,
    pub slots: u32,
    pub max_workers: i32,
    pub peak_workers: u64,
    pub workers_started: u64,
    pub worker_seconds: f64,
    pub busy_slot_seconds: f64,
    /// Worker-seconds paid after the queue last handed out a bundle, idle.
    pub tail_idle_worker_seconds: f64,
    /// When the last worker was gone.
    pub end: f64,
    pub requests: Requests,
    pub request_dollars: f64,
    pub worker_dollars: f64,
    pub counters: Counters,
    pub dead_lettered_tasks: u64,
    /// Starts of a task beyond its first (failed attempts retried in place
    /// not counted).
    pub reruns: u64,
    /// What the scheduler promises: per crashed worker slots × ((lease/3 +
    /// linger) ÷ task length + 2) (what finished since the last renewal, or
    /// before it with its results still lingering, and what ran), per
    /// drained one the slots running at the grace's end.
    pub rerun_bound: u64,
    pub batches: Vec<BatchReport>,
    pub share_stretch: Option<(f64, f64)>,
    /// Why the shares were not measured, when they were not.
    pub share_unmeasured: Option<&'static str>,
    pub samples: Vec<Sample>,
}

/// When the pool's slots can first take work, in seconds after the first
/// arrival: the start-up, less what a pool with `min` workers (started at
/// the simulation's start) has already waited by the first arrival.
fn slots_ready(cfg: &SimConfig, first: u64) -> f64 {
    let startup = cfg.worker.startup_seconds;
    if cfg.pool.min > 0 {
        (startup - secs(first)).max(0.0)
    } else {
        startup
    }
}

/// Each batch's arrival after the first one's (seconds), its work with the
/// per-task overhead, and its longest task, in arrival order.
fn arrivals(sim: &Sim<'_>, cfg: &SimConfig, first: u64) -> Vec<(f64, f64, f64)> {
    let overhead = cfg.worker.task_overhead_ms / 1000.0;
    let mut a: Vec<(f64, f64, f64)> = sim
        .batches
        .iter()
        .map(|b| {
            let at = secs(b.arrived.unwrap_or(first).saturating_sub(first));
            (at, b.done_work + b.total as f64 * overhead, b.longest)
        })
        .collect();
    a.sort_by(|x, y| x.0.total_cmp(&y.0));
    a
}

/// No schedule ends sooner than, for each batch k in arrival order, the
/// slots ready and batch k arrived, plus the work of k and every later
/// batch over every slot (the ideal), or plus one task of those batches
/// (the longest task's bound). A single batch: start-up + work / slots.
fn ideal_and_longest(sim: &Sim<'_>, cfg: &SimConfig, first: u64, slots: f64) -> (f64, f64) {
    let ready = slots_ready(cfg, first);
    let a = arrivals(sim, cfg, first);
    let (mut ideal, mut longest, mut work_after) = (ready, ready, 0.0);
    for &(at, work, long) in a.iter().rev() {
        work_after += work;
        let start = at.max(ready);
        ideal = f64::max(ideal, start + work_after / slots);
        longest = f64::max(longest, start + long);
    }
    (ideal, longest)
}

/// The makespan (seconds, from the first arrival) of list scheduling: every
/// task, batch after batch in arrival order, each in its send order, on the
/// slot that frees first, from when the slots are ready and its batch has
/// arrived.
fn list_schedule(sim: &Sim<'_>, slots: usize, cfg: &SimConfig, first: u64) -> f64 {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let us = super::engine::us;
    let overhead = us(cfg.worker.task_overhead_ms / 1000.0);
    let ready = us(slots_ready(cfg, first));
    let mut free: BinaryHeap<Reverse<u64>> = (0..slots.max(1)).map(|_| Reverse(ready)).collect();
    let mut order: Vec<_> = sim.batches.iter().collect();
    order.sort_by_key(|b| b.arrived.unwrap_or(first));
    let mut end = ready;
    for b in order {
        let arrived = b.arrived.unwrap_or(first).saturating_sub(first);
        for id in b.ids_in_order() {
            let Reverse(at) = free.pop().expect("a slot");
            let done = at.max(arrived) + b.task(id, 1).0 + overhead;
            end = end.max(done);
            free.push(Reverse(done));
        }
    }
    secs(end)
}

impl Report {
    /// The run's figures; `wall` is the caller's to set.
    pub fn from_sim(sim: &Sim<'_>, cfg: &SimConfig) -> Self {
        let tasks: u64 = sim.batches.iter().map(|b| b.total).sum();
        let collected: u64 = sim.batches.iter().map(|b| b.finished).sum();
        let first = sim
            .batches
            .iter()
            .filter_map(|b| b.arrived)
            .min()
            .unwrap_or(0);
        let makespan = sim
            .batches
            .iter()
            .map(|b| b.done_at)
            .collect::<Option<Vec<_>>>()
            .and_then(|d| d.into_iter().max())
            .map(|last| secs(last - first));
        let slots = cfg.pool.threads;
        let pool_slots = f64::from(slots) * f64::from(cfg.pool.max);
        let (ideal, longest_bound) = ideal_and_longest(sim, cfg, first, pool_slots);
        let c = sim.counters;
        let worker_seconds = c.paid as f64 / SECOND as f64;
        let busy_slot_seconds = c.busy as f64 / SECOND as f64;
        let tail_paid = (c.paid - c.paid_at_last_receive.min(c.paid)) as f64 / SECOND as f64;
        let tail_busy = (c.busy - c.busy_at_last_receive.min(c.busy)) as f64 / SECOND as f64;
        let r = sim.req;
        let aws = &cfg.aws;
        let request_dollars = r.dollars(aws);
        let weights: u64 = sim.batches.iter().map(|b| b.weight).sum();
        let share = match (&sim.share_from, &sim.share_to) {
            (Some((_, from)), Some((_, to))) => {
                let d: Vec<f64> = from.iter().zip(to).map(|(a, b)| b - a).collect();
                let all: f64 = d.iter().sum();
                (all > 0.0).then(|| d.iter().map(|x| x / all).collect::<Vec<_>>())
            }
            _ => None,
        };
        let share_unmeasured = if share.is_some() {
            None
        } else if sim.batches.len() < 2 {
            Some("a single batch: no share to measure")
        } else if sim.shares_never_together {
            Some("batches never all ran at once")
        } else if sim.share_from.is_none() {
            Some("the batches had not all arrived by the time limit")
        } else if sim.share_to.is_none() {
            Some("no batch had sent all its tasks by the time limit")
        } else {
            Some("no task ran while all batches sent")
        };
        let batches = sim
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| BatchReport {
                name: b.name.clone(),
                weight: b.weight,
                tasks: b.total,
                collected: b.finished,
                failed: b.failed,
                duplicates: b.duplicates,
                bundles: b.bundles,
                resizes: b.resizes,
                arrived: secs(b.arrived.unwrap_or(0)),
                done: b.done_at.map(secs),
                share: share.as_ref().map(|s| s[i]),
                share_target: b.weight as f64 / weights.max(1) as f64,
            })
            .collect();
        let mean = sim
            .batches
            .iter()
            .map(|b| b.durations.mean() * b.total as f64)
            .sum::<f64>()
            / tasks.max(1) as f64;
        let unreported = secs(sim.renew_every) + cfg.worker.linger_ms / 1000.0;
        let per_crash = f64::from(slots) * (unreported / mean.max(1e-6) + 2.0);
        let rerun_bound = (c.crashes as f64 * per_crash).ceil() as u64 + c.spot * u64::from(slots);
        let dead_lettered_tasks = sim
            .queue
            .messages
            .iter()
            .filter(|m| m.state == super::queue::MsgState::DeadLettered)
            .map(|m| u64::from(m.len))
            .sum();
        let list_bound = list_schedule(sim, pool_slots as usize, cfg, first);
        Report {
            name: cfg.name.clone(),
            seed: cfg.seed,
            wall: Duration::ZERO,
            events: sim.events,
            tasks,
            collected,
            makespan,
            ideal,
            longest_bound,
            list_bound,
            slots,
            max_workers: cfg.pool.max,
            peak_workers: sim.samples.iter().map(|s| s.workers).max().unwrap_or(0),
            workers_started: c.workers_started,
            worker_seconds,
            busy_slot_seconds,
            tail_idle_worker_seconds: (tail_paid - tail_busy / f64::from(slots)).max(0.0),
            // A worker still there (a pool's `min`, a run cut by the time
            // limit) is there at the end.
            end: sim
                .workers
                .iter()
                .map(|w| w.gone_at)
                .collect::<Option<Vec<_>>>()
                .and_then(|gone| gone.into_iter().max())
                .map_or(secs(sim.now), secs),
            requests: r,
            request_dollars,
            worker_dollars: worker_seconds / 3600.0 * aws.worker_per_hour,
            counters: c,
            dead_lettered_tasks,
            reruns: c.reruns,
            rerun_bound,
            batches,
            share_stretch: sim
                .share_from
                .as_ref()
                .zip(sim.share_to.as_ref())
                .map(|((a, _), (b, _))| (secs(*a), secs(*b))),
            share_unmeasured,
            samples: sim.samples.clone(),
        }
    }

    /// The most ledger writes a second between two samples, and when that
    /// sample ended: the write capacity a provisioned table needs for this
    /// run not to be throttled (DynamoDB's burst credit aside).
    pub fn peak_ledger_writes_per_second(&self) -> (f64, f64) {
        self.peak_ledger_writes_per_second_from(0.0)
    }

    /// The same over the samples from `start` s on.
    pub fn peak_ledger_writes_per_second_from(&self, start: f64) -> (f64, f64) {
        self.samples
            .windows(2)
            .filter(|w| w[0].t >= start && w[1].t > w[0].t)
            .map(|w| {
                let rate = (w[1].ledger_writes - w[0].ledger_writes) as f64 / (w[1].t - w[0].t);
                (rate, w[1].t)
            })
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
    }

    pub fn requests_per_task(&self) -> f64 {
        self.requests.total() as f64 / self.tasks.max(1) as f64
    }

    pub fn idle_worker_seconds(&self) -> f64 {
        (self.worker_seconds - self.busy_slot_seconds / f64::from(self.slots)).max(0.0)
    }

    pub fn tail_idle_fraction(&self) -> f64 {
        self.tail_idle_worker_seconds / self.worker_seconds.max(1e-9)
    }

    /// The ideal over the makespan (the seed papers' efficiency).
    pub fn efficiency(&self) -> Option<f64> {
        self.makespan.map(|m| self.ideal / m)
    }

    /// The largest share error among the batches, when measured.
    pub fn worst_share_error(&self) -> Option<f64> {
        self.batches
            .iter()
            .filter_map(BatchReport::share_error)
            .map(f64::abs)
            .max_by(f64::total_cmp)
    }

    /// Each target with its figure and whether it is met.
    pub fn checks(&self, targets: &super::config::Targets) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        if let Some(t) = targets.makespan_over_ideal {
            let ratio = self.makespan.map(|m| m / self.ideal);
            out.push((
                format!(
                    "makespan / ideal {} (target <= {t:.3})",
                    ratio.map_or("n/a".into(), |r| format!("{r:.3}"))
                ),
                ratio.is_some_and(|r| r <= t),
            ));
        }
        if let Some(t) = targets.makespan_over_list_bound {
            let ratio = self.makespan.map(|m| m / self.list_bound);
            out.push((
                format!(
                    "makespan / list-schedule bound {} (target <= {t:.3})",
                    ratio.map_or("n/a".into(), |r| format!("{r:.3}"))
                ),
                ratio.is_some_and(|r| r <= t),
            ));
        }
        if let Some(t) = targets.requests_per_task {
            let r = self.requests_per_task();
            out.push((
                format!("AWS requests per task {r:.4} (target <= {t})"),
                r <= t,
            ));
        }
        if let Some(t) = targets.tail_idle_fraction {
            let r = self.tail_idle_fraction();
            out.push((
                format!(
                    "idle worker-seconds at the tail {:.2} % (target <= {:.0} %)",
                    100.0 * r,
                    100.0 * t
                ),
                r <= t,
            ));
        }
        if let Some(t) = targets.share_error {
            let e = self.worst_share_error();
            out.push((
                format!(
                    "worst fair-share error {} (target <= {:.0} %)",
                    e.map_or_else(
                        || format!("n/a ({})", self.share_unmeasured.unwrap_or("not measured")),
                        |e| format!("{:.1} %", 100.0 * e)
                    ),
                    100.0 * t
                ),
                e.is_some_and(|e| e <= t),
            ));
        }
        if let Some(t) = targets.wall_seconds {
            let w = self.wall.as_secs_f64();
            out.push((format!("wall time {w:.1} s (target <= {t} s)"), w <= t));
        }
        out
    }

    pub fn text(&self, targets: &super::config::Targets) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "simulation {} (seed {}): {} tasks, {} workers x {} slots at most",
            self.name, self.seed, self.tasks, self.max_workers, self.slots
        );
        let lost = self.tasks - self.collected.min(self.tasks);
        let _ = writeln!(
            s,
            "  tasks collected {} of {} ({} lost, {} failed, {} duplicate results dropped, {} in dead-lettered bundles, {} of them reported failed from there)",
            self.collected,
            self.tasks,
            lost,
            self.batches.iter().map(|b| b.failed).sum::<u64>(),
            self.batches.iter().map(|b| b.duplicates).sum::<u64>(),
            self.dead_lettered_tasks,
            self.counters.dead_letter_failed
        );
        match self.makespan {
            Some(m) => {
                let _ = writeln!(
                    s,
                    "  makespan {m:.1} s, ideal {:.1} s ({:.3}x; start-up + work / slots), longest task bound {:.1} s; efficiency {:.1} %",
                    self.ideal,
                    m / self.ideal,
                    self.longest_bound,
                    100.0 * self.ideal / m
                );
                let _ = writeln!(
                    s,
                    "  list-schedule bound {:.1} s ({:.3}x; the tasks in order on the first free slot, no overhead): the scheduler's own cost",
                    self.list_bound,
                    m / self.list_bound
                );
            }
            None => {
                let _ = writeln!(s, "  NOT FINISHED by the time limit");
            }
        }
        let idle = self.idle_worker_seconds();
        let _ = writeln!(
            s,
            "  workers: {} started, peak {}; {:.0} worker-s paid, {:.0} idle ({:.1} %), {:.0} idle at the tail ({:.2} %); last gone at {:.1} s",
            self.workers_started,
            self.peak_workers,
            self.worker_seconds,
            idle,
            100.0 * idle / self.worker_seconds.max(1e-9),
            self.tail_idle_worker_seconds,
            100.0 * self.tail_idle_fraction(),
            self.end
        );
        let r = &self.requests;
        let peak_writes = self.peak_ledger_writes_per_second();
        let _ = writeln!(
            s,
            "  AWS requests {} = {:.4} per task, ${:.2} (+ ${:.2} of workers): bundles send {} / receive {} / delete {} / visibility {}; results send {} / receive {} / delete {}; DynamoDB writes {} (+{} throttled retries, not billed; at most {:.0} asked for a second, over the sample to {:.0} s), reads {}, workers' heartbeat rows {}; the operator's queue attributes {}, dead-letter receives {}, lane looks {}, heartbeat scans {}",
            r.total(),
            self.requests_per_task(),
            self.request_dollars,
            self.worker_dollars,
            r.bundle_sends,
            r.bundle_receives,
            r.bundle_deletes,
            r.visibility_changes,
            r.results_sends,
            r.results_receives,
            r.results_deletes,
            r.ledger_writes,
            r.ledger_throttled,
            peak_writes.0,
            peak_writes.1,
            r.ledger_reads,
            r.heartbeat_rows,
            r.queue_attributes,
            r.dead_letter_receives,
            r.lane_looks,
            r.heartbeat_scans
        );
        let c = &self.counters;
        let _ = writeln!(
            s,
            "  disruptions: {} spot interruptions, {} crashes; re-runs {} (bound {}), {} running tasks abandoned, {} bundles given back, {} taken over; {} failed attempts retried",
            c.spot,
            c.crashes,
            self.reruns,
            self.rerun_bound,
            c.abandoned,
            c.given_back,
            c.taken_over,
            c.failed_attempts
        );
        if c.disruptions_deferred > 0 {
            let _ = writeln!(
                s,
                "  {} disruptions found no ready worker and waited for one; {} were still waiting at the end (not carried out)",
                c.disruptions_deferred, c.disruptions_missed
            );
        }
        for b in &self.batches {
            let share = match (b.share, b.share_error()) {
                (Some(p), Some(e)) => format!(
                    "; share {:.1} % of the slot-time for {:.1} % ({:+.1} %)",
                    100.0 * p,
                    100.0 * b.share_target,
                    100.0 * e
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "  batch {} (weight {}): {}/{} tasks in {} bundles ({} re-cuts), arrived {:.1} s, done {}{share}",
                b.name,
                b.weight,
                b.collected,
                b.tasks,
                b.bundles,
                b.resizes,
                b.arrived,
                b.done.map_or("never".into(), |d| format!("{d:.1} s"))
            );
        }
        match (self.share_stretch, self.share_unmeasured) {
            (Some((a, b)), None) => {
                let _ = writeln!(
                    s,
                    "  shares measured while all batches sent: {a:.1} s to {b:.1} s"
                );
            }
            (_, Some(why)) if self.batches.len() > 1 => {
                let _ = writeln!(s, "  shares not measured: {why}");
            }
            _ => {}
        }
        let _ = writeln!(
            s,
            "  simulated {} events in {:.2} s of wall time",
            self.events,
            self.wall.as_secs_f64()
        );
        for (what, met) in self.checks(targets) {
            let _ = writeln!(s, "  [{}] {what}", if met { "met" } else { "NOT MET" });
        }
        s
    }
}

#[cfg(test)]
mod bound_tests {
    use super::super::{SimConfig, simulate};

    /// One worker of 2 slots, there from the start and up 10 s after it,
    /// running `batches` (YAML list items).
    fn one_worker_of_two_slots(batches: &str) -> SimConfig {
        SimConfig::parse(&format!(
            "pool: {{ min: 1, max: 1, threads: 2 }}\n\
             worker: {{ startupSeconds: 10, startupJitterSeconds: 0, taskOverheadMs: 0 }}\n\
             batches:\n{batches}"
        ))
        .unwrap()
    }

    /// One worker of 2 slots, up 10 s after the start; batch `a` (4 tasks
    /// of 1 s) arrives at once and `b` (the same) 100 s later: nothing ends
    /// before b's 4 s of work on 2 slots from its arrival, 102 s.
    #[test]
    fn the_bounds_of_batches_arriving_apart_start_at_each_arrival() {
        let cfg = one_worker_of_two_slots(
            "  - { name: a, tasks: 4, declared: true, durations: { kind: fixed, seconds: 1 } }
  - { name: b, tasks: 4, declared: true, arrivalSeconds: 100, durations: { kind: fixed, seconds: 1 } }",
        );
        let report = simulate(&cfg);
        assert_eq!(report.collected, 8);
        let close = |x: f64, want: f64| (x - want).abs() < 1e-6;
        // Not 10 s + 8 s of work / 2 slots = 14 s, which the run could
        // never come near.
        assert!(close(report.ideal, 102.0), "ideal {}", report.ideal);
        assert!(
            close(report.list_bound, 102.0),
            "list {}",
            report.list_bound
        );
        assert!(
            close(report.longest_bound, 101.0),
            "longest {}",
            report.longest_bound
        );
        let makespan = report.makespan.unwrap();
        assert!(
            makespan >= report.ideal - 1e-6,
            "{makespan} < {}",
            report.ideal
        );
        assert!(report.efficiency().unwrap() <= 1.0);
    }

    /// A pool whose `min` workers were up long before the first arrival
    /// owes no start-up from it.
    #[test]
    fn workers_up_before_the_first_arrival_owe_no_start_up() {
        let cfg = one_worker_of_two_slots(
            "  - { name: a, tasks: 4, declared: true, arrivalSeconds: 300, durations: { kind: fixed, seconds: 1 } }",
        );
        let report = simulate(&cfg);
        assert!((report.ideal - 2.0).abs() < 1e-6, "ideal {}", report.ideal);
        assert!(report.makespan.unwrap() >= report.ideal - 1e-6);
    }
}
