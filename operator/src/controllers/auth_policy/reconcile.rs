//! One AuthPolicy reconcile, as a pipeline: look up what the policy depends on, move the
//! issuer's keys and certificate, build the desired objects (pure), apply what changed, and
//! write the status (pure, skipped when unchanged).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use scopegate_core::config::CONFIG_FILE;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient, RenderedObjects};

use super::problem::Problem;
use super::render::{self, Trust};
use super::status::{self, DryRunScope, Observation};
use super::trust::{declared_scopes, policy_ref};
use super::{discovered, egress, inbound, issuer, pods, sessions};
use crate::audiences::AudienceOwners;
use crate::client_checks::issuer_key;
use crate::context::{Context, FIELD_MANAGER};
use crate::controllers::ca_bundle;
use crate::error::{Error, Result};
use crate::limits;
use crate::metrics::KindLabels;
use crate::names::Names;
use crate::objects;

const KIND: &str = "AuthPolicy";
/// The longest a policy goes without a reconcile.
const RESYNC_SECS: i64 = 3600;
/// How often an issuer refused by its namespace's cap looks again.
const LIMIT_RECHECK_SECS: u64 = 30;
/// How often a policy whose write the API server refused tries again.
const REFUSED_RECHECK_SECS: u64 = 300;
/// Longest label value: the policy's name is one (`scopegate.dev/policy`).
const MAX_LABEL_VALUE: usize = 63;

/// The object a refused write names, from the API server's answer.
fn refused_object(answer: &kube::core::Status) -> String {
    answer.details.as_ref().map_or_else(
        || "an object".to_owned(),
        |d| format!("{} {}", d.kind, d.name),
    )
}

/// Writes a status saying only `problem` (nothing rendered is touched), keeping what the
/// status said of the keys.
async fn only_status(policy: &AuthPolicy, ctx: &Context, problem: Problem) -> Result<()> {
    let spec = &policy.spec.issuer;
    let mode = if spec.self_.is_some() {
        "Self"
    } else if spec.policy_ref.is_some() {
        "PolicyRef"
    } else if spec.external.is_some() {
        "External"
    } else {
        "None"
    };
    let observation = Observation {
        mode,
        problems: vec![problem],
        dry_run: DryRunScope::of(&policy.spec),
        ..Observation::default()
    };
    write_status(policy, ctx, &observation, ctx.now()).await
}

