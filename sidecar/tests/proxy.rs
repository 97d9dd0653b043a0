//! The proxy in front of a small app on loopback: forwarding hygiene (identity, hop-by-hop,
//! X-Forwarded-*), security headers, upstream failures and timeouts, WebSocket upgrades,
//! h2c, streamed bodies, rate limits and the token cache.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    upstream: Upstream,
    key: SigningKey,
    sidecar: scopegate_sidecar::Running,
    _dir: TempDir,
}

async fn setup(edit: impl FnOnce(&mut serde_json::Value)) -> Setup {
    let upstream = Upstream::start(Duration::from_secs(30)).await;
    let (key, _) = SigningKey::es256();
    let dir = TempDir::new();
    let mut cfg = config(
        upstream.addr.port(),
        json!({"keys": [key.jwk("k1", Some("ES256"))]}),
    );
    edit(&mut cfg);
    let sidecar = start_sidecar(&dir, &cfg).await;
    Setup {
        upstream,
        key,
        sidecar,
        _dir: dir,
    }
}

impl Setup {
    fn token(&self, scope: &str) -> String {
        mint(&self.key, &header("ES256", "k1"), &claims(scope))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_set_from_the_token_and_forged_copies_dropped() {
    let s = setup(|_| {}).await;
    let addr = s.sidecar.proxy_addr();
    let token = s.token("read:items extra");
    let r = get(
        addr,
        "/items/1?q=1",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Auth-Subject", "root"),
            ("X-Auth-Scopes", "admin"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.path_and_query, "/items/1?q=1");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-scopes"], "read:items extra");
    assert_eq!(seen.headers["x-auth-client-id"], "web");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "app.test");
    assert_eq!(
        seen.headers["forwarded"], "for=127.0.0.1;proto=http;host=\"app.test\"",
        "the forged element replaced"
    );
    assert_eq!(seen.headers["authorization"], format!("Bearer {token}"));

    // A public route: no token, forged identity must not reach the app.
    let r = get(
        addr,
        "/public/x",
        &[
            ("X-Auth-Subject", "root"),
            ("x-auth-client-id", "admin-cli"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.upstream.last().unwrap();
    assert!(
        !seen.headers.contains_key("x-auth-subject"),
        "{:?}",
        seen.headers
    );
    assert!(!seen.headers.contains_key("x-auth-client-id"));
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_security_headers_set() {
    let s = setup(|_| {}).await;
    let addr = s.sidecar.proxy_addr();
    let r = get(
        addr,
        "/public/x",
        &[
            ("Connection", "close, x-drop"),
            ("X-Drop", "1"),
            ("Keep-Alive", "timeout=1"),
            ("X-Keep", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.upstream.last().unwrap();
    assert!(!seen.headers.contains_key("x-drop"));
    assert!(!seen.headers.contains_key("keep-alive"));
    assert_eq!(seen.headers["x-keep"], "1");
    assert!(
        r.header("keep-alive").is_none(),
        "upstream's keep-alive leaked"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(
        r.header("cache-control"),
        None,
        "no-store only on configured paths"
    );
    let token = s.token("read:items");
    let r = get_with_token(addr, "/items/1", &token).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_slow_is_504() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = setup(|_| {}).await;
    let r = get(s.sidecar.proxy_addr(), "/slow", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    s.sidecar.shutdown().await;

    let down = setup(|cfg| cfg["upstream"]["port"] = json!(closed)).await;
    let r = get(down.sidecar.proxy_addr(), "/public/x", &[]).await;
    assert_eq!(r.status, 502);
    let metrics = get(down.sidecar.admin_addr(), "/metrics", &[]).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("scopegate_sidecar_requests_total{outcome=\"upstream_unreachable\"} 1"),
        "{text}"
    );
    down.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through() {
    let s = setup(|_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(s.sidecar.proxy_addr())
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let response = parse_response(&head);
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("upgrade"), Some("websocket"));
    stream.write_all(b"ping through the sidecar").await.unwrap();
    let mut echo = vec![0u8; 24];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping through the sidecar");
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_and_streamed_bodies() {
    let s = setup(|cfg| cfg["upstream"]["protocol"] = json!("h2c")).await;
    let r = get(s.sidecar.proxy_addr(), "/public/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    s.sidecar.shutdown().await;

    let s = setup(|_| {}).await;
    let body = vec![b'x'; 4 << 20];
    let mut request = format!(
        "POST /public/upload HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let r = raw(s.sidecar.proxy_addr(), &request).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 4 << 20);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_have_a_budget_of_their_own() {
    let s = setup(|cfg| {
        cfg["rateLimits"] = json!([
            {"name": "me", "paths": ["/me"], "key": "subject", "requests": 3, "periodSecs": 900},
            {"name": "login", "methods": ["GET"], "paths": ["/status/*"], "requests": 2, "periodSecs": 900}
        ]);
        cfg["trustedProxies"] = json!({"hops": 1});
    })
    .await;
    let addr = s.sidecar.proxy_addr();
    let victim = s.token("");
    // An attacker on the same address fails until it is limited...
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get_with_token(addr, "/me", "e30.e30.AAAA").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // ...and the victim's valid token still passes, with a budget of its own.
    for _ in 0..3 {
        assert_eq!(get_with_token(addr, "/me", &victim).await.status, 200);
    }
    let limited = get_with_token(addr, "/me", &victim).await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert_eq!(limited.header("x-content-type-options"), Some("nosniff"));

    // Address keys come from X-Forwarded-For as trustedProxies allows; the app's 401 counts
    // as a failure.
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    assert_eq!(get(addr, "/status/401", &from("1.1.1.1")).await.status, 401);
    assert_eq!(get(addr, "/status/401", &from("1.1.1.1")).await.status, 401);
    assert_eq!(get(addr, "/status/401", &from("1.1.1.1")).await.status, 429);
    assert_eq!(
        get(addr, "/status/200", &from("2001:db8::1")).await.status,
        200
    );
    assert_eq!(
        get(addr, "/status/200", &from("2001:db8::2")).await.status,
        200
    );
    assert_eq!(
        get(addr, "/status/200", &from("2001:db8::3")).await.status,
        429,
        "same /64"
    );
    assert_eq!(
        get(addr, "/status/200", &from("2001:db8:0:1::1"))
            .await
            .status,
        200
    );
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tokens_are_cached_and_metrics_say_so() {
    let s = setup(|_| {}).await;
    let token = s.token("read:items");
    for _ in 0..3 {
        assert_eq!(
            get_with_token(s.sidecar.proxy_addr(), "/items/1", &token)
                .await
                .status,
            200
        );
    }
    let metrics = get(s.sidecar.admin_addr(), "/metrics", &[]).await;
    let text = String::from_utf8(metrics.body).unwrap();
    for line in [
        "scopegate_sidecar_token_cache_hits_total 2",
        "scopegate_sidecar_token_cache_misses_total 1",
        "scopegate_sidecar_token_validation_seconds_count 1",
        "scopegate_sidecar_requests_total{outcome=\"allowed\"} 3",
        "scopegate_sidecar_config_generation 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains(&token[..20]), "a token reached the metrics");
    let ready = get(s.sidecar.admin_addr(), "/readyz", &[]).await;
    assert_eq!(ready.status, 200);
    assert!(String::from_utf8_lossy(&ready.body).contains("generation 1 of shop/orders"));
    assert_eq!(
        get(s.sidecar.admin_addr(), "/healthz", &[]).await.status,
        200
    );
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_hs256_signing_keys_verify_until_removed() {
    use base64_standard as b64std;
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let secret = [7u8; 32];
    let now = now();
    let key = |kid: &str, removed_after: i64| {
        json!({
            "kid": kid, "alg": "HS256", "publishedAt": now - 100, "activatesAt": now - 100,
            "signsUntil": now + 100, "removedAfter": removed_after,
            "privateKey": b64std::encode(&secret)
        })
    };
    let keys_path = dir.join("keys.json");
    std::fs::write(
        &keys_path,
        json!({"keys": [key("live", now + 3600), key("gone", now - 1)]}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("clients.json"), r#"{"clients": []}"#).unwrap();
    let mut cfg = config(upstream.addr.port(), json!({"keys": []}));
    cfg["verify"]["issuers"][0]["keys"] = json!({"type": "ownSigningKeys"});
    cfg["issuer"] = json!({
        "url": ISSUER, "signingKeysPath": keys_path, "clientsPath": dir.join("clients.json"),
        "accessTokenTtlSecs": 600, "refreshTokenTtlSecs": 3600, "codeTtlSecs": 60,
        "mintSocketPath": dir.join("mint.sock")
    });
    let sidecar = start_sidecar(&dir, &cfg).await;
    let hs = SigningKey::hs256(&secret);
    let live = mint(&hs, &header("HS256", "live"), &claims("read:items"));
    assert_eq!(
        get_with_token(sidecar.proxy_addr(), "/items/1", &live)
            .await
            .status,
        200
    );
    let gone = mint(&hs, &header("HS256", "gone"), &claims("read:items"));
    assert_eq!(
        get_with_token(sidecar.proxy_addr(), "/items/1", &gone)
            .await
            .status,
        401
    );
    sidecar.shutdown().await;
}

/// Standard padded base64, as the signing-keys document stores secrets.
mod base64_standard {
    pub fn encode(bytes: &[u8]) -> String {
        let url = scopegate_core::jose::b64::encode(bytes)
            .replace('-', "+")
            .replace('_', "/");
        let pad = (4 - url.len() % 4) % 4;
        format!("{url}{}", "=".repeat(pad))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_with_the_mounted_certificate_and_sends_hsts() {
    let certs = TestCerts::new();
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, &certs.leaf_pem).unwrap();
    std::fs::write(&key_path, certs.leaf_key.serialize_pem()).unwrap();
    let s = setup(|cfg| {
        cfg["listen"]["tls"] = json!({"certPath": cert_path, "keyPath": key_path});
        cfg["headers"]["hsts"] = json!("auto");
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(s.sidecar.proxy_addr())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = certs.connector().connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let r = parse_response(&buf);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(
        s.upstream.last().unwrap().headers["x-forwarded-proto"],
        "https"
    );
    s.sidecar.shutdown().await;

    // Plain HTTP with `hsts: auto` sends none.
    let plain = setup(|cfg| cfg["headers"]["hsts"] = json!("auto")).await;
    let r = get(plain.sidecar.proxy_addr(), "/public/x", &[]).await;
    assert_eq!(r.header("strict-transport-security"), None);
    plain.sidecar.shutdown().await;
}

/// An HTTP/2 connection without TLS (prior knowledge) to `addr`, for requests with bodies of
/// type `B`.
async fn h2c<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served_and_keep_their_authority() {
    use http_body_util::{BodyExt, Empty};
    let s = setup(|_| {}).await;
    let mut sender = h2c(s.sidecar.proxy_addr()).await;
    let token = s.token("read:items");
    let request = hyper::Request::get("http://app.test/items/7")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["version"], "HTTP/1.1", "h2 in, HTTP/1.1 to the app");
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.headers["host"], "app.test");
    assert_eq!(seen.headers["x-forwarded-host"], "app.test");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_open_connections() {
    use http_body_util::{BodyExt, Empty};
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let cfg = config(upstream.addr.port(), json!({"keys": []}));
    let sidecar = start_sidecar(&dir, &cfg).await;
    let tcp = tokio::net::TcpStream::connect(sidecar.proxy_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut status_of = async |path: &str| {
        let request = hyper::Request::get(path)
            .header("host", "app.test")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.ready().await.expect("the connection stays open");
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(status_of("/public/a").await, 200);
    assert_eq!(status_of("/extra/a").await, 401);

    let mut next = cfg.clone();
    next["policy"]["generation"] = json!(2);
    next["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"paths": ["/extra/**"], "action": {"type": "public"}}));
    write_atomic(&dir.join("config.json"), &next.to_string());
    // The same keep-alive connection sees the new rules once they are in force.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status_of("/extra/a").await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "generation 2 never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_of("/public/a").await, 200);
    sidecar.shutdown().await;
}

/// One HTTPS GET through `connector`; `None` when the handshake fails.
async fn tls_get(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Option<RawResponse> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    tls.write_all(b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    Some(parse_response(&buf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_rotates_without_a_restart() {
    let (old, new) = (TestCerts::new(), TestCerts::new());
    let dir = TempDir::new();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    write_atomic(&cert_path, &old.leaf_pem);
    write_atomic(&key_path, &old.leaf_key.serialize_pem());
    let s = setup(|cfg| cfg["listen"]["tls"] = json!({"certPath": cert_path, "keyPath": key_path}))
        .await;
    let addr = s.sidecar.proxy_addr();
    assert_eq!(tls_get(addr, &old.connector()).await.unwrap().status, 200);
    assert!(tls_get(addr, &new.connector()).await.is_none());

    // A certificate whose key does not match is refused; the old pair keeps serving.
    write_atomic(&cert_path, &new.leaf_pem);
    eventually(
        "the refusal in /readyz",
        Duration::from_secs(20),
        || async {
            let (status, text) = readyz(s.sidecar.admin_addr()).await;
            (status == 200 && text.contains("tls: the newest certificate files are refused"))
                .then_some(())
        },
    )
    .await;
    assert!(tls_get(addr, &old.connector()).await.is_some());

    write_atomic(&key_path, &new.leaf_key.serialize_pem());
    eventually("the new certificate", Duration::from_secs(20), || async {
        tls_get(addr, &new.connector()).await.map(|_| ())
    })
    .await;
    assert!(tls_get(addr, &old.connector()).await.is_none());
    assert!(!readyz(s.sidecar.admin_addr()).await.1.contains("tls:"));
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_budgets_survive_a_reload_that_keeps_the_limit() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let mut cfg = config(upstream.addr.port(), json!({"keys": []}));
    cfg["rateLimits"] =
        json!([{"name": "login", "paths": ["/public/login"], "requests": 2, "periodSecs": 900}]);
    let sidecar = start_sidecar(&dir, &cfg).await;
    let addr = sidecar.proxy_addr();
    assert_eq!(get(addr, "/public/login", &[]).await.status, 200);
    assert_eq!(get(addr, "/public/login", &[]).await.status, 200);
    assert_eq!(get(addr, "/public/login", &[]).await.status, 429);

    let mut next = cfg.clone();
    next["policy"]["generation"] = json!(2);
    write_atomic(&dir.join("config.json"), &next.to_string());
    eventually("generation 2", Duration::from_secs(20), || async {
        let r = get(sidecar.admin_addr(), "/metrics", &[]).await;
        String::from_utf8(r.body)
            .unwrap()
            .contains("scopegate_sidecar_config_generation 2")
            .then_some(())
    })
    .await;
    assert_eq!(
        get(addr, "/public/login", &[]).await.status,
        429,
        "budget kept"
    );
    sidecar.shutdown().await;
}

/// A request body that sends `bytes` once `release` fires (or never, when it is dropped),
/// recording in `sent` when it did.
struct HeldBody {
    release: Option<tokio::sync::oneshot::Receiver<bytes::Bytes>>,
    sent: Arc<std::sync::atomic::AtomicBool>,
    length: Option<u64>,
}

impl hyper::body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let Some(release) = self.release.as_mut() else {
            return Poll::Ready(None);
        };
        match std::pin::Pin::new(release).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(bytes) => {
                self.release = None;
                self.sent.store(true, std::sync::atomic::Ordering::SeqCst);
                Poll::Ready(bytes.ok().map(|b| Ok(hyper::body::Frame::data(b))))
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.length
            .map(hyper::body::SizeHint::with_exact)
            .unwrap_or_default()
    }
}

/// An h2c connection to the sidecar and a POST to `/items/7` without a token (a 401) whose
/// body is held back; returns whether the body had been sent when the answer came.
async fn refused_post_with_held_body(
    s: &Setup,
    length: Option<u64>,
    body: Option<&'static [u8]>,
) -> (u16, bool) {
    let mut sender = h2c(s.sidecar.proxy_addr()).await;
    let (release, held) = tokio::sync::oneshot::channel();
    let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = hyper::Request::post("http://app.test/items/7")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(HeldBody {
            release: Some(held),
            sent: sent.clone(),
            length,
        })
        .unwrap();
    let sent_then = sent.clone();
    let answer = tokio::spawn(async move {
        let response = sender.send_request(request).await;
        (
            response,
            sent_then.load(std::sync::atomic::Ordering::SeqCst),
        )
    });
    // The headers are out; the body follows a moment later, as a client's upload does.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match body {
        // Refused when the client already dropped the body (its stream was reset).
        Some(bytes) => drop(release.send(bytes::Bytes::from_static(bytes))),
        // A body that never comes: the sender stays, silent.
        None => std::mem::forget(release),
    }
    let (response, sent) = answer.await.unwrap();
    (response.unwrap().status().as_u16(), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_read_before_the_answer_within_bounds() {
    let s = setup(|_| {}).await;
    // A small form: the sidecar reads it before it answers, so an HTTP/2 client is never
    // reset while it uploads (curl then reports an error instead of the 401).
    let (status, sent) = refused_post_with_held_body(&s, None, Some(b"product=grinder")).await;
    assert_eq!(status, 401);
    assert!(sent, "the 401 went out before the client had sent its body");
    // An attacker's body that says it is large is not read: the answer goes out at once.
    let (status, sent) =
        refused_post_with_held_body(&s, Some(10 << 20), Some(b"product=grinder")).await;
    assert_eq!(status, 401);
    assert!(!sent, "a body declared too long was waited for");
    // One that never comes delays only its own answer, by the drain's bound.
    let (status, sent) = refused_post_with_held_body(&s, None, None).await;
    assert_eq!(status, 401);
    assert!(!sent);
    s.sidecar.shutdown().await;
}
