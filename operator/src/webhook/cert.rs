//! The webhook's serving certificate: the leader issues it from the operator's CA into a
//! Secret and keeps the caBundle of the Mutating- and ValidatingWebhookConfiguration equal to
//! the CA bundle (old and new CA during a rollover); every replica loads the certificate from
//! the Secret.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::CertSlot;
use crate::context::{FIELD_MANAGER, now};
use crate::error::Result;
use crate::names::{TLS_NAMES_ANNOTATION, TLS_NOT_AFTER_ANNOTATION, TLS_SIGNER_ANNOTATION};
use crate::objects::{self, secret_data};
use crate::pki::ca::{self, CaDocument, ExistingLeaf};

/// Name of the webhook's serving-certificate Secret in the operator's namespace.
pub const WEBHOOK_TLS_SECRET: &str = "scopegate-webhook-tls";
/// Name of the webhook inside the MutatingWebhookConfiguration.
pub const WEBHOOK_NAME: &str = "inject.scopegate.dev";
/// Name of the webhook inside the ValidatingWebhookConfiguration.
pub const VALIDATING_WEBHOOK_NAME: &str = "validate.scopegate.dev";

/// Where the webhook is reached.
#[derive(Debug, Clone)]
pub struct WebhookIdentity {
    /// Operator namespace.
    pub namespace: String,
    /// DNS names for the certificate (the webhook Service's names).
    pub dns_names: Vec<String>,
    /// IP SANs (127.0.0.1 when the API server calls a URL on loopback).
    pub ips: Vec<IpAddr>,
    /// Name of the MutatingWebhookConfiguration whose caBundle the leader keeps.
    pub configuration: String,
    /// Name of the ValidatingWebhookConfiguration whose caBundle the leader keeps.
    pub validating_configuration: String,
}

/// Leader task: keeps the certificate and the caBundle current.
pub async fn maintain(
    client: kube::Client,
    identity: WebhookIdentity,
    mut ca: watch::Receiver<Option<Arc<CaDocument>>>,
) {
    loop {
        let doc = ca.borrow_and_update().clone();
        let wait = match doc {
            Some(doc) => match step(&client, &identity, &doc).await {
                Ok(wait) => wait,
                Err(err) => {
                    tracing::warn!(error = %scopegate_core::error_chain(&err), "keeping the webhook certificate failed; retrying");
                    Duration::from_secs(5)
                }
            },
            None => Duration::from_secs(1),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ca.changed() => {}
        }
    }
}

async fn step(
    client: &kube::Client,
    identity: &WebhookIdentity,
    doc: &CaDocument,
) -> Result<Duration> {
    let now = now();
    let not_after = keep_certificate(client, identity, doc, now).await?;
    keep_ca_bundle(client, identity, doc, now).await?;
    let renew_at = not_after - ca::LEAF_RENEW_BEFORE_SECS;
    let next = doc
        .next_transition(now)
        .map_or(renew_at, |t| t.min(renew_at));
    Ok(Duration::from_secs(
        (next - now).clamp(1, 3600).unsigned_abs(),
    ))
}

