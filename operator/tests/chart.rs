//! The Helm chart (`charts/cloudkon`): lint, render with default and other
//! values, validate the manifests on a real API server (`--dry-run=server`),
//! install it, and check the operator's RBAC with `kubectl auth can-i`: what it
//! needs, and a few things it must not do.
//!
//! Needs the local control plane (`scripts/test` starts it), which also
//! provides helm and kubectl.

mod common;

use common::{ok, repo, run};
use serde::Deserialize;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The chart ships the CRDs generated from the Rust types, unchanged.
#[test]
fn the_chart_crds_are_the_generated_ones() {
    for name in ["taskbatch.yaml", "workerpool.yaml"] {
        let generated = std::fs::read_to_string(repo().join("crds").join(name)).unwrap();
        let shipped =
            std::fs::read_to_string(repo().join("charts/cloudkon/crds").join(name)).unwrap();
        assert!(
            generated == shipped,
            "charts/cloudkon/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/cloudkon/crds/"
        );
    }
}

#[test]
#[ignore = "needs the local control plane (helm, kubectl): run scripts/test"]
fn the_chart_lints_renders_installs_and_grants_least_privilege() {
    let (kubectl, helm) = common::require_control_plane();
    ok(&helm, &["lint", "--strict", "charts/cloudkon"], None);

    // Defaults: every pod hardened, no cluster-admin, no wildcard.
    let defaults = ok(
        &helm,
        &["template", "cloudkon", "charts/cloudkon", "--include-crds"],
        None,
    );
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "--leader-elect",
        "kind: ClusterRole\n",
        "limits:",
        "terminationMessagePolicy: FallbackToLogsOnError",
    ] {
        assert!(
            defaults.contains(needle),
            "no {needle:?} in the default render"
        );
    }
    assert!(!defaults.contains("cluster-admin") && !defaults.contains("\"*\""));
    // The dashboard and the workers' PodMonitor are off by default.
    assert!(!defaults.contains("grafana_dashboard") && !defaults.contains("kind: PodMonitor"));

    // Other values: one namespace (a Role, not a ClusterRole), IRSA, the
    // optional objects.
    let other = ok(
        &helm,
        &[
            "template",
            "cloudkon",
            "charts/cloudkon",
            "--set",
            "watchNamespace=team-a",
            "--set",
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/ck",
            "--set",
            "defaultWorkerPool.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.workerPodMonitor.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "grafanaDashboard.annotations.grafana_folder=CloudKon",
            "--set",
            "replicas=2",
            "--set",
            "prices.sqsRequests=0.32",
            "--set",
            "aws.endpointUrl=http://localstack:4566",
            "--set",
            "extraEnv[0].name=AWS_ENDPOINT_URL_SQS",
            "--set",
            "extraEnv[0].value=http://sqs.local:9324",
        ],
        None,
    );
    for needle in [
        "kind: Role\n",
        "namespace: team-a",
        "eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/ck",
        "kind: WorkerPool",
        "kind: NetworkPolicy",
        "kind: ServiceMonitor",
        "honorLabels: true",
        "kind: PodMonitor",
        "matchNames: [\"team-a\"]",
        "targetLabel: pool",
        "grafana_dashboard: \"1\"",
        "grafana_folder: CloudKon",
        "replicas: 2",
        "--namespace=team-a",
        "http://localstack:4566",
        "- name: AWS_ENDPOINT_URL_SQS\n              value: http://sqs.local:9324",
        "- name: CLOUDKON_PRICE_SQS_REQUESTS\n              value: \"0.32\"",
    ] {
        assert!(other.contains(needle), "no {needle:?} in:\n{other}");
    }
    // The default pool is where the operator looks: in the watched namespace.
    assert_eq!(
        pool_namespace(&other),
        Some("team-a".to_string()),
        "{other}"
    );
    // Cluster-wide, only the reading of its own two CRDs (checked at start).
    assert_eq!(other.matches("\nkind: ClusterRole\n").count(), 1, "{other}");
    assert!(other.contains(
        "resourceNames: [\"taskbatches.cloudkon.io\", \"workerpools.cloudkon.io\"]\n    verbs: [\"get\"]"
    ));
    // The dashboard's ConfigMap holds the chart's dashboard file, unchanged.
    let shipped = serde_yaml::Deserializer::from_str(&other)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .find(|doc| {
            doc["kind"] == "ConfigMap"
                && doc["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .expect("the dashboard's ConfigMap");
    let json: serde_json::Value =
        serde_json::from_str(shipped["data"]["cloudkon.json"].as_str().unwrap()).unwrap();
    assert_eq!(json, common::dashboard::dashboard());

    // The API server accepts every rendered object.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let ns = format!("chart-{nanos}");
    // A release name of its own: its ClusterRole is cluster-wide.
    let release = format!("ck-{nanos}");
    ok(&kubectl, &["create", "namespace", &ns], None);
    let _cleanup = Cleanup {
        helm: helm.clone(),
        kubectl: kubectl.clone(),
        ns: ns.clone(),
        release: release.clone(),
    };
    ok(&kubectl, &["apply", "-f", "crds/"], None);
    ok(
        &kubectl,
        &["apply", "-n", &ns, "--dry-run=server", "-f", "-"],
        Some(&defaults),
    );
    let with_pool = ok(
        &helm,
        &[
            "template",
            "cloudkon",
            "charts/cloudkon",
            "--set",
            "defaultWorkerPool.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
        ],
        None,
    );
    assert!(with_pool.contains("grafana_dashboard"));
    // All namespaces watched: the default pool goes in the release's.
    assert_eq!(pool_namespace(&with_pool), None, "{with_pool}");
    ok(
        &kubectl,
        &["apply", "-n", &ns, "--dry-run=server", "-f", "-"],
        Some(&with_pool),
    );

    // Installed for real.
    ok(
        &helm,
        &[
            "install",
            &release,
            "charts/cloudkon",
            "-n",
            &ns,
            "--set",
            "defaultWorkerPool.enabled=true",
        ],
        None,
    );
    let objects = ok(
        &kubectl,
        &[
            "get",
            "-n",
            &ns,
            "deployment,serviceaccount,workerpool,role",
            "-o",
            "name",
        ],
        None,
    );
    for object in [
        format!("deployment.apps/{release}-cloudkon"),
        format!("serviceaccount/{release}-cloudkon"),
        "workerpool.cloudkon.io/default".to_string(),
        format!("role.rbac.authorization.k8s.io/{release}-cloudkon-leader"),
    ] {
        assert!(objects.contains(&object), "no {object} in:\n{objects}");
    }

    // What the operator's service account may and may not do.
    let sa = format!("system:serviceaccount:{ns}:{release}-cloudkon");
    let can = |verb: &str, resource: &str, namespace: &str| -> bool {
        let out = run(
            &kubectl,
            &[
                "auth", "can-i", verb, resource, "-n", namespace, "--as", &sa,
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let allowed = [
        ("watch", "taskbatches.cloudkon.io", "default"),
        ("patch", "taskbatches.cloudkon.io/status", "default"),
        ("patch", "workerpools.cloudkon.io/status", "default"),
        ("delete", "taskbatches.cloudkon.io", "default"),
        ("patch", "deployments.apps", "default"),
        ("create", "deployments.apps", "default"),
        ("patch", "pods", "default"),
        ("get", "configmaps", "default"),
        ("delete", "configmaps", "default"),
        ("create", "events.events.k8s.io", "default"),
        ("update", "leases.coordination.k8s.io", &ns),
        (
            "get",
            "customresourcedefinitions.apiextensions.k8s.io/taskbatches.cloudkon.io",
            "",
        ),
    ];
    for (verb, resource, namespace) in allowed {
        assert!(
            can(verb, resource, namespace),
            "cannot {verb} {resource} in {namespace}"
        );
    }
    let denied = [
        ("get", "secrets", "default"),
        ("delete", "deployments.apps", "default"),
        ("create", "pods", "default"),
        ("delete", "workerpools.cloudkon.io", "default"),
        ("list", "configmaps", "default"),
        ("get", "nodes", "default"),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "default",
        ),
        ("update", "leases.coordination.k8s.io", "kube-system"),
        (
            "get",
            "customresourcedefinitions.apiextensions.k8s.io/foos.example.com",
            "",
        ),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
        ("*", "*", "default"),
    ];
    for (verb, resource, namespace) in denied {
        assert!(
            !can(verb, resource, namespace),
            "may {verb} {resource} in {namespace}"
        );
    }
}

/// The namespace the rendered default WorkerPool names, if any.
fn pool_namespace(rendered: &str) -> Option<String> {
    let pool = serde_yaml::Deserializer::from_str(rendered)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "WorkerPool")
        .expect("a WorkerPool in the render");
    pool["metadata"]["namespace"].as_str().map(str::to_string)
}

/// Uninstalls the release and deletes the namespace however the test ends.
struct Cleanup {
    helm: String,
    kubectl: String,
    ns: String,
    release: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(&self.helm)
            .args(["uninstall", &self.release, "-n", &self.ns])
            .output();
        let _ = Command::new(&self.kubectl)
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .output();
    }
}
