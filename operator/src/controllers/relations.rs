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

/// Whether `policy`'s egress or sessions name the client `name` (of the policy's own
/// namespace: a clientRef never leaves it).
pub fn uses_client(policy: &AuthPolicy, name: &str) -> bool {
    let spec = &policy.spec;
    (spec.egress.as_ref()).is_some_and(|e| e.client_ref.name == name)
        || (spec.sessions.as_ref()).is_some_and(|s| s.client_ref.name == name)
}

/// The policies whose egress or sessions name one of `clients`, each in that client's own
/// namespace: their sidecar config is rendered from the client and its issuer.
pub fn users_of<'a>(
    policies: impl IntoIterator<Item = &'a AuthPolicy>,
    clients: &[&OAuthClient],
) -> Vec<ObjectRef<AuthPolicy>> {
    policies
        .into_iter()
        .filter(|p| {
            clients
                .iter()
                .any(|c| c.namespace() == p.namespace() && uses_client(p, &c.name_any()))
        })
        .map(ObjectRef::from_obj)
        .collect()
}

/// The clients whose issuerRef names the policy `(namespace, name)`.
pub fn clients_of<'a>(
    clients: &'a [Arc<OAuthClient>],
    issuer: &(String, String),
) -> Vec<&'a OAuthClient> {
    (clients.iter())
        .filter(|c| issuer_key(c) == *issuer)
        .map(AsRef::as_ref)
        .collect()
}

/// The policies whose egress or sessions name a client of the issuer `(namespace, name)`:
/// what that issuer is (its url, whether it issues, whom it registers) is part of their
/// sidecar config, so a change of it, or of its registry, renders them again.
pub fn users_of_issuer(
    policies: &Store<AuthPolicy>,
    clients: &Store<OAuthClient>,
    issuer: &(String, String),
) -> Vec<ObjectRef<AuthPolicy>> {
    let all = clients.state();
    let policies = policies.state();
    users_of(
        policies.iter().map(AsRef::as_ref),
        &clients_of(&all, issuer),
    )
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policy(namespace: &str, name: &str, uses: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{}}\n  issuer: {{policyRef: {{name: auth}}}}\n  upstream: {{port: 8080}}\n{uses}"
        ))
        .unwrap()
    }

    fn egress(client: &str) -> String {
        format!(
            "  egress:\n    clientRef: {{name: {client}}}\n    targets: [{{name: t, url: 'http://t.x.svc', audience: 'https://t.x.svc'}}]\n"
        )
    }

    fn sessions(client: &str) -> String {
        format!(
            "  sessions:\n    clientRef: {{name: {client}}}\n    redirectUri: https://x.example/.scopegate/callback\n    paths: [/]\n"
        )
    }

    fn client(namespace: &str, name: &str, issuer_ref: &str) -> Arc<OAuthClient> {
        Arc::new(
            serde_yaml_ng::from_str(&format!(
                "apiVersion: scopegate.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  issuerRef: {{{issuer_ref}}}\n  grantTypes: [client_credentials]\n"
            ))
            .unwrap(),
        )
    }

    fn names(refs: &[ObjectRef<AuthPolicy>]) -> Vec<String> {
        let mut names: Vec<String> = (refs.iter())
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_users_of_an_issuers_clients_are_the_policies_naming_them_in_their_namespace() {
        let clients = [
            client("shop", "billing", "name: auth"),
            client("shop", "web", "name: auth"),
            client("bank", "teller", "name: auth, namespace: shop"),
            client("shop", "other", "name: elsewhere"),
        ];
        let policies = [
            policy("shop", "billing", &egress("billing")),
            policy("shop", "web", &sessions("web")),
            policy("bank", "teller", &egress("teller")),
            policy("shop", "calls-other", &egress("other")),
            policy("shop", "plain", ""),
        ];
        let issuer = ("shop".to_owned(), "auth".to_owned());
        let of_auth = clients_of(&clients, &issuer);
        assert_eq!(of_auth.len(), 3);
        let users = users_of(policies.iter(), &of_auth);
        assert_eq!(names(&users), ["bank/teller", "shop/billing", "shop/web"]);
        // A policy naming the client both ways is one user; one naming another client is none.
        let both = policy(
            "shop",
            "both",
            &format!("{}{}", egress("web"), sessions("web")),
        );
        assert!(uses_client(&both, "web"));
        assert!(!uses_client(&both, "billing"));
        assert_eq!(users_of([&both], &of_auth).len(), 1);
    }

    #[test]
    fn a_tenant_can_neither_use_our_client_nor_pass_for_our_issuer() {
        let ours = client("shop", "web", "name: auth");
        // Their policy names our client by name: a clientRef stays in its own namespace.
        let theirs = policy("evil", "web", &sessions("web"));
        assert!(users_of([&theirs], &[&ours]).is_empty());
        // Their issuer-looking policy "auth": its clients are theirs, never ours.
        let clients = [ours.clone(), client("evil", "web", "name: auth")];
        let evil_issuer = ("evil".to_owned(), "auth".to_owned());
        let of_theirs = clients_of(&clients, &evil_issuer);
        assert_eq!(of_theirs.len(), 1);
        assert_eq!(of_theirs[0].namespace().as_deref(), Some("evil"));
        let our_policy = policy("shop", "web", &sessions("web"));
        assert_eq!(
            names(&users_of([&our_policy, &theirs], &of_theirs)),
            ["evil/web"]
        );
    }
}
