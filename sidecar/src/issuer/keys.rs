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

use crate::jose::b64;
use crate::jose::jws::KeyMap;
use crate::jose::keys::{Alg, KeyEntry};

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
        let signature = match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(rng, out.as_bytes())
                .map_err(|_| SignError)?
                .as_ref()
                .to_vec(),
            Pair::Ed25519(pair) => pair.sign(out.as_bytes()).as_ref().to_vec(),
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, rng, out.as_bytes(), &mut sig)
                    .map_err(|_| SignError)?;
                sig
            }
            Pair::Hmac(key) => hmac::sign(key, out.as_bytes()).as_ref().to_vec(),
        };
        out.push('.');
        out.push_str(&b64::encode(&signature));
        Ok(out)
    }
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
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signers", &self.signers)
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// Parses the document; keys already removed at `now` are skipped.
    pub fn load(text: &str, now: i64) -> Result<KeySet, SigningKeyError> {
        let doc: SigningKeys = serde_json::from_str(text).map_err(|_| SigningKeyError::Document)?;
        let mut signers = Vec::new();
        let mut verify = KeyMap::new();
        for key in doc.keys.iter().filter(|k| now < k.removed_after) {
            let material = || SigningKeyError::Material(key.kid.clone());
            let alg = Alg::from_name(&key.alg)
                .filter(|a| matches!(a, Alg::Es256 | Alg::Rs256 | Alg::EdDsa | Alg::Hs256))
                .ok_or_else(|| SigningKeyError::Algorithm(key.kid.clone()))?;
            let der = b64::decode_standard(key.private_key.as_bytes()).map_err(|_| material())?;
            let pair = match alg {
                Alg::Es256 => Pair::Ecdsa(
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                        .map_err(|_| material())?,
                ),
                Alg::Rs256 => Pair::Rsa(RsaKeyPair::from_pkcs8(&der).map_err(|_| material())?),
                Alg::EdDsa => Pair::Ed25519(
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| material())?,
                ),
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
                (_, None) => return Err(SigningKeyError::Public(key.kid.clone())),
            }
            .map_err(|_| SigningKeyError::Public(key.kid.clone()))?;
            check_pair_matches(&pair, &entry, alg)
                .map_err(|()| SigningKeyError::Public(key.kid.clone()))?;
            verify.insert(key.kid.clone(), entry);
            let header = |typ: &str| {
                b64::encode(
                    json!({"alg": alg.name(), "kid": key.kid, "typ": typ})
                        .to_string()
                        .as_bytes(),
                )
            };
            signers.push(Signer {
                kid: key.kid.clone(),
                alg,
                access_header: header("at+jwt"),
                feed_header: header(FEED_JWS_TYP),
                schedule: key.clone(),
                pair,
            });
        }
        Ok(KeySet {
            signers,
            doc,
            verify: Arc::new(verify),
        })
    }

    /// The key that signs at `now`, if any may.
    pub fn signer(&self, now: i64) -> Option<&Signer> {
        let kid = &self.doc.signing_key(now)?.kid;
        self.signers.iter().find(|s| &s.kid == kid)
    }

    /// The public keys to publish at `now`.
    pub fn jwks(&self, now: i64) -> Jwks {
        self.doc.published_jwks(now)
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

/// Signs a probe with the private key and verifies it with the published key, so that a
/// document whose halves disagree is refused at load instead of minting unverifiable tokens.
fn check_pair_matches(pair: &Pair, entry: &KeyEntry, alg: Alg) -> Result<(), ()> {
    let probe = b"scopegate key check";
    let rng = SystemRandom::new();
    let sig = match pair {
        Pair::Ecdsa(p) => p.sign(&rng, probe).map_err(|_| ())?.as_ref().to_vec(),
        Pair::Ed25519(p) => p.sign(probe).as_ref().to_vec(),
        Pair::Rsa(p) => {
            let mut sig = vec![0; p.public_modulus_len()];
            p.sign(&signature::RSA_PKCS1_SHA256, &rng, probe, &mut sig)
                .map_err(|_| ())?;
            sig
        }
        Pair::Hmac(k) => hmac::sign(k, probe).as_ref().to_vec(),
    };
    if entry.verify(alg, probe, &sig) {
        Ok(())
    } else {
        Err(())
    }
}
