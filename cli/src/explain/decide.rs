//! The explanation itself: every step is a call into `scopegate_core`, the code the sidecar
//! runs, and each step's result is kept for the report.

use std::collections::BTreeMap;

use anyhow::Context as _;
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};
use scopegate_core::answer::{Refusal, answer};
use scopegate_core::condition::RequestFacts;
use scopegate_core::config::{Enforcement, RateLimitKey, SidecarConfig};
use scopegate_core::decision::{self, Evaluation, Trace};
use scopegate_core::path::RequestPath;
use scopegate_core::policy::{Candidate, Matcher, Policy, Requirement, Route, check_scope_claim};
use scopegate_core::revocation;
use scopegate_core::token::{self, TokenError, TokenRules, VerifiedToken};

use super::Request;
use super::report::{
    CandidateInfo, DecisionInfo, EnforcementInfo, Explanation, PathInfo, PolicyInfo, RequestInfo,
    ScopeInfo, TokenInfo,
};
use super::words::{header_of, needed_text, rule_info, rule_label, token_failure};
use crate::output;
use crate::source::TrustedKeys;

/// Explains one request against a config.
pub fn explain(
    config: &SidecarConfig,
    origin: &str,
    request: &Request,
    keys: &TrustedKeys,
    now: i64,
) -> anyhow::Result<Explanation> {
    let policy = Policy::from_config(config)
        .context("the policy's rules do not compile (the sidecar keeps its last good config)")?;
    let (raw_path, query) = match request.target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.target.as_str(), None),
    };
    let mut notes = keys.notes.clone();
    let dry_run_rules = policy.dry_run_labels();
    let path = match RequestPath::parse(raw_path) {
        Ok(path) => path,
        Err(err) => {
            let path = path_refused(raw_path, err.to_string());
            return Ok(refused_path(
                config,
                origin,
                request,
                dry_run_rules,
                path,
                notes,
            ));
        }
    };
    notes.extend(issuer_endpoint_note(config, path.forward()));
    let method = request.method.as_str();
    let route = policy.route(method, path.route());
    let candidates = candidates(config, &policy, method, path.route(), route.rule_index);
    let rate_limits = rate_limits(config, method, path.route());
    let headers = headers_with_given_scopes(request);
    let mut verifier = Verifier::new(config, request, keys, now, policy.has_conditions());
    let mut evaluation = verifier.evaluate(route.requirement, &headers, query);
    let asked = RequestFacts {
        method,
        path: path.route(),
        headers: &request.headers,
        source: None,
    };
    notes.extend(judge_condition(&policy, &route, &asked, &mut evaluation));
    // A rule in DryRun is only counted: the enforced rules decide as if it did not exist, as
    // in the sidecar, and the request is refused if they refuse it.
    let enforced_refusal = policy
        .enforced_route(method, path.route())
        .filter(|enforced| !route.enforced && enforced.rule_index != route.rule_index)
        .and_then(|enforced| {
            let refusal = verifier.evaluate(enforced.requirement, &headers, query);
            Some((enforced, refusal.decision.err()?))
        });
    notes.extend(revocation_note(&evaluation.trace, request));
    let (token, scopes) = token_and_scopes(&evaluation, verifier.header, request, now);
    if let Some((enforced, _)) = &enforced_refusal {
        notes.push(dry_run_note(&route, enforced));
    }
    let refusal = enforced_refusal.as_ref().map(|(_, refusal)| refusal);
    let decision = decision_info(config, &evaluation, refusal, route.enforced);
    Ok(Explanation {
        policy: policy_info(config, origin),
        enforcement: enforcement_info(config, dry_run_rules, route.enforced),
        request: request_info(request),
        path: path_read(raw_path, &path),
        rule: route.rule_index.map(|i| rule_info(&config.rules, i)),
        default_action: default_action(config, route.rule_index),
        candidates,
        rate_limits,
        credentials: credentials_text(&evaluation.trace, request.scopes.is_some()),
        token,
        scopes,
        decision,
        notes,
    })
}

