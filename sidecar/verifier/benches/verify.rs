//! Token validation cost: the raw signature verification aws-lc-rs does, against the
//! sidecar's full validation (parse, strict JSON, key lookup, signature, claims) and the
//! verified-token cache hit. Targets (BENCHMARKS.md): full ≤ 1.2× raw for ES256, RS256 and
//! EdDSA; HS256 full ≤ 2 µs; cache hit ≤ 1 µs; a typical `when` condition adds ≤ 2 µs to a
//! cache hit.

#![allow(clippy::unwrap_used)] // bench set-up: a panic is the failure report

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey};
use aws_lc_rs::{hmac, rsa};
use criterion::{Criterion, criterion_group, criterion_main};
use scopegate_core::condition::RequestFacts;
use scopegate_core::config::{DefaultAction, RouteRule, RuleAction};
use scopegate_core::jose::b64;
use scopegate_core::jose::jws::KeyMap;
use scopegate_core::jose::keys::KeyEntry;
use scopegate_core::path::RequestPath;
use scopegate_core::policy::Policy;
use scopegate_core::token::{self, IssuerKeys, TokenRules};
use scopegate_verifier::settings::{self, CompileInput};
use scopegate_verifier::state::Shared;
use serde_json::json;

const ISSUER: &str = "https://auth.shop.svc.cluster.local";

/// Verifies a signature over a message.
type RawVerify = Box<dyn Fn(&[u8], &[u8]) -> bool>;
/// Signs a message.
type Sign = Box<dyn Fn(&[u8]) -> Vec<u8>>;

struct Case {
    name: &'static str,
    jwk: serde_json::Value,
    entry: KeyEntry,
    raw: RawVerify,
    sign: Sign,
    alg: &'static str,
}

fn token(case: &Case) -> String {
    token_with(case, json!({}))
}

/// A token of `case` with `extra` claims besides the usual ones.
fn token_with(case: &Case, extra: serde_json::Value) -> String {
    let now = scopegate_sidecar_kit::unix_now();
    let header = json!({"alg": case.alg, "kid": "k1", "typ": "at+jwt"});
    let mut claims = json!({
        "iss": ISSUER, "sub": "user-1234567890", "aud": "orders", "exp": now + 3600,
        "iat": now, "nbf": now, "jti": "5f0c2a4e-8d6b-4b7e-9a51-0c7d1f3e2b11",
        "client_id": "storefront-web", "scope": "read:items write:items read:orders"
    });
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes())
    );
    let sig = (case.sign)(input.as_bytes());
    format!("{input}.{}", b64::encode(&sig))
}

fn cases() -> Vec<Case> {
    let rng = SystemRandom::new();
    let es = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = es.public_key().as_ref().to_vec();
    let es_parsed = ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point).unwrap();
    let es_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..])});

    let rsa_key = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
    let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa_key.public_key());
    let rsa_parsed = components
        .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
        .unwrap();
    let rsa_jwk = json!({"kty": "RSA", "kid": "k1", "alg": "RS256",
        "n": b64::encode(&components.n), "e": b64::encode(&components.e)});

    let ed = Ed25519KeyPair::generate().unwrap();
    let ed_public = ed.public_key().as_ref().to_vec();
    let ed_parsed = ParsedPublicKey::new(&signature::ED25519, &ed_public).unwrap();
    let ed_jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
        "x": b64::encode(&ed_public)});

    let secret = [42u8; 32];
    let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    let hmac_verify = hmac_key.clone();

    let from_jwk = |jwk: &serde_json::Value| {
        KeyEntry::from_jwk(&serde_json::from_value(jwk.clone()).unwrap(), None).unwrap()
    };
    vec![
        Case {
            name: "ES256",
            entry: from_jwk(&es_jwk),
            jwk: es_jwk,
            raw: Box::new(move |m, s| es_parsed.verify_sig(m, s).is_ok()),
            sign: Box::new(move |m| es.sign(&rng, m).unwrap().as_ref().to_vec()),
            alg: "ES256",
        },
        Case {
            name: "RS256",
            entry: from_jwk(&rsa_jwk),
            jwk: rsa_jwk,
            raw: Box::new(move |m, s| rsa_parsed.verify_sig(m, s).is_ok()),
            sign: Box::new(move |m| {
                let mut sig = vec![0; rsa_key.public_modulus_len()];
                rsa_key
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &SystemRandom::new(),
                        m,
                        &mut sig,
                    )
                    .unwrap();
                sig
            }),
            alg: "RS256",
        },
        Case {
            name: "EdDSA",
            entry: from_jwk(&ed_jwk),
            jwk: ed_jwk,
            raw: Box::new(move |m, s| ed_parsed.verify_sig(m, s).is_ok()),
            sign: Box::new(move |m| ed.sign(m).as_ref().to_vec()),
            alg: "EdDSA",
        },
        Case {
            name: "HS256",
            entry: KeyEntry::hs256("k1", &secret).unwrap(),
            jwk: json!(null),
            raw: Box::new(move |m, s| hmac::verify(&hmac_verify, m, s).is_ok()),
            sign: Box::new(move |m| hmac::sign(&hmac_key, m).as_ref().to_vec()),
            alg: "HS256",
        },
    ]
}

