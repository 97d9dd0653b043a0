//! Shared pieces of the sidecar's integration tests: keys and token minting, a small
//! upstream app, a raw HTTP/1.1 client, temp dirs, and waiting on conditions.
// Helpers of test code: unwrap is the right failure here, and not every test uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

pub mod hostile_table;
pub mod issuer;
pub mod node_idp;
pub mod redis;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use aws_lc_rs::{hmac, rsa};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use scopegate_core::jose::b64;
use scopegate_core::jwk::Jwk;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Issuer used by most tests.
pub const ISSUER: &str = "https://auth.shop.svc.cluster.local";
/// Audience used by most tests.
pub const AUDIENCE: &str = "orders";

pub fn now() -> i64 {
    scopegate_sidecar_kit::unix_now()
}

/// A signing key of any supported kind.
#[allow(clippy::large_enum_variant)]
pub enum SigningKey {
    Es256(EcdsaKeyPair),
    Es256Der(EcdsaKeyPair),
    Rsa(rsa::KeyPair, &'static dyn signature::RsaEncoding),
    Ed(Ed25519KeyPair),
    Hmac(hmac::Key),
}

impl SigningKey {
    pub fn es256() -> (SigningKey, Vec<u8>) {
        let pkcs8 = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .unwrap()
            .to_pkcs8v1()
            .unwrap();
        let bytes = pkcs8.as_ref().to_vec();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &bytes).unwrap();
        (SigningKey::Es256(key), bytes)
    }

    /// The same P-256 key, signing DER (ASN.1) signatures instead of R‖S.
    pub fn es256_der(pkcs8: &[u8]) -> SigningKey {
        SigningKey::Es256Der(
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8).unwrap(),
        )
    }

    pub fn rs256() -> SigningKey {
        SigningKey::Rsa(
            rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap(),
            &signature::RSA_PKCS1_SHA256,
        )
    }

    /// The same RSA key signing with another padding (for alg-confusion tests).
    pub fn same_rsa_key(&self, encoding: &'static dyn signature::RsaEncoding) -> SigningKey {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let SigningKey::Rsa(key, _) = self else {
            panic!("not an RSA key");
        };
        let der: Pkcs8V1Der = key.as_der().unwrap();
        SigningKey::Rsa(rsa::KeyPair::from_pkcs8(der.as_ref()).unwrap(), encoding)
    }

    pub fn ed25519() -> SigningKey {
        SigningKey::Ed(Ed25519KeyPair::generate().unwrap())
    }

    pub fn hs256(secret: &[u8]) -> SigningKey {
        SigningKey::Hmac(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            SigningKey::Es256(k) | SigningKey::Es256Der(k) => {
                k.sign(&rng, message).unwrap().as_ref().to_vec()
            }
            SigningKey::Rsa(k, enc) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(*enc, &rng, message, &mut sig).unwrap();
                sig
            }
            SigningKey::Ed(k) => k.sign(message).as_ref().to_vec(),
            SigningKey::Hmac(k) => hmac::sign(k, message).as_ref().to_vec(),
        }
    }

    /// The public JWK with this kid and alg.
    pub fn jwk(&self, kid: &str, alg: Option<&str>) -> Jwk {
        let mut jwk = match self {
            SigningKey::Es256(k) | SigningKey::Es256Der(k) => {
                let point = k.public_key().as_ref();
                Jwk {
                    kty: "EC".into(),
                    crv: Some("P-256".into()),
                    x: Some(b64::encode(&point[1..33])),
                    y: Some(b64::encode(&point[33..65])),
                    ..Jwk::default()
                }
            }
            SigningKey::Rsa(k, _) => {
                let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                Jwk {
                    kty: "RSA".into(),
                    n: Some(b64::encode(&components.n)),
                    e: Some(b64::encode(&components.e)),
                    ..Jwk::default()
                }
            }
            SigningKey::Ed(k) => Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(b64::encode(k.public_key().as_ref())),
                ..Jwk::default()
            },
            SigningKey::Hmac(_) => panic!("HMAC keys have no public JWK"),
        };
        jwk.kid = Some(kid.into());
        jwk.alg = alg.map(Into::into);
        jwk.use_ = Some("sig".into());
        jwk
    }

    /// The raw public key bytes (for the HS256-with-public-key confusion attack).
    pub fn public_bytes(&self) -> Vec<u8> {
        match self {
            SigningKey::Es256(k) | SigningKey::Es256Der(k) => k.public_key().as_ref().to_vec(),
            SigningKey::Ed(k) => k.public_key().as_ref().to_vec(),
            SigningKey::Rsa(k, _) => k.public_key().as_ref().to_vec(),
            SigningKey::Hmac(_) => Vec::new(),
        }
    }
}

