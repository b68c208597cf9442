//! The CRDs and examples against a real API server: the local control plane
//! of `scripts/control-plane` (Kubernetes 1.20), driven with kubectl.
//!
//! Run with:
//!
//! ```sh
//! source "$(scripts/control-plane up)"
//! cargo test -p cloudkon-operator --test cluster -- --include-ignored
//! ```
//!
//! It refuses any other cluster: KUBECONFIG must be the one the control plane
//! wrote; otherwise it fails saying so (`scripts/test` starts the control plane).

mod common;

use common::repo;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

struct Kubectl(String);

impl Kubectl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.0)
            .args(args)
            .current_dir(repo())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.0))
    }

    /// Runs and returns stdout; panics with stderr on failure.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Deletes the test namespace however the test ends.
struct Namespace<'a>(&'a Kubectl, String);

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        self.0
            .run(&["delete", "namespace", &self.1, "--wait=false"]);
    }
}

#[test]
#[ignore = "needs the local control plane: source \"$(scripts/control-plane up)\""]
fn crds_and_examples_on_a_real_api_server() {
    let (kubectl, _helm) = common::require_control_plane();
    let k = Kubectl(kubectl);

    // The CRDs install (for real: objects need their CRD) and are established.
    k.ok(&["apply", "-f", "crds/"]);
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/taskbatches.cloudkon.io",
        "crd/workerpools.cloudkon.io",
    ]);

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let ns = format!("cloudkon-crd-test-{}-{nanos}", std::process::id());
    k.ok(&["create", "namespace", &ns]);
    let _cleanup = Namespace(&k, ns.clone());

    // The examples pass the server's validation (schema and pruning).
    let examples = [
        "examples/workerpool.yaml",
        "examples/taskbatch.yaml",
        "examples/taskbatch-animoto.yaml",
    ];
    for file in examples {
        k.ok(&["apply", "--dry-run=server", "-n", &ns, "-f", file]);
    }
    // ... and are kept whole: nothing pruned as unknown.
    for file in examples {
        k.ok(&["apply", "-n", &ns, "-f", file]);
    }
    let stored = k.ok(&["get", "-n", &ns, "workerpool", "sweep-pool", "-o", "json"]);
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let local: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join(examples[0])).unwrap()).unwrap();
    assert_eq!(
        stored["spec"], local["spec"],
        "the server pruned or changed the spec"
    );

    // A spec the schema rejects is rejected.
    let bad = k.run(&[
        "patch",
        "-n",
        &ns,
        "workerpool",
        "sweep-pool",
        "--type=merge",
        "-p",
        r#"{"spec":{"workers":{"max":0}}}"#,
    ]);
    assert!(!bad.status.success(), "max 0 was accepted");

    // Status through the status subresource, shown in the printer columns.
    k.ok(&[
        "patch", "-n", &ns, "taskbatch", "sweep", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"phase":"Running","progress":"250/1000000","counts":{"total":1000000,"enqueued":1000000,"succeeded":240,"failed":10},"throughput":125.5,"eta":"2h12m","cost":{"sqsRequests":1200.5,"dynamodbRequests":300,"dynamodbWriteUnits":310.5,"s3Reads":0,"s3Writes":2,"workerRequests":1100.25,"workerSeconds":96.5,"dollars":0.0123,"projectedDollars":49.2,"summary":"$0.0123 / $49.20"}}}"#,
    ]);
    let table = k.ok(&["get", "-n", &ns, "taskbatches", "sweep"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "PHASE", "DONE", "FAILED", "RATE", "ETA", "COST", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..9],
        [
            "sweep",
            "Running",
            "250/1000000",
            "10",
            "125.5",
            "2h12m",
            "$0.0123",
            "/",
            "$49.20"
        ],
        "{table}"
    );
    // The short name works.
    k.ok(&["get", "-n", &ns, "tb", "animoto"]);

    k.ok(&[
        "patch", "-n", &ns, "workerpool", "sweep-pool", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"replicas":3,"readyReplicas":2,"desiredReplicas":4,"workers":"2/4","backlog":35,"backlogVisible":30,"backlogInFlight":5,"density":11.7,"selector":"cloudkon.io/pool=sweep-pool"}}"#,
    ]);
    let table = k.ok(&["get", "-n", &ns, "wp"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "WORKERS", "BACKLOG", "DENSITY", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["sweep-pool", "2/4", "35", "11.7"], "{table}");

    // The /scale subresource writes spec.replicas (what `kubectl scale`, an
    // HPA or KEDA does) and reads status.replicas and the selector. (A GET of
    // /scale fails while spec.replicas is unset: the API server needs the
    // field; a PATCH, as kubectl scale sends, works.)
    k.ok(&[
        "scale",
        "-n",
        &ns,
        "workerpool",
        "sweep-pool",
        "--replicas=5",
    ]);
    let replicas = k.ok(&[
        "get",
        "-n",
        &ns,
        "wp",
        "sweep-pool",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "5");
    let scale = k.ok(&[
        "get",
        "--raw",
        &format!("/apis/cloudkon.io/v1alpha1/namespaces/{ns}/workerpools/sweep-pool/scale"),
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["spec"]["replicas"], 5, "{scale}");
    assert_eq!(scale["status"]["replicas"], 3, "{scale}");
    assert_eq!(
        scale["status"]["selector"], "cloudkon.io/pool=sweep-pool",
        "{scale}"
    );
}

/// Deletes a cluster-scoped test CRD however the test ends.
struct TestCrd<'a>(&'a Kubectl, String);

impl Drop for TestCrd<'_> {
    fn drop(&mut self) {
        self.0.run(&["delete", "crd", &self.1, "--wait=false"]);
    }
}

