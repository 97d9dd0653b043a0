//! Route policy: which rule a request falls under and whether a token's scopes satisfy it.
//!
//! Pure functions over the config's [`RouteRule`]s: the sidecar compiles them once per config
//! and asks [`Policy::route`] per request, with the route path of
//! [`crate::path::RequestPath`]. The most specific rule wins (see
//! [`crate::path::Specificity`]); at equal path specificity a rule that names methods beats
//! one that does not, then the earlier rule in the document.
//!
//! Where spellings are ambiguous the answer requires more ([`Matcher`]): a rule that asks for
//! a token matches its paths loosely (`/admin/` and `/ADMIN` fall under a rule for `/admin`),
//! a `public` rule only its exact spelling; and a rule for `GET` also matches `HEAD`, which
//! frameworks answer with the GET handler. Rate limits use the same [`Matcher`], loosely.

use std::sync::Arc;

use crate::condition::{CompileError, Condition, MAX_POLICY_SOURCE_LEN};
use crate::config::{DefaultAction, Enforcement, RouteRule, RuleAction, SidecarConfig};
use crate::path::{Pattern, PatternError, Specificity};
use crate::scope::is_scope_token;

/// Why rules were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A path pattern does not follow the grammar.
    #[error("rule {rule}: bad path pattern")]
    Pattern {
        /// Index of the rule in the document.
        rule: usize,
        /// The pattern problem.
        #[source]
        source: PatternError,
    },
    /// A rule without path patterns could never match.
    #[error("rule {0} has no path patterns")]
    NoPaths(usize),
    /// A method that is not an upper-case HTTP token.
    #[error("rule {rule}: method {method:?} is not an upper-case HTTP method")]
    Method {
        /// Index of the rule in the document.
        rule: usize,
        /// The method as written.
        method: String,
    },
    /// A scope that is not an RFC 6749 scope-token, or an empty requirement.
    #[error("rule {0}: scopes must be non-empty lists of RFC 6749 scope tokens")]
    Scopes(usize),
    /// A `when` condition that does not compile.
    #[error("rule {rule}: the when condition is refused")]
    Condition {
        /// The rule's label ([`rule_label`]).
        rule: String,
        /// The compiler's objection.
        #[source]
        source: CompileError,
    },
    /// The rules' `when` conditions hold more than [`MAX_POLICY_SOURCE_LEN`] bytes in all.
    #[error("the when conditions hold {0} bytes in all; at most {MAX_POLICY_SOURCE_LEN}")]
    ConditionsTooLong(usize),
    /// A `when` condition on a public rule, which reads no token.
    #[error("rule {0} is public: a when condition needs a rule that requires a token")]
    PublicCondition(usize),
}

/// What a request needs, as decided by the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// No token needed.
    Public,
    /// A valid token with these scopes.
    Token(ScopeRequirement<'a>),
    /// Refused: 401 without a token, 403 with a valid one.
    Deny,
}

/// The scopes a route asks of a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRequirement<'a> {
    /// Any valid token.
    None,
    /// All of these.
    All(&'a [String]),
    /// All of at least one of these sets.
    Any(&'a [Vec<String>]),
}

/// The rule that decided a request, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// What the request needs.
    pub requirement: Requirement<'a>,
    /// The rule's name, or `None` for the default action or an unnamed rule.
    pub rule_name: Option<&'a str>,
    /// Index of the matching rule, `None` for the default action.
    pub rule_index: Option<usize>,
    /// Whether a refusal is acted on (`false`: the rule, or the default action, is in
    /// DryRun and the request is forwarded anyway).
    pub enforced: bool,
}

impl Route<'_> {
    /// The rule as logs and metrics name it: its name, `rules[i]` for an unnamed rule, or
    /// `(default)` for the default action.
    pub fn label(&self) -> String {
        rule_label(self.rule_name, self.rule_index)
    }
}

/// The label of a rule: its name, `rules[i]` when it has none, `(default)` for the default
/// action.
pub fn rule_label(name: Option<&str>, index: Option<usize>) -> String {
    match (name, index) {
        (Some(name), Some(_)) => name.to_owned(),
        (None, Some(index)) => format!("rules[{index}]"),
        (_, None) => "(default)".to_owned(),
    }
}

/// Rules compiled from the config, ready to match.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<CompiledRule>,
    default_action: DefaultAction,
    enforcement: Enforcement,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: Option<String>,
    matcher: Matcher,
    action: RuleAction,
    enforced: bool,
    when: Option<Arc<Condition>>,
}

/// Methods and path patterns of a rule or rate limit, compiled: the one matcher of the
/// sidecar.
#[derive(Debug, Clone)]
pub struct Matcher {
    methods: Vec<String>,
    patterns: Vec<(Pattern, Specificity)>,
    loose: bool,
}

