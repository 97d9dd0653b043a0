//! A real outside identity provider (oidc-provider, OpenID Certified, over HTTPS on loopback)
//! issuing RFC 9068 JWT access tokens with Keycloak-shaped claims, in front of a sidecar that
//! trusts it through its JWKS: roles as scopes (realm_access.roles with a prefix), a `when` on
//! groups, claims passed to the app as headers, and a key rotation at the provider picked up
//! on the first token signed with the new key.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::issuer::{basic, enc, free_port, header_of, tls_raw};
use support::*;

const CLIENT_ID: &str = "reports";
const CLIENT_SECRET: &str = "reports-secret";
/// The resource server's identifier: the tokens' audience.
const RESOURCE: &str = "https://orders.shop.svc";

/// The provider's process; killed on drop.
struct Idp {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

impl Idp {
    /// Starts the provider on `port` with a fresh signing key named `kid`.
    async fn start(tls: &TempDir, port: u16, kid: &str) -> Idp {
        let env = [
            ("PORT", port.to_string()),
            ("KEY", tls.join("tls.key").display().to_string()),
            ("CERT", tls.join("tls.crt").display().to_string()),
            ("KID", kid.to_owned()),
            ("AUDIENCE", RESOURCE.to_owned()),
            ("CLIENT_ID", CLIENT_ID.to_owned()),
            ("CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        ];
        Idp {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: support::node_idp::spawn("resource-idp.mjs", &env).await,
        }
    }

    /// An access token for the resource server, by client_credentials.
    async fn access_token(&self, certs: &TestCerts) -> String {
        let body = format!(
            "grant_type=client_credentials&scope=read%3Aitems&resource={}",
            enc(RESOURCE)
        );
        let request = format!(
            "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            basic(CLIENT_ID, CLIENT_SECRET),
            body.len()
        );
        let answer = tls_raw(certs, self.addr, request.as_bytes()).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()["access_token"].as_str().unwrap().to_owned()
    }
}

fn sidecar_config(upstream: u16, idp: &Idp, ca_pem: &str) -> Value {
    let mut config = config(upstream, json!({"keys": []}));
    config["verify"]["issuers"] = json!([{
        "issuer": format!("https://{}", idp.addr),
        "keys": {
            "type": "remote", "jwksUri": format!("https://{}/jwks", idp.addr),
            "algorithms": ["ES256"], "refreshIntervalSecs": 3600, "caBundlePem": ca_pem,
            "scopes": {"claim": "realm_access.roles", "prefix": "shop:"}
        }
    }]);
    config["verify"]["audiences"] = json!([RESOURCE]);
    config["rules"][0]["when"] = json!(r#""admins" in claims.groups"#);
    config["rules"][4]["when"] = json!(r#""auditors" in claims.groups"#);
    config["headers"]["claims"] = json!({"x-user-email": "email", "x-groups": "groups"});
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_a_real_provider_pass_by_roles_groups_and_claims_and_survive_its_rotation() {
    let certs = TestCerts::new();
    let tls = TempDir::new();
    std::fs::write(tls.join("tls.crt"), &certs.leaf_pem).unwrap();
    std::fs::write(tls.join("tls.key"), certs.leaf_key.serialize_pem()).unwrap();
    let port = free_port();
    let idp = Idp::start(&tls, port, "k1").await;
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let dir = TempDir::new();
    let sidecar = start_sidecar(
        &dir,
        &sidecar_config(upstream.addr.port(), &idp, &certs.ca_pem),
    )
    .await;
    let addr = sidecar.proxy_addr();

    let first = idp.access_token(&certs).await;
    let header = header_of(&first);
    assert_eq!(
        (header["typ"].as_str(), header["kid"].as_str()),
        (Some("at+jwt"), Some("k1"))
    );
    let r = get_with_token(addr, "/items/1", &first).await;
    assert_eq!(r.status, 200, "{:?}", r.header("www-authenticate"));
    let seen = upstream.last().unwrap();
    // Scopes from the roles with the prefix: billing:admin and offline_access grant nothing,
    // and the provider's own scope claim does not count.
    assert_eq!(seen.headers["x-auth-scopes"], "read:items reports");
    assert_eq!(seen.headers["x-user-email"], "reports@shop.example");
    assert_eq!(seen.headers["x-groups"], r#"["staff","admins"]"#);
    assert_eq!(seen.headers["x-auth-client-id"], CLIENT_ID);
    // No role grants admin, and the token's groups do not hold auditors.
    assert_eq!(get_with_token(addr, "/admin/x", &first).await.status, 403);
    assert_eq!(get_with_token(addr, "/me", &first).await.status, 403);

    // The provider rotates: restarted with a new key, it signs with k2 only.
    drop(idp);
    let idp = Idp::start(&tls, port, "k2").await;
    let second = idp.access_token(&certs).await;
    assert_eq!(header_of(&second)["kid"], "k2");
    assert_eq!(get_with_token(addr, "/items/1", &second).await.status, 200);
    // The old key is gone from its JWKS: a token it signed is no longer accepted.
    // (The new key set flushed the token cache, so it is checked again.)
    let r = get_with_token(addr, "/items/1", &first).await;
    assert_eq!(r.status, 401);
    sidecar.shutdown().await;
}
