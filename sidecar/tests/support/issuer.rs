//! An issuer sidecar for tests: signing keys of any algorithm, a client registry with one
//! client of each kind, a CA and serving certificate, the config document, and clients for
//! its HTTPS endpoints and its mint socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use scopegate_core::jose::b64;
use scopegate_core::secret_hash::{SecretKind, hash};
use scopegate_issuer::IssuerTuning;
use scopegate_issuer::store::Budget;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{RawResponse, TempDir, TestCerts, now, parse_response, unique, write_atomic};

/// The resource server audience most clients get.
pub const ORDERS: &str = "https://orders.example";
/// Another audience.
pub const PAYMENTS: &str = "https://payments.example";
/// Where the web client is sent back.
pub const WEB_REDIRECT: &str = "https://app.example/cb";
/// Where the test's login page is.
pub const LOGIN_URL: &str = "https://app.example/login";

/// The key the fixture's feed names subjects under (base64url of 32 bytes), as the operator
/// would render it into the issuer's and its verifiers' configs.
pub const FEED_SUBJECT_KEY: &str = "c2NvcGVnYXRlLXRlc3QtZmVlZC1zdWJqZWN0LWtleSE";

/// A registered client and its plaintext secret.
#[derive(Clone, Debug)]
pub struct TestClient {
    pub id: &'static str,
    pub secret: Option<&'static str>,
}

/// Confidential, client_secret_basic, client_credentials.
pub const BACKEND: TestClient = TestClient {
    id: "shop.backend",
    secret: Some("backend-secret-0123456789abcdef"),
};
/// Confidential, client_secret_post, client_credentials.
pub const POSTER: TestClient = TestClient {
    id: "shop.poster",
    secret: Some("poster-secret-0123456789abcdef"),
};
/// Confidential, basic, authorization_code + refresh_token.
pub const WEB: TestClient = TestClient {
    id: "shop.web",
    secret: Some("web-secret-0123456789abcdef"),
};
/// Public, authorization_code + refresh_token, loopback redirect.
pub const CLI: TestClient = TestClient {
    id: "shop.cli",
    secret: None,
};
/// Confidential with a human-chosen (argon2) secret.
pub const HUMAN: TestClient = TestClient {
    id: "shop.human",
    secret: Some("correct horse battery staple"),
};
/// A resource server that introspects.
pub const ORDERS_RS: TestClient = TestClient {
    id: "shop.orders",
    secret: Some("orders-secret-0123456789abcdef"),
};

/// The client registry document.
pub fn registry(revoke_before: Option<i64>) -> Value {
    let phc = |c: &TestClient, kind| json!([{"phc": hash(c.secret.unwrap(), kind).unwrap()}]);
    json!({"clients": [
        {"clientId": BACKEND.id, "public": false, "authMethod": "client_secret_basic",
         "secrets": phc(&BACKEND, SecretKind::Generated), "grantTypes": ["client_credentials"],
         "scopes": ["read:items", "write:items"], "defaultScopes": ["read:items"],
         "audiences": [ORDERS, PAYMENTS]},
        {"clientId": POSTER.id, "public": false, "authMethod": "client_secret_post",
         "secrets": phc(&POSTER, SecretKind::Generated), "grantTypes": ["client_credentials"],
         "scopes": ["read:items"], "defaultScopes": ["read:items"], "audiences": [ORDERS]},
        {"clientId": WEB.id, "public": false, "authMethod": "client_secret_basic",
         "secrets": phc(&WEB, SecretKind::Generated), "grantTypes": ["authorization_code", "refresh_token"],
         "scopes": ["read:items", "write:items"], "defaultScopes": ["read:items"],
         "audiences": [ORDERS], "redirectUris": [WEB_REDIRECT], "revokeBefore": revoke_before},
        {"clientId": CLI.id, "public": true, "authMethod": "none",
         "grantTypes": ["authorization_code", "refresh_token"],
         "scopes": ["read:items"], "defaultScopes": ["read:items"],
         "audiences": [ORDERS], "redirectUris": ["http://127.0.0.1/callback"]},
        {"clientId": HUMAN.id, "public": false, "authMethod": "client_secret_basic",
         "secrets": phc(&HUMAN, SecretKind::Chosen), "grantTypes": ["client_credentials"],
         "scopes": ["read:items"], "defaultScopes": ["read:items"], "audiences": [PAYMENTS]},
        {"clientId": ORDERS_RS.id, "public": false, "authMethod": "client_secret_basic",
         "secrets": phc(&ORDERS_RS, SecretKind::Generated), "grantTypes": ["client_credentials"],
         "scopes": ["read:items"], "defaultScopes": ["read:items"], "audiences": [ORDERS],
         "ownedAudiences": [ORDERS]}
    ]})
}

