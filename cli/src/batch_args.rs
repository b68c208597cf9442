//! The flags `cloudkon run` and `cloudkon submit` share, and the batch's
//! default name.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The flags `run` and `submit` share: where results go, and the batch.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Write every task's result to this file, one JSON object a line.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print the summary as JSON on stdout (and no progress display).
    #[arg(long)]
    pub json: bool,

    /// Per-task timeout, e.g. `30s` or `500ms`; a task's own `timeout_ms` wins.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// The batch's name in results [default: the workload's file name and the time].
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
}

impl BatchArgs {
    /// `--batch`, or a name made from the workload's file name and the time.
    pub fn batch_name(&self, workload: &Path) -> String {
        self.batch
            .clone()
            .unwrap_or_else(|| default_batch_name(workload))
    }
}

fn default_batch_name(workload: &Path) -> String {
    let stem = workload
        .file_stem()
        .map_or("batch".into(), |s| s.to_string_lossy().into_owned());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{stem}-{secs}")
}
