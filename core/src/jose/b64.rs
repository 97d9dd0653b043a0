//! Strict base64url without padding (RFC 7515 §2): no `=`, no `+` or `/`, no whitespace,
//! and the unused low bits of the last character must be zero so that every byte string
//! has exactly one spelling. One engine of the `base64` crate, configured that strictly.

use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::{DecodeError, Engine as _, alphabet};

/// Why a base64url segment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum B64Error {
    /// A character outside the base64url alphabet (padding and whitespace included).
    #[error("character outside the base64url alphabet")]
    Alphabet,
    /// A length no encoding produces (1 mod 4).
    #[error("impossible base64url length")]
    Length,
    /// Non-zero unused bits in the last character.
    #[error("non-canonical base64url")]
    NonCanonical,
}

/// Unpadded base64url that refuses padding and non-zero unused bits.
const URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Padded standard base64, canonical: padding required, no non-zero unused bits.
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_allow_trailing_bits(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

impl From<DecodeError> for B64Error {
    fn from(err: DecodeError) -> Self {
        match err {
            DecodeError::InvalidByte(..) | DecodeError::InvalidPadding => B64Error::Alphabet,
            DecodeError::InvalidLength(_) => B64Error::Length,
            DecodeError::InvalidLastSymbol { .. } => B64Error::NonCanonical,
        }
    }
}

/// Decodes strict unpadded base64url.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, B64Error> {
    Ok(URL.decode(text)?)
}

/// Decodes strict unpadded base64url, appending to `out`.
pub fn decode_into(text: &[u8], out: &mut Vec<u8>) -> Result<(), B64Error> {
    Ok(URL.decode_vec(text, out)?)
}

/// Decodes standard padded base64 (RFC 4648 §4), as the signing-keys document stores
/// secrets.
pub fn decode_standard(text: &[u8]) -> Result<Vec<u8>, B64Error> {
    Ok(STANDARD.decode(text)?)
}

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL.encode(bytes)
}

/// Encodes bytes as padded standard base64 (RFC 4648 §4), as HTTP Basic credentials are.
pub fn encode_standard(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc4648_vectors_in_the_url_alphabet() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn refuses_padding_standard_alphabet_whitespace_and_odd_bits() {
        assert_eq!(decode(b"Zg=="), Err(B64Error::Alphabet));
        assert_eq!(decode(b"+/8"), Err(B64Error::Alphabet));
        assert_eq!(decode(b"Zm9v\nYg"), Err(B64Error::Alphabet));
        assert_eq!(decode(b"Zm9vY"), Err(B64Error::Length));
        assert_eq!(decode(b"Zh"), Err(B64Error::NonCanonical));
        assert_eq!(decode(b"Zm8"), Ok(b"fo".to_vec()));
        assert_eq!(decode(b"Zm9"), Err(B64Error::NonCanonical));
        assert_eq!(decode(b"Zm-"), Err(B64Error::NonCanonical));
    }

    #[test]
    fn standard_base64_is_padded() {
        assert_eq!(encode_standard(b"a"), "YQ==");
        assert_eq!(encode_standard(b"ab"), "YWI=");
        assert_eq!(encode_standard(b"abc"), "YWJj");
        assert_eq!(encode_standard(b"\xfb\xff"), "+/8=");
    }

    #[test]
    fn standard_base64_for_stored_secrets() {
        assert_eq!(decode_standard(b"c2VjcmV0").unwrap(), b"secret");
        assert_eq!(decode_standard(b"+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_standard(b"Zg==").unwrap(), b"f");
        assert!(decode_standard(b"-_8=").is_err());
        assert!(decode_standard(b"Zg").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(decode(encode(&bytes).as_bytes()).unwrap(), bytes);
        }

        #[test]
        fn accepted_text_is_the_one_spelling(text in "[A-Za-z0-9_=+/-]{0,40}") {
            if let Ok(bytes) = decode(text.as_bytes()) {
                prop_assert_eq!(encode(&bytes), text);
            }
        }
    }
}
