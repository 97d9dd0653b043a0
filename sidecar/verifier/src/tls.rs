//! The optional TLS listener: rustls with aws-lc-rs, certificate and key from mounted PEM
//! files, ALPN for HTTP/2 and HTTP/1.1. The mounted Secret is re-read on every reload tick
//! and a changed, valid pair serves the next handshakes (the operator rotates serving
//! certificates); a broken pair keeps the last good one.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
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

/// Serves the current certificate and swaps in a new one when the mounted files change.
#[derive(Debug)]
pub struct CertificateSource {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    fingerprint: Mutex<[u8; 32]>,
    refused: Mutex<Option<String>>,
}

impl ResolvesServerCert for CertificateSource {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertificateSource {
    /// Loads the mounted pair; fails when it is unusable.
    pub fn load(files: &TlsFiles) -> Result<Arc<CertificateSource>, ServerTlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (cert_pem, key_pem) = read_pair(files)?;
        let key = certified_key(files, &cert_pem, &key_pem, &provider)?;
        Ok(Arc::new(CertificateSource {
            files: files.clone(),
            provider,
            current: ArcSwap::from_pointee(key),
            fingerprint: Mutex::new(fingerprint(&cert_pem, &key_pem)),
            refused: Mutex::new(None),
        }))
    }

    /// The rustls server config serving from this source.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, ServerTlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ServerTlsError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Why the newest files were refused, while the last good pair serves.
    pub fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the files; a changed, valid pair serves from now on. Returns whether the
    /// certificate changed.
    pub fn reload_if_changed(&self) -> Result<bool, ServerTlsError> {
        let result = self.reload();
        *self
            .refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = match &result {
            Err(err) => Some(err.to_string()),
            Ok(true) => None,
            Ok(false) => self.refused(),
        };
        result
    }

    fn reload(&self) -> Result<bool, ServerTlsError> {
        let (cert_pem, key_pem) = read_pair(&self.files)?;
        let print = fingerprint(&cert_pem, &key_pem);
        let mut seen = self
            .fingerprint
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *seen == print {
            return Ok(false);
        }
        // Remember the attempt either way, so a broken pair is reported once.
        *seen = print;
        let key = certified_key(&self.files, &cert_pem, &key_pem, &self.provider)?;
        self.current.store(Arc::new(key));
        Ok(true)
    }
}

fn read_pair(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), ServerTlsError> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| ServerTlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(&files.cert_path)?, read(&files.key_path)?))
}

fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(cert_pem);
    ctx.update(&[0]);
    ctx.update(key_pem);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn certified_key(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ServerTlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|c: &Vec<_>| !c.is_empty())
        .ok_or_else(|| ServerTlsError::Pem(files.cert_path.clone()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| ServerTlsError::Pem(files.key_path.clone()))?;
    CertifiedKey::from_der(certs, key, provider).map_err(ServerTlsError::Rustls)
}
