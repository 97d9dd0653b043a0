//! What the pods and Services of a namespace say about a policy: how many pods it selects,
//! which of them run without the sidecar, whether another policy selects the same pods, and
//! whether a Service sends traffic to the app's port around the sidecar. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use scopegate_crds::v1alpha1::AuthPolicy;

use super::problem::Problem;
use crate::names::{INJECTED_ANNOTATION, SIDECAR_NAME};
use crate::webhook::inject::{selects, seniority};

/// What the operator keeps of a pod in its cache: name, labels and annotations, and each
/// container's name, image and named ports (to resolve a Service's named targetPort and to see
/// the sidecar). The rest of a pod spec can be large and nothing reads it.
pub fn slim(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        labels: meta.labels,
        annotations: meta.annotations.map(|a| {
            a.into_iter()
                .filter(|(k, _)| k == INJECTED_ANNOTATION)
                .collect()
        }),
        resource_version: meta.resource_version,
        uid: meta.uid,
        ..ObjectMeta::default()
    };
    let slim_container = |c: Container| Container {
        name: c.name,
        image: c.image,
        ports: c.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ContainerPort {
                    name: p.name,
                    container_port: p.container_port,
                    protocol: p.protocol,
                    ..ContainerPort::default()
                })
                .collect()
        }),
        ..Container::default()
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        init_containers: spec
            .init_containers
            .map(|c| c.into_iter().map(slim_container).collect()),
        containers: spec.containers.into_iter().map(slim_container).collect(),
        ..PodSpec::default()
    });
    pod.status = None;
}

/// Whether a pod carries the sidecar of `policy`: the webhook's annotation naming it and a
/// container of the sidecar's name (the webhook refuses pods that forge either).
fn injected(pod: &Pod, policy: &str) -> bool {
    let has_sidecar = pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .any(|c| c.name == SIDECAR_NAME)
    });
    has_sidecar
        && pod
            .annotations()
            .get(INJECTED_ANNOTATION)
            .map(String::as_str)
            == Some(policy)
}

/// The container port a Service's target port reaches in `pod` (a named port resolved against
/// the pod's containers, as kube-proxy does); `None` when a name matches no port.
fn target_port(target: &IntOrString, pod: &Pod) -> Option<i32> {
    match target {
        IntOrString::Int(port) => Some(*port),
        IntOrString::String(name) => pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

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

/// The pods `policy` selects and keeps; and, by policy, the pods an older policy also selects:
/// those are the older one's (the webhook injects its sidecar), so this one reports a
/// Conflict for them and counts only the rest.
fn claimed<'a>(
    policy: &AuthPolicy,
    others: &[&AuthPolicy],
    pods: &[&'a Pod],
) -> (Vec<&'a Pod>, BTreeMap<String, Vec<String>>) {
    let name = policy.name_any();
    let mine = seniority(policy);
    let older: Vec<&&AuthPolicy> = others
        .iter()
        .filter(|o| o.name_any() != name && seniority(o) < mine)
        .collect();
    let mut conflicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let selected: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| selects(&policy.spec.selector, p.labels()))
        .filter(|p| {
            let owner = older
                .iter()
                .filter(|o| selects(&o.spec.selector, p.labels()))
                .min_by_key(|o| seniority(o));
            if let Some(owner) = owner {
                conflicts
                    .entry(owner.name_any())
                    .or_default()
                    .push(p.name_any());
            }
            owner.is_none()
        })
        .collect();
    (selected, conflicts)
}

/// Services that send traffic for the selected pods to the app's own port, around the
/// sidecar.
fn bypasses(policy: &AuthPolicy, selected: &[&Pod], services: &[&Service]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let upstream = policy.spec.upstream.port;
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let fronted = selected
            .iter()
            .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)));
        let targets: Vec<IntOrString> = spec
            .ports
            .iter()
            .flatten()
            .map(|port| {
                port.target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port))
            })
            .collect();
        let bypass = fronted
            .flat_map(|pod| targets.iter().map(move |t| target_port(t, pod)))
            .any(|port| port == Some(upstream));
        if bypass {
            problems.push(Problem::ServiceBypass(
                service.name_any(),
                upstream,
                policy.spec.listen.port,
            ));
        }
    }
    problems
}

