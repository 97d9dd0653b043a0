//! The AuthPolicy controller: what wakes a policy's reconcile ([`triggers`]), and the
//! reconcile itself ([`reconcile`]), whose issuer-only steps are in [`issuer`], whose pure
//! parts are [`render`] (the sidecar config), [`inbound`] (the NetworkPolicy), [`pods`] (what
//! the selected pods say), [`status`], and what the sidecar's own use of a client needs
//! ([`client_use`], for [`egress`] and [`sessions`]).

pub mod client_use;
pub mod discovered;
pub mod egress;
pub mod inbound;
pub mod issuer;
pub mod pods;
pub mod problem;
pub mod reconcile;
pub mod render;
pub mod sessions;
pub mod status;
pub mod triggers;
pub mod trust;

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::context::Context;
use crate::controllers::watches::{self, Listed, ca_changes, managed};

/// The watch streams the AuthPolicy controller shares with the caches: its own kind, and the
/// pods and Services its status reads.
pub struct Streams {
    /// Every AuthPolicy.
    pub policies: BoxStream<'static, Result<AuthPolicy, watcher::Error>>,
    /// Every pod, slimmed.
    pub pods: BoxStream<'static, Result<Pod, watcher::Error>>,
    /// Every Service.
    pub services: BoxStream<'static, Result<Service, watcher::Error>>,
    /// Policies whose discoveryUrl issuers the operator read something new of.
    pub discovered: BoxStream<'static, ObjectRef<AuthPolicy>>,
}

/// Runs the AuthPolicy controller until `shutdown` resolves. Reconciles wait for `listed`.
///
/// Dependents of an issuer (policyRef) need no watch of their own: every change their trust
/// cares about (keys, deletion, an HS256 switch) changes the issuer's JWKS ConfigMap. The
/// policies whose egress or sessions name a client of an issuer render whom it registers and
/// where it is: they are woken by the issuer's policy, its registry Secret and its ConfigMaps
/// ([`triggers::policy`], [`triggers::managed_secret`], [`triggers::managed_config_map`]), not
/// only by their client's status.
pub async fn controller(
    ctx: Arc<Context>,
    streams: Streams,
    listed: Listed,
    shutdown: impl future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let (policies, clients) = (ctx.policies.clone(), ctx.clients.clone());
    Controller::for_stream(streams.policies, policies.clone())
        .with_config(watches::config())
        .watches(
            Api::<Secret>::all(client.clone()),
            managed(),
            triggers::managed_secret(clients.clone(), policies.clone()),
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            managed(),
            triggers::managed_config_map(clients.clone(), policies.clone()),
        )
        .watches(
            Api::<OAuthClient>::all(client.clone()),
            watcher::Config::default(),
            triggers::client(policies.clone()),
        )
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
            triggers::user_secret(clients.clone(), policies.clone()),
        )
        // A rendered NetworkPolicy edited or deleted by someone else is rendered again.
        .owns(Api::<NetworkPolicy>::all(client.clone()), managed())
        .watches_stream(streams.pods, triggers::pod(policies.clone()))
        .watches_stream(streams.services, triggers::service(policies.clone()))
        .watches(
            Api::<AuthPolicy>::all(client),
            watcher::Config::default(),
            triggers::policy(clients, policies),
        )
        .reconcile_all_on(ca_changes(ctx.ca.clone()))
        .reconcile_on(streams.discovered)
        .graceful_shutdown_on(shutdown)
        .run(
            move |policy, ctx| {
                let listed = listed.clone();
                async move {
                    listed.wait().await;
                    reconcile::reconcile(policy, ctx).await
                }
            },
            reconcile::error_policy,
            ctx,
        )
        .for_each(|result| {
            if let Err(err) = result {
                tracing::debug!(error = %err, "AuthPolicy controller event");
            }
            future::ready(())
        })
        .await;
}
