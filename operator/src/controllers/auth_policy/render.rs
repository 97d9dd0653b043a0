//! Pure construction of an AuthPolicy's sidecar config document, and of the upstreams'
//! status. No client, no clock: inputs in, document out.

use std::collections::BTreeMap;

use kube::ResourceExt;
use scopegate_core::config::{
    self, CONFIG_API_VERSION, FeedConfig, HeadersConfig, IssuerConfig, KeySource, ListenConfig,
    PolicyId, RateLimitConfig, RevocationConfig, RouteRule, RuleAction, ScopeClaim, SidecarConfig,
    TlsFiles, TrustedIssuer, TrustedProxiesConfig, UpstreamConfig, VerifyConfig,
};
use scopegate_core::jwk::Jwks;
use scopegate_crds::v1alpha1::{self as api, AuthPolicy, AuthPolicySpec};

use crate::audiences::effective_audiences;
use crate::error::{Error, Result};
use crate::names::{self, LISTEN_TLS_MOUNT_DIR};

/// How long verifiers may go without reading the revocation feed before it counts as stale.
pub const FEED_STALENESS_SECS: u64 = 60;

/// How the keys a policy trusts were resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `issuer.self`: this policy's own keys.
    Own {
        /// Public keys at render time (empty for HS256).
        jwks: Jwks,
        /// HS256: verify with the pod's own signing-keys file.
        hs256: bool,
    },
    /// `policyRef` resolved to an issuer.
    Referenced {
        /// The issuer's `iss`.
        issuer: String,
        /// Its published keys, copied into this namespace.
        jwks: Jwks,
        /// Its revocation feed.
        feed_url: String,
        /// The key its feed names subjects under (`None` before the issuer has a UID).
        feed_subject_key: Option<String>,
    },
    /// `external`.
    External(api::ExternalIssuer),
    /// `policyRef` could not be resolved: no key is trusted until it is.
    Unresolved,
}

/// The revocation feed URL of an issuer policy.
pub fn feed_url(namespace: &str, service: &api::ServicePort) -> String {
    format!(
        "https://{}.{namespace}.svc:{}/oauth2/revocations",
        service.name, service.port
    )
}

/// The key an issuer policy's revocation feed names subjects under
/// ([`scopegate_core::feed::subject_key_of`] its UID).
pub fn feed_subject_key(issuer: &AuthPolicy) -> Option<String> {
    issuer
        .uid()
        .map(|uid| scopegate_core::feed::subject_key_of(&uid))
}

/// The keys rendered for each `discoveryUrl` issuer, by issuer: what the operator read, or
/// else what the sidecars hold. An issuer not listed is rendered without a key.
pub type DiscoveredKeys = BTreeMap<String, Jwks>;

/// Renders the sidecar config document for `policy`.
pub fn sidecar_config(
    policy: &AuthPolicy,
    trust: &Trust,
    discovered: &DiscoveredKeys,
    client_cutoffs: BTreeMap<String, i64>,
    ca_bundle: &str,
) -> Result<SidecarConfig> {
    let spec = &policy.spec;
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let leeway_secs = spec
        .issuer
        .self_
        .as_ref()
        .and_then(|s| s.tokens.leeway.get().ok())
        .map_or(30, |d| d.as_secs().min(config::MAX_LEEWAY_SECS));

    let (issuers, feed) = trusted_issuers(policy, trust, discovered, &namespace)?;

    let issuer = issuer_config(policy);

    let tls = listener_tls(spec);

    let mut config = SidecarConfig {
        api_version: CONFIG_API_VERSION.to_owned(),
        policy: PolicyId {
            namespace,
            name: policy.name_any(),
            generation: policy.metadata.generation.unwrap_or_default(),
        },
        listen: ListenConfig {
            port: port(spec.listen.port),
            tls,
        },
        upstream: upstream_config(spec),
        verify: VerifyConfig {
            issuers,
            audiences: effective_audiences(spec),
            leeway_secs,
            max_token_bytes: config::DEFAULT_MAX_TOKEN_BYTES,
        },
        rules: spec.rules.iter().map(route_rule).collect(),
        default_action: match spec.default_action {
            api::DefaultAction::Deny => config::DefaultAction::Deny,
            api::DefaultAction::Authenticate => config::DefaultAction::Authenticate,
            api::DefaultAction::Allow => config::DefaultAction::Allow,
        },
        enforcement: enforcement(spec.enforcement),
        rate_limits: spec.rate_limits.iter().map(rate_limit).collect(),
        trusted_proxies: spec.trusted_proxies.as_ref().map(|t| match t.hops {
            Some(hops) => TrustedProxiesConfig::Hops(u8::try_from(hops).unwrap_or(u8::MAX)),
            None => TrustedProxiesConfig::Cidrs(t.cidrs.clone()),
        }),
        headers: headers(spec),
        revocation: RevocationConfig {
            client_cutoffs,
            feed,
        },
        ca_bundle_pem: Some(ca_bundle.to_owned()).filter(|b| !b.is_empty()),
        issuer,
        egress: None,
        sessions: None,
    };
    // A document an older sidecar would read as enforcing less says so: that sidecar refuses
    // it and keeps its last good config.
    config.api_version = config.required_api_version().to_owned();
    Ok(config)
}

