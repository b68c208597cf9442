//! The task model: what a task is, and what running it produced.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Names one batch (one workload submission). Cheap to clone: every task carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(Arc<str>);

impl BatchId {
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task's ordinal in its workload (0-based, blank and comment lines not counted).
///
/// Ordinals rather than free-form names: they are unique by construction, and a
/// re-read of the same workload yields the same ids, which makes enqueueing resumable.
pub type TaskId = u64;

/// Which executor runs a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Sleep `ms` milliseconds: the seed systems' benchmark task.
    Sleep,
    /// Run `program` with `args`.
    Run,
    /// Make a video from `urls` (images).
    Animoto,
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskKind::Sleep => "sleep",
            TaskKind::Run => "run",
            TaskKind::Animoto => "animoto",
        })
    }
}

/// A task's kind and arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TaskSpec {
    /// Sleep for `ms` milliseconds: the seed systems' benchmark task.
    Sleep { ms: u64 },
    /// Run a program directly (no shell).
    Run {
        program: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// How long it is expected to run, in milliseconds, when the
        /// workload knows: a TaskBatch then bundles and orders it as a
        /// `sleep` of that length (see [`TaskSpec::declared_length`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_ms: Option<u64>,
    },
    /// Build a video from images (executed by the Animoto executor).
    Animoto(AnimotoSpec),
}

impl TaskSpec {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskSpec::Sleep { .. } => TaskKind::Sleep,
            TaskSpec::Run { .. } => TaskKind::Run,
            TaskSpec::Animoto(_) => TaskKind::Animoto,
        }
    }

    /// The duration the task asks for, when it is known before running it.
    /// Efficiency is computed against this "ideal" time, as in the seed papers.
    pub fn nominal_duration(&self) -> Option<Duration> {
        match self {
            TaskSpec::Sleep { ms } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }

    /// How long the task is taken to run before it has: a `sleep`'s own
    /// length, a `run`'s `expected_ms`. What bundles are cut and tasks are
    /// ordered by; an expectation, so not the ideal efficiency counts
    /// against (that is [`TaskSpec::nominal_duration`]).
    pub fn declared_length(&self) -> Option<Duration> {
        match self {
            TaskSpec::Run {
                expected_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => self.nominal_duration(),
        }
    }
}

/// The Animoto task's inputs and options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnimotoSpec {
    /// `http(s)://`, `s3://` or `file://` URLs (or plain local paths) of the images.
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_per_image: Option<u32>,
    /// `WIDTHxHEIGHT`, 1920x1080 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<u32>,
    /// Where the video goes: a local directory or an `s3://bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub batch: BatchId,
    pub id: TaskId,
    /// 1 on the first execution; a retry or a lease take-over increments it.
    pub attempt: u32,
    /// Overrides the pool's default per-task timeout.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    pub timeout: Option<Duration>,
    #[serde(flatten)]
    pub spec: TaskSpec,
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed { reason: String },
    TimedOut,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }
}

/// What one execution of a task produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub batch: BatchId,
    pub id: TaskId,
    pub attempt: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last bytes of standard output (bounded; see `truncated`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Set when `stdout` or `stderr` lost their beginning to the bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// A file or URL the task produced (the Animoto video, for instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// A URL that fetches the artifact without credentials, when it is in an
    /// object store (a presigned HTTPS GET of the `s3://` artifact; it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_url: Option<String>,
    pub worker: Arc<str>,
    pub submitted: Timestamp,
    pub started: Timestamp,
    pub finished: Timestamp,
}

impl TaskResult {
    /// A task reported failed without running (this time): given up after
    /// too many claims, or out of the dead-letter queue. `at` is both its
    /// start and its end.
    pub fn not_run(
        task: &Task,
        attempt: u32,
        reason: String,
        worker: Arc<str>,
        submitted: Timestamp,
        at: Timestamp,
    ) -> Self {
        Self::not_run_id(&task.batch, task.id, attempt, reason, worker, submitted, at)
    }

    /// [`TaskResult::not_run`] for a task known by its batch and id only
    /// (the operator's report of tasks found nowhere).
    pub fn not_run_id(
        batch: &BatchId,
        id: TaskId,
        attempt: u32,
        reason: String,
        worker: Arc<str>,
        submitted: Timestamp,
        at: Timestamp,
    ) -> Self {
        TaskResult {
            batch: batch.clone(),
            id,
            attempt,
            outcome: Outcome::Failed { reason },
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            worker,
            submitted,
            started: at,
            finished: at,
        }
    }

    pub fn queue_wait(&self) -> Duration {
        self.started.since(self.submitted)
    }

    pub fn end_to_end(&self) -> Duration {
        self.finished.since(self.submitted)
    }

    pub fn run_time(&self) -> Duration {
        self.finished.since(self.started)
    }
}

/// Wall-clock time in microseconds since the Unix epoch; RFC 3339 in JSON.
///
/// Wall clock rather than `Instant` because the timestamps of one task are taken by
/// different machines (client, worker) in the distributed mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// Time from `earlier` to `self`, zero if the clocks disagree.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.to_system_time()))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let time = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let micros = time
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_micros();
        Ok(Timestamp(
            u64::try_from(micros).map_err(serde::de::Error::custom)?,
        ))
    }
}

/// `Option<Duration>` as whole milliseconds, the unit workload files use.
pub(crate) mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_json_round_trips_with_flattened_spec() {
        let task = Task {
            batch: BatchId::new("b1"),
            id: 7,
            attempt: 1,
            timeout: Some(Duration::from_millis(2500)),
            spec: TaskSpec::Run {
                program: "echo".into(),
                args: vec!["a b".into()],
                expected_ms: None,
            },
        };
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(
            json,
            r#"{"batch":"b1","id":7,"attempt":1,"timeout":2500,"kind":"run","program":"echo","args":["a b"]}"#
        );
        assert_eq!(serde_json::from_str::<Task>(&json).unwrap(), task);
    }

    #[test]
    fn result_json_round_trips_and_timestamps_are_rfc3339() {
        let result = TaskResult {
            batch: BatchId::new("b"),
            id: 1,
            attempt: 2,
            outcome: Outcome::Failed {
                reason: "exit status 3".into(),
            },
            exit_code: Some(3),
            stdout: String::new(),
            stderr: "boom".into(),
            truncated: false,
            artifact: Some("s3://b/v/b-1.mp4".into()),
            artifact_url: Some("https://b.s3.amazonaws.com/v/b-1.mp4?X-Amz-Expires=604800".into()),
            worker: "w1".into(),
            submitted: Timestamp(1_700_000_000_000_001),
            started: Timestamp(1_700_000_000_000_500),
            finished: Timestamp(1_700_000_000_100_000),
        };
        let json = serde_json::to_string(&result).unwrap();
        assert!(
            json.contains(r#""status":"failed","reason":"exit status 3""#),
            "{json}"
        );
        assert!(
            json.contains(r#""submitted":"2023-11-14T22:13:20.000001Z""#),
            "{json}"
        );
        let back: TaskResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, result);
        assert_eq!(back.queue_wait(), Duration::from_micros(499));
        assert_eq!(back.end_to_end(), Duration::from_micros(99_999));
    }

    #[test]
    fn since_saturates_when_clocks_disagree() {
        assert_eq!(Timestamp(5).since(Timestamp(9)), Duration::ZERO);
    }
}
