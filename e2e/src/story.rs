//! The whole story on the local control plane, shared by the e2e test that asserts it and the
//! demo that narrates it: an issuer service `auth`, a protected service `orders`, OAuth clients,
//! pods created through the API server (so injected) and run as a kubelet would, and a client
//! that gets tokens over TLS (trusting the operator's CA bundle) and calls `orders`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::http::{Response, request};
use crate::kubelet::{Images, PodNetwork, RunningPod};
use crate::{apply_yaml, config_map_text, eventually, repo_root, secret_text};

/// The running shop.
pub struct Shop {
    /// Its namespace.
    pub namespace: String,
    /// The issuer URL (`https://auth.<namespace>.svc`).
    pub issuer: String,
    /// The audience of `orders`.
    pub orders_audience: String,
    /// The billing client's id and secret (client_credentials).
    pub billing: (String, String),
    /// The storefront's client id (a public client, authorization code + PKCE).
    pub storefront: String,
    /// The CA bundle file clients trust.
    pub ca_file: PathBuf,
    /// The auth pod's address.
    pub auth_ip: Ipv4Addr,
    /// The orders sidecar's address.
    pub orders: SocketAddr,
    /// The orders sidecar's admin address.
    pub orders_admin: SocketAddr,
    client: Client,
    _pods: Vec<RunningPod>,
    _network: Arc<PodNetwork>,
}

fn images() -> anyhow::Result<Images> {
    let sidecar =
        std::env::var("E2E_SIDECAR_BIN").context("E2E_SIDECAR_BIN: the sidecar binary to run")?;
    let app = |name: &str| {
        repo_root()
            .join("examples/apps")
            .join(name)
            .display()
            .to_string()
    };
    Ok(Images::from([
        ("scopegate/sidecar:e2e".to_owned(), vec![sidecar]),
        (
            "example/orders".to_owned(),
            vec!["python3".to_owned(), app("orders.py")],
        ),
        (
            "example/auth".to_owned(),
            vec!["python3".to_owned(), app("auth.py")],
        ),
    ]))
}

fn policies(ns: &str) -> [String; 2] {
    [
        format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth}}
spec:
  selector: {{matchLabels: {{app: auth}}}}
  issuer:
    self:
      url: https://auth.{ns}.svc
      service: {{name: auth, port: 443}}
      rotationPeriod: 1h
      propagation: 6s
      tokens: {{accessTokenTtl: 5m, leeway: 5s}}
      scopes: {{"read:orders": "See orders", "write:orders": "Place orders"}}
      loginUrl: https://auth.{ns}.svc/login
  listen: {{port: 443}}
  upstream: {{port: 8080}}
  rules:
    - {{name: login, paths: ["/login", "/healthz"], public: true}}
  rateLimits:
    - {{name: login, methods: [POST], paths: ["/login"], requests: 5, period: 15m}}
"#
        ),
        format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://orders.{ns}.svc]
  upstream: {{port: 8080}}
  rules:
    - {{name: health, paths: ["/healthz"], public: true}}
    - {{name: list, methods: [GET], paths: ["/orders", "/orders/*"], require: ["read:orders"]}}
    - {{name: place, methods: [POST], paths: ["/orders"], require: ["write:orders"]}}
  rateLimits:
    - {{name: place, methods: [POST], paths: ["/orders"], requests: 3, period: 1m}}
"#
        ),
    ]
}

fn clients(ns: &str) -> [String; 2] {
    [
        format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {{name: billing}}
spec:
  issuerRef: {{name: auth}}
  grantTypes: [client_credentials]
  scopes: ["read:orders", "write:orders"]
  defaultScopes: ["read:orders"]
  audiences: [https://orders.{ns}.svc]
  secretName: billing-credentials
"#
        ),
        format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: OAuthClient
metadata: {{name: storefront}}
spec:
  issuerRef: {{name: auth}}
  public: true
  grantTypes: [authorization_code, refresh_token]
  scopes: ["read:orders"]
  defaultScopes: ["read:orders"]
  audiences: [https://orders.{ns}.svc]
  redirectUris: [http://127.0.0.1/callback]
"#
        ),
    ]
}

fn pod(name: &str, app: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_yaml_ng::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  containers:\n    - name: app\n      image: {image}\n      readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}\n"
    ))?)
}

