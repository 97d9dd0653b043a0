//! Strict JSON for JOSE headers and JWT claims.
//!
//! One pass over the bytes: known members are read with their JSON type checked (a string
//! `exp` is an error, never "absent"), unknown members are walked without being kept, and a
//! member name that appears twice anywhere (after unescaping) makes the whole document
//! invalid, where a plain `serde_json::Value` would silently keep the last one.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a header or claims document was refused. No variant carries input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not a single JSON object (syntax, invalid UTF-8, trailing data).
    #[error("not a JSON object")]
    Malformed,
    /// A member name appears twice.
    #[error("duplicate member name")]
    Duplicate,
    /// A known member has the wrong JSON type (or is null), or a required one is missing.
    #[error("member missing or of the wrong JSON type")]
    WrongType,
}

const DUPLICATE: &str = "duplicate member name";

/// Most unknown members one object may have. Claims are parsed before the signature is
/// checked, so the duplicate check (quadratic in members) must stay cheap for any input;
/// real tokens carry a few dozen claims at most.
pub const MAX_MEMBERS: usize = 128;

fn classify(err: &serde_json::Error) -> JsonError {
    if err.is_data() {
        if err.to_string().starts_with(DUPLICATE) {
            JsonError::Duplicate
        } else {
            JsonError::WrongType
        }
    } else {
        JsonError::Malformed
    }
}

/// The JOSE header members the verifier reads, borrowed from the decoded header where they
/// have no escapes. `jku`, `x5u`, `jwk` and `x5c` are walked and dropped: keys never come
/// from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// The `alg` member (required).
    pub alg: Cow<'a, str>,
    /// The `kid` member.
    pub kid: Option<Cow<'a, str>>,
    /// The `typ` member.
    pub typ: Option<Cow<'a, str>>,
    /// Whether a `crit` member is present (no extension is understood, so any is refused).
    pub crit: bool,
}

/// A JWT's `aud`: one string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// `"aud": "x"`.
    One(String),
    /// `"aud": ["x", "y"]`.
    Many(Vec<String>),
}

impl Audience {
    /// Whether any accepted audience is exactly present.
    pub fn contains_any(&self, accepted: &[String]) -> bool {
        match self {
            Audience::One(aud) => accepted.iter().any(|a| a == aud),
            Audience::Many(auds) => auds.iter().any(|aud| accepted.iter().any(|a| a == aud)),
        }
    }
}

/// The registered claims the verifier reads, type-checked; others are walked and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// `iss`.
    pub iss: Option<String>,
    /// `sub`.
    pub sub: Option<String>,
    /// `aud`.
    pub aud: Option<Audience>,
    /// `exp` (a non-negative integer NumericDate).
    pub exp: Option<i64>,
    /// `nbf`.
    pub nbf: Option<i64>,
    /// `iat`.
    pub iat: Option<i64>,
    /// `jti`.
    pub jti: Option<String>,
    /// `client_id` (RFC 9068).
    pub client_id: Option<String>,
    /// `scope`: a string only (RFC 9068 §2.2.3).
    pub scope: Option<String>,
}

/// Parses a JOSE header.
pub fn parse_header(bytes: &[u8]) -> Result<Header<'_>, JsonError> {
    let raw: RawHeader = serde_json::from_slice(bytes).map_err(|e| classify(&e))?;
    let alg = raw.alg.ok_or(JsonError::WrongType)?;
    Ok(Header {
        alg,
        kid: raw.kid,
        typ: raw.typ,
        crit: raw.crit,
    })
}

/// Parses a JWT claims set.
pub fn parse_claims(bytes: &[u8]) -> Result<Claims, JsonError> {
    serde_json::from_slice(bytes).map_err(|e| classify(&e))
}

/// Parses any JSON document, refusing duplicate member names at any depth.
pub fn check_unique(bytes: &[u8]) -> Result<(), JsonError> {
    serde_json::from_slice::<Unique>(bytes)
        .map(|_| ())
        .map_err(|e| classify(&e))
}

#[derive(Default)]
struct RawHeader<'de> {
    alg: Option<Cow<'de, str>>,
    kid: Option<Cow<'de, str>>,
    typ: Option<Cow<'de, str>>,
    crit: bool,
}

/// Remembers member names seen in one object.
#[derive(Default)]
struct Seen<'de>(Vec<Cow<'de, str>>);

impl<'de> Seen<'de> {
    fn insert<E: de::Error>(&mut self, name: Cow<'de, str>) -> Result<(), E> {
        if self.0.contains(&name) {
            return Err(E::custom(DUPLICATE));
        }
        if self.0.len() >= MAX_MEMBERS {
            return Err(E::custom("too many members"));
        }
        self.0.push(name);
        Ok(())
    }
}

/// A member name, borrowed when it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, checked for duplicate member names and dropped.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = Seen::default();
        while let Some(Name(name)) = map.next_key::<Name>()? {
            seen.insert(name)?;
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

/// A NumericDate: a non-negative integer (fractions, strings and negatives are refused).
struct NumericDate(i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative integer NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                i64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::custom("NumericDate out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                if v < 0 {
                    return Err(E::custom("negative NumericDate"));
                }
                Ok(NumericDate(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut auds = Vec::new();
                while let Some(aud) = seq.next_element::<String>()? {
                    auds.push(aud);
                }
                Ok(Audience::Many(auds))
            }
        }
        d.deserialize_any(V)
    }
}

