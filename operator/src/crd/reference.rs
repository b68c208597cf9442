//! The field reference of the README, generated from the CRDs' schemas (the
//! doc comments of the Rust types), so that it cannot drift from them: a test
//! compares README.md with [`markdown`].

use schemars::JsonSchema;
use serde_json::Value;

use super::{TaskBatchSpec, WorkerPoolSpec};

/// Fields whose schema is Kubernetes' own (documented by `kubectl explain`):
/// listed, not expanded.
const NOT_EXPANDED: &[&str] = &["resources", "env", "nodeSelector"];

/// One table per CRD: `| field | type | description |` for every field of
/// `spec`, depth first.
pub fn markdown() -> String {
    let mut out = String::new();
    for crd in super::crds() {
        let value = serde_json::to_value(&crd).expect("a CRD serializes");
        let kind = crd.spec.names.kind.clone();
        let spec = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let fields = match kind.as_str() {
            "TaskBatch" => field_schema::<TaskBatchSpec>(),
            "WorkerPool" => field_schema::<WorkerPoolSpec>(),
            _ => Value::Null,
        };
        out.push_str(&format!(
            "#### {kind} `spec`\n\n| field | type | description |\n|---|---|---|\n"
        ));
        rows(spec, &fields, "", &mut out);
        out.push('\n');
    }
    out
}

/// A spec's schema as kube's derive makes the CRD's, but for its last step
/// (`OptionalEnum`), which gives an optional enum field its type's
/// description (`queue.deletionPolicy`: "What happens to a resource the pool
/// created…") in place of the field's own ("… (default Delete)"). Only its
/// descriptions are read.
fn field_schema<T: JsonSchema>() -> Value {
    let schema = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(schema).expect("a schema serializes")
}

/// The rows of `schema`'s properties; `fields` is the same place in
/// [`field_schema`], whose descriptions win.
fn rows(schema: &Value, fields: &Value, prefix: &str, out: &mut String) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, field) in properties {
        let path = format!("{prefix}{name}");
        let mut type_ = type_of(field);
        if required.contains(&name.as_str()) {
            type_.push_str(", required");
        }
        let own = &fields["properties"][name];
        // The field's own words, unless they are rustdoc's ("see
        // [`TaskOrder`]"): then its type's, as the CRD has them.
        let description = own["description"]
            .as_str()
            .filter(|d| !has_rustdoc_link(d))
            .or(field["description"].as_str())
            .unwrap_or("");
        out.push_str(&format!(
            "| `{path}` | {type_} | {} |\n",
            first_sentence(description)
        ));
        if NOT_EXPANDED.contains(&name.as_str()) {
            continue;
        }
        if field["type"] == "array" {
            rows(&field["items"], &own["items"], &format!("{path}[]."), out);
        } else {
            rows(field, own, &format!("{path}."), out);
        }
    }
}

fn type_of(field: &Value) -> String {
    if field["x-kubernetes-int-or-string"] == true {
        // A Kubernetes quantity (`1Gi`) or an IntOrString: no `type`.
        return "integer or string".to_string();
    }
    let base = field["type"].as_str().unwrap_or("object");
    let mut t = match base {
        "array" => format!("[]{}", field["items"]["type"].as_str().unwrap_or("object")),
        other => other.to_string(),
    };
    if let Some(values) = field["enum"].as_array() {
        let names: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        t = names.join(" \\| ");
    }
    t
}

/// Whether `text` links to an item as rustdoc does (`` [`Name`] ``, not
/// followed by a Markdown link's `(url)`).
fn has_rustdoc_link(text: &str) -> bool {
    text.match_indices("`]")
        .any(|(i, _)| !text[i + 2..].starts_with('('))
}

/// The description's first sentence, on one line, safe in a table cell.
fn first_sentence(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let end = flat
        .match_indices(". ")
        .map(|(i, _)| i + 1)
        .next()
        .unwrap_or(flat.len());
    flat[..end].replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_field_is_in_the_reference() {
        let md = markdown();
        for path in [
            "`tasks.generator.range.step`",
            "`tasks.inline[].secondsPerImage`",
            "`retry.maxAttempts`",
            "`workers.targetBacklogPerWorker`",
            "`provider.instances.launchTemplate`",
            "`behavior.scaleDown.policies[].periodSeconds`",
            "`template.resources`",
        ] {
            assert!(md.contains(path), "no {path} in:\n{md}");
        }
        assert!(
            !md.contains("`template.resources.limits`"),
            "Kubernetes' own types are not expanded"
        );
        assert_eq!(first_sentence("One. Two.\n Three"), "One.");
        assert_eq!(first_sentence("a | b"), "a \\| b");
    }

    #[test]
    fn a_fields_own_description_and_type_are_given() {
        let md = markdown();
        let row = |path: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| `{path}` |")))
                .unwrap_or_else(|| panic!("no {path} in:\n{md}"))
                .to_string()
        };
        // An optional enum: the field's description, not its type's.
        assert_eq!(
            row("queue.deletionPolicy"),
            "| `queue.deletionPolicy` | Delete \\| Retain | What happens to the queues when \
             the pool is deleted (default Delete). |"
        );
        // ... unless the field's defers to its type's, in rustdoc's words.
        assert!(
            row("order").contains("| The order tasks are sent in: `longestFirst` (default)"),
            "{}",
            row("order")
        );
        assert!(has_rustdoc_link("see [`TaskOrder`])."));
        assert!(!has_rustdoc_link("see [`kubectl`](https://kubernetes.io)"));
        assert!(
            row("behavior.scaleUp.selectPolicy")
                .contains("| Which policy wins when several apply:"),
            "{}",
            row("behavior.scaleUp.selectPolicy")
        );
        // A quantity has no `type`, and is no object.
        assert!(
            row("template.tmpSizeLimit")
                .starts_with("| `template.tmpSizeLimit` | integer or string |"),
            "{}",
            row("template.tmpSizeLimit")
        );
    }
}
