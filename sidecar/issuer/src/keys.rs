//! The issuer's signing keys, parsed once per load of the signing-keys document: key pairs
//! for the keys that may sign, verification keys for every published key (introspection and
//! revocation read our own tokens), the JWS headers precomputed, and the JWKS.

use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use scopegate_core::feed::FEED_JWS_TYP;
use scopegate_core::jwk::Jwks;
use scopegate_core::keys::{ManagedKey, SigningKeys};
use serde_json::json;

use scopegate_core::jose::b64;
use scopegate_core::jose::jws::KeyMap;
use scopegate_core::jose::keys::{Alg, KeyEntry};

/// Longest JWKS max-age, in seconds.
const MAX_JWKS_MAX_AGE: i64 = 60;

/// Why the signing-keys document could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// Not a signing-keys document.
    #[error("the signing-keys document does not parse")]
    Document,
    /// A key's algorithm is not one the issuer signs with.
    #[error("key {0:?}: unsupported algorithm")]
    Algorithm(String),
    /// A key's private material does not parse for its algorithm.
    #[error("key {0:?}: private key does not parse")]
    Material(String),
    /// A published key has no usable public JWK.
    #[error("key {0:?}: public key unusable")]
    Public(String),
}

impl SigningKeyError {
    /// The key id the error is about (empty for a document that does not parse).
    pub fn kid(&self) -> &str {
        match self {
            SigningKeyError::Document => "",
            SigningKeyError::Algorithm(kid)
            | SigningKeyError::Material(kid)
            | SigningKeyError::Public(kid) => kid,
        }
    }
}

#[allow(clippy::large_enum_variant)] // a handful per key set, never moved on a hot path
enum Pair {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Hmac(Box<hmac::Key>),
}

/// One key that can sign: the parsed pair and its schedule.
pub struct Signer {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Alg,
    schedule: ManagedKey,
    pair: Pair,
    /// `b64url({"alg","kid","typ":"at+jwt"})`.
    access_header: String,
    /// `b64url({"alg","kid","typ":FEED_JWS_TYP})`.
    feed_header: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("alg", &self.alg.name())
            .finish_non_exhaustive()
    }
}

/// Which JWS header a signature is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsKind {
    /// An RFC 9068 access token (`typ: at+jwt`).
    AccessToken,
    /// A revocation feed page.
    FeedPage,
}

impl Signer {
    /// The latest `exp` a token signed with this key may carry.
    pub fn max_expiry(&self, leeway_secs: i64) -> i64 {
        self.schedule.max_token_expiry(leeway_secs)
    }

    /// A compact JWS over `payload` (JSON bytes).
    pub fn sign(
        &self,
        kind: JwsKind,
        payload: &[u8],
        rng: &SystemRandom,
    ) -> Result<String, SignError> {
        let header = match kind {
            JwsKind::AccessToken => &self.access_header,
            JwsKind::FeedPage => &self.feed_header,
        };
        let mut out = String::with_capacity(header.len() + payload.len() * 4 / 3 + 400);
        out.push_str(header);
        out.push('.');
        out.push_str(&b64::encode(payload));
        let signature = self.signature(out.as_bytes(), rng)?;
        out.push('.');
        out.push_str(&b64::encode(&signature));
        Ok(out)
    }

    /// The JWS signature over a complete signing input (`header.payload`). Tokens and pages
    /// are made with [`Signer::sign`], which fixes the header; this is the primitive under it
    /// (and what published test vectors check byte for byte).
    pub fn signature(
        &self,
        signing_input: &[u8],
        rng: &SystemRandom,
    ) -> Result<Vec<u8>, SignError> {
        raw_signature(&self.pair, signing_input, rng)
    }
}

fn raw_signature(pair: &Pair, input: &[u8], rng: &SystemRandom) -> Result<Vec<u8>, SignError> {
    Ok(match pair {
        Pair::Ecdsa(pair) => pair
            .sign(rng, input)
            .map_err(|_| SignError)?
            .as_ref()
            .to_vec(),
        Pair::Ed25519(pair) => pair.sign(input).as_ref().to_vec(),
        Pair::Rsa(pair) => {
            let mut sig = vec![0; pair.public_modulus_len()];
            pair.sign(&signature::RSA_PKCS1_SHA256, rng, input, &mut sig)
                .map_err(|_| SignError)?;
            sig
        }
        Pair::Hmac(key) => hmac::sign(key, input).as_ref().to_vec(),
    })
}

/// The signature primitive failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("signing failed")]
pub struct SignError;

