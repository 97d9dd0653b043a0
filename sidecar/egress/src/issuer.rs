//! One token request to the client's issuer, authenticated with the pod's projected
//! ServiceAccount token as the client assertion (RFC 7523 §2.2), for one audience (RFC 8707
//! `resource`) and the target's scopes: `client_credentials` for the pod's own token, or a
//! token exchange (RFC 8693) of the caller's token for a target on behalf of the caller. The
//! assertion file is read for every request, so the kubelet's rotation needs nothing more.
//! Neither the assertion, the caller's token nor the token they buy is ever logged or put in
//! an error.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use scopegate_core::clients::TOKEN_EXCHANGE_GRANT;
use scopegate_fetch::ProxyConnector;
use scopegate_sidecar_kit::form::form_encode;
use serde::Deserialize;

/// The `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `subject_token_type` and `requested_token_type` of an exchange (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How long one token request may take, connect to last byte.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest token answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Largest assertion file read, in bytes (a projected token is about 1 KiB; the issuer
/// refuses more than 8 KiB).
const MAX_ASSERTION_BYTES: u64 = 16 * 1024;

/// The lifetime taken when an answer names none (RFC 6749 makes `expires_in` optional).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// The longest lifetime taken from an answer: a token is asked for again after a day at
/// the latest, whatever the issuer says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The HTTPS client of the token endpoint.
pub type TokenClient = Client<HttpsConnector<ProxyConnector>, Full<Bytes>>;

/// Where and as whom tokens are asked for.
#[derive(Clone)]
pub struct TokenEndpoint {
    /// The token endpoint.
    pub uri: Uri,
    /// The client_id sent with the assertion.
    pub client_id: String,
    /// The projected ServiceAccount token.
    pub assertion_path: PathBuf,
    /// The audience that token must carry (the issuer's URL): it is sent nowhere else.
    pub token_audience: String,
    /// A client trusting the operator's CA only.
    pub client: TokenClient,
}

/// What one token request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The audience (`resource`).
    pub audience: String,
    /// The scopes, sorted, without repeats, joined by spaces (empty: the client's defaults).
    pub scope: String,
}

impl TokenKey {
    /// The key of a target's tokens: one per audience and set of scopes, whatever their order.
    pub fn new(audience: &str, scopes: &[String]) -> TokenKey {
        let mut scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        scopes.dedup();
        TokenKey {
            audience: audience.to_owned(),
            scope: scopes.join(" "),
        }
    }
}

/// What a token request presents for its token, besides the client's assertion.
#[derive(Clone, Copy)]
pub enum Grant<'a> {
    /// The pod's own token: `client_credentials`.
    Own,
    /// A token on behalf of the caller: its access token, exchanged (RFC 8693).
    Exchange {
        /// The caller's access token (`subject_token`).
        subject: &'a str,
    },
}

/// A token the issuer granted: the `Authorization` value to send, and how long it lives.
#[derive(Debug, Clone)]
pub struct Granted {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// `expires_in`.
    pub lifetime: Duration,
}

/// Why no token was obtained. No variant carries the assertion or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFailure {
    /// The issuer refused the request (4xx but 429); its `error` code, when it is one.
    #[error("the issuer refused the token request ({error})")]
    Refused {
        /// The OAuth `error` code of the answer, or `unknown`.
        error: String,
    },
    /// The assertion file is missing, unreadable, too large or empty.
    #[error("the ServiceAccount token file is missing, unreadable or empty")]
    Assertion,
    /// The ServiceAccount token is for another audience than this token endpoint's issuer
    /// (the egress client changed since the pod started: it needs a restart).
    #[error("the ServiceAccount token is not for this issuer; restart the pod")]
    OtherAudience,
    /// No connection, TLS or protocol failure.
    #[error("the issuer is unreachable")]
    Unreachable,
    /// No full answer within [`TOKEN_TIMEOUT`].
    #[error("the issuer did not answer in time")]
    Timeout,
    /// A 5xx or 429 answer.
    #[error("the issuer answered {0}")]
    Status(u16),
    /// A 2xx answer that is no usable bearer token.
    #[error("the issuer's answer holds no usable bearer token")]
    Answer,
}

impl TokenFailure {
    /// Whether the issuer refused (the app gets 502), rather than could not answer (503).
    pub fn is_refusal(&self) -> bool {
        matches!(self, TokenFailure::Refused { .. })
    }

    /// A short, bounded reason for answers, logs and `/readyz`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenFailure::Refused { .. } => "issuer_refused",
            TokenFailure::Assertion => "assertion_unreadable",
            TokenFailure::OtherAudience => "assertion_for_another_issuer",
            TokenFailure::Unreachable => "issuer_unreachable",
            TokenFailure::Timeout => "issuer_timeout",
            TokenFailure::Status(_) => "issuer_unavailable",
            TokenFailure::Answer => "issuer_answer_unusable",
        }
    }
}

