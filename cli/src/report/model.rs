//! What a report shows, aggregated from results as they are read: counts, a
//! timeline per worker slot, throughput over time, latency histograms and the
//! failures. Its size is bounded whatever the number of results: past
//! [`TIMELINE_TASKS_MAX`] tasks, or on more than [`TIMELINE_ROWS_MAX`]
//! slots, the timeline is a grid of busy fractions, and
//! the failures table keeps the first [`FAILURES_SHOWN`] failures.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use cloudkon_core::{Outcome, TaskResult};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Up to this many tasks (on at most [`TIMELINE_ROWS_MAX`] slots), the
/// timeline draws each task; past it, a grid.
pub const TIMELINE_TASKS_MAX: usize = 10_000;
/// Columns of the timeline grid (time bins).
pub const TIMELINE_BINS: usize = 300;
/// Rows of the timeline: more slots than this share rows.
pub const TIMELINE_ROWS_MAX: usize = 128;
/// Bars of the throughput chart, at most.
pub const THROUGHPUT_BINS_MAX: usize = 150;
/// Failures listed one by one (the first ones read); all are counted.
pub const FAILURES_SHOWN: usize = 1_000;
/// Distinct failure reasons counted; others are counted as "other reasons".
pub const REASONS_MAX: usize = 1_000;
/// Reasons listed, the most frequent first.
pub const REASONS_SHOWN: usize = 20;
/// Characters of a failed task's stderr shown (its end).
const STDERR_SHOWN: usize = 300;
/// Characters of a failure reason shown (its beginning).
const REASON_SHOWN: usize = 300;
/// Bins of a latency histogram per power of ten.
const BINS_PER_DECADE: f64 = 5.0;

/// A task's status, as a small number (the page's colours are indexed by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded = 0,
    Failed = 1,
    TimedOut = 2,
}

impl Status {
    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Succeeded => Status::Succeeded,
            Outcome::Failed { .. } => Status::Failed,
            Outcome::TimedOut => Status::TimedOut,
        }
    }
}

/// One task, as much as the timeline needs of it.
#[derive(Clone, Copy, Debug)]
struct Span {
    id: u64,
    started: u64,
    finished: u64,
    /// None for a result that ran on no slot.
    lane: Option<u32>,
    status: Status,
}

/// A results file's worker field, `WORKER/SLOT` (a result without a slot,
/// such as a bundle given up, has the worker alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane<'a> {
    pub worker: &'a str,
    pub slot: Option<u32>,
}

impl<'a> Lane<'a> {
    pub fn parse(field: &'a str) -> Self {
        match field.rsplit_once('/') {
            Some((worker, slot)) => match slot.parse() {
                Ok(slot) => Lane {
                    worker,
                    slot: Some(slot),
                },
                Err(_) => Lane {
                    worker: field,
                    slot: None,
                },
            },
            None => Lane {
                worker: field,
                slot: None,
            },
        }
    }
}

/// Natural order of lanes: by worker, then slot number (slot 10 after slot 9).
fn lane_order(a: &str, b: &str) -> Ordering {
    let (a, b) = (Lane::parse(a), Lane::parse(b));
    a.worker.cmp(b.worker).then(a.slot.cmp(&b.slot))
}

