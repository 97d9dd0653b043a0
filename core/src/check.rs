//! What the sidecar refuses in a config document, as one pure check both sides run: the
//! sidecar before it compiles a document (a refusal keeps its last good config), the operator
//! before it writes one (a refusal becomes the policy's status, and the last good document
//! stays in its ConfigMap). The messages name fields, never their secret content.
//!
//! What needs the mounted side documents (the signing-keys document, the client registry) is
//! checked by the sidecar alone, when it reads them.

use http::HeaderName;

use crate::claim_headers::{MAX_CLAIM_HEADERS, is_claim_path};
use crate::config::{
    FeedConfig, HeadersConfig, IssuerConfig, KeySource, RateLimitConfig, ScopeClaim, SidecarConfig,
    TrustedIssuer,
};
use crate::jose::keys::{Alg, KeyEntry, KeyError};
use crate::names::{SIDECAR_REWRITTEN_HEADERS, folded_header_name};
use crate::path::{Pattern, PatternError};
use crate::policy::{Matcher, Policy, PolicyError};
use crate::upstream::{self as up, IdentityMode, UpstreamKind};

/// Token size limits accepted for `maxTokenBytes`.
pub const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=65_536;
/// Longest authorization-code lifetime, in seconds.
pub const MAX_CODE_TTL_SECS: u64 = 600;
/// Header names an identity header may not take.
pub const RESERVED_HEADERS: [&str; 8] = [
    "authorization",
    "host",
    "cookie",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "x-forwarded-for",
];

/// Why a config document is refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Route rules do not compile.
    #[error("rules do not compile")]
    Policy(#[from] PolicyError),
    /// Two entries for one issuer, or an empty issuer.
    #[error("verify.issuers: {0:?} is empty or listed twice")]
    Issuer(String),
    /// An issuer without audiences of its own while the policy has none either.
    #[error("verify.audiences must not be empty: issuer {0:?} names no audiences of its own")]
    NoAudiences(String),
    /// An issuer's own audience is empty.
    #[error("verify.issuers: {0:?} lists an empty audience")]
    EmptyAudience(String),
    /// Token size out of range.
    #[error("verify: maxTokenBytes must be within 256..=65536")]
    Limits,
    /// Keys were listed for an issuer and none of them loads.
    #[error("issuer {issuer:?}: none of its keys loads")]
    Key {
        /// The issuer.
        issuer: String,
        /// The first key's problem.
        #[source]
        source: KeyError,
    },
    /// An outside issuer's key source is not usable.
    #[error(
        "issuer {0:?}: algorithms must be known asymmetric ones (at least one), a jwksUri https and refreshIntervalSecs positive"
    )]
    Remote(String),
    /// An issuer's `scopes` names no claim path, or a prefix that is not visible text.
    #[error(
        "issuer {0:?}: scopes.claim must be a claim path and scopes.prefix 1 to 64 visible characters"
    )]
    ScopeClaim(String),
    /// The CA bundle holds no certificate.
    #[error("caBundlePem holds no valid PEM certificate")]
    CaBundle,
    /// A rate limit does not compile.
    #[error("rateLimits: a limit does not compile")]
    RateLimit(#[from] RateLimitError),
    /// A trusted-proxy CIDR does not parse.
    #[error("trustedProxies: a CIDR does not parse")]
    TrustedProxies(#[from] crate::cidr::CidrError),
    /// More claim headers than [`MAX_CLAIM_HEADERS`].
    #[error("headers.claims: {0} headers, at most {MAX_CLAIM_HEADERS}")]
    ClaimHeaders(usize),
    /// A claim header that another identity or claim header already is, in some spelling.
    #[error(
        "headers.claims: {0:?} is another identity or claim header in a spelling the app may read as the same"
    )]
    ClaimHeaderTaken(String),
    /// A claim header named like a header the sidecar owns, removes or rebuilds.
    #[error(
        "headers.claims: {0:?} is a header the sidecar owns, removes or rebuilds (in some spelling)"
    )]
    ClaimHeaderReserved(String),
    /// A rule's condition reads a header the sidecar sets from the token.
    #[error(
        "rule {rule}: the when condition reads request.headers[{header:?}], which the sidecar sets from the token (the client's copy never reaches the app)"
    )]
    ConditionReadsOwnHeader {
        /// The rule's label.
        rule: String,
        /// The header.
        header: String,
    },
    /// Not a claim path.
    #[error(
        "headers.claims: {0:?} is not a claim path (names of letters, digits, _, : and -, joined by dots)"
    )]
    ClaimPath(String),
    /// An identity header name is invalid or reserved.
    #[error("headers: {0:?} is not a usable header name")]
    HeaderName(String),
    /// A no-store path pattern does not parse.
    #[error("headers.noStorePaths: a pattern does not parse")]
    NoStorePath(#[source] PatternError),
    /// The revocation feed is misconfigured.
    #[error(
        "revocation.feed: url must be https, issuer a trusted issuer, stalenessBoundSecs positive, subjectKey 32 bytes of base64url"
    )]
    Feed,
    /// A client cut-off names an empty client.
    #[error("revocation.clientCutoffs: empty client id")]
    ClientCutoff,
    /// The issuer URL is not an https URL without query or fragment.
    #[error("issuer url must be https without query or fragment")]
    IssuerUrl,
    /// The authorization-code lifetime is zero or above 10 minutes.
    #[error("issuer codeTtlSecs must be within 1..=600")]
    CodeTtl,
    /// The upstreams or publicUrl are unusable.
    #[error("issuer upstreams: {0}")]
    Upstreams(&'static str),
    /// The feed subject key is not 32 bytes of base64url.
    #[error("issuer feedSubjectKey must be 32 bytes of base64url")]
    FeedSubjectKey,
    /// The egress section is unusable.
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
}

