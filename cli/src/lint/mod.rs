//! `lint`: checks of a policy's rules that the API server cannot make, each finding with the
//! rules it concerns and a fix. Which rule decides a request is asked of the sidecar's own
//! matcher ([`Policy::route`]) at sample paths of every pattern ([`crate::samples`]).
//!
//! Codes (stable):
//! - SG100 error: a rule never decides any request (another rule always wins).
//! - SG101 error: a public rule takes requests a protected rule names.
//! - SG102 warning: a public rule carves paths out of a protected rule.
//! - SG103 error: a rule requires a scope outside the issuer's vocabulary.
//! - SG104 error: a rate limit never counts a request (only issuer endpoints).
//! - SG105 warning: a rate limit keyed by subject covers only routes without a token.
//! - SG106 warning: `defaultAction: Allow` leaves every unmatched route public.

mod checks;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use scopegate_core::config::{RuleAction, SidecarConfig};
use scopegate_core::policy::Policy;
use scopegate_crds::v1alpha1::AuthPolicy;
use serde::Serialize;

use checks::{CarveOut, Probe};

use crate::output;
use crate::source::{self, Loaded, PolicyFlags};
use crate::{Failure, Global};

/// `lint [POLICY...]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policies to check (default: every AuthPolicy of the namespace, or of the file).
    names: Vec<String>,
    #[command(flatten)]
    policy: PolicyFlags,
    /// The scope vocabulary of a policyRef or external issuer: a file of `scope: description`
    /// lines (YAML map), when the issuer's AuthPolicy cannot be read.
    #[arg(long)]
    vocabulary: Option<std::path::PathBuf>,
}

/// How bad a finding is.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Worth a look.
    Warning,
    /// Wrong: lint exits 1.
    Error,
}

/// One finding.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Stable code.
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// namespace/name of the policy.
    pub policy: String,
    /// The rules (or rate limits) concerned.
    pub rules: Vec<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The report.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Report {
    findings: Vec<Finding>,
    errors: usize,
    warnings: usize,
}

/// Runs `lint`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let mut loaded = if args.names.is_empty() {
        source::namespace_policies(global, &args.policy).await?
    } else {
        let mut out = Vec::new();
        for name in &args.names {
            out.push(args.policy.load(global, Some(name)).await?);
        }
        out
    };
    let extra_vocabulary = args
        .vocabulary
        .as_ref()
        .map(|path| -> anyhow::Result<BTreeMap<String, String>> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{}: not a map of scope: description", path.display()))
        })
        .transpose()?;
    // A policyRef's vocabulary: the referenced policy, from the same file or the cluster.
    let file_policies: Vec<AuthPolicy> = loaded.iter().filter_map(|l| l.policy.clone()).collect();
    let mut findings = Vec::new();
    for item in &mut loaded {
        let vocabulary = match vocabulary_of(global, &args.policy, item, &file_policies).await {
            Some(v) => Some(v),
            None => extra_vocabulary.clone(),
        };
        findings.extend(lint(&item.config, vocabulary.as_ref()));
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.code.cmp(b.code)));
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    let report = Report {
        findings,
        errors,
        warnings,
    };
    output::print(global.output, "LintReport", &report, || table(&report))?;
    if errors > 0 {
        return Err(Failure::Findings(format!("{errors} errors")).into());
    }
    Ok(())
}

/// The scopes a policy's tokens can carry: its own vocabulary, or that of the policy its
/// `policyRef` names (from the same file, else the cluster).
async fn vocabulary_of(
    global: &Global,
    flags: &PolicyFlags,
    item: &Loaded,
    file_policies: &[AuthPolicy],
) -> Option<BTreeMap<String, String>> {
    if let Some(role) = &item.config.issuer {
        return Some(role.scopes.clone());
    }
    let policy = item.policy.as_ref()?;
    if let Some(own) = &policy.spec.issuer.self_ {
        return Some(own.scopes.clone());
    }
    let reference = policy.spec.issuer.policy_ref.as_ref()?;
    let namespace = reference
        .namespace
        .clone()
        .or_else(|| policy.metadata.namespace.clone());
    if let Some(found) = file_policies.iter().find(|p| {
        p.metadata.name.as_deref() == Some(reference.name.as_str())
            && (namespace.is_none() || p.metadata.namespace == namespace)
    }) {
        return found.spec.issuer.self_.as_ref().map(|s| s.scopes.clone());
    }
    if flags.offline() {
        return None;
    }
    let cluster = crate::cluster::connect(global).await.ok()?;
    let api: kube::Api<AuthPolicy> = kube::Api::namespaced(
        cluster.client.clone(),
        namespace.as_deref().unwrap_or(&cluster.namespace),
    );
    let issuer = api.get_opt(&reference.name).await.ok()??;
    issuer.spec.issuer.self_.map(|s| s.scopes)
}

