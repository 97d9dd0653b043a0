//! `kubectl explain` prints a field's description and type, not the schema's `default`,
//! bounds or enum. This pass appends what the schema enforces to each description that does
//! not already say it, so every default and limit a user can run into is written where they
//! look, and can never drift from what the API server checks.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// Appends the schema's defaults and bounds to the description of every field under `spec`.
pub(crate) fn state_defaults_and_limits(
    mut crd: CustomResourceDefinition,
) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(spec) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
        {
            annotate_properties(spec);
        }
    }
    crd
}

fn annotate(field: &mut JSONSchemaProps) {
    let mut facts = Vec::new();
    if let Some(default) = &field.default {
        facts.push(format!("Default: {}.", default.0));
    }
    // A list's or map's own bounds, then those of its elements, level by level.
    let mut limits: Vec<String> = bounds(field).into_iter().collect();
    let mut inner = element(field);
    while let Some(schema) = inner {
        limits.extend(bounds(schema).map(|b| format!("each {b}")));
        inner = element(schema);
    }
    if !limits.is_empty() {
        facts.push(format!("Limits: {}.", limits.join("; ")));
    }
    let description = field.description.get_or_insert_with(String::new);
    let missing: Vec<String> = facts
        .into_iter()
        .filter(|fact| !already_stated(description, fact))
        .collect();
    if !missing.is_empty() {
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str(&missing.join(" "));
    }
    annotate_properties(field);
}

/// Annotates the named fields below `schema`, and those of its list items or map values
/// (whose own bounds their list or map field already states).
fn annotate_properties(schema: &mut JSONSchemaProps) {
    schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .for_each(annotate);
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => annotate_properties(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(annotate_properties)
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(value)) = &mut schema.additional_properties {
        annotate_properties(value);
    }
}

/// The schema of a list's items or a map's values.
fn element(schema: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match (&schema.items, &schema.additional_properties) {
        (Some(JSONSchemaPropsOrArray::Schema(item)), _) => Some(item),
        (_, Some(JSONSchemaPropsOrBool::Schema(value))) => Some(value),
        _ => None,
    }
}

/// A fact is already stated when the description names every number in it (a default is
/// stated when the description says "default" at all: the prose often explains it better).
fn already_stated(description: &str, fact: &str) -> bool {
    if fact.starts_with("Default:") {
        return description.to_ascii_lowercase().contains("default");
    }
    fact.split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .all(|n| {
            description
                .split(|c: char| !c.is_ascii_digit())
                .any(|d| d == n)
        })
}

/// The bounds of one schema in words, e.g. "1 to 256 characters" or "at most 16 items".
fn bounds(schema: &JSONSchemaProps) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(range) = range(
        schema.min_length,
        schema.max_length,
        "character",
        "characters",
    ) {
        parts.push(range);
    }
    if let Some(range) = range(schema.min_items, schema.max_items, "item", "items") {
        parts.push(range);
    }
    if let Some(range) = range(
        schema.min_properties,
        schema.max_properties,
        "entry",
        "entries",
    ) {
        parts.push(range);
    }
    let (low, high) = (schema.minimum.map(whole), schema.maximum.map(whole));
    match (low, high) {
        (Some(low), Some(high)) => parts.push(format!("from {low} to {high}")),
        (Some(low), None) => parts.push(format!("at least {low}")),
        (None, Some(high)) => parts.push(format!("at most {high}")),
        (None, None) => {}
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn range(min: Option<i64>, max: Option<i64>, one: &str, many: &str) -> Option<String> {
    let unit = |n: i64| if n == 1 { one } else { many };
    match (min.filter(|&m| m > 0), max) {
        (Some(min), Some(max)) if min == max => Some(format!("exactly {min} {}", unit(max))),
        (Some(min), Some(max)) => Some(format!("{min} to {max} {many}")),
        (Some(min), None) => Some(format!("at least {min} {}", unit(min))),
        (None, Some(max)) => Some(format!("at most {max} {}", unit(max))),
        (None, None) => None,
    }
}

/// Schema bounds are JSON numbers; ours are whole.
fn whole(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        n.to_string()
    }
}
