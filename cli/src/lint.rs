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

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use scopegate_core::config::{
    DefaultAction, RateLimitConfig, RateLimitKey, RuleAction, SidecarConfig,
};
use scopegate_core::policy::{Policy, Requirement};
use scopegate_crds::v1alpha1::AuthPolicy;
use serde::Serialize;

use crate::explain::{action_text, rule_label};
use crate::output;
use crate::samples;
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

/// A public rule that also decides requests a protected rule matches, with an example.
struct CarveOut {
    public: usize,
    protected: usize,
    example: String,
}

/// Which rules decide a rule's sample requests.
struct Routed {
    /// Whether the rule itself decides any of them.
    won: bool,
    /// The other rules that decide some.
    winners: BTreeSet<usize>,
    /// Public rules that decide requests of a protected rule, with the request.
    taken_by_public: Vec<(usize, String)>,
}

/// A policy's rules and the sample requests they are probed with, asked of the sidecar's
/// own matcher.
struct Probe<'a> {
    config: &'a SidecarConfig,
    policy: Policy,
    /// namespace/name, for findings.
    name: String,
    /// A segment that equals no literal of any pattern.
    sentinel: String,
    /// The most segments of any rule pattern.
    depth: usize,
    /// Methods tried for a rule or limit that names none.
    methods: Vec<String>,
}

impl<'a> Probe<'a> {
    fn new(config: &'a SidecarConfig, policy: Policy, name: String) -> Self {
        let rules = &config.rules;
        let limits = &config.rate_limits;
        let all_patterns = rules
            .iter()
            .flat_map(|r| r.paths.iter())
            .chain(limits.iter().flat_map(|l| l.paths.iter()))
            .map(String::as_str);
        let depth = rules
            .iter()
            .flat_map(|r| r.paths.iter())
            .map(|p| p.split('/').count())
            .max()
            .unwrap_or(1);
        let methods = samples::methods(
            rules
                .iter()
                .flat_map(|r| r.methods.iter())
                .chain(limits.iter().flat_map(|l| l.methods.iter())),
        );
        Self {
            config,
            policy,
            name,
            sentinel: samples::sentinel(all_patterns),
            depth,
            methods,
        }
    }

    /// (method, path) samples of a rule or limit's own methods and patterns.
    fn samples(&self, own_methods: &[String], paths: &[String]) -> Vec<(String, String)> {
        let methods = if own_methods.is_empty() {
            &self.methods
        } else {
            own_methods
        };
        let mut out = Vec::new();
        for m in methods {
            for p in paths {
                for s in samples::instances(p, &self.sentinel, self.depth + 1) {
                    out.push((m.clone(), s));
                }
            }
        }
        out
    }

    fn is_public(&self, index: usize) -> bool {
        self.config.rules[index].action == RuleAction::Public
    }

    fn label(&self, index: usize) -> String {
        rule_label(&self.config.rules, index)
    }

    fn finding(
        &self,
        code: &'static str,
        severity: Severity,
        rules: Vec<String>,
        message: String,
        fix: String,
    ) -> Finding {
        Finding {
            code,
            severity,
            policy: self.name.clone(),
            rules,
            message,
            fix,
        }
    }

    /// Which rules decide the samples of rule `index`.
    fn route_samples(&self, index: usize, samples: &[(String, String)]) -> Routed {
        let mut routed = Routed {
            won: false,
            winners: BTreeSet::new(),
            taken_by_public: Vec::new(),
        };
        for (m, s) in samples {
            match self.policy.route(m, s).rule_index {
                Some(w) if w == index => routed.won = true,
                Some(w) => {
                    routed.winners.insert(w);
                    if self.is_public(w) && !self.is_public(index) {
                        routed.taken_by_public.push((w, format!("{m} {s}")));
                    }
                }
                None => {}
            }
        }
        routed
    }

    /// SG101: public rules that take requests the protected rule `index` names.
    fn public_takes_protected(
        &self,
        index: usize,
        publics: &BTreeSet<usize>,
        taken: &[(usize, String)],
    ) -> Finding {
        let examples: Vec<&str> = taken.iter().take(3).map(|(_, s)| s.as_str()).collect();
        let mut names: Vec<String> = publics.iter().map(|&w| self.label(w)).collect();
        names.push(self.label(index));
        self.finding(
            "SG101",
            Severity::Error,
            names,
            format!(
                "public rule {} takes requests that protected rule {} ({}) names, e.g. {}: they pass without a token",
                publics.iter().map(|&w| self.label(w)).collect::<Vec<_>>().join(", "),
                self.label(index),
                action_text(&self.config.rules[index].action),
                examples.join(", ")
            ),
            "make the public rule's paths narrower (a public rule should name exactly what is public), or the protected rule more specific; on equal specificity the earlier rule wins and a rule naming methods beats one that does not".into(),
        )
    }

    /// SG100: rule `index` decides none of its requests (unless only public rules take them:
    /// that is SG101).
    fn never_decides(&self, index: usize, routed: &Routed) -> Option<Finding> {
        let winners = &routed.winners;
        if routed.won
            || winners.is_empty()
            || winners
                .iter()
                .all(|&w| self.is_public(w) && !self.is_public(index))
        {
            return None;
        }
        let by: Vec<String> = winners.iter().map(|&w| self.label(w)).collect();
        let mut names = vec![self.label(index)];
        names.extend(by.iter().cloned());
        Some(self.finding(
            "SG100",
            Severity::Error,
            names,
            format!(
                "rule {} never decides a request: {} wins every request it matches",
                self.label(index),
                by.join(", ")
            ),
            format!(
                "remove it, or make it more specific than {} (a literal segment beats '*', a path that ends beats '/**', naming methods beats naming none); on a tie the earlier rule wins, so moving it above works too",
                by.join(", ")
            ),
        ))
    }

