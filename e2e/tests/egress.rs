//! Billing calls orders with no secret anywhere: its OAuthClient names its ServiceAccount, its
//! AuthPolicy declares orders as an egress target, the webhook mounts a projected token
//! (issued by the real API server through the kubelet stand-in) into the sidecar only, and the
//! example billing app, which has no auth code, sends a plain HTTP call to its sidecar
//! (HTTP_PROXY). The sidecar obtains a token from the issuer pod with that ServiceAccount
//! token and orders' sidecar accepts it. Then what the sidecar refuses: a host that is not a
//! target, CONNECT, and another pod reaching the egress port.

use std::net::SocketAddr;

use anyhow::ensure;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::endpoint::IssuerEndpoint;
use scopegate_e2e::http::request;
use scopegate_e2e::kubelet::{
    Images, PodNetwork, RunningPod, ServiceRoute, example_app, sidecar_image,
};
use scopegate_e2e::ready::sidecar_ready;
use scopegate_e2e::rendered::signing_keys;
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::tokens::{Claims, sign};
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, eventually, manifests};
use serde_json::{Value, json};

fn orders_policy(n: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://orders.{n}.svc]
  upstream: {{port: 8080}}
  rules:
    - {{paths: ["/ready"], public: true}}
    - {{methods: [GET], paths: ["/orders"], require: [read:orders]}}
"#
    )
}