/// A failed or timed-out task, for the failures table.
#[derive(Clone, Debug, Serialize)]
pub struct FailureRow {
    pub id: u64,
    pub attempt: u32,
    pub worker: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub reason: String,
    /// The end of its stderr.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// Reads results one at a time.
#[derive(Debug)]
pub struct Collector {
    spans: Vec<Span>,
    /// Worker slots (`WORKER/SLOT`) → lane.
    lanes: HashMap<Arc<str>, u32>,
    no_slot: u64,
    batches: Vec<String>,
    first_submitted: u64,
    last_finished: u64,
    succeeded: u64,
    failed: u64,
    timed_out: u64,
    retried: u64,
    busy_us: u128,
    queue_wait: Histogram<u64>,
    run_time: Histogram<u64>,
    end_to_end: Histogram<u64>,
    failures: Vec<FailureRow>,
    reasons: HashMap<String, u64>,
    other_reasons: u64,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 year, three significant digits: constant memory.
    Histogram::new_with_bounds(1, 365 * 24 * 3600 * 1_000_000, 3).expect("valid bounds")
}

impl Collector {
    pub fn new() -> Self {
        Self {
            spans: Vec::new(),
            lanes: HashMap::new(),
            no_slot: 0,
            batches: Vec::new(),
            first_submitted: u64::MAX,
            last_finished: 0,
            succeeded: 0,
            failed: 0,
            timed_out: 0,
            retried: 0,
            busy_us: 0,
            queue_wait: histogram(),
            run_time: histogram(),
            end_to_end: histogram(),
            failures: Vec::new(),
            reasons: HashMap::new(),
            other_reasons: 0,
        }
    }

    pub fn add(&mut self, result: &TaskResult) {
        let status = Status::of(&result.outcome);
        match status {
            Status::Succeeded => self.succeeded += 1,
            Status::Failed => self.failed += 1,
            Status::TimedOut => self.timed_out += 1,
        }
        if result.attempt > 1 {
            self.retried += 1;
        }
        if !self.batches.iter().any(|b| b == result.batch.as_str()) && self.batches.len() < 20 {
            self.batches.push(result.batch.to_string());
        }
        // Only a slot is a lane. A result the operator wrote for a task
        // that ran nowhere (lost, dead-lettered, its bundle given up) names
        // no slot: a lane for it would add an idle slot to the timeline and
        // lower the slots' busy share.
        let lane = Lane::parse(&result.worker).slot.map(|_| {
            let next = u32::try_from(self.lanes.len()).unwrap_or(u32::MAX);
            *self.lanes.entry(result.worker.clone()).or_insert(next)
        });
        // Clocks of different machines may disagree: a task never ends
        // before it starts, nor starts before it was submitted, here.
        let started = result.started.0.max(result.submitted.0);
        let finished = result.finished.0.max(started);
        self.first_submitted = self.first_submitted.min(result.submitted.0);
        self.last_finished = self.last_finished.max(finished);
        if lane.is_some() {
            self.busy_us += u128::from(finished - started);
        } else {
            self.no_slot += 1;
        }
        self.spans.push(Span {
            id: result.id,
            started,
            finished,
            lane,
            status,
        });
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.queue_wait
            .saturating_record(micros(result.queue_wait()));
        self.run_time.saturating_record(micros(result.run_time()));
        self.end_to_end
            .saturating_record(micros(result.end_to_end()));
        if status != Status::Succeeded {
            let reason = match &result.outcome {
                Outcome::Failed { reason } => reason.as_str(),
                _ => "timed out",
            };
            let reason = head(reason, REASON_SHOWN);
            if let Some(n) = self.reasons.get_mut(reason.as_ref()) {
                *n += 1;
            } else if self.reasons.len() < REASONS_MAX {
                self.reasons.insert(reason.to_string(), 1);
            } else {
                self.other_reasons += 1;
            }
            if self.failures.len() < FAILURES_SHOWN {
                self.failures.push(FailureRow {
                    id: result.id,
                    attempt: result.attempt,
                    worker: result.worker.to_string(),
                    status,
                    exit_code: result.exit_code,
                    reason: reason.into_owned(),
                    stderr: tail(&result.stderr, STDERR_SHOWN).to_string(),
                });
            }
        }
    }

    pub fn tasks(&self) -> usize {
        self.spans.len()
    }

