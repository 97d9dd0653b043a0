//! Browser sessions at the sidecar: the config the operator renders for a policy with
//! `sessions`, the session-key file it keeps in Secret `<policy>-session-keys`, and the
//! reserved paths and cookie names. A browser without a bearer token and without a session is
//! sent to the issuer's authorization endpoint (code + PKCE S256); the sidecar redeems the code
//! at its callback and holds the tokens in one cookie, sealed with an AEAD key of the
//! session-key file, so the sidecar keeps no per-session state and the browser's JavaScript
//! never sees a token (the token-mediating backend of the OAuth 2.0 for Browser-Based Apps
//! BCP).

use serde::{Deserialize, Serialize};

/// The callback path the sidecar owns on every policy with sessions (the `redirect_uri`'s path).
pub const CALLBACK_PATH: &str = "/.scopegate/callback";

/// The logout path (POST, same origin): revokes the session's refresh family and clears the
/// cookie.
pub const LOGOUT_PATH: &str = "/.scopegate/logout";

/// Every path under this prefix is the sidecar's, never the app's.
pub const RESERVED_PREFIX: &str = "/.scopegate/";

/// The session cookie: `__Host-` (Secure, Path=/, no Domain), HttpOnly, SameSite=Lax.
pub const SESSION_COOKIE: &str = "__Host-scopegate-session";

/// The short-lived cookie that binds a login in flight to the browser that started it (its
/// `state`, PKCE verifier, nonce and return path, sealed like the session).
pub const LOGIN_COOKIE: &str = "__Host-scopegate-login";

/// File name of the session keys inside Secret `<policy>-session-keys`.
pub const SESSION_KEYS_FILE: &str = "session-keys.json";

/// Where the session-keys Secret is mounted in the sidecar.
pub const SESSION_KEYS_MOUNT_DIR: &str = "/etc/scopegate/session-keys";

/// A policy's browser sessions, as the sidecar runs them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionConfig {
    /// The issuer's URL: the `iss` of its tokens and of its authorization responses (RFC 9207).
    pub issuer: String,
    /// Where the browser is sent to log in: the issuer's `/oauth2/authorize`, as the browser
    /// reaches it.
    pub authorization_endpoint: String,
    /// The token endpoint the sidecar calls (an in-cluster name, trusted with the operator's
    /// CA only).
    pub token_endpoint: String,
    /// The revocation endpoint the sidecar calls at logout (same host as the token endpoint).
    pub revocation_endpoint: String,
    /// The OAuthClient's client_id. It authenticates with the pod's ServiceAccount token.
    pub client_id: String,
    /// The audience the ServiceAccount token must carry (the issuer's URL): the sidecar sends
    /// no other token.
    pub token_audience: String,
    /// The projected ServiceAccount token file, read again for every token request.
    pub assertion_path: String,
    /// The `redirect_uri`: `https://<the app's public host>[:port]/.scopegate/callback`, one of
    /// the client's redirect URIs. Its origin is the app's origin, which state-changing
    /// requests with the cookie must come from.
    pub redirect_uri: String,
    /// Path patterns (the rules' syntax) on which a browser without a session is sent to log
    /// in; elsewhere it gets the usual 401.
    pub paths: Vec<String>,
    /// Scopes requested at login.
    pub scopes: Vec<String>,
    /// The audience of the session's access tokens (RFC 8707 `resource`): one this policy
    /// accepts.
    pub audience: String,
    /// Where logout sends the browser: a path of the app's origin.
    pub after_logout: String,
    /// The longest a session lasts from login, in seconds, whatever its refreshes.
    pub max_lifetime_secs: u64,
    /// The mounted session-keys file ([`SessionKeys`]).
    pub keys_path: String,
}

/// The AEAD keys that seal session and login cookies, oldest first: the newest key whose
/// sealing time has come seals ([`SessionKeys::sealing_key`]), every key not retired opens
/// ([`SessionKeys::opening_key`]). The operator writes a key a few minutes before it seals, so
/// that every replica holds it before any replica seals with it, and removes a key once every
/// cookie it sealed has expired.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionKeys {
    /// The keys, oldest first.
    pub keys: Vec<SessionKey>,
}

/// One session key.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionKey {
    /// Its id, written into every cookie it seals.
    pub id: String,
    /// 32 random bytes, base64url without padding (AES-256-GCM).
    pub secret: String,
    /// When it was made (Unix seconds).
    pub created_at: i64,
    /// From this time on it seals new cookies (Unix seconds); absent: from `created_at`. Until
    /// then it only opens them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seals_from: Option<i64>,
    /// From this time on it no longer opens cookies (Unix seconds); `None` while it is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

impl SessionKey {
    /// When it starts sealing new cookies.
    pub fn seals_from(&self) -> i64 {
        self.seals_from.unwrap_or(self.created_at)
    }

    /// Whether it opens cookies at `now` (it is not retired).
    pub fn opens_at(&self, now: i64) -> bool {
        self.retire_at.is_none_or(|retire| now < retire)
    }
}

impl SessionKeys {
    /// The key that seals new cookies at `now`: of the keys not retired whose sealing time has
    /// come, the one that started sealing last (the later in the list on a tie).
    pub fn sealing_key(&self, now: i64) -> Option<&SessionKey> {
        self.keys
            .iter()
            .filter(|k| k.opens_at(now) && k.seals_from() <= now)
            .max_by_key(|k| k.seals_from())
    }

    /// The key with id `id`, if it opens cookies at `now`.
    pub fn opening_key(&self, id: &str, now: i64) -> Option<&SessionKey> {
        self.keys.iter().find(|k| k.id == id && k.opens_at(now))
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("seals_from", &self.seals_from)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keys_debug_never_shows_the_secret() {
        let key = SessionKey {
            id: "k1".into(),
            secret: "c2VjcmV0LWJ5dGVz".into(),
            created_at: 1,
            seals_from: None,
            retire_at: None,
        };
        assert!(!format!("{key:?}").contains("c2VjcmV0"));
        let keys = SessionKeys { keys: vec![key] };
        let text = serde_json::to_string(&keys).unwrap();
        assert_eq!(serde_json::from_str::<SessionKeys>(&text).unwrap(), keys);
    }

    fn key(
        id: &str,
        created_at: i64,
        seals_from: Option<i64>,
        retire_at: Option<i64>,
    ) -> SessionKey {
        SessionKey {
            id: id.into(),
            secret: String::new(),
            created_at,
            seals_from,
            retire_at,
        }
    }

    #[test]
    fn a_key_written_ahead_opens_before_it_seals_and_a_retired_key_does_neither() {
        let keys = SessionKeys {
            keys: vec![
                key("old", 0, None, Some(1_000)),
                key("current", 100, None, None),
                key("next", 500, Some(800), None),
            ],
        };
        let sealing = |now| keys.sealing_key(now).map(|k| k.id.as_str());
        assert_eq!(sealing(50), Some("old"));
        assert_eq!(sealing(799), Some("current"));
        assert_eq!(sealing(800), Some("next"));
        assert!(keys.opening_key("next", 600).is_some());
        assert!(keys.opening_key("old", 999).is_some());
        assert!(keys.opening_key("old", 1_000).is_none());
        assert!(keys.opening_key("unknown", 0).is_none());
    }
}