fn billing_policy(n: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: billing}}
spec:
  selector: {{matchLabels: {{app: billing}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://billing.{n}.svc]
  upstream: {{port: 8080}}
  rules:
    - {{paths: ["/ready", "/charge"], public: true}}
  egress:
    clientRef: {{name: billing}}
    targets:
      - {{name: orders, url: "http://orders.{n}.svc", audience: "https://orders.{n}.svc", scopes: [read:orders]}}
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

#[tokio::test]
async fn billing_calls_orders_with_no_secret_anywhere() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "egress").await;
    let n = ns.name.as_str();
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "billing"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let issuer = manifests::issuer(n, "auth").scopes("read:orders: Read orders");
    apply_yaml::<AuthPolicy>(&client, n, &issuer.yaml())
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(&client, n, &orders_policy(n))
        .await
        .unwrap();
    let billing = manifests::oauth_client(
        "billing",
        "name: auth",
        &format!(
            "scopes: [read:orders]\nserviceAccounts: [billing]\naudiences: [https://orders.{n}.svc]"
        ),
    );
    apply_yaml::<OAuthClient>(&client, n, &billing)
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(&client, n, &billing_policy(n))
        .await
        .unwrap();
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), n);
    eventually("billing's egress rendered", || async {
        let status = serde_json::to_value(policies.get("billing").await?.status)?;
        let conditions = status["conditions"].to_string();
        ensure!(!conditions.contains("Egress"), "{conditions}");
        let config = scopegate_e2e::config_map_text(&client, n, "billing-sidecar", "config.json")
            .await?
            .unwrap_or_default();
        ensure!(config.contains("\"egress\""), "no egress yet: {config}");
        Ok(())
    })
    .await
    .unwrap();

    let auth = create(
        &client,
        n,
        &pod("metadata: {name: auth-0, labels: {app: auth}}\nspec:\n  containers:\n    - {name: app, image: example/auth, readinessProbe: {httpGet: {path: /ready, port: 8080}}}\n"),
    )
    .await;
    let orders = create(
        &client,
        n,
        &scopegate_e2e::manifests::orders_pod("orders-0"),
    )
    .await;
    let billing_pod = create(
        &client,
        n,
        &pod(&format!(
            "metadata: {{name: billing-0, labels: {{app: billing}}}}\nspec:\n  serviceAccountName: billing\n  containers:\n    - name: app\n      image: example/billing\n      env:\n        - {{name: HTTP_PROXY, value: 'http://127.0.0.1:15081'}}\n        - {{name: ORDERS_URL, value: 'http://orders.{n}.svc/orders'}}\n      readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}\n"
        )),
    )
    .await;
    // The token is the sidecar's: the app container mounts nothing of it.
    let spec = billing_pod.spec.clone().unwrap();
    let app_mounts: Vec<String> = (spec.containers.iter())
        .filter(|c| c.name == "app")
        .flat_map(|c| c.volume_mounts.iter().flatten().map(|m| m.name.clone()))
        .collect();
    assert!(
        !app_mounts.iter().any(|m| m == "scopegate-issuer-token"),
        "{app_mounts:?}"
    );

    let network = PodNetwork::create().expect("pod network (needs root)");
    let images = Images::from([
        sidecar_image().expect("the sidecar image"),
        example_app("example/auth", "auth.py"),
        example_app("example/orders", "orders.py"),
        example_app("example/billing", "billing.py"),
    ]);
    let logs = logs_dir();
    let auth_running = RunningPod::start(&client, &network, &auth, &images, &[], &logs)
        .await
        .expect("auth runs");
    let auth_route = route(n, "auth", 443, &network, &auth_running);
    let orders_running = RunningPod::start(
        &client,
        &network,
        &orders,
        &images,
        std::slice::from_ref(&auth_route),
        &logs,
    )
    .await
    .expect("orders runs");
    let orders_route = route(n, "orders", 80, &network, &orders_running);
    let billing_running = RunningPod::start(
        &client,
        &network,
        &billing_pod,
        &images,
        &[auth_route, orders_route],
        &logs,
    )
    .await
    .expect("billing runs");
    for running in [&auth_running, &orders_running, &billing_running] {
        sidecar_ready(SocketAddr::from((running.ip, 15090)))
            .await
            .expect("the sidecar gets ready");
    }

    // The call: billing's app asks plainly; orders sees billing's client, with its scope.
    let billing_at = SocketAddr::from((billing_running.ip, 15080));
    let answer: Value = eventually("billing's call to orders", || async move {
        let response = request(billing_at, "GET", "/charge", &[], "")?;
        ensure!(
            response.status == 200,
            "{}: {}",
            response.status,
            response.body
        );
        let body: Value = serde_json::from_str(&response.body)?;
        ensure!(body["orders_status"] == 200, "{body}");
        Ok(body)
    })
    .await
    .unwrap();
    let caller = &answer["orders"]["caller"];
    assert_eq!(
        caller["client_id"],
        json!(format!("{n}.billing")),
        "{answer}"
    );
    assert_eq!(caller["scopes"], "read:orders", "{answer}");
    assert!(
        Api::<Secret>::namespaced(client.clone(), n)
            .get_opt("billing-oauth-client")
            .await
            .unwrap()
            .is_none(),
        "no secret for billing"
    );

    // Inside the pod: a host that is no target is refused, and so is CONNECT.
    let curl = |format: &str, args: &[&str]| {
        let output = billing_running
            .command_in_pod("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", format])
            .args(args)
            .output()
            .expect("curl in the pod");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(
        curl(
            "%{http_code}",
            &["-x", "http://127.0.0.1:15081", "http://evil.example/steal"]
        ),
        "403",
        "an undeclared host"
    );
    assert_eq!(
        curl(
            "%{http_connect}",
            &["-x", "http://127.0.0.1:15081", "https://orders.example/"]
        ),
        "405",
        "CONNECT"
    );
    // Another pod cannot use billing's egress port: it listens on loopback only.
    let from_outside = std::net::TcpStream::connect_timeout(
        &SocketAddr::from((billing_running.ip, 15081)),
        std::time::Duration::from_secs(3),
    );
    assert!(
        from_outside.is_err(),
        "the egress port is reachable from outside the pod"
    );

    drop((billing_running, orders_running, auth_running));
    ns.delete().await.unwrap();
}

fn stock_policies(n: &str) -> [String; 2] {
    let orders = format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://orders.{n}.svc]
  upstream: {{port: 8080}}
  rules:
    - {{paths: ["/ready"], public: true}}
    - {{methods: [GET], paths: ["/orders", "/stock"], require: [read:orders]}}
  egress:
    clientRef: {{name: orders}}
    targets:
      - {{name: inventory, url: "http://inventory.{n}.svc", audience: "https://inventory.{n}.svc", scopes: [read:stock], onBehalfOfCaller: true}}
"#
    );
    let inventory = format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: inventory}}
