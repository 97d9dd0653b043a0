//! Starting the shop: `examples/` applied to the story's namespace, what the operator renders
//! awaited, and the `auth`, `inventory`, `orders`, `billing` and `storefront` pods (the last
//! three with ServiceAccounts of their own) created through the API server and run as a
//! kubelet would.

use std::net::SocketAddr;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use scopegate_core::session::CALLBACK_PATH as SESSION_CALLBACK_PATH;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::{STORY_PROPAGATION, Shop, Storefront};
use crate::google::{self, GoogleStandIn};
use crate::http::request;
use crate::kubelet::{Images, PodNetwork, RunningPod, ServiceRoute, example_app, sidecar_image};
use crate::node_idp::TestTls;
use crate::{FIELD_MANAGER, config_map_text, eventually, repo_root, secret_text};

fn images() -> anyhow::Result<Images> {
    Ok(Images::from([
        sidecar_image()?,
        example_app("example/orders", "orders.py"),
        example_app("example/auth", "auth.py"),
        example_app("example/inventory", "inventory.py"),
        example_app("example/billing", "billing.py"),
        example_app("example/storefront", "storefront.py"),
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

/// Pod `<app>-0` labelled `app: <app>`, one container `app` running `example/<app>`, running
/// as ServiceAccount `account` when given. With `env`, naming where, its app calls out
/// through the sidecar's egress port.
fn pod(app: &str, account: Option<&str>, env: &[(&str, String)]) -> anyhow::Result<Pod> {
    let env: Vec<Value> = (!env.is_empty())
        .then_some(("HTTP_PROXY", EGRESS_PROXY.to_owned()))
        .into_iter()
        .chain(env.iter().map(|(name, value)| (*name, value.clone())))
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut spec = json!({"containers": [{
        "name": "app",
        "image": format!("example/{app}"),
        "env": env,
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
    }]});
    if let Some(account) = account {
        spec["serviceAccountName"] = json!(account);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{app}-0"), "labels": {"app": app}},
        "spec": spec,
    }))?)
}

/// Where the apps that call out send their calls: the sidecar's egress port (the default of
/// `egress.port`).
const EGRESS_PROXY: &str = "http://127.0.0.1:15081";

/// The volume of the projected ServiceAccount token the webhook mounts into the sidecar.
const TOKEN_VOLUME: &str = "scopegate-issuer-token";

/// The volume of a sessions policy's keys, which the webhook mounts into the sidecar.
const SESSION_KEYS_VOLUME: &str = "scopegate-session-keys";

/// What the story reads from `examples/`: names, ports and limits it must not hard-code.
struct Facts {
    issuer: String,
    issuer_host: String,
    auth_port: u16,
    orders_audience: String,
    orders_port: u16,
    order_limit: u32,
    accounting_secret_name: String,
    /// billing's egress target: orders' URL, as billing's app calls it.
    orders_url: String,
    /// orders' egress target on behalf of the caller: inventory's URL.
    inventory_url: String,
    /// The ServiceAccounts of the clients billing, orders and storefront.
    billing_account: String,
    orders_account: String,
    storefront_account: String,
    /// The shop app's loopback redirect URI.
    redirect_uri: String,
    /// The storefront's origin (`https://` and its Service's name), from its sessions'
    /// redirect URI.
    storefront_origin: String,
    /// The TLS Secret the storefront's sidecar serves its pages with.
    storefront_tls: String,
    /// The storefront sidecar's listener port.
    storefront_port: u16,
}

/// The URL of `policy`'s egress target `target`.
fn target_url(objects: &[Value], policy: &str, target: &str) -> anyhow::Result<String> {
    let targets = named(objects, "AuthPolicy", policy)?["spec"]["egress"]["targets"]
        .as_array()
        .with_context(|| format!("examples/: {policy} declares no egress"))?;
    let found = (targets.iter())
        .find(|t| t["name"] == target)
        .with_context(|| format!("examples/: {policy} has no egress target {target}"))?;
    text(&found["url"], "egress target url")
}

/// The one ServiceAccount OAuthClient `name` authenticates with.
fn account_of(objects: &[Value], name: &str) -> anyhow::Result<String> {
    text(
        &named(objects, "OAuthClient", name)?["spec"]["serviceAccounts"][0],
        &format!("{name} serviceAccounts"),
    )
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
        let accounting_secret_name = text(
            &named(objects, "OAuthClient", "accounting")?["spec"]["secretName"],
            "accounting secretName",
        )?;
        let redirect_uri = named(objects, "OAuthClient", "shop-app")?["spec"]["redirectUris"]
            .as_array()
            .and_then(|uris| {
                uris.iter()
                    .filter_map(Value::as_str)
                    .find(|u| u.starts_with("http://127.0.0.1"))
            })
            .context("examples/: the shop app has no loopback redirect URI")?
            .to_owned();
        let storefront = &named(objects, "AuthPolicy", "storefront")?["spec"];
        let callback = text(
            &storefront["sessions"]["redirectUri"],
            "storefront sessions redirectUri",
        )?;
        let storefront_origin = callback
            .strip_suffix(SESSION_CALLBACK_PATH)
            .filter(|origin| origin.starts_with("https://"))
            .with_context(|| format!("examples/: the storefront's callback is {callback}"))?
            .to_owned();
        Ok(Self {
            issuer,
            issuer_host,
            auth_port: u16::try_from(auth_port)?,
            orders_audience,
            orders_port: u16::try_from(orders_port)?,
            order_limit: u32::try_from(order_limit)?,
            accounting_secret_name,
            orders_url: target_url(objects, "billing", "orders")?,
            inventory_url: target_url(objects, "orders", "inventory")?,
            billing_account: account_of(objects, "billing")?,
            orders_account: account_of(objects, "orders")?,
            storefront_account: account_of(objects, "storefront")?,
            redirect_uri,
            storefront_origin,
            storefront_tls: text(
                &storefront["listen"]["tlsSecret"],
                "storefront listen.tlsSecret",
            )?,
            storefront_port: u16::try_from(storefront["listen"]["port"].as_u64().unwrap_or(15080))?,
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

/// Waits for what the operator renders: the accounting client's secret (returned), the
/// cluster's ServiceAccount keys in the issuer's config, the client registry and the sidecar
/// configs; writes the CA bundle to `ca_file`.
async fn await_rendered(
    client: &Client,
    namespace: &str,
    facts: &Facts,
    ca_file: &std::path::Path,
) -> anyhow::Result<String> {
    let accounting_secret = eventually("the accounting client's credentials", || async {
        secret_text(
            client,
            namespace,
            &facts.accounting_secret_name,
            "client_secret",
        )
        .await?
        .context("no secret yet")
    })
    .await?;
    // The issuer checks billing's and orders' ServiceAccount tokens with the cluster's keys,
    // which the operator reads from the API server into the issuer's config.
    let policies = Api::<AuthPolicy>::namespaced(client.clone(), namespace);
    eventually(
        "the cluster's ServiceAccount keys in the issuer's config",
        || async {
            let status = policies.get("auth").await?.status.context("no status")?;
            let read = status
                .service_account_issuer
                .context("no service-account issuer read yet")?;
            ensure!(
                !read.key_ids.is_empty(),
                "no key read yet: {:?}",
                read.error
            );
            let config = config_map_text(client, namespace, "auth-sidecar", "config.json")
                .await?
                .context("no issuer config")?;
            ensure!(
                read.key_ids.iter().all(|kid| config.contains(kid.as_str())),
                "the issuer's config lacks the cluster's keys"
            );
            Ok(())
        },
    )
    .await?;
    eventually("the issuer registry and the sidecar configs", || async {
        let registry = secret_text(client, namespace, "auth-clients", "clients.json")
            .await?
            .context("no registry")?;
        for name in ["accounting", "billing", "orders", "shop-app", "storefront"] {
            ensure!(
                registry.contains(&format!("\"{namespace}.{name}\"")),
                "{name} not registered yet"
            );
        }
        ensure!(
            registry.contains("token-exchange"),
            "orders may not exchange yet"
        );
        for (name, needs) in [
            ("orders", "onBehalfOfCaller"),
            ("inventory", "\"kid\""),
            ("billing", "\"egress\""),
            ("storefront", "\"sessions\""),
        ] {
            let config =
                config_map_text(client, namespace, &format!("{name}-sidecar"), "config.json")
                    .await?
                    .with_context(|| format!("no {name} config"))?;
            ensure!(
                config.contains("\"kid\"") && config.contains(needs),
                "{name}'s config has no {needs} yet"
            );
        }
        Ok(())
    })
    .await?;
    let ca = config_map_text(client, namespace, "scopegate-ca", "ca.crt")
        .await?
        .context("no scopegate-ca")?;
    std::fs::write(ca_file, ca)?;
    Ok(accounting_secret)
}

/// The shop's pods as the API server stored them (injected).
struct Pods {
    auth: Pod,
    inventory: Pod,
    orders: Pod,
    billing: Pod,
    storefront: Pod,
}

/// Creates the ServiceAccounts of billing, orders and storefront, and pods `auth-0`,
/// `inventory-0`, `orders-0`, `billing-0` and `storefront-0` through the API server: each must
/// come back injected, and the three that run as a ServiceAccount with its token mounted into
/// the sidecar only (and the storefront with its session keys, also the sidecar's only).
async fn create_pods(client: &Client, namespace: &str, facts: &Facts) -> anyhow::Result<Pods> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    for name in [
        &facts.billing_account,
        &facts.orders_account,
        &facts.storefront_account,
    ] {
        let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        accounts
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&account),
            )
            .await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let create = |pod: Pod| {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &pod).await }
    };
    let created = Pods {
        auth: create(pod("auth", None, &[])?).await?,
        inventory: create(pod("inventory", None, &[])?).await?,
        orders: create(pod(
            "orders",
            Some(&facts.orders_account),
            &[("INVENTORY_URL", format!("{}/stock", facts.inventory_url))],
        )?)
        .await?,
        billing: create(pod(
            "billing",
            Some(&facts.billing_account),
            &[("ORDERS_URL", format!("{}/orders", facts.orders_url))],
        )?)
        .await?,
        storefront: create(pod("storefront", Some(&facts.storefront_account), &[])?).await?,
    };
    for (created, with_token) in [
        (&created.auth, false),
        (&created.inventory, false),
        (&created.orders, true),
        (&created.billing, true),
        (&created.storefront, true),
    ] {
        let name = created.metadata.name.as_deref().unwrap_or_default();
        let spec = created.spec.as_ref().context("a pod without spec")?;
        let mounts_of = |volume: &'static str| {
            move |containers: Option<&Vec<k8s_openapi::api::core::v1::Container>>, which: &str| {
                (containers.into_iter().flatten())
                    .filter(|c| c.name == which)
                    .flat_map(|c| c.volume_mounts.iter().flatten())
                    .any(|m| m.name == volume)
            }
        };
        let (mounts, mounts_keys) = (mounts_of(TOKEN_VOLUME), mounts_of(SESSION_KEYS_VOLUME));
        let sidecar = spec.init_containers.as_ref();
        ensure!(
            sidecar.is_some_and(|c| c.iter().any(|c| c.name == "scopegate-sidecar")),
            "pod {name} came back without the sidecar"
        );
        ensure!(
            mounts(sidecar, "scopegate-sidecar") == with_token
                && !mounts(Some(&spec.containers), "app"),
            "pod {name}: the ServiceAccount token is mounted where it should not be, or not where it should"
        );
        let sessions = name.starts_with("storefront");
        ensure!(
            mounts_keys(sidecar, "scopegate-sidecar") == sessions
                && !mounts_keys(Some(&spec.containers), "app"),
            "pod {name}: the session keys are mounted where they should not be, or not where they should"
        );
    }
    Ok(created)
}

