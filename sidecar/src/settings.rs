//! The config document checked and compiled into what requests need: rules, trusted keys
//! parsed once, rate limits, header names, the upstream client. Built on every (re)load and
//! swapped in whole; a document that does not compile is refused with a [`SettingsError`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use scopegate_core::config::{
    ConfigError, FeedConfig, Hsts, KeySource, SidecarConfig, UpstreamProtocol,
};
use scopegate_core::keys::SigningKeys;
use scopegate_core::path::{Pattern, PatternError};
use scopegate_core::policy::{Policy, PolicyError};

use crate::client_addr::{CidrError, TrustedProxies};
use crate::issuer::IssuerSettings;
use crate::jose::b64;
use crate::jose::jws::KeyMap;
use crate::jose::keys::{Alg, KeyEntry, KeyError};
use crate::metrics::Decisions;
use crate::rate_limit::{RateLimit, RateLimitError};
use crate::remote_keys::{RemoteKeySet, RemoteSpec};
use crate::token::{IssuerKeys, TokenRules};

/// Most leeway taken, in seconds: a larger configured leeway is capped to it (an operator of
/// an earlier release may still render one), never refused.
pub use scopegate_core::config::MAX_LEEWAY_SECS;
/// Token size limits accepted for `maxTokenBytes`.
const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=65_536;
/// Header names an identity header may not take.
const RESERVED_HEADERS: [&str; 8] = [
    "authorization",
    "host",
    "cookie",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "x-forwarded-for",
];

/// Why a config was refused. Messages name fields and files, never their secret content.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not a document of the expected shape or version.
    #[error("{0}")]
    Document(#[from] ConfigError),
    /// Route rules do not compile.
    #[error("rules: {0}")]
    Policy(#[from] PolicyError),
    /// Two entries for one issuer, or an empty issuer.
    #[error("verify.issuers: {0:?} is empty or listed twice")]
    Issuer(String),
    /// No audience while issuers are trusted.
    #[error("verify.audiences must not be empty")]
    NoAudiences,
    /// Token size out of range.
    #[error("verify: maxTokenBytes must be within 256..=65536")]
    Limits,
    /// A key could not be loaded.
    #[error("issuer {issuer:?}: {source}")]
    Key {
        /// The issuer.
        issuer: String,
        /// The key problem.
        #[source]
        source: KeyError,
    },
    /// `ownSigningKeys` without an issuer role or its keys document.
    #[error(
        "issuer {0:?}: ownSigningKeys needs the issuer role and a readable signing-keys document"
    )]
    OwnKeys(String),
    /// A remote key source is not usable.
    #[error(
        "issuer {0:?}: jwksUri must be https, algorithms known asymmetric ones, refreshIntervalSecs positive"
    )]
    Remote(String),
    /// The CA bundle holds no certificate.
    #[error("caBundlePem holds no valid PEM certificate")]
    CaBundle,
    /// A rate limit does not compile.
    #[error("rateLimits: {0}")]
    RateLimit(#[from] RateLimitError),
    /// A trusted-proxy CIDR does not parse.
    #[error("trustedProxies: {0}")]
    TrustedProxies(#[from] CidrError),
    /// An identity header name is invalid or reserved.
    #[error("headers: {0:?} is not a usable header name")]
    HeaderName(String),
    /// A no-store path pattern does not parse.
    #[error("headers.noStorePaths: {0}")]
    NoStorePath(#[source] PatternError),
    /// The revocation feed is misconfigured.
    #[error(
        "revocation.feed: url must be https, issuer a trusted issuer, stalenessBoundSecs positive, subjectKey 32 bytes of base64url"
    )]
    Feed,
    /// A client cut-off names an empty client.
    #[error("revocation.clientCutoffs: empty client id")]
    ClientCutoff,
    /// The issuer role's inputs are unusable.
    #[error("{0}")]
    IssuerRole(#[from] crate::issuer::IssuerError),
}

/// Where a trusted issuer's keys are.
pub enum IssuerSource {
    /// Keys from the config or the signing-keys document, fixed for this config.
    Fixed(IssuerKeys),
    /// Keys fetched from `jwksUri`.
    Remote {
        /// The live set.
        set: Arc<RemoteKeySet>,
        /// Whether `typ: JWT` is accepted.
        allow_jwt_typ: bool,
    },
}

impl IssuerSource {
    /// The keys in force now.
    pub fn keys(&self) -> IssuerKeys {
        match self {
            IssuerSource::Fixed(keys) => keys.clone(),
            IssuerSource::Remote { set, allow_jwt_typ } => IssuerKeys {
                keys: set.keys(),
                allow_jwt_typ: *allow_jwt_typ,
            },
        }
    }
}

/// Response and identity headers, checked.
#[derive(Debug, Clone)]
pub struct HeaderSettings {
    /// Send nosniff, X-Frame-Options and Referrer-Policy.
    pub security: bool,
    /// Send HSTS.
    pub hsts: bool,
    /// Paths whose responses get `Cache-Control: no-store`.
    pub no_store: Vec<Pattern>,
    /// Subject header to the app.
    pub subject: HeaderName,
    /// Scopes header to the app.
    pub scopes: HeaderName,
    /// Client id header to the app.
    pub client_id: HeaderName,
}

/// The app behind the sidecar.
pub struct Upstream {
    /// Client for the app's port.
    pub client: Client<HttpConnector, crate::proxy::BodyDeadline>,
    /// `127.0.0.1:<port>` authority.
    pub authority: String,
    /// Protocol spoken.
    pub protocol: UpstreamProtocol,
    /// Time allowed for response headers.
    pub response_timeout: Duration,
}

/// A compiled config.
pub struct Settings {
    /// The document as parsed (for listener and feed settings).
    pub config: SidecarConfig,
    /// Route rules.
    pub policy: Policy,
    /// What tokens must satisfy.
    pub token_rules: TokenRules,
    /// Trusted issuers by exact `iss`.
    pub issuers: HashMap<String, IssuerSource>,
    /// Rate limits in document order.
    pub rate_limits: Vec<Arc<RateLimit>>,
    /// Who may name the client address.
    pub trusted_proxies: Option<TrustedProxies>,
    /// Response and identity headers.
    pub headers: HeaderSettings,
    /// client_id → Unix time before which its tokens are dead.
    pub client_cutoffs: BTreeMap<String, i64>,
    /// The app.
    pub upstream: Upstream,
    /// When a key from the signing-keys document leaves the set: recompile then.
    pub recompile_at: Option<i64>,
    /// The issuer role, in pods of an `issuer.self` policy.
    pub issuer: Option<Arc<IssuerSettings>>,
    /// Keys left out because they do not load (the rest of the config is in force).
    pub skipped_keys: Vec<SkippedKey>,
    /// The decision counters of the rules and the default action, taken from the metrics on
    /// the first request this config serves.
    pub decisions: OnceLock<Decisions>,
}

/// A key left out of the config in force because it does not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The issuer whose key it is.
    pub issuer: String,
    /// Its key id (empty when it has none).
    pub kid: String,
    /// Why it does not load (never key material).
    pub reason: String,
}

