//! An issuer's upstream client secrets, copied from the users' Secrets into the one Secret
//! its pods mount.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use scopegate_crds::v1alpha1::{AuthPolicy, SelfIssuer};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::names::Names;
use crate::objects::{self, secret_data};

/// Copies each upstream's client secret, read from the user's Secret by reference, into
/// Secret `<policy>-upstreams` (mounted only into issuer pods, one file per upstream), so a
/// rotated secret rolls in with the kubelet's sync. Returns the upstreams whose secret was
/// not found.
pub async fn reconcile_upstreams(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ctx: &Context,
) -> Result<Vec<String>> {
    if own.upstreams.is_empty() {
        return Ok(Vec::new());
    }
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let mut data = BTreeMap::new();
    let mut missing = Vec::new();
    for upstream in &own.upstreams {
        let reference = &upstream.client_secret_ref;
        let secret = api.get_opt(&reference.name).await?;
        match secret.as_ref().and_then(|s| secret_data(s, &reference.key)) {
            Some(value) => {
                data.insert(scopegate_core::upstream::secret_key(&upstream.name), value);
            }
            None => missing.push(upstream.name.clone()),
        }
    }
    let desired = objects::secret(objects::owned_meta(policy, &names.upstreams)?, None, data);
    let unchanged = ctx
        .secret(&namespace, &names.upstreams)
        .is_some_and(|s| s.data == desired.data);
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(missing)
}
