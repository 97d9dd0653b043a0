//! Reading tokens and answers for the narration, without checking anything: a JWT's header
//! and claims, a one-line description of a token, a short key id, an answer's challenge.

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::http::Response;

/// The claims and header of a JWT, without checking anything (for narration).
pub(super) fn peek(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let mut part = || -> anyhow::Result<Value> {
        let text = parts.next().context("not a JWS")?;
        Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text)?)?)
    };
    Ok((part()?, part()?))
}

/// A token in one line: algorithm, key, subject, scope, audience and lifetime.
pub(super) fn describe(token: &str) -> anyhow::Result<String> {
    let (header, claims) = peek(token)?;
    let ttl =
        claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default();
    Ok(format!(
        "{}, kid {}, sub {}, scope \"{}\", aud {}, valid {}m",
        header["alg"].as_str().unwrap_or("?"),
        short(header["kid"].as_str().unwrap_or("?")),
        claims["sub"].as_str().unwrap_or("?"),
        claims["scope"].as_str().unwrap_or(""),
        claims["aud"],
        ttl / 60
    ))
}

/// The first eight characters of a key id.
pub(super) fn short(kid: &str) -> String {
    format!("{}…", kid.chars().take(8).collect::<String>())
}

/// An answer's `WWW-Authenticate` header, or `(none)`.
pub(super) fn challenge_of(response: &Response) -> String {
    response
        .header("www-authenticate")
        .unwrap_or("(none)")
        .to_owned()
}
