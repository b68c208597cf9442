//! Why a pool's worker pods are not ready, in words: a pool stuck at "0
//! ready" over a mistyped image or a crashing worker otherwise says only
//! that, and its batches wait with nothing to tell why.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Container waiting reasons that do not go away by waiting.
const STUCK: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The first problem of `pods` that waiting will not fix: a container that
/// cannot start or keeps crashing, or a pod the scheduler cannot place.
/// `None` while they only start (being scheduled, pulled, created).
pub fn first_problem(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(problem)
}

fn problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let name = pod.name_any();
    let containers = status.container_statuses.iter().flatten();
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if !STUCK.contains(&reason) {
            continue;
        }
        let mut text = format!("pod {name}: {reason}");
        if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
            text += &format!(": {message}");
        }
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            text += &format!(
                " (last exit code {}{}{})",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default(),
                t.message
                    .as_deref()
                    .and_then(last_words)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
            );
        }
        return Some(text);
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some(format!(
        "pod {name}: Unschedulable: {}",
        unschedulable.message.as_deref().unwrap_or_default()
    ))
}

/// Why a worker Deployment makes no pods, when it says so: its
/// `ReplicaFailure` condition (a missing service account, a quota, a pod
/// Pod Security refuses). There are then no pods to read a problem from.
pub fn deployment_problem(deployment: &Deployment) -> Option<String> {
    let failure = deployment
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?;
    Some(format!(
        "deployment {}: {}: {}",
        deployment.name_any(),
        failure.reason.as_deref().unwrap_or("ReplicaFailure"),
        failure.message.as_deref().unwrap_or_default()
    ))
}

/// What a termination message says, on one line: the worker's own (one
/// line), or, from the tail of its log (`FallbackToLogsOnError`), the last
/// line that says an error or a panic (with a panic's message), else the
/// last line; cut to [`MAX_WORDS`] bytes.
fn last_words(message: &str) -> Option<String> {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let said = |l: &&str| {
        let l = l.to_ascii_lowercase();
        l.contains("error") || l.contains("panicked")
    };
    let at = lines
        .iter()
        .rposition(said)
        .unwrap_or(lines.len().checked_sub(1)?);
    // A panic's message is on the line after "panicked at".
    let line = match lines.get(at + 1) {
        Some(next) if lines[at].contains("panicked at") => format!("{} {next}", lines[at]),
        _ => lines[at].to_string(),
    };
    let mut end = line.len().min(MAX_WORDS);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(if end < line.len() {
        format!("{}…", &line[..end])
    } else {
        line
    })
}

/// The most of a termination message a condition repeats.
const MAX_WORDS: usize = 400;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": status,
        }))
        .unwrap()
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        json!({"containerStatuses": [{
            "name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }]})
    }

    #[test]
    fn a_deployment_that_cannot_make_pods_says_why() {
        let deployment = |conditions: serde_json::Value| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "cloudkon-worker-p"},
                "status": {"conditions": conditions},
            }))
            .unwrap()
        };
        let failing = deployment(json!([
            {"type": "Available", "status": "False"},
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": "pods \"cloudkon-worker-p-1\" is forbidden: error looking up service account batch/cloudkon-worker: serviceaccount \"cloudkon-worker\" not found"},
        ]));
        assert_eq!(
            deployment_problem(&failing).as_deref(),
            Some(
                "deployment cloudkon-worker-p: FailedCreate: pods \"cloudkon-worker-p-1\" is forbidden: error looking up service account batch/cloudkon-worker: serviceaccount \"cloudkon-worker\" not found"
            )
        );
        let recovered = deployment(json!([
            {"type": "ReplicaFailure", "status": "False", "reason": "FailedCreate"},
        ]));
        assert_eq!(deployment_problem(&recovered), None);
        assert_eq!(deployment_problem(&deployment(json!([]))), None);
    }

    #[test]
    fn pods_that_only_start_are_no_problem() {
        let pods = [
            pod("a", json!({"phase": "Pending"})),
            pod("b", waiting("ContainerCreating", "")),
            pod("c", json!({"phase": "Running"})),
        ];
        assert_eq!(first_problem(&pods), None);
        assert_eq!(first_problem(&[]), None);
    }

    #[test]
    fn a_bad_image_a_crash_and_no_room_are_said() {
        let pull = pod(
            "p-1",
            waiting(
                "ImagePullBackOff",
                "Back-off pulling image \"127.0.0.1:1/nope:1\"",
            ),
        );
        assert_eq!(
            first_problem(&[pod("p-0", json!({"phase": "Pending"})), pull]).as_deref(),
            Some("pod p-1: ImagePullBackOff: Back-off pulling image \"127.0.0.1:1/nope:1\"")
        );

        let crash = pod(
            "p-2",
            json!({"containerStatuses": [{
                "name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                    "message": "error: the queue does not exist\n"}},
            }]}),
        );
        assert_eq!(
            first_problem(&[crash]).as_deref(),
            Some(
                "pod p-2: CrashLoopBackOff: back-off 40s (last exit code 2, Error: error: the queue does not exist)"
            )
        );

        let room = pod(
            "p-3",
            json!({"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu.",
            }]}),
        );
        assert_eq!(
            first_problem(&[room]).as_deref(),
            Some("pod p-3: Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")
        );
    }

    #[test]
    fn a_log_tail_gives_its_last_error_line() {
        assert_eq!(last_words(""), None);
        assert_eq!(last_words("\n  \n"), None);
        assert_eq!(
            last_words("error: --lease: invalid value").as_deref(),
            Some("error: --lease: invalid value")
        );
        let tail = "2026-12-02T00:00:00Z  INFO worker started\n\
                    thread 'main' panicked at worker/src/main.rs:1:1:\n\
                    boom\n\
                    note: run with `RUST_BACKTRACE=1` to display a backtrace\n";
        assert_eq!(
            last_words(tail).as_deref(),
            Some("thread 'main' panicked at worker/src/main.rs:1:1: boom")
        );
        assert_eq!(
            last_words("starting\nstill starting\n").as_deref(),
            Some("still starting")
        );
        let long = format!("error: {}", "é".repeat(MAX_WORDS));
        let cut = last_words(&long).unwrap();
        assert!(cut.ends_with('…') && cut.len() <= MAX_WORDS + '…'.len_utf8());
    }
}
