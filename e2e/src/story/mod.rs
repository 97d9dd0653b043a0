//! The whole story on the local control plane, shared by the e2e test that asserts it and the
//! `demo` binary (`make up`) that narrates it: the manifests of `examples/` applied as they are
//! (in another namespace for the test), pods for the issuer `auth`, the protected `orders` and
//! `inventory`, the secretless caller `billing` and the `storefront`'s web pages created
//! through the API server (so the webhook injects them) and run as a kubelet would, and
//! clients that get tokens over TLS (trusting only the operator's CA bundle) and call `orders`,
//! and a browser that signs in to the storefront.

mod browser;
mod describe;
mod load;
mod play;
mod start;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use serde_json::{Value, json};

use crate::google::{self, GoogleStandIn};
use crate::http::{Response, request};
use crate::kubelet::{PodNetwork, RunningPod};
use crate::{FIELD_MANAGER, eventually};

pub use load::Load;
pub use play::play;

/// The issuer's `propagation` in the story. The examples say 5m, longer than any verifier
/// takes to see a new JWKS in a cluster; the story shortens it so that two rotations fit in a
/// minute (the local pods see ConfigMap changes within a second).
pub const STORY_PROPAGATION: &str = "6s";

/// The shop app's `state` in every login of the story.
const STATE: &str = "st8-42";

/// The running shop.
pub struct Shop {
    /// Its namespace.
    pub namespace: String,
    /// The issuer URL, from the `auth` AuthPolicy.
    pub issuer: String,
    /// The issuer's host name (its Service's DNS name).
    issuer_host: String,
    /// The audience of `orders`.
    pub orders_audience: String,
    /// How many orders one subject may place per period, from the `orders` AuthPolicy.
    pub order_limit: u32,
    /// The accounting client's id and secret (client_credentials).
    pub accounting: (String, String),
    /// The shop app's client id (a public client, authorization code + PKCE).
    pub app_client: String,
    /// The shop app's loopback redirect URI.
    redirect_uri: String,
    /// The storefront's web pages, behind a sidecar with browser sessions.
    storefront: Storefront,
    /// The CA bundle file clients trust.
    pub ca_file: PathBuf,
    /// The auth pod's address.
    pub auth_ip: Ipv4Addr,
    /// The auth sidecar's TLS listener port (the target of the Service's port 443).
    auth_port: u16,
    /// The orders sidecar's address.
    pub orders: SocketAddr,
    /// The orders sidecar's admin address.
    pub orders_admin: SocketAddr,
    /// inventory's URL as orders' app calls it (its egress target on the caller's behalf).
    inventory_url: String,
    /// The Google stand-in (an upstream identity provider the story adds).
    google: GoogleStandIn,
    /// What the story's browser trusts: the operator's CA and the stand-in's.
    browser_ca_file: PathBuf,
    /// The story's browser's cookies.
    cookie_jar: PathBuf,
    client: Client,
    /// Every pod's sidecar admin address.
    admins: [SocketAddr; 5],
    /// The billing pod, whose app the story asks from inside the pod.
    billing_pod: RunningPod,
    _pods: Vec<RunningPod>,
    _network: Arc<PodNetwork>,
}

/// Where the story's browser finds the storefront.
struct Storefront {
    /// Its origin, `https://` and its Service's name (from its sessions' redirect URI).
    origin: String,
    /// Its Service's name.
    host: String,
    /// Its sidecar's TLS listener (the target of the Service's port 443).
    listener: SocketAddr,
    /// Its sidecar's admin address.
    admin: SocketAddr,
}

/// What the story measured, for the test's own assertions.
#[derive(Debug)]
pub struct Outcome {
    /// The issuer's key ids: before, after one and after two rotations.
    pub kids: Vec<String>,
    /// Valid requests accepted while the keys rotated (none may be rejected).
    pub accepted_during_rotation: u32,
    /// From the revocation at the issuer to the first refusal at `orders`.
    pub revocation_took: Duration,
}

