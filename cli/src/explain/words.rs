//! Rules, requirements and tokens in words, as explanations, findings and exported documents
//! name them.

use std::collections::BTreeMap;

use scopegate_core::config::{RouteRule, RuleAction};
use scopegate_core::decision::GrantOwned;
use scopegate_core::jose::{b64, json};
use scopegate_core::token::TokenError;

use super::report::RuleInfo;

/// A rule as findings and explanations name it: `"admin" (rules[2])`.
pub fn rule_label(rules: &[RouteRule], index: usize) -> String {
    match rules.get(index).and_then(|r| r.name.as_deref()) {
        Some(name) => format!("{name:?} (rules[{index}])"),
        None => format!("rules[{index}]"),
    }
}

/// What a rule asks, in words.
pub fn action_text(action: &RuleAction) -> String {
    match action {
        RuleAction::Public => "public".into(),
        RuleAction::Authenticated => "any valid token".into(),
        RuleAction::RequireAll { scopes } => format!("require [{}]", scopes.join(", ")),
        RuleAction::RequireAny { scope_sets } => format!(
            "anyOf {}",
            scope_sets
                .iter()
                .map(|s| format!("[{}]", s.join(", ")))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    }
}

pub(super) fn rule_info(rules: &[RouteRule], index: usize) -> RuleInfo {
    let rule = &rules[index];
    RuleInfo {
        index,
        name: rule.name.clone(),
        methods: rule.methods.clone(),
        paths: rule.paths.clone(),
        action: action_text(&rule.action),
    }
}

pub(super) fn needed_text(grant: &GrantOwned) -> String {
    match grant {
        GrantOwned::AnyToken => "any valid token".into(),
        GrantOwned::All(s) => format!("all of [{}]", s.join(", ")),
        GrantOwned::Any(sets) => format!(
            "one of {}",
            sets.iter()
                .map(|s| format!("[{}]", s.join(", ")))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        GrantOwned::Denied => "nothing passes: the default action denies this route".into(),
    }
}

/// The check a token failed, in words (the sidecar logs the same reason).
pub(super) fn token_failure(err: &TokenError) -> String {
    scopegate_core::error_chain(err)
}

/// `alg`, `kid` and `typ` as the token's header states them (display only: validation
/// takes the algorithm from the key).
pub(super) fn header_of(token: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(first) = token.split('.').next() else {
        return out;
    };
    let Ok(bytes) = b64::decode(first.as_bytes()) else {
        return out;
    };
    if let Ok(header) = json::parse_header(&bytes) {
        out.insert("alg".into(), header.alg.to_string());
        if let Some(kid) = header.kid {
            out.insert("kid".into(), kid.to_string());
        }
        if let Some(typ) = header.typ {
            out.insert("typ".into(), typ.to_string());
        }
    }
    out
}
