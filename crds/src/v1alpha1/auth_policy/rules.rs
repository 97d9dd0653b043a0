//! What each route needs (rules) and how often it may be asked (rate limits).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::common::*;

/// CEL: no two rules share a method and a path but differ in what they require (public,
/// require and anyOf, compared as written, enforcement or when). Rules of equal specificity go to
/// the earlier one, so the later one would silently never decide for that route. (Comparing
/// require as sets exceeds the API server's cost budget at 64 rules of 64 scopes.)
pub(super) const RULE_CONFLICT: &str = concat!(
    "self.rules.all(a, self.rules.all(b, ",
    // they share a path
    "!a.paths.exists(p, p in b.paths) || ",
    // and both name no method, or both name one they share (a rule naming methods beats one
    // naming none: both decide)
    "!((!has(a.methods) || size(a.methods) == 0) && (!has(b.methods) || size(b.methods) == 0) ",
    "|| has(a.methods) && has(b.methods) && a.methods.exists(m, m in b.methods)) || ",
    // then they must act alike
    "((has(a.public) && a.public) == (has(b.public) && b.public) ",
    "&& (has(a.require) ? a.require : []) == (has(b.require) ? b.require : []) ",
    "&& (has(a.anyOf) ? a.anyOf : []) == (has(b.anyOf) ? b.anyOf : []) ",
    "&& (has(a.enforcement) ? a.enforcement : '') == (has(b.enforcement) ? b.enforcement : '') ",
    "&& (has(a.when) ? a.when : '') == (has(b.when) ? b.when : ''))",
    "))"
);

/// A route rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.public) && self.public && ((has(self.require) && size(self.require) > 0) || (has(self.anyOf) && size(self.anyOf) > 0)))",
        "message": "a public rule needs no token, so it cannot require scopes"
    },
    {
        "rule": "!(has(self.public) && self.public && has(self.when))",
        "message": "a public rule reads no token, so it cannot have a when condition",
        "fieldPath": ".when"
    },
    {
        "rule": "!(has(self.public) && self.public && has(self.enforcement))",
        "message": "a public rule refuses nothing, so enforcement has no effect on it",
        "fieldPath": ".enforcement"
    },
    {
        "rule": "!(has(self.require) && size(self.require) > 0 && has(self.anyOf) && size(self.anyOf) > 0)",
        "message": "set either require (all of these scopes) or anyOf (one of these scope sets), not both"
    }
]))]
pub struct Rule {
    /// A name for the rule, shown in logs and decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// HTTP methods the rule matches. Empty means every method. GET also matches HEAD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "method_list")]
    pub methods: Vec<HttpMethod>,
    /// Path patterns, matched against the normalised request path: `/items` exactly,
    /// `/items/*` one more segment, `/items/**` anything below /items (and /items itself).
    /// Patterns start with `/` and hold no `%`, `;`, `?`, `#`, dot or empty segments. A rule
    /// that needs a token also matches the trailing-slash and case variants of its paths
    /// (`/items/`, `/ITEMS`); a public rule matches only the spelling it names.
    #[schemars(schema_with = "path_list")]
    pub paths: Vec<String>,
    /// No token needed (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// A valid token carrying all of these scopes is needed. With neither require nor anyOf
    /// nor public, any valid token passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scope_list")]
    pub require: Vec<String>,
    /// A valid token carrying all scopes of at least one of these sets is needed. A 403
    /// answer names the scopes of the first set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        inner(
            length(min = 1, max = 8),
            inner(
                length(min = 1, max = 128),
                regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$")
            )
        )
    )]
    pub any_of: Vec<Vec<String>>,
    /// This rule's enforcement, Enforce or DryRun, instead of spec.enforcement: to try one
    /// stricter rule while the others enforce, or to keep one rule enforced while the rest of
    /// the policy runs dry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enforcement")]
    pub enforcement: Option<Enforcement>,
    /// A condition the request must also meet: a CEL expression that must be true, checked
    /// after the token and its scopes. Anything but true refuses with 403 and the rule's name
    /// in the sidecar's log: false, an error, a missing claim or header, a result that is not
    /// a boolean. Only on rules that need a token.
    ///
    /// Variables: `claims`, the verified token's claims (maps, lists, strings, numbers,
    /// booleans as the token has them); `request.method`; `request.path`, the normalised path
    /// the rule matched; `request.headers["name"]`, a header named literally in lower case
    /// (sent twice, the condition refuses; authorization, cookie and proxy-authorization
    /// are never readable); `source.address`, the client address (trusted proxies applied).
    /// Functions: size, contains, startsWith, endsWith, matches, string, int, uint, double,
    /// the operators, and all, exists, exists_one, map and filter over claims or headers.
    /// Compare a boolean claim as `claims.x == true` (a string "false" is not false).
    /// request.path keeps the case and trailing slash it was sent with while the rule
    /// matches loosely: write conditions that must hold (startsWith a tenant's prefix), not
    /// ones that must fail (!startsWith("/admin") lets /ADMIN through to a router that
    /// ignores case). Headers the sidecar removes or rebuilds (X-Forwarded-*, Forwarded,
    /// hop-by-hop, X-Original-URL, method overrides) and the identity and claim headers it
    /// sets cannot be read; a header also sent as another spelling (x_tenant for x-tenant)
    /// refuses the condition, so neither a check of its value nor of its absence passes.
    ///
    /// Examples: group membership `"admins" in claims.groups`; an email domain
    /// `claims.email.endsWith("@example.com") && claims.email_verified == true`; a tenant
    /// claim equal to a path segment `request.path.startsWith("/tenants/" + claims.tenant +
    /// "/")`; a method and header combination `request.method == "GET" ||
    /// request.headers["x-change-ticket"].startsWith("CHG")`.
    ///
    /// Checked by the operator before any pod sees it: a condition that does not compile,
    /// or whose cost bound is over 20000 steps, keeps the policy's last good config in the
    /// pods and says why in its Ready condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub when: Option<String>,
}

