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
use scopegate_e2e::http::request;
use scopegate_e2e::kubelet::{
    Images, PodNetwork, RunningPod, ServiceRoute, example_app, sidecar_image,
};
use scopegate_e2e::ready::sidecar_ready;
use scopegate_e2e::setup::logs_dir;
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
    let auth_route = ServiceRoute {
        names: vec![
            format!("auth.{n}.svc"),
            format!("auth.{n}.svc.cluster.local"),
        ],
        cluster_ip: network.cluster_ip(),
        port: 443,
        endpoint: SocketAddr::from((auth_running.ip, 15080)),
    };
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
    let orders_route = ServiceRoute {
        names: vec![
            format!("orders.{n}.svc"),
            format!("orders.{n}.svc.cluster.local"),
        ],
        cluster_ip: network.cluster_ip(),
        port: 80,
        endpoint: SocketAddr::from((orders_running.ip, 15080)),
    };
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
