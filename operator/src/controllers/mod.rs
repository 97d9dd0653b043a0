//! Wires the caches and the two controllers together and runs them until shutdown.
//!
//! Watches are label-selected wherever the operator owns the objects, so it never caches the
//! data of Secrets it does not manage. Users' own Secrets (a chosen client secret) are watched
//! by metadata only; pods are cached slimmed to what the status reads (labels, the injection
//! annotation, container names, images and ports).

pub mod auth_policy;
pub mod ca_bundle;
pub mod client_checks;
pub mod oauth_client;
pub mod relations;

use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use tokio::sync::watch;

use crate::audiences::effective_audiences;
use crate::context::Context;
use crate::metrics::Metrics;
use crate::names::{self, CLIENT_LABEL, POLICY_LABEL};
use crate::pki::ca::CaDocument;
use crate::webhook::inject::selects;
use client_checks::issuer_key;
use relations::{AudienceMemory, clients_listing, clients_using, dependents, issuer_of};

/// How many reconciles of one kind run at once.
const CONCURRENCY: u16 = 32;
/// How many heavy computations (key generation, password hashing, large renders) run at once,
/// on the blocking pool: fewer than the cores, so lease renewal and the webhook keep theirs.
const HEAVY_CONCURRENCY: usize = 2;

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        names::MANAGED_BY_LABEL,
        names::MANAGED_BY_VALUE
    ))
}

/// A cache kept current by its own watch, running in the background for as long as the
/// process runs (the webhook's caches).
pub fn cache<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, feed) = cache_feed(api, config);
    tokio::spawn(feed);
    reader
}

/// A cache and the future that keeps it current (run it; drop it to stop the watch).
fn cache_feed<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl future::Future<Output = ()> + Send + 'static)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // managedFields can outweigh an object's data and nothing here reads them.
    let events = watcher(api, config).modify(|object| object.managed_fields_mut().clear());
    let stream = reflector::reflector(writer, events)
        .default_backoff()
        .touched_objects();
    (reader, stream.for_each(|_| future::ready(())))
}

/// A watch of every `K` feeding both a cache (without managedFields) and a controller, and a
/// flag set once the cache holds its first complete list.
///
/// The watch decodes objects itself: one that does not decode as `K` (written by another
/// version, or a status someone else broke) is skipped with a Warning event on it, instead of
/// failing the whole watch and stalling every other object.
fn guarded<K>(
    client: &Client,
    recorder: Recorder,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    watch::Receiver<bool>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let (reader, writer) = reflector::store();
    let events = watcher(api, watcher::Config::default().any_semantic())
        .modify(|object| object.managed_fields_mut().clear())
        .filter_map(move |event| {
            future::ready(match event {
                Ok(event) => decode(event, &resource, &recorder).map(Ok),
                Err(err) => Some(Err(err)),
            })
        })
        .default_backoff();
    let (listed, listed_rx) = watch::channel(false);
    // After the reflector: the cache has applied the list when the flag is set.
    let events =
        reflector::reflector(writer, events).inspect(move |event| mark_listed(event, &listed));
    (reader, events.touched_objects(), listed_rx)
}

/// Decodes one watch event; `None` when its object does not decode.
fn decode<K: kube::Resource + serde::de::DeserializeOwned>(
    event: watcher::Event<DynamicObject>,
    resource: &ApiResource,
    recorder: &Recorder,
) -> Option<watcher::Event<K>> {
    let parse = |object: DynamicObject| -> Option<K> {
        match object.clone().try_parse::<K>() {
            Ok(typed) => Some(typed),
            Err(err) => {
                let note =
                    format!("this object does not decode and is ignored until it is fixed: {err}");
                tracing::warn!(
                    namespace = object.metadata.namespace.as_deref().unwrap_or_default(),
                    name = object.metadata.name.as_deref().unwrap_or_default(),
                    "{note}"
                );
                let reference = object.object_ref(resource);
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "InvalidObject".into(),
                        note: Some(note),
                        action: "Decode".into(),
                        secondary: None,
                    };
                    let _ = recorder.publish(&event, &reference).await;
                });
                None
            }
        }
    };
    Some(match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(parse(object)?),
        watcher::Event::Delete(object) => watcher::Event::Delete(parse(object)?),
        watcher::Event::InitApply(object) => watcher::Event::InitApply(parse(object)?),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}

