//! The compact encoding of what travels in SQS messages: bundles to the workers,
//! results back to the client.
//!
//! A message body is base64 (SQS bodies must be text) of two header bytes — the
//! format version of its kind and the message kind — followed by postcard of a
//! private wire struct. The wire structs are plain (postcard cannot do serde's `flatten` or
//! internally tagged enums) and squeeze out what repeats: batch ids, worker ids and
//! program names are stored once per message in a table and referenced by index,
//! task ids as deltas from the previous one, timestamps as deltas.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, BundleOptions};
use crate::task::{AnimotoSpec, BatchId, Outcome, Task, TaskResult, TaskSpec, Timestamp};
use crate::usage::Usage;

/// The largest SQS message body, in bytes.
pub const SQS_MAX_MESSAGE_BYTES: usize = 262_144;

/// Entries SQS takes in one batch request (sends, deletes, visibility
/// changes).
pub const SQS_MAX_BATCH_ENTRIES: usize = 10;

/// The format version of bundles. Each kind has its own, bumped on any change
/// of its wire structs: an old program then rejects a new message with
/// [`WireError::UnknownVersion`] instead of misreading it, and a change of one
/// kind leaves the other readable by old programs. Bundles: 2 adds the
/// batch's options (retries, dedup); 3 the expected lengths of `run` tasks,
/// and is written only for bundles that have one (the others stay readable
/// by workers of version 2); versions 1 and 2 are still read.
const BUNDLE_VERSION: u8 = 3;
/// The format version of results. 2: results carry `artifact_url`; 3: the
/// message carries the worker's [`Usage`] for it. Versions 1 and 2 are still
/// read (stored results in the ledger, results of older workers).
const RESULTS_VERSION: u8 = 3;

/// What a message holds (the second header byte), so that a results message sent
/// to a task queue by mistake is named as such.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Bundle,
    Results,
}

impl MessageKind {
    fn byte(self) -> u8 {
        match self {
            MessageKind::Bundle => 1,
            MessageKind::Results => 2,
        }
    }

    /// The version this program writes.
    fn version(self) -> u8 {
        match self {
            MessageKind::Bundle => BUNDLE_VERSION,
            MessageKind::Results => RESULTS_VERSION,
        }
    }

    /// The versions this program reads (oldest first).
    fn readable(self) -> &'static [u8] {
        match self {
            MessageKind::Bundle => &[1, 2, 3],
            MessageKind::Results => &[1, 2, 3],
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(MessageKind::Bundle),
            2 => Some(MessageKind::Results),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("truncated message: {len} bytes, shorter than the 2-byte header")]
    NoHeader { len: usize },
    #[error(
        "unknown wire format version {found} of {kind:?} messages (this program reads versions {:?})",
        kind.readable()
    )]
    UnknownVersion { kind: MessageKind, found: u8 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("expected a {expected:?} message, got a {found:?} message")]
    WrongKind {
        expected: MessageKind,
        found: MessageKind,
    },
    #[error("truncated {kind:?} message: it ends in the middle of a value")]
    Truncated { kind: MessageKind },
    #[error("malformed {kind:?} message: {source}")]
    Malformed {
        kind: MessageKind,
        #[source]
        source: postcard::Error,
    },
    #[error("malformed {kind:?} message: {extra} bytes after the end")]
    TrailingBytes { kind: MessageKind, extra: usize },
    #[error("malformed {kind:?} message: {table} index {index} out of range ({len} entries)")]
    BadIndex {
        kind: MessageKind,
        table: &'static str,
        index: u32,
        len: usize,
    },
    #[error("{what} takes {bytes} bytes encoded, more than the {max}-byte limit")]
    TooLarge {
        what: String,
        bytes: usize,
        max: usize,
    },
}

impl WireError {
    /// A message of a version newer than this program reads: written by a
    /// newer release (a rolling upgrade under way), for a newer reader.
    pub fn is_newer(&self) -> bool {
        match self {
            WireError::UnknownVersion { kind, found } => {
                kind.readable().last().is_some_and(|newest| found > newest)
            }
            _ => false,
        }
    }
}

/// The results of one bundle, sent to the bundle's `reply_to` queue.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultsMessage {
    /// The bundle's claim key (see [`crate::ledger::claim_key`]): lets the client
    /// count a bundle's results once even if they arrive twice.
    pub key: String,
    /// Sum of the tasks' ideal times (see [`crate::summary::ideal_time`]): the
    /// results do not carry their tasks, so the worker computes it.
    pub ideal: Duration,
    pub results: Vec<TaskResult>,
    /// The worker's requests and time since its previous results, this
    /// message's share (zero from workers older than results version 3).
    pub usage: Usage,
}

// ------------------------------------------------------------ wire structs --

#[derive(Serialize, Deserialize)]
struct WireBundle {
    submitted: u64,
    reply_to: Option<String>,
    batches: Vec<String>,
    programs: Vec<String>,
    tasks: Vec<WireTask>,
    /// Since version 2.
    options: WireOptions,
}

/// Version 3 of bundles: version 2's, then the expected lengths of the
/// tasks that have one, as (index in `tasks`, milliseconds).
#[derive(Serialize, Deserialize)]
struct WireBundleV3 {
    v2: WireBundle,
    expected_ms: Vec<(u32, u64)>,
}

/// Version 1 of [`WireBundle`]: no options.
#[derive(Serialize, Deserialize)]
struct WireBundleV1 {
    submitted: u64,
    reply_to: Option<String>,
    batches: Vec<String>,
    programs: Vec<String>,
    tasks: Vec<WireTask>,
}

