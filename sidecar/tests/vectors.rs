//! Key handling against published vectors (RFC 7520 §4, RFC 8037 §A.4: verified, and signed
//! byte for byte by the issuer's signer) and properties of the validator under arbitrary
//! input.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::sync::Arc;

use proptest::prelude::*;
use scopegate_core::jose::jws::{self, KeyMap};
use scopegate_core::jose::keys::{Alg, KeyEntry, KeyError};
use scopegate_core::jwk::Jwk;
use scopegate_core::token::{self, IssuerKeys, TokenRules};

// RFC 7520 §3.3: the RSA public key of the cookbook.
const RFC7520_N: &str = concat!(
    "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT",
    "-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqV",
    "wGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-",
    "oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde",
    "3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuC",
    "LqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5g",
    "HdrNP5zw"
);
const RFC7520_KID: &str = "bilbo.baggins@hobbiton.example";
// RFC 7520 §4: "It’s a dangerous business, Frodo, going out your door. ..."
const RFC7520_PAYLOAD: &str = concat!(
    "SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IH",
    "lvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBk",
    "b24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcm",
    "UgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4"
);
// §4.1.3: RS256.
const RFC7520_4_1: (&str, &str) = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9",
    concat!(
        "MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmK",
        "ZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4J",
        "IwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8w",
        "W1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluP",
        "xUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_f",
        "cIe8u9ipH84ogoree7vjbU5y18kDquDg"
    ),
);
// §4.2.3: PS384.
const RFC7520_4_2: (&str, &str) = (
    "eyJhbGciOiJQUzM4NCIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9",
    concat!(
        "cu22eBqkYDKgIlTpzDXGvaFfz6WGoz7fUDcfT0kkOy42miAh2qyBzk1xEsnk2I",
        "pN6-tPid6VrklHkqsGqDqHCdP6O8TTB5dDDItllVo6_1OLPpcbUrhiUSMxbbXU",
        "vdvWXzg-UD8biiReQFlfz28zGWVsdiNAUf8ZnyPEgVFn442ZdNqiVJRmBqrYRX",
        "e8P_ijQ7p8Vdz0TTrxUeT3lm8d9shnr2lfJT8ImUjvAA2Xez2Mlp8cBE5awDzT",
        "0qI0n6uiP1aCN_2_jLAeQTlqRHtfa64QQSUmFAAjVKPbByi7xho0uTOcbH510a",
        "6GYmJUAfmWjwZ6oD4ifKo8DYM-X72Eaw"
    ),
);
// §3.5 symmetric key and §4.4.3: HS256.
const RFC7520_HMAC_KEY: &str = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg";
const RFC7520_4_4: (&str, &str) = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9",
    "s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0",
);

fn rsa_jwk(alg: Option<&str>) -> Jwk {
    Jwk {
        kty: "RSA".into(),
        kid: Some(RFC7520_KID.into()),
        alg: alg.map(Into::into),
        use_: Some("sig".into()),
        n: Some(RFC7520_N.into()),
        e: Some("AQAB".into()),
        ..Jwk::default()
    }
}

fn keys_of(entry: KeyEntry) -> KeyMap {
    KeyMap::from([(entry.kid().to_owned(), entry)])
}

fn compact((header, signature): (&str, &str)) -> String {
    format!("{header}.{RFC7520_PAYLOAD}.{signature}")
}

#[test]
fn rfc7520_rs256_and_ps384_verify_with_the_cookbook_key() {
    let rs = keys_of(KeyEntry::from_jwk(&rsa_jwk(Some("RS256")), None).unwrap());
    let token = compact(RFC7520_4_1);
    jws::parse(&token).unwrap().verify_with(&rs).unwrap();
    // The same key loaded for RS256 refuses the PS384 example: the key fixes the algorithm.
    let pss = compact(RFC7520_4_2);
    assert_eq!(
        jws::parse(&pss).unwrap().verify_with(&rs),
        Err(jws::JwsError::AlgMismatch)
    );
    // A foreign key without alg verifies both when both are allow-listed.
    let both =
        keys_of(KeyEntry::from_jwk(&rsa_jwk(None), Some(&[Alg::Rs256, Alg::Ps384])).unwrap());
    jws::parse(&token).unwrap().verify_with(&both).unwrap();
    jws::parse(&pss).unwrap().verify_with(&both).unwrap();
    // A tampered payload fails.
    let tampered = token.replacen("SXTigJ", "SXTigK", 1);
    assert_eq!(
        jws::parse(&tampered).unwrap().verify_with(&rs),
        Err(jws::JwsError::Signature)
    );
    // An allow-list without an RSA algorithm loads nothing for this key.
    assert!(matches!(
        KeyEntry::from_jwk(&rsa_jwk(None), Some(&[Alg::Es256])),
        Err(KeyError::Algorithm { .. })
    ));
}