/// Reconciles one AuthPolicy.
pub async fn reconcile(policy: Arc<AuthPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let labels = KindLabels { kind: KIND };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let result = match reconcile_inner(&policy, &ctx).await {
        // A write the API server refuses as invalid does not pass by retrying: the policy's
        // status and a Warning event say so, not only the log.
        Err(Error::Kube(kube::Error::Api(answer))) if matches!(answer.code, 400 | 422) => {
            let problem = Problem::WriteRefused(refused_object(&answer), answer.message.clone());
            only_status(&policy, &ctx, problem)
                .await
                .map(|()| Action::requeue(Duration::from_secs(REFUSED_RECHECK_SECS)))
        }
        other => other,
    };
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(policy: &AuthPolicy, ctx: &Context) -> Result<Action> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    if let Some(action) = refuse_early(policy, ctx).await? {
        return Ok(action);
    }
    let names = Names::of(&policy.name_any());
    let now = ctx.now();
    let ca = ctx.ca.borrow().clone().ok_or(Error::CaNotReady)?;
    let bundle = ca.bundle(now);
    let spec = &policy.spec;
    let mut observation = Observation {
        rendered: RenderedObjects::default(),
        dry_run: DryRunScope::of(spec),
        ..Observation::default()
    };
    let mut due = vec![now + RESYNC_SECS];
    due.extend(ca.next_transition(now));

    let (trust, cutoffs) = if let Some(own) = &spec.issuer.self_ {
        let step = issuer::IssuerStep {
            own,
            names: &names,
            ca: &ca,
            now,
        };
        issuer::reconcile(policy, ctx, step, &mut observation, &mut due).await?
    } else if let Some(reference) = &spec.issuer.policy_ref {
        policy_ref(policy, reference, ctx, &namespace, &mut observation)
    } else if let Some(external) = &spec.issuer.external {
        observation.mode = "External";
        (Trust::External(external.clone()), BTreeMap::new())
    } else {
        observation.mode = "None";
        (Trust::Unresolved, BTreeMap::new())
    };
    let externals = spec
        .issuer
        .external
        .iter()
        .map(|e| ("issuer.external".to_owned(), e));
    let additional = (spec.additional_issuers.iter().enumerate())
        .map(|(i, e)| (format!("additionalIssuers[{i}]"), e));
    for (field, external) in externals.chain(additional) {
        if (external.ca_bundle.as_deref()).is_some_and(|pem| !render::ca_bundle_valid(pem)) {
            let field = format!("{field}.caBundle");
            observation
                .problems
                .push(Problem::ExternalCaBundleInvalid(field));
        }
    }
    let held = ctx.config_map(&namespace, &names.sidecar);
    let service_accounts = observation.service_account_clients;
    let discovered = discovered::step(policy, ctx, held.as_deref(), service_accounts, now);
    observation.discovered = discovered.statuses;
    observation.problems.extend(discovered.problems);
    let service_accounts = discovered.service_accounts.map(|resolved| {
        observation.service_account_issuer = Some(resolved.status);
        resolved.rendered
    });
    check_spec(policy, &trust, ctx, &namespace, &mut observation).await?;
    // Who admits which audience: whether the clients of egress and sessions are registered.
    let owners = (spec.egress.is_some() || spec.sessions.is_some()).then(|| {
        let policies = ctx.policies.state();
        AudienceOwners::new(policies.iter().map(AsRef::as_ref), &ctx.cluster_domain)
    });
    let owners = owners.unwrap_or_default();
    let egress = spec.egress.as_ref().and_then(|declared| {
        let (client, issuer) = client_and_issuer(ctx, &namespace, &declared.client_ref.name);
        let rendered = egress::render(
            declared,
            client.as_deref(),
            issuer.as_deref(),
            &owners,
            &ctx.cluster_domain,
        );
        rendered
            .map_err(|problem| observation.problems.push(problem))
            .ok()
    });
    let keys = sessions::keys::reconcile(policy, &names, ctx, now).await?;
    due.extend(keys.next_change);
    observation.problems.extend(keys.problems);
    if keys.usable {
        observation.rendered.session_keys = Some(names.session_keys.clone());
    }
    let sessions = (spec.sessions.as_ref())
        .filter(|_| keys.usable)
        .and_then(|declared| {
            let (client, issuer) = client_and_issuer(ctx, &namespace, &declared.client_ref.name);
            let rendered = sessions::render(
                policy,
                declared,
                client.as_deref(),
                issuer.as_deref(),
                &owners,
                &ctx.cluster_domain,
            );
            rendered
                .map_err(|problem| observation.problems.push(problem))
                .ok()
        });
    let rendering = Rendering {
        trust: &trust,
        discovered: &discovered.keys,
        service_accounts: service_accounts.flatten(),
        egress,
        sessions,
        cutoffs,
        bundle: &bundle,
    };
    apply_sidecar_config(policy, rendering, ctx, &mut observation).await?;
    ca_bundle::apply(ctx, &namespace, &bundle).await?;
    if reconcile_network_policy(policy, ctx, &namespace).await? {
        observation.rendered.network_policy =
            Some(inbound::network_policy_name(&policy.name_any()));
    }
    observation.inbound = inbound::protection(policy);
    if observation.inbound == "None" {
        observation.problems.push(Problem::InboundUnprotected(
            spec.upstream.port,
            spec.listen.port,
        ));
    }

    write_status(policy, ctx, &observation, now).await?;

    let next = due
        .into_iter()
        .filter(|t| *t > now)
        .min()
        .unwrap_or(now + RESYNC_SECS);
    Ok(Action::requeue(Duration::from_secs(
        (next - now).clamp(1, RESYNC_SECS).unsigned_abs(),
    )))
}

/// The OAuthClient of `namespace` called `name`, and the AuthPolicy its issuerRef names (each
/// if it exists). Never another namespace's client: the reference is namespace-local.
fn client_and_issuer(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> (Option<Arc<OAuthClient>>, Option<Arc<AuthPolicy>>) {
    let client = (ctx.clients).get(&ObjectRef::new(name).within(namespace));
    let issuer = client.as_deref().and_then(|client| {
        let (issuer_namespace, issuer_name) = issuer_key(client);
        (ctx.policies).get(&ObjectRef::new(&issuer_name).within(&issuer_namespace))
    });
    (client, issuer)
}

/// A policy nothing is rendered for: a name too long for the label every rendered object
/// carries, or an issuer beyond its namespace's cap. Only its status says so.
async fn refuse_early(policy: &AuthPolicy, ctx: &Context) -> Result<Option<Action>> {
    let name = policy.name_any();
    if name.len() > MAX_LABEL_VALUE {
        // Every rendered object carries the name as a label value: the API server would
        // refuse each of them.
        let problem = Problem::NameTooLong(
            "the label value of every rendered object",
            name,
            MAX_LABEL_VALUE,
        );
        only_status(policy, ctx, problem).await?;
        return Ok(Some(Action::await_change()));
    }
    if policy.spec.issuer.self_.is_some() {
        let all = ctx.policies.state();
        let issuers = all
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| p.spec.issuer.self_.is_some());
        if let Some(over) = limits::over_limit(policy, issuers, ctx.limits.issuers_per_namespace) {
            // Beyond the cap only the status changes: nothing rendered for it is touched. It
            // is looked at again in a while, in case another issuer went away.
            only_status(policy, ctx, Problem::IssuerLimit(over.limit, over.count)).await?;
            return Ok(Some(Action::requeue(Duration::from_secs(
                LIMIT_RECHECK_SECS,
            ))));
        }
    }
    Ok(None)
}

