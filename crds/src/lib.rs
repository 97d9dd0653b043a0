//! scopegate-crds: the `AuthPolicy` and `OAuthClient` custom resources.
//!
//! The Rust types are the source of truth. `crdgen` renders them into `crds/*.yaml` and the
//! `scopegate-crds` chart; a unit test fails when either copy is stale. Validation that fits a
//! single object lives in the schema (bounds, patterns, CEL `x-kubernetes-validations`), so
//! `kubectl apply` refuses a bad object with a message; the rest becomes a status condition.

mod explain;
pub mod v1alpha1;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};
use kube::CustomResourceExt;

/// Every CRD scopegate serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        unobserved_in_progress(explain::state_defaults_and_limits(reflow_descriptions(
            limit_name(
                v1alpha1::AuthPolicy::crd(),
                "policy",
                "scopegate.dev/policy",
            ),
        ))),
        unobserved_in_progress(explain::state_defaults_and_limits(reflow_descriptions(
            limit_name(
                v1alpha1::OAuthClient::crd(),
                "client",
                "scopegate.dev/oauth-client",
            ),
        ))),
    ]
}

/// Longest `metadata.name` of either kind: the operator labels what it renders or writes for
/// an object with the object's name, and a label value holds at most 63 characters. Every
/// derived name (`<name>-signing-keys`, `<name>-oauth-client`...) then stays far inside the
/// 253 characters of an object name.
pub const MAX_NAME_LEN: usize = 63;

/// Adds the root-level CEL rule that refuses a name the operator could not label with (CEL
/// on the root may read `metadata.name`).
fn limit_name(
    mut crd: CustomResourceDefinition,
    what: &str,
    label: &str,
) -> CustomResourceDefinition {
    let rule = ValidationRule {
        rule: format!("size(self.metadata.name) <= {MAX_NAME_LEN}"),
        message: Some(format!(
            "metadata.name must be at most {MAX_NAME_LEN} characters: the operator labels the objects it renders for this {what} with its name ({label}), and a label value holds at most {MAX_NAME_LEN}"
        )),
        ..ValidationRule::default()
    };
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(rule.clone());
        }
    }
    crd
}

/// An object the operator has not yet seen has no status, which kstatus (Flux, kpt) reads as
/// Current. The API server fills a missing status with `observedGeneration: 0` instead, so
/// kstatus reads "generation 1 not observed yet": InProgress, until the operator writes the
/// first status.
fn unobserved_in_progress(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(status) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"))
        {
            status.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!({ "observedGeneration": 0 }),
                ),
            );
        }
    }
    crd
}

/// Doc comments are wrapped at 100 columns in the source; `kubectl explain` wraps again at its
/// own width, so a kept line break shows as a ragged short line. Joins wrapped lines into
/// paragraphs, keeping blank-line paragraph breaks.
fn reflow_descriptions(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn reflow(text: &str) -> String {
        text.split("\n\n")
            .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
    fn walk(schema: &mut JSONSchemaProps) {
        if let Some(description) = &mut schema.description {
            *description = reflow(description);
        }
        schema
            .properties
            .iter_mut()
            .flat_map(|p| p.values_mut())
            .for_each(walk);
        match &mut schema.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => walk(item),
            Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(walk),
            None => {}
        }
        if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
            walk(values);
        }
    }
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            walk(schema);
        }
    }
    crd
}
/// A generated file: where it goes (relative to the repository root) and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the repository root.
    pub path: String,
    /// The YAML text.
    pub content: String,
}

/// Failure to render a CRD as YAML.
#[derive(Debug, thiserror::Error)]
#[error("rendering CRD {name} as YAML")]
pub struct RenderError {
    name: String,
    #[source]
    source: serde_yaml_ng::Error,
}

const HEADER: &str = "# Generated by `cargo run -p scopegate-crds --bin crdgen`. Do not edit.\n";

/// Renders every generated file: one YAML file per CRD under `crds/`, and the same CRDs as
/// the templates of the `scopegate-crds` chart.
pub fn generated_files() -> Result<Vec<GeneratedFile>, RenderError> {
    let mut files = Vec::new();
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_yaml_ng::to_string(&crd).map_err(|source| RenderError {
            name: name.clone(),
            source,
        })?;
        let file = format!(
            "{}.yaml",
            crd.spec.names.singular.as_deref().unwrap_or(&name)
        );
        files.push(GeneratedFile {
            path: format!("crds/{file}"),
            content: format!("{HEADER}{yaml}"),
        });
        // Helm keeps the chart's CRDs on uninstall: deleting a CRD deletes every AuthPolicy
        // and OAuthClient with it.
        let mut kept = crd.clone();
        kept.metadata.annotations = Some(std::collections::BTreeMap::from([(
            "helm.sh/resource-policy".to_owned(),
            "keep".to_owned(),
        )]));
        let yaml = serde_yaml_ng::to_string(&kept).map_err(|source| RenderError {
            name: name.clone(),
            source,
        })?;
        files.push(GeneratedFile {
            path: format!("charts/scopegate-crds/templates/{file}"),
            content: format!("{HEADER}{yaml}"),
        });
    }
    Ok(files)
}