/// What compiling needs besides the document.
pub struct CompileInput<'a> {
    /// The config text.
    pub config_text: &'a str,
    /// The signing-keys document text, when the config names one and it could be read.
    pub signing_keys_text: Option<&'a str>,
    /// The client registry text, in issuer pods, when it could be read.
    pub clients_text: Option<&'a str>,
    /// Unix seconds now.
    pub now: i64,
    /// Whether the listener serves TLS (for `hsts: auto`).
    pub tls: bool,
}

/// Parses only far enough to know which mounted documents the config needs besides itself:
/// the signing-keys document (the issuer role signs with it; `ownSigningKeys` verifies with
/// it) and the client registry of the issuer role.
pub fn side_documents(config_text: &str) -> (Option<String>, Option<String>) {
    let Some(issuer) = SidecarConfig::from_json(config_text)
        .ok()
        .and_then(|c| c.issuer)
    else {
        return (None, None);
    };
    (Some(issuer.signing_keys_path), Some(issuer.clients_path))
}

/// Compiles a config. `remote` returns the live set for a remote spec (an existing one when
/// the spec is unchanged, so a reload keeps fetched keys).
pub fn compile(
    input: &CompileInput<'_>,
    remote: &mut dyn FnMut(RemoteSpec) -> Arc<RemoteKeySet>,
) -> Result<Settings, SettingsError> {
    let config = SidecarConfig::from_json(input.config_text)?;
    let policy = Policy::from_config(&config)?;
    let verify = &config.verify;
    if !TOKEN_BYTES_RANGE.contains(&verify.max_token_bytes) {
        return Err(SettingsError::Limits);
    }
    if verify.leeway_secs > MAX_LEEWAY_SECS {
        tracing::warn!(
            configured = verify.leeway_secs,
            used = MAX_LEEWAY_SECS,
            "leewaySecs above the cap; the cap is used"
        );
    }
    if !verify.issuers.is_empty() && verify.audiences.iter().all(String::is_empty) {
        return Err(SettingsError::NoAudiences);
    }
    if let Some(pem) = &config.ca_bundle_pem {
        let any = CertificateDer::pem_slice_iter(pem.as_bytes()).any(|c| c.is_ok());
        if !any {
            return Err(SettingsError::CaBundle);
        }
    }
    let mut issuers = HashMap::new();
    let mut recompile_at: Option<i64> = None;
    let mut skipped_keys = Vec::new();
    for trusted in &verify.issuers {
        let name = trusted.issuer.clone();
        if name.is_empty() || issuers.contains_key(&name) {
            return Err(SettingsError::Issuer(name));
        }
        let key_error = |source| SettingsError::Key {
            issuer: name.clone(),
            source,
        };
        let source = match &trusted.keys {
            KeySource::Static { jwks } => {
                let entries = jwks.keys.iter().map(|jwk| {
                    let kid = jwk.kid.clone().unwrap_or_default();
                    (kid, KeyEntry::from_jwk(jwk, None).map_err(key_error))
                });
                IssuerSource::Fixed(IssuerKeys {
                    keys: Arc::new(keep_loaded(&name, entries, &mut skipped_keys)?),
                    allow_jwt_typ: false,
                })
            }
            KeySource::OwnSigningKeys => {
                let own_error = || SettingsError::OwnKeys(name.clone());
                let text = input
                    .signing_keys_text
                    .filter(|_| config.issuer.is_some())
                    .ok_or_else(own_error)?;
                let doc: SigningKeys = serde_json::from_str(text).map_err(|_| own_error())?;
                let live: Vec<_> = doc
                    .keys
                    .iter()
                    .filter(|k| input.now < k.removed_after)
                    .collect();
                for managed in &live {
                    recompile_at = Some(
                        recompile_at
                            .map_or(managed.removed_after, |t| t.min(managed.removed_after)),
                    );
                }
                let entries = live.into_iter().map(|managed| {
                    let entry = if managed.alg == "HS256" {
                        b64::decode_standard(managed.private_key.as_bytes())
                            .map_err(|_| own_error())
                            .and_then(|secret| {
                                KeyEntry::hs256(&managed.kid, &secret).map_err(key_error)
                            })
                    } else {
                        managed
                            .public_jwk
                            .as_ref()
                            .ok_or_else(own_error)
                            .and_then(|jwk| KeyEntry::from_jwk(jwk, None).map_err(key_error))
                    };
                    (managed.kid.clone(), entry)
                });
                IssuerSource::Fixed(IssuerKeys {
                    keys: Arc::new(keep_loaded(&name, entries, &mut skipped_keys)?),
                    allow_jwt_typ: false,
                })
            }
            KeySource::Remote {
                jwks_uri,
                algorithms,
                refresh_interval_secs,
                allow_jwt_typ,
                ca_bundle_pem,
            } => {
                let remote_error = || SettingsError::Remote(name.clone());
                let uri_ok = jwks_uri.starts_with("https://")
                    && jwks_uri
                        .parse::<http::Uri>()
                        .is_ok_and(|u| u.host().is_some());
                let algs: Vec<Alg> = algorithms
                    .iter()
                    .map(|a| Alg::from_name(a).filter(|a| *a != Alg::Hs256))
                    .collect::<Option<_>>()
                    .ok_or_else(remote_error)?;
                if !uri_ok || algs.is_empty() || *refresh_interval_secs == 0 {
                    return Err(remote_error());
                }
                IssuerSource::Remote {
                    set: remote(RemoteSpec {
                        jwks_uri: jwks_uri.clone(),
                        algorithms: algs,
                        refresh: Duration::from_secs(*refresh_interval_secs),
                        // Its own bundle only: the operator's CA certifies in-cluster
                        // Services, never an outside issuer.
                        ca_bundle_pem: ca_bundle_pem.clone(),
                    }),
                    allow_jwt_typ: *allow_jwt_typ,
                }
            }
        };
        issuers.insert(name, source);
    }
    if let Some(feed) = &config.revocation.feed {
        check_feed(feed, &issuers)?;
    }
    if config
        .revocation
        .client_cutoffs
        .keys()
        .any(String::is_empty)
    {
        return Err(SettingsError::ClientCutoff);
    }
    let rate_limits = config
        .rate_limits
        .iter()
        .map(|r| RateLimit::compile(r).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let trusted_proxies = config
        .trusted_proxies
        .as_ref()
        .map(TrustedProxies::from_config)
        .transpose()?;
    let headers = compile_headers(&config, input.tls)?;
    // The leeway in force is capped at MAX_LEEWAY_SECS (TokenRules::from_config).
    let token_rules = TokenRules::from_config(verify);
    let upstream = upstream(&config);
    let issuer = config
        .issuer
        .as_ref()
        .map(|role| {
            IssuerSettings::compile(
                &config,
                role,
                input.signing_keys_text,
                input.clients_text,
                input.now,
            )
        })
        .transpose()?
        .map(Arc::new);
    if let Some(next) = issuer.as_ref().and_then(|i| i.keys.next_change(input.now)) {
        recompile_at = Some(recompile_at.map_or(next, |t| t.min(next)));
    }
    if let Some(role) = &issuer {
        skipped_keys.extend(role.keys.skipped().iter().map(|err| SkippedKey {
            issuer: role.config.url.clone(),
            kid: err.kid().to_owned(),
            reason: err.to_string(),
        }));
    }
    Ok(Settings {
        issuer,
        policy,
        token_rules,
        issuers,
        rate_limits,
        trusted_proxies,
        headers,
        client_cutoffs: config.revocation.client_cutoffs.clone(),
        upstream,
        recompile_at,
        skipped_keys,
        config,
        decisions: OnceLock::new(),
    })
}

/// The keys of one issuer that load; the others are recorded in `skipped`. When keys were
/// listed and none loads, the config is refused with the first key's error (the last good
/// config keeps serving): a bad key costs only itself, a bad key set is not taken for none.
fn keep_loaded(
    issuer: &str,
    entries: impl Iterator<Item = (String, Result<KeyEntry, SettingsError>)>,
    skipped: &mut Vec<SkippedKey>,
) -> Result<KeyMap, SettingsError> {
    let mut keys = KeyMap::new();
    let mut first_error = None;
    for (kid, entry) in entries {
        match entry {
            Ok(entry) => {
                keys.insert(entry.kid().to_owned(), entry);
            }
            Err(err) => {
                skipped.push(SkippedKey {
                    issuer: issuer.to_owned(),
                    kid,
                    reason: err.to_string(),
                });
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) if keys.is_empty() => Err(err),
        _ => Ok(keys),
    }
}

/// The leeway in force: the configured one, capped at [`MAX_LEEWAY_SECS`].
pub fn leeway_secs(configured: u64) -> i64 {
    scopegate_core::token::leeway_secs(configured)
}

fn check_feed(
    feed: &FeedConfig,
    issuers: &HashMap<String, IssuerSource>,
) -> Result<(), SettingsError> {
    let url_ok = feed.url.starts_with("https://")
        && feed
            .url
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some() && u.query().is_none());
    let key_ok = feed
        .subject_key
        .as_deref()
        .is_none_or(|k| scopegate_core::feed::decode_subject_key(k).is_some());
    if !url_ok || !key_ok || !issuers.contains_key(&feed.issuer) || feed.staleness_bound_secs == 0 {
        return Err(SettingsError::Feed);
    }
    Ok(())
}

fn compile_headers(config: &SidecarConfig, tls: bool) -> Result<HeaderSettings, SettingsError> {
    let h = &config.headers;
    let name = |text: &str| {
        HeaderName::from_bytes(text.as_bytes())
            .ok()
            .filter(|n| n.as_str() == text && !RESERVED_HEADERS.contains(&text))
            .ok_or_else(|| SettingsError::HeaderName(text.to_owned()))
    };
    Ok(HeaderSettings {
        security: h.security_headers,
        hsts: match h.hsts {
            Hsts::Always => true,
            Hsts::Never => false,
            Hsts::Auto => tls,
        },
        no_store: h
            .no_store_paths
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<_, _>>()
            .map_err(SettingsError::NoStorePath)?,
        subject: name(&h.subject_header)?,
        scopes: name(&h.scopes_header)?,
        client_id: name(&h.client_id_header)?,
    })
}

fn upstream(config: &SidecarConfig) -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60));
    if config.upstream.protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    Upstream {
        client: builder.build(connector),
        authority: format!("127.0.0.1:{}", config.upstream.port),
        protocol: config.upstream.protocol,
        response_timeout: Duration::from_secs(config.upstream.response_timeout_secs.max(1)),
    }
}
