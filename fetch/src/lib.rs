//! The HTTPS client of scopegate's own requests (the sidecar's fetches of an outside issuer's
//! JWKS, the revocation feed and upstream identity providers; the egress proxy's connections
//! to its targets and token endpoint; the operator's reads of an outside issuer's discovery
//! document and JWKS; the CLI's documents): rustls with aws-lc-rs, the system roots plus a CA
//! bundle (or either alone, [`Roots`]), through the environment's proxy when one is set.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
pub use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// An HTTPS-only client.
pub type HttpsClient = Client<HttpsConnector<ProxyConnector>, Empty<Bytes>>;

/// TCP towards a destination: directly, or through an HTTP CONNECT tunnel when the proxy
/// rules (`HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY`, read as curl reads them) say so. TLS runs
/// inside the tunnel, end to end with the destination: the proxy sees a host name only.
#[derive(Clone)]
pub struct ProxyConnector {
    direct: HttpConnector,
    rules: Arc<Matcher>,
}

impl ProxyConnector {
    /// A connector following `rules`.
    pub fn new(rules: Matcher) -> Self {
        let mut direct = HttpConnector::new();
        // The scheme is https: TLS is layered on top by the caller.
        direct.enforce_http(false);
        ProxyConnector {
            direct,
            rules: Arc::new(rules),
        }
    }

    /// Gives up a TCP connect (to the destination or the proxy) after `timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.direct.set_connect_timeout(Some(timeout));
        self
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        match self.rules.intercept(&destination) {
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.direct.clone());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { Ok(tunnel.call(destination).await?) })
            }
            None => {
                let mut direct = self.direct.clone();
                Box::pin(async move { Ok(direct.call(destination).await?) })
            }
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA bundle holds no usable certificate.
    #[error("the CA bundle holds no valid PEM certificate")]
    CaBundle,
    /// rustls refused the setup.
    #[error("TLS client setup failed")]
    Rustls(#[source] rustls::Error),
}

/// Why a GET failed. Messages name the failure class only.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL does not parse.
    #[error("bad URL")]
    Url,
    /// Connection, TLS or protocol failure.
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// A status other than 200.
    #[error("status {0}")]
    Status(u16),
    /// The body broke off or exceeded the size limit.
    #[error("body unreadable or too large")]
    Body,
}

impl FetchError {
    /// A bounded label for metrics and readiness detail.
    pub fn category(&self) -> &'static str {
        match self {
            FetchError::Url => "bad_url",
            FetchError::Request(_) => "connect",
            FetchError::Timeout => "timeout",
            FetchError::Status(_) => "status",
            FetchError::Body => "body",
        }
    }
}

/// Builds the client: system roots plus `ca_bundle_pem`.
pub fn client(ca_bundle_pem: Option<&str>) -> Result<HttpsClient, TlsSetupError> {
    Ok(Client::builder(TokioExecutor::new()).build(connector(ca_bundle_pem)?))
}

/// [`client`] with explicit proxy rules.
pub fn client_with(
    ca_bundle_pem: Option<&str>,
    proxy_rules: Matcher,
) -> Result<HttpsClient, TlsSetupError> {
    Ok(Client::builder(TokioExecutor::new()).build(connector_with(ca_bundle_pem, proxy_rules)?))
}

/// The HTTPS-only connector of [`client`], for clients with other body types; through a
/// proxy when the environment names one (`HTTPS_PROXY`, `NO_PROXY`).
pub fn connector(
    ca_bundle_pem: Option<&str>,
) -> Result<HttpsConnector<ProxyConnector>, TlsSetupError> {
    connector_with(ca_bundle_pem, Matcher::from_env())
}

/// [`connector`] with explicit proxy rules.
pub fn connector_with(
    ca_bundle_pem: Option<&str>,
    proxy_rules: Matcher,
) -> Result<HttpsConnector<ProxyConnector>, TlsSetupError> {
    let roots = ca_bundle_pem.map_or(Roots::System, Roots::SystemAnd);
    connector_for(roots, ConnectorOptions::https_only(proxy_rules))
}

/// The certificates a server must chain to.
#[derive(Clone, Copy, Debug)]
pub enum Roots<'a> {
    /// The system roots.
    System,
    /// The system roots and this PEM CA bundle.
    SystemAnd(&'a str),
    /// This PEM CA bundle alone, never the system roots: for servers that only a private CA
    /// may vouch for (the cluster's own services).
    Only(&'a str),
}

/// How a connector reaches its destinations, besides the roots it trusts.
#[derive(Debug)]
pub struct ConnectorOptions {
    /// The proxy rules to follow.
    pub proxy_rules: Matcher,
    /// Whether `http://` URLs are reached too, without TLS; else only `https://` ones are.
    pub allow_http: bool,
    /// How long a TCP connect may take (`None`: as long as the system lets it).
    pub connect_timeout: Option<Duration>,
}

impl ConnectorOptions {
    /// https only, no connect timeout of its own: the options of [`connector_with`].
    pub fn https_only(proxy_rules: Matcher) -> Self {
        ConnectorOptions {
            proxy_rules,
            allow_http: false,
            connect_timeout: None,
        }
    }
}

/// A connector trusting `roots`, built with `options`. Only HTTP/1.1 is spoken.
pub fn connector_for(
    roots: Roots<'_>,
    options: ConnectorOptions,
) -> Result<HttpsConnector<ProxyConnector>, TlsSetupError> {
    let mut store = rustls::RootCertStore::empty();
    if matches!(roots, Roots::System | Roots::SystemAnd(_)) {
        // Unreadable system certificates are skipped: the CA bundle may be all that is needed.
        let native = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(native.certs);
    }
    if let Roots::SystemAnd(pem) | Roots::Only(pem) = roots {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| TlsSetupError::CaBundle)?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsSetupError::CaBundle);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_root_certificates(store)
        .with_no_client_auth();
    let mut tcp = ProxyConnector::new(options.proxy_rules);
    if let Some(timeout) = options.connect_timeout {
        tcp = tcp.with_connect_timeout(timeout);
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if options.allow_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    Ok(builder.enable_http1().wrap_connector(tcp))
}

/// GETs `url` and reads at most `max_bytes` of a 200 answer within `timeout`.
pub async fn get(
    client: &HttpsClient,
    url: &str,
    timeout: std::time::Duration,
    max_bytes: usize,
) -> Result<Bytes, FetchError> {
    let uri: http::Uri = url.parse().map_err(|_| FetchError::Url)?;
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json, application/jwt")
        .body(Empty::new())
        .map_err(|_| FetchError::Url)?;
    let work = async {
        let response = client.request(request).await.map_err(FetchError::Request)?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|_| FetchError::Body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout)?
}
