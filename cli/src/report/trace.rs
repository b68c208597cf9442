//! Results as a Chrome trace (the JSON "Trace Event Format" that Perfetto,
//! `chrome://tracing` and speedscope open): one complete event (`ph: X`) per
//! task, a process per worker and a thread per slot. Written as results are
//! read; times are µs since the epoch, as results have them.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use cloudkon_core::{Outcome, TaskResult};
use serde::Serialize;

use super::model::Lane;

/// The thread of a worker's results that name no slot (bundles given up).
const NO_SLOT_TID: u32 = 1_000_000;

#[derive(Serialize)]
struct Event<'a, A: Serialize> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    cat: &'a str,
    ph: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<u64>,
    pid: u32,
    tid: u32,
    args: A,
}

#[derive(Serialize)]
struct TaskArgs<'a> {
    id: u64,
    batch: &'a str,
    attempt: u32,
    status: &'a str,
    queue_wait_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact: Option<&'a str>,
}

#[derive(Serialize)]
struct NameArgs<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct SortArgs {
    sort_index: u32,
}

/// Writes the trace to `out` as results come.
pub struct TraceWriter<W: Write> {
    out: W,
    events: u64,
    /// Worker → pid (1-based: some viewers treat pid 0 specially).
    workers: HashMap<String, u32>,
    /// (pid, tid) pairs seen, for their names.
    threads: HashSet<(u32, u32)>,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
        Ok(Self {
            out,
            events: 0,
            workers: HashMap::new(),
            threads: HashSet::new(),
        })
    }

    fn event<A: Serialize>(&mut self, event: &Event<'_, A>) -> io::Result<()> {
        if self.events > 0 {
            self.out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut self.out, event)?;
        self.events += 1;
        Ok(())
    }

    pub fn add(&mut self, r: &TaskResult) -> io::Result<()> {
        let lane = Lane::parse(&r.worker);
        let next = self.workers.len() as u32 + 1;
        let pid = *self.workers.entry(lane.worker.to_string()).or_insert(next);
        let tid = lane.slot.unwrap_or(NO_SLOT_TID);
        self.threads.insert((pid, tid));
        let (status, reason) = match &r.outcome {
            Outcome::Succeeded => ("succeeded", None),
            Outcome::Failed { reason } => ("failed", Some(reason.as_str())),
            Outcome::TimedOut => ("timed_out", None),
        };
        let name = format!("task {}", r.id);
        self.event(&Event {
            name: &name,
            cat: status,
            ph: "X",
            ts: Some(r.started.0),
            dur: Some(r.finished.0.saturating_sub(r.started.0)),
            pid,
            tid,
            args: TaskArgs {
                id: r.id,
                batch: r.batch.as_str(),
                attempt: r.attempt,
                status,
                queue_wait_us: r.started.0.saturating_sub(r.submitted.0),
                reason,
                exit_code: r.exit_code,
                artifact: r.artifact.as_deref(),
            },
        })
    }

    /// Names the processes and threads, closes the JSON; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let mut workers: Vec<(String, u32)> =
            std::mem::take(&mut self.workers).into_iter().collect();
        workers.sort_by_key(|w| w.1);
        for (worker, pid) in &workers {
            self.event(&Event {
                name: "process_name",
                cat: "",
                ph: "M",
                ts: None,
                dur: None,
                pid: *pid,
                tid: 0,
                args: NameArgs { name: worker },
            })?;
            self.event(&Event {
                name: "process_sort_index",
                cat: "",
                ph: "M",
                ts: None,
                dur: None,
                pid: *pid,
                tid: 0,
                args: SortArgs { sort_index: *pid },
            })?;
        }
        let mut threads: Vec<(u32, u32)> = std::mem::take(&mut self.threads).into_iter().collect();
        threads.sort_unstable();
        for (pid, tid) in threads {
            let name = if tid == NO_SLOT_TID {
                "no slot".to_string()
            } else {
                format!("slot {tid}")
            };
            self.event(&Event {
                name: "thread_name",
                cat: "",
                ph: "M",
                ts: None,
                dur: None,
                pid,
                tid,
                args: NameArgs { name: &name },
            })?;
        }
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_json_with_an_event_per_task_and_named_threads() {
        let mut w = TraceWriter::new(Vec::new()).unwrap();
        for (id, worker, outcome) in [
            (0, "host-a/0", Outcome::Succeeded),
            (
                1,
                "host-a/1",
                Outcome::Failed {
                    reason: "exit status 2".into(),
                },
            ),
            (2, "host-b", Outcome::TimedOut),
        ] {
            w.add(&crate::report::model::tests::result(
                id, worker, 1, 3, outcome,
            ))
            .unwrap();
        }
        let json: serde_json::Value = serde_json::from_slice(&w.finish().unwrap()).unwrap();
        let events = json["traceEvents"].as_array().unwrap();
        let tasks: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[1]["args"]["reason"], "exit status 2");
        assert_eq!(tasks[1]["tid"], 1);
        assert_eq!(tasks[0]["dur"], 3_000);
        assert_eq!(tasks[0]["args"]["queue_wait_us"], 1_000);
        let names: Vec<_> = events
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] != "process_sort_index")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["host-a", "host-b", "slot 0", "slot 1", "no slot"]);
    }
}