/// A rate limit that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// Zero requests or a zero period.
    #[error("rate limit {0:?}: requests and periodSecs must be positive")]
    Zero(String),
    /// A bad path pattern.
    #[error("rate limit {name:?}: bad path pattern")]
    Pattern {
        /// The limit's name.
        name: String,
        /// The pattern problem.
        #[source]
        source: PatternError,
    },
}

/// Checks a whole document: everything the sidecar refuses without reading another file.
pub fn document(config: &SidecarConfig) -> Result<(), CheckError> {
    let policy = Policy::from_config(config)?;
    let verify = &config.verify;
    if !TOKEN_BYTES_RANGE.contains(&verify.max_token_bytes) {
        return Err(CheckError::Limits);
    }
    let policy_audiences = verify.audiences.iter().any(|a| !a.is_empty());
    for trusted in &verify.issuers {
        if trusted.audiences.iter().any(String::is_empty) {
            return Err(CheckError::EmptyAudience(trusted.issuer.clone()));
        }
        if trusted.audiences.is_empty() && !policy_audiences {
            return Err(CheckError::NoAudiences(trusted.issuer.clone()));
        }
    }
    if let Some(pem) = &config.ca_bundle_pem
        && !ca_bundle(pem)
    {
        return Err(CheckError::CaBundle);
    }
    let seen = trusted_issuers(&verify.issuers)?;
    if let Some(feed) = &config.revocation.feed {
        self::feed(feed, &seen)?;
    }
    if config
        .revocation
        .client_cutoffs
        .keys()
        .any(String::is_empty)
    {
        return Err(CheckError::ClientCutoff);
    }
    for limit in &config.rate_limits {
        rate_limit(limit)?;
    }
    if let Some(proxies) = &config.trusted_proxies
        && let crate::config::TrustedProxiesConfig::Cidrs(list) = proxies
    {
        for cidr in list {
            crate::cidr::Cidr::parse(cidr)?;
        }
    }
    let headers = &config.headers;
    for name in [
        &headers.subject_header,
        &headers.scopes_header,
        &headers.client_id_header,
    ] {
        header_name(name)?;
    }
    for path in &headers.no_store_paths {
        Pattern::parse(path).map_err(CheckError::NoStorePath)?;
    }
    claim_headers(headers)?;
    conditions_read_no_header_of_ours(&policy, headers)?;
    if let Some(role) = &config.issuer {
        issuer(role)?;
    }
    crate::egress::check(config)?;
    Ok(())
}