    /// The report's data; `source` names the results file.
    pub fn finish(mut self, source: &str) -> ReportData {
        let tasks = self.spans.len() as u64;
        let start = if tasks == 0 { 0 } else { self.first_submitted };
        let span_us = self.last_finished.saturating_sub(start).max(1);

        // Lanes in natural order; a span's lane becomes its row.
        let mut names: Vec<Arc<str>> = self.lanes.keys().cloned().collect();
        names.sort_by(|a, b| lane_order(a, b));
        let mut rank = vec![0u32; names.len()];
        for (i, name) in names.iter().enumerate() {
            rank[self.lanes[name] as usize] = i as u32;
        }
        for s in &mut self.spans {
            s.lane = s.lane.map(|l| rank[l as usize]);
        }
        let mut workers: Vec<&str> = names.iter().map(|n| Lane::parse(n).worker).collect();
        workers.dedup();
        let lanes: Vec<String> = names.iter().map(|n| n.to_string()).collect();

        let timeline = timeline(&self.spans, &lanes, start, span_us);
        let throughput = throughput(&self.spans, start, span_us);
        let mut reasons: Vec<(String, u64)> = self.reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        reasons.truncate(REASONS_SHOWN);
        let mut failures = self.failures;
        failures.sort_by_key(|f| f.id);
        let wall_s = span_us as f64 / 1e6;
        ReportData {
            source: source.to_string(),
            batches: self.batches,
            tasks,
            succeeded: self.succeeded,
            failed: self.failed,
            timed_out: self.timed_out,
            retried: self.retried,
            workers: workers.len(),
            slots: lanes.len(),
            no_slot: self.no_slot,
            start_us: start,
            wall_s,
            throughput_per_s: tasks as f64 / wall_s,
            utilization: self.busy_us as f64 / (span_us as f64 * lanes.len().max(1) as f64),
            timeline,
            throughput,
            latency: vec![
                LatencyHistogram::of("run time", "started → finished", &self.run_time),
                LatencyHistogram::of("queue wait", "submitted → started", &self.queue_wait),
                LatencyHistogram::of("end to end", "submitted → finished", &self.end_to_end),
            ],
            failures: Failures {
                total: self.failed + self.timed_out,
                rows: failures,
                reasons,
                other_reasons: self.other_reasons,
            },
        }
    }
}

/// The first `chars` characters of `text`, with `…` when cut.
fn head(text: &str, chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &text[..i]).into(),
        None => text.into(),
    }
}

/// The last `chars` characters of `text`.
fn tail(text: &str, chars: usize) -> &str {
    match text.char_indices().rev().nth(chars.saturating_sub(1)) {
        Some((i, _)) if chars > 0 => &text[i..],
        _ if chars == 0 => "",
        _ => text,
    }
}

/// Everything the page draws, as JSON in it.
#[derive(Debug, Serialize)]
pub struct ReportData {
    pub source: String,
    /// The batches' names (the first 20).
    pub batches: Vec<String>,
    pub tasks: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Tasks whose result is not their first attempt.
    pub retried: u64,
    pub workers: usize,
    pub slots: usize,
    /// Results that name no slot (lost, dead-lettered, given up): counted,
    /// but not on the timeline nor in the slots' busy time.
    pub no_slot: u64,
    /// The first submission, µs since the epoch: the charts' time zero.
    pub start_us: u64,
    /// From the first submission to the last finish.
    pub wall_s: f64,
    pub throughput_per_s: f64,
    /// Time the slots were busy, over slots × wall time.
    pub utilization: f64,
    pub timeline: Timeline,
    pub throughput: Throughput,
    pub latency: Vec<LatencyHistogram>,
    pub failures: Failures,
}

/// Tasks per worker slot over time.
#[derive(Debug, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Timeline {
    /// Each task: `[row, start µs, duration µs, status, id]`, times from the start.
    Tasks {
        rows: Vec<String>,
        span_us: u64,
        tasks: Vec<(u32, u64, u64, u8, u64)>,
    },
    /// A grid: per row, per time bin, the percentage of the time its slots
    /// were busy; and the cells where tasks failed, `[row, bin, failed,
    /// finished]` (of the tasks that finished in that cell).
    Grid {
        rows: Vec<String>,
        span_us: u64,
        bin_us: f64,
        busy: Vec<Vec<u8>>,
        failed: Vec<(u32, u32, u32, u32)>,
        /// The tasks drawn: those that ran on a slot.
        tasks: u64,
    },
}

