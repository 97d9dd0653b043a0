//! The sidecar config document: what the operator renders into ConfigMap `<policy>-sidecar`
//! (key [`CONFIG_FILE`]) and the sidecar reads, validates and hot-reloads.
//!
//! It is plain data, self-contained (the JWKS it trusts is inline, so one atomic file swap
//! changes rules and keys together) and versioned by [`CONFIG_API_VERSION`]: a sidecar refuses
//! a document of another version rather than guess. Durations are whole seconds, times Unix
//! seconds, so the sidecar needs no duration grammar. Unknown fields are ignored, so an
//! operator may add optional fields without breaking running sidecars.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::jwk::Jwks;

/// The `apiVersion` of this document.
pub const CONFIG_API_VERSION: &str = "sidecar.scopegate.dev/v1";

/// The `apiVersion` of a document that uses a feature a sidecar older than `when` conditions
/// would ignore rather than refuse (rules' `when`, claim headers, an outside issuer's own
/// audiences or scope claim): such a sidecar then refuses the whole document and keeps its
/// last good config, instead of enforcing less than the policy says. Sidecars of this
/// version read both.
pub const CONFIG_API_VERSION_V2: &str = "sidecar.scopegate.dev/v2";

/// File name of the document inside the sidecar ConfigMap.
pub const CONFIG_FILE: &str = "config.json";

/// Largest bearer token the sidecar accepts by default, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Most clock skew a verifier tolerates, in seconds (RFC 8725 practice: a minute at most). A
/// larger `leewaySecs` is taken as this.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// The whole sidecar configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarConfig {
    /// Always [`CONFIG_API_VERSION`].
    pub api_version: String,
    /// Which AuthPolicy this was rendered from (for logs and metrics).
    pub policy: PolicyId,
    /// The listener for protected traffic.
    pub listen: ListenConfig,
    /// The app behind the sidecar.
    pub upstream: UpstreamConfig,
    /// How bearer tokens are verified.
    pub verify: VerifyConfig,
    /// Route rules; the most specific match wins.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// What an unmatched request gets.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Whether refusals are acted on: for the default action and every rule without an
    /// enforcement of its own. A sidecar that predates this field ignores it and enforces.
    #[serde(default, skip_serializing_if = "Enforcement::is_enforce")]
    pub enforcement: Enforcement,
    /// Per-route rate limits.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Which proxies may name the client address. `None`: the TCP peer is the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<TrustedProxiesConfig>,
    /// Response and identity headers.
    #[serde(default)]
    pub headers: HeadersConfig,
    /// Revocation: client cut-offs and the issuer's feed.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// PEM CA bundle of the operator's tenants' CA, trusted (next to the system roots) only
    /// for the sidecar's connections to in-cluster services: the revocation feed of an
    /// in-cluster issuer and a Redis store. Never for an external issuer's JWKS or an upstream
    /// identity provider, which trust the system roots plus their own `caBundlePem` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    /// Present in pods of an `issuer.self` policy: the sidecar also runs the issuer role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerConfig>,
    /// Present when the policy declares egress: the sidecar also forwards the app's outbound
    /// calls, with tokens it obtains itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressConfig>,
    /// Present when the policy enables browser sessions: the sidecar logs browsers in at the
    /// issuer and keeps their tokens in a sealed cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<crate::session::SessionConfig>,
}

/// The app's outbound calls through the sidecar: a forward proxy on loopback that attaches
/// an access token the sidecar obtained with the pod's own ServiceAccount token (RFC 7523
/// client assertion), so the pod holds no client secret and the app no auth code.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EgressConfig {
    /// Port on 127.0.0.1 the app sends its outbound calls to (as `HTTP_PROXY`, or as the base
    /// URL with the target's host in the Host header).
    pub port: u16,
    /// The token endpoint of the client's issuer (https, an in-cluster name: trusted with
    /// [`SidecarConfig::ca_bundle_pem`] only).
    pub token_endpoint: String,
    /// The client_id sent with the assertion.
    pub client_id: String,
    /// The audience the ServiceAccount token must carry: the issuer's URL. The sidecar sends
    /// the token only to the issuer it is for (a token endpoint changed since the pod started
    /// would otherwise receive a token it could replay at the old issuer).
    pub token_audience: String,
    /// The projected ServiceAccount token (audience: the issuer's URL), read again for every
    /// token request, so that the kubelet's rotation needs nothing more.
    pub assertion_path: String,
    /// Where the app may call; a request for any other host is refused (no open proxy).
    pub targets: Vec<EgressTarget>,
}

