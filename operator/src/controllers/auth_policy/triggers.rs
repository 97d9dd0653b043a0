//! What wakes an AuthPolicy's reconcile: for each watched kind, the policies a change of one
//! of its objects concerns. Each returns the mapper a watch calls, over the caches it reads.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::audiences::claimed_audiences;
use crate::controllers::relations::{
    AudienceMemory, clients_listing, clients_using, dependents, issuer_of, users_of,
    users_of_issuer,
};
use crate::names::{CLIENT_LABEL, Names, POLICY_LABEL};
use crate::webhook::inject::selects;

/// Policies to reconcile.
type Targets = Vec<ObjectRef<AuthPolicy>>;

/// A managed Secret changed: the policy it was rendered for, and the issuer of the client
/// whose credentials it holds. An issuer's registry: also the policies whose egress or
/// sessions name a client of that issuer (whom it registers is part of their config).
pub fn managed_secret(
    clients: Store<OAuthClient>,
    policies: Store<AuthPolicy>,
) -> impl Fn(Secret) -> Targets {
    move |secret: Secret| {
        let namespace = secret.namespace().unwrap_or_default();
        let labels = secret.labels();
        let mut targets = Vec::new();
        if let Some(policy) = labels.get(POLICY_LABEL) {
            if Names::of(policy).clients == secret.name_any() {
                let issuer = (namespace.clone(), policy.clone());
                targets.extend(users_of_issuer(&policies, &clients, &issuer));
            }
            targets.push(ObjectRef::new(policy).within(&namespace));
        }
        if let Some(name) = labels.get(CLIENT_LABEL)
            && let Some(client) = clients.get(&ObjectRef::new(name).within(&namespace))
        {
            targets.push(issuer_of(&client));
        }
        targets
    }
}

/// A managed ConfigMap changed: the policy it was rendered for, the policies trusting that
/// one by reference, the policies whose egress or sessions name a client of that one (its
/// url and keys are in its config: it was created, changed or deleted), and the issuer that
/// one trusts (which may be waiting to see a new key in this verifier's config).
pub fn managed_config_map(
    clients: Store<OAuthClient>,
    policies: Store<AuthPolicy>,
) -> impl Fn(ConfigMap) -> Targets {
    move |cm: ConfigMap| {
        let namespace = cm.namespace().unwrap_or_default();
        let Some(policy) = cm.labels().get(POLICY_LABEL).cloned() else {
            return Vec::new();
        };
        let mut targets = dependents(&policies, &namespace, &policy);
        let issuer = (namespace.clone(), policy.clone());
        targets.extend(users_of_issuer(&policies, &clients, &issuer));
        let owner = ObjectRef::new(&policy).within(&namespace);
        if let Some(reference) = policies
            .get(&owner)
            .and_then(|p| p.spec.issuer.policy_ref.clone())
        {
            let issuer_namespace = reference.namespace.unwrap_or_else(|| namespace.clone());
            targets.push(ObjectRef::new(&reference.name).within(&issuer_namespace));
        }
        targets.push(owner);
        targets
    }
}

/// Any Secret changed (seen by its metadata only): the issuers of the clients whose
/// `existingSecret` it is, and the policies that name it.
pub fn user_secret(
    clients: Store<OAuthClient>,
    policies: Store<AuthPolicy>,
) -> impl Fn(PartialObjectMeta<Secret>) -> Targets {
    move |secret: PartialObjectMeta<Secret>| {
        let namespace = secret.namespace().unwrap_or_default();
        let name = secret.name_any();
        let mut targets: Targets = clients_using(&clients, &namespace, &name)
            .iter()
            .map(|c| issuer_of(c))
            .collect();
        targets.extend(policies_naming_secret(&policies, &namespace, &name));
        targets
    }
}

/// A pod changed: the policies of its namespace that select it.
pub fn pod(policies: Store<AuthPolicy>) -> impl Fn(Pod) -> Targets {
    move |pod: Pod| {
        let namespace = pod.namespace();
        policies
            .state()
            .iter()
            .filter(|p| p.namespace() == namespace && selects(&p.spec.selector, pod.labels()))
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect()
    }
}

/// A Service changed: every policy of its namespace (their status checks the Services in
/// front of their pods).
pub fn service(policies: Store<AuthPolicy>) -> impl Fn(Service) -> Targets {
    move |service: Service| {
        let namespace = service.namespace();
        policies
            .state()
            .iter()
            .filter(|p| p.namespace() == namespace)
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect()
    }
}

/// A client changed: its issuer re-renders the registry, and the policies of its namespace
/// whose egress or sessions name it their sidecar config.
pub fn client(policies: Store<AuthPolicy>) -> impl Fn(OAuthClient) -> Targets {
    move |client: OAuthClient| {
        let mut targets = vec![issuer_of(&client)];
        let all = policies.state();
        targets.extend(users_of(all.iter().map(AsRef::as_ref), &[&client]));
        targets
    }
}

/// A policy changed. As an issuer (created, changed, deleted): the policies whose egress or
/// sessions name a client of it. As an owner of audiences (one claimed, released or
/// re-admitted): the issuers of the clients that list it re-render their registries, the
/// policies whose egress or sessions name such a client their config, and the other
/// claimants their conflicts.
pub fn policy(
    clients: Store<OAuthClient>,
    policies: Store<AuthPolicy>,
) -> impl Fn(AuthPolicy) -> Targets {
    let memory = AudienceMemory::default();
    move |policy: AuthPolicy| {
        let touched = memory.touch(&policy);
        let issuer = (policy.namespace().unwrap_or_default(), policy.name_any());
        let mut targets = users_of_issuer(&policies, &clients, &issuer);
        let listing = clients_listing(&clients, &touched);
        targets.extend(listing.iter().map(|c| issuer_of(c)));
        let listing: Vec<&OAuthClient> = listing.iter().map(AsRef::as_ref).collect();
        let all = policies.state();
        targets.extend(users_of(all.iter().map(AsRef::as_ref), &listing));
        targets.extend(
            policies
                .state()
                .iter()
                .filter(|p| {
                    claimed_audiences(&p.spec)
                        .iter()
                        .any(|a| touched.contains(a))
                })
                .map(|p| ObjectRef::from_obj(p.as_ref())),
        );
        targets
    }
}

/// Policies that name `secret` in `namespace`: as an upstream's client secret (a rotated one
/// is copied into `<policy>-upstreams` at once), as `listen.tlsSecret` or as the Redis
/// credentials (their status says whether it exists).
fn policies_naming_secret(
    policies: &Store<AuthPolicy>,
    namespace: &str,
    secret: &str,
) -> Vec<ObjectRef<AuthPolicy>> {
    policies
        .state()
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(namespace)
                && (p.spec.listen.tls_secret.as_deref() == Some(secret)
                    || p.spec.issuer.self_.as_ref().is_some_and(|own| {
                        own.upstreams
                            .iter()
                            .any(|u| u.client_secret_ref.name == secret)
                            || own
                                .store
                                .redis
                                .as_ref()
                                .and_then(|r| r.credentials_secret.as_deref())
                                == Some(secret)
                    }))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}
