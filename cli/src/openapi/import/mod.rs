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
//!
//! The operations are read here; [`security`] decides what each needs, [`document`] writes
//! the AuthPolicy.

mod document;
mod security;

use std::collections::BTreeMap;

use anyhow::Context as _;
use scopegate_crds::v1alpha1::AuthPolicy;
use serde::Serialize;
use serde_json::{Map, Value};

use document::{issuer_document, policy_document, rule_document, slug, unique_name};
use security::{Need, need_of};

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
    let vocabulary = vocabulary(&schemes);
    let mut importer = Importer {
        schemes: &schemes,
        root_security: doc.get("security").and_then(Value::as_array),
        path_prefix: &options.path_prefix,
        rules: BTreeMap::new(),
        order: Vec::new(),
        notes: Vec::new(),
    };
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (path, item) in &paths {
        if let Some(item) = item.as_object() {
            importer.path_item(path, item);
        }
    }
    let rule_docs = importer.rule_documents();
    let name = options.name.clone().unwrap_or_else(|| {
        let title = doc
            .pointer("/info/title")
            .and_then(Value::as_str)
            .unwrap_or("app");
        slug(title)
    });
    let issuer = issuer_document(options, &name, vocabulary)?;
    let policy = policy_document(options, name, issuer, rule_docs);
    // The document must be an AuthPolicy the API would take in shape.
    serde_json::from_value::<AuthPolicy>(policy.clone())
        .context("the imported policy does not parse as an AuthPolicy")?;
    Ok(Imported {
        policy,
        notes: importer.notes,
    })
}

/// The scopes of every OAuth2 flow of every scheme, with the first description given.
fn vocabulary(schemes: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut vocabulary = BTreeMap::new();
    let flows = schemes
        .values()
        .filter_map(|scheme| scheme.get("flows").and_then(Value::as_object))
        .flat_map(|flows| flows.values());
    for flow in flows {
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
    vocabulary
}

/// The operations of a path item: the standard methods, then `additionalOperations`.
fn operations(item: &Map<String, Value>) -> Vec<(String, &Map<String, Value>)> {
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
    operations
}

/// The rules an import collects, one per (pattern, need), and the notes it makes.
struct Importer<'a> {
    schemes: &'a Map<String, Value>,
    root_security: Option<&'a Vec<Value>>,
    path_prefix: &'a str,
    /// (pattern, need) -> (methods, first operationId).
    rules: BTreeMap<(String, Need), (Vec<String>, Option<String>)>,
    /// The keys of `rules` in the order the document first names them.
    order: Vec<(String, Need)>,
    notes: Vec<Note>,
}

impl Importer<'_> {
    /// Maps the operations of one path item to rules, or reports why it cannot.
    fn path_item(&mut self, path: &str, item: &Map<String, Value>) {
        let path_security = item.get("security").and_then(Value::as_array);
        if path_security.is_some() {
            self.note("warning", path.to_owned(), "a path item has no `security` field in OpenAPI; taken as the default of its operations".into());
        }
        let operations = operations(item);
        if operations.is_empty() {
            return;
        }
        let full = format!("{}{path}", self.path_prefix.trim_end_matches('/'));
        let Some((pattern, partial)) = template_to_pattern(&full) else {
            for (method, _) in &operations {
                self.note("error", format!("{method} {path}"), "the path holds characters a rule pattern cannot (percent-encoding, ';', dot or empty segments): no rule; the default action applies".into());
            }
            return;
        };
        if partial {
            self.note(
                "warning",
                path.to_owned(),
                format!(
                    "a template inside a segment: {pattern} matches any value of that whole segment"
                ),
            );
        }
        for (method, op) in operations {
            let operation = format!("{method} {path}");
            if !RULE_METHODS.contains(&method.as_str()) {
                self.note("error", operation, format!("method {method} cannot be named in a rule: no rule; the default action applies"));
                continue;
            }
            let security = op
                .get("security")
                .and_then(Value::as_array)
                .or(path_security)
                .or(self.root_security);
            let Some(need) = need_of(security, self.schemes, &operation, &mut self.notes) else {
                continue;
            };
            let operation_id = op.get("operationId").and_then(Value::as_str);
            self.add(pattern.clone(), need, method, operation_id);
        }
    }

    /// Adds `method` to the rule for (pattern, need), made on first sight.
    fn add(&mut self, pattern: String, need: Need, method: String, operation_id: Option<&str>) {
        let key = (pattern, need);
        let entry = self.rules.entry(key.clone()).or_insert_with(|| {
            self.order.push(key);
            (Vec::new(), operation_id.map(str::to_owned))
        });
        if !entry.0.contains(&method) {
            entry.0.push(method);
        }
    }

    fn note(&mut self, severity: &'static str, operation: String, message: String) {
        self.notes.push(Note {
            severity,
            operation,
            message,
        });
    }

    /// The rules as AuthPolicy rule documents, each with a unique name.
    fn rule_documents(&self) -> Vec<Value> {
        let mut names: Vec<String> = Vec::new();
        let mut rule_docs = Vec::new();
        for key in &self.order {
            let (methods, operation_id) = &self.rules[key];
            let (pattern, need) = key;
            let base = operation_id
                .clone()
                .unwrap_or_else(|| format!("{}{}", methods[0].to_ascii_lowercase(), pattern));
            let name = unique_name(&base, &names);
            names.push(name.clone());
            rule_docs.push(rule_document(name, methods, pattern, need));
        }
        rule_docs
    }
}

/// The methods a rule can name.
const RULE_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
