//! `when` conditions on rules, through a real sidecar on loopback: a condition over groups,
//! a tenant claim against the path and a header lets the request through only when it is
//! true; everything else (false, a missing claim, a claim of the wrong type, a list too long
//! to iterate, a repeated header, a token whose nested claims are spelled twice) is refused,
//! and a config whose condition does not compile leaves the last good one in force.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const TENANT_RULE: &str =
    r#""admins" in claims.groups && request.path.startsWith("/tenants/" + claims.tenant + "/")"#;
const CHANGE_RULE: &str = r#"request.method == "GET" || request.headers["x-change"] == "approved""#;
const ALL_GROUPS_RULE: &str = r#"claims.groups.all(g, g.startsWith("team-"))"#;

struct Setup {
    upstream: Upstream,
    key: SigningKey,
    sidecar: scopegate_sidecar::Running,
    dir: TempDir,
    config: Value,
}

fn with_conditions(mut config: Value) -> Value {
    let rules = config["rules"].as_array_mut().unwrap();
    rules.push(json!({"name": "tenant", "paths": ["/tenants/**"],
        "action": {"type": "requireAll", "scopes": ["read:items"]}, "when": TENANT_RULE}));
    rules.push(json!({"name": "change", "paths": ["/changes/**"],
        "action": {"type": "authenticated"}, "when": CHANGE_RULE}));
    rules.push(json!({"name": "teams", "paths": ["/teams/**"],
        "action": {"type": "authenticated"}, "when": ALL_GROUPS_RULE}));
    config
}

