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
//!
//! A verifier that checks the same stored hash on every request parses it once into a
//! [`PreparedHash`]; [`verify`] is the one-off form of the same check.

use argon2::password_hash::phc::{Output, PasswordHash, Salt};
use argon2::{Argon2, PasswordHasher};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// PHC identifier of the fast keyed hash for generated secrets.
pub const HMAC_SCHEME: &str = "scopegate-hmac-sha256";

/// What every hash of [`HMAC_SCHEME`], version 1, starts with (salt and MAC follow).
const HMAC_PREFIX: &str = "$scopegate-hmac-sha256$v=1$";

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
            let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
            let mac = hmac::sign(&key, secret.as_bytes());
            Ok(format!(
                "{HMAC_PREFIX}{}${}",
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

/// Checks `secret` against `phc` once; a caller that checks the same stored hash repeatedly
/// keeps a [`PreparedHash`] instead. `Err` when `phc` is not a hash in a known scheme.
pub fn verify(phc: &str, secret: &str) -> Result<bool, HashError> {
    Ok(PreparedHash::parse(phc)?.verify(secret))
}

/// A stored hash parsed once, so that checking a secret against it costs only the hash
/// function: for the HMAC scheme the salt-keyed HMAC key (its pads precomputed) and the
/// expected MAC; for argon2 the hasher with the stored algorithm, version and parameters,
/// the salt and the expected output.
///
/// Only a string in no known scheme fails to parse. One that parses but can match no secret
/// (an HMAC MAC that is not 32 bytes; an argon2 hash without salt or output, or naming an
/// algorithm, version or parameters argon2 cannot evaluate) refuses every secret.
pub struct PreparedHash(Check);

/// Length of an HMAC-SHA256 output.
const HMAC_LEN: usize = 32;

enum Check {
    /// [`HMAC_SCHEME`] (boxed: aws-lc-rs keeps the whole HMAC context in the key).
    Hmac {
        key: Box<hmac::Key>,
        mac: [u8; HMAC_LEN],
    },
    /// argon2 in any variant, version and parameters the argon2 crate evaluates.
    Argon2 {
        hasher: Argon2<'static>,
        salt: Salt,
        expected: Output,
    },
    /// Matches no secret.
    Nothing,
}

impl PreparedHash {
    /// Parses a stored PHC string. `Err` when it is not a hash in a known scheme.
    pub fn parse(phc: &str) -> Result<Self, HashError> {
        if let Some(rest) = phc.strip_prefix(HMAC_PREFIX) {
            let (salt, mac) = rest.split_once('$').ok_or(HashError::Unknown)?;
            let salt = STANDARD_NO_PAD
                .decode(salt)
                .map_err(|_| HashError::Unknown)?;
            let mac = STANDARD_NO_PAD
                .decode(mac)
                .map_err(|_| HashError::Unknown)?;
            return Ok(PreparedHash(match <[u8; HMAC_LEN]>::try_from(mac) {
                Ok(mac) => Check::Hmac {
                    key: Box::new(hmac::Key::new(hmac::HMAC_SHA256, &salt)),
                    mac,
                },
                Err(_) => Check::Nothing,
            }));
        }
        if phc.starts_with("$argon2") {
            let parsed = PasswordHash::new(phc).map_err(|_| HashError::Unknown)?;
            return Ok(PreparedHash(
                prepare_argon2(&parsed).unwrap_or(Check::Nothing),
            ));
        }
        Err(HashError::Unknown)
    }

    /// Whether `secret` is the one hashed. The HMAC scheme compares in constant time; argon2
    /// compares its output in constant time itself.
    pub fn verify(&self, secret: &str) -> bool {
        match &self.0 {
            Check::Hmac { key, mac } => hmac::verify(key, secret.as_bytes(), mac).is_ok(),
            Check::Argon2 {
                hasher,
                salt,
                expected,
            } => hasher
                .hash_password_with_salt(secret.as_bytes(), salt)
                .is_ok_and(|computed| computed.hash.as_ref() == Some(expected)),
            Check::Nothing => false,
        }
    }

    /// Whether a check is slow enough to be worth caching (argon2).
    pub fn is_slow(&self) -> bool {
        matches!(self.0, Check::Argon2 { .. })
    }
}

impl std::fmt::Debug for PreparedHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.0 {
            Check::Hmac { .. } => HMAC_SCHEME,
            Check::Argon2 { .. } => "argon2",
            Check::Nothing => "none",
        };
        f.debug_tuple("PreparedHash").field(&scheme).finish()
    }
}

