//! Token issuing cost: the raw signature aws-lc-rs makes, against the issuer's whole token
//! (key choice, claims JSON, base64url, signature), and client authentication (HTTP Basic
//! parsing plus the check against the hash prepared at registry load: the keyed hash of
//! generated secrets, and a cached argon2 success), and one rate-limit decision of the memory
//! store holding many revocations.
//! Targets (BENCHMARKS.md, "Issuer"): RS256 tokens/s ≥ 0.7× the raw signing rate; client
//! authentication ≤ 5 % of a token request's CPU.

#![allow(clippy::unwrap_used, missing_docs)] // bench set-up: a panic is the failure report

use std::collections::HashMap;
use std::hint::black_box;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use scopegate_core::clients::{AuthMethod, RegisteredClient, SecretHash};
use scopegate_core::config::SidecarConfig;
use scopegate_core::jose::b64;
use scopegate_core::secret_hash::{SecretKind, hash};
use scopegate_issuer::IssuerSettings;
use scopegate_issuer::access::{self, Grant};
use scopegate_issuer::assertion::ServiceAccountVerifier;
use scopegate_issuer::clients::{self, LoadedClient, SlowCache};
use scopegate_issuer::form::Form;
use scopegate_issuer::store::memory::MemoryStore;
use scopegate_issuer::store::{Budget, RateOp, RateStore, Revocation, Store};
use serde_json::json;

const ISSUER: &str = "https://auth.shop.svc.cluster.local";

struct Key {
    alg: &'static str,
    pkcs8: Vec<u8>,
    jwk: serde_json::Value,
}

fn keys() -> Vec<Key> {
    let es = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .unwrap()
        .to_pkcs8v1()
        .unwrap();
    let es_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, es.as_ref()).unwrap();
    let point = es_pair.public_key().as_ref().to_vec();
    let ed = Ed25519KeyPair::generate().unwrap();
    let rsa = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
    let rsa_der: Pkcs8V1Der = rsa.as_der().unwrap();
    let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
    vec![
        Key {
            alg: "ES256",
            pkcs8: es.as_ref().to_vec(),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..65])}),
        },
        Key {
            alg: "EdDSA",
            pkcs8: ed.to_pkcs8().unwrap().as_ref().to_vec(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(ed.public_key().as_ref())}),
        },
        Key {
            alg: "RS256",
            pkcs8: rsa_der.as_ref().to_vec(),
            jwk: json!({"kty": "RSA", "n": b64::encode(&components.n), "e": b64::encode(&components.e)}),
        },
    ]
}

fn settings(key: &Key) -> IssuerSettings {
    let now = scopegate_sidecar_kit::unix_now();
    let mut jwk = key.jwk.clone();
    jwk["kid"] = json!("k1");
    jwk["alg"] = json!(key.alg);
    let doc = json!({"keys": [{
        "kid": "k1", "alg": key.alg, "publishedAt": now - 10, "activatesAt": now - 10,
        "signsUntil": now + 86_400, "removedAfter": now + 90_000,
        "privateKey": STANDARD.encode(&key.pkcs8), "publicJwk": jwk
    }]});
    let config = json!({
        "apiVersion": "sidecar.scopegate.dev/v1",
        "policy": {"namespace": "b", "name": "b", "generation": 1},
        "listen": {"port": 0}, "upstream": {"port": 1},
        "verify": {"issuers": [], "audiences": [], "leewaySecs": 30},
        "issuer": {"url": ISSUER, "signingKeysPath": "-", "clientsPath": "-",
                   "accessTokenTtlSecs": 600, "refreshTokenTtlSecs": 3600, "codeTtlSecs": 60}
    });
    let config = SidecarConfig::from_json(&config.to_string()).unwrap();
    let role = config.issuer.clone().unwrap();
    IssuerSettings::compile(
        &config,
        &role,
        Some(&doc.to_string()),
        Some(r#"{"clients": []}"#),
        now,
    )
    .unwrap()
}

/// Signs a message.
type Sign = Box<dyn Fn(&[u8]) -> Vec<u8>>;

fn raw_signer(key: &Key) -> Sign {
    let rng = SystemRandom::new();
    match key.alg {
        "ES256" => {
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.pkcs8).unwrap();
            Box::new(move |m| pair.sign(&rng, m).unwrap().as_ref().to_vec())
        }
        "EdDSA" => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.pkcs8).unwrap();
            Box::new(move |m| pair.sign(m).as_ref().to_vec())
        }
        _ => {
            let pair = rsa::KeyPair::from_pkcs8(&key.pkcs8).unwrap();
            Box::new(move |m| {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, m, &mut sig)
                    .unwrap();
                sig
            })
        }
    }
}

