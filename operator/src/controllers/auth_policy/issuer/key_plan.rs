//! The decisions of the key step, made without a server: from the signing-keys Secret and
//! where verifiers read the keys ([`Observed`]), which keys to keep or make, what the Secret
//! and the JWKS ConfigMap hold next, which events say so, and what the status hears
//! ([`KeyPlan`]). [`super::keys`] reads the observation and carries the plan out.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use scopegate_core::config::{CONFIG_FILE, KeySource, SidecarConfig};
use scopegate_core::jwk::{Jwk, Jwks};
use scopegate_core::keys::{ManagedKey, SIGNING_KEYS_FILE, SigningKeys};
use scopegate_crds::v1alpha1::{Algorithm, AuthPolicy, AuthPolicyStatus, SelfIssuer};

use super::assessment::{
    Assessment, KeyView, assess, held_everywhere, jwks_of, kids, lacking, rotation_params,
    trusted_in,
};
use crate::context::rfc3339;
use crate::controllers::auth_policy::problem::Problem;
use crate::error::{Error, Result, json_problem};
use crate::names::{self, ALGORITHM_ANNOTATION, JWKS_FILE, Names, ROTATION_HANDLED_ANNOTATION};
use crate::objects::{self, is_managed};
use crate::pki::keygen::{self, KeygenError};
use crate::pki::rotation::{self, Change, NewKeyMaterial, Requests};

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

/// What the key step reads before it decides: the signing-keys Secret (from the API server,
/// never a cache that may lag behind the previous write) and, from the caches, where
/// verifiers read the keys.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The signing-keys Secret.
    pub secret: Option<Secret>,
    /// The issuer's JWKS ConfigMap.
    pub jwks: Option<Arc<ConfigMap>>,
    /// The issuer's own sidecar config ConfigMap.
    pub own_config: Option<Arc<ConfigMap>>,
    /// The sidecar config ConfigMaps of the policies trusting the issuer by reference, as
    /// (namespace, name, the ConfigMap if it exists).
    pub dependent_configs: Vec<(String, String, Option<Arc<ConfigMap>>)>,
}

/// An event about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// The key's id: the event's related object is the key in the Secret, so each key's
    /// events are their own series.
    pub kid: String,
    /// A Warning rather than a Normal event.
    pub warning: bool,
    /// The event's reason.
    pub reason: &'static str,
    /// The event's note.
    pub note: String,
}

/// A write of the signing-keys Secret.
#[derive(Debug, Clone)]
pub struct SecretWrite {
    /// The Secret, with the resourceVersion it was read at as the write's precondition.
    pub secret: Secret,
    /// Created (it did not exist) rather than replaced.
    pub create: bool,
    /// One event for each change of the keys.
    pub events: Vec<KeyEvent>,
}

/// What the key step does.
#[derive(Debug, Default)]
pub struct KeyPlan {
    /// The signing-keys Secret to write, when it changes.
    pub write: Option<SecretWrite>,
    /// The JWKS ConfigMap to apply (`None`: leave it as it is).
    pub jwks: Option<ConfigMap>,
    /// When the key that signs now started signing (the active-key-age metric).
    pub active_since: Option<i64>,
    /// What the status hears of the keys.
    pub outcome: KeysOutcome,
}