impl Shop {
    /// What an admin does to offer "Continue with Google" on the running issuer: the client
    /// secret Google issued goes into a Secret, the upstream into the AuthPolicy (with the
    /// stand-in's CA as its `caBundle`; real Google needs none). Waits until status reports
    /// the callback URL to register and the issuer pod has read Google's discovery and keys.
    /// Returns the callback URL from status.
    pub async fn add_google(&self) -> anyhow::Result<String> {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "google-oauth", "namespace": self.namespace},
            "stringData": {"client_secret": self.google.client_secret},
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .patch(
                "google-oauth",
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        let patch = json!({"spec": {"issuer": {"self": {"upstreams": [{
            "name": "google",
            "displayName": "Google",
            "clientId": google::CLIENT_ID,
            "clientSecretRef": {"name": "google-oauth", "key": "client_secret"},
            "caBundle": self.google.ca_pem,
            "oidc": {"issuer": self.google.issuer},
        }]}}}});
        let policies = Api::<AuthPolicy>::namespaced(self.client.clone(), &self.namespace);
        policies
            .patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let callback = eventually("status.upstreams reporting google ready", || {
            let policies = policies.clone();
            async move {
                let status = policies.get("auth").await?.status.context("no status")?;
                let google = status
                    .upstreams
                    .iter()
                    .find(|u| u.name == "google")
                    .context("google not in status yet")?;
                ensure!(google.ready, "google not ready: {:?}", google.reason);
                Ok(google.callback_url.clone())
            }
        })
        .await?;
        let admin = SocketAddr::from((self.auth_ip, 15090));
        eventually(
            "the issuer pod loading Google's discovery and keys",
            || async move {
                let ready = request(admin, "GET", "/readyz", &[], "")?;
                ensure!(
                    ready.body.contains("upstream google: oidc")
                        && ready.body.contains("keys, fetched"),
                    "readyz: {}",
                    ready.body
                );
                Ok(())
            },
        )
        .await?;
        Ok(callback)
    }

    /// Calls `orders` through its sidecar.
    pub fn orders(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Response> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        request(
            self.orders,
            method,
            path,
            &headers,
            if method == "POST" { "{}" } else { "" },
        )
    }

    /// Asks for a manual key rotation of the issuer.
    pub async fn rotate(&self, value: &str) -> anyhow::Result<()> {
        let patch =
            serde_json::json!({"metadata": {"annotations": {"scopegate.dev/rotate": value}}});
        Api::<AuthPolicy>::namespaced(self.client.clone(), &self.namespace)
            .patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// The issuer's active key id, from its status.
    pub async fn active_kid(&self) -> anyhow::Result<String> {
        let policy = Api::<AuthPolicy>::namespaced(self.client.clone(), &self.namespace)
            .get("auth")
            .await?;
        policy
            .status
            .and_then(|s| s.active_kid)
            .context("no active key")
    }

    /// Asks billing's app for `/charge` from inside its pod, as `kubectl exec` would (nothing
    /// outside the pod may call it): the app calls orders through its sidecar. Returns the
    /// app's answer.
    pub fn billing_charge(&self) -> anyhow::Result<Value> {
        let output = self
            .billing_pod
            .command_in_pod("curl")
            .args(["-sS", "--max-time", "10", "http://127.0.0.1:8080/charge"])
            .output()?;
        ensure!(
            output.status.success(),
            "curl in billing-0 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// The OAuthClient `name`'s status.authentication and status.secretName, and the names
    /// of the namespace's Secrets.
    pub async fn client_credentials_of(
        &self,
        name: &str,
    ) -> anyhow::Result<(String, Option<String>, Vec<String>)> {
        let status = Api::<OAuthClient>::namespaced(self.client.clone(), &self.namespace)
            .get(name)
            .await?
            .status
            .context("no status")?;
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|secret| secret.metadata.name)
            .collect();
        Ok((
            status.authentication.unwrap_or_default(),
            status.secret_name,
            secrets,
        ))
    }

    /// Revokes a token at the issuer (RFC 7009) as the accounting client.
    pub fn revoke(&self, token: &str) -> anyhow::Result<()> {
        let (id, secret) = (&self.accounting.0, &self.accounting.1);
        let response = self.issuer_call(
            "POST",
            "/oauth2/revoke",
            &[("token", token)],
            Some((id, secret)),
        )?;
        if response.status != 200 {
            bail!("revocation answered {}: {}", response.status, response.body);
        }
        Ok(())
    }
}