/// `b64(header).b64(payload)` as text.
pub fn signing_input(header: &str, payload: &[u8]) -> String {
    format!(
        "{}.{}",
        b64::encode(header.as_bytes()),
        b64::encode(payload)
    )
}

/// A compact JWS over raw header and payload text.
pub fn mint_raw(key: &SigningKey, header: &str, payload: &[u8]) -> String {
    let input = signing_input(header, payload);
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64::encode(&sig))
}

/// A token with a JSON header and claims.
pub fn mint(key: &SigningKey, header: &Value, claims: &Value) -> String {
    mint_raw(key, &header.to_string(), claims.to_string().as_bytes())
}

/// Claims of a valid access token with `scope`.
pub fn claims(scope: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": now + 600, "iat": now - 5,
        "nbf": now - 5, "jti": format!("jti-{}", unique()), "client_id": "web", "scope": scope
    })
}

/// [`claims`] with `extra` claims set over them.
pub fn claims_with(scope: &str, extra: Value) -> Value {
    let mut claims = claims(scope);
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}

pub fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "at+jwt"})
}

pub fn unique() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "scopegate-sidecar-test-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` atomically, the way kubelet swaps a mounted ConfigMap: a new
/// file and a rename over the old one.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", unique()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What the upstream app saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HashMap<String, String>,
}