/// Lints one rendered policy against a vocabulary (`None`: unknown, not checked).
pub fn lint(config: &SidecarConfig, vocabulary: Option<&BTreeMap<String, String>>) -> Vec<Finding> {
    let name = format!("{}/{}", config.policy.namespace, config.policy.name);
    let Ok(policy) = Policy::from_config(config) else {
        return vec![Finding {
            code: "SG000",
            severity: Severity::Error,
            policy: name,
            rules: Vec::new(),
            message: "the rules do not compile".into(),
            fix: "fix the rule the error names; the sidecar keeps its last good config meanwhile"
                .into(),
        }];
    };
    let probe = Probe::new(config, policy, name);
    let mut findings = Vec::new();
    // (public, protected) pairs already reported as SG101: not again as a carve-out.
    let mut taken_pairs: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut carve_outs: Vec<CarveOut> = Vec::new();
    for (index, rule) in config.rules.iter().enumerate() {
        let samples = probe.samples(&rule.methods, &rule.paths);
        let routed = probe.route_samples(index, &samples);
        if !routed.taken_by_public.is_empty() {
            let publics: BTreeSet<usize> = routed.taken_by_public.iter().map(|(w, _)| *w).collect();
            taken_pairs.extend(publics.iter().map(|&p| (p, index)));
            findings.push(probe.public_takes_protected(index, &publics, &routed.taken_by_public));
        }
        findings.extend(probe.never_decides(index, &routed));
        if rule.action == RuleAction::Public {
            carve_outs.extend(probe.carve_outs(index, &samples));
        }
        if let Some(vocabulary) = vocabulary {
            findings.extend(probe.unknown_scopes(index, vocabulary));
        }
    }
    findings.extend(
        carve_outs
            .iter()
            .filter(|c| !taken_pairs.contains(&(c.public, c.protected)))
            .map(|c| probe.carve_out(c)),
    );
    for limit in &config.rate_limits {
        findings.extend(probe.rate_limit(limit));
    }
    findings.extend(probe.default_allow());
    findings
}

