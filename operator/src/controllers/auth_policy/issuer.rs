//! The parts of an AuthPolicy reconcile that only `issuer.self` policies have: the signing
//! keys and their JWKS, the serving certificate, and the client registry.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use scopegate_core::clients::{CLIENTS_FILE, ClientRegistry};
use scopegate_core::config::{CONFIG_FILE, KeySource, SidecarConfig};
use scopegate_core::jwk::{Jwk, Jwks};
use scopegate_core::keys::{ManagedKey, SIGNING_KEYS_FILE, SigningKeys};
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient, SelfIssuer};

use super::problem::Problem;
use crate::audiences::AudienceOwners;
use crate::context::{Context, rfc3339};
use crate::controllers::client_checks::{audience_problem, issuer_key, validate};
use crate::controllers::relations::dependents;
use crate::error::{Error, Result};
use crate::names::{
    self, ALGORITHM_ANNOTATION, CA_FILE, CLIENT_SECRET_KEY, JWKS_FILE, Names,
    PREVIOUS_NOT_AFTER_ANNOTATION, PREVIOUS_SECRET_KEY, ROTATION_HANDLED_ANNOTATION,
    TLS_NAMES_ANNOTATION, TLS_NOT_AFTER_ANNOTATION, TLS_SIGNER_ANNOTATION, client_secret_name,
};
use crate::objects::{self, is_managed, secret_data};
use crate::pki::ca::{self, CaDocument, ExistingLeaf};
use crate::pki::keygen;
use crate::pki::registry::{self, Credentials, Entry};
use crate::pki::rotation::{self, Change, Requests, RotationParams};

/// What the key step produced.
#[derive(Debug, Default)]
pub struct KeysOutcome {
    /// Every key after this step (`None` when the document could not be read).
    pub keys: Option<Vec<ManagedKey>>,
    /// The public JWKS published.
    pub jwks: Jwks,
    /// The next key transition.
    pub next_transition: Option<i64>,
    /// Problems found with the keys.
    pub problems: Vec<Problem>,
    /// A key written and published, and the verifiers not yet seen to hold it.
    pub publishing: Option<(String, Vec<String>)>,
    /// The rotate-annotation value acted on so far (recorded in status).
    pub handled_rotation: Option<String>,
}

/// One place verifiers of the issuer read its public keys from, and the kids it holds
/// (`None` when it does not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    /// What it is, for status ("ConfigMap ns/name").
    pub name: String,
    /// The key ids it holds.
    pub kids: Option<BTreeSet<String>>,
}

/// The key ids every view holds.
pub fn held_everywhere(views: &[KeyView]) -> BTreeSet<String> {
    let mut held: Option<BTreeSet<String>> = None;
    for view in views {
        let kids = view.kids.clone().unwrap_or_default();
        held = Some(match held {
            None => kids,
            Some(so_far) => so_far.intersection(&kids).cloned().collect(),
        });
    }
    held.unwrap_or_default()
}

/// The views that do not hold `kid`.
pub fn lacking(views: &[KeyView], kid: &str) -> Vec<String> {
    views
        .iter()
        .filter(|v| !v.kids.as_ref().is_some_and(|k| k.contains(kid)))
        .map(|v| v.name.clone())
        .collect()
}

/// What the stored keys are worth, decided before planning (pure).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assessment {
    /// Keys that pass their checks, plus public keys kept after their private half was lost.
    pub usable: Vec<ManagedKey>,
    /// Keys that fail their checks: left out of every key set, kept as they are in the
    /// Secret until their removal time.
    pub invalid: Vec<(ManagedKey, keygen::KeyProblem)>,
    /// Key ids kept public-only in this step because the document lacked them.
    pub retained: Vec<String>,
    /// The issuer had keys before (status, published sets or the document).
    pub had_keys: bool,
}

