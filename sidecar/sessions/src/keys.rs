//! The session keys: the mounted session-keys file ([`SessionKeys`]) parsed into AES-256-GCM
//! keys. The newest key in force seals; every key not retired opens. A file that does not
//! parse, or holds a key that does not load, is refused whole (the caller keeps the last good
//! keys): a half-read key file would silently log some users out.

use std::collections::HashSet;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use scopegate_core::jose::b64;
use scopegate_core::session::{SessionKey, SessionKeys};

/// Longest key id taken: it travels in every cookie.
pub const MAX_KEY_ID_LEN: usize = 64;

/// Why a key file was refused. Never names a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// Not a session-keys document.
    #[error("not a session-keys document (line {line}, column {column})")]
    Parse {
        /// Where the JSON broke.
        line: usize,
        /// Where the JSON broke.
        column: usize,
    },
    /// A key id is empty, too long or holds a character other than letters, digits, `-`, `_`.
    #[error("key id {0:?} is not 1-64 letters, digits, '-' or '_'")]
    KeyId(String),
    /// Two keys share an id.
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
    /// A secret is not 32 bytes of base64url.
    #[error("key {0:?}: the secret is not 32 bytes of base64url")]
    Secret(String),
}

/// A key in force: its id and its AEAD key.
pub struct Key<'a> {
    /// Its id, written into every cookie it seals.
    pub id: &'a str,
    /// The AEAD key.
    pub(crate) aead: &'a LessSafeKey,
}

/// The loaded keys of one session-keys file. Which key seals and which open at a time is
/// the core's reading of the file ([`SessionKeys::sealing_key`], [`SessionKeys::opening_key`]),
/// the operator's too.
#[derive(Default)]
pub struct Keyring {
    doc: SessionKeys,
    /// The AEAD key of each entry of `doc`, in its order.
    aead: Vec<LessSafeKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.doc.keys)
            .finish()
    }
}

impl Keyring {
    /// Parses a session-keys file.
    pub fn parse(text: &str) -> Result<Keyring, KeysError> {
        let doc: SessionKeys = serde_json::from_str(text).map_err(|e| KeysError::Parse {
            line: e.line(),
            column: e.column(),
        })?;
        let mut seen = HashSet::new();
        let mut aead = Vec::with_capacity(doc.keys.len());
        for key in &doc.keys {
            if !is_key_id(&key.id) {
                return Err(KeysError::KeyId(key.id.clone()));
            }
            if !seen.insert(key.id.as_str()) {
                return Err(KeysError::Duplicate(key.id.clone()));
            }
            let secret = b64::decode(key.secret.as_bytes())
                .ok()
                .filter(|s| s.len() == 32)
                .ok_or_else(|| KeysError::Secret(key.id.clone()))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &secret)
                .map_err(|_| KeysError::Secret(key.id.clone()))?;
            aead.push(LessSafeKey::new(unbound));
        }
        Ok(Keyring { doc, aead })
    }

    /// The key of an entry of the file.
    fn key<'a>(&'a self, entry: &'a SessionKey) -> Option<Key<'a>> {
        let index = self.doc.keys.iter().position(|k| std::ptr::eq(k, entry))?;
        Some(Key {
            id: &entry.id,
            aead: self.aead.get(index)?,
        })
    }

    /// The key that seals at `now`: of the keys not retired whose sealing time (`sealsFrom`,
    /// else `createdAt`) has come, the one that started sealing last. A key written ahead
    /// opens but does not seal yet, so that every replica holds it before any seals with it.
    pub fn sealing(&self, now: i64) -> Option<Key<'_>> {
        self.key(self.doc.sealing_key(now)?)
    }

    /// The key of `id`, when it opens cookies at `now` (it is not retired).
    pub fn opening(&self, id: &str, now: i64) -> Option<Key<'_>> {
        self.key(self.doc.opening_key(id, now)?)
    }

    /// How many keys open cookies at `now`.
    pub fn open_count(&self, now: i64) -> usize {
        self.doc.keys.iter().filter(|k| k.opens_at(now)).count()
    }
}

/// Whether `id` may be a key id: it travels in the clear in a cookie value.
fn is_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A key entry with a secret of `fill` bytes.
    pub(crate) fn entry(
        id: &str,
        fill: u8,
        created_at: i64,
        retire_at: Option<i64>,
    ) -> serde_json::Value {
        let mut e = json!({"id": id, "secret": b64::encode(&[fill; 32]), "createdAt": created_at});
        if let Some(t) = retire_at {
            e["retireAt"] = json!(t);
        }
        e
    }

    #[test]
    fn the_newest_key_in_force_seals_and_every_key_not_retired_opens() {
        let text = json!({"keys": [
            entry("old", 1, 100, Some(500)),
            entry("cur", 2, 200, None),
            entry("next", 3, 1000, None),
        ]})
        .to_string();
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.sealing(300).unwrap().id, "cur");
        assert_eq!(ring.sealing(1000).unwrap().id, "next");
        assert_eq!(ring.sealing(150).unwrap().id, "old");
        assert!(ring.opening("old", 499).is_some());
        assert!(ring.opening("old", 500).is_none(), "retired");
        assert!(
            ring.opening("next", 300).is_some(),
            "published early, opens"
        );
        assert!(ring.opening("gone", 300).is_none());
        assert_eq!(ring.open_count(600), 2);
        assert!(Keyring::default().sealing(0).is_none());
        // Written ahead: opens at once, seals from its time.
        let mut ahead = entry("ahead", 4, 100, None);
        ahead["sealsFrom"] = json!(700);
        let text = json!({"keys": [entry("cur", 2, 200, None), ahead]}).to_string();
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.sealing(699).unwrap().id, "cur");
        assert!(ring.opening("ahead", 300).is_some());
        assert_eq!(ring.sealing(700).unwrap().id, "ahead");
    }

    #[test]
    fn a_file_with_one_bad_key_is_refused_whole_and_names_no_secret() {
        let cases = [
            (json!({"keys": [entry("a.b", 1, 0, None)]}), "key id"),
            (
                json!({"keys": [entry("a", 1, 0, None), entry("a", 2, 0, None)]}),
                "twice",
            ),
            (
                json!({"keys": [{"id": "short", "secret": b64::encode(&[7u8; 16]), "createdAt": 0}]}),
                "32 bytes",
            ),
            (
                json!({"keys": [{"id": "x", "secret": "!!", "createdAt": 0}]}),
                "32 bytes",
            ),
            (json!({"keys": "no"}), "not a session-keys"),
        ];
        for (doc, expected) in cases {
            let err = Keyring::parse(&doc.to_string()).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert!(!err.to_string().contains("Bwc"), "{err}");
        }
        assert!(Keyring::parse("{").is_err());
    }
}
