//! The keys of a policy's discoveryUrl issuers: what the operator read of each
//! ([`crate::discovery`]), or else the keys its sidecars already hold (after a restart, or
//! while reads fail); and what its status says of them. [`resolve`] is pure; [`step`] asks
//! the reader.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::ObjectRef;
use scopegate_core::config::{CONFIG_FILE, KeySource, ServiceAccountIssuer, SidecarConfig};
use scopegate_core::jose::keys::{Alg, KeyEntry};
use scopegate_core::jwk::Jwks;
use scopegate_crds::v1alpha1::{AuthPolicy, DiscoveredIssuerStatus, ExternalIssuer};

use super::problem::Problem;
use super::render::DiscoveredKeys;
use crate::context::Context;
use crate::discovery::document::{KeysError, keys_for};
use crate::discovery::{Known, Source};
use crate::pki::keygen;

/// What one discoveryUrl issuer renders, and what status says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The keys rendered.
    pub jwks: Jwks,
    /// Its status entry.
    pub status: DiscoveredIssuerStatus,
    /// What needs attention, if anything.
    pub problem: Option<Problem>,
}

/// The keys `external` renders from what is `known` of its source, or else the keys the
/// sidecars `held` for it that still fit its algorithms.
pub fn resolve(external: &ExternalIssuer, known: &Known, held: Option<&Jwks>) -> Resolved {
    let algorithms: Vec<Alg> = (external.algorithms.iter())
        .filter_map(|a| Alg::from_name(keygen::alg_name(*a)))
        .collect();
    let issuer = external.issuer.clone();
    let keys = resolve_keys(&issuer, &algorithms, known, held);
    let problem = match &keys.error {
        Some(error) => Some(Problem::DiscoveryFailed {
            issuer: issuer.clone(),
            error: error.clone(),
            kept: keys.jwks.keys.len(),
            read_at: keys.read_at,
        }),
        None if keys.jwks.keys.is_empty() => Some(Problem::DiscoveryPending(issuer.clone())),
        None => None,
    };
    Resolved {
        status: keys.status(issuer),
        jwks: keys.jwks,
        problem,
    }
}

/// What one issuer's keys come to, whoever renders them.
struct Keys {
    /// The keys rendered.
    jwks: Jwks,
    /// The JWKS they were read from (none when they are held ones).
    jwks_uri: Option<String>,
    /// Why the keys are not the latest read, if they are not.
    error: Option<String>,
    /// When they were read, if this operator read them.
    read_at: Option<i64>,
}

impl Keys {
    fn status(&self, issuer: String) -> DiscoveredIssuerStatus {
        DiscoveredIssuerStatus {
            issuer,
            jwks_uri: self.jwks_uri.clone(),
            key_ids: self
                .jwks
                .keys
                .iter()
                .filter_map(|k| k.kid.clone())
                .collect(),
            error: self.error.clone(),
        }
    }
}

/// The keys of `issuer` from what is `known` of its source, or else the `held` ones that
/// still fit `algorithms`.
fn resolve_keys(issuer: &str, algorithms: &[Alg], known: &Known, held: Option<&Jwks>) -> Keys {
    let held_keys = || Jwks {
        keys: held
            .map(|jwks| jwks.keys.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|jwk| KeyEntry::from_jwk(jwk, Some(algorithms)).is_ok())
            .cloned()
            .collect(),
    };
    let usable = known.read.as_deref().map(|read| {
        keys_for(&read.document, &read.jwks, issuer, algorithms)
            .map(|jwks| (jwks, read.document.jwks_uri.clone()))
    });
    let (jwks, jwks_uri, error, read_at) = match usable {
        Some(Ok((jwks, uri))) => (jwks, Some(uri), known.error.clone(), known.read_at),
        // The issuer's own key set holds no key this policy may use: that is the issuer's
        // word, and keys it no longer publishes are not kept.
        Some(Err(unusable @ KeysError::NoUsableKey(_))) => (
            Jwks::default(),
            None,
            Some(known.error.clone().unwrap_or_else(|| unusable.to_string())),
            None,
        ),
        // The last good read does not serve this policy (another issuer's document, or no
        // key set at all): the latest failure says more, if any.
        Some(Err(unusable)) => (
            held_keys(),
            None,
            Some(known.error.clone().unwrap_or_else(|| unusable.to_string())),
            None,
        ),
        None => (held_keys(), None, known.error.clone(), None),
    };
    Keys {
        jwks,
        jwks_uri,
        error,
        read_at,
    }
}

