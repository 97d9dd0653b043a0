//! Every name the operator reads or writes: labels, annotations, the objects it renders and
//! the keys of their data, container names and mount paths. The names it shares with the
//! sidecar and the CLI live in [`scopegate_core::names`] and are re-exported here, so this is
//! the one module to look in.

pub use scopegate_core::names::*;

use kube::ResourceExt;
use scopegate_crds::v1alpha1::OAuthClient;

// Labels.

/// Label naming the AuthPolicy an object was rendered for.
pub const POLICY_LABEL: &str = "scopegate.dev/policy";
/// Label naming the OAuthClient a credentials Secret belongs to.
pub const CLIENT_LABEL: &str = "scopegate.dev/oauth-client";

// Annotations.

/// Annotation on the signing-keys Secret: the rotate-annotation value already acted on
/// (written by earlier releases; the policy's status keeps it now).
pub const ROTATION_HANDLED_ANNOTATION: &str = "scopegate.dev/rotation-handled";
/// Annotation on an AuthPolicy with sessions that asks to replace every session key at once
/// (any new value): every session ends. For a key that may have leaked.
pub const ROTATE_SESSION_KEYS_ANNOTATION: &str = "scopegate.dev/rotate-session-keys";
/// Annotation on the session-keys Secret: the rotate-session-keys value already acted on
/// (kept with the keys, so that the request and the new keys are written at once).
pub const SESSION_ROTATION_HANDLED_ANNOTATION: &str = "scopegate.dev/session-rotation-handled";
/// Annotation on the JWKS ConfigMap naming the issuer's signing algorithm.
pub const ALGORITHM_ANNOTATION: &str = "scopegate.dev/signing-algorithm";
/// Annotation on a TLS Secret: when its certificate expires (Unix seconds), for renewal.
pub const TLS_NOT_AFTER_ANNOTATION: &str = "scopegate.dev/not-after";
/// Annotation on a TLS Secret: the CA certificate that signed it (its SHA-256, hex).
pub const TLS_SIGNER_ANNOTATION: &str = "scopegate.dev/signer";
/// Annotation on a TLS Secret: the DNS names its certificate covers.
pub const TLS_NAMES_ANNOTATION: &str = "scopegate.dev/dns-names";
/// Annotation on an injected pod naming its AuthPolicy.
pub const INJECTED_ANNOTATION: &str = "scopegate.dev/injected";
/// Annotation on a client's credentials Secret: Unix time the previous secret stops working.
pub const PREVIOUS_NOT_AFTER_ANNOTATION: &str = "scopegate.dev/previous-not-after";
/// Annotation on a client's credentials Secret: the rotate-secret request already acted on.
pub const SECRET_ROTATION_HANDLED_ANNOTATION: &str = "scopegate.dev/secret-rotation-handled";

// Objects and the keys of their data.

/// Name of the per-namespace CA bundle ConfigMap for client apps.
pub const CA_CONFIGMAP: &str = "scopegate-ca";
/// Key of the bundle in [`CA_CONFIGMAP`] and in TLS Secrets.
pub const CA_FILE: &str = "ca.crt";
/// Key of the JWKS document in the JWKS ConfigMap.
pub const JWKS_FILE: &str = "jwks.json";
/// Key of the client id in a client's credentials Secret.
pub const CLIENT_ID_KEY: &str = "client_id";
/// Key of the current secret in a client's credentials Secret.
pub const CLIENT_SECRET_KEY: &str = "client_secret";
/// Key of the previous secret during a rotation overlap.
pub const PREVIOUS_SECRET_KEY: &str = "previous_client_secret";

// Containers and mounts.

/// Name of the injected container.
pub const SIDECAR_NAME: &str = "scopegate-sidecar";
/// Name of the init container that installs the inbound port lock (`inbound.portLock`).
pub const PORT_LOCK_NAME: &str = "scopegate-port-lock";
/// Where verifiers mount a listener certificate named by `listen.tlsSecret`.
pub const LISTEN_TLS_MOUNT_DIR: &str = "/etc/scopegate/listen-tls";
/// The sidecar's ServiceAccount token for the issuer of the sessions' client, beside the
/// egress token in [`SA_TOKEN_MOUNT_DIR`] (the two clients may have different issuers).
pub const SESSION_SA_TOKEN_FILE: &str = "session-token";
/// Where app containers find the operator's CA bundle.
pub const APP_CA_MOUNT_DIR: &str = "/etc/scopegate/ca";

/// Names of the objects rendered for a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Signing-keys Secret.
    pub signing_keys: String,
    /// JWKS ConfigMap.
    pub jwks: String,
    /// Serving-certificate Secret.
    pub tls: String,
    /// Client registry Secret.
    pub clients: String,
    /// Sidecar config ConfigMap.
    pub sidecar: String,
    /// Upstream client secrets (self issuers with upstreams).
    pub upstreams: String,
    /// Session keys (policies with sessions).
    pub session_keys: String,
}

impl Names {
    /// Names for the policy called `name`.
    pub fn of(name: &str) -> Self {
        Self {
            signing_keys: format!("{name}-signing-keys"),
            jwks: format!("{name}-jwks"),
            tls: format!("{name}-tls"),
            clients: format!("{name}-clients"),
            sidecar: format!("{name}-sidecar"),
            upstreams: scopegate_core::upstream::secret_name(name),
            session_keys: format!("{name}-session-keys"),
        }
    }
}

/// The Secret a confidential client's generated credentials live in (`None`: a public
/// client, or one with a Secret of the user's own).
pub fn client_secret_name(client: &OAuthClient) -> Option<String> {
    let spec = &client.spec;
    if spec.public || spec.existing_secret.is_some() || !spec.service_accounts.is_empty() {
        return None;
    }
    Some(
        client
            .spec
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-oauth-client", client.name_any())),
    )
}

/// The client_id of an OAuthClient: `<namespace>.<name>`. Namespaces cannot contain dots, so
/// the first dot splits it unambiguously.
pub fn client_id(client: &OAuthClient) -> String {
    format!(
        "{}.{}",
        client.namespace().unwrap_or_default(),
        client.name_any()
    )
}

/// Whether `text` is an RFC 1123 DNS label as Kubernetes names Services: 1-63 lower-case
/// letters, digits and `-`, starting and ending with a letter or digit.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// The DNS names of an issuer Service, for its serving certificate: always built from the
/// Service's label and the policy's own namespace (`<svc>.<ns>.svc` and
/// `<svc>.<ns>.svc.<cluster_domain>`), never a bare name, so a policy can only ever get a
/// certificate for a Service of its own namespace. `None` when `service` is not a DNS label.
pub fn service_dns_names(
    service: &str,
    namespace: &str,
    cluster_domain: &str,
) -> Option<Vec<String>> {
    (is_dns_label(service) && is_dns_label(namespace)).then(|| {
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.{cluster_domain}"),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_cover_every_in_cluster_spelling() {
        assert_eq!(
            service_dns_names("auth", "shop", "corp.example").unwrap(),
            ["auth.shop.svc", "auth.shop.svc.corp.example"]
        );
        for hostile in [
            "accounts.google.com",
            "auth.shop.svc",
            "*",
            "*.shop",
            "Auth",
            "-auth",
            "auth-",
            "",
            "a b",
            "auth\n",
            &"a".repeat(64),
        ] {
            assert_eq!(
                service_dns_names(hostile, "shop", "cluster.local"),
                None,
                "{hostile:?}"
            );
        }
    }
}
