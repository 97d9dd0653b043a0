//! A real browser logs in to a web app that has no auth code (examples/apps/storefront.py): the
//! app's AuthPolicy enables sessions with an OAuthClient that authenticates with the pod's
//! ServiceAccount, and the sidecar in front of the app does the rest (docs/sessions.md).
//!
//! Headless Chromium from Debian, driven by Selenium through Debian's chromedriver
//! (e2e/browser/session_flow.py) in a network namespace of its own on the pod network, reaches
//! the app and the issuer by name at their Services' port 443 and trusts them through its own
//! NSS database: the operator's CA for the issuer, the app's CA (made here, as
//! cert-manager would give the app its public certificate) for the app. It opens a protected
//! page, is sent to the issuer's login page, logs in as alice, sees her name on the page
//! (screenshot in the logs dir), posts a form of the app, outlives its first access token (a
//! 40-second TTL) through a silent refresh, logs out with the page's button, and is sent to
//! login again, also when it puts back the session cookie it had before logging out. The
//! sidecar's metrics then count that.

use std::net::SocketAddr;

use anyhow::ensure;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::http::request;
use scopegate_e2e::kubelet::{
    Images, PodNetwork, RunningPod, ServiceRoute, example_app, sidecar_image,
};
use scopegate_e2e::node_idp::TestTls;
use scopegate_e2e::ready::sidecar_ready;
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, config_map_text, eventually};
use serde_json::{Value, json};

/// The issuer's access tokens live this long.
const ACCESS_TOKEN_TTL_SECS: u64 = 40;
/// The clock skew web's verifier tolerates past a token's expiry (the rendered default). The
/// browser waits past the first token's expiry and this before loading the page again: a
/// session whose token was not refreshed would be refused then.
const VERIFIER_LEEWAY_SECS: u64 = 30;

fn web_client(n: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {{name: web}}
spec:
  issuerRef: {{name: auth}}
  grantTypes: [authorization_code, refresh_token]
  scopes: [read]
  defaultScopes: [read]
  audiences: [https://web.{n}.svc]
  redirectUris: [https://web.{n}.svc/.scopegate/callback]
  serviceAccounts: [web]
"#
    )
}

fn web_policy(n: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://web.{n}.svc]
  upstream: {{port: 8080}}
  listen: {{tlsSecret: web-tls}}
  rules:
    - {{paths: ["/", "/ready"], public: true}}
    - {{paths: ["/shop/**"], require: [read]}}
  sessions:
    clientRef: {{name: web}}
    redirectUri: https://web.{n}.svc/.scopegate/callback
    paths: ["/shop/**"]
    scopes: [read]
    afterLogout: /
"#
    )
}

fn pod(yaml: &str) -> Pod {
    serde_yaml_ng::from_str(yaml).expect("a pod")
}

async fn create(client: &Client, n: &str, pod: &Pod) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    eventually("the pod created with its sidecar", || async {
        Ok(pods.create(&PostParams::default(), pod).await?)
    })
    .await
    .expect("the pod is admitted")
}

/// The value of the sidecar metric line `name` (with its labels, as printed), 0 when absent.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

fn session_events(metrics: &str, event: &str) -> f64 {
    metric(
        metrics,
        &format!("scopegate_sidecar_sessions_total{{event=\"{event}\"}}"),
    )
}

/// The test venv's Python (scripts/setup.sh installs Selenium there).
fn venv_python() -> std::path::PathBuf {
    let home = std::env::var("HOME").expect("HOME is set");
    let cache =
        std::env::var("SCOPEGATE_CACHE").unwrap_or_else(|_| format!("{home}/.cache/scopegate"));
    let python = std::path::PathBuf::from(cache).join("venv/bin/python");
    assert!(
        python.exists(),
        "the test venv is missing ({}): run scripts/setup.sh (Selenium)",
        python.display()
    );
    python
}