/// A small app on 127.0.0.1: answers `200` with a JSON echo of the request, records every
/// request, `/slow` waits `slow` before answering, `/status/<n>` answers status n, an
/// upgrade request to `/ws` switches protocols and echoes bytes, and each `x-reply-header:
/// <name>: <value>` of a request becomes a header of its answer.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(slow: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let record = record.clone();
                        async move { Ok::<_, std::convert::Infallible>(app(req, record, slow).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

async fn app(
    mut req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
    slow: Duration,
) -> Response<Full<Bytes>> {
    let seen = Seen {
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    record.lock().unwrap().push(seen.clone());
    let replies: Vec<(String, Vec<u8>)> = req
        .headers()
        .get_all("x-reply-header")
        .iter()
        .filter_map(|v| {
            let at = v.as_bytes().iter().position(|b| *b == b':')?;
            let name = std::str::from_utf8(&v.as_bytes()[..at]).ok()?;
            Some((
                name.trim().to_owned(),
                v.as_bytes()[at + 1..].trim_ascii().to_vec(),
            ))
        })
        .collect();
    let path = req.uri().path().to_owned();
    let version = req.version();
    if path == "/ws" && req.headers().contains_key("upgrade") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if path == "/switch" {
        // An app that switches protocols whether or not it was asked to.
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if path == "/slow" {
        tokio::time::sleep(slow).await;
    }
    let body_bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    let echo = json!({
        "version": format!("{:?}", version),
        "method": seen.method, "path": seen.path_and_query, "headers": seen.headers,
        "body_len": body_bytes.len()
    });
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-frame-options", "SAMEORIGIN")
        .header("keep-alive", "timeout=5");
    for (name, value) in replies {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(echo.to_string())))
        .unwrap()
}

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends raw request bytes (which must ask for `Connection: close`) and reads the answer.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .expect("response within 20s")
        .unwrap();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

/// A GET with extra header lines.
pub async fn get(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> RawResponse {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for (k, v) in extra {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    raw(addr, request.as_bytes()).await
}

/// A GET with a bearer token.
pub async fn get_with_token(addr: SocketAddr, target: &str, token: &str) -> RawResponse {
    get(
        addr,
        target,
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config document with one static issuer, rules for the hostile-request table, and the
/// upstream port.
pub fn config(upstream_port: u16, jwks: Value) -> Value {
    json!({
        "apiVersion": "sidecar.scopegate.dev/v1",
        "policy": {"namespace": "shop", "name": "orders", "generation": 1},
        "listen": {"port": 0},
        "upstream": {"port": upstream_port, "responseTimeoutSecs": 2},
        "verify": {
            "issuers": [{"issuer": ISSUER, "keys": {"type": "static", "jwks": jwks}}],
            "audiences": [AUDIENCE],
            "leewaySecs": 30
        },
        "rules": [
            {"name": "items", "paths": ["/items/**"], "action": {"type": "requireAll", "scopes": ["read:items"]}},
            {"name": "admin", "paths": ["/admin/**"], "action": {"type": "requireAll", "scopes": ["admin"]}},
            {"name": "any", "paths": ["/reports/**"], "action": {"type": "requireAny", "scopeSets": [["reports:read"], ["admin"]]}},
            {"name": "public", "paths": ["/public/**", "/slow", "/ws", "/status/*"], "action": {"type": "public"}},
            {"name": "me", "paths": ["/me"], "action": {"type": "authenticated"}}
        ],
        "defaultAction": "deny",
        "headers": {
            "securityHeaders": true, "hsts": "always", "noStorePaths": ["/items/**"],
            "subjectHeader": "x-auth-subject", "scopesHeader": "x-auth-scopes",
            "clientIdHeader": "x-auth-client-id"
        }
    })
}

/// Starts an in-process sidecar on loopback with `config` written to a temp file.
pub async fn start_sidecar(dir: &TempDir, config: &Value) -> scopegate_sidecar::Running {
    start_sidecar_with(dir, config, Default::default()).await
}

/// [`start_sidecar`] with connection timeouts of its own.
pub async fn start_sidecar_with(
    dir: &TempDir,
    config: &Value,
    connection: scopegate_verifier::state::ConnectionTuning,
) -> scopegate_sidecar::Running {
    let path = dir.join("config.json");
    write_atomic(&path, &config.to_string());
    scopegate_sidecar::start(scopegate_sidecar::Options {
        config_path: path,
        bind_ip: "127.0.0.1".parse().unwrap(),
        port_override: Some(0),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        reload_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(5),
        issuer_tuning: Default::default(),
        app_probes: Default::default(),
        connection,
    })
    .await
    .expect("sidecar starts")
}

/// What a scripted HTTPS server answers: status, content type and body.
pub type Answer = (u16, &'static str, String);

/// The handler of a [`TlsServer`]: path-and-query in, answer out.
pub type Handler = Arc<dyn Fn(String) -> Answer + Send + Sync>;

/// An HTTPS server on 127.0.0.1 with a certificate from a fresh CA, counting requests.
pub struct TlsServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fresh CA and a leaf certificate for 127.0.0.1 and localhost.
pub struct TestCerts {
    pub ca_pem: String,
    pub leaf: rustls_pki_types::CertificateDer<'static>,
    pub leaf_pem: String,
    pub leaf_key: rcgen::KeyPair,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL takes a leaf whose issuer equals its subject for self-signed.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "scopegate test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        TestCerts {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            leaf: leaf.der().clone(),
            leaf_key,
        }
    }

    /// A TLS server side serving the leaf.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.leaf.clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(self.leaf_key.serialize_der().into()),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A TLS client trusting only this CA.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl TlsServer {
    pub async fn start(handler: Handler) -> TlsServer {
        let certs = TestCerts::new();
        let acceptor = certs.acceptor();
        let ca_pem = certs.ca_pem;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let target = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let (status, content_type, body) = handler(target);
                        std::future::ready(Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", content_type)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TlsServer {
            addr,
            ca_pem,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Admin `/readyz` status and text.
pub async fn readyz(admin: SocketAddr) -> (u16, String) {
    let r = get(admin, "/readyz", &[]).await;
    (r.status, String::from_utf8(r.body).unwrap())
}