fn timeline(spans: &[Span], lanes: &[String], start: u64, span_us: u64) -> Timeline {
    // The tasks that ran on a slot, with their lane.
    let placed = || spans.iter().filter_map(|s| Some((s, s.lane?)));
    let drawn = placed().count();
    // More slots than rows would draw a row of a pixel or two per slot:
    // they share rows in the grid, however few the tasks.
    if drawn <= TIMELINE_TASKS_MAX && lanes.len() <= TIMELINE_ROWS_MAX {
        return Timeline::Tasks {
            rows: lanes.to_vec(),
            span_us,
            tasks: placed()
                .map(|(s, lane)| {
                    (
                        lane,
                        s.started - start,
                        s.finished - s.started,
                        s.status as u8,
                        s.id,
                    )
                })
                .collect(),
        };
    }
    // Lanes share rows when there are many: consecutive ones, `per_row` each.
    let per_row = lanes.len().div_ceil(TIMELINE_ROWS_MAX).max(1);
    let rows: Vec<String> = lanes
        .chunks(per_row)
        .map(|chunk| match chunk {
            [one] => one.clone(),
            [first, .., last] => format!("{first} … {last}"),
            [] => String::new(),
        })
        .collect();
    let bins = TIMELINE_BINS;
    let bin_us = span_us as f64 / bins as f64;
    let mut busy_us = vec![vec![0f64; bins]; rows.len()];
    let mut finished = vec![vec![0u32; bins]; rows.len()];
    let mut failed: HashMap<(u32, u32), u32> = HashMap::new();
    for (s, lane) in placed() {
        let row = lane as usize / per_row;
        let (a, b) = ((s.started - start) as f64, (s.finished - start) as f64);
        let first = ((a / bin_us) as usize).min(bins - 1);
        let last = ((b / bin_us) as usize).min(bins - 1);
        for (bin, cell) in busy_us[row][first..=last].iter_mut().enumerate() {
            let lo = (first + bin) as f64 * bin_us;
            let hi = lo + bin_us;
            *cell += (b.min(hi) - a.max(lo)).max(0.0);
        }
        finished[row][last] += 1;
        if s.status != Status::Succeeded {
            *failed.entry((row as u32, last as u32)).or_default() += 1;
        }
    }
    let capacity = |row: usize| {
        let slots = lanes.len().min((row + 1) * per_row) - row * per_row;
        bin_us * slots as f64
    };
    let busy = busy_us
        .iter()
        .enumerate()
        .map(|(row, cells)| {
            cells
                .iter()
                .map(|&us| (100.0 * us / capacity(row)).round().clamp(0.0, 100.0) as u8)
                .collect()
        })
        .collect();
    let mut failed: Vec<(u32, u32, u32, u32)> = failed
        .into_iter()
        .map(|((r, b), n)| (r, b, n, finished[r as usize][b as usize]))
        .collect();
    failed.sort_unstable();
    Timeline::Grid {
        rows,
        span_us,
        bin_us,
        busy,
        failed,
        tasks: drawn as u64,
    }
}

/// Tasks finished per time bin, by status.
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub bin_us: u64,
    pub succeeded: Vec<u64>,
    pub failed: Vec<u64>,
}

/// A round bin width (1, 2 or 5 × a power of ten µs) giving at most `max` bins.
fn round_bin(span_us: u64, max: usize) -> u64 {
    let want = span_us.div_ceil(max as u64).max(1);
    let mut unit = 1u64;
    loop {
        for m in [1, 2, 5] {
            if unit * m >= want {
                return unit * m;
            }
        }
        unit *= 10;
    }
}