/// Checks every stored key and restores, public-only, the keys that verifiers hold or status
/// lists but the document lacks (a deleted Secret, or one restored from an older copy).
pub fn assess(
    stored: &[ManagedKey],
    known: &[(String, [i64; 4])],
    published: &[Jwk],
    revoked: Option<&str>,
    now: i64,
    params: RotationParams,
) -> Assessment {
    let mut usable = Vec::new();
    let mut invalid = Vec::new();
    for key in stored {
        match keygen::check(key) {
            Ok(()) => usable.push(key.clone()),
            Err(_) if key.removed_after <= now => {}
            Err(problem) => invalid.push((key.clone(), problem)),
        }
    }
    let present: BTreeSet<String> = stored.iter().map(|k| k.kid.clone()).collect();
    let alg_of = |jwk: &Jwk| {
        let alg = jwk.alg.clone()?;
        let sound = keygen::check_public(jwk, &alg).is_ok()
            && jwk.kid.as_deref() == Some(keygen::thumbprint(jwk).as_str());
        sound.then_some(alg)
    };
    let kept =
        rotation::retained_public_keys(known, published, &present, revoked, &alg_of, now, params);
    let retained = kept.iter().map(|k| k.kid.clone()).collect();
    usable.extend(kept);
    Assessment {
        usable,
        invalid,
        retained,
        had_keys: !stored.is_empty() || !known.is_empty() || !published.is_empty(),
    }
}

/// The rotation settings of an issuer, in seconds.
pub fn rotation_params(own: &SelfIssuer) -> RotationParams {
    let secs = |d: &scopegate_crds::v1alpha1::PositiveDuration| {
        d.get()
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    let token_ttl = own
        .mint
        .as_ref()
        .map_or(0, |m| secs(&m.max_ttl))
        .max(secs(&own.tokens.access_token_ttl));
    RotationParams {
        period: secs(&own.rotation_period),
        propagation: secs(&own.propagation),
        token_ttl,
        leeway: own
            .tokens
            .leeway
            .get()
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0)),
    }
}

/// The kids of a JWKS document in a ConfigMap (`None` when it is missing or unreadable).
fn jwks_of(cm: Option<&ConfigMap>, file: &str) -> Option<Jwks> {
    let text = cm?.data.as_ref()?.get(file)?;
    serde_json::from_str(text).ok()
}

/// The static keys a sidecar config ConfigMap trusts for `issuer`: `Some(None)` when the
/// config exists and does not trust it (that verifier needs none of its keys), `None` when
/// the config is missing.
fn trusted_in(cm: Option<&ConfigMap>, issuer: &str) -> Option<Option<BTreeSet<String>>> {
    let text = cm?.data.as_ref()?.get(CONFIG_FILE)?;
    let Ok(config) = SidecarConfig::from_json(text) else {
        // Unreadable: it holds nothing until it is rendered again.
        return Some(Some(BTreeSet::new()));
    };
    Some(
        config
            .verify
            .issuers
            .iter()
            .find(|t| t.issuer == issuer)
            .map(|t| match &t.keys {
                KeySource::Static { jwks } => {
                    jwks.keys.iter().filter_map(|k| k.kid.clone()).collect()
                }
                _ => BTreeSet::new(),
            }),
    )
}

fn kids(jwks: &Jwks) -> BTreeSet<String> {
    jwks.keys.iter().filter_map(|k| k.kid.clone()).collect()
}

