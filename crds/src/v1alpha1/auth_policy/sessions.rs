//! Browser sessions at the sidecar: it logs a browser in at the issuer with an OAuthClient that
//! authenticates with the pod's ServiceAccount, and keeps the tokens in a sealed cookie.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1alpha1::common::*;

/// Browser sessions for the selected pods' app, kept by the sidecar: a browser that asks for a
/// page on one of paths without a token or a session (a top-level GET accepting text/html) is
/// sent to log in at the issuer of clientRef (authorization code with PKCE); the sidecar
/// redeems the code at redirectUri and keeps the tokens in one __Host- cookie, sealed with a
/// key of Secret `<policy>-session-keys`, which the operator makes and rotates. Requests with a
/// session are checked as if they carried its access token. POST /.scopegate/logout ends it.
/// The pods need the client's ServiceAccount (spec.serviceAccountName); the webhook mounts its
/// token and the session keys into the sidecar only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.maxLifetime).getSeconds() <= 16 * duration(self.keyRotation).getSeconds()",
        "message": "maxLifetime may be at most 16 times keyRotation: each session key keeps opening cookies for maxLifetime after its successor starts sealing, so a shorter keyRotation piles up keys in the session-keys Secret; lengthen keyRotation or shorten maxLifetime",
        "fieldPath": ".keyRotation"
    }
]))]
pub struct Sessions {
    /// The OAuthClient of this namespace the sidecar logs browsers in as. It must authenticate
    /// with ServiceAccount tokens (spec.serviceAccounts; no secret is mounted into the pods),
    /// have the grants authorization_code and refresh_token, list redirectUri among its
    /// redirectUris, and be registered with an issuing AuthPolicy (issuer.self). The status
    /// says which of these fails (reason SessionsRefused).
    pub client_ref: SessionsClientRef,
    /// Where the issuer sends the browser back: https://<the app's public host>[:port]
    /// followed by the path /.scopegate/callback, which the sidecar serves. Its origin is the
    /// app's origin: requests that change state with the session cookie must come from it.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": r#"self.matches(r"^https://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?/\.scopegate/callback$")"#,
        "message": "redirectUri must be https://<the app's public host>[:port]/.scopegate/callback: https, a lower-case host, the path exactly /.scopegate/callback (the sidecar's), no query, fragment or user info"
    }]))]
    pub redirect_uri: String,
    /// Path patterns (the rules' syntax) on which a browser without a session is sent to log
    /// in; elsewhere it gets the usual 401. 1 to 16.
    #[schemars(schema_with = "session_paths")]
    pub paths: Vec<String>,
    /// Scopes asked for at login, each one of the client's scopes. Empty: the client's
    /// defaultScopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scope_list")]
    pub scopes: Vec<String>,
    /// The audience of the sessions' access tokens (the RFC 8707 resource asked for): one of
    /// this policy's audiences, and one the client may get. Unset: the policy's first
    /// audience (for an issuer.self policy without audiences, its url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub audience: Option<String>,
    /// Where the browser goes after logout: a path of the app's origin, starting with one `/`
    /// (never `//` or a backslash, which a browser would take for another host). Default `/`.
    #[serde(default = "default_after_logout")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^/([^/\\\s][^\\\s]*)?$"))]
    pub after_logout: String,
    /// The longest a session lasts from login, however often its tokens are refreshed
    /// (default 8h, at most 720h). The user then logs in again.
    #[serde(default = "default_max_lifetime")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) <= duration('720h')",
        "message": "maxLifetime may be at most 720h (30 days)"
    }]))]
    pub max_lifetime: PositiveDuration,
    /// How often the operator makes a new session key (default 24h, at least 1m). New cookies
    /// are sealed with the newest key; an older key keeps opening cookies until maxLifetime
    /// after its successor started sealing, so no session ends by rotation. Annotate the
    /// policy with scopegate.dev/rotate-session-keys (any new value) to replace every key at
    /// once, which ends every session.
    #[serde(default = "default_key_rotation")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1m')",
        "message": "keyRotation must be at least 1m: each new key is written ahead of sealing, for every replica to hold it first"
    }]))]
    pub key_rotation: PositiveDuration,
}

fn default_after_logout() -> String {
    "/".to_owned()
}

fn default_max_lifetime() -> PositiveDuration {
    "8h".into()
}

fn default_key_rotation() -> PositiveDuration {
    "24h".into()
}

/// The path patterns of sessions: as a rule's, at most 16.
fn session_paths(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = path_list(generator);
    schema.insert("maxItems".to_owned(), 16.into());
    schema
}

/// The OAuthClient sessions log browsers in as.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionsClientRef {
    /// Name of an OAuthClient in this namespace (never another's).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