fn throughput(spans: &[Span], start: u64, span_us: u64) -> Throughput {
    let bin_us = round_bin(span_us, THROUGHPUT_BINS_MAX);
    let bins = (span_us / bin_us + 1) as usize;
    let mut succeeded = vec![0; bins];
    let mut failed = vec![0; bins];
    for s in spans {
        let bin = (((s.finished - start) / bin_us) as usize).min(bins - 1);
        if s.status == Status::Succeeded {
            succeeded[bin] += 1;
        } else {
            failed[bin] += 1;
        }
    }
    Throughput {
        bin_us,
        succeeded,
        failed,
    }
}

/// Counts in logarithmic bins: `[lower bound µs, upper bound µs, count]`.
#[derive(Debug, Serialize)]
pub struct LatencyHistogram {
    pub name: &'static str,
    pub what: &'static str,
    pub bins: Vec<(f64, f64, u64)>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub count: u64,
}

impl LatencyHistogram {
    fn of(name: &'static str, what: &'static str, h: &Histogram<u64>) -> Self {
        let count = h.len();
        let mut bins = Vec::new();
        if count > 0 {
            // Zero-length durations count in the first bin (below 1 µs).
            let lo = (h.min().max(1) as f64).log10();
            let lo = (lo * BINS_PER_DECADE).floor() / BINS_PER_DECADE;
            let hi = (h.max().max(1) as f64).log10();
            let n = (((hi - lo) * BINS_PER_DECADE).floor() as usize + 1).min(60);
            let step = ((hi - lo) / n as f64).max(1.0 / BINS_PER_DECADE);
            let edge = |i: usize| 10f64.powf(lo + step * i as f64);
            bins = (0..n).map(|i| (edge(i), edge(i + 1), 0)).collect();
            for v in h.iter_recorded() {
                let x = (v.value_iterated_to().max(1) as f64).log10();
                let i = (((x - lo) / step).floor().max(0.0) as usize).min(n - 1);
                bins[i].2 += v.count_since_last_iteration();
            }
        }
        Self {
            name,
            what,
            bins,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            count,
        }
    }
}

/// The failed and timed-out tasks.
#[derive(Debug, Serialize)]
pub struct Failures {
    pub total: u64,
    /// The first [`FAILURES_SHOWN`] read, by id.
    pub rows: Vec<FailureRow>,
    /// The most frequent reasons, with their counts.
    pub reasons: Vec<(String, u64)>,
    /// Failures whose reason was not among the first [`REASONS_MAX`] distinct ones.
    pub other_reasons: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cloudkon_core::{BatchId, Timestamp};

    pub(crate) fn result(
        id: u64,
        worker: &str,
        start_ms: u64,
        ms: u64,
        outcome: Outcome,
    ) -> TaskResult {
        let t0 = 1_700_000_000_000_000;
        TaskResult {
            batch: BatchId::new("b"),
            id,
            attempt: 1,
            outcome,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            worker: worker.into(),
            submitted: Timestamp(t0),
            started: Timestamp(t0 + start_ms * 1000),
            finished: Timestamp(t0 + (start_ms + ms) * 1000),
        }
    }

    #[test]
    fn lanes_parse_and_sort_naturally() {
        assert_eq!(
            Lane::parse("host-1/10"),
            Lane {
                worker: "host-1",
                slot: Some(10)
            }
        );
        assert_eq!(Lane::parse("w1").slot, None);
        assert_eq!(Lane::parse("a/b").worker, "a/b");
        let mut lanes = vec!["w/10", "w/9", "v/1", "w"];
        lanes.sort_by(|a, b| lane_order(a, b));
        assert_eq!(lanes, ["v/1", "w", "w/9", "w/10"]);
    }

