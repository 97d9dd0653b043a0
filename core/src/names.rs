//! Names of the API group, labels and annotations shared by the operator and the sidecar.

/// The API group of every scopegate custom resource.
pub const API_GROUP: &str = "scopegate.dev";

/// The API version the CRDs are served and stored at.
pub const API_VERSION: &str = "v1alpha1";

/// Label a namespace carries to have its selected pods injected with the sidecar.
pub const INJECTION_LABEL: &str = "scopegate.dev/injection";

/// Label on every object the operator writes, naming the component that wrote it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Value of [`MANAGED_BY_LABEL`] on objects the operator writes.
pub const MANAGED_BY_VALUE: &str = "scopegate-operator";

/// Annotation on an AuthPolicy that asks for a manual key rotation. Any new value starts one.
pub const ROTATE_ANNOTATION: &str = "scopegate.dev/rotate";

/// Annotation on an AuthPolicy naming a key id to remove at once from every JWKS.
pub const REVOKE_KID_ANNOTATION: &str = "scopegate.dev/revoke-kid";

/// Port of the sidecar's admin server (`/healthz`, `/readyz`, `/metrics`) in every pod.
pub const SIDECAR_ADMIN_PORT: u16 = 15090;

/// Default port the sidecar listens on for protected traffic.
pub const DEFAULT_LISTEN_PORT: u16 = 15080;

/// Where the injected sidecar finds the sidecar ConfigMap.
pub const CONFIG_MOUNT_DIR: &str = "/etc/scopegate/config";

/// Where issuer pods mount the signing-keys Secret.
pub const SIGNING_KEYS_MOUNT_DIR: &str = "/etc/scopegate/signing-keys";

/// Where issuer pods mount the client registry Secret.
pub const CLIENTS_MOUNT_DIR: &str = "/etc/scopegate/clients";

/// Where issuer pods mount their serving certificate Secret.
pub const TLS_MOUNT_DIR: &str = "/etc/scopegate/tls";

/// The emptyDir shared by the issuer sidecar and the app container, holding the mint socket.
pub const MINT_SOCKET_DIR: &str = "/var/run/scopegate";

/// Where issuer pods mount the Redis credentials Secret of a Redis store.
pub const REDIS_CREDENTIALS_MOUNT_DIR: &str = "/etc/scopegate/redis";

/// Where the webhook mounts the pod's projected ServiceAccount token (audience: the egress
/// client's issuer) into the sidecar only, for its outbound calls.
pub const SA_TOKEN_MOUNT_DIR: &str = "/var/run/secrets/scopegate/issuer-token";

/// The file of that token in its mount.
pub const SA_TOKEN_FILE: &str = "token";

/// Annotation on an OAuthClient asking for a new generated secret. Any new value rotates; the
/// old secret keeps working for the client's `secretRotationOverlap`.
pub const ROTATE_SECRET_ANNOTATION: &str = "scopegate.dev/rotate-secret";

/// Whether an identity (a token's `sub` or `client_id`) can be handed to the app in a header
/// as it is: 1 to 1024 visible ASCII characters, with single spaces only between them. Header
/// parsers trim surrounding whitespace, drop or mangle control characters and read other
/// bytes as Latin-1, so anything else would reach the app as another identity than the one
/// the token names. The verifier refuses such tokens and the issuer never issues them.
pub fn is_identity_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_IDENTITY_LEN
        && bytes.first() != Some(&b' ')
        && bytes.last() != Some(&b' ')
        && !value.contains("  ")
        && bytes.iter().all(|b| matches!(b, 0x21..=0x7E | b' '))
}

/// Longest identity [`is_identity_value`] accepts, in bytes.
pub const MAX_IDENTITY_LEN: usize = 1024;

/// Request headers the sidecar removes or rebuilds on the way to the app: `Host` (set from an
/// HTTP/2 `:authority`), hop-by-hop headers, the forwarding headers (rebuilt), the ones only
/// a trusted proxy may set, and the routing overrides. A condition may not judge one (the app never gets the value it judged), and no
/// claim header may take one's name.
pub const SIDECAR_REWRITTEN_HEADERS: [&str; 27] = [
    "host",
    "upgrade",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A header name as a CGI-style server reads it: lower case, `_` and `-` the same.
pub fn folded_header_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_must_survive_a_header_unchanged() {
        for good in [
            "alice",
            "user:42",
            "google:1080",
            "shop.web",
            "a b",
            "~!@#$%^&*()",
        ] {
            assert!(is_identity_value(good), "{good:?}");
        }
        let long = "x".repeat(MAX_IDENTITY_LEN + 1);
        for bad in [
            "",
            " alice",
            "alice ",
            "a  b",
            "al\nice",
            "al\rice",
            "al\tice",
            "alice\0",
            "ålice",
            "al\u{7f}ice",
            "al\u{85}ice",
            &long,
        ] {
            assert!(!is_identity_value(bad), "{bad:?}");
        }
    }
}
