//! The verifier's decision on one request, step by step, as the sidecar takes it and
//! `kubectl scopegate explain` retells it.
//!
//! After the path is normalised ([`crate::path::RequestPath`]) and a rule chosen
//! ([`crate::policy::Policy::route`]):
//! 1. [`before_verification`]: a public route passes without reading credentials; otherwise
//!    the `Authorization` header must hold one well-formed bearer token
//!    ([`crate::credentials::extract`]): a malformed request is `invalid_request`, none is a
//!    bare 401 challenge.
//! 2. The token is validated ([`crate::token::validate`], plus revocation): any failure is
//!    `invalid_token`. The sidecar does this asynchronously (a remote key set may be
//!    refetched), so it is a step of its own.
//! 3. [`after_verification`]: the token's scopes must satisfy the rule; a route the default
//!    action denies refuses every token.
//!
//! [`evaluate`] runs the three in order with a synchronous validator and records what each
//! step saw, for the CLI.

use http::HeaderMap;

use crate::answer::Refusal;
use crate::credentials::{self, Credentials, CredentialsError};
use crate::policy::{Requirement, ScopeRequirement, scopes_satisfy, scopes_to_name};
use crate::token::{TokenError, VerifiedToken};

/// What a verified token must still satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant<'a> {
    /// These scopes (possibly none: any valid token).
    Scopes(ScopeRequirement<'a>),
    /// Nothing: the default action denies the route, a valid token gets 403.
    Denied,
}

/// Where a request stands before any token is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// A public route: it passes, and its credentials are never read.
    Public,
    /// A bearer token to validate, then to hold against `grant`.
    Verify {
        /// The b64token from the `Authorization` header.
        token: &'a str,
        /// What the token must satisfy once valid.
        grant: Grant<'a>,
    },
}

/// Why a request was refused before its token was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Early {
    /// The credentials are malformed (RFC 6750 `invalid_request`).
    #[error("malformed credentials: {0}")]
    Malformed(CredentialsError),
    /// The route needs a token and the request carries none.
    #[error("no bearer token")]
    NoCredentials,
}

impl Early {
    /// The refusal the client gets.
    pub fn refusal(self) -> Refusal {
        match self {
            Early::Malformed(_) => Refusal::InvalidRequest,
            Early::NoCredentials => Refusal::NoCredentials,
        }
    }
}

/// Step 1: what a request's credentials lead to under `requirement`. `query` is the raw
/// query string (a token there besides the header makes the request malformed).
pub fn before_verification<'a>(
    requirement: Requirement<'a>,
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<Step<'a>, Early> {
    let grant = match requirement {
        Requirement::Public => return Ok(Step::Public),
        Requirement::Token(scopes) => Grant::Scopes(scopes),
        Requirement::Deny => Grant::Denied,
    };
    match credentials::extract(headers, query).map_err(Early::Malformed)? {
        Credentials::Bearer(token) => Ok(Step::Verify { token, grant }),
        Credentials::None => Err(Early::NoCredentials),
    }
}

/// The refusal for a token that failed validation (or is revoked): always `invalid_token`;
/// the reason goes to the log only.
pub fn token_refused(_reason: &TokenError) -> Refusal {
    Refusal::InvalidToken
}

/// Step 3: whether a valid token's checked `scope` claim satisfies `grant`.
pub fn after_verification(grant: Grant<'_>, scope_claim: &str) -> Result<(), Refusal> {
    match grant {
        Grant::Denied => Err(Refusal::Forbidden),
        Grant::Scopes(needed) if scopes_satisfy(needed, scope_claim) => Ok(()),
        Grant::Scopes(needed) => Err(Refusal::InsufficientScope(scopes_to_name(needed).join(" "))),
    }
}

/// What each step of [`evaluate`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trace {
    /// A public route: credentials not read.
    Public,
    /// Refused at step 1.
    Early(Early),
    /// A token was presented; the result of validating it and, when valid, of the scope
    /// check.
    Token {
        /// What the token must satisfy.
        grant: GrantOwned,
        /// The validation result.
        validation: Result<VerifiedToken, TokenError>,
    },
}

