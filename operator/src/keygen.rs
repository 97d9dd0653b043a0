//! Signing-key generation with aws-lc-rs: private keys as PKCS#8, public keys as JWKs whose
//! kid is the RFC 7638 thumbprint. HS256 secrets get a random kid, since a thumbprint of a
//! secret would publish a hash of it.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use scopegate_core::jwk::Jwk;
use scopegate_crds::v1alpha1::Algorithm;

use crate::rotation::NewKeyMaterial;

/// Key generation failed inside the crypto library.
#[derive(Debug, thiserror::Error)]
#[error("generating a {alg} signing key failed")]
pub struct KeygenError {
    alg: &'static str,
}

/// The JWS name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
    }
}

/// Generates a new signing key for `alg` (`rsa_bits` 2048 or 3072 for RS256).
pub fn generate(alg: Algorithm, rsa_bits: Option<i32>) -> Result<NewKeyMaterial, KeygenError> {
    let name = alg_name(alg);
    let err = || KeygenError { alg: name };
    match alg {
        Algorithm::ES256 => {
            let pair =
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| err())?;
            let pkcs8 = pair.to_pkcs8v1().map_err(|_| err())?;
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let (x, y) = point.get(1..).map(|xy| xy.split_at(32)).ok_or_else(err)?;
            let jwk = Jwk {
                kty: "EC".into(),
                crv: Some("P-256".into()),
                x: Some(URL_SAFE_NO_PAD.encode(x)),
                y: Some(URL_SAFE_NO_PAD.encode(y)),
                ..Jwk::default()
            };
            Ok(finish(jwk, name, pkcs8.as_ref()))
        }
        Algorithm::EdDSA => {
            let pair = Ed25519KeyPair::generate().map_err(|_| err())?;
            let pkcs8 = pair.to_pkcs8().map_err(|_| err())?;
            let jwk = Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
                ..Jwk::default()
            };
            Ok(finish(jwk, name, pkcs8.as_ref()))
        }
        Algorithm::RS256 => {
            let size = if rsa_bits == Some(3072) {
                KeySize::Rsa3072
            } else {
                KeySize::Rsa2048
            };
            let pair = RsaKeyPair::generate(size).map_err(|_| err())?;
            let pkcs8 =
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).map_err(|_| err())?;
            let public = pair.public_key();
            let jwk = Jwk {
                kty: "RSA".into(),
                n: Some(URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero())),
                e: Some(
                    URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                ),
                ..Jwk::default()
            };
            Ok(finish(jwk, name, pkcs8.as_ref()))
        }
        Algorithm::HS256 => {
            let rng = SystemRandom::new();
            let mut secret = [0u8; 32];
            rng.fill(&mut secret).map_err(|_| err())?;
            let mut kid = [0u8; 16];
            rng.fill(&mut kid).map_err(|_| err())?;
            Ok(NewKeyMaterial {
                kid: URL_SAFE_NO_PAD.encode(kid),
                private_key: STANDARD.encode(secret),
                public_jwk: None,
            })
        }
        _ => Err(err()),
    }
}

fn finish(mut jwk: Jwk, alg: &str, pkcs8: &[u8]) -> NewKeyMaterial {
    let kid = thumbprint(&jwk);
    jwk.kid = Some(kid.clone());
    jwk.alg = Some(alg.into());
    jwk.use_ = Some("sig".into());
    NewKeyMaterial {
        kid,
        private_key: STANDARD.encode(pkcs8),
        public_jwk: Some(jwk),
    }
}

/// The RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order,
/// without whitespace, base64url-encoded.
pub fn thumbprint(jwk: &Jwk) -> String {
    let member = |v: &Option<String>| v.as_deref().unwrap_or_default().to_owned();
    let canonical = match jwk.kty.as_str() {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            member(&jwk.crv),
            member(&jwk.x),
            member(&jwk.y)
        ),
        "RSA" => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            member(&jwk.e),
            member(&jwk.n)
        ),
        _ => format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#,
            member(&jwk.crv),
            jwk.kty,
            member(&jwk.x)
        ),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
    };

    /// RFC 7638 §3.1 example.
    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        let jwk = Jwk {
            kty: "RSA".into(),
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_sign_and_verify_with_their_published_jwk() {
        for (alg, bits) in [
            (Algorithm::ES256, None),
            (Algorithm::EdDSA, None),
            (Algorithm::RS256, Some(2048)),
        ] {
            let key = generate(alg, bits).unwrap();
            let jwk = key.public_jwk.clone().unwrap();
            assert_eq!(jwk.kid.as_deref(), Some(key.kid.as_str()));
            assert_eq!(thumbprint(&jwk), key.kid);
            assert_eq!(jwk.use_.as_deref(), Some("sig"));
            let der = STANDARD.decode(&key.private_key).unwrap();
            let msg = b"header.payload";
            let rng = SystemRandom::new();
            let b64 = |v: &Option<String>| URL_SAFE_NO_PAD.decode(v.as_deref().unwrap()).unwrap();
            match alg {
                Algorithm::ES256 => {
                    let pair =
                        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
                    let sig = pair.sign(&rng, msg).unwrap();
                    let mut point = vec![4u8];
                    point.extend(b64(&jwk.x));
                    point.extend(b64(&jwk.y));
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                        .verify(msg, sig.as_ref())
                        .unwrap();
                }
                Algorithm::EdDSA => {
                    let pair = Ed25519KeyPair::from_pkcs8(&der).unwrap();
                    let sig = pair.sign(msg);
                    UnparsedPublicKey::new(&ED25519, b64(&jwk.x))
                        .verify(msg, sig.as_ref())
                        .unwrap();
                }
                _ => {
                    let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
                    assert_eq!(pair.public_modulus_len(), 256);
                    let mut sig = vec![0; pair.public_modulus_len()];
                    pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                        .unwrap();
                    let public = aws_lc_rs::signature::RsaPublicKeyComponents {
                        n: b64(&jwk.n),
                        e: b64(&jwk.e),
                    };
                    public
                        .verify(&RSA_PKCS1_2048_8192_SHA256, msg, &sig)
                        .unwrap();
                }
            }
        }
    }

    #[test]
    fn rsa_3072_when_asked() {
        let key = generate(Algorithm::RS256, Some(3072)).unwrap();
        let der = STANDARD.decode(&key.private_key).unwrap();
        assert_eq!(
            RsaKeyPair::from_pkcs8(&der).unwrap().public_modulus_len(),
            384
        );
    }

    #[test]
    fn hs256_is_a_256_bit_secret_with_a_random_unpublished_kid() {
        let a = generate(Algorithm::HS256, None).unwrap();
        let b = generate(Algorithm::HS256, None).unwrap();
        assert!(a.public_jwk.is_none());
        assert_eq!(STANDARD.decode(&a.private_key).unwrap().len(), 32);
        assert_ne!(a.kid, b.kid);
        assert_ne!(a.private_key, b.private_key);
    }
}
