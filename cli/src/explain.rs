//! `explain`: the sidecar's decision on one request, retold step by step. Every step is a
//! call into `scopegate_core`, the code the sidecar runs: path normalisation, rule choice,
//! credential extraction, token validation and revocation, the scope check, and the
//! status and `WWW-Authenticate` answer.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use scopegate_core::answer::{Refusal, answer};
use scopegate_core::config::{Enforcement, RouteRule, RuleAction, SidecarConfig};
use scopegate_core::decision::{self, GrantOwned, Trace};
use scopegate_core::jose::{b64, json};
use scopegate_core::path::RequestPath;
use scopegate_core::policy::{Matcher, Policy, check_scope_claim};
use scopegate_core::revocation;
use scopegate_core::token::{self, TokenError, TokenRules, VerifiedToken};
use serde::Serialize;

use crate::Global;
use crate::output;
use crate::source::{self, PolicyFlags, TrustedKeys};

/// `explain [POLICY] METHOD TARGET`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// POLICY METHOD TARGET, or METHOD TARGET with -f or --config. TARGET is the request
    /// path with its query, as sent (`/items/%2e%2e/admin?x=1`).
    #[arg(num_args = 2..=3, required = true, value_names = ["POLICY", "METHOD", "TARGET"])]
    words: Vec<String>,
    #[command(flatten)]
    policy: PolicyFlags,
    /// A bearer token, verified as the sidecar verifies it (`-` reads it from stdin).
    #[arg(long, conflicts_with_all = ["scopes", "header"])]
    token: Option<String>,
    /// Skip token verification: a valid token carrying these scopes (comma-separated).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    scopes: Option<Vec<String>>,
    /// A request header, `Name: value` (repeatable), e.g. a raw Authorization header.
    #[arg(short = 'H', long = "header")]
    header: Vec<String>,
    /// Evaluate at this Unix time instead of now.
    #[arg(long)]
    at: Option<i64>,
}

/// The request an explanation is about.
pub struct Request {
    /// Upper-case method.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Scopes of a token taken as valid without verification.
    pub scopes: Option<Vec<String>>,
}

/// One explanation.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// Where the policy came from.
    pub policy: PolicyInfo,
    /// The request.
    pub request: RequestInfo,
    /// Whether the policy acts on refusals.
    pub enforcement: EnforcementInfo,
    /// How the path was read.
    pub path: PathInfo,
    /// The rule that decided (absent: the default action, or a refused path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleInfo>,
    /// The default action, when no rule matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    /// Every rule that matched, and why the others lost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateInfo>,
    /// Rate limits that count this request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<String>,
    /// What the credentials were.
    pub credentials: String,
    /// The token, when one was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenInfo>,
    /// The scope check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<ScopeInfo>,
    /// What the sidecar answers.
    pub decision: DecisionInfo,
    /// Things the explanation could not check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The policy.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInfo {
    /// namespace/name.
    pub name: String,
    /// The rendered generation.
    pub generation: i64,
    /// Where it was read from.
    pub source: String,
}

/// Whether refusals are acted on.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementInfo {
    /// The policy's `enforcement`: Enforce or DryRun.
    pub policy: String,
    /// Rules (and `(default)`, the default action) in DryRun.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dry_run_rules: Vec<String>,
    /// Whether this request's decision is enforced (`false`: a refusal is only counted and
    /// logged, and the request is forwarded).
    pub enforced: bool,
}

/// The request.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RequestInfo {
    /// Method.
    pub method: String,
    /// Target as sent.
    pub target: String,
}

/// The path as the sidecar reads it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    /// As sent (without the query).
    pub raw: String,
    /// What the app receives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<String>,
    /// What rules match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Why the path was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A rule.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RuleInfo {
    /// Index in `spec.rules`.
    pub index: usize,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Methods (empty: all).
    pub methods: Vec<String>,
    /// Path patterns.
    pub paths: Vec<String>,
    /// What it asks: public, authenticated, require [..], anyOf [[..]].
    pub action: String,
}

/// A matching rule and how it fared.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInfo {
    /// The rule.
    pub rule: String,
    /// Whether it decided.
    pub won: bool,
    /// Why it lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_because: Option<String>,
}

/// The token.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// `alg`, `kid` and `typ` of the header, as the token states them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<BTreeMap<String, String>>,
    /// Whether it passed validation and revocation.
    pub valid: bool,
    /// The check it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Subject, client and scopes of a valid token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `client_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `scope`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `exp`, readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// The scope check.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ScopeInfo {
    /// What the route needs.
    pub needed: String,
    /// What the token has.
    pub has: String,
    /// Whether that suffices.
    pub satisfied: bool,
}