#[test]
fn rfc7520_hs256_verifies_with_the_cookbook_secret() {
    let secret = scopegate_core::jose::b64::decode(RFC7520_HMAC_KEY.as_bytes()).unwrap();
    let entry = KeyEntry::hs256("018c0ae5-4d9b-471b-bfd6-eef314bc7037", &secret).unwrap();
    let keys = keys_of(entry);
    jws::parse(&compact(RFC7520_4_4))
        .unwrap()
        .verify_with(&keys)
        .unwrap();
    assert!(matches!(
        KeyEntry::hs256("short", &secret[..31]),
        Err(KeyError::TooShort { .. })
    ));
}

#[test]
fn rfc7520_p521_key_is_refused_not_misused() {
    let jwk = Jwk {
        kty: "EC".into(),
        kid: Some(RFC7520_KID.into()),
        alg: Some("ES512".into()),
        crv: Some("P-521".into()),
        x: Some("AHKZLLOsCOzz5cY97ewNUajB957y-C-U88c3v13nmGZx6sYl_oJXu9A5RkTKqjqvjyekWF-7ytDyRXYgCF5cj0Kt".into()),
        y: Some("AdymlHvOiLxXkEhayXQnNCvDX4h9htZaCJN34kfmC6pV5OhQHiraVySsUdaQkAgDPrwQrJmbnX9cwlGfP-HqHZR1".into()),
        ..Jwk::default()
    };
    assert!(matches!(
        KeyEntry::from_jwk(&jwk, None),
        Err(KeyError::UnsupportedType { .. })
    ));
}

#[test]
fn rfc8037_a4_ed25519_signature_verifies() {
    let jwk = Jwk {
        kty: "OKP".into(),
        kid: Some("rfc8037".into()),
        alg: Some("EdDSA".into()),
        crv: Some("Ed25519".into()),
        x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()),
        ..Jwk::default()
    };
    let keys = keys_of(KeyEntry::from_jwk(&jwk, None).unwrap());
    // RFC 8037 §A.4 (the private key of §A.1, the public key of §A.2).
    let token = concat!(
        "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.",
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    );
    // The published header has no kid, which the verifier requires of tokens.
    assert_eq!(jws::parse(token).unwrap_err(), jws::JwsError::Kid);
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = scopegate_core::jose::b64::decode(signature.as_bytes()).unwrap();
    let entry = keys.get("rfc8037").unwrap();
    assert!(entry.verify(Alg::EdDsa, input.as_bytes(), &signature));
    assert!(!entry.verify(Alg::EdDsa, b"other message", &signature));
    assert!(!entry.verify(Alg::Es256, input.as_bytes(), &signature));
    // An X25519 key is not a signing key.
    let x25519 = Jwk {
        crv: Some("X25519".into()),
        ..jwk
    };
    assert!(matches!(
        KeyEntry::from_jwk(&x25519, None),
        Err(KeyError::UnsupportedType { .. })
    ));
}

// RFC 8037 §A.1: the Ed25519 private key (seed) and its public key.
const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
// §A.4: the signing input `{"alg":"EdDSA"}` . "Example of Ed25519 signing", and its signature.
const RFC8037_A4_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
const RFC8037_A4_SIGNATURE: &str =
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

/// An issuer signing-keys document holding the §A.1 key (PKCS#8 v1, as the operator stores
/// Ed25519 keys) with `x` as its published public key.
fn rfc8037_signing_keys(x: &str) -> String {
    use base64::Engine as _;
    let seed = scopegate_core::jose::b64::decode(RFC8037_D.as_bytes()).unwrap();
    // RFC 8410 §7: SEQUENCE { version 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING {
    // OCTET STRING seed } }.
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    serde_json::json!({"keys": [{
        "kid": "rfc8037", "alg": "EdDSA", "publishedAt": 0, "activatesAt": 0,
        "signsUntil": 4_000_000_000_i64, "removedAfter": 4_100_000_000_i64,
        "privateKey": base64::engine::general_purpose::STANDARD.encode(&pkcs8),
        "publicJwk": {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "rfc8037", "alg": "EdDSA", "use": "sig"}
    }]})
    .to_string()
}

