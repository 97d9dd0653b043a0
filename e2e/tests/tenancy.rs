//! Tenant isolation on the real control plane, written as the attacker: a team in a namespace
//! of its own (`e2e-evil-…`) tries to get a selected pod admitted without its sidecar (while
//! the webhook's cache is cold, with a fake sidecar, with a forged "injected" annotation), to
//! send traffic around the sidecar (a Service on the app's port, opening the NetworkPolicy,
//! a direct connection to the app's port past the port lock, a port lock of its own), and to
//! hand the mint socket to a container the policy does not name or log a user in outside the
//! policy's mint subjects. Each attempt fails, and the refusal or the status it gets is
//! asserted.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::http::request;
use scopegate_e2e::kubelet::{Images, PodNetwork, RunningPod, sidecar_image};
use scopegate_e2e::manifests::{external_policy, issuer};
use scopegate_e2e::ports::free_port;
use scopegate_e2e::setup::{injection_labels, logs_dir, service_account_kubeconfig};
use scopegate_e2e::{
    ControlPlane, FIELD_MANAGER, OperatorProcess, TestNamespace, apply_yaml, condition, eventually,
};

const SIDECAR: &str = "scopegate-sidecar";
const INJECTED: &str = "scopegate.dev/injected";

/// The evil team's namespace, with `labels` (a JSON object).
async fn evil_namespace(client: &Client, labels: serde_json::Value) -> TestNamespace {
    TestNamespace::create_labelled(client, "evil", labels).await
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
      ports: [{{name: web, containerPort: 8080}}]
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
        .filter(|c| c.name == SIDECAR)
        .count()
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

/// Creates `pod` (dry run) and returns the refusal's message; fails when it is admitted.
async fn refusal(api: &Api<Pod>, pod: &Pod) -> anyhow::Result<String> {
    match api.create(&dry_run(), pod).await {
        Ok(admitted) => bail!(
            "admitted with {} sidecar(s): {:?}",
            sidecars(&admitted),
            admitted.metadata.annotations
        ),
        Err(kube::Error::Api(status)) => Ok(status.message),
        Err(other) => Err(other.into()),
    }
}

/// Waits until the API server calls the shared webhook for this namespace (it reads webhook
/// configurations asynchronously): a dry-run pod comes back injected.
async fn wait_for_injection(api: &Api<Pod>, app: &str) -> Pod {
    eventually("the API server calling the webhook", || async {
        let created = api.create(&dry_run(), &pod("probe", app)).await?;
        ensure!(sidecars(&created) == 1, "not injected yet");
        Ok(created)
    })
    .await
    .expect("injection")
}

/// What the webhook injected into a pod, as a pod the evil team writes itself.
fn as_submitted(injected: &Pod, name: &str) -> Pod {
    let mut pod = injected.clone();
    pod.metadata = kube::api::ObjectMeta {
        name: Some(name.into()),
        labels: injected.metadata.labels.clone(),
        annotations: injected.metadata.annotations.clone(),
        ..Default::default()
    };
    pod.status = None;
    pod
}

async fn apply_cluster<K>(client: &Client, value: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value)?;
    let name = object.meta().name.clone().context("no name")?;
    Api::<K>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?;
    Ok(())
}