/// What the sidecar does.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct DecisionInfo {
    /// The status the client gets (200 for a forwarded request: the app's own status).
    pub status: u16,
    /// `forwarded` or the refusal's outcome label (the metric label).
    pub outcome: String,
    /// Whether the request reaches the app.
    pub forwarded: bool,
    /// The `WWW-Authenticate` challenge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub www_authenticate: Option<String>,
    /// Identity headers the app receives.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub identity_headers: BTreeMap<String, String>,
    /// In DryRun: the refusal the request would get if the rule were enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_refuse: Option<Box<DecisionInfo>>,
}

/// Runs `explain`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let offline = args.policy.offline();
    let (name, method, target) = match (args.words.as_slice(), offline) {
        ([method, target], true) => (None, method, target),
        ([name, method, target], false) => (Some(name.as_str()), method, target),
        ([_, _], false) => bail!("name the policy: explain POLICY METHOD TARGET (or give -f FILE)"),
        _ => bail!("with -f or --config: explain METHOD TARGET"),
    };
    let loaded = args.policy.load(global, name).await?;
    let mut headers = HeaderMap::new();
    for line in &args.header {
        let (k, v) = line
            .split_once(':')
            .with_context(|| format!("header {line:?}: expected 'Name: value'"))?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).context("header name")?,
            HeaderValue::from_str(v.trim_start()).context("header value")?,
        );
    }
    if let Some(token) = &args.token {
        let token = if token == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text.trim().to_owned()
        } else {
            token.clone()
        };
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).context("token")?,
        );
    }
    let keys = if args.token.is_some() || headers.contains_key(AUTHORIZATION) {
        let ca = args.policy.ca_pem()?;
        source::trusted_keys(&loaded.config, args.policy.jwks.as_deref(), ca.as_deref()).await
    } else {
        TrustedKeys {
            issuers: Default::default(),
            notes: Vec::new(),
        }
    };
    let request = Request {
        method: method.to_ascii_uppercase(),
        target: target.clone(),
        headers,
        scopes: args.scopes,
    };
    let now = args.at.unwrap_or_else(output::unix_now);
    let explanation = explain(&loaded.config, &loaded.origin, &request, &keys, now)?;
    output::print(global.output, "Explanation", &explanation, || {
        table(&explanation)
    })?;
    Ok(())
}

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
    let policy_info = PolicyInfo {
        name: format!("{}/{}", config.policy.namespace, config.policy.name),
        generation: config.policy.generation,
        source: origin.to_owned(),
    };
    let request_info = RequestInfo {
        method: request.method.clone(),
        target: request.target.clone(),
    };
    let dry_run_rules = policy.dry_run_labels();
    let enforcement = |enforced: bool| EnforcementInfo {
        policy: match config.enforcement {
            Enforcement::Enforce => "Enforce".into(),
            Enforcement::DryRun => "DryRun".into(),
        },
        dry_run_rules: dry_run_rules.clone(),
        enforced,
    };
    let path = match RequestPath::parse(raw_path) {
        Ok(path) => path,
        Err(err) => {
            if !dry_run_rules.is_empty() {
                notes.push(
                    "a refused path spelling is refused in DryRun too: the rules could not \
                     be matched on it"
                        .into(),
                );
            }
            return Ok(Explanation {
                policy: policy_info,
                enforcement: enforcement(true),
                request: request_info,
                path: PathInfo {
                    raw: raw_path.to_owned(),
                    forwarded: None,
                    route: None,
                    refused: Some(err.to_string()),
                },
                rule: None,
                default_action: None,
                candidates: Vec::new(),
                rate_limits: Vec::new(),
                credentials: "not read".into(),
                token: None,
                scopes: None,
                decision: refused(&Refusal::BadPath),
                notes,
            });
        }
    };
    if let Some(role) = &config.issuer
        && let Some(prefix) = scopegate_core::endpoints::path_prefix(&role.url)
        && let Some(endpoint) = scopegate_core::endpoints::endpoint(&prefix, path.forward())
    {
        notes.push(format!(
            "{endpoint} is an endpoint of this policy's issuer: the issuer answers it, and \
             the rules and rate limits below do not apply"
        ));
    }
    let method = request.method.as_str();
    let route = policy.route(method, path.route());
    let rule_label = |index: usize| rule_label(&config.rules, index);
    let candidates = policy
        .candidates(method, path.route())
        .into_iter()
        .map(|c| {
            let won = Some(c.rule_index) == route.rule_index;
            let lost_because = (!won).then(|| {
                let winner = route.rule_index.map_or_else(String::new, rule_label);
                let winner_rank = route.rule_index.and_then(|w| {
                    policy
                        .candidates(method, path.route())
                        .into_iter()
                        .find(|x| x.rule_index == w)
                });
                match winner_rank {
                    Some(w) if w.specificity > c.specificity => {
                        format!("less specific than {winner}")
                    }
                    Some(w)
                        if w.specificity == c.specificity
                            && w.names_methods
                            && !c.names_methods =>
                    {
                        format!("as specific as {winner}, which names methods")
                    }
                    _ => format!("as specific as {winner}, which comes first"),
                }
            });
            CandidateInfo {
                rule: rule_label(c.rule_index),
                won,
                lost_because,
            }
        })
        .collect();
    let mut rate_limits = Vec::new();
    for limit in &config.rate_limits {
        // The sidecar's rate limits match loosely, with the same matcher as rules.
        if let Ok(matcher) = Matcher::compile(&limit.methods, &limit.paths, true)
            && matcher.matches(method, path.route())
        {
            rate_limits.push(format!(
                "{} ({} per {}s per {})",
                limit.name,
                limit.requests,
                limit.period_secs,
                match limit.key {
                    scopegate_core::config::RateLimitKey::ClientAddress => "client address",
                    scopegate_core::config::RateLimitKey::Subject => "subject",
                }
            ));
        }
    }

    let rules = TokenRules::from_config(&config.verify);
    let mut headers = request.headers.clone();
    if request.scopes.is_some() && !headers.contains_key(AUTHORIZATION) {
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer given-scopes"),
        );
    }
    let mut token_info = None;
    let mut validate = |token: &str| {
        if let Some(scopes) = &request.scopes {
            let scope = scopes.join(" ");
            check_scope_claim(&scope)?;
            return Ok(VerifiedToken {
                iss: "(not verified: --scopes)".into(),
                sub: None,
                client_id: None,
                scope,
                exp: now,
                iat: None,
                jti: None,
            });
        }
        token_info = Some(header_of(token));
        let verified = token::validate(token, &rules, |iss| keys.issuers.get(iss).cloned(), now)?;
        if let Some(reason) =
            revocation::revoked(&verified, &config.revocation.client_cutoffs, None)
        {
            return Err(TokenError::Revoked(reason));
        }
        Ok(verified)
    };
    let evaluation = decision::evaluate(route.requirement, &headers, query, &mut validate);
    // A rule in DryRun is only counted: the enforced rules decide as if it did not exist, as
    // in the sidecar, and the request is refused if they refuse it.
    let enforced_refusal = match policy.enforced_route(method, path.route()) {
        Some(enforced) if !route.enforced && enforced.rule_index != route.rule_index => {
            decision::evaluate(enforced.requirement, &headers, query, &mut validate)
                .decision
                .err()
                .map(|refusal| (enforced, refusal))
        }
        _ => None,
    };
    if matches!(evaluation.trace, Trace::Token { .. }) && request.scopes.is_none() {
        notes.push(
            "revocations from the issuer's feed (jti, subject cut-offs) live in the sidecars only \
             and are not checked here"
                .into(),
        );
    }
    let credentials = match &evaluation.trace {
        Trace::Public => "not read (public route)".to_owned(),
        Trace::Early(early) => early.to_string(),
        Trace::Token { .. } if request.scopes.is_some() => {
            "a valid token taken as given (--scopes)".to_owned()
        }
        Trace::Token { .. } => "bearer token".to_owned(),
    };
    let (token, scopes) = match &evaluation.trace {
        Trace::Token { grant, validation } => {
            let token = match validation {
                Ok(v) => TokenInfo {
                    header: token_info.clone(),
                    valid: true,
                    failed: None,
                    subject: v.sub.clone(),
                    client_id: v.client_id.clone(),
                    scope: Some(v.scope.clone()),
                    expires: (request.scopes.is_none()).then(|| output::when(v.exp, now)),
                },
                Err(err) => TokenInfo {
                    header: token_info.clone(),
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
        _ => (None, None),
    };
    // The identity the app is told: a valid token's, whether or not the rule is satisfied
    // (that matters in DryRun only: an enforced refusal forwards nothing).
    let verified = match &evaluation.trace {
        Trace::Token {
            validation: Ok(v), ..
        } => Some(v),
        _ => None,
    };
    if let Some((enforced, _)) = &enforced_refusal {
        notes.push(format!(
            "{} is in DryRun: the enforced rules decide as if it did not exist, and {} refuses",
            route.label(),
            enforced.label()
        ));
    }
    let decision = match (&evaluation.decision, &enforced_refusal) {
        (_, Some((_, refusal))) => refused(refusal),
        (Err(refusal), None) if route.enforced => refused(refusal),
        (Err(refusal), None) => DecisionInfo {
            status: 200,
            outcome: "dry_run".into(),
            forwarded: true,
            www_authenticate: None,
            identity_headers: identity_headers(config, verified),
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
    };
    Ok(Explanation {
        policy: policy_info,
        enforcement: enforcement(route.enforced),
        request: request_info,
        path: PathInfo {
            raw: raw_path.to_owned(),
            forwarded: Some(path.forward().to_owned()),
            route: Some(path.route().to_owned()),
            refused: None,
        },
        rule: route.rule_index.map(|i| rule_info(&config.rules, i)),
        default_action: route
            .rule_index
            .is_none()
            .then(|| format!("{:?}", config.default_action).to_ascii_lowercase()),
        candidates,
        rate_limits,
        credentials,
        token,
        scopes,
        decision,
        notes,
    })
}

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

fn rule_info(rules: &[RouteRule], index: usize) -> RuleInfo {
    let rule = &rules[index];
    RuleInfo {
        index,
        name: rule.name.clone(),
        methods: rule.methods.clone(),
        paths: rule.paths.clone(),
        action: action_text(&rule.action),
    }
}

fn needed_text(grant: &GrantOwned) -> String {
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
fn token_failure(err: &TokenError) -> String {
    err.to_string()
}

/// `alg`, `kid` and `typ` as the token's header states them (display only: validation
/// takes the algorithm from the key).
fn header_of(token: &str) -> BTreeMap<String, String> {
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

fn table(e: &Explanation) -> String {
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
    out.push_str(&format!(
        "REQUEST   {} {}\n",
        e.request.method, e.request.target
    ));
    match (&e.path.refused, &e.path.route) {
        (Some(why), _) => out.push_str(&format!("  path        {}  refused: {why}\n", e.path.raw)),
        (None, Some(route)) => {
            let forwarded = e.path.forwarded.as_deref().unwrap_or_default();
            out.push_str(&format!("  path        {} -> {forwarded}", e.path.raw));
            if route != forwarded {
                out.push_str(&format!(" (rules see {route})"));
            }
            out.push('\n');
        }
        _ => {}
    }
    if let Some(rule) = &e.rule {
        let methods = if rule.methods.is_empty() {
            "any method".to_owned()
        } else {
            rule.methods.join(",")
        };
        out.push_str(&format!(
            "  rule        {}  {methods} {}  {}\n",
            match &rule.name {
                Some(n) => format!("{n:?} (rules[{}])", rule.index),
                None => format!("rules[{}]", rule.index),
            },
            rule.paths.join(" "),
            rule.action
        ));
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
    for limit in &e.rate_limits {
        out.push_str(&format!("  rate limit  {limit}\n"));
    }
    out.push_str(&format!("  credentials {}\n", e.credentials));
    if let Some(t) = &e.token {
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
            Some(why) => out.push_str(&format!("  token       {header}  INVALID: {why}\n")),
            None => out.push_str(&format!(
                "  token       {header}  valid  sub={} client_id={}{}\n",
                t.subject.as_deref().unwrap_or("-"),
                t.client_id.as_deref().unwrap_or("-"),
                t.expires
                    .as_ref()
                    .map(|e| format!("  expires {e}"))
                    .unwrap_or_default()
            )),
        }
    }
    if let Some(s) = &e.scopes {
        out.push_str(&format!(
            "  scopes      needs {}; token has {}: {}\n",
            s.needed,
            s.has,
            if s.satisfied { "ok" } else { "not enough" }
        ));
    }
    let d = &e.decision;
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
        for (k, v) in &d.identity_headers {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    } else if d.forwarded {
        out.push_str(&format!("DECISION  forwarded to the app ({})\n", d.outcome));
        for (k, v) in &d.identity_headers {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    } else {
        out.push_str(&format!("DECISION  {} {}", d.status, d.outcome));
        if let Some(c) = &d.www_authenticate {
            out.push_str(&format!("  WWW-Authenticate: {c}"));
        }
        out.push('\n');
    }
    for n in &e.notes {
        out.push_str(&format!("NOTE      {n}\n"));
    }
    out
}