/// Moves the signing keys one rotation step (`new_key` makes key material) and renders the
/// JWKS. The Secret is written before the JWKS and the sidecar configs, but a new key in it is
/// pending (signs nothing) until a later step sees it in every verifier's key set. A Secret
/// the operator does not manage, or whose document does not parse, is left as it is.
pub fn plan(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    observed: &Observed,
    now: i64,
    new_key: &mut dyn FnMut() -> Result<NewKeyMaterial, KeygenError>,
) -> Result<KeyPlan> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let object = format!("Secret {namespace}/{}", names.signing_keys);
    let current = observed.secret.as_ref();
    let status = policy.status.as_ref();
    let previously_handled = status.and_then(|s| s.handled_rotation.clone()).or_else(|| {
        // Before the status kept it, the Secret did.
        current.and_then(|s| s.annotations().get(ROTATION_HANDLED_ANNOTATION).cloned())
    });
    let published = jwks_of(observed.jwks.as_deref(), JWKS_FILE);
    let stored = match stored_keys(current, &published, &object, &previously_handled) {
        Ok(stored) => stored,
        Err(left_alone) => return Ok(*left_alone),
    };

    let (requests, handled_rotation) = requests(policy, &previously_handled);
    let params = rotation_params(own);
    let alg = keygen::alg_name(own.signing.algorithm);
    let views = key_views(
        own,
        &namespace,
        names,
        &object,
        &stored,
        published.as_ref(),
        observed,
    );
    let public = public_keys(published, observed.own_config.as_deref(), &own.url);
    let assessment = assess(
        &stored.keys,
        &known_times(status),
        &public,
        requests.revoke_kid.as_deref(),
        now,
        params,
    );
    let inputs = rotation::Inputs {
        keys: &assessment.usable,
        now,
        params,
        alg,
        requests: &requests,
        published: &held_everywhere(&views),
        had_keys: assessment.had_keys,
    };
    let rotation = rotation::plan(&inputs, new_key)?;

    let write = secret_write(policy, names, current, &stored, &assessment, &rotation, alg)?;
    let signing = SigningKeys {
        keys: rotation.keys.clone(),
    };
    let jwks = signing.published_jwks(now);
    Ok(KeyPlan {
        write,
        jwks: Some(jwks_config_map(policy, names, &jwks, alg)?),
        active_since: signing.signing_key(now).map(|k| k.activates_at),
        outcome: KeysOutcome {
            problems: key_problems(&assessment, &rotation),
            publishing: rotation
                .pending()
                .map(|k| (k.kid.clone(), lacking(&views, &k.kid))),
            keys: Some(rotation.keys),
            jwks,
            next_transition: rotation.next_transition,
            // A deferred request stays unhandled: the next reconcile asks again.
            handled_rotation: handled_rotation
                .filter(|_| !rotation.rotation_deferred)
                .or(previously_handled),
        },
    })
}

/// What the user asked for through the policy's annotations, and the rotate-annotation value
/// acted on once this step is done (a value not acted on yet is a new request).
fn requests(
    policy: &AuthPolicy,
    previously_handled: &Option<String>,
) -> (Requests, Option<String>) {
    let asked = policy.annotations().get(names::ROTATE_ANNOTATION).cloned();
    let rotate = asked.is_some() && asked != *previously_handled;
    let requests = Requests {
        rotate,
        revoke_kid: policy
            .annotations()
            .get(names::REVOKE_KID_ANNOTATION)
            .cloned(),
    };
    let handled = if rotate {
        asked
    } else {
        previously_handled.clone()
    };
    (requests, handled)
}

/// The keys the Secret stores, or the plan that leaves it as it is and says why: a Secret
/// the operator does not manage is not written into, and one whose document does not parse
/// would be lost for good if written over (what is published stays).
fn stored_keys(
    current: Option<&Secret>,
    published: &Option<Jwks>,
    object: &str,
    previously_handled: &Option<String>,
) -> Result<SigningKeys, Box<KeyPlan>> {
    let left_alone = |keys, jwks, problem| {
        Box::new(KeyPlan {
            outcome: KeysOutcome {
                keys,
                jwks,
                problems: vec![problem],
                handled_rotation: previously_handled.clone(),
                ..KeysOutcome::default()
            },
            ..KeyPlan::default()
        })
    };
    if current.is_some_and(|secret| !is_managed(secret.labels())) {
        let problem = Problem::NotOwned(object.to_owned());
        return Err(left_alone(Some(Vec::new()), Jwks::default(), problem));
    }
    stored_document(current).map_err(|error| {
        let problem = Problem::SigningKeysCorrupt(object.to_owned(), json_problem(&error));
        left_alone(None, published.clone().unwrap_or_default(), problem)
    })
}

/// The signing-keys document in the Secret (empty when there is none).
fn stored_document(current: Option<&Secret>) -> Result<SigningKeys, serde_json::Error> {
    match current.and_then(|s| s.data.as_ref()?.get(SIGNING_KEYS_FILE)) {
        Some(bytes) => serde_json::from_slice(&bytes.0),
        None => Ok(SigningKeys::default()),
    }
}

/// Where verifiers read the issuer's keys, as last observed. With HS256 only the issuer's own
/// pods verify, with the signing-keys document itself.
fn key_views(
    own: &SelfIssuer,
    namespace: &str,
    names: &Names,
    object: &str,
    stored: &SigningKeys,
    published: Option<&Jwks>,
    observed: &Observed,
) -> Vec<KeyView> {
    if own.signing.algorithm == Algorithm::HS256 {
        return vec![KeyView {
            name: object.to_owned(),
            kids: Some(stored.keys.iter().map(|k| k.kid.clone()).collect()),
        }];
    }
    let mut views = vec![
        KeyView {
            name: format!("ConfigMap {namespace}/{}", names.jwks),
            kids: published.map(kids),
        },
        KeyView {
            name: format!("ConfigMap {namespace}/{}", names.sidecar),
            kids: trusted_in(observed.own_config.as_deref(), &own.url).flatten(),
        },
    ];
    for (dependent_namespace, config, cm) in &observed.dependent_configs {
        if let Some(Some(kids)) = trusted_in(cm.as_deref(), &own.url) {
            views.push(KeyView {
                name: format!("ConfigMap {dependent_namespace}/{config}"),
                kids: Some(kids),
            });
        }
    }
    views
}

