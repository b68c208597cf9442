//! The field reference of the README, generated from the CRDs' schemas (the
//! doc comments of the Rust types), so that it cannot drift from them: a test
//! compares README.md with [`markdown`].

use serde_json::Value;

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
        out.push_str(&format!(
            "#### {kind} `spec`\n\n| field | type | description |\n|---|---|---|\n"
        ));
        rows(spec, "", &mut out);
        out.push('\n');
    }
    out
}

fn rows(schema: &Value, prefix: &str, out: &mut String) {
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
        out.push_str(&format!(
            "| `{path}` | {type_} | {} |\n",
            first_sentence(field["description"].as_str().unwrap_or(""))
        ));
        if NOT_EXPANDED.contains(&name.as_str()) {
            continue;
        }
        if field["type"] == "array" {
            rows(&field["items"], &format!("{path}[]."), out);
        } else {
            rows(field, &format!("{path}."), out);
        }
    }
}

fn type_of(field: &Value) -> String {
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
}