/// The argon2 check `PasswordVerifier` would make for `parsed`, resolved once; `None` when
/// it would refuse every secret.
fn prepare_argon2(parsed: &PasswordHash) -> Option<Check> {
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return None;
    };
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm.as_str()).ok()?;
    let version = parsed
        .version
        .map(argon2::Version::try_from)
        .transpose()
        .ok()?
        .unwrap_or_default();
    let params = argon2::Params::try_from(parsed).ok()?;
    Some(Check::Argon2 {
        hasher: Argon2::new(algorithm, version, params),
        salt,
        expected,
    })
}

/// Whether `phc` uses the current scheme and parameters for its kind. A hash that is not
/// current is re-hashed by the operator.
pub fn is_current(phc: &str, kind: SecretKind) -> bool {
    match kind {
        SecretKind::Generated => phc.starts_with(HMAC_PREFIX),
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
    use argon2::PasswordVerifier;
    use proptest::prelude::*;

    /// `verify` as it was before [`PreparedHash`]: the prepared check must answer like it.
    fn reference_verify(phc: &str, secret: &str) -> Result<bool, HashError> {
        if let Some(rest) = phc.strip_prefix(&format!("${HMAC_SCHEME}$v=1$")) {
            let (salt, mac) = rest.split_once('$').ok_or(HashError::Unknown)?;
            let salt = STANDARD_NO_PAD
                .decode(salt)
                .map_err(|_| HashError::Unknown)?;
            let mac = STANDARD_NO_PAD
                .decode(mac)
                .map_err(|_| HashError::Unknown)?;
            let key = hmac::Key::new(hmac::HMAC_SHA256, &salt);
            return Ok(hmac::verify(&key, secret.as_bytes(), &mac).is_ok());
        }
        if phc.starts_with("$argon2") {
            let parsed = PasswordHash::new(phc).map_err(|_| HashError::Unknown)?;
            return Ok(Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok());
        }
        Err(HashError::Unknown)
    }

    /// The prepared check, the one-off `verify` and the reference agree on `phc` and every
    /// secret: the same parse failures, the same answers.
    fn assert_agree(phc: &str, secrets: &[&str]) {
        let prepared = PreparedHash::parse(phc);
        for secret in secrets {
            let reference = reference_verify(phc, secret).ok();
            assert_eq!(prepared.is_ok(), reference.is_some(), "{phc:?}");
            assert_eq!(verify(phc, secret).ok(), reference, "{phc:?} {secret:?}");
            if let Ok(prepared) = &prepared {
                assert_eq!(
                    Some(prepared.verify(secret)),
                    reference,
                    "{phc:?} {secret:?}"
                );
            }
        }
    }

    /// An argon2 hash with cheap parameters (the check's cost does not change its answer).
    fn cheap_argon2(
        algorithm: argon2::Algorithm,
        version: argon2::Version,
        secret: &str,
    ) -> String {
        Argon2::new(
            algorithm,
            version,
            argon2::Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(secret.as_bytes(), b"saltsaltsalt")
        .unwrap()
        .to_string()
    }

    /// Secrets to try against a hash of `secret`: itself, near misses, empty, odd text.
    fn candidates(secret: &str) -> Vec<String> {
        let mut near = secret.to_owned();
        let last = near.pop().map_or('x', |c| if c == 'x' { 'y' } else { 'x' });
        near.push(last);
        vec![
            secret.to_owned(),
            near,
            format!("{secret} "),
            secret.chars().skip(1).collect(),
            String::new(),
            "\0".into(),
            "\u{fffd}\u{fffd}".into(),
            "é\u{1f512}\u{200b}".into(),
            "x".repeat(10_000),
        ]
    }

    #[test]
    fn hmac_prefix_names_the_scheme() {
        assert_eq!(HMAC_PREFIX, format!("${HMAC_SCHEME}$v=1$"));
    }

    #[test]
    fn generated_secret_round_trips_and_rejects_others() {
        let phc = hash("s3cr3t-generated", SecretKind::Generated).unwrap();
        assert!(phc.starts_with("$scopegate-hmac-sha256$v=1$"));
        assert!(verify(&phc, "s3cr3t-generated").unwrap());
        assert!(!verify(&phc, "s3cr3t-generateD").unwrap());
        assert!(!verify(&phc, "").unwrap());
        assert!(is_current(&phc, SecretKind::Generated));
        let prepared = PreparedHash::parse(&phc).unwrap();
        assert!(prepared.verify("s3cr3t-generated"));
        assert!(!prepared.verify("s3cr3t-generateD"));
        assert!(!prepared.is_slow());
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
        let prepared = PreparedHash::parse(&phc).unwrap();
        assert!(prepared.verify("correct horse"));
        assert!(!prepared.verify("correct horsE"));
        assert!(prepared.is_slow());
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
        assert!(PreparedHash::parse(&weak).unwrap().verify("pw"));
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

    #[test]
    fn prepared_agrees_on_every_kind_that_verifies() {
        let secret = "Zq0m3C5o1n8lq5aA6lqX5pQ7b3jX2nK9d4sT1uV8wY0";
        // Current argon2 parameters are in chosen_secret_uses_argon2id_with_current_parameters;
        // cheap ones keep this test fast and do not change the answers.
        let mut hashes = vec![hash(secret, SecretKind::Generated).unwrap()];
        // HMAC salts of any length, including none and longer than SHA-256's block.
        for len in [0, 1, 16, 64, 65, 200] {
            hashes.push(hash_with_salt(secret, SecretKind::Generated, &vec![7u8; len]).unwrap());
        }
        // Deprecated argon2 kinds: every variant, both versions.
        for algorithm in [
            argon2::Algorithm::Argon2d,
            argon2::Algorithm::Argon2i,
            argon2::Algorithm::Argon2id,
        ] {
            for version in [argon2::Version::V0x10, argon2::Version::V0x13] {
                hashes.push(cheap_argon2(algorithm, version, secret));
            }
        }
        let candidates = candidates(secret);
        let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
        for phc in &hashes {
            let prepared = PreparedHash::parse(phc).unwrap();
            assert!(prepared.verify(secret), "{phc}");
            assert_agree(phc, &candidates);
        }
        // Odd secrets verify against their own hashes too.
        for odd in ["", "\0", "\u{fffd}", "é\u{1f512}", "a:b%3A+c"] {
            for phc in [
                hash(odd, SecretKind::Generated).unwrap(),
                cheap_argon2(argon2::Algorithm::Argon2id, argon2::Version::V0x13, odd),
            ] {
                assert!(PreparedHash::parse(&phc).unwrap().verify(odd), "{odd:?}");
                assert_agree(&phc, &[odd, "x"]);
            }
        }
    }

    #[test]
    fn malformed_hashes_fail_closed_as_before() {
        let secret = "s3cr3t";
        let hmac = hash_with_salt(secret, SecretKind::Generated, b"0123456789abcdef").unwrap();
        let (hmac_head, hmac_mac) = hmac.rsplit_once('$').unwrap();
        let argon = cheap_argon2(argon2::Algorithm::Argon2id, argon2::Version::V0x13, secret);
        let (argon_head, _) = argon.rsplit_once('$').unwrap();
        let malformed = [
            String::new(),
            "$".into(),
            secret.into(),
            HMAC_PREFIX.into(),
            format!("{HMAC_PREFIX}$"),
            format!("{HMAC_PREFIX}c2FsdA"),
            format!("{HMAC_PREFIX}!!$AAAA"),
            format!("{hmac}="),
            format!("{hmac}$"),
            format!("{hmac_head}${}", &hmac_mac[1..]),
            format!("{hmac_head}$"),
            format!("{hmac_head}${hmac_mac}AAAA"),
            hmac.replace("v=1", "v=2"),
            hmac.to_uppercase(),
            "$argon2".into(),
            "$argon2id$".into(),
            argon_head.into(),
            format!("{argon_head}$"),
            format!("{argon_head}$c2hvcnQ"),
            format!("{argon}$x"),
            argon.replace("argon2id", "argon2x"),
            argon.replace("v=19", "v=18"),
            argon.replace("m=8", "m=1"),
            argon.replace("t=1", "t=0"),
            argon.replace("p=1", "p=0"),
            argon.replace("p=1", "p=1,q=2"),
            argon.replace("$v=19", "$v="),
            argon.replace("c2FsdHNhbHRzYWx0", "c2FsdA"),
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA".into(),
        ];
        for phc in &malformed {
            assert_ne!(phc, &hmac);
            assert_ne!(phc, &argon);
            assert_agree(phc, &[secret, "", "x"]);
            if let Ok(prepared) = PreparedHash::parse(phc) {
                assert!(!prepared.verify(secret), "{phc:?} authenticates");
            }
        }
    }

    /// Hashes of `secret` to mutate: HMAC, and argon2 of every variant with cheap parameters.
    fn bases(secret: &str) -> Vec<String> {
        vec![
            hash(secret, SecretKind::Generated).unwrap(),
            cheap_argon2(argon2::Algorithm::Argon2id, argon2::Version::V0x13, secret),
            cheap_argon2(argon2::Algorithm::Argon2i, argon2::Version::V0x10, secret),
        ]
    }

    proptest! {
        /// Arbitrary and near-valid stored strings, against the right secret and others.
        #[test]
        fn prepared_agrees_with_reference(
            secret in "\\PC{0,40}",
            other in any::<String>(),
            base in 0usize..3,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), "[A-Za-z0-9+/=$,.-]?"), 0..3),
            truncate in any::<Option<prop::sample::Index>>(),
        ) {
            let mut phc = bases(&secret).swap_remove(base);
            for (at, with) in edits {
                let at = at.index(phc.len());
                if phc.is_char_boundary(at) && phc.is_char_boundary(at + 1) {
                    phc.replace_range(at..at + 1, &with);
                }
            }
            if let Some(at) = truncate {
                let at = at.index(phc.len() + 1);
                if phc.is_char_boundary(at) {
                    phc.truncate(at);
                }
            }
            assert_agree(&phc, &[&secret, &other, ""]);
        }

        /// Stored strings shaped like the two schemes, with any salt, MAC and parameters.
        #[test]
        fn prepared_agrees_on_scheme_shaped_strings(
            hmac_rest in "[A-Za-z0-9+/=$]{0,90}",
            argon in "\\$argon2(id|i|d|x)?(\\$v=(16|19|20))?\\$m=[0-9]{1,2},t=[0-3],p=[0-3](\\$[A-Za-z0-9+/]{0,24}(\\$[A-Za-z0-9+/]{0,60})?)?",
            text in any::<String>(),
            secret in any::<String>(),
        ) {
            for phc in [format!("{HMAC_PREFIX}{hmac_rest}"), argon, text] {
                assert_agree(&phc, &[&secret, ""]);
            }
        }
    }
}
