//! ID-token validation (OIDC Core 1.0 §3.1.3.7) and the userinfo cross-check (§5.3.2).
//!
//! Pure: the caller fetched the token over TLS from the token endpoint and supplies the
//! provider's keys; the signature is still checked, with a key chosen by `kid` among keys
//! loaded for an allowed algorithm (never `none`, never HMAC). Errors are bounded reasons
//! that carry no token text.

use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;

use scopegate_core::jose::json;
use scopegate_core::jose::jws::{self, KeyMap};
use scopegate_core::jose::keys::Alg;

/// Algorithms an ID token may be signed with when the configuration names none.
pub const DEFAULT_ALGS: [Alg; 4] = [Alg::Rs256, Alg::Ps256, Alg::Es256, Alg::EdDsa];
/// How far `iat` may lie in the past (an old token replayed from elsewhere).
pub const MAX_IAT_AGE_SECS: i64 = 600;
/// Longest `sub` accepted (OIDC Core §2: at most 255 ASCII characters).
pub const MAX_SUB_LEN: usize = 255;

/// Why an ID token (or userinfo answer) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// Not a compact JWS (a JWE has five segments), or its header is unusable.
    #[error("not a compact JWS")]
    Shape,
    /// `alg` is not in the allow-list (`none` and HMAC never are).
    #[error("algorithm not allowed")]
    Alg,
    /// No key of the provider has this `kid`.
    #[error("unknown key")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// The claims are not a JSON object without duplicate members.
    #[error("claims are not a JSON object")]
    Claims,
    /// `iss` is not the provider's issuer.
    #[error("wrong iss")]
    Issuer,
    /// `aud` lacks our client_id or names an audience we do not trust.
    #[error("wrong aud")]
    Audience,
    /// `azp` is missing with several audiences, or is not our client_id.
    #[error("wrong azp")]
    AuthorizedParty,
    /// `exp` passed (or is missing).
    #[error("expired")]
    Expired,
    /// `iat` is missing, in the future, or too old.
    #[error("iat out of range")]
    IssuedAt,
    /// `nonce` is missing or not ours.
    #[error("wrong nonce")]
    Nonce,
    /// `sub` is missing, empty or too long.
    #[error("bad sub")]
    Subject,
    /// Userinfo's `sub` differs from the ID token's.
    #[error("userinfo sub differs")]
    UserinfoSubject,
}

/// What one validation checks against.
pub struct Expect<'a> {
    /// The configured issuer.
    pub issuer: &'a str,
    /// Other exact `iss` values accepted.
    pub issuer_aliases: &'a [String],
    /// Our client_id at the provider.
    pub client_id: &'a str,
    /// The nonce we sent.
    pub nonce: &'a str,
    /// Algorithms allowed.
    pub algorithms: &'a [Alg],
    /// Now, Unix seconds.
    pub now: i64,
    /// Clock skew tolerated.
    pub leeway: i64,
}

/// A validated ID token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// `sub`.
    pub sub: String,
    /// Every claim, for the identity mapping.
    pub claims: Map<String, Value>,
}

/// Parses the header enough to learn the `kid` (to decide on a refetch). `None` when the
/// token is not a usable JWS.
pub fn kid_of(token: &str) -> Option<String> {
    jws::parse(token).ok().map(|c| c.kid)
}

/// Validates `token` with `keys`.
pub fn validate(
    token: &str,
    keys: &KeyMap,
    expect: &Expect<'_>,
) -> Result<Validated, IdTokenError> {
    let compact = jws::parse(token).map_err(|err| match err {
        jws::JwsError::UnknownAlg => IdTokenError::Alg,
        _ => IdTokenError::Shape,
    })?;
    if matches!(compact.alg, Alg::Hs256) || !expect.algorithms.contains(&compact.alg) {
        return Err(IdTokenError::Alg);
    }
    compact.verify_with(keys).map_err(|err| match err {
        jws::JwsError::UnknownKid => IdTokenError::UnknownKid,
        jws::JwsError::AlgMismatch => IdTokenError::Alg,
        _ => IdTokenError::Signature,
    })?;
    let payload = compact.payload();
    json::check_unique(payload).map_err(|_| IdTokenError::Claims)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(payload).map_err(|_| IdTokenError::Claims)?;
    check_claims(claims, expect)
}

fn int(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims.get(name).and_then(Value::as_i64)
}

