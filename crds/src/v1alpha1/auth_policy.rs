//! `AuthPolicy`: which pods are protected, where their tokens come from, and what each route
//! needs.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Algorithm, Duration, HttpMethod, NamespacedRef, PositiveDuration, audience_list, browser_url,
    conditions, is_default, method_list, path_list, pod_selector, scope_list,
};

/// AuthPolicy protects the pods its selector picks: their sidecar authenticates bearer tokens
/// and checks scopes per route. Its issuer says where tokens come from: this policy's own keys
/// (`self`, the pods then also serve the OAuth2 endpoints), another policy's keys (`policyRef`),
/// or an outside issuer (`external`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scopegate.dev",
    version = "v1alpha1",
    kind = "AuthPolicy",
    doc = "AuthPolicy protects the pods its selector picks: their sidecar authenticates bearer tokens and checks scopes per route, and in issuer.self pods also serves the OAuth2 endpoints.",
    namespaced,
    status = "AuthPolicyStatus",
    shortname = "ap",
    category = "scopegate",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".status.issuerMode","description":"Self, PolicyRef or External"}"#,
    printcolumn = r#"{"name":"Active Key","type":"string","jsonPath":".status.activeKid","description":"Key id that signs new tokens"}"#,
    printcolumn = r#"{"name":"Enforcement","type":"string","jsonPath":".status.conditions[?(@.type==\"Enforcing\")].reason","description":"Enforced, DryRun (spec.enforcement) or RulesInDryRun (some rules)"}"#,
    printcolumn = r#"{"name":"Pods","type":"string","jsonPath":".status.pods","description":"Pods selected / of those, with the sidecar"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Inbound","type":"string","priority":1,"jsonPath":".status.inboundProtection","description":"What keeps the app's port out of reach: NetworkPolicy, PortLock, both or None"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.listen.port != self.upstream.port",
        "message": "listen.port and upstream.port must differ: the sidecar listens on one and forwards to the app on the other",
        "fieldPath": ".listen.port"
    },
    {
        "rule": "!has(self.issuer.self) || self.rules.all(r, (!has(r.require) || r.require.all(s, s in self.issuer.self.scopes)) && (!has(r.anyOf) || r.anyOf.all(a, a.all(s, s in self.issuer.self.scopes))))",
        "message": "every scope that rules require (require and anyOf) must be declared in issuer.self.scopes",
        "fieldPath": ".rules"
    },
    {
        "rule": RULE_CONFLICT,
        "message": "two rules match the same method and path with different actions: the earlier one always decides (equal specificity goes to the earlier rule) and the later one never would; give them different paths or methods, or one action",
        "fieldPath": ".rules"
    }
]))]
pub struct AuthPolicySpec {
    /// Pods of this namespace that this policy protects. The injection webhook adds the sidecar
    /// to new pods whose labels match, in namespaces labelled scopegate.dev/injection=enabled.
    /// At most one AuthPolicy may select a pod. It must name at least one label the pods
    /// have (matchLabels, or a matchExpressions term with In or Exists): an empty selector,
    /// or one of NotIn and DoesNotExist terms only, would select every other pod of the
    /// namespace, present and future, and is refused.
    #[schemars(schema_with = "pod_selector")]
    pub selector: LabelSelector,

    /// Where the tokens this policy accepts come from: exactly one of self, policyRef or external.
    pub issuer: Issuer,

    /// Audiences a token must carry in its aud claim (any one of them). Empty means the
    /// issuer URL of a self issuer, and is refused for policyRef and external issuers by
    /// the operator (status condition), since accepting any audience lets tokens meant for
    /// another service in.
    ///
    /// Listing an audience claims it for this namespace: an issuer gives OAuthClients tokens
    /// for it only as `clients` admits them. An audience naming a Service
    /// (`https://<svc>.<ns>.svc...`) belongs to that Service's namespace; any other belongs to
    /// the namespace of the oldest policy that lists it (creation times are whole seconds; a
    /// tie goes to the namespace name first in alphabetical order). A policy listing an audience that
    /// another namespace owns is not Ready (reason AudienceConflict) and that audience is not
    /// honoured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "audience_list")]
    pub audiences: Vec<String>,

