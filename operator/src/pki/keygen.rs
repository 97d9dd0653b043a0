//! Signing-key generation with aws-lc-rs: private keys as PKCS#8, public keys as JWKs whose
//! kid is the RFC 7638 thumbprint. HS256 secrets get a random kid, since a thumbprint of a
//! secret would publish a hash of it.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair,
    RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use scopegate_core::jwk::Jwk;
use scopegate_core::keys::ManagedKey;
use scopegate_crds::v1alpha1::Algorithm;

use crate::pki::rotation::NewKeyMaterial;

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
            let jwk = ec_jwk(pair.public_key().as_ref()).ok_or_else(err)?;
            Ok(finish(jwk, name, pkcs8.as_ref()))
        }
        Algorithm::EdDSA => {
            let pair = Ed25519KeyPair::generate().map_err(|_| err())?;
            let pkcs8 = pair.to_pkcs8().map_err(|_| err())?;
            Ok(finish(
                ed_jwk(pair.public_key().as_ref()),
                name,
                pkcs8.as_ref(),
            ))
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
            Ok(finish(rsa_jwk(&pair), name, pkcs8.as_ref()))
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

/// The public members of a P-256 key from its uncompressed point (0x04 || x || y).
fn ec_jwk(point: &[u8]) -> Option<Jwk> {
    let (x, y) = point
        .strip_prefix(&[4u8])
        .filter(|xy| xy.len() == 64)
        .map(|xy| xy.split_at(32))?;
    Some(Jwk {
        kty: "EC".into(),
        crv: Some("P-256".into()),
        x: Some(URL_SAFE_NO_PAD.encode(x)),
        y: Some(URL_SAFE_NO_PAD.encode(y)),
        ..Jwk::default()
    })
}

fn ed_jwk(public: &[u8]) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: Some("Ed25519".into()),
        x: Some(URL_SAFE_NO_PAD.encode(public)),
        ..Jwk::default()
    }
}

fn rsa_jwk(pair: &RsaKeyPair) -> Jwk {
    let public = pair.public_key();
    Jwk {
        kty: "RSA".into(),
        n: Some(URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero())),
        e: Some(URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())),
        ..Jwk::default()
    }
}

/// Why a stored key is unusable. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// Not an algorithm scopegate signs with.
    #[error("algorithm {0:?} is not one scopegate signs with (ES256, RS256, EdDSA, HS256)")]
    Algorithm(String),
    /// The private half is not standard base64.
    #[error("the private key is not base64")]
    Encoding,
    /// The private half does not parse as a key of the algorithm (wrong type or curve).
    #[error("the private key is not a PKCS#8 {0} key")]
    Private(String),
    /// An RSA modulus below 2048 bits.
    #[error("the RSA key has {0} bits; at least 2048 are required")]
    RsaSize(usize),
    /// An HS256 secret below 256 bits.
    #[error("the HS256 secret has {0} bytes; at least 32 are required")]
    SecretSize(usize),
    /// The public JWK is missing, malformed, or of another type or curve.
    #[error("the public JWK is missing, malformed or not a {0} key")]
    Public(String),
    /// The public JWK is not the public half of the private key.
    #[error("the public JWK does not match the private key")]
    Mismatch,
    /// The kid is not the RFC 7638 thumbprint of the public key (or the JWK names another).
    #[error("the key id is not the thumbprint of its public key")]
    Kid,
    /// An HS256 secret with a public JWK: publishing it would publish the secret's use.
    #[error("an HS256 key must never carry a public JWK")]
    PublishedSecret,
    /// activates ≤ signs-until ≤ removed-after does not hold.
    #[error("its times are out of order")]
    Schedule,
}