/// The claim checks of §3.1.3.7 steps 2–4, 9–11 on an already verified payload.
pub fn check_claims(
    claims: Map<String, Value>,
    expect: &Expect<'_>,
) -> Result<Validated, IdTokenError> {
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(IdTokenError::Issuer)?;
    if iss != expect.issuer && !expect.issuer_aliases.iter().any(|a| a == iss) {
        return Err(IdTokenError::Issuer);
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().ok_or(IdTokenError::Audience))
            .collect::<Result<_, _>>()?,
        _ => return Err(IdTokenError::Audience),
    };
    // Our client_id must be there, and no audience we do not trust may be.
    if !audiences.contains(&expect.client_id) || audiences.iter().any(|a| *a != expect.client_id) {
        return Err(IdTokenError::Audience);
    }
    match claims.get("azp") {
        None if audiences.len() > 1 => return Err(IdTokenError::AuthorizedParty),
        None => {}
        Some(azp) if azp.as_str() == Some(expect.client_id) => {}
        Some(_) => return Err(IdTokenError::AuthorizedParty),
    }
    let exp = int(&claims, "exp").ok_or(IdTokenError::Expired)?;
    if exp + expect.leeway <= expect.now {
        return Err(IdTokenError::Expired);
    }
    let iat = int(&claims, "iat").ok_or(IdTokenError::IssuedAt)?;
    if iat > expect.now + expect.leeway || iat < expect.now - MAX_IAT_AGE_SECS - expect.leeway {
        return Err(IdTokenError::IssuedAt);
    }
    if let Some(nbf) = int(&claims, "nbf")
        && nbf > expect.now + expect.leeway
    {
        return Err(IdTokenError::IssuedAt);
    }
    let nonce = claims.get("nonce").and_then(Value::as_str);
    if nonce.is_none_or(|n| !bool::from(n.as_bytes().ct_eq(expect.nonce.as_bytes()))) {
        return Err(IdTokenError::Nonce);
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        // Taken as it is or refused: a subject a header would change could never be used.
        .filter(|s| s.len() <= MAX_SUB_LEN && scopegate_core::names::is_identity_value(s))
        .ok_or(IdTokenError::Subject)?
        .to_owned();
    Ok(Validated { sub, claims })
}

/// Merges a userinfo answer into the claims: its `sub` must equal the ID token's, and it
/// only fills claims the ID token lacks.
pub fn merge_userinfo(
    validated: &mut Validated,
    userinfo: Map<String, Value>,
) -> Result<(), IdTokenError> {
    if userinfo.get("sub").and_then(Value::as_str) != Some(validated.sub.as_str()) {
        return Err(IdTokenError::UserinfoSubject);
    }
    for (name, value) in userinfo {
        validated.claims.entry(name).or_insert(value);
    }
    Ok(())
}

