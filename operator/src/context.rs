//! What every reconcile shares: the client, caches of the objects the operator reads, the CA,
//! events and metrics. Built once at start-up.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::pki::ca::CaDocument;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "scopegate-operator";

/// Shared state of the controllers.
pub struct Context {
    /// The API client (the operator's ServiceAccount).
    pub client: Client,
    /// Publishes events on reconciled objects.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Every AuthPolicy.
    pub policies: Store<AuthPolicy>,
    /// Every OAuthClient.
    pub clients: Store<OAuthClient>,
    /// Secrets the operator manages (selected by label).
    pub secrets: Store<Secret>,
    /// ConfigMaps the operator manages (selected by label).
    pub config_maps: Store<ConfigMap>,
    /// Every pod, slimmed to labels, the injection annotation and its containers' names,
    /// images and ports ([`crate::controllers::auth_policy::pods::slim`]).
    pub pods: Store<k8s_openapi::api::core::v1::Pod>,
    /// Every Service (to spot one that targets an app's port around its sidecar).
    pub services: Store<k8s_openapi::api::core::v1::Service>,
    /// NetworkPolicies the operator manages (selected by label).
    pub network_policies: Store<k8s_openapi::api::networking::v1::NetworkPolicy>,
    /// The tenants' CA, once the leader has loaded or made it.
    pub ca: watch::Receiver<Option<Arc<CaDocument>>>,
    /// Permits for heavy work (key generation, password hashing, large renders), which runs
    /// on the blocking pool so that lease renewal and the webhook never wait for it.
    pub heavy: Arc<tokio::sync::Semaphore>,
    /// The cluster's DNS domain (`cluster.local`): Service names are `<svc>.<ns>.svc` and
    /// `<svc>.<ns>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Per-namespace caps on issuers and clients.
    pub limits: crate::limits::Limits,
    /// Outside issuers' discovery documents and JWKS, read in the background.
    pub discovery: Arc<crate::discovery::Discovery>,
}

impl Context {
    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        now()
    }

    /// Runs CPU-heavy `work` on the blocking pool, at most as many at once as [`Context::heavy`]
    /// has permits, and returns its result.
    pub async fn heavy<T, F>(&self, work: F) -> Result<T, crate::error::Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let _permit = self
            .heavy
            .acquire()
            .await
            .map_err(|_| crate::error::Error::Background)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| crate::error::Error::Background)
    }

    /// A cached managed Secret.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
    }

    /// A cached managed ConfigMap.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// Publishes an event; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.event_related(object, warning, reason, note, None)
            .await;
    }

    /// Publishes an event about `object` and a `related` one. Repeats of an event (same
    /// object, reason and related object) within a few minutes are counted on the first one,
    /// whose note stays: events whose notes differ must differ in `related`.
    pub async fn event_related<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
        related: Option<k8s_openapi::api::core::v1::ObjectReference>,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: related,
        };
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(error = %err, "publishing an event failed");
        }
    }

    /// Server-side applies `object` unless `current` already holds the same content.
    pub async fn apply<K>(&self, object: &K, unchanged: bool) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        if unchanged {
            self.metrics.skipped_writes.inc();
            return Ok(());
        }
        let meta = object.meta();
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref())
        else {
            return Ok(());
        };
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
        self.metrics.writes.inc();
        Ok(())
    }
}

pub use crate::clock::{now, rfc3339};