/// The key times the status recorded: kid → published, activates, signs-until,
/// removed-after.
fn known_times(status: Option<&AuthPolicyStatus>) -> Vec<(String, [i64; 4])> {
    status
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
        .unwrap_or_default()
}

/// The public keys verifiers hold: the published JWKS, and the static keys the issuer's own
/// sidecar config trusts for it.
fn public_keys(published: Option<Jwks>, own_config: Option<&ConfigMap>, url: &str) -> Vec<Jwk> {
    let mut public: Vec<Jwk> = published.map(|j| j.keys).unwrap_or_default();
    if let Some(Some(_)) = trusted_in(own_config, url)
        && let Some(config) = own_config
            .and_then(|cm| cm.data.as_ref()?.get(CONFIG_FILE))
            .and_then(|text| SidecarConfig::from_json(text).ok())
    {
        for trusted in config.verify.issuers.iter().filter(|t| t.issuer == url) {
            if let KeySource::Static { jwks } = &trusted.keys {
                public.extend(jwks.keys.iter().cloned());
            }
        }
    }
    public
}

/// The signing-keys Secret to write, if it changes: the planned keys plus the invalid ones
/// (kept as they are until their removal time). Written by an earlier release, the Secret is
/// owned by the policy and would go with it: rewritten without the owner reference, it is
/// retained.
fn secret_write(
    policy: &AuthPolicy,
    names: &Names,
    current: Option<&Secret>,
    stored: &SigningKeys,
    assessment: &Assessment,
    rotation: &rotation::Plan,
    alg: &str,
) -> Result<Option<SecretWrite>> {
    let mut document = SigningKeys {
        keys: rotation.keys.clone(),
    };
    document
        .keys
        .extend(assessment.invalid.iter().map(|(key, _)| key.clone()));
    let owned = current.is_some_and(|s| !s.owner_references().is_empty());
    if current.is_some() && document == *stored && !owned {
        return Ok(None);
    }
    let mut meta = retained_meta(policy, &names.signing_keys)?;
    meta.resource_version = current.and_then(|s| s.resource_version());
    if let Some(legacy) =
        current.and_then(|s| s.annotations().get(ROTATION_HANDLED_ANNOTATION).cloned())
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
    let events = rotation
        .changes
        .iter()
        .map(|change| {
            let (warning, reason, note) = describe_change(change, alg);
            KeyEvent {
                kid: change.kid().to_owned(),
                warning,
                reason,
                note,
            }
        })
        .collect();
    Ok(Some(SecretWrite {
        secret,
        create: current.is_none(),
        events,
    }))
}

/// The JWKS ConfigMap. The algorithm rides along so that policies trusting this issuer by
/// reference hear of a switch to HS256 (which publishes nothing new) through its watch.
fn jwks_config_map(
    policy: &AuthPolicy,
    names: &Names,
    jwks: &Jwks,
    alg: &str,
) -> Result<ConfigMap> {
    let mut meta = objects::owned_meta(policy, &names.jwks)?;
    meta.annotations = Some(BTreeMap::from([(
        ALGORITHM_ANNOTATION.to_owned(),
        alg.to_owned(),
    )]));
    let text = objects::to_json("JWKS", jwks)?;
    Ok(objects::config_map(
        meta,
        BTreeMap::from([(JWKS_FILE.to_owned(), text)]),
    ))
}

/// Whether the cached JWKS ConfigMap already is `desired` (and the operator's).
pub fn jwks_unchanged(current: Option<&ConfigMap>, desired: &ConfigMap) -> bool {
    current.is_some_and(|cm| {
        cm.data == desired.data
            && is_managed(cm.labels())
            && cm.annotations() == desired.annotations()
    })
}

