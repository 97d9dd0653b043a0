//! The token-exchange grant (RFC 8693) over TLS on loopback: an exchange and a chain of two
//! with nested `act`, the depth limit, the attacker's requests (foreign, forged, expired,
//! revoked and misdirected subject tokens, widened scopes and audiences, actor tokens,
//! clients that may not exchange), and revocation reaching the exchanged tokens.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use scopegate_issuer::IssuerTuning;
use scopegate_issuer::store::Budget;
use serde_json::{Value, json};
use support::issuer::*;
use support::*;

async fn start() -> Issuer {
    Issuer::start(Spec {
        tuning: IssuerTuning {
            limits: scopegate_issuer::limits::EndpointLimits {
                failed_address: Budget::per_secs(10_000, 60),
                failed_client: Budget::per_secs(10_000, 60),
                ..Default::default()
            },
            // A refresh token presented twice is reuse at once.
            refresh_grace_ms: 0,
            ..Default::default()
        },
        extra_clients: exchange_clients(),
        ..Spec::default()
    })
    .await
}

fn body(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The access token of a successful exchange.
async fn exchanged(issuer: &Issuer, client: &TestClient, subject: &str, aud: &str) -> String {
    let r = exchange(issuer, client, subject, &format!("&audience={}", enc(aud))).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// Asserts a refusal: status 400, `error` and a description starting with `why`.
fn refused(r: &RawResponse, error: &str, why: &str) {
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (400, error),
        "{}",
        body(r)
    );
    let description = r.json()["error_description"].as_str().unwrap().to_owned();
    assert!(description.starts_with(why), "{description}");
}

/// alice's access and refresh tokens of the web client (audience orders, read and write).
async fn alice(issuer: &Issuer) -> (String, String) {
    let code = web_code(issuer, "alice").await;
    let r = redeem(issuer, &code).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let j = r.json();
    (
        j["access_token"].as_str().unwrap().to_owned(),
        j["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// Introspects `token` as `client` (which sees the tokens issued to it).
async fn active(issuer: &Issuer, client: &TestClient, token: &str) -> bool {
    let r = issuer
        .post_as(
            "/oauth2/introspect",
            client,
            &format!("token={}", enc(token)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    r.json()["active"].as_bool().unwrap()
}

/// A token signed with the issuer's own active key: claims the issuer never issues.
fn forged_by_issuer(issuer: &Issuer, claims: &Value) -> String {
    let entry = &issuer.keys["keys"][0];
    let pkcs8 = STANDARD
        .decode(entry["privateKey"].as_str().unwrap())
        .unwrap();
    let key = SigningKey::Es256(
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).unwrap(),
    );
    mint(
        &key,
        &header("ES256", entry["kid"].as_str().unwrap()),
        claims,
    )
}

/// Claims of a token of the issuer for alice, sent to orders, with `extra` set over them
/// (null: removed).
fn alice_claims(issuer: &Issuer, extra: Value) -> Value {
    let now = now();
    let mut claims = json!({
        "iss": issuer.url, "sub": "alice", "aud": ORDERS, "exp": now + 300, "iat": now,
        "nbf": now, "jti": format!("forged-{}", unique()), "client_id": WEB.id,
        "scope": "read:items"
    });
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_acts_for_the_subject_within_its_scope_and_lifetime() {
    let issuer = start().await;
    // A minted token expiring in two minutes: the exchanged one may not outlive it.
    let minted = issuer
        .mint(
            "POST",
            "/v1/tokens",
            Some(&json!({"subject": "alice", "scope": "read:items", "ttl_secs": 120})),
        )
        .await;
    assert_eq!(minted.status, 200, "{}", body(&minted));
    let subject = minted.json()["access_token"].as_str().unwrap().to_owned();
    let s = claims_of(&subject);
    let r = exchange(
        &issuer,
        &ORDERS_X,
        &subject,
        &format!("&audience={}", enc(PAYMENTS)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let j = r.json();
    assert_eq!(j["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["scope"], "read:items");
    assert!(j.get("refresh_token").is_none(), "{j}");
    let token = j["access_token"].as_str().unwrap();
    assert_eq!(header_of(token)["typ"], "at+jwt");
    let c = claims_of(token);
    assert_eq!(c["iss"], issuer.url);
    assert_eq!(c["sub"], "alice", "the subject stays the subject");
    assert_eq!(c["client_id"], ORDERS_X.id);
    assert_eq!(c["aud"], PAYMENTS);
    assert_eq!(c["scope"], "read:items");
    assert_eq!(c["act"], json!({"sub": ORDERS_X.id}), "the actor is named");
    assert_eq!(
        c["exp"], s["exp"],
        "capped at the subject token's expiry (the access token TTL is 600 s)"
    );
    assert_eq!(
        j["expires_in"],
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap()
    );
    assert_ne!(c["jti"], s["jti"]);
    assert!(active(&issuer, &ORDERS_X, token).await);
    // Introspection names the actor too (RFC 8693 §4.1); the subject token has none.
    let r = issuer
        .post_as(
            "/oauth2/introspect",
            &ORDERS_X,
            &format!("token={}", enc(token)),
        )
        .await;
    assert_eq!(r.json()["act"], json!({"sub": ORDERS_X.id}), "{}", body(&r));

    // `resource` names audiences as `audience` does; the web client's token (read and write)
    // gives only what the exchanging client may have.
    let (access, _) = alice(&issuer).await;
    let r = exchange(
        &issuer,
        &ORDERS_X,
        &access,
        &format!("&resource={}", enc(PAYMENTS)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let c = claims_of(r.json()["access_token"].as_str().unwrap());
    assert_eq!(
        (c["aud"].clone(), c["scope"].clone()),
        (json!(PAYMENTS), json!("read:items"))
    );
    assert!(
        c["exp"].as_i64().unwrap() <= claims_of(&access)["exp"].as_i64().unwrap(),
        "never later than the subject's"
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_nests_its_actors_up_to_the_declared_depth() {
    let issuer = start().await;
    let (access, _) = alice(&issuer).await;
    let first = exchanged(&issuer, &ORDERS_X, &access, PAYMENTS).await;
    let second = exchanged(&issuer, &PAYMENTS_X, &first, STOCK).await;
    let c = claims_of(&second);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["client_id"], PAYMENTS_X.id);
    assert_eq!(c["aud"], STOCK);
    assert_eq!(
        c["act"],
        json!({"sub": PAYMENTS_X.id, "act": {"sub": ORDERS_X.id}}),
        "the current actor outermost (RFC 8693 §4.1)"
    );
    // A client that may extend no chain (maxDepth 1) exchanges only unexchanged tokens.
    let r = exchange(
        &issuer,
        &PAYMENTS_SHALLOW,
        &first,
        &format!("&audience={}", enc(STOCK)),
    )
    .await;
    refused(&r, "invalid_request", "subject_token's chain of actors");
    let direct = issuer
        .token(
            &BACKEND,
            &format!("grant_type=client_credentials&resource={}", enc(PAYMENTS)),
        )
        .await;
    let direct = direct.json()["access_token"].as_str().unwrap().to_owned();
    let shallow = exchanged(&issuer, &PAYMENTS_SHALLOW, &direct, STOCK).await;
    assert_eq!(
        claims_of(&shallow)["act"],
        json!({"sub": PAYMENTS_SHALLOW.id})
    );
    // A third hop: the stock token is sent to no exchanging client's subject audiences, and
    // the chain is as long as the second client may extend anyway.
    let r = exchange(
        &issuer,
        &PAYMENTS_X,
        &second,
        &format!("&audience={}", enc(STOCK)),
    )
    .await;
    refused(
        &r,
        "invalid_request",
        "subject_token was not sent to this client",
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attackers_subject_tokens_and_requests_are_refused() {
    let issuer = start().await;
    let (access, _) = alice(&issuer).await;
    let to_payments = format!("&audience={}", enc(PAYMENTS));

    // Another key, another issuer, a token of the right key with a wrong typ.
    let (other_key, _) = SigningKey::es256();
    let kid = issuer.keys["keys"][0]["kid"].as_str().unwrap().to_owned();
    let foreign = mint(
        &other_key,
        &header("ES256", &kid),
        &alice_claims(&issuer, json!({})),
    );
    let other_issuer = forged_by_issuer(
        &issuer,
        &alice_claims(&issuer, json!({"iss": "https://evil.example"})),
    );
    let mut id_token_header = header("ES256", &kid);
    id_token_header["typ"] = json!("JWT");
    for (what, token) in [
        ("another key", foreign),
        ("another issuer", other_issuer),
        ("not a token", "garbage".to_owned()),
    ] {
        let r = exchange(&issuer, &ORDERS_X, &token, &to_payments).await;
        assert_eq!(r.status, 400, "{what}");
        refused(
            &r,
            "invalid_request",
            "subject_token is not an access token of this issuer",
        );
    }
    // The issuer's own key, claims it would refuse.
    let now = now();
    for (what, extra, why) in [
        (
            "expired",
            json!({"exp": now - 1, "iat": now - 301}),
            "subject_token has expired",
        ),
        (
            "not yet valid",
            json!({"nbf": now + 120}),
            "subject_token is not valid yet",
        ),
        (
            "may_act",
            json!({"may_act": {"sub": ORDERS_X.id}}),
            "subject_token carries may_act",
        ),
        (
            "act not an object",
            json!({"act": "shop.x"}),
            "subject_token has a malformed act",
        ),
        (
            "act too deep for the client",
            json!({"act": {"sub": "a", "act": {"sub": "b"}}}),
            "subject_token's chain of actors",
        ),
        ("no jti", json!({"jti": null}), "subject_token lacks"),
    ] {
        let claims = alice_claims(&issuer, extra);
        let r = exchange(
            &issuer,
            &ORDERS_X,
            &forged_by_issuer(&issuer, &claims),
            &to_payments,
        )
        .await;
        assert_eq!(r.status, 400, "{what}");
        refused(&r, "invalid_request", why);
    }
    let fine = forged_by_issuer(&issuer, &alice_claims(&issuer, json!({})));
    assert_eq!(
        exchange(&issuer, &ORDERS_X, &fine, &to_payments)
            .await
            .status,
        200,
        "the forgery helper makes tokens that pass when nothing is wrong"
    );
    // A token sent to payments is not orders' to exchange.
    let payments_token = issuer
        .token(
            &BACKEND,
            &format!("grant_type=client_credentials&resource={}", enc(PAYMENTS)),
        )
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = exchange(&issuer, &ORDERS_X, &payments_token, &to_payments).await;
    refused(
        &r,
        "invalid_request",
        "subject_token was not sent to this client",
    );
    // Audiences outside the declaration, or none.
    for more in [
        format!("&audience={}", enc(STOCK)),
        format!("&audience={}&resource={}", enc(PAYMENTS), enc(ORDERS)),
        "&audience=https%3A%2F%2Fevil.example".to_owned(),
    ] {
        let r = exchange(&issuer, &ORDERS_X, &access, &more).await;
        refused(&r, "invalid_target", "");
    }
    refused(
        &exchange(&issuer, &ORDERS_X, &access, "").await,
        "invalid_request",
        "audience or resource is required",
    );
    // Widened scopes: one the subject token lacks, one the client may not have.
    for scope in ["admin", "write:items", "read:items admin"] {
        let r = exchange(
            &issuer,
            &ORDERS_X,
            &access,
            &format!("{to_payments}&scope={}", enc(scope)),
        )
        .await;
        refused(&r, "invalid_scope", "");
    }
    // Actor tokens, other token types, a repeated subject token.
    let r = exchange(
        &issuer,
        &ORDERS_X,
        &access,
        &format!(
            "{to_payments}&actor_token={}&actor_token_type={}",
            enc(&access),
            enc(ACCESS_TOKEN_TYPE)
        ),
    )
    .await;
    refused(
        &r,
        "invalid_request",
        "the authenticated client is the actor; actor_token is not accepted",
    );
    let r = exchange(
        &issuer,
        &ORDERS_X,
        &access,
        &format!("{to_payments}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Arefresh_token"),
    )
    .await;
    refused(&r, "invalid_request", "requested_token_type must be");
    let r = exchange(
        &issuer,
        &ORDERS_X,
        &access,
        &format!("{to_payments}&subject_token=x"),
    )
    .await;
    refused(&r, "invalid_request", "a parameter is repeated");
    // Clients that may not exchange.
    for client in [&BACKEND, &UNDECLARED, &PUBLIC_X] {
        let r = exchange(&issuer, client, &access, &to_payments).await;
        refused(&r, "unauthorized_client", "");
    }
    // A revoked subject token.
    let r = issuer
        .post_as("/oauth2/revoke", &WEB, &format!("token={}", enc(&access)))
        .await;
    assert_eq!(r.status, 200);
    let r = exchange(&issuer, &ORDERS_X, &access, &to_payments).await;
    refused(&r, "invalid_request", "subject_token is revoked");
    let meta = issuer
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(TOKEN_EXCHANGE)),
        "{meta}"
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_subject_token_revokes_what_was_exchanged_from_it() {
    let issuer = start().await;
    // RFC 7009 revocation of the subject access token: both hops of its chain die.
    let (access, refresh) = alice(&issuer).await;
    let first = exchanged(&issuer, &ORDERS_X, &access, PAYMENTS).await;
    let second = exchanged(&issuer, &PAYMENTS_X, &first, STOCK).await;
    assert!(active(&issuer, &ORDERS_X, &first).await);
    assert!(active(&issuer, &PAYMENTS_X, &second).await);
    let r = issuer
        .post_as("/oauth2/revoke", &WEB, &format!("token={}", enc(&access)))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        !active(&issuer, &ORDERS_X, &first).await,
        "the first hop is revoked"
    );
    assert!(
        !active(&issuer, &PAYMENTS_X, &second).await,
        "the second hop too"
    );
    let feed = issuer.get("/oauth2/revocations").await;
    let page = claims_of(std::str::from_utf8(&feed.body).unwrap());
    let revoked: Vec<&str> = page["jtis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["jti"].as_str().unwrap())
        .collect();
    for token in [&access, &first, &second] {
        let jti = claims_of(token)["jti"].as_str().unwrap().to_owned();
        assert!(revoked.contains(&jti.as_str()), "{jti} not in {page}");
    }

    // Revoking the subject's refresh family: the tokens exchanged from its access tokens die.
    let fresh = issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await
        .json();
    let access2 = fresh["access_token"].as_str().unwrap().to_owned();
    let refresh2 = fresh["refresh_token"].as_str().unwrap().to_owned();
    let from_family = exchanged(&issuer, &ORDERS_X, &access2, PAYMENTS).await;
    assert!(active(&issuer, &ORDERS_X, &from_family).await);
    let r = issuer
        .post_as(
            "/oauth2/revoke",
            &WEB,
            &format!("token={}&token_type_hint=refresh_token", enc(&refresh2)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!active(&issuer, &ORDERS_X, &from_family).await);

    // A refresh token presented again after its rotation (reuse) revokes the family, and
    // with it what was exchanged.
    let (access3, refresh3) = alice(&issuer).await;
    let from_reused = exchanged(&issuer, &ORDERS_X, &access3, PAYMENTS).await;
    let rotate = |token: String| {
        let issuer = &issuer;
        async move {
            issuer
                .token(
                    &WEB,
                    &format!("grant_type=refresh_token&refresh_token={}", enc(&token)),
                )
                .await
        }
    };
    assert_eq!(rotate(refresh3.clone()).await.status, 200);
    assert!(active(&issuer, &ORDERS_X, &from_reused).await);
    let reuse = rotate(refresh3).await;
    refused(&reuse, "invalid_grant", "refresh token reused");
    assert!(!active(&issuer, &WEB, &access3).await);
    assert!(!active(&issuer, &ORDERS_X, &from_reused).await);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subject_tokens_spend_no_failure_budget_of_the_exchanging_pod() {
    // Failure budgets of 4 a minute; orders may also get tokens of its own.
    let mut clients = exchange_clients();
    let orders = clients
        .iter_mut()
        .find(|c| c["clientId"] == ORDERS_X.id)
        .unwrap();
    orders["grantTypes"] = json!([TOKEN_EXCHANGE, "client_credentials"]);
    orders["audiences"] = json!([PAYMENTS]);
    orders["defaultScopes"] = json!(["read:items"]);
    let issuer = Issuer::start(Spec {
        tuning: IssuerTuning {
            limits: scopegate_issuer::limits::EndpointLimits {
                failed_address: Budget::per_secs(4, 60),
                failed_client: Budget::per_secs(4, 60),
                ..Default::default()
            },
            ..Default::default()
        },
        extra_clients: clients,
        ..Spec::default()
    })
    .await;
    let (access, _) = alice(&issuer).await;
    let (revoked, _) = alice(&issuer).await;
    let r = issuer
        .post_as("/oauth2/revoke", &WEB, &format!("token={}", enc(&revoked)))
        .await;
    assert_eq!(r.status, 200);
    let now = now();
    let expired = forged_by_issuer(
        &issuer,
        &alice_claims(&issuer, json!({"exp": now - 1, "iat": now - 301})),
    );
    let no_common_scope = forged_by_issuer(
        &issuer,
        &alice_claims(&issuer, json!({"scope": "write:items"})),
    );
    let to_payments = format!("&audience={}", enc(PAYMENTS));
    let to_stock = format!("&audience={}", enc(STOCK));
    // Users of orders send tokens orders accepts but the issuer will not exchange: three
    // times the failure budget of orders' address and of orders, each refused for what it is.
    let cases = [
        (
            &expired,
            &to_payments,
            "invalid_request",
            "subject_token has expired",
        ),
        (
            &revoked,
            &to_payments,
            "invalid_request",
            "subject_token is revoked",
        ),
        (&no_common_scope, &to_payments, "invalid_scope", ""),
        (&access, &to_stock, "invalid_target", ""),
    ];
    for round in 0..3 {
        for (subject, more, error, why) in &cases {
            let r = exchange(&issuer, &ORDERS_X, subject, more).await;
            assert_eq!(r.status, 400, "round {round}: {}", body(&r));
            refused(&r, error, why);
        }
    }
    // Orders' next user is served, and so is orders itself, and every other client on its
    // address.
    exchanged(&issuer, &ORDERS_X, &access, PAYMENTS).await;
    let own = "grant_type=client_credentials&scope=read:items";
    let r = issuer.token(&ORDERS_X, own).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let r = issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));

    // Wrong secrets still count: the address is stopped once they spent its budget.
    let guesser = TestClient {
        id: ORDERS_X.id,
        secret: Some("a-guess-0123456789abcdef0123456789"),
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(issuer.token(&guesser, own).await.status);
    }
    assert_eq!(statuses[..4], [401; 4], "{statuses:?}");
    assert_eq!(statuses[5], 429, "{statuses:?}");
    let r = exchange(&issuer, &ORDERS_X, &access, &to_payments).await;
    assert_eq!(r.status, 429, "{}", body(&r));
    issuer.stop().await;
}

/// Everything every test in this binary logs, at trace level.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_line_names_the_subject_tokens_jti_and_the_issued_one_never_a_token() {
    let logs = captured_logs();
    let issuer = start().await;
    let (access, _) = alice(&issuer).await;
    let token = exchanged(&issuer, &ORDERS_X, &access, PAYMENTS).await;
    let (subject_jti, jti) = (
        claims_of(&access)["jti"].clone(),
        claims_of(&token)["jti"].clone(),
    );
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("subject_jti={}", subject_jti.as_str().unwrap())))
        .unwrap_or_else(|| panic!("no audit line names the subject token's jti: {text}"));
    assert!(
        line.contains("action=\"token_exchange\"") || line.contains("action=token_exchange"),
        "{line}"
    );
    assert!(
        line.contains(&format!(" jti={}", jti.as_str().unwrap())),
        "{line}"
    );
    for secret in [&access, &token] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "a token was logged");
    }
    issuer.stop().await;
}
