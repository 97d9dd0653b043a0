//! One OAuthClient reconcile: checks the client against its issuer, keeps its generated
//! credentials, and reports whether the issuer has registered it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use scopegate_core::clients::{CLIENTS_FILE, ClientRegistry};
use scopegate_crds::v1alpha1::{
    AuthPolicy, OAuthClient, OAuthClientStatus, RevocationCutoff, TokenEndpointAuthMethod,
};

use super::credentials::{self, Ensured};
use crate::audiences::AudienceOwners;
use crate::client_checks::{
    ClientProblem, cutoff_problem, issuer_key, registration_problems, service_account_problems,
};
use crate::conditions::{Conclusion, kstatus, merge};
use crate::context::{Context, FIELD_MANAGER};
use crate::controllers::ca_bundle;
use crate::error::{Error, Result};
use crate::metrics::KindLabels;
use crate::names::{Names, client_id};
use crate::objects::secret_data;
use crate::pki::registry::revocation_cutoff;

const KIND: &str = "OAuthClient";

/// Reconciles one OAuthClient.
pub async fn reconcile(client: Arc<OAuthClient>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let labels = KindLabels { kind: KIND };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let result = match reconcile_inner(&client, &ctx).await {
        // A write the API server refuses as invalid does not pass by retrying: the client's
        // status and a Warning event say so, not only the log.
        Err(Error::Kube(kube::Error::Api(answer))) if matches!(answer.code, 400 | 422) => {
            refused(&client, &ctx, &answer).await
        }
        other => other,
    };
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// How soon a client waiting on another object's progress is looked at again.
const WAITING_RECHECK_SECS: i64 = 5;

/// Seconds until the next reconcile: `planned`, or sooner while the client waits on another
/// object's progress (the issuer's registry, its read of the cluster's keys). That object's
/// watch event can reach this controller before the cache the reconcile reads, so the
/// verdict is looked at again soon rather than kept until the hour's resync.
fn recheck_after(planned: i64, registered: bool, problems: &[ClientProblem]) -> i64 {
    let in_flight = !registered && !problems.iter().any(ClientProblem::blocks_registration);
    let keys_awaited = (problems.iter())
        .any(|p| matches!(p, ClientProblem::ServiceAccountIssuerUnavailable { .. }));
    if in_flight || keys_awaited {
        planned.min(WAITING_RECHECK_SECS)
    } else {
        planned
    }
}

async fn reconcile_inner(client: &OAuthClient, ctx: &Context) -> Result<Action> {
    let namespace = client.namespace().ok_or(Error::Unaddressable)?;
    let now = ctx.now();
    let (issuer_namespace, issuer_name) = issuer_key(client);
    let issuer = ctx
        .policies
        .get(&ObjectRef::<AuthPolicy>::new(&issuer_name).within(&issuer_namespace));
    let owners = AudienceOwners::new(
        ctx.policies.state().iter().map(AsRef::as_ref),
        &ctx.cluster_domain,
    );
    let sorted = owners.sort_client(client);
    let mut problems = registration_problems(client, issuer.as_deref(), &sorted);
    problems.extend(cutoff_problem(client, now));
    let all = ctx.clients.state();
    problems.extend(service_account_problems(
        client,
        issuer.as_deref(),
        all.iter().map(AsRef::as_ref),
    ));
    if let Some(over) = crate::limits::over_limit(
        client,
        all.iter().map(AsRef::as_ref),
        ctx.limits.clients_per_namespace,
    ) {
        problems.push(ClientProblem::NamespaceLimit {
            limit: over.limit,
            count: over.count,
        });
    }

    if let Some(reference) = &client.spec.existing_secret {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&reference.name)
            .await?;
        if secret
            .as_ref()
            .and_then(|s| secret_data(s, &reference.key))
            .is_none()
        {
            problems.push(ClientProblem::SecretNotFound {
                name: reference.name.clone(),
                key: reference.key.clone(),
            });
        }
    }

    let ensured = credentials::ensure(client, ctx, now).await?;
    // Client apps of this namespace verify the issuer's certificate with this bundle.
    let ca = ctx.ca.borrow().clone();
    if let Some(ca) = ca {
        ca_bundle::apply(ctx, &namespace, &ca.bundle(now)).await?;
    }
    let registered = ctx
        .secret(&issuer_namespace, &Names::of(&issuer_name).clients)
        .and_then(|s| secret_data(&s, CLIENTS_FILE))
        .and_then(|text| serde_json::from_str::<ClientRegistry>(&text).ok())
        .is_some_and(|registry| registry.find(&client_id(client)).is_some());

    let issuer_url = (issuer.as_deref())
        .and_then(|p| p.spec.issuer.self_.as_ref())
        .map(|own| own.url.as_str());
    let status = compute_status(client, &problems, &ensured, registered, issuer_url, now);
    write_status(client, ctx, &status).await?;

    // The end of a rotation overlap is the next thing to do: the old secret must stop working.
    let next = match ensured {
        Ensured::Ready {
            previous_until: Some(until),
            ..
        } => (until - now).clamp(1, 3600),
        _ => 3600,
    };
    let next = recheck_after(next, registered, &problems);
    Ok(Action::requeue(Duration::from_secs(next.unsigned_abs())))
}

/// Reports a write the API server refused: status and a Warning event; tried again later.
async fn refused(
    client: &OAuthClient,
    ctx: &Context,
    answer: &kube::core::Status,
) -> Result<Action> {
    let object = answer.details.as_ref().map_or_else(
        || "an object".to_owned(),
        |d| format!("{} {}", d.kind, d.name),
    );
    let problem = ClientProblem::WriteRefused {
        object,
        message: answer.message.clone(),
    };
    let status = compute_status(
        client,
        std::slice::from_ref(&problem),
        &Ensured::NotGenerated,
        false,
        None,
        ctx.now(),
    );
    let said = client
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.message == problem.to_string());
    if !said {
        ctx.event(client, true, problem.reason(), problem.to_string())
            .await;
    }
    write_status(client, ctx, &status).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Writes `status` unless the object already has it.
