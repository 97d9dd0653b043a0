//! The HTTPS client the sidecar uses for its own requests (an external issuer's JWKS, the
//! revocation feed): rustls with aws-lc-rs, the system roots plus the config's CA bundle.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// An HTTPS-only client.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA bundle holds no usable certificate.
    #[error("caBundlePem holds no valid PEM certificate")]
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

/// The HTTPS-only connector of [`client`], for clients with other body types.
pub fn connector(
    ca_bundle_pem: Option<&str>,
) -> Result<HttpsConnector<HttpConnector>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the CA bundle may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_bundle_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| TlsSetupError::CaBundle)?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsSetupError::CaBundle);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build())
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
