//! The parts of an AuthPolicy reconcile that only `issuer.self` policies have: the signing
//! keys and their JWKS, the serving certificate, and the client registry.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use scopegate_core::clients::{CLIENTS_FILE, ClientRegistry};
use scopegate_core::jwk::Jwks;
use scopegate_core::keys::{ManagedKey, SIGNING_KEYS_FILE, SigningKeys};
use scopegate_core::names;
use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient, SelfIssuer};

use super::build::{
    self, CA_FILE, JWKS_FILE, Names, ROTATION_HANDLED_ANNOTATION, TLS_NAMES_ANNOTATION,
    TLS_NOT_AFTER_ANNOTATION, TLS_SIGNER_ANNOTATION,
};
use super::status::Problem;
use crate::ca::{self, CaDocument, ExistingLeaf};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::oauth_client::credentials;
use crate::oauth_client::validate::{issuer_key, validate};
use crate::registry::{self, Entry};
use crate::rotation::{self, Change, Requests, RotationParams};
use crate::{keygen, secret_data};

/// Annotation on the JWKS ConfigMap naming the issuer's signing algorithm.
pub const ALGORITHM_ANNOTATION: &str = "scopegate.dev/signing-algorithm";

/// What the key step produced.
#[derive(Debug)]
pub struct KeysOutcome {
    /// Every key after this step.
    pub keys: Vec<ManagedKey>,
    /// The public JWKS published.
    pub jwks: Jwks,
    /// The next key transition.
    pub next_transition: Option<i64>,
    /// A problem that stopped the step.
    pub problem: Option<Problem>,
}