/// The issuers a verifier trusts, with their keys, and the revocation feed it reads.
fn trusted_issuers(
    policy: &AuthPolicy,
    trust: &Trust,
    discovered: &DiscoveredKeys,
    namespace: &str,
) -> Result<(Vec<TrustedIssuer>, Option<FeedConfig>)> {
    let spec = &policy.spec;
    let (mut issuers, feed) = match trust {
        Trust::Own { jwks, hs256 } => {
            let own = spec.issuer.self_.as_ref().ok_or(Error::Unaddressable)?;
            let keys = if *hs256 {
                KeySource::OwnSigningKeys
            } else {
                KeySource::Static { jwks: jwks.clone() }
            };
            let feed = FeedConfig {
                url: feed_url(namespace, &own.service),
                issuer: own.url.clone(),
                staleness_bound_secs: FEED_STALENESS_SECS,
                fail_closed: false,
                subject_key: feed_subject_key(policy),
            };
            (
                vec![TrustedIssuer {
                    issuer: own.url.clone(),
                    keys,
                    audiences: Vec::new(),
                }],
                Some(feed),
            )
        }
        Trust::Referenced {
            issuer,
            jwks,
            feed_url,
            feed_subject_key,
        } => {
            let feed = FeedConfig {
                url: feed_url.clone(),
                issuer: issuer.clone(),
                staleness_bound_secs: FEED_STALENESS_SECS,
                fail_closed: false,
                subject_key: feed_subject_key.clone(),
            };
            (
                vec![TrustedIssuer {
                    issuer: issuer.clone(),
                    keys: KeySource::Static { jwks: jwks.clone() },
                    audiences: Vec::new(),
                }],
                Some(feed),
            )
        }
        Trust::External(external) => (vec![external_issuer(external, discovered)], None),
        Trust::Unresolved => (Vec::new(), None),
    };
    issuers.extend(
        (spec.additional_issuers.iter()).map(|external| external_issuer(external, discovered)),
    );
    Ok((issuers, feed))
}

/// An outside issuer, trusted with the keys the operator read through its discovery
/// document, or else with those the sidecar fetches from its JWKS.
fn external_issuer(external: &api::ExternalIssuer, discovered: &DiscoveredKeys) -> TrustedIssuer {
    let algorithms = external
        .algorithms
        .iter()
        .map(|a| crate::pki::keygen::alg_name(*a).to_owned())
        .collect();
    let scopes = external.scopes.as_ref().map(|s| ScopeClaim {
        claim: s.claim.clone(),
        prefix: s.prefix.clone(),
    });
    let keys = if external.discovery_url.is_some() {
        KeySource::Discovered {
            jwks: discovered
                .get(&external.issuer)
                .cloned()
                .unwrap_or_default(),
            algorithms,
            allow_jwt_typ: external.allow_jwt_typ,
            scopes,
        }
    } else {
        // The schema asks for exactly one of jwksUri and discoveryUrl; with neither, the empty
        // URL fails the sidecar's checks and the last good config stays.
        KeySource::Remote {
            jwks_uri: external.jwks_uri.clone().unwrap_or_default(),
            algorithms,
            refresh_interval_secs: external.refresh_interval.get().map_or(300, |d| d.as_secs()),
            allow_jwt_typ: external.allow_jwt_typ,
            ca_bundle_pem: external.ca_bundle.clone(),
            scopes,
        }
    };
    TrustedIssuer {
        issuer: external.issuer.clone(),
        keys,
        audiences: external.audiences.clone(),
    }
}

/// Leaves audiences another namespace owns out of `config`: out of the policy's list and each
/// issuer's own. An issuer left with no audience to check is not trusted at all (an empty
/// list would mean the policy's for one, and be refused as a mistake for the policy, leaving
/// the last good config with audiences the spec no longer asks for in force), and the
/// revocation feed goes with its issuer.
pub fn drop_audiences(config: &mut SidecarConfig, conflicts: &[(String, String)]) {
    let foreign = |a: &String| conflicts.iter().any(|(claimed, _)| claimed == a);
    config.verify.audiences.retain(|a| !foreign(a));
    let policy_audiences = !config.verify.audiences.is_empty();
    config.verify.issuers.retain_mut(|trusted| {
        if trusted.audiences.is_empty() {
            return policy_audiences;
        }
        trusted.audiences.retain(|a| !foreign(a));
        !trusted.audiences.is_empty()
    });
    let feed_issuer = config.revocation.feed.as_ref().map(|f| f.issuer.clone());
    if let Some(issuer) = feed_issuer
        && !config.verify.issuers.iter().any(|t| t.issuer == issuer)
    {
        config.revocation.feed = None;
    }
}

/// Puts the cluster's service-account issuer into an issuer's config (and the config's
/// version up to one that reads it).
pub fn set_service_account_issuer(
    config: &mut SidecarConfig,
    service_accounts: Option<scopegate_core::config::ServiceAccountIssuer>,
) {
    if let Some(issuer) = config.issuer.as_mut() {
        issuer.service_account_issuer = service_accounts;
    }
    config.api_version = config.required_api_version().to_owned();
}

/// Puts the app's outbound calls into the config (and the config's version up to one that
/// reads them).
pub fn set_egress(
    config: &mut SidecarConfig,
    egress: Option<scopegate_core::config::EgressConfig>,
) {
    config.egress = egress;
    config.api_version = config.required_api_version().to_owned();
}