spec:
  selector: {{matchLabels: {{app: inventory}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://inventory.{n}.svc]
  upstream: {{port: 8080}}
  headers:
    claims: {{x-auth-actor: act.sub, x-auth-act: act}}
  rules:
    - {{paths: ["/ready"], public: true}}
    - {{methods: [GET], paths: ["/stock"], require: [read:stock]}}
"#
    );
    [orders, inventory]
}

/// The route that leads `service`'s in-cluster names to `pod`'s port 15080.
fn route(
    n: &str,
    service: &str,
    port: u16,
    network: &PodNetwork,
    pod: &RunningPod,
) -> ServiceRoute {
    ServiceRoute {
        names: vec![
            format!("{service}.{n}.svc"),
            format!("{service}.{n}.svc.cluster.local"),
        ],
        cluster_ip: network.cluster_ip(),
        port,
        endpoint: SocketAddr::from((pod.ip, 15080)),
    }
}

/// Orders serves alice and asks inventory on her behalf: its app passes alice's Authorization
/// header on through its sidecar, which exchanges her token (RFC 8693, authenticated by the
/// pod's ServiceAccount) for one of inventory's audience that names orders as the actor.
/// Inventory's app reads who acts from the identity headers. Then the attacker inside orders'
/// pod: no caller token, a token that was never sent to orders, a token of another key; and
/// revoking alice's token ends the exchanged one at inventory, though orders' sidecar still
/// holds it in its cache.
#[tokio::test]
async fn orders_calls_inventory_on_alices_behalf() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "exchange").await;
    let n = ns.name.as_str();
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "orders"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let issuer =
        manifests::issuer(n, "auth").scopes("read:orders: Read orders, read:stock: Read stock");
    apply_yaml::<AuthPolicy>(&client, n, &issuer.yaml())
        .await
        .unwrap();
    // The web client alice's token is issued to; and orders, which may exchange tokens sent to
    // it for inventory's audience, authenticated by its ServiceAccount.
    let web = manifests::oauth_client(
        "web",
        "name: auth",
        &format!("scopes: [read:orders, read:stock]\naudiences: [https://orders.{n}.svc]"),
    );
    apply_yaml::<OAuthClient>(&client, n, &web).await.unwrap();
    let orders_client = manifests::oauth_client(
        "orders",
        "name: auth",
        &format!(
            "scopes: [read:stock]\nserviceAccounts: [orders]\ntokenExchange: {{subjectAudiences: [https://orders.{n}.svc], audiences: [https://inventory.{n}.svc]}}"
        ),
    );
    apply_yaml::<OAuthClient>(&client, n, &orders_client)
        .await
        .unwrap();
    for policy in stock_policies(n) {
        apply_yaml::<AuthPolicy>(&client, n, &policy).await.unwrap();
    }
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), n);
    eventually("orders' client registered with its exchange", || async {
        let status = clients.get("orders").await?.status.unwrap_or_default();
        let ready = scopegate_e2e::condition(&status.conditions, "Ready")
            .map(|c| (c.status.clone(), c.reason.clone()));
        ensure!(
            ready == Some(("True".into(), "Registered".into())),
            "{:?}",
            status.conditions
        );
        let registry = scopegate_e2e::secret_text(&client, n, "auth-clients", "clients.json")
            .await?
            .unwrap_or_default();
        ensure!(registry.contains("token-exchange"), "{registry}");
        let config = scopegate_e2e::config_map_text(&client, n, "orders-sidecar", "config.json")
            .await?
            .unwrap_or_default();
        ensure!(
            config.contains("onBehalfOfCaller"),
            "no egress yet: {config}"
        );
        Ok(())
    })
    .await
    .unwrap();

    let auth = create(
        &client,
        n,
        &pod("metadata: {name: auth-0, labels: {app: auth}}\nspec:\n  containers:\n    - {name: app, image: example/auth, readinessProbe: {httpGet: {path: /ready, port: 8080}}}\n"),
    )
    .await;
    let inventory = create(
        &client,
        n,
        &pod("metadata: {name: inventory-0, labels: {app: inventory}}\nspec:\n  containers:\n    - {name: app, image: example/inventory, readinessProbe: {httpGet: {path: /ready, port: 8080}}}\n"),
    )
    .await;
    let orders = create(
        &client,
        n,
        &pod(&format!(
            "metadata: {{name: orders-0, labels: {{app: orders}}}}\nspec:\n  serviceAccountName: orders\n  containers:\n    - name: app\n      image: example/orders\n      env:\n        - {{name: HTTP_PROXY, value: 'http://127.0.0.1:15081'}}\n        - {{name: INVENTORY_URL, value: 'http://inventory.{n}.svc/stock'}}\n      readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}\n"
        )),
    )
    .await;

    let network = PodNetwork::create().expect("pod network (needs root)");
    let images = Images::from([
        sidecar_image().expect("the sidecar image"),
        example_app("example/auth", "auth.py"),
        example_app("example/orders", "orders.py"),
        example_app("example/inventory", "inventory.py"),
    ]);
    let logs = logs_dir();
    let auth_running = RunningPod::start(&client, &network, &auth, &images, &[], &logs)
        .await
        .expect("auth runs");
    let auth_route = route(n, "auth", 443, &network, &auth_running);
    let inventory_running = RunningPod::start(
        &client,
        &network,
        &inventory,
        &images,
        std::slice::from_ref(&auth_route),
        &logs,
    )
    .await
    .expect("inventory runs");
    let inventory_route = route(n, "inventory", 80, &network, &inventory_running);
    let orders_running = RunningPod::start(
        &client,
        &network,
        &orders,
        &images,
        &[auth_route, inventory_route],
        &logs,
    )
    .await
    .expect("orders runs");
    for running in [&auth_running, &inventory_running, &orders_running] {
        sidecar_ready(SocketAddr::from((running.ip, 15090)))
            .await
            .expect("the sidecar gets ready");
    }

    // Alice's token, as the issuer signs it, for orders.
    let keys = signing_keys(&client, n, "auth").await.unwrap();
    let issuer_url = format!("https://auth.{n}.svc");
    let token_for = |audience: &str| {
        sign(
            &keys,
            &Claims {
                issuer: &issuer_url,
                subject: "user:alice",
                audience,
                scope: "read:orders read:stock",
                client_id: &format!("{n}.web"),
                ttl: 300,
            },
        )
        .expect("token")
    };
    let alice = token_for(&format!("https://orders.{n}.svc"));

    let orders_at = SocketAddr::from((orders_running.ip, 15080));
    let authorization = format!("Bearer {alice}");
    let answer: Value = eventually("orders' call to inventory for alice", || async {
        let response = request(
            orders_at,
            "GET",
            "/stock",
            &[("Authorization", authorization.as_str())],
            "",
        )?;
        ensure!(
            response.status == 200,
            "{}: {}",
            response.status,
            response.body
        );
        let body: Value = serde_json::from_str(&response.body)?;
        ensure!(body["inventory_status"] == 200, "{body}");
        Ok(body)
    })
    .await
    .unwrap();
    let caller = &answer["inventory"]["caller"];
    let orders_id = format!("{n}.orders");
    assert_eq!(caller["subject"], "user:alice", "{answer}");
    assert_eq!(caller["client_id"], json!(orders_id), "{answer}");
    assert_eq!(caller["actor"], json!(orders_id), "{answer}");
    assert_eq!(caller["act"], json!({"sub": orders_id}), "{answer}");
    // Only what both alice's token and orders' client allow.
    assert_eq!(caller["scopes"], "read:stock", "{answer}");

    // Inside orders' pod, through the egress port, as a compromised app would.
    let through_egress = |authorization: Option<&str>| {
        let mut command = orders_running.command_in_pod("curl");
        command.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"]);
        command.args(["-x", "http://127.0.0.1:15081"]);
        if let Some(value) = authorization {
            command.args(["-H", &format!("Authorization: {value}")]);
        }
        let output = command
            .arg(format!("http://inventory.{n}.svc/stock"))
            .output()
            .expect("curl in the pod");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().to_owned(), body.to_owned())
    };
    let (status, _) = through_egress(Some(&authorization));
    assert_eq!(status, "200", "alice's token through the egress port");
    let (status, body) = through_egress(None);
    assert_eq!(status, "400", "no caller token: {body}");
    assert!(body.contains("caller_token_required"), "{body}");
    assert!(
        body.contains("inventory"),
        "the refusal names the target: {body}"
    );
    // A token alice sent to inventory directly was never orders' to exchange.
    let elsewhere = format!(
        "Bearer {}",
        token_for(&format!("https://inventory.{n}.svc"))
    );
    let (status, body) = through_egress(Some(&elsewhere));
    assert_eq!(status, "403", "a token not sent to orders: {body}");
    assert!(body.contains("caller_token_refused"), "{body}");
    assert!(body.contains("invalid_request"), "{body}");
    // A token signed by a key of the attacker's own.
    let mut forged = alice.clone();
    forged.truncate(forged.rfind('.').expect("a JWS") + 1);
    forged.push_str(&"A".repeat(86));
    let (status, body) = through_egress(Some(&format!("Bearer {forged}")));
    assert_eq!(status, "403", "a forged token: {body}");

    // Revoking alice's token revokes what was exchanged from it: inventory refuses the
    // exchanged token that orders' sidecar still has cached for her.
    let web_secret = scopegate_e2e::secret_text(&client, n, "web-oauth-client", "client_secret")
        .await
        .unwrap()
        .expect("web's secret");
    let endpoint = IssuerEndpoint::new(
        &client,
        n,
        "auth",
        SocketAddr::from((auth_running.ip, 15080)),
        &logs.join(n),
    )
    .await
    .unwrap();
    let (status, body) = endpoint.post(
        "/oauth2/revoke",
        &[("token", alice.as_str())],
        Some(&format!("{n}.web:{web_secret}")),
    );
    assert_eq!(status, 200, "{body}");
    eventually("inventory refuses the exchanged token", || async {
        let (status, body) = through_egress(Some(&authorization));
        ensure!(status == "401", "{status}: {body}");
        Ok(())
    })
    .await
    .unwrap();

    drop((orders_running, inventory_running, auth_running));
    ns.delete().await.unwrap();
}