impl Shop {
    /// Sets the shop up in a fresh, injection-enabled namespace and runs its pods.
    pub async fn start(
        client: &Client,
        namespace: &str,
        logs: &std::path::Path,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Self> {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"scopegate.dev/injection": "enabled"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .patch(
                namespace,
                &PatchParams::apply(crate::FIELD_MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await?;
        for yaml in policies(namespace) {
            apply_yaml::<AuthPolicy>(client, namespace, &yaml).await?;
        }
        for yaml in clients(namespace) {
            apply_yaml::<OAuthClient>(client, namespace, &yaml).await?;
        }
        progress(
            "applied AuthPolicies auth (the issuer) and orders (policyRef auth), OAuthClients billing and storefront",
        );
        let billing_secret = eventually("the billing client's credentials", || async {
            secret_text(client, namespace, "billing-credentials", "client_secret")
                .await?
                .context("no secret yet")
        })
        .await?;
        eventually("the issuer registry and the orders config", || async {
            let registry = secret_text(client, namespace, "auth-clients", "clients.json")
                .await?
                .context("no registry")?;
            ensure!(
                registry.contains(&format!("{namespace}.billing"))
                    && registry.contains(&format!("{namespace}.storefront")),
                "clients not registered yet"
            );
            let config = config_map_text(client, namespace, "orders-sidecar", "config.json")
                .await?
                .context("no config")?;
            ensure!(config.contains("\"kid\""), "orders trusts no key yet");
            Ok(())
        })
        .await?;
        let ca = config_map_text(client, namespace, "scopegate-ca", "ca.crt")
            .await?
            .context("no scopegate-ca")?;
        let ca_file = logs.join(format!("{namespace}-ca.crt"));
        std::fs::write(&ca_file, ca)?;
        progress(
            "the operator rendered signing keys, the JWKS, a serving certificate, the client registry and both sidecar configs",
        );

        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let auth = pods
            .create(
                &PostParams::default(),
                &pod("auth-0", "auth", "example/auth")?,
            )
            .await?;
        let orders = pods
            .create(
                &PostParams::default(),
                &pod("orders-0", "orders", "example/orders")?,
            )
            .await?;
        for created in [&auth, &orders] {
            let injected = created
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.name == "scopegate-sidecar"));
            ensure!(
                injected,
                "pod {} came back without the sidecar",
                created.metadata.name.as_deref().unwrap_or_default()
            );
        }
        progress("created pods auth-0 and orders-0: the webhook injected the sidecar into both");

        let network = PodNetwork::create()?;
        let images = images()?;
        let auth_pod = RunningPod::start(client, &network, &auth, &images, &[], logs).await?;
        let auth_ip = auth_pod.ip;
        // Service names resolve to the pod, as the Service's endpoints would.
        let auth_names = vec![
            format!("auth.{namespace}.svc"),
            format!("auth.{namespace}.svc.cluster.local"),
            format!("auth.{namespace}"),
        ];
        let orders_pod = RunningPod::start(
            client,
            &network,
            &orders,
            &images,
            &[(auth_ip, auth_names)],
            logs,
        )
        .await?;
        let shop = Self {
            namespace: namespace.to_owned(),
            issuer: format!("https://auth.{namespace}.svc"),
            orders_audience: format!("https://orders.{namespace}.svc"),
            billing: (format!("{namespace}.billing"), billing_secret),
            storefront: format!("{namespace}.storefront"),
            ca_file,
            auth_ip,
            orders: SocketAddr::from((orders_pod.ip, 15080)),
            orders_admin: SocketAddr::from((orders_pod.ip, 15090)),
            client: client.clone(),
            _pods: vec![auth_pod, orders_pod],
            _network: network,
        };
        let admins = [SocketAddr::from((auth_ip, 15090)), shop.orders_admin];
        eventually("both sidecars and apps ready", || async {
            for admin in admins {
                let ready = request(admin, "GET", "/readyz", &[], "")?;
                ensure!(
                    ready.status == 200,
                    "{admin} readyz {}: {}",
                    ready.status,
                    ready.body
                );
                let app = request(admin, "GET", "/app-health/app/readiness", &[], "")?;
                ensure!(app.status == 200, "{admin} app not ready: {}", app.status);
            }
            Ok(())
        })
        .await?;
        progress(
            "ran both pods as a kubelet would (own network and mount namespaces, mounted ConfigMaps and Secrets): sidecars and apps ready",
        );
        Ok(shop)
    }

    /// Calls the issuer over TLS, trusting only the operator's CA, by its Service name.
    pub fn issuer_call(
        &self,
        method: &str,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> anyhow::Result<Response> {
        let host = format!("auth.{}.svc", self.namespace);
        let mut command = Command::new("curl");
        command
            .args([
                "-sS",
                "-D",
                "-",
                "-o",
                "-",
                "--max-time",
                "10",
                "-X",
                method,
            ])
            .arg("--resolve")
            .arg(format!("{host}:443:{}", self.auth_ip))
            .arg("--cacert")
            .arg(&self.ca_file);
        for (name, value) in form {
            command
                .arg("--data-urlencode")
                .arg(format!("{name}={value}"));
        }
        if let Some((user, password)) = basic {
            command
                .arg("-u")
                .arg(format!("{}:{}", form_encode(user), form_encode(password)));
        }
        command.arg(format!("https://{host}{path}"));
        let output = command.output()?;
        ensure!(
            output.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        parse_curl(&String::from_utf8_lossy(&output.stdout))
    }

    /// A client_credentials token for the billing client.
    pub fn billing_token(&self, scope: &str) -> anyhow::Result<String> {
        let (id, secret) = (&self.billing.0, &self.billing.1);
        let response = self.issuer_call(
            "POST",
            "/oauth2/token",
            &[("grant_type", "client_credentials"), ("scope", scope)],
            Some((id, secret)),
        )?;
        ensure!(
            response.status == 200,
            "token endpoint answered {}: {}",
            response.status,
            response.body
        );
        let body: serde_json::Value = serde_json::from_str(&response.body)?;
        Ok(body["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned())
    }

    /// The browser flow of the public storefront client: authorize, log in as `user` on the
    /// app's own login page (which accepts the challenge on the mint socket), redeem the code
    /// with PKCE. Returns the token response.
    pub fn login(&self, user: &str, password: &str) -> anyhow::Result<serde_json::Value> {
        let mut verifier_bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut verifier_bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let verifier = URL_SAFE_NO_PAD.encode(verifier_bytes);
        let challenge = URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
        );
        let state = "st8-42";
        let query = format!(
            "/oauth2/authorize?response_type=code&client_id={}&redirect_uri={}&scope=read%3Aorders&state={state}&code_challenge={challenge}&code_challenge_method=S256",
            self.storefront,
            form_encode("http://127.0.0.1/callback"),
        );
        let authorize = self.issuer_call("GET", &query, &[], None)?;
        ensure!(
            matches!(authorize.status, 302 | 303),
            "authorize answered {}: {}",
            authorize.status,
            authorize.body
        );
        let login_url = authorize
            .header("location")
            .context("no redirect to the login page")?
            .to_owned();
        let login_challenge = login_url
            .split("login_challenge=")
            .nth(1)
            .context("no login_challenge")?
            .split('&')
            .next()
            .unwrap_or_default()
            .to_owned();
        let page = self.issuer_call(
            "GET",
            &format!("/login?login_challenge={login_challenge}"),
            &[],
            None,
        )?;
        ensure!(page.status == 200, "login page answered {}", page.status);
        let submitted = self.issuer_call(
            "POST",
            "/login",
            &[
                ("login_challenge", &urldecode(&login_challenge)),
                ("username", user),
                ("password", password),
            ],
            None,
        )?;
        ensure!(
            submitted.status == 303,
            "login answered {}: {}",
            submitted.status,
            submitted.body
        );
        // The app sends the browser back to the issuer, which mints the code.
        let resume = submitted
            .header("location")
            .context("no redirect to the issuer")?
            .to_owned();
        let resume_path = resume
            .strip_prefix(self.issuer.as_str())
            .with_context(|| format!("the app redirected off the issuer: {resume}"))?;
        let resumed = self.issuer_call("GET", resume_path, &[], None)?;
        ensure!(
            matches!(resumed.status, 302 | 303),
            "resume answered {}: {}",
            resumed.status,
            resumed.body
        );
        let back = resumed
            .header("location")
            .context("no redirect back to the client")?
            .to_owned();
        ensure!(
            back.starts_with("http://127.0.0.1/callback?"),
            "redirected to {back}"
        );
        let params: std::collections::BTreeMap<String, String> = back
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), urldecode(v)))
            .collect();
        ensure!(
            params.get("state").map(String::as_str) == Some(state),
            "state changed: {params:?}"
        );
        ensure!(
            params.get("iss").map(String::as_str) == Some(self.issuer.as_str()),
            "iss missing or wrong: {params:?}"
        );
        let code = params.get("code").context("no code")?;
        let token = self.issuer_call(
            "POST",
            "/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", "http://127.0.0.1/callback"),
                ("client_id", &self.storefront),
                ("code_verifier", &verifier),
            ],
            None,
        )?;
        ensure!(
            token.status == 200,
            "code redemption answered {}: {}",
            token.status,
            token.body
        );
        Ok(serde_json::from_str(&token.body)?)
    }

    /// Calls `orders` through its sidecar.
    pub fn orders(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Response> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        request(
            self.orders,
            method,
            path,
            &headers,
            if method == "POST" { "{}" } else { "" },
        )
    }

    /// Asks for a manual key rotation of the issuer.
    pub async fn rotate(&self, value: &str) -> anyhow::Result<()> {
        let patch =
            serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate": value}}});
        Api::<AuthPolicy>::namespaced(self.client.clone(), &self.namespace)
            .patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// The issuer's active key id, from its status.
    pub async fn active_kid(&self) -> anyhow::Result<String> {
        let policy = Api::<AuthPolicy>::namespaced(self.client.clone(), &self.namespace)
            .get("auth")
            .await?;
        policy
            .status
            .and_then(|s| s.active_kid)
            .context("no active key")
    }

    /// Revokes a token at the issuer (RFC 7009) as the billing client.
    pub fn revoke(&self, token: &str) -> anyhow::Result<()> {
        let (id, secret) = (&self.billing.0, &self.billing.1);
        let response = self.issuer_call(
            "POST",
            "/oauth2/revoke",
            &[("token", token)],
            Some((id, secret)),
        )?;
        if response.status != 200 {
            bail!("revocation answered {}: {}", response.status, response.body);
        }
        Ok(())
    }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn urldecode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_curl(text: &str) -> anyhow::Result<Response> {
    // curl -D - prints the headers of every response (only one here), then the body.
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line from curl")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}
