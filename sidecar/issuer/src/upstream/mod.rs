//! Upstream identity providers: the issuer is the provider's OAuth client, and whichever
//! provider the user logged in with, the browser leaves with a code of ours (never the
//! provider's tokens, which are dropped after the login).
//!
//! [`Registry`] is the part that outlives config reloads: per provider, its discovery
//! document and its JWKS (fetched in the background through [`scopegate_verifier::remote_keys`], the
//! fetcher of `external` issuers), fetch health for `/readyz`, and login counters for
//! `/metrics`. [`flow`] answers the browser: the chooser, the start of a leg and the callback.
//! An IdP outage shows in `/readyz` detail and in metrics and never makes the pod unready:
//! `client_credentials` and the other providers keep working.

pub mod flow;
pub mod github;
pub mod id_token;
mod provider;

use provider::ProviderSpec;
pub use provider::{Discovery, JWKS_REFRESH, Provider};

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scopegate_core::config::IssuerConfig;
use scopegate_core::upstream::{OUTCOMES, UpstreamIdp, UpstreamKind};

use scopegate_sidecar_kit::exposition::{self, Encoder};
use scopegate_sidecar_kit::unix_now;
use scopegate_verifier::metrics::Metrics;

/// Largest answer read from a provider.
pub const MAX_BODY: usize = 1 << 20;
/// How long one request to a provider may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Why an upstream whose CA bundle does not parse is unavailable.
const BAD_CA_BUNDLE: &str = "its caBundlePem holds no valid PEM certificate";

/// The HTTPS client used towards providers (bodies are forms or empty).
pub type ProviderClient = Client<HttpsConnector<scopegate_fetch::ProxyConnector>, Full<Bytes>>;

/// Why a request to a provider failed. Messages name the class only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Connection, TLS or protocol failure, or a bad URL.
    #[error("request failed")]
    Connect,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// An unexpected status.
    #[error("unexpected status")]
    Status,
    /// A body too large, or not the JSON expected.
    #[error("unusable answer")]
    Body,
}

impl ProviderError {
    /// The outcome label of a login that failed so.
    pub fn outcome(self) -> &'static str {
        match self {
            ProviderError::Timeout => "timeout",
            _ => "idp_error",
        }
    }
}

/// Sends `request` and reads a JSON object answered with `200`.
pub async fn json_request(
    client: &ProviderClient,
    request: http::Request<Full<Bytes>>,
) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
    let work = async {
        let response = client
            .request(request)
            .await
            .map_err(|_| ProviderError::Connect)?;
        let ok = response.status() == http::StatusCode::OK;
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| ProviderError::Body)?
            .to_bytes();
        if !ok {
            return Err(ProviderError::Status);
        }
        serde_json::from_slice(&body).map_err(|_| ProviderError::Body)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| ProviderError::Timeout)?
}

/// Every provider of the issuer, and login counters.
#[derive(Default)]
pub struct Registry {
    providers: Mutex<HashMap<String, (ProviderSpec, Arc<Provider>)>>,
    logins: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// The client of each GitHub upstream, with the CA bundle it was built for.
    github: Mutex<HashMap<String, (Option<String>, ProviderClient)>>,
    /// Upstreams that could not be started, and why (for `/readyz`).
    broken: Mutex<HashMap<String, &'static str>>,
}

/// What a connection to `upstream` trusts besides the system roots: its own bundle, which no
/// other upstream trusts. Never the operator's CA: that certifies in-cluster Services, and a
/// tenant who got a certificate from it must not be able to pose as a provider.
fn trust_for(upstream: &UpstreamIdp) -> Option<String> {
    upstream.ca_bundle_pem.clone()
}