/// Asks `endpoint` for a token of `key`, by `grant`.
pub async fn request(
    endpoint: &TokenEndpoint,
    key: &TokenKey,
    grant: Grant<'_>,
) -> Result<Granted, TokenFailure> {
    let assertion = read_assertion(endpoint).await?;
    let body = form(&endpoint.client_id, &assertion, key, grant);
    let request = Request::post(endpoint.uri.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| TokenFailure::Unreachable)?;
    let exchange = async {
        let response = endpoint.client.request(request).await.map_err(|err| {
            tracing::debug!(error = %scopegate_core::error_chain(&err), "token endpoint unreachable");
            TokenFailure::Unreachable
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| TokenFailure::Unreachable)?
            .to_bytes();
        answer(status, &body)
    };
    tokio::time::timeout(TOKEN_TIMEOUT, exchange)
        .await
        .map_err(|_| TokenFailure::Timeout)?
}

/// The assertion: the file's content, trimmed.
async fn read_assertion(endpoint: &TokenEndpoint) -> Result<String, TokenFailure> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(&endpoint.assertion_path)
        .await
        .map_err(|_| TokenFailure::Assertion)?;
    let mut text = String::new();
    file.take(MAX_ASSERTION_BYTES + 1)
        .read_to_string(&mut text)
        .await
        .map_err(|_| TokenFailure::Assertion)?;
    let trimmed = text.trim();
    if trimmed.is_empty() || text.len() as u64 > MAX_ASSERTION_BYTES {
        return Err(TokenFailure::Assertion);
    }
    if !for_audience(trimmed, &endpoint.token_audience) {
        return Err(TokenFailure::OtherAudience);
    }
    Ok(trimmed.to_owned())
}

/// Whether the JWT's `aud` is exactly `audience` (read, not verified: it is our own token,
/// and the point is only never to hand it to an issuer it is not for).
fn for_audience(jwt: &str, audience: &str) -> bool {
    use scopegate_core::jose::json::{Audience, parse_claims};
    let Ok(compact) = scopegate_core::jose::jws::parse(jwt) else {
        return false;
    };
    match parse_claims(compact.payload()).ok().and_then(|c| c.aud) {
        Some(Audience::One(aud)) => aud == audience,
        Some(Audience::Many(auds)) => auds.len() == 1 && auds[0] == audience,
        None => false,
    }
}

/// The form body of a token request.
fn form(client_id: &str, assertion: &str, key: &TokenKey, grant: Grant<'_>) -> String {
    let grant = match grant {
        Grant::Own => "grant_type=client_credentials".to_owned(),
        Grant::Exchange { subject } => format!(
            "grant_type={}&subject_token={}&subject_token_type={}&requested_token_type={}",
            form_encode(TOKEN_EXCHANGE_GRANT),
            form_encode(subject),
            form_encode(ACCESS_TOKEN_TYPE),
            form_encode(ACCESS_TOKEN_TYPE),
        ),
    };
    let mut body = format!(
        "{grant}&client_id={}&client_assertion_type={}&client_assertion={}&resource={}",
        form_encode(client_id),
        form_encode(JWT_BEARER),
        form_encode(assertion),
        form_encode(&key.audience),
    );
    if !key.scope.is_empty() {
        body.push_str("&scope=");
        body.push_str(&form_encode(&key.scope));
    }
    body
}

/// A token answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// An error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// What an answer of `status` with `body` comes to.
fn answer(status: StatusCode, body: &[u8]) -> Result<Granted, TokenFailure> {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(TokenFailure::Status(status.as_u16()));
    }
    if status.is_client_error() {
        let error = serde_json::from_slice::<ErrorAnswer>(body)
            .ok()
            .map(|e| e.error)
            .filter(|code| is_error_code(code))
            .unwrap_or_else(|| "unknown".to_owned());
        return Err(TokenFailure::Refused { error });
    }
    if status != StatusCode::OK {
        return Err(TokenFailure::Answer);
    }
    let granted: TokenAnswer = serde_json::from_slice(body).map_err(|_| TokenFailure::Answer)?;
    if !granted.token_type.eq_ignore_ascii_case("bearer")
        || !is_b64token(granted.access_token.as_bytes())
    {
        return Err(TokenFailure::Answer);
    }
    let lifetime = match granted.expires_in {
        Some(0) => return Err(TokenFailure::Answer),
        Some(secs) => Duration::from_secs(secs).min(MAX_LIFETIME),
        None => DEFAULT_LIFETIME,
    };
    let mut header = HeaderValue::from_str(&format!("Bearer {}", granted.access_token))
        .map_err(|_| TokenFailure::Answer)?;
    header.set_sensitive(true);
    Ok(Granted { header, lifetime })
}