/// Sets the config's browser sessions (`None`: off, or not workable yet), and the API version
/// they need.
pub fn set_sessions(
    config: &mut SidecarConfig,
    sessions: Option<scopegate_core::session::SessionConfig>,
) {
    config.sessions = sessions;
    config.api_version = config.required_api_version().to_owned();
}

/// The issuer's part of the config, for an `issuer.self` policy.
fn issuer_config(policy: &AuthPolicy) -> Option<IssuerConfig> {
    policy.spec.issuer.self_.as_ref().map(|own| {
        let secs = |d: &api::PositiveDuration| d.get().map_or(0, |d| d.as_secs());
        IssuerConfig {
            url: own.url.clone(),
            signing_keys_path: format!(
                "{}/{}",
                names::SIGNING_KEYS_MOUNT_DIR,
                scopegate_core::keys::SIGNING_KEYS_FILE
            ),
            clients_path: format!(
                "{}/{}",
                names::CLIENTS_MOUNT_DIR,
                scopegate_core::clients::CLIENTS_FILE
            ),
            access_token_ttl_secs: secs(&own.tokens.access_token_ttl),
            refresh_token_ttl_secs: secs(&own.tokens.refresh_token_ttl),
            refresh_token_idle_secs: own.tokens.refresh_token_idle.as_ref().map(secs),
            code_ttl_secs: secs(&own.tokens.code_ttl),
            scopes: own.scopes.clone(),
            login_url: own.login_url.clone(),
            mint: own.mint.as_ref().map(|m| config::MintConfig {
                subjects: m.subjects.clone(),
                scopes: m.scopes.clone(),
                audiences: m.audiences.clone(),
                max_ttl_secs: secs(&m.max_ttl),
            }),
            mint_socket_path: format!("{}/mint.sock", names::MINT_SOCKET_DIR),
            store: match (&own.store.kind, &own.store.redis) {
                (api::StoreKind::Redis, Some(redis)) => config::StoreConfig::Redis {
                    address: redis.address.clone(),
                    tls: redis.tls,
                    credentials_dir: redis
                        .credentials_secret
                        .as_ref()
                        .map(|_| names::REDIS_CREDENTIALS_MOUNT_DIR.to_owned()),
                },
                _ => config::StoreConfig::Memory,
            },
            public_url: (!public_url_ignored(own))
                .then(|| own.public_url.clone())
                .flatten(),
            upstreams: upstreams(own),
            identity: identity(own),
            feed_subject_key: feed_subject_key(policy),
            service_account_issuer: None,
        }
    })
}

/// The listener's certificate: an issuer's serving certificate, or `listen.tlsSecret`.
fn listener_tls(spec: &AuthPolicySpec) -> Option<TlsFiles> {
    if spec.issuer.self_.is_some() {
        Some(TlsFiles {
            cert_path: format!("{}/tls.crt", names::TLS_MOUNT_DIR),
            key_path: format!("{}/tls.key", names::TLS_MOUNT_DIR),
        })
    } else {
        spec.listen.tls_secret.as_ref().map(|_| TlsFiles {
            cert_path: format!("{LISTEN_TLS_MOUNT_DIR}/tls.crt"),
            key_path: format!("{LISTEN_TLS_MOUNT_DIR}/tls.key"),
        })
    }
}

/// How the sidecar talks to the app.
fn upstream_config(spec: &AuthPolicySpec) -> UpstreamConfig {
    UpstreamConfig {
        port: port(spec.upstream.port),
        protocol: match spec.upstream.protocol {
            api::UpstreamProtocol::HTTP1 => config::UpstreamProtocol::Http1,
            api::UpstreamProtocol::H2C => config::UpstreamProtocol::H2c,
        },
        response_timeout_secs: spec
            .upstream
            .response_timeout
            .get()
            .map_or(30, |d| d.as_secs()),
    }
}

/// The response headers and the identity headers passed to the app.
fn headers(spec: &AuthPolicySpec) -> HeadersConfig {
    HeadersConfig {
        security_headers: spec.headers.security_headers,
        hsts: match spec.headers.hsts {
            api::Hsts::Auto => config::Hsts::Auto,
            api::Hsts::Always => config::Hsts::Always,
            api::Hsts::Never => config::Hsts::Never,
        },
        no_store_paths: spec.headers.no_store_paths.clone(),
        subject_header: spec.headers.identity.subject.to_ascii_lowercase(),
        scopes_header: spec.headers.identity.scopes.to_ascii_lowercase(),
        client_id_header: spec.headers.identity.client_id.to_ascii_lowercase(),
        claims: spec.headers.claims.clone(),
    }
}

fn port(value: i32) -> u16 {
    // The schema bounds ports to 1..=65535.
    u16::try_from(value).unwrap_or_default()
}

fn method_names(methods: &[api::HttpMethod]) -> Vec<String> {
    methods.iter().map(|m| format!("{m:?}")).collect()
}

