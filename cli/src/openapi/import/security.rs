//! Security requirements: what an operation's `security` asks of a request, as a rule can
//! say it (public, any token, `require`, `anyOf`), and what cannot be said, reported.

use serde_json::{Map, Value};

use super::Note;

/// What an operation needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Need {
    /// No token needed.
    Public,
    /// Any valid token.
    AnyToken,
    /// All of these scopes.
    All(Vec<String>),
    /// All scopes of at least one of these sets.
    Any(Vec<Vec<String>>),
}

/// What a security requirement list asks of a request; `None`: nothing scopegate can verify
/// (reported as an error).
pub(super) fn need_of(
    security: Option<&Vec<Value>>,
    schemes: &Map<String, Value>,
    operation: &str,
    notes: &mut Vec<Note>,
) -> Option<Need> {
    let Some(list) = security else {
        return Some(Need::Public);
    };
    let note = |notes: &mut Vec<Note>, severity, message| {
        notes.push(Note {
            severity,
            operation: operation.into(),
            message,
        });
    };
    let mut alternatives: Vec<Vec<String>> = Vec::new();
    let mut anonymous = false;
    let mut dropped = Vec::new();
    for requirement in list {
        let Some(requirement) = requirement.as_object() else {
            note(
                notes,
                "warning",
                "a security requirement that is not an object: ignored".into(),
            );
            continue;
        };
        if requirement.is_empty() {
            anonymous = true;
            continue;
        }
        let (token, others) = requirement_schemes(requirement, schemes, operation, notes);
        match (token, others.is_empty()) {
            (Some(scopes), true) => alternatives.push(scopes),
            (Some(scopes), false) => {
                note(
                    notes,
                    "warning",
                    format!(
                        "needs a token and also {}: scopegate verifies the token, the app must keep checking the rest",
                        others.join(", ")
                    ),
                );
                alternatives.push(scopes);
            }
            (None, _) => dropped.push(others.join(" and ")),
        }
    }
    if anonymous || list.is_empty() {
        return Some(Need::Public);
    }
    if alternatives.is_empty() {
        note(
            notes,
            "error",
            format!(
                "only schemes scopegate cannot verify: {}: no rule (the default action, Deny, applies); put a rule for it by hand",
                dropped.join("; ")
            ),
        );
        return None;
    }
    for d in &dropped {
        note(
            notes,
            "warning",
            format!("alternative {d} is not verified by scopegate: left out, a token is required"),
        );
    }
    need_of_alternatives(alternatives, operation, notes)
}

/// One requirement object (its schemes all apply): the scopes of its token schemes (`None`:
/// it names none), and the schemes scopegate cannot verify, described.
fn requirement_schemes(
    requirement: &Map<String, Value>,
    schemes: &Map<String, Value>,
    operation: &str,
    notes: &mut Vec<Note>,
) -> (Option<Vec<String>>, Vec<String>) {
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
                        message: format!(
                            "bearer scheme {scheme_name:?} lists roles {scopes:?}: taken as scopes"
                        ),
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
    (token, others)
}

/// The need of one or more token alternatives (a list of requirements is OR): any token when
/// one names no scope, `require` for one, `anyOf` for up to 8.
fn need_of_alternatives(
    mut alternatives: Vec<Vec<String>>,
    operation: &str,
    notes: &mut Vec<Note>,
) -> Option<Need> {
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
