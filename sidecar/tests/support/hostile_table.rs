//! The hostile-request table: broken and malicious requests with the status and
//! `WWW-Authenticate` the sidecar must answer. Shared by the sidecar's own test
//! (tests/hostile.rs), its dry-run test, and the CLI's differential `explain` test, so that
//! every consumer holds the same cases against the same config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::signature;
use scopegate_core::jose::b64;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::*;

pub const NO_CREDS: Option<&str> = Some("Bearer realm=\"scopegate\"");
pub const INVALID_TOKEN: Option<&str> = Some("Bearer realm=\"scopegate\", error=\"invalid_token\"");
pub const INVALID_REQUEST: Option<&str> =
    Some("Bearer realm=\"scopegate\", error=\"invalid_request\"");

pub fn scope_challenge(scopes: &str) -> String {
    format!("Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"{scopes}\"")
}

/// A loopback listener that counts connections: a `jku`/`x5u` the sidecar fetched would
/// show up here.
pub async fn trap() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        }
    });
    (addr, count)
}

/// One request of the table and the answer it must get (a 200 reaches the app).
pub struct Case {
    pub name: String,
    pub method: &'static str,
    pub target: String,
    pub headers: Vec<(&'static str, String)>,
    pub status: u16,
    pub challenge: Option<String>,
}

impl Case {
    /// The request as raw HTTP/1.1 bytes.
    pub fn request(&self) -> Vec<u8> {
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n",
            self.method, self.target
        );
        for (k, v) in &self.headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    }
}

