//! Workers on EC2: the fleets a `WorkerPool` with `provider.type` other than
//! `Deployment` scales. The reconciler calls [`Ec2Provider::from_spec`], then
//! [`Ec2Provider::observe`] for the status and [`Ec2Provider::scale_to`] with
//! the count [`crate::scale`] decided; [`Ec2Provider::delete_all`] when the
//! pool goes.
//!
//! - [`InstancesProvider`] (`Instances`): instances the pool launches from a
//!   launch template and terminates itself, found again by their tag.
//! - [`AsgProvider`] (`AutoScalingGroup`): the desired capacity of an existing
//!   Auto Scaling group.
//! - [`EksProvider`] (`EksNodegroup`): the desired size of an existing EKS
//!   managed node group.
//!
//! The last two do not own their group: they move its desired count within
//! the group's own min and max, which stay the owner's business.

mod asg;
mod busy;
mod eks;
mod instances;

use std::error::Error as StdError;

use aws_config::SdkConfig;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use cloudkon_core::aws::{AwsError, ErrorKind};

pub use asg::AsgProvider;
pub use busy::BusyHosts;
pub use eks::EksProvider;
pub use instances::{InstancesProvider, POOL_TAG, USER_DATA_MAX_BYTES, worker_script};

use crate::crd::workerpool::{Provider, ProviderType};

/// Workers that exist (pending/booting included) and, of those, the ready ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkerCount {
    pub current: i32,
    pub ready: i32,
    /// The fleet's own min and max, where it has them (a group's).
    pub bounds: Option<(i32, i32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider.type {type_:?} needs provider.{field} in the WorkerPool spec")]
    MissingSpec {
        type_: ProviderType,
        field: &'static str,
    },
    #[error("worker environment variable {name:?} cannot be passed in EC2 user data: {reason}")]
    InvalidEnv { name: String, reason: &'static str },
    #[error(
        "the user data of WorkerPool {pool} is {size} bytes, over EC2's limit of {USER_DATA_MAX_BYTES}"
    )]
    UserDataTooLarge { pool: String, size: usize },
    #[error("{what} {name} not found ({operation} returned nothing)")]
    NotFound {
        what: &'static str,
        name: String,
        operation: &'static str,
    },
    #[error(
        "status.fleet {0:?} names no fleet this operator knows (Deployment, Instances, \
         AutoScalingGroup/<name> or EksNodegroup/<cluster>/<nodegroup>)"
    )]
    UnknownFleet(String),
    /// An AWS call failed: its service, operation, resource, code and message.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl ProviderError {
    /// Whether the same call may succeed later (throttling, timeouts, 5xx).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Aws(e) if e.is_retryable())
    }

    /// Whether it passes by itself within seconds: retryable
    /// ([`Self::is_retryable`]), but not EC2 short of capacity, which may
    /// last hours and is the pool's to say.
    pub fn is_temporary(&self) -> bool {
        self.is_retryable()
            && !matches!(self, ProviderError::Aws(e) if e.code.as_deref() == Some("InsufficientInstanceCapacity"))
    }

    /// Whether the group, node group or template does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        match self {
            ProviderError::NotFound { .. } => true,
            ProviderError::Aws(e) => e.kind == ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Which fleet a pool's workers run in, as `status.fleet` records it: two
/// specs that name the same one may differ in how it launches workers (a
/// launch template, an instance type), never in where the workers are.
pub fn fleet_identity(provider: Option<&Provider>) -> String {
    let Some(p) = provider else {
        return "Deployment".into();
    };
    match p.type_ {
        ProviderType::Deployment => "Deployment".into(),
        ProviderType::Instances => "Instances".into(),
        ProviderType::AutoScalingGroup => group_identity(
            p.auto_scaling_group
                .as_ref()
                .map_or("", |g| g.name.as_str()),
        ),
        ProviderType::EksNodegroup => p.eks_nodegroup.as_ref().map_or_else(
            || "EksNodegroup/".into(),
            |g| nodegroup_identity(&g.cluster, &g.nodegroup),
        ),
    }
}

fn group_identity(group: &str) -> String {
    format!("AutoScalingGroup/{group}")
}

fn nodegroup_identity(cluster: &str, nodegroup: &str) -> String {
    format!("EksNodegroup/{cluster}/{nodegroup}")
}

/// An EC2-backed worker fleet of one WorkerPool.
#[derive(Debug)]
pub enum Ec2Provider {
    Instances(InstancesProvider),
    AutoScalingGroup(AsgProvider),
    EksNodegroup(EksProvider),
}