/// An optional [`Enforcement`], as a plain string enum (so that the field keeps its own
/// description).
fn optional_enforcement(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Enforce", "DryRun"],
        "nullable": true,
    })
}

/// Whether refusals are acted on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Enforcement {
    /// Refused requests get their refusal (401, 403, 400).
    #[default]
    Enforce,
    /// Refused requests are forwarded anyway, counted and logged as what would have been
    /// refused.
    DryRun,
}

/// What to do with a request that matches no rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DefaultAction {
    /// Refuse it (403, or 401 without a token).
    #[default]
    Deny,
    /// Let any request with a valid token through.
    Authenticate,
    /// Let every request through, with or without a token.
    Allow,
}

/// A rate limit on some routes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Name of the limit, shown in logs and metrics.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// HTTP methods the limit applies to. Empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "method_list")]
    pub methods: Vec<HttpMethod>,
    /// Path patterns the limit applies to (same grammar as rules).
    #[schemars(schema_with = "path_list")]
    pub paths: Vec<String>,
    /// What a budget belongs to: ClientAddress (default; IPv6 grouped by /64) or Subject
    /// (the token's sub; unauthenticated requests then fall back to the client address).
    #[serde(default, skip_serializing_if = "is_default")]
    pub key: RateLimitKey,
    /// Requests allowed per period.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests: i32,
    /// The period the budget refills over.
    pub period: PositiveDuration,
}

/// What a rate-limit budget belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RateLimitKey {
    /// The client address as trustedProxies defines it.
    #[default]
    ClientAddress,
    /// The token's subject.
    Subject,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_enforcement_lists_every_mode() {
        let schema = optional_enforcement(&mut schemars::SchemaGenerator::default());
        let listed = schema.get("enum").cloned().unwrap_or_default();
        let every = [Enforcement::Enforce, Enforcement::DryRun].map(|mode| {
            // A new mode fails to compile here until it is listed.
            match mode {
                Enforcement::Enforce | Enforcement::DryRun => {
                    serde_json::to_value(mode).unwrap_or_default()
                }
            }
        });
        assert_eq!(listed, serde_json::Value::from(every.to_vec()));
    }
}