/// The team of another namespace registers a client with the shop's issuer (which lets its
/// namespace register) and declares a token exchange from the shop's orders audience to the
/// shop's inventory: tokens sent to orders are not theirs to exchange, and inventory does not
/// admit them. The client's status says so, it is not Ready, and the registry gives it no
/// exchange; the shop's own client with the same declaration gets one.
#[tokio::test]
async fn a_tenant_cannot_exchange_tokens_sent_to_another_namespace() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let shop = TestNamespace::create(&client, "exchange-shop")
        .await
        .unwrap();
    let evil = TestNamespace::create(&client, "exchange-evil")
        .await
        .unwrap();
    let (s, e) = (shop.name.as_str(), evil.name.as_str());
    let issuer = manifests::issuer(s, "auth")
        .scopes("read:orders: Read orders, read:stock: Read stock")
        .with(&format!("allowedClientNamespaces: [{e}]"));
    apply_yaml::<AuthPolicy>(&client, s, &issuer.yaml())
        .await
        .unwrap();
    for policy in stock_policies(s) {
        apply_yaml::<AuthPolicy>(&client, s, &policy).await.unwrap();
    }
    // The tenant's own service, whose audience it owns: a target it may have.
    let loot = format!(
        "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: loot}}\nspec:\n  selector: {{matchLabels: {{app: loot}}}}\n  issuer: {{policyRef: {{name: auth, namespace: {s}}}}}\n  audiences: [https://loot.{e}.svc]\n  upstream: {{port: 8080}}\n"
    );
    apply_yaml::<AuthPolicy>(&client, e, &loot).await.unwrap();
    let exchanging = |issuer_ref: &str, targets: &str| {
        manifests::oauth_client(
            "orders",
            issuer_ref,
            &format!(
                "scopes: [read:stock]\ntokenExchange: {{subjectAudiences: [https://orders.{s}.svc], audiences: [{targets}]}}"
            ),
        )
    };
    let theirs = exchanging(
        &format!("name: auth, namespace: {s}"),
        &format!("https://inventory.{s}.svc, https://loot.{e}.svc"),
    );
    apply_yaml::<OAuthClient>(&client, e, &theirs)
        .await
        .unwrap();
    let ours = exchanging("name: auth", &format!("https://inventory.{s}.svc"));
    apply_yaml::<OAuthClient>(&client, s, &ours).await.unwrap();

    let theirs: Api<OAuthClient> = Api::namespaced(client.clone(), e);
    let message = eventually("the tenant's exchange refused in its status", || async {
        let status = theirs.get("orders").await?.status.unwrap_or_default();
        let ready = scopegate_e2e::condition(&status.conditions, "Ready")
            .ok_or_else(|| anyhow::anyhow!("no Ready yet"))?;
        ensure!(
            ready.status == "False" && ready.reason == "ExchangeAudienceRefused",
            "{:?}",
            status.conditions
        );
        Ok(ready.message.clone())
    })
    .await
    .unwrap();
    assert!(
        message.contains("must be owned by this namespace"),
        "{message}"
    );
    assert!(message.contains("does not admit this client"), "{message}");
    // Its own audience is admitted: what disables the exchange is the subject audience alone.
    assert!(!message.contains(&format!("loot.{e}")), "{message}");
    assert!(
        message.contains("may not exchange tokens at all"),
        "{message}"
    );

    let registry = eventually("both clients in the registry", || async {
        let text = scopegate_e2e::secret_text(&client, s, "auth-clients", "clients.json")
            .await?
            .unwrap_or_default();
        let registry: Value = serde_json::from_str(&text)?;
        let clients = registry["clients"].as_array().cloned().unwrap_or_default();
        ensure!(clients.len() == 2, "{text}");
        Ok(clients)
    })
    .await
    .unwrap();
    let entry = |id: &str| {
        registry
            .iter()
            .find(|c| c["clientId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} registered: {registry:?}"))
    };
    let tenant = entry(&format!("{e}.orders"));
    assert!(tenant.get("tokenExchange").is_none(), "{tenant}");
    assert!(
        !tenant["grantTypes"].to_string().contains("token-exchange"),
        "{tenant}"
    );
    let own = entry(&format!("{s}.orders"));
    assert_eq!(
        own["tokenExchange"]["subjectAudiences"],
        json!([format!("https://orders.{s}.svc")]),
        "{own}"
    );
    assert!(
        own["grantTypes"].to_string().contains("token-exchange"),
        "{own}"
    );

    evil.delete().await.unwrap();
    shop.delete().await.unwrap();
}

