//! Which servers a connector reaches, by the roots it trusts and the schemes it allows:
//! a private CA alone (never the system roots), the system roots alone (never a private
//! CA), both, and plain `http://` only when asked for. All on loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scopegate_fetch::{ConnectorOptions, Matcher, Roots, TlsSetupError, connector_for};

/// A CA: its PEM and an acceptor serving a certificate it signed for 127.0.0.1.
fn ca() -> (String, tokio_rustls::TlsAcceptor) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A server on 127.0.0.1 answering `hello`, over TLS with `tls`: its URL.
async fn hello(tls: Option<tokio_rustls::TlsAcceptor>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_: hyper::Request<Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello",
                    ))))
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    format!("{scheme}://{addr}/")
}

/// GETs `url` with a connector of `roots` and `allow_http`: whether `hello` came back.
async fn reaches(roots: Roots<'_>, allow_http: bool, url: &str) -> bool {
    let options = ConnectorOptions {
        proxy_rules: Matcher::builder().build(),
        allow_http,
        connect_timeout: Some(Duration::from_secs(5)),
    };
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector_for(roots, options).unwrap());
    let request = http::Request::get(url).body(Empty::new()).unwrap();
    match client.request(request).await {
        Ok(response) => response.into_body().collect().await.unwrap().to_bytes() == "hello",
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_private_ca_alone_trusts_its_own_servers_and_no_one_else() {
    let (private, private_tls) = ca();
    let (_, other_tls) = ca();
    let own = hello(Some(private_tls)).await;
    let other = hello(Some(other_tls)).await;
    assert!(reaches(Roots::Only(&private), false, &own).await);
    assert!(!reaches(Roots::Only(&private), false, &other).await);
}

#[tokio::test]
async fn the_system_roots_alone_never_trust_a_private_ca() {
    let (private, private_tls) = ca();
    let own = hello(Some(private_tls)).await;
    assert!(!reaches(Roots::System, false, &own).await);
    // What every existing caller of `connector_with` trusts: both.
    assert!(reaches(Roots::SystemAnd(&private), false, &own).await);
}

#[tokio::test]
async fn plain_http_only_when_allowed() {
    let (private, _) = ca();
    let plain = hello(None).await;
    assert!(!reaches(Roots::Only(&private), false, &plain).await);
    assert!(reaches(Roots::Only(&private), true, &plain).await);
}

#[test]
fn a_bundle_without_a_certificate_is_refused() {
    for roots in [Roots::Only("not a certificate"), Roots::SystemAnd("")] {
        let options = ConnectorOptions::https_only(Matcher::builder().build());
        assert!(matches!(
            connector_for(roots, options),
            Err(TlsSetupError::CaBundle)
        ));
    }
}
