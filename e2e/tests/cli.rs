//! `kubectl scopegate status` against the real API server with the operator running: one
//! namespace with an issuer policy, a verifier policy in DryRun, a client, and pods with and
//! without their sidecar; another tenant's namespace stays out of it, and a user without
//! RBAC gets exit code 3 naming what was refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use scopegate_e2e::manifests::{READ_ITEMS, app_pod, issuer, oauth_client};
use scopegate_e2e::setup::{injection_labels, service_account_kubeconfig};
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, condition, eventually};
use serde_json::Value;

/// The `kubectl-scopegate` binary: `$E2E_CLI_BIN`, else the debug build next to this test.
fn cli() -> PathBuf {
    if let Some(bin) = std::env::var_os("E2E_CLI_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/cli-<hash> -> target/debug/kubectl-scopegate
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .join("kubectl-scopegate");
    assert!(
        bin.is_file(),
        "{} not built: cargo build -p scopegate-cli (or set E2E_CLI_BIN)",
        bin.display()
    );
    bin
}

/// Runs the CLI with `kubeconfig`; returns exit code, stdout, stderr.
fn run(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cli())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("the CLI runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    - {{name: admin, paths: ["/admin/**"], require: [admin], enforcement: Enforce}}
    - {{name: items, paths: ["/items/**"], require: [read]}}
"#
    )
}

#[tokio::test]
async fn status_shows_policies_clients_and_pods_with_and_without_their_sidecar() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = TestNamespace::create(&client, "cli-status")
        .await
        .expect("namespace");
    let n = ns.name.clone();
    // Another tenant's namespace, with a policy and a pod of its own.
    let other = TestNamespace::create(&client, "cli-other")
        .await
        .expect("namespace");
    apply_yaml::<AuthPolicy>(&client, &other.name, &orders(&other.name))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &n);
    Api::<Pod>::namespaced(client.clone(), &other.name)
        .create(&PostParams::default(), &app_pod("intruder", "orders"))
        .await
        .unwrap();

    // A pod created before the namespace injects: selected, without a sidecar.
    pods.create(&PostParams::default(), &app_pod("orders-0", "orders"))
        .await
        .unwrap();
    ns.label(injection_labels()).await.unwrap();
    apply_yaml::<AuthPolicy>(
        &client,
        &n,
        &issuer(&n, "auth")
            .scopes("read: Read, admin: Admin")
            .spec(READ_ITEMS)
            .yaml(),
    )
    .await
    .unwrap();
    apply_yaml::<AuthPolicy>(&client, &n, &orders(&n))
        .await
        .unwrap();
    apply_yaml::<OAuthClient>(&client, &n, &oauth_client("billing", "name: auth", ""))
        .await
        .unwrap();
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), &n);
    let clients: Api<OAuthClient> = Api::namespaced(client.clone(), &n);
    eventually(
        "auth signing, orders trusting it, billing registered",
        || async {
            let auth = policies.get("auth").await?.status.context("no status")?;
            ensure!(auth.active_kid.is_some(), "no active key yet");
            let orders = policies.get("orders").await?.status.context("no status")?;
            let enforcing = condition(&orders.conditions, "Enforcing").context("no Enforcing")?;
            ensure!(
                enforcing.reason == "DryRun",
                "Enforcing is {}",
                enforcing.reason
            );
            let billing = clients.get("billing").await?.status.context("no status")?;
            ensure!(billing.client_id.is_some(), "no client id yet");
            Ok(())
        },
    )
    .await
    .expect("the operator reconciled");
    // The webhook configuration reaches the API server asynchronously.
    eventually("injection", || async {
        let probe = pods
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &app_pod("probe", "orders"),
            )
            .await?;
        let injected = probe
            .spec
            .and_then(|s| s.init_containers)
            .is_some_and(|c| c.iter().any(|c| c.name == "scopegate-sidecar"));
        ensure!(injected, "not injected yet");
        Ok(())
    })
    .await
    .expect("injection");
    for (name, app) in [("orders-1", "orders"), ("auth-0", "auth"), ("web-0", "web")] {
        pods.create(&PostParams::default(), &app_pod(name, app))
            .await
            .unwrap();
    }

    let kubeconfig = plane.kubeconfig.clone();
    let (code, out, err) = run(&kubeconfig, &["status", "-n", &n, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["kind"], "NamespaceStatus");
    assert_eq!(report["namespace"], n.as_str());
    assert_eq!(report["injection"], true);

    let auth = policies.get("auth").await.unwrap();
    let auth_status = auth.status.unwrap();
    let row = |name: &str| {
        report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("policy {name} in {report}"))
            .clone()
    };
    let auth_row = row("auth");
    assert_eq!(auth_row["issuer"], format!("self https://auth.{n}.svc"));
    assert_eq!(
        auth_row["activeKid"].as_str(),
        auth_status.active_kid.as_deref()
    );
    assert_eq!(
        auth_row["ready"],
        condition(&auth_status.conditions, "Ready").unwrap().status
    );
    assert_eq!(auth_row["enforcement"], "Enforce");
    assert!(auth_row["nextRotation"].is_string(), "{auth_row}");
    let keys = auth_row["keys"].as_array().unwrap();
    assert_eq!(keys.len(), auth_status.keys.len());
    assert!(keys.iter().any(|k| k["state"] == "active"), "{auth_row}");
    assert_eq!(
        (&auth_row["selectedPods"], &auth_row["injectedPods"]),
        (&1.into(), &1.into())
    );
    let orders_row = row("orders");
    assert_eq!(orders_row["issuer"], format!("policyRef {n}/auth"));
    assert_eq!(orders_row["enforcement"], "DryRun (Enforce: admin)");
    assert_eq!(
        (&orders_row["selectedPods"], &orders_row["injectedPods"]),
        (&2.into(), &1.into())
    );
    assert_eq!(report["policies"].as_array().unwrap().len(), 2);

    let billing = clients.get("billing").await.unwrap().status.unwrap();
    let client_row = &report["clients"][0];
    assert_eq!(client_row["name"], "billing");
    assert_eq!(client_row["issuer"], format!("{n}/auth"));
    assert_eq!(
        client_row["clientId"].as_str(),
        billing.client_id.as_deref()
    );
    assert_eq!(
        client_row["grants"],
        serde_json::json!(["client_credentials"])
    );

    let pod_rows: Vec<(String, Option<String>, bool)> = report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["policy"].as_str().map(str::to_owned),
                p["sidecar"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = |name: &str, policy: Option<&str>, sidecar: bool| {
        (name.to_owned(), policy.map(str::to_owned), sidecar)
    };
    let mut sorted = pod_rows.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            want("auth-0", Some("auth"), true),
            want("orders-0", Some("orders"), false),
            want("orders-1", Some("orders"), true),
            want("web-0", None, false),
        ],
        "the other namespace's pod is not listed"
    );

    // The screen a person reads.
    let (code, table, err) = run(&kubeconfig, &["status", "-n", &n]);
    assert_eq!(code, 0, "{err}");
    for want in [
        format!("NAMESPACE {n}   injection enabled"),
        "DryRun (Enforce: admin)".to_owned(),
        "MISSING: restart the pod".to_owned(),
        "KEYS OF auth".to_owned(),
        "billing".to_owned(),
    ] {
        assert!(table.contains(&want), "missing {want:?} in:\n{table}");
    }
    assert!(!table.contains("intruder"), "{table}");

    // Someone without RBAC learns it was refused, and what, with exit code 3.
    let nobody = service_account_kubeconfig(&client, &n, "nobody")
        .await
        .expect("kubeconfig");
    let (code, out, err) = run(&nobody, &["status"]);
    assert_eq!(code, 3, "stdout {out}\nstderr {err}");
    assert!(
        err.contains("forbidden") && err.contains("authpolicies"),
        "{err}"
    );
    let _ = std::fs::remove_file(&nobody);

    other.delete().await.unwrap();
    ns.delete().await.unwrap();
}
