//! `provider.type: AutoScalingGroup`: the desired capacity of an existing
//! Auto Scaling group. The group, its launch template and its bounds belong
//! to whoever made it: the pool only moves the desired capacity within them.
//! On a scale-down while some of its workers run tasks, the pool names the
//! idle instances to go (TerminateInstanceInAutoScalingGroup, the desired
//! capacity decremented with each); otherwise the group's own termination
//! policy picks them.

use aws_sdk_autoscaling::types::{AutoScalingGroup, LifecycleState};

use super::busy::{BusyHosts, Machine, surplus_idle_first};
use super::{ProviderError, WorkerCount, aws_error, clamp};

const SERVICE: &str = "Auto Scaling";
/// DescribeInstances takes at most this many ids per call.
const DESCRIBE_BATCH: usize = 1000;

#[derive(Clone, Debug)]
pub struct AsgProvider {
    client: aws_sdk_autoscaling::Client,
    /// To read the group's instances' host names and launch times.
    ec2: aws_sdk_ec2::Client,
    group: String,
}

impl AsgProvider {
    pub fn new(client: aws_sdk_autoscaling::Client, ec2: aws_sdk_ec2::Client, group: &str) -> Self {
        Self {
            client,
            ec2,
            group: group.to_string(),
        }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// current = the desired capacity, as a Deployment's replicas: instances
    /// still to launch count as capacity already asked for (counted from the
    /// instances, a group that could not launch had the pool ask again at
    /// each poll, each time a `ScaledUp` Event); ready = the InService
    /// instances not leaving it.
    pub async fn observe(&self) -> Result<WorkerCount, ProviderError> {
        Ok(count_workers(&self.describe().await?))
    }

    /// How many of the group's instances run tasks, per `busy`.
    pub async fn busy(&self, busy: &BusyHosts) -> Result<i32, ProviderError> {
        let group = self.describe().await?;
        let machines = self.machines(&group, busy).await?;
        Ok(i32::try_from(machines.iter().filter(|m| m.tasks > 0).count()).unwrap_or(i32::MAX))
    }

    /// Sets the desired capacity, moved into the group's [MinSize, MaxSize]:
    /// changing the bounds is the group owner's decision, not the pool's.
    /// Going down while some instances run tasks (per `busy`), idle ones
    /// are terminated by name first.
    pub async fn scale_to(&self, desired: i32, busy: &BusyHosts) -> Result<(), ProviderError> {
        let group = self.describe().await?;
        let (min, max) = (group.min_size().unwrap_or(0), group.max_size().unwrap_or(0));
        let (target, clamped) = clamp(desired, min, max);
        if clamped {
            tracing::warn!(
                group = %self.group, desired, min, max, target,
                "desired workers outside the Auto Scaling group's bounds: clamped"
            );
        }
        let Some(mut capacity) = group.desired_capacity() else {
            return self.set_desired(None, target).await;
        };
        if capacity == target {
            return Ok(());
        }
        if target < capacity && !busy.is_empty() {
            match self
                .terminate_idle_first(&group, busy, target, capacity)
                .await
            {
                Ok(now) => capacity = now,
                Err((now, e)) => {
                    capacity = now;
                    if e.is_retryable() {
                        return Err(e);
                    }
                    // A policy without the permissions (or an instance
                    // gone meanwhile): the group picks, as before.
                    tracing::warn!(group = %self.group, error = %e, "cannot terminate idle workers by name: the group's termination policy picks");
                }
            }
            if capacity == target {
                return Ok(());
            }
        }
        self.set_desired(Some(capacity), target).await
    }

    /// Terminates idle instances of the group by name, from `capacity`
    /// towards `target` (never below: each takes one off the desired
    /// capacity); the desired capacity then, with the error that stopped
    /// it. Nothing when no instance is busy: the group's policy is as good.
    async fn terminate_idle_first(
        &self,
        group: &AutoScalingGroup,
        busy: &BusyHosts,
        target: i32,
        mut capacity: i32,
    ) -> Result<i32, (i32, ProviderError)> {
        let machines = self
            .machines(group, busy)
            .await
            .map_err(|e| (capacity, e))?;
        if machines.iter().all(|m| m.tasks == 0) {
            return Ok(capacity);
        }
        let members = i32::try_from(machines.len()).unwrap_or(i32::MAX);
        let n = (members - target).min(capacity - target).max(0);
        for m in surplus_idle_first(&machines, usize::try_from(n).unwrap_or(0)) {
            if m.tasks > 0 {
                break;
            }
            self.terminate_idle(&m.id)
                .await
                .map_err(|e| (capacity, e))?;
            capacity -= 1;
        }
        Ok(capacity)
    }

    /// Terminates an idle instance of the group, one off its desired
    /// capacity.
    async fn terminate_idle(&self, id: &str) -> Result<(), ProviderError> {
        tracing::info!(group = %self.group, instance = id, "terminating an idle worker");
        self.client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    SERVICE,
                    "TerminateInstanceInAutoScalingGroup",
                    format!("instance {id} of {}", self.resource()),
                    e,
                )
            })?;
        Ok(())
    }

    /// The group's instances that are not leaving it: id, tasks running on
    /// it per `busy`, launch time.
    async fn machines(
        &self,
        group: &AutoScalingGroup,
        busy: &BusyHosts,
    ) -> Result<Vec<Machine>, ProviderError> {
        let ids: Vec<String> = group
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state().is_none_or(|s| !is_leaving(s)))
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        let mut machines = Vec::with_capacity(ids.len());
        for batch in ids.chunks(DESCRIBE_BATCH) {
            let out = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        "EC2",
                        "DescribeInstances",
                        format!("instances of {}", self.resource()),
                        e,
                    )
                })?;
            for i in out.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                machines.push(Machine {
                    id: id.to_string(),
                    tasks: busy.tasks_on(id, i.private_dns_name()),
                    launched: i.launch_time().map(|t| (t.secs(), t.subsec_nanos())),
                });
            }
        }
        Ok(machines)
    }

    async fn set_desired(&self, from: Option<i32>, target: i32) -> Result<(), ProviderError> {
        tracing::info!(group = %self.group, ?from, to = target, "setting desired capacity");
        self.client
            .set_desired_capacity()
            .auto_scaling_group_name(&self.group)
            .desired_capacity(target)
            // The pool's scaler has its own stabilization and rate limits; a
            // cooldown would only make the call fail.
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "SetDesiredCapacity", self.resource(), e))?;
        Ok(())
    }

    /// Down to the group's MinSize: the group itself stays, it is not the
    /// pool's to delete.
    pub async fn delete_all(&self) -> Result<(), ProviderError> {
        self.scale_to(0, &BusyHosts::default()).await
    }

    async fn describe(&self) -> Result<AutoScalingGroup, ProviderError> {
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "DescribeAutoScalingGroups", self.resource(), e))?;
        // A group that does not exist is no error to this call: an empty list.
        out.auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(self.group.as_str()))
            .cloned()
            .ok_or_else(|| ProviderError::NotFound {
                what: "Auto Scaling group",
                name: self.group.clone(),
                operation: "DescribeAutoScalingGroups",
            })
    }

    fn resource(&self) -> String {
        format!("Auto Scaling group {}", self.group)
    }
}