/// The egress section of policy `billing` of `n` (None while its config or the section is
/// missing), and the message of a condition that refuses its egress (None without one).
async fn egress_state(client: &Client, n: &str) -> anyhow::Result<(Option<Value>, Option<String>)> {
    let policy = Api::<AuthPolicy>::namespaced(client.clone(), n)
        .get("billing")
        .await?;
    let refusal = (policy.status.iter().flat_map(|s| &s.conditions))
        .find(|c| c.message.contains("spec.egress"))
        .map(|c| c.message.clone());
    let text = scopegate_e2e::config_map_text(client, n, "billing-sidecar", "config.json").await?;
    let section = match text {
        Some(text) => serde_json::from_str::<Value>(&text)?.get("egress").cloned(),
        None => None,
    };
    Ok((section, refusal))
}

/// Waits until `billing`'s egress is refused for `why` and absent from its config.
async fn egress_refused_for(client: &Client, n: &str, why: &str) -> anyhow::Result<()> {
    eventually(&format!("EgressRefused: {why}"), || async {
        let (section, refusal) = egress_state(client, n).await?;
        let refusal = refusal.unwrap_or_default();
        ensure!(refusal.contains(why), "{refusal}");
        ensure!(section.is_none(), "still rendered: {section:?}");
        Ok(())
    })
    .await
}

