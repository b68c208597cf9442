//! `provider.type: Instances`: EC2 instances the pool launches from a launch
//! template and terminates itself. The pool's instances are the ones with the
//! tag `cloudkon.io/workerpool=<namespace>/<name>`: no state of our own, the
//! tag is the inventory.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{
    Filter, InstanceStateName, InstanceType, LaunchTemplateSpecification, ResourceType,
    ShutdownBehavior, Tag, TagSpecification,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::busy::{BusyHosts, Machine, surplus_idle_first};
use super::{ProviderError, WorkerCount, aws_error};
use crate::crd::workerpool::Ec2Instances;

/// The tag that marks an instance as a worker of a pool: `<namespace>/<name>`.
pub const POOL_TAG: &str = "cloudkon.io/workerpool";
/// EC2 refuses user data over 16 KiB (before base64).
pub const USER_DATA_MAX_BYTES: usize = 16 * 1024;
const SERVICE: &str = "EC2";
/// DescribeInstances page size (EC2's maximum).
const PAGE_SIZE: i32 = 1000;
/// TerminateInstances takes at most this many ids per call.
const TERMINATE_BATCH: usize = 1000;
/// See [`client_token`].
const TOKEN_WINDOW_SECS: u64 = 300;

/// One instance of the pool, as DescribeInstances shows it.
#[derive(Clone, Debug, PartialEq)]
struct Instance {
    id: String,
    state: InstanceStateName,
    launch_time: Option<DateTime>,
    subnet_id: Option<String>,
    /// Its worker's host name (see [`BusyHosts`]).
    private_dns: Option<String>,
}

impl Instance {
    /// A worker, booting or running. Stopping, stopped, shutting-down and
    /// terminated instances are not: they will not take tasks again.
    fn is_live(&self) -> bool {
        matches!(
            self.state,
            InstanceStateName::Pending | InstanceStateName::Running
        )
    }
}

/// Instances launched and terminated by the pool itself.
#[derive(Clone, Debug)]
pub struct InstancesProvider {
    client: aws_sdk_ec2::Client,
    /// `<namespace>/<name>`: the tag value, and the pool in messages.
    pool: String,
    pool_name: String,
    launch_template: LaunchTemplateSpecification,
    launch_template_label: String,
    instance_type: Option<InstanceType>,
    subnet_ids: Vec<String>,
    /// Base64, as RunInstances wants it.
    user_data: String,
    page_size: i32,
}

impl InstancesProvider {
    /// Fails when the worker environment cannot be written into a shell
    /// script, or the script is too large for EC2.
    pub fn new(
        client: aws_sdk_ec2::Client,
        spec: &Ec2Instances,
        pool_namespace: &str,
        pool_name: &str,
        queue_url: &str,
        worker_env: &[(String, String)],
    ) -> Result<Self, ProviderError> {
        let pool = format!("{pool_namespace}/{pool_name}");
        let script = worker_script(queue_url, worker_env)?;
        if script.len() > USER_DATA_MAX_BYTES {
            return Err(ProviderError::UserDataTooLarge {
                pool,
                size: script.len(),
            });
        }
        let lt = &spec.launch_template;
        let launch_template = if is_launch_template_id(lt) {
            LaunchTemplateSpecification::builder().launch_template_id(lt)
        } else {
            LaunchTemplateSpecification::builder().launch_template_name(lt)
        }
        .build();
        Ok(Self {
            client,
            launch_template_label: format!("launch template {lt} (WorkerPool {pool})"),
            pool,
            pool_name: pool_name.to_string(),
            launch_template,
            instance_type: spec.instance_type.as_deref().map(InstanceType::from),
            subnet_ids: spec.subnet_ids.clone(),
            user_data: BASE64.encode(script),
            page_size: PAGE_SIZE,
        })
    }

