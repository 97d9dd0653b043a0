//! One OIDC provider's live state: its discovery document, re-read in the background, and
//! the key set it names, fetched by [`scopegate_verifier::remote_keys`]; and the
//! reconciliation that starts, keeps or stops that work when the configuration changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scopegate_core::config::IssuerConfig;
use scopegate_core::jose::keys::Alg;
use scopegate_core::upstream::{OidcUpstream, UpstreamIdp, UpstreamKind};
use serde::Deserialize;
use tokio::task::JoinHandle;

use scopegate_verifier::metrics::Metrics;
use scopegate_verifier::remote_keys::{self, RemoteKeySet, RemoteSpec};

use super::{BAD_CA_BUNDLE, ProviderClient, ProviderError, id_token, json_request, trust_for};

/// How often discovery is re-read after a success.
const DISCOVERY_REFRESH: Duration = Duration::from_secs(3600);
/// How often the provider's JWKS is refetched (and the least time between two fetches for
/// an unknown kid).
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// First retry after a failed discovery; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The parts of an OpenID provider's discovery document that we use.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    /// Must equal the configured issuer (OIDC Discovery §4.3).
    pub issuer: String,
    /// Where the browser goes.
    pub authorization_endpoint: String,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// The provider's keys.
    pub jwks_uri: String,
    /// Userinfo, if offered.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// Algorithms the provider signs ID tokens with.
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// RFC 9207: the provider always sends `iss` in the authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl Discovery {
    fn check(&self, issuer: &str) -> Result<(), &'static str> {
        if self.issuer != issuer {
            return Err("discovery issuer differs from the configured issuer");
        }
        let https = |u: &str| u.starts_with("https://");
        if !https(&self.authorization_endpoint)
            || !https(&self.token_endpoint)
            || !https(&self.jwks_uri)
            || self.userinfo_endpoint.as_deref().is_some_and(|u| !https(u))
        {
            return Err("discovery names an endpoint that is not https");
        }
        Ok(())
    }
}

/// What identifies a provider's background work; an equal spec on reload keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ProviderSpec {
    issuer: String,
    algorithms: Vec<Alg>,
    ca_bundle_pem: Option<String>,
}

/// The live state of one OIDC provider.
pub struct Provider {
    /// The configured issuer.
    pub issuer: String,
    /// The algorithms allowed (configuration ∩ discovery when it names any).
    allowed: Vec<Alg>,
    /// The HTTPS client towards the provider.
    pub client: ProviderClient,
    discovery: ArcSwapOption<Discovery>,
    keys: ArcSwapOption<RemoteKeySet>,
    last_error: Mutex<Option<&'static str>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Provider {
    /// The discovery document in force, once read.
    pub fn discovery(&self) -> Option<Arc<Discovery>> {
        self.discovery.load_full()
    }

    /// The provider's key set, once discovery named it.
    pub fn keys(&self) -> Option<Arc<RemoteKeySet>> {
        self.keys.load_full()
    }

    /// Algorithms an ID token of this provider may use.
    pub fn algorithms(&self) -> Vec<Alg> {
        let Some(discovery) = self.discovery() else {
            return self.allowed.clone();
        };
        if discovery.id_token_signing_alg_values_supported.is_empty() {
            return self.allowed.clone();
        }
        self.allowed
            .iter()
            .copied()
            .filter(|a| {
                discovery
                    .id_token_signing_alg_values_supported
                    .iter()
                    .any(|d| d == a.name())
            })
            .collect()
    }