/// The Google stand-in, reached by the issuer pod by name on port 443, and the files of the
/// story's browser: the CA bundle it trusts (the operator's, the stand-in's and the
/// storefront's) and its cookie jar.
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
        storefront_ca: &str,
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
            format!(
                "{}{}{storefront_ca}",
                std::fs::read_to_string(ca_file)?,
                stand_in.ca_pem
            ),
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

/// The storefront's public certificate in its TLS Secret, as cert-manager would issue it (for
/// its Service's name, by a CA of the story's own that only the story's browser trusts).
/// Returns that CA.
async fn storefront_certificate(
    client: &Client,
    namespace: &str,
    facts: &Facts,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let host = storefront_host(facts)?;
    let tls = TestTls::new(dir, "storefront", "the storefront's public CA", &[host])?;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": facts.storefront_tls},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": std::fs::read_to_string(&tls.cert_file)?,
            "tls.key": std::fs::read_to_string(&tls.key_file)?,
        },
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            &facts.storefront_tls,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(tls.ca_pem)
}

/// The storefront's Service name, from its origin.
fn storefront_host(facts: &Facts) -> anyhow::Result<&str> {
    facts
        .storefront_origin
        .strip_prefix("https://")
        .filter(|host| !host.contains([':', '/']))
        .with_context(|| format!("the storefront's origin is {}", facts.storefront_origin))
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

/// The Service an egress target's `url` (`http://host[:port]`) names: its port leads to the
/// sidecar of the pod at `endpoint`.
fn target_service(
    url: &str,
    network: &PodNetwork,
    endpoint: SocketAddr,
) -> anyhow::Result<ServiceRoute> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an in-cluster http:// target"))?;
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, port.parse()?),
        None => (authority, 80),
    };
    Ok(ServiceRoute {
        names: vec![host.to_owned()],
        cluster_ip: network.cluster_ip(),
        port,
        endpoint,
    })
}

