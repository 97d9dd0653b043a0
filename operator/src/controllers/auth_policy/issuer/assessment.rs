//! What the stored keys are worth and where verifiers hold them: the pure checks the key
//! plan starts from.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use scopegate_core::config::{CONFIG_FILE, KeySource, SidecarConfig};
use scopegate_core::jwk::{Jwk, Jwks};
use scopegate_core::keys::ManagedKey;
use scopegate_crds::v1alpha1::SelfIssuer;

use crate::pki::keygen;
use crate::pki::rotation::{self, RotationParams};

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
pub fn jwks_of(cm: Option<&ConfigMap>, file: &str) -> Option<Jwks> {
    let text = cm?.data.as_ref()?.get(file)?;
    serde_json::from_str(text).ok()
}

/// The static keys a sidecar config ConfigMap trusts for `issuer`: `Some(None)` when the
/// config exists and does not trust it (that verifier needs none of its keys), `None` when
/// the config is missing.
pub fn trusted_in(cm: Option<&ConfigMap>, issuer: &str) -> Option<Option<BTreeSet<String>>> {
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

/// The key ids of a JWKS.
pub fn kids(jwks: &Jwks) -> BTreeSet<String> {
    jwks.keys.iter().filter_map(|k| k.kid.clone()).collect()
}
