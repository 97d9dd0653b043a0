//! Upstream logins through the issuer, offline on loopback.
//!
//! The Google stand-in is npm `oidc-provider` (OpenID Certified) over HTTPS with the test's
//! rcgen certificate, driven through its login and consent forms by a cookie-keeping client;
//! a small hostile provider (an HTTPS stub that answers whatever ID token a case forges)
//! runs the ID-token attack table, which a real provider would never produce; a GitHub API
//! stub plays GitHub (token endpoint, `/user`, paginated `/user/emails`, org membership and
//! teams). Every case asserts where the browser ends up and the outcome counter.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::issuer::*;
use support::*;

const GOOGLE_CLIENT: &str = "scopegate-test";
const GOOGLE_SECRET: &str = "google-secret-0123456789";
const EVIL_CLIENT: &str = "evil-client";

/// A browser: a cookie jar per origin, redirects followed by the test.
struct Browser {
    connector: tokio_rustls::TlsConnector,
    jar: HashMap<String, HashMap<String, String>>,
    url: String,
}

fn split_url(url: &str) -> (String, SocketAddr, String) {
    let rest = url.strip_prefix("https://").expect("https URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    (
        authority.to_owned(),
        authority.parse().expect("an IP:port authority"),
        path.to_owned(),
    )
}

impl Browser {
    fn new(certs: &TestCerts) -> Browser {
        Browser {
            connector: certs.connector(),
            jar: HashMap::new(),
            url: String::new(),
        }
    }

    async fn send(&mut self, method: &str, url: &str, body: Option<&str>) -> RawResponse {
        let (authority, addr, target) = split_url(url);
        let mut request =
            format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        if let Some(cookies) = self.jar.get(&authority).filter(|c| !c.is_empty()) {
            let line: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request.push_str(&format!("Cookie: {}\r\n", line.join("; ")));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        let response = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = self.connector.connect(name, tcp).await.unwrap();
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(40), tls.read_to_end(&mut buf))
                .await
                .expect("answer in time");
            parse_response(&buf)
        };
        let jar = self.jar.entry(authority.clone()).or_default();
        for (name, value) in &response.headers {
            if name != "set-cookie" {
                continue;
            }
            let pair = value.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty()
                || value.contains("Max-Age=0")
                || value.contains("expires=Thu, 01 Jan 1970")
            {
                jar.remove(k);
            } else {
                jar.insert(k.to_owned(), v.to_owned());
            }
        }
        self.url = url.to_owned();
        response
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("https://") {
            return location.to_owned();
        }
        let (authority, _, _) = split_url(&self.url);
        format!("https://{authority}{location}")
    }

    /// Follows redirects from `url` until a page, or a redirect to the client or the app's
    /// login page (which do not exist here): returns that last response.
    async fn follow(&mut self, url: &str) -> RawResponse {
        let mut url = url.to_owned();
        for _ in 0..16 {
            let response = self.send("GET", &url, None).await;
            let Some(location) = response.header("location").map(str::to_owned) else {
                return response;
            };
            if location.starts_with(WEB_REDIRECT) || location.starts_with(LOGIN_URL) {
                return response;
            }
            url = self.absolute(&location);
        }
        panic!("redirect loop");
    }

    /// Posts a form to the page last loaded and follows.
    async fn submit(&mut self, body: &str) -> RawResponse {
        let url = self.url.clone();
        let response = self.send("POST", &url, Some(body)).await;
        match response.header("location").map(str::to_owned) {
            Some(location)
                if !location.starts_with(WEB_REDIRECT) && !location.starts_with(LOGIN_URL) =>
            {
                let next = self.absolute(&location);
                self.follow(&next).await
            }
            _ => response,
        }
    }
}

/// The oidc-provider process.
struct Idp {
    url: String,
    child: tokio::process::Child,
}

impl Idp {
    async fn start(issuer: &Issuer) -> Idp {
        let port = free_port();
        // The issuer's serving pair is issued for 127.0.0.1 by the CA the sidecar trusts.
        let env = [
            ("PORT", port.to_string()),
            ("KEY", issuer.dir.join("tls.key").display().to_string()),
            ("CERT", issuer.dir.join("tls.crt").display().to_string()),
            ("CLIENT_ID", GOOGLE_CLIENT.to_owned()),
            ("CLIENT_SECRET", GOOGLE_SECRET.to_owned()),
            (
                "REDIRECT_URI",
                format!("{}/oauth2/upstream/google/callback", issuer.url),
            ),
        ];
        Idp {
            url: format!("https://127.0.0.1:{port}"),
            child: support::node_idp::spawn("idp.mjs", &env).await,
        }
    }
}

/// What the hostile provider answers.
#[derive(Default)]
struct StubState {
    token: String,
    token_status: u16,
    userinfo: String,
    jwks: String,
    jwks_hits: usize,
    /// The token endpoint discovery names, when not the stub's own `/token`.
    token_endpoint: Option<String>,
}

struct Stub {
    server: TlsServer,
    state: Arc<Mutex<StubState>>,
    key: SigningKey,
    kid: String,
}

impl Stub {
    async fn start() -> Stub {
        let state = Arc::new(Mutex::new(StubState {
            token_status: 200,
            ..Default::default()
        }));
        let issuer_cell: Arc<Mutex<String>> = Arc::default();
        let (s, i) = (state.clone(), issuer_cell.clone());
        let server = TlsServer::start(Arc::new(move |target: String| {
            let issuer = i.lock().unwrap().clone();
            let mut s = s.lock().unwrap();
            let path = target.split('?').next().unwrap().to_owned();
            match path.as_str() {
                "/.well-known/openid-configuration" => (
                    200,
                    "application/json",
                    json!({
                        "issuer": issuer,
                        "authorization_endpoint": format!("{issuer}/authorize"),
                        "token_endpoint": s.token_endpoint.clone().unwrap_or_else(|| format!("{issuer}/token")),
                        "jwks_uri": format!("{issuer}/jwks"),
                        "userinfo_endpoint": format!("{issuer}/userinfo"),
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "authorization_response_iss_parameter_supported": true
                    })
                    .to_string(),
                ),
                "/jwks" => {
                    s.jwks_hits += 1;
                    (200, "application/json", s.jwks.clone())
                }
                "/token" => (s.token_status, "application/json", s.token.clone()),
                "/userinfo" => (200, "application/json", s.userinfo.clone()),
                _ => (404, "text/plain", String::new()),
            }
        }))
        .await;
        *issuer_cell.lock().unwrap() = server.url("").trim_end_matches('/').to_owned();
        let key = SigningKey::rs256();
        let kid = format!("stub-{}", unique());
        let stub = Stub {
            server,
            state,
            key,
            kid,
        };
        stub.publish(&[(&stub.key, &stub.kid)]);
        stub
    }

    fn issuer(&self) -> String {
        self.server.url("").trim_end_matches('/').to_owned()
    }

    fn publish(&self, keys: &[(&SigningKey, &str)]) {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(k, kid)| serde_json::to_value(k.jwk(kid, Some("RS256"))).unwrap())
            .collect();
        self.state.lock().unwrap().jwks = json!({"keys": keys}).to_string();
    }

    fn jwks_hits(&self) -> usize {
        self.state.lock().unwrap().jwks_hits
    }

    /// Claims a correct provider would sign for this leg.
    fn claims(&self, nonce: &str) -> Value {
        let now = now();
        json!({"iss": self.issuer(), "aud": EVIL_CLIENT, "sub": "248289761001", "exp": now + 300,
               "iat": now, "nonce": nonce, "email": "eve@shop.example", "email_verified": true})
    }

    fn answer_with(&self, id_token: &str) {
        let mut s = self.state.lock().unwrap();
        s.token_status = 200;
        s.token = json!({"access_token": "stub-access", "token_type": "Bearer", "expires_in": 60, "id_token": id_token}).to_string();
    }
}

struct World {
    issuer: Issuer,
    idp: Idp,
    stub: Stub,
}