/// Checks each trusted issuer (a unique, non-empty name; keys that load, or a usable remote
/// JWKS) and returns their names.
fn trusted_issuers(issuers: &[TrustedIssuer]) -> Result<Vec<&str>, CheckError> {
    let mut seen: Vec<&str> = Vec::new();
    for trusted in issuers {
        let name = trusted.issuer.as_str();
        if name.is_empty() || seen.contains(&name) {
            return Err(CheckError::Issuer(name.to_owned()));
        }
        seen.push(name);
        match &trusted.keys {
            KeySource::Static { jwks } => {
                let mut first_error = None;
                let mut loaded = 0usize;
                for jwk in &jwks.keys {
                    match KeyEntry::from_jwk(jwk, None) {
                        Ok(_) => loaded += 1,
                        Err(err) => {
                            first_error.get_or_insert(err);
                        }
                    }
                }
                if let Some(source) = first_error.filter(|_| loaded == 0) {
                    return Err(CheckError::Key {
                        issuer: name.to_owned(),
                        source,
                    });
                }
            }
            // Checked where the signing-keys document is read.
            KeySource::OwnSigningKeys => {}
            KeySource::Remote {
                jwks_uri,
                algorithms,
                refresh_interval_secs,
                scopes,
                ..
            } => {
                remote_algorithms(jwks_uri, algorithms, *refresh_interval_secs)
                    .ok_or_else(|| CheckError::Remote(name.to_owned()))?;
                foreign_scopes(name, scopes.as_ref())?;
            }
            KeySource::Discovered {
                jwks,
                algorithms,
                scopes,
                ..
            } => {
                let algs = foreign_algorithms(algorithms)
                    .ok_or_else(|| CheckError::Remote(name.to_owned()))?;
                for jwk in &jwks.keys {
                    KeyEntry::from_jwk(jwk, Some(&algs)).map_err(|source| CheckError::Key {
                        issuer: name.to_owned(),
                        source,
                    })?;
                }
                foreign_scopes(name, scopes.as_ref())?;
            }
        }
    }
    Ok(seen)
}

/// An outside issuer's scope claim, if it names one, must be usable.
fn foreign_scopes(name: &str, scopes: Option<&ScopeClaim>) -> Result<(), CheckError> {
    match scopes {
        Some(scopes) if !scope_claim(scopes) => Err(CheckError::ScopeClaim(name.to_owned())),
        _ => Ok(()),
    }
}

/// Whether an issuer's scope claim names a claim path and a prefix of visible characters.
fn scope_claim(scopes: &ScopeClaim) -> bool {
    is_claim_path(&scopes.claim)
        && scopes.prefix.as_deref().is_none_or(|prefix| {
            (1..=64).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// Whether a PEM bundle holds at least one certificate block.
pub fn ca_bundle(pem: &str) -> bool {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).any(|c| c.is_ok())
}

/// The algorithms of a usable remote key source: an https `jwksUri` with a host, known
/// asymmetric algorithms (at least one), a positive refresh interval. `None` otherwise.
pub fn remote_algorithms(
    jwks_uri: &str,
    algorithms: &[String],
    refresh_interval_secs: u64,
) -> Option<Vec<Alg>> {
    let uri_ok = jwks_uri.starts_with("https://")
        && jwks_uri
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some());
    let algs = foreign_algorithms(algorithms)?;
    (uri_ok && refresh_interval_secs > 0).then_some(algs)
}

/// The algorithms an outside issuer may use: known asymmetric ones, at least one. `None`
/// otherwise.
pub fn foreign_algorithms(algorithms: &[String]) -> Option<Vec<Alg>> {
    let algs: Vec<Alg> = algorithms
        .iter()
        .map(|a| Alg::from_name(a).filter(|a| *a != Alg::Hs256))
        .collect::<Option<_>>()?;
    (!algs.is_empty()).then_some(algs)
}

fn feed(feed: &FeedConfig, issuers: &[&str]) -> Result<(), CheckError> {
    let url_ok = feed.url.starts_with("https://")
        && feed
            .url
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some() && u.query().is_none());
    let key_ok = feed
        .subject_key
        .as_deref()
        .is_none_or(|k| crate::feed::decode_subject_key(k).is_some());
    if !url_ok
        || !key_ok
        || !issuers.contains(&feed.issuer.as_str())
        || feed.staleness_bound_secs == 0
    {
        return Err(CheckError::Feed);
    }
    Ok(())
}

/// Compiles a rate limit's matcher, refusing a zero budget.
pub fn rate_limit(config: &RateLimitConfig) -> Result<Matcher, RateLimitError> {
    if config.requests == 0 || config.period_secs == 0 {
        return Err(RateLimitError::Zero(config.name.clone()));
    }
    // Loosely, as rules that require something match: `POST /login/` and `/LOGIN` spend the
    // budget of `/login`, and HEAD that of GET.
    Matcher::compile(&config.methods, &config.paths, true).map_err(|source| {
        RateLimitError::Pattern {
            name: config.name.clone(),
            source,
        }
    })
}