/// RFC 6750 §2.1 `b64token`: what a bearer token may be, so that it is one header value and
/// nothing more. Every byte is looked at, without branching on each (a caller's token is
/// checked on every call on behalf of the caller).
pub(crate) fn is_b64token(token: &[u8]) -> bool {
    let end = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let body = &token[..end];
    !body.is_empty()
        && body.iter().fold(true, |ok, &b| {
            ok & matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}
/// RFC 6749 §5.2 error codes are `%x20-21 / %x23-5B / %x5D-7E`; the ones passed on to the
/// app are kept to the registered shape (letters, digits, `_`), at most 64 characters.
fn is_error_code(code: &str) -> bool {
    (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_audience_and_a_set_of_scopes() {
        let scopes = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = TokenKey::new("https://orders", &scopes(&["write", "read", "read"]));
        let b = TokenKey::new("https://orders", &scopes(&["read", "write"]));
        assert_eq!(a, b);
        assert_eq!(a.scope, "read write");
        assert_ne!(
            a,
            TokenKey::new("https://payments", &scopes(&["read", "write"]))
        );
    }

    #[test]
    fn the_form_names_the_client_the_assertion_the_audience_and_the_scopes() {
        let key = TokenKey::new("https://orders.shop.svc", &["read:orders".into()]);
        assert_eq!(
            form("shop.billing", "a.b.c", &key, Grant::Own),
            "grant_type=client_credentials&client_id=shop.billing\
             &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
             &client_assertion=a.b.c&resource=https%3A%2F%2Forders.shop.svc&scope=read%3Aorders"
        );
        let defaults = TokenKey::new("https://orders.shop.svc", &[]);
        assert!(!form("c", "a.b.c", &defaults, Grant::Own).contains("scope="));
    }

    #[test]
    fn an_exchange_presents_the_callers_token_as_the_subject() {
        let key = TokenKey::new(
            "https://inventory.shop.svc",
            &["read".into(), "list".into()],
        );
        let grant = Grant::Exchange {
            subject: "eyJ.c-d.e",
        };
        assert_eq!(
            form("shop.orders", "a.b.c", &key, grant),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &subject_token=eyJ.c-d.e\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &client_id=shop.orders\
             &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
             &client_assertion=a.b.c&resource=https%3A%2F%2Finventory.shop.svc&scope=list%20read"
        );
    }

    #[test]
    fn a_granted_token_becomes_a_sensitive_header() {
        let body = br#"{"access_token":"eyJ.x-y_z.s","token_type":"Bearer","expires_in":300,"scope":"read"}"#;
        let granted = answer(StatusCode::OK, body).unwrap();
        assert_eq!(granted.header, "Bearer eyJ.x-y_z.s");
        assert!(granted.header.is_sensitive());
        assert_eq!(granted.lifetime, Duration::from_secs(300));
        let forever = br#"{"access_token":"t","token_type":"bearer","expires_in":99999999}"#;
        assert_eq!(
            answer(StatusCode::OK, forever).unwrap().lifetime,
            MAX_LIFETIME
        );
        let silent = br#"{"access_token":"t","token_type":"Bearer"}"#;
        assert_eq!(
            answer(StatusCode::OK, silent).unwrap().lifetime,
            DEFAULT_LIFETIME
        );
    }

    #[test]
    fn an_answer_that_is_no_bearer_token_is_unusable() {
        for body in [
            &br#"{"access_token":"t","token_type":"DPoP","expires_in":300}"#[..],
            br#"{"access_token":"t\r\nX-Evil: 1","token_type":"Bearer","expires_in":300}"#,
            br#"{"access_token":"two words","token_type":"Bearer","expires_in":300}"#,
            br#"{"access_token":"","token_type":"Bearer","expires_in":300}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":0}"#,
            br#"{"token_type":"Bearer"}"#,
            b"not json",
        ] {
            assert_eq!(
                answer(StatusCode::OK, body).unwrap_err(),
                TokenFailure::Answer,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            answer(StatusCode::CREATED, b"{}").unwrap_err(),
            TokenFailure::Answer
        );
    }

    #[test]
    fn refusals_keep_a_registered_looking_error_code_only() {
        let refused = |status: u16, body: &[u8]| {
            answer(StatusCode::from_u16(status).unwrap(), body).unwrap_err()
        };
        assert_eq!(
            refused(
                401,
                br#"{"error":"invalid_client","error_description":"x"}"#
            ),
            TokenFailure::Refused {
                error: "invalid_client".into()
            }
        );
        for body in [
            &br#"{"error":"<script>"}"#[..],
            br#"{"error":"a b"}"#,
            b"<html>",
        ] {
            assert_eq!(
                refused(400, body),
                TokenFailure::Refused {
                    error: "unknown".into()
                }
            );
        }
        assert_eq!(refused(429, b"{}"), TokenFailure::Status(429));
        assert_eq!(refused(503, b"{}"), TokenFailure::Status(503));
        assert!(refused(400, b"{}").is_refusal());
        assert!(!refused(500, b"{}").is_refusal());
    }
}
