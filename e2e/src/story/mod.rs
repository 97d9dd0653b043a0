//! The whole story on the local control plane, shared by the e2e test that asserts it and the
//! `demo` binary (`make up`) that narrates it: the manifests of `examples/` applied as they are
//! (in another namespace for the test), pods for the issuer `auth` and the protected `orders`
//! created through the API server (so the webhook injects them) and run as a kubelet would, and
//! clients that get tokens over TLS (trusting only the operator's CA bundle) and call `orders`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::google::{self, GoogleStandIn};
use crate::http::{Response, request};
use crate::kubelet::{Images, PodNetwork, RunningPod, ServiceRoute};
use crate::{FIELD_MANAGER, config_map_text, eventually, repo_root, secret_text};

/// The issuer's `propagation` in the story. The examples say 5m, longer than any verifier
/// takes to see a new JWKS in a cluster; the story shortens it so that two rotations fit in a
/// minute (the local pods see ConfigMap changes within a second).
pub const STORY_PROPAGATION: &str = "6s";

/// The storefront's `state` in every login of the story.
const STATE: &str = "st8-42";

/// The running shop.
pub struct Shop {
    /// Its namespace.
    pub namespace: String,
    /// The issuer URL, from the `auth` AuthPolicy.
    pub issuer: String,
    /// The issuer's host name (its Service's DNS name).
    issuer_host: String,
    /// The audience of `orders`.
    pub orders_audience: String,
    /// How many orders one subject may place per period, from the `orders` AuthPolicy.
    pub order_limit: u32,
    /// The billing client's id and secret (client_credentials).
    pub billing: (String, String),
    /// The storefront's client id (a public client, authorization code + PKCE).
    pub storefront: String,
    /// The storefront's loopback redirect URI.
    redirect_uri: String,
    /// The CA bundle file clients trust.
    pub ca_file: PathBuf,
    /// The auth pod's address.
    pub auth_ip: Ipv4Addr,
    /// The auth sidecar's TLS listener port (the target of the Service's port 443).
    auth_port: u16,
    /// The orders sidecar's address.
    pub orders: SocketAddr,
    /// The orders sidecar's admin address.
    pub orders_admin: SocketAddr,
    /// The Google stand-in (an upstream identity provider the story adds).
    google: GoogleStandIn,
    /// What the story's browser trusts: the operator's CA and the stand-in's.
    browser_ca_file: PathBuf,
    /// The story's browser's cookies.
    cookie_jar: PathBuf,
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

/// Every AuthPolicy and OAuthClient of `examples/`, moved to `namespace` (Service names in
/// URLs included), in file order.
fn examples(namespace: &str) -> anyhow::Result<Vec<Value>> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut objects = Vec::new();
    for path in files {
        let text =
            std::fs::read_to_string(&path)?.replace(".shop.svc", &format!(".{namespace}.svc"));
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut object = Value::deserialize(document)
                .with_context(|| format!("{} does not parse", path.display()))?;
            match object["kind"].as_str() {
                Some("AuthPolicy" | "OAuthClient") => {
                    object["metadata"]["namespace"] = json!(namespace);
                    objects.push(object);
                }
                Some("Namespace") | None => {}
                Some(other) => bail!("{}: the story does not apply a {other}", path.display()),
            }
        }
    }
    Ok(objects)
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("examples/ has no {kind} {name}"))
}

fn text(value: &Value, what: &str) -> anyhow::Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("examples/: {what} missing"))
}

async fn apply(client: &Client, namespace: &str, object: &Value) -> anyhow::Result<()> {
    let name = text(&object["metadata"]["name"], "metadata.name")?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match object["kind"].as_str() {
        Some("AuthPolicy") => {
            let typed: AuthPolicy = serde_json::from_value(object.clone())?;
            Api::<AuthPolicy>::namespaced(client.clone(), namespace)
                .patch(&name, &params, &Patch::Apply(&typed))
                .await?;
        }
        _ => {
            let typed: OAuthClient = serde_json::from_value(object.clone())?;
            Api::<OAuthClient>::namespaced(client.clone(), namespace)
                .patch(&name, &params, &Patch::Apply(&typed))
                .await?;
        }
    }
    Ok(())
}

