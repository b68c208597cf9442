//! Why a pool's worker pods are not ready, in words: a pool stuck at "0
//! ready" over a mistyped image or a crashing worker otherwise says only
//! that, and its batches wait with nothing to tell why.

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
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {}", m.trim()))
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
}
