//! The optional TLS listener: rustls with aws-lc-rs, certificate and key from mounted PEM
//! files, ALPN for HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use scopegate_core::config::TlsFiles;

/// Why the TLS listener could not be set up. Messages name files, never their content.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no certificate or the key file no private key.
    #[error("{0} holds no usable PEM certificate or private key")]
    Pem(String),
    /// rustls refused the pair.
    #[error("certificate and key do not make a TLS server config")]
    Rustls(#[source] rustls::Error),
}

/// Builds the server config from the mounted files.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerTlsError> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| ServerTlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&files.cert_path)?;
    let key_pem = read(&files.key_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|c: &Vec<_>| !c.is_empty())
        .ok_or_else(|| ServerTlsError::Pem(files.cert_path.clone()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| ServerTlsError::Pem(files.key_path.clone()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServerTlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(ServerTlsError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
