//! The *build* step: the Kubernetes objects a valid spec wants, as a pure
//! function of the spec (no client, no I/O). The reconciler applies what this
//! returns with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::workerpool::WorkerTemplate;
use crate::crd::{WorkerPool, WorkerPoolSpec};

/// The worker image when a pool names none: the one this operator was built with.
pub const DEFAULT_WORKER_IMAGE: &str = concat!("cloudkon-worker:", env!("CARGO_PKG_VERSION"));
/// The label that ties a pool's pods to it (also the `/scale` selector).
pub const POOL_LABEL: &str = "cloudkon.io/workerpool";
/// Where workers serve `/metrics` and `/healthz`.
pub const METRICS_PORT: i32 = 9090;
/// The workers' SIGTERM grace (`--grace`); the pod gets a little more, so that a
/// draining worker gives its unfinished bundles back before it is killed.
pub const WORKER_GRACE_SECONDS: i64 = 25;

/// How long a worker pod's receives (or claims) may all fail, holding
/// nothing, or a send of its results fail, before it stops
/// (`--give-up-after`): past SQS's 60 s refusal of a deleted queue's name,
/// which the pool's queue is made again after.
pub const WORKER_GIVE_UP_AFTER: &str = "2m";

/// The size limit of a worker pod's `/tmp` when the pool sets none: room for
/// an Animoto task's images and video, while one task cannot fill the node.
pub const DEFAULT_TMP_SIZE_LIMIT: &str = "1Gi";
/// The non-root user of the worker image (see the Dockerfile).
const WORKER_UID: i64 = 10001;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the WorkerPool has no {0} (it was not read from the API server?)")]
    Missing(&'static str),
}

/// The name of a pool's worker Deployment.
pub fn deployment_name(pool: &str) -> String {
    format!("{pool}-workers")
}

/// The labels of a pool's Deployment and pods.
pub fn worker_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "cloudkon-worker".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), pool.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "cloudkon-operator".to_string(),
        ),
        (POOL_LABEL.to_string(), pool.to_string()),
    ])
}

/// The worker Deployment of a pool whose queue is at `queue_url`, at `replicas`.
pub fn worker_deployment(
    pool: &WorkerPool,
    queue_url: &str,
    replicas: i32,
) -> Result<Deployment, BuildError> {
    let name = pool
        .metadata
        .name
        .clone()
        .ok_or(BuildError::Missing("name"))?;
    let namespace = pool.namespace().ok_or(BuildError::Missing("namespace"))?;
    let owner = pool
        .controller_owner_ref(&())
        .ok_or(BuildError::Missing("uid"))?;
    let template = &pool.spec.template;
    let labels = worker_labels(&name);

    let mut env = vec![
        env_value("CLOUDKON_QUEUE", queue_url),
        // The pod's name: results and heartbeat rows say which pod ran what.
        EnvVar {
            name: "CLOUDKON_WORKER_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env_value("CLOUDKON_LOG_FORMAT", "json"),
        env_value("CLOUDKON_METRICS_ADDR", &format!("0.0.0.0:{METRICS_PORT}")),
        env_value("CLOUDKON_GRACE", &format!("{WORKER_GRACE_SECONDS}s")),
        // A pod that cannot reach its queue (IAM, network) stops and says
        // why, which its pool and batches then repeat, instead of looking
        // ready and running nothing. Instances have no restart: not there.
        env_value("CLOUDKON_GIVE_UP_AFTER", WORKER_GIVE_UP_AFTER),
    ];
    // Each slot's animoto images get half its share of the pod's `/tmp`
    // (the rest: videos being made, fitted copies): a task that would fill
    // it fails alone instead of getting the pod evicted with every task.
    let tmp = template
        .tmp_size_limit
        .clone()
        .unwrap_or_else(|| Quantity(DEFAULT_TMP_SIZE_LIMIT.into()));
    if let Some(bytes) = quantity_bytes(&tmp.0) {
        let per_task = bytes / 2 / pool.spec.slots_per_worker().max(1);
        env.push(env_value(
            "CLOUDKON_ANIMOTO_TASK_BYTES",
            &per_task.to_string(),
        ));
    }
    env.extend(
        template_env(&pool.spec)
            .iter()
            .map(|(name, value)| env_value(name, value)),
    );
    // The user's variables come last: for a repeated name the last one wins.
    env.extend(template.env.iter().cloned());

    let container = Container {
        name: "worker".into(),
        image: Some(
            template
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_WORKER_IMAGE.into()),
        ),
        image_pull_policy: template.image_pull_policy.clone(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            ..ContainerPort::default()
        }]),
        // Readiness only: /healthz turns 503 while a worker drains, which must
        // take it out of service, not restart it mid-drain.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(METRICS_PORT),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        resources: template.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        // The worker writes a fatal error as its termination message; the
        // log's tail says the rest (a panic), for the pool's WorkersFailing.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        // Tasks and the Animoto scratch files need a writable /tmp.
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        service_account_name: template.service_account_name.clone(),
        // Workers never call the Kubernetes API: a token mounted would hand
        // whoever may create a WorkerPool the rights of any service account
        // of its namespace. IRSA and EKS Pod Identity mount their own.
        automount_service_account_token: Some(false),
        node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
        termination_grace_period_seconds: Some(WORKER_GRACE_SECONDS + 5),
        // What Pod Security's `restricted` level asks, with the container's
        // (no privilege escalation, every capability dropped): a namespace
        // that enforces it admits the workers.
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(tmp),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&name)),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas.max(0)),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(POOL_LABEL.to_string(), name.clone())])),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// The worker's download allowance (`template.allowDownloadsFrom`), for the
/// pods' environment and the instances' user data alike.
fn download_env(template: &WorkerTemplate) -> Option<(&'static str, String)> {
    (!template.allow_downloads_from.is_empty()).then(|| {
        (
            "CLOUDKON_ALLOW_DOWNLOADS_FROM",
            template.allow_downloads_from.join(","),
        )
    })
}

