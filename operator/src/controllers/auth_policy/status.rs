//! Pure computation of an AuthPolicy's status from what the reconcile observed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use scopegate_core::keys::{KeyState, ManagedKey};
use scopegate_core::policy::rule_label;
use scopegate_crds::v1alpha1::{
    AuthPolicySpec, AuthPolicyStatus, Enforcement, KeyStatus, RenderedObjects,
};

use super::problem::Problem;
use crate::conditions::{Conclusion, kstatus, merge};

/// Which parts of a policy run in DryRun.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DryRunScope {
    /// Nothing: every refusal is enforced.
    #[default]
    None,
    /// `spec.enforcement` is DryRun; these rules (labels) enforce nonetheless.
    Policy(Vec<String>),
    /// These rules (labels) are in DryRun, the rest enforces.
    Rules(Vec<String>),
}

impl DryRunScope {
    /// What a spec runs in DryRun. Public rules refuse nothing and are left out.
    pub fn of(spec: &AuthPolicySpec) -> Self {
        let with = |mode: Enforcement| -> Vec<String> {
            spec.rules
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.public && r.enforcement == Some(mode))
                .map(|(i, r)| rule_label(r.name.as_deref(), Some(i)))
                .collect()
        };
        match spec.enforcement {
            Enforcement::DryRun => DryRunScope::Policy(with(Enforcement::Enforce)),
            Enforcement::Enforce => match with(Enforcement::DryRun) {
                rules if rules.is_empty() => DryRunScope::None,
                rules => DryRunScope::Rules(rules),
            },
        }
    }

    /// The `Enforcing` condition.
    fn conclusion(&self) -> Conclusion {
        match self {
            DryRunScope::None => Conclusion::yes(
                "Enforcing",
                "Enforced",
                "every rule and the default action are enforced",
            ),
            DryRunScope::Policy(enforced) => Conclusion::no(
                "Enforcing",
                "DryRun",
                format!(
                    "spec.enforcement is DryRun: the sidecars forward requests they would refuse and count them in scopegate_decisions_total{{enforced=\"false\"}}{}",
                    if enforced.is_empty() {
                        String::new()
                    } else {
                        format!("; still enforced: {}", enforced.join(", "))
                    }
                ),
            ),
            DryRunScope::Rules(rules) => Conclusion::no(
                "Enforcing",
                "RulesInDryRun",
                format!(
                    "rules in DryRun (requests they would refuse are forwarded and counted): {}",
                    rules.join(", ")
                ),
            ),
        }
    }
}

/// What a reconcile observed.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Self, PolicyRef or External.
    pub mode: &'static str,
    /// Problems found.
    pub problems: Vec<Problem>,
    /// The issuer's keys (self issuers) at `now`.
    pub keys: Option<Vec<ManagedKey>>,
    /// Number of keys trusted (policyRef and self).
    pub trusted_keys: usize,
    /// When the next key transition is due.
    pub next_transition: Option<i64>,
    /// Objects rendered.
    pub rendered: RenderedObjects,
    /// The issuer keeps state in memory.
    pub memory_store: bool,
    /// The pods it selects.
    pub pods: super::pods::PodSummary,
    /// Upstream identity providers (self issuers).
    pub upstreams: Vec<scopegate_crds::v1alpha1::UpstreamStatus>,
    /// The signing keys could not be read: status keeps the keys it listed.
    pub keys_unreadable: bool,
    /// A key written and published, not yet seen in these verifiers' key sets.
    pub publishing: Option<(String, Vec<String>)>,
    /// The rotate-annotation value acted on so far.
    pub handled_rotation: Option<String>,
    /// What runs in DryRun.
    pub dry_run: DryRunScope,
    /// What keeps the app's port out of reach ([`super::inbound::protection`]).
    pub inbound: &'static str,
    /// The discoveryUrl issuers: what was read of each.
    pub discovered: Vec<scopegate_crds::v1alpha1::DiscoveredIssuerStatus>,
    /// Whether a registered client authenticates with ServiceAccount tokens.
    pub service_account_clients: bool,
    /// What was read of the cluster's service-account issuer, when a client needs it.
    pub service_account_issuer: Option<scopegate_crds::v1alpha1::DiscoveredIssuerStatus>,
}

