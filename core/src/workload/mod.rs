//! Workload files: one task a line, in the seed systems' text format or as JSON Lines.
//!
//! ```text
//! # comments and blank lines are ignored
//! sleep 100                      # not a comment: trailing text is an error
//! run convert "in put.png" out.jpg
//! animoto https://example.com/1.jpg s3://bucket/2.png
//! {"kind":"run","program":"echo","args":["hi"],"timeout_ms":5000}
//! ```
//!
//! Workloads are streamed, never held whole: [`WorkloadReader`] yields one task at a
//! time. [`validate`] reads a whole file first so that nothing runs unless every
//! line parses.

mod fits;
mod generate;
mod line;
mod order;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

pub use fits::{ALWAYS_FITS_LINE, TooLarge, has_long_line, task_fits_one_message, too_large_tasks};
pub use generate::{write_run_workload, write_sleep_workload};
pub use line::{MAX_RESOLUTION_SIDE, check_spec, parse_line, parse_resolution};
pub use order::{SendOrder, Wanted, length_class};

use crate::task::{BatchId, Task, TaskId, TaskKind, TaskSpec};

/// A task as a workload describes it: no batch, no attempt yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDef {
    pub id: TaskId,
    pub timeout: Option<Duration>,
    pub spec: TaskSpec,
}

impl TaskDef {
    /// Its first attempt in `batch`, timed out after `default_timeout` if it
    /// sets no timeout of its own.
    pub fn into_task(self, batch: &BatchId, default_timeout: Option<Duration>) -> Task {
        Task {
            batch: batch.clone(),
            id: self.id,
            attempt: 1,
            timeout: self.timeout.or(default_timeout),
            spec: self.spec,
        }
    }
}

/// What is wrong with a workload, and where.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{source_name}:{line}: {message}")]
    Line {
        source_name: String,
        line: u64,
        message: String,
    },
    #[error("{source_name}: cannot read: {error}")]
    Io {
        source_name: String,
        #[source]
        error: io::Error,
    },
}

/// Streams the tasks of a workload, numbering them in order.
pub struct WorkloadReader<R> {
    input: R,
    source_name: String,
    line_no: u64,
    next_id: TaskId,
    buf: Vec<u8>,
    failed: bool,
    /// Which tasks to parse and yield (see [`WorkloadReader::only`]).
    keep: Option<Box<dyn FnMut(TaskId) -> bool + Send>>,
}

impl WorkloadReader<BufReader<File>> {
    /// Opens a workload file; `source_name` in errors is the path as given.
    pub fn open(path: &Path) -> Result<Self, WorkloadError> {
        let file = File::open(path).map_err(|error| WorkloadError::Io {
            source_name: path.display().to_string(),
            error,
        })?;
        Ok(Self::new(
            BufReader::with_capacity(256 * 1024, file),
            path.display().to_string(),
        ))
    }
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl<R: BufRead> WorkloadReader<R> {
    pub fn new(input: R, source_name: impl Into<String>) -> Self {
        Self {
            input,
            source_name: source_name.into(),
            line_no: 0,
            next_id: 0,
            buf: Vec::with_capacity(256),
            failed: false,
            keep: None,
        }
    }

    /// Yields only the tasks whose id `keep` accepts; the others are
    /// numbered but not parsed (a workload read once per class of its send
    /// order parses each line once, not once per class). For a workload
    /// already read whole without an error: a line skipped here is not
    /// checked.
    pub fn only(mut self, keep: impl FnMut(TaskId) -> bool + Send + 'static) -> Self {
        self.keep = Some(Box::new(keep));
        self
    }

    fn line_error(&self, message: String) -> WorkloadError {
        WorkloadError::Line {
            source_name: self.source_name.clone(),
            line: self.line_no,
            message,
        }
    }
}

impl<R: BufRead> Iterator for WorkloadReader<R> {
    type Item = Result<TaskDef, WorkloadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => {
                    // An I/O error ends the stream: the position is no longer known.
                    self.failed = true;
                    return Some(Err(WorkloadError::Io {
                        source_name: self.source_name.clone(),
                        error,
                    }));
                }
            }
            self.line_no += 1;
            // A byte-order mark (Windows editors write one) is no part of the
            // first task: it made `sleep` an unknown kind, invisibly.
            if self.line_no == 1 && self.buf.starts_with(UTF8_BOM) {
                self.buf.drain(..UTF8_BOM.len());
            }
            if let Some(keep) = self.keep.as_mut() {
                // Numbered as `parse_line` would (a task line, else none).
                let task = std::str::from_utf8(&self.buf).map_or(true, line::is_task_line);
                if task && !keep(self.next_id) {
                    self.next_id += 1;
                    continue;
                }
            }
            let text = match std::str::from_utf8(&self.buf) {
                Ok(text) => text,
                Err(e) => {
                    return Some(Err(self.line_error(format!(
                        "not UTF-8 text (invalid byte at column {})",
                        e.valid_up_to() + 1
                    ))));
                }
            };
            match parse_line(text) {
                Ok(None) => continue,
                Ok(Some((spec, timeout))) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    return Some(Ok(TaskDef { id, timeout, spec }));
                }
                Err(message) => return Some(Err(self.line_error(message))),
            }
        }
    }
}