impl Matcher {
    /// Compiles upper-case methods (empty: every method) and patterns; `loose` matches paths
    /// loosely ([`Pattern::matches_loosely`]).
    pub fn compile(
        methods: &[String],
        paths: &[String],
        loose: bool,
    ) -> Result<Self, PatternError> {
        let patterns = paths
            .iter()
            .map(|text| {
                Pattern::parse(text).map(|p| {
                    let rank = p.specificity();
                    (p, rank)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Matcher {
            methods: methods.to_vec(),
            patterns,
            loose,
        })
    }

    /// Whether the matcher names methods (a rule that does beats one that does not).
    pub fn names_methods(&self) -> bool {
        !self.methods.is_empty()
    }

    /// Whether `method` is one of the methods: every method when none are named, and `HEAD`
    /// wherever `GET` is named. A matcher that asks for something (loose) also takes the
    /// method in any case, as frameworks that upper-case it before routing do (Django,
    /// Werkzeug): `delete` falls under a rule for `DELETE`. A public rule takes only the
    /// spelling it names.
    pub fn matches_method(&self, method: &str) -> bool {
        let same = |named: &str, method: &str| {
            named == method || (self.loose && named.eq_ignore_ascii_case(method))
        };
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| same(m, method) || (same("HEAD", method) && m == "GET"))
    }

    /// The rank of the most specific pattern matching a route path, if the method matches.
    pub fn best(&self, method: &str, path: &str) -> Option<&Specificity> {
        if !self.matches_method(method) {
            return None;
        }
        self.patterns
            .iter()
            .filter(|(pattern, _)| {
                if self.loose {
                    pattern.matches_loosely(path)
                } else {
                    pattern.matches(path)
                }
            })
            .map(|(_, rank)| rank)
            .max()
    }

    /// Whether a request matches.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.best(method, path).is_some()
    }
}

impl Policy {
    /// Checks and compiles rules, enforced unless a rule says DryRun.
    pub fn compile(
        rules: &[RouteRule],
        default_action: DefaultAction,
    ) -> Result<Self, PolicyError> {
        Self::compile_with(rules, default_action, Enforcement::Enforce)
    }

    /// Checks and compiles a config document's rules, default action and enforcement: what
    /// the sidecar runs.
    pub fn from_config(config: &SidecarConfig) -> Result<Self, PolicyError> {
        Self::compile_with(&config.rules, config.default_action, config.enforcement)
    }

    /// Checks and compiles rules; `enforcement` applies to the default action and to every
    /// rule without one of its own.
    pub fn compile_with(
        rules: &[RouteRule],
        default_action: DefaultAction,
        enforcement: Enforcement,
    ) -> Result<Self, PolicyError> {
        let total: usize = (rules.iter())
            .filter_map(|rule| rule.when.as_ref().map(String::len))
            .sum();
        if total > MAX_POLICY_SOURCE_LEN {
            return Err(PolicyError::ConditionsTooLong(total));
        }
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| compile_rule(index, rule, enforcement))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            rules: compiled,
            default_action,
            enforcement,
        })
    }

    /// The `when` condition of the rule at `rule_index`, if it has one.
    pub fn condition(&self, rule_index: Option<usize>) -> Option<&Condition> {
        self.rules.get(rule_index?)?.when.as_deref()
    }

    /// Each rule's `when` condition, with the rule's label.
    pub fn conditions(&self) -> impl Iterator<Item = (String, &Condition)> {
        self.rules.iter().enumerate().filter_map(|(index, rule)| {
            let condition = rule.when.as_deref()?;
            Some((rule_label(rule.name.as_deref(), Some(index)), condition))
        })
    }

    /// Whether any rule has a `when` condition (the verifier then keeps a token's claims).
    pub fn has_conditions(&self) -> bool {
        self.rules.iter().any(|rule| rule.when.is_some())
    }

    /// The label of every rule, in document order ([`rule_label`]).
    pub fn rule_labels(&self) -> Vec<String> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule_label(r.name.as_deref(), Some(i)))
            .collect()
    }

    /// Labels of the rules that are not enforced ([`rule_label`]; `(default)` for the
    /// default action).
    pub fn dry_run_labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.enforced && r.action != RuleAction::Public)
            .map(|(i, r)| rule_label(r.name.as_deref(), Some(i)))
            .collect();
        if !self.enforcement.is_enforce() && self.default_action != DefaultAction::Allow {
            labels.push(rule_label(None, None));
        }
        labels
    }

    /// The requirement for a request. `path` is the route path of a
    /// [`crate::path::RequestPath`].
    pub fn route(&self, method: &str, path: &str) -> Route<'_> {
        match self.best_rule(method, path, |_| true) {
            Some(index) => self.rule_route(index),
            None => self.default_route(),
        }
    }

    /// What the enforced part of the policy alone asks of a request whose [`Policy::route`]
    /// is in DryRun and would refuse it: the decision as if the rules in DryRun did not
    /// exist, so that trying a stricter rule never opens what the policy enforced before it
    /// was added. `None` when nothing enforced decides (the default action is in DryRun too):
    /// the request is forwarded.
    pub fn enforced_route(&self, method: &str, path: &str) -> Option<Route<'_>> {
        // Public rules refuse nothing: they keep the place they had before the DryRun rule.
        let decides = |rule: &CompiledRule| rule.enforced || rule.action == RuleAction::Public;
        match self.best_rule(method, path, decides) {
            Some(index) => Some(Route {
                enforced: true,
                ..self.rule_route(index)
            }),
            None => Some(self.default_route()).filter(|route| route.enforced),
        }
    }

    /// Index of the most specific rule among those `eligible` that matches: the greatest
    /// `(specificity, names_methods)`, the earliest on a tie.
    fn best_rule(
        &self,
        method: &str,
        path: &str,
        eligible: impl Fn(&CompiledRule) -> bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, (&Specificity, bool))> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !eligible(rule) {
                continue;
            }
            let Some(rank) = rule.matcher.best(method, path) else {
                continue;
            };
            let key = (rank, rule.matcher.names_methods());
            // Strictly greater: the earlier rule wins a tie.
            if best.as_ref().is_none_or(|(_, best_key)| key > *best_key) {
                best = Some((index, key));
            }
        }
        best.map(|(index, _)| index)
    }

    fn rule_route(&self, index: usize) -> Route<'_> {
        let rule = &self.rules[index];
        Route {
            requirement: match &rule.action {
                RuleAction::Public => Requirement::Public,
                RuleAction::Authenticated => Requirement::Token(ScopeRequirement::None),
                RuleAction::RequireAll { scopes } => {
                    Requirement::Token(ScopeRequirement::All(scopes))
                }
                RuleAction::RequireAny { scope_sets } => {
                    Requirement::Token(ScopeRequirement::Any(scope_sets))
                }
            },
            rule_name: rule.name.as_deref(),
            rule_index: Some(index),
            enforced: rule.enforced,
        }
    }

    fn default_route(&self) -> Route<'_> {
        Route {
            requirement: match self.default_action {
                DefaultAction::Deny => Requirement::Deny,
                DefaultAction::Authenticate => Requirement::Token(ScopeRequirement::None),
                DefaultAction::Allow => Requirement::Public,
            },
            rule_name: None,
            rule_index: None,
            enforced: self.enforcement.is_enforce(),
        }
    }
}