    /// Protected rules that also match the requests public rule `index` decides.
    fn carve_outs(&self, index: usize, samples: &[(String, String)]) -> Vec<CarveOut> {
        let mut carved: BTreeMap<usize, String> = BTreeMap::new();
        for (m, s) in samples {
            if self.policy.route(m, s).rule_index != Some(index) {
                continue;
            }
            for c in self.policy.candidates(m, s) {
                if c.rule_index != index && !self.is_public(c.rule_index) {
                    carved
                        .entry(c.rule_index)
                        .or_insert_with(|| format!("{m} {s}"));
                }
            }
        }
        carved
            .into_iter()
            .map(|(protected, example)| CarveOut {
                public: index,
                protected,
                example,
            })
            .collect()
    }

    /// SG102: a public rule carves requests out of a protected rule.
    fn carve_out(&self, c: &CarveOut) -> Finding {
        self.finding(
            "SG102",
            Severity::Warning,
            vec![self.label(c.public), self.label(c.protected)],
            format!(
                "public rule {} carves requests out of protected rule {} ({}), e.g. {}",
                self.label(c.public),
                self.label(c.protected),
                action_text(&self.config.rules[c.protected].action),
                c.example
            ),
            "if these paths are meant to be public, nothing to do; otherwise narrow the public rule".into(),
        )
    }

    /// SG103: scopes rule `index` requires that the vocabulary does not declare.
    fn unknown_scopes(&self, index: usize, vocabulary: &BTreeMap<String, String>) -> Vec<Finding> {
        let needed: Vec<&String> = match &self.config.rules[index].action {
            RuleAction::RequireAll { scopes } => scopes.iter().collect(),
            RuleAction::RequireAny { scope_sets } => scope_sets.iter().flatten().collect(),
            _ => Vec::new(),
        };
        let unknown: BTreeSet<&String> = needed
            .into_iter()
            .filter(|s| !vocabulary.contains_key(*s))
            .collect();
        unknown.into_iter().map(|scope| {
            let hint = closest(scope, vocabulary.keys())
                .map(|c| format!("did you mean {c:?}? "))
                .unwrap_or_default();
            self.finding(
                "SG103",
                Severity::Error,
                vec![self.label(index)],
                format!(
                    "rule {} requires scope {scope:?}, which the issuer's vocabulary does not declare: no token can carry it, so the rule refuses everyone",
                    self.label(index)
                ),
                format!("{hint}fix the spelling, or declare {scope:?} in the issuer's spec.issuer.self.scopes"),
            )
        }).collect()
    }

    /// SG106: `defaultAction: Allow`.
    fn default_allow(&self) -> Option<Finding> {
        (self.config.default_action == DefaultAction::Allow).then(|| self.finding(
            "SG106",
            Severity::Warning,
            Vec::new(),
            "defaultAction Allow: every route no rule names is public, including routes the app adds later".into(),
            "use defaultAction Deny and a public rule for what is meant to be public".into(),
        ))
    }

    /// SG104: a rate limit that names only issuer endpoints; SG105: one keyed by subject
    /// over routes that never carry a verified subject.
    fn rate_limit(&self, limit: &RateLimitConfig) -> Option<Finding> {
        let label = format!("rateLimits {:?}", limit.name);
        let issuer_prefix = self
            .config
            .issuer
            .as_ref()
            .and_then(|role| scopegate_core::endpoints::path_prefix(&role.url));
        let samples = self.samples(&limit.methods, &limit.paths);
        let counted: Vec<&(String, String)> = samples
            .iter()
            .filter(|(_, s)| {
                issuer_prefix
                    .as_deref()
                    .is_none_or(|prefix| scopegate_core::endpoints::endpoint(prefix, s).is_none())
            })
            .collect();
        if counted.is_empty() {
            return Some(self.finding(
                "SG104",
                Severity::Error,
                vec![label],
                format!(
                    "rate limit {:?} names only endpoints of the policy's issuer, which answers them before any rate limit: it never counts a request",
                    limit.name
                ),
                "remove it: the issuer limits its own endpoints (per client and per address)".into(),
            ));
        }
        let never_a_subject = || {
            counted.iter().all(|(m, s)| {
                matches!(
                    self.policy.route(m, s).requirement,
                    Requirement::Public | Requirement::Deny
                )
            })
        };
        (limit.key == RateLimitKey::Subject && never_a_subject()).then(|| self.finding(
            "SG105",
            Severity::Warning,
            vec![label],
            format!(
                "rate limit {:?} is keyed by subject, but every route it covers is public or denied: no request there carries a verified subject, so it counts per client address",
                limit.name
            ),
            "key it by clientAddress, or point it at routes that need a token".into(),
        ))
    }
}

/// The vocabulary entry nearest to a misspelt scope (case-insensitive equality, or at most
/// two edits).
fn closest<'a>(scope: &str, vocabulary: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    vocabulary
        .map(|v| {
            let d = if v.eq_ignore_ascii_case(scope) {
                0
            } else {
                edit_distance(v, scope)
            };
            (d, v)
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
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
