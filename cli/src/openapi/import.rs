//! `openapi import`: an AuthPolicy whose rules come from an OpenAPI document.
//!
//! Per operation, the security requirement in force (the operation's own `security`, else
//! its path item's, which is not standard OpenAPI and is reported, else the document's):
//! - absent, `[]`, or a list holding `{}` (anonymous allowed): a public rule;
//! - OAuth2 / OpenID Connect / HTTP bearer alternatives: `require` (one alternative) or
//!   `anyOf` (several; a list of requirement objects is OR), any valid token when an
//!   alternative names no scope;
//! - alternatives of other scheme types (apiKey, basic, mutualTLS, unknown): reported, never
//!   dropped silently. Next to a token in the same requirement object (AND) the app keeps
//!   checking them; as an alternative of their own they are left out (a token is then
//!   required); an operation with nothing but such alternatives gets no rule (the default
//!   action, Deny, applies) and is an error.
//!
//! Path templates become patterns: `{item_id}` (or a partial `{name}.json`) matches one
//! segment.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use scopegate_crds::v1alpha1::AuthPolicy;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{METHODS, parse_document, template_to_pattern, version};
use crate::output::{self, Format};
use crate::{Failure, Global, fetch};

/// `openapi import DOCUMENT`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The OpenAPI document (JSON or YAML; a file, an https URL, or `-`).
    document: String,
    /// Pods the policy protects, as `key=value[,key=value]`.
    #[arg(long, required = true)]
    selector: String,
    /// The policy's name (default: from the document's title).
    #[arg(long)]
    name: Option<String>,
    /// Trust another AuthPolicy's issuer: `NAME` or `NAMESPACE/NAME`.
    #[arg(
        long,
        conflicts_with = "self_url",
        required_unless_present = "self_url"
    )]
    issuer_ref: Option<String>,
    /// Make the policy its own issuer at this https URL; the vocabulary comes from the
    /// document's OAuth2 scopes.
    #[arg(long)]
    self_url: Option<String>,
    /// With --self-url: the issuer Service as `NAME:PORT` (default: the policy's name, 443).
    #[arg(long)]
    self_service: Option<String>,
    /// Audiences tokens must carry (repeatable; needed with --issuer-ref).
    #[arg(long)]
    audience: Vec<String>,
    /// The app container's port.
    #[arg(long, default_value_t = 8080)]
    upstream_port: u16,
    /// Prefixed to every document path (when the sidecar sees the paths under a prefix that
    /// the document's `servers` add).
    #[arg(long, default_value = "")]
    path_prefix: String,
    /// Exit 0 even when operations could not be mapped (they are still reported).
    #[arg(long)]
    allow_unmapped: bool,
}

/// Something the import could not map as written.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    /// `error` (an operation left without a rule) or `warning`.
    pub severity: &'static str,
    /// `METHOD /path` of the document.
    pub operation: String,
    /// What happened.
    pub message: String,
}

/// What an operation needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Public,
    AnyToken,
    All(Vec<String>),
    Any(Vec<Vec<String>>),
}

/// The import's result: the AuthPolicy document and the notes.
#[derive(Debug)]
pub struct Imported {
    /// The AuthPolicy, as a document to apply.
    pub policy: Value,
    /// Everything reported.
    pub notes: Vec<Note>,
}

/// Options of an import besides the document.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Policy name.
    pub name: Option<String>,
    /// Namespace in metadata.
    pub namespace: Option<String>,
    /// Selector labels.
    pub selector: BTreeMap<String, String>,
    /// `policyRef` target: (namespace, name).
    pub issuer_ref: Option<(Option<String>, String)>,
    /// Self issuer URL and Service.
    pub self_issuer: Option<(String, String, u16)>,
    /// Audiences.
    pub audiences: Vec<String>,
    /// App port.
    pub upstream_port: u16,
    /// Prefix of every path.
    pub path_prefix: String,
}

/// Runs `openapi import`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let bytes = fetch::read(&args.document, None).await?;
    let doc = parse_document(&bytes, &args.document)?;
    let mut selector = BTreeMap::new();
    for pair in args.selector.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--selector {pair:?}: expected key=value"))?;
        selector.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let issuer_ref = args.issuer_ref.as_ref().map(|r| match r.split_once('/') {
        Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
        None => (None, r.clone()),
    });
    let self_issuer = match &args.self_url {
        Some(url) => {
            let (service, port) = match &args.self_service {
                Some(s) => {
                    let (n, p) = s
                        .split_once(':')
                        .context("--self-service: expected NAME:PORT")?;
                    (n.to_owned(), p.parse().context("--self-service: port")?)
                }
                None => (String::new(), 443),
            };
            Some((url.clone(), service, port))
        }
        None => None,
    };
    let options = Options {
        name: args.name,
        namespace: global.namespace.clone(),
        selector,
        issuer_ref,
        self_issuer,
        audiences: args.audience,
        upstream_port: args.upstream_port,
        path_prefix: args.path_prefix,
    };
    let imported = import(&doc, &options)?;
    for note in &imported.notes {
        eprintln!("{}: {}: {}", note.severity, note.operation, note.message);
    }
    match global.output {
        Format::Json => output::emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&imported.policy)?
        ))?,
        Format::Table | Format::Yaml => output::emit(&serde_yaml_ng::to_string(&imported.policy)?)?,
    }
    let errors = imported
        .notes
        .iter()
        .filter(|n| n.severity == "error")
        .count();
    if errors > 0 && !args.allow_unmapped {
        return Err(Failure::Findings(format!("{errors} operations not mapped")).into());
    }
    Ok(())
}