/// One managed key: (document entry, public JWK or null).
pub fn managed_key(
    alg: &str,
    kid: &str,
    published: i64,
    activates: i64,
    signs_until: i64,
    removed: i64,
) -> Value {
    let (private, public) = match alg {
        "ES256" => {
            let pkcs8 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .unwrap()
                .to_pkcs8v1()
                .unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            let point = pair.public_key().as_ref();
            (
                pkcs8.as_ref().to_vec(),
                json!({"kty": "EC", "crv": "P-256", "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..65])}),
            )
        }
        "EdDSA" => {
            let pair = Ed25519KeyPair::generate().unwrap();
            let pkcs8 = pair.to_pkcs8().unwrap();
            (
                pkcs8.as_ref().to_vec(),
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(pair.public_key().as_ref())}),
            )
        }
        "RS256" => {
            let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
            let der: Pkcs8V1Der = pair.as_der().unwrap();
            let components =
                aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            (
                der.as_ref().to_vec(),
                json!({"kty": "RSA", "n": b64::encode(&components.n), "e": b64::encode(&components.e)}),
            )
        }
        "HS256" => {
            let mut secret = [0u8; 32];
            aws_lc_rs::rand::fill(&mut secret).unwrap();
            (secret.to_vec(), Value::Null)
        }
        other => panic!("no test keys for {other}"),
    };
    let mut entry = json!({
        "kid": kid, "alg": alg, "publishedAt": published, "activatesAt": activates,
        "signsUntil": signs_until, "removedAfter": removed, "privateKey": STANDARD.encode(private)
    });
    if let Value::Object(mut jwk) = public {
        jwk.insert("kid".into(), json!(kid));
        jwk.insert("alg".into(), json!(alg));
        jwk.insert("use".into(), json!("sig"));
        entry["publicJwk"] = Value::Object(jwk);
    }
    entry
}

/// The published JWKS of a signing-keys document.
pub fn jwks_of(doc: &Value) -> Value {
    let keys: Vec<Value> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.get("publicJwk").cloned())
        .collect();
    json!({"keys": keys})
}

/// What an issuer fixture differs in.
#[derive(Clone)]
pub struct Spec {
    /// Signing algorithm of the active key.
    pub alg: &'static str,
    /// The `store` section.
    pub store: Value,
    /// Tunables.
    pub tuning: IssuerTuning,
    /// A signing-keys document instead of one fresh active key.
    pub keys: Option<Value>,
    /// Refresh family lifetime.
    pub refresh_ttl: u64,
    /// How long a refresh family may go unused (`None`: the sidecar's default).
    pub refresh_idle: Option<u64>,
    /// Run the binary instead of in-process.
    pub process: bool,
    /// `revokeBefore` of the web client.
    pub web_revoke_before: Option<i64>,
    /// The issuer URL (replicas share one); default `https://127.0.0.1:<port>`.
    pub url: Option<String>,
    /// Per-route rate limits of the verifier.
    pub route_limits: Value,
    /// Registry entries added to [`registry`]'s.
    pub extra_clients: Vec<Value>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            alg: "ES256",
            store: json!({"type": "memory"}),
            tuning: IssuerTuning::default(),
            keys: None,
            refresh_ttl: 3600,
            refresh_idle: None,
            process: false,
            web_revoke_before: None,
            url: None,
            route_limits: json!([]),
            extra_clients: Vec::new(),
        }
    }
}

/// A running issuer sidecar.
pub struct Issuer {
    pub dir: TempDir,
    pub certs: TestCerts,
    pub url: String,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub mint_socket: PathBuf,
    pub keys: Value,
    pub config: Value,
    running: Option<scopegate_sidecar::Running>,
    child: Option<tokio::process::Child>,
}