/// Waits until `billing`'s egress renders a token endpoint at `issuer_url`, unrefused.
async fn egress_rendered_at(client: &Client, n: &str, issuer_url: &str) -> anyhow::Result<Value> {
    eventually("the egress rendered", || async {
        let (section, refusal) = egress_state(client, n).await?;
        ensure!(refusal.is_none(), "{refusal:?}");
        let section = section.ok_or_else(|| anyhow::anyhow!("no egress"))?;
        ensure!(section["tokenAudience"] == issuer_url, "{section}");
        Ok(section)
    })
    .await
}

/// Billing's policy trusts another issuer (`front`) than the one its egress client is
/// registered with (`auth`): nothing of `auth` is in its trust, yet every change of `auth`
/// that its egress renders (created after the policy, registering the client, its url,
/// withdrawing, deleted) reaches its config within `eventually`'s minute, not at the hourly
/// resync. A tenant's issuer-looking `auth` and client `billing` wake only their own.
#[tokio::test]
async fn egress_follows_its_clients_issuer_not_a_tenants() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::create(&client, "egress-follow")
        .await
        .unwrap();
    let n = ns.name.as_str();
    let front = manifests::issuer(n, "front");
    apply_yaml::<AuthPolicy>(&client, n, &front.yaml())
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(&client, n, &orders_policy(n))
        .await
        .unwrap();
    let billing = |n: &str| {
        manifests::oauth_client(
            "billing",
            "name: auth",
            &format!(
                "scopes: [read:orders]\nserviceAccounts: [billing]\naudiences: [https://orders.{n}.svc]"
            ),
        )
    };
    apply_yaml::<OAuthClient>(&client, n, &billing(n))
        .await
        .unwrap();
    let policy = billing_policy(n).replace("policyRef: {name: auth}", "policyRef: {name: front}");
    apply_yaml::<AuthPolicy>(&client, n, &policy).await.unwrap();
    egress_refused_for(&client, n, "its issuerRef names no issuing AuthPolicy")
        .await
        .unwrap();

    // The issuer comes after the policy, without the client's scope: not registered.
    let without = manifests::issuer(n, "auth").scopes("other: Other");
    apply_yaml::<AuthPolicy>(&client, n, &without.yaml())
        .await
        .unwrap();
    let unregistered = "its issuer does not register it: scope read:orders is not declared";
    egress_refused_for(&client, n, unregistered).await.unwrap();
    let with = manifests::issuer(n, "auth").scopes("read:orders: Read orders");
    apply_yaml::<AuthPolicy>(&client, n, &with.yaml())
        .await
        .unwrap();
    let url = format!("https://auth.{n}.svc");
    let section = egress_rendered_at(&client, n, &url).await.unwrap();
    assert_eq!(section["clientId"], format!("{n}.billing"));
    // Its url changes: the token endpoint and the assertion's audience follow.
    let moved = with
        .yaml()
        .replace(&format!("url: {url}\n"), &format!("url: {url}/v2\n"));
    assert_ne!(moved, with.yaml());
    apply_yaml::<AuthPolicy>(&client, n, &moved).await.unwrap();
    let section = egress_rendered_at(&client, n, &format!("{url}/v2"))
        .await
        .unwrap();
    assert_eq!(
        section["tokenEndpoint"],
        format!("https://auth.{n}.svc.cluster.local/v2/oauth2/token")
    );
    apply_yaml::<AuthPolicy>(&client, n, &with.yaml())
        .await
        .unwrap();
    let section = egress_rendered_at(&client, n, &url).await.unwrap();

    // The tenant: an issuer-looking "auth", a client "billing" of it, a policy "billing"
    // with egress; then its issuer withdraws the scope. Its policy follows; ours does not
    // move.
    let evil = TestNamespace::create(&client, "egress-follow-evil")
        .await
        .unwrap();
    let e = evil.name.as_str();
    let theirs = manifests::issuer(e, "auth").scopes("read:orders: Read orders");
    apply_yaml::<AuthPolicy>(&client, e, &theirs.yaml())
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(&client, e, &orders_policy(e))
        .await
        .unwrap();
    apply_yaml::<OAuthClient>(&client, e, &billing(e))
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(&client, e, &billing_policy(e))
        .await
        .unwrap();
    let their_section = egress_rendered_at(&client, e, &format!("https://auth.{e}.svc"))
        .await
        .unwrap();
    assert_eq!(their_section["clientId"], format!("{e}.billing"));
    let their_without = manifests::issuer(e, "auth").scopes("other: Other");
    apply_yaml::<AuthPolicy>(&client, e, &their_without.yaml())
        .await
        .unwrap();
    egress_refused_for(&client, e, unregistered).await.unwrap();
    assert_eq!(
        egress_state(&client, n).await.unwrap(),
        (Some(section), None)
    );
    evil.delete().await.unwrap();

    // Our issuer withdraws the scope, then comes back, then goes.
    apply_yaml::<AuthPolicy>(&client, n, &without.yaml())
        .await
        .unwrap();
    egress_refused_for(&client, n, unregistered).await.unwrap();
    apply_yaml::<AuthPolicy>(&client, n, &with.yaml())
        .await
        .unwrap();
    egress_rendered_at(&client, n, &url).await.unwrap();
    Api::<AuthPolicy>::namespaced(client.clone(), n)
        .delete("auth", &Default::default())
        .await
        .unwrap();
    egress_refused_for(&client, n, "its issuerRef names no issuing AuthPolicy")
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