/// Parses and checks a stored key before it is published: the algorithm, the private half
/// (type, curve, size), the public JWK (well formed, of the same type, the public half of the
/// private key, its kid the RFC 7638 thumbprint) and the order of its times. A public-only key
/// (private half lost) has its public JWK checked alone.
pub fn check(key: &ManagedKey) -> Result<(), KeyProblem> {
    if !(key.activates_at <= key.signs_until && key.signs_until <= key.removed_after) {
        return Err(KeyProblem::Schedule);
    }
    let alg = key.alg.as_str();
    let public_problem = || KeyProblem::Public(alg.to_owned());
    if alg == "HS256" {
        if key.public_jwk.is_some() {
            return Err(KeyProblem::PublishedSecret);
        }
        let secret = STANDARD
            .decode(&key.private_key)
            .map_err(|_| KeyProblem::Encoding)?;
        return if secret.len() < 32 {
            Err(KeyProblem::SecretSize(secret.len()))
        } else {
            Ok(())
        };
    }
    if !matches!(alg, "ES256" | "RS256" | "EdDSA") {
        return Err(KeyProblem::Algorithm(key.alg.clone()));
    }
    let jwk = key.public_jwk.as_ref().ok_or_else(public_problem)?;
    check_public(jwk, alg)?;
    if jwk.kid.as_deref() != Some(key.kid.as_str()) || thumbprint(jwk) != key.kid {
        return Err(KeyProblem::Kid);
    }
    if !key.has_private_key() {
        return Ok(());
    }
    let der = STANDARD
        .decode(&key.private_key)
        .map_err(|_| KeyProblem::Encoding)?;
    let private_problem = || KeyProblem::Private(alg.to_owned());
    let derived = match alg {
        "ES256" => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| private_problem())?;
            ec_jwk(pair.public_key().as_ref()).ok_or_else(private_problem)?
        }
        "EdDSA" => {
            let pair =
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| private_problem())?;
            ed_jwk(pair.public_key().as_ref())
        }
        _ => {
            let pair = RsaKeyPair::from_pkcs8(&der).map_err(|_| private_problem())?;
            let bits = pair.public_modulus_len() * 8;
            if bits < 2048 {
                return Err(KeyProblem::RsaSize(bits));
            }
            rsa_jwk(&pair)
        }
    };
    let members = |j: &Jwk| {
        (
            j.kty.clone(),
            j.crv.clone(),
            j.x.clone(),
            j.y.clone(),
            j.n.clone(),
            j.e.clone(),
        )
    };
    if members(&derived) != members(jwk) {
        return Err(KeyProblem::Mismatch);
    }
    Ok(())
}

