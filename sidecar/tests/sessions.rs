//! Browser sessions at the sidecar, against the real issuer role: a browser (played by raw
//! requests with a cookie jar) is sent to log in, the issuer's login is driven through its
//! mint socket, the callback sets the sealed session cookie, and the app behind the sidecar
//! sees the user as a bearer request would show it. Then the attacks: forged, tampered and
//! foreign cookies, replayed and cross-browser callbacks, open redirects, cross-site writes,
//! sessions after logout and after their key retired.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use scopegate_core::jose::b64;
use scopegate_core::session::{LOGIN_COOKIE, SESSION_COOKIE};
use scopegate_sessions::flight::RETRY_AFTER_FAILURE;
use scopegate_sessions::keys::Keyring;
use scopegate_sessions::state::Session;
use serde_json::{Value, json};
use support::issuer::{
    ClusterKey, FEED_SUBJECT_KEY, Issuer, ORDERS, Spec, claims_of, enc, introspect, jwks_of,
    query_param, registry,
};
use support::{RawResponse, TempDir, Upstream, eventually, now, raw, readyz, write_atomic};

/// The app's public origin and its callback.
const ORIGIN: &str = "https://app.example";
const REDIRECT: &str = "https://app.example/.scopegate/callback";
/// The policy's OAuthClient: a ServiceAccount client with the code and refresh grants.
const PORTAL: &str = "shop.portal";

fn portal_client() -> Value {
    json!({
        "clientId": PORTAL, "public": false, "authMethod": "service_account_jwt",
        "grantTypes": ["authorization_code", "refresh_token"],
        "scopes": ["read:items"], "defaultScopes": ["read:items"], "audiences": [ORDERS],
        "redirectUris": [REDIRECT],
        "serviceAccounts": ["system:serviceaccount:shop:billing"]
    })
}

/// A session key entry of 32 `fill` bytes.
fn key(id: &str, fill: u8, created_at: i64, retire_at: Option<i64>) -> Value {
    let mut k = json!({"id": id, "secret": b64::encode(&[fill; 32]), "createdAt": created_at});
    if let Some(t) = retire_at {
        k["retireAt"] = json!(t);
    }
    k
}

/// An issuer that knows the portal client and the cluster's ServiceAccount keys, with
/// access tokens living `ttl` seconds.
async fn issuer_with(ttl: u64) -> (Issuer, ClusterKey) {
    let issuer = Issuer::start(Spec::default()).await;
    let cluster = ClusterKey::generate();
    // The config first, the registry second: once the portal client is known, so is the
    // cluster's issuer its assertions need.
    let mut config = issuer.config.clone();
    config["apiVersion"] = json!("sidecar.scopegate.dev/v2");
    config["issuer"]["serviceAccountIssuer"] = cluster.rendered();
    config["issuer"]["accessTokenTtlSecs"] = json!(ttl);
    write_atomic(&issuer.dir.join("config.json"), &config.to_string());
    let mut clients = registry(None);
    clients["clients"]
        .as_array_mut()
        .unwrap()
        .push(portal_client());
    write_atomic(&issuer.dir.join("clients.json"), &clients.to_string());
    let probe = format!(
        "/oauth2/authorize?response_type=code&client_id={PORTAL}&redirect_uri={}&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        support::issuer::enc(REDIRECT)
    );
    eventually(
        "the portal client admitted",
        Duration::from_secs(10),
        || async {
            // The login page, once the client is known (an unknown client gets an error page).
            (issuer.get(&probe).await.status == 303).then_some(())
        },
    )
    .await;
    (issuer, cluster)
}

/// A pod with sessions: the app, its sidecar, the key file and the projected token.
struct Pod {
    issuer: Issuer,
    app: Upstream,
    dir: TempDir,
    sidecar: scopegate_sidecar::Running,
}

impl Pod {
    async fn start(ttl: u64) -> Pod {
        Pod::start_with(ttl, |_| {}).await
    }

    /// A pod whose issuer's access tokens live `ttl` seconds, its sidecar config changed by
    /// `tune`.
    async fn start_with(ttl: u64, tune: impl FnOnce(&mut Value)) -> Pod {
        let (issuer, cluster) = issuer_with(ttl).await;
        let dir = TempDir::new();
        std::fs::write(dir.join("issuer-token"), cluster.token(&issuer.url)).unwrap();
        write_keys(&dir, &[key("k1", 1, now() - 60, None)]);
        let app = Upstream::start(Duration::from_millis(1)).await;
        let mut config = pod_config(&issuer, &dir, app.addr.port(), "portal");
        tune(&mut config);
        let sidecar = support::start_sidecar(&dir, &config).await;
        Pod {
            issuer,
            app,
            dir,
            sidecar,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sidecar.proxy_addr()
    }

    async fn stop(self) {
        self.sidecar.shutdown().await;
        self.issuer.stop().await;
    }

    /// A request with `headers` and the cookies of `jar`.
    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        jar: &Jar,
    ) -> RawResponse {
        send(self.addr(), method, target, headers, jar).await
    }

    /// A browser's navigation to `target`.
    async fn visit(&self, target: &str, jar: &Jar) -> RawResponse {
        self.send("GET", target, BROWSER, jar).await
    }

    /// Logs `subject` in from `target` through the issuer; returns the jar with the session
    /// and the callback's answer.
    async fn login(&self, target: &str, subject: &str) -> (Jar, RawResponse) {
        let mut jar = Jar::default();
        let start = self.visit(target, &jar).await;
        assert_eq!(start.status, 302, "{start:?}");
        jar.take(&start);
        let location = start.header("location").unwrap();
        let authorize = format!("{}/oauth2/authorize?", self.issuer.url);
        let query = location
            .strip_prefix(&authorize)
            .unwrap_or_else(|| panic!("{location}"));
        let back = self.issuer.authorize(query, subject).await.unwrap();
        let callback = back.strip_prefix(ORIGIN).unwrap().to_owned();
        let done = self.visit(&callback, &jar).await;
        jar.take(&done);
        (jar, done)
    }

    async fn metric(&self, event: &str) -> u64 {
        metric(self.sidecar.admin_addr(), event).await
    }
}