/// How the tests pick a port for a process they start: the e2e crate's, included by path
/// (only std) rather than depending on that crate and its Kubernetes client.
#[path = "../../../e2e/src/ports.rs"]
mod ports;
pub use ports::free_port;

/// The signing-keys document with one key of `alg`, active since a minute ago.
pub fn fresh_keys(alg: &str) -> Value {
    let now = now();
    json!({"keys": [managed_key(alg, &format!("k-{}", unique()), now - 60, now - 60, now + 86_400, now + 90_000)]})
}

impl Issuer {
    /// Starts an issuer on a fresh loopback port with `spec`.
    pub async fn start(spec: Spec) -> Issuer {
        let dir = TempDir::new();
        let certs = TestCerts::new();
        let keys = spec.keys.clone().unwrap_or_else(|| fresh_keys(spec.alg));
        Issuer::start_in(dir, certs, keys, spec, free_port()).await
    }

    /// Starts an issuer with everything given: several processes can share keys and a URL.
    pub async fn start_in(
        dir: TempDir,
        certs: TestCerts,
        keys: Value,
        spec: Spec,
        port: u16,
    ) -> Issuer {
        let url = spec
            .url
            .clone()
            .unwrap_or_else(|| format!("https://127.0.0.1:{port}"));
        std::fs::write(dir.join("tls.crt"), &certs.leaf_pem).unwrap();
        std::fs::write(dir.join("tls.key"), certs.leaf_key.serialize_pem()).unwrap();
        write_atomic(&dir.join("keys.json"), &keys.to_string());
        let mut clients = registry(spec.web_revoke_before);
        clients["clients"]
            .as_array_mut()
            .unwrap()
            .extend(spec.extra_clients.iter().cloned());
        write_atomic(&dir.join("clients.json"), &clients.to_string());
        let mint_socket = dir.join(&format!("mint-{}.sock", unique()));
        let hs256 = spec.alg == "HS256";
        let trusted = if hs256 {
            json!({"type": "ownSigningKeys"})
        } else {
            json!({"type": "static", "jwks": jwks_of(&keys)})
        };
        let config = json!({
            "apiVersion": "sidecar.scopegate.dev/v1",
            "policy": {"namespace": "shop", "name": "auth", "generation": 1},
            "listen": {"port": port, "tls": {"certPath": dir.join("tls.crt"), "keyPath": dir.join("tls.key")}},
            "upstream": {"port": 9, "responseTimeoutSecs": 2},
            "verify": {"issuers": [{"issuer": url, "keys": trusted}], "audiences": [url, ORDERS], "leewaySecs": 30},
            "rules": [{"paths": ["/items/**"], "action": {"type": "requireAll", "scopes": ["read:items"]}}],
            "trustedProxies": {"hops": 1},
            "rateLimits": spec.route_limits,
            "caBundlePem": certs.ca_pem,
            "issuer": {
                "url": url,
                "signingKeysPath": dir.join("keys.json"),
                "clientsPath": dir.join("clients.json"),
                "accessTokenTtlSecs": 600,
                "refreshTokenTtlSecs": spec.refresh_ttl,
                "codeTtlSecs": 60,
                "scopes": {"read:items": "Read items", "write:items": "Write items", "admin": "Everything"},
                "loginUrl": LOGIN_URL,
                "mint": {"subjects": ["user:*", "alice", "bob", "carol", "dave"], "scopes": ["read:items"], "audiences": [ORDERS], "maxTtlSecs": 300},
                "mintSocketPath": mint_socket,
                "store": spec.store,
                "feedSubjectKey": FEED_SUBJECT_KEY
            }
        });
        let mut config = config;
        if let Some(idle) = spec.refresh_idle {
            config["issuer"]["refreshTokenIdleSecs"] = json!(idle);
        }
        let config_path = dir.join("config.json");
        write_atomic(&config_path, &config.to_string());
        let mut issuer = Issuer {
            url,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            mint_socket,
            keys,
            config,
            running: None,
            child: None,
            dir,
            certs,
        };
        if spec.process {
            issuer.spawn(&config_path, &spec.tuning).await;
        } else {
            let running = scopegate_sidecar::start(scopegate_sidecar::Options {
                config_path,
                bind_ip: "127.0.0.1".parse().unwrap(),
                port_override: Some(port),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
                reload_interval: Duration::from_millis(50),
                drain_timeout: Duration::from_secs(2),
                issuer_tuning: spec.tuning.clone(),
                app_probes: Default::default(),
                connection: Default::default(),
            })
            .await
            .expect("issuer starts");
            issuer.admin = running.admin_addr();
            issuer.running = Some(running);
        }
        issuer
    }