/// An operator replica whose AuthPolicy list is forbidden never syncs its webhook cache: it is
/// not ready and refuses every pod of the namespaces it serves (with failurePolicy Fail the
/// create fails instead of a selected pod starting bare). Once it may list, it syncs, turns
/// ready and injects.
#[tokio::test]
async fn a_pod_created_before_the_webhook_synced_is_refused_then_injected_once_it_has() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let id = format!("e2e-unsynced-{}", std::process::id());
    let ns = evil_namespace(
        &client,
        serde_json::json!({"e2e.scopegate.dev/unsynced": id}),
    )
    .await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &external_policy("orders", "orders"))
        .await
        .unwrap();

    // A replica that may read the webhook's certificate and nothing else: no AuthPolicy list,
    // no Lease (so it stands by for good and never writes).
    let kubeconfig = service_account_kubeconfig(&client, "scopegate-system", &id)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": id, "namespace": "scopegate-system"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), "scopegate-system")
        .patch(
            &id,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": id, "namespace": "scopegate-system"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": id},
        "subjects": [{"kind": "ServiceAccount", "name": id, "namespace": "scopegate-system"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), "scopegate-system")
        .patch(
            &id,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await
        .unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let operator = OperatorProcess::start_as(
        &id,
        "scopegate-operator",
        &kubeconfig,
        &[
            "--webhook-addr",
            &address,
            "--sidecar-image",
            "scopegate/sidecar:e2e",
        ],
    )
    .unwrap();

    // Its own webhook configuration, for this namespace only, trusting the shared caBundle.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let shared = configurations.get("scopegate-injector").await.unwrap();
    let mut hook = shared.webhooks.clone().unwrap_or_default().remove(0);
    hook.name = "unsynced.e2e.scopegate.dev".into();
    hook.client_config.url = Some(format!("https://{address}/mutate-pods"));
    hook.client_config.service = None;
    hook.namespace_selector = Some(
        serde_json::from_value(
            serde_json::json!({"matchLabels": {"e2e.scopegate.dev/unsynced": id}}),
        )
        .unwrap(),
    );
    hook.failure_policy = Some("Fail".into());
    let configuration = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(id.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![hook]),
    };
    configurations
        .patch(
            &id,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&configuration),
        )
        .await
        .unwrap();

    eventually("the cold replica reporting not ready", || async {
        let answer = operator.admin_get("/readyz");
        ensure!(
            answer.starts_with("HTTP/1.0 503")
                && answer.contains(
                    "the webhook's AuthPolicy and OAuthClient caches have not synced yet"
                ),
            "{answer}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail()));

    // (A client that would retry the 503 would get its pod once the cache syncs: this one
    // shows the refusal.)
    let impatient = plane.client_without_retries().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(impatient, &ns.name);
    // The evil team creates a selected pod while the webhook's cache is cold.
    // (Until the replica's webhook listens, the API server's call fails: wait for its answer.)
    let message = eventually("a pod refused by the cold webhook", || async {
        let message = refusal(&pods, &pod("orders-1", "orders")).await?;
        ensure!(!message.contains("failed calling webhook"), "{message}");
        Ok(message)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail()));
    assert!(
        message.contains("has not yet synced its AuthPolicy and OAuthClient caches")
            && message.contains("refusing it rather than admitting it without its sidecar"),
        "{message}"
    );
    // Which pods a policy selects is unknown until then: an unselected one waits too.
    let message = refusal(&pods, &pod("other-1", "other")).await.unwrap();
    assert!(message.contains("has not yet synced"), "{message}");
    assert!(
        pods.get_opt("orders-1").await.unwrap().is_none(),
        "nothing was created"
    );
    assert!(
        operator.counter("scopegate_operator_webhook_reviews_total{outcome=\"not_synced\"}") >= 2.0,
        "{}",
        operator.metrics()
    );

    // The permission arrives: the cache syncs, the replica turns ready and injects.
    apply_cluster::<ClusterRole>(
        &client,
        serde_json::json!({
            "metadata": {"name": id},
            "rules": [{"apiGroups": ["scopegate.dev"], "resources": ["authpolicies", "oauthclients"], "verbs": ["get", "list", "watch"]}],
        }),
    )
    .await
    .unwrap();
    apply_cluster::<ClusterRoleBinding>(
        &client,
        serde_json::json!({
            "metadata": {"name": id},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": id},
            "subjects": [{"kind": "ServiceAccount", "name": id, "namespace": "scopegate-system"}],
        }),
    )
    .await
    .unwrap();
    eventually("the replica ready once its cache synced", || async {
        let answer = operator.admin_get("/readyz");
        ensure!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail()));
    let injected = pods
        .create(&dry_run(), &pod("orders-1", "orders"))
        .await
        .unwrap();
    assert_eq!(sidecars(&injected), 1, "injected once synced");

    drop(operator);
    let _ = configurations.delete(&id, &DeleteParams::default()).await;
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&id, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&id, &DeleteParams::default())
        .await;
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), "scopegate-system")
        .delete(&id, &DeleteParams::default())
        .await;
    let _ = std::fs::remove_file(kubeconfig);
    ns.delete().await.unwrap();
}