/// Imports a document.
pub fn import(doc: &Value, options: &Options) -> anyhow::Result<Imported> {
    version(doc)?;
    let schemes = doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let root_security = doc.get("security").and_then(Value::as_array);
    let mut notes = Vec::new();
    let mut vocabulary: BTreeMap<String, String> = BTreeMap::new();
    for scheme in schemes.values() {
        if let Some(flows) = scheme.get("flows").and_then(Value::as_object) {
            for flow in flows.values() {
                for (scope, description) in flow
                    .get("scopes")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    vocabulary
                        .entry(scope.clone())
                        .or_insert_with(|| description.as_str().unwrap_or_default().to_owned());
                }
            }
        }
    }
    // (pattern, need) -> (methods, first operationId)
    let mut rules: BTreeMap<(String, Need), (Vec<String>, Option<String>)> = BTreeMap::new();
    let mut order: Vec<(String, Need)> = Vec::new();
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (path, item) in &paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        let path_security = item.get("security").and_then(Value::as_array);
        if path_security.is_some() {
            notes.push(Note {
                severity: "warning",
                operation: path.clone(),
                message: "a path item has no `security` field in OpenAPI; taken as the default of its operations".into(),
            });
        }
        let mut operations: Vec<(String, &Map<String, Value>)> = METHODS
            .iter()
            .filter_map(|m| {
                item.get(*m)
                    .and_then(Value::as_object)
                    .map(|op| (m.to_ascii_uppercase(), op))
            })
            .collect();
        for (method, op) in item
            .get("additionalOperations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(op) = op.as_object() {
                operations.push((method.to_ascii_uppercase(), op));
            }
        }
        if operations.is_empty() {
            continue;
        }
        let full = format!("{}{path}", options.path_prefix.trim_end_matches('/'));
        let Some((pattern, partial)) = template_to_pattern(&full) else {
            for (method, _) in &operations {
                notes.push(Note {
                    severity: "error",
                    operation: format!("{method} {path}"),
                    message: "the path holds characters a rule pattern cannot (percent-encoding, ';', dot or empty segments): no rule; the default action applies".into(),
                });
            }
            continue;
        };
        if partial {
            notes.push(Note {
                severity: "warning",
                operation: path.clone(),
                message: format!(
                    "a template inside a segment: {pattern} matches any value of that whole segment"
                ),
            });
        }
        for (method, op) in operations {
            let operation = format!("{method} {path}");
            let known = matches!(
                method.as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
            );
            if !known {
                notes.push(Note {
                    severity: "error",
                    operation: operation.clone(),
                    message: format!("method {method} cannot be named in a rule: no rule; the default action applies"),
                });
                continue;
            }
            let security = op
                .get("security")
                .and_then(Value::as_array)
                .or(path_security)
                .or(root_security);
            let Some(need) = need_of(security, &schemes, &operation, &mut notes) else {
                continue;
            };
            let key = (pattern.clone(), need);
            let entry = rules.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                (
                    Vec::new(),
                    op.get("operationId")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                )
            });
            if !entry.0.contains(&method) {
                entry.0.push(method);
            }
        }
    }
    let mut names: Vec<String> = Vec::new();
    let mut rule_docs = Vec::new();
    for key in &order {
        let (methods, operation_id) = &rules[key];
        let (pattern, need) = key;
        let base = operation_id
            .clone()
            .unwrap_or_else(|| format!("{}{}", methods[0].to_ascii_lowercase(), pattern));
        let mut name = slug(&base);
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{}-{n}", slug(&base).chars().take(58).collect::<String>());
            n += 1;
        }
        names.push(name.clone());
        let mut rule = Map::new();
        rule.insert("name".into(), json!(name));
        let mut methods = methods.clone();
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
        rule_docs.push(Value::Object(rule));
    }
    let name = options.name.clone().unwrap_or_else(|| {
        let title = doc
            .pointer("/info/title")
            .and_then(Value::as_str)
            .unwrap_or("app");
        slug(title)
    });
    let issuer = match (&options.issuer_ref, &options.self_issuer) {
        (Some((namespace, reference)), _) => {
            let mut r = json!({"name": reference});
            if let Some(ns) = namespace {
                r["namespace"] = json!(ns);
            }
            json!({"policyRef": r})
        }
        (None, Some((url, service, port))) => {
            let service = if service.is_empty() {
                name.clone()
            } else {
                service.clone()
            };
            json!({"self": {"url": url, "service": {"name": service, "port": port}, "scopes": vocabulary}})
        }
        (None, None) => bail!("give --issuer-ref or --self-url"),
    };
    let mut metadata = json!({"name": name});
    if let Some(ns) = &options.namespace {
        metadata["namespace"] = json!(ns);
    }
    let mut spec = json!({
        "selector": {"matchLabels": options.selector},
        "issuer": issuer,
        "upstream": {"port": options.upstream_port},
        "defaultAction": "Deny",
        "rules": rule_docs,
    });
    if !options.audiences.is_empty() {
        spec["audiences"] = json!(options.audiences);
    }
    let policy = json!({
        "apiVersion": "scopegate.dev/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": metadata,
        "spec": spec,
    });
    // The document must be an AuthPolicy the API would take in shape.
    serde_json::from_value::<AuthPolicy>(policy.clone())
        .context("the imported policy does not parse as an AuthPolicy")?;
    Ok(Imported { policy, notes })
}