    async fn spawn(&mut self, config: &Path, tuning: &IssuerTuning) {
        use tokio::io::AsyncBufReadExt;
        // Known to the sidecar's own tests; other crates including this module (the CLI's
        // tests) run issuers in-process only.
        let Some(binary) = option_env!("CARGO_BIN_EXE_scopegate-sidecar") else {
            panic!("a sidecar process is spawned from the sidecar's own tests only");
        };
        let mut child = tokio::process::Command::new(binary)
            .arg("--config")
            .arg(config)
            .args(["--bind", "127.0.0.1", "--admin-addr", "127.0.0.1:0"])
            .args(["--port", &self.addr.port().to_string()])
            .args(["--issuer-tuning", &serde_json::to_string(tuning).unwrap()])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the issuer prints its ports")
            .unwrap()
            .expect("a line on stdout");
        self.admin = line
            .split(' ')
            .find_map(|w| w.strip_prefix("admin="))
            .unwrap()
            .parse()
            .unwrap();
        self.child = Some(child);
    }

    /// Stops the issuer.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Rewrites the signing-keys document (the issuer reloads it).
    pub fn set_keys(&mut self, keys: Value) {
        write_atomic(&self.dir.join("keys.json"), &keys.to_string());
        self.keys = keys;
    }

    /// Sends raw request bytes over TLS and reads the answer.
    pub async fn raw(&self, request: &[u8]) -> RawResponse {
        tls_raw(&self.certs, self.addr, request).await
    }

    /// A GET of `target`.
    pub async fn get(&self, target: &str) -> RawResponse {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        self.raw(request.as_bytes()).await
    }

    /// A form POST with extra header lines.
    pub async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> RawResponse {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.raw(request.as_bytes()).await
    }

    /// A form POST authenticated as `client` by its registered method.
    pub async fn post_as(&self, path: &str, client: &TestClient, body: &str) -> RawResponse {
        match (client.id, client.secret) {
            (id, Some(secret)) if id == POSTER.id => {
                let body = format!("{body}&client_id={}&client_secret={}", enc(id), enc(secret));
                self.post(path, &body, &[]).await
            }
            (id, Some(secret)) => {
                self.post(path, body, &[("Authorization", &basic(id, secret))])
                    .await
            }
            (id, None) => {
                self.post(path, &format!("{body}&client_id={}", enc(id)), &[])
                    .await
            }
        }
    }

    /// A token request of `client`.
    pub async fn token(&self, client: &TestClient, body: &str) -> RawResponse {
        self.post_as("/oauth2/token", client, body).await
    }

    /// A mint-socket request.
    pub async fn mint(&self, method: &str, path: &str, body: Option<&Value>) -> RawResponse {
        let mut stream = tokio::net::UnixStream::connect(&self.mint_socket)
            .await
            .unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: mint\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        parse_response(&buf)
    }

    /// Runs the authorization flow for `client` up to the code: authorize, the app accepts
    /// the login for `subject` on the mint socket, the browser resumes. Returns the query of
    /// the final redirect to the client.
    pub async fn authorize(&self, query: &str, subject: &str) -> Result<String, RawResponse> {
        let first = self.get(&format!("/oauth2/authorize?{query}")).await;
        let Some(location) = first.header("location").map(str::to_owned) else {
            return Err(first);
        };
        let Some(challenge) = location.strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        else {
            return Err(first);
        };
        let accepted = self
            .mint(
                "POST",
                &format!("/v1/logins/{challenge}/accept"),
                Some(&json!({"subject": subject})),
            )
            .await;
        assert_eq!(
            accepted.status,
            200,
            "{}",
            String::from_utf8_lossy(&accepted.body)
        );
        let resume = accepted.json()["redirect_to"].as_str().unwrap().to_owned();
        let path = &resume[resume.find("/oauth2/").unwrap()..];
        let back = self.get(path).await;
        assert_eq!(back.status, 303);
        Ok(back.header("location").unwrap().to_owned())
    }
}