/// Algorithms the cluster's service-account tokens are verified with (the API server signs
/// with RSA or ECDSA keys; P-521 is not among them, so such a key is never usable).
pub const SERVICE_ACCOUNT_ALGORITHMS: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::Es384];

/// What an issuer renders of the cluster's service-account issuer, and what status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountResolved {
    /// Rendered into the issuer's config; `None` while its name is not known.
    pub rendered: Option<ServiceAccountIssuer>,
    /// Its status entry.
    pub status: DiscoveredIssuerStatus,
    /// What needs attention, if anything (never blocking: the policy's own tokens work).
    pub problem: Option<Problem>,
}

/// The cluster's service-account issuer from what the operator read of it through the API
/// server, or else what the sidecars `held`. The issuer is whatever the API server says its
/// own is (read through the operator's authenticated client).
pub fn resolve_service_accounts(
    known: &Known,
    held: Option<&ServiceAccountIssuer>,
) -> ServiceAccountResolved {
    let read_issuer = known.read.as_deref().map(|r| r.document.issuer.clone());
    let Some(issuer) = read_issuer.or_else(|| held.map(|h| h.issuer.clone())) else {
        let problem = Problem::ServiceAccountIssuerPending(known.error.clone());
        return ServiceAccountResolved {
            rendered: None,
            status: DiscoveredIssuerStatus {
                issuer: String::new(),
                jwks_uri: None,
                key_ids: Vec::new(),
                error: known.error.clone(),
            },
            problem: Some(problem),
        };
    };
    // Keys held for another issuer name (the cluster's issuer changed) are not this one's.
    let held_jwks = held.filter(|h| h.issuer == issuer).map(|h| &h.jwks);
    let keys = resolve_keys(&issuer, &SERVICE_ACCOUNT_ALGORITHMS, known, held_jwks);
    let problem = match &keys.error {
        Some(error) if !keys.jwks.keys.is_empty() => Some(Problem::ServiceAccountIssuerFailed {
            error: error.clone(),
            kept: keys.jwks.keys.len(),
            read_at: keys.read_at,
        }),
        Some(error) => Some(Problem::ServiceAccountIssuerPending(Some(error.clone()))),
        None if keys.jwks.keys.is_empty() => Some(Problem::ServiceAccountIssuerPending(None)),
        None => None,
    };
    ServiceAccountResolved {
        rendered: Some(ServiceAccountIssuer {
            issuer: issuer.clone(),
            jwks: keys.jwks.clone(),
            algorithms: (SERVICE_ACCOUNT_ALGORITHMS.iter())
                .map(|a| a.name().to_owned())
                .collect(),
        }),
        status: keys.status(issuer),
        problem,
    }
}

/// The keys the sidecar config in force holds for its discovered issuers, by issuer, and
/// for the cluster's service-account issuer.
pub fn held(config_map: Option<&ConfigMap>) -> (DiscoveredKeys, Option<ServiceAccountIssuer>) {
    let Some(config) = config_map
        .and_then(|cm| cm.data.as_ref())
        .and_then(|data| data.get(CONFIG_FILE))
        .and_then(|text| SidecarConfig::from_json(text).ok())
    else {
        return (DiscoveredKeys::new(), None);
    };
    let service_accounts = (config.issuer.as_ref()).and_then(|i| i.service_account_issuer.clone());
    let discovered = (config.verify.issuers.into_iter())
        .filter_map(|trusted| match trusted.keys {
            KeySource::Discovered { jwks, .. } => Some((trusted.issuer, jwks)),
            _ => None,
        })
        .collect();
    (discovered, service_accounts)
}