fn pod(name: &str, app: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_yaml_ng::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  containers:\n    - name: app\n      image: {image}\n      readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}\n"
    ))?)
}

impl Shop {
    /// Applies `examples/` to `namespace` (created, injection enabled), waits for what the
    /// operator renders, and runs the `auth` and `orders` pods.
    pub async fn start(
        client: &Client,
        namespace: &str,
        logs: &std::path::Path,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Self> {
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"scopegate.dev/injection": "enabled"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .patch(
                namespace,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await?;
        let mut objects = examples(namespace)?;
        let propagation = objects
            .iter_mut()
            .find(|o| o["kind"] == "AuthPolicy" && o["metadata"]["name"] == "auth")
            .context("examples/ has no AuthPolicy auth")?
            .pointer_mut("/spec/issuer/self/propagation")
            .context("the auth issuer has no propagation")?;
        let examples_propagation = propagation.as_str().unwrap_or_default().to_owned();
        *propagation = json!(STORY_PROPAGATION);
        for object in &objects {
            apply(client, namespace, object).await?;
        }
        let kinds: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        progress(&format!(
            "applied examples/ to namespace {namespace}: {} (the issuer's propagation shortened from {examples_propagation} to {STORY_PROPAGATION} so that rotations fit in the story)",
            kinds.join(", ")
        ));

        let auth = named(&objects, "AuthPolicy", "auth")?;
        let issuer = text(&auth["spec"]["issuer"]["self"]["url"], "auth issuer url")?;
        let issuer_host = issuer
            .strip_prefix("https://")
            .and_then(|rest| rest.split(['/', ':']).next())
            .context("the issuer URL is not https://host")?
            .to_owned();
        let auth_port = auth["spec"]["listen"]["port"].as_u64().unwrap_or(15080);
        let orders_policy = named(&objects, "AuthPolicy", "orders")?;
        let orders_audience = text(&orders_policy["spec"]["audiences"][0], "orders audience")?;
        let orders_port = orders_policy["spec"]["listen"]["port"]
            .as_u64()
            .unwrap_or(15080);
        let order_limit = orders_policy["spec"]["rateLimits"]
            .as_array()
            .and_then(|limits| limits.iter().find(|l| l["name"] == "place-order"))
            .and_then(|l| l["requests"].as_u64())
            .context("examples/: orders has no place-order rate limit")?;
        let billing_secret_name = text(
            &named(&objects, "OAuthClient", "billing")?["spec"]["secretName"],
            "billing secretName",
        )?;
        let redirect_uri = named(&objects, "OAuthClient", "storefront")?["spec"]["redirectUris"]
            .as_array()
            .and_then(|uris| {
                uris.iter()
                    .filter_map(Value::as_str)
                    .find(|u| u.starts_with("http://127.0.0.1"))
            })
            .context("examples/: the storefront has no loopback redirect URI")?
            .to_owned();

        let billing_secret = eventually("the billing client's credentials", || async {
            secret_text(client, namespace, &billing_secret_name, "client_secret")
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
            "the operator wrote signing keys, the JWKS, the issuer's TLS certificate, the client registry, the billing client's secret and both sidecar configs",
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
        progress(
            "created pods auth-0 and orders-0 (one app container each): the webhook added the scopegate sidecar to both",
        );

        let network =
            PodNetwork::create().context("running pods needs network namespaces (run as root)")?;
        let images = images()?;
        // Google, as the issuer pod reaches it: a name in its /etc/hosts and port 443.
        let google_dir = logs.join(format!("{namespace}-google"));
        std::fs::create_dir_all(&google_dir)?;
        let google = GoogleStandIn::start(
            network.gateway(),
            &format!("{issuer}/oauth2/upstream/google/callback"),
            &google_dir,
        )?;
        let google_route = ServiceRoute {
            names: vec![google::HOST.to_owned()],
            cluster_ip: network.cluster_ip(),
            port: 443,
            endpoint: google.address,
        };
        let browser_ca_file = google_dir.join("browser-ca.crt");
        std::fs::write(
            &browser_ca_file,
            format!("{}{}", std::fs::read_to_string(&ca_file)?, google.ca_pem),
        )?;
        let cookie_jar = google_dir.join("cookies.txt");
        std::fs::write(&cookie_jar, "")?;
        let auth_pod =
            RunningPod::start(client, &network, &auth, &images, &[google_route], logs).await?;
        let auth_ip = auth_pod.ip;
        // The Service `auth`: its port 443 leads to the issuer sidecar's TLS listener.
        let auth_port = u16::try_from(auth_port)?;
        let mut auth_names = vec![
            format!("auth.{namespace}.svc"),
            format!("auth.{namespace}.svc.cluster.local"),
            format!("auth.{namespace}"),
        ];
        if !auth_names.contains(&issuer_host) {
            auth_names.push(issuer_host.clone());
        }
        let auth_service = ServiceRoute {
            names: auth_names,
            cluster_ip: network.cluster_ip(),
            port: 443,
            endpoint: SocketAddr::from((auth_ip, auth_port)),
        };
        let orders_pod =
            RunningPod::start(client, &network, &orders, &images, &[auth_service], logs).await?;
        let shop = Self {
            namespace: namespace.to_owned(),
            issuer,
            issuer_host,
            orders_audience,
            order_limit: u32::try_from(order_limit)?,
            billing: (format!("{namespace}.billing"), billing_secret),
            storefront: format!("{namespace}.storefront"),
            redirect_uri,
            ca_file,
            auth_ip,
            auth_port,
            orders: SocketAddr::from((orders_pod.ip, u16::try_from(orders_port)?)),
            orders_admin: SocketAddr::from((orders_pod.ip, 15090)),
            google,
            browser_ca_file,
            cookie_jar,
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
            "ran both pods as a kubelet would (own network and mount namespaces, the mounted ConfigMaps and Secrets): sidecars and apps ready",
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
        let url = format!("https://{}{path}", self.issuer_host);
        self.curl(method, &url, form, basic, false)
    }

    /// A browser's request: cookies kept, the operator's CA and the Google stand-in's trusted,
    /// the issuer and the stand-in reached by name.
    fn browse(&self, method: &str, url: &str, form: &[(&str, &str)]) -> anyhow::Result<Response> {
        self.curl(method, url, form, None, true)
    }

    fn curl(
        &self,
        method: &str,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        browser: bool,
    ) -> anyhow::Result<Response> {
        let host = &self.issuer_host;
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
            // The Service's port 443 leads to the sidecar's listener, as kube-proxy's rule would.
            .arg("--connect-to")
            .arg(format!("{host}:443:{}:{}", self.auth_ip, self.auth_port));
        if browser {
            command
                .arg("--connect-to")
                .arg(format!(
                    "{}:443:{}:{}",
                    google::HOST,
                    self.google.address.ip(),
                    self.google.address.port()
                ))
                .arg("--cacert")
                .arg(&self.browser_ca_file)
                .arg("-b")
                .arg(&self.cookie_jar)
                .arg("-c")
                .arg(&self.cookie_jar);
        } else {
            command.arg("--cacert").arg(&self.ca_file);
        }
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
        command.arg(url);
        let output = command.output()?;
        ensure!(
            output.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        parse_curl(&String::from_utf8_lossy(&output.stdout))
    }

    /// A client_credentials token for the billing client (its default scopes when `scope` is
    /// None).
    pub fn billing_token(&self, scope: Option<&str>) -> anyhow::Result<String> {
        let (id, secret) = (&self.billing.0, &self.billing.1);
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(scope.map(|scope| ("scope", scope)));
        let response = self.issuer_call("POST", "/oauth2/token", &form, Some((id, secret)))?;
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
    /// with PKCE, asking for `scope`. Returns the token response.
    pub fn login(&self, user: &str, password: &str, scope: &str) -> anyhow::Result<Value> {
        let (verifier, query) = self.authorize_query(scope, Some("local"));
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
        ensure!(
            login_url.starts_with(&format!("{}/login?", self.issuer)),
            "authorize sent the browser to {login_url}, not to the app's login page"
        );
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
        self.redeem(&back, &verifier)
    }

    /// What an admin does to offer "Continue with Google" on the running issuer: the client
    /// secret Google issued goes into a Secret, the upstream into the AuthPolicy (with the
    /// stand-in's CA as its `caBundle`; real Google needs none). Waits until status reports
    /// the callback URL to register and the issuer pod has read Google's discovery and keys.
    /// Returns the callback URL from status.
    pub async fn add_google(&self) -> anyhow::Result<String> {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "google-oauth", "namespace": self.namespace},
            "stringData": {"client_secret": self.google.client_secret},
        }))?;
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), &self.namespace)
            .patch(
                "google-oauth",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        let patch = json!({"spec": {"issuer": {"self": {"upstreams": [{
            "name": "google",
            "displayName": "Google",
            "clientId": google::CLIENT_ID,
            "clientSecretRef": {"name": "google-oauth", "key": "client_secret"},
            "caBundle": self.google.ca_pem,
            "oidc": {"issuer": self.google.issuer},
        }]}}}});
        let policies = Api::<AuthPolicy>::namespaced(self.client.clone(), &self.namespace);
        policies
            .patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let callback = eventually("status.upstreams reporting google ready", || {
            let policies = policies.clone();
            async move {
                let status = policies.get("auth").await?.status.context("no status")?;
                let google = status
                    .upstreams
                    .iter()
                    .find(|u| u.name == "google")
                    .context("google not in status yet")?;
                ensure!(google.ready, "google not ready: {:?}", google.reason);
                Ok(google.callback_url.clone())
            }
        })
        .await?;
        let admin = SocketAddr::from((self.auth_ip, 15090));
        eventually(
            "the issuer pod loading Google's discovery and keys",
            || async move {
                let ready = request(admin, "GET", "/readyz", &[], "")?;
                ensure!(
                    ready.body.contains("upstream google: oidc")
                        && ready.body.contains("keys, fetched"),
                    "readyz: {}",
                    ready.body
                );
                Ok(())
            },
        )
        .await?;
        Ok(callback)
    }

    /// A browser signs in to the storefront with Google: authorize shows the chooser, the
    /// browser follows "Continue with Google", logs in as `login` on the stand-in's own login
    /// and consent pages, comes back to the issuer's callback, passes through the app (which
    /// links the Google identity to one of its users on the mint socket) and ends at the
    /// storefront's redirect URI with a code, redeemed with PKCE. Returns the chooser's choices
    /// and the token response.
    pub fn google_login(&self, login: &str, scope: &str) -> anyhow::Result<(Vec<String>, Value)> {
        let (verifier, query) = self.authorize_query(scope, None);
        let base = self.issuer.clone();
        let chooser = self.browse("GET", &format!("{base}{query}"), &[])?;
        ensure!(
            chooser.status == 200,
            "authorize answered {} instead of the chooser: {}",
            chooser.status,
            chooser.body
        );
        let choices: Vec<String> = chooser
            .body
            .split("class=\"choice\"")
            .skip(1)
            .filter_map(|item| item.split_once('>').map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once('<').map(|(label, _)| label.to_owned()))
            .collect();
        let href = chooser
            .body
            .split("href=\"")
            .find(|h| h.starts_with("upstream/google/start?"))
            .and_then(|h| h.split('"').next())
            .context("no Google choice on the chooser page")?;
        let mut url = format!("{base}/oauth2/{}", href.replace("&amp;", "&"));
        let mut method = "GET";
        let mut form: Vec<(&str, &str)> = Vec::new();
        let login_form = [("prompt", "login"), ("login", login), ("password", "any")];
        let consent_form = [("prompt", "consent")];
        for _ in 0..16 {
            let response = self.browse(method, &url, &form)?;
            if let Some(location) = response.header("location") {
                let next = if location.starts_with("https://") || location.starts_with("http://") {
                    location.to_owned()
                } else {
                    let origin: String = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
                    format!("{origin}{location}")
                };
                if next.starts_with(&self.redirect_uri) {
                    let token = self.redeem(&next, &verifier)?;
                    return Ok((choices, token));
                }
                (url, method, form) = (next, "GET", Vec::new());
                continue;
            }
            ensure!(
                response.status == 200 && url.starts_with(&self.google.issuer),
                "{method} {url} answered {}: {}",
                response.status,
                response.body
            );
            // Google's own pages: the login form, then the consent form.
            form = if response.body.contains("name=\"login\"") {
                login_form.to_vec()
            } else {
                consent_form.to_vec()
            };
            method = "POST";
        }
        bail!("the Google login did not come back to the storefront")
    }

    /// A PKCE verifier and the storefront's authorize request for `scope`, with an
    /// `upstream=` hint when given.
    fn authorize_query(&self, scope: &str, upstream: Option<&str>) -> (String, String) {
        let mut verifier_bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut verifier_bytes).unwrap_or_default();
        let verifier = URL_SAFE_NO_PAD.encode(verifier_bytes);
        let challenge = URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
        );
        let hint = upstream
            .map(|u| format!("&upstream={u}"))
            .unwrap_or_default();
        let query = format!(
            "/oauth2/authorize?response_type=code&client_id={}&redirect_uri={}&scope={}&state={STATE}&code_challenge={challenge}&code_challenge_method=S256{hint}",
            self.storefront,
            form_encode(&self.redirect_uri),
            form_encode(scope),
        );
        (verifier, query)
    }