impl Ec2Provider {
    /// None for `provider.type = Deployment` (or no provider); Err when the
    /// spec's block for the type is missing, or, for `Instances`, when
    /// `worker_env` cannot go into the user data (a name that is no shell
    /// variable, a NUL byte, more than 16 KiB in all). Makes no AWS call.
    pub fn from_spec(
        provider: Option<&Provider>,
        pool_namespace: &str,
        pool_name: &str,
        queue_url: &str,
        worker_env: &[(String, String)],
        sdk: &SdkConfig,
    ) -> Result<Option<Ec2Provider>, ProviderError> {
        let Some(provider) = provider else {
            return Ok(None);
        };
        let missing = |field| ProviderError::MissingSpec {
            type_: provider.type_,
            field,
        };
        Ok(Some(match provider.type_ {
            ProviderType::Deployment => return Ok(None),
            ProviderType::Instances => {
                let spec = provider.instances.as_ref().ok_or(missing("instances"))?;
                Ec2Provider::Instances(InstancesProvider::new(
                    aws_sdk_ec2::Client::new(sdk),
                    spec,
                    pool_namespace,
                    pool_name,
                    queue_url,
                    worker_env,
                )?)
            }
            ProviderType::AutoScalingGroup => {
                let spec = provider
                    .auto_scaling_group
                    .as_ref()
                    .ok_or(missing("autoScalingGroup"))?;
                Ec2Provider::AutoScalingGroup(AsgProvider::new(
                    aws_sdk_autoscaling::Client::new(sdk),
                    aws_sdk_ec2::Client::new(sdk),
                    &spec.name,
                ))
            }
            ProviderType::EksNodegroup => {
                let spec = provider
                    .eks_nodegroup
                    .as_ref()
                    .ok_or(missing("eksNodegroup"))?;
                Ec2Provider::EksNodegroup(EksProvider::new(
                    aws_sdk_eks::Client::new(sdk),
                    &spec.cluster,
                    &spec.nodegroup,
                ))
            }
        }))
    }

    /// The fleet `identity` ([`fleet_identity`]) names, made from that alone:
    /// a deleted pool's workers are released where its status says it ran
    /// them, whatever its spec says now. None for a Deployment. An
    /// `Instances` fleet made so finds the pool's instances by their tag,
    /// and terminates them, but has no launch template to launch more.
    /// Makes no AWS call.
    pub fn from_identity(
        identity: &str,
        pool_namespace: &str,
        pool_name: &str,
        sdk: &SdkConfig,
    ) -> Result<Option<Ec2Provider>, ProviderError> {
        let unknown = || ProviderError::UnknownFleet(identity.to_string());
        Ok(Some(match identity.split_once('/') {
            None if identity == "Deployment" => return Ok(None),
            None if identity == "Instances" => {
                Ec2Provider::Instances(InstancesProvider::to_release(
                    aws_sdk_ec2::Client::new(sdk),
                    pool_namespace,
                    pool_name,
                ))
            }
            // A group's name may hold a '/'; a cluster's or node group's not.
            Some(("AutoScalingGroup", group)) if !group.is_empty() => {
                Ec2Provider::AutoScalingGroup(AsgProvider::new(
                    aws_sdk_autoscaling::Client::new(sdk),
                    aws_sdk_ec2::Client::new(sdk),
                    group,
                ))
            }
            Some(("EksNodegroup", names)) => match names.split_once('/') {
                Some((cluster, nodegroup)) if !cluster.is_empty() && !nodegroup.is_empty() => {
                    Ec2Provider::EksNodegroup(EksProvider::new(
                        aws_sdk_eks::Client::new(sdk),
                        cluster,
                        nodegroup,
                    ))
                }
                _ => return Err(unknown()),
            },
            _ => return Err(unknown()),
        }))
    }

    /// Which fleet this is, as [`fleet_identity`] names it.
    pub fn identity(&self) -> String {
        match self {
            Ec2Provider::Instances(_) => "Instances".into(),
            Ec2Provider::AutoScalingGroup(p) => group_identity(p.group()),
            Ec2Provider::EksNodegroup(p) => nodegroup_identity(p.cluster(), p.nodegroup()),
        }
    }

    pub async fn observe(&self) -> Result<WorkerCount, ProviderError> {
        match self {
            Ec2Provider::Instances(p) => p.observe().await,
            Ec2Provider::AutoScalingGroup(p) => p.observe().await,
            Ec2Provider::EksNodegroup(p) => p.observe().await,
        }
    }

    /// Make the fleet `desired` workers. Idempotent.
    pub async fn scale_to(&self, desired: i32) -> Result<(), ProviderError> {
        self.scale_sparing(desired, &BusyHosts::default()).await
    }

