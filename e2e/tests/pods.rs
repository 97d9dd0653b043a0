//! Pods played as a kubelet would: created through the API server (so injected by the
//! webhook), then run as processes in network and mount namespaces of their own, with the
//! objects the operator rendered mounted where the pod spec says. Requests then go through the
//! real sidecar in front of the example app.

use std::net::SocketAddr;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::http::{Response, request};
use scopegate_e2e::kubelet::{Images, PodNetwork, RunningPod, example_app, sidecar_image};
use scopegate_e2e::manifests;
use scopegate_e2e::ready::sidecar_ready;
use scopegate_e2e::rendered::{signing_keys, wait_trusting_a_key};
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::tokens::{Claims, sign};
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, eventually};

fn images() -> Images {
    Images::from([
        sidecar_image().expect("the sidecar image"),
        example_app("example/orders", "orders.py"),
    ])
}

const ORDERS: &str = r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {name: orders}
spec:
  selector: {matchLabels: {app: orders}}
  issuer: {policyRef: {name: auth}}
  audiences: [https://orders]
  upstream: {port: 8080}
  rules:
    - {paths: ["/healthz"], public: true}
    - {methods: [GET], paths: ["/orders", "/orders/*"], require: [read:orders]}
    - {methods: [POST], paths: ["/orders"], require: [write:orders]}
  rateLimits:
    - {name: place-order, methods: [POST], paths: ["/orders"], requests: 3, period: 1m}
"#;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_running_pod_answers_200_401_403_and_429_as_the_policy_says_and_follows_an_edit() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "pods").await;
    // URLs naming this namespace's Services: tests in other namespaces cannot claim them.
    let issuer = format!("https://auth.{}.svc", ns.name);
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &manifests::issuer(&ns.name, "auth")
            .scopes("read:orders: Read, write:orders: Write")
            .yaml(),
    )
    .await
    .unwrap();
    let audience = format!("https://orders.{}.svc", ns.name);
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &ORDERS.replace("https://orders", &audience),
    )
    .await
    .unwrap();
    wait_trusting_a_key(&client, &ns.name, "orders")
        .await
        .unwrap();

    let pod = eventually("the pod created with the sidecar", || async {
        let pod = Api::<Pod>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &manifests::orders_pod("orders-0"))
            .await?;
        Ok(pod)
    })
    .await
    .unwrap();
    let network = PodNetwork::create().expect("pod network (needs root)");
    let logs = logs_dir();
    let running = RunningPod::start(&client, &network, &pod, &images(), &[], &logs)
        .await
        .expect("pod runs");
    let admin = SocketAddr::from((running.ip, 15090));
    let service = SocketAddr::from((running.ip, 15080));
    sidecar_ready(admin).await.expect("sidecar ready");
    // The app starts next to the sidecar; the public route answers once it listens.
    eventually("the app behind the sidecar", || async move {
        let response = request(service, "GET", "/healthz", &[], "")?;
        ensure!(response.status == 200, "healthz {}", response.status);
        Ok(())
    })
    .await
    .unwrap();

    let keys = signing_keys(&client, &ns.name, "auth").await.unwrap();
    let token = |scope: &str| {
        sign(
            &keys,
            &Claims {
                issuer: &issuer,
                subject: "user:alice",
                audience: &audience,
                scope,
                client_id: "shop.web",
                ttl: 300,
            },
        )
        .expect("token")
    };
    let get = |path: &str, auth: Option<String>| -> Response {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        request(service, "GET", path, &headers, "").expect("request")
    };

    let ok = get("/orders", Some(bearer(&token("read:orders"))));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(
        ok.body.contains("user:alice"),
        "the app sees the caller: {}",
        ok.body
    );
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));

    let none = get("/orders", None);
    assert_eq!(none.status, 401);
    let challenge = none.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    assert!(
        !challenge.contains("error="),
        "no error code without credentials: {challenge}"
    );

    let forged = get(
        "/orders",
        Some(bearer(&format!("{}x", token("read:orders")))),
    );
    assert_eq!(forged.status, 401);
    assert!(
        forged
            .header("www-authenticate")
            .unwrap_or_default()
            .contains(r#"error="invalid_token""#)
    );

    let weak = get("/orders", Some(bearer(&token("write:orders"))));
    assert_eq!(weak.status, 403);
    let challenge = weak
        .header("www-authenticate")
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.contains(r#"error="insufficient_scope""#) && challenge.contains("read:orders"),
        "{challenge}"
    );

    let malformed = request(
        service,
        "GET",
        "/orders",
        &[("Authorization", "Bearer a b c")],
        "",
    )
    .unwrap();
    assert_eq!(malformed.status, 400);

    assert_eq!(get("/healthz", None).status, 200, "public route");
    let sneaky = get("/orders/../admin", Some(bearer(&token("read:orders"))));
    assert_ne!(sneaky.status, 200, "a spelling cannot reach another route");

    let write = bearer(&token("write:orders"));
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            request(
                service,
                "POST",
                "/orders",
                &[("Authorization", write.as_str())],
                "{}",
            )
            .unwrap()
            .status
        })
        .collect();
    assert_eq!(statuses, [201, 201, 201, 429], "three per minute, then 429");
    let limited = request(
        service,
        "POST",
        "/orders",
        &[("Authorization", write.as_str())],
        "{}",
    )
    .unwrap();
    assert!(
        limited.header("retry-after").is_some(),
        "429 says when to retry"
    );

    // A policy edit reaches the running sidecar through the mounted ConfigMap.
    let edit = serde_json::json!({"spec": {"rules": [{"paths": ["/orders", "/orders/*"], "public": true}]}});
    Api::<AuthPolicy>::namespaced(client.clone(), &ns.name)
        .patch("orders", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually("the edit in the running sidecar", || async {
        let response = request(service, "GET", "/orders", &[], "")?;
        ensure!(response.status == 200, "still {}", response.status);
        Ok(())
    })
    .await
    .unwrap();

    drop(running);
    drop(network);
    ns.delete().await.context("cleanup").unwrap();
}
