//! `openapi import` against the document of a real FastAPI app (generated here by FastAPI
//! from the test venv) and a hand-written OpenAPI 3.1 document; `openapi export` validated by
//! an independent validator (openapi-spec-validator) and loaded by Swagger UI in headless
//! Chromium, whose Authorize dialog must show the issuer's flows and scopes.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const CLI: &str = env!("CARGO_BIN_EXE_kubectl-scopegate");

fn cache() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME is set");
    PathBuf::from(
        std::env::var("SCOPEGATE_CACHE").unwrap_or_else(|_| format!("{home}/.cache/scopegate")),
    )
}

fn venv_python() -> PathBuf {
    let python = cache().join("venv/bin/python");
    assert!(
        python.exists(),
        "the Python test peers are missing ({}): run scripts/setup.sh (FastAPI, openapi-spec-validator)",
        python.display()
    );
    python
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("scopegate-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(CLI).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The OpenAPI document of the FastAPI app in tests/py, as FastAPI writes it.
fn fastapi_document() -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/fastapi_app.py");
    let out = Command::new(venv_python()).arg(script).output().unwrap();
    assert!(out.status.success(), "FastAPI app: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What `explain -f` says the sidecar does: (status, challenge).
fn decide(
    policy: &Path,
    method: &str,
    target: &str,
    scopes: Option<&str>,
) -> (u16, Option<String>) {
    let mut args = vec![
        "explain",
        "-f",
        policy.to_str().unwrap(),
        "-o",
        "json",
        method,
        target,
    ];
    if let Some(scopes) = scopes {
        args.push("--scopes");
        args.push(scopes);
    }
    let out = cli(&args);
    assert!(out.status.success(), "explain: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        u16::try_from(report["decision"]["status"].as_u64().unwrap()).unwrap(),
        report["decision"]["wwwAuthenticate"]
            .as_str()
            .map(str::to_owned),
    )
}

fn rules_of(policy: &Value) -> Vec<Value> {
    policy["spec"]["rules"].as_array().unwrap().clone()
}

fn rule_for<'a>(rules: &'a [Value], method: &str, path: &str) -> &'a Value {
    rules
        .iter()
        .find(|r| {
            r["paths"].as_array().unwrap().iter().any(|p| p == path)
                && r["methods"].as_array().unwrap().iter().any(|m| m == method)
        })
        .unwrap_or_else(|| panic!("no rule for {method} {path} in {rules:#?}"))
}

#[test]
fn a_fastapi_apps_security_becomes_rules_the_sidecar_enforces() {
    let dir = Dir::new("fastapi");
    let doc = fastapi_document();
    assert_eq!(doc["openapi"], "3.1.0");
    let doc_path = dir.write("openapi.json", &doc.to_string());
    let args = [
        "openapi",
        "import",
        doc_path.to_str().unwrap(),
        "--selector",
        "app=orders",
        "--issuer-ref",
        "auth/shop-auth",
        "--audience",
        "orders",
        "-n",
        "shop",
        "-o",
        "json",
    ];
    // GET /legacy/report asks for an API key only: reported, and the import fails.
    let out = cli(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: GET /legacy/report: only schemes scopegate cannot verify: \"APIKeyHeader\" (type apiKey)"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("warning: POST /items: alternative \"APIKeyHeader\" (type apiKey) is not verified by scopegate"),
        "{}",
        stderr(&out)
    );
    let mut with_allow = args.to_vec();
    with_allow.push("--allow-unmapped");
    let out = cli(&with_allow);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(policy["kind"], "AuthPolicy");
    assert_eq!(
        policy["metadata"],
        json!({"name": "orders-api", "namespace": "shop"})
    );
    assert_eq!(
        policy["spec"]["selector"],
        json!({"matchLabels": {"app": "orders"}})
    );
    assert_eq!(
        policy["spec"]["issuer"],
        json!({"policyRef": {"name": "shop-auth", "namespace": "auth"}})
    );
    assert_eq!(policy["spec"]["defaultAction"], "Deny");
    let rules = rules_of(&policy);
    assert_eq!(rule_for(&rules, "GET", "/health")["public"], true);
    assert_eq!(
        rule_for(&rules, "GET", "/items/*")["require"],
        json!(["read:items"])
    );
    assert_eq!(
        rule_for(&rules, "GET", "/items")["require"],
        json!(["read:items"])
    );
    assert_eq!(
        rule_for(&rules, "POST", "/items")["require"],
        json!(["write:items"])
    );
    assert_eq!(
        rule_for(&rules, "DELETE", "/items/*")["require"],
        json!(["admin", "write:items"])
    );
    let me = rule_for(&rules, "GET", "/users/me");
    assert!(
        me.get("public").is_none() && me.get("require").is_none() && me.get("anyOf").is_none(),
        "{me}"
    );
    assert!(
        !rules.iter().any(|r| r["paths"][0] == "/legacy/report"),
        "an operation only the app can check gets no rule: {rules:#?}"
    );
    assert_eq!(
        rule_for(&rules, "GET", "/items/*")["name"],
        "read-item-items-item-id-get"
    );

    // The imported policy, rendered by the operator's build, decides as the app declared.
    let policy_path = dir.write("policy.yaml", &serde_yaml_ng::to_string(&policy).unwrap());
    let challenge = |s: &str| {
        Some(format!(
            "Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"{s}\""
        ))
    };
    let no_token = Some("Bearer realm=\"scopegate\"".to_owned());
    for (method, target, scopes, want) in [
        ("GET", "/health", None, (200, None)),
        ("GET", "/items/42", None, (401, no_token.clone())),
        ("GET", "/items/42", Some("read:items"), (200, None)),
        (
            "GET",
            "/items/42",
            Some("write:items"),
            (403, challenge("read:items")),
        ),
        ("GET", "/items", Some("read:items"), (200, None)),
        ("POST", "/items", Some("write:items"), (200, None)),
        (
            "POST",
            "/items",
            Some("read:items"),
            (403, challenge("write:items")),
        ),
        (
            "DELETE",
            "/items/7",
            Some("write:items"),
            (403, challenge("admin write:items")),
        ),
        ("DELETE", "/items/7", Some("write:items,admin"), (200, None)),
        ("GET", "/users/me", Some(""), (200, None)),
        ("GET", "/users/me", None, (401, no_token.clone())),
        ("GET", "/legacy/report", None, (401, no_token.clone())),
        (
            "GET",
            "/legacy/report",
            Some("admin"),
            (
                403,
                Some("Bearer realm=\"scopegate\", error=\"insufficient_scope\"".into()),
            ),
        ),
        // The attacker's spellings reach the protected rule, not the public one.
        ("GET", "/ITEMS/42/", None, (401, no_token.clone())),
        ("GET", "/health/../items/1", None, (401, no_token.clone())),
        (
            "GET",
            "/items/%2e%2e/users/me",
            None,
            (401, no_token.clone()),
        ),
        ("GET", "/health%2F..%2Fitems", None, (400, None)),
        ("HEAD", "/items/1", None, (401, no_token.clone())),
    ] {
        assert_eq!(
            decide(&policy_path, method, target, scopes),
            want,
            "{method} {target} {scopes:?}"
        );
    }
}

const HANDWRITTEN: &str = r#"
openapi: 3.1.0
info: {title: Reports, version: "2"}
security:
  - oauth: [reports:read]
components:
  securitySchemes:
    oauth:
      type: oauth2
      flows:
        clientCredentials:
          tokenUrl: https://auth.example/oauth2/token
          scopes: {reports:read: Read reports, reports:write: Write reports, admin: Everything}
    jwt: {type: http, scheme: bearer, bearerFormat: JWT}
    key: {type: apiKey, in: header, name: X-Key}
    mtls: {type: mutualTLS}
    basic: {type: http, scheme: basic}
paths:
  /reports:
    get: {responses: {"200": {description: ok}}}
    post:
      security: [{oauth: [reports:write]}, {oauth: [admin]}]
      responses: {"200": {description: ok}}
  /public/status:
    get:
      security: []
      responses: {"200": {description: ok}}
  /search:
    get:
      security: [{}, {oauth: [reports:read]}]
      responses: {"200": {description: ok}}
  /files/{name}.json:
    get: {responses: {"200": {description: ok}}}
  /keyed:
    get:
      security: [{oauth: [reports:read], key: []}]
      responses: {"200": {description: ok}}
  /bearer:
    get:
      security: [{jwt: []}]
      responses: {"200": {description: ok}}
  /mtls:
    get:
      security: [{mtls: []}, {basic: []}]
      responses: {"200": {description: ok}}
  /undeclared:
    get:
      security: [{nope: []}]
      responses: {"200": {description: ok}}
  /scoped/{id}:
    security: []
    get: {responses: {"200": {description: ok}}}
    put:
      security: [{oauth: [reports:write]}]
      responses: {"200": {description: ok}}
"#;

#[test]
fn a_handwritten_31_document_with_document_path_and_operation_security() {
    let dir = Dir::new("handwritten");
    let doc = dir.write("reports.yaml", HANDWRITTEN);
    let out = cli(&[
        "openapi",
        "import",
        doc.to_str().unwrap(),
        "--selector",
        "app=reports",
        "--self-url",
        "https://auth.reports.svc",
        "--self-service",
        "auth:443",
        "-o",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "two unmappable operations: {}",
        stderr(&out)
    );
    let notes = stderr(&out);
    for want in [
        "error: GET /mtls: only schemes scopegate cannot verify: \"mtls\" (type mutualTLS); \"basic\" (type http, scheme basic)",
        "error: GET /undeclared: only schemes scopegate cannot verify: \"nope\" (not declared in components.securitySchemes)",
        "warning: GET /keyed: needs a token and also \"key\" (type apiKey): scopegate verifies the token, the app must keep checking the rest",
        "warning: /files/{name}.json: a template inside a segment: /files/* matches any value of that whole segment",
        "warning: /scoped/{id}: a path item has no `security` field in OpenAPI; taken as the default of its operations",
    ] {
        assert!(notes.contains(want), "missing {want:?} in:\n{notes}");
    }
    let policy: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules = rules_of(&policy);
    // Document-level security is the default...
    assert_eq!(
        rule_for(&rules, "GET", "/reports")["require"],
        json!(["reports:read"])
    );
    assert_eq!(
        rule_for(&rules, "GET", "/files/*")["require"],
        json!(["reports:read"])
    );
    // ...that operations override: OR of alternatives, none, optional.
    assert_eq!(
        rule_for(&rules, "POST", "/reports")["anyOf"],
        json!([["admin"], ["reports:write"]])
    );
    assert_eq!(rule_for(&rules, "GET", "/public/status")["public"], true);
    assert_eq!(rule_for(&rules, "GET", "/search")["public"], true);
    assert_eq!(
        rule_for(&rules, "GET", "/keyed")["require"],
        json!(["reports:read"])
    );
    let bearer = rule_for(&rules, "GET", "/bearer");
    assert!(
        bearer.get("require").is_none() && bearer.get("public").is_none(),
        "any valid token: {bearer}"
    );
    // A path item's (non-standard) security is its operations' default; the operation's wins.
    assert_eq!(rule_for(&rules, "GET", "/scoped/*")["public"], true);
    assert_eq!(
        rule_for(&rules, "PUT", "/scoped/*")["require"],
        json!(["reports:write"])
    );
    assert!(
        !rules
            .iter()
            .any(|r| r["paths"][0] == "/mtls" || r["paths"][0] == "/undeclared")
    );
    // A self issuer takes the document's scopes as its vocabulary.
    assert_eq!(
        policy["spec"]["issuer"]["self"]["scopes"],
        json!({"admin": "Everything", "reports:read": "Read reports", "reports:write": "Write reports"})
    );
    assert_eq!(
        policy["spec"]["issuer"]["self"]["service"],
        json!({"name": "auth", "port": 443})
    );

    // Swagger 2.0 is refused with a reason, not half-read.
    let swagger = dir.write(
        "swagger.json",
        r#"{"swagger": "2.0", "info": {"title": "x", "version": "1"}, "paths": {}}"#,
    );
    let out = cli(&[
        "openapi",
        "import",
        swagger.to_str().unwrap(),
        "--selector",
        "a=b",
        "--issuer-ref",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("Swagger 2.0 documents are not supported"),
        "{}",
        stderr(&out)
    );
}

const ISSUER_POLICY: &str = r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  issuer:
    self:
      url: https://auth.shop.svc.cluster.local
      publicUrl: https://auth.shop.example
      service: {name: auth, port: 443}
      scopes: {read:items: Read items, write:items: Create and change items, admin: Administer the shop}
  upstream: {port: 8080}
  rules:
    - {name: health, methods: [GET], paths: [/health], public: true}
    - {name: read, methods: [GET], paths: [/items/**], require: [read:items]}
    - {name: write, methods: [POST, DELETE], paths: [/items/**], anyOf: [[write:items], [admin]]}
    - {name: me, paths: [/users/me]}
"#;

/// Validates a document with openapi-spec-validator; returns its complaint, if any.
fn validate(doc: &Path) -> Result<(), String> {
    let out = Command::new(venv_python())
        .args([
            "-c",
            "import sys, json\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')",
        ])
        .arg(doc)
        .output()
        .unwrap();
    if out.status.success() && stdout(&out).trim() == "valid" {
        Ok(())
    } else {
        Err(stderr(&out))
    }
}

#[test]
fn exported_security_validates_and_merges_into_the_apps_document() {
    let dir = Dir::new("export");
    let policy = dir.write("policy.yaml", ISSUER_POLICY);
    let out = cli(&["openapi", "export", "-f", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fragment: Value = serde_json::from_slice(&out.stdout).unwrap();
    let scheme = &fragment["components"]["securitySchemes"]["scopegate"];
    assert_eq!(scheme["type"], "oauth2");
    let code = &scheme["flows"]["authorizationCode"];
    assert_eq!(
        code["authorizationUrl"],
        "https://auth.shop.example/oauth2/authorize"
    );
    assert_eq!(code["tokenUrl"], "https://auth.shop.example/oauth2/token");
    assert_eq!(code["scopes"]["read:items"], "Read items");
    assert_eq!(
        scheme["flows"]["clientCredentials"]["tokenUrl"],
        "https://auth.shop.example/oauth2/token"
    );
    assert_eq!(fragment["paths"]["/health"]["get"]["security"], json!([]));
    assert_eq!(
        fragment["paths"]["/items"]["get"]["security"],
        json!([{"scopegate": ["read:items"]}])
    );
    assert_eq!(
        fragment["paths"]["/items"]["post"]["security"],
        json!([{"scopegate": ["write:items"]}, {"scopegate": ["admin"]}])
    );
    let fragment_path = dir.write("fragment.json", &fragment.to_string());
    validate(&fragment_path).unwrap();

    // Merged into the FastAPI app's own document.
    let app = dir.write("openapi.json", &fastapi_document().to_string());
    let out = cli(&[
        "openapi",
        "export",
        "-f",
        policy.to_str().unwrap(),
        "--merge",
        app.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let merged: Value = serde_json::from_slice(&out.stdout).unwrap();
    let op = |path: &str, method: &str| merged["paths"][path][method].clone();
    assert_eq!(op("/health", "get")["security"], json!([]));
    assert_eq!(
        op("/items/{item_id}", "get")["security"],
        json!([{"scopegate": ["read:items"]}])
    );
    assert_eq!(
        op("/items/{item_id}", "get")["x-scopegate"]["rule"],
        "\"read\" (rules[1])"
    );
    assert_eq!(
        op("/users/me", "get")["security"],
        json!([{"scopegate": []}])
    );
    assert_eq!(
        op("/legacy/report", "get")["x-scopegate"]["decision"],
        "deny"
    );
    assert!(op("/items", "post")["responses"]["403"]["description"].is_string());
    // The app's own schemes and everything else are kept.
    assert!(merged["components"]["securitySchemes"]["OAuth2AuthorizationCodeBearer"].is_object());
    assert!(merged["components"]["schemas"]["HTTPValidationError"].is_object());
    let merged_path = dir.write("merged.json", &merged.to_string());
    validate(&merged_path).unwrap();
    // The validator is not a rubber stamp: a broken scheme is refused.
    let mut broken = merged.clone();
    broken["components"]["securitySchemes"]["scopegate"]["flows"]["authorizationCode"]
        .as_object_mut()
        .unwrap()
        .remove("tokenUrl");
    let broken_path = dir.write("broken.json", &broken.to_string());
    assert!(
        validate(&broken_path).is_err(),
        "a flow without tokenUrl must not validate"
    );

    swagger_ui_shows_the_scopes(&dir, &merged);
}

/// Serves `dir` over HTTP on 127.0.0.1 (GET only) until the flag is set and one more
/// connection wakes the accept loop.
fn serve(
    dir: PathBuf,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let quit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = quit.clone();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if quit.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let Ok(mut stream) = stream else { return };
            let dir = dir.clone();
            // One thread per connection: a browser's idle preconnection must not hold the rest.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let file = dir.join(if path.is_empty() { "index.html" } else { &path });
                let (status, body) = match std::fs::read(&file) {
                    Ok(body) => ("200 OK", body),
                    Err(_) => ("404 Not Found", Vec::new()),
                };
                let kind = match file.extension().and_then(|e| e.to_str()) {
                    Some("html") => "text/html",
                    Some("js") => "application/javascript; charset=utf-8",
                    Some("css") => "text/css",
                    Some("json") => "application/json",
                    _ => "application/octet-stream",
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            });
        }
    });
    (addr, stop, handle)
}

/// Swagger UI (swagger-ui-dist, installed by scripts/setup.sh) loads the merged document in
/// headless Chromium; its own Authorize button opens the dialog, which must show both flows,
/// the issuer's authorization URL and every scope.
fn swagger_ui_shows_the_scopes(dir: &Dir, merged: &Value) {
    let dist = cache().join("swagger-ui/node_modules/swagger-ui-dist");
    assert!(
        dist.join("swagger-ui-bundle.js").exists(),
        "Swagger UI is missing ({}): run scripts/setup.sh",
        dist.display()
    );
    let site = dir.0.join("site");
    std::fs::create_dir_all(&site).unwrap();
    for file in ["swagger-ui-bundle.js", "swagger-ui.css"] {
        std::fs::copy(dist.join(file), site.join(file)).unwrap();
    }
    std::fs::write(site.join("openapi.json"), merged.to_string()).unwrap();
    std::fs::write(
        site.join("index.html"),
        r##"<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="/swagger-ui.css"></head><body>
<div id="ui"></div><script src="/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", onComplete: function () {
  document.querySelector(".btn.authorize").click();
}});
</script></body></html>"##,
    )
    .unwrap();
    let (addr, stop, server) = serve(site);
    let profile = Dir::new("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(format!("http://{addr}/"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("chromium runs (scripts/setup.sh installs Debian's chromium)");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::net::TcpStream::connect(addr);
    let _ = server.join();
    let dom = stdout(&out);
    let dialog = dom
        .find("auth-container")
        .map(|i| &dom[i..])
        .unwrap_or_else(|| {
            panic!(
                "no Authorize dialog in the page:\n{}",
                &dom[..dom.len().min(3000)]
            )
        });
    for want in [
        "authorizationCode",
        "clientCredentials",
        "https://auth.shop.example/oauth2/authorize",
        "read:items",
        "write:items",
        "admin",
        "Administer the shop",
    ] {
        assert!(dialog.contains(want), "the Authorize dialog lacks {want:?}");
    }
}