/// The evil team brings its own "sidecar" (the real image, with a config of its own, or an
/// extra mount over the sidecar's CA bundle), or only the "injected" annotation: each pod is
/// refused, saying why. The genuine injected pod, submitted again, is admitted unchanged.
#[tokio::test]
async fn a_fake_sidecar_or_a_forged_injected_annotation_is_refused() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = evil_namespace(&client, injection_labels()).await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &external_policy("orders", "orders"))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let genuine = wait_for_injection(&pods, "orders").await;

    // The genuine article, as the API server stored it, passes.
    let again = pods
        .create(&dry_run(), &as_submitted(&genuine, "orders-copy"))
        .await
        .expect("the genuine injected pod is admitted");
    assert_eq!(sidecars(&again), 1);

    // Only the annotation: the status would count a bare pod as protected.
    let mut forged = pod("orders-forged", "orders");
    forged.metadata.annotations = Some(BTreeMap::from([(INJECTED.into(), "orders".into())]));
    let message = refusal(&pods, &forged).await.unwrap();
    assert!(
        message.contains(
            "it carries the scopegate.dev/injected annotation but no scopegate-sidecar container"
        ),
        "{message}"
    );

    // The real image with a config of the team's own choosing.
    let mut fake = as_submitted(&genuine, "orders-fake");
    let spec = fake.spec.as_mut().unwrap();
    let sidecar = spec
        .init_containers
        .iter_mut()
        .flatten()
        .find(|c| c.name == SIDECAR)
        .unwrap();
    sidecar.args = Some(vec!["--config".into(), "/tmp/allow-everything.json".into()]);
    let message = refusal(&pods, &fake).await.unwrap();
    assert!(
        message.contains(
            "its scopegate-sidecar container is not the one the webhook renders: it differs in args"
        ) && message.contains("a pod may not bring its own scopegate sidecar"),
        "{message}"
    );

    // A look-alike with the team's CA bundle mounted over the sidecar's trust store.
    let mut fake = as_submitted(&genuine, "orders-certs");
    let spec = fake.spec.as_mut().unwrap();
    spec.volumes.get_or_insert_with(Vec::new).push(
        serde_json::from_value(
            serde_json::json!({"name": "evil-ca", "configMap": {"name": "evil-ca"}}),
        )
        .unwrap(),
    );
    let sidecar = spec
        .init_containers
        .iter_mut()
        .flatten()
        .find(|c| c.name == SIDECAR)
        .unwrap();
    sidecar.volume_mounts.get_or_insert_with(Vec::new).push(
        serde_json::from_value(
            serde_json::json!({"name": "evil-ca", "mountPath": "/etc/ssl/certs"}),
        )
        .unwrap(),
    );
    let message = refusal(&pods, &fake).await.unwrap();
    assert!(message.contains("differs in volumeMounts"), "{message}");

    // A hand-written container that only borrows the name.
    let mut fake = pod("orders-lookalike", "orders");
    fake.spec.as_mut().unwrap().containers.push(
        serde_json::from_value(
            serde_json::json!({"name": SIDECAR, "image": "evil/pass-through", "args": ["--to", "127.0.0.1:8080"]}),
        )
        .unwrap(),
    );
    let message = refusal(&pods, &fake).await.unwrap();
    assert!(
        message.contains("without the scopegate.dev/injected annotation")
            && message.contains("differs in image, args")
            && message.contains("placement"),
        "{message}"
    );
    for name in [
        "orders-forged",
        "orders-fake",
        "orders-certs",
        "orders-lookalike",
    ] {
        assert!(pods.get_opt(name).await.unwrap().is_none(), "{name} exists");
    }
    ns.delete().await.unwrap();
}

