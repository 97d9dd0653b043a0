//! Sealed cookie values: `1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, AES-256-GCM with
//! a random 96-bit nonce. The associated data binds the value to its cookie name, the policy
//! and the key id, so that a login cookie never opens as a session, and a cookie of another
//! policy never opens here even under the same key.

use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
use scopegate_core::jose::b64;

use crate::keys::Keyring;

/// The format version, first in every value.
const VERSION: &str = "1";

/// GCM's tag length.
const TAG_LEN: usize = 16;

/// The associated data of a value of `cookie` for `policy`, sealed with key `key_id`.
fn associated(cookie: &str, policy: &str, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + cookie.len() + policy.len() + key_id.len());
    aad.extend_from_slice(b"scopegate-cookie-v1\0");
    for part in [cookie, policy, key_id] {
        aad.extend_from_slice(part.as_bytes());
        aad.push(0);
    }
    aad
}

/// Seals `plaintext` as a value of `cookie` for `policy` with the sealing key at `now`; `None`
/// when no key seals.
pub fn seal(
    keys: &Keyring,
    now: i64,
    cookie: &str,
    policy: &str,
    plaintext: &[u8],
) -> Option<String> {
    let key = keys.sealing(now)?;
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).ok()?;
    let mut body = Vec::with_capacity(plaintext.len() + TAG_LEN);
    body.extend_from_slice(plaintext);
    key.aead
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated(cookie, policy, key.id)),
            &mut body,
        )
        .ok()?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + body.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&body);
    Some(format!("{VERSION}.{}.{}", key.id, b64::encode(&sealed)))
}

/// Opens a value of `cookie` for `policy`: `None` for anything but a value sealed by a key
/// that opens at `now`, under the same cookie name and policy, unaltered.
pub fn open(keys: &Keyring, now: i64, cookie: &str, policy: &str, value: &str) -> Option<Vec<u8>> {
    let (version, rest) = value.split_once('.')?;
    let (key_id, body) = rest.split_once('.')?;
    if version != VERSION {
        return None;
    }
    let key = keys.opening(key_id, now)?;
    let sealed = b64::decode(body.as_bytes()).ok()?;
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut body = body.to_vec();
    let len = key
        .aead
        .open_in_place(
            nonce,
            Aad::from(associated(cookie, policy, key_id)),
            &mut body,
        )
        .ok()?
        .len();
    body.truncate(len);
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::entry;
    use serde_json::json;

    fn ring(entries: &[serde_json::Value]) -> Keyring {
        Keyring::parse(&json!({ "keys": entries }).to_string()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_as_itself() {
        let keys = ring(&[entry("k1", 1, 0, None)]);
        let value = seal(&keys, 10, "c", "shop/web", b"hello").unwrap();
        assert!(value.starts_with("1.k1."));
        assert_eq!(open(&keys, 10, "c", "shop/web", &value).unwrap(), b"hello");
        assert_eq!(
            open(&keys, 10, "other", "shop/web", &value),
            None,
            "another cookie"
        );
        assert_eq!(
            open(&keys, 10, "c", "shop/admin", &value),
            None,
            "another policy"
        );
        // Two seals of one plaintext differ (fresh nonce).
        assert_ne!(seal(&keys, 10, "c", "shop/web", b"hello").unwrap(), value);
    }

    #[test]
    fn any_flipped_bit_or_another_key_fails_to_open() {
        let keys = ring(&[entry("k1", 1, 0, None)]);
        let value = seal(&keys, 10, "c", "p", b"payload bytes").unwrap();
        let (head, body) = value.rsplit_once('.').unwrap();
        let raw = b64::decode(body.as_bytes()).unwrap();
        for i in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            let tampered = format!("{head}.{}", b64::encode(&flipped));
            assert_eq!(open(&keys, 10, "c", "p", &tampered), None, "bit {i}");
        }
        // The same id with another secret (a forged key file elsewhere) opens nothing.
        let other = ring(&[entry("k1", 2, 0, None)]);
        assert_eq!(open(&other, 10, "c", "p", &value), None);
        // A key id swapped for another key's in the clear part.
        let both = ring(&[entry("k1", 1, 0, None), entry("k2", 1, 0, None)]);
        let swapped = value.replacen("1.k1.", "1.k2.", 1);
        assert_eq!(open(&both, 10, "c", "p", &swapped), None);
        for junk in [
            "",
            "1",
            "1.k1",
            "1.k1.",
            "2.k1.AAAA",
            "1.k1.!!!!",
            "1..AAAA",
        ] {
            assert_eq!(open(&keys, 10, "c", "p", junk), None, "{junk}");
        }
    }

    #[test]
    fn a_retired_key_opens_nothing() {
        let keys = ring(&[entry("k1", 1, 0, Some(100))]);
        let value = seal(&keys, 10, "c", "p", b"x").unwrap();
        assert!(open(&keys, 99, "c", "p", &value).is_some());
        assert_eq!(open(&keys, 100, "c", "p", &value), None);
        assert_eq!(seal(&keys, 100, "c", "p", b"x"), None, "no key seals");
    }
}