#[derive(Serialize, Deserialize, Default)]
struct WireOptions {
    max_attempts: Option<u32>,
    retry_backoff_ms: Option<u64>,
    dedup: Option<bool>,
}

#[derive(Serialize, Deserialize)]
struct WireTask {
    batch: u32,
    /// Difference from the previous task's id (the first: from 0), zigzag-encoded
    /// by postcard: consecutive ids take one byte.
    id_delta: i64,
    attempt: u32,
    timeout_ms: Option<u64>,
    spec: WireSpec,
}

#[derive(Serialize, Deserialize)]
enum WireSpec {
    Sleep {
        ms: u64,
    },
    Run {
        program: u32,
        args: Vec<String>,
    },
    Animoto {
        urls: Vec<String>,
        seconds_per_image: Option<u32>,
        resolution: Option<String>,
        frame_rate: Option<u32>,
        output: Option<String>,
    },
}

/// Results; `R` is [`WireResult`], or [`WireResultV1`] in version 1.
#[derive(Serialize, Deserialize)]
struct WireResults<R> {
    key: String,
    ideal: Duration,
    batches: Vec<String>,
    workers: Vec<String>,
    results: Vec<R>,
}

/// Results in version 3: version 2's, then the message's usage.
#[derive(Serialize, Deserialize)]
struct WireResultsV3 {
    v2: WireResults<WireResult>,
    usage: Usage,
}

/// A result in version 2: version 1's fields, then the new ones (postcard
/// writes a nested struct's fields in place, as if they were this struct's).
#[derive(Serialize, Deserialize)]
struct WireResult {
    v1: WireResultV1,
    artifact_url: Option<String>,
}

/// A result in version 1.
#[derive(Serialize, Deserialize)]
struct WireResultV1 {
    batch: u32,
    id_delta: i64,
    attempt: u32,
    outcome: WireOutcome,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    truncated: bool,
    artifact: Option<String>,
    worker: u32,
    /// Microseconds; from the previous result's `submitted` (they are usually equal).
    submitted_delta: i64,
    /// Microseconds after `submitted`, then after `started`: small numbers.
    started_after: u64,
    finished_after: u64,
}

#[derive(Serialize, Deserialize)]
enum WireOutcome {
    Succeeded,
    Failed(String),
    TimedOut,
}

/// A table of strings that repeat within a message, referenced by index.
#[derive(Default)]
struct Interner {
    strings: Vec<String>,
}

impl Interner {
    fn index(&mut self, s: &str) -> u32 {
        // Tables hold a handful of entries (one batch, a few workers): a linear
        // scan beats hashing.
        let at = match self.strings.iter().position(|x| x == s) {
            Some(at) => at,
            None => {
                self.strings.push(s.to_string());
                self.strings.len() - 1
            }
        };
        u32::try_from(at).expect("fewer than 2^32 distinct strings in one message")
    }
}

fn lookup<'a>(
    kind: MessageKind,
    table: &'static str,
    strings: &'a [String],
    index: u32,
) -> Result<&'a str, WireError> {
    strings
        .get(index as usize)
        .map(String::as_str)
        .ok_or(WireError::BadIndex {
            kind,
            table,
            index,
            len: strings.len(),
        })
}

fn delta(value: u64, previous: u64) -> i64 {
    value.wrapping_sub(previous) as i64
}

