//! An issuer's client registry, rendered from every valid OAuthClient that names it, with the
//! credentials each client's Secret holds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use scopegate_core::clients::{CLIENTS_FILE, ClientRegistry};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::audiences::AudienceOwners;
use crate::client_checks::{issuer_key, registration_problems};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::names::{
    CLIENT_SECRET_KEY, Names, PREVIOUS_NOT_AFTER_ANNOTATION, PREVIOUS_SECRET_KEY,
    client_secret_name,
};
use crate::objects::{self, secret_data};
use crate::pki::registry::{self, Credentials, Entry};

/// Renders the client registry from every valid OAuthClient of this issuer; whether a client
/// it registered authenticates with ServiceAccount tokens.
pub async fn reconcile_registry(
    policy: &AuthPolicy,
    names: &Names,
    ctx: &Context,
    now: i64,
) -> Result<bool> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let all = ctx.clients.state();
    let owners = AudienceOwners::new(
        ctx.policies.state().iter().map(AsRef::as_ref),
        &ctx.cluster_domain,
    );
    let key = (namespace.clone(), policy.name_any());
    let mut clients = Vec::new();
    let mut parts = Vec::new();
    for client in all.iter().filter(|c| issuer_key(c) == key) {
        let cap = ctx.limits.clients_per_namespace;
        if crate::limits::over_limit(client.as_ref(), all.iter().map(AsRef::as_ref), cap).is_some()
        {
            // Refused in its own status; hashing its secret is what the cap spares.
            continue;
        }
        let sorted = owners.sort_client(client);
        let problems = registration_problems(client, Some(policy), &sorted);
        if problems.iter().any(|p| p.blocks_registration()) {
            continue;
        }
        let credentials = read_credentials(client, ctx).await?;
        clients.push(client.clone());
        parts.push((credentials, sorted.admitted, sorted.owned, sorted.exchange));
    }
    let cached = ctx.secret(&namespace, &names.clients);
    let existing: ClientRegistry = cached
        .as_ref()
        .and_then(|s| secret_data(s, CLIENTS_FILE))
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    // Hashing a chosen secret with argon2 takes tens of milliseconds: on the blocking pool,
    // never on the workers that renew the lease and answer the webhook.
    let (service_accounts, text) = ctx
        .heavy(move || -> Result<(bool, String)> {
            let entries: Vec<Entry<'_>> = clients
                .iter()
                .zip(parts)
                .map(
                    |(client, (credentials, audiences, owned_audiences, exchange))| Entry {
                        client,
                        credentials,
                        audiences,
                        owned_audiences,
                        exchange,
                    },
                )
                .collect();
            let registry = registry::render(&entries, &existing, now)?;
            let text = objects::to_json("client registry", &registry)?;
            let service_accounts =
                (registry.clients.iter()).any(|c| !c.service_accounts.is_empty());
            Ok((service_accounts, text))
        })
        .await??;
    let desired = objects::secret(
        objects::owned_meta(policy, &names.clients)?,
        None,
        BTreeMap::from([(CLIENTS_FILE.to_owned(), text)]),
    );
    let unchanged = cached.is_some_and(|s| s.data == desired.data);
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(service_accounts)
}

/// Reads a client's credentials for the registry: from the operator's cache for generated
/// secrets, and directly from a user's own Secret (the operator watches users' Secrets by
/// metadata only, so it never caches their data).
async fn read_credentials(client: &OAuthClient, ctx: &Context) -> Result<Credentials> {
    let namespace = client.namespace().ok_or(Error::Unaddressable)?;
    if client.spec.public {
        return Ok(Credentials::Public);
    }
    if !client.spec.service_accounts.is_empty() {
        return Ok(Credentials::ServiceAccounts);
    }
    let source = |s: &Secret| {
        format!(
            "{}:{}",
            s.uid().unwrap_or_default(),
            s.resource_version().unwrap_or_default()
        )
    };
    if let Some(reference) = &client.spec.existing_secret {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&reference.name)
            .await?;
        return Ok(
            match secret
                .as_ref()
                .and_then(|s| Some((secret_data(s, &reference.key)?, source(s))))
            {
                Some((secret, source)) => Credentials::Chosen { secret, source },
                None => Credentials::Missing,
            },
        );
    }
    let Some(name) = client_secret_name(client) else {
        return Ok(Credentials::Missing);
    };
    let uid = client.uid().unwrap_or_default();
    let Some(secret) = ctx.secret(&namespace, &name) else {
        return Ok(Credentials::Missing);
    };
    if !secret.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(Credentials::Missing);
    }
    let Some(current) = secret_data(&secret, CLIENT_SECRET_KEY) else {
        return Ok(Credentials::Missing);
    };
    let previous = secret
        .annotations()
        .get(PREVIOUS_NOT_AFTER_ANNOTATION)
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|until| Some((secret_data(&secret, PREVIOUS_SECRET_KEY)?, until)));
    Ok(Credentials::Generated {
        current,
        previous,
        source: source(&secret),
    })
}