    /// Which OAuthClients may get tokens for this policy's audiences. Clients of this
    /// namespace always may; without this field, no other may. An issuer's own URL also
    /// admits the namespaces in its allowedClientNamespaces. Introspection of a token is
    /// open only to clients of the namespace that owns one of its audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<AudienceClients>,

    /// Route rules, matched on method and normalised path. The most specific matching rule
    /// wins (longest literal prefix, then fewest wildcards, then one that names methods);
    /// unmatched requests get defaultAction. At most 64. Two rules that name the same path
    /// and the same method (or both no method) must act alike: otherwise the earlier would
    /// always decide and the later never, so such a pair is refused.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub rules: Vec<Rule>,

    /// What happens to a request no rule matches: Deny (403, the default), Authenticate (any
    /// valid token, no scope needed) or Allow (no token needed).
    #[serde(default)]
    pub default_action: DefaultAction,

    /// Whether the sidecars act on refusals: Enforce (default) or DryRun, for the default
    /// action and every rule without an enforcement of its own. In DryRun the sidecars forward
    /// every request they would refuse, count it (metric scopegate_decisions_total with
    /// enforced="false") and log it, rate-limited and without the token; a valid token still
    /// gives the app its identity headers, an invalid one never does. Still enforced in
    /// DryRun: refused path spellings (400), the removal of incoming identity headers, the
    /// issuer's endpoints and rateLimits. Identity headers then mean a valid token, not a
    /// passed rule. Switching is a spec change the sidecars apply without a restart.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// The application container's port, on 127.0.0.1, that the sidecar forwards to.
    pub upstream: Upstream,

    /// The sidecar's listener, which the pod's Service must target instead of the app's port.
    #[serde(default)]
    pub listen: Listen,

    /// Per-route rate limits, e.g. POST /login at 5 requests per 15m per client address.
    /// Requests that fail authentication are counted apart from those that succeed, so that
    /// nobody can exhaust a victim's budget by failing on its behalf. Exceeding a limit is
    /// answered 429 with Retry-After.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rate_limits: Vec<RateLimit>,

    /// Which hops in front of the pod may set X-Forwarded-For / Forwarded. Without it the
    /// TCP peer address is the client address that rate limits key on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<TrustedProxies>,

    /// Security response headers and the identity headers passed to the app.
    #[serde(default)]
    pub headers: Headers,

    /// How the selected pods are kept from being reached around the sidecar: a NetworkPolicy
    /// (default) and, where the network plugin does not enforce NetworkPolicy, a port lock.
    #[serde(default)]
    pub inbound: Inbound,
}

/// What keeps traffic from reaching the app's port directly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// Render a NetworkPolicy `<policy>-inbound` that admits ingress to the selected pods only
    /// on listen.port (default true). Turned off (without portLock), any pod of the cluster
    /// can reach the app's port directly: the status says so (Degraded,
    /// InboundUnprotected). NetworkPolicies add up: one of the team's own can still open
    /// more (e.g. the admin port to a metrics scraper).
    #[serde(default = "default_true")]
    pub network_policy: bool,
    /// Add an init container (the sidecar image, in its port-lock mode) that installs
    /// nftables rules in each selected pod's network namespace, refusing inbound connections
    /// to every port but listen.port and the sidecar's admin port (15090, for the kubelet's
    /// probes); loopback traffic passes. For clusters whose network plugin does not enforce
    /// NetworkPolicy. The init container needs NET_ADMIN (the namespace's Pod Security
    /// level must allow it) and applies to pods created after it is set (default false).
    #[serde(default)]
    pub port_lock: bool,
}

impl Default for Inbound {
    fn default() -> Self {
        Self {
            network_policy: true,
            port_lock: false,
        }
    }
}

/// OAuthClients of other namespaces that may get tokens for a policy's audiences.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AudienceClients {
    /// Namespaces whose OAuthClients may get tokens for this policy's audiences. "*" admits
    /// every namespace (a public API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub namespaces: Vec<String>,
    /// Single OAuthClients of other namespaces, by namespace and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub names: Vec<ClientRef>,
}