/// The bytes a Kubernetes quantity stands for (`1Gi`, `500M`, `1e9`,
/// `1.5Gi`), rounded down; `None` for what is not one.
fn quantity_bytes(text: &str) -> Option<u64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| Some((text.strip_suffix(suffix)?, *scale)))
        .unwrap_or((text, 1.0));
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    let bytes = value * scale;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The worker settings a pool's template gives, as the worker's variables:
/// what every fleet's workers get, pods and instances alike (the operator's
/// cancel marks and claims are in `ledgerTable`). `CLOUDKON_THREADS` is
/// always set, to the slots the operator plans a worker for
/// ([`WorkerPoolSpec::slots_per_worker`]: `threads`, else 2): left unset, a
/// worker would take all its CPUs, which the operator cannot see.
pub fn template_env(spec: &WorkerPoolSpec) -> Vec<(&'static str, String)> {
    let template = &spec.template;
    let mut env = vec![("CLOUDKON_THREADS", spec.slots_per_worker().to_string())];
    if let Some(table) = &template.ledger_table {
        env.push(("CLOUDKON_LEDGER_TABLE", table.clone()));
    }
    env.extend(download_env(template));
    env
}

/// The variables of an EC2 instance's worker (its user data): the
/// template's settings, then the user's plain values (an instance has no pod
/// to resolve a `valueFrom`), last so that they win for a repeated name.
pub fn instance_env(spec: &WorkerPoolSpec) -> Vec<(String, String)> {
    template_env(spec)
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .chain(
            spec.template
                .env
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?))),
        )
        .collect()
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The longest queue name we make: SQS allows 80 and the dead-letter queue
/// adds `-dlq` (the priority lane `-pri`).
pub const MAX_QUEUE_NAME: usize = 76;