/// Scopes the rules require that `declared` (the issuer's scope vocabulary) lacks, sorted: a
/// rule asking for one of them can never be met by a token of that issuer.
pub fn undeclared_scopes(
    spec: &AuthPolicySpec,
    declared: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut unknown: Vec<String> = spec
        .rules
        .iter()
        .flat_map(|r| r.require.iter().chain(r.any_of.iter().flatten()))
        .filter(|scope| !declared.contains_key(*scope))
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

fn route_rule(rule: &api::Rule) -> RouteRule {
    let action = if rule.public {
        RuleAction::Public
    } else if !rule.require.is_empty() {
        RuleAction::RequireAll {
            scopes: rule.require.clone(),
        }
    } else if !rule.any_of.is_empty() {
        RuleAction::RequireAny {
            scope_sets: rule.any_of.clone(),
        }
    } else {
        RuleAction::Authenticated
    };
    RouteRule {
        name: rule.name.clone(),
        methods: method_names(&rule.methods),
        paths: rule.paths.clone(),
        action,
        enforcement: rule.enforcement.map(enforcement),
        when: rule.when.clone(),
    }
}

fn enforcement(value: api::Enforcement) -> config::Enforcement {
    match value {
        api::Enforcement::Enforce => config::Enforcement::Enforce,
        api::Enforcement::DryRun => config::Enforcement::DryRun,
    }
}

fn rate_limit(limit: &api::RateLimit) -> RateLimitConfig {
    RateLimitConfig {
        name: limit.name.clone(),
        methods: method_names(&limit.methods),
        paths: limit.paths.clone(),
        key: match limit.key {
            api::RateLimitKey::ClientAddress => config::RateLimitKey::ClientAddress,
            api::RateLimitKey::Subject => config::RateLimitKey::Subject,
        },
        requests: u32::try_from(limit.requests).unwrap_or(1),
        period_secs: limit.period.get().map_or(60, |d| d.as_secs()),
    }
}

/// The path of an absolute URL without query or fragment, without a trailing slash.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/')
        .map_or("", |i| &rest[i..])
        .trim_end_matches('/')
}

/// Whether `publicUrl` is set but unusable: its path differs from `url`'s.
pub fn public_url_ignored(own: &api::SelfIssuer) -> bool {
    own.public_url
        .as_deref()
        .is_some_and(|public| url_path(public) != url_path(&own.url))
}

/// The browser-facing base of an issuer: `publicUrl` (when its path is `url`'s), else
/// `url`, without a trailing slash.
pub fn public_url(own: &api::SelfIssuer) -> String {
    let base = match own.public_url.as_deref() {
        Some(public) if !public_url_ignored(own) => public,
        _ => &own.url,
    };
    base.trim_end_matches('/').to_owned()
}

/// Whether `pem` holds at least one certificate usable as a trust anchor and nothing that
/// fails to parse (what the sidecar will require of it).
pub fn ca_bundle_valid(pem: &str) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Ok(certs) = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let (added, ignored) = rustls::RootCertStore::empty().add_parsable_certificates(certs);
    added > 0 && ignored == 0
}

/// The upstreams as the sidecar sees them: the client secret by the path of its file in the
/// mounted `<policy>-upstreams` Secret, and the callback URL the admin registers. An upstream
/// whose `caBundle` does not parse is left out (status says why), so that one bad bundle
/// never makes the whole sidecar config unusable.
pub fn upstreams(own: &api::SelfIssuer) -> Vec<scopegate_core::upstream::UpstreamIdp> {
    use scopegate_core::upstream as up;
    let base = public_url(own);
    own.upstreams
        .iter()
        .filter(|u| u.ca_bundle.as_deref().is_none_or(ca_bundle_valid))
        .filter_map(|u| {
            let kind = match (&u.oidc, &u.github) {
                (Some(oidc), None) => up::UpstreamKind::Oidc(Box::new(up::OidcUpstream {
                    issuer: oidc.issuer.trim_end_matches('/').to_owned(),
                    issuer_aliases: oidc.issuer_aliases.clone(),
                    scopes: oidc.scopes.clone(),
                    algorithms: oidc
                        .algorithms
                        .iter()
                        .map(|a| crate::pki::keygen::alg_name(*a).to_owned())
                        .collect(),
                    userinfo: match oidc.userinfo {
                        api::UserinfoMode::Never => up::UserinfoMode::Never,
                        api::UserinfoMode::IfMissing => up::UserinfoMode::IfMissing,
                        api::UserinfoMode::Always => up::UserinfoMode::Always,
                    },
                    token_endpoint_auth_method: match oidc.token_endpoint_auth_method {
                        api::UpstreamAuthMethod::ClientSecretBasic => {
                            up::UpstreamAuthMethod::ClientSecretBasic
                        }
                        api::UpstreamAuthMethod::ClientSecretPost => {
                            up::UpstreamAuthMethod::ClientSecretPost
                        }
                    },
                    hosted_domains: oidc.hosted_domains.clone(),
                    groups_claim: oidc.groups_claim.clone().unwrap_or_else(|| "groups".into()),
                    claims: claim_names(oidc.claims.as_ref()),
                    trust_unverified_email: match oidc.trust_unverified_email {
                        api::TrustUnverifiedEmail::Never => up::TrustUnverifiedEmail::Never,
                        api::TrustUnverifiedEmail::WhenMissing => {
                            up::TrustUnverifiedEmail::WhenMissing
                        }
                    },
                })),
                (None, Some(github)) => up::UpstreamKind::Github(up::GithubUpstream {
                    host_name: github.host_name.clone().unwrap_or_default(),
                    orgs: github
                        .orgs
                        .iter()
                        .map(|o| up::GithubOrg {
                            name: o.name.clone(),
                            teams: o.teams.clone(),
                        })
                        .collect(),
                }),
                // The schema makes this impossible; an object that skipped it renders nothing.
                _ => return None,
            };
            let allow = u.allow.clone().unwrap_or_default();
            Some(up::UpstreamIdp {
                name: u.name.clone(),
                display_name: u.display_name.clone().unwrap_or_else(|| u.name.clone()),
                client_id: u.client_id.clone(),
                client_secret_path: format!("{}/{}", up::SECRETS_DIR, up::secret_key(&u.name)),
                callback_url: up::callback_url(&base, &u.name),
                ca_bundle_pem: u.ca_bundle.clone(),
                kind,
                allow: up::AllowRules {
                    email_domains: allow.email_domains,
                    groups: allow.groups,
                },
                authoritative_email_domains: u.authoritative_email_domains.clone(),
            })
        })
        .collect()
}

