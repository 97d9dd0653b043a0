//! What keeps a policy's pods from being reached around the sidecar: the NetworkPolicy it
//! renders (pure), and which protection is in force.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use scopegate_crds::v1alpha1::AuthPolicy;

use crate::error::Result;
use crate::objects::owned_meta;

/// Name of the NetworkPolicy rendered for the policy called `policy`.
pub fn network_policy_name(policy: &str) -> String {
    format!("{policy}-inbound")
}

/// The NetworkPolicy that admits ingress to the policy's pods on the sidecar's listen port
/// only, from anywhere (clients, other namespaces' verifiers reading an issuer's feed).
/// Egress is not restricted. The kubelet's probes of the admin port come from the node, which
/// network plugins admit regardless of NetworkPolicy.
pub fn network_policy(policy: &AuthPolicy) -> Result<NetworkPolicy> {
    let name = network_policy_name(&kube::ResourceExt::name_any(policy));
    Ok(NetworkPolicy {
        metadata: owned_meta(policy, &name)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(policy.spec.selector.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".to_owned()),
                    port: Some(IntOrString::Int(policy.spec.listen.port)),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    })
}

/// The protection in force for the policy's pods, as the status names it.
pub fn protection(policy: &AuthPolicy) -> &'static str {
    match (
        policy.spec.inbound.network_policy,
        policy.spec.inbound.port_lock,
    ) {
        (true, true) => "NetworkPolicy+PortLock",
        (true, false) => "NetworkPolicy",
        (false, true) => "PortLock",
        (false, false) => "None",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: orders, namespace: shop, uid: u1}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n  issuer: {{policyRef: {{name: auth}}}}\n  audiences: [x]\n  upstream: {{port: 8080}}\n{extra}"
        ))
        .expect("policy")
    }

    #[test]
    fn the_network_policy_admits_exactly_the_sidecar_port_to_the_selected_pods() {
        let rendered = network_policy(&policy("  listen: {port: 9443}\n")).unwrap();
        assert_eq!(rendered.metadata.name.as_deref(), Some("orders-inbound"));
        assert_eq!(rendered.metadata.namespace.as_deref(), Some("shop"));
        let owner = &rendered.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("AuthPolicy", "orders")
        );
        let spec = rendered.spec.unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({
                "podSelector": {"matchLabels": {"app": "orders"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": 9443}]}],
            })
        );
        // The default listen port.
        let rendered = network_policy(&policy("")).unwrap();
        let ports = rendered.spec.unwrap().ingress.unwrap()[0]
            .ports
            .clone()
            .unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(IntOrString::Int(15080)));
    }

    #[test]
    fn protection_names_what_is_on() {
        assert_eq!(protection(&policy("")), "NetworkPolicy");
        assert_eq!(
            protection(&policy("  inbound: {portLock: true}\n")),
            "NetworkPolicy+PortLock"
        );
        assert_eq!(
            protection(&policy(
                "  inbound: {networkPolicy: false, portLock: true}\n"
            )),
            "PortLock"
        );
        assert_eq!(
            protection(&policy("  inbound: {networkPolicy: false}\n")),
            "None"
        );
    }
}
