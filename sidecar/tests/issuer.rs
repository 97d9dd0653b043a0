//! The issuer role in-process over TLS on loopback: metadata and JWKS, every grant, the
//! authorization flow through the mint socket, revocation and introspection, the feed, the
//! mint interface, rate limits, key schedule limits, and the negative table of the token
//! endpoint.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use scopegate_issuer::IssuerTuning;
use scopegate_issuer::store::Budget;
use serde_json::{Value, json};
use support::issuer::*;
use support::*;

/// Budgets that a test's own failures never exhaust.
fn generous() -> IssuerTuning {
    IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            failed_address: Budget::per_secs(10_000, 60),
            failed_client: Budget::per_secs(10_000, 60),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn body(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_jwks_and_no_oidc_document() {
    let issuer = Issuer::start(Spec::default()).await;
    let r = issuer.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["issuer"], issuer.url);
    assert_eq!(
        doc["token_endpoint"],
        format!("{}/oauth2/token", issuer.url)
    );
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{}/oauth2/authorize", issuer.url)
    );
    assert_eq!(
        doc["jwks_uri"],
        format!("{}/.well-known/jwks.json", issuer.url)
    );
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["authorization_response_iss_parameter_supported"],
        json!(true)
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert!(
        !doc["introspection_endpoint_auth_methods_supported"]
            .to_string()
            .contains("none")
    );
    assert_eq!(
        doc["scopes_supported"],
        json!(["admin", "read:items", "write:items"])
    );
    let jwks = issuer.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert_eq!(
        jwks.header("content-type"),
        Some("application/jwk-set+json")
    );
    let max_age: i64 = jwks
        .header("cache-control")
        .unwrap()
        .strip_prefix("public, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((0..=60).contains(&max_age), "{max_age}");
    assert_eq!(jwks.json(), jwks_of(&issuer.keys));
    for private in ["\"d\"", "\"p\"", "\"q\"", "\"k\""] {
        assert!(!body(&jwks).contains(private));
    }
    // Not an OpenID provider: discovery answers 404 (a client probing it learns so), never
    // a Bearer challenge, whatever the request carries; a path below it is the app's.
    for request in [
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "HEAD /.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer forged\r\n\r\n",
        "GET /.well-known/%6fpenid-configuration HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let oidc = issuer.raw(request.as_bytes()).await;
        assert_eq!(oidc.status, 404, "{request}");
        assert!(oidc.header("www-authenticate").is_none(), "{request}");
    }
    let below = issuer
        .get("/.well-known/openid-configuration/elsewhere")
        .await;
    assert_eq!(below.status, 401, "the policy's rules, not the issuer");
    assert!(
        jwks.header("strict-transport-security").is_some(),
        "HSTS on TLS"
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_basic_post_and_argon2_secrets() {
    let issuer = Issuer::start(Spec::default()).await;
    let r = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "read:items", "default scopes");
    assert!(
        t.get("refresh_token").is_none(),
        "client_credentials issues no refresh token"
    );
    let token = t["access_token"].as_str().unwrap();
    let header = header_of(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    let c = claims_of(token);
    assert_eq!(c["iss"], issuer.url);
    assert_eq!(c["sub"], BACKEND.id);
    assert_eq!(c["client_id"], BACKEND.id);
    assert_eq!(c["aud"], json!([ORDERS, PAYMENTS]));
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert_eq!(c["nbf"], c["iat"]);
    assert_eq!(exp - iat, 600);
    assert_eq!(t["expires_in"].as_i64().unwrap(), 600);
    assert_eq!(c["jti"].as_str().unwrap().len(), 22);

    let r = issuer
        .token(
            &BACKEND,
            &format!(
                "grant_type=client_credentials&scope=write%3Aitems&resource={}",
                enc(PAYMENTS)
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let c = claims_of(r.json()["access_token"].as_str().unwrap());
    assert_eq!(
        (c["aud"].clone(), c["scope"].clone()),
        (json!(PAYMENTS), json!("write:items"))
    );
    let r = issuer.token(&POSTER, "grant_type=client_credentials").await;
    assert_eq!(r.status, 200, "{}", body(&r));
    for _ in 0..2 {
        let r = issuer.token(&HUMAN, "grant_type=client_credentials").await;
        assert_eq!(r.status, 200, "argon2 secret: {}", body(&r));
    }
    issuer.stop().await;
}

/// One row of the negative table: what is sent and what must come back.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    error: Option<&'static str>,
}

fn form_request(body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_negative_table() {
    let tuning = IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            failed_address: Budget::per_secs(1000, 60),
            failed_client: Budget::per_secs(1000, 60),
            ..Default::default()
        },
        ..Default::default()
    };
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let backend = basic(BACKEND.id, BACKEND.secret.unwrap());
    let web = basic(WEB.id, WEB.secret.unwrap());
    let auth = ("Authorization", backend.as_str());
    let big = format!("grant_type=client_credentials&pad={}", "a".repeat(20_000));
    let cases = vec![
        Case { name: "unknown client", request: form_request("grant_type=client_credentials", &[form, ("Authorization", &basic("shop.nobody", "x"))]), status: 401, error: Some("invalid_client") },
        Case { name: "wrong secret (basic)", request: form_request("grant_type=client_credentials", &[form, ("Authorization", &basic(BACKEND.id, "wrong"))]), status: 401, error: Some("invalid_client") },
        Case { name: "wrong secret (post)", request: form_request(&format!("grant_type=client_credentials&client_id={}&client_secret=wrong", POSTER.id), &[form]), status: 400, error: Some("invalid_client") },
        Case { name: "basic client using post", request: form_request(&format!("grant_type=client_credentials&client_id={}&client_secret={}", BACKEND.id, BACKEND.secret.unwrap()), &[form]), status: 400, error: Some("invalid_client") },
        Case { name: "no client authentication", request: form_request("grant_type=client_credentials", &[form]), status: 400, error: Some("invalid_client") },
        Case { name: "confidential client without secret", request: form_request(&format!("grant_type=client_credentials&client_id={}", BACKEND.id), &[form]), status: 400, error: Some("invalid_client") },
        Case { name: "two authentication methods", request: form_request(&format!("grant_type=client_credentials&client_secret={}", BACKEND.secret.unwrap()), &[form, auth]), status: 400, error: Some("invalid_request") },
        Case { name: "grant not allowed", request: form_request("grant_type=client_credentials", &[form, ("Authorization", &web)]), status: 400, error: Some("unauthorized_client") },
        Case { name: "password grant", request: form_request("grant_type=password&username=a&password=b", &[form, auth]), status: 400, error: Some("unsupported_grant_type") },
        Case { name: "missing grant_type", request: form_request("scope=read%3Aitems", &[form, auth]), status: 400, error: Some("invalid_request") },
        Case { name: "duplicated parameter", request: form_request("grant_type=client_credentials&grant_type=client_credentials", &[form, auth]), status: 400, error: Some("invalid_request") },
        Case { name: "duplicated scope", request: form_request("grant_type=client_credentials&scope=read%3Aitems&scope=write%3Aitems", &[form, auth]), status: 400, error: Some("invalid_request") },
        Case { name: "scope not allowed", request: form_request("grant_type=client_credentials&scope=read%3Aitems+admin", &[form, auth]), status: 400, error: Some("invalid_scope") },
        Case { name: "scope outside the vocabulary", request: form_request("grant_type=client_credentials&scope=unknown", &[form, auth]), status: 400, error: Some("invalid_scope") },
        Case { name: "resource not the client's", request: form_request("grant_type=client_credentials&resource=https%3A%2F%2Fevil.example", &[form, auth]), status: 400, error: Some("invalid_target") },
        Case { name: "wrong content type", request: form_request("{\"grant_type\":\"client_credentials\"}", &[("Content-Type", "application/json"), auth]), status: 400, error: Some("invalid_request") },
        Case { name: "no content type", request: form_request("grant_type=client_credentials", &[auth]), status: 400, error: Some("invalid_request") },
        Case { name: "oversized body", request: form_request(&big, &[form, auth]), status: 413, error: Some("invalid_request") },
        Case { name: "parameters in the query", request: b"POST /oauth2/token?grant_type=client_credentials HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n".to_vec(), status: 400, error: Some("invalid_request") },
        Case { name: "GET", request: b"GET /oauth2/token?grant_type=client_credentials HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), status: 405, error: Some("invalid_request") },
        Case { name: "code grant: unknown code", request: form_request(&format!("grant_type=authorization_code&code=nope&redirect_uri={}&code_verifier={VERIFIER}", enc(WEB_REDIRECT)), &[form, ("Authorization", &web)]), status: 400, error: Some("invalid_grant") },
        Case { name: "code grant: missing verifier", request: form_request(&format!("grant_type=authorization_code&code=nope&redirect_uri={}", enc(WEB_REDIRECT)), &[form, ("Authorization", &web)]), status: 400, error: Some("invalid_request") },
        Case { name: "code grant: short verifier", request: form_request(&format!("grant_type=authorization_code&code=nope&redirect_uri={}&code_verifier={}", enc(WEB_REDIRECT), "a".repeat(42)), &[form, ("Authorization", &web)]), status: 400, error: Some("invalid_request") },
        Case { name: "refresh grant: garbage token", request: form_request("grant_type=refresh_token&refresh_token=abc", &[form, ("Authorization", &web)]), status: 400, error: Some("invalid_grant") },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let r = issuer.raw(&case.request).await;
        let error = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        if r.status != case.status || error.as_deref() != case.error {
            failures.push(format!(
                "{}: got {} {:?}, want {} {:?}",
                case.name, r.status, error, case.status, case.error
            ));
        }
        if r.status == 401
            && r.header("www-authenticate")
                .is_none_or(|v| !v.starts_with("Basic "))
        {
            failures.push(format!("{}: 401 without a Basic challenge", case.name));
        }
        if r.header("cache-control") != Some("no-store") || r.header("pragma") != Some("no-cache") {
            failures.push(format!("{}: not marked no-store", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} negative token requests answered as RFC 6749 says",
        cases.len()
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_flow_with_pkce_refresh_rotation_and_replays() {
    let issuer = Issuer::start(Spec::default()).await;
    let state = "xyz &é=/?";
    let location = issuer
        .authorize(&web_query(state, None), "alice")
        .await
        .unwrap();
    assert!(
        location.starts_with(&format!("{WEB_REDIRECT}?code=")),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some(state),
        "state untouched"
    );
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(issuer.url.as_str()),
        "RFC 9207 iss"
    );
    let code = query_param(&location, "code").unwrap();

    // Wrong verifier and wrong redirect URI are refused without spending the code.
    let wrong = issuer
        .token(
            &WEB,
            &format!(
                "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
                enc(&code),
                enc(WEB_REDIRECT),
                "b".repeat(43)
            ),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.json()["error"].clone()),
        (400, json!("invalid_grant"))
    );
    let wrong = issuer
        .token(
            &WEB,
            &format!(
                "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}",
                enc(&code),
                enc("https://app.example/other")
            ),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.json()["error"].clone()),
        (400, json!("invalid_grant"))
    );

    let r = redeem(&issuer, &code).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let t = r.json();
    assert_eq!(
        t["scope"], "read:items",
        "default scopes when the request named none"
    );
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let c = claims_of(&access);
    assert_eq!(
        (c["sub"].clone(), c["client_id"].clone(), c["aud"].clone()),
        (json!("alice"), json!(WEB.id), json!(ORDERS))
    );
    assert_eq!(introspect(&issuer, &access).await["active"], true);

    // Refresh: rotation, narrowing allowed, escalation refused.
    let escalate = issuer
        .token(
            &WEB,
            &format!(
                "grant_type=refresh_token&refresh_token={}&scope=read%3Aitems+write%3Aitems",
                enc(&refresh)
            ),
        )
        .await;
    assert_eq!(
        (escalate.status, escalate.json()["error"].clone()),
        (400, json!("invalid_scope"))
    );
    let other_client = issuer
        .token(
            &BACKEND,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(other_client.json()["error"], "unauthorized_client");
    // Another client that may refresh (the public CLI authenticates with its client_id alone)
    // passes the grant-type check and reaches the family-ownership check.
    let other_client = issuer
        .token(
            &CLI,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(
        (other_client.status, other_client.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "{}",
        body(&other_client)
    );
    assert_eq!(
        introspect(&issuer, &access).await["active"],
        true,
        "another client's attempt revokes nothing"
    );
    let r = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let t2 = r.json();
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh, "rotated");
    assert_eq!(t2["scope"], "read:items");
    let access2 = t2["access_token"].as_str().unwrap().to_owned();

    // A stranger replaying the leaked code without the verifier, as another client or with
    // another redirect URI is refused and kills nothing: the user's session goes on.
    let code_request = |redirect: &str, verifier: &str| {
        format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={verifier}",
            enc(&code),
            enc(redirect)
        )
    };
    for (client, request) in [
        (&WEB, code_request(WEB_REDIRECT, &"s".repeat(43))),
        (&WEB, code_request("https://app.example/other", VERIFIER)),
        (&CLI, code_request(WEB_REDIRECT, VERIFIER)),
        (&CLI, code_request("http://127.0.0.1/callback", VERIFIER)),
    ] {
        let replay = issuer.token(client, &request).await;
        assert_eq!(
            (replay.status, replay.json()["error"].clone()),
            (400, json!("invalid_grant")),
            "{}: {request}",
            client.id
        );
        assert_eq!(
            introspect(&issuer, &access2).await["active"],
            true,
            "{}: {request} revoked the user's tokens",
            client.id
        );
    }

    // The code replayed by its client: refused, and what it issued (token and family) is
    // revoked.
    let replay = redeem(&issuer, &code).await;
    assert_eq!(
        (replay.status, replay.json()["error"].clone()),
        (400, json!("invalid_grant"))
    );
    assert_eq!(introspect(&issuer, &access).await, json!({"active": false}));
    assert_eq!(
        introspect(&issuer, &access2).await,
        json!({"active": false}),
        "tokens of the family too"
    );
    let after = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh2)),
        )
        .await;
    assert_eq!(
        after.json()["error"],
        "invalid_grant",
        "the family is revoked"
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_flow_with_loopback_redirect_and_its_limits() {
    let issuer = Issuer::start(Spec::default()).await;
    let redirect = "http://127.0.0.1:53211/callback";
    let query = format!(
        "response_type=code&client_id={}&redirect_uri={}&code_challenge={CHALLENGE}&code_challenge_method=S256",
        CLI.id,
        enc(redirect)
    );
    let location = issuer.authorize(&query, "bob").await.unwrap();
    assert!(
        location.starts_with(&format!("{redirect}?code=")),
        "any loopback port: {location}"
    );
    let code = query_param(&location, "code").unwrap();
    let r = issuer
        .token(
            &CLI,
            &format!(
                "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}",
                enc(&code),
                enc(redirect)
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let t = r.json();
    let (access, refresh) = (
        t["access_token"].as_str().unwrap(),
        t["refresh_token"].as_str().unwrap(),
    );
    let r = issuer
        .token(
            &CLI,
            &format!("grant_type=refresh_token&refresh_token={}", enc(refresh)),
        )
        .await;
    assert_eq!(r.status, 200, "public clients refresh: {}", body(&r));
    let public_introspection = issuer
        .post_as(
            "/oauth2/introspect",
            &CLI,
            &format!("token={}", enc(access)),
        )
        .await;
    assert_eq!(
        public_introspection.status, 401,
        "a public client at introspection"
    );
    assert_eq!(public_introspection.json()["error"], "invalid_client");
    let cc = issuer.token(&CLI, "grant_type=client_credentials").await;
    assert_eq!(cc.json()["error"], "unauthorized_client");
    let revoked = issuer
        .post_as("/oauth2/revoke", &CLI, &format!("token={}", enc(access)))
        .await;
    assert_eq!(
        revoked.status, 200,
        "public clients revoke their own tokens"
    );
    assert_eq!(introspect(&issuer, access).await["active"], false);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_request_errors_page_or_redirect() {
    let issuer = Issuer::start(Spec::default()).await;
    let base = |client: &str, redirect: &str| {
        format!(
            "response_type=code&client_id={}&redirect_uri={}&code_challenge={CHALLENGE}&code_challenge_method=S256&state=s1",
            enc(client),
            enc(redirect)
        )
    };
    // Never a redirect for an unknown client or an unregistered redirect URI.
    for query in [
        base("shop.nobody", WEB_REDIRECT),
        base(WEB.id, "https://evil.example/cb"),
        base(WEB.id, "https://app.example/cb/"),
        base(WEB.id, "https://app.example/cb#frag"),
        format!("{}&client_id=shop.web", base(WEB.id, WEB_REDIRECT)),
        // The attacker's second redirect_uri (the same one, or theirs): neither is trusted.
        format!(
            "{}&redirect_uri={}",
            base(WEB.id, WEB_REDIRECT),
            enc(WEB_REDIRECT)
        ),
        format!(
            "{}&redirect_uri={}",
            base(WEB.id, WEB_REDIRECT),
            enc("https://evil.example/cb")
        ),
        format!(
            "redirect_uri={}&{}",
            enc("https://evil.example/cb"),
            base(WEB.id, WEB_REDIRECT)
        ),
        base(CLI.id, "http://localhost:8000/callback"),
        // No redirect URI named, and the client registered none to fall back on.
        format!(
            "response_type=code&client_id={}&code_challenge={CHALLENGE}&code_challenge_method=S256",
            BACKEND.id
        ),
    ] {
        let r = issuer.get(&format!("/oauth2/authorize?{query}")).await;
        assert_eq!(r.status, 400, "{query}");
        assert!(r.header("location").is_none(), "{query}: no redirect");
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert!(
            r.header("content-security-policy")
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
    }
    // Everything else is redirected to the client with the error, the state and iss.
    let cases = [
        (
            base(WEB.id, WEB_REDIRECT).replace("S256", "plain"),
            "invalid_request",
        ),
        (
            base(WEB.id, WEB_REDIRECT).replace("&code_challenge_method=S256", ""),
            "invalid_request",
        ),
        (
            base(WEB.id, WEB_REDIRECT).replace(&format!("code_challenge={CHALLENGE}&"), ""),
            "invalid_request",
        ),
        (
            base(WEB.id, WEB_REDIRECT).replace("response_type=code", "response_type=token"),
            "unsupported_response_type",
        ),
        (
            format!("{}&scope=admin", base(WEB.id, WEB_REDIRECT)),
            "invalid_scope",
        ),
        (
            format!("{}&resource={}", base(WEB.id, WEB_REDIRECT), enc(PAYMENTS)),
            "invalid_target",
        ),
        // RFC 6749 §4.1.2.1: any other parameter given twice is the client's error to hear.
        (
            format!(
                "{}&scope=read%3Aitems&scope=admin",
                base(WEB.id, WEB_REDIRECT)
            ),
            "invalid_request",
        ),
        (
            format!("{}&response_type=token", base(WEB.id, WEB_REDIRECT)),
            "invalid_request",
        ),
        (
            format!("{}&code_challenge={CHALLENGE}", base(WEB.id, WEB_REDIRECT)),
            "invalid_request",
        ),
    ];
    for (query, error) in cases {
        let r = issuer.get(&format!("/oauth2/authorize?{query}")).await;
        assert_eq!(r.status, 303, "{query}");
        let location = r.header("location").unwrap();
        assert!(location.starts_with(WEB_REDIRECT), "{location}");
        assert_eq!(
            query_param(location, "error").as_deref(),
            Some(error),
            "{query}"
        );
        assert_eq!(query_param(location, "state").as_deref(), Some("s1"));
        assert_eq!(
            query_param(location, "iss").as_deref(),
            Some(issuer.url.as_str())
        );
    }
    // A repeated state: an invalid_request redirect that carries no state, since which one
    // is the client's cannot be told (the client then refuses the answer as unsolicited).
    let r = issuer
        .get(&format!(
            "/oauth2/authorize?{}&state=again",
            base(WEB.id, WEB_REDIRECT)
        ))
        .await;
    assert_eq!(r.status, 303);
    let location = r.header("location").unwrap();
    assert!(location.starts_with(WEB_REDIRECT), "{location}");
    assert_eq!(
        query_param(location, "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(query_param(location, "state"), None, "{location}");
    assert!(query_param(location, "code").is_none());
    // The app rejects a login: access_denied with the untouched state.
    let r = issuer
        .get(&format!("/oauth2/authorize?{}", base(WEB.id, WEB_REDIRECT)))
        .await;
    let challenge = r
        .header("location")
        .unwrap()
        .split_once("login_challenge=")
        .unwrap()
        .1
        .to_owned();
    let pending = issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    assert_eq!(pending.json()["client_id"], WEB.id);
    let rejected = issuer
        .mint(
            "POST",
            &format!("/v1/logins/{challenge}/reject"),
            Some(&json!({})),
        )
        .await;
    let to = rejected.json()["redirect_to"].as_str().unwrap().to_owned();
    assert_eq!(query_param(&to, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&to, "state").as_deref(), Some("s1"));
    let again = issuer
        .mint(
            "POST",
            &format!("/v1/logins/{challenge}/accept"),
            Some(&json!({"subject": "user:x"})),
        )
        .await;
    assert_eq!(again.status, 404, "a challenge is settled once");
    issuer.stop().await;
}

/// A container holding the mint socket can settle logins, but only for subjects the mint
/// rules allow, like a minted token: a login for another subject is refused and stays
/// pending, and nothing is issued for it.
#[tokio::test]
async fn a_login_for_a_subject_outside_mint_subjects_is_refused_and_stays_pending() {
    let issuer = Issuer::start(Spec::default()).await;
    let r = issuer
        .get(&format!("/oauth2/authorize?{}", web_query("s1", None)))
        .await;
    let challenge = r
        .header("location")
        .unwrap()
        .split_once("login_challenge=")
        .unwrap()
        .1
        .to_owned();
    for subject in ["admin:root", "user", "root:user:1"] {
        let refused = issuer
            .mint(
                "POST",
                &format!("/v1/logins/{challenge}/accept"),
                Some(&json!({"subject": subject})),
            )
            .await;
        assert_eq!(refused.status, 403, "{subject}");
        assert_eq!(refused.json()["error"], "access_denied", "{subject}");
    }
    let pending = issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    assert_eq!(pending.status, 200, "still pending");
    let accepted = issuer
        .mint(
            "POST",
            &format!("/v1/logins/{challenge}/accept"),
            Some(&json!({"subject": "user:alice"})),
        )
        .await;
    assert_eq!(accepted.status, 200);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_redemptions_of_one_code_make_one_token() {
    let issuer = std::sync::Arc::new(
        Issuer::start(Spec {
            tuning: generous(),
            ..Spec::default()
        })
        .await,
    );
    let code = web_code(&issuer, "alice").await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let issuer = issuer.clone();
            let code = code.clone();
            tokio::spawn(async move { redeem(&issuer, &code).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        49,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_get_grace_siblings_and_a_late_replay_revokes_the_family() {
    // The window is wide so that a loaded machine still fits the burst inside it (a burst that
    // overran it would fail the 200s below, not pass wrongly).
    let tuning = IssuerTuning {
        refresh_grace_ms: 5_000,
        ..IssuerTuning::default()
    };
    let issuer = std::sync::Arc::new(
        Issuer::start(Spec {
            tuning,
            ..Spec::default()
        })
        .await,
    );
    let first = redeem(&issuer, &web_code(&issuer, "alice").await)
        .await
        .json();
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let issuer = issuer.clone();
            let refresh = refresh.clone();
            tokio::spawn(async move {
                issuer
                    .token(
                        &WEB,
                        &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
                    )
                    .await
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", body(&r));
        tokens.push(r.json());
    }
    let generations: std::collections::BTreeSet<String> = tokens
        .iter()
        .map(|t| {
            t["refresh_token"]
                .as_str()
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        generations.len(),
        20,
        "one rotation and 19 siblings, each a distinct generation"
    );
    // Wait until the grace window has certainly passed (it opened at the first rotation,
    // before the burst ended), then replay the rotated token.
    let grace_end = Instant::now() + Duration::from_millis(5_100);
    tokio::time::sleep_until(grace_end.into()).await;
    let replay = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(
        (replay.status, replay.json()["error"].clone()),
        (400, json!("invalid_grant"))
    );
    for t in &tokens {
        let access = t["access_token"].as_str().unwrap();
        assert_eq!(
            introspect(&issuer, access).await,
            json!({"active": false}),
            "the family's tokens die"
        );
    }
    let sibling = issuer
        .token(
            &WEB,
            &format!(
                "grant_type=refresh_token&refresh_token={}",
                enc(tokens[3]["refresh_token"].as_str().unwrap())
            ),
        )
        .await;
    assert_eq!(
        sibling.json()["error"],
        "invalid_grant",
        "the family is revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_refresh_family_is_refused() {
    let issuer = Issuer::start(Spec {
        refresh_ttl: 1,
        ..Spec::default()
    })
    .await;
    let t = redeem(&issuer, &web_code(&issuer, "alice").await)
        .await
        .json();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let issued = now();
    eventually("the family to expire", Duration::from_secs(10), || async {
        (now() > issued + 1).then_some(())
    })
    .await;
    let r = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_grant"))
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_introspection() {
    let issuer = Issuer::start(Spec::default()).await;
    let t = redeem(&issuer, &web_code(&issuer, "carol").await)
        .await
        .json();
    let (access, refresh) = (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    );
    let info = introspect(&issuer, &access).await;
    let c = claims_of(&access);
    for claim in [
        "sub",
        "client_id",
        "exp",
        "iat",
        "nbf",
        "jti",
        "iss",
        "aud",
        "scope",
    ] {
        assert_eq!(info[claim], c[claim], "{claim}");
    }
    assert_eq!(info["token_type"], "Bearer");
    let rt = introspect(&issuer, &refresh).await;
    assert_eq!(
        (rt["active"].clone(), rt["token_type"].clone()),
        (json!(true), json!("refresh_token"))
    );
    // Another client's token: refused, not revoked.
    let foreign = issuer
        .post_as(
            "/oauth2/revoke",
            &BACKEND,
            &format!("token={}", enc(&access)),
        )
        .await;
    assert_eq!(
        (foreign.status, foreign.json()["error"].clone()),
        (400, json!("unauthorized_client"))
    );
    assert_eq!(introspect(&issuer, &access).await["active"], true);
    // Unknown and malformed tokens: 200.
    for token in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        let r = issuer
            .post_as("/oauth2/revoke", &WEB, &format!("token={}", enc(token)))
            .await;
        assert_eq!(r.status, 200, "{token}");
    }
    let unauthenticated = issuer
        .post("/oauth2/revoke", &format!("token={}", enc(&access)), &[])
        .await;
    assert_eq!(unauthenticated.json()["error"], "invalid_client");
    // Revoke the access token: introspection and the feed know.
    let r = issuer
        .post_as(
            "/oauth2/revoke",
            &WEB,
            &format!("token={}&token_type_hint=access_token", enc(&access)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(introspect(&issuer, &access).await, json!({"active": false}));
    assert_eq!(
        introspect(&issuer, &refresh).await["active"],
        true,
        "revoking an access token keeps the refresh token"
    );
    let feed = issuer.get("/oauth2/revocations").await;
    let page = claims_of(std::str::from_utf8(&feed.body).unwrap());
    assert_eq!(page["jtis"][0]["jti"], c["jti"]);
    // Revoke the refresh token: the family and its tokens.
    let fresh = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await
        .json();
    let refresh2 = fresh["refresh_token"].as_str().unwrap();
    let r = issuer
        .post_as(
            "/oauth2/revoke",
            &WEB,
            &format!("token={}&token_type_hint=refresh_token", enc(refresh2)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        introspect(&issuer, refresh2).await,
        json!({"active": false})
    );
    assert_eq!(
        introspect(&issuer, fresh["access_token"].as_str().unwrap()).await,
        json!({"active": false})
    );
    // Introspection: an unrelated caller sees nothing; a bad secret is refused.
    let cc = issuer
        .token(&POSTER, "grant_type=client_credentials")
        .await
        .json();
    let hidden = issuer
        .post_as(
            "/oauth2/introspect",
            &HUMAN,
            &format!("token={}", enc(cc["access_token"].as_str().unwrap())),
        )
        .await;
    assert_eq!(
        hidden.json(),
        json!({"active": false}),
        "not issued to the caller nor for its audience"
    );
    // POSTER may get tokens for ORDERS itself, but does not own it: it sees no other
    // client's token for ORDERS (a self-declared audience grants no introspection).
    let backend = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await
        .json();
    let not_owner = issuer
        .post_as(
            "/oauth2/introspect",
            &POSTER,
            &format!("token={}", enc(backend["access_token"].as_str().unwrap())),
        )
        .await;
    assert_eq!(
        not_owner.json(),
        json!({"active": false}),
        "an audience the caller may get is not one it owns"
    );
    let visible = introspect(&issuer, cc["access_token"].as_str().unwrap()).await;
    assert_eq!(
        visible["active"], true,
        "the resource server sees tokens for its audience"
    );
    let bad = issuer
        .post(
            "/oauth2/introspect",
            "token=x",
            &[("Authorization", &basic(ORDERS_RS.id, "wrong"))],
        )
        .await;
    assert_eq!(
        (bad.status, bad.json()["error"].clone()),
        (401, json!("invalid_client"))
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cutoffs_refuse_older_codes_families_and_tokens() {
    let mut spec = Spec::default();
    let issuer = Issuer::start(spec.clone()).await;
    let code = web_code(&issuer, "dave").await;
    let t = redeem(&issuer, &web_code(&issuer, "dave").await)
        .await
        .json();
    let issued = now();
    eventually("a second to pass", Duration::from_secs(5), || async {
        (now() > issued).then_some(())
    })
    .await;
    // The operator renders revokeBefore into the registry; the issuer reloads it.
    spec.web_revoke_before = Some(now());
    write_atomic(
        &issuer.dir.join("clients.json"),
        &registry(spec.web_revoke_before).to_string(),
    );
    let access = t["access_token"].as_str().unwrap().to_owned();
    eventually("the cut-off to apply", Duration::from_secs(10), || async {
        (introspect(&issuer, &access).await == json!({"active": false})).then_some(())
    })
    .await;
    let r = redeem(&issuer, &code).await;
    assert_eq!(r.json()["error"], "invalid_grant", "an older code");
    let r = issuer
        .token(
            &WEB,
            &format!(
                "grant_type=refresh_token&refresh_token={}",
                enc(t["refresh_token"].as_str().unwrap())
            ),
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_grant", "an older family");
    let fresh = redeem(&issuer, &web_code(&issuer, "dave").await).await;
    assert_eq!(fresh.status, 200, "new grants work");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_from_a_key_past_its_signs_until_and_exp_capped_by_removal() {
    let now = now();
    let stale =
        json!({"keys": [managed_key("ES256", "old", now - 600, now - 600, now - 10, now + 3000)]});
    let mut issuer = Issuer::start(Spec {
        keys: Some(stale),
        ..Spec::default()
    })
    .await;
    let r = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("temporarily_unavailable"))
    );
    assert!(r.header("retry-after").is_some());
    let feed = issuer.get("/oauth2/revocations").await;
    assert_eq!(
        feed.status, 503,
        "feed pages are not signed by a key past signs-until either"
    );
    // A key whose removal comes before the token lifetime caps exp at removal minus leeway.
    let capped =
        json!({"keys": [managed_key("ES256", "short", now - 60, now - 60, now + 3000, now + 300)]});
    issuer.set_keys(capped);
    let t = eventually("the new key to sign", Duration::from_secs(10), || async {
        let r = issuer
            .token(&BACKEND, "grant_type=client_credentials")
            .await;
        (r.status == 200).then(|| r.json())
    })
    .await;
    let c = claims_of(t["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap(), now + 300 - 30);
    assert_eq!(
        header_of(t["access_token"].as_str().unwrap())["kid"],
        "short"
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_signs_tokens_its_published_key_verifies() {
    for alg in ["ES256", "EdDSA", "RS256", "HS256"] {
        let issuer = Issuer::start(Spec {
            alg,
            ..Spec::default()
        })
        .await;
        let r = issuer
            .token(&BACKEND, "grant_type=client_credentials")
            .await;
        assert_eq!(r.status, 200, "{alg}: {}", body(&r));
        let token = r.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(header_of(&token)["alg"], alg);
        // The issuer's own verifier accepts it on a protected route of the same pod.
        let request = format!(
            "GET /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let through = issuer.raw(request.as_bytes()).await;
        assert_eq!(
            through.status, 502,
            "{alg}: the token passed and the (absent) app was asked"
        );
        if alg == "HS256" {
            assert_eq!(
                issuer.get("/.well-known/jwks.json").await.json(),
                json!({"keys": []}),
                "HS256 is never published"
            );
        }
        issuer.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_rate_limited_per_address_without_locking_the_client_out() {
    let tuning = IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            failed_address: Budget::per_secs(3, 60),
            failed_client: Budget::per_secs(5, 60),
            client: Budget::per_secs(4, 60),
            ..Default::default()
        },
        ..Default::default()
    };
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    let wrong = basic(BACKEND.id, "guess");
    let good = basic(BACKEND.id, BACKEND.secret.unwrap());
    let from = |ip: &'static str| ("X-Forwarded-For", ip);
    for _ in 0..3 {
        let r = issuer
            .post(
                "/oauth2/token",
                "grant_type=client_credentials",
                &[("Authorization", &wrong), from("203.0.113.7")],
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let blocked = issuer
        .post(
            "/oauth2/token",
            "grant_type=client_credentials",
            &[("Authorization", &good), from("203.0.113.7")],
        )
        .await;
    assert_eq!(blocked.status, 429, "the failing address is stopped");
    assert!(
        blocked
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let victim = issuer
        .post(
            "/oauth2/token",
            "grant_type=client_credentials",
            &[("Authorization", &good), from("198.51.100.1")],
        )
        .await;
    assert_eq!(
        victim.status,
        200,
        "the client itself is not locked out: {}",
        body(&victim)
    );
    // Failures for one client from many addresses: 429 for the failures, never for it.
    // Three failures counted for the client so far; its budget is five.
    for (i, ip) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
        let r = issuer
            .post(
                "/oauth2/token",
                "grant_type=client_credentials",
                &[("Authorization", &wrong), from(ip)],
            )
            .await;
        assert_eq!(r.status, if i < 2 { 401 } else { 429 }, "{ip}");
    }
    let still = issuer
        .post(
            "/oauth2/token",
            "grant_type=client_credentials",
            &[("Authorization", &good), from("198.51.100.2")],
        )
        .await;
    assert_eq!(still.status, 200);
    // Successes per client_id.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let ip = format!("198.51.100.{}", 10 + i);
        statuses.push(
            issuer
                .post(
                    "/oauth2/token",
                    "grant_type=client_credentials",
                    &[("Authorization", &good), ("X-Forwarded-For", &ip)],
                )
                .await
                .status,
        );
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mint_socket_mints_within_the_rules_and_sets_subject_cutoffs() {
    let issuer = Issuer::start(Spec::default()).await;
    let minted = issuer
        .mint(
            "POST",
            "/v1/tokens",
            Some(&json!({"subject": "user:42", "scope": "read:items", "ttl_secs": 120})),
        )
        .await;
    assert_eq!(minted.status, 200, "{}", body(&minted));
    assert_eq!(minted.header("cache-control"), Some("no-store"));
    let token = minted.json()["access_token"].as_str().unwrap().to_owned();
    let c = claims_of(&token);
    assert_eq!(
        (c["sub"].clone(), c["aud"].clone(), c["client_id"].clone()),
        (json!("user:42"), json!(ORDERS), json!("scopegate:mint"))
    );
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
    for (request, status) in [
        (json!({"subject": "admin:1"}), 403),
        (json!({"subject": "user:1", "scope": "write:items"}), 403),
        (json!({"subject": "user:1", "audience": [PAYMENTS]}), 403),
        (json!({"subject": "user:1", "ttl_secs": 301}), 403),
        (json!({"subject": ""}), 400),
        (json!({"subject": "user:1", "extra": true}), 400),
        // Subjects a header would not carry unchanged: verifiers would refuse the token.
        (json!({"subject": "user:ådmin"}), 400),
        (json!({"subject": "user:1 "}), 400),
        (json!({"subject": "user:1\r\nX-Auth-Scopes: admin"}), 400),
    ] {
        let r = issuer.mint("POST", "/v1/tokens", Some(&request)).await;
        assert_eq!(r.status, status, "{request}: {}", body(&r));
    }
    assert_eq!(
        issuer.mint("GET", "/v1/logins/unknown", None).await.status,
        404
    );
    // A subject cut-off: older tokens die (issuer and feed), the subject's refresh families too.
    let t = redeem(&issuer, &web_code(&issuer, "user:42").await)
        .await
        .json();
    let issued = now();
    eventually("a second to pass", Duration::from_secs(5), || async {
        (now() > issued).then_some(())
    })
    .await;
    let cut = issuer
        .mint(
            "POST",
            "/v1/subject-cutoffs",
            Some(&json!({"subject": "user:42"})),
        )
        .await;
    assert_eq!(cut.status, 200, "{}", body(&cut));
    assert_eq!(introspect(&issuer, &token).await, json!({"active": false}));
    let r = issuer
        .token(
            &WEB,
            &format!(
                "grant_type=refresh_token&refresh_token={}",
                enc(t["refresh_token"].as_str().unwrap())
            ),
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let page =
        claims_of(std::str::from_utf8(&issuer.get("/oauth2/revocations").await.body).unwrap());
    assert!(
        page.get("subjects").is_none(),
        "the feed names no one: {page}"
    );
    let key = scopegate_core::feed::decode_subject_key(FEED_SUBJECT_KEY).unwrap();
    assert_eq!(
        page["subjectDigests"][0]["digest"],
        scopegate_core::feed::subject_digest(&key, "user:42")
    );
    let future = issuer
        .mint(
            "POST",
            "/v1/subject-cutoffs",
            Some(&json!({"subject": "user:42", "before": now() + 3600})),
        )
        .await;
    assert_eq!(future.status, 400);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_long_polls_signed_pages_with_cursors() {
    let issuer = std::sync::Arc::new(Issuer::start(Spec::default()).await);
    let first = issuer.get("/oauth2/revocations?wait=0").await;
    assert_eq!(first.header("content-type"), Some("application/jwt"));
    let jws = String::from_utf8(first.body.clone()).unwrap();
    assert_eq!(header_of(&jws)["typ"], "revocation-feed+jwt");
    let page = claims_of(&jws);
    assert_eq!(
        (page["reset"].clone(), page["iss"].clone()),
        (json!(true), json!(issuer.url))
    );
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    // A poll with the cursor waits for news; a revocation meanwhile answers it at once.
    let poller = {
        let issuer = issuer.clone();
        let cursor = cursor.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = issuer
                .get(&format!("/oauth2/revocations?cursor={cursor}&wait=25"))
                .await;
            (r, started.elapsed())
        })
    };
    let token = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = issuer
        .post_as(
            "/oauth2/revoke",
            &BACKEND,
            &format!("token={}", enc(&token)),
        )
        .await;
    assert_eq!(r.status, 200);
    let (answer, took) = poller.await.unwrap();
    assert!(
        took < Duration::from_secs(20),
        "answered on news, not at the deadline"
    );
    let page = claims_of(std::str::from_utf8(&answer.body).unwrap());
    assert_eq!(page["cursor"], json!(cursor));
    assert_eq!(page["reset"], json!(false));
    assert_eq!(page["jtis"][0]["jti"], claims_of(&token)["jti"]);
    let unknown = claims_of(
        std::str::from_utf8(
            &issuer
                .get("/oauth2/revocations?cursor=other-1&wait=0")
                .await
                .body,
        )
        .unwrap(),
    );
    assert_eq!(unknown["reset"], true, "a cursor of another epoch resets");
    assert_eq!(
        issuer.get("/oauth2/revocations?cursor=a%20b").await.status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_sidecar_refuses_a_revoked_token_through_the_real_feed() {
    let issuer = Issuer::start(Spec::default()).await;
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let mut cfg = config(upstream.addr.port(), jwks_of(&issuer.keys));
    cfg["verify"]["issuers"][0]["issuer"] = json!(issuer.url);
    cfg["verify"]["audiences"] = json!([ORDERS]);
    cfg["caBundlePem"] = json!(issuer.certs.ca_pem);
    let bound = 10;
    cfg["revocation"] = json!({"feed": {"url": format!("{}/oauth2/revocations", issuer.url), "issuer": issuer.url, "stalenessBoundSecs": bound, "subjectKey": FEED_SUBJECT_KEY}});
    let verifier = start_sidecar(&dir, &cfg).await;
    eventually(
        "the verifier's first feed page",
        Duration::from_secs(20),
        || async {
            readyz(verifier.admin_addr())
                .await
                .1
                .contains("revocation feed: fresh")
                .then_some(())
        },
    )
    .await;
    let token = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        get_with_token(verifier.proxy_addr(), "/items/1", &token)
            .await
            .status,
        200
    );
    let revoked_at = Instant::now();
    let r = issuer
        .post_as(
            "/oauth2/revoke",
            &BACKEND,
            &format!("token={}", enc(&token)),
        )
        .await;
    assert_eq!(r.status, 200);
    eventually(
        "the verifier to refuse the revoked token",
        Duration::from_secs(bound),
        || async {
            (get_with_token(verifier.proxy_addr(), "/items/1", &token)
                .await
                .status
                == 401)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "revocation reached the verifier in {:?}",
        revoked_at.elapsed()
    );

    // A subject cut-off reaches the verifier as a keyed digest: the public feed names no one.
    let minted = issuer
        .mint(
            "POST",
            "/v1/tokens",
            Some(&json!({"subject": "user:mallory", "scope": "read:items"})),
        )
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let through = |token: String| {
        let addr = verifier.proxy_addr();
        async move { get_with_token(addr, "/items/1", &token).await.status }
    };
    assert_eq!(through(minted.clone()).await, 200);
    let issued = now();
    eventually("a second to pass", Duration::from_secs(5), || async {
        (now() > issued).then_some(())
    })
    .await;
    let cut = issuer
        .mint(
            "POST",
            "/v1/subject-cutoffs",
            Some(&json!({"subject": "user:mallory"})),
        )
        .await;
    assert_eq!(cut.status, 200, "{}", body(&cut));
    eventually(
        "the verifier to apply the subject cut-off",
        Duration::from_secs(bound),
        || async { (through(minted.clone()).await == 401).then_some(()) },
    )
    .await;
    let page = issuer.get("/oauth2/revocations?wait=0").await;
    let jws = String::from_utf8(page.body).unwrap();
    let payload = String::from_utf8(
        scopegate_core::jose::b64::decode(jws.split('.').nth(1).unwrap().as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(
        !payload.contains("mallory"),
        "the feed names a subject: {payload}"
    );
    let key = scopegate_core::feed::decode_subject_key(FEED_SUBJECT_KEY).unwrap();
    let digest = scopegate_core::feed::subject_digest(&key, "user:mallory");
    assert!(payload.contains(&digest), "{payload}");
    assert!(
        claims_of(&jws)["seq"].as_u64().unwrap() >= 2
            && claims_of(&jws)["logStartedAt"].as_i64().unwrap() > 0,
        "pages carry their log position: {payload}"
    );

    // A feed page is signed with the issuer's key, but it is no access token.
    let r = get_with_token(verifier.proxy_addr(), "/items/1", &jws).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\", error=\"invalid_token\"")
    );
    verifier.shutdown().await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_probes_are_replayed_on_the_admin_port() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let port = upstream.addr.port();
    let dead = free_port();
    let probes = scopegate_verifier::app_probes::AppProbes::parse(
        &json!({
            "app/readiness": {"port": port, "path": "/public/ready"},
            "app/liveness": {"port": port, "path": "/status/500"},
            "app/startup": {"port": port, "path": "/status/302"},
            "other/liveness": {"port": dead, "path": "/"}
        })
        .to_string(),
    )
    .unwrap();
    let dir = TempDir::new();
    let path = dir.join("config.json");
    write_atomic(&path, &config(port, json!({"keys": []})).to_string());
    let sidecar = scopegate_sidecar::start(scopegate_sidecar::Options {
        config_path: path,
        bind_ip: "127.0.0.1".parse().unwrap(),
        port_override: Some(0),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        reload_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(2),
        issuer_tuning: Default::default(),
        app_probes: probes,
        connection: Default::default(),
    })
    .await
    .unwrap();
    let admin = sidecar.admin_addr();
    assert_eq!(
        get(admin, "/app-health/app/readiness", &[]).await.status,
        200
    );
    assert_eq!(upstream.last().unwrap().path_and_query, "/public/ready");
    assert_eq!(
        get(admin, "/app-health/app/liveness", &[]).await.status,
        503
    );
    assert_eq!(
        get(admin, "/app-health/app/startup", &[]).await.status,
        200,
        "3xx counts as healthy"
    );
    assert_eq!(
        get(admin, "/app-health/other/liveness", &[]).await.status,
        503,
        "app down"
    );
    assert_eq!(
        get(admin, "/app-health/nobody/liveness", &[]).await.status,
        404
    );
    sidecar.shutdown().await;
}

/// A metric of the issuer's admin port.
async fn metric(issuer: &Issuer, name: &str) -> i64 {
    let text = String::from_utf8(get(issuer.admin, "/metrics", &[]).await.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

/// Human-chosen (argon2) secrets cost a stranger's guesses no CPU once its address's failures
/// naming the client have spent their budget, run a few at a time off the async workers, and an empty secret never
/// authenticates, even against a stored hash of the empty string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_secrets_are_bounded_and_guesses_stop_before_hashing() {
    let tuning = IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            failed_address: Budget::per_secs(10_000, 60),
            failed_client: Budget::per_secs(4, 3600),
            ..Default::default()
        },
        slow_hash_concurrency: 2,
        // Unoptimised argon2 on a busy machine can take seconds: no request may give up on a
        // slot here (503 is for the deployed sidecar under a flood).
        slow_hash_wait_ms: 120_000,
        ..Default::default()
    };
    let issuer = std::sync::Arc::new(
        Issuer::start(Spec {
            tuning: tuning.clone(),
            ..Spec::default()
        })
        .await,
    );
    const HASHED: &str = "scopegate_issuer_client_secret_slow_hashes_total";
    let guess = |n: usize| basic(HUMAN.id, &format!("guess {n}"));
    // Guesses from many addresses at once: at most two hashes run at a time.
    let burst: Vec<_> = (0..6)
        .map(|n| {
            let auth = guess(n);
            let from = format!("198.51.100.{n}");
            let issuer = issuer.clone();
            tokio::spawn(async move {
                issuer
                    .post(
                        "/oauth2/token",
                        "grant_type=client_credentials",
                        &[("Authorization", &auth), ("X-Forwarded-For", &from)],
                    )
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in burst {
        statuses.push(task.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(metric(&issuer, HASHED).await >= 1);
    let peak = metric(&issuer, "scopegate_issuer_client_secret_slow_hashes_peak").await;
    assert!((1..=2).contains(&peak), "{peak} slow hashes at once");
    // Guesses from one address are hashed until that address's failures naming the client
    // have spent their budget (a 429 before that comes from the client's own failure budget,
    // which the burst spent, after the hash)...
    const REFUSED: &str = "scopegate_issuer_client_secret_slow_hashes_refused_total";
    assert_eq!(metric(&issuer, REFUSED).await, 0);
    let mut refused = false;
    for n in 10..20 {
        let r = issuer
            .post(
                "/oauth2/token",
                "grant_type=client_credentials",
                &[("Authorization", &guess(n))],
            )
            .await;
        assert!(r.status == 401 || r.status == 429, "{}", body(&r));
        if metric(&issuer, REFUSED).await > 0 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the failure budget of 4 was never spent");
    // ...then no guess from it (nor an uncached right secret) costs a hash any more.
    let hashed = metric(&issuer, HASHED).await;
    let right = basic(HUMAN.id, HUMAN.secret.unwrap());
    for auth in [guess(30), guess(31), right.clone()] {
        let r = issuer
            .post(
                "/oauth2/token",
                "grant_type=client_credentials",
                &[("Authorization", &auth)],
            )
            .await;
        assert_eq!(r.status, 429, "{}", body(&r));
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(metric(&issuer, HASHED).await, hashed, "no hash ran");
    assert!(
        metric(
            &issuer,
            "scopegate_issuer_client_secret_slow_hashes_refused_total"
        )
        .await
            >= 3
    );
    let Ok(issuer) = std::sync::Arc::try_unwrap(issuer) else {
        panic!("a request task still holds the issuer");
    };
    issuer.stop().await;

    // A client that authenticated before keeps working from the cache while strangers spend
    // its failure budget; their guesses still cost nothing.
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    let token = |auth: String| {
        let issuer = &issuer;
        async move {
            issuer
                .post(
                    "/oauth2/token",
                    "grant_type=client_credentials",
                    &[("Authorization", &auth)],
                )
                .await
        }
    };
    assert_eq!(token(right.clone()).await.status, 200);
    for n in 0..4 {
        assert_eq!(token(guess(n)).await.status, 401);
    }
    let hashed = metric(&issuer, HASHED).await;
    assert_eq!(token(guess(9)).await.status, 429);
    assert_eq!(
        token(right.clone()).await.status,
        200,
        "cached: no hash needed"
    );
    assert_eq!(metric(&issuer, HASHED).await, hashed);

    // An empty secret never authenticates, though the stored hash is of the empty string.
    let mut registry = registry(None);
    registry["clients"].as_array_mut().unwrap().push(json!({
        "clientId": "shop.empty", "public": false, "authMethod": "client_secret_basic",
        "secrets": [
            {"phc": scopegate_core::secret_hash::hash("", scopegate_core::secret_hash::SecretKind::Chosen).unwrap()},
            {"phc": scopegate_core::secret_hash::hash("", scopegate_core::secret_hash::SecretKind::Generated).unwrap()},
            {"phc": scopegate_core::secret_hash::hash("real", scopegate_core::secret_hash::SecretKind::Generated).unwrap()}
        ],
        "grantTypes": ["client_credentials"], "scopes": ["read:items"], "defaultScopes": ["read:items"]
    }));
    write_atomic(&issuer.dir.join("clients.json"), &registry.to_string());
    eventually(
        "the registry to reload",
        Duration::from_secs(10),
        || async { (token(basic("shop.empty", "real")).await.status == 200).then_some(()) },
    )
    .await;
    let hashed = metric(&issuer, HASHED).await;
    let empty = token(basic("shop.empty", "")).await;
    assert_eq!(empty.status, 401, "{}", body(&empty));
    assert_eq!(
        metric(&issuer, HASHED).await,
        hashed,
        "refused before any hash"
    );
    issuer.stop().await;
}

/// The attacker's test of slow secrets: a stranger spends its address's failure budget
/// guessing a client's human-chosen secret on an issuer that has not cached it (a restart, a
/// rollout). The client's right secret from another address still gets its hash and a token;
/// the stranger stays refused, and its refused guesses count against its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_slow_secret_locks_out_the_guessing_address_only() {
    let tuning = IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            failed_address: Budget::per_secs(6, 3600),
            failed_client: Budget::per_secs(3, 3600),
            ..Default::default()
        },
        slow_hash_wait_ms: 120_000,
        ..Default::default()
    };
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    const STRANGER: &str = "198.51.100.20";
    const OWNER: &str = "203.0.113.20";
    let token_as = |auth: String, from: &'static str| {
        let issuer = &issuer;
        async move {
            issuer
                .post(
                    "/oauth2/token",
                    "grant_type=client_credentials",
                    &[("Authorization", &auth), ("X-Forwarded-For", from)],
                )
                .await
                .status
        }
    };
    let guess = |n: usize| basic(HUMAN.id, &format!("guess {n}"));
    let mut statuses = Vec::new();
    for n in 0..6 {
        statuses.push(token_as(guess(n), STRANGER).await);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429, 429, 429],
        "three guesses hashed, then refused before hashing"
    );
    // The refused guesses counted against the stranger's address: its failure budget of 6 is
    // spent, so even a cheap wrong secret of another client is stopped before any work.
    assert_eq!(
        token_as(basic(BACKEND.id, "wrong"), STRANGER).await,
        429,
        "the address's refused attempts were counted"
    );
    let hashed = metric(&issuer, "scopegate_issuer_client_secret_slow_hashes_total").await;
    assert_eq!(
        token_as(basic(HUMAN.id, HUMAN.secret.unwrap()), OWNER).await,
        200,
        "the client's right secret from its own address"
    );
    assert_eq!(
        metric(&issuer, "scopegate_issuer_client_secret_slow_hashes_total").await,
        hashed + 1,
        "it was checked by the slow hash (nothing cached)"
    );
    assert_eq!(token_as(guess(7), STRANGER).await, 429, "still refused");
    issuer.stop().await;
}

/// The attacker's test of public clients' failures: a stranger's 31 bad refreshes (and
/// revocations) naming a public client count against the stranger's address only, so a
/// user's own invalid refresh from another address still gets `invalid_grant`, not 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_failures_naming_a_public_client_never_reach_its_users() {
    let issuer = Issuer::start(Spec::default()).await;
    let as_cli = |path: &'static str, body: &'static str, from: &'static str| {
        let issuer = &issuer;
        async move {
            let body = format!("{body}&client_id={}", enc(CLI.id));
            issuer.post(path, &body, &[("X-Forwarded-For", from)]).await
        }
    };
    const REFRESH: &str = "grant_type=refresh_token&refresh_token=made-up";
    for i in 0..31 {
        let r = as_cli("/oauth2/token", REFRESH, "198.51.100.30").await;
        assert_eq!(r.status, 400, "{i}: {}", body(&r));
        let r = as_cli(
            "/oauth2/revoke",
            "token_type_hint=refresh_token",
            "198.51.100.31",
        )
        .await;
        assert_eq!(r.status, 400, "{}", body(&r));
    }
    let r = as_cli("/oauth2/token", REFRESH, "203.0.113.30").await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = as_cli(
        "/oauth2/revoke",
        "token_type_hint=refresh_token",
        "203.0.113.30",
    )
    .await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert_eq!(r.json()["error"], "invalid_request");
    issuer.stop().await;
}

/// A client trickling a request body to the token endpoint or the mint socket gets 408 once
/// the body deadline passes, instead of holding a connection and a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_must_arrive_before_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let issuer = Issuer::start(Spec {
        tuning: IssuerTuning {
            body_deadline_ms: 300,
            ..IssuerTuning::default()
        },
        ..Spec::default()
    })
    .await;
    let partial = b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\ngrant_type=client";
    let r = tls_raw(&issuer.certs, issuer.addr, partial).await;
    assert_eq!(r.status, 408, "{}", body(&r));
    assert_eq!(r.json()["error"], "invalid_request");

    let mut socket = tokio::net::UnixStream::connect(&issuer.mint_socket)
        .await
        .unwrap();
    socket
        .write_all(b"POST /v1/tokens HTTP/1.1\r\nHost: mint\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"subject\"")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut buf))
        .await
        .expect("the mint socket ends a stalled body")
        .unwrap();
    assert_eq!(parse_response(&buf).status, 408);
    issuer.stop().await;
}

/// `/oauth2/authorize` takes no authentication, so a stranger's requests spend the stranger's
/// address budget and nothing in the client's name, and the pending logins they leave behind
/// are bounded per address and overall, the oldest going first, counted in a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_requests_spend_the_callers_budget_and_pending_logins_are_bounded() {
    let tuning = IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            address: Budget::per_secs(3, 3600),
            client: Budget::per_secs(2, 3600),
            failed_address: Budget::per_secs(10_000, 60),
            failed_client: Budget::per_secs(10_000, 60),
        },
        ..IssuerTuning::default()
    };
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    let unknown_client =
        "response_type=code&client_id=nobody&redirect_uri=https%3A%2F%2Fx".to_owned();
    let plain_pkce =
        web_query("s", None).replace("code_challenge_method=S256", "code_challenge_method=plain");
    // A stranger's requests spend the stranger's address budget...
    for _ in 0..3 {
        let r = authorize_from(&issuer, &unknown_client, "203.0.113.1").await;
        assert_eq!(r.status, 400);
    }
    let r = authorize_from(&issuer, &web_query("s", None), "203.0.113.1").await;
    assert_eq!(
        r.status, 429,
        "the address budget is spent, even for a valid request"
    );
    for _ in 0..3 {
        let r = authorize_from(&issuer, &plain_pkce, "203.0.113.2").await;
        assert_eq!(r.status, 303);
        assert_eq!(
            query_param(r.header("location").unwrap(), "error").as_deref(),
            Some("invalid_request")
        );
    }
    // ...and valid ones spend no budget in the client's name (its `client` budget is 2).
    for from in ["203.0.113.3", "203.0.113.3", "203.0.113.3", "203.0.113.4"] {
        login_challenge_of(&authorize_from(&issuer, &web_query("s", None), from).await);
    }
    issuer.stop().await;

    let tuning = IssuerTuning {
        pending_logins: scopegate_issuer::store::PendingBounds {
            per_address: 3,
            total: 5,
        },
        ..generous()
    };
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    let pending = |challenge: String| {
        let issuer = &issuer;
        async move {
            issuer
                .mint("GET", &format!("/v1/logins/{challenge}"), None)
                .await
                .status
        }
    };
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(login_challenge_of(
            &authorize_from(&issuer, &web_query("s", None), "203.0.113.1").await,
        ));
    }
    assert_eq!(
        pending(first[0].clone()).await,
        404,
        "the address's oldest, over its bound of 3"
    );
    assert_eq!(pending(first[1].clone()).await, 200);
    let cli_query = format!(
        "response_type=code&client_id={}&redirect_uri={}&code_challenge={CHALLENGE}&code_challenge_method=S256",
        enc(CLI.id),
        enc("http://127.0.0.1/callback")
    );
    let mut second = Vec::new();
    for _ in 0..3 {
        second.push(login_challenge_of(
            &authorize_from(&issuer, &cli_query, "203.0.113.2").await,
        ));
    }
    assert_eq!(
        pending(first[1].clone()).await,
        404,
        "the oldest overall, over the bound of 5"
    );
    for challenge in first[2..].iter().chain(&second) {
        assert_eq!(pending(challenge.clone()).await, 200);
    }
    assert_eq!(
        metric(&issuer, "scopegate_issuer_pending_logins_evicted_total").await,
        2
    );
    issuer.stop().await;
}

/// The attacker's test of `/oauth2/authorize`: one address floods fully valid requests until
/// refused; another address's pending login survives and its next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorize_flood_from_one_address_leaves_other_callers_alone() {
    let issuer = Issuer::start(Spec {
        tuning: authorize_flood_tuning(),
        ..Spec::default()
    })
    .await;
    an_authorize_flood_spends_only_the_flooders_share(&issuer, FLOOD).await;
    issuer.stop().await;
}

/// A refresh token not used for `refreshTokenIdle` is dead, well before the family's absolute
/// end: a token stolen from a client that stopped refreshing is worth nothing. Introspection
/// names the earlier end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_refresh_family_expires_after_its_idle_time() {
    let issuer = Issuer::start(Spec {
        refresh_idle: Some(2),
        tuning: generous(),
        ..Spec::default()
    })
    .await;
    let t = redeem(&issuer, &web_code(&issuer, "alice").await)
        .await
        .json();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let info = introspect(&issuer, &refresh).await;
    assert_eq!(info["active"], true);
    assert!(
        info["exp"].as_i64().unwrap() <= now() + 2,
        "the idle end, not the absolute one an hour away: {info}"
    );
    eventually("the family to go idle", Duration::from_secs(10), || async {
        (introspect(&issuer, &refresh).await["active"] == false).then_some(())
    })
    .await;
    let r = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "{}",
        body(&r)
    );
    issuer.stop().await;
}

/// RFC 6749 §3.1.2.3 and §4.1.3: a client that registered exactly one redirect URI may leave
/// it out of the authorization request, and then out of the token request. A client with
/// several (or none) must name one; a token request must name the URI its authorization
/// request named, and may name no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_uri_may_be_left_out_only_when_exactly_one_is_registered() {
    let issuer = Issuer::start(Spec::default()).await;
    let without = |client: &str| {
        format!(
            "response_type=code&client_id={}&code_challenge={CHALLENGE}&code_challenge_method=S256&state=s2",
            enc(client)
        )
    };
    let exchange = |code: &str, redirect: Option<&str>| {
        let mut body = format!(
            "grant_type=authorization_code&code={}&code_verifier={VERIFIER}",
            enc(code)
        );
        if let Some(redirect) = redirect {
            body.push_str(&format!("&redirect_uri={}", enc(redirect)));
        }
        body
    };
    // The web client registered one: the code goes there, and the exchange needs no URI.
    let location = issuer.authorize(&without(WEB.id), "alice").await.unwrap();
    assert!(
        location.starts_with(&format!("{WEB_REDIRECT}?code=")),
        "{location}"
    );
    assert_eq!(query_param(&location, "state").as_deref(), Some("s2"));
    let code = query_param(&location, "code").unwrap();
    // The attacker's exchange names another URI: refused, and the code is not spent.
    let other = issuer
        .token(&WEB, &exchange(&code, Some("https://evil.example/cb")))
        .await;
    assert_eq!(
        (other.status, other.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "{}",
        body(&other)
    );
    let r = issuer.token(&WEB, &exchange(&code, None)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        claims_of(r.json()["access_token"].as_str().unwrap())["sub"],
        "alice"
    );
    // Naming the one it was sent to is fine too.
    let code = query_param(
        &issuer.authorize(&without(WEB.id), "alice").await.unwrap(),
        "code",
    )
    .unwrap();
    let r = issuer
        .token(&WEB, &exchange(&code, Some(WEB_REDIRECT)))
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));

    // An authorization request that named its URI binds the exchange to naming it.
    let code = web_code(&issuer, "bob").await;
    let unnamed = issuer.token(&WEB, &exchange(&code, None)).await;
    assert_eq!(
        (unnamed.status, unnamed.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "RFC 6749 §4.1.3: required when the authorization request had it"
    );
    assert_eq!(
        redeem(&issuer, &code).await.status,
        200,
        "the code was not spent"
    );

    // A client with two registered URIs must name one: an error page, never a guess.
    let mut registry = registry(None);
    registry["clients"].as_array_mut().unwrap().push(json!({
        "clientId": "shop.spa", "public": true, "authMethod": "none",
        "grantTypes": ["authorization_code"], "scopes": ["read:items"],
        "defaultScopes": ["read:items"], "audiences": [ORDERS],
        "redirectUris": ["https://app.example/a", "https://app.example/b"]
    }));
    write_atomic(&issuer.dir.join("clients.json"), &registry.to_string());
    let named = format!(
        "{}&redirect_uri={}",
        without("shop.spa"),
        enc("https://app.example/b")
    );
    eventually(
        "the registry to reload",
        Duration::from_secs(10),
        || async {
            let r = issuer.get(&format!("/oauth2/authorize?{named}")).await;
            (r.status == 303).then_some(())
        },
    )
    .await;
    let r = issuer
        .get(&format!("/oauth2/authorize?{}", without("shop.spa")))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.header("location").is_none(),
        "no redirect to a guessed URI"
    );
    assert!(body(&r).contains("redirect URI"), "{}", body(&r));
    issuer.stop().await;
}

/// The revocation and introspection endpoints have budgets of their own: per client for
/// successes, per address for failures. A stranger guessing secrets is stopped at its own
/// address, and one naming a public client (whose client_id is no secret) spends only its
/// own address's budget, never the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_introspect_are_rate_limited_and_strangers_spend_their_own_budget() {
    let tuning = IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            client: Budget::per_secs(3, 60),
            address: Budget::per_secs(6, 60),
            failed_address: Budget::per_secs(2, 60),
            failed_client: Budget::per_secs(1000, 60),
        },
        ..Default::default()
    };
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    let as_client = |client: &TestClient, ip: &str, path: &str, token: &str| {
        let (body, auth) = match client.secret {
            Some(secret) if client.id == POSTER.id => (
                format!(
                    "token={}&client_id={}&client_secret={}",
                    enc(token),
                    enc(client.id),
                    enc(secret)
                ),
                None,
            ),
            Some(secret) => (
                format!("token={}", enc(token)),
                Some(basic(client.id, secret)),
            ),
            None => (
                format!("token={}&client_id={}", enc(token), enc(client.id)),
                None,
            ),
        };
        let ip = ip.to_owned();
        let path = path.to_owned();
        let issuer = &issuer;
        async move {
            let mut headers = vec![("X-Forwarded-For", ip.as_str())];
            if let Some(auth) = &auth {
                headers.push(("Authorization", auth.as_str()));
            }
            issuer.post(&path, &body, &headers).await
        }
    };
    let token = |client: &'static TestClient, ip: &'static str| {
        let issuer = &issuer;
        async move {
            let r = issuer
                .post(
                    "/oauth2/token",
                    "grant_type=client_credentials",
                    &[
                        ("Authorization", &basic(client.id, client.secret.unwrap())),
                        ("X-Forwarded-For", ip),
                    ],
                )
                .await;
            assert_eq!(r.status, 200, "{}", body(&r));
            r.json()["access_token"].as_str().unwrap().to_owned()
        }
    };
    let t1 = token(&BACKEND, "198.51.100.1").await;
    let t2 = token(&BACKEND, "198.51.100.1").await;

    // Introspection: three successes for the resource server, then 429 with Retry-After.
    for i in 0..3 {
        let r = as_client(&ORDERS_RS, "198.51.100.2", "/oauth2/introspect", &t1).await;
        assert_eq!(
            (r.status, r.json()["active"].clone()),
            (200, json!(true)),
            "{i}"
        );
    }
    let over = as_client(&ORDERS_RS, "198.51.100.3", "/oauth2/introspect", &t1).await;
    assert_eq!(over.status, 429, "{}", body(&over));
    assert!(over.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Its budget at the token endpoint is its own.
    token(&ORDERS_RS, "198.51.100.2").await;

    // Revocation: three successes (unknown tokens answer 200 and count), then 429, and the
    // refused request revoked nothing.
    for t in ["unknown-1", "unknown-2", t1.as_str()] {
        let r = as_client(&BACKEND, "198.51.100.4", "/oauth2/revoke", t).await;
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    let over = as_client(&BACKEND, "198.51.100.5", "/oauth2/revoke", &t2).await;
    assert_eq!(over.status, 429, "{}", body(&over));
    assert!(over.header("retry-after").is_some());
    let seen = |t: String| {
        let issuer = &issuer;
        async move {
            let r = issuer
                .post(
                    "/oauth2/introspect",
                    &format!("token={}", enc(&t)),
                    &[
                        ("Authorization", &basic(BACKEND.id, BACKEND.secret.unwrap())),
                        ("X-Forwarded-For", "198.51.100.6"),
                    ],
                )
                .await;
            assert_eq!(r.status, 200, "{}", body(&r));
            r.json()["active"].clone()
        }
    };
    assert_eq!(
        seen(t1.clone()).await,
        json!(false),
        "revoked within budget"
    );
    assert_eq!(
        seen(t2.clone()).await,
        json!(true),
        "the refused revocation did nothing"
    );

    // A stranger guessing secrets: stopped at its address after two failures, even with the
    // right secret; the client from elsewhere is not locked out.
    for (path, client, wrong) in [
        (
            "/oauth2/introspect",
            &BACKEND,
            TestClient {
                id: BACKEND.id,
                secret: Some("guess"),
            },
        ),
        (
            "/oauth2/revoke",
            &POSTER,
            TestClient {
                id: POSTER.id,
                secret: Some("guess"),
            },
        ),
    ] {
        let attacker = if path.ends_with("introspect") {
            "203.0.113.7"
        } else {
            "203.0.113.8"
        };
        for _ in 0..2 {
            let r = as_client(&wrong, attacker, path, "x").await;
            assert_eq!(r.json()["error"], "invalid_client", "{path}");
        }
        let stopped = as_client(client, attacker, path, "x").await;
        assert_eq!(stopped.status, 429, "{path}: {}", body(&stopped));
        let victim = as_client(client, "198.51.100.7", path, "x").await;
        assert_eq!(victim.status, 200, "{path}: {}", body(&victim));
    }

    // A stranger naming the public client: its requests pass (its client_id is all a public
    // client shows) and spend its own address's budget, not the client's.
    for i in 0..6 {
        let r = as_client(&CLI, "203.0.113.9", "/oauth2/revoke", "unknown").await;
        assert_eq!(r.status, 200, "{i}: {}", body(&r));
    }
    let stopped = as_client(&CLI, "203.0.113.9", "/oauth2/revoke", "unknown").await;
    assert_eq!(
        stopped.status, 429,
        "the stranger's address budget is spent"
    );
    let user = as_client(&CLI, "198.51.100.8", "/oauth2/revoke", "unknown").await;
    assert_eq!(
        user.status, 200,
        "the public client's users can still revoke"
    );
    issuer.stop().await;
}

/// A refresh after a key rotation signs with the new key, whichever key signed the tokens
/// of the family before; once the old key is removed, what it signed is dead while the
/// family goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_after_a_key_rotation_signs_with_the_new_key() {
    let now = now();
    let old = managed_key(
        "ES256",
        "old",
        now - 600,
        now - 600,
        now + 86_400,
        now + 90_000,
    );
    let mut issuer = Issuer::start(Spec {
        keys: Some(json!({"keys": [old.clone()]})),
        ..Spec::default()
    })
    .await;
    let t = redeem(&issuer, &web_code(&issuer, "alice").await)
        .await
        .json();
    let first = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(header_of(&first)["kid"], "old");
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();

    // The operator rotates: a newer key activates while the old one may still sign.
    let new = managed_key(
        "ES256",
        "new",
        now - 600,
        now - 5,
        now + 86_400,
        now + 90_000,
    );
    issuer.set_keys(json!({"keys": [old.clone(), new.clone()]}));
    eventually("the new key to sign", Duration::from_secs(10), || async {
        let r = issuer
            .token(&BACKEND, "grant_type=client_credentials")
            .await;
        (header_of(r.json()["access_token"].as_str()?)["kid"] == "new").then_some(())
    })
    .await;
    let r = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let t = r.json();
    let second = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        header_of(&second)["kid"],
        "new",
        "not the family's first key"
    );
    assert_eq!(introspect(&issuer, &second).await["active"], true);
    assert_eq!(
        introspect(&issuer, &first).await["active"],
        true,
        "the old key still verifies what it signed"
    );
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();

    // The old key is removed: the token it signed is dead, the session is not.
    let mut removed = old.clone();
    removed["signsUntil"] = json!(now - 2);
    removed["removedAfter"] = json!(now - 1);
    issuer.set_keys(json!({"keys": [removed, new]}));
    eventually(
        "the old key to be removed",
        Duration::from_secs(10),
        || async { (introspect(&issuer, &first).await == json!({"active": false})).then_some(()) },
    )
    .await;
    let r = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let third = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(header_of(&third)["kid"], "new");
    assert_eq!(introspect(&issuer, &third).await["active"], true);
    issuer.stop().await;
}

/// The form fields of a client assertion.
fn assertion(jwt: &str) -> String {
    format!(
        "client_assertion_type={}&client_assertion={jwt}",
        enc("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_authenticates_its_client_at_the_token_endpoint() {
    let tuning = IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            failed_address: Budget::per_secs(10_000, 60),
            failed_client: Budget::per_secs(3, 3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issuer = Issuer::start(Spec {
        tuning,
        ..Spec::default()
    })
    .await;
    let cluster = ClusterKey::generate();
    // The operator renders the billing client and the cluster's issuer; the issuer reloads.
    admit_service_account_client(
        &issuer,
        &cluster,
        billing_client(&["read:items"], &[ORDERS]),
    );

    let jwt = cluster.token(&issuer.url);
    let grant = format!("grant_type=client_credentials&{}", assertion(&jwt));
    let r = eventually("the reload", Duration::from_secs(10), || async {
        let r = issuer.post("/oauth2/token", &grant, &[]).await;
        (r.status == 200).then_some(r)
    })
    .await;
    let c = claims_of(r.json()["access_token"].as_str().unwrap());
    assert_eq!(c["client_id"], "shop.billing");
    assert_eq!(
        c["sub"], "shop.billing",
        "client_credentials: sub is the client"
    );
    assert_eq!(c["aud"], ORDERS);
    assert_eq!(r.json()["scope"], "read:items");
    let named = issuer
        .post(
            "/oauth2/token",
            &format!("{grant}&client_id=shop.billing"),
            &[],
        )
        .await;
    assert_eq!(named.status, 200, "{}", body(&named));

    let doc = issuer
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "none",
            "service_account_jwt"
        ])
    );
    assert_eq!(
        doc["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS256"])
    );

    // The pod's token for the API server, replayed at the issuer from one address: refused,
    // and counted against that address only, so the client's failure budget (three) is
    // untouched.
    let for_api_server = cluster.token("https://kubernetes.default.svc");
    for _ in 0..5 {
        let r = issuer
            .post(
                "/oauth2/token",
                &format!(
                    "grant_type=client_credentials&{}",
                    assertion(&for_api_server)
                ),
                &[("X-Forwarded-For", "198.51.100.7")],
            )
            .await;
        assert_eq!(r.status, 400, "{}", body(&r));
        assert_eq!(r.json()["error"], "invalid_client");
        assert!(r.header("www-authenticate").is_none());
    }
    let other = issuer
        .post(
            "/oauth2/token",
            &format!(
                "grant_type=client_credentials&client_id=shop.billing&{}",
                assertion(&for_api_server)
            ),
            &[("X-Forwarded-For", "203.0.113.9")],
        )
        .await;
    assert_eq!(other.json()["error"], "invalid_client", "not 429");

    // One method per request; a secret client cannot be reached with an assertion.
    let both = issuer
        .post(
            "/oauth2/token",
            &grant,
            &[("Authorization", &basic(BACKEND.id, BACKEND.secret.unwrap()))],
        )
        .await;
    assert_eq!(both.status, 400);
    assert_eq!(both.json()["error"], "invalid_request");
    let secret_client = issuer
        .post(
            "/oauth2/token",
            &format!("{grant}&client_id={}", BACKEND.id),
            &[],
        )
        .await;
    assert_eq!(secret_client.json()["error"], "invalid_client");

    // Revocation authenticates the same way.
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let revoked = issuer
        .post(
            "/oauth2/revoke",
            &format!("token={}&{}", enc(&access), assertion(&jwt)),
            &[],
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", body(&revoked));
    assert_eq!(introspect(&issuer, &access).await, json!({"active": false}));
    issuer.stop().await;
}
