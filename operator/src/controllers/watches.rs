//! The watches both controllers are fed by, and the caches they fill.
//!
//! Watches are label-selected wherever the operator owns the objects, so it never caches the
//! data of Secrets it does not manage. Users' own Secrets (a chosen client secret) are watched
//! by metadata only; pods are cached slimmed to what the status reads (labels, the injection
//! annotation, container names, images and ports).

use std::sync::Arc;

use futures::{StreamExt, future};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::names;
use crate::pki::ca::CaDocument;

/// How many reconciles of one kind run at once.
const CONCURRENCY: u16 = 32;

/// The settings every controller runs with.
pub fn config() -> controller::Config {
    controller::Config::default().concurrency(CONCURRENCY)
}

/// The watch configuration selecting the objects the operator manages.
pub fn managed() -> watcher::Config {
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
pub fn cache_feed<K>(
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
pub fn guarded<K>(
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

/// A watch of every `K` (each object trimmed by `trim`) feeding a cache and a controller's
/// trigger stream, and a flag set once the cache holds its first complete list. One watch
/// feeds both, so a reconcile an object triggers finds that object in the cache.
pub fn reflected<K>(
    api: Api<K>,
    trim: impl FnMut(&mut K) + Send + 'static,
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
    let (reader, writer) = reflector::store();
    let (listed, listed_rx) = watch::channel(false);
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .modify(trim)
            .default_backoff(),
    )
    .inspect(move |event| mark_listed(event, &listed))
    .touched_objects();
    (reader, events, listed_rx)
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
pub struct Listed {
    /// AuthPolicies listed.
    pub policies: watch::Receiver<bool>,
    /// OAuthClients listed.
    pub clients: watch::Receiver<bool>,
    /// Pods listed.
    pub pods: watch::Receiver<bool>,
    /// Services listed.
    pub services: watch::Receiver<bool>,
}

impl Listed {
    /// Resolves once every watch has listed once.
    pub async fn wait(self) {
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
pub fn ca_changes(
    receiver: watch::Receiver<Option<Arc<CaDocument>>>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        Some(((), receiver))
    })
}
