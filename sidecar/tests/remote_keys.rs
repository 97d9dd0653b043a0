//! An external issuer's JWKS fetched over TLS (CA from the config's bundle): foreign keys
//! without `alg` used only with allow-listed algorithms, one refetch per interval for an
//! unknown kid, the last good set kept when fetches fail, and health in `/readyz`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

struct Idp {
    jwks: Arc<Mutex<(u16, String)>>,
    server: TlsServer,
}

async fn idp(keys: Value) -> Idp {
    let jwks = Arc::new(Mutex::new((200, json!({"keys": keys}).to_string())));
    let current = jwks.clone();
    let server = TlsServer::start(Arc::new(move |_| {
        let (status, body) = current.lock().unwrap().clone();
        (status, "application/json", body)
    }))
    .await;
    Idp { jwks, server }
}

fn remote_config(upstream: u16, idp: &Idp, refresh: u64) -> Value {
    let mut cfg = config(upstream, json!({"keys": []}));
    cfg["verify"]["issuers"][0]["keys"] = json!({
        "type": "remote", "jwksUri": idp.server.url("/.well-known/jwks.json"),
        "algorithms": ["ES256", "RS256"], "refreshIntervalSecs": refresh, "allowJwtTyp": true,
        "caBundlePem": idp.server.ca_pem
    });
    cfg
}

async fn ready(admin: std::net::SocketAddr) {
    eventually("a fetched key set", Duration::from_secs(20), || async {
        (readyz(admin).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_verify_with_allow_listed_algorithms_only() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let idp = idp(json!([key.jwk("k1", None), {"kty": "weird", "kid": "x"}])).await;
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &remote_config(upstream.addr.port(), &idp, 3600)).await;
    ready(sidecar.admin_addr()).await;
    let addr = sidecar.proxy_addr();
    let at = mint(&key, &header("ES256", "k1"), &claims("read:items"));
    assert_eq!(get_with_token(addr, "/items/1", &at).await.status, 200);
    let plain = mint(
        &key,
        &json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}),
        &claims("read:items"),
    );
    assert_eq!(
        get_with_token(addr, "/items/1", &plain).await.status,
        200,
        "allowJwtTyp"
    );
    let hs = mint(
        &SigningKey::hs256(&key.public_bytes()),
        &header("HS256", "k1"),
        &claims("read:items"),
    );
    assert_eq!(get_with_token(addr, "/items/1", &hs).await.status, 401);
    let wrong_alg = mint(&key, &header("ES384", "k1"), &claims("read:items"));
    assert_eq!(
        get_with_token(addr, "/items/1", &wrong_alg).await.status,
        401
    );
    let (_, detail) = readyz(sidecar.admin_addr()).await;
    assert!(detail.contains("1 keys, fetched"), "{detail}");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_at_most_once_per_interval() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (old, _) = SigningKey::es256();
    let (rotated, _) = SigningKey::es256();
    let idp = idp(json!([old.jwk("old", Some("ES256"))])).await;
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &remote_config(upstream.addr.port(), &idp, 3600)).await;
    ready(sidecar.admin_addr()).await;
    let addr = sidecar.proxy_addr();
    assert_eq!(idp.server.count(), 1);

    // The issuer rotates: the first token with the new kid waits for one refetch and passes.
    idp.jwks.lock().unwrap().1 =
        json!({"keys": [old.jwk("old", Some("ES256")), rotated.jwk("new", Some("ES256"))]})
            .to_string();
    let token = mint(&rotated, &header("ES256", "new"), &claims("read:items"));
    assert_eq!(get_with_token(addr, "/items/1", &token).await.status, 200);
    assert_eq!(idp.server.count(), 2);

    // A flood of made-up kids costs no further fetch within the interval.
    for i in 0..20 {
        let bogus = mint(
            &rotated,
            &header("ES256", &format!("bogus{i}")),
            &claims("read:items"),
        );
        assert_eq!(get_with_token(addr, "/items/1", &bogus).await.status, 401);
    }
    assert_eq!(idp.server.count(), 2);
    let old_token = mint(&old, &header("ES256", "old"), &claims("read:items"));
    assert_eq!(
        get_with_token(addr, "/items/1", &old_token).await.status,
        200
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_keep_the_last_good_set_and_show_in_readyz() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let idp = idp(json!([key.jwk("k1", Some("ES256"))])).await;
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &remote_config(upstream.addr.port(), &idp, 1)).await;
    ready(sidecar.admin_addr()).await;
    let token = mint(&key, &header("ES256", "k1"), &claims("read:items"));
    assert_eq!(
        get_with_token(sidecar.proxy_addr(), "/items/1", &token)
            .await
            .status,
        200
    );

    *idp.jwks.lock().unwrap() = (500, "oops".into());
    let detail = eventually(
        "a failed fetch in /readyz",
        Duration::from_secs(20),
        || async {
            let (status, text) = readyz(sidecar.admin_addr()).await;
            (status == 200 && text.contains("last fetch failed (status)")).then_some(text)
        },
    )
    .await;
    assert!(detail.contains("keeping the last good set"), "{detail}");
    let fresh = mint(&key, &header("ES256", "k1"), &claims("read:items"));
    assert_eq!(
        get_with_token(sidecar.proxy_addr(), "/items/1", &fresh)
            .await
            .status,
        200
    );
    let metrics = String::from_utf8(get(sidecar.admin_addr(), "/metrics", &[]).await.body).unwrap();
    assert!(
        !metrics.contains("jwks_fetches_total{result=\"error\"} 0"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_set_yet_means_not_ready_and_every_token_refused() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let idp = idp(json!([])).await;
    *idp.jwks.lock().unwrap() = (503, String::new());
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &remote_config(upstream.addr.port(), &idp, 3600)).await;
    let detail = eventually("a failed first fetch", Duration::from_secs(20), || async {
        let (status, text) = readyz(sidecar.admin_addr()).await;
        (status == 503 && text.contains("no key set fetched yet (last error: status)"))
            .then_some(text)
    })
    .await;
    assert!(detail.starts_with("not ready"), "{detail}");
    let token = mint(&key, &header("ES256", "k1"), &claims("read:items"));
    assert_eq!(
        get_with_token(sidecar.proxy_addr(), "/items/1", &token)
            .await
            .status,
        401
    );
    sidecar.shutdown().await;
}

