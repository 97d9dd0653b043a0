//! Access-token validation: a compact JWS checked against trusted keys, then its claims
//! (RFC 9068, RFC 8725). Pure: keys, rules and the clock come in as arguments.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::claims::claim_at;
use crate::config::ScopeClaim;
use crate::names::is_identity_value;
use crate::policy::{MalformedScope, check_scope_claim};
use crate::scope::is_scope_token;

use crate::jose::json::{self, JsonError};
use crate::jose::jws::{self, JwsError, KeyMap, Typ};

/// What a verifier accepts, from the config.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// A token's `aud` must contain one of these exactly.
    pub audiences: Vec<String>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: i64,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Keep a valid token's claims ([`VerifiedToken::claims`]), for `when` conditions and
    /// claim headers.
    pub keep_claims: bool,
    /// The top-level claims kept, when only some are read (`None`: every claim): a cached
    /// token holds no more than its readers need.
    pub kept_claims: Option<Arc<BTreeSet<String>>>,
}

impl TokenRules {
    /// The rules of a config's `verify` section, leeway capped (its other limits are
    /// checked when the sidecar compiles the config).
    pub fn from_config(verify: &crate::config::VerifyConfig) -> TokenRules {
        TokenRules {
            audiences: verify.audiences.clone(),
            leeway_secs: leeway_secs(verify.leeway_secs),
            max_token_bytes: verify.max_token_bytes,
            keep_claims: false,
            kept_claims: None,
        }
    }
}

/// The leeway in force: the configured one, capped at
/// [`crate::config::MAX_LEEWAY_SECS`] (a larger one is taken as the cap, never refused).
pub fn leeway_secs(configured: u64) -> i64 {
    i64::try_from(configured.min(crate::config::MAX_LEEWAY_SECS)).unwrap_or(0)
}

/// The keys of one trusted issuer as the validator sees them.
#[derive(Clone)]
pub struct IssuerKeys {
    /// Keys by `kid`.
    pub keys: Arc<KeyMap>,
    /// Whether `typ: JWT` (or no `typ`) is accepted besides `at+jwt`.
    pub allow_jwt_typ: bool,
    /// Where the issuer's tokens carry their scopes; `None`: the `scope` claim.
    pub scopes: Option<Arc<ScopeClaim>>,
    /// Audiences this issuer's tokens must carry (one of them), instead of
    /// [`TokenRules::audiences`]; `None`: those.
    pub audiences: Option<Arc<[String]>>,
}

/// A token that passed validation: what the proxy needs afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `iss`.
    pub iss: String,
    /// `sub`.
    pub sub: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// The `scope` claim, checked (empty when absent).
    pub scope: String,
    /// `exp`.
    pub exp: i64,
    /// `iat`.
    pub iat: Option<i64>,
    /// `jti`.
    pub jti: Option<String>,
    /// Every claim, when [`TokenRules::keep_claims`] asked for them (no member name twice at
    /// any depth).
    pub claims: Option<Arc<KeptClaims>>,
}

pub use crate::claims::{Claims, KeptClaims};