async fn write_status(
    client: &OAuthClient,
    ctx: &Context,
    status: &OAuthClientStatus,
) -> Result<()> {
    if client.status.as_ref() == Some(status) {
        return Ok(());
    }
    let namespace = client.namespace().ok_or(Error::Unaddressable)?;
    let api: Api<OAuthClient> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "scopegate.dev/v1alpha1",
        "kind": KIND,
        "status": status,
    });
    api.patch_status(
        &client.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The status of a client from what its reconcile found.
pub fn compute_status(
    client: &OAuthClient,
    problems: &[ClientProblem],
    ensured: &Ensured,
    registered: bool,
    issuer_url: Option<&str>,
    now: i64,
) -> OAuthClientStatus {
    let (issuer_namespace, issuer_name) = issuer_key(client);
    let id = client_id(client);
    let mut conclusions = Vec::new();
    let blocking = problems.iter().find(|p| p.blocks_readiness());
    let not_owned = match ensured {
        Ensured::NotOwned { secret } => Some(format!(
            "Secret {secret} exists and is not owned by this OAuthClient: refusing to write into it; choose another secretName"
        )),
        _ => None,
    };
    let ready = match (blocking, &not_owned, registered) {
        (Some(problem), _, _) => Conclusion::no("Ready", problem.reason(), problem.to_string()),
        (None, Some(message), _) => Conclusion::no("Ready", "SecretNotOwned", message.clone()),
        (None, None, false) => Conclusion::no(
            "Ready",
            "Registering",
            format!(
                "waiting for issuer {issuer_namespace}/{issuer_name} to add {id} to its registry"
            ),
        ),
        (None, None, true) => Conclusion::yes(
            "Ready",
            "Registered",
            format!("registered with issuer {issuer_namespace}/{issuer_name} as client_id {id}"),
        ),
    };
    let kstatus = kstatus(&ready, ready.reason == "Registering");
    conclusions.push(ready);
    conclusions.extend(kstatus);
    let mut messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    messages.extend(not_owned);
    conclusions.push(match problems.first() {
        _ if messages.is_empty() => {
            Conclusion::no("Degraded", "AsExpected", "nothing needs attention")
        }
        Some(first) => Conclusion::yes("Degraded", first.reason(), messages.join("; ")),
        None => Conclusion::yes("Degraded", "SecretNotOwned", messages.join("; ")),
    });
    let generation = client.metadata.generation;
    let existing = client
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let now_time = Time(Timestamp::from_second(now).unwrap_or(Timestamp::UNIX_EPOCH));
    let secret_name = match ensured {
        Ensured::Ready { secret, .. } => Some(secret.clone()),
        _ => client.spec.existing_secret.as_ref().map(|s| s.name.clone()),
    };
    OAuthClientStatus {
        observed_generation: generation,
        conditions: merge(existing, &conclusions, generation, &now_time),
        client_id: Some(id),
        authentication: Some(authentication(client, secret_name.as_deref(), issuer_url)),
        secret_name,
        revocation_cutoff: revocation_cutoff(client, now).map(|c| RevocationCutoff {
            requested: Time(c.requested),
            effective: Time(c.effective),
        }),
    }
}

/// How the client authenticates at the token endpoint, in words (status.authentication).
fn authentication(client: &OAuthClient, secret: Option<&str>, issuer_url: Option<&str>) -> String {
    let spec = &client.spec;
    if !spec.service_accounts.is_empty() {
        let namespace = client.namespace().unwrap_or_default();
        let accounts: Vec<String> = (spec.service_accounts.iter())
            .map(|name| format!("{namespace}/{name}"))
            .collect();
        let audience = issuer_url.unwrap_or("the issuer's url");
        return format!(
            "ServiceAccount token of {} (audience {audience}), no secret",
            accounts.join(", ")
        );
    }
    if spec.public {
        return "public: client_id only, with PKCE".to_owned();
    }
    let method = match spec.token_endpoint_auth_method {
        Some(TokenEndpointAuthMethod::ClientSecretPost) => "client_secret_post",
        _ => "client_secret_basic",
    };
    match secret {
        Some(name) => format!("{method}, secret in Secret {name}"),
        None => format!("{method}, its Secret is not there yet"),
    }
}

/// What to do after a failed reconcile.
pub fn error_policy(client: Arc<OAuthClient>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::controllers::record_failure(&ctx, KIND, client.as_ref(), error);
    if error.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_waiting_on_its_issuer_is_looked_at_again_soon() {
        let keys = ClientProblem::ServiceAccountIssuerUnavailable {
            issuer: "shop/auth".into(),
            why: None,
        };
        // Registered, but the issuer has not read the cluster's keys yet.
        assert_eq!(recheck_after(3600, true, std::slice::from_ref(&keys)), 5);
        // Not in the registry yet, nothing stopping it: registration is in flight.
        assert_eq!(recheck_after(3600, false, &[]), 5);
        // Settled either way: the planned time.
        assert_eq!(recheck_after(3600, true, &[]), 3600);
        let blocked = ClientProblem::IssuerNotFound {
            issuer: "shop/auth".into(),
        };
        assert_eq!(recheck_after(3600, false, &[blocked]), 3600);
        // A sooner plan (the end of a rotation overlap) stays.
        assert_eq!(recheck_after(2, true, &[keys]), 2);
    }
}