fn case(
    name: &str,
    target: &str,
    headers: &[(&'static str, String)],
    status: u16,
    challenge: Option<&str>,
) -> Case {
    Case {
        name: name.into(),
        method: "GET",
        target: target.into(),
        headers: headers.to_vec(),
        status,
        challenge: challenge.map(Into::into),
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {token}"))]
}

fn token_case(name: &str, token: &str, status: u16, challenge: Option<&str>) -> Case {
    case(name, "/items/1", &bearer(token), status, challenge)
}

/// The config the table runs against and its cases.
pub struct Table {
    pub config: Value,
    pub cases: Vec<Case>,
}

/// Builds the table against an app on `upstream_port`; `jku`/`x5u` headers point at `trap`,
/// a listener the caller counts connections on.
pub fn hostile_table(upstream_port: u16, trap: SocketAddr) -> Table {
    let (es, es_pkcs8) = SigningKey::es256();
    let rsa = SigningKey::rs256();
    let (attacker, _) = SigningKey::es256();
    let (other_issuer_key, _) = SigningKey::es256();
    let mut cfg = config(
        upstream_port,
        json!({"keys": [es.jwk("k1", Some("ES256")), rsa.jwk("rsa1", Some("RS256"))]}),
    );
    // A second issuer whose key has the same kid: its key must never verify issuer 1's tokens.
    cfg["verify"]["issuers"].as_array_mut().unwrap().push(json!({
        "issuer": "https://other.issuer",
        "keys": {"type": "static", "jwks": {"keys": [other_issuer_key.jwk("k1", Some("ES256"))]}}
    }));

    let good = |claims: &Value| mint(&es, &header("ES256", "k1"), claims);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims("read:items");
        edit(&mut c);
        good(&c)
    };
    let valid = good(&claims("read:items"));
    let now = now();
    let mut cases = vec![
        case("no credentials", "/items/1", &[], 401, NO_CREDS),
        case(
            "basic instead of bearer",
            "/items/1",
            &[("Authorization", "Basic dTpw".into())],
            401,
            NO_CREDS,
        ),
        case(
            "empty bearer",
            "/items/1",
            &[("Authorization", "Bearer".into())],
            400,
            INVALID_REQUEST,
        ),
        case(
            "bearer with a quote",
            "/items/1",
            &[("Authorization", "Bearer a\"b.c.d".into())],
            400,
            INVALID_REQUEST,
        ),
        case(
            "two authorization headers",
            "/items/1",
            &[
                ("Authorization", format!("Bearer {valid}")),
                ("Authorization", format!("Bearer {valid}")),
            ],
            400,
            INVALID_REQUEST,
        ),
        case(
            "token in header and query",
            &format!("/items/1?access_token={valid}"),
            &bearer(&valid),
            400,
            INVALID_REQUEST,
        ),
        case(
            "token only in the query",
            &format!("/items/1?access_token={valid}"),
            &[],
            401,
            NO_CREDS,
        ),
        case(
            "padding inside the token",
            "/items/1",
            &bearer(&valid.replacen('.', "==.", 1)),
            400,
            INVALID_REQUEST,
        ),
    ];
    for none in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": none, "kid": "k1", "typ": "at+jwt"}).to_string();
        let unsigned = format!(
            "{}.",
            signing_input(&header, claims("read:items").to_string().as_bytes())
        );
        cases.push(token_case(
            &format!("alg {none}, empty signature"),
            &unsigned,
            401,
            INVALID_TOKEN,
        ));
        cases.push(token_case(
            &format!("alg {none}, some signature"),
            &format!("{unsigned}AAAA"),
            401,
            INVALID_TOKEN,
        ));
    }
    let hs_confusion = mint(
        &SigningKey::hs256(&es.public_bytes()),
        &header("HS256", "k1"),
        &claims("read:items"),
    );
    let hs_rsa = mint(
        &SigningKey::hs256(&rsa.public_bytes()),
        &header("HS256", "rsa1"),
        &claims("read:items"),
    );
    let jku = mint(
        &attacker,
        &json!({"alg": "ES256", "kid": "evil", "typ": "at+jwt", "jku": format!("http://{trap}/jwks.json")}),
        &claims("read:items"),
    );
    let x5u = mint(
        &attacker,
        &json!({"alg": "ES256", "kid": "evil", "typ": "at+jwt", "x5u": format!("http://{trap}/cert.pem")}),
        &claims("read:items"),
    );
    let embedded = mint(
        &attacker,
        &json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt", "jwk": attacker.jwk("k1", Some("ES256"))}),
        &claims("read:items"),
    );
    let sig_of = |t: &str| t.rsplit_once('.').unwrap().1.to_owned();
    let body_of = |t: &str| t.rsplit_once('.').unwrap().0.to_owned();
    let der = mint(
        &SigningKey::es256_der(&es_pkcs8),
        &header("ES256", "k1"),
        &claims("read:items"),
    );
    let rsa_as_pss = mint(
        &rsa.same_rsa_key(&signature::RSA_PSS_SHA256),
        &header("PS256", "rsa1"),
        &claims("read:items"),
    );
    let token_cases: Vec<(&str, String, u16, Option<String>)> = vec![
        ("valid token", valid.clone(), 200, None),
        ("valid RS256 token", mint(&rsa, &header("RS256", "rsa1"), &claims("read:items")), 200, None),
        ("HS256 signed with the EC public key", hs_confusion, 401, INVALID_TOKEN.map(Into::into)),
        ("HS256 signed with the RSA public key", hs_rsa, 401, INVALID_TOKEN.map(Into::into)),
        ("ES256 key, header alg ES384", mint(&es, &header("ES384", "k1"), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("RS256 key, header alg PS256", rsa_as_pss, 401, INVALID_TOKEN.map(Into::into)),
        ("unknown kid", mint(&es, &header("ES256", "nope"), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("kid path traversal", mint(&es, &header("ES256", "../../../../dev/null"), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("kid SQL injection", mint(&es, &header("ES256", "x' UNION SELECT '1"), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("kid too long", mint(&es, &header("ES256", &"k".repeat(300)), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("jku to an attacker JWKS", jku, 401, INVALID_TOKEN.map(Into::into)),
        ("x5u to an attacker certificate", x5u, 401, INVALID_TOKEN.map(Into::into)),
        ("embedded attacker jwk", embedded, 401, INVALID_TOKEN.map(Into::into)),
        (
            "unknown crit",
            mint(&es, &json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt", "crit": ["bork"], "bork": 1}), &claims("read:items")),
            401,
            INVALID_TOKEN.map(Into::into),
        ),
        ("expired", with(&|c| c["exp"] = json!(now - 120)), 401, INVALID_TOKEN.map(Into::into)),
        ("expired within leeway passes", with(&|c| c["exp"] = json!(now - 5)), 200, None),
        ("nbf ahead", with(&|c| c["nbf"] = json!(now + 3600)), 401, INVALID_TOKEN.map(Into::into)),
        ("iat far ahead", with(&|c| c["iat"] = json!(now + 3600)), 401, INVALID_TOKEN.map(Into::into)),
        ("wrong iss", with(&|c| c["iss"] = json!("https://evil.example")), 401, INVALID_TOKEN.map(Into::into)),
        ("iss with trailing slash", with(&|c| c["iss"] = json!(format!("{ISSUER}/"))), 401, INVALID_TOKEN.map(Into::into)),
        ("iss as array", with(&|c| c["iss"] = json!(["https://evil.example", ISSUER])), 401, INVALID_TOKEN.map(Into::into)),
        ("other issuer's key, same kid", mint(&other_issuer_key, &header("ES256", "k1"), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("wrong aud", with(&|c| c["aud"] = json!("payments")), 401, INVALID_TOKEN.map(Into::into)),
        ("aud array without ours", with(&|c| c["aud"] = json!(["payments", "orders2"])), 401, INVALID_TOKEN.map(Into::into)),
        ("aud array with ours", with(&|c| c["aud"] = json!(["payments", AUDIENCE])), 200, None),
        ("empty aud array", with(&|c| c["aud"] = json!([])), 401, INVALID_TOKEN.map(Into::into)),
        ("missing exp", with(&|c| { c.as_object_mut().unwrap().remove("exp"); }), 401, INVALID_TOKEN.map(Into::into)),
        ("string exp", with(&|c| c["exp"] = json!((now + 600).to_string())), 401, INVALID_TOKEN.map(Into::into)),
        ("string nbf", with(&|c| c["nbf"] = json!("0")), 401, INVALID_TOKEN.map(Into::into)),
        ("float exp", with(&|c| c["exp"] = json!(1e308)), 401, INVALID_TOKEN.map(Into::into)),
        ("negative iat", with(&|c| c["iat"] = json!(-1)), 401, INVALID_TOKEN.map(Into::into)),
        ("missing jti", with(&|c| { c.as_object_mut().unwrap().remove("jti"); }), 401, INVALID_TOKEN.map(Into::into)),
        ("typ JWT", mint(&es, &json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("no typ", mint(&es, &json!({"alg": "ES256", "kid": "k1"}), &claims("read:items")), 401, INVALID_TOKEN.map(Into::into)),
        ("typ application/AT+JWT passes", mint(&es, &json!({"alg": "ES256", "kid": "k1", "typ": "application/AT+JWT"}), &claims("read:items")), 200, None),
        ("truncated signature", format!("{}.{}", body_of(&valid), &sig_of(&valid)[..40]), 401, INVALID_TOKEN.map(Into::into)),
        ("empty signature", format!("{}.", body_of(&valid)), 401, INVALID_TOKEN.map(Into::into)),
        ("flipped signature byte", {
            let mut sig = b64::decode(sig_of(&valid).as_bytes()).unwrap();
            sig[10] ^= 1;
            format!("{}.{}", body_of(&valid), b64::encode(&sig))
        }, 401, INVALID_TOKEN.map(Into::into)),
        ("DER-encoded ECDSA signature", der, 401, INVALID_TOKEN.map(Into::into)),
        ("extra segment", format!("{valid}.{}", sig_of(&valid)), 401, INVALID_TOKEN.map(Into::into)),
        ("JWE-shaped five segments", format!("{valid}.a.b"), 401, INVALID_TOKEN.map(Into::into)),
        ("padded signature", format!("{valid}="), 401, INVALID_TOKEN.map(Into::into)),
        ("standard-alphabet signature", {
            let mut sig = sig_of(&valid).replace('-', "+").replace('_', "/");
            if !sig.contains(['+', '/']) {
                // A signature without '-' or '_' reads the same in both alphabets.
                sig.replace_range(..1, "+");
            }
            format!("{}.{sig}", body_of(&valid))
        }, 401, INVALID_TOKEN.map(Into::into)),
        ("duplicate claim names", mint_raw(&es, &header("ES256", "k1").to_string(), format!(
            "{{\"iss\":\"{ISSUER}\",\"sub\":\"alice\",\"sub\":\"admin\",\"aud\":\"{AUDIENCE}\",\"exp\":{},\"iat\":{},\"jti\":\"j\",\"client_id\":\"web\",\"scope\":\"read:items\"}}",
            now + 600, now
        ).as_bytes()), 401, INVALID_TOKEN.map(Into::into)),
        ("duplicate alg in header", mint_raw(&es, r#"{"alg":"ES256","alg":"none","kid":"k1","typ":"at+jwt"}"#, claims("read:items").to_string().as_bytes()), 401, INVALID_TOKEN.map(Into::into)),
        ("non-UTF-8 claims", mint_raw(&es, &header("ES256", "k1").to_string(), b"{\"iss\":\"\xff\xfe\"}"), 401, INVALID_TOKEN.map(Into::into)),
        ("oversized token", format!("{}.{}", body_of(&valid), "A".repeat(10_000)), 401, INVALID_TOKEN.map(Into::into)),
        ("scope as array", with(&|c| c["scope"] = json!(["read:items"])), 401, INVALID_TOKEN.map(Into::into)),
        ("scope with double space", with(&|c| c["scope"] = json!("read:items  x")), 401, INVALID_TOKEN.map(Into::into)),
        ("empty scope", good(&claims("")), 403, Some(scope_challenge("read:items"))),
        ("prefix-only scope", good(&claims("read:items:all READ:ITEMS")), 403, Some(scope_challenge("read:items"))),
    ];
    for (name, token, status, challenge) in token_cases {
        cases.push(Case {
            challenge,
            ..token_case(name, &token, status, None)
        });
    }
    let reader = good(&claims("read:items"));
    for (name, target) in [
        ("dot-dot segment", "/items/../admin/x"),
        ("encoded dot-dot", "/items/%2e%2e/admin/x"),
        ("mixed encoded dot-dot", "/items/.%2E/admin/x"),
        ("double slash", "//admin/x"),
        ("encoded letters", "/%61dmin/x"),
    ] {
        cases.push(case(
            name,
            target,
            &bearer(&reader),
            403,
            Some(&scope_challenge("admin")),
        ));
    }
    for (name, target) in [
        ("encoded slash", "/items%2F..%2Fadmin/x"),
        ("encoded backslash", "/items/..%5Cadmin"),
        ("encoded NUL", "/items/x%00"),
        ("double-encoded dot-dot", "/items/%252e%252e/admin"),
        ("path parameter", "/admin;x=1/x"),
        ("malformed escape", "/items/%zz"),
    ] {
        cases.push(case(name, target, &bearer(&reader), 400, None));
    }
    cases.push(case(
        "denied route without token",
        "/secret",
        &[],
        401,
        NO_CREDS,
    ));
    cases.push(case(
        "denied route with a valid token",
        "/secret",
        &bearer(&reader),
        403,
        Some("Bearer realm=\"scopegate\", error=\"insufficient_scope\""),
    ));
    cases.push(case(
        "any-of route names the first alternative",
        "/reports/1",
        &bearer(&reader),
        403,
        Some(&scope_challenge("reports:read")),
    ));
    cases.push(case(
        "any-of route, second alternative",
        "/reports/1",
        &bearer(&good(&claims("admin"))),
        200,
        None,
    ));
    cases.push(case(
        "lower-case scheme",
        "/items/1",
        &[("Authorization", format!("bearer {reader}"))],
        200,
        None,
    ));

    Table { config: cfg, cases }
}