/// Keeps the client of each GitHub upstream whose trust is unchanged, builds the missing
/// ones and drops the rest; an upstream whose CA bundle does not parse goes to `broken`.
fn reconcile_github(
    github: &mut HashMap<String, (Option<String>, ProviderClient)>,
    issuer: &IssuerConfig,
    broken: &mut HashMap<String, &'static str>,
) {
    let mut wanted = HashMap::new();
    for upstream in &issuer.upstreams {
        if matches!(upstream.kind, UpstreamKind::Github(_)) {
            wanted.insert(upstream.name.clone(), trust_for(upstream));
        }
    }
    github.retain(|name, (held, _)| wanted.get(name) == Some(held));
    for (name, ca) in wanted {
        if github.contains_key(&name) {
            continue;
        }
        match scopegate_fetch::connector(ca.as_deref()) {
            Ok(connector) => {
                let client = Client::builder(TokioExecutor::new()).build(connector);
                github.insert(name, (ca, client));
            }
            Err(err) => {
                tracing::error!(upstream = %name, error = %err, "cannot build the GitHub client");
                broken.insert(name, BAD_CA_BUNDLE);
            }
        }
    }
}

impl Registry {
    /// Starts background work for the upstreams of `issuer` and stops what is no longer
    /// configured. An unchanged upstream keeps its fetched discovery and keys.
    pub fn reconcile(&self, issuer: &IssuerConfig, metrics: &Arc<Metrics>) {
        let mut broken = HashMap::new();
        {
            let mut github = self.github.lock().unwrap_or_else(|p| p.into_inner());
            reconcile_github(&mut github, issuer, &mut broken);
        }
        let mut providers = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        provider::reconcile(&mut providers, issuer, metrics, &mut broken);
        *self.broken.lock().unwrap_or_else(|p| p.into_inner()) = broken;
        drop(providers);
        // Counters of upstreams no longer configured go with them.
        let configured: Vec<&str> = issuer.upstreams.iter().map(|u| u.name.as_str()).collect();
        self.logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(name, _), _| configured.contains(&name.as_str()));
    }

    /// The client of the GitHub upstream `name`.
    pub fn github_client(&self, name: &str) -> Option<ProviderClient> {
        let github = self.github.lock().unwrap_or_else(|p| p.into_inner());
        github.get(name).map(|(_, client)| client.clone())
    }

    fn broken(&self, name: &str) -> Option<&'static str> {
        let broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        broken.get(name).copied()
    }

    /// The live provider of an OIDC upstream.
    pub fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        let providers = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        providers.get(name).map(|(_, p)| p.clone())
    }

    /// Counts a login by outcome (one of [`OUTCOMES`]). Only a configured upstream is
    /// counted: the name comes from the request path, and every other name would be a new
    /// series (and memory) for whoever sends it.
    pub fn count(&self, upstream: &str, outcome: &'static str) {
        debug_assert!(OUTCOMES.contains(&outcome), "{outcome}");
        if !self.is_configured(upstream) {
            return;
        }
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        *logins.entry((upstream.to_owned(), outcome)).or_default() += 1;
    }

    /// Whether `name` is an upstream of the last configuration (started or broken).
    fn is_configured(&self, name: &str) -> bool {
        self.providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
            || self
                .github
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name)
            || self
                .broken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name)
    }

    /// `/readyz` detail lines for the configured upstreams (they never make the pod unready).
    pub fn readiness(&self, issuer: &IssuerConfig, detail: &mut String) {
        let now = unix_now();
        for upstream in &issuer.upstreams {
            if let Some(why) = self.broken(&upstream.name) {
                let _ = writeln!(detail, "upstream {}: UNAVAILABLE, {why}", upstream.name);
                continue;
            }
            let line = match &upstream.kind {
                UpstreamKind::Oidc(_) => match self.provider(&upstream.name) {
                    Some(provider) => provider.health_line(&upstream.name, now),
                    None => format!("upstream {}: UNAVAILABLE, not started", upstream.name),
                },
                UpstreamKind::Github(github) => format!(
                    "upstream {}: github {} (no discovery; health shows in login outcomes)",
                    upstream.name,
                    github::bases(github).0
                ),
            };
            let _ = writeln!(detail, "{line}");
        }
    }

    /// Writes the login counters and provider health to a `/metrics` scrape. The upstream
    /// label is one of at most eight configured names; the outcome label one of [`OUTCOMES`].
    pub fn encode_metrics(
        &self,
        issuer: Option<&IssuerConfig>,
        encoder: &mut Encoder<'_>,
    ) -> fmt::Result {
        let Some(issuer) = issuer.filter(|i| !i.upstreams.is_empty()) else {
            return Ok(());
        };
        let counts = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        let logins: Vec<([(&str, &str); 2], u64)> = counts
            .iter()
            .map(|((upstream, outcome), count)| {
                (
                    [("upstream", upstream.as_str()), ("outcome", *outcome)],
                    *count,
                )
            })
            .collect();
        exposition::counters(
            encoder,
            "scopegate_upstream_logins",
            "Upstream logins by provider and outcome.",
            logins.iter().map(|(labels, n)| (&labels[..], *n)),
        )?;
        drop(logins);
        drop(counts);
        let up: Vec<([(&str, &str); 1], i64)> = issuer
            .upstreams
            .iter()
            .map(|upstream| {
                let up = match upstream.kind {
                    UpstreamKind::Github(_) => self.github_client(&upstream.name).is_some(),
                    UpstreamKind::Oidc(_) => self.provider(&upstream.name).is_some_and(|p| {
                        p.discovery().is_some()
                            && p.keys().is_some_and(|k| k.health(unix_now()).loaded)
                    }),
                };
                ([("upstream", upstream.name.as_str())], i64::from(up))
            })
            .collect();
        exposition::gauges(
            encoder,
            "scopegate_upstream_up",
            "1 when the provider's discovery and keys are loaded.",
            up.iter().map(|(labels, v)| (&labels[..], *v)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_upstreams_are_counted() {
        let registry = Registry::default();
        // A name from a request path that no configuration knows: no series.
        for n in 0..100 {
            registry.count(&format!("probe-{n}"), "state_unknown");
        }
        assert!(registry.logins.lock().unwrap().is_empty());
        registry
            .broken
            .lock()
            .unwrap()
            .insert("corp".to_owned(), BAD_CA_BUNDLE);
        registry.count("corp", "ok");
        registry.count("corp", "ok");
        let logins = registry.logins.lock().unwrap();
        assert_eq!(logins.get(&("corp".to_owned(), "ok")), Some(&2));
        assert_eq!(logins.len(), 1);
    }

    fn issuer(upstreams: serde_json::Value) -> IssuerConfig {
        serde_json::from_value(serde_json::json!({
            "url": "https://auth", "signingKeysPath": "/k", "clientsPath": "/c",
            "accessTokenTtlSecs": 60, "refreshTokenTtlSecs": 60, "codeTtlSecs": 60,
            "upstreams": upstreams
        }))
        .unwrap()
    }

    fn github(name: &str, ca: Option<&str>) -> serde_json::Value {
        serde_json::json!({"name": name, "displayName": name, "clientId": "c",
            "clientSecretPath": "/s", "callbackUrl": "https://auth/cb",
            "caBundlePem": ca, "github": {}})
    }

    #[test]
    fn an_upstreams_ca_is_trusted_for_it_alone_and_a_broken_one_is_reported() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let config = issuer(serde_json::json!([
            github("private", Some(&ca)),
            github("public", None),
            github("broken", Some(broken)),
        ]));
        let [private, public, _] = &config.upstreams[..] else {
            panic!("three upstreams");
        };
        assert_eq!(trust_for(private), Some(ca.clone()));
        assert_eq!(trust_for(public), None, "no bundle: the system roots only");

        let registry = Registry::default();
        registry.reconcile(&config, &Arc::new(Metrics::default()));
        assert!(registry.github_client("private").is_some());
        assert!(registry.github_client("public").is_some());
        assert!(registry.github_client("broken").is_none());
        let mut detail = String::new();
        registry.readiness(&config, &mut detail);
        assert!(
            detail.contains("upstream broken: UNAVAILABLE, its caBundlePem holds no valid PEM"),
            "{detail}"
        );
        assert!(
            !detail.contains("upstream private: UNAVAILABLE"),
            "{detail}"
        );
        // Fixed on the next config: the bundle is taken out, the upstream comes back.
        let fixed = issuer(serde_json::json!([github("broken", None)]));
        registry.reconcile(&fixed, &Arc::new(Metrics::default()));
        assert!(registry.github_client("broken").is_some());
        assert!(registry.github_client("private").is_none(), "dropped");
    }
}
