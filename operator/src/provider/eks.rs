//! `provider.type: EksNodegroup`: the desired size of an existing EKS managed
//! node group. As with an Auto Scaling group, the bounds belong to the group's
//! owner: the pool moves the desired size within them.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_eks::types::{Nodegroup, NodegroupScalingConfig, NodegroupStatus};

use super::{ProviderError, WorkerCount, aws_error, clamp};

const SERVICE: &str = "EKS";

#[derive(Debug)]
pub struct EksProvider {
    client: aws_sdk_eks::Client,
    cluster: String,
    nodegroup: String,
    /// UpdateNodegroupConfig calls sent: each is a tracked "update" in EKS.
    updates_sent: AtomicU64,
}

impl EksProvider {
    pub fn new(client: aws_sdk_eks::Client, cluster: &str, nodegroup: &str) -> Self {
        Self {
            client,
            cluster: cluster.to_string(),
            nodegroup: nodegroup.to_string(),
            updates_sent: AtomicU64::new(0),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn nodegroup(&self) -> &str {
        &self.nodegroup
    }

    /// How many UpdateNodegroupConfig calls this provider has sent.
    pub fn updates_sent(&self) -> u64 {
        self.updates_sent.load(Ordering::Relaxed)
    }

    /// An approximation from DescribeNodegroup alone: current = the desired
    /// size the group reports, ready = the same when the group is ACTIVE,
    /// else 0. The group's instances and whether their nodes joined the
    /// cluster would take the Auto Scaling and Kubernetes APIs; ACTIVE means
    /// EKS has no update in flight and last found the group healthy.
    pub async fn observe(&self) -> Result<WorkerCount, ProviderError> {
        let group = self.describe().await?;
        let current = group
            .scaling_config()
            .and_then(|s| s.desired_size())
            .unwrap_or(0);
        let ready = if group.status() == Some(&NodegroupStatus::Active) {
            current
        } else {
            0
        };
        let config = group.scaling_config();
        let bounds = Some((
            config.and_then(|s| s.min_size()).unwrap_or(0),
            config.and_then(|s| s.max_size()).unwrap_or(0),
        ));
        Ok(WorkerCount {
            current,
            ready,
            bounds,
        })
    }

    /// Sets the desired size, moved into the group's [minSize, maxSize]
    /// (raising maxSize is the group owner's decision). No call when the
    /// size is already right: EKS refuses an update that changes nothing.
    pub async fn scale_to(&self, desired: i32) -> Result<(), ProviderError> {
        let group = self.describe().await?;
        let config = group.scaling_config();
        let min = config.and_then(|s| s.min_size()).unwrap_or(0);
        let max = config.and_then(|s| s.max_size()).unwrap_or(0);
        let (target, clamped) = clamp(desired, min, max);
        if clamped {
            tracing::warn!(
                cluster = %self.cluster, nodegroup = %self.nodegroup, desired, min, max, target,
                "desired workers outside the node group's bounds: clamped"
            );
        }
        let now = config.and_then(|s| s.desired_size());
        if now == Some(target) {
            return Ok(());
        }
        tracing::info!(cluster = %self.cluster, nodegroup = %self.nodegroup, from = ?now, to = target, "setting node group desired size");
        self.updates_sent.fetch_add(1, Ordering::Relaxed);
        self.client
            .update_nodegroup_config()
            .cluster_name(&self.cluster)
            .nodegroup_name(&self.nodegroup)
            // The desired size alone: sending min and max back as read could
            // undo a change the group's owner made meanwhile.
            .scaling_config(
                NodegroupScalingConfig::builder()
                    .desired_size(target)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "UpdateNodegroupConfig", self.resource(), e))?;
        Ok(())
    }

    /// Down to the group's minSize: the group itself stays, it is not the
    /// pool's to delete.
    pub async fn delete_all(&self) -> Result<(), ProviderError> {
        self.scale_to(0).await
    }

    async fn describe(&self) -> Result<Nodegroup, ProviderError> {
        let out = self
            .client
            .describe_nodegroup()
            .cluster_name(&self.cluster)
            .nodegroup_name(&self.nodegroup)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "DescribeNodegroup", self.resource(), e))?;
        out.nodegroup.ok_or_else(|| ProviderError::NotFound {
            what: "EKS node group",
            name: self.resource_name(),
            operation: "DescribeNodegroup",
        })
    }

    fn resource_name(&self) -> String {
        format!("{}/{}", self.cluster, self.nodegroup)
    }

    fn resource(&self) -> String {
        format!(
            "node group {} of EKS cluster {}",
            self.nodegroup, self.cluster
        )
    }
}
