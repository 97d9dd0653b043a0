//! The checks of [`super::lint`], one method per finding code, each asking the sidecar's own
//! matcher ([`Policy::route`]) which rule decides sample requests of every pattern.

use std::collections::{BTreeMap, BTreeSet};

use scopegate_core::config::{
    DefaultAction, RateLimitConfig, RateLimitKey, RuleAction, SidecarConfig,
};
use scopegate_core::policy::{Policy, Requirement};

use super::{Finding, Severity};
use crate::explain::{action_text, rule_label};
use crate::samples;

/// A public rule that also decides requests a protected rule matches, with an example.
pub(super) struct CarveOut {
    /// The public rule.
    pub(super) public: usize,
    /// The protected rule it carves from.
    pub(super) protected: usize,
    /// A request both match that the public rule decides.
    example: String,
}

/// Which rules decide a rule's sample requests.
pub(super) struct Routed {
    /// Whether the rule itself decides any of them.
    won: bool,
    /// The other rules that decide some.
    winners: BTreeSet<usize>,
    /// Public rules that decide requests of a protected rule, with the request.
    pub(super) taken_by_public: Vec<(usize, String)>,
}

/// A policy's rules and the sample requests they are probed with, asked of the sidecar's
/// own matcher.
pub(super) struct Probe<'a> {
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
    /// The probe of a config whose rules compiled to `policy`; `name` is namespace/name.
    pub(super) fn new(config: &'a SidecarConfig, policy: Policy, name: String) -> Self {
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
    pub(super) fn samples(
        &self,
        own_methods: &[String],
        paths: &[String],
    ) -> Vec<(String, String)> {
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

    /// Whether rule `index` is public.
    fn is_public(&self, index: usize) -> bool {
        self.config.rules[index].action == RuleAction::Public
    }

    /// Rule `index` as findings name it.
    fn label(&self, index: usize) -> String {
        rule_label(&self.config.rules, index)
    }

    /// A finding of this policy.
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
    pub(super) fn route_samples(&self, index: usize, samples: &[(String, String)]) -> Routed {
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
    pub(super) fn public_takes_protected(
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
    pub(super) fn never_decides(&self, index: usize, routed: &Routed) -> Option<Finding> {
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
    pub(super) fn carve_outs(&self, index: usize, samples: &[(String, String)]) -> Vec<CarveOut> {
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
    pub(super) fn carve_out(&self, c: &CarveOut) -> Finding {
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
    pub(super) fn unknown_scopes(
        &self,
        index: usize,
        vocabulary: &BTreeMap<String, String>,
    ) -> Vec<Finding> {
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
    pub(super) fn default_allow(&self) -> Option<Finding> {
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
    pub(super) fn rate_limit(&self, limit: &RateLimitConfig) -> Option<Finding> {
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

/// Levenshtein distance between two strings, by characters.
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