    /// Checks the redirect `back` to the storefront (its state, the issuer's `iss`) and
    /// redeems its code with `verifier`. Returns the token response.
    fn redeem(&self, back: &str, verifier: &str) -> anyhow::Result<Value> {
        let state = STATE;
        ensure!(
            back.starts_with(&format!("{}?", self.redirect_uri)),
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
                ("redirect_uri", &self.redirect_uri),
                ("client_id", &self.storefront),
                ("code_verifier", verifier),
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

/// What the story measured, for the test's own assertions.
#[derive(Debug)]
pub struct Outcome {
    /// The issuer's key ids: before, after one and after two rotations.
    pub kids: Vec<String>,
    /// Valid requests accepted while the keys rotated (none may be rejected).
    pub accepted_during_rotation: u32,
    /// From the revocation at the issuer to the first refusal at `orders`.
    pub revocation_took: Duration,
}

/// The claims and header of a JWT, without checking anything (for narration).
fn peek(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let mut part = || -> anyhow::Result<Value> {
        let text = parts.next().context("not a JWS")?;
        Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text)?)?)
    };
    Ok((part()?, part()?))
}

fn describe(token: &str) -> anyhow::Result<String> {
    let (header, claims) = peek(token)?;
    let ttl =
        claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default();
    Ok(format!(
        "{}, kid {}, sub {}, scope \"{}\", aud {}, valid {}m",
        header["alg"].as_str().unwrap_or("?"),
        short(header["kid"].as_str().unwrap_or("?")),
        claims["sub"].as_str().unwrap_or("?"),
        claims["scope"].as_str().unwrap_or(""),
        claims["aud"],
        ttl / 60
    ))
}

