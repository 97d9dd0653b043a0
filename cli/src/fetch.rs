//! Reading a document from a file or an https URL (a JWKS, an OpenAPI document).

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::Failure;

/// Largest document read over the network.
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// Reads `location`: an `https://` URL (verified against the system roots plus `ca_pem`), or
/// a file path (`-` is standard input).
pub async fn read(location: &str, ca_pem: Option<&str>) -> anyhow::Result<Vec<u8>> {
    if location.starts_with("https://") {
        return get(location, ca_pem).await;
    }
    if location.starts_with("http://") {
        bail!("{location}: only https URLs are fetched (keys over plain HTTP could be anyone's)");
    }
    if location == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        return Ok(buf);
    }
    std::fs::read(location).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            Failure::NotFound(format!("{location}: no such file")).into()
        }
        _ => anyhow::Error::new(err).context(format!("reading {location}")),
    })
}

/// GETs an https URL.
pub async fn get(url: &str, ca_pem: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.context("CA bundle: not a PEM certificate")?)
                .context("CA bundle: unusable certificate")?;
            any = true;
        }
        if !any {
            bail!("CA bundle holds no PEM certificate");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uri: http::Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    let response = tokio::time::timeout(Duration::from_secs(15), client.get(uri))
        .await
        .with_context(|| format!("{url}: no answer in 15 s"))?
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url}: {status}");
    }
    let body = Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|err| anyhow::anyhow!("GET {url}: body: {err}"))?;
    Ok(body.to_bytes().to_vec())
}
