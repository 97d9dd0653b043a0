//! The egress handler's cost per call on a token cache hit, against the same forwarding
//! without the token step, and against the bare client: all to an app on loopback (plain
//! HTTP/1.1, kept-alive connections, a 2-byte answer), on one thread.
//!
//! - `client_direct`: the egress proxy's own upstream client sending the call to the app (no
//!   routing, no header work): the floor.
//! - `forward_without_token`: routing ([`Compiled::route`]) and [`forward::forward`] with a
//!   constant `Authorization` value: everything the handler does but the token step.
//! - `handle_cache_hit`: [`Egress::handle`]: routing, the token cache hit, forwarding,
//!   counters.
//! - `handle_obo_cache_hit`: [`Egress::handle`] for a target on behalf of the caller, the
//!   app forwarding an 800-byte caller's token: routing, reading the caller's token, its
//!   SHA-256, the exchange cache lookup, forwarding, counters.
//! - `token_cache_hit`, `obo_token_cache_hit` (the same caller's-token steps alone) and
//!   `route` alone, without I/O.

#![allow(clippy::unwrap_used)] // bench set-up: a panic is the failure report

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use scopegate_core::config::SidecarConfig;
use scopegate_egress::Egress;
use scopegate_egress::settings::Tokens;
use scopegate_egress::{exchange, forward};
use scopegate_sidecar_kit::body::{ProxyBody, full};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// Serves `answer` to every request on `ip`, over TLS when `tls` is given.
async fn serve(ip: &str, tls: Option<tokio_rustls::TlsAcceptor>, answer: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        answer.as_bytes(),
                    ))))
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        let stream = tls.accept(stream).await.unwrap();
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    port
}

/// A CA and a TLS server side for 127.0.0.1 signed by it: (CA PEM, acceptor).
fn operator_ca() -> (String, tokio_rustls::TlsAcceptor) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
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

/// An egress proxy with two in-cluster targets: orders with the pod's own token (the app on
/// 127.0.0.1:`app_port`), inventory on behalf of the caller (the app on 127.0.0.2:`obo_port`).
fn egress(
    ca_pem: &str,
    issuer_port: u16,
    (app_port, obo_port): (u16, u16),
    assertion: &std::path::Path,
) -> Arc<Egress> {
    let config: SidecarConfig = serde_json::from_value(json!({
        "apiVersion": "sidecar.scopegate.dev/v2",
        "policy": {"namespace": "shop", "name": "billing", "generation": 1},
        "listen": {"port": 15080},
        "upstream": {"port": 8080},
        "verify": {"issuers": [], "audiences": ["billing"], "leewaySecs": 30},
        "caBundlePem": ca_pem,
        "egress": {
            "port": 15081,
            "tokenEndpoint": format!("https://127.0.0.1:{issuer_port}/oauth2/token"),
            "clientId": "shop.billing",
            "tokenAudience": "https://auth.shop.svc",
            "assertionPath": assertion,
            "targets": [{"name": "orders", "url": format!("http://127.0.0.1:{app_port}"),
                         "address": format!("127.0.0.1:{app_port}"),
                         "inCluster": true, "audience": "https://orders.shop.svc",
                         "scopes": ["read:orders"]},
                        {"name": "inventory", "url": format!("http://127.0.0.2:{obo_port}"),
                         "address": format!("127.0.0.2:{obo_port}"),
                         "inCluster": true, "audience": "https://inventory.shop.svc",
                         "scopes": ["read:items"], "onBehalfOfCaller": true}]
        }
    }))
    .unwrap();
    Egress::new(&config).unwrap().unwrap()
}

fn call(app_port: u16) -> Request<ProxyBody> {
    Request::get(format!("http://127.0.0.1:{app_port}/orders?id=7"))
        .header("accept", "application/json")
        .body(full(Bytes::new()))
        .unwrap()
}

/// A call to inventory, carrying the caller's token the app received.
fn obo_call(obo_port: u16, caller: &HeaderValue) -> Request<ProxyBody> {
    Request::get(format!("http://127.0.0.2:{obo_port}/items?order=7"))
        .header("accept", "application/json")
        .header("authorization", caller.clone())
        .body(full(Bytes::new()))
        .unwrap()
}

