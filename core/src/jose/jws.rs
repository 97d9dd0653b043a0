//! Compact JWS (RFC 7515 §7.1): exactly three non-empty base64url segments, a strict
//! header, and a signature checked with a key chosen by `kid` among keys already trusted.

use super::b64;
use super::json::{self, JsonError};
use super::keys::Alg;
pub use super::keys::KeyMap;

/// Longest `kid` looked up; a longer one cannot name a key of ours.
pub const MAX_KID_LEN: usize = 256;

/// Why a JWS was refused. No variant carries input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Not three non-empty `.`-separated segments.
    #[error("not a compact JWS of three non-empty segments")]
    Shape,
    /// A segment is not strict base64url.
    #[error("{0} segment is not strict base64url")]
    Base64(&'static str),
    /// The header is not a strict JSON object with a string `alg`.
    #[error("header: {0}")]
    Header(JsonError),
    /// `alg` is not an algorithm the sidecar verifies (`none` in any spelling included).
    #[error("unsupported alg")]
    UnknownAlg,
    /// A `crit` header: no extension is understood.
    #[error("crit header present")]
    Crit,
    /// No `kid`, or one too long to be ours.
    #[error("kid missing or too long")]
    Kid,
    /// No trusted key has this `kid` for the issuer.
    #[error("unknown kid")]
    UnknownKid,
    /// The key is not loaded for the token's `alg`.
    #[error("alg does not match the key")]
    AlgMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
}

/// The `typ` of a JWS header, as far as the verifier tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typ {
    /// No `typ` member.
    Absent,
    /// `at+jwt` (RFC 9068).
    AtJwt,
    /// `JWT`.
    Jwt,
    /// The issuer's revocation feed ([`crate::feed::FEED_JWS_TYP`]).
    RevocationFeed,
    /// Anything else.
    Other,
}

impl Typ {
    fn of(typ: Option<&str>) -> Typ {
        match typ {
            None => Typ::Absent,
            Some(t) if typ_is(t, "at+jwt") => Typ::AtJwt,
            Some(t) if typ_is(t, "jwt") => Typ::Jwt,
            Some(t) if typ_is(t, crate::feed::FEED_JWS_TYP) => Typ::RevocationFeed,
            Some(_) => Typ::Other,
        }
    }
}

/// A parsed compact JWS whose signature has not been checked yet. The three segments are
/// decoded into one buffer.
#[derive(Debug)]
pub struct Compact<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a [u8],
    /// The header's algorithm.
    pub alg: Alg,
    /// The header's `kid`.
    pub kid: String,
    /// The header's `typ`.
    pub typ: Typ,
    decoded: Vec<u8>,
    payload_start: usize,
    signature_start: usize,
}

/// Splits and decodes a compact JWS, checking the header (not the signature).
pub fn parse(token: &str) -> Result<Compact<'_>, JwsError> {
    let bytes = token.as_bytes();
    let dot = |from: usize| memchr::memchr(b'.', &bytes[from..]).map(|i| i + from);
    let first = dot(0);
    let (Some(first), Some(second)) = (first, first.and_then(|f| dot(f + 1))) else {
        return Err(JwsError::Shape);
    };
    if dot(second + 1).is_some() {
        return Err(JwsError::Shape);
    }
    let (header_b64, payload_b64, signature_b64) = (
        &bytes[..first],
        &bytes[first + 1..second],
        &bytes[second + 1..],
    );
    if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
        return Err(JwsError::Shape);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    b64::decode_into(header_b64, &mut decoded).map_err(|_| JwsError::Base64("header"))?;
    let (alg, kid, typ) = {
        let header = json::parse_header(&decoded).map_err(JwsError::Header)?;
        if header.crit {
            return Err(JwsError::Crit);
        }
        let alg = Alg::from_name(&header.alg).ok_or(JwsError::UnknownAlg)?;
        let kid = match header.kid {
            Some(kid) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => kid.into_owned(),
            _ => return Err(JwsError::Kid),
        };
        (alg, kid, Typ::of(header.typ.as_deref()))
    };
    let payload_start = decoded.len();
    b64::decode_into(payload_b64, &mut decoded).map_err(|_| JwsError::Base64("payload"))?;
    let signature_start = decoded.len();
    b64::decode_into(signature_b64, &mut decoded).map_err(|_| JwsError::Base64("signature"))?;
    Ok(Compact {
        signing_input: &bytes[..second],
        alg,
        kid,
        typ,
        decoded,
        payload_start,
        signature_start,
    })
}

impl Compact<'_> {
    /// The decoded payload.
    pub fn payload(&self) -> &[u8] {
        &self.decoded[self.payload_start..self.signature_start]
    }

    /// The decoded signature.
    pub fn signature(&self) -> &[u8] {
        &self.decoded[self.signature_start..]
    }

    /// Checks the signature with the key named by `kid` among `keys`, using the header's
    /// algorithm only if that key was loaded for it.
    pub fn verify_with(&self, keys: &KeyMap) -> Result<(), JwsError> {
        let key = keys.get(&self.kid).ok_or(JwsError::UnknownKid)?;
        if !key.algs().any(|a| a == self.alg) {
            return Err(JwsError::AlgMismatch);
        }
        if key.verify(self.alg, self.signing_input, self.signature()) {
            Ok(())
        } else {
            Err(JwsError::Signature)
        }
    }
}

/// Whether a `typ` value names `expected` (`x` or `application/x`), compared
/// case-insensitively as media types are (RFC 7515 §4.1.9).
pub fn typ_is(typ: &str, expected: &str) -> bool {
    let short = typ
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case("application/"))
        .map_or(typ, |_| &typ[12..]);
    short.eq_ignore_ascii_case(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_comparison() {
        assert!(typ_is("at+jwt", "at+jwt"));
        assert!(typ_is("AT+JWT", "at+jwt"));
        assert!(typ_is("application/at+jwt", "at+jwt"));
        assert!(typ_is("Application/AT+JWT", "at+jwt"));
        assert!(!typ_is("jwt", "at+jwt"));
        assert!(!typ_is("application/jwt", "at+jwt"));
        assert!(!typ_is("xapplication/at+jwt", "at+jwt"));
        assert!(!typ_is("é", "at+jwt"));
    }

    #[test]
    fn shape_is_strict() {
        for token in ["", "a", "a.b", "a.b.c.d", "a..c", ".b.c", "a.b.", "a.b.c."] {
            assert!(matches!(parse(token), Err(JwsError::Shape)), "{token:?}");
        }
    }
}