/// A rule that matches a request, with what [`Policy::route`] compares: for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Index of the rule in the document.
    pub rule_index: usize,
    /// The rule's name.
    pub rule_name: Option<&'a str>,
    /// The rank of its most specific pattern matching the path.
    pub specificity: &'a Specificity,
    /// Whether it names methods (beats one that does not at equal specificity).
    pub names_methods: bool,
}

impl Policy {
    /// Every rule that matches a request, in document order. [`Policy::route`] picks the
    /// greatest `(specificity, names_methods)`, the earliest on a tie.
    pub fn candidates(&self, method: &str, path: &str) -> Vec<Candidate<'_>> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| {
                rule.matcher.best(method, path).map(|rank| Candidate {
                    rule_index: index,
                    rule_name: rule.name.as_deref(),
                    specificity: rank,
                    names_methods: rule.matcher.names_methods(),
                })
            })
            .collect()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn compile_rule(
    index: usize,
    rule: &RouteRule,
    enforcement: Enforcement,
) -> Result<CompiledRule, PolicyError> {
    if rule.paths.is_empty() {
        return Err(PolicyError::NoPaths(index));
    }
    for method in &rule.methods {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(PolicyError::Method {
                rule: index,
                method: method.clone(),
            });
        }
    }
    let scopes_ok =
        |scopes: &[String]| !scopes.is_empty() && scopes.iter().all(|s| is_scope_token(s));
    let valid = match &rule.action {
        RuleAction::Public | RuleAction::Authenticated => true,
        RuleAction::RequireAll { scopes } => scopes_ok(scopes),
        RuleAction::RequireAny { scope_sets } => {
            !scope_sets.is_empty() && scope_sets.iter().all(|set| scopes_ok(set))
        }
    };
    if !valid {
        return Err(PolicyError::Scopes(index));
    }
    // A rule that asks for something matches every spelling a router may take for its paths;
    // a public rule only the spelling it names.
    let loose = rule.action != RuleAction::Public;
    let matcher = Matcher::compile(&rule.methods, &rule.paths, loose).map_err(|source| {
        PolicyError::Pattern {
            rule: index,
            source,
        }
    })?;
    let when = match &rule.when {
        None => None,
        Some(_) if rule.action == RuleAction::Public => {
            return Err(PolicyError::PublicCondition(index));
        }
        Some(source) => Some(Arc::new(Condition::compile(source).map_err(|source| {
            PolicyError::Condition {
                rule: rule_label(rule.name.as_deref(), Some(index)),
                source,
            }
        })?)),
    };
    Ok(CompiledRule {
        name: rule.name.clone(),
        matcher,
        action: rule.action.clone(),
        enforced: rule.enforcement.unwrap_or(enforcement).is_enforce(),
        when,
    })
}