/// What the status says of the spec beyond the issuer: audiences, scopes the issuer does
/// not declare, Secrets that do not exist, and what the selected pods say.
async fn check_spec(
    policy: &AuthPolicy,
    trust: &Trust,
    ctx: &Context,
    namespace: &str,
    observation: &mut Observation,
) -> Result<()> {
    let spec = &policy.spec;
    if crate::audiences::uses_policy_audiences(spec)
        && crate::audiences::effective_audiences(spec).is_empty()
    {
        observation.problems.push(Problem::MissingAudiences);
    }
    if let Some((issuer, declared)) = declared_scopes(policy, trust, ctx) {
        let unknown = render::undeclared_scopes(spec, &declared);
        if !unknown.is_empty() {
            observation
                .problems
                .push(Problem::UnknownScopes(issuer, unknown));
        }
    }
    observation
        .problems
        .extend(missing_secrets(policy, ctx, namespace).await?);
    let (pods, problems) = observe_pods(policy, ctx, namespace);
    if observation.memory_store && pods.selected > 1 {
        observation
            .problems
            .push(Problem::MemoryStoreReplicas(pods.selected));
    }
    observation.pods = pods;
    observation.problems.extend(problems);
    Ok(())
}

/// What a policy's sidecar config is rendered from, besides the policy.
struct Rendering<'a> {
    trust: &'a Trust,
    discovered: &'a render::DiscoveredKeys,
    /// The cluster's service-account issuer, for an issuer whose clients need it.
    service_accounts: Option<scopegate_core::config::ServiceAccountIssuer>,
    /// The app's outbound calls, when spec.egress can work.
    egress: Option<scopegate_core::config::EgressConfig>,
    /// Browser sessions, when spec.sessions can work.
    sessions: Option<scopegate_core::session::SessionConfig>,
    cutoffs: BTreeMap<String, i64>,
    bundle: &'a str,
}

/// Renders the sidecar config, checks it as the sidecar will, and applies it; a config the
/// sidecar would refuse is never written, and the last good one stays.
async fn apply_sidecar_config(
    policy: &AuthPolicy,
    rendering: Rendering<'_>,
    ctx: &Context,
    observation: &mut Observation,
) -> Result<()> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let names = Names::of(&policy.name_any());
    let owners = AudienceOwners::new(
        ctx.policies.state().iter().map(AsRef::as_ref),
        &ctx.cluster_domain,
    );
    let conflicts = owners.conflicts_of(policy);
    let mut config = render::sidecar_config(
        policy,
        rendering.trust,
        rendering.discovered,
        rendering.cutoffs,
        rendering.bundle,
    )?;
    render::set_service_account_issuer(&mut config, rendering.service_accounts);
    render::set_egress(&mut config, rendering.egress);
    render::set_sessions(&mut config, rendering.sessions);
    if !conflicts.is_empty() {
        render::drop_audiences(&mut config, conflicts);
        observation
            .problems
            .push(Problem::AudienceConflict(conflicts.to_vec()));
    }
    // A policy with many rules and keys renders a large document: off the workers.
    let rendered = ctx
        .heavy(move || {
            scopegate_core::check::document(&config)
                .map_err(|refused| scopegate_core::error_chain(&refused))
                .map(|()| objects::to_json("sidecar config", &config))
        })
        .await?;
    match rendered {
        Ok(text) => {
            let sidecar = objects::config_map(
                objects::owned_meta(policy, &names.sidecar)?,
                BTreeMap::from([(CONFIG_FILE.to_owned(), text?)]),
            );
            let unchanged = ctx
                .config_map(&namespace, &names.sidecar)
                .is_some_and(|cm| cm.data == sidecar.data);
            ctx.apply::<ConfigMap>(&sidecar, unchanged).await?;
            observation.rendered.sidecar_config = Some(names.sidecar.clone());
        }
        Err(refused) => {
            observation.problems.push(Problem::ConfigRefused(refused));
            if ctx.config_map(&namespace, &names.sidecar).is_some() {
                observation.rendered.sidecar_config = Some(names.sidecar.clone());
            }
        }
    }
    Ok(())
}