/// Policy `inventory` of `s`, trusting an outside issuer, owning `https://inventory.<s>.svc`,
/// with `clients` (the inside of its flow map).
fn inventory_owner(s: &str, clients: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: inventory}}
spec:
  selector: {{matchLabels: {{app: inventory}}}}
  issuer: {{external: {{issuer: "https://idp.example", jwksUri: "https://idp.example/jwks", algorithms: [ES256]}}}}
  audiences: [https://inventory.{s}.svc]
  clients: {{{clients}}}
  upstream: {{port: 8080}}
"#
    )
}

/// The message of policy `name` of `n` that refuses its egress target, if any.
async fn target_refusal(client: &Client, n: &str, name: &str) -> anyhow::Result<Option<String>> {
    let policy = Api::<AuthPolicy>::namespaced(client.clone(), n)
        .get(name)
        .await?;
    Ok((policy.status.iter().flat_map(|s| &s.conditions))
        .find(|c| c.message.contains("spec.egress target"))
        .map(|c| c.message.clone()))
}

/// An on-behalf-of target whose owner (another namespace) admits the client only as itself
/// is refused at render, naming the audience, its owner and the field to change; the owner
/// admitting it as an actor renders the target within `eventually`'s minute, and withdrawing
/// that refuses it again. A tenant claiming the same audience and admitting the client
/// changes nothing: it does not own the audience.
#[tokio::test]
async fn an_exchange_its_owner_does_not_admit_is_refused_at_render() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let shop = TestNamespace::create(&client, "admit-shop").await.unwrap();
    let stock = TestNamespace::create(&client, "admit-stock").await.unwrap();
    let evil = TestNamespace::create(&client, "admit-evil").await.unwrap();
    let (n, s, e) = (shop.name.as_str(), stock.name.as_str(), evil.name.as_str());
    let issuer =
        manifests::issuer(n, "auth").scopes("read:orders: Read orders, read:stock: Read stock");
    apply_yaml::<AuthPolicy>(&client, n, &issuer.yaml())
        .await
        .unwrap();
    let orders = manifests::oauth_client(
        "orders",
        "name: auth",
        &format!(
            "scopes: [read:stock]\nserviceAccounts: [orders]\ntokenExchange: {{subjectAudiences: [https://orders.{n}.svc], audiences: [https://inventory.{s}.svc]}}"
        ),
    );
    apply_yaml::<OAuthClient>(&client, n, &orders)
        .await
        .unwrap();
    let as_client = format!("names: [{{namespace: {n}, name: orders}}]");
    apply_yaml::<AuthPolicy>(&client, s, &inventory_owner(s, &as_client))
        .await
        .unwrap();
    let [policy, _] = stock_policies(n);
    let policy = policy.replace(
        &format!("https://inventory.{n}.svc"),
        &format!("https://inventory.{s}.svc"),
    );
    apply_yaml::<AuthPolicy>(&client, n, &policy).await.unwrap();
    let audience = format!("https://inventory.{s}.svc");
    let refused = || async {
        eventually("the target refused, naming owner and field", || async {
            let message = target_refusal(&client, n, "orders")
                .await?
                .unwrap_or_default();
            ensure!(
                message.contains(&format!(
                    "audience {audience} of client orders's tokenExchange.audiences is not admitted"
                )),
                "{message}"
            );
            ensure!(
                message.contains(&format!("its owner {s}/inventory")),
                "{message}"
            );
            ensure!(message.contains("spec.clients.actors"), "{message}");
            let config =
                scopegate_e2e::config_map_text(&client, n, "orders-sidecar", "config.json")
                    .await?
                    .unwrap_or_default();
            ensure!(!config.contains("\"egress\""), "still rendered: {config}");
            Ok(())
        })
        .await
    };
    refused().await.unwrap();

    // The tenant claims the audience and admits our client as an actor: not its to admit.
    let theirs = inventory_owner(
        s,
        &format!("actors: {{names: [{{namespace: {n}, name: orders}}]}}"),
    )
    .replace("name: inventory}", "name: loot}");
    apply_yaml::<AuthPolicy>(&client, e, &theirs).await.unwrap();
    eventually("the tenant's claim refused", || async {
        let policy = Api::<AuthPolicy>::namespaced(client.clone(), e)
            .get("loot")
            .await?;
        let conditions = serde_json::to_string(&policy.status.unwrap_or_default().conditions)?;
        ensure!(conditions.contains(&audience), "{conditions}");
        Ok(())
    })
    .await
    .unwrap();
    refused().await.unwrap();

    // The owner admits it as an actor: the target renders.
    let as_actor = format!("{as_client}, actors: {{names: [{{namespace: {n}, name: orders}}]}}");
    apply_yaml::<AuthPolicy>(&client, s, &inventory_owner(s, &as_actor))
        .await
        .unwrap();
    eventually("the target rendered", || async {
        ensure!(
            target_refusal(&client, n, "orders").await?.is_none(),
            "still refused"
        );
        let text = scopegate_e2e::config_map_text(&client, n, "orders-sidecar", "config.json")
            .await?
            .unwrap_or_default();
        let config: Value = serde_json::from_str(&text)?;
        let target = &config["egress"]["targets"][0];
        ensure!(target["audience"] == audience, "{config}");
        ensure!(target["onBehalfOfCaller"] == true, "{config}");
        Ok(())
    })
    .await
    .unwrap();
    // Withdrawn: refused again.
    apply_yaml::<AuthPolicy>(&client, s, &inventory_owner(s, &as_client))
        .await
        .unwrap();
    refused().await.unwrap();
    evil.delete().await.unwrap();
    stock.delete().await.unwrap();
    shop.delete().await.unwrap();
}
