//! Route policy: which rule a request falls under and whether a token's scopes satisfy it.
//!
//! Pure functions over the config's [`RouteRule`]s: the sidecar compiles them once per config
//! and asks [`Policy::route`] per request, with a path already normalised by
//! [`crate::path::normalise`]. The most specific rule wins (see
//! [`crate::path::Specificity`]); at equal path specificity a rule that names methods beats
//! one that does not, then the earlier rule in the document.

use crate::config::{DefaultAction, RouteRule, RuleAction};
use crate::path::{Pattern, PatternError, Specificity};
use crate::scope::is_scope_token;

/// Why rules were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A path pattern does not follow the grammar.
    #[error("rule {rule}: {source}")]
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
}

/// Rules compiled from the config, ready to match.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<CompiledRule>,
    default_action: DefaultAction,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: Option<String>,
    methods: Vec<String>,
    patterns: Vec<(Pattern, Specificity)>,
    action: RuleAction,
}

impl Policy {
    /// Checks and compiles rules.
    pub fn compile(
        rules: &[RouteRule],
        default_action: DefaultAction,
    ) -> Result<Self, PolicyError> {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| compile_rule(index, rule))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            rules: compiled,
            default_action,
        })
    }

    /// The requirement for a request. `path` must be normalised.
    pub fn route(&self, method: &str, path: &str) -> Route<'_> {
        let mut best: Option<(usize, (&Specificity, bool))> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == method) {
                continue;
            }
            let Some(rank) = rule
                .patterns
                .iter()
                .filter(|(pattern, _)| pattern.matches(path))
                .map(|(_, rank)| rank)
                .max()
            else {
                continue;
            };
            let key = (rank, !rule.methods.is_empty());
            // Strictly greater: the earlier rule wins a tie.
            if best.as_ref().is_none_or(|(_, best_key)| key > *best_key) {
                best = Some((index, key));
            }
        }
        match best {
            Some((index, _)) => {
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
                }
            }
            None => Route {
                requirement: match self.default_action {
                    DefaultAction::Deny => Requirement::Deny,
                    DefaultAction::Authenticate => Requirement::Token(ScopeRequirement::None),
                    DefaultAction::Allow => Requirement::Public,
                },
                rule_name: None,
                rule_index: None,
            },
        }
    }
}

fn compile_rule(index: usize, rule: &RouteRule) -> Result<CompiledRule, PolicyError> {
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
    let patterns = rule
        .paths
        .iter()
        .map(|text| {
            Pattern::parse(text)
                .map(|p| {
                    let rank = p.specificity();
                    (p, rank)
                })
                .map_err(|source| PolicyError::Pattern {
                    rule: index,
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(CompiledRule {
        name: rule.name.clone(),
        methods: rule.methods.clone(),
        patterns,
        action: rule.action.clone(),
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

    fn rule(name: &str, methods: &[&str], paths: &[&str], action: RuleAction) -> RouteRule {
        RouteRule {
            name: Some(name.into()),
            methods: methods.iter().map(|m| (*m).into()).collect(),
            paths: paths.iter().map(|p| (*p).into()).collect(),
            action,
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
}