/// An OAuthClient by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientRef {
    /// Namespace of the OAuthClient.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the OAuthClient.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where tokens come from. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.self) ? 1 : 0) + (has(self.policyRef) ? 1 : 0) + (has(self.external) ? 1 : 0) == 1",
        "message": "issuer must set exactly one of self, policyRef or external"
    }
]))]
pub struct Issuer {
    /// This policy owns signing keys: the operator generates and rotates them, and the
    /// selected pods run the issuer role, serving the OAuth2 endpoints over TLS.
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub self_: Option<SelfIssuer>,

    /// Trust the keys of another AuthPolicy that has an issuer.self (one issuer, many
    /// verifiers holding only public keys). Refused in status when that issuer signs HS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<NamespacedRef>,

    /// Trust an issuer outside the cluster by its issuer URL and JWKS URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalIssuer>,
}

/// An issuer run by this policy's own pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.rotationPeriod) >= duration('1h')",
        "message": "rotationPeriod must be at least 1h: every rotation publishes a key, waits propagation for every verifier to hold it and keeps the old one until its tokens expire",
        "fieldPath": ".rotationPeriod"
    },
    {
        "rule": "duration(self.rotationPeriod) >= duration(self.tokens.accessTokenTtl) && (!has(self.mint) || duration(self.rotationPeriod) >= duration(self.mint.maxTtl))",
        "message": "rotationPeriod must be at least accessTokenTtl and mint.maxTtl: a key stays published until the tokens it signed expire, so a shorter period piles up keys in every JWKS and in the signing-keys Secret",
        "fieldPath": ".rotationPeriod"
    },
    {
        "rule": "duration(self.rotationPeriod) > duration(self.propagation)",
        "message": "rotationPeriod must be greater than propagation: each new key is published for propagation before it activates",
        "fieldPath": ".rotationPeriod"
    },
    {
        "rule": "!has(self.mint) || self.mint.scopes.all(s, s in self.scopes)",
        "messageExpression": "'mint.scopes names a scope not declared in scopes: ' + self.mint.scopes.filter(s, !(s in self.scopes))[0]",
        "fieldPath": ".mint.scopes"
    },
    {
        "rule": "!has(self.upstreams) || size(self.upstreams) == 0 || (has(self.identity) && self.identity.mode == 'Direct') || has(self.loginUrl)",
        "message": "upstreams with identity.mode Delegate (the default) need loginUrl: the app reads the upstream identity there and decides the subject; set loginUrl or identity.mode Direct",
        "fieldPath": ".loginUrl"
    },
    {
        "rule": "!has(self.identity) || !has(self.identity.directScopes) || self.identity.directScopes.all(s, s in self.scopes)",
        "messageExpression": "'identity.directScopes names a scope not declared in scopes: ' + self.identity.directScopes.filter(s, !(s in self.scopes))[0]",
        "fieldPath": ".identity.directScopes"
    },
    {
        "rule": "!has(self.identity) || !has(self.identity.scopesFromGroups) || self.identity.scopesFromGroups.all(m, m.scopes.all(s, s in self.scopes))",
        "message": "identity.scopesFromGroups names a scope not declared in scopes",
        "fieldPath": ".identity.scopesFromGroups"
    },
    {
        "rule": "!has(self.identity) || !has(self.identity.scopesFromGroups) || self.identity.scopesFromGroups.all(m, has(self.upstreams) && self.upstreams.exists(u, u.name == m.upstream))",
        "message": "identity.scopesFromGroups names an upstream not in upstreams",
        "fieldPath": ".identity.scopesFromGroups"
    },
    {
        "rule": "!has(self.identity) || !has(self.identity.scopesFromGroups) || size(self.identity.scopesFromGroups) == 0 || self.identity.mode == 'Direct'",
        "message": "identity.scopesFromGroups applies to identity.mode Direct only (in Delegate mode the app decides the scopes)",
        "fieldPath": ".identity.scopesFromGroups"
    }
]))]
pub struct SelfIssuer {
    /// The issuer identifier: the iss claim of every token and the base of the OAuth2
    /// endpoints, an https URL without query or fragment, e.g.
    /// https://auth.shop.svc.cluster.local.
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != '' && !self.contains('#') && !self.contains('?')",
            "message": "url must be an absolute https URL without query or fragment"
        }
    ]))]
    pub url: String,

    /// The Service in front of the issuer pods: verifiers read the revocation feed there,
    /// and the serving certificate is issued for its DNS names.
    pub service: ServicePort,

    /// How tokens are signed.
    #[serde(default)]
    pub signing: Signing,

    /// How long a key signs before the next one takes over (default 720h; at least 1h, at
    /// least tokens.accessTokenTtl and mint.maxTtl, more than propagation).
    #[serde(default = "default_rotation_period")]
    pub rotation_period: PositiveDuration,

    /// The whole time from the operator writing a key to every verifier holding it: the
    /// operator's lag, copies into policyRef namespaces, the kubelet's refresh of mounted
    /// objects (typically 1-2 minutes), the sidecar's reload and the JWKS endpoint's cache
    /// max-age. A new key is published at least this long before it signs.
    #[serde(default = "default_propagation")]
    pub propagation: PositiveDuration,

    /// Lifetimes of what the issuer hands out.
    #[serde(default)]
    pub tokens: TokenLifetimes,

    /// The scope vocabulary: scope name to a description shown to people. Clients and rules
    /// may only name scopes declared here. Names are RFC 6749 scope-tokens (printable ASCII
    /// without space, double quote or backslash).
    #[serde(default)]
    #[schemars(extend("maxProperties" = 64, "x-kubernetes-validations" = [
        {
            "rule": "self.all(k, size(k) <= 128 && k.matches('^[\\\\x21\\\\x23-\\\\x5B\\\\x5D-\\\\x7E]+$'))",
            "messageExpression": "'scope names must be RFC 6749 scope-tokens of at most 128 characters (printable ASCII without space, double quote or backslash): ' + self.filter(k, size(k) > 128 || !k.matches('^[\\\\x21\\\\x23-\\\\x5B\\\\x5D-\\\\x7E]+$'))[0]"
        }
    ]))]
    pub scopes: BTreeMap<String, ScopeDescription>,

    /// Where /oauth2/authorize sends a browser for the app to log its user in, with a
    /// one-time login challenge. Absolute https URL (http only on 127.0.0.1 or [::1]).
    /// Without it the authorization_code grant is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "browser_url")]
    pub login_url: Option<String>,

    /// What the app may mint on the sidecar's mint socket for users it authenticated itself.
    /// Without it the mint socket refuses to mint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint: Option<MintRules>,

    /// The pod's containers that get the mint socket (and so may mint tokens and settle
    /// logins). Default: the pod's first container (besides the sidecar). A container named
    /// here that a pod lacks is skipped; no other container of the pod sees the socket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub mint_socket_containers: Vec<String>,

    /// Namespaces whose OAuthClients may register with this issuer and whose AuthPolicies
    /// may trust it by policyRef, besides its own. "*" allows every namespace. Registering
    /// does not by itself give a client tokens for another team's service: each audience's
    /// owner decides that (AuthPolicy clients).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub allowed_client_namespaces: Vec<String>,

    /// Where codes, refresh families, revocations and rate-limit counters live. Memory by
    /// default: one issuer replica only, and a restart forgets revocations.
    #[serde(default)]
    pub store: Store,

    /// The browser-facing base URL of the issuer (the authorize endpoint, the provider
    /// chooser and the upstream callbacks), when browsers reach it under another host than
    /// url, e.g. https://auth.shop.example. It must have the same path as url (the issuer
    /// serves its endpoints under that path): one with another path is ignored and the
    /// upstreams in status say so. Default: url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != '' && !self.contains('#') && !self.contains('?')",
            "message": "publicUrl must be an absolute https URL without query or fragment"
        }
    ]))]
    pub public_url: Option<String>,

    /// Identity providers users may log in with (Google, any OpenID Connect provider,
    /// GitHub), offered on a chooser page next to the app's own login (loginUrl). Whichever
    /// is used, the client gets a token this issuer signs, never the provider's. At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub upstreams: Vec<super::upstream::UpstreamProvider>,

    /// What an upstream login leads to: the app decides the subject (Delegate, default) or
    /// the issuer derives it (Direct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<super::upstream::Identity>,
}

