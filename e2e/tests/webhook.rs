//! The injection webhook on a real API server: the chart installed with Helm, the API server
//! calling the operator process over TLS at a 127.0.0.1 URL with the caBundle the operator
//! keeps, and pods coming back with the sidecar (or refused, or untouched).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::manifests::external_policy;
use scopegate_e2e::setup::admin_client;
use scopegate_e2e::{ControlPlane, TestNamespace, apply_yaml, eventually, repo_root};

/// An admin client and a fresh namespace for `test`, labelled for injection or not.
async fn setup(test: &str, labelled: bool) -> (Client, TestNamespace) {
    let client = admin_client().await;
    let ns = if labelled {
        TestNamespace::for_injection(&client, test).await
    } else {
        TestNamespace::create(&client, test)
            .await
            .expect("namespace")
    };
    (client, ns)
}

fn pod(name: &str, app: &str) -> Pod {
    serde_yaml_ng::from_str(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  containers:
    - name: app
      image: example/app
      ports: [{{containerPort: 8080}}]
      readinessProbe: {{httpGet: {{path: /ready, port: 8080}}}}
"#
    ))
    .expect("pod YAML")
}

fn sidecars(pod: &Pod) -> usize {
    let spec = pod.spec.as_ref().expect("spec");
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == "scopegate-sidecar")
        .count()
}

/// The webhook configuration is read asynchronously by the API server: wait until a dry-run
/// pod comes back injected.
async fn wait_for_injection(client: &Client, ns: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually("the API server calling the webhook", || async {
        let created = api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &pod("probe", "orders"),
            )
            .await?;
        anyhow::ensure!(sidecars(&created) == 1, "not injected yet");
        Ok(())
    })
    .await
    .expect("injection");
}

#[tokio::test]
async fn selected_pods_get_a_locked_down_native_sidecar_and_others_are_untouched() {
    let (client, ns) = setup("inject", true).await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &external_policy("orders", "orders"))
        .await
        .unwrap();
    wait_for_injection(&client, &ns.name).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    let created = api
        .create(&PostParams::default(), &pod("orders-1", "orders"))
        .await
        .expect("created");
    let spec = created.spec.clone().unwrap();
    let sidecar = spec
        .init_containers
        .as_ref()
        .and_then(|c| c.first())
        .expect("native sidecar first");
    assert_eq!(sidecar.name, "scopegate-sidecar");
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar on 1.37"
    );
    assert_eq!(sidecar.image.as_deref(), Some("scopegate/sidecar:e2e"));
    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let probe = spec.containers[0]
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.path.as_deref(),
        Some("/app-health/app/readiness"),
        "the app's probe goes through the sidecar"
    );
    let config_volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "scopegate-config")
        .expect("config volume");
    assert_eq!(
        config_volume.config_map.as_ref().unwrap().name,
        "orders-sidecar"
    );
    assert_eq!(
        created.metadata.annotations.clone().unwrap_or_default()["scopegate.dev/injected"],
        "orders"
    );

    let other = api
        .create(&PostParams::default(), &pod("other-1", "other"))
        .await
        .unwrap();
    assert_eq!(sidecars(&other), 0, "an unselected pod is untouched");

    // Admitting an injected pod again (sidecar, volumes and annotation, as stored) injects
    // nothing more. (Without the annotation it would be refused: tenancy.rs.)
    let mut again = created.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("orders-2".into()),
        labels: Some(BTreeMap::from([("app".into(), "orders".into())])),
        annotations: created.metadata.annotations.clone(),
        ..Default::default()
    };
    let twice = api.create(&PostParams::default(), &again).await.unwrap();
    assert_eq!(sidecars(&twice), 1, "injected once");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn pods_in_unlabelled_namespaces_are_never_sent_to_the_webhook() {
    let (client, labelled) = setup("labelled", true).await;
    apply_yaml::<AuthPolicy>(
        &client,
        &labelled.name,
        &external_policy("orders", "orders"),
    )
    .await
    .unwrap();
    wait_for_injection(&client, &labelled.name).await;
    let (client, plain) = setup("plain", false).await;
    apply_yaml::<AuthPolicy>(&client, &plain.name, &external_policy("orders", "orders"))
        .await
        .unwrap();
    let created = Api::<Pod>::namespaced(client.clone(), &plain.name)
        .create(&PostParams::default(), &pod("orders-1", "orders"))
        .await
        .unwrap();
    assert_eq!(sidecars(&created), 0);
    labelled.delete().await.unwrap();
    plain.delete().await.unwrap();
}

