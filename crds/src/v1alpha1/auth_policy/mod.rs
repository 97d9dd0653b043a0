//! `AuthPolicy`: which pods are protected, where their tokens come from, and what each route
//! needs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod egress;
mod issuer;
mod rules;
mod serving;
mod sessions;
mod status;

pub use egress::*;
pub use issuer::*;
pub use rules::*;
pub use serving::*;
pub use sessions::*;
pub use status::*;

use rules::RULE_CONFLICT;
use serving::default_true;

use super::common::{audience_list, pod_selector};

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
        "rule": "!has(self.egress) || (self.egress.port != self.upstream.port && self.egress.port != (has(self.listen.port) ? self.listen.port : 15080) && self.egress.port != 15090)",
        "message": "egress.port must differ from upstream.port, listen.port and 15090 (the sidecar's admin port)",
        "fieldPath": ".egress.port"
    },
    {
        "rule": "!has(self.sessions) || !has(self.sessions.audience) || (has(self.audiences) && size(self.audiences) > 0 ? self.sessions.audience in self.audiences : (has(self.issuer.self) && self.sessions.audience == self.issuer.self.url))",
        "message": "sessions.audience must be one of spec.audiences (without audiences, an issuer.self policy's url): a session's token must be one this policy accepts",
        "fieldPath": ".sessions.audience"
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

    /// More issuers whose tokens this policy accepts, besides issuer: outside identity
    /// providers (a company's Keycloak, Entra ID, Okta) next to this policy's own or
    /// referenced issuer. Each is trusted with its own keys (fetched from its jwksUri by the
    /// sidecars, or read from its discoveryUrl by the operator; never on the request path),
    /// algorithms, typ and scope claim; a token's iss
    /// decides which issuer's keys are consulted, never any other's. They share the policy's
    /// audiences unless they name their own. An issuer listed twice, or equal to issuer, makes
    /// the policy not Ready (reason InvalidConfig).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub additional_issuers: Vec<ExternalIssuer>,

    /// Audiences a token must carry in its aud claim (any one of them), for every issuer that
    /// names none of its own (an external issuer's audiences). Empty means the issuer URL of
    /// a self issuer, and is refused for policyRef and external issuers without audiences of
    /// their own by the operator (status condition), since accepting any audience lets tokens
    /// meant for another service in.
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

    /// The app's outbound calls, made through the sidecar with tokens it obtains with the
    /// pod's ServiceAccount: no client secret in the pod, no token code in the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,

    /// Browser sessions: the sidecar logs browsers in at the issuer and keeps their tokens in
    /// a sealed cookie, so a web app with pages needs no login code of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Sessions>,
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
    /// OAuthClients of other namespaces that may exchange users' tokens for tokens of this
    /// policy's audiences (RFC 8693, their spec.tokenExchange): such a token carries the user
    /// as its subject and the client in act. Being admitted above lets a client call as
    /// itself, never as the users whose tokens it receives: that needs this list. Clients of
    /// this namespace always may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actors: Option<AudienceActors>,
}

/// OAuthClients of other namespaces that may act for users towards a policy's audiences.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AudienceActors {
    /// Namespaces whose OAuthClients may exchange users' tokens for this policy's audiences
    /// ("*" is not accepted: name each namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
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