/// A Service whose named targetPort resolves to the app's port sends traffic around the
/// sidecar: the policy turns Degraded, naming the Service. Retargeted at the sidecar's named
/// port, it recovers.
#[tokio::test]
async fn a_service_with_a_named_target_port_on_the_app_port_degrades_the_policy() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = evil_namespace(&client, injection_labels()).await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &external_policy("orders", "orders"))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for_injection(&pods, "orders").await;
    pods.create(&PostParams::default(), &pod("orders-1", "orders"))
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let service = |target: &str| -> Service {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: orders}}\nspec:\n  selector: {{app: orders}}\n  ports: [{{port: 80, targetPort: {target}}}]\n"
        ))
        .unwrap()
    };
    services
        .patch(
            "orders",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&service("web")),
        )
        .await
        .unwrap();
    let degraded = |want: bool| {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let policy = Api::<AuthPolicy>::namespaced(client, &ns)
                .get("orders")
                .await?;
            let status = policy.status.context("no status")?;
            let degraded = condition(&status.conditions, "Degraded").context("no Degraded")?;
            let bypass = degraded.message.contains(
                "Service orders targets port 8080, the app's own port: its traffic walks around the sidecar",
            );
            ensure!(
                status.injected_pods == Some(1),
                "{:?}",
                status.injected_pods
            );
            ensure!(bypass == want, "{degraded:?}");
            Ok(())
        }
    };
    eventually("the named targetPort seen as a bypass", || degraded(true))
        .await
        .unwrap();
    services
        .patch(
            "orders",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&service("scopegate")),
        )
        .await
        .unwrap();
    eventually("the sidecar's named port accepted", || degraded(false))
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

/// The NetworkPolicy the operator renders for every AuthPolicy admits ingress to the selected
/// pods on the sidecar's listen port and nothing else. The evil team opening it up gets it
/// rendered back; opting out removes it and the status says nothing protects the app's port.
#[tokio::test]
async fn the_rendered_network_policy_admits_exactly_the_sidecar_port() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = evil_namespace(&client, injection_labels()).await;
    // An audience naming its own Service: nobody else's claim degrades it.
    let yaml = format!(
        "{}  listen: {{port: 9080}}\n",
        external_policy("orders", "orders")
    )
    .replace(
        "audiences: [orders]",
        &format!("audiences: [\"https://orders.{}.svc\"]", ns.name),
    );
    apply_yaml::<AuthPolicy>(&client, &ns.name, &yaml)
        .await
        .unwrap();
    // A pod it selects: a policy that selects none is reported as that first.
    scopegate_e2e::ensure_selected_pod(&client, &ns.name, "orders")
        .await
        .unwrap();
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let exact = serde_json::json!({
        "podSelector": {"matchLabels": {"app": "orders"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": 9080}]}],
    });
    let rendered = |want: serde_json::Value| {
        let policies = policies.clone();
        async move {
            let found = policies
                .get_opt("orders-inbound")
                .await?
                .context("no NetworkPolicy yet")?;
            let spec = serde_json::to_value(found.spec.clone().context("no spec")?)?;
            ensure!(spec == want, "{spec}");
            Ok(found)
        }
    };
    let found = eventually("the NetworkPolicy rendered", || rendered(exact.clone()))
        .await
        .unwrap();
    let owner = &found.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("AuthPolicy", "orders")
    );
    let status = |want: &'static str, unprotected: bool| {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let policy = Api::<AuthPolicy>::namespaced(client, &ns)
                .get("orders")
                .await?;
            let status = policy.status.context("no status")?;
            ensure!(
                status.inbound_protection.as_deref() == Some(want),
                "{:?}",
                status.inbound_protection
            );
            let degraded = condition(&status.conditions, "Degraded").context("no Degraded")?;
            let says = degraded.message.contains(
                "any pod of the cluster can reach the app's port 8080 directly, around the sidecar (port 9080)",
            );
            ensure!(says == unprotected, "{degraded:?}");
            Ok(status)
        }
    };
    let current = eventually("status naming the NetworkPolicy", || {
        status("NetworkPolicy", false)
    })
    .await
    .unwrap();
    assert_eq!(
        current.rendered.and_then(|r| r.network_policy).as_deref(),
        Some("orders-inbound")
    );

    // The evil team opens every port of its pods to the cluster: rendered back.
    let open = serde_json::json!({"spec": {"ingress": [{}]}});
    policies
        .patch(
            "orders-inbound",
            &PatchParams::default(),
            &Patch::Merge(&open),
        )
        .await
        .unwrap();
    eventually("the NetworkPolicy rendered back", || {
        rendered(exact.clone())
    })
    .await
    .unwrap();

    // Opting out: the NetworkPolicy goes, and the status says the app's port is open.
    let opt_out = serde_json::json!({"spec": {"inbound": {"networkPolicy": false}}});
    Api::<AuthPolicy>::namespaced(client.clone(), &ns.name)
        .patch("orders", &PatchParams::default(), &Patch::Merge(&opt_out))
        .await
        .unwrap();
    eventually("the NetworkPolicy deleted", || async {
        ensure!(
            policies.get_opt("orders-inbound").await?.is_none(),
            "still there"
        );
        Ok(())
    })
    .await
    .unwrap();
    let current = eventually("status saying None", || status("None", true))
        .await
        .unwrap();
    let degraded = condition(&current.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "InboundUnprotected");
    // The port lock alone is a protection.
    let lock = serde_json::json!({"spec": {"inbound": {"networkPolicy": false, "portLock": true}}});
    Api::<AuthPolicy>::namespaced(client.clone(), &ns.name)
        .patch("orders", &PatchParams::default(), &Patch::Merge(&lock))
        .await
        .unwrap();
    eventually("status saying PortLock", || status("PortLock", false))
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

