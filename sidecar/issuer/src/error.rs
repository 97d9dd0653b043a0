//! The one place where an issuer failure becomes an RFC 6749 §5.2 error: its code, status
//! and challenge. Descriptions are fixed text; details go to the log, never to the client.

use http::StatusCode;

/// An OAuth error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// A malformed request (`invalid_request`).
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// A required parameter is missing (`invalid_request`).
    #[error("invalid_request: {0} is missing")]
    Missing(&'static str),
    /// The body exceeds the limit (`invalid_request`, 413).
    #[error("invalid_request: body too large")]
    TooLarge,
    /// The body did not arrive within the read deadline (`invalid_request`, 408).
    #[error("invalid_request: body read deadline passed")]
    BodyTimeout,
    /// Not the method the endpoint takes (`invalid_request`, 405).
    #[error("invalid_request: method not allowed")]
    MethodNotAllowed(&'static str),
    /// Client authentication failed; `basic` when it was tried with HTTP Basic.
    #[error("invalid_client")]
    InvalidClient {
        /// HTTP Basic was used: 401 with a `Basic` challenge.
        basic: bool,
    },
    /// The grant (code, refresh token, verifier) is invalid, expired, revoked or not this
    /// client's.
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    /// The client may not use this grant or endpoint.
    #[error("unauthorized_client")]
    UnauthorizedClient,
    /// A grant type the issuer does not offer.
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// A response type the issuer does not offer.
    #[error("unsupported_response_type")]
    UnsupportedResponseType,
    /// A scope the client may not have, or none when it has no default.
    #[error("invalid_scope")]
    InvalidScope,
    /// A `resource` that is not one of the client's audiences (RFC 8707).
    #[error("invalid_target")]
    InvalidTarget,
    /// The user or the app refused (authorization responses only).
    #[error("access_denied")]
    AccessDenied,
    /// A rate limit is exhausted; seconds until the next try.
    #[error("rate limited")]
    RateLimited(u64),
    /// No key may sign, or the store is unreachable.
    #[error("temporarily_unavailable: {0}")]
    TemporarilyUnavailable(&'static str),
    /// An unexpected failure.
    #[error("server_error")]
    ServerError,
}

/// Realm of the `Basic` challenge.
pub const REALM: &str = "scopegate";

impl OAuthError {
    /// The RFC 6749 / RFC 8707 error code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_)
            | OAuthError::Missing(_)
            | OAuthError::TooLarge
            | OAuthError::BodyTimeout
            | OAuthError::MethodNotAllowed(_) => "invalid_request",
            OAuthError::InvalidClient { .. } => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::UnsupportedResponseType => "unsupported_response_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidTarget => "invalid_target",
            OAuthError::AccessDenied => "access_denied",
            OAuthError::RateLimited(_) | OAuthError::TemporarilyUnavailable(_) => {
                "temporarily_unavailable"
            }
            OAuthError::ServerError => "server_error",
        }
    }

    /// The HTTP status of the error at the token, revocation and introspection endpoints.
    pub fn status(&self) -> StatusCode {
        match self {
            OAuthError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            OAuthError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            OAuthError::InvalidClient { basic: true } => StatusCode::UNAUTHORIZED,
            OAuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            OAuthError::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The fixed, client-safe description.
    pub fn description(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(why)
            | OAuthError::InvalidGrant(why)
            | OAuthError::TemporarilyUnavailable(why) => why,
            OAuthError::Missing(name) => name,
            OAuthError::TooLarge => "the request body is too large",
            OAuthError::BodyTimeout => "the request body did not arrive in time",
            OAuthError::MethodNotAllowed(allowed) => allowed,
            OAuthError::InvalidClient { .. } => "client authentication failed",
            OAuthError::UnauthorizedClient => "the client may not use this grant or endpoint",
            OAuthError::UnsupportedGrantType => "grant type not supported",
            OAuthError::UnsupportedResponseType => "only response_type=code is supported",
            OAuthError::InvalidScope => "a requested scope is not allowed for this client",
            OAuthError::InvalidTarget => "the resource is not an audience of this client",
            OAuthError::AccessDenied => "the request was denied",
            OAuthError::RateLimited(_) => "too many requests",
            OAuthError::ServerError => "unexpected error",
        }
    }

    /// `Retry-After` seconds, when the client should come back.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            OAuthError::RateLimited(secs) => Some(*secs),
            OAuthError::TemporarilyUnavailable(_) => Some(5),
            _ => None,
        }
    }

    /// Whether the request counts as a failure for rate limiting (the client's fault).
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            OAuthError::RateLimited(_)
                | OAuthError::TemporarilyUnavailable(_)
                | OAuthError::ServerError
        )
    }

    /// The JSON body of the error.
    pub fn body(&self) -> serde_json::Value {
        let description = match self {
            OAuthError::Missing(name) => format!("{name} is missing"),
            other => other.description().to_owned(),
        };
        serde_json::json!({"error": self.code(), "error_description": description})
    }
}

impl From<super::store::StoreError> for OAuthError {
    fn from(err: super::store::StoreError) -> Self {
        tracing::error!(error = %err, "issuer store failed");
        OAuthError::TemporarilyUnavailable("state store unavailable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6749_codes_and_statuses() {
        let cases = [
            (OAuthError::InvalidRequest("x"), "invalid_request", 400),
            (OAuthError::Missing("code"), "invalid_request", 400),
            (OAuthError::TooLarge, "invalid_request", 413),
            (OAuthError::MethodNotAllowed("POST"), "invalid_request", 405),
            (
                OAuthError::InvalidClient { basic: true },
                "invalid_client",
                401,
            ),
            (
                OAuthError::InvalidClient { basic: false },
                "invalid_client",
                400,
            ),
            (OAuthError::InvalidGrant("x"), "invalid_grant", 400),
            (OAuthError::UnauthorizedClient, "unauthorized_client", 400),
            (
                OAuthError::UnsupportedGrantType,
                "unsupported_grant_type",
                400,
            ),
            (OAuthError::InvalidScope, "invalid_scope", 400),
            (OAuthError::InvalidTarget, "invalid_target", 400),
            (OAuthError::RateLimited(3), "temporarily_unavailable", 429),
            (
                OAuthError::TemporarilyUnavailable("x"),
                "temporarily_unavailable",
                503,
            ),
            (OAuthError::ServerError, "server_error", 500),
        ];
        for (err, code, status) in cases {
            assert_eq!(
                (err.code(), err.status().as_u16()),
                (code, status),
                "{err:?}"
            );
            assert_eq!(err.body()["error"], code);
        }
        assert_eq!(
            OAuthError::Missing("code").body()["error_description"],
            "code is missing"
        );
    }
}