async fn drain(response: Response<ProxyBody>) -> usize {
    assert_eq!(response.status(), 200);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("scopegate-egress-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let assertion = dir.join("token");
    // A projected token's shape, for the issuer the config names.
    let claims = scopegate_core::jose::b64::encode(br#"{"aud":"https://auth.shop.svc"}"#);
    let header = scopegate_core::jose::b64::encode(br#"{"alg":"RS256","kid":"k"}"#);
    std::fs::write(&assertion, format!("{header}.{claims}.c2ln\n")).unwrap();
    let (ca_pem, acceptor) = operator_ca();
    let token = r#"{"access_token":"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzaG9wLmJpbGxpbmcifQ.c2lnbmF0dXJl","token_type":"Bearer","expires_in":3600}"#;
    let (issuer_port, app_port, obo_port) = rt.block_on(async {
        (
            serve("127.0.0.1", Some(acceptor), token).await,
            serve("127.0.0.1", None, "ok").await,
            serve("127.0.0.2", None, "ok").await,
        )
    });
    let egress = egress(&ca_pem, issuer_port, (app_port, obo_port), &assertion);
    // A caller's ES256 access token is 600 to 900 bytes: 800 here.
    let caller = HeaderValue::from_str(&format!("Bearer eyJ{}.c2ln", "x".repeat(790))).unwrap();
    // The first call buys the token; every measured call is a cache hit.
    let first = rt.block_on(async { drain(egress.handle(call(app_port)).await).await });
    assert_eq!(first, 2);
    let first =
        rt.block_on(async { drain(egress.handle(obo_call(obo_port, &caller)).await).await });
    assert_eq!(first, 2);
    let compiled = egress.in_force().unwrap();
    let obo_req = obo_call(obo_port, &caller);
    let obo_target = compiled.route(&obo_req).unwrap();
    let Tokens::OnBehalfOfCaller(obo_key) = &obo_target.tokens else {
        panic!("inventory is on behalf of the caller")
    };
    let target = compiled.route(&call(app_port)).unwrap();
    assert!(target.own_slot().unwrap().fresh(Instant::now()).is_some());

    let mut group = c.benchmark_group("egress");
    group.bench_function("client_direct", |b| {
        b.iter(|| {
            run(&rt, async {
                drain(
                    compiled
                        .in_cluster
                        .request(call(app_port))
                        .await
                        .unwrap()
                        .map(|b| b.boxed()),
                )
                .await
            })
        })
    });
    let constant = HeaderValue::from_static("Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln");
    group.bench_function("forward_without_token", |b| {
        b.iter(|| {
            run(&rt, async {
                let req = call(app_port);
                let target = compiled.route(&req).unwrap();
                let response = forward::forward(&compiled, target, req, constant.clone());
                drain(response.await.unwrap()).await
            })
        })
    });
    group.bench_function("handle_cache_hit", |b| {
        b.iter(|| {
            run(&rt, async {
                drain(egress.handle(call(app_port)).await).await
            })
        })
    });
    group.bench_function("handle_obo_cache_hit", |b| {
        b.iter(|| {
            run(&rt, async {
                drain(egress.handle(obo_call(obo_port, &caller)).await).await
            })
        })
    });
    let req = call(app_port);
    group.bench_function("route", |b| {
        b.iter(|| black_box(compiled.route(black_box(&req)).is_ok()))
    });
    group.bench_function("token_cache_hit", |b| {
        b.iter(|| black_box(target.own_slot().unwrap().fresh(Instant::now())))
    });
    group.bench_function("obo_token_cache_hit", |b| {
        b.iter(|| {
            let subject = exchange::caller_token(black_box(obo_req.headers())).unwrap();
            let slot = compiled.exchanges.slot(obo_key, subject);
            black_box(slot.fresh(Instant::now()))
        })
    });
    assert_eq!(
        compiled.exchanges.len(),
        1,
        "every measured call was a cache hit"
    );
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn run<F: std::future::Future<Output = usize>>(rt: &Runtime, work: F) -> usize {
    black_box(rt.block_on(work))
}

criterion_group!(benches, bench);
criterion_main!(benches);
