//! The signing-keys document: what the operator writes into Secret `<policy>-signing-keys`
//! and the issuer sidecar signs with.
//!
//! Each key carries its whole schedule as times, so that any reader derives the same state
//! from the same clock: `next` until it activates, `active` until it stops signing, `retiring`
//! until every token it may have signed has expired, then removed. Private key material is
//! PKCS#8 (asymmetric) or raw bytes (HS256), base64-encoded; `Debug` never prints it.
//!
//! Two kinds of key never sign, whatever their times say: a `pending` key (written, but not
//! yet seen in every verifier's key set: the operator schedules its activation once it has
//! observed the publication) and a public-only key (its private half was lost, e.g. with a
//! deleted Secret: it stays published until the tokens it signed have expired).

use serde::{Deserialize, Serialize};

use crate::jwk::Jwk;

/// File name of the document inside the signing-keys Secret.
pub const SIGNING_KEYS_FILE: &str = "keys.json";

/// All keys of one issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeys {
    /// Keys in order of activation.
    pub keys: Vec<ManagedKey>,
}

/// Where a key is in its life at a given time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// Signing new tokens.
    Active,
    /// Published so that tokens it signed still verify; signs nothing new.
    Retiring,
    /// Past its removal time: in no JWKS.
    Removed,
}

impl KeyState {
    /// The lowercase name used in status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Removed => "removed",
        }
    }
}

/// One key and its schedule. Times are Unix seconds.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedKey {
    /// Key id: the RFC 7638 thumbprint of the public key, or random for HS256.
    pub kid: String,
    /// JWS algorithm: ES256, RS256, EdDSA or HS256.
    pub alg: String,
    /// When the key was first published.
    pub published_at: i64,
    /// When it starts signing (at least `propagation` after `published_at`).
    pub activates_at: i64,
    /// When it stops signing.
    pub signs_until: i64,
    /// When it leaves every JWKS: after the last token it may sign has expired, plus leeway.
    pub removed_after: i64,
    /// Standard base64 of the PKCS#8 DER private key, or of the raw HS256 secret.
    pub private_key: String,
    /// The public key as published (absent for HS256, which is never published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_jwk: Option<Jwk>,
    /// Written but not yet observed in every verifier's key set: it is published (in the
    /// JWKS) and never signs; `activates_at` is only a lower bound until the operator clears
    /// this, setting `published_at` to when it observed the publication.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl std::fmt::Debug for ManagedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("published_at", &self.published_at)
            .field("activates_at", &self.activates_at)
            .field("signs_until", &self.signs_until)
            .field("removed_after", &self.removed_after)
            .field("pending", &self.pending)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ManagedKey {
    /// The key's state at `now`. A pending key is `next` until its removal time; a key
    /// without private material is never `active` (it is `retiring` once it would be).
    pub fn state(&self, now: i64) -> KeyState {
        if now >= self.removed_after {
            KeyState::Removed
        } else if self.pending || now < self.activates_at {
            KeyState::Next
        } else if now >= self.signs_until || !self.has_private_key() {
            KeyState::Retiring
        } else {
            KeyState::Active
        }
    }

    /// Whether the document holds the key's private half (a key kept only to verify the
    /// tokens it signed before its private half was lost has none).
    pub fn has_private_key(&self) -> bool {
        !self.private_key.is_empty()
    }

    /// Whether the key belongs in the JWKS at `now`: from the moment it is written (even if the
    /// clock stepped back behind `published_at` since) until its removal time.
    pub fn is_published(&self, now: i64) -> bool {
        now < self.removed_after
    }

    /// The latest `exp` a token signed with this key may carry, so that no token outlives
    /// the key's presence in the JWKS: `removed_after` minus the verifiers' leeway.
    pub fn max_token_expiry(&self, leeway_secs: i64) -> i64 {
        self.removed_after - leeway_secs
    }
}

impl SigningKeys {
    /// The key that signs at `now`: among active keys, the one activated last. `None` when no
    /// key may sign (none active yet, or the issuer's mounted copy is stale past every
    /// `signs_until`): the issuer then refuses to mint rather than sign with an old key.
    /// Pending and public-only keys are never active.
    pub fn signing_key(&self, now: i64) -> Option<&ManagedKey> {
        self.keys
            .iter()
            .filter(|k| k.state(now) == KeyState::Active)
            .max_by_key(|k| k.activates_at)
    }