/// Checks a public JWK for `alg`: its type and curve, `alg` and `use` members when present,
/// and key material that parses (a point on the curve, an RSA modulus of 2048 bits or more).
pub fn check_public(jwk: &Jwk, alg: &str) -> Result<(), KeyProblem> {
    let problem = || KeyProblem::Public(alg.to_owned());
    if jwk.alg.as_deref() != Some(alg) || jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(problem());
    }
    let decode = |member: &Option<String>| {
        member
            .as_deref()
            .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
            .ok_or_else(problem)
    };
    match (alg, jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("ES256", "EC", Some("P-256")) => {
            let (x, y) = (decode(&jwk.x)?, decode(&jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err(problem());
            }
            let point = [&[4u8][..], &x, &y].concat();
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).map_err(|_| problem())?;
        }
        ("EdDSA", "OKP", Some("Ed25519")) => {
            let x = decode(&jwk.x)?;
            if x.len() != 32 {
                return Err(problem());
            }
            ParsedPublicKey::new(&ED25519, &x).map_err(|_| problem())?;
        }
        ("RS256", "RSA", None) => {
            let (n, e) = (decode(&jwk.n)?, decode(&jwk.e)?);
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(KeyProblem::RsaSize(bits));
            }
            RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                .map_err(|_| problem())?;
        }
        _ => return Err(problem()),
    }
    Ok(())
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

    /// RFC 8037 §A.3: the thumbprint of the §A.2 Ed25519 public key. Only the required
    /// members count, so an attacker cannot make one key look like another by adding
    /// members, and any change of a required member gives another key id.
    #[test]
    fn thumbprint_matches_rfc_8037_a3() {
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()),
            ..Jwk::default()
        };
        let expected = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
        assert_eq!(thumbprint(&jwk), expected);
        let decorated = Jwk {
            kid: Some("chosen-by-the-attacker".into()),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
            ..jwk.clone()
        };
        assert_eq!(thumbprint(&decorated), expected, "optional members ignored");
        for other in [
            Jwk {
                crv: Some("X25519".into()),
                ..jwk.clone()
            },
            Jwk {
                x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURp".into()),
                ..jwk.clone()
            },
            Jwk {
                kty: "EC".into(),
                ..jwk.clone()
            },
        ] {
            assert_ne!(thumbprint(&other), expected, "{other:?}");
        }
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

    fn managed(alg: Algorithm) -> ManagedKey {
        let material = generate(alg, Some(2048)).unwrap();
        ManagedKey {
            kid: material.kid,
            alg: alg_name(alg).into(),
            published_at: 0,
            activates_at: 10,
            signs_until: 20,
            removed_after: 30,
            private_key: material.private_key,
            public_jwk: material.public_jwk,
            pending: false,
        }
    }

    #[test]
    fn generated_keys_pass_the_check() {
        for alg in [
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::HS256,
        ] {
            assert_eq!(check(&managed(alg)), Ok(()), "{alg:?}");
        }
        let mut public_only = managed(Algorithm::ES256);
        public_only.private_key.clear();
        assert_eq!(check(&public_only), Ok(()));
    }

    #[test]
    fn garbage_key_material_is_refused_with_its_reason() {
        let es = managed(Algorithm::ES256);
        let other = managed(Algorithm::ES256);
        let ed = managed(Algorithm::EdDSA);
        let with = |edit: &dyn Fn(&mut ManagedKey)| {
            let mut key = es.clone();
            edit(&mut key);
            check(&key)
        };
        assert_eq!(
            with(&|k| k.private_key = "!!".into()),
            Err(KeyProblem::Encoding)
        );
        assert_eq!(
            with(&|k| k.private_key = STANDARD.encode(b"not a key")),
            Err(KeyProblem::Private("ES256".into()))
        );
        // An Ed25519 private key under an ES256 label: the wrong curve.
        assert_eq!(
            with(&|k| k.private_key = ed.private_key.clone()),
            Err(KeyProblem::Private("ES256".into()))
        );
        // Halves of two different keys.
        assert_eq!(
            with(&|k| k.private_key = other.private_key.clone()),
            Err(KeyProblem::Mismatch)
        );
        // A point that is not on the curve.
        assert_eq!(
            with(&|k| {
                let jwk = k.public_jwk.as_mut().unwrap();
                jwk.y = jwk.x.clone();
            }),
            Err(KeyProblem::Public("ES256".into()))
        );
        // Another key's public half under this kid.
        assert_eq!(
            with(&|k| {
                let mut jwk = other.public_jwk.clone().unwrap();
                jwk.kid = Some(k.kid.clone());
                k.public_jwk = Some(jwk);
            }),
            Err(KeyProblem::Kid)
        );
        assert_eq!(with(&|k| k.kid = "chosen".into()), Err(KeyProblem::Kid));
        assert_eq!(
            with(&|k| k.alg = "none".into()),
            Err(KeyProblem::Algorithm("none".into()))
        );
        assert_eq!(
            with(&|k| k.alg = "EdDSA".into()),
            Err(KeyProblem::Public("EdDSA".into()))
        );
        assert_eq!(with(&|k| k.signs_until = 5), Err(KeyProblem::Schedule));
        let mut secret = managed(Algorithm::HS256);
        secret.public_jwk = es.public_jwk.clone();
        assert_eq!(check(&secret), Err(KeyProblem::PublishedSecret));
        secret.public_jwk = None;
        secret.private_key = STANDARD.encode([7u8; 16]);
        assert_eq!(check(&secret), Err(KeyProblem::SecretSize(16)));
    }

    #[test]
    fn short_rsa_keys_are_refused() {
        let mut key = managed(Algorithm::RS256);
        let jwk = key.public_jwk.as_mut().unwrap();
        let n = URL_SAFE_NO_PAD.decode(jwk.n.as_deref().unwrap()).unwrap();
        jwk.n = Some(URL_SAFE_NO_PAD.encode(&n[..128]));
        assert_eq!(check_public(jwk, "RS256"), Err(KeyProblem::RsaSize(1024)));
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