/// One place the app may call through the sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EgressTarget {
    /// Its name, quoted in errors and metrics.
    pub name: String,
    /// Where the sidecar sends the call: `https://host[:port]`, or `http://` for an in-cluster
    /// name only. The app's request must name this host (and this port, if it names one).
    pub url: String,
    /// The `host:port` the sidecar connects to: for an in-cluster name, its full name in the
    /// cluster domain, so that DNS search domains never make `orders.shop.svc` another
    /// namespace's name; else the url's host and port.
    pub address: String,
    /// An in-cluster name (`<service>.<namespace>.svc[.<cluster domain>]`): its certificate is
    /// checked against the operator's CA only; any other host against the system roots only.
    pub in_cluster: bool,
    /// The audience requested for its tokens (RFC 8707 `resource`).
    pub audience: String,
    /// The scopes requested for its tokens.
    pub scopes: Vec<String>,
    /// On behalf of the caller: the app forwards the bearer token of the request it is
    /// serving, and the sidecar exchanges it (RFC 8693) for a token of this target's audience
    /// that names the pod's client as the actor. Otherwise the pod's own token is sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_behalf_of_caller: bool,
}

/// Identity of the rendering AuthPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyId {
    /// Namespace of the AuthPolicy.
    pub namespace: String,
    /// Name of the AuthPolicy.
    pub name: String,
    /// `metadata.generation` rendered.
    pub generation: i64,
}

/// The sidecar's listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListenConfig {
    /// Port on all interfaces.
    pub port: u16,
    /// Serve TLS with these files (issuer pods always do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// Paths of a mounted certificate and key (PEM).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert_path: String,
    /// Private key, PEM.
    pub key_path: String,
}

/// The app the sidecar forwards to, on 127.0.0.1.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamConfig {
    /// The app's port.
    pub port: u16,
    /// How the sidecar talks to the app.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How long the app may take to send response headers before the client gets 504.
    #[serde(default = "default_response_timeout_secs")]
    pub response_timeout_secs: u64,
}

fn default_response_timeout_secs() -> u64 {
    30
}

/// The protocol spoken to the app.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (WebSocket upgrades pass through).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC apps).
    H2c,
}

