//! Loads one of the operator's CAs from its Secret, creates or rolls it over when due (leader
//! only), and publishes it through a watch channel.
//!
//! There are two, each in a Secret of its own in the operator's namespace: the tenants' CA
//! ([`CA_SECRET`]), which signs the issuers' serving certificates and which every sidecar and
//! client app trusts, and the webhook's CA ([`WEBHOOK_CA_SECRET`]), which signs only the
//! webhook's certificate and which only the API server trusts (the webhook's caBundle). A
//! tenant can therefore never hold a certificate the API server takes for the webhook.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::context::{FIELD_MANAGER, now};
use crate::error::{Error, Result};
use crate::objects::{self, secret_data};
use crate::pki::ca::{CA_FILE, CaDocument, NameScope};

/// Name of the tenants' CA Secret in the operator's namespace.
pub const CA_SECRET: &str = "scopegate-ca";
/// Name of the webhook's CA Secret in the operator's namespace.
pub const WEBHOOK_CA_SECRET: &str = "scopegate-webhook-ca";

/// One CA the operator keeps.
#[derive(Debug, Clone)]
pub struct CaSpec {
    /// Namespace of its Secret (the operator's).
    pub namespace: String,
    /// Name of its Secret.
    pub secret: &'static str,
    /// The names it may certify.
    pub scope: NameScope,
}

/// Keeps the CA current forever, publishing every change.
pub async fn run(
    client: kube::Client,
    spec: CaSpec,
    sender: watch::Sender<Option<Arc<CaDocument>>>,
) {
    loop {
        let wait = match step(&client, &spec, &sender).await {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!(secret = spec.secret, error = %scopegate_core::error_chain(&err), "keeping the operator CA failed; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn step(
    client: &kube::Client,
    spec: &CaSpec,
    sender: &watch::Sender<Option<Arc<CaDocument>>>,
) -> Result<Duration> {
    let (namespace, name) = (spec.namespace.as_str(), spec.secret);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let current = api.get_opt(name).await?;
    let mut doc: CaDocument = match current.as_ref().and_then(|s| secret_data(s, CA_FILE)) {
        Some(text) => serde_json::from_str(&text).map_err(|source| Error::Corrupt {
            object: format!("Secret {namespace}/{name}"),
            document: "CA document",
            detail: crate::error::json_problem(&source),
        })?,
        None => CaDocument::default(),
    };
    let now = now();
    if doc.plan(now, &spec.scope)? {
        let mut meta = objects::managed_meta(namespace, name);
        meta.resource_version = current.as_ref().and_then(|s| s.resource_version());
        let secret = objects::secret(
            meta,
            None,
            BTreeMap::from([(CA_FILE.to_owned(), objects::to_json("CA", &doc)?)]),
        );
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        if current.is_some() {
            api.replace(name, &params, &secret).await?;
        } else {
            api.create(&params, &secret).await?;
        }
        tracing::info!(
            secret = name,
            authorities = doc.authorities.len(),
            "operator CA updated"
        );
    }
    sender.send_if_modified(|published| {
        let changed = published.as_deref() != Some(&doc);
        if changed {
            *published = Some(Arc::new(doc.clone()));
        }
        changed
    });
    let next = doc
        .next_transition(now)
        .map_or(3600, |t| (t - now).clamp(1, 3600));
    Ok(Duration::from_secs(next.unsigned_abs()))
}
