//! The steps of an AuthPolicy reconcile that only `issuer.self` policies have: the signing
//! keys and their JWKS ([`keys`], deciding in [`key_plan`] from [`assessment`]), the serving certificate
//! ([`tls`]), the client registry ([`registry`]) and the upstreams' client secrets
//! ([`upstreams`]).

pub mod assessment;
pub mod key_plan;
pub mod keys;
pub mod registry;
pub mod tls;
pub mod upstreams;

use std::collections::BTreeMap;

use kube::ResourceExt;
use scopegate_crds::v1alpha1::{Algorithm, AuthPolicy, RenderedObjects, SelfIssuer, StoreKind};

use super::problem::Problem;
use super::render::{self, Trust};
use super::status::Observation;
use super::trust;
use crate::context::Context;
use crate::error::Result;
use crate::names::Names;
use crate::pki::ca::CaDocument;

/// How often a policy with a key waiting for its publication looks at the verifiers again.
const PUBLICATION_POLL_SECS: i64 = 2;

/// What the issuer-only steps share.
#[derive(Clone, Copy)]
pub struct IssuerStep<'a> {
    /// The policy's `issuer.self`.
    pub own: &'a SelfIssuer,
    /// The names of what it renders.
    pub names: &'a Names,
    /// The CA that signs its certificate.
    pub ca: &'a CaDocument,
    /// Now, in Unix seconds.
    pub now: i64,
}

/// The issuer-only steps: keys, certificate, client registry, upstream secrets. Returns what
/// the policy's own verifiers trust and its clients' cut-offs.
pub async fn reconcile(
    policy: &AuthPolicy,
    ctx: &Context,
    step: IssuerStep<'_>,
    observation: &mut Observation,
    due: &mut Vec<i64>,
) -> Result<(Trust, BTreeMap<String, i64>)> {
    let IssuerStep {
        own,
        names,
        ca,
        now,
    } = step;
    observation.mode = "Self";
    observation.memory_store = own.store.kind == StoreKind::Memory;
    let keys = keys::reconcile_keys(policy, own, names, ctx, now).await?;
    observation.problems.extend(keys.problems.iter().cloned());
    due.extend(keys.next_transition);
    if keys.publishing.is_some() {
        // A written key waits to be seen in every verifier's key set: look again soon
        // (the watches usually bring that sooner).
        due.push(now + PUBLICATION_POLL_SECS);
    }
    observation.next_transition = keys.next_transition;
    observation.trusted_keys = keys.jwks.keys.len();
    observation.keys_unreadable = keys.keys.is_none();
    observation.keys = keys.keys.clone();
    observation.publishing = keys.publishing.clone();
    observation.handled_rotation = keys.handled_rotation.clone();
    match tls::reconcile_tls(policy, own, names, ca, ctx, now).await? {
        Ok(renew_at) => due.push(renew_at),
        Err(problem) => observation.problems.push(problem),
    }
    observation.service_account_clients =
        registry::reconcile_registry(policy, names, ctx, now).await?;
    let missing = upstreams::reconcile_upstreams(policy, own, names, ctx).await?;
    observation.upstreams = render::upstream_status(own, &missing);
    observation.problems.extend(
        own.upstreams
            .iter()
            .filter(|u| missing.contains(&u.name))
            .map(|u| {
                Problem::SecretNotFound(
                    format!("issuer.self.upstreams[{}].clientSecretRef", u.name),
                    format!(
                        "{} (key {})",
                        u.client_secret_ref.name, u.client_secret_ref.key
                    ),
                )
            }),
    );
    observation.rendered = RenderedObjects {
        sidecar_config: None,
        jwks: Some(names.jwks.clone()),
        signing_keys: Some(names.signing_keys.clone()),
        tls: Some(names.tls.clone()),
        clients: Some(names.clients.clone()),
        upstreams: (!own.upstreams.is_empty()).then(|| names.upstreams.clone()),
        network_policy: None,
        session_keys: None,
    };
    let trust = Trust::Own {
        jwks: keys.jwks,
        hs256: own.signing.algorithm == Algorithm::HS256,
    };
    let namespace = policy.namespace().unwrap_or_default();
    Ok((
        trust,
        trust::client_cutoffs(ctx, &namespace, &policy.name_any()),
    ))
}