/// Human-readable description of a scope.
pub type ScopeDescription = String;

fn default_rotation_period() -> PositiveDuration {
    "720h".into()
}

fn default_propagation() -> PositiveDuration {
    "5m".into()
}

/// A Service name and port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Name of the Service, in this namespace: an RFC 1123 DNS label (lower-case letters,
    /// digits and '-', at most 63 characters). The serving certificate names exactly
    /// `<name>.<namespace>.svc` and `<name>.<namespace>.svc.<cluster domain>`, never a bare
    /// or foreign name.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
            "message": "service.name must be the name of a Service in this namespace: lower-case letters, digits and '-', starting and ending with a letter or digit (no dots, no wildcards)"
        }
    ]))]
    pub name: String,
    /// Port of the Service that reaches the issuer sidecar's TLS listener.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// How the issuer signs tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.rsaBits) || self.algorithm == 'RS256'",
        "message": "rsaBits applies only to algorithm RS256"
    },
]))]
pub struct Signing {
    /// Signing algorithm: ES256 (default), RS256, EdDSA (Ed25519) or HS256. HS256 keys are
    /// shared secrets that are never published: only this policy's own pods can verify them,
    /// so no policyRef may point at an HS256 issuer.
    #[serde(default = "default_algorithm")]
    #[schemars(schema_with = "issuer_algorithm")]
    pub algorithm: Algorithm,
    /// RSA modulus size for RS256: 2048 (default) or 3072.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [2048, 3072]))]
    pub rsa_bits: Option<i32>,
}

