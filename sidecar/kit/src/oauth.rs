//! The sidecar's own requests to its issuer's token and revocation endpoints, as a client
//! that authenticates with the pod's projected ServiceAccount token (RFC 7523 §2.2): the
//! egress proxy's `client_credentials`, and the browser sessions' code redemption, refresh and
//! logout. The assertion file is read for every request, so the kubelet's rotation needs
//! nothing more, and it is sent only to the issuer it is for. Neither the assertion nor a
//! token it buys is ever logged or put in an error.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use scopegate_fetch::ProxyConnector;
use serde::Deserialize;

use crate::form::form_encode;

/// The `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long one request may take, connect to last byte.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Largest assertion file read, in bytes (a projected token is about 1 KiB; the issuer
/// refuses more than 8 KiB).
const MAX_ASSERTION_BYTES: u64 = 16 * 1024;

/// The lifetime taken when an answer names none (RFC 6749 makes `expires_in` optional).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// The longest lifetime taken from an answer: a token is asked for again after a day at
/// the latest, whatever the issuer says.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The HTTPS client of the issuer's endpoints.
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

/// What the issuer granted. Its `Debug` shows no token.
#[derive(Clone)]
pub struct Granted {
    /// The access token (an RFC 6750 b64token).
    pub access_token: String,
    /// The refresh token, when one came.
    pub refresh_token: Option<String>,
    /// `expires_in`, capped at [`MAX_LIFETIME`] ([`DEFAULT_LIFETIME`] when absent).
    pub lifetime: Duration,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why a request to the issuer failed. No variant carries the assertion or a token.
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
    /// (the client changed since the pod started: it needs a restart).
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
    /// Whether the issuer refused, rather than could not answer.
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

/// A token request: `params` (the grant's, `grant_type` first) with the client's
/// authentication appended.
pub async fn token(
    endpoint: &TokenEndpoint,
    params: &[(&str, &str)],
) -> Result<Granted, TokenFailure> {
    let (status, body) = post(endpoint, &endpoint.uri, params).await?;
    answer(status, &body)
}

/// An RFC 7009 revocation of `token` at `uri`, authenticated as the token endpoint's client.
/// A 200 is success whether or not the token was known.
pub async fn revoke(
    endpoint: &TokenEndpoint,
    uri: &Uri,
    token: &str,
    hint: &str,
) -> Result<(), TokenFailure> {
    let params = [("token", token), ("token_type_hint", hint)];
    let (status, body) = post(endpoint, uri, &params).await?;
    match status {
        StatusCode::OK => Ok(()),
        status => Err(refusal(status, &body)),
    }
}

/// POSTs the form of `params` and the client's authentication to `uri`; the status and body.
async fn post(
    endpoint: &TokenEndpoint,
    uri: &Uri,
    params: &[(&str, &str)],
) -> Result<(StatusCode, Bytes), TokenFailure> {
    let assertion = read_assertion(endpoint).await?;
    let body = form(params, &endpoint.client_id, &assertion);
    let request = Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| TokenFailure::Unreachable)?;
    let exchange = async {
        let response = endpoint.client.request(request).await.map_err(|err| {
            tracing::debug!(error = %scopegate_core::error_chain(&err), "issuer endpoint unreachable");
            TokenFailure::Unreachable
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| TokenFailure::Unreachable)?
            .to_bytes();
        Ok((status, body))
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

/// The form body: `params`, then the client's id and assertion.
fn form(params: &[(&str, &str)], client_id: &str, assertion: &str) -> String {
    let mut body = String::new();
    let auth = [
        ("client_id", client_id),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ];
    for (name, value) in params.iter().chain(auth.iter()) {
        if !body.is_empty() {
            body.push('&');
        }
        body.push_str(name);
        body.push('=');
        body.push_str(&form_encode(value));
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
    #[serde(default)]
    refresh_token: Option<String>,
}

/// An error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// What a token answer of `status` with `body` comes to.
fn answer(status: StatusCode, body: &[u8]) -> Result<Granted, TokenFailure> {
    if status != StatusCode::OK {
        // A 2xx other than 200 is no token answer.
        return Err(if status.is_success() {
            TokenFailure::Answer
        } else {
            refusal(status, body)
        });
    }
    let granted: TokenAnswer = serde_json::from_slice(body).map_err(|_| TokenFailure::Answer)?;
    if !granted.token_type.eq_ignore_ascii_case("bearer")
        || !is_b64token(granted.access_token.as_bytes())
    {
        return Err(TokenFailure::Answer);
    }
    if granted
        .refresh_token
        .as_deref()
        .is_some_and(|t| !is_b64token(t.as_bytes()))
    {
        return Err(TokenFailure::Answer);
    }
    let lifetime = match granted.expires_in {
        Some(0) => return Err(TokenFailure::Answer),
        Some(secs) => Duration::from_secs(secs).min(MAX_LIFETIME),
        None => DEFAULT_LIFETIME,
    };
    Ok(Granted {
        access_token: granted.access_token,
        refresh_token: granted.refresh_token,
        lifetime,
    })
}

/// The failure an answer other than 200 comes to.
fn refusal(status: StatusCode, body: &[u8]) -> TokenFailure {
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        let error = serde_json::from_slice::<ErrorAnswer>(body)
            .ok()
            .map(|e| e.error)
            .filter(|code| is_error_code(code))
            .unwrap_or_else(|| "unknown".to_owned());
        return TokenFailure::Refused { error };
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return TokenFailure::Status(status.as_u16());
    }
    TokenFailure::Answer
}

/// RFC 6750 §2.1 `b64token`: what a bearer token may be, so that it is one header value and
/// nothing more. Every byte is looked at, without branching on each (the egress proxy checks
/// a caller's token on every call on behalf of the caller).
pub fn is_b64token(token: &[u8]) -> bool {
    let end = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let body = &token[..end];
    !body.is_empty()
        && body.iter().fold(true, |ok, &b| {
            ok & matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// RFC 6749 §5.2 error codes are `%x20-21 / %x23-5B / %x5D-7E`; the ones passed on are kept
/// to the registered shape (letters, digits, `_`), at most 64 characters.
fn is_error_code(code: &str) -> bool {
    (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_names_the_grant_then_the_client_and_its_assertion() {
        let params = [
            ("grant_type", "client_credentials"),
            ("resource", "https://orders.shop.svc"),
            ("scope", "read:orders"),
        ];
        assert_eq!(
            form(&params, "shop.billing", "a.b.c"),
            "grant_type=client_credentials&resource=https%3A%2F%2Forders.shop.svc&scope=read%3Aorders\
             &client_id=shop.billing\
             &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
             &client_assertion=a.b.c"
        );
    }

    #[test]
    fn a_granted_token_keeps_its_refresh_token_and_a_capped_lifetime() {
        let body = br#"{"access_token":"eyJ.x-y_z.s","token_type":"Bearer","expires_in":300,"scope":"read","refresh_token":"r.1"}"#;
        let granted = answer(StatusCode::OK, body).unwrap();
        assert_eq!(granted.access_token, "eyJ.x-y_z.s");
        assert_eq!(granted.refresh_token.as_deref(), Some("r.1"));
        assert_eq!(granted.lifetime, Duration::from_secs(300));
        assert!(!format!("{granted:?}").contains("eyJ"));
        assert!(!format!("{granted:?}").contains("r.1"));
        let forever = br#"{"access_token":"t","token_type":"bearer","expires_in":99999999}"#;
        let granted = answer(StatusCode::OK, forever).unwrap();
        assert_eq!(granted.lifetime, MAX_LIFETIME);
        assert_eq!(granted.refresh_token, None);
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
            br#"{"access_token":"t","token_type":"Bearer","refresh_token":"a b"}"#,
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
