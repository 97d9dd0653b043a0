//! What wakes an OAuthClient's reconcile: for each watched kind, the clients a change of one
//! of its objects concerns. Each returns the mapper a watch calls, over the cache it reads.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::client_checks::issuer_key;
use crate::controllers::relations::{AudienceMemory, clients_listing, clients_using};
use crate::names::POLICY_LABEL;

/// Clients to reconcile.
type Targets = Vec<ObjectRef<OAuthClient>>;

/// The clients of the issuer `(namespace, name)`.
fn clients_of(clients: &Store<OAuthClient>, key: &(String, String)) -> Targets {
    clients
        .state()
        .iter()
        .filter(|c| issuer_key(c) == *key)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// A policy changed: its clients (their issuer changed), and the clients listing an audience
/// it claimed, released or re-admitted.
pub fn policy(clients: Store<OAuthClient>) -> impl Fn(AuthPolicy) -> Targets {
    let memory = AudienceMemory::default();
    move |policy: AuthPolicy| {
        let key = (policy.namespace().unwrap_or_default(), policy.name_any());
        let touched = memory.touch(&policy);
        let mut targets = clients_of(&clients, &key);
        targets.extend(
            clients_listing(&clients, &touched)
                .iter()
                .map(|c| ObjectRef::from_obj(c.as_ref())),
        );
        targets
    }
}

/// A managed Secret of a policy changed (its registry among them): the issuer's clients may
/// now be registered.
pub fn registry(clients: Store<OAuthClient>) -> impl Fn(Secret) -> Targets {
    move |secret: Secret| {
        let namespace = secret.namespace().unwrap_or_default();
        let Some(policy) = secret.labels().get(POLICY_LABEL).cloned() else {
            return Vec::new();
        };
        clients_of(&clients, &(namespace, policy))
    }
}

/// Any Secret created or deleted (seen by its metadata only): the clients whose
/// `existingSecret` it is (their status says whether it exists).
pub fn user_secret(clients: Store<OAuthClient>) -> impl Fn(PartialObjectMeta<Secret>) -> Targets {
    move |secret: PartialObjectMeta<Secret>| {
        let namespace = secret.namespace().unwrap_or_default();
        clients_using(&clients, &namespace, &secret.name_any())
            .iter()
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect()
    }
}