/// The operator's CA certifies in-cluster Services only. A tenant holding a certificate from
/// it (here: the JWKS server's own CA put where the operator's bundle goes) must not be able
/// to pose as an external issuer: the JWKS URL is verified against the system roots and the
/// issuer's own caBundle, and the fetch fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_an_operator_ca_certificate_gets_no_key_in() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let impostor = idp(json!([key.jwk("k1", Some("ES256"))])).await;
    let mut cfg = remote_config(upstream.addr.port(), &impostor, 3600);
    cfg["verify"]["issuers"][0]["keys"]
        .as_object_mut()
        .unwrap()
        .remove("caBundlePem");
    cfg["caBundlePem"] = json!(impostor.server.ca_pem);
    let dir = TempDir::new();
    let sidecar = start_sidecar(&dir, &cfg).await;
    let detail = eventually("a refused first fetch", Duration::from_secs(20), || async {
        let (status, text) = readyz(sidecar.admin_addr()).await;
        (status == 503 && text.contains("no key set fetched yet (last error: connect)"))
            .then_some(text)
    })
    .await;
    assert!(detail.starts_with("not ready"), "{detail}");
    assert_eq!(
        impostor.server.count(),
        0,
        "no request got past the TLS handshake"
    );
    let token = mint(&key, &header("ES256", "k1"), &claims("read:items"));
    assert_eq!(
        get_with_token(sidecar.proxy_addr(), "/items/1", &token)
            .await
            .status,
        401
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_in_another_claim_are_the_scopes_rules_check() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let idp = idp(json!([key.jwk("k1", None)])).await;
    let dir = TempDir::new();
    let mut config = remote_config(upstream.addr.port(), &idp, 3600);
    config["verify"]["issuers"][0]["keys"]["scopes"] =
        json!({"claim": "realm_access.roles", "prefix": "shop:"});
    let sidecar = start_sidecar(&dir, &config).await;
    ready(sidecar.admin_addr()).await;
    let addr = sidecar.proxy_addr();
    // Keycloak-shaped: the scope claim says openid, the realm roles say what the user may do.
    let token = |roles: Value| {
        let mut claims = claims("openid read:items admin");
        claims["realm_access"] = json!({ "roles": roles });
        mint(&key, &header("ES256", "k1"), &claims)
    };
    let reader = token(json!([
        "offline_access",
        "shop:read:items",
        "billing:admin"
    ]));
    let r = get_with_token(addr, "/items/1", &reader).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream.last().unwrap().headers["x-auth-scopes"],
        "read:items"
    );
    // The scope claim no longer counts, and a role of another prefix grants nothing.
    assert_eq!(get_with_token(addr, "/admin/x", &reader).await.status, 403);
    let admin = token(json!(["shop:admin", "shop:admin", "shop:not a scope"]));
    assert_eq!(get_with_token(addr, "/admin/x", &admin).await.status, 200);
    assert_eq!(upstream.last().unwrap().headers["x-auth-scopes"], "admin");
    // No roles claim: a valid token with no scopes. Roles of another type: not a valid token.
    let mut bare = claims("read:items");
    bare.as_object_mut().unwrap().remove("realm_access");
    let bare = mint(&key, &header("ES256", "k1"), &bare);
    assert_eq!(get_with_token(addr, "/items/1", &bare).await.status, 403);
    assert_eq!(get_with_token(addr, "/me", &bare).await.status, 200);
    for confused in [
        json!("shop:read:items"),
        json!({"shop:read:items": true}),
        json!([1, 2]),
    ] {
        let r = get_with_token(addr, "/items/1", &token(confused.clone())).await;
        if confused.is_string() {
            // A space-separated string is accepted as IdPs send scp.
            assert_eq!(r.status, 200, "{confused}");
        } else {
            assert_eq!(r.status, 401, "{confused}");
            assert!(
                r.header("www-authenticate")
                    .unwrap()
                    .contains("invalid_token")
            );
        }
    }
    sidecar.shutdown().await;
}