fn table(report: &Report) -> String {
    if report.findings.is_empty() {
        return "no findings\n".into();
    }
    let mut out = String::new();
    for f in &report.findings {
        let severity = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "{} {severity} [{}] {}\n",
            f.code, f.policy, f.message
        ));
        out.push_str(&format!("      fix: {}\n", f.fix));
    }
    out.push_str(&format!(
        "{} errors, {} warnings\n",
        report.errors, report.warnings
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(rules: serde_json::Value, extra: serde_json::Value) -> SidecarConfig {
        let mut doc = json!({
            "apiVersion": "sidecar.scopegate.dev/v1",
            "policy": {"namespace": "shop", "name": "orders", "generation": 1},
            "listen": {"port": 15080},
            "upstream": {"port": 8080},
            "verify": {"issuers": [], "audiences": ["orders"], "leewaySecs": 30},
            "rules": rules,
        });
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                doc.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(doc).unwrap()
    }

    fn codes(findings: &[Finding]) -> Vec<(&'static str, Vec<String>)> {
        findings.iter().map(|f| (f.code, f.rules.clone())).collect()
    }

    #[test]
    fn a_clean_policy_has_no_findings() {
        let c = config(
            json!([
                {"name": "items", "paths": ["/items/**"], "action": {"type": "requireAll", "scopes": ["read"]}},
                {"name": "write", "methods": ["POST"], "paths": ["/items/**"], "action": {"type": "requireAll", "scopes": ["write"]}},
                {"name": "health", "methods": ["GET"], "paths": ["/healthz"], "action": {"type": "public"}}
            ]),
            json!({}),
        );
        let vocabulary = BTreeMap::from([
            ("read".into(), String::new()),
            ("write".into(), String::new()),
        ]);
        assert_eq!(codes(&lint(&c, Some(&vocabulary))), vec![]);
    }

    #[test]
    fn a_duplicate_rule_never_decides() {
        let c = config(
            json!([
                {"name": "first", "paths": ["/items/*"], "action": {"type": "requireAll", "scopes": ["a"]}},
                {"name": "second", "paths": ["/items/*"], "action": {"type": "requireAll", "scopes": ["b"]}},
                {"name": "narrow", "paths": ["/items/*/x"], "action": {"type": "authenticated"}}
            ]),
            json!({}),
        );
        assert_eq!(
            codes(&lint(&c, None)),
            vec![(
                "SG100",
                vec![
                    "\"second\" (rules[1])".into(),
                    "\"first\" (rules[0])".into()
                ]
            )]
        );
        // A later rule whose every path a more specific rule covers.
        let c = config(
            json!([
                {"name": "get", "methods": ["GET"], "paths": ["/a/**"], "action": {"type": "requireAll", "scopes": ["a"]}},
                {"name": "post", "methods": ["POST"], "paths": ["/a/**"], "action": {"type": "requireAll", "scopes": ["a"]}},
                {"name": "all", "methods": ["GET", "POST"], "paths": ["/a/**"], "action": {"type": "authenticated"}}
            ]),
            json!({}),
        );
        let found = codes(&lint(&c, None));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "SG100");
        assert_eq!(found[0].1[0], "\"all\" (rules[2])");
    }

    #[test]
    fn public_rules_taking_protected_paths_are_errors_carve_outs_warnings() {
        let c = config(
            json!([
                {"name": "open", "methods": ["GET"], "paths": ["/admin/*"], "action": {"type": "public"}},
                {"name": "admin", "paths": ["/admin/*"], "action": {"type": "requireAll", "scopes": ["admin"]}},
                {"name": "items", "paths": ["/items/**"], "action": {"type": "requireAll", "scopes": ["read"]}},
                {"name": "item-health", "paths": ["/items/health"], "action": {"type": "public"}}
            ]),
            json!({}),
        );
        let found = lint(&c, None);
        let sg101: Vec<_> = found.iter().filter(|f| f.code == "SG101").collect();
        assert_eq!(sg101.len(), 1, "{found:#?}");
        assert!(
            sg101[0].message.contains("GET /admin/"),
            "{}",
            sg101[0].message
        );
        assert_eq!(
            sg101[0].rules,
            ["\"open\" (rules[0])", "\"admin\" (rules[1])"]
        );
        let sg102: Vec<_> = found.iter().filter(|f| f.code == "SG102").collect();
        // The pair SG101 names is not reported again as a carve-out.
        assert_eq!(sg102.len(), 1, "{found:#?}");
        assert_eq!(
            sg102[0].rules,
            ["\"item-health\" (rules[3])", "\"items\" (rules[2])"]
        );
        // "admin" still decides POST /admin/x: no SG100.
        assert!(!found.iter().any(|f| f.code == "SG100"), "{found:#?}");
    }

    #[test]
    fn scopes_outside_the_vocabulary_are_errors_with_a_suggestion() {
        let c = config(
            json!([
                {"name": "items", "paths": ["/items/**"], "action": {"type": "requireAny", "scopeSets": [["read:item"], ["admin"]]}}
            ]),
            json!({}),
        );
        let vocabulary = BTreeMap::from([
            ("read:items".into(), String::new()),
            ("admin".into(), String::new()),
        ]);
        let found = lint(&c, Some(&vocabulary));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].code, "SG103");
        assert!(
            found[0].fix.contains("did you mean \"read:items\""),
            "{}",
            found[0].fix
        );
        assert!(lint(&c, None).is_empty(), "no vocabulary, no check");
    }

    #[test]
    fn rate_limits_that_never_count_or_never_see_a_subject() {
        let c = config(
            json!([
                {"name": "login", "methods": ["POST"], "paths": ["/login"], "action": {"type": "public"}},
                {"name": "items", "paths": ["/items/**"], "action": {"type": "authenticated"}}
            ]),
            json!({
                "rateLimits": [
                    {"name": "token", "methods": ["POST"], "paths": ["/oauth2/token"], "requests": 5, "periodSecs": 60},
                    {"name": "login", "methods": ["POST"], "paths": ["/login"], "key": "subject", "requests": 5, "periodSecs": 60},
                    {"name": "items", "paths": ["/items/**"], "key": "subject", "requests": 5, "periodSecs": 60}
                ],
                "issuer": {
                    "url": "https://auth.shop.svc", "signingKeysPath": "/k", "clientsPath": "/c",
                    "accessTokenTtlSecs": 600, "refreshTokenTtlSecs": 3600, "codeTtlSecs": 60
                }
            }),
        );
        let found = codes(&lint(&c, None));
        assert_eq!(
            found,
            vec![
                ("SG104", vec!["rateLimits \"token\"".into()]),
                ("SG105", vec!["rateLimits \"login\"".into()]),
            ]
        );
    }
}