    #[test]
    fn counts_rows_and_failures() {
        let mut c = Collector::new();
        c.add(&result(0, "local/1", 0, 10, Outcome::Succeeded));
        c.add(&result(
            1,
            "local/0",
            0,
            20,
            Outcome::Failed {
                reason: "exit status 1".into(),
            },
        ));
        c.add(&result(2, "local/0", 20, 5, Outcome::TimedOut));
        let mut retried = result(3, "local/1", 10, 10, Outcome::Succeeded);
        retried.attempt = 2;
        c.add(&retried);
        let data = c.finish("r.jsonl");
        assert_eq!(
            (
                data.tasks,
                data.succeeded,
                data.failed,
                data.timed_out,
                data.retried
            ),
            (4, 2, 1, 1, 1)
        );
        assert_eq!((data.workers, data.slots), (1, 2));
        assert!((data.wall_s - 0.025).abs() < 1e-9, "{}", data.wall_s);
        let Timeline::Tasks { rows, tasks, .. } = &data.timeline else {
            panic!("a few tasks are drawn one by one");
        };
        assert_eq!(rows, &["local/0", "local/1"]);
        assert!(tasks.contains(&(1, 0, 10_000, 0, 0)), "{tasks:?}");
        assert!(tasks.contains(&(0, 0, 20_000, 1, 1)), "{tasks:?}");
        assert_eq!(data.failures.total, 2);
        assert_eq!(
            data.failures.rows.iter().map(|f| f.id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(data.failures.rows[1].reason, "timed out");
        let total: u64 = data.throughput.succeeded.iter().sum::<u64>()
            + data.throughput.failed.iter().sum::<u64>();
        assert_eq!(total, 4);
        for h in &data.latency {
            assert_eq!(h.bins.iter().map(|b| b.2).sum::<u64>(), 4, "{}", h.name);
        }
        // Busy 45 ms of 2 slots × 25 ms.
        assert!(
            (data.utilization - 0.9).abs() < 1e-9,
            "{}",
            data.utilization
        );
    }

    #[test]
    fn results_that_ran_on_no_slot_are_counted_but_make_no_lane() {
        let mut c = Collector::new();
        for slot in 0..4 {
            c.add(&result(
                slot,
                &format!("w/{slot}"),
                0,
                100,
                Outcome::Succeeded,
            ));
        }
        // Written by the operator for tasks that ran nowhere.
        for (id, worker) in [
            (4, "cloudkon-operator/lost"),
            (5, "cloudkon-operator/dead-letter-queue"),
        ] {
            c.add(&result(
                id,
                worker,
                100,
                0,
                Outcome::Failed {
                    reason: "lost".into(),
                },
            ));
        }
        let data = c.finish("r.jsonl");
        assert_eq!((data.tasks, data.failed, data.failures.total), (6, 2, 2));
        assert_eq!((data.workers, data.slots, data.no_slot), (1, 4, 2));
        assert!(
            (data.utilization - 1.0).abs() < 1e-9,
            "every slot busy all the time: {}",
            data.utilization
        );
        let Timeline::Tasks { rows, tasks, .. } = &data.timeline else {
            panic!("a few tasks are drawn one by one");
        };
        assert_eq!(rows, &["w/0", "w/1", "w/2", "w/3"]);
        assert_eq!(tasks.len(), 4);
        let finished: u64 = data.throughput.failed.iter().sum();
        assert_eq!(finished, 2, "in the throughput all the same");
    }

    #[test]
    fn many_tasks_make_a_bounded_grid_with_every_busy_microsecond() {
        let mut c = Collector::new();
        // 300 slots (more than the rows), each busy all the time: 20,000 tasks of 10 ms.
        let slots = 300;
        for i in 0..20_000u64 {
            let slot = i % slots;
            let start = (i / slots) * 10;
            let outcome = if i == 12_345 {
                Outcome::Failed { reason: "x".into() }
            } else {
                Outcome::Succeeded
            };
            c.add(&result(
                i,
                &format!("w{}/{}", slot / 8, slot % 8),
                start,
                10,
                outcome,
            ));
        }
        let data = c.finish("r.jsonl");
        let Timeline::Grid {
            rows, busy, failed, ..
        } = &data.timeline
        else {
            panic!("20,000 tasks make a grid");
        };
        assert!(
            rows.len() <= TIMELINE_ROWS_MAX && rows.len() > 64,
            "{}",
            rows.len()
        );
        assert!(busy.iter().all(|r| r.len() == TIMELINE_BINS));
        // Every slot is busy from 0 to the end but the last row's tail
        // (20,000 is not a multiple of 300): nearly every cell is full.
        let full = busy.iter().flatten().filter(|&&b| b >= 99).count();
        assert!(full > rows.len() * TIMELINE_BINS * 9 / 10, "{full}");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].2, 1);
        assert!(failed[0].3 >= 1, "{failed:?}");
        assert!(
            (data.utilization - 0.99).abs() < 0.02,
            "{}",
            data.utilization
        );
    }