async fn setup() -> Setup {
    let upstream = Upstream::start(Duration::from_secs(30)).await;
    let (key, _) = SigningKey::es256();
    let dir = TempDir::new();
    let config = with_conditions(config(
        upstream.addr.port(),
        json!({"keys": [key.jwk("k1", Some("ES256"))]}),
    ));
    let sidecar = start_sidecar(&dir, &config).await;
    Setup {
        upstream,
        key,
        sidecar,
        dir,
        config,
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

    async fn status(&self, method: &str, target: &str, token: &str, extra: &[(&str, &str)]) -> u16 {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n"
        );
        for (name, value) in extra {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("Content-Length: 0\r\n\r\n");
        let r = raw(self.sidecar.proxy_addr(), request.as_bytes()).await;
        if r.status == 403 {
            // A refused condition answers like any 403 of a valid token.
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(challenge.contains("insufficient_scope"), "{challenge}");
        }
        r.status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_true_condition_passes_and_everything_else_is_refused() {
    let s = setup().await;
    let admin_of_acme = s.token(json!({"groups": ["staff", "admins"], "tenant": "acme"}));
    assert_eq!(
        s.status("GET", "/tenants/acme/orders", &admin_of_acme, &[])
            .await,
        200
    );
    let hits = s.upstream.hits();

    // The tenant claim must match the path segment, whatever the spelling tries.
    for target in [
        "/tenants/other/orders",
        "/tenants/acme",
        "/tenants/acmex/orders",
    ] {
        assert_eq!(
            s.status("GET", target, &admin_of_acme, &[]).await,
            403,
            "{target}"
        );
    }
    // Not in the group; no groups claim at all (the expression errors); groups as a string
    // instead of a list (`in` on a string is an error, never a substring test).
    let staff = s.token(json!({"groups": ["staff"], "tenant": "acme"}));
    let no_groups = s.token(json!({"tenant": "acme"}));
    let string_groups = s.token(json!({"groups": "admins", "tenant": "acme"}));
    let numeric_tenant = s.token(json!({"groups": ["admins"], "tenant": 7}));
    for token in [&staff, &no_groups, &string_groups, &numeric_tenant] {
        assert_eq!(
            s.status("GET", "/tenants/acme/orders", token, &[]).await,
            403
        );
    }
    // The scopes still come first: a token without them gets the scope answer.
    let mut no_scope = claims("");
    no_scope["groups"] = json!(["admins"]);
    no_scope["tenant"] = json!("acme");
    let no_scope = mint(&s.key, &header("ES256", "k1"), &no_scope);
    let r = get_with_token(s.sidecar.proxy_addr(), "/tenants/acme/orders", &no_scope).await;
    assert_eq!(r.status, 403);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("scope=\"read:items\"")
    );
    assert_eq!(
        s.upstream.hits(),
        hits,
        "no refused request reached the app"
    );
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_methods_and_claim_lists_are_read_safely() {
    let s = setup().await;
    let token = s.token(json!({"groups": ["team-a", "team-b"]}));
    assert_eq!(s.status("GET", "/changes/1", &token, &[]).await, 200);
    assert_eq!(s.status("POST", "/changes/1", &token, &[]).await, 403);
    let approved = [("X-Change", "approved")];
    assert_eq!(s.status("POST", "/changes/1", &token, &approved).await, 200);
    // Sent twice, the header is absent to the expression: the app might read either copy.
    let twice = [("x-change", "approved"), ("X-Change", "denied")];
    assert_eq!(s.status("POST", "/changes/1", &token, &twice).await, 403);
    let twice_same = [("x-change", "approved"), ("x-change", "approved")];
    assert_eq!(
        s.status("POST", "/changes/1", &token, &twice_same).await,
        403
    );
    // Another spelling a CGI-style app reads as the same header: absent to the expression.
    let respelled = [("x-change", "approved"), ("x_change", "denied")];
    assert_eq!(
        s.status("POST", "/changes/1", &token, &respelled).await,
        403
    );
    // Named in Connection, the sidecar would drop it before the app: absent to the expression.
    let dropped = [("x-change", "approved"), ("Connection", "x-change")];
    assert_eq!(s.status("POST", "/changes/1", &token, &dropped).await, 403);

    // An iterating expression over a claim list: within the bound it decides, over it refuses.
    assert_eq!(s.status("GET", "/teams/x", &token, &[]).await, 200);
    let outsider = s.token(json!({"groups": ["team-a", "ops"]}));
    assert_eq!(s.status("GET", "/teams/x", &outsider, &[]).await, 403);
    let many: Vec<String> = (0..65).map(|i| format!("team-{i}")).collect();
    let long_list = s.token(json!({ "groups": many }));
    assert_eq!(s.status("GET", "/teams/x", &long_list, &[]).await, 403);
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_claims_spelled_twice_are_an_invalid_token() {
    let s = setup().await;
    let mut claims_text = claims("read:items").to_string();
    claims_text.pop(); // the closing brace
    claims_text.push_str(r#","groups":["admins"],"tenant":"acme","org":{"id":"a","id":"b"}}"#);
    let token = mint_raw(
        &s.key,
        &header("ES256", "k1").to_string(),
        claims_text.as_bytes(),
    );
    let r = get_with_token(s.sidecar.proxy_addr(), "/tenants/acme/orders", &token).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_that_does_not_compile_keeps_the_last_good_config() {
    let s = setup().await;
    let token = s.token(json!({"groups": ["staff"], "tenant": "acme"}));
    assert_eq!(
        s.status("GET", "/tenants/acme/orders", &token, &[]).await,
        403
    );

    // A loop over a literal, an unknown function, a credential header: each refused whole.
    for bad in [
        r#"[1, 2, 3].all(x, x > 0)"#,
        r#"claims.groups.exists(g, g.lowerAscii() == "admins")"#,
        r#"request.headers["authorization"] != """#,
    ] {
        let before = failed_reloads(&s.admin_metrics().await);
        let mut config = s.config.clone();
        config["policy"]["generation"] = json!(2);
        config["rules"][5]["when"] = json!(bad);
        write_atomic(&s.dir.join("config.json"), &config.to_string());
        eventually("the reload is refused", Duration::from_secs(5), || async {
            (failed_reloads(&s.admin_metrics().await) > before).then_some(())
        })
        .await;
        assert_eq!(
            s.status("GET", "/tenants/acme/orders", &token, &[]).await,
            403,
            "{bad}"
        );
    }
    s.sidecar.shutdown().await;
}

impl Setup {
    async fn admin_metrics(&self) -> String {
        String::from_utf8(get(self.sidecar.admin_addr(), "/metrics", &[]).await.body).unwrap()
    }
}

/// Failed reloads so far, from the metrics text.
fn failed_reloads(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("scopegate_sidecar_config_reloads_total{result=\"error\"}"))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or(0)
}
