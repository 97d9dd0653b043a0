//! Where an AuthPolicy's tokens come from: its own keys (`self`), another policy's
//! (`policyRef`) or an outside issuer (`external`), and how its own are signed and stored.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::common::*;

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
    pub upstreams: Vec<crate::v1alpha1::upstream::UpstreamProvider>,

    /// What an upstream login leads to: the app decides the subject (Delegate, default) or
    /// the issuer derives it (Direct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::v1alpha1::upstream::Identity>,
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

/// An issuer outside the cluster, with its keys found one of two ways: jwksUri (the sidecars
/// fetch the JWKS) or discoveryUrl (the operator reads discovery and the JWKS, and renders the
/// keys into the sidecars' config).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.jwksUri) != has(self.discoveryUrl)",
        "message": "set exactly one of jwksUri (the sidecars fetch the keys) and discoveryUrl (the operator reads them)"
    }
]))]
pub struct ExternalIssuer {
    /// The issuer identifier, compared exactly with the token's iss claim.
    #[schemars(length(min = 1, max = 256))]
    pub issuer: String,
    /// Where the sidecars fetch the issuer's JWKS: an absolute https URL. Each sidecar fetches
    /// it every refreshInterval, and once more for a token with an unknown kid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != '' && !self.contains('#')",
            "message": "jwksUri must be an absolute https URL without fragment"
        }
    ]))]
    pub jwks_uri: Option<String>,
    /// The issuer's discovery document, an absolute https URL: OpenID Connect's
    /// `{issuer}/.well-known/openid-configuration`, or RFC 8414's
    /// `/.well-known/oauth-authorization-server`. The operator reads it and the JWKS it names
    /// (both over https, trusting caBundle and the system roots, each answer at most 64 KiB
    /// within 10s), checks that the document's issuer equals issuer and that its jwks_uri is
    /// https, and renders the usable keys (at most 32) into the sidecars' config: sidecars
    /// never fetch. It reads them again every refreshInterval (at least 30s apart; after a
    /// failed read 30s, doubling up to 15m while reads fail); when a read fails, the last
    /// good keys stay in force and the policy is Degraded (reason DiscoveryFailed), or not
    /// Ready while no key was ever read. A key set that holds no key fitting algorithms
    /// withdraws the keys in force. status.discoveredIssuers lists what was read. A key the issuer starts signing with before it publishes it is
    /// refused until the next read: issuers that publish keys ahead of use (Keycloak, Entra
    /// ID, Okta, Auth0) rotate without a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != '' && !self.contains('#')",
            "message": "discoveryUrl must be an absolute https URL without fragment"
        }
    ]))]
    pub discovery_url: Option<String>,
    /// Algorithms accepted from this issuer. Foreign keys often omit alg: a token's alg header
    /// is then accepted only if it is listed here and fits the key's type and curve. HS256 is
    /// not allowed for external issuers: a shared secret cannot be fetched from a JWKS.
    #[schemars(schema_with = "external_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Also accept tokens whose typ header is plain JWT (many outside issuers use it for
    /// access tokens). Off by default: only at+jwt is accepted (RFC 9068).
    #[serde(default)]
    pub allow_jwt_typ: bool,
    /// How often the keys are read again (default 5m). With jwksUri, an unknown kid triggers
    /// at most one extra fetch per this interval; with discoveryUrl, the operator reads at
    /// most every 30s whatever this says.
    #[serde(default = "default_propagation")]
    pub refresh_interval: PositiveDuration,
    /// PEM certificates (CAs) trusted when fetching jwksUri or reading discoveryUrl and the
    /// JWKS it names, in addition to the system roots:
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
    /// Audiences a token of this issuer must carry (any one), instead of spec.audiences: an
    /// outside provider names resource servers its own way (Entra ID `api://<app id>`, Auth0
    /// an API identifier), and a token it issued for this policy's other audiences is refused.
    /// Unset: spec.audiences. Each is claimed for this namespace like spec.audiences; one that
    /// another namespace owns is left out (reason AudienceConflict), and an issuer left with
    /// none is not trusted at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "audience_list")]
    pub audiences: Vec<String>,
    /// Where this issuer's tokens carry their scopes, when not in the RFC 9068 scope claim:
    /// `{claim: scp}` (Entra ID, Okta), `{claim: realm_access.roles, prefix: "orders:"}`
    /// (Keycloak roles). Unset: the scope claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<ExternalScopes>,
}

/// Where an external issuer's tokens carry their scopes. The claim may hold a space-separated
/// string or a list of strings; values that are not RFC 6749 scope tokens (after the prefix
/// is removed) grant nothing, and a claim of any other type refuses the token (401
/// invalid_token). The result feeds rules' require and anyOf, and the scopes header, exactly
/// as scope does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalScopes {
    /// The claim: a top-level name (scp) or a dotted path into nested objects
    /// (realm_access.roles, resource_access.orders.roles).
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = CLAIM_PATH_PATTERN)
    )]
    pub claim: String,
    /// Only values starting with this prefix count, with the prefix removed: with prefix
    /// "orders:", the role orders:read grants the scope read and the role billing:read
    /// grants nothing. End it with its separator: prefix "shop" would turn shopping:x into
    /// ping:x.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$")
    )]
    pub prefix: Option<String>,
}