    /// The instances of pool `<pool_namespace>/<pool_name>`, found by their
    /// tag, to observe and terminate (a deleted pool's, whatever its spec
    /// says now): no launch template, so any launch fails.
    pub fn to_release(client: aws_sdk_ec2::Client, pool_namespace: &str, pool_name: &str) -> Self {
        let none = Ec2Instances {
            launch_template: String::new(),
            instance_type: None,
            subnet_ids: vec![],
        };
        Self::new(client, &none, pool_namespace, pool_name, "", &[])
            .expect("an empty worker environment fits in the user data")
    }

    /// Read the fleet `n` instances per DescribeInstances page (5 to 1000)
    /// instead of 1000: for tests of the pagination.
    pub fn with_page_size(mut self, n: i32) -> Self {
        self.page_size = n.clamp(5, PAGE_SIZE);
        self
    }

    /// Pending and running instances; ready = running (the instance is up;
    /// whether `cloudkon-worker` started on it, only its heartbeat tells).
    pub async fn observe(&self) -> Result<WorkerCount, ProviderError> {
        let fleet = self
            .list(&[InstanceStateName::Pending, InstanceStateName::Running])
            .await?;
        let ready = fleet
            .iter()
            .filter(|i| i.state == InstanceStateName::Running)
            .count();
        Ok(WorkerCount {
            current: count(fleet.len()),
            ready: count(ready),
            bounds: None,
        })
    }

    /// How many of the live instances run tasks, per `busy`.
    pub async fn busy(&self, busy: &BusyHosts) -> Result<i32, ProviderError> {
        let live = self
            .list(&[InstanceStateName::Pending, InstanceStateName::Running])
            .await?;
        Ok(count(
            live.iter()
                .filter(|i| busy.tasks_on(&i.id, i.private_dns.as_deref()) > 0)
                .count(),
        ))
    }

    /// Launches the missing workers or terminates the surplus: idle ones
    /// first (per `busy`), then the newest. Stopped instances (someone
    /// stopped them by hand) are neither workers nor surplus: they are left
    /// as they are, until [`Self::delete_all`].
    pub async fn scale_to(&self, desired: i32, busy: &BusyHosts) -> Result<(), ProviderError> {
        let desired = usize::try_from(desired).unwrap_or(0);
        // Every state: the terminated instances still listed go into the
        // client token (see `client_token`).
        let fleet = self.list(&[]).await?;
        let live: Vec<&Instance> = fleet.iter().filter(|i| i.is_live()).collect();
        if live.len() > desired {
            let machines: Vec<_> = live
                .iter()
                .map(|i| Machine {
                    id: i.id.clone(),
                    tasks: busy.tasks_on(&i.id, i.private_dns.as_deref()),
                    launched: i.launch_time.map(|t| (t.secs(), t.subsec_nanos())),
                })
                .collect();
            let surplus: Vec<String> = surplus_idle_first(&machines, live.len() - desired)
                .into_iter()
                .map(|m| m.id.clone())
                .collect();
            tracing::info!(pool = %self.pool, desired, live = live.len(), instances = ?surplus, "terminating surplus workers");
            return self.terminate(&surplus).await;
        }
        if live.len() == desired {
            return Ok(());
        }
        let missing = desired - live.len();
        let fleet_ids: Vec<&str> = fleet.iter().map(|i| i.id.as_str()).collect();
        let window = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / TOKEN_WINDOW_SECS;
        if self.subnet_ids.is_empty() {
            let token = client_token(&self.pool, None, missing, &fleet_ids, window);
            return match self.launch(None, missing, token).await {
                (_, Some(e)) => Err(e),
                (_, None) => Ok(()),
            };
        }
        let mut in_subnet: Vec<usize> = self
            .subnet_ids
            .iter()
            .map(|s| {
                live.iter()
                    .filter(|i| i.subnet_id.as_deref() == Some(s.as_str()))
                    .count()
            })
            .collect();
        // A subnet (an Availability Zone) short of capacity, or refusing
        // for any other reason, does not keep the others from getting
        // theirs, nor the pool from its count: what it did not launch is
        // spread again over the others, until they have it all or each has
        // refused. The first error is said only when the fleet is still
        // short.
        let mut refused = vec![false; in_subnet.len()];
        let mut left = missing;
        let mut first_error = None;
        for round in 0.. {
            let open: Vec<usize> = (0..in_subnet.len()).filter(|&i| !refused[i]).collect();
            if left == 0 || open.is_empty() {
                break;
            }
            let live_in_open: Vec<usize> = open.iter().map(|&i| in_subnet[i]).collect();
            let spread = spread_over_subnets(&live_in_open, left);
            for (&i, n) in open.iter().zip(spread) {
                if n == 0 {
                    continue;
                }
                let subnet = &self.subnet_ids[i];
                let token = client_token(&self.pool, Some(subnet), n, &fleet_ids, window);
                // A later round may ask a subnet for the same count again:
                // a token of its own, or EC2 would answer with the first.
                let token = if round == 0 {
                    token
                } else {
                    format!("{token}-r{round}")
                };
                let (launched, error) = self.launch(Some(subnet), n, token).await;
                in_subnet[i] += launched;
                left -= launched.min(left);
                if let Some(e) = error {
                    tracing::warn!(pool = %self.pool, subnet = %subnet, launched, of = n, error = %e, "a subnet refused launches: the others are asked for the rest");
                    first_error.get_or_insert(e);
                }
                if launched < n {
                    refused[i] = true;
                }
            }
        }
        match first_error {
            Some(e) if left > 0 => Err(e),
            _ => Ok(()),
        }
    }

