//! The egress proxy of a sidecar run in-process on loopback, as an app uses it: calls sent
//! absolute-form (`HTTP_PROXY`) or origin-form (Host) reach declared targets only, each with
//! a token the sidecar bought with the pod's ServiceAccount token, and beside each happy path
//! the attack it must stop: an undeclared host or port, `CONNECT`, userinfo, a Host header
//! disagreeing with the URI, one target's token sent to another, a certificate from the wrong
//! CA (the operator's CA for outside targets, any other for in-cluster ones), a redirect.
//! Then the token's life: cached, renewed before expiry, asked for once by concurrent misses,
//! and the app's answers when the issuer refuses or is down; the loopback-only bind; reloads;
//! one run against the real issuer role and one of the binary with its own system roots.
//!
//! Targets on behalf of the caller: the caller's token the app forwards is exchanged (RFC
//! 8693) and never sent on; each caller's token gets its own exchanged token; a call without
//! one is refused before the issuer is asked; the issuer's refusal of a caller's token is a
//! 403 that does not spill over to other callers.
//!
//! The token endpoint is a mock in most tests: it counts calls and refuses or fails on
//! demand, which the real issuer cannot be made to do.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::issuer::{ClusterKey, Issuer, ORDERS, PAYMENTS, Spec};
use support::issuer::{admit_service_account_client, billing_client, claims_of, free_port};
use support::*;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The pod's projected ServiceAccount token as the mock issuer expects it (the file ends
/// with a newline, as files do).
/// The issuer the pods' ServiceAccount tokens are for.
const TOKEN_AUDIENCE: &str = "https://auth.shop.svc";

/// A projected ServiceAccount token's shape, for `audience`, told apart by `marker` (the mock
/// issuer checks no signature).
fn projected_for(audience: &str, marker: &str) -> String {
    use scopegate_core::jose::b64::encode;
    let header = encode(br#"{"alg":"RS256","kid":"k"}"#);
    let claims =
        json!({"aud": [audience], "sub": "system:serviceaccount:shop:billing", "jti": marker});
    format!(
        "{header}.{}.{}",
        encode(claims.to_string().as_bytes()),
        encode(b"sig")
    )
}

/// A token for the pods' issuer.
fn projected(marker: &str) -> String {
    projected_for(TOKEN_AUDIENCE, marker)
}

/// The token in the pods' file.
static ASSERTION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| projected("pod"));
/// The audience of the orders target's tokens.
const ORDERS_AUD: &str = "https://orders.shop.svc";
/// The audience of the payments target's tokens.
const PAYMENTS_AUD: &str = "https://payments.shop.svc";

/// A CA issuing serving certificates for the addresses a test names.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let pem = issuer.pem();
        Ca { issuer, pem }
    }

    /// A TLS server side with a certificate of this CA for `host`.
    fn acceptor(&self, host: &str) -> TlsAcceptor {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
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
        TlsAcceptor::from(Arc::new(config))
    }
}

