//! The one place where a refusal becomes a status code and a `WWW-Authenticate` challenge
//! (RFC 6750 §3). Clients learn the error code and, for `insufficient_scope`, the scopes the
//! route needs; the detailed reason goes to the log only.

use http::{HeaderValue, StatusCode};

/// Why the sidecar answered a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path spelling is ambiguous or malformed (before any rule could match).
    BadPath,
    /// A malformed request: two Authorization headers, a token in header and query, a
    /// malformed b64token.
    InvalidRequest,
    /// The route needs a token and none came.
    NoCredentials,
    /// The token is invalid, expired, revoked or not for us.
    InvalidToken,
    /// A valid token without the scopes the route needs (named here, space-separated).
    InsufficientScope(String),
    /// A valid token on a route that the default action denies.
    Forbidden,
    /// A valid token with the scopes, but the rule's `when` condition is not true.
    ConditionNotMet,
    /// A rate limit is exhausted; seconds until the next request may pass.
    RateLimited(u64),
    /// The revocation feed is stale and the policy fails closed.
    Unavailable,
    /// The app could not be reached or broke the connection.
    UpstreamUnreachable,
    /// The app did not answer in time.
    UpstreamTimeout,
    /// The client went silent while sending the request body.
    BodyTimeout,
}

/// The answer to a refusal: status, optional challenge, optional `Retry-After` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// `WWW-Authenticate` value, when the refusal is about credentials.
    pub challenge: Option<HeaderValue>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

/// The realm named in every challenge.
pub const REALM: &str = "scopegate";

/// Maps a refusal to its answer.
pub fn answer(refusal: &Refusal) -> Answer {
    let challenge = |params: &str| {
        let value = if params.is_empty() {
            format!("Bearer realm=\"{REALM}\"")
        } else {
            format!("Bearer realm=\"{REALM}\", {params}")
        };
        // Only scope tokens (no quote, backslash or control character) are interpolated.
        HeaderValue::from_str(&value).ok()
    };
    let (status, challenge, retry_after) = match refusal {
        Refusal::BadPath => (StatusCode::BAD_REQUEST, None, None),
        Refusal::InvalidRequest => (
            StatusCode::BAD_REQUEST,
            challenge("error=\"invalid_request\""),
            None,
        ),
        Refusal::NoCredentials => (StatusCode::UNAUTHORIZED, challenge(""), None),
        Refusal::InvalidToken => (
            StatusCode::UNAUTHORIZED,
            challenge("error=\"invalid_token\""),
            None,
        ),
        Refusal::InsufficientScope(scopes) => (
            StatusCode::FORBIDDEN,
            challenge(&format!("error=\"insufficient_scope\", scope=\"{scopes}\"")),
            None,
        ),
        Refusal::Forbidden | Refusal::ConditionNotMet => (
            StatusCode::FORBIDDEN,
            challenge("error=\"insufficient_scope\""),
            None,
        ),
        Refusal::RateLimited(secs) => (StatusCode::TOO_MANY_REQUESTS, None, Some(*secs)),
        Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, None, Some(5)),
        Refusal::UpstreamUnreachable => (StatusCode::BAD_GATEWAY, None, None),
        Refusal::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, None, None),
        Refusal::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, None, None),
    };
    Answer {
        status,
        challenge,
        retry_after,
    }
}

impl Refusal {
    /// The bounded metric label of the outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::BadPath => "bad_path",
            Refusal::InvalidRequest => "invalid_request",
            Refusal::NoCredentials => "no_credentials",
            Refusal::InvalidToken => "invalid_token",
            Refusal::InsufficientScope(_) => "insufficient_scope",
            Refusal::Forbidden => "forbidden",
            Refusal::ConditionNotMet => "condition_not_met",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::Unavailable => "unavailable",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::BodyTimeout => "body_timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn www(r: Refusal) -> (u16, Option<String>) {
        let a = answer(&r);
        (
            a.status.as_u16(),
            a.challenge.map(|v| v.to_str().unwrap().to_owned()),
        )
    }

    #[test]
    fn rfc6750_challenges() {
        assert_eq!(
            www(Refusal::NoCredentials),
            (401, Some("Bearer realm=\"scopegate\"".into()))
        );
        assert_eq!(
            www(Refusal::InvalidRequest),
            (
                400,
                Some("Bearer realm=\"scopegate\", error=\"invalid_request\"".into())
            )
        );
        assert_eq!(
            www(Refusal::InvalidToken),
            (
                401,
                Some("Bearer realm=\"scopegate\", error=\"invalid_token\"".into())
            )
        );
        assert_eq!(
            www(Refusal::InsufficientScope("a b".into())),
            (
                403,
                Some(
                    "Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"a b\""
                        .into()
                )
            )
        );
        assert_eq!(www(Refusal::BadPath), (400, None));
        assert_eq!(answer(&Refusal::RateLimited(7)).retry_after, Some(7));
        assert_eq!(www(Refusal::UpstreamTimeout), (504, None));
        assert_eq!(www(Refusal::UpstreamUnreachable), (502, None));
    }
}
