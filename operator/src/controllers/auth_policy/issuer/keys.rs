//! The key step carried out: reads what [`key_plan::plan`] decides from, runs it on the
//! blocking pool (it may generate a key), and writes what it decided.
//!
//! The signing-keys Secret is the source of truth, so it is read directly and written with
//! its resourceVersion as a precondition: a racing writer makes this reconcile fail and retry
//! instead of forking the key set.

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::{AuthPolicy, SelfIssuer};

use super::key_plan::{self, KeysOutcome, Observed, SecretWrite, jwks_unchanged};
use crate::context::{Context, FIELD_MANAGER};
use crate::controllers::relations::dependents;
use crate::error::{Error, Result};
use crate::names::Names;
use crate::pki::keygen;

/// Moves the signing keys one rotation step and publishes the JWKS.
pub async fn reconcile_keys(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ctx: &Context,
    now: i64,
) -> Result<KeysOutcome> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let observed = observe(policy, names, ctx, &namespace).await?;
    let (policy_now, own_now, names_now) = (policy.clone(), own.clone(), names.clone());
    let (algorithm, rsa_bits) = (own.signing.algorithm, own.signing.rsa_bits);
    let plan = ctx
        .heavy(move || {
            key_plan::plan(
                &policy_now,
                &own_now,
                &names_now,
                &observed,
                now,
                &mut || keygen::generate(algorithm, rsa_bits),
            )
        })
        .await??;
    if let Some(write) = plan.write {
        write_secret(policy, names, ctx, &namespace, write).await?;
    }
    if let Some(since) = plan.active_since {
        ctx.metrics
            .active_key_age
            .observe((now - since).max(0) as f64);
    }
    if let Some(desired) = plan.jwks {
        let current = ctx.config_map(&namespace, &names.jwks);
        ctx.apply(&desired, jwks_unchanged(current.as_deref(), &desired))
            .await?;
    }
    Ok(plan.outcome)
}

/// What the plan decides from: the Secret read directly, the rest from the caches.
async fn observe(
    policy: &AuthPolicy,
    names: &Names,
    ctx: &Context,
    namespace: &str,
) -> Result<Observed> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let dependent_configs = dependents(&ctx.policies, namespace, &policy.name_any())
        .into_iter()
        .map(|dependent| {
            let dependent_namespace = dependent.namespace.clone().unwrap_or_default();
            let config = Names::of(&dependent.name).sidecar;
            let cm = ctx.config_map(&dependent_namespace, &config);
            (dependent_namespace, config, cm)
        })
        .collect();
    Ok(Observed {
        secret: api.get_opt(&names.signing_keys).await?,
        jwks: ctx.config_map(namespace, &names.jwks),
        own_config: ctx.config_map(namespace, &names.sidecar),
        dependent_configs,
    })
}

/// Creates or replaces the signing-keys Secret, then says what changed.
async fn write_secret(
    policy: &AuthPolicy,
    names: &Names,
    ctx: &Context,
    namespace: &str,
    write: SecretWrite,
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if write.create {
        api.create(&params, &write.secret).await?;
    } else {
        api.replace(&names.signing_keys, &params, &write.secret)
            .await?;
    }
    ctx.metrics.writes.inc();
    for event in write.events {
        tracing::info!(policy = %policy.name_any(), namespace = %namespace, reason = event.reason, "{}", event.note);
        let key = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Secret".to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(names.signing_keys.clone()),
            field_path: Some(format!("keys[{}]", event.kid)),
            ..ObjectReference::default()
        };
        ctx.event_related(policy, event.warning, event.reason, event.note, Some(key))
            .await;
    }
    Ok(())
}
