//! The one place where a call the egress proxy could not complete becomes the app's answer:
//! its status, a short JSON body naming what failed (the host or target, the issuer's error
//! code, a bounded reason; never a token), and the counter it goes to.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use scopegate_sidecar_kit::body::{ProxyBody, full};
use serde_json::{Value, json};

use crate::exchange::CallerTokenError;
use crate::forward::UpstreamError;
use crate::issuer::TokenFailure;
use crate::metrics::Outcome;
use crate::route::Unroutable;
use crate::token::FAILURE_MEMORY;

/// What a call the proxy did not complete failed at.
#[derive(Debug)]
pub enum Failure<'a> {
    /// It names no declared target, or not in a way the proxy takes.
    Unroutable(Unroutable),
    /// No token for its target.
    Token {
        /// The target's name.
        target: &'a str,
        /// Why.
        failure: TokenFailure,
    },
    /// Its target acts on behalf of the caller, and the app forwarded no caller token the
    /// sidecar can exchange.
    CallerToken {
        /// The target's name.
        target: &'a str,
        /// What is wrong with the app's `Authorization`.
        problem: CallerTokenError,
    },
    /// Its target acts on behalf of the caller, and the issuer refused to exchange the
    /// caller's token ([`crate::exchange::is_callers_error`]).
    CallerTokenRefused {
        /// The target's name.
        target: &'a str,
        /// The issuer's OAuth `error` code.
        issuer_error: String,
    },
    /// Its target gave no answer.
    Upstream {
        /// The target's name.
        target: &'a str,
        /// Why.
        error: UpstreamError,
    },
}

impl Failure<'_> {
    /// The counter it goes to.
    pub fn outcome(&self) -> Outcome {
        match self {
            Failure::Unroutable(Unroutable::Undeclared(_)) => Outcome::RefusedTarget,
            Failure::Unroutable(_) => Outcome::RefusedRequest,
            Failure::CallerToken { .. } => Outcome::CallerTokenMissing,
            Failure::CallerTokenRefused { .. } => Outcome::CallerTokenRefused,
            Failure::Token { failure, .. } if failure.is_refusal() => Outcome::TokenRefused,
            Failure::Token { .. } => Outcome::TokenUnavailable,
            Failure::Upstream {
                error: UpstreamError::Unreachable,
                ..
            } => Outcome::UpstreamUnreachable,
            Failure::Upstream {
                error: UpstreamError::Timeout,
                ..
            } => Outcome::UpstreamTimeout,
        }
    }

    /// The status and the JSON body of the app's answer.
    fn status_and_body(&self) -> (StatusCode, Value) {
        match self {
            Failure::Unroutable(Unroutable::Connect) => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({
                    "error": "connect_not_supported",
                    "message": "CONNECT is not supported: call http:// URLs through this proxy; the sidecar adds TLS and the token itself",
                }),
            ),
            Failure::Unroutable(Unroutable::Malformed(why)) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": why}),
            ),
            Failure::Unroutable(Unroutable::Undeclared(host)) => (
                StatusCode::FORBIDDEN,
                json!({
                    "error": "not_an_egress_target",
                    "host": host,
                    "message": format!("{host} is not a declared egress target"),
                }),
            ),
            // 400, not 401 or 403: the caller was not judged and the target never saw the
            // call; the app's request lacks what it must carry (its one duty for such a
            // target), and a 401/403 would read as the target's verdict on the caller.
            Failure::CallerToken { target, problem } => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "caller_token_required",
                    "target": target,
                    "reason": problem.reason(),
                    "message": format!(
                        "{target} is called on behalf of the caller: forward the Authorization: Bearer header of the request being served ({problem})"
                    ),
                }),
            ),
            Failure::CallerTokenRefused {
                target,
                issuer_error,
            } => (
                StatusCode::FORBIDDEN,
                json!({
                    "error": "caller_token_refused",
                    "target": target,
                    "issuer_error": issuer_error,
                    "message": format!(
                        "the issuer refused to exchange the caller's token for {target} ({issuer_error})"
                    ),
                }),
            ),
            Failure::Token {
                target,
                failure: TokenFailure::Refused { error },
            } => (
                StatusCode::BAD_GATEWAY,
                json!({"error": "token_refused", "target": target, "issuer_error": error}),
            ),
            Failure::Token { target, failure } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "token_unavailable", "target": target, "reason": failure.reason()}),
            ),
            Failure::Upstream {
                target,
                error: UpstreamError::Unreachable,
            } => (
                StatusCode::BAD_GATEWAY,
                json!({"error": "upstream_unreachable", "target": target}),
            ),
            Failure::Upstream {
                target,
                error: UpstreamError::Timeout,
            } => (
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error": "upstream_timeout", "target": target}),
            ),
        }
    }
}

/// The app's answer to a call that failed so.
pub fn answer(failure: &Failure<'_>) -> Response<ProxyBody> {
    let (status, body) = failure.status_and_body();
    let body = body.to_string();
    let mut response = Response::new(full(body.clone()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(FAILURE_MEMORY.as_secs()),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(failure: Failure<'_>) -> (StatusCode, Value, Option<HeaderValue>) {
        let response = answer(&failure);
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).cloned();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap(), retry)
    }

    #[tokio::test]
    async fn each_failure_names_what_failed() {
        let (status, body, _) = body_of(Failure::Unroutable(Unroutable::Undeclared(
            "evil.example".into(),
        )))
        .await;
        assert_eq!(status, 403);
        assert_eq!(body["host"], "evil.example");
        assert_eq!(body["error"], "not_an_egress_target");
        let refused = Failure::Token {
            target: "orders",
            failure: TokenFailure::Refused {
                error: "invalid_client".into(),
            },
        };
        assert_eq!(refused.outcome(), Outcome::TokenRefused);
        let (status, body, _) = body_of(refused).await;
        assert_eq!(status, 502);
        assert_eq!(
            body,
            json!({"error": "token_refused", "target": "orders", "issuer_error": "invalid_client"})
        );
        let (status, body, retry) = body_of(Failure::Token {
            target: "orders",
            failure: TokenFailure::Timeout,
        })
        .await;
        assert_eq!(status, 503);
        assert_eq!(body["reason"], "issuer_timeout");
        assert_eq!(retry.unwrap(), "1");
        let (status, _, _) = body_of(Failure::Upstream {
            target: "orders",
            error: UpstreamError::Timeout,
        })
        .await;
        assert_eq!(status, 504);
        let missing = Failure::CallerToken {
            target: "inventory",
            problem: CallerTokenError::Missing,
        };
        assert_eq!(missing.outcome(), Outcome::CallerTokenMissing);
        let (status, body, retry) = body_of(missing).await;
        assert_eq!(status, 400);
        assert_eq!(retry, None);
        assert_eq!(body["error"], "caller_token_required");
        assert_eq!(body["target"], "inventory");
        assert_eq!(body["reason"], "missing");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("inventory"), "{message}");
        assert!(message.contains("Authorization: Bearer"), "{message}");
        let refused = Failure::CallerTokenRefused {
            target: "inventory",
            issuer_error: "invalid_request".into(),
        };
        assert_eq!(refused.outcome(), Outcome::CallerTokenRefused);
        let (status, body, _) = body_of(refused).await;
        assert_eq!(status, 403);
        assert_eq!(body["error"], "caller_token_refused");
        assert_eq!(body["target"], "inventory");
        assert_eq!(body["issuer_error"], "invalid_request");
    }
}