/// The claim names of an OIDC upstream: the given ones over the defaults.
fn claim_names(given: Option<&api::ClaimNames>) -> scopegate_core::upstream::ClaimNames {
    let defaults = scopegate_core::upstream::ClaimNames::default();
    let Some(given) = given else {
        return defaults;
    };
    let pick = |value: &Option<String>, default: String| value.clone().unwrap_or(default);
    scopegate_core::upstream::ClaimNames {
        subject: pick(&given.subject, defaults.subject),
        email: pick(&given.email, defaults.email),
        email_verified: pick(&given.email_verified, defaults.email_verified),
        name: pick(&given.name, defaults.name),
        username: pick(&given.username, defaults.username),
    }
}

/// What an upstream login leads to, as the sidecar sees it.
pub fn identity(own: &api::SelfIssuer) -> scopegate_core::upstream::IdentityConfig {
    use scopegate_core::upstream as up;
    let identity = own.identity.clone().unwrap_or_default();
    up::IdentityConfig {
        mode: match identity.mode {
            api::IdentityMode::Delegate => up::IdentityMode::Delegate,
            api::IdentityMode::Direct => up::IdentityMode::Direct,
        },
        direct_scopes: identity.direct_scopes,
        scopes_from_groups: identity
            .scopes_from_groups
            .into_iter()
            .map(|m| up::GroupScopes {
                upstream: m.upstream,
                group: m.group,
                scopes: m.scopes,
            })
            .collect(),
        max_upstream_age_secs: identity
            .max_upstream_age
            .as_ref()
            .and_then(|d| d.get().ok())
            .map(|d| d.as_secs()),
    }
}