/// What a reconcile renders of the keys the operator reads for a policy.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Its discoveryUrl issuers' keys, by issuer.
    pub keys: DiscoveredKeys,
    /// Their status entries.
    pub statuses: Vec<DiscoveredIssuerStatus>,
    /// The cluster's service-account issuer, for an issuer whose clients need it.
    pub service_accounts: Option<ServiceAccountResolved>,
    /// What needs attention.
    pub problems: Vec<Problem>,
}

/// The status entry to write: `fresh`, except before this process's first read of the source
/// (`unread`), when the keys held are the ones `previous` already describes. Then it says
/// what it said, so that a restarted operator writes nothing until it has read something new
/// (a restart is not news; the read that follows says whatever changed).
fn unread_keeps(
    fresh: DiscoveredIssuerStatus,
    previous: Option<&DiscoveredIssuerStatus>,
    unread: bool,
) -> DiscoveredIssuerStatus {
    match previous {
        Some(previous)
            if unread
                && fresh.error.is_none()
                && previous.issuer == fresh.issuer
                && previous.key_ids == fresh.key_ids =>
        {
            previous.clone()
        }
        _ => fresh,
    }
}

/// How often the cluster's service-account issuer is read: the API server's key rotation is
/// seen within this.
pub const SERVICE_ACCOUNT_REFRESH: Duration = Duration::from_secs(60);