/// `headers.claims`: at most [`MAX_CLAIM_HEADERS`] usable header names, none another
/// identity header in any spelling the app may fold to it, each naming a claim path.
fn claim_headers(headers: &HeadersConfig) -> Result<(), CheckError> {
    if headers.claims.len() > MAX_CLAIM_HEADERS {
        return Err(CheckError::ClaimHeaders(headers.claims.len()));
    }
    let folded = folded_header_name;
    let identity = [
        &headers.subject_header,
        &headers.scopes_header,
        &headers.client_id_header,
    ]
    .map(|name| folded(name));
    let mut seen = Vec::new();
    for (name, path) in &headers.claims {
        header_name(name)?;
        let name_folded = folded(name);
        let owned = RESERVED_HEADERS.contains(&name_folded.as_str())
            || SIDECAR_REWRITTEN_HEADERS.contains(&name_folded.as_str())
            || ["content-type", "expect"].contains(&name_folded.as_str());
        if owned {
            return Err(CheckError::ClaimHeaderReserved(name.clone()));
        }
        if identity.contains(&name_folded) || seen.contains(&name_folded) {
            return Err(CheckError::ClaimHeaderTaken(name.clone()));
        }
        seen.push(name_folded);
        if !is_claim_path(path) {
            return Err(CheckError::ClaimPath(path.clone()));
        }
    }
    Ok(())
}

/// A condition judges what the app will get: never a header the sidecar sets from the token
/// (the client's copy is removed before the app sees it).
fn conditions_read_no_header_of_ours(
    policy: &Policy,
    headers: &HeadersConfig,
) -> Result<(), CheckError> {
    let ours: Vec<String> = [
        &headers.subject_header,
        &headers.scopes_header,
        &headers.client_id_header,
    ]
    .into_iter()
    .chain(headers.claims.keys())
    .map(|name| folded_header_name(name))
    .collect();
    for (rule, condition) in policy.conditions() {
        if let Some(header) =
            (condition.headers().iter()).find(|h| ours.contains(&folded_header_name(h)))
        {
            return Err(CheckError::ConditionReadsOwnHeader {
                rule,
                header: header.clone(),
            });
        }
    }
    Ok(())
}

/// An identity header name: a valid, lower-case header name that is not reserved.
pub fn header_name(text: &str) -> Result<HeaderName, CheckError> {
    HeaderName::from_bytes(text.as_bytes())
        .ok()
        .filter(|n| {
            n.as_str() == text
                && !RESERVED_HEADERS.contains(&text)
                && !SIDECAR_REWRITTEN_HEADERS.contains(&folded_header_name(text).as_str())
        })
        .ok_or_else(|| CheckError::HeaderName(text.to_owned()))
}

/// Checks the issuer role's own fields: its URL, code lifetime, feed subject key, publicUrl
/// and upstreams.
pub fn issuer(issuer: &IssuerConfig) -> Result<(), CheckError> {
    let url: http::Uri = issuer.url.parse().map_err(|_| CheckError::IssuerUrl)?;
    if url.scheme_str() != Some("https")
        || url.host().is_none()
        || url.query().is_some()
        || issuer.url.contains('#')
    {
        return Err(CheckError::IssuerUrl);
    }
    if issuer.code_ttl_secs == 0 || issuer.code_ttl_secs > MAX_CODE_TTL_SECS {
        return Err(CheckError::CodeTtl);
    }
    if issuer
        .feed_subject_key
        .as_deref()
        .is_some_and(|k| crate::feed::decode_subject_key(k).is_none())
    {
        return Err(CheckError::FeedSubjectKey);
    }
    upstreams(issuer, url.path().trim_end_matches('/'))
}

/// The browser-facing base URL of an issuer: `publicUrl`, else `url`, without a trailing `/`.
pub fn public_url(issuer: &IssuerConfig) -> String {
    issuer
        .public_url
        .as_deref()
        .unwrap_or(&issuer.url)
        .trim_end_matches('/')
        .to_owned()
}