/// Policies that name `secret` in `namespace`: as an upstream's client secret (a rotated one
/// is copied into `<policy>-upstreams` at once), as `listen.tlsSecret` or as the Redis
/// credentials (their status says whether it exists).
fn policies_with_upstream_secret(
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

/// What the controllers are run with besides the client.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// This replica's identity (the events' reporting instance).
    pub identity: String,
    /// Per-namespace caps.
    pub limits: crate::limits::Limits,
}

/// Runs both controllers until `shutdown` resolves. `ready` is called once the caches synced.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    ca: watch::Receiver<Option<Arc<CaDocument>>>,
    settings: RunSettings,
    shutdown: impl future::Future<Output = ()> + Send + Sync + Clone + 'static,
    ready: impl FnOnce(),
) {
    let RunSettings {
        cluster_domain,
        identity,
        limits,
    } = settings;
    let policies_api: Api<AuthPolicy> = Api::all(client.clone());
    let clients_api: Api<OAuthClient> = Api::all(client.clone());
    let secrets_api: Api<Secret> = Api::all(client.clone());
    let config_maps_api: Api<ConfigMap> = Api::all(client.clone());

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "scopegate-operator".into(),
            instance: Some(identity),
        },
    );
    let (policies, policy_events, policies_listed) =
        guarded::<AuthPolicy>(&client, recorder.clone());
    let (clients, client_events, clients_listed) =
        guarded::<OAuthClient>(&client, recorder.clone());
    let (pods_listed, pods_listed_rx) = watch::channel(false);
    let (services_listed, services_listed_rx) = watch::channel(false);
    let listed = Listed {
        policies: policies_listed,
        clients: clients_listed,
        pods: pods_listed_rx,
        services: services_listed_rx,
    };
    let listed_for_policies = listed.clone();
    let policy_controller = Controller::for_stream(policy_events, policies.clone());
    let client_controller = Controller::for_stream(client_events, clients.clone());
    // The watches of this run end with it (a lost lease ends the run).
    let mut feeds = tokio::task::JoinSet::new();
    let (secrets, feed) = cache_feed(secrets_api.clone(), managed());
    feeds.spawn(feed);
    let (config_maps, feed) = cache_feed(config_maps_api.clone(), managed());
    feeds.spawn(feed);
    let network_policies_api: Api<NetworkPolicy> = Api::all(client.clone());
    let (network_policies, feed) = cache_feed(network_policies_api.clone(), managed());
    feeds.spawn(feed);
    // One watch of pods feeds both the cache the status reads and the policies' triggers, so a
    // reconcile a pod triggers finds that pod in the cache.
    let (pods, pods_writer) = reflector::store();
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .modify(auth_policy::pods::slim)
            .default_backoff(),
    )
    .inspect(move |event| mark_listed(event, &pods_listed))
    .touched_objects();
    // Likewise for Services.
    let (services, services_writer) = reflector::store();
    let service_events = reflector::reflector(
        services_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(|service: &mut Service| service.managed_fields_mut().clear())
        .default_backoff(),
    )
    .inspect(move |event| mark_listed(event, &services_listed))
    .touched_objects();

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics,
        policies: policies.clone(),
        clients: clients.clone(),
        secrets: secrets.clone(),
        config_maps: config_maps.clone(),
        pods,
        services: services.clone(),
        network_policies: network_policies.clone(),
        ca: ca.clone(),
        heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_CONCURRENCY)),
        cluster_domain,
        limits,
    });

    for (what, ready) in [
        (
            "secrets",
            futures::FutureExt::boxed(secrets.wait_until_ready()),
        ),
        (
            "configmaps",
            futures::FutureExt::boxed(config_maps.wait_until_ready()),
        ),
        (
            "networkpolicies",
            futures::FutureExt::boxed(network_policies.wait_until_ready()),
        ),
    ] {
        if ready.await.is_err() {
            tracing::error!(cache = what, "cache writer dropped before it was ready");
        }
    }
    ready();

    // Dependents of an issuer (policyRef) need no watch of their own: every change they care
    // about (keys, deletion, an HS256 switch) changes the issuer's JWKS ConfigMap.
    let (clients_for_secrets, policies_for_cms, clients_for_watched) =
        (clients.clone(), policies.clone(), clients.clone());
    let (clients_for_audiences, policies_for_audiences) = (clients.clone(), policies.clone());
    let policy_memory = AudienceMemory::default();
    let (policies_for_pods, policies_for_services) = (policies.clone(), policies.clone());
    let policies_for_user_secrets = policies.clone();
    let policy_controller = policy_controller
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .watches(secrets_api.clone(), managed(), move |secret: Secret| {
            let namespace = secret.namespace().unwrap_or_default();
            let labels = secret.labels();
            let mut targets = Vec::new();
            if let Some(policy) = labels.get(POLICY_LABEL) {
                targets.push(ObjectRef::new(policy).within(&namespace));
            }
            if let Some(name) = labels.get(CLIENT_LABEL)
                && let Some(client) =
                    clients_for_secrets.get(&ObjectRef::new(name).within(&namespace))
            {
                targets.push(issuer_of(&client));
            }
            targets
        })
        .watches(config_maps_api, managed(), move |cm: ConfigMap| {
            let namespace = cm.namespace().unwrap_or_default();
            let Some(policy) = cm.labels().get(POLICY_LABEL).cloned() else {
                return Vec::new();
            };
            let mut targets = dependents(&policies_for_cms, &namespace, &policy);
            let owner = ObjectRef::new(&policy).within(&namespace);
            // A verifier's config changed: its issuer may be waiting to see a new key there.
            if let Some(reference) = policies_for_cms
                .get(&owner)
                .and_then(|p| p.spec.issuer.policy_ref.clone())
            {
                let issuer_namespace = reference.namespace.unwrap_or_else(|| namespace.clone());
                targets.push(ObjectRef::new(&reference.name).within(&issuer_namespace));
            }
            targets.push(owner);
            targets
        })
        .watches(
            clients_api.clone(),
            watcher::Config::default(),
            |client: OAuthClient| Some(issuer_of(&client)),
        )
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
            move |secret: PartialObjectMeta<Secret>| {
                let namespace = secret.namespace().unwrap_or_default();
                let name = secret.name_any();
                let mut targets = clients_using(&clients_for_watched, &namespace, &name)
                    .iter()
                    .map(|c| issuer_of(c))
                    .collect::<Vec<_>>();
                targets.extend(policies_with_upstream_secret(
                    &policies_for_user_secrets,
                    &namespace,
                    &name,
                ));
                targets
            },
        )
        // A rendered NetworkPolicy edited or deleted by someone else is rendered again.
        .owns(network_policies_api, managed())
        .watches_stream(pod_events, move |pod: Pod| {
            let namespace = pod.namespace();
            policies_for_pods
                .state()
                .iter()
                .filter(|p| p.namespace() == namespace && selects(&p.spec.selector, pod.labels()))
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(service_events, move |service: Service| {
            let namespace = service.namespace();
            policies_for_services
                .state()
                .iter()
                .filter(|p| p.namespace() == namespace)
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(
            policies_api.clone(),
            watcher::Config::default(),
            move |policy: AuthPolicy| {
                // An audience claimed, released or re-admitted: the issuers of the clients
                // that list it re-render their registries, and the other claimants their
                // conflicts.
                let touched = policy_memory.touch(&policy);
                let mut targets: Vec<_> = clients_listing(&clients_for_audiences, &touched)
                    .iter()
                    .map(|c| issuer_of(c))
                    .collect();
                targets.extend(
                    policies_for_audiences
                        .state()
                        .iter()
                        .filter(|p| {
                            effective_audiences(&p.spec)
                                .iter()
                                .any(|a| touched.contains(a))
                        })
                        .map(|p| ObjectRef::from_obj(p.as_ref())),
                );
                targets
            },
        )
        .reconcile_all_on(ca_changes(ca.clone()))
        .graceful_shutdown_on(shutdown.clone());

    let (clients_for_policies, clients_for_user_secrets) = (clients.clone(), clients.clone());
    let clients_for_existing = clients.clone();
    let clients_by_audience = clients.clone();
    let client_memory = AudienceMemory::default();
    let client_controller = client_controller
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .owns(secrets_api.clone(), managed())
        .watches(
            policies_api,
            watcher::Config::default(),
            move |policy: AuthPolicy| {
                let key = (policy.namespace().unwrap_or_default(), policy.name_any());
                let touched = client_memory.touch(&policy);
                let mut targets: Vec<_> = clients_for_policies
                    .state()
                    .iter()
                    .filter(|c| issuer_key(c) == key)
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect();
                targets.extend(
                    clients_listing(&clients_by_audience, &touched)
                        .iter()
                        .map(|c| ObjectRef::from_obj(c.as_ref())),
                );
                targets
            },
        )
        .watches(secrets_api.clone(), managed(), move |secret: Secret| {
            // The issuer's registry changed: its clients may now be registered.
            let namespace = secret.namespace().unwrap_or_default();
            let Some(policy) = secret.labels().get(POLICY_LABEL).cloned() else {
                return Vec::new();
            };
            let key = (namespace, policy);
            clients_for_user_secrets
                .state()
                .iter()
                .filter(|c| issuer_key(c) == key)
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
            move |secret: PartialObjectMeta<Secret>| {
                // An existingSecret created or deleted: the client's status says so.
                let namespace = secret.namespace().unwrap_or_default();
                clients_using(&clients_for_existing, &namespace, &secret.name_any())
                    .iter()
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(ca_changes(ca.clone()))
        .graceful_shutdown_on(shutdown);

    let policies_done = policy_controller
        .run(
            move |policy, ctx| {
                let listed = listed_for_policies.clone();
                async move {
                    listed.wait().await;
                    auth_policy::reconcile(policy, ctx).await
                }
            },
            auth_policy::error_policy,
            ctx.clone(),
        )
        .for_each(|result| {
            if let Err(err) = result {
                tracing::debug!(error = %err, "AuthPolicy controller event");
            }
            future::ready(())
        });
    let clients_done = client_controller
        .run(
            move |client, ctx| {
                let listed = listed.clone();
                async move {
                    listed.wait().await;
                    oauth_client::reconcile(client, ctx).await
                }
            },
            oauth_client::error_policy,
            ctx,
        )
        .for_each(|result| {
            if let Err(err) = result {
                tracing::debug!(error = %err, "OAuthClient controller event");
            }
            future::ready(())
        });
    future::join(policies_done, clients_done).await;
}

/// Whether every AuthPolicy and every OAuthClient has been listed. Each kind's cache is fed by
/// its own controller's stream, so a reconcile starting early would see the other kind half
/// listed: an issuer rendering its registry without clients not listed yet (deregistering
/// them), a client whose issuer seems missing, a key counted as published without a
/// dependent's config. Reconciles wait here; both streams keep running meanwhile. (A
/// reflector Store's own readiness future wakes one waiter only, so it is not used here.)
///
/// Pods and Services likewise: a policy's status counts its pods and checks the Services in
/// front of them, so a reconcile before their first list would report no pods (and write a
/// status that the next reconcile takes back) on every start.
#[derive(Clone)]
struct Listed {
    policies: watch::Receiver<bool>,
    clients: watch::Receiver<bool>,
    pods: watch::Receiver<bool>,
    services: watch::Receiver<bool>,
}

impl Listed {
    async fn wait(self) {
        for mut listed in [self.policies, self.clients, self.pods, self.services] {
            if listed.wait_for(|done| *done).await.is_err() {
                tracing::error!("a watch ended before its first list completed");
            }
        }
    }
}

/// Sets `listed` once a reflector has applied its first complete list.
fn mark_listed<K>(event: &Result<watcher::Event<K>, watcher::Error>, listed: &watch::Sender<bool>) {
    if matches!(event, Ok(watcher::Event::InitDone)) {
        listed.send_replace(true);
    }
}

/// A stream that yields whenever the CA changes.
fn ca_changes(
    receiver: watch::Receiver<Option<Arc<CaDocument>>>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        Some(((), receiver))
    })
}
