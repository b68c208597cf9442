//! Spec validation: every rule the API server cannot enforce (and those it
//! enforces only through CEL, which Kubernetes 1.20 drops), as pure functions.
//! The reconciler reports the result in an `Accepted` condition and an Event;
//! each message names the field, e.g. `spec.workers.min (5) is greater than
//! spec.workers.max (2)`.

use std::fmt;

use cloudkon_core::aws::S3Uri;
use cloudkon_core::wire::SQS_MAX_MESSAGE_BYTES;
use cloudkon_core::workload::{self, WorkloadReader};

use crate::allowed_names::{self, AllowedNames};
use crate::build::is_queue_name_char;
use crate::crd::taskbatch::{InlineTask, TaskBatchSpec, TaskKind};
use crate::crd::workerpool::{ProviderType, QueueSpec, ScalingRules, WorkerPoolSpec};

/// Inline tasks a TaskBatch may hold: it lives in etcd, whose objects are
/// limited to 1.5 MiB.
pub const MAX_INLINE_TASKS: usize = 10_000;

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The field's path, e.g. `spec.workers.min`.
    pub field: String,
    /// What is wrong, as a sentence that starts with the field's path.
    pub message: String,
}

impl Invalid {
    /// `detail` follows the field's path: `Invalid::new("spec.x", "is required")`.
    fn new(field: impl Into<String>, detail: impl fmt::Display) -> Self {
        let field = field.into();
        let message = format!("{field} {detail}");
        Invalid { field, message }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// All the problems in one line, for a condition's message or an Event.
pub fn summary(problems: &[Invalid]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects problems; `finish` turns them into the result.
#[derive(Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, detail: impl fmt::Display) {
        self.0.push(Invalid::new(field, detail));
    }

    /// `value` must be within `min..=max` (either bound optional).
    fn range(&mut self, field: &str, value: Option<i64>, min: Option<i64>, max: Option<i64>) {
        let Some(value) = value else { return };
        if let Some(min) = min.filter(|&min| value < min) {
            self.add(field, format_args!("({value}) must be at least {min}"));
        } else if let Some(max) = max.filter(|&max| value > max) {
            self.add(field, format_args!("({value}) must be at most {max}"));
        }
    }

    fn required_text(&mut self, field: &str, value: Option<&str>) -> bool {
        match value {
            Some(v) if !v.trim().is_empty() => true,
            _ => {
                self.add(field, "is required");
                false
            }
        }
    }

    fn finish(self) -> Result<(), Vec<Invalid>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Checks a TaskBatch's spec.
pub fn taskbatch(spec: &TaskBatchSpec) -> Result<(), Vec<Invalid>> {
    let mut p = Problems::default();

    let tasks = &spec.tasks;
    let sources: Vec<&str> = [
        ("inline", tasks.inline.is_some()),
        ("configMap", tasks.config_map.is_some()),
        ("s3", tasks.s3.is_some()),
        ("generator", tasks.generator.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match sources.len() {
        0 => p.add(
            "spec.tasks",
            "has no source: set one of inline, configMap, s3 or generator",
        ),
        1 => {}
        _ => p.add(
            "spec.tasks",
            format_args!(
                "sets {}: set only one of inline, configMap, s3 or generator",
                sources.join(" and ")
            ),
        ),
    }

    if let Some(inline) = &tasks.inline {
        if inline.is_empty() {
            p.add("spec.tasks.inline", "is empty");
        } else if inline.len() > MAX_INLINE_TASKS {
            p.add(
                "spec.tasks.inline",
                format_args!(
                    "has {} tasks, more than {MAX_INLINE_TASKS}: put them in a configMap or s3 workload file, or use a generator",
                    inline.len()
                ),
            );
        } else {
            for (i, task) in inline.iter().enumerate() {
                inline_task(&mut p, &format!("spec.tasks.inline[{i}]"), task, None);
            }
        }
    }

    if let Some(cm) = &tasks.config_map {
        if p.required_text("spec.tasks.configMap.name", Some(cm.name.as_str()))
            && !is_dns_subdomain(&cm.name)
        {
            p.add(
                "spec.tasks.configMap.name",
                format_args!("({:?}) is not a valid ConfigMap name (a DNS subdomain: lowercase letters, digits, '-' and '.')", cm.name),
            );
        }
        let key_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if p.required_text("spec.tasks.configMap.key", Some(cm.key.as_str()))
            && (cm.key.len() > 253 || !cm.key.chars().all(key_ok))
        {
            p.add(
                "spec.tasks.configMap.key",
                format_args!(
                    "({:?}) is not a valid ConfigMap key (letters, digits, '-', '_' and '.')",
                    cm.key
                ),
            );
        }
    }

    if let Some(s3) = &tasks.s3 {
        match S3Uri::object(&s3.uri) {
            Ok(uri) if uri.has_valid_bucket_name() => {}
            _ => p.add(
                "spec.tasks.s3.uri",
                format_args!("({:?}) must be an object's URI: s3://bucket/key", s3.uri),
            ),
        }
    }

    if let Some(generator) = &tasks.generator {
        inline_task(
            &mut p,
            "spec.tasks.generator.template",
            &generator.template,
            Some("0"),
        );
        match (&generator.count, &generator.range) {
            (None, None) => p.add(
                "spec.tasks.generator",
                "has neither count nor range: set one",
            ),
            (Some(_), Some(_)) => p.add(
                "spec.tasks.generator",
                "sets both count and range: set only one",
            ),
            (Some(count), None) => {
                p.range("spec.tasks.generator.count", Some(*count), Some(1), None);
            }
            (None, Some(range)) => {
                p.range("spec.tasks.generator.range.step", range.step, Some(1), None);
                if range.end <= range.start {
                    p.add(
                        "spec.tasks.generator.range.end",
                        format_args!(
                            "({}) must be greater than spec.tasks.generator.range.start ({})",
                            range.end, range.start
                        ),
                    );
                }
            }
        }
    }

    if p.required_text("spec.workerPool", Some(spec.worker_pool.as_str()))
        && !is_dns_subdomain(&spec.worker_pool)
    {
        p.add(
            "spec.workerPool",
            format_args!("({:?}) is not a valid WorkerPool name", spec.worker_pool),
        );
    }
    p.range(
        "spec.taskTimeoutSeconds",
        spec.task_timeout_seconds,
        Some(1),
        None,
    );
    if let Some(retry) = &spec.retry {
        p.range(
            "spec.retry.maxAttempts",
            retry.max_attempts.map(i64::from),
            Some(1),
            Some(100),
        );
        p.range(
            "spec.retry.backoffSeconds",
            retry.backoff_seconds.map(i64::from),
            Some(0),
            Some(3600),
        );
    }
    p.range(
        "spec.ttlSecondsAfterFinished",
        spec.ttl_seconds_after_finished.map(i64::from),
        Some(0),
        None,
    );
    if let Some(prefix) = spec.results.as_ref().and_then(|r| r.s3_prefix.as_ref()) {
        match S3Uri::parse(prefix) {
            Ok(u) if u.has_valid_bucket_name() => {
                // The parts' keys add the namespace, name, uid and part name
                // to it (up to 380 bytes): past S3's 1,024 every write was
                // refused and retried for good.
                if u.key.len() > MAX_RESULTS_KEY_PREFIX {
                    p.add(
                        "spec.results.s3Prefix",
                        format_args!(
                            "has a key of {} bytes: at most {MAX_RESULTS_KEY_PREFIX} (S3 keys have at most 1,024, and the results' add up to 380)",
                            u.key.len()
                        ),
                    );
                }
            }
            _ => p.add(
                "spec.results.s3Prefix",
                format_args!("({prefix:?}) must be s3://bucket or s3://bucket/prefix"),
            ),
        }
    }
    p.finish()
}

/// The longest key `spec.results.s3Prefix` may give its results' parts.
const MAX_RESULTS_KEY_PREFIX: usize = 600;

/// The fields of an inline task (or a generator's template): the ones its
/// kind needs are there, the others are not, and core accepts the task.
fn inline_task(p: &mut Problems, path: &str, task: &InlineTask, param: Option<&str>) {
    let before = p.0.len();
    let kind = task.kind.to_string();
    let set = [
        ("ms", task.ms.is_some()),
        ("program", task.program.is_some()),
        ("args", !task.args.is_empty()),
        ("expectedMs", task.expected_ms.is_some()),
        ("urls", !task.urls.is_empty()),
        ("secondsPerImage", task.seconds_per_image.is_some()),
        ("resolution", task.resolution.is_some()),
        ("frameRate", task.frame_rate.is_some()),
        ("output", task.output.is_some()),
    ];
    let applies: &[&str] = match task.kind {
        TaskKind::Sleep => &["ms"],
        TaskKind::Run => &["program", "args", "expectedMs"],
        TaskKind::Animoto => &[
            "urls",
            "secondsPerImage",
            "resolution",
            "frameRate",
            "output",
        ],
    };
    for (field, is_set) in set {
        if is_set && !applies.contains(&field) {
            p.add(
                format!("{path}.{field}"),
                format_args!("does not apply to kind {kind}"),
            );
        }
    }
    match task.kind {
        TaskKind::Sleep => {
            if task.ms.is_none() {
                p.add(format!("{path}.ms"), "is required for kind sleep");
            }
            p.range(&format!("{path}.ms"), task.ms, Some(0), None);
        }
        TaskKind::Run => {
            p.required_text(&format!("{path}.program"), task.program.as_deref());
            p.range(
                &format!("{path}.expectedMs"),
                task.expected_ms,
                Some(0),
                None,
            );
        }
        TaskKind::Animoto => {
            if task.urls.is_empty() {
                p.add(
                    format!("{path}.urls"),
                    "is required for kind animoto (at least one image URL)",
                );
            }
        }
    }
    p.range(
        &format!("{path}.timeoutSeconds"),
        task.timeout_seconds,
        Some(1),
        None,
    );
    // The rules of the task model itself (URL schemes, resolutions...): core's.
    if p.0.len() == before {
        match task.to_task_spec(param) {
            Err(e) => p.add(path.to_string(), format_args!("is not a valid task: {e}")),
            Ok(_) => {
                // A generator's size is measured with its widest parameter.
                let widest = param.map(|_| WIDEST_PARAM);
                if let Ok((spec, _)) = task.to_task_spec(widest)
                    && let Err(bytes) = workload::task_fits_one_message(spec)
                {
                    p.add(
                        path.to_string(),
                        format_args!(
                            "is too large: it takes {bytes} bytes as a queue message, more than SQS's {SQS_MAX_MESSAGE_BYTES} (put large data in S3 and pass its URI)"
                        ),
                    );
                }
            }
        }
    }
}

/// The longest text `{i}` can become (`i64::MIN`).
const WIDEST_PARAM: &str = "-9223372036854775808";

/// The tasks of a workload file (`configMap`, `s3`) too large for a queue
/// message, at most five, named by task number. Only a file with a long line
/// is read again to encode its tasks.
pub fn workload_tasks_fit(field: &str, name: &str, bytes: &[u8]) -> Result<(), Vec<Invalid>> {
    if !workload::has_long_line(bytes).unwrap_or(true) {
        return Ok(());
    }
    let too_large: Vec<Invalid> =
        workload::too_large_tasks(WorkloadReader::new(bytes, name.to_string()), 5)
            .iter()
            .map(|t| Invalid::new(field, format_args!("({name}) {}", t.message())))
            .collect();
    if too_large.is_empty() {
        Ok(())
    } else {
        Err(too_large)
    }
}

/// A pool keeps the queue it was made with (`queue_url`, from its status):
/// its batches' bundles are there, and a pool moved to another queue would
/// leave them to no worker. `queue` is the name the spec gives now.
pub fn queue_kept(queue: &str, queue_url: Option<&str>) -> Result<(), Invalid> {
    let Some(had) = queue_url.map(crate::build::queue_name_in_url) else {
        return Ok(());
    };
    if had == queue {
        return Ok(());
    }
    Err(Invalid::new(
        "spec.queue.name",
        format!(
            "gives the queue {queue:?}, but the pool's queue is {had:?}, where its batches' bundles are: set spec.queue.name to {had:?} to keep it, or create a new WorkerPool for the other queue"
        ),
    ))
}

/// A pool keeps the fleet its workers run in (`had`, from its status) while
/// it has workers (`workers`: existing or wanted, as last written): a
/// provider moved elsewhere would leave them running, scaled by nobody and
/// never released, the instances of an `Instances` fleet for good. A pool
/// at zero workers may move.
pub fn fleet_kept(fleet: &str, had: Option<&str>, workers: i32) -> Result<(), Invalid> {
    match had {
        Some(had) if had != fleet && workers > 0 => Err(Invalid::new(
            "spec.provider",
            format!(
                "moves the workers from {had} to {fleet}, but {workers} workers are in {had}: set spec.provider back, or move it once the pool has scaled to zero (its batches done, spec.workers.min: 0)"
            ),
        )),
        _ => Ok(()),
    }
}

/// A pool's queue, or its group of instances, that `taken` (other pools,
/// `ns/name`) have: a pool's queue and group are its own, its deletion
/// deletes the queue.
pub fn shared(queue: &str, taken: &[String]) -> Invalid {
    Invalid::new(
        "spec",
        format!(
            "names the queue {queue:?} or the group of instances of WorkerPool {}, made before this one: give this pool its own spec.queue.name and spec.provider",
            taken.join(", ")
        ),
    )
}

/// A batch keeps the pool it first enqueued on (`first`, from its status):
/// its bundles are in that pool's queue and claimed in its ledger table, so
/// its runner on another pool would resend from its checkpoint what was
/// sent (run twice where the ledgers differ) and leave the rest of the old
/// queue to a pool that could be deleted under it.
pub fn pool_kept(pool: &str, first: Option<&str>) -> Result<(), Invalid> {
    match first {
        Some(had) if had != pool => Err(Invalid::new(
            "spec.workerPool",
            format!(
                "changed from {had:?} to {pool:?} after the batch started sending its tasks to {had:?}, whose queue holds them: set it back to {had:?} to go on, or create a new TaskBatch for {pool:?}"
            ),
        )),
        _ => Ok(()),
    }
}

/// The longest name a WorkerPool of Deployment workers may have: its name is
/// a label value of its Deployment and pods (see [`crate::build::worker_labels`]).
pub const MAX_LABELLED_POOL_NAME: usize = 63;

/// Checks a WorkerPool's name for its provider: a pool of Deployment workers
/// longer than a label value would have every apply of its Deployment
/// refused, and its batches would wait on it for ever.
pub fn workerpool_name(name: &str, spec: &WorkerPoolSpec) -> Result<(), Invalid> {
    let deployment = spec
        .provider
        .as_ref()
        .is_none_or(|p| p.type_ == ProviderType::Deployment);
    if deployment && name.len() > MAX_LABELLED_POOL_NAME {
        return Err(Invalid::new(
            "metadata.name",
            format!(
                "({name:?}) has {} characters: a WorkerPool of Deployment workers is named in its workers' labels, which hold at most {MAX_LABELLED_POOL_NAME}; create it again under a shorter name",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// A batch's pool ([`workerpool_name`]): one that cannot run refuses the
/// batch, which would otherwise wait on it for ever.
pub fn pool_runs(name: &str, spec: &WorkerPoolSpec) -> Result<(), Invalid> {
    workerpool_name(name, spec).map_err(|e| {
        Invalid::new(
            "spec.workerPool",
            format!("names WorkerPool {name:?}, which cannot run: its {e}"),
        )
    })
}

/// A started batch keeps its results location (`first`, its `status.results`
/// since it started; `None` when it started without one): its parts so far
/// are there, a restarted runner numbers on from them, and `cloudkon batch
/// results` reads only there. `now` is where `spec.results.s3Prefix` puts
/// them, `None` when the spec sets no prefix: the batch then keeps its
/// location whatever the operator's default is since (a helm upgrade is no
/// change of the batch's). `suffix` is the `<namespace>/<name>/<uid>/` every
/// location ends with.
pub fn results_kept(now: Option<&str>, first: Option<&str>, suffix: &str) -> Result<(), Invalid> {
    let Some(now) = now else {
        return Ok(());
    };
    match first {
        Some(had) if had == now => Ok(()),
        Some(had) => {
            let prefix = had.strip_suffix(suffix).unwrap_or(had);
            Err(Invalid::new(
                "spec.results.s3Prefix",
                format!(
                    "changed after the batch started writing its results to {had}, where its parts so far are: set it back to {prefix:?} to go on, or create a new TaskBatch for the new prefix"
                ),
            ))
        }
        None => Err(Invalid::new(
            "spec.results.s3Prefix",
            "was set after the batch started without a results location (its results so far were counted, not written): remove it to go on, or create a new TaskBatch to have them all written",
        )),
    }
}

/// Checks a WorkerPool's spec, for a pool in `namespace`: the names it gives
/// its queue and fleet must be ones the operator allows.
pub fn workerpool(
    spec: &WorkerPoolSpec,
    namespace: &str,
    allowed: &AllowedNames,
) -> Result<(), Vec<Invalid>> {
    let mut p = Problems::default();

    let w = &spec.workers;
    p.range("spec.workers.max", Some(i64::from(w.max)), Some(1), None);
    p.range("spec.workers.min", w.min.map(i64::from), Some(0), None);
    if let Some(min) = w.min
        && min > w.max
        && w.max >= 1
    {
        p.add(
            "spec.workers.min",
            format_args!("({min}) is greater than spec.workers.max ({})", w.max),
        );
    }
    p.range(
        "spec.workers.targetBacklogPerWorker",
        w.target_backlog_per_worker.map(i64::from),
        Some(1),
        None,
    );
    p.range("spec.replicas", spec.replicas.map(i64::from), Some(0), None);

    let no_queue_spec = QueueSpec::default();
    let queue = spec.queue.as_ref().unwrap_or(&no_queue_spec);
    if let Some(name) = &queue.name {
        if name.is_empty() || name.len() > 76 || !name.chars().all(is_queue_name_char) {
            p.add(
                "spec.queue.name",
                format_args!(
                    "({name:?}) must be 1 to 76 letters, digits, '-' or '_' (the dead-letter queue adds \"-dlq\" within SQS's 80)"
                ),
            );
        } else if let Some(why) = reserved_queue_name(name, namespace) {
            p.add("spec.queue.name", format_args!("({name:?}) {why}"));
        } else if !allowed_names::allowed(&allowed.queues, namespace, name) {
            p.add(
                "spec.queue.name",
                not_allowed(name, namespace, &allowed.queues, "--allowed-queue-names"),
            );
        }
    }
    p.range(
        "spec.queue.maxReceives",
        queue.max_receives.map(i64::from),
        Some(1),
        Some(1000),
    );

    let provider = spec
        .provider
        .as_ref()
        .map_or(ProviderType::Deployment, |p| p.type_);
    let t = &spec.template;
    if provider == ProviderType::Deployment {
        p.required_text("spec.template.image", t.image.as_deref());
    }
    if let Some(policy) = &t.image_pull_policy
        && !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never")
    {
        p.add(
            "spec.template.imagePullPolicy",
            format_args!("({policy:?}) must be Always, IfNotPresent or Never"),
        );
    }
    p.range(
        "spec.template.threads",
        t.threads.map(i64::from),
        Some(1),
        Some(10_000),
    );
    if let Some(sa) = &t.service_account_name
        && !is_dns_subdomain(sa)
    {
        p.add(
            "spec.template.serviceAccountName",
            format_args!("({sa:?}) is not a valid ServiceAccount name"),
        );
    }
    for (i, network) in t.allow_downloads_from.iter().enumerate() {
        if network.parse::<ipnet::IpNet>().is_err() {
            p.add(
                format!("spec.template.allowDownloadsFrom[{i}]"),
                format_args!("({network:?}) is not a network in CIDR form, e.g. 10.20.0.0/16"),
            );
        }
    }
    if let Some(table) = &t.ledger_table {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        // The workers' heartbeat table is `<table>-workers`: 8 more characters.
        if table.len() < 3 || table.len() > 247 || !table.chars().all(ok) {
            p.add(
                "spec.template.ledgerTable",
                format_args!(
                    "({table:?}) must be 3 to 247 letters, digits, '-', '_' or '.' (a DynamoDB table name, with room for \"-workers\")"
                ),
            );
        }
    }

    if let Some(pr) = &spec.provider {
        let members = [
            ("instances", ProviderType::Instances, pr.instances.is_some()),
            (
                "autoScalingGroup",
                ProviderType::AutoScalingGroup,
                pr.auto_scaling_group.is_some(),
            ),
            (
                "eksNodegroup",
                ProviderType::EksNodegroup,
                pr.eks_nodegroup.is_some(),
            ),
        ];
        for (name, ty, is_set) in members {
            if ty == pr.type_ && !is_set {
                p.add(
                    format!("spec.provider.{name}"),
                    format_args!("is required with type {ty:?}"),
                );
            } else if ty != pr.type_ && is_set {
                p.add(
                    format!("spec.provider.{name}"),
                    format_args!("does not apply to type {:?}", pr.type_),
                );
            }
        }
        let mut fleet = |field: &str, name: &str, patterns: &[String], flag: &str| {
            if !allowed_names::allowed(patterns, namespace, name) {
                p.add(field, not_allowed(name, namespace, patterns, flag));
            }
        };
        // The names of the member the type uses (another type's is refused above).
        if let Some(i) = pr
            .instances
            .as_ref()
            .filter(|_| pr.type_ == ProviderType::Instances)
            && !i.launch_template.trim().is_empty()
        {
            fleet(
                "spec.provider.instances.launchTemplate",
                &i.launch_template,
                &allowed.launch_templates,
                "--allowed-launch-templates",
            );
        }
        if let Some(asg) = pr
            .auto_scaling_group
            .as_ref()
            .filter(|_| pr.type_ == ProviderType::AutoScalingGroup)
            && !asg.name.trim().is_empty()
        {
            fleet(
                "spec.provider.autoScalingGroup.name",
                &asg.name,
                &allowed.auto_scaling_groups,
                "--allowed-auto-scaling-groups",
            );
        }
        if let Some(eks) = pr
            .eks_nodegroup
            .as_ref()
            .filter(|_| pr.type_ == ProviderType::EksNodegroup)
            && !eks.cluster.trim().is_empty()
            && !eks.nodegroup.trim().is_empty()
        {
            fleet(
                "spec.provider.eksNodegroup",
                &format!("{}/{}", eks.cluster, eks.nodegroup),
                &allowed.eks_nodegroups,
                "--allowed-eks-nodegroups",
            );
        }
        if let Some(i) = &pr.instances {
            p.required_text(
                "spec.provider.instances.launchTemplate",
                Some(i.launch_template.as_str()),
            );
        }
        if let Some(asg) = &pr.auto_scaling_group {
            p.required_text(
                "spec.provider.autoScalingGroup.name",
                Some(asg.name.as_str()),
            );
        }
        if let Some(eks) = &pr.eks_nodegroup {
            p.required_text(
                "spec.provider.eksNodegroup.cluster",
                Some(eks.cluster.as_str()),
            );
            p.required_text(
                "spec.provider.eksNodegroup.nodegroup",
                Some(eks.nodegroup.as_str()),
            );
        }
    }

    if let Some(b) = &spec.behavior {
        for (name, rules) in [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)] {
            if let Some(rules) = rules {
                scaling_rules(&mut p, &format!("spec.behavior.{name}"), rules);
            }
        }
        p.range(
            "spec.behavior.scaleToZeroCooldownSeconds",
            b.scale_to_zero_cooldown_seconds.map(i64::from),
            Some(0),
            None,
        );
    }
    p.finish()
}

/// Why an explicit queue name may be no pool's, whatever the allowlist: the
/// names the operator derives for other namespaces' pools, for batches'
/// response queues and for dead-letter queues.
fn reserved_queue_name(name: &str, namespace: &str) -> Option<&'static str> {
    if name.starts_with("cloudkon_") {
        Some("is reserved: cloudkon_* are the operator's names for pools with long names")
    } else if name.starts_with("cloudkon-tb-") {
        Some("is reserved: cloudkon-tb-* are batches' response queues")
    } else if name.ends_with("-dlq") {
        Some("ends in -dlq: that is the name of a dead-letter queue (the pool's own is <name>-dlq)")
    } else if name.ends_with(cloudkon_core::aws::PRIORITY_LANE_SUFFIX) {
        Some("ends in -pri: that is the name of a priority lane (the pool's own is <name>-pri)")
    } else if name.starts_with("cloudkon-")
        && name.contains('_')
        && !name.starts_with(&format!("cloudkon-{namespace}_"))
    {
        Some(
            "is reserved: cloudkon-<namespace>_* are the queues of that namespace's pools (this pool's namespace may use its own)",
        )
    } else {
        None
    }
}

fn not_allowed(name: &str, namespace: &str, patterns: &[String], flag: &str) -> String {
    let shown: Vec<String> = patterns
        .iter()
        .map(|p| p.replace("{namespace}", namespace))
        .collect();
    format!(
        "({name:?}) is not allowed: this operator lets WorkerPools in namespace {namespace} name only {} ({flag})",
        if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(", ")
        }
    )
}

fn scaling_rules(p: &mut Problems, path: &str, rules: &ScalingRules) {
    p.range(
        &format!("{path}.stabilizationWindowSeconds"),
        rules.stabilization_window_seconds.map(i64::from),
        Some(0),
        Some(3600),
    );
    for (i, policy) in rules.policies.iter().enumerate() {
        p.range(
            &format!("{path}.policies[{i}].value"),
            Some(i64::from(policy.value)),
            Some(1),
            None,
        );
        p.range(
            &format!("{path}.policies[{i}].periodSeconds"),
            Some(i64::from(policy.period_seconds)),
            Some(1),
            Some(1800),
        );
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// `base` with `patch` merged in (JSON merge patch: null removes).
    fn merged(base: &Value, patch: &Value) -> Value {
        let mut out = base.clone();
        merge(&mut out, patch);
        out
    }

    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    fn check_table<S: serde::de::DeserializeOwned>(
        base: Value,
        validate: fn(&S) -> Result<(), Vec<Invalid>>,
        cases: &[(&str, Value, &[&str])],
    ) {
        let spec: S = serde_json::from_value(base.clone()).expect("the base spec parses");
        assert_eq!(validate(&spec), Ok(()), "the base spec is valid");
        for (name, patch, want) in cases {
            let value = merged(&base, patch);
            let spec: S = serde_json::from_value(value)
                .unwrap_or_else(|e| panic!("{name}: the spec does not parse: {e}"));
            let got: Vec<String> = match validate(&spec) {
                Ok(()) => vec![],
                Err(problems) => problems.into_iter().map(|p| p.message).collect(),
            };
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn a_pool_keeps_its_queue() {
        let url = "http://127.0.0.1:4566/000000000000/cloudkon-ns_p";
        assert_eq!(queue_kept("cloudkon-ns_p", Some(url)), Ok(()));
        assert_eq!(fleet_kept("Instances", None, 3), Ok(()), "no fleet yet");
        assert_eq!(fleet_kept("Instances", Some("Instances"), 3), Ok(()));
        assert_eq!(
            fleet_kept("Deployment", Some("Instances"), 0),
            Ok(()),
            "nothing left behind"
        );
        let e = fleet_kept("Deployment", Some("Instances"), 3).unwrap_err();
        assert!(e.to_string().contains("3 workers are in Instances"), "{e}");
        assert_eq!(queue_kept("other", None), Ok(()), "no queue yet");
        let e = queue_kept("other", Some(url)).unwrap_err();
        assert_eq!(e.field, "spec.queue.name");
        assert_eq!(
            e.message,
            "spec.queue.name gives the queue \"other\", but the pool's queue is \"cloudkon-ns_p\", where its batches' bundles are: set spec.queue.name to \"cloudkon-ns_p\" to keep it, or create a new WorkerPool for the other queue"
        );
    }

    #[test]
    fn a_batch_keeps_the_pool_it_first_enqueued_on() {
        assert_eq!(pool_kept("a", Some("a")), Ok(()));
        assert_eq!(pool_kept("b", None), Ok(()), "nothing sent yet");
        let e = pool_kept("b", Some("a")).unwrap_err();
        assert_eq!(e.field, "spec.workerPool");
        assert!(
            e.message
                .starts_with("spec.workerPool changed from \"a\" to \"b\" after the batch"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_started_batch_keeps_its_results_location() {
        let suffix = "ns/b/u1/";
        let had = "s3://bkt/res/ns/b/u1/";
        assert_eq!(results_kept(Some(had), Some(had), suffix), Ok(()));
        // No prefix in the spec: the kept one stays, whatever the default.
        assert_eq!(results_kept(None, Some(had), suffix), Ok(()));
        assert_eq!(results_kept(None, None, suffix), Ok(()));
        let e = results_kept(Some("s3://bkt/other/ns/b/u1/"), Some(had), suffix).unwrap_err();
        assert_eq!(e.field, "spec.results.s3Prefix");
        assert_eq!(
            e.message,
            "spec.results.s3Prefix changed after the batch started writing its results to s3://bkt/res/ns/b/u1/, where its parts so far are: set it back to \"s3://bkt/res/\" to go on, or create a new TaskBatch for the new prefix"
        );
        let e = results_kept(Some(had), None, suffix).unwrap_err();
        assert!(
            e.message
                .starts_with("spec.results.s3Prefix was set after the batch started without"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_deployment_pools_name_fits_in_a_label() {
        let spec = |provider: Value| -> WorkerPoolSpec {
            let mut v = pool();
            if !provider.is_null() {
                v["provider"] = provider;
            }
            serde_json::from_value(v).unwrap()
        };
        let deployment = spec(Value::Null);
        let longest = "p".repeat(63);
        let long = "p".repeat(64);
        assert_eq!(workerpool_name(&longest, &deployment), Ok(()));
        let e = workerpool_name(&long, &deployment).unwrap_err();
        assert_eq!(e.field, "metadata.name");
        assert_eq!(
            e.message,
            format!(
                "metadata.name ({long:?}) has 64 characters: a WorkerPool of Deployment workers is named in its workers' labels, which hold at most 63; create it again under a shorter name"
            )
        );
        // Its batches are refused, saying why.
        let e = pool_runs(&long, &deployment).unwrap_err();
        assert_eq!(e.field, "spec.workerPool");
        assert!(
            e.message.starts_with(&format!(
                "spec.workerPool names WorkerPool {long:?}, which cannot run: its metadata.name"
            )),
            "{}",
            e.message
        );
        assert_eq!(pool_runs(&longest, &deployment), Ok(()));
        // EC2 instances are tagged, not labelled.
        let instances = spec(
            json!({"type": "Instances", "instances": {"launchTemplate": "lt-0123456789abcdef0"}}),
        );
        assert_eq!(workerpool_name(&long, &instances), Ok(()));
    }

    fn pool() -> Value {
        json!({
            "workers": {"max": 10},
            "template": {"image": "cloudkon/worker:0.1"},
        })
    }

    #[test]
    fn workerpool_table() {
        let long_name = "q".repeat(77);
        let too_long = format!(
            "spec.queue.name ({long_name:?}) must be 1 to 76 letters, digits, '-' or '_' (the dead-letter queue adds \"-dlq\" within SQS's 80)"
        );
        let cases: &[(&str, Value, &[&str])] = &[
            (
                "a full valid spec",
                json!({
                    "queue": {"name": "cloudkon-sweep-q1", "maxReceives": 3, "deletionPolicy": "Retain"},
                    "workers": {"min": 1, "max": 10, "targetBacklogPerWorker": 4},
                    "template": {"imagePullPolicy": "IfNotPresent", "threads": 8,
                                 "serviceAccountName": "cloudkon-worker", "ledgerTable": "cloudkon-ledger"},
                    "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                                             "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]},
                                 "scaleToZeroCooldownSeconds": 60},
                    "replicas": 3,
                }),
                &[],
            ),
            (
                "min above max",
                json!({"workers": {"min": 5, "max": 2}}),
                &["spec.workers.min (5) is greater than spec.workers.max (2)"],
            ),
            (
                "max zero",
                json!({"workers": {"max": 0}}),
                &["spec.workers.max (0) must be at least 1"],
            ),
            (
                "negative min",
                json!({"workers": {"min": -1}}),
                &["spec.workers.min (-1) must be at least 0"],
            ),
            (
                "zero target",
                json!({"workers": {"targetBacklogPerWorker": 0}}),
                &["spec.workers.targetBacklogPerWorker (0) must be at least 1"],
            ),
            (
                "negative replicas",
                json!({"replicas": -2}),
                &["spec.replicas (-2) must be at least 0"],
            ),
            (
                "no image for a Deployment",
                json!({"template": {"image": null}}),
                &["spec.template.image is required"],
            ),
            (
                "blank image",
                json!({"template": {"image": "  "}}),
                &["spec.template.image is required"],
            ),
            (
                "download networks that are not CIDRs",
                json!({"template": {"allowDownloadsFrom": ["10.20.0.0/16", "fd00:ec2::254/128", "10.0.0.1", "intranet"]}}),
                &[
                    "spec.template.allowDownloadsFrom[2] (\"10.0.0.1\") is not a network in CIDR form, e.g. 10.20.0.0/16",
                    "spec.template.allowDownloadsFrom[3] (\"intranet\") is not a network in CIDR form, e.g. 10.20.0.0/16",
                ],
            ),
            (
                "bad pull policy",
                json!({"template": {"imagePullPolicy": "always"}}),
                &[
                    "spec.template.imagePullPolicy (\"always\") must be Always, IfNotPresent or Never",
                ],
            ),
            (
                "zero threads",
                json!({"template": {"threads": 0}}),
                &["spec.template.threads (0) must be at least 1"],
            ),
            (
                "bad service account",
                json!({"template": {"serviceAccountName": "Worker_SA"}}),
                &[
                    "spec.template.serviceAccountName (\"Worker_SA\") is not a valid ServiceAccount name",
                ],
            ),
            (
                "bad ledger table",
                json!({"template": {"ledgerTable": "t"}}),
                &[
                    "spec.template.ledgerTable (\"t\") must be 3 to 247 letters, digits, '-', '_' or '.' (a DynamoDB table name, with room for \"-workers\")",
                ],
            ),
            (
                "queue name with a dot",
                json!({"queue": {"name": "my.queue"}}),
                &[
                    "spec.queue.name (\"my.queue\") must be 1 to 76 letters, digits, '-' or '_' (the dead-letter queue adds \"-dlq\" within SQS's 80)",
                ],
            ),
            (
                "queue name too long",
                json!({"queue": {"name": long_name}}),
                &[too_long.as_str()],
            ),
            (
                "maxReceives out of range",
                json!({"queue": {"maxReceives": 0}}),
                &["spec.queue.maxReceives (0) must be at least 1"],
            ),
            (
                "instances without their member",
                json!({"provider": {"type": "Instances"}}),
                &["spec.provider.instances is required with type Instances"],
            ),
            (
                "EC2 instances need no image",
                json!({
                "provider": {"type": "Instances", "instances": {"launchTemplate": "cloudkon-workers"}},
                "template": {"image": null}}),
                &[],
            ),
            (
                "a queue name outside the allowed ones",
                json!({"queue": {"name": "team-b-sweep"}}),
                &[
                    "spec.queue.name (\"team-b-sweep\") is not allowed: this operator lets WorkerPools in namespace batch name only cloudkon-* (--allowed-queue-names)",
                ],
            ),
            (
                "another namespace's derived queue",
                json!({"queue": {"name": "cloudkon-other_sweep"}}),
                &[
                    "spec.queue.name (\"cloudkon-other_sweep\") is reserved: cloudkon-<namespace>_* are the queues of that namespace's pools (this pool's namespace may use its own)",
                ],
            ),
            (
                "its own namespace's derived form",
                json!({"queue": {"name": "cloudkon-batch_sweep"}}),
                &[],
            ),
            (
                "a batch's response queue",
                json!({"queue": {"name": "cloudkon-tb-0f8fad5b-d9cb-469f-a165-70867728950e"}}),
                &[
                    "spec.queue.name (\"cloudkon-tb-0f8fad5b-d9cb-469f-a165-70867728950e\") is reserved: cloudkon-tb-* are batches' response queues",
                ],
            ),
            (
                "a long derived name",
                json!({"queue": {"name": "cloudkon_other_0123456789abcdef"}}),
                &[
                    "spec.queue.name (\"cloudkon_other_0123456789abcdef\") is reserved: cloudkon_* are the operator's names for pools with long names",
                ],
            ),
            (
                "another pool's dead-letter queue",
                json!({"queue": {"name": "cloudkon-sweep-dlq"}}),
                &[
                    "spec.queue.name (\"cloudkon-sweep-dlq\") ends in -dlq: that is the name of a dead-letter queue (the pool's own is <name>-dlq)",
                ],
            ),
            (
                "another pool's priority lane",
                json!({"queue": {"name": "cloudkon-sweep-pri"}}),
                &[
                    "spec.queue.name (\"cloudkon-sweep-pri\") ends in -pri: that is the name of a priority lane (the pool's own is <name>-pri)",
                ],
            ),
            (
                "a launch template outside the allowed ones",
                json!({"provider": {"type": "Instances", "instances": {"launchTemplate": "lt-0abc"}}}),
                &[
                    "spec.provider.instances.launchTemplate (\"lt-0abc\") is not allowed: this operator lets WorkerPools in namespace batch name only cloudkon-* (--allowed-launch-templates)",
                ],
            ),
            (
                "an auto scaling group outside the allowed ones",
                json!({"provider": {"type": "AutoScalingGroup", "autoScalingGroup": {"name": "prod-web"}}}),
                &[
                    "spec.provider.autoScalingGroup.name (\"prod-web\") is not allowed: this operator lets WorkerPools in namespace batch name only cloudkon-* (--allowed-auto-scaling-groups)",
                ],
            ),
            (
                "an EKS node group outside the allowed ones",
                json!({"provider": {"type": "EksNodegroup", "eksNodegroup": {"cluster": "prod", "nodegroup": "system"}}}),
                &[
                    "spec.provider.eksNodegroup (\"prod/system\") is not allowed: this operator lets WorkerPools in namespace batch name only */cloudkon-* (--allowed-eks-nodegroups)",
                ],
            ),
            (
                "a member of another type",
                json!({"provider": {"type": "Deployment",
                "eksNodegroup": {"cluster": "c", "nodegroup": "n"}}}),
                &["spec.provider.eksNodegroup does not apply to type Deployment"],
            ),
            (
                "an empty group name",
                json!({"provider": {"type": "AutoScalingGroup",
                "autoScalingGroup": {"name": ""}}}),
                &["spec.provider.autoScalingGroup.name is required"],
            ),
            (
                "eks fields",
                json!({"provider": {"type": "EksNodegroup",
                "eksNodegroup": {"cluster": "", "nodegroup": "workers"}}}),
                &["spec.provider.eksNodegroup.cluster is required"],
            ),
            (
                "stabilization window too long",
                json!({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 3601}}}),
                &["spec.behavior.scaleDown.stabilizationWindowSeconds (3601) must be at most 3600"],
            ),
            (
                "bad policies",
                json!({"behavior": {"scaleUp": {"policies": [
                {"type": "Percent", "value": 0, "periodSeconds": 15},
                {"type": "Pods", "value": 1, "periodSeconds": 1801}]}}}),
                &[
                    "spec.behavior.scaleUp.policies[0].value (0) must be at least 1",
                    "spec.behavior.scaleUp.policies[1].periodSeconds (1801) must be at most 1800",
                ],
            ),
            (
                "negative cooldown",
                json!({"behavior": {"scaleToZeroCooldownSeconds": -1}}),
                &["spec.behavior.scaleToZeroCooldownSeconds (-1) must be at least 0"],
            ),
            (
                "several problems at once",
                json!({"workers": {"min": 3, "max": 1}, "template": {"image": null, "threads": 0}}),
                &[
                    "spec.workers.min (3) is greater than spec.workers.max (1)",
                    "spec.template.image is required",
                    "spec.template.threads (0) must be at least 1",
                ],
            ),
        ];
        check_table(pool(), default_names, cases);
    }

    fn batch() -> Value {
        json!({
            "tasks": {"inline": [{"kind": "sleep", "ms": 100}]},
            "workerPool": "pool-a",
        })
    }

    #[test]
    fn taskbatch_table() {
        let cm = json!({"inline": null, "configMap": {"name": "sweep", "key": "tasks.txt"}});
        let cases: &[(&str, Value, &[&str])] = &[
            (
                "a full valid spec",
                json!({
                    "tasks": {"inline": [
                        {"kind": "sleep", "ms": 0},
                        {"kind": "run", "program": "echo", "args": ["hi"], "timeoutSeconds": 5},
                        {"kind": "animoto", "urls": ["s3://b/1.jpg", "https://x/2.png"], "resolution": "1280x720",
                         "frameRate": 5, "secondsPerImage": 2, "output": "s3://b/videos"}]},
                    "taskTimeoutSeconds": 30, "retry": {"maxAttempts": 3, "backoffSeconds": 2},
                    "dedup": false, "suspend": true, "cancel": false, "ttlSecondsAfterFinished": 3600,
                    "results": {"s3Prefix": "s3://my-bucket/results"},
                }),
                &[],
            ),
            ("a configMap source", json!({"tasks": cm}), &[]),
            (
                "an s3 source",
                json!({"tasks": {"inline": null, "s3": {"uri": "s3://my-bucket/w/sweep.txt"}}}),
                &[],
            ),
            (
                "a generator with a count",
                json!({"tasks": {"inline": null, "generator": {
                "template": {"kind": "run", "program": "./simulate", "args": ["--seed", "{i}"]}, "count": 1000000}}}),
                &[],
            ),
            (
                "a generator with a range",
                json!({"tasks": {"inline": null, "generator": {
                "template": {"kind": "sleep", "ms": 10}, "range": {"start": 10, "end": 20, "step": 2}}}}),
                &[],
            ),
            (
                "no source",
                json!({"tasks": {"inline": null}}),
                &["spec.tasks has no source: set one of inline, configMap, s3 or generator"],
            ),
            (
                "two sources",
                json!({"tasks": {"s3": {"uri": "s3://my-bucket/w.txt"}}}),
                &[
                    "spec.tasks sets inline and s3: set only one of inline, configMap, s3 or generator",
                ],
            ),
            (
                "empty inline list",
                json!({"tasks": {"inline": []}}),
                &["spec.tasks.inline is empty"],
            ),
            (
                "too many inline tasks",
                json!({"tasks": {"inline": vec![json!({"kind": "sleep", "ms": 0}); MAX_INLINE_TASKS + 1]}}),
                &[
                    "spec.tasks.inline has 10001 tasks, more than 10000: put them in a configMap or s3 workload file, or use a generator",
                ],
            ),
            (
                "sleep without ms",
                json!({"tasks": {"inline": [{"kind": "sleep"}]}}),
                &["spec.tasks.inline[0].ms is required for kind sleep"],
            ),
            (
                "negative ms",
                json!({"tasks": {"inline": [{"kind": "sleep", "ms": -5}]}}),
                &["spec.tasks.inline[0].ms (-5) must be at least 0"],
            ),
            (
                "fields of another kind",
                json!({"tasks": {"inline": [{"kind": "sleep", "ms": 1}, {"kind": "sleep", "ms": 1, "program": "x", "urls": ["s3://b/k"]}]}}),
                &[
                    "spec.tasks.inline[1].program does not apply to kind sleep",
                    "spec.tasks.inline[1].urls does not apply to kind sleep",
                ],
            ),
            (
                "negative expected length",
                json!({"tasks": {"inline": [{"kind": "run", "program": "x", "expectedMs": -1}]}}),
                &["spec.tasks.inline[0].expectedMs (-1) must be at least 0"],
            ),
            (
                "an expected length on a sleep",
                json!({"tasks": {"inline": [{"kind": "sleep", "ms": 1, "expectedMs": 5}]}}),
                &["spec.tasks.inline[0].expectedMs does not apply to kind sleep"],
            ),
            (
                "run without a program",
                json!({"tasks": {"inline": [{"kind": "run", "args": ["x"]}]}}),
                &["spec.tasks.inline[0].program is required"],
            ),
            (
                "animoto without images",
                json!({"tasks": {"inline": [{"kind": "animoto"}]}}),
                &[
                    "spec.tasks.inline[0].urls is required for kind animoto (at least one image URL)",
                ],
            ),
            (
                "core's rules: an image URL scheme",
                json!({"tasks": {"inline": [{"kind": "animoto", "urls": ["ftp://x/1.jpg"]}]}}),
                &[
                    "spec.tasks.inline[0] is not a valid task: animoto: unsupported image URL `ftp://x/1.jpg` (use http://, https://, s3:// or file://)",
                ],
            ),
            (
                "core's rules: an odd resolution",
                json!({"tasks": {"inline": [{"kind": "animoto", "urls": ["s3://b/1.jpg"], "resolution": "641x480"}]}}),
                &[
                    "spec.tasks.inline[0] is not a valid task: animoto: resolution must be WIDTHxHEIGHT with even numbers up to 8192, e.g. 1920x1080, got `641x480`",
                ],
            ),
            (
                "zero task timeout",
                json!({"tasks": {"inline": [{"kind": "sleep", "ms": 1, "timeoutSeconds": 0}]}}),
                &["spec.tasks.inline[0].timeoutSeconds (0) must be at least 1"],
            ),
            (
                "configMap name and key",
                json!({"tasks": {"inline": null, "configMap": {"name": "Sweep", "key": "a/b"}}}),
                &[
                    "spec.tasks.configMap.name (\"Sweep\") is not a valid ConfigMap name (a DNS subdomain: lowercase letters, digits, '-' and '.')",
                    "spec.tasks.configMap.key (\"a/b\") is not a valid ConfigMap key (letters, digits, '-', '_' and '.')",
                ],
            ),
            (
                "configMap without a key",
                json!({"tasks": {"inline": null, "configMap": {"name": "sweep", "key": ""}}}),
                &["spec.tasks.configMap.key is required"],
            ),
            (
                "s3 without a key",
                json!({"tasks": {"inline": null, "s3": {"uri": "s3://my-bucket/"}}}),
                &[
                    "spec.tasks.s3.uri (\"s3://my-bucket/\") must be an object's URI: s3://bucket/key",
                ],
            ),
            (
                "s3 with another scheme",
                json!({"tasks": {"inline": null, "s3": {"uri": "https://my-bucket/w.txt"}}}),
                &[
                    "spec.tasks.s3.uri (\"https://my-bucket/w.txt\") must be an object's URI: s3://bucket/key",
                ],
            ),
            (
                "generator without count or range",
                json!({"tasks": {"inline": null, "generator": {"template": {"kind": "sleep", "ms": 0}}}}),
                &["spec.tasks.generator has neither count nor range: set one"],
            ),
            (
                "generator with both",
                json!({"tasks": {"inline": null, "generator": {"template": {"kind": "sleep", "ms": 0}, "count": 3, "range": {"start": 0, "end": 3}}}}),
                &["spec.tasks.generator sets both count and range: set only one"],
            ),
            (
                "generator count zero",
                json!({"tasks": {"inline": null, "generator": {"template": {"kind": "sleep", "ms": 0}, "count": 0}}}),
                &["spec.tasks.generator.count (0) must be at least 1"],
            ),
            (
                "empty range",
                json!({"tasks": {"inline": null, "generator": {"template": {"kind": "sleep", "ms": 0}, "range": {"start": 10, "end": 5, "step": 0}}}}),
                &[
                    "spec.tasks.generator.range.step (0) must be at least 1",
                    "spec.tasks.generator.range.end (5) must be greater than spec.tasks.generator.range.start (10)",
                ],
            ),
            (
                "a bad template",
                json!({"tasks": {"inline": null, "generator": {"template": {"kind": "run", "program": ""}, "count": 5}}}),
                &["spec.tasks.generator.template.program is required"],
            ),
            (
                "no worker pool",
                json!({"workerPool": ""}),
                &["spec.workerPool is required"],
            ),
            (
                "a bad worker pool name",
                json!({"workerPool": "Pool A"}),
                &["spec.workerPool (\"Pool A\") is not a valid WorkerPool name"],
            ),
            (
                "zero timeout",
                json!({"taskTimeoutSeconds": 0}),
                &["spec.taskTimeoutSeconds (0) must be at least 1"],
            ),
            (
                "retry out of range",
                json!({"retry": {"maxAttempts": 0, "backoffSeconds": 7200}}),
                &[
                    "spec.retry.maxAttempts (0) must be at least 1",
                    "spec.retry.backoffSeconds (7200) must be at most 3600",
                ],
            ),
            (
                "negative ttl",
                json!({"ttlSecondsAfterFinished": -1}),
                &["spec.ttlSecondsAfterFinished (-1) must be at least 0"],
            ),
            (
                "results not in S3",
                json!({"results": {"s3Prefix": "/tmp/results"}}),
                &[
                    "spec.results.s3Prefix (\"/tmp/results\") must be s3://bucket or s3://bucket/prefix",
                ],
            ),
            (
                "results' keys too long",
                json!({"results": {"s3Prefix": format!("s3://my-bucket/{}", "k".repeat(601))}}),
                &[
                    "spec.results.s3Prefix has a key of 601 bytes: at most 600 (S3 keys have at most 1,024, and the results' add up to 380)",
                ],
            ),
        ];
        check_table(batch(), taskbatch, cases);
    }

    #[test]
    fn a_task_larger_than_a_message_is_refused_with_its_path() {
        let spec_with = |tasks: Value| -> TaskBatchSpec {
            serde_json::from_value(merged(&batch(), &json!({"tasks": tasks}))).unwrap()
        };
        let problems = |spec: &TaskBatchSpec| -> Vec<String> {
            taskbatch(spec)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.message)
                .collect()
        };
        let fits = "a".repeat(SQS_MAX_MESSAGE_BYTES / 2);
        let too_large = "a".repeat(SQS_MAX_MESSAGE_BYTES);
        let inline = spec_with(json!({"inline": [
            {"kind": "sleep", "ms": 1},
            {"kind": "run", "program": "echo", "args": [fits]},
            {"kind": "sleep", "ms": 2},
            {"kind": "run", "program": "echo", "args": [too_large]},
        ]}));
        let got = problems(&inline);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("spec.tasks.inline[3] is too large: it takes ")
                && got[0].contains("more than SQS's 262144"),
            "{}",
            got[0]
        );

        // Base64 makes 3 bytes 4: an animoto task's URLs near the limit.
        let urls: Vec<String> = (0..100)
            .map(|i| format!("https://x/{i}/{}", "u".repeat(2000)))
            .collect();
        let animoto = spec_with(json!({"inline": null, "generator": {
            "template": {"kind": "animoto", "urls": urls}, "count": 5}}));
        let got = problems(&animoto);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("spec.tasks.generator.template is too large"),
            "{}",
            got[0]
        );

        // `{i}` is measured at its widest: a template just under the limit
        // with "0" is over it once each `{i}` may hold 20 characters.
        let at_zero = SQS_MAX_MESSAGE_BYTES * 3 / 4 - 2_000;
        let arg = format!("{}{}", "b".repeat(at_zero - 1_000 * 3), "{i}".repeat(1_000));
        let generator = spec_with(json!({"inline": null, "generator": {
            "template": {"kind": "run", "program": "echo", "args": [arg]}, "count": 5}}));
        let template = &generator.tasks.generator.as_ref().unwrap().template;
        let (at_0, _) = template.to_task_spec(Some("0")).unwrap();
        assert_eq!(workload::task_fits_one_message(at_0), Ok(()));
        let got = problems(&generator);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("spec.tasks.generator.template is too large"));
    }

    /// [`workerpool`] for a pool in namespace `batch`, with the operator's
    /// default allowlists.
    fn default_names(spec: &WorkerPoolSpec) -> Result<(), Vec<Invalid>> {
        workerpool(spec, "batch", &AllowedNames::default())
    }

    #[test]
    fn per_namespace_allowlists_keep_tenants_to_their_own_names() {
        let allowed = AllowedNames {
            queues: vec!["cloudkon-{namespace}_*".into()],
            launch_templates: vec!["lt-0abc".into()],
            auto_scaling_groups: vec![],
            eks_nodegroups: vec!["prod/{namespace}-*".into()],
        };
        let check = |namespace: &str, patch: Value| {
            let spec: WorkerPoolSpec = serde_json::from_value(merged(&pool(), &patch)).unwrap();
            match workerpool(&spec, namespace, &allowed) {
                Ok(()) => vec![],
                Err(problems) => problems.into_iter().map(|p| p.field).collect::<Vec<_>>(),
            }
        };
        let queue = |name: &str| json!({"queue": {"name": name}});
        assert!(check("team-a", queue("cloudkon-team-a_sweep")).is_empty());
        assert_eq!(
            check("team-b", queue("cloudkon-team-a_sweep")),
            ["spec.queue.name"]
        );
        // A namespace that starts like another reaches none of its names.
        assert_eq!(
            check("team", queue("cloudkon-team-a_sweep")),
            ["spec.queue.name"]
        );
        assert_eq!(
            check("team-a", queue("cloudkon-sweep")),
            ["spec.queue.name"]
        );
        let lt = |name: &str| json!({"provider": {"type": "Instances", "instances": {"launchTemplate": name}}});
        assert!(check("team-a", lt("lt-0abc")).is_empty());
        assert_eq!(
            check("team-a", lt("lt-0abd")),
            ["spec.provider.instances.launchTemplate"]
        );
        let asg = json!({"provider": {"type": "AutoScalingGroup", "autoScalingGroup": {"name": "cloudkon-x"}}});
        assert_eq!(
            check("team-a", asg),
            ["spec.provider.autoScalingGroup.name"]
        );
        let eks = |ng: &str| json!({"provider": {"type": "EksNodegroup", "eksNodegroup": {"cluster": "prod", "nodegroup": ng}}});
        assert!(check("team-a", eks("team-a-gpu")).is_empty());
        assert_eq!(
            check("team-b", eks("team-a-gpu")),
            ["spec.provider.eksNodegroup"]
        );
    }

    #[test]
    fn summary_joins_the_messages() {
        let spec: WorkerPoolSpec = serde_json::from_value(json!({
            "workers": {"min": 5, "max": 2}, "template": {}
        }))
        .unwrap();
        let problems = default_names(&spec).unwrap_err();
        assert_eq!(problems[0].field, "spec.workers.min");
        assert_eq!(
            summary(&problems),
            "spec.workers.min (5) is greater than spec.workers.max (2); spec.template.image is required"
        );
    }

    #[test]
    fn generator_templates_fill_in_the_parameter() {
        let task: InlineTask = serde_json::from_value(json!({
            "kind": "run", "program": "./sim-{i}", "args": ["--seed", "{i}"], "timeoutSeconds": 2
        }))
        .unwrap();
        let (spec, timeout) = task.to_task_spec(Some("42")).unwrap();
        assert_eq!(
            spec,
            cloudkon_core::TaskSpec::Run {
                program: "./sim-42".into(),
                args: vec!["--seed".into(), "42".into()],
                expected_ms: None
            }
        );
        assert_eq!(timeout, Some(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn inline_tasks_follow_the_rules_of_a_workload_line() {
        let task = |v: serde_json::Value| -> InlineTask { serde_json::from_value(v).unwrap() };
        let video = task(json!({
            "kind": "animoto", "urls": ["s3://in/{i}.png"], "secondsPerImage": 2,
            "frameRate": 5, "output": "s3://out/{i}"
        }));
        let (spec, timeout) = video.to_task_spec(Some("7")).unwrap();
        let line = r#"{"kind":"animoto","urls":["s3://in/7.png"],"seconds_per_image":2,"frame_rate":5,"output":"s3://out/7"}"#;
        assert_eq!(
            Some((spec, timeout)),
            cloudkon_core::workload::parse_line(line).unwrap()
        );
        // The same refusals as a line's: core's rules, not a copy.
        let empty = task(json!({"kind": "run", "program": ""}));
        assert_eq!(
            empty.to_task_spec(None).unwrap_err(),
            cloudkon_core::workload::parse_line(r#"{"kind":"run","program":""}"#).unwrap_err()
        );
        let no_urls = task(json!({"kind": "animoto"}));
        assert!(
            no_urls
                .to_task_spec(None)
                .unwrap_err()
                .contains("at least one image")
        );
        let negative = task(json!({"kind": "animoto", "urls": ["a.png"], "frameRate": -1}));
        assert_eq!(
            negative.to_task_spec(None).unwrap_err(),
            "frameRate must not be negative, got -1"
        );
    }

    #[test]
    fn a_workload_task_larger_than_a_message_is_named_by_its_number() {
        let big = format!("run echo {}\n", "x".repeat(300 << 10));
        let long_but_fits = format!("run echo {}\n", "y".repeat(20 << 10));
        let text = format!("sleep 1\n{long_but_fits}# a comment\n{big}sleep 2\n");
        let got = workload_tasks_fit("spec.tasks.configMap", "w.txt", text.as_bytes()).unwrap_err();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0]
                .message
                .starts_with("spec.tasks.configMap (w.txt) task 2 is too large: it takes "),
            "{}",
            got[0].message
        );
        let fine = format!("sleep 1\n{long_but_fits}");
        assert!(workload_tasks_fit("f", "w.txt", fine.as_bytes()).is_ok());
        assert!(workload_tasks_fit("f", "w.txt", b"sleep 1\nrun true\n").is_ok());
    }
}
