//! The EC2 worker providers against moto (EC2, Auto Scaling and EKS on
//! loopback, started by `scripts/aws-servers`).
//!
//! Run with:
//!
//! ```sh
//! source "$(scripts/aws-servers up)"
//! cargo test -p cloudkon-operator --test ec2 -- --include-ignored
//! ```
//!
//! moto's state is shared by every test of the run (and any run against the
//! same servers): each test makes its own launch template, group or cluster
//! under a unique name, and finds its instances by its pool's own tag.
//!
//! Where moto differs from AWS (found in moto 5.2.5's source): RunInstances
//! stores the ClientToken but never answers a repeated one with the first
//! launch (so the token's dedup cannot be tested here, only that scale_to
//! itself launches once); it launches MinCount instances whatever MaxCount
//! says (one a call, since a launch asks for at least one, as EC2 short of
//! capacity may); instances are `running` at once and `terminated` at
//! once; an EKS node group is ACTIVE at once and UpdateNodegroupConfig
//! accepts a no-op update, which real EKS refuses.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_ec2::types::{
    Filter, InstanceAttributeName, InstanceStateName, RequestLaunchTemplateData, ResourceType, Tag,
    TagSpecification,
};
use aws_sdk_eks::types::{NodegroupScalingConfig, VpcConfigRequest};
use base64::Engine;
use cloudkon_core::aws::{Aws, WorkerHeartbeat};
use cloudkon_operator::crd::workerpool::{
    AutoScalingGroup, Ec2Instances, EksNodegroup, Provider, ProviderType,
};
use cloudkon_operator::provider::{
    BusyHosts, Ec2Provider, POOL_TAG, ProviderError, WorkerCount, worker_script,
};
use cloudkon_testkit::unique;

/// One of the images moto knows without being told.
const AMI: &str = "ami-03cf127a";
const QUEUE: &str = "http://127.0.0.1:9/000000000000/work";

/// The SDK configuration, pointed at moto; refuses to run against anything
/// but loopback, so that a test never launches real instances.
async fn sdk() -> SdkConfig {
    for var in [
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_AUTO_SCALING",
        "AWS_ENDPOINT_URL_EKS",
    ] {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: run these tests with scripts/test, or after \
                 `source \"$(scripts/aws-servers up)\"`"
            )
        });
        assert!(
            url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:"),
            "{var}={url} is not a local test server: refusing to run against it"
        );
    }
    Aws::load().await.sdk_config().clone()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn create_launch_template(sdk: &SdkConfig, name: &str) -> String {
    aws_sdk_ec2::Client::new(sdk)
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(AMI)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .unwrap()
        .to_string()
}

fn instances_spec(launch_template: &str, subnet_ids: Vec<String>) -> Provider {
    Provider {
        type_: ProviderType::Instances,
        instances: Some(Ec2Instances {
            launch_template: launch_template.to_string(),
            instance_type: Some("t3.small".into()),
            subnet_ids,
        }),
        auto_scaling_group: None,
        eks_nodegroup: None,
    }
}

fn provider(
    spec: &Provider,
    pool: &str,
    worker_env: &[(String, String)],
    sdk: &SdkConfig,
) -> Ec2Provider {
    Ec2Provider::from_spec(Some(spec), "tests", pool, QUEUE, worker_env, sdk)
        .unwrap()
        .expect("an EC2 provider")
}

