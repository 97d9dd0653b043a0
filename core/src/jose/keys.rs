//! Verification keys, parsed once when a key set loads.
//!
//! Each [`KeyEntry`] holds the algorithms it may verify with, fixed at load time: the JWK's
//! own `alg`, or (for a foreign JWK without `alg`) every allow-listed algorithm that fits
//! its type and curve. A token's `alg` header only selects among those; it never chooses
//! a key type or brings an algorithm the key was not loaded for.

use aws_lc_rs::{hmac, signature};

use crate::jwk::{Jwk, Jwks};

use super::b64;

/// A JWS algorithm the sidecar verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// HMAC SHA-256 (only the pod's own issuer secrets).
    Hs256,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 SHA-512.
    Rs512,
    /// RSASSA-PSS SHA-256.
    Ps256,
    /// RSASSA-PSS SHA-384.
    Ps384,
    /// RSASSA-PSS SHA-512.
    Ps512,
    /// ECDSA P-256 SHA-256, fixed-length R‖S.
    Es256,
    /// ECDSA P-384 SHA-384, fixed-length R‖S.
    Es384,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Alg {
    /// Every algorithm, for lookups by name.
    pub const ALL: [Alg; 10] = [
        Alg::Hs256,
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    /// The algorithm named exactly so (case-sensitive, as RFC 7518 registers it).
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The registered name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn rsa_params(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

/// Why a key could not be loaded. No variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key has no `kid`.
    #[error("key has no kid")]
    NoKid,
    /// `kty`/`crv` is not a signing key type the sidecar knows.
    #[error("key {kid:?}: unsupported key type or curve")]
    UnsupportedType {
        /// The key id.
        kid: String,
    },
    /// `use` is present and not `sig`.
    #[error("key {kid:?}: use is not \"sig\"")]
    NotForSigning {
        /// The key id.
        kid: String,
    },
    /// `alg` is missing where it is required, unknown, outside the allow-list, or does not
    /// fit the key type.
    #[error("key {kid:?}: algorithm missing, unknown, not allowed or not fitting the key type")]
    Algorithm {
        /// The key id.
        kid: String,
    },
    /// Key members are missing, not base64url, of the wrong length or not a valid key.
    #[error("key {kid:?}: malformed key material")]
    Material {
        /// The key id.
        kid: String,
    },
    /// RSA modulus below 2048 bits, or an HMAC secret shorter than its hash.
    #[error("key {kid:?}: key too short")]
    TooShort {
        /// The key id.
        kid: String,
    },
}

enum Verifier {
    Public(signature::ParsedPublicKey),
    Hmac(Box<hmac::Key>),
}

/// One key, ready to verify with the algorithms it was loaded for.
pub struct KeyEntry {
    kid: String,
    verifiers: Vec<(Alg, Verifier)>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<&str> = self.verifiers.iter().map(|(a, _)| a.name()).collect();
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("algs", &algs)
            .finish()
    }
}

/// Keys of one issuer by `kid`.
pub type KeyMap = std::collections::HashMap<String, KeyEntry>;

/// Loads every usable key of a foreign JWKS document (an `external` issuer's `jwksUri`):
/// keys that cannot be used (not a JWK, unknown type, no kid, an algorithm outside
/// `allowed`) are left out, as RFC 7517 §5 asks, and returned with why.
pub fn load_jwks(
    body: &[u8],
    allowed: &[Alg],
) -> Result<(KeyMap, Vec<KeyError>), serde_json::Error> {
    let mut keys = KeyMap::new();
    let mut skipped = Vec::new();
    for (_, loaded) in foreign_keys(body, allowed)? {
        match loaded {
            Ok(entry) => {
                keys.insert(entry.kid().to_owned(), entry);
            }
            Err(err) => skipped.push(err),
        }
    }
    Ok((keys, skipped))
}

/// The keys of a foreign JWKS document that [`load_jwks`] would load, as JWKs: public
/// members only (a private member an issuer published by mistake is not carried over).
pub fn usable_jwks(body: &[u8], allowed: &[Alg]) -> Result<Jwks, serde_json::Error> {
    let keys = foreign_keys(body, allowed)?
        .into_iter()
        .filter(|(_, loaded)| loaded.is_ok())
        .map(|(jwk, _)| jwk)
        .collect();
    Ok(Jwks { keys })
}

/// A member of a JWKS document, with what loading it gave.
type Loaded = (Jwk, Result<KeyEntry, KeyError>);

/// Each member of a JWKS document that parses as a JWK, with what loading it for `allowed`
/// gives.
fn foreign_keys(body: &[u8], allowed: &[Alg]) -> Result<Vec<Loaded>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct RawJwks {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawJwks = serde_json::from_slice(body)?;
    Ok(raw
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .map(|jwk| {
            let loaded = KeyEntry::from_jwk(&jwk, Some(allowed));
            (jwk, loaded)
        })
        .collect())
}

/// The key type family an algorithm needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec(&'static str),
    Ed25519,
}

fn family(alg: Alg) -> Option<Family> {
    match alg {
        Alg::Hs256 => None,
        Alg::Es256 => Some(Family::Ec("P-256")),
        Alg::Es384 => Some(Family::Ec("P-384")),
        Alg::EdDsa => Some(Family::Ed25519),
        _ => Some(Family::Rsa),
    }
}