/// The rule's `when` condition, judged as the sidecar judges it for a token that passed the
/// scope check (a refusal replaces the decision); the note says what it came to.
fn judge_condition(
    policy: &Policy,
    route: &Route<'_>,
    asked: &RequestFacts<'_>,
    evaluation: &mut Evaluation,
) -> Option<String> {
    let condition = policy.condition(route.rule_index)?;
    let Ok(Some(token)) = &evaluation.decision else {
        return None;
    };
    let Some(claims) = token.claims.as_deref() else {
        return Some(
            "the rule's when condition reads the token's claims: not evaluated with --scopes (give --token)"
                .into(),
        );
    };
    let (holds, why) = match condition.evaluate(claims, asked) {
        Ok(true) => (true, "true".to_owned()),
        Ok(false) => (false, "false".to_owned()),
        Err(err) => (false, err.to_string()),
    };
    if !holds {
        evaluation.decision = Err(Refusal::ConditionNotMet);
    }
    let source = if condition.reads_source() {
        " (source.address is not known here: it reads as empty)"
    } else {
        ""
    };
    Some(format!("the rule's when condition: {why}{source}"))
}

/// A path the sidecar refuses to read, and why.
fn path_refused(raw: &str, why: String) -> PathInfo {
    PathInfo {
        raw: raw.to_owned(),
        forwarded: None,
        route: None,
        refused: Some(why),
    }
}

/// A path as the sidecar reads it: what the app receives and what rules match.
fn path_read(raw: &str, path: &RequestPath) -> PathInfo {
    PathInfo {
        raw: raw.to_owned(),
        forwarded: Some(path.forward().to_owned()),
        route: Some(path.route().to_owned()),
        refused: None,
    }
}

/// The default action, lower-case, when no rule matched.
fn default_action(config: &SidecarConfig, rule_index: Option<usize>) -> Option<String> {
    rule_index
        .is_none()
        .then(|| format!("{:?}", config.default_action).to_ascii_lowercase())
}

/// For a verified token: the revocations this explanation cannot check.
fn revocation_note(trace: &Trace, request: &Request) -> Option<String> {
    (matches!(trace, Trace::Token { .. }) && request.scopes.is_none()).then(|| {
        "revocations from the issuer's feed (jti, subject cut-offs) live in the sidecars only \
         and are not checked here"
            .into()
    })
}

/// Why a request whose rule is in DryRun is refused anyway: the enforced rules refuse it.
fn dry_run_note(route: &Route<'_>, enforced: &Route<'_>) -> String {
    format!(
        "{} is in DryRun: the enforced rules decide as if it did not exist, and {} refuses",
        route.label(),
        enforced.label()
    )
}

/// The explanation of a path the sidecar refuses before any rule is asked.
fn refused_path(
    config: &SidecarConfig,
    origin: &str,
    request: &Request,
    dry_run_rules: Vec<String>,
    path: PathInfo,
    mut notes: Vec<String>,
) -> Explanation {
    if !dry_run_rules.is_empty() {
        notes.push(
            "a refused path spelling is refused in DryRun too: the rules could not \
             be matched on it"
                .into(),
        );
    }
    Explanation {
        policy: policy_info(config, origin),
        enforcement: enforcement_info(config, dry_run_rules, true),
        request: request_info(request),
        path,
        rule: None,
        default_action: None,
        candidates: Vec::new(),
        rate_limits: Vec::new(),
        credentials: "not read".into(),
        token: None,
        scopes: None,
        decision: refused(&Refusal::BadPath),
        notes,
    }
}

/// The policy's name, generation and where it was read from.
fn policy_info(config: &SidecarConfig, origin: &str) -> PolicyInfo {
    PolicyInfo {
        name: format!("{}/{}", config.policy.namespace, config.policy.name),
        generation: config.policy.generation,
        source: origin.to_owned(),
    }
}

/// The request as given.
fn request_info(request: &Request) -> RequestInfo {
    RequestInfo {
        method: request.method.clone(),
        target: request.target.clone(),
    }
}

/// The policy's enforcement, its rules in DryRun, and whether this decision is enforced.
fn enforcement_info(
    config: &SidecarConfig,
    dry_run_rules: Vec<String>,
    enforced: bool,
) -> EnforcementInfo {
    EnforcementInfo {
        policy: match config.enforcement {
            Enforcement::Enforce => "Enforce".into(),
            Enforcement::DryRun => "DryRun".into(),
        },
        dry_run_rules,
        enforced,
    }
}

/// A note when the forwarded path is one of the policy's own issuer endpoints, which the
/// issuer answers before any rule or rate limit.
fn issuer_endpoint_note(config: &SidecarConfig, forwarded: &str) -> Option<String> {
    let role = config.issuer.as_ref()?;
    let prefix = scopegate_core::endpoints::path_prefix(&role.url)?;
    let endpoint = scopegate_core::endpoints::endpoint(&prefix, forwarded)?;
    Some(format!(
        "{endpoint} is an endpoint of this policy's issuer: the issuer answers it, and \
         the rules and rate limits below do not apply"
    ))
}

