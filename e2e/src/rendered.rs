//! What the operator renders for a policy, read back from the API server: its signing keys,
//! its JWKS, its sidecar's config (and the key ids that config trusts) and its client
//! registry.

use std::collections::BTreeSet;

use anyhow::Context as _;
use kube::Client;
use scopegate_core::clients::{CLIENTS_FILE, ClientRegistry};
use scopegate_core::config::{KeySource, SidecarConfig};
use scopegate_core::jwk::Jwks;
use scopegate_core::keys::SigningKeys;

use crate::{config_map_text, eventually, secret_text};

/// The signing-keys document of issuer `policy` (Secret `<policy>-signing-keys`).
pub async fn signing_keys(client: &Client, ns: &str, policy: &str) -> anyhow::Result<SigningKeys> {
    let text = secret_text(client, ns, &format!("{policy}-signing-keys"), "keys.json")
        .await?
        .context("no signing-keys Secret")?;
    Ok(serde_json::from_str(&text)?)
}

/// The JWKS issuer `policy` publishes (ConfigMap `<policy>-jwks`).
pub async fn jwks(client: &Client, ns: &str, policy: &str) -> anyhow::Result<Jwks> {
    let text = config_map_text(client, ns, &format!("{policy}-jwks"), "jwks.json")
        .await?
        .context("no JWKS")?;
    Ok(serde_json::from_str(&text)?)
}

/// The key ids of the JWKS issuer `policy` publishes.
pub async fn jwks_kids(
    client: &Client,
    ns: &str,
    policy: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let jwks = jwks(client, ns, policy).await?;
    Ok(jwks.keys.into_iter().filter_map(|k| k.kid).collect())
}

/// The sidecar config of `policy` (ConfigMap `<policy>-sidecar`), parsed as the sidecar does.
pub async fn sidecar_config(
    client: &Client,
    ns: &str,
    policy: &str,
) -> anyhow::Result<SidecarConfig> {
    let text = config_map_text(client, ns, &format!("{policy}-sidecar"), "config.json")
        .await?
        .context("no sidecar config")?;
    Ok(SidecarConfig::from_json(&text)?)
}

/// The key ids a sidecar config trusts in its static JWKS, over all its issuers.
pub fn trusted_kids(config: &SidecarConfig) -> BTreeSet<String> {
    config
        .verify
        .issuers
        .iter()
        .flat_map(|i| match &i.keys {
            KeySource::Static { jwks } => jwks.keys.iter().filter_map(|k| k.kid.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The client registry of issuer `policy` (Secret `<policy>-clients`).
pub async fn client_registry(
    client: &Client,
    ns: &str,
    policy: &str,
) -> anyhow::Result<ClientRegistry> {
    let text = secret_text(client, ns, &format!("{policy}-clients"), CLIENTS_FILE)
        .await?
        .context("no registry")?;
    Ok(serde_json::from_str(&text)?)
}

/// Waits until the sidecar config of `policy` trusts some key (it names a `kid`): a pod then
/// starts with keys to verify with.
pub async fn wait_trusting_a_key(client: &Client, ns: &str, policy: &str) -> anyhow::Result<()> {
    eventually(&format!("the {policy} sidecar config"), || async {
        let text = config_map_text(client, ns, &format!("{policy}-sidecar"), "config.json").await?;
        anyhow::ensure!(text.is_some_and(|t| t.contains("\"kid\"")), "no keys yet");
        Ok(())
    })
    .await
}
