//! A DryRun rollout end to end: a running pod (played as a kubelet would, with the real
//! sidecar in front of the example app) whose AuthPolicy starts in DryRun, then is switched
//! to Enforce by a spec change, as GitOps would, and follows it without a restart.

use std::net::SocketAddr;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::http::{Response, request};
use scopegate_e2e::kubelet::{Images, PodNetwork, RunningPod, example_app, sidecar_image};
use scopegate_e2e::manifests::{issuer, orders_pod};
use scopegate_e2e::rendered::{signing_keys, wait_trusting_a_key};
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::tokens::{Claims, sign};
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, condition, eventually};

fn images() -> Images {
    Images::from([
        sidecar_image().expect("the sidecar image"),
        example_app("example/orders", "orders.py"),
    ])
}

fn orders(ns: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: orders}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  issuer: {{policyRef: {{name: auth}}}}
  audiences: [https://orders.{ns}.svc]
  enforcement: DryRun
  upstream: {{port: 8080}}
  rules:
    - {{name: health, paths: ["/healthz"], public: true}}
    - {{name: read, methods: [GET], paths: ["/orders", "/orders/*"], require: [read:orders]}}
"#
    )
}

/// The `Enforcing` condition's reason once the status describes the current generation.
async fn enforcing(api: &Api<AuthPolicy>, want: &str) {
    eventually(&format!("Enforcing {want}"), || async {
        let p = api.get("orders").await?;
        let status = p.status.context("no status")?;
        ensure!(
            status.observed_generation == p.metadata.generation,
            "older status"
        );
        let c = condition(&status.conditions, "Enforcing").context("no Enforcing")?;
        ensure!(
            c.reason == want,
            "Enforcing is {} ({})",
            c.reason,
            c.message
        );
        Ok(())
    })
    .await
    .expect("the Enforcing condition");
}

/// The value of one series of the sidecar's metrics (0 when absent).
fn metric(admin: SocketAddr, series: &str) -> u64 {
    let text = request(admin, "GET", "/metrics", &[], "")
        .expect("metrics")
        .body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_running_pod_in_dry_run_forwards_and_counts_then_enforces_after_a_spec_change() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::for_injection(&client, "dry-run").await;
    let issuer = issuer(&ns.name, "auth").scopes("read:orders: Read, write:orders: Write");
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer.yaml())
        .await
        .unwrap();
    apply_yaml::<AuthPolicy>(&client, &ns.name, &orders(&ns.name))
        .await
        .unwrap();
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns.name);
    enforcing(&policies, "DryRun").await;
    let table = plane.kubectl(&["get", "ap", "-n", &ns.name]).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("orders"))
        .unwrap_or_default();
    assert!(
        table.contains("ENFORCEMENT") && row.contains("DryRun"),
        "{table}"
    );
    wait_trusting_a_key(&client, &ns.name, "orders")
        .await
        .unwrap();

    let pod = eventually("the pod created with the sidecar", || async {
        Ok(Api::<Pod>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &orders_pod("orders-0"))
            .await?)
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
    eventually("the app behind the sidecar", || async move {
        let response = request(service, "GET", "/healthz", &[], "")?;
        ensure!(response.status == 200, "healthz {}", response.status);
        Ok(())
    })
    .await
    .unwrap();

    let keys = signing_keys(&client, &ns.name, "auth").await.unwrap();
    let audience = format!("https://orders.{}.svc", ns.name);
    let issuer_url = format!("https://auth.{}.svc", ns.name);
    let token = |scope: &str| {
        sign(
            &keys,
            &Claims {
                issuer: &issuer_url,
                subject: "user:alice",
                audience: &audience,
                scope,
                client_id: "shop.web",
                ttl: 300,
            },
        )
        .expect("token")
    };
    let get = |path: &str, headers: &[(&str, &str)]| -> Response {
        request(service, "GET", path, headers, "").expect("request")
    };
    let caller = |r: &Response| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&r.body).expect("the app's JSON")["caller"]
            .clone()
    };

    // DryRun: what the rule would refuse reaches the app, with an identity only for a valid
    // token, never the one a client claims.
    let none = get(
        "/orders",
        &[("X-Auth-Subject", "root"), ("x_auth_scopes", "admin")],
    );
    assert_eq!(none.status, 200, "{none:?}");
    assert_eq!(
        caller(&none)["subject"],
        serde_json::Value::Null,
        "{}",
        none.body
    );
    let forged = format!("Bearer {}x", token("read:orders"));
    let bad = get("/orders", &[("Authorization", &forged)]);
    assert_eq!(bad.status, 200);
    assert_eq!(
        caller(&bad)["subject"],
        serde_json::Value::Null,
        "{}",
        bad.body
    );
    let weak = format!("Bearer {}", token("write:orders"));
    let weak = get("/orders", &[("Authorization", &weak)]);
    assert_eq!(weak.status, 200);
    assert_eq!(caller(&weak)["subject"], "user:alice", "{}", weak.body);
    assert_eq!(caller(&weak)["scopes"], "write:orders");
    assert_eq!(
        get("/orders%2F..%2Fadmin", &[]).status,
        400,
        "paths stay enforced"
    );
    let series = |outcome: &str, enforced: &str| {
        format!(
            "scopegate_decisions_total{{rule=\"read\",outcome=\"{outcome}\",enforced=\"{enforced}\"}}"
        )
    };
    assert_eq!(metric(admin, &series("no_credentials", "false")), 1);
    assert_eq!(metric(admin, &series("invalid_token", "false")), 1);
    assert_eq!(metric(admin, &series("insufficient_scope", "false")), 1);

    // GitOps switches to Enforce: the running sidecar follows through the mounted ConfigMap.
    let enforce = serde_json::json!({"spec": {"enforcement": "Enforce"}});
    policies
        .patch("orders", &PatchParams::default(), &Patch::Merge(&enforce))
        .await
        .unwrap();
    enforcing(&policies, "Enforced").await;
    eventually("Enforce in the running sidecar", || async {
        let response = request(service, "GET", "/orders", &[], "")?;
        ensure!(response.status == 401, "still {}", response.status);
        Ok(())
    })
    .await
    .unwrap();
    let weak = format!("Bearer {}", token("write:orders"));
    assert_eq!(get("/orders", &[("Authorization", &weak)]).status, 403);
    let good = format!("Bearer {}", token("read:orders"));
    let ok = get("/orders", &[("Authorization", &good)]);
    assert_eq!(ok.status, 200);
    assert_eq!(caller(&ok)["subject"], "user:alice");
    // The same process: what it counted in DryRun is still there, next to the refusals.
    assert_eq!(metric(admin, &series("insufficient_scope", "false")), 1);
    assert_eq!(metric(admin, &series("insufficient_scope", "true")), 1);
    assert!(metric(admin, &series("no_credentials", "true")) >= 1);

    drop(running);
    drop(network);
    ns.delete().await.context("cleanup").unwrap();
}