/// The algorithms an issuer signs with, as the field's enum (the shared [`Algorithm`] lists
/// what verifiers accept as well).
fn issuer_algorithm(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["ES256", "RS256", "EdDSA", "HS256"],
    })
}

/// What an external issuer's tokens may be signed with: every algorithm but HS256.
fn external_algorithms(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 8,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "enum": ["ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"],
        },
    })
}

/// CEL: no two rules share a method and a path but differ in what they require (public,
/// require and anyOf, compared as written, or enforcement). Rules of equal specificity go to
/// the earlier one, so the later one would silently never decide for that route. (Comparing
/// require as sets exceeds the API server's cost budget at 64 rules of 64 scopes.)
const RULE_CONFLICT: &str = concat!(
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
    "&& (has(a.enforcement) ? a.enforcement : '') == (has(b.enforcement) ? b.enforcement : ''))",
    "))"
);

fn default_algorithm() -> Algorithm {
    Algorithm::ES256
}

impl Default for Signing {
    fn default() -> Self {
        Self {
            algorithm: default_algorithm(),
            rsa_bits: None,
        }
    }
}

/// Lifetimes of access tokens, refresh tokens and authorization codes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.accessTokenTtl) <= duration('24h')",
        "message": "accessTokenTtl must be at most 24h: an access token cannot be recalled before it expires but through the revocation feed; keep sessions long with refresh tokens instead",
        "fieldPath": ".accessTokenTtl"
    },
    {
        "rule": "duration(self.codeTtl) <= duration('10m')",
        "message": "codeTtl must be at most 10m (RFC 6749 §4.1.2)",
        "fieldPath": ".codeTtl"
    },
    {
        "rule": "duration(self.leeway) <= duration('60s')",
        "message": "leeway must be at most 60s (RFC 8725 practice)",
        "fieldPath": ".leeway"
    },
    {
        "rule": "!has(self.refreshTokenIdle) || duration(self.refreshTokenIdle) <= duration(self.refreshTokenTtl)",
        "message": "refreshTokenIdle must be at most refreshTokenTtl",
        "fieldPath": ".refreshTokenIdle"
    }
]))]
pub struct TokenLifetimes {
    /// Lifetime of an access token (default 15m, at most 24h).
    #[serde(default = "default_access_token_ttl")]
    pub access_token_ttl: PositiveDuration,
    /// Lifetime of a refresh token family from its first grant (default 720h).
    #[serde(default = "default_refresh_token_ttl")]
    pub refresh_token_ttl: PositiveDuration,
    /// How long a refresh token family may go unused before it expires (default half of
    /// refreshTokenTtl, at most refreshTokenTtl). Every refresh starts the count again;
    /// refreshTokenTtl still ends the family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_idle: Option<PositiveDuration>,
    /// Lifetime of an authorization code (default 1m, at most 10m).
    #[serde(default = "default_code_ttl")]
    pub code_ttl: PositiveDuration,
    /// Clock skew tolerated when checking exp, nbf and iat (default 30s, at most 60s; a larger
    /// value stored before this limit is used as 60s).
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
}