/// Token verification settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyConfig {
    /// Issuers whose tokens are accepted, keyed by their exact `iss`.
    pub issuers: Vec<TrustedIssuer>,
    /// Accepted audiences: a token's `aud` must contain one of them exactly.
    pub audiences: Vec<String>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`, at most [`MAX_LEEWAY_SECS`] (a larger
    /// value is taken as that).
    pub leeway_secs: u64,
    /// Largest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

/// An issuer and where its keys come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuer {
    /// The exact `iss` value.
    pub issuer: String,
    /// Where the verification keys come from.
    pub keys: KeySource,
    /// Audiences this issuer's tokens must carry (one of them), instead of
    /// [`VerifyConfig::audiences`]; empty: those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// Where an issuer's verification keys come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum KeySource {
    /// Keys the operator rendered (a `self` issuer, or a `policyRef`'s copy). Every key has
    /// `kid` and `alg`; tokens are accepted only at `typ` `at+jwt`.
    #[serde(rename_all = "camelCase")]
    Static {
        /// The public keys.
        jwks: Jwks,
    },
    /// The HS256 secrets of this pod's own issuer role (read from the mounted signing-keys
    /// file named in [`IssuerConfig::signing_keys_path`]): HS256 is never published.
    OwnSigningKeys,
    /// An outside issuer's keys, read by the operator from the JWKS its discovery document
    /// names and rendered here (the sidecar never fetches them); refreshed by a new config.
    #[serde(rename_all = "camelCase")]
    Discovered {
        /// The usable public keys, each with a `kid` (possibly none, before the first read).
        jwks: Jwks,
        /// Algorithms accepted (a JWK without `alg` is used only with a listed algorithm that
        /// fits its type and curve).
        algorithms: Vec<String>,
        /// Also accept `typ: JWT`.
        #[serde(default)]
        allow_jwt_typ: bool,
        /// Where this issuer's tokens carry their scopes; `None`: the `scope` claim (RFC 9068).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scopes: Option<ScopeClaim>,
    },
    /// An outside issuer's JWKS, fetched and cached by the sidecar.
    #[serde(rename_all = "camelCase")]
    Remote {
        /// https URL of the JWKS.
        jwks_uri: String,
        /// Algorithms accepted (a JWK without `alg` is used only with a listed algorithm that
        /// fits its type and curve).
        algorithms: Vec<String>,
        /// How often to refetch; an unknown kid triggers at most one extra fetch per interval.
        refresh_interval_secs: u64,
        /// Also accept `typ: JWT`.
        #[serde(default)]
        allow_jwt_typ: bool,
        /// PEM CAs trusted for this JWKS URL only, next to the system roots (an issuer behind
        /// a private CA). The operator's CA is never trusted here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_bundle_pem: Option<String>,
        /// Where this issuer's tokens carry their scopes; `None`: the `scope` claim (RFC 9068).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scopes: Option<ScopeClaim>,
    },
}

/// Where an issuer's tokens carry their scopes, when not in RFC 9068's `scope` string: a
/// claim (`scp`, or a dotted path such as `realm_access.roles`) holding a space-separated
/// string or a list of strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScopeClaim {
    /// The claim's dotted path.
    pub claim: String,
    /// Only values starting with this count, with it removed (`orders:` turns the role
    /// `orders:read` into the scope `read`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A route rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Name for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Upper-case methods; empty matches every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path patterns ([`crate::path`] grammar).
    pub paths: Vec<String>,
    /// What the rule asks of a request.
    pub action: RuleAction,
    /// This rule's enforcement; `None`: the document's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
    /// A condition the request must also meet: a CEL expression over the verified token's
    /// claims and the request ([`crate::condition`]). Only on rules that need a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// Whether the sidecar acts on a rule's refusals.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Enforcement {
    /// Refused requests get their refusal.
    #[default]
    Enforce,
    /// Refused requests are forwarded anyway (without identity headers unless the token is
    /// valid), and counted and logged as what would have been refused. Path refusals, the
    /// issuer's endpoints and rate limits stay enforced.
    DryRun,
}

impl Enforcement {
    /// Whether this is [`Enforcement::Enforce`].
    pub fn is_enforce(&self) -> bool {
        *self == Enforcement::Enforce
    }
}

/// What a rule asks of a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RuleAction {
    /// No token needed (a token that is present is still not required to be valid).
    Public,
    /// Any valid token.
    Authenticated,
    /// A valid token with all of these scopes.
    #[serde(rename_all = "camelCase")]
    RequireAll {
        /// Scopes, all needed.
        scopes: Vec<String>,
    },
    /// A valid token with all scopes of at least one set.
    #[serde(rename_all = "camelCase")]
    RequireAny {
        /// Alternative scope sets.
        scope_sets: Vec<Vec<String>>,
    },
}

/// What an unmatched request gets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum DefaultAction {
    /// 401 without a token, 403 with one.
    #[default]
    Deny,
    /// Any valid token.
    Authenticate,
    /// Everything passes.
    Allow,
}

/// A rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// Name for logs and metrics.
    pub name: String,
    /// Upper-case methods; empty matches every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path patterns.
    pub paths: Vec<String>,
    /// What a budget belongs to.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Requests per period.
    pub requests: u32,
    /// Period in seconds.
    pub period_secs: u64,
}

/// What a rate-limit budget belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitKey {
    /// The client address (IPv6 grouped by /64).
    #[default]
    ClientAddress,
    /// The token's subject; the client address when there is no valid token.
    Subject,
}

/// Which proxies may set X-Forwarded-For.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TrustedProxiesConfig {
    /// This many proxies in front: the client is that many entries from the right.
    Hops(u8),
    /// Skip entries from the right while they are inside these CIDRs.
    Cidrs(Vec<String>),
}

/// Response and identity headers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeadersConfig {
    /// nosniff, X-Frame-Options DENY, Referrer-Policy no-referrer on every response.
    pub security_headers: bool,
    /// When to send HSTS.
    pub hsts: Hsts,
    /// Path patterns whose responses get `Cache-Control: no-store`.
    #[serde(default)]
    pub no_store_paths: Vec<String>,
    /// Header carrying the subject to the app.
    pub subject_header: String,
    /// Header carrying the space-separated scopes to the app.
    pub scopes_header: String,
    /// Header carrying the client_id to the app.
    pub client_id_header: String,
    /// Claims carried to the app: header name → claim path ([`crate::claim_headers`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            security_headers: true,
            hsts: Hsts::Auto,
            no_store_paths: Vec::new(),
            subject_header: "x-auth-subject".into(),
            scopes_header: "x-auth-scopes".into(),
            client_id_header: "x-auth-client-id".into(),
            claims: BTreeMap::new(),
        }
    }
}

/// When to send Strict-Transport-Security.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Hsts {
    /// When the listener serves TLS.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Revocation sources.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevocationConfig {
    /// client_id → Unix time: tokens of that client issued (`iat`) before it are dead.
    #[serde(default)]
    pub client_cutoffs: BTreeMap<String, i64>,
    /// The issuer's revocation feed (jti revocations and subject cut-offs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedConfig>,
}

/// Where and how to read the revocation feed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeedConfig {
    /// https URL of the feed (the issuer Service), e.g.
    /// `https://auth.shop.svc:443/oauth2/revocations`.
    pub url: String,
    /// The issuer (`iss`) whose keys sign the feed pages.
    pub issuer: String,
    /// How long the sidecar may go without a successful poll before the feed counts as stale.
    pub staleness_bound_secs: u64,
    /// Refuse every token while the feed is stale (default: keep serving with what is known).
    #[serde(default)]
    pub fail_closed: bool,
    /// The key under which the feed names subjects ([`crate::feed::subject_digest`]),
    /// base64url; `None` from an earlier operator, whose issuer names them plainly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_key: Option<String>,
}