fn jwk_family(jwk: &Jwk) -> Option<Family> {
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", None) => Some(Family::Rsa),
        ("EC", Some("P-256")) => Some(Family::Ec("P-256")),
        ("EC", Some("P-384")) => Some(Family::Ec("P-384")),
        ("OKP", Some("Ed25519")) => Some(Family::Ed25519),
        _ => None,
    }
}

/// The algorithms a JWK of family `fam` is loaded for: its own `alg` (known, of its family and
/// in `allowed` when a list is given), or without one every algorithm of `allowed` of its
/// family. A key with neither is refused.
fn accepted_algs(
    alg: Option<&str>,
    fam: Family,
    allowed: Option<&[Alg]>,
    kid: &str,
) -> Result<Vec<Alg>, KeyError> {
    let alg_error = || KeyError::Algorithm {
        kid: kid.to_owned(),
    };
    let algs: Vec<Alg> = match (alg, allowed) {
        (Some(name), allowed) => {
            let alg = Alg::from_name(name).ok_or_else(alg_error)?;
            if allowed.is_some_and(|list| !list.contains(&alg)) || family(alg) != Some(fam) {
                return Err(alg_error());
            }
            vec![alg]
        }
        (None, Some(list)) => list
            .iter()
            .copied()
            .filter(|a| family(*a).as_ref() == Some(&fam))
            .collect(),
        (None, None) => return Err(alg_error()),
    };
    if algs.is_empty() {
        return Err(alg_error());
    }
    Ok(algs)
}

impl KeyEntry {
    /// Loads a public JWK. With `alg` present it must be in `allowed` (when given) and fit
    /// the key; without `alg`, `allowed` must be given (a foreign issuer's allow-list) and
    /// every listed algorithm that fits the key is loaded.
    pub fn from_jwk(jwk: &Jwk, allowed: Option<&[Alg]>) -> Result<KeyEntry, KeyError> {
        let kid = jwk.kid.clone().ok_or(KeyError::NoKid)?;
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(KeyError::NotForSigning { kid });
        }
        let fam = jwk_family(jwk).ok_or_else(|| KeyError::UnsupportedType { kid: kid.clone() })?;
        let algs = accepted_algs(jwk.alg.as_deref(), fam, allowed, &kid)?;
        let material = || KeyError::Material { kid: kid.clone() };
        let decode = |member: &Option<String>| -> Result<Vec<u8>, KeyError> {
            let text = member.as_deref().ok_or_else(material)?;
            b64::decode(text.as_bytes()).map_err(|_| material())
        };
        let verifiers = match fam {
            Family::Ec(curve) => {
                let (len, alg): (usize, &'static signature::EcdsaVerificationAlgorithm) =
                    if curve == "P-256" {
                        (32, &signature::ECDSA_P256_SHA256_FIXED)
                    } else {
                        (48, &signature::ECDSA_P384_SHA384_FIXED)
                    };
                let (x, y) = (decode(&jwk.x)?, decode(&jwk.y)?);
                if x.len() != len || y.len() != len {
                    return Err(material());
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let key = signature::ParsedPublicKey::new(alg, &point).map_err(|_| material())?;
                vec![(algs[0], Verifier::Public(key))]
            }
            Family::Ed25519 => {
                let x = decode(&jwk.x)?;
                if x.len() != 32 {
                    return Err(material());
                }
                let key = signature::ParsedPublicKey::new(&signature::ED25519, &x)
                    .map_err(|_| material())?;
                vec![(algs[0], Verifier::Public(key))]
            }
            Family::Rsa => {
                let (n, e) = (decode(&jwk.n)?, decode(&jwk.e)?);
                let n = strip_leading_zeros(&n);
                if n.len() < 256 {
                    return Err(KeyError::TooShort { kid: kid.clone() });
                }
                let components = signature::RsaPublicKeyComponents {
                    n,
                    e: strip_leading_zeros(&e),
                };
                algs.iter()
                    .map(|alg| {
                        let params = alg.rsa_params().ok_or_else(material)?;
                        let key = components
                            .to_parsed_public_key(params)
                            .map_err(|_| material())?;
                        Ok((*alg, Verifier::Public(key)))
                    })
                    .collect::<Result<_, KeyError>>()?
            }
        };
        Ok(KeyEntry { kid, verifiers })
    }

    /// An HS256 key from a raw secret of at least 32 bytes (RFC 7518 §3.2).
    pub fn hs256(kid: &str, secret: &[u8]) -> Result<KeyEntry, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::TooShort { kid: kid.into() });
        }
        Ok(KeyEntry {
            kid: kid.into(),
            verifiers: vec![(
                Alg::Hs256,
                Verifier::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret))),
            )],
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithms this key verifies.
    pub fn algs(&self) -> impl Iterator<Item = Alg> + '_ {
        self.verifiers.iter().map(|(a, _)| *a)
    }

    /// Verifies `signature` over `message` with `alg`, which must be one the key was loaded
    /// for. HMAC tags are compared in constant time.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        let Some((_, verifier)) = self.verifiers.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        match verifier {
            Verifier::Public(key) => key.verify_sig(message, signature).is_ok(),
            Verifier::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
        }
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}