fn set_once<'de, T, A: MapAccess<'de>>(slot: &mut Option<T>, value: T) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::custom(DUPLICATE));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Deserialize<'de> for RawHeader<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JOSE header object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader<'de>, A::Error> {
                let mut header = RawHeader::default();
                let mut seen = Seen::default();
                let text = |map: &mut A| map.next_value::<Name<'de>>().map(|n| n.0);
                while let Some(Name(name)) = map.next_key::<Name>()? {
                    match &*name {
                        "alg" => set_once::<_, A>(&mut header.alg, text(&mut map)?)?,
                        "kid" => set_once::<_, A>(&mut header.kid, text(&mut map)?)?,
                        "typ" => set_once::<_, A>(&mut header.typ, text(&mut map)?)?,
                        _ => {
                            if name == "crit" {
                                header.crit = true;
                            }
                            seen.insert(name)?;
                            map.next_value::<Unique>()?;
                        }
                    }
                }
                Ok(header)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JWT claims object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                let mut c = Claims::default();
                let mut seen = Seen::default();
                let date = |map: &mut A| map.next_value::<NumericDate>().map(|d| d.0);
                while let Some(Name(name)) = map.next_key::<Name>()? {
                    match &*name {
                        "iss" => set_once::<_, A>(&mut c.iss, map.next_value()?)?,
                        "sub" => set_once::<_, A>(&mut c.sub, map.next_value()?)?,
                        "aud" => set_once::<_, A>(&mut c.aud, map.next_value()?)?,
                        "exp" => set_once::<_, A>(&mut c.exp, date(&mut map)?)?,
                        "nbf" => set_once::<_, A>(&mut c.nbf, date(&mut map)?)?,
                        "iat" => set_once::<_, A>(&mut c.iat, date(&mut map)?)?,
                        "jti" => set_once::<_, A>(&mut c.jti, map.next_value()?)?,
                        "client_id" => set_once::<_, A>(&mut c.client_id, map.next_value()?)?,
                        "scope" => set_once::<_, A>(&mut c.scope, map.next_value()?)?,
                        _ => {
                            seen.insert(name)?;
                            map.next_value::<Unique>()?;
                        }
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_header() {
        let h =
            parse_header(br#"{"alg":"ES256","kid":"k1","typ":"at+jwt","jku":"http://x"}"#).unwrap();
        assert_eq!(h.alg, "ES256");
        assert_eq!(h.kid.as_deref(), Some("k1"));
        assert!(!h.crit);
        assert!(
            parse_header(br#"{"alg":"ES256","crit":["exp"]}"#)
                .unwrap()
                .crit
        );
    }

    #[test]
    fn duplicates_are_refused_everywhere() {
        for doc in [
            &br#"{"alg":"ES256","alg":"none"}"#[..],
            br#"{"alg":"ES256","\u0061lg":"none"}"#,
            br#"{"alg":"ES256","x":1,"x":2}"#,
            br#"{"alg":"ES256","x":{"y":1,"y":2}}"#,
        ] {
            assert_eq!(parse_header(doc), Err(JsonError::Duplicate), "{doc:?}");
        }
        assert_eq!(
            parse_claims(br#"{"sub":"a","sub":"b"}"#),
            Err(JsonError::Duplicate)
        );
        assert_eq!(
            check_unique(br#"{"a":[{"b":1,"b":1}]}"#),
            Err(JsonError::Duplicate)
        );
    }

    #[test]
    fn claim_types_are_checked_not_skipped() {
        for doc in [
            &br#"{"exp":"1700000000"}"#[..],
            br#"{"exp":1.5}"#,
            br#"{"exp":1e308}"#,
            br#"{"exp":-1}"#,
            br#"{"exp":null}"#,
            br#"{"nbf":"x"}"#,
            br#"{"iat":[1]}"#,
            br#"{"scope":["read"]}"#,
            br#"{"iss":["a","b"]}"#,
            br#"{"aud":[1]}"#,
            br#"{"sub":null}"#,
            br#"{"exp":18446744073709551615}"#,
        ] {
            assert_eq!(parse_claims(doc), Err(JsonError::WrongType), "{doc:?}");
        }
    }

    #[test]
    fn member_count_is_bounded() {
        let wide = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!("\"m{i}\":0")).collect();
            format!("{{{}}}", members.join(","))
        };
        assert!(parse_claims(wide(MAX_MEMBERS).as_bytes()).is_ok());
        assert_eq!(
            parse_claims(wide(MAX_MEMBERS + 1).as_bytes()),
            Err(JsonError::WrongType)
        );
        assert_eq!(
            check_unique(format!("[{}]", wide(MAX_MEMBERS + 1)).as_bytes()),
            Err(JsonError::WrongType)
        );
    }

    #[test]
    fn refuses_non_objects_and_bad_utf8() {
        for doc in [&b"[]"[..], b"\"x\"", b"{} x", b"{\"alg\":\"\xff\"}", b""] {
            assert!(parse_header(doc).is_err(), "{doc:?}");
        }
        assert_eq!(parse_header(b"{}"), Err(JsonError::WrongType));
    }

    #[test]
    fn reads_claims() {
        let c = parse_claims(
            br#"{"iss":"i","sub":"s","aud":["a","b"],"exp":10,"nbf":1,"iat":2,"jti":"j","client_id":"c","scope":"x y","extra":{"k":[1,2]}}"#,
        )
        .unwrap();
        assert_eq!(c.exp, Some(10));
        assert!(c.aud.unwrap().contains_any(&["b".into()]));
        assert_eq!(c.scope.as_deref(), Some("x y"));
    }
}