/// The issuer role (pods of an `issuer.self` policy). Issue-specific fields grow here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerConfig {
    /// The issuer identifier (`iss`).
    pub url: String,
    /// The mounted signing-keys document ([`crate::keys::SigningKeys`]).
    pub signing_keys_path: String,
    /// The mounted client registry.
    pub clients_path: String,
    /// Access-token lifetime.
    pub access_token_ttl_secs: u64,
    /// Refresh-token family lifetime.
    pub refresh_token_ttl_secs: u64,
    /// How long a refresh-token family may go unused before it expires (each refresh starts
    /// it again); `None`: half of `refresh_token_ttl_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_idle_secs: Option<u64>,
    /// Authorization-code lifetime.
    pub code_ttl_secs: u64,
    /// The scope vocabulary: name → description.
    #[serde(default)]
    pub scopes: BTreeMap<String, String>,
    /// Where /oauth2/authorize sends the browser to log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_url: Option<String>,
    /// What the app may mint on the mint socket (`None`: minting refused; accepting login
    /// challenges and setting subject cut-offs still work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint: Option<MintConfig>,
    /// The mint socket's path, in the emptyDir shared with the app container.
    #[serde(default = "default_mint_socket_path")]
    pub mint_socket_path: String,
    /// Where codes, refresh families, revocations and rate-limit counters live.
    #[serde(default)]
    pub store: StoreConfig,
    /// The browser-facing base URL (authorize, the provider chooser, upstream callbacks), when
    /// it differs from `url`. Same path as `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Upstream identity providers a user may log in with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<crate::upstream::UpstreamIdp>,
    /// What an upstream login leads to.
    #[serde(default)]
    pub identity: crate::upstream::IdentityConfig,
    /// The key under which the revocation feed names subjects (the one its verifiers hold),
    /// base64url; `None`: subjects are published plainly, as before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_subject_key: Option<String>,
    /// The cluster's service-account issuer, whose projected tokens authenticate clients
    /// registered with [`crate::clients::AuthMethod::ServiceAccountJwt`]; `None` when no
    /// client of this issuer does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_issuer: Option<ServiceAccountIssuer>,
}

