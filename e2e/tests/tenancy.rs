//! Tenant isolation on the real control plane, written as the attacker: a team in a namespace
//! of its own (`e2e-evil-…`) tries to get a selected pod admitted without its sidecar (while
//! the webhook's cache is cold, with a fake sidecar, with a forged "injected" annotation), to
//! send traffic around the sidecar, and to step outside its policy's mint rules. Each attempt
//! fails, and the refusal or the status it gets is asserted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_e2e::{
    ControlPlane, FIELD_MANAGER, OperatorProcess, TestNamespace, apply_yaml, condition, eventually,
};

const SIDECAR: &str = "scopegate-sidecar";
const INJECTED: &str = "scopegate.dev/injected";

/// The evil team's namespace, labelled for injection (or with `labels` instead).
async fn evil_namespace(client: &Client, labels: serde_json::Value) -> TestNamespace {
    let ns = TestNamespace::create(client, "evil")
        .await
        .expect("namespace");
    let patch = serde_json::json!({"metadata": {"labels": labels}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label the namespace");
    ns
}

fn injection_label() -> serde_json::Value {
    serde_json::json!({"scopegate.dev/injection": "enabled"})
}

fn policy(name: &str, app: &str) -> String {
    format!(
        r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  issuer:
    external: {{issuer: "https://idp.example", jwksUri: "https://idp.example/jwks", algorithms: [ES256]}}
  audiences: [orders]
  upstream: {{port: 8080}}
"#
    )
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

/// A token kubeconfig for a fresh ServiceAccount in scopegate-system.
async fn service_account_kubeconfig(client: &Client, name: &str) -> anyhow::Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "scopegate-system");
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "scopegate-system"}
    }))?;
    accounts
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&account),
        )
        .await?;
    let token = accounts
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?
        .status
        .context("no token")?
        .token
        .context("no token")?;
    // The cluster's address and CA, from the operator's kubeconfig.
    let operator = std::env::var("E2E_OPERATOR_KUBECONFIG").context("E2E_OPERATOR_KUBECONFIG")?;
    let text = std::fs::read_to_string(&operator)?;
    let cluster: String = text
        .lines()
        .take_while(|l| !l.starts_with("contexts:"))
        .collect::<Vec<_>>()
        .join("\n");
    let path = PathBuf::from(std::env::var("E2E_DIR").context("E2E_DIR")?)
        .join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "{cluster}\ncontexts:\n- name: sa\n  context: {{cluster: scopegate-e2e, user: sa}}\ncurrent-context: sa\nusers:\n- name: sa\n  user:\n    token: {token}\n"
        ),
    )?;
    Ok(path)
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
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
    apply_yaml::<AuthPolicy>(&client, &ns.name, &policy("orders", "orders"))
        .await
        .unwrap();

    // A replica that may read the webhook's certificate and nothing else: no AuthPolicy list,
    // no Lease (so it stands by for good and never writes).
    let kubeconfig = service_account_kubeconfig(&client, &id).await.unwrap();
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
                && answer.contains("the webhook's AuthPolicy cache has not synced yet"),
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
        message.contains("has not yet synced its AuthPolicy cache")
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
            "rules": [{"apiGroups": ["scopegate.dev"], "resources": ["authpolicies"], "verbs": ["get", "list", "watch"]}],
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
    let ns = evil_namespace(&client, injection_label()).await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &policy("orders", "orders"))
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
    let ns = evil_namespace(&client, injection_label()).await;
    apply_yaml::<AuthPolicy>(&client, &ns.name, &policy("orders", "orders"))
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
