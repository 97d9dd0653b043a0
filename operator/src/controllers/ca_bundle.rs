//! The namespace's `scopegate-ca` ConfigMap, which both kinds keep: an issuer for its
//! clients' apps, a client for its own.

use crate::context::Context;
use crate::error::Result;
use crate::names::CA_CONFIGMAP;
use crate::objects;

/// Keeps the namespace's CA bundle ConfigMap (for client apps) current.
pub async fn apply(ctx: &Context, namespace: &str, bundle: &str) -> Result<()> {
    let desired = objects::ca_bundle(namespace, bundle);
    let unchanged = ctx
        .config_map(namespace, CA_CONFIGMAP)
        .is_some_and(|cm| cm.data == desired.data);
    ctx.apply(&desired, unchanged).await?;
    Ok(())
}