/// Every key of the document, ready to sign and verify.
pub struct KeySet {
    signers: Vec<Signer>,
    doc: SigningKeys,
    /// Keys that verify our own tokens (every key not yet removed).
    pub verify: Arc<KeyMap>,
    skipped: Vec<SigningKeyError>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// Parses the document; keys already removed at `now` are left out. A key that does not
    /// load (material that does not parse, halves that disagree) is left out too and named in
    /// [`KeySet::skipped`], so that one bad key costs only itself; a document none of whose
    /// keys loads is refused (the last good set keeps serving). A key without private half
    /// (kept only to verify what it signed) verifies and never signs.
    pub fn load(text: &str, now: i64) -> Result<KeySet, SigningKeyError> {
        let doc: SigningKeys = serde_json::from_str(text).map_err(|_| SigningKeyError::Document)?;
        let mut signers = Vec::new();
        let mut verify = KeyMap::new();
        let mut skipped = Vec::new();
        let mut live = 0usize;
        for key in doc.keys.iter().filter(|k| now < k.removed_after) {
            live += 1;
            match load_key(key) {
                Ok((entry, signer)) => {
                    verify.insert(key.kid.clone(), entry);
                    signers.extend(signer);
                }
                Err(err) => skipped.push(err),
            }
        }
        if live > 0 && verify.is_empty() && !skipped.is_empty() {
            return Err(skipped.swap_remove(0));
        }
        Ok(KeySet {
            signers,
            doc,
            verify: Arc::new(verify),
            skipped,
        })
    }

    /// Keys of the document left out because they do not load, with why (no key material).
    pub fn skipped(&self) -> &[SigningKeyError] {
        &self.skipped
    }

    /// The key that signs at `now`, if any may.
    pub fn signer(&self, now: i64) -> Option<&Signer> {
        let kid = &self.doc.signing_key(now)?.kid;
        self.signers.iter().find(|s| &s.kid == kid)
    }

    /// The public keys to publish at `now` (never one that did not load).
    pub fn jwks(&self, now: i64) -> Jwks {
        let mut jwks = self.doc.published_jwks(now);
        jwks.keys.retain(|k| {
            k.kid
                .as_deref()
                .is_some_and(|kid| self.verify.contains_key(kid))
        });
        jwks
    }

    /// The JWKS max-age: a tenth of the shortest pre-publication window of the keys (the
    /// operator publishes a key at least `propagation` before it signs, and an HTTP cache's
    /// max-age counts inside `propagation`), at most [`MAX_JWKS_MAX_AGE`] seconds.
    pub fn jwks_max_age(&self) -> i64 {
        self.doc
            .keys
            .iter()
            .map(|k| k.activates_at - k.published_at)
            .filter(|w| *w > 0)
            .min()
            .map_or(MAX_JWKS_MAX_AGE, |w| (w / 10).min(MAX_JWKS_MAX_AGE))
    }

    /// When the set of signing or published keys next changes after `now` (for callers
    /// caching what depends on it).
    pub fn next_change(&self, now: i64) -> Option<i64> {
        self.doc
            .keys
            .iter()
            .flat_map(|k| {
                [
                    k.published_at,
                    k.activates_at,
                    k.signs_until,
                    k.removed_after,
                ]
            })
            .filter(|t| *t > now)
            .min()
    }
}

/// Loads one key: its verification entry, and its signer unless it is public-only.
fn load_key(key: &ManagedKey) -> Result<(KeyEntry, Option<Signer>), SigningKeyError> {
    let material = || SigningKeyError::Material(key.kid.clone());
    let public = || SigningKeyError::Public(key.kid.clone());
    let alg = Alg::from_name(&key.alg)
        .filter(|a| matches!(a, Alg::Es256 | Alg::Rs256 | Alg::EdDsa | Alg::Hs256))
        .ok_or_else(|| SigningKeyError::Algorithm(key.kid.clone()))?;
    if !key.has_private_key() {
        let jwk = key.public_jwk.as_ref().filter(|_| alg != Alg::Hs256);
        let entry = KeyEntry::from_jwk(jwk.ok_or_else(public)?, None).map_err(|_| public())?;
        if entry.kid() != key.kid || !entry.algs().any(|a| a == alg) {
            return Err(public());
        }
        return Ok((entry, None));
    }
    let der = b64::decode_standard(key.private_key.as_bytes()).map_err(|_| material())?;
    let pair = match alg {
        Alg::Es256 => Pair::Ecdsa(
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| material())?,
        ),
        Alg::Rs256 => Pair::Rsa(RsaKeyPair::from_pkcs8(&der).map_err(|_| material())?),
        Alg::EdDsa => {
            Pair::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| material())?)
        }
        _ => {
            if der.len() < 32 {
                return Err(material());
            }
            Pair::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &der)))
        }
    };
    let entry = match (&pair, &key.public_jwk) {
        (Pair::Hmac(_), _) => KeyEntry::hs256(&key.kid, &der),
        (_, Some(jwk)) => KeyEntry::from_jwk(jwk, None),
        (_, None) => return Err(public()),
    }
    .map_err(|_| public())?;
    check_pair_matches(&pair, &entry, alg).map_err(|()| public())?;
    let header = |typ: &str| {
        b64::encode(
            json!({"alg": alg.name(), "kid": key.kid, "typ": typ})
                .to_string()
                .as_bytes(),
        )
    };
    let signer = Signer {
        kid: key.kid.clone(),
        alg,
        access_header: header("at+jwt"),
        feed_header: header(FEED_JWS_TYP),
        schedule: key.clone(),
        pair,
    };
    Ok((entry, Some(signer)))
}