/// `scopegate_sidecar_sessions_total{event}` on the admin port at `admin`.
async fn metric(admin: SocketAddr, event: &str) -> u64 {
    let r = support::get(admin, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let line = format!("scopegate_sidecar_sessions_total{{event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The pod's session keys, as the test wrote them.
fn keys_of(dir: &TempDir) -> Keyring {
    Keyring::parse(&std::fs::read_to_string(dir.join("session-keys.json")).unwrap()).unwrap()
}

/// The session a jar's cookie holds, opened with the pod's keys: the refresh token the
/// browser never sees, for the issuer's side of a test.
fn session_of(dir: &TempDir, jar: &Jar) -> Session {
    Session::open(
        &keys_of(dir),
        now(),
        "shop/portal",
        jar.get(SESSION_COOKIE).unwrap(),
    )
    .unwrap()
}

/// `session` sealed as the pod's sidecar seals it.
fn sealed(dir: &TempDir, session: &Session) -> String {
    session.seal(&keys_of(dir), now(), "shop/portal").unwrap()
}

/// The jar with its session as the sidecar finds it once time has passed: the access token
/// obtained so long ago that a quarter of its lifetime, at most 20 s, is left (due for a
/// refresh, still valid), the same tokens, sealed as the sidecar seals.
fn due(dir: &TempDir, jar: &Jar) -> Jar {
    let mut session = session_of(dir, jar);
    let left = ((session.expires_at - session.obtained_at) / 4).min(20);
    let shift = session.expires_at - now() - left;
    session.obtained_at -= shift;
    session.expires_at -= shift;
    session.started_at -= shift;
    let mut aged = jar.clone();
    aged.0
        .insert(SESSION_COOKIE.to_owned(), sealed(dir, &session));
    aged
}

/// A form POST to the issuer as the portal client, with the pod's ServiceAccount assertion.
async fn as_portal(issuer: &Issuer, dir: &TempDir, path: &str, body: &str) -> RawResponse {
    let assertion = std::fs::read_to_string(dir.join("issuer-token")).unwrap();
    let body = format!(
        "{body}&client_id={}&client_assertion_type={}&client_assertion={}",
        enc(PORTAL),
        enc("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        enc(&assertion)
    );
    issuer.post(path, &body, &[]).await
}

/// A refresh of `refresh_token` at the issuer, as the portal client.
async fn refresh_at_issuer(issuer: &Issuer, dir: &TempDir, refresh_token: &str) -> RawResponse {
    let body = format!(
        "grant_type=refresh_token&refresh_token={}",
        enc(refresh_token)
    );
    as_portal(issuer, dir, "/oauth2/token", &body).await
}

/// Whether an answer clears the session cookie.
fn clears_session(r: &RawResponse) -> bool {
    set_cookies(r)
        .iter()
        .any(|(n, v, a)| n == SESSION_COOKIE && v.is_empty() && *a == Some(0))
}

/// A script's request (no navigation), which is never sent to log in.
const SCRIPT: &[(&str, &str)] = &[("Accept", "application/json")];

/// The headers of a browser's top-level navigation.
const BROWSER: &[(&str, &str)] = &[
    ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
    ("Sec-Fetch-Mode", "navigate"),
];

fn write_keys(dir: &TempDir, keys: &[Value]) {
    write_atomic(
        &dir.join("session-keys.json"),
        &json!({"keys": keys}).to_string(),
    );
}

fn pod_config(issuer: &Issuer, dir: &TempDir, app_port: u16, policy: &str) -> Value {
    json!({
        "apiVersion": "sidecar.scopegate.dev/v2",
        "policy": {"namespace": "shop", "name": policy, "generation": 1},
        "listen": {"port": 0},
        "upstream": {"port": app_port, "responseTimeoutSecs": 5},
        "verify": {
            "issuers": [{"issuer": issuer.url, "keys": {"type": "static", "jwks": jwks_of(&issuer.keys)}}],
            "audiences": [ORDERS], "leewaySecs": 30
        },
        "revocation": {"feed": {"url": format!("{}/oauth2/revocations", issuer.url), "issuer": issuer.url,
            "stalenessBoundSecs": 60, "subjectKey": FEED_SUBJECT_KEY}},
        "rules": [
            {"name": "items", "paths": ["/items/**"], "action": {"type": "requireAll", "scopes": ["read:items"]}},
            {"name": "api", "paths": ["/api/**"], "action": {"type": "requireAll", "scopes": ["read:items"]}},
            {"name": "public", "paths": ["/bye"], "action": {"type": "public"}}
        ],
        "defaultAction": "deny",
        "headers": {"securityHeaders": true, "hsts": "always", "noStorePaths": [], "subjectHeader": "x-auth-subject", "scopesHeader": "x-auth-scopes",
            "clientIdHeader": "x-auth-client-id"},
        "caBundlePem": issuer.certs.ca_pem,
        "sessions": {
            "issuer": issuer.url,
            "authorizationEndpoint": format!("{}/oauth2/authorize", issuer.url),
            "tokenEndpoint": format!("{}/oauth2/token", issuer.url),
            "revocationEndpoint": format!("{}/oauth2/revoke", issuer.url),
            "clientId": PORTAL,
            "tokenAudience": issuer.url,
            "assertionPath": dir.join("issuer-token"),
            "redirectUri": REDIRECT,
            "paths": ["/items/**"],
            "scopes": ["read:items"],
            "audience": ORDERS,
            "afterLogout": "/bye",
            "maxLifetimeSecs": 3600,
            "keysPath": dir.join("session-keys.json")
        }
    })
}

/// A browser's cookie jar: what `Set-Cookie` set, without what it removed.
#[derive(Default, Clone, Debug)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn with(name: &str, value: &str) -> Jar {
        Jar(BTreeMap::from([(name.to_owned(), value.to_owned())]))
    }

    fn take(&mut self, r: &RawResponse) {
        for (name, value, max_age) in set_cookies(r) {
            if max_age == Some(0) {
                self.0.remove(&name);
            } else {
                self.0.insert(name, value);
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn header(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| {
            let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.join("; ")
        })
    }
}

/// Every `Set-Cookie` of an answer: name, value and `Max-Age`.
fn set_cookies(r: &RawResponse) -> Vec<(String, String, Option<i64>)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| {
            let mut parts = v.split(';');
            let (name, value) = parts.next().unwrap().split_once('=').unwrap();
            let max_age = parts.find_map(|p| p.trim().strip_prefix("Max-Age=")?.parse().ok());
            (name.to_owned(), value.to_owned(), max_age)
        })
        .collect()
}

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    jar: &Jar,
) -> RawResponse {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(cookies) = jar.header() {
        request.push_str(&format!("Cookie: {cookies}\r\n"));
    }
    if method == "POST" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    raw(addr, request.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_and_the_app_sees_the_user_as_a_bearer_request_shows_it() {
    let pod = Pod::start(600).await;
    // An API client without a token still gets the usual 401.
    let api = pod
        .send(
            "GET",
            "/items/1",
            &[("Accept", "application/json")],
            &Jar::default(),
        )
        .await;
    assert_eq!(api.status, 401);
    assert!(api.header("location").is_none());
    // A browser's navigation is sent to the issuer, its login bound to a sealed cookie.
    let start = pod.visit("/items/7?tab=a", &Jar::default()).await;
    assert_eq!(start.status, 302);
    assert_eq!(start.header("cache-control"), Some("no-store"));
    let location = start.header("location").unwrap();
    assert!(location.starts_with(&format!("{}/oauth2/authorize?", pod.issuer.url)));
    assert_eq!(query_param(location, "client_id").as_deref(), Some(PORTAL));
    assert_eq!(
        query_param(location, "redirect_uri").as_deref(),
        Some(REDIRECT)
    );
    assert_eq!(query_param(location, "resource").as_deref(), Some(ORDERS));
    assert_eq!(
        query_param(location, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let login_set = start
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with(LOGIN_COOKIE))
        .unwrap()
        .1
        .clone();
    assert!(
        login_set.ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600"),
        "{login_set}"
    );
    assert!(
        !login_set.contains(&query_param(location, "state").unwrap()),
        "state sealed"
    );

    let (jar, done) = pod.login("/items/7?tab=a", "alice").await;
    assert_eq!(done.status, 302, "{done:?}");
    assert_eq!(done.header("location"), Some("/items/7?tab=a"));
    assert_eq!(done.header("cache-control"), Some("no-store"));
    assert!(
        jar.get(LOGIN_COOKIE).is_none(),
        "the login cookie is cleared"
    );
    let session = jar.get(SESSION_COOKIE).unwrap().to_owned();
    assert!(session.starts_with("1.k1."));
    let set = set_cookies(&done);
    assert!(
        set.iter()
            .any(|(n, _, age)| n == SESSION_COOKIE && *age == Some(3600))
    );

    // The page, as the user: identity headers, the access token as a bearer request carries
    // it, none of our cookies, the app's own cookies untouched.
    let mut with_theme = jar.clone();
    with_theme.0.insert("theme".into(), "dark".into());
    let page = pod.visit("/items/7", &with_theme).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(set_cookies(&page).is_empty(), "no refresh due");
    let seen = pod.app.last().unwrap();
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-client-id"], PORTAL);
    assert_eq!(seen.headers["x-auth-scopes"], "read:items");
    assert_eq!(seen.headers["cookie"], "theme=dark");
    let bearer = seen.headers["authorization"]
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(claims_of(bearer)["aud"], ORDERS);
    assert!(!seen.headers.values().any(|v| v.contains(&session)));
    // A script's fetch with the cookie is a session request too.
    let fetch = pod
        .send("GET", "/api/x", &[("Accept", "application/json")], &jar)
        .await;
    assert_eq!(fetch.status, 200);
    assert_eq!(pod.metric("login_completed").await, 1);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_token_is_refreshed_silently_and_the_new_cookie_set() {
    // Tokens of 20 s: due in their last 10.
    let pod = Pod::start(20).await;
    let (fresh, _) = pod.login("/items/1", "bob").await;
    // A token just obtained is not due.
    let r = pod.visit("/items/1", &fresh).await;
    assert_eq!(r.status, 200);
    assert!(set_cookies(&r).is_empty(), "{r:?}");
    let jar = due(&pod.dir, &fresh);
    let first = pod.visit("/items/1", &jar).await;
    assert_eq!(first.status, 200);
    let renewed: Vec<_> = set_cookies(&first)
        .into_iter()
        .filter(|(n, _, _)| n == SESSION_COOKIE)
        .collect();
    assert_eq!(renewed.len(), 1, "{first:?}");
    assert_ne!(renewed[0].1, jar.get(SESSION_COOKIE).unwrap());
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let token_one = pod.app.last().unwrap().headers["authorization"].clone();
    let mut jar2 = jar.clone();
    jar2.take(&first);
    // The newest cookie is not due again: a client sending it on every request (an attacker
    // chaining refreshes) never has the sidecar call the issuer per request.
    let again = pod.visit("/items/1", &jar2).await;
    assert_eq!(again.status, 200);
    assert!(set_cookies(&again).is_empty(), "{again:?}");
    assert_eq!(pod.app.last().unwrap().headers["authorization"], token_one);
    assert_eq!(pod.metric("refreshed").await, 1);
    // Due in its turn, it refreshes with the rotated refresh token.
    let second = pod.visit("/items/1", &due(&pod.dir, &jar2)).await;
    assert_eq!(second.status, 200);
    let token_two = pod.app.last().unwrap().headers["authorization"].clone();
    assert_ne!(
        token_one, token_two,
        "refreshed again with the rotated token"
    );
    // A request still carrying the first cookie (sent before the browser saw the new one)
    // gets the remembered answer, not a reuse of the rotated refresh token.
    let late = pod.visit("/items/1", &jar).await;
    assert_eq!(late.status, 200);
    assert_eq!(pod.app.last().unwrap().headers["authorization"], token_one);
    assert_eq!(pod.metric("refreshed").await, 2);
    // The family is intact: the newest cookie refreshes once more.
    let mut jar3 = jar2.clone();
    jar3.take(&second);
    let third = pod.visit("/items/1", &due(&pod.dir, &jar3)).await;
    assert_eq!(third.status, 200);
    assert_eq!(pod.metric("refreshed").await, 3);
    assert_eq!(pod.metric("refresh_refused").await, 0);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_needing_a_refresh_refresh_once() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "carol").await;
    let jar = due(&pod.dir, &jar);
    let before = pod.app.hits();
    let mut joins = Vec::new();
    for i in 0..12 {
        let (addr, jar) = (pod.addr(), jar.clone());
        joins.push(tokio::spawn(async move {
            send(addr, "GET", &format!("/items/{i}"), BROWSER, &jar).await
        }));
    }
    let mut cookies = Vec::new();
    for join in joins {
        let r = join.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        cookies.extend(
            set_cookies(&r)
                .into_iter()
                .filter(|(n, _, _)| n == SESSION_COOKIE),
        );
    }
    assert_eq!(
        cookies.len(),
        12,
        "every answer carries the renewed session"
    );
    let seen = pod.app.seen.lock().unwrap()[before..].to_vec();
    let tokens: std::collections::BTreeSet<_> = seen
        .iter()
        .map(|s| s.headers["authorization"].clone())
        .collect();
    assert_eq!(tokens.len(), 1, "one refresh, one new access token for all");
    assert_eq!(pod.metric("refreshed").await, 1);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_family_clears_the_cookie_and_a_replayed_cookie_is_dead() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "dave").await;
    assert_eq!(pod.visit("/items/1", &jar).await.status, 200);
    let access = pod.app.last().unwrap().headers["authorization"]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    assert_eq!(introspect(&pod.issuer, &access).await["active"], true);
    // Logout is a same-origin POST only.
    let get = pod.send("GET", "/.scopegate/logout", &[], &jar).await;
    assert_eq!(get.status, 405);
    let cross = pod
        .send(
            "POST",
            "/.scopegate/logout",
            &[("Origin", "https://evil.example")],
            &jar,
        )
        .await;
    assert_eq!(cross.status, 403);
    assert_eq!(introspect(&pod.issuer, &access).await["active"], true);
    let out = pod
        .send("POST", "/.scopegate/logout", &[("Origin", ORIGIN)], &jar)
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(out.header("location"), Some("/bye"));
    assert_eq!(out.header("cache-control"), Some("no-store"));
    let mut browser = jar.clone();
    browser.take(&out);
    assert!(browser.get(SESSION_COOKIE).is_none(), "cleared");
    // The refresh family and its access tokens are revoked at the issuer.
    assert_eq!(introspect(&pod.issuer, &access).await["active"], false);
    // The browser is sent to log in again.
    assert_eq!(pod.visit("/items/1", &browser).await.status, 302);
    // A copy of the cookie kept by an attacker dies with it once the feed brings the
    // revocation: the session ends (cleared), the browser is sent to log in.
    let replayed = eventually(
        "the revocation reaches the sidecar",
        Duration::from_secs(20),
        || async {
            let r = pod.visit("/items/1", &jar).await;
            (r.status == 302).then_some(r)
        },
    )
    .await;
    assert!(
        set_cookies(&replayed)
            .iter()
            .any(|(n, _, a)| n == SESSION_COOKIE && *a == Some(0))
    );
    let api = pod
        .send("GET", "/api/x", &[("Accept", "application/json")], &jar)
        .await;
    assert_eq!(api.status, 401);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_foreign_cookies_are_no_session() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "alice").await;
    let session = jar.get(SESSION_COOKIE).unwrap().to_owned();
    let hits = pod.app.hits();
    let (head, body) = session.rsplit_once('.').unwrap();
    let mut raw_body = b64::decode(body.as_bytes()).unwrap();
    let mut forged_body = vec![0u8; raw_body.len()];
    aws_lc_rs::rand::fill(&mut forged_body).unwrap();
    let forged = format!("{head}.{}", b64::encode(&forged_body));
    let last = raw_body.len() - 1;
    raw_body[last / 2] ^= 0x01;
    let tampered = format!("{head}.{}", b64::encode(&raw_body));
    // The same secret under the other policy's name: a cookie of policy "other".
    let other_dir = TempDir::new();
    write_atomic(
        &other_dir.join("session-keys.json"),
        &std::fs::read_to_string(pod.dir.join("session-keys.json")).unwrap(),
    );
    std::fs::copy(pod.dir.join("issuer-token"), other_dir.join("issuer-token")).unwrap();
    let mut other_config = pod_config(&pod.issuer, &other_dir, pod.app.addr.port(), "other");
    other_config["sessions"]["keysPath"] = json!(other_dir.join("session-keys.json"));
    let other = support::start_sidecar(&other_dir, &other_config).await;
    for (what, addr, value) in [
        ("forged", pod.addr(), forged.as_str()),
        ("tampered", pod.addr(), tampered.as_str()),
        ("another policy's", other.proxy_addr(), session.as_str()),
    ] {
        let cookie = Jar::with(SESSION_COOKIE, value);
        let r = send(addr, "GET", "/items/1", BROWSER, &cookie).await;
        assert_eq!(r.status, 302, "{what} cookie: sent to log in");
        assert!(r.header("location").unwrap().contains("/oauth2/authorize?"));
        let api = send(
            addr,
            "GET",
            "/api/1",
            &[("Accept", "application/json")],
            &cookie,
        )
        .await;
        assert_eq!(api.status, 401, "{what} cookie");
    }
    assert_eq!(pod.app.hits(), hits, "the app saw none of them");
    // The genuine cookie still works.
    assert_eq!(pod.visit("/items/1", &jar).await.status, 200);
    other.shutdown().await;
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_works_once_and_only_in_the_browser_that_started_the_login() {
    let pod = Pod::start(600).await;
    // The victim's and the attacker's logins, each with its own login cookie.
    let mut victim = Jar::default();
    let start = pod.visit("/items/1", &victim).await;
    victim.take(&start);
    let mut attacker = Jar::default();
    let start_a = pod.visit("/items/1", &attacker).await;
    attacker.take(&start_a);
    let query = start_a
        .header("location")
        .unwrap()
        .split_once('?')
        .unwrap()
        .1
        .to_owned();
    let back = pod.issuer.authorize(&query, "user:mallory").await.unwrap();
    let callback = back.strip_prefix(ORIGIN).unwrap().to_owned();
    // Login CSRF: the attacker's callback in a browser without a login cookie, or with its
    // own login cookie, sets no session.
    for (what, jar) in [
        ("no login cookie", Jar::default()),
        ("another login", victim.clone()),
    ] {
        let r = pod.visit(&callback, &jar).await;
        assert_eq!(r.status, 400, "{what}");
        assert!(
            !set_cookies(&r)
                .iter()
                .any(|(n, _, a)| n == SESSION_COOKIE && *a != Some(0)),
            "{what}"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    // Its own browser, with the code and PKCE verifier of this login but another `state`.
    let other_state = callback.replace("state=", "state=x");
    assert_eq!(
        pod.visit(&other_state, &attacker).await.status,
        400,
        "state checked"
    );
    // Its own browser completes it once.
    let done = pod.visit(&callback, &attacker).await;
    assert_eq!(done.status, 302);
    let mut after = attacker.clone();
    after.take(&done);
    assert!(after.get(SESSION_COOKIE).is_some());
    // Replayed: the login cookie is gone, and with a copy of it the code is spent.
    let replay = pod.visit(&callback, &after).await;
    assert_eq!(replay.status, 400);
    let replay_with_copy = pod.visit(&callback, &attacker).await;
    assert_eq!(replay_with_copy.status, 400);
    // A wrong iss, or none, is refused before any code is redeemed.
    let mut fresh = Jar::default();
    let s = pod.visit("/items/1", &fresh).await;
    fresh.take(&s);
    let q = s
        .header("location")
        .unwrap()
        .split_once('?')
        .unwrap()
        .1
        .to_owned();
    let back = pod.issuer.authorize(&q, "alice").await.unwrap();
    let cb = back.strip_prefix(ORIGIN).unwrap().to_owned();
    let wrong_iss = cb.replace("iss=https", "iss=http");
    assert_eq!(pod.visit(&wrong_iss, &fresh).await.status, 400);
    let no_iss = cb.split("&iss=").next().unwrap().to_owned();
    assert_eq!(pod.visit(&no_iss, &fresh).await.status, 400);
    // The login cookie was cleared by the refusal; the code is still good for the issuer but
    // this browser must start again.
    assert_eq!(pod.metric("login_completed").await, 1);
    // An error from the issuer is a plain page.
    let mut denied = Jar::default();
    let s = pod.visit("/items/1", &denied).await;
    denied.take(&s);
    let state = query_param(s.header("location").unwrap(), "state").unwrap();
    let err = format!(
        "/.scopegate/callback?error=access_denied&state={state}&iss={}",
        support::issuer::enc(&pod.issuer.url)
    );
    let page = pod.visit(&err, &denied).await;
    assert_eq!(page.status, 403);
    assert!(String::from_utf8_lossy(&page.body).contains("access_denied"));
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_path_never_leaves_the_origin() {
    let pod = Pod::start(600).await;
    // `//items/9` is the path `/items/9` (collapsed), never the host `items`.
    let (_, done) = pod.login("//items/9?x=1", "alice").await;
    assert_eq!(done.header("location"), Some("/items/9?x=1"));
    // An absolute-form request returns to its path on this origin.
    let (_, done) = pod.login("http://evil.example/items/3", "alice").await;
    assert_eq!(done.header("location"), Some("/items/3"));
    // Backslashes and encoded slashes never reach a login at all.
    for target in [
        "/\\evil.example/items",
        "/%2F%2Fevil.example/items",
        "/items/%5C%5Cevil",
    ] {
        let r = pod.visit(target, &Jar::default()).await;
        assert_eq!(r.status, 400, "{target}");
        assert!(r.header("location").is_none());
    }
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_write_with_the_cookie_is_refused_and_bearer_requests_are_not() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "alice").await;
    let hits = pod.app.hits();
    for headers in [
        &[("Origin", "https://evil.example")][..],
        &[][..],
        &[("Origin", "null")][..],
        &[("Sec-Fetch-Site", "cross-site")][..],
        &[
            ("Sec-Fetch-Site", "same-site"),
            ("Origin", "https://sub.app.example"),
        ][..],
    ] {
        for method in ["POST", "DELETE"] {
            let r = pod.send(method, "/api/orders", headers, &jar).await;
            assert_eq!(r.status, 403, "{method} {headers:?}");
        }
    }
    assert_eq!(pod.app.hits(), hits, "the app saw none");
    assert_eq!(pod.metric("cross_site_refused").await, 10);
    let same = pod
        .send("POST", "/api/orders", &[("Origin", ORIGIN)], &jar)
        .await;
    assert_eq!(same.status, 200);
    let fetch = pod
        .send(
            "POST",
            "/api/orders",
            &[("Sec-Fetch-Site", "same-origin")],
            &jar,
        )
        .await;
    assert_eq!(fetch.status, 200);
    // A bearer request needs no Origin (its token is no ambient credential).
    let token = pod.app.last().unwrap().headers["authorization"].clone();
    let bearer = pod
        .send(
            "POST",
            "/api/orders",
            &[("Authorization", &token)],
            &Jar::default(),
        )
        .await;
    assert_eq!(bearer.status, 200);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_ends_its_sessions_and_a_broken_key_file_keeps_the_last_good_keys() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "alice").await;
    // A broken file: the keys in force stay, and the sidecar says so.
    write_atomic(&pod.dir.join("session-keys.json"), "{not json");
    eventually("the refusal reported", Duration::from_secs(10), || async {
        let (_, text) = readyz(pod.sidecar.admin_addr()).await;
        text.contains("session-keys file").then_some(())
    })
    .await;
    assert_eq!(pod.visit("/items/1", &jar).await.status, 200);
    // A rotation: k1 retired, k2 seals; the old cookie is no session any more.
    let t = now();
    write_keys(
        &pod.dir,
        &[key("k1", 1, t - 60, Some(t - 1)), key("k2", 2, t - 1, None)],
    );
    eventually(
        "the retired key stops opening",
        Duration::from_secs(10),
        || async { (pod.visit("/items/1", &jar).await.status == 302).then_some(()) },
    )
    .await;
    let (jar2, _) = pod.login("/items/1", "alice").await;
    assert!(jar2.get(SESSION_COOKIE).unwrap().starts_with("1.k2."));
    assert_eq!(pod.visit("/items/1", &jar2).await.status, 200);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_sessions_are_off_and_the_sidecar_says_why() {
    let (issuer, cluster) = issuer_with(600).await;
    let dir = TempDir::new();
    std::fs::write(dir.join("issuer-token"), cluster.token(&issuer.url)).unwrap();
    let app = Upstream::start(Duration::from_millis(1)).await;
    let config = pod_config(&issuer, &dir, app.addr.port(), "portal");
    let sidecar = support::start_sidecar(&dir, &config).await;
    let r = send(
        sidecar.proxy_addr(),
        "GET",
        "/items/1",
        BROWSER,
        &Jar::default(),
    )
    .await;
    assert_eq!(r.status, 401);
    let (_, text) = readyz(sidecar.admin_addr()).await;
    assert!(text.contains("sessions: OFF"), "{text}");
    // Keys arrive: sessions start.
    write_keys(&dir, &[key("k1", 1, now() - 1, None)]);
    eventually("sessions on", Duration::from_secs(10), || async {
        let r = send(
            sidecar.proxy_addr(),
            "GET",
            "/items/1",
            BROWSER,
            &Jar::default(),
        )
        .await;
        (r.status == 302).then_some(())
    })
    .await;
    sidecar.shutdown().await;
    issuer.stop().await;
}

/// A request with one raw `Cookie` header line and extra headers.
async fn send_cookie(
    addr: SocketAddr,
    target: &str,
    cookie: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\nCookie: {cookie}\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    raw(addr, request.as_bytes()).await
}

/// Every value of header `name` in an answer.
fn all<'a>(r: &'a RawResponse, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_never_sees_our_cookies_and_can_set_none_of_them() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "alice").await;
    let session = jar.get(SESSION_COOKIE).unwrap().to_owned();
    // The browser sends the cookie twice, among others, with the login cookie, a case
    // variant, and a cookie of the app's whose value is UTF-8 (no `str` header).
    let cookie = format!(
        "a=1; {SESSION_COOKIE}={session}; pref=café;{SESSION_COOKIE}={session} ; \
         {LOGIN_COOKIE}=x; __HOST-scopegate-session={session}; b=2"
    );
    let r = send_cookie(pod.addr(), "/items/1", &cookie, BROWSER).await;
    assert_eq!(r.status, 200, "the session is read: {r:?}");
    let seen = pod.app.last().unwrap();
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["cookie"], "a=1; pref=café; b=2");
    assert!(!seen.headers.values().any(|v| v.contains(&session)));
    // Its own Cookie header for each of our cookies: none reaches the app, the app's do.
    let mut request = String::from(
        "GET /items/1 HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\
         Accept: text/html\r\nSec-Fetch-Mode: navigate\r\n",
    );
    for line in [
        format!("{SESSION_COOKIE}={session}"),
        "c=3".to_owned(),
        format!("  {SESSION_COOKIE}  =  {session}"),
        format!("{LOGIN_COOKIE}=y"),
    ] {
        request.push_str(&format!("Cookie: {line}\r\n"));
    }
    request.push_str("\r\n");
    assert_eq!(raw(pod.addr(), request.as_bytes()).await.status, 200);
    let seen = pod.app.last().unwrap();
    assert_eq!(seen.headers["cookie"], "c=3");
    assert!(!seen.headers.values().any(|v| v.contains(&session)));

    // The app, taken over, tries to plant or overwrite a session (fixation through the app)
    // in every spelling; its own cookie still goes out.
    let planted = [
        format!("{SESSION_COOKIE}=planted; Path=/; Secure; HttpOnly"),
        format!("  {SESSION_COOKIE}=planted"),
        "__host-scopegate-session=planted; Path=/; Secure".to_owned(),
        format!("={SESSION_COOKIE}=planted; Path=/; Secure"),
        format!("{LOGIN_COOKIE}=planted; Path=/; Secure"),
        format!("x=1, {SESSION_COOKIE}=planted; Path=/"),
        format!("{SESSION_COOKIE}=; Max-Age=0"),
    ];
    let mut headers: Vec<(String, String)> = planted
        .iter()
        .map(|c| ("X-Reply-Header".to_owned(), format!("Set-Cookie: {c}")))
        .collect();
    headers.push((
        "X-Reply-Header".into(),
        "Set-Cookie: theme=dark; Path=/".into(),
    ));
    let mut with = BROWSER.to_vec();
    with.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (target, jar) in [("/items/1", &jar), ("/bye", &Jar::default())] {
        let r = pod.send("GET", target, &with, jar).await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(all(&r, "set-cookie"), ["theme=dark; Path=/"], "{target}");
    }
    assert_eq!(pod.metric("app_cookie_removed").await, 2);
    // The session is still alice's.
    assert_eq!(pod.visit("/items/1", &jar).await.status, 200);
    assert_eq!(pod.app.last().unwrap().headers["x-auth-subject"], "alice");
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_the_cookie_vary_by_it_and_are_private_unless_the_app_says_otherwise() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "alice").await;
    let page = |extra: &'static [(&'static str, &'static str)]| {
        let mut headers = BROWSER.to_vec();
        headers.extend_from_slice(extra);
        headers
    };
    // The app says nothing: a shared cache is told to keep it to this browser.
    let r = pod.send("GET", "/items/1", &page(&[]), &jar).await;
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "vary"), ["Cookie"]);
    assert_eq!(all(&r, "cache-control"), ["private"]);
    // The app's Vary is kept and Cookie joins it once; its Cache-Control is its own.
    let r = pod
        .send(
            "GET",
            "/api/x",
            &page(&[
                ("X-Reply-Header", "Vary: Accept-Encoding"),
                ("X-Reply-Header", "Cache-Control: max-age=60"),
            ]),
            &jar,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "vary"), ["Accept-Encoding, Cookie"]);
    assert_eq!(all(&r, "cache-control"), ["max-age=60"]);
    let r = pod
        .send(
            "GET",
            "/items/1",
            &page(&[("X-Reply-Header", "Vary: Origin, cookie")]),
            &jar,
        )
        .await;
    assert_eq!(all(&r, "vary"), ["Origin, cookie"]);
    let r = pod
        .send(
            "GET",
            "/items/1",
            &page(&[("X-Reply-Header", "Vary: *")]),
            &jar,
        )
        .await;
    assert_eq!(all(&r, "vary"), ["*"]);
    // A session path without the cookie varies by it too (its login redirect is no-store).
    let r = pod.visit("/items/1", &Jar::default()).await;
    assert_eq!(r.status, 302);
    assert_eq!(all(&r, "vary"), ["Cookie"]);
    // A bearer request elsewhere is the app's business alone.
    let token = pod.app.last().unwrap().headers["authorization"].clone();
    let r = pod
        .send(
            "GET",
            "/api/x",
            &[("Authorization", &token)],
            &Jar::default(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(all(&r, "vary").is_empty(), "{r:?}");
    assert!(all(&r, "cache-control").is_empty(), "{r:?}");
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_the_issuer_refuses_ends_the_session_and_every_copy_of_it() {
    // No revocation feed: what ends the session is the refused refresh alone (the access
    // token it holds is still valid here).
    let pod = Pod::start_with(600, |c| {
        c.as_object_mut().unwrap().remove("revocation");
    })
    .await;
    let (jar, _) = pod.login("/items/1", "alice").await;
    let jar = due(&pod.dir, &jar);
    let refresh_token = session_of(&pod.dir, &jar).refresh_token.unwrap();
    // The family is revoked at the issuer behind the sidecar's back (another replica's
    // logout, an administrator).
    let revoked = as_portal(
        &pod.issuer,
        &pod.dir,
        "/oauth2/revoke",
        &format!(
            "token={}&token_type_hint=refresh_token",
            enc(&refresh_token)
        ),
    )
    .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let hits = pod.app.hits();
    // The browser's next page: the session ends (cleared) and a new login starts.
    let r = pod.visit("/items/1", &jar).await;
    assert_eq!(r.status, 302, "{r:?}");
    assert!(r.header("location").unwrap().contains("/oauth2/authorize?"));
    assert!(clears_session(&r), "{r:?}");
    assert!(
        set_cookies(&r)
            .iter()
            .any(|(n, _, a)| n == LOGIN_COOKIE && *a == Some(600))
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // A copy of the cookie (kept by the browser's script, or an attacker): 401, cleared again,
    // and the issuer is not asked again for the same refresh token.
    let api = pod.send("GET", "/api/x", SCRIPT, &jar).await;
    assert_eq!(api.status, 401);
    assert!(api.header("location").is_none());
    assert!(clears_session(&api));
    assert_eq!(pod.app.hits(), hits, "the app saw neither");
    assert_eq!(pod.metric("refresh_refused").await, 1);
    assert_eq!(pod.metric("ended").await, 2);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_cannot_answer_ends_no_session_and_is_not_hammered() {
    let pod = Pod::start(600).await;
    let (alice, _) = pod.login("/items/1", "alice").await;
    let (bob, _) = pod.login("/items/1", "bob").await;
    let (alice, bob) = (due(&pod.dir, &alice), due(&pod.dir, &bob));
    // The issuer refuses the pod's client (its ServiceAccount token is not taken any more):
    // `invalid_client` is about the sidecar, not about alice; ending her session for it would
    // end every session of the pod. She goes on with her token while it is valid, and ten
    // requests needing the refresh ask the issuer once per 5 s, not ten times.
    let assertion = std::fs::read_to_string(pod.dir.join("issuer-token")).unwrap();
    std::fs::write(
        pod.dir.join("issuer-token"),
        ClusterKey::generate().token(&pod.issuer.url),
    )
    .unwrap();
    let asks_at_most = |since: std::time::Instant| 1 + since.elapsed().as_secs() / 5;
    let since = std::time::Instant::now();
    for _ in 0..10 {
        let r = pod.visit("/items/1", &alice).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(set_cookies(&r).is_empty(), "{r:?}");
    }
    assert_eq!(pod.app.last().unwrap().headers["x-auth-subject"], "alice");
    let asked = pod.metric("refresh_unavailable").await;
    assert!((1..=asks_at_most(since)).contains(&asked), "{asked}");
    // The client is taken again: a few seconds later her session refreshes, well before its
    // token runs out.
    std::fs::write(pod.dir.join("issuer-token"), &assertion).unwrap();
    eventually("the refresh retried", Duration::from_secs(15), || async {
        let r = pod.visit("/items/1", &alice).await;
        assert_eq!(r.status, 200, "{r:?}");
        set_cookies(&r)
            .iter()
            .any(|(n, v, _)| n == SESSION_COOKIE && !v.is_empty())
            .then_some(())
    })
    .await;
    // The issuer goes down altogether.
    let Pod {
        issuer,
        app,
        dir,
        sidecar,
    } = pod;
    issuer.stop().await;
    let (addr, admin) = (sidecar.proxy_addr(), sidecar.admin_addr());
    let before = metric(admin, "refresh_unavailable").await;
    let since = std::time::Instant::now();
    for _ in 0..10 {
        let r = send(addr, "GET", "/items/1", BROWSER, &bob).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(set_cookies(&r).is_empty(), "{r:?}");
    }
    assert_eq!(app.last().unwrap().headers["x-auth-subject"], "bob");
    let asked = metric(admin, "refresh_unavailable").await - before;
    assert!((1..=asks_at_most(since)).contains(&asked), "{asked}");
    // Once the token has expired (bob's session as the sidecar would find it later): 503 with
    // Retry-After, the cookie kept, the app not reached.
    let mut later = session_of(&dir, &bob);
    later.expires_at = now() - 1;
    later.obtained_at = later.expires_at - 600;
    let expired = Jar::with(SESSION_COOKIE, &sealed(&dir, &later));
    let hits = app.hits();
    for headers in [BROWSER, SCRIPT] {
        let r = send(addr, "GET", "/items/1", headers, &expired).await;
        assert_eq!(r.status, 503, "{r:?}");
        // No request has the issuer asked again before the failure's memory is over.
        let retry_after = RETRY_AFTER_FAILURE.as_secs().to_string();
        assert_eq!(r.header("retry-after"), Some(retry_after.as_str()));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(set_cookies(&r).is_empty(), "never a logout: {r:?}");
    }
    assert_eq!(app.hits(), hits);
    let asked = metric(admin, "refresh_unavailable").await - before;
    assert!((1..=asks_at_most(since)).contains(&asked), "{asked}");
    assert_eq!(metric(admin, "refresh_refused").await, 0);
    assert_eq!(metric(admin, "ended").await, 0);
    sidecar.shutdown().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_ends_the_session_though_its_refresh_token_still_works() {
    let pod = Pod::start_with(600, |c| c["sessions"]["maxLifetimeSecs"] = json!(2)).await;
    let (jar, done) = pod.login("/items/1", "alice").await;
    assert!(
        set_cookies(&done)
            .iter()
            .any(|(n, _, a)| n == SESSION_COOKIE && *a == Some(2)),
        "{done:?}"
    );
    let refresh_token = session_of(&pod.dir, &jar).refresh_token.unwrap();
    // A browser that ignores Max-Age, or an attacker's copy, keeps sending the cookie: the
    // sidecar ends the session all the same once its lifetime is over.
    let ended = eventually(
        "the session's lifetime over",
        Duration::from_secs(20),
        || async {
            let r = pod.visit("/items/1", &jar).await;
            (r.status == 302).then_some(r)
        },
    )
    .await;
    assert!(clears_session(&ended), "{ended:?}");
    assert!(
        ended
            .header("location")
            .unwrap()
            .contains("/oauth2/authorize?")
    );
    let api = pod.send("GET", "/api/x", SCRIPT, &jar).await;
    assert_eq!(api.status, 401);
    assert!(clears_session(&api));
    assert_eq!(pod.metric("refreshed").await, 0);
    // The issuer would still refresh it: the end is the sidecar's, not the family's.
    let r = refresh_at_issuer(&pod.issuer, &pod.dir, &refresh_token).await;
    assert_eq!(r.status, 200, "{r:?}");
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_cut_off_at_the_issuer_ends_that_users_sessions_only() {
    let pod = Pod::start(600).await;
    let (alice, _) = pod.login("/items/1", "alice").await;
    let (bob, _) = pod.login("/items/1", "bob").await;
    let alice_refresh = session_of(&pod.dir, &alice).refresh_token.unwrap();
    let logged_in = now();
    for jar in [&alice, &bob] {
        assert_eq!(pod.visit("/items/1", jar).await.status, 200);
    }
    // A cut-off ends what was issued before it (to the second): start it after the logins.
    while now() <= logged_in {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = pod
        .issuer
        .mint(
            "POST",
            "/v1/subject-cutoffs",
            Some(&json!({"subject": "alice"})),
        )
        .await;
    assert_eq!(cut.status, 200, "{cut:?}");
    // The feed brings it to the sidecar: alice's session ends, her browser logs in again.
    let ended = eventually(
        "the cut-off reaches the sidecar",
        Duration::from_secs(20),
        || async {
            let r = pod.visit("/items/1", &alice).await;
            (r.status == 302).then_some(r)
        },
    )
    .await;
    assert!(clears_session(&ended), "{ended:?}");
    let api = pod.send("GET", "/api/x", SCRIPT, &alice).await;
    assert_eq!(api.status, 401);
    assert!(clears_session(&api));
    // Bob, on the same sidecar, goes on.
    let r = pod.visit("/items/1", &bob).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(set_cookies(&r).is_empty());
    assert_eq!(pod.app.last().unwrap().headers["x-auth-subject"], "bob");
    assert_eq!(pod.metric("ended").await, 2);
    // Nor can a refresh revive alice's: the issuer refuses her family.
    let r = refresh_at_issuer(&pod.issuer, &pod.dir, &alice_refresh).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "invalid_grant");
    pod.stop().await;
}

/// A browser at `address` (behind the pod's one trusted proxy) starts a login and comes back
/// to the callback with a made-up code; the callback's answer.
async fn made_up_code(pod: &Pod, address: &str, round: usize) -> RawResponse {
    let from = [("X-Forwarded-For", address)];
    let mut headers = BROWSER.to_vec();
    headers.extend_from_slice(&from);
    let mut jar = Jar::default();
    let start = pod.send("GET", "/items/1", &headers, &jar).await;
    assert_eq!(start.status, 302, "{start:?}");
    jar.take(&start);
    let state = query_param(start.header("location").unwrap(), "state").unwrap();
    let callback = format!(
        "/.scopegate/callback?code=made-up-{round}&state={state}&iss={}",
        enc(&pod.issuer.url)
    );
    pod.send("GET", &callback, &headers, &jar).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_codes_at_the_callback_cannot_stop_the_pods_refreshes() {
    let pod = Pod::start_with(600, |c| c["trustedProxies"] = json!({"hops": 1})).await;
    let (alice, _) = pod.login("/items/1", "alice").await;
    // Her token is due: her next request refreshes at the issuer.
    let alice = due(&pod.dir, &alice);
    // The attack: anyone gets a login cookie and its state for the asking, and sends made-up
    // codes back; every one the sidecar presented would be a failure of the pod's address at
    // the issuer, which stops the pod's token requests after 60 a minute (30 naming the
    // client). One address, then many.
    let mut one = Vec::new();
    for round in 0..40 {
        one.push(made_up_code(&pod, "203.0.113.9", round).await.status);
    }
    let mut many = Vec::new();
    for round in 0..60 {
        let address = format!("198.51.100.{}", round + 1);
        many.push(made_up_code(&pod, &address, round).await.status);
    }
    // Alice's session still refreshes at the issuer: the pod was not stopped.
    let r = pod.visit("/items/1", &alice).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        set_cookies(&r)
            .iter()
            .any(|(n, v, _)| n == SESSION_COOKIE && !v.is_empty()),
        "renewed: {r:?}"
    );
    assert_eq!(pod.metric("refresh_unavailable").await, 0);
    // What the attacker saw: five codes presented from its address, then 429; from many
    // addresses, fifteen in all.
    assert_eq!(one[..5], [400; 5]);
    assert_eq!(one[5], 429);
    let presented = one.iter().chain(&many).filter(|s| **s == 400).count();
    assert!((15..30).contains(&presented), "{presented} codes presented");
    assert_eq!(*many.last().unwrap(), 429);
    // The price, for at most a minute: a new login's code waits too (its user tries again).
    let r = made_up_code(&pod, "192.0.2.1", 0).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_logged_out_cookie_cannot_make_the_sidecar_revoke_again() {
    let pod = Pod::start(600).await;
    let (jar, _) = pod.login("/items/1", "dave").await;
    let same_origin = [("Origin", ORIGIN)];
    let out = pod
        .send("POST", "/.scopegate/logout", &same_origin, &jar)
        .await;
    assert_eq!(out.status, 303);
    assert!(clears_session(&out));
    assert_eq!(pod.metric("revoked").await, 1);
    // Anyone can send the Origin header: a copy of the cookie posted again and again is
    // answered as a logout, but the issuer's revocation endpoint is not called again.
    for _ in 0..20 {
        let again = pod
            .send("POST", "/.scopegate/logout", &same_origin, &jar)
            .await;
        assert_eq!(again.status, 303);
        assert!(clears_session(&again));
    }
    assert_eq!(pod.metric("logout").await, 21);
    assert_eq!(pod.metric("revoked").await, 1);
    // Another session's logout revokes as ever.
    let (other, _) = pod.login("/items/1", "carol").await;
    let out = pod
        .send("POST", "/.scopegate/logout", &same_origin, &other)
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(pod.metric("revoked").await, 2);
    pod.stop().await;
}