impl Shop {
    /// Applies `examples/` to `namespace` (created, injection enabled), gives the storefront
    /// its public certificate, waits for what the operator renders, and runs the `auth`,
    /// `inventory`, `orders`, `billing` and `storefront` pods.
    pub async fn start(
        client: &Client,
        namespace: &str,
        logs: &std::path::Path,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Self> {
        let objects = apply_examples(client, namespace, progress).await?;
        let facts = Facts::read(&objects)?;
        let browser_dir = logs.join(format!("{namespace}-browser"));
        let storefront_ca = storefront_certificate(client, namespace, &facts, &browser_dir).await?;
        let ca_file = logs.join(format!("{namespace}-ca.crt"));
        let accounting_secret = await_rendered(client, namespace, &facts, &ca_file).await?;
        progress(
            "the operator wrote signing keys, the JWKS, the issuer's TLS certificate, the client registry (billing, orders and storefront with their ServiceAccounts, checked against the cluster's ServiceAccount keys it read from the API server), the accounting client's secret, the storefront's session keys and five sidecar configs",
        );
        let pods = create_pods(client, namespace, &facts).await?;
        progress(&format!(
            "created ServiceAccounts {}, {} and {} and pods auth-0, inventory-0, orders-0, billing-0 and storefront-0 (one app container each): the webhook added the scopegate sidecar to each, to orders-0, billing-0 and storefront-0 a projected ServiceAccount token, and to storefront-0 its session keys, mounted into the sidecar only",
            facts.billing_account, facts.orders_account, facts.storefront_account
        ));

        let network =
            PodNetwork::create().context("running pods needs network namespaces (run as root)")?;
        let images = images()?;
        let google = Google::start(
            &network,
            &facts.issuer,
            &ca_file,
            &storefront_ca,
            browser_dir,
        )?;
        let auth_pod =
            RunningPod::start(client, &network, &pods.auth, &images, &[google.route], logs).await?;
        let auth_ip = auth_pod.ip;
        let auth_service = auth_service(
            namespace,
            &facts,
            &network,
            SocketAddr::from((auth_ip, facts.auth_port)),
        );
        let inventory_pod = RunningPod::start(
            client,
            &network,
            &pods.inventory,
            &images,
            std::slice::from_ref(&auth_service),
            logs,
        )
        .await?;
        let inventory_service = target_service(
            &facts.inventory_url,
            &network,
            SocketAddr::from((inventory_pod.ip, 15080)),
        )?;
        let orders_pod = RunningPod::start(
            client,
            &network,
            &pods.orders,
            &images,
            &[auth_service.clone(), inventory_service],
            logs,
        )
        .await?;
        let orders_service = target_service(
            &facts.orders_url,
            &network,
            SocketAddr::from((orders_pod.ip, facts.orders_port)),
        )?;
        let billing_pod = RunningPod::start(
            client,
            &network,
            &pods.billing,
            &images,
            &[auth_service.clone(), orders_service],
            logs,
        )
        .await?;
        let storefront_pod = RunningPod::start(
            client,
            &network,
            &pods.storefront,
            &images,
            &[auth_service],
            logs,
        )
        .await?;
        let storefront = Storefront {
            host: storefront_host(&facts)?.to_owned(),
            origin: facts.storefront_origin.clone(),
            listener: SocketAddr::from((storefront_pod.ip, facts.storefront_port)),
            admin: SocketAddr::from((storefront_pod.ip, 15090)),
        };
        let shop = Self {
            namespace: namespace.to_owned(),
            issuer: facts.issuer,
            issuer_host: facts.issuer_host,
            orders_audience: facts.orders_audience,
            order_limit: facts.order_limit,
            accounting: (format!("{namespace}.accounting"), accounting_secret),
            app_client: format!("{namespace}.shop-app"),
            redirect_uri: facts.redirect_uri,
            storefront,
            ca_file,
            auth_ip,
            auth_port: facts.auth_port,
            orders: SocketAddr::from((orders_pod.ip, facts.orders_port)),
            orders_admin: SocketAddr::from((orders_pod.ip, 15090)),
            inventory_url: facts.inventory_url,
            google: google.stand_in,
            browser_ca_file: google.browser_ca_file,
            cookie_jar: google.cookie_jar,
            client: client.clone(),
            admins: [
                &auth_pod,
                &inventory_pod,
                &orders_pod,
                &billing_pod,
                &storefront_pod,
            ]
            .map(|pod| SocketAddr::from((pod.ip, 15090))),
            billing_pod,
            _pods: vec![auth_pod, inventory_pod, orders_pod, storefront_pod],
            _network: network,
        };
        shop.wait_ready().await?;
        progress(
            "ran the five pods as a kubelet would (own network and mount namespaces, the mounted ConfigMaps and Secrets, ServiceAccount tokens from the API server's TokenRequest): sidecars and apps ready",
        );
        Ok(shop)
    }

    /// Waits until every sidecar and app answers ready.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        eventually("every sidecar and app ready", || async {
            for admin in self.admins {
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
            let metrics = request(self.storefront.admin, "GET", "/metrics", &[], "")?.body;
            ensure!(
                metrics
                    .lines()
                    .any(|l| l.starts_with("scopegate_sidecar_session_keys ") && !l.ends_with(" 0")),
                "the storefront's sidecar has no session key in force yet"
            );
            Ok(())
        })
        .await?;
        Ok(())
    }
}