/// Why a token was refused: every variant answers 401 `invalid_token`; the variant goes to
/// the log only. No variant carries token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than `maxTokenBytes`.
    #[error("token larger than the limit")]
    TooLarge,
    /// Not a well-formed compact JWS, or its signature does not verify.
    #[error("jws")]
    Jws(#[from] JwsError),
    /// The claims are not a strict JSON object of the right types.
    #[error("claims: {0}")]
    Claims(JsonError),
    /// `iss` is not a trusted issuer.
    #[error("untrusted issuer")]
    Issuer,
    /// `typ` is not accepted for this issuer.
    #[error("typ not accepted")]
    Typ,
    /// A claim the profile requires is missing.
    #[error("required claim {0} missing")]
    Missing(&'static str),
    /// No accepted audience in `aud`.
    #[error("audience not accepted")]
    Audience,
    /// Past `exp` plus leeway.
    #[error("expired")]
    Expired,
    /// Before `nbf` minus leeway.
    #[error("not yet valid")]
    NotYetValid,
    /// `iat` later than now plus leeway.
    #[error("issued in the future")]
    IssuedInFuture,
    /// `scope` is not a space-separated list of scope tokens.
    #[error(transparent)]
    Scope(#[from] MalformedScope),
    /// The issuer's scope claim is neither a string nor a list of strings.
    #[error("the scope claim is neither a string nor a list of strings")]
    ScopeClaimType,
    /// Revoked by a client cut-off, a jti revocation or a subject cut-off.
    #[error("revoked ({0})")]
    Revoked(&'static str),
    /// `sub` or `client_id` cannot reach the app unchanged in a header
    /// ([`crate::names::is_identity_value`]).
    #[error("{0} cannot be passed to the app in a header")]
    Identity(&'static str),
}

/// Validates a bearer token: size, JWS shape and header, key by (`iss`, `kid`) with the
/// algorithm the key was loaded for, signature, `typ`, then the claims. `issuer` maps a
/// claimed `iss` to its trusted keys; `now` is Unix seconds. Revocation is checked apart.
pub fn validate(
    token: &str,
    rules: &TokenRules,
    issuer: impl FnOnce(&str) -> Option<IssuerKeys>,
    now: i64,
) -> Result<VerifiedToken, TokenError> {
    if token.len() > rules.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let compact = jws::parse(token)?;
    let claims = json::parse_claims(compact.payload()).map_err(TokenError::Claims)?;
    let iss = claims.iss.ok_or(TokenError::Missing("iss"))?;
    let trusted = issuer(&iss).ok_or(TokenError::Issuer)?;
    compact.verify_with(&trusted.keys)?;

    let at_jwt = match compact.typ {
        Typ::AtJwt => true,
        Typ::Jwt | Typ::Absent if trusted.allow_jwt_typ => false,
        _ => return Err(TokenError::Typ),
    };
    let exp = claims.exp.ok_or(TokenError::Missing("exp"))?;
    let aud = claims.aud.ok_or(TokenError::Missing("aud"))?;
    if at_jwt {
        // RFC 9068 §2.2: all of these are required in a JWT access token.
        for (name, present) in [
            ("sub", claims.sub.is_some()),
            ("client_id", claims.client_id.is_some()),
            ("iat", claims.iat.is_some()),
            ("jti", claims.jti.is_some()),
        ] {
            if !present {
                return Err(TokenError::Missing(name));
            }
        }
    }
    let audiences = trusted.audiences.as_deref().unwrap_or(&rules.audiences);
    if !aud.contains_any(audiences) {
        return Err(TokenError::Audience);
    }
    let leeway = rules.leeway_secs;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(leeway))
    {
        return Err(TokenError::NotYetValid);
    }
    if claims
        .iat
        .is_some_and(|iat| iat > now.saturating_add(leeway))
    {
        return Err(TokenError::IssuedInFuture);
    }
    let keep = rules.keep_claims || trusted.scopes.is_some();
    let all_claims = keep.then(|| all_claims(compact.payload())).transpose()?;
    let scope = match (&trusted.scopes, &all_claims) {
        (Some(source), Some(all)) => scopes_from_claim(all, source)?,
        _ => {
            let scope = claims.scope.clone().unwrap_or_default();
            check_scope_claim(&scope)?;
            scope
        }
    };
    identity_fits_headers(claims.sub.as_deref(), claims.client_id.as_deref())?;
    Ok(VerifiedToken {
        iss,
        sub: claims.sub,
        client_id: claims.client_id,
        scope,
        exp,
        iat: claims.iat,
        jti: claims.jti,
        claims: all_claims.filter(|_| rules.keep_claims).map(|all| {
            let mut kept = Arc::unwrap_or_clone(all);
            if let Some(names) = &rules.kept_claims {
                kept.retain(|name, _| names.contains(name));
            }
            Arc::new(KeptClaims::new(kept))
        }),
    })
}

/// The app learns who called from headers: an identity a header would change is refused
/// rather than forwarded without it, or as someone else.
fn identity_fits_headers(sub: Option<&str>, client_id: Option<&str>) -> Result<(), TokenError> {
    for (name, value) in [("sub", sub), ("client_id", client_id)] {
        if value.is_some_and(|v| !is_identity_value(v)) {
            return Err(TokenError::Identity(name));
        }
    }
    Ok(())
}

/// Every claim of a payload `parse_claims` accepted: it refused a member name spelled twice
/// at any depth, so a condition, a claim header and the app cannot read different copies.
fn all_claims(payload: &[u8]) -> Result<Arc<Claims>, TokenError> {
    serde_json::from_slice(payload)
        .map(Arc::new)
        .map_err(|_| TokenError::Claims(JsonError::Malformed))
}

/// The scopes of a token whose issuer carries them in another claim: the claim's values
/// (a space-separated string, or a list of strings), only those starting with the prefix
/// (removed), only scope tokens, each once, space-separated. An absent claim grants nothing;
/// a claim of another type refuses the token.
pub fn scopes_from_claim(claims: &Claims, source: &ScopeClaim) -> Result<String, TokenError> {
    let values: Vec<&str> = match claim_at(claims, &source.claim) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(text)) => text.split(' ').collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or(TokenError::ScopeClaimType))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(TokenError::ScopeClaimType),
    };
    let prefix = source.prefix.as_deref().unwrap_or("");
    let mut scopes: Vec<&str> = Vec::new();
    for value in values {
        let Some(scope) = value.strip_prefix(prefix) else {
            continue;
        };
        // A role that is no scope token can satisfy no rule: left out, not refused.
        if is_scope_token(scope) && !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::b64;
    use crate::jose::keys::KeyEntry;
    use aws_lc_rs::hmac;
    use serde_json::{Value, json};

    const SECRET: [u8; 32] = [9; 32];
    const NOW: i64 = 1_800_000_000;

    fn token(claims: &Value) -> String {
        token_of(&claims.to_string())
    }

    /// A token over `payload` as written (duplicate members and all).
    fn token_of(payload: &str) -> String {
        let header = json!({"alg": "HS256", "kid": "k", "typ": "at+jwt"});
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(payload.as_bytes())
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &SECRET);
        let tag = hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64::encode(tag.as_ref()))
    }

    fn claims(edit: impl FnOnce(&mut Value)) -> Value {
        let mut c = json!({
            "iss": "i", "sub": "s", "aud": "a", "exp": NOW + 60, "iat": NOW, "jti": "j",
            "client_id": "c", "scope": "x"
        });
        edit(&mut c);
        c
    }

    fn check(leeway: i64, c: &Value) -> Result<VerifiedToken, TokenError> {
        check_with(leeway, false, &token(c))
    }

    /// The test issuer's keys: the HS256 key `k`, with `audiences` of its own if any.
    fn test_keys(audiences: Option<&[&str]>) -> IssuerKeys {
        IssuerKeys {
            keys: Arc::new(KeyMap::from([(
                "k".to_owned(),
                KeyEntry::hs256("k", &SECRET).unwrap(),
            )])),
            allow_jwt_typ: false,
            scopes: None,
            audiences: audiences.map(|a| a.iter().map(|a| (*a).to_owned()).collect()),
        }
    }

    /// Validates `token` against the test issuer `i` with key `k`.
    fn check_with(
        leeway: i64,
        keep_claims: bool,
        token: &str,
    ) -> Result<VerifiedToken, TokenError> {
        let keys = test_keys(None);
        let rules = TokenRules {
            audiences: vec!["a".into()],
            leeway_secs: leeway,
            max_token_bytes: 8192,
            keep_claims,
            kept_claims: None,
        };
        validate(token, &rules, |iss| (iss == "i").then(|| keys.clone()), NOW)
    }

    #[test]
    fn an_issuers_own_audiences_replace_the_policys() {
        let keys = test_keys(Some(&["api://reports"]));
        let rules = TokenRules {
            audiences: vec!["a".into()],
            leeway_secs: 0,
            max_token_bytes: 8192,
            keep_claims: false,
            kept_claims: None,
        };
        let check = |aud: serde_json::Value| {
            let token = token(&claims(|c| c["aud"] = aud));
            validate(
                &token,
                &rules,
                |iss| (iss == "i").then(|| keys.clone()),
                NOW,
            )
        };
        assert!(check(json!("api://reports")).is_ok());
        // The policy's audience is not this issuer's: a token of it meant for another
        // service of the policy is refused.
        assert_eq!(check(json!("a")), Err(TokenError::Audience));
        assert_eq!(check(json!(["a", "b"])), Err(TokenError::Audience));
    }

    #[test]
    fn exp_boundaries() {
        assert_eq!(
            check(0, &claims(|c| c["exp"] = json!(NOW))),
            Err(TokenError::Expired)
        );
        assert!(check(0, &claims(|c| c["exp"] = json!(NOW + 1))).is_ok());
        assert_eq!(
            check(30, &claims(|c| c["exp"] = json!(NOW - 30))),
            Err(TokenError::Expired)
        );
        assert!(check(30, &claims(|c| c["exp"] = json!(NOW - 29))).is_ok());
    }

    #[test]
    fn nbf_and_iat_boundaries() {
        assert!(check(30, &claims(|c| c["nbf"] = json!(NOW + 30))).is_ok());
        assert_eq!(
            check(30, &claims(|c| c["nbf"] = json!(NOW + 31))),
            Err(TokenError::NotYetValid)
        );
        assert!(check(30, &claims(|c| c["iat"] = json!(NOW + 30))).is_ok());
        assert_eq!(
            check(30, &claims(|c| c["iat"] = json!(NOW + 31))),
            Err(TokenError::IssuedInFuture)
        );
        assert_eq!(
            check(0, &claims(|c| c["exp"] = json!(i64::MAX))).map(|t| t.exp),
            Ok(i64::MAX),
            "far-future exp does not overflow"
        );
    }

    #[test]
    fn rfc9068_claims_are_required() {
        for name in ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"] {
            let c = claims(|c| {
                c.as_object_mut().unwrap().remove(name);
            });
            assert!(check(0, &c).is_err(), "{name} missing");
        }
        assert_eq!(
            check(0, &claims(|c| c["iss"] = json!("other"))),
            Err(TokenError::Issuer)
        );
        assert_eq!(
            check(0, &claims(|c| c["aud"] = json!(["b", "c"]))),
            Err(TokenError::Audience)
        );
    }

    #[test]
    fn identities_a_header_would_change_are_refused() {
        for (claim, value) in [
            ("sub", json!("alice\nX-Auth-Scopes: admin")),
            ("sub", json!(" alice")),
            ("sub", json!("")),
            ("sub", json!("ålice")),
            ("client_id", json!("web\t")),
            ("client_id", json!("web\u{0}")),
        ] {
            assert_eq!(
                check(0, &claims(|c| c[claim] = value.clone())),
                Err(TokenError::Identity(claim)),
                "{claim}: {value:?}"
            );
        }
        assert!(check(0, &claims(|c| c["sub"] = json!("user:alice smith"))).is_ok());
    }

    fn with_claims_kept(payload: &str) -> Result<VerifiedToken, TokenError> {
        check_with(0, true, &token_of(payload))
    }

    #[test]
    fn only_the_claims_their_readers_name_are_kept() {
        let keys = test_keys(None);
        let rules = TokenRules {
            audiences: vec!["a".into()],
            leeway_secs: 0,
            max_token_bytes: 8192,
            keep_claims: true,
            kept_claims: Some(Arc::new(BTreeSet::from(["groups".to_owned()]))),
        };
        let payload = claims(|c| {
            c["groups"] = json!(["admins"]);
            c["big"] = json!(vec![[[0u8; 8]; 8]; 8]);
        });
        let token = token_of(&payload.to_string());
        let verified = validate(
            &token,
            &rules,
            |iss| (iss == "i").then(|| keys.clone()),
            NOW,
        )
        .unwrap();
        let kept = verified.claims.unwrap();
        let names: Vec<&String> = kept.keys().collect();
        assert_eq!(
            names,
            ["groups"],
            "a cached token holds what is read, no more"
        );
    }

    #[test]
    fn claims_are_kept_for_conditions_and_spelled_once_at_every_depth() {
        let mut c = claims(|c| c["org"] = json!({"id": "acme", "roles": ["admin"]}));
        let kept = with_claims_kept(&c.to_string()).unwrap().claims.unwrap();
        assert_eq!(kept["org"]["roles"][0], "admin");
        assert_eq!(kept.len(), c.as_object().unwrap().len());
        // Nested duplicates: a condition would read one, the app perhaps the other.
        c["org"] = json!("PLACEHOLDER");
        let twice = c
            .to_string()
            .replace(r#""PLACEHOLDER""#, r#"{"id":"acme","id":"evil"}"#);
        assert_eq!(
            with_claims_kept(&twice).err(),
            Some(TokenError::Claims(JsonError::Duplicate))
        );
        // Without conditions nothing is kept.
        assert!(check(0, &claims(|_| {})).unwrap().claims.is_none());
    }

    #[test]
    fn scopes_come_from_strings_or_lists_filtered_by_prefix() {
        let claims: Claims = json!({
            "scp": "read write  read",
            "okta": ["read", "write"],
            "realm_access": {"roles": ["offline_access", "shop:read", "shop:a b", "billing:x"]},
            "number": 7,
            "mixed": ["read", 1],
        })
        .as_object()
        .cloned()
        .unwrap();
        let from = |claim: &str, prefix: Option<&str>| {
            let source = ScopeClaim {
                claim: claim.into(),
                prefix: prefix.map(str::to_owned),
            };
            scopes_from_claim(&claims, &source)
        };
        assert_eq!(from("scp", None), Ok("read write".into()));
        assert_eq!(from("okta", None), Ok("read write".into()));
        assert_eq!(from("realm_access.roles", Some("shop:")), Ok("read".into()));
        assert_eq!(
            from("realm_access.roles", None),
            Ok("offline_access shop:read billing:x".into())
        );
        assert_eq!(from("absent", None), Ok(String::new()));
        assert_eq!(from("realm_access.missing", None), Ok(String::new()));
        assert_eq!(from("number", None), Err(TokenError::ScopeClaimType));
        assert_eq!(from("mixed", None), Err(TokenError::ScopeClaimType));
        assert_eq!(from("realm_access", None), Err(TokenError::ScopeClaimType));
    }
}
