//! Client-secret hashes in PHC string format, shared by the operator (which hashes) and the
//! issuer (which verifies).
//!
//! Two current schemes:
//! - generated secrets (256 random bits) get `$scopegate-hmac-sha256$v=1$<salt>$<mac>`, an
//!   HMAC-SHA256 keyed with a random salt: a slow hash buys nothing against a secret with full
//!   entropy and would make every token request pay for it;
//! - human-chosen secrets get argon2id with OWASP's parameters (m=19456 KiB, t=2, p=1).
//!
//! Anything else verifies if the scheme is known but counts as deprecated, so the operator
//! re-hashes it from the plaintext in the client's Secret.

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// PHC identifier of the fast keyed hash for generated secrets.
pub const HMAC_SCHEME: &str = "scopegate-hmac-sha256";

/// argon2id memory cost in KiB.
pub const ARGON2_M_COST: u32 = 19_456;
/// argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id parallelism.
pub const ARGON2_P_COST: u32 = 1;

/// Why a secret could not be hashed or a hash could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The stored string is not a hash in a known scheme.
    #[error("not a PHC hash in a known scheme")]
    Unknown,
    /// argon2 refused the parameters or input.
    #[error("argon2 failed: {0}")]
    Argon2(String),
}

/// Which kind of secret is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Made by the operator: 256 random bits.
    Generated,
    /// Chosen by a person.
    Chosen,
}

/// Hashes `secret` with the current scheme for its kind and a fresh random salt.
pub fn hash(secret: &str, kind: SecretKind) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| HashError::Argon2("no randomness".into()))?;
    hash_with_salt(secret, kind, &salt)
}

/// Hashes with a given salt (for tests and reproducible vectors).
pub fn hash_with_salt(secret: &str, kind: SecretKind, salt: &[u8]) -> Result<String, HashError> {
    match kind {
        SecretKind::Generated => {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, salt);
            let mac = aws_lc_rs::hmac::sign(&key, secret.as_bytes());
            Ok(format!(
                "${HMAC_SCHEME}$v=1${}${}",
                STANDARD_NO_PAD.encode(salt),
                STANDARD_NO_PAD.encode(mac.as_ref())
            ))
        }
        SecretKind::Chosen => {
            let hash = argon2_current()?
                .hash_password_with_salt(secret.as_bytes(), salt)
                .map_err(|e| HashError::Argon2(e.to_string()))?;
            Ok(hash.to_string())
        }
    }
}

/// Checks `secret` against `phc` in constant time (for the HMAC scheme; argon2 compares its
/// output in constant time itself).
pub fn verify(phc: &str, secret: &str) -> Result<bool, HashError> {
    if let Some(rest) = phc.strip_prefix(&format!("${HMAC_SCHEME}$v=1$")) {
        let (salt, mac) = rest.split_once('$').ok_or(HashError::Unknown)?;
        let salt = STANDARD_NO_PAD
            .decode(salt)
            .map_err(|_| HashError::Unknown)?;
        let mac = STANDARD_NO_PAD
            .decode(mac)
            .map_err(|_| HashError::Unknown)?;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &salt);
        return Ok(aws_lc_rs::hmac::verify(&key, secret.as_bytes(), &mac).is_ok());
    }
    if phc.starts_with("$argon2") {
        let parsed = PasswordHash::new(phc).map_err(|_| HashError::Unknown)?;
        return Ok(Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok());
    }
    Err(HashError::Unknown)
}

/// Whether `phc` uses the current scheme and parameters for its kind. A hash that is not
/// current is re-hashed by the operator.
pub fn is_current(phc: &str, kind: SecretKind) -> bool {
    match kind {
        SecretKind::Generated => phc.starts_with(&format!("${HMAC_SCHEME}$v=1$")),
        SecretKind::Chosen => {
            let Ok(parsed) = PasswordHash::new(phc) else {
                return false;
            };
            let param = |name: &str| parsed.params.get_decimal(name);
            parsed.algorithm.as_str() == "argon2id"
                && parsed.version == Some(0x13)
                && param("m") == Some(ARGON2_M_COST)
                && param("t") == Some(ARGON2_T_COST)
                && param("p") == Some(ARGON2_P_COST)
        }
    }
}

/// Whether verifying `phc` is slow enough to be worth caching (argon2).
pub fn is_slow(phc: &str) -> bool {
    phc.starts_with("$argon2")
}

fn argon2_current() -> Result<Argon2<'static>, HashError> {
    let params = argon2::Params::new(ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_round_trips_and_rejects_others() {
        let phc = hash("s3cr3t-generated", SecretKind::Generated).unwrap();
        assert!(phc.starts_with("$scopegate-hmac-sha256$v=1$"));
        assert!(verify(&phc, "s3cr3t-generated").unwrap());
        assert!(!verify(&phc, "s3cr3t-generateD").unwrap());
        assert!(!verify(&phc, "").unwrap());
        assert!(is_current(&phc, SecretKind::Generated));
        assert!(!is_slow(&phc));
    }

    #[test]
    fn salts_differ_so_equal_secrets_hash_differently() {
        let a = hash("same", SecretKind::Generated).unwrap();
        let b = hash("same", SecretKind::Generated).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn chosen_secret_uses_argon2id_with_current_parameters() {
        let phc = hash_with_salt("correct horse", SecretKind::Chosen, b"saltsaltsalt").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(&phc, "correct horse").unwrap());
        assert!(!verify(&phc, "correct horsE").unwrap());
        assert!(is_current(&phc, SecretKind::Chosen));
        assert!(is_slow(&phc));
    }

    #[test]
    fn weaker_argon2_parameters_verify_but_are_deprecated() {
        let weak = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(4096, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(b"pw", b"saltsaltsalt")
        .unwrap()
        .to_string();
        assert!(verify(&weak, "pw").unwrap());
        assert!(!is_current(&weak, SecretKind::Chosen));
    }

    #[test]
    fn unknown_schemes_are_refused() {
        assert!(matches!(verify("$md5$abc", "x"), Err(HashError::Unknown)));
        assert!(matches!(
            verify("plaintext", "plaintext"),
            Err(HashError::Unknown)
        ));
        assert!(!is_current("$sha256$abc", SecretKind::Generated));
    }
}