/// What a server saw of one request.
#[derive(Debug, Clone)]
struct Call {
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Call {
    fn values(&self, name: &str) -> Vec<&str> {
        (self.headers.iter())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Handler = Arc<dyn Fn(&Call, usize) -> Response<Full<Bytes>> + Send + Sync>;

/// An HTTP/1.1 server on a loopback address of its own, plain or TLS, recording each
/// request it parsed.
struct Server {
    addr: SocketAddr,
    tls: bool,
    calls: Arc<Mutex<Vec<Call>>>,
    /// How long each answer waits.
    delay: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(ip: &str, tls: Option<TlsAcceptor>, handler: Handler) -> Server {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let (record, wait) = (calls.clone(), delay.clone());
        let secure = tls.is_some();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (record, handler, tls) = (record.clone(), handler.clone(), tls.clone());
                let wait = wait.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (record, handler) = (record.clone(), handler.clone());
                        let wait = *wait.lock().unwrap();
                        async move {
                            tokio::time::sleep(wait).await;
                            let call = Call {
                                target: req.uri().to_string(),
                                headers: (req.headers().iter())
                                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                                    .collect(),
                                body: req.into_body().collect().await.unwrap().to_bytes(),
                            };
                            let n = {
                                let mut calls = record.lock().unwrap();
                                calls.push(call.clone());
                                calls.len()
                            };
                            Ok::<_, Infallible>(handler(&call, n))
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
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
        Server {
            addr,
            tls: secure,
            calls,
            delay,
            task,
        }
    }

    /// A target app: `/redirect` answers 302 to `/landed`, anything else 200.
    async fn app(ip: &str, tls: Option<TlsAcceptor>) -> Server {
        Server::start(
            ip,
            tls,
            Arc::new(|call: &Call, _| {
                let mut response = Response::builder();
                if call.target == "/redirect" {
                    response = response.status(302).header("location", "/landed");
                }
                response
                    .header("x-served-by", "app")
                    .header("keep-alive", "timeout=5")
                    .body(Full::new(Bytes::from_static(b"hello from the target")))
                    .unwrap()
            }),
        )
        .await
    }

    /// `host:port`.
    fn authority(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn hits(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn last(&self) -> Call {
        self.calls().pop().expect("a request reached the server")
    }
}

/// What the mock token endpoint does with the next request.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Grants `tok-<n>` (the n-th request) for `expires_in` seconds.
    Grant { expires_in: u64 },
    /// Answers an OAuth error.
    Refuse { status: u16, error: &'static str },
    /// Answers this status with no token.
    Fail(u16),
}

/// A form body, decoded.
fn decode_form(body: &[u8]) -> HashMap<String, String> {
    let text = std::str::from_utf8(body).unwrap();
    text.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (
                k.to_owned(),
                scopegate_issuer::form::form_decode(v).unwrap(),
            )
        })
        .collect()
}

/// Caller tokens the mock issuer refuses to exchange (400 `invalid_request`, as the issuer
/// answers for an expired or revoked subject token) start with this.
const REFUSED_SUBJECT: &str = "revoked-";

/// A token endpoint on 127.0.0.1 serving a certificate of the operator's CA.
struct MockIssuer {
    server: Server,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl MockIssuer {
    async fn start(ca: &Ca) -> MockIssuer {
        let behaviour = Arc::new(Mutex::new(Behaviour::Grant { expires_in: 600 }));
        let now = behaviour.clone();
        let handler: Handler = Arc::new(move |call: &Call, n: usize| {
            let form = decode_form(&call.body);
            let subject = form.get("subject_token").map(String::as_str);
            let (status, body) = match *now.lock().unwrap() {
                _ if subject.is_some_and(|s| s.starts_with(REFUSED_SUBJECT)) => (
                    400,
                    json!({"error": "invalid_request", "error_description": "the subject token is revoked"}),
                ),
                Behaviour::Grant { expires_in } => (
                    200,
                    json!({"access_token": format!("tok-{n}"), "token_type": "Bearer",
                           "expires_in": expires_in, "scope": "x"}),
                ),
                Behaviour::Refuse { status, error } => (
                    status,
                    json!({"error": error, "error_description": "no such thing"}),
                ),
                Behaviour::Fail(status) => (status, json!({"error": "temporarily_unavailable"})),
            };
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap()
        });
        let server = Server::start("127.0.0.1", Some(ca.acceptor("127.0.0.1")), handler).await;
        MockIssuer { server, behaviour }
    }

    fn endpoint(&self) -> String {
        format!("{}/oauth2/token", self.server.url())
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn count(&self) -> usize {
        self.server.hits()
    }

    /// The form of the n-th token request (1-based: the request that granted `tok-<n>`).
    fn form(&self, n: usize) -> HashMap<String, String> {
        decode_form(&self.server.calls()[n - 1].body)
    }

    /// The form of the request that granted `Bearer tok-<n>`.
    fn form_of(&self, authorization: &str) -> HashMap<String, String> {
        let n = authorization.strip_prefix("Bearer tok-").unwrap();
        self.form(n.parse().unwrap())
    }
}

/// One declared target.
fn target(name: &str, url: &str, in_cluster: bool, audience: &str, scopes: &[&str]) -> Value {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    json!({"name": name, "url": url, "address": authority, "inCluster": in_cluster,
           "audience": audience, "scopes": scopes})
}

/// `declared`, on behalf of the caller.
fn on_behalf(mut declared: Value) -> Value {
    declared["onBehalfOfCaller"] = json!(true);
    declared
}

/// A pod whose sidecar declares egress.
struct Pod {
    dir: TempDir,
    config: Value,
    sidecar: scopegate_sidecar::Running,
    egress: SocketAddr,
    assertion: PathBuf,
}

impl Pod {
    /// The sidecar config: a verifier with nothing to verify, the operator's CA, and egress to
    /// `targets` through `endpoint`.
    fn config(dir: &TempDir, endpoint: &str, ca: &str, targets: Value) -> Value {
        let mut config = support::config(9, json!({"keys": []}));
        config["apiVersion"] = json!("sidecar.scopegate.dev/v2");
        config["caBundlePem"] = json!(ca);
        config["egress"] = json!({
            "port": 0,
            "tokenEndpoint": endpoint,
            "clientId": "shop.billing",
            "tokenAudience": TOKEN_AUDIENCE,
            "assertionPath": dir.join("issuer-token"),
            "targets": targets,
        });
        config
    }

    /// Starts a pod calling `targets`, with the assertion file in place.
    async fn start(issuer: &MockIssuer, ca: &Ca, targets: Value) -> Pod {
        let dir = TempDir::new();
        std::fs::write(dir.join("issuer-token"), format!("{}\n", *ASSERTION)).unwrap();
        let config = Pod::config(&dir, &issuer.endpoint(), &ca.pem, targets);
        Pod::start_with(dir, config).await
    }

    async fn start_with(dir: TempDir, config: Value) -> Pod {
        let sidecar = start_sidecar(&dir, &config).await;
        let egress = sidecar.egress_addr().expect("the egress port is bound");
        Pod {
            assertion: dir.join("issuer-token"),
            dir,
            config,
            sidecar,
            egress,
        }
    }

    /// Sends a request head (its lines after the request line end with CRLF) and reads the
    /// answer.
    async fn call(&self, head: &str) -> RawResponse {
        raw(
            self.egress,
            format!("{head}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
    }

    /// An absolute-form GET of `path` at `server`, as an app with HTTP_PROXY sends it.
    async fn get(&self, server: &Server, path: &str) -> RawResponse {
        let at = server.authority();
        self.call(&format!("GET http://{at}{path} HTTP/1.1\r\nHost: {at}\r\n"))
            .await
    }

    /// An absolute-form GET of `path` at `server` carrying `Authorization: Bearer <token>`,
    /// as an app forwarding its caller's token sends it.
    async fn get_as(&self, token: &str, server: &Server, path: &str) -> RawResponse {
        let at = server.authority();
        self.call(&format!(
            "GET http://{at}{path} HTTP/1.1\r\nHost: {at}\r\nAuthorization: Bearer {token}\r\n"
        ))
        .await
    }

    fn reconfigure(&mut self, edit: impl FnOnce(&mut Value)) {
        edit(&mut self.config);
        write_atomic(&self.dir.join("config.json"), &self.config.to_string());
    }
}

fn body(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_call_reaches_its_target_with_the_sidecars_token() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let at = orders.authority();
    // The Host header's port is another: the URI wins, and the target gets its own.
    let request = format!(
        "POST http://{at}/orders?id=7 HTTP/1.1\r\nHost: 127.0.0.2:1\r\n\
         Authorization: Bearer the-apps-own\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\n\
         Proxy-Connection: keep-alive\r\nX-Request-Id: r-1\r\nContent-Length: 5\r\n\
         Connection: close\r\n\r\nhello"
    );
    let r = raw(pod.egress, request.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(body(&r), "hello from the target");
    assert_eq!(r.header("x-served-by"), Some("app"));
    assert_eq!(r.header("keep-alive"), None, "hop-by-hop headers stop here");
    let seen = orders.last();
    assert_eq!(seen.target, "/orders?id=7");
    assert_eq!(&seen.body[..], b"hello");
    assert_eq!(seen.values("authorization"), ["Bearer tok-1"]);
    assert_eq!(seen.values("host"), [at.as_str()]);
    assert_eq!(seen.values("x-request-id"), ["r-1"]);
    for gone in ["proxy-authorization", "proxy-connection"] {
        assert!(seen.values(gone).is_empty(), "{gone} was forwarded");
    }
    let form = issuer.form(1);
    for (name, value) in [
        ("grant_type", "client_credentials"),
        ("client_id", "shop.billing"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", ASSERTION.as_str()),
        ("resource", ORDERS_AUD),
        ("scope", "read:orders"),
    ] {
        assert_eq!(form.get(name).map(String::as_str), Some(value), "{name}");
    }

    // The token is cached: the next call costs the issuer nothing.
    let again = pod.get(&orders, "/orders").await;
    assert_eq!(again.status, 200);
    assert_eq!(orders.last().values("authorization"), ["Bearer tok-1"]);
    assert_eq!(issuer.count(), 1);

    let metrics = get(pod.sidecar.admin_addr(), "/metrics", &[]).await;
    let text = body(&metrics);
    for line in [
        r#"scopegate_egress_requests_total{target="orders",outcome="forwarded"} 2"#,
        r#"scopegate_egress_token_fetches_total{result="ok"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_form_call_names_its_target_in_the_host_header() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let at = orders.authority();
    let r = pod
        .call(&format!(
            "GET /orders HTTP/1.1\r\nHost: {at}\r\nAuthorization: Basic YXBwOnNlY3JldA==\r\n"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let seen = orders.last();
    assert_eq!(seen.target, "/orders");
    assert_eq!(seen.values("authorization"), ["Bearer tok-1"]);
    assert_eq!(seen.values("host"), [at.as_str()]);
    // A request naming no port means the target's.
    let r = pod
        .call("GET /no-port HTTP/1.1\r\nHost: 127.0.0.2\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(orders.last().target, "/no-port");
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_host_is_refused_and_no_token_is_asked_for() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let port = orders.addr.port();
    for (head, host) in [
        (
            "GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n".to_owned(),
            "evil.example".to_owned(),
        ),
        (
            "GET /x HTTP/1.1\r\nHost: evil.example\r\n".to_owned(),
            "evil.example".to_owned(),
        ),
        (
            format!("GET http://127.0.0.9:{port}/x HTTP/1.1\r\n"),
            format!("127.0.0.9:{port}"),
        ),
        (
            format!("GET http://127.0.0.2.evil.example:{port}/x HTTP/1.1\r\n"),
            format!("127.0.0.2.evil.example:{port}"),
        ),
    ] {
        let r = pod.call(&head).await;
        assert_eq!(r.status, 403, "{head}: {}", body(&r));
        let answer = r.json();
        assert_eq!(answer["error"], "not_an_egress_target");
        assert_eq!(answer["host"], host);
        assert_eq!(
            answer["message"],
            format!("{host} is not a declared egress target")
        );
    }
    assert_eq!(
        issuer.count(),
        0,
        "no token is asked for an undeclared host"
    );
    assert_eq!(orders.hits(), 0);
    let text = body(&get(pod.sidecar.admin_addr(), "/metrics", &[]).await);
    let line = r#"scopegate_egress_requests_total{target="(none)",outcome="refused_target"} 4"#;
    assert!(text.contains(line), "{text}");
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_other_than_the_targets_is_refused() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    // Something else listens on the same address: the app must not reach it through us.
    let other = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let at = other.authority();
    for head in [
        format!("GET http://{at}/ HTTP/1.1\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {at}\r\n"),
    ] {
        let r = pod.call(&head).await;
        assert_eq!(r.status, 403, "{head}: {}", body(&r));
        assert_eq!(r.json()["host"], at);
    }
    assert_eq!((issuer.count(), orders.hits(), other.hits()), (0, 0, 0));
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_naming_another_host_than_the_uri_is_refused() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let at = orders.authority();
    let r = pod
        .call(&format!(
            "GET http://{at}/x HTTP/1.1\r\nHost: evil.example\r\n"
        ))
        .await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert_eq!(r.json()["error"], "bad_request");
    assert_eq!(
        r.json()["message"],
        "the Host header names another host than the request URI"
    );
    // Two Host headers are two answers to one question: refused too.
    let r = pod
        .call(&format!(
            "GET /x HTTP/1.1\r\nHost: {at}\r\nHost: evil.example\r\n"
        ))
        .await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert_eq!((issuer.count(), orders.hits()), (0, 0));
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_with_a_pointer_to_plain_http() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let at = orders.authority();
    let r = pod
        .call(&format!("CONNECT {at} HTTP/1.1\r\nHost: {at}\r\n"))
        .await;
    assert_eq!(r.status, 405, "{}", body(&r));
    assert_eq!(r.json()["error"], "connect_not_supported");
    assert!(
        r.json()["message"].as_str().unwrap().contains("http://"),
        "{}",
        body(&r)
    );
    assert!(r.header("allow").unwrap().contains("GET"));
    assert_eq!((issuer.count(), orders.hits()), (0, 0));
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_is_refused() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let at = orders.authority();
    for head in [
        format!("GET http://user:pw@{at}/x HTTP/1.1\r\n"),
        format!("GET http://evil.example@{at}/x HTTP/1.1\r\n"),
        format!("GET /x HTTP/1.1\r\nHost: user@{at}\r\n"),
    ] {
        let r = pod.call(&head).await;
        assert_eq!(r.status, 400, "{head}: {}", body(&r));
    }
    assert_eq!((issuer.count(), orders.hits()), (0, 0));
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_gets_only_its_own_token() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    // In-cluster over TLS, with a certificate of the operator's CA: trusted.
    let payments = Server::app("127.0.0.3", Some(ca.acceptor("127.0.0.3"))).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([
            target("orders", &orders.url(), true, ORDERS_AUD, &["read:orders"]),
            target(
                "payments",
                &payments.url(),
                true,
                PAYMENTS_AUD,
                &["pay", "read:orders"]
            ),
        ]),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(pod.get(&orders, "/o").await.status, 200);
        let r = pod.get(&payments, "/p").await;
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    let tokens = |server: &Server| -> Vec<String> {
        let mut all: Vec<String> = (server.calls().iter())
            .flat_map(|c| c.values("authorization").into_iter().map(str::to_owned))
            .collect();
        all.dedup();
        all
    };
    let (to_orders, to_payments) = (tokens(&orders), tokens(&payments));
    assert_eq!(to_orders.len(), 1, "{to_orders:?}");
    assert_eq!(to_payments.len(), 1, "{to_payments:?}");
    assert_ne!(to_orders, to_payments);
    let asked = issuer.form_of(&to_orders[0]);
    assert_eq!(asked["resource"], ORDERS_AUD);
    assert_eq!(asked["scope"], "read:orders");
    let asked = issuer.form_of(&to_payments[0]);
    assert_eq!(asked["resource"], PAYMENTS_AUD);
    assert_eq!(asked["scope"], "pay read:orders");
    assert_eq!(issuer.count(), 2);
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_target_must_present_a_certificate_of_the_operators_ca() {
    let ca = Ca::new("operator CA");
    let foreign = Ca::new("someone else's CA");
    let issuer = MockIssuer::start(&ca).await;
    let rogue = Server::app("127.0.0.4", Some(foreign.acceptor("127.0.0.4"))).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &rogue.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let r = pod.get(&rogue, "/orders").await;
    assert_eq!(r.status, 502, "{}", body(&r));
    assert_eq!(
        r.json(),
        json!({"error": "upstream_unreachable", "target": "orders"})
    );
    assert_eq!(rogue.hits(), 0, "the token never left the sidecar");
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_target_is_not_trusted_with_the_operators_ca() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    // An outside name whose certificate the operator's CA signed: the operator vouches for
    // the cluster's services, never for the internet.
    let outside = Server::app("127.0.0.5", Some(ca.acceptor("127.0.0.5"))).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "partner",
            &outside.url(),
            false,
            "https://partner.example",
            &["x"]
        )]),
    )
    .await;
    let r = pod.get(&outside, "/api").await;
    assert_eq!(r.status, 502, "{}", body(&r));
    assert_eq!(r.json()["error"], "upstream_unreachable");
    assert_eq!(outside.hits(), 0);
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_goes_back_to_the_app_unfollowed() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let r = pod.get(&orders, "/redirect").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/landed"));
    let targets: Vec<String> = orders.calls().into_iter().map(|c| c.target).collect();
    assert_eq!(targets, ["/redirect"]);
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_answering_with_both_framings_reaches_the_app_with_one() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    // A target that sends Transfer-Encoding and a false Content-Length.
    let listener = TcpListener::bind("127.0.0.4:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = vec![0; 4096];
        let _ = stream.read(&mut request).await;
        let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        stream.write_all(answer.as_bytes()).await.unwrap();
    });
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "legacy",
            &format!("http://{at}"),
            true,
            ORDERS_AUD,
            &[]
        )]),
    )
    .await;
    let r = pod
        .call(&format!("GET http://{at}/ HTTP/1.1\r\nHost: {at}\r\n"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    assert_ne!(
        r.header("content-length"),
        Some("100"),
        "the false length passed on"
    );
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_refusal_is_a_502_naming_the_target_and_the_issuers_error() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    issuer.set(Behaviour::Refuse {
        status: 401,
        error: "invalid_client",
    });
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let started = Instant::now();
    for _ in 0..5 {
        let r = pod.get(&orders, "/orders").await;
        assert_eq!(r.status, 502, "{}", body(&r));
        assert_eq!(
            r.json(),
            json!({"error": "token_refused", "target": "orders", "issuer_error": "invalid_client"})
        );
    }
    // A refusal is remembered for a second: a burst asks once.
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(issuer.count(), 1);
    }
    assert_eq!(orders.hits(), 0);
    let text = body(&get(pod.sidecar.admin_addr(), "/metrics", &[]).await);
    for line in [
        r#"scopegate_egress_requests_total{target="orders",outcome="token_refused"} 5"#,
        r#"scopegate_egress_token_fetches_total{result="refused"} "#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let (_, ready) = readyz(pod.sidecar.admin_addr()).await;
    assert!(
        ready.contains("egress: target orders: no token (issuer_refused)"),
        "{ready}"
    );
    // Once the issuer grants again, so does the sidecar (after the second of memory).
    issuer.set(Behaviour::Grant { expires_in: 600 });
    eventually("a granted token", Duration::from_secs(10), || async {
        (pod.get(&orders, "/orders").await.status == 200).then_some(())
    })
    .await;
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_outage_is_a_503_with_retry_after() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    issuer.set(Behaviour::Fail(503));
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let r = pod.get(&orders, "/orders").await;
    assert_eq!(r.status, 503, "{}", body(&r));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.json(),
        json!({"error": "token_unavailable", "target": "orders", "reason": "issuer_unavailable"})
    );
    // Nothing listening at the token endpoint at all.
    let dir = TempDir::new();
    std::fs::write(dir.join("issuer-token"), ASSERTION.as_str()).unwrap();
    let down = format!("https://127.0.0.1:{}/oauth2/token", free_port());
    let targets = json!([target(
        "orders",
        &orders.url(),
        true,
        ORDERS_AUD,
        &["read:orders"]
    )]);
    let config = Pod::config(&dir, &down, &ca.pem, targets);
    let lonely = Pod::start_with(dir, config).await;
    let r = lonely.get(&orders, "/orders").await;
    assert_eq!(r.status, 503, "{}", body(&r));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["reason"], "issuer_unreachable");
    assert_eq!(orders.hits(), 0);
    lonely.sidecar.shutdown().await;
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_ask_the_issuer_once() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    *issuer.server.delay.lock().unwrap() = Duration::from_millis(500);
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Arc::new(
        Pod::start(
            &issuer,
            &ca,
            json!([target(
                "orders",
                &orders.url(),
                true,
                ORDERS_AUD,
                &["read:orders"]
            )]),
        )
        .await,
    );
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let (pod, at) = (pod.clone(), orders.authority());
            tokio::spawn(async move {
                pod.call(&format!("GET http://{at}/orders/{i} HTTP/1.1\r\n"))
                    .await
                    .status
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(issuer.count(), 1, "twenty misses, one token request");
    assert_eq!(orders.hits(), 20);
    let calls = orders.calls();
    assert!(
        calls
            .iter()
            .all(|c| c.values("authorization") == ["Bearer tok-1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_renewed_before_it_expires() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    issuer.set(Behaviour::Grant { expires_in: 2 });
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    let sent = || orders.last().values("authorization").join(",");
    assert_eq!(pod.get(&orders, "/a").await.status, 200);
    assert_eq!(sent(), "Bearer tok-1");
    assert_eq!(pod.get(&orders, "/b").await.status, 200);
    assert_eq!(sent(), "Bearer tok-1", "fresh: served from the cache");
    // A 2-second token is renewed after 1.8 s, before it expires.
    eventually("a renewed token", Duration::from_secs(10), || async {
        assert_eq!(pod.get(&orders, "/c").await.status, 200);
        (sent() == "Bearer tok-2").then_some(())
    })
    .await;
    assert_eq!(issuer.count(), 2);
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_token_is_read_for_each_token_request() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    issuer.set(Behaviour::Grant { expires_in: 2 });
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    // No file yet (the kubelet has not projected it): 503, and nothing is sent.
    std::fs::remove_file(&pod.assertion).unwrap();
    let r = pod.get(&orders, "/orders").await;
    assert_eq!(r.status, 503, "{}", body(&r));
    assert_eq!(r.json()["reason"], "assertion_unreadable");
    std::fs::write(&pod.assertion, "  \n").unwrap();
    eventually("an empty file refused", Duration::from_secs(10), || async {
        let r = pod.get(&orders, "/orders").await;
        (r.status == 503 && r.json()["reason"] == "assertion_unreadable").then_some(())
    })
    .await;
    assert_eq!(issuer.count(), 0);
    // A token for another issuer (the egress client changed since the pod started) is sent
    // nowhere.
    write_atomic(
        &pod.assertion,
        &format!("{}\n", projected_for("https://auth.other.svc", "x")),
    );
    eventually(
        "a token of another issuer refused",
        Duration::from_secs(10),
        || async {
            let r = pod.get(&orders, "/orders").await;
            (r.status == 503 && r.json()["reason"] == "assertion_for_another_issuer").then_some(())
        },
    )
    .await;
    assert_eq!(issuer.count(), 0);
    write_atomic(&pod.assertion, &format!("{}\n", projected("first")));
    eventually("a token", Duration::from_secs(10), || async {
        (pod.get(&orders, "/orders").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(issuer.form(1)["client_assertion"], projected("first"));
    // The kubelet rotates the file; the next token request sends the new one.
    write_atomic(&pod.assertion, &format!("{}\n", projected("second")));
    eventually(
        "a token bought with the rotated file",
        Duration::from_secs(10),
        || async {
            assert_eq!(pod.get(&orders, "/orders").await.status, 200);
            let last = issuer.form(issuer.count());
            (last["client_assertion"] == projected("second")).then_some(())
        },
    )
    .await;
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_port_is_bound_on_loopback_only() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    assert_eq!(pod.egress.ip().to_string(), "127.0.0.1");
    let port = pod.egress.port();
    // Another loopback address reaches 0.0.0.0 but not 127.0.0.1.
    let other = SocketAddr::from(([127, 0, 0, 2], port));
    assert!(tokio::net::TcpStream::connect(other).await.is_err());
    // The machine's own address, as another pod would reach this one.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    if probe.connect("192.0.2.1:9").is_ok() {
        let own = probe.local_addr().unwrap().ip();
        if !own.is_loopback() && !own.is_unspecified() {
            let addr = SocketAddr::new(own, port);
            assert!(
                tokio::net::TcpStream::connect(addr).await.is_err(),
                "{addr} reached the egress port"
            );
        }
    }
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_targets_of_the_next_call() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let orders = Server::app("127.0.0.2", None).await;
    let payments = Server::app("127.0.0.3", Some(ca.acceptor("127.0.0.3"))).await;
    let mut pod = Pod::start(
        &issuer,
        &ca,
        json!([target(
            "orders",
            &orders.url(),
            true,
            ORDERS_AUD,
            &["read:orders"]
        )]),
    )
    .await;
    assert_eq!(pod.get(&orders, "/1").await.status, 200);
    assert_eq!(pod.get(&payments, "/1").await.status, 403);
    let payments_url = payments.url();
    pod.reconfigure(|c| {
        c["policy"]["generation"] = json!(2);
        c["egress"]["targets"] = json!([target(
            "payments",
            &payments_url,
            true,
            PAYMENTS_AUD,
            &["pay"]
        )]);
    });
    eventually("payments declared", Duration::from_secs(10), || async {
        (pod.get(&payments, "/2").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(
        pod.get(&orders, "/2").await.status,
        403,
        "no longer declared"
    );
    assert_eq!(orders.hits(), 1);
    // Another port applies after a restart; the bound one keeps serving.
    pod.reconfigure(|c| {
        c["policy"]["generation"] = json!(3);
        c["egress"]["port"] = json!(free_port());
    });
    let admin = pod.sidecar.admin_addr();
    eventually("the restart note", Duration::from_secs(10), || async {
        let (_, text) = readyz(admin).await;
        text.contains("egress port changed").then_some(())
    })
    .await;
    assert_eq!(pod.get(&payments, "/3").await.status, 200);
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_issuer_grants_the_egress_token_for_the_pods_service_account() {
    let issuer = Issuer::start(Spec::default()).await;
    let cluster = ClusterKey::generate();
    admit_service_account_client(
        &issuer,
        &cluster,
        billing_client(&["read:items"], &[ORDERS]),
    );
    let orders = Server::app("127.0.0.2", None).await;
    let payments = Server::app("127.0.0.3", None).await;
    let dir = TempDir::new();
    std::fs::write(dir.join("issuer-token"), cluster.token(&issuer.url)).unwrap();
    let targets = json!([
        target("orders", &orders.url(), true, ORDERS, &["read:items"]),
        // An audience the client is not admitted for.
        target("payments", &payments.url(), true, PAYMENTS, &["read:items"]),
    ]);
    let endpoint = format!("{}/oauth2/token", issuer.url);
    let mut config = Pod::config(&dir, &endpoint, &issuer.certs.ca_pem, targets);
    config["egress"]["tokenAudience"] = json!(issuer.url);
    let pod = Pod::start_with(dir, config).await;
    // The issuer reloads the ServiceAccount client first.
    eventually("the client admitted", Duration::from_secs(10), || async {
        (pod.get(&orders, "/orders").await.status == 200).then_some(())
    })
    .await;
    let authorization = orders.last().values("authorization").join(",");
    let jwt = authorization.strip_prefix("Bearer ").unwrap();
    let claims = claims_of(jwt);
    assert_eq!(claims["client_id"], "shop.billing");
    assert_eq!(claims["aud"], ORDERS);
    assert_eq!(claims["scope"], "read:items");
    let r = pod.get(&payments, "/payments").await;
    assert_eq!(r.status, 502, "{}", body(&r));
    assert_eq!(
        r.json(),
        json!({"error": "token_refused", "target": "payments", "issuer_error": "invalid_target"})
    );
    assert_eq!(payments.hits(), 0);
    pod.sidecar.shutdown().await;
    issuer.stop().await;
}

/// Starts the binary with `env` and reads the egress address from its stdout line.
async fn spawn_sidecar(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scopegate-sidecar"))
        .arg("--config")
        .arg(config)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the sidecar prints its ports")
        .unwrap()
        .expect("a line on stdout");
    let egress = (line.split(' '))
        .find_map(|w| w.strip_prefix("egress="))
        .unwrap_or_else(|| panic!("egress= in {line:?}"))
        .parse()
        .unwrap();
    (child, egress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_trusts_system_roots_for_outside_targets_and_never_for_in_cluster_ones() {
    let operator = Ca::new("operator CA");
    // The machine's roots, as the binary finds them through SSL_CERT_FILE.
    let public = Ca::new("a public CA");
    let dir = TempDir::new();
    std::fs::write(dir.join("roots.pem"), &public.pem).unwrap();
    let issuer = MockIssuer::start(&operator).await;
    let outside = Server::app("127.0.0.6", Some(public.acceptor("127.0.0.6"))).await;
    // An in-cluster name answering with a publicly trusted certificate: not the operator's.
    let inside = Server::app("127.0.0.7", Some(public.acceptor("127.0.0.7"))).await;
    std::fs::write(dir.join("issuer-token"), ASSERTION.as_str()).unwrap();
    let targets = json!([
        target(
            "partner",
            &outside.url(),
            false,
            "https://partner.example",
            &["x"]
        ),
        target("orders", &inside.url(), true, ORDERS_AUD, &["read:orders"]),
    ]);
    let config = Pod::config(&dir, &issuer.endpoint(), &operator.pem, targets);
    write_atomic(&dir.join("config.json"), &config.to_string());
    let roots = dir.join("roots.pem");
    let (mut child, egress) = spawn_sidecar(
        &dir.join("config.json"),
        &[("SSL_CERT_FILE", roots.to_str().unwrap())],
    )
    .await;
    let call = |server: &Server| {
        let at = server.authority();
        let head = format!("GET http://{at}/x HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n");
        async move { raw(egress, head.as_bytes()).await }
    };
    let r = call(&outside).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(outside.last().values("authorization"), ["Bearer tok-1"]);
    let r = call(&inside).await;
    assert_eq!(r.status, 502, "{}", body(&r));
    assert_eq!(inside.hits(), 0);
    child.kill().await.unwrap();
}

/// The audience of the inventory target's tokens (on behalf of the caller).
const INVENTORY_AUD: &str = "https://inventory.shop.svc";

/// Alice's token, as the app received it from her request (the mock issuer checks nothing).
const ALICE: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyOmFsaWNlIn0.YWxpY2U";
/// Bob's.
const BOB: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyOmJvYiJ9.Ym9i";

/// A pod calling `inventory` on behalf of its callers and `orders` with its own token.
async fn on_behalf_pod(issuer: &MockIssuer, ca: &Ca, inventory: &Server, orders: &Server) -> Pod {
    Pod::start(
        issuer,
        ca,
        json!([
            on_behalf(target(
                "inventory",
                &inventory.url(),
                true,
                INVENTORY_AUD,
                &["read:items", "list:items"]
            )),
            target("orders", &orders.url(), true, ORDERS_AUD, &["read:orders"]),
        ]),
    )
    .await
}

/// Every `Authorization` value `server` received.
fn authorizations(server: &Server) -> Vec<String> {
    (server.calls().iter())
        .flat_map(|c| c.values("authorization").into_iter().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_behalf_of_the_caller_carries_the_callers_token_exchanged() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let inventory = Server::app("127.0.0.2", None).await;
    let orders = Server::app("127.0.0.3", None).await;
    let pod = on_behalf_pod(&issuer, &ca, &inventory, &orders).await;

    let r = pod.get_as(ALICE, &inventory, "/items/1").await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(body(&r), "hello from the target");
    let seen = inventory.last();
    assert_eq!(seen.target, "/items/1");
    assert_eq!(seen.values("authorization"), ["Bearer tok-1"]);
    let form = issuer.form(1);
    for (name, value) in [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", ALICE),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("resource", INVENTORY_AUD),
        ("scope", "list:items read:items"),
        ("client_id", "shop.billing"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", ASSERTION.as_str()),
    ] {
        assert_eq!(form.get(name).map(String::as_str), Some(value), "{name}");
    }
    assert_eq!(form.len(), 9, "nothing else is sent: {form:?}");

    // The same caller's token again: the exchanged token comes from the cache.
    let r = pod.get_as(ALICE, &inventory, "/items/2").await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(inventory.last().values("authorization"), ["Bearer tok-1"]);
    assert_eq!(issuer.count(), 1, "a cache hit asks the issuer nothing");

    let text = body(&get(pod.sidecar.admin_addr(), "/metrics", &[]).await);
    for line in [
        r#"scopegate_egress_requests_total{target="inventory",outcome="forwarded"} 2"#,
        r#"scopegate_egress_token_exchanges_total{target="inventory",result="ok"} 1"#,
        r#"scopegate_egress_exchange_cache_hits_total{target="inventory"} 1"#,
        r#"scopegate_egress_token_fetches_total{result="ok"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(!text.contains(ALICE) && !text.contains("tok-1"), "{text}");
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_callers_token_never_gets_the_first_callers_exchanged_token() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let inventory = Server::app("127.0.0.2", None).await;
    let orders = Server::app("127.0.0.3", None).await;
    let pod = on_behalf_pod(&issuer, &ca, &inventory, &orders).await;
    assert_eq!(pod.get_as(ALICE, &inventory, "/a").await.status, 200);
    assert_eq!(inventory.last().values("authorization"), ["Bearer tok-1"]);
    // Bob, and tokens that differ from Alice's by a character, a suffix or case: each is
    // exchanged for itself, never answered with Alice's token from the cache.
    let mut flipped = ALICE.to_owned();
    flipped.replace_range(ALICE.len() - 1.., "V");
    let others = [
        BOB.to_owned(),
        flipped,
        format!("{ALICE}x"),
        ALICE.to_ascii_lowercase(),
        ALICE[..ALICE.len() - 1].to_owned(),
    ];
    for (i, other) in others.iter().enumerate() {
        let r = pod.get_as(other, &inventory, "/b").await;
        assert_eq!(r.status, 200, "{other}: {}", body(&r));
        let n = i + 2;
        assert_eq!(
            inventory.last().values("authorization"),
            [format!("Bearer tok-{n}")],
            "{other}"
        );
        assert_eq!(issuer.form(n)["subject_token"], *other);
    }
    // Alice and Bob again: each still gets their own.
    assert_eq!(pod.get_as(ALICE, &inventory, "/c").await.status, 200);
    assert_eq!(inventory.last().values("authorization"), ["Bearer tok-1"]);
    assert_eq!(pod.get_as(BOB, &inventory, "/d").await.status, 200);
    assert_eq!(inventory.last().values("authorization"), ["Bearer tok-2"]);
    assert_eq!(issuer.count(), 1 + others.len());
    // No caller's token ever reached the target.
    let sent = authorizations(&inventory);
    for caller in [ALICE, BOB] {
        assert!(!sent.iter().any(|a| a.contains(caller)), "{sent:?}");
    }
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_behalf_without_the_callers_token_is_refused_before_the_issuer() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let inventory = Server::app("127.0.0.2", None).await;
    let orders = Server::app("127.0.0.3", None).await;
    let pod = on_behalf_pod(&issuer, &ca, &inventory, &orders).await;
    let at = inventory.authority();
    let oversized = format!("Bearer {}", "a".repeat(8 * 1024));
    for (extra, reason) in [
        (String::new(), "missing"),
        (
            "Authorization: Basic YXBwOnNlY3JldA==\r\n".to_owned(),
            "not_bearer",
        ),
        (
            "Authorization: Bearer two words\r\n".to_owned(),
            "not_bearer",
        ),
        (
            format!("Authorization: Bearer {ALICE}\r\nAuthorization: Bearer {BOB}\r\n"),
            "several",
        ),
        (format!("Authorization: {oversized}\r\n"), "too_long"),
    ] {
        let r = pod
            .call(&format!(
                "GET http://{at}/items HTTP/1.1\r\nHost: {at}\r\n{extra}"
            ))
            .await;
        assert_eq!(r.status, 400, "{reason}: {}", body(&r));
        assert_eq!(r.header("retry-after"), None);
        let answer = r.json();
        assert_eq!(answer["error"], "caller_token_required", "{answer}");
        assert_eq!(answer["target"], "inventory");
        assert_eq!(answer["reason"], reason);
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains("inventory") && message.contains("forward the Authorization"),
            "{message}"
        );
    }
    assert_eq!(issuer.count(), 0, "no exchange without a caller's token");
    assert_eq!(inventory.hits(), 0);
    let text = body(&get(pod.sidecar.admin_addr(), "/metrics", &[]).await);
    let line =
        r#"scopegate_egress_requests_total{target="inventory",outcome="caller_token_missing"} 5"#;
    assert!(text.contains(line), "{text}");
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_exchange_is_a_403_for_that_caller_only() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let inventory = Server::app("127.0.0.2", None).await;
    let orders = Server::app("127.0.0.3", None).await;
    let pod = on_behalf_pod(&issuer, &ca, &inventory, &orders).await;
    let revoked = format!("{REFUSED_SUBJECT}eyJ.eyJ.c2ln");
    let started = Instant::now();
    for _ in 0..3 {
        let r = pod.get_as(&revoked, &inventory, "/items").await;
        assert_eq!(r.status, 403, "{}", body(&r));
        let answer = r.json();
        assert_eq!(answer["error"], "caller_token_refused");
        assert_eq!(answer["target"], "inventory");
        assert_eq!(answer["issuer_error"], "invalid_request");
    }
    // The refusal is remembered for that caller's token: a burst asks once.
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(issuer.count(), 1);
    }
    let asked = issuer.count();
    // Meanwhile another caller's token is exchanged as if nothing happened.
    let r = pod.get_as(ALICE, &inventory, "/items").await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(issuer.count(), asked + 1);
    assert_eq!(issuer.form(asked + 1)["subject_token"], ALICE);
    assert_eq!(inventory.hits(), 1);
    // The pod's own client refused (a configuration problem, not the caller's): 502 as for
    // the pod's own tokens; the issuer down: 503 with Retry-After.
    issuer.set(Behaviour::Refuse {
        status: 400,
        error: "unauthorized_client",
    });
    let r = pod.get_as(BOB, &inventory, "/items").await;
    assert_eq!(r.status, 502, "{}", body(&r));
    assert_eq!(
        r.json(),
        json!({"error": "token_refused", "target": "inventory", "issuer_error": "unauthorized_client"})
    );
    issuer.set(Behaviour::Fail(503));
    let r = pod.get_as("carol.token", &inventory, "/items").await;
    assert_eq!(r.status, 503, "{}", body(&r));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["reason"], "issuer_unavailable");
    // Alice's exchanged token is still cached through all this.
    assert_eq!(pod.get_as(ALICE, &inventory, "/items").await.status, 200);
    assert_eq!(inventory.hits(), 2);
    let text = body(&get(pod.sidecar.admin_addr(), "/metrics", &[]).await);
    for line in [
        r#"scopegate_egress_requests_total{target="inventory",outcome="caller_token_refused"} 3"#,
        r#"scopegate_egress_requests_total{target="inventory",outcome="token_refused"} 1"#,
        r#"scopegate_egress_requests_total{target="inventory",outcome="token_unavailable"} 1"#,
        r#"scopegate_egress_token_exchanges_total{target="inventory",result="unavailable"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // One caller's refused token is no failure of the target's.
    let (_, ready) = readyz(pod.sidecar.admin_addr()).await;
    assert!(!ready.contains("target inventory"), "{ready}");
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_not_on_behalf_of_the_caller_still_gets_the_pods_own_token() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    let inventory = Server::app("127.0.0.2", None).await;
    let orders = Server::app("127.0.0.3", None).await;
    let pod = on_behalf_pod(&issuer, &ca, &inventory, &orders).await;
    // The app forwards its caller's token on every call, as a trace header: orders must not
    // get it, nor an exchanged token.
    let r = pod.get_as(ALICE, &orders, "/orders").await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let sent = orders.last().values("authorization").join(",");
    let form = issuer.form_of(&sent);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["resource"], ORDERS_AUD);
    assert!(!form.contains_key("subject_token"), "{form:?}");
    let r = pod.get_as(ALICE, &inventory, "/items").await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let exchanged = inventory.last().values("authorization").join(",");
    assert_ne!(exchanged, sent, "each target its own token");
    assert_eq!(issuer.form_of(&exchanged)["subject_token"], ALICE);
    // Without a caller's token, orders is still served.
    assert_eq!(pod.get(&orders, "/orders").await.status, 200);
    assert_eq!(orders.last().values("authorization"), [sent.as_str()]);
    assert_eq!(issuer.count(), 2);
    assert!(!authorizations(&orders).iter().any(|a| a.contains(ALICE)));
    pod.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_callers_token_exchange_it_once() {
    let ca = Ca::new("operator CA");
    let issuer = MockIssuer::start(&ca).await;
    *issuer.server.delay.lock().unwrap() = Duration::from_millis(500);
    let inventory = Server::app("127.0.0.2", None).await;
    let orders = Server::app("127.0.0.3", None).await;
    let pod = Arc::new(on_behalf_pod(&issuer, &ca, &inventory, &orders).await);
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let (pod, at) = (pod.clone(), inventory.authority());
            let caller = if i % 2 == 0 { ALICE } else { BOB };
            tokio::spawn(async move {
                let head = format!(
                    "GET http://{at}/items/{i} HTTP/1.1\r\nAuthorization: Bearer {caller}\r\n"
                );
                pod.call(&head).await.status
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(issuer.count(), 2, "ten calls of two callers, two exchanges");
    let subjects: std::collections::HashSet<String> = (1..=2)
        .map(|n| issuer.form(n)["subject_token"].clone())
        .collect();
    assert_eq!(subjects, [ALICE.to_owned(), BOB.to_owned()].into());
    assert_eq!(inventory.hits(), 10);
}
