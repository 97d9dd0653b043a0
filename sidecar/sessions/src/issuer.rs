//! The session's requests to its issuer, as the policy's OAuthClient with the pod's
//! ServiceAccount token (the kit's [`oauth`] client, the egress proxy's too): redeeming a code,
//! refreshing, and revoking at logout. The issuer is an in-cluster Service: it is trusted with
//! the operator's CA only, never the system roots.

use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scopegate_fetch::{ConnectorOptions, Matcher, Roots, TlsSetupError};
use scopegate_sidecar_kit::oauth::{self, Granted, TokenEndpoint, TokenFailure};

/// How long a TCP connect to the issuer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The issuer's endpoints, as this policy's client.
#[derive(Clone)]
pub struct IssuerClient {
    /// The token endpoint and the client's authentication.
    pub endpoint: TokenEndpoint,
    /// The revocation endpoint.
    pub revocation: Uri,
    /// The callback, sent with every code.
    pub redirect_uri: String,
}

impl IssuerClient {
    /// The client of `token_endpoint` and `revocation`, trusting `ca_bundle_pem` alone.
    pub fn new(
        token_endpoint: Uri,
        revocation: Uri,
        client_id: &str,
        assertion_path: &str,
        token_audience: &str,
        redirect_uri: &str,
        ca_bundle_pem: &str,
    ) -> Result<IssuerClient, TlsSetupError> {
        let connector = scopegate_fetch::connector_for(
            Roots::Only(ca_bundle_pem),
            ConnectorOptions {
                proxy_rules: Matcher::from_env(),
                allow_http: false,
                connect_timeout: Some(CONNECT_TIMEOUT),
            },
        )?;
        Ok(IssuerClient {
            endpoint: TokenEndpoint {
                uri: token_endpoint,
                client_id: client_id.to_owned(),
                assertion_path: assertion_path.into(),
                token_audience: token_audience.to_owned(),
                client: Client::builder(TokioExecutor::new()).build(connector),
            },
            revocation,
            redirect_uri: redirect_uri.to_owned(),
        })
    }

    /// Redeems an authorization code with its PKCE verifier.
    pub async fn redeem(&self, code: &str, verifier: &str) -> Result<Granted, TokenFailure> {
        let params = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        oauth::token(&self.endpoint, &params).await
    }

    /// Refreshes: a new access token and (with rotation) a new refresh token, of the scope and
    /// audience of the original grant.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Granted, TokenFailure> {
        let params = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        oauth::token(&self.endpoint, &params).await
    }

    /// Revokes a refresh token, and with it its family (RFC 7009).
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), TokenFailure> {
        oauth::revoke(
            &self.endpoint,
            &self.revocation,
            refresh_token,
            "refresh_token",
        )
        .await
    }
}