/// What a reconcile of `policy` renders for its discoveryUrl issuers and, when
/// `service_accounts` (an issuer some of whose clients authenticate with ServiceAccount
/// tokens), for the cluster's service-account issuer. The reader wakes the policy when what
/// it read changes.
pub fn step(
    policy: &AuthPolicy,
    ctx: &Context,
    config_map: Option<&ConfigMap>,
    service_accounts: bool,
    now: i64,
) -> Discovered {
    let spec = &policy.spec;
    let discovering: Vec<(&ExternalIssuer, Source)> = (spec.issuer.external.iter())
        .chain(&spec.additional_issuers)
        .filter_map(|e| {
            let url = e.discovery_url.clone()?;
            let ca_bundle = e.ca_bundle.clone();
            Some((e, Source::Url { url, ca_bundle }))
        })
        .collect();
    let me = ObjectRef::from_obj(policy);
    let mut sources: Vec<Source> = discovering.iter().map(|(_, s)| s.clone()).collect();
    if service_accounts {
        sources.push(Source::ApiServer);
    }
    // Policies deleted since are let go of too (a deletion is never reconciled).
    ctx.discovery
        .release(&me, &sources, |p| ctx.policies.get(p).is_some());
    let mut discovered = Discovered::default();
    if sources.is_empty() {
        return discovered;
    }
    let (held, held_service_accounts) = held(config_map);
    for (external, source) in discovering {
        let refresh = external
            .refresh_interval
            .get()
            .unwrap_or(Duration::from_secs(300));
        let known = ctx.discovery.observe(&source, refresh, me.clone(), now);
        let resolved = resolve(external, &known, held.get(&external.issuer));
        discovered
            .keys
            .insert(external.issuer.clone(), resolved.jwks);
        discovered.statuses.push(resolved.status);
        discovered.problems.extend(resolved.problem);
    }
    if service_accounts {
        let known = (ctx.discovery).observe(&Source::ApiServer, SERVICE_ACCOUNT_REFRESH, me, now);
        let mut resolved = resolve_service_accounts(&known, held_service_accounts.as_ref());
        let previous = (policy.status.as_ref()).and_then(|s| s.service_account_issuer.as_ref());
        resolved.status = unread_keeps(resolved.status, previous, known.read.is_none());
        discovered.problems.extend(resolved.problem.clone());
        discovered.service_accounts = Some(resolved);
    }
    discovered
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn a_restart_says_what_status_said_until_its_first_read() {
        let said = DiscoveredIssuerStatus {
            issuer: "https://kubernetes.default.svc".into(),
            jwks_uri: Some("https://10.0.0.1:6443/openid/v1/jwks".into()),
            key_ids: vec!["k1".into()],
            error: None,
        };
        let held = DiscoveredIssuerStatus {
            jwks_uri: None,
            ..said.clone()
        };
        assert_eq!(unread_keeps(held.clone(), Some(&said), true), said);
        // Once read, what was read; other keys, or an error, are news at once.
        assert_eq!(unread_keeps(held.clone(), Some(&said), false), held);
        let other = DiscoveredIssuerStatus {
            key_ids: vec!["k2".into()],
            ..held.clone()
        };
        assert_eq!(unread_keeps(other.clone(), Some(&said), true), other);
        let failing = DiscoveredIssuerStatus {
            error: Some("refused".into()),
            ..held.clone()
        };
        assert_eq!(unread_keeps(failing.clone(), Some(&said), true), failing);
        assert_eq!(unread_keeps(held.clone(), None, true), held);
    }

    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::discovery::Read;
    use crate::discovery::document::Document;

    const ISSUER: &str = "https://sso.example.com/realms/corp";

    fn external() -> ExternalIssuer {
        serde_json::from_value(json!({
            "issuer": ISSUER,
            "discoveryUrl": format!("{ISSUER}/.well-known/openid-configuration"),
            "algorithms": ["ES256"]
        }))
        .unwrap()
    }

    fn key(kid: &str) -> serde_json::Value {
        json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        })
    }

    fn read(issuer: &str, kids: &[&str]) -> Arc<Read> {
        let keys: Vec<_> = kids.iter().map(|k| key(k)).collect();
        Arc::new(Read {
            document: Document {
                issuer: issuer.to_owned(),
                jwks_uri: format!("{ISSUER}/certs"),
            },
            jwks: json!({ "keys": keys }).to_string().into(),
        })
    }

    fn jwks(kids: &[&str]) -> Jwks {
        let keys: Vec<_> = kids.iter().map(|k| key(k)).collect();
        serde_json::from_value(json!({ "keys": keys })).unwrap()
    }

    fn kids(resolved: &Resolved) -> Vec<&str> {
        (resolved.jwks.keys.iter())
            .filter_map(|k| k.kid.as_deref())
            .collect()
    }

    #[test]
    fn a_good_read_is_rendered_and_listed() {
        let known = Known {
            read: Some(read(ISSUER, &["k1", "k2"])),
            read_at: Some(100),
            error: None,
        };
        let resolved = resolve(&external(), &known, Some(&jwks(&["old"])));
        assert_eq!(kids(&resolved), ["k1", "k2"]);
        assert_eq!(resolved.status.key_ids, ["k1", "k2"]);
        assert_eq!(
            resolved.status.jwks_uri.as_deref(),
            Some("https://sso.example.com/realms/corp/certs")
        );
        assert_eq!(resolved.problem, None);
    }

    #[test]
    fn a_failing_read_keeps_the_last_good_keys_and_says_so() {
        let known = Known {
            read: Some(read(ISSUER, &["k1"])),
            read_at: Some(100),
            error: Some("reading …: timed out".to_owned()),
        };
        let resolved = resolve(&external(), &known, None);
        assert_eq!(kids(&resolved), ["k1"]);
        let problem = resolved.problem.unwrap();
        assert!(!problem.blocks_readiness(), "{problem}");
        assert_eq!(problem.reason(), "DiscoveryFailed");
        assert!(
            problem.to_string().contains("read at 1970-01-01T00:01:40Z"),
            "{problem}"
        );
        assert_eq!(
            resolved.status.error.as_deref(),
            Some("reading …: timed out")
        );
    }

    #[test]
    fn after_a_restart_the_keys_the_sidecars_hold_stay_until_a_read() {
        // Not read yet: what the sidecars hold is rendered again, and nothing is wrong.
        let pending = resolve(&external(), &Known::default(), Some(&jwks(&["held"])));
        assert_eq!(kids(&pending), ["held"]);
        assert_eq!(pending.problem, None);
        // The first read fails: they stay, and status says where they came from.
        let failing = Known {
            error: Some("reading …: connect".to_owned()),
            ..Known::default()
        };
        let resolved = resolve(&external(), &failing, Some(&jwks(&["held"])));
        assert_eq!(kids(&resolved), ["held"]);
        let problem = resolved.problem.unwrap();
        assert!(!problem.blocks_readiness());
        assert!(
            problem.to_string().contains("that the sidecars hold"),
            "{problem}"
        );
    }

    #[test]
    fn nothing_read_and_nothing_held_accepts_no_token_of_the_issuer() {
        let pending = resolve(&external(), &Known::default(), None);
        assert!(pending.jwks.keys.is_empty());
        let problem = pending.problem.unwrap();
        assert_eq!(problem.reason(), "DiscoveryPending");
        assert!(problem.blocks_readiness());
        let failing = Known {
            error: Some("status 404".to_owned()),
            ..Known::default()
        };
        let problem = resolve(&external(), &failing, None).problem.unwrap();
        assert_eq!(problem.reason(), "DiscoveryFailed");
        assert!(problem.blocks_readiness(), "{problem}");
    }

    #[test]
    fn a_document_of_another_issuer_never_lends_its_keys() {
        // The URL serves a document for another issuer (a squatted or mistyped URL): its keys
        // are not rendered under this issuer's name, the held ones stay.
        let known = Known {
            read: Some(read("https://evil.example", &["evil"])),
            read_at: Some(100),
            error: None,
        };
        let resolved = resolve(&external(), &known, Some(&jwks(&["held"])));
        assert_eq!(kids(&resolved), ["held"]);
        let problem = resolved.problem.unwrap();
        assert!(
            problem
                .to_string()
                .contains("describes issuer \"https://evil.example\"")
        );
        let none_held = resolve(&external(), &known, None);
        assert!(none_held.jwks.keys.is_empty());
        assert!(none_held.problem.unwrap().blocks_readiness());
    }

    #[test]
    fn an_issuer_publishing_no_usable_key_withdraws_the_held_ones() {
        // Its own document, a key set without an ES256 key: the issuer's word, so the keys
        // the sidecars hold (perhaps the one it withdrew) are not kept.
        let mut rsa_only = (*read(ISSUER, &[])).clone();
        rsa_only.jwks = json!({"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}]})
            .to_string()
            .into();
        let known = Known {
            read: Some(Arc::new(rsa_only)),
            read_at: Some(100),
            error: None,
        };
        let resolved = resolve(&external(), &known, Some(&jwks(&["withdrawn"])));
        assert!(resolved.jwks.keys.is_empty());
        assert!(resolved.problem.unwrap().blocks_readiness());
        // A body that is no key set at all is a failed read: the held keys stay.
        let mut garbage = (*read(ISSUER, &[])).clone();
        garbage.jwks = "<html>maintenance</html>".into();
        let known = Known {
            read: Some(Arc::new(garbage)),
            ..known
        };
        let resolved = resolve(&external(), &known, Some(&jwks(&["held"])));
        assert_eq!(kids(&resolved), ["held"]);
    }

    #[test]
    fn held_keys_that_no_longer_fit_the_algorithms_are_dropped() {
        let mut rs256 = external();
        rs256.algorithms = vec![scopegate_crds::v1alpha1::Algorithm::RS256];
        let resolved = resolve(&rs256, &Known::default(), Some(&jwks(&["ec"])));
        assert!(resolved.jwks.keys.is_empty());
        assert_eq!(resolved.problem.unwrap().reason(), "DiscoveryPending");
    }

    const CLUSTER: &str = "https://kubernetes.default.svc";

    fn rsa_key(kid: &str) -> serde_json::Value {
        // A 2048-bit modulus (RFC 7517 A.1's): the key must load as RS256.
        json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "e": "AQAB",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        })
    }

    fn cluster_read(issuer: &str, kids: &[&str]) -> Arc<Read> {
        let keys: Vec<_> = kids.iter().map(|k| rsa_key(k)).collect();
        Arc::new(Read {
            document: Document {
                issuer: issuer.to_owned(),
                jwks_uri: crate::discovery::API_SERVER_JWKS_PATH.to_owned(),
            },
            jwks: json!({ "keys": keys }).to_string().into(),
        })
    }

    fn held_cluster(issuer: &str, kids: &[&str]) -> ServiceAccountIssuer {
        let keys: Vec<_> = kids.iter().map(|k| rsa_key(k)).collect();
        ServiceAccountIssuer {
            issuer: issuer.to_owned(),
            jwks: serde_json::from_value(json!({ "keys": keys })).unwrap(),
            algorithms: vec!["RS256".into()],
        }
    }

    fn rendered_kids(resolved: &ServiceAccountResolved) -> Vec<String> {
        let rendered = resolved.rendered.as_ref().unwrap();
        (rendered.jwks.keys.iter())
            .filter_map(|k| k.kid.clone())
            .collect()
    }

    #[test]
    fn the_cluster_issuer_read_is_rendered_under_the_name_the_api_server_gives() {
        let known = Known {
            read: Some(cluster_read(CLUSTER, &["sa-1"])),
            read_at: Some(100),
            error: None,
        };
        let resolved = resolve_service_accounts(&known, Some(&held_cluster(CLUSTER, &["old"])));
        assert_eq!(resolved.rendered.as_ref().unwrap().issuer, CLUSTER);
        assert_eq!(rendered_kids(&resolved), ["sa-1"]);
        assert_eq!(resolved.status.key_ids, ["sa-1"]);
        assert_eq!(resolved.status.jwks_uri.as_deref(), Some("/openid/v1/jwks"));
        assert_eq!(resolved.problem, None);
    }

    #[test]
    fn a_failing_cluster_read_keeps_the_held_keys_and_never_blocks_the_policy() {
        let failing = Known {
            error: Some("reading the API server's /openid/v1/jwks: 403 Forbidden".to_owned()),
            ..Known::default()
        };
        let resolved = resolve_service_accounts(&failing, Some(&held_cluster(CLUSTER, &["held"])));
        assert_eq!(rendered_kids(&resolved), ["held"]);
        let problem = resolved.problem.unwrap();
        assert_eq!(problem.reason(), "ServiceAccountIssuerFailed");
        assert!(!problem.blocks_readiness(), "{problem}");
        assert!(problem.to_string().contains("403 Forbidden"), "{problem}");

        // Nothing read, nothing held: nothing rendered, ServiceAccount clients wait.
        let pending = resolve_service_accounts(&failing, None);
        assert_eq!(pending.rendered, None);
        let problem = pending.problem.unwrap();
        assert_eq!(problem.reason(), "ServiceAccountIssuerPending");
        assert!(!problem.blocks_readiness());
        assert!(problem.to_string().contains("403 Forbidden"), "{problem}");
    }

    #[test]
    fn keys_held_for_another_cluster_issuer_are_not_this_ones() {
        // The API server now names another issuer: keys held under the old name never
        // vouch for tokens of the new one.
        let known = Known {
            read: Some(cluster_read("https://new.cluster.example", &[])),
            read_at: Some(100),
            error: Some("reading the API server's /openid/v1/jwks: timed out".to_owned()),
        };
        let resolved = resolve_service_accounts(&known, Some(&held_cluster(CLUSTER, &["held"])));
        assert_eq!(
            resolved.rendered.as_ref().unwrap().issuer,
            "https://new.cluster.example"
        );
        assert!(rendered_kids(&resolved).is_empty());
        assert_eq!(
            resolved.problem.unwrap().reason(),
            "ServiceAccountIssuerPending"
        );
    }
}
