//! `openapi export`: a policy's OAuth2 security scheme (authorization code with PKCE, client
//! credentials, the issuer's URLs, its vocabulary as scopes) and each operation's `security`
//! as the sidecar decides it: on its own (operations made from the rules' patterns), or
//! merged into the app's document so that Swagger UI's Authorize button works against
//! scopegate's issuer.
//!
//! Each operation's decision is [`Policy::route`] at the operation's path with every
//! template segment filled by a sentinel that equals no literal of the rules: the rule that
//! takes any value of the parameter.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use scopegate_core::config::{RouteRule, SidecarConfig};
use scopegate_core::path::RequestPath;
use scopegate_core::policy::{Policy, Requirement, Route, ScopeRequirement};
use scopegate_crds::v1alpha1::AuthPolicy;
use serde_json::{Map, Value, json};

use super::{METHODS, parse_document, version};
use crate::explain::rule_label;
use crate::output::{self, Format};
use crate::samples;
use crate::source::{self, PolicyFlags};
use crate::{Global, fetch};

/// `openapi export [POLICY]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy (omit with -f holding one policy, or --config).
    name: Option<String>,
    #[command(flatten)]
    policy: PolicyFlags,
    /// The app's OpenAPI document to merge into (JSON or YAML; file, https URL or `-`).
    #[arg(long)]
    merge: Option<String>,
    /// Key of the scheme under components.securitySchemes.
    #[arg(long, default_value = "scopegate")]
    scheme_name: String,
    /// The issuer's browser-facing base URL, when the policy does not say it (a policyRef or
    /// external issuer, or a publicUrl to override).
    #[arg(long)]
    issuer_url: Option<String>,
    /// Prefixed to every document path before rules are asked (the path the sidecar sees).
    #[arg(long, default_value = "")]
    path_prefix: String,
}

/// The issuer a scheme points at.
#[derive(Debug, Clone)]
pub struct IssuerInfo {
    /// Browser-facing base URL (publicUrl, else url).
    pub base: String,
    /// The issuer identifier.
    pub url: String,
    /// Vocabulary: scope → description.
    pub scopes: BTreeMap<String, String>,
}

/// Runs `openapi export`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let loaded = args.policy.load(global, args.name.as_deref()).await?;
    let issuer = issuer_info(global, &args, &loaded.config, loaded.policy.as_ref()).await?;
    let doc = match &args.merge {
        Some(location) => {
            let bytes = fetch::read(location, None).await?;
            let doc = parse_document(&bytes, location)?;
            version(&doc)?;
            doc
        }
        None => fragment(&loaded.config),
    };
    let out = apply(
        doc,
        &loaded.config,
        &issuer,
        &args.scheme_name,
        &args.path_prefix,
    )?;
    match global.output {
        Format::Yaml => output::emit(&serde_yaml_ng::to_string(&out)?),
        Format::Table | Format::Json => {
            output::emit(&format!("{}\n", serde_json::to_string_pretty(&out)?))
        }
    }
}

async fn issuer_info(
    global: &Global,
    args: &Args,
    config: &SidecarConfig,
    policy: Option<&AuthPolicy>,
) -> anyhow::Result<IssuerInfo> {
    let mut vocabulary = BTreeMap::new();
    let mut url = None;
    let mut public = None;
    if let Some(role) = &config.issuer {
        vocabulary = role.scopes.clone();
        url = Some(role.url.clone());
        public = role.public_url.clone();
    } else if let Some(reference) = policy.and_then(|p| p.spec.issuer.policy_ref.as_ref()) {
        let namespace = reference
            .namespace
            .clone()
            .or_else(|| policy.and_then(|p| p.metadata.namespace.clone()));
        let found = if let Some(path) = &args.policy.file {
            source::read_policies(path)?
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some(reference.name.as_str()))
        } else if args.policy.offline() {
            None
        } else {
            let cluster = crate::cluster::connect(global).await?;
            let ns = namespace.unwrap_or_else(|| cluster.namespace.clone());
            kube::Api::<AuthPolicy>::namespaced(cluster.client.clone(), &ns)
                .get_opt(&reference.name)
                .await?
        };
        if let Some(own) = found.as_ref().and_then(|p| p.spec.issuer.self_.as_ref()) {
            vocabulary = own.scopes.clone();
            url = Some(own.url.clone());
            public = own.public_url.clone();
        }
    }
    if let Some(given) = &args.issuer_url {
        public = Some(given.clone());
        url.get_or_insert_with(|| given.clone());
    }
    let Some(url) = url else {
        bail!(
            "the issuer's URLs are unknown: give --issuer-url (an external issuer, or a policyRef that cannot be read)"
        );
    };
    if vocabulary.is_empty() {
        // The scopes the rules name, without descriptions.
        for rule in &config.rules {
            use scopegate_core::config::RuleAction;
            let named: Vec<&String> = match &rule.action {
                RuleAction::RequireAll { scopes } => scopes.iter().collect(),
                RuleAction::RequireAny { scope_sets } => scope_sets.iter().flatten().collect(),
                _ => Vec::new(),
            };
            for s in named {
                vocabulary.entry(s.clone()).or_default();
            }
        }
    }
    Ok(IssuerInfo {
        base: public
            .unwrap_or_else(|| url.clone())
            .trim_end_matches('/')
            .to_owned(),
        url,
        scopes: vocabulary,
    })
}

