//! The hostile-request table: each broken or malicious request against the sidecar running
//! in-process in front of a small app, on real loopback sockets, with the status and
//! `WWW-Authenticate` it must get. Refused requests must never reach the app.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::hostile_table::{Table, hostile_table, trap};
use support::*;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_right_answer_and_never_reach_the_app() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let (trap_addr, trap_hits) = trap().await;
    let Table { config: cfg, cases } = hostile_table(upstream.addr.port(), trap_addr);
    let sidecar = start_sidecar(&dir, &cfg).await;
    let addr = sidecar.proxy_addr();

    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let before = upstream.hits();
        let response = raw(addr, &c.request()).await;
        let challenge = response.header("www-authenticate").map(str::to_owned);
        let reached = upstream.hits() > before;
        let expect_reach = c.status == 200;
        if response.status != c.status || challenge != c.challenge || reached != expect_reach {
            failures.push(format!(
                "{}: got {} {:?} (app reached: {reached}), want {} {:?}",
                c.name, response.status, challenge, c.status, c.challenge
            ));
        }
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ] {
            if response.header(name) != Some(value) {
                failures.push(format!("{}: {name} is {:?}", c.name, response.header(name)));
            }
        }
        if response.status != 200 && response.header("cache-control") != Some("no-store") {
            failures.push(format!("{}: refusal without no-store", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        trap_hits.load(Ordering::SeqCst),
        0,
        "a jku/x5u URL was fetched"
    );
    eprintln!("{} hostile-table cases passed", cases.len());
    sidecar.shutdown().await;
}

/// One request of a table: method, target, whether it carries the reader's token, and the
/// status it must get (a 2xx reaches the app, nothing else does).
struct Spelled {
    method: &'static str,
    target: &'static str,
    token: Option<&'static str>,
    status: u16,
}

async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
) -> RawResponse {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    raw(addr, request.as_bytes()).await
}

