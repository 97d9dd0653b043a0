//! The config document checked and compiled into what requests need: rules, trusted keys
//! parsed once, rate limits, header names, the upstream client. Built on every (re)load and
//! swapped in whole; a document that does not compile is refused with a [`SettingsError`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use scopegate_core::check::{self, CheckError};
use scopegate_core::config::{
    ConfigError, Hsts, KeySource, ScopeClaim, SidecarConfig, TrustedIssuer, UpstreamProtocol,
};
use scopegate_core::keys::SigningKeys;
use scopegate_core::path::Pattern;
use scopegate_core::policy::Policy;

use scopegate_core::error_chain;

use crate::client_addr::TrustedProxies;
pub use crate::inputs::{CompileInput, SkippedKey};
use crate::jose::b64;
use crate::jose::jws::KeyMap;
use crate::jose::keys::{KeyEntry, KeyError};
use crate::metrics::Decisions;
use crate::rate_limit::RateLimit;
use crate::remote_keys::{RemoteKeySet, RemoteSpec};
use crate::role::{CompiledRole, Role, RoleError};
use crate::token::{IssuerKeys, TokenRules};

/// Most leeway taken, in seconds: a larger configured leeway is capped to it (an operator of
/// an earlier release may still render one), never refused.
pub use scopegate_core::config::MAX_LEEWAY_SECS;
/// Why a config was refused. Messages name fields and files, never their secret content.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not a document of the expected shape or version.
    #[error(transparent)]
    Document(#[from] ConfigError),
    /// Refused by the checks the operator runs too ([`scopegate_core::check`]).
    #[error(transparent)]
    Check(#[from] CheckError),
    /// A key could not be loaded.
    #[error("issuer {issuer:?}")]
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
    /// The issuer role's inputs are unusable.
    #[error(transparent)]
    Role(RoleError),
    /// The browser-sessions section is unusable.
    #[error(transparent)]
    Sessions(#[from] scopegate_sessions::SessionsError),
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
        /// Where its tokens carry their scopes.
        scopes: Option<Arc<ScopeClaim>>,
        /// Its own audiences, if it has any.
        audiences: Option<Arc<[String]>>,
    },
}

impl IssuerSource {
    /// The keys in force now.
    pub fn keys(&self) -> IssuerKeys {
        match self {
            IssuerSource::Fixed(keys) => keys.clone(),
            IssuerSource::Remote {
                set,
                allow_jwt_typ,
                scopes,
                audiences,
            } => IssuerKeys {
                keys: set.keys(),
                allow_jwt_typ: *allow_jwt_typ,
                scopes: scopes.clone(),
                audiences: audiences.clone(),
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
    /// Claim headers to the app: each name, with the claim's path split at its dots.
    pub claims: Vec<(HeaderName, Vec<String>)>,
    /// Every header the sidecar sets from the token (identity and claims): incoming copies,
    /// in every spelling, are removed.
    pub from_token: Vec<HeaderName>,
}

/// The app behind the sidecar.
pub struct Upstream {
    /// Client for the app's port.
    pub client: Client<HttpConnector, crate::body_deadline::BodyDeadline>,
    /// `127.0.0.1:<port>` authority.
    pub authority: String,
    /// Protocol spoken.
    pub protocol: UpstreamProtocol,
    /// Time allowed for response headers.
    pub response_timeout: Duration,
}

/// A compiled config.
pub struct Settings {
    /// Unique to this compilation: the token cache serves an entry only to the settings it
    /// was verified under (a reload changes what a token is worth).
    pub serial: u64,
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
    pub role: Option<Arc<dyn CompiledRole>>,
    /// Browser sessions, when the policy enables them.
    pub sessions: Option<Arc<scopegate_sessions::Compiled>>,
    /// Keys left out because they do not load (the rest of the config is in force).
    pub skipped_keys: Vec<SkippedKey>,
    /// The decision counters of the rules and the default action, taken from the metrics on
    /// the first request this config serves.
    pub decisions: OnceLock<Decisions>,
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
/// the spec is unchanged, so a reload keeps fetched keys); `role` compiles the issuer section.
pub fn compile(
    input: &CompileInput<'_>,
    remote: &mut dyn FnMut(RemoteSpec) -> Arc<RemoteKeySet>,
    role: Option<&dyn Role>,
) -> Result<Settings, SettingsError> {
    let config = SidecarConfig::from_json(input.config_text)?;
    // Everything the operator checks before it writes a document, by the same code.
    check::document(&config)?;
    let policy = Policy::from_config(&config).map_err(CheckError::from)?;
    let verify = &config.verify;
    if verify.leeway_secs > MAX_LEEWAY_SECS {
        tracing::warn!(
            configured = verify.leeway_secs,
            used = MAX_LEEWAY_SECS,
            "leewaySecs above the cap; the cap is used"
        );
    }
    let mut issuers = HashMap::new();
    let mut recompile_at: Option<i64> = None;
    let mut skipped_keys = Vec::new();
    for trusted in &verify.issuers {
        let source = issuer_source(
            trusted,
            input,
            config.issuer.is_some(),
            remote,
            &mut recompile_at,
            &mut skipped_keys,
        )?;
        issuers.insert(trusted.issuer.clone(), source);
    }
    let rate_limits = config
        .rate_limits
        .iter()
        .map(|r| RateLimit::compile(r).map(Arc::new))
        .collect::<Result<_, _>>()
        .map_err(CheckError::from)?;
    let trusted_proxies = config
        .trusted_proxies
        .as_ref()
        .map(TrustedProxies::from_config)
        .transpose()
        .map_err(CheckError::from)?;
    let headers = compile_headers(&config, input.tls)?;
    // The leeway in force is capped at MAX_LEEWAY_SECS (TokenRules::from_config).
    let token_rules = TokenRules {
        keep_claims: policy.has_conditions() || !headers.claims.is_empty(),
        kept_claims: kept_claim_names(&policy, &headers),
        ..TokenRules::from_config(verify)
    };
    let upstream = upstream(&config);
    let sessions = scopegate_sessions::Compiled::new(&config)?.map(Arc::new);
    let role = match (&config.issuer, role) {
        (Some(_), Some(role)) => Some(role.compile(&config, input).map_err(SettingsError::Role)?),
        _ => None,
    };
    if let Some(next) = role.as_ref().and_then(|r| r.next_change(input.now)) {
        recompile_at = Some(recompile_at.map_or(next, |t| t.min(next)));
    }
    if let Some(role) = &role {
        skipped_keys.extend(role.skipped_keys());
    }
    static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(Settings {
        serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        role,
        sessions,
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

/// The top-level claims the conditions and claim headers read (`None`: a condition reads
/// `claims` as a whole): a cached token keeps only those.
fn kept_claim_names(policy: &Policy, headers: &HeaderSettings) -> Option<Arc<BTreeSet<String>>> {
    let mut names = BTreeSet::new();
    for (_, condition) in policy.conditions() {
        names.extend(condition.claim_names()?.iter().cloned());
    }
    names.extend(
        headers
            .claims
            .iter()
            .filter_map(|(_, path)| path.first().cloned()),
    );
    Some(Arc::new(names))
}

/// Where one trusted issuer's keys come from, loaded: a key that does not load is recorded in
/// `skipped_keys`; `recompile_at` learns when a key of the signing-keys document leaves.
fn issuer_source(
    trusted: &TrustedIssuer,
    input: &CompileInput<'_>,
    has_role: bool,
    remote: &mut dyn FnMut(RemoteSpec) -> Arc<RemoteKeySet>,
    recompile_at: &mut Option<i64>,
    skipped_keys: &mut Vec<SkippedKey>,
) -> Result<IssuerSource, SettingsError> {
    let name = trusted.issuer.clone();
    let key_error = |source| SettingsError::Key {
        issuer: name.clone(),
        source,
    };
    let audiences: Option<Arc<[String]>> =
        (!trusted.audiences.is_empty()).then(|| Arc::from(trusted.audiences.clone()));
    Ok(match &trusted.keys {
        KeySource::Static { jwks } => {
            let entries = jwks.keys.iter().map(|jwk| {
                let kid = jwk.kid.clone().unwrap_or_default();
                (kid, KeyEntry::from_jwk(jwk, None).map_err(key_error))
            });
            IssuerSource::Fixed(IssuerKeys {
                keys: Arc::new(keep_loaded(&name, entries, skipped_keys)?),
                allow_jwt_typ: false,
                scopes: None,
                audiences,
            })
        }
        KeySource::OwnSigningKeys => {
            let mut own = own_signing_keys(&name, input, has_role, recompile_at, skipped_keys)?;
            own.audiences = audiences;
            IssuerSource::Fixed(own)
        }
        KeySource::Discovered {
            jwks,
            algorithms,
            allow_jwt_typ,
            scopes,
        } => {
            let algs = check::foreign_algorithms(algorithms)
                .ok_or_else(|| CheckError::Remote(name.clone()))?;
            let entries = jwks.keys.iter().map(|jwk| {
                let kid = jwk.kid.clone().unwrap_or_default();
                (kid, KeyEntry::from_jwk(jwk, Some(&algs)).map_err(key_error))
            });
            IssuerSource::Fixed(IssuerKeys {
                keys: Arc::new(keep_loaded(&name, entries, skipped_keys)?),
                allow_jwt_typ: *allow_jwt_typ,
                scopes: scopes.clone().map(Arc::new),
                audiences,
            })
        }
        KeySource::Remote {
            jwks_uri,
            algorithms,
            refresh_interval_secs,
            allow_jwt_typ,
            ca_bundle_pem,
            scopes,
        } => {
            let algs = check::remote_algorithms(jwks_uri, algorithms, *refresh_interval_secs)
                .ok_or_else(|| CheckError::Remote(name.clone()))?;
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
                scopes: scopes.clone().map(Arc::new),
                audiences,
            }
        }
    })
}

/// The keys of `ownSigningKeys`: the live keys of the signing-keys document (the issuer role's
/// own), public halves and HS256 secrets.
fn own_signing_keys(
    name: &str,
    input: &CompileInput<'_>,
    has_role: bool,
    recompile_at: &mut Option<i64>,
    skipped_keys: &mut Vec<SkippedKey>,
) -> Result<IssuerKeys, SettingsError> {
    let key_error = |source| SettingsError::Key {
        issuer: name.to_owned(),
        source,
    };
    let own_error = || SettingsError::OwnKeys(name.to_owned());
    let text = input
        .signing_keys_text
        .filter(|_| has_role)
        .ok_or_else(own_error)?;
    let doc: SigningKeys = serde_json::from_str(text).map_err(|_| own_error())?;
    let live: Vec<_> = doc
        .keys
        .iter()
        .filter(|k| input.now < k.removed_after)
        .collect();
    for managed in &live {
        *recompile_at =
            Some(recompile_at.map_or(managed.removed_after, |t| t.min(managed.removed_after)));
    }
    let entries = live.into_iter().map(|managed| {
        let entry = if managed.alg == "HS256" {
            b64::decode_standard(managed.private_key.as_bytes())
                .map_err(|_| own_error())
                .and_then(|secret| KeyEntry::hs256(&managed.kid, &secret).map_err(key_error))
        } else {
            managed
                .public_jwk
                .as_ref()
                .ok_or_else(own_error)
                .and_then(|jwk| KeyEntry::from_jwk(jwk, None).map_err(key_error))
        };
        (managed.kid.clone(), entry)
    });
    Ok(IssuerKeys {
        keys: Arc::new(keep_loaded(name, entries, skipped_keys)?),
        allow_jwt_typ: false,
        scopes: None,
        audiences: None,
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
                    reason: error_chain(&err),
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

fn compile_headers(config: &SidecarConfig, tls: bool) -> Result<HeaderSettings, SettingsError> {
    let h = &config.headers;
    let name = check::header_name;
    let claims = h
        .claims
        .iter()
        .map(|(header, path)| Ok((name(header)?, path.split('.').map(str::to_owned).collect())))
        .collect::<Result<Vec<_>, CheckError>>()?;
    let from_token = [&h.subject_header, &h.scopes_header, &h.client_id_header]
        .into_iter()
        .chain(h.claims.keys())
        .map(|header| name(header))
        .collect::<Result<_, _>>()?;
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
            .map_err(CheckError::NoStorePath)?,
        subject: name(&h.subject_header)?,
        scopes: name(&h.scopes_header)?,
        client_id: name(&h.client_id_header)?,
        claims,
        from_token,
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