    /// Terminates every instance of the pool that is not already going.
    pub async fn delete_all(&self) -> Result<(), ProviderError> {
        let ids: Vec<String> = self
            .list(&[
                InstanceStateName::Pending,
                InstanceStateName::Running,
                InstanceStateName::Stopping,
                InstanceStateName::Stopped,
            ])
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        if !ids.is_empty() {
            tracing::info!(pool = %self.pool, instances = ?ids, "terminating every worker");
        }
        self.terminate(&ids).await
    }

    /// The pool's instances in `states` (every state when empty), every page.
    async fn list(&self, states: &[InstanceStateName]) -> Result<Vec<Instance>, ProviderError> {
        let mut filters = vec![
            Filter::builder()
                .name(format!("tag:{POOL_TAG}"))
                .values(&self.pool)
                .build(),
        ];
        if !states.is_empty() {
            filters.push(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(states.iter().map(|s| s.as_str().into()).collect()))
                    .build(),
            );
        }
        let mut fleet = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .max_results(self.page_size)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        SERVICE,
                        "DescribeInstances",
                        format!("instances of WorkerPool {}", self.pool),
                        e,
                    )
                })?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let (Some(id), Some(state)) = (i.instance_id(), i.state().and_then(|s| s.name()))
                else {
                    continue;
                };
                fleet.push(Instance {
                    id: id.to_string(),
                    state: state.clone(),
                    launch_time: i.launch_time().copied(),
                    subnet_id: i.subnet_id().map(str::to_string),
                    private_dns: i.private_dns_name().map(str::to_string),
                });
            }
            // An empty token is the end too (some servers send "").
            next_token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next_token.is_none() {
                return Ok(fleet);
            }
        }
    }

    /// Launches `n` workers, as many as EC2 has room for: each call asks for
    /// at least one (MinCount 1) and at most what is left, and another call
    /// asks for the rest while the last one gave some. With MinCount n, EC2
    /// short of capacity (a spot pool, a busy zone) launched none at all,
    /// and the next poll asked for the same n again. A call that fails ends
    /// the launch; the next poll asks for what is still missing, under a new
    /// token (the fleet then holds the instances launched). Returns how many
    /// were launched, and the error that ended the launch short, if one did.
    async fn launch(
        &self,
        subnet: Option<&String>,
        n: usize,
        token: String,
    ) -> (usize, Option<ProviderError>) {
        let mut launched = 0;
        for call in 0.. {
            // Each call a token of its own, the same for the same decision.
            let token = if call == 0 {
                token.clone()
            } else {
                format!("{token}-{call}")
            };
            match self.launch_once(subnet, n - launched, token).await {
                Ok(0) => break,
                Ok(more) => launched = (launched + more).min(n),
                Err(e) => return (launched, Some(e)),
            }
            if launched >= n {
                break;
            }
        }
        (launched, None)
    }

    /// One RunInstances call for 1 to `n` workers: how many it launched.
    async fn launch_once(
        &self,
        subnet: Option<&String>,
        n: usize,
        token: String,
    ) -> Result<usize, ProviderError> {
        let n = count(n);
        tracing::info!(pool = %self.pool, count = n, subnet = ?subnet, token, "launching workers");
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key(POOL_TAG).value(&self.pool).build())
            .tags(
                Tag::builder()
                    .key("Name")
                    .value(format!("cloudkon-worker-{}", self.pool_name))
                    .build(),
            )
            .build();
        let out = self
            .client
            .run_instances()
            .launch_template(self.launch_template.clone())
            .set_instance_type(self.instance_type.clone())
            .set_subnet_id(subnet.cloned())
            .min_count(1)
            .max_count(n)
            .user_data(&self.user_data)
            // See `START_WORKER`.
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .tag_specifications(tags)
            .client_token(token)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "RunInstances", &self.launch_template_label, e))?;
        Ok(out.instances().len())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), ProviderError> {
        for batch in ids.chunks(TERMINATE_BATCH) {
            self.client
                .terminate_instances()
                .set_instance_ids(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        SERVICE,
                        "TerminateInstances",
                        format!("{} (WorkerPool {})", id_list(batch), self.pool),
                        e,
                    )
                })?;
        }
        Ok(())
    }
}

