//! What `explain -o json|yaml` prints: the explanation, step by step, as serialisable data.

use std::collections::BTreeMap;

use serde::Serialize;

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