#[test]
fn rfc8037_a4_the_issuer_signs_the_published_bytes() {
    use scopegate_issuer::keys::{JwsKind, KeySet};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let set = KeySet::load(&rfc8037_signing_keys(RFC8037_X), 1_000).unwrap();
    let signer = set.signer(1_000).expect("the §A.1 key signs");
    let signature = signer.signature(RFC8037_A4_INPUT.as_bytes(), &rng).unwrap();
    assert_eq!(
        scopegate_core::jose::b64::encode(&signature),
        RFC8037_A4_SIGNATURE,
        "Ed25519 is deterministic: the issuer's signature is §A.4's, byte for byte"
    );
    // A token the issuer makes with the key verifies under the §A.2 public key only.
    let token = signer
        .sign(JwsKind::AccessToken, br#"{"sub":"x"}"#, &rng)
        .unwrap();
    let parsed = jws::parse(&token).unwrap();
    parsed.verify_with(&set.verify).unwrap();
    let other = support::SigningKey::ed25519();
    let impostor = keys_of(KeyEntry::from_jwk(&other.jwk("rfc8037", Some("EdDSA")), None).unwrap());
    assert_eq!(parsed.verify_with(&impostor), Err(jws::JwsError::Signature));
    // The attacker's document: the §A.1 private key published under another public key. The
    // halves disagree, so the key neither signs nor is published (it would mint tokens no
    // verifier accepts, or vouch for a key the issuer does not hold).
    let foreign_x = other.jwk("rfc8037", Some("EdDSA")).x.unwrap();
    let mismatched = KeySet::load(&rfc8037_signing_keys(&foreign_x), 1_000);
    assert!(
        mismatched.is_err(),
        "the only key does not load, so the document is refused"
    );
}

#[test]
fn malformed_public_keys_are_refused() {
    let (key, _) = support::SigningKey::es256();
    let mut jwk = key.jwk("k", Some("ES256"));
    jwk.x = Some("AAAA".into());
    assert!(matches!(
        KeyEntry::from_jwk(&jwk, None),
        Err(KeyError::Material { .. })
    ));
    let mut jwk = key.jwk("k", Some("ES256"));
    jwk.use_ = Some("enc".into());
    assert!(matches!(
        KeyEntry::from_jwk(&jwk, None),
        Err(KeyError::NotForSigning { .. })
    ));
    let mut jwk = key.jwk("k", Some("RS256"));
    jwk.crv = Some("P-256".into());
    assert!(matches!(
        KeyEntry::from_jwk(&jwk, None),
        Err(KeyError::Algorithm { .. })
    ));
    let short_rsa = Jwk {
        n: Some(scopegate_core::jose::b64::encode(&[0xC5; 128])),
        ..rsa_jwk(Some("RS256"))
    };
    assert!(matches!(
        KeyEntry::from_jwk(&short_rsa, None),
        Err(KeyError::TooShort { .. })
    ));
}

fn validator_keys() -> (support::SigningKey, IssuerKeys) {
    let (key, _) = support::SigningKey::es256();
    let entry = KeyEntry::from_jwk(&key.jwk("k1", Some("ES256")), None).unwrap();
    let keys = IssuerKeys {
        keys: Arc::new(keys_of(entry)),
        allow_jwt_typ: false,
        scopes: None,
        audiences: None,
    };
    (key, keys)
}

fn rules() -> TokenRules {
    TokenRules {
        audiences: vec![support::AUDIENCE.into()],
        leeway_secs: 30,
        max_token_bytes: 8192,
        keep_claims: false,
        kept_claims: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_validator_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let (_, keys) = validator_keys();
        let _ = token::validate(&text, &rules(), |_| Some(keys.clone()), 0);
    }

    #[test]
    fn the_validator_never_panics_on_token_shaped_text(
        parts in proptest::collection::vec("[A-Za-z0-9_=+/.-]{0,80}", 0..5)
    ) {
        let (_, keys) = validator_keys();
        let _ = token::validate(&parts.join("."), &rules(), |_| Some(keys.clone()), 0);
    }

    #[test]
    fn the_validator_never_panics_on_signed_arbitrary_json(
        header in "\\PC{0,60}", claims in "\\PC{0,200}"
    ) {
        let (key, keys) = validator_keys();
        let token = support::mint_raw(&key, &header, claims.as_bytes());
        prop_assert!(token::validate(&token, &rules(), |_| Some(keys.clone()), 0).is_err());
    }

    #[test]
    fn valid_tokens_pass_and_any_single_byte_change_fails(index in 0usize..2000, bit in 0u8..8) {
        let (key, keys) = validator_keys();
        let token = support::mint(&key, &support::header("ES256", "k1"), &support::claims("read:items"));
        let now = support::now();
        prop_assert!(token::validate(&token, &rules(), |_| Some(keys.clone()), now).is_ok());
        let mut bytes = token.into_bytes();
        let i = index % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(mutated) = String::from_utf8(bytes) {
            let result = token::validate(&mutated, &rules(), |_| Some(keys.clone()), now);
            prop_assert!(result.is_err(), "byte {} bit {} still valid", i, bit);
        }
    }
}
