//! The flags `cloudkon run` and `cloudkon submit` share, and the batch's
//! default name.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// The batch's name in results [default: the workload's file name and the time].
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
}

impl BatchArgs {
    /// `--batch`, or a name made from the workload's file name, the time and
    /// this process's id.
    pub fn batch_name(&self, workload: &Path) -> String {
        self.batch
            .clone()
            .unwrap_or_else(|| default_batch_name(workload))
    }
}

/// A timeout of zero would time every task out at once: a workload line
/// refuses `timeout_ms` 0 too. Under a millisecond is refused as well: tasks
/// travel to workers in whole milliseconds, and it would become zero there.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if timeout.is_zero() {
        return Err("must be more than zero (omit --timeout for no limit)".to_string());
    }
    if timeout < Duration::from_millis(1) {
        return Err(format!(
            "{text} is under the 1ms a timeout is counted in (omit --timeout for no limit)"
        ));
    }
    Ok(timeout)
}

fn default_batch_name(workload: &Path) -> String {
    let stem = workload
        .file_stem()
        .map_or("batch".into(), |s| s.to_string_lossy().into_owned());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The process id tells apart two runs of one file in the same second:
    // the name is the response queue's and the videos' names.
    format!("{stem}-{secs}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_timeout_is_refused() {
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        for zero in ["0", "0s", "0ms"] {
            let err = parse_timeout(zero).unwrap_err();
            assert!(err.contains("omit --timeout for no limit"), "{zero}: {err}");
        }
        assert!(parse_timeout("soon").is_err());
        let err = parse_timeout("500us").unwrap_err();
        assert!(err.contains("under the 1ms"), "{err}");
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
    }
}