/// Looks at the pods and Services of the policy's namespace.
pub fn observe(
    policy: &AuthPolicy,
    others: &[&AuthPolicy],
    pods: &[&Pod],
    services: &[&Service],
) -> (PodSummary, Vec<Problem>) {
    let name = policy.name_any();
    let (selected, conflicts) = claimed(policy, others, pods);
    let mut summary = PodSummary {
        selected: i32::try_from(selected.len()).unwrap_or(i32::MAX),
        ..Default::default()
    };
    let mut without = Vec::new();
    for pod in &selected {
        if injected(pod, &name) {
            summary.injected += 1;
        } else {
            without.push(pod.name_any());
        }
    }
    without.sort();
    let mut problems = Vec::new();
    for (other, mut shared) in conflicts {
        shared.sort();
        shared.truncate(MAX_NAMES);
        problems.push(Problem::Conflict(other, shared));
    }
    if selected.is_empty() && problems.is_empty() {
        problems.push(Problem::NoPodsSelected);
    }
    if !without.is_empty() {
        problems.push(Problem::PodsWithoutSidecar(
            without.len(),
            without.iter().take(MAX_NAMES).cloned().collect(),
        ));
    }
    summary.uninjected = without.into_iter().take(MAX_NAMES).collect();

    problems.extend(bypasses(policy, &selected, services));
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

    fn pod(name: &str, app: &str, injected_by: Option<&str>) -> Pod {
        let mut pod: Pod = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  containers: [{{name: app, image: app, ports: [{{name: web, containerPort: 8080}}, {{name: other, containerPort: 9000}}]}}]\n"
        ))
        .unwrap();
        if let Some(p) = injected_by {
            pod.metadata.annotations =
                Some(BTreeMap::from([(INJECTED_ANNOTATION.into(), p.into())]));
            pod.spec.as_mut().unwrap().init_containers = Some(vec![Container {
                name: SIDECAR_NAME.into(),
                ..Container::default()
            }]);
        }
        pod
    }

    fn service(name: &str, app: &str, target: impl std::fmt::Display) -> Service {
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
    fn the_newer_of_two_policies_on_one_pod_gets_a_conflict_naming_the_older() {
        let created = |mut p: AuthPolicy, secs: i64| {
            p.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
                ));
            p
        };
        let older = created(policy("orders", "orders"), 100);
        let newer = created(policy("greedy", "orders"), 200);
        let pods = [pod("a", "orders", Some("orders"))];
        let refs: Vec<_> = pods.iter().collect();
        let (summary, problems) = observe(&older, &[&older, &newer], &refs, &[]);
        assert_eq!((summary.selected, summary.injected), (1, 1));
        assert!(problems.is_empty(), "{problems:?}");
        let (summary, problems) = observe(&newer, &[&older, &newer], &refs, &[]);
        assert_eq!(summary.selected, 0, "the pods are the older policy's");
        assert_eq!(
            problems,
            [Problem::Conflict("orders".into(), vec!["a".into()])]
        );
        assert!(problems[0].blocks_readiness());
    }

    #[test]
    fn a_policy_selecting_no_pod_says_so() {
        let p = policy("orders", "orders");
        let pods = [pod("a", "other", None)];
        let refs: Vec<_> = pods.iter().collect();
        let (summary, problems) = observe(&p, &[&p], &refs, &[]);
        assert_eq!(summary.selected, 0);
        assert_eq!(problems, [Problem::NoPodsSelected]);
        assert!(problems[0].blocks_readiness());
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

    #[test]
    fn a_named_target_port_is_resolved_against_the_pods_ports() {
        let p = policy("orders", "orders");
        let pods = [pod("a", "orders", Some("orders"))];
        let refs: Vec<_> = pods.iter().collect();
        let (named, other, unknown) = (
            service("named", "orders", "web"),
            service("other", "orders", "other"),
            service("unknown", "orders", "nope"),
        );
        let (_, problems) = observe(&p, &[&p], &refs, &[&named, &other, &unknown]);
        assert_eq!(
            problems,
            [Problem::ServiceBypass("named".into(), 8080, 15080)],
            "the port named web is 8080, the app's port"
        );
    }

    #[test]
    fn a_forged_annotation_without_the_sidecar_does_not_count_as_injected() {
        let p = policy("orders", "orders");
        let mut forged = pod("a", "orders", None);
        forged.metadata.annotations = Some(BTreeMap::from([(
            INJECTED_ANNOTATION.into(),
            "orders".into(),
        )]));
        let (summary, problems) = observe(&p, &[&p], &[&forged], &[]);
        assert_eq!(summary.injected, 0);
        assert_eq!(problems, [Problem::PodsWithoutSidecar(1, vec!["a".into()])]);
    }

    #[test]
    fn the_cache_keeps_only_names_images_ports_labels_and_the_injection_mark() {
        let mut full: Pod = serde_yaml_ng::from_str(
            r#"
metadata:
  name: a
  namespace: shop
  labels: {app: orders}
  annotations: {scopegate.dev/injected: orders, big: "xxxxxxxx"}
  managedFields: [{manager: kubectl}]
spec:
  serviceAccountName: default
  initContainers: [{name: scopegate-sidecar, image: s, args: [--config, x], env: [{name: A, value: b}]}]
  containers: [{name: app, image: app, command: [run], ports: [{name: web, containerPort: 8080, hostPort: 80}]}]
status: {phase: Running}
"#,
        )
        .unwrap();
        slim(&mut full);
        let expected: Pod = serde_yaml_ng::from_str(
            r#"
metadata:
  name: a
  namespace: shop
  labels: {app: orders}
  annotations: {scopegate.dev/injected: orders}
spec:
  initContainers: [{name: scopegate-sidecar, image: s}]
  containers: [{name: app, image: app, ports: [{name: web, containerPort: 8080}]}]
"#,
        )
        .unwrap();
        assert_eq!(full, expected);
    }
}