    fn set_error(&self, error: Option<&'static str>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// One line of `/readyz` detail.
    pub(super) fn health_line(&self, name: &str, now: i64) -> String {
        let error = *self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let Some(discovery) = self.discovery() else {
            return format!(
                "upstream {name}: UNAVAILABLE, discovery not read yet (last error: {})",
                error.unwrap_or("none")
            );
        };
        let keys = match self.keys() {
            Some(set) => {
                let health = set.health(now);
                match (health.loaded, health.last_error) {
                    (false, e) => format!(
                        "UNAVAILABLE, no JWKS fetched yet (last error: {})",
                        e.unwrap_or("none")
                    ),
                    (true, None) => format!(
                        "{} keys, fetched {}s ago",
                        set.keys().len(),
                        health.age_secs
                    ),
                    (true, Some(e)) => format!(
                        "{} keys, last fetch failed ({e}), keeping the last good set",
                        set.keys().len()
                    ),
                }
            }
            None => "no JWKS yet".to_owned(),
        };
        let discovery_note = error
            .map(|e| format!(", last discovery failed ({e})"))
            .unwrap_or_default();
        format!(
            "upstream {name}: oidc {}, {keys}{discovery_note}",
            discovery.issuer
        )
    }
}

/// Reads discovery until it succeeds, then again every [`DISCOVERY_REFRESH`]; starts and
/// replaces the JWKS fetcher when `jwks_uri` changes.
async fn run_discovery(provider: Arc<Provider>, spec: ProviderSpec, metrics: Arc<Metrics>) {
    let url = format!(
        "{}/.well-known/openid-configuration",
        provider.issuer.trim_end_matches('/')
    );
    let mut retry = FIRST_RETRY;
    loop {
        let fetched = match http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
        {
            Ok(request) => json_request(&provider.client, request)
                .await
                .map_err(|e| match e {
                    ProviderError::Timeout => "timeout",
                    ProviderError::Status => "status",
                    ProviderError::Body => "not a discovery document",
                    ProviderError::Connect => "connect",
                })
                .and_then(|map| {
                    serde_json::from_value::<Discovery>(serde_json::Value::Object(map))
                        .map_err(|_| "not a discovery document")
                })
                .and_then(|d| d.check(&provider.issuer).map(|()| d)),
            Err(_) => Err("bad URL"),
        };
        let wait = match fetched {
            Ok(discovery) => {
                let same_jwks = provider
                    .discovery()
                    .is_some_and(|d| d.jwks_uri == discovery.jwks_uri);
                if !same_jwks {
                    start_jwks(&provider, &spec, &discovery.jwks_uri, &metrics);
                }
                provider.discovery.store(Some(Arc::new(discovery)));
                provider.set_error(None);
                retry = FIRST_RETRY;
                DISCOVERY_REFRESH
            }
            Err(error) => {
                tracing::warn!(issuer = %provider.issuer, error, "upstream discovery failed");
                provider.set_error(Some(error));
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn start_jwks(
    provider: &Arc<Provider>,
    spec: &ProviderSpec,
    jwks_uri: &str,
    metrics: &Arc<Metrics>,
) {
    let set = RemoteKeySet::new(RemoteSpec {
        jwks_uri: jwks_uri.to_owned(),
        algorithms: spec.algorithms.clone(),
        refresh: JWKS_REFRESH,
        ca_bundle_pem: spec.ca_bundle_pem.clone(),
    });
    let client = match scopegate_fetch::client(spec.ca_bundle_pem.as_deref()) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the upstream JWKS client");
            return;
        }
    };
    let task = tokio::spawn(remote_keys::run(
        set.clone(),
        client,
        metrics.clone(),
        || {},
    ));
    let mut tasks = provider.tasks.lock().unwrap_or_else(|p| p.into_inner());
    // Keep the discovery task (first); replace an older JWKS fetcher.
    if tasks.len() > 1 {
        for old in tasks.drain(1..) {
            old.abort();
        }
    }
    tasks.push(task);
    provider.keys.store(Some(set));
}

/// What identifies the background work of an OIDC upstream: its issuer, the configured
/// algorithms (never HS256; the defaults when none is left) and its trust.
fn provider_spec(upstream: &UpstreamIdp, oidc: &OidcUpstream) -> ProviderSpec {
    let mut algorithms: Vec<Alg> = oidc
        .algorithms
        .iter()
        .filter_map(|a| Alg::from_name(a))
        .filter(|a| *a != Alg::Hs256)
        .collect();
    if algorithms.is_empty() {
        algorithms = id_token::DEFAULT_ALGS.to_vec();
    }
    ProviderSpec {
        issuer: oidc.issuer.clone(),
        algorithms,
        ca_bundle_pem: trust_for(upstream),
    }
}

/// Keeps each OIDC provider whose spec is unchanged, starts the missing ones (discovery in
/// the background) and drops the rest, which stops their work; an upstream whose CA bundle
/// does not parse goes to `broken`.
pub(super) fn reconcile(
    providers: &mut HashMap<String, (ProviderSpec, Arc<Provider>)>,
    issuer: &IssuerConfig,
    metrics: &Arc<Metrics>,
    broken: &mut HashMap<String, &'static str>,
) {
    let mut wanted = HashMap::new();
    for upstream in &issuer.upstreams {
        if let UpstreamKind::Oidc(oidc) = &upstream.kind {
            wanted.insert(upstream.name.clone(), provider_spec(upstream, oidc));
        }
    }
    providers.retain(|name, (spec, _)| wanted.get(name) == Some(spec));
    for (name, spec) in wanted {
        if providers.contains_key(&name) {
            continue;
        }
        let connector = match scopegate_fetch::connector(spec.ca_bundle_pem.as_deref()) {
            Ok(connector) => connector,
            Err(err) => {
                tracing::error!(upstream = %name, error = %err, "cannot build the upstream client");
                broken.insert(name, BAD_CA_BUNDLE);
                continue;
            }
        };
        let provider = Arc::new(Provider {
            issuer: spec.issuer.clone(),
            allowed: spec.algorithms.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            discovery: ArcSwapOption::empty(),
            keys: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(run_discovery(
            provider.clone(),
            spec.clone(),
            metrics.clone(),
        ));
        provider
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        providers.insert(name, (spec, provider));
    }
}