#[tokio::test]
async fn the_chart_lints_and_every_rendered_object_is_accepted_by_the_api_server() {
    let plane = ControlPlane::from_env().expect("control plane");
    let helm = std::env::var("E2E_HELM").expect("E2E_HELM");
    let chart = repo_root().join("charts/scopegate");
    let lint = std::process::Command::new(&helm)
        .arg("lint")
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    for values in [
        vec![],
        vec![
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.namespaces={default}",
        ],
        vec!["--set", "replicas=1"],
        vec![
            "--set",
            "webhook.url=https://127.0.0.1:9443",
            "--set",
            "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
    ] {
        let rendered = std::process::Command::new(&helm)
            .args(["template", "chartcheck"])
            .arg(&chart)
            .args(["--namespace", "scopegate-system"])
            .args(&values)
            .output()
            .unwrap();
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let path =
            std::env::temp_dir().join(format!("scopegate-chart-{}.yaml", std::process::id()));
        // The installed release holds the one `scopegate-injector` and `scopegate-validator`
        // (one install per cluster):
        // a dry-run apply over it would merge the two; check the rendering under another name.
        let text = String::from_utf8(rendered.stdout).unwrap();
        assert!(text.contains("name: scopegate-injector\n"), "{text}");
        assert!(text.contains("name: scopegate-validator\n"), "{text}");
        let text = text
            .replace("name: scopegate-injector\n", "name: chartcheck-injector\n")
            .replace(
                "name: scopegate-validator\n",
                "name: chartcheck-validator\n",
            );
        std::fs::write(&path, text).unwrap();
        let applied = plane.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=chart-check",
            "--dry-run=server",
            "-f",
            path.to_str().unwrap(),
        ]);
        assert!(applied.is_ok(), "values {values:?}: {applied:?}");
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test]
async fn the_chart_spreads_replicas_selects_its_own_release_and_keeps_its_crds() {
    let helm = std::env::var("E2E_HELM").expect("E2E_HELM");
    let render = |chart: &str, values: &[&str]| {
        let output = std::process::Command::new(&helm)
            .args(["template", "one"])
            .arg(repo_root().join(chart))
            .args(["--namespace", "scopegate-system"])
            .args(values)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let documents = |text: &str| -> Vec<serde_json::Value> {
        text.split("\n---")
            .filter_map(|doc| serde_yaml_ng::from_str::<serde_json::Value>(doc).ok())
            .filter(|doc| doc.is_object())
            .collect()
    };
    let of_kind = |docs: &[serde_json::Value], kind: &str| -> Vec<serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
    };

    let single = documents(&render("charts/scopegate", &["--set", "replicas=1"]));
    assert!(
        of_kind(&single, "PodDisruptionBudget").is_empty(),
        "one replica: a PDB would block every drain"
    );
    let deployment = &of_kind(&single, "Deployment")[0];
    assert!(deployment["spec"]["template"]["spec"]["topologySpreadConstraints"].is_null());

    let pair = documents(&render("charts/scopegate", &["--set", "replicas=2"]));
    let pdb = &of_kind(&pair, "PodDisruptionBudget")[0];
    let deployment = &of_kind(&pair, "Deployment")[0];
    for selector in [
        &pdb["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
    ] {
        assert_eq!(selector["app.kubernetes.io/instance"], "one", "{selector}");
    }
    for service in of_kind(&pair, "Service") {
        assert_eq!(
            service["spec"]["selector"]["app.kubernetes.io/instance"], "one",
            "{service}"
        );
    }
    let keys: Vec<&str> = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["topologyKey"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );

    let crds = documents(&render("charts/scopegate-crds", &[]));
    assert_eq!(crds.len(), 2);
    for crd in crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{}",
            crd["metadata"]["name"]
        );
    }
}

#[tokio::test]
async fn a_second_install_of_the_chart_is_refused_and_the_first_may_upgrade() {
    // The e2e set-up installed release `scopegate` in scopegate-system (operator-up.sh).
    let plane = ControlPlane::from_env().expect("control plane");
    let helm = std::env::var("E2E_HELM").expect("E2E_HELM");
    let install = |release: &str, namespace: &str| {
        std::process::Command::new(&helm)
            .arg("--kubeconfig")
            .arg(&plane.kubeconfig)
            .args(["upgrade", "--install", release])
            .arg(repo_root().join("charts/scopegate"))
            .args(["--namespace", namespace, "--dry-run=server"])
            .args(["--set", "webhook.url=https://127.0.0.1:9443"])
            .output()
            .unwrap()
    };
    for (release, namespace) in [("scopegate", "tenant-b"), ("other", "scopegate-system")] {
        let second = install(release, namespace);
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            !second.status.success(),
            "{release} in {namespace} was allowed"
        );
        assert!(
            stderr.contains("scopegate is already installed in this cluster")
                && stderr
                    .contains("belongs to release scopegate in namespace \"scopegate-system\""),
            "{stderr}"
        );
    }
    let upgrade = install("scopegate", "scopegate-system");
    assert!(
        upgrade.status.success(),
        "{}",
        String::from_utf8_lossy(&upgrade.stderr)
    );
}

#[tokio::test]
async fn status_counts_pods_names_those_without_the_sidecar_and_spots_a_bypassing_service() {
    let (client, ns) = setup("podstatus", false).await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &external_policy("orders", "orders"))
        .await
        .unwrap();
    // The namespace is not labelled: these pods run without the sidecar.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for name in ["orders-a", "orders-b"] {
        pods.create(&PostParams::default(), &pod(name, "orders"))
            .await
            .unwrap();
    }
    let service: k8s_openapi::api::core::v1::Service = serde_yaml_ng::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: orders}\nspec:\n  selector: {app: orders}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    eventually("pods and the bypass in status", || async {
        let p = Api::<AuthPolicy>::namespaced(client.clone(), &ns.name)
            .get("orders")
            .await?;
        let status = p.status.ok_or_else(|| anyhow::anyhow!("no status"))?;
        anyhow::ensure!(
            status.selected_pods == Some(2) && status.injected_pods == Some(0),
            "{:?}/{:?}",
            status.selected_pods,
            status.injected_pods
        );
        anyhow::ensure!(
            status.uninjected_pods == ["orders-a", "orders-b"],
            "{:?}",
            status.uninjected_pods
        );
        let degraded = scopegate_e2e::condition(&status.conditions, "Degraded")
            .ok_or_else(|| anyhow::anyhow!("no Degraded"))?;
        anyhow::ensure!(degraded.status == "True", "{degraded:?}");
        anyhow::ensure!(
            degraded
                .message
                .contains("2 selected pods run without the sidecar"),
            "{}",
            degraded.message
        );
        anyhow::ensure!(
            degraded
                .message
                .contains("Service orders targets port 8080"),
            "{}",
            degraded.message
        );
        Ok(())
    })
    .await
    .unwrap();
    ns.delete().await.unwrap();
}
