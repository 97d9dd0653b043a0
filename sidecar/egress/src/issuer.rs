//! One token request to the client's issuer, authenticated with the pod's projected
//! ServiceAccount token as the client assertion (RFC 7523 §2.2), for one audience (RFC 8707
//! `resource`) and the target's scopes: `client_credentials` for the pod's own token, or a
//! token exchange (RFC 8693) of the caller's token for a target on behalf of the caller. The
//! request itself is the kit's ([`scopegate_sidecar_kit::oauth`]), which the browser sessions
//! share: the assertion file is read for every request, and neither the assertion, the
//! caller's token nor the token they buy is ever logged or put in an error. This module names
//! what egress asks for and turns the answer into the header it sends.

use std::time::Duration;

use http::header::HeaderValue;
use scopegate_core::clients::TOKEN_EXCHANGE_GRANT;
use scopegate_sidecar_kit::oauth;

pub(crate) use scopegate_sidecar_kit::oauth::is_b64token;
pub use scopegate_sidecar_kit::oauth::{TokenEndpoint, TokenFailure};

/// The `subject_token_type` and `requested_token_type` of an exchange (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

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

/// Asks `endpoint` for a token of `key`, by `grant`.
pub async fn request(
    endpoint: &TokenEndpoint,
    key: &TokenKey,
    grant: Grant<'_>,
) -> Result<Granted, TokenFailure> {
    let granted = oauth::token(endpoint, &params(key, grant)).await?;
    let mut header = HeaderValue::from_str(&format!("Bearer {}", granted.access_token))
        .map_err(|_| TokenFailure::Answer)?;
    header.set_sensitive(true);
    Ok(Granted {
        header,
        lifetime: granted.lifetime,
    })
}

/// The grant's parameters of a token request for `key`.
fn params<'a>(key: &'a TokenKey, grant: Grant<'a>) -> Vec<(&'static str, &'a str)> {
    let mut params = match grant {
        Grant::Own => vec![("grant_type", "client_credentials")],
        Grant::Exchange { subject } => vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ],
    };
    params.push(("resource", key.audience.as_str()));
    if !key.scope.is_empty() {
        params.push(("scope", key.scope.as_str()));
    }
    params
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
    fn the_request_names_the_audience_and_the_scopes() {
        let key = TokenKey::new("https://orders.shop.svc", &["read:orders".into()]);
        assert_eq!(
            params(&key, Grant::Own),
            [
                ("grant_type", "client_credentials"),
                ("resource", "https://orders.shop.svc"),
                ("scope", "read:orders")
            ]
        );
        let defaults = TokenKey::new("https://orders.shop.svc", &[]);
        assert!(
            !params(&defaults, Grant::Own)
                .iter()
                .any(|(name, _)| *name == "scope")
        );
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
            params(&key, grant),
            [
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange"
                ),
                ("subject_token", "eyJ.c-d.e"),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("resource", "https://inventory.shop.svc"),
                ("scope", "list read")
            ]
        );
    }
}