/// Problems with the keys: invalid ones, and ones whose private half was lost.
fn key_problems(assessment: &Assessment, rotation: &rotation::Plan) -> Vec<Problem> {
    let keys = &rotation.keys;
    let mut problems: Vec<Problem> = assessment
        .invalid
        .iter()
        .map(|(key, problem)| Problem::KeyInvalid(key.kid.clone(), problem.to_string()))
        .collect();
    let lost: Vec<String> = keys
        .iter()
        .filter(|k| !k.has_private_key())
        .map(|k| k.kid.clone())
        .collect();
    if !lost.is_empty() {
        problems.push(Problem::KeysLost(lost));
    }
    if rotation.rotation_deferred {
        problems.push(Problem::RotationDeferred(keys.len()));
    }
    problems
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::pki::rotation::RotationParams;
    use kube::Resource;

    // The plan, decided without a server.

    const NOW: i64 = 1_800_000_000;

    fn policy(annotations: &str, algorithm: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            r#"
apiVersion: scopegate.dev/v1alpha1
kind: AuthPolicy
metadata:
  name: auth
  namespace: shop
  uid: 6f1c
  annotations: {{{annotations}}}
spec:
  selector: {{}}
  issuer:
    self:
      url: https://auth.shop.svc
      service: {{name: auth, port: 443}}
      signing: {{algorithm: {algorithm}}}
  upstream: {{port: 8080}}
"#
        ))
        .unwrap()
    }

    fn decide(policy: &AuthPolicy, observed: &Observed, now: i64) -> KeyPlan {
        let own = policy.spec.issuer.self_.clone().unwrap();
        let algorithm = own.signing.algorithm;
        plan(policy, &own, &Names::of("auth"), observed, now, &mut || {
            keygen::generate(algorithm, None)
        })
        .unwrap()
    }

    /// What the API server and the caches would hold after `plan` was carried out.
    fn carried_out(plan: &KeyPlan) -> Observed {
        let mut secret = plan.write.clone().unwrap().secret;
        secret.metadata.resource_version = Some("7".into());
        Observed {
            secret: Some(secret),
            jwks: plan.jwks.clone().map(Arc::new),
            ..Observed::default()
        }
    }

    fn document(secret: &Secret) -> SigningKeys {
        stored_document(Some(secret)).unwrap()
    }

    #[test]
    fn a_new_issuer_gets_one_key_that_signs_at_once_in_a_secret_that_outlives_it() {
        let issuer = policy("", "ES256");
        let plan = decide(&issuer, &Observed::default(), NOW);
        let write = plan.write.as_ref().expect("the Secret is created");
        assert!(write.create);
        let meta = &write.secret.metadata;
        assert_eq!(meta.name.as_deref(), Some("auth-signing-keys"));
        assert_eq!(
            meta.owner_references, None,
            "deleting the policy keeps keys"
        );
        assert!(is_managed(meta.labels.as_ref().unwrap()));
        let keys = document(&write.secret).keys;
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0].activates_at, NOW,
            "nothing older can be held anywhere"
        );
        assert_eq!(write.events.len(), 1);
        let event = &write.events[0];
        assert_eq!(
            (event.kid.as_str(), event.reason),
            (keys[0].kid.as_str(), "KeyCreated")
        );
        assert!(
            event.note.starts_with("created ES256 key"),
            "{}",
            event.note
        );
        assert!(!event.warning);

        let jwks = plan.jwks.as_ref().expect("the JWKS is published");
        assert_eq!(
            jwks.metadata.annotations.as_ref().unwrap()[ALGORITHM_ANNOTATION],
            "ES256"
        );
        assert_eq!(jwks.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert_eq!(plan.outcome.jwks.keys.len(), 1);
        assert_eq!(plan.outcome.keys.as_deref(), Some(keys.as_slice()));
        assert_eq!(plan.outcome.publishing, None);
        assert_eq!(plan.active_since, Some(NOW));
        assert!(plan.outcome.problems.is_empty());
    }

    #[test]
    fn a_steady_issuer_writes_nothing_and_publishes_the_same_keys() {
        let issuer = policy("", "ES256");
        let first = decide(&issuer, &Observed::default(), NOW);
        let observed = carried_out(&first);
        let again = decide(&issuer, &observed, NOW + 60);
        assert!(
            again.write.is_none(),
            "an unchanged document is not written"
        );
        let desired = again.jwks.unwrap();
        assert!(jwks_unchanged(observed.jwks.as_deref(), &desired));
        assert_eq!(again.outcome.keys, first.outcome.keys);
    }

    #[test]
    fn a_rotation_request_writes_a_pending_key_and_names_the_verifiers_that_lack_it() {
        let first = decide(&policy("", "ES256"), &Observed::default(), NOW);
        let observed = carried_out(&first);
        let old = first.outcome.keys.unwrap()[0].kid.clone();
        let asked = policy("scopegate.dev/rotate: r1", "ES256");
        let plan = decide(&asked, &observed, NOW + 60);

        let write = plan.write.as_ref().expect("the new key is stored first");
        assert!(!write.create);
        assert_eq!(
            write.secret.metadata.resource_version.as_deref(),
            Some("7"),
            "written only over the version read"
        );
        let new = document(&write.secret)
            .keys
            .into_iter()
            .find(|k| k.kid != old)
            .expect("a successor");
        assert!(
            new.pending,
            "it signs nothing until every verifier holds it"
        );
        assert!(
            write
                .events
                .iter()
                .any(|e| e.kid == new.kid
                    && e.note.contains("it signs once every verifier holds it")),
            "{:?}",
            write.events
        );
        assert!(
            plan.outcome
                .jwks
                .keys
                .iter()
                .any(|k| k.kid.as_deref() == Some(&new.kid))
        );
        assert_eq!(
            plan.outcome.publishing,
            Some((
                new.kid.clone(),
                vec![
                    "ConfigMap shop/auth-jwks".to_owned(),
                    "ConfigMap shop/auth-sidecar".to_owned()
                ]
            ))
        );
        assert_eq!(plan.outcome.handled_rotation.as_deref(), Some("r1"));
    }

    #[test]
    fn a_secret_the_operator_does_not_manage_is_left_alone() {
        let mut observed = carried_out(&decide(&policy("", "ES256"), &Observed::default(), NOW));
        let secret = observed.secret.as_mut().unwrap();
        secret.metadata.labels = None;
        let plan = decide(&policy("scopegate.dev/rotate: r1", "ES256"), &observed, NOW);
        assert!(plan.write.is_none() && plan.jwks.is_none());
        assert_eq!(
            plan.outcome.problems,
            [Problem::NotOwned("Secret shop/auth-signing-keys".into())]
        );
        assert_eq!(plan.outcome.handled_rotation, None, "the request waits");
    }

    #[test]
    fn an_unreadable_document_is_kept_with_what_is_published() {
        let first = decide(&policy("", "ES256"), &Observed::default(), NOW);
        let mut observed = carried_out(&first);
        let secret = observed.secret.as_mut().unwrap();
        secret.data = Some(BTreeMap::from([(
            SIGNING_KEYS_FILE.to_owned(),
            k8s_openapi::ByteString(b"{\"keys\": [{\"kid\": 1".to_vec()),
        )]));
        let plan = decide(&policy("", "ES256"), &observed, NOW + 60);
        assert!(
            plan.write.is_none() && plan.jwks.is_none(),
            "nothing is written over it"
        );
        assert_eq!(plan.outcome.keys, None);
        assert_eq!(plan.outcome.jwks, first.outcome.jwks, "published keys stay");
        match plan.outcome.problems.as_slice() {
            [Problem::SigningKeysCorrupt(object, detail)] => {
                assert_eq!(object, "Secret shop/auth-signing-keys");
                assert!(detail.starts_with("not the expected document"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_secret_an_earlier_release_made_owned_is_rewritten_to_outlive_the_policy() {
        let mut observed = carried_out(&decide(&policy("", "ES256"), &Observed::default(), NOW));
        let issuer = policy("", "ES256");
        let secret = observed.secret.as_mut().unwrap();
        secret.metadata.owner_references = Some(vec![issuer.controller_owner_ref(&()).unwrap()]);
        secret.metadata.annotations = Some(BTreeMap::from([(
            ROTATION_HANDLED_ANNOTATION.to_owned(),
            "r0".to_owned(),
        )]));
        let plan = decide(&issuer, &observed, NOW + 60);
        let write = plan
            .write
            .expect("rewritten although the keys are the same");
        assert_eq!(write.secret.metadata.owner_references, None);
        assert_eq!(
            write.secret.metadata.annotations.unwrap()[ROTATION_HANDLED_ANNOTATION],
            "r0",
            "the legacy record stays"
        );
        assert!(write.events.is_empty(), "no key changed");
        assert_eq!(plan.outcome.handled_rotation.as_deref(), Some("r0"));
    }

    #[test]
    fn an_hs256_key_counts_as_published_once_the_document_holds_it() {
        let first = decide(&policy("", "HS256"), &Observed::default(), NOW);
        assert!(
            first.outcome.jwks.keys.is_empty(),
            "HS256 publishes nothing"
        );
        let plan = decide(
            &policy("scopegate.dev/rotate: r1", "HS256"),
            &carried_out(&first),
            NOW + 60,
        );
        let (_, lacking) = plan.outcome.publishing.expect("a pending successor");
        assert_eq!(lacking, ["Secret shop/auth-signing-keys"]);
    }

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
