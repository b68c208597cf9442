//! The committed CRD manifests are what the code generates, the schemas are
//! ones the API server accepts and documents, and the examples are valid.

mod common;

use common::repo;
use std::fs;

use cloudkon_operator::crd::{self, TaskBatch, WorkerPool};
use cloudkon_operator::validate;
use serde_json::Value;

const REGENERATE: &str = "cargo run -p cloudkon-operator -- crd --out-dir crds";

#[test]
fn committed_crds_are_what_the_code_generates() {
    let dir = repo().join("crds");
    let mut stale = Vec::new();
    let mut expected_files = Vec::new();
    for crd in crd::crds() {
        let name = crd::file_name(&crd);
        let committed = fs::read_to_string(dir.join(&name)).unwrap_or_default();
        if committed != crd::to_yaml(&crd) {
            stale.push(format!("crds/{name}"));
        }
        expected_files.push(name);
    }
    assert!(
        stale.is_empty(),
        "{} differ from the CRDs the code generates: regenerate them with `{REGENERATE}` and commit the result",
        stale.join(", ")
    );
    let mut extra: Vec<String> = fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !expected_files.contains(name))
        .collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "crds/ holds files the code does not generate: {extra:?}"
    );
}

#[test]
fn the_crd_subcommand_prints_both_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudkon-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let all: String = crd::crds().iter().map(crd::to_yaml).collect();
    assert_eq!(stdout, all);
    assert_eq!(stdout.matches("\n---\n").count() + 1, 2);
}

/// Every schema node, with its path.
fn walk<'a>(path: String, schema: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), schema));
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            walk(format!("{path}.{name}"), sub, out);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(format!("{path}[]"), items, out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk(format!("{path}{{}}"), extra, out);
    }
}

fn schema_nodes(crd: &Value) -> Vec<(String, Value)> {
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut nodes = Vec::new();
    walk(String::new(), schema, &mut nodes);
    nodes.into_iter().map(|(p, v)| (p, v.clone())).collect()
}

#[test]
fn schemas_are_structural_and_every_field_of_ours_is_described() {
    for crd in crd::crds() {
        let kind = crd.spec.names.kind.clone();
        let crd = serde_json::to_value(&crd).unwrap();
        for (path, node) in schema_nodes(&crd) {
            // Structural schemas (required by apiextensions.k8s.io/v1): a type
            // on every node, no oneOf/anyOf/allOf carrying their own fields.
            for key in ["oneOf", "anyOf", "allOf", "$ref", "definitions"] {
                assert!(node.get(key).is_none(), "{kind}{path} has {key}");
            }
            let typed = node.get("type").is_some()
                || node.get("x-kubernetes-int-or-string").is_some()
                || node.get("x-kubernetes-preserve-unknown-fields").is_some();
            assert!(typed, "{kind}{path} has no type");
            // Our own fields (not Kubernetes' embedded types, not metadata)
            // carry their doc comment: it is what `kubectl explain` shows.
            let ours = path.starts_with(".spec") || path.starts_with(".status");
            let embedded = [".resources", ".env[]"]
                .iter()
                .any(|e| path.contains(&format!("{e}.")) || path.ends_with(&format!("{e}{{}}")));
            if ours && !embedded && !path.ends_with("{}") && !path.ends_with("[]") {
                let described = node
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty());
                assert!(described, "{kind}{path} has no description (a doc comment)");
            }
        }
    }
}

fn version(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]
}

fn columns(crd: &Value) -> Vec<(String, String)> {
    version(crd)["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["jsonPath"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn names_subresources_and_printer_columns() {
    use kube::CustomResourceExt;
    let tb = serde_json::to_value(TaskBatch::crd()).unwrap();
    assert_eq!(tb["metadata"]["name"], "taskbatches.cloudkon.io");
    assert_eq!(tb["spec"]["scope"], "Namespaced");
    assert_eq!(tb["spec"]["names"]["shortNames"], serde_json::json!(["tb"]));
    assert_eq!(version(&tb)["name"], "v1alpha1");
    assert_eq!(
        version(&tb)["subresources"],
        serde_json::json!({"status": {}})
    );
    let want: Vec<(String, String)> = [
        ("Phase", ".status.phase"),
        ("Done", ".status.progress"),
        ("Failed", ".status.counts.failed"),
        ("Rate", ".status.throughput"),
        ("ETA", ".status.eta"),
        ("Cost", ".status.cost.summary"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(columns(&tb), want);

    let wp = serde_json::to_value(WorkerPool::crd()).unwrap();
    assert_eq!(wp["metadata"]["name"], "workerpools.cloudkon.io");
    assert_eq!(wp["spec"]["names"]["shortNames"], serde_json::json!(["wp"]));
    assert_eq!(
        version(&wp)["subresources"],
        serde_json::json!({
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector"
            }
        })
    );
    let want: Vec<(String, String)> = [
        ("Workers", ".status.workers"),
        ("Backlog", ".status.backlog"),
        ("Density", ".status.density"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(columns(&wp), want);

    // Every printer column's path exists in the schema.
    for crd in [&tb, &wp] {
        let paths: Vec<String> = schema_nodes(crd).into_iter().map(|(p, _)| p).collect();
        for (name, path) in columns(crd) {
            assert!(
                path.starts_with(".metadata") || paths.contains(&path),
                "column {name}: {path} is not in the schema"
            );
        }
    }
}

fn example(name: &str) -> String {
    fs::read_to_string(repo().join("examples").join(name)).unwrap()
}

#[test]
fn the_examples_parse_and_are_valid() {
    let pool: WorkerPool = serde_yaml::from_str(&example("workerpool.yaml")).unwrap();
    assert_eq!(
        validate::workerpool(&pool.spec, "batch", &Default::default()),
        Ok(())
    );
    for name in ["taskbatch.yaml", "taskbatch-animoto.yaml"] {
        let batch: TaskBatch = serde_yaml::from_str(&example(name)).unwrap();
        assert_eq!(validate::taskbatch(&batch.spec), Ok(()), "{name}");
        assert_eq!(
            batch.spec.worker_pool,
            pool.metadata.name.clone().unwrap(),
            "{name} runs on the example pool"
        );
    }
}

/// README's field reference is the one generated from the CRD schemas.
#[test]
fn readme_reference_is_generated_from_the_crds() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let (begin, end) = ("<!-- reference:begin -->\n", "<!-- reference:end -->");
    let start = readme
        .find(begin)
        .expect("README.md has a reference:begin marker")
        + begin.len();
    let stop = readme
        .find(end)
        .expect("README.md has a reference:end marker");
    assert!(
        readme[start..stop] == crd::reference::markdown(),
        "README.md's field reference differs from the CRDs: replace the text between its \
         reference markers with the output of `cargo run -p cloudkon-operator -- crd --reference`"
    );
}