    /// Public keys to publish at `now`, in activation order (HS256 keys are never published).
    pub fn published_jwks(&self, now: i64) -> crate::jwk::Jwks {
        let mut keys: Vec<&ManagedKey> = self.keys.iter().filter(|k| k.is_published(now)).collect();
        keys.sort_by_key(|k| k.activates_at);
        crate::jwk::Jwks {
            keys: keys
                .into_iter()
                .filter_map(|k| k.public_jwk.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, published: i64, activates: i64, until: i64, removed: i64) -> ManagedKey {
        ManagedKey {
            kid: kid.into(),
            alg: "ES256".into(),
            published_at: published,
            activates_at: activates,
            signs_until: until,
            removed_after: removed,
            private_key: "c2VjcmV0".into(),
            public_jwk: Some(Jwk {
                kty: "EC".into(),
                kid: Some(kid.into()),
                ..Jwk::default()
            }),
            pending: false,
        }
    }

    #[test]
    fn pending_and_public_only_keys_never_sign_but_are_published() {
        let mut pending = key("p", 0, 10, 20, 30);
        pending.pending = true;
        assert_eq!(pending.state(15), KeyState::Next);
        assert_eq!(pending.state(30), KeyState::Removed);
        let mut lost = key("l", 0, 10, 20, 30);
        lost.private_key.clear();
        assert_eq!(lost.state(5), KeyState::Next);
        assert_eq!(lost.state(15), KeyState::Retiring);
        let keys = SigningKeys {
            keys: vec![pending.clone(), lost.clone()],
        };
        assert_eq!(keys.signing_key(15), None);
        assert_eq!(keys.published_jwks(15).keys.len(), 2);
        // Old documents (no `pending` member) read as not pending; a pending key says so.
        let text = serde_json::to_string(&pending).unwrap();
        assert!(text.contains("\"pending\":true"), "{text}");
        let plain = serde_json::to_string(&key("a", 0, 1, 2, 3)).unwrap();
        assert!(!plain.contains("pending"), "{plain}");
        let back: ManagedKey = serde_json::from_str(&plain).unwrap();
        assert!(!back.pending);
    }

    #[test]
    fn states_follow_the_times() {
        let k = key("a", 0, 10, 20, 30);
        assert_eq!(k.state(5), KeyState::Next);
        assert_eq!(k.state(10), KeyState::Active);
        assert_eq!(k.state(19), KeyState::Active);
        assert_eq!(k.state(20), KeyState::Retiring);
        assert_eq!(k.state(30), KeyState::Removed);
        assert!(k.is_published(0) && k.is_published(29) && !k.is_published(30));
    }

    #[test]
    fn the_last_activated_active_key_signs() {
        let keys = SigningKeys {
            keys: vec![key("old", 0, 10, 40, 60), key("new", 20, 30, 70, 90)],
        };
        assert_eq!(keys.signing_key(15).map(|k| k.kid.as_str()), Some("old"));
        assert_eq!(keys.signing_key(35).map(|k| k.kid.as_str()), Some("new"));
        assert_eq!(keys.signing_key(5), None);
        assert_eq!(keys.signing_key(75), None, "a stale copy must not sign");
    }

    #[test]
    fn jwks_holds_next_active_and_retiring_keys() {
        let keys = SigningKeys {
            keys: vec![key("old", 0, 10, 40, 60), key("new", 20, 30, 70, 90)],
        };
        let kids = |t| -> Vec<String> {
            keys.published_jwks(t)
                .keys
                .into_iter()
                .filter_map(|k| k.kid)
                .collect()
        };
        assert_eq!(kids(25), ["old", "new"]);
        assert_eq!(kids(65), ["new"]);
    }

    #[test]
    fn debug_never_prints_private_key() {
        let text = format!("{:?}", key("a", 0, 1, 2, 3));
        assert!(
            !text.contains("c2VjcmV0") && text.contains("redacted"),
            "{text}"
        );
    }

    #[test]
    fn token_expiry_is_capped_inside_the_publication_window() {
        assert_eq!(key("a", 0, 10, 20, 100).max_token_expiry(30), 70);
    }
}
