//! The `Ready` condition of AuthPolicies and OAuthClients, read once their status describes
//! the current generation, and waits for it; and a running sidecar's readiness.

use anyhow::{Context as _, ensure};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::Api;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::{condition, ensure_selected_pod, eventually};

/// A `Ready` condition's status (`True`, `False`, `Unknown`), reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The reason, in CamelCase.
    pub reason: String,
    /// The message for a person.
    pub message: String,
}

fn ready_of(
    conditions: &[Condition],
    observed: Option<i64>,
    generation: Option<i64>,
) -> anyhow::Result<Ready> {
    ensure!(observed == generation, "status is for an older generation");
    let ready = condition(conditions, "Ready").context("no Ready condition")?;
    Ok(Ready {
        status: ready.status.clone(),
        reason: ready.reason.clone(),
        message: ready.message.clone(),
    })
}

/// AuthPolicy `ns/name`'s Ready condition, once its status is of the current generation. A
/// pod it selects is made first where none is ([`ensure_selected_pod`]): a policy that
/// selects no pod is not Ready.
pub async fn policy_ready(client: &Client, ns: &str, name: &str) -> anyhow::Result<Ready> {
    Ok(read_policy(client, ns, name).await?.1)
}

async fn read_policy(client: &Client, ns: &str, name: &str) -> anyhow::Result<(AuthPolicy, Ready)> {
    ensure_selected_pod(client, ns, name).await?;
    let policy = Api::<AuthPolicy>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let status = policy.status.as_ref().context("no status yet")?;
    let ready = ready_of(
        &status.conditions,
        status.observed_generation,
        policy.metadata.generation,
    )?;
    Ok((policy, ready))
}

/// OAuthClient `ns/name`'s Ready condition, once its status is of the current generation.
pub async fn client_ready(client: &Client, ns: &str, name: &str) -> anyhow::Result<Ready> {
    let object = Api::<OAuthClient>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let status = object.status.context("no status yet")?;
    ready_of(
        &status.conditions,
        status.observed_generation,
        object.metadata.generation,
    )
}

/// Waits until AuthPolicy `ns/name` is Ready for its current generation; returns it then.
pub async fn wait_policy_ready(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<AuthPolicy> {
    eventually(&format!("AuthPolicy {ns}/{name} Ready"), || async {
        let (policy, ready) = read_policy(client, ns, name).await?;
        ensure!(
            ready.status == "True",
            "Ready is {}: {}: {}",
            ready.status,
            ready.reason,
            ready.message
        );
        Ok(policy)
    })
    .await
}

/// Waits until the sidecar whose admin port is `admin` answers `/readyz` with 200.
pub async fn sidecar_ready(admin: std::net::SocketAddr) -> anyhow::Result<()> {
    eventually("the sidecar ready", || async move {
        let response = crate::http::request(admin, "GET", "/readyz", &[], "")?;
        ensure!(
            response.status == 200,
            "readyz {}: {}",
            response.status,
            response.body
        );
        Ok(())
    })
    .await
}
