//! Who refers to whom, as both controllers' triggers and reconciles need it: clients and
//! their issuer, policies and the issuer they trust by reference, clients and the Secrets and
//! audiences they name. Pure reads of the caches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::audiences::claimed_audiences;
use crate::client_checks::issuer_key;

/// Policies that trust `issuer` (in `namespace`) through a policyRef.
pub fn dependents(
    policies: &Store<AuthPolicy>,
    namespace: &str,
    issuer: &str,
) -> Vec<ObjectRef<AuthPolicy>> {
    policies
        .state()
        .iter()
        .filter(|p| {
            p.spec.issuer.policy_ref.as_ref().is_some_and(|r| {
                r.name == issuer
                    && r.namespace
                        .as_deref()
                        .unwrap_or(p.namespace().as_deref().unwrap_or_default())
                        == namespace
            })
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The issuer a client references.
pub fn issuer_of(client: &OAuthClient) -> ObjectRef<AuthPolicy> {
    let (namespace, name) = issuer_key(client);
    ObjectRef::new(&name).within(&namespace)
}

/// Clients whose `existingSecret` names `secret` in `namespace`.
pub fn clients_using(
    clients: &Store<OAuthClient>,
    namespace: &str,
    secret: &str,
) -> Vec<Arc<OAuthClient>> {
    clients
        .state()
        .into_iter()
        .filter(|c| {
            c.namespace().as_deref() == Some(namespace)
                && c.spec
                    .existing_secret
                    .as_ref()
                    .is_some_and(|s| s.name == secret)
        })
        .collect()
}

/// Remembers each policy's audiences between its watch events, so that a change can wake
/// everything that depended on the audiences it had before as well as those it has now (an
/// audience removed from a resource server must leave its clients' tokens at once).
#[derive(Default)]
pub struct AudienceMemory(Mutex<HashMap<(String, String), Vec<String>>>);

impl AudienceMemory {
    /// The policy's audiences before this event and now.
    pub fn touch(&self, policy: &AuthPolicy) -> Vec<String> {
        let key = (policy.namespace().unwrap_or_default(), policy.name_any());
        let now = claimed_audiences(&policy.spec);
        let mut memory = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut touched = memory.insert(key, now.clone()).unwrap_or_default();
        touched.extend(now);
        touched.sort();
        touched.dedup();
        touched
    }
}

/// Clients that list one of `audiences`, as their own or in their token exchange.
pub fn clients_listing(
    clients: &Store<OAuthClient>,
    audiences: &[String],
) -> Vec<Arc<OAuthClient>> {
    clients
        .state()
        .into_iter()
        .filter(|c| {
            let exchange = (c.spec.token_exchange.iter())
                .flat_map(|x| x.subject_audiences.iter().chain(&x.audiences));
            (c.spec.audiences.iter().chain(exchange)).any(|a| audiences.contains(a))
        })
        .collect()
}