fn undelta(delta: i64, previous: u64) -> u64 {
    previous.wrapping_add(delta as u64)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------- framing --

fn frame<T: Serialize>(kind: MessageKind, value: &T) -> String {
    frame_version(kind, kind.version(), value)
}

fn frame_version<T: Serialize>(kind: MessageKind, version: u8, value: &T) -> String {
    let bytes = postcard::to_extend(value, vec![version, kind.byte()])
        .expect("serialising to a Vec cannot fail");
    BASE64.encode(bytes)
}

/// The header of a message (its kind and version checked), and its payload.
fn unframe(expected: MessageKind, body: &str) -> Result<(u8, Vec<u8>), WireError> {
    let mut bytes = BASE64.decode(body.trim())?;
    let [version, kind, ..] = bytes[..] else {
        return Err(WireError::NoHeader { len: bytes.len() });
    };
    let found = MessageKind::from_byte(kind).ok_or(WireError::UnknownKind(kind))?;
    if found != expected {
        return Err(WireError::WrongKind { expected, found });
    }
    if !expected.readable().contains(&version) {
        return Err(WireError::UnknownVersion {
            kind: expected,
            found: version,
        });
    }
    bytes.drain(..2);
    Ok((version, bytes))
}

/// The payload of a message of kind `expected` as a `T`, all of it.
fn parse<T: for<'de> Deserialize<'de>>(
    expected: MessageKind,
    payload: &[u8],
) -> Result<T, WireError> {
    let (value, extra) =
        postcard::take_from_bytes::<T>(payload).map_err(|source| match source {
            postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated { kind: expected },
            source => WireError::Malformed {
                kind: expected,
                source,
            },
        })?;
    if !extra.is_empty() {
        return Err(WireError::TrailingBytes {
            kind: expected,
            extra: extra.len(),
        });
    }
    Ok(value)
}

/// The kind of an encoded message, without decoding the rest.
pub fn message_kind(body: &str) -> Result<MessageKind, WireError> {
    // Four base64 characters are three bytes: enough for the header.
    let head = body.trim().get(..4).unwrap_or(body);
    let bytes = BASE64.decode(head)?;
    let [version, kind, ..] = bytes[..] else {
        return Err(WireError::NoHeader { len: bytes.len() });
    };
    let kind = MessageKind::from_byte(kind).ok_or(WireError::UnknownKind(kind))?;
    if !kind.readable().contains(&version) {
        return Err(WireError::UnknownVersion {
            kind,
            found: version,
        });
    }
    Ok(kind)
}

// ---------------------------------------------------------------- bundles --

/// A bundle as an SQS message body.
pub fn encode_bundle(bundle: &Bundle) -> String {
    let mut batches = Interner::default();
    let mut programs = Interner::default();
    let mut previous = 0;
    let tasks = bundle
        .tasks
        .iter()
        .map(|task| {
            let id_delta = delta(task.id, previous);
            previous = task.id;
            WireTask {
                batch: batches.index(task.batch.as_str()),
                id_delta,
                attempt: task.attempt,
                timeout_ms: task.timeout.map(duration_ms),
                spec: match &task.spec {
                    TaskSpec::Sleep { ms } => WireSpec::Sleep { ms: *ms },
                    // Its `expected_ms` travels apart (version 3).
                    TaskSpec::Run { program, args, .. } => WireSpec::Run {
                        program: programs.index(program),
                        args: args.clone(),
                    },
                    TaskSpec::Animoto(a) => WireSpec::Animoto {
                        urls: a.urls.clone(),
                        seconds_per_image: a.seconds_per_image,
                        resolution: a.resolution.clone(),
                        frame_rate: a.frame_rate,
                        output: a.output.clone(),
                    },
                },
            }
        })
        .collect();
    let wire = WireBundle {
        submitted: bundle.submitted.0,
        reply_to: bundle.reply_to.clone(),
        batches: batches.strings,
        programs: programs.strings,
        tasks,
        options: WireOptions {
            max_attempts: bundle.options.max_attempts,
            retry_backoff_ms: bundle.options.retry_backoff.map(duration_ms),
            dedup: bundle.options.dedup,
        },
    };
    let expected_ms: Vec<(u32, u64)> = bundle
        .tasks
        .iter()
        .enumerate()
        .filter_map(|(i, task)| match task.spec {
            TaskSpec::Run {
                expected_ms: Some(ms),
                ..
            } => Some((u32::try_from(i).unwrap_or(u32::MAX), ms)),
            _ => None,
        })
        .collect();
    if expected_ms.is_empty() {
        return frame_version(MessageKind::Bundle, 2, &wire);
    }
    frame(
        MessageKind::Bundle,
        &WireBundleV3 {
            v2: wire,
            expected_ms,
        },
    )
}

/// A bundle from an SQS message body.
pub fn decode_bundle(body: &str) -> Result<Bundle, WireError> {
    const KIND: MessageKind = MessageKind::Bundle;
    let (version, payload) = unframe(KIND, body)?;
    let (wire, expected) = match version {
        1 => {
            let v1: WireBundleV1 = parse(KIND, &payload)?;
            let wire = WireBundle {
                submitted: v1.submitted,
                reply_to: v1.reply_to,
                batches: v1.batches,
                programs: v1.programs,
                tasks: v1.tasks,
                options: WireOptions::default(),
            };
            (wire, Vec::new())
        }
        2 => (parse(KIND, &payload)?, Vec::new()),
        _ => {
            let v3: WireBundleV3 = parse(KIND, &payload)?;
            (v3.v2, v3.expected_ms)
        }
    };
    let batches: Vec<BatchId> = wire.batches.into_iter().map(BatchId::new).collect();
    let mut previous = 0;
    let mut tasks = Vec::with_capacity(wire.tasks.len());
    for t in wire.tasks {
        let id = undelta(t.id_delta, previous);
        previous = id;
        let batch = batches
            .get(t.batch as usize)
            .ok_or(WireError::BadIndex {
                kind: KIND,
                table: "batch",
                index: t.batch,
                len: batches.len(),
            })?
            .clone();
        let spec = match t.spec {
            WireSpec::Sleep { ms } => TaskSpec::Sleep { ms },
            WireSpec::Run { program, args } => TaskSpec::Run {
                program: lookup(KIND, "program", &wire.programs, program)?.to_string(),
                args,
                expected_ms: None,
            },
            WireSpec::Animoto {
                urls,
                seconds_per_image,
                resolution,
                frame_rate,
                output,
            } => TaskSpec::Animoto(AnimotoSpec {
                urls,
                seconds_per_image,
                resolution,
                frame_rate,
                output,
            }),
        };
        tasks.push(Task {
            batch,
            id,
            attempt: t.attempt,
            timeout: t.timeout_ms.map(Duration::from_millis),
            spec,
        });
    }
    for (index, ms) in expected {
        let len = tasks.len();
        let Some(Task {
            spec: TaskSpec::Run { expected_ms, .. },
            ..
        }) = tasks.get_mut(index as usize)
        else {
            return Err(WireError::BadIndex {
                kind: KIND,
                table: "run task",
                index,
                len,
            });
        };
        *expected_ms = Some(ms);
    }
    Ok(Bundle {
        submitted: Timestamp(wire.submitted),
        tasks,
        reply_to: wire.reply_to,
        options: BundleOptions {
            max_attempts: wire.options.max_attempts,
            retry_backoff: wire.options.retry_backoff_ms.map(Duration::from_millis),
            dedup: wire.options.dedup,
        },
    })
}

/// A bundle as one or more message bodies of at most `max_bytes` each: a bundle
/// too large for one message is split into smaller bundles (halves, recursively),
/// each with the same `submitted` and `reply_to`. Fails only if a single task does
/// not fit.
pub fn encode_bundle_within(bundle: &Bundle, max_bytes: usize) -> Result<Vec<String>, WireError> {
    let mut out = Vec::new();
    split_into(bundle, max_bytes, &mut out)?;
    Ok(out)
}

fn split_into(bundle: &Bundle, max_bytes: usize, out: &mut Vec<String>) -> Result<(), WireError> {
    let body = encode_bundle(bundle);
    if body.len() <= max_bytes {
        out.push(body);
        return Ok(());
    }
    if bundle.tasks.len() <= 1 {
        let what = match bundle.tasks.first() {
            Some(t) => format!("task {} of batch {}", t.id, t.batch),
            None => "an empty bundle".to_string(),
        };
        return Err(WireError::TooLarge {
            what,
            bytes: body.len(),
            max: max_bytes,
        });
    }
    let half = bundle.tasks.len() / 2;
    for tasks in [&bundle.tasks[..half], &bundle.tasks[half..]] {
        let part = Bundle {
            submitted: bundle.submitted,
            tasks: tasks.to_vec(),
            reply_to: bundle.reply_to.clone(),
            options: bundle.options,
        };
        split_into(&part, max_bytes, out)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- results --

fn wire_results(msg: &ResultsMessage, output_cap: Option<usize>) -> WireResultsV3 {
    let mut batches = Interner::default();
    let mut workers = Interner::default();
    let (mut previous_id, mut previous_submitted) = (0, 0);
    let results = msg
        .results
        .iter()
        .map(|r| {
            let (stdout, cut_out) = tail(&r.stdout, output_cap);
            let (stderr, cut_err) = tail(&r.stderr, output_cap);
            let v1 = WireResultV1 {
                batch: batches.index(r.batch.as_str()),
                id_delta: delta(r.id, previous_id),
                attempt: r.attempt,
                outcome: match &r.outcome {
                    Outcome::Succeeded => WireOutcome::Succeeded,
                    Outcome::Failed { reason } => WireOutcome::Failed(reason.clone()),
                    Outcome::TimedOut => WireOutcome::TimedOut,
                },
                exit_code: r.exit_code,
                stdout: stdout.to_string(),
                stderr: stderr.to_string(),
                truncated: r.truncated || cut_out || cut_err,
                artifact: r.artifact.clone(),
                worker: workers.index(&r.worker),
                submitted_delta: delta(r.submitted.0, previous_submitted),
                started_after: r.started.0.wrapping_sub(r.submitted.0),
                finished_after: r.finished.0.wrapping_sub(r.started.0),
            };
            previous_id = r.id;
            previous_submitted = r.submitted.0;
            WireResult {
                v1,
                artifact_url: r.artifact_url.clone(),
            }
        })
        .collect();
    WireResultsV3 {
        v2: WireResults {
            key: msg.key.clone(),
            ideal: msg.ideal,
            batches: batches.strings,
            workers: workers.strings,
            results,
        },
        usage: msg.usage,
    }
}

/// The last at most `cap` bytes of `s`, on a character boundary; and whether
/// anything was cut.
fn tail(s: &str, cap: Option<usize>) -> (&str, bool) {
    match cap {
        Some(cap) if s.len() > cap => {
            let mut start = s.len() - cap;
            while !s.is_char_boundary(start) {
                start += 1;
            }
            (&s[start..], true)
        }
        _ => (s, false),
    }
}

/// A results message as one message body of at most `max_bytes`. Output that
/// does not fit is cut to its last bytes (each result's stdout and stderr to the
/// same, largest cap that fits) and the result marked `truncated`; fails only if
/// the results do not fit even with no output at all.
pub fn encode_results(msg: &ResultsMessage, max_bytes: usize) -> Result<String, WireError> {
    let body = frame(MessageKind::Results, &wire_results(msg, None));
    if body.len() <= max_bytes {
        return Ok(body);
    }
    let fits = |cap: usize| {
        let body = frame(MessageKind::Results, &wire_results(msg, Some(cap)));
        (body.len() <= max_bytes).then_some(body)
    };
    let Some(mut best) = fits(0) else {
        return Err(WireError::TooLarge {
            what: format!("the results of bundle {} without output", msg.key),
            bytes: frame(MessageKind::Results, &wire_results(msg, Some(0))).len(),
            max: max_bytes,
        });
    };
    // Binary search for the largest cap that fits: cap 0 fits, `longest` does not.
    let longest = msg
        .results
        .iter()
        .map(|r| r.stdout.len().max(r.stderr.len()))
        .max()
        .unwrap_or(0);
    let (mut lo, mut hi) = (0, longest);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match fits(mid) {
            Some(body) => {
                best = body;
                lo = mid;
            }
            None => hi = mid,
        }
    }
    tracing::debug!(key = %msg.key, cap = lo, "results output cut to fit one message");
    Ok(best)
}

/// Results as as many message bodies of at most `max_bytes` as they need:
/// split between results rather than cut, so that output is cut only where
/// one result alone does not fit (see [`encode_results`]). The ideal time goes
/// with the first part, and so does the usage, so that each is counted once.
pub fn encode_results_split(
    msg: &ResultsMessage,
    max_bytes: usize,
) -> Result<Vec<String>, WireError> {
    let body = frame(MessageKind::Results, &wire_results(msg, None));
    if body.len() <= max_bytes {
        return Ok(vec![body]);
    }
    if msg.results.len() <= 1 {
        return match encode_results(msg, max_bytes) {
            Ok(body) => Ok(vec![body]),
            Err(WireError::TooLarge { bytes, .. }) if msg.results.len() == 1 => {
                // Too large even without its output (a reason or an artifact
                // URL of hundreds of KB): reported failed, saying why, where
                // its bundle would be held unreported for ever.
                let mut small = msg.results[0].clone();
                small.outcome = Outcome::Failed {
                    reason: format!(
                        "its result was too large to report: {bytes} bytes without its output, where a message holds {max_bytes}"
                    ),
                };
                small.stdout.clear();
                small.stderr.clear();
                small.truncated = true;
                small.artifact = None;
                small.artifact_url = None;
                let msg = ResultsMessage {
                    results: vec![small],
                    ..msg.clone()
                };
                encode_results(&msg, max_bytes).map(|body| vec![body])
            }
            Err(e) => Err(e),
        };
    }
    // Halves by count: results of one bundle are alike in size, so a few
    // levels suffice.
    let mid = msg.results.len() / 2;
    let first = ResultsMessage {
        key: msg.key.clone(),
        ideal: msg.ideal,
        results: msg.results[..mid].to_vec(),
        usage: msg.usage,
    };
    let second = ResultsMessage {
        key: msg.key.clone(),
        ideal: Duration::ZERO,
        results: msg.results[mid..].to_vec(),
        usage: Usage::default(),
    };
    let mut bodies = encode_results_split(&first, max_bytes)?;
    bodies.extend(encode_results_split(&second, max_bytes)?);
    Ok(bodies)
}

/// A results message from a message body.
pub fn decode_results(body: &str) -> Result<ResultsMessage, WireError> {
    const KIND: MessageKind = MessageKind::Results;
    let (version, payload) = unframe(KIND, body)?;
    let (wire, usage): (WireResults<WireResult>, Usage) = if version == 1 {
        let old: WireResults<WireResultV1> = parse(KIND, &payload)?;
        let v2 = WireResults {
            key: old.key,
            ideal: old.ideal,
            batches: old.batches,
            workers: old.workers,
            results: old
                .results
                .into_iter()
                .map(|v1| WireResult {
                    v1,
                    artifact_url: None,
                })
                .collect(),
        };
        (v2, Usage::default())
    } else if version == 2 {
        (parse(KIND, &payload)?, Usage::default())
    } else {
        let v3: WireResultsV3 = parse(KIND, &payload)?;
        (v3.v2, v3.usage)
    };
    let batches: Vec<BatchId> = wire.batches.into_iter().map(BatchId::new).collect();
    let workers: Vec<std::sync::Arc<str>> = wire.workers.into_iter().map(Into::into).collect();
    let (mut previous_id, mut previous_submitted) = (0, 0);
    let mut results = Vec::with_capacity(wire.results.len());
    for WireResult {
        v1: r,
        artifact_url,
    } in wire.results
    {
        let id = undelta(r.id_delta, previous_id);
        let submitted = undelta(r.submitted_delta, previous_submitted);
        previous_id = id;
        previous_submitted = submitted;
        let bad = |table, index, len| WireError::BadIndex {
            kind: KIND,
            table,
            index,
            len,
        };
        let started = submitted.wrapping_add(r.started_after);
        results.push(TaskResult {
            batch: batches
                .get(r.batch as usize)
                .ok_or_else(|| bad("batch", r.batch, batches.len()))?
                .clone(),
            id,
            attempt: r.attempt,
            outcome: match r.outcome {
                WireOutcome::Succeeded => Outcome::Succeeded,
                WireOutcome::Failed(reason) => Outcome::Failed { reason },
                WireOutcome::TimedOut => Outcome::TimedOut,
            },
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            truncated: r.truncated,
            artifact: r.artifact,
            artifact_url,
            worker: workers
                .get(r.worker as usize)
                .ok_or_else(|| bad("worker", r.worker, workers.len()))?
                .clone(),
            submitted: Timestamp(submitted),
            started: Timestamp(started),
            finished: Timestamp(started.wrapping_add(r.finished_after)),
        });
    }
    Ok(ResultsMessage {
        key: wire.key,
        ideal: wire.ideal,
        results,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> BatchId {
        BatchId::new("sweep-2026-05-01T10:00:00Z-7f3a")
    }

    fn task(id: u64, spec: TaskSpec) -> Task {
        Task {
            batch: batch(),
            id,
            attempt: 1,
            timeout: None,
            spec,
        }
    }

    fn bundle(tasks: Vec<Task>) -> Bundle {
        Bundle {
            submitted: Timestamp(1_777_000_000_123_456),
            tasks,
            reply_to: Some(
                "https://sqs.us-east-1.amazonaws.com/123456789012/cloudkon-results-7f3a".into(),
            ),
            options: BundleOptions::default(),
        }
    }

    #[test]
    fn bundle_options_travel_and_version_1_bundles_still_read() {
        let mut b = sleep0_bundle(3);
        b.options = BundleOptions {
            max_attempts: Some(3),
            retry_backoff: Some(Duration::from_millis(1500)),
            dedup: Some(false),
        };
        assert_eq!(decode_bundle(&encode_bundle(&b)).unwrap(), b);

        // What a version-1 program sent: no options, read as "the worker's".
        let v1 = WireBundleV1 {
            submitted: 7,
            reply_to: None,
            batches: vec!["b".into()],
            programs: vec![],
            tasks: vec![WireTask {
                batch: 0,
                id_delta: 5,
                attempt: 1,
                timeout_ms: None,
                spec: WireSpec::Sleep { ms: 2 },
            }],
        };
        let old = decode_bundle(&frame_version(MessageKind::Bundle, 1, &v1)).unwrap();
        assert_eq!(old.options, BundleOptions::default());
        assert_eq!(old.tasks[0].id, 5);
        assert_eq!(old.tasks[0].spec, TaskSpec::Sleep { ms: 2 });
    }

    fn sleep0_bundle(n: u64) -> Bundle {
        bundle((0..n).map(|i| task(i, TaskSpec::Sleep { ms: 0 })).collect())
    }

    fn run_bundle(n: u64) -> Bundle {
        bundle(
            (0..n)
                .map(|i| {
                    task(
                        10_000 + i,
                        TaskSpec::Run {
                            program: "./simulate".into(),
                            args: vec![
                                "--seed".into(),
                                format!("{i}"),
                                "--config".into(),
                                "params/ocean-2deg.toml".into(),
                                "--out".into(),
                                format!("out/run-{i:05}.nc"),
                            ],
                            expected_ms: None,
                        },
                    )
                })
                .collect(),
        )
    }

    fn result(id: u64, stdout: &str) -> TaskResult {
        TaskResult {
            batch: batch(),
            id,
            attempt: 1,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            worker: "i-0abc123def4567890/3".into(),
            submitted: Timestamp(1_777_000_000_123_456),
            started: Timestamp(1_777_000_000_223_456 + id),
            finished: Timestamp(1_777_000_000_224_000 + 2 * id),
        }
    }

    #[test]
    fn bundles_round_trip_every_field() {
        let mut b = run_bundle(3);
        b.tasks[1].attempt = 4;
        b.tasks[1].timeout = Some(Duration::from_millis(2500));
        b.tasks.push(Task {
            batch: BatchId::new("other-batch"),
            id: 3,
            attempt: 2,
            timeout: None,
            spec: TaskSpec::Animoto(AnimotoSpec {
                urls: vec!["s3://in/a.png".into(), "https://x/b.jpg".into()],
                seconds_per_image: Some(2),
                resolution: Some("1280x720".into()),
                frame_rate: None,
                output: Some("s3://out/videos".into()),
            }),
        });
        b.tasks.push(task(u64::MAX, TaskSpec::Sleep { ms: 100 }));
        assert_eq!(decode_bundle(&encode_bundle(&b)).unwrap(), b);
        let mut b = sleep0_bundle(0);
        b.reply_to = None;
        assert_eq!(decode_bundle(&encode_bundle(&b)).unwrap(), b);
    }

    #[test]
    fn expected_lengths_travel_in_version_3_and_bundles_without_stay_version_2() {
        let mut b = run_bundle(4);
        b.tasks.push(task(4, TaskSpec::Sleep { ms: 7 }));
        for (i, ms) in [(1, 5000), (3, 0)] {
            let TaskSpec::Run { expected_ms, .. } = &mut b.tasks[i].spec else {
                panic!("a run bundle");
            };
            *expected_ms = Some(ms);
        }
        let body = encode_bundle(&b);
        assert_eq!(BASE64.decode(&body).unwrap()[..2], [3, 1]);
        assert_eq!(decode_bundle(&body).unwrap(), b);
        // Without one: version 2, as a worker of version 2 reads it.
        let plain = BASE64.decode(encode_bundle(&run_bundle(4))).unwrap();
        assert_eq!(plain[..2], [2, 1]);
        // An index that is no run task is refused, naming it.
        let mut wire = WireBundleV3 {
            v2: parse(MessageKind::Bundle, &plain[2..]).unwrap(),
            expected_ms: vec![(9, 1)],
        };
        let err = decode_bundle(&frame_version(MessageKind::Bundle, 3, &wire)).unwrap_err();
        assert!(err.to_string().contains("run task"), "{err}");
        wire.expected_ms = vec![(0, 1)];
        let ok = decode_bundle(&frame_version(MessageKind::Bundle, 3, &wire)).unwrap();
        assert_eq!(
            ok.tasks[0].spec.declared_length(),
            Some(Duration::from_millis(1))
        );
    }

    #[test]
    fn results_round_trip_every_field() {
        let mut results = vec![result(5, "hello\n"), result(6, ""), result(2, "")];
        results[1].outcome = Outcome::Failed {
            reason: "exit status 3".into(),
        };
        results[1].exit_code = Some(3);
        results[1].stderr = "boom".into();
        results[1].truncated = true;
        results[1].worker = "another-worker".into();
        results[2].outcome = Outcome::TimedOut;
        results[2].exit_code = None;
        results[2].artifact = Some("s3://out/videos/2.mp4".into());
        results[2].artifact_url = Some(
            "https://out.s3.us-east-1.amazonaws.com/videos/2.mp4?X-Amz-Expires=604800&X-Amz-Signature=abc".into(),
        );
        results[2].submitted = Timestamp(5); // clocks far apart: deltas wrap
        let msg = ResultsMessage {
            key: "b#5".into(),
            ideal: Duration::new(3, 141_592_653),
            results,
            usage: Default::default(),
        };
        let body = encode_results(&msg, SQS_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(decode_results(&body).unwrap(), msg);
    }

    #[test]
    fn results_of_version_1_still_decode_without_artifact_url() {
        // A results message as a version-1 worker (or ledger item) has it.
        let mut r = result(4, "out");
        r.artifact = Some("s3://out/videos/4.mp4".into());
        let msg = ResultsMessage {
            key: "b#4".into(),
            ideal: Duration::from_millis(7),
            results: vec![r, result(9, "")],
            usage: Default::default(),
        };
        let v2 = wire_results(&msg, None).v2;
        let v1 = WireResults {
            key: v2.key,
            ideal: v2.ideal,
            batches: v2.batches,
            workers: v2.workers,
            results: v2.results.into_iter().map(|r| r.v1).collect(),
        };
        let body = frame_version(MessageKind::Results, 1, &v1);
        assert_eq!(BASE64.decode(&body).unwrap()[0], 1);
        assert_eq!(message_kind(&body).unwrap(), MessageKind::Results);
        assert_eq!(decode_results(&body).unwrap(), msg);
    }

    #[test]
    fn usage_travels_with_the_first_part_and_version_2_reads_as_none() {
        let usage = Usage {
            sqs_requests: 2.5,
            dynamodb_requests: 1.0,
            dynamodb_write_units: 3.0,
            s3_reads: 0.0,
            s3_writes: 0.25,
            worker_seconds: 1.5,
        };
        let big = "x".repeat(40_000);
        let msg = ResultsMessage {
            key: "b#1".into(),
            ideal: Duration::from_millis(3),
            results: (0..10).map(|i| result(i, &big)).collect(),
            usage,
        };
        let bodies = encode_results_split(&msg, SQS_MAX_MESSAGE_BYTES).unwrap();
        assert!(bodies.len() > 1);
        let decoded: Vec<_> = bodies.iter().map(|b| decode_results(b).unwrap()).collect();
        assert_eq!(decoded[0].usage, usage);
        assert!(decoded[1..].iter().all(|m| m.usage.is_zero()));
        // What a worker of results version 2 sends: no usage.
        let v2 = frame_version(MessageKind::Results, 2, &wire_results(&msg, None).v2);
        let old = decode_results(&v2).unwrap();
        assert!(old.usage.is_zero());
        assert_eq!(old.results, msg.results);
    }

    #[test]
    fn each_kind_has_its_own_version() {
        let bundle = BASE64.decode(encode_bundle(&sleep0_bundle(1))).unwrap();
        let results = ResultsMessage {
            key: "k".into(),
            ideal: Duration::ZERO,
            results: vec![],
            usage: Default::default(),
        };
        let results = BASE64
            .decode(encode_results(&results, 1000).unwrap())
            .unwrap();
        // Bundles without expected lengths at version 2 (options; 3 with
        // them), results at 3 (usage).
        assert_eq!(bundle[..2], [2, 1]);
        assert_eq!(results[..2], [3, 2]);
        // A version-4 bundle does not exist yet: refused, naming the kind.
        let mut future = bundle.clone();
        future[0] = 4;
        let err = decode_bundle(&BASE64.encode(&future)).unwrap_err();
        assert!(
            err.to_string()
                .contains("version 4 of Bundle messages (this program reads versions [1, 2, 3])"),
            "{err}"
        );
    }

    #[test]
    fn damaged_messages_are_named_errors() {
        let body = encode_bundle(&run_bundle(2));
        let bytes = BASE64.decode(&body).unwrap();
        let reencode = |b: &[u8]| BASE64.encode(b);

        assert!(matches!(
            decode_bundle("{\"not\":\"ours\"}"),
            Err(WireError::Base64(_))
        ));
        assert!(matches!(
            decode_bundle(""),
            Err(WireError::NoHeader { len: 0 })
        ));
        let mut future = bytes.clone();
        future[0] = 9;
        let err = decode_bundle(&reencode(&future)).unwrap_err();
        assert!(matches!(err, WireError::UnknownVersion { found: 9, .. }));
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(err.is_newer());
        let mut old = bytes.clone();
        old[0] = 0;
        let err = decode_bundle(&reencode(&old)).unwrap_err();
        assert!(matches!(err, WireError::UnknownVersion { found: 0, .. }));
        assert!(!err.is_newer(), "older than any release: not ours");
        let err = decode_bundle(&reencode(&bytes[..bytes.len() - 3])).unwrap_err();
        assert!(matches!(err, WireError::Truncated { .. }), "{err}");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_bundle(&reencode(&longer)),
            Err(WireError::TrailingBytes { extra: 1, .. })
        ));
        let results = encode_results(
            &ResultsMessage {
                key: "k".into(),
                ideal: Duration::ZERO,
                results: vec![],
                usage: Default::default(),
            },
            1000,
        )
        .unwrap();
        assert!(matches!(
            decode_bundle(&results),
            Err(WireError::WrongKind {
                expected: MessageKind::Bundle,
                found: MessageKind::Results
            })
        ));
        assert_eq!(message_kind(&results).unwrap(), MessageKind::Results);
        assert_eq!(message_kind(&body).unwrap(), MessageKind::Bundle);
    }

    #[test]
    fn a_bad_table_index_is_an_error_not_a_panic() {
        let wire = WireBundle {
            submitted: 0,
            reply_to: None,
            batches: vec!["b".into()],
            programs: vec![],
            tasks: vec![WireTask {
                batch: 0,
                id_delta: 0,
                attempt: 1,
                timeout_ms: None,
                spec: WireSpec::Run {
                    program: 7,
                    args: vec![],
                },
            }],
            options: WireOptions::default(),
        };
        let err = decode_bundle(&frame_version(MessageKind::Bundle, 2, &wire)).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::BadIndex {
                    table: "program",
                    index: 7,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn big_bundles_split_within_the_limit_keeping_every_task_once() {
        let b = run_bundle(3000);
        let whole = encode_bundle(&b).len();
        let max = 20_000;
        assert!(whole > 4 * max, "test needs a bundle well over the limit");
        let bodies = encode_bundle_within(&b, max).unwrap();
        assert!(bodies.len() >= whole.div_ceil(max), "{}", bodies.len());
        let mut ids = Vec::new();
        for body in &bodies {
            assert!(body.len() <= max, "{} > {max}", body.len());
            let part = decode_bundle(body).unwrap();
            assert_eq!(part.submitted, b.submitted);
            assert_eq!(part.reply_to, b.reply_to);
            ids.extend(part.tasks.iter().map(|t| t.id));
        }
        assert_eq!(ids, b.tasks.iter().map(|t| t.id).collect::<Vec<_>>());
        // Small enough: one message, the plain encoding.
        assert_eq!(
            encode_bundle_within(&b, whole).unwrap(),
            vec![encode_bundle(&b)]
        );
        // A single task over the limit cannot be split.
        let err = encode_bundle_within(&run_bundle(1), 50).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("task 10000"), "{err}");
    }

    #[test]
    fn results_over_the_limit_lose_the_start_of_their_output() {
        let big = format!("{}é{}", "x".repeat(150_000), "the end\n".repeat(10_000));
        let msg = ResultsMessage {
            key: "b#0".into(),
            ideal: Duration::from_secs(1),
            results: vec![result(0, &big), result(1, "short"), {
                let mut r = result(2, "");
                r.stderr = big.clone();
                r
            }],
            usage: Default::default(),
        };
        let body = encode_results(&msg, SQS_MAX_MESSAGE_BYTES).unwrap();
        assert!(body.len() <= SQS_MAX_MESSAGE_BYTES);
        // Close to the limit: the cap was searched, not just dropped to zero.
        assert!(body.len() > SQS_MAX_MESSAGE_BYTES - 100, "{}", body.len());
        let back = decode_results(&body).unwrap();
        assert!(back.results[0].truncated && back.results[2].truncated);
        assert!(back.results[0].stdout.ends_with("the end\n"));
        assert!(big.ends_with(&back.results[2].stderr));
        assert!(!back.results[1].truncated);
        assert_eq!(back.results[1].stdout, "short");

        // Too many results to fit even without output: an error, not a panic.
        let many = ResultsMessage {
            key: "b#0".into(),
            ideal: Duration::ZERO,
            results: (0..2000).map(|i| result(i, "")).collect(),
            usage: Default::default(),
        };
        assert!(matches!(
            encode_results(&many, 1000),
            Err(WireError::TooLarge { .. })
        ));
    }

    /// The paper found protobuf 44% smaller than JSON; this prints our figure.
    #[test]
    fn wire_size_against_plain_json() {
        let cases = [
            ("1,000 x sleep 0", sleep0_bundle(1000)),
            ("100 x run ./simulate", run_bundle(100)),
        ];
        for (name, b) in cases {
            let wire = encode_bundle(&b).len();
            let json = serde_json::to_string(&b.tasks).unwrap().len();
            let ratio = wire as f64 / json as f64;
            println!(
                "{name}: wire {wire} B (base64), JSON {json} B: {:.0}% of JSON, {:.0}% smaller",
                ratio * 100.0,
                (1.0 - ratio) * 100.0
            );
            assert!(ratio < 0.56, "{name}: wire is {ratio:.2} of JSON");
        }
        let msg = ResultsMessage {
            key: "b#0".into(),
            ideal: Duration::ZERO,
            results: (0..1000).map(|i| result(i, "")).collect(),
            usage: Default::default(),
        };
        let wire = encode_results(&msg, SQS_MAX_MESSAGE_BYTES).unwrap().len();
        let json = serde_json::to_string(&msg.results).unwrap().len();
        println!(
            "1,000 sleep 0 results: wire {wire} B, JSON {json} B: {:.0}% of JSON",
            wire as f64 / json as f64 * 100.0
        );
        assert!(wire * 4 < json);
    }

    #[test]
    fn results_too_large_for_one_message_split_without_cutting_output() {
        let results: Vec<TaskResult> = (0..40).map(|id| result(id, &"x".repeat(10_000))).collect();
        let msg = ResultsMessage {
            key: "b#0".into(),
            ideal: Duration::from_secs(4),
            results,
            usage: Default::default(),
        };
        let bodies = encode_results_split(&msg, 100_000).unwrap();
        assert!(bodies.len() >= 4, "{} parts", bodies.len());
        let mut ids = Vec::new();
        let mut ideal = Duration::ZERO;
        for body in &bodies {
            assert!(body.len() <= 100_000);
            let part = decode_results(body).unwrap();
            assert_eq!(part.key, "b#0");
            ideal += part.ideal;
            for r in part.results {
                assert_eq!(r.stdout.len(), 10_000, "output was cut");
                assert!(!r.truncated);
                ids.push(r.id);
            }
        }
        assert_eq!(ids, (0..40).collect::<Vec<_>>());
        assert_eq!(ideal, Duration::from_secs(4), "the ideal time counted once");
        // One result alone too large: cut to fit, as encode_results does.
        let one = ResultsMessage {
            key: "b#0".into(),
            ideal: Duration::ZERO,
            results: vec![msg.results[0].clone()],
            usage: Default::default(),
        };
        let bodies = encode_results_split(&one, 5_000).unwrap();
        assert_eq!(bodies.len(), 1);
        assert!(decode_results(&bodies[0]).unwrap().results[0].truncated);
    }

    #[test]
    fn a_result_too_large_without_its_output_is_reported_failed_saying_why() {
        let mut huge = result(1, "out");
        huge.outcome = Outcome::Failed {
            reason: "r".repeat(20_000),
        };
        huge.artifact_url = Some(format!("https://example.invalid/{}", "a".repeat(20_000)));
        let msg = ResultsMessage {
            key: "b#0".into(),
            ideal: Duration::from_secs(1),
            results: vec![result(0, "fine"), huge],
            usage: Default::default(),
        };
        let bodies = encode_results_split(&msg, 5_000).unwrap();
        let results: Vec<TaskResult> = bodies
            .iter()
            .flat_map(|b| decode_results(b).unwrap().results)
            .collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].stdout, "fine");
        let Outcome::Failed { reason } = &results[1].outcome else {
            panic!("{:?}", results[1].outcome);
        };
        assert!(
            reason.starts_with("its result was too large to report"),
            "{reason}"
        );
        assert!(results[1].truncated && results[1].artifact_url.is_none());
    }
}