fn issuing(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let aud = vec!["https://orders.example".to_owned()];
    let scope = vec!["read:items".to_owned(), "write:items".to_owned()];
    // The signing input of a typical token, for the raw signature.
    let message = vec![b'x'; 330];
    for key in keys() {
        let raw = raw_signer(&key);
        c.bench_function(&format!("raw_sign/{}", key.alg), |b| {
            b.iter(|| black_box(raw(black_box(&message))))
        });
        let settings = settings(&key);
        c.bench_function(&format!("issue_token/{}", key.alg), |b| {
            b.iter(|| {
                let now = scopegate_sidecar_kit::unix_now();
                let planned = access::plan(&settings, now, 600).unwrap();
                let grant = Grant {
                    sub: "shop.backend",
                    client_id: "shop.backend",
                    aud: &aud,
                    scope: &scope,
                    act: None,
                };
                black_box(planned.sign(ISSUER, &grant, &rng).unwrap())
            })
        });
    }
}

fn authentication(c: &mut Criterion) {
    let secret = "Zq0m3C5o1n8lq5aA6lqX5pQ7b3jX2nK9d4sT1uV8wY0";
    let client = |id: &str, kind| RegisteredClient {
        client_id: id.into(),
        public: false,
        auth_method: AuthMethod::ClientSecretBasic,
        secrets: vec![SecretHash {
            phc: hash(secret, kind).unwrap(),
            not_after: None,
            source: None,
        }],
        grant_types: vec!["client_credentials".into()],
        scopes: vec!["read:items".into()],
        default_scopes: vec!["read:items".into()],
        audiences: vec![],
        owned_audiences: vec![],
        redirect_uris: vec![],
        revoke_before: None,
        service_accounts: Vec::new(),
        token_exchange: None,
    };
    let registry: HashMap<String, LoadedClient> = [
        client("shop.backend", SecretKind::Generated),
        client("shop.human", SecretKind::Chosen),
    ]
    .into_iter()
    .map(|c| (c.client_id.clone(), LoadedClient::new(c)))
    .collect();
    let cache = SlowCache::default();
    let accounts = ServiceAccountVerifier::new(None, ISSUER, 30, std::iter::empty());
    let form = Form::parse(b"grant_type=client_credentials").unwrap();
    for (id, name) in [
        ("shop.backend", "generated_hmac"),
        ("shop.human", "argon2_cached"),
    ] {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        // The argon2 secret is checked once (off the async workers, as the issuer does) and
        // cached; the bench measures the requests after that.
        let presented = clients::presented(&headers, &form).unwrap();
        let now = scopegate_sidecar_kit::unix_now();
        if let clients::Verdict::Slow(slow) =
            clients::authenticate(&registry, &accounts, &presented, &cache, now).unwrap()
        {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let counters = scopegate_issuer::counters::Counters::default();
            let slots = tokio::sync::Semaphore::new(1);
            runtime
                .block_on(slow.run(
                    &cache,
                    &slots,
                    std::time::Duration::from_secs(60),
                    &counters,
                ))
                .unwrap();
        }
        c.bench_function(&format!("client_auth/{name}"), |b| {
            b.iter(|| {
                let presented = clients::presented(black_box(&headers), &form).unwrap();
                let now = scopegate_sidecar_kit::unix_now();
                match clients::authenticate(&registry, &accounts, &presented, &cache, now).unwrap()
                {
                    clients::Verdict::Authenticated(client) => black_box(client.client_id.len()),
                    clients::Verdict::Slow(_) => panic!("the secret was cached"),
                }
            })
        });
    }
}

/// One rate-limit decision of the memory store (a token request makes two) while it holds
/// 10,000 live jti revocations: the store's upkeep must not scale with the revocation log.
fn memory_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let now = scopegate_sidecar_kit::unix_now();
    let revoked = (0..10_000)
        .map(|i| Revocation::Jti {
            jti: format!("jti-{i}"),
            exp: now + 3600,
        })
        .collect();
    runtime.block_on(store.revoke(revoked, 30)).unwrap();
    // A budget that never runs out within a run (1 ms per request, ten hours of burst).
    let budget = Budget {
        requests: u32::MAX,
        period_ms: 36_000_000,
    };
    let keys = [
        ("token:a:4:7f000001".to_owned(), budget),
        ("token:c:shop.backend".to_owned(), budget),
    ];
    c.bench_function("memory_rate/10k_revocations", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(store.rate(RateOp::Admit, black_box(&keys)))
                    .unwrap()
                    .is_ok(),
            )
        })
    });
}

criterion_group!(benches, issuing, authentication, memory_store);
criterion_main!(benches);