fn default_access_token_ttl() -> PositiveDuration {
    "15m".into()
}
fn default_refresh_token_ttl() -> PositiveDuration {
    "720h".into()
}
fn default_code_ttl() -> PositiveDuration {
    "1m".into()
}
fn default_leeway() -> Duration {
    "30s".into()
}

impl Default for TokenLifetimes {
    fn default() -> Self {
        Self {
            access_token_ttl: default_access_token_ttl(),
            refresh_token_ttl: default_refresh_token_ttl(),
            refresh_token_idle: None,
            code_ttl: default_code_ttl(),
            leeway: default_leeway(),
        }
    }
}

/// Limits on tokens the app mints for its own users through the mint socket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MintRules {
    /// Subjects the app may mint for, as patterns where `*` matches any run of characters,
    /// e.g. `user:*`. At least one.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 128)))]
    pub subjects: Vec<String>,
    /// Scopes a minted token may carry (a subset of the issuer's scopes).
    #[serde(default)]
    #[schemars(schema_with = "scope_list")]
    pub scopes: Vec<String>,
    /// Audiences a minted token may carry. Empty means the issuer URL only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "audience_list")]
    pub audiences: Vec<String>,
    /// Longest lifetime of a minted token (default 15m, at most 24h).
    #[serde(default = "default_access_token_ttl")]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "duration(self) <= duration('24h')", "message": "mint.maxTtl must be at most 24h: a minted token cannot be recalled before it expires but through the revocation feed" }
    ]))]
    pub max_ttl: PositiveDuration,
}

/// Where issuer state lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type == 'Redis' ? has(self.redis) : !has(self.redis)",
        "message": "set redis exactly when type is Redis"
    }
]))]
pub struct Store {
    /// Memory (default; one issuer replica only, state lost on restart) or Redis (required
    /// for more than one issuer replica).
    #[serde(rename = "type", default)]
    pub kind: StoreKind,
    /// Connection to Redis, when type is Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStore>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            redis: None,
        }
    }
}

/// Kinds of issuer state store.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum StoreKind {
    /// In the sidecar's memory.
    #[default]
    Memory,
    /// In Redis, shared by every issuer replica.
    Redis,
}

/// A Redis server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStore {
    /// host:port of the Redis server.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// A Secret in this namespace with keys `username` (optional) and `password`. You create
    /// it; the operator reads it by reference and rolls a change into the pods without a
    /// restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// Connect with TLS, verifying the server against the pod's CA bundle.
    #[serde(default)]
    pub tls: bool,
}

/// An issuer outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalIssuer {
    /// The issuer identifier, compared exactly with the token's iss claim.
    #[schemars(length(min = 1, max = 256))]
    pub issuer: String,
    /// Where the sidecar fetches the issuer's JWKS: an absolute https URL.
    #[schemars(length(max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != '' && !self.contains('#')",
            "message": "jwksUri must be an absolute https URL without fragment"
        }
    ]))]
    pub jwks_uri: String,
    /// Algorithms accepted from this issuer. Foreign keys often omit alg: a token's alg header
    /// is then accepted only if it is listed here and fits the key's type and curve. HS256 is
    /// not allowed for external issuers: a shared secret cannot be fetched from a JWKS.
    #[schemars(schema_with = "external_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Also accept tokens whose typ header is plain JWT (many outside issuers use it for
    /// access tokens). Off by default: only at+jwt is accepted (RFC 9068).
    #[serde(default)]
    pub allow_jwt_typ: bool,
    /// How often the JWKS is refetched (default 5m). An unknown kid triggers at most one
    /// extra fetch per this interval.
    #[serde(default = "default_propagation")]
    pub refresh_interval: PositiveDuration,
    /// PEM certificates (CAs) trusted when fetching jwksUri, in addition to the system roots:
    /// for an issuer behind a private CA. The operator's own CA is never trusted for an
    /// external issuer (it certifies in-cluster Services only). A bundle holding no usable
    /// certificate makes the policy not Ready (reason CaBundleInvalid), and no token of this
    /// issuer is accepted until it is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.contains('-----BEGIN CERTIFICATE-----')",
            "message": "caBundle must hold PEM certificates (-----BEGIN CERTIFICATE-----)"
        }
    ]))]
    pub ca_bundle: Option<String>,
}