/// `lt-` and hex digits, as EC2 makes ids (`lt-0abc...`): a launch template
/// id. Anything else is a name, `lt-workers` included: a name may start with
/// `lt-` too.
fn is_launch_template_id(s: &str) -> bool {
    s.strip_prefix("lt-").is_some_and(|hex| {
        hex.len() >= 8
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A few ids for a message: a batch can hold a thousand.
fn id_list(ids: &[String]) -> String {
    match ids {
        [a, b, c, rest @ ..] if !rest.is_empty() => {
            format!("{a},{b},{c} and {} more", rest.len())
        }
        _ => ids.join(","),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Makes the unprivileged user `cloudkon-worker` unless the AMI has it: user
/// data runs as root, and tasks (any program, on tenants' behalf) must not.
/// `set -e` before it: if the user cannot be made, nothing runs (never the
/// worker as root).
const USER_SETUP: &str = "set -e\n\
id -u cloudkon-worker >/dev/null 2>&1 || useradd --system --user-group --create-home \
--home-dir /var/lib/cloudkon-worker --shell /usr/sbin/nologin cloudkon-worker\n";

/// Runs the worker as that user, with no way back to root: no
/// capabilities, no setuid gains (`setpriv` is util-linux's, on every
/// mainstream AMI). Then the instance shuts down, which terminates it
/// (launched with `InstanceInitiatedShutdownBehavior=terminate`): whatever
/// ended the worker (its pool deleted with its queue, an idle timeout, a
/// spot notice, a crash), no instance is left running, and billed, without
/// one; one launched as its pool was deleted, too late to be listed, ends
/// so. A worker that could not run a minute (missing on the AMI, a bad
/// setting) holds its instance ten minutes first, or the pool would launch
/// instance after instance.
const START_WORKER: &str = "started=$(date +%s)\n\
setpriv --reuid=cloudkon-worker --regid=cloudkon-worker \
--init-groups --no-new-privs --inh-caps=-all --bounding-set=-all \
env HOME=/var/lib/cloudkon-worker cloudkon-worker || echo \"cloudkon-worker exited with status $?\" >&2\n\
[ $(($(date +%s) - started)) -ge 60 ] || sleep 600\n\
exec shutdown -h now\n";

/// The user data of a worker instance: a shell script that makes the
/// worker's user, sets the worker's environment and becomes `cloudkon-worker`
/// (on the AMI's PATH) as that user. The queue comes first and `worker_env`
/// after it, so that, as in the Deployment, the user's value wins for a
/// repeated name.
/// The instance metadata service, as EC2 serves it to an instance.
const INSTANCE_METADATA: &str = "http://169.254.169.254";

pub fn worker_script(
    queue_url: &str,
    worker_env: &[(String, String)],
) -> Result<String, ProviderError> {
    let mut script = format!("#!/bin/sh\n{USER_SETUP}");
    // Spot instances announce their interruption through the metadata
    // service: the worker drains on notice (`--spot-metadata`; a user's
    // empty value turns it off).
    let vars = [
        ("CLOUDKON_QUEUE", queue_url),
        ("CLOUDKON_SPOT_METADATA", INSTANCE_METADATA),
    ]
    .into_iter()
    .chain(worker_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (name, value) in vars {
        check_env(name, value)?;
        script.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    script.push_str(START_WORKER);
    Ok(script)
}

/// A name the shell takes as a variable (anything else would be a syntax
/// error, or worse, a command), and a value a shell can hold.
fn check_env(name: &str, value: &str) -> Result<(), ProviderError> {
    let invalid = |reason| ProviderError::InvalidEnv {
        name: name.to_string(),
        reason,
    };
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(
            "a shell variable name is letters, digits and '_', not starting with a digit",
        ));
    }
    if value.contains('\0') {
        return Err(invalid("its value holds a NUL byte"));
    }
    Ok(())
}

/// Single quotes keep every byte as is but the quote itself, written `'\''`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// How many of `missing` new instances go to each subnet: one at a time to
/// the subnet with the fewest live workers so far (ties: the spec's order),
/// so that the fleet stays spread over the zones as it grows and shrinks.
fn spread_over_subnets(live_in_subnet: &[usize], missing: usize) -> Vec<usize> {
    let mut total = live_in_subnet.to_vec();
    let mut new = vec![0; total.len()];
    for _ in 0..missing {
        let Some((i, _)) = total.iter().enumerate().min_by_key(|&(i, n)| (*n, i)) else {
            break;
        };
        total[i] += 1;
        new[i] += 1;
    }
    new
}

/// The ClientToken of one RunInstances call: a hash of the pool, the subnet,
/// the count, every instance id the pool had when the decision was made
/// (terminated ones included, while EC2 still lists them), and a 5-minute
/// window.
///
/// The same decision repeated gives the same token, so EC2 answers with the
/// first launch instead of launching again: the SDK's own retry after a
/// timeout, and a reconcile that retries while DescribeInstances does not
/// show the new instances yet (EC2 is eventually consistent). Once they
/// show, the fleet differs, and so does any later token. The window keeps a
/// token from coming back on a later day, when an emptied pool looks the
/// same again and EC2 (which keeps tokens for a while after the instances
/// are gone) would answer with the old, terminated launch. The price: a retry
/// that straddles a window edge while the new instances are still invisible
/// launches twice, and the next scale_to terminates the surplus.
fn client_token(
    pool: &str,
    subnet: Option<&str>,
    count: usize,
    fleet_ids: &[&str],
    window: u64,
) -> String {
    let mut ids = fleet_ids.to_vec();
    ids.sort_unstable();
    let mut h = Fnv64::new();
    h.write(pool.as_bytes());
    h.write(&[0]);
    h.write(subnet.unwrap_or("").as_bytes());
    h.write(&[0]);
    h.write(&(count as u64).to_le_bytes());
    for id in ids {
        h.write(id.as_bytes());
        h.write(&[0]);
    }
    h.write(&window.to_le_bytes());
    // At most 64 ASCII characters.
    format!("cloudkon-{:016x}", h.0)
}

/// FNV-1a: a stable hash (std's hashers may change between Rust releases,
/// and a token must survive an operator upgrade between two retries).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What `sh` makes of the script: the exported variables, read back by
    /// running it with stand-ins on its PATH: `id` says the user exists (so
    /// no user is made on this machine), `setpriv` prints its arguments and
    /// runs `env` instead of the worker; `date` says it is 1000 s past the
    /// epoch (the worker ran no time), `sleep` and `shutdown` print their
    /// arguments.
    fn run_script(script: &str) -> String {
        run_script_with(script, "exec /usr/bin/env")
    }

    /// The same with `worker` (shell words) for the worker.
    fn run_script_with(script: &str, worker: &str) -> String {
        let stubs = tempfile::tempdir().unwrap();
        let stub = |name: &str, body: &str| {
            let path = stubs.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        stub("id", "exit 0");
        stub("useradd", "echo useradd ran; exit 1");
        stub("setpriv", &format!("echo \"setpriv $*\"; {worker}"));
        stub("date", "echo 1000");
        stub("sleep", "echo \"sleep $*\"");
        stub("shutdown", "echo \"shutdown $*\"");
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", stubs.path())
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{script}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_script_exports_the_queue_then_the_users_env_and_execs_the_worker() {
        let script = worker_script(
            "https://sqs.us-east-1.amazonaws.com/1/q",
            &env(&[("CLOUDKON_THREADS", "8"), ("CLOUDKON_QUEUE", "mine")]),
        )
        .unwrap();
        assert_eq!(
            script,
            format!(
                "#!/bin/sh\n{USER_SETUP}\
                 export CLOUDKON_QUEUE='https://sqs.us-east-1.amazonaws.com/1/q'\n\
                 export CLOUDKON_SPOT_METADATA='http://169.254.169.254'\n\
                 export CLOUDKON_THREADS='8'\n\
                 export CLOUDKON_QUEUE='mine'\n\
                 {START_WORKER}"
            )
        );
        // The user's value wins, as in the Deployment.
        assert!(run_script(&script).contains("CLOUDKON_QUEUE=mine\n"));
    }

    #[test]
    fn the_worker_runs_as_its_own_user_not_root() {
        let script = worker_script("q", &[]).unwrap();
        let seen = run_script(&script);
        // The worker is exec'd through setpriv as the dedicated user, with
        // no capabilities and no privilege gains, whatever the AMI.
        let setpriv = seen.lines().next().unwrap();
        for arg in [
            "--reuid=cloudkon-worker",
            "--regid=cloudkon-worker",
            "--init-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ] {
            assert!(setpriv.contains(arg), "{setpriv}");
        }
        assert!(
            setpriv.ends_with("env HOME=/var/lib/cloudkon-worker cloudkon-worker"),
            "{setpriv}"
        );
        assert!(!seen.contains("useradd ran"), "{seen}");
        assert!(
            script.ends_with(START_WORKER) && script.matches("setpriv ").count() == 1,
            "nothing else starts the worker: {script}"
        );

        // A user that cannot be made stops the script before the worker.
        let no_user = script.replace("id -u cloudkon-worker", "false");
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&no_user)
            .env_clear()
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("setpriv"));
    }

    #[test]
    fn the_instance_shuts_down_when_its_worker_ends_at_once_only_after_a_while() {
        let script = worker_script("q", &[]).unwrap();
        // Ended at once (the stand-in `date` does not move), failed or not:
        // ten minutes, then the shutdown that terminates the instance.
        for worker in ["exit 0", "exit 3"] {
            let seen = run_script_with(&script, worker);
            let after: Vec<&str> = seen.lines().skip(1).collect();
            assert_eq!(after, ["sleep 600", "shutdown -h now"], "{worker}: {seen}");
        }
        // Ran over a minute: shut down at once.
        let seen = run_script_with(
            &script.replace("started=$(date +%s)", "started=900"),
            "exit 0",
        );
        assert_eq!(
            seen.lines().skip(1).collect::<Vec<_>>(),
            ["shutdown -h now"],
            "{seen}"
        );
    }

    #[test]
    fn values_reach_the_worker_byte_for_byte() {
        let nasty = "it's $HOME `id` $(id) \"q\" \\ ; rm -rf / #\nline two '' end";
        let script = worker_script("q", &env(&[("X", nasty), ("EMPTY", "")])).unwrap();
        let seen = run_script(&script);
        assert!(seen.contains(&format!("X={nasty}\n")), "{seen}");
        assert!(seen.contains("EMPTY=\n"), "{seen}");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn names_that_are_not_shell_variables_are_refused() {
        for bad in ["", "1X", "A-B", "A B", "X;rm", "$X", "É"] {
            let err = worker_script("q", &env(&[(bad, "v")])).unwrap_err();
            assert!(
                matches!(&err, ProviderError::InvalidEnv { name, .. } if name == bad),
                "{bad:?}: {err}"
            );
        }
        assert!(worker_script("q", &env(&[("_a1", "v"), ("A_B", "v")])).is_ok());
        assert!(matches!(
            worker_script("q", &env(&[("X", "a\0b")])),
            Err(ProviderError::InvalidEnv { .. })
        ));
    }

    #[test]
    fn long_id_lists_are_cut_in_messages() {
        let ids: Vec<String> = (1..=5).map(|n| format!("i-{n}")).collect();
        assert_eq!(id_list(&ids[..3]), "i-1,i-2,i-3");
        assert_eq!(id_list(&ids), "i-1,i-2,i-3 and 2 more");
    }

    #[test]
    fn launch_template_ids_are_told_from_names() {
        assert!(is_launch_template_id("lt-0abcdef1234567890"));
        assert!(is_launch_template_id("lt-12345678"));
        assert!(!is_launch_template_id("lt-workers"));
        assert!(!is_launch_template_id("lt-up-1234-5678"));
        assert!(!is_launch_template_id("lt-0ABCDEF12"));
        assert!(!is_launch_template_id("lt-abc"));
        assert!(!is_launch_template_id("workers"));
    }

    #[test]
    fn new_instances_fill_the_emptiest_subnets_first() {
        assert_eq!(spread_over_subnets(&[0, 0, 0], 3), [1, 1, 1]);
        assert_eq!(spread_over_subnets(&[0, 0, 0], 4), [2, 1, 1]);
        assert_eq!(spread_over_subnets(&[2, 0, 1], 3), [0, 2, 1]);
        assert_eq!(spread_over_subnets(&[5, 0], 2), [0, 2]);
        assert_eq!(spread_over_subnets(&[], 2), Vec::<usize>::new());
    }

    #[test]
    fn the_client_token_names_one_decision() {
        let t = client_token("ns/p", Some("subnet-1"), 3, &["i-2", "i-1"], 7);
        assert!(t.len() <= 64 && t.is_ascii());
        // The same decision, the ids in any order: the same token.
        assert_eq!(
            t,
            client_token("ns/p", Some("subnet-1"), 3, &["i-1", "i-2"], 7)
        );
        // Anything else: another.
        for other in [
            client_token("ns/q", Some("subnet-1"), 3, &["i-1", "i-2"], 7),
            client_token("ns/p", Some("subnet-2"), 3, &["i-1", "i-2"], 7),
            client_token("ns/p", None, 3, &["i-1", "i-2"], 7),
            client_token("ns/p", Some("subnet-1"), 4, &["i-1", "i-2"], 7),
            client_token("ns/p", Some("subnet-1"), 3, &["i-1", "i-2", "i-3"], 7),
            client_token("ns/p", Some("subnet-1"), 3, &["i-1", "i-2"], 8),
        ] {
            assert_ne!(t, other);
        }
    }
}