/// A compiled sidecar state trusting one ES256 key, for the cache-hit path.
fn shared_with(jwk: &serde_json::Value) -> Arc<Shared> {
    shared_with_rules(jwk, json!([]))
}

/// [`shared_with`], with route `rules`.
fn shared_with_rules(jwk: &serde_json::Value, rules: serde_json::Value) -> Arc<Shared> {
    let config = json!({
        "apiVersion": "sidecar.scopegate.dev/v1",
        "policy": {"namespace": "bench", "name": "bench", "generation": 1},
        "listen": {"port": 0},
        "upstream": {"port": 1},
        "verify": {"issuers": [{"issuer": ISSUER, "keys": {"type": "static", "jwks": {"keys": [jwk]}}}],
            "audiences": ["orders"], "leewaySecs": 30},
        "rules": rules
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
    Shared::new(compiled, None, None, Default::default(), Default::default())
}

/// Polls a future that completes without waiting (a cache hit does).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("a cache hit must not wait"),
    }
}

fn bench(c: &mut Criterion) {
    let rules = TokenRules {
        audiences: vec!["orders".into()],
        leeway_secs: 30,
        max_token_bytes: 8192,
        keep_claims: false,
        kept_claims: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    for case in cases() {
        let token = token(&case);
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = b64::decode(sig.as_bytes()).unwrap();
        let mut group = c.benchmark_group(case.name);
        group.bench_function("raw_verify", |b| {
            b.iter(|| assert!((case.raw)(black_box(input.as_bytes()), black_box(&sig))))
        });
        let keys = IssuerKeys {
            keys: Arc::new(KeyMap::from([("k1".to_owned(), case.entry)])),
            allow_jwt_typ: false,
            scopes: None,
            audiences: None,
        };
        let now = scopegate_sidecar_kit::unix_now();
        group.bench_function("full_validation", |b| {
            b.iter(|| {
                token::validate(
                    black_box(&token),
                    &rules,
                    |iss| (iss == ISSUER).then(|| keys.clone()),
                    now,
                )
                .unwrap()
            })
        });
        if case.name == "ES256" {
            let shared = shared_with(&case.jwk);
            let settings = shared.settings.load_full();
            ready(scopegate_verifier::verify::verify(
                &shared,
                &settings,
                &token,
                shared.cache.epoch(),
            ))
            .unwrap();
            group.bench_function("cache_hit", |b| {
                b.iter(|| {
                    ready(scopegate_verifier::verify::verify(
                        &shared,
                        &settings,
                        black_box(&token),
                        shared.cache.epoch(),
                    ))
                    .unwrap()
                })
            });
        }
        group.finish();
    }
}

/// The rules of a typical policy: a dozen routes, public and scoped, some by method.
fn typical_policy() -> Policy {
    let rule = |methods: &[&str], paths: &[&str], action: RuleAction| RouteRule {
        name: None,
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        action,
        enforcement: None,
        when: None,
    };
    let scopes = |s: &[&str]| RuleAction::RequireAll {
        scopes: s.iter().map(|x| (*x).to_owned()).collect(),
    };
    let rules = vec![
        rule(&["GET"], &["/healthz", "/readyz"], RuleAction::Public),
        rule(&[], &["/login", "/static/**"], RuleAction::Public),
        rule(&["GET"], &["/v1/items/**"], scopes(&["read:items"])),
        rule(
            &["POST", "PUT", "DELETE"],
            &["/v1/items/**"],
            scopes(&["write:items"]),
        ),
        rule(
            &["GET"],
            &["/v1/orders", "/v1/orders/*"],
            scopes(&["read:orders"]),
        ),
        rule(
            &["POST"],
            &["/v1/orders", "/v1/orders:batchCancel"],
            scopes(&["write:orders"]),
        ),
        rule(&[], &["/v1/orders/*/items/**"], scopes(&["read:orders"])),
        rule(&[], &["/admin/**"], scopes(&["admin"])),
        rule(
            &[],
            &["/v1/reports/**"],
            RuleAction::RequireAny {
                scope_sets: vec![vec!["reports:read".into()], vec!["admin".into()]],
            },
        ),
        rule(&[], &["/v1/me"], RuleAction::Authenticated),
    ];
    Policy::compile(&rules, DefaultAction::Deny).unwrap()
}

/// The per-request path work: normalising the request path and finding its rule.
fn bench_request_path(c: &mut Criterion) {
    let policy = typical_policy();
    let mut group = c.benchmark_group("request_path");
    for (name, raw) in [
        ("plain", "/v1/orders/8f2c61/items/3"),
        ("encoded", "/v1/orders/8f2c61%3Acancel/./items/%33"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let path = RequestPath::parse(black_box(raw)).unwrap();
                black_box(policy.route(black_box("GET"), path.route()).rule_index)
            })
        });
    }
    group.finish();
}