/// A route rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.public) && self.public && ((has(self.require) && size(self.require) > 0) || (has(self.anyOf) && size(self.anyOf) > 0)))",
        "message": "a public rule needs no token, so it cannot require scopes"
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

/// The app behind the sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// Port the app container listens on. The sidecar forwards to 127.0.0.1 on this port.
    #[schemars(range(min = 1, max = 65535))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self != 15090", "message": "port 15090 is the sidecar's admin port" }
    ]))]
    pub port: i32,
    /// How the sidecar talks to the app: HTTP1 (default; WebSocket upgrades pass) or H2C
    /// (HTTP/2 without TLS, for gRPC apps).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How long the app may take to answer before the client gets 504 (default 30s).
    #[serde(default = "default_response_timeout")]
    pub response_timeout: PositiveDuration,
}

fn default_response_timeout() -> PositiveDuration {
    "30s".into()
}

/// Protocol spoken to the app.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    HTTP1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2C,
}

/// The sidecar's listener for protected traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listen {
    /// Port the sidecar listens on (default 15080, at least 1024). Point the Service's port
    /// 80 or 443 at it.
    #[serde(default = "default_listen_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[schemars(extend("x-kubernetes-validations" = [
        { "rule": "self != 15090", "message": "port 15090 is the sidecar's admin port" },
        { "rule": "self >= 1024", "message": "listen.port must be 1024 or above: the sidecar runs without privileges and cannot bind a privileged port; let the Service's port 80 or 443 target it instead" }
    ]))]
    pub port: i32,
    /// Name of a kubernetes.io/tls Secret in this namespace to serve TLS with. Issuer pods
    /// always serve TLS with the certificate the operator issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret: Option<String>,
}

fn default_listen_port() -> i32 {
    i32::from(scopegate_core::names::DEFAULT_LISTEN_PORT)
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            port: default_listen_port(),
            tls_secret: None,
        }
    }
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

/// Which proxies may tell the client address. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.hops) != (size(self.cidrs) > 0)",
        "message": "trustedProxies sets exactly one of hops or cidrs"
    }
]))]
pub struct TrustedProxies {
    /// Number of proxies in front of the pod: the client address is that many entries from
    /// the right of X-Forwarded-For.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub hops: Option<i32>,
    /// Proxy addresses (CIDRs) whose X-Forwarded-For entries are skipped from the right; the
    /// first address outside them is the client.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(inner(length(max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(c, isCIDR(c))",
            "messageExpression": "'cidrs must be CIDRs such as 10.0.0.0/8 or fd00::/8: ' + self.filter(c, !isCIDR(c))[0]"
        }
    ]))]
    pub cidrs: Vec<String>,
}

/// Response and identity headers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// Add X-Content-Type-Options: nosniff, X-Frame-Options: DENY and Referrer-Policy:
    /// no-referrer to every response (default true).
    #[serde(default = "default_true")]
    pub security_headers: bool,
    /// Strict-Transport-Security: Auto (when the sidecar serves TLS), Always (also behind a
    /// TLS-terminating proxy) or Never.
    #[serde(default)]
    pub hsts: Hsts,
    /// Path patterns whose responses get Cache-Control: no-store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "path_list_optional")]
    pub no_store_paths: Vec<String>,
    /// Names of the headers that carry the verified identity to the app. The sidecar strips
    /// any incoming copies first.
    #[serde(default)]
    pub identity: IdentityHeaders,
}

fn default_true() -> bool {
    true
}

fn path_list_optional(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = path_list(generator);
    schema.remove("minItems");
    schema
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            security_headers: true,
            hsts: Hsts::default(),
            no_store_paths: Vec::new(),
            identity: IdentityHeaders::default(),
        }
    }
}

