//! What a policy trusts: the keys of the issuer its `policyRef` names (copied into its own
//! sidecar config), the scopes that issuer declares, and the cut-offs of its clients.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use scopegate_core::jwk::Jwks;
use scopegate_crds::v1alpha1::{Algorithm, AuthPolicy, NamespacedRef};

use super::problem::Problem;
use super::render::{self, Trust};
use super::status::Observation;
use crate::client_checks::issuer_key;
use crate::context::Context;
use crate::names::{JWKS_FILE, Names, client_id};
use crate::pki::registry::revocation_cutoff;

/// A `policyRef`: the referenced issuer's keys, and its clients' cut-offs once it admits this
/// namespace (nothing of an issuer reaches a namespace it does not admit, its clients' names
/// included).
pub fn policy_ref(
    policy: &AuthPolicy,
    reference: &NamespacedRef,
    ctx: &Context,
    namespace: &str,
    observation: &mut Observation,
) -> (Trust, BTreeMap<String, i64>) {
    observation.mode = "PolicyRef";
    let (trust, problem) = resolve_policy_ref(policy, reference, ctx);
    observation.problems.extend(problem);
    if let Trust::Referenced { jwks, .. } = &trust {
        observation.trusted_keys = jwks.keys.len();
    }
    let issuer_namespace = reference.namespace.as_deref().unwrap_or(namespace);
    let cutoffs = match trust {
        Trust::Unresolved => BTreeMap::new(),
        _ => client_cutoffs(ctx, issuer_namespace, &reference.name),
    };
    (trust, cutoffs)
}

/// Resolves a `policyRef` to the referenced issuer's published keys, copied into this
/// namespace's sidecar config.
fn resolve_policy_ref(
    policy: &AuthPolicy,
    reference: &NamespacedRef,
    ctx: &Context,
) -> (Trust, Option<Problem>) {
    let namespace = reference
        .namespace
        .clone()
        .or_else(|| policy.namespace())
        .unwrap_or_default();
    let label = format!("{namespace}/{}", reference.name);
    let Some(issuer) = ctx
        .policies
        .get(&ObjectRef::new(&reference.name).within(&namespace))
    else {
        return (Trust::Unresolved, Some(Problem::PolicyRefNotFound(label)));
    };
    let Some(own) = issuer.spec.issuer.self_.as_ref() else {
        return (Trust::Unresolved, Some(Problem::PolicyRefNotIssuer(label)));
    };
    let own_namespace = policy.namespace().unwrap_or_default();
    let admitted = own_namespace == namespace
        || own
            .allowed_client_namespaces
            .iter()
            .any(|n| n == "*" || *n == own_namespace);
    if !admitted {
        return (
            Trust::Unresolved,
            Some(Problem::PolicyRefNotAllowed(label, own_namespace)),
        );
    }
    if own.signing.algorithm == Algorithm::HS256 {
        return (Trust::Unresolved, Some(Problem::PolicyRefHs256(label)));
    }
    let jwks: Option<Jwks> = ctx
        .config_map(&namespace, &Names::of(&reference.name).jwks)
        .and_then(|cm| cm.data.as_ref()?.get(JWKS_FILE).cloned())
        .and_then(|text| serde_json::from_str(&text).ok());
    match jwks {
        Some(jwks) if !jwks.keys.is_empty() => (
            Trust::Referenced {
                issuer: own.url.clone(),
                jwks,
                feed_url: render::feed_url(&namespace, &own.service),
                feed_subject_key: render::feed_subject_key(&issuer),
            },
            None,
        ),
        _ => (
            Trust::Unresolved,
            Some(Problem::PolicyRefKeysPending(label)),
        ),
    }
}

/// The issuer whose tokens the policy's rules are met by, and the scopes it declares: its own
/// for a self issuer, the referenced issuer's for a resolved `policyRef`; `None` for an outside
/// issuer (its scopes are not known) or an unresolved reference (reported already).
pub fn declared_scopes(
    policy: &AuthPolicy,
    trust: &Trust,
    ctx: &Context,
) -> Option<(String, BTreeMap<String, String>)> {
    let namespace = policy.namespace().unwrap_or_default();
    match trust {
        Trust::Own { .. } => {
            let own = policy.spec.issuer.self_.as_ref()?;
            Some((
                format!("{namespace}/{}", policy.name_any()),
                own.scopes.clone(),
            ))
        }
        Trust::Referenced { .. } => {
            let reference = policy.spec.issuer.policy_ref.as_ref()?;
            let issuer_namespace = reference.namespace.clone().unwrap_or(namespace);
            let issuer = ctx
                .policies
                .get(&ObjectRef::new(&reference.name).within(&issuer_namespace))?;
            let own = issuer.spec.issuer.self_.as_ref()?;
            Some((
                format!("{issuer_namespace}/{}", reference.name),
                own.scopes.clone(),
            ))
        }
        Trust::External(_) | Trust::Unresolved => None,
    }
}

/// Client cut-offs (`revokeTokensIssuedBefore`) of every client of one issuer.
pub fn client_cutoffs(
    ctx: &Context,
    issuer_namespace: &str,
    issuer_name: &str,
) -> BTreeMap<String, i64> {
    let now = ctx.now();
    let key = (issuer_namespace.to_owned(), issuer_name.to_owned());
    ctx.clients
        .state()
        .iter()
        .filter(|c| issuer_key(c) == key)
        .filter_map(|c| {
            Some((
                client_id(c),
                revocation_cutoff(c, now)?.effective.as_second(),
            ))
        })
        .collect()
}
