//! What a test starts from: an admin client, the shared operator (started by
//! `e2e/scripts/operator-up.sh`) checked to be running, namespaces of its own (labelled for
//! injection where its pods get the sidecar), ServiceAccount kubeconfigs, and the logs
//! directory.

use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::{ControlPlane, FIELD_MANAGER, TestNamespace};

/// The namespace label that makes the webhook inject the sidecar into its pods.
pub const INJECTION_LABEL: (&str, &str) = ("scopegate.dev/injection", "enabled");

/// An admin client of the control plane the environment names; panics with instructions when
/// there is none.
pub async fn admin_client() -> Client {
    ControlPlane::from_env()
        .expect("control plane")
        .client()
        .await
        .expect("client")
}

/// Panics unless the shared operator runs: the tests that assert what it does need it.
pub fn require_shared_operator() {
    let pid = std::env::var("E2E_DIR")
        .ok()
        .and_then(|d| std::fs::read_to_string(format!("{d}/operator.pid")).ok())
        .expect("the test set-up starts the operator (e2e/scripts/operator-up.sh)");
    let alive = std::path::Path::new(&format!("/proc/{}", pid.trim())).exists();
    assert!(
        alive,
        "the operator process {} is not running; see $E2E_DIR/logs/operator.log",
        pid.trim()
    );
}

/// An admin client and a fresh namespace for `test`, with the shared operator running.
pub async fn with_shared_operator(test: &str) -> (Client, TestNamespace) {
    let client = admin_client().await;
    require_shared_operator();
    let ns = TestNamespace::create(&client, test)
        .await
        .expect("namespace");
    (client, ns)
}

/// The labels of a namespace whose pods get the sidecar.
pub fn injection_labels() -> Value {
    json!({INJECTION_LABEL.0: INJECTION_LABEL.1})
}

impl TestNamespace {
    /// Creates a fresh namespace for `test` with `labels` (a JSON object).
    pub async fn create_labelled(client: &Client, test: &str, labels: Value) -> Self {
        let ns = Self::create(client, test).await.expect("namespace");
        ns.label(labels).await.expect("labelling the namespace");
        ns
    }

    /// Creates a fresh namespace for `test` whose pods get the sidecar from the webhook.
    pub async fn for_injection(client: &Client, test: &str) -> Self {
        Self::create_labelled(client, test, injection_labels()).await
    }

    /// Adds `labels` (a JSON object) to the namespace, as a team would (a merge patch).
    pub async fn label(&self, labels: Value) -> anyhow::Result<()> {
        let patch = json!({"metadata": {"labels": labels}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("labelling namespace {}", self.name))?;
        Ok(())
    }
}

/// Creates (or keeps) namespace `name`, labelled for injection, by server-side apply.
pub async fn apply_injection_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": injection_labels()}
    }))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&namespace),
        )
        .await
        .with_context(|| format!("applying namespace {name}"))?;
    Ok(())
}

/// A token kubeconfig (valid for an hour) for ServiceAccount `name` of `namespace`, created
/// when missing, with `namespace` as its default. No RBAC rule is added: the account may do
/// what bindings elsewhere grant it. Written into `$E2E_DIR`.
pub async fn service_account_kubeconfig(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace}
    }))?;
    accounts
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&account),
        )
        .await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
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
        .join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "{cluster}\ncontexts:\n- name: sa\n  context: {{cluster: scopegate-e2e, user: sa, namespace: {namespace}}}\ncurrent-context: sa\nusers:\n- name: sa\n  user:\n    token: {token}\n"
        ),
    )?;
    Ok(path)
}

/// `$E2E_DIR/logs` (or `/tmp/logs`), created: where pods and test-started operators log.
pub fn logs_dir() -> PathBuf {
    let dir =
        PathBuf::from(std::env::var("E2E_DIR").unwrap_or_else(|_| "/tmp".into())).join("logs");
    std::fs::create_dir_all(&dir).expect("logs directory");
    dir
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