/// Sends raw bytes over TLS to `addr`, trusting the fixture's CA.
pub async fn tls_raw(certs: &TestCerts, addr: SocketAddr, request: &[u8]) -> RawResponse {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = certs.connector().connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(40), tls.read_to_end(&mut buf))
        .await
        .expect("answer in time");
    parse_response(&buf)
}

/// Form-urlencodes a component.
pub fn enc(text: &str) -> String {
    scopegate_issuer::form::form_encode(text)
}

/// `Basic base64(urlencode(id):urlencode(secret))`.
pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

/// The claims of a compact JWS (unchecked).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&b64::decode(payload.as_bytes()).unwrap()).unwrap()
}

/// The header of a compact JWS (unchecked).
pub fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&b64::decode(header.as_bytes()).unwrap()).unwrap()
}

/// A parameter of a redirect URL's query.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let form = scopegate_issuer::form::Form::parse(query.as_bytes()).ok()?;
    form.get(name).map(str::to_owned)
}

/// A fixed PKCE pair: RFC 7636 appendix B.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// Its S256 challenge.
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The authorization query of the web client.
pub fn web_query(state: &str, scope: Option<&str>) -> String {
    let mut q = format!(
        "response_type=code&client_id={}&redirect_uri={}&code_challenge={CHALLENGE}&code_challenge_method=S256&state={}",
        enc(WEB.id),
        enc(WEB_REDIRECT),
        enc(state)
    );
    if let Some(scope) = scope {
        q.push_str(&format!("&scope={}", enc(scope)));
    }
    q
}

/// A code of the web client for `subject`.
pub async fn web_code(issuer: &Issuer, subject: &str) -> String {
    let location = issuer
        .authorize(&web_query("st", Some("read:items write:items")), subject)
        .await
        .unwrap();
    query_param(&location, "code").unwrap()
}

/// Redeems a web-client code; returns the response.
pub async fn redeem(issuer: &Issuer, code: &str) -> RawResponse {
    issuer
        .token(
            &WEB,
            &format!(
                "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={VERIFIER}",
                enc(code),
                enc(WEB_REDIRECT)
            ),
        )
        .await
}