/// The security scheme of an issuer.
pub fn scheme(issuer: &IssuerInfo, openapi_version: &str) -> Value {
    let scopes: Map<String, Value> = issuer
        .scopes
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!(if v.is_empty() { k.as_str() } else { v.as_str() }),
            )
        })
        .collect();
    let token_url = format!("{}/oauth2/token", issuer.base);
    let mut scheme = json!({
        "type": "oauth2",
        "description": format!(
            "Access tokens of the scopegate issuer {}. The authorization-code flow requires PKCE with S256 \
             (Swagger UI: initOAuth usePkceWithAuthorizationCodeGrant true) and a registered public OAuthClient; \
             client credentials are for machine clients.",
            issuer.url
        ),
        "flows": {
            "authorizationCode": {
                "authorizationUrl": format!("{}/oauth2/authorize", issuer.base),
                "tokenUrl": token_url,
                "refreshUrl": token_url,
                "scopes": scopes,
            },
            "clientCredentials": {
                "tokenUrl": token_url,
                "scopes": scopes,
            }
        },
        "x-scopegate-pkce": "S256",
    });
    if openapi_version.starts_with("3.2.") {
        let prefix = scopegate_core::endpoints::path_prefix(&issuer.url).unwrap_or_default();
        let origin = issuer
            .base
            .split_once("://")
            .map(|(scheme, rest)| {
                format!("{scheme}://{}", rest.split('/').next().unwrap_or_default())
            })
            .unwrap_or_default();
        scheme["oauth2MetadataUrl"] = json!(format!(
            "{origin}/.well-known/oauth-authorization-server{prefix}"
        ));
    }
    scheme
}

/// A document holding one operation per rule pattern and method, for `export` without
/// `--merge`. `*` becomes a path parameter; a final `/**` stands for its prefix.
pub fn fragment(config: &SidecarConfig) -> Value {
    let mut paths = Map::new();
    for rule in &config.rules {
        for pattern in &rule.paths {
            let (body, below) = match pattern.strip_suffix("/**") {
                Some(body) => (if body.is_empty() { "/" } else { body }, true),
                None => (pattern.as_str(), false),
            };
            let mut n = 0;
            let mut parameters = Vec::new();
            let template: String = if body == "/" {
                "/".into()
            } else {
                body.split('/')
                    .skip(1)
                    .map(|s| {
                        if s == "*" {
                            n += 1;
                            parameters.push(json!({"name": format!("p{n}"), "in": "path", "required": true, "schema": {"type": "string"}}));
                            format!("/{{p{n}}}")
                        } else {
                            format!("/{s}")
                        }
                    })
                    .collect()
            };
            let methods: Vec<String> = if rule.methods.is_empty() {
                ["get", "post", "put", "patch", "delete"]
                    .map(String::from)
                    .to_vec()
            } else {
                rule.methods
                    .iter()
                    .map(|m| m.to_ascii_lowercase())
                    .filter(|m| METHODS.contains(&m.as_str()))
                    .collect()
            };
            let item = paths
                .entry(template)
                .or_insert_with(|| json!({}))
                .as_object_mut();
            let Some(item) = item else { continue };
            if !parameters.is_empty() {
                item.insert("parameters".into(), json!(parameters));
            }
            for m in methods {
                let mut op = json!({"responses": {"200": {"description": "Forwarded to the app"}}});
                if below {
                    op["description"] = json!(format!("And every path below it ({pattern})."));
                }
                item.entry(m).or_insert(op);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("{}/{} (scopegate)", config.policy.namespace, config.policy.name),
            "version": config.policy.generation.to_string(),
        },
        "paths": paths,
    })
}