/// The name of the queue at `url` (an SQS queue URL ends with it).
pub fn queue_name_in_url(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// A pool's request queue: `spec.queue.name`, or [`derived_queue_name`].
pub fn queue_name(namespace: &str, pool: &str, explicit: Option<&str>) -> String {
    match explicit {
        Some(name) => name.to_string(),
        None => derived_queue_name(namespace, pool),
    }
}

/// `cloudkon-<namespace>_<pool>`, one name per pool: a namespace has no `_`
/// or `.`, so the first `_` ends it, and the pool name's dots become `_` (it
/// has no `_` of its own). A name that would end in `-dlq` or `-pri` gets a
/// final `_`, so that it is never another pool's dead-letter queue
/// (`<name>-dlq`) or priority lane (`<name>-pri`). Over
/// SQS's length it becomes `cloudkon_<start>_<SHA-256 of the whole, 16 hex>`:
/// the `cloudkon_` start keeps those apart from the short form.
pub fn derived_queue_name(namespace: &str, pool: &str) -> String {
    let mut name = format!("cloudkon-{namespace}_{}", pool.replace('.', "_"));
    if name.ends_with("-dlq") || name.ends_with(cloudkon_core::aws::PRIORITY_LANE_SUFFIX) {
        name.push('_');
    }
    if name.len() <= MAX_QUEUE_NAME && name.chars().all(is_queue_name_char) {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let start: String = name["cloudkon-".len()..]
        .chars()
        .map(|c| if is_queue_name_char(c) { c } else { '-' })
        .take(MAX_QUEUE_NAME - "cloudkon_".len() - 1 - hash.len())
        .collect();
    format!("cloudkon_{start}_{hash}")
}

/// Letters, digits, `-` and `_`: what SQS takes in a queue name.
pub fn is_queue_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// A batch's response queue, derived from its uid, so that a restarted
/// operator finds the same queue.
pub fn response_queue_name(batch_uid: &str) -> String {
    cloudkon_core::aws::bounded_queue_name(&format!("cloudkon-tb-{batch_uid}"), MAX_QUEUE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml: &str) -> WorkerPool {
        let mut pool: WorkerPool = serde_yaml::from_str(yaml).unwrap();
        pool.metadata.namespace = Some("batch".into());
        pool.metadata.uid = Some("0a1b".into());
        pool
    }

    fn example() -> WorkerPool {
        pool(include_str!("../../examples/workerpool.yaml"))
    }

    const MINIMAL: &str = "apiVersion: cloudkon.io/v1alpha1\nkind: WorkerPool\nmetadata: {name: p}\nspec:\n  workers: {max: 3}\n  template: {}\n";

    fn env(d: &Deployment) -> Vec<(String, String)> {
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let value = e.value.clone().unwrap_or_else(|| {
                    match e.value_from.as_ref().unwrap().field_ref.as_ref() {
                        Some(field) => format!("fieldRef:{}", field.field_path),
                        None => "valueFrom".into(),
                    }
                });
                (e.name.clone(), value)
            })
            .collect()
    }

    #[test]
    fn the_example_pool_gets_a_deployment_owned_by_it() {
        let d = worker_deployment(&example(), "https://sqs/q", 4).unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("sweep-pool-workers"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("batch"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("WorkerPool", "sweep-pool", "0a1b")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(4));
        // The selector picks exactly the template's pods.
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(
            selector.get(POOL_LABEL).map(String::as_str),
            Some("sweep-pool")
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("cloudkon-worker"));
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some(DEFAULT_WORKER_IMAGE)
        );
        assert!(pod.containers[0].resources.is_some());
    }

    #[test]
    fn workers_are_configured_through_their_environment() {
        let d = worker_deployment(&example(), "https://sqs/q", 1).unwrap();
        let env = env(&d);
        let get = |name: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CLOUDKON_QUEUE"), Some("https://sqs/q"));
        assert_eq!(get("CLOUDKON_WORKER_ID"), Some("fieldRef:metadata.name"));
        assert_eq!(get("CLOUDKON_THREADS"), Some("8"));
        assert_eq!(get("CLOUDKON_LOG_FORMAT"), Some("json"));
        assert_eq!(get("CLOUDKON_GIVE_UP_AFTER"), Some("2m"));
        assert_eq!(
            get("CLOUDKON_ANIMOTO_OUT"),
            Some("s3://my-cloudkon-bucket/videos")
        );
        // The user's variables come after ours, so that they win.
        let ours = env.iter().position(|(n, _)| n == "CLOUDKON_QUEUE").unwrap();
        let theirs = env
            .iter()
            .position(|(n, _)| n == "CLOUDKON_ANIMOTO_OUT")
            .unwrap();
        assert!(ours < theirs);
    }

    #[test]
    fn instances_get_the_templates_settings_as_pods_do() {
        let p = pool(
            "apiVersion: cloudkon.io/v1alpha1\nkind: WorkerPool\nmetadata: {name: p}\nspec:\n  \
             workers: {max: 3}\n  template:\n    threads: 6\n    ledgerTable: team-ledger\n    \
             allowDownloadsFrom: [https://images.example]\n    env:\n    \
             - {name: CLOUDKON_THREADS, value: '5'}\n    \
             - {name: FROM_SECRET, valueFrom: {secretKeyRef: {name: s, key: k}}}\n",
        );
        let env = instance_env(&p.spec);
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "CLOUDKON_THREADS",
                "CLOUDKON_LEDGER_TABLE",
                "CLOUDKON_ALLOW_DOWNLOADS_FROM",
                "CLOUDKON_THREADS",
            ]
        );
        assert_eq!(env[0].1, "6");
        assert_eq!(env[1].1, "team-ledger");
        // The user's value comes last (it wins in the script); a valueFrom
        // has nothing an instance could resolve.
        assert_eq!(env[3].1, "5");
        // The pods of the same pool get the same settings.
        let pods = super::tests::env(&worker_deployment(&p, "q", 1).unwrap());
        for (name, value) in &env[..3] {
            assert!(pods.contains(&(name.to_string(), value.clone())), "{name}");
        }
    }

    #[test]
    fn pods_are_locked_down_and_drain_before_they_are_killed() {
        let d = worker_deployment(&pool(MINIMAL), "q", 0).unwrap();
        let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(DEFAULT_WORKER_IMAGE));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        // No Kubernetes token: workers never call the API.
        assert_eq!(pod.automount_service_account_token, Some(false));
        // A writable /tmp despite the read-only root, of bounded size.
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/tmp");
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].name, "tmp");
        let tmp = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(tmp.name, "tmp");
        assert_eq!(
            tmp.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("1Gi".into()))
        );
        // Readiness on /healthz, no liveness probe to kill a draining worker.
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/healthz"));
        assert!(c.liveness_probe.is_none());
        // A crash's cause reaches the pod's status (pod_problems reads it).
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert!(pod.termination_grace_period_seconds.unwrap() > WORKER_GRACE_SECONDS);
        assert!(pod.node_selector.is_none());
    }

    /// Pod Security's `restricted` level: what a namespace enforcing it
    /// checks of a pod (no host namespaces or ports, volumes of the allowed
    /// kinds, non-root, no privilege escalation, every capability dropped,
    /// a seccomp profile).
    #[test]
    fn worker_pods_pass_pod_security_restricted() {
        for p in [pool(MINIMAL), example()] {
            let d = worker_deployment(&p, "q", 1).unwrap();
            let pod = d.spec.unwrap().template.spec.unwrap();
            let psc = pod.security_context.as_ref().unwrap();
            assert_eq!(psc.run_as_non_root, Some(true));
            assert_ne!(psc.run_as_user, Some(0));
            assert_eq!(
                psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                Some("RuntimeDefault")
            );
            assert!(pod.host_network.is_none() && pod.host_pid.is_none() && pod.host_ipc.is_none());
            assert!(
                pod.volumes
                    .iter()
                    .flatten()
                    .all(|v| v.empty_dir.is_some() && v.host_path.is_none())
            );
            for c in &pod.containers {
                let sc = c.security_context.as_ref().unwrap();
                assert_eq!(sc.allow_privilege_escalation, Some(false));
                assert_ne!(sc.privileged, Some(true));
                let caps = sc.capabilities.as_ref().unwrap();
                assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
                assert!(caps.add.is_none());
                // Its own seccomp profile, if any, would override the pod's.
                assert!(sc.seccomp_profile.is_none() && sc.run_as_user != Some(0));
                assert!(c.ports.iter().flatten().all(|p| p.host_port.is_none()));
            }
        }
    }

    /// A pool without `threads` is planned for [`DEFAULT_WORKER_SLOTS`]
    /// slots a worker: its workers run that many, not all their CPUs.
    #[test]
    fn workers_run_the_slots_the_operator_plans() {
        use crate::crd::workerpool::DEFAULT_WORKER_SLOTS;
        let threads = |p: &WorkerPool| {
            env(&worker_deployment(p, "q", 1).unwrap())
                .into_iter()
                .filter(|(n, _)| n == "CLOUDKON_THREADS")
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        };
        let minimal = pool(MINIMAL);
        assert_eq!(minimal.spec.slots_per_worker(), DEFAULT_WORKER_SLOTS);
        assert_eq!(threads(&minimal), [DEFAULT_WORKER_SLOTS.to_string()]);
        assert!(
            instance_env(&minimal.spec)
                .contains(&("CLOUDKON_THREADS".into(), DEFAULT_WORKER_SLOTS.to_string()))
        );
        let example = example();
        assert_eq!(example.spec.slots_per_worker(), 8);
        assert_eq!(threads(&example), ["8"]);
    }

    /// The worker image the examples and the chart's default pool name is
    /// the one the operator defaults to, which `docker build --target
    /// worker -t cloudkon-worker:<version>` makes (README, "Install on kind
    /// or EKS").
    #[test]
    fn the_examples_and_the_charts_pool_name_the_default_worker_image() {
        let values: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../charts/cloudkon/values.yaml")).unwrap();
        let chart: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../charts/cloudkon/Chart.yaml")).unwrap();
        assert_eq!(
            values["defaultWorkerPool"]["spec"]["template"]["image"].as_str(),
            Some(DEFAULT_WORKER_IMAGE)
        );
        assert_eq!(
            chart["appVersion"].as_str(),
            Some(env!("CARGO_PKG_VERSION")),
            "the chart's operator image is tagged with its appVersion"
        );
        assert_eq!(
            example().spec.template.image.as_deref(),
            Some(DEFAULT_WORKER_IMAGE)
        );
    }

    #[test]
    fn workers_refuse_private_downloads_unless_the_pool_allows_networks() {
        let d = worker_deployment(&pool(MINIMAL), "q", 1).unwrap();
        assert!(
            !env(&d)
                .iter()
                .any(|(n, _)| n.starts_with("CLOUDKON_ALLOW_")),
            "the worker's default (public addresses only) stays"
        );
        let mut p = pool(MINIMAL);
        p.spec.template.allow_downloads_from = vec!["10.20.0.0/16".into(), "fd12::/64".into()];
        let d = worker_deployment(&p, "q", 1).unwrap();
        assert!(env(&d).contains(&(
            "CLOUDKON_ALLOW_DOWNLOADS_FROM".into(),
            "10.20.0.0/16,fd12::/64".into()
        )));
    }

    #[test]
    fn quantities_are_read_as_bytes() {
        for (text, bytes) in [
            ("1Gi", Some(1 << 30)),
            ("512Mi", Some(512 << 20)),
            ("1.5Gi", Some(3 << 29)),
            ("500M", Some(500_000_000)),
            ("1e9", Some(1_000_000_000)),
            ("2048", Some(2048)),
            ("lots", None),
            ("-1Gi", None),
        ] {
            assert_eq!(quantity_bytes(text), bytes, "{text}");
        }
    }

    #[test]
    fn each_slot_gets_half_its_share_of_tmp_for_animoto_images() {
        let task_bytes = |p: &WorkerPool| {
            env(&worker_deployment(p, "q", 1).unwrap())
                .into_iter()
                .find(|(k, _)| k == "CLOUDKON_ANIMOTO_TASK_BYTES")
                .map(|(_, v)| v)
        };
        let mut p = pool(MINIMAL);
        // 1Gi, 2 slots.
        assert_eq!(task_bytes(&p).as_deref(), Some("268435456"));
        p.spec.template.tmp_size_limit = Some(Quantity("8Gi".into()));
        p.spec.template.threads = Some(8);
        assert_eq!(task_bytes(&p).as_deref(), Some("536870912"));
    }

    #[test]
    fn the_tmp_size_limit_is_the_pools_when_set() {
        let mut p = pool(MINIMAL);
        p.spec.template.tmp_size_limit = Some(Quantity("5Gi".into()));
        let d = worker_deployment(&p, "q", 1).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap()[0]
                .empty_dir
                .as_ref()
                .unwrap()
                .size_limit,
            Some(Quantity("5Gi".into()))
        );
    }

    #[test]
    fn negative_replicas_become_zero_and_a_pool_not_from_the_api_is_refused() {
        let d = worker_deployment(&pool(MINIMAL), "q", -2).unwrap();
        assert_eq!(d.spec.unwrap().replicas, Some(0));
        let mut bare = pool(MINIMAL);
        bare.metadata.uid = None;
        assert_eq!(
            worker_deployment(&bare, "q", 1).unwrap_err(),
            BuildError::Missing("uid")
        );
    }

    #[test]
    fn derived_queue_names_never_collide() {
        // (namespace, pool) pairs whose old names (`cloudkon-<ns>-<pool>`,
        // dots as `-`) were the same, and pools whose queue was another's
        // dead-letter queue.
        let pairs = [
            ("t", "a-p"),
            ("t-a", "p"),
            ("t", "a.p"),
            ("t-a", "p-dlq"),
            ("t", "a-p-dlq"),
            ("t", "a.p-dlq"),
            ("t", "a-p.dlq"),
            ("t", "a-p-pri"),
            ("t", "a.p-pri"),
            ("x", "y"),
            ("x-y", "z"),
        ];
        let mut seen = std::collections::BTreeMap::new();
        for (ns, pool) in pairs {
            let name = derived_queue_name(ns, pool);
            assert!(name.len() <= MAX_QUEUE_NAME && name.chars().all(is_queue_name_char));
            for taken in [name.clone(), format!("{name}-dlq"), format!("{name}-pri")] {
                if let Some(other) = seen.insert(taken.clone(), (ns, pool)) {
                    panic!("{ns}/{pool} and {other:?} both use {taken}");
                }
            }
        }
        assert_eq!(derived_queue_name("t", "a-p"), "cloudkon-t_a-p");
        assert_eq!(derived_queue_name("t-a", "p"), "cloudkon-t-a_p");
        assert_eq!(derived_queue_name("t-a", "p-dlq"), "cloudkon-t-a_p-dlq_");
        assert_eq!(derived_queue_name("t", "a-p-pri"), "cloudkon-t_a-p-pri_");
        // Long names: different namespaces sharing a long start stay apart.
        let (ns1, ns2) = ("n".repeat(62) + "1", "n".repeat(62) + "2");
        assert_ne!(
            derived_queue_name(&ns1, "pool"),
            derived_queue_name(&ns2, "pool")
        );
    }

    #[test]
    fn queue_names_fit_sqs() {
        assert_eq!(
            queue_name("default", "sweep", None),
            "cloudkon-default_sweep"
        );
        assert_eq!(queue_name("default", "sweep", Some("mine")), "mine");
        assert_eq!(queue_name("b", "p.q", None), "cloudkon-b_p_q");
        let long = "p".repeat(200);
        let a = queue_name("default", &long, None);
        let b = queue_name("default", &format!("{long}x"), None);
        assert_eq!(a.len(), MAX_QUEUE_NAME);
        assert!(a.starts_with("cloudkon_default_ppp"), "{a}");
        assert!(a.chars().all(is_queue_name_char), "{a}");
        assert_ne!(a, b, "a hash keeps long names apart");
        assert_eq!(a, queue_name("default", &long, None), "stable");
        let ns63 = "n".repeat(63);
        assert_eq!(
            derived_queue_name(&ns63, &"p".repeat(253)).len(),
            MAX_QUEUE_NAME
        );
        let uid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            response_queue_name(uid),
            "cloudkon-tb-0f8fad5b-d9cb-469f-a165-70867728950e"
        );
    }
}