/// Issues the serving certificate into its Secret when it is missing or due; returns when
/// the one in force expires.
async fn keep_certificate(
    client: &kube::Client,
    identity: &WebhookIdentity,
    doc: &CaDocument,
    now: i64,
) -> Result<i64> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &identity.namespace);
    let current = api.get_opt(WEBHOOK_TLS_SECRET).await?;
    let mut names = identity.dns_names.clone();
    names.extend(identity.ips.iter().map(ToString::to_string));
    let existing = current.as_ref().and_then(|s| {
        let a = s.annotations();
        Some(ExistingLeaf {
            not_after: a.get(TLS_NOT_AFTER_ANNOTATION)?.parse().ok()?,
            signer: a.get(TLS_SIGNER_ANNOTATION)?.clone(),
            dns_names: a
                .get(TLS_NAMES_ANNOTATION)?
                .split(',')
                .map(str::to_owned)
                .collect(),
        })
    });
    let mut not_after = existing.as_ref().map_or(now, |l| l.not_after);
    if ca::leaf_needs_renewal(existing.as_ref(), doc, &names, now) {
        let leaf = doc.issue_serving(&identity.dns_names, &identity.ips, now)?;
        let signer = doc
            .signer(now)
            .map(|a| ca::fingerprint(&a.cert_pem))
            .unwrap_or_default();
        let mut meta = objects::managed_meta(&identity.namespace, WEBHOOK_TLS_SECRET);
        meta.annotations = Some(BTreeMap::from([
            (
                TLS_NOT_AFTER_ANNOTATION.to_owned(),
                leaf.not_after.to_string(),
            ),
            (TLS_SIGNER_ANNOTATION.to_owned(), signer),
            (TLS_NAMES_ANNOTATION.to_owned(), names.join(",")),
        ]));
        meta.resource_version = current.as_ref().and_then(|s| s.resource_version());
        let secret = objects::secret(
            meta,
            Some("kubernetes.io/tls"),
            BTreeMap::from([
                ("tls.crt".to_owned(), leaf.cert_pem),
                ("tls.key".to_owned(), leaf.key_pem),
            ]),
        );
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        if current.is_some() {
            api.replace(WEBHOOK_TLS_SECRET, &params, &secret).await?;
        } else {
            api.create(&params, &secret).await?;
        }
        not_after = leaf.not_after;
        tracing::info!(names = %names.join(","), "issued the webhook serving certificate");
    }
    Ok(not_after)
}

/// Keeps the caBundle of both webhook configurations equal to the CA bundle.
async fn keep_ca_bundle(
    client: &kube::Client,
    identity: &WebhookIdentity,
    doc: &CaDocument,
    now: i64,
) -> Result<()> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(doc.bundle(now));
    let hooks = [
        (
            "MutatingWebhookConfiguration",
            &identity.configuration,
            WEBHOOK_NAME,
        ),
        (
            "ValidatingWebhookConfiguration",
            &identity.validating_configuration,
            VALIDATING_WEBHOOK_NAME,
        ),
    ];
    for (kind, name, hook) in hooks {
        keep_one_ca_bundle(client, kind, name, hook, &bundle).await?;
    }
    Ok(())
}

/// Keeps the caBundle of webhook `hook` in the configuration `kind`/`name`, if that
/// configuration exists (the chart creates it; the operator never does).
async fn keep_one_ca_bundle(
    client: &kube::Client,
    kind: &str,
    name: &str,
    hook: &str,
    bundle: &str,
) -> Result<()> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        kind,
    ));
    let configurations: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let Some(configuration) = configurations.get_opt(name).await? else {
        tracing::warn!(
            kind,
            name,
            "webhook configuration not found; its caBundle is not kept"
        );
        return Ok(());
    };
    let current = configuration.data["webhooks"]
        .as_array()
        .and_then(|hooks| hooks.iter().find(|h| h["name"] == hook))
        .and_then(|h| h["clientConfig"]["caBundle"].as_str());
    if current != Some(bundle) {
        let patch = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": [{"name": hook, "clientConfig": {"caBundle": bundle}}],
        });
        configurations
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        tracing::info!(kind, name, "updated the webhook caBundle");
    }
    Ok(())
}

/// Every replica: loads the certificate from the Secret whenever it changes.
pub async fn load(client: kube::Client, namespace: String, slot: Arc<CertSlot>) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut loaded: Option<String> = None;
    loop {
        match api.get_opt(WEBHOOK_TLS_SECRET).await {
            Ok(Some(secret)) if secret.resource_version() != loaded => {
                match certified_key(&secret) {
                    Some(key) => {
                        slot.0.store(Some(Arc::new(key)));
                        loaded = secret.resource_version();
                        tracing::info!("webhook serving certificate loaded");
                    }
                    None => {
                        tracing::warn!("the webhook certificate Secret holds no usable certificate")
                    }
                }
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "reading the webhook certificate failed"),
        }
        let wait = if loaded.is_some() { 10 } else { 1 };
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

fn certified_key(secret: &Secret) -> Option<rustls::sign::CertifiedKey> {
    let cert = secret_data(secret, "tls.crt")?;
    let key = secret_data(secret, "tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).ok()?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).ok()
}