/// Signs a probe with the private key and verifies it with the published key, so that a
/// document whose halves disagree is refused at load instead of minting unverifiable tokens.
fn check_pair_matches(pair: &Pair, entry: &KeyEntry, alg: Alg) -> Result<(), ()> {
    let probe = b"scopegate key check";
    let sig = raw_signature(pair, probe, &SystemRandom::new()).map_err(|_| ())?;
    if entry.verify(alg, probe, &sig) {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine;
    use scopegate_core::jwk::Jwk;

    fn es256(kid: &str) -> ManagedKey {
        let pair =
            EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("keygen");
        let pkcs8 = pair.to_pkcs8v1().expect("pkcs8");
        let point = pair.public_key().as_ref().to_vec();
        let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        ManagedKey {
            kid: kid.into(),
            alg: "ES256".into(),
            published_at: 0,
            activates_at: 10,
            signs_until: 100,
            removed_after: 200,
            private_key: base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref()),
            public_jwk: Some(Jwk {
                kty: "EC".into(),
                kid: Some(kid.into()),
                alg: Some("ES256".into()),
                use_: Some("sig".into()),
                crv: Some("P-256".into()),
                x: Some(b64url(&point[1..33])),
                y: Some(b64url(&point[33..])),
                ..Jwk::default()
            }),
            pending: false,
        }
    }

    fn doc(keys: Vec<ManagedKey>) -> String {
        serde_json::to_string(&SigningKeys { keys }).expect("json")
    }

    #[test]
    fn a_bad_key_is_left_out_and_the_others_load() {
        let mut good = es256("good");
        good.activates_at = 20;
        let mut garbage = es256("garbage");
        garbage.private_key = "bm90IGEga2V5".into();
        let mut mismatched = es256("mismatched");
        mismatched.public_jwk = good.public_jwk.clone().map(|mut j| {
            j.kid = Some("mismatched".into());
            j
        });
        let mut lost = es256("lost");
        lost.private_key.clear();
        lost.signs_until = 20;
        let set = KeySet::load(&doc(vec![good, garbage, mismatched, lost]), 50).expect("loads");
        assert_eq!(set.signer(50).map(|s| s.kid.as_str()), Some("good"));
        let skipped: Vec<&str> = set.skipped().iter().map(SigningKeyError::kid).collect();
        assert_eq!(skipped, ["garbage", "mismatched"]);
        let mut verifying: Vec<&String> = set.verify.keys().collect();
        verifying.sort();
        assert_eq!(
            verifying,
            ["good", "lost"],
            "a public-only key still verifies"
        );
        let published: Vec<String> = set
            .jwks(50)
            .keys
            .into_iter()
            .filter_map(|k| k.kid)
            .collect();
        assert_eq!(published, ["lost", "good"], "a bad key is never published");
    }

    #[test]
    fn a_document_in_which_no_key_loads_is_refused() {
        let mut garbage = es256("garbage");
        garbage.private_key = "bm90IGEga2V5".into();
        assert!(matches!(
            KeySet::load(&doc(vec![garbage]), 50),
            Err(SigningKeyError::Material(kid)) if kid == "garbage"
        ));
        assert!(
            KeySet::load(&doc(vec![]), 50).is_ok(),
            "no key at all is not an error"
        );
    }

    #[test]
    fn the_newest_active_key_failing_stops_signing_instead_of_falling_back() {
        let old = es256("old");
        let mut new = es256("new");
        new.activates_at = 40;
        new.private_key = "bm90IGEga2V5".into();
        let set = KeySet::load(&doc(vec![old, new]), 50).expect("loads");
        assert!(
            set.signer(50).is_none(),
            "no signing with a key out of schedule"
        );
    }
}