/// When to send Strict-Transport-Security.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Hsts {
    /// When the sidecar itself serves TLS.
    #[default]
    Auto,
    /// Always (the pod sits behind a TLS-terminating proxy).
    Always,
    /// Never.
    Never,
}

/// Header names for the verified identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.subject.lowerAscii() != self.scopes.lowerAscii() && self.subject.lowerAscii() != self.clientId.lowerAscii() && self.scopes.lowerAscii() != self.clientId.lowerAscii()",
        "message": "identity header names must differ"
    }
]))]
pub struct IdentityHeaders {
    /// Header with the token's subject (default x-auth-subject).
    #[serde(default = "default_subject_header")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub subject: String,
    /// Header with the token's scopes, space-separated (default x-auth-scopes).
    #[serde(default = "default_scopes_header")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub scopes: String,
    /// Header with the token's client_id (default x-auth-client-id).
    #[serde(default = "default_client_id_header")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub client_id: String,
}

fn default_subject_header() -> String {
    "x-auth-subject".into()
}
fn default_scopes_header() -> String {
    "x-auth-scopes".into()
}
fn default_client_id_header() -> String {
    "x-auth-client-id".into()
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: default_subject_header(),
            scopes: default_scopes_header(),
            client_id: default_client_id_header(),
        }
    }
}

/// Observed state of an AuthPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (everything rendered, checked and in use: it will work), Reconciling (the
    /// operator is still at work), Stalled (it cannot go on until something changes), KeysReady
    /// (issuer keys published and active), Degraded (working, but something needs attention)
    /// and Enforcing (False while the policy or some rules are in DryRun), each with a reason
    /// and message. Reconciling and Stalled follow kstatus.
    #[serde(default)]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// Self, PolicyRef or External.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_mode: Option<String>,
    /// Key id of the key that signs new tokens (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// The issuer's keys and where each is in its life: next, active or retiring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// When the next key transition is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<Time>,
    /// The value of the `scopegate.dev/rotate` annotation last acted on: setting another value
    /// asks for another rotation. Kept here rather than with the keys, so that a deleted or
    /// restored signing-keys Secret never replays an old request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_rotation: Option<String>,
    /// What keeps the selected pods' app ports out of reach but through the sidecar:
    /// NetworkPolicy, PortLock, NetworkPolicy+PortLock, or None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_protection: Option<String>,
    /// `selected/with sidecar`: the pods this policy selects and, of those, the pods that
    /// carry its sidecar (the `Pods` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<String>,
    /// Pods this policy selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pods: Option<i32>,
    /// Selected pods that carry the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_pods: Option<i32>,
    /// Up to ten selected pods that run without the sidecar (created before their namespace
    /// was labelled, or before this policy or their labels changed): restart them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uninjected_pods: Vec<String>,
    /// Names of the objects the operator rendered for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<RenderedObjects>,
    /// Each upstream identity provider: the callback URL to register at the provider, and
    /// whether it is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<super::upstream::UpstreamStatus>,
}

/// One signing key in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// Key id.
    pub kid: String,
    /// publishing (written and published, signing nothing until every verifier is seen to
    /// hold it), next (held everywhere, signing from activatesAt), active (signing) or retiring
    /// (published until the tokens it signed have expired).
    pub state: String,
    /// When the key was first published.
    pub published_at: Time,
    /// When the key starts (or started) signing.
    pub activates_at: Time,
    /// When the key stops signing.
    pub signs_until: Time,
    /// When the key leaves every JWKS.
    pub removed_after: Time,
    /// Its private half is gone (the signing-keys Secret was deleted, or restored from an older
    /// copy): it signs nothing and stays published until the tokens it signed have expired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_only: bool,
}

/// Names of rendered objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderedObjects {
    /// The sidecar config ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_config: Option<String>,
    /// The public JWKS ConfigMap (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// The signing-keys Secret (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_keys: Option<String>,
    /// The serving certificate Secret (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The client registry Secret (self issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<String>,
    /// The Secret of upstream client secrets (self issuers with upstreams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<String>,
    /// The NetworkPolicy admitting ingress only on the sidecar's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
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