/// Sets the scheme and every operation's `security` in `doc`.
pub fn apply(
    mut doc: Value,
    config: &SidecarConfig,
    issuer: &IssuerInfo,
    scheme_name: &str,
    path_prefix: &str,
) -> anyhow::Result<Value> {
    let openapi_version = version(&doc)?.to_owned();
    let policy = Policy::from_config(config).context("the policy's rules do not compile")?;
    let sentinel = samples::sentinel(
        config
            .rules
            .iter()
            .flat_map(|r| r.paths.iter())
            .map(String::as_str),
    );
    let root = doc
        .as_object_mut()
        .context("the document is not an object")?;
    add_scheme(root, scheme_name, scheme(issuer, &openapi_version))?;
    let Some(paths) = root.get_mut("paths").and_then(Value::as_object_mut) else {
        return Ok(doc);
    };
    for (path, item) in paths.iter_mut() {
        let full = format!(
            "{}{}",
            path_prefix.trim_end_matches('/'),
            sample_path(path, &sentinel)
        );
        let Ok(request_path) = RequestPath::parse(&full) else {
            continue;
        };
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            let route = policy.route(&method.to_ascii_uppercase(), request_path.route());
            set_security(op, &route, &config.rules, scheme_name);
        }
    }
    Ok(doc)
}

/// Puts the scheme under `components.securitySchemes`, making the objects that are missing.
fn add_scheme(root: &mut Map<String, Value>, name: &str, scheme: Value) -> anyhow::Result<()> {
    let components = root.entry("components").or_insert_with(|| json!({}));
    let schemes = components
        .as_object_mut()
        .context("components is not an object")?
        .entry("securitySchemes")
        .or_insert_with(|| json!({}));
    schemes
        .as_object_mut()
        .context("components.securitySchemes is not an object")?
        .insert(name.to_owned(), scheme);
    Ok(())
}

/// A document path with every templated segment replaced by the sentinel: a request the
/// rule that takes any value of the parameter decides.
fn sample_path(path: &str, sentinel: &str) -> String {
    path.split('/')
        .map(|s| if s.contains('{') { sentinel } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// An operation's `security` as the route decides it, `x-scopegate` naming the rule, and
/// the 401 and 403 responses of a route that needs a token.
fn set_security(
    op: &mut Map<String, Value>,
    route: &Route<'_>,
    rules: &[RouteRule],
    scheme_name: &str,
) {
    let requirement = |scopes: &[String]| json!({scheme_name: scopes});
    let (security, deny) = match route.requirement {
        Requirement::Public => (json!([]), false),
        Requirement::Token(ScopeRequirement::None) => (json!([requirement(&[])]), false),
        Requirement::Token(ScopeRequirement::All(s)) => (json!([requirement(s)]), false),
        Requirement::Token(ScopeRequirement::Any(sets)) => (
            Value::Array(sets.iter().map(|s| requirement(s)).collect()),
            false,
        ),
        Requirement::Deny => (json!([requirement(&[])]), true),
    };
    op.insert("security".into(), security);
    let mut x = json!({
        "rule": route.rule_index.map_or_else(|| "defaultAction".to_owned(), |i| rule_label(rules, i)),
    });
    if deny {
        x["decision"] = json!("deny");
    }
    op.insert("x-scopegate".into(), x);
    if !matches!(route.requirement, Requirement::Public) {
        let responses = op.entry("responses").or_insert_with(|| json!({}));
        if let Some(responses) = responses.as_object_mut() {
            responses.entry("401").or_insert_with(|| json!({
                "description": "No valid token: WWW-Authenticate: Bearer, with error=\"invalid_token\" for a bad one (RFC 6750)"
            }));
            responses.entry("403").or_insert_with(|| json!({
                "description": "The token lacks a scope: WWW-Authenticate: Bearer error=\"insufficient_scope\", scope=\"...\" names what is needed"
            }));
        }
    }
}
