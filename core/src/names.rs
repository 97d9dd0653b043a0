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

/// Annotation on an OAuthClient asking for a new generated secret. Any new value rotates; the
/// old secret keeps working for the client's `secretRotationOverlap`.
pub const ROTATE_SECRET_ANNOTATION: &str = "scopegate.dev/rotate-secret";
