//! Starting the shop: `examples/` applied to the story's namespace, what the operator renders
//! awaited, and the `auth` and `orders` pods created through the API server and run as a
//! kubelet would.

use std::net::SocketAddr;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::{STORY_PROPAGATION, Shop};
use crate::google::{self, GoogleStandIn};
use crate::http::request;
use crate::kubelet::{Images, PodNetwork, RunningPod, ServiceRoute, example_app, sidecar_image};
use crate::{FIELD_MANAGER, config_map_text, eventually, repo_root, secret_text};

fn images() -> anyhow::Result<Images> {
    Ok(Images::from([
        sidecar_image()?,
        example_app("example/orders", "orders.py"),
        example_app("example/auth", "auth.py"),
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

/// What the story reads from `examples/`: names, ports and limits it must not hard-code.
struct Facts {
    issuer: String,
    issuer_host: String,
    auth_port: u16,
    orders_audience: String,
    orders_port: u16,
    order_limit: u32,
    billing_secret_name: String,
    redirect_uri: String,
}

impl Facts {
    fn read(objects: &[Value]) -> anyhow::Result<Self> {
        let auth = named(objects, "AuthPolicy", "auth")?;
        let issuer = text(&auth["spec"]["issuer"]["self"]["url"], "auth issuer url")?;
        let issuer_host = issuer
            .strip_prefix("https://")
            .and_then(|rest| rest.split(['/', ':']).next())
            .context("the issuer URL is not https://host")?
            .to_owned();
        let auth_port = auth["spec"]["listen"]["port"].as_u64().unwrap_or(15080);
        let orders_policy = named(objects, "AuthPolicy", "orders")?;
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
            &named(objects, "OAuthClient", "billing")?["spec"]["secretName"],
            "billing secretName",
        )?;
        let redirect_uri = named(objects, "OAuthClient", "storefront")?["spec"]["redirectUris"]
            .as_array()
            .and_then(|uris| {
                uris.iter()
                    .filter_map(Value::as_str)
                    .find(|u| u.starts_with("http://127.0.0.1"))
            })
            .context("examples/: the storefront has no loopback redirect URI")?
            .to_owned();
        Ok(Self {
            issuer,
            issuer_host,
            auth_port: u16::try_from(auth_port)?,
            orders_audience,
            orders_port: u16::try_from(orders_port)?,
            order_limit: u32::try_from(order_limit)?,
            billing_secret_name,
            redirect_uri,
        })
    }
}

/// Creates `namespace` with injection enabled and applies `examples/` to it, the issuer's
/// propagation shortened to [`STORY_PROPAGATION`]. Returns the objects applied.
async fn apply_examples(
    client: &Client,
    namespace: &str,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Vec<Value>> {
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
    Ok(objects)
}

/// Waits for what the operator renders: the billing client's secret (returned), the client
/// registry and the orders config; writes the CA bundle to `ca_file`.
async fn await_rendered(
    client: &Client,
    namespace: &str,
    facts: &Facts,
    ca_file: &std::path::Path,
) -> anyhow::Result<String> {
    let billing_secret = eventually("the billing client's credentials", || async {
        secret_text(
            client,
            namespace,
            &facts.billing_secret_name,
            "client_secret",
        )
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
    std::fs::write(ca_file, ca)?;
    Ok(billing_secret)
}

/// Creates pods `auth-0` and `orders-0` through the API server; both must come back injected.
async fn create_pods(client: &Client, namespace: &str) -> anyhow::Result<(Pod, Pod)> {
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
    Ok((auth, orders))
}

/// The Google stand-in, reached by the issuer pod by name on port 443, and the files of the
/// story's browser: the CA bundle it trusts (the operator's and the stand-in's) and its
/// cookie jar.
struct Google {
    stand_in: GoogleStandIn,
    route: ServiceRoute,
    browser_ca_file: std::path::PathBuf,
    cookie_jar: std::path::PathBuf,
}

impl Google {
    fn start(
        network: &PodNetwork,
        issuer: &str,
        ca_file: &std::path::Path,
        dir: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let stand_in = GoogleStandIn::start(
            network.gateway(),
            &format!("{issuer}/oauth2/upstream/google/callback"),
            &dir,
        )?;
        let route = ServiceRoute {
            names: vec![google::HOST.to_owned()],
            cluster_ip: network.cluster_ip(),
            port: 443,
            endpoint: stand_in.address,
        };
        let browser_ca_file = dir.join("browser-ca.crt");
        std::fs::write(
            &browser_ca_file,
            format!("{}{}", std::fs::read_to_string(ca_file)?, stand_in.ca_pem),
        )?;
        let cookie_jar = dir.join("cookies.txt");
        std::fs::write(&cookie_jar, "")?;
        Ok(Self {
            stand_in,
            route,
            browser_ca_file,
            cookie_jar,
        })
    }
}

/// The Service `auth`: its port 443 leads to the issuer sidecar's TLS listener at `endpoint`.
fn auth_service(
    namespace: &str,
    facts: &Facts,
    network: &PodNetwork,
    endpoint: SocketAddr,
) -> ServiceRoute {
    let mut names = vec![
        format!("auth.{namespace}.svc"),
        format!("auth.{namespace}.svc.cluster.local"),
        format!("auth.{namespace}"),
    ];
    if !names.contains(&facts.issuer_host) {
        names.push(facts.issuer_host.clone());
    }
    ServiceRoute {
        names,
        cluster_ip: network.cluster_ip(),
        port: 443,
        endpoint,
    }
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
        let objects = apply_examples(client, namespace, progress).await?;
        let facts = Facts::read(&objects)?;
        let ca_file = logs.join(format!("{namespace}-ca.crt"));
        let billing_secret = await_rendered(client, namespace, &facts, &ca_file).await?;
        progress(
            "the operator wrote signing keys, the JWKS, the issuer's TLS certificate, the client registry, the billing client's secret and both sidecar configs",
        );
        let (auth, orders) = create_pods(client, namespace).await?;
        progress(
            "created pods auth-0 and orders-0 (one app container each): the webhook added the scopegate sidecar to both",
        );

        let network =
            PodNetwork::create().context("running pods needs network namespaces (run as root)")?;
        let images = images()?;
        let google = Google::start(
            &network,
            &facts.issuer,
            &ca_file,
            logs.join(format!("{namespace}-google")),
        )?;
        let auth_pod =
            RunningPod::start(client, &network, &auth, &images, &[google.route], logs).await?;
        let auth_ip = auth_pod.ip;
        let auth_service = auth_service(
            namespace,
            &facts,
            &network,
            SocketAddr::from((auth_ip, facts.auth_port)),
        );
        let orders_pod =
            RunningPod::start(client, &network, &orders, &images, &[auth_service], logs).await?;
        let shop = Self {
            namespace: namespace.to_owned(),
            issuer: facts.issuer,
            issuer_host: facts.issuer_host,
            orders_audience: facts.orders_audience,
            order_limit: facts.order_limit,
            billing: (format!("{namespace}.billing"), billing_secret),
            storefront: format!("{namespace}.storefront"),
            redirect_uri: facts.redirect_uri,
            ca_file,
            auth_ip,
            auth_port: facts.auth_port,
            orders: SocketAddr::from((orders_pod.ip, facts.orders_port)),
            orders_admin: SocketAddr::from((orders_pod.ip, 15090)),
            google: google.stand_in,
            browser_ca_file: google.browser_ca_file,
            cookie_jar: google.cookie_jar,
            client: client.clone(),
            _pods: vec![auth_pod, orders_pod],
            _network: network,
        };
        shop.wait_ready().await?;
        progress(
            "ran both pods as a kubelet would (own network and mount namespaces, the mounted ConfigMaps and Secrets): sidecars and apps ready",
        );
        Ok(shop)
    }

    /// Waits until both sidecars and both apps answer ready.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let admins = [SocketAddr::from((self.auth_ip, 15090)), self.orders_admin];
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
        Ok(())
    }
}