    #[test]
    fn few_tasks_on_many_slots_share_rows() {
        // 2,000 slots, 5,000 tasks: drawn one by one, each slot would be a
        // row of two pixels.
        let mut c = Collector::new();
        for i in 0..5_000u64 {
            let slot = i % 2_000;
            let worker = format!("w{}/{}", slot / 8, slot % 8);
            c.add(&result(
                i,
                &worker,
                (i / 2_000) * 10,
                10,
                Outcome::Succeeded,
            ));
        }
        let data = c.finish("r.jsonl");
        assert_eq!(data.slots, 2_000);
        let Timeline::Grid { rows, tasks, .. } = &data.timeline else {
            panic!("2,000 slots share rows");
        };
        assert!(rows.len() <= TIMELINE_ROWS_MAX, "{}", rows.len());
        assert_eq!(*tasks, 5_000);
    }

    #[test]
    fn the_data_is_bounded_whatever_fails() {
        // Every cell of the grid holds failures, every reason is long and
        // different, stderr too: the page's data stays under 2 MiB.
        let mut c = Collector::new();
        let slots = 256;
        for i in 0..(slots * 320) {
            let mut r = result(
                i,
                &format!("worker-{}/{}", i % slots / 8, i % slots % 8),
                (i / slots) * 10,
                10,
                Outcome::Failed {
                    reason: format!("{i} {}", "x".repeat(1_000)),
                },
            );
            r.stderr = "e".repeat(1_000);
            c.add(&r);
        }
        let data = c.finish("r.jsonl");
        let Timeline::Grid { failed, .. } = &data.timeline else {
            panic!("a grid");
        };
        assert!(
            failed.len() >= TIMELINE_ROWS_MAX * TIMELINE_BINS * 9 / 10,
            "{}",
            failed.len()
        );
        let json = serde_json::to_string(&data).unwrap();
        say!("the data of the worst case: {} bytes", json.len());
        assert!(json.len() < 2 << 20, "{} bytes", json.len());
        assert_eq!(data.failures.rows.len(), FAILURES_SHOWN);
        assert_eq!(data.failures.reasons.len(), REASONS_SHOWN);
        assert_eq!(
            data.failures.other_reasons,
            slots * 320 - REASONS_MAX as u64
        );
    }

    #[test]
    fn bins_are_round_and_bounded() {
        assert_eq!(round_bin(1_000_000, 150), 10_000);
        assert_eq!(round_bin(150, 150), 1);
        assert_eq!(round_bin(151, 150), 2);
        assert_eq!(round_bin(60_000_000, 150), 500_000);
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("héllo", 4), "éllo");
        assert_eq!(tail("x", 0), "");
        assert_eq!(head("abcdef", 3), "abc…");
        assert_eq!(head("abc", 3), "abc");
    }

    #[test]
    fn latency_bins_hold_every_task_even_at_zero() {
        let mut h = histogram();
        for v in [0, 1, 5, 1000, 999_999] {
            h.saturating_record(v);
        }
        let l = LatencyHistogram::of("x", "y", &h);
        assert_eq!(l.bins.iter().map(|b| b.2).sum::<u64>(), 5);
        assert!(l.bins.len() <= 60);
        assert!(
            l.bins[0].0 <= 1.0 && l.bins.last().unwrap().1 >= 999_999.0,
            "{:?}",
            l.bins
        );
    }
}
