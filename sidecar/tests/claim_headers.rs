//! Claims to headers (`headers.claims`), through a real sidecar on loopback: chosen claims
//! reach the app, strings as they are and other values as compact JSON; forged copies in any
//! spelling never do; a claim a header cannot carry refuses the request instead of
//! forwarding a partial identity.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

struct Setup {
    upstream: Upstream,
    key: SigningKey,
    sidecar: scopegate_sidecar::Running,
    _dir: TempDir,
}

async fn setup() -> Setup {
    let upstream = Upstream::start(Duration::from_secs(30)).await;
    let (key, _) = SigningKey::es256();
    let dir = TempDir::new();
    let mut config = config(
        upstream.addr.port(),
        json!({"keys": [key.jwk("k1", Some("ES256"))]}),
    );
    config["headers"]["claims"] = json!({
        "x-user-email": "email",
        "x-tenant": "org.id",
        "x-roles": "realm_access.roles",
    });
    let sidecar = start_sidecar(&dir, &config).await;
    Setup {
        upstream,
        key,
        sidecar,
        _dir: dir,
    }
}

impl Setup {
    fn token(&self, extra: Value) -> String {
        mint(
            &self.key,
            &header("ES256", "k1"),
            &claims_with("read:items", extra),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_claims_reach_the_app_and_forged_copies_never_do() {
    let s = setup().await;
    let token = s.token(json!({
        "email": "ada@example.com",
        "org": {"id": "acme"},
        "realm_access": {"roles": ["admin", "ops"]},
    }));
    let forged = [
        ("Authorization", format!("Bearer {token}")),
        ("X-User-Email", "root@example.com".to_owned()),
        ("x_tenant", "evil".to_owned()),
        ("X_ROLES", "[\"superuser\"]".to_owned()),
    ];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = get(s.sidecar.proxy_addr(), "/items/1", &forged).await;
    assert_eq!(r.status, 200);
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.headers["x-user-email"], "ada@example.com");
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert_eq!(seen.headers["x-roles"], r#"["admin","ops"]"#);
    assert!(!seen.headers.contains_key("x_tenant"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("x_roles"), "{:?}", seen.headers);

    // Absent claims send no header, and the forged ones are still removed.
    let bare = s.token(json!({}));
    let forged = [
        ("Authorization", format!("Bearer {bare}")),
        ("x-tenant", "evil".to_owned()),
    ];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        get(s.sidecar.proxy_addr(), "/items/1", &forged)
            .await
            .status,
        200
    );
    let seen = s.upstream.last().unwrap();
    assert!(!seen.headers.contains_key("x-tenant"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("x-user-email"));

    // Without a token (a public route), forged claim headers are removed too.
    let r = get(s.sidecar.proxy_addr(), "/public/x", &[("X-Tenant", "evil")]).await;
    assert_eq!(r.status, 200);
    assert!(!s.upstream.last().unwrap().headers.contains_key("x-tenant"));
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_a_header_cannot_carry_refuses_the_request() {
    let s = setup().await;
    let hits = s.upstream.hits();
    for claims in [
        json!({"email": "ada@example.com\r\nx-auth-subject: root"}),
        json!({"email": "ada@example.com\nx"}),
        json!({"org": {"id": "a\u{0}b"}}),
        json!({"email": "x".repeat(4097)}),
    ] {
        let token = s.token(claims.clone());
        let r = get_with_token(s.sidecar.proxy_addr(), "/items/1", &token).await;
        assert_eq!(r.status, 401, "{claims}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
    assert_eq!(s.upstream.hits(), hits, "nothing reached the app");
    // Non-ASCII text is a valid header value and goes as it is (UTF-8).
    let token = s.token(json!({"email": "zoë@example.com"}));
    let r = get_with_token(s.sidecar.proxy_addr(), "/items/1", &token).await;
    assert_eq!(r.status, 200);
    s.sidecar.shutdown().await;
}