/// What a valid workload holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    pub tasks: u64,
    pub sleep: u64,
    pub run: u64,
    pub animoto: u64,
}

impl WorkloadStats {
    fn count(&mut self, kind: TaskKind) {
        self.tasks += 1;
        match kind {
            TaskKind::Sleep => self.sleep += 1,
            TaskKind::Run => self.run += 1,
            TaskKind::Animoto => self.animoto += 1,
        }
    }
}

/// How many errors [`validate`] reports before it stops reading.
pub const MAX_REPORTED_ERRORS: usize = 20;

/// Reads a whole workload and reports every malformed line (up to
/// [`MAX_REPORTED_ERRORS`]), so that a user fixes them all in one go.
pub fn validate<R: BufRead>(
    reader: WorkloadReader<R>,
) -> Result<WorkloadStats, Vec<WorkloadError>> {
    let mut stats = WorkloadStats::default();
    let mut errors = Vec::new();
    for item in reader {
        match item {
            Ok(def) => stats.count(def.spec.kind()),
            Err(e) => {
                errors.push(e);
                if errors.len() >= MAX_REPORTED_ERRORS {
                    break;
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(stats)
    } else {
        Err(errors)
    }
}

/// [`validate`] for a file on disk.
pub fn validate_file(path: &Path) -> Result<WorkloadStats, Vec<WorkloadError>> {
    validate(WorkloadReader::open(path).map_err(|e| vec![e])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<Result<TaskDef, String>> {
        WorkloadReader::new(text.as_bytes(), "w.txt")
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_no_part_of_it() {
        let got = read("\u{FEFF}sleep 5\nsleep 6\n");
        let specs: Vec<_> = got
            .iter()
            .map(|r| r.as_ref().unwrap().spec.clone())
            .collect();
        assert_eq!(
            specs,
            vec![TaskSpec::Sleep { ms: 5 }, TaskSpec::Sleep { ms: 6 }]
        );
        // Anywhere else it is the line's, and said.
        assert!(read("sleep 5\n\u{FEFF}sleep 6\n")[1].is_err());
    }

    #[test]
    fn numbers_tasks_skipping_blanks_and_comments() {
        let got = read("# header\n\nsleep 5\n   \n  # indented comment\nrun true\r\n");
        let ids: Vec<_> = got.iter().map(|r| r.as_ref().unwrap().id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(
            got[1].as_ref().unwrap().spec,
            TaskSpec::Run {
                program: "true".into(),
                args: vec![],
                expected_ms: None
            }
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let got = read("sleep 1\n\nsleep x\nsleep 2\n");
        assert_eq!(
            got[1].as_ref().unwrap_err(),
            "w.txt:3: sleep takes a whole number of milliseconds, got `x`"
        );
        // The stream goes on after a bad line, so validate can report them all.
        assert_eq!(got[2].as_ref().unwrap().id, 1);
    }

    #[test]
    fn invalid_utf8_is_an_error_with_its_line() {
        let bytes: &[u8] = b"sleep 1\nrun \xff\n";
        let got: Vec<_> = WorkloadReader::new(bytes, "w").collect();
        assert_eq!(
            got[1].as_ref().unwrap_err().to_string(),
            "w:2: not UTF-8 text (invalid byte at column 5)"
        );
    }

    #[test]
    fn last_line_without_newline_is_read() {
        let got = read("sleep 1\nsleep 2");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn validate_counts_kinds_or_lists_every_error() {
        let ok = validate(WorkloadReader::new(
            "sleep 0\nrun ls\nanimoto file:///a.png\nsleep 3\n".as_bytes(),
            "w",
        ))
        .unwrap();
        assert_eq!(
            ok,
            WorkloadStats {
                tasks: 4,
                sleep: 2,
                run: 1,
                animoto: 1
            }
        );
        let errors = validate(WorkloadReader::new(
            "bogus\nsleep\nsleep 1\nrun\n".as_bytes(),
            "w",
        ))
        .unwrap_err();
        let lines: Vec<_> = errors
            .iter()
            .map(|e| match e {
                WorkloadError::Line { line, .. } => *line,
                WorkloadError::Io { .. } => 0,
            })
            .collect();
        assert_eq!(lines, vec![1, 2, 4]);
    }

    #[test]
    fn validate_stops_after_max_errors() {
        let text = "nope\n".repeat(MAX_REPORTED_ERRORS * 3);
        let errors = validate(WorkloadReader::new(text.as_bytes(), "w")).unwrap_err();
        assert_eq!(errors.len(), MAX_REPORTED_ERRORS);
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = validate_file(Path::new("/nonexistent/w.txt")).unwrap_err();
        assert!(
            err[0]
                .to_string()
                .starts_with("/nonexistent/w.txt: cannot read:"),
            "{}",
            err[0]
        );
    }
}
