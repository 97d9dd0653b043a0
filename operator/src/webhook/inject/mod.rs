//! Pure sidecar injection: given a pod and the AuthPolicies of its namespace, decide whether
//! to admit it unchanged, inject the sidecar ([`sidecar`]), or refuse it (a pod that brings
//! injection's marks must carry exactly what the webhook renders: [`verify`]) — and build the
//! JSON patch.

pub mod sidecar;
pub mod verify;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use scopegate_crds::v1alpha1::AuthPolicy;

use crate::names::INJECTED_ANNOTATION;
pub use sidecar::{InjectionSettings, TokenAudiences};
use sidecar::{VOLUME_PREFIX, inject, own_container};
use verify::verify_injected;

/// The injector's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit the pod as it is.
    Unchanged,
    /// Admit it with this JSON patch (RFC 6902) applied.
    Patch(Vec<serde_json::Value>),
    /// Refuse it, saying why.
    Deny(String),
}

/// Whether `selector` selects `labels` (matchLabels and matchExpressions).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// The order in which policies claim a pod several of them select: the oldest first (by
/// creation time, then name, so that the order is total).
pub fn seniority(policy: &AuthPolicy) -> (Option<k8s_openapi::jiff::Timestamp>, String) {
    (
        policy.metadata.creation_timestamp.as_ref().map(|t| t.0),
        policy.name_any(),
    )
}

/// Decides what to do with `pod` given every AuthPolicy of its namespace; `token_audiences`
/// gives the issuer URLs of a policy's egress and sessions clients (the audiences of the
/// sidecar's ServiceAccount tokens), as far as they resolve.
pub fn decide(
    pod: &Pod,
    policies: &[&AuthPolicy],
    settings: &InjectionSettings,
    token_audiences: &dyn Fn(&AuthPolicy) -> TokenAudiences,
) -> Decision {
    let labels = pod.labels();
    let selecting: Vec<&AuthPolicy> = policies
        .iter()
        .copied()
        .filter(|p| selects(&p.spec.selector, labels))
        .collect();
    // When several select it, the oldest keeps it (the others report a Conflict): a newer
    // policy, however wide its selector, never takes pods from one that was there first nor
    // blocks their creation.
    let Some(policy) = selecting.into_iter().min_by_key(|p| seniority(p)) else {
        return Decision::Unchanged;
    };
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if policy.spec.egress.is_some() && host_network {
        // Its loopback is the node's: every process of the node could use the client's tokens.
        return Decision::Deny(format!(
            "pod refused: AuthPolicy {} declares egress, whose port listens on the pod's loopback, and this pod uses hostNetwork, whose loopback is the node's: any process on the node could call the targets with the client's tokens; run it without hostNetwork",
            policy.name_any()
        ));
    }
    let audiences = token_audiences(policy);
    if carries_marks(pod) {
        return match verify_injected(pod, policy, settings, &audiences) {
            Ok(()) => Decision::Unchanged,
            Err(why) => Decision::Deny(why),
        };
    }
    if let Some(why) = borrows_our_volumes(pod) {
        return Decision::Deny(format!(
            "pod refused: {why}; the scopegate-* volumes are the webhook's to add and mount (the mint socket goes only into the containers AuthPolicy {} names in issuer.self.mintSocketContainers)",
            policy.name_any()
        ));
    }
    let mut mutated = pod.clone();
    inject(&mut mutated, policy, settings, &audiences);
    let original = serde_json::to_value(pod).unwrap_or_default();
    let changed = serde_json::to_value(&mutated).unwrap_or_default();
    Decision::Patch(diff(&original, &changed))
}

/// Whether the pod carries anything only the injection should write: a container with one of
/// its names, or its annotation.
fn carries_marks(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let containers = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    containers.map(|c| c.name.as_str()).any(own_container)
        || pod.annotations().contains_key(INJECTED_ANNOTATION)
}

/// Whether a pod not yet injected names a volume only injection adds, in its volumes or in a
/// container's mounts (a mount of `scopegate-mint` would become valid once the webhook adds
/// the volume, handing that container the mint socket). Says which.
fn borrows_our_volumes(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(VOLUME_PREFIX))
    {
        return Some(format!("it declares the volume {}", volume.name));
    }
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find_map(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name.starts_with(VOLUME_PREFIX))
                .map(|m| format!("its {} container mounts the volume {}", c.name, m.name))
        })
}

/// Top-level JSON patch from `before` to `after` for the fields injection touches.
fn diff(before: &serde_json::Value, after: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut ops = Vec::new();
    for path in [
        "/metadata/annotations",
        "/spec/initContainers",
        "/spec/containers",
        "/spec/volumes",
    ] {
        let (old, new) = (before.pointer(path), after.pointer(path));
        if old != new {
            let op = if old.is_some() { "replace" } else { "add" };
            ops.push(serde_json::json!({"op": op, "path": path, "value": new}));
        }
    }
    ops
}

#[cfg(test)]
mod tests;
