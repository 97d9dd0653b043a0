//! What a verified token's claims decide besides its scopes: the rule's `when` condition,
//! and the claim headers the app is told (`headers.claims`), with the identity headers.

use http::header::{HeaderName, HeaderValue};
use scopegate_core::claim_headers;
use scopegate_core::condition::{Condition, RequestFacts};
use scopegate_core::policy::Route;

use crate::answer::Refusal;
use crate::headers;
use crate::settings::HeaderSettings;
use crate::token::VerifiedToken;

/// The verdict of a rule's condition for a token that passed the scope check: anything but
/// `true` refuses.
pub(crate) fn judge(
    condition: &Condition,
    facts: &RequestFacts<'_>,
    verified: &VerifiedToken,
    route: &Route<'_>,
) -> Result<(), Refusal> {
    // The settings keep claims whenever a rule has a condition; a token without them was
    // verified under other settings and is refused, never judged on no claims.
    let Some(claims) = verified.claims.as_deref() else {
        tracing::info!(rule = %route.label(), "a token verified without its claims; refused");
        return Err(Refusal::ConditionNotMet);
    };
    match condition.evaluate(claims, facts) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal::ConditionNotMet),
        Err(err) => {
            // The error may quote claim values: debug only.
            tracing::debug!(rule = %route.label(), reason = %err, "when condition failed");
            Err(Refusal::ConditionNotMet)
        }
    }
}

/// What the app is told about the caller: the verified token, and its claim headers.
pub(crate) struct AppIdentity<'a> {
    /// The verified token, if any.
    pub(crate) token: Option<&'a VerifiedToken>,
    /// Its claim headers, checked.
    pub(crate) claims: Vec<(HeaderName, HeaderValue)>,
}

impl<'a> AppIdentity<'a> {
    /// What the app is told about the caller of `token`; a claim a header cannot carry
    /// refuses the request.
    pub(crate) fn of(
        names: &HeaderSettings,
        token: Option<&'a VerifiedToken>,
    ) -> Result<Self, Refusal> {
        Ok(AppIdentity {
            claims: claim_headers(names, token)?,
            token,
        })
    }
}

/// The claim headers (`headers.claims`) of a verified token. A claim a header cannot carry
/// unchanged refuses the request (401 invalid_token) rather than forward a partial identity.
fn claim_headers(
    names: &HeaderSettings,
    token: Option<&VerifiedToken>,
) -> Result<Vec<(HeaderName, HeaderValue)>, Refusal> {
    let Some(token) = token.filter(|_| !names.claims.is_empty()) else {
        return Ok(Vec::new());
    };
    // The settings keep claims whenever claim headers are configured; a token cached before
    // a reload added them is refused rather than forwarded without them.
    let claims = token.claims.as_deref().ok_or(Refusal::InvalidToken)?;
    let mut values = Vec::with_capacity(names.claims.len());
    for (name, path) in &names.claims {
        match claim_headers::header_value(claims, path) {
            Ok(None) => {}
            Ok(Some(text)) => {
                // No control character is left: every other byte is a valid header byte.
                let value =
                    HeaderValue::from_bytes(text.as_bytes()).map_err(|_| Refusal::InvalidToken)?;
                values.push((name.clone(), value));
            }
            Err(err) => {
                tracing::info!(header = %name, reason = %err, "a claim cannot be passed as a header");
                return Err(Refusal::InvalidToken);
            }
        }
    }
    Ok(values)
}

/// Removes every spelling of the identity and claim headers the client sent, then sets them
/// from the verified token, if there is one.
pub(crate) fn set_identity_headers(
    headers: &mut http::HeaderMap,
    names: &HeaderSettings,
    identity: &AppIdentity<'_>,
) {
    let spoofed = headers::strip_spoofable(headers, &names.from_token);
    if spoofed > 0 {
        tracing::debug!(
            headers = spoofed,
            "removed headers the app could take for ours"
        );
    }
    for (name, value) in &identity.claims {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(token) = identity.token {
        let values = [
            (&names.subject, token.sub.as_deref()),
            (&names.scopes, Some(token.scope.as_str())),
            (&names.client_id, token.client_id.as_deref()),
        ];
        for (name, value) in values {
            // Validation refused every identity a header cannot carry unchanged.
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopegate_core::policy::Requirement;
    use scopegate_core::token::{Claims, KeptClaims};
    use std::sync::Arc;

    fn token(claims: Option<serde_json::Value>) -> VerifiedToken {
        VerifiedToken {
            iss: "https://auth.shop.svc".into(),
            sub: Some("alice".into()),
            client_id: Some("web".into()),
            scope: "read".into(),
            exp: i64::MAX,
            iat: None,
            jti: None,
            claims: claims.map(|c| {
                Arc::new(KeptClaims::new(
                    c.as_object().cloned().unwrap_or_else(Claims::new),
                ))
            }),
        }
    }

    #[test]
    fn a_token_without_its_claims_is_refused_never_judged_on_none() {
        // `!has(claims.act)` is true of no claims at all: a token cached under settings that
        // kept none (a reload's race) must not pass it.
        let condition = Condition::compile("!has(claims.act)").unwrap_or_else(|e| panic!("{e}"));
        let headers = http::HeaderMap::new();
        let facts = RequestFacts {
            method: "GET",
            path: "/",
            headers: &headers,
            source: None,
        };
        let route = Route {
            requirement: Requirement::Public,
            rule_name: Some("guarded"),
            rule_index: Some(0),
            enforced: true,
        };
        let kept = token(Some(serde_json::json!({"sub": "alice"})));
        assert_eq!(judge(&condition, &facts, &kept, &route), Ok(()));
        let acting = token(Some(serde_json::json!({"act": {"sub": "admin"}})));
        assert_eq!(
            judge(&condition, &facts, &acting, &route),
            Err(Refusal::ConditionNotMet)
        );
        assert_eq!(
            judge(&condition, &facts, &token(None), &route),
            Err(Refusal::ConditionNotMet)
        );
    }
}