/// Every rule that matches the request, whether it won, and why each other one lost.
fn candidates(
    config: &SidecarConfig,
    policy: &Policy,
    method: &str,
    route_path: &str,
    winner_index: Option<usize>,
) -> Vec<CandidateInfo> {
    let all = policy.candidates(method, route_path);
    let winner = winner_index.and_then(|w| all.iter().find(|x| x.rule_index == w));
    let winner_label = winner_index.map_or_else(String::new, |i| rule_label(&config.rules, i));
    all.iter()
        .map(|c| {
            let won = Some(c.rule_index) == winner_index;
            CandidateInfo {
                rule: rule_label(&config.rules, c.rule_index),
                won,
                lost_because: (!won).then(|| lost_because(c, winner, &winner_label)),
            }
        })
        .collect()
}

/// Why a matching rule lost to the winner: less specific, as specific but the winner names
/// methods, or as specific and the winner comes first.
fn lost_because(loser: &Candidate<'_>, winner: Option<&Candidate<'_>>, label: &str) -> String {
    match winner {
        Some(w) if w.specificity > loser.specificity => format!("less specific than {label}"),
        Some(w)
            if w.specificity == loser.specificity && w.names_methods && !loser.names_methods =>
        {
            format!("as specific as {label}, which names methods")
        }
        _ => format!("as specific as {label}, which comes first"),
    }
}

/// The rate limits that count this request, with their budgets and keys.
fn rate_limits(config: &SidecarConfig, method: &str, route_path: &str) -> Vec<String> {
    config
        .rate_limits
        .iter()
        // The sidecar's rate limits match loosely, with the same matcher as rules.
        .filter(|limit| {
            Matcher::compile(&limit.methods, &limit.paths, true)
                .is_ok_and(|matcher| matcher.matches(method, route_path))
        })
        .map(|limit| {
            format!(
                "{} ({} per {}s per {})",
                limit.name,
                limit.requests,
                limit.period_secs,
                match limit.key {
                    RateLimitKey::ClientAddress => "client address",
                    RateLimitKey::Subject => "subject",
                }
            )
        })
        .collect()
}

/// The request's headers; with `--scopes` and no Authorization header, a stand-in bearer
/// token so that the sidecar's steps read a credential.
fn headers_with_given_scopes(request: &Request) -> HeaderMap {
    let mut headers = request.headers.clone();
    if request.scopes.is_some() && !headers.contains_key(AUTHORIZATION) {
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer given-scopes"),
        );
    }
    headers
}

/// Validates tokens as the sidecar does (or takes `--scopes` as a valid token), and keeps
/// the header of the last token it saw for the report.
struct Verifier<'a> {
    config: &'a SidecarConfig,
    scopes: Option<&'a [String]>,
    keys: &'a TrustedKeys,
    rules: TokenRules,
    now: i64,
    /// `alg`, `kid` and `typ` of the token validated, as it states them.
    header: Option<BTreeMap<String, String>>,
}

impl<'a> Verifier<'a> {
    fn new(
        config: &'a SidecarConfig,
        request: &'a Request,
        keys: &'a TrustedKeys,
        now: i64,
        keep_claims: bool,
    ) -> Self {
        Self {
            config,
            scopes: request.scopes.as_deref(),
            keys,
            rules: TokenRules {
                keep_claims,
                ..TokenRules::from_config(&config.verify)
            },
            now,
            header: None,
        }
    }

    /// The sidecar's three steps, with this verifier validating the token.
    fn evaluate(
        &mut self,
        requirement: Requirement<'_>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Evaluation {
        decision::evaluate(requirement, headers, query, |t| self.validate(t))
    }

    /// The sidecar's validation and client cut-offs; with `--scopes`, a token carrying them.
    fn validate(&mut self, token: &str) -> Result<VerifiedToken, TokenError> {
        if let Some(scopes) = self.scopes {
            let scope = scopes.join(" ");
            check_scope_claim(&scope)?;
            return Ok(VerifiedToken {
                iss: "(not verified: --scopes)".into(),
                sub: None,
                client_id: None,
                scope,
                exp: self.now,
                iat: None,
                jti: None,
                claims: None,
            });
        }
        self.header = Some(header_of(token));
        let keys = self.keys;
        let verified = token::validate(
            token,
            &self.rules,
            |iss| keys.issuers.get(iss).cloned(),
            self.now,
        )?;
        if let Some(reason) =
            revocation::revoked(&verified, &self.config.revocation.client_cutoffs, None)
        {
            return Err(TokenError::Revoked(reason));
        }
        Ok(verified)
    }
}