fn upstream_config(issuer: &Issuer, idp: &Idp, stub: &Stub, mode: &str) -> Value {
    let mut config = issuer.config.clone();
    std::fs::write(
        issuer.dir.join("google.secret"),
        format!("{GOOGLE_SECRET}\n"),
    )
    .unwrap();
    std::fs::write(issuer.dir.join("evil.secret"), "evil-secret").unwrap();
    let callback = |name: &str| format!("{}/oauth2/upstream/{name}/callback", issuer.url);
    config["policy"]["generation"] = json!(unique());
    // Each provider is trusted through its own caBundle only (the stand-in serves with a
    // certificate of the test CA, the stub with its own).
    config["issuer"]["upstreams"] = json!([
        {"name": "google", "displayName": "Google", "clientId": GOOGLE_CLIENT,
         "clientSecretPath": issuer.dir.join("google.secret"), "callbackUrl": callback("google"),
         "caBundlePem": issuer.certs.ca_pem,
         "oidc": {"issuer": idp.url, "scopes": ["openid", "email", "profile"], "algorithms": ["RS256", "ES256", "PS256", "EdDSA"]}},
        {"name": "evil", "displayName": "Evil <Corp>", "clientId": EVIL_CLIENT,
         "clientSecretPath": issuer.dir.join("evil.secret"), "callbackUrl": callback("evil"),
         "caBundlePem": stub.server.ca_pem,
         "oidc": {"issuer": stub.issuer(), "scopes": ["openid", "email"], "algorithms": ["RS256"]}}
    ]);
    // alice is in the stand-in's group eng, bob in sales; the evil upstream's "sales" grants
    // more, but only to its own users.
    config["issuer"]["identity"] = json!({"mode": mode, "directScopes": ["read:items"],
    "scopesFromGroups": [
        {"upstream": "google", "group": "eng", "scopes": ["write:items"]},
        {"upstream": "evil", "group": "sales", "scopes": ["write:items"]}
    ]});
    config
}

