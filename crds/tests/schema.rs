//! Properties of the generated schemas that `kubectl explain` users and the API server rely on.

use serde_json::Value;

fn schemas() -> Vec<(String, Value)> {
    scopegate_crds::crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let version = &crd.spec.versions[0];
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema present");
            (
                name,
                serde_json::to_value(schema).expect("schema serialises"),
            )
        })
        .collect()
}

/// Walks every property of `schema`, calling `visit(path, property_schema)`.
fn walk(path: &str, schema: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let child = format!("{path}.{name}");
            visit(&child, prop);
            walk(&child, prop, visit);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), values, visit);
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    let mut missing = Vec::new();
    let mut visited = 0;
    for (crd, schema) in schemas() {
        walk(&crd, &schema, &mut |path, prop| {
            visited += 1;
            // metadata and apiVersion/kind are Kubernetes' own; LabelSelector internals come
            // from k8s-openapi.
            let foreign = path.ends_with(".metadata")
                || path.ends_with(".apiVersion")
                || path.ends_with(".kind")
                || path.contains(".selector.")
                || path.contains(".conditions[].");
            if !foreign
                && prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                missing.push(path.to_owned());
            }
        });
    }
    assert!(visited > 100, "the walk saw only {visited} properties");
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:#?}"
    );
}

#[test]
fn every_list_and_map_that_cel_touches_is_bounded() {
    let mut unbounded = Vec::new();
    for (crd, schema) in schemas() {
        walk(
            &crd,
            &schema
                .get("properties")
                .and_then(|p| p.get("spec"))
                .cloned()
                .unwrap_or_default(),
            &mut |path, prop| {
                let ty = prop.get("type").and_then(Value::as_str);
                let bounded = match ty {
                    Some("array") => prop.get("maxItems").is_some(),
                    Some("string") => {
                        prop.get("maxLength").is_some()
                            || prop.get("enum").is_some()
                            || prop.get("format").is_some()
                    }
                    Some("object") if prop.get("additionalProperties").is_some() => {
                        prop.get("maxProperties").is_some()
                    }
                    _ => true,
                };
                if !bounded && !path.contains(".selector") {
                    unbounded.push(path.to_owned());
                }
            },
        );
    }
    assert!(
        unbounded.is_empty(),
        "unbounded spec fields (CEL cost): {unbounded:#?}"
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    for (crd, schema) in schemas() {
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{crd}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{crd}"
        );
    }
}

#[test]
fn status_is_a_subresource_with_printer_columns_and_short_names() {
    for crd in scopegate_crds::crds() {
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Age"),
            "{columns:?}"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        );
    }
}

#[test]
fn only_formats_the_api_server_knows() {
    let known = ["int32", "int64", "date-time", "byte", "double"];
    let mut unknown = Vec::new();
    for (crd, schema) in schemas() {
        walk(&crd, &schema, &mut |path, prop| {
            if let Some(format) = prop.get("format").and_then(Value::as_str)
                && !known.contains(&format)
            {
                unknown.push(format!("{path}: {format}"));
            }
        });
    }
    assert!(
        unknown.is_empty(),
        "formats kube-apiserver warns about: {unknown:?}"
    );
}

/// The numbers of a field's own bounds and those of its items or map values.
fn bound_numbers(prop: &Value) -> Vec<String> {
    let keys = [
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "minimum",
        "maximum",
    ];
    let levels = std::iter::successors(Some(prop), |schema| {
        schema
            .get("items")
            .or_else(|| schema.get("additionalProperties"))
            .filter(|s| s.is_object())
    });
    levels
        .flat_map(|schema| keys.iter().filter_map(|k| schema.get(*k)))
        .filter_map(Value::as_f64)
        // A minimum length or count of 0 says nothing.
        .filter(|n| *n != 0.0)
        .map(|n| format!("{n:.0}"))
        .collect()
}

#[test]
fn kubectl_explain_states_every_default_and_limit() {
    let mut unstated = Vec::new();
    let mut checked = 0;
    for (crd, schema) in schemas() {
        let spec = schema["properties"]["spec"].clone();
        walk(&format!("{crd}.spec"), &spec, &mut |path, prop| {
            let description = prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let words: Vec<&str> = description.split(|c: char| !c.is_ascii_digit()).collect();
            if prop.get("default").is_some() {
                checked += 1;
                if !description.to_ascii_lowercase().contains("default") {
                    unstated.push(format!("{path}: default"));
                }
            }
            for number in bound_numbers(prop) {
                checked += 1;
                if !words.contains(&number.as_str()) {
                    unstated.push(format!("{path}: limit {number}"));
                }
            }
        });
    }
    assert!(checked > 150, "only {checked} defaults and limits seen");
    assert!(unstated.is_empty(), "not in kubectl explain: {unstated:#?}");
}