/// What the test's pods run: the sidecar binary for its image, and an app that listens on
/// every address of the pod (as many apps do), not only on 127.0.0.1.
fn images() -> Images {
    Images::from([
        sidecar_image().expect("the sidecar image"),
        (
            "example/open-app".to_owned(),
            ["python3", "-m", "http.server", "--bind", "0.0.0.0", "8080"]
                .map(str::to_owned)
                .to_vec(),
        ),
    ])
}

/// A policy in front of `example/open-app` whose every route is public (the test is about
/// reaching the port, not about tokens), with the port lock on or off.
fn open_app_policy(ns: &str, name: &str, port_lock: bool) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  issuer:
    external: {{issuer: "https://127.0.0.1:1", jwksUri: "https://127.0.0.1:1/jwks", algorithms: [ES256]}}
  audiences: ["https://{name}.{ns}.svc"]
  upstream: {{port: 8080}}
  defaultAction: Allow
  inbound: {{portLock: {port_lock}}}
"#
    )
}

fn open_app_pod(name: &str) -> Pod {
    serde_yaml_ng::from_str(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}-0, labels: {{app: {name}}}}}
spec:
  containers:
    - name: app
      image: example/open-app
      ports: [{{containerPort: 8080}}]
"#
    ))
    .expect("pod YAML")
}