/// The verification claim `claim` as OIDC providers send it: JSON `true` or the string
/// `"true"` only; anything else is unverified, and so is nothing unless `trust` is
/// `WhenMissing`.
pub fn email_verified(
    claims: &Map<String, Value>,
    claim: &str,
    trust: scopegate_core::upstream::TrustUnverifiedEmail,
) -> bool {
    match claims.get(claim) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        Some(_) => false,
        None => trust == scopegate_core::upstream::TrustUnverifiedEmail::WhenMissing,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn expect() -> Expect<'static> {
        Expect {
            issuer: "https://idp.example",
            issuer_aliases: &[],
            client_id: "scopegate",
            nonce: "n-0123",
            algorithms: &DEFAULT_ALGS,
            now: NOW,
            leeway: 30,
        }
    }

    fn good() -> Map<String, Value> {
        json!({"iss": "https://idp.example", "aud": "scopegate", "sub": "alice", "exp": NOW + 300,
               "iat": NOW - 5, "nonce": "n-0123"})
        .as_object()
        .unwrap()
        .clone()
    }

    fn with(name: &str, value: Value) -> Map<String, Value> {
        let mut claims = good();
        if value.is_null() {
            claims.remove(name);
        } else {
            claims.insert(name.into(), value);
        }
        claims
    }

    #[test]
    fn accepts_a_good_token() {
        assert_eq!(check_claims(good(), &expect()).unwrap().sub, "alice");
    }

    #[test]
    fn refuses_each_broken_claim() {
        let cases = [
            ("iss", json!("https://evil.example"), IdTokenError::Issuer),
            ("iss", Value::Null, IdTokenError::Issuer),
            ("aud", json!("other"), IdTokenError::Audience),
            ("aud", json!(["scopegate", "other"]), IdTokenError::Audience),
            ("aud", json!([]), IdTokenError::Audience),
            ("azp", json!("other"), IdTokenError::AuthorizedParty),
            ("exp", json!(NOW - 31), IdTokenError::Expired),
            ("exp", Value::Null, IdTokenError::Expired),
            ("iat", json!(NOW + 31), IdTokenError::IssuedAt),
            ("iat", json!(NOW - 700), IdTokenError::IssuedAt),
            ("iat", Value::Null, IdTokenError::IssuedAt),
            ("nonce", json!("n-0124"), IdTokenError::Nonce),
            ("nonce", Value::Null, IdTokenError::Nonce),
            ("sub", json!(""), IdTokenError::Subject),
            ("sub", json!(17), IdTokenError::Subject),
            ("sub", json!("1080 "), IdTokenError::Subject),
            ("sub", json!("1080\nx"), IdTokenError::Subject),
            ("sub", json!("jöe"), IdTokenError::Subject),
        ];
        for (name, value, want) in cases {
            assert_eq!(
                check_claims(with(name, value.clone()), &expect()).unwrap_err(),
                want,
                "{name}={value}"
            );
        }
    }

    #[test]
    fn several_audiences_need_azp_even_when_all_are_ours() {
        let claims = with("aud", json!(["scopegate", "scopegate"]));
        assert_eq!(
            check_claims(claims.clone(), &expect()).unwrap_err(),
            IdTokenError::AuthorizedParty
        );
        let mut claims = claims;
        claims.insert("azp".into(), json!("scopegate"));
        assert!(check_claims(claims, &expect()).is_ok());
    }

    #[test]
    fn aliases_are_opt_in() {
        let claims = with("iss", json!("idp.example"));
        assert!(check_claims(claims.clone(), &expect()).is_err());
        let aliases = vec!["idp.example".to_owned()];
        let e = Expect {
            issuer_aliases: &aliases,
            ..expect()
        };
        assert!(check_claims(claims, &e).is_ok());
    }

    #[test]
    fn email_verified_is_true_only_when_said_so() {
        use scopegate_core::upstream::TrustUnverifiedEmail::{Never, WhenMissing};
        let of = |v: Value| {
            email_verified(
                json!({"email_verified": v}).as_object().unwrap(),
                "email_verified",
                Never,
            )
        };
        assert!(of(json!(true)));
        assert!(of(json!("true")));
        assert!(!of(json!(false)));
        assert!(!of(json!("false")));
        assert!(!of(json!("TRUE")));
        assert!(!of(json!(1)));
        assert!(!email_verified(&Map::new(), "email_verified", Never));
        // WhenMissing trusts silence only: false, "false", null and junk stay unverified.
        assert!(email_verified(&Map::new(), "email_verified", WhenMissing));
        for said in [
            json!(false),
            json!("false"),
            json!(null),
            json!(1),
            json!("True"),
        ] {
            let claims = json!({"email_verified": said});
            assert!(
                !email_verified(claims.as_object().unwrap(), "email_verified", WhenMissing),
                "{said}"
            );
        }
        // A renamed claim is the one read.
        let claims = json!({"email_verified": true, "xms_edov": false});
        assert!(!email_verified(
            claims.as_object().unwrap(),
            "xms_edov",
            Never
        ));
    }

    #[test]
    fn userinfo_must_name_the_same_subject_and_never_overrides() {
        let mut v = check_claims(with("email", json!("a@corp")), &expect()).unwrap();
        let other = json!({"sub": "mallory", "email": "m@corp"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            merge_userinfo(&mut v, other),
            Err(IdTokenError::UserinfoSubject)
        );
        let same = json!({"sub": "alice", "email": "x@corp", "name": "Alice"})
            .as_object()
            .unwrap()
            .clone();
        merge_userinfo(&mut v, same).unwrap();
        assert_eq!(v.claims["email"], "a@corp");
        assert_eq!(v.claims["name"], "Alice");
    }

    #[test]
    fn refuses_none_and_hmac_before_looking_at_keys() {
        let b = |v: &Value| scopegate_core::jose::b64::encode(v.to_string().as_bytes());
        let payload = b(&Value::Object(good()));
        for alg in ["none", "HS256", "NONE"] {
            let token = format!("{}.{payload}.c2ln", b(&json!({"alg": alg, "kid": "k"})));
            assert_eq!(
                validate(&token, &KeyMap::new(), &expect()).unwrap_err(),
                IdTokenError::Alg,
                "{alg}"
            );
        }
        let five = format!(
            "{}.{payload}.a.b.c",
            b(&json!({"alg": "RS256", "kid": "k"}))
        );
        assert_eq!(
            validate(&five, &KeyMap::new(), &expect()).unwrap_err(),
            IdTokenError::Shape
        );
        let token = format!("{}.{payload}.c2ln", b(&json!({"alg": "RS256", "kid": "k"})));
        assert_eq!(
            validate(&token, &KeyMap::new(), &expect()).unwrap_err(),
            IdTokenError::UnknownKid
        );
    }
}