/// What the credentials were, as the trace of the sidecar's steps says.
fn credentials_text(trace: &Trace, scopes_given: bool) -> String {
    match trace {
        Trace::Public => "not read (public route)".to_owned(),
        Trace::Early(early) => early.to_string(),
        Trace::Token { .. } if scopes_given => "a valid token taken as given (--scopes)".to_owned(),
        Trace::Token { .. } => "bearer token".to_owned(),
    }
}

/// The token (valid, or the check it failed) and, for a valid one, the scope check.
fn token_and_scopes(
    evaluation: &Evaluation,
    header: Option<BTreeMap<String, String>>,
    request: &Request,
    now: i64,
) -> (Option<TokenInfo>, Option<ScopeInfo>) {
    let Trace::Token { grant, validation } = &evaluation.trace else {
        return (None, None);
    };
    let token = match validation {
        Ok(v) => TokenInfo {
            header,
            valid: true,
            failed: None,
            subject: v.sub.clone(),
            client_id: v.client_id.clone(),
            scope: Some(v.scope.clone()),
            expires: (request.scopes.is_none()).then(|| output::when(v.exp, now)),
        },
        Err(err) => TokenInfo {
            header,
            valid: false,
            failed: Some(token_failure(err)),
            subject: None,
            client_id: None,
            scope: None,
            expires: None,
        },
    };
    let scopes = validation.as_ref().ok().map(|v| ScopeInfo {
        needed: needed_text(grant),
        has: if v.scope.is_empty() {
            "(none)".into()
        } else {
            v.scope.clone()
        },
        satisfied: evaluation.decision.is_ok(),
    });
    (Some(token), scopes)
}

/// What the sidecar answers: the enforced rules' refusal of a request whose own rule is in
/// DryRun, a refusal, a DryRun refusal forwarded anyway, or a forwarded request.
fn decision_info(
    config: &SidecarConfig,
    evaluation: &Evaluation,
    enforced_refusal: Option<&Refusal>,
    enforced: bool,
) -> DecisionInfo {
    match (&evaluation.decision, enforced_refusal) {
        (_, Some(refusal)) => refused(refusal),
        (Err(refusal), None) if enforced => refused(refusal),
        (Err(refusal), None) => DecisionInfo {
            status: 200,
            outcome: "dry_run".into(),
            forwarded: true,
            www_authenticate: None,
            // The identity the app is told: a valid token's, whether or not the rule is
            // satisfied (that matters in DryRun only: an enforced refusal forwards nothing).
            identity_headers: identity_headers(config, verified_token(&evaluation.trace)),
            would_refuse: Some(Box::new(refused(refusal))),
        },
        (Ok(identity), None) => DecisionInfo {
            status: 200,
            outcome: if identity.is_some() {
                "allowed"
            } else {
                "public"
            }
            .into(),
            forwarded: true,
            www_authenticate: None,
            identity_headers: identity_headers(config, identity.as_ref()),
            would_refuse: None,
        },
    }
}

/// The token that validated, if one did.
fn verified_token(trace: &Trace) -> Option<&VerifiedToken> {
    match trace {
        Trace::Token {
            validation: Ok(v), ..
        } => Some(v),
        _ => None,
    }
}

/// A refusal as the client gets it: status, outcome label and challenge.
fn refused(refusal: &Refusal) -> DecisionInfo {
    let answer = answer(refusal);
    DecisionInfo {
        status: answer.status.as_u16(),
        outcome: refusal.outcome().into(),
        forwarded: false,
        www_authenticate: answer
            .challenge
            .and_then(|c| c.to_str().ok().map(str::to_owned)),
        identity_headers: BTreeMap::new(),
        would_refuse: None,
    }
}

/// The identity headers the sidecar sets for a verified token.
fn identity_headers(
    config: &SidecarConfig,
    verified: Option<&VerifiedToken>,
) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    if let Some(v) = verified {
        let h = &config.headers;
        if let Some(sub) = &v.sub {
            headers.insert(h.subject_header.clone(), sub.clone());
        }
        headers.insert(h.scopes_header.clone(), v.scope.clone());
        if let Some(client) = &v.client_id {
            headers.insert(h.client_id_header.clone(), client.clone());
        }
    }
    headers
}