    /// Make the fleet `desired` workers, removing the machines `busy` says
    /// run no task first (a node group's are EKS's choice).
    pub async fn scale_sparing(&self, desired: i32, busy: &BusyHosts) -> Result<(), ProviderError> {
        match self {
            Ec2Provider::Instances(p) => p.scale_to(desired, busy).await,
            Ec2Provider::AutoScalingGroup(p) => p.scale_to(desired, busy).await,
            Ec2Provider::EksNodegroup(p) => p.scale_to(desired).await,
        }
    }

    /// How many of the fleet's machines run tasks, per `busy`; `None` where
    /// the pool cannot choose which go (a node group).
    pub async fn busy(&self, busy: &BusyHosts) -> Result<Option<i32>, ProviderError> {
        match self {
            Ec2Provider::Instances(p) => p.busy(busy).await.map(Some),
            Ec2Provider::AutoScalingGroup(p) => p.busy(busy).await.map(Some),
            Ec2Provider::EksNodegroup(_) => Ok(None),
        }
    }

    /// Remove every worker (pool deleted). For a group the pool does not own
    /// (Auto Scaling group, node group), that is the group's minimum.
    pub async fn delete_all(&self) -> Result<(), ProviderError> {
        match self {
            Ec2Provider::Instances(p) => p.delete_all().await,
            Ec2Provider::AutoScalingGroup(p) => p.delete_all().await,
            Ec2Provider::EksNodegroup(p) => p.delete_all().await,
        }
    }
}

/// `desired` moved into `[min, max]`, and whether it had to move.
pub(crate) fn clamp(desired: i32, min: i32, max: i32) -> (i32, bool) {
    // max < min only in a malformed group: min wins, as the service would.
    let clamped = desired.min(max).max(min);
    (clamped, clamped != desired)
}

/// The AWS error of one call, in cloudkon-core's shape and rendering
/// ([`AwsError::sdk`]), so the reconciler treats it like a queue's or table's;
/// only the classification is EC2's own (its per-resource "not found" codes,
/// and a 5xx without a code counts as transient).
pub(crate) fn aws_error<E>(
    service: &'static str,
    operation: &'static str,
    resource: impl Into<String>,
    err: SdkError<E, HttpResponse>,
) -> ProviderError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let code = err.code().map(str::to_string);
    let server_error = err
        .raw_response()
        .is_some_and(|r| r.status().is_server_error());
    let kind = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorKind::Transient
        }
        // A 5xx whose body says nothing (no code) is the server's trouble.
        SdkError::ServiceError(_) if code.is_none() && server_error => ErrorKind::Transient,
        SdkError::ServiceError(_) => classify(code.as_deref()),
        _ => ErrorKind::Permanent,
    };
    let mut error = AwsError::sdk(service, operation, resource, err);
    error.kind = kind;
    ProviderError::Aws(error)
}