/// Rules match the path the app will route: escapes of pattern characters decoded, the
/// trailing-slash and case variants of a protected path protected, public rules only in
/// their own spelling, HEAD under GET's rules, and rate limits counted by the same matcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_reach_the_rule_the_app_routes_to() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (es, _) = SigningKey::es256();
    let dir = TempDir::new();
    let mut cfg = config(
        upstream.addr.port(),
        json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    cfg["rules"] = json!([
        {"name": "cancel", "methods": ["POST"], "paths": ["/v1/orders:cancel"], "action": {"type": "requireAll", "scopes": ["write:orders"]}},
        {"name": "v1", "paths": ["/v1/*"], "action": {"type": "public"}},
        {"name": "admin", "paths": ["/admin", "/settings/*"], "action": {"type": "requireAll", "scopes": ["admin"]}},
        {"name": "docs", "paths": ["/docs"], "action": {"type": "public"}},
        {"name": "reports", "methods": ["GET"], "paths": ["/reports"], "action": {"type": "requireAll", "scopes": ["reports:read"]}},
        {"name": "login", "methods": ["POST"], "paths": ["/login"], "action": {"type": "public"}},
        {"name": "secret", "paths": ["/secret/**"], "action": {"type": "authenticated"}},
        {"name": "rest", "paths": ["/**"], "action": {"type": "public"}}
    ]);
    cfg["rateLimits"] = json!([
        {"name": "login", "methods": ["POST"], "paths": ["/login"], "requests": 3, "periodSecs": 3600}
    ]);
    let sidecar = start_sidecar(&dir, &cfg).await;
    let addr = sidecar.proxy_addr();
    let reader = mint(&es, &header("ES256", "k1"), &claims("read:items"));
    let reader: &'static str = Box::leak(reader.into_boxed_str());
    let cases = [
        // Encoded pattern characters: the app decodes `%3A` before routing.
        Spelled {
            method: "POST",
            target: "/v1/orders:cancel",
            token: None,
            status: 401,
        },
        Spelled {
            method: "POST",
            target: "/v1/orders%3Acancel",
            token: None,
            status: 401,
        },
        Spelled {
            method: "POST",
            target: "/v1/orders%3acancel",
            token: Some(reader),
            status: 403,
        },
        Spelled {
            method: "POST",
            target: "/v1/%6frders%3Acancel",
            token: None,
            status: 401,
        },
        Spelled {
            method: "POST",
            target: "/v1/orders%3Alist",
            token: None,
            status: 200,
        },
        // Case and trailing-slash variants of protected paths.
        Spelled {
            method: "GET",
            target: "/admin/",
            token: None,
            status: 401,
        },
        Spelled {
            method: "GET",
            target: "/ADMIN",
            token: None,
            status: 401,
        },
        Spelled {
            method: "GET",
            target: "/Admin/",
            token: Some(reader),
            status: 403,
        },
        Spelled {
            method: "GET",
            target: "/SETTINGS/Mail/",
            token: None,
            status: 401,
        },
        Spelled {
            method: "GET",
            target: "/Secret/x",
            token: None,
            status: 401,
        },
        Spelled {
            method: "POST",
            target: "/V1/Orders:Cancel/",
            token: None,
            status: 401,
        },
        // Public rules only in their own spelling (the rest falls to other rules).
        Spelled {
            method: "GET",
            target: "/docs",
            token: None,
            status: 200,
        },
        // HEAD is answered by the GET handler, so GET's rule applies.
        Spelled {
            method: "HEAD",
            target: "/reports",
            token: None,
            status: 401,
        },
        Spelled {
            method: "HEAD",
            target: "/reports/",
            token: Some(reader),
            status: 403,
        },
        Spelled {
            method: "POST",
            target: "/reports",
            token: None,
            status: 200,
        },
        // An encoded slash or backslash is still refused.
        Spelled {
            method: "GET",
            target: "/admin%2F",
            token: None,
            status: 400,
        },
        Spelled {
            method: "GET",
            target: "/x/..%5Cadmin",
            token: None,
            status: 400,
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let before = upstream.hits();
        let response = send(addr, c.method, c.target, c.token).await;
        let reached = upstream.hits() > before;
        if response.status != c.status || reached != (c.status == 200) {
            failures.push(format!(
                "{} {}: got {} (app reached: {reached}), want {}",
                c.method, c.target, response.status, c.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The app gets the path as it was sent (escapes it must decode itself stay encoded).
    send(addr, "POST", "/v1/orders%3Alist", None).await;
    assert_eq!(upstream.last().unwrap().path_and_query, "/v1/orders%3Alist");

    // One budget for every spelling of the rate-limited route.
    for target in ["/login", "/login/", "/LOGIN"] {
        assert_eq!(
            send(addr, "POST", target, None).await.status,
            200,
            "{target}"
        );
    }
    for target in ["/Login/", "/login"] {
        let refused = send(addr, "POST", target, None).await;
        assert_eq!(refused.status, 429, "{target}");
        assert!(refused.header("retry-after").is_some());
    }
    sidecar.shutdown().await;
}

/// What the app saw of the last request, by header name.
fn seen_headers(upstream: &Upstream) -> std::collections::HashMap<String, String> {
    upstream.last().unwrap().headers
}

/// Identity headers cannot be spoofed in any spelling a server reads as ours, on public routes
/// too; an identity a header would change is refused; the forwarding headers of a peer that is
/// not a trusted proxy are replaced, and it cannot pick its rate-limit budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_forwarding_headers_cannot_be_spoofed() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (es, _) = SigningKey::es256();
    let dir = TempDir::new();
    let mut cfg = config(
        upstream.addr.port(),
        json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    // The test client (127.0.0.1) is not a trusted proxy.
    cfg["trustedProxies"] = json!({"cidrs": ["10.0.0.0/8"]});
    cfg["rateLimits"] = json!([
        {"name": "limited", "paths": ["/public/limited"], "requests": 1, "periodSecs": 3600}
    ]);
    let sidecar = start_sidecar(&dir, &cfg).await;
    let addr = sidecar.proxy_addr();
    let spoofs: Vec<(&str, String)> = vec![
        ("X-Auth-Subject", "admin".into()),
        ("x_auth_subject", "admin".into()),
        ("X-AUTH_SUBJECT", "admin".into()),
        ("x_auth_scopes", "admin".into()),
        ("X_Auth_Client_Id", "evil".into()),
        ("X-Forwarded-For", "6.6.6.6".into()),
        ("X_Forwarded_For", "6.6.6.6".into()),
        ("X-Forwarded-Proto", "https".into()),
        ("X-Forwarded-Host", "evil.example".into()),
        ("x_forwarded_host", "evil.example".into()),
        (
            "Forwarded",
            "for=6.6.6.6;proto=https;host=evil.example".into(),
        ),
        ("X-Real-IP", "6.6.6.6".into()),
        ("X-Original-URL", "/admin/x".into()),
        ("X-HTTP-Method-Override", "DELETE".into()),
    ];
    let expect_clean = |seen: &std::collections::HashMap<String, String>, subject: Option<&str>| {
        let cgi = |name: &str| name.to_ascii_lowercase().replace('_', "-");
        let identity: Vec<(&String, &String)> = seen
            .iter()
            .filter(|(k, _)| cgi(k).starts_with("x-auth-"))
            .collect();
        match subject {
            None => assert!(
                identity.is_empty(),
                "identity headers reached the app: {identity:?}"
            ),
            Some(sub) => {
                assert_eq!(seen.get("x-auth-subject").map(String::as_str), Some(sub));
                assert_eq!(identity.len(), 3, "one spelling each: {identity:?}");
            }
        }
        for (name, want) in [
            ("x-forwarded-for", Some("127.0.0.1")),
            ("x-forwarded-proto", Some("http")),
            ("x-forwarded-host", Some("app.test")),
            (
                "forwarded",
                Some("for=127.0.0.1;proto=http;host=\"app.test\""),
            ),
            ("x_forwarded_for", None),
            ("x_forwarded_host", None),
            ("x-real-ip", None),
            ("x-original-url", None),
            ("x-http-method-override", None),
        ] {
            assert_eq!(seen.get(name).map(String::as_str), want, "{name}");
        }
    };

    // A public route: nothing the client claims about identity or origin reaches the app.
    let r = get(
        addr,
        "/public/x",
        &spoofs
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(r.status, 200);
    expect_clean(&seen_headers(&upstream), None);

    // A protected route: exactly the token's identity, in one spelling.
    let token = mint(&es, &header("ES256", "k1"), &claims("read:items"));
    let mut with_token: Vec<(&str, &str)> = spoofs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bearer = format!("Bearer {token}");
    with_token.push(("Authorization", &bearer));
    let r = get(addr, "/items/1", &with_token).await;
    assert_eq!(r.status, 200);
    expect_clean(&seen_headers(&upstream), Some("alice"));

    // A token whose identity a header would change is refused, never forwarded without it.
    for (claim, value) in [
        ("sub", json!("alice\nX-Auth-Scopes: admin")),
        ("sub", json!(" admin")),
        ("sub", json!("admin ")),
        ("sub", json!("")),
        ("sub", json!("ådmin")),
        ("sub", json!("ad\u{0}min")),
        ("client_id", json!("web\t")),
        ("client_id", json!("web\r\nx: y")),
    ] {
        let mut c = claims("read:items");
        c[claim] = value.clone();
        let before = upstream.hits();
        let r = get_with_token(addr, "/items/1", &mint(&es, &header("ES256", "k1"), &c)).await;
        assert_eq!(r.status, 401, "{claim} {value}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"scopegate\", error=\"invalid_token\""),
            "{claim} {value}"
        );
        assert_eq!(upstream.hits(), before, "{claim} {value} reached the app");
    }

    // The address budget is the peer's: a forged X-Forwarded-For does not buy a fresh one.
    let first = get(addr, "/public/limited", &[("X-Forwarded-For", "1.1.1.1")]).await;
    assert_eq!(first.status, 200);
    let second = get(addr, "/public/limited", &[("X-Forwarded-For", "2.2.2.2")]).await;
    assert_eq!(second.status, 429);
    sidecar.shutdown().await;

    // Behind a trusted proxy the chain, scheme, host and Forwarded elements survive, with this
    // hop appended; identity spellings are still removed.
    cfg["trustedProxies"] = json!({"cidrs": ["127.0.0.0/8"]});
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &cfg).await;
    let r = get(
        sidecar.proxy_addr(),
        "/public/x",
        &spoofs
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = seen_headers(&upstream);
    assert_eq!(seen.get("x-forwarded-for").unwrap(), "6.6.6.6, 127.0.0.1");
    assert_eq!(seen.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(seen.get("x-forwarded-host").unwrap(), "evil.example");
    assert_eq!(
        seen.get("forwarded").unwrap(),
        "for=6.6.6.6;proto=https;host=evil.example, for=127.0.0.1;proto=http;host=\"app.test\""
    );
    assert_eq!(seen.get("x-real-ip").unwrap(), "6.6.6.6");
    assert!(seen.keys().all(|k| {
        !k.to_ascii_lowercase()
            .replace('_', "-")
            .starts_with("x-auth-")
    }));
    assert!(!seen.contains_key("x_forwarded_for") && !seen.contains_key("x-original-url"));
    sidecar.shutdown().await;
}

/// A client cannot hold the sidecar's connections and tasks: a trickled body ends with 408, a
/// connection with nothing in flight is closed after the idle timeout (HTTP/2 and HTTP/1.1
/// alike, without cutting a request in flight), and only a WebSocket upgrade reaches the app
/// (an h2c upgrade would hand the client a connection to the app past every rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_idle_connections_and_foreign_upgrades_are_cut_off() {
    use http_body_util::{BodyExt, Empty};
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start(Duration::from_millis(1500)).await;
    let dir = TempDir::new();
    let mut cfg = config(upstream.addr.port(), json!({"keys": []}));
    cfg["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "switch", "paths": ["/switch"], "action": {"type": "public"}}));
    let tuning = scopegate_verifier::state::ConnectionTuning {
        idle_timeout: Duration::from_millis(500),
        body_idle_timeout: Duration::from_millis(500),
        stream_idle_timeout: Duration::from_millis(500),
    };
    let sidecar = start_sidecar_with(&dir, &cfg, tuning).await;
    let addr = sidecar.proxy_addr();

    // A body that stops after 10 of its 100 bytes.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /public/upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .expect("the sidecar ends a stalled body")
        .unwrap();
    let answer = parse_response(&buf);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.header("cache-control"), Some("no-store"));

    // Upgrades other than a WebSocket handshake lose their Upgrade header.
    for (method, upgrade) in [
        ("GET", "h2c"),
        ("GET", "websocket, h2c"),
        ("GET", "TLS/1.2"),
        ("POST", "websocket"),
    ] {
        let request = format!(
            "{method} /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 0\r\n\r\n"
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let answer = parse_response(&buf[..n]);
        assert_eq!(answer.status, 200, "{method} {upgrade}: {answer:?}");
        let seen = upstream.last().unwrap().headers;
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !seen.contains_key(name),
                "{method} {upgrade}: {name} reached the app"
            );
        }
    }
    // An app that switches protocols unasked does not get the client's connection.
    let r = get(addr, "/switch", &[]).await;
    assert_eq!(r.status, 502);

    // HTTP/2: a stream in flight outlives the idle timeout; then the idle connection goes.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(conn);
    let request = hyper::Request::get("http://app.test/slow")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "the slow request finished");
    response.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .unwrap();

    // HTTP/1.1 keep-alive: the same.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("the idle keep-alive connection is closed")
        .unwrap();
    assert_eq!(parse_response(&buf).status, 200);
    sidecar.shutdown().await;
}

/// Leeway is capped at 60 s whatever the config says (RFC 8725 practice): a token that
/// expired 90 s ago stays dead under a configured leeway of an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_is_capped_at_sixty_seconds() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (es, _) = SigningKey::es256();
    let dir = TempDir::new();
    let mut cfg = config(
        upstream.addr.port(),
        json!({"keys": [es.jwk("k1", Some("ES256"))]}),
    );
    cfg["verify"]["leewaySecs"] = json!(3600);
    let sidecar = start_sidecar(&dir, &cfg).await;
    let now = now();
    for (exp, status) in [(now - 90, 401), (now - 3000, 401), (now - 30, 200)] {
        let mut c = claims("read:items");
        c["exp"] = json!(exp);
        let token = mint(&es, &header("ES256", "k1"), &c);
        let r = get_with_token(sidecar.proxy_addr(), "/items/1", &token).await;
        assert_eq!(r.status, status, "expired {}s ago", now - exp);
    }
    sidecar.shutdown().await;
}
