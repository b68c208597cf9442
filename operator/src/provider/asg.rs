//! `provider.type: AutoScalingGroup`: the desired capacity of an existing
//! Auto Scaling group. The group, its launch template and its bounds belong
//! to whoever made it: the pool only moves the desired capacity within them.

use aws_sdk_autoscaling::types::{AutoScalingGroup, LifecycleState};

use super::{ProviderError, WorkerCount, aws_error, clamp};

const SERVICE: &str = "Auto Scaling";

#[derive(Clone, Debug)]
pub struct AsgProvider {
    client: aws_sdk_autoscaling::Client,
    group: String,
}

impl AsgProvider {
    pub fn new(client: aws_sdk_autoscaling::Client, group: &str) -> Self {
        Self {
            client,
            group: group.to_string(),
        }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// current = the group's instances that are not leaving it (terminating,
    /// terminated, detaching, detached); ready = the InService ones. Counted
    /// from the instances, not from DesiredCapacity, which says what the group
    /// aims at, not what it has.
    pub async fn observe(&self) -> Result<WorkerCount, ProviderError> {
        Ok(count_workers(&self.describe().await?))
    }

    /// Sets the desired capacity, moved into the group's [MinSize, MaxSize]:
    /// changing the bounds is the group owner's decision, not the pool's.
    pub async fn scale_to(&self, desired: i32) -> Result<(), ProviderError> {
        let group = self.describe().await?;
        let (min, max) = (group.min_size().unwrap_or(0), group.max_size().unwrap_or(0));
        let (target, clamped) = clamp(desired, min, max);
        if clamped {
            tracing::warn!(
                group = %self.group, desired, min, max, target,
                "desired workers outside the Auto Scaling group's bounds: clamped"
            );
        }
        if group.desired_capacity() == Some(target) {
            return Ok(());
        }
        tracing::info!(group = %self.group, from = ?group.desired_capacity(), to = target, "setting desired capacity");
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
        self.scale_to(0).await
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
    let mut count = WorkerCount {
        bounds: Some((group.min_size().unwrap_or(0), group.max_size().unwrap_or(0))),
        ..WorkerCount::default()
    };
    for state in group.instances().iter().filter_map(|i| i.lifecycle_state()) {
        if is_leaving(state) {
            continue;
        }
        count.current += 1;
        if *state == LifecycleState::InService {
            count.ready += 1;
        }
    }
    count
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
    fn leaving_instances_are_not_counted_and_only_in_service_ones_are_ready() {
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
        let mut group = AutoScalingGroup::builder();
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
                current: 5,
                ready: 2,
                bounds: Some((0, 0)),
            }
        );
    }
}
