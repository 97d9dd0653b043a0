//! The OAuthClient controller: what wakes a client's reconcile ([`triggers`]) and the
//! reconcile ([`reconcile`]), which checks a client against its issuer, keeps its generated
//! credentials ([`credentials`]) and reports whether the issuer has registered it. The
//! registry itself is rendered by the issuer's reconcile, from every client at once.

pub mod credentials;
pub mod reconcile;
pub mod triggers;

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::watcher;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};

use crate::context::Context;
use crate::controllers::watches::{self, Listed, ca_changes, managed};

/// Runs the OAuthClient controller on `events` (the watch that also fills the clients'
/// cache) until `shutdown` resolves. Reconciles wait for `listed`.
pub async fn controller(
    ctx: Arc<Context>,
    events: BoxStream<'static, Result<OAuthClient, watcher::Error>>,
    listed: Listed,
    shutdown: impl future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let clients = ctx.clients.clone();
    Controller::for_stream(events, clients.clone())
        .with_config(watches::config())
        .owns(Api::<Secret>::all(client.clone()), managed())
        .watches(
            Api::<AuthPolicy>::all(client.clone()),
            watcher::Config::default(),
            triggers::policy(clients.clone()),
        )
        .watches(
            Api::<Secret>::all(client.clone()),
            managed(),
            triggers::registry(clients.clone()),
        )
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client),
            watcher::Config::default(),
            triggers::user_secret(clients),
        )
        .reconcile_all_on(ca_changes(ctx.ca.clone()))
        .graceful_shutdown_on(shutdown)
        .run(
            move |client, ctx| {
                let listed = listed.clone();
                async move {
                    listed.wait().await;
                    reconcile::reconcile(client, ctx).await
                }
            },
            reconcile::error_policy,
            ctx,
        )
        .for_each(|result| {
            if let Err(err) = result {
                tracing::debug!(error = %err, "OAuthClient controller event");
            }
            future::ready(())
        })
        .await;
}