/// Moves the signing keys one rotation step and publishes the JWKS.
///
/// The signing-keys Secret is the source of truth, so it is read directly (never from a
/// cache that may lag behind the previous write) and written with its resourceVersion as a
/// precondition: a racing writer makes this reconcile fail and retry instead of forking the
/// key set. It is written before the JWKS and the sidecar configs, but a new key in it is
/// pending (signs nothing) until a later step sees it in every verifier's key set.
pub async fn reconcile_keys(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ctx: &Context,
    now: i64,
) -> Result<KeysOutcome> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let object = format!("Secret {namespace}/{}", names.signing_keys);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = api.get_opt(&names.signing_keys).await?;
    let status = policy.status.as_ref();
    let previously_handled = status.and_then(|s| s.handled_rotation.clone()).or_else(|| {
        // Before the status kept it, the Secret did.
        current
            .as_ref()
            .and_then(|s| s.annotations().get(ROTATION_HANDLED_ANNOTATION).cloned())
    });
    if let Some(secret) = &current
        && !is_managed(secret.labels())
    {
        return Ok(KeysOutcome {
            keys: Some(Vec::new()),
            problems: vec![Problem::NotOwned(object)],
            handled_rotation: previously_handled,
            ..KeysOutcome::default()
        });
    }
    let published = jwks_of(
        ctx.config_map(&namespace, &names.jwks).as_deref(),
        JWKS_FILE,
    );
    let stored: SigningKeys = match current
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(SIGNING_KEYS_FILE))
    {
        Some(bytes) => match serde_json::from_slice(&bytes.0) {
            Ok(document) => document,
            Err(error) => {
                // Written over, it would be lost for good: keep it and what is published.
                return Ok(KeysOutcome {
                    keys: None,
                    jwks: published.unwrap_or_default(),
                    problems: vec![Problem::SigningKeysCorrupt(
                        object,
                        crate::error::json_problem(&error),
                    )],
                    handled_rotation: previously_handled,
                    ..KeysOutcome::default()
                });
            }
        },
        None => SigningKeys::default(),
    };

    let asked = policy.annotations().get(names::ROTATE_ANNOTATION).cloned();
    let rotate = asked.is_some() && asked != previously_handled;
    let requests = Requests {
        rotate,
        revoke_kid: policy
            .annotations()
            .get(names::REVOKE_KID_ANNOTATION)
            .cloned(),
    };
    let params = rotation_params(own);
    let alg = keygen::alg_name(own.signing.algorithm);
    let hs256 = alg == "HS256";

    // Where verifiers read the keys, as last observed.
    let own_config = ctx.config_map(&namespace, &names.sidecar);
    let own_trust = trusted_in(own_config.as_deref(), &own.url);
    let mut views = Vec::new();
    if hs256 {
        // Only the issuer's own pods verify, with the signing-keys document itself.
        views.push(KeyView {
            name: object.clone(),
            kids: Some(stored.keys.iter().map(|k| k.kid.clone()).collect()),
        });
    } else {
        views.push(KeyView {
            name: format!("ConfigMap {namespace}/{}", names.jwks),
            kids: published.as_ref().map(kids),
        });
        views.push(KeyView {
            name: format!("ConfigMap {namespace}/{}", names.sidecar),
            kids: own_trust.clone().flatten(),
        });
        for dependent in dependents(&ctx.policies, &namespace, &policy.name_any()) {
            let dependent_namespace = dependent.namespace.clone().unwrap_or_default();
            let config = Names::of(&dependent.name).sidecar;
            if let Some(Some(kids)) = trusted_in(
                ctx.config_map(&dependent_namespace, &config).as_deref(),
                &own.url,
            ) {
                views.push(KeyView {
                    name: format!("ConfigMap {dependent_namespace}/{config}"),
                    kids: Some(kids),
                });
            }
        }
    }
    let held = held_everywhere(&views);

    let known: Vec<(String, [i64; 4])> = status
        .map(|s| {
            s.keys
                .iter()
                .map(|k| {
                    (
                        k.kid.clone(),
                        [
                            k.published_at.0.as_second(),
                            k.activates_at.0.as_second(),
                            k.signs_until.0.as_second(),
                            k.removed_after.0.as_second(),
                        ],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut public: Vec<Jwk> = published.map(|j| j.keys).unwrap_or_default();
    if let Some(Some(_)) = &own_trust
        && let Some(config) = own_config
            .as_deref()
            .and_then(|cm| cm.data.as_ref()?.get(CONFIG_FILE))
            .and_then(|text| SidecarConfig::from_json(text).ok())
    {
        for trusted in config.verify.issuers.iter().filter(|t| t.issuer == own.url) {
            if let KeySource::Static { jwks } = &trusted.keys {
                public.extend(jwks.keys.iter().cloned());
            }
        }
    }
    let assessment = assess(
        &stored.keys,
        &known,
        &public,
        requests.revoke_kid.as_deref(),
        now,
        params,
    );

    let (algorithm, rsa_bits) = (own.signing.algorithm, own.signing.rsa_bits);
    let usable = assessment.usable.clone();
    let had_keys = assessment.had_keys;
    let (requests_for_plan, held_for_plan) = (requests.clone(), held.clone());
    let plan = ctx
        .heavy(move || {
            let inputs = rotation::Inputs {
                keys: &usable,
                now,
                params,
                alg: keygen::alg_name(algorithm),
                requests: &requests_for_plan,
                published: &held_for_plan,
                had_keys,
            };
            rotation::plan(&inputs, &mut || keygen::generate(algorithm, rsa_bits))
        })
        .await??;

    let mut document = SigningKeys {
        keys: plan.keys.clone(),
    };
    document
        .keys
        .extend(assessment.invalid.iter().map(|(key, _)| key.clone()));
    // Written by an earlier release, the Secret is owned by the policy and would go with it:
    // rewritten without the owner reference, it is retained.
    let owned = current
        .as_ref()
        .is_some_and(|s| !s.owner_references().is_empty());
    if current.is_none() || document != stored || owned {
        let mut meta = retained_meta(policy, &names.signing_keys)?;
        meta.resource_version = current.as_ref().and_then(|s| s.resource_version());
        if let Some(legacy) = current
            .as_ref()
            .and_then(|s| s.annotations().get(ROTATION_HANDLED_ANNOTATION).cloned())
        {
            meta.annotations = Some(BTreeMap::from([(
                ROTATION_HANDLED_ANNOTATION.to_owned(),
                legacy,
            )]));
        }
        let secret = objects::secret(
            meta,
            None,
            BTreeMap::from([(
                SIGNING_KEYS_FILE.to_owned(),
                objects::to_json("signing keys", &document)?,
            )]),
        );
        let params = PostParams {
            field_manager: Some(crate::context::FIELD_MANAGER.into()),
            ..Default::default()
        };
        if current.is_some() {
            api.replace(&names.signing_keys, &params, &secret).await?;
        } else {
            api.create(&params, &secret).await?;
        }
        ctx.metrics.writes.inc();
        for change in &plan.changes {
            let (warning, reason, note) = describe_change(change, alg);
            tracing::info!(policy = %policy.name_any(), namespace = %namespace, reason, "{note}");
            // The key is the event's related object: each key's events are their own series,
            // so a second key's event never repeats the first one's note.
            let key = ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Secret".to_owned()),
                namespace: Some(namespace.clone()),
                name: Some(names.signing_keys.clone()),
                field_path: Some(format!("keys[{}]", change.kid())),
                ..ObjectReference::default()
            };
            ctx.event_related(policy, warning, reason, note, Some(key))
                .await;
        }
    }

    let signing = SigningKeys {
        keys: plan.keys.clone(),
    };
    if let Some(active) = signing.signing_key(now) {
        ctx.metrics
            .active_key_age
            .observe((now - active.activates_at).max(0) as f64);
    }
    let jwks = signing.published_jwks(now);
    let jwks_text = objects::to_json("JWKS", &jwks)?;
    // The algorithm rides along so that policies trusting this issuer by reference hear of a
    // switch to HS256 (which publishes nothing new) through this object's watch.
    let mut meta = objects::owned_meta(policy, &names.jwks)?;
    meta.annotations = Some(BTreeMap::from([(
        ALGORITHM_ANNOTATION.to_owned(),
        alg.to_owned(),
    )]));
    let desired = objects::config_map(meta, BTreeMap::from([(JWKS_FILE.to_owned(), jwks_text)]));
    let unchanged = ctx.config_map(&namespace, &names.jwks).is_some_and(|cm| {
        cm.data == desired.data
            && is_managed(cm.labels())
            && cm.annotations() == desired.annotations()
    });
    ctx.apply::<ConfigMap>(&desired, unchanged).await?;

    let mut problems: Vec<Problem> = assessment
        .invalid
        .iter()
        .map(|(key, problem)| Problem::KeyInvalid(key.kid.clone(), problem.to_string()))
        .collect();
    let lost: Vec<String> = plan
        .keys
        .iter()
        .filter(|k| !k.has_private_key())
        .map(|k| k.kid.clone())
        .collect();
    if !lost.is_empty() {
        problems.push(Problem::KeysLost(lost));
    }
    let publishing = plan
        .pending()
        .map(|k| (k.kid.clone(), lacking(&views, &k.kid)));
    Ok(KeysOutcome {
        keys: Some(plan.keys),
        jwks,
        next_transition: plan.next_transition,
        problems,
        publishing,
        handled_rotation: if rotate { asked } else { previously_handled },
    })
}

/// Metadata of the signing-keys Secret: the managed labels, and no owner reference. Deleting
/// the policy (or a GitOps prune of it) leaves the keys that live tokens depend on, as
/// cert-manager leaves a Certificate's Secret; a policy of the same name adopts them when it
/// comes back. Deleting the Secret by hand discards them.
pub fn retained_meta(policy: &AuthPolicy, name: &str) -> Result<ObjectMeta> {
    let mut meta = objects::owned_meta(policy, name)?;
    meta.owner_references = None;
    Ok(meta)
}

/// The event for one change of the keys: (warning, reason, note).
fn describe_change(change: &Change, alg: &str) -> (bool, &'static str, String) {
    match change {
        Change::Created {
            kid,
            activates_at,
            pending: false,
        } => (
            false,
            "KeyCreated",
            format!(
                "created {alg} key {kid}; it signs from {}",
                rfc3339(*activates_at)
            ),
        ),
        Change::Created {
            kid, activates_at, ..
        } => (
            false,
            "KeyCreated",
            format!(
                "created {alg} key {kid} and published it; it signs once every verifier holds it, {} at the earliest",
                rfc3339(*activates_at)
            ),
        ),
        Change::Published { kid, activates_at } => (
            false,
            "KeyPublished",
            format!(
                "every verifier holds key {kid}; it signs from {}",
                rfc3339(*activates_at)
            ),
        ),
        Change::Removed(kid) => (
            false,
            "KeyRemoved",
            format!("key {kid} left the JWKS: no token it signed is still valid"),
        ),
        Change::Revoked(kid) => (
            true,
            "KeyRevoked",
            format!("key {kid} revoked at once from every JWKS and sidecar config"),
        ),
        Change::Rescheduled(kid) => (
            false,
            "KeyRescheduled",
            format!("key {kid} signing window moved"),
        ),
    }
}

/// Issues or renews the serving certificate; returns when it is next due, or the problem that
/// stops it. The names come only from the Service's label and the policy's own namespace, and
/// a label that is not one (an object stored before the schema checked it) is refused here
/// again, before anything is signed.
pub async fn reconcile_tls(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ca: &CaDocument,
    ctx: &Context,
    now: i64,
) -> Result<Result<i64, Problem>> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let Some(dns_names) =
        names::service_dns_names(&own.service.name, &namespace, &ctx.cluster_domain)
    else {
        return Ok(Err(Problem::InvalidServiceName(own.service.name.clone())));
    };
    let bundle = ca.bundle(now);
    let cached = ctx.secret(&namespace, &names.tls);
    let existing = cached.as_ref().and_then(|s| {
        let annotations = s.annotations();
        Some(ExistingLeaf {
            not_after: annotations.get(TLS_NOT_AFTER_ANNOTATION)?.parse().ok()?,
            signer: annotations.get(TLS_SIGNER_ANNOTATION)?.clone(),
            dns_names: annotations
                .get(TLS_NAMES_ANNOTATION)?
                .split(',')
                .map(str::to_owned)
                .collect(),
        })
    });
    let renew = ca::leaf_needs_renewal(existing.as_ref(), ca, &dns_names, now);
    let (cert, key, not_after, signer) = match (&cached, &existing, renew) {
        (Some(secret), Some(leaf), false) => (
            secret_data(secret, "tls.crt").unwrap_or_default(),
            secret_data(secret, "tls.key").unwrap_or_default(),
            leaf.not_after,
            leaf.signer.clone(),
        ),
        _ => {
            let leaf = ca.issue_serving(&dns_names, &[], now)?;
            let signer = ca
                .signer(now)
                .map(|a| ca::fingerprint(&a.cert_pem))
                .unwrap_or_default();
            ctx.event(
                policy,
                false,
                "CertificateIssued",
                format!(
                    "issued a serving certificate for {} until {}",
                    dns_names.join(", "),
                    rfc3339(leaf.not_after)
                ),
            )
            .await;
            (leaf.cert_pem, leaf.key_pem, leaf.not_after, signer)
        }
    };
    let mut meta = objects::owned_meta(policy, &names.tls)?;
    meta.annotations = Some(BTreeMap::from([
        (TLS_NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
        (TLS_SIGNER_ANNOTATION.to_owned(), signer),
        (TLS_NAMES_ANNOTATION.to_owned(), dns_names.join(",")),
    ]));
    let desired = objects::secret(
        meta,
        Some("kubernetes.io/tls"),
        BTreeMap::from([
            ("tls.crt".to_owned(), cert),
            ("tls.key".to_owned(), key),
            (CA_FILE.to_owned(), bundle),
        ]),
    );
    let unchanged = cached
        .as_ref()
        .is_some_and(|s| s.data == desired.data && s.annotations() == desired.annotations());
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(Ok(not_after - ca::LEAF_RENEW_BEFORE_SECS))
}

/// Renders the client registry from every valid OAuthClient of this issuer.
pub async fn reconcile_registry(
    policy: &AuthPolicy,
    names: &Names,
    ctx: &Context,
    now: i64,
) -> Result<usize> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let all = ctx.clients.state();
    let owners = AudienceOwners::new(
        ctx.policies.state().iter().map(AsRef::as_ref),
        &ctx.cluster_domain,
    );
    let key = (namespace.clone(), policy.name_any());
    let mut clients = Vec::new();
    let mut parts = Vec::new();
    for client in all.iter().filter(|c| issuer_key(c) == key) {
        let cap = ctx.limits.clients_per_namespace;
        if crate::limits::over_limit(client.as_ref(), all.iter().map(AsRef::as_ref), cap).is_some()
        {
            // Refused in its own status; hashing its secret is what the cap spares.
            continue;
        }
        let sorted = owners.sort_client(client);
        let mut problems = validate(client, Some(policy));
        problems.extend(audience_problem(&sorted));
        if problems.iter().any(|p| p.blocks_registration()) {
            continue;
        }
        let credentials = read_credentials(client, ctx).await?;
        clients.push(client.clone());
        parts.push((credentials, sorted.admitted, sorted.owned));
    }
    let cached = ctx.secret(&namespace, &names.clients);
    let existing: ClientRegistry = cached
        .as_ref()
        .and_then(|s| secret_data(s, CLIENTS_FILE))
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    // Hashing a chosen secret with argon2 takes tens of milliseconds: on the blocking pool,
    // never on the workers that renew the lease and answer the webhook.
    let (count, text) = ctx
        .heavy(move || -> Result<(usize, String)> {
            let entries: Vec<Entry<'_>> = clients
                .iter()
                .zip(parts)
                .map(
                    |(client, (credentials, audiences, owned_audiences))| Entry {
                        client,
                        credentials,
                        audiences,
                        owned_audiences,
                    },
                )
                .collect();
            let registry = registry::render(&entries, &existing, now)?;
            let text = objects::to_json("client registry", &registry)?;
            Ok((registry.clients.len(), text))
        })
        .await??;
    let desired = objects::secret(
        objects::owned_meta(policy, &names.clients)?,
        None,
        BTreeMap::from([(CLIENTS_FILE.to_owned(), text)]),
    );
    let unchanged = cached.is_some_and(|s| s.data == desired.data);
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(count)
}

/// Reads a client's credentials for the registry: from the operator's cache for generated
/// secrets, and directly from a user's own Secret (the operator watches users' Secrets by
/// metadata only, so it never caches their data).
async fn read_credentials(client: &OAuthClient, ctx: &Context) -> Result<Credentials> {
    let namespace = client.namespace().ok_or(Error::Unaddressable)?;
    if client.spec.public {
        return Ok(Credentials::Public);
    }
    let source = |s: &Secret| {
        format!(
            "{}:{}",
            s.uid().unwrap_or_default(),
            s.resource_version().unwrap_or_default()
        )
    };
    if let Some(reference) = &client.spec.existing_secret {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&reference.name)
            .await?;
        return Ok(
            match secret
                .as_ref()
                .and_then(|s| Some((secret_data(s, &reference.key)?, source(s))))
            {
                Some((secret, source)) => Credentials::Chosen { secret, source },
                None => Credentials::Missing,
            },
        );
    }
    let Some(name) = client_secret_name(client) else {
        return Ok(Credentials::Missing);
    };
    let uid = client.uid().unwrap_or_default();
    let Some(secret) = ctx.secret(&namespace, &name) else {
        return Ok(Credentials::Missing);
    };
    if !secret.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(Credentials::Missing);
    }
    let Some(current) = secret_data(&secret, CLIENT_SECRET_KEY) else {
        return Ok(Credentials::Missing);
    };
    let previous = secret
        .annotations()
        .get(PREVIOUS_NOT_AFTER_ANNOTATION)
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|until| Some((secret_data(&secret, PREVIOUS_SECRET_KEY)?, until)));
    Ok(Credentials::Generated {
        current,
        previous,
        source: source(&secret),
    })
}