#[tokio::test]
async fn a_browser_logs_in_refreshes_and_logs_out_through_the_sidecar() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "browser").await;
    let n = ns.name.as_str();
    let logs = logs_dir();
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "web"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();

    // The app's public certificate, from a CA of its own (as cert-manager would issue it).
    let web_host = format!("web.{n}.svc");
    let work = tempdir(&format!("browser-{n}"));
    let web_tls = TestTls::new(&work, "web", "web shop public CA", &[&web_host]).unwrap();
    let web_ca = work.join("web-ca.crt");
    std::fs::write(&web_ca, &web_tls.ca_pem).unwrap();
    let tls_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "web-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": std::fs::read_to_string(&web_tls.cert_file).unwrap(),
            "tls.key": std::fs::read_to_string(&web_tls.key_file).unwrap(),
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &tls_secret)
        .await
        .unwrap();

    let issuer_host = format!("auth.{n}.svc");
    let auth = scopegate_e2e::manifests::issuer(n, "auth")
        .with(&format!("loginUrl: https://{issuer_host}/login"))
        .with(&format!(
            "tokens: {{accessTokenTtl: {ACCESS_TOKEN_TTL_SECS}s}}"
        ))
        .with("mint: {subjects: [\"user:*\"], scopes: [read], maxTtl: 5m}")
        .spec(r#"rules: [{paths: ["/login"], public: true}]"#);
    apply_yaml::<AuthPolicy>(&client, n, &auth.yaml())
        .await
        .unwrap();
    apply_yaml::<OAuthClient>(&client, n, &web_client(n))
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(&client, n, &web_policy(n))
        .await
        .unwrap();
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), n);
    eventually("web's sessions rendered", || async {
        let status = serde_json::to_value(policies.get("web").await?.status)?;
        let conditions = status["conditions"].to_string();
        ensure!(!conditions.contains("SessionsRefused"), "{conditions}");
        let config = config_map_text(&client, n, "web-sidecar", "config.json")
            .await?
            .unwrap_or_default();
        ensure!(config.contains("\"sessions\""), "no sessions yet: {config}");
        Ok(())
    })
    .await
    .unwrap();
    let operator_ca = work.join("operator-ca.crt");
    let ca = config_map_text(&client, n, "scopegate-ca", "ca.crt")
        .await
        .unwrap()
        .expect("the operator's CA");
    std::fs::write(&operator_ca, ca).unwrap();

    let auth_pod = create(
        &client,
        n,
        &pod("metadata: {name: auth-0, labels: {app: auth}}\nspec:\n  containers:\n    - {name: app, image: example/auth, readinessProbe: {httpGet: {path: /ready, port: 8080}}}\n"),
    )
    .await;
    let web_pod = create(
        &client,
        n,
        &pod("metadata: {name: web-0, labels: {app: web}}\nspec:\n  serviceAccountName: web\n  containers:\n    - {name: app, image: example/storefront, readinessProbe: {httpGet: {path: /ready, port: 8080}}}\n"),
    )
    .await;

    // Not selected by any policy: no sidecar.
    let browser_pod = create(
        &client,
        n,
        &pod("metadata: {name: browser-0, labels: {app: browser}}\nspec:\n  containers:\n    - {name: browser, image: example/idle}\n"),
    )
    .await;
    let network = PodNetwork::create().expect("pod network (needs root)");
    let images = Images::from([
        sidecar_image().expect("the sidecar image"),
        example_app("example/auth", "auth.py"),
        example_app("example/storefront", "storefront.py"),
        (
            "example/idle".to_owned(),
            vec!["sleep".to_owned(), "infinity".to_owned()],
        ),
    ]);
    let auth_running = RunningPod::start(&client, &network, &auth_pod, &images, &[], &logs)
        .await
        .expect("auth runs");
    let auth_route = ServiceRoute {
        names: vec![issuer_host.clone(), format!("{issuer_host}.cluster.local")],
        cluster_ip: network.cluster_ip(),
        port: 443,
        endpoint: SocketAddr::from((auth_running.ip, 15080)),
    };
    let web_running = RunningPod::start(
        &client,
        &network,
        &web_pod,
        &images,
        std::slice::from_ref(&auth_route),
        &logs,
    )
    .await
    .expect("web runs");
    for running in [&auth_running, &web_running] {
        sidecar_ready(SocketAddr::from((running.ip, 15090)))
            .await
            .expect("the sidecar gets ready");
    }
    let web_admin = SocketAddr::from((web_running.ip, 15090));
    eventually("web's session keys loaded", || async move {
        let metrics = request(web_admin, "GET", "/metrics", &[], "")?.body;
        ensure!(
            metric(&metrics, "scopegate_sidecar_session_keys") >= 1.0,
            "no session key in force yet"
        );
        Ok(())
    })
    .await
    .unwrap();

    // The browser runs in a network namespace of its own on the pod network (a pod without a
    // sidecar): it reaches both Services' port 443 at their cluster IPs, as a browser in front
    // of the cluster's ingress would reach their hosts, and sees no other test's interfaces
    // come and go (Chromium drops its connections on a network change).
    let web_route = ServiceRoute {
        names: vec![web_host.clone()],
        cluster_ip: network.cluster_ip(),
        port: 443,
        endpoint: SocketAddr::from((web_running.ip, 15080)),
    };
    let browser_running = RunningPod::start(
        &client,
        &network,
        &browser_pod,
        &images,
        &[auth_route.clone(), web_route.clone()],
        &logs,
    )
    .await
    .expect("the browser's pod runs");
    let script = scopegate_e2e::repo_root().join("e2e/browser/session_flow.py");
    let output = browser_running
        .command_in_pod(&venv_python().display().to_string())
        .arg(&script)
        .args(["--app", &format!("https://{web_host}")])
        .args(["--issuer", &format!("https://{issuer_host}")])
        .arg("--host-rule")
        .arg(format!("MAP {web_host} {}", web_route.cluster_ip))
        .arg("--host-rule")
        .arg(format!("MAP {issuer_host} {}", auth_route.cluster_ip))
        .arg("--ca")
        .arg(&operator_ca)
        .arg("--ca")
        .arg(&web_ca)
        .arg("--logs")
        .arg(&logs)
        .arg("--work")
        .arg(&work)
        .args([
            "--user",
            "alice",
            "--password",
            "wonderland",
            "--name",
            "alice",
        ])
        .args([
            "--expire-wait",
            &(ACCESS_TOKEN_TTL_SECS + VERIFIER_LEEWAY_SECS + 2).to_string(),
        ])
        .output()
        .expect("the browser script runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser flow failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the flow's report");
    let steps: Vec<&str> = (report["steps"].as_array().unwrap().iter())
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "sent to login",
            "logged in",
            "added to cart",
            "after expiry",
            "logged out",
            "sent to login again",
            "kept cookie refused"
        ],
        "{report}"
    );
    let logged_in = &report["steps"][1];
    assert!(
        logged_in["text"]
            .as_str()
            .is_some_and(|t| t.contains("Signed in as alice")),
        "{logged_in}"
    );
    let screenshot = std::fs::read(report["screenshot"].as_str().unwrap()).unwrap();
    assert!(
        screenshot.starts_with(b"\x89PNG"),
        "the screenshot is no PNG"
    );

    // What the sidecar counted: one login, refreshes, one logout, and at least three redirects
    // to login (the first, after logout, and with the cookie kept from before logout).
    let metrics = request(web_admin, "GET", "/metrics", &[], "").unwrap().body;
    let count = |event| session_events(&metrics, event);
    assert_eq!(count("login_completed"), 1.0, "{metrics}");
    assert!(count("login_redirect") >= 3.0, "{metrics}");
    assert!(count("refreshed") >= 1.0, "{metrics}");
    assert_eq!(count("logout"), 1.0, "{metrics}");
    assert_eq!(count("login_failed"), 0.0, "{metrics}");
    assert_eq!(count("cross_site_refused"), 0.0, "{metrics}");

    drop((browser_running, web_running, auth_running));
    let _ = std::fs::remove_dir_all(&work);
    ns.delete().await.unwrap();
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("scopegate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}