/// Whether a TCP connection to `addr` is accepted (`Ok(true)`), refused (`Ok(false)`), or
/// something else happened.
fn connects(addr: std::net::SocketAddr) -> anyhow::Result<bool> {
    match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// With the port lock, the evil team's (or any) pod that connects to the app's port directly
/// is refused, while the sidecar's port answers; without it the same app is reachable. The
/// init container runs for real in the pod's network namespace. The webhook admits the
/// injected pod as it stored it, and refuses a port lock of the team's own.
#[tokio::test]
async fn a_direct_connection_to_the_app_port_is_refused_with_the_port_lock() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = evil_namespace(&client, injection_labels()).await;
    for (name, lock) in [("locked", true), ("open", false)] {
        apply_yaml::<AuthPolicy>(&client, &ns.name, &open_app_policy(&ns.name, name, lock))
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for_injection(&pods, "locked").await;
    for name in ["locked", "open"] {
        eventually("the sidecar config", || async {
            let text = scopegate_e2e::config_map_text(
                &client,
                &ns.name,
                &format!("{name}-sidecar"),
                "config.json",
            )
            .await?;
            ensure!(text.is_some(), "not rendered yet");
            Ok(())
        })
        .await
        .unwrap();
    }
    let locked = pods
        .create(&PostParams::default(), &open_app_pod("locked"))
        .await
        .unwrap();
    let open = pods
        .create(&PostParams::default(), &open_app_pod("open"))
        .await
        .unwrap();

    // The init container, first of all, as rendered: the sidecar image in port-lock mode.
    let init = locked
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .clone()
        .unwrap();
    assert_eq!(init[0].name, "scopegate-port-lock");
    assert_eq!(
        init[0].args.as_deref().unwrap(),
        ["port-lock", "--allow", "15080", "--allow", "15090"]
    );
    let capabilities = init[0]
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap();
    assert_eq!(capabilities.add.as_deref().unwrap(), ["NET_ADMIN"]);
    assert_eq!(capabilities.drop.as_deref().unwrap(), ["ALL"]);
    assert!(
        !open
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == "scopegate-port-lock")
    );

    // The genuine pod again is admitted; a port lock of the team's own is not.
    pods.create(&dry_run(), &as_submitted(&locked, "locked-copy"))
        .await
        .expect("the genuine locked pod is admitted");
    let mut widened = as_submitted(&locked, "locked-widened");
    widened
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()[0]
        .args
        .as_mut()
        .unwrap()
        .extend(["--allow".to_owned(), "8080".to_owned()]);
    let message = refusal(&pods, &widened).await.unwrap();
    assert!(
        message.contains(
            "its scopegate-port-lock container is not the one the webhook renders: it differs in args"
        ),
        "{message}"
    );
    let mut dropped = as_submitted(&locked, "locked-dropped");
    dropped
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()
        .remove(0);
    let message = refusal(&pods, &dropped).await.unwrap();
    assert!(
        message.contains("but no scopegate-port-lock container"),
        "{message}"
    );
    let mut foreign = as_submitted(&open, "open-with-lock");
    foreign
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, init[0].clone());
    let message = refusal(&pods, &foreign).await.unwrap();
    assert!(
        message.contains(
            "it carries a scopegate-port-lock container that the webhook does not render for AuthPolicy open"
        ),
        "{message}"
    );

    // Both pods run, as a node would run them.
    let network = PodNetwork::create().expect("pod network (needs root)");
    let logs = logs_dir();
    let mut running = Vec::new();
    for pod in [&locked, &open] {
        running.push(
            RunningPod::start(&client, &network, pod, &images(), &[], &logs)
                .await
                .expect("pod runs"),
        );
    }
    for pod in &running {
        let sidecar = std::net::SocketAddr::from((pod.ip, 15080));
        eventually("the app answering through the sidecar", || async move {
            let response = request(sidecar, "GET", "/", &[], "")?;
            ensure!(
                response.status == 200,
                "{} {}",
                response.status,
                response.body
            );
            Ok(())
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", pod.name));
    }
    // Without the lock, anyone reaches the app directly: the premise of the attack.
    let open_app = std::net::SocketAddr::from((running[1].ip, 8080));
    let direct = request(open_app, "GET", "/", &[], "").expect("the open app answers");
    assert_eq!(direct.status, 200);
    // With it, the app's port refuses the connection; the sidecar's port and the admin port
    // (the kubelet's probes) still answer.
    let locked_app = std::net::SocketAddr::from((running[0].ip, 8080));
    assert!(
        !connects(locked_app).unwrap(),
        "a direct connection to the locked app's port was accepted"
    );
    let admin = std::net::SocketAddr::from((running[0].ip, 15090));
    let healthz = request(admin, "GET", "/healthz", &[], "").expect("admin port");
    assert_eq!(healthz.status, 200, "{healthz:?}");
    let through = request(
        std::net::SocketAddr::from((running[0].ip, 15080)),
        "GET",
        "/",
        &[],
        "",
    )
    .expect("sidecar port");
    assert_eq!(through.status, 200);
    drop(running);
    ns.delete().await.unwrap();
}

/// The issuer `auth` with a mint socket for `user:*`, in the containers `containers` names
/// (a field of `spec.issuer.self`; empty for the default).
fn issuer_policy(ns: &str, containers: &str) -> String {
    issuer(ns, "auth")
        .with(r#"mint: {subjects: ["user:*"], scopes: [read]}"#)
        .with(containers)
        .yaml()
}

fn two_container_pod(name: &str) -> Pod {
    serde_yaml_ng::from_str(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: auth}}}}
spec:
  containers:
    - {{name: app, image: example/app}}
    - {{name: helper, image: example/log-shipper}}
"#
    ))
    .expect("pod YAML")
}

fn mounts_mint(pod: &Pod, container: &str) -> bool {
    pod.spec
        .as_ref()
        .expect("spec")
        .containers
        .iter()
        .find(|c| c.name == container)
        .expect("container")
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "scopegate-mint")
}