/// Copies each upstream's client secret, read from the user's Secret by reference, into
/// Secret `<policy>-upstreams` (mounted only into issuer pods, one file per upstream), so a
/// rotated secret rolls in with the kubelet's sync. Returns the upstreams whose secret was
/// not found.
pub async fn reconcile_upstreams(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ctx: &Context,
) -> Result<Vec<String>> {
    if own.upstreams.is_empty() {
        return Ok(Vec::new());
    }
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let mut data = BTreeMap::new();
    let mut missing = Vec::new();
    for upstream in &own.upstreams {
        let reference = &upstream.client_secret_ref;
        let secret = api.get_opt(&reference.name).await?;
        match secret.as_ref().and_then(|s| secret_data(s, &reference.key)) {
            Some(value) => {
                data.insert(scopegate_core::upstream::secret_key(&upstream.name), value);
            }
            None => missing.push(upstream.name.clone()),
        }
    }
    let desired = objects::secret(objects::owned_meta(policy, &names.upstreams)?, None, data);
    let unchanged = ctx
        .secret(&namespace, &names.upstreams)
        .is_some_and(|s| s.data == desired.data);
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopegate_crds::v1alpha1::Algorithm;

    const PARAMS: RotationParams = RotationParams {
        period: 1000,
        propagation: 100,
        token_ttl: 300,
        leeway: 30,
    };

    fn key(alg: Algorithm, activates: i64) -> ManagedKey {
        let material = keygen::generate(alg, Some(2048)).unwrap();
        ManagedKey {
            kid: material.kid,
            alg: keygen::alg_name(alg).into(),
            published_at: activates - 100,
            activates_at: activates,
            signs_until: activates + 1000,
            removed_after: activates + 1330,
            private_key: material.private_key,
            public_jwk: material.public_jwk,
            pending: false,
        }
    }

    fn times(k: &ManagedKey) -> (String, [i64; 4]) {
        (
            k.kid.clone(),
            [
                k.published_at,
                k.activates_at,
                k.signs_until,
                k.removed_after,
            ],
        )
    }

    fn view(name: &str, kids: Option<&[&str]>) -> KeyView {
        KeyView {
            name: name.into(),
            kids: kids.map(|k| k.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn a_key_counts_as_published_only_where_every_view_holds_it() {
        let views = [
            view("jwks", Some(&["a", "b", "c"])),
            view("own", Some(&["a", "b"])),
            view("dependent", Some(&["b", "c"])),
        ];
        assert_eq!(held_everywhere(&views), BTreeSet::from(["b".to_owned()]));
        assert_eq!(lacking(&views, "a"), ["dependent"]);
        let missing = [view("jwks", Some(&["a"])), view("own", None)];
        assert!(
            held_everywhere(&missing).is_empty(),
            "a missing view holds nothing"
        );
        assert_eq!(lacking(&missing, "a"), ["own"]);
    }

    #[test]
    fn garbage_keys_are_left_out_and_reported() {
        let good = key(Algorithm::ES256, 0);
        let mut garbage = key(Algorithm::ES256, 500);
        garbage.private_key = "Z2FyYmFnZQ==".into();
        let mut expired_garbage = key(Algorithm::ES256, -5000);
        expired_garbage.private_key = "Z2FyYmFnZQ==".into();
        let assessment = assess(
            &[good.clone(), garbage.clone(), expired_garbage],
            &[],
            &[],
            None,
            600,
            PARAMS,
        );
        assert_eq!(assessment.usable, [good]);
        assert_eq!(
            assessment.invalid.len(),
            1,
            "an expired bad key is just dropped"
        );
        assert_eq!(assessment.invalid[0].0.kid, garbage.kid);
        assert_eq!(
            assessment.invalid[0].1,
            keygen::KeyProblem::Private("ES256".into())
        );
        assert!(assessment.retained.is_empty());
    }

    #[test]
    fn keys_the_document_lost_are_kept_public_only_until_they_expire() {
        let old = key(Algorithm::ES256, 0);
        let current = key(Algorithm::ES256, 1000);
        let published: Vec<Jwk> = [&old, &current]
            .iter()
            .filter_map(|k| k.public_jwk.clone())
            .collect();
        let known = [times(&old), times(&current)];
        // The Secret is gone: both public keys stay, with the times status recorded.
        let lost = assess(&[], &known, &published, None, 1200, PARAMS);
        assert_eq!(lost.retained, [old.kid.clone(), current.kid.clone()]);
        assert!(lost.had_keys);
        assert!(lost.usable.iter().all(|k| !k.has_private_key()));
        assert_eq!(lost.usable[1].removed_after, current.removed_after);
        assert!(lost.usable.iter().all(|k| keygen::check(k).is_ok()));
        // Restored from an older copy holding only the old key: the newer one is kept.
        let restored = assess(
            std::slice::from_ref(&old),
            &known,
            &published,
            None,
            1200,
            PARAMS,
        );
        assert_eq!(restored.retained, std::slice::from_ref(&current.kid));
        assert_eq!(restored.usable[0], old);
        // A revoked kid is never brought back; a forged JWK (kid not its thumbprint) neither.
        let mut forged = old.public_jwk.clone().unwrap();
        forged.kid = Some("chosen-by-attacker".into());
        let revoked = assess(
            &[],
            &known,
            &[published[1].clone(), forged],
            Some(current.kid.as_str()),
            1200,
            PARAMS,
        );
        assert!(revoked.usable.is_empty(), "{:?}", revoked.retained);
        // A brand-new issuer had no keys.
        assert!(!assess(&[], &[], &[], None, 0, PARAMS).had_keys);
    }

    #[test]
    fn a_corrupt_document_is_described_without_quoting_it() {
        // A private key where a time belongs: serde's own message quotes it.
        let text =
            r#"{"keys": [{"kid": "a", "alg": "ES256", "publishedAt": "MIGHAgEAMBMGByqGSM49"}]}"#;
        let error = serde_json::from_str::<SigningKeys>(text).unwrap_err();
        assert!(error.to_string().contains("MIGH"), "{error}");
        let described = crate::error::json_problem(&error);
        assert!(!described.contains("MIGH"), "{described}");
        assert!(
            described.starts_with("not the expected document at line 1"),
            "{described}"
        );
        let error = serde_json::from_str::<SigningKeys>("{\"keys\": [").unwrap_err();
        assert!(crate::error::json_problem(&error).starts_with("cut short"));
    }
}