fn classify(code: Option<&str>) -> ErrorKind {
    let code = code.unwrap_or("");
    // EC2 spells "not found" per resource (InvalidLaunchTemplateName.NotFoundException,
    // InvalidInstanceID.NotFound...).
    if code.contains("NotFound") || code == "ResourceNotFoundException" {
        return ErrorKind::NotFound;
    }
    match code {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "InsufficientInstanceCapacity"
        | "InternalError"
        | "InternalFailure"
        | "ServerException"
        | "ServiceUnavailable"
        | "Unavailable"
        // EKS: another update of the node group is in progress.
        | "ResourceInUseException"
        // Auto Scaling: a scaling activity is in progress.
        | "ScalingActivityInProgress" => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::workerpool::{AutoScalingGroup, Ec2Instances, EksNodegroup};

    fn sdk() -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build()
    }

    fn provider(type_: ProviderType) -> Provider {
        Provider {
            type_,
            instances: None,
            auto_scaling_group: None,
            eks_nodegroup: None,
        }
    }

    fn from_spec(p: Option<&Provider>) -> Result<Option<Ec2Provider>, ProviderError> {
        Ec2Provider::from_spec(p, "ns", "pool", "http://q", &[], &sdk())
    }

    #[test]
    fn a_fleet_is_told_apart_by_where_its_workers_are() {
        let mut asg = provider(ProviderType::AutoScalingGroup);
        asg.auto_scaling_group = Some(AutoScalingGroup { name: "g".into() });
        let mut eks = provider(ProviderType::EksNodegroup);
        eks.eks_nodegroup = Some(EksNodegroup {
            cluster: "c".into(),
            nodegroup: "n".into(),
        });
        let ids = [
            fleet_identity(None),
            fleet_identity(Some(&provider(ProviderType::Deployment))),
            fleet_identity(Some(&provider(ProviderType::Instances))),
            fleet_identity(Some(&asg)),
            fleet_identity(Some(&eks)),
        ];
        assert_eq!(
            ids,
            [
                "Deployment",
                "Deployment",
                "Instances",
                "AutoScalingGroup/g",
                "EksNodegroup/c/n"
            ]
        );
    }

    #[test]
    fn a_fleet_is_made_again_from_its_identity_alone() {
        let made = |id: &str| Ec2Provider::from_identity(id, "ns", "pool", &sdk());
        assert!(made("Deployment").unwrap().is_none());
        for id in [
            "Instances",
            "AutoScalingGroup/g",
            "AutoScalingGroup/a/b",
            "EksNodegroup/c/n",
        ] {
            assert_eq!(made(id).unwrap().unwrap().identity(), id);
        }
        for id in [
            "",
            "Instances/x",
            "AutoScalingGroup/",
            "EksNodegroup/",
            "EksNodegroup/c",
            "EksNodegroup/c/",
            "Pods",
        ] {
            assert!(
                matches!(made(id), Err(ProviderError::UnknownFleet(ref f)) if f == id),
                "{id:?}"
            );
        }
        // The identity a spec gives makes the same fleet.
        let mut asg = provider(ProviderType::AutoScalingGroup);
        asg.auto_scaling_group = Some(AutoScalingGroup { name: "g".into() });
        let from = from_spec(Some(&asg)).unwrap().unwrap();
        assert_eq!(from.identity(), fleet_identity(Some(&asg)));
    }

    #[test]
    fn deployments_and_no_provider_are_not_ec2() {
        assert!(from_spec(None).unwrap().is_none());
        assert!(
            from_spec(Some(&provider(ProviderType::Deployment)))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn each_type_needs_its_block() {
        for (type_, field) in [
            (ProviderType::Instances, "instances"),
            (ProviderType::AutoScalingGroup, "autoScalingGroup"),
            (ProviderType::EksNodegroup, "eksNodegroup"),
        ] {
            let err = from_spec(Some(&provider(type_))).unwrap_err();
            assert!(
                matches!(err, ProviderError::MissingSpec { field: f, .. } if f == field),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("provider.{field}")));
        }
    }

    #[test]
    fn each_type_builds_its_provider() {
        let mut p = provider(ProviderType::Instances);
        p.instances = Some(Ec2Instances {
            launch_template: "lt".into(),
            instance_type: None,
            subnet_ids: vec![],
        });
        p.auto_scaling_group = Some(AutoScalingGroup { name: "g".into() });
        p.eks_nodegroup = Some(EksNodegroup {
            cluster: "c".into(),
            nodegroup: "n".into(),
        });
        assert!(matches!(
            from_spec(Some(&p)).unwrap(),
            Some(Ec2Provider::Instances(_))
        ));
        p.type_ = ProviderType::AutoScalingGroup;
        assert!(matches!(
            from_spec(Some(&p)).unwrap(),
            Some(Ec2Provider::AutoScalingGroup(_))
        ));
        p.type_ = ProviderType::EksNodegroup;
        assert!(matches!(
            from_spec(Some(&p)).unwrap(),
            Some(Ec2Provider::EksNodegroup(_))
        ));
    }

    #[test]
    fn user_data_over_16_kib_is_refused() {
        let mut p = provider(ProviderType::Instances);
        p.instances = Some(Ec2Instances {
            launch_template: "lt".into(),
            instance_type: None,
            subnet_ids: vec![],
        });
        let env = [("BIG".to_string(), "x".repeat(USER_DATA_MAX_BYTES))];
        let err = Ec2Provider::from_spec(Some(&p), "ns", "pool", "q", &env, &sdk()).unwrap_err();
        assert!(
            matches!(&err, ProviderError::UserDataTooLarge { pool, .. } if pool == "ns/pool"),
            "{err}"
        );
    }

    #[test]
    fn clamp_keeps_the_groups_bounds() {
        assert_eq!(clamp(3, 0, 5), (3, false));
        assert_eq!(clamp(9, 0, 5), (5, true));
        assert_eq!(clamp(0, 1, 5), (1, true));
        assert_eq!(clamp(5, 0, 5), (5, false));
    }

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(
            classify(Some("InvalidLaunchTemplateName.NotFoundException")),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(Some("ResourceNotFoundException")),
            ErrorKind::NotFound
        );
        assert_eq!(classify(Some("RequestLimitExceeded")), ErrorKind::Transient);
        assert_eq!(
            classify(Some("UnauthorizedOperation")),
            ErrorKind::Permanent
        );
        assert_eq!(classify(None), ErrorKind::Permanent);
    }
}