async fn world(mode: &str) -> World {
    let issuer = Issuer::start(Spec {
        tuning: IssuerTuning {
            limits: scopegate_issuer::limits::EndpointLimits {
                failed_address: scopegate_issuer::store::Budget::per_secs(10_000, 60),
                failed_client: scopegate_issuer::store::Budget::per_secs(10_000, 60),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Spec::default()
    })
    .await;
    let idp = Idp::start(&issuer).await;
    let stub = Stub::start().await;
    let config = upstream_config(&issuer, &idp, &stub, mode);
    write_atomic(&issuer.dir.join("config.json"), &config.to_string());
    eventually("both upstreams loaded", Duration::from_secs(60), || async {
        let (_, text) = readyz(issuer.admin).await;
        (text.contains("upstream google: oidc")
            && text.contains("upstream evil: oidc")
            && text.matches("keys, fetched").count() >= 2)
            .then_some(())
    })
    .await;
    World { issuer, idp, stub }
}

use scopegate_issuer::IssuerTuning;

fn google_query(state: &str) -> String {
    format!(
        "{}&upstream=google",
        web_query(state, Some("read:items write:items"))
    )
}

/// Logs `login` in at the oidc-provider from the issuer's authorize endpoint; returns the
/// redirect that leaves the issuer (to the app's login page or the client).
async fn google_login(world: &World, browser: &mut Browser, login: &str) -> String {
    let start = format!(
        "{}/oauth2/authorize?{}",
        world.issuer.url,
        google_query("st-1")
    );
    let page = browser.follow(&start).await;
    assert_eq!(
        page.status,
        200,
        "the IdP's login form: {}",
        String::from_utf8_lossy(&page.body)
    );
    assert!(browser.url.starts_with(&world.idp.url), "{}", browser.url);
    let consent = browser
        .submit(&format!("prompt=login&login={login}&password=any"))
        .await;
    let done = if consent.status == 200 {
        browser.submit("prompt=consent").await
    } else {
        consent
    };
    assert_eq!(done.status, 303, "{}", String::from_utf8_lossy(&done.body));
    done.header("location").unwrap().to_owned()
}

async fn metric(issuer: &Issuer, upstream: &str, outcome: &str) -> u64 {
    let text = String::from_utf8(get(issuer.admin, "/metrics", &[]).await.body).unwrap();
    let needle = format!(
        "scopegate_upstream_logins_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_login_through_oidc_provider_ends_in_our_token_for_the_apps_subject() {
    let world = world("delegate").await;
    let mut browser = Browser::new(&world.issuer.certs);
    let location = google_login(&world, &mut browser, "alice").await;
    let challenge = location
        .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        .unwrap_or_else(|| panic!("to the app's login page: {location}"));
    // The app reads the upstream identity on the mint socket, keyed by (upstream, subject).
    let pending = world
        .issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    assert_eq!(pending.status, 200);
    let upstream = &pending.json()["upstream"];
    assert_eq!(upstream["upstream"], "google");
    assert_eq!(upstream["subject"], "alice");
    assert_eq!(upstream["email"], "alice@shop.example");
    assert_eq!(upstream["emailVerified"], true);
    assert_eq!(
        upstream["emailAuthoritative"], false,
        "verified, but this provider was not declared the authority for shop.example"
    );
    assert_eq!(upstream["groups"], json!(["eng"]));
    let accepted = world
        .issuer
        .mint(
            "POST",
            &format!("/v1/logins/{challenge}/accept"),
            Some(&json!({"subject": "user:u-17"})),
        )
        .await;
    assert_eq!(accepted.status, 200);
    let resume = accepted.json()["redirect_to"].as_str().unwrap().to_owned();
    let back = browser.follow(&resume).await;
    let to_client = back.header("location").unwrap();
    assert!(to_client.starts_with(WEB_REDIRECT), "{to_client}");
    assert_eq!(query_param(to_client, "state").as_deref(), Some("st-1"));
    assert_eq!(
        query_param(to_client, "iss").as_deref(),
        Some(world.issuer.url.as_str())
    );
    let code = query_param(to_client, "code").unwrap();
    let token = redeem(&world.issuer, &code).await;
    assert_eq!(
        token.status,
        200,
        "{}",
        String::from_utf8_lossy(&token.body)
    );
    let access = token.json()["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&access);
    assert_eq!(claims["sub"], "user:u-17");
    assert_eq!(claims["iss"], world.issuer.url);
    assert_eq!(header_of(&access)["typ"], "at+jwt");
    // The binding cookie was cleared by the callback; nothing of the IdP's tokens reached us.
    let (authority, _, _) = split_url(&world.issuer.url);
    assert!(
        browser
            .jar
            .get(&authority)
            .is_none_or(|c| c.keys().all(|k| !k.starts_with("__Host-sg-up-")))
    );
    assert_eq!(metric(&world.issuer, "google", "ok").await, 1);

    // Declared the authority for shop.example: a verified address there is marked so; an
    // unverified one, or one of another domain, is not.
    let mut config = upstream_config(&world.issuer, &world.idp, &world.stub, "delegate");
    config["issuer"]["upstreams"][0]["authoritativeEmailDomains"] = json!(["shop.example"]);
    reconfigure(&world.issuer, &config).await;
    for (login, authoritative) in [("alice", true), ("unverified", false), ("outsider", false)] {
        let mut browser = Browser::new(&world.issuer.certs);
        let location = google_login(&world, &mut browser, login).await;
        let challenge = location
            .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
            .unwrap_or_else(|| panic!("{location}"));
        let pending = world
            .issuer
            .mint("GET", &format!("/v1/logins/{challenge}"), None)
            .await;
        assert_eq!(
            pending.json()["upstream"]["emailAuthoritative"],
            authoritative,
            "{login}: {}",
            pending.json()["upstream"]
        );
    }
    drop(world.idp.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_login_issues_upstream_prefixed_subject_with_narrowed_scope() {
    let world = world("direct").await;
    let mut browser = Browser::new(&world.issuer.certs);
    let location = google_login(&world, &mut browser, "bob").await;
    assert!(location.starts_with(WEB_REDIRECT), "{location}");
    let code = query_param(&location, "code").unwrap();
    let token = redeem(&world.issuer, &code).await;
    assert_eq!(
        token.status,
        200,
        "{}",
        String::from_utf8_lossy(&token.body)
    );
    let claims = claims_of(token.json()["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "google:bob");
    assert_eq!(
        claims["scope"], "read:items",
        "narrowed to identity.directScopes: bob's group sales grants more at the evil upstream only"
    );

    // alice is in eng, which grants write:items at this upstream.
    let mut browser = Browser::new(&world.issuer.certs);
    let location = google_login(&world, &mut browser, "alice").await;
    let code = query_param(&location, "code").unwrap();
    let token = redeem(&world.issuer, &code).await;
    assert_eq!(token.status, 200);
    let claims = claims_of(token.json()["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "google:alice");
    assert_eq!(
        claims["scope"], "read:items write:items",
        "directScopes and the scopes of alice's group eng"
    );
}

/// Follows `authorize` (with an `upstream=` hint) to the leg's start and the start onwards;
/// both answer 303. Returns the start URL and where the start sends the browser (the
/// provider, or the client when the leg cannot open).
async fn open_leg(browser: &mut Browser, authorize: &str) -> (String, String) {
    let first = browser.send("GET", authorize, None).await;
    assert_eq!(
        first.status,
        303,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let start = first.header("location").unwrap().to_owned();
    let second = browser.send("GET", &start, None).await;
    assert_eq!(second.status, 303, "{start}");
    let next = second.header("location").unwrap().to_owned();
    (start, next)
}

/// Opens a leg at the hostile provider from the issuer's authorize endpoint: returns the
/// `state` and `nonce` the issuer sent (read off the redirect, as the provider would).
async fn evil_leg(world: &World, browser: &mut Browser) -> (String, String) {
    let authorize = format!(
        "{}/oauth2/authorize?{}&upstream=evil",
        world.issuer.url,
        web_query("st-evil", Some("read:items"))
    );
    let (_, to_idp) = open_leg(browser, &authorize).await;
    assert!(
        to_idp.starts_with(&format!("{}/authorize?", world.stub.issuer())),
        "{to_idp}"
    );
    // What the provider is asked for: PKCE S256, a nonce, our callback.
    assert_eq!(
        query_param(&to_idp, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(query_param(&to_idp, "code_challenge").unwrap().len(), 43);
    assert_eq!(
        query_param(&to_idp, "redirect_uri").unwrap(),
        format!("{}/oauth2/upstream/evil/callback", world.issuer.url)
    );
    assert_eq!(
        query_param(&to_idp, "client_id").as_deref(),
        Some(EVIL_CLIENT)
    );
    (
        query_param(&to_idp, "state").unwrap(),
        query_param(&to_idp, "nonce").unwrap(),
    )
}

async fn evil_callback(
    world: &World,
    browser: &mut Browser,
    path_name: &str,
    state: &str,
) -> RawResponse {
    let url = format!(
        "{}/oauth2/upstream/{path_name}/callback?code=stub-code&state={}&iss={}",
        world.issuer.url,
        enc(state),
        enc(&world.stub.issuer())
    );
    browser.send("GET", &url, None).await
}

fn b64json(value: &Value) -> String {
    scopegate_core::jose::b64::encode(value.to_string().as_bytes())
}

fn is_denied(r: &RawResponse) -> bool {
    r.status == 303
        && r.header("location").is_some_and(|l| {
            l.starts_with(WEB_REDIRECT)
                && query_param(l, "error").as_deref() == Some("access_denied")
                && query_param(l, "state").as_deref() == Some("st-evil")
                && query_param(l, "code").is_none()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_attack_table_is_refused_and_a_correct_token_passes() {
    let world = world("delegate").await;
    let stub = &world.stub;
    let header = json!({"alg": "RS256", "kid": stub.kid, "typ": "JWT"});
    type Forge = Box<dyn Fn(&Stub, Value) -> String>;
    let signed = |edit: fn(&mut Value)| -> Forge {
        Box::new(move |stub: &Stub, mut claims: Value| {
            edit(&mut claims);
            mint(
                &stub.key,
                &json!({"alg": "RS256", "kid": stub.kid}),
                &claims,
            )
        })
    };
    let cases: Vec<(&str, Forge)> = vec![
        ("wrong aud", signed(|c| c["aud"] = json!("someone-else"))),
        (
            "extra untrusted aud",
            signed(|c| {
                c["aud"] = json!([EVIL_CLIENT, "someone-else"]);
                c["azp"] = json!(EVIL_CLIENT);
            }),
        ),
        (
            "several audiences without azp",
            signed(|c| c["aud"] = json!([EVIL_CLIENT, EVIL_CLIENT])),
        ),
        ("wrong azp", signed(|c| c["azp"] = json!("someone-else"))),
        (
            "wrong iss",
            signed(|c| c["iss"] = json!("https://accounts.example")),
        ),
        ("wrong nonce", signed(|c| c["nonce"] = json!("guessed"))),
        (
            "missing nonce",
            signed(|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
        ),
        ("expired", signed(|c| c["exp"] = json!(now() - 120))),
        ("iat ahead", signed(|c| c["iat"] = json!(now() + 3600))),
        ("iat long ago", signed(|c| c["iat"] = json!(now() - 7200))),
        (
            "alg none",
            Box::new(|stub: &Stub, claims: Value| {
                format!(
                    "{}.{}.c2ln",
                    b64json(&json!({"alg": "none", "kid": stub.kid})),
                    b64json(&claims)
                )
            }),
        ),
        (
            "HS256 keyed with the public key's kid",
            Box::new(|stub: &Stub, claims: Value| {
                let jwk = serde_json::to_value(stub.key.jwk(&stub.kid, Some("RS256"))).unwrap();
                let hmac = SigningKey::hs256(jwk["n"].as_str().unwrap().as_bytes());
                mint(&hmac, &json!({"alg": "HS256", "kid": stub.kid}), &claims)
            }),
        ),
        (
            "signature by another key under our kid",
            Box::new(|stub: &Stub, claims: Value| {
                mint(
                    &SigningKey::rs256(),
                    &json!({"alg": "RS256", "kid": stub.kid}),
                    &claims,
                )
            }),
        ),
        (
            "a JWE-shaped token",
            Box::new(|_: &Stub, _: Value| "a.b.c.d.e".to_owned()),
        ),
        (
            "userinfo sub differs",
            signed(|c| {
                // No email in the ID token: userinfo is asked, and names another subject.
                c.as_object_mut().unwrap().remove("email");
            }),
        ),
    ];
    stub.state.lock().unwrap().userinfo =
        json!({"sub": "mallory", "email": "m@shop.example", "email_verified": true}).to_string();
    let mut browser = Browser::new(&world.issuer.certs);
    for (name, forge) in &cases {
        let (state, nonce) = evil_leg(&world, &mut browser).await;
        stub.answer_with(&forge(stub, stub.claims(&nonce)));
        let r = evil_callback(&world, &mut browser, "evil", &state).await;
        assert!(
            is_denied(&r),
            "{name}: {} {:?}",
            r.status,
            r.header("location")
        );
    }
    assert_eq!(
        metric(&world.issuer, "evil", "invalid_id_token").await,
        cases.len() as u64
    );
    assert_eq!(metric(&world.issuer, "evil", "ok").await, 0);

    // The same leg with a correct token passes (the table can fail), and the
    // `email_verified: "false"` string is read as unverified.
    let (state, nonce) = evil_leg(&world, &mut browser).await;
    let mut claims = stub.claims(&nonce);
    claims["email_verified"] = json!("false");
    stub.answer_with(&mint(&stub.key, &header, &claims));
    let r = evil_callback(&world, &mut browser, "evil", &state).await;
    let location = r.header("location").unwrap_or_default().to_owned();
    let challenge = location
        .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        .unwrap_or_else(|| panic!("{} {location}", r.status));
    let pending = world
        .issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    assert_eq!(pending.json()["upstream"]["subject"], "248289761001");
    assert_eq!(pending.json()["upstream"]["emailVerified"], false);
    assert_eq!(metric(&world.issuer, "evil", "ok").await, 1);

    // Key rotation at the provider: an unknown kid refetches the JWKS once and passes ...
    let rotated = SigningKey::rs256();
    stub.publish(&[(&stub.key, &stub.kid), (&rotated, "rotated")]);
    let hits = stub.jwks_hits();
    let (state, nonce) = evil_leg(&world, &mut browser).await;
    stub.answer_with(&mint(
        &rotated,
        &json!({"alg": "RS256", "kid": "rotated"}),
        &stub.claims(&nonce),
    ));
    let r = evil_callback(&world, &mut browser, "evil", &state).await;
    assert!(
        r.header("location").unwrap().starts_with(LOGIN_URL),
        "{:?}",
        r.header("location")
    );
    assert_eq!(
        stub.jwks_hits(),
        hits + 1,
        "one refetch for the unknown kid"
    );
    // ... and another unknown kid within the interval does not refetch again.
    let (state, nonce) = evil_leg(&world, &mut browser).await;
    stub.answer_with(&mint(
        &SigningKey::rs256(),
        &json!({"alg": "RS256", "kid": "never-published"}),
        &stub.claims(&nonce),
    ));
    let r = evil_callback(&world, &mut browser, "evil", &state).await;
    assert!(is_denied(&r));
    assert_eq!(
        stub.jwks_hits(),
        hits + 1,
        "no second refetch within the interval"
    );

    // A refused code (400 from the token endpoint) is a failure, and no code is issued.
    let (state, _) = evil_leg(&world, &mut browser).await;
    {
        let mut s = stub.state.lock().unwrap();
        s.token_status = 400;
        s.token = json!({"error": "invalid_grant"}).to_string();
    }
    let r = evil_callback(&world, &mut browser, "evil", &state).await;
    assert!(is_denied(&r));
    assert_eq!(metric(&world.issuer, "evil", "idp_error").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_replay_missing_cookie_and_mixups_are_refused_without_redirect() {
    let world = world("delegate").await;
    let stub = &world.stub;
    let mut browser = Browser::new(&world.issuer.certs);

    // State replay: the first callback works, the second is unknown.
    let (state, nonce) = evil_leg(&world, &mut browser).await;
    stub.answer_with(&mint(
        &stub.key,
        &json!({"alg": "RS256", "kid": stub.kid}),
        &stub.claims(&nonce),
    ));
    let saved = browser.jar.clone();
    let first = evil_callback(&world, &mut browser, "evil", &state).await;
    assert!(first.header("location").unwrap().starts_with(LOGIN_URL));
    browser.jar = saved;
    let replay = evil_callback(&world, &mut browser, "evil", &state).await;
    assert_eq!(replay.status, 400);
    assert!(replay.header("location").is_none());
    assert_eq!(metric(&world.issuer, "evil", "state_unknown").await, 1);

    // The callback from a browser without the binding cookie (login CSRF).
    let (state, nonce) = evil_leg(&world, &mut browser).await;
    stub.answer_with(&mint(
        &stub.key,
        &json!({"alg": "RS256", "kid": stub.kid}),
        &stub.claims(&nonce),
    ));
    let mut victim = Browser::new(&world.issuer.certs);
    let r = evil_callback(&world, &mut victim, "evil", &state).await;
    assert_eq!(r.status, 400);
    assert_eq!(metric(&world.issuer, "evil", "binding").await, 1);
    // A cookie with the right name but another value is no better.
    let (state, _) = evil_leg(&world, &mut browser).await;
    let (authority, _, _) = split_url(&world.issuer.url);
    for value in browser.jar.get_mut(&authority).unwrap().values_mut() {
        *value = "forged".into();
    }
    let r = evil_callback(&world, &mut browser, "evil", &state).await;
    assert_eq!(r.status, 400);
    assert_eq!(metric(&world.issuer, "evil", "binding").await, 2);

    // Mix-up: a state issued for evil arrives on google's callback path.
    let (state, _) = evil_leg(&world, &mut browser).await;
    let r = evil_callback(&world, &mut browser, "google", &state).await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    assert_eq!(metric(&world.issuer, "google", "mixup").await, 1);

    // Mix-up: the RFC 9207 iss names another issuer; and a missing iss from a provider
    // that promises it.
    let (state, _) = evil_leg(&world, &mut browser).await;
    let url = format!(
        "{}/oauth2/upstream/evil/callback?code=c&state={}&iss={}",
        world.issuer.url,
        enc(&state),
        enc(&world.idp.url)
    );
    let r = browser.send("GET", &url, None).await;
    assert_eq!(r.status, 400);
    let (state, _) = evil_leg(&world, &mut browser).await;
    let url = format!(
        "{}/oauth2/upstream/evil/callback?code=c&state={}",
        world.issuer.url,
        enc(&state)
    );
    let r = browser.send("GET", &url, None).await;
    assert_eq!(r.status, 400);
    assert_eq!(metric(&world.issuer, "evil", "mixup").await, 2);

    // The provider reports an error: the client hears access_denied with its state.
    let (state, _) = evil_leg(&world, &mut browser).await;
    let url = format!(
        "{}/oauth2/upstream/evil/callback?error=access_denied&state={}&iss={}",
        world.issuer.url,
        enc(&state),
        enc(&stub.issuer())
    );
    let r = browser.send("GET", &url, None).await;
    assert!(is_denied(&r), "{:?}", r.header("location"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chooser_page_offers_the_clients_choices_without_script() {
    let world = world("delegate").await;
    let mut browser = Browser::new(&world.issuer.certs);
    let url = format!(
        "{}/oauth2/authorize?{}",
        world.issuer.url,
        web_query("st-c", None)
    );
    let page = browser.send("GET", &url, None).await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
    assert!(html.contains("Continue with Google"), "{html}");
    assert!(
        html.contains("Continue with Evil &lt;Corp&gt;"),
        "display names are escaped: {html}"
    );
    assert!(html.contains("Sign in with your account"), "{html}");
    // Each button leads to its leg; the one-time request id works once.
    let href = html
        .split("href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(href.starts_with("upstream/google/start?ar="), "{href}");
    let start = format!("{}/oauth2/{href}", world.issuer.url);
    let to_idp = browser.send("GET", &start, None).await;
    assert_eq!(to_idp.status, 303);
    assert!(
        to_idp
            .header("location")
            .unwrap()
            .starts_with(&world.idp.url)
    );
    assert!(
        to_idp
            .header("set-cookie")
            .unwrap()
            .starts_with("__Host-sg-up-")
    );
    let cookie = to_idp.header("set-cookie").unwrap();
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert_eq!(browser.send("GET", &start, None).await.status, 400);

    // A hint outside the issuer's choices is refused at the client's redirect URI.
    let url = format!(
        "{}/oauth2/authorize?{}&upstream=github",
        world.issuer.url,
        web_query("st-c", None)
    );
    let r = browser.send("GET", &url, None).await;
    let location = r.header("location").unwrap();
    assert!(location.starts_with(WEB_REDIRECT), "{location}");
    assert_eq!(
        query_param(location, "error").as_deref(),
        Some("invalid_request")
    );

    // A client limited to [evil] never sees Google: it goes straight to its only choice,
    // and upstream=google is refused.
    let mut registry = registry(None);
    registry["upstreamChoices"] = json!({ WEB.id: ["evil"] });
    write_atomic(
        &world.issuer.dir.join("clients.json"),
        &registry.to_string(),
    );
    let url = format!(
        "{}/oauth2/authorize?{}",
        world.issuer.url,
        web_query("st-c", None)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let location = loop {
        let r = browser.send("GET", &url, None).await;
        if let Some(l) = r
            .header("location")
            .filter(|l| l.contains("/oauth2/upstream/evil/start"))
        {
            break l.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client's choices never came in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(location.starts_with(&world.issuer.url), "{location}");
    let url = format!(
        "{}/oauth2/authorize?{}&upstream=google",
        world.issuer.url,
        web_query("st-c", None)
    );
    let r = browser.send("GET", &url, None).await;
    assert_eq!(
        query_param(r.header("location").unwrap(), "error").as_deref(),
        Some("invalid_request")
    );
}

/// The sidecar's own CA bundle (the operator's CA, which certifies in-cluster Services) is never
/// trusted for an identity provider: a tenant holding a certificate from it cannot pose as
/// one. Here the stub's CA plays the operator's CA; an upstream at the stub without a caBundle
/// of its own never gets past TLS, and a login through it ends in temporarily_unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_an_operator_ca_certificate_is_not_an_identity_provider() {
    let world = world("delegate").await;
    let mut config = upstream_config(&world.issuer, &world.idp, &world.stub, "delegate");
    config["caBundlePem"] = json!(format!(
        "{}{}",
        world.issuer.certs.ca_pem, world.stub.server.ca_pem
    ));
    config["policy"]["generation"] = json!(unique());
    config["issuer"]["upstreams"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "impostor", "displayName": "Impostor", "clientId": "c",
            "clientSecretPath": world.issuer.dir.join("evil.secret"),
            "callbackUrl": format!("{}/oauth2/upstream/impostor/callback", world.issuer.url),
            "oidc": {"issuer": world.stub.issuer(), "scopes": ["openid"], "algorithms": ["RS256"]}
        }));
    reconfigure(&world.issuer, &config).await;
    let text = eventually(
        "the impostor refused at TLS in /readyz",
        Duration::from_secs(20),
        || async {
            let (_, text) = readyz(world.issuer.admin).await;
            text.contains(
                "upstream impostor: UNAVAILABLE, discovery not read yet (last error: connect)",
            )
            .then_some(text)
        },
    )
    .await;
    // The same server, trusted through the upstream's own caBundle, works.
    assert!(text.contains("upstream evil: oidc"), "{text}");
    let mut browser = Browser::new(&world.issuer.certs);
    let url = format!(
        "{}/oauth2/authorize?{}&upstream=impostor",
        world.issuer.url,
        web_query("st-i", None)
    );
    let (_, location) = open_leg(&mut browser, &url).await;
    assert!(location.starts_with(WEB_REDIRECT), "{location}");
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("temporarily_unavailable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_outage_shows_in_readyz_and_metrics_and_leaves_client_credentials_working() {
    let mut world = world("delegate").await;
    // The Google stand-in goes away; an upstream whose provider never answered is added.
    world.idp.child.kill().await.unwrap();
    let mut config = upstream_config(&world.issuer, &world.idp, &world.stub, "delegate");
    let dead = format!("https://127.0.0.1:{}", free_port());
    config["issuer"]["upstreams"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "down", "displayName": "Down", "clientId": "c",
            "clientSecretPath": world.issuer.dir.join("evil.secret"),
            "callbackUrl": format!("{}/oauth2/upstream/down/callback", world.issuer.url),
            "oidc": {"issuer": dead, "scopes": ["openid"], "algorithms": ["RS256"]}
        }));
    write_atomic(&world.issuer.dir.join("config.json"), &config.to_string());
    let text = eventually(
        "the dead upstream in /readyz",
        Duration::from_secs(20),
        || async {
            let (status, text) = readyz(world.issuer.admin).await;
            assert_eq!(
                status, 200,
                "an IdP outage never makes the issuer unready: {text}"
            );
            text.contains(
                "upstream down: UNAVAILABLE, discovery not read yet (last error: connect)",
            )
            .then_some(text)
        },
    )
    .await;
    assert!(text.contains("upstream evil: oidc"), "{text}");

    let mut browser = Browser::new(&world.issuer.certs);
    let url = format!(
        "{}/oauth2/authorize?{}&upstream=down",
        world.issuer.url,
        web_query("st-d", None)
    );
    let (_, location) = open_leg(&mut browser, &url).await;
    assert!(location.starts_with(WEB_REDIRECT), "{location}");
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("temporarily_unavailable")
    );
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-d"));
    // The Google leg opens (discovery is cached) but the provider is gone: the exchange
    // fails and the browser is sent back to the client, not left hanging.
    let url = format!(
        "{}/oauth2/authorize?{}",
        world.issuer.url,
        google_query("st-g")
    );
    let (_, to_idp) = open_leg(&mut browser, &url).await;
    assert!(to_idp.starts_with(&world.idp.url), "{to_idp}");
    let state = query_param(&to_idp, "state").unwrap();
    let callback = format!(
        "{}/oauth2/upstream/google/callback?code=c&state={}&iss={}",
        world.issuer.url,
        enc(&state),
        enc(&world.idp.url)
    );
    let back = browser.send("GET", &callback, None).await;
    let location = back.header("location").unwrap();
    assert_eq!(
        query_param(location, "error").as_deref(),
        Some("temporarily_unavailable"),
        "{location}"
    );
    assert_eq!(query_param(location, "state").as_deref(), Some("st-g"));
    assert_eq!(metric(&world.issuer, "google", "idp_error").await, 1);

    // client_credentials is untouched.
    let token = world
        .issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await;
    assert_eq!(
        token.status,
        200,
        "{}",
        String::from_utf8_lossy(&token.body)
    );
    let metrics = String::from_utf8(get(world.issuer.admin, "/metrics", &[]).await.body).unwrap();
    assert!(
        metrics.contains("scopegate_upstream_up{upstream=\"down\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scopegate_upstream_up{upstream=\"evil\"} 1"),
        "{metrics}"
    );
    assert_eq!(metric(&world.issuer, "down", "idp_error").await, 1);

    // The other provider still logs users in while Google and "down" are out.
    let mut browser = Browser::new(&world.issuer.certs);
    let (state, nonce) = evil_leg(&world, &mut browser).await;
    let header = json!({"alg": "RS256", "kid": world.stub.kid, "typ": "JWT"});
    let id_token = mint(&world.stub.key, &header, &world.stub.claims(&nonce));
    world.stub.answer_with(&id_token);
    let r = evil_callback(&world, &mut browser, "evil", &state).await;
    let location = r.header("location").unwrap_or_default();
    assert!(
        location.starts_with(&format!("{LOGIN_URL}?login_challenge=")),
        "{} {location}",
        r.status
    );
    assert_eq!(metric(&world.issuer, "evil", "ok").await, 1);
}

/// A provider endpoint slower than any timeout: it completes TLS (with the issuer's own
/// serving pair, whose CA the issuer trusts), reads the request, reports its first line and
/// never answers. Its connections end with it.
struct Silent {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Silent {
    async fn start(certs: &TestCerts) -> (Silent, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::AsyncReadExt;
        let acceptor = certs.acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (heard, requests) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: every held connection closes then.
            let mut held = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, heard) = (acceptor.clone(), heard.clone());
                held.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (mut buf, mut chunk, mut told) = (Vec::new(), [0u8; 4096], false);
                    // Read until the peer gives up; answer nothing.
                    while let Ok(n @ 1..) = tls.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        if !told && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            told = true;
                            let line = String::from_utf8_lossy(&buf);
                            let _ = heard.send(line.lines().next().unwrap_or("").to_owned());
                        }
                    }
                });
            }
        });
        (Silent { url, task }, requests)
    }
}

/// An issuer with upstream `name` whose token endpoint holds every request and never
/// answers, and a browser whose login is at the callback (in flight, in `callback`).
struct SlowLogin {
    issuer: Issuer,
    _stub: Stub,
    held: tokio::sync::mpsc::UnboundedReceiver<String>,
    callback: tokio::task::JoinHandle<RawResponse>,
    timeouts_before: u64,
    _silent: Silent,
}

async fn slow_login(name: &str, spec: Spec) -> SlowLogin {
    let issuer = Issuer::start(spec).await;
    let stub = Stub::start().await;
    // Discovery and keys come from the stub; its discovery names a token endpoint that holds
    // every request and never answers.
    let (silent, held) = Silent::start(&issuer.certs).await;
    stub.state.lock().unwrap().token_endpoint = Some(format!("{}/token", silent.url));
    std::fs::write(issuer.dir.join("slow.secret"), "slow-secret").unwrap();
    let mut config = issuer.config.clone();
    config["policy"]["generation"] = json!(unique());
    config["issuer"]["upstreams"] = json!([
        {"name": name, "displayName": "Slow", "clientId": EVIL_CLIENT,
         "clientSecretPath": issuer.dir.join("slow.secret"),
         "caBundlePem": format!("{}{}", issuer.certs.ca_pem, stub.server.ca_pem),
         "callbackUrl": format!("{}/oauth2/upstream/{name}/callback", issuer.url),
         "oidc": {"issuer": stub.issuer(), "scopes": ["openid", "email"], "algorithms": ["RS256"]}}
    ]);
    config["issuer"]["identity"] = json!({"mode": "delegate", "directScopes": ["read:items"]});
    reconfigure(&issuer, &config).await;
    eventually(
        "the slow upstream's discovery and keys",
        Duration::from_secs(20),
        || async {
            let (_, text) = readyz(issuer.admin).await;
            (text.contains(&format!("upstream {name}: oidc")) && text.contains("keys, fetched"))
                .then_some(())
        },
    )
    .await;

    let mut browser = Browser::new(&issuer.certs);
    let authorize = format!(
        "{}/oauth2/authorize?{}&upstream={name}",
        issuer.url,
        web_query("st-slow", Some("read:items"))
    );
    let (_, to_idp) = open_leg(&mut browser, &authorize).await;
    assert!(
        to_idp.starts_with(&format!("{}/authorize?", stub.issuer())),
        "{to_idp}"
    );
    let state = query_param(&to_idp, "state").unwrap();
    let timeouts_before = metric(&issuer, name, "timeout").await;
    let url = format!(
        "{}/oauth2/upstream/{name}/callback?code=stub-code&state={}&iss={}",
        issuer.url,
        enc(&state),
        enc(&stub.issuer())
    );
    let callback = tokio::spawn(async move { browser.send("GET", &url, None).await });
    SlowLogin {
        issuer,
        _stub: stub,
        held,
        callback,
        timeouts_before,
        _silent: silent,
    }
}

/// Where a slow login ended: the client's redirect with temporarily_unavailable, its state,
/// the issuer's iss, no code, and one more `timeout` outcome (not `idp_error`).
async fn assert_slow_login_gave_up(login: SlowLogin, name: &str) {
    let back = login.callback.await.unwrap();
    let issuer = &login.issuer;
    assert_eq!(back.status, 303, "{}", String::from_utf8_lossy(&back.body));
    let location = back.header("location").unwrap();
    assert!(location.starts_with(WEB_REDIRECT), "{location}");
    assert_eq!(
        query_param(location, "error").as_deref(),
        Some("temporarily_unavailable"),
        "{location}"
    );
    assert_eq!(query_param(location, "state").as_deref(), Some("st-slow"));
    assert_eq!(
        query_param(location, "iss").as_deref(),
        Some(issuer.url.as_str())
    );
    assert!(query_param(location, "code").is_none(), "{location}");
    assert_eq!(
        metric(issuer, name, "timeout").await,
        login.timeouts_before + 1
    );
    assert_eq!(
        metric(issuer, name, "idp_error").await,
        0,
        "a timeout is counted as a timeout only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slower_than_the_request_timeout_sends_temporarily_unavailable_to_the_client() {
    let mut login = slow_login("slow", Spec::default()).await;
    // The code exchange reached the provider, which holds it ...
    let request = tokio::time::timeout(Duration::from_secs(20), login.held.recv())
        .await
        .expect("the code exchange reaches the slow provider")
        .unwrap();
    assert!(request.starts_with("POST /token "), "{request}");
    // ... and meanwhile the issuer answers everything else: the pod stays ready and
    // client_credentials is issued. (The login waits REQUEST_TIMEOUT, 10 s; these answer in
    // milliseconds, so the login is still in flight here.)
    let (status, text) = readyz(login.issuer.admin).await;
    assert_eq!(
        status, 200,
        "a slow provider never makes the issuer unready: {text}"
    );
    let token = login
        .issuer
        .token(&BACKEND, "grant_type=client_credentials")
        .await;
    assert_eq!(
        token.status,
        200,
        "{}",
        String::from_utf8_lossy(&token.body)
    );
    assert!(
        !login.callback.is_finished(),
        "client_credentials was answered while the upstream login still waited on its provider"
    );

    // The login gives up at the issuer's request timeout and sends the browser back to the
    // client with temporarily_unavailable and the client's state, and no code.
    assert_slow_login_gave_up(login, "slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_provider_calls_outlast_the_login_deadline_gives_up_at_the_deadline() {
    let logs = captured_logs();
    // Every provider request may take 10 s; the login as a whole only 1.5 s here (20 s by
    // default), so a provider that answers each of a GitHub login's many calls just in time
    // cannot hold the browser for minutes.
    let spec = Spec {
        tuning: IssuerTuning {
            login_deadline_ms: 1_500,
            ..Default::default()
        },
        ..Spec::default()
    };
    let mut login = slow_login("deadline", spec).await;
    let request = tokio::time::timeout(Duration::from_secs(20), login.held.recv())
        .await
        .expect("the code exchange reaches the slow provider")
        .unwrap();
    assert!(request.starts_with("POST /token "), "{request}");
    assert_slow_login_gave_up(login, "deadline").await;
    // The deadline ended it, not the request timeout (which would have, without a deadline,
    // after 10 s with the same outcome).
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains("upstream login exceeded its deadline")
                && l.contains("upstream=\"deadline\"")),
        "no deadline line in the log"
    );
}

/// Puts `config` in force and waits until the issuer reports its generation.
async fn reconfigure(issuer: &Issuer, config: &Value) {
    write_atomic(&issuer.dir.join("config.json"), &config.to_string());
    let generation = config["policy"]["generation"].as_u64().unwrap();
    eventually(
        "the new config in force",
        Duration::from_secs(20),
        || async {
            let (_, text) = readyz(issuer.admin).await;
            text.contains(&format!("config: generation {generation} "))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_upstream_age_ends_the_refresh_family_born_from_an_upstream_login() {
    let world = world("direct").await;
    let mut config = upstream_config(&world.issuer, &world.idp, &world.stub, "direct");
    config["issuer"]["identity"]["maxUpstreamAgeSecs"] = json!(2);
    reconfigure(&world.issuer, &config).await;
    let mut browser = Browser::new(&world.issuer.certs);
    let location = google_login(&world, &mut browser, "carol").await;
    let code = query_param(&location, "code").unwrap();
    let token = redeem(&world.issuer, &code).await;
    assert_eq!(
        token.status,
        200,
        "{}",
        String::from_utf8_lossy(&token.body)
    );
    let mut refresh = token.json()["refresh_token"].as_str().unwrap().to_owned();
    // The fixture's refresh families live an hour; this one must end within seconds.
    let refused = world
        .issuer
        .token(
            &WEB,
            &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
        )
        .await;
    // Rotated tokens are followed until the family ends.
    let mut last = refused;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while last.status == 200 {
        refresh = last.json()["refresh_token"].as_str().unwrap().to_owned();
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh family never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = world
            .issuer
            .token(
                &WEB,
                &format!("grant_type=refresh_token&refresh_token={}", enc(&refresh)),
            )
            .await;
    }
    assert_eq!(last.status, 400, "{}", String::from_utf8_lossy(&last.body));
    assert_eq!(last.json()["error"], "invalid_grant");
}

/// Everything every test in this binary logs, at trace level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
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

struct LogSink(Arc<Mutex<Vec<u8>>>);

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
async fn logs_never_carry_codes_tokens_state_nonce_or_the_cookie() {
    let logs = captured_logs();
    let world = world("delegate").await;
    let stub = &world.stub;
    let mut browser = Browser::new(&world.issuer.certs);
    let mut secrets = vec!["evil-secret".to_owned(), GOOGLE_SECRET.to_owned()];
    // A login that passes and one whose ID token is refused, each with a code of its own.
    for good in [true, false] {
        let (state, nonce) = evil_leg(&world, &mut browser).await;
        let mut claims = stub.claims(&nonce);
        if !good {
            claims["aud"] = json!("someone-else");
        }
        let id_token = mint(
            &stub.key,
            &json!({"alg": "RS256", "kid": stub.kid}),
            &claims,
        );
        let access = format!("stub-access-{}", unique());
        {
            let mut s = stub.state.lock().unwrap();
            s.token_status = 200;
            s.token = json!({"access_token": access, "token_type": "Bearer", "id_token": id_token})
                .to_string();
        }
        let (authority, _, _) = split_url(&world.issuer.url);
        secrets.extend(browser.jar[&authority].values().cloned());
        let code = format!("upstream-code-{}", unique());
        let url = format!(
            "{}/oauth2/upstream/evil/callback?code={code}&state={}&iss={}",
            world.issuer.url,
            enc(&state),
            enc(&stub.issuer())
        );
        let r = browser.send("GET", &url, None).await;
        if let Some(challenge) = r
            .header("location")
            .and_then(|l| l.strip_prefix(&format!("{LOGIN_URL}?login_challenge=")))
        {
            secrets.push(challenge.to_owned());
        }
        secrets.extend([state, nonce, id_token, access, code]);
    }
    // And a real provider's whole flow.
    let location = google_login(&world, &mut browser, "dave").await;
    secrets.push(query_param(&location, "login_challenge").unwrap());
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("upstream login succeeded") && text.contains("upstream ID token refused"),
        "the logs were captured"
    );
    for secret in &secrets {
        assert!(secret.len() >= 8, "{secret}");
        assert!(
            !text.contains(secret.as_str()),
            "a secret value reached the log: {secret}"
        );
    }
}

/// What the GitHub stub answers, and what it saw.
#[derive(Default)]
struct GhState {
    token: String,
    user: Value,
    emails: Vec<Value>,
    member: u16,
    teams: Value,
    token_requests: Vec<String>,
    /// The token endpoint's status when not 200.
    token_status: Option<u16>,
}

/// A GitHub Enterprise-shaped stub on 127.0.0.1 (web at `/login/oauth/*`, API at `/api/v3`).
struct GithubStub {
    host: String,
    ca_pem: String,
    state: Arc<Mutex<GhState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GithubStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GithubStub {
    async fn start() -> GithubStub {
        use http_body_util::BodyExt;
        let certs = TestCerts::new();
        let acceptor = certs.acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state: Arc<Mutex<GhState>> = Arc::default();
        let (shared, base) = (state.clone(), format!("https://{host}"));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, shared, base) = (acceptor.clone(), shared.clone(), base.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (shared, base) = (shared.clone(), base.clone());
                            async move {
                                let target = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let mut s = shared.lock().unwrap();
                                let page = |i: usize| s.emails.get(i).cloned().unwrap_or(json!([]));
                                let (status, link, body) = match target.as_str() {
                                "/login/oauth/access_token" => {
                                    s.token_requests.push(String::from_utf8_lossy(&body).into_owned());
                                    (s.token_status.unwrap_or(200), None, s.token.clone())
                                }
                                "/api/v3/user" => (200, None, s.user.to_string()),
                                "/api/v3/user/emails?per_page=100" => (
                                    200,
                                    (s.emails.len() > 1).then(|| {
                                        format!("<{base}/api/v3/user/emails?per_page=100&page=2>; rel=\"next\"")
                                    }),
                                    page(0).to_string(),
                                ),
                                "/api/v3/user/emails?per_page=100&page=2" => (200, None, page(1).to_string()),
                                "/api/v3/user/teams?per_page=100" => (200, None, s.teams.to_string()),
                                t if t.starts_with("/api/v3/orgs/acme/members/") => (s.member, None, String::new()),
                                _ => (404, None, String::new()),
                            };
                                let mut response = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json");
                                if let Some(link) = link {
                                    response = response.header("link", link);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    response
                                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GithubStub {
            host,
            ca_pem: certs.ca_pem.clone(),
            state,
            task,
        }
    }

    /// The happy account: id 583231, primary verified email on page 2, in acme/sre.
    fn octocat(&self, login: &str) {
        let mut s = self.state.lock().unwrap();
        s.token = json!({"access_token": "gho_stub", "token_type": "bearer", "scope": "read:user,user:email,read:org"}).to_string();
        s.user = json!({"id": 583231, "login": login, "name": "The Octocat", "email": "public@profile.example"});
        s.emails = vec![
            json!([{"email": "old@elsewhere.example", "primary": false, "verified": true}]),
            json!([{"email": "octocat@shop.example", "primary": true, "verified": true}]),
        ];
        s.member = 204;
        s.token_status = None;
        s.teams = json!([{"slug": "sre", "organization": {"login": "acme"}}, {"slug": "sre", "organization": {"login": "other"}}]);
    }
}

async fn github_world(mode: &str) -> (Issuer, GithubStub) {
    let issuer = Issuer::start(Spec::default()).await;
    let stub = GithubStub::start().await;
    std::fs::write(issuer.dir.join("gh.secret"), "gh-secret-0123456789").unwrap();
    let mut config = issuer.config.clone();
    config["policy"]["generation"] = json!(unique());
    config["issuer"]["upstreams"] = json!([
        {"name": "github", "displayName": "GitHub", "clientId": "Iv23li-test",
         "clientSecretPath": issuer.dir.join("gh.secret"),
         "caBundlePem": stub.ca_pem,
         "callbackUrl": format!("{}/oauth2/upstream/github/callback", issuer.url),
         "github": {"hostName": stub.host, "orgs": [{"name": "acme", "teams": ["sre"]}]}}
    ]);
    config["issuer"]["identity"] = json!({"mode": mode, "directScopes": ["read:items"]});
    reconfigure(&issuer, &config).await;
    (issuer, stub)
}

/// Runs a GitHub leg: authorize → start → (the stub "approves") → callback. Returns the
/// provider URL the browser was sent to and the issuer's answer to the callback.
async fn github_login(issuer: &Issuer, stub: &GithubStub) -> (String, RawResponse) {
    let mut browser = Browser::new(&issuer.certs);
    let url = format!(
        "{}/oauth2/authorize?{}&upstream=github",
        issuer.url,
        web_query("st-gh", Some("read:items"))
    );
    let (start, to_github) = open_leg(&mut browser, &url).await;
    assert!(start.contains("/oauth2/upstream/github/start"), "{start}");
    assert!(
        to_github.starts_with(&format!("https://{}/login/oauth/authorize?", stub.host)),
        "{to_github}"
    );
    let state = query_param(&to_github, "state").unwrap();
    let callback = format!(
        "{}/oauth2/upstream/github/callback?code=gh-code&state={}",
        issuer.url,
        enc(&state)
    );
    (to_github, browser.send("GET", &callback, None).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_login_keys_on_the_numeric_id_and_takes_only_a_verified_primary_email() {
    let (issuer, stub) = github_world("delegate").await;
    stub.octocat("octocat");
    let (to_github, back) = github_login(&issuer, &stub).await;
    assert_eq!(
        query_param(&to_github, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&to_github, "scope").as_deref(),
        Some("read:user user:email read:org")
    );
    assert!(query_param(&to_github, "nonce").is_none());
    // The code exchange carried our PKCE verifier for the challenge GitHub was shown.
    let exchange = stub
        .state
        .lock()
        .unwrap()
        .token_requests
        .last()
        .cloned()
        .unwrap();
    let verifier = query_param(&format!("?{exchange}"), "code_verifier").unwrap();
    assert_eq!(
        scopegate_issuer::grant::s256(&verifier),
        query_param(&to_github, "code_challenge").unwrap()
    );
    let location = back.header("location").unwrap().to_owned();
    let challenge = location
        .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        .unwrap_or_else(|| panic!("{location}"));
    let pending = issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    let upstream = &pending.json()["upstream"];
    assert_eq!(upstream["upstream"], "github");
    assert_eq!(
        upstream["subject"], "583231",
        "the numeric id, never the login"
    );
    assert_eq!(upstream["username"], "octocat");
    assert_eq!(
        upstream["email"], "octocat@shop.example",
        "the primary of page 2, not the profile email"
    );
    assert_eq!(upstream["emailVerified"], true);
    assert_eq!(upstream["groups"], json!(["acme:sre"]));

    // A renamed login with the same id is the same subject.
    stub.octocat("octocat-renamed");
    let (_, back) = github_login(&issuer, &stub).await;
    let location = back.header("location").unwrap().to_owned();
    let challenge = location
        .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        .unwrap();
    let pending = issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    assert_eq!(pending.json()["upstream"]["subject"], "583231");

    // An unverified primary is handed over as unverified.
    stub.state.lock().unwrap().emails = vec![json!([
        {"email": "victim@shop.example", "primary": true, "verified": false},
        {"email": "mine@shop.example", "primary": false, "verified": true}
    ])];
    let (_, back) = github_login(&issuer, &stub).await;
    let location = back.header("location").unwrap().to_owned();
    let challenge = location
        .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        .unwrap();
    let pending = issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    assert_eq!(pending.json()["upstream"]["email"], "victim@shop.example");
    assert_eq!(pending.json()["upstream"]["emailVerified"], false);
    assert_eq!(metric(&issuer, "github", "ok").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_refusals_a_200_with_error_and_org_denial_send_access_denied() {
    let (issuer, stub) = github_world("direct").await;
    stub.octocat("octocat");
    // Direct mode: our token for github:583231.
    let (_, back) = github_login(&issuer, &stub).await;
    let location = back.header("location").unwrap().to_owned();
    let code = query_param(&location, "code").unwrap_or_else(|| panic!("{location}"));
    let token = redeem(&issuer, &code).await;
    assert_eq!(
        claims_of(token.json()["access_token"].as_str().unwrap())["sub"],
        "github:583231"
    );

    let denied = |r: &RawResponse| {
        let l = r.header("location").unwrap_or_default();
        l.starts_with(WEB_REDIRECT)
            && query_param(l, "error").as_deref() == Some("access_denied")
            && query_param(l, "code").is_none()
    };
    // The token endpoint refuses the code with 200 and an error member.
    stub.state.lock().unwrap().token = json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}).to_string();
    let (_, back) = github_login(&issuer, &stub).await;
    assert!(denied(&back), "{:?}", back.header("location"));
    assert_eq!(metric(&issuer, "github", "idp_error").await, 1);

    // Not a member of the organisation (404), and a member outside the team.
    stub.octocat("octocat");
    stub.state.lock().unwrap().member = 404;
    let (_, back) = github_login(&issuer, &stub).await;
    assert!(denied(&back));
    stub.octocat("octocat");
    stub.state.lock().unwrap().teams =
        json!([{"slug": "sales", "organization": {"login": "acme"}}]);
    let (_, back) = github_login(&issuer, &stub).await;
    assert!(denied(&back));
    assert_eq!(metric(&issuer, "github", "denied_org").await, 2);

    // A rate limit is not a refusal: neither on the membership check (where taking it for
    // "not a member" would deny a member) nor at the token endpoint.
    let unavailable = |r: &RawResponse| {
        let l = r.header("location").unwrap_or_default();
        l.starts_with(WEB_REDIRECT)
            && query_param(l, "error").as_deref() == Some("temporarily_unavailable")
            && query_param(l, "state").as_deref() == Some("st-gh")
    };
    for (member, token_status) in [(403, None), (429, None), (204, Some(429)), (204, Some(502))] {
        stub.octocat("octocat");
        stub.state.lock().unwrap().member = member;
        stub.state.lock().unwrap().token_status = token_status;
        let (_, back) = github_login(&issuer, &stub).await;
        assert!(
            unavailable(&back),
            "member {member}, token {token_status:?}: {:?}",
            back.header("location")
        );
    }
    assert_eq!(metric(&issuer, "github", "denied_org").await, 2);
    assert_eq!(metric(&issuer, "github", "idp_error").await, 5);
}

/// Makes the stub answer for the GitHub account `id`, now named `login`, whose verified
/// primary address is `email` (a member of acme/sre, as [`GithubStub::octocat`]).
fn github_account(stub: &GithubStub, id: u64, login: &str, email: &str) {
    stub.octocat(login);
    let mut s = stub.state.lock().unwrap();
    s.user = json!({"id": id, "login": login, "name": "Someone", "email": null});
    s.emails = vec![json!([{"email": email, "primary": true, "verified": true}])];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_login_name_claimed_by_another_account_is_another_subject() {
    // "octo" belongs to one account, is renamed away, and another account takes the name.
    let accounts = [
        (583_231_u64, "first@shop.example"),
        (9_100_417_u64, "second@elsewhere.example"),
    ];

    // Delegate: the app keys its users on (upstream, subject) read from the login challenge.
    let (issuer, stub) = github_world("delegate").await;
    let mut keys = Vec::new();
    for (id, email) in accounts {
        github_account(&stub, id, "octo", email);
        let (_, back) = github_login(&issuer, &stub).await;
        let location = back.header("location").unwrap().to_owned();
        let challenge = location
            .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
            .unwrap_or_else(|| panic!("{location}"));
        let pending = issuer
            .mint("GET", &format!("/v1/logins/{challenge}"), None)
            .await;
        assert_eq!(pending.status, 200);
        let mut pending = pending.json();
        let upstream = &pending["upstream"];
        assert_eq!(upstream["upstream"], "github");
        assert_eq!(
            upstream["subject"],
            id.to_string(),
            "the numeric id of the account that logged in now"
        );
        assert_eq!(upstream["email"], email);
        assert_eq!(upstream["username"], "octo");
        keys.push((upstream["upstream"].clone(), upstream["subject"].clone()));
        // The login name is shown as the username and nowhere else in the challenge.
        pending["upstream"]
            .as_object_mut()
            .unwrap()
            .remove("username");
        assert!(!pending.to_string().contains("octo"), "{pending}");
    }
    assert_ne!(
        keys[0], keys[1],
        "the second account is never handed the first account's key"
    );
    assert_eq!(metric(&issuer, "github", "ok").await, 2);

    // Direct: our token's subject is github:{numeric id}.
    let (issuer, stub) = github_world("direct").await;
    let mut subjects = Vec::new();
    for (id, email) in accounts {
        github_account(&stub, id, "octo", email);
        let (_, back) = github_login(&issuer, &stub).await;
        let location = back.header("location").unwrap().to_owned();
        let code = query_param(&location, "code").unwrap_or_else(|| panic!("{location}"));
        let token = redeem(&issuer, &code).await;
        assert_eq!(
            token.status,
            200,
            "{}",
            String::from_utf8_lossy(&token.body)
        );
        let claims = claims_of(token.json()["access_token"].as_str().unwrap());
        assert_eq!(claims["sub"], format!("github:{id}"));
        assert!(!claims.to_string().contains("octo"), "{claims}");
        subjects.push(claims["sub"].clone());
    }
    assert_ne!(subjects[0], subjects[1]);
}

/// Runs headless Chromium (Debian's package, installed by scripts/setup.sh) with `args`.
fn chromium(args: &[&str]) -> std::process::Output {
    let profile = TempDir::new();
    std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--ignore-certificate-errors",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("chromium runs (scripts/setup.sh installs Debian's chromium)")
}

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chooser_page_renders_its_buttons_in_headless_chromium() {
    let world = world("delegate").await;
    let url = format!(
        "{}/oauth2/authorize?{}",
        world.issuer.url,
        web_query("st-ui", None)
    );
    // The DOM as Chromium built it: the three buttons, no script.
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&["--dump-dom", &url])
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for label in [
        "Continue with Google",
        "Continue with Evil &lt;Corp&gt;",
        "Sign in with your account",
    ] {
        assert!(dom.contains(label), "{label} in {dom}");
    }
    assert_eq!(dom.matches("class=\"choice\"").count(), 3, "{dom}");
    assert!(!dom.to_ascii_lowercase().contains("<script"), "{dom}");
    // A screenshot of the page, against one of an empty page of the same size: the buttons'
    // text makes the image carry more than a blank one.
    let dir = TempDir::new();
    let shot = |target: String, name: &str| {
        let path = dir.join(name);
        let out = chromium(&[
            &format!("--screenshot={}", path.display()),
            "--window-size=640,400",
            &target,
        ]);
        assert!(path.exists(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(path).unwrap()
    };
    let page = tokio::task::block_in_place(|| shot(url, "chooser.png"));
    let blank = tokio::task::block_in_place(|| shot("about:blank".into(), "blank.png"));
    eprintln!(
        "chooser screenshot {} bytes, blank {} bytes",
        page.len(),
        blank.len()
    );
    assert_eq!(png_size(&page), (640, 400));
    assert_eq!(png_size(&blank), (640, 400));
    assert!(
        page.len() > blank.len() + 500,
        "the chooser renders visible buttons: {} vs {} bytes",
        page.len(),
        blank.len()
    );
}

/// Logs in at the hostile provider answering `claims` (with our leg's nonce) and returns the
/// upstream identity the app reads on the mint socket, or `None` when the login was denied.
async fn delegate_identity(world: &World, mut claims: Value) -> Option<Value> {
    let mut browser = Browser::new(&world.issuer.certs);
    let (state, nonce) = evil_leg(world, &mut browser).await;
    claims["nonce"] = json!(nonce);
    let header = json!({"alg": "RS256", "kid": world.stub.kid, "typ": "JWT"});
    world
        .stub
        .answer_with(&mint(&world.stub.key, &header, &claims));
    let r = evil_callback(world, &mut browser, "evil", &state).await;
    if is_denied(&r) {
        return None;
    }
    let location = r.header("location").unwrap_or_default().to_owned();
    let challenge = location
        .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        .unwrap_or_else(|| panic!("{} {location}", r.status));
    let pending = world
        .issuer
        .mint("GET", &format!("/v1/logins/{challenge}"), None)
        .await;
    Some(pending.json()["upstream"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_claims_key_on_the_id_tokens_own_subject_claim_and_trust_silence_only_when_told() {
    let world = world("delegate").await;
    let stub = &world.stub;
    // An Azure-like provider: users keyed on oid, email in `mail`, no email_verified at all.
    let mut config = upstream_config(&world.issuer, &world.idp, stub, "delegate");
    config["issuer"]["upstreams"][1]["oidc"]["claims"] = json!({
        "subject": "oid", "email": "mail", "emailVerified": "email_verified",
        "name": "name", "username": "preferred_username"});
    config["issuer"]["upstreams"][1]["oidc"]["trustUnverifiedEmail"] = json!("whenMissing");
    config["issuer"]["upstreams"][1]["oidc"]["userinfo"] = json!("never");
    reconfigure(&world.issuer, &config).await;

    let base = |extra: Value| {
        let mut claims = stub.claims("");
        let object = claims.as_object_mut().unwrap();
        object.remove("email");
        object.remove("email_verified");
        for (k, v) in extra.as_object().unwrap() {
            object.insert(k.clone(), v.clone());
        }
        claims
    };
    let id = delegate_identity(
        &world,
        base(json!({"oid": "00000000-aaaa-4bbb-8ccc-000000000001", "mail": "ann@shop.example"})),
    )
    .await
    .expect("a login with oid passes");
    assert_eq!(id["subject"], "00000000-aaaa-4bbb-8ccc-000000000001");
    assert_ne!(id["subject"], "248289761001", "not the sub claim");
    assert_eq!(id["email"], "ann@shop.example");
    assert_eq!(
        id["emailVerified"], true,
        "no email_verified at all, and whenMissing"
    );

    // An explicit false is never overridden.
    let id = delegate_identity(
        &world,
        base(json!({"oid": "oid-2", "mail": "bob@shop.example", "email_verified": false})),
    )
    .await
    .expect("passes, unverified");
    assert_eq!(id["emailVerified"], false);

    // No oid in the ID token (the attacker hopes for a fallback to sub, or to an email) ...
    let denied = metric(&world.issuer, "evil", "invalid_id_token").await;
    assert!(
        delegate_identity(&world, base(json!({"mail": "ann@shop.example"})))
            .await
            .is_none()
    );
    // ... or an oid that is not a plain string: refused, never cleaned up into another key.
    for oid in [json!(""), json!(17), json!("oid-1\u{0}"), json!(["oid-1"])] {
        assert!(
            delegate_identity(&world, base(json!({"oid": oid})))
                .await
                .is_none(),
            "{oid}"
        );
    }
    assert_eq!(
        metric(&world.issuer, "evil", "invalid_id_token").await,
        denied + 5
    );

    // A config keying users on an email claim is refused as a whole; the last good stays.
    let mut unsafe_config = config.clone();
    unsafe_config["policy"]["generation"] = json!(unique());
    unsafe_config["issuer"]["upstreams"][1]["oidc"]["claims"]["subject"] = json!("email");
    write_atomic(
        &world.issuer.dir.join("config.json"),
        &unsafe_config.to_string(),
    );
    let text = eventually(
        "the unsafe config refused",
        Duration::from_secs(20),
        || async {
            let (_, text) = readyz(world.issuer.admin).await;
            text.contains("subject claim names an email")
                .then_some(text)
        },
    )
    .await;
    assert!(
        text.contains(&format!(
            "config: generation {} ",
            config["policy"]["generation"]
        )),
        "{text}"
    );
}