/// Renders the policy's NetworkPolicy, or deletes it when the policy opted out. Whether one
/// is in force.
async fn reconcile_network_policy(
    policy: &AuthPolicy,
    ctx: &Context,
    namespace: &str,
) -> Result<bool> {
    let name = inbound::network_policy_name(&policy.name_any());
    let current = ctx
        .network_policies
        .get(&ObjectRef::new(&name).within(namespace));
    if !policy.spec.inbound.network_policy {
        if current.is_some() {
            let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    ctx.metrics.writes.inc();
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        return Ok(false);
    }
    let desired = inbound::network_policy(policy)?;
    let unchanged = current.is_some_and(|np| {
        np.spec == desired.spec && np.metadata.owner_references == desired.metadata.owner_references
    });
    ctx.apply(&desired, unchanged).await?;
    Ok(true)
}

/// Writes the status computed from `observation` when it changed, and a Warning event for each
/// problem the previous status did not mention.
async fn write_status(
    policy: &AuthPolicy,
    ctx: &Context,
    observation: &Observation,
    now: i64,
) -> Result<()> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let name = policy.name_any();
    let status = status::compute(
        policy.status.as_ref(),
        observation,
        policy.metadata.generation,
        now,
    );
    if policy.status.as_ref() != Some(&status) {
        let api: Api<AuthPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({ "apiVersion": "scopegate.dev/v1alpha1", "kind": KIND, "status": status });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    for problem in &observation.problems {
        let previously = policy
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"));
        if previously.is_none_or(|c| !c.message.contains(&problem.to_string())) {
            ctx.event(policy, true, problem.reason(), problem.to_string())
                .await;
        }
    }

    Ok(())
}

/// Secrets the spec names (`listen.tlsSecret`, the Redis `credentialsSecret`) that do not
/// exist in the policy's namespace. Only their metadata is read. (Upstream client secrets are
/// reported by [`issuer::upstreams::reconcile_upstreams`].)
async fn missing_secrets(
    policy: &AuthPolicy,
    ctx: &Context,
    namespace: &str,
) -> Result<Vec<Problem>> {
    let spec = &policy.spec;
    let named = [
        ("listen.tlsSecret", spec.listen.tls_secret.as_ref()),
        (
            "issuer.self.store.redis.credentialsSecret",
            spec.issuer
                .self_
                .as_ref()
                .and_then(|own| own.store.redis.as_ref())
                .and_then(|redis| redis.credentials_secret.as_ref()),
        ),
    ];
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut missing = Vec::new();
    for (field, name) in named {
        let Some(name) = name else { continue };
        if api.get_metadata_opt(name).await?.is_none() {
            missing.push(Problem::SecretNotFound(field.to_owned(), name.clone()));
        }
    }
    Ok(missing)
}

/// The pods, Services and other policies of the namespace, as they bear on `policy`.
fn observe_pods(
    policy: &AuthPolicy,
    ctx: &Context,
    namespace: &str,
) -> (pods::PodSummary, Vec<Problem>) {
    let in_namespace = |ns: Option<String>| ns.as_deref() == Some(namespace);
    let all_pods = ctx.pods.state();
    let pods: Vec<_> = all_pods
        .iter()
        .filter(|p| in_namespace(p.namespace()))
        .map(AsRef::as_ref)
        .collect();
    let all_services = ctx.services.state();
    let services: Vec<_> = all_services
        .iter()
        .filter(|s| in_namespace(s.namespace()))
        .map(AsRef::as_ref)
        .collect();
    let all_policies = ctx.policies.state();
    let others: Vec<_> = all_policies
        .iter()
        .filter(|p| in_namespace(p.namespace()))
        .map(AsRef::as_ref)
        .collect();
    pods::observe(policy, &others, &pods, &services)
}

/// What to do after a failed reconcile: permanent errors wait for a change, others retry.
pub fn error_policy(policy: Arc<AuthPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::controllers::record_failure(&ctx, KIND, policy.as_ref(), error);
    if error.is_permanent() {
        let ctx = ctx.clone();
        let message = scopegate_core::error_chain(error);
        let category = error.category();
        tokio::spawn(async move { ctx.event(policy.as_ref(), true, category, message).await });
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}