/// Introspects `token` as the orders resource server.
pub async fn introspect(issuer: &Issuer, token: &str) -> Value {
    let r = issuer
        .post_as(
            "/oauth2/introspect",
            &ORDERS_RS,
            &format!("token={}", enc(token)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The path of a file in the fixture's directory.
pub fn path_in(dir: &TempDir, name: &str) -> PathBuf {
    dir.join(name)
}

/// A GET of `/oauth2/authorize?{query}` from the address `from` (the issuer trusts one proxy
/// hop, so `X-Forwarded-For` names the caller).
pub async fn authorize_from(issuer: &Issuer, query: &str, from: &str) -> RawResponse {
    let request = format!(
        "GET /oauth2/authorize?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Forwarded-For: {from}\r\n\r\n"
    );
    issuer.raw(request.as_bytes()).await
}

/// The login challenge an authorization answer sends the browser to the login page with.
pub fn login_challenge_of(r: &RawResponse) -> String {
    let location = r
        .header("location")
        .unwrap_or_else(|| panic!("no redirect: {r:?}"));
    location
        .strip_prefix(&format!("{LOGIN_URL}?login_challenge="))
        .unwrap_or_else(|| panic!("not the login page: {location}"))
        .to_owned()
}

/// The attack on `/oauth2/authorize` with fully valid requests (a client's `client_id`,
/// redirect URI and an S256 challenge are public): one address floods the web client until
/// its address budget refuses it. Another address's challenge, taken before the flood, is
/// still pending, and its next request still gets a challenge. `issuer` must run with an
/// address budget of `flood` requests and a pending bound per address below `flood`.
pub async fn an_authorize_flood_spends_only_the_flooders_share(issuer: &Issuer, flood: usize) {
    const ATTACKER: &str = "198.51.100.7";
    const USER: &str = "203.0.113.9";
    let pending = |challenge: String| async move {
        issuer
            .mint("GET", &format!("/v1/logins/{challenge}"), None)
            .await
            .status
    };
    let user_before =
        login_challenge_of(&authorize_from(issuer, &web_query("u1", None), USER).await);
    let mut flooded = Vec::new();
    for i in 0..flood {
        let r = authorize_from(issuer, &web_query(&format!("a{i}"), None), ATTACKER).await;
        flooded.push(login_challenge_of(&r));
    }
    let refused = authorize_from(issuer, &web_query("over", None), ATTACKER).await;
    assert_eq!(refused.status, 429, "the flooder's address budget is spent");
    assert_eq!(
        pending(user_before).await,
        200,
        "the user's challenge outlived the flood"
    );
    assert_eq!(
        pending(flooded[0].clone()).await,
        404,
        "the flooder's own oldest went first"
    );
    assert_eq!(pending(flooded[flood - 1].clone()).await, 200);
    let user_after = authorize_from(issuer, &web_query("u2", None), USER).await;
    assert_eq!(
        pending(login_challenge_of(&user_after)).await,
        200,
        "the flood spent no budget in the client's name"
    );
}

/// How many requests the flooding address gets in [`authorize_flood_tuning`].
pub const FLOOD: usize = 12;

/// Budgets for [`an_authorize_flood_spends_only_the_flooders_share`]: each address may send
/// [`FLOOD`] authorization requests and keep 5 pending logins; the client's own budget (which
/// `/oauth2/authorize` must not spend) is smaller than one address's, as by default.
pub fn authorize_flood_tuning() -> IssuerTuning {
    IssuerTuning {
        limits: scopegate_issuer::limits::EndpointLimits {
            address: Budget::per_secs(FLOOD as u32, 3600),
            client: Budget::per_secs(FLOOD as u32 - 2, 3600),
            failed_address: Budget::per_secs(10_000, 60),
            failed_client: Budget::per_secs(10_000, 60),
        },
        pending_logins: scopegate_issuer::store::PendingBounds {
            per_address: 5,
            total: 10_000,
        },
        ..IssuerTuning::default()
    }
}

/// A cluster's service-account signing key, as the API server holds it.
pub struct ClusterKey(pub rsa::KeyPair);

impl ClusterKey {
    pub const KID: &'static str = "cluster-sa-1";
    pub const ISS: &'static str = "https://kubernetes.default.svc.cluster.local";

    /// A fresh RSA key.
    pub fn generate() -> ClusterKey {
        ClusterKey(rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap())
    }

    /// `serviceAccountIssuer` as the operator renders it.
    pub fn rendered(&self) -> Value {
        let c = aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(self.0.public_key());
        json!({"issuer": Self::ISS, "algorithms": ["RS256"], "jwks": {"keys": [
            {"kty": "RSA", "kid": Self::KID, "use": "sig",
             "n": b64::encode(&c.n), "e": b64::encode(&c.e)}
        ]}})
    }

    /// A projected token of ServiceAccount shop/billing for `aud`, valid ten minutes.
    pub fn token(&self, aud: &str) -> String {
        let now = now();
        let header = json!({"alg": "RS256", "kid": Self::KID});
        let claims = json!({
            "aud": [aud], "exp": now + 600, "iat": now, "nbf": now, "iss": Self::ISS,
            "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "billing", "uid": "u"},
                              "pod": {"name": "billing-0", "uid": "p"}},
            "sub": "system:serviceaccount:shop:billing"
        });
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(claims.to_string().as_bytes())
        );
        let mut signature = vec![0u8; self.0.public_modulus_len()];
        self.0
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .unwrap();
        format!("{input}.{}", b64::encode(&signature))
    }
}

/// The billing client of the registry: a ServiceAccount client of shop/billing, allowed
/// `scopes` (the first is its default) for `audiences`.
pub fn billing_client(scopes: &[&str], audiences: &[&str]) -> Value {
    json!({
        "clientId": "shop.billing", "public": false, "authMethod": "service_account_jwt",
        "grantTypes": ["client_credentials"], "scopes": scopes,
        "defaultScopes": [scopes[0]], "audiences": audiences,
        "serviceAccounts": ["system:serviceaccount:shop:billing"]
    })
}

/// What the operator renders for a ServiceAccount client: `client` added to the registry and
/// the cluster's service-account issuer to the config (the issuer reloads both).
pub fn admit_service_account_client(issuer: &Issuer, cluster: &ClusterKey, client: Value) {
    let mut clients = registry(None);
    clients["clients"].as_array_mut().unwrap().push(client);
    write_atomic(&issuer.dir.join("clients.json"), &clients.to_string());
    let mut config = issuer.config.clone();
    config["apiVersion"] = json!("sidecar.scopegate.dev/v2");
    config["issuer"]["serviceAccountIssuer"] = cluster.rendered();
    write_atomic(&issuer.dir.join("config.json"), &config.to_string());
}

/// The token-exchange grant type (RFC 8693).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The access-token type (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// An audience only the second hop may ask for.
pub const STOCK: &str = "https://stock.example";

/// The orders service: exchanges tokens sent to it for payments tokens.
pub const ORDERS_X: TestClient = TestClient {
    id: "shop.orders-x",
    secret: Some("orders-x-secret-0123456789abcdef"),
};
/// The payments service: exchanges tokens sent to it for stock tokens, chains of two.
pub const PAYMENTS_X: TestClient = TestClient {
    id: "shop.payments-x",
    secret: Some("payments-x-secret-0123456789abcdef"),
};
/// Like [`PAYMENTS_X`], exchanging only tokens no client exchanged before.
pub const PAYMENTS_SHALLOW: TestClient = TestClient {
    id: "shop.payments-shallow",
    secret: Some("payments-shallow-secret-0123456789"),
};
/// Has the grant type but declares no exchange.
pub const UNDECLARED: TestClient = TestClient {
    id: "shop.undeclared",
    secret: Some("undeclared-secret-0123456789abcdef"),
};
/// A public client declaring an exchange (the operator never renders one; refused anyway).
pub const PUBLIC_X: TestClient = TestClient {
    id: "shop.public-x",
    secret: None,
};

/// A registry entry of a client that may exchange tokens.
pub fn exchanger(
    client: &TestClient,
    scopes: &[&str],
    subject_audiences: &[&str],
    audiences: &[&str],
    max_depth: u8,
) -> Value {
    json!({
        "clientId": client.id, "public": false, "authMethod": "client_secret_basic",
        "secrets": client.secret.map_or(json!([]), |secret| json!([{"phc": hash(secret, SecretKind::Generated).unwrap()}])),
        "grantTypes": [TOKEN_EXCHANGE], "scopes": scopes,
        "tokenExchange": {"subjectAudiences": subject_audiences, "audiences": audiences, "maxDepth": max_depth}
    })
}

/// The exchanging clients of the token-exchange tests: [`ORDERS_X`], [`PAYMENTS_X`],
/// [`PAYMENTS_SHALLOW`], [`UNDECLARED`] and [`PUBLIC_X`].
pub fn exchange_clients() -> Vec<Value> {
    let mut undeclared = exchanger(&UNDECLARED, &["read:items"], &[ORDERS], &[PAYMENTS], 1);
    undeclared.as_object_mut().unwrap().remove("tokenExchange");
    let mut public = exchanger(&PUBLIC_X, &["read:items"], &[ORDERS], &[PAYMENTS], 1);
    public["public"] = json!(true);
    public["authMethod"] = json!("none");
    vec![
        exchanger(
            &ORDERS_X,
            &["read:items", "admin"],
            &[ORDERS],
            &[PAYMENTS],
            2,
        ),
        exchanger(&PAYMENTS_X, &["read:items"], &[PAYMENTS], &[STOCK], 2),
        exchanger(&PAYMENTS_SHALLOW, &["read:items"], &[PAYMENTS], &[STOCK], 1),
        undeclared,
        public,
    ]
}

/// An exchange request of `client` for `subject` with extra parameters `more`.
pub async fn exchange(
    issuer: &Issuer,
    client: &TestClient,
    subject: &str,
    more: &str,
) -> RawResponse {
    issuer
        .token(
            client,
            &format!(
                "grant_type={}&subject_token={}&subject_token_type={}{more}",
                enc(TOKEN_EXCHANGE),
                enc(subject),
                enc(ACCESS_TOKEN_TYPE)
            ),
        )
        .await
}
