//! What the pods and Services of a namespace say about a policy: how many pods it selects,
//! which of them run without the sidecar, whether another policy selects the same pods, and
//! whether a Service sends traffic to the app's port around the sidecar. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use scopegate_crds::v1alpha1::AuthPolicy;

use super::status::Problem;
use crate::webhook::inject::{INJECTED_ANNOTATION, selects};

/// How many pod names a status lists.
const MAX_NAMES: usize = 10;

/// Pod counts for the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSummary {
    /// Pods the policy selects.
    pub selected: i32,
    /// Of those, pods carrying the sidecar.
    pub injected: i32,
    /// Up to ten selected pods without it.
    pub uninjected: Vec<String>,
}

/// Looks at the pods and Services of the policy's namespace.
pub fn observe(
    policy: &AuthPolicy,
    others: &[&AuthPolicy],
    pods: &[&PartialObjectMeta<Pod>],
    services: &[&Service],
) -> (PodSummary, Vec<Problem>) {
    let name = policy.name_any();
    let selected: Vec<&&PartialObjectMeta<Pod>> = pods
        .iter()
        .filter(|p| selects(&policy.spec.selector, p.labels()))
        .collect();
    let mut summary = PodSummary {
        selected: i32::try_from(selected.len()).unwrap_or(i32::MAX),
        ..Default::default()
    };
    let mut without = Vec::new();
    for pod in &selected {
        if pod.annotations().get(INJECTED_ANNOTATION) == Some(&name) {
            summary.injected += 1;
        } else {
            without.push(pod.name_any());
        }
    }
    without.sort();
    let mut problems = Vec::new();
    if !without.is_empty() {
        problems.push(Problem::PodsWithoutSidecar(
            without.len(),
            without.iter().take(MAX_NAMES).cloned().collect(),
        ));
    }
    summary.uninjected = without.into_iter().take(MAX_NAMES).collect();

    let mut overlaps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for other in others.iter().filter(|o| o.name_any() != name) {
        for pod in &selected {
            if selects(&other.spec.selector, pod.labels()) {
                overlaps
                    .entry(other.name_any())
                    .or_default()
                    .push(pod.name_any());
            }
        }
    }
    for (other, mut shared) in overlaps {
        shared.sort();
        shared.truncate(MAX_NAMES);
        problems.push(Problem::Overlap(other, shared));
    }

    let upstream = policy.spec.upstream.port;
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let fronts_selected = selected
            .iter()
            .any(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)));
        let bypass = spec.ports.iter().flatten().any(|port| {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            target == IntOrString::Int(upstream)
        });
        if fronts_selected && bypass {
            problems.push(Problem::ServiceBypass(
                service.name_any(),
                upstream,
                policy.spec.listen.port,
            ));
        }
    }
    (summary, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, app: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  issuer: {{policyRef: {{name: auth}}}}\n  audiences: [x]\n  upstream: {{port: 8080}}\n"
        ))
        .unwrap()
    }

    fn pod(name: &str, app: &str, injected_by: Option<&str>) -> PartialObjectMeta<Pod> {
        let mut meta = PartialObjectMeta::<Pod>::default();
        meta.metadata.name = Some(name.into());
        meta.metadata.labels = Some(BTreeMap::from([("app".into(), app.into())]));
        if let Some(p) = injected_by {
            meta.metadata.annotations =
                Some(BTreeMap::from([(INJECTED_ANNOTATION.into(), p.into())]));
        }
        meta
    }

    fn service(name: &str, app: &str, target: i32) -> Service {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {app}}}\n  ports: [{{port: 80, targetPort: {target}}}]\n"
        ))
        .unwrap()
    }

    #[test]
    fn counts_selected_and_injected_pods_and_names_the_rest() {
        let p = policy("orders", "orders");
        let pods = [
            pod("a", "orders", Some("orders")),
            pod("b", "orders", None),
            pod("c", "other", None),
        ];
        let refs: Vec<_> = pods.iter().collect();
        let (summary, problems) = observe(&p, &[&p], &refs, &[]);
        assert_eq!(
            summary,
            PodSummary {
                selected: 2,
                injected: 1,
                uninjected: vec!["b".into()]
            }
        );
        assert_eq!(problems, [Problem::PodsWithoutSidecar(1, vec!["b".into()])]);
        assert!(
            problems[0]
                .to_string()
                .contains("1 selected pod runs without the sidecar"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn overlap_names_the_other_policy_and_the_pods() {
        let (p, q) = (policy("orders", "orders"), policy("orders2", "orders"));
        let pods = [pod("a", "orders", Some("orders"))];
        let refs: Vec<_> = pods.iter().collect();
        let (_, problems) = observe(&p, &[&p, &q], &refs, &[]);
        assert_eq!(
            problems,
            [Problem::Overlap("orders2".into(), vec!["a".into()])]
        );
    }

    #[test]
    fn a_service_targeting_the_app_port_is_a_bypass() {
        let p = policy("orders", "orders");
        let pods = [pod("a", "orders", Some("orders"))];
        let refs: Vec<_> = pods.iter().collect();
        let (bad, good) = (
            service("direct", "orders", 8080),
            service("safe", "orders", 15080),
        );
        let (_, problems) = observe(&p, &[&p], &refs, &[&bad, &good]);
        assert_eq!(
            problems,
            [Problem::ServiceBypass("direct".into(), 8080, 15080)]
        );
    }
}