/// [`Grant`] with owned scopes, for a trace that outlives the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOwned {
    /// Any valid token.
    AnyToken,
    /// All of these scopes.
    All(Vec<String>),
    /// All of at least one of these sets.
    Any(Vec<Vec<String>>),
    /// The default action denies the route.
    Denied,
}

impl From<Grant<'_>> for GrantOwned {
    fn from(grant: Grant<'_>) -> Self {
        match grant {
            Grant::Denied => GrantOwned::Denied,
            Grant::Scopes(ScopeRequirement::None) => GrantOwned::AnyToken,
            Grant::Scopes(ScopeRequirement::All(s)) => GrantOwned::All(s.to_vec()),
            Grant::Scopes(ScopeRequirement::Any(sets)) => GrantOwned::Any(sets.to_vec()),
        }
    }
}

/// The outcome of [`evaluate`]: the decision and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// `Ok(Some(token))`: forwarded with this identity; `Ok(None)`: forwarded as public;
    /// `Err`: refused.
    pub decision: Result<Option<VerifiedToken>, Refusal>,
    /// What the steps saw.
    pub trace: Trace,
}

/// Runs the three steps with a synchronous validator (which should check revocation too).
pub fn evaluate(
    requirement: Requirement<'_>,
    headers: &HeaderMap,
    query: Option<&str>,
    validate: impl FnOnce(&str) -> Result<VerifiedToken, TokenError>,
) -> Evaluation {
    let (token, grant) = match before_verification(requirement, headers, query) {
        Ok(Step::Public) => {
            return Evaluation {
                decision: Ok(None),
                trace: Trace::Public,
            };
        }
        Err(early) => {
            return Evaluation {
                decision: Err(early.refusal()),
                trace: Trace::Early(early),
            };
        }
        Ok(Step::Verify { token, grant }) => (token, grant),
    };
    let validation = validate(token);
    let decision = match &validation {
        Err(reason) => Err(token_refused(reason)),
        Ok(verified) => after_verification(grant, &verified.scope).map(|()| Some(verified.clone())),
    };
    Evaluation {
        decision,
        trace: Trace::Token {
            grant: grant.into(),
            validation,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::AUTHORIZATION;

    fn verified(scope: &str) -> VerifiedToken {
        VerifiedToken {
            iss: "i".into(),
            sub: Some("s".into()),
            client_id: Some("c".into()),
            scope: scope.into(),
            exp: 0,
            iat: None,
            jti: None,
            claims: None,
        }
    }

    fn bearer(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn public_routes_never_read_credentials() {
        let h = bearer("Bearer a\"b");
        let e = evaluate(Requirement::Public, &h, None, |_| panic!("not verified"));
        assert_eq!(e.decision, Ok(None));
        assert_eq!(e.trace, Trace::Public);
    }

    #[test]
    fn each_step_refuses_with_its_own_answer() {
        let needed = vec!["read".to_string()];
        let req = Requirement::Token(ScopeRequirement::All(&needed));
        let none = HeaderMap::new();
        assert_eq!(
            evaluate(req, &none, None, |_| panic!()).decision,
            Err(Refusal::NoCredentials)
        );
        let h = bearer("Bearer a\"b");
        assert_eq!(
            evaluate(req, &h, None, |_| panic!()).decision,
            Err(Refusal::InvalidRequest)
        );
        let h = bearer("Bearer abc");
        assert_eq!(
            evaluate(req, &h, Some("access_token=x"), |_| panic!()).decision,
            Err(Refusal::InvalidRequest)
        );
        assert_eq!(
            evaluate(req, &h, None, |_| Err(TokenError::Expired)).decision,
            Err(Refusal::InvalidToken)
        );
        assert_eq!(
            evaluate(req, &h, None, |_| Ok(verified("write"))).decision,
            Err(Refusal::InsufficientScope("read".into()))
        );
        assert_eq!(
            evaluate(req, &h, None, |t| {
                assert_eq!(t, "abc");
                Ok(verified("read write"))
            })
            .decision,
            Ok(Some(verified("read write")))
        );
        assert_eq!(
            evaluate(Requirement::Deny, &h, None, |_| Ok(verified("read"))).decision,
            Err(Refusal::Forbidden)
        );
    }
}
