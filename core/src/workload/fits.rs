//! Whether a workload's tasks each fit in one queue message: SQS refuses a
//! message over 256 KiB, and a task that does not fit would be sent, refused
//! and sent again for ever.

use std::io::{self, BufRead};
use std::time::Duration;

use super::WorkloadReader;
use crate::task::{BatchId, Task, TaskId, TaskSpec};
use crate::wire::{self, SQS_MAX_MESSAGE_BYTES};
use crate::{Bundle, BundleOptions, Timestamp};

/// Room kept for the response queue's URL that a bundle carries (an SQS URL
/// with an 80-character queue name is about 130 bytes).
const REPLY_TO_ROOM: usize = 256;

/// Workload lines no longer than this always fit in a message: a byte takes
/// at most 6 in the encoding (`\u00XX`), and the rest of a bundle is small.
pub const ALWAYS_FITS_LINE: usize = 16 << 10;

/// The task travels in a message of its own, at worst: the largest ids,
/// attempts and options, a batch uid and a long response queue URL. `Err`
/// holds the bytes it takes then.
pub fn task_fits_one_message(spec: TaskSpec) -> Result<(), usize> {
    let bundle = Bundle {
        submitted: Timestamp(u64::MAX),
        tasks: vec![Task {
            batch: BatchId::new("00000000-0000-0000-0000-000000000000"),
            id: u64::MAX,
            attempt: u32::MAX,
            timeout: Some(Duration::from_millis(u64::MAX)),
            spec,
        }],
        reply_to: Some("x".repeat(REPLY_TO_ROOM)),
        options: BundleOptions {
            max_attempts: Some(u32::MAX),
            retry_backoff: Some(Duration::from_millis(u64::MAX)),
            dedup: Some(true),
        },
    };
    let bytes = wire::encode_bundle(&bundle).len();
    if bytes <= SQS_MAX_MESSAGE_BYTES {
        Ok(())
    } else {
        Err(bytes)
    }
}

/// A task too large for a queue message: its number and the bytes it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub id: TaskId,
    pub bytes: usize,
}

impl TooLarge {
    /// What to tell the user, after the workload's name.
    pub fn message(&self) -> String {
        format!(
            "task {} is too large: it takes {} bytes as a queue message, more than SQS's {SQS_MAX_MESSAGE_BYTES} (put large data in S3 and pass its URI)",
            self.id, self.bytes
        )
    }
}

/// Whether `input` has a line longer than [`ALWAYS_FITS_LINE`]: only then
/// are its tasks worth encoding to measure them.
pub fn has_long_line(mut input: impl BufRead) -> io::Result<bool> {
    let mut line = 0usize;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        let n = buf.len();
        for &b in buf {
            if b == b'\n' {
                line = 0;
            } else {
                line += 1;
                if line > ALWAYS_FITS_LINE {
                    return Ok(true);
                }
            }
        }
        input.consume(n);
    }
}

/// The tasks of a valid workload too large for a message, the first `max`.
/// Lines that do not parse are skipped: the check says those.
pub fn too_large_tasks<R: BufRead>(reader: WorkloadReader<R>, max: usize) -> Vec<TooLarge> {
    reader
        .filter_map(Result::ok)
        .filter_map(|def| {
            let bytes = task_fits_one_message(def.spec).err()?;
            Some(TooLarge { id: def.id, bytes })
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_task_over_a_message_is_too_large_and_only_long_lines_are_measured() {
        let big = "y".repeat(SQS_MAX_MESSAGE_BYTES);
        let text = format!("sleep 1\nrun echo {big}\nrun echo {}\n", "z".repeat(20_000));
        assert!(has_long_line(text.as_bytes()).unwrap());
        let got = too_large_tasks(WorkloadReader::new(text.as_bytes(), "w.txt"), 5);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].id, 1);
        assert!(got[0].bytes > SQS_MAX_MESSAGE_BYTES);
        assert!(
            got[0].message().starts_with("task 1 is too large"),
            "{}",
            got[0].message()
        );

        let longest = format!("run echo {}", "z".repeat(ALWAYS_FITS_LINE - 9));
        assert_eq!(longest.len(), ALWAYS_FITS_LINE);
        assert!(!has_long_line(format!("sleep 1\n{longest}\n{longest}").as_bytes()).unwrap());
        assert!(has_long_line(format!("sleep 1\n{longest}z\n").as_bytes()).unwrap());
    }
}