fn short(kid: &str) -> String {
    format!("{}…", kid.chars().take(8).collect::<String>())
}

fn challenge_of(response: &Response) -> String {
    response
        .header("www-authenticate")
        .unwrap_or("(none)")
        .to_owned()
}

/// Plays the story on a running shop, saying each step as one line; any answer other than the
/// policy's is an error.
pub async fn play(shop: Arc<Shop>, say: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    // 1. A service gets a token and calls orders.
    let read = shop.billing_token(None)?;
    let audience = &peek(&read)?.1["aud"];
    ensure!(
        audience == shop.orders_audience.as_str()
            || audience
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == shop.orders_audience.as_str())),
        "the token's audience is {audience}, not {}",
        shop.orders_audience
    );
    say(&format!(
        "billing asks the issuer for a token (client_credentials, over TLS): {}",
        describe(&read)?
    ));
    let allowed = shop.orders("GET", "/orders", Some(&read))?;
    ensure!(
        allowed.status == 200,
        "GET /orders with read:orders answered {}",
        allowed.status
    );
    let caller: Value = serde_json::from_str(&allowed.body)?;
    say(&format!(
        "GET  /orders with it          -> 200; the app, which has no auth code, reads the caller from headers: {}",
        caller["caller"]
    ));

    // 2. Everything the policy refuses, and why.
    let anonymous = shop.orders("GET", "/orders", None)?;
    ensure!(
        anonymous.status == 401 && !challenge_of(&anonymous).contains("error="),
        "no token: {} {}",
        anonymous.status,
        challenge_of(&anonymous)
    );
    say(&format!(
        "GET  /orders without a token -> 401, WWW-Authenticate: {}",
        challenge_of(&anonymous)
    ));
    let forbidden = shop.orders("POST", "/orders", Some(&read))?;
    ensure!(
        forbidden.status == 403
            && challenge_of(&forbidden).contains("insufficient_scope")
            && challenge_of(&forbidden).contains("write:orders"),
        "POST /orders with read:orders: {} {}",
        forbidden.status,
        challenge_of(&forbidden)
    );
    say(&format!(
        "POST /orders with read:orders -> 403, WWW-Authenticate: {}",
        challenge_of(&forbidden)
    ));
    let (header, mut claims) = peek(&read)?;
    claims["scope"] = json!("read:orders write:orders");
    let signature = read.rsplit('.').next().unwrap_or_default();
    let edited = format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tampered = shop.orders("POST", "/orders", Some(&edited))?;
    ensure!(
        tampered.status == 401 && challenge_of(&tampered).contains("invalid_token"),
        "an edited token: {} {}",
        tampered.status,
        challenge_of(&tampered)
    );
    say(&format!(
        "POST /orders with the token's scope edited to add write:orders -> 401, WWW-Authenticate: {}",
        challenge_of(&tampered)
    ));
    let garbled = shop.orders("GET", "/orders", Some("not a token"))?;
    ensure!(
        garbled.status == 400,
        "a malformed Authorization header: {}",
        garbled.status
    );
    say(&format!(
        "GET  /orders with \"Authorization: Bearer not a token\" -> 400, WWW-Authenticate: {}",
        challenge_of(&garbled)
    ));

    // 3. A user signs in on the app's own login page.
    ensure!(
        shop.login("alice", "not her password", "read:orders write:orders")
            .is_err(),
        "a wrong password got a code"
    );
    let login = shop.login("alice", "wonderland", "read:orders write:orders")?;
    let user_token = login["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    ensure!(
        login["refresh_token"].is_string(),
        "no refresh token for the storefront"
    );
    say(&format!(
        "alice signs in to the storefront (authorization code + PKCE; the shop's login page checks her password and accepts the login on the sidecar's mint socket; a wrong password got no code): {}, plus a refresh token",
        describe(&user_token)?
    ));

    // 4. Google login, added to the running issuer.
    let callback = shop.add_google().await?;
    say(&format!(
        "the admin adds \"Continue with Google\" to the running issuer (a Secret with Google's client secret, an upstream in AuthPolicy auth; here Google is a stand-in, npm oidc-provider at {}): status.upstreams names the callback URL to register at Google, {callback}; no pod restarted",
        shop.google.issuer
    ));
    let (choices, google) = shop.google_login("ann", "read:orders")?;
    let google_token = google["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let (header, claims) = peek(&google_token)?;
    let subject = claims["sub"].as_str().unwrap_or_default();
    ensure!(
        claims["iss"] == shop.issuer.as_str()
            && subject.starts_with("user:google-")
            && !google_token.contains("ann@")
            && header["kid"].as_str() == Some(shop.active_kid().await?.as_str()),
        "the token after a Google login is not the shop's own for its own user: {header} {claims}"
    );
    let reads = shop.orders("GET", "/orders", Some(&google_token))?;
    ensure!(
        reads.status == 200,
        "GET /orders with the Google user's token answered {}",
        reads.status
    );
    say(&format!(
        "ann signs in to the storefront with Google (the issuer's chooser offers {}; Google's ID token is checked, nonce, PKCE and all, then thrown away; the shop's login app links Google subject \"ann\" to its own user on the mint socket): the storefront gets the shop's token, not Google's: {}; GET /orders with it -> 200",
        choices.join(" / "),
        describe(&google_token)?
    ));

    // 5. The rate limit.
    let mut placed = 0;
    let limited = loop {
        let response = shop.orders("POST", "/orders", Some(&user_token))?;
        match response.status {
            201 if placed < shop.order_limit => placed += 1,
            _ => break response,
        }
    };
    ensure!(
        limited.status == 429 && placed == shop.order_limit,
        "after {placed} orders (limit {}): {} {:?}",
        shop.order_limit,
        limited.status,
        limited.body
    );
    let retry_after = limited
        .header("retry-after")
        .context("429 without Retry-After")?
        .to_owned();
    say(&format!(
        "alice places orders: {placed} accepted (201), the next -> 429, Retry-After: {retry_after}s (the policy allows {} per minute per subject)",
        shop.order_limit
    ));

    // 6. Keys rotate twice while a client keeps calling: no valid request may be rejected, and
    // tokens signed by each new key must be accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted_by_kid = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let load = {
        let (shop, stop, accepted_by_kid) = (shop.clone(), stop.clone(), accepted_by_kid.clone());
        std::thread::spawn(move || {
            let mut rejected = Vec::new();
            let mut token = shop.billing_token(None);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if i.is_multiple_of(5) {
                    token = shop.billing_token(None);
                }
                match token
                    .as_deref()
                    .map(|t| (t, shop.orders("GET", "/orders", Some(t))))
                {
                    Ok((t, Ok(r))) if r.status == 200 => {
                        let kid = peek(t).map(|(header, _)| {
                            header["kid"].as_str().unwrap_or_default().to_owned()
                        });
                        let mut counts = accepted_by_kid
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        *counts.entry(kid.unwrap_or_default()).or_default() += 1;
                    }
                    Ok((_, Ok(r))) => rejected.push(format!("{} {}", r.status, challenge_of(&r))),
                    Ok((_, Err(err))) => rejected.push(err.to_string()),
                    Err(err) => rejected.push(format!("no token: {err}")),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            rejected
        })
    };
    let accepted_with = |kid: &str| {
        accepted_by_kid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
            .copied()
            .unwrap_or_default()
    };
    let mut kids = vec![shop.active_kid().await?];
    for round in ["1", "2"] {
        shop.rotate(round).await?;
        let previous = kids.last().cloned().unwrap_or_default();
        let next = eventually("the successor key signing", || {
            let (shop, previous) = (shop.clone(), previous.clone());
            async move {
                let kid = shop.active_kid().await?;
                ensure!(kid != previous, "still {kid}");
                Ok(kid)
            }
        })
        .await?;
        eventually("requests accepted with tokens of the new key", || {
            let accepted = accepted_with(&next);
            async move {
                ensure!(accepted >= 20, "{accepted} so far");
                Ok(())
            }
        })
        .await?;
        kids.push(next);
    }
    stop.store(true, Ordering::Relaxed);
    let rejected = tokio::task::spawn_blocking(move || load.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
    ensure!(
        rejected.is_empty(),
        "valid requests rejected during rotation: {rejected:?}"
    );
    let per_key: Vec<String> = kids
        .iter()
        .map(|kid| format!("{} {}", short(kid), accepted_with(kid)))
        .collect();
    let accepted = accepted_by_kid
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .sum();
    say(&format!(
        "keys rotate twice (annotation scopegate.dev/rotate; each new key is published {STORY_PROPAGATION} before it signs), while billing calls GET /orders 10 times a second with fresh tokens: accepted per signing key {}, {} rejected",
        per_key.join(" -> "),
        rejected.len()
    ));

    // 7. Revocation reaches the enforcement point.
    let doomed = shop.billing_token(None)?;
    let before = shop.orders("GET", "/orders", Some(&doomed))?;
    ensure!(
        before.status == 200,
        "a fresh token answered {}",
        before.status
    );
    let revoked_at = Instant::now();
    shop.revoke(&doomed)?;
    let refusal = eventually("the revoked token refused", || {
        let (shop, doomed) = (shop.clone(), doomed.clone());
        async move {
            let response = shop.orders("GET", "/orders", Some(&doomed))?;
            ensure!(response.status == 401, "still {}", response.status);
            Ok(response)
        }
    })
    .await?;
    let revocation_took = revoked_at.elapsed();
    let other = shop.orders("GET", "/orders", Some(&read))?;
    ensure!(
        other.status == 200,
        "another token answered {} after the revocation",
        other.status
    );
    say(&format!(
        "billing revokes a token (RFC 7009): orders refuses it {} ms later (WWW-Authenticate: {}), through the issuer's signed revocation feed; billing's other tokens still work",
        revocation_took.as_millis(),
        challenge_of(&refusal)
    ));
    Ok(Outcome {
        kids,
        accepted_during_rotation: accepted,
        revocation_took,
    })
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