/// `UpstreamsReady`: every upstream rendered, or which are not and why (the first one's
/// reason is the condition's).
fn upstreams_ready(upstreams: &[scopegate_crds::v1alpha1::UpstreamStatus]) -> Conclusion {
    let not_ready: Vec<_> = upstreams.iter().filter(|u| !u.ready).collect();
    let Some(first) = not_ready.first() else {
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        return Conclusion::yes(
            "UpstreamsReady",
            "Rendered",
            format!(
                "upstreams rendered: {} (each provider's own health is in the issuer pods' /readyz)",
                names.join(", ")
            ),
        );
    };
    let reason_of = |u: &scopegate_crds::v1alpha1::UpstreamStatus| match u
        .reason
        .as_deref()
        .and_then(|r| r.split(':').next())
    {
        Some("SecretMissing") => "SecretMissing",
        Some("CaBundleInvalid") => "CaBundleInvalid",
        Some("PublicUrlIgnored") => "PublicUrlIgnored",
        _ => "NotReady",
    };
    let message = not_ready
        .iter()
        .map(|u| format!("{}: {}", u.name, u.reason.as_deref().unwrap_or("not ready")))
        .collect::<Vec<_>>()
        .join("; ");
    Conclusion::no("UpstreamsReady", reason_of(first), message)
}

fn publishing_message(kid: &str, waiting: &[String]) -> String {
    if waiting.is_empty() {
        format!(
            "key {kid} is published; it signs propagation after every verifier was seen to hold it"
        )
    } else {
        format!(
            "key {kid} is published and signs nothing until these hold it: {}",
            waiting.join(", ")
        )
    }
}

