//! `explain -o table`: the explanation for people, one line (or a few) per step.

use super::report::{DecisionInfo, Explanation, PathInfo, RuleInfo, ScopeInfo, TokenInfo};

/// The whole explanation as a table: policy, request, path, rule, credentials, token, scopes,
/// decision and notes, in the order the sidecar takes its steps.
pub(super) fn table(e: &Explanation) -> String {
    let mut out = policy_lines(e);
    out.push_str(&format!(
        "REQUEST   {} {}\n",
        e.request.method, e.request.target
    ));
    out.push_str(&path_line(&e.path));
    out.push_str(&rule_lines(e));
    for limit in &e.rate_limits {
        out.push_str(&format!("  rate limit  {limit}\n"));
    }
    out.push_str(&format!("  credentials {}\n", e.credentials));
    if let Some(t) = &e.token {
        out.push_str(&token_line(t));
    }
    if let Some(s) = &e.scopes {
        out.push_str(&scopes_line(s));
    }
    out.push_str(&decision_lines(&e.decision));
    for n in &e.notes {
        out.push_str(&format!("NOTE      {n}\n"));
    }
    out
}

/// The policy, its generation and source, and what of it is in DryRun.
fn policy_lines(e: &Explanation) -> String {
    let mut out = format!(
        "POLICY    {}  generation {}  ({})\n",
        e.policy.name, e.policy.generation, e.policy.source
    );
    let dry = &e.enforcement.dry_run_rules;
    if e.enforcement.policy == "DryRun" {
        out.push_str(
            "          enforcement DryRun: requests its rules would refuse are forwarded, counted and logged\n",
        );
    }
    if !dry.is_empty() {
        out.push_str(&format!("          in DryRun: {}\n", dry.join(", ")));
    }
    out
}

/// How the path was read: refused, or what the app receives and what rules see.
fn path_line(path: &PathInfo) -> String {
    match (&path.refused, &path.route) {
        (Some(why), _) => format!("  path        {}  refused: {why}\n", path.raw),
        (None, Some(route)) => {
            let forwarded = path.forwarded.as_deref().unwrap_or_default();
            let mut out = format!("  path        {} -> {forwarded}", path.raw);
            if route != forwarded {
                out.push_str(&format!(" (rules see {route})"));
            }
            out.push('\n');
            out
        }
        _ => String::new(),
    }
}

/// The rule that decided (or the default action), whether it is enforced, and why the other
/// matching rules lost.
fn rule_lines(e: &Explanation) -> String {
    let mut out = String::new();
    if let Some(rule) = &e.rule {
        out.push_str(&rule_line(rule));
    } else if let Some(default) = &e.default_action {
        out.push_str(&format!(
            "  rule        none matches: defaultAction {default}\n"
        ));
    }
    if !e.enforcement.enforced {
        out.push_str("              this rule is in DryRun: a refusal is counted, not enforced\n");
    }
    for c in e.candidates.iter().filter(|c| !c.won) {
        out.push_str(&format!(
            "              {} lost: {}\n",
            c.rule,
            c.lost_because.as_deref().unwrap_or("")
        ));
    }
    out
}

/// The deciding rule: its label, methods, patterns and action.
fn rule_line(rule: &RuleInfo) -> String {
    let methods = if rule.methods.is_empty() {
        "any method".to_owned()
    } else {
        rule.methods.join(",")
    };
    format!(
        "  rule        {}  {methods} {}  {}\n",
        match &rule.name {
            Some(n) => format!("{n:?} (rules[{}])", rule.index),
            None => format!("rules[{}]", rule.index),
        },
        rule.paths.join(" "),
        rule.action
    )
}

/// The token: its header, and either why it is invalid or who it names.
fn token_line(t: &TokenInfo) -> String {
    let header = t
        .header
        .as_ref()
        .map(|h| {
            h.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let header = if header.is_empty() {
        "(not verified: scopes given)".to_owned()
    } else {
        header
    };
    match &t.failed {
        Some(why) => format!("  token       {header}  INVALID: {why}\n"),
        None => format!(
            "  token       {header}  valid  sub={} client_id={}{}\n",
            t.subject.as_deref().unwrap_or("-"),
            t.client_id.as_deref().unwrap_or("-"),
            t.expires
                .as_ref()
                .map(|e| format!("  expires {e}"))
                .unwrap_or_default()
        ),
    }
}

/// The scope check: what is needed, what the token has, and whether that is enough.
fn scopes_line(s: &ScopeInfo) -> String {
    format!(
        "  scopes      needs {}; token has {}: {}\n",
        s.needed,
        s.has,
        if s.satisfied { "ok" } else { "not enough" }
    )
}

/// What the sidecar answers: forwarded (with the identity headers, and in DryRun the refusal
/// it would give), or refused with its status and challenge.
fn decision_lines(d: &DecisionInfo) -> String {
    let mut out = String::new();
    if let Some(would) = &d.would_refuse {
        out.push_str(&format!(
            "DECISION  forwarded to the app (DryRun: enforced, it would be {} {}{})\n",
            would.status,
            would.outcome,
            would
                .www_authenticate
                .as_ref()
                .map(|c| format!(", WWW-Authenticate: {c}"))
                .unwrap_or_default()
        ));
        out.push_str(&identity_lines(d));
    } else if d.forwarded {
        out.push_str(&format!("DECISION  forwarded to the app ({})\n", d.outcome));
        out.push_str(&identity_lines(d));
    } else {
        out.push_str(&format!("DECISION  {} {}", d.status, d.outcome));
        if let Some(c) = &d.www_authenticate {
            out.push_str(&format!("  WWW-Authenticate: {c}"));
        }
        out.push('\n');
    }
    out
}

/// The identity headers the app receives, one per line.
fn identity_lines(d: &DecisionInfo) -> String {
    d.identity_headers
        .iter()
        .map(|(k, v)| format!("  {k}: {v}\n"))
        .collect()
}