/// What a security requirement list asks of a request; `None`: nothing scopegate can verify
/// (reported as an error).
fn need_of(
    security: Option<&Vec<Value>>,
    schemes: &Map<String, Value>,
    operation: &str,
    notes: &mut Vec<Note>,
) -> Option<Need> {
    let Some(list) = security else {
        return Some(Need::Public);
    };
    let mut alternatives: Vec<Vec<String>> = Vec::new();
    let mut anonymous = false;
    let mut dropped = Vec::new();
    for requirement in list {
        let Some(requirement) = requirement.as_object() else {
            notes.push(Note {
                severity: "warning",
                operation: operation.into(),
                message: "a security requirement that is not an object: ignored".into(),
            });
            continue;
        };
        if requirement.is_empty() {
            anonymous = true;
            continue;
        }
        let mut token: Option<Vec<String>> = None;
        let mut others = Vec::new();
        for (scheme_name, scopes) in requirement {
            let scopes: Vec<String> = scopes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            let scheme = schemes.get(scheme_name);
            let kind = scheme.and_then(|s| s.get("type")).and_then(Value::as_str);
            let http_scheme = scheme
                .and_then(|s| s.get("scheme"))
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase);
            match (kind, http_scheme.as_deref()) {
                (Some("oauth2" | "openIdConnect"), _) => {
                    token.get_or_insert_with(Vec::new).extend(scopes)
                }
                (Some("http"), Some("bearer")) => {
                    if !scopes.is_empty() {
                        notes.push(Note {
                            severity: "warning",
                            operation: operation.into(),
                            message: format!("bearer scheme {scheme_name:?} lists roles {scopes:?}: taken as scopes"),
                        });
                    }
                    token.get_or_insert_with(Vec::new).extend(scopes)
                }
                (None, _) if scheme.is_none() => others.push(format!(
                    "{scheme_name:?} (not declared in components.securitySchemes)"
                )),
                (kind, http) => others.push(format!(
                    "{scheme_name:?} (type {}{})",
                    kind.unwrap_or("missing"),
                    http.map(|h| format!(", scheme {h}")).unwrap_or_default()
                )),
            }
        }
        match (token, others.is_empty()) {
            (Some(scopes), true) => alternatives.push(scopes),
            (Some(scopes), false) => {
                notes.push(Note {
                    severity: "warning",
                    operation: operation.into(),
                    message: format!(
                        "needs a token and also {}: scopegate verifies the token, the app must keep checking the rest",
                        others.join(", ")
                    ),
                });
                alternatives.push(scopes);
            }
            (None, _) => dropped.push(others.join(" and ")),
        }
    }
    if anonymous {
        return Some(Need::Public);
    }
    if list.is_empty() {
        return Some(Need::Public);
    }
    if alternatives.is_empty() {
        notes.push(Note {
            severity: "error",
            operation: operation.into(),
            message: format!(
                "only schemes scopegate cannot verify: {}: no rule (the default action, Deny, applies); put a rule for it by hand",
                dropped.join("; ")
            ),
        });
        return None;
    }
    for d in &dropped {
        notes.push(Note {
            severity: "warning",
            operation: operation.into(),
            message: format!(
                "alternative {d} is not verified by scopegate: left out, a token is required"
            ),
        });
    }
    for a in &mut alternatives {
        a.sort();
        a.dedup();
    }
    alternatives.sort();
    alternatives.dedup();
    if alternatives.iter().any(Vec::is_empty) {
        return Some(Need::AnyToken);
    }
    if alternatives.len() == 1 {
        return alternatives.pop().map(Need::All);
    }
    if alternatives.len() > 8 {
        notes.push(Note {
            severity: "error",
            operation: operation.into(),
            message: "more than 8 alternative scope sets (anyOf holds at most 8): no rule".into(),
        });
        return None;
    }
    Some(Need::Any(alternatives))
}

/// A rule or policy name: lower-case letters, digits and `-`, at most 63 characters.
fn slug(text: &str) -> String {
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