fn time(unix: i64) -> Time {
    Time(Timestamp::from_second(unix).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Computes the status.
pub fn compute(
    previous: Option<&AuthPolicyStatus>,
    observation: &Observation,
    generation: Option<i64>,
    now: i64,
) -> AuthPolicyStatus {
    let signer = observation.keys.as_ref().and_then(|keys| {
        keys.iter()
            .filter(|k| k.state(now) == KeyState::Active)
            .max_by_key(|k| k.activates_at)
    });
    let mut conclusions: Vec<Conclusion> =
        keys_ready(observation, signer, now).into_iter().collect();
    let ready = ready(observation, signer.is_some());
    let in_flight = matches!(
        ready.reason,
        "KeyPublishing" | "NoActiveKey" | "PolicyRefKeysPending" | "DiscoveryPending"
    );
    let kstatus = kstatus(&ready, in_flight);
    conclusions.push(ready);
    conclusions.extend(kstatus);
    conclusions.push(degraded(observation));
    if !observation.upstreams.is_empty() {
        conclusions.push(upstreams_ready(&observation.upstreams));
    }
    conclusions.push(observation.dry_run.conclusion());
    conclusions.extend(state_persistent(observation));

    let existing = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut keys = key_statuses(observation, now);
    let mut active_kid = signer.map(|k| k.kid.clone());
    if observation.keys.is_none()
        && observation.mode == "Self"
        && let Some(previous) = previous
    {
        // Unreadable or not served: what the keys were is the best record left (and what a
        // recovery reads).
        keys.clone_from(&previous.keys);
        active_kid.clone_from(&previous.active_kid);
    }
    AuthPolicyStatus {
        observed_generation: generation,
        conditions: merge(existing, &conclusions, generation, &time(now)),
        issuer_mode: Some(observation.mode.to_owned()),
        active_kid,
        keys,
        next_rotation: observation.next_transition.map(time),
        handled_rotation: observation.handled_rotation.clone(),
        upstreams: observation.upstreams.clone(),
        inbound_protection: (!observation.inbound.is_empty())
            .then(|| observation.inbound.to_owned()),
        pods: Some(format!(
            "{}/{}",
            observation.pods.selected, observation.pods.injected
        )),
        selected_pods: Some(observation.pods.selected),
        injected_pods: Some(observation.pods.injected),
        uninjected_pods: observation.pods.uninjected.clone(),
        rendered: Some(observation.rendered.clone()),
        discovered_issuers: observation.discovered.clone(),
        service_account_issuer: observation.service_account_issuer.clone(),
    }
}

/// `KeysReady`: for an issuer, which key signs and which is next (or why none may sign);
/// for a `policyRef`, whether any key of the issuer is trusted. None for other policies.
fn keys_ready(
    observation: &Observation,
    signer: Option<&ManagedKey>,
    now: i64,
) -> Option<Conclusion> {
    let Some(keys) = &observation.keys else {
        if observation.keys_unreadable {
            return Some(Conclusion::no(
                "KeysReady",
                "SigningKeysCorrupt",
                "the signing-keys document cannot be read; the published keys stay",
            ));
        }
        if observation.mode != "PolicyRef" {
            return None;
        }
        return Some(if observation.trusted_keys > 0 {
            Conclusion::yes(
                "KeysReady",
                "KeysTrusted",
                format!(
                    "trusting {} published keys of the issuer",
                    observation.trusted_keys
                ),
            )
        } else {
            Conclusion::no(
                "KeysReady",
                "NoTrustedKeys",
                "no key of the issuer is trusted yet",
            )
        });
    };
    Some(match signer {
        Some(k) => {
            let next = keys.iter().find(|n| n.state(now) == KeyState::Next);
            let tail = next.map_or(String::new(), |n| match &observation.publishing {
                Some((kid, waiting)) if *kid == n.kid => {
                    format!("; next {}", publishing_message(kid, waiting))
                }
                _ => format!("; next key {} signs from {}", n.kid, time(n.activates_at).0),
            });
            Conclusion::yes(
                "KeysReady",
                "KeyActive",
                format!(
                    "key {} ({}) signs until {}{tail}",
                    k.kid,
                    k.alg,
                    time(k.signs_until).0
                ),
            )
        }
        None => match &observation.publishing {
            Some((kid, waiting)) => Conclusion::no(
                "KeysReady",
                "KeyPublishing",
                publishing_message(kid, waiting),
            ),
            None => Conclusion::no("KeysReady", "NoActiveKey", "no key may sign yet"),
        },
    })
}

/// `Ready`: the first problem that blocks it, an issuer none of whose keys may sign yet, or
/// the rendered sidecar config.
fn ready(observation: &Observation, signing: bool) -> Conclusion {
    let blocking = observation.problems.iter().find(|p| p.blocks_readiness());
    match blocking {
        Some(problem) => Conclusion::no("Ready", problem.reason(), problem.to_string()),
        None if observation.keys.is_some() && !signing => match &observation.publishing {
            Some((kid, waiting)) => {
                Conclusion::no("Ready", "KeyPublishing", publishing_message(kid, waiting))
            }
            None => Conclusion::no("Ready", "NoActiveKey", "rendered, but no key may sign yet"),
        },
        None => Conclusion::yes(
            "Ready",
            "Rendered",
            format!(
                "sidecar config {} rendered",
                observation
                    .rendered
                    .sidecar_config
                    .as_deref()
                    .unwrap_or_default()
            ),
        ),
    }
}

/// `Degraded`: every problem, the first one's reason.
fn degraded(observation: &Observation) -> Conclusion {
    if observation.problems.is_empty() {
        return Conclusion::no("Degraded", "AsExpected", "nothing needs attention");
    }
    let message = observation
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Conclusion::yes("Degraded", observation.problems[0].reason(), message)
}

/// `StatePersistent`, for an issuer: whether its state survives a restart.
fn state_persistent(observation: &Observation) -> Option<Conclusion> {
    (observation.mode == "Self").then(|| {
        if observation.memory_store {
            Conclusion::no(
                "StatePersistent",
                "MemoryStore",
                "codes, refresh families and revocations live in the issuer's memory: a restart forgets them; use store type Redis to keep them",
            )
        } else {
            Conclusion::yes("StatePersistent", "Redis", "issuer state is kept in Redis")
        }
    })
}

/// The keys as status lists them.
fn key_statuses(observation: &Observation, now: i64) -> Vec<KeyStatus> {
    observation
        .keys
        .iter()
        .flatten()
        .map(|k| KeyStatus {
            kid: k.kid.clone(),
            state: if k.pending {
                "publishing".to_owned()
            } else {
                k.state(now).as_str().to_owned()
            },
            published_at: time(k.published_at),
            activates_at: time(k.activates_at),
            signs_until: time(k.signs_until),
            removed_after: time(k.removed_after),
            public_only: !k.has_private_key(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, activates: i64, until: i64) -> ManagedKey {
        ManagedKey {
            kid: kid.into(),
            alg: "ES256".into(),
            published_at: activates - 100,
            activates_at: activates,
            signs_until: until,
            removed_after: until + 100,
            private_key: "x".into(),
            public_jwk: None,
            pending: false,
        }
    }

    fn condition<'a>(
        status: &'a AuthPolicyStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn issuer_with_an_active_key_is_ready_and_says_which() {
        let observation = Observation {
            mode: "Self",
            keys: Some(vec![key("k1", 0, 1000), key("k2", 1000, 2000)]),
            memory_store: true,
            rendered: RenderedObjects {
                sidecar_config: Some("auth-sidecar".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let status = compute(None, &observation, Some(2), 500);
        assert_eq!(status.active_kid.as_deref(), Some("k1"));
        assert_eq!(condition(&status, "Ready").status, "True");
        assert!(
            condition(&status, "KeysReady")
                .message
                .contains("next key k2")
        );
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!(condition(&status, "StatePersistent").reason, "MemoryStore");
        assert_eq!(status.keys.len(), 2);
        assert_eq!(status.keys[1].state, "next");
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn missing_policy_ref_is_not_ready_and_degraded_with_a_sentence() {
        let observation = Observation {
            mode: "PolicyRef",
            problems: vec![Problem::PolicyRefNotFound("shop/auth".into())],
            ..Default::default()
        };
        let status = compute(None, &observation, Some(1), 0);
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PolicyRefNotFound")
        );
        assert!(ready.message.starts_with("policyRef shop/auth not found"));
        assert_eq!(condition(&status, "Degraded").status, "True");
        assert_eq!(condition(&status, "KeysReady").status, "False");
    }

    #[test]
    fn upstreams_ready_names_each_upstream_that_is_not_and_why() {
        let upstream =
            |name: &str, reason: Option<&str>| scopegate_crds::v1alpha1::UpstreamStatus {
                name: name.into(),
                callback_url: format!("https://a/oauth2/upstream/{name}/callback"),
                ready: reason.is_none(),
                reason: reason.map(str::to_owned),
            };
        let observation = Observation {
            mode: "Self",
            upstreams: vec![upstream("google", None), upstream("github", None)],
            ..Default::default()
        };
        let status = compute(None, &observation, Some(1), 1_000);
        let ready = condition(&status, "UpstreamsReady");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Rendered")
        );
        assert!(
            ready.message.contains("google, github"),
            "{}",
            ready.message
        );

        let observation = Observation {
            upstreams: vec![
                upstream("google", None),
                upstream("corp", Some("CaBundleInvalid: caBundle holds ...")),
                upstream("github", Some("SecretMissing: key k of Secret s not found")),
            ],
            ..observation
        };
        let status = compute(None, &observation, Some(1), 1_000);
        let ready = condition(&status, "UpstreamsReady");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "CaBundleInvalid")
        );
        assert_eq!(
            ready.message,
            "corp: CaBundleInvalid: caBundle holds ...; github: SecretMissing: key k of Secret s not found"
        );
        // No upstreams, no condition.
        let status = compute(
            None,
            &Observation {
                mode: "Self",
                ..Default::default()
            },
            Some(1),
            1_000,
        );
        assert!(
            !status
                .conditions
                .iter()
                .any(|c| c.type_ == "UpstreamsReady")
        );
    }

    #[test]
    fn a_key_waiting_for_publication_and_a_lost_key_say_so() {
        let mut pending = key("k2", 1000, 2000);
        pending.pending = true;
        let mut lost = key("k0", 0, 450);
        lost.private_key.clear();
        let observation = Observation {
            mode: "Self",
            keys: Some(vec![lost, pending]),
            publishing: Some(("k2".into(), vec!["ConfigMap b/orders-sidecar".into()])),
            problems: vec![Problem::KeysLost(vec!["k0".into()])],
            handled_rotation: Some("3".into()),
            ..Default::default()
        };
        let status = compute(None, &observation, Some(1), 500);
        let keys_ready = condition(&status, "KeysReady");
        assert_eq!(keys_ready.reason, "KeyPublishing");
        assert!(
            keys_ready.message.contains("ConfigMap b/orders-sidecar"),
            "{}",
            keys_ready.message
        );
        assert_eq!(condition(&status, "Ready").reason, "KeyPublishing");
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "SigningKeysLost")
        );
        assert_eq!(status.keys[0].state, "retiring");
        assert!(status.keys[0].public_only);
        assert_eq!(status.keys[1].state, "publishing");
        assert!(!status.keys[1].public_only);
        assert_eq!(status.handled_rotation.as_deref(), Some("3"));
    }

    #[test]
    fn unreadable_keys_keep_what_status_listed_and_block_readiness() {
        let before = compute(
            None,
            &Observation {
                mode: "Self",
                keys: Some(vec![key("k1", 0, 1000)]),
                ..Default::default()
            },
            Some(1),
            10,
        );
        let observation = Observation {
            mode: "Self",
            keys: None,
            keys_unreadable: true,
            problems: vec![Problem::SigningKeysCorrupt(
                "Secret a/auth-signing-keys".into(),
                "cut short at line 1 column 9".into(),
            )],
            ..Default::default()
        };
        let status = compute(Some(&before), &observation, Some(1), 20);
        assert_eq!(status.keys, before.keys);
        assert_eq!(status.active_kid.as_deref(), Some("k1"));
        assert_eq!(condition(&status, "KeysReady").reason, "SigningKeysCorrupt");
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SigningKeysCorrupt")
        );
        assert!(
            ready.message.contains("delete the Secret"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn enforcing_says_what_runs_in_dry_run() {
        let mut spec: AuthPolicySpec = serde_json::from_value(serde_json::json!({
            "selector": {},
            "issuer": {"external": {"issuer": "https://i", "jwksUri": "https://i/jwks", "algorithms": ["ES256"]}},
            "upstream": {"port": 8080},
            "rules": [
                {"name": "items", "paths": ["/items/**"], "require": ["read"]},
                {"paths": ["/admin/**"], "require": ["admin"]},
                {"name": "health", "paths": ["/healthz"], "public": true}
            ]
        }))
        .unwrap();
        let enforcing = |spec: &AuthPolicySpec| {
            let observation = Observation {
                mode: "External",
                dry_run: DryRunScope::of(spec),
                ..Observation::default()
            };
            condition(&compute(None, &observation, Some(1), 1000), "Enforcing").clone()
        };
        let c = enforcing(&spec);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Enforced"));

        spec.rules[1].enforcement = Some(Enforcement::DryRun);
        let c = enforcing(&spec);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "RulesInDryRun")
        );
        assert!(c.message.ends_with(": rules[1]"), "{}", c.message);

        spec.enforcement = Enforcement::DryRun;
        spec.rules[0].enforcement = Some(Enforcement::Enforce);
        let c = enforcing(&spec);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "DryRun"));
        assert!(
            c.message.ends_with("still enforced: items"),
            "{}",
            c.message
        );
    }

    #[test]
    fn kstatus_reads_failed_for_a_spec_problem_and_in_progress_for_work_in_flight() {
        let of = |status: &AuthPolicyStatus, type_: &str| {
            let c = condition(status, type_);
            (c.status.clone(), c.reason.clone())
        };
        let broken = compute(
            None,
            &Observation {
                mode: "PolicyRef",
                problems: vec![Problem::ConfigRefused(
                    "headers: \"host\" is not a usable header name".into(),
                )],
                ..Default::default()
            },
            Some(1),
            0,
        );
        assert_eq!(
            of(&broken, "Ready"),
            ("False".into(), "InvalidConfig".into())
        );
        assert_eq!(
            of(&broken, "Stalled"),
            ("True".into(), "InvalidConfig".into())
        );
        assert_eq!(of(&broken, "Reconciling").0, "False");
        assert!(
            condition(&broken, "Stalled")
                .message
                .contains("the last good config stays"),
            "{}",
            condition(&broken, "Stalled").message
        );

        let pending = compute(
            None,
            &Observation {
                mode: "PolicyRef",
                problems: vec![Problem::PolicyRefKeysPending("shop/auth".into())],
                ..Default::default()
            },
            Some(1),
            0,
        );
        assert_eq!(
            of(&pending, "Reconciling"),
            ("True".into(), "PolicyRefKeysPending".into())
        );
        assert_eq!(of(&pending, "Stalled").0, "False");

        let ready = compute(
            None,
            &Observation {
                mode: "External",
                ..Default::default()
            },
            Some(1),
            0,
        );
        assert_eq!(of(&ready, "Ready").0, "True");
        assert_eq!(of(&ready, "Reconciling").0, "False");
        assert_eq!(of(&ready, "Stalled").0, "False");
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_times() {
        let observation = Observation {
            mode: "External",
            ..Default::default()
        };
        let first = compute(None, &observation, Some(1), 100);
        let second = compute(Some(&first), &observation, Some(1), 900);
        assert_eq!(first, second);
    }
}