/// A typical `when` condition: group membership and a tenant claim against the path.
const WHEN: &str =
    r#""admins" in claims.groups && request.path.startsWith("/tenants/" + claims.tenant + "/")"#;

/// What a `when` condition adds to a cache-hit decision (BENCHMARKS.md: at most 2 µs).
fn bench_condition(c: &mut Criterion) {
    let Some(case) = cases().into_iter().find(|c| c.name == "ES256") else {
        panic!("no ES256 case");
    };
    let token = token_with(
        &case,
        json!({"groups": ["staff", "billing", "admins"], "tenant": "acme"}),
    );
    let rules = json!([{"name": "tenant", "paths": ["/tenants/**"],
        "action": {"type": "authenticated"}, "when": WHEN}]);
    let shared = shared_with_rules(&case.jwk, rules);
    let settings = shared.settings.load_full();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let verify = || {
        ready(scopegate_verifier::verify::verify(
            &shared,
            &settings,
            black_box(&token),
            shared.cache.epoch(),
        ))
    };
    verify().unwrap();
    let condition = settings.policy.condition(Some(0)).unwrap();
    let headers = http::HeaderMap::new();
    let facts = RequestFacts {
        method: "GET",
        path: "/tenants/acme/orders/7",
        headers: &headers,
        source: Some("10.1.2.3".parse().unwrap()),
    };
    let mut group = c.benchmark_group("condition");
    group.bench_function("cache_hit", |b| b.iter(|| verify().unwrap()));
    group.bench_function("cache_hit_and_condition", |b| {
        b.iter(|| {
            let verified = verify().unwrap();
            let claims = verified.claims.as_deref().unwrap();
            assert!(condition.evaluate(claims, black_box(&facts)).unwrap());
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench, bench_request_path, bench_condition
}
criterion_main!(benches);
