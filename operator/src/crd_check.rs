//! The CRDs in the cluster against the ones this operator was built with.
//!
//! `helm upgrade` does not upgrade a chart's `crds/`, so a new operator may
//! meet its resources' old schemas: the API server then refuses each status
//! write that holds a field they lack, and every batch stalls behind a
//! runner that fails and restarts. Checked at start instead, with the fields
//! missing and the command that installs the CRDs of this release.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::{Api, Client};

/// The command that installs the CRDs of this release. `--force-conflicts`:
/// CRDs that `helm install` made are owned by its field manager, which a
/// plain server-side apply conflicts with.
const INSTALL_CRDS: &str = "kubectl apply --server-side --force-conflicts -f charts/cloudkon/crds/";

/// Why the operator cannot run on the CRDs it found.
#[derive(Debug, thiserror::Error)]
pub enum CrdCheckError {
    #[error(
        "the CustomResourceDefinition {name} is not installed: install the CRDs of this release \
         ({INSTALL_CRDS})"
    )]
    Missing { name: String },
    #[error(
        "the CustomResourceDefinition {name} is older than this operator ({what}): the API server \
         would refuse what the operator writes. Install the CRDs of this release \
         ({INSTALL_CRDS}; helm upgrade leaves CRDs as they were)"
    )]
    Outdated { name: String, what: String },
}

/// The properties `wanted` has and `installed` lacks, as paths
/// (`status.sourceDigest`, `spec.tasks.inline[].expectedMs`).
pub fn missing_properties(installed: &JSONSchemaProps, wanted: &JSONSchemaProps) -> Vec<String> {
    let mut missing = Vec::new();
    walk("", installed, wanted, &mut missing);
    missing
}

fn walk(path: &str, installed: &JSONSchemaProps, wanted: &JSONSchemaProps, out: &mut Vec<String>) {
    for (name, want) in wanted.properties.iter().flatten() {
        let here = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match installed.properties.as_ref().and_then(|p| p.get(name)) {
            Some(have) => walk(&here, have, want, out),
            None => out.push(here),
        }
    }
    if let (
        Some(JSONSchemaPropsOrArray::Schema(have)),
        Some(JSONSchemaPropsOrArray::Schema(want)),
    ) = (&installed.items, &wanted.items)
    {
        walk(&format!("{path}[]"), have, want, out);
    }
}

/// What in `installed` falls short of `wanted`: the version this operator
/// serves, or its properties; `None` when nothing does.
pub fn shortfall(
    installed: &CustomResourceDefinition,
    wanted: &CustomResourceDefinition,
) -> Option<String> {
    let schema = |crd: &CustomResourceDefinition, version: &str| {
        crd.spec
            .versions
            .iter()
            .find(|v| v.name == version)
            .map(|v| {
                v.schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.clone())
                    .unwrap_or_default()
            })
    };
    for version in &wanted.spec.versions {
        let Some(have) = schema(installed, &version.name) else {
            return Some(format!("it does not serve version {}", version.name));
        };
        let want = schema(wanted, &version.name).unwrap_or_default();
        let missing = missing_properties(&have, &want);
        if !missing.is_empty() {
            return Some(format!("it has no {}", missing.join(", ")));
        }
    }
    None
}

/// Reads each of `wanted` from the cluster and compares. A cluster that does
/// not let the operator read CRDs (RBAC of its own) is not checked: a
/// warning, and the operator runs.
pub async fn check(
    client: &Client,
    wanted: &[CustomResourceDefinition],
) -> Result<(), CrdCheckError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in wanted {
        let name = kube::ResourceExt::name_any(crd);
        let installed = match api.get_opt(&name).await {
            Ok(Some(installed)) => installed,
            Ok(None) => return Err(CrdCheckError::Missing { name }),
            Err(e) => {
                tracing::warn!(crd = %name, error = %e, "cannot read the CRD to check it: not checked");
                continue;
            }
        };
        if let Some(what) = shortfall(&installed, crd) {
            return Err(CrdCheckError::Outdated { name, what });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TaskBatch CRD without `status.sourceDigest` and
    /// `spec.tasks.inline[].expectedMs`, as an operator before them made it.
    fn older(crd: &CustomResourceDefinition) -> CustomResourceDefinition {
        let mut v = serde_json::to_value(crd).unwrap();
        let schema = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        schema["status"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("sourceDigest")
            .unwrap();
        schema["spec"]["properties"]["tasks"]["properties"]["inline"]["items"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("expectedMs")
            .unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_older_crd_is_told_by_the_fields_it_lacks() {
        let [batch, pool] = <[_; 2]>::try_from(crate::crd::crds()).unwrap();
        assert_eq!(shortfall(&batch, &batch), None);
        assert_eq!(shortfall(&pool, &pool), None);
        assert_eq!(
            shortfall(&older(&batch), &batch).as_deref(),
            Some("it has no spec.tasks.inline[].expectedMs, status.sourceDigest")
        );
        // A newer CRD (fields this operator does not know) is fine.
        assert_eq!(shortfall(&batch, &older(&batch)), None);
        let mut other_version = batch.clone();
        other_version.spec.versions[0].name = "v1beta1".into();
        assert_eq!(
            shortfall(&other_version, &batch).as_deref(),
            Some("it does not serve version v1alpha1")
        );
    }

    /// The command the errors give works on CRDs that `helm install` made
    /// (field manager `helm`): a plain server-side apply conflicts with it.
    #[test]
    fn the_errors_give_a_command_that_takes_the_crds_from_helm() {
        let command = "kubectl apply --server-side --force-conflicts -f charts/cloudkon/crds/";
        let missing = CrdCheckError::Missing { name: "x".into() }.to_string();
        let outdated = CrdCheckError::Outdated {
            name: "x".into(),
            what: "it has no y".into(),
        }
        .to_string();
        assert!(missing.contains(command), "{missing}");
        assert!(outdated.contains(command), "{outdated}");
    }
}