/// The upstreams' callback URLs for status, each ready when its client secret was found.
pub fn upstream_status(own: &api::SelfIssuer, missing: &[String]) -> Vec<api::UpstreamStatus> {
    let base = public_url(own);
    own.upstreams
        .iter()
        .map(|u| {
            let reason = if public_url_ignored(own) {
                Some("PublicUrlIgnored: publicUrl has another path than url; url is used".into())
            } else if u.ca_bundle.as_deref().is_some_and(|pem| !ca_bundle_valid(pem)) {
                Some(
                    "CaBundleInvalid: caBundle holds a PEM block that is not a usable certificate; the upstream is not offered"
                        .into(),
                )
            } else if missing.contains(&u.name) {
                Some(format!(
                    "SecretMissing: key {} of Secret {} not found",
                    u.client_secret_ref.key, u.client_secret_ref.name
                ))
            } else {
                None
            };
            api::UpstreamStatus {
                name: u.name.clone(),
                callback_url: scopegate_core::upstream::callback_url(&base, &u.name),
                ready: reason.is_none(),
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::to_json;

    fn policy(yaml: &str) -> AuthPolicy {
        let mut p: AuthPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        p.metadata.uid = Some("uid-1".into());
        p.metadata.generation = Some(4);
        p
    }

    const ORDERS: &str = r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  issuer: {policyRef: {name: auth}}
  audiences: ["https://orders"]
  upstream: {port: 8080}
  rules:
    - {paths: ["/healthz"], public: true}
    - {methods: [GET], paths: ["/orders/**"], require: [read:orders]}
    - {paths: ["/admin/**"], anyOf: [[admin], [root, ops]]}
    - {paths: ["/me"]}
  rateLimits:
    - {name: login, methods: [POST], paths: ["/login"], requests: 5, period: 15m}
  trustedProxies: {hops: 2}
"#;

    #[test]
    fn renders_rules_limits_and_trust_for_a_policy_ref() {
        let trust = Trust::Referenced {
            issuer: "https://auth.shop.svc".into(),
            jwks: Jwks::default(),
            feed_url: "https://auth.shop.svc:443/oauth2/revocations".into(),
            feed_subject_key: Some("the-issuers-key".into()),
        };
        let cutoffs = BTreeMap::from([("shop.billing".to_owned(), 1_700_000_000)]);
        let config = sidecar_config(
            &policy(ORDERS),
            &trust,
            &DiscoveredKeys::new(),
            cutoffs.clone(),
            "PEM",
        )
        .unwrap();
        assert_eq!(config.policy.generation, 4);
        assert_eq!(config.listen.port, names::DEFAULT_LISTEN_PORT);
        assert_eq!(config.upstream.port, 8080);
        assert_eq!(config.verify.audiences, ["https://orders"]);
        assert_eq!(config.verify.issuers[0].issuer, "https://auth.shop.svc");
        let actions: Vec<_> = config.rules.iter().map(|r| r.action.clone()).collect();
        assert_eq!(
            actions,
            [
                RuleAction::Public,
                RuleAction::RequireAll {
                    scopes: vec!["read:orders".into()]
                },
                RuleAction::RequireAny {
                    scope_sets: vec![vec!["admin".into()], vec!["root".into(), "ops".into()]]
                },
                RuleAction::Authenticated,
            ]
        );
        assert_eq!(config.rules[1].methods, ["GET"]);
        assert_eq!(config.enforcement, config::Enforcement::Enforce);
        assert!(config.rules.iter().all(|r| r.enforcement.is_none()));
        let mut dry = policy(ORDERS);
        dry.spec.enforcement = api::Enforcement::DryRun;
        dry.spec.rules[2].enforcement = Some(api::Enforcement::Enforce);
        let dry =
            sidecar_config(&dry, &trust, &DiscoveredKeys::new(), cutoffs.clone(), "PEM").unwrap();
        assert_eq!(dry.enforcement, config::Enforcement::DryRun);
        assert_eq!(dry.rules[2].enforcement, Some(config::Enforcement::Enforce));
        assert_eq!(config.rate_limits[0].period_secs, 900);
        assert_eq!(config.trusted_proxies, Some(TrustedProxiesConfig::Hops(2)));
        assert_eq!(config.revocation.client_cutoffs, cutoffs);
        assert_eq!(
            config.revocation.feed.as_ref().map(|f| f.url.as_str()),
            Some("https://auth.shop.svc:443/oauth2/revocations")
        );
        assert_eq!(
            config
                .revocation
                .feed
                .as_ref()
                .and_then(|f| f.subject_key.as_deref()),
            Some("the-issuers-key"),
            "a verifier digests subjects under its issuer's key"
        );
        assert!(config.issuer.is_none() && config.listen.tls.is_none());
        // The rendered document parses back through the sidecar's own reader.
        let text = to_json("sidecar config", &config).unwrap();
        assert_eq!(SidecarConfig::from_json(&text).unwrap(), config);
    }

    #[test]
    fn additional_issuers_are_trusted_next_to_the_policys_own_each_with_its_keys() {
        let trust = Trust::Referenced {
            issuer: "https://auth.shop.svc".into(),
            jwks: Jwks::default(),
            feed_url: "https://auth.shop.svc:443/oauth2/revocations".into(),
            feed_subject_key: None,
        };
        let mut p = policy(ORDERS);
        p.spec.additional_issuers = serde_yaml_ng::from_str(
            r#"
- issuer: https://sso.example.com/realms/corp
  jwksUri: https://sso.example.com/realms/corp/protocol/openid-connect/certs
  algorithms: [RS256]
  allowJwtTyp: true
  scopes: {claim: realm_access.roles, prefix: "orders:"}
- issuer: https://login.microsoftonline.com/t/v2.0
  jwksUri: https://login.microsoftonline.com/t/discovery/v2.0/keys
  algorithms: [RS256]
  scopes: {claim: scp}
"#,
        )
        .unwrap();
        let config =
            sidecar_config(&p, &trust, &DiscoveredKeys::new(), BTreeMap::new(), "").unwrap();
        let issuers: Vec<&str> = config
            .verify
            .issuers
            .iter()
            .map(|i| i.issuer.as_str())
            .collect();
        assert_eq!(
            issuers,
            [
                "https://auth.shop.svc",
                "https://sso.example.com/realms/corp",
                "https://login.microsoftonline.com/t/v2.0"
            ]
        );
        let KeySource::Remote {
            jwks_uri,
            allow_jwt_typ,
            scopes,
            ..
        } = &config.verify.issuers[1].keys
        else {
            panic!("an outside issuer's keys are fetched");
        };
        assert!(jwks_uri.ends_with("/openid-connect/certs"));
        assert!(*allow_jwt_typ);
        assert_eq!(
            scopes
                .as_ref()
                .map(|s| (s.claim.as_str(), s.prefix.as_deref())),
            Some(("realm_access.roles", Some("orders:")))
        );
        // The feed is the referenced issuer's only: outside issuers have none.
        assert!(config.revocation.feed.is_some());
        // The sidecar accepts the document; the same issuer twice it refuses.
        scopegate_core::check::document(&config).unwrap();
        let mut twice = p.clone();
        twice
            .spec
            .additional_issuers
            .push(twice.spec.additional_issuers[0].clone());
        let twice =
            sidecar_config(&twice, &trust, &DiscoveredKeys::new(), BTreeMap::new(), "").unwrap();
        assert!(scopegate_core::check::document(&twice).is_err());
    }

    #[test]
    fn an_issuers_own_audiences_and_discovered_keys_are_rendered_and_conflicts_drop_them() {
        let trust = Trust::Referenced {
            issuer: "https://auth.shop.svc".into(),
            jwks: Jwks::default(),
            feed_url: "https://auth.shop.svc:443/oauth2/revocations".into(),
            feed_subject_key: None,
        };
        let mut p = policy(ORDERS);
        p.spec.additional_issuers = serde_yaml_ng::from_str(
            r#"
- issuer: https://login.microsoftonline.com/t/v2.0
  discoveryUrl: https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration
  algorithms: [ES256]
  audiences: ["api://orders", "api://shared"]
"#,
        )
        .unwrap();
        let key: scopegate_core::jwk::Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "entra-1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))
        .unwrap();
        let discovered = DiscoveredKeys::from([(
            "https://login.microsoftonline.com/t/v2.0".to_owned(),
            Jwks { keys: vec![key] },
        )]);
        let config = sidecar_config(&p, &trust, &discovered, BTreeMap::new(), "").unwrap();
        let entra = &config.verify.issuers[1];
        assert_eq!(entra.audiences, ["api://orders", "api://shared"]);
        assert_eq!(
            config.api_version,
            scopegate_core::config::CONFIG_API_VERSION_V2,
            "an older sidecar must refuse a document with an issuer's own audiences"
        );
        let KeySource::Discovered { jwks, .. } = &entra.keys else {
            panic!(
                "a discoveryUrl issuer's keys are rendered: {:?}",
                entra.keys
            );
        };
        assert_eq!(jwks.keys[0].kid.as_deref(), Some("entra-1"));
        assert!(config.verify.issuers[0].audiences.is_empty());
        scopegate_core::check::document(&config).unwrap();

        // Another namespace owns api://shared: it goes, api://orders stays.
        let conflict = |a: &str| (a.to_owned(), "another's".to_owned());
        let mut one = config.clone();
        drop_audiences(&mut one, &[conflict("api://shared")]);
        assert_eq!(one.verify.issuers[1].audiences, ["api://orders"]);
        // Both are another's: the issuer is not trusted at all (never the policy's audiences
        // instead); the referenced issuer and its feed stay.
        let mut none = config.clone();
        drop_audiences(
            &mut none,
            &[conflict("api://shared"), conflict("api://orders")],
        );
        let left: Vec<&str> = none
            .verify
            .issuers
            .iter()
            .map(|i| i.issuer.as_str())
            .collect();
        assert_eq!(left, ["https://auth.shop.svc"]);
        assert!(none.revocation.feed.is_some());
        // The policy's own audience is another's: the issuers checking it go with their
        // feed, the one with its own audiences stays.
        let mut policy_gone = config.clone();
        drop_audiences(&mut policy_gone, &[conflict("https://orders")]);
        let left: Vec<&str> = (policy_gone.verify.issuers.iter())
            .map(|i| i.issuer.as_str())
            .collect();
        assert_eq!(left, ["https://login.microsoftonline.com/t/v2.0"]);
        assert!(policy_gone.revocation.feed.is_none());
        scopegate_core::check::document(&policy_gone).unwrap();
    }

    const AUTH_WITH_UPSTREAMS: &str = r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth, namespace: shop}
spec:
  selector: {matchLabels: {app: auth}}
  issuer:
    self:
      url: https://auth.shop.svc.cluster.local
      publicUrl: https://login.shop.example/
      service: {name: auth, port: 443}
      scopes: {read:items: Read items}
      loginUrl: https://shop.example/login
      upstreams:
        - name: google
          displayName: Google
          clientId: 1234.apps.googleusercontent.com
          clientSecretRef: {name: google-oauth, key: client_secret}
          oidc:
            issuer: https://accounts.google.com/
            issuerAliases: [accounts.google.com]
            algorithms: [RS256]
            hostedDomains: [shop.example]
            claims: {subject: oid}
            trustUnverifiedEmail: WhenMissing
          allow: {emailDomains: [shop.example]}
        - name: github
          clientId: Iv23li
          clientSecretRef: {name: github-oauth, key: secret}
          github: {orgs: [{name: acme, teams: [sre]}]}
      identity:
        mode: Direct
        directScopes: [read:items]
        scopesFromGroups: [{upstream: github, group: "acme:sre", scopes: [read:items]}]
        maxUpstreamAge: 24h
  upstream: {port: 8080}
"#;

    #[test]
    fn renders_upstreams_with_secret_paths_and_callback_urls() {
        let p = policy(AUTH_WITH_UPSTREAMS);
        let own = p.spec.issuer.self_.as_ref().unwrap();
        let rendered = upstreams(own);
        assert_eq!(rendered.len(), 2);
        let google = &rendered[0];
        assert_eq!(
            google.callback_url,
            "https://login.shop.example/oauth2/upstream/google/callback"
        );
        assert_eq!(
            google.client_secret_path,
            "/etc/scopegate/upstreams/google.client_secret"
        );
        let scopegate_core::upstream::UpstreamKind::Oidc(oidc) = &google.kind else {
            panic!("oidc expected");
        };
        assert_eq!(oidc.issuer, "https://accounts.google.com");
        assert_eq!(oidc.scopes, ["openid", "email", "profile"]);
        assert_eq!(oidc.algorithms, ["RS256"]);
        assert_eq!(oidc.claims.subject, "oid");
        assert_eq!(
            oidc.claims.email, "email",
            "unset parts keep their defaults"
        );
        assert_eq!(
            oidc.trust_unverified_email,
            scopegate_core::upstream::TrustUnverifiedEmail::WhenMissing
        );
        assert_eq!(google.allow.email_domains, ["shop.example"]);
        assert_eq!(rendered[1].display_name, "github");
        let id = identity(own);
        assert_eq!(id.mode, scopegate_core::upstream::IdentityMode::Direct);
        assert_eq!(id.max_upstream_age_secs, Some(86_400));
        assert_eq!(id.scopes_from_groups[0].group, "acme:sre");
        assert_eq!(id.scopes_from_groups[0].upstream, "github");
        // No secret value anywhere in the rendered document.
        let text = serde_json::to_string(&rendered).unwrap();
        assert!(!text.contains("google-oauth") && !text.contains("\"clientSecret\""));
        let status = upstream_status(own, &["github".to_owned()]);
        assert!(status[0].ready && status[0].reason.is_none());
        assert!(!status[1].ready);
        assert!(
            status[1]
                .reason
                .as_deref()
                .unwrap()
                .starts_with("SecretMissing")
        );
        assert_eq!(status[0].callback_url, google.callback_url);
        // A publicUrl on another path than url is ignored, and status says so.
        let mut other = own.clone();
        other.public_url = Some("https://login.shop.example/auth".into());
        assert_eq!(public_url(&other), "https://auth.shop.svc.cluster.local");
        assert!(
            upstream_status(&other, &[])[0]
                .reason
                .as_deref()
                .unwrap()
                .starts_with("PublicUrlIgnored")
        );
        assert!(!public_url_ignored(own));
    }

    #[test]
    fn a_usable_ca_bundle_reaches_its_upstream_and_a_broken_one_leaves_it_out() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        assert!(ca_bundle_valid(&ca));
        let truncated = ca.replace(&ca[40..80], "");
        let key_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        // A good certificate next to garbage is refused too: the sidecar would refuse it.
        let mixed = format!("{ca}{key_only}");
        for broken in [truncated.as_str(), key_only, mixed.as_str(), "", "hello"] {
            assert!(!ca_bundle_valid(broken), "{broken:?}");
        }
        let p = policy(AUTH_WITH_UPSTREAMS);
        let mut own = p.spec.issuer.self_.clone().unwrap();
        own.upstreams[0].ca_bundle = Some(ca.clone());
        own.upstreams[1].ca_bundle = Some(mixed);
        let rendered = upstreams(&own);
        assert_eq!(rendered.len(), 1, "the github upstream is left out");
        assert_eq!(rendered[0].name, "google");
        assert_eq!(rendered[0].ca_bundle_pem.as_deref(), Some(ca.as_str()));
        let status = upstream_status(&own, &[]);
        assert!(status[0].ready);
        assert!(!status[1].ready);
        assert!(
            status[1]
                .reason
                .as_deref()
                .unwrap()
                .starts_with("CaBundleInvalid")
        );
    }

    #[test]
    fn unresolved_policy_ref_trusts_nothing() {
        let config = sidecar_config(
            &policy(ORDERS),
            &Trust::Unresolved,
            &DiscoveredKeys::new(),
            BTreeMap::new(),
            "",
        )
        .unwrap();
        assert!(config.verify.issuers.is_empty());
        assert!(config.ca_bundle_pem.is_none());
    }

    #[test]
    fn self_issuer_serves_tls_runs_the_issuer_role_and_defaults_audience_to_its_url() {
        let issuer = policy(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth, namespace: shop}
spec:
  selector: {}
  issuer:
    self:
      url: https://auth.shop.svc
      service: {name: auth, port: 443}
      signing: {algorithm: HS256}
      tokens: {accessTokenTtl: 10m, refreshTokenTtl: 24h, codeTtl: 1m, leeway: 15s}
      scopes: {read: Read}
  upstream: {port: 8080}
"#,
        );
        let config = sidecar_config(
            &issuer,
            &Trust::Own {
                jwks: Jwks::default(),
                hs256: true,
            },
            &DiscoveredKeys::new(),
            BTreeMap::new(),
            "PEM",
        )
        .unwrap();
        assert_eq!(config.verify.audiences, ["https://auth.shop.svc"]);
        assert_eq!(config.verify.leeway_secs, 15);
        assert_eq!(config.verify.issuers[0].keys, KeySource::OwnSigningKeys);
        let role = config.issuer.unwrap();
        assert_eq!(role.access_token_ttl_secs, 600);
        assert_eq!(
            role.signing_keys_path,
            "/etc/scopegate/signing-keys/keys.json"
        );
        assert_eq!(
            config.listen.tls.unwrap().cert_path,
            "/etc/scopegate/tls/tls.crt"
        );
        assert_eq!(
            config.revocation.feed.unwrap().url,
            "https://auth.shop.svc:443/oauth2/revocations"
        );
    }

    #[test]
    fn refresh_idle_is_rendered_and_leeway_capped() {
        let issuer = policy(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth, namespace: shop}
spec:
  selector: {}
  issuer:
    self:
      url: https://auth.shop.svc
      service: {name: auth, port: 443}
      tokens: {refreshTokenTtl: 24h, refreshTokenIdle: 6h, leeway: 5m}
  upstream: {port: 8080}
"#,
        );
        let trust = Trust::Own {
            jwks: Jwks::default(),
            hs256: false,
        };
        let config = sidecar_config(
            &issuer,
            &trust,
            &DiscoveredKeys::new(),
            BTreeMap::new(),
            "PEM",
        )
        .unwrap();
        assert_eq!(
            config.verify.leeway_secs, 60,
            "a leeway stored before the cap"
        );
        let key = scopegate_core::feed::subject_key_of(&issuer.uid().unwrap());
        assert_eq!(
            config
                .revocation
                .feed
                .as_ref()
                .unwrap()
                .subject_key
                .as_deref(),
            Some(key.as_str()),
            "the issuer's own verifier digests subjects as its feed does"
        );
        let role = config.issuer.unwrap();
        assert_eq!(role.refresh_token_idle_secs, Some(6 * 3600));
        assert_eq!(role.feed_subject_key.as_deref(), Some(key.as_str()));
    }
}
