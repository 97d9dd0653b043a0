//! What a browser session costs a request: a GET through the proxy port with the session
//! cookie (opened, its token set as `Authorization`, then the verified-token cache hit) against
//! the same GET with the same token as a bearer header (the cache hit alone). Both go over
//! loopback to a small app, on one kept-alive connection. Target (BENCHMARKS.md): the session
//! request costs at most 1.2x the bearer request. Also the cookie's opening alone, and the
//! resident memory after 10,000 and 20,000 distinct sessions (the sidecar keeps none of
//! them: only the bounded verified-token cache grows, as it does with bearer tokens).

#![allow(clippy::unwrap_used)] // bench set-up: a panic is the failure report

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scopegate_core::jose::b64;
use scopegate_core::session::SESSION_COOKIE;
use scopegate_sessions::keys::Keyring;
use scopegate_sessions::state::Session;
use scopegate_verifier::settings::{self, CompileInput};
use scopegate_verifier::state::Shared;
use serde_json::json;

const ISSUER: &str = "https://auth.shop.svc.cluster.local";
const POLICY: &str = "bench/portal";

/// The ES256 key the bench's tokens are signed with.
struct Signer {
    pair: EcdsaKeyPair,
    jwk: serde_json::Value,
}

impl Signer {
    fn new() -> Signer {
        let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..])});
        Signer { pair, jwk }
    }

    /// A token of `sub` as the issuer signs one (10 claims, ≈ 430 bytes).
    fn token(&self, sub: &str) -> String {
        let now = scopegate_sidecar_kit::unix_now();
        let header = json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"});
        let claims = json!({
            "iss": ISSUER, "sub": sub, "aud": "orders", "exp": now + 3600,
            "iat": now, "nbf": now, "jti": format!("jti-{sub}"),
            "client_id": "shop.portal", "scope": "read:items write:items read:orders"
        });
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64::encode(sig.as_ref()))
    }
}

/// A session of `token` sealed as the callback seals one, with a refresh token of the
/// issuer's length.
fn cookie(keys: &Keyring, token: &str) -> String {
    let now = scopegate_sidecar_kit::unix_now();
    let session = Session {
        access_token: token.to_owned(),
        refresh_token: Some(format!("rt.{}", b64::encode(&[7u8; 48]))),
        expires_at: now + 3600,
        obtained_at: now,
        started_at: now,
        subject: Some("user:alice".into()),
    };
    session.seal(keys, now, POLICY).unwrap()
}

/// A sidecar with sessions on `/items/**` in front of an app on `app`.
async fn sidecar(jwk: &serde_json::Value, app: SocketAddr, dir: &std::path::Path) -> SocketAddr {
    let keys_path = dir.join("session-keys.json");
    let ca = rcgen::generate_simple_self_signed(vec!["auth.shop.svc".into()]).unwrap();
    let config = json!({
        "apiVersion": "sidecar.scopegate.dev/v2",
        "policy": {"namespace": "bench", "name": "portal", "generation": 1},
        "listen": {"port": 0},
        "upstream": {"port": app.port()},
        "verify": {"issuers": [{"issuer": ISSUER, "keys": {"type": "static", "jwks": {"keys": [jwk]}}}],
            "audiences": ["orders"], "leewaySecs": 30},
        "rules": [{"paths": ["/items/**"], "action": {"type": "requireAll", "scopes": ["read:items"]}}],
        "caBundlePem": ca.cert.pem(),
        "sessions": {
            "issuer": ISSUER,
            "authorizationEndpoint": format!("{ISSUER}/oauth2/authorize"),
            "tokenEndpoint": format!("{ISSUER}/oauth2/token"),
            "revocationEndpoint": format!("{ISSUER}/oauth2/revoke"),
            "clientId": "shop.portal", "tokenAudience": ISSUER,
            "assertionPath": dir.join("token"),
            "redirectUri": "https://portal.example/.scopegate/callback",
            "paths": ["/items/**"], "scopes": ["read:items"], "audience": "orders",
            "afterLogout": "/", "maxLifetimeSecs": 86400,
            "keysPath": keys_path
        }
    });
    let text = config.to_string();
    let input = CompileInput {
        clients_text: None,
        config_text: &text,
        signing_keys_text: None,
        now: scopegate_sidecar_kit::unix_now(),
        tls: false,
    };
    let compiled = settings::compile(
        &input,
        &mut |spec| scopegate_verifier::remote_keys::RemoteKeySet::new(spec),
        None,
    )
    .unwrap();
    let shared = Shared::new(compiled, None, None, Default::default(), Default::default());
    assert!(shared.sessions.keys().is_some(), "the session keys load");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    // The bench runs until the process ends.
    std::mem::forget(stop);
    tokio::spawn(scopegate_verifier::server::serve_proxy(
        listener,
        None,
        shared,
        shutdown,
        Duration::from_secs(1),
    ));
    addr
}