/// Moves the signing keys one rotation step and publishes the JWKS.
///
/// The signing-keys Secret is the source of truth, so it is read directly (never from a
/// cache that may lag behind the previous write) and written with its resourceVersion as a
/// precondition: a racing writer makes this reconcile fail and retry instead of forking the
/// key set.
pub async fn reconcile_keys(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ctx: &Context,
    now: i64,
) -> Result<KeysOutcome> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = api.get_opt(&names.signing_keys).await?;
    if let Some(secret) = &current
        && !is_managed(secret.labels())
    {
        return Ok(KeysOutcome {
            keys: Vec::new(),
            jwks: Jwks::default(),
            next_transition: None,
            problem: Some(Problem::NotOwned(format!(
                "Secret {namespace}/{}",
                names.signing_keys
            ))),
        });
    }
    let stored: SigningKeys = match current
        .as_ref()
        .and_then(|s| secret_data(s, SIGNING_KEYS_FILE))
    {
        Some(text) => serde_json::from_str(&text).map_err(|source| Error::Corrupt {
            object: format!("Secret {namespace}/{}", names.signing_keys),
            document: "signing-keys document",
            source,
        })?,
        None => SigningKeys::default(),
    };
    let handled = current
        .as_ref()
        .and_then(|s| s.annotations().get(ROTATION_HANDLED_ANNOTATION).cloned());
    let asked = policy.annotations().get(names::ROTATE_ANNOTATION).cloned();
    let requests = Requests {
        rotate: asked.is_some() && asked != handled,
        revoke_kid: policy
            .annotations()
            .get(names::REVOKE_KID_ANNOTATION)
            .cloned(),
    };

    let secs = |d: &scopegate_crds::v1alpha1::PositiveDuration| {
        d.get()
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    let token_ttl = own
        .mint
        .as_ref()
        .map_or(0, |m| secs(&m.max_ttl))
        .max(secs(&own.tokens.access_token_ttl));
    let params = RotationParams {
        period: secs(&own.rotation_period),
        propagation: secs(&own.propagation),
        token_ttl,
        leeway: own
            .tokens
            .leeway
            .get()
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0)),
    };
    let alg = keygen::alg_name(own.signing.algorithm);
    let plan = rotation::plan(&stored.keys, now, params, alg, &requests, &mut || {
        keygen::generate(own.signing.algorithm, own.signing.rsa_bits)
    })?;

    if plan.keys != stored.keys || (requests.rotate && asked != handled) || current.is_none() {
        let document = SigningKeys {
            keys: plan.keys.clone(),
        };
        let mut meta = build::owned_meta(policy, &names.signing_keys)?;
        meta.resource_version = current.as_ref().and_then(|s| s.resource_version());
        if let Some(value) = asked.clone().or(handled.clone()) {
            meta.annotations = Some(BTreeMap::from([(
                ROTATION_HANDLED_ANNOTATION.to_owned(),
                value,
            )]));
        }
        let secret = build::secret(
            meta,
            None,
            BTreeMap::from([(
                SIGNING_KEYS_FILE.to_owned(),
                build::to_json("signing keys", &document)?,
            )]),
        );
        if current.is_some() {
            api.replace(
                &names.signing_keys,
                &PostParams {
                    field_manager: Some(crate::context::FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &secret,
            )
            .await?;
        } else {
            api.create(
                &PostParams {
                    field_manager: Some(crate::context::FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &secret,
            )
            .await?;
        }
        ctx.metrics.writes.inc();
        for change in &plan.changes {
            let (warning, reason, note) = match change {
                Change::Created { kid, activates_at } => (
                    false,
                    "KeyCreated",
                    format!(
                        "created {alg} key {kid}; it signs from {}",
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
            };
            tracing::info!(policy = %policy.name_any(), namespace = %namespace, reason, "{note}");
            ctx.event(policy, warning, reason, note).await;
        }
    }

    let document = SigningKeys {
        keys: plan.keys.clone(),
    };
    if let Some(active) = document.signing_key(now) {
        ctx.metrics
            .active_key_age
            .observe((now - active.activates_at).max(0) as f64);
    }
    let jwks = document.published_jwks(now);
    let jwks_text = build::to_json("JWKS", &jwks)?;
    // The algorithm rides along so that policies trusting this issuer by reference hear of a
    // switch to HS256 (which publishes nothing new) through this object's watch.
    let mut meta = build::owned_meta(policy, &names.jwks)?;
    meta.annotations = Some(BTreeMap::from([(
        ALGORITHM_ANNOTATION.to_owned(),
        alg.to_owned(),
    )]));
    let desired = build::config_map(meta, BTreeMap::from([(JWKS_FILE.to_owned(), jwks_text)]));
    let unchanged = ctx.config_map(&namespace, &names.jwks).is_some_and(|cm| {
        cm.data == desired.data
            && is_managed(cm.labels())
            && cm.annotations() == desired.annotations()
    });
    ctx.apply::<ConfigMap>(&desired, unchanged).await?;

    Ok(KeysOutcome {
        keys: plan.keys,
        jwks,
        next_transition: plan.next_transition,
        problem: None,
    })
}

/// Issues or renews the serving certificate; returns when it is next due.
pub async fn reconcile_tls(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ca: &CaDocument,
    ctx: &Context,
    now: i64,
) -> Result<Option<i64>> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let dns_names = build::service_dns_names(&own.service.name, &namespace);
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
    let mut meta = build::owned_meta(policy, &names.tls)?;
    meta.annotations = Some(BTreeMap::from([
        (TLS_NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
        (TLS_SIGNER_ANNOTATION.to_owned(), signer),
        (TLS_NAMES_ANNOTATION.to_owned(), dns_names.join(",")),
    ]));
    let desired = build::secret(
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
    Ok(Some(not_after - ca::LEAF_RENEW_BEFORE_SECS))
}

/// OAuthClients that reference `policy` as their issuer.
pub fn clients_of<'a>(
    policy: &AuthPolicy,
    all: &'a [std::sync::Arc<OAuthClient>],
) -> Vec<&'a OAuthClient> {
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    all.iter()
        .map(AsRef::as_ref)
        .filter(|c| issuer_key(c) == key)
        .collect()
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
    let mut entries = Vec::new();
    for client in clients_of(policy, &all) {
        if validate(client, Some(policy))
            .iter()
            .any(|p| p.blocks_registration())
        {
            continue;
        }
        let credentials = credentials::read(client, ctx).await?;
        entries.push(Entry {
            client,
            credentials,
        });
    }
    let cached = ctx.secret(&namespace, &names.clients);
    let existing: ClientRegistry = cached
        .as_ref()
        .and_then(|s| secret_data(s, CLIENTS_FILE))
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let registry = registry::render(&entries, &existing, now)?;
    let desired = build::secret(
        build::owned_meta(policy, &names.clients)?,
        None,
        BTreeMap::from([(
            CLIENTS_FILE.to_owned(),
            build::to_json("client registry", &registry)?,
        )]),
    );
    let unchanged = cached.is_some_and(|s| s.data == desired.data);
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(registry.clients.len())
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
    let desired = build::secret(build::owned_meta(policy, &names.upstreams)?, None, data);
    let unchanged = ctx
        .secret(&namespace, &names.upstreams)
        .is_some_and(|s| s.data == desired.data);
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(missing)
}

/// Whether labels mark an object as the operator's.
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(names::MANAGED_BY_LABEL).map(String::as_str) == Some(names::MANAGED_BY_VALUE)
}

/// RFC 3339 text of a Unix time, for messages.
pub fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map_or_else(|_| unix.to_string(), |t| t.to_string())
}

/// Reference to an object for events, with namespace and name.
pub fn describe<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}