/// The cluster's service-account issuer as the operator read it from the API server (its
/// OIDC discovery document and JWKS): the issuer never fetches it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountIssuer {
    /// The `iss` of its tokens, exactly.
    pub issuer: String,
    /// Its usable public keys (possibly none, before the first read).
    pub jwks: Jwks,
    /// Algorithms accepted.
    pub algorithms: Vec<String>,
}

fn default_mint_socket_path() -> String {
    format!("{}/mint.sock", crate::names::MINT_SOCKET_DIR)
}

/// Limits on minted tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MintConfig {
    /// Subject patterns (`*` matches any run of characters).
    pub subjects: Vec<String>,
    /// Scopes a minted token may carry.
    pub scopes: Vec<String>,
    /// Audiences a minted token may carry (empty: the issuer URL only).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Longest lifetime of a minted token.
    pub max_ttl_secs: u64,
}

/// Where issuer state lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum StoreConfig {
    /// In the sidecar's memory (one replica; lost on restart).
    #[default]
    Memory,
    /// In Redis.
    #[serde(rename_all = "camelCase")]
    Redis {
        /// host:port.
        address: String,
        /// Connect with TLS (verified against `caBundlePem` and the system roots).
        #[serde(default)]
        tls: bool,
        /// Directory of the mounted credentials Secret (files `username`, optional, and
        /// `password`), re-read when it changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials_dir: Option<String>,
    },
}

impl SidecarConfig {
    /// Parses and checks a document. Failure means "keep the last good config".
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: SidecarConfig = serde_json::from_str(text).map_err(ConfigError::Parse)?;
        if config.api_version != CONFIG_API_VERSION && config.api_version != CONFIG_API_VERSION_V2 {
            return Err(ConfigError::Version(config.api_version));
        }
        Ok(config)
    }

    /// The `apiVersion` this document needs: [`CONFIG_API_VERSION_V2`] when it uses a feature
    /// an older sidecar would ignore (egress among them: an older sidecar would leave the
    /// app's outbound calls with nowhere to go), else [`CONFIG_API_VERSION`].
    pub fn required_api_version(&self) -> &'static str {
        let issuer_features = self.verify.issuers.iter().any(|trusted| {
            !trusted.audiences.is_empty()
                || matches!(
                    &trusted.keys,
                    KeySource::Remote {
                        scopes: Some(_),
                        ..
                    }
                )
        });
        let rule_conditions = self.rules.iter().any(|rule| rule.when.is_some());
        let service_accounts =
            (self.issuer.as_ref()).is_some_and(|issuer| issuer.service_account_issuer.is_some());
        // An older sidecar would ignore sessions and answer browsers with 401s.
        let egress = self.egress.is_some() || self.sessions.is_some();
        if issuer_features
            || rule_conditions
            || service_accounts
            || egress
            || !self.headers.claims.is_empty()
        {
            CONFIG_API_VERSION_V2
        } else {
            CONFIG_API_VERSION
        }
    }
}