/// The app: 200 with a short body to every request.
async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type Http = Client<HttpConnector, Empty<Bytes>>;

/// One GET of `/items/1` with `headers`; the status.
async fn get(client: &Http, addr: SocketAddr, headers: &[(&str, &str)]) -> u16 {
    let mut request = hyper::Request::get(format!("http://{addr}/items/1"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .header("accept", "text/html")
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await.unwrap();
    status
}

/// Rounds of the interleaved comparison, and requests of each case per round.
const INTERLEAVED_ROUNDS: usize = 40;
const INTERLEAVED_REQUESTS: u32 = 500;

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("scopegate-session-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys_text =
        json!({"keys": [{"id": "k1", "secret": b64::encode(&[42u8; 32]), "createdAt": 0}]})
            .to_string();
    std::fs::write(dir.join("session-keys.json"), &keys_text).unwrap();
    let keys = Keyring::parse(&keys_text).unwrap();
    let signer = Signer::new();
    let token = signer.token("user:alice");
    let bearer = format!("Bearer {token}");
    let session = format!("{SESSION_COOKIE}={}", cookie(&keys, &token));
    let (addr, client) = runtime.block_on(async {
        let app = app().await;
        let addr = sidecar(&signer.jwk, app, &dir).await;
        let client: Http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build_http();
        // Both paths verified once: from here on, cache hits.
        assert_eq!(get(&client, addr, &[("authorization", &bearer)]).await, 200);
        assert_eq!(get(&client, addr, &[("cookie", &session)]).await, 200);
        (addr, client)
    });

    let mut group = c.benchmark_group("session");
    group.bench_function("bearer_request", |b| {
        b.iter(|| runtime.block_on(get(&client, addr, &[("authorization", black_box(&bearer))])))
    });
    group.bench_function("cookie_request", |b| {
        b.iter(|| runtime.block_on(get(&client, addr, &[("cookie", black_box(&session))])))
    });
    let value = cookie(&keys, &token);
    let now = scopegate_sidecar_kit::unix_now();
    group.bench_function("open_cookie", |b| {
        b.iter(|| Session::open(&keys, now, POLICY, black_box(&value)).unwrap())
    });
    group.finish();

    // The cases interleaved: criterion measures one after the other, so drift in the
    // machine's load between them shows up as a difference. Here each round times every case,
    // in an order that rotates, and each case is taken relative to the bearer request of the
    // same round. The two middle cases split up what the cookie costs: the bearer request
    // with a header as long as the cookie (its bytes alone, forwarded to the app), and with
    // the cookie itself beside the bearer header (read and stripped, never opened: the
    // bearer header wins).
    let padding = "x".repeat(session.len());
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("bearer", &[("authorization", &bearer)]),
        (
            "bearer + a header of the cookie's length",
            &[("authorization", &bearer), ("x-padding", &padding)],
        ),
        (
            "bearer + the cookie, unopened",
            &[("authorization", &bearer), ("cookie", &session)],
        ),
        ("cookie", &[("cookie", &session)]),
    ];
    let mut times = vec![Vec::new(); cases.len()];
    for round in 0..INTERLEAVED_ROUNDS {
        for k in 0..cases.len() {
            let case = (round + k) % cases.len();
            let headers = cases[case].1;
            times[case].push(runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..INTERLEAVED_REQUESTS {
                    get(&client, addr, headers).await;
                }
                started.elapsed().as_secs_f64() * 1e6 / f64::from(INTERLEAVED_REQUESTS)
            }));
        }
    }
    println!(
        "interleaved: {INTERLEAVED_ROUNDS} rounds of {INTERLEAVED_REQUESTS} requests of each case, order rotating"
    );
    for (case, (name, _)) in cases.iter().enumerate() {
        let mut ratios: Vec<f64> = (times[case].iter().zip(&times[0]))
            .map(|(t, bearer)| t / bearer)
            .collect();
        let ratio = median(&mut ratios);
        println!(
            "  {name}: median {:.1} µs, / bearer median {ratio:.3} (lowest {:.3}, highest {:.3})",
            median(&mut times[case].clone()),
            ratios.first().copied().unwrap_or_default(),
            ratios.last().copied().unwrap_or_default(),
        );
    }

    // Memory: distinct sessions, each sent once. The verified-token cache (10,000 entries,
    // bounded) fills as it would with as many bearer tokens; the sessions add nothing.
    let before = rss_kib();
    let mut after = Vec::new();
    for round in 0..2 {
        runtime.block_on(async {
            for i in 0..10_000 {
                let token = signer.token(&format!("user:{round}-{i}"));
                let session = format!("{SESSION_COOKIE}={}", cookie(&keys, &token));
                assert_eq!(get(&client, addr, &[("cookie", &session)]).await, 200);
            }
        });
        after.push(rss_kib());
    }
    println!(
        "memory: RSS {before} KiB before, {} KiB after 10,000 sessions, {} KiB after 20,000",
        after[0], after[1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
