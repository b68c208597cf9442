//! What a batch's tasks were when it first sent some: `status.sourceDigest`.
//!
//! A runner resumes at a checkpoint, a position in the batch's tasks. If
//! `spec.tasks` (or its workload file) changed meanwhile, the position points
//! into other tasks: some would run twice, others never, and nothing would
//! say so. The digest, fixed with the first enqueue, lets the reconciler
//! refuse such a change by name, and the batch goes on once it is put back.

use sha2::{Digest as _, Sha256};

use crate::batch_runner::Source;
use crate::crd::taskbatch::TaskSource;
use crate::validate::Invalid;

/// The digest of the tasks a runner would send now: of `spec.tasks` for
/// inline tasks and generators, of the file's bytes for a workload file once
/// read; `None` for a file not read (a runner is running it).
///
/// `spec.tasks` is digested as the operator serializes it: stable while every
/// field is skipped when unset, as they all are, so that an operator with
/// new optional fields reads an old batch's digest the same.
pub fn current(tasks: &TaskSource, source: &Source) -> Option<String> {
    match source {
        Source::File { digest, .. } => Some(digest.clone()),
        Source::Spec if tasks.inline.is_some() || tasks.generator.is_some() => {
            let json = serde_json::to_vec(tasks).expect("a TaskSource serializes");
            Some(of_bytes(&json))
        }
        Source::Spec => None,
    }
}

/// `sha256:` and the hex digest of `bytes`.
pub fn of_bytes(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(7 + 2 * digest.len());
    hex.push_str("sha256:");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Refuses tasks that differ from those the batch started sending
/// (`recorded`), saying how far it got and what to do. Nothing recorded (not
/// started, or started by an operator that wrote no digest) or nothing to
/// compare (a file not read): nothing to refuse.
pub fn check(
    recorded: Option<&str>,
    current: Option<&str>,
    tasks: &TaskSource,
    enqueued: i64,
    total: i64,
) -> Result<(), Invalid> {
    let (Some(recorded), Some(current)) = (recorded, current) else {
        return Ok(());
    };
    if recorded == current {
        return Ok(());
    }
    let (field, what) = if tasks.config_map.is_some() {
        ("spec.tasks.configMap", "names a workload file that changed")
    } else if tasks.s3.is_some() {
        ("spec.tasks.s3.uri", "names a workload file that changed")
    } else {
        ("spec.tasks", "changed")
    };
    let sent = if total > 0 {
        format!("{enqueued} of {total} tasks sent")
    } else {
        format!("{enqueued} tasks sent")
    };
    Err(Invalid {
        field: field.to_string(),
        message: format!(
            "{field} {what} after the batch started sending its tasks ({sent}): \
             the tasks not sent yet can no longer be told from those sent. \
             Put the tasks back as they were to go on, or create a new TaskBatch for the new ones"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tasks(v: serde_json::Value) -> TaskSource {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_same_tasks_give_the_same_digest_and_any_change_another() {
        let inline = tasks(json!({"inline": [{"kind": "sleep", "ms": 5}]}));
        let again = tasks(json!({"inline": [{"kind": "sleep", "ms": 5}]}));
        let longer = tasks(json!({"inline": [{"kind": "sleep", "ms": 6}]}));
        let generator =
            tasks(json!({"generator": {"template": {"kind": "sleep", "ms": 5}, "count": 3}}));
        let more =
            tasks(json!({"generator": {"template": {"kind": "sleep", "ms": 5}, "count": 4}}));
        let d = |t: &TaskSource| current(t, &Source::Spec).unwrap();
        assert_eq!(d(&inline), d(&again));
        assert!(d(&inline).starts_with("sha256:") && d(&inline).len() == 7 + 64);
        assert_ne!(d(&inline), d(&longer));
        assert_ne!(d(&generator), d(&more));
        // A file not read has nothing to compare.
        let file = tasks(json!({"configMap": {"name": "w", "key": "k"}}));
        assert_eq!(current(&file, &Source::Spec), None);
        assert_eq!(of_bytes(b"sleep 1\n"), of_bytes(b"sleep 1\n"));
        assert_ne!(of_bytes(b"sleep 1\n"), of_bytes(b"sleep 2\n"));
    }

    /// Pinned: a batch started by one operator is checked by the next, so a
    /// change to how `spec.tasks` serializes (a new field written when
    /// unset, a renamed or moved one) would refuse every batch running
    /// across the upgrade. If this fails, keep the old serialization for the
    /// digest.
    #[test]
    fn the_digest_of_a_spec_does_not_change_across_operators() {
        let source = tasks(json!({
            "inline": [
                {"kind": "sleep", "ms": 5},
                {"kind": "run", "program": "sh", "args": ["-c", "true"], "expectedMs": 90000, "timeoutSeconds": 60},
            ],
            "generator": {"template": {"kind": "run", "program": "echo", "args": ["{i}"]}, "range": {"start": 1, "end": 9, "step": 2}},
        }));
        assert_eq!(
            serde_json::to_string(&source).unwrap(),
            r#"{"inline":[{"kind":"sleep","ms":5},{"kind":"run","program":"sh","args":["-c","true"],"expectedMs":90000,"timeoutSeconds":60}],"generator":{"template":{"kind":"run","program":"echo","args":["{i}"]},"range":{"start":1,"end":9,"step":2}}}"#
        );
        assert_eq!(current(&source, &Source::Spec), Some(of_bytes(br#"{"inline":[{"kind":"sleep","ms":5},{"kind":"run","program":"sh","args":["-c","true"],"expectedMs":90000,"timeoutSeconds":60}],"generator":{"template":{"kind":"run","program":"echo","args":["{i}"]},"range":{"start":1,"end":9,"step":2}}}"#)));
    }

    #[test]
    fn a_change_after_the_first_send_is_refused_by_name() {
        let inline = tasks(json!({"inline": [{"kind": "sleep", "ms": 5}]}));
        let file = tasks(json!({"s3": {"uri": "s3://b/w.txt"}}));
        // (recorded, current, source) -> refused field
        let cases = [
            ((None, Some("a"), &inline), None),
            ((Some("a"), None, &file), None),
            ((Some("a"), Some("a"), &inline), None),
            ((Some("a"), Some("b"), &inline), Some("spec.tasks")),
            ((Some("a"), Some("b"), &file), Some("spec.tasks.s3.uri")),
        ];
        for ((recorded, now, source), want) in cases {
            let got = check(recorded, now, source, 120, 1000).err();
            assert_eq!(
                got.as_ref().map(|i| i.field.as_str()),
                want,
                "{recorded:?} {now:?}"
            );
            if let Some(i) = got {
                assert!(
                    i.message.contains("(120 of 1000 tasks sent)")
                        && i.message.contains("Put the tasks back")
                        && i.message.starts_with(&i.field),
                    "{}",
                    i.message
                );
            }
        }
    }
}