/// The mint socket goes only into the containers the policy names (by default the first):
/// the pod's second container gets none, and the evil team cannot hand it one by mounting the
/// volume itself, before or after injection.
#[tokio::test]
async fn a_second_container_gets_no_mint_socket() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = evil_namespace(&client, injection_labels()).await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &issuer_policy(&ns.name, ""))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let injected = eventually("the API server calling the webhook", || async {
        let created = pods
            .create(&dry_run(), &two_container_pod("auth-0"))
            .await?;
        ensure!(sidecars(&created) == 1, "not injected yet");
        Ok(created)
    })
    .await
    .unwrap();
    assert!(mounts_mint(&injected, "app"), "the first container mints");
    assert!(!mounts_mint(&injected, "helper"), "the second does not");

    // Mounting the volume the webhook is about to add.
    let mut borrowing = two_container_pod("auth-borrow");
    borrowing.spec.as_mut().unwrap().containers[1].volume_mounts = Some(vec![
        serde_json::from_value(
            serde_json::json!({"name": "scopegate-mint", "mountPath": "/var/run/scopegate"}),
        )
        .unwrap(),
    ]);
    let message = refusal(&pods, &borrowing).await.unwrap();
    assert!(
        message.contains("its helper container mounts the volume scopegate-mint"),
        "{message}"
    );
    // Adding the mount to the injected pod.
    let mut widened = as_submitted(&injected, "auth-widened");
    let app_mount = widened.spec.as_ref().unwrap().containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "scopegate-mint")
        .unwrap();
    widened.spec.as_mut().unwrap().containers[1]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(app_mount);
    let message = refusal(&pods, &widened).await.unwrap();
    assert!(
        message.contains(
            "its helper container mounts scopegate volumes other than the webhook renders for it"
        ),
        "{message}"
    );

    // Named instead: only the helper mints.
    apply_yaml::<AuthPolicy>(
        &client,
        &ns.name,
        &issuer_policy(&ns.name, "mintSocketContainers: [helper]"),
    )
    .await
    .unwrap();
    let named = eventually("the webhook seeing the named container", || async {
        let created = pods
            .create(&dry_run(), &two_container_pod("auth-1"))
            .await?;
        ensure!(mounts_mint(&created, "helper"), "not yet");
        Ok(created)
    })
    .await
    .unwrap();
    assert!(!mounts_mint(&named, "app"));
    ns.delete().await.unwrap();
}

/// A login the app accepts on the mint socket is bounded by `mint.subjects` like a minted
/// token. The shop's real login app (examples/apps/auth.py, in a running issuer pod) logs its
/// users in as `user:<name>`; once the policy narrows `mint.subjects` to `user:bob`, the same
/// app accepting alice is refused (the app answers its "not valid" page, no code is issued)
/// while bob still gets his tokens.
#[tokio::test]
async fn a_login_for_a_subject_outside_mint_subjects_is_refused() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let namespace = format!("e2e-evil-login-{}", std::process::id());
    let logs = logs_dir();
    let shop = scopegate_e2e::story::Shop::start(&client, &namespace, &logs, &|_| {})
        .await
        .expect("the shop runs");
    shop.login("alice", "wonderland", "read:orders")
        .expect("alice logs in under user:*");

    // (The example allows 5 logins per 15 minutes per address: raised, so that the attempts
    // made while the new config reaches the pod cannot exhaust it.)
    let narrow = serde_json::json!({"spec": {
        "issuer": {"self": {"mint": {"subjects": ["user:bob"]}}},
        "rateLimits": [{"name": "login", "methods": ["POST"], "paths": ["/login"], "requests": 1000, "period": "15m"}],
    }});
    Api::<AuthPolicy>::namespaced(client.clone(), &namespace)
        .patch("auth", &PatchParams::default(), &Patch::Merge(&narrow))
        .await
        .unwrap();
    let refusal = eventually("alice's login refused under user:bob", || async {
        match shop.login("alice", "wonderland", "read:orders") {
            Ok(_) => bail!("alice's login still accepted"),
            // The app's answer when the mint socket refuses the login; anything else (the
            // old limit's 429 until the raised one arrives) is retried.
            Err(err) if format!("{err:#}").contains("login answered 400") => Ok(format!("{err:#}")),
            Err(err) => Err(err),
        }
    })
    .await
    .unwrap();
    assert!(
        refusal.contains("login answered 400") && refusal.contains("not valid"),
        "{refusal}"
    );
    let bob = shop
        .login("bob", "builder", "read:orders")
        .expect("bob is within mint.subjects");
    assert!(bob["access_token"].is_string(), "{bob}");
    drop(shop);
    Api::<Namespace>::all(client)
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
}