/// A token's `scope` claim is not a space-separated list of scope tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("scope claim is not a space-separated list of scope tokens")]
pub struct MalformedScope;

/// Checks a `scope` claim (RFC 9068 §2.2.3, RFC 6749 §3.3): single spaces between scope
/// tokens. The empty string grants nothing; doubled, leading or trailing spaces and
/// characters outside the scope-token grammar make the claim malformed.
pub fn check_scope_claim(claim: &str) -> Result<(), MalformedScope> {
    if claim.is_empty() || claim.split(' ').all(is_scope_token) {
        Ok(())
    } else {
        Err(MalformedScope)
    }
}

/// Whether a checked `scope` claim satisfies a requirement (case-sensitive, whole tokens).
pub fn scopes_satisfy(requirement: ScopeRequirement<'_>, scope_claim: &str) -> bool {
    let has_all = |needed: &[String]| {
        needed
            .iter()
            .all(|n| scope_claim.split(' ').any(|g| g == n))
    };
    match requirement {
        ScopeRequirement::None => true,
        ScopeRequirement::All(needed) => has_all(needed),
        ScopeRequirement::Any(sets) => sets.iter().any(|set| has_all(set)),
    }
}

/// The scopes to name in a 403 `insufficient_scope` challenge: all of an all-of rule; for
/// an any-of rule its first alternative, which alone would suffice. Empty for a rule that
/// needs no scope (a denied route).
pub fn scopes_to_name(requirement: ScopeRequirement<'_>) -> Vec<&str> {
    match requirement {
        ScopeRequirement::None => Vec::new(),
        ScopeRequirement::All(needed) => needed.iter().map(String::as_str).collect(),
        ScopeRequirement::Any(sets) => sets
            .first()
            .map(|set| set.iter().map(String::as_str).collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    fn rule(name: &str, methods: &[&str], paths: &[&str], action: RuleAction) -> RouteRule {
        RouteRule {
            name: Some(name.into()),
            methods: methods.iter().map(|m| (*m).into()).collect(),
            paths: paths.iter().map(|p| (*p).into()).collect(),
            action,
            enforcement: None,
            when: None,
        }
    }

    fn all(scopes: &[&str]) -> RuleAction {
        RuleAction::RequireAll {
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
        }
    }

    fn policy() -> Policy {
        Policy::compile(
            &[
                rule("items", &[], &["/items/**"], all(&["read:items"])),
                rule(
                    "item-write",
                    &["POST"],
                    &["/items/**"],
                    all(&["write:items"]),
                ),
                rule("health", &["GET"], &["/healthz"], RuleAction::Public),
                rule(
                    "admin",
                    &[],
                    &["/items/admin", "/admin/**"],
                    all(&["admin"]),
                ),
                rule("one", &[], &["/items/*"], RuleAction::Authenticated),
                rule(
                    "any",
                    &[],
                    &["/reports/**"],
                    RuleAction::RequireAny {
                        scope_sets: vec![vec!["a".into(), "b".into()], vec!["c".into()]],
                    },
                ),
            ],
            DefaultAction::Deny,
        )
        .unwrap()
    }

    fn name<'a>(p: &'a Policy, method: &str, path: &str) -> Option<&'a str> {
        p.route(method, path).rule_name
    }

    #[test]
    fn most_specific_rule_wins() {
        let p = policy();
        assert_eq!(name(&p, "GET", "/items"), Some("items"));
        assert_eq!(name(&p, "GET", "/items/a/b"), Some("items"));
        assert_eq!(name(&p, "GET", "/items/42"), Some("one"));
        assert_eq!(name(&p, "GET", "/items/admin"), Some("admin"));
        assert_eq!(name(&p, "POST", "/items/a/b"), Some("item-write"));
        assert_eq!(name(&p, "GET", "/healthz"), Some("health"));
        assert_eq!(name(&p, "POST", "/healthz"), None);
        assert_eq!(p.route("GET", "/nope").requirement, Requirement::Deny);
    }

    #[test]
    fn enforcement_comes_from_the_rule_else_the_policy() {
        let mut rules = vec![
            rule("items", &[], &["/items/**"], all(&["read:items"])),
            rule("admin", &[], &["/admin/**"], all(&["admin"])),
            rule("health", &[], &["/healthz"], RuleAction::Public),
            RouteRule {
                name: None,
                ..rule("", &[], &["/me"], RuleAction::Authenticated)
            },
        ];
        rules[1].enforcement = Some(Enforcement::DryRun);
        let p = Policy::compile(&rules, DefaultAction::Deny).unwrap();
        assert!(p.route("GET", "/items/1").enforced);
        assert!(!p.route("GET", "/admin/x").enforced);
        assert!(p.route("GET", "/nope").enforced);
        assert_eq!(p.dry_run_labels(), ["admin"]);

        // A policy in DryRun: every rule without its own enforcement and the default action.
        rules[0].enforcement = Some(Enforcement::Enforce);
        let p = Policy::compile_with(&rules, DefaultAction::Deny, Enforcement::DryRun).unwrap();
        assert!(p.route("GET", "/items/1").enforced);
        assert!(!p.route("GET", "/admin/x").enforced);
        assert!(!p.route("GET", "/me").enforced);
        assert!(!p.route("GET", "/nope").enforced);
        // Public rules refuse nothing and are not listed.
        assert_eq!(p.dry_run_labels(), ["admin", "rules[3]", "(default)"]);
        assert_eq!(p.route("GET", "/me").label(), "rules[3]");
        assert_eq!(p.route("GET", "/nope").label(), "(default)");
    }

    /// A rule in DryRun never opens what the enforced policy closed before it was added.
    #[test]
    fn the_enforced_rules_decide_where_a_dry_run_rule_would_refuse() {
        let api = rule("api", &[], &["/api/**"], all(&["read"]));
        let mut admin = rule(
            "admin",
            &[],
            &["/api/admin/**", "/admin/**"],
            all(&["admin"]),
        );
        admin.enforcement = Some(Enforcement::DryRun);
        let open = rule("open", &[], &["/api/admin/open"], RuleAction::Public);
        let p = Policy::compile(&[api, admin.clone(), open], DefaultAction::Deny).unwrap();
        let enforced = |path| {
            p.enforced_route("GET", path)
                .map(|r| (r.label(), r.enforced))
        };
        assert_eq!(p.route("GET", "/api/admin/x").label(), "admin");
        // Under the enforced rule it shadows, and under the default action elsewhere.
        assert_eq!(enforced("/api/admin/x"), Some(("api".into(), true)));
        assert_eq!(enforced("/admin/x"), Some(("(default)".into(), true)));
        assert_eq!(
            p.enforced_route("GET", "/admin/x").unwrap().requirement,
            Requirement::Deny
        );
        // A more specific public rule keeps its place.
        assert_eq!(enforced("/api/admin/open"), Some(("open".into(), true)));

        // The whole policy in DryRun: only what is enforced by name still decides.
        let mut items = rule("items", &[], &["/admin/items/**"], all(&["read"]));
        items.enforcement = Some(Enforcement::Enforce);
        admin.enforcement = None;
        let p = Policy::compile_with(&[admin, items], DefaultAction::Deny, Enforcement::DryRun)
            .unwrap();
        assert_eq!(p.enforced_route("GET", "/admin/x"), None);
        assert_eq!(
            p.enforced_route("GET", "/admin/items/1").map(|r| r.label()),
            Some("items".into())
        );
    }

    #[test]
    fn candidates_explain_the_route() {
        let p = policy();
        for (method, path) in [
            ("GET", "/items/admin"),
            ("POST", "/items/a/b"),
            ("GET", "/items/42"),
            ("GET", "/nope"),
        ] {
            let candidates = p.candidates(method, path);
            let best = candidates
                .iter()
                .fold(None::<&Candidate<'_>>, |best, c| match best {
                    Some(b)
                        if (c.specificity, c.names_methods) <= (b.specificity, b.names_methods) =>
                    {
                        Some(b)
                    }
                    _ => Some(c),
                })
                .map(|c| c.rule_index);
            assert_eq!(best, p.route(method, path).rule_index, "{method} {path}");
        }
        assert_eq!(p.candidates("GET", "/items/admin").len(), 3);
    }

    #[test]
    fn ties_go_to_the_earlier_rule() {
        let p = Policy::compile(
            &[
                rule("first", &[], &["/x"], RuleAction::Public),
                rule("second", &[], &["/x"], all(&["s"])),
            ],
            DefaultAction::Allow,
        )
        .unwrap();
        assert_eq!(name(&p, "GET", "/x"), Some("first"));
        assert_eq!(p.route("GET", "/y").requirement, Requirement::Public);
    }

    #[test]
    fn scope_checks_are_whole_token_and_case_sensitive() {
        let needed = vec!["read".to_string()];
        let all = ScopeRequirement::All(&needed);
        assert!(!scopes_satisfy(all, "read:all write"));
        assert!(!scopes_satisfy(all, "READ"));
        assert!(!scopes_satisfy(all, ""));
        assert!(scopes_satisfy(all, "x read"));
        assert!(scopes_satisfy(ScopeRequirement::None, ""));
        assert_eq!(check_scope_claim(""), Ok(()));
        assert_eq!(check_scope_claim("a b:c"), Ok(()));
        for bad in ["read  write", " read", "read ", "a\"b", "é"] {
            assert_eq!(check_scope_claim(bad), Err(MalformedScope), "{bad:?}");
        }
    }

    #[test]
    fn any_of_needs_one_whole_set_and_names_the_first() {
        let p = policy();
        let Requirement::Token(req) = p.route("GET", "/reports/1").requirement else {
            panic!("token route expected");
        };
        let has = |s: &str| scopes_satisfy(req, s);
        assert!(has("a b"));
        assert!(has("c"));
        assert!(!has("a"));
        assert_eq!(scopes_to_name(req), ["a", "b"]);
    }

    #[test]
    fn rules_that_require_something_match_case_and_trailing_slash_variants() {
        let p = Policy::compile(
            &[
                rule(
                    "admin",
                    &[],
                    &["/admin", "/v1/orders:cancel"],
                    all(&["admin"]),
                ),
                rule("docs", &[], &["/docs"], RuleAction::Public),
                rule("items", &[], &["/items/"], RuleAction::Authenticated),
            ],
            DefaultAction::Allow,
        )
        .unwrap();
        for spelling in [
            "/admin",
            "/admin/",
            "/ADMIN",
            "/Admin/",
            "/v1/ORDERS:Cancel/",
        ] {
            assert_eq!(name(&p, "GET", spelling), Some("admin"), "{spelling}");
        }
        assert_eq!(name(&p, "GET", "/items"), Some("items"));
        assert_eq!(name(&p, "GET", "/ITEMS/"), Some("items"));
        assert_eq!(name(&p, "GET", "/docs"), Some("docs"));
        for other in ["/docs/", "/DOCS", "/Docs"] {
            assert_eq!(
                name(&p, "GET", other),
                None,
                "{other}: public rules match exactly"
            );
        }
        // Neither matches a longer or shorter path.
        assert_eq!(name(&p, "GET", "/adminx"), None);
        assert_eq!(name(&p, "GET", "/admin/x"), None);
    }

    #[test]
    fn head_is_matched_by_rules_for_get() {
        let p = Policy::compile(
            &[
                rule("read", &["GET"], &["/items/**"], all(&["read"])),
                rule("write", &["POST"], &["/items/**"], all(&["write"])),
            ],
            DefaultAction::Allow,
        )
        .unwrap();
        assert_eq!(name(&p, "HEAD", "/items/1"), Some("read"));
        assert_eq!(name(&p, "GET", "/items/1"), Some("read"));
        assert_eq!(name(&p, "OPTIONS", "/items/1"), None);
        let m = Matcher::compile(&["GET".into()], &["/login".into()], true).unwrap();
        assert!(m.matches("HEAD", "/login/"));
        assert!(!m.matches("POST", "/login"));
        // Methods in another case reach the rule that asks for something, never a public one.
        let p = Policy::compile(
            &[
                rule("open", &["GET"], &["/items/**"], RuleAction::Public),
                rule("delete", &["DELETE"], &["/items/**"], all(&["write"])),
            ],
            DefaultAction::Deny,
        )
        .unwrap();
        assert_eq!(name(&p, "delete", "/items/1"), Some("delete"));
        assert_eq!(name(&p, "Delete", "/items/1"), Some("delete"));
        assert_eq!(name(&p, "get", "/items/1"), None);
        assert_eq!(name(&p, "head", "/items/1"), None);
        assert_eq!(p.route("get", "/items/1").requirement, Requirement::Deny);
        let m = Matcher::compile(&["GET".into()], &["/login".into()], true).unwrap();
        assert!(m.matches("head", "/login"));
    }

    #[test]
    fn encoded_pattern_characters_reach_the_rule_of_their_decoded_form() {
        let p = Policy::compile(
            &[
                rule("cancel", &["POST"], &["/v1/orders:cancel"], all(&["write"])),
                rule("orders", &[], &["/v1/*"], RuleAction::Public),
            ],
            DefaultAction::Deny,
        )
        .unwrap();
        for raw in [
            "/v1/orders:cancel",
            "/v1/orders%3Acancel",
            "/v1/orders%3acancel",
            "/v1/%6Frders%3Acancel",
        ] {
            let path = crate::path::RequestPath::parse(raw).unwrap();
            assert_eq!(name(&p, "POST", path.route()), Some("cancel"), "{raw}");
        }
    }

    /// What a request with these credentials (`None`: no token; `Some(scopes)`: a valid
    /// token) gets past a requirement.
    fn allowed(requirement: Requirement<'_>, credentials: Option<&str>) -> bool {
        match (requirement, credentials) {
            (Requirement::Public, _) => true,
            (Requirement::Token(needed), Some(scopes)) => scopes_satisfy(needed, scopes),
            _ => false,
        }
    }

    const WORDS: [&str; 6] = ["admin", "items", "a", "b", "v1:run", "x-y"];
    const SCOPES: [&str; 3] = ["s1", "s2", "s3"];

    fn scope_set() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(SCOPES.to_vec(), 1..=3)
            .prop_map(|s| s.into_iter().map(str::to_owned).collect())
    }

    fn action() -> impl proptest::strategy::Strategy<Value = RuleAction> {
        use proptest::prelude::*;
        prop_oneof![
            Just(RuleAction::Public),
            Just(RuleAction::Authenticated),
            scope_set().prop_map(|scopes| RuleAction::RequireAll { scopes }),
            proptest::collection::vec(scope_set(), 1..3)
                .prop_map(|scope_sets| RuleAction::RequireAny { scope_sets }),
        ]
    }

    /// A pattern as a route is documented: lower-case literals, `*`, an optional final `/**`.
    fn pattern() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let segment = prop_oneof![4 => proptest::sample::select(WORDS.to_vec()), 1 => Just("*")];
        (proptest::collection::vec(segment, 0..4), any::<bool>()).prop_map(|(segments, prefix)| {
            let mut p: String = segments.iter().map(|s| format!("/{s}")).collect();
            if prefix {
                p.push_str("/**");
            } else if p.is_empty() {
                p.push('/');
            }
            p
        })
    }

    fn rules() -> impl proptest::strategy::Strategy<Value = Vec<RouteRule>> {
        let methods = proptest::sample::subsequence(vec!["GET", "POST"], 0..=2);
        let one = (
            methods,
            proptest::collection::vec(pattern(), 1..3),
            action(),
        )
            .prop_map(|(methods, paths, action)| RouteRule {
                name: None,
                methods: methods.into_iter().map(str::to_owned).collect(),
                paths,
                action,
                enforcement: None,
                when: None,
            });
        proptest::collection::vec(one, 1..7)
    }

    fn default_action() -> impl proptest::strategy::Strategy<Value = DefaultAction> {
        proptest::sample::select(vec![
            DefaultAction::Deny,
            DefaultAction::Authenticate,
            DefaultAction::Allow,
        ])
    }

    /// How one character of a canonical path is spelled.
    #[derive(Debug, Clone, Copy)]
    enum CharSpelling {
        Plain,
        OtherCase,
        EncodedUpper,
        EncodedLower,
    }

    /// What goes before a segment.
    #[derive(Debug, Clone, Copy)]
    enum Detour {
        None,
        Dot,
        DotDot,
        DoubleSlash,
        EncodedDotDot,
    }

    #[derive(Debug, Clone)]
    struct Spelling {
        chars: Vec<CharSpelling>,
        detours: Vec<Detour>,
        trailing_slash: bool,
        trailing_dot: bool,
        /// A GET spelled as HEAD.
        head: bool,
    }

    fn spelling() -> impl proptest::strategy::Strategy<Value = Spelling> {
        use proptest::prelude::*;
        let char_spelling = proptest::sample::select(vec![
            CharSpelling::Plain,
            CharSpelling::Plain,
            CharSpelling::OtherCase,
            CharSpelling::EncodedUpper,
            CharSpelling::EncodedLower,
        ]);
        let detour = proptest::sample::select(vec![
            Detour::None,
            Detour::None,
            Detour::Dot,
            Detour::DotDot,
            Detour::DoubleSlash,
            Detour::EncodedDotDot,
        ]);
        (
            proptest::collection::vec(char_spelling, 40),
            proptest::collection::vec(detour, 6),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(chars, detours, trailing_slash, trailing_dot, head)| Spelling {
                    chars,
                    detours,
                    trailing_slash,
                    trailing_dot,
                    head,
                },
            )
    }

    /// Spells the canonical path of `segments` another way: letters in another case,
    /// characters percent-encoded, `.`, `x/..` and `//` detours, a trailing `/` or `/.`.
    fn spell(segments: &[&str], how: &Spelling) -> String {
        let mut out = String::new();
        let mut n = 0;
        for (i, segment) in segments.iter().enumerate() {
            match how.detours[i % how.detours.len()] {
                Detour::None => {}
                Detour::Dot => out.push_str("/."),
                Detour::DotDot => out.push_str("/detour/.."),
                Detour::DoubleSlash => out.push('/'),
                Detour::EncodedDotDot => out.push_str("/detour/%2E%2e"),
            }
            out.push('/');
            for c in segment.chars() {
                match how.chars[n % how.chars.len()] {
                    CharSpelling::Plain => out.push(c),
                    CharSpelling::OtherCase if c.is_ascii_lowercase() => {
                        out.push(c.to_ascii_uppercase())
                    }
                    CharSpelling::OtherCase => out.push(c),
                    CharSpelling::EncodedUpper => out.push_str(&format!("%{:02X}", c as u32)),
                    CharSpelling::EncodedLower => out.push_str(&format!("%{:02x}", c as u32)),
                }
                n += 1;
            }
        }
        if how.trailing_dot {
            out.push_str("/.");
        } else if how.trailing_slash || out.is_empty() {
            out.push('/');
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// No spelling of a path (encodings, dot segments, doubled slashes, another case, a
        /// trailing slash, HEAD for GET) reaches a rule more permissive than the one its
        /// normalised form reaches: whatever the spelling lets through, the normalised form
        /// lets through too, for every set of credentials.
        #[test]
        fn no_spelling_reaches_a_more_permissive_rule(
            rules in rules(),
            default in default_action(),
            segments in proptest::collection::vec(
                proptest::sample::select(WORDS.iter().copied().chain(["other"]).collect::<Vec<_>>()),
                0..4,
            ),
            how in spelling(),
            method in proptest::sample::select(vec!["GET", "POST", "DELETE"]),
        ) {
            let policy = Policy::compile(&rules, default).unwrap();
            let canonical: String = if segments.is_empty() {
                "/".to_owned()
            } else {
                segments.iter().map(|s| format!("/{s}")).collect()
            };
            let raw = spell(&segments, &how);
            let path = crate::path::RequestPath::parse(&raw)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{raw}: {e}")))?;
            let spelled_method = if method == "GET" && how.head { "HEAD" } else { method };
            let by_spelling = policy.route(spelled_method, path.route()).requirement;
            let by_normal_form = policy.route(method, &canonical).requirement;
            // No token, and a valid token with each subset of the scopes.
            let mut credentials: Vec<Option<String>> = vec![None];
            for mask in 0..(1u8 << SCOPES.len()) {
                let set: Vec<&str> = SCOPES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, s)| *s)
                    .collect();
                credentials.push(Some(set.join(" ")));
            }
            for creds in &credentials {
                proptest::prop_assert!(
                    !allowed(by_spelling, creds.as_deref()) || allowed(by_normal_form, creds.as_deref()),
                    "{raw} ({spelled_method}) lets {creds:?} through to {by_spelling:?}, its normal form {canonical} ({method}) only to {by_normal_form:?}"
                );
            }
        }

        /// Spellings that differ only in encoding, dot segments and doubled slashes reach the
        /// very same rule, whatever the patterns look like.
        #[test]
        fn encodings_and_detours_reach_the_same_rule(
            rules in rules(),
            default in default_action(),
            segments in proptest::collection::vec(
                proptest::sample::select(WORDS.iter().copied().chain(["Admin", "ITEMS"]).collect::<Vec<_>>()),
                0..4,
            ),
            mut how in spelling(),
        ) {
            for c in &mut how.chars {
                if matches!(c, CharSpelling::OtherCase) {
                    *c = CharSpelling::Plain;
                }
            }
            how.trailing_slash = false;
            how.trailing_dot = false;
            let policy = Policy::compile(&rules, default).unwrap();
            let canonical: String = if segments.is_empty() {
                "/".to_owned()
            } else {
                segments.iter().map(|s| format!("/{s}")).collect()
            };
            let raw = spell(&segments, &how);
            let path = crate::path::RequestPath::parse(&raw).unwrap();
            proptest::prop_assert_eq!(path.route(), canonical.as_str(), "{}", raw);
            proptest::prop_assert_eq!(
                policy.route("GET", path.route()).rule_index,
                policy.route("GET", &canonical).rule_index
            );
        }
    }

    #[test]
    fn refuses_broken_rules() {
        let bad = [
            rule("p", &[], &["/x/../y"], RuleAction::Public),
            rule("p", &[], &[], RuleAction::Public),
            rule("p", &["get"], &["/x"], RuleAction::Public),
            rule("p", &[], &["/x"], all(&[])),
            rule("p", &[], &["/x"], all(&["a b"])),
            rule(
                "p",
                &[],
                &["/x"],
                RuleAction::RequireAny { scope_sets: vec![] },
            ),
        ];
        for r in bad {
            assert!(
                Policy::compile(std::slice::from_ref(&r), DefaultAction::Deny).is_err(),
                "{r:?}"
            );
        }
    }

    #[test]
    fn when_conditions_compile_with_their_rule_or_refuse_it() {
        let mut tenant = rule("tenant", &[], &["/t/**"], all(&["read"]));
        tenant.when = Some(r#""admins" in claims.groups"#.into());
        let plain = rule("plain", &[], &["/p/**"], all(&["read"]));
        let policy = Policy::compile(&[plain.clone(), tenant.clone()], DefaultAction::Deny)
            .expect("compiles");
        assert!(policy.has_conditions());
        assert!(policy.condition(Some(1)).is_some());
        assert!(policy.condition(Some(0)).is_none());
        assert!(
            policy.condition(None).is_none(),
            "the default action has none"
        );
        let without =
            Policy::compile(std::slice::from_ref(&plain), DefaultAction::Deny).expect("compiles");
        assert!(!without.has_conditions());

        let mut bad = tenant.clone();
        bad.when = Some("claims.groups.exists(g, g.lowerAscii() == 'a')".into());
        let refused = Policy::compile(&[plain.clone(), bad], DefaultAction::Deny);
        assert!(
            matches!(
                refused,
                Err(PolicyError::Condition {
                    ref rule,
                    source: CompileError::UnknownFunction { .. }
                }) if rule == "tenant"
            ),
            "{refused:?}"
        );
        let mut public = rule("open", &[], &["/o"], RuleAction::Public);
        public.when = Some("true".into());
        assert_eq!(
            Policy::compile(&[public], DefaultAction::Deny).err(),
            Some(PolicyError::PublicCondition(0))
        );
    }
}