fn count_workers(group: &AutoScalingGroup) -> WorkerCount {
    let ready = group
        .instances()
        .iter()
        .filter(|i| i.lifecycle_state() == Some(&LifecycleState::InService))
        .count();
    WorkerCount {
        current: group.desired_capacity().unwrap_or(0),
        ready: i32::try_from(ready).unwrap_or(i32::MAX),
        bounds: Some((group.min_size().unwrap_or(0), group.max_size().unwrap_or(0))),
    }
}

fn is_leaving(state: &LifecycleState) -> bool {
    matches!(
        state,
        LifecycleState::Terminating
            | LifecycleState::TerminatingWait
            | LifecycleState::TerminatingProceed
            | LifecycleState::TerminatingRetained
            | LifecycleState::Terminated
            | LifecycleState::Detaching
            | LifecycleState::Detached
    )
}

#[cfg(test)]
mod tests {
    use aws_sdk_autoscaling::types::Instance;

    use super::*;

    #[test]
    fn the_desired_capacity_is_asked_for_and_only_in_service_instances_are_ready() {
        let states = [
            LifecycleState::InService,
            LifecycleState::InService,
            LifecycleState::Pending,
            LifecycleState::PendingWait,
            LifecycleState::Standby,
            LifecycleState::Terminating,
            LifecycleState::TerminatingWait,
            LifecycleState::Terminated,
            LifecycleState::Detaching,
        ];
        // Seven asked for: two in service, the others launching (or
        // failing to), on standby or going.
        let mut group = AutoScalingGroup::builder().desired_capacity(7);
        for (n, state) in states.into_iter().enumerate() {
            group = group.instances(
                Instance::builder()
                    .instance_id(format!("i-{n}"))
                    .lifecycle_state(state)
                    .build(),
            );
        }
        assert_eq!(
            count_workers(&group.build()),
            WorkerCount {
                current: 7,
                ready: 2,
                bounds: Some((0, 0)),
            }
        );
    }
}