fn upstreams(issuer: &IssuerConfig, path_prefix: &str) -> Result<(), CheckError> {
    let bad = CheckError::Upstreams;
    let public_url = public_url(issuer);
    let public: http::Uri = public_url
        .parse()
        .map_err(|_| bad("publicUrl is not a URL"))?;
    if public.scheme_str() != Some("https")
        || public.host().is_none()
        || public.query().is_some()
        || public_url.contains('#')
    {
        return Err(bad("publicUrl must be https without query or fragment"));
    }
    if public.path().trim_end_matches('/') != path_prefix {
        return Err(bad("publicUrl must have the same path as url"));
    }
    if issuer.upstreams.len() > up::MAX_UPSTREAMS {
        return Err(bad("at most 8 upstreams"));
    }
    for (i, upstream) in issuer.upstreams.iter().enumerate() {
        if !up::valid_name(&upstream.name) {
            return Err(bad("an upstream name is not a DNS label (or is 'local')"));
        }
        if issuer.upstreams[..i]
            .iter()
            .any(|u| u.name == upstream.name)
        {
            return Err(bad("upstream names must be unique"));
        }
        if upstream.callback_url != up::callback_url(&public_url, &upstream.name) {
            return Err(bad(
                "an upstream callbackUrl is not {publicUrl}/oauth2/upstream/{name}/callback",
            ));
        }
        if let UpstreamKind::Oidc(oidc) = &upstream.kind {
            if !oidc.issuer.starts_with("https://") {
                return Err(bad("an OIDC upstream issuer must be https"));
            }
            if !oidc.scopes.iter().any(|s| s == "openid") {
                return Err(bad("an OIDC upstream's scopes must contain openid"));
            }
            if up::UNSTABLE_SUBJECT_CLAIMS.contains(&oidc.claims.subject.as_str()) {
                return Err(bad(
                    "an OIDC upstream's subject claim names an email, user name or display name",
                ));
            }
        }
    }
    if !issuer.upstreams.is_empty()
        && issuer.identity.mode == IdentityMode::Delegate
        && issuer.login_url.is_none()
    {
        return Err(bad("identity mode Delegate needs loginUrl"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        CONFIG_API_VERSION, DEFAULT_MAX_TOKEN_BYTES, HeadersConfig, ListenConfig, PolicyId,
        TrustedIssuer, TrustedProxiesConfig, UpstreamConfig, UpstreamProtocol, VerifyConfig,
    };

    fn sample() -> SidecarConfig {
        SidecarConfig {
            api_version: CONFIG_API_VERSION.into(),
            policy: PolicyId {
                namespace: "shop".into(),
                name: "orders".into(),
                generation: 1,
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
                        jwks: crate::jwk::Jwks::default(),
                    },
                    audiences: vec![],
                }],
                audiences: vec!["orders".into()],
                leeway_secs: 30,
                max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            },
            rules: vec![],
            default_action: crate::config::DefaultAction::Deny,
            rate_limits: vec![],
            trusted_proxies: None,
            headers: HeadersConfig::default(),
            revocation: crate::config::RevocationConfig::default(),
            ca_bundle_pem: None,
            issuer: None,
            egress: None,
            sessions: None,
            enforcement: crate::config::Enforcement::default(),
        }
    }

    #[test]
    fn a_sound_document_passes() {
        document(&sample()).unwrap();
        // Every issuer naming its own audiences needs none of the policy's.
        let mut own = sample();
        own.verify.audiences.clear();
        own.verify.issuers[0].audiences = vec!["api://reports".into()];
        document(&own).unwrap();
    }

    #[test]
    fn each_refusal_names_the_field() {
        type Break = fn(&mut SidecarConfig);
        let cases: Vec<(Break, &str)> = vec![
            (
                |c| c.headers.subject_header = "host".into(),
                "headers: \"host\" is not a usable header name",
            ),
            (
                |c| c.headers.scopes_header = "authorization".into(),
                "headers: \"authorization\" is not a usable header name",
            ),
            (
                |c| c.headers.client_id_header = "X-Client".into(),
                "headers: \"X-Client\" is not a usable header name",
            ),
            (
                |c| c.verify.audiences.clear(),
                "verify.audiences must not be empty: issuer \"https://auth.shop.svc\" names no audiences of its own",
            ),
            (
                |c| c.verify.issuers[0].audiences = vec![String::new()],
                "verify.issuers: \"https://auth.shop.svc\" lists an empty audience",
            ),
            (
                |c| c.verify.max_token_bytes = 10,
                "verify: maxTokenBytes must be within 256..=65536",
            ),
            (
                |c| {
                    c.trusted_proxies =
                        Some(TrustedProxiesConfig::Cidrs(vec!["10.0.0.0/33".into()]))
                },
                "trustedProxies: a CIDR does not parse: \"10.0.0.0/33\" is not a CIDR block (address/prefix)",
            ),
            (
                |c| {
                    c.headers
                        .claims
                        .insert("X_Auth_Subject".into(), "email".into());
                },
                "headers: \"X_Auth_Subject\" is not a usable header name",
            ),
            (
                |c| {
                    c.headers
                        .claims
                        .insert("x-auth_subject".into(), "email".into());
                },
                "headers.claims: \"x-auth_subject\" is another identity or claim header in a spelling the app may read as the same",
            ),
            (
                |c| {
                    c.headers.claims.insert("x-tenant".into(), "org..id".into());
                },
                "headers.claims: \"org..id\" is not a claim path (names of letters, digits, _, : and -, joined by dots)",
            ),
            (
                |c| {
                    for i in 0..17 {
                        c.headers.claims.insert(format!("x-c{i}"), "email".into());
                    }
                },
                "headers.claims: 17 headers, at most 16",
            ),
            (
                |c| {
                    c.headers
                        .claims
                        .insert("x-original-url".into(), "website".into());
                },
                "headers: \"x-original-url\" is not a usable header name",
            ),
            (
                |c| {
                    c.headers
                        .claims
                        .insert("x_forwarded_for".into(), "ip".into());
                },
                "headers: \"x_forwarded_for\" is not a usable header name",
            ),
            (
                |c| {
                    c.headers
                        .claims
                        .insert("content-type".into(), "mime".into());
                },
                "headers.claims: \"content-type\" is a header the sidecar owns, removes or rebuilds (in some spelling)",
            ),
            (
                |c| {
                    c.headers.claims.insert("x-tenant".into(), "org.id".into());
                    c.rules.push(crate::config::RouteRule {
                        name: Some("items".into()),
                        methods: vec![],
                        paths: vec!["/items/**".into()],
                        action: crate::config::RuleAction::Authenticated,
                        enforcement: None,
                        when: Some(r#"request.headers["x_tenant"] == "a""#.into()),
                    });
                },
                "rule items: the when condition reads request.headers[\"x_tenant\"], which the sidecar sets from the token (the client's copy never reaches the app)",
            ),
            (
                |c| c.ca_bundle_pem = Some("not pem".into()),
                "caBundlePem holds no valid PEM certificate",
            ),
            (
                |c| {
                    let again = c.verify.issuers[0].clone();
                    c.verify.issuers.push(again);
                },
                "verify.issuers: \"https://auth.shop.svc\" is empty or listed twice",
            ),
            (
                |c| {
                    c.rate_limits.push(RateLimitConfig {
                        name: "login".into(),
                        methods: vec![],
                        paths: vec!["/login".into()],
                        requests: 0,
                        period_secs: 60,
                        key: crate::config::RateLimitKey::ClientAddress,
                    });
                },
                "rateLimits: a limit does not compile: rate limit \"login\": requests and periodSecs must be positive",
            ),
        ];
        for (break_it, message) in cases {
            let mut config = sample();
            break_it(&mut config);
            let err = document(&config).expect_err(message);
            // Each cause once, in the chain.
            assert_eq!(crate::error_chain(&err), message);
        }
    }

    #[test]
    fn discovered_keys_must_fit_the_issuers_algorithms() {
        let ec: crate::jwk::Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "k1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))
        .unwrap();
        let with = |keys: Vec<crate::jwk::Jwk>, algorithms: &[&str]| {
            let mut config = sample();
            config.verify.issuers[0].keys = KeySource::Discovered {
                jwks: crate::jwk::Jwks { keys },
                algorithms: algorithms.iter().map(|a| (*a).to_owned()).collect(),
                allow_jwt_typ: false,
                scopes: None,
            };
            document(&config)
        };
        with(vec![ec.clone()], &["ES256"]).unwrap();
        // Before the first read: no key, nothing accepted, and the document is sound.
        with(vec![], &["ES256"]).unwrap();
        assert!(matches!(
            with(vec![ec.clone()], &["RS256"]),
            Err(CheckError::Key { .. })
        ));
        for algorithms in [&[][..], &["HS256"], &["none"]] {
            assert!(
                matches!(
                    with(vec![ec.clone()], algorithms),
                    Err(CheckError::Remote(_))
                ),
                "{algorithms:?}"
            );
        }
    }
}
