//! The egress section compiled into what requests need: each target's host and port, its
//! URI parts and Host header built once, its tokens and counters; the token endpoint; the
//! cache of tokens exchanged on behalf of callers;
//! and the two upstream clients of the TLS trust split (the operator's CA alone for
//! in-cluster targets, the system roots alone for the others). Built at start and on each
//! reload that changes the section, then swapped in whole.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scopegate_core::config::{EgressConfig, SidecarConfig};
use scopegate_core::egress::{self, EgressError, TargetUrl, same_host};
use scopegate_fetch::{ConnectorOptions, Matcher, ProxyConnector, Roots, TlsSetupError};
use scopegate_sidecar_kit::body::ProxyBody;

use crate::exchange::{ExchangeCache, MAX_EXCHANGED};
use crate::issuer::{TokenEndpoint, TokenKey};
use crate::metrics::{EgressMetrics, TargetCounters};
use crate::route::{self, Unroutable};
use crate::token::TokenSlot;

/// How long a TCP connect to a target or the token endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the targets, streaming the app's request bodies.
pub type UpstreamClient = Client<HttpsConnector<ProxyConnector>, ProxyBody>;

/// Why an egress section cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Refused by the check the operator runs too.
    #[error(transparent)]
    Config(#[from] EgressError),
    /// A TLS client could not be built.
    #[error("egress: TLS client setup failed")]
    Tls(#[source] TlsSetupError),
}

/// One declared target, compiled.
#[derive(Debug)]
pub struct Target {
    /// Its name, for answers, logs and metrics.
    pub name: Arc<str>,
    /// Its host and port.
    pub url: TargetUrl,
    /// Reached with the operator's CA only (else with the system roots only).
    pub in_cluster: bool,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Where calls go: the host, and the port unless it is the scheme's default.
    pub authority: Authority,
    /// The Host header sent.
    pub host_header: HeaderValue,
    /// Where its tokens come from.
    pub tokens: Tokens,
    /// Its request counters.
    pub counters: Arc<TargetCounters>,
}

/// Where a target's tokens come from.
#[derive(Debug)]
pub enum Tokens {
    /// The pod's own token (`client_credentials`), shared by the targets of one key.
    Own(Arc<TokenSlot>),
    /// The caller's token exchanged for one of this key, per caller, in
    /// [`Compiled::exchanges`].
    OnBehalfOfCaller(Arc<TokenKey>),
}

impl Target {
    /// The slot of the pod's own tokens, unless the target acts on behalf of the caller.
    pub fn own_slot(&self) -> Option<&Arc<TokenSlot>> {
        match &self.tokens {
            Tokens::Own(slot) => Some(slot),
            Tokens::OnBehalfOfCaller(_) => None,
        }
    }
}

/// An egress section in force.
pub struct Compiled {
    /// What it was compiled from: a reload with the same is no change.
    source: (EgressConfig, Option<String>),
    targets: Vec<Target>,
    /// Where tokens are asked for.
    pub endpoint: TokenEndpoint,
    /// The tokens exchanged on behalf of callers.
    pub exchanges: Arc<ExchangeCache>,
    /// The client of in-cluster targets.
    pub in_cluster: UpstreamClient,
    /// The client of the other targets.
    pub outside: UpstreamClient,
}

impl Compiled {
    /// Compiles the egress section of `config` (`None` when it has none). Targets whose token
    /// key the `previous` section had, with the same token endpoint, client and assertion
    /// file, keep its token (their callers' exchanged tokens, for targets on behalf of the
    /// caller).
    pub fn new(
        config: &SidecarConfig,
        previous: Option<&Compiled>,
        metrics: &EgressMetrics,
    ) -> Result<Option<Compiled>, SetupError> {
        egress::check(config)?;
        let Some(section) = &config.egress else {
            return Ok(None);
        };
        let ca = config
            .ca_bundle_pem
            .as_deref()
            .ok_or(EgressError::NoCaBundle)?;
        let same_client = previous.is_some_and(|p| {
            let old = &p.source.0;
            old.token_endpoint == section.token_endpoint
                && old.token_audience == section.token_audience
                && old.client_id == section.client_id
                && old.assertion_path == section.assertion_path
        });
        let kept = previous.filter(|_| same_client);
        let mut targets = Vec::with_capacity(section.targets.len());
        let mut exchanged_keys: Vec<Arc<TokenKey>> = Vec::new();
        for declared in &section.targets {
            let name: Arc<str> = Arc::from(declared.name.as_str());
            let invalid = || EgressError::TargetUrl(declared.name.clone());
            let url = TargetUrl::parse(&declared.url).ok_or_else(invalid)?;
            let named: Authority = url.authority().parse().map_err(|_| invalid())?;
            let host_header = HeaderValue::from_str(named.as_str()).map_err(|_| invalid())?;
            // Connected to by its full name: no DNS search domain makes it another's.
            let authority: Authority = (declared.address.parse()).map_err(|_| invalid())?;
            let key = TokenKey::new(&declared.audience, &declared.scopes);
            let tokens = if declared.on_behalf_of_caller {
                let known = exchanged_keys.iter().find(|k| ***k == key).cloned();
                Tokens::OnBehalfOfCaller(known.unwrap_or_else(|| {
                    let key = Arc::new(key);
                    exchanged_keys.push(key.clone());
                    key
                }))
            } else {
                let own = |t: &Target| t.own_slot().filter(|slot| *slot.key() == key).cloned();
                let slot = (kept.and_then(|p| p.targets.iter().find_map(own)))
                    .or_else(|| targets.iter().find_map(own));
                Tokens::Own(slot.unwrap_or_else(|| Arc::new(TokenSlot::new(key))))
            };
            targets.push(Target {
                counters: metrics.target(&name),
                name,
                scheme: if url.https {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                },
                in_cluster: declared.in_cluster,
                url,
                authority,
                host_header,
                tokens,
            });
        }
        let exchanges = match kept {
            Some(previous) => {
                previous.exchanges.retain_keys(&exchanged_keys);
                previous.exchanges.clone()
            }
            None => Arc::new(ExchangeCache::new(MAX_EXCHANGED)),
        };
        let endpoint = TokenEndpoint {
            uri: section
                .token_endpoint
                .parse()
                .map_err(|_| EgressError::TokenEndpoint)?,
            client_id: section.client_id.clone(),
            assertion_path: section.assertion_path.clone().into(),
            token_audience: section.token_audience.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector(Roots::Only(ca), false)?),
        };
        Ok(Some(Compiled {
            source: (section.clone(), config.ca_bundle_pem.clone()),
            targets,
            endpoint,
            exchanges,
            in_cluster: Client::builder(TokioExecutor::new())
                .build(connector(Roots::Only(ca), true)?),
            outside: Client::builder(TokioExecutor::new()).build(connector(Roots::System, false)?),
        }))
    }

    /// Whether `config` holds the section this was compiled from (with the same CA bundle).
    pub fn compiled_from(&self, config: &SidecarConfig) -> bool {
        config.egress.as_ref() == Some(&self.source.0) && config.ca_bundle_pem == self.source.1
    }

    /// The declared targets.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The target a request is for: its host must be a target's host exactly (any case, one
    /// trailing dot ignored), and a port, if it names one, that target's port.
    pub fn route<B>(&self, req: &http::Request<B>) -> Result<&Target, Unroutable> {
        let named = route::requested(req.method(), req.uri(), req.headers())?;
        self.targets
            .iter()
            .find(|t| same_host(&t.url.host, named.host))
            .filter(|t| named.port.is_none_or(|port| port == t.url.port))
            .ok_or_else(|| Unroutable::Undeclared(named.to_string()))
    }
}

/// A connector trusting `roots`, with the connect timeout, following the environment's
/// proxy rules; plain `http://` only when `allow_http`.
fn connector(
    roots: Roots<'_>,
    allow_http: bool,
) -> Result<HttpsConnector<ProxyConnector>, SetupError> {
    scopegate_fetch::connector_for(
        roots,
        ConnectorOptions {
            proxy_rules: Matcher::from_env(),
            allow_http,
            connect_timeout: Some(CONNECT_TIMEOUT),
        },
    )
    .map_err(SetupError::Tls)
}