/// A pool's instances as EC2 lists them, in every state.
async fn pool_instances(sdk: &SdkConfig, pool: &str) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = aws_sdk_ec2::Client::new(sdk)
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{POOL_TAG}"))
                .values(format!("tests/{pool}"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(out.next_token().is_none(), "more than one page");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .collect()
}

fn state(i: &aws_sdk_ec2::types::Instance) -> InstanceStateName {
    i.state().and_then(|s| s.name()).unwrap().clone()
}

fn ids_in(instances: &[aws_sdk_ec2::types::Instance], s: InstanceStateName) -> Vec<String> {
    let mut ids: Vec<String> = instances
        .iter()
        .filter(|i| state(i) == s)
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn tag<'a>(i: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

async fn attribute(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    name: InstanceAttributeName,
) -> aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput {
    ec2.describe_instance_attribute()
        .instance_id(id)
        .attribute(name)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_launch_tagged_workers_that_start_on_the_queue() {
    let sdk = sdk().await;
    // A name, though it starts like an id.
    let lt = unique("lt-up");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("up");
    let worker_env = env(&[("CLOUDKON_THREADS", "4"), ("GREETING", "it's $HOME")]);
    let p = provider(&instances_spec(&lt, vec![]), &pool, &worker_env, &sdk);

    assert_eq!(p.observe().await.unwrap(), WorkerCount::default());
    p.scale_to(3).await.unwrap();

    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(fleet.len(), 3);
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    for i in &fleet {
        assert_eq!(tag(i, POOL_TAG), Some(format!("tests/{pool}").as_str()));
        assert_eq!(
            tag(i, "Name"),
            Some(format!("cloudkon-worker-{pool}").as_str())
        );
        // The override wins over the template's t3.micro.
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t3.small"));
        let id = i.instance_id().unwrap();
        let attr = attribute(&ec2, id, InstanceAttributeName::UserData).await;
        let encoded = attr.user_data().and_then(|u| u.value()).unwrap();
        let script = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap();
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains(&format!("export CLOUDKON_QUEUE='{QUEUE}'\n")));
        assert!(script.contains("export CLOUDKON_THREADS='4'\n"));
        assert!(script.contains(r"export GREETING='it'\''s $HOME'"));
        assert!(script.contains("\nsetpriv --reuid=cloudkon-worker "));
        assert!(script.ends_with("\nexec shutdown -h now\n"));
        assert_eq!(script, worker_script(QUEUE, &worker_env).unwrap());
        // That shutdown terminates the instance.
        let behavior = attribute(
            &ec2,
            id,
            InstanceAttributeName::InstanceInitiatedShutdownBehavior,
        )
        .await;
        assert_eq!(
            behavior
                .instance_initiated_shutdown_behavior()
                .and_then(|b| b.value()),
            Some("terminate")
        );
    }
    assert_eq!(
        p.observe().await.unwrap(),
        WorkerCount {
            current: 3,
            ready: 3,
            bounds: None,
        }
    );
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_scale_down_terminates_the_newest() {
    let sdk = sdk().await;
    let lt = unique("tmpl-down");
    // By id this time.
    let lt_id = create_launch_template(&sdk, &lt).await;
    assert!(lt_id.starts_with("lt-"));
    let pool = unique("down");
    let p = provider(&instances_spec(&lt_id, vec![]), &pool, &[], &sdk);

    p.scale_to(1).await.unwrap();
    let first = ids_in(
        &pool_instances(&sdk, &pool).await,
        InstanceStateName::Running,
    );
    assert_eq!(first.len(), 1);
    // Launch times are whole seconds: make the next two strictly newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    p.scale_to(3).await.unwrap();
    let all = ids_in(
        &pool_instances(&sdk, &pool).await,
        InstanceStateName::Running,
    );
    assert_eq!(all.len(), 3);
    let newest: Vec<String> = all.into_iter().filter(|id| *id != first[0]).collect();

    p.scale_to(1).await.unwrap();
    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(ids_in(&fleet, InstanceStateName::Running), first);
    let mut gone = fleet
        .iter()
        .filter(|i| state(i) != InstanceStateName::Running)
        .map(|i| i.instance_id().unwrap().to_string())
        .collect::<Vec<_>>();
    gone.sort();
    assert_eq!(gone, newest);
    // Terminated (or shutting down) instances are not workers.
    assert_eq!(
        p.observe().await.unwrap(),
        WorkerCount {
            current: 1,
            ready: 1,
            bounds: None,
        }
    );
    // Scaling to what there is changes nothing.
    p.scale_to(1).await.unwrap();
    assert_eq!(pool_instances(&sdk, &pool).await.len(), 3);

    p.delete_all().await.unwrap();
    assert_eq!(p.observe().await.unwrap(), WorkerCount::default());
    assert!(pool_instances(&sdk, &pool).await.iter().all(|i| matches!(
        state(i),
        InstanceStateName::Terminated | InstanceStateName::ShuttingDown
    )));
}

/// What the workers on `hosts` say in their heartbeat rows now: each runs
/// a task.
fn busy_on(hosts: &[&str]) -> BusyHosts {
    let now = cloudkon_core::Timestamp::now();
    let rows: Vec<WorkerHeartbeat> = hosts
        .iter()
        .map(|host| WorkerHeartbeat {
            id: format!("{host}-4242"),
            host: host.to_string(),
            slots: 4,
            busy: 1,
            tasks_done: 0,
            started_at: now,
            last_seen: now,
        })
        .collect();
    BusyHosts::from_rows(&rows, now, Duration::from_secs(60))
}

/// The host name of instance `id` (its private DNS name's first label), as
/// its worker's heartbeat row would say it.
async fn host_of(sdk: &SdkConfig, id: &str) -> String {
    let out = aws_sdk_ec2::Client::new(sdk)
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    let dns = out.reservations()[0].instances()[0]
        .private_dns_name()
        .expect("a private DNS name")
        .to_string();
    assert!(!dns.is_empty(), "instance {id} has no private DNS name");
    dns.split('.').next().unwrap().to_string()
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_scale_down_spares_the_workers_running_tasks() {
    let sdk = sdk().await;
    let lt = unique("tmpl-spare");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("spare");
    let p = provider(&instances_spec(&lt, vec![]), &pool, &[], &sdk);
    // Three launch times a second apart: newest first would remove the
    // last two.
    for n in 1..=3 {
        if n > 1 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        p.scale_to(n).await.unwrap();
    }
    let fleet = pool_instances(&sdk, &pool).await;
    let mut by_age: Vec<_> = fleet
        .iter()
        .map(|i| {
            (
                *i.launch_time().unwrap(),
                i.instance_id().unwrap().to_string(),
            )
        })
        .collect();
    by_age.sort();
    let newest = by_age[2].1.clone();
    let busy = busy_on(&[&host_of(&sdk, &newest).await]);
    assert_eq!(p.busy(&busy).await.unwrap(), Some(1));
    assert_eq!(p.busy(&BusyHosts::default()).await.unwrap(), Some(0));

    p.scale_sparing(1, &busy).await.unwrap();
    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(
        ids_in(&fleet, InstanceStateName::Running),
        vec![newest.clone()],
        "the busy worker stays, though the newest"
    );
    // Busy ones go last, but go when there is no other.
    let busy = busy_on(&[&host_of(&sdk, &newest).await, "ip-192-0-2-1"]);
    p.scale_sparing(0, &busy).await.unwrap();
    assert_eq!(p.observe().await.unwrap().current, 0);
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_scale_to_twice_launches_once() {
    let sdk = sdk().await;
    let lt = unique("tmpl-twice");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("twice");
    let p = provider(&instances_spec(&lt, vec![]), &pool, &[], &sdk);
    p.scale_to(3).await.unwrap();
    p.scale_to(3).await.unwrap();
    assert_eq!(pool_instances(&sdk, &pool).await.len(), 3);
    assert_eq!(p.observe().await.unwrap().current, 3);
}

/// A new VPC `10.{octet}.0.0/16` with a subnet in each of two zones: their ids.
async fn two_subnets(sdk: &SdkConfig, octet: u8) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let vpc = ec2
        .create_vpc()
        .cidr_block(format!("10.{octet}.0.0/16"))
        .send()
        .await
        .unwrap()
        .vpc()
        .and_then(|v| v.vpc_id())
        .unwrap()
        .to_string();
    let mut subnets = vec![];
    for (third, zone) in [(1, "us-east-1a"), (2, "us-east-1b")] {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.{octet}.{third}.0/24"))
            .availability_zone(zone)
            .send()
            .await
            .unwrap();
        subnets.push(
            subnet
                .subnet()
                .and_then(|s| s.subnet_id())
                .unwrap()
                .to_string(),
        );
    }
    subnets
}

/// `sdk` whose EC2 requests go through a proxy in front of moto that
/// refuses the RunInstances calls `refuse` picks (given their body), as EC2
/// short of capacity would: the proxy, and the configuration.
async fn refusing_launches(
    sdk: &SdkConfig,
    refuse: impl Fn(&cloudkon_testkit::Request) -> bool + Send + Sync + 'static,
) -> (cloudkon_testkit::RefusingProxy, SdkConfig) {
    let ec2 = std::env::var("AWS_ENDPOINT_URL_EC2").unwrap();
    let proxy = cloudkon_testkit::RefusingProxy::start(&ec2, move |r| {
        r.body_contains("Action=RunInstances") && refuse(r)
    });
    // A programmatic endpoint wins over AWS_ENDPOINT_URL_EC2.
    let proxied = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(sdk.http_client().unwrap())
        .endpoint_url(proxy.url())
        .load()
        .await;
    (proxy, proxied)
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_keep_what_ec2_launched_before_a_call_failed() {
    // EC2 short of capacity launches fewer than MaxCount; moto launches
    // MinCount, so here each call launches one. The third call is refused:
    // the two launched stay, the error is said, and the next scale_to
    // launches the rest. (With MinCount = MaxCount = 4, one call launched
    // all four, and EC2 short of one launched none.)
    let sdk = sdk().await;
    let lt = unique("lt-short");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("short");
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = calls.clone();
    let (proxy, proxied) = refusing_launches(&sdk, move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    let p = provider(&instances_spec(&lt, vec![]), &pool, &[], &proxied);

    let err = p.scale_to(4).await.unwrap_err();
    assert!(err.to_string().contains("RunInstances"), "{err}");
    assert_eq!(proxy.refused(), 1);
    let running =
        |fleet: &[aws_sdk_ec2::types::Instance]| ids_in(fleet, InstanceStateName::Running).len();
    assert_eq!(running(&pool_instances(&sdk, &pool).await), 2);
    p.scale_to(4).await.unwrap();
    assert_eq!(running(&pool_instances(&sdk, &pool).await), 4);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_in_one_subnet_short_of_capacity_do_not_hold_back_the_other() {
    let sdk = sdk().await;
    let subnets = two_subnets(&sdk, 78).await;
    let lt = unique("lt-zone");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("zone");
    let short = subnets[0].clone();
    let (proxy, proxied) = refusing_launches(&sdk, move |r| r.body_contains(&short)).await;
    let p = provider(&instances_spec(&lt, subnets.clone()), &pool, &[], &proxied);
    let running_in = |fleet: &[aws_sdk_ec2::types::Instance]| -> Vec<String> {
        fleet
            .iter()
            .filter(|i| state(i) == InstanceStateName::Running)
            .map(|i| i.subnet_id().unwrap_or_default().to_string())
            .collect()
    };

    // The first subnet's share goes to the second, in the same scale_to:
    // the pool has its four, and no error.
    p.scale_to(4).await.unwrap();
    assert!(proxy.refused() >= 1);
    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(running_in(&fleet), [subnets[1].as_str(); 4]);
    // And so on as it grows (the first subnet, the emptiest, is asked first).
    let refused = proxy.refused();
    p.scale_to(6).await.unwrap();
    assert!(proxy.refused() > refused);
    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(running_in(&fleet), [subnets[1].as_str(); 6]);
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_with_every_subnet_refusing_say_why() {
    let sdk = sdk().await;
    let subnets = two_subnets(&sdk, 79).await;
    let lt = unique("lt-zones");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("zones");
    let (proxy, proxied) = refusing_launches(&sdk, |_| true).await;
    let p = provider(&instances_spec(&lt, subnets.clone()), &pool, &[], &proxied);

    let err = p.scale_to(4).await.unwrap_err();
    assert!(err.to_string().contains("RunInstances"), "{err}");
    // Each subnet asked once: a refusing one is not asked again.
    assert_eq!(proxy.refused(), 2);
    assert!(pool_instances(&sdk, &pool).await.is_empty());
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_spread_over_the_subnets() {
    let sdk = sdk().await;
    let subnets = two_subnets(&sdk, 77).await;
    let lt = unique("tmpl-subnets");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("subnets");
    let p = provider(&instances_spec(&lt, subnets.clone()), &pool, &[], &sdk);

    p.scale_to(3).await.unwrap();
    let in_subnet = |fleet: &[aws_sdk_ec2::types::Instance], s: &str| {
        fleet
            .iter()
            .filter(|i| state(i) == InstanceStateName::Running && i.subnet_id() == Some(s))
            .count()
    };
    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(in_subnet(&fleet, &subnets[0]), 2);
    assert_eq!(in_subnet(&fleet, &subnets[1]), 1);
    // The next one goes where there are fewest.
    p.scale_to(4).await.unwrap();
    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(in_subnet(&fleet, &subnets[0]), 2);
    assert_eq!(in_subnet(&fleet, &subnets[1]), 2);
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_observe_reads_every_page() {
    let sdk = sdk().await;
    let lt = unique("tmpl-pages");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("pages");
    let Ec2Provider::Instances(p) = provider(&instances_spec(&lt, vec![]), &pool, &[], &sdk) else {
        unreachable!()
    };
    // One launch per call: 7 reservations, two pages of 5 (moto pages by
    // reservation, as EC2 does).
    let p = p.with_page_size(5);
    for n in 1..=7 {
        p.scale_to(n, &BusyHosts::default()).await.unwrap();
    }
    assert_eq!(
        p.observe().await.unwrap(),
        WorkerCount {
            current: 7,
            ready: 7,
            bounds: None,
        }
    );
    // The listing scale_to reads is paged too: nothing more to launch.
    p.scale_to(7, &BusyHosts::default()).await.unwrap();
    assert_eq!(pool_instances(&sdk, &pool).await.len(), 7);
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_missing_launch_template_is_a_clear_error() {
    let sdk = sdk().await;
    let lt = unique("tmpl-missing");
    let pool = unique("missing");
    let p = provider(&instances_spec(&lt, vec![]), &pool, &[], &sdk);
    let err = p.scale_to(1).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ProviderError::Aws(_)), "{err:?}");
    assert!(text.contains("RunInstances"), "{text}");
    assert!(text.contains(&lt), "{text}");
    assert!(text.contains(&format!("tests/{pool}")), "{text}");
    assert!(text.contains("NotFound"), "{text}");
    assert!(!err.is_retryable());
    assert!(pool_instances(&sdk, &pool).await.is_empty());
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn a_fleet_made_from_its_identity_releases_the_pools_workers_alone() {
    // A pool deleted after its spec moved (refused) to another pool's group:
    // the fleet its status records is released, made from that alone.
    let sdk = sdk().await;
    let lt = unique("lt-release");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("release");
    provider(&instances_spec(&lt, vec![]), &pool, &[], &sdk)
        .scale_to(3)
        .await
        .unwrap();
    let theirs = unique("asg-theirs");
    create_asg(&sdk, &theirs).await;
    provider(&asg_spec(&theirs), &unique("their-pool"), &[], &sdk)
        .scale_to(2)
        .await
        .unwrap();

    let released = Ec2Provider::from_identity("Instances", "tests", &pool, &sdk)
        .unwrap()
        .expect("an EC2 fleet");
    assert_eq!(released.observe().await.unwrap().current, 3);
    released.delete_all().await.unwrap();
    let fleet = pool_instances(&sdk, &pool).await;
    assert_eq!(fleet.len(), 3);
    assert!(fleet.iter().all(|i| matches!(
        state(i),
        InstanceStateName::Terminated | InstanceStateName::ShuttingDown
    )));
    assert_eq!(asg_desired(&sdk, &theirs).await, 2);

    // A group, the same way.
    let mine = unique("asg-mine");
    create_asg(&sdk, &mine).await;
    provider(&asg_spec(&mine), &pool, &[], &sdk)
        .scale_to(3)
        .await
        .unwrap();
    Ec2Provider::from_identity(&format!("AutoScalingGroup/{mine}"), "tests", &pool, &sdk)
        .unwrap()
        .expect("an EC2 fleet")
        .delete_all()
        .await
        .unwrap();
    assert_eq!(asg_desired(&sdk, &mine).await, 0);
    assert_eq!(asg_desired(&sdk, &theirs).await, 2);
}

async fn create_asg(sdk: &SdkConfig, name: &str) {
    let lt = format!("{name}-lt");
    create_launch_template(sdk, &lt).await;
    aws_sdk_autoscaling::Client::new(sdk)
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_name(&lt)
                .build(),
        )
        .min_size(0)
        .max_size(5)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
}

fn asg_spec(name: &str) -> Provider {
    Provider {
        type_: ProviderType::AutoScalingGroup,
        instances: None,
        auto_scaling_group: Some(AutoScalingGroup { name: name.into() }),
        eks_nodegroup: None,
    }
}

/// The group as Auto Scaling describes it.
async fn asg_group(sdk: &SdkConfig, name: &str) -> aws_sdk_autoscaling::types::AutoScalingGroup {
    aws_sdk_autoscaling::Client::new(sdk)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .clone()
}

async fn asg_desired(sdk: &SdkConfig, name: &str) -> i32 {
    asg_group(sdk, name).await.desired_capacity().unwrap()
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn asg_scales_within_the_groups_bounds() {
    let sdk = sdk().await;
    let group = unique("asg");
    create_asg(&sdk, &group).await;
    let p = provider(&asg_spec(&group), &unique("asg-pool"), &[], &sdk);

    assert_eq!(
        p.observe().await.unwrap(),
        WorkerCount {
            bounds: Some((0, 5)),
            ..WorkerCount::default()
        }
    );
    p.scale_to(4).await.unwrap();
    assert_eq!(asg_desired(&sdk, &group).await, 4);
    assert_eq!(
        p.observe().await.unwrap(),
        WorkerCount {
            current: 4,
            ready: 4,
            bounds: Some((0, 5)),
        }
    );
    // Over MaxSize: clamped to it.
    p.scale_to(9).await.unwrap();
    assert_eq!(asg_desired(&sdk, &group).await, 5);
    assert_eq!(p.observe().await.unwrap().current, 5);
    p.scale_to(2).await.unwrap();
    assert_eq!(asg_desired(&sdk, &group).await, 2);
    assert_eq!(p.observe().await.unwrap().current, 2);
    // Down to MinSize (0); the group stays.
    p.delete_all().await.unwrap();
    assert_eq!(asg_desired(&sdk, &group).await, 0);
    assert_eq!(p.observe().await.unwrap().current, 0);
}

/// The ids of the group's instances that are not leaving it.
async fn asg_members(sdk: &SdkConfig, name: &str) -> Vec<String> {
    let mut ids: Vec<String> = asg_group(sdk, name)
        .await
        .instances()
        .iter()
        .filter(|i| {
            i.lifecycle_state() == Some(&aws_sdk_autoscaling::types::LifecycleState::InService)
        })
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn asg_scale_down_terminates_idle_instances_by_name() {
    let sdk = sdk().await;
    let group = unique("asg-spare");
    create_asg(&sdk, &group).await;
    let p = provider(&asg_spec(&group), &unique("asg-spare-pool"), &[], &sdk);
    p.scale_to(4).await.unwrap();
    let members = asg_members(&sdk, &group).await;
    assert_eq!(members.len(), 4, "{members:?}");
    // Two of the four run tasks.
    let kept = vec![members[1].clone(), members[3].clone()];
    let hosts = [host_of(&sdk, &kept[0]).await, host_of(&sdk, &kept[1]).await];
    let busy = busy_on(&[&hosts[0], &hosts[1]]);
    assert_eq!(p.busy(&busy).await.unwrap(), Some(2));

    p.scale_sparing(2, &busy).await.unwrap();
    assert_eq!(asg_desired(&sdk, &group).await, 2);
    assert_eq!(asg_members(&sdk, &group).await, kept, "the idle ones went");
    // No worker busy: the group's own policy picks, by its desired capacity.
    p.scale_sparing(1, &BusyHosts::default()).await.unwrap();
    assert_eq!(asg_desired(&sdk, &group).await, 1);
    p.delete_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn asg_missing_group_is_an_error_naming_it() {
    let sdk = sdk().await;
    let group = unique("asg-missing");
    let p = provider(&asg_spec(&group), &unique("asg-pool"), &[], &sdk);
    for err in [
        p.observe().await.unwrap_err(),
        p.scale_to(1).await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, ProviderError::NotFound { name, .. } if *name == group),
            "{err:?}"
        );
        assert!(err.to_string().contains(&group), "{err}");
    }
}

async fn create_nodegroup(sdk: &SdkConfig, cluster: &str, nodegroup: &str) {
    let eks = aws_sdk_eks::Client::new(sdk);
    let role = "arn:aws:iam::123456789012:role/cloudkon-test";
    eks.create_cluster()
        .name(cluster)
        .role_arn(role)
        .resources_vpc_config(
            VpcConfigRequest::builder()
                .subnet_ids("subnet-00000001")
                .build(),
        )
        .send()
        .await
        .unwrap();
    eks.create_nodegroup()
        .cluster_name(cluster)
        .nodegroup_name(nodegroup)
        .node_role(role)
        .subnets("subnet-00000001")
        .scaling_config(
            NodegroupScalingConfig::builder()
                .min_size(0)
                .max_size(5)
                .desired_size(1)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

fn eks_spec(cluster: &str, nodegroup: &str) -> Provider {
    Provider {
        type_: ProviderType::EksNodegroup,
        instances: None,
        auto_scaling_group: None,
        eks_nodegroup: Some(EksNodegroup {
            cluster: cluster.into(),
            nodegroup: nodegroup.into(),
        }),
    }
}

async fn describe_nodegroup(
    sdk: &SdkConfig,
    cluster: &str,
    nodegroup: &str,
) -> aws_sdk_eks::types::Nodegroup {
    aws_sdk_eks::Client::new(sdk)
        .describe_nodegroup()
        .cluster_name(cluster)
        .nodegroup_name(nodegroup)
        .send()
        .await
        .unwrap()
        .nodegroup
        .unwrap()
}

fn desired_size(g: &aws_sdk_eks::types::Nodegroup) -> Option<i32> {
    g.scaling_config().and_then(|s| s.desired_size())
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn eks_sets_the_desired_size_within_bounds() {
    let sdk = sdk().await;
    let cluster = unique("eks");
    let nodegroup = unique("ng");
    create_nodegroup(&sdk, &cluster, &nodegroup).await;
    let p = provider(
        &eks_spec(&cluster, &nodegroup),
        &unique("eks-pool"),
        &[],
        &sdk,
    );
    let Ec2Provider::EksNodegroup(eks) = &p else {
        unreachable!()
    };

    assert_eq!(
        p.observe().await.unwrap(),
        WorkerCount {
            current: 1,
            ready: 1,
            bounds: Some((0, 5)),
        }
    );
    p.scale_to(3).await.unwrap();
    let g = describe_nodegroup(&sdk, &cluster, &nodegroup).await;
    assert_eq!(desired_size(&g), Some(3));
    // The bounds are untouched.
    let s = g.scaling_config().unwrap();
    assert_eq!((s.min_size(), s.max_size()), (Some(0), Some(5)));
    assert_eq!(
        p.observe().await.unwrap(),
        WorkerCount {
            current: 3,
            ready: 3,
            bounds: Some((0, 5)),
        }
    );
    assert_eq!(eks.updates_sent(), 1);

    // Over maxSize: clamped to it.
    p.scale_to(9).await.unwrap();
    let g = describe_nodegroup(&sdk, &cluster, &nodegroup).await;
    assert_eq!(desired_size(&g), Some(5));
    assert_eq!(eks.updates_sent(), 2);

    p.delete_all().await.unwrap();
    let g = describe_nodegroup(&sdk, &cluster, &nodegroup).await;
    assert_eq!(desired_size(&g), Some(0));
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn eks_no_op_scale_sends_no_update() {
    let sdk = sdk().await;
    let cluster = unique("eks-noop");
    let nodegroup = unique("ng");
    create_nodegroup(&sdk, &cluster, &nodegroup).await;
    let p = provider(
        &eks_spec(&cluster, &nodegroup),
        &unique("eks-pool"),
        &[],
        &sdk,
    );
    let Ec2Provider::EksNodegroup(eks) = &p else {
        unreachable!()
    };

    p.scale_to(2).await.unwrap();
    assert_eq!(eks.updates_sent(), 1);
    let before = describe_nodegroup(&sdk, &cluster, &nodegroup).await;
    assert_eq!(desired_size(&before), Some(2));
    // moto has no ListUpdates, but sets modifiedAt (to the millisecond) on
    // every UpdateNodegroupConfig: an update would show.
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.scale_to(2).await.unwrap();
    assert_eq!(eks.updates_sent(), 1);
    let after = describe_nodegroup(&sdk, &cluster, &nodegroup).await;
    assert_eq!(after.modified_at(), before.modified_at());
    assert!(after.modified_at().is_some());
}

#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn eks_missing_nodegroup_is_an_error_naming_it() {
    let sdk = sdk().await;
    let cluster = unique("eks-missing");
    let nodegroup = unique("ng");
    create_nodegroup(&sdk, &cluster, &nodegroup).await;
    let absent = unique("ng-absent");
    let p = provider(&eks_spec(&cluster, &absent), &unique("eks-pool"), &[], &sdk);
    for err in [
        p.observe().await.unwrap_err(),
        p.scale_to(1).await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(text.contains(&absent), "{text}");
        assert!(text.contains(&cluster), "{text}");
        assert!(text.contains("DescribeNodegroup"), "{text}");
        assert!(text.contains("ResourceNotFoundException"), "{text}");
    }
}

// The tag is the whole inventory: instances someone else launched with the
// pool's tag are its workers too.
#[tokio::test]
#[ignore = "needs moto: run through scripts/test"]
async fn instances_tagged_by_hand_count_as_workers() {
    let sdk = sdk().await;
    let lt = unique("tmpl-hand");
    create_launch_template(&sdk, &lt).await;
    let pool = unique("hand");
    aws_sdk_ec2::Client::new(&sdk)
        .run_instances()
        .image_id(AMI)
        .min_count(2)
        .max_count(2)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(
                    Tag::builder()
                        .key(POOL_TAG)
                        .value(format!("tests/{pool}"))
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let p = provider(&instances_spec(&lt, vec![]), &pool, &[], &sdk);
    assert_eq!(p.observe().await.unwrap().current, 2);
    p.scale_to(3).await.unwrap();
    assert_eq!(pool_instances(&sdk, &pool).await.len(), 3);
}
