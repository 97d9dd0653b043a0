//! Starts the two controllers: fills the caches they share (the [`Context`]) from the
//! [`watches`], then runs [`auth_policy::controller`] and [`oauth_client::controller`], each
//! of which owns its own watches and what they wake. What both kinds use lives beside them:
//! [`client_checks`], [`relations`] and [`ca_bundle`]; neither imports the other.

pub mod auth_policy;
pub mod ca_bundle;
pub mod oauth_client;
pub mod relations;
pub mod watches;

use std::sync::Arc;

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use tokio::sync::watch;

use crate::context::Context;
use crate::metrics::Metrics;
use crate::pki::ca::CaDocument;
use watches::{Listed, cache_feed, guarded, managed, reflected};

/// How many heavy computations (key generation, password hashing, large renders) run at once,
/// on the blocking pool: fewer than the cores, so lease renewal and the webhook keep theirs.
const HEAVY_CONCURRENCY: usize = 2;

/// What the controllers are run with besides the client.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// This replica's identity (the events' reporting instance).
    pub identity: String,
    /// Per-namespace caps.
    pub limits: crate::limits::Limits,
    /// The proxy of the operator's reads of outside issuers.
    pub proxy: crate::discovery::Proxy,
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
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "scopegate-operator".into(),
            instance: Some(settings.identity),
        },
    );
    let (policies, policy_events, policies_listed) =
        guarded::<AuthPolicy>(&client, recorder.clone());
    let (clients, client_events, clients_listed) =
        guarded::<OAuthClient>(&client, recorder.clone());
    let (pods, pod_events, pods_listed) =
        reflected(Api::<Pod>::all(client.clone()), auth_policy::pods::slim);
    let (services, service_events, services_listed) =
        reflected(Api::<Service>::all(client.clone()), |s: &mut Service| {
            s.managed_fields_mut().clear();
        });
    // The watches of this run end with it (a lost lease ends the run).
    let mut feeds = tokio::task::JoinSet::new();
    let (secrets, feed) = cache_feed(Api::<Secret>::all(client.clone()), managed());
    feeds.spawn(feed);
    let (config_maps, feed) = cache_feed(Api::<ConfigMap>::all(client.clone()), managed());
    feeds.spawn(feed);
    let (network_policies, feed) = cache_feed(Api::<NetworkPolicy>::all(client.clone()), managed());
    feeds.spawn(feed);

    let (discovery, discovered) =
        crate::discovery::Discovery::new(settings.proxy.clone(), Some(client.clone()));
    let ctx = Arc::new(Context {
        client,
        recorder,
        metrics,
        policies,
        clients,
        secrets,
        config_maps,
        pods,
        services,
        network_policies,
        ca,
        heavy: Arc::new(tokio::sync::Semaphore::new(HEAVY_CONCURRENCY)),
        cluster_domain: settings.cluster_domain,
        limits: settings.limits,
        discovery,
    });
    wait_for_managed_caches(&ctx).await;
    ready();

    let listed = Listed {
        policies: policies_listed,
        clients: clients_listed,
        pods: pods_listed,
        services: services_listed,
    };
    let streams = auth_policy::Streams {
        policies: policy_events.boxed(),
        pods: pod_events.boxed(),
        services: service_events.boxed(),
        discovered: stream_of(discovered),
    };
    future::join(
        auth_policy::controller(ctx.clone(), streams, listed.clone(), shutdown.clone()),
        oauth_client::controller(ctx, client_events.boxed(), listed, shutdown),
    )
    .await;
}

/// The policies the discovery reader wakes, as a stream.
fn stream_of<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> futures::stream::BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// Waits until the caches of managed Secrets, ConfigMaps and NetworkPolicies hold their
/// first list.
async fn wait_for_managed_caches(ctx: &Context) {
    for (what, ready) in [
        ("secrets", ctx.secrets.wait_until_ready().boxed()),
        ("configmaps", ctx.config_maps.wait_until_ready().boxed()),
        (
            "networkpolicies",
            ctx.network_policies.wait_until_ready().boxed(),
        ),
    ] {
        if ready.await.is_err() {
            tracing::error!(cache = what, "cache writer dropped before it was ready");
        }
    }
}

/// Counts a failed reconcile of `object` (a `kind`) in the metrics and logs it with its cause.
pub fn record_failure(
    ctx: &Context,
    kind: &'static str,
    object: &impl ResourceExt,
    error: &crate::error::Error,
) {
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::FailureLabels {
            kind,
            category: error.category(),
        })
        .inc();
    tracing::warn!(
        namespace = object.namespace().unwrap_or_default(),
        name = object.name_any(),
        category = error.category(),
        error = %scopegate_core::error_chain(error),
        "{kind} reconcile failed"
    );
}