#[test]
#[ignore = "needs the local control plane: source \"$(scripts/control-plane up)\""]
fn an_operator_newer_than_the_crds_installed_says_what_they_lack() {
    use cloudkon_operator::crd_check;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::{Api, CustomResourceExt, ResourceExt};

    let (kubectl, _helm) = common::require_control_plane();
    let k = Kubectl(kubectl.clone());
    let kube = common::Kube::new(kubectl, "default".into());
    // The TaskBatch CRD under a group of the test's own: the cluster's
    // CloudKon CRDs stay as they are for the other tests.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let group = format!("check{nanos}.cloudkon.io");
    let mut wanted = cloudkon_operator::crd::TaskBatch::crd();
    wanted.spec.group = group.clone();
    wanted.metadata.name = Some(format!("taskbatches.{group}"));
    let name = wanted.name_any();
    // As an operator before `status.sourceDigest` made it.
    let mut older = serde_json::to_value(&wanted).unwrap();
    older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("sourceDigest")
        .unwrap();
    let older: CustomResourceDefinition = serde_json::from_value(older).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(kube.client.clone());
    let check = |crds: &[CustomResourceDefinition]| {
        kube.rt
            .block_on(crd_check::check(&kube.client, crds))
            .map_err(|e| e.to_string())
    };

    let missing = check(std::slice::from_ref(&wanted)).unwrap_err();
    assert!(
        missing.contains(&format!("{name} is not installed")),
        "{missing}"
    );
    let _cleanup = TestCrd(&k, name.clone());
    kube.rt
        .block_on(api.create(&Default::default(), &older))
        .unwrap();
    let outdated = check(std::slice::from_ref(&wanted)).unwrap_err();
    assert!(
        outdated.contains(&format!(
            "{name} is older than this operator (it has no status.sourceDigest)"
        )) && outdated
            .contains("kubectl apply --server-side --force-conflicts -f charts/cloudkon/crds/"),
        "{outdated}"
    );
    // Upgraded as the message says: the operator runs.
    // (Applied: the API server's own controller writes the CRD's status
    // meanwhile.)
    let patch = kube::api::Patch::Apply(&wanted);
    let params = kube::api::PatchParams::apply("cluster-test").force();
    kube.rt.block_on(api.patch(&name, &params, &patch)).unwrap();
    check(std::slice::from_ref(&wanted)).unwrap();
    // The cluster's own CRDs, applied from crds/, are this operator's.
    k.ok(&["apply", "-f", "crds/"]);
    check(&cloudkon_operator::crd::crds()).unwrap();
}
