//! The AuthPolicy document an import writes: its rules, issuer and spec.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{Map, Value, json};

use super::Options;
use super::security::Need;

/// `slug(base)`, or with `-2`, `-3`, ... when a rule has that name already.
pub(super) fn unique_name(base: &str, taken: &[String]) -> String {
    let mut name = slug(base);
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{}-{n}", slug(base).chars().take(58).collect::<String>());
        n += 1;
    }
    name
}

/// One AuthPolicy rule: name, sorted methods, the pattern, and what it needs.
pub(super) fn rule_document(name: String, methods: &[String], pattern: &str, need: &Need) -> Value {
    let mut rule = Map::new();
    rule.insert("name".into(), json!(name));
    let mut methods = methods.to_vec();
    methods.sort();
    rule.insert("methods".into(), json!(methods));
    rule.insert("paths".into(), json!([pattern]));
    match need {
        Need::Public => {
            rule.insert("public".into(), json!(true));
        }
        Need::AnyToken => {}
        Need::All(scopes) => {
            rule.insert("require".into(), json!(scopes));
        }
        Need::Any(sets) => {
            rule.insert("anyOf".into(), json!(sets));
        }
    }
    Value::Object(rule)
}

/// `spec.issuer`: a `policyRef`, or a `self` issuer with the document's vocabulary.
pub(super) fn issuer_document(
    options: &Options,
    name: &str,
    vocabulary: BTreeMap<String, String>,
) -> anyhow::Result<Value> {
    Ok(match (&options.issuer_ref, &options.self_issuer) {
        (Some((namespace, reference)), _) => {
            let mut r = json!({"name": reference});
            if let Some(ns) = namespace {
                r["namespace"] = json!(ns);
            }
            json!({"policyRef": r})
        }
        (None, Some((url, service, port))) => {
            let service = if service.is_empty() {
                name.to_owned()
            } else {
                service.clone()
            };
            json!({"self": {"url": url, "service": {"name": service, "port": port}, "scopes": vocabulary}})
        }
        (None, None) => bail!("give --issuer-ref or --self-url"),
    })
}

/// The AuthPolicy document: metadata, selector, issuer, upstream, Deny by default, rules.
pub(super) fn policy_document(
    options: &Options,
    name: String,
    issuer: Value,
    rules: Vec<Value>,
) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(ns) = &options.namespace {
        metadata["namespace"] = json!(ns);
    }
    let mut spec = json!({
        "selector": {"matchLabels": options.selector},
        "issuer": issuer,
        "upstream": {"port": options.upstream_port},
        "defaultAction": "Deny",
        "rules": rules,
    });
    if !options.audiences.is_empty() {
        spec["audiences"] = json!(options.audiences);
    }
    json!({
        "apiVersion": "scopegate.dev/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": metadata,
        "spec": spec,
    })
}

/// A rule or policy name: lower-case letters, digits and `-`, at most 63 characters.
pub(super) fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out: String = out.trim_end_matches('-').chars().take(63).collect();
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() { "rule".into() } else { out }
}