/// Why a config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON of the expected shape.
    #[error("config is not a valid sidecar config document")]
    Parse(#[source] serde_json::Error),
    /// Another document version.
    #[error(
        "config apiVersion {0:?} is neither {CONFIG_API_VERSION:?} nor {CONFIG_API_VERSION_V2:?}"
    )]
    Version(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SidecarConfig {
        SidecarConfig {
            api_version: CONFIG_API_VERSION.into(),
            policy: PolicyId {
                namespace: "shop".into(),
                name: "orders".into(),
                generation: 3,
            },
            listen: ListenConfig {
                port: 15080,
                tls: None,
            },
            upstream: UpstreamConfig {
                port: 8080,
                protocol: UpstreamProtocol::Http1,
                response_timeout_secs: 30,
            },
            verify: VerifyConfig {
                issuers: vec![TrustedIssuer {
                    issuer: "https://auth.shop.svc".into(),
                    keys: KeySource::Static {
                        jwks: Jwks::default(),
                    },
                    audiences: vec![],
                }],
                audiences: vec!["orders".into()],
                leeway_secs: 30,
                max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            },
            rules: vec![RouteRule {
                name: Some("list".into()),
                methods: vec!["GET".into()],
                paths: vec!["/orders/**".into()],
                action: RuleAction::RequireAny {
                    scope_sets: vec![vec!["read:orders".into()]],
                },
                enforcement: Some(Enforcement::DryRun),
                when: None,
            }],
            default_action: DefaultAction::Deny,
            enforcement: Enforcement::Enforce,
            rate_limits: vec![],
            trusted_proxies: Some(TrustedProxiesConfig::Hops(1)),
            headers: HeadersConfig::default(),
            revocation: RevocationConfig::default(),
            ca_bundle_pem: None,
            issuer: None,
            egress: None,
            sessions: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let text = serde_json::to_string(&sample()).unwrap();
        assert_eq!(SidecarConfig::from_json(&text).unwrap(), sample());
        assert!(text.contains(r#""type":"requireAny""#), "{text}");
        assert!(text.contains(r#""enforcement":"dryRun""#), "{text}");
        // An enforcing document renders as it did before the field existed.
        assert_eq!(text.matches("enforcement").count(), 1, "{text}");
    }

    #[test]
    fn a_document_an_older_sidecar_would_misread_says_so_in_its_version() {
        let base = sample();
        assert_eq!(base.required_api_version(), CONFIG_API_VERSION);
        type Edit = fn(&mut SidecarConfig);
        let edits: [Edit; 5] = [
            |c| c.verify.issuers[0].audiences = vec!["api://x".into()],
            |c| {
                c.headers
                    .claims
                    .insert("x-user-email".into(), "email".into());
            },
            |c| {
                c.verify.issuers[0].keys = KeySource::Remote {
                    jwks_uri: "https://idp.example/jwks".into(),
                    algorithms: vec!["ES256".into()],
                    refresh_interval_secs: 60,
                    allow_jwt_typ: false,
                    ca_bundle_pem: None,
                    scopes: Some(ScopeClaim {
                        claim: "scp".into(),
                        prefix: None,
                    }),
                };
            },
            |c| {
                let mut issuer: IssuerConfig = serde_json::from_value(serde_json::json!({
                    "url": "https://auth.shop.svc", "signingKeysPath": "/k", "clientsPath": "/c",
                    "accessTokenTtlSecs": 300, "refreshTokenTtlSecs": 3600, "codeTtlSecs": 60,
                }))
                .unwrap();
                issuer.service_account_issuer = Some(ServiceAccountIssuer {
                    issuer: "https://kubernetes.default.svc".into(),
                    jwks: Jwks::default(),
                    algorithms: vec!["RS256".into()],
                });
                c.issuer = Some(issuer);
            },
            |c| {
                c.egress = Some(EgressConfig {
                    port: 15081,
                    token_endpoint: "https://auth.shop.svc/oauth2/token".into(),
                    client_id: "shop.billing".into(),
                    token_audience: "https://auth.shop.svc".into(),
                    assertion_path: "/t".into(),
                    targets: Vec::new(),
                });
            },
        ];
        for edit in edits {
            let mut config = base.clone();
            edit(&mut config);
            assert_eq!(config.required_api_version(), CONFIG_API_VERSION_V2);
            config.api_version = CONFIG_API_VERSION_V2.into();
            let text = serde_json::to_string(&config).unwrap();
            assert_eq!(SidecarConfig::from_json(&text).unwrap(), config);
        }
    }

    #[test]
    fn refuses_another_version() {
        let mut config = sample();
        config.api_version = "sidecar.scopegate.dev/v3".into();
        let text = serde_json::to_string(&config).unwrap();
        assert!(matches!(
            SidecarConfig::from_json(&text),
            Err(ConfigError::Version(_))
        ));
    }

    #[test]
    fn refuses_garbage_without_echoing_it() {
        let err =
            SidecarConfig::from_json("{\"apiVersion\": 1, \"secret\": \"hunter2\"}").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn ignores_unknown_fields_from_a_newer_operator() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["someFutureField"] = serde_json::json!({"x": 1});
        assert!(SidecarConfig::from_json(&value.to_string()).is_ok());
    }
}
